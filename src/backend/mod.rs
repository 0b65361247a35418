//! The backend leg: choose a backend, connect, send a rebuilt upgrade request with a fresh
//! key, verify the 101, and fail over to the next backend before the 101 within one budget.
//!
//! `pool.rs` the route's backends and the "get me an upgraded backend" loop; `balance.rs` the
//! balancers; `health.rs` each backend's health (active verdict, passive ejection, slow
//! start); `checker.rs` the active checks; `sticky.rs` the sticky cookie. The request and the
//! handshake are here.

pub mod balance;
pub mod checker;
pub mod health;
pub mod pool;
pub mod sticky;
pub mod wire;

pub use pool::{Affinity, BackendPool};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, request};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use crate::config::{BackendUrl, RouteConfig};
use crate::error::{BackendError, BackendRefusal};
use crate::handshake::{self, ClientHandshake};
use crate::policy::forwarding::{self, ClientAddr};
use crate::telemetry::correlation::Correlation;
use crate::upgraded::UpgradedIo;

/// One backend server: its live sessions, drain flag, health and counters. A reload carries
/// it over by URL (see [`BackendPool::new`]), all of that with it.
#[derive(Debug)]
pub struct Backend {
    pub url: BackendUrl,
    /// The URL as written, shared by the records of this backend's sessions.
    pub name: Arc<str>,
    active: AtomicUsize,
    /// Drained through the admin API: no new sessions.
    draining: AtomicBool,
    /// Drained with `close`: its live sessions were closed, and so is any that a handshake
    /// already under way at the drain opens after it (`crate::proxy::spawn_session`).
    drain_closes: AtomicBool,
    pub health: health::Health,
    /// Shared with the same backend of the same route before a reload removed that route:
    /// back within `RETIRED_FOR`, its counters go on from where they stopped.
    pub stats: Arc<crate::metrics::BackendStats>,
}

impl Backend {
    fn new(url: BackendUrl, stats: Option<Arc<crate::metrics::BackendStats>>) -> Backend {
        Backend {
            name: Arc::from(url.url.as_str()),
            url,
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            drain_closes: AtomicBool::new(false),
            health: Default::default(),
            stats: stats.unwrap_or_default(),
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Takes the backend out of balancing (`true`) or puts it back. Its live sessions are
    /// not touched here (see `Sessions::close_backend`).
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        if !draining {
            self.drain_closes.store(false, Ordering::Relaxed);
        }
    }

    /// Drains the backend and closes its sessions (the admin API's drain with `close`), the
    /// ones a handshake under way opens after this too. Set before the registry is walked for
    /// the live ones: a session registered after that walk sees it (the registry's lock
    /// orders the two).
    pub fn set_draining_closing(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain_closes.store(true, Ordering::Relaxed);
    }

    /// Whether a session that opens on this backend now is to be closed at once (see
    /// [`Backend::set_draining_closing`]).
    pub fn drain_closes(&self) -> bool {
        self.drain_closes.load(Ordering::Relaxed)
    }

    /// A health change: one log record (a warning when the backend goes out, info when it
    /// comes back), and the ejection counter. `why`: the last failed check's error, where
    /// an active check made the change (its failures are logged at debug only).
    fn changed(&self, route: &str, change: health::Change, why: Option<&str>) {
        match change {
            health::Change::Unhealthy => {
                tracing::warn!(route, backend = %self.name, last_error = why, "backend unhealthy: its active checks failed, no new sessions go to it");
            }
            health::Change::Ejected { lasts, failures } => {
                self.stats.ejections.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(route, backend = %self.name, failures, ejected_for = ?lasts, "backend ejected after failed handshakes in a row");
            }
            health::Change::Back => {
                tracing::info!(route, backend = %self.name, "backend healthy again: its checks passed, it takes new sessions");
            }
            health::Change::Unchecked => {
                tracing::info!(route, backend = %self.name, "backend back in rotation: its route no longer has the active checks that took it out");
            }
            health::Change::EjectionOver => {
                tracing::info!(route, backend = %self.name, "backend ejection over: it is tried again for new sessions");
            }
        }
    }
}

/// A session's claim on a backend: counts toward `least_conn` until dropped.
#[derive(Debug)]
pub struct BackendLease {
    pub backend: Arc<Backend>,
}

impl BackendLease {
    fn new(backend: Arc<Backend>) -> BackendLease {
        backend.active.fetch_add(1, Ordering::Relaxed);
        BackendLease { backend }
    }
}

impl Drop for BackendLease {
    fn drop(&mut self) {
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP connection to the backend's host within `timeout`: each address it resolves to in
/// turn, each with an equal share of the time left, so that one address that never answers
/// (an unrouted AAAA record, a dead host behind a name) does not spend the time another
/// would have connected in. nginx tries each address as a peer of its own; this is the same
/// within one backend's attempt. A connect that ran out of time is `TimedOut`.
async fn connect_one(url: &BackendUrl, timeout: Duration) -> std::io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + timeout;
    let lookup = tokio::net::lookup_host((url.host.as_str(), url.port));
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout_at(deadline, lookup)
        .await
        .map_err(|_| timed_out(format!("resolving {} timed out", url.host)))??
        .collect();
    connect_any(&addrs, deadline).await
}

/// A connect step that ran out of time, as `connect_one`'s caller tells it from the others.
fn timed_out(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what)
}

/// The first of `addrs` that accepts a connection, each tried with an equal share of the
/// time left before `deadline` ([`connect_one`]).
async fn connect_any(
    addrs: &[std::net::SocketAddr],
    deadline: tokio::time::Instant,
) -> std::io::Result<TcpStream> {
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        match tokio::time::timeout(share, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(timed_out(format!("{addr}: connect timed out"))),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("host resolved to no address")))
}

