//! Plain HTTP beside WebSocket: on a route with `http = true`, a request that is not an
//! upgrade (a page, an API call, a long-polling transport's request) is proxied to the
//! route's backends instead of being answered 426.
//!
//! It passes the same edge as a handshake, in the same order: the request target phase and
//! the route lookup (`proxy.rs`), then here: body framing (`headers::check_framing`), the
//! declared body size, the route's policy in its plain-request form
//! ([`crate::policy::RoutePolicy::admit_request`]), then the backend through a `tower` stack
//! (load shedding, a cap on requests waiting for their backends, the response-head timeout)
//! around `forward`, which tries the backends in balancing order on a pooled client per
//! backend (`pick.rs`). Bodies stream both ways (`body.rs`, `record.rs`); a refusal before the
//! response head goes back to `proxy::refuse` as a [`ProxyError`], like a handshake's.

mod body;
mod headers;
mod pick;
mod record;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, Version, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::config::BackendUrl;
use crate::error::{BackendError, ProxyError};
use crate::head_guard::ClientBody;
use crate::http_client::{STALE_RETRIES, find_cause, stale_connection};
use crate::outcome::Outcome;
use crate::policy::RequestFacts;
use crate::proxy::Ctx;
use crate::route::Route;

use body::{BodyState, ClientFault, RequestBody};
use pick::{ClientSettings, InFlight, Target, Targets};

pub use pick::MAX_IDLE_PER_BACKEND;

/// Every response the proxy's listeners send: a complete body (a refusal, the demo page) or
/// a backend's, streamed.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body as a [`Body`].
pub fn full(body: http_body_util::Full<Bytes>) -> Body {
    body.map_err(|never| match never {}).boxed_unsync()
}

/// What a route's HTTP side is built from (`config/` validates it from the route's keys).
#[derive(Debug)]
pub struct HttpSettings {
    /// The backends and, for `https://` ones, their TLS settings.
    pub backends: Vec<(BackendUrl, Option<Arc<rustls::ClientConfig>>)>,
    /// `backends` are the route's WebSocket backends read as HTTP, in the same order.
    pub mirrors_backends: bool,
    pub connect_timeout: Duration,
    pub request_timeout: Option<Duration>,
    pub response_header_timeout: Duration,
    pub request_body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_body: Option<u64>,
    pub max_concurrent_requests: usize,
}

/// A route's HTTP side: its backends with their pooled clients, its limits, and the
/// service stack every plain request of the route goes through.
pub struct HttpRoute {
    targets: Arc<Targets>,
    request_timeout: Option<Duration>,
    response_header_timeout: Duration,
    request_body_timeout: Duration,
    max_request_body: Option<u64>,
    stack: BoxCloneSyncService<Exchange, Forwarded, BoxError>,
}

impl std::fmt::Debug for HttpRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRoute")
            .field("targets", &self.targets)
            .field("request_timeout", &self.request_timeout)
            .field("response_header_timeout", &self.response_header_timeout)
            .field("request_body_timeout", &self.request_body_timeout)
            .field("max_request_body", &self.max_request_body)
            .finish_non_exhaustive()
    }
}

