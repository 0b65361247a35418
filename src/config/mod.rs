//! Configuration: the TOML file, its validation, and the runtime [`Config`] the proxy reads.
//!
//! This is the only module that knows TOML. Two layers: [`mod@file`] mirrors the file with
//! `Option`s and `deny_unknown_fields` (the whole schema in one place, beside
//! `config.example.toml`); `parse` reads it, reporting every unknown key and wrongly typed
//! value in the config's words; `validate/` turns what remains into [`Config`], one file per
//! section, building TLS listeners and route policies through the typed constructors of
//! `crate::tls` and `crate::policy` and naming the key and line of each error they return.
//! All errors are reported at once. Runtime code never sees an `Option` that validation
//! could have settled.

pub mod file;
mod parse;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub(crate) use validate::overlaps;
pub use validate::{from_toml_str, from_toml_str_in, load_file, load_file_over, parse_backend_url};

/// The most a config file may hold: a file of 20,000 routes is about 2 MiB.
pub const MAX_CONFIG_FILE: u64 = 64 << 20;
/// The most a file a config names may hold (a certificate or key, a CA bundle, a JWKS or
/// token file, a secret): a system's whole CA bundle is about 200 KiB.
pub const MAX_NAMED_FILE: u64 = 16 << 20;

/// The bytes of the file at `path`, an error past `limit` bytes: a path mistyped as
/// `/dev/zero` or a device, or a file that is not what was meant, would otherwise be read
/// until memory ran out (at a reload, by the running gateway, every session with it).
pub fn read_limited(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB: not the file meant?",
            limit >> 20
        )));
    }
    Ok(bytes)
}

/// How long a client may take to send its complete request head. Long enough for a slow
/// mobile link, short enough that a slowloris client holds a socket for seconds, not minutes.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect to one backend. A healthy backend on a LAN answers in milliseconds; after this
/// the next backend of the route is tried.
pub const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The backend's answer to our upgrade request (from request sent to response head read).
/// Past it the client gets 504.
pub const DEFAULT_BACKEND_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ping a leg that has sent nothing for this long. Below the 60 s after which common load
/// balancers and NAT gateways drop a silent TCP connection, so pings also keep the path open;
/// a dead peer is found within `ping_interval + pong_timeout`.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// A session quiet for this long hibernates (see [`SessionConfig::hibernate_after`]); each
/// session then learns its own wait, up to sixteen times this (`relay/idle.rs`). A
/// hibernating session holds about half the memory of a waiting one; waking it costs about
/// 20 µs of CPU (measured: eight `epoll_ctl`, a task, the registrations), as much as relaying
/// an echo, paid once per quiet spell. One second puts a quiet session to sleep soon after
/// its last message (most of a chat or notification fleet, most of the time); the sessions
/// that talk every few seconds (presence, typing, short heartbeats) pay a few wakes, each
/// doubling their wait, until it outlasts their gaps, and then none (16 s covers a message
/// every 15 s).
pub const DEFAULT_HIBERNATE_AFTER: Duration = Duration::from_secs(1);
/// How long a peer has to answer the proxy's ping before it is taken for dead.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a shutdown waits for live sessions to end on their own before ending them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Request line plus headers. Browsers send large cookies; 32 KiB is four times nginx's
/// per-line buffer and still tiny per connection. Larger heads get 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Header count limit (hyper's default). More headers get 431.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// The body of a backend's non-101 answer passed on to the client is cut at this size.
pub const DEFAULT_MAX_ERROR_BODY: usize = 64 * 1024;
/// `//admin` is `/admin` to most backends (nginx and most frameworks merge slashes), so the
/// router must read it so too or a catch-all route would serve it.
pub const DEFAULT_MERGE_SLASHES: bool = true;
/// `%2F` is a separator to a backend that decodes before routing and data to one that does
/// not: refusing it is the only reading that cannot bypass a route's policy.
pub const DEFAULT_ESCAPED_SLASHES: crate::path::EscapedSlashes =
    crate::path::EscapedSlashes::Refuse;
