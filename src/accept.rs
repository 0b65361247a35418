//! Listeners and the accept loop: socket options, one task per connection (which reads the
//! PROXY header where the listener expects one, then runs the TLS handshake), and the deadline
//! for a connection's first request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ListenerConfig;
use crate::head_guard::{self, ClientIo, HeadGuard, HeadReasons, HeadRefusal, HeadWatch, Unread};
use crate::http::{self, Protocols};
use crate::metrics::ListenerStats;
use crate::outcome::Outcome;
use crate::proxy::{self, ConnInfo, ProxyState};
use crate::telemetry::RefusalCounts;
use crate::tls_io::{self, ServerTls};

/// Pending connections the kernel may queue per listener: absorbs reconnect storms after a
/// backend restart, when thousands of clients come back at once.
const LISTEN_BACKLOG: u32 = 4096;
/// After an accept error such as EMFILE, wait before retrying rather than spin.
pub(crate) const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// A loop whose accepts keep failing (out of descriptors) logs once per this, with how many
/// failures it did not log: retried every 100 ms per worker, they were 10 lines a second each.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The warnings of one accept loop's failed accepts: the first, then one per
/// [`ACCEPT_ERROR_LOG_EVERY`] while they go on, saying how many came in between.
#[derive(Default)]
pub(crate) struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// Whether to log this failure now, and how many went unlogged before it.
    pub(crate) fn log_now(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < ACCEPT_ERROR_LOG_EVERY)
        {
            self.unlogged += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// An accept succeeded: if failures were logged, how many came after the last line (said
    /// now, not with a next failure that may come hours later), and the next failure is
    /// logged at once.
    pub(crate) fn resumed(&mut self) -> Option<u64> {
        self.last_logged.take()?;
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Binds a listener socket.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_with(addr, false)
}

/// [`bind`] with `SO_REUSEPORT`: the port may be shared with a listener of ours on another
/// address that has it too, as a reload moves a listener (`listeners.rs`). Not used
/// otherwise: a second proxy started by mistake on a port should fail, not share it.
pub fn bind_sharing_port(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_with(addr, true)
}

fn bind_with(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What ends an accept loop and its connections.
pub struct Stops {
    /// Ends this loop only (a reload that removes or changes the listener, a hand-over to a
    /// successor process): its connections go on.
    pub accepting: CancellationToken,
    /// The shutdown: each connection finishes its current request and closes (upgraded
    /// sessions live on in the session registry until it closes them).
    pub connections: CancellationToken,
}

/// Accepts until `stops.accepting` fires, then returns (letting go of the listener).
/// Connection tasks are tracked by `conns`.
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    config: ListenerConfig,
    state: Arc<ProxyState>,
    stops: Stops,
    conns: TaskTracker,
    stats: Arc<ListenerStats>,
) {
    let Stops {
        accepting,
        connections: stop,
    } = stops;
    // A loop's HTTP settings are those of the generation it started under: a reload that
    // changes them starts a new loop (`crate::listeners`).
    let started = state.current();
    let make = |p| {
        Arc::new(http::builder(
            &config,
            &started.config.limits,
            &started.config.http2,
            p,
        ))
    };
    let (h1, h2) = if config.http2 {
        (make(Protocols::Http1), make(Protocols::Http2))
    } else {
        let h1 = make(Protocols::Http1);
        (h1.clone(), h1)
    };
    // Plain TCP with HTTP/2 on: the first bytes tell (h2c prior knowledge, or HTTP/1.1).
    let plain = if config.http2 {
        Serve::Sniff(h1.clone(), h2.clone())
    } else {
        Serve::Http1(h1.clone())
    };
    let reasons = Arc::new(HeadReasons::new(
        &started.config.limits,
        config.handshake_timeout,
    ));
    let mut accept_errors = AcceptErrors::default();
    loop {
        let (mut stream, peer) = tokio::select! {
            // Told to stop, a loop takes no more: one ready to accept when the stop comes
            // leaves it to whoever else reads the queue (a successor after a hand-over).
            biased;
            _ = accepting.cancelled() => return,
            r = listener.accept() => match r {
                Ok(ok) => ok,
                Err(e) => {
                    stats.accept_error(&e);
                    if let Some(unlogged) = accept_errors.log_now() {
                        tracing::warn!(
                            listener = %config.addr,
                            error = %e,
                            unlogged,
                            "accept failed (retried every 100 ms; logged at most every 10 s)"
                        );
                    }
                    tokio::select! {
                        _ = accepting.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if let Some(unlogged) = accept_errors.resumed() {
            tracing::info!(listener = %config.addr, unlogged, "accepting again");
        }
        let peer = canonical(peer);
        // Deep in the descriptor reserve (`Descriptors::check_accepted`), a connection is
        // closed as soon as it is accepted, unanswered: idle connections must not take what
        // the reserve keeps for the admin listener and the backend legs. The reserve is the
        // current generation's: a reload that changes it does not restart this loop.
        let reserve = state.current().config.limits.fd_reserve;
        if state.descriptors.check_accepted(reserve).is_err() {
            state
                .unrouted_refusals
                .add(crate::outcome::Outcome::FdReserve);
            drop(stream);
            continue;
        }
        let awaiting = Arc::new(AwaitingAnswer::new(state.clone()));
        set_socket_options(&stream);
        let (state, stop) = (state.clone(), stop.clone());
        let timeout = config.handshake_timeout;
        let proxy_protocol = config.proxy_protocol
            && (config.proxy_protocol_from.is_empty()
                || crate::policy::forwarding::is_trusted(&config.proxy_protocol_from, peer.ip()));
        let trusted_proxies = config.trusted_proxies.clone();
        let reasons = reasons.clone();
        match &config.tls {
            None => {
                let plain = plain.clone();
                conns.spawn(async move {
                    let deadline = Instant::now() + timeout;
                    let counts = &state.unrouted_refusals;
                    let header = client_addr(&mut stream, peer, proxy_protocol, deadline, &state);
                    let Some(client) = unless_stopped(&stop, counts, header).await else {
                        return;
                    };
                    let conn = ConnInfo {
                        client,
                        scheme: "http",
                        client_subject: None,
                        subject_header: None,
                        trusted_proxies,
                        live_streams: None,
                        watch: None,
                    };
                    serve(
                        stream,
                        conn,
                        state,
                        plain,
                        (reasons, awaiting),
                        (deadline, timeout),
                        stop,
                    )
                    .await;
                });
            }
            Some(tls) => {
                let acceptor = tls.server_config(config.http2);
                let (h1, h2) = (h1.clone(), h2.clone());
                let subject_header = tls.subject_header.clone();
                let stats = stats.clone();
                conns.spawn(async move {
                    let deadline = Instant::now() + timeout;
                    let counts = &state.unrouted_refusals;
                    let handshake = tls_handshake(
                        stream,
                        peer,
                        &acceptor,
                        proxy_protocol,
                        deadline,
                        &state,
                        &stats,
                    );
                    let (tls, client, seen) = match unless_stopped(&stop, counts, handshake).await {
                        Some(Handshake::Tls(tls, client, seen)) => (*tls, client, seen),
                        Some(Handshake::PlainHttp(mut stream, head, client)) => {
                            // A shutdown cuts the answer short rather than wait for a client
                            // that may never read it. Recorded with the status it got: none
                            // when its head never came whole (the record said 400 at once,
                            // for an answer that was never sent).
                            let answer = answer_plain_http(&mut stream, head);
                            let answered = tokio::select! {
                                _ = stop.cancelled() => false,
                                r = tokio::time::timeout_at(deadline, answer) => {
                                    matches!(r, Ok(Ok(())))
                                }
                            };
                            let o = Outcome::PlainHttpOnTls;
                            let reason = "plain HTTP on a TLS port";
                            refused_early(&state, client, o, answered.then_some(400), reason, None);
                            if answered {
                                let linger = tokio::time::timeout_at(deadline, linger(stream));
                                tokio::select! {
                                    _ = stop.cancelled() => {}
                                    _ = linger => {}
                                }
                            }
                            return;
                        }
                        None => return,
                    };
                    let conn = ConnInfo {
                        client,
                        scheme: "https",
                        client_subject: seen.client_subject,
                        subject_header,
                        trusted_proxies,
                        live_streams: None,
                        watch: None,
                    };
                    // ALPN decides the protocol, not the first bytes.
                    let builder = if seen.h2 {
                        Serve::Http2(h2)
                    } else {
                        Serve::Http1(h1)
                    };
                    serve(
                        tls,
                        conn,
                        state,
                        builder,
                        (reasons, awaiting),
                        (deadline, timeout),
                        stop,
                    )
                    .await;
                });
            }
        }
    }
}

/// Runs a connection's phase before its first request (the PROXY header, the TLS handshake)
/// unless the gateway stops first. Such a connection has nothing in flight to finish, so a
/// shutdown closes it at once, counted as `draining` (unrouted, no answer), instead of
/// holding the process until the connection's handshake timeout. No log line per
/// connection: a shutdown may close thousands; the shutdown's own lines say it happened.
async fn unless_stopped<T>(
    stop: &CancellationToken,
    counts: &RefusalCounts,
    phase: impl Future<Output = Option<T>>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => {
            counts.add(Outcome::Draining);
            None
        }
        done = phase => done,
    }
}

/// How a TLS listener's connection came through its handshake phase.
enum Handshake {
    /// TLS is up; the client's address (from the PROXY header, if the listener expects one),
    /// and what the handshake settled. Boxed: the TLS state is several hundred bytes, the
    /// other variant a socket.
    Tls(Box<ServerTls>, SocketAddr, Settled),
    /// The client spoke plain HTTP: it gets a 400 that says so, recorded once it has been
    /// sent (or not: a client that never finishes its head gets none). The socket, the start
    /// of the request read from it, and the client's address.
    PlainHttp(TcpStream, Vec<u8>, SocketAddr),
}

/// What a TLS handshake settled that serving the connection needs, taken while rustls still
/// has it (a TLS 1.3 connection leaves rustls after its handshake, `tls_io.rs`).
struct Settled {
    /// ALPN chose HTTP/2.
    h2: bool,
    /// The verified client certificate's subject, if the client sent one.
    client_subject: Option<Arc<str>>,
}

impl Settled {
    fn of(conn: &rustls::CommonState) -> Settled {
        Settled {
            h2: conn.alpn_protocol() == Some(b"h2"),
            client_subject: crate::tls::peer_subject(conn),
        }
    }
}

/// The handshake phase of a TLS listener's connection: the PROXY header where the listener
/// expects one, then the TLS handshake, under one `deadline` for both: a slow or silent
/// client never holds up the accept loop, nor gets the timeout twice. `None`: the
/// connection is to be closed (counted and logged at debug here).
async fn tls_handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    acceptor: &Arc<rustls::ServerConfig>,
    proxy_protocol: bool,
    deadline: Instant,
    state: &ProxyState,
    stats: &ListenerStats,
) -> Option<Handshake> {
    let client = client_addr(&mut stream, peer, proxy_protocol, deadline, state).await?;
    let accepted = tls_io::accept(stream, acceptor.clone(), Settled::of);
    match tokio::time::timeout_at(deadline, accepted).await {
        Ok(Ok(tls_io::Accepted::Tls(tls, settled))) => {
            stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            Some(Handshake::Tls(tls, client, settled))
        }
        Ok(Ok(tls_io::Accepted::Closed)) => {
            // Connected and closed without a byte (a load balancer's TCP health check): no
            // handshake failed, as on a plain listener.
            tracing::trace!(client = %client, "closed before its TLS handshake");
            None
        }
        Ok(Ok(tls_io::Accepted::PlainHttp(stream, head))) => {
            stats.tls_failures.add(Outcome::PlainHttpOnTls);
            Some(Handshake::PlainHttp(stream, head, client))
        }
        Ok(Err(e)) => {
            let o = Outcome::TlsHandshakeFailed;
            stats.tls_failures.add(o);
            refused_early(state, client, o, None, "TLS handshake failed", Some(&e));
            None
        }
        Err(_) => {
            let o = Outcome::TlsHandshakeTimeout;
            stats.tls_failures.add(o);
            let reason = "no TLS handshake within the handshake timeout";
            refused_early(state, client, o, None, reason, None);
            None
        }
    }
}

/// A connection refused before its first request (its PROXY header or its TLS handshake):
/// counted (unrouted) with the status it was answered with, if any, and logged as a refused
/// request head is (`HeadWatch::refuse`), within the refusal log's budget. `error` is
/// rustls's or the PROXY parser's own description, not the client's bytes.
fn refused_early(
    state: &ProxyState,
    client: SocketAddr,
    outcome: Outcome,
    status: Option<u16>,
    reason: &str,
    error: Option<&dyn std::fmt::Display>,
) {
    head_guard::report_unrouted(
        state,
        client,
        outcome,
        status,
        reason,
        error,
        "connection refused before its request",
    );
}

/// An IPv4 client on a dual-stack (`[::]`) listener, or in a PROXY header's TCP6 line, as
/// its IPv4 address: the records and the forwarding headers name it alike (the records
/// said `[::ffff:192.0.2.7]:PORT` where `X-Forwarded-For` said `192.0.2.7`), as do the
/// per-IP limits.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The client's address: the PROXY header's source where the listener expects one (within
/// `deadline`), else the peer's. `None`: no valid header came; refused (`refused_early`).
async fn client_addr(
    stream: &mut TcpStream,
    peer: SocketAddr,
    proxy_protocol: bool,
    deadline: Instant,
    state: &ProxyState,
) -> Option<SocketAddr> {
    if !proxy_protocol {
        return Some(peer);
    }
    match tokio::time::timeout_at(deadline, crate::proxy_protocol::read_header(stream)).await {
        Ok(Ok(source)) => {
            let client = source.map_or(peer, canonical);
            tracing::trace!(peer = %peer, client = %client, "PROXY header");
            Some(client)
        }
        Ok(Err(crate::proxy_protocol::ProxyHeaderError::Closed)) => {
            // Connected and closed without a byte (a load balancer's TCP health check, which
            // sends no header): nothing was refused, as on a listener without PROXY headers.
            tracing::trace!(peer = %peer, "closed before its PROXY header");
            None
        }
        Ok(Err(e)) => {
            let o = Outcome::ProxyHeaderInvalid;
            refused_early(state, peer, o, None, "invalid PROXY header", Some(&e));
            None
        }
        Err(_) => {
            let o = Outcome::ProxyHeaderTimeout;
            let reason = "no PROXY header within the handshake timeout";
            refused_early(state, peer, o, None, reason, None);
            None
        }
    }
}

/// Someone typed `http://` for a `https://` address: tell them, as nginx does (its 497),
/// instead of sending a TLS alert a person cannot read. The request head is read first (up
/// to a limit; `head` is what the TLS handshake read of it) so that closing does not reset
/// the connection under the answer. `Ok` once the answer is written; the caller bounds the
/// time, and closes with [`linger`].
async fn answer_plain_http(stream: &mut TcpStream, mut head: Vec<u8>) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "This port speaks TLS: use https:// or wss://.\n";
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await? {
            // Closed before its head was whole: nobody to answer (it was written a 400 it
            // never read, and recorded 400).
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    stream.write_all(answer.as_bytes()).await
}

/// The lingering close after [`answer_plain_http`]: FIN, then read until the client closes,
/// so the answer is not lost to a reset.
async fn linger(mut stream: TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.shutdown().await?;
    let mut buf = [0u8; 2048];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

/// `TCP_NODELAY` only: a WebSocket message goes out when it is written. TCP keepalive is
/// not set here: a session's own pings find a vanished peer sooner, and a connection that
/// has not upgraded yet is bounded by the handshake and header timeouts. Sessions on a route
/// with pings off get keepalive after the upgrade ([`crate::upgraded::UpgradedIo::keepalive`]),
/// two `setsockopt` calls that every other session is spared.
fn set_socket_options(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY failed");
    }
}

/// Serves one connection. Its first request must be complete by `deadline`, the
/// connection's start plus the handshake timeout (`[timeouts] handshake`: "from
/// connecting", so a PROXY header and a TLS handshake take from the same time): hyper's
/// HTTP/1.1 header timeout starts only when hyper first reads, after the protocol sniff on
/// a plain listener with HTTP/2 on, and HTTP/2 has none, so a client that connects and sends
/// nothing would otherwise hold the socket forever. An idle HTTP/2 connection is closed
/// after `first_request_timeout` (the same timeout).
///
/// On shutdown, a connection that has not sent a complete request closes at once; one with
/// a request in flight finishes it; an HTTP/2 connection carrying WebSockets waits for them
/// (their close frames go first), then sends GOAWAY.
///
/// hyper gets the connection through a [`HeadGuard`]: a head hyper refuses (431, 414, 400)
/// is answered with wsgate's reason, and like a head that never completes, it is counted
/// and logged (`head_guard.rs`).
async fn serve<I>(
    mut io: I,
    mut conn: ConnInfo,
    state: Arc<ProxyState>,
    builder: Serve,
    (reasons, awaiting): (Arc<HeadReasons>, Arc<AwaitingAnswer>),
    (deadline, first_request_timeout): (Instant, Duration),
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let watch = Arc::new(HeadWatch::new(state.clone(), reasons, conn.client));
    let (builder, pre) = match builder {
        Serve::Http1(b) => (b, bytes::Bytes::new()),
        Serve::Sniff(h1, h2) => {
            let Some(pre) = opening(&mut io, &conn, &watch, deadline, &stop).await else {
                return;
            };
            if pre.starts_with(H2_PREFACE) {
                (h2, pre)
            } else {
                (h1, pre)
            }
        }
        Serve::Http2(h2) => {
            let Some(pre) = opening(&mut io, &conn, &watch, deadline, &stop).await else {
                if stop.is_cancelled() {
                    // A TLS connection that agreed on `h2` (a browser's spare connection)
                    // and has sent no preface yet: closed by the shutdown with our
                    // `close_notify` (RFC 8446 §6.1), bounded, as an HTTP/1.1 one is.
                    use tokio::io::AsyncWriteExt;
                    let _ = tokio::time::timeout(CLOSE_NOTIFY_WAIT, io.shutdown()).await;
                }
                return;
            };
            if !pre.starts_with(H2_PREFACE) {
                // RFC 9113 §3.4: not HTTP/2, so closed without a GOAWAY (hyper's h2 would
                // send its SETTINGS first, and nothing would be counted). A part of the
                // preface (`first_bytes` reads on while it is one, so the client closed)
                // is a client that left, as a partial HTTP/1.1 head is.
                if !H2_PREFACE.starts_with(&pre) {
                    watch.refuse(HeadRefusal::NoHttp2Preface, None);
                }
                return;
            }
            (h2, pre)
        }
    };
    let client = conn.client;
    let tls = conn.scheme == "https";
    if matches!(&*builder, http::Builder::Http2(_)) {
        conn.live_streams = Some(Default::default());
    } else {
        conn.watch = Some(watch.clone());
    }
    let live_streams = conn.live_streams.clone();
    // HTTP/2 only: its requests in flight, from the service's call to the end of the
    // response's body, for the idle close (`idle_h2`).
    let in_flight = live_streams
        .as_ref()
        .map(|_| Arc::new(tokio::sync::watch::Sender::new(0usize)));
    let cut = state.listeners.cut.clone();
    let handed_over = state.listeners.handed_over.clone();
    let service = {
        let watch = watch.clone();
        let in_flight = in_flight.clone();
        // What a body the proxy leaves unread does (`head_guard::Unread`): on HTTP/1.1 the
        // connection's close lingers, on HTTP/2 the stream is drained.
        let http1 = live_streams.is_none();
        service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            watch.request_seen();
            let flight = in_flight.as_ref().map(proxy::StreamGuard::new);
            let done = http1.then(|| watch.clone());
            let unread = Unread::of(req.body(), http1, &watch);
            // A clone of the request's upgrade (HTTP/1.1, `Upgrade` sent), for the refusal's
            // close (`head_guard::close_refused`); dropped unused when the answer is a 101.
            let refused_close = req
                .extensions()
                .get::<hyper::upgrade::OnUpgrade>()
                .filter(|_| http1)
                .cloned();
            let (state, conn, awaiting) = (state.clone(), conn.clone(), awaiting.clone());
            // Boxed, and the handler's future made inside the box: hyper holds a service's
            // future inline (HTTP/1.1: in a box it allocates, empty, when the connection
            // starts; HTTP/2: in each stream's task, which lives until the response body has
            // been sent), and the handler's is over 6 KiB. Unboxed, and held once as this
            // block's capture and again while awaited, it made every connection copy 13 KiB
            // at its start and again per request, and each HTTP/2 stream's task 13 KiB for
            // its whole response (256 bytes now, the box freed with the response's head).
            Box::pin(async move {
                // After a hand-over an HTTP/1.1 connection's answer is its last (the serve
                // loop shuts down the connections that had a request by then; hyper's
                // graceful shutdown would close one that had not, unanswered).
                let last = http1 && state.listeners.handed_over.is_cancelled();
                let lingers = refused_close
                    .is_some()
                    .then(|| (state.listeners.conns.clone(), state.listeners.cut.clone()));
                let mut response = proxy::handle(state, conn, req, unread).await;
                if let Ok(r) = &mut response
                    && last
                    && r.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
                    // A refusal's says `close` already (with `upgrade` where it must).
                    && !r.headers().contains_key(hyper::header::CONNECTION)
                {
                    r.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                // A session is registered before its 101 is returned.
                awaiting.done();
                // Tracked as a connection (a shutdown waits for it, up to its grace, then
                // cuts it): the runtime's end would drop the socket under the client, with a
                // reset if it had sent more, before it read the refusal.
                if let (Some(on_upgrade), Some((conns, cut)), Ok(r)) =
                    (refused_close, lingers, &response)
                    && r.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
                {
                    conns.spawn(crate::head_guard::close_refused(on_upgrade, cut));
                }
                response.map(|r| {
                    r.map(|body| Tracked {
                        body,
                        _flight: flight,
                        done,
                    })
                })
            })
        })
    };
    let io: ClientIo<I> = TokioIo::new(HeadGuard::new(io, watch.clone()).with_prefix(pre));
    let connection = builder.serve(io, service);
    tokio::pin!(connection);
    let deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(deadline);
    let mut deadline_armed = true;
    // The shutdown's stop has been taken (once); `shut`: hyper's graceful shutdown has been
    // asked for (once: by the stop, a hand-over or the idle close).
    let mut stopping = false;
    let mut shut = false;
    let mut handed = false;
    let idle = idle_h2(
        live_streams.as_ref().map(|l| l.subscribe()),
        in_flight.as_ref().map(|f| f.subscribe()),
        first_request_timeout,
    );
    tokio::pin!(idle);
    // After an HTTP/2 GOAWAY (idle, or shutdown): hyper ends the connection once the client
    // acknowledges its PING, and a client that never does (keep-alive off, or a client that
    // stopped reading) held it for good. It gets as long again, then the connection is
    // dropped.
    let mut goaway_unanswered: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut cut_by: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut unserved = Unserved {
        watch: &watch,
        armed: false,
    };
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    connection_failed(&watch, client, &e);
                }
                return;
            }
            _ = &mut deadline, if deadline_armed => {
                deadline_armed = false;
                if !watch.seen_request() {
                    // Counted before the connection is dropped, so the close the client
                    // sees comes after the count.
                    watch.refuse(HeadRefusal::Timeout, None);
                    if live_streams.is_some() && !shut {
                        // HTTP/2 that opened no stream (a browser's preconnect): GOAWAY
                        // first (RFC 9113 §6.8, as its idle close after a request sends),
                        // then the close, which over TLS carries our `close_notify`; a
                        // client that does not answer its PING gets a moment, then the drop.
                        shut = true;
                        connection.as_mut().graceful_shutdown();
                        goaway_unanswered = Some(Box::pin(tokio::time::sleep(CLOSE_NOTIFY_WAIT)));
                        continue;
                    }
                    return;
                }
            }
            () = cut.cancelled(), if cut_by.is_none() => {
                // The end of a shutdown's grace: a handshake still waiting on its backend is
                // answered 503 by its handler (`proxy::handle`), which hyper writes if given a
                // moment; whatever else the connection serves is dropped with it.
                cut_by = Some(Box::pin(tokio::time::sleep(CUT_ANSWER)));
            }
            () = async { cut_by.as_mut().expect("armed").await }, if cut_by.is_some() => return,
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                if live_streams.is_some() {
                    // HTTP/2: GOAWAY now, whatever is open on the connection. Its
                    // WebSockets go on to their closing handshakes (the session registry
                    // sends their 1001s, spread or not) and the connection ends with the
                    // last of them; meanwhile the client opens its next WebSocket on a new
                    // connection (another instance, or the successor of a binary upgrade)
                    // rather than on this one, where it would get the drain's 503.
                    // Not counted yet: a stream that crosses the GOAWAY is still served (its
                    // refusal counted on its route), so only a connection that ends with no
                    // request at all is the shutdown's (`unserved`).
                    unserved.armed = true;
                    if !shut {
                        shut = true;
                        connection.as_mut().graceful_shutdown();
                        // hyper ends the connection once the client acknowledges the
                        // GOAWAY's PING and its streams are done: a client that never
                        // answers gets as long as an idle connection's does.
                        goaway_unanswered = Some(Box::pin(tokio::time::sleep(first_request_timeout)));
                    }
                    continue;
                }
                if !watch.seen_request() {
                    // No request yet, or a head still arriving: nothing to finish. hyper
                    // would wait for the rest of the head (up to the handshake timeout), so
                    // the connection ends here.
                    watch.closed_by_shutdown();
                    if tls {
                        // Over TLS, not dropped: hyper reads end of file and closes the
                        // connection through its shutdown, which sends our `close_notify`
                        // first (RFC 8446 §6.1). A client that had begun its head gets no
                        // answer either way. Bounded, as a drop would be.
                        watch.end_reads();
                        deadline.as_mut().reset(Instant::now() + CLOSE_NOTIFY_WAIT);
                        deadline_armed = true;
                        continue;
                    }
                    return;
                }
                // Finish the request in flight, then close; an idle keep-alive connection
                // (a head after it still arriving included) closes now.
                if !shut {
                    shut = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = handed_over.cancelled(), if !handed && !shut && !stopping => {
                // A successor serves the listeners now (a binary upgrade): this connection
                // closes after what it is serving, so its client's next connection reaches
                // the successor. HTTP/2 gets GOAWAY now (a browser opened its next
                // WebSocket on it, into this process, until the drain began); an idle
                // keep-alive HTTP/1.1 connection closes now, one with a request in flight
                // after its answer. One that has not sent a request yet is left to send it
                // (the drain waits for its answer, `upgrade::drain_after_hand_over`, which
                // says `Connection: close`): hyper's graceful shutdown would close it at
                // once, unanswered.
                handed = true;
                if live_streams.is_some() || watch.seen_request() {
                    shut = true;
                    connection.as_mut().graceful_shutdown();
                }
                if live_streams.is_some() {
                    goaway_unanswered = Some(Box::pin(tokio::time::sleep(first_request_timeout)));
                }
            }
            () = &mut idle, if !shut => {
                // GOAWAY, as a keep-alive HTTP/1.1 connection is closed once idle for as
                // long (hyper's header read timeout). A client that pings (hyper answers)
                // but opens no stream would otherwise hold its descriptor for good.
                shut = true;
                tracing::debug!(%client, "idle HTTP/2 connection: GOAWAY");
                connection.as_mut().graceful_shutdown();
                goaway_unanswered = Some(Box::pin(tokio::time::sleep(first_request_timeout)));
            }
            () = async { goaway_unanswered.as_mut().expect("armed").await }, if goaway_unanswered.is_some() => {
                // A stream that crossed the GOAWAY (its client answered the PING, and hyper
                // serves it to its end) is not cut: look again later.
                let open = |n: Option<&Arc<tokio::sync::watch::Sender<usize>>>| {
                    n.is_some_and(|n| *n.borrow() > 0)
                };
                if open(live_streams.as_ref()) || open(in_flight.as_ref()) {
                    goaway_unanswered = Some(Box::pin(tokio::time::sleep(first_request_timeout)));
                    continue;
                }
                tracing::debug!(%client, "HTTP/2 connection: GOAWAY unanswered, closed");
                return;
            }
        }
    }
}

