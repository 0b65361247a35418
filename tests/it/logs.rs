//! What reaches the log: the `wsgate` binary in its default text format, at debug level, fed
//! attacker-chosen bytes and credentials. No client byte may forge a second record (a raw
//! `\n`/`\r` would start a line that looks like one; an ESC would repaint the operator's
//! terminal), and no token or cookie value is ever written, even at debug.

use std::process::Stdio;

use futures_util::SinkExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

/// Starts `wsgate run` in the text format at `RUST_LOG=debug` with `config`; returns the child
/// and the address it listens on (read from its `listening` line).
async fn spawn_text(config: &std::path::Path) -> (Child, String, Vec<u8>) {
    let mut child = Command::new(BIN)
        .args(["--log-format", "text", "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
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

fn access_records(records: &[String]) -> Vec<&String> {
    records
        .iter()
        .filter(|l| l.contains("wsgate::access"))
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
    let backend = EchoBackend::spawn().await;
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
    let (mut s, resp) = raw_exchange(
        sock,
        upgrade_request(&target("/open"), &credentials).as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 101, "{}", resp.head);
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