/// Headers that belong to one connection (RFC 9110 §7.6.1) or that the proxy regenerates
/// for the backend leg; never copied from the client's request.
const NOT_FORWARDED: &[HeaderName] = &[
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::PROXY_AUTHORIZATION,
    header::HOST,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
    // Rebuilt from the handshake's offers, which the route may have rewritten (`deflate`).
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// Non-standard hop-by-hop headers, by lower-case name (besides those of
/// [`forwarding::SET_BY_THE_PROXY`], set below).
const NOT_FORWARDED_NAMES: &[&str] = &["keep-alive", "proxy-connection"];

/// Everything the backend request is built from (besides the backend), and the bound on a
/// refusal's body.
#[derive(Clone, Copy)]
pub struct BackendRequest<'a> {
    pub route: &'a RouteConfig,
    pub client: &'a request::Parts,
    pub handshake: &'a ClientHandshake,
    /// The client's address and the forwarding chain.
    pub forwarding: &'a ClientAddr,
    /// `http` or `https`, as seen by the client.
    pub scheme: &'static str,
    /// The listener's client-certificate header and the verified subject (if any).
    pub client_subject: Option<(&'a HeaderName, Option<&'a str>)>,
    /// Every listener's client-certificate header (`Config::subject_headers`): a client's
    /// own header of any of these names is dropped, on every listener, so none can be forged.
    pub subject_headers: &'a [HeaderName],
    /// The request's number (the session's, if it becomes one), for the log records.
    pub session: u64,
    /// The request id and trace context the backend is sent.
    pub correlation: &'a Correlation,
    /// A non-101 answer's body is read up to this (`limits.max_error_body`).
    pub max_error_body: usize,
    /// The budgets of the warnings about failed attempts and failovers.
    pub backend_logs: &'a crate::telemetry::limited::BackendLogs,
}

