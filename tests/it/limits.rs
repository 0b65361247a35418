//! Admission limits (`[limits]` and a route's own): session caps in all and per client
//! address, the handshake rate per address, the file descriptor reserve. Each refusal has
//! its status, `Retry-After` where it means something, a one-line reason and a count.
//!
//! Clients come from two loopback addresses (127.0.0.1 and 127.0.0.2, the client socket
//! bound before it connects), or from the address a trusted proxy names.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const ONE: [u8; 4] = [127, 0, 0, 1];
const TWO: [u8; 4] = [127, 0, 0, 2];
const THREE: [u8; 4] = [127, 0, 0, 3];

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// A WebSocket through the gateway from the loopback address `from`.
async fn open_from(from: [u8; 4], gw: &Gateway, path: &str) -> Ws {
    let stream = connect_from(from, gw.addr).await;
    let (ws, resp) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::client_async_with_config(gw.url(path), stream, Some(ws_config())),
    )
    .await
    .expect("handshake timed out")
    .unwrap_or_else(|e| panic!("handshake from {from:?} to {path} failed: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// An upgrade request for `path` from `from` with `extra` header lines, and its answer.
async fn attempt_from(from: [u8; 4], gw: SocketAddr, path: &str, extra: &str) -> RawResponse {
    exchange_from(from, gw, path, extra).await.1
}

/// [`attempt_from`], keeping the connection (after a 101, the session) open.
async fn exchange_from(
    from: [u8; 4],
    gw: SocketAddr,
    path: &str,
    extra: &str,
) -> (TcpStream, RawResponse) {
    let mut stream = connect_from(from, gw).await;
    stream
        .write_all(upgrade_request(path, extra).as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut stream).await;
    (stream, resp)
}

/// The session still relays: a message comes back.
async fn echoes(ws: &mut Ws) {
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(ws).await, Message::text("still here"));
}

/// A refusal with `status`, a one-line reason that mentions `reason`, and (when given) a
/// `Retry-After` in whole seconds within `retry_after`.
fn assert_refused(
    resp: &RawResponse,
    status: u16,
    reason: &str,
    retry_after: Option<std::ops::RangeInclusive<u64>>,
) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.body.lines().count(), 1, "{resp:?}");
    assert!(resp.body.contains(reason), "{resp:?}");
    let header = resp.header("retry-after");
    match retry_after {
        Some(range) => {
            let secs: u64 = header
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no Retry-After in whole seconds: {resp:?}"));
            assert!(range.contains(&secs), "Retry-After {secs}: {resp:?}");
        }
        None => assert_eq!(header, None, "{resp:?}"),
    }
}

#[tokio::test]
async fn the_next_session_from_one_address_gets_429_while_another_address_is_served() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[limits]\nmax_sessions_per_ip = 2\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let mut first = open_from(ONE, &gw, "/").await;
    let _second = open_from(ONE, &gw, "/").await;
    let third = attempt_from(ONE, gw.addr, "/", "").await;
    assert_refused(&third, 429, "max_sessions_per_ip", None);
    // Another address has its own count; the first address's sessions go on.
    let mut other = open_from(TWO, &gw, "/").await;
    echoes(&mut other).await;
    echoes(&mut first).await;
    // A session that ends gives its place back.
    first.close(None).await.unwrap();
    gw.handle().sessions().wait_for_count(|n| *n == 2).await;
    let mut again = open_from(ONE, &gw, "/").await;
    echoes(&mut again).await;
    // Nothing refused reached the backend.
    assert_eq!(backend.request_count(), 4);
}

#[tokio::test]
async fn the_global_cap_answers_503_with_retry_after_until_a_session_ends() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[limits]\nmax_sessions = 2\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let mut a = open_from(ONE, &gw, "/").await;
    let _b = open_from(TWO, &gw, "/").await;
    for from in [ONE, TWO] {
        let resp = attempt_from(from, gw.addr, "/", "").await;
        // When a place frees up is unknowable: a hint of a few seconds, spread at random.
        assert_refused(&resp, 503, "max_sessions", Some(1..=5));
        assert_eq!(resp.header("connection").as_deref(), Some("close"));
    }
    a.close(None).await.unwrap();
    gw.handle().sessions().wait_for_count(|n| *n == 1).await;
    let mut c = open_from(ONE, &gw, "/").await;
    echoes(&mut c).await;
    assert_eq!(backend.request_count(), 3);
}