/// hyper's read buffer cannot be smaller than this (it panics below 8192).
pub const MIN_HEADER_BYTES: usize = 8192;
/// Why a backend failed (its address, the OS or TLS error) goes to the log, not to the
/// client: an unauthenticated client has no use for it, and an attacker learns the internal
/// network and the proxy's state from it (`Too many open files` says the proxy is out of
/// sockets). The client gets the status and a generic reason.
pub const DEFAULT_ERROR_DETAIL: ErrorDetail = ErrorDetail::Log;

/// The validated configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub limits: Limits,
    pub http2: Http2Config,
    pub shutdown_grace: Duration,
    /// The shutdown's close frames (1001) go out over this long, each session at its own
    /// random moment, instead of all at once (`[shutdown] close_spread`): clients that
    /// reconnect at once then do not all arrive at the next instance in the same second.
    /// `None`: all at once.
    pub shutdown_close_spread: Option<Duration>,
    /// On shutdown, `/readyz` answers 503 for this long while everything else goes on, then
    /// the listeners close and the sessions get 1001: a load balancer that polls readiness
    /// (a Kubernetes endpoint removal) stops sending new clients before they would be refused.
    pub unready_delay: Duration,
    /// `[upgrade] socket`: where a running wsgate hands its listening sockets to a new one
    /// (`crate::upgrade`); `None`: no hand-over.
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// The window a reload's 1012s are spread over (`[reload] close_spread`).
    pub reload_close_spread: Duration,
    /// `[runtime] workers`: the threads that run sessions, handshakes and everything else;
    /// `None`: one per CPU. One worker runs tokio's single-threaded scheduler (`main.rs`).
    pub workers: Option<usize>,
    /// `[runtime] scheduler`: how several workers share connections (`main.rs`, `workers.rs`).
    pub scheduler: Scheduler,
    /// The file this config was read from (`Config::load`), which a reload reads again.
    pub source: Option<std::path::PathBuf>,
    /// Check the file this often and reload it when it changes (`[config] watch`); `None`:
    /// only on SIGHUP or `POST /api/reload`.
    pub watch: Option<Duration>,
    /// Static pages served on plain GET (not part of the TOML file: `wsgate demo` uses it).
    pub pages: Vec<StaticPage>,
    /// The admin listener (`[admin]`): metrics, health, the session API, the status page.
    /// `None`: off.
    pub admin: Option<AdminConfig>,
    /// What the log records say and how often (`[log]`).
    pub log: LogConfig,
    /// Every listener's `client_subject_header`: removed from every request on every
    /// listener (with its look-alikes), and set only by the listener that verified a
    /// certificate. Routes serve all listeners, so a header stripped only where it is set
    /// could be forged through any other listener. A reload keeps the names of the configs
    /// before it (`reload::apply`): connections accepted before it still set them.
    pub subject_headers: Vec<http::HeaderName>,
}

/// The admin listener (`[admin]`): a separate port for `/metrics`, `/healthz`, `/readyz`, the
/// session API and the status page. Never on a proxy port.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    /// The bearer token (`token_env` or `token_file`). Required on a non-loopback address;
    /// when set, write endpoints require it even on loopback.
    pub token: Option<AdminToken>,
    /// TLS for the admin listener (`[admin.tls]`); `None`: plain HTTP.
    pub tls: Option<std::sync::Arc<crate::tls::TlsListener>>,
    /// How often `[admin.tls]`'s certificate files are checked for changes, as a proxy
    /// listener's (`watch_interval`); `None`: only on SIGHUP, or no TLS.
    pub tls_watch: Option<Duration>,
    /// The config line of `listen`, for the error when it cannot be bound.
    pub listen_line: Option<usize>,
}

/// A secret that never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub std::sync::Arc<str>);

