//! The admin listener: metrics (scraped and parsed whole, before and after), health and
//! readiness through a drain, the session API over a thousand sessions, closing a session and
//! draining a backend from it, the token and cross-site rules, and the event stream.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::prom::{self, Exposition};
use crate::support::*;

/// The gateway from `toml` with an `[admin]` listener on a free loopback port, and its
/// address; with `token`, read from a file as `token_file`.
async fn spawn_admin(toml: &str, token: Option<&str>) -> (Gateway, SocketAddr) {
    let dir = TempDir::new("admin");
    let token = match token {
        Some(t) => {
            let file = dir.write("token", format!("{t}\n"));
            format!("token_file = {:?}\n", file.display().to_string())
        }
        None => String::new(),
    };
    let gw = Gateway::spawn(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{token}\n{toml}"
    ))
    .await;
    let admin = gw.handle().admin_addr().expect("admin listener bound");
    (gw, admin)
}

async fn get(admin: SocketAddr, path: &str) -> RawResponse {
    admin_request(admin, "GET", path, "", "").await
}

async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let resp = get(admin, path).await;
    assert_eq!(resp.status, 200, "{path}: {resp:?}");
    serde_json::from_str(&resp.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", resp.body))
}

async fn post_json(admin: SocketAddr, path: &str, body: &Value, headers: &str) -> (u16, Value) {
    let headers = format!("Content-Type: application/json\r\n{headers}");
    let resp = admin_request(admin, "POST", path, &headers, &body.to_string()).await;
    let v = serde_json::from_str(&resp.body).unwrap_or(Value::Null);
    (resp.status, v)
}

/// Scrapes `/metrics` and parses the whole exposition.
async fn scrape(admin: SocketAddr) -> Exposition {
    let resp = get(admin, "/metrics").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    prom::parse(&resp.body, false).unwrap_or_else(|e| panic!("{e}\n{}", resp.body))
}

