//! Config reload: routes that did not change keep their sessions untouched, removed routes and
//! removed backends close theirs with 1012 spread over `[reload] close_spread`, changed routes
//! keep theirs unless `on_change = "restart"`, and new handshakes use the new config at once.
//! Triggered in process (`Handle::reload`), by SIGHUP on the binary, and by `POST /api/reload`.
//! A config that does not validate changes nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, BufReader, Lines};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const LISTENER: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n";

/// A validated config from `toml`, with the same listener [`Gateway::spawn`] adds, so that a
/// reload sees no listener change.
fn config(toml: &str) -> wsgate::Config {
    let toml = format!("{LISTENER}{toml}");
    wsgate::config::from_toml_str(&toml)
        .unwrap_or_else(|e| panic!("test config is invalid: {e:#?}\n--- config ---\n{toml}"))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Opens `n` sessions on `path`.
async fn open(gw: &Gateway, path: &str, n: usize) -> Vec<Ws> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(connect(&gw.url(path)).await.0);
    }
    out
}

/// Sends `text` and expects it back as the very next data message: a close frame (or any
/// other message) first fails the test.
async fn echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next_data(ws).await, Message::text(text));
}

/// Every client waits for its close frame, answers it, and notes when it came (since
/// `since`): code, reason, arrival.
async fn close_arrivals(clients: Vec<Ws>, since: Instant) -> Vec<(u16, String, Duration)> {
    futures_util::future::join_all(clients.into_iter().map(|mut ws| async move {
        let close = next_close(&mut ws).await;
        let at = since.elapsed();
        let _ = ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, ws.next()).await {}
        (u16::from(close.code), close.reason.to_string(), at)
    }))
    .await
}

/// Asserts that every close is 1012 "service restart".
#[track_caller]
fn all_service_restart(arrivals: &[(u16, String, Duration)]) {
    for (code, reason, _) in arrivals {
        assert_eq!((*code, reason.as_str()), (1012, "service restart"));
    }
}

/// Asserts that a backend saw exactly `n` closes, each 1012 "service restart".
async fn backend_saw_service_restarts(backend: &EchoBackend, n: usize) {
    let closes = backend.wait_closes(n).await;
    assert_eq!(closes.len(), n, "{closes:?}");
    assert!(
        closes
            .iter()
            .all(|c| c == &Some((1012, "service restart".to_string()))),
        "{closes:?}"
    );
}

/// The status of a WebSocket upgrade request for `path` on the proxy.
async fn upgrade_status(proxy: SocketAddr, path: &str) -> u16 {
    raw_exchange(proxy, upgrade_request(path, "").as_bytes())
        .await
        .1
        .status
}

#[tokio::test]
async fn reload_keeps_unchanged_routes_closes_removed_ones_spread_and_adds_new_ones() {
    const N: usize = 100;
    let (echo_a, echo_b, echo_c) = (
        EchoBackend::spawn().await,
        EchoBackend::spawn().await,
        EchoBackend::spawn().await,
    );
    let route_a = route("A", "/a", &[echo_a.url()]);
    let gw = Gateway::spawn(&format!("{route_a}{}", route("B", "/b", &[echo_b.url()]))).await;
    let mut on_a = open(&gw, "/a", N).await;
    let on_b = open(&gw, "/b", N).await;
    assert_eq!(gw.handle().sessions().len(), 2 * N);
    assert_eq!(upgrade_status(gw.addr, "/c").await, 404);

    let new = config(&format!(
        "[reload]\nclose_spread = \"1s\"\n\n{route_a}{}",
        route("C", "/c", &[echo_c.url()])
    ));
    let started = Instant::now();
    let report = gw.handle().reload(new).expect("reload");
    assert_eq!(report.added, names(&["C"]));
    assert_eq!(report.removed, names(&["B"]));
    assert!(report.changed.is_empty(), "{report:?}");
    assert_eq!(report.unchanged, names(&["A"]));
    assert_eq!(report.sessions_closing, N);
    assert_eq!(report.generation, 2);

    let b_closes = tokio::spawn(close_arrivals(on_b, started));
    // During the 1012 wave, route A relays as before.
    for (i, ws) in on_a.iter_mut().enumerate() {
        echoes(ws, &format!("during {i}")).await;
    }
    // New handshakes use the new config at once.
    assert_eq!(upgrade_status(gw.addr, "/b").await, 404);
    let (mut on_c, _) = connect(&gw.url("/c")).await;
    echoes(&mut on_c, "hello C").await;

    let arrivals = b_closes.await.unwrap();
    assert_eq!(arrivals.len(), N);
    all_service_restart(&arrivals);
    backend_saw_service_restarts(&echo_b, N).await;
    let first = arrivals.iter().map(|a| a.2).min().unwrap();
    let last = arrivals.iter().map(|a| a.2).max().unwrap();
    // 100 moments drawn uniformly from 1 s all falling within a third of it has a probability
    // below 1e-17: a burst fails this, a spread passes.
    assert!(
        last - first >= Duration::from_millis(333),
        "close frames not spread: first at {first:?}, last at {last:?}"
    );

    // The wave is over, and A's sessions never saw it: the next data message on each is its
    // echo, and A's backend got no close frame.
    for (i, ws) in on_a.iter_mut().enumerate() {
        echoes(ws, &format!("after {i}")).await;
    }
    assert!(echo_a.closes.lock().unwrap().is_empty());
    tokio::time::timeout(STEP, gw.handle().sessions().wait_for_count(|n| *n == N + 1))
        .await
        .expect("B's sessions ended; A's and C's remain");
    let (mut new_a, _) = connect(&gw.url("/a")).await;
    echoes(&mut new_a, "hello again A").await;
}