/// Builds the upgrade request for the backend: end-to-end headers copied, hop-by-hop ones
/// dropped, a fresh key, and the forwarding and correlation headers added. Returns the
/// request and its key.
pub fn build_request(
    b: &BackendRequest<'_>,
    backend: &BackendUrl,
) -> (Request<Empty<Bytes>>, String) {
    let key = handshake::generate_key();
    let path = backend_path(b.route, backend, b.client.uri.path(), b.client.uri.query());
    let host = if b.route.preserve_host {
        b.handshake.host.clone()
    } else {
        backend.authority.clone()
    };

    let mut headers = forwarding::end_to_end(
        &b.client.headers,
        b.forwarding.peer_trusted,
        |name| NOT_FORWARDED.contains(name) || NOT_FORWARDED_NAMES.contains(&name.as_str()),
        |name| b.route.policy.sets_header(name),
    );
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    forwarding::set_client_subject(&mut headers, b.subject_headers, b.client_subject);
    set(&mut headers, header::HOST, &host);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    set(&mut headers, header::SEC_WEBSOCKET_KEY, &key);
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static(handshake::WEBSOCKET_VERSION),
    );
    if !b.handshake.protocols.is_empty() {
        set(
            &mut headers,
            header::SEC_WEBSOCKET_PROTOCOL,
            &b.handshake.protocols.join(", "),
        );
    }
    for offer in &b.handshake.extensions {
        headers.append(header::SEC_WEBSOCKET_EXTENSIONS, offer.clone());
    }
    // Forwarding headers: a trusted proxy's incoming values are extended, anyone else's
    // were dropped above (see `policy::forwarding`).
    forwarding::set_headers(
        &mut headers,
        &b.client.headers,
        b.forwarding,
        (b.scheme, &b.handshake.host),
        b.handshake.transport.via(),
    );
    for (name, value) in b.correlation.backend_headers() {
        headers.append(name, value);
    }

    let mut req = Request::new(Empty::new());
    *req.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    *req.headers_mut() = headers;
    (req, key)
}

/// The path and query the backend sees. Without a path in the backend URL the client's path
/// passes unchanged; with one, the route's prefix is replaced by it (like nginx `proxy_pass`
/// with a URI). The backend URL's query comes first, then the client's.
pub fn backend_path(
    route: &RouteConfig,
    backend: &BackendUrl,
    path: &str,
    query: Option<&str>,
) -> String {
    let mut out = match &backend.path {
        None => path.to_string(),
        Some(base) => {
            // The route matched the path's routing form (segments without parameters):
            // what follows the prefix there, with its parameters.
            let rest = crate::path::after_routing_prefix(path, route.path.len());
            if rest.is_empty() {
                base.clone()
            } else {
                let rest = rest.trim_start_matches('/');
                format!("{}/{rest}", base.trim_end_matches('/'))
            }
        }
    };
    if out.is_empty() {
        out.push('/');
    }
    let queries: Vec<&str> = [backend.query.as_deref(), query]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect();
    if !queries.is_empty() {
        out.push('?');
        out.push_str(&queries.join("&"));
    }
    out
}

/// The backend's accepted handshake: the upgraded connection and its choices.
pub struct BackendUpgrade {
    /// The socket (TCP, or TLS over it for `wss://`).
    pub io: UpgradedIo,
    /// What was read past the 101: the backend's first frames, which belong to the session.
    pub read: Bytes,
    pub protocol: Option<HeaderValue>,
    pub extensions: Vec<HeaderValue>,
    /// `Set-Cookie` headers of the 101, passed on to the client.
    pub set_cookies: Vec<HeaderValue>,
}

/// Sends the upgrade request on `stream` and verifies the answer.
/// Everything `handshake` needs besides the connection.
pub struct HandshakeParams<'a> {
    pub url: &'a BackendUrl,
    /// The route's TLS client settings, for `wss://` backends.
    pub tls: Option<&'a Arc<rustls::ClientConfig>>,
    pub key: &'a str,
    pub offered: &'a ClientHandshake,
    /// Bounds the TLS handshake (for `wss://`) and the upgrade exchange together.
    pub timeout: Duration,
    pub max_error_body: usize,
    /// Another backend is tried after this one if it fails: a 5xx's body (which goes to the
    /// client only if every backend fails) is waited for a quarter of a second at most
    /// (`FAILOVER_BODY_WAIT`).
    pub more_backends: bool,
}

/// How long the body of a 5xx is read when another backend is to be tried next: the next
/// attempt waits for it, and a backend that sends its 503's head and stalls (overloaded,
/// which is what failover is for) would hold the client for the attempt's whole share. An
/// error page comes with its head or just after.
const FAILOVER_BODY_WAIT: Duration = Duration::from_millis(250);

