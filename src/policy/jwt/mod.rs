//! JWT verification for a route: keys (HMAC secret, PEM public key, JWKS file or URL with a
//! cached, periodically refreshed key set) and the claim checks.
//!
//! `keys.rs` turns secrets, PEM files and JWK sets into [`Key`]s, `jwks.rs` fetches and
//! caches a key set from a URL, `claims.rs` holds the claim rules, this file verifies a token
//! against them. Key files and
//! secrets are read when the config is validated (`crate::config` calls the constructors
//! here), so that a missing file or variable is an error naming its key and line. A JWKS URL
//! is never fetched then (there may be no runtime yet, and the key server may start after
//! wsgate): the first `verify` fetches it.
//!
//! Algorithm confusion is closed twice: a route's algorithms are all HMAC or all public-key
//! (never both), and every key carries the algorithms it may verify, so a token naming HS256
//! is never checked against a public key used as an HMAC secret.

mod claims;
mod jwks;
mod keys;
#[cfg(test)]
pub(crate) mod tests;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::Uri;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use super::{Claims, TokenSource};
use crate::http_client::HttpClient;
pub use claims::{ClaimRule, ClaimValue, claim};
pub use jwks::RemoteJwks;
pub use keys::{Key, ParsedJwks, parse_jwks, restrict, secret_from_env, secret_from_file};

/// Why a token was refused. The message never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The token is not acceptable (the client gets 401).
    #[error("{0}")]
    Invalid(String),
    /// No key set could be fetched yet (JWKS URL down), so no token can be checked: the
    /// proxy answers 503.
    #[error("{0}")]
    KeysUnavailable(String),
    /// The token verified, but a claim rule refused it (the client gets 403 with
    /// `error="insufficient_scope"`): the message names the claim, never its value.
    #[error("{0}")]
    InsufficientScope(String),
}

/// Clock skew allowed on `exp` and `nbf`: enough for unsynchronised clocks, short enough
/// that an expired token is not honoured for long.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// How old a fetched key set may get before it is fetched again: issuers announce new keys
/// well ahead of using them, and an unknown `kid` refetches at once anyway.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);

/// Every algorithm jsonwebtoken verifies, in the order error messages list them.
pub const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// `HS256`, `EdDSA`: jsonwebtoken's `Debug` is the JOSE name.
pub fn alg_name(a: Algorithm) -> String {
    format!("{a:?}")
}

pub fn alg_list(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| alg_name(*a))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a route's keys come from.
#[derive(Debug)]
pub enum Keys {
    /// Read once at startup: a secret, a PEM key, or a JWKS file.
    Static(Vec<Key>),
    /// Fetched from a URL, cached and refreshed.
    Remote(Arc<RemoteJwks>),
}

/// A route's token verifier.
#[derive(Debug)]
pub struct JwtVerifier {
    sources: Vec<TokenSource>,
    keys: Keys,
    /// The `alg` values a token may name. `None` for a JWKS without `algorithms`: then each
    /// key's own `alg` (or its key type) decides.
    algorithms: Option<Vec<Algorithm>>,
    /// One validation per algorithm (jsonwebtoken wants the algorithms of a validation to be
    /// of the key's family), all with the same claim checks.
    validations: Vec<(Algorithm, Validation)>,
    /// Claims checked for presence after the signature and the standard claims.
    required_claims: Vec<String>,
    /// Claims checked for their values, after the presence checks.
    claim_rules: Vec<ClaimRule>,
    /// `Some(leeway)` when sessions end at their token's `exp` plus the leeway.
    expire_sessions: Option<Duration>,
    forward_token: bool,
    /// `issuer` is set: `iss` must be one string (RFC 7519 §4.1.1). jsonwebtoken also takes a
    /// list and accepts it when any of its entries is accepted, so a token could name an
    /// accepted issuer beside its own.
    issuer_checked: bool,
}

