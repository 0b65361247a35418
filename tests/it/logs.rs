//! What reaches the log.
//!
//! The `wsgate` binary in its default text format, at debug level, fed attacker-chosen bytes
//! and credentials: no client byte may forge a second record (a raw `\n`/`\r` would start a
//! line that looks like one; an ESC would repaint the operator's terminal), and no token or
//! cookie value is ever written, even at debug.
//!
//! Records that correlate: the request id on every record of a request and its session, at the
//! backend and in the client's answer; the W3C trace context passed or started; the session
//! open record; the access record's fields (absent, not 0, when there is nothing to say), in
//! the JSON format with lists as arrays; `closed_by` when the proxy ends a session.

use std::sync::{Arc, Mutex};

use futures_util::SinkExt;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

/// Starts `wsgate run` in the text format at `RUST_LOG=debug` with `config`; returns the child
/// and the address it listens on (read from its `listening` line).
async fn spawn_text(config: &std::path::Path) -> (Child, String, Vec<u8>) {
    let mut child = spawn_binary(config, "text", "debug");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let addr = tokio::time::timeout(STEP, async {
        loop {
            let mut line = Vec::new();
            if err.read_until(b'\n', &mut line).await.unwrap() == 0 {
                panic!("wsgate exited: {}", String::from_utf8_lossy(&seen));
            }
            seen.extend_from_slice(&line);
            let line = String::from_utf8_lossy(&line);
            if line.contains("listening")
                && let Some(a) = line.split("listen=").nth(1)
            {
                break a.split_whitespace().next().unwrap().to_string();
            }
        }
    })
    .await
    .expect("no listening line");
    // The rest of the log is read when the process has exited.
    child.stderr = Some(err.into_inner());
    (child, addr, seen)
}

/// Stops the child and returns its whole log (what `spawn_text` saw first, then the rest).
async fn finish(mut child: Child, mut log: Vec<u8>) -> Vec<u8> {
    let pid = child.id().expect("running");
    let mut stderr = child.stderr.take().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::timeout(STEP, read_all(&mut stderr, &mut log))
        .await
        .expect("log not closed");
    assert!(
        tokio::time::timeout(STEP, child.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    log
}

async fn read_all<R: AsyncRead + Unpin>(r: &mut R, into: &mut Vec<u8>) {
    r.read_to_end(into).await.unwrap();
}

/// The log's lines, each checked to be a whole record: it starts with the timestamp and a
/// level, as only the formatter writes it, and carries no raw control byte (ESC, CR, BEL...).
fn records(log: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(log);
    let mut out = Vec::new();
    for line in text.lines() {
        assert!(
            !line.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f),
            "a raw control byte in the log: {line:?}"
        );
        let mut words = line.split_whitespace();
        let stamp = words.next().unwrap_or("");
        let level = words.next().unwrap_or("");
        assert!(
            stamp.len() >= 20 && stamp.as_bytes()[4] == b'-' && stamp.contains('T'),
            "a line that is not a record (forged?): {line:?}\nlog:\n{text}"
        );
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "a line without a level (forged?): {line:?}"
        );
        out.push(line.to_string());
    }
    out
}

/// The access records that end a request: a session's end or a refusal (not the record of a
/// session's opening).
fn access_records(records: &[String]) -> Vec<&String> {
    records
        .iter()
        .filter(|l| l.contains("wsgate::access") && !l.contains("event=\"session_open\""))
        .collect()
}

/// What a forged record would look like if a value were written raw.
const FORGED: &str = "\n2026-01-01T00:00:00.000000Z  INFO wsgate::access: event=\"session\" route=\"admin\" outcome=\"closed\"";

#[tokio::test]
async fn attacker_bytes_cannot_forge_or_colour_a_record() {
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}{}origins = [\"https://app.example\"]\n",
            route("echo", "/ws", &[backend.url()]),
            route("strict", "/strict", &[backend.url()]),
        ),
    );
    let (child, addr, log) = spawn_text(&config).await;
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    let mut requests = 0;

    // Close reasons are UTF-8 text the peer chooses: raw CR, LF, ESC and BEL are all valid.
    let (mut ws, _) = connect(&format!("ws://{addr}/ws")).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hi"));
    let reason = format!("\x1b[31mred\x07\r{}", &FORGED[..FORGED.len().min(100)]);
    assert!(reason.len() <= 123);
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: reason.as_str().into(),
    })))
    .await
    .unwrap();
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await
    {}
    drop(ws);
    requests += 1;

    // Before the upgrade hyper refuses raw control bytes in the head; what passes is
    // percent-encoding and obs-text (bytes 0x80-0xff), in the path, the subprotocol offer and
    // the Origin, each of which lands in a refusal's record.
    let heads: [Vec<u8>; 3] = [
        upgrade_request("/ws%0a%0d%1b[31m%00/x", "Sec-WebSocket-Version: 14\r\n").into_bytes(),
        [
            upgrade_request("/ws", "").trim_end().as_bytes(),
            b"\r\nSec-WebSocket-Protocol: chat, a\x9b31m\xff\xfe\x85b\r\n\r\n",
        ]
        .concat(),
        [
            upgrade_request("/strict", "").trim_end().as_bytes(),
            b"\r\nOrigin: https://evil.example\x9b2J\xc2\x85\xe2\x80\xa8x\r\n\r\n",
        ]
        .concat(),
    ];
    for head in &heads {
        let (_s, resp) = raw_exchange(sock, head).await;
        assert!(resp.status >= 400, "{}", resp.head);
        requests += 1;
    }

    let log = finish(child, log).await;
    let records = records(&log);
    let access = access_records(&records);
    assert_eq!(
        access.len(),
        requests,
        "one access record per request:\n{}",
        records.join("\n")
    );
    // The values are there, escaped: the records still say what happened.
    let all = records.join("\n");
    assert!(all.contains(r"\u{1b}[31mred"), "{all}");
    assert!(all.contains("%0a%0d%1b"), "{all}");
    assert!(!all.contains("route=\"admin\""), "{all}");
}

