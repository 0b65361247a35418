//! The frame-aware relay with real peers: message limits, framing violations, pings and dead
//! peers, idle and lifetime timers, peers vanishing mid-session, and drain at scale.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wsgate::frame::{encode_frame, opcode};

use crate::support::*;

/// Reads raw frames off a socket until a close frame; returns its code and reason.
async fn raw_close(stream: &mut TcpStream, buf: Vec<u8>) -> (u16, String) {
    raw_frames_until_close(stream, buf).await.1
}

/// Reads raw frames off a socket until a close frame: the data frames before it (opcode,
/// payload), and the close frame's code and reason.
async fn raw_frames_until_close(
    stream: &mut TcpStream,
    buf: Vec<u8>,
) -> (Vec<(u8, Vec<u8>)>, (u16, String)) {
    let (frames, code, reason) = frames_until_close(stream, buf)
        .await
        .expect("a close frame");
    (frames, (code, reason))
}

async fn gateway_with(backend: &EchoBackend, route_extra: &str) -> Gateway {
    Gateway::spawn(&format!(
        "{}{route_extra}",
        route("r", "/", &[backend.url()])
    ))
    .await
}

#[tokio::test]
async fn oversized_client_message_gets_1009_and_the_backend_1001() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway_with(&backend, "max_message = \"1KiB\"\n").await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    ws.send(Message::binary(vec![1u8; 1024])).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![1u8; 1024]));
    ws.send(Message::binary(vec![2u8; 1025])).await.unwrap();
    assert_eq!(close_of(&mut ws).await, (1009, "message too big".into()));
    assert_eq!(
        backend.wait_closes(1).await,
        vec![Some((1001, "client message too big".into()))]
    );
}

#[tokio::test]
async fn oversized_backend_message_gets_1009_and_the_client_1001() {
    let backend = EchoBackend::spawn().await;
    // The client's 600-byte message is fine; its echo, fragmented by nobody, is too; the
    // backend's 2 KiB answer is not. Use a fragmented client message so only the echo is big.
    let gw = gateway_with(&backend, "max_message = \"1500B\"\n").await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    // Two messages of 1000 bytes each pass both ways.
    ws.send(Message::binary(vec![3u8; 1000])).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![3u8; 1000]));
    drop(ws);
    // A scripted backend that sends a 2000-byte message right after its 101.
    let big = encode_frame(opcode::BINARY, true, &[0u8; 2000], None);
    let mut response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec();
    response.extend_from_slice(&big);
    let (addr, _) = scripted_backend(response).await;
    let gw = Gateway::spawn(&format!(
        "{}max_message = \"1500B\"\n",
        route("r", "/", &[format!("ws://{addr}")])
    ))
    .await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    assert_eq!(
        close_of(&mut ws).await,
        (1001, "backend message too big".into())
    );
}

#[tokio::test]
async fn unmasked_client_frame_gets_1002_and_the_backend_1001() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway_with(&backend, "").await;
    let mut bytes = upgrade_request("/", "").into_bytes();
    bytes.extend(client_frame(opcode::TEXT, b"fine"));
    bytes.extend(encode_frame(opcode::TEXT, true, b"unmasked", None));
    let (mut stream, resp) = raw_exchange(gw.addr, &bytes).await;
    assert_eq!(resp.status, 101);
    assert_eq!(
        raw_close(&mut stream, resp.rest).await,
        (1002, "protocol error".into())
    );
    assert_eq!(
        backend.wait_closes(1).await,
        vec![Some((1001, "client protocol error".into()))]
    );
}

/// A payload length in a longer form than it needs (RFC 6455 §5.2: "the minimal number of
/// bytes MUST be used") is a framing violation, as browsers treat it: the sender gets 1002
/// and the other side 1001. (It was passed on, and a browser then failed the session with
/// nothing in the record to say which side broke the rule.)
#[tokio::test]
async fn a_non_minimal_length_from_the_client_gets_1002_and_the_backend_1001() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway_with(&backend, "").await;
    let mask = [1u8, 2, 3, 4];
    // "long" (4 bytes) with the 16-bit length form.
    let mut long = vec![0x81, 0x80 | 126, 0, 4];
    long.extend_from_slice(&mask);
    long.extend(b"long".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    let mut bytes = upgrade_request("/", "").into_bytes();
    bytes.extend(client_frame(opcode::TEXT, b"fine"));
    bytes.extend(long);
    let (mut stream, resp) = raw_exchange(gw.addr, &bytes).await;
    assert_eq!(resp.status, 101);
    let (frames, close) = raw_frames_until_close(&mut stream, resp.rest).await;
    assert_eq!(frames, vec![(opcode::TEXT, b"fine".to_vec())]);
    assert_eq!(close, (1002, "protocol error".into()));
    assert_eq!(
        backend.wait_closes(1).await,
        vec![Some((1001, "client protocol error".into()))]
    );
}

