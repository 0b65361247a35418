//! Plain HTTP beside WebSocket (`http = true`): requests and bodies both ways, streaming,
//! trailers, `100-continue`, limits, the same policy as the WebSocket path, framing
//! refusals, HTTP/2 clients, failover. The backends are small hyper servers (or raw sockets
//! where the test needs a misbehaving one); the clients are hyper's, or raw sockets for the
//! shapes a real client would not send.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    self, Gateway, STEP, TempDir, closed_port, connect_with, raw_exchange, read_response, scrape,
    upgrade_request,
};

type TestBody = UnsyncBoxBody<Bytes, Infallible>;
type FrameTx = tokio::sync::mpsc::Sender<Frame<Bytes>>;

/// A body fed frame by frame (data, then maybe trailers) through the returned sender; no
/// length, so chunked on HTTP/1.1. It ends when the sender is dropped.
fn channel() -> (FrameTx, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (Ok::<_, Infallible>(f), rx))
    });
    (tx, StreamBody::new(frames).boxed_unsync())
}

fn trailer(value: &'static str) -> Frame<Bytes> {
    let mut t = HeaderMap::new();
    t.insert("x-checksum", HeaderValue::from_static(value));
    Frame::trailers(t)
}
type Reply = Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>;
type Handler = Arc<dyn Fn(Request<Incoming>) -> Reply + Send + Sync>;

/// What the backend received of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    version: http::Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// A hyper backend (HTTP/1.1 and HTTP/2) answering every request with `handler`.
async fn backend(handler: Handler) -> SocketAddr {
    backend_with(handler, None).await
}

/// [`backend`], behind TLS when `tls` is given (ALPN decides HTTP/2 or HTTP/1.1).
async fn backend_with(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (handler, tls) = (handler.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => serve_backend_conn(stream, handler).await,
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            serve_backend_conn(stream, handler).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn serve_backend_conn<I>(io: I, handler: Handler)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let reply = handler(req);
        async move { Ok::<_, Infallible>(reply.await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed_unsync()
}

/// A backend that reads each whole request, records it, and answers 200 with its body; with
/// `x-want-trailers`, the answer carries the trailer `x-checksum: backend`.
async fn echo_backend() -> (SocketAddr, SeenLog) {
    echo_backend_with(None).await
}

async fn echo_backend_with(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, SeenLog) {
    let seen: SeenLog = Arc::default();
    let log = seen.clone();
    let handler: Handler = Arc::new(move |req: Request<Incoming>| {
        let log = log.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let collected = body.collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            log.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                version: parts.version,
                headers: parts.headers.clone(),
                body: body.clone(),
                trailers,
            });
            let mut resp = if parts.headers.contains_key("x-want-trailers") {
                let (tx, rx) = channel();
                tokio::spawn(async move {
                    let _ = tx.send(Frame::data(body)).await;
                    let _ = tx.send(trailer("backend")).await;
                });
                let mut r = Response::new(rx);
                r.headers_mut()
                    .insert("trailer", HeaderValue::from_static("x-checksum"));
                r
            } else {
                Response::new(full(body))
            };
            resp.headers_mut()
                .insert("x-backend", HeaderValue::from_static("echo"));
            // Hop-by-hop on the way back: must not reach the client.
            resp.headers_mut()
                .insert("connection", HeaderValue::from_static("x-hop"));
            resp.headers_mut()
                .insert("x-hop", HeaderValue::from_static("1"));
            resp
        })
    });
    (backend_with(handler, tls).await, seen)
}

/// A route named `app` on `/` with `http = true` toward `backends`, plus `extra` keys.
fn http_route(backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|a| format!("\"ws://{a}\"")).collect();
    format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [{}]\nhttp = true\n{extra}\n",
        list.join(", ")
    )
}

/// An HTTP/2 connection with prior knowledge (h2c), its driver spawned.
async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// One request over a fresh HTTP/1.1 connection.
async fn send<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .expect("no response in time")
        .expect("request failed")
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "app.test")
        .body(Empty::new())
        .unwrap()
}

