//! The `wsgate` binary as a user runs it: check, run with JSON logs (access log, refusals,
//! SIGTERM drain), and demo.

use std::ffi::OsStr;
use std::process::{Output, Stdio};

use futures_util::SinkExt;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

/// A JSON log record; `get` returns a field as text (strings unquoted, numbers as written).
struct Record(serde_json::Map<String, serde_json::Value>);

impl Record {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

fn json(line: &str) -> Record {
    match serde_json::from_str(line) {
        Ok(serde_json::Value::Object(map)) => Record(map),
        _ => panic!("not a JSON log line: {line}"),
    }
}

/// `wsgate run` on `config` with JSON logs at `info`, once it is listening: the child, its log
/// lines, the lines read so far, and the address it listens on.
async fn run_json(
    config: &std::path::Path,
) -> (
    Child,
    Lines<BufReader<tokio::process::ChildStderr>>,
    Vec<String>,
    String,
) {
    let mut child = spawn_binary(config, "json", "info");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let listening = wait_line(&mut lines, &mut seen, "listening", |l| {
        l.contains("\"listening\"")
    })
    .await;
    let addr = json(&listening)
        .get("listen")
        .expect("listen field")
        .to_string();
    (child, lines, seen, addr)
}

/// A config file in `tmp`: a listener on a free port and the route "echo" at `/ws` to
/// `backend`.
fn echo_config(tmp: &TempDir, backend: &EchoBackend) -> std::path::PathBuf {
    tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("echo", "/ws", &[backend.url()])
        ),
    )
}

fn sigterm(child: &Child) {
    send_signal(child, "TERM");
}

/// Runs the binary with `args` to completion and returns its output.
async fn run_wsgate<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(BIN).args(args).output().await.unwrap()
}

/// Asserts that a finished command succeeded, showing its stderr if it did not.
#[track_caller]
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `wsgate --log-format json check --config CONFIG`, which must succeed, and returns
/// the JSON records of the lines that contain `marker` (the warnings of one kind), with the
/// whole of stderr for messages.
async fn check_warnings(config: &std::path::Path, marker: &str) -> (Vec<Record>, String) {
    let out = Command::new(BIN)
        .args(["--log-format", "json", "check", "--config"])
        .arg(config)
        .output()
        .await
        .unwrap();
    assert_success(&out);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let warnings = err
        .lines()
        .filter(|l| l.contains(marker))
        .map(json)
        .collect();
    (warnings, err)
}

/// Starts `wsgate demo` (with `--tls` if `tls`) on a free port; returns the child, the address
/// from its `Open http(s)://` line, and its stdout, to keep open while the demo runs.
async fn spawn_demo(tls: bool) -> (Child, String, Lines<BufReader<ChildStdout>>) {
    let (args, scheme): (&[&str], _) = if tls {
        (&["demo", "--tls", "--listen", "127.0.0.1:0"], "https://")
    } else {
        (&["demo", "--listen", "127.0.0.1:0"], "http://")
    };
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let open = format!("Open {scheme}");
    let line = wait_line(&mut lines, &mut seen, "demo URL", |l| l.contains(&open)).await;
    let addr = line
        .split(scheme)
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    (child, addr, lines)
}

/// A port given to `wsgate demo` is the one it serves on or an error: it took a free port
/// instead, where only the defaults give way.
#[tokio::test]
async fn demo_refuses_a_busy_port_it_was_given() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let run = Command::new(BIN)
        .args(["demo", "--listen", busy.as_str(), "--admin", "127.0.0.1:0"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(STEP, run)
        .await
        .expect("wsgate exits")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{busy} (--listen) is in use")),
        "{err}"
    );
}

