//! The core proxy, end to end over real sockets: echo, framing, close codes, subprotocols,
//! routing, every refusal with its status, backend failures, failover, and drain.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use wsgate::frame::opcode;

use crate::support::*;

async fn echo_gateway() -> (Gateway, EchoBackend) {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("echo", "/", &[backend.url()])).await;
    (gw, backend)
}

/// A gateway with one route `r` at `/` to the backend at `addr`.
async fn gateway_to(addr: SocketAddr) -> Gateway {
    Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await
}

#[tokio::test]
async fn text_and_binary_echo() {
    let (gw, _b) = echo_gateway().await;
    let (mut ws, resp) = connect(&gw.url("/echo")).await;
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    let bin: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::binary(bin.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(bin));
    // Many small messages in flight at once arrive complete and in order.
    for i in 0..200 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..200 {
        assert_eq!(next_data(&mut ws).await, Message::text(format!("m{i}")));
    }
}

#[tokio::test]
async fn sixteen_mib_message() {
    let (gw, _b) = echo_gateway().await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    let big: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_data(&mut ws).await {
        Message::Binary(got) => {
            assert_eq!(got.len(), big.len());
            assert!(got == big, "16 MiB echo differs");
        }
        other => panic!("expected binary, got {other:?}"),
    }
}

#[tokio::test]
async fn fragmented_message() {
    let (gw, _b) = echo_gateway().await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    ws.send(Message::Frame(Frame::message(
        "Hello, ",
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    // A control frame may arrive between fragments (RFC 6455 section 5.4).
    ws.send(Message::Ping("between".into())).await.unwrap();
    ws.send(Message::Frame(Frame::message(
        "frag",
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "ments!",
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    let mut got = Vec::new();
    loop {
        match next_message(&mut ws).await {
            Message::Text(t) => {
                assert_eq!(t.as_str(), "Hello, fragments!");
                break;
            }
            Message::Pong(p) => got.push(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, vec![bytes::Bytes::from("between")]);
}

#[tokio::test]
async fn ping_pong() {
    let (gw, _b) = echo_gateway().await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    match next_message(&mut ws).await {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected pong, got {other:?}"),
    }
}

#[tokio::test]
async fn client_close_code_and_reason_reach_the_backend_and_come_back() {
    let (gw, backend) = echo_gateway().await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    send_close(&mut ws, CloseCode::Library(4001), "client says bye").await;
    let f = next_close(&mut ws).await;
    assert_eq!(u16::from(f.code), 4001);
    assert_eq!(f.reason.as_str(), "client says bye");
    let closes = backend.closes.lock().unwrap().clone();
    assert_eq!(closes, vec![Some((4001, "client says bye".to_string()))]);
}

#[tokio::test]
async fn backend_close_code_and_reason_reach_the_client() {
    let (gw, _b) = echo_gateway().await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    ws.send(Message::text("close-me")).await.unwrap();
    let f = next_close(&mut ws).await;
    assert_eq!(u16::from(f.code), 4002);
    assert_eq!(f.reason.as_str(), "server says bye");
}

#[tokio::test]
async fn frame_pipelined_with_the_handshake_is_not_lost() {
    let (gw, _b) = echo_gateway().await;
    let mut bytes = upgrade_request("/", "").into_bytes();
    bytes.extend(client_frame(opcode::TEXT, b"right behind"));
    let (mut stream, resp) = raw_exchange(gw.addr, &bytes).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let mut got = resp.rest;
    let want = wsgate::frame::encode_frame(opcode::TEXT, true, b"right behind", None);
    while got.len() < want.len() {
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the echo");
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn frame_sent_by_the_backend_with_its_101_is_not_lost() {
    let greeting = wsgate::frame::encode_frame(opcode::TEXT, true, b"welcome", None);
    let mut response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec();
    response.extend_from_slice(&greeting);
    let (addr, _) = scripted_backend(response).await;
    let gw = Gateway::spawn(&route("greet", "/", &[format!("ws://{addr}")])).await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    assert_eq!(next_data(&mut ws).await, Message::text("welcome"));
}

#[tokio::test]
async fn subprotocol_negotiation() {
    let (gw, backend) = echo_gateway().await;
    let (_ws, resp) = connect_offering(&gw.url("/"), "chat, superchat").await;
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chat"
    );
    assert_eq!(
        backend.last_request().header("sec-websocket-protocol"),
        Some("chat, superchat")
    );
}

/// A client that says `Connection: Upgrade, close` gets a 101 whose `Connection` is
/// `upgrade` alone: the connection is switched to WebSocket, and a `close` option on the 101
/// (hyper 1.12 appended it) tells a strict client the connection ends after it.
#[tokio::test]
async fn a_101_carries_no_close_option() {
    let (gw, _b) = echo_gateway().await;
    let request =
        upgrade_request("/", "").replace("Connection: Upgrade", "Connection: Upgrade, close");
    let (_s, resp) = raw_exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let connection = resp
        .header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert_eq!(connection, "upgrade", "{}", resp.head);
}

#[tokio::test]
async fn no_subprotocol_offered_none_answered() {
    let (gw, _b) = echo_gateway().await;
    let (_ws, resp) = connect(&gw.url("/")).await;
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
}

#[tokio::test]
async fn backend_choosing_an_unoffered_subprotocol_is_a_bad_gateway() {
    let (addr, _) = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: evil\r\n\r\n".to_vec(),
    )
    .await;
    let request = upgrade_request("/", "Sec-WebSocket-Protocol: chat\r\n");
    let gw = gateway_to(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(resp.body, "invalid backend handshake\n");
    let gw = gateway_with_details(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(resp.body.contains("evil"), "{}", resp.body);
}

/// A backend that answers with what the route took out of its offer (a subprotocol outside
/// `subprotocols`, permessage-deflate under `strip`) is refused for what it was offered, not
/// for what the client offered: the reason blamed the client, which had offered both.
#[tokio::test]
async fn a_backend_answering_what_the_route_took_out_is_refused_for_its_own_offer() {
    let cases = [
        (
            "subprotocols = [\"a\"]\n",
            "Sec-WebSocket-Protocol: a, b\r\n",
            "Sec-WebSocket-Protocol: b\r\n",
            "backend chose subprotocol \"b\", which it was not offered (offered: a)",
        ),
        (
            "permessage_deflate = \"strip\"\n",
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
            "backend accepted extension \"permessage-deflate\", which it was not offered (the \
             client offered it; the route took it out of the backend's offer)",
        ),
    ];
    for (route_keys, offer, answer, reason) in cases {
        let (addr, _) = scripted_backend(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {{accept}}\r\n{answer}\r\n"
            )
            .into_bytes(),
        )
        .await;
        let gw = Gateway::spawn(&format!(
            "[limits]\nerror_detail = \"client\"\n{}{route_keys}",
            route("r", "/", &[format!("ws://{addr}")])
        ))
        .await;
        let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", offer).as_bytes()).await;
        assert_eq!(resp.status, 502, "{resp:?}");
        assert_eq!(
            resp.body,
            format!("invalid backend handshake: ws://{addr}: {reason}\n")
        );
    }
}

/// A gateway to `addr` that tells clients what went wrong with the backend (development).
async fn gateway_with_details(addr: SocketAddr) -> Gateway {
    Gateway::spawn(&format!(
        "[limits]\nerror_detail = \"client\"\n{}",
        route("r", "/", &[format!("ws://{addr}")])
    ))
    .await
}

#[tokio::test]
async fn backend_with_a_wrong_accept_key_is_a_bad_gateway() {
    let (addr, _) = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_vec(),
    )
    .await;
    let gw = gateway_to(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.body, "invalid backend handshake\n");
    let gw = gateway_with_details(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502);
    assert!(resp.body.contains("Sec-WebSocket-Accept"), "{}", resp.body);
}

/// RFC 6455 §4.1: a 101 whose `Upgrade` lists another protocol besides websocket fails the
/// connection; it was waved through while the list contained `websocket`.
#[tokio::test]
async fn backend_upgrading_to_more_than_websocket_is_a_bad_gateway() {
    let (addr, _) = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket, h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec(),
    )
    .await;
    let gw = gateway_to(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(resp.body, "invalid backend handshake\n");
    let gw = gateway_with_details(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(
        resp.body,
        format!(
            "invalid backend handshake: ws://{addr}: 101 with Upgrade: \"websocket, h2c\", \
             where RFC 6455 §4.1 wants websocket alone\n"
        )
    );
}

/// RFC 6455 §11.3.3: `Sec-WebSocket-Accept` must not appear more than once; a second one
/// after the right value is not waved through.
#[tokio::test]
async fn backend_with_two_accept_keys_is_a_bad_gateway() {
    let (addr, _) = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Accept: AAAA\r\n\r\n".to_vec(),
    )
    .await;
    let gw = gateway_with_details(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(
        resp.body.contains("more than one Sec-WebSocket-Accept"),
        "{}",
        resp.body
    );
}

#[tokio::test]
async fn routing_by_host_and_by_path() {
    let a = EchoBackend::spawn_supporting(&[]).await;
    let b = EchoBackend::spawn_supporting(&[]).await;
    let c = EchoBackend::spawn_supporting(&[]).await;
    let gw = Gateway::spawn(&format!(
        "{}\n{}\n[[route]]\nname = \"c-host\"\nhost = \"c.example\"\npath = \"/chat\"\nbackends = [\"{}\"]\n",
        route("root", "/", &[a.url()]),
        route("chat", "/chat", &[b.url()]),
        c.url()
    ))
    .await;
    connect(&gw.url("/other")).await;
    connect(&gw.url("/chat/room")).await;
    connect_with(&gw.url("/chat"), |r| {
        r.headers_mut()
            .insert("host", "C.Example:8080".parse().unwrap());
    })
    .await
    .unwrap();
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (1, 1, 1)
    );
    assert_eq!(b.last_request().uri, "/chat/room");
}

#[tokio::test]
async fn backend_request_is_rebuilt() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route(
        "r",
        "/app",
        &[format!("{}/internal?tenant=7", backend.url())],
    ))
    .await;
    connect_with(&gw.url("/app/room/1?x=1"), |r| {
        let h = r.headers_mut();
        h.insert("origin", "https://app.example".parse().unwrap());
        h.insert("cookie", "session=abc; theme=dark".parse().unwrap());
        h.insert("user-agent", "wsgate-test/1".parse().unwrap());
        h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-custom", "kept".parse().unwrap());
    })
    .await
    .unwrap();
    let seen = backend.last_request();
    assert_eq!(seen.uri, "/internal/room/1?tenant=7&x=1");
    assert_eq!(seen.header("host"), Some(backend.addr.to_string().as_str()));
    assert_eq!(seen.header("origin"), Some("https://app.example"));
    assert_eq!(seen.header("cookie"), Some("session=abc; theme=dark"));
    assert_eq!(seen.header("user-agent"), Some("wsgate-test/1"));
    assert_eq!(seen.header("x-custom"), Some("kept"));
    // The client's own forwarding claim is not trusted; ours replaces it.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str())
    );
    assert_eq!(
        seen.header("forwarded"),
        Some(format!("for=127.0.0.1;host=\"{}\";proto=http", gw.addr).as_str())
    );
    assert!(seen.header("keep-alive").is_none());
    // A fresh key on the backend leg.
    assert_ne!(seen.header("sec-websocket-key"), None);
    assert_eq!(seen.header("sec-websocket-version"), Some("13"));
}

/// Every refusal: status, reason in the body, and the backend never contacted.
#[tokio::test]
async fn refusals_have_precise_statuses_and_reasons() {
    let (gw, backend) = echo_gateway().await;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    // A valid upgrade request for `/` with its first `from` replaced by `to`.
    let edited = |from: &str, to: &str| upgrade_request("/", "").replacen(from, to, 1);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "plain GET",
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            426,
            "WebSocket endpoint",
        ),
        ("POST", edited("GET", "POST"), 400, "GET"),
        ("HTTP/1.0", edited("HTTP/1.1", "HTTP/1.0"), 400, "HTTP/1.1"),
        ("no Host", edited("Host: localhost\r\n", ""), 400, "Host"),
        (
            "Upgrade: h2c",
            edited("Upgrade: websocket", "Upgrade: h2c"),
            400,
            "Upgrade",
        ),
        (
            "Connection: keep-alive",
            edited("Connection: Upgrade", "Connection: keep-alive"),
            400,
            "Connection",
        ),
        ("no key", edited(key, ""), 400, "missing Sec-WebSocket-Key"),
        ("two keys", upgrade_request("/", key), 400, "more than one"),
        (
            "short key",
            edited("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
            400,
            "16 bytes",
        ),
        (
            "version 8",
            edited("Version: 13", "Version: 8"),
            426,
            "only 13",
        ),
        (
            "two versions",
            upgrade_request("/", "Sec-WebSocket-Version: 13\r\n"),
            400,
            "more than one Sec-WebSocket-Version value (\"13, 13\"): send one, 13",
        ),
        (
            "a list of versions",
            edited("Version: 13", "Version: 13, 13"),
            400,
            "more than one Sec-WebSocket-Version value (\"13, 13\"): send one, 13",
        ),
        (
            "body",
            upgrade_request("/", "Content-Length: 5\r\n"),
            400,
            "body",
        ),
        (
            "chunked",
            upgrade_request("/", "Transfer-Encoding: chunked\r\n"),
            400,
            "body",
        ),
    ];
    for (what, req, status, reason) in cases {
        let mut req = req.into_bytes();
        if what == "body" {
            req.extend_from_slice(b"hello");
        }
        if what == "chunked" {
            req.extend_from_slice(b"0\r\n\r\n");
        }
        let (_s, resp) = raw_exchange(gw.addr, &req).await;
        assert_eq!(resp.status, status, "{what}: {resp:?}");
        assert!(
            resp.body.contains(reason),
            "{what}: body {:?} lacks {reason:?}",
            resp.body
        );
        if status == 426 {
            assert_eq!(
                resp.header("sec-websocket-version").as_deref(),
                Some("13"),
                "{what}"
            );
            // RFC 9110 §15.5.22 and §7.8: a 426 names the upgrade, listed in Connection.
            assert_eq!(
                resp.header("upgrade").as_deref(),
                Some("websocket"),
                "{what}"
            );
            assert_eq!(
                resp.header("connection").as_deref(),
                Some("upgrade, close"),
                "{what}"
            );
        }
    }
    assert_eq!(
        backend.request_count(),
        0,
        "a refused handshake reached the backend"
    );
}

#[tokio::test]
async fn connection_tokens_across_lists_and_lines_are_accepted() {
    let (gw, _b) = echo_gateway().await;
    let req = upgrade_request("/", "Connection: keep-alive\r\n")
        .replacen("Connection: Upgrade", "Connection: keep-alive, UPGRADE", 1)
        .replacen("Upgrade: websocket", "Upgrade: WebSocket", 1);
    let (_s, resp) = raw_exchange(gw.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 101, "{resp:?}");
}

#[tokio::test]
async fn no_route_is_404() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("chat", "/chat", &[backend.url()])).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/elsewhere", "").as_bytes()).await;
    assert_eq!(resp.status, 404);
    assert!(resp.body.contains("no route"));
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let (gw, backend) = echo_gateway().await;
    let big = format!("X-Big: {}\r\n", "a".repeat(40 * 1024));
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", &big).as_bytes()).await;
    assert_eq!(resp.status, 431);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", &many).as_bytes()).await;
    assert_eq!(resp.status, 431);
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn backend_down_is_502() {
    let down = closed_port().await;
    let gw = gateway_to(down).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502);
    // The status and a generic reason: the backend's address and the OS error are for the
    // log, not for an unauthenticated client.
    assert_eq!(resp.body, "no backend reachable\n");
}

#[tokio::test]
async fn backend_failure_details_reach_the_client_only_with_error_detail_client() {
    let down = closed_port().await;
    for (detail, leaks) in [("", false), ("log", false), ("client", true)] {
        let limits = match detail {
            "" => String::new(),
            d => format!("[limits]\nerror_detail = \"{d}\"\n"),
        };
        let gw = Gateway::spawn(&format!(
            "{limits}{}",
            route("r", "/", &[format!("ws://{down}")])
        ))
        .await;
        let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
        assert_eq!(resp.status, 502, "{detail:?}");
        assert!(
            resp.body.starts_with("no backend reachable"),
            "{}",
            resp.body
        );
        for secret in [down.to_string().as_str(), "os error", "refused"] {
            assert_eq!(
                resp.body.contains(secret),
                leaks,
                "error_detail {detail:?}: {secret:?} in {:?}",
                resp.body
            );
        }
    }
}

#[tokio::test]
async fn silent_backend_is_504() {
    let (addr, _task) = silent_backend().await;
    let gw = Gateway::spawn(&format!(
        "{}[route.timeouts]\nbackend_handshake = \"300ms\"\n",
        route("r", "/", &[format!("ws://{addr}")])
    ))
    .await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 504);
    assert_eq!(resp.body, "backend did not answer the upgrade in time\n");
}

#[tokio::test]
async fn backend_refusal_is_passed_through() {
    let (addr, _) = scripted_backend(
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nX-Internal: secret\r\n\r\nnot for you\r\n".to_vec(),
    )
    .await;
    let gw = gateway_to(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.body, "not for you\r\n");
    assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
    assert!(resp.header("x-internal").is_none());
}

#[tokio::test]
async fn backend_refusal_body_is_bounded() {
    let body = "x".repeat(100_000);
    let (addr, _) = scripted_backend(
        format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
    .await;
    let gw = Gateway::spawn(&format!(
        "[limits]\nmax_error_body = \"1KiB\"\n{}",
        route("r", "/", &[format!("ws://{addr}")])
    ))
    .await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 500);
    assert_eq!(resp.body.len(), 1024);
}

#[tokio::test]
async fn a_2xx_answer_is_a_broken_handshake_and_fails_over() {
    // A backend that ignores the upgrade (a static server, a health page) answers 200: to an
    // HTTP/2 client a 2xx would mean "tunnel open", to an HTTP/1.1 one it is a page.
    let (plain, seen) =
        scripted_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()).await;
    let gw = gateway_with_details(plain).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(resp.body.contains("200 OK, not 101"), "{}", resp.body);
    // With another backend, the handshake moves on to it.
    let good = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}[route.health]\nmax_failures = 0\n",
        route("r", "/", &[format!("ws://{plain}"), good.url()])
    ))
    .await;
    let before = seen.lock().unwrap().len();
    for _ in 0..2 {
        let (mut ws, _) = connect(&gw.url("/")).await;
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("hi"));
    }
    assert_eq!(good.request_count(), 2);
    assert_eq!(seen.lock().unwrap().len(), before + 1);
}

