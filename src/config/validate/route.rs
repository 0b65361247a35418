//! `[[route]]`: name, host, path, backends and their TLS, balancing, timeouts and session
//! limits. The route's policy keys are `auth.rs`'s.

use std::time::Duration;

use toml::Spanned;

use super::{SessionKeys, Validator};
use crate::config::OnChange;
use crate::config::file::{FileBackend, FileBackendTls, FileRoute};
use crate::config::{
    BackendUrl, DEFAULT_HTTP_IDLE_TIMEOUT, DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_REQUEST_BODY, DEFAULT_REQUEST_BODY_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RESPONSE_HEADER_TIMEOUT, RouteConfig, SessionConfig,
};
use crate::deflate;

/// permessage-deflate offers pass to the backend unless a route strips them: what a proxy
/// without an opinion does, so compression keeps working end to end as before.
const DEFAULT_PERMESSAGE_DEFLATE: deflate::Mode = deflate::Mode::Allow;

/// A backend's weight unless its table says otherwise: all backends equal.
const DEFAULT_WEIGHT: u32 = 1;
/// Weights are relative; past this they only risk overflowing the balancer's sums.
const MAX_WEIGHT: u32 = 1000;

impl Validator<'_> {
    pub(super) fn route(
        &mut self,
        key: &str,
        r: &Spanned<FileRoute>,
        connect_default: Duration,
        handshake_default: Duration,
        session_default: &SessionConfig,
    ) -> Option<RouteConfig> {
        let span = r.span();
        let r = r.get_ref();
        let errors_before = self.errors.len();

        let name = match &r.name {
            Some(n) if !n.get_ref().trim().is_empty() => n.get_ref().trim().to_string(),
            Some(n) => {
                self.err(format!("{key}.name"), Some(n.span()), "must not be empty");
                String::new()
            }
            None => {
                self.err(
                    format!("{key}.name"),
                    Some(span.clone()),
                    "missing: every route needs a name (it appears in the logs)",
                );
                String::new()
            }
        };

        let host = r.host.as_ref().and_then(|h| {
            let value = h.get_ref().trim().to_ascii_lowercase();
            if value.parse::<std::net::Ipv6Addr>().is_ok() {
                // The Host header brackets it, so the bare form would never match.
                self.err(
                    format!("{key}.host"),
                    Some(h.span()),
                    format!("{value:?} is an IPv6 address: write it in brackets, \"[{value}]\", as the Host header does"),
                );
                None
            } else if valid_host_pattern(&value) {
                Some(value)
            } else {
                self.err(
                    format!("{key}.host"),
                    Some(h.span()),
                    format!("{:?} is not a host name (no scheme, port or path; \"*.example.com\" for subdomains)", h.get_ref()),
                );
                None
            }
        });

        let path = match &r.path {
            Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains(['?', '#', ' ']) => {
                p.get_ref().clone()
            }
            Some(p) => {
                self.err(
                    format!("{key}.path"),
                    Some(p.span()),
                    format!(
                        "{:?} must start with '/' and hold no query or fragment",
                        p.get_ref()
                    ),
                );
                String::new()
            }
            None => {
                self.err(
                    format!("{key}.path"),
                    Some(span.clone()),
                    "missing: the path prefix this route serves, e.g. \"/\" or \"/chat\"",
                );
                String::new()
            }
        };

        let (backends, weights) = self.backends(key, r, &span);
        let balance = self.balance(key, r);
        let health = self.health(key, r.health.as_ref());
        let sticky = self.sticky(key, r.sticky.as_ref());
        let slow_start = self.slow_start(key, r);

        let t = r.timeouts.as_ref();
        let backend_connect_timeout = self.duration(
            &format!("{key}.timeouts.backend_connect"),
            t.and_then(|t| t.backend_connect.as_ref()),
            connect_default,
        );
        let backend_handshake_timeout = self.duration(
            &format!("{key}.timeouts.backend_handshake"),
            t.and_then(|t| t.backend_handshake.as_ref()),
            handshake_default,
        );

        let session = self.session(
            &format!("{key}.timeouts"),
            t.map(|t| SessionKeys {
                ping_interval: t.ping_interval.as_ref(),
                pong_timeout: t.pong_timeout.as_ref(),
                idle: t.idle.as_ref(),
                max_lifetime: t.max_lifetime.as_ref(),
                hibernate_after: t.hibernate_after.as_ref(),
            })
            .unwrap_or_default(),
            (&format!("{key}.max_message"), r.max_message.as_ref()),
            session_default,
        );

        let (permessage_deflate, max_message_inflated) = self.deflate(key, r);
        let session = SessionConfig {
            max_message_inflated,
            rates: self.rates(key, r),
            ..session
        };

        let http_backends = self.http_backends(key, r);
        let tls_backends: Vec<BackendUrl> =
            backends.iter().chain(&http_backends).cloned().collect();
        let (backend_tls, backend_tls_unverified) =
            self.backend_tls(key, &name, r.backend_tls.as_ref(), &tls_backends);
        let http = self.http_side(
            key,
            r,
            HttpBackends {
                ws: &backends,
                http: http_backends,
                tls: (&backend_tls, &backend_tls_unverified),
            },
            backend_connect_timeout,
        );
        let policy = super::auth::route_policy(self, key, r);
        let on_change = self.choice(
            &format!("{key}.on_change"),
            r.on_change.as_ref(),
            &[("keep", OnChange::Keep), ("restart", OnChange::Restart)],
            OnChange::Keep,
        );
        let admission = self.admission(key, super::limits::AdmissionKeys::of_route(r));

        (self.errors.len() == errors_before).then_some(RouteConfig {
            name,
            host,
            path,
            backends,
            backend_tls,
            backend_tls_unverified,
            balance,
            weights,
            health,
            sticky,
            slow_start,
            preserve_host: r.preserve_host.unwrap_or(false),
            permessage_deflate,
            backend_connect_timeout,
            backend_handshake_timeout,
            session,
            policy: std::sync::Arc::new(policy),
            on_change,
            admission,
            http,
            // Filled in once the whole file has validated (`fingerprints`).
            fingerprint: String::new(),
        })
    }

    /// `http_backends`, read as `BackendUrl`s (their `tls` is `https://`).
    fn http_backends(&mut self, key: &str, r: &FileRoute) -> Vec<BackendUrl> {
        let mut out = Vec::new();
        let Some(list) = &r.http_backends else {
            return out;
        };
        if list.get_ref().is_empty() {
            self.err(
                format!("{key}.http_backends"),
                Some(list.span()),
                "must list at least one URL (or leave it out: plain requests go to backends)",
            );
        }
        for (j, u) in list.get_ref().iter().enumerate() {
            match parse_http_backend(u.get_ref()) {
                Ok(url) => out.push(url),
                Err(msg) => self.err(format!("{key}.http_backends[{j}]"), Some(u.span()), msg),
            }
        }
        out
    }

    /// `http = true` and the keys of a route's plain HTTP side; `None` for a WebSocket-only
    /// route, where setting any of them is an error (it would do nothing).
    fn http_side(
        &mut self,
        key: &str,
        r: &FileRoute,
        backends: HttpBackends<'_>,
        connect_timeout: Duration,
    ) -> Option<std::sync::Arc<crate::http_proxy::HttpRoute>> {
        let on = r.http.as_ref().is_some_and(|h| *h.get_ref());
        if !on {
            let set = [
                ("http_backends", r.http_backends.as_ref().map(Spanned::span)),
                (
                    "request_timeout",
                    r.request_timeout.as_ref().map(Spanned::span),
                ),
                (
                    "response_header_timeout",
                    r.response_header_timeout.as_ref().map(Spanned::span),
                ),
                (
                    "request_body_timeout",
                    r.request_body_timeout.as_ref().map(Spanned::span),
                ),
                (
                    "http_idle_timeout",
                    r.http_idle_timeout.as_ref().map(Spanned::span),
                ),
                (
                    "max_request_body",
                    r.max_request_body.as_ref().map(Spanned::span),
                ),
                (
                    "max_concurrent_requests",
                    r.max_concurrent_requests.as_ref().map(Spanned::span),
                ),
            ];
            for (k, span) in set {
                if let Some(span) = span {
                    self.err(
                        format!("{key}.{k}"),
                        Some(span),
                        "set, but this route does not proxy plain HTTP (add http = true)",
                    );
                }
            }
            return None;
        }
        let request_timeout = self.optional_duration(
            &format!("{key}.request_timeout"),
            r.request_timeout.as_ref(),
            DEFAULT_REQUEST_TIMEOUT,
        );
        let response_header_timeout = self.duration(
            &format!("{key}.response_header_timeout"),
            r.response_header_timeout.as_ref(),
            DEFAULT_RESPONSE_HEADER_TIMEOUT,
        );
        let request_body_timeout = self.duration(
            &format!("{key}.request_body_timeout"),
            r.request_body_timeout.as_ref(),
            DEFAULT_REQUEST_BODY_TIMEOUT,
        );
        let idle_timeout = self.duration(
            &format!("{key}.http_idle_timeout"),
            r.http_idle_timeout.as_ref(),
            DEFAULT_HTTP_IDLE_TIMEOUT,
        );
        let max_request_body = self.optional_size(
            &format!("{key}.max_request_body"),
            r.max_request_body.as_ref(),
            DEFAULT_MAX_REQUEST_BODY,
        );
        let max_concurrent_requests = match &r.max_concurrent_requests {
            None => DEFAULT_MAX_CONCURRENT_REQUESTS,
            Some(v) if (1..=1_000_000).contains(v.get_ref()) => *v.get_ref() as usize,
            Some(v) => {
                self.err(
                    format!("{key}.max_concurrent_requests"),
                    Some(v.span()),
                    "must be between 1 and 1000000",
                );
                DEFAULT_MAX_CONCURRENT_REQUESTS
            }
        };
        let mirrors_backends = backends.http.is_empty();
        let urls = if mirrors_backends {
            backends.ws.iter().map(as_http_backend).collect()
        } else {
            backends.http
        };
        let (verified, unverified) = backends.tls;
        let settings = crate::http_proxy::HttpSettings {
            backends: urls
                .into_iter()
                .map(|u| {
                    let tls = if u.insecure_skip_verify {
                        unverified.clone()
                    } else {
                        verified.clone()
                    };
                    (u, tls)
                })
                .collect(),
            mirrors_backends,
            connect_timeout,
            request_timeout,
            response_header_timeout,
            request_body_timeout,
            idle_timeout,
            max_request_body,
            max_concurrent_requests,
        };
        match crate::http_proxy::HttpRoute::new(settings) {
            Ok(h) => Some(std::sync::Arc::new(h)),
            Err(msg) => {
                self.err(
                    format!("{key}.http"),
                    r.http.as_ref().map(Spanned::span),
                    msg,
                );
                None
            }
        }
    }

    /// `backends`: URLs, or tables with a URL, a weight and TLS leniency. Returns the URLs
    /// and their weights, in order.
    fn backends(
        &mut self,
        key: &str,
        r: &FileRoute,
        route_span: &std::ops::Range<usize>,
    ) -> (Vec<BackendUrl>, Vec<u32>) {
        let (mut backends, mut weights) = (Vec::new(), Vec::new());
        let list = match &r.backends {
            None => {
                self.err(
                    format!("{key}.backends"),
                    Some(route_span.clone()),
                    "missing: a list of backend URLs, e.g. [\"ws://127.0.0.1:9000\"]",
                );
                return (backends, weights);
            }
            Some(list) if list.get_ref().is_empty() => {
                self.err(
                    format!("{key}.backends"),
                    Some(list.span()),
                    "must list at least one backend URL",
                );
                return (backends, weights);
            }
            Some(list) => list.get_ref(),
        };
        for (j, b) in list.iter().enumerate() {
            let (url, skip, weight) = match b.get_ref() {
                FileBackend::Url(u) => (u, false, None),
                FileBackend::Table(t) => {
                    let Some(url) = &t.url else {
                        self.err(
                            format!("{key}.backends[{j}].url"),
                            Some(b.span()),
                            "missing: the backend's URL, e.g. url = \"ws://127.0.0.1:9000\"",
                        );
                        continue;
                    };
                    (url, t.insecure_skip_verify.unwrap_or(false), t.weight)
                }
            };
            let weight = match weight.map(u32::try_from) {
                None => DEFAULT_WEIGHT,
                Some(Ok(w @ 1..=MAX_WEIGHT)) => w,
                Some(_) => {
                    self.err(
                        format!("{key}.backends[{j}].weight"),
                        Some(b.span()),
                        format!("must be a whole number from 1 to {MAX_WEIGHT}"),
                    );
                    DEFAULT_WEIGHT
                }
            };
            match parse_backend_url(url) {
                Ok(url) if skip && !url.tls => self.err(
                    format!("{key}.backends[{j}].insecure_skip_verify"),
                    Some(b.span()),
                    "only means something for a wss:// backend",
                ),
                Ok(url) if let Some(first) = backends.iter().find(|b| b.same_place(&url)) => {
                    let spelt = if first.url == url.url {
                        String::new()
                    } else {
                        format!(" (as {:?})", first.url)
                    };
                    self.err(
                        format!("{key}.backends[{j}]"),
                        Some(b.span()),
                        format!(
                            "{:?} is listed twice{spelt} (give it a weight instead)",
                            url.url
                        ),
                    )
                }
                Ok(mut url) => {
                    url.insecure_skip_verify = skip;
                    backends.push(url);
                    weights.push(weight);
                }
                Err(msg) => self.err(format!("{key}.backends[{j}]"), Some(b.span()), msg),
            }
        }
        (backends, weights)
    }

    /// `permessage_deflate` and `max_message_inflated`. Both off by default
    /// ([`DEFAULT_PERMESSAGE_DEFLATE`], no inflated limit): today's backends negotiate
    /// compression end to end, and counting costs CPU (see `docs/benchmarks.md`).
    fn deflate(&mut self, key: &str, r: &FileRoute) -> (deflate::Mode, Option<u64>) {
        let mode = match r
            .permessage_deflate
            .as_ref()
            .map(|m| (m, m.get_ref().as_str()))
        {
            None => DEFAULT_PERMESSAGE_DEFLATE,
            Some((_, "allow")) => deflate::Mode::Allow,
            Some((_, "strip")) => deflate::Mode::Strip,
            Some((m, other)) => {
                self.err(
                    format!("{key}.permessage_deflate"),
                    Some(m.span()),
                    format!("unknown value {other:?}: use \"allow\" or \"strip\""),
                );
                DEFAULT_PERMESSAGE_DEFLATE
            }
        };
        let limit_key = format!("{key}.max_message_inflated");
        let limit = self.optional_size(&limit_key, r.max_message_inflated.as_ref(), None);
        if let (Some(_), Some(v), deflate::Mode::Strip) = (limit, &r.max_message_inflated, mode) {
            // Nothing is compressed on a stripped route: the limit would never apply.
            self.err(
                limit_key,
                Some(v.span()),
                "set, but permessage_deflate = \"strip\" (nothing is compressed: max_message applies)",
            );
        }
        (mode, limit)
    }

    /// TLS client settings for a route's `wss://` backends, built (and files checked) now.
    fn backend_tls(
        &mut self,
        key: &str,
        route: &str,
        t: Option<&Spanned<FileBackendTls>>,
        backends: &[BackendUrl],
    ) -> (
        Option<std::sync::Arc<rustls::ClientConfig>>,
        Option<std::sync::Arc<rustls::ClientConfig>>,
    ) {
        if !backends.iter().any(|b| b.tls) {
            if let Some(t) = t {
                self.err(
                    format!("{key}.backend_tls"),
                    Some(t.span()),
                    "set, but no backend of this route is wss:// (or https:// in http_backends)",
                );
            }
            return (None, None);
        }
        let default = FileBackendTls::default();
        let (span, t) = match t {
            Some(t) => (Some(t.span()), t.get_ref()),
            None => (None, &default),
        };
        let ca = t.ca.as_ref().map(|c| self.base.join(c.get_ref()));
        let client_cert = t.client_cert.as_ref().map(|c| self.base.join(c.get_ref()));
        let client_key = t.client_key.as_ref().map(|c| self.base.join(c.get_ref()));
        let client_auth = match (&client_cert, &client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => {
                self.err(
                    format!("{key}.backend_tls"),
                    span,
                    "client_cert and client_key go together",
                );
                return (None, None);
            }
        };
        // Backends marked `insecure_skip_verify` get the same settings without verification.
        let mut unverified = None;
        for b in backends.iter().filter(|b| b.insecure_skip_verify) {
            tracing::warn!(
                route,
                backend = %b.url,
                "insecure_skip_verify is on for this backend: its certificate is NOT verified (development only)"
            );
            if unverified.is_none() {
                let opts = crate::tls::BackendTlsOptions {
                    ca: None,
                    insecure_skip_verify: true,
                    client_auth,
                };
                unverified = crate::tls::backend_client_config(&opts).ok();
            }
        }
        let skip = t.insecure_skip_verify.unwrap_or(false);
        if skip {
            tracing::warn!(
                route,
                "backend_tls.insecure_skip_verify is on: backend certificates are NOT verified (development only)"
            );
        }
        let opts = crate::tls::BackendTlsOptions {
            ca: ca.as_deref(),
            insecure_skip_verify: skip,
            client_auth,
        };
        let verified = match crate::tls::backend_client_config(&opts) {
            Ok(c) => Some(c),
            Err(e) => {
                for (field, at, msg) in [
                    ("ca", &t.ca, e.ca),
                    ("client_cert", &t.client_cert, e.client.cert),
                    ("client_key", &t.client_key, e.client.key),
                ] {
                    if let Some(msg) = msg {
                        self.err(
                            format!("{key}.backend_tls.{field}"),
                            at.as_ref().map(|c| c.span()),
                            msg,
                        );
                    }
                }
                None
            }
        };
        (verified, unverified)
    }
}

