//! What a shutdown waits for: the sessions' closing handshakes and the requests in flight,
//! not connections that never sent a request. With a handshake timeout far longer than
//! [`STEP`], a shutdown that waited for those connections would fail these tests.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::tls::TestCa;
use crate::support::*;

/// Far longer than [`STEP`]: a connection held until its handshake timeout fails the test.
const HANDSHAKE_TIMEOUT: &str = "60s";
const HALF_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: web";

/// Reads until the peer closes, by `deadline`: what it sent, then how it closed (EOF, or
/// the error a reset gives).
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let read = tokio::time::timeout_at(deadline, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match read {
        Ok(how) => (got, how),
        Err(_) => panic!("the connection was still open when the deadline passed"),
    }
}

/// Opens `n` TCP connections to `addr` that send nothing.
async fn idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// Opens `n` connections that send the first part of a request head.
async fn half_heads(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = idle(addr, n).await;
    for s in &mut out {
        s.write_all(HALF_HEAD).await.unwrap();
    }
    out
}

/// A TLS client stalled in its handshake: it sent its ClientHello and got the server's first
/// flight (so the server has read the hello and waits for the client's Finished), and says
/// nothing more.
async fn stalled_tls(ca: &TestCa, addr: SocketAddr) -> TcpStream {
    let config = ca.connector().config().clone();
    let mut client =
        rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    let mut flight = [0u8; 4096];
    let n = tokio::time::timeout(STEP, tcp.read(&mut flight))
        .await
        .expect("no answer to the ClientHello")
        .unwrap();
    assert!(n > 0 && flight[0] == 0x16, "not a TLS handshake record");
    tcp
}

/// Waits until every connection opened to `addr` before this call has been accepted: the
/// kernel's accept queue is first in, first out, so once the gateway has answered this one
/// (a bad PROXY header, or a request without `Upgrade`), it has accepted all before it.
async fn accepted_all_before(addr: SocketAddr, request: &[u8]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let _ = closed_by(&mut s, Instant::now() + STEP).await;
}

#[tokio::test]
async fn shutdown_closes_connections_without_a_request_at_once_and_drains_sessions() {
    const IDLE: usize = 300;
    const HALF: usize = 20;
    const TLS_SILENT: usize = 3;
    const TLS_STALLED: usize = 3;
    const PROXY_SILENT: usize = 5;
    const SESSIONS: usize = 50;

    let ca = TestCa::new();
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[timeouts]\nhandshake = \"{HANDSHAKE_TIMEOUT}\"\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         {}",
        cert.display(),
        key.display(),
        route("r", "/", &[backend.url()])
    ))
    .await;
    let [plain, proxied, tls] = gw.handle().local_addrs() else {
        panic!("three listeners")
    };
    let (plain, proxied, tls) = (*plain, *proxied, *tls);

    let mut silent = idle(plain, IDLE).await;
    let mut halves = half_heads(plain, HALF).await;
    // The sessions' handshakes come after: once they are served, the connections before
    // them have been accepted.
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(connect(&gw.url("/")).await.0);
    }
    let mut proxy_silent = idle(proxied, PROXY_SILENT).await;
    accepted_all_before(proxied, b"GET / HTTP/1.1\r\n\r\n").await;
    let mut tls_silent = idle(tls, TLS_SILENT).await;
    let mut tls_stalled = Vec::new();
    for _ in 0..TLS_STALLED {
        tls_stalled.push(stalled_tls(&ca, tls).await);
    }
    assert_eq!(gw.handle().sessions().len(), SESSIONS);

    let handle = gw.handle.take().unwrap();
    let deadline = Instant::now() + STEP;
    handle.shutdown();
    // Each client answers the gateway's close frame (tungstenite does, while it reads), then
    // reads to the end.
    let clients: Vec<_> = sessions
        .drain(..)
        .map(|mut ws| {
            tokio::spawn(async move {
                let code = u16::from(next_close(&mut ws).await.code);
                while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, ws.next()).await {}
                code
            })
        })
        .collect();

    // Closed, without a word: never sent a request, or had not finished its head.
    for s in silent
        .iter_mut()
        .chain(&mut proxy_silent)
        .chain(&mut tls_silent)
    {
        let (got, how) = closed_by(s, deadline).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        how.expect("closed with a FIN, not a reset");
    }
    for s in &mut halves {
        // The gateway read the half head before closing, unless the shutdown came first
        // (then the unread bytes turn the close into a reset): closed, either way.
        let (got, _) = closed_by(s, deadline).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    for s in &mut tls_stalled {
        let (got, how) = closed_by(s, deadline).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        how.expect("closed with a FIN, not a reset");
    }
    // Counted as what they were: connections the shutdown closed before any request.
    let refusals = handle.refusals();
    let drained = refusals.get(&("-".to_string(), "draining")).copied();
    assert_eq!(
        drained,
        Some((IDLE + HALF + PROXY_SILENT + TLS_SILENT + TLS_STALLED) as u64),
        "{refusals:?}"
    );

    let report = tokio::time::timeout_at(deadline, handle.wait())
        .await
        .expect("the gateway did not stop within STEP of the shutdown");
    assert_eq!(report.sessions_ended, 0, "every session closed in time");
    for client in clients {
        assert_eq!(client.await.unwrap(), 1001);
    }
    let closes = backend.wait_closes(SESSIONS).await;
    assert!(
        closes
            .iter()
            .all(|c| c == &Some((1001, "going away".to_string()))),
        "{closes:?}"
    );
}

