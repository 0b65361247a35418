//! Faults, with real processes: a backend killed in the middle of traffic and started again
//! on the same port, and SIGTERM to a wsgate carrying thousands of sessions. The backend is
//! `wsgate echo` (its own process, so it can be killed); wsgate is the binary.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// `wsgate echo` on `listen`: the child and the address it listens on.
async fn echo_process(listen: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["echo", "--listen", listen])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(STEP, lines.next_line())
        .await
        .expect("the echo backend did not start")
        .unwrap()
        .unwrap_or_default();
    let addr = line
        .split("ws://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    // Keep reading its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// A session through `gw` to `wsgate echo`, past the greeting it sends first.
async fn open(gw: &Gateway) -> Ws {
    let (mut ws, _) = connect(&gw.url("/")).await;
    let greeting = next_data(&mut ws).await;
    assert!(
        greeting.to_string().starts_with("wsgate demo"),
        "{greeting:?}"
    );
    ws
}

async fn echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next_data(ws).await, Message::text(text));
}

#[tokio::test]
async fn a_backend_killed_during_traffic_and_restarted_on_its_port() {
    let (mut backend, addr) = echo_process("127.0.0.1:0").await;
    let gw = Gateway::spawn(&route("r", "/", &[format!("ws://{addr}")])).await;
    let mut sessions = Vec::new();
    for n in 0..20 {
        let mut ws = open(&gw).await;
        echoes(&mut ws, &format!("before {n}")).await;
        sessions.push(ws);
    }

    backend.start_kill().unwrap();
    backend.wait().await.unwrap();
    // Every session learns it at once: 1011, the backend connection was lost.
    for ws in &mut sessions {
        let close = next_close(ws).await;
        assert_eq!(u16::from(close.code), 1011, "{close:?}");
    }
    drop(sessions);
    // While it is down, a handshake gets 502 with a reason, not a hang.
    let (_, down) = raw_exchange(gw.addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(down.status, 502, "{}", down.body);

    // Back on the same port: served again, with no restart of wsgate.
    let (_backend, again) = echo_process(&addr.to_string()).await;
    assert_eq!(again, addr);
    let mut ws = open(&gw).await;
    echoes(&mut ws, "after the restart").await;
}

#[tokio::test]
async fn sigterm_with_thousands_of_sessions_closes_every_one_and_exits_in_the_grace() {
    const SESSIONS: usize = 2000;
    const BUSY: usize = 200;
    let (_backend, addr) = echo_process("127.0.0.1:0").await;
    let tmp = TempDir::new("faults-sigterm");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[shutdown]\ngrace = \"20s\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n{}",
            route("r", "/", &[format!("ws://{addr}")])
        ),
    );
    let mut gw = spawn_binary(&config, "json", "warn,wsgate=info");
    let mut log = tokio::io::AsyncBufReadExt::lines(BufReader::new(gw.stderr.take().unwrap()));
    let mut seen = Vec::new();
    let listening = wait_line(&mut log, &mut seen, "listening", |l| {
        l.contains("\"listening\"")
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let url = format!("ws://{}/", v["listen"].as_str().unwrap());
    // The log is read on, so the process never blocks on a full pipe.
    let log = tokio::spawn(async move {
        while let Ok(Some(line)) = log.next_line().await {
            seen.push(line);
        }
        seen
    });

    let mut clients = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        clients.push(connect(&url).await.0);
    }
    // Every client waits for its close frame and answers it; the busy ones send all along.
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            tokio::spawn(async move {
                let (mut sink, mut stream) = ws.split();
                let busy = i < BUSY;
                let mut n = 0u64;
                loop {
                    if busy {
                        n += 1;
                        if sink.send(Message::text(format!("{i}:{n}"))).await.is_err() {
                            return None;
                        }
                    }
                    let next = tokio::time::timeout(STEP * 3, stream.next()).await;
                    match next {
                        Ok(Some(Ok(Message::Close(Some(c))))) => {
                            let _ = sink.close().await;
                            return Some(u16::from(c.code));
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => return None,
                    }
                }
            })
        })
        .collect();
    let started = tokio::time::Instant::now();
    send_signal(&gw, "TERM");
    let mut codes = std::collections::BTreeMap::new();
    for t in tasks {
        *codes.entry(t.await.unwrap()).or_insert(0usize) += 1;
    }
    let status = tokio::time::timeout(Duration::from_secs(25), gw.wait())
        .await
        .expect("wsgate did not exit within its grace period")
        .unwrap();
    let took = started.elapsed();
    let log = log.await.unwrap();
    assert_eq!(
        codes,
        [(Some(1001), SESSIONS)].into_iter().collect(),
        "every session must get its 1001"
    );
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
    assert!(took < Duration::from_secs(20), "the drain took {took:?}");
    assert!(
        !log.iter().any(|l| l.contains("cutting remaining sessions")),
        "no session may be cut:\n{}",
        log.join("\n")
    );
}