#[tokio::test]
async fn version_and_help() {
    let out = run_wsgate(["--version"]).await;
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    // `wsgate 0.1.0 (commit 1a2b3c4d5e6f[-dirty] or unknown, built YYYY-MM-DD)`
    let rest = version
        .trim()
        .strip_prefix(concat!("wsgate ", env!("CARGO_PKG_VERSION"), " (commit "))
        .unwrap_or_else(|| panic!("{version}"));
    let (commit, date) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", built "))
        .unwrap_or_else(|| panic!("{version}"));
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        hash == "unknown" || (hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
    let parts: Vec<&str> = date.split('-').collect();
    assert!(
        parts.len() == 3
            && [4, 2, 2] == [parts[0].len(), parts[1].len(), parts[2].len()]
            && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "{version}"
    );
    let out = run_wsgate(["--help"]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check", "demo"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[tokio::test]
async fn check_reports_every_error_with_file_line_and_key() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/many_errors.toml"
    );
    let out = run_wsgate(["check", "--config", fixture]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("12 errors"), "{err}");
    assert!(
        err.contains("many_errors.toml:3: timeouts.handshake:"),
        "{err}"
    );
    assert!(
        err.contains("many_errors.toml:25: route[1].timeouts.backend_handshake:"),
        "{err}"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = run_wsgate(["check", "--config", example]).await;
    assert_success(&out);
    // The example sets no [runtime]: one worker per CPU, each with a runtime of its own.
    let printed = String::from_utf8_lossy(&out.stdout);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cpus == 1 {
        "  runtime: 1 worker (one per CPU)\n".to_string()
    } else {
        format!("  runtime: {cpus} workers (one per CPU), scheduler per_worker\n")
    };
    assert!(printed.contains(&runtime), "{printed}");

    let out = run_wsgate(["run", "--config", "/nonexistent/wsgate.toml"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

/// A config, or a file it names, past its bound (`/dev/zero` for a key, a slip of the path,
/// never ends) is refused there, not read until memory runs out: a reload did that inside
/// the running gateway. (Sparse files stand in for `/dev/zero`, so that a regression fails
/// the test rather than exhausting the machine's memory.)
#[tokio::test]
async fn files_past_their_bound_are_refused() {
    let dir = TempDir::new("endless");
    let sparse = |name: &str, len: u64| {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        f.set_len(len).unwrap();
        dir.join(name).to_str().unwrap().to_string()
    };
    let huge_config = sparse("huge.toml", (64 << 20) + 1);
    let out = run_wsgate(["check", "--config", &huge_config]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config file: larger than 64 MiB"),
        "{err}"
    );

    let huge_key = sparse("huge.key", (16 << 20) + 1);
    dir.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{huge_key}\"\n\
             key = \"{huge_key}\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
             backends = [\"ws://127.0.0.1:1\"]\n"
        ),
    );
    let out = run_wsgate([
        "check",
        "--config",
        dir.join("wsgate.toml").to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot read {huge_key}: larger than 16 MiB")),
        "{err}"
    );
}

/// `wsgate check ... | head -1`: a reader that stops early costs no panic, and the check's
/// own verdict stands (exit 0).
#[test]
fn check_into_a_closed_pipe_exits_cleanly() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", example])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[tokio::test]
async fn check_reports_unknown_keys_and_wrong_types_with_the_value_errors() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mixed_errors.toml"
    );
    let out = run_wsgate(["check", "--config", fixture]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("13 errors"), "{err}");
    for line in [
        "mixed_errors.toml:3: timeouts.handshake: expected a string, found an integer (10)",
        "mixed_errors.toml:8: limits.max_header_bytes: must be at least 8192 bytes",
        "mixed_errors.toml:17: route[0].backends[1]: \"http://10.0.0.6:9000\" is not a ws:// or wss:// URL",
        "mixed_errors.toml:18: route[0].bakends: unknown key \"bakends\"; did you mean \"backends\"?",
        "mixed_errors.toml:29: route[1].frobnicate: unknown key \"frobnicate\"; expected one of: name,",
    ] {
        assert!(err.contains(line), "no {line:?} in:\n{err}");
    }
}

/// A route that authenticates with a cookie and checks no `Origin` is open to cross-site
/// WebSocket hijacking: `check` (and startup, which loads the same way) warns, naming the
/// route and the key, and still succeeds.
#[tokio::test]
async fn check_warns_of_a_cookie_route_without_origins() {
    let tmp = TempDir::new("cli");
    tmp.write("secret", "an HMAC secret of at least thirty-two bytes");
    let backend = ["ws://127.0.0.1:9".to_string()];
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n\
             {}[route.auth.jwt]\nsecret_file = \"secret\"\nfrom = [\"header\", \"cookie:session\"]\n\
             {}[route.auth]\nrequire_cookies = [\"sid\"]\n\
             {}origins = [\"same-origin\"]\n[route.auth]\nrequire_cookies = [\"sid\"]\n\
             {}[route.auth.jwt]\nsecret_file = \"secret\"\n",
            route("jwt-cookie", "/a", &backend),
            route("sid-cookie", "/b", &backend),
            route("checked", "/c", &backend),
            route("header-only", "/d", &backend),
        ),
    );
    let (warnings, err) = check_warnings(&config, "cross-site WebSocket hijacking").await;
    let named: Vec<(Option<String>, Option<String>, Option<String>)> = warnings
        .iter()
        .map(|w| (w.get("route"), w.get("key"), w.get("level")))
        .collect();
    let warn = |route: &str, key: &str| {
        (
            Some(route.to_string()),
            Some(key.to_string()),
            Some("WARN".to_string()),
        )
    };
    assert_eq!(
        named,
        vec![
            warn("jwt-cookie", "route[0].auth.jwt.from[1]"),
            warn("sid-cookie", "route[1].auth.require_cookies"),
        ],
        "{err}"
    );
    assert!(warnings.iter().all(|w| w.get("line").is_some()), "{err}");
}