#[tokio::test]
async fn a_non_minimal_length_from_the_backend_gets_the_client_1014() {
    let mut response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec();
    // Three bytes with the 64-bit length form.
    response.extend_from_slice(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]);
    let (addr, _seen) = scripted_backend(response).await;
    let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await;
    let (mut stream, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101);
    let (frames, close) = raw_frames_until_close(&mut stream, resp.rest).await;
    assert_eq!(frames, vec![], "nothing of the frame is passed on");
    assert_eq!(close, (1014, "backend protocol error".into()));
}

/// A client that sends its messages and shuts its write side (a FIN, no close frame) still
/// reads: it gets the echoes of what it sent, then the proxy's close, and the backend its
/// 1001. It got the close at once and none of the echoes (found by black-box testing).
#[tokio::test]
async fn a_client_that_half_closes_still_gets_the_answers_to_what_it_sent() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway_with(&backend, "").await;
    let mut bytes = upgrade_request("/", "").into_bytes();
    for m in [&b"one"[..], b"two", b"three"] {
        bytes.extend(client_frame(opcode::TEXT, m));
    }
    let (mut stream, resp) = raw_exchange(gw.addr, &bytes).await;
    assert_eq!(resp.status, 101);
    stream.shutdown().await.unwrap();
    let (frames, (code, reason)) = raw_frames_until_close(&mut stream, resp.rest).await;
    let texts = |ms: &[&[u8]]| -> Vec<(u8, Vec<u8>)> {
        ms.iter().map(|m| (opcode::TEXT, m.to_vec())).collect()
    };
    assert_eq!(frames, texts(&[b"one", b"two", b"three"]));
    assert_eq!((code, reason.as_str()), (1001, "client went away"));
    assert_eq!(
        backend.wait_closes(1).await,
        vec![Some((1001, "client went away".into()))]
    );
}

/// A client's close frame that RFC 6455 forbids on the wire (a code no endpoint may send, a
/// one-byte payload, a reason that is not UTF-8) fails the connection at the proxy: the client
/// gets 1002 (1007 for the reason) and the backend 1001, never the forbidden close. (They
/// were passed on as sent, so a lenient backend took a 1005 as a close.)
#[tokio::test]
async fn a_forbidden_close_from_the_client_gets_1002_and_the_backend_1001() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway_with(&backend, "").await;
    let cases: [(&[u8], u16, &str); 6] = [
        (&[0x03, 0xED], 1002, "protocol error"), // 1005
        (&[0x03, 0xEE], 1002, "protocol error"), // 1006
        (&[0x03, 0xF7], 1002, "protocol error"), // 1015
        (&[0x03, 0xE7], 1002, "protocol error"), // 999
        (&[0x03], 1002, "protocol error"),
        (&[0x03, 0xE8, 0xFF], 1007, "invalid payload data"),
    ];
    for (i, (payload, code, reason)) in cases.into_iter().enumerate() {
        let mut bytes = upgrade_request("/", "").into_bytes();
        bytes.extend(client_frame(opcode::TEXT, b"fine"));
        bytes.extend(client_frame(opcode::CLOSE, payload));
        let (mut stream, resp) = raw_exchange(gw.addr, &bytes).await;
        assert_eq!(resp.status, 101);
        let (frames, close) = raw_frames_until_close(&mut stream, resp.rest).await;
        assert_eq!(
            frames,
            vec![(opcode::TEXT, b"fine".to_vec())],
            "{payload:?}"
        );
        assert_eq!(close, (code, reason.into()), "{payload:?}");
        let closes = backend.wait_closes(i + 1).await;
        assert_eq!(
            closes[i],
            Some((1001, "client protocol error".into())),
            "{payload:?}"
        );
    }
}

