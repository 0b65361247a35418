//! Config errors name their key and line, all at once; fixtures in tests/fixtures/.

use std::path::Path;

use wsgate::config::{ConfigError, load_file};

fn errors(fixture: &str) -> Vec<ConfigError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    match load_file(&path) {
        Ok(_) => panic!("{fixture} should not validate"),
        Err(e) => e.errors,
    }
}

/// Asserts that `errors` holds exactly the expected (line, key, message part) triples.
fn assert_errors(fixture: &str, expected: &[(usize, &str, &str)]) {
    let got = errors(fixture);
    let shown: Vec<String> = got.iter().map(|e| e.to_string()).collect();
    assert_eq!(got.len(), expected.len(), "{fixture}: got {shown:#?}");
    for (line, key, part) in expected {
        assert!(
            got.iter()
                .any(|e| e.line == Some(*line) && e.key == *key && e.message.contains(part)),
            "{fixture}: no error at line {line} for {key} containing {part:?}; got {shown:#?}"
        );
    }
}

#[test]
fn unknown_key_is_named_with_its_line() {
    assert_errors(
        "unknown_key.toml",
        &[(
            7,
            "route[0].bakends",
            "unknown key \"bakends\"; did you mean \"backends\"?",
        )],
    );
}

/// `"off"` for a timer that cannot be off says so (it read "invalid duration: expected a
/// number followed by a unit", as if "off" were a typo).
#[test]
fn off_where_a_timer_cannot_be_off_says_so() {
    const CANNOT: &str = "cannot be \"off\": give a duration";
    assert_errors(
        "off_where_it_cannot_be.toml",
        &[
            (4, "timeouts.pong_timeout", CANNOT),
            (6, "http2.keep_alive_timeout", CANNOT),
            (8, "config.watch_interval", CANNOT),
            (14, "route[0].http_idle_timeout", CANNOT),
        ],
    );
}

/// A listen address whose port is over 65535 says so (it read "not an IP address with a
/// port", where a backend URL's says the port is not a port number).
#[test]
fn a_port_over_65535_is_named() {
    assert_errors(
        "port_out_of_range.toml",
        &[
            (
                2,
                "listener[0].listen",
                "\"65536\" is not a port number (0 to 65535)",
            ),
            (
                5,
                "admin.listen",
                "\"99999\" is not a port number (0 to 65535)",
            ),
        ],
    );
}

/// A byte that is not UTF-8 is named by its line (it read "cannot read config file: stream
/// did not contain valid UTF-8", no line).
#[test]
fn a_byte_that_is_not_utf8_is_named_by_its_line() {
    let dir = crate::support::TempDir::new("latin1");
    let path = dir.join("latin1.toml");
    std::fs::write(
        &path,
        b"[[listener]]\n# caf\xe9\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let errors = match load_file(&path) {
        Ok(_) => panic!("a file that is not UTF-8 validated"),
        Err(e) => e.errors,
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, Some(2));
    assert!(errors[0].message.contains("not UTF-8"), "{errors:?}");
}

#[test]
fn every_bad_value_is_reported_at_once() {
    assert_errors(
        "many_errors.toml",
        &[
            (3, "timeouts.handshake", "missing unit"),
            (4, "timeouts.backend_connect", "unknown unit \"parsecs\""),
            (7, "limits.max_header_bytes", "at least 8192"),
            (10, "listener[0].listen", "not an IP address"),
            (14, "route[0].path", "must start with '/'"),
            (15, "route[0].backends[0]", "not a ws:// or wss:// URL"),
            (15, "route[0].backends[1]", "not a port number"),
            (16, "route[0].balance", "unknown balance"),
            // Reported though route[0] has errors of its own (it was missed before).
            (19, "route[1].name", "is used twice"),
            (20, "route[1].host", "not a host name"),
            (22, "route[1].backends", "at least one backend"),
            (
                25,
                "route[1].timeouts.backend_handshake",
                "greater than zero",
            ),
        ],
    );
}

#[test]
fn syntax_error_has_its_line() {
    assert_errors("syntax_error.toml", &[(2, "listener[0].listen", "string")]);
}

#[test]
fn wrong_type_names_the_key() {
    assert_errors(
        "wrong_type.toml",
        &[(
            5,
            "limits.max_headers",
            "expected an integer, found a string",
        )],
    );
}

