//! A per-reason rate limit for log records a client can cause at will (refusals).
//!
//! A flood of bad requests must not become a flood of log lines: at 6,800 refusals a second
//! the log is useless and its disk fills. Each [`Outcome`] gets at most `per_second` lines in
//! each second; the rest are dropped and counted, and the next line written for that outcome
//! says how many (`suppressed = 490`). The counters in the metrics still count every one.
//!
//! The check is a few atomic operations on the outcome's own slot (no lock), so refusals of
//! different kinds never contend, and a refusal that is not written costs no formatting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::outcome::Outcome;

/// How many outcomes there are: one slot each, indexed by the discriminant (`Outcome::ALL`
/// is in declaration order, which a test in `outcome.rs` guards).
const SLOTS: usize = Outcome::ALL.len();

/// The per-outcome line budget, one-second windows counted from the limiter's creation.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    epoch: Instant,
    slots: [Slot; SLOTS],
}

/// One outcome's window and what it has dropped.
#[derive(Debug, Default)]
struct Slot {
    /// The current window (seconds since `epoch`, high 32 bits) and the lines written in it
    /// (low 32 bits): one word, so a window's start and its count change together.
    window: AtomicU64,
    /// Lines dropped since the last one written.
    suppressed: AtomicU64,
}

/// Permission to write one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Line {
    suppressed: u64,
}

impl Line {
    /// How many similar lines were dropped since the last one written, for the record's
    /// `suppressed` field; `None` (the field left out) when none were.
    pub fn suppressed(self) -> Option<u64> {
        (self.suppressed > 0).then_some(self.suppressed)
    }
}

impl LogLimiter {
    /// At most `per_second` lines per outcome in each second; 0 writes none (the counters in
    /// the metrics still count every refusal).
    pub fn new(per_second: u32) -> LogLimiter {
        LogLimiter::starting_at(per_second, Instant::now())
    }

