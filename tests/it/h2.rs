//! WebSockets over HTTP/2 (RFC 8441): hyper's h2 client opens extended CONNECT streams on a
//! TLS connection (ALPN h2, certificates made at test time) and on plain TCP (prior
//! knowledge); wsgate bridges each to an HTTP/1.1 backend.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::tls::*;
use crate::support::*;

type H2Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// An HTTP/2 connection to the gateway: the request sender and the connection's task
/// (which ends when the server closes the connection).
struct H2Conn {
    send: SendRequest<Empty<Bytes>>,
    task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    authority: String,
}

/// Opens TLS to the gateway with SNI `localhost`, offering ALPN `h2` and `http/1.1`.
async fn tls_offering_h2(ca: &TestCa, gw: &Gateway) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    ca.connector_alpn(&[b"h2", b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

async fn h2_over_tls(ca: &TestCa, gw: &Gateway) -> H2Conn {
    let tls = tls_offering_h2(ca, gw).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2_handshake(TokioIo::new(tls), format!("localhost:{}", gw.addr.port())).await
}

async fn h2_handshake<I>(io: I, authority: String) -> H2Conn
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(io)
        .await
        .unwrap();
    H2Conn {
        send,
        task: tokio::spawn(conn),
        authority,
    }
}

impl H2Conn {
    /// Sends an extended CONNECT for `path`; `edit` may add headers.
    async fn connect(
        &mut self,
        scheme: &str,
        path: &str,
        edit: impl FnOnce(&mut Request<Empty<Bytes>>),
    ) -> http::Response<hyper::body::Incoming> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(format!("{scheme}://{}{path}", self.authority))
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat")
            .body(Empty::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        edit(&mut req);
        self.send.ready().await.unwrap();
        tokio::time::timeout(STEP, self.send.send_request(req))
            .await
            .expect("no answer to CONNECT")
            .unwrap()
    }

    /// Opens a WebSocket stream; panics unless the answer is 200.
    async fn websocket(&mut self, scheme: &str, path: &str) -> H2Ws {
        let resp = self.connect(scheme, path, |_| {}).await;
        assert_eq!(resp.status(), StatusCode::OK);
        // RFC 8441 §5: no accept key over HTTP/2; the backend's subprotocol choice is kept.
        assert!(resp.headers().get("sec-websocket-accept").is_none());
        assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
        let up = hyper::upgrade::on(resp).await.unwrap();
        WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Client, Some(ws_config())).await
    }
}

async fn echo(ws: &mut H2Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    match next_data(ws).await {
        Message::Text(t) => assert_eq!(t.as_str(), text),
        other => panic!("unexpected {other:?}"),
    }
}

/// A fresh echo backend, a TLS gateway (ALPN h2 and http/1.1) with one route `app` at `/` to
/// it (plus `route_extra`), and the CA (keep it: its directory holds the gateway's
/// certificate files).
async fn tls_gateway(route_extra: &str) -> (EchoBackend, Gateway, TestCa) {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let gw = Gateway::spawn(&format!(
        "{}\n[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n{route_extra}\n",
        tls_listener(&cert, &key, ""),
        backend.url()
    ))
    .await;
    (backend, gw, ca)
}

/// [`tls_gateway`] and an HTTP/2 connection to it.
async fn h2_gateway(route_extra: &str) -> (EchoBackend, Gateway, H2Conn, TestCa) {
    let (backend, gw, ca) = tls_gateway(route_extra).await;
    let conn = h2_over_tls(&ca, &gw).await;
    (backend, gw, conn, ca)
}

#[tokio::test]
async fn many_websockets_on_one_h2_connection() {
    let (backend, gw, mut conn, _ca) = h2_gateway("").await;

    let mut a = conn.websocket("https", "/a").await;
    let mut b = conn.websocket("https", "/b").await;
    let mut c = conn.websocket("https", "/c").await;
    echo(&mut a, "to a").await;
    echo(&mut b, "to b").await;
    echo(&mut c, "to c").await;
    assert_eq!(gw.handle().sessions().len(), 3);

    // The backend leg is an ordinary HTTP/1.1 upgrade with a key of its own.
    let seen = backend.last_request();
    assert!(seen.header("sec-websocket-key").is_some());
    assert_eq!(seen.header("via"), Some("2 wsgate"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(conn.authority.as_str())
    );

    // Closing one stream's WebSocket ends that session alone.
    b.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: "bye from b".into(),
    }))
    .await
    .unwrap();
    let closes = backend.wait_closes(1).await;
    assert_eq!(closes[0], Some((1000, "bye from b".to_string())));
    echo(&mut a, "still there").await;
    echo(&mut c, "me too").await;
    a.close(None).await.unwrap();
    c.close(None).await.unwrap();
    backend.wait_closes(3).await;
    assert!(!conn.task.is_finished());
}

