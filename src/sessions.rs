//! The registry of live sessions.
//!
//! hyper forgets a connection once it is upgraded, so the proxy keeps its own list: what each
//! session is (route, client, backend, start, counters) and the link that wakes its relay,
//! so that a shutdown can close them, wait for them and, after the grace period, end them.
//!
//! An idle session's record is a good part of what it costs, so it holds pointers to what
//! it shares with its route and backend rather than copies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::backend::{Backend, BackendLease};
use crate::config::SessionConfig;
use crate::frame::close_code;
use crate::handshake::Transport;
use crate::hibernate::Lots;
use crate::limits::Permit;
use crate::relay::{CloseRequest, Control, Env, Link};
use crate::route::Route;

/// What a session was opened as, for the access log and the admin API: set once when the
/// session starts, boxed in the record (read far less often than the counters).
///
/// Its strings share one allocation, `text`, one after another; `ends` says where each ends.
/// Seven strings of their own cost a live session seven allocations, most of them smaller
/// than the allocator's smallest step for their length and all for the session's life: ~190
/// bytes with the struct in a plain session, 112 this way.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionMeta {
    text: Box<str>,
    /// The end in `text` of each of [`Field`]'s strings; an absent one is empty.
    ends: [u32; FIELDS],
    /// Which of the optional strings are present (bit `1 << field`): an empty one is not
    /// absent.
    present: u8,
    pub transport: Transport,
}

/// The strings of a [`SessionMeta`], in the order they are stored.
#[derive(Clone, Copy)]
enum Field {
    RequestId,
    TraceId,
    Host,
    Path,
    Subprotocol,
    User,
    UserAgent,
}
const FIELDS: usize = 7;

/// The strings a [`SessionMeta`] is made from.
pub struct MetaStrings<'a> {
    /// The request's id (`X-Request-Id`): the one a trusted proxy sent, or a fresh one. Sent
    /// to the backend and written on every log record of the session.
    pub request_id: &'a str,
    /// The W3C trace id the backend was sent, when it is not the request id (an incoming
    /// `traceparent`, or a trusted proxy's id that is not a trace id).
    pub trace_id: Option<&'a str>,
    /// The request's host (without port) and canonical path, never its query.
    pub host: &'a str,
    pub path: &'a str,
    /// The subprotocol the session speaks (the backend's choice), if any.
    pub subprotocol: Option<&'a str>,
    /// Who the route's policy found the client to be (a token's `sub`, a forward-auth
    /// header), if it asks.
    pub user: Option<&'a str>,
    /// The client's `User-Agent`, cut to a bound.
    pub user_agent: Option<&'a str>,
}

impl SessionMeta {
    pub fn new(transport: Transport, s: MetaStrings<'_>) -> SessionMeta {
        let all: [Option<&str>; FIELDS] = [
            Some(s.request_id),
            s.trace_id,
            Some(s.host),
            Some(s.path),
            s.subprotocol,
            s.user,
            s.user_agent,
        ];
        let mut text = String::with_capacity(all.iter().flatten().map(|v| v.len()).sum());
        let mut ends = [0; FIELDS];
        let mut present = 0;
        for (i, v) in all.iter().enumerate() {
            if let Some(v) = v {
                text.push_str(v);
                present |= 1 << i;
            }
            // The callers cut every string to a bound (`telemetry::cut`): far below 4 GiB.
            ends[i] = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        SessionMeta {
            text: text.into_boxed_str(),
            ends,
            present,
            transport,
        }
    }

    fn get(&self, f: Field) -> Option<&str> {
        let i = f as usize;
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize)
    }

    pub fn request_id(&self) -> &str {
        self.get(Field::RequestId).unwrap_or_default()
    }
    pub fn trace_id(&self) -> Option<&str> {
        self.get(Field::TraceId)
    }
    pub fn host(&self) -> &str {
        self.get(Field::Host).unwrap_or_default()
    }
    pub fn path(&self) -> &str {
        self.get(Field::Path).unwrap_or_default()
    }
    pub fn subprotocol(&self) -> Option<&str> {
        self.get(Field::Subprotocol)
    }
    pub fn user(&self) -> Option<&str> {
        self.get(Field::User)
    }
    pub fn user_agent(&self) -> Option<&str> {
        self.get(Field::UserAgent)
    }
}

