//! permessage-deflate at the edge: a route that strips the offer, and one that counts
//! inflated message sizes against `max_message_inflated`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use flate2::Compression;
use flate2::write::DeflateEncoder;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wsgate::frame::{FrameHeader, opcode};

use crate::support::*;

/// A client request offering permessage-deflate and another extension.
fn offering(url: &str, extensions: &str) -> http::Request<()> {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-extensions", extensions.parse().unwrap());
    req
}

#[tokio::test]
async fn strip_removes_the_deflate_offer_and_relays_messages() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}permessage_deflate = \"strip\"\n",
        route("r", "/", &[backend.url()])
    ))
    .await;
    let req = offering(
        &gw.url("/"),
        "permessage-deflate; client_max_window_bits, x-foo; a=1",
    );
    let (mut ws, resp) =
        tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), false)
            .await
            .unwrap();
    assert_eq!(resp.headers().get("sec-websocket-extensions"), None);
    let seen = backend.last_request();
    // Only the deflate offer is gone; the other extension passes untouched.
    assert_eq!(seen.header("sec-websocket-extensions"), Some("x-foo; a=1"));
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
}

#[tokio::test]
async fn allow_passes_the_offer_unchanged() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("r", "/", &[backend.url()])).await;
    let req = offering(&gw.url("/"), "permessage-deflate; client_max_window_bits");
    let (_ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let seen = backend.last_request();
    assert_eq!(
        seen.header("sec-websocket-extensions"),
        Some("permessage-deflate; client_max_window_bits")
    );
}

/// A backend that accepts permessage-deflate although it was stripped from its offer is
/// refused (502): its compressed frames would reach a client that never negotiated them.
#[tokio::test]
async fn strip_refuses_a_backend_that_compresses_anyway() {
    let response =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            .to_vec();
    let (addr, seen) = scripted_backend(response).await;
    let gw = Gateway::spawn(&format!(
        "{}permessage_deflate = \"strip\"\n",
        route("r", "/", &[format!("ws://{addr}")])
    ))
    .await;
    let (mut stream, resp) = raw_exchange(
        gw.addr,
        upgrade_request("/", "Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 502);
    let head = seen.lock().unwrap()[0].to_ascii_lowercase();
    assert!(!head.contains("permessage-deflate"), "{head}");
    let _ = stream.shutdown().await;
}

/// A backend whose permessage-deflate answer RFC 7692 §7 has a client fail (a parameter
/// nobody offered, a window size out of range, a parameter twice) is refused (502) before
/// the client gets a 101, with and without `max_message_inflated`.
///
/// So is one that leaves out what the client's only offer asked of the server, and one
/// that is not text (a byte past ASCII once let such an answer pass every check unread,
/// and turned `max_message_inflated` off).
#[tokio::test]
async fn a_deflate_answer_rfc_7692_forbids_is_refused() {
    let plain = "permessage-deflate";
    for (offer, answer) in [
        (plain, "permessage-deflate; client_max_window_bits=10"),
        (plain, "permessage-deflate; server_max_window_bits=7"),
        (plain, "permessage-deflate; foo=1"),
        (
            plain,
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        ),
        (
            plain,
            "permessage-deflate; client_max_window_bits=7; x=\u{e9}",
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate",
        ),
        (
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate",
        ),
    ] {
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {{accept}}\r\nSec-WebSocket-Extensions: {answer}\r\n\r\n"
        );
        let (addr, _) = scripted_backend(response.into_bytes()).await;
        for extra in ["", "max_message_inflated = \"1MiB\"\n"] {
            let gw = Gateway::spawn(&format!(
                "{}{extra}",
                route("r", "/", &[format!("ws://{addr}")])
            ))
            .await;
            let (_s, resp) = raw_exchange(
                gw.addr,
                upgrade_request("/", &format!("Sec-WebSocket-Extensions: {offer}\r\n")).as_bytes(),
            )
            .await;
            assert_eq!(
                resp.status, 502,
                "{answer} to {offer} ({extra}): {}",
                resp.head
            );
        }
    }
}

/// The backend's extension answer reaches the client as one checked list: an empty field
/// (which a client that offered nothing, or anything, fails on: RFC 6455 §9.1) is no
/// header at all, and stray commas are gone.
#[tokio::test]
async fn the_extension_answer_reaches_the_client_as_a_clean_list() {
    for (offer, answer, expected) in [
        ("", "", None),
        (
            "Sec-WebSocket-Extensions: permessage-deflate\r\n",
            ", permessage-deflate ,",
            Some("permessage-deflate"),
        ),
    ] {
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {{accept}}\r\nSec-WebSocket-Extensions: {answer}\r\n\r\n"
        );
        let (addr, _) = scripted_backend(response.into_bytes()).await;
        let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await;
        let (_s, resp) = raw_exchange(gw.addr, upgrade_request("/", offer).as_bytes()).await;
        assert_eq!(resp.status, 101, "{answer:?}: {}", resp.head);
        assert_eq!(
            resp.header("sec-websocket-extensions").as_deref(),
            expected,
            "{answer:?}: {}",
            resp.head
        );
    }
}