/// Opens TLS first for a `wss://` backend (SNI from the backend's host name), then sends the
/// upgrade request and verifies the answer.
pub async fn handshake(
    stream: TcpStream,
    req: Request<Empty<Bytes>>,
    p: HandshakeParams<'_>,
) -> Result<BackendUpgrade, BackendError> {
    let timeout = p.timeout;
    // A refusal's body is read until the same deadline, and what came by then is passed on:
    // once its head is in, the backend has answered (and is not retried).
    let deadline = tokio::time::Instant::now() + timeout;
    let run = async {
        if !p.url.tls {
            return exchange(UpgradedIo::Tcp(stream.into()), req, &p, deadline).await;
        }
        let tls = tls_connect(stream, p.url, p.tls).await?;
        exchange(UpgradedIo::TlsClient(Box::new(tls)), req, &p, deadline).await
    };
    tokio::time::timeout_at(deadline, run)
        .await
        .map_err(|_| BackendError::HandshakeTimeout(timeout, None))?
}

/// The TLS handshake with a `wss://` backend, SNI from its host name.
pub(crate) async fn tls_connect(
    stream: TcpStream,
    url: &BackendUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<crate::tls_io::ClientTls, BackendError> {
    let config =
        tls.ok_or_else(|| BackendError::Tls("no TLS settings for a wss:// backend".into()))?;
    let name = rustls::pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
        BackendError::Tls(format!(
            "{:?} is not a valid TLS server name: {e}",
            url.host
        ))
    })?;
    crate::tls_io::connect(stream, config.clone(), name)
        .await
        .map_err(|e| BackendError::Tls(tls_failure(&e, &url.host, has_client_cert(config))))
}

/// Whether wsgate has a client certificate to send with these settings
/// (`[route.backend_tls] client_cert`): a backend's refusal reads differently with and
/// without one.
pub(crate) fn has_client_cert(config: &rustls::ClientConfig) -> bool {
    config.client_auth_cert_resolver.has_certs()
}

/// The alert a peer refused the TLS connection with, if `e` is one (from the handshake, or
/// from a read after it: `tls_io` and `tls_records` both carry rustls's `AlertReceived`).
fn alert_received(e: &std::io::Error) -> Option<rustls::AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// A backend's TLS alert on the first read after the handshake, in the words of
/// [`tls_failure`]; `None` if `e` is not an alert.
pub(crate) fn alert_refusal(e: &std::io::Error, client_cert: bool) -> Option<String> {
    alert_received(e).map(|_| tls_failure(e, "", client_cert))
}

/// What a backend's alert says of wsgate's side of the handshake. The certificate alerts
/// (RFC 8446 §6.2) a server sends about a client's certificate name it, and the setting
/// that sends one: under TLS 1.3 a server that wants one and got none says
/// `certificate_required`, but TLS 1.2 has no such alert and servers say `bad_certificate`
/// (or `handshake_failure`, too vague to name a cause), so without a certificate to send
/// those read as "requires one" too.
fn alert_failure(alert: rustls::AlertDescription, client_cert: bool) -> String {
    use rustls::AlertDescription as A;
    let set = "set [route.backend_tls] client_cert and client_key";
    match alert {
        A::CertificateRequired if client_cert => "the backend requires a client certificate \
            and got none from wsgate, although [route.backend_tls] client_cert is set"
            .to_string(),
        A::CertificateRequired => {
            format!("the backend requires a client certificate and wsgate has none: {set}")
        }
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied
        // A signature of wsgate's the backend could not verify: its certificate's (a CA of
        // the same name as the backend's), or the proof that wsgate holds its key.
        | A::DecryptError
            if client_cert =>
        {
            "the backend refused wsgate's client certificate ([route.backend_tls] \
             client_cert: signed by a CA the backend trusts? valid now? for client \
             authentication?)"
                .to_string()
        }
        A::BadCertificate | A::CertificateUnknown | A::AccessDenied => format!(
            "the backend refused the TLS handshake, and wsgate sent no client certificate: \
             if the backend requires one, {set}"
        ),
        _ => format!("the backend refused the TLS handshake ({alert:?} alert)"),
    }
}

