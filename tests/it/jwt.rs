//! JWT through the gateway: the token from each place it may come from, what the backend
//! sees of it (nothing, by default), the refusals (401 with a challenge, 503 without keys,
//! 403 for a token the claim rules refuse) and sessions that end with their token.
//! Signatures, claims and key sources in detail are the unit tests' (src/policy/jwt.rs).

use futures_util::SinkExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const SECRET: &str = "an HMAC secret of at least thirty-two bytes";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn good_token() -> String {
    token(json!({ "sub": "alice", "aud": "chat", "exp": now() + 600 }))
}

/// A fresh echo backend, the secret in a file in a temporary directory (keep it until the test
/// ends), and a gateway with one route at `/` to the backend, its `[route.auth.jwt]` table
/// holding the secret, an audience and `extra`; the backend gets the subject as `X-User`.
async fn gateway(extra: &str) -> (EchoBackend, TempDir, Gateway) {
    let backend = EchoBackend::spawn().await;
    let tmp = TempDir::new("jwt");
    let secret = tmp.write("hs256.secret", format!("{SECRET}\n"));
    let gw = Gateway::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n\
         [route.auth]\nset_headers = {{ \"X-User\" = \"{{sub}}\" }}\n\
         [route.auth.jwt]\nsecret_file = {:?}\naudience = \"chat\"\n{extra}\n",
        backend.url(),
        secret.display().to_string(),
    ))
    .await;
    (backend, tmp, gw)
}

async fn upgrade(gw: &Gateway, path: &str, headers: &str) -> RawResponse {
    raw_exchange(gw.addr, upgrade_request(path, headers).as_bytes())
        .await
        .1
}

