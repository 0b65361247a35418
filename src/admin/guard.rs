//! Who may ask the admin listener what: a `tower` layer in front of the router.
//!
//! - `/healthz` and `/readyz` are open to anyone who can reach the port (load balancers and
//!   orchestrators probe them without credentials), and so are the status page's HTML (it
//!   holds no data: its requests carry the credentials) and `POST /api/login`.
//! - With a token: every other endpoint needs it on a non-loopback listener, and write
//!   endpoints need it even on loopback (reads there do not, when the request names a
//!   loopback host: see below). It comes as `Authorization: Bearer <token>` or as the
//!   cookie `POST /api/login` sets for the status page.
//! - Without a token (loopback only, which `config` enforces): a request must name a loopback
//!   host (`127.0.0.1`, `[::1]`, `localhost`), so a web page whose name an attacker points at
//!   127.0.0.1 (DNS rebinding) cannot use the API through the operator's browser.
//! - Every write is `Content-Type: application/json`, and an `Origin`, when sent, must be the
//!   admin listener itself: a page elsewhere cannot make the operator's browser send such a
//!   request (cross-site request forgery) without a CORS preflight, which is never answered.

// The error side of these results is the HTTP answer itself, made once per admin request:
// boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Method, Request, Response, StatusCode, header};

use super::Body;
use crate::config::AdminToken;

/// The cookie `POST /api/login` sets for the status page.
pub const COOKIE: &str = "wsgate_admin";

/// The rules one admin listener enforces.
#[derive(Debug, Clone)]
pub struct Rules {
    pub token: Option<AdminToken>,
    /// The listener is on a loopback address.
    pub loopback: bool,
}

/// Adds [`Guard`] in front of a service.
#[derive(Debug, Clone)]
pub struct GuardLayer(pub Arc<Rules>);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            rules: self.0.clone(),
        }
    }
}

/// Refuses what the rules (see the module docs) do not allow; passes the rest on.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    rules: Arc<Rules>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<Request<B>> for Guard<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.rules.check(req.method(), req.uri(), req.headers()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(refusal) => Box::pin(std::future::ready(Ok(refusal))),
        }
    }
}

impl Rules {
    /// `Ok` if the request may go on; else the answer.
    pub fn check(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<(), Response<Body>> {
        let path = uri.path();
        let host = request_host(uri, headers);
        let write = !matches!(*method, Method::GET | Method::HEAD);
        if self.token.is_none() && !host.is_some_and(loopback_host) && !probe(path) {
            return Err(super::json_error(
                StatusCode::FORBIDDEN,
                "this admin listener has no token, so it answers only requests for a loopback \
                 host (127.0.0.1, [::1], localhost)",
            ));
        }
        // Of the methods that write, only POST can come from a cross-site form or a simple
        // `fetch`; the others need a CORS preflight, which is never answered. A POST to a path
        // that takes none (`/healthz`) goes on to the router's 405.
        if *method == Method::POST && super::api::is_write(path) {
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(';')
                        .next()
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
                });
            if !json {
                return Err(super::json_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "write requests must be Content-Type: application/json",
                ));
            }
            if !same_origin(headers, host) {
                return Err(super::json_error(
                    StatusCode::FORBIDDEN,
                    "the request's Origin is not this admin listener",
                ));
            }
        }
        let Some(token) = &self.token else {
            return Ok(());
        };
        // Token-less reads on a loopback listener only for a loopback host, as without a
        // token: a page at a name rebound to 127.0.0.1 must not read the session list.
        let open =
            public(method, path) || (!write && self.loopback && host.is_some_and(loopback_host));
        if open || presented(headers).is_some_and(|t| token_eq(t, &token.0)) {
            return Ok(());
        }
        let mut refusal =
            super::json_error(StatusCode::UNAUTHORIZED, "a valid admin token is required");
        refusal.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"wsgate admin\""),
        );
        Err(refusal)
    }
}

/// Health probes: open to anyone who reaches the port, whatever Host they name, with any
/// method: the router answers anything but GET and HEAD with its 405, which says more than
/// a 401 for a token these paths never need.
fn probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// Paths that need no token: the probes, the status page's HTML (no data in it) and the
/// login that sets the page's cookie (it checks the token itself).
fn public(method: &Method, path: &str) -> bool {
    probe(path)
        || (matches!(*method, Method::GET | Method::HEAD) && path == "/")
        || (*method == Method::POST && path == "/api/login")
}

