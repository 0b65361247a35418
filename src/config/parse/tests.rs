//! Every kind of parse error, located and worded; nothing depends on wsgate's own schema.

use super::words::{did_you_mean, edit_distance};
use super::*;
use crate::config::file::FileConfig;

/// (line, key, message) of every error `parse` reports for `text`, each message checked
/// for Rust and serde words.
fn errors(text: &str) -> Vec<(usize, String, String)> {
    let errors: Vec<_> = parse::<FileConfig>(text)
        .errors
        .into_iter()
        .map(|e| (e.line.unwrap_or(0), e.key, e.message))
        .collect();
    for (_, _, m) in &errors {
        assert_config_words(m);
    }
    errors
}

/// Asserts that `text` gives exactly these errors (line, key, message), in this order.
#[track_caller]
fn assert_errors(text: &str, expected: &[(usize, &str, &str)]) {
    let got = errors(text);
    let want: Vec<(usize, String, String)> = expected
        .iter()
        .map(|(l, k, m)| (*l, k.to_string(), m.to_string()))
        .collect();
    assert_eq!(got, want, "{text}");
}

/// No type names or serde terms: the reader wrote TOML, not Rust.
#[track_caller]
fn assert_config_words(message: &str) {
    const RUST: [&str; 24] = [
        "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize",
        "f32", "f64", "map", "sequence", "seq", "struct", "enum", "untagged", "variant", "field",
        "Option", "Spanned",
    ];
    for word in message.split(|c: char| !c.is_alphanumeric() && c != '_') {
        assert!(!RUST.contains(&word), "{word:?} in {message:?}");
    }
    assert!(!message.contains('`'), "{message:?}");
}

/// A key that is no slip of one in its own table, but a key of another, is said to belong
/// there: the tables inside its own first, then from the top level down.
#[test]
fn a_key_in_the_wrong_table_is_said_to_belong_in_the_right_one() {
    assert_errors(
        "\
max_sessions = 5
[limits]
workers = 2
[[route]]
name = \"a\"
idle = \"30s\"
grace = \"3s\"
[route.timeouts]
max_message = 5
frobnicate = 1
",
        &[
            (
                1,
                "max_sessions",
                "unknown key \"max_sessions\" here: it belongs in [[route]] or [limits]",
            ),
            (
                3,
                "limits.workers",
                "unknown key \"workers\" here: it belongs in [runtime]",
            ),
            (
                6,
                "route[0].idle",
                "unknown key \"idle\" here: it belongs in [route.timeouts] or [timeouts]",
            ),
            (
                7,
                "route[0].grace",
                "unknown key \"grace\" here: it belongs in [shutdown]",
            ),
            (
                9,
                "route[0].timeouts.max_message",
                "unknown key \"max_message\" here: it belongs in [[route]] or [limits]",
            ),
            (
                10,
                "route[0].timeouts.frobnicate",
                "unknown key \"frobnicate\"; expected one of: backend_connect, \
                 backend_handshake, ping_interval, pong_timeout, idle, max_lifetime, \
                 hibernate_after",
            ),
        ],
    );
    // A key that is a table where it belongs is named as that table. (Found by review: it
    // was "the top level".)
    assert_errors(
        "[[route]]\nname = \"a\"\n[route.limits]\nx = 1\n",
        &[(
            3,
            "route[0].limits",
            "unknown key \"limits\" here: it belongs in [limits]",
        )],
    );
    // The schema, mapped by asking serde, reaches the tables three deep.
    assert_errors(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nca = \"x\"\n",
        &[(
            3,
            "listener[0].ca",
            "unknown key \"ca\" here: it belongs in [route.backend_tls] or \
             [route.auth.forward_auth]",
        )],
    );
}

#[test]
fn key_paths_from_spans() {
    let text = "[[listener]]\nlisten = \"x\"\n\n[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\nbogus = 1\n[route.timeouts]\nbackend_connect = 3\n";
    let at = |needle: &str| {
        let i = text.find(needle).unwrap();
        key_path_at(text, i..i + needle.len())
    };
    assert_eq!(at("bogus"), "route[1].bogus");
    assert_eq!(at("listen ="), "listener[0].listen");
    assert_eq!(at("backend_connect"), "route[1].timeouts.backend_connect");
}

