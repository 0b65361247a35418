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
//! - 3xx and 4xx: refused; the status, the headers that tell the client what to do next
//!   ([`DENY_HEADERS`]: the challenges of a 401 and a 407, a redirect's `Location`, a 429's
//!   `Retry-After`, `Set-Cookie`, `Content-Type`, `Cache-Control`) and the body go back to it
//!   (its first [`MAX_BODY`] bytes: the status is the answer, and the rest is not waited for).
//! - 5xx, a timeout, or a connection error: the service could not decide, and the client gets
//!   503 ([`ForwardAuthError`]).
//!
//! An answer's body is read up to [`MAX_BODY`] and no further, whatever the status: a 2xx
//! with a large body (a user profile) still allows, and an endless one (a stream) is not
//! read past that. (A body's first 64 KiB still count against `timeout`: a service that
//! trickles them is answered 503, as one that trickles its status line.)
//!
//! Allow decisions may be cached for a short time (`cache`), keyed by everything the auth
//! service saw; refusals and errors never are.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, ORIGIN, PROXY_AUTHENTICATE,
    RETRY_AFTER, SEC_WEBSOCKET_PROTOCOL, SET_COOKIE, USER_AGENT, WWW_AUTHENTICATE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use sha1::{Digest, Sha1};

use crate::http_client::{ClientError, HttpClient};

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
    /// The method the auth service is told (`X-Forwarded-Method`): `GET` for a WebSocket
    /// handshake (HTTP/2's extended CONNECT included), the request's own for a plain
    /// request, which a rule such as "read-only users may only GET" decides on.
    pub method: &'a str,
}