/// How long a connection gets, at the end of a shutdown's grace, to write the 503 its
/// waiting handshake is answered (into a socket buffer: at once) before it is dropped.
const CUT_ANSWER: Duration = Duration::from_millis(100);

/// How long a TLS connection closed by the shutdown before its first request gets to send
/// its `close_notify` (one record into an empty socket buffer: at once, unless the client's
/// window is full of session tickets it never read).
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// An HTTP/2 connection the shutdown has sent GOAWAY before any request (`armed`): counted as
/// closed by the shutdown when it ends (however it ends) if no request came after all.
struct Unserved<'a> {
    watch: &'a HeadWatch,
    armed: bool,
}

impl Drop for Unserved<'_> {
    fn drop(&mut self) {
        if self.armed && !self.watch.seen_request() {
            self.watch.closed_by_shutdown();
        }
    }
}

/// Resolves once an HTTP/2 connection that has served a request has had no stream open (no
/// request in flight, no WebSocket) for `after`; never on HTTP/1.1 (`None`s).
async fn idle_h2(
    streams: Option<tokio::sync::watch::Receiver<usize>>,
    flight: Option<tokio::sync::watch::Receiver<usize>>,
    after: Duration,
) {
    let (Some(mut streams), Some(mut flight)) = (streams, flight) else {
        return std::future::pending().await;
    };
    // Not before the first request: until then the connection's deadline applies.
    if flight.changed().await.is_err() {
        return std::future::pending().await;
    }
    loop {
        let busy = *streams.borrow_and_update() > 0 || *flight.borrow_and_update() > 0;
        let changed = async {
            // Each sender lives as long as the connection: an error is its end.
            if tokio::select! {
                r = streams.changed() => r.is_err(),
                r = flight.changed() => r.is_err(),
            } {
                std::future::pending::<()>().await;
            }
        };
        if busy {
            changed.await;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(after) => return,
            () = changed => {}
        }
    }
}