/// A backend that reads each upgrade request and answers 101 only once `release` says so,
/// then holds the connection; it counts the connections it got.
async fn gated_backend(
    release: tokio::sync::watch::Receiver<bool>,
) -> (SocketAddr, tokio::sync::watch::Receiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (count, connections) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.send_modify(|n| *n += 1);
            let mut release = release.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream);
                let mut key = String::new();
                let mut line = String::new();
                while lines.read_line(&mut line).await.unwrap_or(0) > 2 {
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("sec-websocket-key")
                    {
                        key = value.trim().to_string();
                    }
                    line.clear();
                }
                let _ = release.wait_for(|go| *go).await;
                let accept = wsgate::handshake::accept_key(key.as_bytes());
                let mut stream = lines.into_inner();
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let mut sink = [0u8; 1024];
                while matches!(tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await, Ok(n) if n > 0)
                {
                }
            });
        }
    });
    (addr, connections)
}

/// Sessions count from admission, not from the backend's answer: while five handshakes wait
/// for their backend, fifteen more are refused, and none of those reaches the backend.
#[tokio::test]
async fn concurrent_handshakes_cannot_overshoot_the_cap() {
    let (release, gate) = tokio::sync::watch::channel(false);
    let (backend, mut connections) = gated_backend(gate).await;
    let gw = Gateway::spawn(&format!(
        "[limits]\nmax_sessions = 5\n{}",
        route("r", "/", &[format!("ws://{backend}")])
    ))
    .await;
    let mut pending: futures_util::stream::FuturesUnordered<_> = (0..20)
        .map(|_| exchange_from(ONE, gw.addr, "/", ""))
        .collect();
    let mut refused = 0;
    while refused < 15 {
        let (_, resp) = tokio::time::timeout(STEP, pending.next())
            .await
            .expect("fewer than 15 refusals while five handshakes wait")
            .unwrap();
        assert_refused(&resp, 503, "max_sessions", Some(1..=5));
        refused += 1;
    }
    // The five admitted reach the backend, which holds them.
    tokio::time::timeout(STEP, connections.wait_for(|n| *n >= 5))
        .await
        .expect("the admitted handshakes never reached the backend")
        .unwrap();
    release.send_replace(true);
    let mut sessions = Vec::new();
    while let Some((stream, resp)) = tokio::time::timeout(STEP, pending.next())
        .await
        .expect("the admitted handshakes did not finish")
    {
        assert_eq!(resp.status, 101, "{resp:?}");
        sessions.push(stream);
    }
    assert_eq!(sessions.len(), 5);
    assert_eq!(*connections.borrow(), 5);
}

#[tokio::test]
async fn a_route_cap_only_affects_its_route() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}max_sessions = 2\nmax_sessions_per_ip = 1\n{}",
        route("capped", "/capped", &[backend.url()]),
        route("open", "/open", &[backend.url()])
    ))
    .await;
    let _held = open_from(ONE, &gw, "/capped").await;
    // The route's per-address cap, then its total.
    let same = attempt_from(ONE, gw.addr, "/capped", "").await;
    assert_refused(&same, 429, "route max_sessions_per_ip", None);
    let _other = open_from(TWO, &gw, "/capped").await;
    let third = attempt_from(THREE, gw.addr, "/capped", "").await;
    assert_refused(
        &third,
        503,
        "this route is at its limit of 2 sessions (max_sessions)",
        Some(1..=5),
    );
    // The other route counts nothing of it.
    let mut x = open_from(ONE, &gw, "/open").await;
    let mut y = open_from(ONE, &gw, "/open").await;
    echoes(&mut x).await;
    echoes(&mut y).await;
    let refusals = gw.handle().refusals();
    assert_eq!(
        refusals.get(&("capped".to_string(), "max_sessions_per_ip")),
        Some(&1)
    );
    assert_eq!(
        refusals.get(&("capped".to_string(), "route_max_sessions")),
        Some(&1)
    );
    assert!(!refusals.keys().any(|(r, _)| r == "open"), "{refusals:?}");
}