#[test]
fn unknown_keys_wrong_types_and_bad_values_are_reported_together() {
    assert_errors(
        "mixed_errors.toml",
        &[
            (
                3,
                "timeouts.handshake",
                "expected a string, found an integer (10)",
            ),
            (
                4,
                "timeouts.idel",
                "unknown key \"idel\"; did you mean \"idle\"?",
            ),
            (
                7,
                "limits.max_headers",
                "expected an integer, found a string (\"lots\")",
            ),
            (8, "limits.max_header_bytes", "at least 8192"),
            (
                11,
                "listener[0].listn",
                "unknown key \"listn\"; did you mean \"listen\"?",
            ),
            (12, "listener[0].listen", "not an IP address"),
            (17, "route[0].backends[1]", "not a ws:// or wss:// URL"),
            (
                17,
                "route[0].backends[2]",
                "expected a URL or a table { url = ..., insecure_skip_verify = ..., weight = ... }, found an integer (9000)",
            ),
            (
                18,
                "route[0].bakends",
                "unknown key \"bakends\"; did you mean \"backends\"?",
            ),
            (19, "route[0].balance", "unknown balance"),
            (
                22,
                "route[0].timeouts.ping_intervall",
                "did you mean \"ping_interval\"?",
            ),
            (
                23,
                "route[0].timeouts.idle",
                "expected a string, found a boolean (true)",
            ),
            (
                29,
                "route[1].frobnicate",
                "unknown key \"frobnicate\"; expected one of: name, host, path, backends,",
            ),
        ],
    );
    let lines: Vec<usize> = errors("mixed_errors.toml")
        .iter()
        .map(|e| e.line.unwrap())
        .collect();
    assert!(lines.is_sorted(), "{lines:?}");
}

/// The two-error example of docs/configuration.md, as it is printed there.
#[test]
fn the_configuration_guides_example_reports_both_errors() {
    let toml = r#"[[listener]]
listen = "0.0.0.0:8080"

[[route]]
name = "chat"
path = "/chat"
backends = ["ws://10.0.0.5:9000", "http://10.0.0.6:9000"]
bakends = ["ws://10.0.0.7:9000"]
"#;
    let errs = wsgate::config::from_toml_str(toml).unwrap_err();
    let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        shown,
        [
            "line 7: route[0].backends[1]: \"http://10.0.0.6:9000\" is not a ws:// or wss:// URL",
            "line 8: route[0].bakends: unknown key \"bakends\"; did you mean \"backends\"?",
        ]
    );
}

#[test]
fn a_single_listener_table_asks_for_an_array_of_tables() {
    let toml = "[listener]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";
    let errs = wsgate::config::from_toml_str(toml).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].key.as_str(), errs[0].line), ("listener", Some(1)));
    assert_eq!(
        errs[0].message,
        "expected an array of tables, found a single table: write [[listener]], not [listener]"
    );
}

#[test]
fn wrong_types_are_named_in_toml_terms() {
    let toml = r#"[[listener]]
listen = 8080
tls = "cert.pem"
[[route]]
name = "r"
path = "/"
backends = ["ws://127.0.0.1:1"]
"#;
    let errs = wsgate::config::from_toml_str(toml).unwrap_err();
    let got: Vec<(&str, Option<usize>, &str)> = errs
        .iter()
        .map(|e| (e.key.as_str(), e.line, e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "listener[0].listen",
                Some(2),
                "expected a string, found an integer (8080)"
            ),
            (
                "listener[0].tls",
                Some(3),
                "expected a table ([listener.tls] or tls = { ... }), found a string (\"cert.pem\")"
            ),
        ]
    );
}

/// Messages speak TOML (string, integer, table, array), not Rust or serde.
#[test]
fn no_message_uses_rust_type_words() {
    let rust = [
        "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "usize", "f64", "map", "sequence",
        "struct", "enum", "untagged", "variant", "field",
    ];
    let fixtures = [
        "mixed_errors.toml",
        "many_errors.toml",
        "missing_keys.toml",
        "unknown_key.toml",
        "wrong_type.toml",
    ];
    for fixture in fixtures {
        for e in errors(fixture) {
            for word in e.message.split(|c: char| !c.is_alphanumeric() && c != '_') {
                assert!(!rust.contains(&word), "{fixture}: {e}");
            }
            assert!(!e.message.contains('`'), "{fixture}: {e}");
        }
    }
}