/// The auth service's answer.
#[derive(Debug)]
pub enum AuthDecision {
    /// 2xx: proceed.
    Allow(Allowed),
    /// 3xx or 4xx (401, 403, a login redirect...): passed to the client. `headers` holds only
    /// [`DENY_HEADERS`] of the answer.
    Deny {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// What an allowing answer carries on (and what the cache keeps of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// The configured copies (`copy_headers`) of the answer, for the backend request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The value of the answer's `user_header`, if the route names one and the answer has it
    /// as text: who the service found the client to be, for the access log.
    pub user: Option<String>,
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

/// Most of an answer's body read from the auth service; a longer one is cut there (and its
/// connection not kept). Enough for a JSON error or a small login page.
pub const MAX_BODY: usize = 64 * 1024;

/// Most allow decisions held in the cache, so that a flood of distinct credentials cannot
/// grow memory without bound.
pub const CACHE_MAX_ENTRIES: usize = 10_000;

/// Client request headers always sent to the auth service (all their values).
pub const DEFAULT_FORWARDED: [HeaderName; 5] = [
    COOKIE,
    AUTHORIZATION,
    ORIGIN,
    USER_AGENT,
    SEC_WEBSOCKET_PROTOCOL,
];

/// Answer headers passed to the client with a refusal: a 401's and a 407's challenge (a 407
/// without `Proxy-Authenticate` breaks RFC 9110 §15.5.8, and the client cannot answer it),
/// a redirect's target, a 429's wait, and what the body and cookies need.
pub const DENY_HEADERS: [HeaderName; 7] = [
    WWW_AUTHENTICATE,
    PROXY_AUTHENTICATE,
    LOCATION,
    RETRY_AFTER,
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
pub const NOT_FORWARDABLE: &[&str] = &[
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
    /// See [`ForwardAuthSettings::user_header`].
    pub user_header: Option<HeaderName>,
}

/// What [`ForwardAuth::new`] is built from (`[route.auth.forward_auth]`, validated).
pub struct ForwardAuthSettings {
    /// The auth service (`http://` or `https://`), asked with `GET`.
    pub url: Uri,
    /// Time allowed for the whole subrequest, answer body included.
    pub timeout: Duration,
    /// Answer headers copied onto the backend request when the service allows.
    pub copy_headers: Vec<HeaderName>,
    /// Client headers sent besides [`DEFAULT_FORWARDED`] (none of [`NOT_FORWARDABLE`]).
    pub forward_headers: Vec<HeaderName>,
    /// How long an allow decision is reused; `None`: never.
    pub cache: Option<Duration>,
    /// TLS settings for an `https://` service.
    pub tls: Arc<rustls::ClientConfig>,
    /// The answer header that names the authenticated user, for the access log's `user`
    /// (`user_header`); `None`: the log names no user for this route.
    pub user_header: Option<HeaderName>,
}

impl ForwardAuth {
    pub fn new(s: ForwardAuthSettings) -> ForwardAuth {
        let ForwardAuthSettings {
            url,
            timeout,
            copy_headers,
            forward_headers,
            cache,
            tls,
            user_header,
        } = s;
        ForwardAuth {
            url,
            timeout,
            copy_headers,
            forward_headers,
            cache: cache.map(|ttl| Cache::new(ttl, CACHE_MAX_ENTRIES)),
            client: HttpClient::new(tls),
            user_header,
        }
    }

    /// The headers copied from the auth service's answer to the backend request; the
    /// client's own headers of these names are always removed.
    pub fn copy_headers(&self) -> &[HeaderName] {
        &self.copy_headers
    }

    /// The auth service's URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Time allowed for the whole subrequest.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Client headers sent besides [`DEFAULT_FORWARDED`].
    pub fn forward_headers(&self) -> &[HeaderName] {
        &self.forward_headers
    }

    /// How long an allow decision is reused; `None`: never.
    pub fn cache_ttl(&self) -> Option<Duration> {
        self.cache.as_ref().map(|c| c.ttl)
    }

    /// Asks the auth service (or the cache) about a handshake.
    pub async fn check(&self, q: &AuthQuery<'_>) -> Result<AuthDecision, ForwardAuthError> {
        let headers = self.request_headers(q);
        let cache_key = self.cache.as_ref().map(|c| (c, c.key(&headers)));
        if let Some((cache, key)) = &cache_key
            && let Some(allowed) = cache.get(key, Instant::now())
        {
            tracing::debug!(url = %self.url, client = %q.client, "forward-auth: allowed (cached)");
            return Ok(AuthDecision::Allow(allowed));
        }

        let mut req = Request::get(self.url.clone())
            .body(Full::new(Bytes::new()))
            .map_err(|e| self.error(e.to_string()))?;
        *req.headers_mut() = headers;
        let started = Instant::now();
        let resp = match self.client.send_cut(req, self.timeout, MAX_BODY).await {
            Ok((r, cut)) => {
                if cut {
                    tracing::debug!(
                        url = %self.url,
                        status = r.status().as_u16(),
                        "forward-auth: answer body cut at {MAX_BODY} bytes"
                    );
                }
                r
            }
            Err(e) => {
                let reason = match e {
                    ClientError::Timeout(d) => format!("no answer within {d:?}"),
                    ClientError::Request(m) => m,
                    // (`send_cut` cuts a long body rather than fail on it.)
                    e @ ClientError::BodyTooLarge(_) => e.to_string(),
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
        let user = self.user(resp.headers());
        let mut decision = decide(&self.copy_headers, resp).map_err(|reason| {
            let err = self.error(reason);
            tracing::warn!(client = %q.client, latency_ms, "forward-auth: {err}; answering 503");
            err
        })?;
        match &mut decision {
            AuthDecision::Allow(allowed) => {
                allowed.user = user;
                tracing::debug!(
                    url = %self.url,
                    client = %q.client,
                    status = status.as_u16(),
                    latency_ms,
                    "forward-auth: allowed"
                );
                if let Some((cache, key)) = cache_key {
                    cache.insert(key, allowed.clone(), Instant::now());
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

    /// The answer's `user_header` as text (the first, if several), when the route names one.
    fn user(&self, answer: &HeaderMap) -> Option<String> {
        let value = answer.get(self.user_header.as_ref()?)?;
        Some(value.to_str().ok()?.to_string())
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
            if *name == COOKIE {
                // One field: HTTP/2 clients (browsers) split their cookies into crumbs, which
                // must be joined for an HTTP/1.1 hop (RFC 9113 §8.2.3), and an auth service
                // reading its one `Cookie` would miss the rest (RFC 6265 §5.4 allows one).
                if let Some(joined) = crate::policy::cookie::joined(&q.parts.headers) {
                    h.insert(COOKIE, joined);
                }
                continue;
            }
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
            (X_FORWARDED_METHOD, q.method),
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
        Ok(AuthDecision::Allow(Allowed {
            headers: copied,
            user: None,
        }))
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
    value: Allowed,
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

    /// A live allow decision; an expired one is dropped.
    fn get(&self, key: &[u8; 20], now: Instant) -> Option<Allowed> {
        let mut map = self.lock();
        match map.get(key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
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
    fn insert(&self, key: [u8; 20], value: Allowed, now: Instant) {
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
                value,
            },
        );
    }
}

#[cfg(test)]
mod tests;
