//! wsgate: a reverse proxy for WebSockets.
//!
//! A connection meets these phases in this order; each lives in its own file:
//!
//! | phase | module |
//! |---|---|
//! | listeners, socket options, per-connection task, TLS handshake, first-request deadline | [`accept`] |
//! | PROXY protocol v1/v2 header on listeners that expect one (behind an L4 balancer) | [`proxy_protocol`] |
//! | TLS: certificates, SNI, client certificates, reload, the backend client config | [`tls`] |
//! | HTTP front end: hyper's HTTP/1.1 and HTTP/2 servers, timers, header limits | [`http`] |
//! | the request head's refusals by hyper (431, 414, 400, timeouts): counted, logged, answered with a reason | [`head_guard`] |
//! | the orchestrator: each phase below as one line, one refusal point | [`proxy`] |
//! | the request target: one host, one canonical path, before routing | [`target`] |
//! | the path canonicaliser (RFC 3986 §6.2.2, dot segments, slashes) | [`path`] |
//! | route by host and path prefix | [`route`] |
//! | RFC 6455 §4.2.1 (and RFC 8441) handshake checks, accept key | [`handshake`] |
//! | admission limits: sessions (process, route, per address), handshake rates, the descriptor reserve | [`limits`] |
//! | edge policy: Origin, subprotocols, cookies, token (JWT), forward-auth, identity headers, trusted forwarding | [`policy`] |
//! | the proxy's own HTTP client for forward-auth and JWKS subrequests | [`http_client`] |
//! | permessage-deflate: the backend's offer (`strip`, no context takeover), the client's answer | [`deflate`] |
//! | backend pick, connect with failover, backend handshake and its checks | [`backend`] |
//! | the raw sockets taken back from hyper after the upgrade | [`upgraded`] |
//! | one session's task: the relay driven to the access record, hibernation when quiet | [`session_task`] |
//! | the relay loop after the 101: frames both ways, timers, close codes, counters | [`relay`] |
//! | hibernating sessions: each worker's lot, which wakes them on input, a timer or a signal | [`hibernate`] |
//! | WebSocket frames: the streaming header scanner, the frames the proxy writes, close codes | [`frame`] |
//! | registry of live sessions, drain | [`sessions`] |
//! | errors and their mapping to status codes, outcomes and fault | [`error`] |
//! | the outcome names (log fields, refusal counters, metric labels) | [`outcome`] |
//! | logging, the access log, request ids and trace context, the refusal log's rate limit | [`telemetry`] |
//!
//! Around them: [`config`] is the only module that knows the TOML file (its schema, parsing
//! and validation, every error with key and line), and hands the others typed values;
//! [`admin`] is the admin listener (metrics, health, the session API, the status page) and
//! [`metrics`] what it counts and exposes; [`reload`] applies a new config to a running
//! gateway, and [`listeners`] holds the listening sockets it adds, removes and re-configures;
//! [`upgrade`] hands those sockets to a new process (binary upgrade) or takes them from
//! systemd; [`notify`] tells systemd about readiness, reloads
//! and shutdown;
//! [`demo`] is `wsgate demo`'s built-in echo backend and browser page; [`fuzz`] holds the
//! properties every parser of untrusted bytes is fuzzed against (`fuzz/`, replayed by
//! `cargo test`).
//!
//! [`Gateway::start`] binds the listeners and returns a [`Handle`] to stop it.

pub mod accept;
pub mod admin;
pub mod backend;
pub mod config;
pub mod deflate;
pub mod demo;
pub mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzz;
pub mod handshake;
pub mod head_guard;
pub mod hibernate;
pub mod http;
pub mod http_client;
pub mod http_proxy;
pub mod ip_text;
pub mod limits;
pub mod listeners;
pub mod metrics;
pub mod notify;
pub mod outcome;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod proxy_protocol;
pub mod query;
pub mod relay;
pub mod reload;
pub mod route;
pub mod session_task;
pub mod sessions;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod tls_io;
pub mod tls_records;
pub mod upgrade;
pub mod upgraded;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use reload::ReloadReport;

use crate::proxy::ProxyState;
use crate::sessions::Sessions;

/// Entry point for running the proxy in-process (the binary and the tests both use it).
pub struct Gateway;

/// What a shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Sessions still live when the grace period ran out, and therefore cut.
    pub sessions_ended: usize,
}

/// A running gateway.
pub struct Handle {
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    stop: CancellationToken,
    sessions: Arc<Sessions>,
    state: Arc<ProxyState>,
    supervisor: JoinHandle<ShutdownReport>,
    /// Stops the extra workers' threads when the handle goes.
    _workers: Option<tokio_util::sync::DropGuard>,
}