/// An array of tables inside an array entry is counted per entry: the second route's first
/// `[[route.backends]]` is `route[1].backends[0]`, whatever the first route had.
#[test]
fn a_nested_array_of_tables_is_counted_per_entry() {
    let text = "[[route]]\nname = \"a\"\n[[route.backends]]\nurl = \"ws://a\"\n\
                [[route.backends]]\nurl = \"ws://b\"\n[[route]]\nname = \"b\"\n\
                [[route.backends]]\nbogus = 1\n";
    let i = text.find("bogus").unwrap();
    assert_eq!(key_path_at(text, i..i + 5), "route[1].backends[0].bogus");
    // As a toml error reports it: a key given twice in that table.
    let errors = parse::<toml::Table>(
        "[[route]]\nname = \"a\"\n[[route.backends]]\nurl = \"ws://a\"\n\
         [[route]]\nname = \"b\"\n[[route.backends]]\nurl = \"ws://c\"\nurl = \"ws://d\"\n",
    )
    .errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "route[1].backends[0].url", "{errors:?}");
}

/// A header missing its closing bracket, the syntax error itself, names its table plainly
/// (it read `route][0]`).
#[test]
fn an_unclosed_header_names_its_table() {
    let errors = parse::<toml::Table>("[[route]\nname = \"a\"\n").errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "route[0]", "{errors:?}");
    assert_eq!(errors[0].line, Some(1));
}

/// A table defined twice is named as the header that defines it again, and said to be one
/// (it read `(top level): duplicate key`, `route[0].: duplicate key`, `route.[0]`).
#[test]
fn a_table_defined_twice_is_named() {
    const TWICE: &str = "defined twice: a table's keys go under one header, and a name is a key \
                         or a table, not both";
    assert_errors(
        "[timeouts]\nidle = \"1s\"\n[timeouts]\nidle = \"2s\"\n",
        &[(3, "timeouts", TWICE)],
    );
    assert_errors(
        "[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\n[route.timeouts]\nidle = \"1s\"\n\
         [route.timeouts]\nidle = \"2s\"\n",
        &[(7, "route[1].timeouts", TWICE)],
    );
    assert_errors(
        "[[route]]\nname = \"a\"\nbackends = [\"ws://a\"]\n[[route.backends]]\nx = 1\n",
        &[(4, "route[0].backends[0]", TWICE)],
    );
}

/// Every key of a `[[route]]` table, in the order `FileRoute` declares them.
const ROUTE_KEYS: &str = "name, host, path, backends, balance, preserve_host, max_message, \
     permessage_deflate, max_message_inflated, timeouts, backend_tls, origins, missing_origin, \
     subprotocols, require_subprotocol, auth, on_change, max_sessions, max_sessions_per_ip, \
     handshake_rate_per_ip, handshake_burst, client_messages_per_sec, client_messages_burst, \
     client_bytes_per_sec, client_bytes_burst, backend_messages_per_sec, \
     backend_messages_burst, backend_bytes_per_sec, backend_bytes_burst, rate_grace, http, \
     http_backends, request_timeout, response_header_timeout, request_body_timeout, http_idle_timeout, \
     max_request_body, max_concurrent_requests, hash_key, health, sticky, slow_start";