/// A response body that holds its HTTP/2 request's place in the connection's count of
/// requests in flight until it has been sent (or dropped).
struct Tracked {
    body: crate::http_proxy::Body,
    _flight: Option<proxy::StreamGuard>,
    /// HTTP/1.1: told when hyper is done with the body (`HeadWatch::response_done`).
    done: Option<Arc<HeadWatch>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(watch) = &self.done {
            watch.response_done();
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4) a prior-knowledge h2c client opens with.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The bytes a sniffing connection reads before hyper takes over: as many as one read
/// gives (a whole request head, usually), more only while they could still be the HTTP/2
/// preface. (hyper-util's sniff read exactly the preface's 24 bytes and then the rest of the
/// head: a second `recv`, and hyper's head buffer grown and copied, on every connection; the
/// connection is now served by hyper's own builders, `http.rs`, which do not sniff.)
const FIRST_READ: usize = 4096;

/// Which builder serves a connection.
#[derive(Clone)]
enum Serve {
    /// HTTP/1.1: a listener without HTTP/2, or a TLS client that agreed on `http/1.1` (or
    /// on nothing) by ALPN.
    Http1(Arc<http::Builder>),
    /// HTTP/2, agreed by ALPN: the connection must open with the preface, checked here so
    /// that anything else is refused and counted like the HTTP/2 preface on an HTTP/1.1
    /// connection (hyper's HTTP/2 would answer it with SETTINGS and close uncounted).
    Http2(Arc<http::Builder>),
    /// HTTP/1.1 or HTTP/2, as the first bytes say (a plain listener with HTTP/2 on).
    Sniff(Arc<http::Builder>, Arc<http::Builder>),
}

/// The connection's first bytes (see [`FIRST_READ`]), or `None` when it ends first: it
/// closed, its read failed, the first-request deadline passed (counted as a head timeout)
/// or the gateway is shutting down.
async fn opening<I: tokio::io::AsyncRead + Unpin>(
    io: &mut I,
    conn: &ConnInfo,
    watch: &HeadWatch,
    deadline: Instant,
    stop: &CancellationToken,
) -> Option<bytes::Bytes> {
    let first = tokio::select! {
        biased;
        _ = stop.cancelled() => {
            watch.closed_by_shutdown();
            return None;
        }
        r = tokio::time::timeout_at(deadline, first_bytes(io)) => r,
    };
    match first {
        Ok(Ok(pre)) => (!pre.is_empty()).then_some(pre),
        Ok(Err(e)) => {
            tracing::debug!(client = %conn.client, error = %e, "read failed before a request");
            None
        }
        Err(_) => {
            watch.refuse(HeadRefusal::Timeout, None);
            None
        }
    }
}

/// Reads the first bytes of a connection (see [`FIRST_READ`]); empty: it closed first.
async fn first_bytes<I: tokio::io::AsyncRead + Unpin>(io: &mut I) -> std::io::Result<bytes::Bytes> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(FIRST_READ);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(buf.freeze());
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf.len() >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
            return Ok(buf.freeze());
        }
    }
}

