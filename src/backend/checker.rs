//! Active health checks (`[route.health] check`): one task per backend of a pool, a check
//! every `interval` (jittered by up to a tenth either way, so a route's checks and the
//! checks of many proxies do not fall in step), results fed to the backend's
//! [`Health`](super::health::Health).
//!
//! A checker holds its backend weakly and its pool's cancellation token: a reload cancels
//! the old pool's checkers as it starts the new pool's (so checks never pile up), and a
//! backend no longer listed anywhere ends its checker with it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Backend;
use crate::config::{ActiveCheck, BackendUrl, CheckKind, RouteConfig};
use crate::error::BackendError;
use crate::handshake::{self, ClientHandshake, Transport};

/// How long a `websocket` check waits for the backend's close reply before it hangs up: the
/// check has passed by then, this is only politeness (RFC 6455 §7.1.1: the server closes TCP
/// first).
const CLOSE_REPLY_WAIT: Duration = Duration::from_millis(500);

/// Starts one checker per backend of a pool.
pub fn spawn(
    route: Arc<str>,
    backends: &[Arc<Backend>],
    check: ActiveCheck,
    config: &RouteConfig,
    stop: CancellationToken,
) {
    for backend in backends {
        let target = Target {
            route: route.clone(),
            backend: Arc::downgrade(backend),
            tls: backend.url.tls_config(config).cloned(),
            check: check.clone(),
            epoch: backend.health.checks_epoch(),
        };
        tokio::spawn(run(target, stop.clone()));
    }
}

/// What one checker checks.
struct Target {
    route: Arc<str>,
    backend: Weak<Backend>,
    tls: Option<Arc<rustls::ClientConfig>>,
    check: ActiveCheck,
    /// The backend's checks epoch when this checker started: once a reload has removed the
    /// checks, a result still on its way is not taken.
    epoch: u32,
}

async fn run(t: Target, stop: CancellationToken) {
    // The first check after a random part of the interval: a route's backends (and a
    // reload's new checkers) spread out from the start.
    let mut wait = t.check.interval.mul_f64(rand::random::<f64>());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(backend) = t.backend.upgrade() else {
            return;
        };
        let started = Instant::now();
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = tokio::time::timeout(t.check.timeout, check_once(&backend.url, &t)) => r,
        };
        let result =
            result.unwrap_or_else(|_| Err(format!("no answer within {:?}", t.check.timeout)));
        record(&t, &backend, started, result);
        wait = t.check.interval.mul_f64(0.9 + 0.2 * rand::random::<f64>());
    }
}

fn record(t: &Target, backend: &Backend, started: Instant, result: Result<(), String>) {
    let ok = result.is_ok();
    let stats = &backend.stats;
    stats.checks.add(if ok { "ok" } else { "failed" });
    stats.check_seconds.observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        tracing::debug!(route = %t.route, backend = %backend.name, error = %e, "health check failed");
    }
    if let Some(change) = backend
        .health
        .active_result(ok, Instant::now(), &t.check, t.epoch)
    {
        backend.changed(&t.route, change);
    }
}

async fn check_once(url: &BackendUrl, t: &Target) -> Result<(), String> {
    // (The whole check is bounded by its timeout; the connect's share of it is all of it.)
    let stream = super::connect_one(url, t.check.timeout)
        .await
        .map_err(|e| e.to_string())?;
    match (t.check.kind, url.tls) {
        (CheckKind::Tcp, false) => Ok(()),
        (CheckKind::Tcp, true) => super::tls_connect(stream, url, t.tls.as_ref())
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        (CheckKind::WebSocket, _) => websocket(stream, url, t).await,
        (CheckKind::Http, false) => http_get(stream, url, &t.check).await,
        (CheckKind::Http, true) => {
            let tls = super::tls_connect(stream, url, t.tls.as_ref())
                .await
                .map_err(|e| e.to_string())?;
            http_get(tls, url, &t.check).await
        }
    }
}

/// The path a check asks for: the configured one, else the backend URL's own (or `/`).
fn check_path(url: &BackendUrl, check: &ActiveCheck) -> String {
    check.path.clone().unwrap_or_else(|| {
        let path = url.path.as_deref().unwrap_or("/");
        match &url.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        }
    })
}

fn request(url: &BackendUrl, check: &ActiveCheck) -> http::request::Builder {
    Request::get(check_path(url, check))
        .header(header::HOST, url.authority.as_str())
        .header(header::USER_AGENT, "wsgate-health-check")
}

/// A real upgrade (the 101 verified as for a client's), then a close frame with 1000.
async fn websocket(
    stream: tokio::net::TcpStream,
    url: &BackendUrl,
    t: &Target,
) -> Result<(), String> {
    let key = handshake::generate_key();
    let req = request(url, &t.check)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_KEY, key.as_str())
        .header(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static(handshake::WEBSOCKET_VERSION),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let offered = ClientHandshake {
        transport: Transport::H1,
        key: String::new(),
        protocols: Vec::new(),
        extensions: Vec::new(),
        client_extensions: Vec::new(),
        host: url.authority.clone(),
    };
    let params = super::HandshakeParams {
        url,
        tls: t.tls.as_ref(),
        key: &key,
        offered: &offered,
        timeout: t.check.timeout,
        max_error_body: 0,
    };
    let up = super::handshake(stream, req, params)
        .await
        .map_err(|e| match e {
            BackendError::Refused(r) => format!("answered {} instead of 101", r.status),
            other => other.to_string(),
        })?;
    let mut io = up.io;
    let close = crate::frame::close_frame(1000, "", crate::frame::Sender::Server);
    io.write_all(&close).await.map_err(|e| e.to_string())?;
    // The check has passed: the wait for the close reply is not the check's, and must not
    // count against its `timeout` (a `timeout` under the wait failed every backend that
    // does not answer a close at once).
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, read_to_eof(&mut io)).await;
    });
    Ok(())
}

/// Reads and drops what the peer sends until it closes.
async fn read_to_eof<I: AsyncRead + Unpin>(io: &mut I) {
    let mut sink = [0u8; 512];
    while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// `GET path`, which must answer 2xx.
async fn http_get<I>(io: I, url: &BackendUrl, check: &ActiveCheck) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let req = request(url, check)
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    // The connection is driven here, not in a task of its own: a check that times out
    // drops it with the socket.
    let mut conn = std::pin::pin!(conn);
    let mut answer = std::pin::pin!(sender.send_request(req));
    let answered = |r: hyper::Result<http::Response<hyper::body::Incoming>>| {
        r.map(|r| r.status()).map_err(|e| e.to_string())
    };
    let status = tokio::select! {
        biased;
        r = &mut answer => answered(r),
        // With `Connection: close` the connection ends as soon as the exchange is over, in
        // the same poll that hands the answer over: the answer decides, if there is one.
        r = &mut conn => match r {
            Ok(()) => answered(answer.await),
            Err(e) => Err(e.to_string()),
        },
    };
    match status? {
        s if s.is_success() => Ok(()),
        s => Err(format!("answered {s}, not 2xx")),
    }
}
