//! Hibernation with real peers: a quiet session gives up its task and its sockets' runtime
//! registrations (the admin listener's `wsgate_sessions_hibernating` counts it), and input
//! from either side, a close, a due timer (pings, pong deadlines, the idle timeout) or a
//! signal (a shutdown, an operator's close, a backend drain) wakes it where it stopped, TLS
//! legs with their TLS state. WebSockets over HTTP/2 never hibernate, nor does a route with
//! `hibernate_after = "off"`.
//!
//! No sleep here stands in for a condition: a test that waits for hibernation scrapes the
//! gauge until it reads what it expects, within [`HIBERNATION_WAIT`]. The two tests that
//! assert an absence (the gauge does not rise) scrape it for a bounded window and say why
//! that window is long enough.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::tls::*;
use crate::support::*;

/// How long a test waits for the gauge to read what it expects: many times any
/// `hibernate_after` here (at most 300 ms) plus the second a session may stay awake after
/// it wakes (`Relay::woke` rounds up to the next whole second).
const HIBERNATION_WAIT: Duration = Duration::from_secs(5);

/// The pause between two scrapes while polling the gauge.
const POLL: Duration = Duration::from_millis(10);

/// The gateway from `toml` with an `[admin]` listener on a free loopback port, and that
/// port's address (for `/metrics` and the session API).
async fn spawn_admin(toml: &str) -> (Gateway, SocketAddr) {
    let gw = Gateway::spawn(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{toml}")).await;
    let admin = gw.handle().admin_addr().expect("admin listener bound");
    (gw, admin)
}

/// A route `name` at `path` to `backend`, with `timeouts` as its `[route.timeouts]`.
fn route_with(name: &str, path: &str, backend: &str, timeouts: &str) -> String {
    format!(
        "{}[route.timeouts]\n{timeouts}\n",
        route(name, path, &[backend.to_string()])
    )
}

/// `wsgate_sessions_hibernating` from one scrape of `/metrics` (which must declare it as a
/// gauge: a missing family would read as 0 and prove nothing).
async fn hibernating(admin: SocketAddr) -> f64 {
    let exp = scrape(admin).await;
    assert_eq!(
        exp.types
            .get("wsgate_sessions_hibernating")
            .map(String::as_str),
        Some("gauge"),
        "no wsgate_sessions_hibernating gauge in {:?}",
        exp.types
    );
    exp.value("wsgate_sessions_hibernating", &[])
}

/// What the lots have done so far, from one scrape of `/metrics`:
/// `wsgate_sessions_hibernated_total`, then `wsgate_sessions_woken_total` by cause (input,
/// timer, signal). Both families must be declared as counters.
async fn lot_counts(admin: SocketAddr) -> [f64; 4] {
    let exp = scrape(admin).await;
    // (The text format types a counter under its sample's name, `_total` and all.)
    for family in [
        "wsgate_sessions_hibernated_total",
        "wsgate_sessions_woken_total",
    ] {
        assert_eq!(
            exp.types.get(family).map(String::as_str),
            Some("counter"),
            "no {family} counter in {:?}",
            exp.types
        );
    }
    let woken = |cause| exp.value("wsgate_sessions_woken_total", &[("cause", cause)]);
    [
        exp.value("wsgate_sessions_hibernated_total", &[]),
        woken("input"),
        woken("timer"),
        woken("signal"),
    ]
}

/// Waits until every session has ended (`what` says which did not), then checks that none is
/// counted as hibernating.
async fn all_ended(gw: &Gateway, admin: SocketAddr, what: &str) {
    tokio::time::timeout(STEP, gw.handle().sessions().wait_for_count(|n| *n == 0))
        .await
        .expect(what);
    assert_eq!(hibernating(admin).await, 0.0);
}

/// Scrapes until `wsgate_sessions_hibernating` reads `n`, within [`HIBERNATION_WAIT`].
async fn wait_hibernating(admin: SocketAddr, n: usize) {
    let mut last = None;
    let reached = tokio::time::timeout(HIBERNATION_WAIT, async {
        loop {
            let now = hibernating(admin).await;
            last = Some(now);
            if now == n as f64 {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "wsgate_sessions_hibernating never read {n} within {HIBERNATION_WAIT:?} (last: {last:?})"
    );
}

/// Scrapes for `window` and asserts that every scrape reads `n`.
async fn stays_hibernating(admin: SocketAddr, n: usize, window: Duration) {
    let end = Instant::now() + window;
    let mut scrapes = 0;
    while Instant::now() < end {
        assert_eq!(
            hibernating(admin).await,
            n as f64,
            "wsgate_sessions_hibernating moved off {n} after {scrapes} scrapes"
        );
        scrapes += 1;
        tokio::time::sleep(POLL).await;
    }
    assert!(scrapes > 1, "the window allowed only {scrapes} scrapes");
}

/// The session ids the admin API lists, in id order.
async fn session_ids(admin: SocketAddr) -> Vec<u64> {
    let (status, list) = admin_json(admin, "GET", "/api/sessions", &Value::Null).await;
    assert_eq!(status, 200, "{list}");
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect()
}

/// Reads on until the connection ends (tungstenite flushes its close reply as it reads).
async fn read_to_end(ws: &mut Ws) {
    while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, ws.next()).await {}
}

/// A backend whose sessions the test drives itself: each accepted WebSocket is handed over
/// on the returned channel, and nothing is read or sent on it but what the test does.
async fn backend_in_hand() -> (String, mpsc::UnboundedReceiver<WebSocketStream<TcpStream>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await
                {
                    let _ = tx.send(ws);
                }
            });
        }
    });
    (url, rx)
}

