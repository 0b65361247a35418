//! Forward-auth against header sets, the cache, and a real auth service on 127.0.0.1:0.

use super::*;

use http::Response;
use tokio::net::TcpListener;

use crate::test_support::fake_auth::{FakeAuth, by_path};
use crate::test_support::temp_dir::TempDir;

/// Settings for the auth service at `url`, with the defaults, changed by `f`.
fn build(url: &str, f: impl FnOnce(&mut ForwardAuthSettings)) -> Arc<ForwardAuth> {
    let url: Uri = url.parse().expect("a URL");
    let mut s = ForwardAuthSettings {
        tls: crate::http_client::tls_for(&url, None).expect("TLS settings"),
        url,
        timeout: DEFAULT_TIMEOUT,
        copy_headers: Vec::new(),
        forward_headers: Vec::new(),
        cache: None,
        user_header: None,
    };
    f(&mut s);
    Arc::new(ForwardAuth::new(s))
}

fn handshake(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn query(parts: &Parts) -> AuthQuery<'_> {
    AuthQuery {
        parts,
        uri: &parts.uri,
        client: "203.0.113.7".parse().unwrap(),
        forwarded_for: "203.0.113.7",
        scheme: "https",
        host: "chat.example.com",
        method: "GET",
    }
}

fn browser_request() -> Parts {
    handshake(
        "/chat/room?id=42",
        &[
            ("host", "chat.example.com"),
            ("cookie", "session=abc"),
            ("cookie", "theme=dark"),
            ("authorization", "Bearer t0ken"),
            ("origin", "https://chat.example.com"),
            ("user-agent", "test-browser"),
            ("sec-websocket-protocol", "chat, bearer.t0ken"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("x-tenant", "blue"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "forged.example"),
            ("x-user", "mallory"),
        ],
    )
}

fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// A decision that must be a refusal: its status, headers and body.
fn denied(decision: AuthDecision) -> (StatusCode, HeaderMap, Bytes) {
    match decision {
        AuthDecision::Deny {
            status,
            headers,
            body,
        } => (status, headers, body),
        d => panic!("not a refusal: {d:?}"),
    }
}

// ---- the subrequest ----

#[test]
fn request_headers_carry_credentials_and_forwarded_facts() {
    let fa = build("http://auth/", |s| {
        s.forward_headers = vec![HeaderName::from_static("x-tenant")]
    });
    let parts = browser_request();
    let h = fa.request_headers(&query(&parts));
    // HTTP/2 crumbs (or several lines) joined into one field for the auth service.
    assert_eq!(values(&h, "cookie"), ["session=abc; theme=dark"]);
    assert_eq!(values(&h, "authorization"), ["Bearer t0ken"]);
    assert_eq!(values(&h, "origin"), ["https://chat.example.com"]);
    assert_eq!(values(&h, "user-agent"), ["test-browser"]);
    assert_eq!(values(&h, "sec-websocket-protocol"), ["chat, bearer.t0ken"]);
    assert_eq!(values(&h, "x-tenant"), ["blue"]);
    // The proxy's own facts replace anything the client sent under these names.
    assert_eq!(values(&h, "x-forwarded-for"), ["203.0.113.7"]);
    assert_eq!(values(&h, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&h, "x-forwarded-host"), ["chat.example.com"]);
    assert_eq!(values(&h, "x-forwarded-uri"), ["/chat/room?id=42"]);
    assert_eq!(values(&h, "x-forwarded-method"), ["GET"]);
    // Never the client's Host (the URL's authority is the Host), nor anything unlisted.
    for absent in ["host", "sec-websocket-key", "x-user"] {
        assert!(h.get(absent).is_none(), "{absent} was sent");
    }
    assert_eq!(h.keys_len(), 11, "{h:?}");
}

#[test]
fn request_headers_without_extras_or_absent_ones() {
    let fa = build("http://auth/", |_| {});
    let parts = handshake("/ws", &[("host", "h")]);
    let mut q = query(&parts);
    q.forwarded_for = "";
    let h = fa.request_headers(&q);
    let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-uri",
            "x-forwarded-method"
        ]
    );
    let parts = browser_request();
    assert!(fa.request_headers(&query(&parts)).get("x-tenant").is_none());
}

