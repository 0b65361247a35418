//! The registry of live sessions.
//!
//! hyper forgets a connection once it is upgraded, so the proxy keeps its own list: what each
//! session is (route, client, backend, start, counters) and a cancellation signal for each,
//! so that a shutdown can wait for them and, after the grace period, end them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::{Control, Counters};

/// What the registry knows about one live session.
#[derive(Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub route: Arc<str>,
    pub client: SocketAddr,
    pub backend: Arc<str>,
    pub started: Instant,
    pub started_at: SystemTime,
    /// Live byte counters, written by the relay (which borrows them from here).
    pub counters: Counters,
    /// How to end this session: close frames (drain, reload) or a cut.
    pub control: Control,
}

#[derive(Debug)]
pub struct Sessions {
    live: Mutex<HashMap<u64, Arc<SessionInfo>>>,
    next_id: AtomicU64,
    draining: AtomicBool,
    /// Parent of every route's close token: cancelling it sends close frames everywhere.
    close_all: CancellationToken,
    /// Every session's kill token: cancelling it cuts every session.
    kill_all: CancellationToken,
    /// Every session task, so shutdown can wait for them.
    tasks: TaskTracker,
    /// The live count, for anyone who waits for it to change (drain, tests, metrics).
    count: tokio::sync::watch::Sender<usize>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            live: Mutex::default(),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            close_all: CancellationToken::new(),
            kill_all: CancellationToken::new(),
            tasks: TaskTracker::new(),
            count: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// Removes its session from the registry when dropped, however the session task ends.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    pub info: Arc<SessionInfo>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut live = self.sessions.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&self.info.id);
        self.sessions.count.send_replace(live.len());
    }
}

impl Sessions {
    /// A fresh id for a request (sessions and refusals share the sequence, for log correlation).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a session about to start relaying.
    /// The close/kill signals for one route's sessions: a child of the registry-wide close
    /// token (a shutdown closes everything; a reload can close one route's sessions with 1012)
    /// shared by every session of the route, so a session costs no token of its own.
    pub fn route_control(&self) -> Control {
        Control {
            close: self.close_all.child_token(),
            close_code: Arc::default(),
            kill: self.kill_all.clone(),
        }
    }

    /// Registers a session about to start relaying; `route`, `backend` and `control` are the
    /// route's and backend's own, shared.
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        route: Arc<str>,
        client: SocketAddr,
        backend: Arc<str>,
        control: &Control,
    ) -> SessionGuard {
        let info = Arc::new(SessionInfo {
            id,
            route,
            client,
            backend,
            started: Instant::now(),
            started_at: SystemTime::now(),
            counters: Counters::default(),
            control: control.clone(),
        });
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(id, info.clone());
        self.count.send_replace(live.len());
        drop(live);
        SessionGuard {
            sessions: self.clone(),
            info,
        }
    }

    /// Spawns a session task, tracked for shutdown.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the number of live sessions satisfies `pred`.
    pub async fn wait_for_count(&self, pred: impl FnMut(&usize) -> bool) {
        let mut rx = self.count.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(pred).await;
    }

    /// A snapshot of the live sessions.
    pub fn list(&self) -> Vec<Arc<SessionInfo>> {
        let mut v: Vec<_> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// From now on new upgrades are refused with 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Sends close frames (1001 going away) to both sides of every session, including
    /// sessions that start after this call.
    pub fn close_all(&self) {
        self.close_all.cancel();
    }

    /// Waits until every session task has ended, or until `deadline`. Returns how many
    /// sessions were still live then (0 if all ended in time).
    pub async fn wait_idle(&self, deadline: tokio::time::Instant) -> usize {
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        self.len()
    }

    /// Cuts every remaining session and waits for their tasks to finish.
    pub async fn kill_all(&self) {
        // A session notices `kill` only after `close` (it waits on one at a time, see
        // `relay::relay`), so a kill always closes first.
        self.close_all.cancel();
        self.kill_all.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
