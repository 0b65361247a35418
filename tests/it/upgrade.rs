//! Binary upgrade: a second wsgate process, started on the same config, takes the listening
//! sockets (and the admin listener's) over from the running one through `[upgrade] socket`;
//! the old one stops accepting, closes its sessions with 1001 and exits. A client that keeps
//! opening sessions across the hand-over never sees a refused or reset handshake.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn field(line: &str, key: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        other => panic!("no {key} in {line} ({other:?})"),
    }
}

/// The admin listener's address, from the start-up lines a process logged.
fn admin_address(seen: &[String]) -> std::net::SocketAddr {
    seen.iter()
        .find(|l| l.contains("\"admin listener\""))
        .map(|l| field(l, "admin"))
        .expect("the admin listener's address")
        .parse()
        .unwrap()
}

fn log_lines(child: &mut Child) -> Lines<BufReader<tokio::process::ChildStderr>> {
    tokio::io::AsyncBufReadExt::lines(BufReader::new(child.stderr.take().unwrap()))
}

/// A `wsgate run` that serves `[upgrade] socket`.
struct Running {
    child: Child,
    log: Lines<BufReader<tokio::process::ChildStderr>>,
    /// The log lines read so far.
    seen: Vec<String>,
    /// `ws://` and the proxy listener's address.
    url: String,
}

/// Starts `wsgate run` on `config` and waits until it listens and serves its upgrade socket.
async fn start_upgradable(config: &std::path::Path) -> Running {
    let mut child = spawn_binary(config, "json", "info");
    let mut log = log_lines(&mut child);
    let mut seen = Vec::new();
    let listening = wait_line(&mut log, &mut seen, "listening", |l| {
        l.contains("\"listening\"")
    })
    .await;
    let url = format!("ws://{}/", field(&listening, "listen"));
    wait_line(&mut log, &mut seen, "the upgrade socket", |l| {
        l.contains("binary upgrades")
    })
    .await;
    Running {
        child,
        log,
        seen,
        url,
    }
}

/// Keeps reading a process's log after the test stops waiting on it (so it never blocks on
/// a full pipe), and hands back what it read when asked.
fn drain_log<R: AsyncRead + Unpin + Send + 'static>(
    mut lines: Lines<BufReader<R>>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
        seen
    })
}

/// One session through `url`: handshake, one echo, close. A handshake that fails (refused,
/// reset, not a 101) is an error; a session the old process closes with 1001 while it drains
/// is not (the client was served, then told to go away).
async fn one_session(url: &str, n: usize) -> Result<(), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("handshake {n}: {e}"))?;
    let text = format!("message {n}");
    ws.send(Message::text(text.clone()))
        .await
        .map_err(|e| format!("send {n}: {e}"))?;
    match tokio::time::timeout(STEP, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => {}
        Ok(Some(Ok(Message::Close(Some(c))))) if u16::from(c.code) == 1001 => return Ok(()),
        other => return Err(format!("echo {n}: {other:?}")),
    }
    let _ = ws.close(None).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(STEP, ws.next()).await {}
    Ok(())
}