/// Shorter admin tokens are refused: the token guards closing sessions and draining
/// backends, and a short one can be found by trying (`openssl rand -hex 32` writes a good one).
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The log's settings (`[log]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The level of the "session open" record (`session_open`): a session that lasts hours
    /// is visible before it ends.
    pub session_open: LogLevel,
    /// Refusal records (and the proxy's other per-request warnings) written per second for
    /// one reason before similar lines are suppressed and counted (`refusals_per_second`).
    pub refusals_per_second: u32,
}

/// How several workers (`[runtime] workers`) share the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// Each worker is a thread with a single-threaded runtime of its own (its own `epoll`,
    /// timers and run queue) that accepts from every listening socket: a connection stays on
    /// the worker that accepted it, as in nginx's worker processes. Nothing is stolen, so no
    /// task or socket wake-up crosses cores.
    PerWorker,
    /// tokio's multi-threaded runtime: one pool of workers sharing one I/O driver, where an
    /// idle worker steals tasks from a busy one.
    WorkStealing,
}

/// Measured in the same runs on two shared cores, the per-worker runtimes cost less CPU per
/// handshake and per message than work stealing (docs/benchmarks.md, "One worker or several").
pub const DEFAULT_SCHEDULER: Scheduler = Scheduler::PerWorker;

impl Scheduler {
    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::PerWorker => "per_worker",
            Scheduler::WorkStealing => "work_stealing",
        }
    }
}

/// A record's level, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Debug,
    Off,
}

/// Info: a session that lasts hours shows in the log when it starts, not only when it ends.
pub const DEFAULT_SESSION_OPEN_LOG: LogLevel = LogLevel::Info;
/// Enough to see every refusal in normal traffic; a flood costs at most this many lines a
/// second per reason, plus one line saying how many were suppressed.
pub const DEFAULT_REFUSALS_PER_SECOND: u32 = 10;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            session_open: DEFAULT_SESSION_OPEN_LOG,
            refusals_per_second: DEFAULT_REFUSALS_PER_SECOND,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    /// The line of its `listen` key in the config file (`None` for a config not read from
    /// text): a bind that fails on a reload is reported there, as a validation error is.
    pub listen_line: Option<usize>,
    /// Time allowed for the TLS handshake, and then for the client's request head.
    pub handshake_timeout: Duration,
    /// TLS termination (`wss://`); `None` for plain `ws://`.
    pub tls: Option<std::sync::Arc<crate::tls::TlsListener>>,
    /// Read a PROXY protocol v1/v2 header first; its source address is the client's.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: the only peers whose connections start with the header (the
    /// load balancers); any other peer is a client connecting directly. Empty: every peer
    /// sends it.
    pub proxy_protocol_from: std::sync::Arc<[crate::policy::forwarding::Cidr]>,
    /// Peers whose forwarding headers are believed (see [`crate::policy::forwarding`]).
    pub trusted_proxies: std::sync::Arc<[crate::policy::forwarding::Cidr]>,
    /// Serve HTTP/2, and WebSockets over it (RFC 8441).
    pub http2: bool,
    /// How often the TLS certificate files are checked for changes; `None` = only SIGHUP.
    pub tls_watch: Option<Duration>,
    /// The listener's settings as written (its table, `[http2]`, `[limits]`, `[timeouts]`):
    /// a reload restarts the listener's accept loop, with the new settings, only when this
    /// differs (see `crate::listeners`).
    pub fingerprint: String,
}