#[test]
fn missing_keys_point_at_their_table() {
    assert_errors(
        "missing_keys.toml",
        &[
            (1, "listener[0].listen", "missing"),
            (3, "route[0].name", "missing"),
            (3, "route[0].backends", "missing"),
        ],
    );
}

/// A name repeated from a route with errors of its own (here a misspelt key, so no backends)
/// is reported in the same run, not only once the first route is fixed.
#[test]
fn a_name_repeated_from_a_broken_route_is_reported_with_its_errors() {
    let toml = r#"
[[listener]]
listen = "127.0.0.1:0"
[[route]]
name = "a"
path = "/a"
bakends = ["ws://127.0.0.1:1"]
[[route]]
name = "a"
path = "/b"
backends = ["ws://127.0.0.1:1"]
"#;
    let errs = wsgate::config::from_toml_str(toml).unwrap_err();
    let found: Vec<(&str, Option<usize>)> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [("route[0].bakends", Some(7)), ("route[1].name", Some(9))],
        "{errs:#?}"
    );
}

#[test]
fn duplicate_route_names_and_places_are_refused() {
    let toml = r#"
[[listener]]
listen = "127.0.0.1:0"
[[route]]
name = "a"
path = "/x"
backends = ["ws://127.0.0.1:1"]
[[route]]
name = "a"
path = "/x"
backends = ["ws://127.0.0.1:1"]
"#;
    let errs = wsgate::config::from_toml_str(toml).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.key == "route[1].name" && e.line == Some(9)),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.key == "route[1].path" && e.line == Some(10)),
        "{errs:#?}"
    );
}

/// Names are kept trimmed (and reloads, the admin API and the metrics find routes by them),
/// so "a" and " a " are the same name; two empty names get "must not be empty" only.
#[test]
fn route_names_that_differ_only_in_spaces_are_the_same_name() {
    let toml = r#"
[[listener]]
listen = "127.0.0.1:0"
[[route]]
name = "a"
path = "/a"
backends = ["ws://127.0.0.1:1"]
[[route]]
name = " a "
path = "/b"
backends = ["ws://127.0.0.1:1"]
[[route]]
name = ""
path = "/c"
backends = ["ws://127.0.0.1:1"]
[[route]]
name = " "
path = "/d"
backends = ["ws://127.0.0.1:1"]
"#;
    let errs = wsgate::config::from_toml_str(toml).unwrap_err();
    let found: Vec<(&str, &str)> = errs
        .iter()
        .map(|e| (e.key.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("route[1].name", "route name \"a\" is used twice"),
            ("route[2].name", "must not be empty"),
            ("route[3].name", "must not be empty"),
        ],
        "{errs:#?}"
    );
}

/// A key named with control characters (an escape sequence) is shown escaped, as values
/// are: it reached the terminal raw, twice per message.
#[test]
fn control_characters_in_key_names_are_escaped() {
    let toml = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
                backends = [\"ws://127.0.0.1:1\"]\n\"ba\\u001b[31mckends\" = 1\n";
    let errs = wsgate::config::ConfigErrors {
        source: "wsgate.toml".into(),
        errors: wsgate::config::from_toml_str(toml).unwrap_err(),
    };
    let shown = errs.to_string();
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
    assert!(shown.contains("ba\\u{1b}[31mckends"), "{shown}");
    for line in errs.lines() {
        assert!(!line.contains('\u{1b}'), "{line:?}");
    }
}

/// Two routes for one host and path are an error, and so are two whose paths differ only in
/// letter case or a segment's trailing dots: requests are checked to route the same read
/// without them, so every request for one of the two would be refused as ambiguous.
#[test]
fn routes_with_the_same_path_read_without_case_are_an_error() {
    let toml = r#"
[[listener]]
listen = "127.0.0.1:0"
[[route]]
name = "a"
path = "/chat"
backends = ["ws://127.0.0.1:1"]
[[route]]
name = "b"
path = "/Chat"
backends = ["ws://127.0.0.1:1"]
[[route]]
name = "c"
path = "/chat"
host = "x.test"
backends = ["ws://127.0.0.1:1"]
[[route]]
name = "d"
path = "/chat"
backends = ["ws://127.0.0.1:1"]
"#;
    let errs = wsgate::config::from_toml_str(toml).unwrap_err();
    let found: Vec<(&str, Option<usize>, &str)> = errs
        .iter()
        .map(|e| (e.key.as_str(), e.line, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (
                "route[1].path",
                Some(10),
                "an earlier route already serves host (any) and path \"/Chat\" (\"/chat\": paths \
                 are compared without letter case or trailing dots)"
            ),
            (
                "route[3].path",
                Some(19),
                "an earlier route already serves host (any) and path \"/chat\""
            ),
        ],
        "{errs:#?}"
    );
}

#[test]
fn the_example_config_is_valid_and_uses_the_documented_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let cfg = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.listeners[0].handshake_timeout,
        wsgate::config::DEFAULT_HANDSHAKE_TIMEOUT
    );
    assert_eq!(
        cfg.routes[0].backend_connect_timeout,
        wsgate::config::DEFAULT_BACKEND_CONNECT_TIMEOUT
    );
    assert_eq!(
        cfg.routes[0].backend_handshake_timeout,
        wsgate::config::DEFAULT_BACKEND_HANDSHAKE_TIMEOUT
    );
    assert_eq!(cfg.shutdown_grace, wsgate::config::DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(
        cfg.limits.max_header_bytes,
        wsgate::config::DEFAULT_MAX_HEADER_BYTES
    );
    assert_eq!(
        cfg.limits.error_detail,
        wsgate::config::DEFAULT_ERROR_DETAIL
    );
}

