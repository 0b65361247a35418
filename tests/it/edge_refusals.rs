//! Request heads hyper refuses before the proxy sees a request (431, 414, 400, and heads
//! that never complete): every one is counted, answered with its reason where hyper answers,
//! and logged within the per-reason budget. Raw sockets write the malformed bytes and read
//! the whole answer, up to the gateway's close.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::support::tls::*;
use crate::support::*;

const TOO_LARGE: &str = "request header fields too large: the request head is over 32768 bytes \
                         or 100 header fields";
const INVALID: &str = "bad request: the request head is not valid HTTP/1.1 (a malformed request \
                       line or header field)";

/// Everything a client got before the gateway closed the connection.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn parse(bytes: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete answer: {text:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        Answer {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// A refusal with a reason: `status`, a `text/plain` body of `reason` whose length the
    /// head states, and `Connection: close`.
    #[track_caller]
    fn assert_refusal(&self, status: u16, reason: &str) {
        assert_eq!(self.status, status, "{}", self.head);
        assert_eq!(
            self.header("content-type"),
            Some("text/plain; charset=utf-8"),
            "{}",
            self.head
        );
        assert_eq!(self.header("connection"), Some("close"), "{}", self.head);
        assert_eq!(self.body, format!("{reason}\n"));
        assert_eq!(
            self.header("content-length"),
            Some(self.body.len().to_string().as_str())
        );
    }
}

/// Writes `request` on `stream` (from a task of its own, so that a head larger than the
/// socket buffers cannot block the reading) and reads until the gateway closes.
async fn exchange<S>(stream: S, request: Vec<u8>) -> Vec<u8>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        // The gateway may close before it has read everything: a failed write is expected.
        let _ = write.write_all(&request).await;
        write
    });
    let mut got = Vec::new();
    tokio::time::timeout(STEP, async {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = read.read(&mut chunk).await {
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the gateway did not close the connection");
    drop(writer.await.unwrap());
    got
}

/// Sends `request` over plain TCP and returns the whole answer.
async fn answer_to(addr: SocketAddr, request: Vec<u8>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    Answer::parse(&exchange(stream, request).await)
}

/// A gateway with a route at `/` to an echo backend (which must never hear of these
/// requests), with `extra` TOML.
async fn gateway(extra: &str) -> (Gateway, EchoBackend) {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!("{extra}\n{}", route("r", "/", &[backend.url()]))).await;
    (gw, backend)
}

/// The gateway's refusals are exactly one, unrouted, of `outcome`, and the backend heard
/// nothing.
#[track_caller]
fn assert_counted_once(gw: &Gateway, backend: &EchoBackend, outcome: &str) {
    let counts = gw.handle().refusals();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        vec![(("-".to_string(), outcome), 1)]
    );
    assert_eq!(backend.request_count(), 0);
}

fn head_with(lines: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: localhost\r\n{lines}\r\n").into_bytes()
}

#[tokio::test]
async fn a_one_mib_header_is_431_with_the_limits_in_the_reason() {
    let (gw, backend) = gateway("").await;
    let big = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
    let answer = answer_to(gw.addr, head_with(&big)).await;
    answer.assert_refusal(431, TOO_LARGE);
    assert_counted_once(&gw, &backend, "request_head_too_large");
}

#[tokio::test]
async fn ten_thousand_headers_are_431() {
    let (gw, backend) = gateway("").await;
    let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = answer_to(gw.addr, head_with(&many)).await;
    answer.assert_refusal(431, TOO_LARGE);
    assert_counted_once(&gw, &backend, "request_head_too_large");
}

#[tokio::test]
async fn the_reason_names_the_configured_limits() {
    let (gw, backend) = gateway("[limits]\nmax_header_bytes = \"16KiB\"\nmax_headers = 20\n").await;
    let many: String = (0..21).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = answer_to(gw.addr, head_with(&many)).await;
    answer.assert_refusal(
        431,
        "request header fields too large: the request head is over 16384 bytes or 20 header \
         fields",
    );
    assert_counted_once(&gw, &backend, "request_head_too_large");
}

#[tokio::test]
async fn an_obs_fold_line_is_400() {
    let (gw, backend) = gateway("").await;
    // A header continued on the next line (RFC 9112 §5.2): a smuggling classic.
    let answer = answer_to(gw.addr, head_with("X-A: a\r\n folded\r\n")).await;
    answer.assert_refusal(400, INVALID);
    assert_counted_once(&gw, &backend, "request_head_invalid");
}