/// A route whose path ends with a slash does not take the path without it: when another
/// route does (a catch-all), `check` warns, naming both, since `/api` then skips `/api/`'s
/// policy on a backend that serves it as `/api/`. Without such a route (a 404), no warning.
#[tokio::test]
async fn check_warns_of_a_slash_route_whose_bare_path_goes_elsewhere() {
    let tmp = TempDir::new("cli");
    let backend = ["ws://127.0.0.1:9".to_string()];
    let warnings = async |routes: String| {
        let config = tmp.write(
            "wsgate.toml",
            format!("[[listener]]\nlisten = \"127.0.0.1:0\"\n{routes}"),
        );
        let (warnings, _) = check_warnings(&config, "does not take").await;
        warnings
            .iter()
            .map(|w| (w.get("route"), w.get("key"), w.get("line")))
            .collect::<Vec<_>>()
    };
    let named = warnings(format!(
        "{}{}{}",
        route("chat", "/chat", &backend),
        route("api", "/api/", &backend),
        route("public", "/", &backend)
    ))
    .await;
    assert_eq!(
        named,
        [(
            Some("api".to_string()),
            Some("route[1].path".to_string()),
            Some("9".to_string())
        )]
    );
    let named = warnings(format!(
        "{}{}",
        route("api", "/api/", &backend),
        route("chat", "/chat", &backend)
    ))
    .await;
    assert!(named.is_empty(), "{named:?}");
}