#[test]
fn route_timeouts_override_global_ones() {
    let toml = r#"
[timeouts]
backend_connect = "2s"
[[listener]]
listen = "127.0.0.1:0"
handshake_timeout = "1500ms"
[[route]]
name = "a"
path = "/"
backends = ["ws://127.0.0.1:1"]
[route.timeouts]
backend_handshake = "1m"
"#;
    let cfg = wsgate::config::from_toml_str(toml).unwrap();
    assert_eq!(cfg.listeners[0].handshake_timeout.as_millis(), 1500);
    assert_eq!(cfg.routes[0].backend_connect_timeout.as_secs(), 2);
    assert_eq!(cfg.routes[0].backend_handshake_timeout.as_secs(), 60);
}

#[test]
fn error_detail_is_log_or_client() {
    let route = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:9000\"]\n";
    let config = |detail: &str| {
        wsgate::config::from_toml_str(&format!("[limits]\nerror_detail = {detail}\n{route}"))
    };
    use wsgate::config::ErrorDetail;
    let detail = |d: &str| config(d).unwrap().limits.error_detail;
    assert_eq!(
        wsgate::config::from_toml_str(route)
            .unwrap()
            .limits
            .error_detail,
        ErrorDetail::Log
    );
    assert_eq!(detail("\"log\""), ErrorDetail::Log);
    assert_eq!(detail("\"client\""), ErrorDetail::Client);
    let errors = config("\"verbose\"").unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "limits.error_detail");
    assert_eq!(errors[0].line, Some(2));
    assert!(
        errors[0].message.contains("\"log\" or \"client\""),
        "{errors:?}"
    );
}

#[test]
fn the_shutdown_close_spread_must_end_before_the_grace_period() {
    let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";
    let ok = format!("{base}[shutdown]\ngrace = \"30s\"\nclose_spread = \"10s\"\n");
    let cfg = wsgate::config::from_toml_str(&ok).unwrap();
    assert_eq!(
        cfg.shutdown_close_spread,
        Some(std::time::Duration::from_secs(10))
    );
    let off = wsgate::config::from_toml_str(base).unwrap();
    assert_eq!(off.shutdown_close_spread, None);
    let bad = format!("{base}[shutdown]\ngrace = \"5s\"\nclose_spread = \"5s\"\n");
    let errs = wsgate::config::from_toml_str(&bad).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        (errs[0].key.as_str(), errs[0].line),
        ("shutdown.close_spread", Some(9))
    );
    assert!(
        errs[0].message.contains("shorter than shutdown.grace"),
        "{errs:#?}"
    );
}

#[test]
fn config_watch_is_off_by_default_and_checks_every_interval_when_on() {
    let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";
    assert_eq!(wsgate::config::from_toml_str(base).unwrap().watch, None);
    let on = wsgate::config::from_toml_str(&format!("{base}[config]\nwatch = true\n")).unwrap();
    assert_eq!(
        on.watch,
        Some(wsgate::config::DEFAULT_CONFIG_WATCH_INTERVAL)
    );
    let every = format!("{base}[config]\nwatch = true\nwatch_interval = \"500ms\"\n");
    let every = wsgate::config::from_toml_str(&every).unwrap();
    assert_eq!(every.watch, Some(std::time::Duration::from_millis(500)));
    let bad = format!("{base}[config]\nwatch = true\nwatch_interval = \"soon\"\n");
    let errs = wsgate::config::from_toml_str(&bad).unwrap_err();
    assert_eq!(
        (errs[0].key.as_str(), errs[0].line),
        ("config.watch_interval", Some(9))
    );
}

