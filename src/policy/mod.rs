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
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
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
                p.origin = Some(origin::OriginPolicy {
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

/// Why a handshake was refused by policy. The message is the log's reason; what the client
/// sees is [`PolicyError::public_message`] (a token's verification detail stays in the log).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// 403: cross-site WebSocket hijacking defence.
    #[error("{0}")]
    Origin(String),
    /// 403: no acceptable subprotocol on a route that requires one.
    #[error("{0}")]
    Subprotocol(String),
    /// 403: a required cookie is absent. (Not 401: that status promises a
    /// `WWW-Authenticate` challenge, and a cookie has none.)
    #[error("required cookie {0:?} is missing")]
    MissingCookie(String),
    /// 401: no token in any configured place.
    #[error("no token ({0})")]
    MissingToken(String),
    /// 401: the token did not verify; the reason never contains the token.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// 503: the route's key set could not be fetched, so no token can be checked.
    #[error("token keys unavailable: {0}")]
    KeysUnavailable(String),
    /// The auth service said no: its answer goes to the client.
    #[error("forward-auth denied with {status}")]
    AuthDenied {
        status: http::StatusCode,
        headers: http::HeaderMap,
        body: bytes::Bytes,
    },
    /// 503: the auth service could not be asked.
    #[error("forward-auth unavailable: {0}")]
    AuthUnavailable(String),
}

impl PolicyError {
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            PolicyError::Origin(_)
            | PolicyError::Subprotocol(_)
            | PolicyError::MissingCookie(_) => S::FORBIDDEN,
            PolicyError::MissingToken(_) | PolicyError::InvalidToken(_) => S::UNAUTHORIZED,
            PolicyError::KeysUnavailable(_) | PolicyError::AuthUnavailable(_) => {
                S::SERVICE_UNAVAILABLE
            }
            PolicyError::AuthDenied { status, .. } => *status,
        }
    }

    /// Which policy refused, for the access log (the names live in `Outcome::policy`).
    pub fn policy(&self) -> &'static str {
        self.outcome().policy()
    }

    /// The access log's `outcome`.
    pub fn outcome(&self) -> crate::outcome::Outcome {
        use crate::outcome::Outcome;
        match self {
            PolicyError::Origin(_) => Outcome::OriginRefused,
            PolicyError::Subprotocol(_) => Outcome::SubprotocolRefused,
            PolicyError::MissingCookie(_) => Outcome::CookieMissing,
            PolicyError::MissingToken(_) => Outcome::TokenMissing,
            PolicyError::InvalidToken(_) => Outcome::TokenInvalid,
            PolicyError::KeysUnavailable(_) => Outcome::TokenKeysUnavailable,
            PolicyError::AuthDenied { .. } => Outcome::AuthDenied,
            PolicyError::AuthUnavailable(_) => Outcome::AuthUnavailable,
        }
    }

    /// The refusal's body line: the reason, except where it would tell an attacker which
    /// check their forged token failed.
    pub fn public_message(&self) -> String {
        match self {
            PolicyError::InvalidToken(_) => "invalid token".into(),
            PolicyError::KeysUnavailable(_) | PolicyError::AuthUnavailable(_) => {
                "authentication is unavailable, try again later".into()
            }
            other => other.to_string(),
        }
    }

    /// The challenge of a 401 (RFC 9110 §11.6.1, RFC 6750 §3).
    pub fn challenge(&self, realm: &str) -> Option<String> {
        let realm: String = realm.chars().filter(|c| *c != '"' && *c != '\\').collect();
        match self {
            PolicyError::MissingToken(_) => Some(format!("Bearer realm=\"{realm}\"")),
            PolicyError::InvalidToken(_) => {
                Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\""))
            }
            _ => None,
        }
    }
}

/// Facts about the connection and request that policy reads.
pub struct RequestFacts<'a> {
    /// `http` or `https`, as the client connected.
    pub scheme: &'a str,
    /// The request's `Host`.
    pub host: &'a str,
    pub client: &'a forwarding::ClientAddr,
    /// `X-Forwarded-For` as the backend will see it.
    pub forwarded_for: &'a str,
    /// Verified client-certificate subject (mutual TLS).
    pub tls_subject: Option<&'a str>,
}

