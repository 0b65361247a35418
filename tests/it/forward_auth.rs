//! Forward-auth through the gateway, against a local auth service (support/fake_auth.rs) that
//! answers by path and records what it was asked: allow (with copied identity headers replacing
//! forged ones), refusals passed to the client without reaching the backend, 503 when the
//! service is slow, failing or down, and cached allows.

use crate::support::fake_auth::FakeAuth;
use crate::support::*;

/// A gateway with one route `app` at `/` to `backend`, guarded by forward-auth at `url`.
async fn gateway(backend: &EchoBackend, url: &str, extra: &str) -> Gateway {
    Gateway::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n\n\
         [route.auth.forward_auth]\nurl = \"{url}\"\n\
         copy_headers = [\"X-User\", \"X-Roles\", \"X-Missing\"]\n{extra}\n",
        backend.url()
    ))
    .await
}

async fn upgrade(gw: &Gateway, path: &str, headers: &str) -> RawResponse {
    raw_exchange(gw.addr, upgrade_request(path, headers).as_bytes())
        .await
        .1
}

fn all<'a>(h: &'a http::HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// Every value of a header in a raw response head.
fn head_values(r: &RawResponse, name: &str) -> Vec<String> {
    r.head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// oauth2-proxy's answer names the user in `X-Forwarded-User` and `-Email`: copied, they
/// reach the backend from any client. (They were dropped as a client's own `X-Forwarded-*`
/// unless the peer was a trusted proxy.) The same on a plain HTTP route: `http_proxy.rs`.
#[tokio::test]
async fn copied_x_forwarded_headers_reach_the_backend_from_any_client() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n\
         [route.auth.forward_auth]\nurl = \"{}\"\n\
         copy_headers = [\"X-Forwarded-User\", \"X-Forwarded-Email\"]\n",
        backend.url(),
        auth.url("/allow-forwarded")
    ))
    .await;
    let r = upgrade(&gw, "/chat", "X-Forwarded-User: mallory\r\n").await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(seen.header("x-forwarded-user"), Some("alice"));
    assert_eq!(seen.header("x-forwarded-email"), Some("alice@example.com"));
}

#[tokio::test]
async fn allow_copies_identity_and_drops_forged_headers() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, &auth.url("/allow"), "").await;

    let r = upgrade(
        &gw,
        "/chat?room=1",
        "Cookie: session=abc\r\nAuthorization: Bearer t0ken\r\nOrigin: http://localhost\r\n\
         X-User: mallory\r\nX-Roles: root\r\nX-Missing: forged\r\nX-Forwarded-Host: evil\r\n",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);

    // The backend sees the auth service's word, not the client's.
    let seen = backend.last_request();
    assert_eq!(all(&seen.headers, "x-user"), ["alice"]);
    assert_eq!(all(&seen.headers, "x-roles"), ["admin", "dev"]);
    assert!(
        seen.headers.get("x-missing").is_none(),
        "a copy header the service did not send is removed, not passed from the client"
    );
    assert!(seen.headers.get("x-internal").is_none());

    // The auth service saw the client's credentials and the handshake's facts.
    let asked = auth.last();
    assert_eq!(asked.method, http::Method::GET);
    assert_eq!(asked.uri, "/allow");
    let h = &asked.headers;
    assert_eq!(all(h, "host"), [auth.addr.to_string().as_str()]);
    assert_eq!(all(h, "cookie"), ["session=abc"]);
    assert_eq!(all(h, "authorization"), ["Bearer t0ken"]);
    assert_eq!(all(h, "origin"), ["http://localhost"]);
    assert_eq!(all(h, "x-forwarded-uri"), ["/chat?room=1"]);
    assert_eq!(all(h, "x-forwarded-host"), ["localhost"]);
    assert_eq!(all(h, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(h, "x-forwarded-method"), ["GET"]);
    assert_eq!(all(h, "x-forwarded-for"), ["127.0.0.1"]);
    assert!(h.get("x-user").is_none());
    assert!(h.get("sec-websocket-key").is_none());
}