/// What a well-behaved client does after losing its session: reconnect at once, and on 429
/// or 503 wait as `Retry-After` says. Returns the statuses it was refused with on the way.
async fn reconnect(url: &str) -> (Ws, Vec<u16>) {
    use tokio_tungstenite::tungstenite::Error;
    let mut refused = Vec::new();
    loop {
        match connect_with(url, |_| {}).await {
            Ok((ws, _)) => return (ws, refused),
            Err(Error::Http(resp)) if matches!(resp.status().as_u16(), 429 | 503) => {
                refused.push(resp.status().as_u16());
                let wait: u64 = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .expect("a 429 or 503 says when to come back");
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Err(e) => {
                refused.push(0);
                panic!("reconnect failed after {refused:?}: {e}");
            }
        }
        assert!(refused.len() < 20, "still refused after {refused:?}");
    }
}

/// A backend with hundreds of sessions dies and all its clients come back within the same
/// second: the handshake rate limit spreads them out (429 with `Retry-After`), failover and
/// ejection send them to the backend that remains (none gets a 502), and that backend's own
/// sessions go on echoing throughout.
#[tokio::test]
async fn a_reconnect_storm_after_a_backend_dies_is_absorbed() {
    const PER_BACKEND: usize = 300;
    let (mut dying, a) = echo_process("127.0.0.1:0").await;
    let (_remaining, b) = echo_process("127.0.0.1:0").await;
    // The limit must be met even on a slow machine: 300 reconnections exceed the burst
    // plus what refills unless the storm takes longer than 1.25 s.
    let gw = Gateway::spawn(&format!(
        "[limits]\nhandshake_rate_per_ip = \"200/s\"\nhandshake_burst = 50\n\n{}\
         [route.health]\ncheck = \"tcp\"\ninterval = \"200ms\"\n",
        route("r", "/", &[format!("ws://{a}"), format!("ws://{b}")])
    ))
    .await;
    let url = gw.url("/");
    let mut sessions = Vec::new();
    for _ in 0..2 * PER_BACKEND {
        let (mut ws, _) = reconnect(&url).await;
        assert!(
            next_data(&mut ws)
                .await
                .to_string()
                .starts_with("wsgate demo")
        );
        sessions.push(ws);
    }

    dying.start_kill().unwrap();
    dying.wait().await.unwrap();
    // Each client sees its fate: 1011 for those on the dead backend, which reconnect at once;
    // an echo for the others, which must keep working while the storm goes on.
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let url = url.clone();
            tokio::spawn(async move {
                let text = format!("still here {i}");
                ws.send(Message::text(text.clone())).await.ok();
                match tokio::time::timeout(STEP, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => (false, Vec::new()),
                    Ok(Some(Ok(Message::Close(Some(c))))) if u16::from(c.code) == 1011 => {
                        drop(ws);
                        let (mut ws, refused) = reconnect(&url).await;
                        assert!(
                            next_data(&mut ws)
                                .await
                                .to_string()
                                .starts_with("wsgate demo")
                        );
                        echoes(&mut ws, &format!("back {i}")).await;
                        (true, refused)
                    }
                    other => panic!("session {i}: {other:?}"),
                }
            })
        })
        .collect();
    let mut reconnected = 0;
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        let (was_on_dead, refused) = t.await.unwrap();
        reconnected += usize::from(was_on_dead);
        for s in refused {
            *statuses.entry(s).or_insert(0usize) += 1;
        }
    }
    // Round robin put half the sessions on each backend.
    assert_eq!(reconnected, PER_BACKEND);
    // Refusals were only the rate limit's 429s (no 502: failover found the live backend).
    assert!(
        statuses.keys().all(|s| *s == 429),
        "refusals by status: {statuses:?}"
    );
    assert!(
        statuses.get(&429).copied().unwrap_or(0) > 0,
        "the storm should have met the rate limit"
    );
}