/// A plain request's response head: long enough for a long-polling transport's held request
/// (Socket.IO and SockJS answer a poll after 25 s without news) and a slow report, short
/// enough that a hung backend costs the client a 504 within a minute.
pub const DEFAULT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// A plain request's longest pause between two reads of its body (nginx's
/// `client_body_timeout` is also 60 s).
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// A plain request's whole exchange: off, so server-sent events and downloads last as long as
/// they last (the response-head timeout still catches a backend that never answers).
pub const DEFAULT_REQUEST_TIMEOUT: Option<Duration> = None;
/// A pooled backend connection unused this long is closed. Below Node.js's 5 s
/// `keepAliveTimeout`, the shortest common backend default: a connection the backend is about
/// to close is never picked for a request.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// A plain request's body: ten times nginx's 1 MiB `client_max_body_size`, room for uploads a
/// real-time app's API takes; a bigger one gets 413 before the backend is asked.
pub const DEFAULT_MAX_REQUEST_BODY: Option<u64> = Some(10 << 20);
/// Plain requests of one route waiting for their backends at once: far above what a healthy
/// backend holds (long polls included), low enough that a stuck backend cannot pile up
/// unbounded tasks and sockets; past it requests get 503 at once (load shedding).
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;

/// A reload's 1012 "service restart" close frames go out over this window, each session at a
/// random moment in it: the clients of a removed route reconnect as a ramp, not a storm.
pub const DEFAULT_RELOAD_CLOSE_SPREAD: Duration = Duration::from_secs(10);

/// How often `[config] watch = true` checks the file: a `stat`, cheap enough to do often, and
/// a ConfigMap update or an editor's save takes effect within seconds.
pub const DEFAULT_CONFIG_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What a reload that changes a route does to the route's live sessions (`on_change`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// They go on under the settings they started with (new sessions get the new ones).
    Keep,
    /// They get close 1012 "service restart" (spread), and reconnect under the new settings.
    Restart,
}

/// Certificate files are checked this often for changes: cheap (a `stat` per file) and quick
/// enough that a renewed certificate (certbot, cert-manager) is served within seconds.
pub const DEFAULT_TLS_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Limits for HTTP/2 connections (all listeners).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Config {
    /// WebSockets (and requests) open at once on one connection. Each WebSocket is a stream
    /// for its whole life, so this is the number of tunnels one browser connection can hold.
    pub max_concurrent_streams: u32,
    /// Streams a client may open and reset before the server has accepted them (the
    /// "rapid reset" attack, CVE-2023-44487); past it the connection gets GOAWAY.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of client protocol errors before it ends the
    /// connection (CVE-2019-9514 style floods).
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 PING on a quiet connection; `None` = off.
    pub keep_alive_interval: Option<Duration>,
    /// No PING answer within this: the connection is closed.
    pub keep_alive_timeout: Duration,
    /// Bytes a client may send on one stream before wsgate has taken them (its
    /// `SETTINGS_INITIAL_WINDOW_SIZE`). The connection's window is this times
    /// `max_concurrent_streams` ([`Http2Config::connection_window`]).
    pub stream_window: u32,
}

impl Http2Config {
    /// The connection's receive window: room for [`H2_STREAMS_WINDOWED`] streams' whole
    /// windows at once. A stream is a WebSocket whose backend may stop reading (or whose
    /// client does not read the answers, which stops the relay reading it): what its client
    /// sent then waits unread in its stream window, and with a connection window no larger
    /// than one stream's (hyper's default: 1 MiB each), one such WebSocket froze every
    /// other on the connection. Not room for every stream: the unread bytes are wsgate's
    /// heap, not the kernel's socket buffers, and 100 streams' windows would let one client
    /// pin 25 MiB per connection.
    pub fn connection_window(&self) -> u32 {
        let streams = self.max_concurrent_streams.min(H2_STREAMS_WINDOWED);
        let all = u64::from(self.stream_window) * u64::from(streams);
        u32::try_from(all.min(MAX_H2_WINDOW)).unwrap_or(u32::MAX)
    }
}

/// How many streams' windows the connection's window holds: 16 stalled WebSockets on one
/// connection before the others wait, 4 MiB per connection at most by default.
pub const H2_STREAMS_WINDOWED: u32 = 16;

/// The largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
pub const MAX_H2_WINDOW: u64 = (1 << 31) - 1;
/// Per stream: 256 KiB is 5 MB/s of upload per WebSocket at 50 ms of round trip, and a
/// quarter of what hyper gave a stream (and its whole connection) before.
pub const DEFAULT_H2_STREAM_WINDOW: u32 = 256 * 1024;