/// What a route's plain HTTP side may be sent to.
struct HttpBackends<'a> {
    /// The route's `backends`.
    ws: &'a [BackendUrl],
    /// `http_backends`, if the route lists them.
    http: Vec<BackendUrl>,
    /// The route's backend TLS settings: verified, and without verification.
    tls: (
        &'a Option<std::sync::Arc<rustls::ClientConfig>>,
        &'a Option<std::sync::Arc<rustls::ClientConfig>>,
    ),
}

/// A WebSocket backend as the HTTP side reaches it: `ws://` → `http://`, `wss://` →
/// `https://`, the same host, port, path and TLS settings.
fn as_http_backend(u: &BackendUrl) -> BackendUrl {
    let url = match (u.url.strip_prefix("wss://"), u.url.strip_prefix("ws://")) {
        (Some(rest), _) => format!("https://{rest}"),
        (None, Some(rest)) => format!("http://{rest}"),
        (None, None) => u.url.clone(),
    };
    BackendUrl { url, ..u.clone() }
}

/// Parses `http://host[:port][/path][?query]` or the same with `https://`.
fn parse_http_backend(s: &str) -> Result<BackendUrl, String> {
    let ws = if let Some(rest) = s.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = s.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        return Err(format!("{s:?} is not an http:// or https:// URL"));
    };
    let url =
        parse_backend_url(&ws).map_err(|e| e.replace(&format!("{ws:?}"), &format!("{s:?}")))?;
    Ok(BackendUrl {
        url: s.to_string(),
        ..url
    })
}

