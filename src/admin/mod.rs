//! The admin listener: `/metrics`, `/healthz`, `/readyz`, the session API and the live status
//! page, on a port of its own (never a proxy port).
//!
//! Each connection is served by hyper-util's auto builder through a `tower` stack (outermost
//! first): errors of the layers below become responses (`error_response`), a cap on requests
//! in progress, a timeout for producing each response, then the [`guard`] (Host, token,
//! cross-site checks) and the router ([`api`]). Reads come from the session registry and the
//! metrics collector; writes go through the same signals a drain uses (a session's
//! [`crate::relay::CloseRequest`], a backend's drain flag).

pub mod api;
mod events;
pub mod guard;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceBuilder};

use crate::config::AdminConfig;
use crate::proxy::ProxyState;

/// What every admin response carries.
pub type Body = BoxBody<Bytes, Infallible>;

/// Requests being answered at once (a stream of events counts only while its first answer is
/// made): an operator's browser and a few scrapers need far fewer.
const MAX_IN_PROGRESS: usize = 64;
/// Time to produce a response's head. A scrape of 10,000 sessions takes milliseconds.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a client to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection may hold no request in progress: before its first (TLS handshake
/// included), and between an answer's end and the next request (an HTTP/1.1 keep-alive, or
/// an HTTP/2 connection without streams). A scraper that keeps its connection between
/// scrapes further apart reconnects; an open event stream is a request in progress.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the admin listener holds at once, and from one address; a connection past
/// either is closed at once. An operator, a few scrapers and a load balancer's health checks
/// need a handful; the caps keep a flood of connections to an exposed admin port (the token
/// is checked only once a request comes) from taking the descriptors the proxy keeps in
/// reserve for them, and one address from taking every seat from the probes.
const MAX_CONNECTIONS: usize = 256;
const MAX_CONNECTIONS_PER_ADDRESS: usize = 32;

/// What the admin service reads and acts on.
#[derive(Debug)]
pub struct Admin {
    pub state: Arc<ProxyState>,
    pub registry: Registry,
    pub started: SystemTime,
    pub config: AdminConfig,
    /// Ends event streams when the gateway stops.
    pub stop: CancellationToken,
    /// Fires when a successor process takes the listening sockets over (and at `stop`): the
    /// accept loop ends, and the connections still open here finish their request in
    /// progress and close, so a health checker or scraper that keeps its connection asks the
    /// successor next, not this draining process for as long as its drain lasts.
    pub handed_over: CancellationToken,
}

/// Binds the admin listener and serves it until `admin.stop` fires. Returns the bound address.
pub async fn start(
    admin: Arc<Admin>,
    inherited: Option<tokio::net::TcpListener>,
) -> std::io::Result<SocketAddr> {
    let listener = match inherited {
        Some(l) => l,
        None => crate::accept::bind(admin.config.addr).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", admin.config.addr),
            )
        })?,
    };
    let listener = Arc::new(listener);
    let addr = listener.local_addr()?;
    // A hand-over to a successor process stops this loop; requests in progress finish.
    let accepting = admin.handed_over.clone();
    admin
        .state
        .listeners
        .set_admin(listener.clone(), accepting.clone());
    tracing::info!(admin = %addr, tls = admin.config.tls.is_some(), "admin listener");
    if let (Some(tls), Some(every)) = (&admin.config.tls, admin.config.tls_watch) {
        tokio::spawn(tls.clone().watch_files(every, addr, admin.stop.clone()));
    }
    tokio::spawn(accept_loop(listener, admin, accepting));
    Ok(addr)
}

async fn accept_loop(
    listener: Arc<tokio::net::TcpListener>,
    admin: Arc<Admin>,
    accepting: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    let service = service(admin.clone());
    let seats = Arc::new(Seats::default());
    let mut accept_errors = crate::accept::AcceptErrors::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = accepting.cancelled() => return,
            r = listener.accept() => match r {
                Ok(ok) => ok,
                Err(e) => {
                    if let Some(unlogged) = accept_errors.log_now() {
                        tracing::warn!(
                            error = %e,
                            unlogged,
                            "admin accept failed (retried every 100 ms; logged at most every 10 s)"
                        );
                    }
                    tokio::time::sleep(crate::accept::ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Some(unlogged) = accept_errors.resumed() {
            tracing::info!(unlogged, "admin listener accepting again");
        }
        admin.state.descriptors.took_one();
        let Some(seat) = Seats::take(&seats, peer.ip()) else {
            tracing::debug!(client = %peer, "admin connection refused: too many open");
            continue;
        };
        let (builder, stop) = (builder.clone(), admin.stop.clone());
        let handed_over = admin.handed_over.clone();
        // Per connection: a reload may have put in a new client CA (`TlsListener::reload`).
        let acceptor = admin
            .config
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config(false)));
        // A connection with no request in progress for the idle timeout is closed: the first
        // request must come within it of the accept (its TLS handshake included), each next
        // one within it of the last answer's end. hyper's own header timeout starts only once
        // a request's first bytes came (and the auto builder has read those that tell HTTP/2
        // from HTTP/1.1, and HTTP/2 has none): a connection that sent nothing, only the HTTP/2
        // preface, or nothing after its first request, was held for ever.
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            inner: service.clone(),
            activity: activity.clone(),
        };
        tokio::spawn(async move {
            let _seat = seat;
            let served = async {
                match acceptor {
                    None => serve(&builder, TokioIo::new(stream), service, &handed_over).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => serve(&builder, TokioIo::new(tls), service, &handed_over).await,
                        Err(_) => tracing::debug!(client = %peer, "admin TLS handshake failed"),
                    },
                }
            };
            tokio::select! {
                _ = served => {}
                _ = stop.cancelled() => {}
                () = activity.idle() => tracing::debug!(client = %peer, "admin connection closed: idle"),
            }
        });
    }
}