/// `check` runs the whole validation: an admin listener on a non-loopback address without a
/// token is refused (exit 1, with file, line, key and why), and accepted once `token_env`
/// names a variable that holds a token.
#[tokio::test]
async fn check_refuses_an_admin_listener_open_to_the_network_without_a_token() {
    let tmp = TempDir::new("cli");
    let head = format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}[admin]\nlisten = \"0.0.0.0:9901\"\n",
        route("r", "/", &["ws://127.0.0.1:9".to_string()])
    );
    let check = |file: &str, text: String, token: Option<&str>| {
        let config = tmp.write(file, text);
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--config"]).arg(config);
        match token {
            Some(t) => cmd.env("WSGATE_TEST_ADMIN_TOKEN", t),
            None => cmd.env_remove("WSGATE_TEST_ADMIN_TOKEN"),
        };
        async move { cmd.output().await.unwrap() }
    };

    let out = check("open.toml", head.clone(), None).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open.toml: 1 error"), "{err}");
    assert!(
        err.contains(
            "open.toml:8: admin.listen: 0.0.0.0:9901 is not a loopback address, so a token is \
             required (token_env or token_file): the admin API can close sessions and drain \
             backends, so it must not be open to the network"
        ),
        "{err}"
    );

    let with_token = format!("{head}token_env = \"WSGATE_TEST_ADMIN_TOKEN\"\n");
    let out = check("unset.toml", with_token.clone(), None).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "unset.toml:9: admin.token_env: environment variable WSGATE_TEST_ADMIN_TOKEN is not set"
        ),
        "{err}"
    );

    let out = check(
        "guarded.toml",
        with_token,
        Some("a-token-long-enough-to-guard"),
    )
    .await;
    assert_success(&out);
}

/// A listener whose address is taken stops the start with the file, line and key, as a
/// config error would, and the OS's reason.
#[tokio::test]
async fn a_listen_address_in_use_is_named_by_file_line_and_key() {
    let tmp = TempDir::new("cli");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    // The proxy listener's, and the admin listener's (which said "cannot listen on ADDR
    // (admin)", without file or line).
    for (name, table, key) in [
        ("busy.toml", "[[listener]]", "listener[1].listen"),
        ("busy-admin.toml", "[admin]", "admin.listen"),
    ] {
        let config = tmp.write(
            name,
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n{table}\nlisten = \"{busy}\"\n{}",
                route("r", "/", &["ws://127.0.0.1:9".to_string()])
            ),
        );
        let out = tokio::time::timeout(
            STEP,
            run_wsgate([
                OsStr::new("run"),
                OsStr::new("--config"),
                config.as_os_str(),
            ]),
        )
        .await
        .expect("wsgate exits");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        let want = format!("{name}:5: {key}: cannot listen on {busy}: Address already in use");
        assert!(err.contains(&want), "{err}");
    }
}

/// With `--log-format json`, the lines that say why wsgate did not start are JSON records
/// too (they were plain text among the JSON lines): an invalid config's errors, and a start
/// that failed (here a taken port).
#[tokio::test]
async fn with_json_logs_a_failed_start_is_a_json_record() {
    let tmp = TempDir::new("cli");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = tmp.write("bad.toml", "[[listener]]\nlisten = \"nope\"\n");
    let busy = tmp.write(
        "busy.toml",
        format!(
            "[[listener]]\nlisten = \"{}\"\n{}",
            taken.local_addr().unwrap(),
            route("r", "/", &["ws://127.0.0.1:9".to_string()])
        ),
    );
    for (config, message, detail) in [
        (
            &bad,
            "the config is not valid; not started",
            "line 2: listener[0].listen",
        ),
        (
            &busy,
            "wsgate stopped",
            "busy.toml:2: listener[0].listen: cannot listen on",
        ),
    ] {
        let run = run_wsgate([
            OsStr::new("--log-format"),
            OsStr::new("json"),
            OsStr::new("run"),
            OsStr::new("--config"),
            config.as_os_str(),
        ]);
        let out = tokio::time::timeout(STEP, run).await.expect("wsgate exits");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        let records: Vec<Record> = err.lines().map(json).collect();
        let last = records.last().expect("a record");
        assert_eq!(last.get("level").as_deref(), Some("ERROR"), "{err}");
        assert_eq!(last.get("message").as_deref(), Some(message), "{err}");
        assert!(err.contains(detail), "{err}");
    }
}

