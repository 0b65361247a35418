//! Admission: whether a handshake may become a session now, decided before the backend is
//! dialled.
//!
//! Two scopes hold the same limits ([`AdmissionLimits`]): the whole process (`[limits]`, a
//! [`Gate`] on each config generation) and each route (a [`Gate`] on the route). A gate
//! counts the sessions it has admitted (in all, and per client address) and, where a rate
//! is set, each client address's handshakes in a GCRA bucket (`rate.rs`). The process also
//! keeps a reserve of file descriptors ([`fd`]).
//!
//! A handshake that passes takes a [`Permit`]: one seat in each scope, taken before the
//! backend is dialled, so a burst of concurrent handshakes cannot overshoot a cap while
//! their backends answer. The permit becomes the session's and is given back when the
//! session ends, or when the handshake fails on the way (it is dropped with the error).
//!
//! The checks run as a step of `proxy::upgrade`, not as a `tower` layer in front of the
//! hyper service: a route's limits need the route, and every limit needs the client address
//! `policy::forwarding` works out behind trusted proxies, both of which the orchestrator
//! finds first; and a refusal must reach `proxy::refuse` with its route to be counted there.
//!
//! Memory: a gate's per-address session table holds an entry only while that address has
//! a session; a rate table holds an entry only while the address's bucket is not full
//! again, is shed every [`SHED_INTERVAL`] ([`shed_periodically`]) and is capped at
//! [`MAX_RATE_KEYS`] entries.

pub mod fd;
mod rate;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{AdmissionLimits, Limits};
use crate::error::{LimitError, Scope};

pub use fd::Descriptors;
pub use rate::{MAX_RATE_KEYS, SHED_INTERVAL};

/// `Retry-After` for a refusal because the gateway or a route is full, in seconds, drawn at
/// random in this range: when a slot frees up depends on sessions ending, which nothing
/// predicts, and clients refused in the same burst then come back spread out instead of
/// as the next burst.
pub const FULL_RETRY_AFTER: std::ops::RangeInclusive<u64> = 1..=5;

/// A client address as the limits count it: an IPv4 address (an IPv4-mapped IPv6 address
/// is one), or an IPv6 address cut to `ipv6_prefix` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr, ipv6_prefix: u8) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                ClientKey(IpAddr::V6((u128::from(v6) & mask).into()))
            }
        }
    }
}

/// One scope's admission state: its limits, the sessions it has admitted, its handshake
/// rate table.
#[derive(Debug)]
pub struct Gate {
    pub limits: AdmissionLimits,
    /// Shared with the scope's previous and next gates: a reload must not forget the
    /// sessions already admitted.
    occupancy: Arc<Occupancy>,
    /// Kept across a reload that leaves the rate as it was; a new rate starts afresh.
    rate: Option<Arc<rate::RateTable>>,
}

impl Gate {
    /// The gate for `limits`, carrying on from `previous` (the same scope's gate in the
    /// generation before a reload), if any.
    pub fn next(limits: &AdmissionLimits, previous: Option<&Gate>) -> Gate {
        let rate = limits.handshake_rate.map(|r| {
            previous
                .and_then(|p| p.rate.as_ref())
                .filter(|t| t.rate() == r)
                .cloned()
                .unwrap_or_else(|| Arc::new(rate::RateTable::new(r)))
        });
        Gate {
            limits: *limits,
            occupancy: previous.map(|p| p.occupancy.clone()).unwrap_or_default(),
            rate,
        }
    }

    /// Sessions admitted and not yet ended (handshakes past admission included).
    pub fn admitted(&self) -> u32 {
        self.occupancy.total.load(Ordering::Relaxed)
    }

    /// Client addresses the rate table holds now.
    pub fn rate_keys(&self) -> usize {
        self.rate.as_ref().map_or(0, |r| r.len())
    }

    /// Drops the rate table's entries whose buckets are full again (they are the same as
    /// no entry).
    pub fn shed_idle(&self) {
        if let Some(rate) = &self.rate {
            rate.shed();
        }
    }

    /// One handshake from `key` against the scope's rate.
    fn check_rate(&self, key: ClientKey, scope: Scope) -> Result<(), LimitError> {
        match &self.rate {
            Some(rate) => rate.check(key, scope),
            None => Ok(()),
        }
    }