#[test]
fn decisions_from_answers() {
    let copy = [
        HeaderName::from_static("x-user"),
        HeaderName::from_static("x-roles"),
    ];
    let answer = |status: u16, headers: &[(&str, &str)], body: &'static str| {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Bytes::from_static(body.as_bytes())).unwrap()
    };

    let a = answer(
        200,
        &[
            ("x-user", "alice"),
            ("x-roles", "a"),
            ("x-roles", "b"),
            ("x-secret", "s"),
        ],
        "",
    );
    match decide(&copy, a).unwrap() {
        AuthDecision::Allow(a) => assert_eq!(
            a.headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
                .collect::<Vec<_>>(),
            [("x-user", "alice"), ("x-roles", "a"), ("x-roles", "b")]
        ),
        d => panic!("{d:?}"),
    }
    // Missing copies are simply absent.
    match decide(&copy, answer(204, &[], "")).unwrap() {
        AuthDecision::Allow(a) => assert!(a.headers.is_empty()),
        d => panic!("{d:?}"),
    }

    let deny = answer(
        401,
        &[
            ("www-authenticate", "Bearer realm=\"chat\""),
            ("retry-after", "5"),
            ("proxy-authenticate", "Basic realm=\"edge\""),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("content-type", "text/plain"),
            ("cache-control", "no-store"),
            ("content-length", "5"),
            ("x-user", "alice"),
            ("server", "authd"),
            ("connection", "close"),
        ],
        "nope!",
    );
    let (status, headers, body) = denied(decide(&copy, deny).unwrap());
    assert_eq!(status, 401);
    assert_eq!(body, "nope!");
    assert_eq!(values(&headers, "set-cookie"), ["a=1", "b=2"]);
    let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "www-authenticate",
            "proxy-authenticate",
            "retry-after",
            "set-cookie",
            "content-type",
            "cache-control"
        ]
    );
    for status in [302, 303, 307, 400, 403, 404, 429] {
        assert!(matches!(
            decide(&copy, answer(status, &[("location", "/login")], "")),
            Ok(AuthDecision::Deny { status: s, .. }) if s == status
        ));
    }
    for status in [500, 502, 503, 504] {
        let e = decide(&copy, answer(status, &[], "")).unwrap_err();
        assert!(e.contains(&status.to_string()), "{e}");
    }
}

// ---- the cache ----

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
        .collect()
}

#[test]
fn cache_key_covers_every_fact_unambiguously() {
    let c = Cache::new(Duration::from_secs(1), 10);
    let base = c.key(&headers(&[("cookie", "s=1"), ("x-forwarded-uri", "/a")]));
    assert_eq!(
        base,
        c.key(&headers(&[("cookie", "s=1"), ("x-forwarded-uri", "/a")]))
    );
    for other in [
        headers(&[("cookie", "s=2"), ("x-forwarded-uri", "/a")]),
        headers(&[("cookie", "s=1"), ("x-forwarded-uri", "/b")]),
        headers(&[("cookie", "s=1")]),
        headers(&[
            ("cookie", "s=1"),
            ("x-forwarded-uri", "/a"),
            ("authorization", "x"),
        ]),
        // Moving bytes between a name and a value, or between values, changes the key.
        headers(&[("cookie", "s=1x-forwarded-uri/a")]),
        headers(&[("cookie", "s="), ("cookie", "1"), ("x-forwarded-uri", "/a")]),
    ] {
        assert_ne!(base, c.key(&other), "{other:?}");
    }
    // Another process (another HMAC key) computes other keys.
    let c2 = Cache::new(Duration::from_secs(1), 10);
    assert_ne!(
        base,
        c2.key(&headers(&[("cookie", "s=1"), ("x-forwarded-uri", "/a")]))
    );
}

#[test]
fn cache_entries_expire() {
    let c = Cache::new(Duration::from_secs(10), 10);
    let t0 = Instant::now();
    let h = Allowed {
        headers: vec![(
            HeaderName::from_static("x-user"),
            HeaderValue::from_static("alice"),
        )],
        user: Some("alice".into()),
    };
    c.insert([1; 20], h.clone(), t0);
    assert_eq!(c.get(&[1; 20], t0), Some(h.clone()));
    assert_eq!(c.get(&[1; 20], t0 + Duration::from_millis(9_999)), Some(h));
    assert_eq!(c.get(&[2; 20], t0), None);
    assert_eq!(c.get(&[1; 20], t0 + Duration::from_secs(10)), None);
    assert!(
        c.lock().is_empty(),
        "an expired entry is dropped when found"
    );
}

