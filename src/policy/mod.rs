//! Edge policy: what a handshake must show before anything is sent to a backend, and what
//! the backend request carries instead of the client's credentials.
//!
//! Checked in this order (cheapest and least secret first): origin → subprotocols → required
//! cookies → token (JWT) → forward-auth; then the request is rewritten for the backend (what it
//! offers, strips and adds). Nothing here knows the config file: `crate::config` builds each
//! part through its typed constructor ([`RoutePolicy::new`], [`jwt::JwtVerifier::new`],
//! [`forward_auth::ForwardAuth::new`]) and names the key and line of any error they return.

pub mod cookie;
pub mod forward_auth;
pub mod forwarding;
pub mod identity;
pub mod jwt;
pub mod origin;
pub mod subprotocol;
pub mod token;

pub use jwt::claim;
pub use token::TokenSource;
use token::{describe_sources, find_token, token_in_protocols, without_query_param};

/// A verified token's claims.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// What a route checks and rewrites. Every part is optional; the default admits everything
/// and changes nothing.
#[derive(Debug, Default)]
pub struct PolicyRules {
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

/// A route's policy: its rules, and whether they check anything at all.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    rules: PolicyRules,
    /// Computed once in [`RoutePolicy::new`] from the rules themselves.
    open: bool,
}

/// Headers the proxy builds itself for the backend: a policy may not set or strip them.
pub const RESERVED_HEADERS: &[&str] = &[
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
    "via",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    // Hop-by-hop: this connection's business, never a backend's.
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    // The request's correlation ids (`telemetry::correlation`).
    "x-request-id",
    "traceparent",
    "tracestate",
];

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
    /// 403: the token verified but a claim rule refused it (RFC 6750 §3.1
    /// `insufficient_scope`: a good token that does not grant this route).
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
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
            | PolicyError::MissingCookie(_)
            | PolicyError::InsufficientScope(_) => S::FORBIDDEN,
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
            PolicyError::InsufficientScope(_) => Outcome::ClaimsRefused,
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
            // Which claim failed is the log's: the client learns only that its token is
            // not enough here.
            PolicyError::InsufficientScope(_) => "insufficient scope".into(),
            PolicyError::KeysUnavailable(_) | PolicyError::AuthUnavailable(_) => {
                "authentication is unavailable, try again later".into()
            }
            other => other.to_string(),
        }
    }

    /// The challenge of a 401, and of the 403 for a token without the scope (RFC 9110
    /// §11.6.1, RFC 6750 §3).
    pub fn challenge(&self, realm: &str) -> Option<String> {
        let realm: String = realm.chars().filter(|c| *c != '"' && *c != '\\').collect();
        match self {
            PolicyError::MissingToken(_) => Some(format!("Bearer realm=\"{realm}\"")),
            PolicyError::InvalidToken(_) => {
                Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\""))
            }
            PolicyError::InsufficientScope(_) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\""
            )),
            _ => None,
        }
    }
}

/// What an admitted request carries on into its session.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// The subprotocol to answer the client with if the backend chooses none (see
    /// [`RoutePolicy::admit`]).
    pub token_marker: Option<String>,
    /// When the session must end because its token does (`expire_sessions`).
    pub session_end: Option<std::time::SystemTime>,
    /// Who the policy found the client to be, for the access log and the session API: the
    /// verified token's `sub`, or the forward-auth answer's `user_header`.
    pub user: Option<String>,
    /// The verified token's claims, for balancing on one (`hash_key = "claim:NAME"`).
    pub claims: Option<Claims>,
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

impl RoutePolicy {
    /// Whether this policy sets the header `name` on the backend request itself
    /// (`set_headers`, forward-auth's `copy_headers`). Once the request is admitted its copy
    /// of such a header is the policy's (the client's own copies are removed first), so it
    /// passes whatever its name: an `X-Forwarded-Prefix` the route sets is the proxy's word,
    /// not a client's claim about itself ([`forwarding::end_to_end`]).
    pub fn sets_header(&self, name: &http::HeaderName) -> bool {
        self.rules.set_headers.iter().any(|(n, _)| n == name)
            || (self.rules.forward_auth.as_ref()).is_some_and(|fa| fa.copy_headers().contains(name))
    }