/// The whole body and trailers.
async fn read_body(resp: Response<Incoming>) -> (Bytes, Option<HeaderMap>) {
    let collected = tokio::time::timeout(STEP, resp.into_body().collect())
        .await
        .expect("body did not end in time")
        .expect("body failed");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

/// The next data frame's bytes, or `None` at the end.
async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(STEP, body.frame())
            .await
            .expect("no chunk in time")?
            .expect("body failed");
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

fn mib() -> Vec<u8> {
    (0..1 << 20).map(|i: u32| (i % 251) as u8).collect()
}

/// Sends `data` through a channel body in 64 KiB chunks (no length: chunked on HTTP/1.1).
fn stream_body(data: Vec<u8>) -> TestBody {
    let (tx, rx) = channel();
    tokio::spawn(async move {
        for chunk in data.chunks(64 << 10) {
            if tx
                .send(Frame::data(Bytes::copy_from_slice(chunk)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn get_post_put_with_empty_whole_and_chunked_bodies() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let data = mib();

    let resp = send(
        gw.addr,
        Request::get("/page?x=1")
            .header("host", "app.test")
            .header("connection", "keep-alive, x-private")
            .header("x-private", "hop")
            .header("keep-alive", "timeout=5")
            .header("x-forwarded-for", "6.6.6.6")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["via"], "1.1 wsgate");
    assert_eq!(h["x-backend"], "echo");
    assert!(
        !h.contains_key("x-hop"),
        "hop-by-hop response header: {h:?}"
    );
    let id = h["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(read_body(resp).await.0.len(), 0);

    let resp = send(
        gw.addr,
        Request::post("/upload")
            .header("host", "app.test")
            .body(Full::new(Bytes::from(data.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(read_body(resp).await.0, data);

    let resp = send(
        gw.addr,
        Request::put("/upload")
            .header("host", "app.test")
            .body(stream_body(data.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(read_body(resp).await.0, data);

    let resp = send(
        gw.addr,
        Request::post("/empty")
            .header("host", "app.test")
            .header("content-length", "0")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    let g = &seen[0];
    assert_eq!((g.method.as_str(), g.uri.as_str()), ("GET", "/page?x=1"));
    assert_eq!(g.header("host"), Some(b.to_string().as_str()));
    assert_eq!(g.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(g.header("x-forwarded-host"), Some("app.test"));
    assert_eq!(g.header("via"), Some("1.1 wsgate"));
    assert_eq!(g.header("x-request-id"), Some(id.as_str()));
    assert!(g.header("traceparent").is_some());
    for gone in [
        "x-private",
        "keep-alive",
        "content-length",
        "transfer-encoding",
        "connection",
    ] {
        assert!(g.header(gone).is_none(), "{gone} reached the backend");
    }
    let p = &seen[1];
    assert_eq!(p.body.len(), 1 << 20);
    assert_eq!(p.header("content-length"), Some("1048576"));
    let c = &seen[2];
    assert_eq!(c.method, "PUT");
    assert_eq!(c.body, data);
    assert_eq!(c.header("transfer-encoding"), Some("chunked"));
    assert!(c.header("content-length").is_none());
    assert_eq!(seen[3].header("content-length"), Some("0"));
}

/// A backend whose response body is `chunks`, each sent only once the previous one was
/// released by the test (after the client received it): a proxy that buffered the response
/// would deliver nothing and the test would time out.
async fn gated_backend(
    content_type: &'static str,
    chunks: &'static [&'static str],
) -> (SocketAddr, tokio::sync::mpsc::UnboundedSender<()>) {
    let (release, released) = tokio::sync::mpsc::unbounded_channel::<()>();
    let released = Arc::new(tokio::sync::Mutex::new(released));
    let addr = backend(Arc::new(move |_req| {
        let released = released.clone();
        Box::pin(async move {
            let (tx, rx) = channel();
            tokio::spawn(async move {
                let mut released = released.lock().await;
                for (i, chunk) in chunks.iter().enumerate() {
                    if i > 0 && released.recv().await.is_none() {
                        return;
                    }
                    let data = Frame::data(Bytes::from_static(chunk.as_bytes()));
                    if tx.send(data).await.is_err() {
                        return;
                    }
                }
            });
            let mut r = Response::new(rx);
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static(content_type));
            r
        })
    }))
    .await;
    (addr, release)
}

async fn chunks_arrive_one_by_one(content_type: &'static str, chunks: &'static [&'static str]) {
    let (b, release) = gated_backend(content_type, chunks).await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let resp = send(gw.addr, get("/stream")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], content_type);
    let mut body = resp.into_body();
    let mut got = String::new();
    for (i, want) in chunks.iter().enumerate() {
        // The backend holds the rest until this chunk has reached the client.
        while got.len() < want.len() {
            let chunk = next_chunk(&mut body).await.expect("body ended early");
            got.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(got, *want, "chunk {i}");
        got.clear();
        release.send(()).unwrap();
    }
    assert!(next_chunk(&mut body).await.is_none());
}

#[tokio::test]
async fn a_slow_streaming_response_arrives_as_the_backend_sends_it() {
    chunks_arrive_one_by_one("application/octet-stream", &["first part", "second part"]).await;
}

#[tokio::test]
async fn server_sent_events_flush_one_by_one() {
    chunks_arrive_one_by_one(
        "text/event-stream",
        &[
            "data: one\n\n",
            "event: tick\ndata: two\n\n",
            "data: three\n\n",
        ],
    )
    .await;
}

/// Scrapes the admin listener's `/metrics`.
#[tokio::test]
async fn a_backend_that_resets_mid_body_cuts_the_response() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = Vec::new();
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                match s.read(&mut chunk).await {
                    Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
                .await;
            // A reset, not a FIN: the response is 990 bytes short.
            let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
            drop(s);
        }
    });
    let gw = Gateway::spawn(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        http_route(&[b], "")
    ))
    .await;
    let resp = send(gw.addr, get("/file")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "1000");
    let result = tokio::time::timeout(STEP, resp.into_body().collect())
        .await
        .expect("the cut body did not end");
    assert!(result.is_err(), "a cut body passed as complete");
    let admin = gw.handle().admin_addr().unwrap();
    let m = scrape(admin).await;
    let labels = [
        ("route", "app"),
        ("class", "2xx"),
        ("outcome", "backend_gone"),
    ];
    assert_eq!(m.value("wsgate_http_requests_total", &labels), 1.0);
}

#[tokio::test]
async fn bodies_over_max_request_body_get_413_before_or_while_streaming() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "max_request_body = \"1KiB\"")).await;

    // Declared: refused before the body is read, so the client never gets its 100.
    let (_s, resp) = raw_exchange(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 413);
    assert_eq!(
        resp.body,
        "request body over the route's limit of 1024 bytes\n"
    );

    // Chunked: cut while streaming.
    let resp = send(
        gw.addr,
        Request::post("/")
            .header("host", "app.test")
            .body(stream_body(vec![b'x'; 4096]))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (body, _) = read_body(resp).await;
    assert_eq!(body, "request body over the route's limit of 1024 bytes\n");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the backend answered a request it never fully got"
    );

    // At the limit: passes.
    let resp = send(
        gw.addr,
        Request::post("/")
            .header("host", "app.test")
            .body(Full::new(Bytes::from(vec![b'y'; 1024])))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

/// A client whose upload is refused may send all of it before it reads the answer (Python's
/// `http.client`, many scripts; a browser goes on for a while). The proxy answers, sends its
/// FIN, and reads and drops what still comes (the lingering close), so the upload completes,
/// the client reads the 413 and then a clean end. Closed at once with the body unread, the
/// connection would be reset: the client's upload would fail before it read anything (and
/// a reset can destroy the answer in flight).
#[tokio::test]
async fn a_refused_upload_is_answered_then_closed_the_lingering_way() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "max_request_body = \"1KiB\"")).await;
    // More than the two sockets' buffers hold: the proxy must read it for the upload to end.
    let body = 32 << 20;
    for case in ["declared", "chunked"] {
        let mut upload = b"POST /upload HTTP/1.1\r\nHost: app.test\r\n".to_vec();
        if case == "declared" {
            // Refused on its declared length, before any of the body is read.
            upload.extend(format!("Content-Length: {body}\r\n\r\n").as_bytes());
        } else {
            // Cut while streaming, once over the limit.
            upload.extend(format!("Transfer-Encoding: chunked\r\n\r\n{body:x}\r\n").as_bytes());
        }
        upload.extend(std::iter::repeat_n(b'x', body));
        if case == "chunked" {
            upload.extend_from_slice(b"\r\n0\r\n\r\n");
        }
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        if let Err(e) = s.write_all(&upload).await {
            panic!("{case}: the upload failed before its answer was read: {e}");
        }
        let resp = read_response(&mut s).await;
        assert_eq!(resp.status, 413, "{case}");
        assert_eq!(
            resp.body, "request body over the route's limit of 1024 bytes\n",
            "{case}"
        );
        s.shutdown().await.unwrap();
        let mut tail = Vec::new();
        let end = tokio::time::timeout(STEP, s.read_to_end(&mut tail))
            .await
            .expect("the proxy closes once the client has");
        assert!(end.is_ok(), "{case}: {end:?} instead of a clean end");
        assert!(
            tail.is_empty(),
            "{case}: {:?} after the answer",
            String::from_utf8_lossy(&tail)
        );
    }
    assert!(seen.lock().unwrap().is_empty());
}

/// The same over HTTP/2: after the 413 the proxy reads the rest of the stream and drops it,
/// so the upload goes on to its end and the stream ends as the client ends it. Were the body
/// dropped, the stream would be reset after the answer (`RST_STREAM(NO_ERROR)`), which stops
/// the upload, and which curl before 8 takes for an error, answer and all.
#[tokio::test]
async fn a_refused_http2_upload_is_read_to_its_end_not_reset() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "max_request_body = \"1KiB\"")).await;
    let mut sender = h2c(gw.addr).await;
    let url = format!("http://app.test:{}/upload", gw.addr.port());
    let (chunk, chunks) = (64 << 10, 64);
    let (tx, body) = channel();
    let req = Request::post(&url)
        .header("content-length", chunk * chunks)
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (answer, _) = read_body(resp).await;
    assert_eq!(
        answer,
        "request body over the route's limit of 1024 bytes\n"
    );
    // 4 MiB, four times the stream's window: it all goes out only if the proxy reads it.
    for i in 0..chunks {
        let data = Frame::data(Bytes::from(vec![b'x'; chunk]));
        if tokio::time::timeout(STEP, tx.send(data)).await.is_err() {
            panic!("chunk {i}: the upload stalled");
        }
        assert!(!tx.is_closed(), "chunk {i}: the stream was reset");
    }
    drop(tx);
    // The connection goes on serving.
    let req = Request::get(&url).body(full(Bytes::new())).unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the second request reached the backend"
    );
}

#[tokio::test]
async fn expect_100_continue_gets_its_100_then_the_answer() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /form HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let interim = read_response(&mut s).await;
    assert_eq!(interim.status, 100);
    s.write_all(b"hello").await.unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "hello");
    let seen = seen.lock().unwrap();
    assert!(seen[0].header("expect").is_none());
}

#[tokio::test]
async fn policy_refuses_plain_requests_as_it_refuses_handshakes() {
    let dir = TempDir::new("http-policy");
    let secret = dir.write("secret", "http-proxy-test-secret-0123456789\n");
    let ws = support::EchoBackend::spawn().await;
    let gw = Gateway::spawn(&http_route(
        &[ws.addr],
        &format!(
            "origins = [\"https://good.example\"]\nmissing_origin = \"refuse\"\n\
             [route.auth]\nrequire_cookies = [\"session\"]\n\
             [route.auth.jwt]\nfrom = [\"header\"]\nsecret_file = {:?}\n",
            secret.display().to_string()
        ),
    ))
    .await;
    let cases = [
        ("Origin: https://evil.example\r\n", 403),
        ("Origin: https://good.example\r\n", 403),
        ("Origin: https://good.example\r\nCookie: session=1\r\n", 401),
        (
            "Origin: https://good.example\r\nCookie: session=1\r\nAuthorization: Bearer nope\r\n",
            401,
        ),
    ];
    for (headers, status) in cases {
        let (_s, handshake) = raw_exchange(gw.addr, upgrade_request("/", headers).as_bytes()).await;
        let plain = format!("GET / HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n");
        let (_s, plain) = raw_exchange(gw.addr, plain.as_bytes()).await;
        assert_eq!(handshake.status, status, "{headers}: {}", handshake.body);
        assert_eq!(plain.status, handshake.status, "{headers}");
        assert_eq!(plain.body, handshake.body, "{headers}");
        assert_eq!(
            plain.header("www-authenticate"),
            handshake.header("www-authenticate"),
            "{headers}"
        );
    }
    // A same-origin page load carries no Origin: the plain request goes on to the next
    // check, where the handshake is refused for its missing Origin.
    let (_s, handshake) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(handshake.status, 403);
    let (_s, plain) = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(plain.status, 403);
    assert_eq!(plain.body, "required cookie \"session\" is missing\n");
}

#[tokio::test]
async fn smuggling_shapes_are_refused_and_never_reach_the_backend_ambiguous() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    for (request, reason) in [
        (
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"[..],
            None,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            Some("Transfer-Encoding other than chunked\n"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Some("Transfer-Encoding other than chunked\n"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            None,
        ),
        (
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            None,
        ),
    ] {
        let (_s, resp) = raw_exchange(gw.addr, request).await;
        let shown = String::from_utf8_lossy(request);
        assert_eq!(resp.status, 400, "{shown}");
        if let Some(reason) = reason {
            assert_eq!(resp.body, reason, "{shown}");
        }
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused shape reached the backend"
    );

    // Content-Length beside Transfer-Encoding: hyper's parser keeps the chunked reading and
    // drops the length before the proxy sees the request (RFC 9112 §6.3), and closes the
    // connection after the answer; the backend gets one unambiguous framing.
    let (mut s, resp) = raw_exchange(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(resp.status == 400 || resp.status == 200, "{}", resp.head);
    support::read_until_closed(&mut s).await;
    let seen = seen.lock().unwrap();
    assert!(seen.len() <= 1, "{seen:?}");
    for r in seen.iter() {
        assert_eq!(r.body, "hello");
        assert!(r.header("content-length").is_none() || r.header("transfer-encoding").is_none());
        assert_ne!(r.uri, "/smuggled");
    }
}

#[tokio::test]
async fn a_websocket_only_route_still_answers_426_to_a_plain_get() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&support::route("ws", "/", &[format!("ws://{b}")])).await;
    let (_s, resp) = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(resp.status, 426);
    assert!(seen.lock().unwrap().is_empty());
    // And a WebSocket still opens on an http = true route.
    let ws = support::EchoBackend::spawn().await;
    let gw = Gateway::spawn(&http_route(&[ws.addr], "")).await;
    let (mut client, _) = connect_with(&gw.url("/chat"), |_| {}).await.unwrap();
    use futures_util::SinkExt;
    client
        .send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(
        support::next_data(&mut client).await,
        tokio_tungstenite::tungstenite::Message::text("hi")
    );
}

#[tokio::test]
async fn http2_clients_are_proxied_to_an_http1_backend() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let mut sender = h2c(gw.addr).await;
    let url = format!("http://app.test:{}/h2?q=1", gw.addr.port());
    let req = Request::get(&url)
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["via"], "1.1 wsgate");
    assert!(!resp.headers().contains_key("connection"));
    let data = mib();
    let req = Request::post(&url)
        .body(Full::new(Bytes::from(data.clone())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(read_body(resp).await.0, data);
    let seen = seen.lock().unwrap();
    let g = &seen[0];
    assert_eq!(g.version, http::Version::HTTP_11);
    assert_eq!(g.uri, "/h2?q=1");
    assert_eq!(g.header("cookie"), Some("a=1; b=2"));
    assert_eq!(g.header("via"), Some("2 wsgate"));
    assert_eq!(
        g.header("x-forwarded-host"),
        Some(&*format!("app.test:{}", gw.addr.port()))
    );
    assert_eq!(seen[1].body, data);
}

#[tokio::test]
async fn trailers_pass_both_ways() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        http_route(&[b], "")
    ))
    .await;
    let (tx, rx) = channel();
    tokio::spawn(async move {
        let _ = tx.send(Frame::data(Bytes::from_static(b"payload"))).await;
        let _ = tx.send(trailer("client")).await;
    });
    let resp = send(
        gw.addr,
        Request::post("/rpc")
            .header("host", "app.test")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("x-want-trailers", "1")
            .body(rx)
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (body, trailers) = read_body(resp).await;
    assert_eq!(body, "payload");
    assert_eq!(
        trailers.expect("no response trailers")["x-checksum"],
        "backend"
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].header("te"), Some("trailers"));
        let t = seen[0].trailers.as_ref().expect("no request trailers");
        assert_eq!(t["x-checksum"], "client");
    }
    // A response that ended with its trailers is complete, not a client that left.
    let m = scrape(gw.handle().admin_addr().unwrap()).await;
    let done = [("route", "app"), ("class", "2xx"), ("outcome", "completed")];
    assert_eq!(m.value("wsgate_http_requests_total", &done), 1.0);
}