/// `RUST_LOG=off` silences the log, not why wsgate did not start: with JSON logs an invalid
/// config's errors were an ERROR record the filter dropped, and wsgate exited 1 without a
/// word. A directive in `RUST_LOG` that does not parse is named (it cost the whole variable,
/// silently: `RUST_LOG=warn,wsgate=debg` logged at `info`).
#[tokio::test]
async fn rust_log_never_hides_a_failed_start_and_a_bad_directive_is_named() {
    let tmp = TempDir::new("cli");
    let bad = tmp.write("bad.toml", "[[listener]]\nlisten = \"nope\"\n");
    let out = Command::new(BIN)
        .env("RUST_LOG", "off")
        .args(["--log-format", "json", "run", "--config"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:2: listener[0].listen"), "{err:?}");

    let good = tmp.write(
        "good.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("r", "/", &["ws://127.0.0.1:9".to_string()])
        ),
    );
    // Named at `warn`, or at `error` where what is left filters warnings out.
    for (rust_log, level) in [("warn,wsgate=debg", "WARN"), ("error,wsgate=debg", "ERROR")] {
        let out = Command::new(BIN)
            .env("RUST_LOG", rust_log)
            .args(["--log-format", "json", "check", "--config"])
            .arg(&good)
            .output()
            .await
            .unwrap();
        assert_success(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        let named = err
            .lines()
            .map(json)
            .find(|r| r.get("directive").as_deref() == Some("wsgate=debg"));
        let named = named.unwrap_or_else(|| panic!("the bad directive is not named: {err}"));
        assert_eq!(named.get("level").as_deref(), Some(level), "{err}");
        // The others apply, and the line says so (it said the default did, always).
        let message = named.get("message").unwrap_or_default();
        assert!(
            message.contains("(the others apply)") && !message.contains("default"),
            "{message}"
        );
    }
    // Nothing left but the bad one: the default applies, and the line says which.
    let out = Command::new(BIN)
        .env("RUST_LOG", "wsgate=debg")
        .args(["--log-format", "json", "check", "--config"])
        .arg(&good)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("none left: the default applies, info,rustls=error"),
        "{err}"
    );
}

/// SIGQUIT is nginx's graceful stop: here too a drain (1001 to the session, exit 0), not the
/// default action's core dump with every session cut.
#[tokio::test]
async fn sigquit_drains_as_sigterm_does() {
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("cli-quit");
    let config = echo_config(&tmp, &backend);
    let (mut child, mut lines, mut seen, addr) = run_json(&config).await;
    let (mut ws, _) = connect(&format!("ws://{addr}/ws")).await;
    send_signal(&child, "QUIT");
    assert_eq!(u16::from(next_close(&mut ws).await.code), 1001);
    drop(ws);
    wait_line(&mut lines, &mut seen, "the signal logged", |l| {
        l.contains("SIGQUIT")
    })
    .await;
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn run_logs_sessions_and_refusals_then_drains_on_sigterm() {
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("cli");
    let config = echo_config(&tmp, &backend);
    let (mut child, mut lines, mut seen, addr) = run_json(&config).await;

    // A session: echo, then the client closes with a code.
    let (mut ws, _) = connect(&format!("ws://{addr}/ws")).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    send_close(&mut ws, CloseCode::Normal, "done").await;
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await
    {}
    drop(ws);
    let record = wait_line(&mut lines, &mut seen, "session access record", |l| {
        l.contains("\"event\":\"session\"")
    })
    .await;
    let r = json(&record);
    assert_eq!(r.get("route").as_deref(), Some("echo"));
    assert_eq!(r.get("backend").as_deref(), Some(backend.url().as_str()));
    assert_eq!(r.get("outcome").as_deref(), Some("closed"));
    // The client started the closing handshake; both close frames are in the record.
    assert_eq!(r.get("closed_by").as_deref(), Some("client"));
    assert_eq!(r.get("client_close_code").as_deref(), Some("1000"));
    assert_eq!(r.get("client_close_reason").as_deref(), Some("done"));
    assert_eq!(r.get("backend_close_code").as_deref(), Some("1000"));
    assert_eq!(r.get("messages_client_to_backend").as_deref(), Some("1"));
    assert_eq!(r.get("messages_backend_to_client").as_deref(), Some("1"));
    for key in [
        "client",
        "duration_ms",
        "bytes_client_to_backend",
        "bytes_backend_to_client",
        "session",
    ] {
        assert!(r.get(key).is_some(), "{key} missing in {record}");
    }
    assert!(
        r.get("bytes_client_to_backend")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 10
    );

    // A refusal: one record with status and reason.
    let (_s, resp) = raw_exchange(
        addr.parse().unwrap(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 426);
    let refused = wait_line(&mut lines, &mut seen, "refusal record", |l| {
        l.contains("\"event\":\"refused\"")
    })
    .await;
    let r = json(&refused);
    assert_eq!(r.get("status").as_deref(), Some("426"));
    assert_eq!(r.get("outcome").as_deref(), Some("not_an_upgrade"));
    assert!(r.get("reason").unwrap().contains("WebSocket endpoint"));

    // SIGTERM with a live session: the client gets 1001 going away, answers, and wsgate
    // exits 0 once the closing handshake is done.
    let (mut ws, _) = connect(&format!("ws://{addr}/ws")).await;
    sigterm(&child);
    wait_line(&mut lines, &mut seen, "shutdown start", |l| {
        l.contains("shutting down")
    })
    .await;
    assert_eq!(u16::from(next_close(&mut ws).await.code), 1001);
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(STEP, futures_util::StreamExt::next(&mut ws)).await
    {}
    drop(ws);
    let drained = wait_line(&mut lines, &mut seen, "drained session record", |l| {
        l.contains("\"event\":\"session\"")
    })
    .await;
    assert_eq!(json(&drained).get("outcome").as_deref(), Some("drained"));
    assert_eq!(json(&drained).get("cut").as_deref(), Some("false"));
    wait_line(&mut lines, &mut seen, "shutdown complete", |l| {
        l.contains("shutdown complete")
    })
    .await;
    let status = wait_exit(&mut child).await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        seen.join("\n")
    );
}

/// An unreachable backend: the client gets 502 and a generic reason, while the refusal's
/// access record (JSON) carries the backend's address and the OS error.
#[tokio::test]
async fn backend_failure_details_go_to_the_log_not_the_client() {
    let down = closed_port().await;
    let tmp = TempDir::new("cli-detail");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("r", "/", &[format!("ws://{down}")])
        ),
    );
    let (mut child, mut lines, mut seen, addr) = run_json(&config).await;
    let (_s, resp) = raw_exchange(addr.parse().unwrap(), upgrade_request("/", "").as_bytes()).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.body, "no backend reachable\n");
    let refused = wait_line(&mut lines, &mut seen, "refusal record", |l| {
        l.contains("\"event\":\"refused\"")
    })
    .await;
    let r = json(&refused);
    assert_eq!(r.get("status").as_deref(), Some("502"));
    assert_eq!(r.get("outcome").as_deref(), Some("backend_unreachable"));
    let reason = r.get("reason").unwrap();
    assert!(
        reason.contains(&down.to_string()) && reason.contains("os error"),
        "{reason}"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child).await.success());
}