#[tokio::test]
async fn metrics_count_sessions_messages_closes_and_refusals() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), None).await;
    let before = scrape(admin).await;
    let backend = backend_names(admin, "chat").await.remove(0);
    let opened = |e: &Exposition| e.value("wsgate_sessions_opened_total", &[("route", "chat")]);
    assert_eq!(opened(&before), 0.0);

    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = connect(&gw.url("/chat")).await;
        for m in ["one", "two"] {
            ws.send(Message::text(m)).await.unwrap();
            assert_eq!(next_data(&mut ws).await, Message::text(m));
        }
        clients.push(ws);
    }
    let mut first = clients.remove(0);
    send_close(&mut first, CloseCode::Normal, "done").await;
    next_close(&mut first).await;
    drop(first);
    gw.handle().sessions().wait_for_count(|n| *n == 2).await;
    // Refusals: no route (404) and a plain GET on the route (426).
    assert_eq!(get_via(gw.addr, "/nowhere").await, 404);
    assert_eq!(get_via(gw.addr, "/chat").await, 426);

    let after = scrape(admin).await;
    let chat = [("route", "chat")];
    assert_eq!(opened(&after), 3.0);
    assert_eq!(
        after.value(
            "wsgate_sessions_open",
            &[("route", "chat"), ("backend", &backend)]
        ),
        2.0
    );
    assert_eq!(
        after.value(
            "wsgate_sessions_ended_total",
            &[
                ("route", "chat"),
                ("outcome", "closed"),
                ("closed_by", "client")
            ]
        ),
        1.0
    );
    for from in ["client", "backend"] {
        assert_eq!(
            after.value(
                "wsgate_close_frames_total",
                &[("route", "chat"), ("from", from), ("code", "1000")]
            ),
            1.0,
            "{from}"
        );
    }
    // Live sessions count too: 2 messages each way on each of the 3 sessions.
    for d in ["client_to_backend", "backend_to_client"] {
        let labels = [("route", "chat"), ("direction", d)];
        assert_eq!(
            after.value("wsgate_session_messages_total", &labels),
            6.0,
            "{d}"
        );
        assert!(
            after.value("wsgate_session_bytes_total", &labels) >= 6.0 * 3.0,
            "{d}"
        );
    }
    assert_eq!(
        after.value("wsgate_session_duration_seconds_count", &chat),
        1.0
    );
    let b = [("route", "chat"), ("backend", backend.as_str())];
    assert_eq!(after.value("wsgate_backend_connect_seconds_count", &b), 3.0);
    assert_eq!(
        after.value("wsgate_backend_handshake_seconds_count", &b),
        3.0
    );
    assert_eq!(
        after.value(
            "wsgate_handshakes_refused_total",
            &[("route", "-"), ("outcome", "no_route"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        after.value(
            "wsgate_handshakes_refused_total",
            &[
                ("route", "chat"),
                ("outcome", "not_an_upgrade"),
                ("status", "426")
            ]
        ),
        1.0
    );
    assert_eq!(
        after.value("wsgate_connections_accepted_total", &[]),
        after.sum("wsgate_connections_accepted_total", &[])
    );
    assert!(after.sum("wsgate_connections_accepted_total", &[]) >= 5.0);
    assert!(after.value("process_open_fds", &[]) > 0.0);
    assert!(after.value("process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(
        after.value(
            "wsgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(after.value("wsgate_draining", &[]), 0.0);
    // Bounded labels: nothing that names a client, a path or a user.
    let allowed = [
        "route",
        "backend",
        "outcome",
        "closed_by",
        "from",
        "code",
        "direction",
        "status",
        "listener",
        "kind",
        "side",
        "le",
        "version",
        "result",
        "cause",
    ];
    for s in &after.samples {
        for k in s.labels.keys() {
            assert!(allowed.contains(&k.as_str()), "label {k} on {}", s.name);
        }
    }

    // The counters never go back: the live sessions' traffic moves into the totals.
    let live_bytes = after.sum("wsgate_session_bytes_total", &chat);
    drop(clients);
    gw.handle().sessions().wait_for_count(|n| *n == 0).await;
    let end = scrape(admin).await;
    assert!(end.sum("wsgate_session_bytes_total", &chat) >= live_bytes);
    assert_eq!(end.sum("wsgate_session_messages_total", &chat), 12.0);
    assert_eq!(
        end.value(
            "wsgate_sessions_ended_total",
            &[
                ("route", "chat"),
                ("outcome", "client_gone"),
                ("closed_by", "client")
            ]
        ),
        2.0
    );
}

/// A plain `GET` through the proxy port; its status.
async fn get_via(proxy: SocketAddr, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    raw_exchange(proxy, req.as_bytes()).await.1.status
}

#[tokio::test]
async fn openmetrics_when_the_scraper_asks_for_it() {
    let echo = EchoBackend::spawn().await;
    let (_gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), None).await;
    let resp = admin_request(
        admin,
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
        "",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(resp.body.ends_with("# EOF\n"), "{}", resp.body);
    let exp = prom::parse(&resp.body, true).unwrap_or_else(|e| panic!("{e}\n{}", resp.body));
    assert_eq!(
        exp.types.get("wsgate_sessions_opened").map(String::as_str),
        Some("counter")
    );
}

#[tokio::test]
async fn readyz_turns_503_when_the_drain_starts_and_healthz_stays_200() {
    let echo = EchoBackend::spawn().await;
    let (mut gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), None).await;
    assert_eq!(get(admin, "/healthz").await.status, 200);
    let ready = get(admin, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    // A client that does not answer the close frame keeps the drain going.
    let (mut ws, _) = connect(&gw.url("/chat")).await;
    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    let ready = get(admin, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining\n"));
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(scrape(admin).await.value("wsgate_draining", &[]), 1.0);
    let close = next_close(&mut ws).await;
    assert_eq!(u16::from(close.code), 1001);
    drop(ws);
    tokio::time::timeout(STEP, handle.wait()).await.unwrap();
    // The admin listener stops with the gateway.
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

/// A session the shutdown has sent its close frames to is `closing` in the session API, as
/// one closed through the API is (the shutdown asks every session at once, not each one's
/// own link, and the API looked at the link only).
#[tokio::test]
async fn sessions_the_shutdown_is_closing_are_shown_closing() {
    let echo = EchoBackend::spawn().await;
    let (mut gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), None).await;
    // A raw client that never answers the close frame: its session stays, closing.
    let (mut client, resp) = raw_exchange(gw.addr, upgrade_request("/chat", "").as_bytes()).await;
    assert_eq!(resp.status, 101);
    let listed = get_json(admin, "/api/sessions").await;
    assert_eq!(listed["sessions"][0]["closing"], false, "{listed}");
    let handle = gw.handle.take().unwrap();
    handle.shutdown();
    // The close frame (1001) has come: the close was asked for.
    let mut frame = resp.rest.clone();
    while frame.len() < 4 {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(STEP, client.read(&mut chunk))
            .await
            .expect("no close frame")
            .unwrap();
        assert!(n > 0, "closed without a close frame");
        frame.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(
        (frame[0], &frame[2..4]),
        (0x88, &[0x03, 0xe9][..]),
        "{frame:?}"
    );
    let listed = get_json(admin, "/api/sessions").await;
    assert_eq!(listed["sessions"][0]["closing"], true, "{listed}");
    drop(client);
    tokio::time::timeout(STEP, handle.wait()).await.unwrap();
}

#[tokio::test]
async fn the_session_api_lists_a_thousand_sessions_and_closes_one() {
    const N: usize = 1000;
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), None).await;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(connect(&gw.url("/chat")).await.0);
    }
    // Page through every session.
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = get_json(admin, &format!("/api/sessions?limit=300&after={after}")).await;
        assert_eq!(page["total"], N);
        let sessions = page["sessions"].as_array().unwrap();
        ids.extend(sessions.iter().map(|s| s["id"].as_u64().unwrap()));
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let mut live: Vec<u64> = gw.handle().sessions().list().iter().map(|s| s.id).collect();
    live.sort_unstable();
    assert_eq!(ids, live, "every live session once, in id order");
    assert_eq!(ids.len(), N);

    // One session in detail, by its client address.
    let mut ws = clients.swap_remove(N / 2);
    let client = ws.get_ref().local_addr().unwrap().to_string();
    ws.send(Message::text("hello")).await.unwrap();
    next_data(&mut ws).await;
    let found = get_json(admin, &format!("/api/sessions?client={client}")).await;
    assert_eq!(found["total"], 1, "{found}");
    let s = &found["sessions"][0];
    assert_eq!(s["route"], "chat");
    assert_eq!(s["transport"], "h1");
    assert_eq!(s["path"], "/chat");
    assert_eq!(s["messages_client_to_backend"], 1);
    assert_eq!(s["messages_backend_to_client"], 1);
    assert_eq!(s["bytes_client_to_backend"], 2 + 4 + 5);
    assert!(
        s["last_active_seconds_ago"].as_f64().unwrap() < s["age_seconds"].as_f64().unwrap() + 1.0
    );
    let id = s["id"].as_u64().unwrap();
    // The same by the address in another spelling, and by the IP alone.
    let ip_only = get_json(admin, "/api/sessions?client=127.0.0.1&limit=1").await;
    assert_eq!(ip_only["total"], N, "{ip_only}");
    // What the listing cannot read is a 400, never every session: a misspelt filter listed
    // them all, so a script that closes what it lists closed them all.
    for (query, why) in [
        ("rout=chat", "unknown parameter \"rout\""),
        ("Route=chat", "unknown parameter \"Route\""),
        ("foo", "unknown parameter \"foo\""),
        ("route=chat&route=other", "route given more than once"),
        ("limit=0", "limit must be 1 to 1000"),
        ("client=not-an-ip", "client must be an IP address"),
        ("after=x", "after must be a whole number"),
    ] {
        let resp = get(admin, &format!("/api/sessions?{query}")).await;
        assert_eq!(resp.status, 400, "{query}: {resp:?}");
        let error: Value = serde_json::from_str(&resp.body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(why),
            "{query}: {error}"
        );
    }

    // Close it: a real close frame, with the code and reason asked for, to both sides.
    let (status, body) = post_json(
        admin,
        &format!("/api/sessions/{id}/close"),
        &serde_json::json!({"code": 4000, "reason": "bye from the operator"}),
        "",
    )
    .await;
    assert_eq!(
        (status, &body),
        (202, &serde_json::json!({"id": id, "closing": true}))
    );
    let close = next_close(&mut ws).await;
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4000, "bye from the operator")
    );
    let seen = echo.wait_closes(1).await;
    assert_eq!(seen[0], Some((4000, "bye from the operator".to_string())));
    gw.handle().sessions().wait_for_count(|n| *n == N - 1).await;
    assert_eq!(get(admin, &format!("/api/sessions/{id}")).await.status, 404);
    let (status, _) = post_json(
        admin,
        &format!("/api/sessions/{id}/close"),
        &serde_json::json!({}),
        "",
    )
    .await;
    assert_eq!(status, 404);
    // An invalid code is refused before anything is sent.
    let other = gw.handle().sessions().list()[0].id;
    let (status, body) = post_json(
        admin,
        &format!("/api/sessions/{other}/close"),
        &serde_json::json!({"code": 1006}),
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let ended = scrape(admin).await.value(
        "wsgate_sessions_ended_total",
        &[
            ("route", "chat"),
            ("outcome", "admin_closed"),
            ("closed_by", "proxy"),
        ],
    );
    assert_eq!(ended, 1.0);
}

/// Behind a trusted proxy a session's client is the forwarded address, whose port is not
/// known (0); a trusted peer that forwards no address is the client itself, port and all.
#[tokio::test]
async fn behind_a_trusted_proxy_the_client_is_the_forwarded_address() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(
        &format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n{}",
            route("chat", "/chat", &[echo.url()])
        ),
        None,
    )
    .await;
    let (forwarded, _) = connect_with(&gw.url("/chat"), |r| {
        r.headers_mut()
            .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    })
    .await
    .unwrap();
    // A forwarded address that is the peer's own is still forwarded: its port is not known.
    let (echoed, _) = connect_with(&gw.url("/chat"), |r| {
        r.headers_mut()
            .insert("x-forwarded-for", "127.0.0.1".parse().unwrap());
    })
    .await
    .unwrap();
    let (direct, _) = connect(&gw.url("/chat")).await;
    let own = direct.get_ref().local_addr().unwrap().to_string();
    let mut clients: Vec<String> = get_json(admin, "/api/sessions").await["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["client"].as_str().unwrap().to_string())
        .collect();
    clients.sort();
    let mut want = vec!["203.0.113.9:0".to_string(), "127.0.0.1:0".to_string(), own];
    want.sort();
    assert_eq!(clients, want);
    drop((forwarded, echoed, direct));
}

#[tokio::test]
async fn draining_a_backend_closes_its_sessions_and_sends_new_ones_elsewhere() {
    let (a, b) = (EchoBackend::spawn().await, EchoBackend::spawn().await);
    let toml = format!(
        "{}balance = \"round_robin\"\n",
        route("chat", "/chat", &[a.url(), b.url()])
    );
    let (gw, admin) = spawn_admin(&toml, None).await;
    let names = backend_names(admin, "chat").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&gw.url("/chat")).await.0);
    }
    assert_eq!((a.request_count(), b.request_count()), (2, 2));
    // A misspelt field is named, and nothing is drained (it used to drain and close none).
    let (status, body) = post_json(
        admin,
        "/api/backends/drain",
        &serde_json::json!({"route": "chat", "backend": names[0], "clse": true}),
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        "unknown field \"clse\": this endpoint takes route, backend, close"
    );
    let (status, body) = post_json(
        admin,
        "/api/backends/drain",
        &serde_json::json!(["chat"]),
        "",
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (400, &serde_json::json!("the body must be a JSON object"))
    );
    let (_, routes) = admin_json(admin, "GET", "/api/routes", &serde_json::Value::Null).await;
    assert_eq!(
        routes["routes"][0]["backends"][0]["draining"], false,
        "{routes}"
    );
    let (status, body) = post_json(
        admin,
        "/api/backends/drain",
        &serde_json::json!({"route": "chat", "backend": names[0], "close": true}),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_closed"], 2);
    // The two sessions on the drained backend get 1001, the others nothing.
    let mut closed = 0;
    for ws in &mut clients {
        let next = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
        if let Ok(Some(Ok(Message::Close(Some(f))))) = next {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1001, "backend draining")
            );
            closed += 1;
        }
    }
    assert_eq!(closed, 2);
    // New sessions all go to the other backend.
    for _ in 0..3 {
        connect(&gw.url("/chat")).await;
    }
    assert_eq!((a.request_count(), b.request_count()), (2, 5));
    let routes = get_json(admin, "/api/routes").await;
    assert_eq!(routes["routes"][0]["backends"][0]["draining"], true);
    let exp = scrape(admin).await;
    assert_eq!(
        exp.value(
            "wsgate_backend_draining",
            &[("route", "chat"), ("backend", &names[0])]
        ),
        1.0
    );
    // Every backend drained: a clear 503.
    post_json(
        admin,
        "/api/backends/drain",
        &serde_json::json!({"route": "chat", "backend": names[1]}),
        "",
    )
    .await;
    let refused = connect_with(&gw.url("/chat"), |_| {}).await.unwrap_err();
    assert!(refused.to_string().contains("503"), "{refused}");
    // Undrain takes no `close`: an operator who meant a drain is told, not answered 200.
    let (status, body) = post_json(
        admin,
        "/api/backends/undrain",
        &serde_json::json!({"route": "chat", "backend": names[0], "close": true}),
        "",
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (
            400,
            &serde_json::json!("unknown field \"close\": this endpoint takes route, backend")
        )
    );
    // Undrained, it takes sessions again.
    for name in &names {
        let (status, _) = post_json(
            admin,
            "/api/backends/undrain",
            &serde_json::json!({"route": "chat", "backend": name}),
            "",
        )
        .await;
        assert_eq!(status, 200);
    }
    connect(&gw.url("/chat")).await;
    assert_eq!(a.request_count() + b.request_count(), 8);
    let (status, _) = post_json(
        admin,
        "/api/backends/drain",
        &serde_json::json!({"route": "nope", "backend": "x"}),
        "",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_token_guards_the_write_endpoints_and_the_browser_rules_hold() {
    const TOKEN: &str = "a-long-enough-admin-token";
    let echo = EchoBackend::spawn().await;
    let (_gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), Some(TOKEN)).await;
    // Reads on loopback need no token; writes do.
    assert_eq!(get(admin, "/api/sessions").await.status, 200);
    // ...when they name a loopback host: a page at a name rebound to 127.0.0.1 (DNS
    // rebinding) reads nothing without the token.
    let rebinding = format!(
        "GET /api/sessions HTTP/1.1\r\nHost: attacker.example:{}\r\nConnection: close\r\n\r\n",
        admin.port()
    );
    assert_eq!(
        raw_exchange(admin, rebinding.as_bytes()).await.1.status,
        401
    );
    let with_token = format!(
        "GET /api/sessions HTTP/1.1\r\nHost: attacker.example:{}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n",
        admin.port()
    );
    assert_eq!(
        raw_exchange(admin, with_token.as_bytes()).await.1.status,
        200
    );
    let close = serde_json::json!({});
    let (status, body) = post_json(admin, "/api/sessions/999/close", &close, "").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = post_json(
        admin,
        "/api/sessions/999/close",
        &close,
        "Authorization: Bearer wrong-token-wrong-token\r\n",
    )
    .await;
    assert_eq!(status, 401);
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, _) = post_json(admin, "/api/sessions/999/close", &close, &bearer).await;
    assert_eq!(status, 404, "past the guard: no such session");
    // The page's login sets an HttpOnly, SameSite=Strict cookie that works as the token.
    let login = admin_request(
        admin,
        "POST",
        "/api/login",
        "Content-Type: application/json\r\n",
        &serde_json::json!({"token": TOKEN}).to_string(),
    )
    .await;
    assert_eq!(login.status, 204);
    let cookie = login.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let (status, _) = post_json(
        admin,
        "/api/sessions/999/close",
        &close,
        &format!("Cookie: {pair}\r\n"),
    )
    .await;
    assert_eq!(status, 404);
    // Cross-site forms and other origins are refused, token or not.
    let form = admin_request(
        admin,
        "POST",
        "/api/sessions/999/close",
        &format!("{bearer}Content-Type: text/plain\r\n"),
        "{}",
    )
    .await;
    assert_eq!(form.status, 415);
    let (status, _) = post_json(
        admin,
        "/api/sessions/999/close",
        &close,
        &format!("{bearer}Origin: https://evil.example\r\n"),
    )
    .await;
    assert_eq!(status, 403);
    // Unknown paths and methods.
    assert_eq!(get(admin, "/api/nothing").await.status, 404);
    // A 405 names what the resource takes (RFC 9110 §15.5.6).
    let deleted = admin_request(admin, "DELETE", "/metrics", &bearer, "").await;
    assert_eq!(deleted.status, 405);
    assert_eq!(deleted.header("allow").as_deref(), Some("GET, HEAD"));
    // A POST where none is taken is 405 too (not 415 over its missing JSON).
    let posted = admin_request(admin, "POST", "/healthz", &bearer, "").await;
    assert_eq!(posted.status, 405);
    assert_eq!(posted.header("allow").as_deref(), Some("GET, HEAD"));
    let got = admin_request(admin, "GET", "/api/reload", &bearer, "").await;
    assert_eq!(got.status, 405);
    assert_eq!(got.header("allow").as_deref(), Some("POST"));
}

