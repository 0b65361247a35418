//! `handshake_rate_per_ip`: a GCRA bucket per client address (`governor`'s keyed limiter),
//! bounded in memory.
//!
//! governor keeps an entry per key it has seen and never forgets one by itself
//! (boinkor-net/governor#171): a flood from many addresses would grow the table without
//! end. Two bounds: entries whose bucket is full again carry no information and are shed
//! every [`SHED_INTERVAL`] (`retain_recent`), and the table never holds more than
//! [`MAX_RATE_KEYS`]: when it is full even after shedding, new handshakes are refused until
//! entries go idle (failing open would switch the limit off for exactly the flood it is for).

use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::{ClientKey, whole_seconds};
use crate::config::HandshakeRate;
use crate::error::{LimitError, Scope};

/// How often idle entries are shed. An entry is idle once its bucket has refilled, at most
/// `burst × interval` after the address's last handshake, so a table holds little more
/// than the addresses seen in the last few seconds plus this.
pub const SHED_INTERVAL: Duration = Duration::from_secs(10);

/// The most client addresses one rate table tracks at once: about 4 MiB of entries, and
/// more distinct addresses (IPv6 /64s) than start handshakes within seconds of each other
/// in anything but a distributed flood.
pub const MAX_RATE_KEYS: usize = 100_000;

/// A scope's per-address handshake buckets.
#[derive(Debug)]
pub(super) struct RateTable {
    rate: HandshakeRate,
    limiter: RateLimiter<ClientKey, DefaultKeyedStateStore<ClientKey>, DefaultClock>,
}

impl RateTable {
    pub(super) fn new(rate: HandshakeRate) -> RateTable {
        // Validation keeps the interval above zero; the fallback is a second.
        let quota = Quota::with_period(rate.interval)
            .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(rate.burst);
        RateTable {
            rate,
            limiter: RateLimiter::keyed(quota),
        }
    }

    pub(super) fn rate(&self) -> HandshakeRate {
        self.rate
    }

    pub(super) fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Takes one handshake from `key`'s bucket, or says when the next one will be there.
    pub(super) fn check(&self, key: ClientKey, scope: Scope) -> Result<(), LimitError> {
        if self.limiter.len() >= MAX_RATE_KEYS {
            self.limiter.retain_recent();
            if self.limiter.len() >= MAX_RATE_KEYS {
                return Err(LimitError::RateTableFull {
                    retry_after: SHED_INTERVAL.as_secs(),
                });
            }
        }
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            LimitError::HandshakeRate {
                scope,
                retry_after: whole_seconds(wait),
            }
        })
    }

    /// Drops the entries whose bucket is full again, and the room they took.
    pub(super) fn shed(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn key(last: u8) -> ClientKey {
        ClientKey::of(std::net::IpAddr::from([192, 0, 2, last]), 64)
    }

    #[test]
    fn a_burst_passes_then_the_wait_is_the_refill_time() {
        // One handshake a minute, three at once: the fourth waits most of a minute.
        let table = RateTable::new(HandshakeRate {
            interval: Duration::from_secs(60),
            burst: NonZeroU32::new(3).unwrap(),
        });
        for _ in 0..3 {
            table.check(key(1), Scope::Process).unwrap();
        }
        match table.check(key(1), Scope::Route) {
            Err(LimitError::HandshakeRate {
                scope: Scope::Route,
                retry_after,
            }) => assert!((55..=60).contains(&retry_after), "{retry_after}"),
            other => panic!("{other:?}"),
        }
        // Another address has its own bucket.
        table.check(key(2), Scope::Process).unwrap();
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn idle_entries_are_shed() {
        let table = RateTable::new(HandshakeRate {
            interval: Duration::from_nanos(1),
            burst: NonZeroU32::MIN,
        });
        table.check(key(1), Scope::Process).unwrap();
        // Past the entry's refill time (a nanosecond): it is idle.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_micros(10) {
            std::hint::spin_loop();
        }
        table.shed();
        assert_eq!(table.len(), 0);
    }
}