/// The same from a backend: a close code 1005 on the wire gets the client 1014, not 1005.
#[tokio::test]
async fn a_forbidden_close_from_the_backend_gets_the_client_1014() {
    let mut response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec();
    response.extend_from_slice(&encode_frame(opcode::CLOSE, true, &[0x03, 0xED], None));
    let (addr, _seen) = scripted_backend(response).await;
    let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await;
    let (mut stream, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101);
    assert_eq!(
        raw_close(&mut stream, resp.rest).await,
        (1014, "backend protocol error".into())
    );
}

#[tokio::test]
async fn reserved_opcode_from_the_backend_gets_the_client_1014() {
    let mut response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec();
    response.extend_from_slice(&encode_frame(opcode::TEXT, true, b"ok", None));
    response.extend_from_slice(&[0x83, 0x00]); // reserved opcode 3
    let (addr, seen) = scripted_backend(response).await;
    let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await;
    // A raw client: tungstenite 0.30 does not know 1014 (registered after RFC 6455) and would
    // report it as its own 1002.
    let (mut stream, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101);
    let ok = encode_frame(opcode::TEXT, true, b"ok", None);
    let mut rest = resp.rest;
    while rest.len() < ok.len() {
        let mut chunk = [0u8; 64];
        let n = stream.read(&mut chunk).await.unwrap();
        rest.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(
        &rest[..ok.len()],
        &ok[..],
        "the frames before the violation pass"
    );
    rest.drain(..ok.len());
    assert_eq!(
        raw_close(&mut stream, rest).await,
        (1014, "backend protocol error".into())
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// A side whose closing handshake is over gets its FIN then, not when the other side ends:
/// here the backend breaks the framing and then neither answers the proxy's close nor
/// closes its socket (not even on the proxy's FIN), so its leg waits out the closing
/// handshake's deadline (5 s); the client, which answered its 1014, must not wait with it
/// (RFC 6455 §7.1.1: the server closes first).
#[tokio::test]
async fn a_side_done_with_its_close_gets_its_fin_while_the_other_lingers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held_tx, _held) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_request_head(&mut s).await;
        let mut answer = switching_protocols(&head).into_bytes();
        answer.extend_from_slice(&[0x83, 0x00]); // reserved opcode 3
        s.write_all(&answer).await.unwrap();
        // Held open, unread, for as long as the test runs.
        let _ = held_tx.send(s);
    });
    let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await;
    let (mut stream, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101);
    assert_eq!(
        raw_close(&mut stream, resp.rest).await,
        (1014, "backend protocol error".into())
    );
    // The client's close reply completes its closing handshake.
    stream
        .write_all(&client_frame(opcode::CLOSE, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let mut rest = [0u8; 64];
    let eof = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut rest))
        .await
        .expect("no FIN within 2 s: the client waited for the backend's leg (5 s)");
    assert!(matches!(eof, Ok(0)), "{eof:?}");
}