#[tokio::test]
async fn a_changed_route_keeps_its_sessions_unless_on_change_is_restart() {
    const N: usize = 5;
    let (echo_k, echo_r) = (EchoBackend::spawn().await, EchoBackend::spawn().await);
    let routes = |limit: &str| {
        format!(
            "{}max_message = \"{limit}\"\n{}max_message = \"{limit}\"\non_change = \"restart\"\n",
            route("K", "/k", &[echo_k.url()]),
            route("R", "/r", &[echo_r.url()]),
        )
    };
    let gw = Gateway::spawn(&routes("1KiB")).await;
    let mut on_k = open(&gw, "/k", N).await;
    let on_r = open(&gw, "/r", N).await;
    let big = "x".repeat(10 << 10);
    // The old limit is in force: a 10 KiB message ends its session with 1009.
    let (mut over, _) = connect(&gw.url("/k")).await;
    over.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(u16::from(next_close(&mut over).await.code), 1009);
    drop(over);
    echo_k.wait_closes(1).await;

    let started = Instant::now();
    let report = gw
        .handle()
        .reload(config(&format!(
            "[reload]\nclose_spread = \"100ms\"\n\n{}",
            routes("64KiB")
        )))
        .expect("reload");
    assert_eq!(report.changed, names(&["K", "R"]));
    assert!(report.added.is_empty() && report.removed.is_empty() && report.unchanged.is_empty());
    assert_eq!(report.sessions_closing, N);

    let arrivals = close_arrivals(on_r, started).await;
    all_service_restart(&arrivals);
    backend_saw_service_restarts(&echo_r, N).await;
    for (i, ws) in on_k.iter_mut().enumerate() {
        echoes(ws, &format!("still here {i}")).await;
    }
    assert_eq!(
        echo_k.closes.lock().unwrap().len(),
        1,
        "only the oversized session closed on K's backend"
    );
    // New sessions get the new limit, on both routes.
    for path in ["/k", "/r"] {
        let (mut ws, _) = connect(&gw.url(path)).await;
        echoes(&mut ws, &big).await;
    }
}

#[tokio::test]
async fn sessions_on_a_removed_backend_get_1012_and_new_sessions_go_to_the_rest() {
    const N: usize = 10;
    let (kept, dropped) = (EchoBackend::spawn().await, EchoBackend::spawn().await);
    let gw = Gateway::spawn(&route("r", "/r", &[kept.url(), dropped.url()])).await;
    // Which backend each session landed on: the one whose handshake count went up.
    let (mut on_kept, mut on_dropped) = (Vec::new(), Vec::new());
    for _ in 0..N {
        let before = dropped.request_count();
        let (ws, _) = connect(&gw.url("/r")).await;
        if dropped.request_count() > before {
            on_dropped.push(ws);
        } else {
            on_kept.push(ws);
        }
    }
    assert_eq!(kept.request_count() + dropped.request_count(), N);
    assert!(
        !on_kept.is_empty() && !on_dropped.is_empty(),
        "sessions on both backends: {} and {}",
        on_kept.len(),
        on_dropped.len()
    );

    let started = Instant::now();
    let report = gw
        .handle()
        .reload(config(&format!(
            "[reload]\nclose_spread = \"100ms\"\n\n{}",
            route("r", "/r", &[kept.url()])
        )))
        .expect("reload");
    assert_eq!(report.changed, names(&["r"]));
    assert_eq!(report.sessions_closing, on_dropped.len());

    let n_dropped = on_dropped.len();
    let arrivals = close_arrivals(on_dropped, started).await;
    all_service_restart(&arrivals);
    backend_saw_service_restarts(&dropped, n_dropped).await;
    for (i, ws) in on_kept.iter_mut().enumerate() {
        echoes(ws, &format!("kept {i}")).await;
    }
    assert!(kept.closes.lock().unwrap().is_empty());

    let dropped_handshakes = dropped.request_count();
    let kept_handshakes = kept.request_count();
    for i in 0..4 {
        let (mut ws, _) = connect(&gw.url("/r")).await;
        echoes(&mut ws, &format!("new {i}")).await;
    }
    assert_eq!(dropped.request_count(), dropped_handshakes);
    assert_eq!(kept.request_count(), kept_handshakes + 4);
}