    fn starting_at(per_second: u32, epoch: Instant) -> LogLimiter {
        LogLimiter {
            per_second,
            epoch,
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }

    /// Whether a line for `outcome` may be written now.
    pub fn admit(&self, outcome: Outcome) -> Option<Line> {
        self.admit_at(outcome, Instant::now())
    }

    /// Whether a line for `outcome` may be written at `now`: `Some` within the budget of
    /// `now`'s window (with the count of lines dropped before it), `None` past it (the line
    /// is counted as suppressed).
    pub fn admit_at(&self, outcome: Outcome, now: Instant) -> Option<Line> {
        let slot = &self.slots[outcome as usize];
        // 32 bits of seconds: 136 years of windows.
        let window = now.saturating_duration_since(self.epoch).as_secs() as u32;
        let per_second = self.per_second;
        let taken = slot
            .window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
                let (w, written) = ((word >> 32) as u32, word as u32);
                if window > w {
                    (per_second > 0).then(|| pack(window, 1))
                } else if written < per_second {
                    // An instant read just before another thread opened the next window
                    // counts in that window: the window never moves back.
                    Some(pack(w, written + 1))
                } else {
                    None
                }
            });
        match taken {
            Ok(_) => Some(Line {
                suppressed: slot.suppressed.swap(0, Ordering::Relaxed),
            }),
            Err(_) => {
                slot.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The budgets of the warnings about backends that failed a request, beside the refusal
/// records' (the same `per_second` each): one for each failed attempt's warning (a route whose
/// backend is down writes one per handshake), one for the lines saying a request failed over,
/// on their own so that a flood of failed attempts does not hide them and their `suppressed`
/// counts their own kind.
#[derive(Debug)]
pub struct BackendLogs {
    pub attempts: LogLimiter,
    pub failovers: LogLimiter,
}

impl BackendLogs {
    pub fn new(per_second: u32) -> BackendLogs {
        BackendLogs {
            attempts: LogLimiter::new(per_second),
            failovers: LogLimiter::new(per_second),
        }
    }
}

fn pack(window: u32, written: u32) -> u64 {
    (u64::from(window) << 32) | u64::from(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(limiter: &LogLimiter, ms: u64) -> Instant {
        limiter.epoch + Duration::from_millis(ms)
    }

    #[test]
    fn writes_the_budget_then_counts_what_it_drops() {
        let limiter = LogLimiter::new(3);
        let o = Outcome::RequestHeadInvalid;
        let written: Vec<_> = (0..10)
            .map(|i| limiter.admit_at(o, at(&limiter, i * 10)))
            .collect();
        assert_eq!(written.iter().filter(|l| l.is_some()).count(), 3);
        assert!(
            written[..3]
                .iter()
                .all(|l| l.unwrap().suppressed().is_none())
        );
        assert!(written[3..].iter().all(Option::is_none));
        // The next window: the first line says how many were dropped, the next ones do not.
        let first = limiter.admit_at(o, at(&limiter, 1_000)).unwrap();
        assert_eq!(first.suppressed(), Some(7));
        let second = limiter.admit_at(o, at(&limiter, 1_001)).unwrap();
        assert_eq!(second.suppressed(), None);
    }

    #[test]
    fn outcomes_have_budgets_of_their_own() {
        let limiter = LogLimiter::new(1);
        let t = at(&limiter, 0);
        assert!(limiter.admit_at(Outcome::RequestHeadInvalid, t).is_some());
        assert!(limiter.admit_at(Outcome::RequestHeadInvalid, t).is_none());
        // A flood of one reason does not hide another.
        assert!(limiter.admit_at(Outcome::NotAnUpgrade, t).is_some());
        assert!(limiter.admit_at(Outcome::TokenExpired, t).is_some());
        assert!(limiter.admit_at(Outcome::ProxyHeaderInvalid, t).is_some());
    }

    #[test]
    fn a_quiet_stretch_resets_the_budget_and_keeps_the_count() {
        let limiter = LogLimiter::new(2);
        let o = Outcome::RequestHeadTimeout;
        for _ in 0..5 {
            let _ = limiter.admit_at(o, at(&limiter, 500));
        }
        // Ten silent seconds later: a fresh budget, and the three dropped lines are reported.
        let line = limiter.admit_at(o, at(&limiter, 10_500)).unwrap();
        assert_eq!(line.suppressed(), Some(3));
        assert!(limiter.admit_at(o, at(&limiter, 10_600)).is_some());
        assert!(limiter.admit_at(o, at(&limiter, 10_700)).is_none());
    }

    #[test]
    fn an_earlier_instant_than_the_epoch_counts_as_the_first_window() {
        let limiter = LogLimiter::new(1);
        let before = limiter.epoch - Duration::from_millis(1);
        assert!(limiter.admit_at(Outcome::UriTooLong, before).is_some());
        assert!(
            limiter
                .admit_at(Outcome::UriTooLong, at(&limiter, 0))
                .is_none()
        );
    }

    #[test]
    fn zero_writes_nothing() {
        let limiter = LogLimiter::new(0);
        for ms in [0, 1_000, 5_000] {
            assert!(
                limiter
                    .admit_at(Outcome::RequestHeadTooLarge, at(&limiter, ms))
                    .is_none()
            );
        }
    }

    #[test]
    fn every_refusal_is_written_or_counted_under_contention() {
        let limiter = std::sync::Arc::new(LogLimiter::new(5));
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let reported = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (limiter, written, reported) =
                    (limiter.clone(), written.clone(), reported.clone());
                std::thread::spawn(move || {
                    for i in 0..1_000u64 {
                        // Four windows' worth of time, every thread through all of them.
                        let t = at(&limiter, i * 4);
                        if let Some(line) = limiter.admit_at(Outcome::NoRoute, t) {
                            written.fetch_add(1, Ordering::Relaxed);
                            reported.fetch_add(line.suppressed, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let written = written.load(Ordering::Relaxed);
        // At most 5 lines in each of the 4 windows, whatever the interleaving.
        assert!(written <= 20, "{written} lines");
        let pending = limiter.slots[Outcome::NoRoute as usize]
            .suppressed
            .load(Ordering::Relaxed);
        assert_eq!(written + reported.load(Ordering::Relaxed) + pending, 4_000);
    }
}
