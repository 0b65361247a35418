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
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// Time for a client to send its request head, and for a new connection's first byte (and
/// its TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the admin listener holds at once; a connection past them is closed at once.
/// An operator, a few scrapers and a load balancer's health checks need a handful; the cap
/// keeps a flood of connections to an exposed admin port (the token is checked only once a
/// request comes) from taking the descriptors the proxy keeps in reserve for them.
const MAX_CONNECTIONS: usize = 256;

/// What the admin service reads and acts on.
#[derive(Debug)]
pub struct Admin {
    pub state: Arc<ProxyState>,
    pub registry: Registry,
    pub started: SystemTime,
    pub config: AdminConfig,
    /// Ends event streams when the gateway stops.
    pub stop: CancellationToken,
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
                format!("cannot listen on {} (admin): {e}", admin.config.addr),
            )
        })?,
    };
    let listener = Arc::new(listener);
    let addr = listener.local_addr()?;
    // A hand-over to a successor process stops this loop only; requests in progress finish.
    let accepting = admin.stop.child_token();
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
    let acceptor = admin
        .config
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config(false)));
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = tokio::select! {
            _ = accepting.cancelled() => return,
            r = listener.accept() => match r {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        admin.state.descriptors.took_one();
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(client = %peer, limit = MAX_CONNECTIONS, "admin connection refused: too many open");
            continue;
        }
        let (builder, service, stop) = (builder.clone(), service.clone(), admin.stop.clone());
        let acceptor = acceptor.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let served = async {
                match acceptor {
                    None => serve(&builder, TokioIo::new(FirstByteBy::new(stream)), service).await,
                    Some(acceptor) => {
                        let tls = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream));
                        match tls.await {
                            Ok(Ok(tls)) => {
                                serve(&builder, TokioIo::new(FirstByteBy::new(tls)), service).await
                            }
                            _ => tracing::debug!(client = %peer, "admin TLS handshake failed"),
                        }
                    }
                }
            };
            tokio::select! {
                _ = served => {}
                _ = stop.cancelled() => {}
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// A new connection's reads, failing with `TimedOut` when its first byte has not come within
/// [`HEADER_TIMEOUT`]. hyper-util's auto builder reads the first bytes to tell HTTP/2 from
/// HTTP/1.1 before hyper's own header timeout starts, so a connection that sends nothing was
/// held for ever.
struct FirstByteBy<I> {
    io: I,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I> FirstByteBy<I> {
    fn new(io: I) -> FirstByteBy<I> {
        FirstByteBy {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(HEADER_TIMEOUT))),
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteBy<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request within the header timeout",
                ))),
                _ => Poll::Pending,
            },
        }
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteBy<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

async fn serve<I, S>(builder: &auto::Builder<TokioExecutor>, io: TokioIo<I>, service: S)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    if let Err(e) = builder
        .serve_connection(io, TowerToHyperService::new(service))
        .await
    {
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