#[test]
fn runtime_workers_and_scheduler() {
    use wsgate::config::Scheduler;
    let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";
    let plain = wsgate::config::from_toml_str(base).unwrap();
    assert_eq!(
        (plain.workers, plain.scheduler),
        (None, wsgate::config::DEFAULT_SCHEDULER)
    );
    let set = |table: &str| wsgate::config::from_toml_str(&format!("{base}[runtime]\n{table}"));
    let c = set("workers = 4\nscheduler = \"work_stealing\"\n").unwrap();
    assert_eq!((c.workers, c.scheduler), (Some(4), Scheduler::WorkStealing));
    let c = set("scheduler = \"per_worker\"\n").unwrap();
    assert_eq!(c.scheduler, Scheduler::PerWorker);
    let errs = set("workers = 0\nscheduler = \"round_robin\"\n").unwrap_err();
    let found: Vec<(&str, Option<usize>)> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [("runtime.workers", Some(8)), ("runtime.scheduler", Some(9))],
        "{errs:#?}"
    );
    assert!(
        errs[0]
            .message
            .contains("leave the key out for one per CPU"),
        "{errs:#?}"
    );
    assert!(
        errs[1]
            .message
            .contains("\"per_worker\" or \"work_stealing\""),
        "{errs:#?}"
    );
}

/// `[upgrade] socket` names a Unix socket wsgate binds, replacing a stale one: an empty
/// path, a missing directory and an existing file that is not a socket (which the bind
/// would have deleted: the config file itself, say) are refused with key and line.
#[test]
fn the_upgrade_socket_must_be_a_socket_path_in_a_directory_that_exists() {
    let dir = crate::support::TempDir::new("upgrade-socket");
    let config_file = dir.path().join("wsgate.toml");
    std::fs::write(&config_file, "# me\n").unwrap();
    let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";
    for (socket, part) in [
        ("", "must be a path"),
        ("/nonexistent-wsgate-dir/x.sock", "does not exist"),
        (config_file.to_str().unwrap(), "is not a socket"),
    ] {
        let text = format!("{base}[upgrade]\nsocket = \"{socket}\"\n");
        let errs = wsgate::config::from_toml_str(&text).unwrap_err();
        assert_eq!(
            (errs[0].key.as_str(), errs[0].line),
            ("upgrade.socket", Some(8)),
            "{socket:?}: {errs:?}"
        );
        assert!(errs[0].message.contains(part), "{socket:?}: {errs:?}");
    }
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), "# me\n");
    let fine = dir.path().join("wsgate.sock");
    let text = format!("{base}[upgrade]\nsocket = \"{}\"\n", fine.display());
    let config = wsgate::config::from_toml_str(&text).unwrap();
    assert_eq!(config.upgrade_socket.as_deref(), Some(fine.as_path()));
}

/// A file's path given empty is named as empty, on its key and line: joined to the config's
/// directory it named the directory, and the error said "Is a directory".
#[test]
fn an_empty_file_path_is_named_as_empty() {
    let route = "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";
    for (table, key, line) in [
        (
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \" \"\n",
            "admin.token_file",
            3,
        ),
        (
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"\"\nkey = \"k.pem\"\n",
            "listener[0].tls.cert",
            4,
        ),
        (
            &format!("{route}[route.auth.jwt]\nsecret_file = \"\"\n"),
            "route[0].auth.jwt.secret_file",
            6,
        ),
        (
            &format!("{route}[route.backend_tls]\nca = \"\"\n"),
            "route[0].backend_tls.ca",
            6,
        ),
    ] {
        let errs = wsgate::config::from_toml_str(&format!("{table}{route}")).unwrap_err();
        assert!(
            errs.iter().any(|e| e.key == key
                && e.line == Some(line)
                && e.message.starts_with("is empty: give a file's path")),
            "{key}: {errs:?}"
        );
    }
}