/// A quiet session hibernates (the gauge goes 0 → 1); a client message wakes it and every
/// byte of it and of its echo gets through (a text and a 70 KB binary message); awake, it
/// is not counted (→ 0); quiet again, it hibernates again (→ 1).
///
/// `hibernate_after` is 300 ms here, not 100: the gauge must be scraped inside the window
/// in which the woken session is awake, which is at least that long after the echo.
#[tokio::test]
async fn a_quiet_session_hibernates_and_a_client_message_wakes_it() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route_with(
        "chat",
        "/chat",
        &echo.url(),
        "hibernate_after = \"300ms\"",
    ))
    .await;
    assert_eq!(hibernating(admin).await, 0.0, "nothing open yet");
    let (mut ws, _) = connect(&gw.url("/chat")).await;
    wait_hibernating(admin, 1).await;

    ws.send(Message::text("wake up, ñandú")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("wake up, ñandú"));
    let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_data(&mut ws).await {
        Message::Binary(got) => assert!(got[..] == big[..], "the 70 KB echo differs"),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    assert_eq!(hibernating(admin).await, 0.0, "awake, yet counted asleep");
    let (_, list) = admin_json(admin, "GET", "/api/sessions", &Value::Null).await;
    assert_eq!(list["sessions"][0]["hibernating"], false, "{list}");
    assert_eq!(
        lot_counts(admin).await,
        [1.0, 1.0, 0.0, 0.0],
        "one sleep, one wake by input"
    );

    wait_hibernating(admin, 1).await;
    let (_, list) = admin_json(admin, "GET", "/api/sessions", &Value::Null).await;
    assert_eq!(list["sessions"][0]["hibernating"], true, "{list}");
    // And it still works after its second sleep.
    ws.send(Message::text("again")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("again"));
    assert_eq!(gw.handle().sessions().len(), 1);
    assert_eq!(lot_counts(admin).await, [2.0, 2.0, 0.0, 0.0]);
}