    pub fn new(rules: PolicyRules) -> RoutePolicy {
        // Destructured without `..`: a rule added to `PolicyRules` does not compile until it
        // is decided here whether it makes the route checked.
        let PolicyRules {
            origin,
            subprotocols,
            require_cookies,
            strip_cookies,
            strip_headers,
            set_headers,
            jwt,
            forward_auth,
        } = &rules;
        let open = origin.is_none()
            && subprotocols.is_open()
            && require_cookies.is_empty()
            && strip_cookies.is_empty()
            && strip_headers.is_empty()
            && set_headers.is_empty()
            && jwt.is_none()
            && forward_auth.is_none();
        RoutePolicy { rules, open }
    }

    pub fn rules(&self) -> &PolicyRules {
        &self.rules
    }

    /// Whether the route checks anything at all (the fast path skips the rest).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Runs the checks in order and, when all pass, rewrites the request for the backend:
    /// `protocols` becomes the offer the backend sees, `parts` loses stripped credentials and
    /// gains identity headers. Nothing is changed when a check fails.
    ///
    /// Returns the subprotocol to answer the client with if the backend chooses none: the
    /// marker of an `["access_token", <token>]` offer that held nothing else. Browsers fail a
    /// connection whose offer got no subprotocol back, and a client that offers only its token
    /// this way (the Kubernetes pattern) expects the marker. And, on a route with
    /// `expire_sessions`, when the token expires: the session must not outlive it.
    pub async fn admit(
        &self,
        parts: &mut http::request::Parts,
        protocols: &mut Vec<String>,
        facts: &RequestFacts<'_>,
    ) -> Result<Admitted, PolicyError> {
        self.admit_as(parts, Some(protocols), facts).await
    }

    /// [`RoutePolicy::admit`] for a plain HTTP request (a route with `http = true`): the
    /// same checks in the same order, with the same errors, except what only a WebSocket
    /// handshake has. The Origin is checked only when the request carries one: browsers send
    /// it on cross-origin and state-changing requests, not on a same-origin page load, so
    /// `missing_origin = "refuse"` cannot apply. There is no subprotocol offer to filter,
    /// require or read a token from.
    pub async fn admit_request(
        &self,
        parts: &mut http::request::Parts,
        facts: &RequestFacts<'_>,
    ) -> Result<Admitted, PolicyError> {
        self.admit_as(parts, None, facts).await
    }