/// An idle keep-alive connection (between two requests) closes at once, and a keep-alive
/// connection that has started its next head is closed too.
#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    // Only the demo's static page is kept alive.
    let backend = wsgate::demo::start_echo_backend("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut config = wsgate::demo::config(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        backend,
        false,
    );
    config.admin = None;
    for l in &mut config.listeners {
        l.handshake_timeout = std::time::Duration::from_secs(60);
    }
    let handle = wsgate::Gateway::start(config).await.unwrap();
    let addr = handle.local_addr();
    let mut kept = Vec::new();
    for next in [&b""[..], HALF_HEAD] {
        let (mut s, page) = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert_eq!(page.status, 200);
        assert_ne!(page.header("connection").as_deref(), Some("close"));
        s.write_all(next).await.unwrap();
        kept.push(s);
    }
    let deadline = Instant::now() + STEP;
    handle.shutdown();
    for s in &mut kept {
        let (got, _) = closed_by(s, deadline).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    tokio::time::timeout_at(deadline, handle.wait())
        .await
        .expect("the gateway did not stop within STEP of the shutdown");
}

/// A TLS connection whose handshake is done but which has sent no request (a browser's
/// spare connection) is closed by the shutdown with our `close_notify` (RFC 8446 §6.1), as
/// every other TLS close is: it was dropped, and the client read a truncation. One that had
/// begun its head is closed too, unanswered. Both are counted as the shutdown's.
#[tokio::test]
async fn shutdown_closes_a_tls_connection_with_no_request_with_close_notify() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[timeouts]\nhandshake = \"{HANDSHAKE_TIMEOUT}\"\n{}{}",
        tls::tls_listener(&cert, &key, ""),
        route("r", "/", &[backend.url()])
    ))
    .await;
    let mut silent = tls::tls_connect(&ca, &gw, "localhost").await.0;
    let mut half = tls::tls_connect(&ca, &gw, "localhost").await.0;
    half.write_all(HALF_HEAD).await.unwrap();
    half.flush().await.unwrap();
    // Served in turn: once this one is answered, the two before it are being served.
    let (_ws, _) = tls::wss_upgrade(&gw, tls::tls_connect(&ca, &gw, "localhost").await.0).await;

    let handle = gw.handle.take().unwrap();
    let deadline = Instant::now() + STEP;
    handle.shutdown();
    for (what, s) in [("silent", &mut silent), ("half a head", &mut half)] {
        let mut got = Vec::new();
        let end = tokio::time::timeout_at(deadline, s.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open at the deadline"));
        assert!(
            got.is_empty(),
            "{what}: {:?}",
            String::from_utf8_lossy(&got)
        );
        end.unwrap_or_else(|e| panic!("{what}: closed without close_notify: {e}"));
    }
    let refusals = handle.refusals();
    assert_eq!(
        refusals.get(&("-".to_string(), "draining")).copied(),
        Some(2),
        "{refusals:?}"
    );
}

