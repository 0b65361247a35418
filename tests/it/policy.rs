//! Edge policy through the gateway: Origin, subprotocols, cookies, identity headers and
//! forwarding headers, each allowed and refused, with a backend that records what it got.
//! (JWT, forward-auth and PROXY protocol have their own files.)

use crate::support::*;

/// A gateway with one route at `/` to `backend`, plus `extra` route keys and tables.
async fn gateway(backend: &EchoBackend, extra: &str) -> Gateway {
    Gateway::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n{extra}\n",
        backend.url()
    ))
    .await
}

/// Sends an upgrade with `headers` (lines ending in \r\n); returns the response.
async fn upgrade(gw: &Gateway, headers: &str) -> RawResponse {
    raw_exchange(gw.addr, upgrade_request("/", headers).as_bytes())
        .await
        .1
}

#[tokio::test]
async fn origin_allow_list() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &backend,
        r#"origins = ["https://app.example.com", "https://*.example.org"]"#,
    )
    .await;
    for ok in [
        "https://app.example.com",
        "https://app.example.com:443",
        "https://eu.cdn.example.org",
    ] {
        let r = upgrade(&gw, &format!("Origin: {ok}\r\n")).await;
        assert_eq!(r.status, 101, "{ok}: {}", r.head);
    }
    // Non-browser clients send no Origin: allowed by default.
    assert_eq!(upgrade(&gw, "").await.status, 101);
    let allowed = backend.request_count();

    for bad in [
        "https://evil.example",
        "http://app.example.com",
        "https://example.org",
        "https://app.example.com.evil.test",
        "null",
    ] {
        let r = upgrade(&gw, &format!("Origin: {bad}\r\n")).await;
        assert_eq!(r.status, 403, "{bad}: {}", r.head);
        assert!(r.body.contains("is not allowed"), "{}", r.body);
    }
    assert_eq!(
        backend.request_count(),
        allowed,
        "a refused handshake reached the backend"
    );
    let counts = gw.handle().refusals();
    assert_eq!(counts.get(&("app".to_string(), "origin_refused")), Some(&5));
}

/// Two Origin headers are refused whatever their order: the allow-list checked the first
/// and forwarded both, so a backend reading the last one saw an origin the list refuses.
#[tokio::test]
async fn two_origin_headers_are_refused() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, r#"origins = ["https://app.example.com"]"#).await;
    for (first, second) in [
        ("https://app.example.com", "https://evil.example"),
        ("https://evil.example", "https://app.example.com"),
        ("https://app.example.com", "https://app.example.com"),
    ] {
        let r = upgrade(&gw, &format!("Origin: {first}\r\nOrigin: {second}\r\n")).await;
        assert_eq!(r.status, 403, "{first}, {second}: {}", r.head);
        assert!(r.body.contains("more than one Origin"), "{}", r.body);
    }
    assert_eq!(backend.request_count(), 0);
    let counts = gw.handle().refusals();
    assert_eq!(counts.get(&("app".to_string(), "origin_refused")), Some(&3));
}

#[tokio::test]
async fn same_origin_and_missing_origin_refused() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &backend,
        "origins = [\"same-origin\"]\nmissing_origin = \"refuse\"",
    )
    .await;
    // upgrade_request sends `Host: localhost`.
    assert_eq!(
        upgrade(&gw, "Origin: http://localhost\r\n").await.status,
        101
    );
    assert_eq!(
        upgrade(&gw, "Origin: http://localhost:8080\r\n")
            .await
            .status,
        403
    );
    assert_eq!(upgrade(&gw, "Origin: http://other\r\n").await.status, 403);
    // The scheme is the origin's too: this is a plain listener, so an https page is another
    // origin (RFC 6454 §5).
    assert_eq!(
        upgrade(&gw, "Origin: https://localhost\r\n").await.status,
        403
    );
    let r = upgrade(&gw, "").await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("no Origin header"), "{}", r.body);
    assert_eq!(backend.request_count(), 1);
}

#[tokio::test]
async fn subprotocol_allow_list_filters_the_offer() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &backend,
        "subprotocols = [\"superchat\"]\nrequire_subprotocol = true",
    )
    .await;
    let (_ws, resp) = connect_offering(&gw.url("/"), "chat, superchat, x-debug").await;
    // The backend supports `chat` and would have picked it; it was never offered.
    assert_eq!(
        backend.last_request().header("sec-websocket-protocol"),
        Some("superchat")
    );
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "superchat"
    );

    let r = upgrade(&gw, "Sec-WebSocket-Protocol: chat\r\n").await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("requires one of: superchat"), "{}", r.body);
    let r = upgrade(&gw, "").await;
    assert_eq!(r.status, 403);
    assert_eq!(backend.request_count(), 1);
}