#[tokio::test]
async fn tokens_and_cookies_are_never_logged() {
    // A `bearer.` subprotocol on a route that reads no token from the offer, chosen by a
    // backend that takes what it is offered: the session's records hid it only since 2026-12.
    const SUBPROTOCOL: &str = "bearer.eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzdWIifQ.c2lnbmF0dXJlc3Vi";
    let backend = EchoBackend::spawn_supporting(&["chat", SUBPROTOCOL]).await;
    let tmp = TempDir::new("logs");
    let secret = tmp.write(
        "hs256.secret",
        "an HMAC secret of at least thirty-two bytes\n",
    );
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}{}[route.auth.jwt]\nsecret_file = {:?}\nfrom = [\"query:access_token\", \"header\", \"cookie:session\"]\n",
            route("open", "/open", &[backend.url()]),
            route("jwt", "/jwt", &[backend.url()]),
            secret.display().to_string(),
        ),
    );
    let (child, addr, log) = spawn_text(&config).await;
    let sock: std::net::SocketAddr = addr.parse().unwrap();
    // Token-shaped (three base64url parts) so that every parser takes them for tokens.
    const BEARER: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZWFyZXIifQ.c2lnbmF0dXJlYmVhcmVy";
    const QUERY: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJxdWVyeSJ9.c2lnbmF0dXJlcXVlcnk";
    const COOKIE: &str = "c00kie-s3ss10n-v4lue";
    let credentials =
        format!("Authorization: Bearer {BEARER}\r\nCookie: theme=dark; session={COOKIE}\r\n");
    let target = |p: &str| format!("{p}?room=1&access_token={QUERY}");

    // A session through a route without auth (the credentials go to the backend as they
    // are), a refusal there, and refusals by the JWT route (bad signature; then a bad header).
    let offer = format!("{credentials}Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n");
    let (mut s, resp) =
        raw_exchange(sock, upgrade_request(&target("/open"), &offer).as_bytes()).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    assert!(resp.head.contains(SUBPROTOCOL), "{}", resp.head);
    tokio::io::AsyncWriteExt::write_all(&mut s, &client_frame(0x8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    read_until_closed(&mut s).await;
    for (path, extra) in [
        (
            target("/open"),
            format!("{credentials}Sec-WebSocket-Version: 8\r\n"),
        ),
        (target("/jwt"), credentials.clone()),
        ("/jwt".to_string(), credentials.clone()),
        ("/jwt".to_string(), format!("Cookie: session={COOKIE}\r\n")),
    ] {
        let (_s, resp) = raw_exchange(sock, upgrade_request(&path, &extra).as_bytes()).await;
        assert!(resp.status >= 400, "{path}: {}", resp.head);
        assert!(!resp.head.contains(BEARER) && !resp.body.contains(QUERY));
    }

    let log = finish(child, log).await;
    let all = records(&log).join("\n");
    assert!(all.contains("DEBUG"), "not at debug level:\n{all}");
    assert_eq!(access_records(&records(&log)).len(), 5, "{all}");
    for (what, secret) in [
        ("bearer token", BEARER),
        ("query token", QUERY),
        ("cookie", COOKIE),
        ("subprotocol token", SUBPROTOCOL),
    ] {
        // Any distinctive piece of it, not only the whole value.
        for piece in [secret, &secret[secret.len() - 12..]] {
            assert!(
                !all.contains(piece),
                "the {what} ({piece}) is in the log:\n{all}"
            );
        }
    }
}

// ---- records that correlate (JSON format) ----

type Record = Map<String, Value>;

/// `wsgate run` with JSON logs, its records collected as they are written.
struct JsonRun {
    child: Child,
    /// Each line, parsed; `Err` holds a line that was not a JSON object.
    lines: Arc<Mutex<Vec<Result<Record, String>>>>,
    changed: Arc<Notify>,
    /// The log has ended (the process closed its stderr).
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl JsonRun {
    /// Starts the binary on `config` at `RUST_LOG=level` and waits until it listens.
    async fn start(config: &std::path::Path, level: &str) -> (JsonRun, String) {
        let mut child = spawn_binary(config, "json", level);
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let run = JsonRun {
            child,
            lines: Arc::default(),
            changed: Arc::default(),
            ended: Arc::default(),
        };
        let (lines, changed, ended) = (run.lines.clone(), run.changed.clone(), run.ended.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let parsed = match serde_json::from_str(&line) {
                    Ok(Value::Object(r)) => Ok(r),
                    _ => Err(line),
                };
                lines.lock().unwrap().push(parsed);
                changed.notify_waiters();
            }
            ended.store(true, std::sync::atomic::Ordering::SeqCst);
            changed.notify_waiters();
        });
        let listening = run
            .wait_for("listening", |r| r["message"] == "listening")
            .await;
        let addr = listening["listen"].as_str().unwrap().to_string();
        (run, addr)
    }

    /// The records so far; every line must be one.
    fn records(&self) -> Vec<Record> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|l| match l {
                Ok(r) => r.clone(),
                Err(line) => panic!("not a JSON record: {line:?}"),
            })
            .collect()
    }

    /// The first record `pred` accepts, once written (within [`STEP`]).
    async fn wait_for(&self, what: &str, pred: impl Fn(&Record) -> bool) -> Record {
        let found = tokio::time::timeout(STEP, async {
            loop {
                let changed = self.changed.notified();
                if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                    return r;
                }
                changed.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no record for {what}; log:\n{}", self.dump()))
    }

    /// Waits (within [`STEP`]) until the log has ended; then every line is in `lines`.
    async fn until_ended(&self) {
        let ended = tokio::time::timeout(STEP, async {
            loop {
                let changed = self.changed.notified();
                if self.ended.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        ended.unwrap_or_else(|_| panic!("the log did not end; log:\n{}", self.dump()));
    }

    /// The session record of the request with this id.
    async fn session_closed(&self, request_id: &str) -> Record {
        self.wait_for("session closed", |r| {
            r["message"] == "session closed" && r.get("request_id") == Some(&json!(request_id))
        })
        .await
    }

    fn dump(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let text: Vec<String> = lines
            .iter()
            .map(|l| match l {
                Ok(r) => Value::Object(r.clone()).to_string(),
                Err(line) => line.clone(),
            })
            .collect();
        text.join("\n")
    }

    async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let status = tokio::time::timeout(STEP, self.child.wait()).await;
        assert!(status.unwrap().unwrap().success());
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A field's value as text (strings unquoted).
fn text(r: &Record, key: &str) -> String {
    match r.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => panic!("no {key} in {r:?}"),
    }
}

#[tokio::test]
async fn the_request_id_reaches_the_backend_the_client_and_every_record() {
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("echo", "/ws", &[backend.url()])
        ),
    );
    let (run, addr) = JsonRun::start(&config, "debug").await;

    let (mut ws, resp) = connect_with(&format!("ws://{addr}/ws/room?key=s3cr3t"), |r| {
        let h = r.headers_mut();
        h.insert("sec-websocket-protocol", "chat".parse().unwrap());
        h.insert("user-agent", "logs-test/1.0".parse().unwrap());
        // A client's own id: not a trusted proxy's, so replaced.
        h.insert("x-request-id", "client-chosen".parse().unwrap());
    })
    .await
    .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(is_hex(&id, 32), "{id}");
    let seen = backend.last_request();
    assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
    // A trace started with the request id as its trace id, not sampled.
    let tp = seen.header("traceparent").unwrap();
    assert!(
        tp.starts_with(&format!("00-{id}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    assert!(is_hex(&tp[36..52], 16), "{tp}");

    let open = run
        .wait_for("session open", |r| r["message"] == "session open")
        .await;
    assert_eq!(open["level"], "INFO");
    assert_eq!(open["target"], "wsgate::access");
    assert_eq!(open["event"], "session_open");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hi"));
    send_close(&mut ws, CloseCode::Normal, "bye").await;
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await
    {}
    let closed = run.session_closed(&id).await;
    for r in [&open, &closed] {
        assert_eq!(r["request_id"], id.as_str());
        assert_eq!(r["route"], "echo");
        assert_eq!(r["backend"], backend.url().as_str());
        assert_eq!(r["transport"], "h1");
        assert_eq!(
            r["client"].as_str().map(|c| c.starts_with("127.0.0.1:")),
            Some(true)
        );
        assert_eq!(r["host"], "127.0.0.1");
        // The path, never the query.
        assert_eq!(r["path"], "/ws/room");
        assert_eq!(r["subprotocol"], "chat");
        assert_eq!(r["user_agent"], "logs-test/1.0");
        // The trace id is the request id: not repeated. No user on an open route.
        assert!(
            !r.contains_key("trace_id") && !r.contains_key("user"),
            "{r:?}"
        );
    }
    assert_eq!(closed["session"], open["session"]);
    assert_eq!(closed["client_close_code"], 1000);
    assert_eq!(closed["client_close_reason"], "bye");
    assert_eq!(closed["closed_by"], "client");

    // Every record that names the session names the request (the debug ones too).
    let of_session: Vec<Record> = run
        .records()
        .into_iter()
        .filter(|r| r.get("session") == Some(&open["session"]))
        .collect();
    assert!(of_session.len() >= 3, "{}", run.dump());
    for r in &of_session {
        assert_eq!(r["request_id"], id.as_str(), "{r:?}");
    }
    assert!(
        of_session
            .iter()
            .any(|r| r["message"] == "backend handshake")
    );

    // A refusal: its own id, in the answer and the record.
    let (_s, refused) = raw_exchange(
        addr.parse().unwrap(),
        upgrade_request("/ws/x?key=s3cr3t", "User-Agent: probe\r\n")
            .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
            .as_bytes(),
    )
    .await;
    assert_eq!(refused.status, 426);
    let refused_id = refused
        .header("x-request-id")
        .expect("an id on the refusal");
    assert!(is_hex(&refused_id, 32) && refused_id != id, "{refused_id}");
    let record = run
        .wait_for("the refusal", |r| r["message"] == "handshake refused")
        .await;
    assert_eq!(record["request_id"], refused_id.as_str());
    assert_eq!(record["host"], "localhost");
    assert_eq!(record["path"], "/ws/x");
    assert_eq!(record["user_agent"], "probe");
    assert!(!run.dump().contains("s3cr3t"), "{}", run.dump());
    run.stop().await;
}

#[tokio::test]
async fn a_trusted_proxys_request_id_is_kept_and_an_untrusted_clients_replaced() {
    let backend = EchoBackend::spawn().await;
    let listener = |trusted: &str| {
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"{trusted}\"]\n{}",
            route("r", "/", &[backend.url()])
        )
    };
    let edge = |r: &mut http::Request<()>| {
        r.headers_mut()
            .insert("x-request-id", "edge-7f3a/42".parse().unwrap());
    };
    let trusted = Gateway::spawn(&listener("127.0.0.0/8")).await;
    let (_ws, resp) = connect_with(&trusted.url("/"), edge).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "edge-7f3a/42");
    let seen = backend.last_request();
    assert_eq!(seen.header("x-request-id"), Some("edge-7f3a/42"));
    // Not a trace id: the trace gets its own.
    let tp = seen.header("traceparent").unwrap();
    assert!(is_hex(&tp[3..35], 32), "{tp}");

    // A trusted proxy's id that is not sane is not kept either.
    let (_ws, resp) = connect_with(&trusted.url("/"), |r| {
        r.headers_mut()
            .insert("x-request-id", "has a space".parse().unwrap());
    })
    .await
    .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(is_hex(id, 32), "{id}");

    let untrusted = Gateway::spawn(&listener("10.0.0.0/8")).await;
    let (_ws, resp) = connect_with(&untrusted.url("/"), edge).await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(is_hex(id, 32), "{id}");
    let seen = backend.last_request();
    assert_eq!(seen.headers.get_all("x-request-id").iter().count(), 1);
    assert_eq!(seen.header("x-request-id"), Some(id));
}

#[tokio::test]
async fn a_valid_traceparent_is_passed_and_an_invalid_one_replaced() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("r", "/", &[backend.url()])).await;
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let with = |tp: &'static str| {
        move |r: &mut http::Request<()>| {
            let h = r.headers_mut();
            h.insert("traceparent", tp.parse().unwrap());
            h.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        }
    };
    let (_ws, _) = connect_with(&gw.url("/"), with(TP)).await.unwrap();
    let seen = backend.last_request();
    assert_eq!(seen.header("traceparent"), Some(TP));
    assert_eq!(seen.header("tracestate"), Some("congo=t61rcWkgMzE"));

    // An all-zero trace id is invalid: a new trace, and the old trace's state dropped.
    const ZERO: &str = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let (_ws, resp) = connect_with(&gw.url("/"), with(ZERO)).await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    let seen = backend.last_request();
    let tp = seen.header("traceparent").unwrap();
    assert!(tp.starts_with(&format!("00-{id}-")), "{tp}");
    assert_eq!(seen.header("tracestate"), None);
}