/// A failed backend TLS handshake in words an operator acts on: what is wrong with the
/// backend's certificate and which setting fixes it, rather than rustls's variant names
/// (`invalid peer certificate: UnknownIssuer`), which follow in parentheses for searching.
fn tls_failure(e: &std::io::Error, host: &str, client_cert: bool) -> String {
    use rustls::{CertificateError as C, Error as E};
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the backend closed the connection during the \
                TLS handshake (a ws:// server behind a wss:// URL does that)"
                .to_string(),
            _ => e.to_string(),
        };
    };
    let what = match tls {
        E::InvalidCertificate(C::UnknownIssuer) => "the backend's certificate is not signed by \
            a CA wsgate trusts (the system's roots, or [route.backend_tls] ca where it is set)"
            .to_string(),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the backend's certificate has expired".to_string()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the backend's certificate is not valid yet (or this machine's clock is behind)"
                .to_string()
        }
        E::InvalidCertificate(C::NotValidForNameContext { presented, .. }) => format!(
            "the backend's certificate is not valid for {host:?}: it names {} (the backend \
             URL's host is the name checked)",
            if presented.is_empty() {
                "no host".to_string()
            } else {
                // rustls writes each as `DnsName("name")`.
                presented
                    .iter()
                    .map(|p| {
                        p.strip_prefix("DnsName(\"")
                            .and_then(|p| p.strip_suffix("\")"))
                            .unwrap_or(p)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        E::InvalidCertificate(C::NotValidForName) => format!(
            "the backend's certificate is not valid for {host:?} (the backend URL's host is \
             the name checked)"
        ),
        E::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "the backend's certificate is not for TLS servers (extended key usage)".to_string()
        }
        E::InvalidCertificate(C::Revoked) => "the backend's certificate is revoked".to_string(),
        E::InvalidCertificate(C::BadSignature) => {
            "the backend's certificate chain has a bad signature".to_string()
        }
        E::InvalidCertificate(C::Other(other))
            if other.to_string().contains("CaUsedAsEndEntity") =>
        {
            "the backend's certificate is a CA certificate (CA:TRUE, as `openssl req -x509` \
             makes by default), which a server may not present: issue the backend a server \
             certificate from that CA, or give it one without CA:TRUE"
                .to_string()
        }
        E::InvalidCertificate(_) => "the backend's certificate was not accepted".to_string(),
        E::AlertReceived(alert) => alert_failure(*alert, client_cert),
        E::InvalidMessage(_) => {
            "the backend did not answer in TLS (is it a ws:// backend?)".to_string()
        }
        E::NoCertificatesPresented => "the backend presented no certificate".to_string(),
        E::PeerIncompatible(_) => {
            "the backend offers no TLS version or cipher suite wsgate accepts".to_string()
        }
        _ => return tls.to_string(),
    };
    format!("{what} ({tls})")
}

/// The request out in one write, the answer's head read by hand ([`wire`]); a 101 is checked
/// and the socket kept, a 2xx is a broken answer (the backend ignored the upgrade: RFC 9110
/// §7.8), anything else read as a refusal, its body until `deadline`.
async fn exchange(
    mut io: UpgradedIo,
    req: Request<Empty<Bytes>>,
    p: &HandshakeParams<'_>,
    deadline: tokio::time::Instant,
) -> Result<BackendUpgrade, BackendError> {
    use tokio::io::AsyncWriteExt;
    let sent = async {
        io.write_all(&wire::encode(&req)).await?;
        io.flush().await
    };
    sent.await.map_err(|e| BackendError::Io(e.to_string()))?;
    let mut buf = BytesMut::new();
    let client_cert = p.url.tls.then(|| p.tls.is_some_and(|c| has_client_cert(c)));
    let head = wire::read_head(&mut io, &mut buf, client_cert).await?;
    if head.status.is_success() {
        // Passed on, a 2xx would tell an HTTP/2 client its tunnel is open (RFC 8441 §5), and
        // an HTTP/1.1 one a page: this backend does not serve WebSocket here.
        return Err(BackendError::BadHandshake(format!(
            "answered {}, not 101 Switching Protocols (not a WebSocket endpoint?)",
            head.status
        )));
    }
    if head.status != StatusCode::SWITCHING_PROTOCOLS {
        let deadline = if head.status.is_server_error() && p.more_backends {
            deadline.min(tokio::time::Instant::now() + FAILOVER_BODY_WAIT)
        } else {
            deadline
        };
        return Err(wire::refusal(io, buf.freeze(), p.max_error_body, deadline).await);
    }
    let (protocol, extensions) = verify_101(&head.headers, p.key, p.offered)?;
    let set_cookies = head
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    buf.advance(head.len);
    Ok(BackendUpgrade {
        io,
        read: buf.freeze(),
        protocol,
        extensions,
        set_cookies,
    })
}

fn classify_send_error(e: &hyper::Error) -> BackendError {
    if e.is_parse() || e.is_parse_status() {
        BackendError::BadHandshake(format!("malformed response: {e}"))
    } else {
        BackendError::Io(e.to_string())
    }
}

/// The headers of a backend's refusal passed on to the client: what its body and cookies
/// need, a redirect's target, a 429's or 503's wait, and what the status requires of its
/// answer so the client can act on it: a 401's and a 407's challenge (RFC 9110 §15.5.2,
/// §15.5.8), a 405's `Allow` (§15.5.6), a 426's `Upgrade` (§15.5.22; on HTTP/1.1 only,
/// named in `Connection` too), and the versions a backend that does not speak 13 does
/// speak (RFC 6455 §4.4).
const REFUSAL_HEADERS: [HeaderName; 10] = [
    header::CONTENT_TYPE,
    // The body's coding is part of it (RFC 9110 §8.4): browsers send `Accept-Encoding` with
    // their handshakes, and a backend may gzip its error page.
    header::CONTENT_ENCODING,
    header::WWW_AUTHENTICATE,
    header::PROXY_AUTHENTICATE,
    header::RETRY_AFTER,
    header::LOCATION,
    header::SET_COOKIE,
    header::ALLOW,
    header::UPGRADE,
    header::SEC_WEBSOCKET_VERSION,
];

/// A non-101 answer: status, the headers worth passing on ([`REFUSAL_HEADERS`]), and a
/// bounded body (what came of it by `deadline`).
async fn refused(
    resp: Response<Incoming>,
    max_body: usize,
    deadline: tokio::time::Instant,
) -> BackendError {
    let status = resp.status();
    let reason = resp
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .cloned()
        .or_else(|| {
            status
                .canonical_reason()
                .is_none()
                .then(|| hyper::ext::ReasonPhrase::from_static(b""))
        });
    let mut headers = HeaderMap::new();
    for name in REFUSAL_HEADERS {
        for v in resp.headers().get_all(&name) {
            headers.append(name.clone(), v.clone());
        }
    }
    let mut body = BytesMut::new();
    let mut incoming = resp.into_body();
    let (mut whole, mut cut) = (false, false);
    while body.len() < max_body {
        match tokio::time::timeout_at(deadline, incoming.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let room = max_body - body.len();
                    cut |= data.len() > room;
                    body.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Ok(None) => {
                whole = true;
                break;
            }
            _ => break,
        }
    }
    let whole = (whole || hyper::body::Body::is_end_stream(&incoming)) && !cut;
    let coded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if coded && !whole {
        // Part of a compressed body is no text at all: the status and headers go on alone.
        body.clear();
        headers.remove(header::CONTENT_ENCODING);
    }
    BackendError::Refused(Box::new(BackendRefusal {
        status,
        headers,
        body: body.freeze(),
        reason,
        backend: None,
    }))
}

/// RFC 6455 §4.1: the checks a client makes on the server's 101.
fn verify_101(
    h: &HeaderMap,
    key: &str,
    offered: &ClientHandshake,
) -> Result<(Option<HeaderValue>, Vec<HeaderValue>), BackendError> {
    let bad = |m: &str| Err(BackendError::BadHandshake(m.to_string()));
    upgrade_is_websocket(h).map_err(BackendError::BadHandshake)?;
    if !handshake::has_token(h, &header::CONNECTION, "upgrade") {
        return bad("101 without Connection: upgrade");
    }
    let expected = handshake::accept_key(key.as_bytes());
    if h.get_all(header::SEC_WEBSOCKET_ACCEPT)
        .iter()
        .nth(1)
        .is_some()
    {
        // RFC 6455 §11.3.3: it must not appear more than once.
        return bad("more than one Sec-WebSocket-Accept");
    }
    match h.get(header::SEC_WEBSOCKET_ACCEPT) {
        Some(v) if v.as_bytes() == expected.as_bytes() => {}
        Some(_) => return bad("wrong Sec-WebSocket-Accept"),
        None => return bad("missing Sec-WebSocket-Accept"),
    }
    let chosen = handshake::list_values(h, &header::SEC_WEBSOCKET_PROTOCOL);
    let protocol = match chosen.as_slice() {
        [] => None,
        // The checked token, not the header as it came (`chat,` or an empty field line
        // besides `chat` would reach the client, which would fail the handshake).
        [one] if offered.protocols.iter().any(|p| p == one) => HeaderValue::from_str(one).ok(),
        // What the backend was offered, which is not always what the client offered: the
        // route's `subprotocols` list and a token carried as a subprotocol are taken out.
        [one] if offered.protocols.is_empty() => {
            return Err(BackendError::BadHandshake(format!(
                "backend chose subprotocol {one:?}, but was offered none"
            )));
        }
        [one] => {
            return Err(BackendError::BadHandshake(format!(
                "backend chose subprotocol {one:?}, which it was not offered (offered: {})",
                offered.protocols.join(", ")
            )));
        }
        _ => return bad("backend chose more than one subprotocol"),
    };
    let offered_ext: Vec<String> = offered
        .extensions
        .iter()
        .flat_map(|v| extension_names(v.as_bytes()))
        .collect();
    // The answer's elements, from every field line: each judged below, and passed on as one
    // checked list, not the fields as they came (an empty field, or stray commas, would reach
    // the client, which must fail the connection on them: RFC 6455 §9.1 wants at least one
    // extension in the header). A field that is not text cannot be judged: it would pass
    // every check below unread.
    let mut elements = Vec::new();
    for v in h.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        let Ok(text) = v.to_str() else {
            return bad("Sec-WebSocket-Extensions that is not text");
        };
        if let Some(why) = handshake::extensions_problem(text) {
            return Err(BackendError::BadHandshake(format!(
                "malformed Sec-WebSocket-Extensions {text:?} (RFC 6455 §9.1): {why}"
            )));
        }
        elements.extend(text.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    for element in &elements {
        let name = element.split(';').next().unwrap_or("").trim();
        if !offered_ext.iter().any(|o| o.eq_ignore_ascii_case(name)) {
            let by_client = offered
                .client_extensions
                .iter()
                .flat_map(|v| extension_names(v.as_bytes()))
                .any(|o| o.eq_ignore_ascii_case(name));
            let why = if by_client {
                " (the client offered it; the route took it out of the backend's offer)"
            } else {
                ""
            };
            return Err(BackendError::BadHandshake(format!(
                "backend accepted extension {name:?}, which it was not offered{why}"
            )));
        }
    }
    let extensions: Vec<HeaderValue> = if elements.is_empty() {
        Vec::new()
    } else {
        match HeaderValue::from_str(&elements.join(", ")) {
            Ok(v) => vec![v],
            Err(_) => return bad("Sec-WebSocket-Extensions that is not text"),
        }
    };
    crate::deflate::check_answer(&offered.extensions, &offered.client_extensions, &extensions)
        .map_err(BackendError::BadHandshake)?;
    Ok((protocol, extensions))
}

/// The 101's `Upgrade` must be `websocket` and nothing else: RFC 6455 §4.1 (the client's
/// checks of the server's answer, point 2) has a client fail the connection on an `Upgrade`
/// with any value other than `websocket`. A list that merely contains it (`websocket, h2c`)
/// is a backend that switched to something else, or does not know which, and the relay would
/// speak WebSocket to it regardless; a client's request is held to less (`has_token`), as
/// the RFC asks only that it contain `websocket`. Case and the whitespace around the value do
/// not matter; a second field line is a second value, and refused too.
fn upgrade_is_websocket(h: &HeaderMap) -> Result<(), String> {
    let values: Vec<&HeaderValue> = h.get_all(header::UPGRADE).iter().collect();
    match values.as_slice() {
        [] => Err("101 without Upgrade: websocket".to_string()),
        [one]
            if one
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"websocket") =>
        {
            Ok(())
        }
        _ => {
            let said: Vec<String> = values
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
                .collect();
            Err(format!(
                "101 with Upgrade: {:?}, where RFC 6455 §4.1 wants websocket alone",
                said.join(", ")
            ))
        }
    }
}

/// Extension names of one `Sec-WebSocket-Extensions` value (`a; p=1, b` → `a`, `b`).
pub fn extension_names(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split(',')
        .filter_map(|e| e.split(';').next())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;

    fn route(backend: &str, path: &str) -> RouteConfig {
        from_toml_str(&format!(
            "[[listener]]\nlisten=\"127.0.0.1:0\"\n[[route]]\nname=\"r\"\npath=\"{path}\"\nbackends=[\"{backend}\"]\n"
        ))
        .unwrap()
        .routes
        .remove(0)
    }

    #[test]
    fn backend_paths() {
        let r = route("ws://b:1", "/chat");
        let b = &r.backends[0];
        assert_eq!(backend_path(&r, b, "/chat/x", Some("a=1")), "/chat/x?a=1");
        let r = route("ws://b:1/ws?t=1", "/chat");
        let b = &r.backends[0];
        assert_eq!(backend_path(&r, b, "/chat", None), "/ws?t=1");
        assert_eq!(
            backend_path(&r, b, "/chat/room/1", Some("a=1")),
            "/ws/room/1?t=1&a=1"
        );
        // The route matched `/chat;v=2/room` by its segments' names: its prefix is the
        // first segment, parameters and all.
        assert_eq!(
            backend_path(&r, b, "/chat;v=2/room;a", None),
            "/ws/room;a?t=1"
        );
        let r = route("ws://b:1/", "/chat/");
        let b = &r.backends[0];
        assert_eq!(backend_path(&r, b, "/chat/x", None), "/x");
        let r = route("ws://b:1/", "/");
        let b = &r.backends[0];
        assert_eq!(backend_path(&r, b, "/", None), "/");
        assert_eq!(backend_path(&r, b, "/a/b", None), "/a/b");
    }

    #[test]
    fn a_101_upgrades_to_websocket_alone() {
        let upgrade = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::UPGRADE, HeaderValue::from_str(v).unwrap());
            }
            upgrade_is_websocket(&h)
        };
        for good in ["websocket", "WebSocket", " websocket\t"] {
            assert_eq!(upgrade(&[good]), Ok(()), "{good:?}");
        }
        assert_eq!(
            upgrade(&[]),
            Err("101 without Upgrade: websocket".to_string())
        );
        for (bad, said) in [
            (&["websocket, h2c"][..], "\"websocket, h2c\""),
            (&["h2c, websocket"], "\"h2c, websocket\""),
            (&["websocket,"], "\"websocket,\""),
            (&["websocket", "h2c"], "\"websocket, h2c\""),
            (&["websocket", "websocket"], "\"websocket, websocket\""),
            (&["h2c"], "\"h2c\""),
            (&[""], "\"\""),
        ] {
            let e = upgrade(bad).unwrap_err();
            assert_eq!(
                e,
                format!("101 with Upgrade: {said}, where RFC 6455 §4.1 wants websocket alone"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn extension_name_lists() {
        assert_eq!(
            extension_names(b"permessage-deflate; client_max_window_bits, x-foo"),
            ["permessage-deflate", "x-foo"]
        );
    }

    /// A listener whose accept queue is full (backlog 0, one connection queued): Linux drops
    /// further SYNs, so a connect to it hangs as one to an unrouted address does.
    fn stuck_listener() -> (std::net::TcpListener, std::net::TcpStream) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        socket.listen(0).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let queued = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, queued)
    }

    #[tokio::test]
    async fn an_address_that_never_answers_leaves_time_for_the_next() {
        let (stuck, _queued) = stuck_listener();
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = [stuck.local_addr().unwrap(), good.local_addr().unwrap()];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        // The stuck address gets half the time, the good one the rest.
        let stream = connect_any(&addrs, deadline).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), addrs[1]);
        // Alone, the stuck address times out, as `TimedOut`.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        let e = connect_any(&addrs[..1], deadline).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    }
}