impl Gateway {
    /// Binds every listener (port 0 picks a free port) and starts serving. Sockets passed by
    /// systemd (socket activation), or handed over by a running wsgate at `[upgrade] socket`,
    /// are used instead of binding where they match a listener (see [`upgrade`]).
    ///
    /// `[runtime] workers` (absent: 1 here) says how many workers serve connections; with
    /// `scheduler = "per_worker"` the extra ones are threads started here (see [`workers`]),
    /// with `"work_stealing"` they are the caller's runtime's.
    pub async fn start(config: Config) -> std::io::Result<Handle> {
        let workers = config.workers.unwrap_or(1);
        Gateway::start_with_workers(config, workers).await
    }

    /// [`Gateway::start`] with `workers` in place of `[runtime] workers` (the binary passes
    /// one per CPU when the key is absent).
    pub async fn start_with_workers(config: Config, workers: usize) -> std::io::Result<Handle> {
        let mut inherited = upgrade::Inherited::from_systemd();
        let predecessor = match &config.upgrade_socket {
            Some(path) => upgrade::take_over(path).await?.map(|(p, sockets)| {
                inherited.extend(sockets);
                p
            }),
            None => None,
        };
        let sessions = Arc::new(Sessions::default());
        let bound =
            listeners::bind_all(&config.listeners, config.source.as_deref(), &mut inherited)?;
        let admin_socket = config
            .admin
            .as_ref()
            .and_then(|a| inherited.take_admin(a.addr));
        let state = Arc::new(ProxyState::new(config, sessions.clone()));
        state.listeners.set_systemd(inherited.systemd().to_vec());
        let stop = state.listeners.stop.clone();
        let extra = match state.initial.scheduler {
            config::Scheduler::PerWorker => workers.saturating_sub(1),
            config::Scheduler::WorkStealing => 0,
        };
        let workers_guard = if extra > 0 {
            let workers = workers::Workers::start(extra)?;
            let guard = workers.stop_guard();
            state.listeners.set_workers(workers);
            Some(guard)
        } else {
            None
        };
        tracing::info!(
            workers,
            scheduler = state.initial.scheduler.as_str(),
            "runtime"
        );
        state.listeners.start(&state, bound)?;
        let addrs = state.listeners.addrs();
        for r in state.current().routes.iter() {
            let backends: Vec<&str> = r
                .pool
                .backends()
                .iter()
                .map(|b| b.url.url.as_str())
                .collect();
            tracing::info!(route = %r.config.name, host = r.config.host.as_deref().unwrap_or("*"), path = %r.config.path, backends = telemetry::list(&backends), "route");
        }
        // The admin listener outlives the proxy's: during a drain `/readyz` says 503 and the
        // metrics can still be scraped. It stops when the shutdown is complete.
        let admin_stop = CancellationToken::new();
        let admin_addr = match state.initial.admin.clone() {
            Some(config) => {
                let config_line = config.listen_line;
                let registry = metrics::collector::registry(metrics::collector::GatewayMetrics {
                    state: state.clone(),
                    started: std::time::SystemTime::now(),
                });
                let admin = Arc::new(admin::Admin {
                    state: state.clone(),
                    registry,
                    started: std::time::SystemTime::now(),
                    config,
                    stop: admin_stop.clone(),
                    handed_over: admin_stop.child_token(),
                });
                match admin::start(admin, admin_socket).await {
                    Ok(addr) => Some(addr),
                    Err(e) => {
                        stop.cancel();
                        // Named as a config error, as a proxy listener's is.
                        let source = state.initial.source.as_deref();
                        return Err(listeners::bind_error(e, source, config_line, "admin"));
                    }
                }
            }
            None => None,
        };
        inherited.close_unused();
        if let Some(predecessor) = predecessor {
            match predecessor.ready().await {
                Ok(drained) => {
                    upgrade::keep_drains(&state, &drained);
                }
                // Both processes accept from the same sockets until the old one stops:
                // nothing is lost, but the old one may not drain on its own.
                Err(e) => {
                    tracing::warn!(error = %e, "the previous process did not confirm the hand-over")
                }
            }
        }
        if let Some(path) = state.initial.upgrade_socket.clone() {
            tokio::spawn(upgrade::serve(state.clone(), path, stop.clone()));
        }
        tokio::spawn(limits::shed_periodically(stop.clone(), {
            let state = state.clone();
            move || state.shed_idle_limits()
        }));
        if let Some(every) = state.initial.watch {
            tokio::spawn(reload::watch(state.clone(), every, stop.clone()));
        }
        // The active health checks end with the gateway (a reload stops its old routes' own).
        let checked = state.clone();
        let checks_stop = stop.clone();
        tokio::spawn(async move {
            checks_stop.cancelled().await;
            checked.current().routes.stop_checks();
        });
        let conns = state.listeners.conns.clone();
        // `[shutdown]` as the config in force when the drain starts (a reload may change it).
        let drain = {
            let state = state.clone();
            move || {
                let current = state.current();
                let c = &current.config;
                (c.shutdown_grace, c.shutdown_close_spread)
            }
        };
        let listening = state.clone();
        let close_listeners = move || listening.listeners.close_all();
        let supervised = supervise(
            (stop.clone(), state.listeners.cut.clone()),
            conns,
            sessions.clone(),
            drain,
            close_listeners,
        );
        let supervisor = tokio::spawn(async move {
            let report = supervised.await;
            admin_stop.cancel();
            report
        });
        Ok(Handle {
            addrs,
            admin_addr,
            stop,
            sessions,
            state,
            supervisor,
            _workers: workers_guard,
        })
    }
}