/// What a route's tokens must be and show, besides a good signature.
#[derive(Debug, Clone)]
pub struct JwtRules {
    /// Where to look for the token, in order of preference.
    pub sources: Vec<TokenSource>,
    /// The `alg` values a token may name. `None` for a JWKS without `algorithms`: then each
    /// key's own `alg` (or its key type) decides.
    pub algorithms: Option<Vec<Algorithm>>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Accepted `iss` values; when set, `iss` is required.
    pub issuers: Option<Vec<String>>,
    /// Accepted audiences; when set, `aud` is required and must name one.
    pub audiences: Option<Vec<String>>,
    /// Claims a token must carry (any value but `null`).
    pub required_claims: Vec<String>,
    /// Claims a token must carry with one of the listed values (403 otherwise).
    pub claims: Vec<ClaimRule>,
    /// End a session when its token expires (`exp` plus `leeway`), rather than let a socket
    /// opened with a since-expired token live on for as long as it stays open.
    pub expire_sessions: bool,
    /// Refuse a token without `exp`.
    pub require_exp: bool,
    /// Pass the token's `Authorization` header or cookie on to the backend.
    pub forward_token: bool,
}

impl Default for JwtRules {
    /// The `Authorization` header, then the subprotocol list (the one place a browser script
    /// can put a token); the algorithms of the keys; `exp` required; the token kept from the
    /// backend.
    fn default() -> Self {
        JwtRules {
            sources: vec![TokenSource::Header, TokenSource::Subprotocol],
            algorithms: None,
            leeway: DEFAULT_LEEWAY,
            issuers: None,
            audiences: None,
            required_claims: Vec::new(),
            claims: Vec::new(),
            expire_sessions: false,
            require_exp: true,
            forward_token: false,
        }
    }
}

impl Keys {
    /// A key set fetched from `url` when first needed, cached, refreshed every `refresh`;
    /// its keys limited to `allowed` algorithms.
    pub fn remote(
        url: Uri,
        client: HttpClient,
        refresh: Duration,
        allowed: Option<Vec<Algorithm>>,
    ) -> Keys {
        Keys::Remote(Arc::new(RemoteJwks::new(url, client, refresh, allowed)))
    }
}

/// Why no key verified a token.
enum Refusal {
    /// The token names a key id the set does not hold (JWKS URL: worth a refetch).
    UnknownKid(String),
    Other(String),
}

impl JwtVerifier {
    pub fn new(keys: Keys, rules: JwtRules) -> JwtVerifier {
        let JwtRules {
            sources,
            algorithms,
            leeway,
            issuers,
            audiences,
            required_claims,
            claims,
            expire_sessions,
            require_exp,
            forward_token,
        } = rules;
        let mut base = Validation::new(Algorithm::HS256);
        // jsonwebtoken counts whole seconds; round a sub-second leeway up.
        base.leeway = leeway.as_secs() + u64::from(leeway.subsec_nanos() > 0);
        base.validate_exp = true;
        base.validate_nbf = true;
        base.required_spec_claims.clear();
        if require_exp {
            base.required_spec_claims.insert("exp".into());
        }
        // Without `audience`, `aud` is not looked at (jsonwebtoken would refuse any token that
        // has one); with it, `aud` must be present and name one of them.
        base.validate_aud = audiences.is_some();
        if let Some(a) = &audiences {
            base.set_audience(a);
            base.required_spec_claims.insert("aud".into());
        }
        if let Some(i) = &issuers {
            base.set_issuer(i);
            base.required_spec_claims.insert("iss".into());
        }
        let validations = ALL_ALGORITHMS
            .iter()
            .map(|&a| {
                let mut val = base.clone();
                val.algorithms = vec![a];
                (a, val)
            })
            .collect();
        JwtVerifier {
            sources,
            keys,
            algorithms,
            validations,
            required_claims,
            claim_rules: claims,
            expire_sessions: expire_sessions.then_some(leeway),
            forward_token,
            issuer_checked: issuers.is_some(),
        }
    }

    /// The `alg` values a token may name (`None`: each key's own decide).
    pub fn algorithms(&self) -> Option<&[Algorithm]> {
        self.algorithms.as_deref()
    }

    /// The claims a token must carry with one of their accepted values.
    pub fn claim_rules(&self) -> &[ClaimRule] {
        &self.claim_rules
    }