/// A token found in the request, and where.
struct FoundToken {
    token: String,
    source: TokenSource,
}

/// The subprotocol entries that carry a token: `bearer.<token>`, or `access_token`/`bearer`
/// followed by the token. Returns the token and the indices of the entries to remove.
fn token_in_protocols(protocols: &[String]) -> Option<(String, Vec<usize>)> {
    for (i, p) in protocols.iter().enumerate() {
        if let Some(t) = p.strip_prefix("bearer.")
            && !t.is_empty()
        {
            return Some((t.to_string(), vec![i]));
        }
        if (p == "access_token" || p == "bearer")
            && let Some(t) = protocols.get(i + 1)
        {
            return Some((t.clone(), vec![i, i + 1]));
        }
    }
    None
}

/// The value of query parameter `name` (not percent-decoded: JWTs are URL-safe).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The request URI without query parameter `name`.
fn without_query_param(uri: &http::Uri, name: &str) -> http::Uri {
    let Some(q) = uri.query() else {
        return uri.clone();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name)
        .collect();
    let pq = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut p = uri.clone().into_parts();
    p.path_and_query = pq.parse().ok();
    http::Uri::from_parts(p).unwrap_or_else(|_| uri.clone())
}

fn find_token(
    sources: &[TokenSource],
    parts: &http::request::Parts,
    protocols: &[String],
) -> Option<FoundToken> {
    for s in sources {
        let token = match s {
            TokenSource::Header => parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, t) = v.trim().split_once(' ')?;
                    scheme
                        .eq_ignore_ascii_case("bearer")
                        .then(|| t.trim().to_string())
                }),
            TokenSource::Cookie(name) => cookie::get(&parts.headers, name).map(str::to_string),
            TokenSource::Query(name) => query_param(parts.uri.query(), name).map(str::to_string),
            TokenSource::Subprotocol => token_in_protocols(protocols).map(|(t, _)| t),
        };
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            return Some(FoundToken {
                token,
                source: s.clone(),
            });
        }
    }
    None
}