#[tokio::test]
async fn the_handshake_bucket_refills_at_its_rate() {
    let backend = EchoBackend::spawn().await;
    // One handshake every two seconds per address, three at once.
    let gw = Gateway::spawn(&format!(
        "[limits]\nhandshake_rate_per_ip = \"30/m\"\nhandshake_burst = 3\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(open_from(ONE, &gw, "/").await);
    }
    let refused = attempt_from(ONE, gw.addr, "/", "").await;
    let refused_at = Instant::now();
    // The next handshake is due in (at most) two seconds: the bucket's own answer.
    assert_refused(&refused, 429, "handshake_rate_per_ip", Some(1..=2));
    // Another address has a bucket of its own.
    open.push(open_from(TWO, &gw, "/").await);
    // One handshake's worth comes back after about two seconds: poll until it is there.
    let refilled = tokio::time::timeout(STEP, async {
        loop {
            let resp = attempt_from(ONE, gw.addr, "/", "").await;
            if resp.status == 101 {
                return refused_at.elapsed();
            }
            assert_eq!(resp.status, 429, "{resp:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the bucket never refilled");
    assert!(
        refilled >= Duration::from_secs(1) && refilled < Duration::from_secs(5),
        "refilled after {refilled:?}"
    );
    // Only one: the next is refused again, until two seconds after the last.
    let resp = attempt_from(ONE, gw.addr, "/", "").await;
    assert_refused(&resp, 429, "handshake_rate_per_ip", Some(1..=2));
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_counted() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [limits]\nmax_sessions_per_ip = 1\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let mut held = Vec::new();
    // Sessions stay open (their sockets held) while later handshakes are counted.
    let mut attempt = async |from: [u8; 4], client: &str| {
        let header = format!("X-Forwarded-For: {client}\r\n");
        let (stream, resp) = exchange_from(from, gw.addr, "/", &header).await;
        held.push(stream);
        resp
    };
    // Two clients behind one proxy address: each has its own count.
    assert_eq!(attempt(ONE, "203.0.113.5").await.status, 101);
    assert_eq!(attempt(ONE, "203.0.113.6").await.status, 101);
    let again = attempt(ONE, "203.0.113.5").await;
    assert_refused(&again, 429, "max_sessions_per_ip", None);
    // IPv6 clients are counted by their /64.
    assert_eq!(attempt(ONE, "2001:db8:1:2::1").await.status, 101);
    let same_64 = attempt(ONE, "2001:db8:1:2:ffff::9").await;
    assert_refused(&same_64, 429, "max_sessions_per_ip", None);
    assert_eq!(attempt(ONE, "2001:db8:1:3::1").await.status, 101);
    // An untrusted peer's header is not believed: 127.0.0.2 is one client, whatever it says.
    assert_eq!(attempt(TWO, "198.51.100.1").await.status, 101);
    let untrusted = attempt(TWO, "198.51.100.2").await;
    assert_refused(&untrusted, 429, "max_sessions_per_ip", None);
}

#[tokio::test]
async fn every_refusal_reason_is_counted_and_the_limits_are_exported() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [limits]\nmax_sessions = 3\nmax_sessions_per_ip = 2\n{}\
         max_sessions = 1\n{}handshake_rate_per_ip = \"1/h\"\nhandshake_burst = 1\n{}",
        route("one", "/one", &[backend.url()]),
        route("slow", "/slow", &[backend.url()]),
        route("free", "/free", &[backend.url()]),
    ))
    .await;
    let admin = gw.handle().admin_addr().unwrap();
    // "one" holds its one session.
    let _one = open_from(ONE, &gw, "/one").await;
    let full_route = attempt_from(TWO, gw.addr, "/one", "").await;
    assert_refused(
        &full_route,
        503,
        "this route is at its limit of 1 session (max_sessions)",
        Some(1..=5),
    );
    // 127.0.0.1 then holds two sessions: the process's per-address cap.
    let _slow = open_from(ONE, &gw, "/slow").await;
    let per_ip = attempt_from(ONE, gw.addr, "/free", "").await;
    assert_refused(&per_ip, 429, "[limits] max_sessions_per_ip", None);
    // 127.0.0.2 has used its one handshake an hour on "slow": the next one is due in an hour.
    let _slow2 = open_from(TWO, &gw, "/slow").await;
    let rated = attempt_from(TWO, gw.addr, "/slow", "").await;
    assert_refused(
        &rated,
        429,
        "route handshake_rate_per_ip",
        Some(3590..=3600),
    );
    // Three sessions in all: the process's cap, whatever the route.
    let full = attempt_from(THREE, gw.addr, "/free", "").await;
    assert_refused(&full, 503, "gateway is at its limit of 3", Some(1..=5));

    let m = scrape(admin).await;
    let refused = |route: &str, outcome: &str, status: &str| {
        m.value(
            "wsgate_handshakes_refused_total",
            &[("route", route), ("outcome", outcome), ("status", status)],
        )
    };
    assert_eq!(refused("one", "route_max_sessions", "503"), 1.0);
    assert_eq!(refused("free", "max_sessions_per_ip", "429"), 1.0);
    assert_eq!(refused("slow", "handshake_rate", "429"), 1.0);
    assert_eq!(refused("free", "max_sessions", "503"), 1.0);
    let admitted = |route: &str| m.value("wsgate_sessions_admitted", &[("route", route)]);
    assert_eq!(
        [
            admitted("-"),
            admitted("one"),
            admitted("slow"),
            admitted("free")
        ],
        [3.0, 1.0, 2.0, 0.0]
    );
    assert_eq!(m.value("wsgate_sessions_limit", &[("route", "-")]), 3.0);
    assert_eq!(m.value("wsgate_sessions_limit", &[("route", "one")]), 1.0);
    assert_eq!(
        m.value("wsgate_handshake_rate_clients", &[("route", "slow")]),
        2.0
    );
    assert!(m.value("wsgate_fd_limit", &[]) > 0.0);
    assert!(m.value("wsgate_fd_reserve", &[]) >= 64.0);
}

/// The binary under a descriptor limit of `limit` (soft and hard), with one route to
/// `backend` and an admin listener: the child, its proxy address and its admin address,
/// once it said at start what its limit and reserve are (checked against `limit` and 64).
async fn limited_gateway(
    backend: &str,
    limit: u64,
) -> (tokio::process::Child, SocketAddr, SocketAddr, TempDir) {
    limited_gateway_with(backend, limit, None).await
}

/// The config of [`limited_gateway`], with `[limits] fd_reserve = N` when given.
fn limited_config(backend: &str, fd_reserve: Option<u64>) -> String {
    let limits = fd_reserve.map_or(String::new(), |n| format!("[limits]\nfd_reserve = {n}\n"));
    format!(
        "{limits}[[listener]]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        route("r", "/", &[backend.to_string()])
    )
}

/// [`limited_gateway`] with `fd_reserve` set (64 by default for a limit of 256); its config
/// is `wsgate.toml` in the returned directory.
async fn limited_gateway_with(
    backend: &str,
    limit: u64,
    fd_reserve: Option<u64>,
) -> (tokio::process::Child, SocketAddr, SocketAddr, TempDir) {
    let dir = TempDir::new("limits-fd");
    let config = dir.join("wsgate.toml");
    std::fs::write(&config, limited_config(backend, fd_reserve)).unwrap();
    let mut cmd = binary_command(&config, "json", "info");
    // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let limit_line = wait_line(&mut lines, &mut seen, "the descriptor limit", |l| {
        l.contains("file descriptor limit")
    })
    .await;
    let reserve = fd_reserve.unwrap_or(64);
    assert!(
        limit_line.contains(&format!("\"limit\":{limit}"))
            && limit_line.contains(&format!("\"fd_reserve\":{reserve}")),
        "{limit_line}"
    );
    let addr = address_in(
        &wait_line(&mut lines, &mut seen, "listening", |l| {
            l.contains("\"listening\"")
        })
        .await,
        "listen",
    );
    let admin = address_in(
        &wait_line(&mut lines, &mut seen, "admin listener", |l| {
            l.contains("\"admin listener\"")
        })
        .await,
        "admin",
    );
    // The log goes on being read, so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr, admin, dir)
}