/// A config not loaded from a file has nothing to re-read: `reload_file` says so and the
/// running config stays.
#[tokio::test]
async fn reload_file_without_a_file_is_an_error_and_changes_nothing() {
    let echo = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("A", "/a", &[echo.url()])).await;
    let (mut ws, _) = connect(&gw.url("/a")).await;
    assert!(gw.handle().reload_file().await.is_err());
    echoes(&mut ws, "still A").await;
    assert_eq!(upgrade_status(gw.addr, "/a").await, 101);
}

/// [`wait_line`] for a JSON log line, parsed.
async fn wait_json<R: AsyncRead + Unpin>(
    lines: &mut Lines<BufReader<R>>,
    seen: &mut Vec<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> Value {
    let line = wait_line(lines, seen, what, pred).await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
}

fn sighup(child: &tokio::process::Child) {
    send_signal(child, "HUP");
}

/// A file that does not validate: route A is gone (so a reload that applied anything would
/// close A's sessions), and line 5 has a bad duration.
const BROKEN: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n\
                      [timeouts]\nhandshake = \"banana\"\n";

/// The binary: SIGHUP applies a rewritten file (the "config reloaded" record lists what was
/// added as a JSON array) without touching the session on the unchanged route; a broken file
/// on the next SIGHUP is refused with its errors (key and line) and the running config stays.
/// systemd's notifications say when wsgate handles SIGHUP (READY=1 after start), and when a
/// reload is over (READY=1 after RELOADING=1).
#[tokio::test]
async fn sighup_reloads_the_file_and_a_broken_file_changes_nothing() {
    let (echo_a, echo_b) = (EchoBackend::spawn().await, EchoBackend::spawn().await);
    let tmp = TempDir::new("reload-bin");
    let route_a = route("A", "/a", &[echo_a.url()]);
    let file = tmp.write("wsgate.toml", format!("{LISTENER}{route_a}"));
    let (child, socket, mut lines) = spawn_notifying(&file, &tmp);
    let mut seen = Vec::new();
    // READY=1 comes once the signal handlers are installed: SIGHUP no longer ends the process.
    assert_eq!(next_notification(&socket).await, ["READY=1"]);
    let listening = wait_json(&mut lines, &mut seen, "listening", |l| {
        l.contains("\"listening\"")
    })
    .await;
    let addr: SocketAddr = listening["listen"].as_str().unwrap().parse().unwrap();
    let (mut on_a, _) = connect(&format!("ws://{addr}/a")).await;
    echoes(&mut on_a, "before").await;
    assert_eq!(upgrade_status(addr, "/b").await, 404);

    tmp.write(
        "wsgate.toml",
        format!("{LISTENER}{route_a}{}", route("B", "/b", &[echo_b.url()])),
    );
    sighup(&child);
    let reloaded = wait_json(&mut lines, &mut seen, "config reloaded", |l| {
        l.contains("\"config reload")
    })
    .await;
    assert_eq!(reloaded["message"], "config reloaded", "{reloaded}");
    assert_eq!(reloaded["added"], json!(["B"]), "{reloaded}");
    assert_eq!(reloaded["removed"], json!([]), "{reloaded}");
    assert_eq!(reloaded["changed"], json!([]), "{reloaded}");
    assert_eq!(reloaded["generation"].to_string().trim_matches('"'), "2");
    assert_eq!(next_notification(&socket).await[0], "RELOADING=1");
    assert_eq!(next_notification(&socket).await, ["READY=1"]);
    echoes(&mut on_a, "after the reload").await;
    let (mut on_b, _) = connect(&format!("ws://{addr}/b")).await;
    echoes(&mut on_b, "hello B").await;

    tmp.write("wsgate.toml", BROKEN);
    sighup(&child);
    let failed = wait_json(&mut lines, &mut seen, "config reload failed", |l| {
        l.contains("\"config reload")
    })
    .await;
    let message = failed["message"].as_str().unwrap_or("");
    assert!(message.starts_with("config reload failed"), "{failed}");
    assert_eq!(failed["level"], "WARN", "{failed}");
    let text = failed.to_string();
    assert!(
        text.contains("timeouts.handshake") && (text.contains("line 5") || text.contains(":5:")),
        "the error names the key and its line: {text}"
    );
    assert_eq!(next_notification(&socket).await[0], "RELOADING=1");
    assert_eq!(next_notification(&socket).await, ["READY=1"]);

    // A listener whose address is taken fails the reload, logged as any error is: the
    // file, and the key with its line.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tmp.write(
        "wsgate.toml",
        format!(
            "{LISTENER}[[listener]]\nlisten = \"{}\"\n{route_a}{}",
            taken.local_addr().unwrap(),
            route("B", "/b", &[echo_b.url()])
        ),
    );
    seen.clear();
    sighup(&child);
    let failed = wait_json(&mut lines, &mut seen, "config reload failed", |l| {
        l.contains("\"config reload")
    })
    .await;
    assert_eq!(failed["level"], "WARN", "{failed}");
    assert!(
        failed["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("wsgate.toml")),
        "{failed}"
    );
    let errors = failed["errors"].to_string();
    assert!(
        errors.contains("line 5: listener[1].listen: cannot listen on"),
        "{failed}"
    );
    assert_eq!(next_notification(&socket).await[0], "RELOADING=1");
    assert_eq!(next_notification(&socket).await, ["READY=1"]);
    // Nothing changed: both sessions relay, both routes accept.
    echoes(&mut on_a, "after the failed reload").await;
    echoes(&mut on_b, "B after the failed reload").await;
    let mut fresh = Vec::new();
    for path in ["/a", "/b"] {
        let (mut ws, _) = connect(&format!("ws://{addr}{path}")).await;
        echoes(&mut ws, path).await;
        fresh.push(ws);
    }
    assert!(echo_a.closes.lock().unwrap().is_empty());
    assert!(echo_b.closes.lock().unwrap().is_empty());
}

async fn post_reload(admin: SocketAddr) -> (u16, Value) {
    let resp = admin_request(
        admin,
        "POST",
        "/api/reload",
        "Content-Type: application/json\r\n",
        "",
    )
    .await;
    let body =
        serde_json::from_str(&resp.body).unwrap_or_else(|e| panic!("not JSON ({e}): {resp:?}"));
    (resp.status, body)
}

/// `(ok, failed, generation)` from the metrics.
async fn reload_metrics(admin: SocketAddr) -> (f64, f64, f64) {
    let m = scrape(admin).await;
    let reloads = |result| m.value("wsgate_config_reloads_total", &[("result", result)]);
    (
        reloads("ok"),
        reloads("failed"),
        m.value("wsgate_config_generation", &[]),
    )
}

/// Starts the gateway in process from a config file, so that it can re-read it.
async fn spawn_from_file(file: &Path) -> Gateway {
    init_logs();
    let config = wsgate::Config::load(file).unwrap_or_else(|e| panic!("{e}"));
    let handle = wsgate::Gateway::start(config).await.unwrap();
    Gateway {
        addr: handle.local_addr(),
        handle: Some(handle),
    }
}

/// The file is read and validated off the runtime: a session goes on while a reload waits on
/// its file (here a route's JWT secret is a named pipe nobody has written yet). The load ran
/// on the worker thread that took the signal or the API request, and held every session of
/// that worker, and the admin listener, for as long as it took: seconds for a file of
/// thousands of routes (found by black-box testing of reloads under load).
#[tokio::test]
async fn sessions_go_on_while_a_reload_reads_its_file() {
    let echo = EchoBackend::spawn().await;
    let tmp = TempDir::new("reload-off-the-runtime");
    let route_a = route("A", "/a", &[echo.url()]);
    let file = tmp.write("wsgate.toml", format!("{LISTENER}{route_a}"));
    let gw = spawn_from_file(&file).await;
    let (mut ws, _) = connect(&gw.url("/a")).await;
    echoes(&mut ws, "before").await;
    let pipe = tmp.path().join("secret");
    let made = std::process::Command::new("mkfifo").arg(&pipe).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", pipe.display());
    let route_b = route("B", "/b", &[echo.url()]);
    tmp.write(
        "wsgate.toml",
        format!(
            "{LISTENER}{route_a}{route_b}[route.auth.jwt]\nsecret_file = \"{}\"\n",
            pipe.display()
        ),
    );
    let secret = "0123456789abcdef0123456789abcdef\n";
    // Should the load hold the runtime's thread (the defect), nothing below runs until it
    // ends: a watchdog then gives it its secret, and the test fails (not hangs) below.
    let watchdog_pipe = pipe.clone();
    std::thread::spawn(move || {
        std::thread::sleep(STEP);
        use std::os::unix::fs::OpenOptionsExt;
        // Without a reader (the load took its secret long ago) the open fails: nothing to do.
        if let Ok(mut w) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&watchdog_pipe)
        {
            let _ = std::io::Write::write_all(&mut w, secret.as_bytes());
        }
    });
    let reloaded = std::sync::atomic::AtomicBool::new(false);
    let reload = async {
        let report = gw.handle().reload_file().await;
        reloaded.store(true, std::sync::atomic::Ordering::SeqCst);
        report
    };
    let meanwhile = async {
        // The reload is under way, waiting on the pipe: the session still echoes.
        echoes(&mut ws, "during").await;
        assert!(
            !reloaded.load(std::sync::atomic::Ordering::SeqCst),
            "the session waited for the reload"
        );
        tokio::task::spawn_blocking(move || std::fs::write(pipe, secret))
            .await
            .unwrap()
            .unwrap();
    };
    let (report, ()) = tokio::join!(reload, meanwhile);
    assert_eq!(report.expect("the reload applies").added, ["B"]);
    echoes(&mut ws, "after").await;
}