#[tokio::test]
async fn allow_with_a_websocket_client_and_the_token_in_the_subprotocol() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, &auth.url("/allow"), "").await;
    let (mut ws, resp) = connect_with(&gw.url("/"), |req| {
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "chat, bearer.t0ken".parse().unwrap(),
        );
    })
    .await
    .expect("allowed");
    assert_eq!(resp.status(), 101);
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(next_data(&mut ws).await.into_text().unwrap(), "hi");
    assert_eq!(
        all(&auth.last().headers, "sec-websocket-protocol"),
        ["chat, bearer.t0ken"]
    );
    assert_eq!(backend.last_request().header("x-user"), Some("alice"));
}

/// A refusal's instructions reach the client: a 407 is useless without its challenge (RFC
/// 9110 §15.5.8), a 429 says when to come back.
#[tokio::test]
async fn deny_407_and_429_keep_what_the_client_needs() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    for (path, status, name, value) in [
        (
            "/deny407",
            407,
            "proxy-authenticate",
            "Basic realm=\"edge\"",
        ),
        ("/deny429", 429, "retry-after", "30"),
    ] {
        let gw = gateway(&backend, &auth.url(path), "").await;
        let r = upgrade(&gw, "/", "").await;
        assert_eq!(r.status, status, "{}", r.head);
        assert_eq!(r.header(name).as_deref(), Some(value), "{}", r.head);
    }
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn deny_401_is_passed_to_the_client() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, &auth.url("/deny401"), "").await;

    let r = upgrade(&gw, "/", "Cookie: session=expired\r\n").await;
    assert_eq!(r.status, 401, "{}", r.head);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"chat\"")
    );
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert!(r.header("x-internal").is_none(), "{}", r.head);
    assert_eq!(r.body, "login required");
    assert_eq!(
        backend.request_count(),
        0,
        "a refused handshake reached the backend"
    );
    assert_eq!(auth.count(), 1);
    let counts = gw.handle().refusals();
    assert_eq!(counts.get(&("app".to_string(), "auth_denied")), Some(&1));
}

/// Of an answer's body only the first 64 KiB is read: a 2xx with a longer one still allows,
/// and a refusal's reaches the client cut there (not a 503 "unavailable" either way).
#[tokio::test]
async fn a_long_answer_body_is_cut_not_a_503() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, &auth.url("/big"), "").await;
    let r = upgrade(&gw, "/", "").await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(all(&backend.last_request().headers, "x-user"), ["alice"]);

    let gw = gateway(&backend, &auth.url("/deny401big"), "").await;
    let r = upgrade(&gw, "/", "").await;
    assert_eq!(r.status, 401, "{}", r.head);
    assert_eq!(r.header("content-type").as_deref(), Some("text/html"));
    assert_eq!(r.header("content-length").as_deref(), Some("65536"));
    assert_eq!(r.body.len(), 64 * 1024);
}

#[tokio::test]
async fn login_redirect_is_passed_to_the_client() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, &auth.url("/deny302"), "").await;

    let r = upgrade(&gw, "/", "").await;
    assert_eq!(r.status, 302, "{}", r.head);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://login.example.com/?rd=chat")
    );
    assert_eq!(
        head_values(&r, "set-cookie"),
        ["state=xyz; HttpOnly", "flow=1"]
    );
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn slow_failing_or_absent_auth_service_is_503() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let down = format!("http://{}/check", closed_port().await);
    for (url, extra) in [
        (auth.url("/slow"), "timeout = \"200ms\""),
        (auth.url("/error"), ""),
        (down, ""),
    ] {
        let gw = gateway(&backend, &url, extra).await;
        let r = upgrade(&gw, "/", "").await;
        assert_eq!(r.status, 503, "{url}: {}", r.head);
        // The service's own failure (its body, its URL) stays in the proxy's log.
        assert!(
            r.body.contains("authentication is unavailable"),
            "{url}: {}",
            r.body
        );
        assert!(!r.body.contains("database down") && !r.body.contains("127.0.0.1"));
        let counts = gw.handle().refusals();
        assert_eq!(
            counts.get(&("app".to_string(), "auth_unavailable")),
            Some(&1),
            "{url}"
        );
    }
    assert_eq!(backend.request_count(), 0);
    assert_eq!(
        auth.count(),
        2,
        "the slow and the failing service were asked"
    );
}