#[test]
fn every_unknown_key_is_reported_with_a_near_miss_or_the_keys_there_are() {
    let text = "\
[timeouts]
idel = \"5m\"
[[listener]]
listn = \"127.0.0.1:0\"
[listener.tls]
crt = \"a.pem\"
[[route]]
name = \"a\"
bakends = [\"ws://a\"]
frobnicate = 1
[route.timeouts]
ping_intervall = \"1s\"
";
    assert_errors(
        text,
        &[
            (
                2,
                "timeouts.idel",
                "unknown key \"idel\"; did you mean \"idle\"?",
            ),
            (
                4,
                "listener[0].listn",
                "unknown key \"listn\"; did you mean \"listen\"?",
            ),
            (
                6,
                "listener[0].tls.crt",
                "unknown key \"crt\"; did you mean \"cert\"?",
            ),
            (
                9,
                "route[0].bakends",
                "unknown key \"bakends\"; did you mean \"backends\"?",
            ),
            (
                10,
                "route[0].frobnicate",
                &format!("unknown key \"frobnicate\"; expected one of: {ROUTE_KEYS}"),
            ),
            (
                12,
                "route[0].timeouts.ping_intervall",
                "unknown key \"ping_intervall\"; did you mean \"ping_interval\"?",
            ),
        ],
    );
    let p = parse::<FileConfig>(text);
    let file = p.file.as_ref().expect("the rest deserialises");
    assert_eq!(
        file.route[0].get_ref().name.as_ref().unwrap().get_ref(),
        "a"
    );
    assert_eq!(
        p.taken_out,
        [
            "listener[0].listn",
            "listener[0].tls.crt",
            "route[0].bakends",
            "route[0].frobnicate",
            "route[0].timeouts.ping_intervall",
            "timeouts.idel",
        ]
    );
    // A misspelt key stands for the key it was meant to be, when that one is absent.
    assert!(p.already_reported("route[0].backends"));
    assert!(p.already_reported("route[0].bakends"));
    assert!(p.already_reported("listener[0].listen"));
    assert!(!p.already_reported("listener[0].listener"));
    assert!(!p.already_reported("route[0].name"));
    assert!(!p.already_reported("route[1].backends"));

    // A misspelt table or array of tables is an unknown key on its header's line.
    assert_errors(
        "[[route]]\nname = \"a\"\n[route.timeout]\nidle = \"1s\"\n[[route.tls]]\nx = 1\n",
        &[
            (
                3,
                "route[0].timeout",
                "unknown key \"timeout\"; did you mean \"timeouts\"?",
            ),
            (
                5,
                "route[0].tls",
                "unknown key \"tls\" here: it belongs in [listener.tls] or [admin.tls]",
            ),
        ],
    );

    // Present as well: its own errors are its own.
    let p = parse::<FileConfig>("[[route]]\nbackends = []\nbakends = []\n");
    assert!(!p.already_reported("route[0].backends"));
}

#[test]
fn wrong_types_in_toml_words() {
    assert_errors(
        "[timeouts]\nhandshake = 10\nidle = true\nping_interval = 1.5\npong_timeout = 1979-05-27\n\
         max_lifetime = [\"1h\"]\n[limits]\nmax_headers = \"lots\"\n",
        &[
            (
                2,
                "timeouts.handshake",
                "expected a string, found an integer (10)",
            ),
            (
                3,
                "timeouts.idle",
                "expected a string, found a boolean (true)",
            ),
            (
                4,
                "timeouts.ping_interval",
                "expected a string, found a decimal number (1.5)",
            ),
            (
                5,
                "timeouts.pong_timeout",
                "expected a string, found a date-time (1979-05-27)",
            ),
            (
                6,
                "timeouts.max_lifetime",
                "expected a string, found an array",
            ),
            (
                8,
                "limits.max_headers",
                "expected an integer, found a string (\"lots\")",
            ),
        ],
    );
    assert_errors(
        "[[listener]]\nproxy_protocol = \"yes\"\ntrusted_proxies = \"10.0.0.0/8\"\n",
        &[
            (
                2,
                "listener[0].proxy_protocol",
                "expected a boolean (true or false), found a string (\"yes\")",
            ),
            (
                3,
                "listener[0].trusted_proxies",
                "expected an array, found a string (\"10.0.0.0/8\")",
            ),
        ],
    );
}

#[test]
fn a_string_where_a_table_goes() {
    assert_errors(
        "[[listener]]\ntls = \"cert.pem\"\n[[route]]\ntimeouts = \"5s\"\n[route.auth]\njwt = 1\n",
        &[
            (
                2,
                "listener[0].tls",
                "expected a table ([listener.tls] or tls = { ... }), found a string (\"cert.pem\")",
            ),
            (
                4,
                "route[0].timeouts",
                "expected a table ([route.timeouts] or timeouts = { ... }), found a string (\"5s\")",
            ),
            (
                6,
                "route[0].auth.jwt",
                "expected a table ([route.auth.jwt] or jwt = { ... }), found an integer (1)",
            ),
        ],
    );
}

#[test]
fn single_tables_and_arrays_of_tables_mixed_up() {
    assert_errors(
        "[listener]\nlisten = \"127.0.0.1:0\"\n[route]\nname = \"a\"\n",
        &[
            (
                1,
                "listener",
                "expected an array of tables, found a single table: write [[listener]], not [listener]",
            ),
            (
                3,
                "route",
                "expected an array of tables, found a single table: write [[route]], not [route]",
            ),
        ],
    );
    assert_errors(
        "[[timeouts]]\nidle = \"5m\"\n[[route]]\nname = \"a\"\n[[route.timeouts]]\nidle = \"1m\"\n\
         [[route.backend_tls]]\nca = \"ca.pem\"\n",
        &[
            (
                1,
                "timeouts",
                "expected a single table, found an array of tables: write [timeouts], not [[timeouts]]",
            ),
            (
                5,
                "route[0].timeouts",
                "expected a single table, found an array of tables: write [route.timeouts], not [[route.timeouts]]",
            ),
            (
                7,
                "route[0].backend_tls",
                "expected a single table, found an array of tables: write [route.backend_tls], not [[route.backend_tls]]",
            ),
        ],
    );
    // Inline, and a table where an array of strings goes (no [[...]] advice there).
    assert_errors(
        "listener = { listen = \"x\" }\ntimeouts = []\n[[route]]\n[route.origins]\na = 1\n",
        &[
            (1, "listener", "expected an array of tables, found a table"),
            (
                2,
                "timeouts",
                "expected a table ([timeouts] or timeouts = { ... }), found an array",
            ),
            (
                4,
                "route[0].origins",
                "expected an array, found a table ([route.origins])",
            ),
        ],
    );
}

/// Every key of the example config, once misspelt and once given a value of another
/// type: exactly one error, on that key's line, naming it.
#[test]
fn each_key_of_the_example_config_misspelt_or_mistyped() {
    let example = include_str!("../../../config.example.toml");
    assert!(parse::<FileConfig>(example).errors.is_empty());
    let lines: Vec<&str> = example.lines().collect();
    let mut tried = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some((k, v)) = line.split_once(" = ") else {
            continue;
        };
        if line.starts_with('#') || v.starts_with('{') {
            continue;
        }
        let (k, v) = (k.trim(), v.trim());
        let other = if v.starts_with('"') { "7" } else { "\"x\"" };
        let misspelt = format!("{}{}", &k[..1], &k[2..]);
        for (key, value, message) in [
            (k, other, "expected ".to_string()),
            (
                &misspelt,
                v,
                format!("unknown key \"{misspelt}\"; did you mean \"{k}\"?"),
            ),
        ] {
            let mut changed = lines.clone();
            let replaced = format!("{key} = {value}");
            changed[i] = &replaced;
            let text = changed.join("\n");
            let got = errors(&text);
            assert_eq!(got.len(), 1, "line {}: {replaced}: {got:?}", i + 1);
            let (line, path, m) = &got[0];
            assert_eq!(*line, i + 1, "{replaced}: {got:?}");
            assert!(
                path == key || path.ends_with(&format!(".{key}")),
                "{replaced}: {got:?}"
            );
            assert!(m.starts_with(&message), "{replaced}: {got:?}");
            tried += 1;
        }
    }
    assert!(tried > 40, "{tried}");
}