/// Nothing of a request reaches a backend whose connect failed, its body included (it waits
/// in the proxy until an attempt reads it): any request, with a body or without, goes whole
/// to the next backend.
#[tokio::test]
async fn a_request_fails_over_after_a_connect_failure_with_its_body_whole() {
    let dead = closed_port().await;
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[dead, b], "")).await;
    // Round robin from the first backend: the dead one, then the live one.
    let resp = send(gw.addr, get("/one")).await;
    assert_eq!(resp.status(), 200, "GET did not fail over");
    let resp = send(gw.addr, get("/two")).await;
    assert_eq!(resp.status(), 200);
    // The dead one's turn again: a chunked POST of 1 MiB.
    let resp = send(
        gw.addr,
        Request::post("/three")
            .header("host", "app.test")
            .body(stream_body(mib()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200, "POST did not fail over");
    assert_eq!(read_body(resp).await.0.len(), 1 << 20);
    let seen = seen.lock().unwrap();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(uris, ["/one", "/two", "/three"]);
    assert!(
        seen[2].body == mib(),
        "the body that failed over is not whole"
    );
}

/// A TLS backend that accepts the connection and never answers its handshake is a connect
/// failure after `backend_connect`, like one that never accepts: the request fails over.
#[tokio::test]
async fn a_tls_handshake_that_never_ends_is_a_connect_timeout_and_fails_over() {
    let (silent, _task) = support::silent_backend().await;
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"ws://{b}\"]\nhttp = true\n\
         http_backends = [\"https://{silent}\", \"http://{b}\"]\n\
         [route.timeouts]\nbackend_connect = \"200ms\"\n"
    ))
    .await;
    let resp = send(gw.addr, get("/one")).await;
    assert_eq!(
        resp.status(),
        200,
        "did not fail over from the silent TLS backend"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// `response_header_timeout` starts once the client's body is in: an upload slower than it
/// is not the backend's fault. A client that stops sending gets 408 after
/// `request_body_timeout`, and a backend that stops reading the body 504.
#[tokio::test]
async fn a_slow_upload_is_not_a_slow_backend_and_a_stalled_one_gets_408() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(
        &[b],
        "response_header_timeout = \"300ms\"\nrequest_body_timeout = \"250ms\"",
    ))
    .await;
    // Five chunks 100 ms apart: 400 ms of upload, each pause well under 250 ms. The
    // pauses are the slow client under test, not synchronisation.
    let (tx, body) = channel();
    tokio::spawn(async move {
        for i in 0..5u8 {
            if i > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            if tx
                .send(Frame::data(Bytes::from(vec![b'a' + i; 10])))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let req = Request::post("/slow-upload")
        .header("host", "app.test")
        .body(body)
        .unwrap();
    let resp = send(gw.addr, req).await;
    assert_eq!(
        resp.status(),
        200,
        "a slow upload was taken for a slow backend"
    );
    assert_eq!(read_body(resp).await.0.len(), 50);

    // One chunk, then nothing (the sender is held open).
    let (tx, body) = channel();
    tx.send(Frame::data(Bytes::from_static(b"start")))
        .await
        .unwrap();
    let req = Request::post("/stalled")
        .header("host", "app.test")
        .body(body)
        .unwrap();
    let resp = send(gw.addr, req).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        read_body(resp).await.0,
        "no request body received for 250ms\n"
    );
    drop(tx);
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the stalled request was answered"
    );
}

/// And its connection is closed: hyper's client wrote the body from the connection's own
/// task, which waited on the backend's socket and nothing else, so the connection, the
/// body's buffers and the backend's socket stayed until the backend closed (a hung one
/// never does).
#[tokio::test]
async fn a_backend_that_stops_reading_the_body_gets_504() {
    // It accepts, and reads nothing: the body fills the socket buffers and stops.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = l.local_addr().unwrap();
    let (held_tx, held) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let _ = held_tx.send(s);
    });
    let gw = Gateway::spawn(&http_route(
        &[b],
        "response_header_timeout = \"300ms\"\nmax_request_body = \"off\"",
    ))
    .await;
    let body = stream_body(vec![b'z'; 64 << 20]);
    let req = Request::put("/upload")
        .header("host", "app.test")
        .body(body)
        .unwrap();
    let resp = send(gw.addr, req).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(read_body(resp).await.0, "backend did not answer in time\n");
    // The proxy closes its connection to the backend, which still reads nothing: the
    // kernel's table shows it leave ESTABLISHED (its FIN waits behind the unread body, so
    // the backend could see it only by reading, which would unblock the old code too).
    let _held = held.await.unwrap();
    let to_backend = format!(" 0100007F:{:04X} 01 ", b.port());
    let established = || {
        std::fs::read_to_string("/proc/net/tcp")
            .unwrap()
            .lines()
            .any(|l| l.contains(&to_backend))
    };
    tokio::time::timeout(STEP, async {
        while established() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the proxy kept its connection to the backend after the 504");
}

/// hyper's client sends a GET or HEAD whose length it does not know without a body unless
/// the request says `Transfer-Encoding: chunked`: the client's body must not be lost.
#[tokio::test]
async fn a_chunked_get_body_reaches_the_backend() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    // (The test's own hyper client needs telling too.)
    let req = Request::get("/search")
        .header("host", "app.test")
        .header("transfer-encoding", "chunked")
        .body(stream_body(b"{\"query\": 1}".to_vec()))
        .unwrap();
    let resp = send(gw.addr, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(read_body(resp).await.0, "{\"query\": 1}");
    assert_eq!(seen.lock().unwrap()[0].body, "{\"query\": 1}");
}

/// `curl --http2 http://...` offers `Upgrade: h2c` on every request: a route that proxies
/// plain HTTP declines the offer by serving the request (RFC 9110 §7.8), and the backend
/// gets neither the offer nor its settings.
#[tokio::test]
async fn an_offer_to_upgrade_to_another_protocol_is_served_as_a_plain_request() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let (_s, resp) = raw_exchange(
        gw.addr,
        b"GET /h2c HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    // Its settings are this connection's even when `Connection` does not name them.
    let (_s, resp) = raw_exchange(
        gw.addr,
        b"GET /h2c-unnamed HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    // RFC 9110 §7.8: `Upgrade` in an HTTP/1.0 request is ignored, a websocket one too.
    let (_s, resp) = raw_exchange(
        gw.addr,
        b"GET /old HTTP/1.0\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].uri, "/h2c");
    assert_eq!(seen[1].uri, "/h2c-unnamed");
    assert_eq!(seen[2].uri, "/old");
    for seen in &seen[..3] {
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !seen.headers.contains_key(name),
                "{name} reached the backend"
            );
        }
    }
}

/// An HTTP/1.0 client that asks to keep alive is told `close` when the response's length is
/// unknown (no chunked coding in 1.0: the close ends the body), and kept alive when it is
/// known. It was told `keep-alive`, then the connection closed under it.
#[tokio::test]
async fn an_http10_keep_alive_response_of_unknown_length_says_close() {
    let handler: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            if req.uri().path() == "/known" {
                return Response::new(full("known"));
            }
            let (tx, body) = channel();
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from_static(b"hello"))).await;
            });
            Response::new(body)
        })
    });
    let b = backend(handler).await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let keep_alive =
        |path: &str| format!("GET {path} HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n");

    let (mut s, resp) = raw_exchange(gw.addr, keep_alive("/unknown").as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert!(resp.head.starts_with("HTTP/1.0 200"), "{}", resp.head);
    assert_eq!(
        resp.header("connection").as_deref(),
        Some("close"),
        "{}",
        resp.head
    );
    let mut body = resp.rest.clone();
    tokio::time::timeout(STEP, s.read_to_end(&mut body))
        .await
        .expect("the body ends with the connection")
        .unwrap();
    assert_eq!(body, b"hello");

    let (mut s, resp) = raw_exchange(gw.addr, keep_alive("/known").as_bytes()).await;
    assert_eq!(
        resp.header("connection").as_deref(),
        Some("keep-alive"),
        "{}",
        resp.head
    );
    assert_eq!(resp.body, "known");
    s.write_all(keep_alive("/known").as_bytes()).await.unwrap();
    let again = read_response(&mut s).await;
    assert_eq!((again.status, again.body.as_str()), (200, "known"));
}