/// A backend's 426 reaches an HTTP/2 client as 400 with the backend's
/// `Sec-WebSocket-Version`: over HTTP/2 there is no `Upgrade`, and a 426 without one breaks
/// RFC 9110 §15.5.22 (it was passed on as 426, its `Upgrade` removed).
#[tokio::test]
async fn a_backends_426_is_a_400_over_h2() {
    let ca = TestCa::new();
    let (b, _seen) = scripted_backend(
        b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13, 8\r\nContent-Length: 0\r\n\r\n"
            .to_vec(),
    )
    .await;
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let gw = Gateway::spawn(&format!(
        "{}\n[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"ws://{b}\"]\n",
        tls_listener(&cert, &key, "")
    ))
    .await;
    let mut conn = h2_over_tls(&ca, &gw).await;
    let resp = conn.connect("https", "/", |_| {}).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["sec-websocket-version"], "13, 8");
    assert!(resp.headers().get("upgrade").is_none());
}

#[tokio::test]
async fn refusals_over_h2_use_http_statuses_and_keep_the_connection() {
    let (backend, _gw, mut conn, _ca) = h2_gateway("origins = [\"https://app.example\"]").await;

    let resp = conn
        .connect("https", "/", |r| {
            r.headers_mut()
                .insert("origin", "https://evil.example".parse().unwrap());
        })
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // Version mismatch: 400 with the supported version, never 426 or Upgrade over h2.
    let resp = conn
        .connect("https", "/", |r| {
            r.headers_mut()
                .insert("sec-websocket-version", "8".parse().unwrap());
        })
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["sec-websocket-version"], "13");
    assert!(resp.headers().get("upgrade").is_none());

    // A key has no place in RFC 8441.
    let resp = conn
        .connect("https", "/", |r| {
            r.headers_mut().insert(
                "sec-websocket-key",
                "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
            );
        })
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // More header fields than `max_headers` (100 by default): 431, as over HTTP/1.1 (hyper's
    // HTTP/2 server bounds only their bytes). Cookie crumbs count as one `Cookie`.
    let resp = conn
        .connect("https", "/", |r| {
            for i in 0..120 {
                r.headers_mut().append(
                    http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                    "v".parse().unwrap(),
                );
            }
        })
        .await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // `:scheme` is the WebSocket URI's, as http or https (RFC 8441 §5).
    let resp = conn.connect("foo", "/", |_| {}).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // A plain GET on the WebSocket route.
    let req = Request::get(format!("https://{}/", conn.authority))
        .version(Version::HTTP_2)
        .body(Empty::new())
        .unwrap();
    let resp = conn.send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get("upgrade").is_none());
    assert_eq!(backend.request_count(), 0);

    // The same connection still opens a permitted WebSocket, with a browser's 150 cookie
    // crumbs (one `Cookie` field, as they would be over HTTP/1.1).
    let resp = conn
        .connect("https", "/", |r| {
            r.headers_mut()
                .insert("origin", "https://app.example".parse().unwrap());
            for i in 0..150 {
                r.headers_mut()
                    .append("cookie", format!("c{i}=v").parse().unwrap());
            }
        })
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(backend.request_count(), 1);
}

