//! The session's links to the outside: the [`Control`] signals that ask it to end (drain,
//! reload) and the [`Link`] through which the registry reads its counters and wakes it.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use atomic_waker::AtomicWaker;

use crate::config::SessionConfig;
use crate::frame::close_code;
use crate::outcome::CloseSide;

/// What a relay reads from the outside while it runs: its route's settings, the signals it
/// obeys and its own [`Link`]. Owned by the relay (as an `Arc`), not borrowed, so a relay
/// can leave its task while it is idle and go on in another (`hibernate.rs`); the session
/// registry's record is one (`sessions.rs`), a test's hand-made triple another.
pub trait Env: Send + Sync {
    fn session(&self) -> &SessionConfig;
    fn control(&self) -> &Control;
    fn link(&self) -> &Link;

    /// A close is asked for this session, by its own request or a signal above it.
    fn signalled(&self) -> bool {
        self.link().asked().is_some() || self.control().requested().is_some()
    }
}

/// How the outside asks sessions to end: a tree of signals (one root per gateway, one child
/// per route), shared by every session below it, so a session holds no signal of its own.
///
/// Setting a signal does not wake anyone: whoever sets it wakes the sessions concerned
/// through their [`Link`]s (the session registry does, see `sessions.rs`). A relay reads the
/// signals each time it runs, after registering its waker, so no request is missed.
#[derive(Debug, Clone, Default)]
pub struct Control(Arc<Signals>);

#[derive(Debug, Default)]
struct Signals {
    /// The close code asked for; 0 while none is.
    close_code: AtomicU16,
    /// End now, without waiting for closing handshakes (the grace period is over).
    kill: AtomicBool,
    parent: Option<Control>,
}

impl Control {
    /// A signal below this one: it sees this one's requests as its own.
    pub fn child(&self) -> Control {
        Control(Arc::new(Signals {
            parent: Some(self.clone()),
            ..Signals::default()
        }))
    }

    /// Asks for close frames with `code` (1001 going away, 1012 service restart). The first
    /// request stands: a session that is already closing keeps its code.
    pub fn close_with(&self, code: u16) {
        let _ = self
            .0
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Asks for the end now. Implies a close (1001) for a session that was not closing yet.
    pub fn kill(&self) {
        self.close_with(close_code::GOING_AWAY);
        self.0.kill.store(true, Ordering::Release);
    }

    /// The close code asked for here or above, if any.
    pub(super) fn requested(&self) -> Option<u16> {
        match self.0.close_code.load(Ordering::Acquire) {
            0 => self.0.parent.as_ref()?.requested(),
            code => Some(code),
        }
    }

    pub(super) fn killed(&self) -> bool {
        self.0.kill.load(Ordering::Acquire) || self.0.parent.as_ref().is_some_and(Control::killed)
    }

    /// The same signal (not merely an equal one).
    pub fn same(&self, other: &Control) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A running relay's link to the outside: the live counters others may read, the waker
/// through which others make it look at its [`Control`], and a close asked for this session
/// alone.
#[derive(Debug, Default)]
pub struct Link {
    pub counters: Counters,
    pub(super) waker: AtomicWaker,
    /// Boxed: most sessions are never closed this way, and a pointer is all they pay.
    asked: OnceLock<Box<CloseRequest>>,
}

/// A close asked for one session (the admin API, a backend drain): close frames with this
/// code and reason to both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    /// At most 123 bytes of UTF-8 (a close frame's payload is at most 125 bytes).
    pub reason: Box<str>,
    /// Asked by an operator for this session (`admin_closed`), rather than as part of a
    /// drain (`drained`).
    pub by_admin: bool,
}

impl CloseRequest {
    /// A drain's request (not an operator's) with `code` and that code's own phrase, as
    /// reloads, shutdowns and route closes send it.
    pub fn drain(code: u16) -> CloseRequest {
        CloseRequest {
            code,
            reason: crate::frame::close_code::phrase(code).into(),
            by_admin: false,
        }
    }

