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

/// The least a `tcp` check of a `wss://` backend waits for the backend's word on its TLS
/// handshake ([`tls_accepted`]): a loopback handshake takes a millisecond or two, and the
/// backend's alert must still get through a busy machine's scheduling.
const ACCEPT_WAIT_MIN: Duration = Duration::from_millis(100);
/// The most it waits: a slow link would otherwise spend a good part of the `interval`.
const ACCEPT_WAIT_MAX: Duration = Duration::from_secs(1);

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
            r = tokio::time::timeout(t.check.timeout, check_once(&backend.url, &t, started)) => r,
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
        backend.changed(&t.route, change, result.as_ref().err().map(String::as_str));
    }
}

/// One check, started at `started` (its `timeout` counts from there).
async fn check_once(url: &BackendUrl, t: &Target, started: Instant) -> Result<(), String> {
    // (The whole check is bounded by its timeout; the connect's share of it is all of it.)
    let stream = super::connect_one(url, t.check.timeout)
        .await
        .map_err(|e| e.to_string())?;
    match (t.check.kind, url.tls) {
        (CheckKind::Tcp, false) => Ok(()),
        (CheckKind::Tcp, true) => {
            let shaking = Instant::now();
            let tls = super::tls_connect(stream, url, t.tls.as_ref())
                .await
                .map_err(|e| e.to_string())?;
            let left = (started + t.check.timeout).saturating_duration_since(Instant::now());
            let wait = accept_wait(shaking.elapsed(), left);
            let client_cert = t.tls.as_deref().is_some_and(super::has_client_cert);
            tls_accepted(tls, wait, client_cert).await
        }
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

/// How long a `tcp` check waits, after a TLS handshake that took `handshake`, for the
/// backend to refuse it, with `left` of the check's `timeout` to go: twice the handshake's
/// own time, between [`ACCEPT_WAIT_MIN`] and [`ACCEPT_WAIT_MAX`], and never more than half
/// of what is left, so that a backend that accepted passes within the `timeout`.
///
/// The backend's refusal comes one round trip after the client's Finished, plus its check of
/// the client's certificate; the handshake took one round trip plus the backend's key
/// exchange and signature, on the same path: a measure of both taken from this very
/// connection, doubled for jitter. Every check of a `wss://` backend under TLS 1.3 spends
/// this wait (a backend that accepted says nothing), and the check's duration counts it.
fn accept_wait(handshake: Duration, left: Duration) -> Duration {
    (handshake * 2)
        .clamp(ACCEPT_WAIT_MIN, ACCEPT_WAIT_MAX)
        .min(left / 2)
}

/// Whether the backend accepted the TLS handshake that wsgate's side has completed. Under
/// TLS 1.2 it has: the client's handshake ends with the server's Finished, after the server
/// has judged the client's certificate. Under TLS 1.3 the client's handshake ends when it has
/// sent its own Finished, and the server's refusal (`certificate_required`, `bad_certificate`,
/// `unknown_ca`, ...) comes after it, on the first read: the `tcp` check called a backend
/// that refused every handshake (a client certificate required, none configured) healthy.
/// A backend that accepted says nothing until it is asked something, so one read, bounded by
/// `wait` ([`accept_wait`]), tells them apart: nothing by then (session tickets, which the
/// TLS stream takes in itself, are not something) or any data is an accepted handshake, an
/// alert or an end of the connection a refused one.
async fn tls_accepted(
    mut tls: crate::tls_io::ClientTls,
    wait: Duration,
    client_cert: bool,
) -> Result<(), String> {
    if tls.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Ok(());
    }
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, tls.read(&mut byte)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(0)) => Err("the backend closed the connection right after the TLS handshake".into()),
        Ok(Err(e)) => Err(match super::alert_refusal(&e, client_cert) {
            Some(reason) => BackendError::Tls(reason).to_string(),
            None => format!("the backend broke the connection right after the TLS handshake: {e}"),
        }),
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
        more_backends: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_for_a_tls_refusal_follows_the_handshake_within_bounds() {
        let ms = Duration::from_millis;
        let plenty = Duration::from_secs(2);
        // Twice the handshake, between the floor and the ceiling.
        assert_eq!(accept_wait(ms(1), plenty), ACCEPT_WAIT_MIN);
        assert_eq!(accept_wait(ms(150), plenty), ms(300));
        assert_eq!(
            accept_wait(ms(900), Duration::from_secs(10)),
            ACCEPT_WAIT_MAX
        );
        // Never more than half of what is left of the check's timeout.
        assert_eq!(accept_wait(ms(150), ms(400)), ms(200));
        assert_eq!(accept_wait(ms(1), ms(60)), ms(30));
        assert_eq!(accept_wait(ms(1), Duration::ZERO), Duration::ZERO);
    }
}