/// A WebSocket whose backend stops reading holds what its client sent in its own stream
/// window only: the other WebSockets on the connection go on. The connection's window was no
/// larger than one stream's (hyper's default, 1 MiB each), so one stalled backend froze
/// every WebSocket a browser had on the connection. (The h2 library by hand: the test must
/// send exactly what the windows let it.)
#[tokio::test]
async fn a_stalled_websocket_does_not_stall_the_others_on_its_connection() {
    // A backend that takes the upgrade, then reads nothing.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let head = read_request_head(&mut s).await;
            let accept = wsgate::handshake::accept_key(request_key(&head).as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            tokio::io::AsyncWriteExt::write_all(&mut s, answer.as_bytes())
                .await
                .unwrap();
            held.push(s);
        }
    });
    let echo = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}{}",
        route("stall", "/stall", &[format!("ws://{stall}")]),
        route("echo", "/echo", &[echo.url()])
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut open = async |path: &str| {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("http://{}{path}", gw.addr))
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        let (resp, send) = client.send_request(req, false).unwrap();
        let resp = tokio::time::timeout(STEP, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        (send, resp.into_body())
    };
    let (mut stuck, _stuck_rx) = open("/stall").await;
    let (mut fine, mut fine_rx) = open("/echo").await;
    // Masked binary frames of 64 KiB, as a client sends them.
    let frame = |fill: u8| {
        let mut f = vec![0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        f.extend(std::iter::repeat_n(fill, 64 * 1024));
        Bytes::from(f)
    };
    // Send toward the stalled backend all the windows let through.
    let stream = frame(7).repeat(256);
    let mut sent = 0;
    loop {
        stuck.reserve_capacity(64 * 1024);
        let room = tokio::time::timeout(
            Duration::from_millis(1500),
            std::future::poll_fn(|cx| stuck.poll_capacity(cx)),
        )
        .await;
        match room {
            Ok(Some(Ok(n))) if n > 0 => {
                stuck
                    .send_data(Bytes::copy_from_slice(&stream[sent..sent + n]), false)
                    .unwrap();
                sent += n;
                assert!(sent + 64 * 1024 < stream.len(), "{sent} bytes taken");
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("{other:?}"),
            Err(_) => break,
        }
    }
    // One message on the other WebSocket still goes, and comes back.
    let mut message = frame(9);
    while !message.is_empty() {
        fine.reserve_capacity(message.len());
        let n = tokio::time::timeout(STEP, std::future::poll_fn(|cx| fine.poll_capacity(cx)))
            .await
            .expect("no window left on the connection: the other WebSocket cannot send")
            .unwrap()
            .unwrap();
        fine.send_data(message.split_to(n.min(message.len())), false)
            .unwrap();
    }
    let mut back = 0;
    while back < 4 + 64 * 1024 {
        let data = tokio::time::timeout(STEP, fine_rx.data())
            .await
            .expect("no echo")
            .unwrap()
            .unwrap();
        back += data.len();
        let _ = fine_rx.flow_control().release_capacity(data.len());
    }
}

#[tokio::test]
async fn a_reset_stream_ends_its_session_alone() {
    let (backend, _gw, mut conn, _ca) = h2_gateway("").await;
    let mut keep = conn.websocket("https", "/keep").await;
    let gone = conn.websocket("https", "/gone").await;
    echo(&mut keep, "hello").await;

    // Dropping the stream resets it (RST_STREAM CANCEL): the backend is told the client
    // went away.
    drop(gone);
    let closes = backend.wait_closes(1).await;
    assert_eq!(closes[0].as_ref().map(|c| c.0), Some(1001));
    echo(&mut keep, "unaffected").await;
}

/// A client whose closing handshake is over need not end its stream too: as over TCP, the
/// session ends when the backend is done, not at the closing handshake's 5 s deadline
/// (`CLOSE_TIMEOUT`, recorded as a timeout). The stream is ended with END_STREAM and then
/// reset with NO_ERROR (RFC 9113 §8.1: a server that has answered may end what the client
/// still sends).
#[tokio::test]
async fn a_finished_closing_handshake_ends_the_session_without_the_clients_end_stream() {
    let (backend, gw, mut conn, _ca) = h2_gateway("").await;
    let mut ws = conn.websocket("https", "/").await;
    echo(&mut ws, "hello").await;
    // The client's close; its reply comes back; the client keeps its half of the stream.
    ws.close(None).await.unwrap();
    while let Some(Ok(m)) = tokio::time::timeout(STEP, ws.next())
        .await
        .expect("no close reply")
    {
        assert!(m.is_close(), "{m:?}");
    }
    assert_eq!(backend.wait_closes(1).await.len(), 1);
    // Well inside CLOSE_TIMEOUT (5 s), which the session had waited out.
    tokio::time::timeout(
        Duration::from_secs(3),
        gw.handle().sessions().wait_for_count(|n| *n == 0),
    )
    .await
    .expect("the session waited for the client's END_STREAM");
    // The connection serves on.
    let mut next = conn.websocket("https", "/").await;
    echo(&mut next, "again").await;
    drop(ws);
}

/// The same when the proxy starts the close (here `idle`) and the backend is done first:
/// the stream got its END_STREAM then, and the client's answer, which comes after, ends
/// its part; the session does not wait for an END_STREAM from the client.
#[tokio::test]
async fn a_proxy_close_answered_over_h2_ends_without_the_clients_end_stream() {
    let (backend, gw, mut conn, _ca) = h2_gateway("[route.timeouts]\nidle = \"300ms\"\n").await;
    let mut ws = conn.websocket("https", "/").await;
    // The backend answers the proxy's 1001 and leaves; the client has not read it yet.
    let closes = backend.wait_closes(1).await;
    assert_eq!(closes[0].as_ref().map(|c| c.0), Some(1001));
    let close = next_data(&mut ws).await;
    assert!(close.is_close(), "{close:?}");
    // Reading on sends tungstenite's answer; the client keeps its half of the stream.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, ws.next()).await {}
    tokio::time::timeout(
        Duration::from_secs(3),
        gw.handle().sessions().wait_for_count(|n| *n == 0),
    )
    .await
    .expect("the session waited for the client's END_STREAM");
    drop(ws);
}

#[tokio::test]
async fn shutdown_sends_close_frames_then_goaway() {
    let (backend, mut gw, mut conn, _ca) = h2_gateway("").await;
    let mut a = conn.websocket("https", "/a").await;
    let mut b = conn.websocket("https", "/b").await;
    echo(&mut a, "x").await;

    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    for ws in [&mut a, &mut b] {
        // The close frame arrives on the stream while the connection is still up.
        loop {
            let m = tokio::time::timeout(STEP, ws.next())
                .await
                .expect("no close frame")
                .expect("stream ended without a close frame")
                .expect("websocket error");
            if let Message::Close(Some(f)) = m {
                assert_eq!(f.code, CloseCode::Away);
                break;
            }
        }
        // tungstenite queues the close reply; send it now.
        let _ = ws.flush().await;
    }
    // A client is done with a stream once the close handshake is: it ends the stream.
    drop((a, b));
    let closes = backend.wait_closes(2).await;
    assert!(closes.iter().all(|c| c.as_ref().map(|c| c.0) == Some(1001)));
    // The connection (whose GOAWAY came with the shutdown) ends cleanly after them.
    let ended = tokio::time::timeout(STEP, &mut conn.task)
        .await
        .expect("connection not closed after the sessions ended");
    assert!(ended.unwrap().is_ok(), "connection ended with an error");
    let report = tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .unwrap();
    assert_eq!(report.sessions_ended, 0);
}

#[tokio::test]
async fn http2_off_negotiates_http1() {
    let ca = TestCa::new();
    let backend = EchoBackend::spawn().await;
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nhttp2 = false\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n",
        cert.display(),
        key.display(),
        backend.url()
    ))
    .await;
    let tls = tls_offering_h2(&ca, &gw).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut ws, _) = wss_upgrade(&gw, tls).await;
    ws.send(Message::text("h1")).await.unwrap();
    assert_eq!(backend.last_request().header("via"), Some("1.1 wsgate"));
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: how an HTTP/2 client opens.
fn h2_preface_and_settings() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    out
}

