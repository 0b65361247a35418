//! A session's task: from the client's side of the upgrade to the access-log record, and the
//! task's hibernation while the session is quiet (`hibernate.rs`: the task ends, the session
//! is set aside in its worker's lot, and a new task picks it up where it stopped).

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::deflate;
use crate::hibernate::Sleeper;
use crate::proxy::StreamGuard;
use crate::relay::{self, Env, Relay, Step};
use crate::sessions::SessionGuard;
use crate::telemetry::access;
use crate::upgraded::UpgradedIo;

/// What a session task starts from.
pub(crate) struct SessionStart {
    pub client_upgrade: OnUpgrade,
    /// The backend's socket and what was read past its 101.
    pub backend: (UpgradedIo, bytes::Bytes),
    /// RSV bits the negotiated extensions allow.
    pub allowed_rsv: u8,
    /// The registry record (route, backend lease, counters), removed when this drops.
    pub session: SessionGuard,
    pub stream_guard: Option<StreamGuard>,
    /// When the session's token expires, on a route with `expire_sessions`.
    pub token_end: Option<std::time::SystemTime>,
    /// Inflated message sizes to count (`max_message_inflated`, see `deflate`).
    pub counting: Option<deflate::Counting>,
}

type SessionRelay = Relay<UpgradedIo, UpgradedIo>;

/// One session, from the client's side of the upgrade to the access-log record.
///
/// The task's state is most of what a waiting session costs: the relay's two sides, plus
/// pointers to the record and the stream guard. A quiet one hibernates without it.
pub(crate) async fn run(start: Box<SessionStart>) {
    // Two steps, so that the task's state is the larger of the two, not both (the first
    // step's future is dropped at the end of its statement).
    let Some(awake) = upgraded(start).await else {
        return;
    };
    drive(awake).await;
}

/// The session's relay, once hyper has let go of the client's socket.
async fn upgraded(start: Box<SessionStart>) -> Option<Awake> {
    // Unboxed in a block, so the box is freed now rather than when the session ends.
    let SessionStart {
        client_upgrade,
        backend,
        allowed_rsv,
        session,
        stream_guard,
        token_end,
        counting,
    } = {
        let start = start;
        *start
    };
    let keepalive = session.info.route.config.session.ping_interval.is_none();
    let (client, backend) =
        crate::upgraded::upgraded_sockets(session.info.id, client_upgrade, backend, keepalive)
            .await?;
    let hibernate = session.info.route.config.session.hibernate_after.is_some();
    let relay = relay::relay(client, backend, session.info.clone(), allowed_rsv)
        .token_expires_at(token_end)
        .count_inflated(counting)
        .may_hibernate(hibernate);
    Some(Awake {
        relay,
        session,
        stream_guard,
    })
}

/// A session as its task runs it.
struct Awake {
    relay: SessionRelay,
    session: SessionGuard,
    stream_guard: Option<StreamGuard>,
}

/// Runs the relay until the session ends (then its record is written) or hibernates (then
/// the task ends, and the lot starts another when the session wakes). A plain future, not an
/// `async fn`: its state is the session's and nothing more (an `async fn` would keep room for
/// a second session beside the first, for the one handed back by a failed hibernation).
struct Drive(Option<Awake>);

fn drive(s: Awake) -> Drive {
    Drive(Some(s))
}

impl Future for Drive {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let Some(s) = this.0.as_mut() else {
                return Poll::Ready(());
            };
            match ready!(s.relay.poll_step(cx)) {
                Step::Ended(outcome) => {
                    if let Some(s) = this.0.take() {
                        finish(s, &outcome);
                    }
                    return Poll::Ready(());
                }
                Step::Idle { wake_at } => {
                    let Some(s) = this.0.take() else { continue };
                    match hibernate(s, wake_at) {
                        None => return Poll::Ready(()),
                        // A signal came first, or it cannot be set aside: it runs on, awake.
                        Some(mut awake) => {
                            awake.relay.stay_awake();
                            this.0 = Some(awake);
                        }
                    }
                }
            }
        }
    }
}