impl HttpRoute {
    /// Builds the clients (no connection is made) and the stack. Fails only when a TLS
    /// setting cannot be built.
    pub fn new(s: HttpSettings) -> Result<HttpRoute, String> {
        let list = s
            .backends
            .into_iter()
            .map(|(url, tls)| {
                let settings = ClientSettings {
                    tls,
                    connect_timeout: s.connect_timeout,
                    idle_timeout: s.idle_timeout,
                    // Past the 504 (`BodyState::backend_overdue` may take up to twice the
                    // timeout to see the backend stopped), so the client gets that answer.
                    write_stall: s.response_header_timeout * 2 + Duration::from_secs(1),
                };
                let name = url.url.clone();
                Target::new(url, &name, &settings)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let targets = Arc::new(Targets::new(list, s.mirrors_backends));
        // Outermost first: a request beyond the cap is refused at once (503) rather than
        // queued. The wait for the response head is `forward`'s own: it starts once the
        // client's body has been read, which a layer around the call cannot see.
        let stack = ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(s.max_concurrent_requests)
            .service_fn(forward);
        Ok(HttpRoute {
            targets,
            request_timeout: s.request_timeout,
            response_header_timeout: s.response_header_timeout,
            request_body_timeout: s.request_body_timeout,
            max_request_body: s.max_request_body,
            stack: BoxCloneSyncService::new(stack),
        })
    }
}

/// Whether a request is a plain one this route proxies: the route has `http = true` and the
/// request does not ask for a WebSocket (no `Upgrade` naming `websocket` over HTTP/1.1, no
/// CONNECT over HTTP/2). An offer to upgrade to something else (`curl --http2` sends
/// `Upgrade: h2c` on every `http://` request) is declined by serving the request as it is,
/// as RFC 9110 §7.8 lets a server do; the `Upgrade` header does not reach the backend.
pub fn is_plain(route: &Route, parts: &Parts) -> bool {
    route.config.http.is_some()
        // RFC 9110 §7.8: a server must ignore `Upgrade` in an HTTP/1.0 request.
        && (parts.version == http::Version::HTTP_10
            || !crate::handshake::has_token(&parts.headers, &header::UPGRADE, "websocket"))
        && parts.method != Method::CONNECT
}

/// One plain request, from the framing checks to the response head; the body streams on in
/// the response. `parts` stays the client's request (as policy rewrote it), for the refusal
/// a failure becomes; every failure is also counted on the route's HTTP counters.
pub(crate) async fn serve(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    parts: &mut Parts,
    body: ClientBody,
) -> Result<Response<Body>, ProxyError> {
    let mut waiting = record::Waiting::new(&cx.state.sessions);
    // At the end of a shutdown's grace a request still waiting on its backend is answered 503.
    let exchanged = exchange(cx, route, parts, body, &mut waiting);
    let result = cx.state.listeners.unless_cut(exchanged).await;
    // Answered (the response body writes the record) or refused (the refusal does).
    waiting.take();
    if let Err(e) = &result {
        route
            .stats
            .http
            .observe(e.status().as_u16(), e.outcome(), None);
    }
    result
}

async fn exchange(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    parts: &mut Parts,
    body: ClientBody,
    waiting: &mut record::Waiting<'_>,
) -> Result<Response<Body>, ProxyError> {
    let started = Instant::now();
    let http = route.config.http.as_ref().ok_or(ProxyError::NoRoute)?;
    headers::check_framing(parts).map_err(ProxyError::RequestFraming)?;
    let host_header = parts.headers.get(header::HOST).map(|h| h.as_bytes());
    let no_authority = parts.uri.authority().is_none_or(|a| a.as_str().is_empty());
    if parts.version == Version::HTTP_11 && host_header.is_none()
        || parts.version == Version::HTTP_2 && host_header.is_none() && no_authority
        || host_header.is_some_and(|h| h.trim_ascii().is_empty())
    {
        // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request without one, in
        // absolute form too (the client must send it anyway); an empty one names no host,
        // which an http(s) URI must have (RFC 9110 §4.2.1). An HTTP/2 request needs
        // `:authority` or `Host` (RFC 9113 §8.3.1: without either it is malformed).
        return Err(crate::handshake::HandshakeError::MissingHost.into());
    }
    if let Some(limit) = http.max_request_body
        && headers::content_length(&parts.headers).is_some_and(|n| n > limit)
    {
        // Refused before the body is read: a client that sent `Expect: 100-continue` never
        // gets its 100 and sends nothing.
        return Err(ProxyError::BodyTooLarge(limit));
    }
    let max_forwards = headers::max_forwards(parts)
        .map_err(|headers::InvalidMaxForwards| ProxyError::MaxForwardsInvalid)?;
    // The request as the client sent it, before the policy rewrites it (its `set_headers`
    // are for the backend's eyes).
    let echo = (max_forwards == Some(0) && parts.method == Method::TRACE)
        .then(|| headers::trace_echo(parts));
    let host = headers::request_host(parts).unwrap_or_default().to_string();
    // Read before the policy, which may strip the cookie or header it names.
    let mut affinity = route.pool.affinity(parts, cx.conn.client.ip());
    let state = BodyState::new(body, http.max_request_body, http.request_body_timeout);
    // The backend asked last, for a record written before it answers.
    let tried = record::Tried::default();
    // Armed before the policy: a client that leaves while forward-auth is asked is recorded
    // (499) as one that leaves while the backend is.
    let record = record::Record::of_request(cx, route, parts, &host, started, state.clone());
    waiting.arm(record, tried.clone());
    let admitted = check_policy(cx, route, parts, &host).await?;
    let mut record = waiting.take().expect("armed before the policy");
    record.set_user(admitted.user);
    if max_forwards == Some(0) {
        return Ok(answer_here(cx, record, echo));
    }
    route
        .pool
        .claim_affinity(&mut affinity, admitted.claims.as_ref());
    waiting.arm(record, tried.clone());
    let mut backend_headers = backend_headers(cx, route, parts, &host);
    if let Some(n) = max_forwards {
        backend_headers.insert(header::MAX_FORWARDS, (n - 1).into());
    }
    if backend_headers.contains_key(header::TRAILER) {
        let rules = route.config.policy.rules();
        let copied = rules
            .forward_auth
            .as_ref()
            .map_or(&[][..], |f| f.copy_headers());
        let managed = rules.set_headers.iter().map(|(n, _)| n);
        state.allow_trailers(headers::request_trailer_names(
            &backend_headers,
            managed.chain(&rules.strip_headers).chain(copied),
        ));
    }
    let ex = Exchange {
        route: route.clone(),
        method: parts.method.clone(),
        path_and_query: parts.uri.path_and_query().map(|pq| pq.to_string()),
        headers: backend_headers,
        host: host.clone(),
        affinity,
        body: state.clone(),
        tried: tried.clone(),
        backend_logs: cx.state.backend_logs.clone(),
    };
    let deadline = http
        .request_timeout
        .map(|d| (tokio::time::Instant::now() + d, d));
    let call = http.stack.clone().oneshot(ex);
    let result = match deadline {
        Some((at, d)) => tokio::time::timeout_at(at, call)
            .await
            .map_err(|_| ProxyError::RequestTimeout(d, tried.get()))?,
        None => call.await,
    };
    let mut forwarded = result.map_err(stack_error)?;
    let status = forwarded.response.status();
    if let Err(headers::BadResponse(why)) =
        headers::response_framing(status, forwarded.response.headers_mut())
    {
        let e = BackendError::RequestFailed(why.into()).from_backend(&forwarded.backend);
        return Err(e.into());
    }
    let mut record = waiting.take().expect("armed before the backend was asked");
    record.backend = forwarded.backend;
    record.status = forwarded.response.status();
    let (mut head, incoming) = forwarded.response.into_parts();
    headers::response_headers(&mut head.headers, head.version, cx.ids);
    if let Some(target) = http.targets.list.get(forwarded.index) {
        headers::rewrite_location(&mut head.headers, &target.url, &route.config.path);
    }
    sticky_cookie(cx, route, forwarded.index, &mut head.headers);
    // The client's connection speaks its own version; hyper writes the status line.
    head.version = Version::default();
    // HTTP/1.0 has no chunked coding: a body of unknown length ends with the connection,
    // which hyper does, but it answered `Connection: keep-alive` to a client that asked to
    // keep alive (RFC 9112 §9.3, RFC 1945 §7.2.2). A head of version 1.0 without
    // `keep-alive` is hyper's cue to close (its `fix_keep_alive`; given 1.1 it appends
    // `keep-alive` to whatever `Connection` says).
    if parts.version == Version::HTTP_10
        && !hyper::body::Body::is_end_stream(&incoming)
        && hyper::body::Body::size_hint(&incoming).exact().is_none()
    {
        head.version = Version::HTTP_10;
        head.headers
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    let body = record::ResponseBody::new(
        incoming,
        deadline,
        record,
        forwarded.in_flight,
        cx.conn.watch.as_ref(),
    );
    Ok(Response::from_parts(head, body.boxed_unsync()))
}

/// The answer to an OPTIONS or TRACE request whose `Max-Forwards` has run out here (RFC
/// 9110 §7.6.2): wsgate is its final recipient. OPTIONS gets 200 without content; TRACE
/// gets its own request back (`echo`, RFC 9110 §9.3.8). No `Allow`: the methods a resource
/// takes are its backend's to say, and wsgate forwards any. A body the request came with is
/// not read (a TRACE must not have one); the connection closes the lingering way if there
/// is one.
fn answer_here(cx: &Ctx<'_>, mut record: record::Record, echo: Option<Vec<u8>>) -> Response<Body> {
    record.backend = Arc::from("");
    record.status = http::StatusCode::OK;
    let content = echo.unwrap_or_default();
    let len = content.len() as u64;
    let mut response = Response::new(full(http_body_util::Full::new(Bytes::from(content))));
    let h = response.headers_mut();
    if record.method == Method::TRACE {
        h.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("message/http"),
        );
    }
    h.insert(header::CONTENT_LENGTH, len.into());
    h.insert(
        crate::telemetry::correlation::X_REQUEST_ID,
        cx.ids.request_id_header(),
    );
    record.finish(Outcome::Completed, len, None);
    response
}

/// The sticky cookie naming the backend that answered, on a route with `sticky` whose
/// plain requests go to its own backends: a Socket.IO or SockJS client's polling requests
/// and its later upgrade then reach the same backend. `Secure` when the client came over TLS.
fn sticky_cookie(cx: &Ctx<'_>, route: &Route, index: usize, headers: &mut http::HeaderMap) {
    let mirrors = route
        .config
        .http
        .as_ref()
        .is_some_and(|h| h.targets.mirrors_backends);
    let Some(backend) = route.pool.backends().get(index).filter(|_| mirrors) else {
        return;
    };
    let secure = cx.conn.scheme == "https";
    if let Some(cookie) = route.pool.sticky_cookie(backend, secure)
        && let Ok(v) = http::HeaderValue::from_str(&cookie)
    {
        headers.append(header::SET_COOKIE, v);
    }
}

/// The route's policy in its plain-request form; returns who the client is (for the record)
/// and its token's claims (for `hash_key = "claim:NAME"`).
async fn check_policy(
    cx: &Ctx<'_>,
    route: &Route,
    parts: &mut Parts,
    host: &str,
) -> Result<crate::policy::Admitted, ProxyError> {
    let policy = &route.config.policy;
    if policy.is_open() {
        return Ok(Default::default());
    }
    let forwarded_for = cx.forwarding.chain_header();
    // Behind a trusted proxy, the scheme and host the client used are the proxy's word.
    let facts = RequestFacts {
        scheme: cx.forwarding.proto.as_deref().unwrap_or(cx.conn.scheme),
        host: cx.forwarding.host.as_deref().unwrap_or(host),
        client: cx.forwarding,
        forwarded_for: &forwarded_for,
        tls_subject: cx.conn.client_subject.as_deref(),
    };
    Ok(policy.admit_request(parts, &facts).await?)
}

/// The backend request's headers but `Host`, from the (policy-rewritten) client request.
fn backend_headers(cx: &Ctx<'_>, route: &Route, parts: &Parts, host: &str) -> http::HeaderMap {
    let conn = cx.conn;
    headers::request_headers(
        &parts.headers,
        &headers::Forwarding {
            client: cx.forwarding,
            scheme: conn.scheme,
            host,
            version: parts.version,
            correlation: cx.ids,
            client_subject: conn
                .subject_header
                .as_ref()
                .map(|h| (h, conn.client_subject.as_deref())),
            subject_headers: &cx.config.subject_headers,
            policy: &route.config.policy,
        },
    )
}

/// What goes through the route's stack: the backend request, but for the backend's own
/// URI and `Host`.
struct Exchange {
    route: Arc<Route>,
    method: Method,
    path_and_query: Option<String>,
    headers: http::HeaderMap,
    /// The host the client asked for (`preserve_host`).
    host: String,
    /// The client's body, until an attempt reads it.
    body: Arc<BodyState>,
    /// The request's hash key and sticky backend (see `BackendPool::affinity`).
    affinity: crate::backend::Affinity,
    /// Set to each backend as it is asked.
    tried: record::Tried,
    /// The budgets of the warnings about failed attempts and failovers.
    backend_logs: Arc<crate::telemetry::limited::BackendLogs>,
}

/// The backend's response head, and which backend gave it.
struct Forwarded {
    response: Response<Incoming>,
    backend: Arc<str>,
    /// The target's place in the route's list.
    index: usize,
    in_flight: InFlight,
}

/// The stack's innermost service: the backends in balancing order until one answers. Only
/// a connect failure moves on, whatever the method: nothing of the request was sent, and
/// its body still waits in the [`BodyState`] for the next attempt. A connection that closed
/// under an idempotent request before any of the answer came, a kept-alive connection that
/// had carried an earlier request (see [`stale_connection`]), is tried again on the same
/// backend, at most [`STALE_RETRIES`] times. Any other failure is
/// the answer. The response head must come within `response_header_timeout` of the
/// client's body read in full (see [`BodyState::backend_overdue`]), connects included.
async fn forward(ex: Exchange) -> Result<Forwarded, BoxError> {
    let route = &ex.route;
    let http = route.config.http.as_ref().ok_or(ProxyError::NoRoute)?;
    let targets = &http.targets;
    let order = targets.order(&route.config.balance, &route.pool, &ex.affinity);
    if order.is_empty() {
        return Err(ProxyError::from(BackendError::AllDrained).into());
    }
    let state = &ex.body;
    let head_timeout = http.response_header_timeout;
    let head_deadline = state.backend_overdue(head_timeout);
    tokio::pin!(head_deadline);
    let mut failures = Vec::new();
    // The first failed attempt's outcome: the failover line's budget (`BackendLogs`).
    let mut first_failure = None;
    let mut all_timeouts = true;
    // Whether every failed attempt was a refusal of the TLS handshake (the answer is then
    // the TLS failure, as on the WebSocket path).
    let mut all_tls = true;
    let mut stale_retries = 0;
    let mut order = order.into_iter().peekable();
    while let Some(&i) = order.peek() {
        if !state.replayable() {
            // A connect failure after the body was read: it cannot be sent again.
            break;
        }
        let target = &targets.list[i];
        let mut req = backend_request(&ex, target, RequestBody::attempt(state.clone()))
            .map_err(ProxyError::from)?;
        // The connection's handle, to keep it out of the pool should its backend answer in
        // HTTP/1.0 or before the body was sent (below): a small allocation per request.
        let conn = hyper_util::client::legacy::connect::capture_connection(&mut req);
        let in_flight = target.claim();
        ex.tried.set(&target.name);
        let sent = tokio::select! {
            biased;
            sent = target.client.request(req) => sent,
            () = &mut head_deadline => {
                let e = BackendError::ResponseTimeout(head_timeout, Some(target.name.clone()));
                return Err(ProxyError::from(e).into());
            }
        };
        let tls_refused = sent.as_ref().err().and_then(|e| tls_refusal(e, target));
        match sent {
            Err(_) if let Some(reason) = tls_refused => {
                // The backend refused wsgate's side of the TLS handshake (a client
                // certificate it requires, or refuses). Under TLS 1.3 it says so only on the
                // first read, after the request went out into a session it never opened:
                // nothing reached it, so the next backend is tried, as after a connect
                // failure, and the failure is the TLS one it is on the WebSocket path.
                all_timeouts = false;
                if let Some(line) = ex.backend_logs.attempts.admit(Outcome::BackendTls) {
                    tracing::warn!(route = %route.name, backend = &*target.name, error = %reason, suppressed = line.suppressed(), "backend TLS handshake refused");
                }
                targets.failed(i, Outcome::BackendTls, route);
                first_failure.get_or_insert(Outcome::BackendTls);
                failures.push(format!("{}: {reason}", target.name));
                order.next();
            }
            Ok(response) => {
                if response.version() == Version::HTTP_10
                    && let Some(conn) = &*conn.connection_metadata()
                {
                    // hyper's client speaks HTTP/1.0 on a connection from the first answer
                    // in 1.0 on, and in 1.0 sends a body of unknown length as none: the next
                    // chunked upload on it would reach the backend empty. Not pooled.
                    conn.poison();
                }
                if !state.read_whole()
                    && let Some(conn) = &*conn.connection_metadata()
                {
                    // The backend answered before it had the whole body: it may not read the
                    // rest as body. One that leaves it in the connection and reads it as the
                    // next request (a CL.0 desync) would hand the next client's request on it
                    // to what this client sent. Not pooled, as nginx keeps a connection only
                    // once the request body was sent.
                    conn.poison();
                }
                targets.passed(i, &route.pool);
                if let Some(first) = first_failure
                    && let Some(line) = ex.backend_logs.failovers.admit(first)
                {
                    tracing::warn!(route = %route.name, backend = &*target.name, failed = %failures.join("; "), suppressed = line.suppressed(), "failed over to the next backend");
                }
                return Ok(Forwarded {
                    response,
                    backend: target.name.clone(),
                    index: i,
                    in_flight,
                });
            }
            Err(e) if e.is_connect() => {
                all_tls = false;
                let timed_out = caused_by_timeout(&e);
                all_timeouts &= timed_out;
                let outcome = if timed_out {
                    Outcome::BackendConnectTimeout
                } else {
                    Outcome::BackendUnreachable
                };
                let detail = crate::http_client::error_chain(&e);
                if let Some(line) = ex.backend_logs.attempts.admit(outcome) {
                    tracing::warn!(route = %route.name, backend = &*target.name, error = %detail, suppressed = line.suppressed(), "backend connect failed");
                }
                targets.failed(i, outcome, route);
                first_failure.get_or_insert(outcome);
                failures.push(format!("{}: {detail}", target.name));
                order.next();
            }
            Err(e)
                if stale_retries < STALE_RETRIES
                    && stale_connection(&e)
                    && ex.method.is_idempotent()
                    && state.replayable()
                    && state.client_fault().is_none() =>
            {
                // The same backend again: the connection is gone from its pool.
                stale_retries += 1;
                let detail = crate::http_client::error_chain(&e);
                tracing::debug!(route = %route.name, backend = &*target.name, error = %detail, "connection closed under the request; sending it again");
            }
            Err(e) => return Err(request_failed(&e, state, &target.name).into()),
        }
    }
    let detail = failures.join("; ");
    let e = if all_tls && !failures.is_empty() {
        BackendError::Tls(detail)
    } else if all_timeouts && !failures.is_empty() {
        BackendError::ConnectTimeout(route.config.backend_connect_timeout, detail)
    } else {
        BackendError::Unreachable(detail)
    };
    Err(ProxyError::from(e).into())
}

/// The request for one backend: its URI (the route's path rules, as for the WebSocket
/// backend request) and `Host`.
fn backend_request(
    ex: &Exchange,
    target: &Target,
    body: RequestBody,
) -> Result<Request<RequestBody>, BackendError> {
    let rc = &ex.route.config;
    let (path, query) = match ex.path_and_query.as_deref().map(|pq| pq.split_once('?')) {
        Some(Some((p, q))) => (p, Some(q)),
        _ => (ex.path_and_query.as_deref().unwrap_or("/"), None::<&str>),
    };
    let path = crate::backend::backend_path(rc, &target.url, path, query);
    let host = if rc.preserve_host && !ex.host.is_empty() {
        &ex.host
    } else {
        &target.url.authority
    };
    // The URI's authority is what an HTTP/2 backend gets as `:authority`, so it is the `Host`
    // sent; the target's connector connects to the target whatever it names. It is also the
    // key the pooled client keeps connections under: a plain `http://` target speaks
    // HTTP/1.1 only, where the `Host` header alone carries the client's host, so its URI
    // names the target and every client host shares one pool. Keyed by the client's host,
    // each new `Host` (any port or letter case of it will do) would cost a backend connection
    // that then idles for `http_idle_timeout`: a client could hold four seconds' worth of its
    // requests as open backend connections.
    let authority = if target.url.tls {
        host
    } else {
        &target.url.authority
    };
    let uri = headers::backend_uri(target.url.tls, authority, &path)
        .or_else(|| headers::backend_uri(target.url.tls, &target.url.authority, &path))
        .ok_or_else(|| {
            BackendError::RequestFailed(format!("no valid URI for {}{path}", target.name))
        })?;
    let chunked = {
        use hyper::body::Body as _;
        !body.is_end_stream() && body.size_hint().exact().is_none()
    };
    let mut req = Request::new(body);
    *req.method_mut() = ex.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = ex.headers.clone();
    if chunked && matches!(ex.method, Method::GET | Method::HEAD) {
        // hyper's HTTP/1.1 client sends a GET or HEAD whose body length it does not know
        // with none at all unless told otherwise: the client's chunked body would be lost
        // (and its bytes read as the next request on the pooled connection). The h2 client
        // drops the header; HTTP/2 needs no framing of its own.
        req.headers_mut().insert(
            header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }
    if let Ok(v) = http::HeaderValue::from_str(host) {
        req.headers_mut().insert(header::HOST, v);
    }
    if !target.speaks_http1() {
        // `Connection: te` (the only option the request carries, with `TE: trailers`) is for
        // an HTTP/1.1 backend; hyper's HTTP/2 client would drop TE with it, and a backend
        // that sends trailers (gRPC) insists on `te: trailers`, which HTTP/2 allows. (Until
        // the first connection to a TLS backend is up, an HTTP/1.1 one gets `TE: trailers`
        // without its connection option, which a server reads all the same.)
        req.headers_mut().remove(header::CONNECTION);
    }
    Ok(req)
}

/// A failure after the request went out: the client's doing (its body over the limit 413,
/// stalled 408, broken off 400), or the backend's (502).
fn request_failed(
    e: &hyper_util::client::legacy::Error,
    state: &BodyState,
    backend: &Arc<str>,
) -> ProxyError {
    match state.client_fault() {
        Some(ClientFault::TooLarge(limit)) => ProxyError::BodyTooLarge(limit),
        Some(ClientFault::Stalled(d)) => ProxyError::BodyTimeout(d),
        Some(ClientFault::Broken) => ProxyError::BodyBroken,
        None => BackendError::RequestFailed(crate::http_client::error_chain(e))
            .from_backend(backend)
            .into(),
    }
}

/// The stack's errors as the proxy's: its own layer's (overload) and [`forward`]'s.
fn stack_error(e: BoxError) -> ProxyError {
    if e.is::<tower::load_shed::error::Overloaded>() {
        return ProxyError::Overloaded;
    }
    match e.downcast::<ProxyError>() {
        Ok(e) => *e,
        Err(e) => BackendError::RequestFailed(e.to_string()).into(),
    }
}

/// A `https://` backend's refusal of wsgate's side of the TLS handshake (an alert), in the
/// words of the WebSocket path's (`crate::backend::alert_refusal`); `None` for any other
/// failure.
fn tls_refusal(e: &hyper_util::client::legacy::Error, target: &Target) -> Option<String> {
    if !target.url.tls {
        return None;
    }
    crate::backend::alert_refusal(find_cause::<std::io::Error>(e)?, target.client_cert)
}

/// Whether a connect failure was the connect timeout (504) rather than a refusal (502).
fn caused_by_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    find_cause::<std::io::Error>(e).is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
}
