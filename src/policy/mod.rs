//! Edge policy: what a handshake must show before anything is sent to a backend, and what
//! the backend request carries instead of the client's credentials.
//!
//! Checked in this order (cheapest and least secret first): origin → subprotocols → required
//! cookies → token (JWT) → forward-auth. The result, an [`Admission`], says what the backend
//! request offers, strips and adds.

pub mod cookie;
pub mod forward_auth;
pub mod forwarding;
pub mod identity;
pub mod jwt;
pub mod origin;
pub mod subprotocol;

use toml::Spanned;

use crate::config::Validator;
use crate::config::file::SpStr;

/// A verified token's claims.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// A place a token may be taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// A cookie of this name.
    Cookie(String),
    /// A query parameter of this name (removed from the URL the backend sees).
    Query(String),
    /// `Sec-WebSocket-Protocol`: a `bearer.<token>` entry, or an `access_token` or `bearer`
    /// entry followed by the token as the next entry.
    Subprotocol,
}

impl TokenSource {
    pub fn parse(s: &str) -> Result<TokenSource, String> {
        let named = |kind: &str, name: &str| {
            if name.is_empty() {
                Err(format!(
                    "{kind}: needs a name, e.g. \"{kind}:access_token\""
                ))
            } else {
                Ok(name.to_string())
            }
        };
        match s.split_once(':') {
            None if s == "header" => Ok(TokenSource::Header),
            None if s == "subprotocol" => Ok(TokenSource::Subprotocol),
            Some(("cookie", name)) => named("cookie", name).map(TokenSource::Cookie),
            Some(("query", name)) => named("query", name).map(TokenSource::Query),
            _ => Err(format!(
                "unknown token source {s:?}: use \"header\", \"cookie:NAME\", \"query:NAME\" or \"subprotocol\""
            )),
        }
    }
}

/// Token sources from a `from = [...]` list; the default is the `Authorization` header, then
/// the subprotocol list (the one place a browser script can put a token).
pub(crate) fn token_sources(
    v: &mut Validator<'_>,
    key: &str,
    from: Option<&Spanned<Vec<SpStr>>>,
) -> Vec<TokenSource> {
    let Some(from) = from else {
        return vec![TokenSource::Header, TokenSource::Subprotocol];
    };
    if from.get_ref().is_empty() {
        v.err(
            key,
            Some(from.span()),
            "must name at least one token source",
        );
    }
    let mut out = Vec::new();
    for (i, s) in from.get_ref().iter().enumerate() {
        match TokenSource::parse(s.get_ref().trim()) {
            Ok(t) => out.push(t),
            Err(m) => v.err(format!("{key}[{i}]"), Some(s.span()), m),
        }
    }
    out
}

/// A route's policy, validated. Every part is optional; the default admits everything and
/// changes nothing.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    /// `None`: no Origin check.
    pub origin: Option<origin::OriginPolicy>,
    pub subprotocols: subprotocol::SubprotocolPolicy,
    pub require_cookies: Vec<String>,
    pub strip_cookies: Vec<String>,
    pub strip_headers: Vec<http::HeaderName>,
    pub set_headers: Vec<(http::HeaderName, identity::Template)>,
    pub jwt: Option<std::sync::Arc<jwt::JwtVerifier>>,
    pub forward_auth: Option<std::sync::Arc<forward_auth::ForwardAuth>>,
}

/// A list of names (cookies), each non-empty.
fn names(v: &mut Validator<'_>, key: &str, list: Option<&Spanned<Vec<SpStr>>>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, s) in list
        .map(|l| l.get_ref().as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let name = s.get_ref().trim();
        if name.is_empty() || name.contains([';', '=', ' ', ',']) {
            v.err(
                format!("{key}[{i}]"),
                Some(s.span()),
                format!("{name:?} is not a cookie name"),
            );
        } else {
            out.push(name.to_string());
        }
    }
    out
}

fn header_name(
    v: &mut Validator<'_>,
    key: &str,
    s: &str,
    span: std::ops::Range<usize>,
) -> Option<http::HeaderName> {
    match http::HeaderName::from_bytes(s.trim().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            v.err(key, Some(span), format!("{s:?} is not a header name"));
            None
        }
    }
}

/// Headers the proxy builds itself for the backend: a policy may not set or strip them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