/// Two listeners that would take the same port are refused by `check`, not by the bind at
/// start: the same address twice, or an address beside the unspecified one on its port.
#[test]
fn listeners_that_would_share_a_port_are_refused() {
    let route = "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";
    for (first, second, part) in [
        (
            "127.0.0.1:23001",
            "0.0.0.0:23001",
            "cannot both listen on port 23001",
        ),
        (
            "0.0.0.0:23001",
            "127.0.0.1:23001",
            "cannot both listen on port 23001",
        ),
        (
            "[::]:23001",
            "127.0.0.1:23001",
            "cannot both listen on port 23001",
        ),
        (
            "127.0.0.1:23001",
            "127.0.0.1:23001",
            "used by an earlier listener",
        ),
        // An IPv4-mapped address is its IPv4 address (it was blamed on an unspecified one).
        (
            "127.0.0.1:23001",
            "[::ffff:127.0.0.1]:23001",
            "an IPv4-mapped address is its IPv4 address",
        ),
    ] {
        let text = format!(
            "[[listener]]\nlisten = \"{first}\"\n[[listener]]\nlisten = \"{second}\"\n{route}"
        );
        let errs = wsgate::config::from_toml_str(&text).unwrap_err();
        assert_eq!(
            (errs[0].key.as_str(), errs[0].line),
            ("listener[1].listen", Some(4)),
            "{first} + {second}: {errs:?}"
        );
        assert!(errs[0].message.contains(part), "{errs:?}");
    }
    // Other addresses on one port, and free ports, are fine.
    for (first, second) in [
        ("127.0.0.1:23001", "127.0.0.2:23001"),
        ("0.0.0.0:0", "127.0.0.1:0"),
    ] {
        let text = format!(
            "[[listener]]\nlisten = \"{first}\"\n[[listener]]\nlisten = \"{second}\"\n{route}"
        );
        wsgate::config::from_toml_str(&text).unwrap();
    }
}

/// SNI carries DNS names only (RFC 6066 §3): an SNI entry's `hosts` that hold an IP
/// address, a bare `*`, an inner wildcard or an empty name would never match, and are
/// refused with key and line, as a route's `host` is.
#[test]
fn sni_hosts_must_be_host_names() {
    let ca = crate::support::tls::TestCa::new();
    let (cert, key) = ca.leaf("gw", &["localhost"]);
    let route = "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:1\"]\n";
    let with = |hosts: &str| {
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{c}\"\nkey = \"{k}\"\n\
             [[listener.tls.sni]]\nhosts = {hosts}\ncert = \"{c}\"\nkey = \"{k}\"\n{route}",
            c = cert.display(),
            k = key.display()
        )
    };
    for hosts in [
        "[\"a.example\", \"bad host\"]",
        "[\"*\"]",
        "[\"a.*.test\"]",
        "[\"\"]",
        "[\"1.2.3.4\"]",
        "[\"a.example:443\"]",
    ] {
        let errs = wsgate::config::from_toml_str(&with(hosts)).unwrap_err();
        assert_eq!(
            (errs[0].key.as_str(), errs[0].line),
            ("listener[0].tls.sni[0].hosts", Some(7)),
            "{hosts}: {errs:?}"
        );
    }
    wsgate::config::from_toml_str(&with("[\"a.example\", \"*.wild.example\", \"B.Example\"]"))
        .unwrap();
}

/// A backend written as a table is read as one: a misspelt key in it is named with a "did
/// you mean", a value of the wrong type by its key, a missing `url` as missing.
#[test]
fn a_backend_table_names_the_key_at_fault() {
    let base = "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n";
    for (backends, key, part) in [
        (
            "[{ url = \"ws://127.0.0.1:1\", weigth = 2 }]",
            "route[0].backends[0].weigth",
            "did you mean \"weight\"",
        ),
        (
            "[{ url = \"ws://127.0.0.1:1\", weight = \"x\" }]",
            "route[0].backends[0].weight",
            "expected an integer",
        ),
        ("[{ weight = 2 }]", "route[0].backends[0].url", "missing"),
    ] {
        let text = format!("{base}backends = {backends}\n");
        let errs = wsgate::config::from_toml_str(&text).unwrap_err();
        assert_eq!(errs.len(), 1, "{backends}: {errs:?}");
        assert_eq!(
            (errs[0].key.as_str(), errs[0].line),
            (key, Some(6)),
            "{backends}: {errs:?}"
        );
        assert!(errs[0].message.contains(part), "{errs:?}");
    }
}