#[tokio::test]
async fn required_and_stripped_cookies() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &backend,
        "[route.auth]\nrequire_cookies = [\"session\"]\nstrip_cookies = [\"session\", \"csrf\"]",
    )
    .await;
    let r = upgrade(&gw, "Cookie: theme=dark\r\n").await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("\"session\""), "{}", r.body);
    assert_eq!(backend.request_count(), 0);

    let r = upgrade(
        &gw,
        "Cookie: theme=dark; session=s3cr3t\r\nCookie: csrf=1; lang=en\r\n",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(seen.header("cookie"), Some("theme=dark; lang=en"));

    // Only stripped cookies: no Cookie header at all.
    upgrade(&gw, "Cookie: session=s3cr3t\r\n").await;
    assert_eq!(backend.last_request().header("cookie"), None);
}

#[tokio::test]
async fn identity_headers_replace_forged_ones() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &backend,
        "[route.auth]\nstrip_headers = [\"Authorization\", \"X-Debug\"]\n\
         set_headers = { \"X-Client-IP\" = \"{client.ip}\", \"X-Cert\" = \"{tls.subject}\" }",
    )
    .await;
    let r = upgrade(
        &gw,
        "Authorization: Basic Zm9vOmJhcg==\r\nX-Debug: 1\r\nX-Client-IP: 6.6.6.6\r\n\
         X-Cert: CN=forged\r\nX-Kept: yes\r\nX_Debug: 1\r\n",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-debug"), None);
    // The underscore spelling, which CGI-style backends read as the same header, goes too.
    assert_eq!(seen.header("x_debug"), None);
    assert_eq!(seen.header("x-client-ip"), Some("127.0.0.1"));
    // No client certificate on plain TCP: the header is absent, and the forged one gone.
    assert_eq!(seen.header("x-cert"), None);
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

/// An `X-Forwarded-*` header the route sets is the proxy's word and reaches the backend from
/// any client; the client's own copy of it, and its other `X-Forwarded-*` headers, do not.
/// (The route's header was dropped with the client's ones unless the peer was a trusted
/// proxy, so `X-Forwarded-Prefix = "/chat"`, the docs' own example, never arrived.)
#[tokio::test]
async fn an_x_forwarded_header_the_route_sets_reaches_the_backend_from_any_client() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &backend,
        "[route.auth]\nset_headers = { \"X-Forwarded-Prefix\" = \"/chat\" }",
    )
    .await;
    let r = upgrade(
        &gw,
        "X-Forwarded-Prefix: /forged\r\nX_Forwarded_Prefix: /forged\r\nX-Forwarded-Uri: /x\r\n",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/chat"));
    assert_eq!(seen.header("x_forwarded_prefix"), None);
    assert_eq!(seen.header("x-forwarded-uri"), None);
}

