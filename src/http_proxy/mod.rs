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
use crate::outcome::Outcome;
use crate::policy::RequestFacts;
use crate::proxy::Ctx;
use crate::route::Route;

use body::{BodyState, RequestBody};
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
    max_request_body: Option<u64>,
    stack: BoxCloneSyncService<Exchange, Forwarded, BoxError>,
}

impl std::fmt::Debug for HttpRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRoute")
            .field("targets", &self.targets)
            .field("request_timeout", &self.request_timeout)
            .field("response_header_timeout", &self.response_header_timeout)
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
                };
                let name = url.url.clone();
                Target::new(url, &name, &settings)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let targets = Arc::new(Targets::new(list, s.mirrors_backends));
        // Outermost first: a request beyond the cap is refused at once (503) rather than
        // queued; the timeout bounds the wait for the response head, connects included.
        let stack = ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(s.max_concurrent_requests)
            .timeout(s.response_header_timeout)
            .service_fn(forward);
        Ok(HttpRoute {
            targets,
            request_timeout: s.request_timeout,
            response_header_timeout: s.response_header_timeout,
            max_request_body: s.max_request_body,
            stack: BoxCloneSyncService::new(stack),
        })
    }
}

/// Whether a request is a plain one this route proxies: the route has `http = true` and the
/// request asks for no upgrade (no `Upgrade` header over HTTP/1.1, no CONNECT over HTTP/2).
/// Anything else goes the WebSocket way, where an upgrade to another protocol is refused.
pub fn is_plain(route: &Route, parts: &Parts) -> bool {
    route.config.http.is_some()
        && !parts.headers.contains_key(header::UPGRADE)
        && parts.method != Method::CONNECT
}

/// One plain request, from the framing checks to the response head; the body streams on in
/// the response. `parts` stays the client's request (as policy rewrote it), for the refusal
/// a failure becomes; every failure is also counted on the route's HTTP counters.
pub(crate) async fn serve(
    cx: &Ctx<'_>,
    route: &Arc<Route>,
    parts: &mut Parts,
    body: Incoming,
) -> Result<Response<Body>, ProxyError> {
    let result = exchange(cx, route, parts, body).await;
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
    body: Incoming,
) -> Result<Response<Body>, ProxyError> {
    let started = Instant::now();
    let http = route.config.http.as_ref().ok_or(ProxyError::NoRoute)?;
    headers::check_framing(parts).map_err(ProxyError::RequestFraming)?;
    if let Some(limit) = http.max_request_body
        && headers::content_length(&parts.headers).is_some_and(|n| n > limit)
    {
        // Refused before the body is read: a client that sent `Expect: 100-continue` never
        // gets its 100 and sends nothing.
        return Err(ProxyError::BodyTooLarge(limit));
    }
    let host = headers::request_host(parts).unwrap_or_default().to_string();
    // Read before the policy, which may strip the cookie or header it names.
    let mut affinity = route.pool.affinity(parts, cx.conn.client.ip());
    let admitted = check_policy(cx, route, parts, &host).await?;
    route
        .pool
        .claim_affinity(&mut affinity, admitted.claims.as_ref());
    let body = RequestBody::new(body, http.max_request_body);
    let state = body.state().clone();
    let ex = Exchange {
        route: route.clone(),
        method: parts.method.clone(),
        path_and_query: parts.uri.path_and_query().map(|pq| pq.to_string()),
        headers: backend_headers(cx, parts, &host),
        retryable: retryable(&parts.method, &body),
        host: host.clone(),
        affinity,
        body,
    };
    let deadline = http
        .request_timeout
        .map(|d| (tokio::time::Instant::now() + d, d));
    let call = http.stack.clone().oneshot(ex);
    let result = match deadline {
        Some((at, d)) => tokio::time::timeout_at(at, call)
            .await
            .map_err(|_| ProxyError::RequestTimeout(d))?,
        None => call.await,
    };
    let forwarded = result.map_err(|e| stack_error(e, http, &state))?;
    let record = record::Record {
        backend: forwarded.backend,
        status: forwarded.response.status(),
        ..record::Record::of_request(cx, route, parts, &host, admitted.user, started, state)
    };
    let (mut head, incoming) = forwarded.response.into_parts();
    headers::response_headers(&mut head.headers, head.version, cx.ids);
    sticky_cookie(cx, route, forwarded.index, &mut head.headers);
    // The client's connection speaks its own version; hyper writes the status line.
    head.version = Version::default();
    let body = record::ResponseBody::new(incoming, deadline, record, forwarded.in_flight);
    Ok(Response::from_parts(head, body.boxed_unsync()))
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
fn backend_headers(cx: &Ctx<'_>, parts: &Parts, host: &str) -> http::HeaderMap {
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
        },
    )
}