/// A session that talks more often than its wait learns to stay awake: with
/// `hibernate_after` at 300 ms and a message every 1.35 s, each wake by input after so
/// short a spell doubles the session's own wait (to 600 ms, 1.2 s, 2.4 s: past the gap), so
/// it stops falling asleep between its messages after at most four wakes, where a fixed
/// wait puts it to sleep and wakes it for every message (a woken session stays awake until
/// the next whole second plus its wait, less than the gap here). Quiet again, it still
/// sleeps, after its longer wait.
///
/// (The gaps are the scenario, not synchronisation: a session asleep or awake gets every
/// echo either way, and only the count of wakes differs.)
#[tokio::test]
async fn a_session_that_talks_often_stops_hibernating_between_its_messages() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route_with(
        "chat",
        "/chat",
        &echo.url(),
        "hibernate_after = \"300ms\"",
    ))
    .await;
    let (mut ws, _) = connect(&gw.url("/chat")).await;
    wait_hibernating(admin, 1).await;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(1350)).await;
        let text = format!("tick {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text(text));
    }
    let [slept, by_input, by_timer, by_signal] = lot_counts(admin).await;
    assert!(
        (1.0..=4.0).contains(&by_input),
        "{by_input} wakes by input for 6 messages 1.35 s apart ({slept} sleeps): the \
         session should have stopped sleeping between them"
    );
    assert_eq!([by_timer, by_signal], [0.0, 0.0]);
    // Its wait is longer now, yet a quiet session still sleeps.
    wait_hibernating(admin, 1).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    assert_eq!(gw.handle().sessions().len(), 1);
}

/// The backend's side wakes a hibernating session too: a message the backend sends on its
/// own, long after the client went quiet, reaches the client, and the client's answer
/// reaches the backend.
#[tokio::test]
async fn a_backend_message_wakes_a_hibernating_session() {
    let (backend, mut accepted) = backend_in_hand().await;
    let (gw, admin) = spawn_admin(&route_with(
        "push",
        "/push",
        &backend,
        "hibernate_after = \"100ms\"",
    ))
    .await;
    let (mut ws, _) = connect(&gw.url("/push")).await;
    let mut server = tokio::time::timeout(STEP, accepted.recv())
        .await
        .expect("the backend got no session")
        .unwrap();
    wait_hibernating(admin, 1).await;

    server.send(Message::text("news for you")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("news for you"));
    ws.send(Message::text("thanks")).await.unwrap();
    assert_eq!(next_data(&mut server).await, Message::text("thanks"));

    // Asleep again, then woken by the backend once more, with a large message this time.
    wait_hibernating(admin, 1).await;
    let big = vec![0x5au8; 70_000];
    server.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(big));
}

/// A close frame from the client wakes its hibernating session, and the closing handshake
/// completes end to end: the backend sees 1000 and the client gets the close reply with
/// 1000; the session is then gone and no longer counted.
#[tokio::test]
async fn a_client_close_wakes_a_hibernating_session_and_completes() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route_with(
        "chat",
        "/chat",
        &echo.url(),
        "hibernate_after = \"100ms\"",
    ))
    .await;
    let (mut ws, _) = connect(&gw.url("/chat")).await;
    wait_hibernating(admin, 1).await;

    send_close(&mut ws, CloseCode::Normal, "bye").await;
    let close = next_close(&mut ws).await;
    assert_eq!(u16::from(close.code), 1000);
    read_to_end(&mut ws).await;
    assert_eq!(
        echo.wait_closes(1).await,
        vec![Some((1000, "bye".to_string()))]
    );
    all_ended(&gw, admin, "the session did not end").await;
}

/// A shutdown reaches hibernating sessions: each is woken, its client and its backend get
/// 1001, and the drain finishes because their closing handshakes do (none is cut).
#[tokio::test]
async fn shutdown_closes_hibernating_sessions_with_1001() {
    const N: usize = 5;
    let echo = EchoBackend::spawn().await;
    let (mut gw, admin) = spawn_admin(&format!(
        "[shutdown]\ngrace = \"20s\"\n\n{}",
        route_with("chat", "/chat", &echo.url(), "hibernate_after = \"100ms\"")
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..N {
        clients.push(connect(&gw.url("/chat")).await.0);
    }
    wait_hibernating(admin, N).await;

    let waiting: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let close = close_of(&mut ws).await;
                read_to_end(&mut ws).await;
                close
            })
        })
        .collect();
    let report = gw.shutdown().await;
    assert_eq!(
        report.sessions_ended, 0,
        "every hibernating session closed in time, none was cut"
    );
    for w in waiting {
        assert_eq!(w.await.unwrap(), (1001, "going away".to_string()));
    }
    let closes = echo.wait_closes(N).await;
    assert!(
        closes
            .iter()
            .all(|c| c == &Some((1001, "going away".to_string()))),
        "{closes:?}"
    );
}