#[tokio::test]
async fn pings_keep_both_legs_checked_and_pongs_are_consumed() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway_with(
        &backend,
        "[route.timeouts]\nping_interval = \"50ms\"\npong_timeout = \"5s\"\n",
    )
    .await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    // The client sees the proxy's pings (tungstenite answers them) and nothing else.
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(STEP, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(p) => {
                assert!(p.starts_with(b"wsgate"), "{p:?}");
                pings += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Still a working session, and no proxy pong ever reached the backend.
    ws.send(Message::text("after pings")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("after pings"));
    assert_eq!(backend.pongs.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// The answer to an earlier ping of the proxy's is consumed too: a client inside a frame
/// when pinged answers once the frame is done, by when the proxy (having heard its data) may
/// have pinged it again; that late pong went on to the backend.
#[tokio::test]
async fn a_late_answer_to_an_earlier_ping_is_consumed() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway_with(
        &backend,
        "[route.timeouts]\nping_interval = \"100ms\"\npong_timeout = \"5s\"\n\
         hibernate_after = \"off\"\n",
    )
    .await;
    let (mut stream, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101);
    let mut buf = resp.rest;
    let next_ping = async |stream: &mut TcpStream, buf: &mut Vec<u8>| loop {
        if let Some((op, payload)) = take_frame(buf) {
            if op == opcode::PING {
                return payload;
            }
            continue;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
            .await
            .expect("no ping")
            .unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    };
    let first = next_ping(&mut stream, &mut buf).await;
    // Data instead of the pong (the client was busy sending it), then the next ping.
    stream
        .write_all(&client_frame(opcode::TEXT, b"busy"))
        .await
        .unwrap();
    let second = next_ping(&mut stream, &mut buf).await;
    assert_ne!(first, second);
    // Both answers, the earlier first; then a message through, to know they were read.
    for payload in [&first, &second] {
        stream
            .write_all(&client_frame(opcode::PONG, payload))
            .await
            .unwrap();
    }
    stream
        .write_all(&client_frame(opcode::TEXT, b"after"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(STEP, async {
        loop {
            if let Some((op, payload)) = take_frame(&mut buf)
                && op == opcode::TEXT
                && payload == b"after"
            {
                return;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(echoed.is_ok(), "no echo");
    assert_eq!(backend.pongs.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_silent_backend_is_found_dead_by_pings() {
    // Answers the upgrade, then never reads or writes again (a hung process).
    let (addr, _) = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec(),
    )
    .await;
    let gw = Gateway::spawn(&format!(
        "{}[route.timeouts]\nping_interval = \"100ms\"\npong_timeout = \"200ms\"\n",
        route("r", "/", &[format!("ws://{addr}")])
    ))
    .await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    assert_eq!(
        close_of(&mut ws).await,
        (1001, "backend not responding".into())
    );
}

#[tokio::test]
async fn idle_timeout_closes_both_sides() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway_with(&backend, "[route.timeouts]\nidle = \"300ms\"\n").await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("one"));
    assert_eq!(close_of(&mut ws).await, (1001, "idle timeout".into()));
    assert_eq!(
        backend.wait_closes(1).await,
        vec![Some((1001, "idle timeout".into()))]
    );
}

#[tokio::test]
async fn max_lifetime_closes_both_sides() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway_with(&backend, "[route.timeouts]\nmax_lifetime = \"300ms\"\n").await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    assert_eq!(
        close_of(&mut ws).await,
        (1001, "session lifetime reached".into())
    );
    assert_eq!(
        backend.wait_closes(1).await,
        vec![Some((1001, "session lifetime reached".into()))]
    );
}

/// A backend that upgrades, waits for one frame from the client, then vanishes: with a FIN
/// (`reset = false`) or a reset.
async fn vanishing_backend(reset: bool) -> std::net::SocketAddr {
    one_session_backend(move |mut s| async move {
        let _ = s.read(&mut [0u8; 4096]).await.unwrap();
        if reset {
            // SO_LINGER 0: the close sends a reset instead of a FIN.
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(s);
    })
    .await
}

#[tokio::test]
async fn backend_gone_mid_session_gets_the_client_1011() {
    for reset in [false, true] {
        let addr = vanishing_backend(reset).await;
        let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await;
        let (mut ws, _) = connect(&gw.url("/")).await;
        ws.send(Message::text("anyone?")).await.unwrap();
        assert_eq!(
            close_of(&mut ws).await,
            (1011, "backend connection lost".into()),
            "reset={reset}"
        );
    }
}

#[tokio::test]
async fn client_gone_mid_session_gets_the_backend_1001() {
    for reset in [false, true] {
        let backend = EchoBackend::spawn().await;
        let gw = gateway_with(&backend, "").await;
        let mut bytes = upgrade_request("/", "").into_bytes();
        bytes.extend(client_frame(opcode::TEXT, b"bye"));
        let (stream, resp) = raw_exchange(gw.addr, &bytes).await;
        assert_eq!(resp.status, 101);
        if reset {
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(stream);
        assert_eq!(
            backend.wait_closes(1).await,
            vec![Some((1001, "client went away".into()))],
            "reset={reset}"
        );
    }
}

#[tokio::test]
async fn shutdown_with_100_sessions_sends_1001_to_every_client_and_backend() {
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[shutdown]\ngrace = \"20s\"\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(connect(&gw.url("/")).await.0);
    }
    let waiting: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let close = close_of(&mut ws).await;
                // Keep reading so tungstenite flushes its close reply, until the proxy's FIN.
                while let Some(Ok(_)) = ws.next().await {}
                close
            })
        })
        .collect();
    let report = gw.shutdown().await;
    assert_eq!(
        report.sessions_ended, 0,
        "every closing handshake finished within the grace period"
    );
    for w in waiting {
        assert_eq!(w.await.unwrap().0, 1001);
    }
    let closes = backend.wait_closes(100).await;
    assert_eq!(closes.len(), 100);
    assert!(
        closes.iter().all(|c| c.as_ref().map(|c| c.0) == Some(1001)),
        "{closes:?}"
    );
}

#[tokio::test]
async fn closing_one_route_with_1012_leaves_the_others_alone() {
    let a = EchoBackend::spawn().await;
    let b = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}{}",
        route("a", "/a", &[a.url()]),
        route("b", "/b", &[b.url()])
    ))
    .await;
    let (mut ws_a, _) = connect(&gw.url("/a")).await;
    let (mut ws_b, _) = connect(&gw.url("/b")).await;
    assert!(gw.handle().close_route("a", 1012));
    assert!(!gw.handle().close_route("nope", 1012));
    assert_eq!(close_of(&mut ws_a).await, (1012, "service restart".into()));
    assert_eq!(
        a.wait_closes(1).await,
        vec![Some((1012, "service restart".into()))]
    );
    ws_b.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws_b).await, Message::text("still here"));
    // The route itself serves on: a session it opens afterwards is not closed.
    let (mut again, _) = connect(&gw.url("/a")).await;
    again.send(Message::text("new")).await.unwrap();
    assert_eq!(next_data(&mut again).await, Message::text("new"));
}