/// While a binary upgrade's successor starts, `POST /api/reload` is refused (409), as SIGHUP
/// is: the successor reads the file itself, and a reload applied here was answered 200 and
/// then lost at the hand-over (found by black-box testing of live changes). Once the
/// successor has exited (a failed upgrade), reloads apply again.
#[tokio::test]
async fn admin_reload_is_refused_while_an_upgrade_s_successor_starts() {
    let echo = EchoBackend::spawn().await;
    let tmp = TempDir::new("reload-upgrading");
    let head = format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{LISTENER}");
    let route_a = route("A", "/a", &[echo.url()]);
    let file = tmp.write("wsgate.toml", format!("{head}{route_a}"));
    let gw = spawn_from_file(&file).await;
    let admin = gw.handle().admin_addr().unwrap();
    let route_b = route("B", "/b", &[echo.url()]);
    tmp.write("wsgate.toml", format!("{head}{route_a}{route_b}"));
    gw.handle().successor().started(4242);
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("4242")),
        "{body}"
    );
    assert_eq!(reload_metrics(admin).await, (0.0, 0.0, 1.0));
    assert!(gw.handle().reload_file().await.is_err());
    gw.handle().successor().exited();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["added"], json!(["B"]));
}

/// `POST /api/reload` re-reads the file: a broken one gets 400 with every error and changes
/// nothing; a good one gets 200 with the report. Both are counted.
#[tokio::test]
async fn admin_reload_reports_errors_or_what_changed_and_counts_both() {
    let (echo_a, echo_b) = (EchoBackend::spawn().await, EchoBackend::spawn().await);
    let tmp = TempDir::new("reload-admin");
    let head = format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{LISTENER}");
    let route_a = route("A", "/a", &[echo_a.url()]);
    let file = tmp.write("wsgate.toml", format!("{head}{route_a}"));
    let gw = spawn_from_file(&file).await;
    let admin = gw.handle().admin_addr().unwrap();
    let (mut on_a, _) = connect(&gw.url("/a")).await;
    assert_eq!(reload_metrics(admin).await, (0.0, 0.0, 1.0));
    // It takes no fields: one that names another file is refused, not ignored.
    let (status, body) = admin_json(
        admin,
        "POST",
        "/api/reload",
        &json!({"config": "/etc/other.toml"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(reload_metrics(admin).await, (0.0, 0.0, 1.0));

    // Line 8 of the broken file has the bad value; route A is gone from it.
    tmp.write(
        "wsgate.toml",
        format!("{head}[timeouts]\nhandshake = \"banana\"\n"),
    );
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        errors.iter().any(|e| {
            let e = e.as_str().unwrap_or("");
            e.contains("line 8") && e.contains("timeouts.handshake")
        }),
        "{body}"
    );
    assert_eq!(reload_metrics(admin).await, (0.0, 1.0, 1.0));
    echoes(&mut on_a, "still A").await;
    let (mut second_a, _) = connect(&gw.url("/a")).await;
    echoes(&mut second_a, "A still accepts").await;

    tmp.write(
        "wsgate.toml",
        format!("{head}{route_a}{}", route("B", "/b", &[echo_b.url()])),
    );
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 200, "{body}");
    // `restart_needed`: the changes this reload could not apply (`[admin]`; none here).
    assert_eq!(
        body,
        json!({"added": ["B"], "removed": [], "changed": [], "unchanged": ["A"],
               "sessions_closing": 0, "generation": 2, "restart_needed": [],
               "listeners": {"added": [], "removed": [], "changed": []}})
    );
    assert_eq!(reload_metrics(admin).await, (1.0, 1.0, 2.0));
    echoes(&mut on_a, "A after the reload").await;
    echoes(&mut second_a, "second A after the reload").await;
    let (mut on_b, _) = connect(&gw.url("/b")).await;
    echoes(&mut on_b, "hello B").await;
    assert!(echo_a.closes.lock().unwrap().is_empty());
}

/// With `[config] watch = true` a change to the file is a reload, as SIGHUP would be; the
/// sessions of the routes that stay are untouched.
#[tokio::test]
async fn a_watched_config_file_is_reloaded_when_it_changes() {
    let echo = EchoBackend::spawn().await;
    let tmp = TempDir::new("watch");
    let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[config]\nwatch = true\nwatch_interval = \"50ms\"\n";
    let a = route("A", "/a", &[echo.url()]);
    let file = tmp.write("wsgate.toml", format!("{base}{a}"));
    let gw = spawn_from_file(&file).await;
    let mut generations = gw.handle().generations();
    let (mut on_a, _) = connect(&gw.url("/a")).await;
    assert_eq!(upgrade_status(gw.addr, "/b").await, 404);

    tmp.write(
        "wsgate.toml",
        format!("{base}{a}{}", route("B", "/b", &[echo.url()])),
    );
    tokio::time::timeout(STEP, generations.wait_for(|g| *g == 2))
        .await
        .expect("the changed file was not reloaded")
        .unwrap();
    assert_eq!(upgrade_status(gw.addr, "/b").await, 101);
    echoes(&mut on_a, "still A").await;

    tmp.write(
        "wsgate.toml",
        format!("{base}{a}{}", route("CC", "/cc", &[echo.url()])),
    );
    tokio::time::timeout(STEP, generations.wait_for(|g| *g == 3))
        .await
        .expect("the changed file was not reloaded")
        .unwrap();
    assert_eq!(upgrade_status(gw.addr, "/cc").await, 101);
    assert_eq!(upgrade_status(gw.addr, "/b").await, 404);
    echoes(&mut on_a, "A all along").await;
}

/// `[shutdown] grace` is read when the drain starts: a reload that shortens it is obeyed. (A
/// backend that never answers the close holds its session until the relay's close timeout,
/// 5 s: within the start's 60 s grace it would end closed, not cut at the reloaded 200 ms.)
#[tokio::test]
async fn a_reloaded_grace_period_is_the_one_the_drain_uses() {
    let (silent, _) = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".to_vec(),
    )
    .await;
    let backends = [format!("ws://{silent}")];
    let mut gw = Gateway::spawn(&format!(
        "[shutdown]\ngrace = \"60s\"\n{}",
        route("r", "/", &backends)
    ))
    .await;
    let (_ws, _) = connect(&gw.url("/")).await;
    let report = gw
        .handle()
        .reload(config(&format!(
            "[shutdown]\ngrace = \"200ms\"\n{}",
            route("r", "/", &backends)
        )))
        .expect("reload");
    assert!(report.restart_needed.is_empty(), "{report:?}");
    let report = tokio::time::timeout(STEP, gw.shutdown())
        .await
        .expect("the drain did not end");
    assert_eq!(report.sessions_ended, 1);
}