/// The operator's close through the admin API reaches a hibernating session: the client
/// and the backend get the code and reason asked for, and the other hibernating session
/// sleeps on (only the one signalled wakes). Draining its backend with `close` then wakes
/// and closes that one too, with 1001.
#[tokio::test]
async fn the_admin_api_closes_a_hibernating_session() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route_with(
        "chat",
        "/chat",
        &echo.url(),
        "hibernate_after = \"100ms\"",
    ))
    .await;
    let (mut first, _) = connect(&gw.url("/chat")).await;
    let (mut second, _) = connect(&gw.url("/chat")).await;
    wait_hibernating(admin, 2).await;

    // The first session's id: the listing is in id order, and the first opened first.
    let ids = session_ids(admin).await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    let client = first.get_ref().local_addr().unwrap().to_string();
    let (status, found) = admin_json(
        admin,
        "GET",
        &format!("/api/sessions?client={client}"),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    let id = found["sessions"][0]["id"].as_u64().unwrap();
    assert!(ids.contains(&id));
    assert_eq!(found["sessions"][0]["hibernating"], true, "{found}");

    let (status, body) = admin_json(
        admin,
        "POST",
        &format!("/api/sessions/{id}/close"),
        &serde_json::json!({"code": 4000, "reason": "bye from the operator"}),
    )
    .await;
    assert_eq!(
        (status, &body),
        (202, &serde_json::json!({"id": id, "closing": true}))
    );
    assert_eq!(
        close_of(&mut first).await,
        (4000, "bye from the operator".to_string())
    );
    read_to_end(&mut first).await;
    assert_eq!(
        echo.wait_closes(1).await,
        vec![Some((4000, "bye from the operator".to_string()))]
    );
    tokio::time::timeout(STEP, gw.handle().sessions().wait_for_count(|n| *n == 1))
        .await
        .expect("the closed session did not end");
    // The other one was not woken by the signal meant for the first.
    assert_eq!(hibernating(admin).await, 1.0);
    assert_eq!(
        lot_counts(admin).await,
        [2.0, 0.0, 0.0, 1.0],
        "two sleeps, one wake by the operator's signal"
    );

    let names = backend_names(admin, "chat").await;
    let (status, body) = admin_json(
        admin,
        "POST",
        "/api/backends/drain",
        &serde_json::json!({"route": "chat", "backend": names[0], "close": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], 1);
    assert_eq!(
        close_of(&mut second).await,
        (1001, "backend draining".to_string())
    );
    read_to_end(&mut second).await;
    all_ended(&gw, admin, "the drained session did not end").await;
}

/// Pings come due while the session hibernates: the lot wakes it for each, the client
/// (tungstenite, answering as it reads) gets them, and between them the session hibernates
/// again, over and over; it stays open and working.
///
/// (A woken session stays awake until the next whole second plus `hibernate_after`, so it
/// sleeps once a second or so here, between two pings: the test wants to see it asleep
/// after two different pings, which takes about two seconds.)
#[tokio::test]
async fn pings_wake_a_hibernating_session_and_it_sleeps_again_between_them() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route_with(
        "chat",
        "/chat",
        &echo.url(),
        "ping_interval = \"300ms\"\nhibernate_after = \"100ms\"",
    ))
    .await;
    let (mut ws, _) = connect(&gw.url("/chat")).await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut pings = 0usize;
    // The number of pings received when the gauge was seen at 1: each distinct one is a
    // sleep in a different gap between pings.
    let mut asleep_after = BTreeSet::new();
    while pings < 3 || asleep_after.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "{pings} pings, asleep after pings {asleep_after:?} within 8 s"
        );
        match tokio::time::timeout(POLL, ws.next()).await {
            Ok(Some(Ok(Message::Ping(p)))) => {
                assert!(p.starts_with(b"wsgate"), "{p:?}");
                pings += 1;
            }
            Ok(other) => panic!("expected only pings, got {other:?}"),
            Err(_) => {
                if pings > 0 && hibernating(admin).await == 1.0 {
                    asleep_after.insert(pings);
                }
            }
        }
    }
    // Asleep in two gaps, with a ping after the first: its timer woke it at least once
    // (the client says nothing of its own).
    let [slept, _, by_timer, by_signal] = lot_counts(admin).await;
    assert!(
        slept >= 2.0 && by_timer >= 1.0,
        "{slept} sleeps, {by_timer} timer wakes"
    );
    assert_eq!(by_signal, 0.0);
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    assert_eq!(gw.handle().sessions().len(), 1);
    // The proxy consumed the backend's answers to its own pings, as when awake.
    assert_eq!(echo.pongs.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// Frames off a raw socket, as they arrive: (opcode, unmasked payload), until a close frame
/// (sent too) or the end of the connection.
fn raw_frames(mut stream: TcpStream, mut buf: Vec<u8>) -> mpsc::UnboundedReceiver<(u8, Vec<u8>)> {
    use wsgate::frame::opcode;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            while let Some((op, payload)) = take_frame(&mut buf) {
                let close = op == opcode::CLOSE;
                let _ = tx.send((op, payload));
                if close {
                    // Hold the socket, never answering, until the proxy gives up on it.
                    let mut sink = [0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(1..)) {}
                    return;
                }
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
    });
    rx
}