#[tokio::test]
async fn a_missing_close_code_is_absent_and_lists_are_arrays() {
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("echo", "/", &[backend.url(), "ws://127.0.0.1:9".into()])
        ),
    );
    let (run, addr) = JsonRun::start(&config, "info").await;
    let startup = run.wait_for("the route", |r| r["message"] == "route").await;
    assert_eq!(
        startup["backends"],
        json!([backend.url(), "ws://127.0.0.1:9"])
    );

    // A close frame without a code: the code is absent, the (empty) reason is there.
    let (mut ws, resp) = connect(&format!("ws://{addr}/")).await;
    let empty_close = text_header(&resp, "x-request-id");
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await
    {}
    // No close frame at all: neither code nor reason.
    let (mut s, resp) =
        raw_exchange(addr.parse().unwrap(), upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    let vanished = resp.header("x-request-id").unwrap();
    s.shutdown().await.unwrap();
    read_until_closed(&mut s).await;

    let r = run.session_closed(&empty_close).await;
    assert!(!r.contains_key("client_close_code"), "{r:?}");
    assert_eq!(r["client_close_reason"], "");
    let r = run.session_closed(&vanished).await;
    assert_eq!(r["outcome"], "client_gone");
    for absent in ["client_close_code", "client_close_reason"] {
        assert!(!r.contains_key(absent), "{absent} in {r:?}");
    }
    // The backend answered the proxy's 1001.
    assert_eq!(r["backend_close_code"], 1001);
    run.stop().await;
}