#[tokio::test]
async fn without_a_token_only_loopback_host_names_are_answered() {
    let echo = EchoBackend::spawn().await;
    let (_gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), None).await;
    let rebinding = format!(
        "GET /api/sessions HTTP/1.1\r\nHost: attacker.example:{}\r\nConnection: close\r\n\r\n",
        admin.port()
    );
    let resp = raw_exchange(admin, rebinding.as_bytes()).await.1;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("loopback"), "{}", resp.body);
    let probe = format!(
        "GET /readyz HTTP/1.1\r\nHost: lb.example:{}\r\nConnection: close\r\n\r\n",
        admin.port()
    );
    assert_eq!(raw_exchange(admin, probe.as_bytes()).await.1.status, 200);
}

/// Over HTTP/2 the host is `:authority` (a client sends no `Host`): the admin listener's
/// loopback and same-origin rules read it as they read `Host`. Every request over HTTP/2
/// but the probes was refused (403 "answers only requests for a loopback host" for
/// `http://127.0.0.1:PORT/...`), and on a listener with a token, token-less reads (401)
/// and same-origin writes (403).
#[tokio::test]
async fn over_http2_the_authority_is_the_host() {
    const TOKEN: &str = "a-long-enough-admin-token";
    let echo = EchoBackend::spawn().await;
    for token in [None, Some(TOKEN)] {
        let (_gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), token).await;
        let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        let (mut h2, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut status = async |req: http::request::Builder, body: &'static str| {
            let req = req
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            tokio::time::timeout(STEP, h2.send_request(req))
                .await
                .unwrap()
                .unwrap()
                .status()
        };
        let at = |host: &str, path: &str| format!("http://{host}:{}{path}", admin.port());
        let read = http::Request::get(at("127.0.0.1", "/api/sessions"));
        assert_eq!(status(read, "").await, 200, "token {token:?}");
        let rebound = http::Request::get(at("attacker.example", "/api/sessions"));
        let refused = if token.is_some() { 401 } else { 403 };
        assert_eq!(status(rebound, "").await, refused, "token {token:?}");
        let mut write = http::Request::post(at("127.0.0.1", "/api/backends/drain"))
            .header("content-type", "application/json")
            .header("origin", format!("http://127.0.0.1:{}", admin.port()));
        if let Some(t) = token {
            write = write.header("authorization", format!("Bearer {t}"));
        }
        // Past the guard: the router's answer to a drain of no backend.
        assert_eq!(status(write, "{}").await, 400, "token {token:?}");
    }
}