/// Validates a route's policy keys: `origins`, `missing_origin`, `subprotocols`,
/// `require_subprotocol` and the `[route.auth]` table.
pub(crate) fn validate_route(
    v: &mut Validator<'_>,
    key: &str,
    r: &crate::config::file::FileRoute,
) -> RoutePolicy {
    let mut p = RoutePolicy::default();

    if let Some(list) = &r.origins {
        let mut rules = Vec::new();
        if list.get_ref().is_empty() {
            v.err(
                format!("{key}.origins"),
                Some(list.span()),
                "an empty list would refuse every browser: list origins, or remove the key to allow any",
            );
        }
        for (i, s) in list.get_ref().iter().enumerate() {
            match origin::OriginRule::parse(s.get_ref().trim()) {
                Ok(rule) => rules.push(rule),
                Err(m) => v.err(format!("{key}.origins[{i}]"), Some(s.span()), m),
            }
        }
        p.origin = Some(origin::OriginPolicy {
            rules,
            allow_missing: true,
        });
    }
    if let Some(m) = &r.missing_origin {
        let allow = match m.get_ref().as_str() {
            "allow" => true,
            "refuse" => false,
            other => {
                v.err(
                    format!("{key}.missing_origin"),
                    Some(m.span()),
                    format!("{other:?}: use \"allow\" (non-browser clients send no Origin) or \"refuse\""),
                );
                true
            }
        };
        match &mut p.origin {
            Some(o) => o.allow_missing = allow,
            None if !allow => {
                p.origin = Some(origin::OriginPolicy {
                    rules: Vec::new(),
                    allow_missing: false,
                })
            }
            None => {}
        }
    }

    if let Some(list) = &r.subprotocols {
        let mut allowed = Vec::new();
        for (i, s) in list.get_ref().iter().enumerate() {
            let name = s.get_ref().trim();
            if name.is_empty() || !name.bytes().all(crate::handshake::is_token_byte) {
                v.err(
                    format!("{key}.subprotocols[{i}]"),
                    Some(s.span()),
                    format!("{name:?} is not a subprotocol name (an HTTP token)"),
                );
            } else {
                allowed.push(name.to_string());
            }
        }
        p.subprotocols.allowed = Some(allowed);
    }
    if let Some(req) = &r.require_subprotocol {
        p.subprotocols.required = *req.get_ref();
        if p.subprotocols.required && p.subprotocols.allowed.is_none() {
            v.err(
                format!("{key}.require_subprotocol"),
                Some(req.span()),
                "needs `subprotocols = [...]`: the list of which one is required",
            );
        }
    }

    let Some(auth) = &r.auth else {
        return p;
    };
    let akey = format!("{key}.auth");
    let a = auth.get_ref();
    p.require_cookies = names(
        v,
        &format!("{akey}.require_cookies"),
        a.require_cookies.as_ref(),
    );
    p.strip_cookies = names(
        v,
        &format!("{akey}.strip_cookies"),
        a.strip_cookies.as_ref(),
    );
    for (i, s) in a
        .strip_headers
        .as_ref()
        .map(|l| l.get_ref().as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let k = format!("{akey}.strip_headers[{i}]");
        if let Some(h) = header_name(v, &k, s.get_ref(), s.span()) {
            if RESERVED_HEADERS.contains(&h.as_str()) {
                v.err(
                    k,
                    Some(s.span()),
                    format!("{h} is built by the proxy itself"),
                );
            } else {
                p.strip_headers.push(h);
            }
        }
    }
    let jwt_configured = a.jwt.is_some();
    if let Some(set) = &a.set_headers {
        for (name, value) in set.get_ref() {
            let k = format!("{akey}.set_headers.{name}");
            let Some(h) = header_name(v, &k, name, value.span()) else {
                continue;
            };
            if RESERVED_HEADERS.contains(&h.as_str()) {
                v.err(
                    k,
                    Some(value.span()),
                    format!("{h} is built by the proxy itself"),
                );
                continue;
            }
            match identity::Template::parse(value.get_ref()) {
                Ok(t) if t.uses_claims() && !jwt_configured => v.err(
                    k,
                    Some(value.span()),
                    "reads token claims, but the route has no [route.auth.jwt]",
                ),
                Ok(t) => p.set_headers.push((h, t)),
                Err(m) => v.err(k, Some(value.span()), m),
            }
        }
    }
    if let Some(j) = &a.jwt {
        p.jwt = jwt::validate(v, &format!("{akey}.jwt"), j);
    }
    if let Some(f) = &a.forward_auth {
        p.forward_auth = forward_auth::validate(v, &format!("{akey}.forward_auth"), f);
    }
    p
}