#[tokio::test]
async fn settings_read_once_at_start_are_reported_as_needing_a_restart() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&route("r", "/", &[backend.url()])).await;
    let report = gw
        .handle()
        .reload(config(&format!(
            "[config]\nwatch = true\n[log]\nrefusals_per_second = 3\n{}",
            route("r", "/", &[backend.url()])
        )))
        .expect("reload");
    assert_eq!(
        report.restart_needed,
        names(&["[config] watch", "[log] refusals_per_second"])
    );
}

/// A handshake under way when a reload removes its route: its session registers after the
/// reload listed the sessions to close, and still gets the 1012 they got.
#[tokio::test]
async fn a_handshake_under_way_when_its_route_is_removed_gets_1012() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that holds its 101 until told to answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (got_request, mut request_seen) = tokio::sync::mpsc::channel::<()>(1);
    let (answer, answer_now) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_request_head(&mut s).await;
        got_request.send(()).await.unwrap();
        answer_now.await.unwrap();
        s.write_all(switching_protocols(&head).as_bytes())
            .await
            .unwrap();
        // Answers the proxy's close, then holds the socket until it goes.
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let other = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}{}",
        route("gone", "/gone", &[format!("ws://{backend}")]),
        route("kept", "/kept", &[other.url()])
    ))
    .await;
    let url = gw.url("/gone");
    let client = tokio::spawn(async move { connect(&url).await });
    tokio::time::timeout(STEP, request_seen.recv())
        .await
        .expect("the backend got no request");
    let report = gw
        .handle()
        .reload(config(&route("kept", "/kept", &[other.url()])))
        .expect("reload");
    assert_eq!(report.removed, names(&["gone"]));
    assert_eq!(report.sessions_closing, 0);
    answer.send(()).unwrap();
    let (mut ws, _) = client.await.unwrap();
    let close = tokio::time::timeout(STEP, next_close(&mut ws))
        .await
        .expect("the session on the removed route was not closed");
    assert_eq!(u16::from(close.code), 1012);
}