/// A backend that answers in HTTP/1.0 (with `Connection: keep-alive`) does not get the next
/// request in HTTP/1.0: hyper's client speaks 1.0 on a connection once its peer has, and in
/// 1.0 sends a body of unknown length as none. A chunked upload after such an answer reached
/// the backend empty, recorded `completed`, whichever client it came from.
#[tokio::test]
async fn a_connection_whose_backend_answered_in_http10_is_not_reused() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = l.local_addr().unwrap();
    // Every request's head and body as the backend read them.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut s = tokio::io::BufReader::new(s);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        match s.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let lower = head.to_ascii_lowercase();
                    let mut body = Vec::new();
                    if lower.contains("transfer-encoding: chunked") {
                        loop {
                            let mut size = String::new();
                            s.read_line(&mut size).await.unwrap();
                            let n = usize::from_str_radix(size.trim(), 16).unwrap();
                            let mut chunk = vec![0; n + 2];
                            s.read_exact(&mut chunk).await.unwrap();
                            body.extend_from_slice(&chunk[..n]);
                            if n == 0 {
                                break;
                            }
                        }
                    } else if let Some(n) = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                    {
                        body = vec![0; n.trim().parse().unwrap()];
                        s.read_exact(&mut body).await.unwrap();
                    }
                    let _ = seen_tx.send((head, body));
                    let answer =
                        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
                    if s.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let (_s, first) = raw_exchange(
        gw.addr,
        b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((first.status, first.body.as_str()), (200, "ok"));
    seen.recv().await.unwrap();
    let (_s, upload) = raw_exchange(
        gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
          a\r\nhello-body\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(upload.status, 200);
    let (head, body) = tokio::time::timeout(STEP, seen.recv())
        .await
        .expect("the upload reached the backend")
        .unwrap();
    assert!(head.starts_with("POST /upload HTTP/1.1\r\n"), "{head}");
    assert_eq!(body, b"hello-body", "{head}");
}

/// A backend that answers before it has read the request's body may read that body as the
/// next request (a CL.0 desync): the connection must not go back to the pool, or the next
/// client's request, on it, completes what this client sent. (nginx keeps a connection only
/// once the request body was sent.) Found by black-box testing: the victim got the answer to
/// the attacker's smuggled request, its own request line and cookie in that request's head.
#[tokio::test]
async fn a_connection_whose_backend_answered_before_the_body_is_not_reused() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = l.local_addr().unwrap();
    // Each request line the backend read, with its connection's number.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    tokio::spawn(async move {
        let mut conns = 0;
        while let Ok((s, _)) = l.accept().await {
            conns += 1;
            let (conn, seen_tx) = (conns, seen_tx.clone());
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut s = tokio::io::BufReader::new(s);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        match s.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if head.is_empty() {
                            let _ = seen_tx.send((conn, line.trim_end().to_string()));
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    // Answers at once, never reading a body: what follows the head on the
                    // connection is its next request.
                    let path = head.split(' ').nth(1).unwrap_or("?").to_string();
                    let answer = if path == "/early" {
                        "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno".to_string()
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                            path.len()
                        )
                    };
                    if s.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nX-Prefix: ";
    let (mut attacker, early) = raw_exchange(
        gw.addr,
        format!(
            "POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(early.status, 403);
    let (early_conn, line) = seen.recv().await.unwrap();
    assert_eq!(line, "POST /early HTTP/1.1");
    attacker.write_all(smuggled.as_bytes()).await.unwrap();
    // The body went out on the early answer's connection, where the backend reads it as a
    // request line.
    let (conn, line) = tokio::time::timeout(STEP, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (conn, line.as_str()),
        (early_conn, "GET /smuggled HTTP/1.1")
    );
    let (_s, victim) = raw_exchange(
        gw.addr,
        b"GET /victim HTTP/1.1\r\nHost: a\r\nCookie: secret=1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((victim.status, victim.body.as_str()), (200, "/victim"));
    let (conn, line) = seen.recv().await.unwrap();
    assert_eq!(line, "GET /victim HTTP/1.1");
    assert_ne!(
        conn, early_conn,
        "the victim's request went on the early answer's connection"
    );
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host` is answered 400; HTTP/1.0 has none.
#[tokio::test]
async fn an_http11_request_without_host_gets_400() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let (_s, resp) = raw_exchange(gw.addr, b"GET /no-host HTTP/1.1\r\n\r\n").await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.body, "missing Host header\n");
    // In absolute form too (RFC 9112 §3.2: the client must send Host anyway), and an empty
    // one names no host at all (RFC 9110 §4.2.1).
    for request in [
        &b"GET http://app.test/abs HTTP/1.1\r\n\r\n"[..],
        b"GET /empty HTTP/1.1\r\nHost: \r\n\r\n",
    ] {
        let (_s, resp) = raw_exchange(gw.addr, request).await;
        assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(request));
    }
    let (_s, resp) = raw_exchange(gw.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    let seen = seen.lock().unwrap();
    let uris: Vec<String> = seen.iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/old"]);
    // An HTTP/1.0 request without a host forwards none (not an empty one).
    assert_eq!(seen[0].header("x-forwarded-host"), None);
    let forwarded = seen[0].header("forwarded").unwrap_or_default();
    assert!(!forwarded.contains("host="), "{forwarded}");
}

/// A kept-alive connection's next head that never completes is a head timeout, counted and
/// logged as on a first request (a slowloris after one request left no record: its timeout
/// read as an idle connection's); an idle kept-alive connection closing at the same timeout
/// is none.
#[tokio::test]
async fn a_second_head_that_never_completes_is_recorded_and_an_idle_one_is_not() {
    let (b, _seen) = echo_backend().await;
    let mut gw = Logged::spawn(&format!(
        "handshake_timeout = \"300ms\"\n{}",
        http_route(&[b], "")
    ))
    .await;
    let request = b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let (mut idle, first) = raw_exchange(gw.addr, request).await;
    assert_eq!(first.status, 200);
    let (mut slow, first) = raw_exchange(gw.addr, request).await;
    assert_eq!(first.status, 200);
    slow.write_all(b"GET /b HTTP/1.1\r\nHo").await.unwrap();
    crate::support::read_until_closed(&mut idle).await;
    crate::support::read_until_closed(&mut slow).await;
    let line = gw
        .wait_line("the head timeout", |l| l.contains("request_head_timeout"))
        .await;
    let r = record(&line);
    assert_eq!(r["event"], "refused");
    // A request after both closes: its record comes after anything they led to.
    let (_c, resp) = raw_exchange(gw.addr, b"GET /c HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(resp.status, 200);
    gw.wait_line("the last request's record", |l| {
        l.contains("\"path\":\"/c\"")
    })
    .await;
    let timeouts = gw
        .log
        .iter()
        .filter(|l| l.contains("request_head_timeout"))
        .count();
    assert_eq!(timeouts, 1, "{:#?}", gw.log);
}

/// A bad head on a kept-alive connection's later request gets wsgate's answer with its
/// reason, as on a first request: it got hyper's bare `400` (`content-length: 0`), the
/// reason only in the log.
#[tokio::test]
async fn a_bad_head_after_a_kept_alive_request_gets_the_reason() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let (mut tcp, first) =
        raw_exchange(gw.addr, b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(first.status, 200);
    tcp.write_all(
        b"GET /b HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    )
    .await
    .unwrap();
    let second = read_response(&mut tcp).await;
    assert_eq!(second.status, 400, "{}", second.head);
    assert!(
        second
            .body
            .starts_with("bad request: the request head is not valid HTTP/1.1"),
        "{second:?}"
    );
    assert_eq!(second.header("connection").as_deref(), Some("close"));
    crate::support::read_until_closed(&mut tcp).await;
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// `max_header_bytes` holds for every request of a kept-alive connection, not only its
/// first: hyper checks the size of its read buffer before each read, and once that buffer
/// has grown a whole larger head arrives in one read and parses. A 40 KB head (the default
/// limit is 32 KiB) reached the backend as a connection's second request.
#[tokio::test]
async fn max_header_bytes_holds_for_every_request_of_a_kept_alive_connection() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let (mut tcp, first) =
        raw_exchange(gw.addr, b"GET /a HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(first.status, 200);
    let big = "a".repeat(40_000);
    tcp.write_all(format!("GET /b HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let second = read_response(&mut tcp).await;
    assert_eq!(second.status, 431, "{}", second.head);
    assert_eq!(
        second.body,
        "request header fields too large: the request head is over 32768 bytes\n"
    );
    assert_eq!(second.header("connection").as_deref(), Some("close"));
    let uris: Vec<String> = seen.lock().unwrap().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/a"]);
    // Just under the limit, on a fresh connection: served.
    let fits = "a".repeat(32_000);
    let (_s, resp) = raw_exchange(
        gw.addr,
        format!("GET /c HTTP/1.1\r\nHost: app.test\r\nX-Big: {fits}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200);
}

/// RFC 9110 §7.6.2: an OPTIONS or TRACE request whose `Max-Forwards` is 0 is answered by
/// the proxy (TRACE with the request it got, credentials left out); above 0 it goes on with
/// the count lowered by one; other methods pass it unchanged; a count that is not digits is
/// refused. Over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn max_forwards_is_counted_down_and_answered_at_zero() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;

    let (_s, resp) = raw_exchange(
        gw.addr,
        b"OPTIONS /x HTTP/1.1\r\nHost: app.test\r\nMax-Forwards: 0\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.header("content-length").as_deref(), Some("0"));
    assert!(resp.header("x-request-id").is_some(), "{}", resp.head);

    let (_s, resp) = raw_exchange(
        gw.addr,
        b"TRACE /t?q=1 HTTP/1.1\r\nHost: app.test\r\nMax-Forwards: 0\r\nX-Probe: yes\r\n\
          Cookie: session=secret\r\nAuthorization: Bearer secret\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.header("content-type").as_deref(), Some("message/http"));
    assert!(
        resp.body.starts_with("TRACE /t?q=1 HTTP/1.1\r\n"),
        "{:?}",
        resp.body
    );
    assert!(resp.body.contains("x-probe: yes\r\n"), "{:?}", resp.body);
    assert!(resp.body.contains("max-forwards: 0\r\n"), "{:?}", resp.body);
    assert!(resp.body.ends_with("\r\n\r\n"), "{:?}", resp.body);
    assert!(!resp.body.contains("secret"), "{:?}", resp.body);
    assert!(seen.lock().unwrap().is_empty(), "a request at 0 went on");

    for method in ["OPTIONS", "TRACE"] {
        let req = format!("{method} /on HTTP/1.1\r\nHost: app.test\r\nMax-Forwards: 3\r\n\r\n");
        let (_s, resp) = raw_exchange(gw.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        let (_s, resp) = raw_exchange(
            gw.addr,
            b"GET /get HTTP/1.1\r\nHost: app.test\r\nMax-Forwards: 0\r\n\r\n",
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.head);
        let seen = seen.lock().unwrap();
        let [.., forwarded, get] = &seen[..] else {
            panic!("{} requests reached the backend", seen.len());
        };
        assert_eq!(forwarded.method, method);
        assert_eq!(forwarded.headers["max-forwards"], "2");
        assert_eq!(get.headers["max-forwards"], "0", "GET may ignore it");
    }

    for value in ["-1", "1x", "", "1, 2"] {
        let req =
            format!("OPTIONS /bad HTTP/1.1\r\nHost: app.test\r\nMax-Forwards: {value}\r\n\r\n");
        let (_s, resp) = raw_exchange(gw.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 400, "Max-Forwards: {value:?}");
        assert_eq!(resp.body, "invalid Max-Forwards\n");
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "a refused request reached the backend"
    );

    let mut sender = h2c(gw.addr).await;
    let req = Request::builder()
        .method("TRACE")
        .uri(format!("http://app.test:{}/h2", gw.addr.port()))
        .header("max-forwards", "0")
        .header("cookie", "session=secret")
        .body(full(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (echo, _) = read_body(resp).await;
    let echo = String::from_utf8(echo.to_vec()).unwrap();
    let port = gw.addr.port();
    assert!(
        echo.starts_with(&format!("TRACE /h2 HTTP/2\r\nhost: app.test:{port}\r\n")),
        "{echo:?}"
    );
    assert!(!echo.contains("secret"), "{echo:?}");
    assert_eq!(seen.lock().unwrap().len(), 4);
}

/// A backend plain requests cannot reach is ejected as one handshakes cannot reach is: after
/// `max_failures` (1 here), even a request that may not fail over (it has a body) is sent to
/// the live backend instead.
#[tokio::test]
async fn connect_failures_of_plain_requests_eject_the_backend() {
    let dead = closed_port().await;
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(
        &[dead, b],
        "[route.health]\nmax_failures = 1\n",
    ))
    .await;
    // The dead backend's turn: it fails (and is ejected), the GET fails over.
    assert_eq!(send(gw.addr, get("/one")).await.status(), 200);
    for n in 0..4 {
        let resp = send(
            gw.addr,
            Request::post(format!("/post/{n}"))
                .header("host", "app.test")
                .body(Full::new(Bytes::from_static(b"data")))
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), 200, "POST {n} went to the ejected backend");
    }
    assert_eq!(seen.lock().unwrap().len(), 5);
}

/// A backend that redirects to its own address sends the client back through the proxy.
#[tokio::test]
async fn a_redirect_to_the_backend_s_own_address_is_rewritten() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = listener.local_addr().unwrap();
    let redirect: Handler = Arc::new(move |req: Request<Incoming>| {
        let to = match req.uri().path() {
            "/app/old" => format!("http://{b}/app/new?x=1"),
            _ => "https://elsewhere.example/".to_string(),
        };
        Box::pin(async move {
            Response::builder()
                .status(302)
                .header("location", to)
                .body(full(""))
                .unwrap()
        })
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_backend_conn(stream, redirect.clone()));
        }
    });
    let gw = Gateway::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/chat\"\nbackends = [\"ws://{b}/app\"]\nhttp = true\n"
    ))
    .await;
    let resp = send(gw.addr, get("/chat/../chat/old")).await;
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "/chat/new?x=1");
    let resp = send(gw.addr, get("/chat/other")).await;
    assert_eq!(resp.headers()["location"], "https://elsewhere.example/");
}

#[tokio::test]
async fn completed_requests_are_counted_by_route_and_status_class() {
    let (b, _seen) = echo_backend().await;
    let gw = Gateway::spawn(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        http_route(&[b], "max_request_body = \"10\"")
    ))
    .await;
    for _ in 0..3 {
        let resp = send(gw.addr, get("/")).await;
        read_body(resp).await;
    }
    let (_s, resp) = raw_exchange(
        gw.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert_eq!(resp.status, 413);
    let m = scrape(gw.handle().admin_addr().unwrap()).await;
    let done = [("route", "app"), ("class", "2xx"), ("outcome", "completed")];
    assert_eq!(m.value("wsgate_http_requests_total", &done), 3.0);
    let big = [
        ("route", "app"),
        ("class", "4xx"),
        ("outcome", "request_body_too_large"),
    ];
    assert_eq!(m.value("wsgate_http_requests_total", &big), 1.0);
    assert_eq!(
        m.value(
            "wsgate_http_request_duration_seconds_count",
            &[("route", "app")]
        ),
        3.0
    );
}

/// A TLS acceptor for an `https://` backend at 127.0.0.1 with a certificate from `ca`,
/// offering `alpn`.
fn backend_tls_acceptor(ca: &support::tls::TestCa, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let (cert, key) = ca.leaf("backend", &["127.0.0.1"]);
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(wsgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn an_https_backend_that_offers_http2_is_spoken_to_in_http2() {
    let ca = support::tls::TestCa::new();
    let acceptor = backend_tls_acceptor(&ca, &[b"h2", b"http/1.1"]);
    let (b, seen) = echo_backend_with(Some(acceptor)).await;
    let route = format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"wss://{b}\"]\nhttp = true\n\
         [route.backend_tls]\nca = {:?}\n",
        ca.ca_file().display().to_string()
    );
    let gw = Gateway::spawn(&route).await;
    for body in ["one", "two"] {
        let resp = send(
            gw.addr,
            Request::post("/tls")
                .header("host", "app.test")
                .header("te", "trailers")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["via"], "2 wsgate");
        assert_eq!(read_body(resp).await.0, body);
    }
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|s| s.version == http::Version::HTTP_2)
    );
    assert_eq!(seen.lock().unwrap()[0].uri, format!("https://{b}/tls"));
    // `te: trailers` reaches an HTTP/2 backend (RFC 9113 §8.2.2 allows it; gRPC-style
    // backends insist on it): hyper's HTTP/2 client had dropped it with the `Connection: te`
    // an HTTP/1.1 backend gets.
    for s in seen.lock().unwrap().iter() {
        assert_eq!(s.header("te"), Some("trailers"), "{:?}", s.headers);
    }

    // With preserve_host, `:authority` is the client's host as `Host` is (RFC 9113 §8.3.1
    // wants them to agree), and the connection still goes to the backend, verified by its
    // own name.
    let gw = Gateway::spawn(&route.replace("http = true\n", "http = true\npreserve_host = true\n"))
        .await;
    let resp = send(
        gw.addr,
        Request::get("/kept")
            .header("host", "app.test:8443")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[2].version, http::Version::HTTP_2);
    assert_eq!(seen[2].uri, "https://app.test:8443/kept");
    assert_eq!(seen[2].header("host"), Some("app.test:8443"));
}

/// An `https://` backend that speaks HTTP/1.1 only (ALPN) gets `TE: trailers` with its
/// connection option (RFC 9110 §10.1.4) once its first connection is up; an HTTP/2 one
/// never gets the option, which hyper's HTTP/2 client would drop TE with.
#[tokio::test]
async fn an_https_http11_backend_gets_te_with_its_connection_option() {
    let ca = support::tls::TestCa::new();
    let acceptor = backend_tls_acceptor(&ca, &[b"http/1.1"]);
    let (b, seen) = echo_backend_with(Some(acceptor)).await;
    let gw = Gateway::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"wss://{b}\"]\nhttp = true\n\
         [route.backend_tls]\nca = {:?}\n",
        ca.ca_file().display().to_string()
    ))
    .await;
    for _ in 0..2 {
        let resp = send(
            gw.addr,
            Request::get("/t")
                .header("host", "app.test")
                .header("te", "trailers")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        read_body(resp).await;
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|s| s.version == http::Version::HTTP_11 && s.header("te") == Some("trailers"))
    );
    assert_eq!(
        seen[1].header("connection"),
        Some("te"),
        "{:?}",
        seen[1].headers
    );
}

/// With `preserve_host`, a plain `http://` backend gets each client's `Host`, over the same
/// pooled connection whatever that host is: a new host (here a new port of the same name)
/// must not open a new backend connection that then idles in a pool of its own.
#[tokio::test]
async fn preserved_hosts_share_one_pool_toward_an_http_backend() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hosts: SeenLog = Arc::default();
    let (count, log) = (accepted.clone(), hosts.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let log = log.clone();
            let handler: Handler = Arc::new(move |req: Request<Incoming>| {
                let log = log.clone();
                Box::pin(async move {
                    log.lock().unwrap().push(Seen {
                        method: req.method().to_string(),
                        uri: req.uri().to_string(),
                        version: req.version(),
                        headers: req.headers().clone(),
                        body: Bytes::new(),
                        trailers: None,
                    });
                    Response::new(full("ok"))
                })
            });
            tokio::spawn(serve_backend_conn(stream, handler));
        }
    });
    let gw = Gateway::spawn(&http_route(&[b], "preserve_host = true")).await;
    for port in 1..=20 {
        let host = format!("app.test:{port}");
        let resp = send(
            gw.addr,
            Request::get("/p")
                .header("host", &host)
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        // The body read to its end puts the backend connection back in the pool.
        assert_eq!(read_body(resp).await.0, "ok");
        let seen = hosts.lock().unwrap();
        assert_eq!(seen.last().unwrap().header("host"), Some(host.as_str()));
        assert_eq!(seen.last().unwrap().uri, "/p");
    }
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        opened <= 2,
        "20 client hosts opened {opened} backend connections"
    );
}