#[tokio::test]
async fn interim_answers_before_the_101_are_read_past() {
    let greeting = wsgate::frame::encode_frame(opcode::TEXT, true, b"welcome", None);
    let mut response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
        HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        .to_vec();
    response.extend_from_slice(&greeting);
    let (addr, _) = scripted_backend(response).await;
    let gw = gateway_to(addr).await;
    let (mut ws, resp) = connect(&gw.url("/")).await;
    assert!(resp.headers().get("link").is_none());
    assert_eq!(next_data(&mut ws).await, Message::text("welcome"));
}

#[tokio::test]
async fn a_refusal_in_http_1_0_is_passed_through() {
    let (addr, _) =
        scripted_backend(b"HTTP/1.0 403 Forbidden\r\nContent-Length: 2\r\n\r\nno".to_vec()).await;
    let gw = gateway_to(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.body, "no");
}

#[tokio::test]
async fn a_refusal_whose_body_never_ends_is_passed_on_at_the_deadline() {
    // The 403's head is in at once; its body stops after 7 of 100 bytes and the backend
    // keeps the connection open. The refusal stands (with what came), and the second
    // backend is not tried: it is not a timeout.
    let (slow, _) =
        scripted_backend(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\npartial".to_vec())
            .await;
    let good = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}[route.timeouts]\nbackend_handshake = \"1s\"\n[route.health]\nmax_failures = 0\n",
        route("r", "/", &[format!("ws://{slow}"), good.url()])
    ))
    .await;
    // Round robin puts the refusing backend first for one of two handshakes.
    for _ in 0..2 {
        let before = good.request_count();
        let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
        if good.request_count() == before {
            assert_eq!(resp.status, 403, "{resp:?}");
            assert_eq!(resp.body, "partial");
            return;
        }
        assert_eq!(resp.status, 101, "{resp:?}");
    }
    panic!("round robin never put the refusing backend first");
}