/// 100 is what RFC 9113 §6.5.2 recommends as the minimum to allow and what nginx uses.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// hyper's default: enough for a browser cancelling a page's requests, not for a flood.
pub const DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// hyper's default.
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Like the WebSocket ping: below common 60 s NAT and load-balancer idle cuts.
pub const DEFAULT_H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            stream_window: DEFAULT_H2_STREAM_WINDOW,
            max_pending_accept_reset_streams: DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            max_local_error_reset_streams: DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS,
            keep_alive_interval: Some(DEFAULT_H2_KEEP_ALIVE_INTERVAL),
            keep_alive_timeout: DEFAULT_H2_KEEP_ALIVE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Each new session goes to the next backend in turn, in proportion to the weights
    /// (smooth weighted round robin, as nginx's).
    RoundRobin,
    /// Each new session goes to the backend with the fewest live sessions per unit of weight
    /// (ties: in turn).
    LeastConn,
    /// The same key always reaches the same backend (weighted rendezvous hashing); a request
    /// without the key is balanced round robin.
    Hash(HashKey),
}

/// What `balance = "hash"` reads from a request (`hash_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's address (behind trusted proxies, the one they name).
    Ip,
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    /// A claim of the verified token (a name or a dotted path).
    Claim(String),
}

/// `hash_key`'s default: the client's address, as nginx's `ip_hash`.
pub const DEFAULT_HASH_KEY: HashKey = HashKey::Ip;

/// `[route.health]`: how the route finds out that a backend is sick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Active checks; `None`: a backend is healthy until the passive rules say otherwise.
    pub check: Option<ActiveCheck>,
    /// Consecutive failed handshakes (connect failure or timeout, handshake timeout, 5xx,
    /// broken answer) that eject a backend; `0`: passive ejection off.
    pub max_failures: u32,
    /// The first ejection's length; each ejection in a row doubles it.
    pub ejection: Duration,
    /// The cap on an ejection's length; a backend not ejected for this long starts over at
    /// `ejection`.
    pub max_ejection: Duration,
    /// Never more than this percentage of the route's backends ejected at once.
    pub max_ejected_percent: u8,
}

/// Like nginx's `max_fails` (1) and Envoy's `consecutive_5xx` (5): a few in a row, so one
/// unlucky connect does not take a backend out.
pub const DEFAULT_MAX_FAILURES: u32 = 3;
/// Envoy's `base_ejection_time` is 30 s; 10 s brings a backend that had a blip back sooner.
pub const DEFAULT_EJECTION: Duration = Duration::from_secs(10);
/// Envoy's `max_ejection_time` is 300 s: a backend that keeps failing is tried every 5 min.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Envoy's default: half the backends may be ejected, so a bad rule or a shared outage
/// cannot take out a whole route.
pub const DEFAULT_MAX_EJECTED_PERCENT: u8 = 50;

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: None,
            max_failures: DEFAULT_MAX_FAILURES,
            ejection: DEFAULT_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
        }
    }
}

/// An active check (`[route.health] check`), run on every backend of the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    pub kind: CheckKind,
    /// The path (and query) a `websocket` or `http` check asks for; `None`: the backend's own.
    pub path: Option<String>,
    /// Between two checks of one backend, less or more up to a tenth (jitter).
    pub interval: Duration,
    /// One check's whole exchange.
    pub timeout: Duration,
    /// Passed checks in a row that bring an unhealthy backend back.
    pub healthy_threshold: u32,
    /// Failed checks in a row that take a backend out.
    pub unhealthy_threshold: u32,
}

/// HAProxy's `inter` is 2 s, Envoy's has none; 5 s finds a dead backend within
/// `interval × unhealthy_threshold` = 10 s at a cost of one check per 5 s per backend.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// A healthy backend answers a check in milliseconds.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// HAProxy's `rise` and `fall` are 2 and 3; two in a row either way is enough with jitter.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;