/// A hand-written keep-alive backend that closes the connection under the first request for
/// each path starting with `/drop` (read, never answered: a kept-alive connection the
/// backend closed as the request arrived), and answers every other request with its path.
/// Returns its address and each request's (method, path, connection number).
async fn dropping_backend() -> (SocketAddr, Arc<Mutex<Vec<(String, String, usize)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(String, String, usize)>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut conn = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            conn += 1;
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = read_until_head_end(&mut stream, &mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < end + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + length);
                    let mut words = head.split_whitespace();
                    let (method, path) = (
                        words.next().unwrap().to_string(),
                        words.next().unwrap().to_string(),
                    );
                    let first = {
                        let mut log = log.lock().unwrap();
                        let first = !log.iter().any(|(_, p, _)| *p == path);
                        log.push((method, path.clone(), conn));
                        first
                    };
                    if first && path.starts_with("/drop") {
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                        path.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Reads into `buf` until it holds a whole head; its length, or `None` at the end.
async fn read_until_head_end(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A kept-alive backend connection that closes under a request (the backend's keep-alive
/// timer ran out as the request arrived) costs an idempotent request nothing: it is sent
/// again on a new connection. A POST is not (the backend may have acted on it): 502.
#[tokio::test]
async fn an_idempotent_request_is_sent_again_when_its_pooled_connection_closes_under_it() {
    let (b, seen) = dropping_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let (_s, resp) = raw_exchange(gw.addr, b"GET /warm HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!((resp.status, resp.body.as_str()), (200, "/warm"));
    for method in ["GET", "PUT", "DELETE"] {
        let path = format!("/drop-{method}");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
        let (_s, resp) = raw_exchange(gw.addr, req.as_bytes()).await;
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (200, path.as_str()),
            "{method}"
        );
    }
    let (_s, resp) = raw_exchange(
        gw.addr,
        b"POST /drop-post HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await;
    assert_eq!(resp.status, 502, "{}", resp.head);
    // A PUT with a body the backend has read cannot be sent again either.
    let (_s, resp) = raw_exchange(
        gw.addr,
        b"PUT /drop-put-body HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n\r\nbody",
    )
    .await;
    assert_eq!(resp.status, 502, "{}", resp.head);
    let seen = seen.lock().unwrap();
    let count = |p: &str| seen.iter().filter(|(_, path, _)| path == p).count();
    for p in ["/drop-GET", "/drop-PUT", "/drop-DELETE"] {
        assert_eq!(count(p), 2, "{p}: {seen:?}");
    }
    assert_eq!(count("/drop-post"), 1, "{seen:?}");
    assert_eq!(count("/drop-put-body"), 1, "{seen:?}");
    // Each dropped request had gone out on the connection kept alive from the one before.
    let warm = seen[0].2;
    assert_eq!(seen[1].2, warm, "{seen:?}");
}

/// A backend that sends a response head and closes before any of its body: the client gets
/// the head and then its connection closed (the body cut short, never passed off as
/// complete), as the record's 200 says, not a connection closed with no answer at all
/// (hyper dropped the buffered head when the body failed at once, most of the time).
#[tokio::test]
async fn a_head_then_close_reaches_the_client_as_a_cut_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_until_head_end(&mut stream, &mut buf).await.is_some() {
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                        .await;
                }
            });
        }
    });
    let gw = Gateway::spawn(&http_route(&[addr], "")).await;
    for _ in 0..10 {
        let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(STEP, tcp.read_to_end(&mut got))
            .await
            .expect("the connection was not closed");
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
        assert!(got.ends_with("\r\n\r\n"), "a body came: {got:?}");
    }
}