/// Counts a connection in `Listeners::awaiting_answer` from its accept until the answer to
/// its first request is ready (a WebSocket's session registered, its 101 on its way) or it
/// ends: a process that has handed its listeners to a successor waits for these before it
/// drains, so a connection it accepted just before is served, not reset or refused.
struct AwaitingAnswer {
    state: Arc<ProxyState>,
    done: std::sync::atomic::AtomicBool,
}

impl AwaitingAnswer {
    fn new(state: Arc<ProxyState>) -> Self {
        state
            .listeners
            .awaiting_answer
            .fetch_add(1, Ordering::Relaxed);
        AwaitingAnswer {
            state,
            done: Default::default(),
        }
    }

    fn done(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.state
                .listeners
                .awaiting_answer
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for AwaitingAnswer {
    fn drop(&mut self) {
        self.done();
    }
}

/// A connection ended with an error: a refused head is reported (once: the guard may have
/// reported it when it answered), anything else (the client left, a reset, an HTTP/2
/// protocol error) only at debug.
fn connection_failed(watch: &HeadWatch, client: SocketAddr, e: &hyper::Error) {
    match HeadRefusal::of_error(e, watch.idle_between_requests()) {
        Some(refusal) => watch.refuse(refusal, Some(e)),
        None => tracing::debug!(client = %client, error = %e, "connection ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failed accepts are logged the first time, then once per 10 s with the count between.
    #[tokio::test(start_paused = true)]
    async fn failed_accepts_are_logged_once_per_ten_seconds() {
        let mut errors = AcceptErrors::default();
        assert_eq!(errors.log_now(), Some(0));
        for _ in 0..99 {
            tokio::time::advance(ACCEPT_ERROR_BACKOFF).await;
            assert_eq!(errors.log_now(), None);
        }
        tokio::time::advance(ACCEPT_ERROR_BACKOFF).await;
        assert_eq!(errors.log_now(), Some(99));
        assert_eq!(errors.log_now(), None);
        // Accepting again: the one failure since the last line is said now, and the next
        // failure is logged at once.
        assert_eq!(errors.resumed(), Some(1));
        assert_eq!(errors.resumed(), None);
        assert_eq!(errors.log_now(), Some(0));
    }
}