/// What an active check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// A real WebSocket handshake (101 verified), closed with 1000.
    WebSocket,
    /// `GET path`, which must answer 2xx.
    Http,
    /// A TCP connect (and the TLS handshake for `wss://`).
    Tcp,
}

/// `sticky`: a cookie naming the client's backend.
#[derive(Debug, Clone)]
pub struct StickyConfig {
    pub cookie: String,
    pub ttl: Duration,
    /// The HMAC key its values are signed with.
    pub key: std::sync::Arc<crate::backend::sticky::StickyKey>,
}

impl PartialEq for StickyConfig {
    fn eq(&self, other: &Self) -> bool {
        self.cookie == other.cookie && self.ttl == other.ttl
    }
}

/// Long enough for a working day's reconnects; a cookie older than this is ignored.
pub const DEFAULT_STICKY_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Lower-case host without port; `*.example.com` matches any subdomain. `None` = any host.
    pub host: Option<String>,
    /// Path prefix, matched on segment boundaries.
    pub path: String,
    pub backends: Vec<BackendUrl>,
    /// TLS client settings for `wss://` backends (`None` when the route has none).
    pub backend_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The same without certificate verification, for backends marked
    /// `insecure_skip_verify` (`None` when none is).
    pub backend_tls_unverified: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub balance: Balance,
    /// Each backend's weight, in the order of `backends` (default 1).
    pub weights: Vec<u32>,
    /// Active checks and passive ejection (`[route.health]`).
    pub health: HealthConfig,
    /// The sticky cookie (`sticky`); `None`: off.
    pub sticky: Option<StickyConfig>,
    /// A backend that comes back takes a share of new sessions growing to its full weight
    /// over this long (`slow_start`); `None`: off.
    pub slow_start: Option<Duration>,
    /// Send the client's `Host` to the backend instead of the backend's own authority.
    pub preserve_host: bool,
    /// permessage-deflate offers: passed to the backend, or stripped.
    pub permessage_deflate: crate::deflate::Mode,
    pub backend_connect_timeout: Duration,
    pub backend_handshake_timeout: Duration,
    /// Session keepalive and limits, applied by the relay.
    pub session: SessionConfig,
    /// Origin, subprotocol, cookie, token and forward-auth checks, and identity headers.
    pub policy: std::sync::Arc<crate::policy::RoutePolicy>,
    /// What a reload that changes this route does to its live sessions.
    pub on_change: OnChange,
    /// Sessions and handshakes this route admits, counted for it alone (on top of
    /// `[limits]`'s, counted for the whole process).
    pub admission: AdmissionLimits,
    /// Plain HTTP requests on this route (`http = true`): their backends, connection pools,
    /// limits and timeouts. `None`: the route serves WebSockets only, and a plain request
    /// gets 426.
    pub http: Option<std::sync::Arc<crate::http_proxy::HttpRoute>>,
    /// The route's settings as written (its `[[route]]` table and the global `[timeouts]` and
    /// `[limits]` it inherits): a reload compares it to tell a changed route from an
    /// unchanged one.
    pub fingerprint: String,
}

/// What the relay enforces on a route's sessions. `None` means off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest message either side may send (sum of its frames' payloads; with
    /// permessage-deflate, compressed bytes). Off by default: the backend's own limit applies.
    pub max_message: Option<u64>,
    /// Largest message once inflated, on a session that negotiated permessage-deflate
    /// (`max_message` counts compressed bytes). Off by default.
    pub max_message_inflated: Option<u64>,
    pub ping_interval: Option<Duration>,
    pub pong_timeout: Duration,
    /// No data message either way for this long ends the session. Off by default: liveness
    /// is what pings check, and a quiet WebSocket is a normal WebSocket.
    pub idle_timeout: Option<Duration>,
    /// Sessions end after this long, less up to 10% jitter so that sessions opened together
    /// do not all reconnect together. Off by default.
    pub max_lifetime: Option<Duration>,
    /// A session quiet for this long gives up its task and its sockets' places in
    /// the runtime until either side sends or a timer is due (`hibernate.rs`): the shortest
    /// wait, which each session doubles for itself while its quiet spells are short
    /// (`relay/idle.rs`). `None`: never.
    pub hibernate_after: Option<Duration>,
    /// Fair shares: what each side may send after the upgrade (off by default).
    pub rates: Rates,
}

