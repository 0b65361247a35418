//! Routing and policy see the path the backend will act on: two routes, `/admin` (requires a
//! `session` cookie) and a catch-all `/`, each with its own recording backend. Every spelling
//! of `/admin` either is refused or meets the `/admin` route's policy, and the backend gets
//! the canonical path; the catch-all never sees one of them.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::support::*;

struct TwoRoutes {
    admin: EchoBackend,
    public: EchoBackend,
    gw: Gateway,
}

async fn two_routes(limits: &str) -> TwoRoutes {
    let admin = EchoBackend::spawn().await;
    let public = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{limits}\n{}[route.auth]\nrequire_cookies = [\"session\"]\n{}",
        route("admin", "/admin", &[admin.url()]),
        route("public", "/", &[public.url()]),
    ))
    .await;
    TwoRoutes { admin, public, gw }
}

/// The status of an upgrade request for `target`, with `extra` header lines.
async fn status(gw: &Gateway, target: &str, extra: &str) -> RawResponse {
    raw_exchange(gw.addr, upgrade_request(target, extra).as_bytes())
        .await
        .1
}

/// The request rows of issue #12: each reached the catch-all with its raw path.
const TABLE: &[&str] = &[
    "/admin",
    "/x/../admin",
    "/./admin",
    "//admin",
    "/%61dmin",
    "/%2e%2e/admin",
    "/admin;x",
    "/admin%2f..",
];

#[tokio::test]
async fn every_spelling_of_admin_meets_its_policy_or_is_refused() {
    let t = two_routes("").await;
    for target in TABLE {
        let resp = status(&t.gw, target, "").await;
        assert!(
            resp.status == 403 || resp.status == 400,
            "{target}: {} {}",
            resp.status,
            resp.body
        );
    }
    assert_eq!(t.public.request_count(), 0, "the catch-all got a request");
    assert_eq!(t.admin.request_count(), 0);

    // With the cookie: the admin backend gets the canonical path, or the request is refused
    // with the reason.
    let expect = [
        ("/admin", Ok("/admin")),
        ("/x/../admin", Ok("/admin")),
        ("/./admin", Ok("/admin")),
        ("//admin", Ok("/admin")),
        ("/%61dmin", Ok("/admin")),
        ("/%2e%2e/admin", Err("path climbs above the root")),
        ("/admin;x", Ok("/admin;x")),
        ("/admin%2f..", Err("encoded slash")),
    ];
    for (target, want) in expect {
        let resp = status(&t.gw, target, "Cookie: session=1\r\n").await;
        match want {
            Ok(path) => {
                assert_eq!(resp.status, 101, "{target}: {}", resp.body);
                assert_eq!(t.admin.last_request().uri, path, "{target}");
            }
            Err(reason) => {
                assert_eq!(resp.status, 400, "{target}");
                assert!(resp.body.contains(reason), "{target}: {}", resp.body);
            }
        }
    }
    assert_eq!(t.public.request_count(), 0);
    let counts = t.gw.handle().refusals();
    assert_eq!(counts.get(&("-".into(), "path_invalid")), Some(&4));
    assert_eq!(counts.get(&("admin".into(), "cookie_missing")), Some(&6));
}

#[tokio::test]
async fn the_backend_gets_the_canonical_path_and_the_query_untouched() {
    let t = two_routes("").await;
    let resp = status(&t.gw, "/a/./b//c/../%7Ed%c3%a9?x=%2F..&y=/../", "").await;
    assert_eq!(resp.status, 101, "{}", resp.body);
    assert_eq!(t.public.last_request().uri, "/a/b/~d%C3%A9?x=%2F..&y=/../");
    // Parameters are routed by the segment's name but passed on.
    let resp = status(&t.gw, "/admin;jsessionid=1/room", "Cookie: session=1\r\n").await;
    assert_eq!(resp.status, 101, "{}", resp.body);
    assert_eq!(t.admin.last_request().uri, "/admin;jsessionid=1/room");
}

#[tokio::test]
async fn ambiguous_paths_get_400_with_a_reason() {
    let t = two_routes("").await;
    let cases = [
        ("/a%5Cb", "encoded slash or backslash"),
        ("/a\\b", "backslash"),
        ("/a%00b", "control character"),
        ("/a%zz", "invalid percent escape"),
        ("/..;x/admin", "dot segment with parameters"),
        ("/;x/admin", "parameters but no name"),
        ("*", "must be a path"),
        // The catch-all's by its letters, `/admin` to a backend that reads paths without
        // case or trailing dots (Express, ASP.NET Core, IIS): they went to the catch-all.
        ("/ADMIN/users", "without letter case"),
        ("/%41dmin", "without letter case"),
        ("/admin./users", "trailing dots"),
        ("/admin%20/users", "trailing dots"),
    ];
    for (target, reason) in cases {
        let resp = status(&t.gw, target, "").await;
        assert_eq!(resp.status, 400, "{target}: {}", resp.body);
        assert!(resp.body.contains(reason), "{target}: {}", resp.body);
    }
    assert_eq!(t.public.request_count() + t.admin.request_count(), 0);
}