#[test]
fn out_of_range_and_nested_arrays() {
    assert_errors(
        "listener = [[1]]\n[limits]\nmax_headers = 99999999999999999999\n",
        &[
            (1, "listener[0]", "expected a table, found an array"),
            (
                3,
                "limits.max_headers",
                "99999999999999999999 is out of range",
            ),
        ],
    );
}

#[test]
fn bad_array_entries_are_named_by_index_and_the_others_kept() {
    let text = "\
[[route]]
name = \"a\"
backends = [\"ws://a\", 5, { url = \"ws://b\", insecure = true }, \"ws://c\"]
[[route]]
name = \"b\"
[[route.backends]]
url = \"ws://d\"
[[route.backends]]
url = 5
";
    let forms = "expected a URL or a table { url = ..., insecure_skip_verify = ..., weight = ... }";
    // A table is read as the table it is: the key inside it that is wrong is named.
    assert_errors(
        text,
        &[
            (
                3,
                "route[0].backends[1]",
                &format!("{forms}, found an integer (5)"),
            ),
            (
                3,
                "route[0].backends[2].insecure",
                "unknown key \"insecure\"; expected one of: url, insecure_skip_verify, weight",
            ),
            (
                9,
                "route[1].backends[1].url",
                "expected a string, found an integer (5)",
            ),
        ],
    );
    let p = parse::<FileConfig>(text);
    let file = p.file.as_ref().unwrap();
    // Indices stay as written: validation names the others by them.
    let urls: Vec<String> = file.route[0]
        .get_ref()
        .backends
        .as_ref()
        .unwrap()
        .get_ref()
        .iter()
        .map(|b| match b.get_ref() {
            crate::config::file::FileBackend::Url(u) => u.clone(),
            crate::config::file::FileBackend::Table(t) => t.url.clone().unwrap_or_default(),
        })
        .collect();
    assert_eq!(urls[0], "ws://a");
    assert_eq!(urls[3], "ws://c");
    assert_eq!(urls.len(), 4);
    assert!(p.already_reported("route[0].backends[1]"));
    assert!(!p.already_reported("route[0].backends[3]"));
}

#[test]
fn a_string_or_a_list() {
    let text = "[[route]]\n[route.auth.jwt]\nissuer = 5\naudience = [\"a\", 5]\n";
    assert_errors(
        text,
        &[
            (
                3,
                "route[0].auth.jwt.issuer",
                "expected a string or a list of strings, found an integer (5)",
            ),
            (
                4,
                "route[0].auth.jwt.audience[1]",
                "expected a string, found an integer (5)",
            ),
        ],
    );
}

#[test]
fn a_syntax_error_is_the_only_error() {
    let p = parse::<FileConfig>("[[listener]]\nlisten = \"127.0.0.1:8080\nbogus = 1\n");
    assert!(p.file.is_none());
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert_eq!(p.errors[0].key, "listener[0].listen");
    assert_eq!(p.errors[0].line, Some(2));
}

#[test]
fn other_schemas_get_the_same_treatment() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        count: Option<u32>,
        pair: Option<Pair>,
        either: Option<Vec<Either>>,
        empty: Option<Empty>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Pair {
        a: String,
        b: bool,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Either {
        N(i64),
        B(bool),
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}

    let p = parse::<Doc>(
        "count = -1\npair = { a = \"x\" }\neither = [1, \"x\", true]\n[empty]\nx = 1\n",
    );
    let got: Vec<(Option<usize>, &str, &str)> = p
        .errors
        .iter()
        .map(|e| (e.line, e.key.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                Some(1),
                "count",
                "expected a non-negative integer, found -1"
            ),
            (Some(2), "pair", "missing key \"b\""),
            (
                Some(3),
                "either[1]",
                "expected one of the forms this key takes, found a string (\"x\")"
            ),
            (
                Some(5),
                "empty.x",
                "unknown key \"x\": none are allowed here"
            ),
        ]
    );
    for e in &p.errors {
        assert_config_words(&e.message);
    }
    assert!(p.file.is_some());
}