/// A host name or `*.`-prefixed wildcard: letters, digits, `-`, `.`; or an IP literal.
pub(super) fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.parse::<std::net::IpAddr>().is_ok() {
        return !h.starts_with("*.");
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Parses `ws://host[:port][/path][?query]` or the same with `wss://`.
pub fn parse_backend_url(s: &str) -> Result<BackendUrl, String> {
    let (rest, tls) = if let Some(rest) = s.strip_prefix("ws://") {
        (rest, false)
    } else if let Some(rest) = s.strip_prefix("wss://") {
        (rest, true)
    } else {
        return Err(format!("{s:?} is not a ws:// or wss:// URL"));
    };
    let default_port = if tls { 443 } else { 80 };
    if rest.contains(['#', ' ']) {
        return Err(format!(
            "{s:?}: fragments and spaces are not allowed in backend URLs"
        ));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(format!("{s:?}: user info in backend URLs is not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed '[' in IPv6 address"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{s:?}: {h:?} is not an IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("{s:?}: unexpected {after:?} after the address")),
        };
        (format!("[{h}]"), port)
    } else if authority.matches(':').count() > 1 {
        // `ws://::1:9000` read as host `::1` and port 9000 would make `2001:db8::1:2` port 2.
        return Err(format!(
            "{s:?}: an IPv6 address is written in brackets, e.g. \"ws://[::1]:9000/\""
        ));
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty()
        || !(host.starts_with('[') || valid_host_pattern(&host))
        || host.starts_with("*.")
    {
        return Err(format!("{s:?}: missing or invalid host"));
    }
    let port = match port {
        None => default_port,
        // Digits only (RFC 3986 §3.2.3): Rust's parse takes `+9001` too.
        Some(p) => (p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u16>().ok())
            .flatten()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: {p:?} is not a port number"))?,
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (tail, None),
    };
    let path = (!path.is_empty()).then(|| path.to_string());
    let authority = if port == default_port {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    Ok(BackendUrl {
        url: s.to_string(),
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        authority,
        path,
        query: query.filter(|q| !q.is_empty()),
        insecure_skip_verify: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hibernate_after`: 1 s by default, set or "off" in `[timeouts]`, overridden per route;
    /// a bad value is named with its key and line.
    #[test]
    fn hibernate_after() {
        use std::time::Duration;
        let route = |name: &str, extra: &str| {
            format!(
                "[[route]]\nname = \"{name}\"\npath = \"/{name}\"\n\
                 backends = [\"ws://127.0.0.1:9\"]\n{extra}"
            )
        };
        let text = format!(
            "[timeouts]\nhibernate_after = \"250ms\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\n{}{}",
            route("a", ""),
            route("b", "[route.timeouts]\nhibernate_after = \"off\"\n"),
        );
        let c = crate::config::from_toml_str(&text).unwrap();
        let after: Vec<_> = c.routes.iter().map(|r| r.session.hibernate_after).collect();
        assert_eq!(after, [Some(Duration::from_millis(250)), None]);
        let c = crate::config::from_toml_str(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("a", "")
        ))
        .unwrap();
        assert_eq!(
            c.routes[0].session.hibernate_after,
            Some(Duration::from_secs(1))
        );
        let errors = crate::config::from_toml_str(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{}",
            route("a", "[route.timeouts]\nhibernate_after = \"soon\"\n")
        ))
        .unwrap_err();
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let errors = errors.join("\n");
        assert!(
            errors.contains("route[0].timeouts.hibernate_after") && errors.contains("line 8"),
            "{errors}"
        );
    }

    /// A duration past what a deadline can hold is an error naming its key and line; it
    /// saturated, passed `wsgate check`, and panicked at the first deadline.
    #[test]
    fn durations_too_long_are_errors_with_their_line() {
        let errors = crate::config::from_toml_str(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[shutdown]\ngrace = \"3000000000000000h\"\n\
             [timeouts]\nhandshake = \"36501d\"\n",
        )
        .unwrap_err();
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let errors = errors.join("\n");
        for (key, line) in [
            ("shutdown.grace", "line 4"),
            ("timeouts.handshake", "line 6"),
        ] {
            assert!(
                errors
                    .lines()
                    .any(|e| e.contains(key) && e.contains(line) && e.contains("too long")),
                "{errors}"
            );
        }
    }

    /// `[http2] stream_window`: the default, a size, and the bounds HTTP/2 sets; the
    /// connection's window is room for every stream's, capped at HTTP/2's largest.
    #[test]
    fn http2_stream_window() {
        let load = |extra: &str| {
            crate::config::from_toml_str(&format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[http2]\n{extra}\n\
                 [[route]]\nname = \"a\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:9\"]\n"
            ))
        };
        let d = load("").unwrap().http2;
        assert_eq!(d.stream_window, 256 * 1024);
        assert_eq!(d.connection_window(), 16 * 256 * 1024);
        let big = load("stream_window = \"1GiB\"").unwrap().http2;
        assert_eq!(big.connection_window(), (1 << 31) - 1);
        for bad in ["\"1KiB\"", "\"2GiB\"", "\"lots\""] {
            let errors = load(&format!("stream_window = {bad}")).unwrap_err();
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            assert!(
                text.iter()
                    .any(|e| e.contains("http2.stream_window") && e.contains("line 4")),
                "{bad}: {text:?}"
            );
        }
    }

    /// Config errors found by trying a config as a new user would: each passed `wsgate
    /// check`, and then failed at run time or never matched.
    #[test]
    fn addresses_that_check_passed_and_run_refused_or_never_matched() {
        let load = |text: &str| {
            crate::config::from_toml_str(text).map(|_| ()).map_err(|e| {
                e.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        };
        let route = "[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:9\"]\n";
        // A route's host as a bare IPv6 address: the Host header brackets it.
        let e = load(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{route}host = \"::1\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("route[0].host") && e.contains("line 7") && e.contains("\"[::1]\""),
            "{e}"
        );
        load(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n{route}host = \"[::1]\"\n"
        ))
        .unwrap();
        // Two listeners on one address, one of them written IPv4-mapped.
        let e = load(&format!(
            "[[listener]]\nlisten = \"127.0.0.1:28192\"\n[[listener]]\nlisten = \"[::ffff:127.0.0.1]:28192\"\n{route}"
        ))
        .unwrap_err();
        assert!(
            e.contains("listener[1].listen") && e.contains("line 4"),
            "{e}"
        );
        // An upgrade socket whose path no Unix socket can have.
        let long = format!("/tmp/{}/upgrade.sock", "d".repeat(110));
        let e = load(&format!(
            "[upgrade]\nsocket = \"{long}\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\n{route}"
        ))
        .unwrap_err();
        assert!(
            e.contains("upgrade.socket") && e.contains("line 2") && e.contains("at most 107"),
            "{e}"
        );
    }

    #[test]
    fn backend_urls() {
        let u = parse_backend_url("ws://127.0.0.1:9000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_deref()),
            ("127.0.0.1", 9000, None)
        );
        assert_eq!(u.authority, "127.0.0.1:9000");
        let u = parse_backend_url("ws://chat.internal/ws/v2?tenant=a").unwrap();
        assert_eq!(u.port, 80);
        assert_eq!(u.authority, "chat.internal");
        assert_eq!(u.path.as_deref(), Some("/ws/v2"));
        assert_eq!(u.query.as_deref(), Some("tenant=a"));
        let u = parse_backend_url("ws://[::1]:81/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority.as_str()),
            ("::1", 81, "[::1]:81")
        );
        assert!(parse_backend_url("http://x").is_err());
        // An IPv6 address without brackets: its last group was taken for the port.
        for bare in [
            "ws://::1:9001",
            "ws://2001:db8::5:9000",
            "ws://::1",
            "wss://2001:db8::5/x",
        ] {
            let e = parse_backend_url(bare).unwrap_err();
            assert!(
                e.contains("IPv6 address is written in brackets"),
                "{bare}: {e}"
            );
        }
        assert!(!parse_backend_url("ws://h").unwrap().tls);
        assert!(parse_backend_url("ws://:80").is_err());
        assert!(parse_backend_url("ws://h:0").is_err());
        assert!(parse_backend_url("ws://h:99999").is_err());
        let u = parse_backend_url("wss://h/x").unwrap();
        assert!(u.tls);
        assert_eq!((u.port, u.authority.as_str()), (443, "h"));
        // A port is digits (`+9001` parsed as a number); a fragment or a space is named as
        // such wherever it is (after the port it read "not a port number").
        for (bad, why) in [
            ("ws://h:+9001", "\"+9001\" is not a port number"),
            ("ws://h:9001#frag", "fragments and spaces"),
            ("ws://h:9001 ", "fragments and spaces"),
            ("ws://h#x", "fragments and spaces"),
        ] {
            let e = parse_backend_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// One backend written two ways (a default port spelt out, a host's letter case) is
    /// listed twice, as the same text is: it would take two shares.
    #[test]
    fn a_backend_spelt_twice_is_listed_twice() {
        let errors = |backends: &str| {
            crate::config::from_toml_str(&format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
                 backends = [{backends}]\n"
            ))
            .err()
            .map(|e| e.iter().map(|e| e.message.clone()).collect::<Vec<_>>())
        };
        assert_eq!(
            errors(r#""ws://b.internal", "ws://B.internal:80""#),
            Some(vec![
                "\"ws://B.internal:80\" is listed twice (as \"ws://b.internal\") (give it a weight \
                 instead)"
                    .to_string()
            ])
        );
        assert_eq!(
            errors(r#""ws://b:9001", "ws://b:9001""#),
            Some(vec![
                "\"ws://b:9001\" is listed twice (give it a weight instead)".to_string()
            ])
        );
        // Another path, or another scheme, is another backend.
        assert_eq!(errors(r#""ws://b/a", "ws://b/b", "wss://b:80""#), None);
    }

    #[test]
    fn permessage_deflate_keys() {
        let route = |extra: &str| {
            crate::config::from_toml_str(&format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
                 backends = [\"ws://127.0.0.1:1\"]\n{extra}"
            ))
        };
        let r = &route("").unwrap().routes[0];
        assert_eq!(r.permessage_deflate, deflate::Mode::Allow);
        assert_eq!(r.session.max_message_inflated, None);
        let c = route("permessage_deflate = \"strip\"\n").unwrap();
        assert_eq!(c.routes[0].permessage_deflate, deflate::Mode::Strip);
        let c = route("max_message_inflated = \"16MiB\"\n").unwrap();
        assert_eq!(c.routes[0].session.max_message_inflated, Some(16 << 20));
        for (extra, key, line, text) in [
            (
                "permessage_deflate = \"gzip\"\n",
                "route[0].permessage_deflate",
                7,
                "\"allow\" or \"strip\"",
            ),
            (
                "permessage_deflate = \"strip\"\nmax_message_inflated = \"1MiB\"\n",
                "route[0].max_message_inflated",
                8,
                "strip",
            ),
            (
                "max_message_inflated = \"lots\"\n",
                "route[0].max_message_inflated",
                7,
                "off",
            ),
        ] {
            let errors = route(extra).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].key, key);
            assert_eq!(errors[0].line, Some(line), "{errors:?}");
            assert!(errors[0].message.contains(text), "{}", errors[0].message);
        }
    }

    #[test]
    fn http_keys() {
        let route = |extra: &str| {
            crate::config::from_toml_str(&format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
                 backends = [\"ws://127.0.0.1:1\", \"wss://h:2/x\"]\n{extra}"
            ))
        };
        assert!(route("").unwrap().routes[0].http.is_none());
        let c = route("http = true\n").unwrap();
        let http = c.routes[0].http.as_ref().expect("http side");
        let debug = format!("{http:?}");
        // The route's backends read as HTTP, in order.
        assert!(debug.contains("http://127.0.0.1:1") && debug.contains("https://h:2/x"));
        let c = route("http = true\nhttp_backends = [\"https://api:8443/v1\"]\n").unwrap();
        let debug = format!("{:?}", c.routes[0].http);
        assert!(debug.contains("https://api:8443/v1") && !debug.contains("127.0.0.1:1"));
        for (extra, key, line, text) in [
            (
                "max_request_body = \"1MiB\"\n",
                "route[0].max_request_body",
                7,
                "http = true",
            ),
            (
                "http = true\nhttp_backends = [\"ws://a\"]\n",
                "route[0].http_backends[0]",
                8,
                "http:// or https://",
            ),
            (
                "http = true\nhttp_backends = []\n",
                "route[0].http_backends",
                8,
                "at least one",
            ),
            (
                "http = true\nresponse_header_timeout = \"0\"\n",
                "route[0].response_header_timeout",
                8,
                "greater than zero",
            ),
            (
                "http = true\nmax_request_body = \"0\"\n",
                "route[0].max_request_body",
                8,
                "write \"off\" for none",
            ),
            (
                "http = true\nmax_concurrent_requests = 0\n",
                "route[0].max_concurrent_requests",
                8,
                "between 1 and",
            ),
            (
                "http = true\nhttp_idle_timeout = \"soon\"\n",
                "route[0].http_idle_timeout",
                8,
                "",
            ),
        ] {
            let errors = route(extra).unwrap_err();
            assert_eq!(errors.len(), 1, "{extra}: {errors:?}");
            assert_eq!(errors[0].key, key);
            assert_eq!(errors[0].line, Some(line), "{errors:?}");
            assert!(errors[0].message.contains(text), "{}", errors[0].message);
        }
        let c = route("http = true\nrequest_timeout = \"30s\"\nmax_request_body = \"off\"\n");
        assert!(c.is_ok());
    }
}
