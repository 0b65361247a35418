//! The session's links to the outside: the [`Control`] signals that ask it to end (drain,
//! reload) and the [`Link`] through which the registry reads its counters and wakes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};

use atomic_waker::AtomicWaker;

use crate::frame::close_code;

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

/// A running relay's link to the outside: the live byte counters others may read, and the
/// waker through which others make it look at its [`Control`].
#[derive(Debug, Default)]
pub struct Link {
    pub counters: Counters,
    pub(super) waker: AtomicWaker,
}

impl Link {
    /// Makes the relay run and read its signals (after one of them was set).
    pub fn wake(&self) {
        self.waker.wake();
    }
}

/// Live per-direction byte counters, readable by the session registry while the relay runs.
#[derive(Debug, Default)]
pub struct Counters {
    pub client_to_backend: AtomicU64,
    pub backend_to_client: AtomicU64,
}