#[tokio::test]
async fn the_chosen_subprotocol_is_passed_on_as_the_checked_token() {
    let (addr, _) = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat,\r\n\r\n".to_vec(),
    )
    .await;
    let gw = gateway_to(addr).await;
    let request = upgrade_request("/", "Sec-WebSocket-Protocol: chat, superchat\r\n");
    let (_s, resp) = raw_exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("sec-websocket-protocol").as_deref(),
        Some("chat")
    );
}

#[tokio::test]
async fn broken_backend_answer_is_502() {
    let (addr, _) = scripted_backend(b"this is not HTTP\r\n\r\n".to_vec()).await;
    let gw = gateway_to(addr).await;
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502);
}

#[tokio::test]
async fn failover_to_the_second_backend() {
    let down = closed_port().await;
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{down}"), backend.url()])).await;
    // Round robin starts at a different backend each time; every session must succeed.
    for i in 0..4 {
        let (mut ws, _) = connect(&gw.url("/")).await;
        ws.send(Message::text(format!("try {i}"))).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text(format!("try {i}")));
    }
    assert_eq!(backend.request_count(), 4);
}

#[tokio::test]
async fn round_robin_spreads_sessions() {
    let a = EchoBackend::spawn_supporting(&[]).await;
    let b = EchoBackend::spawn_supporting(&[]).await;
    let gw = Gateway::spawn(&route("r", "/", &[a.url(), b.url()])).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(connect(&gw.url("/")).await);
    }
    assert_eq!((a.request_count(), b.request_count()), (2, 2));
}