impl std::fmt::Debug for SessionMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMeta")
            .field("request_id", &self.request_id())
            .field("trace_id", &self.trace_id())
            .field("transport", &self.transport)
            .field("host", &self.host())
            .field("path", &self.path())
            .field("subprotocol", &self.subprotocol())
            .field("user", &self.user())
            .field("user_agent", &self.user_agent())
            .finish()
    }
}

/// What the registry knows about one live session.
#[derive(Debug)]
pub struct SessionInfo {
    pub id: u64,
    /// The route: its name, its relay settings, and the [`Control`] its sessions share.
    pub route: Arc<Route>,
    pub client: SocketAddr,
    /// The session's claim on its backend (which names it); released with the record.
    pub lease: BackendLease,
    pub started: Instant,
    /// The relay's live counters and waker (the relay borrows it from here).
    pub link: Link,
    pub meta: Box<SessionMeta>,
}

/// A session's relay reads its route's settings and signals, and its own link, through its
/// record: one pointer for all three.
impl Env for SessionInfo {
    fn session(&self) -> &SessionConfig {
        &self.route.config.session
    }

    fn control(&self) -> &Control {
        &self.route.control
    }

    fn link(&self) -> &Link {
        &self.link
    }
}

impl SessionInfo {
    pub fn backend(&self) -> &Arc<str> {
        &self.lease.backend.name
    }
}

/// Which sessions a listing returns (`GET /api/sessions`): every given field must match.
#[derive(Debug, Default, Clone)]
pub struct Filter<'a> {
    pub route: Option<&'a str>,
    /// A backend's URL as written in the config.
    pub backend: Option<&'a str>,
    /// A client's IP address, or `ip:port`.
    pub client: Option<ClientFilter>,
}

/// A client as the session listing selects it: every session from an address, or one
/// connection. Parsed, so `::1`, `0:0:0:0:0:0:0:1` and `[::1]:4000` select what they say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFilter {
    Ip(std::net::IpAddr),
    Addr(SocketAddr),
}

impl std::str::FromStr for ClientFilter {
    type Err = ();

    fn from_str(s: &str) -> Result<ClientFilter, ()> {
        s.parse()
            .map(ClientFilter::Ip)
            .or_else(|_| s.parse().map(ClientFilter::Addr))
            .map_err(|_| ())
    }
}

impl Filter<'_> {
    fn matches(&self, s: &SessionInfo) -> bool {
        self.route.is_none_or(|r| *s.route.name == *r)
            && self.backend.is_none_or(|b| **s.backend() == *b)
            && self.client.is_none_or(|c| match c {
                ClientFilter::Ip(ip) => s.client.ip() == ip,
                ClientFilter::Addr(addr) => s.client == addr,
            })
    }
}

#[derive(Debug)]
pub struct Sessions {
    live: Mutex<HashMap<u64, Arc<SessionInfo>>>,
    next_id: AtomicU64,
    draining: AtomicBool,
    /// Parent of every route's [`Control`]: a close or kill here reaches every session.
    control: Control,
    /// Every session task, so shutdown can wait for them.
    tasks: TaskTracker,
    /// The live count, for anyone who waits for it to change (drain, tests, metrics).
    count: tokio::sync::watch::Sender<usize>,
    /// Hibernating sessions, by worker.
    lots: Lots,
    /// Sessions a reload's wave ([`Sessions::close_spread`]) will ask to close and has not
    /// asked yet: a later reload does not count them (or schedule them) again.
    scheduled: Mutex<std::collections::HashSet<u64>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            live: Mutex::default(),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            control: Control::default(),
            tasks: TaskTracker::new(),
            count: tokio::sync::watch::Sender::new(0),
            lots: Lots::default(),
            scheduled: Mutex::default(),
        }
    }
}

/// Removes its session from the registry when dropped, however the session task ends, and
/// gives back its place under the admission limits.
#[derive(Debug)]
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    pub info: Arc<SessionInfo>,
    /// The session's seats under the admission limits, taken before the backend was dialled;
    /// given back first when the session ends, so a new handshake that sees the live count
    /// fall finds the seat free.
    permit: Option<Permit>,
}

