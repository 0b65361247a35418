//! A route's policy keys: `origins`, `missing_origin`, `subprotocols`,
//! `require_subprotocol` and `[route.auth]` (cookies, headers, identity templates; its `jwt`
//! and `forward_auth` tables are `jwt.rs`'s and `forward_auth.rs`'s).

use toml::Spanned;

use super::header_name;
use super::{Validator, entries};
use crate::config::file::{FileRoute, SpStr};
use crate::handshake::is_token_byte;
use crate::policy::identity::Template;
use crate::policy::{PolicyRules, RESERVED_HEADERS, RoutePolicy, TokenSource};

/// A list of names (cookies), each non-empty.
fn names(v: &mut Validator<'_>, key: &str, list: Option<&Spanned<Vec<SpStr>>>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, s) in entries(list).iter().enumerate() {
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

/// Validates a route's policy keys: `origins`, `missing_origin`, `subprotocols`,
/// `require_subprotocol` and the `[route.auth]` table.
pub(super) fn route_policy(v: &mut Validator<'_>, key: &str, r: &FileRoute) -> RoutePolicy {
    let mut p = PolicyRules::default();

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
            match crate::policy::origin::OriginRule::parse(s.get_ref().trim()) {
                Ok(rule) => rules.push(rule),
                Err(m) => v.err(format!("{key}.origins[{i}]"), Some(s.span()), m),
            }
        }
        p.origin = Some(crate::policy::origin::OriginPolicy {
            rules: Some(rules),
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
            // Without `origins`: any origin, but there must be one (browsers only).
            None if !allow => {
                p.origin = Some(crate::policy::origin::OriginPolicy {
                    rules: None,
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
            if name.is_empty() || !name.bytes().all(is_token_byte) {
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
        return RoutePolicy::new(p);
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
    for (i, s) in entries(a.strip_headers.as_ref()).iter().enumerate() {
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
            match Template::parse(value.get_ref()) {
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
        p.jwt = super::jwt::verifier(v, &format!("{akey}.jwt"), j);
    }
    if let Some(f) = &a.forward_auth {
        p.forward_auth = super::forward_auth::forward_auth(v, &format!("{akey}.forward_auth"), f);
    }
    cookie_without_origins(v, key, r, &p);
    RoutePolicy::new(p)
}

/// Warns (at startup and in `wsgate check`) when a route authenticates with a cookie and
/// checks no `Origin`: browsers send cookies with a WebSocket handshake whatever page opens
/// it, and the same-origin policy does not apply to WebSockets, so any site the user visits
/// can open the session as the user (cross-site WebSocket hijacking). Only `origins` stops
/// that. Not an error: a route that only non-browser clients use is safe without it.
fn cookie_without_origins(v: &Validator<'_>, key: &str, r: &FileRoute, p: &PolicyRules) {
    if p.origin.as_ref().is_some_and(|o| o.rules.is_some()) {
        return;
    }
    let Some(auth) = &r.auth else { return };
    let a = auth.get_ref();
    let jwt_cookie = a.jwt.as_ref().and_then(|j| {
        let from = j.get_ref().from.as_ref()?;
        from.get_ref().iter().enumerate().find_map(|(i, s)| {
            matches!(
                TokenSource::parse(s.get_ref().trim()),
                Ok(TokenSource::Cookie(_))
            )
            .then(|| (format!("{key}.auth.jwt.from[{i}]"), s.span()))
        })
    });
    let required = a
        .require_cookies
        .as_ref()
        .filter(|l| !l.get_ref().is_empty())
        .map(|l| (format!("{key}.auth.require_cookies"), l.span()));
    let Some((cookie_key, span)) = jwt_cookie.or(required) else {
        return;
    };
    let route = r.name.as_ref().map_or(key, |n| n.get_ref().trim());
    tracing::warn!(
        route,
        key = %cookie_key,
        line = v.line(span.start),
        "route authenticates with a cookie but has no `origins`: any web page the user visits can open this WebSocket with the user's cookie (cross-site WebSocket hijacking); set origins = [\"https://your.site\"] or [\"same-origin\"]"
    );
}