/// A backend that accepts permessage-deflate with `extensions` and records its request head
/// and every byte it receives after the 101, until the gateway closes the connection.
struct RawBackend {
    addr: std::net::SocketAddr,
    head: Arc<Mutex<String>>,
    got: Arc<Mutex<Vec<u8>>>,
    changed: Arc<Notify>,
    /// Set once the gateway closed the connection (FIN).
    closed: Arc<Mutex<bool>>,
}

impl RawBackend {
    async fn spawn(extensions: &'static str) -> RawBackend {
        Self::spawn_sending(extensions, Vec::new()).await
    }

    /// The same, writing `frames` right after its 101.
    async fn spawn_sending(extensions: &'static str, to_send: Vec<u8>) -> RawBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = RawBackend {
            addr: l.local_addr().unwrap(),
            head: Arc::default(),
            got: Arc::default(),
            changed: Arc::default(),
            closed: Arc::default(),
        };
        let (head, got, changed, closed) = (
            b.head.clone(),
            b.got.clone(),
            b.changed.clone(),
            b.closed.clone(),
        );
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let (text, rest) = read_request_head_and_rest(&mut s).await;
            let accept = wsgate::handshake::accept_key(request_key(&text).as_bytes());
            *head.lock().unwrap() = text;
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: {extensions}\r\n\r\n"
            );
            s.write_all(&[resp.as_bytes(), &to_send].concat())
                .await
                .unwrap();
            got.lock().unwrap().extend_from_slice(&rest);
            let mut chunk = [0u8; 65536];
            let mut replied = false;
            while let Ok(n @ 1..) = s.read(&mut chunk).await {
                got.lock().unwrap().extend_from_slice(&chunk[..n]);
                changed.notify_waiters();
                // Answers a close frame, as a peer does (the proxy's close to the other side
                // waits for that answer).
                let close = frames(&got.lock().unwrap())
                    .into_iter()
                    .find(|f| f.0 == opcode::CLOSE);
                if let Some((_, payload)) = close.filter(|_| !replied) {
                    replied = true;
                    let reply = wsgate::frame::encode_frame(opcode::CLOSE, true, &payload, None);
                    let _ = s.write_all(&reply).await;
                }
            }
            *closed.lock().unwrap() = true;
            changed.notify_waiters();
        });
        b
    }

    /// Waits until `done` holds of (bytes received, closed).
    async fn wait(&self, done: impl Fn(&[u8], bool) -> bool) {
        tokio::time::timeout(STEP, async {
            loop {
                let notified = self.changed.notified();
                if done(&self.got.lock().unwrap(), *self.closed.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("the backend never saw what the test waits for");
    }
}

/// A message as a permessage-deflate sender writes it (RFC 7692 §7.2.1): raw deflate,
/// sync-flushed, without the trailing `00 00 ff ff`.
fn compress(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.flush().unwrap();
    let mut out = e.finish().unwrap();
    // `finish` adds a final empty block after the flush's 00 00 ff ff: cut both.
    let end = out
        .windows(4)
        .rposition(|w| w == [0, 0, 0xff, 0xff])
        .unwrap();
    out.truncate(end);
    out
}

/// A compressed (RSV1) masked text frame.
fn compressed_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = client_frame(opcode::TEXT, payload);
    f[0] |= 0x40;
    f
}

/// The frames in `bytes` (unmasked): (opcode, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(Some((h, n))) = FrameHeader::parse(bytes) {
        let total = n + h.payload_len as usize;
        if bytes.len() < total {
            break;
        }
        let mut payload = bytes[n..total].to_vec();
        if let Some(m) = h.mask {
            wsgate::frame::apply_mask(&mut payload, m, 0);
        }
        out.push((h.opcode, payload));
        bytes = &bytes[total..];
    }
    out
}