/// A client that never answers pings is found dead although its session hibernates: asleep
/// before the ping is due, the lot wakes it to send the ping; the session hibernates again
/// while the pong is due (seen on the gauge after the ping has reached the client); the lot
/// wakes it at the pong's deadline, and the proxy closes both sides with 1001 "client not
/// responding".
///
/// The client is a raw socket that did its handshake by hand: it reads (to know when the
/// ping came) but never answers anything. The timers leave each sleep a wide window for the
/// scrapes to see: the first lasts from `hibernate_after` (100 ms) to the ping
/// (`ping_interval`, 1 s). A woken session stays awake up to the next whole second plus
/// `hibernate_after`, at most 1.1 s after the ping; the backend answers the ping it got
/// then, and its next one comes with the client's deadline (`pong_timeout`, 2 s): so the
/// session sleeps at least the last 0.9 s before that deadline, and only the lot's timer
/// can end that sleep.
#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_while_hibernating() {
    use wsgate::frame::opcode;
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route_with(
        "chat",
        "/chat",
        &echo.url(),
        "ping_interval = \"1s\"\npong_timeout = \"2s\"\nhibernate_after = \"100ms\"",
    ))
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(upgrade_request("/chat", "").as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let mut frames = raw_frames(stream, resp.rest);

    let deadline = Instant::now() + STEP;
    let (mut pinged, mut asleep_before_ping, mut asleep_while_due) = (false, false, false);
    let close = loop {
        assert!(
            Instant::now() < deadline,
            "no close within STEP (pinged: {pinged}, asleep before the ping: \
             {asleep_before_ping}, asleep while the pong was due: {asleep_while_due})"
        );
        // The gauge first, then the frames that came before that scrape: a sleep seen is
        // placed before the frame that came after it, never after.
        let asleep = hibernating(admin).await == 1.0;
        match frames.try_recv() {
            Ok((opcode::PING, _)) if !pinged => pinged = true,
            Ok((opcode::CLOSE, payload)) => break payload,
            Ok((op, payload)) => panic!("unexpected frame {op}: {payload:?}"),
            Err(mpsc::error::TryRecvError::Empty) => {
                if asleep && pinged {
                    asleep_while_due = true;
                } else if asleep {
                    asleep_before_ping = true;
                }
            }
            Err(e) => panic!("the connection ended without a close frame: {e}"),
        }
        tokio::time::sleep(POLL).await;
    };
    assert!(pinged, "closed without a ping first");
    assert!(asleep_before_ping, "never seen asleep before the ping");
    assert!(asleep_while_due, "never seen asleep while the pong was due");
    let (code, reason) = wsgate::frame::parse_close(&close);
    assert_eq!(
        (code, reason.as_str()),
        (Some(1001), "client not responding")
    );
    assert_eq!(
        echo.wait_closes(1).await,
        vec![Some((1001, "client not responding".to_string()))]
    );
}