/// The same for a TLS connection that agreed on `h2` by ALPN (as a browser's spare
/// connection does) and has not sent its preface yet: it was dropped, no `close_notify`.
/// (Found by review.)
#[tokio::test]
async fn shutdown_closes_a_silent_alpn_h2_tls_connection_with_close_notify() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[timeouts]\nhandshake = \"{HANDSHAKE_TIMEOUT}\"\n{}{}",
        tls::tls_listener(&cert, &key, ""),
        route("r", "/", &[backend.url()])
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut silent = ca
        .connector_alpn(&[b"h2"])
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // Served in turn, as in the test above: once a later connection is served, this one's
    // handshake is done (its client's Finished came first, on the same runtime).
    let (_ws, _) = tls::wss_upgrade(&gw, tls::tls_connect(&ca, &gw, "localhost").await.0).await;

    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    let mut got = Vec::new();
    let end = tokio::time::timeout(STEP, silent.read_to_end(&mut got))
        .await
        .expect("still open at the deadline");
    assert!(got.is_empty(), "{got:?}");
    end.unwrap_or_else(|e| panic!("closed without close_notify: {e}"));
}

/// A refused upgrade's lingering close (our FIN, then the client's bytes read until it
/// closes) is one of the connections a shutdown waits for, and is cut at the end of its
/// grace: it ran outside them, so a process's end dropped the socket under a client that
/// had not read its refusal yet, and a shutdown's end left it lingering on.
#[tokio::test]
async fn a_refused_upgrades_lingering_close_is_cut_with_the_shutdown() {
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[shutdown]\ngrace = \"1s\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
        route("r", "/ws", &[backend.url()])
    ))
    .await;
    let request = upgrade_request("/elsewhere", "");
    let (mut s, refused) = raw_exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(refused.status, 404);
    // The client holds its socket: the gateway lingers, reading what it sends.
    s.write_all(b"more").await.unwrap();

    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    tokio::time::timeout(STEP, handle.wait())
        .await
        .expect("the gateway did not stop within STEP of the shutdown");
    // Done with: the socket is closed, so the next bytes are refused with a reset (they
    // were read and dropped by a linger still running).
    let reset = tokio::time::timeout(STEP, async {
        loop {
            if let Err(e) = s.write_all(b"x").await {
                return e;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the lingering close outlived the shutdown");
    assert!(
        matches!(
            reset.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ),
        "{reset}"
    );
}

/// The binary: SIGTERM with connections that never sent a request (plain, half a head, TLS
/// not started) and an idle admin connection; it exits promptly, not after the handshake
/// timeout. The TLS listener's certificate watcher and the admin listener do not hold it.
#[tokio::test]
async fn sigterm_with_idle_connections_exits_promptly() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("shutdown-bin");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[timeouts]\nhandshake = \"{HANDSHAKE_TIMEOUT}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listener]]\nlisten = \"127.0.0.1:0\"\n\
             [[listener]]\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             watch_interval = \"1s\"\n{}",
            cert.display(),
            key.display(),
            route("r", "/", &[backend.url()])
        ),
    );
    let mut child = spawn_binary(&config, "json", "info");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let mut listening = Vec::new();
    let mut admin = None;
    tokio::time::timeout(STEP, async {
        while listening.len() < 2 || admin.is_none() {
            let line = lines.next_line().await.unwrap().expect("wsgate exited");
            let record: serde_json::Value = serde_json::from_str(&line).unwrap();
            let field = |name: &str| record.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            if line.contains("\"listening\"") {
                listening.push(field("listen").unwrap().parse::<SocketAddr>().unwrap());
            } else if line.contains("\"admin listener\"") {
                admin = Some(field("admin").unwrap().parse::<SocketAddr>().unwrap());
            }
            log.push(line);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("wsgate did not start; log:\n{}", log.join("\n")));
    let (plain, tls, admin) = (listening[0], listening[1], admin.unwrap());

    let mut held = idle(plain, 50).await;
    held.extend(half_heads(plain, 5).await);
    held.extend(idle(tls, 3).await);
    held.push(stalled_tls(&ca, tls).await);
    held.extend(idle(admin, 1).await);
    accepted_all_before(plain, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (mut ws, _) = connect(&format!("ws://{plain}/")).await;

    send_signal(&child, "TERM");
    let deadline = Instant::now() + STEP;
    assert_eq!(u16::from(next_close(&mut ws).await.code), 1001);
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, ws.next()).await {}
    // The closing handshake ends with the client's FIN.
    drop(ws);
    // The log is read on, so that wsgate never blocks on a full pipe.
    let logged = Arc::new(std::sync::Mutex::new(log));
    let reader = {
        let logged = logged.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                logged.lock().unwrap().push(line);
            }
        })
    };
    let status = tokio::time::timeout_at(deadline, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "wsgate still running STEP after SIGTERM; log:\n{}",
                logged.lock().unwrap().join("\n")
            )
        })
        .unwrap();
    let _ = reader.await;
    let log = logged.lock().unwrap().join("\n");
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(
        log.contains("\"cut\":false"),
        "the session was not cut: {log}"
    );
    for s in &mut held {
        let _ = closed_by(s, Instant::now() + STEP).await;
    }
}