/// A backend its active checks take out is logged with the last check's error: the checks'
/// own failures are at debug, so "backend unhealthy" said nothing of why.
#[tokio::test]
async fn a_backend_taken_out_by_its_checks_is_logged_with_why() {
    let down = closed_port().await;
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}[route.health]\ncheck = \"tcp\"\n\
             interval = \"100ms\"\ntimeout = \"200ms\"\n",
            route("echo", "/", &[format!("ws://{down}")])
        ),
    );
    let (run, _addr) = JsonRun::start(&config, "info").await;
    let out = run
        .wait_for("the backend taken out", |r| {
            r["message"] == "backend unhealthy: its active checks failed, no new sessions go to it"
        })
        .await;
    let why = text(&out, "last_error");
    assert!(!why.is_empty(), "{out:?}");
    run.stop().await;
}

/// One backend's refused connect, which the next backend makes good, is logged as that
/// backend's failure, not as the route's "no backend reachable" (what the client would be
/// told had every backend failed).
#[tokio::test]
async fn a_failed_over_connect_is_the_backends_failure_not_the_routes() {
    let backend = EchoBackend::spawn().await;
    let down = closed_port().await;
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("echo", "/", &[format!("ws://{down}"), backend.url()])
        ),
    );
    let (run, addr) = JsonRun::start(&config, "info").await;
    // Round robin: one of two sessions in a row starts at the backend that is down.
    for _ in 0..2 {
        let (mut ws, resp) = connect(&format!("ws://{addr}/")).await;
        assert_eq!(resp.status(), 101);
        ws.close(None).await.unwrap();
    }
    let failed = run
        .wait_for("the failed attempt", |r| {
            r["message"] == "backend handshake failed"
        })
        .await;
    let error = text(&failed, "error");
    assert!(
        error.starts_with("backend connect failed (") && error.contains(&down.to_string()),
        "{error}"
    );
    let over = run
        .wait_for("the failover", |r| {
            r["message"] == "failed over to the next backend"
        })
        .await;
    let list = text(&over, "failed");
    assert!(!list.contains("no backend reachable"), "{list}");
    assert!(list.starts_with("backend connect failed ("), "{list}");
    run.stop().await;
}