/// The idle timeout comes due while the session hibernates: the lot wakes it and the
/// proxy closes both sides with 1001 "idle timeout", no earlier than the timeout.
///
/// `idle` is 1 s, so that the sleep the test must see first lasts 900 ms.
#[tokio::test]
async fn the_idle_timeout_closes_a_hibernating_session() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route_with(
        "chat",
        "/chat",
        &echo.url(),
        "idle = \"1s\"\nhibernate_after = \"100ms\"",
    ))
    .await;
    // Before the handshake: the session's idle clock starts later, when its relay does.
    let started = Instant::now();
    let (mut ws, _) = connect(&gw.url("/chat")).await;
    wait_hibernating(admin, 1).await;
    assert_eq!(close_of(&mut ws).await, (1001, "idle timeout".to_string()));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed for idleness after {:?}",
        started.elapsed()
    );
    assert_eq!(
        echo.wait_closes(1).await,
        vec![Some((1001, "idle timeout".to_string()))]
    );
    read_to_end(&mut ws).await;
    assert_eq!(hibernating(admin).await, 0.0);
}

/// `hibernate_after = "off"` on a route keeps its quiet sessions awake, even where the
/// gateway's `[timeouts]` would hibernate them after 100 ms: the gauge stays at 0 while the
/// session has been quiet five times that long. A session of another route, which inherits
/// the 100 ms, hibernates meanwhile and is counted (the gauge reads 1, not 2): the gauge
/// was live all along, and the off session is still not counted.
///
/// Absence takes a window: 500 ms of scrapes, five times the `hibernate_after` the off route
/// would inherit if its "off" were ignored.
#[tokio::test]
async fn hibernate_after_off_keeps_quiet_sessions_awake() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&format!(
        "[timeouts]\nhibernate_after = \"100ms\"\n\n{}{}",
        route_with("awake", "/awake", &echo.url(), "hibernate_after = \"off\""),
        route("sleepy", "/sleepy", &[echo.url()])
    ))
    .await;
    let (mut awake, _) = connect(&gw.url("/awake")).await;
    awake.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut awake).await, Message::text("hello"));
    stays_hibernating(admin, 0, Duration::from_millis(500)).await;

    let (mut sleepy, _) = connect(&gw.url("/sleepy")).await;
    wait_hibernating(admin, 1).await;
    stays_hibernating(admin, 1, Duration::from_millis(300)).await;
    for ws in [&mut awake, &mut sleepy] {
        ws.send(Message::text("still fine")).await.unwrap();
        assert_eq!(next_data(ws).await, Message::text("still fine"));
    }
}

/// A wss:// echo backend with a certificate for `localhost` from `ca`, which asks for a TLS
/// key update after each echo (sent ahead of the next): the proxy's backend leg must answer
/// each one and go on with new keys both ways.
async fn wss_echo_backend(ca: &TestCa) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = ca.leaf("backend", &["localhost"]);
    let chain = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::from_pem_file(&key).unwrap())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) =
                    tokio_tungstenite::accept_async_with_config(tls, Some(ws_config())).await
                else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                    let _ = ws.get_mut().get_mut().1.refresh_traffic_keys();
                }
            });
        }
    });
    addr
}