/// A client that reads slowly but steadily is not taken for dead: its ping waits behind
/// megabytes the proxy handed the kernel (the socket's send queue, the client's receive
/// buffer), and its pong comes late, but its TCP keeps taking the data. Here a backend sends
/// 6 MiB at once and the client reads it at about 2 MiB/s, answering each ping when it gets
/// there, against a pong timeout of 200 ms: every byte arrives, and no close frame.
///
/// The client's receive buffer is set small (64 KiB), as a slow reader's is over a network
/// (Linux sizes it by what the application reads): what waits is then in the proxy's send
/// queue, where the proxy sees its TCP take it. Left to loopback's autotuning, a kernel may
/// take all 6 MiB into the client's buffer at once, where nothing shows the proxy that the
/// client reads on (docs/configuration.md, pings: a known limit).
#[tokio::test]
async fn a_slow_but_steady_reader_is_not_taken_for_dead() {
    const FRAME: usize = 64 * 1024;
    const FRAMES: usize = 96;
    let addr = one_session_backend(|mut s| async move {
        let frame = encode_frame(opcode::BINARY, true, &[7u8; FRAME], None);
        for _ in 0..FRAMES {
            s.write_all(&frame).await.unwrap();
        }
        // Alive: answers the proxy's pings, until the client's end ends the test.
        let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
        while let Ok(n @ 1..) = s.read(&mut chunk).await {
            buf.extend_from_slice(&chunk[..n]);
            while let Some((op, payload)) = take_frame(&mut buf) {
                if op == opcode::PING {
                    let pong = encode_frame(opcode::PONG, true, &payload, None);
                    s.write_all(&pong).await.unwrap();
                }
            }
        }
    })
    .await;
    let gw = Gateway::spawn(&format!(
        "{}[route.timeouts]\nping_interval = \"200ms\"\npong_timeout = \"200ms\"\n",
        route("r", "/", &[format!("ws://{addr}")])
    ))
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut s = socket.connect(gw.addr).await.unwrap();
    s.write_all(upgrade_request("/", "").as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    let (mut buf, mut received, mut pongs) = (resp.rest, 0, 0);
    let mut chunk = vec![0u8; 32 * 1024];
    while received < FRAMES * FRAME {
        // About 2 MiB/s: 32 KiB every 15 ms (a slow reader, not a synchronisation).
        tokio::time::sleep(Duration::from_millis(15)).await;
        let n = tokio::time::timeout(STEP, s.read(&mut chunk))
            .await
            .expect("the proxy stopped sending")
            .unwrap();
        assert!(n > 0, "EOF after {received} bytes");
        buf.extend_from_slice(&chunk[..n]);
        while let Some((op, payload)) = take_frame(&mut buf) {
            match op {
                opcode::BINARY => received += payload.len(),
                opcode::PING => {
                    s.write_all(&client_frame(opcode::PONG, &payload))
                        .await
                        .unwrap();
                    pongs += 1;
                }
                opcode::CLOSE => panic!(
                    "closed after {received} bytes: {:?}",
                    wsgate::frame::parse_close(&payload)
                ),
                op => panic!("opcode {op}"),
            }
        }
    }
    assert!(pongs > 0, "no ping reached the client");
    assert_eq!(gw.handle().sessions().len(), 1, "the session ended");
}
