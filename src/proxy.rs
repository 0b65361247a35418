//! The orchestrator: one request, top to bottom.
//!
//! request target (host, canonical path) → route → draining → handshake check → policy →
//! client upgrade taken → backend (connect and handshake, failing over) → 101 → relay →
//! access log.
//!
//! Every phase before the 101 is one line of `upgrade` and may fail with a [`ProxyError`]
//! (each phase's error converts into it); `handle_request` answers the failure once, in
//! `refuse` (status mapped in `error.rs`). Nothing is sent to a backend until the client's
//! handshake and the route's policy have passed. The sockets the relay runs on are taken
//! back from hyper in `upgraded.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::backend::{self, BackendLease, BackendRequest, BackendUpgrade};
use crate::config::{Config, ErrorDetail};
use crate::deflate;
use crate::error::{BackendError, BackendRefusal, Draining, LimitError, ProxyError};
use crate::handshake::{self, ClientHandshake, HandshakeError, Transport};
use crate::head_guard::{ClientBody, Unread};
use crate::limits::{self, Gate, Permit};
use crate::policy::forwarding::{self, ClientAddr};
use crate::policy::{Admitted, PolicyError, RequestFacts};
use crate::route::{Route, RouteTable};
use crate::session_task;
use crate::sessions::{MetaStrings, SessionMeta, Sessions};
use crate::telemetry::access;
use crate::telemetry::correlation::{Correlation, X_REQUEST_ID};

pub type Body = Full<Bytes>;

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct ProxyState {
    /// The config and routes new requests use, swapped whole by a reload. A request takes
    /// the generation once and keeps it to the end; a session keeps its `Arc<Route>`.
    current: std::sync::RwLock<Arc<Generation>>,
    /// The config the process started with: its listeners are the ones serving.
    pub initial: Config,
    /// Reloads by result (`ok`, `failed`).
    pub reloads: crate::metrics::Counts<&'static str>,
    /// Held by a reload from its first step to its last (`reload::apply`).
    pub(crate) reloading: std::sync::Mutex<()>,
    /// The current generation's number, for whoever waits for a reload.
    pub generations: tokio::sync::watch::Sender<u64>,
    pub sessions: Arc<Sessions>,
    /// The listening sockets, their accept loops and connections.
    pub listeners: crate::listeners::Listeners,
    /// A shutdown has begun (`/readyz` says 503), though maybe not the drain yet
    /// (`[shutdown] unready_delay`).
    unready: std::sync::atomic::AtomicBool,
    /// Refusals of requests that matched no route.
    pub unrouted_refusals: crate::telemetry::RefusalCounts,
    /// The refusal records' per-outcome budget (`[log] refusals_per_second`).
    pub refusal_log: crate::telemetry::limited::LogLimiter,
    /// The same budget for the warnings about backends that failed a request (shared with
    /// the plain requests, whose stack holds its own reference).
    pub backend_logs: Arc<crate::telemetry::limited::BackendLogs>,
    /// The process's descriptor limit and the probe for the reserve (`[limits] fd_reserve`).
    pub descriptors: limits::Descriptors,
    /// A binary upgrade's successor while it starts: no reload meanwhile.
    pub successor: crate::upgrade::Successor,
}

/// One config and the routes built from it.
#[derive(Debug)]
pub struct Generation {
    /// 1 at start, one more for each reload that took effect.
    pub number: u64,
    pub config: Config,
    pub routes: RouteTable,
    /// `[limits]`'s admission state, for the whole process: its count of admitted sessions
    /// carries over from generation to generation.
    pub gate: Gate,
}

impl ProxyState {
    pub fn new(config: Config, sessions: Arc<Sessions>) -> ProxyState {
        let generation = Generation {
            number: 1,
            routes: RouteTable::new(&config.routes, sessions.control()),
            gate: Gate::next(&config.limits.admission, None),
            config: config.clone(),
        };
        ProxyState {
            refusal_log: crate::telemetry::limited::LogLimiter::new(
                generation.config.log.refusals_per_second,
            ),
            backend_logs: Arc::new(crate::telemetry::limited::BackendLogs::new(
                generation.config.log.refusals_per_second,
            )),
            current: std::sync::RwLock::new(Arc::new(generation)),
            initial: config,
            reloads: Default::default(),
            reloading: Default::default(),
            generations: tokio::sync::watch::Sender::new(1),
            sessions,
            listeners: Default::default(),
            unready: Default::default(),
            unrouted_refusals: Default::default(),
            descriptors: limits::Descriptors::of_process(),
            successor: Default::default(),
        }
    }

