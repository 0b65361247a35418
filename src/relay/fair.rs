//! Fair shares after the upgrade: how much each side may send (messages and bytes a second,
//! with bursts: a route's `client_messages_per_sec`, `backend_bytes_per_sec`, ...).
//!
//! A side over its share is slowed by backpressure: the relay stops reading its socket until
//! its buckets allow more, so its kernel buffers fill and its own writes wait; nothing is
//! buffered for it in wsgate. A side that stays over for `rate_grace` (it had more to send
//! every time it was read again) gets close 1008 "rate limit"; one that catches up (a read
//! finds its socket empty) starts its grace anew.
//!
//! The buckets are GCRA (one instant each): sending `n` units moves the bucket's theoretical
//! arrival time `n / per_sec` seconds on; the side may be read while that time is at most
//! `(burst - 1) / per_sec` ahead of now (the next unit is the one that may still fit: a
//! burst of 5 at 1/s lets 5 through at once, then one a second; `burst / per_sec` let a
//! sixth through). What a read brings is charged after the fact (a read may
//! take up to 64 KiB and several messages), so a bucket may run into debt, which the side
//! then pays by waiting: over any long window the rate holds exactly.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{DirectionRates, Rate, Rates};
use crate::outcome::CloseSide;

/// One rate's bucket.
#[derive(Debug)]
struct Bucket {
    per_sec: f64,
    /// `(burst - 1) / per_sec`: how far ahead of now the arrival time may run when the side
    /// is read again.
    tolerance: Duration,
    /// The theoretical arrival time of the next unit.
    tat: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Bucket {
        let per_sec = rate.per_sec.max(1) as f64;
        Bucket {
            per_sec,
            tolerance: Duration::from_secs_f64((rate.burst.max(1) - 1) as f64 / per_sec),
            tat: now,
        }
    }

    /// When the side may be read again (now or earlier: at once).
    fn ready_at(&self) -> Instant {
        self.tat.checked_sub(self.tolerance).unwrap_or(self.tat)
    }

    fn charge(&mut self, units: u64, now: Instant) {
        if units > 0 {
            self.tat = self.tat.max(now) + Duration::from_secs_f64(units as f64 / self.per_sec);
        }
    }
}

/// What one side may send, and since when it has been held back.
#[derive(Debug)]
struct Share {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// Set when the relay first declined to read this side; cleared when a read finds it
    /// with nothing more to send.
    held_since: Option<Instant>,
    /// The relay declined a read and waits for `ready_at` to try again.
    waiting: bool,
}

impl Share {
    fn new(rates: DirectionRates, now: Instant) -> Share {
        Share {
            messages: rates.messages.map(|r| Bucket::new(r, now)),
            bytes: rates.bytes.map(|r| Bucket::new(r, now)),
            held_since: None,
            waiting: false,
        }
    }