/// A session with TLS on both legs (a wss:// listener, a wss:// backend) hibernates with its
/// TLS state and wakes with it intact: messages after each sleep (a text, and a 70 KB binary
/// message that spans several TLS records each way) come back byte for byte over the same
/// TLS sessions, and the closing handshake completes with 1000. Both peers ask for TLS key
/// updates on the way (the client before each round, the backend after each echo), which
/// both of the proxy's legs answer, awake and just woken.
#[tokio::test]
async fn a_session_with_tls_on_both_legs_hibernates_and_wakes_intact() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let backend = wss_echo_backend(&ca).await;
    let (gw, admin) = spawn_admin(&format!(
        "{}[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"wss://localhost:{}\"]\n\
         [route.backend_tls]\nca = \"{}\"\n[route.timeouts]\nhibernate_after = \"100ms\"\n",
        tls_listener(&cert, &key, ""),
        backend.port(),
        ca.ca_file().display()
    ))
    .await;
    let (tls, _) = tls_connect(&ca, &gw, "localhost").await;
    let (mut wss, resp) = wss_upgrade(&gw, tls).await;
    assert_eq!(resp.status(), 101);
    wss.send(Message::text("over TLS")).await.unwrap();
    assert_eq!(next_data(&mut wss).await, Message::text("over TLS"));

    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    for round in 0..2 {
        wait_hibernating(admin, 1).await;
        let text = format!("woken {round}");
        wss.get_mut().get_mut().1.refresh_traffic_keys().unwrap();
        wss.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next_data(&mut wss).await, Message::text(text));
        wss.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(next_data(&mut wss).await, Message::binary(big.clone()));
    }

    wait_hibernating(admin, 1).await;
    wss.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        },
    )))
    .await
    .unwrap();
    match next_data(&mut wss).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("expected the close reply, got {other:?}"),
    }
    all_ended(&gw, admin, "the session did not end").await;
}

/// A WebSocket over HTTP/2 (RFC 8441, here h2c with prior knowledge) never hibernates (its
/// client leg is a stream of a shared connection, not a socket of its own) yet works:
/// while a ws:// session of the same route, opened after it, hibernates and is counted, the
/// gauge never counts the HTTP/2 one, and its echo still comes back.
///
/// Absence takes a window: once the ws:// session hibernates, the HTTP/2 session has been
/// quiet longer than it (over 100 ms); 300 ms more of scrapes make it more than three times
/// `hibernate_after`.
#[tokio::test]
async fn an_http2_websocket_never_hibernates_but_works() {
    use bytes::Bytes;
    use http::{Method, Request, StatusCode, Version};
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&format!(
        "[timeouts]\nhibernate_after = \"100ms\"\n\n{}",
        route("r", "/", &[echo.url()])
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(format!("http://{}/", gw.addr))
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    send.ready().await.unwrap();
    let resp = tokio::time::timeout(STEP, send.send_request(req))
        .await
        .expect("no answer to CONNECT")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let up = hyper::upgrade::on(resp).await.unwrap();
    let mut h2 =
        WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Client, Some(ws_config())).await;
    h2.send(Message::text("over h2")).await.unwrap();
    assert_eq!(next_data(&mut h2).await, Message::text("over h2"));

    let (mut ws, _) = connect(&gw.url("/")).await;
    wait_hibernating(admin, 1).await;
    stays_hibernating(admin, 1, Duration::from_millis(300)).await;

    let big = vec![0xa5u8; 70_000];
    h2.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut h2).await, Message::binary(big));
    ws.send(Message::text("plain")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("plain"));
    assert_eq!(gw.handle().sessions().len(), 2);
}

/// Fifty sessions all hibernate together, each wakes for its own message and echoes it
/// back (each client gets its own, not another's), and all close cleanly with 1000.
#[tokio::test]
async fn fifty_sessions_hibernate_wake_and_close_cleanly() {
    const N: usize = 50;
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route_with(
        "chat",
        "/chat",
        &echo.url(),
        "hibernate_after = \"100ms\"",
    ))
    .await;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(connect(&gw.url("/chat")).await.0);
    }
    wait_hibernating(admin, N).await;

    for (i, ws) in clients.iter_mut().enumerate() {
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(next_data(ws).await, Message::text(format!("message {i}")));
    }

    for ws in &mut clients {
        send_close(ws, CloseCode::Normal, "done").await;
    }
    for ws in &mut clients {
        assert_eq!(close_of(ws).await, (1000, "done".to_string()));
        read_to_end(ws).await;
    }
    let closes = echo.wait_closes(N).await;
    assert_eq!(closes.len(), N);
    assert!(
        closes
            .iter()
            .all(|c| c == &Some((1000, "done".to_string()))),
        "{closes:?}"
    );
    all_ended(&gw, admin, "the sessions did not all end").await;
}