/// Whether one admin connection has a request in progress, and since when it has not.
struct Activity {
    born: tokio::time::Instant,
    busy: AtomicUsize,
    /// Milliseconds from `born` to the end of the last request (0: none yet).
    quiet_since: AtomicU64,
}

/// One request in progress, from its head to its answer's end.
struct Busy(Arc<Activity>);

/// An answer's body, holding its request [`Busy`] until hyper drops it. (http-body-util's
/// `map_frame` would do, but hides the body's size: every answer would go out chunked.)
struct BusyBody {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for BusyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The admin stack, with each request counted busy on its connection's [`Activity`] until
/// hyper drops its answer's body (sent, or the client gone).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> tower::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let busy = self.activity.begin();
        let answer = self.inner.call(req);
        Box::pin(async move {
            answer
                .await
                .map(|resp| resp.map(|inner| BusyBody { inner, _busy: busy }.boxed()))
        })
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            born: tokio::time::Instant::now(),
            busy: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Ready once the connection has had no request in progress for [`IDLE_TIMEOUT`].
    async fn idle(&self) {
        loop {
            let quiet = self.born + Duration::from_millis(self.quiet_since.load(Ordering::SeqCst));
            let due = quiet + IDLE_TIMEOUT;
            let now = tokio::time::Instant::now();
            if self.busy.load(Ordering::SeqCst) == 0 && now >= due {
                return;
            }
            tokio::time::sleep_until(due.max(now + IDLE_TIMEOUT / 4)).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.quiet_since.store(ms, Ordering::SeqCst);
        a.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The admin listener's open connections, in all and by address (see [`MAX_CONNECTIONS`]).
#[derive(Default)]
struct Seats(std::sync::Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>);

/// One connection's seat, given back when the connection's task ends (or unwinds).
struct Seat(Arc<Seats>, std::net::IpAddr);

impl Seats {
    fn take(seats: &Arc<Seats>, ip: std::net::IpAddr) -> Option<Seat> {
        let mut g = seats.0.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *g;
        let mine = by_ip.entry(ip).or_default();
        if *total >= MAX_CONNECTIONS || *mine >= MAX_CONNECTIONS_PER_ADDRESS {
            if *mine == 0 {
                by_ip.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Seat(seats.clone(), ip))
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut g = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_ip) = &mut *g;
        *total -= 1;
        if let Some(n) = by_ip.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.1);
            }
        }
    }
}

/// Serves one connection; once `handed_over` fires, it finishes what is in progress and
/// closes (HTTP/1.1: `Connection: close` on the answer in progress, or closed at once when
/// idle; HTTP/2: GOAWAY).
async fn serve<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    service: S,
    handed_over: &CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = handed_over.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

/// The tower stack every admin request goes through.
fn service(
    admin: Arc<Admin>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    let rules = Arc::new(guard::Rules {
        token: admin.config.token.clone(),
        loopback: admin.config.addr.ip().is_loopback(),
    });
    let router = tower::service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(api::route(&admin, req).await) }
    });
    ServiceBuilder::new()
        .map_result(|r: Result<Response<Body>, BoxError>| Ok(r.unwrap_or_else(error_response)))
        .concurrency_limit(MAX_IN_PROGRESS)
        .timeout(RESPONSE_TIMEOUT)
        .layer(guard::GuardLayer(rules))
        .service(router)
}

/// An error from a layer (the timeout) as a response.
fn error_response(e: BoxError) -> Response<Body> {
    if e.is::<tower::timeout::error::Elapsed>() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "timed out making the answer\n",
        );
    }
    text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"))
}

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    no_store(resp)
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    no_store(resp)
}

/// A JSON error: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Admin answers are live state: never cached by a browser or a proxy.
fn no_store(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}