fn describe_sources(sources: &[TokenSource]) -> String {
    sources
        .iter()
        .map(|s| match s {
            TokenSource::Header => "Authorization header".to_string(),
            TokenSource::Cookie(n) => format!("cookie {n:?}"),
            TokenSource::Query(n) => format!("query parameter {n:?}"),
            TokenSource::Subprotocol => "Sec-WebSocket-Protocol".to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl RoutePolicy {
    /// Whether the route checks anything at all (the fast path skips the rest).
    pub fn is_open(&self) -> bool {
        self.origin.is_none()
            && self.subprotocols.allowed.is_none()
            && !self.subprotocols.required
            && self.require_cookies.is_empty()
            && self.strip_cookies.is_empty()
            && self.strip_headers.is_empty()
            && self.set_headers.is_empty()
            && self.jwt.is_none()
            && self.forward_auth.is_none()
    }

    /// Runs the checks in order and, when all pass, rewrites the request for the backend:
    /// `protocols` becomes the offer the backend sees, `parts` loses stripped credentials and
    /// gains identity headers. Nothing is changed when a check fails.
    ///
    /// Returns the subprotocol to answer the client with if the backend chooses none: the
    /// marker of an `["access_token", <token>]` offer that held nothing else. Browsers fail a
    /// connection whose offer got no subprotocol back, and a client that offers only its token
    /// this way (the Kubernetes pattern) expects the marker.
    pub async fn admit(
        &self,
        parts: &mut http::request::Parts,
        protocols: &mut Vec<String>,
        facts: &RequestFacts<'_>,
    ) -> Result<Option<String>, PolicyError> {
        if let Some(origin) = &self.origin {
            let value = parts
                .headers
                .get(http::header::ORIGIN)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            origin
                .check(value.as_deref(), Some(facts.host))
                .map_err(PolicyError::Origin)?;
        }

        // The token entries come out of the offer before the allow-list sees it.
        let jwt_from_protocols = self
            .jwt
            .as_ref()
            .is_some_and(|j| j.sources().contains(&TokenSource::Subprotocol));
        let mut offer = protocols.clone();
        let mut marker = None;
        if jwt_from_protocols && let Some((_, idx)) = token_in_protocols(&offer) {
            if idx.len() == 2 {
                marker = Some(offer[idx[0]].clone());
            }
            for i in idx.into_iter().rev() {
                offer.remove(i);
            }
        }
        let offer = self
            .subprotocols
            .filter(offer)
            .map_err(PolicyError::Subprotocol)?;

        for name in &self.require_cookies {
            if cookie::get(&parts.headers, name).is_none() {
                return Err(PolicyError::MissingCookie(name.clone()));
            }
        }

        let mut claims = None;
        let mut token_source = None;
        if let Some(jwt) = &self.jwt {
            let found = find_token(jwt.sources(), parts, protocols).ok_or_else(|| {
                PolicyError::MissingToken(format!("looked in: {}", describe_sources(jwt.sources())))
            })?;
            claims = Some(jwt.verify(&found.token).await.map_err(|e| match e {
                jwt::JwtError::KeysUnavailable(m) => PolicyError::KeysUnavailable(m),
                other => PolicyError::InvalidToken(other.to_string()),
            })?);
            token_source = Some(found.source);
        }

        let mut auth_headers = Vec::new();
        if let Some(fa) = &self.forward_auth {
            // A token in the query is not the auth service's business either.
            let uri = match &token_source {
                Some(TokenSource::Query(name)) => without_query_param(&parts.uri, name),
                _ => parts.uri.clone(),
            };
            let q = forward_auth::AuthQuery {
                parts,
                uri: &uri,
                client: facts.client.ip,
                forwarded_for: facts.forwarded_for,
                scheme: facts.scheme,
                host: facts.host,
            };
            match fa.check(&q).await {
                Ok(forward_auth::AuthDecision::Allow(h)) => auth_headers = h,
                Ok(forward_auth::AuthDecision::Deny {
                    status,
                    headers,
                    body,
                }) => {
                    return Err(PolicyError::AuthDenied {
                        status,
                        headers,
                        body,
                    });
                }
                Err(e) => return Err(PolicyError::AuthUnavailable(e.to_string())),
            }
        }

        // Every check passed: rewrite the request for the backend.
        *protocols = offer;
        if let Some(jwt) = &self.jwt
            && !jwt.forward_token()
        {
            match &token_source {
                Some(TokenSource::Header) => {
                    parts.headers.remove(http::header::AUTHORIZATION);
                }
                Some(TokenSource::Cookie(name)) => {
                    cookie::strip(&mut parts.headers, std::slice::from_ref(name))
                }
                _ => {}
            }
        }
        // A token in the URL is removed whatever `forward_token` says: URLs end up in logs.
        if let Some(TokenSource::Query(name)) = &token_source {
            parts.uri = without_query_param(&parts.uri, name);
        }
        cookie::strip(&mut parts.headers, &self.strip_cookies);
        for h in &self.strip_headers {
            parts.headers.remove(h);
        }
        // Identity headers are the proxy's word alone: the client's own copies always go.
        for (name, _) in &self.set_headers {
            parts.headers.remove(name);
        }
        if let Some(fa) = &self.forward_auth {
            for name in fa.copy_headers() {
                parts.headers.remove(name);
            }
        }
        let identity = identity::Facts {
            claims: claims.as_ref(),
            tls_subject: facts.tls_subject,
            client_ip: facts.client.ip,
        };
        for (name, template) in &self.set_headers {
            if let Some(v) = template.render(&identity)
                && let Ok(v) = http::HeaderValue::from_str(&v)
            {
                parts.headers.insert(name.clone(), v);
            }
        }
        for (name, value) in auth_headers {
            parts.headers.append(name, value);
        }
        Ok(marker.filter(|_| protocols.is_empty()))
    }
}