    /// The checks and the rewrite; `protocols` is the handshake's offer, `None` for a plain
    /// request.
    async fn admit_as(
        &self,
        parts: &mut http::request::Parts,
        protocols: Option<&mut Vec<String>>,
        facts: &RequestFacts<'_>,
    ) -> Result<Admitted, PolicyError> {
        let websocket = protocols.is_some();
        let mut origins = parts.headers.get_all(http::header::ORIGIN).iter();
        let origin_header = origins.next();
        if let Some(origin) = &self.rules.origin
            && (protocols.is_some() || origin_header.is_some())
        {
            // A browser sends one (RFC 6454 §7.3). With two, the first could pass the list
            // while a backend reads the last: refused rather than forwarded.
            if origins.next().is_some() {
                return Err(PolicyError::Origin(
                    "more than one Origin header: a client sends one".into(),
                ));
            }
            let value = origin_header.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            origin
                .check(value.as_deref(), Some((facts.host, facts.scheme)))
                .map_err(PolicyError::Origin)?;
        }

        let mut marker = None;
        let offer = match protocols.as_deref() {
            Some(offered) => Some(
                self.filter_offer(offered, &mut marker)
                    .map_err(PolicyError::Subprotocol)?,
            ),
            None => None,
        };

        for name in &self.rules.require_cookies {
            if cookie::get(&parts.headers, name).is_none() {
                return Err(PolicyError::MissingCookie(name.clone()));
            }
        }

        let mut claims = None;
        let mut token_source = None;
        let mut verified_token: Option<String> = None;
        if let Some(jwt) = &self.rules.jwt {
            let offered = protocols.as_deref().map_or(&[][..], Vec::as_slice);
            let found = find_token(jwt.sources(), parts, offered).ok_or_else(|| {
                PolicyError::MissingToken(format!("looked in: {}", describe_sources(jwt.sources())))
            })?;
            claims = Some(jwt.verify(&found.token).await.map_err(|e| match e {
                jwt::JwtError::KeysUnavailable(m) => PolicyError::KeysUnavailable(m),
                jwt::JwtError::InsufficientScope(m) => PolicyError::InsufficientScope(m),
                other => PolicyError::InvalidToken(other.to_string()),
            })?);
            token_source = Some(found.source);
            verified_token = Some(found.token);
        }
        // A token in the URL is removed whatever `forward_token` says (URLs end up in logs),
        // before the auth service sees the request (it is not its business either). So is
        // any other parameter of a token source's name, the token having come from
        // elsewhere or not: a backend reading it would take a token wsgate never checked.
        self.strip_query_tokens(&mut parts.uri);

        let mut auth = forward_auth::Allowed::default();
        if let Some(fa) = &self.rules.forward_auth {
            let q = forward_auth::AuthQuery {
                parts,
                uri: &parts.uri,
                client: facts.client.ip,
                forwarded_for: facts.forwarded_for,
                scheme: facts.scheme,
                host: facts.host,
                // The WebSocket handshake is a GET (HTTP/2's extended CONNECT included).
                method: if websocket {
                    "GET"
                } else {
                    parts.method.as_str()
                },
            };
            match fa.check(&q).await {
                Ok(forward_auth::AuthDecision::Allow(allowed)) => auth = allowed,
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
        let offer_is_empty = offer.as_ref().is_none_or(Vec::is_empty);
        if let (Some(protocols), Some(offer)) = (protocols, offer) {
            *protocols = offer;
        }
        if let Some(jwt) = &self.rules.jwt {
            let verified = token_source.as_ref().zip(verified_token.as_deref());
            strip_token_headers(&mut parts.headers, jwt, verified);
        }
        cookie::strip(&mut parts.headers, &self.rules.strip_cookies);
        // Also spelt with underscores: CGI, WSGI, PHP and Rack read `X_Debug_User` as
        // `X-Debug-User` (HTTP_X_DEBUG_USER), so stripping one spelling alone strips nothing.
        for h in &self.rules.strip_headers {
            forwarding::remove_with_lookalikes(&mut parts.headers, h);
        }
        // Identity headers are the proxy's word alone: the client's own copies always go.
        for (name, _) in &self.rules.set_headers {
            forwarding::remove_with_lookalikes(&mut parts.headers, name);
        }
        if let Some(fa) = &self.rules.forward_auth {
            for name in fa.copy_headers() {
                forwarding::remove_with_lookalikes(&mut parts.headers, name);
            }
        }
        let identity = identity::Facts {
            claims: claims.as_ref(),
            tls_subject: facts.tls_subject,
            client_ip: facts.client.ip,
        };
        for (name, template) in &self.rules.set_headers {
            if let Some(v) = template.render(&identity)
                && let Ok(v) = http::HeaderValue::from_str(&v)
            {
                parts.headers.insert(name.clone(), v);
            }
        }
        let set: Vec<http::HeaderName> = (self.rules.set_headers.iter().map(|(n, _)| n))
            .chain(auth.headers.iter().map(|(n, _)| n))
            .cloned()
            .collect();
        for (name, value) in auth.headers {
            parts.headers.append(name, value);
        }
        unname_in_connection(&mut parts.headers, &set);
        let session_end = self
            .rules
            .jwt
            .as_ref()
            .zip(claims.as_ref())
            .and_then(|(jwt, c)| jwt.session_end(c));
        // The auth service's word when the route asks it to name the user: it is the later
        // and more specific check (a token's `sub` may be a service account's id).
        let user = auth.user.or_else(|| {
            claims
                .as_ref()
                .and_then(|c| c.get("sub"))
                .and_then(|s| s.as_str())
                .map(str::to_string)
        });
        Ok(Admitted {
            token_marker: marker.filter(|_| offer_is_empty),
            session_end,
            user,
            claims,
        })
    }
}

impl RoutePolicy {
    /// Takes the query parameters the route's token sources name out of `uri`.
    fn strip_query_tokens(&self, uri: &mut http::Uri) {
        let Some(jwt) = &self.rules.jwt else { return };
        for s in jwt.sources() {
            if let TokenSource::Query(name) = s
                && let Some(stripped) = without_query_param(uri, name)
            {
                *uri = stripped;
            }
        }
    }

    /// The offer the backend may see: the token entries taken out (their marker kept in
    /// `marker` when the offer was only `["access_token", <token>]`), then the allow-list.
    fn filter_offer(
        &self,
        offered: &[String],
        marker: &mut Option<String>,
    ) -> Result<Vec<String>, String> {
        // The token entries come out of the offer before the allow-list sees it.
        let jwt_from_protocols = self
            .rules
            .jwt
            .as_ref()
            .is_some_and(|j| j.sources().contains(&TokenSource::Subprotocol));
        let mut offer = offered.to_vec();
        if jwt_from_protocols && let Some((_, idx)) = token_in_protocols(&offer) {
            // The checked token came after a marker (`access_token`, `bearer`): the marker
            // is what a client of that convention expects back as the chosen subprotocol.
            if token::is_token_marker(&offer[idx[0]]) {
                *marker = Some(offer[idx[0]].clone());
            }
            for i in idx.into_iter().rev() {
                offer.remove(i);
            }
        }
        self.rules.subprotocols.filter(offer)
    }
}

/// Takes the credentials of every token source out of the headers (the `Authorization`
/// header, every cookie of a source's name), and with `forward_token` puts the verified one
/// back where it came from, alone. A backend reading any other would take a token wsgate
/// never checked: a second `Authorization` header or a second cookie of the name (wsgate
/// checks the first, many frameworks read the last), or the cookie source's cookie when the
/// token came from the header. (Query and subprotocol tokens are handled on their own.)
fn strip_token_headers(
    headers: &mut http::HeaderMap,
    jwt: &jwt::JwtVerifier,
    verified: Option<(&TokenSource, &str)>,
) {
    let mut cookies = Vec::new();
    for source in jwt.sources() {
        match source {
            TokenSource::Header => {
                headers.remove(http::header::AUTHORIZATION);
            }
            TokenSource::Cookie(name) => cookies.push(name.clone()),
            TokenSource::Query(_) | TokenSource::Subprotocol => {}
        }
    }
    cookie::strip(headers, &cookies);
    if !jwt.forward_token() {
        return;
    }
    match verified {
        Some((TokenSource::Header, token)) => {
            if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(http::header::AUTHORIZATION, v);
            }
        }
        Some((TokenSource::Cookie(name), token)) => cookie::append(headers, name, token),
        _ => {}
    }
}

/// Takes `names` out of the request's `Connection` options. The headers the proxy sets are
/// not the client's to drop: RFC 9110 §7.6.1's options name fields of the message as it was
/// received (the client's own copies of these, already removed). Left in, `Connection:
/// upgrade, x-user-scope` would make the backend request leave out the proxy's
/// `X-User-Scope`.
fn unname_in_connection(headers: &mut http::HeaderMap, names: &[http::HeaderName]) {
    let named = |o: &String| names.iter().any(|n| o.eq_ignore_ascii_case(n.as_str()));
    let options = crate::handshake::list_values(headers, &http::header::CONNECTION);
    if !options.iter().any(named) {
        return;
    }
    let kept: Vec<&str> = (options.iter().filter(|o| !named(o)))
        .map(String::as_str)
        .collect();
    headers.remove(http::header::CONNECTION);
    if let Ok(v) = http::HeaderValue::from_str(&kept.join(", "))
        && !kept.is_empty()
    {
        headers.insert(http::header::CONNECTION, v);
    }
}