    /// A seat for a session from `key`, or the limit that is full.
    fn seat(&self, key: ClientKey, scope: Scope) -> Result<Seat, LimitError> {
        self.occupancy.enter(key, &self.limits, scope)
    }
}

/// The admission step of a handshake from `client` on a route: the descriptor reserve, the
/// handshake rates (process, then route), then the session caps (route, then process).
/// Returns the permit the session holds while it lives.
///
/// A handshake refused by a session cap has still used a token of its rate: the rate counts
/// attempts, as a client that retries at once against a full gateway should be slowed.
pub fn admit(
    process: &Gate,
    route: &Gate,
    descriptors: &Descriptors,
    limits: &Limits,
    client: IpAddr,
) -> Result<Permit, LimitError> {
    descriptors.check(limits.fd_reserve)?;
    let key = ClientKey::of(client, limits.ipv6_prefix);
    process.check_rate(key, Scope::Process)?;
    route.check_rate(key, Scope::Route)?;
    let route_seat = route.seat(key, Scope::Route)?;
    let process_seat = process.seat(key, Scope::Process)?;
    Ok(Permit {
        _seats: Box::new([route_seat, process_seat]),
    })
}

/// A session's place under the limits: given back when dropped (the session ended, or its
/// handshake failed after admission). Boxed: an idle session carries one pointer for it.
#[derive(Debug)]
pub struct Permit {
    _seats: Box<[Seat; 2]>,
}

/// The sessions one scope has admitted: how many in all, and per client address where a
/// per-address cap is set.
#[derive(Debug, Default)]
struct Occupancy {
    total: AtomicU32,
    /// An entry only while its address holds a session: removed at zero.
    per_address: Mutex<HashMap<ClientKey, u32>>,
}

impl Occupancy {
    /// Takes a seat under `limits`, or says which is full. The total is raised with a
    /// compare-and-swap, so concurrent handshakes cannot both take the last seat.
    fn enter(
        self: &Arc<Self>,
        key: ClientKey,
        limits: &AdmissionLimits,
        scope: Scope,
    ) -> Result<Seat, LimitError> {
        let max = limits.max_sessions.unwrap_or(u32::MAX);
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            let retry_after = rand::random_range(FULL_RETRY_AFTER);
            return Err(match scope {
                Scope::Process => LimitError::MaxSessions {
                    limit: max,
                    retry_after,
                },
                Scope::Route => LimitError::RouteMaxSessions {
                    limit: max,
                    retry_after,
                },
            });
        }
        // From here the seat gives the total back if the per-address cap refuses.
        let mut seat = Seat {
            occupancy: self.clone(),
            address: None,
        };
        if let Some(limit) = limits.max_sessions_per_ip {
            let mut table = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
            let held = table.entry(key).or_insert(0);
            if *held >= limit {
                return Err(LimitError::SessionsPerIp { scope, limit });
            }
            *held += 1;
            seat.address = Some(key);
        }
        Ok(seat)
    }
}

/// One session counted in one scope.
#[derive(Debug)]
struct Seat {
    occupancy: Arc<Occupancy>,
    /// The address it is counted under, when the scope caps sessions per address (it did
    /// when the seat was taken: a reload that adds the cap counts sessions from then on).
    address: Option<ClientKey>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.occupancy.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = self.address {
            let mut table = self
                .occupancy
                .per_address
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(held) = table.get_mut(&key) {
                *held -= 1;
                if *held == 0 {
                    table.remove(&key);
                }
            }
        }
    }
}