    /// Where to look for the token, in order of preference.
    pub fn sources(&self) -> &[TokenSource] {
        &self.sources
    }

    /// Whether the token goes on to the backend (`forward_token = true`); by default its
    /// header or cookie is removed. (Query and subprotocol tokens are always removed.)
    pub fn forward_token(&self) -> bool {
        self.forward_token
    }

    /// When a session opened with a token bearing `claims` must end: its `exp` plus the
    /// leeway, on a route with `expire_sessions`; `None` otherwise (or without `exp`).
    pub fn session_end(&self, claims: &Claims) -> Option<SystemTime> {
        let leeway = self.expire_sessions?;
        let exp = claims
            .get("exp")?
            .as_f64()
            .filter(|e| e.is_finite() && *e >= 0.0)?;
        // Past the year 10^11 `from_secs_f64` would panic: such a token never expires.
        let exp = Duration::try_from_secs_f64(exp).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(exp)?.checked_add(leeway)
    }

    /// Verifies signature and claims, then the claim rules; returns the claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let claims = self.verify_signed(token).await?;
        if let Some(rule) = self.claim_rules.iter().find(|r| !r.admits(&claims)) {
            return Err(JwtError::InsufficientScope(format!(
                "claim {} has no accepted value",
                shown(&rule.path)
            )));
        }
        Ok(claims)
    }

    /// The signature and the standard claims (and the required ones).
    async fn verify_signed(&self, token: &str) -> Result<Claims, JwtError> {
        let (alg, kid) = read_header(token)?;
        if let Some(allowed) = &self.algorithms
            && !allowed.contains(&alg)
        {
            return Err(JwtError::Invalid(format!(
                "algorithm {} not allowed",
                alg_name(alg)
            )));
        }
        let kid = kid.as_deref();
        match &self.keys {
            Keys::Static(keys) => self.check(token, alg, kid, keys).map_err(refusal),
            Keys::Remote(remote) => {
                let set = remote.current().await?;
                match self.check(token, alg, kid, &set.keys) {
                    Err(Refusal::UnknownKid(m)) => match remote.refetch_for_kid(&set).await {
                        Some(fresh) => self.check(token, alg, kid, &fresh.keys).map_err(refusal),
                        None => Err(JwtError::Invalid(m)),
                    },
                    other => other.map_err(refusal),
                }
            }
        }
    }

    /// Verifies `token` with the keys of `keys` that match its `kid` and `alg`.
    fn check(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        keys: &[Key],
    ) -> Result<Claims, Refusal> {
        let mut candidates: Vec<&Key> = match kid {
            Some(kid) => keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => keys.iter().collect(),
        };
        if candidates.is_empty() {
            // A set whose keys carry no ids (a single secret or PEM key, too) is tried whole.
            candidates = keys.iter().filter(|k| k.kid.is_none()).collect();
            if candidates.is_empty() {
                return Err(Refusal::UnknownKid(format!(
                    "unknown key id {}",
                    shown(kid.unwrap_or_default())
                )));
            }
        }
        candidates.retain(|k| k.algs.contains(&alg));
        if candidates.is_empty() {
            return Err(Refusal::Other(match kid {
                Some(kid) => format!(
                    "algorithm {} not allowed for key {}",
                    alg_name(alg),
                    shown(kid)
                ),
                None => format!("algorithm {} not allowed", alg_name(alg)),
            }));
        }
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or_else(|| Refusal::Other(format!("algorithm {} not allowed", alg_name(alg))))?;
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Ok(data) => {
                    let claims = data.claims;
                    // jsonwebtoken checks `exp` and `nbf` are NumericDates, never `iat`: a
                    // token that says it was issued "yesterday" is as malformed.
                    if claims.get("iat").is_some_and(|v| !is_numeric_date(v)) {
                        return Err(Refusal::Other(
                            "claim \"iat\" malformed (not a NumericDate)".into(),
                        ));
                    }
                    if self.issuer_checked
                        && !claims.get("iss").is_some_and(serde_json::Value::is_string)
                    {
                        return Err(Refusal::Other("issuer not accepted".into()));
                    }
                    for name in &self.required_claims {
                        if claim(&claims, name).is_none_or(serde_json::Value::is_null) {
                            return Err(Refusal::Other(format!("required claim {name:?} missing")));
                        }
                    }
                    return Ok(claims);
                }
                // Another key of the same algorithm may have signed it (a set without ids).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = Some(e),
                Err(e) => return Err(Refusal::Other(describe_claims(&e, alg, token))),
            }
        }
        Err(Refusal::Other(match last {
            Some(e) => describe(&e, alg),
            None => "signature invalid".into(),
        }))
    }
}