/// The gateway in front of a deflate-accepting raw backend, with a 64 KiB wire limit and a
/// 1 MiB inflated limit, and a client that has offered permessage-deflate.
async fn counted_session(
    backend_ext: &'static str,
) -> (Gateway, RawBackend, TcpStream, RawResponse) {
    let backend = RawBackend::spawn(backend_ext).await;
    let gw = Gateway::spawn(&format!(
        "{}max_message = \"64KiB\"\nmax_message_inflated = \"1MiB\"\n",
        route("r", "/", &[format!("ws://{}", backend.addr)])
    ))
    .await;
    let (stream, resp) = raw_exchange(
        gw.addr,
        upgrade_request("/", "Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    (gw, backend, stream, resp)
}

#[tokio::test]
async fn a_message_that_inflates_past_the_limit_gets_1009() {
    let (_gw, backend, mut client, resp) =
        counted_session("permessage-deflate; server_no_context_takeover").await;
    // The backend was asked not to keep its window, and the client is told not to keep its.
    let head = backend.head.lock().unwrap().clone();
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{head}"
    );
    assert_eq!(
        resp.header("sec-websocket-extensions").as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    // Under both limits: passes unchanged.
    let text = b"hello, compressed world ".repeat(1000);
    let ok = compressed_frame(&compress(&text));
    client.write_all(&ok).await.unwrap();
    backend.wait(|got, _| got.len() >= ok.len()).await;
    // 4 MiB of zeros: about 4 KiB on the wire, far under max_message, 4x max_message_inflated.
    let bomb = compress(&vec![0u8; 4 << 20]);
    assert!(bomb.len() < 8 << 10, "{}", bomb.len());
    client.write_all(&compressed_frame(&bomb)).await.unwrap();
    let (code, reason) = close_code_of(&mut client).await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    // The bomb's frame was cut before its first byte: the backend got the first message
    // exactly, then the proxy's 1001.
    backend.wait(|_, closed| closed).await;
    let got = backend.got.lock().unwrap().clone();
    assert_eq!(got[..ok.len()], ok[..]);
    let after = frames(&got[ok.len()..]);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].0, opcode::CLOSE);
    assert_eq!(after[0].1[..2], 1001u16.to_be_bytes());
}