    /// When this side may be read again; `None` when it has no share (always).
    fn ready_at(&self) -> Option<Instant> {
        let at = |b: &Option<Bucket>| b.as_ref().map(Bucket::ready_at);
        match (at(&self.messages), at(&self.bytes)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A session's fair shares, boxed in the relay's state only on routes that set one.
#[derive(Debug)]
pub(super) struct Fair {
    client: Share,
    backend: Share,
    grace: Option<Duration>,
}

impl Fair {
    /// The shares `rates` sets; `None` when it sets none (the session then pays nothing).
    pub(super) fn new(rates: &Rates, now: Instant) -> Option<Box<Fair>> {
        rates.is_set().then(|| {
            Box::new(Fair {
                client: Share::new(rates.client, now),
                backend: Share::new(rates.backend, now),
                grace: rates.grace,
            })
        })
    }

    fn share(&mut self, who: CloseSide) -> &mut Share {
        match who {
            CloseSide::Client => &mut self.client,
            _ => &mut self.backend,
        }
    }

    /// Whether `who` may be read now; if not, it is being held back from now on.
    pub(super) fn may_read(&mut self, who: CloseSide, now: Instant) -> bool {
        let share = self.share(who);
        match share.ready_at() {
            Some(at) if at > now => {
                share.held_since.get_or_insert(now);
                share.waiting = true;
                false
            }
            _ => true,
        }
    }

    /// Charges what one read of `who` brought.
    pub(super) fn charge(&mut self, who: CloseSide, bytes: u64, messages: u64, now: Instant) {
        let share = self.share(who);
        if let Some(b) = &mut share.bytes {
            b.charge(bytes, now);
        }
        if let Some(m) = &mut share.messages {
            m.charge(messages, now);
        }
    }

    /// A read of `who` found nothing more to send: it keeps within its share.
    pub(super) fn caught_up(&mut self, who: CloseSide) {
        self.share(who).held_since = None;
    }

    /// The side held back for longer than the grace, if one is.
    pub(super) fn over_grace(&self, now: Instant) -> Option<CloseSide> {
        let grace = self.grace?;
        [
            (&self.client, CloseSide::Client),
            (&self.backend, CloseSide::Backend),
        ]
        .into_iter()
        .find(|(s, _)| s.held_since.is_some_and(|t| now >= t + grace))
        .map(|(_, who)| who)
    }

    /// Whether a side the relay declined to read may be read now: `true` once per wait, so
    /// the relay runs its sides again (and does not spin while the other side is slow).
    pub(super) fn wake_due(&mut self, now: Instant) -> bool {
        let mut due = false;
        for s in [&mut self.client, &mut self.backend] {
            if s.waiting && s.ready_at().is_none_or(|at| at <= now) {
                s.waiting = false;
                due = true;
            }
        }
        due
    }

    /// When the relay must look again: a side it declined to read may be read, or a held
    /// side's grace ends.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        [&self.client, &self.backend]
            .into_iter()
            .flat_map(|s| {
                let ready = s.ready_at().filter(|_| s.waiting);
                let grace_end = s.held_since.zip(self.grace).map(|(t, g)| t + g);
                [ready, grace_end]
            })
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(messages: Option<(u64, u64)>, bytes: Option<(u64, u64)>) -> Rates {
        let rate = |(per_sec, burst)| Rate { per_sec, burst };
        Rates {
            client: DirectionRates {
                messages: messages.map(rate),
                bytes: bytes.map(rate),
            },
            backend: DirectionRates::default(),
            grace: Some(Duration::from_secs(2)),
        }
    }

    #[test]
    fn no_share_costs_nothing() {
        assert!(Fair::new(&Rates::default(), Instant::now()).is_none());
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut f = Fair::new(&rates(Some((10, 5)), None), t0).unwrap();
        assert!(f.may_read(CloseSide::Client, t0));
        f.charge(CloseSide::Client, 400, 4, t0);
        // Four messages: a fifth still fits in the burst.
        assert!(f.may_read(CloseSide::Client, t0));
        f.charge(CloseSide::Client, 100, 1, t0);
        // Five is the burst: no sixth now (one read let it through).
        assert!(!f.may_read(CloseSide::Client, t0));
        // One message over at 10/s: 100 ms until it may be read again.
        assert!(!f.may_read(CloseSide::Client, t0 + Duration::from_millis(99)));
        assert!(f.may_read(CloseSide::Client, t0 + Duration::from_millis(101)));
        // The backend has no share: never held.
        assert!(f.may_read(CloseSide::Backend, t0));
    }

    #[test]
    fn debt_is_paid_by_waiting() {
        let t0 = Instant::now();
        let mut f = Fair::new(&rates(None, Some((1000, 1000))), t0).unwrap();
        // One read of 64 KiB at 1000 B/s: 64.5 s of debt beyond the burst.
        f.charge(CloseSide::Client, 65536, 0, t0);
        assert!(!f.may_read(CloseSide::Client, t0 + Duration::from_secs(64)));
        assert!(f.may_read(CloseSide::Client, t0 + Duration::from_millis(64_600)));
    }

    #[test]
    fn held_past_the_grace_unless_it_caught_up() {
        let t0 = Instant::now();
        let mut f = Fair::new(&rates(Some((1, 1)), None), t0).unwrap();
        f.charge(CloseSide::Client, 10, 10, t0);
        assert!(!f.may_read(CloseSide::Client, t0));
        assert_eq!(f.over_grace(t0 + Duration::from_secs(1)), None);
        assert_eq!(f.next_wake(), Some(t0 + Duration::from_secs(2)));
        assert!(!f.wake_due(t0 + Duration::from_secs(1)));
        assert!(!f.wake_due(t0 + Duration::from_secs(9)));
        assert!(
            f.wake_due(t0 + Duration::from_secs(10)),
            "readable again at 10 s"
        );
        assert!(!f.wake_due(t0 + Duration::from_secs(10)), "once per wait");
        assert_eq!(
            f.over_grace(t0 + Duration::from_secs(2)),
            Some(CloseSide::Client)
        );
        f.caught_up(CloseSide::Client);
        assert_eq!(f.over_grace(t0 + Duration::from_secs(3)), None);
    }
}