    /// Whether a load balancer should send new clients here (`/readyz`): not once a
    /// shutdown has begun.
    pub fn is_ready(&self) -> bool {
        !self.unready.load(std::sync::atomic::Ordering::Relaxed) && !self.sessions.is_draining()
    }

    /// Whether a shutdown has begun (SIGTERM, `Handle::shutdown`): from its first moment,
    /// through `unready_delay` and the drain. `wsgate_draining`, the summary's `draining`
    /// and the refusal of reloads follow this, as `/readyz` does.
    pub fn is_shutting_down(&self) -> bool {
        !self.is_ready()
    }

    /// Starts a graceful shutdown: not ready from now on; after `unready_delay`, during which
    /// everything else goes on, new upgrades get 503, the accept loops stop, and the
    /// supervisor (`crate::supervise`) closes the sessions. A second call while the delay runs
    /// changes nothing.
    pub fn shutdown(self: &Arc<Self>, unready_delay: std::time::Duration) {
        use std::sync::atomic::Ordering;
        if self.unready.swap(true, Ordering::Relaxed) && !unready_delay.is_zero() {
            return;
        }
        if unready_delay.is_zero() {
            self.sessions.start_draining();
            self.listeners.stop.cancel();
            return;
        }
        tracing::info!(delay = ?unready_delay, "shutting down: /readyz answers 503; sessions and listeners go on for the unready delay");
        let state = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(unready_delay) => {}
                _ = state.listeners.stop.cancelled() => {}
            }
            state.sessions.start_draining();
            state.listeners.stop.cancel();
        });
    }

    /// The generation new requests use.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Builds the next generation from `config` and makes it current; returns it with what
    /// changed. The lock is held across the build, so two reloads cannot interleave.
    pub fn advance(&self, config: Config) -> (Arc<Generation>, crate::route::RouteDiff) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let (routes, diff) =
            RouteTable::next(&config.routes, &current.routes, self.sessions.control());
        let next = Arc::new(Generation {
            number: current.number + 1,
            gate: Gate::next(&config.limits.admission, Some(&current.gate)),
            config,
            routes,
        });
        *current = next.clone();
        self.generations.send_replace(next.number);
        (next, diff)
    }

    /// Sheds the current rate tables' idle entries (see `limits::shed_periodically`).
    pub fn shed_idle_limits(&self) {
        let generation = self.current();
        generation.gate.shed_idle();
        for route in generation.routes.iter() {
            route.gate.shed_idle();
        }
    }
}

/// Facts about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client: SocketAddr,
    /// `http` or `https`, for the forwarding headers.
    pub scheme: &'static str,
    /// The subject of the client's verified TLS certificate (mutual TLS), if it sent one.
    pub client_subject: Option<Arc<str>>,
    /// The header that carries `client_subject` to the backend, if the listener names one.
    pub subject_header: Option<http::HeaderName>,
    /// The listener's trusted proxies: their forwarding headers are believed.
    pub trusted_proxies: Arc<[crate::policy::forwarding::Cidr]>,
    /// WebSockets open as HTTP/2 streams of this connection (they need it to stay up). Only
    /// on HTTP/2 connections: an HTTP/1.1 one carries at most one, which leaves with it.
    pub live_streams: Option<Arc<tokio::sync::watch::Sender<usize>>>,
    /// The connection's watch, on HTTP/1.1 only: a plain request's `request_timeout` arms
    /// its write deadline while the response is sent (`HeadWatch::arm_write_deadline`).
    pub watch: Option<Arc<crate::head_guard::HeadWatch>>,
}

/// Counts one HTTP/2 WebSocket on its connection while alive.
pub(crate) struct StreamGuard(Arc<tokio::sync::watch::Sender<usize>>);

