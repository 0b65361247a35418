//! Forward-auth: a subrequest to an auth service decides whether a handshake may proceed
//! (nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`).
//!
//! For each handshake on a route with `[route.auth.forward_auth]`, the proxy sends
//! `GET <url>` to the auth service with the client's credentials (`Cookie`, `Authorization`,
//! `Sec-WebSocket-Protocol`), its `Origin` and `User-Agent`, the configured `forward_headers`,
//! and `X-Forwarded-{For,Proto,Host,Uri,Method}` describing the handshake. The client's `Host`
//! is never sent: the URL's authority is the subrequest's `Host`.
//!
//! The answer decides:
//! - 2xx: allowed; the `copy_headers` of the answer are added to the backend request (the
//!   client's own headers of those names are removed by the caller, so they cannot be forged).
//! - 3xx and 4xx: refused; the status, a few useful headers (`WWW-Authenticate`, `Location`,
//!   `Set-Cookie`, `Content-Type`, `Cache-Control`) and the body go back to the client.
//! - 5xx, a timeout, a connection error, or an answer body over 64 KiB: the service could not
//!   decide, and the client gets 503 ([`ForwardAuthError`]).
//!
//! Allow decisions may be cached for a short time (`cache`), keyed by everything the auth
//! service saw; refusals and errors never are.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, ORIGIN, SEC_WEBSOCKET_PROTOCOL,
    SET_COOKIE, USER_AGENT, WWW_AUTHENTICATE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use toml::Spanned;

use crate::config::Validator;
use crate::config::file::SpStr;
use crate::http_client::{ClientError, HttpClient};

/// `[route.auth.forward_auth]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwardAuth {
    /// The auth service's URL (`http://` or `https://`), asked with `GET`. Required.
    pub url: Option<SpStr>,
    /// Time allowed for the whole subrequest, answer body included (default `"2s"`).
    pub timeout: Option<SpStr>,
    /// Answer headers copied onto the backend request when the service allows, e.g.
    /// `["X-User", "X-Roles"]`.
    pub copy_headers: Option<Spanned<Vec<SpStr>>>,
    /// Client request headers sent to the auth service besides the defaults (`Cookie`,
    /// `Authorization`, `Origin`, `User-Agent`, `Sec-WebSocket-Protocol`).
    pub forward_headers: Option<Spanned<Vec<SpStr>>>,
    /// How long an allow decision is reused for an identical request (default off).
    pub cache: Option<SpStr>,
    /// PEM CA bundle to verify an `https://` auth service with (default: the system's roots).
    pub ca: Option<SpStr>,
}

/// What the auth service is told about the handshake.
pub struct AuthQuery<'a> {
    /// The client's request as received.
    pub parts: &'a Parts,
    /// The request's path and query as the backend will see them (a token in the query
    /// already removed): the auth service is told this, not the raw URI.
    pub uri: &'a http::Uri,
    /// The client's address (after PROXY protocol and trusted forwarding headers).
    pub client: IpAddr,
    /// `X-Forwarded-For` as it will be sent to the backend.
    pub forwarded_for: &'a str,
    /// `http` or `https`, as seen by the client.
    pub scheme: &'a str,
    /// The request's host (with port, as the client sent it).
    pub host: &'a str,
}