#[tokio::test]
async fn draining_refuses_new_upgrades_with_503() {
    let (gw, backend) = echo_gateway().await;
    gw.handle().sessions().start_draining();
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 503);
    assert!(resp.body.contains("shutting down"));
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn shutdown_closes_sessions_with_1001_and_waits_for_the_handshake() {
    let (mut gw, backend) = echo_gateway().await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    assert_eq!(gw.handle().sessions().len(), 1);
    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    assert_eq!(u16::from(next_close(&mut ws).await.code), 1001);
    // tungstenite answers the close; then the proxy closes TCP.
    while let Some(Ok(_)) = tokio::time::timeout(STEP, ws.next()).await.unwrap() {}
    drop(ws);
    let report = tokio::time::timeout(STEP, handle.wait()).await.unwrap();
    assert_eq!(
        report.sessions_ended, 0,
        "the closing handshake finished in time"
    );
    let closes = backend.closes.lock().unwrap().clone();
    assert_eq!(closes, vec![Some((1001, "going away".to_string()))]);
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_ends_sessions_after_the_grace_period() {
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[shutdown]\ngrace = \"200ms\"\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    let report = gw.shutdown().await;
    assert_eq!(report.sessions_ended, 1);
    // The client sees its connection end.
    let end = tokio::time::timeout(STEP, ws.next()).await.unwrap();
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout_while_others_are_served() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[timeouts]\nhandshake = \"300ms\"\n{}",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Others are served meanwhile.
    let (mut ws, _) = connect(&gw.url("/")).await;
    ws.send(Message::text("ok")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("ok"));
    for s in [&mut silent, &mut partial] {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(STEP, s.read(&mut buf))
            .await
            .expect("not closed")
            .unwrap_or(0);
        // Either closed outright or told 408 by hyper before closing.
        if n > 0 {
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
        }
    }
}

#[tokio::test]
async fn half_close_after_the_clients_close_frame_still_delivers_the_backends_reply() {
    let (gw, backend) = echo_gateway().await;
    let (mut stream, resp) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101);
    let mut payload = 4000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"half");
    stream
        .write_all(&client_frame(opcode::CLOSE, &payload))
        .await
        .unwrap();
    // The client sends FIN right after its close frame; the backend's reply must still come.
    stream.shutdown().await.unwrap();
    let mut got = resp.rest;
    tokio::time::timeout(STEP, stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        wsgate::frame::encode_frame(opcode::CLOSE, true, &payload, None)
    );
    assert_eq!(
        backend.closes.lock().unwrap().clone(),
        vec![Some((4000, "half".to_string()))]
    );
}