impl StreamGuard {
    pub(crate) fn new(live: &Arc<tokio::sync::watch::Sender<usize>>) -> StreamGuard {
        live.send_modify(|n| *n += 1);
        StreamGuard(live.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// hyper service entry point. Never fails: every error becomes a response. `unread`: what
/// the request's body does if the proxy leaves it unread ([`ClientBody`]).
pub async fn handle(
    state: Arc<ProxyState>,
    conn: ConnInfo,
    req: Request<Incoming>,
    unread: Unread,
) -> Result<Response<crate::http_proxy::Body>, Infallible> {
    let id = state.sessions.next_id();
    // No span per request: entering and formatting one costs more than the rest of the
    // handshake's logging, and every record carries the session id and client anyway.
    Ok(handle_request(state, conn, req, unread, id).await)
}

/// How many of an HTTP/2 request's `Cookie` fields count as one field against
/// `max_headers` (a browser splits its `Cookie` into a field per cookie, and keeps at most
/// about 180 cookies a site).
pub const FREE_COOKIE_CRUMBS: usize = 1000;

/// Finds what a refusal needs (the route, if any, and the request's head), then runs the
/// phases; the first that fails is answered by [`refuse`], here and only here.
async fn handle_request(
    state: Arc<ProxyState>,
    mut conn: ConnInfo,
    req: Request<Incoming>,
    unread: Unread,
    id: u64,
) -> Response<crate::http_proxy::Body> {
    let (mut parts, body) = req.into_parts();
    let body = ClientBody::new(body, unread);
    // This request's config and routes, to its end, whatever a reload does meanwhile.
    let generation = state.current();
    if let Some(page) = static_page(&generation.config, &parts) {
        return page.map(crate::http_proxy::full);
    }
    // Behind a trusted proxy the client is the first untrusted hop of `X-Forwarded-For`;
    // from here on `conn.client` is that address (logs, policy, balancing).
    let forwarding =
        forwarding::client_addr(&conn.trusted_proxies, conn.client.ip(), &parts.headers);
    // Its port is not known (0): unless the trusted peer is itself the client (it forwarded
    // no address: the chain is the peer alone), whose port is.
    if forwarding.peer_trusted && forwarding.chain.len() > 1 {
        conn.client = SocketAddr::new(forwarding.ip, 0);
    }
    // The ids every record of this request carries, and the backend and the client get.
    let ids = Correlation::of_request(&parts.headers, forwarding.peer_trusted);
    // hyper's HTTP/1.1 parser holds a head to `max_headers` fields; its HTTP/2 server bounds
    // only their bytes, so the count is checked here, for WebSocket and plain requests alike.
    // A browser's cookie crumbs count as the one `Cookie` field they are over HTTP/1.1, up to
    // `FREE_COOKIE_CRUMBS` (browsers keep at most about 180 cookies a site); past them each
    // counts as a field: with a large `max_header_bytes`, 24,569 crumbs (a byte each on the
    // wire with HPACK) made the backend request's header map panic in `http`.
    // Over HTTP/1.1 it checks their bytes, but only on a connection's first request (see
    // `ProxyError::HeadTooLarge`): every request's head is measured here.
    if parts.version == http::Version::HTTP_2 {
        let max_headers = generation.config.limits.max_headers;
        let crumbs = parts.headers.get_all(header::COOKIE).iter().count();
        let free = crumbs.min(FREE_COOKIE_CRUMBS).saturating_sub(1);
        if parts.headers.len() - free > max_headers {
            let e = ProxyError::TooManyHeaders(max_headers);
            return refuse(&state, id, &ids, None, &conn, &parts, e).map(crate::http_proxy::full);
        }
    } else if head_bytes(&parts) > generation.config.limits.max_header_bytes {
        let e = ProxyError::HeadTooLarge(generation.config.limits.max_header_bytes);
        return refuse(&state, id, &ids, None, &conn, &parts, e).map(crate::http_proxy::full);
    }
    // One canonical host and path, before routing: what the route, the policy and the
    // backend all act on (`target.rs`).
    let route = match crate::target::route(
        &generation.routes,
        &mut parts,
        &generation.config.limits.path,
        conn.scheme,
    ) {
        Ok(route) => route,
        Err(e) => {
            return refuse(&state, id, &ids, None, &conn, &parts, e.into())
                .map(crate::http_proxy::full);
        }
    };
    let cx = Ctx {
        state: &state,
        config: &generation.config,
        gate: &generation.gate,
        conn: &conn,
        forwarding: &forwarding,
        id,
        ids: &ids,
    };
    // A plain request on a route with `http = true` is proxied as HTTP (`http_proxy`); on
    // any other route it goes on to `upgrade`, which answers it 426.
    if let Some(route) = route.filter(|r| crate::http_proxy::is_plain(r, &parts)) {
        return match crate::http_proxy::serve(&cx, route, &mut parts, body).await {
            Ok(response) => response,
            Err(e) => {
                refuse(&state, id, &ids, Some(route), &conn, &parts, e).map(crate::http_proxy::full)
            }
        };
    }
    match upgrade(&cx, route, &mut parts).await {
        Ok(response) => response,
        Err(e) => refuse(&state, id, &ids, route.map(Arc::as_ref), &conn, &parts, e),
    }
    .map(crate::http_proxy::full)
}

/// The size of an HTTP/1.1 request head as it came, near enough: the request line, each
/// field as `name: value` with its CRLF, and the empty line (optional whitespace around a
/// value is not kept, so never more than the client sent).
fn head_bytes(parts: &Parts) -> usize {
    let target = match parts.uri.authority() {
        // absolute-form: "scheme://authority/path?query"
        Some(a) => parts.uri.scheme_str().map_or(0, |s| s.len() + 3) + a.as_str().len(),
        None => 0,
    } + parts.uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    // "METHOD target HTTP/1.1\r\n" ... "\r\n"
    parts.method.as_str().len() + 1 + target + 11 + fields + 2
}

/// What every phase may consult: the shared state and where the request came from.
pub(crate) struct Ctx<'a> {
    pub(crate) state: &'a ProxyState,
    /// The generation's config this request started under.
    pub(crate) config: &'a Config,
    /// The generation's process-wide admission state.
    pub(crate) gate: &'a Gate,
    pub(crate) conn: &'a ConnInfo,
    pub(crate) forwarding: &'a ClientAddr,
    /// The request's number, which becomes the session's (the admin API names it).
    pub(crate) id: u64,
    /// The request id and trace context (`X-Request-Id`, `traceparent`).
    pub(crate) ids: &'a Correlation,
}

/// The phases of an upgrade, in order, one line each: the first error ends the request (as
/// a [`ProxyError`], answered by the caller). Nothing reaches a backend before the client's
/// handshake and the route's policy have passed.
async fn upgrade(
    cx: &Ctx<'_>,
    route: Option<&Arc<Route>>,
    parts: &mut Parts,
) -> Result<Response<Body>, ProxyError> {
    let route = route.ok_or(ProxyError::NoRoute)?;
    not_draining(&cx.state.sessions)?;
    let mut client_hs = handshake::validate(parts)?;
    let permit = admit(cx, route)?;
    // Read before the policy, which may strip the cookie or header it names.
    let mut affinity = route.pool.affinity(parts, cx.conn.client.ip());
    // Forward-auth is the policy's wait, as long as the auth service takes: a client that
    // leaves during it is recorded as one that leaves during the backend's. The policy
    // rewrites `parts`, so the guard keeps a copy of what the record names.
    let head = (route.config.policy.rules().forward_auth.is_some()).then(|| record_head(parts));
    let gone = head.as_ref().map(|head| Abandoned {
        cx,
        route,
        parts: head,
        armed: true,
    });
    let policy = async {
        check_policy(cx, route, parts, &mut client_hs)
            .await
            .map_err(ProxyError::from)
    };
    let admitted = cx.state.listeners.unless_cut(policy).await;
    if let Some(gone) = gone {
        gone.disarm();
    }
    let admitted = admitted?;
    let rc = &route.config;
    let counted = rc.session.max_message_inflated.is_some();
    client_hs.extensions =
        deflate::backend_offer(&client_hs.extensions, rc.permessage_deflate, counted);
    let client_upgrade = take_upgrade(parts)?;
    route
        .pool
        .claim_affinity(&mut affinity, admitted.claims.as_ref());
    // A client that goes away while the backend is asked (hyper drops this future) is
    // recorded here: the backend wait is the long one, and a slow backend's main symptom.
    let gone = Abandoned {
        cx,
        route,
        parts,
        armed: true,
    };
    // At the end of a shutdown's grace the wait is over: the client is answered 503.
    let asked = async {
        upgrade_backend(cx, route, parts, &client_hs, &affinity)
            .await
            .map_err(ProxyError::from)
    };
    let backend = cx.state.listeners.unless_cut(asked).await;
    gone.disarm();
    let (mut upgrade, lease) = backend?;
    let counting = deflate::counting(rc.session.max_message_inflated, &upgrade.extensions);
    upgrade.extensions = deflate::client_response(&upgrade.extensions, counting.is_some());
    let mut response = accept_response(cx, &client_hs, &upgrade, admitted.token_marker.as_deref());
    sticky_cookie(cx, route, &lease, &mut response);
    let meta = session_meta(cx, parts, &client_hs, &upgrade, admitted.user);
    let ends = (admitted.session_end, counting);
    spawn_session(
        cx,
        route,
        client_upgrade,
        (lease, permit),
        upgrade,
        meta,
        ends,
    );
    Ok(response)
}

/// What the registry and the access log keep about a session besides its counters.
fn session_meta(
    cx: &Ctx<'_>,
    parts: &Parts,
    client_hs: &ClientHandshake,
    up: &BackendUpgrade,
    user: Option<String>,
) -> SessionMeta {
    use crate::telemetry::{MAX_LOGGED_PATH, MAX_LOGGED_VALUE, cut};
    fn text(v: &HeaderValue) -> Option<std::borrow::Cow<'_, str>> {
        Some(crate::telemetry::header_text(v, MAX_LOGGED_VALUE))
    }
    let subprotocol = up.protocol.as_ref().and_then(text);
    let subprotocol = subprotocol
        .as_deref()
        .map(crate::policy::subprotocol::shown);
    let user = user.as_deref().map(|u| cut(u, MAX_LOGGED_VALUE));
    let user_agent = parts.headers.get(header::USER_AGENT).and_then(text);
    SessionMeta::new(
        client_hs.transport,
        MetaStrings {
            request_id: cx.ids.request_id(),
            trace_id: cx.ids.logged_trace_id(),
            host: &cut(crate::route::strip_port(&client_hs.host), MAX_LOGGED_VALUE),
            path: &cut(parts.uri.path(), MAX_LOGGED_PATH),
            subprotocol: subprotocol.as_deref(),
            user: user.as_deref(),
            user_agent: user_agent.as_deref(),
        },
    )
}

/// The admission limits (`limits::admit`): the descriptor reserve, the handshake rates and
/// the session caps of the process and the route, for the client `policy::forwarding`
/// found. Before the policy, whose forward-auth and JWKS fetches a flood must not reach;
/// the permit lives as long as the session, or ends with the handshake if a later phase
/// fails.
fn admit(cx: &Ctx<'_>, route: &Route) -> Result<Permit, LimitError> {
    limits::admit(
        cx.gate,
        &route.gate,
        &cx.state.descriptors,
        &cx.config.limits,
        cx.conn.client.ip(),
    )
}

/// New sessions are taken until the gateway starts draining.
fn not_draining(sessions: &Sessions) -> Result<(), Draining> {
    if sessions.is_draining() {
        return Err(Draining);
    }
    Ok(())
}

/// The route's policy (origin, subprotocol, cookie, token, forward auth), which may add
/// identity headers to `parts` and take the token out of the offered subprotocols. Returns
/// the subprotocol to answer with when the backend chooses none and when the token ends the
/// session (see `RoutePolicy::admit`).
async fn check_policy(
    cx: &Ctx<'_>,
    route: &Route,
    parts: &mut Parts,
    client_hs: &mut ClientHandshake,
) -> Result<Admitted, PolicyError> {
    let policy = &route.config.policy;
    if policy.is_open() {
        return Ok(Admitted::default());
    }
    let forwarded_for = cx.forwarding.chain_header();
    // Behind a trusted proxy, the scheme and host the client used are the proxy's word.
    let facts = RequestFacts {
        scheme: cx.forwarding.proto.as_deref().unwrap_or(cx.conn.scheme),
        host: cx.forwarding.host.as_deref().unwrap_or(&client_hs.host),
        client: cx.forwarding,
        forwarded_for: &forwarded_for,
        tls_subject: cx.conn.client_subject.as_deref(),
    };
    policy.admit(parts, &mut client_hs.protocols, &facts).await
}

/// The client's side of the upgrade, taken before answering (hyper examples/upgrades.rs).
/// hyper sets it on every HTTP/1.1 request that carries `Upgrade` and every HTTP/2 CONNECT,
/// which validation has already required.
fn take_upgrade(parts: &mut Parts) -> Result<OnUpgrade, HandshakeError> {
    parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or(HandshakeError::NotAnUpgrade)
}

/// An upgraded connection to one of the route's backends: balancing order, failover before
/// the 101, one `backend_handshake` budget (see `BackendPool::upgrade`).
async fn upgrade_backend(
    cx: &Ctx<'_>,
    route: &Route,
    parts: &Parts,
    client_hs: &ClientHandshake,
    affinity: &backend::Affinity,
) -> Result<(BackendUpgrade, BackendLease), BackendError> {
    let conn = cx.conn;
    let request = BackendRequest {
        route: &route.config,
        client: parts,
        handshake: client_hs,
        forwarding: cx.forwarding,
        scheme: conn.scheme,
        client_subject: conn
            .subject_header
            .as_ref()
            .map(|h| (h, conn.client_subject.as_deref())),
        subject_headers: &cx.config.subject_headers,
        session: cx.id,
        correlation: cx.ids,
        max_error_body: cx.config.limits.max_error_body,
        backend_logs: &cx.state.backend_logs,
    };
    route.pool.upgrade(&request, affinity).await
}

/// The sticky cookie naming the session's backend, on the 101 (or the HTTP/2 200), on a
/// route with `sticky`: `Secure` when the client came over TLS.
fn sticky_cookie(cx: &Ctx<'_>, route: &Route, lease: &BackendLease, resp: &mut Response<Body>) {
    let secure = cx.conn.scheme == "https";
    if let Some(cookie) = route.pool.sticky_cookie(&lease.backend, secure)
        && let Ok(v) = HeaderValue::from_str(&cookie)
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The session is on: registers it and spawns its task, which takes both legs once the
/// client has its answer.
fn spawn_session(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    client_upgrade: OnUpgrade,
    (lease, permit): (BackendLease, Permit),
    upgrade: BackendUpgrade,
    meta: SessionMeta,
    (token_end, counting): (Option<std::time::SystemTime>, Option<deflate::Counting>),
) {
    let transport = meta.transport;
    let session =
        cx.state
            .sessions
            .register(cx.id, route.clone(), cx.conn.client, (lease, permit), meta);
    // A reload since this request took its generation may have removed or restarted its
    // route or dropped its backend, and listed the sessions to close before this one was
    // registered: then it closes at once, with the 1012 those got.
    let now = cx.state.current();
    if !now.routes.iter().any(|r| Arc::ptr_eq(r, route))
        && crate::reload::must_close(&session.info, &now.routes)
    {
        session.info.link.close(crate::relay::CloseRequest::drain(
            crate::frame::close_code::SERVICE_RESTART,
        ));
    }
    // The same for a drain with `close` of its backend (the admin API), which closed the
    // sessions registered by then.
    if session.info.lease.backend.drain_closes() {
        session
            .info
            .link
            .close(crate::relay::CloseRequest::backend_draining());
    }
    route
        .stats
        .opened
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    access::session_open(&session.info, cx.config.log.session_open);
    let allowed_rsv = allowed_rsv(&upgrade.extensions);
    let BackendUpgrade {
        io: backend_io,
        read: backend_read,
        ..
    } = upgrade;
    let stream_guard = match (transport, &cx.conn.live_streams) {
        (Transport::H2, Some(live)) => Some(StreamGuard::new(live)),
        _ => None,
    };
    // The session task runs outside the request span: a span lives as long as its task, and
    // an idle session should cost nothing but its sockets. The access record carries the id.
    // Its inputs travel boxed: what an async fn takes stays in its state for the whole
    // session, and a pointer costs less than the inputs (see `session_task::run`).
    let start = Box::new(session_task::SessionStart {
        client_upgrade,
        backend: (backend_io, backend_read),
        allowed_rsv,
        session,
        stream_guard,
        token_end,
        counting,
    });
    cx.state.sessions.spawn(session_task::run(start));
}

/// The RSV bits a session's frames may use: what the negotiated extensions allow (RFC 6455
/// §5.2: only what an extension defines).
fn allowed_rsv(extensions: &[HeaderValue]) -> u8 {
    let names: Vec<String> = extensions
        .iter()
        .flat_map(|v| backend::extension_names(v.as_bytes()))
        .collect();
    if names.is_empty() {
        0
    } else if names
        .iter()
        .all(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        0b100
    } else {
        // An extension the proxy does not know may use any RSV bit.
        0b111
    }
}

/// The client's answer: over HTTP/1.1 a 101 with its own accept key, over HTTP/2 a 200
/// (RFC 8441 §5: no key, no accept, and no body, or hyper resets the stream); either way the
/// backend's choices of subprotocol and extensions, its cookies, and the request id.
///
/// `token_marker`: the subprotocol to answer with when the backend chose none (see
/// `RoutePolicy::admit`).
fn accept_response(
    cx: &Ctx<'_>,
    client: &ClientHandshake,
    up: &BackendUpgrade,
    token_marker: Option<&str>,
) -> Response<Body> {
    let mut resp = Response::new(Body::default());
    match client.transport {
        Transport::H1 => {
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            if let Ok(v) = HeaderValue::from_str(&handshake::accept_key(client.key.as_bytes())) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
        }
        Transport::H2 => *resp.status_mut() = StatusCode::OK,
    }
    let h = resp.headers_mut();
    // RFC 9110 §7.6.3: a proxy says so on what it forwards; the backend spoke HTTP/1.1.
    h.insert(header::VIA, HeaderValue::from_static("1.1 wsgate"));
    h.insert(X_REQUEST_ID, cx.ids.request_id_header());
    if let Some(p) = &up.protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p.clone());
    } else if let Some(m) = token_marker.and_then(|m| HeaderValue::from_str(m).ok()) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, m);
    }
    for e in &up.extensions {
        h.append(header::SEC_WEBSOCKET_EXTENSIONS, e.clone());
    }
    for c in &up.set_cookies {
        h.append(header::SET_COOKIE, c.clone());
    }
    resp
}