/// A header name the config spells with underscores removes the client's dashed spelling
/// too: a backend that drops underscore headers (Werkzeug, Gunicorn 22) got the client's
/// `X-User` alone, and read it as the proxy's word.
#[tokio::test]
async fn a_header_the_config_spells_with_underscores_removes_the_dashed_spelling() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &backend,
        "[route.auth]\nstrip_headers = [\"X_Debug\"]\n\
         set_headers = { \"X_Client_IP\" = \"{client.ip}\" }",
    )
    .await;
    let r = upgrade(
        &gw,
        "X-Debug: 1\r\nX-Client-IP: 6.6.6.6\r\nX_Client-IP: 6.6.6.7\r\nX-Kept: yes\r\n",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-client-ip"), None);
    assert_eq!(seen.header("x_client-ip"), None);
    assert_eq!(seen.header("x_client_ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn connection_options_drop_the_clients_headers_not_the_proxys() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &backend,
        "[route.auth]\nset_headers = { \"X-Client-IP\" = \"{client.ip}\" }",
    )
    .await;
    // RFC 9110 §7.6.1: the options name fields as received; the proxy's X-Client-IP is not
    // the client's to remove (its absence could read as "no restriction" to a backend).
    let r = upgrade(
        &gw,
        "Connection: X-Client-IP, X-Dropped, Cookie\r\nX-Dropped: 1\r\nCookie: a=1\r\n",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(seen.header("x-client-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-dropped"), None);
    assert_eq!(seen.header("cookie"), None);
}

#[tokio::test]
async fn trusted_proxies_extend_the_forwarding_chain() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n\
         [[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n\
         [route.auth]\nset_headers = {{ \"X-Client-IP\" = \"{{client.ip}}\" }}\n",
        backend.url()
    ))
    .await;
    let r = upgrade(
        &gw,
        "X-Forwarded-For: 6.6.6.6, 203.0.113.9, 10.1.1.1\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: chat.example.com\r\nForwarded: for=203.0.113.9;proto=https\r\n\
         X-Forwarded-Prefix: /chat\r\nX_Real_IP: 6.6.6.6\r\n",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    // A trusted proxy's word about the request passes; no look-alike of a header the
    // proxy sets does (CGI-style backends read `X_Real_IP` as `X-Real-IP`).
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/chat"));
    assert_eq!(seen.header("x_real_ip"), None);
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.9, 10.1.1.1, 127.0.0.1")
    );
    // The first untrusted hop from the right is the client; 6.6.6.6 is only its claim.
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.9"));
    assert_eq!(seen.header("x-client-ip"), Some("203.0.113.9"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("chat.example.com"));
    assert_eq!(
        seen.header("forwarded"),
        Some("for=203.0.113.9;proto=https, for=127.0.0.1;host=\"localhost\";proto=http")
    );
}

#[tokio::test]
async fn untrusted_forwarding_headers_are_replaced() {
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
         [[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n",
        backend.url()
    ))
    .await;
    upgrade(
        &gw,
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
         X-Forwarded-Uri: /admin\r\nX-Forwarded-Method: POST\r\nX-Forwarded-Prefix: /x\r\n\
         X_Forwarded_For: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\n",
    )
    .await;
    let seen = backend.last_request();
    // What a proxy would say about the request, said by a client of itself: dropped.
    for name in [
        "x-forwarded-uri",
        "x-forwarded-method",
        "x-forwarded-prefix",
        "x_forwarded_for",
        "x-real_ip",
    ] {
        assert_eq!(seen.header(name), None, "{name}");
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("forwarded"),
        Some("for=127.0.0.1;host=\"localhost\";proto=http")
    );
}

#[test]
fn policy_config_errors_name_key_and_line() {
    let toml = r#"[[listener]]
listen = "127.0.0.1:0"
trusted_proxies = ["10.0.0.0/40"]

[[route]]
name = "a"
path = "/"
backends = ["ws://127.0.0.1:1"]
origins = ["https://ok.test", "ftp//bad"]
missing_origin = "maybe"
subprotocols = ["chat", "bad proto"]

[route.auth]
require_cookies = ["ok", "bad;name"]
strip_headers = ["Host"]
set_headers = { "X-User" = "{sub}", "X-Broken" = "{oops" }
"#;
    let errors = wsgate::config::from_toml_str(toml).unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let expect = [
        (3, "listener[0].trusted_proxies[0]", "prefix length"),
        (9, "route[0].origins[1]", "is not an origin"),
        (10, "route[0].missing_origin", "\"allow\""),
        (11, "route[0].subprotocols[1]", "not a subprotocol name"),
        (14, "route[0].auth.require_cookies[1]", "not a cookie name"),
        (15, "route[0].auth.strip_headers[0]", "built by the proxy"),
        (
            16,
            "route[0].auth.set_headers.X-User",
            "no [route.auth.jwt]",
        ),
        (16, "route[0].auth.set_headers.X-Broken", "unclosed"),
    ];
    assert_eq!(errors.len(), expect.len(), "{shown:#?}");
    for (line, key, part) in expect {
        assert!(
            errors
                .iter()
                .any(|e| e.line == Some(line) && e.key == key && e.message.contains(part)),
            "no error at line {line} for {key} containing {part:?}: {shown:#?}"
        );
    }
}

#[tokio::test]
async fn missing_origin_refused_alone_allows_any_origin() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, "missing_origin = \"refuse\"").await;
    let r = upgrade(&gw, "Origin: https://anything.example\r\n").await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(upgrade(&gw, "").await.status, 403);
}

#[tokio::test]
async fn a_refusal_never_echoes_a_token_offered_as_a_subprotocol() {
    let backend = EchoBackend::spawn().await;
    let gw = gateway(
        &backend,
        "subprotocols = [\"chat\"]\nrequire_subprotocol = true",
    )
    .await;
    let r = upgrade(
        &gw,
        "Sec-WebSocket-Protocol: bearer.eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln\r\n",
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("eyJ"), "{}", r.body);
}