#[tokio::test]
async fn sessions_are_registered_while_live() {
    let (gw, _b) = echo_gateway().await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    let list = gw.handle().sessions().list();
    assert_eq!(list.len(), 1);
    assert_eq!(&*list[0].route.name, "echo");
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(STEP, ws.next()).await.unwrap() {}
    drop(ws);
    // The registry entry goes when the relay task ends.
    tokio::time::timeout(STEP, gw.handle().sessions().wait_for_count(|n| *n == 0))
        .await
        .expect("session still registered");
}

/// `wsgate echo` (the demo's backend) takes whatever wsgate forwards by default: a request
/// with `limits.max_headers` (100) fields, plus the forwarding headers wsgate adds. At
/// hyper's default of 100 fields it answered 431, which read as wsgate's own refusal.
#[tokio::test]
async fn the_built_in_echo_backend_takes_a_full_request_and_its_forwarding_headers() {
    let echo = wsgate::demo::start_echo_backend("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{echo}")])).await;
    // The request's own 5 fields and 95 more: 100, the default limit.
    let extra: String = (0..95).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", &extra).as_bytes()).await;
    assert_eq!(resp.status, 101, "{}", resp.body);
}

/// The built-in echo backend reached directly: its 426 names the protocol (RFC 9110
/// §15.5.22: a 426 without `Upgrade` had told the client nothing), and its greeting does not
/// claim the session came through wsgate.
#[tokio::test]
async fn the_built_in_echo_backend_on_its_own_says_so() {
    let echo = wsgate::demo::start_echo_backend("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (_s, resp) = raw_exchange(echo, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(resp.status, 426);
    assert_eq!(resp.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(resp.header("connection").as_deref(), Some("upgrade"));
    let (mut ws, _) = connect(&format!("ws://{echo}/")).await;
    match next_data(&mut ws).await {
        Message::Text(t) => assert!(t.as_str().contains("not through wsgate"), "{t}"),
        other => panic!("{other:?}"),
    }
}