/// Records a handshake whose client went away while its backend (or forward-auth) was
/// asked, if dropped armed: hyper drops the request's future when the client closes, and
/// nothing else would say so (no session began, no refusal was answered). Dropped at the
/// end of a shutdown's grace (`Listeners::cut`), it records the proxy's drop instead.
struct Abandoned<'a> {
    cx: &'a Ctx<'a>,
    route: &'a Route,
    parts: &'a Parts,
    armed: bool,
}

impl Abandoned<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

/// What a handshake's record names of its request (method, target, version, `Host`,
/// `User-Agent`), copied for a guard that outlives the policy's rewriting of it.
fn record_head(parts: &Parts) -> Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    for name in [header::HOST, header::USER_AGENT] {
        if let Some(v) = parts.headers.get(&name) {
            req.headers_mut().insert(name, v.clone());
        }
    }
    req.into_parts().0
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            let cx = self.cx;
            // At the end of a shutdown's grace the proxy drops what is still waiting: its
            // own doing, not the client's.
            let err = if cx.state.sessions.is_draining() {
                ProxyError::Draining
            } else {
                ProxyError::ClientGone
            };
            let route = Some(self.route);
            record_refusal(cx.state, cx.id, cx.ids, route, cx.conn, self.parts, &err);
        }
    }
}