/// The session is over: its counters go to the route, its record to the access log.
fn finish(s: Awake, outcome: &relay::RelayOutcome) {
    let (info, route) = (&s.session.info, &s.session.info.route);
    if let Some(side) = outcome.late_frames {
        // Once per session, not per frame: a peer that keeps talking after its close frame
        // is a bug worth knowing about, not worth a log line per frame.
        tracing::debug!(
            session = info.id,
            request_id = info.meta.request_id(),
            side = side.as_str(),
            "frames after a close frame dropped (RFC 6455 §5.5.1)"
        );
    }
    route.stats.session_ended(outcome, info.started.elapsed());
    access::session_closed(info, outcome);
    drop(s.stream_guard);
}

/// A hibernating session: the relay with both legs out of the runtime, the record, and a
/// token that holds a shutdown back as its task did.
struct Asleep {
    awake: Awake,
    _token: TaskTrackerToken,
}

/// Sets a quiet session aside (see `hibernate.rs`). Hands it back, its legs in the runtime
/// again, when it cannot sleep.
fn hibernate(mut s: Awake, wake_at: Option<Instant>) -> Option<Awake> {
    let (c, b) = s.relay.legs_mut();
    if let Err(e) = c.sleep().and_then(|_| b.sleep()) {
        tracing::debug!(session = s.session.info.id, error = %e, "cannot hibernate");
        return Some(woken(s, false));
    }
    let sessions = s.session.registry().clone();
    // Set before the park, on the worker that would wake it: nothing can wake it sooner.
    let flag = &s.session.info.link.counters.hibernating;
    flag.store(true, std::sync::atomic::Ordering::Relaxed);
    let asleep = Box::new(Asleep {
        awake: s,
        _token: sessions.task_token(),
    });
    let refused = sessions.lots().park(asleep, wake_at).err();
    refused.map(|asleep| woken(asleep.awake, false))
}

/// Brings a session's legs back into the runtime. A leg that cannot come back is closed:
/// the relay then sees an error on it and ends the session. `by_input`: one of its sockets
/// woke it (see [`relay::Relay::woke`]).
fn woken(mut s: Awake, by_input: bool) -> Awake {
    let (c, b) = s.relay.legs_mut();
    for leg in [c, b] {
        if let Err(e) = leg.wake() {
            tracing::debug!(session = s.session.info.id, error = %e, "socket lost waking up");
        }
    }
    let flag = &s.session.info.link.counters.hibernating;
    flag.store(false, std::sync::atomic::Ordering::Relaxed);
    s.relay.woke(by_input);
    s
}

impl Sleeper for Asleep {
    fn fds(&self) -> [RawFd; 2] {
        let (c, b) = self.awake.relay.legs();
        [c, b].map(|leg| leg.asleep_fd().unwrap_or(-1))
    }

    fn listen(&self, waker: &Waker) {
        self.awake.session.info.link.listen(waker);
    }

    fn signalled(&self) -> bool {
        self.awake.session.info.signalled()
    }

    fn wake(self: Box<Self>, by_input: bool) {
        let Asleep { awake, _token } = *self;
        let sessions = awake.session.registry().clone();
        // Spawned (and tracked) before the token goes.
        sessions.spawn(drive(woken(awake, by_input)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `f`'s future occupies, without making one.
    fn future_size<A, R>(_: fn(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A waiting session is its task (this future plus tokio's ~112-byte task header, in
    /// 128-byte steps), its two sockets' I/O registrations (256 bytes each in tokio), its
    /// registry record and its timer (see ARCHITECTURE.md, "Memory per session"); a
    /// hibernating one is its box in the lot and its record. A field added to the relay's
    /// sides or to the session task shows here first; past 528 bytes the task takes the next
    /// 128-byte step (640 to 768 bytes), past 512 the hibernating box the next size class.
    #[test]
    fn a_waiting_session_stays_small() {
        let task = future_size(run);
        assert!(task <= 528, "session task state grew to {task} bytes");
        let asleep = std::mem::size_of::<Asleep>();
        assert!(
            asleep <= 512,
            "a hibernating session grew to {asleep} bytes"
        );
        // The record: ids, pointers, the client's address, the live counters the admin API
        // and metrics read, and a pointer to what the session was opened as (`SessionMeta`).
        let record = std::mem::size_of::<crate::sessions::SessionInfo>();
        assert!(record <= 176, "session record grew to {record} bytes");
    }
}