#[tokio::test]
async fn merge_slashes_off_and_escaped_slashes_kept() {
    let t = two_routes("[limits]\nmerge_slashes = false\nescaped_slashes = \"keep\"\n").await;
    // Unmerged, `//admin` is not `/admin`: the catch-all gets it as written.
    let resp = status(&t.gw, "//admin", "").await;
    assert_eq!(resp.status, 101, "{}", resp.body);
    assert_eq!(t.public.last_request().uri, "//admin");
    // A kept encoded slash is data, as long as reading it as a separator routes the same.
    let resp = status(&t.gw, "/files/a%2fb", "").await;
    assert_eq!(resp.status, 101, "{}", resp.body);
    assert_eq!(t.public.last_request().uri, "/files/a%2Fb");
    // `/admin%2Fx` would be `/admin/x` to a decoding backend: refused, never the catch-all's.
    let before = t.public.request_count();
    let resp = status(&t.gw, "/admin%2Fx", "").await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(resp.body.contains("routes differently"), "{}", resp.body);
    assert_eq!(t.public.request_count(), before);
}

/// Host routing: `admin.example` requires the cookie, any other host is public.
async fn host_routes() -> (EchoBackend, Gateway) {
    let public = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "[[route]]\nname = \"admin\"\nhost = \"admin.example\"\npath = \"/\"\nbackends = [\"{}\"]\n\
         [route.auth]\nrequire_cookies = [\"session\"]\n{}",
        public.url(),
        route("public", "/", &[public.url()]),
    ))
    .await;
    (public, gw)
}

fn request(target: &str, hosts: &[&str]) -> String {
    let hosts: String = hosts.iter().map(|h| format!("Host: {h}\r\n")).collect();
    format!(
        "GET {target} HTTP/1.1\r\n{hosts}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test]
async fn absolute_form_targets_and_host_headers() {
    let (public, gw) = host_routes().await;
    let ask = |target: &'static str, hosts: &'static [&'static str]| {
        let req = request(target, hosts);
        async move { raw_exchange(gw.addr, req.as_bytes()).await.1 }
    };
    // RFC 9112 §3.2.2: the target's authority wins; a Host naming another host is refused.
    let resp = ask("http://admin.example/", &["public.example"]).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(resp.body.contains("does not match"), "{}", resp.body);
    // Agreeing (case, trailing dot, default port): the admin route and its policy.
    let resp = ask("http://Admin.Example./", &["admin.example:80"]).await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    // A trailing dot on Host is the same DNS name: not the catch-all.
    let resp = ask("/", &["admin.example."]).await;
    assert_eq!(resp.status, 403, "{}", resp.body);
    // Two Host headers: say so.
    let resp = ask("/", &["admin.example", "public.example"]).await;
    assert_eq!(resp.status, 400);
    assert!(
        resp.body.contains("more than one Host header"),
        "{}",
        resp.body
    );
    // Userinfo in the target's authority (RFC 9110 §4.2.4: likely there to obscure the host)
    // and a Host header that is not a host: 400, and the backend never asked.
    let resp = ask("http://public.example@admin.example/", &["admin.example"]).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(resp.body.contains("userinfo"), "{}", resp.body);
    let resp = ask("/", &["public.example@admin.example"]).await;
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(
        resp.body.contains("Host header is not a host"),
        "{}",
        resp.body
    );
    assert_eq!(public.request_count(), 0);
    // The absolute form reaches the backend in origin form, canonical.
    let resp = ask("http://public.example/x/../y?q", &["public.example"]).await;
    assert_eq!(resp.status, 101, "{}", resp.body);
    assert_eq!(public.last_request().uri, "/y?q");
}

/// HTTP/2 (RFC 8441, cleartext prior knowledge): `:path` gets the same treatment.
#[tokio::test]
async fn http2_paths_are_canonical_too() {
    let t = two_routes("").await;
    let tcp = TcpStream::connect(t.gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let authority = t.gw.addr.to_string();
    let mut connect = async |path: &str, cookie: bool| {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(format!("http://{authority}{path}"))
            .header("sec-websocket-version", "13");
        if cookie {
            req = req.header("cookie", "session=1");
        }
        let mut req = req.body(Empty::new()).unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        send.ready().await.unwrap();
        tokio::time::timeout(STEP, send.send_request(req))
            .await
            .expect("no answer to CONNECT")
            .unwrap()
            .status()
    };
    assert_eq!(connect("/x/../admin", false).await, StatusCode::FORBIDDEN);
    assert_eq!(
        connect("/%2e%2e/admin", false).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(connect("/x/..//%61dmin", true).await, StatusCode::OK);
    assert_eq!(t.admin.last_request().uri, "/admin");
    assert_eq!(t.public.request_count(), 0);
}

/// The policy sees the canonical path too: forward auth is asked about `/admin`, not about
/// `/x/../admin`, which an auth service matching prefixes would wave through.
#[tokio::test]
async fn forward_auth_is_asked_about_the_canonical_path() {
    let auth = crate::support::fake_auth::FakeAuth::spawn().await;
    let backend = EchoBackend::spawn().await;
    let gw = Gateway::spawn(&format!(
        "{}[route.auth.forward_auth]\nurl = \"{}\"\n",
        route("app", "/", &[backend.url()]),
        auth.url("/allow"),
    ))
    .await;
    let resp = status(&gw, "/x/.././/%61dmin;v=1?q=%2e%2e", "").await;
    assert_eq!(resp.status, 101, "{}", resp.body);
    assert_eq!(
        auth.last().headers["x-forwarded-uri"],
        "/admin;v=1?q=%2e%2e"
    );
    assert_eq!(backend.last_request().uri, "/admin;v=1?q=%2e%2e");
}