/// The auth service's answer.
#[derive(Debug)]
pub enum AuthDecision {
    /// 2xx: proceed, adding these headers (the configured copies) to the backend request.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// 3xx or 4xx (401, 403, a login redirect...): passed to the client. `headers` holds only
    /// [`DENY_HEADERS`] of the answer.
    Deny {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// The auth service could not be asked (timeout, connection error) or failed (5xx): the
/// client gets 503. The message names the URL.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ForwardAuthError(pub String);

/// Default for `timeout`. The subrequest sits in every handshake's path, before the backend
/// is even dialled: a healthy auth service on the same network answers in milliseconds (on a
/// pooled, kept-alive connection), and a client's handshake should not hang for long on a
/// stuck one. Two seconds leave room for a slow database lookup or a TLS handshake to a cold
/// service while staying well inside the listener's 10 s handshake timeout and the patience
/// of browser reconnect logic. (nginx inherits 60 s from `proxy_read_timeout`; Traefik has no
/// timeout of its own: both are tuned for page loads, not for a check in front of a handshake.)
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest answer body read from the auth service; a longer one is an error (503). Enough for
/// a JSON error or a small login page.
pub const MAX_BODY: usize = 64 * 1024;

/// Most allow decisions held in the cache, so that a flood of distinct credentials cannot
/// grow memory without bound.
pub const CACHE_MAX_ENTRIES: usize = 10_000;

/// Client request headers always sent to the auth service (all their values).
const DEFAULT_FORWARDED: [HeaderName; 5] = [
    COOKIE,
    AUTHORIZATION,
    ORIGIN,
    USER_AGENT,
    SEC_WEBSOCKET_PROTOCOL,
];

/// Answer headers passed to the client with a refusal.
pub const DENY_HEADERS: [HeaderName; 5] = [
    WWW_AUTHENTICATE,
    LOCATION,
    SET_COOKIE,
    CONTENT_TYPE,
    CACHE_CONTROL,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");

/// Headers that may not be listed in `forward_headers`: the subrequest's own framing and
/// routing (hop-by-hop, `Host`), and the `X-Forwarded-*` the proxy writes itself.
const NOT_FORWARDABLE: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "expect",
];

/// A route's forward-auth settings and its decision cache.
#[derive(Debug)]
pub struct ForwardAuth {
    url: Uri,
    timeout: Duration,
    copy_headers: Vec<HeaderName>,
    /// Extra client headers sent along (never one of [`DEFAULT_FORWARDED`]).
    forward_headers: Vec<HeaderName>,
    cache: Option<Cache>,
    client: HttpClient,
}

impl ForwardAuth {
    /// The headers copied from the auth service's answer to the backend request; the
    /// client's own headers of these names are always removed.
    pub fn copy_headers(&self) -> &[HeaderName] {
        &self.copy_headers
    }

    /// Asks the auth service (or the cache) about a handshake.
    pub async fn check(&self, q: &AuthQuery<'_>) -> Result<AuthDecision, ForwardAuthError> {
        let headers = self.request_headers(q);
        let cache_key = self.cache.as_ref().map(|c| (c, c.key(&headers)));
        if let Some((cache, key)) = &cache_key
            && let Some(copied) = cache.get(key, Instant::now())
        {
            tracing::debug!(url = %self.url, client = %q.client, "forward-auth: allowed (cached)");
            return Ok(AuthDecision::Allow(copied));
        }

        let mut req = Request::get(self.url.clone())
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.error(e.to_string()))?;
        *req.headers_mut() = headers;
        let started = Instant::now();
        let resp = match self.client.send(req, self.timeout, MAX_BODY).await {
            Ok(r) => r,
            Err(e) => {
                let reason = match e {
                    ClientError::Timeout(d) => format!("no answer within {d:?}"),
                    ClientError::BodyTooLarge(n) => format!("answer body over {n} bytes"),
                    ClientError::Request(m) => m,
                };
                let err = self.error(reason);
                tracing::warn!(
                    client = %q.client,
                    latency_ms = started.elapsed().as_millis() as u64,
                    "forward-auth: {err}; answering 503"
                );
                return Err(err);
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let status = resp.status();
        let decision = decide(&self.copy_headers, resp).map_err(|reason| {
            let err = self.error(reason);
            tracing::warn!(client = %q.client, latency_ms, "forward-auth: {err}; answering 503");
            err
        })?;
        match &decision {
            AuthDecision::Allow(copied) => {
                tracing::debug!(
                    url = %self.url,
                    client = %q.client,
                    status = status.as_u16(),
                    latency_ms,
                    "forward-auth: allowed"
                );
                if let Some((cache, key)) = cache_key {
                    cache.insert(key, copied.clone(), Instant::now());
                }
            }
            AuthDecision::Deny { .. } => {
                tracing::debug!(
                    url = %self.url,
                    client = %q.client,
                    status = status.as_u16(),
                    latency_ms,
                    "forward-auth: refused"
                );
            }
        }
        Ok(decision)
    }

    fn error(&self, reason: impl std::fmt::Display) -> ForwardAuthError {
        ForwardAuthError(format!("{}: {reason}", self.url))
    }

    /// The subrequest's headers: the client's credentials and the configured extras (every
    /// value, in the client's order), then the `X-Forwarded-*` describing the handshake. No
    /// `Host`: the client fills it in from the URL.
    fn request_headers(&self, q: &AuthQuery<'_>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in DEFAULT_FORWARDED.iter().chain(&self.forward_headers) {
            for value in q.parts.headers.get_all(name) {
                h.append(name.clone(), value.clone());
            }
        }
        let uri = q.uri.path_and_query().map_or("/", |p| p.as_str());
        for (name, value) in [
            (X_FORWARDED_FOR, q.forwarded_for),
            (X_FORWARDED_PROTO, q.scheme),
            (X_FORWARDED_HOST, q.host),
            (X_FORWARDED_URI, uri),
            // The WebSocket handshake is a GET (HTTP/2's extended CONNECT included).
            (X_FORWARDED_METHOD, "GET"),
        ] {
            if let Ok(v) = HeaderValue::from_str(value)
                && !value.is_empty()
            {
                h.insert(name, v);
            }
        }
        h
    }
}

/// Turns the auth service's answer into a decision; `Err` (a reason) for a 5xx or other
/// status that decides nothing.
fn decide(
    copy_headers: &[HeaderName],
    resp: http::Response<Bytes>,
) -> Result<AuthDecision, String> {
    let status = resp.status();
    if status.is_success() {
        let mut copied = Vec::new();
        for name in copy_headers {
            for value in resp.headers().get_all(name) {
                copied.push((name.clone(), value.clone()));
            }
        }
        Ok(AuthDecision::Allow(copied))
    } else if status.is_redirection() || status.is_client_error() {
        let (parts, body) = resp.into_parts();
        Ok(AuthDecision::Deny {
            status,
            headers: deny_headers(&parts.headers),
            body,
        })
    } else {
        Err(format!("answered {status}"))
    }
}

/// The answer headers a refusal passes to the client (every value of each).
fn deny_headers(answer: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in &DENY_HEADERS {
        for value in answer.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Allow decisions by request, for `ttl`.
///
/// The key is HMAC-SHA1, under a random key drawn when the config is loaded, of a
/// length-prefixed encoding of every header the auth service was sent (credentials,
/// forwarded headers, `X-Forwarded-*` with the client's address, host and URI). The encoding
/// is injective, so different requests are different inputs; and since the HMAC key is
/// secret, a client cannot search offline for a request that collides with someone else's
/// allowed one. (HMAC does not rely on SHA-1's broken collision resistance; a plain hash of
/// the facts, or a `DefaultHasher`, would let collisions be computed.)
struct Cache {
    ttl: Duration,
    max_entries: usize,
    hmac_key: [u8; 64],
    entries: Mutex<HashMap<[u8; 20], Cached>>,
}

struct Cached {
    expires: Instant,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Cache {
    // Not the HMAC key, not the entries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl Cache {
    fn new(ttl: Duration, max_entries: usize) -> Cache {
        Cache {
            ttl,
            max_entries: max_entries.max(1),
            hmac_key: rand::random(),
            entries: Mutex::default(),
        }
    }

    fn key(&self, headers: &HeaderMap) -> [u8; 20] {
        let mut inner = Sha1::new();
        inner.update(self.hmac_key.map(|b| b ^ 0x36));
        for (name, value) in headers {
            for part in [name.as_str().as_bytes(), value.as_bytes()] {
                inner.update((part.len() as u64).to_be_bytes());
                inner.update(part);
            }
        }
        let mut outer = Sha1::new();
        outer.update(self.hmac_key.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 20], Cached>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The copied headers of a live allow decision; an expired one is dropped.
    fn get(&self, key: &[u8; 20], now: Instant) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let mut map = self.lock();
        match map.get(key) {
            Some(e) if e.expires > now => Some(e.headers.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Records an allow decision. When full: drop the expired entries, and if that frees too
    /// little, arbitrary ones down to 90 % of the bound, so that the O(n) sweep runs at most
    /// once per n/10 insertions.
    fn insert(&self, key: [u8; 20], headers: Vec<(HeaderName, HeaderValue)>, now: Instant) {
        let mut map = self.lock();
        if map.len() >= self.max_entries && !map.contains_key(&key) {
            map.retain(|_, e| e.expires > now);
            let low = (self.max_entries * 9 / 10).min(self.max_entries - 1);
            if map.len() > low {
                let victims: Vec<[u8; 20]> = map.keys().take(map.len() - low).copied().collect();
                for v in &victims {
                    map.remove(v);
                }
            }
        }
        map.insert(
            key,
            Cached {
                expires: now + self.ttl,
                headers,
            },
        );
    }
}

/// Validates `[route.auth.forward_auth]`, reading the CA file now so that errors name key
/// and line.
pub(crate) fn validate(
    v: &mut Validator<'_>,
    key: &str,
    f: &Spanned<FileForwardAuth>,
) -> Option<Arc<ForwardAuth>> {
    let t = f.get_ref();
    let url = match &t.url {
        None => {
            v.err(
                format!("{key}.url"),
                Some(f.span()),
                "required: the auth service's URL, e.g. url = \"http://auth.internal/check\"",
            );
            None
        }
        Some(u) => match crate::http_client::parse_http_url(u.get_ref().trim()) {
            Ok(url) => Some(url),
            Err(m) => {
                v.err(format!("{key}.url"), Some(u.span()), m);
                None
            }
        },
    };
    let timeout = v.duration(
        &format!("{key}.timeout"),
        t.timeout.as_ref(),
        DEFAULT_TIMEOUT,
    );
    let cache = v.optional_duration(&format!("{key}.cache"), t.cache.as_ref(), None);

    let mut copy_headers: Vec<HeaderName> = Vec::new();
    for (i, s) in list(&t.copy_headers).iter().enumerate() {
        let k = format!("{key}.copy_headers[{i}]");
        let Some(h) = super::header_name(v, &k, s.get_ref(), s.span()) else {
            continue;
        };
        if super::RESERVED_HEADERS.contains(&h.as_str()) {
            v.err(
                k,
                Some(s.span()),
                format!("{h} is built by the proxy itself"),
            );
        } else if copy_headers.contains(&h) {
            v.err(k, Some(s.span()), format!("{h} is listed twice"));
        } else {
            copy_headers.push(h);
        }
    }

    let mut forward_headers: Vec<HeaderName> = Vec::new();
    for (i, s) in list(&t.forward_headers).iter().enumerate() {
        let k = format!("{key}.forward_headers[{i}]");
        let Some(h) = super::header_name(v, &k, s.get_ref(), s.span()) else {
            continue;
        };
        if NOT_FORWARDABLE.contains(&h.as_str()) {
            v.err(
                k,
                Some(s.span()),
                format!("{h} belongs to the subrequest itself and cannot be forwarded"),
            );
        } else if h.as_str().starts_with("x-forwarded-") {
            v.err(
                k,
                Some(s.span()),
                format!(
                    "{h}: the proxy sends X-Forwarded-For, -Proto, -Host, -Uri and -Method itself"
                ),
            );
        } else if !DEFAULT_FORWARDED.contains(&h) && !forward_headers.contains(&h) {
            // The defaults are always sent; listing one again is harmless.
            forward_headers.push(h);
        }
    }

    let url = url?;
    if let Some(ca) = &t.ca
        && url.scheme_str() != Some("https")
    {
        v.err(
            format!("{key}.ca"),
            Some(ca.span()),
            "set, but url is not https://",
        );
        return None;
    }
    let ca_path = t.ca.as_ref().map(|ca| v.base.join(ca.get_ref()));
    let tls = match crate::http_client::tls_for(&url, ca_path.as_deref()) {
        Ok(c) => c,
        Err(m) => {
            match &t.ca {
                Some(ca) => v.err(format!("{key}.ca"), Some(ca.span()), m),
                None => v.err(format!("{key}.url"), t.url.as_ref().map(|u| u.span()), m),
            }
            return None;
        }
    };

    Some(Arc::new(ForwardAuth {
        url,
        timeout,
        copy_headers,
        forward_headers,
        cache: cache.map(|ttl| Cache::new(ttl, CACHE_MAX_ENTRIES)),
        client: HttpClient::new(tls),
    }))
}

fn list(l: &Option<Spanned<Vec<SpStr>>>) -> &[SpStr] {
    l.as_ref()
        .map(|l| l.get_ref().as_slice())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::net::SocketAddr;

    use http::Response;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use crate::config::ConfigError;

    /// A route with `[route.auth.forward_auth]` holding `table`, validated.
    fn build(table: &str) -> Result<Arc<ForwardAuth>, Vec<ConfigError>> {
        let toml = format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\n\
             backends = [\"ws://127.0.0.1:1\"]\n\n[route.auth.forward_auth]\n{table}"
        );
        let config = crate::config::from_toml_str(&toml)?;
        Ok(config.routes[0]
            .policy
            .forward_auth
            .clone()
            .expect("forward_auth configured"))
    }

    fn errors(table: &str) -> Vec<ConfigError> {
        build(table).expect_err("config should be refused")
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

    // ---- configuration ----

    #[test]
    fn defaults() {
        let fa = build("url = \"http://auth.internal/check\"").unwrap();
        assert_eq!(fa.url, "http://auth.internal/check");
        assert_eq!(fa.timeout, DEFAULT_TIMEOUT);
        assert!(fa.copy_headers().is_empty());
        assert!(fa.forward_headers.is_empty());
        assert!(fa.cache.is_none());
    }

    #[test]
    fn all_keys() {
        let fa = build(
            "url = \"https://auth.internal:8443/check?x=1\"\ntimeout = \"750ms\"\n\
             copy_headers = [\"X-User\", \"x-roles\"]\n\
             forward_headers = [\"X-Tenant\", \"Cookie\", \"x-tenant\"]\ncache = \"30s\"\n",
        )
        .unwrap();
        assert_eq!(fa.timeout, Duration::from_millis(750));
        assert_eq!(fa.copy_headers(), ["x-user", "x-roles"]);
        // Defaults listed again, and repeats, are sent once.
        assert_eq!(fa.forward_headers, ["x-tenant"]);
        assert_eq!(fa.cache.as_ref().unwrap().ttl, Duration::from_secs(30));
        assert!(
            build("url = \"http://a/\"\ncache = \"off\"")
                .unwrap()
                .cache
                .is_none()
        );
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = errors("timeout = \"1s\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "route[0].auth.forward_auth.url");
        assert!(e[0].message.contains("required"), "{e:?}");

        let e = errors("url = \"ftp://auth/\"\n");
        assert_eq!(
            (e[0].key.as_str(), e[0].line),
            ("route[0].auth.forward_auth.url", Some(10))
        );

        let e = errors(
            "url = \"http://auth/\"\ntimeout = \"soon\"\ncache = \"1x\"\n\
             copy_headers = [\"X-User\", \"bad header\", \"Upgrade\", \"x-user\"]\n\
             forward_headers = [\"Host\", \"X-Forwarded-For\", \"Connection\", \"ok\"]\n",
        );
        let got: Vec<(&str, Option<usize>)> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
        let k = |s: &str| format!("route[0].auth.forward_auth.{s}");
        assert_eq!(
            got,
            [
                (k("timeout").as_str(), Some(11)),
                (k("cache").as_str(), Some(12)),
                (k("copy_headers[1]").as_str(), Some(13)),
                (k("copy_headers[2]").as_str(), Some(13)),
                (k("copy_headers[3]").as_str(), Some(13)),
                (k("forward_headers[0]").as_str(), Some(14)),
                (k("forward_headers[1]").as_str(), Some(14)),
                (k("forward_headers[2]").as_str(), Some(14)),
            ],
            "{e:#?}"
        );

        let e = errors("url = \"http://auth/\"\nnope = 1\n");
        assert!(e[0].message.contains("unknown key \"nope\""), "{e:?}");
    }

    #[test]
    fn ca_errors() {
        let e = errors("url = \"http://auth/\"\nca = \"ca.pem\"\n");
        assert_eq!(e[0].key, "route[0].auth.forward_auth.ca");
        assert!(e[0].message.contains("not https"), "{e:?}");
        let e = errors("url = \"https://auth/\"\nca = \"/nonexistent/ca.pem\"\n");
        assert_eq!(
            (e[0].key.as_str(), e[0].line),
            ("route[0].auth.forward_auth.ca", Some(11))
        );
        assert!(e[0].message.contains("/nonexistent/ca.pem"), "{e:?}");
    }

    // ---- the subrequest ----

    #[test]
    fn request_headers_carry_credentials_and_forwarded_facts() {
        let fa = build("url = \"http://auth/\"\nforward_headers = [\"X-Tenant\"]").unwrap();
        let parts = browser_request();
        let h = fa.request_headers(&query(&parts));
        assert_eq!(values(&h, "cookie"), ["session=abc", "theme=dark"]);
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
        let fa = build("url = \"http://auth/\"").unwrap();
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
            AuthDecision::Allow(h) => assert_eq!(
                h.iter()
                    .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
                    .collect::<Vec<_>>(),
                [("x-user", "alice"), ("x-roles", "a"), ("x-roles", "b")]
            ),
            d => panic!("{d:?}"),
        }
        // Missing copies are simply absent.
        match decide(&copy, answer(204, &[], "")).unwrap() {
            AuthDecision::Allow(h) => assert!(h.is_empty()),
            d => panic!("{d:?}"),
        }

        let deny = answer(
            401,
            &[
                ("www-authenticate", "Bearer realm=\"chat\""),
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
        match decide(&copy, deny).unwrap() {
            AuthDecision::Deny {
                status,
                headers,
                body,
            } => {
                assert_eq!(status, 401);
                assert_eq!(body, "nope!");
                assert_eq!(values(&headers, "set-cookie"), ["a=1", "b=2"]);
                let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
                assert_eq!(
                    names,
                    [
                        "www-authenticate",
                        "set-cookie",
                        "content-type",
                        "cache-control"
                    ]
                );
            }
            d => panic!("{d:?}"),
        }
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
        let h = vec![(
            HeaderName::from_static("x-user"),
            HeaderValue::from_static("alice"),
        )];
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
            c.insert([i; 20], Vec::new(), t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        for i in 50..100u8 {
            c.insert([i; 20], Vec::new(), t1);
        }
        assert_eq!(c.lock().len(), 100);
        // Full: the first 50 have expired by t0 + 11s, and only they go.
        let t2 = t0 + Duration::from_secs(11);
        c.insert([200; 20], Vec::new(), t2);
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
            c.insert(k, Vec::new(), t0);
            max_seen = max_seen.max(c.lock().len());
            // The newest entry is always kept.
            assert!(c.get(&k, t0).is_some());
        }
        assert_eq!(max_seen, 100);
        // Updating an existing key of a full map evicts nothing.
        let len = c.lock().len();
        let k = *c.lock().keys().next().unwrap();
        c.insert(k, Vec::new(), t0);
        assert_eq!(c.lock().len(), len);

        let one = Cache::new(Duration::from_secs(60), 1);
        one.insert([1; 20], Vec::new(), t0);
        one.insert([2; 20], Vec::new(), t0);
        assert_eq!(one.lock().len(), 1);
        assert!(one.get(&[2; 20], t0).is_some());
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let fa = build("url = \"http://auth/\"\ncache = \"5s\"").unwrap();
        let s = format!("{fa:?}");
        assert!(!s.contains("hmac_key"), "{s}");
    }

    // ---- against a real auth service ----

    /// A local auth service: answers by path, records what it was sent.
    struct AuthService {
        addr: SocketAddr,
        scheme: &'static str,
        seen: Arc<Mutex<Vec<Parts>>>,
    }

    impl AuthService {
        async fn spawn() -> AuthService {
            Self::spawn_with(None).await
        }

        /// With `tls`, the service speaks HTTPS.
        async fn spawn_with(tls: Option<tokio_rustls::TlsAcceptor>) -> AuthService {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let seen: Arc<Mutex<Vec<Parts>>> = Arc::default();
            let seen2 = seen.clone();
            let scheme = if tls.is_some() { "https" } else { "http" };
            tokio::spawn(async move {
                while let Ok((s, _)) = l.accept().await {
                    let seen = seen2.clone();
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, _) = req.into_parts();
                            let path = parts.uri.path().to_string();
                            seen.lock().unwrap().push(parts);
                            Ok::<_, Infallible>(answer(&path).await)
                        }
                    });
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            None => {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                            Some(tls) => {
                                let Ok(s) = tls.accept(s).await else { return };
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    });
                }
            });
            AuthService { addr, scheme, seen }
        }

        fn url(&self, path: &str) -> String {
            format!("{}://{}{path}", self.scheme, self.addr)
        }

        fn count(&self) -> usize {
            self.seen.lock().unwrap().len()
        }

        fn last(&self) -> Parts {
            self.seen
                .lock()
                .unwrap()
                .last()
                .cloned()
                .expect("no request")
        }
    }

    async fn answer(path: &str) -> Response<Full<Bytes>> {
        let b = Response::builder();
        let b = match path {
            "/allow" => b
                .header("x-user", "alice")
                .header("x-roles", "admin")
                .header("x-roles", "dev")
                .header("x-internal", "not copied"),
            "/deny401" => b
                .status(401)
                .header("www-authenticate", "Bearer realm=\"chat\"")
                .header("content-type", "text/plain")
                .header("x-internal", "not passed"),
            "/deny302" => b
                .status(302)
                .header("location", "https://login.example.com/?rd=chat")
                .header("set-cookie", "state=xyz; HttpOnly"),
            "/error" => b.status(500),
            "/big" => {
                return Response::new(Full::new(Bytes::from(vec![b'x'; MAX_BODY + 1])));
            }
            // Never answers; the future is dropped with the connection.
            "/slow" => std::future::pending().await,
            _ => b.status(404),
        };
        let body = match path {
            "/deny401" => "login required",
            _ => "",
        };
        b.body(Full::new(Bytes::from(body))).unwrap()
    }

    fn service_config(url: &str, extra: &str) -> Arc<ForwardAuth> {
        build(&format!(
            "url = \"{url}\"\ncopy_headers = [\"X-User\", \"X-Roles\", \"X-Missing\"]\n{extra}"
        ))
        .unwrap()
    }

    fn copied(d: &AuthDecision) -> Vec<(String, String)> {
        match d {
            AuthDecision::Allow(h) => h
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect(),
            d => panic!("expected allow, got {d:?}"),
        }
    }

    #[tokio::test]
    async fn allow_copies_headers_and_sends_the_facts() {
        let auth = AuthService::spawn().await;
        let fa = service_config(&auth.url("/allow"), "forward_headers = [\"X-Tenant\"]");
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
        assert_eq!(values(h, "cookie"), ["session=abc", "theme=dark"]);
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

    #[tokio::test]
    async fn deny_is_passed_through() {
        let auth = AuthService::spawn().await;
        let parts = browser_request();

        let fa = service_config(&auth.url("/deny401"), "");
        match fa.check(&query(&parts)).await.unwrap() {
            AuthDecision::Deny {
                status,
                headers,
                body,
            } => {
                assert_eq!(status, 401);
                assert_eq!(
                    values(&headers, "www-authenticate"),
                    ["Bearer realm=\"chat\""]
                );
                assert_eq!(values(&headers, "content-type"), ["text/plain"]);
                assert!(headers.get("x-internal").is_none());
                assert_eq!(body, "login required");
            }
            d => panic!("{d:?}"),
        }

        let fa = service_config(&auth.url("/deny302"), "");
        match fa.check(&query(&parts)).await.unwrap() {
            AuthDecision::Deny {
                status, headers, ..
            } => {
                assert_eq!(status, 302);
                assert_eq!(
                    values(&headers, "location"),
                    ["https://login.example.com/?rd=chat"]
                );
                assert_eq!(values(&headers, "set-cookie"), ["state=xyz; HttpOnly"]);
            }
            d => panic!("{d:?}"),
        }
    }

    #[tokio::test]
    async fn failures_are_errors_naming_the_url() {
        let auth = AuthService::spawn().await;
        let parts = browser_request();

        let url = auth.url("/slow");
        let fa = service_config(&url, "timeout = \"200ms\"");
        let e = fa.check(&query(&parts)).await.unwrap_err();
        assert!(e.0.contains(&url) && e.0.contains("200ms"), "{e}");
        assert_eq!(auth.count(), 1, "the service was asked");

        let url = auth.url("/error");
        let e = service_config(&url, "")
            .check(&query(&parts))
            .await
            .unwrap_err();
        assert!(e.0.contains(&url) && e.0.contains("500"), "{e}");

        let url = auth.url("/big");
        let e = service_config(&url, "")
            .check(&query(&parts))
            .await
            .unwrap_err();
        assert!(e.0.contains(&url) && e.0.contains("65536"), "{e}");

        // Nothing listening.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/check", closed.local_addr().unwrap());
        drop(closed);
        let e = service_config(&url, "")
            .check(&query(&parts))
            .await
            .unwrap_err();
        assert!(e.0.contains(&url), "{e}");
    }

    #[tokio::test]
    async fn cache_reuses_allows_until_they_expire() {
        let auth = AuthService::spawn().await;
        let fa = service_config(&auth.url("/allow"), "cache = \"1m\"");
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
        let auth = AuthService::spawn().await;
        let parts = browser_request();
        for path in ["/deny401", "/error"] {
            let fa = service_config(&auth.url(path), "cache = \"1m\"");
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
        let auth =
            AuthService::spawn_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))).await;
        let ca = std::env::temp_dir().join(format!("wsgate-fauth-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, &cert).unwrap();
        let parts = browser_request();

        let fa = service_config(&auth.url("/allow"), &format!("ca = \"{}\"", ca.display()));
        let d = fa.check(&query(&parts)).await.unwrap();
        assert_eq!(copied(&d)[0], ("x-user".into(), "alice".into()));
        assert_eq!(auth.count(), 1);

        // Without the CA (system roots), the certificate is refused: an error, not an allow.
        let url = auth.url("/allow");
        let e = service_config(&url, "")
            .check(&query(&parts))
            .await
            .unwrap_err();
        assert!(e.0.contains(&url), "{e}");
        assert_eq!(auth.count(), 1);
        let _ = std::fs::remove_file(&ca);
    }
}