#[tokio::test]
async fn demo_serves_the_page_and_echoes() {
    let (mut child, addr, _stdout) = spawn_demo(false).await;

    let (_s, page) =
        raw_exchange(addr.parse().unwrap(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains(r#"new WebSocket(url, ["chat", "superchat"])"#)
    );
    assert!(
        page.body
            .contains(r#"close(1000, "Closing Connection Normally")"#)
    );

    let (mut ws, resp) = connect_offering(&format!("ws://{addr}/echo"), "chat, superchat").await;
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chat"
    );
    // The demo backend first says how the socket arrived, then echoes.
    match next_data(&mut ws).await {
        Message::Text(t) => assert!(t.contains("over HTTP/1.1"), "{t}"),
        other => panic!("expected the greeting, got {other:?}"),
    }
    ws.send(Message::text("hi demo")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hi demo"));
    send_close(&mut ws, CloseCode::Normal, "Closing Connection Normally").await;
    let f = next_close(&mut ws).await;
    assert_eq!(u16::from(f.code), 1000);
    assert_eq!(f.reason.as_str(), "Closing Connection Normally");
    drop(ws);
    sigterm(&child);
    let status = wait_exit(&mut child).await;
    assert!(status.success());
}

#[tokio::test]
async fn cert_writes_a_development_certificate_that_a_listener_accepts() {
    let tmp = TempDir::new("cli");
    let dir = tmp.join("certs");
    let out = run_wsgate([
        OsStr::new("cert"),
        OsStr::new("--out"),
        dir.as_os_str(),
        OsStr::new("localhost"),
        OsStr::new("127.0.0.1"),
    ])
    .await;
    assert_success(&out);
    let (cert, key) = (dir.join("localhost.pem"), dir.join("localhost.key"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
            cert.display(),
            key.display(),
            route("r", "/", &["ws://127.0.0.1:1".to_string()])
        ),
    );
    let out = run_wsgate([
        OsStr::new("check"),
        OsStr::new("--config"),
        config.as_os_str(),
    ])
    .await;
    assert_success(&out);
    // Loading it says what it is.
    assert!(String::from_utf8_lossy(&out.stderr).contains("development certificate"));
}

/// A key written over an existing file is its owner's alone too (the open's mode applies
/// only to a file it creates: a 0644 file kept 0644 with the new private key in it); a name
/// no certificate can carry is refused before anything is written (`wsgate cert ''` wrote
/// `.pem` and `.key` for an empty DNS name).
#[tokio::test]
async fn cert_keeps_its_key_private_and_refuses_names_that_are_not_hosts() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("cli");
    let dir = tmp.join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("localhost.key");
    std::fs::write(&key, "old").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_wsgate([
        OsStr::new("cert"),
        OsStr::new("--out"),
        dir.as_os_str(),
        OsStr::new("localhost"),
    ])
    .await;
    assert_success(&out);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for bad in ["", "bad name", "http://x", "x_y", "a..b"] {
        let out = run_wsgate([
            OsStr::new("cert"),
            OsStr::new("--out"),
            tmp.join("other").as_os_str(),
            OsStr::new(bad),
        ])
        .await;
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is not a DNS name or an IP address"),
            "{bad:?}: {err}"
        );
        assert!(!tmp.join("other").exists(), "{bad:?}: files written");
    }
}

#[tokio::test]
async fn demo_tls_serves_the_page_over_https_and_echoes_over_wss() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut child, addr, _stdout) = spawn_demo(true).await;
    // The certificate is self-signed: this client does not verify it (as a user who accepted it).
    let insecure = wsgate::tls::backend_client_config(&wsgate::tls::BackendTlsOptions {
        insecure_skip_verify: true,
        ..Default::default()
    })
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(insecure);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = Vec::new();
    tls.read_to_end(&mut page).await.ok();
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("wss://"), "the page picks wss:// on https");

    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{addr}/echo"), tls)
        .await
        .unwrap();
    let greeting = next_message(&mut ws).await;
    assert!(greeting.to_text().unwrap().starts_with("wsgate demo:"));
    ws.send(Message::text("secure hello")).await.unwrap();
    let got = next_message(&mut ws).await;
    assert_eq!(got, Message::text("secure hello"));
    drop(ws);
    sigterm(&child);
    let status = wait_exit(&mut child).await;
    assert!(status.success());
}