/// With `[shutdown] close_spread`, the 1001s go out over the window, each session at its own
/// moment, not in one burst: the clients' reconnects are spread the same way.
#[tokio::test]
async fn close_spread_spreads_the_shutdown_close_frames() {
    const N: usize = 40;
    let echo = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[shutdown]\nclose_spread = \"1500ms\"\n\n{}",
        route("chat", "/chat", &[echo.url()])
    ))
    .await;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(connect(&gw.url("/chat")).await.0);
    }
    let started = Instant::now();
    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    // Each client answers its close frame and notes when it came.
    let arrivals = futures_util::future::join_all(clients.into_iter().map(|mut ws| async move {
        let close = next_close(&mut ws).await;
        let at = started.elapsed();
        let _ = ws.close(None).await;
        (u16::from(close.code), close.reason.to_string(), at)
    }))
    .await;
    for (code, reason, _) in &arrivals {
        assert_eq!((*code, reason.as_str()), (1001, "going away"));
    }
    let first = arrivals.iter().map(|a| a.2).min().unwrap();
    let last = arrivals.iter().map(|a| a.2).max().unwrap();
    // 40 moments drawn uniformly from 1.5 s all falling within 0.5 s has a probability
    // below 1e-17: a burst fails this, a spread passes.
    assert!(
        last - first >= std::time::Duration::from_millis(500),
        "close frames not spread: first at {first:?}, last at {last:?}"
    );
    let report = tokio::time::timeout(STEP, handle.wait()).await.unwrap();
    assert_eq!(report.sessions_ended, 0);
}