#[tokio::test]
async fn a_new_process_takes_the_sockets_over_and_no_handshake_is_refused() {
    let tmp = TempDir::new("upgrade");
    let echo = EchoBackend::spawn().await;
    let admin_table = "[admin]\nlisten = \"127.0.0.1:0\"\n\n";
    let config = upgrade_config(&tmp, "wsgate.toml", admin_table, &echo.url());
    let Running {
        child: mut old,
        log: mut old_log,
        seen: mut seen_old,
        url,
    } = start_upgradable(&config).await;
    let admin = admin_address(&seen_old);
    let mut on_old = Vec::new();
    for _ in 0..20 {
        on_old.push(connect(&url).await.0);
    }
    // A health checker that keeps its connection (Envoy, Prometheus) between probes.
    let mut kept = tokio::net::TcpStream::connect(admin).await.unwrap();
    let probe = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    kept.write_all(probe).await.unwrap();
    let mut answer = [0u8; 1024];
    let n = tokio::time::timeout(STEP, kept.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));

    // Sessions open and close back to back for the whole hand-over.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let client = tokio::spawn({
        let (url, stop, done) = (url.clone(), stop.clone(), done.clone());
        async move {
            let mut failures = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if let Err(e) = one_session(&url, n).await {
                    failures.push(e);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }
    });
    let before = wait_until(&done, 20).await;

    let mut new = spawn_binary(&config, "json", "info");
    let mut new_log = log_lines(&mut new);
    let mut seen_new = Vec::new();
    wait_line(&mut new_log, &mut seen_new, "the take-over", |l| {
        l.contains("took the listening sockets over")
    })
    .await;
    wait_line(
        &mut new_log,
        &mut seen_new,
        "the old process's confirmation",
        |l| l.contains("has stopped accepting"),
    )
    .await;
    let new_log = drain_log(new_log);
    wait_line(&mut old_log, &mut seen_old, "the hand-over", |l| {
        l.contains("handed the listening sockets over")
    })
    .await;
    // The old process closes the health checker's idle connection at once, so its next
    // probe reaches the new process; it used to answer it 503 (draining) until it exited.
    let closed = tokio::time::timeout(Duration::from_secs(2), kept.read(&mut answer)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the old process kept the admin connection: {closed:?}"
    );
    // Well past the hand-over: these sessions can only have reached the new process.
    let after = wait_until(&done, before + 50).await;
    stop.store(true, Ordering::Relaxed);
    let failures = client.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {after} sessions failed: {failures:#?}",
        failures.len()
    );

    // The old process closes its sessions with 1001 and exits.
    for mut ws in on_old {
        assert_eq!(u16::from(next_close(&mut ws).await.code), 1001);
        let _ = ws.close(None).await;
    }
    let status = wait_exit(&mut old).await;
    let old_log = drain_log(old_log).await.unwrap();
    seen_old.extend(old_log);
    assert!(status.success(), "{status}; log:\n{}", seen_old.join("\n"));

    // The new one serves the proxy port and the admin port.
    let (mut ws, _) = connect(&url).await;
    ws.send(Message::text("to the new process")).await.unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::text("to the new process")
    );
    drop(ws);
    let (_, ready) = raw_exchange(
        admin,
        b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    send_signal(&new, "TERM");
    let status = wait_exit(&mut new).await;
    let log = new_log.await.unwrap();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
}