#[tokio::test]
async fn the_event_stream_and_the_page() {
    let echo = EchoBackend::spawn().await;
    let (gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), None).await;
    let _client = connect(&gw.url("/chat")).await;
    let page = get(admin, "/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    // The stream: an event at once, with the summary.
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        admin.port()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let data = tokio::time::timeout(STEP, async {
        loop {
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(i) = text.find("event: summary\ndata: ")
                && text[i..].contains("\n\n")
                && let Some(line) = text[i..].lines().nth(1)
            {
                return line.strip_prefix("data: ").unwrap().to_string();
            }
        }
    })
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&got).contains("text/event-stream"));
    let summary: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(summary["sessions_open"], 1);
    assert_eq!(summary["routes"][0]["name"], "chat");
    assert_eq!(summary["sessions"][0]["route"], "chat");
}

/// A connection to the admin listener that sends no request is closed after the idle
/// timeout (10 s), one that sends only the HTTP/2 preface too, one that falls silent after
/// its first request as well, while an event stream open as long goes on; one past the 32 it
/// holds from one address is closed at once, while another address is still answered.
/// Silent connections used to be held for ever, uncounted: a flood of them to an exposed
/// admin port took the descriptors kept in reserve for it (and after one request each, the
/// caps alone bounded them).
#[tokio::test]
async fn silent_admin_connections_are_closed_and_capped() {
    let echo = EchoBackend::spawn().await;
    let (_gw, admin) = spawn_admin(&route("chat", "/chat", &[echo.url()]), None).await;
    let from = |ip: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(admin).await.unwrap()
    };
    let mut silent = Vec::new();
    for _ in 0..32 {
        silent.push(from("127.0.0.1").await);
    }
    let mut preface = from("127.0.0.2").await;
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    silent.push(preface);
    // An HTTP/2 connection after one answer (hyper's header timeout bounds an HTTP/1.1
    // keep-alive; nothing bounded this).
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(from("127.0.0.4").await),
    )
    .await
    .unwrap();
    let (h2_ended, h2_end) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = h2_ended.send(());
    });
    let req = http::Request::get(format!("http://127.0.0.1:{}/healthz", admin.port()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let answer = tokio::time::timeout(STEP, h2.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 200);
    // An event stream: a request in progress all along.
    let mut events = from("127.0.0.5").await;
    events
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (chunk_tx, mut chunks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        loop {
            let n = events.read(&mut buf).await.unwrap_or(0);
            let _ = chunk_tx.send(n);
            if n == 0 {
                return;
            }
        }
    });
    // The 33rd from one address: closed at once.
    let mut extra = from("127.0.0.1").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(STEP, extra.read(&mut buf))
        .await
        .expect("the connection past the cap was kept")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Another address is served meanwhile.
    let mut other = from("127.0.0.3").await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(STEP, other.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The silent ones: closed at the header timeout (the HTTP/2 one after its SETTINGS).
    let started = std::time::Instant::now();
    for s in &mut silent {
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut sink))
            .await
            .expect("a silent connection held past the header timeout")
            .ok();
    }
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "closed before its timeout"
    );
    tokio::time::timeout(Duration::from_secs(5), h2_end)
        .await
        .expect("an HTTP/2 connection held idle past the timeout")
        .unwrap();
    // The event stream still flows (an event a second): what came so far, then more.
    while let Ok(n) = chunks.try_recv() {
        assert!(n > 0, "the event stream was closed as idle");
    }
    let n = tokio::time::timeout(STEP, chunks.recv())
        .await
        .expect("the event stream stalled");
    assert!(n.unwrap() > 0, "the event stream was closed as idle");
}