#[tokio::test]
async fn a_bare_cr_is_400() {
    let (gw, backend) = gateway("").await;
    let answer = answer_to(gw.addr, head_with("X-A: a\rX-B: b\r\n")).await;
    answer.assert_refusal(400, INVALID);
    assert_counted_once(&gw, &backend, "request_head_invalid");
}

#[tokio::test]
async fn a_nul_in_a_header_is_400() {
    let (gw, backend) = gateway("").await;
    let answer = answer_to(gw.addr, head_with("X-A: a\0b\r\n")).await;
    answer.assert_refusal(400, INVALID);
    assert_counted_once(&gw, &backend, "request_head_invalid");
}

#[tokio::test]
async fn a_uri_over_hyper_s_limit_is_414() {
    // hyper refuses a request target over 65,534 bytes; the head limit must let such a head
    // be read whole for that limit to be the one that speaks.
    let (gw, backend) = gateway("[limits]\nmax_header_bytes = \"128KiB\"\n").await;
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(70_000)
    );
    let answer = answer_to(gw.addr, request.into_bytes()).await;
    answer.assert_refusal(
        414,
        "URI too long: the request target is longer than the proxy accepts",
    );
    assert_counted_once(&gw, &backend, "uri_too_long");
}

#[tokio::test]
async fn a_head_that_stops_midway_is_closed_after_the_handshake_timeout() {
    let (gw, backend) =
        gateway("[[listener]]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"300ms\"\n").await;
    let start = Instant::now();
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow")
        .await
        .unwrap();
    // Closed without a word (there is no request to answer), once the timeout has passed.
    assert_eq!(read_until_closed(&mut slow).await, b"");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_counted_once(&gw, &backend, "request_head_timeout");
    // A connection that sends nothing at all is the same refusal.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, b"");
    assert_eq!(
        gw.handle()
            .refusals()
            .get(&("-".to_string(), "request_head_timeout")),
        Some(&2)
    );
}

#[tokio::test]
async fn over_tls_the_answer_carries_its_reason_too() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let (gw, backend) = gateway(&tls_listener(&cert, &key, "")).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let tls = ca
        .connector()
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let got = exchange(tls, head_with("X-A: a\r\n folded\r\n")).await;
    Answer::parse(&got).assert_refusal(400, INVALID);
    assert_counted_once(&gw, &backend, "request_head_invalid");
}

#[tokio::test]
async fn an_h2_header_list_over_the_limit_is_answered_by_h2_itself() {
    // Over HTTP/2 the h2 library refuses such a stream with its own 431 and a reset, before
    // hyper makes a request of it: wsgate never sees it, so it cannot count or log it. The
    // connection and its other streams go on.
    let (gw, _backend) = gateway("").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = |big: bool| {
        let mut r = http::Request::get(format!("http://localhost:{}/", gw.addr.port()));
        if big {
            r = r.header("x-big", "a".repeat(40 * 1024));
        }
        r.body(Empty::new()).unwrap()
    };
    let resp = tokio::time::timeout(STEP, send.send_request(request(true)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 431);
    send.ready().await.unwrap();
    let resp = tokio::time::timeout(STEP, send.send_request(request(false)))
        .await
        .unwrap()
        .unwrap();
    // Not an extended CONNECT: refused by the proxy (on the route it matched), counted.
    assert_eq!(resp.status(), 400);
    assert_eq!(
        gw.handle().refusals().into_iter().collect::<Vec<_>>(),
        vec![(("r".to_string(), "not_extended_connect"), 1)]
    );
}

/// `wsgate run` on `toml` with JSON logs at info: the child (killed when dropped), its log
/// records as they come, and the address it listens on.
async fn run_binary(
    dir: &TempDir,
    toml: &str,
) -> (Child, mpsc::UnboundedReceiver<serde_json::Value>, String) {
    let config = dir.write("wsgate.toml", toml);
    let mut child = spawn_binary(&config, "json", "info");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, mut records) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let record: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            if tx.send(record).is_err() {
                return;
            }
        }
    });
    let addr = tokio::time::timeout(STEP, async {
        loop {
            let r = records
                .recv()
                .await
                .expect("wsgate exited before listening");
            if r["message"] == "listening" {
                return r["listen"].as_str().unwrap().to_string();
            }
        }
    })
    .await
    .expect("no listening line");
    (child, records, addr)
}