const SUBCOMMANDS: [&str; 7] = ["run", "check", "echo", "demo", "cert", "completions", "man"];

#[tokio::test]
async fn completions_for_each_shell_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_wsgate(["completions", shell]).await;
        assert_success(&out);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("wsgate"), "{shell}: {script}");
        for name in SUBCOMMANDS.iter().chain(&["log-format"]) {
            assert!(script.contains(name), "{shell}: no {name} in:\n{script}");
        }
    }
    let out = run_wsgate(["completions", "tcsh"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );

    // `--out DIR` writes the file a shell looks for.
    let tmp = TempDir::new("cli");
    let out = run_wsgate([
        OsStr::new("completions"),
        OsStr::new("fish"),
        OsStr::new("--out"),
        tmp.path().as_os_str(),
    ])
    .await;
    assert_success(&out);
    let script = std::fs::read_to_string(tmp.join("wsgate.fish")).unwrap();
    assert!(script.contains("completions"), "{script}");
}

#[tokio::test]
async fn man_page_has_a_title_and_every_subcommand() {
    let out = run_wsgate(["man"]).await;
    assert_success(&out);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH wsgate 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for name in SUBCOMMANDS {
        assert!(
            page.contains(&format!("wsgate\\-{name}(1)")),
            "no {name} in:\n{page}"
        );
    }

    let tmp = TempDir::new("cli");
    let out = run_wsgate([
        OsStr::new("man"),
        OsStr::new("--out"),
        tmp.path().as_os_str(),
    ])
    .await;
    assert_success(&out);
    let run = std::fs::read_to_string(tmp.join("wsgate-run.1")).unwrap();
    assert!(run.contains(".TH wsgate-run 1"), "{run}");
    assert!(run.contains("config"), "{run}");
    assert!(tmp.join("wsgate.1").exists());
}