/// With `[shutdown] unready_delay`, a shutdown first only turns `/readyz` to 503: for the
/// delay, new sessions are still admitted (a load balancer polling readiness has not yet
/// taken this instance out), then the sessions get 1001 and the process stops. The
/// shutdown shows from its first moment: `wsgate_draining` is 1, and a reload gets 503.
#[tokio::test]
async fn the_unready_delay_keeps_serving_while_readyz_says_503() {
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[shutdown]\nunready_delay = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let admin = gw.handle().admin_addr().unwrap();
    let readyz = |admin: SocketAddr| async move {
        let request = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        raw_exchange(admin, request).await.1.status
    };
    assert_eq!(readyz(admin).await, 200);
    let (mut before, _) = connect(&gw.url("/")).await;
    let started = Instant::now();
    gw.handle().shutdown();
    assert_eq!(readyz(admin).await, 503);
    assert_eq!(scrape(admin).await.value("wsgate_draining", &[]), 1.0);
    let reload = admin_request(
        admin,
        "POST",
        "/api/reload",
        "Content-Type: application/json\r\n",
        "{}",
    )
    .await;
    assert_eq!(reload.status, 503, "{reload:?}");
    // Still admitted while the delay runs.
    let (mut during, _) = connect(&gw.url("/")).await;
    for ws in [&mut before, &mut during] {
        assert_eq!(u16::from(next_close(ws).await.code), 1001);
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "the 1001s came before the unready delay was over"
    );
    drop((before, during));
    let handle = gw.handle.take().unwrap();
    tokio::time::timeout(STEP, handle.wait()).await.unwrap();
}

/// A shutdown closes the listening sockets at once: while its sessions drain, a new client
/// is refused by the kernel rather than left in an accept queue that nobody reads (where it
/// would wait, its handshake unanswered, until the process exits and resets it). The admin
/// listener stays for the drain, and a reload is refused (503) instead of binding listeners
/// nobody would serve.
#[tokio::test]
async fn a_shutdown_closes_the_listeners_while_sessions_drain() {
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[shutdown]\ngrace = \"60s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let addr = gw.handle().local_addr();
    let admin = gw.handle().admin_addr().unwrap();
    // A session whose client does not read: its closing handshake keeps the drain going.
    let (ws, _) = connect(&gw.url("/")).await;
    gw.handle().shutdown();
    let deadline = Instant::now() + STEP;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
            // Queued as the socket closed: reset.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("connect failed otherwise: {e}"),
            // Accepted before the close reached the socket: it is closed or reset unserved.
            Ok(mut s) => {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
                let (_, _) = closed_by(&mut s, deadline).await;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the listener still accepted connections during the drain"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(gw.handle().sessions().len(), 1, "the drain goes on");
    let (_, resp) = raw_exchange(
        admin,
        b"POST /api/reload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert_eq!(resp.status, 503, "{resp:?}");
    drop(ws);
    let handle = gw.handle.take().unwrap();
    tokio::time::timeout(STEP, handle.wait()).await.unwrap();
}

/// A client that answers the proxy's close frame (here a 1011: its backend went away, so
/// the close and the FIN came at once) but keeps its socket open after the FIN (RFC 6455
/// §7.1.1 lets it close when it likes) does not hold its session, nor a drain: its closing
/// handshake is over with its answer. It was read to its EOF, so a shutdown waited out its
/// grace (here shorter than the closing handshake's 5 s) and cut it.
#[tokio::test]
async fn a_client_that_answered_the_proxys_close_but_keeps_its_socket_holds_nothing() {
    let backend = one_session_backend(|s| async move { drop(s) }).await;
    let mut gw = Gateway::spawn(&format!(
        "[shutdown]\ngrace = \"3s\"\n\n{}",
        route("r", "/", &[format!("ws://{backend}")])
    ))
    .await;
    let (mut stream, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let (frames, code, _) = frames_until_close(&mut stream, resp.rest).await.unwrap();
    assert_eq!((frames.len(), code), (0, 1011));
    // The proxy's FIN came with its close frame.
    assert!(read_until_closed(&mut stream).await.is_empty());
    stream
        .write_all(&client_frame(
            wsgate::frame::opcode::CLOSE,
            &1011u16.to_be_bytes(),
        ))
        .await
        .unwrap();
    // The client keeps its end open until the shutdown is over.
    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    let report = tokio::time::timeout(STEP, handle.wait())
        .await
        .expect("the gateway did not stop");
    assert_eq!(report.sessions_ended, 0, "the answered session was cut");
    drop(stream);
}