/// The refusal records of one outcome seen so far.
#[derive(Default)]
struct Seen {
    lines: u64,
    reported_suppressed: u64,
    later_line_with_suppressed: bool,
}

#[tokio::test]
async fn a_flood_of_refusals_writes_a_bounded_number_of_lines() {
    // Default budget: 10 lines a second per reason.
    const PER_SECOND: u64 = 10;
    let dir = TempDir::new("flood");
    // Nothing gets as far as a backend.
    let backend = format!("ws://{}", closed_port().await);
    let toml = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
        route("r", "/", &[backend])
    );
    let (_child, mut records, addr) = run_binary(&dir, &toml).await;
    let addr: SocketAddr = addr.parse().unwrap();
    // Two reasons: hyper's parser (a folded header) and the proxy's own (no upgrade).
    let shapes = [
        (
            "request_head_invalid",
            400,
            head_with("X-A: a\r\n folded\r\n"),
        ),
        ("not_an_upgrade", 426, head_with("")),
    ];
    let mut seen: [Seen; 2] = Default::default();
    let mut first_line = None;
    let mut sent = 0u64;
    let start = Instant::now();
    // 500 refusals, then more until each reason's first line of a later second has said how
    // many it suppressed.
    while sent < 500 || !seen.iter().all(|s| s.later_line_with_suppressed) {
        assert!(start.elapsed() < STEP, "no line with `suppressed` in time");
        for (_, status, request) in &shapes {
            assert_eq!(answer_to(addr, request.clone()).await.status, *status);
        }
        sent += 2;
        while let Ok(r) = records.try_recv() {
            let Some(i) = shapes.iter().position(|(o, ..)| r["outcome"] == *o) else {
                continue;
            };
            let s = &mut seen[i];
            s.lines += 1;
            if let Some(n) = r["suppressed"].as_u64() {
                s.reported_suppressed += n;
                s.later_line_with_suppressed = true;
            }
            if i == 0 && first_line.is_none() {
                first_line = Some(r);
            }
        }
    }
    let elapsed = start.elapsed();
    let per_reason = sent / 2;
    // Budget windows are whole seconds: the flood touched at most this many.
    let windows = elapsed.as_secs() + 2;
    for ((outcome, ..), s) in shapes.iter().zip(&seen) {
        assert!(
            s.lines <= PER_SECOND * windows,
            "{outcome}: {} lines for {per_reason} refusals in {elapsed:?}",
            s.lines
        );
        assert!(s.reported_suppressed > 0);
        // Each refusal was written or counted once (some may still wait to be reported).
        assert!(s.lines + s.reported_suppressed <= per_reason);
    }
    // The record says who, what and why.
    let r = first_line.unwrap();
    assert_eq!(r["target"], "wsgate::access");
    assert_eq!(r["level"], "INFO");
    assert_eq!(r["event"], "refused");
    assert_eq!(r["status"], 400);
    assert_eq!(r["reason"], INVALID);
    assert_eq!(r["fault"], "client");
    assert!(r["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(r.get("suppressed").is_none(), "{r}");
}

/// The warning each failed backend attempt writes is under the refusals' budget too: a route
/// whose one backend is down (never ejected: `max_ejected_percent`) wrote one line per
/// handshake however fast clients came, beside the refusal records the budget held.
#[tokio::test]
async fn a_flood_of_failed_backend_attempts_writes_a_bounded_number_of_lines() {
    const PER_SECOND: u64 = 10;
    let dir = TempDir::new("attempts");
    let backend = format!("ws://{}", closed_port().await);
    let toml = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
        route("r", "/", &[backend])
    );
    let (_child, mut records, addr) = run_binary(&dir, &toml).await;
    let addr: SocketAddr = addr.parse().unwrap();
    let (mut attempts, mut suppressed) = (0u64, 0u64);
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < 60 || suppressed == 0 {
        assert!(start.elapsed() < STEP, "no line with `suppressed` in time");
        let answer = answer_to(addr, upgrade_request("/", "").into_bytes()).await;
        assert_eq!(answer.status, 502);
        sent += 1;
        while let Ok(r) = records.try_recv() {
            if r["message"] == "backend handshake failed" {
                attempts += 1;
                suppressed += r["suppressed"].as_u64().unwrap_or(0);
            }
        }
    }
    let windows = start.elapsed().as_secs() + 2;
    assert!(
        attempts <= PER_SECOND * windows && attempts < sent,
        "{attempts} lines for {sent} failed attempts in {:?}",
        start.elapsed()
    );
}