/// The process's own admission limits are no route's settings: raising `max_sessions` in an
/// incident leaves every route unchanged, and an `on_change = "restart"` route's sessions open.
/// A `[limits]` key routes read (`max_message`) still changes them.
#[tokio::test]
async fn process_limits_are_not_a_change_to_the_routes() {
    let backend = EchoBackend::spawn().await;
    let r = format!(
        "{}on_change = \"restart\"\n",
        route("r", "/", &[backend.url()])
    );
    let gw = Gateway::spawn(&format!("[limits]\nmax_sessions = 100\n{r}")).await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    let report = gw
        .handle()
        .reload(config(&format!(
            "[limits]\nmax_sessions = 5000\nfd_reserve = 32\nhandshake_rate_per_ip = \"100/s\"\n{r}"
        )))
        .expect("reload");
    assert_eq!(report.unchanged, names(&["r"]), "{report:?}");
    assert_eq!(report.sessions_closing, 0);
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    let report = gw
        .handle()
        .reload(config(&format!(
            "[limits]\nmax_sessions = 5000\nmax_message = \"1MiB\"\n{r}"
        )))
        .expect("reload");
    assert_eq!(report.changed, names(&["r"]), "{report:?}");
    assert_eq!(report.sessions_closing, 1);
}

/// A value written another way is the same value: `"60s"` as `"1m"`, `"1MiB"` as
/// `"1048576"`, `"2s"` as `"2000ms"`. Such a reload leaves the route and its listener
/// unchanged, and an `on_change = "restart"` route's sessions open; a value that differs
/// still changes them. (The raw text was compared, and the session got 1012 for nothing.)
#[tokio::test]
async fn the_same_value_written_another_way_is_no_change() {
    let backend = EchoBackend::spawn().await;
    let r = |idle: &str, max: &str, ping: &str| {
        format!(
            "[timeouts]\nidle = \"{idle}\"\n[limits]\nmax_message = \"{max}\"\n{}on_change = \"restart\"\n[route.timeouts]\nping_interval = \"{ping}\"\n",
            route("r", "/", &[backend.url()])
        )
    };
    let gw = Gateway::spawn(&r("60s", "1MiB", "2s")).await;
    let (mut ws, _) = connect(&gw.url("/")).await;
    let report = gw
        .handle()
        .reload(config(&r("1m", "1048576", "2000ms")))
        .expect("reload");
    assert_eq!(report.unchanged, names(&["r"]), "{report:?}");
    assert!(report.listeners.changed.is_empty(), "{report:?}");
    assert_eq!(report.sessions_closing, 0);
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    let report = gw
        .handle()
        .reload(config(&r("1m", "1048576", "3s")))
        .expect("reload");
    assert_eq!(report.changed, names(&["r"]), "{report:?}");
    assert_eq!(report.sessions_closing, 1);
}