/// An auth service that closes a kept-alive connection as a check arrives on it (its
/// keep-alive timer ran out: Node's is 5 s) does not turn that check into a 503: the check is
/// a GET, and is asked again on a new connection.
#[tokio::test]
async fn a_check_whose_kept_alive_connection_closes_under_it_is_asked_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        // The first connection answers one check and closes under the next one; any later
        // connection answers every check.
        let mut first = true;
        while let Ok((mut stream, _)) = listener.accept().await {
            let answers = if first { 1 } else { usize::MAX };
            first = false;
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..answers {
                    loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..i + 4);
                            break;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let ok = "HTTP/1.1 200 OK\r\nX-User: alice\r\nContent-Length: 0\r\n\r\n";
                    if stream.write_all(ok.as_bytes()).await.is_err() {
                        return;
                    }
                }
                // Read the next check, then close without an answer.
                let mut chunk = [0u8; 4096];
                let _ = stream.read(&mut chunk).await;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, &format!("http://{addr}/check"), "").await;
    for i in 0..3 {
        let r = upgrade(&gw, "/", "Cookie: session=abc\r\n").await;
        assert_eq!(r.status, 101, "handshake {i}: {}", r.head);
        assert_eq!(all(&backend.last_request().headers, "x-user"), ["alice"]);
    }
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "three checks, one of them asked twice"
    );
}

/// A service that takes a check on a fresh connection and closes without an answer is asked
/// once: that is the service failing on the check, not the keep-alive race, and asking again
/// would triple the load on a service already in trouble (nginx too tries again only on a
/// cached connection). The check is answered 503.
#[tokio::test]
async fn a_check_a_fresh_connection_closes_under_is_not_asked_again() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Closed without an answer.
            });
        }
    });
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, &format!("http://{addr}/check"), "").await;
    let r = upgrade(&gw, "/", "Cookie: session=abc\r\n").await;
    assert_eq!(r.status, 503, "{}", r.head);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn cached_allow_skips_the_subrequest() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let gw = gateway(&backend, &auth.url("/allow"), "cache = \"1m\"").await;

    for _ in 0..3 {
        let r = upgrade(&gw, "/", "Cookie: session=abc\r\nX-User: mallory\r\n").await;
        assert_eq!(r.status, 101, "{}", r.head);
        assert_eq!(all(&backend.last_request().headers, "x-user"), ["alice"]);
    }
    assert_eq!(auth.count(), 1, "allows within the TTL are cached");

    // Other credentials are asked about.
    let r = upgrade(&gw, "/", "Cookie: session=other\r\n").await;
    assert_eq!(r.status, 101);
    assert_eq!(auth.count(), 2);
    assert_eq!(backend.request_count(), 4);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_auth_service_hears_what_the_client_used() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n\
         [route.auth.forward_auth]\nurl = \"{}\"\n",
        backend.url(),
        auth.url("/allow")
    ))
    .await;
    let r = upgrade(
        &gw,
        "/",
        "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: chat.example.com\r\n",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    // The same scheme, host and client the backend is told about.
    let asked = auth.last();
    assert_eq!(all(&asked.headers, "x-forwarded-proto"), ["https"]);
    assert_eq!(
        all(&asked.headers, "x-forwarded-host"),
        ["chat.example.com"]
    );
    assert_eq!(
        all(&asked.headers, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    let seen = backend.last_request();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("chat.example.com"));
}

#[tokio::test]
async fn a_token_in_the_query_is_not_passed_to_the_auth_service() {
    let auth = FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("forward-auth");
    let secret = tmp.write(
        "hs256.secret",
        "a-test-secret-that-is-long-enough-for-hs256",
    );
    let gw = Gateway::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n\
         [route.auth.jwt]\nsecret_file = {:?}\nfrom = [\"query:access_token\"]\n\
         [route.auth.forward_auth]\nurl = \"{}\"\n",
        backend.url(),
        secret.display().to_string(),
        auth.url("/allow")
    ))
    .await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(b"a-test-secret-that-is-long-enough-for-hs256"),
    )
    .unwrap();
    let r = upgrade(&gw, &format!("/chat?room=1&access_token={token}"), "").await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(
        all(&auth.last().headers, "x-forwarded-uri"),
        ["/chat?room=1"]
    );
    assert_eq!(backend.last_request().uri, "/chat?room=1");
}