/// A server that takes one connection, reads a request head and never answers: `asked`
/// once the head is in, then `closed` with what it read next (0: the proxy closed).
async fn unanswering_server() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Receiver<usize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (asked_tx, asked) = tokio::sync::oneshot::channel();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        let _ = asked_tx.send(());
        let n = s.read(&mut buf).await.unwrap_or(0);
        let _ = closed_tx.send(n);
    });
    (addr, asked, closed)
}

/// A client that goes away while its backend is asked leaves a record (outcome
/// `client_gone`, status 499, as a plain request's), and the backend's half-made connection
/// is closed. There was no trace of it but a debug line: a slow backend's main symptom,
/// users giving up, went unseen.
#[tokio::test]
async fn a_client_that_gives_up_on_a_slow_backend_is_recorded() {
    let (slow, asked, closed) = unanswering_server().await;
    let (run, r) = record_of_a_client_giving_up(
        route("slow", "/slow", &[format!("ws://{slow}")]),
        "/slow",
        asked,
    )
    .await;
    assert_eq!(r["route"], "slow");
    let n = tokio::time::timeout(STEP, closed)
        .await
        .expect("the backend's connection was kept")
        .unwrap();
    assert_eq!(n, 0);
    run.stop().await;
}

/// Runs wsgate with `routes`, sends an upgrade for `path`, drops the client once `asked`
/// says the slow party has the request, and returns the run, still running, with the
/// handshake's record after checking what every such record says (the client gave up:
/// `client_gone`, 499).
async fn record_of_a_client_giving_up(
    routes: String,
    path: &str,
    asked: tokio::sync::oneshot::Receiver<()>,
) -> (JsonRun, Record) {
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!("[[listener]]\nlisten = \"127.0.0.1:0\"\n{routes}"),
    );
    let (run, addr) = JsonRun::start(&config, "info").await;
    let mut client = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
    client
        .write_all(upgrade_request(path, "").as_bytes())
        .await
        .unwrap();
    tokio::time::timeout(STEP, asked).await.unwrap().unwrap();
    drop(client);
    let r = run
        .wait_for("the abandoned handshake's record", |r| {
            r.get("event").is_some_and(|e| e == "refused")
        })
        .await;
    assert_eq!(r["outcome"], "client_gone", "{r:?}");
    assert_eq!(r["status"], 499);
    assert_eq!(r["fault"], "client");
    (run, r)
}