/// A response setting many cookies passes whole: hyper's client refuses a head of more than
/// 100 fields by default, which made a page with 150 `Set-Cookie` lines a 502.
#[tokio::test]
async fn a_response_with_many_header_fields_passes() {
    let b = backend(Arc::new(|_req| {
        Box::pin(async {
            let mut resp = Response::new(full("ok"));
            for i in 0..150 {
                resp.headers_mut().append(
                    "set-cookie",
                    HeaderValue::from_str(&format!("c{i}=v{i}; Path=/")).unwrap(),
                );
            }
            resp
        })
    }))
    .await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let (_s, resp) = raw_exchange(gw.addr, b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, "ok"),
        "{}",
        resp.head
    );
    let cookies = resp
        .head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .count();
    assert_eq!(cookies, 150);
}

/// An HTTP/2 request with neither `:authority` nor `Host` is malformed (RFC 9113 §8.3.1):
/// 400, as an HTTP/1.1 request without `Host` gets, and nothing reaches the backend (which
/// got the proxy's own address as its `Host`).
#[tokio::test]
async fn an_h2_request_without_authority_or_host_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    // Preface, empty SETTINGS, HEADERS (END_STREAM | END_HEADERS) on stream 1 with the
    // static table's :method GET, :scheme http and :path /, no :authority.
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    opening.extend_from_slice(&[0, 0, 3, 0x01, 0x05, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    tcp.write_all(&opening).await.unwrap();
    // Frames until the HEADERS of stream 1; its first field is the :status.
    let mut buf = Vec::new();
    let status = loop {
        if buf.len() >= 9 {
            let len = ((buf[0] as usize) << 16) | ((buf[1] as usize) << 8) | buf[2] as usize;
            if buf.len() >= 9 + len {
                let (kind, stream) = (buf[3], u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]));
                if kind == 0x01 && stream == 1 {
                    break buf[9];
                }
                buf.drain(..9 + len);
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(STEP, tcp.read(&mut chunk))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    // HPACK's static table: index 12 is `:status 400` (8 would be 200).
    assert_eq!(status, 0x80 | 12, "not 400");
    assert!(seen.lock().unwrap().is_empty(), "the backend got it");
}

/// A request that a backend takes on a fresh connection and closes under (a worker that
/// crashes on it) is not the keep-alive race: it is not sent again, so the crash is not
/// repeated, and the client learns what happened (502), not a timeout.
#[tokio::test]
async fn a_request_closed_under_on_a_fresh_connection_is_sent_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_until_head_end(&mut stream, &mut buf).await.is_some() {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // Closed with no answer.
            });
        }
    });
    let gw = Gateway::spawn(&http_route(&[addr], "")).await;
    for method in ["GET", "DELETE"] {
        let before = taken.load(std::sync::atomic::Ordering::SeqCst);
        let req = format!("{method} /crash HTTP/1.1\r\nHost: app.test\r\n\r\n");
        let (_s, resp) = raw_exchange(gw.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 502, "{method}: {}", resp.head);
        let after = taken.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            after - before,
            1,
            "{method} was sent {} times",
            after - before
        );
    }
}

/// A backend that announces each request it gets on the returned receiver, and answers it
/// only when the test adds a permit to the returned semaphore.
async fn held_backend() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    Arc<tokio::sync::Semaphore>,
) {
    let (arrived_tx, arrived) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let permits = release.clone();
    let addr = backend(Arc::new(move |_req| {
        let (arrived, permits) = (arrived_tx.clone(), permits.clone());
        Box::pin(async move {
            let _ = arrived.send(());
            permits.acquire().await.unwrap().forget();
            Response::new(full("released"))
        })
    }))
    .await;
    (addr, arrived, release)
}

#[tokio::test]
async fn past_max_concurrent_requests_the_route_sheds_load_with_503() {
    let (b, mut arrived, release) = held_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "max_concurrent_requests = 1")).await;
    let addr = gw.addr;
    let first = tokio::spawn(async move { send(addr, get("/held")).await.status() });
    tokio::time::timeout(STEP, arrived.recv())
        .await
        .expect("the first request did not reach the backend");
    let resp = send(gw.addr, get("/shed")).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        read_body(resp).await.0,
        "too many requests in progress on this route, try again later\n"
    );
    release.add_permits(1);
    assert_eq!(first.await.unwrap(), 200);
    // The slot is free again.
    release.add_permits(1);
    assert_eq!(send(gw.addr, get("/again")).await.status(), 200);
}

#[tokio::test]
async fn a_backend_that_does_not_answer_gets_504_after_response_header_timeout() {
    let (b, _task) = support::silent_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "response_header_timeout = \"200ms\"")).await;
    let resp = send(gw.addr, get("/slow")).await;
    assert_eq!(resp.status(), 504);
    assert_eq!(read_body(resp).await.0, "backend did not answer in time\n");
}

#[tokio::test]
async fn request_timeout_cuts_a_response_that_outlasts_it() {
    // The second chunk is never released.
    let (b, _release) =
        gated_backend("text/event-stream", &["data: one\n\n", "data: two\n\n"]).await;
    let gw = Gateway::spawn(&http_route(&[b], "request_timeout = \"300ms\"")).await;
    let resp = send(gw.addr, get("/events")).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap(), "data: one\n\n");
    let rest = tokio::time::timeout(STEP, body.collect())
        .await
        .expect("the response was not cut");
    assert!(rest.is_err(), "a cut response passed as complete");
}

/// A client that stops reading does not hold its exchange past `request_timeout`: its
/// connection is closed at the deadline and the backend's with it. hyper waited to write and
/// never polled the response body, whose deadline it is, so both connections stayed open for
/// as long as the client did not read (40 s in the report, outcome `request_timeout` only
/// once it read again).
#[tokio::test]
async fn request_timeout_cuts_a_client_that_stops_reading() {
    let (gw, mut gone) = endless_gateway().await;
    let started = tokio::time::Instant::now();
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(b"GET /endless HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing; the backend's response is dropped at the deadline.
    tokio::time::timeout(std::time::Duration::from_secs(10), gone.recv())
        .await
        .expect("the exchange outlived its request_timeout by seconds");
    assert!(started.elapsed() >= std::time::Duration::from_millis(450));
    // What the client's socket holds, then the end.
    let mut sink = Vec::new();
    let end = tokio::time::timeout(STEP, client.read_to_end(&mut sink)).await;
    assert!(end.is_ok(), "the client's connection was left open");
    let m = scrape(gw.handle().admin_addr().unwrap()).await;
    let cut = [
        ("route", "app"),
        ("class", "2xx"),
        ("outcome", "request_timeout"),
    ];
    assert_eq!(
        m.value("wsgate_http_requests_total", &cut),
        1.0,
        "{:?}",
        m.samples
            .iter()
            .filter(|s| s.name == "wsgate_http_requests_total")
            .collect::<Vec<_>>()
    );
}

/// A gateway with an admin listener and `request_timeout = "500ms"` on an [`endless_backend`].
async fn endless_gateway() -> (Gateway, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (b, gone) = endless_backend().await;
    let gw = Gateway::spawn(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        http_route(&[b], "request_timeout = \"500ms\"")
    ))
    .await;
    (gw, gone)
}

/// A backend whose every response is endless: only the proxy dropping it ends it, and then
/// the receiver hears of it.
async fn endless_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (gone_tx, gone) = tokio::sync::mpsc::unbounded_channel::<()>();
    let b = backend(Arc::new(move |_req| {
        let gone_tx = gone_tx.clone();
        Box::pin(async move {
            let (tx, rx) = channel();
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                while tx.send(Frame::data(chunk.clone())).await.is_ok() {}
                let _ = gone_tx.send(());
            });
            Response::new(rx)
        })
    }))
    .await;
    (b, gone)
}

/// The same over HTTP/2: a stream whose client grants no more window does not hold its
/// exchange past `request_timeout`. hyper polls an HTTP/2 response body only when the
/// stream's window has room, so the body's deadline was never looked at: the stream and the
/// backend's connection stayed for as long as the client did not read.
#[tokio::test]
async fn request_timeout_cuts_an_http2_stream_whose_client_stops_reading() {
    let (gw, mut gone) = endless_gateway().await;
    let started = tokio::time::Instant::now();
    let mut h2 = h2c::<Empty<Bytes>>(gw.addr).await;
    let resp = h2.send_request(get_h2(gw.addr, "/endless")).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The client takes nothing: its window (2 MiB, hyper's default) fills and stays full.
    tokio::time::timeout(std::time::Duration::from_secs(10), gone.recv())
        .await
        .expect("the exchange outlived its request_timeout by seconds");
    assert!(started.elapsed() >= std::time::Duration::from_millis(450));
    // What the window let through, then the stream's reset: never a complete response.
    let mut body = resp.into_body();
    let end = tokio::time::timeout(STEP, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        }
    })
    .await
    .expect("the stream was left open");
    assert!(end.is_err(), "a cut response passed as complete");
    // The connection itself stays up for the client's other streams.
    let again = h2.send_request(get_h2(gw.addr, "/endless")).await;
    assert_eq!(again.unwrap().status(), 200);
    let m = scrape(gw.handle().admin_addr().unwrap()).await;
    let cut = [
        ("route", "app"),
        ("class", "2xx"),
        ("outcome", "request_timeout"),
    ];
    assert!(m.value("wsgate_http_requests_total", &cut) >= 1.0);
}