impl SessionGuard {
    /// The registry the session is in.
    pub fn registry(&self) -> &Arc<Sessions> {
        &self.sessions
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut live = self.sessions.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&self.info.id);
        // Under the lock: a scrape sees this session's traffic live or in the route's
        // totals, never both and never neither (`Sessions::locked`).
        let route = &self.info.route;
        route.stats.ended_traffic.add(&self.info.link.counters);
        self.sessions.publish_count(live.len());
    }
}

impl Sessions {
    /// A fresh id for a request (sessions and refusals share the sequence, for log correlation).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The registry's own signal, parent of every route's (see `RouteTable::new`): a
    /// shutdown closes everything, while a reload can close one route's sessions.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Registers a session about to start relaying, with its backend lease and its permit
    /// under the admission limits (held until the session ends).
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        route: Arc<Route>,
        client: SocketAddr,
        (lease, permit): (BackendLease, Permit),
        meta: SessionMeta,
    ) -> SessionGuard {
        let info = Arc::new(SessionInfo {
            id,
            route,
            client,
            lease,
            started: Instant::now(),
            link: Link::default(),
            meta: Box::new(meta),
        });
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.insert(id, info.clone());
        self.publish_count(live.len());
        drop(live);
        SessionGuard {
            sessions: self.clone(),
            info,
            permit: Some(permit),
        }
    }

    /// Wakes the relays of the sessions `which` selects, so they read their signals.
    fn wake(&self, mut which: impl FnMut(&SessionInfo) -> bool) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for info in live.values().filter(|i| which(i)) {
            info.link.wake();
        }
    }

    /// Sends close frames with `code` to both sides of every live session of the route whose
    /// signal is `control`, at frame boundaries. Each session is asked through its own link:
    /// the route's signal is shared by its later sessions too (and by its generations), and
    /// set there it would close every session the route opens from then on.
    pub fn close_route(&self, control: &Control, code: u16) {
        let request = CloseRequest::drain(code);
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for info in live.values().filter(|i| i.route.control.same(control)) {
            info.link.close(request.clone());
        }
    }

    /// Where sessions hibernate (`hibernate.rs`).
    pub fn lots(&self) -> &Lots {
        &self.lots
    }

    /// Holds shutdown back as a session task does, for a session that has none while it
    /// hibernates.
    pub fn task_token(&self) -> TaskTrackerToken {
        self.tasks.token()
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

    /// Sets the live count; called under the registry's lock. Waiters (a drain, a test) are
    /// woken only when there are any: a watch's send wakes through eight `Notify`s, each
    /// behind a lock of its own, and every session's start and end sets the count. The value
    /// is stored either way, and a waiter that subscribes later reads it before it waits.
    fn publish_count(&self, n: usize) {
        self.count.send_if_modified(|count| {
            *count = n;
            self.count.receiver_count() > 0
        });
    }

    /// Waits until the number of live sessions satisfies `pred`.
    pub async fn wait_for_count(&self, pred: impl FnMut(&usize) -> bool) {
        let mut rx = self.count.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(pred).await;
    }

    /// The live session with this id.
    pub fn get(&self, id: u64) -> Option<Arc<SessionInfo>> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&id).cloned()
    }

    /// Asks one session to close with `request`'s code and reason, to both sides. `None` if
    /// there is no such session; `Some(false)` if it had been asked already.
    pub fn close_session(&self, id: u64, request: CloseRequest) -> Option<bool> {
        self.get(id).map(|s| s.link.close(request))
    }

    /// Asks every session on `backend` to close with `request` (a backend drain). Returns
    /// how many were asked.
    pub fn close_backend(&self, backend: &Arc<Backend>, request: &CloseRequest) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for s in live.values() {
            if Arc::ptr_eq(&s.lease.backend, backend) {
                s.link.close(request.clone());
                n += 1;
            }
        }
        n
    }

    /// The live sessions `filter` selects, by id, from the first id after `after`, at most
    /// `limit` of them; and how many match in all.
    pub fn page(
        &self,
        filter: &Filter,
        after: u64,
        limit: usize,
    ) -> (Vec<Arc<SessionInfo>>, usize) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut matching: Vec<&Arc<SessionInfo>> =
            live.values().filter(|s| filter.matches(s)).collect();
        let total = matching.len();
        matching.retain(|s| s.id > after);
        matching.sort_unstable_by_key(|s| s.id);
        let page = matching.into_iter().take(limit).cloned().collect();
        (page, total)
    }

    /// Runs `f` over the live sessions while the registry is locked: for the metrics, which
    /// must see each session either live or in its route's totals, never both or neither
    /// (see [`SessionGuard`]'s drop). Keep `f` short: handshakes wait for the lock.
    pub fn locked<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &SessionInfo>) -> R) -> R {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut live.values().map(|s| &**s))
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
        self.control
            .close_with(crate::frame::close_code::GOING_AWAY);
        self.wake(|_| true);
    }

    /// Like [`Sessions::close_all`], spread over `spread`: each live session gets its close
    /// frames (1001) at its own uniformly random moment within it, then every session
    /// (including any that started meanwhile) is asked as `close_all` does. Returns once the
    /// last one has been asked.
    pub async fn close_all_spread(&self, spread: std::time::Duration) {
        let request = CloseRequest::drain(close_code::GOING_AWAY);
        self.close_spread(self.list(), request, spread).await;
        self.close_all();
    }

    /// Whether a close of this session has been asked for (for it alone, or for its route or
    /// the whole gateway), or a reload's wave will ask for one ([`Sessions::schedule`]).
    pub fn closing(&self, s: &SessionInfo) -> bool {
        s.signalled() || self.lock_scheduled().contains(&s.id)
    }

    /// Marks `sessions` as a wave's, before [`Sessions::close_spread`] asks them.
    pub fn schedule(&self, sessions: &[Arc<SessionInfo>]) {
        self.lock_scheduled().extend(sessions.iter().map(|s| s.id));
    }

    fn lock_scheduled(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<u64>> {
        self.scheduled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks each of `sessions` (marked with [`Sessions::schedule`]) to close with `request`,
    /// each at its own uniformly random moment within `spread` from now: their clients
    /// reconnect as a ramp, not all in the same second. Returns once the last one has been
    /// asked.
    pub async fn close_spread(
        &self,
        sessions: Vec<Arc<SessionInfo>>,
        request: CloseRequest,
        spread: std::time::Duration,
    ) {
        let start = tokio::time::Instant::now();
        let mut at: Vec<(std::time::Duration, Arc<SessionInfo>)> = sessions
            .into_iter()
            .map(|s| (spread.mul_f64(rand::random::<f64>()), s))
            .collect();
        at.sort_unstable_by_key(|(d, _)| *d);
        for (delay, session) in at {
            tokio::time::sleep_until(start + delay).await;
            session.link.close(request.clone());
            self.lock_scheduled().remove(&session.id);
        }
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
        // A kill also closes (1001) any session that was not closing yet.
        self.control.kill();
        self.wake(|_| true);
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{MetaStrings, SessionMeta};
    use crate::handshake::Transport;

    #[test]
    fn session_meta_gives_back_each_string_and_tells_absent_from_empty() {
        let m = SessionMeta::new(
            Transport::H2,
            MetaStrings {
                request_id: "0123456789abcdef0123456789abcdef",
                trace_id: None,
                host: "chat.example",
                path: "/room/é",
                subprotocol: Some(""),
                user: None,
                user_agent: Some("Mozilla/5.0"),
            },
        );
        assert_eq!(m.request_id(), "0123456789abcdef0123456789abcdef");
        assert_eq!(m.trace_id(), None);
        assert_eq!(m.host(), "chat.example");
        assert_eq!(m.path(), "/room/é");
        assert_eq!(m.subprotocol(), Some(""));
        assert_eq!(m.user(), None);
        assert_eq!(m.user_agent(), Some("Mozilla/5.0"));
        assert_eq!(m.transport, Transport::H2);

        let all = SessionMeta::new(
            Transport::H1,
            MetaStrings {
                request_id: "",
                trace_id: Some("t"),
                host: "",
                path: "/",
                subprotocol: Some("chat"),
                user: Some("alice"),
                user_agent: None,
            },
        );
        assert_eq!(
            (all.request_id(), all.trace_id(), all.host(), all.path()),
            ("", Some("t"), "", "/")
        );
        assert_eq!(
            (all.subprotocol(), all.user(), all.user_agent()),
            (Some("chat"), Some("alice"), None)
        );
        // One allocation for the strings, and a small struct around it.
        assert!(std::mem::size_of::<SessionMeta>() <= 48);
    }
}