/// RFC 7519 §2: a NumericDate is a JSON number of seconds since the epoch (non-negative
/// here, as jsonwebtoken holds `exp` and `nbf` to).
fn is_numeric_date(v: &serde_json::Value) -> bool {
    v.as_f64().is_some_and(|n| n.is_finite() && n >= 0.0)
}

fn refusal(r: Refusal) -> JwtError {
    match r {
        Refusal::UnknownKid(m) | Refusal::Other(m) => JwtError::Invalid(m),
    }
}

/// A value taken from a token's header (`kid`, `alg`), quoted and cut short for the log.
fn shown(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// The header's `alg` and `kid`. Errors never quote the token; an unsupported `alg` (such
/// as `none`) or critical extension is named, cut short.
pub(crate) fn read_header(token: &str) -> Result<(Algorithm, Option<String>), JwtError> {
    match jsonwebtoken::decode_header(token) {
        // RFC 7515 §4.1.11: a recipient that does not understand every extension `crit` lists
        // must reject the token (the extension may change what the signature covers, as
        // RFC 7797's `b64` does). wsgate understands none; an empty list is malformed.
        Ok(h) if h.crit.is_some() => Err(JwtError::Invalid(match h.crit.as_deref() {
            Some([first, ..]) => {
                format!("critical header extension {} not understood", shown(first))
            }
            _ => "malformed token header (empty crit)".into(),
        })),
        Ok(h) => Ok((h.alg, h.kid)),
        Err(_) => {
            let raw_alg = token
                .split('.')
                .next()
                .and_then(|h| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(h)
                        .ok()
                })
                .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
                .and_then(|h| h.get("alg").and_then(|a| a.as_str().map(str::to_owned)));
            Err(JwtError::Invalid(match raw_alg {
                Some(a) if Algorithm::from_str(&a).is_err() => {
                    format!("algorithm {} not supported", shown(&a))
                }
                _ => "malformed token header".into(),
            }))
        }
    }
}

/// [`describe`], for an error after a good signature: jsonwebtoken says a standard time
/// claim is missing when it is there but no NumericDate (a string, a negative number, one
/// past `u64`), which would send whoever reads the log looking for the wrong fault.
fn describe_claims(e: &jsonwebtoken::errors::Error, alg: Algorithm, token: &str) -> String {
    if let ErrorKind::MissingRequiredClaim(c) = e.kind()
        && payload(token).is_some_and(|p| p.get(c).is_some_and(|v| !v.is_null()))
    {
        return format!("claim {c:?} malformed (not a NumericDate)");
    }
    describe(e, alg)
}

/// The token's claims, decoded without a check: only to word an error better.
fn payload(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let b64 = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// A log line for a jsonwebtoken error: never the token, nor anything decoded from it.
fn describe(e: &jsonwebtoken::errors::Error, alg: Algorithm) -> String {
    match e.kind() {
        ErrorKind::InvalidSignature => "signature invalid".into(),
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "issuer not accepted".into(),
        ErrorKind::InvalidAudience => "audience not accepted".into(),
        ErrorKind::InvalidSubject => "subject not accepted".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("required claim {c:?} missing"),
        ErrorKind::InvalidClaimFormat(c) => format!("claim {c:?} malformed"),
        ErrorKind::InvalidAlgorithm => format!("algorithm {} not allowed", alg_name(alg)),
        ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => format!("key unusable with {}", alg_name(alg)),
        _ => "malformed token".into(),
    }
}