fn record(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

/// The binary, logging JSON at `info`, on one listener with `route`.
struct Logged {
    addr: SocketAddr,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    log: Vec<String>,
    _child: tokio::process::Child,
    _dir: TempDir,
}

impl Logged {
    async fn spawn(route: &str) -> Logged {
        use tokio::io::AsyncBufReadExt;
        let dir = TempDir::new("http-log");
        let config = dir.write(
            "wsgate.toml",
            format!("[[listener]]\nlisten = \"127.0.0.1:0\"\n{route}"),
        );
        let mut child = support::binary_command(&config, "json", "info")
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = Vec::new();
        let listening = support::wait_line(&mut lines, &mut log, "listening", |l| {
            l.contains("\"message\":\"listening\"")
        })
        .await;
        let addr = record(&listening)["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        Logged {
            addr,
            lines,
            log,
            _child: child,
            _dir: dir,
        }
    }

    async fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        support::wait_line(&mut self.lines, &mut self.log, what, pred).await
    }
}

#[tokio::test]
async fn each_request_writes_one_access_record_when_its_response_ends() {
    let (b, _seen) = echo_backend().await;
    let mut gw = Logged::spawn(&http_route(&[b], "")).await;
    let addr = gw.addr;
    let resp = send(
        addr,
        Request::post("/logged?token=secret")
            .header("host", "app.test")
            .header("user-agent", "tester/1")
            .body(Full::new(Bytes::from_static(b"12345")))
            .unwrap(),
    )
    .await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(read_body(resp).await.0, "12345");
    let line = gw
        .wait_line("the http record", |l| l.contains("\"event\":\"http\""))
        .await;
    let r = record(&line);
    assert_eq!(r["request_id"], id.as_str());
    assert_eq!(r["route"], "app");
    assert_eq!(r["backend"], format!("http://{b}").as_str());
    assert_eq!(r["method"], "POST");
    assert_eq!(r["host"], "app.test");
    assert_eq!(r["path"], "/logged", "the query is never logged");
    assert_eq!(r["user_agent"], "tester/1");
    assert_eq!(r["status"], 200);
    assert_eq!(r["outcome"], "completed");
    assert_eq!(r["bytes_request"], 5);
    assert_eq!(r["bytes_response"], 5);
    assert!(!line.contains("secret"), "{line}");
}

/// A client that gives up before the response head is recorded as nginx records one: status
/// 499, outcome `client_gone`.
#[tokio::test]
async fn a_client_that_leaves_before_the_response_head_is_recorded_499() {
    let (b, mut arrived, _release) = held_backend().await;
    let mut gw = Logged::spawn(&http_route(&[b], "")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /waited HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(STEP, arrived.recv())
        .await
        .expect("the request did not reach the backend");
    drop(s);
    let line = gw
        .wait_line("the http record", |l| l.contains("\"event\":\"http\""))
        .await;
    let r = record(&line);
    assert_eq!(r["path"], "/waited");
    assert_eq!(r["status"], 499);
    assert_eq!(r["outcome"], "client_gone");
    // The backend it was waiting on (the record said "").
    assert_eq!(r["backend"], format!("http://{b}").as_str());
}

/// A client that gives up while forward-auth is being asked is recorded as one that gives up
/// while the backend is (499, `client_gone`); it left no record and no count at all.
#[tokio::test]
async fn a_client_that_leaves_while_forward_auth_is_asked_is_recorded_499() {
    let auth = crate::support::fake_auth::FakeAuth::spawn().await;
    let (b, _seen) = echo_backend().await;
    let extra = format!(
        "[route.auth.forward_auth]\nurl = \"{}\"\n",
        auth.url("/slow")
    );
    let mut gw = Logged::spawn(&http_route(&[b], &extra)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /asked HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(STEP, async {
        while auth.count() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("forward-auth was not asked");
    drop(s);
    let line = gw
        .wait_line("the http record", |l| l.contains("\"event\":\"http\""))
        .await;
    let r = record(&line);
    assert_eq!(r["path"], "/asked");
    assert_eq!(r["status"], 499);
    assert_eq!(r["outcome"], "client_gone");
    assert_eq!(r["backend"], "");
}

/// A plain request's 502 and 504 records name the backend that failed it, as a WebSocket
/// handshake's do: with several backends an operator could not tell which one reset or
/// stayed silent. The client's answer does not (`error_detail = "log"`, the default): the
/// `request_timeout` 504 had told it the backend's URL.
#[tokio::test]
async fn the_records_of_failed_plain_requests_name_their_backend() {
    let (silent, _task) = support::silent_backend().await;
    let (garbled, _seen) = support::scripted_backend(b"NOT HTTP AT ALL\r\n\r\n".to_vec()).await;
    for (backend, extra, status, reason) in [
        (
            silent,
            "response_header_timeout = \"200ms\"",
            504,
            format!("backend http://{silent} did not answer within 200ms"),
        ),
        (
            silent,
            "request_timeout = \"200ms\"",
            504,
            format!("request did not complete within 200ms, waiting on http://{silent}"),
        ),
        (
            garbled,
            "",
            502,
            format!("backend request failed: http://{garbled}: "),
        ),
    ] {
        let mut gw = Logged::spawn(&http_route(&[backend], extra)).await;
        let resp = send(gw.addr, get("/failed")).await;
        assert_eq!(resp.status(), status, "{extra}");
        let (body, _) = read_body(resp).await;
        let body = String::from_utf8_lossy(&body);
        assert!(
            !body.contains(&backend.to_string()) && !body.is_empty(),
            "{extra}: {body}"
        );
        let line = gw
            .wait_line("the refusal's record", |l| {
                l.contains("\"event\":\"refused\"")
            })
            .await;
        let r = record(&line);
        let got = r["reason"].as_str().unwrap();
        assert!(got.starts_with(&reason), "{extra}: {got}");
    }
}

/// Plain requests' own backends (`http_backends`) are ejected after failed connects in a
/// row, as the route's backends are, and the end of the ejection is logged as theirs is
/// (it was not).
#[tokio::test]
async fn connect_failures_eject_an_http_backend_of_its_own() {
    let dead = closed_port().await;
    let (b, seen) = echo_backend().await;
    let mut gw = Logged::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"ws://{b}\"]\nhttp = true\n\
         http_backends = [\"http://{dead}\", \"http://{b}\"]\n[route.health]\nmax_failures = 2\n\
         ejection = \"200ms\"\n"
    ))
    .await;
    // Rotation from the first: each odd request meets the dead backend first and fails over.
    for n in 0..4 {
        let resp = send(gw.addr, get(&format!("/{n}"))).await;
        assert_eq!(resp.status(), 200);
    }
    let line = gw
        .wait_line("the ejection", |l| l.contains("HTTP backend ejected"))
        .await;
    let r = record(&line);
    assert_eq!(r["backend"], format!("http://{dead}").as_str());
    assert_eq!(r["failures"], 2);
    assert_eq!(seen.lock().unwrap().len(), 4);
    // Requests go on until one is ordered after the ejection's end.
    let addr = gw.addr;
    let over = async {
        loop {
            let resp = send(addr, get("/later")).await;
            assert_eq!(resp.status(), 200);
        }
    };
    let line = tokio::select! {
        line = gw.wait_line("the ejection's end", |l| l.contains("HTTP backend ejection over")) => line,
        () = over => unreachable!(),
    };
    let r = record(&line);
    assert_eq!(r["backend"], format!("http://{dead}").as_str());
    assert_eq!(r["route"], "app");
}

/// An HPACK literal header field without indexing and with a literal name (RFC 7541
/// §6.2.2), lengths under 127 bytes, no Huffman coding: any bytes at all.
fn hpack_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
    out
}

/// Sends one HTTP/2 GET for `/` whose header block ends with `extra` (raw, so it may hold
/// what no client library would send) and returns the frame types the proxy sent on its
/// stream: `1` HEADERS (an answer), `3` RST_STREAM; or `7` for a GOAWAY.
async fn raw_h2_request(addr: SocketAddr, extra: &[u8]) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    block.extend(hpack_literal(b":authority", b"app.test"));
    block.extend_from_slice(extra);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    let len = block.len() as u32;
    out.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        1,
        0x05,
        0,
        0,
        0,
        1,
    ]);
    out.extend_from_slice(&block);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, async {
        loop {
            while buf.len() >= 9 {
                let len =
                    (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, stream) = (
                    buf[3],
                    u32::from_be_bytes([buf[5] & 0x7f, buf[6], buf[7], buf[8]]),
                );
                buf.drain(..9 + len);
                match (kind, stream) {
                    (1 | 3, 1) => {
                        seen.push(kind);
                        return;
                    }
                    (7, _) => {
                        seen.push(kind);
                        return;
                    }
                    _ => {}
                }
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
    })
    .await
    .expect("no answer on the stream");
    seen
}

#[tokio::test]
async fn http2_requests_cannot_carry_header_injection_or_connection_headers_to_the_backend() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    // The raw request itself is well formed: it gets an answer.
    assert_eq!(
        raw_h2_request(gw.addr, &hpack_literal(b"x-ok", b"1")).await,
        [1]
    );
    for (name, value) in [
        (&b"x-inject"[..], &b"a\r\nx-smuggled: 1"[..]),
        (b"x-inject", b"a\nGET /admin HTTP/1.1"),
        (b"x-inject", b"a\0b"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"close"),
        (b"X-Upper", b"1"),
    ] {
        let answer = raw_h2_request(gw.addr, &hpack_literal(name, value)).await;
        assert!(
            answer == [3] || answer == [7],
            "{:?}: {:?} answered {answer:?}",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value)
        );
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen[0].headers.contains_key("x-smuggled"));
}

/// A backend that answers every plain request with its own name.
async fn named_backend(name: &'static str) -> SocketAddr {
    backend(Arc::new(move |_req| {
        Box::pin(async move { Response::new(full(name)) })
    }))
    .await
}

#[tokio::test]
async fn the_sticky_cookie_of_a_plain_request_keeps_the_client_on_its_backend() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let gw = Gateway::spawn(&http_route(
        &[a, b],
        "sticky = { cookie = \"srv\", ttl = \"1h\" }",
    ))
    .await;
    let resp = send(gw.addr, get("/poll")).await;
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("srv="), "{cookie}");
    let first = read_body(resp).await.0;
    let pair = cookie.split(';').next().unwrap().to_string();
    for _ in 0..4 {
        let resp = send(
            gw.addr,
            Request::get("/poll")
                .header("host", "app.test")
                .header("cookie", pair.as_str())
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await;
        assert_eq!(
            read_body(resp).await.0,
            first,
            "the cookie's backend was not kept"
        );
    }
    // Without the cookie, round robin moves on.
    let bodies: std::collections::BTreeSet<Bytes> = futures_util::future::join_all(
        (0..4).map(|_| async { read_body(send(gw.addr, get("/poll")).await).await.0 }),
    )
    .await
    .into_iter()
    .collect();
    assert_eq!(bodies.len(), 2);
}