/// Calls `shed` every [`SHED_INTERVAL`] until `stop`: the rate tables' idle entries go even
/// when no handshake comes to find them (see [`Gate::shed_idle`]).
pub async fn shed_periodically(stop: tokio_util::sync::CancellationToken, shed: impl Fn()) {
    let mut every = tokio::time::interval(SHED_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => shed(),
        }
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1 (0 would invite a retry
/// that is refused again).
fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HandshakeRate;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits(max: Option<u32>, per_ip: Option<u32>) -> AdmissionLimits {
        AdmissionLimits {
            max_sessions: max,
            max_sessions_per_ip: per_ip,
            handshake_rate: None,
        }
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_prefix() {
        let a = ClientKey::of(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = ClientKey::of(ip("2001:db8:1:2:bbbb::2"), 64);
        let c = ClientKey::of(ip("2001:db8:1:3::1"), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, ClientKey(ip("2001:db8:1:2::")));
        assert_eq!(
            ClientKey::of(ip("2001:db8::1"), 128),
            ClientKey(ip("2001:db8::1"))
        );
        // A mapped IPv4 address is that IPv4 client; IPv4 is never cut.
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.7"), 64),
            ClientKey(ip("192.0.2.7"))
        );
        assert_ne!(
            ClientKey::of(ip("192.0.2.7"), 1),
            ClientKey::of(ip("192.0.2.8"), 1)
        );
    }

    #[test]
    fn seats_are_capped_and_given_back() {
        let gate = Gate::next(&limits(Some(2), None), None);
        let key = ClientKey::of(ip("192.0.2.1"), 64);
        let a = gate.seat(key, Scope::Process).unwrap();
        let _b = gate.seat(key, Scope::Process).unwrap();
        assert!(matches!(
            gate.seat(key, Scope::Process),
            Err(LimitError::MaxSessions { limit: 2, retry_after }) if FULL_RETRY_AFTER.contains(&retry_after)
        ));
        assert!(matches!(
            gate.seat(key, Scope::Route),
            Err(LimitError::RouteMaxSessions { limit: 2, .. })
        ));
        assert_eq!(gate.admitted(), 2);
        drop(a);
        assert_eq!(gate.admitted(), 1);
        assert!(gate.seat(key, Scope::Process).is_ok());
    }

    #[test]
    fn a_per_address_cap_counts_each_address_and_forgets_it_at_zero() {
        let gate = Gate::next(&limits(None, Some(1)), None);
        let one = ClientKey::of(ip("192.0.2.1"), 64);
        let two = ClientKey::of(ip("192.0.2.2"), 64);
        let held = gate.seat(one, Scope::Route).unwrap();
        assert_eq!(
            gate.seat(one, Scope::Route).unwrap_err(),
            LimitError::SessionsPerIp {
                scope: Scope::Route,
                limit: 1
            }
        );
        // The refused seat gave its place in the total back.
        assert_eq!(gate.admitted(), 1);
        let other = gate.seat(two, Scope::Route).unwrap();
        drop((held, other));
        assert_eq!(gate.admitted(), 0);
        assert!(gate.occupancy.per_address.lock().unwrap().is_empty());
    }

    #[test]
    fn a_reload_keeps_the_count_and_an_unchanged_rate() {
        let rate = HandshakeRate {
            interval: Duration::from_millis(100),
            burst: std::num::NonZeroU32::new(3).unwrap(),
        };
        let first = Gate::next(
            &AdmissionLimits {
                handshake_rate: Some(rate),
                ..limits(Some(1), None)
            },
            None,
        );
        let key = ClientKey::of(ip("192.0.2.1"), 64);
        let _held = first.seat(key, Scope::Process).unwrap();
        let same = Gate::next(&first.limits, Some(&first));
        assert!(same.seat(key, Scope::Process).is_err());
        assert!(Arc::ptr_eq(
            first.rate.as_ref().unwrap(),
            same.rate.as_ref().unwrap()
        ));
        let faster = AdmissionLimits {
            handshake_rate: Some(HandshakeRate {
                interval: Duration::from_millis(10),
                ..rate
            }),
            ..first.limits
        };
        let changed = Gate::next(&faster, Some(&same));
        assert!(!Arc::ptr_eq(
            first.rate.as_ref().unwrap(),
            changed.rate.as_ref().unwrap()
        ));
        assert_eq!(changed.admitted(), 1);
    }

    /// A session's permit is one pointer in its task and this on the heap (see
    /// ARCHITECTURE.md, "Memory per session").
    #[test]
    fn a_permit_stays_small() {
        assert!(std::mem::size_of::<[Seat; 2]>() <= 64);
        assert_eq!(std::mem::size_of::<Option<Permit>>(), 8);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
    }
}