/// The binary under a descriptor limit of 256 (soft and hard): it says so at start, and
/// once sessions bring it within the reserve (64 by default) of the limit, new handshakes
/// get 503 `fd_reserve` while `/healthz` on the admin listener answers and the sessions
/// already open still echo.
#[tokio::test]
async fn at_its_descriptor_limit_wsgate_refuses_new_sessions_and_keeps_serving() {
    const LIMIT: u64 = 256;
    let backend = EchoBackend::spawn().await;
    let (child, addr, admin, _dir) = limited_gateway(&backend.url(), LIMIT).await;

    // Two descriptors a session (client and backend sockets): the reserve is met well
    // before LIMIT / 2 sessions.
    let mut open = Vec::new();
    let refusal = loop {
        assert!(
            open.len() < LIMIT as usize / 2,
            "no refusal after {} sessions",
            open.len()
        );
        let mut stream = connect_from(ONE, addr).await;
        stream
            .write_all(upgrade_request("/", "").as_bytes())
            .await
            .unwrap();
        let resp = read_response(&mut stream).await;
        if resp.status != 101 {
            break resp;
        }
        open.push(
            tokio_tungstenite::WebSocketStream::from_raw_socket(
                stream,
                tokio_tungstenite::tungstenite::protocol::Role::Client,
                Some(ws_config()),
            )
            .await,
        );
    };
    assert_refused(&refusal, 503, "file descriptor limit", Some(1..=5));
    // Within the reserve: about (256 - 64 - what the process holds anyway) / 2 sessions.
    assert!(
        open.len() >= 60,
        "refused after only {} sessions",
        open.len()
    );
    // The admin listener still has descriptors.
    let (_, health) = raw_exchange(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let m = scrape(admin).await;
    assert_eq!(m.value("wsgate_fd_limit", &[]), LIMIT as f64);
    assert_eq!(m.value("wsgate_fd_reserve", &[]), 64.0);
    assert_eq!(
        m.value(
            "wsgate_handshakes_refused_total",
            &[("route", "r"), ("outcome", "fd_reserve"), ("status", "503")]
        ),
        1.0
    );
    // The sessions already open go on, first and last.
    let last = open.len() - 1;
    echoes(&mut open[0]).await;
    echoes(&mut open[last]).await;
    // Sessions that end make room again.
    for mut ws in open.drain(..8) {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let served = tokio::time::timeout(STEP, async {
        loop {
            let resp = attempt_from(ONE, addr, "/", "").await;
            if resp.status == 101 {
                return;
            }
            assert_eq!(resp.status, 503, "{resp:?}");
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(served.is_ok(), "no room after 8 sessions ended");
    drop(child);
}

/// The address in a JSON log line's `field`.
fn address_in(line: &str, field: &str) -> SocketAddr {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let text = v
        .get(field)
        .or_else(|| v.get("fields").and_then(|f| f.get(field)))
        .and_then(|a| a.as_str())
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    text.parse().unwrap()
}

/// Connections that never send a request cannot take the reserve: deep in it (half the
/// reserve from the limit) a connection is closed as soon as it is accepted, so with 250
/// such connections open against a limit of 256, `/healthz` on the admin listener still
/// answers, and the connections closed unserved are counted as `fd_reserve` refusals.
#[tokio::test]
async fn idle_connections_do_not_take_the_descriptor_reserve() {
    const LIMIT: u64 = 256;
    let backend = EchoBackend::spawn().await;
    let (child, addr, admin, _dir) = limited_gateway(&backend.url(), LIMIT).await;
    idle_connections_leave_the_reserve(addr, admin).await;
    drop(child);
}

/// The same with the reserve set by a reload (from none at all): the accept's check takes the
/// new reserve, as the handshakes' does. It kept the one its listener started with, so the
/// idle connections took every descriptor and the admin listener could not accept.
#[tokio::test]
async fn a_reloaded_descriptor_reserve_holds_at_accept_too() {
    const LIMIT: u64 = 256;
    let backend = EchoBackend::spawn().await;
    let (child, addr, admin, dir) = limited_gateway_with(&backend.url(), LIMIT, Some(0)).await;
    std::fs::write(
        dir.join("wsgate.toml"),
        limited_config(&backend.url(), Some(128)),
    )
    .unwrap();
    let reloaded = admin_request(
        admin,
        "POST",
        "/api/reload",
        "Content-Type: application/json\r\n",
        "",
    )
    .await;
    assert_eq!(reloaded.status, 200, "{reloaded:?}");
    assert_eq!(scrape(admin).await.value("wsgate_fd_reserve", &[]), 128.0);
    idle_connections_leave_the_reserve(addr, admin).await;
    drop(child);
}

/// Opens 250 connections that send nothing, then `/healthz` on `admin` must answer and some
/// of them must have been closed at accept for the reserve.
async fn idle_connections_leave_the_reserve(addr: SocketAddr, admin: SocketAddr) {
    let mut idle = Vec::new();
    for _ in 0..250 {
        // The kernel completes the connect whether or not the gateway keeps it.
        if let Ok(s) = TcpStream::connect(addr).await {
            idle.push(s);
        }
    }
    // Every connect so far is accepted (or closed) before this exchange's is: the accept
    // queue is first in, first out.
    let (_, health) = raw_exchange(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let closed = tokio::time::timeout(STEP, async {
        loop {
            let m = scrape(admin).await;
            let n = m.value(
                "wsgate_handshakes_refused_total",
                &[
                    ("route", "-"),
                    ("outcome", "fd_reserve"),
                    ("status", "none"),
                ],
            );
            if n > 0.0 {
                return n;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(closed.is_ok(), "no connection closed for the reserve");
    drop(idle);
}
