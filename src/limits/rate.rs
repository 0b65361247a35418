//! `handshake_rate_per_ip`: a GCRA bucket per client address (`governor`'s keyed limiter),
//! bounded in memory.
//!
//! governor keeps an entry per key it has seen and never forgets one by itself
//! (boinkor-net/governor#171): a flood from many addresses would grow the table without
//! end. Two bounds: entries whose bucket is full again carry no information and are shed
//! every [`SHED_INTERVAL`] (`retain_recent`), and the table never holds more than
//! [`MAX_RATE_KEYS`]: when it is full even after shedding, handshakes from addresses it does
//! not hold are refused until entries go idle (failing open would switch the limit off for
//! exactly the flood it is for). An address it holds keeps its bucket, full table or not: it
//! needs no new entry, and the clients that were there before a flood filled the table are
//! the ones a full table should not lock out.

use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DefaultKeyedStateStore, ShrinkableKeyedStateStore};
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

/// governor's own keyed store (a map behind a lock), shared between the limiter and the
/// table, which asks it whether an address is already there.
#[derive(Debug, Default, Clone)]
struct SharedStore(Arc<DefaultKeyedStateStore<ClientKey>>);

impl StateStore for SharedStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0);
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

impl SharedStore {
    /// Whether the table is full and has no entry for `key` (one lock for both).
    fn full_without(&self, key: &ClientKey) -> bool {
        let map = self.0.lock();
        map.len() >= MAX_RATE_KEYS && !map.contains_key(key)
    }
}

/// A scope's per-address handshake buckets.
#[derive(Debug)]
pub(super) struct RateTable {
    rate: HandshakeRate,
    store: SharedStore,
    limiter: RateLimiter<ClientKey, SharedStore, DefaultClock>,
    /// When a handshake that found the table full last shed it (`FULL_SHED_INTERVAL`).
    full_shed: std::sync::Mutex<Option<std::time::Instant>>,
}

impl RateTable {
    pub(super) fn new(rate: HandshakeRate) -> RateTable {
        // Validation keeps the interval above zero; the fallback is a second.
        let quota = Quota::with_period(rate.interval)
            .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(rate.burst);
        let store = SharedStore::default();
        RateTable {
            rate,
            limiter: RateLimiter::new(quota, store.clone(), DefaultClock::default()),
            store,
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
        if self.store.full_without(&key) {
            self.shed_when_full();
            if self.store.full_without(&key) {
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

    #[test]
    fn a_full_table_still_serves_the_addresses_it_holds() {
        // Two handshakes an hour per address: each address below uses one of them.
        let table = RateTable::new(HandshakeRate {
            interval: Duration::from_secs(1800),
            burst: NonZeroU32::new(2).unwrap(),
        });
        let ip = |i: u32| {
            ClientKey::of(
                std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                64,
            )
        };
        for i in 0..MAX_RATE_KEYS as u32 {
            table.check(ip(i), Scope::Process).unwrap();
        }
        // A new address is refused for the table's sake; one it holds gets its second
        // handshake, and then its own bucket's answer, not the table's.
        assert!(matches!(
            table.check(key(1), Scope::Process),
            Err(LimitError::RateTableFull { .. })
        ));
        table.check(ip(7), Scope::Process).unwrap();
        assert!(matches!(
            table.check(ip(7), Scope::Process),
            Err(LimitError::HandshakeRate { .. })
        ));
        assert_eq!(table.len(), MAX_RATE_KEYS);
    }
}