/// A handshake (or a plain request) still waiting on its backend when a shutdown's grace
/// ends is ended by the proxy, not by its client: it is answered 503 (it was dropped
/// unanswered, while its record said 503), and its record says so (`draining`, 503, the
/// proxy's fault), not `client_gone`, and it is written.
#[tokio::test]
async fn a_request_dropped_at_the_end_of_a_shutdown_is_the_proxys_doing() {
    // Answered, the plain request is a refused one too (`refused`, as a 502 is).
    for (event, request) in [
        ("refused", upgrade_request("/slow", "")),
        (
            "refused",
            "GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
        ),
    ] {
        let (slow, asked, _closed) = unanswering_server().await;
        let tmp = TempDir::new("logs");
        let config = tmp.write(
            "wsgate.toml",
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[shutdown]\ngrace = \"300ms\"\n\
                 unready_delay = \"off\"\n[timeouts]\nbackend_handshake = \"30s\"\n{}\
                 http = true\nresponse_header_timeout = \"30s\"\n",
                route("slow", "/slow", &[format!("ws://{slow}")]),
            ),
        );
        let (run, addr) = JsonRun::start(&config, "info").await;
        let mut client = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
        client.write_all(request.as_bytes()).await.unwrap();
        tokio::time::timeout(STEP, asked).await.unwrap().unwrap();
        let pid = run.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let answer = read_response(&mut client).await;
        assert_eq!(answer.status, 503, "{event}: {answer:?}");
        run.until_ended().await;
        let records: Vec<Record> = run
            .records()
            .into_iter()
            .filter(|r| r.get("event").is_some_and(|e| e == event))
            .collect();
        assert_eq!(records.len(), 1, "{event}: {records:?}");
        assert_eq!(records[0]["outcome"], "draining", "{records:?}");
        assert_eq!(records[0]["status"], 503);
        drop(client);
    }
}

/// The same for a client that goes away while its route's forward-auth service is asked
/// (as slow as the service is): one record, with the request's path as the client sent it.
#[tokio::test]
async fn a_client_that_gives_up_on_a_slow_auth_service_is_recorded() {
    let (auth_addr, asked, _closed) = unanswering_server().await;
    let backend = EchoBackend::spawn().await;
    let (run, r) = record_of_a_client_giving_up(
        format!(
            "{}[route.auth.forward_auth]\nurl = \"http://{auth_addr}/check\"\ntimeout = \"30s\"\n",
            route("guarded", "/guarded", &[backend.url()]),
        ),
        "/guarded/room",
        asked,
    )
    .await;
    assert_eq!(r["route"], "guarded");
    assert_eq!(r["path"], "/guarded/room");
    assert_eq!(backend.request_count(), 0);
    run.stop().await;
}