/// Opens `s` with `opening`, which the gateway must close without an answer, count once as
/// an invalid head, and keep from the backend.
async fn assert_opening_refused<S>(gw: &Gateway, backend: &EchoBackend, s: &mut S, opening: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    s.write_all(opening).await.unwrap();
    let got = read_until_closed(s).await;
    assert!(got.is_empty(), "answered {got:?}");
    assert_eq!(
        gw.handle().refusals().into_iter().collect::<Vec<_>>(),
        vec![(("-".to_string(), "request_head_invalid"), 1)]
    );
    assert_eq!(backend.request_count(), 0);
}

/// `http2 = false` turns HTTP/2 off on a plain listener too: a client that opens with the
/// preface (h2c prior knowledge) is refused, not served HTTP/2. (Through hyper-util's auto
/// builder, which sniffed the preface whatever it was told, it was served.)
#[tokio::test]
async fn a_plain_listener_with_http2_off_refuses_the_h2_preface() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nhttp2 = false\n{}",
        route("app", "/", &[backend.url()])
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    assert_opening_refused(&gw, &backend, &mut tcp, &h2_preface_and_settings()).await;
}

/// ALPN decides: a TLS client that agreed on `http/1.1` and opens with the HTTP/2 preface
/// is refused (counted as an invalid head), not served HTTP/2.
#[tokio::test]
async fn alpn_http1_then_the_h2_preface_is_refused() {
    let (backend, gw, ca) = tls_gateway("").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut tls = ca
        .connector_alpn(&[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_opening_refused(&gw, &backend, &mut tls, &h2_preface_and_settings()).await;
}

/// ALPN decides the other way too: a TLS client that agreed on `h2` and sends an HTTP/1.1
/// upgrade is refused (RFC 9113 §3.4: closed without an answer, counted as an invalid head),
/// not given a `101`. (Served by hyper's HTTP/2 alone, it got SETTINGS and a close that
/// nothing counted.)
#[tokio::test]
async fn alpn_h2_then_an_http1_upgrade_is_refused() {
    let (backend, gw, ca) = tls_gateway("").await;
    let mut tls = tls_offering_h2(&ca, &gw).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let request = upgrade_request("/", "");
    assert_opening_refused(&gw, &backend, &mut tls, request.as_bytes()).await;
}

/// A client that agreed on `h2` and leaves in the middle of the preface has left: nothing is
/// refused or counted (as for a partial HTTP/1.1 head).
#[tokio::test]
async fn alpn_h2_and_part_of_the_preface_then_gone_is_not_a_refusal() {
    use tokio::io::AsyncWriteExt;
    let (backend, gw, ca) = tls_gateway("").await;
    let mut tls = tls_offering_h2(&ca, &gw).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(&h2_preface_and_settings()[..16])
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    let got = read_until_closed(&mut tls).await;
    assert!(got.is_empty(), "answered {got:?}");
    assert!(
        gw.handle().refusals().is_empty(),
        "{:?}",
        gw.handle().refusals()
    );
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn h2c_prior_knowledge_on_a_plain_listener() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("app", "/", &[backend.url()])).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut conn = h2_handshake(TokioIo::new(tcp), gw.addr.to_string()).await;
    let mut ws = conn.websocket("http", "/").await;
    echo(&mut ws, "cleartext h2").await;
    assert_eq!(
        backend.last_request().header("x-forwarded-proto"),
        Some("http")
    );
}

/// Cookie crumbs count as one field up to a thousand (browsers keep about 180 cookies a
/// site); past that each counts. With a large `max_header_bytes`, 24,569 crumbs (a byte each
/// on the wire) made the backend request's header map panic in the `http` crate.
#[tokio::test]
async fn thousands_of_cookie_crumbs_are_too_many_fields() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[limits]\nmax_header_bytes = \"1MiB\"\n{}",
        route("app", "/", &[backend.url()])
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut conn = h2_handshake(TokioIo::new(tcp), gw.addr.to_string()).await;
    let crumbs = |n: usize| {
        move |r: &mut Request<Empty<Bytes>>| {
            for i in 0..n {
                r.headers_mut()
                    .append("cookie", format!("c{}=v", i % 1000).parse().unwrap());
            }
        }
    };
    let resp = conn.connect("http", "/", crumbs(1000)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = conn.connect("http", "/", crumbs(24_569)).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let resp = conn.connect("http", "/", crumbs(1101)).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(backend.request_count(), 1);
}

#[tokio::test]
async fn the_sticky_cookie_rides_on_the_200_and_is_secure_over_tls() {
    let (_backend, _gw, mut conn, _ca) =
        h2_gateway("sticky = { cookie = \"srv\", ttl = \"10m\" }").await;
    let resp = conn.connect("https", "/", |_| {}).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("srv="), "{cookie}");
    for attr in [
        "Path=/",
        "Max-Age=600",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
    ] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
}