/// Under systemd (`Type=notify`): READY=1 once the proxy and admin listeners accept, RELOADING=1
/// with the monotonic time then READY=1 around a SIGHUP, STOPPING=1 on SIGTERM.
#[tokio::test]
async fn sd_notify_tells_readiness_reload_and_stop() {
    let tmp = TempDir::new("notify");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            route("r", "/", &["ws://127.0.0.1:9".to_string()])
        ),
    );
    let (mut child, socket, mut lines) = spawn_notifying(&config, &tmp);
    let mut seen = Vec::new();

    assert_eq!(next_notification(&socket).await, ["READY=1"]);
    // Both listeners were bound before READY=1: their log lines came first, and they accept.
    let listening = wait_line(&mut lines, &mut seen, "listening", |l| {
        l.contains("\"listening\"")
    })
    .await;
    let admin = wait_line(&mut lines, &mut seen, "admin listener", |l| {
        l.contains("\"admin listener\"")
    })
    .await;
    for addr in [
        json(&listening).get("listen").unwrap(),
        json(&admin).get("admin").unwrap(),
    ] {
        tokio::net::TcpStream::connect(&addr)
            .await
            .unwrap_or_else(|e| panic!("{addr} does not accept after READY=1: {e}"));
    }

    send_signal(&child, "HUP");
    let reloading = next_notification(&socket).await;
    assert_eq!(reloading.len(), 2, "{reloading:?}");
    assert_eq!(reloading[0], "RELOADING=1");
    let usec = reloading[1]
        .strip_prefix("MONOTONIC_USEC=")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec > 0);
    assert_eq!(next_notification(&socket).await, ["READY=1"]);
    wait_line(&mut lines, &mut seen, "the reload", |l| {
        l.contains("SIGHUP")
    })
    .await;

    sigterm(&child);
    assert_eq!(next_notification(&socket).await, ["STOPPING=1"]);
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "{status}; log:\n{}", seen.join("\n"));
}

/// Without `NOTIFY_SOCKET` (not under systemd) wsgate starts and stops as usual.
#[tokio::test]
async fn without_notify_socket_nothing_is_sent_and_wsgate_runs() {
    let tmp = TempDir::new("notify");
    let config = tmp.write(
        "wsgate.toml",
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("r", "/", &["ws://127.0.0.1:9".to_string()])
        ),
    );
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    wait_line(&mut lines, &mut seen, "listening", |l| {
        l.contains("\"listening\"")
    })
    .await;
    send_signal(&child, "HUP");
    wait_line(&mut lines, &mut seen, "the reload", |l| {
        l.contains("SIGHUP")
    })
    .await;
    sigterm(&child);
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "{status}; log:\n{}", seen.join("\n"));
    assert!(
        !seen.iter().any(|l| l.contains("NOTIFY_SOCKET")),
        "{}",
        seen.join("\n")
    );
}