/// How long the shutdown waits, at the end of its grace, for the connections it cuts: each
/// writes the 503 of a request still waiting on its backend (within 100 ms, `accept.rs`'s
/// `CUT_ANSWER`) and drops the rest.
const CUT_WAIT: Duration = Duration::from_secs(1);

/// Waits for the stop signal, then drains: no new connections (the listening sockets close,
/// so the kernel refuses new ones instead of queueing them for no one); a connection without a
/// request in flight (none yet, a head still arriving, an idle keep-alive, a TLS handshake
/// or PROXY header under way) closes at once (over TLS with its `close_notify`), a request in
/// flight finishes, a refused upgrade's lingering close goes on; every session gets close
/// frames (1001) and up to `grace` for its closing handshake. Then whatever is left is cut:
/// a request still waiting on its backend is answered 503, the rest is dropped.
///
/// Returns as soon as the connections and the sessions are done: nothing here waits for a
/// timer that has nothing left to guard, so the process exits when its last session does.
async fn supervise(
    (stop, cut): (CancellationToken, CancellationToken),
    conns: TaskTracker,
    sessions: Arc<Sessions>,
    drain: impl FnOnce() -> (Duration, Option<Duration>),
    close_listeners: impl FnOnce(),
) -> ShutdownReport {
    stop.cancelled().await;
    close_listeners();
    let (grace, spread) = drain();
    let started = tokio::time::Instant::now();
    let deadline = started + grace;
    tracing::info!(
        live_sessions = sessions.len(),
        connections = conns.len(),
        grace = ?grace,
        "shutting down: no new connections, closing sessions; connections with no request in flight close now"
    );
    // With `close_spread`, the close frames go out over that window (shorter than the grace
    // period, which validation checks) while the rest of the drain goes on.
    let closing = async {
        match spread {
            Some(spread) => sessions.close_all_spread(spread).await,
            None => sessions.close_all(),
        }
    };
    let waiting = async {
        conns.close();
        let _ = tokio::time::timeout_at(deadline, conns.wait()).await;
        sessions.wait_idle(deadline).await
    };
    let ((), left) = tokio::join!(closing, waiting);
    // Connections still serving a request (a handshake waiting on its backend) are dropped
    // by their tasks now, which record them; a moment for that, then the sessions go.
    cut.cancel();
    let _ = tokio::time::timeout(CUT_WAIT, conns.wait()).await;
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "grace period over: cutting remaining sessions"
        );
    }
    sessions.kill_all().await;
    tracing::info!(elapsed = ?started.elapsed(), "shutdown complete");
    ShutdownReport {
        sessions_ended: left,
    }
}

impl Handle {
    /// The first listener's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listener's bound address, in config order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The admin listener's bound address, if the config has one (`[admin]`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The live-session registry.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Reads every TLS listener's certificate files again (SIGHUP). New handshakes use the new
    /// certificates; live sessions are not touched. An entry whose files fail to load keeps
    /// the certificate it had while the others are renewed, and is logged and returned
    /// (entry, files and reason: [`tls::Reloaded`]); a client CA file that fails to load
    /// keeps the listener as it was, and is logged and returned as the error.
    pub fn reload_certificates(&self) -> Vec<(SocketAddr, Result<tls::Reloaded, String>)> {
        let mut results = Vec::new();
        for (listener, addr) in self.state.listeners.configs() {
            let Some(tls) = &listener.tls else { continue };
            let result = tls.reload();
            match &result {
                Ok(r) => {
                    tracing::info!(listener = %addr, "TLS certificates reloaded");
                    for kept in &r.kept {
                        tracing::warn!(listener = %addr, error = %kept, "TLS certificate files do not load");
                    }
                }
                Err(e) => {
                    tracing::warn!(listener = %addr, error = %e, "TLS certificate reload failed; keeping the previous certificates")
                }
            }
            results.push((addr, result));
        }
        results
    }

