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

/// While the table is full, how often a handshake may shed it: a shed scans every entry under
/// the table's one lock, and once per handshake it would turn a flood into that many scans.
const FULL_SHED_INTERVAL: Duration = Duration::from_secs(1);

/// A scope's per-address handshake buckets.
#[derive(Debug)]
pub(super) struct RateTable {
    rate: HandshakeRate,
    limiter: RateLimiter<ClientKey, DefaultKeyedStateStore<ClientKey>, DefaultClock>,
    /// When a handshake that found the table full last shed it (`FULL_SHED_INTERVAL`).
    full_shed: std::sync::Mutex<Option<std::time::Instant>>,
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
            full_shed: std::sync::Mutex::new(None),
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
            self.shed_when_full();
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

    /// Sheds a full table, at most once per `FULL_SHED_INTERVAL` (and not while another
    /// handshake is at it). Returns whether it did.
    fn shed_when_full(&self) -> bool {
        let Ok(mut last) = self.full_shed.try_lock() else {
            return false;
        };
        if last.is_some_and(|t| t.elapsed() < FULL_SHED_INTERVAL) {
            return false;
        }
        self.limiter.retain_recent();
        *last = Some(std::time::Instant::now());
        true
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

    #[test]
    fn a_full_table_is_shed_at_most_once_a_second() {
        // Entries that stay (a bucket that refills in an hour), enough to fill the table.
        let table = RateTable::new(HandshakeRate {
            interval: Duration::from_secs(3600),
            burst: NonZeroU32::new(1).unwrap(),
        });
        for i in 0..MAX_RATE_KEYS as u32 {
            let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            table.check(ClientKey::of(ip, 64), Scope::Route).unwrap();
        }
        // The first handshake that finds it full sheds it (nothing goes: every bucket is
        // still empty) and is refused; within the second, the next ones are refused without
        // a scan of the table.
        assert!(matches!(
            table.check(key(1), Scope::Route),
            Err(LimitError::RateTableFull { .. })
        ));
        assert!(table.full_shed.lock().unwrap().is_some());
        assert!(!table.shed_when_full(), "shed again within the second");
    }
}