/// A refusal the backends made (their 4xx, a broken 101, no answer in time) names the
/// backend in its record, whichever of the route's backends it was; the record said only
/// "backend refused the upgrade with 404" (or "backend did not answer the upgrade within
/// 300ms").
#[tokio::test]
async fn a_backends_refusal_names_the_backend_in_its_record() {
    let (refusing, _seen) =
        scripted_backend(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()).await;
    let (broken, _seen) = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: wrong\r\n\r\n"
            .to_vec(),
    )
    .await;
    let (silent, _task) = silent_backend().await;
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}{}{}[route.timeouts]\nbackend_handshake = \"300ms\"\n",
            route("four", "/four", &[format!("ws://{refusing}")]),
            route("bad", "/bad", &[format!("ws://{broken}")]),
            route("slow", "/slow", &[format!("ws://{silent}")]),
        ),
    );
    let (run, addr) = JsonRun::start(&config, "info").await;
    for (path, status) in [("/four", 404), ("/bad", 502), ("/slow", 504)] {
        let (_s, resp) =
            raw_exchange(addr.parse().unwrap(), upgrade_request(path, "").as_bytes()).await;
        assert_eq!(resp.status, status, "{path}");
    }
    for (outcome, backend) in [
        ("backend_refused", refusing),
        ("backend_bad_handshake", broken),
        ("backend_handshake_timeout", silent),
    ] {
        let r = run
            .wait_for(outcome, |r| {
                r.get("event").is_some_and(|e| e == "refused")
                    && r.get("outcome").is_some_and(|o| o == outcome)
            })
            .await;
        let reason = text(&r, "reason");
        assert!(reason.contains(&format!("ws://{backend}")), "{reason}");
        // A backend's 4xx is its word on the client's request, logged as the proxy's own
        // refusals of a client are (it was a warning, "fault": "backend"); its failures are
        // the backend's.
        let (level, fault) = if outcome == "backend_refused" {
            ("INFO", "client")
        } else {
            ("WARN", "backend")
        };
        assert_eq!(
            (text(&r, "level"), text(&r, "fault")),
            (level.into(), fault.into()),
            "{r:?}"
        );
        if outcome == "backend_handshake_timeout" {
            // The attempt's share of the budget, to the millisecond: all of it, less what
            // the clock moved before the attempt (a loaded machine took a millisecond).
            let ms: u64 = reason
                .rsplit_once("within ")
                .and_then(|(_, d)| d.strip_suffix("ms"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{reason}"));
            assert!((250..=300).contains(&ms), "{reason}");
        }
    }
    run.stop().await;
}

/// Connections a TLS listener refuses before any request (plain HTTP on the TLS port, a
/// broken TLS handshake) are logged as refusals, as a refused request head is, and counted
/// with the status they were answered with (400 for plain HTTP, `none` for the closed one).
#[tokio::test]
async fn refusals_before_the_tls_handshake_completes_are_logged_and_counted_by_status() {
    let backend = EchoBackend::spawn().await;
    let ca = crate::support::tls::TestCa::new();
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}{}",
            crate::support::tls::tls_listener(&cert, &key, ""),
            route("echo", "/", &[backend.url()])
        ),
    );
    let (run, addr) = JsonRun::start(&config, "info").await;
    let admin: std::net::SocketAddr = text(
        &run.wait_for("the admin listener", |r| r["message"] == "admin listener")
            .await,
        "admin",
    )
    .parse()
    .unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (mut plain, resp) = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(resp.status, 400, "{resp:?}");
    read_until_closed(&mut plain).await;
    let mut broken = tokio::net::TcpStream::connect(addr).await.unwrap();
    broken
        .write_all(b"\x16\x03\x01\x00\x05hello")
        .await
        .unwrap();
    read_until_closed(&mut broken).await;
    // Plain HTTP that never finishes its head: no answer, so no status in the record (it
    // said 400 at once, for an answer never sent).
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"GET").await.unwrap();
    assert_eq!(read_until_closed(&mut partial).await, b"");
    // Nor one that leaves in the middle of it (it was answered 400 into the void, and
    // recorded 400).
    let mut gone = tokio::net::TcpStream::connect(addr).await.unwrap();
    gone.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    gone.shutdown().await.unwrap();
    assert_eq!(read_until_closed(&mut gone).await, b"");

    let refused = |outcome: &'static str| {
        move |r: &Record| {
            r["message"] == "connection refused before its request" && r["outcome"] == outcome
        }
    };
    let r = run
        .wait_for("plain HTTP", refused("plain_http_on_tls"))
        .await;
    assert_eq!(r["status"], 400);
    assert_eq!(r["event"], "refused");
    let unfinished = |r: &Record| refused("plain_http_on_tls")(r) && r.get("status").is_none();
    run.wait_for("the two unfinished plain HTTP heads", |_| {
        run.records().iter().filter(|r| unfinished(r)).count() == 2
    })
    .await;
    for r in run.records().iter().filter(|r| unfinished(r)) {
        assert_eq!(r["event"], "refused");
    }
    let r = run
        .wait_for("the broken handshake", refused("tls_handshake_failed"))
        .await;
    assert!(!r.contains_key("status"), "{r:?}");
    assert!(!text(&r, "error").is_empty());

    let m = scrape(admin).await;
    let count = |outcome: &str, status: &str| {
        m.value(
            "wsgate_handshakes_refused_total",
            &[("route", "-"), ("outcome", outcome), ("status", status)],
        )
    };
    assert_eq!(count("plain_http_on_tls", "400"), 1.0);
    assert_eq!(count("plain_http_on_tls", "none"), 2.0);
    assert_eq!(count("tls_handshake_failed", "none"), 1.0);
    run.stop().await;
}

/// A TLS 1.0 or 1.1 client's failed handshake is logged as what it is, a client offering no
/// TLS version wsgate accepts: it read `peer is incompatible:
/// SignatureAlgorithmsExtensionRequired` (or `Tls12NotOffered`), rustls's variant names.
#[tokio::test]
async fn an_old_tls_clients_handshake_failure_says_so_in_words() {
    use crate::support::tls::{TestCa, old_client_hello, tls_listener};
    let ca = TestCa::new();
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "{}{}",
            tls_listener(&cert, &key, ""),
            route("echo", "/", &["ws://127.0.0.1:1".to_string()])
        ),
    );
    let (run, addr) = JsonRun::start(&config, "info").await;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    // TLS 1.0 as old clients send it (no signature_algorithms), and TLS 1.1 with it.
    for hello in [
        old_client_hello([3, 1], false),
        old_client_hello([3, 2], true),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&hello).await.unwrap();
        read_until_closed(&mut s).await;
    }
    let failed = |r: &Record| r.get("outcome") == Some(&json!("tls_handshake_failed"));
    run.wait_for("both failed handshakes", |_| {
        run.records().iter().filter(|r| failed(r)).count() == 2
    })
    .await;
    for r in run.records().iter().filter(|r| failed(r)) {
        let error = text(r, "error");
        assert!(
            error.starts_with(
                "the client offered no TLS version wsgate accepts (TLS 1.2 and 1.3 only): an \
                 old TLS 1.0 or 1.1 client"
            ),
            "{error}"
        );
    }
    run.stop().await;
}