/// The host the request is for: its target's authority (HTTP/2's `:authority`, which
/// hyper puts in the URI and does not copy to a `Host` field; or an HTTP/1.1 absolute-form
/// target), else its one `Host` field. `None` when there is neither, when there are two
/// `Host` fields, or when `Host` names another authority than the target (RFC 9113 §8.3.1
/// calls such a request malformed): the checks that need a host then fail closed.
fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let mut fields = headers.get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return None;
    }
    let field = match field {
        Some(v) => Some(v.to_str().ok()?),
        None => None,
    };
    match (uri.authority().map(|a| a.as_str()), field) {
        (Some(a), Some(h)) => a.eq_ignore_ascii_case(h).then_some(a),
        (a, h) => a.or(h),
    }
}

/// `host` (the request's, see [`request_host`]) names a loopback address or `localhost`
/// (any port).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// No `Origin`, or one whose authority is the request's host (see [`request_host`]).
fn same_origin(headers: &HeaderMap, host: Option<&str>) -> bool {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return true;
    };
    if origins.next().is_some() {
        // A browser sends one; which of two the check would read is not worth guessing.
        return false;
    }
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, a)| a);
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// The token the request presents: `Authorization: Bearer`, else the page's cookie.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    bearer.or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
    })
}

/// Compares in time independent of where the first difference is.
pub fn token_eq(presented: &str, token: &str) -> bool {
    let (a, b) = (presented.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn rules(token: Option<&str>, loopback: bool) -> Rules {
        Rules {
            token: token.map(|t| AdminToken(t.into())),
            loopback,
        }
    }

    fn status(r: &Rules, method: Method, path: &str, h: &[(&str, &str)]) -> u16 {
        match r.check(&method, &path.parse().unwrap(), &headers(h)) {
            Ok(()) => 200,
            Err(resp) => resp.status().as_u16(),
        }
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn without_a_token_only_loopback_hosts_are_answered() {
        let r = rules(None, true);
        assert_eq!(
            status(
                &r,
                Method::GET,
                "/api/sessions",
                &[("host", "127.0.0.1:9901")]
            ),
            200
        );
        assert_eq!(
            status(&r, Method::GET, "/metrics", &[("host", "localhost:9901")]),
            200
        );
        assert_eq!(
            status(&r, Method::GET, "/metrics", &[("host", "[::1]:9901")]),
            200
        );
        assert_eq!(
            status(
                &r,
                Method::GET,
                "/metrics",
                &[("host", "evil.example:9901")]
            ),
            403
        );
        assert_eq!(status(&r, Method::GET, "/metrics", &[]), 403);
        // Probes are answered whatever the Host.
        assert_eq!(
            status(&r, Method::GET, "/readyz", &[("host", "10.0.0.1:9901")]),
            200
        );
    }

    /// HTTP/2 names the host in `:authority`, which hyper puts in the URI and does not copy
    /// to a `Host` field (nor does an HTTP/1.1 absolute-form target need one to agree): the
    /// target's authority counts as the request's host. Every request over HTTP/2 was taken
    /// for one without a host: 403 without a token, 401 for a token-less read on loopback,
    /// and a same-origin write refused. A `Host` naming another authority than the target,
    /// or two of them, fails closed.
    #[test]
    fn the_targets_authority_is_the_requests_host() {
        let r = rules(None, true);
        let json = ("content-type", "application/json");
        assert_eq!(
            status(&r, Method::GET, "http://127.0.0.1:9901/metrics", &[]),
            200
        );
        assert_eq!(
            status(&r, Method::GET, "http://evil.example:9901/metrics", &[]),
            403
        );
        assert_eq!(
            status(
                &r,
                Method::POST,
                "http://127.0.0.1:9901/api/reload",
                &[json, ("origin", "http://127.0.0.1:9901")]
            ),
            200
        );
        // Host and authority must agree (case aside).
        assert_eq!(
            status(
                &r,
                Method::GET,
                "http://LOCALHOST:9901/metrics",
                &[("host", "localhost:9901")]
            ),
            200
        );
        assert_eq!(
            status(
                &r,
                Method::GET,
                "http://127.0.0.1:9901/metrics",
                &[("host", "evil.example")]
            ),
            403
        );
        assert_eq!(
            status(
                &r,
                Method::GET,
                "/metrics",
                &[("host", "127.0.0.1"), ("host", "127.0.0.1")]
            ),
            403
        );
        let token = rules(Some("0123456789abcdef0123"), true);
        assert_eq!(
            status(&token, Method::GET, "http://[::1]:9901/api/sessions", &[]),
            200
        );
    }

    #[test]
    fn writes_need_json_and_a_same_origin() {
        let r = rules(None, true);
        let host = ("host", "127.0.0.1:9901");
        // Every write endpoint; a POST elsewhere is the router's to refuse (405 or 404).
        for write in [
            "/api/sessions/1/close",
            "/api/backends/drain",
            "/api/backends/undrain",
            "/api/reload",
            "/api/login",
        ] {
            assert_eq!(status(&r, Method::POST, write, &[host]), 415, "{write}");
        }
        for other in ["/healthz", "/metrics", "/api/sessions", "/nowhere"] {
            assert_eq!(status(&r, Method::POST, other, &[host]), 200, "{other}");
        }
        assert_eq!(
            status(&r, Method::POST, "/api/sessions/1/close", &[host]),
            415
        );
        assert_eq!(
            status(
                &r,
                Method::POST,
                "/api/sessions/1/close",
                &[host, ("content-type", "text/plain")]
            ),
            415
        );
        assert_eq!(
            status(&r, Method::POST, "/api/sessions/1/close", &[host, JSON]),
            200
        );
        assert_eq!(
            status(
                &r,
                Method::POST,
                "/api/reload",
                &[host, JSON, ("origin", "http://127.0.0.1:9901")]
            ),
            200
        );
        assert_eq!(
            status(
                &r,
                Method::POST,
                "/api/reload",
                &[host, JSON, ("origin", "https://evil.example")]
            ),
            403
        );
        // Two Origin headers, the first the listener itself: refused, whatever the order.
        assert_eq!(
            status(
                &r,
                Method::POST,
                "/api/reload",
                &[
                    host,
                    JSON,
                    ("origin", "http://127.0.0.1:9901"),
                    ("origin", "https://evil.example")
                ]
            ),
            403
        );
    }

    #[test]
    fn a_token_guards_writes_on_loopback_and_everything_elsewhere() {
        let token = "0123456789abcdef0123";
        let host = ("host", "127.0.0.1:9901");
        let bearer = format!("Bearer {token}");
        let cookie = format!("a=b; {COOKIE}={token}");
        let lo = rules(Some(token), true);
        assert_eq!(status(&lo, Method::GET, "/metrics", &[host]), 200);
        assert_eq!(
            status(&lo, Method::POST, "/api/backends/drain", &[host, JSON]),
            401
        );
        assert_eq!(
            status(
                &lo,
                Method::POST,
                "/api/backends/drain",
                &[host, JSON, ("authorization", &bearer)]
            ),
            200
        );
        let net = rules(Some(token), false);
        let far = ("host", "wsgate.internal:9901");
        assert_eq!(status(&net, Method::GET, "/metrics", &[far]), 401);
        assert_eq!(
            status(
                &net,
                Method::GET,
                "/metrics",
                &[far, ("authorization", "Bearer nope")]
            ),
            401
        );
        assert_eq!(
            status(
                &net,
                Method::GET,
                "/metrics",
                &[far, ("authorization", &bearer)]
            ),
            200
        );
        assert_eq!(
            status(
                &net,
                Method::GET,
                "/api/sessions",
                &[far, ("cookie", &cookie)]
            ),
            200
        );
        for open in ["/healthz", "/readyz", "/"] {
            assert_eq!(status(&net, Method::GET, open, &[far]), 200, "{open}");
        }
        // Any method on a probe goes on to the router (its 405), not a 401 for a token.
        for probe in ["/healthz", "/readyz"] {
            for m in [Method::POST, Method::PUT, Method::DELETE] {
                assert_eq!(status(&net, m.clone(), probe, &[far]), 200, "{m} {probe}");
            }
        }
        assert_eq!(status(&net, Method::POST, "/api/login", &[far, JSON]), 200);
    }

    #[test]
    fn token_comparison() {
        assert!(token_eq("abc", "abc"));
        assert!(!token_eq("abd", "abc"));
        assert!(!token_eq("ab", "abc"));
    }
}