/// RFC 9110 §9.2.2's idempotent methods, when the request has no body: sent again to the
/// next backend if its connection failed before anything was written. A request with a
/// body is never retried (the body is streamed, not kept).
fn retryable(method: &Method, body: &RequestBody) -> bool {
    use hyper::body::Body as _;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) && body.is_end_stream()
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
    body: RequestBody,
    retryable: bool,
    /// The request's hash key and sticky backend (see `BackendPool::affinity`).
    affinity: crate::backend::Affinity,
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
/// a connect failure moves on, and only for a [`retryable`] request (otherwise its body went
/// with the first attempt); any other failure is the answer.
async fn forward(mut ex: Exchange) -> Result<Forwarded, BoxError> {
    let route = &ex.route;
    let http = route.config.http.as_ref().ok_or(ProxyError::NoRoute)?;
    let targets = &http.targets;
    let order = targets.order(&route.config.balance, &route.pool, &ex.affinity);
    if order.is_empty() {
        return Err(ProxyError::from(BackendError::AllDrained).into());
    }
    let state = ex.body.state().clone();
    let mut body = Some(std::mem::replace(
        &mut ex.body,
        RequestBody::empty(state.clone()),
    ));
    let mut failures = Vec::new();
    let mut all_timeouts = true;
    for i in order {
        let target = &targets.list[i];
        let attempt = if ex.retryable {
            RequestBody::empty(state.clone())
        } else {
            match body.take() {
                Some(b) => b,
                None => break,
            }
        };
        let req = backend_request(&ex, target, attempt).map_err(ProxyError::from)?;
        let in_flight = target.claim();
        match target.client.request(req).await {
            Ok(response) => {
                if targets.mirrors_backends
                    && let Some(b) = route.pool.backends().get(i)
                {
                    b.health.passive_success();
                }
                if !failures.is_empty() {
                    tracing::warn!(route = %route.name, backend = &*target.name, failed = %failures.join("; "), "failed over to the next backend");
                }
                return Ok(Forwarded {
                    response,
                    backend: target.name.clone(),
                    index: i,
                    in_flight,
                });
            }
            Err(e) if e.is_connect() => {
                let timed_out = caused_by_timeout(&e);
                all_timeouts &= timed_out;
                let outcome = if timed_out {
                    Outcome::BackendConnectTimeout
                } else {
                    Outcome::BackendUnreachable
                };
                if targets.mirrors_backends
                    && let Some(b) = route.pool.backends().get(i)
                {
                    b.stats.failures.add(outcome);
                    // Counts toward its ejection, as a failed handshake does.
                    route.pool.failed(b, std::time::Instant::now());
                }
                let detail = crate::http_client::error_chain(&e);
                tracing::warn!(route = %route.name, backend = &*target.name, error = %detail, "backend connect failed");
                failures.push(format!("{}: {detail}", target.name));
            }
            Err(e) => return Err(request_failed(&e, &state).into()),
        }
    }
    let detail = failures.join("; ");
    let e = if all_timeouts && !failures.is_empty() {
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
    let uri =
        headers::backend_uri(target.url.tls, &target.url.authority, &path).ok_or_else(|| {
            BackendError::RequestFailed(format!("no valid URI for {}{path}", target.name))
        })?;
    let host = if rc.preserve_host {
        &ex.host
    } else {
        &target.url.authority
    };
    let mut req = Request::new(body);
    *req.method_mut() = ex.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = ex.headers.clone();
    if let Ok(v) = http::HeaderValue::from_str(host) {
        req.headers_mut().insert(header::HOST, v);
    }
    Ok(req)
}

/// A failure after the request went out: the client's own body over the limit (413), or
/// the backend's (502).
fn request_failed(e: &hyper_util::client::legacy::Error, state: &BodyState) -> ProxyError {
    match state.exceeded() {
        Some(limit) => ProxyError::BodyTooLarge(limit),
        None => BackendError::RequestFailed(crate::http_client::error_chain(e)).into(),
    }
}

/// The stack's errors as the proxy's: its own layers' (overload, response-head timeout) and
/// [`forward`]'s.
fn stack_error(e: BoxError, http: &HttpRoute, state: &BodyState) -> ProxyError {
    if e.is::<tower::load_shed::error::Overloaded>() {
        return ProxyError::Overloaded;
    }
    if e.is::<tower::timeout::error::Elapsed>() {
        return match state.exceeded() {
            Some(limit) => ProxyError::BodyTooLarge(limit),
            None => BackendError::ResponseTimeout(http.response_header_timeout).into(),
        };
    }
    match e.downcast::<ProxyError>() {
        Ok(e) => *e,
        Err(e) => BackendError::RequestFailed(e.to_string()).into(),
    }
}

/// The first error of type `T` in `e`'s source chain.
fn find_cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<T>() {
            return Some(t);
        }
        cur = c.source();
    }
    None
}

/// Whether a connect failure was the connect timeout (504) rather than a refusal (502).
fn caused_by_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    find_cause::<std::io::Error>(e).is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
}