/// One rate: `per_sec` units a second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u64,
    pub burst: u64,
}

/// What one side may send: messages and bytes a second (each optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionRates {
    pub messages: Option<Rate>,
    pub bytes: Option<Rate>,
}

impl DirectionRates {
    pub fn is_set(&self) -> bool {
        self.messages.is_some() || self.bytes.is_some()
    }
}

/// A route's fair shares (`client_messages_per_sec`, `backend_bytes_per_sec`, ...): a side
/// over its rate is slowed by backpressure (wsgate stops reading it), and one that stays over
/// for `grace` is closed with 1008.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub client: DirectionRates,
    pub backend: DirectionRates,
    /// `None` ("off"): slowed down, never closed.
    pub grace: Option<Duration>,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            client: DirectionRates::default(),
            backend: DirectionRates::default(),
            grace: Some(DEFAULT_RATE_GRACE),
        }
    }
}

impl Rates {
    pub fn is_set(&self) -> bool {
        self.client.is_set() || self.backend.is_set()
    }
}

/// How long a side may stay over its fair share (slowed all the while) before its session is
/// closed with 1008: long enough for a burst of catching up after a reconnect, short enough
/// that a flood does not hold a backend's attention for long.
pub const DEFAULT_RATE_GRACE: Duration = Duration::from_secs(10);

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_message: None,
            max_message_inflated: None,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            idle_timeout: None,
            max_lifetime: None,
            hibernate_after: Some(DEFAULT_HIBERNATE_AFTER),
            rates: Rates::default(),
        }
    }
}

/// A `ws://` or `wss://` backend address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// As written in the file (for logs).
    pub url: String,
    /// `wss://`: TLS on the backend leg.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host:port` as it goes into the `Host` header.
    pub authority: String,
    /// The backend's own path; `None` keeps the client's path unchanged.
    pub path: Option<String>,
    /// The backend's own query, put before the client's.
    pub query: Option<String>,
    /// `wss://` without certificate verification (development only).
    pub insecure_skip_verify: bool,
}

impl BackendUrl {
    /// The TLS settings this backend is reached with, from its route's.
    pub fn tls_config<'a>(
        &self,
        route: &'a RouteConfig,
    ) -> Option<&'a std::sync::Arc<rustls::ClientConfig>> {
        if self.insecure_skip_verify {
            route.backend_tls_unverified.as_ref()
        } else {
            route.backend_tls.as_ref()
        }
    }

    /// Whether `other` names the same backend however it is written: `ws://b` and
    /// `ws://B:80` are one server, which listing twice would give two shares.
    pub fn same_place(&self, other: &BackendUrl) -> bool {
        self.tls == other.tls
            && self.host.eq_ignore_ascii_case(&other.host)
            && self.port == other.port
            && self.path == other.path
            && self.query == other.query
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_error_body: usize,
    /// How request paths are made canonical (`merge_slashes`, `escaped_slashes`).
    pub path: crate::path::PathRules,
    /// Where the details of a backend failure go (`limits.error_detail`).
    pub error_detail: ErrorDetail,
    /// Sessions and handshakes the whole process admits (`[limits]`'s admission keys).
    pub admission: AdmissionLimits,
    /// IPv6 clients are counted by this prefix of their address (`ipv6_prefix`).
    pub ipv6_prefix: u8,
    /// File descriptors kept back from new sessions (`fd_reserve`).
    pub fd_reserve: FdReserve,
}