/// Sessions a reload has yet to close (their 1012 spread over `close_spread`) are still
/// open: `wsgate_sessions_open` and `/api/routes` count them, on their removed route or
/// backend. A second reload that changes nothing closes none, and says so: the earlier wave's
/// sessions are not its own. (The gauge showed only the current routes' current backends,
/// and the second reload reported the first one's sessions as its `sessions_closing`.)
#[tokio::test]
async fn sessions_waiting_for_their_1012_are_counted_once_and_still_open() {
    let (e1, e2, e3) = (
        EchoBackend::spawn().await,
        EchoBackend::spawn().await,
        EchoBackend::spawn().await,
    );
    // Long enough that none of these sessions is asked within the test.
    let head = "[admin]\nlisten = \"127.0.0.1:0\"\n[shutdown]\ngrace = \"3h\"\n[reload]\nclose_spread = \"2h\"\n";
    let gw = Gateway::spawn(&format!(
        "{head}{}{}",
        route("A", "/a", &[e1.url(), e2.url()]),
        route("B", "/b", &[e3.url()])
    ))
    .await;
    let admin = gw.handle().admin_addr().unwrap();
    let _on_a = open(&gw, "/a", 4).await;
    let _on_b = open(&gw, "/b", 2).await;
    let next = format!("{head}{}", route("A", "/a", &[e1.url()]));
    let report = gw.handle().reload(config(&next)).expect("reload");
    assert_eq!(report.removed, names(&["B"]), "{report:?}");
    // Round robin put two of A's sessions on e2, which is gone; and B's two.
    assert_eq!(report.sessions_closing, 4, "{report:?}");

    let m = scrape(admin).await;
    assert_eq!(m.sum("wsgate_sessions_open", &[]), 6.0);
    assert_eq!(m.value("wsgate_sessions_open", &[("route", "B")]), 2.0);
    let (status, routes) = admin_json(admin, "GET", "/api/routes", &serde_json::Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(routes["routes"][0]["name"], "A", "{routes}");
    assert_eq!(routes["routes"][0]["sessions_open"], 4, "{routes}");

    let again = gw.handle().reload(config(&next)).expect("reload");
    assert_eq!(again.sessions_closing, 0, "{again:?}");
}

/// A route a reload removes keeps its counters in the metrics for a while: the 1012s of that
/// reload are counted as its sessions end, and a scraper saw none of them (the route's
/// series went with the reload). Its counters go on, unbroken, if it comes back.
#[tokio::test]
async fn a_removed_routes_counters_stay_with_the_1012s_it_ended_with() {
    let (e1, e2) = (EchoBackend::spawn().await, EchoBackend::spawn().await);
    let head = "[admin]\nlisten = \"127.0.0.1:0\"\n[reload]\nclose_spread = \"off\"\n";
    let both = format!(
        "{head}{}{}",
        route("A", "/a", &[e1.url()]),
        route("B", "/b", &[e2.url()])
    );
    let gw = Gateway::spawn(&both).await;
    let admin = gw.handle().admin_addr().unwrap();
    let on_b = open(&gw, "/b", 2).await;
    let report = gw
        .handle()
        .reload(config(&format!("{head}{}", route("A", "/a", &[e1.url()]))))
        .expect("reload");
    assert_eq!(report.removed, names(&["B"]), "{report:?}");
    let arrivals = close_arrivals(on_b, Instant::now()).await;
    all_service_restart(&arrivals);
    let ended = |m: &prom::Exposition| {
        m.value(
            "wsgate_sessions_ended_total",
            &[
                ("route", "B"),
                ("outcome", "drained"),
                ("closed_by", "proxy"),
            ],
        )
    };
    // The registry lets go of a session just after its client's close: wait for both.
    let m = tokio::time::timeout(STEP, async {
        loop {
            let m = scrape(admin).await;
            if m.sum("wsgate_sessions_open", &[]) == 0.0 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(ended(&m), 2.0);
    assert_eq!(
        m.value("wsgate_sessions_opened_total", &[("route", "B")]),
        2.0
    );
    // Back: counting on from there.
    gw.handle().reload(config(&both)).expect("reload");
    let mut again = open(&gw, "/b", 1).await;
    echoes(&mut again[0], "back").await;
    let m = scrape(admin).await;
    assert_eq!(
        m.value("wsgate_sessions_opened_total", &[("route", "B")]),
        3.0
    );
    assert_eq!(ended(&m), 2.0);
}