#[tokio::test]
async fn token_in_the_authorization_header() {
    let (backend, _secret, gw) = gateway("").await;
    let r = upgrade(
        &gw,
        "/",
        &format!("Authorization: Bearer {}\r\n", good_token()),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    // The token stays at the edge; the backend gets the identity instead.
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-user"), Some("alice"));

    // A forged X-User never reaches the backend either.
    let r = upgrade(
        &gw,
        "/",
        &format!(
            "Authorization: Bearer {}\r\nX-User: root\r\n",
            token(json!({ "sub": "bob", "aud": "chat", "exp": now() + 600 }))
        ),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(backend.last_request().header("x-user"), Some("bob"));

    // Nor one spelt with an underscore, which CGI, WSGI, PHP and Rack read as X-User.
    let r = upgrade(
        &gw,
        "/",
        &format!(
            "Authorization: Bearer {}\r\nX_User: root\r\nx-USER: root\r\n",
            good_token()
        ),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(seen.header("x_user"), None);
    assert_eq!(seen.header("x-user"), Some("alice"));
}

#[tokio::test]
async fn forward_token_passes_the_header_on() {
    let (backend, _secret, gw) = gateway("forward_token = true").await;
    let t = good_token();
    let r = upgrade(&gw, "/", &format!("Authorization: Bearer {t}\r\n")).await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(
        backend.last_request().header("authorization"),
        Some(format!("Bearer {t}").as_str())
    );
}

/// Every value of a header, as the backend got them.
fn all<'a>(seen: &'a SeenRequest, name: &str) -> Vec<&'a str> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// The backend sees no credential wsgate did not check: wsgate verifies the first
/// `Authorization` header and the first cookie of the name, where many frameworks read the
/// last; a token source's cookie (percent-encoded names too) goes when the token came from
/// the header. With `forward_token`, the verified token alone goes on.
#[tokio::test]
async fn only_the_verified_token_reaches_the_backend() {
    let good = good_token();
    // A token with a bad signature: refused on its own.
    let forged = format!("{}x", &good[..good.len() - 1]);
    let (backend, _secret, gw) = gateway("from = [\"header\", \"cookie:access_token\"]").await;
    let r = upgrade(
        &gw,
        "/",
        &format!(
            "Authorization: Bearer {good}\r\n\
             Cookie: theme=dark; access_token={forged}; %61ccess_token={forged}\r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(all(&seen, "cookie"), ["theme=dark"]);
    assert!(all(&seen, "authorization").is_empty());

    let (backend, _secret, gw) =
        gateway("from = [\"header\", \"cookie:access_token\"]\nforward_token = true").await;
    let r = upgrade(
        &gw,
        "/",
        &format!(
            "Authorization: Bearer {good}\r\nAuthorization: Bearer {forged}\r\n\
             Cookie: access_token={forged}; theme=dark\r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(all(&seen, "authorization"), [format!("Bearer {good}")]);
    assert_eq!(all(&seen, "cookie"), ["theme=dark"]);
    // From a cookie: that one, once, whatever copies came after it.
    let r = upgrade(
        &gw,
        "/",
        &format!(
            "Cookie: access_token={good}; theme=dark; access_token={forged}\r\n\
             Cookie: access_token={forged}\r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(
        all(&seen, "cookie"),
        [format!("theme=dark; access_token={good}")]
    );
}

/// The token sources' cookie strip leaves every other cookie as it came, whatever its bytes:
/// browsers send UTF-8 in cookie values (`document.cookie = "name=Zoë"`), which is not
/// visible ASCII, and the backend's own cookies must not go with the credential.
#[tokio::test]
async fn other_cookies_survive_the_token_strip_whatever_their_bytes() {
    let good = good_token();
    let (backend, _secret, gw) = gateway("from = [\"header\", \"cookie:access_token\"]").await;
    let r = upgrade(
        &gw,
        "/",
        &format!("Authorization: Bearer {good}\r\nCookie: theme=dark; name=Zoë\r\n"),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let cookies = |seen: &SeenRequest| -> Vec<Vec<u8>> {
        seen.headers
            .get_all("cookie")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    };
    assert_eq!(
        cookies(&backend.last_request()),
        ["theme=dark; name=Zoë".as_bytes()]
    );
    // The credential still goes, from the same field.
    let r = upgrade(
        &gw,
        "/",
        &format!("Authorization: Bearer {good}\r\nCookie: access_token=forged; name=Zoë\r\n"),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(cookies(&backend.last_request()), ["name=Zoë".as_bytes()]);

    // With forward_token, the verified cookie goes back beside them.
    let (backend, _secret, gw) =
        gateway("from = [\"cookie:access_token\"]\nforward_token = true").await;
    let r = upgrade(
        &gw,
        "/",
        &format!("Cookie: access_token={good}\r\nCookie: name=Zoë\r\n"),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(
        cookies(&backend.last_request()),
        [format!("name=Zoë; access_token={good}").as_bytes()]
    );
}

#[tokio::test]
async fn token_in_a_cookie() {
    let (backend, _secret, gw) = gateway("from = [\"cookie:access_token\"]").await;
    let r = upgrade(
        &gw,
        "/",
        &format!("Cookie: theme=dark; access_token={}\r\n", good_token()),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(seen.header("cookie"), Some("theme=dark"));
    assert_eq!(seen.header("x-user"), Some("alice"));

    // The route looks in the cookie only: a header token does not count.
    let before = backend.request_count();
    let r = upgrade(
        &gw,
        "/",
        &format!("Authorization: Bearer {}\r\n", good_token()),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.head);
    assert_eq!(backend.request_count(), before);
}

#[tokio::test]
async fn token_in_the_query_is_removed_from_the_backend_url() {
    let (backend, _secret, gw) = gateway("from = [\"query:access_token\"]").await;
    let r = upgrade(
        &gw,
        &format!("/room/7?lang=en&access_token={}&v=2", good_token()),
        "",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    let seen = backend.last_request();
    assert_eq!(seen.uri, "/room/7?lang=en&v=2");
    assert_eq!(seen.header("x-user"), Some("alice"));

    // A backend's framework decodes the names: so does wsgate. A parameter that decodes to
    // the token's name goes too, used or not, and the token in one is found.
    let r = upgrade(
        &gw,
        &format!(
            "/room/7?access_token={}&acc%65ss_token=forged&v=2",
            good_token()
        ),
        "",
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(backend.last_request().uri, "/room/7?v=2");
    let r = upgrade(&gw, &format!("/room/7?acc%65ss_token={}", good_token()), "").await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(backend.last_request().uri, "/room/7");
    // Found in the header, the query's parameter of that name goes all the same, and so do
    // the arrays a framework reads as it.
    let (backend, _secret, gw) = gateway("from = [\"header\", \"query:access_token\"]").await;
    let r = upgrade(
        &gw,
        "/room/7?access_token=forged&access_token[]=forged&access_token[x]=forged&v=2",
        &format!("Authorization: Bearer {}\r\n", good_token()),
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(backend.last_request().uri, "/room/7?v=2");
}

#[tokio::test]
async fn token_in_the_subprotocol_list() {
    let (backend, _secret, gw) = gateway("").await;
    let offer = format!("chat, bearer.{}", good_token());
    let (_ws, resp) = connect_offering(&gw.url("/"), &offer).await;
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chat"
    );
    let seen = backend.last_request();
    assert_eq!(seen.header("sec-websocket-protocol"), Some("chat"));
    assert_eq!(seen.header("x-user"), Some("alice"));
}

#[tokio::test]
async fn missing_and_invalid_tokens_get_401() {
    let (backend, _secret, gw) = gateway("").await;

    let r = upgrade(&gw, "/", "").await;
    assert_eq!(r.status, 401, "{}", r.head);
    let challenge = r.header("www-authenticate").expect("a challenge");
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    assert!(!challenge.contains("error="), "{challenge}");

    let expired = token(json!({ "sub": "alice", "aud": "chat", "exp": now() - 3600 }));
    let elsewhere = token(json!({ "sub": "alice", "aud": "billing", "exp": now() + 600 }));
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "alice", "aud": "chat", "exp": now() + 600 }),
        &EncodingKey::from_secret(b"another secret of at least thirty-two bytes"),
    )
    .unwrap();
    for bad in [
        expired,
        elsewhere,
        forged,
        "not-a-json-web-token".to_string(),
    ] {
        let r = upgrade(&gw, "/", &format!("Authorization: Bearer {bad}\r\n")).await;
        assert_eq!(r.status, 401, "{}", r.head);
        let challenge = r.header("www-authenticate").expect("a challenge");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        // The client is not told which check failed, nor shown its token.
        assert!(
            !r.body.contains("expired") && !r.body.contains("audience"),
            "{}",
            r.body
        );
        assert!(!r.head.contains(&bad[..10]) && !r.body.contains(&bad[..10]));
    }
    assert_eq!(
        backend.request_count(),
        0,
        "a refused handshake reached the backend"
    );
    let counts = gw.handle().refusals();
    assert_eq!(counts.get(&("app".to_string(), "token_missing")), Some(&1));
    assert_eq!(counts.get(&("app".to_string(), "token_invalid")), Some(&4));
}

#[tokio::test]
async fn unreachable_key_set_gets_503() {
    let backend = EchoBackend::spawn().await;
    let keys = closed_port().await;
    let gw = Gateway::spawn(&format!(
        "[[route]]\nname = \"app\"\npath = \"/\"\nbackends = [\"{}\"]\n\
         [route.auth.jwt]\njwks_url = \"http://{keys}/jwks.json\"\n",
        backend.url()
    ))
    .await;
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({ "sub": "alice", "exp": now() + 600 }),
        &EncodingKey::from_ec_pem(
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_pem()
                .as_bytes(),
        )
        .unwrap(),
    )
    .unwrap();
    let r = upgrade(&gw, "/", &format!("Authorization: Bearer {t}\r\n")).await;
    assert_eq!(r.status, 503, "{}", r.head);
    assert!(r.body.contains("unavailable"), "{}", r.body);
    assert_eq!(backend.request_count(), 0);
}

#[tokio::test]
async fn a_token_offered_alone_after_its_marker_gets_the_marker_back() {
    // The Kubernetes pattern: `new WebSocket(url, ["access_token", token])`. The backend is
    // offered nothing, chooses nothing, and the client still gets a subprotocol from its
    // offer (a browser fails a connection whose offer got none back).
    let (backend, _secret, gw) = gateway("").await;
    let offer = format!("access_token, {}", good_token());
    let (_ws, resp) = connect_offering(&gw.url("/"), &offer).await;
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "access_token"
    );
    let seen = backend.last_request();
    assert_eq!(seen.header("sec-websocket-protocol"), None);
    assert_eq!(seen.header("x-user"), Some("alice"));
}

#[tokio::test]
async fn claim_rules_refuse_with_insufficient_scope() {
    let (backend, _secret, gw) =
        gateway("claims = { role = [\"admin\", \"ops\"], \"org.id\" = \"42\" }").await;
    let exp = now() + 600;
    // A role list holding an accepted value passes.
    let ops = token(json!({ "sub": "alice", "aud": "chat", "exp": exp,
                            "role": ["viewer", "ops"], "org": { "id": "42" } }));
    let r = upgrade(&gw, "/", &format!("Authorization: Bearer {ops}\r\n")).await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(backend.request_count(), 1);

    for claims in [
        json!({ "sub": "bob", "aud": "chat", "exp": exp, "role": "viewer", "org": { "id": "42" } }),
        json!({ "sub": "bob", "aud": "chat", "exp": exp, "role": "admin", "org": { "id": "7" } }),
        json!({ "sub": "bob", "aud": "chat", "exp": exp, "org": { "id": "42" } }),
    ] {
        let r = upgrade(
            &gw,
            "/",
            &format!("Authorization: Bearer {}\r\n", token(claims)),
        )
        .await;
        // RFC 6750 §3.1: a good token without the rights is 403, not 401.
        assert_eq!(r.status, 403, "{}", r.head);
        let challenge = r.header("www-authenticate").expect("a challenge");
        assert_eq!(
            challenge,
            "Bearer realm=\"app\", error=\"insufficient_scope\""
        );
        assert_eq!(r.body.trim(), "insufficient scope");
    }
    // A bad signature is still 401, whatever its claims say.
    let forged = format!("{ops}x");
    let r = upgrade(&gw, "/", &format!("Authorization: Bearer {forged}\r\n")).await;
    assert_eq!(r.status, 401, "{}", r.head);

    assert_eq!(
        backend.request_count(),
        1,
        "a refused handshake reached the backend"
    );
    let counts = gw.handle().refusals();
    assert_eq!(counts.get(&("app".to_string(), "claims_refused")), Some(&3));
}

/// With `expire_sessions`, a session ends when its token does: 1008 "token expired" to the
/// client, within a second of `exp` (leeway 0), 1001 to the backend. Without it, a session
/// opened with the same token lives on.
#[tokio::test]
async fn a_session_ends_when_its_token_expires() {
    let (backend, _secret, gw) = gateway("expire_sessions = true\nleeway = \"0\"").await;
    let (_backend2, _secret2, lax) = gateway("leeway = \"0\"").await;
    // `exp` is whole seconds: 1 to 2 s from now.
    let exp = now() + 2;
    let t = token(json!({ "sub": "alice", "aud": "chat", "exp": exp }));
    let open = |url: String| {
        let t = t.clone();
        async move {
            connect_with(&url, |r| {
                r.headers_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            })
            .await
            .expect("connect")
            .0
        }
    };
    let mut ws = open(gw.url("/")).await;
    let mut lives_on = open(lax.url("/")).await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("before"));

    let close = next_close(&mut ws).await;
    let at = std::time::SystemTime::now();
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "token expired")
    );
    let exp_time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
    let late = at
        .duration_since(exp_time)
        .expect("closed before the token expired");
    eprintln!("closed {late:?} after exp");
    assert!(
        late < std::time::Duration::from_secs(1),
        "closed {late:?} after exp"
    );
    assert_eq!(
        backend.wait_closes(1).await,
        vec![Some((1001, "token expired".into()))]
    );

    // The route without `expire_sessions` still relays for the expired token's session.
    lives_on.send(Message::text("after")).await.unwrap();
    assert_eq!(next_data(&mut lives_on).await, Message::text("after"));
}
