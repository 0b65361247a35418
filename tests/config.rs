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