#[test]
fn cache_is_bounded_expired_first() {
    let c = Cache::new(Duration::from_secs(10), 100);
    let t0 = Instant::now();
    for i in 0..50u8 {
        c.insert([i; 20], Allowed::default(), t0);
    }
    let t1 = t0 + Duration::from_secs(5);
    for i in 50..100u8 {
        c.insert([i; 20], Allowed::default(), t1);
    }
    assert_eq!(c.lock().len(), 100);
    // Full: the first 50 have expired by t0 + 11s, and only they go.
    let t2 = t0 + Duration::from_secs(11);
    c.insert([200; 20], Allowed::default(), t2);
    let map = c.lock();
    assert_eq!(map.len(), 51);
    assert!((50..100u8).all(|i| map.contains_key(&[i; 20])));
    assert!(map.contains_key(&[200; 20]));
}

#[test]
fn cache_is_bounded_when_nothing_expired() {
    let c = Cache::new(Duration::from_secs(60), 100);
    let t0 = Instant::now();
    let mut max_seen = 0;
    for i in 0..1_000u32 {
        let mut k = [0u8; 20];
        k[..4].copy_from_slice(&i.to_be_bytes());
        c.insert(k, Allowed::default(), t0);
        max_seen = max_seen.max(c.lock().len());
        // The newest entry is always kept.
        assert!(c.get(&k, t0).is_some());
    }
    assert_eq!(max_seen, 100);
    // Updating an existing key of a full map evicts nothing.
    let len = c.lock().len();
    let k = *c.lock().keys().next().unwrap();
    c.insert(k, Allowed::default(), t0);
    assert_eq!(c.lock().len(), len);

    let one = Cache::new(Duration::from_secs(60), 1);
    one.insert([1; 20], Allowed::default(), t0);
    one.insert([2; 20], Allowed::default(), t0);
    assert_eq!(one.lock().len(), 1);
    assert!(one.get(&[2; 20], t0).is_some());
}

#[test]
fn debug_output_holds_no_secret() {
    let fa = build("http://auth/", |s| s.cache = Some(Duration::from_secs(5)));
    let s = format!("{fa:?}");
    assert!(!s.contains("hmac_key"), "{s}");
}

// ---- against a real auth service ----

/// The auth service at `url`, copying `X-User`, `X-Roles` and `X-Missing`, changed by `f`.
fn service_config(url: &str, f: impl FnOnce(&mut ForwardAuthSettings)) -> Arc<ForwardAuth> {
    build(url, |s| {
        s.copy_headers = ["x-user", "x-roles", "x-missing"]
            .map(HeaderName::from_static)
            .to_vec();
        f(s)
    })
}

fn copied(d: &AuthDecision) -> Vec<(String, String)> {
    match d {
        AuthDecision::Allow(a) => a
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect(),
        d => panic!("expected allow, got {d:?}"),
    }
}