/// Counts and logs a refusal (or an abandoned handshake): the one record of a request that
/// did not become a session.
fn record_refusal(
    state: &ProxyState,
    id: u64,
    ids: &Correlation,
    route: Option<&Route>,
    conn: &ConnInfo,
    parts: &Parts,
    err: &ProxyError,
) -> StatusCode {
    // Over HTTP/2 there is no Upgrade and no connection to close: no 426, the proxy's or
    // the backend's (whose `Sec-WebSocket-Version`, if it sent one, goes with the 400).
    let status = match err {
        ProxyError::Handshake(hs) if parts.version == http::Version::HTTP_2 => {
            hs.status_for(Transport::H2)
        }
        other => match other.status() {
            StatusCode::UPGRADE_REQUIRED if parts.version == http::Version::HTTP_2 => {
                StatusCode::BAD_REQUEST
            }
            status => status,
        },
    };
    let counts = route.map_or(&state.unrouted_refusals, |r| &r.refusals);
    counts.add_status(err.outcome(), status.as_u16());
    access::refused(
        &state.refusal_log,
        id,
        ids,
        route.map(|r| r.config.name.as_str()),
        conn.client,
        parts,
        status,
        err,
    );
    status
}

/// The one place a refusal becomes a response: status, one-line reason, headers (the request
/// id among them), log record.
fn refuse(
    state: &ProxyState,
    id: u64,
    ids: &Correlation,
    route: Option<&Route>,
    conn: &ConnInfo,
    parts: &Parts,
    err: ProxyError,
) -> Response<Body> {
    // Over HTTP/2 no `Upgrade` or `Connection` headers either (they are
    // connection-specific, RFC 9113 §8.2.2).
    let h2 = parts.version == http::Version::HTTP_2;
    let status = record_refusal(state, id, ids, route, conn, parts, &err);
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    match err {
        ProxyError::Backend(BackendError::Refused(refusal)) => {
            // The backend's own refusal keeps its headers and (bounded) body.
            let BackendRefusal {
                headers,
                body,
                reason,
                ..
            } = *refusal;
            h.extend(headers);
            if h2 {
                // Connection-specific: not in an HTTP/2 response (RFC 9113 §8.2.2).
                h.remove(header::UPGRADE);
            } else if let Some(reason) = reason {
                resp.extensions_mut().insert(reason);
            }
            *resp.body_mut() = Body::new(body);
        }
        ProxyError::Policy(PolicyError::AuthDenied { headers, body, .. }) => {
            // The auth service's answer, as it came (its login redirect, its challenge).
            h.extend(headers);
            *resp.body_mut() = Body::new(body);
        }
        ProxyError::Policy(p) => {
            if let Some(challenge) = p.challenge(route.map_or("wsgate", |r| &r.config.name))
                && let Ok(v) = HeaderValue::from_str(&challenge)
            {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            *resp.body_mut() = Body::new(Bytes::from(format!("{}\n", p.public_message())));
        }
        other => {
            if let ProxyError::Handshake(hs) = &other {
                for (name, value) in hs.response_headers() {
                    if !(h2 && name == header::UPGRADE) {
                        h.append(name, value);
                    }
                }
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            // A backend failure's details (address, OS or TLS error) are in the log record
            // above; the client learns them only where the config says so (development).
            let log_only = state.current().config.limits.error_detail == ErrorDetail::Log;
            let line = match &other {
                ProxyError::Backend(b) if log_only => b.public_reason().to_string(),
                // Without the backend it waited on.
                ProxyError::RequestTimeout(d, Some(_)) if log_only => {
                    ProxyError::RequestTimeout(*d, None).to_string()
                }
                other => other.to_string(),
            };
            // When to try again, where the refusal knows (an admission limit).
            if let Some(secs) = other.retry_after() {
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            *resp.body_mut() = Body::new(Bytes::from(format!("{line}\n")));
        }
    }
    resp.headers_mut()
        .insert(X_REQUEST_ID, ids.request_id_header());
    // After a refused upgrade the client's connection state is uncertain: start afresh.
    // (An HTTP/2 refusal ends one stream; the connection and its other streams go on.)
    // A response naming an `Upgrade` lists it in `Connection` too (RFC 9110 §7.8).
    if !h2 {
        let connection = if resp.headers().contains_key(header::UPGRADE) {
            "upgrade, close"
        } else {
            "close"
        };
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static(connection));
    }
    resp
}

/// Static pages (`wsgate demo`): GET without an upgrade on an exact path.
fn static_page(config: &Config, parts: &Parts) -> Option<Response<Body>> {
    if parts.method != Method::GET || parts.headers.contains_key(header::UPGRADE) {
        return None;
    }
    let page = config.pages.iter().find(|p| p.path == parts.uri.path())?;
    let mut resp = Response::new(Body::new(Bytes::from(page.body.clone())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(page.content_type),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(resp)
}