    /// The admin API's drain of a backend with `close`: 1001 "backend draining".
    pub fn backend_draining() -> CloseRequest {
        CloseRequest {
            code: crate::frame::close_code::GOING_AWAY,
            reason: "backend draining".into(),
            by_admin: false,
        }
    }
}

impl Link {
    /// Makes the relay run and read its signals (after one of them was set).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Makes `waker` the one [`wake`](Self::wake) wakes, while the session hibernates (the
    /// relay registers its own task's whenever it runs).
    pub fn listen(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Asks this session alone to close. The first request stands (false for a later one);
    /// a session already closing for another reason keeps that reason.
    pub fn close(&self, request: CloseRequest) -> bool {
        let first = self.asked.set(Box::new(request)).is_ok();
        self.wake();
        first
    }

    /// The close asked for this session, if any.
    pub fn asked(&self) -> Option<&CloseRequest> {
        self.asked.get().map(|b| &**b)
    }
}

/// Live counters, written by the relay as it goes and read by the session registry, the
/// admin API and the metrics while it runs (relaxed atomics: each is a plain store or add on
/// a line only this session writes).
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes read from the client (and forwarded to the backend).
    pub client_to_backend: AtomicU64,
    pub backend_to_client: AtomicU64,
    /// Complete messages from the client (frames ending a message).
    pub messages_client_to_backend: AtomicU64,
    pub messages_backend_to_client: AtomicU64,
    /// When either side last sent anything, as [`millis`] since the process's clock start.
    pub last_active: AtomicU64,
    /// Pings the proxy sent, to either side.
    pub pings_sent: AtomicU32,
    /// The session is hibernating (`hibernate.rs`), for the admin API. (In what would be the
    /// struct's padding: it costs the record nothing.)
    pub hibernating: AtomicBool,
}

/// After a chunk from `who` was read: its message count so far and when it was heard.
pub(super) fn count(counters: &Counters, who: CloseSide, messages: u64, heard: At) {
    let to = match who {
        CloseSide::Client => &counters.messages_client_to_backend,
        _ => &counters.messages_backend_to_client,
    };
    to.store(messages, Ordering::Relaxed);
    counters
        .last_active
        .store(heard.millis(), Ordering::Relaxed);
}

/// The process-wide clock's start, set the first time anyone asks.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as milliseconds since the process's clock start: an instant that fits a `u64`
/// atomic (see [`Counters::last_active`]).
pub fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

/// The instant [`millis`] turned into `ms`.
pub fn instant_from_millis(ms: u64) -> Instant {
    epoch() + std::time::Duration::from_millis(ms)
}

/// An instant in 8 bytes, for the deadlines a relay keeps for its whole life: milliseconds
/// since the process's clock start (see [`millis`]), plus one, so that an `Option<At>` is 8
/// bytes too (an `Instant` and an `Option<Instant>` are 16). Five of them in every session
/// cost 40 bytes instead of 80; a millisecond is finer than any of those timers needs. Read
/// from tokio's clock, as the relay's timers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct At(NonZeroU64);

impl At {
    pub(super) fn now() -> At {
        At::from(tokio::time::Instant::now())
    }

    /// The instant again (to the millisecond, rounded down).
    pub(super) fn instant(self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(instant_from_millis(self.millis()))
    }

    /// As [`millis`] gives it.
    pub(super) fn millis(self) -> u64 {
        self.0.get() - 1
    }

    /// `at` rounded up to the millisecond, for a deadline that must not come early: a
    /// token's `exp` ends the session at that time or after, never before (`From` rounds
    /// down, which is right for when something happened).
    pub(super) fn not_before(at: tokio::time::Instant) -> At {
        let since = at.into_std().saturating_duration_since(epoch());
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX - 1);
        let ms = ms + u64::from(!since.subsec_nanos().is_multiple_of(1_000_000));
        At(NonZeroU64::MIN.saturating_add(ms))
    }
}

impl From<tokio::time::Instant> for At {
    fn from(at: tokio::time::Instant) -> At {
        At(NonZeroU64::MIN.saturating_add(millis(at.into_std())))
    }
}

impl std::ops::Add<std::time::Duration> for At {
    type Output = At;

    fn add(self, d: std::time::Duration) -> At {
        At(self
            .0
            .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline rounds up to the millisecond, a moment down: a token's `exp` half a
    /// millisecond away is not reached by a clock at the millisecond before it.
    #[test]
    fn a_deadline_never_comes_early() {
        let base = tokio::time::Instant::from_std(epoch()) + std::time::Duration::from_secs(5);
        let at = base + std::time::Duration::from_micros(500);
        assert!(At::not_before(at).instant() >= at);
        assert!(At::from(at).instant() <= at);
        assert!(At::from(base) < At::not_before(at));
        assert_eq!(
            At::not_before(base),
            At::from(base),
            "a whole millisecond stays"
        );
    }
}