/// Waits until `counter` reaches `n` (each session counts, failed or not); returns its value.
async fn wait_until(counter: &AtomicUsize, n: usize) -> usize {
    tokio::time::timeout(STEP, async {
        loop {
            let now = counter.load(Ordering::Relaxed);
            if now >= n {
                return now;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {n} sessions in time"))
}

/// A config with `[upgrade] socket` in `tmp`, one listener, `extra` tables (another listener,
/// `[admin]`) and one route to `backend`, written as `name`.
fn upgrade_config(tmp: &TempDir, name: &str, extra: &str, backend: &str) -> std::path::PathBuf {
    tmp.write(
        name,
        format!(
            "[upgrade]\nsocket = \"{}\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n{extra}{}",
            tmp.join("upgrade.sock").display(),
            route("r", "/", &[backend.to_string()])
        ),
    )
}

/// A successor that fails after it took the sockets (here: a port it cannot bind) changes
/// nothing: the running process keeps accepting and serving.
#[tokio::test]
async fn a_failed_successor_leaves_the_running_process_serving() {
    let tmp = TempDir::new("upgrade-fail");
    let echo = EchoBackend::spawn().await;
    let config = upgrade_config(&tmp, "old.toml", "", &echo.url());
    let Running {
        child: mut old,
        log: mut old_log,
        seen: mut seen_old,
        url,
    } = start_upgradable(&config).await;
    let (mut before, _) = connect(&url).await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!(
        "[[listener]]\nlisten = \"{}\"\n\n",
        taken.local_addr().unwrap()
    );
    let broken = upgrade_config(&tmp, "new.toml", &busy, &echo.url());
    let mut new = spawn_binary(&broken, "json", "info");
    let status = wait_exit(&mut new).await;
    assert!(!status.success(), "the successor cannot bind: it must fail");
    wait_line(&mut old_log, &mut seen_old, "the aborted upgrade", |l| {
        l.contains("binary upgrade aborted")
    })
    .await;

    before.send(Message::text("still served")).await.unwrap();
    assert_eq!(next_data(&mut before).await, Message::text("still served"));
    let (mut after, _) = connect(&url).await;
    after.send(Message::text("still accepting")).await.unwrap();
    assert_eq!(
        next_data(&mut after).await,
        Message::text("still accepting")
    );
    drop((before, after));
    send_signal(&old, "TERM");
    assert!(wait_exit(&mut old).await.success());
}

/// SIGUSR2 starts the binary at the running one's path as its successor, which takes the
/// sockets over; the old process exits, the new one serves.
#[tokio::test]
async fn sigusr2_starts_the_successor_and_the_old_process_exits() {
    let tmp = TempDir::new("upgrade-usr2");
    let echo = EchoBackend::spawn().await;
    let config = upgrade_config(&tmp, "wsgate.toml", "", &echo.url());
    // The successor inherits the old process's stderr: both logs arrive here.
    let Running {
        child: mut old,
        mut log,
        mut seen,
        url,
    } = start_upgradable(&config).await;
    let (mut on_old, _) = connect(&url).await;

    send_signal(&old, "USR2");
    let started = wait_line(&mut log, &mut seen, "the successor's start", |l| {
        l.contains("started the new binary")
    })
    .await;
    let successor: Value = serde_json::from_str(&started).unwrap();
    let successor = successor["new_pid"].as_u64().expect("pid") as u32;
    // Stopped whatever the test's outcome: a successor left running holds the test's pipes.
    let _stop = StopOnDrop(u64::from(successor));
    // A second SIGUSR2 while that one runs starts no second successor, and says why.
    send_signal(&old, "USR2");
    let ignored = wait_line(&mut log, &mut seen, "the second SIGUSR2 refused", |l| {
        l.contains("an earlier SIGUSR2 started is still running")
    })
    .await;
    let ignored: Value = serde_json::from_str(&ignored).unwrap();
    assert_eq!(ignored["new_pid"].as_u64(), Some(u64::from(successor)));
    // The hand-over may have come before that refusal (the old process refuses it while it
    // drains too): read on only if it has not.
    let handed = |l: &str| l.contains("handed the listening sockets over");
    if !seen.iter().any(|l| handed(l)) {
        wait_line(&mut log, &mut seen, "the hand-over", handed).await;
    }
    // The two processes share this stderr: from the upgrade on, each line says whose it is;
    // before it, none had to.
    let own = |l: &str| serde_json::from_str::<Value>(l).unwrap()["pid"].as_u64();
    let old_pid = u64::from(old.id().unwrap());
    let line = |what: &str| seen.iter().find(|l| l.contains(what)).unwrap().clone();
    assert_eq!(own(&line("\"listening\"")), None);
    assert_eq!(own(&line("started the new binary")), Some(old_pid));
    assert_eq!(
        own(&line("handed the listening sockets over")),
        Some(old_pid)
    );
    let took = |l: &str| l.contains("took the listening sockets over");
    let took = match seen.iter().find(|l| took(l)) {
        Some(l) => l.clone(),
        None => wait_line(&mut log, &mut seen, "the successor's take-over", took).await,
    };
    assert_eq!(own(&took), Some(u64::from(successor)));
    assert_eq!(u16::from(next_close(&mut on_old).await.code), 1001);
    drop(on_old);
    let status = wait_exit(&mut old).await;
    assert!(status.success(), "{status}; log:\n{}", seen.join("\n"));

    let (mut ws, _) = connect(&url).await;
    ws.send(Message::text("to the successor")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("to the successor"));
    drop(ws);
    drop(_stop);
    wait_line(&mut log, &mut seen, "the successor's shutdown", |l| {
        l.contains("shutdown complete")
    })
    .await;
    let started = seen
        .iter()
        .filter(|l| l.contains("started the new binary"))
        .count();
    assert_eq!(started, 1, "{}", seen.join("\n"));
}

/// SIGUSR2 starts what is at the path the process was started by, a symlink not resolved
/// (`/usr/bin/wsgate` or `/opt/wsgate/current` pointing at the installed version): it started
/// the version the symlink named at start again. And the old process, draining after the
/// hand-over, takes its first SIGTERM for what it is: a stop already under way, not a
/// second signal (which cut the sessions it was closing gracefully, and exited 1).
#[tokio::test]
async fn sigusr2_starts_the_symlinks_binary_and_the_old_process_drains_on() {
    let tmp = TempDir::new("upgrade-link");
    let echo = EchoBackend::spawn().await;
    let config = upgrade_config(
        &tmp,
        "wsgate.toml",
        "[shutdown]\ngrace = \"1s\"\n",
        &echo.url(),
    );
    let link = tmp.join("wsgate");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut old = tokio::process::Command::new(&link)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = log_lines(&mut old);
    let mut seen = Vec::new();
    let listening = wait_line(&mut log, &mut seen, "listening", |l| {
        l.contains("\"listening\"")
    })
    .await;
    let addr: std::net::SocketAddr = field(&listening, "listen").parse().unwrap();
    wait_line(&mut log, &mut seen, "the upgrade socket", |l| {
        l.contains("binary upgrades")
    })
    .await;
    // A session whose client never answers the drain's close: the old process keeps it for
    // the grace period.
    let (_silent, resp) = raw_exchange(addr, upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 101, "{resp:?}");

    send_signal(&old, "USR2");
    let started = wait_line(&mut log, &mut seen, "the successor's start", |l| {
        l.contains("started the new binary")
    })
    .await;
    let successor: Value = serde_json::from_str(&started).unwrap();
    let successor = successor["new_pid"].as_u64().expect("pid");
    // Stopped whatever the test's outcome: a successor left running holds the test's pipes.
    let _stop = StopOnDrop(successor);
    assert_eq!(field(&started, "exe"), link.display().to_string());
    wait_line(&mut log, &mut seen, "the hand-over", |l| {
        l.contains("handed the listening sockets over")
    })
    .await;
    send_signal(&old, "TERM");
    wait_line(
        &mut log,
        &mut seen,
        "the first signal after the hand-over",
        |l| l.contains("already draining after the hand-over"),
    )
    .await;
    let status = wait_exit(&mut old).await;
    assert!(status.success(), "{status}; log:\n{}", seen.join("\n"));
    assert!(
        !seen.iter().any(|l| l.contains("second signal")),
        "{}",
        seen.join("\n")
    );
    drop(_stop);
    wait_line(&mut log, &mut seen, "the successor's shutdown", |l| {
        l.contains("shutdown complete")
    })
    .await;
}

/// While a successor SIGUSR2 started has not taken over, a SIGHUP is refused with a line
/// that says why (the old process applied it, said so, and the change was lost at the
/// hand-over: the successor had read the file before); the successor does not inherit the
/// socket activation's variables meant for this process; and a successor that exits 0
/// without taking over is said to have exited, the old process serving on (only a failure
/// was logged). Here the successor is a script that exits once told to.
#[tokio::test]
async fn during_an_upgrade_sighup_is_refused_and_a_successor_that_exits_is_said_to() {
    let tmp = TempDir::new("upgrade-hup");
    let echo = EchoBackend::spawn().await;
    let config = upgrade_config(&tmp, "wsgate.toml", "", &echo.url());
    let link = tmp.join("wsgate");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let mut old = tokio::process::Command::new(&link)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        // Socket activation for some other process: ignored here, not to be passed on.
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = log_lines(&mut old);
    let mut seen = Vec::new();
    let listening = wait_line(&mut log, &mut seen, "listening", |l| {
        l.contains("\"listening\"")
    })
    .await;
    let addr: std::net::SocketAddr = field(&listening, "listen").parse().unwrap();
    wait_line(&mut log, &mut seen, "the upgrade socket", |l| {
        l.contains("binary upgrades")
    })
    .await;
    let go = tmp.join("go");
    let script = tmp.write(
        "successor.sh",
        format!(
            "#!/bin/sh\necho \"successor: LISTEN_FDS=${{LISTEN_FDS:-unset}} LISTEN_PID=${{LISTEN_PID:-unset}}\" >&2\n\
             while [ ! -e {go} ]; do sleep 0.05; done\nexit 0\n",
            go = go.display()
        ),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&script, &link).unwrap();

    send_signal(&old, "USR2");
    wait_line(&mut log, &mut seen, "the successor's start", |l| {
        l.contains("started the new binary")
    })
    .await;
    // The script's line may come before the line that says it started.
    let env = match seen.iter().find(|l| l.starts_with("successor:")) {
        Some(line) => line.clone(),
        None => {
            wait_line(&mut log, &mut seen, "the successor's environment", |l| {
                l.starts_with("successor:")
            })
            .await
        }
    };
    assert_eq!(env, "successor: LISTEN_FDS=unset LISTEN_PID=unset");
    send_signal(&old, "HUP");
    wait_line(&mut log, &mut seen, "the SIGHUP refused", |l| {
        l.contains("a binary upgrade is under way")
    })
    .await;
    std::fs::write(&go, "").unwrap();
    wait_line(&mut log, &mut seen, "the successor's exit", |l| {
        l.contains("the new binary exited; this process serves on")
    })
    .await;
    // Serving on, and reloading again.
    let (mut ws, _) = connect(&format!("ws://{addr}/")).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    send_signal(&old, "HUP");
    wait_line(&mut log, &mut seen, "the reload", |l| {
        l.contains("config reloaded") || l.contains("unchanged")
    })
    .await;
    send_signal(&old, "TERM");
    drop(ws);
    let status = wait_exit(&mut old).await;
    assert!(status.success(), "{status}; log:\n{}", seen.join("\n"));
}

/// A successor stopped (SIGTERM) while it takes the sockets over does not finish the
/// hand-over: it ends without telling its predecessor it is ready, so the old process
/// serves on. It went on to take the sockets, the old process drained, and then it stopped
/// too: nothing listened any more. The predecessor here is the test's, which takes the
/// hello and never answers.
#[tokio::test]
async fn a_successor_stopped_while_it_takes_over_leaves_the_sockets_to_its_predecessor() {
    use tokio::io::AsyncBufReadExt;
    let tmp = TempDir::new("upgrade-stopped");
    let echo = EchoBackend::spawn().await;
    let config = upgrade_config(&tmp, "wsgate.toml", "", &echo.url());
    let old = tokio::net::UnixListener::bind(tmp.join("upgrade.sock")).unwrap();
    let mut successor = spawn_binary(&config, "json", "info");
    let mut log = log_lines(&mut successor);
    let (stream, _) = tokio::time::timeout(STEP, old.accept())
        .await
        .expect("the successor did not ask for the sockets")
        .unwrap();
    let mut lines = tokio::io::BufReader::new(stream);
    let mut hello = String::new();
    lines.read_line(&mut hello).await.unwrap();
    assert!(hello.starts_with("wsgate-upgrade"), "{hello:?}");
    // It waits for the sockets: stop it now.
    send_signal(&successor, "TERM");
    let status = wait_exit(&mut successor).await;
    assert!(status.success(), "{status}");
    let mut seen = Vec::new();
    wait_line(&mut log, &mut seen, "the stop while starting", |l| {
        l.contains("signal received while starting")
    })
    .await;
    // Never told it was ready: the old process's hand-over fails, and it serves on.
    let mut rest = String::new();
    assert_eq!(lines.read_line(&mut rest).await.unwrap(), 0, "{rest:?}");
}

/// Sends SIGTERM to a process when dropped.
struct StopOnDrop(u64);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

/// A binary upgrade is how a changed `[admin] listen` takes effect: the successor binds the
/// new address rather than taking over the old one's socket (which goes with the old
/// process).
#[tokio::test]
async fn a_successor_with_another_admin_address_listens_there() {
    let tmp = TempDir::new("upgrade-admin");
    let echo = EchoBackend::spawn().await;
    let old_config = upgrade_config(
        &tmp,
        "old.toml",
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n",
        &echo.url(),
    );
    let Running {
        child: mut old,
        log: mut old_log,
        seen: mut seen_old,
        url: _,
    } = start_upgradable(&old_config).await;
    let old_admin = admin_address(&seen_old);
    let new_admin = free_port().await;
    let new_config = upgrade_config(
        &tmp,
        "new.toml",
        &format!("[admin]\nlisten = \"{new_admin}\"\n\n"),
        &echo.url(),
    );
    let mut new = spawn_binary(&new_config, "json", "info");
    let new_log = log_lines(&mut new);
    wait_line(&mut old_log, &mut seen_old, "the hand-over", |l| {
        l.contains("handed the listening sockets over")
    })
    .await;
    assert!(wait_exit(&mut old).await.success());
    let new_log = drain_log(new_log);
    let (_, ready) = raw_exchange(
        new_admin,
        b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let refused = tokio::net::TcpStream::connect(old_admin).await;
    assert!(refused.is_err(), "the old admin address still answers");
    send_signal(&new, "TERM");
    let status = wait_exit(&mut new).await;
    let log = new_log.await.unwrap();
    assert!(status.success(), "{status}; log:\n{}", log.join("\n"));
}

/// A backend drained through the admin API stays drained in the successor: an operator who
/// drained one for maintenance found it taking sessions again after the proxy's upgrade.
#[tokio::test]
async fn a_drained_backend_stays_drained_across_the_upgrade() {
    let tmp = TempDir::new("upgrade-drain");
    let echo = EchoBackend::spawn().await;
    let config = upgrade_config(
        &tmp,
        "wsgate.toml",
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n",
        &echo.url(),
    );
    let Running {
        child: mut old,
        log: old_log,
        seen: seen_old,
        url: _,
    } = start_upgradable(&config).await;
    let admin = admin_address(&seen_old);
    let drain = serde_json::json!({"route": "r", "backend": echo.url()});
    let (status, answer) = admin_json(admin, "POST", "/api/backends/drain", &drain).await;
    assert_eq!(status, 200, "{answer}");
    let old_log = drain_log(old_log);

    let mut new = spawn_binary(&config, "json", "info");
    let mut new_log = log_lines(&mut new);
    let mut seen_new = Vec::new();
    wait_line(&mut new_log, &mut seen_new, "the drain kept", |l| {
        l.contains("kept drained")
    })
    .await;
    let new_log = drain_log(new_log);
    assert!(wait_exit(&mut old).await.success());
    drop(old_log);
    // The admin listener is the new process's now.
    let (status, routes) = admin_json(admin, "GET", "/api/routes", &Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(
        routes["routes"][0]["backends"][0]["draining"], true,
        "{routes}"
    );
    send_signal(&new, "TERM");
    assert!(wait_exit(&mut new).await.success());
    drop(new_log);
}

/// `wsgate run --config CONFIG` (JSON log at info) as systemd starts it for socket
/// activation: `sockets` at descriptors 3, 4, … with their names, `LISTEN_PID` the process's
/// own (a shell sets it, then execs the binary in its place).
fn spawn_activated(config: &std::path::Path, sockets: &[(&std::net::TcpListener, &str)]) -> Child {
    use std::os::fd::AsRawFd;
    let fds: Vec<i32> = sockets.iter().map(|(s, _)| s.as_raw_fd()).collect();
    let names: Vec<&str> = sockets.iter().map(|(_, n)| *n).collect();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh", BIN])
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    const MAX_PASSED: usize = 8;
    assert!(fds.len() <= MAX_PASSED);
    // SAFETY: fcntl and dup2 are async-signal-safe, and the closure touches nothing else
    // (the descriptor list was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            // Each socket first to a descriptor above the range (other tests' descriptors,
            // freed and reused, may put a socket inside it, where a copy into the range
            // would overwrite it before its own copy), then down into place; dup2 clears
            // close-on-exec on each copy.
            let top = 3 + fds.len() as i32;
            let mut high = [0i32; MAX_PASSED];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, top);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high[..fds.len()].iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// A listener on the port of a socket systemd passed, at another address, cannot be bound
/// (systemd holds the port): the error says so and what to do, instead of a bare "address in
/// use" that sends the operator looking for another process.
#[tokio::test]
async fn a_listener_beside_the_socket_systemd_passed_is_told_why_it_cannot_bind() {
    let tmp = TempDir::new("activation-bind");
    let echo = EchoBackend::spawn().await;
    let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = passed.local_addr().unwrap().port();
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"0.0.0.0:{port}\"\n\n{}",
            route("r", "/", &[echo.url()])
        ),
    );
    let mut child = spawn_activated(&config, &[(&passed, "web")]);
    let mut log = log_lines(&mut child);
    let mut seen = Vec::new();
    while let Ok(Some(line)) = log.next_line().await {
        seen.push(line);
    }
    let status = wait_exit(&mut child).await;
    assert!(!status.success(), "{}", seen.join("\n"));
    let all = seen.join("\n");
    assert!(
        all.contains(&format!(
            "listener[0].listen: cannot listen on 0.0.0.0:{port}"
        )) && all.contains(&format!(
            r#"systemd holds this port at 127.0.0.1:{port} (socket \"web\")"#
        )) && all.contains(&format!("ListenStream= to 0.0.0.0:{port}")),
        "{all}"
    );
}

/// The listener on a socket systemd passed stays through a reload: closing it would leave
/// systemd's copy queueing connections for nobody, and moving it would shut systemd's copy
/// too. A reload without it is refused with the reason, and the listener serves on. A
/// passed socket no listener wants is said to go on listening in systemd's copy.
#[tokio::test]
async fn a_reload_cannot_remove_the_listener_on_the_socket_systemd_passed() {
    let tmp = TempDir::new("activation-reload");
    let echo = EchoBackend::spawn().await;
    let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = passed.local_addr().unwrap();
    let with = |listen: &str| {
        format!(
            "[[listener]]\nlisten = \"{listen}\"\n\n{}",
            route("r", "/", &[echo.url()])
        )
    };
    let config = tmp.write("wsgate.toml", with(&addr.to_string()));
    let mut child = spawn_activated(&config, &[(&passed, "web"), (&spare, "spare")]);
    drop(passed);
    let mut log = log_lines(&mut child);
    let mut seen = Vec::new();
    wait_line(&mut log, &mut seen, "the inherited socket", |l| {
        l.contains("listening on an inherited socket") && l.contains("\"web\"")
    })
    .await;
    let unused = wait_line(&mut log, &mut seen, "the unused socket", |l| {
        l.contains("\"spare\"")
    })
    .await;
    assert!(
        unused.contains("systemd keeps it listening")
            && unused.contains(&spare.local_addr().unwrap().to_string()),
        "{unused}"
    );
    let url = format!("ws://{addr}/");
    let (mut ws, _) = connect(&url).await;

    // A listener added for the passed socket nobody took at start: systemd holds it, and
    // only a restart passes it again.
    let spare_addr = spare.local_addr().unwrap();
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nlisten = \"{spare_addr}\"\n\n{}",
            with(&addr.to_string())
        ),
    )
    .unwrap();
    send_signal(&child, "HUP");
    let failed = wait_line(
        &mut log,
        &mut seen,
        "the reload adding the spare refused",
        |l| l.contains("config reload failed"),
    )
    .await;
    assert!(
        failed.contains("systemd passed this address's socket")
            && failed.contains("restart wsgate"),
        "{failed}"
    );

    std::fs::write(&config, with("127.0.0.1:0")).unwrap();
    send_signal(&child, "HUP");
    let failed = wait_line(&mut log, &mut seen, "the reload refused", |l| {
        l.contains("config reload failed")
    })
    .await;
    assert!(
        failed.contains(&format!(
            "the [[listener]] at {addr} runs on a socket systemd passed"
        )),
        "{failed}"
    );
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still here"));
    let (mut again, _) = connect(&url).await;
    again.send(Message::text("new")).await.unwrap();
    assert_eq!(next_data(&mut again).await, Message::text("new"));
    drop((ws, again));
    send_signal(&child, "TERM");
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "{status}");
}

/// A successor that took a socket systemd passed from its predecessor (a binary upgrade
/// under socket activation) knows it for one: its reloads keep that listener too.
#[tokio::test]
async fn after_a_binary_upgrade_the_socket_systemd_passed_is_still_kept() {
    let tmp = TempDir::new("activation-upgrade");
    let echo = EchoBackend::spawn().await;
    let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = passed.local_addr().unwrap();
    let with = |listen: &str| {
        format!(
            "[upgrade]\nsocket = \"{}\"\n\n[[listener]]\nlisten = \"{listen}\"\n\n{}",
            tmp.join("upgrade.sock").display(),
            route("r", "/", &[echo.url()])
        )
    };
    let config = tmp.write("wsgate.toml", with(&addr.to_string()));
    let mut old = spawn_activated(&config, &[(&passed, "web")]);
    drop(passed);
    let mut log = log_lines(&mut old);
    let mut seen = Vec::new();
    wait_line(&mut log, &mut seen, "the upgrade socket", |l| {
        l.contains("binary upgrades")
    })
    .await;
    send_signal(&old, "USR2");
    let started = wait_line(&mut log, &mut seen, "the successor's start", |l| {
        l.contains("started the new binary")
    })
    .await;
    let successor: Value = serde_json::from_str(&started).unwrap();
    let successor = successor["new_pid"].as_u64().expect("pid");
    let _stop = StopOnDrop(successor);
    wait_line(&mut log, &mut seen, "the hand-over", |l| {
        l.contains("handed the listening sockets over")
    })
    .await;
    let status = wait_exit(&mut old).await;
    assert!(status.success(), "{status}; log:\n{}", seen.join("\n"));

    std::fs::write(&config, with("127.0.0.1:0")).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &successor.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let failed = wait_line(&mut log, &mut seen, "the successor's reload refused", |l| {
        l.contains("config reload failed")
    })
    .await;
    assert!(
        failed.contains("runs on a socket systemd passed"),
        "{failed}"
    );
    let (mut ws, _) = connect(&format!("ws://{addr}/")).await;
    ws.send(Message::text("to the successor")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("to the successor"));
}