    /// Changes whenever the TLS listener at `index` (config order) has reloaded its
    /// certificates (SIGHUP or a file change); `None` for a plain listener.
    pub fn certificate_reloads(&self, index: usize) -> Option<tokio::sync::watch::Receiver<u64>> {
        let (listener, _) = self.state.listeners.configs().into_iter().nth(index)?;
        listener.tls.as_ref().map(|t| t.reloads())
    }

    /// Closes every live session of the route named `name` with close frames carrying `code`
    /// (1012 "service restart" when a reload removes the route), at frame boundaries, and
    /// waits for nothing. Returns false if there is no such route.
    pub fn close_route(&self, name: &str, code: u16) -> bool {
        match self.state.current().routes.named(name) {
            Some(route) => {
                self.sessions.close_route(&route.control, code);
                true
            }
            None => false,
        }
    }

    /// Refused handshakes so far, by route (`"-"` for requests that matched no route) and
    /// outcome.
    pub fn refusals(&self) -> std::collections::BTreeMap<(String, &'static str), u64> {
        let mut out = std::collections::BTreeMap::new();
        for (outcome, n) in self.state.unrouted_refusals.snapshot() {
            out.insert(("-".to_string(), outcome.as_str()), n);
        }
        for route in self.state.current().routes.iter() {
            for (outcome, n) in route.refusals.snapshot() {
                out.insert((route.name.to_string(), outcome.as_str()), n);
            }
        }
        out
    }

    /// Applies an already validated config: new handshakes use it at once; sessions of
    /// removed routes (and of changed routes with `on_change = "restart"`, and of backends a
    /// route no longer lists) get close 1012 spread over `[reload] close_spread`; the others
    /// go on untouched; listeners are added, removed or re-configured. Fails, changing
    /// nothing, when a listener it adds cannot be bound. See [`reload`].
    pub fn reload(&self, config: Config) -> Result<ReloadReport, config::ConfigErrors> {
        reload::apply(&self.state, config)
    }

    /// Changes whenever a reload has taken effect, to the new generation's number (1 at
    /// start).
    pub fn generations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.state.generations.subscribe()
    }

    /// Reads the config file again ([`Config::load`] records which) and applies it; on any
    /// error nothing changes and the errors are logged and returned. The file is read and
    /// validated on a blocking thread: the runtime's workers relay sessions meanwhile.
    pub async fn reload_file(&self) -> Result<ReloadReport, config::ConfigErrors> {
        reload::from_file(&self.state).await
    }

    /// A binary upgrade's successor, from its start until it exits: reloads wait for it
    /// ([`upgrade::Successor`]).
    pub fn successor(&self) -> &upgrade::Successor {
        &self.state.successor
    }

    /// Starts a graceful shutdown: `/readyz` answers 503 from now on; after
    /// `[shutdown] unready_delay` (none by default) new upgrades get 503, the listeners close
    /// and the sessions get their close frames.
    pub fn shutdown(&self) {
        self.state
            .shutdown(self.state.current().config.unready_delay);
    }

    /// Resolves once the drain has begun, whoever began it: a signal through
    /// [`Handle::shutdown`], or a binary upgrade that handed the listeners to a new process.
    pub async fn stopping(&self) {
        self.stop.cancelled().await
    }

    /// A token cancelled when [`Handle::stopping`] resolves, to ask without the handle
    /// (cancelling it changes nothing).
    pub fn stopping_token(&self) -> CancellationToken {
        self.stop.child_token()
    }

    /// `[upgrade] socket`, where this process hands its listeners to a successor.
    pub fn upgrade_socket(&self) -> Option<&std::path::Path> {
        self.state.initial.upgrade_socket.as_deref()
    }

    /// The bound addresses of the listeners running now (a reload may add or remove some),
    /// in config order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.state.listeners.addrs()
    }

    /// Waits until the gateway has stopped (after [`Handle::shutdown`]).
    pub async fn wait(self) -> ShutdownReport {
        self.supervisor
            .await
            .unwrap_or(ShutdownReport { sessions_ended: 0 })
    }
}

/// Test helpers shared with the integration tests (`tests/it/support/`), compiled into unit tests only.
// The `#[path]` on the module makes `tests/it/support/` its directory: a path relative to
// `src/test_support/`, which does not exist, would not resolve.
#[cfg(test)]
#[path = "../tests/it/support"]
pub(crate) mod test_support {
    #[path = "fake_auth.rs"]
    pub mod fake_auth;
    #[path = "temp_dir.rs"]
    pub mod temp_dir;
}