/// The admission limits of one scope: the whole process (`[limits]`) or one route (the same
/// keys on a `[[route]]`). `None`: no limit. Checked before the backend is dialled (see
/// `crate::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionLimits {
    /// Sessions at once (503 past it).
    pub max_sessions: Option<u32>,
    /// Sessions at once from one client address (429 past it).
    pub max_sessions_per_ip: Option<u32>,
    /// Handshakes one client address may start (429 past it).
    pub handshake_rate: Option<HandshakeRate>,
}

/// `handshake_rate_per_ip` with `handshake_burst`: a bucket of `burst` handshakes per client
/// address that refills one handshake every `interval` (GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeRate {
    /// `"10/s"` is one handshake every 100 ms.
    pub interval: Duration,
    pub burst: std::num::NonZeroU32,
}

/// How many file descriptors new sessions leave for everything else (`fd_reserve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdReserve {
    /// [`DEFAULT_FD_RESERVE_MIN`] or [`DEFAULT_FD_RESERVE_PER_MILLE`] of the limit,
    /// whichever is larger.
    Default,
    /// This many; 0 turns the check off.
    Descriptors(u64),
}

/// IPv6 clients are counted by their /64: one subscriber line or host usually gets a whole
/// /64 (RFC 6177), so counting single addresses would let one client take 2^64 of them.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// The fewest descriptors kept back: room for the admin listener and its scrapes, health
/// checks, forward-auth and JWKS fetches, and the handshakes in flight.
pub const DEFAULT_FD_RESERVE_MIN: u64 = 64;
/// On a large limit the reserve grows with it, since the handshakes in flight at once
/// (each a client socket, soon a backend one) grow with the traffic the limit was sized for:
/// 0.5 % (100 of 20,000, 5,242 of 1,048,576). A larger share would refuse sessions a
/// process could well hold: at 20,000 descriptors, 5 % would stop at 9,500 sessions where
/// nginx holds 9,900.
pub const DEFAULT_FD_RESERVE_PER_MILLE: u64 = 5;

/// Where the details of a backend failure (address, OS error, TLS error) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDetail {
    /// Only to the log; the client's body has a generic reason (the default).
    Log,
    /// Also into the client's body, for development.
    Client,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_error_body: DEFAULT_MAX_ERROR_BODY,
            path: crate::path::PathRules {
                merge_slashes: DEFAULT_MERGE_SLASHES,
                escaped_slashes: DEFAULT_ESCAPED_SLASHES,
            },
            error_detail: DEFAULT_ERROR_DETAIL,
            admission: AdmissionLimits::default(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            fd_reserve: FdReserve::Default,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StaticPage {
    pub path: String,
    pub content_type: &'static str,
    pub body: String,
}

/// One problem in a config file, located by key and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path as written in TOML terms, e.g. `route[1].backends[0]`.
    pub key: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (key, message) = (Shown(&self.key), Shown(&self.message));
        match self.line {
            Some(line) => write!(f, "line {line}: {key}: {message}"),
            None => write!(f, "{key}: {message}"),
        }
    }
}

/// Text from the config file as an error shows it: control characters escaped as Rust
/// writes them (`\u{1b}`), but for a message's own line breaks. A key named with an escape
/// sequence (`"ba\u001b[31mckends" = 1`) reached the terminal raw.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() && c != '\n' {
                write!(f, "{}", c.escape_debug())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// All problems found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Each error on a line of its own (`line N: key: message`), for a log record's list.
    pub fn lines(&self) -> Vec<String> {
        self.errors.iter().map(ConfigError::to_string).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            let (key, message) = (Shown(&e.key), Shown(&e.message));
            match e.line {
                Some(line) => writeln!(f, "  {}:{line}: {key}: {message}", self.source)?,
                None => writeln!(f, "  {}: {key}: {message}", self.source)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        load_file(path)
    }
}