/// A TLS client that closes its TCP connection without `close_notify` (a killed process, a
/// phone that drops it) is gone as a plain one is: the backend gets its 1001 at once and the
/// record is not `cut`. Its truncation error was taken for a side still there: the proxy sent
/// it a close frame and waited the closing handshake's 5 s for a reply that could not come.
#[tokio::test]
async fn a_tls_client_that_closes_without_close_notify_is_gone_at_once() {
    let ca = tls::TestCa::new();
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "{}{}",
            tls::tls_listener(&cert, &key, ""),
            route("echo", "/", &[backend.url()])
        ),
    );
    let (run, addr) = JsonRun::start(&config, "info").await;
    let tcp = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
    let mut stream = ca
        .connector()
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(upgrade_request("/", "").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed in the 101"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a request id")
        .to_string();
    // The TCP connection closes under the TLS session: no close_notify.
    let (tcp, _) = stream.into_inner();
    drop(tcp);
    let r = run.session_closed(&id).await;
    assert_eq!(r["outcome"], "client_gone", "{r:?}");
    assert_eq!(r["cut"], false, "{r:?}");
    assert_eq!(r["backend_close_code"], 1001, "{r:?}");
    run.stop().await;
}

/// A second SIGTERM during the drain cuts the sessions at once, and still each gets its
/// record; the exit says why in a record of its own: every line of a JSON log is JSON.
#[tokio::test]
async fn a_second_signal_cuts_the_sessions_each_with_its_record() {
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[shutdown]\ngrace = \"60s\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("echo", "/", &[backend.url()])
        ),
    );
    let (mut run, addr) = JsonRun::start(&config, "info").await;
    // A client that never answers the proxy's close: the drain would wait for it.
    let (_client, resp) =
        raw_exchange(addr.parse().unwrap(), upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101, "{}", resp.head);
    let id = resp.header("x-request-id").unwrap();
    send_signal(&run.child, "TERM");
    run.wait_for("the drain", |r| {
        r.get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.starts_with("shutting down: no new connections"))
    })
    .await;
    send_signal(&run.child, "TERM");
    let status = tokio::time::timeout(STEP, run.child.wait())
        .await
        .expect("no exit after the second signal")
        .unwrap();
    assert!(!status.success(), "{status:?}");
    run.until_ended().await;
    let r = run.session_closed(&id).await;
    assert_eq!(r["cut"], true, "{r:?}");
    let last = run
        .wait_for("the second signal", |r| {
            r.get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.starts_with("second signal"))
        })
        .await;
    assert_eq!(last["live_sessions"], 1);
    // Every line a record (`records` panics on any other).
    assert!(!run.records().is_empty());
}

fn text_header(resp: &http::Response<Option<Vec<u8>>>, name: &str) -> String {
    resp.headers()[name].to_str().unwrap().to_string()
}

/// When the proxy ends a session because a side did not answer its ping or sent a message
/// over the limit, the proxy started the close: `closed_by` says so, and the outcome (and
/// `offender`) which side it was about.
#[tokio::test]
async fn closed_by_is_the_proxy_for_ping_timeouts_and_oversized_messages() {
    let echo = EchoBackend::spawn().await;
    // Answers the upgrade, then never reads or writes again (a hung process).
    let (silent, _) = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec(),
    )
    .await;
    let pings = "[route.timeouts]\nping_interval = \"100ms\"\npong_timeout = \"200ms\"\n";
    let tmp = TempDir::new("logs");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}{pings}{}{pings}{}max_message = \"1KiB\"\n",
            route("hung", "/hung", &[format!("ws://{silent}")]),
            route("pinged", "/pinged", &[echo.url()]),
            route("small", "/small", &[echo.url()]),
        ),
    );
    let (run, addr) = JsonRun::start(&config, "info").await;

    let (mut ws, _) = connect(&format!("ws://{addr}/hung")).await;
    assert_eq!(next_close(&mut ws).await.reason, "backend not responding");

    // A client that never answers a ping (nor reads anything).
    let (_mute, resp) = raw_exchange(
        addr.parse().unwrap(),
        upgrade_request("/pinged", "").as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 101, "{}", resp.head);

    let (mut ws, _) = connect(&format!("ws://{addr}/small")).await;
    ws.send(Message::binary(vec![0u8; 2048])).await.unwrap();
    assert_eq!(u16::from(next_close(&mut ws).await.code), 1009);

    for (route, outcome, offender) in [
        ("hung", "backend_ping_timeout", "backend"),
        ("pinged", "client_ping_timeout", "client"),
        ("small", "message_too_big", "client"),
    ] {
        let r = run
            .wait_for(route, |r| {
                r["message"] == "session closed" && r["route"] == route
            })
            .await;
        assert_eq!(
            (text(&r, "outcome"), text(&r, "closed_by")),
            (outcome.to_string(), "proxy".to_string()),
            "{r:?}"
        );
        assert_eq!(r["offender"], offender, "{r:?}");
    }
    run.stop().await;
}