#[tokio::test]
async fn allow_copies_headers_and_sends_the_facts() {
    let auth = FakeAuth::spawn().await;
    let fa = service_config(&auth.url("/allow"), |s| {
        s.forward_headers = vec![HeaderName::from_static("x-tenant")]
    });
    let parts = browser_request();
    let d = fa.check(&query(&parts)).await.unwrap();
    assert_eq!(
        copied(&d),
        [
            ("x-user".into(), "alice".into()),
            ("x-roles".into(), "admin".into()),
            ("x-roles".into(), "dev".into())
        ]
    );
    let seen = auth.last();
    assert_eq!(seen.method, http::Method::GET);
    assert_eq!(seen.uri, "/allow");
    let h = &seen.headers;
    // Host is the auth service's authority, not the client's.
    assert_eq!(values(h, "host"), [auth.addr.to_string().as_str()]);
    assert_eq!(values(h, "cookie"), ["session=abc; theme=dark"]);
    assert_eq!(values(h, "authorization"), ["Bearer t0ken"]);
    assert_eq!(values(h, "sec-websocket-protocol"), ["chat, bearer.t0ken"]);
    assert_eq!(values(h, "origin"), ["https://chat.example.com"]);
    assert_eq!(values(h, "user-agent"), ["test-browser"]);
    assert_eq!(values(h, "x-tenant"), ["blue"]);
    assert_eq!(values(h, "x-forwarded-for"), ["203.0.113.7"]);
    assert_eq!(values(h, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(h, "x-forwarded-host"), ["chat.example.com"]);
    assert_eq!(values(h, "x-forwarded-uri"), ["/chat/room?id=42"]);
    assert_eq!(values(h, "x-forwarded-method"), ["GET"]);
    for absent in ["x-user", "sec-websocket-key", "upgrade"] {
        assert!(h.get(absent).is_none(), "{absent} was sent");
    }
}

/// `user_header` (set here directly: the config key is built elsewhere) names the user in
/// `Allowed` (cached or not) and, through the policy, in `Admitted`; the header is not copied
/// to the backend unless `copy_headers` says so.
#[tokio::test]
async fn the_user_header_names_the_user() {
    let auth = FakeAuth::spawn().await;
    let parts = browser_request();
    let user = |d: &AuthDecision| match d {
        AuthDecision::Allow(a) => a.user.clone(),
        d => panic!("expected allow, got {d:?}"),
    };
    let named = build(&auth.url("/allow"), |s| {
        s.user_header = Some(HeaderName::from_static("x-user"));
        s.cache = Some(Duration::from_secs(60));
    });
    for _ in 0..2 {
        let d = named.check(&query(&parts)).await.unwrap();
        assert_eq!(user(&d).as_deref(), Some("alice"));
        assert!(copied(&d).is_empty());
    }
    assert_eq!(auth.count(), 1, "the second answer came from the cache");
    let unnamed = service_config(&auth.url("/allow"), |_| {});
    assert_eq!(user(&unnamed.check(&query(&parts)).await.unwrap()), None);
    let absent = build(&auth.url("/allow"), |s| {
        s.user_header = Some(HeaderName::from_static("x-missing"))
    });
    assert_eq!(user(&absent.check(&query(&parts)).await.unwrap()), None);

    let policy = crate::policy::RoutePolicy::new(crate::policy::PolicyRules {
        forward_auth: Some(named),
        ..Default::default()
    });
    let client = crate::policy::forwarding::client_addr(
        &[],
        "203.0.113.7".parse().unwrap(),
        &HeaderMap::new(),
    );
    let facts = crate::policy::RequestFacts {
        scheme: "https",
        host: "chat.example.com",
        client: &client,
        forwarded_for: "203.0.113.7",
        tls_subject: None,
    };
    let mut parts = browser_request();
    let admitted = policy
        .admit(&mut parts, &mut Vec::new(), &facts)
        .await
        .unwrap();
    assert_eq!(admitted.user.as_deref(), Some("alice"));
}

#[tokio::test]
async fn deny_is_passed_through() {
    let auth = FakeAuth::spawn().await;
    let parts = browser_request();

    let fa = service_config(&auth.url("/deny401"), |_| {});
    let (status, headers, body) = denied(fa.check(&query(&parts)).await.unwrap());
    assert_eq!(status, 401);
    assert_eq!(
        values(&headers, "www-authenticate"),
        ["Bearer realm=\"chat\""]
    );
    assert_eq!(values(&headers, "content-type"), ["text/plain"]);
    assert!(headers.get("x-internal").is_none());
    assert_eq!(body, "login required");

    let fa = service_config(&auth.url("/deny302"), |_| {});
    let (status, headers, _) = denied(fa.check(&query(&parts)).await.unwrap());
    assert_eq!(status, 302);
    assert_eq!(
        values(&headers, "location"),
        ["https://login.example.com/?rd=chat"]
    );
    assert_eq!(
        values(&headers, "set-cookie"),
        ["state=xyz; HttpOnly", "flow=1"]
    );
}

#[tokio::test]
async fn failures_are_errors_naming_the_url() {
    let auth = FakeAuth::spawn().await;
    let parts = browser_request();

    let url = auth.url("/slow");
    let fa = service_config(&url, |s| s.timeout = Duration::from_millis(200));
    let e = fa.check(&query(&parts)).await.unwrap_err();
    assert!(e.0.contains(&url) && e.0.contains("200ms"), "{e}");
    assert_eq!(auth.count(), 1, "the service was asked");

    let url = auth.url("/error");
    let e = service_config(&url, |_| {})
        .check(&query(&parts))
        .await
        .unwrap_err();
    assert!(e.0.contains(&url) && e.0.contains("500"), "{e}");

    // Nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/check", closed.local_addr().unwrap());
    drop(closed);
    let e = service_config(&url, |_| {})
        .check(&query(&parts))
        .await
        .unwrap_err();
    assert!(e.0.contains(&url), "{e}");
}

#[tokio::test]
async fn cache_reuses_allows_until_they_expire() {
    let auth = FakeAuth::spawn().await;
    let fa = service_config(&auth.url("/allow"), |s| {
        s.cache = Some(Duration::from_secs(60))
    });
    let parts = browser_request();

    let first = fa.check(&query(&parts)).await.unwrap();
    let second = fa.check(&query(&parts)).await.unwrap();
    assert_eq!(auth.count(), 1, "the second check within the TTL is cached");
    assert_eq!(copied(&first), copied(&second));

    // Different credentials are a different question.
    let mut other = browser_request();
    other
        .headers
        .insert(COOKIE, HeaderValue::from_static("session=other"));
    fa.check(&query(&other)).await.unwrap();
    assert_eq!(auth.count(), 2);

    // Expire the first entry (as if its minute had passed: no waiting on the clock; the
    // expiry arithmetic itself is covered by `cache_entries_expire`).
    let cache = fa.cache.as_ref().unwrap();
    let key = cache.key(&fa.request_headers(&query(&parts)));
    cache.lock().get_mut(&key).unwrap().expires = Instant::now();
    let third = fa.check(&query(&parts)).await.unwrap();
    assert_eq!(auth.count(), 3, "an expired entry is asked again");
    assert_eq!(copied(&first), copied(&third));
    fa.check(&query(&parts)).await.unwrap();
    assert_eq!(auth.count(), 3, "and cached again");
}

#[tokio::test]
async fn refusals_and_errors_are_not_cached() {
    let auth = FakeAuth::spawn().await;
    let parts = browser_request();
    for path in ["/deny401", "/error"] {
        let fa = service_config(&auth.url(path), |s| s.cache = Some(Duration::from_secs(60)));
        let before = auth.count();
        let _ = fa.check(&query(&parts)).await;
        let _ = fa.check(&query(&parts)).await;
        assert_eq!(auth.count(), before + 2, "{path}");
        assert!(fa.cache.as_ref().unwrap().lock().is_empty());
    }
}

#[tokio::test]
async fn https_service_verified_with_the_configured_ca() {
    let (cert, key) = crate::tls::dev_certificate(&["127.0.0.1".to_string()]).unwrap();
    let chain = vec![
        rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes())
            .unwrap()
            .into_owned(),
    ];
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let auth = FakeAuth::spawn_wrapped("https", by_path, move |tcp| acceptor.accept(tcp)).await;
    let dir = TempDir::new("fauth-ca");
    let ca = dir.write("ca.pem", &cert);
    let parts = browser_request();

    let fa = service_config(&auth.url("/allow"), |s| {
        s.tls = crate::http_client::tls_for(&s.url, Some(&ca)).expect("TLS with the CA")
    });
    let d = fa.check(&query(&parts)).await.unwrap();
    assert_eq!(copied(&d)[0], ("x-user".into(), "alice".into()));
    assert_eq!(auth.count(), 1);

    // Without the CA (system roots), the certificate is refused: an error, not an allow.
    let url = auth.url("/allow");
    let e = service_config(&url, |_| {})
        .check(&query(&parts))
        .await
        .unwrap_err();
    assert!(e.0.contains(&url), "{e}");
    assert_eq!(auth.count(), 1);
}

/// An answer's body is read up to `MAX_BODY` and no further: a 2xx with a longer one still
/// allows, and a refusal's goes to the client cut there, rather than either becoming a 503.
#[tokio::test]
async fn a_long_answer_body_is_cut_not_an_error() {
    use crate::test_support::fake_auth::BIG_BODY;
    const { assert!(BIG_BODY > MAX_BODY) };
    let auth = FakeAuth::spawn().await;
    let parts = browser_request();
    let fa = service_config(&auth.url("/big"), |s| {
        s.copy_headers = vec![HeaderName::from_static("x-user")]
    });
    match fa.check(&query(&parts)).await.unwrap() {
        AuthDecision::Allow(allowed) => assert_eq!(
            allowed.headers,
            [(
                HeaderName::from_static("x-user"),
                HeaderValue::from_static("alice")
            )]
        ),
        d => panic!("{d:?}"),
    }
    let fa = service_config(&auth.url("/deny401big"), |_| {});
    let (status, headers, body) = denied(fa.check(&query(&parts)).await.unwrap());
    assert_eq!(status, 401);
    assert_eq!(values(&headers, "content-type"), ["text/html"]);
    assert_eq!(body.len(), MAX_BODY);
}