#[tokio::test]
async fn hash_balancing_sends_one_key_to_one_backend() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let gw = Gateway::spawn(&http_route(
        &[a, b],
        "balance = \"hash\"\nhash_key = \"query:sid\"",
    ))
    .await;
    for sid in ["s1", "s2", "s3", "s4"] {
        let path = format!("/socket.io/?sid={sid}");
        let first = read_body(send(gw.addr, get(&path)).await).await.0;
        for _ in 0..3 {
            assert_eq!(
                read_body(send(gw.addr, get(&path)).await).await.0,
                first,
                "{sid}"
            );
        }
    }
}

/// A backend that answers each request (one per connection) with the bytes `answer` gives
/// for its path, then closes.
async fn canned_backend(answer: fn(&str) -> &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(end) = read_until_head_end(&mut stream, &mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let _ = stream.write_all(answer(&path)).await;
                let _ = stream.shutdown().await;
                // Until the proxy closes: a close now could reset what it has not read.
                let mut rest = [0u8; 1024];
                while let Ok(n) = stream.read(&mut rest).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A response is forwarded framed as the client's connection frames it, and only what a
/// proxy may forward (RFC 9112 §6.3): `Content-Length` beside `Transfer-Encoding` is
/// dropped (the chunked coding framed the body), a list of one length becomes that length,
/// a 204 carries none; a transfer coding hyper cannot decode (gzip), a 101 nothing asked
/// for and a status code past 599 are a 502, never bytes the client would misread; trailers lose the fields a trailer
/// section must not carry (an HTTP/2 client would take a `Connection` there for a
/// malformed response and lose the whole of it).
#[tokio::test]
async fn a_backend_response_is_framed_anew_and_refused_when_it_cannot_be() {
    let backend = canned_backend(|path| match path {
        "/clte" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nHELLO\r\n0\r\n\r\n"
        }
        "/twice" => b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nHELLO",
        "/gzip" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nHELLO\r\n0\r\n\r\n"
        }
        "/switch" => {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"
        }
        "/600" => b"HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
        "/nocontent" => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        "/trailers" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
              5\r\nHELLO\r\n0\r\nx-sum: 7\r\nConnection: close\r\nHost: evil.example\r\n\
              Content-Length: 50\r\n\r\n"
        }
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    })
    .await;
    let gw = Gateway::spawn(&http_route(&[backend], "")).await;
    for path in ["/clte", "/twice"] {
        let resp = send(gw.addr, get(path)).await;
        assert_eq!(resp.status(), 200, "{path}");
        let length = resp.headers().get("content-length").cloned();
        assert!(
            length.is_none() || length.as_ref().is_some_and(|l| l == "5"),
            "{path}: content-length {length:?}"
        );
        assert_eq!(read_body(resp).await.0, "HELLO", "{path}");
    }
    // (A status code past 599 is none, RFC 9110 §15: it was passed on.)
    for path in ["/gzip", "/switch", "/600"] {
        let resp = send(gw.addr, get(path)).await;
        assert_eq!(resp.status(), 502, "{path}");
    }
    // Over HTTP/2, where the client sees the header fields as the proxy sends them.
    let mut h2 = h2c::<Empty<Bytes>>(gw.addr).await;
    let resp = h2
        .send_request(get_h2(gw.addr, "/nocontent"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers().get("content-length"), None);
    let mut req = get_h2(gw.addr, "/trailers");
    req.headers_mut()
        .insert("te", http::HeaderValue::from_static("trailers"));
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (body, trailers) = read_body(resp).await;
    assert_eq!(body, "HELLO");
    let trailers = trailers.expect("no trailers");
    assert_eq!(trailers["x-sum"], "7");
    for name in ["connection", "host", "content-length"] {
        assert!(!trailers.contains_key(name), "{name} in {trailers:?}");
    }
}

/// A GET for an HTTP/2 connection to the gateway at `addr`.
fn get_h2(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://app.test:{}{path}", addr.port()))
        .body(Empty::new())
        .unwrap()
}

/// Forward-auth on a plain request tells the auth service the request's own method, which a
/// rule such as "read-only users may only GET" decides on, and a cached allow of a GET is not
/// reused for a DELETE of the same URI. It used to say `GET` for every method: a POST, PUT
/// or DELETE passed a service that allowed only reads.
#[tokio::test]
async fn forward_auth_hears_the_plain_requests_method() {
    let auth = crate::support::fake_auth::FakeAuth::spawn().await;
    let (b, _seen) = echo_backend().await;
    let extra = format!(
        "[route.auth.forward_auth]\nurl = \"{}\"\ncache = \"1m\"\n",
        auth.url("/allow")
    );
    let gw = Gateway::spawn(&http_route(&[b], &extra)).await;
    let method_seen = |n: usize| {
        auth.last()
            .headers
            .get("x-forwarded-method")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("request {n}: no X-Forwarded-Method"))
    };
    let request = |method: &str| {
        Request::builder()
            .method(method)
            .uri("/items/1")
            .header("host", "app.test")
            .header("cookie", "session=abc")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    for (n, method) in ["GET", "POST", "PUT", "DELETE", "GET"]
        .into_iter()
        .enumerate()
    {
        let resp = send(gw.addr, request(method)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{method}");
        // The second GET is the first one's cached allow.
        let asked = if n == 4 { 4 } else { n + 1 };
        assert_eq!(auth.count(), asked, "{method}");
        if n < 4 {
            assert_eq!(method_seen(n), method);
        }
    }
}

/// The route's own `X-Forwarded-*` headers (`set_headers`, forward-auth's `copy_headers`)
/// reach a plain request's backend from any client; the client's own copies do not. They
/// were dropped with the client's unless the peer was a trusted proxy.
#[tokio::test]
async fn the_routes_own_x_forwarded_headers_reach_the_backend_from_any_client() {
    let auth = crate::support::fake_auth::FakeAuth::spawn().await;
    let (b, seen) = echo_backend().await;
    let extra = format!(
        "[route.auth]\nset_headers = {{ \"X-Forwarded-Prefix\" = \"/app\" }}\n\
         [route.auth.forward_auth]\nurl = \"{}\"\n\
         copy_headers = [\"X-Forwarded-User\", \"X-Forwarded-Email\"]\n",
        auth.url("/allow-forwarded")
    );
    let gw = Gateway::spawn(&http_route(&[b], &extra)).await;
    let resp = send(
        gw.addr,
        Request::get("/page")
            .header("host", "app.test")
            .header("x-forwarded-user", "mallory")
            .header("x-forwarded-prefix", "/forged")
            .header("x-forwarded-uri", "/forged")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let g = seen.lock().unwrap()[0].clone();
    assert_eq!(g.header("x-forwarded-user"), Some("alice"));
    assert_eq!(g.header("x-forwarded-email"), Some("alice@example.com"));
    assert_eq!(g.header("x-forwarded-prefix"), Some("/app"));
    assert_eq!(g.header("x-forwarded-uri"), None);
}

/// A request's trailers reach the backend only when its `Trailer` field declared them, and
/// never as a field the proxy sets or guards in the head (forwarding and identity headers,
/// credentials, `Proxy-*`, the route's `strip_headers`), over HTTP/1.1 and HTTP/2 alike. They
/// all used to pass: a backend that merges trailers into its headers took a client's
/// `X-Real-IP` over the proxy's.
#[tokio::test]
async fn request_trailers_cannot_say_what_the_proxy_says() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(
        &[b],
        "[route.auth]\nstrip_headers = [\"X-Secret\"]\n",
    ))
    .await;
    let forged = || {
        let mut t = HeaderMap::new();
        for (name, value) in [
            ("x-checksum", "client"),
            ("x-undeclared", "1"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-request-id", "forged"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("cookie", "session=forged"),
            ("authorization", "Bearer forged"),
            ("x-secret", "forged"),
            ("x_real_ip", "6.6.6.6"),
        ] {
            t.insert(name, HeaderValue::from_static(value));
        }
        Frame::trailers(t)
    };
    let request = |rx| {
        Request::post("/rpc")
            .header("host", "app.test")
            .header("te", "trailers")
            .header(
                "trailer",
                "x-checksum, x-real-ip, x-forwarded-for, x-request-id, proxy-authorization, \
                 cookie, authorization, x-secret, x_real_ip",
            )
            .body(rx)
            .unwrap()
    };
    let (tx, rx) = channel();
    tokio::spawn(async move {
        let _ = tx.send(Frame::data(Bytes::from_static(b"payload"))).await;
        let _ = tx.send(forged()).await;
    });
    let resp = send(gw.addr, request(rx)).await;
    assert_eq!(resp.status(), 200);
    read_body(resp).await;
    let (tx, rx) = channel();
    tokio::spawn(async move {
        let _ = tx.send(Frame::data(Bytes::from_static(b"payload"))).await;
        let _ = tx.send(forged()).await;
    });
    let mut h2 = h2c(gw.addr).await;
    let resp = tokio::time::timeout(STEP, h2.send_request(request(rx)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    read_body(resp).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for s in seen.iter() {
        let t = s.trailers.as_ref().expect("no request trailers");
        let names: Vec<&str> = t.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-checksum"], "{:?}", s.version);
        assert_eq!(s.header("x-real-ip"), Some("127.0.0.1"));
    }
}

/// An HTTP/2 request whose field value starts or ends with whitespace is malformed (RFC 9113
/// §8.2.1): 400, and nothing reaches the backend. It was forwarded as `x-a:  v`.
#[tokio::test]
async fn an_http2_field_value_with_whitespace_at_an_end_is_refused() {
    let (b, seen) = echo_backend().await;
    let gw = Gateway::spawn(&http_route(&[b], "")).await;
    let mut h2 = h2c::<Empty<Bytes>>(gw.addr).await;
    for value in [" v", "v\t"] {
        let mut req = get_h2(gw.addr, "/ws");
        req.headers_mut()
            .insert("x-a", HeaderValue::from_str(value).unwrap());
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 400, "{value:?}");
    }
    let resp = h2.send_request(get_h2(gw.addr, "/ok")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
}