/// The limit passed in the middle of a frame whose start has already been forwarded: the rest
/// is not forwarded (the backend sees its TCP close, no close frame lands inside the frame),
/// and the client gets its 1009.
#[tokio::test]
async fn a_frame_cut_in_the_middle_is_not_finished() {
    let (_gw, backend, mut client, _) =
        counted_session("permessage-deflate; server_no_context_takeover").await;
    // One message: some text, then 4 MiB of zeros.
    let mut data = b"a harmless start ".repeat(100);
    data.extend(vec![0u8; 4 << 20]);
    let frame = compressed_frame(&compress(&data));
    // The head and the first 100 bytes go first, and reach the backend.
    client.write_all(&frame[..108]).await.unwrap();
    backend.wait(|got, _| got.len() >= 108).await;
    client.write_all(&frame[108..]).await.unwrap();
    let (code, _) = close_code_of(&mut client).await;
    assert_eq!(code, 1009);
    backend.wait(|_, closed| closed).await;
    let got = backend.got.lock().unwrap().clone();
    // What it received is a prefix of the frame: no more of it, and no close frame after.
    assert!(
        got.len() < frame.len() / 2,
        "{} of {}",
        got.len(),
        frame.len()
    );
    assert_eq!(got[..], frame[..got.len()]);
}

/// Reads raw frames from the gateway until a close frame: its code and reason.
async fn close_code_of(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    loop {
        if let Some((op, payload)) = frames(&buf).into_iter().find(|f| f.0 == opcode::CLOSE) {
            assert_eq!(op, opcode::CLOSE);
            let (code, reason) = wsgate::frame::parse_close(&payload);
            return (code.unwrap_or(0), reason);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP, stream.read(&mut chunk))
            .await
            .expect("no close frame")
            .unwrap();
        assert!(n > 0, "connection closed without a close frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The backend direction, with a backend that ignores the request for
/// `server_no_context_takeover`: its messages refer to earlier ones, so its inflater keeps
/// the window; they are counted right (under the limit: passed unchanged), and its bomb gets
/// the backend 1009 and the client 1001.
#[tokio::test]
async fn a_backend_that_keeps_its_window_is_counted_across_messages() {
    let msg = b"a backend message that repeats itself. ".repeat(100);
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..2 {
        e.write_all(&msg).unwrap();
        e.flush().unwrap();
        let all = e.get_ref();
        let payload = &all[wire.len()..all.len() - 4];
        let mut f = wsgate::frame::encode_frame(opcode::TEXT, true, payload, None);
        f[0] |= 0x40;
        sent.push(f.clone());
        wire = all.clone();
    }
    // The second message is shorter: it refers back to the first.
    assert!(
        sent[1].len() < sent[0].len(),
        "{} {}",
        sent[0].len(),
        sent[1].len()
    );
    let bomb = compress(&vec![0u8; 4 << 20]);
    let mut f = wsgate::frame::encode_frame(opcode::BINARY, true, &bomb, None);
    f[0] |= 0x40;
    let frames_out = [sent[0].clone(), sent[1].clone(), f].concat();
    let backend = RawBackend::spawn_sending("permessage-deflate", frames_out).await;
    let gw = Gateway::spawn(&format!(
        "{}max_message_inflated = \"1MiB\"\n",
        route("r", "/", &[format!("ws://{}", backend.addr)])
    ))
    .await;
    let (mut client, resp) = raw_exchange(
        gw.addr,
        upgrade_request("/", "Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        resp.header("sec-websocket-extensions").as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
    let mut buf = resp.rest;
    let (code, _) = loop {
        if let Some(c) = frames(&buf).into_iter().find(|f| f.0 == opcode::CLOSE) {
            break wsgate::frame::parse_close(&c.1);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP, client.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed without a close frame");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(code, Some(1001));
    // Both messages came through unchanged, and nothing of the bomb.
    let expected = [sent[0].clone(), sent[1].clone()].concat();
    assert_eq!(buf[..expected.len()], expected[..]);
    assert_eq!(frames(&buf).len(), 3);
    // The client answers; the backend then gets its 1009.
    client
        .write_all(&client_frame(opcode::CLOSE, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    backend
        .wait(|got, _| frames(got).iter().any(|f| f.0 == opcode::CLOSE))
        .await;
    let got = backend.got.lock().unwrap().clone();
    let close = frames(&got)
        .into_iter()
        .find(|f| f.0 == opcode::CLOSE)
        .unwrap();
    assert_eq!(close.1[..2], 1009u16.to_be_bytes());
}