/// An HTTP/2 connection with no stream open for the listener's `handshake_timeout` is closed
/// with GOAWAY, as an idle keep-alive HTTP/1.1 connection is; a WebSocket on it keeps it
/// open for as long as it lives. (A client that answered the proxy's PINGs but opened no
/// stream held its connection, and a descriptor, for good.)
#[tokio::test]
async fn an_idle_h2_connection_is_closed_and_a_websocket_keeps_it_open() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"300ms\"\n{}",
        route("app", "/", &[backend.url()])
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut conn = h2_handshake(TokioIo::new(tcp), gw.addr.to_string()).await;
    let mut ws = conn.websocket("http", "/").await;
    // Three idle periods with the WebSocket open (it is quiet, the connection is not idle).
    tokio::time::sleep(Duration::from_millis(900)).await;
    echo(&mut ws, "still here").await;
    assert!(!conn.task.is_finished(), "closed under a live WebSocket");
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, ws.next()).await {}
    drop(ws);
    // No stream left: GOAWAY, and the connection ends cleanly.
    let ended = tokio::time::timeout(STEP, &mut conn.task)
        .await
        .expect("the idle HTTP/2 connection was not closed");
    assert!(ended.unwrap().is_ok(), "connection ended with an error");
}

/// One HTTP/2 frame as read off the wire: type, flags, stream id, payload.
struct RawFrame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads the next whole frame from `tcp` (`buf` keeps what came after it), within
/// [`STEP`]; `None` once the connection has ended.
async fn next_raw_frame(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawFrame> {
    use tokio::io::AsyncReadExt;
    loop {
        if buf.len() >= 9 {
            let len = ((buf[0] as usize) << 16) | ((buf[1] as usize) << 8) | buf[2] as usize;
            if buf.len() >= 9 + len {
                let frame = RawFrame {
                    ty: buf[3],
                    flags: buf[4],
                    stream: u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff,
                    payload: buf[9..9 + len].to_vec(),
                };
                buf.drain(..9 + len);
                return Some(frame);
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(STEP, tcp.read(&mut chunk))
            .await
            .expect("no frame")
        {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// An extended CONNECT (RFC 8441) for `/` at `app.test` on `stream`, END_HEADERS, in HPACK
/// literals: :method CONNECT, :protocol websocket, :scheme http, :path /, :authority,
/// sec-websocket-version 13.
fn raw_extended_connect(stream: u8) -> Vec<u8> {
    let mut block = vec![0x02u8, 7];
    block.extend_from_slice(b"CONNECT");
    block.extend_from_slice(&[0x00, 9]);
    block.extend_from_slice(b":protocol");
    block.push(9);
    block.extend_from_slice(b"websocket");
    block.extend_from_slice(&[0x86, 0x84, 0x41, 0x08]);
    block.extend_from_slice(b"app.test");
    block.extend_from_slice(&[0x00, 21]);
    block.extend_from_slice(b"sec-websocket-version");
    block.push(2);
    block.extend_from_slice(b"13");
    let mut out = vec![0, 0, block.len() as u8, 0x01, 0x04, 0, 0, 0, stream];
    out.extend_from_slice(&block);
    out
}

/// A raw h2c connection to `addr` with a WebSocket open on stream 1 (the preface, empty
/// SETTINGS, [`raw_extended_connect`], the server's SETTINGS acknowledged, up to the 200's
/// HEADERS): the connection and what was read past them.
async fn raw_h2c_websocket(addr: std::net::SocketAddr) -> (TcpStream, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    opening.extend_from_slice(&raw_extended_connect(1));
    tcp.write_all(&opening).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let f = next_raw_frame(&mut tcp, &mut buf)
            .await
            .expect("closed before the 200");
        if f.ty == 4 && f.flags & 1 == 0 {
            tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap();
        }
        if f.ty == 1 && f.stream == 1 {
            return (tcp, buf);
        }
    }
}

/// On shutdown (and so in a binary upgrade's drain) an HTTP/2 connection gets its GOAWAY at
/// once, with a WebSocket still open on it: the client opens its next WebSocket on a new
/// connection (another instance, or the successor), where it waited for its streams' ends
/// and a new WebSocket on it meanwhile got the drain's 503. The open stream goes on: its
/// 1001 comes, the connection stays up while the client has not answered it.
#[tokio::test]
async fn shutdown_sends_goaway_at_once_with_a_websocket_open() {
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
        route("app", "/", &[backend.url()])
    ))
    .await;
    let (mut tcp, mut buf) = raw_h2c_websocket(gw.addr).await;
    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    // GOAWAY and the stream's 1001, in either order; the client answers neither, and the
    // connection stays up.
    let (mut goaway, mut close) = (false, false);
    while !(goaway && close) {
        let f = next_raw_frame(&mut tcp, &mut buf)
            .await
            .expect("the connection ended before its GOAWAY and the stream's 1001");
        match f.ty {
            7 => {
                // NO_ERROR.
                assert_eq!(&f.payload[4..8], &[0, 0, 0, 0], "GOAWAY {:?}", f.payload);
                assert_eq!(
                    handle.sessions().len(),
                    1,
                    "GOAWAY only once the WebSocket had ended"
                );
                goaway = true;
            }
            0 if f.stream == 1 => {
                // A server frame: FIN + close, unmasked, code 1001.
                assert_eq!(f.payload[0], 0x88, "{:?}", f.payload);
                assert_eq!(&f.payload[2..4], &[0x03, 0xe9], "{:?}", f.payload);
                close = true;
            }
            _ => {}
        }
    }
    assert_eq!(handle.sessions().len(), 1, "the session ended unanswered");
    drop(handle);
}

/// A binary upgrade sends GOAWAY at the hand-over to an HTTP/2 connection carrying a
/// WebSocket, so its client opens its next WebSocket on a new connection, to the successor.
/// It came only with the drain, which waits for the connections accepted before the
/// hand-over to send their first request (up to `handshake_timeout`, here 30 s, held by a
/// connection that has sent nothing yet): until then a browser opened WebSockets on it, in
/// the old process. That fresh connection still gets its first request answered.
#[tokio::test]
async fn a_hand_over_sends_goaway_at_once_and_a_fresh_connection_is_still_answered() {
    use tokio::io::AsyncWriteExt;
    let tmp = TempDir::new("h2-handover");
    let backend = EchoBackend::spawn().await;
    let (plain, _seen) =
        scripted_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()).await;
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[upgrade]\nsocket = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listener]]\nlisten = \"127.0.0.1:0\"\n\
             handshake_timeout = \"30s\"\n{}http = true\nhttp_backends = [\"http://{plain}\"]\n",
            tmp.join("upgrade.sock").display(),
            route("app", "/", &[backend.url()])
        ),
    );
    let mut old = spawn_binary(&config, "json", "info");
    let mut log =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(old.stderr.take().unwrap()));
    let mut seen = Vec::new();
    let listening = wait_line(&mut log, &mut seen, "listening", |l| {
        l.contains("\"listening\"")
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let addr: std::net::SocketAddr = v["listen"].as_str().unwrap().parse().unwrap();
    wait_line(&mut log, &mut seen, "the upgrade socket", |l| {
        l.contains("binary upgrades")
    })
    .await;
    // A WebSocket over h2c.
    let (mut tcp, mut buf) = raw_h2c_websocket(addr).await;
    // A connection that has sent nothing yet, once the old process has accepted it (not left
    // in the queue for the successor): the old process owes it an answer.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    let admin: std::net::SocketAddr = seen
        .iter()
        .find(|l| l.contains("\"admin listener\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["admin"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .expect("the admin listener's address");
    tokio::time::timeout(STEP, async {
        while scrape(admin)
            .await
            .sum("wsgate_connections_accepted_total", &[])
            < 2.0
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the old process did not accept the second connection");
    let _new = spawn_binary(&config, "json", "info");
    wait_line(&mut log, &mut seen, "the hand-over", |l| {
        l.contains("handed the listening sockets over")
    })
    .await;
    // GOAWAY, while the WebSocket is open and before its 1001 (the drain has not begun).
    loop {
        let f = next_raw_frame(&mut tcp, &mut buf)
            .await
            .expect("the connection ended without a GOAWAY");
        assert!(
            !(f.ty == 0 && f.stream == 1),
            "the WebSocket's 1001 came before the GOAWAY: {:?}",
            f.payload
        );
        if f.ty == 7 {
            break;
        }
    }
    // The fresh connection's first request is answered, as its last, then it closes.
    fresh
        .write_all(b"GET /plain HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut fresh).await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "ok"),
        "{}",
        resp.head
    );
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    read_until_closed(&mut fresh).await;
}

/// A plain-TCP gateway with one route to an echo backend, an h2c connection to it that has
/// exchanged SETTINGS and opened no stream, then the gateway's shutdown, read up to the
/// GOAWAY it sends: the backend (kept alive), the gateway's handle, the connection, what of
/// it was read past the GOAWAY, and the GOAWAY.
async fn shut_down_with_an_h2_connection_and_no_stream()
-> (EchoBackend, wsgate::Handle, TcpStream, Vec<u8>, RawFrame) {
    use tokio::io::AsyncWriteExt;
    let backend = EchoBackend::spawn().await;
    let mut gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
        route("app", "/", &[backend.url()])
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server's SETTINGS: the connection is up.
    let f = next_raw_frame(&mut tcp, &mut buf)
        .await
        .expect("no SETTINGS");
    assert_eq!(f.ty, 4);
    tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap();
    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    loop {
        let f = next_raw_frame(&mut tcp, &mut buf)
            .await
            .expect("closed without a GOAWAY");
        if f.ty == 7 {
            return (backend, handle, tcp, buf, f);
        }
    }
}

/// An HTTP/2 connection that opens no stream before the handshake timeout (a browser's
/// preconnect) gets a GOAWAY before its close (RFC 9113 §6.8), as one idle after a request
/// does; it was dropped without one. It is still counted as a head timeout.
#[tokio::test]
async fn a_connection_that_opens_no_stream_in_time_gets_goaway() {
    use tokio::io::AsyncWriteExt;
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[timeouts]\nhandshake = \"300ms\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
        route("app", "/", &[backend.url()])
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let f = next_raw_frame(&mut tcp, &mut buf)
        .await
        .expect("no SETTINGS");
    assert_eq!(f.ty, 4);
    tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap();
    loop {
        let f = next_raw_frame(&mut tcp, &mut buf)
            .await
            .expect("closed without a GOAWAY");
        if f.ty == 7 {
            assert_eq!(&f.payload[4..8], &[0, 0, 0, 0], "GOAWAY {:?}", f.payload);
            break;
        }
    }
    read_until_closed(&mut tcp).await;
    let refusals = gw.handle().refusals();
    assert_eq!(
        refusals
            .get(&("-".to_string(), "request_head_timeout"))
            .copied(),
        Some(1),
        "{refusals:?}"
    );
}

/// An HTTP/2 connection that has opened no stream yet gets a GOAWAY on shutdown too (it was
/// dropped without one: a client could not tell a shutdown from a failure).
#[tokio::test]
async fn shutdown_sends_goaway_to_a_connection_with_no_stream_yet() {
    let (_backend, _handle, _tcp, _buf, goaway) =
        shut_down_with_an_h2_connection_and_no_stream().await;
    assert_eq!(
        &goaway.payload[4..8],
        &[0, 0, 0, 0],
        "GOAWAY {:?}",
        goaway.payload
    );
}

/// A connection with no stream yet at the shutdown gets the graceful GOAWAY (last stream id
/// 2^31-1, then a PING), so a request its client sends before it has read the GOAWAY is
/// served, answered 503 `draining` and counted on its route: it is not also counted as a
/// connection the shutdown closed unserved (unrouted `draining`), as it was at the stop.
/// (Found by review.)
#[tokio::test]
async fn a_request_crossing_the_shutdown_goaway_is_counted_once() {
    use tokio::io::AsyncWriteExt;
    let (_backend, handle, mut tcp, mut buf, _goaway) =
        shut_down_with_an_h2_connection_and_no_stream().await;
    // A GET on stream 1, as a client that had not read the GOAWAY yet sends it.
    let block = [&[0x82u8, 0x86, 0x84, 0x41, 0x08][..], b"app.test"].concat();
    let mut headers = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    headers.extend_from_slice(&block);
    tcp.write_all(&headers).await.unwrap();
    loop {
        let f = next_raw_frame(&mut tcp, &mut buf)
            .await
            .expect("the request crossing the GOAWAY got no answer");
        if f.ty == 1 && f.stream == 1 {
            break;
        }
    }
    let counts: Vec<_> = handle.refusals().into_iter().collect();
    assert_eq!(counts, vec![(("app".to_string(), "draining"), 1)]);
    drop(handle);
}

/// A gateway whose idle HTTP/2 connections get GOAWAY after 300 ms (keep-alive off), and a
/// raw connection to it that has sent the preface, empty SETTINGS and one GET (HPACK:
/// :method GET, :scheme http, :path /, :authority app.test), which the WebSocket route
/// answers 400: from there on it is idle.
async fn idle_h2_after_one_request() -> (EchoBackend, Gateway, TcpStream) {
    use tokio::io::AsyncWriteExt;
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"300ms\"\n\
         [http2]\nkeep_alive_interval = \"off\"\n{}",
        route("app", "/", &[backend.url()])
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    let block = [&[0x82u8, 0x86, 0x84, 0x41, 0x08][..], b"app.test"].concat();
    opening.extend_from_slice(&[0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1]);
    opening.extend_from_slice(&block);
    tcp.write_all(&opening).await.unwrap();
    (backend, gw, tcp)
}

/// An idle HTTP/2 connection whose client does not answer the GOAWAY's PING is closed all
/// the same, a `handshake_timeout` after the GOAWAY. hyper ends the connection once the
/// PING is acknowledged, so a client that never did held it for good (with keep-alive off,
/// or until the keep-alive's own timeout, 50 s by default).
#[tokio::test]
async fn an_idle_h2_connection_whose_client_is_silent_is_closed() {
    use tokio::io::AsyncReadExt;
    let (_backend, _gw, mut tcp) = idle_h2_after_one_request().await;
    // Then nothing, ever.
    let ended = tokio::time::timeout(STEP, async {
        let mut buf = [0u8; 4096];
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the idle connection was held past its GOAWAY"
    );
}

/// A stream that crosses the idle GOAWAY (hyper takes it: the first GOAWAY names the last
/// stream id possible) is served, and its client answers the PING: the connection stays as
/// long as that WebSocket is open. (Found by review: the GOAWAY's deadline dropped it
/// whatever was open on it.)
#[tokio::test]
async fn a_stream_opened_across_the_idle_goaway_is_not_cut() {
    use tokio::io::AsyncWriteExt;
    let (_backend, _gw, mut tcp) = idle_h2_after_one_request().await;
    // Read frames until the GOAWAY and its PING.
    let mut buf = Vec::new();
    let mut ping: Option<[u8; 8]> = None;
    let mut goaway = false;
    while !(goaway && ping.is_some()) {
        let f = next_raw_frame(&mut tcp, &mut buf)
            .await
            .expect("closed before GOAWAY");
        if f.ty == 7 {
            goaway = true;
        }
        if f.ty == 6 && f.flags & 1 == 0 {
            ping = Some(f.payload[..8].try_into().unwrap());
        }
        if f.ty == 4 && f.flags & 1 == 0 {
            tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap();
        }
    }
    // Extended CONNECT on stream 3, then the PING's answer.
    let mut out = raw_extended_connect(3);
    out.extend_from_slice(&[0, 0, 8, 6, 1, 0, 0, 0, 0]);
    out.extend_from_slice(&ping.unwrap());
    tcp.write_all(&out).await.unwrap();
    // Watch the connection for 2 s: it must stay open with the WebSocket on it.
    let t0 = tokio::time::Instant::now();
    let mut headers_on_3 = false;
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(f) = next_raw_frame(&mut tcp, &mut buf).await {
            if f.ty == 1 && f.stream == 3 {
                headers_on_3 = true;
            }
        }
    })
    .await;
    assert!(headers_on_3, "stream 3 was not answered");
    assert!(
        ended.is_err(),
        "the connection carrying an open WebSocket was dropped after {:?}",
        t0.elapsed()
    );
}