#[test]
fn near_misses() {
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let keys = names(&[
        "backends",
        "balance",
        "name",
        "handshake_timeout",
        "ca",
        "url",
    ]);
    assert_eq!(did_you_mean("bakends", &keys), Some("backends"));
    assert_eq!(did_you_mean("bcakends", &keys), Some("backends"));
    assert_eq!(did_you_mean("Backends", &keys), Some("backends"));
    assert_eq!(
        did_you_mean("hanshake_timout", &keys),
        Some("handshake_timeout")
    );
    assert_eq!(did_you_mean("nmae", &keys), Some("name"));
    assert_eq!(did_you_mean("cx", &keys), Some("ca"));
    assert_eq!(did_you_mean("xy", &keys), None);
    assert_eq!(did_you_mean("frobnicate", &keys), None);
    assert_eq!(edit_distance("ab", "ba"), 1);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}

#[test]
fn serde_words_are_translated() {
    for (serde, ours) in [
        (
            "invalid length 2, expected a tuple of size 3",
            "invalid length 2, expected a tuple of size 3",
        ),
        (
            "unknown field `x`, there are no fields",
            "unknown key \"x\", there are no keys",
        ),
        (
            "invalid type: map, expected struct FileTls",
            "invalid type: table, expected table",
        ),
        (
            "data did not match any variant of untagged enum FileBackend",
            "data did not match any form of value",
        ),
        ("expected i64 or u64", "expected integer or integer"),
    ] {
        assert_eq!(scrub(serde), ours);
        assert_config_words(&scrub(serde));
    }
}

#[test]
fn a_file_full_of_mistakes_is_reported_up_to_a_bound() {
    let text: String = (0..150).map(|i| format!("bogus{i} = {i}\n")).collect();
    let p = parse::<FileConfig>(&text);
    assert_eq!(p.errors.len(), MAX_ERRORS + 1);
    assert!(p.file.is_none());
}
