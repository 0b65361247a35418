//! JWT verification for a route: keys (HMAC secret, PEM public key, JWKS file or URL with a
//! cached, periodically refreshed key set) and the claim checks.
//!
//! Key files and secrets are read at config validation, so that a missing file or variable
//! is an error naming its key and line. A JWKS URL is never fetched then (there may be no
//! runtime yet, and the key server may start after wsgate): the first `verify` fetches it.
//!
//! Algorithm confusion is closed twice: a route's algorithms are all HMAC or all public-key
//! (never both), and every key carries the algorithms it may verify, so a token naming HS256
//! is never checked against a public key used as an HMAC secret.

use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use http::Uri;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use toml::Spanned;

use super::{Claims, TokenSource};
use crate::config::Validator;
use crate::config::file::SpStr;
use crate::http_client::HttpClient;

/// `[route.auth.jwt]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwt {
    /// Where to look for the token, in order: `"header"`, `"cookie:NAME"`, `"query:NAME"`,
    /// `"subprotocol"`.
    pub from: Option<Spanned<Vec<SpStr>>>,
    /// Name of an environment variable holding an HMAC secret.
    pub secret_env: Option<SpStr>,
    /// A file holding an HMAC secret (one trailing newline is not part of it).
    pub secret_file: Option<SpStr>,
    /// A PEM public key: RSA, EC P-256/P-384 or Ed25519 (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    pub public_key: Option<SpStr>,
    /// A JWKS document on disk.
    pub jwks_file: Option<SpStr>,
    /// A JWKS document fetched over HTTP(S), cached and refreshed.
    pub jwks_url: Option<SpStr>,
    /// PEM CA bundle for an `https://` `jwks_url` (else the system roots).
    pub jwks_ca: Option<SpStr>,
    /// How old the fetched key set may get before it is fetched again (default `"5m"`).
    pub jwks_refresh: Option<SpStr>,
    /// Accepted `alg` values; by default inferred from the key.
    pub algorithms: Option<Spanned<Vec<SpStr>>>,
    /// Accepted issuers (`iss`): a string or a list; when set, `iss` is required.
    pub issuer: Option<Spanned<OneOrMany>>,
    /// Accepted audiences: a string or a list; when set, `aud` is required and must name one.
    pub audience: Option<Spanned<OneOrMany>>,
    /// Clock skew allowed on `exp` and `nbf` (default `"30s"`; `"0"` for none).
    pub leeway: Option<SpStr>,
    /// Claims a token must carry (any value but `null`).
    pub required_claims: Option<Spanned<Vec<SpStr>>>,
    /// Whether a token without `exp` is refused (default `true`).
    pub require_exp: Option<Spanned<bool>>,
    /// Pass the token's `Authorization` header or cookie on to the backend (default `false`).
    pub forward_token: Option<bool>,
}

/// A string or a list of strings.
#[derive(Debug)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// By hand rather than `#[serde(untagged)]`, whose error ("data did not match any variant")
/// would not say what to write.
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(s.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

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
}

/// How long a JWKS fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A key set is a few kilobytes; anything near this is not a key set.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// An unknown `kid` refetches the key set (the issuer may have rotated its keys), but not
/// more often than this, so tokens with made-up key ids cannot make wsgate hammer the issuer.
const KID_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed fetch, the next one waits this long (or `jwks_refresh`, if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// While no key set was ever fetched, each verify may retry, but not more often than this:
/// while the key server is down, a burst of handshakes costs one fetch, not one each.
const FIRST_FETCH_RETRY: Duration = Duration::from_secs(2);
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);

/// Every algorithm jsonwebtoken verifies, in the order error messages list them.
const ALL_ALGORITHMS: [Algorithm; 12] = [
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
fn alg_name(a: Algorithm) -> String {
    format!("{a:?}")
}

fn alg_list(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| alg_name(*a))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One verification key and the algorithms it may verify.
#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    /// `DecodingKey`'s `Debug` redacts the key material.
    key: DecodingKey,
}

/// Where a route's keys come from.
#[derive(Debug)]
enum Keys {
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
    forward_token: bool,
}

/// Why no key verified a token.
enum Refusal {
    /// The token names a key id the set does not hold (JWKS URL: worth a refetch).
    UnknownKid(String),
    Other(String),
}

impl JwtVerifier {
    /// Where to look for the token, in order of preference.
    pub fn sources(&self) -> &[TokenSource] {
        &self.sources
    }

    /// Whether the token goes on to the backend (`forward_token = true`); by default its
    /// header or cookie is removed. (Query and subprotocol tokens are always removed.)
    pub fn forward_token(&self) -> bool {
        self.forward_token
    }

    /// Verifies signature and claims; returns the claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
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
                    for name in &self.required_claims {
                        if claims.get(name).is_none_or(serde_json::Value::is_null) {
                            return Err(Refusal::Other(format!("required claim {name:?} missing")));
                        }
                    }
                    return Ok(claims);
                }
                // Another key of the same algorithm may have signed it (a set without ids).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => last = Some(e),
                Err(e) => return Err(Refusal::Other(describe(&e, alg))),
            }
        }
        Err(Refusal::Other(match last {
            Some(e) => describe(&e, alg),
            None => "signature invalid".into(),
        }))
    }
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
/// as `none`) is named, cut short.
fn read_header(token: &str) -> Result<(Algorithm, Option<String>), JwtError> {
    match jsonwebtoken::decode_header(token) {
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

// ---------------------------------------------------------------------------------------
// JWKS over HTTP

/// A key set fetched from a URL.
#[derive(Debug)]
struct KeySet {
    keys: Vec<Key>,
    fetched: Instant,
}

/// A JWKS URL's cache. `state` is only held for a few instructions (never across an
/// await); `fetching` serialises the fetches themselves, so that concurrent handshakes
/// wait for one fetch instead of each starting their own.
struct RemoteJwks {
    url: Uri,
    client: HttpClient,
    refresh: Duration,
    /// `algorithms` from the config: keys are limited to these.
    allowed: Option<Vec<Algorithm>>,
    state: Mutex<RemoteState>,
    fetching: tokio::sync::Mutex<()>,
    /// Completed fetch attempts (tests wait on it instead of sleeping).
    attempts: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct RemoteState {
    set: Option<Arc<KeySet>>,
    /// When the last fetch attempt ended, successful or not.
    attempted: Option<Instant>,
    last_error: Option<String>,
    /// When an unknown `kid` last caused a refetch.
    kid_refetch: Option<Instant>,
    /// A background refresh is queued or running.
    refreshing: bool,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    fn new(
        url: Uri,
        client: HttpClient,
        refresh: Duration,
        allowed: Option<Vec<Algorithm>>,
    ) -> RemoteJwks {
        RemoteJwks {
            url,
            client,
            refresh,
            allowed,
            state: Mutex::new(RemoteState::default()),
            fetching: tokio::sync::Mutex::new(()),
            attempts: tokio::sync::watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RemoteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The set to verify with: the cached one (starting a background refresh when it is
    /// due: the cached set keeps serving meanwhile), or else the result of a first fetch.
    async fn current(self: &Arc<Self>) -> Result<Arc<KeySet>, JwtError> {
        let (cached, refresh) = {
            let mut st = self.lock();
            let retry_after = RETRY_AFTER_FAILURE.min(self.refresh);
            let due = st.set.as_ref().is_some_and(|s| {
                s.fetched.elapsed() >= self.refresh
                    && !st.refreshing
                    && st.attempted.is_none_or(|t| t.elapsed() >= retry_after)
            });
            if due {
                st.refreshing = true;
            }
            (st.set.clone(), due)
        };
        if refresh {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.refresh_in_background().await });
        }
        match cached {
            Some(set) => Ok(set),
            None => self.first_fetch().await,
        }
    }

    async fn refresh_in_background(&self) {
        {
            let _fetching = self.fetching.lock().await;
            // An unknown kid may have refetched while this task waited.
            let fresh = self
                .lock()
                .set
                .as_ref()
                .is_some_and(|s| s.fetched.elapsed() < self.refresh);
            if !fresh {
                let _ = self.fetch_locked().await;
            }
        }
        self.lock().refreshing = false;
    }

    async fn first_fetch(&self) -> Result<Arc<KeySet>, JwtError> {
        let asked = Instant::now();
        let _fetching = self.fetching.lock().await;
        {
            let st = self.lock();
            if let Some(set) = &st.set {
                return Ok(set.clone());
            }
            // A fetch that ended while this one waited, or a recent failure, answers for it.
            if let Some(t) = st.attempted
                && (t >= asked || t.elapsed() < FIRST_FETCH_RETRY)
            {
                return Err(self.unavailable(st.last_error.as_deref().unwrap_or("no key set")));
            }
        }
        self.fetch_locked().await.map_err(|e| self.unavailable(&e))
    }

    fn unavailable(&self, reason: &str) -> JwtError {
        JwtError::KeysUnavailable(format!("no key set from {} yet: {reason}", self.url))
    }

    /// After an unknown `kid`: the set someone else fetched meanwhile, or a fresh fetch
    /// unless an unknown `kid` already caused one in the last [`KID_REFETCH_INTERVAL`].
    async fn refetch_for_kid(&self, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        let _fetching = self.fetching.lock().await;
        {
            let mut st = self.lock();
            if let Some(set) = &st.set
                && !Arc::ptr_eq(set, seen)
            {
                return Some(set.clone());
            }
            if st
                .kid_refetch
                .is_some_and(|t| t.elapsed() < KID_REFETCH_INTERVAL)
            {
                return None;
            }
            st.kid_refetch = Some(Instant::now());
        }
        self.fetch_locked().await.ok()
    }

    /// Fetches and installs the set; a failure keeps the old set. Called with `fetching` held.
    async fn fetch_locked(&self) -> Result<Arc<KeySet>, String> {
        let result = self.fetch().await;
        let out = {
            let mut st = self.lock();
            st.attempted = Some(Instant::now());
            match result {
                Ok(keys) => {
                    tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                    let set = Arc::new(KeySet {
                        keys,
                        fetched: Instant::now(),
                    });
                    st.set = Some(set.clone());
                    st.last_error = None;
                    Ok(set)
                }
                Err(e) => {
                    if st.set.is_some() {
                        tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; the key set fetched before stays in use");
                    } else {
                        tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; tokens cannot be verified until it succeeds");
                    }
                    st.last_error = Some(e.clone());
                    Err(e)
                }
            }
        };
        self.attempts.send_modify(|n| *n += 1);
        out
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let resp = self
            .client
            .get(&self.url, FETCH_TIMEOUT, MAX_JWKS_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP status {}", resp.status()));
        }
        let parsed = parse_jwks(resp.body(), false)?;
        for (which, why) in &parsed.skipped {
            tracing::debug!(url = %self.url, key = %which, reason = %why, "JWKS key skipped");
        }
        let keys = restrict(parsed.keys, self.allowed.as_deref());
        if keys.is_empty() {
            return Err(match &self.allowed {
                Some(a) => format!("no key in the set is usable with {}", alg_list(a)),
                None => "no usable key in the set".into(),
            });
        }
        Ok(keys)
    }
}

/// Keys limited to `allowed` algorithms; keys left with none are dropped.
fn restrict(mut keys: Vec<Key>, allowed: Option<&[Algorithm]>) -> Vec<Key> {
    if let Some(allowed) = allowed {
        for k in &mut keys {
            k.algs.retain(|a| allowed.contains(a));
        }
        keys.retain(|k| !k.algs.is_empty());
    }
    keys
}

// ---------------------------------------------------------------------------------------
// Keys from files and documents

/// The usable keys of a JWKS document, and why the others were skipped.
struct ParsedJwks {
    keys: Vec<Key>,
    skipped: Vec<(String, String)>,
}

/// Parses a JWKS document. Keys are taken one by one, so that one key of an unknown type
/// does not make the whole set unusable. HMAC keys (`kty: oct`) only when `allow_hmac`: a
/// set served over HTTP is public, and a secret in it is no secret.
fn parse_jwks(body: &[u8], allow_hmac: bool) -> Result<ParsedJwks, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let mut out = ParsedJwks {
        keys: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, value) in raw.keys.into_iter().enumerate() {
        let label = match value.get("kid").and_then(|k| k.as_str()) {
            Some(kid) => format!("key {i} ({})", shown(kid)),
            None => format!("key {i}"),
        };
        let result = serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("not a JWK: {e}"))
            .and_then(|jwk| key_from_jwk(&jwk, allow_hmac));
        match result {
            Ok(k) => out.keys.push(k),
            Err(why) => out.skipped.push((label, why)),
        }
    }
    Ok(out)
}

fn key_from_jwk(jwk: &Jwk, allow_hmac: bool) -> Result<Key, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("meant for encryption (\"use\": \"enc\")".into());
    }
    let (what, family): (&str, Vec<Algorithm>) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.n.trim_end_matches('='))
                .map_err(|_| "RSA modulus is not base64url".to_string())?;
            check_rsa_bits(&n)?;
            ("RSA", AlgorithmFamily::Rsa.algorithms().to_vec())
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => ("EC P-256", vec![Algorithm::ES256]),
            EllipticCurve::P384 => ("EC P-384", vec![Algorithm::ES384]),
            ref other => return Err(format!("curve {other:?} not supported (P-256, P-384)")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => ("Ed25519", vec![Algorithm::EdDSA]),
            ref other => return Err(format!("curve {other:?} not supported (Ed25519)")),
        },
        AlgorithmParameters::OctetKey(_) if allow_hmac => {
            ("HMAC", AlgorithmFamily::Hmac.algorithms().to_vec())
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "a shared secret (\"kty\": \"oct\") has no place in a published key set".into(),
            );
        }
        _ => return Err("key type not supported (RSA, EC, OKP)".into()),
    };
    let algs = match jwk.common.key_algorithm {
        None => family,
        Some(ka) => {
            let alg = Algorithm::try_from(ka)
                .map_err(|_| format!("\"alg\": {ka} is not a signature algorithm"))?;
            if !family.contains(&alg) {
                return Err(format!(
                    "\"alg\": {} does not fit a {what} key",
                    alg_name(alg)
                ));
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable {what} key: {e}"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algs,
        key,
    })
}

/// aws-lc verifies RSA signatures of 2048 to 8192-bit keys only: refuse others up front
/// rather than report every token's signature as invalid.
fn check_rsa_bits(modulus: &[u8]) -> Result<(), String> {
    let m = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => &[][..],
    };
    let bits = (m.len() * 8).saturating_sub(m.first().map_or(0, |b| b.leading_zeros() as usize));
    if (2048..=8192).contains(&bits) {
        Ok(())
    } else {
        Err(format!(
            "RSA key of {bits} bits: 2048 to 8192 bits are supported"
        ))
    }
}

/// A public key from a PEM file: `PUBLIC KEY` (SPKI: RSA, EC P-256/P-384, Ed25519) or
/// `RSA PUBLIC KEY` (PKCS#1). Returns the key with every algorithm it can verify, and a
/// description for error messages.
fn pem_public_key(path: &Path) -> Result<(Key, &'static str), String> {
    use rustls::pki_types::pem::{self, SectionKind};

    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut rd = bytes.as_slice();
    let mut seen = Vec::new();
    loop {
        match pem::from_buf(&mut rd) {
            Ok(Some((SectionKind::PublicKey, der))) => {
                return spki_key(&der).map_err(|m| format!("{}: {m}", path.display()));
            }
            Ok(Some((kind, _))) => seen.push(kind),
            Ok(None) => break,
            Err(e) => return Err(format!("{}: not a valid PEM file: {e:?}", path.display())),
        }
    }
    // pki-types skips the labels it does not know, such as PKCS#1's `RSA PUBLIC KEY`.
    if let Some(der) = pem_block(&bytes, "RSA PUBLIC KEY") {
        let der = der.map_err(|m| format!("{}: {m}", path.display()))?;
        return rsa_pkcs1_key(&der)
            .map(|k| (k, "RSA"))
            .map_err(|m| format!("{}: {m}", path.display()));
    }
    let private = seen.iter().any(|k| {
        matches!(
            k,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
        )
    });
    Err(if private {
        format!(
            "{} holds a private key: give wsgate the public key only (`openssl pkey -in KEY -pubout`)",
            path.display()
        )
    } else if seen.contains(&SectionKind::Certificate) {
        format!(
            "{} holds a certificate: extract its public key (`openssl x509 -in CERT -pubkey -noout`)",
            path.display()
        )
    } else {
        format!(
            "{}: no public key in the file (expected a PUBLIC KEY or RSA PUBLIC KEY block)",
            path.display()
        )
    })
}

/// The DER inside the first `-----BEGIN {label}-----` block, if there is one.
fn pem_block(bytes: &[u8], label: &str) -> Option<Result<Vec<u8>, String>> {
    let text = String::from_utf8_lossy(bytes);
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let Some(len) = text[start..].find(&end) else {
        return Some(Err(format!("{begin} without {end}")));
    };
    let b64: String = text[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{label} block is not base64: {e}")),
    )
}

fn rsa_pkcs1_key(der: &[u8]) -> Result<Key, String> {
    use x509_parser::prelude::FromDer;
    let (_, rsa) = x509_parser::public_key::RSAPublicKey::from_der(der)
        .map_err(|_| "not a valid RSA public key".to_string())?;
    check_rsa_bits(rsa.modulus)?;
    Ok(Key {
        kid: None,
        algs: AlgorithmFamily::Rsa.algorithms().to_vec(),
        key: DecodingKey::from_rsa_der(der),
    })
}

fn spki_key(der: &[u8]) -> Result<(Key, &'static str), String> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;

    let (_, spki) = SubjectPublicKeyInfo::from_der(der)
        .map_err(|_| "the PUBLIC KEY block is not a valid public key".to_string())?;
    let oid = &spki.algorithm.algorithm;
    let data = spki.subject_public_key.data.as_ref();
    let key = |algs: Vec<Algorithm>, key: DecodingKey| Key {
        kid: None,
        algs,
        key,
    };
    if *oid == OID_PKCS1_RSAENCRYPTION {
        Ok((rsa_pkcs1_key(data)?, "RSA"))
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => Ok((
                key(vec![Algorithm::ES256], DecodingKey::from_ec_der(data)),
                "EC P-256",
            )),
            Some(c) if c == OID_NIST_EC_P384 => Ok((
                key(vec![Algorithm::ES384], DecodingKey::from_ec_der(data)),
                "EC P-384",
            )),
            Some(c) => Err(format!("EC curve {c} not supported (P-256, P-384)")),
            None => Err("EC key without a named curve".into()),
        }
    } else if *oid == OID_SIG_ED25519 {
        if data.len() != 32 {
            return Err("Ed25519 key of the wrong length".into());
        }
        Ok((
            key(vec![Algorithm::EdDSA], DecodingKey::from_ed_der(data)),
            "Ed25519",
        ))
    } else {
        Err(format!(
            "key type {oid} not supported (RSA, EC P-256/P-384, Ed25519)"
        ))
    }
}

/// An HMAC secret from an environment variable's value.
fn secret_from_env(name: &str, value: Option<std::ffi::OsString>) -> Result<Vec<u8>, String> {
    let Some(value) = value else {
        return Err(format!("environment variable {name} is not set"));
    };
    if value.is_empty() {
        return Err(format!("environment variable {name} is empty"));
    }
    Ok(value.into_encoded_bytes())
}

/// An HMAC secret from a file: its bytes, less one trailing newline (`\n` or `\r\n`).
fn secret_from_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------
// Config validation

/// The configured key source: its name, value and span.
struct KeySourceKey<'f> {
    name: &'static str,
    value: &'f SpStr,
}

/// Validates `[route.auth.jwt]`, reading key files now so that errors name key and line.
pub(crate) fn validate(
    v: &mut Validator<'_>,
    key: &str,
    f: &Spanned<FileJwt>,
) -> Option<Arc<JwtVerifier>> {
    let j = f.get_ref();
    let sources = super::token_sources(v, &format!("{key}.from"), j.from.as_ref());
    let k = |name: &str| format!("{key}.{name}");

    let configured = algorithms(v, key, j.algorithms.as_ref());

    let given: Vec<KeySourceKey<'_>> = [
        ("secret_env", &j.secret_env),
        ("secret_file", &j.secret_file),
        ("public_key", &j.public_key),
        ("jwks_file", &j.jwks_file),
        ("jwks_url", &j.jwks_url),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|value| KeySourceKey { name, value }))
    .collect();
    if !matches!(given.first(), Some(s) if s.name == "jwks_url") {
        for (name, value) in [("jwks_ca", &j.jwks_ca), ("jwks_refresh", &j.jwks_refresh)] {
            if let Some(value) = value {
                v.err(k(name), Some(value.span()), "only used with jwks_url");
            }
        }
    }
    let source = match given.as_slice() {
        [] => {
            v.err(
                key,
                Some(f.span()),
                "needs a key: one of secret_env, secret_file, public_key, jwks_file, jwks_url",
            );
            return None;
        }
        [one] => one,
        [first, second, ..] => {
            v.err(
                k(second.name),
                Some(second.value.span()),
                format!(
                    "one key source per route: {} and {} are both set",
                    first.name, second.name
                ),
            );
            return None;
        }
    };
    let skey = k(source.name);
    let sspan = source.value.span();
    let svalue = source.value.get_ref().trim();

    // Each key source yields its keys and the algorithms tokens may name.
    let (keys, allowed): (Keys, Option<Vec<Algorithm>>) = match source.name {
        "secret_env" | "secret_file" => {
            let secret = if source.name == "secret_env" {
                secret_from_env(svalue, std::env::var_os(svalue))
            } else {
                secret_from_file(&v.base.join(svalue))
            };
            let secret = match secret {
                Ok(s) => s,
                Err(m) => {
                    v.err(skey, Some(sspan), m);
                    return None;
                }
            };
            let hmac = AlgorithmFamily::Hmac.algorithms();
            let algs = fit_algorithms(
                v,
                key,
                j.algorithms.as_ref(),
                configured.as_deref(),
                hmac,
                "an HMAC secret",
            )
            .unwrap_or_else(|| vec![Algorithm::HS256]);
            // RFC 7518 §3.2: a key at least as long as the hash output.
            let needed = algs
                .iter()
                .map(|a| match a {
                    Algorithm::HS384 => 48,
                    Algorithm::HS512 => 64,
                    _ => 32,
                })
                .max()
                .unwrap_or(32);
            if secret.len() < needed {
                tracing::warn!(
                    key = %skey,
                    bytes = secret.len(),
                    needed,
                    "the HMAC secret is short for {}: a short secret can be guessed offline from any one token",
                    alg_list(&algs)
                );
            }
            let key = Key {
                kid: None,
                algs: algs.clone(),
                key: DecodingKey::from_secret(&secret),
            };
            (Keys::Static(vec![key]), Some(algs))
        }
        "public_key" => {
            let (mut pk, what) = match pem_public_key(&v.base.join(svalue)) {
                Ok(k) => k,
                Err(m) => {
                    v.err(skey, Some(sspan), m);
                    return None;
                }
            };
            let usable = pk.algs.clone();
            let algs = fit_algorithms(
                v,
                key,
                j.algorithms.as_ref(),
                configured.as_deref(),
                &usable,
                &format!("the {what} key in {svalue}"),
            )
            .unwrap_or(usable);
            pk.algs = algs.clone();
            (Keys::Static(vec![pk]), Some(algs))
        }
        "jwks_file" => {
            let path = v.base.join(svalue);
            let parsed = std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|b| parse_jwks(&b, true).map_err(|m| format!("{}: {m}", path.display())));
            let parsed = match parsed {
                Ok(p) => p,
                Err(m) => {
                    v.err(skey, Some(sspan), m);
                    return None;
                }
            };
            for (which, why) in &parsed.skipped {
                tracing::warn!(key = %skey, file = %path.display(), jwk = %which, reason = %why, "JWKS key skipped");
            }
            let hmac = parsed
                .keys
                .iter()
                .filter(|k| k.key.family() == AlgorithmFamily::Hmac)
                .count();
            if hmac > 0 && hmac < parsed.keys.len() {
                v.err(
                    &skey,
                    Some(sspan),
                    format!(
                        "{}: mixes shared secrets (\"kty\": \"oct\") with public keys; a route takes one or the other",
                        path.display()
                    ),
                );
                return None;
            }
            if let (Some(list), Some(conf)) = (&j.algorithms, &configured) {
                for (i, alg) in conf.iter().enumerate() {
                    if !parsed.keys.iter().any(|k| k.algs.contains(alg)) {
                        v.err(
                            format!("{key}.algorithms[{i}]"),
                            Some(item_span(list, i)),
                            format!("{}: no key in {svalue} can verify it", alg_name(*alg)),
                        );
                    }
                }
            }
            let keys = restrict(parsed.keys, configured.as_deref());
            if keys.is_empty() {
                v.err(
                    skey,
                    Some(sspan),
                    format!("{}: no usable key in the set", path.display()),
                );
                return None;
            }
            (Keys::Static(keys), configured.clone())
        }
        _ => {
            let url = match crate::http_client::parse_http_url(svalue) {
                Ok(u) => u,
                Err(m) => {
                    v.err(skey, Some(sspan), m);
                    return None;
                }
            };
            if let (Some(list), Some(conf)) = (&j.algorithms, &configured) {
                for (i, alg) in conf.iter().enumerate() {
                    if alg.family() == AlgorithmFamily::Hmac {
                        v.err(
                            format!("{key}.algorithms[{i}]"),
                            Some(item_span(list, i)),
                            format!(
                                "{} needs a shared secret (secret_env or secret_file); a key set fetched from a URL holds public keys",
                                alg_name(*alg)
                            ),
                        );
                    }
                }
            }
            let ca = j.jwks_ca.as_ref().and_then(|ca| {
                if url.scheme_str() != Some("https") {
                    v.err(
                        k("jwks_ca"),
                        Some(ca.span()),
                        "only used with an https:// jwks_url",
                    );
                    return None;
                }
                Some((v.base.join(ca.get_ref().trim()), ca.span()))
            });
            let tls = match crate::http_client::tls_for(&url, ca.as_ref().map(|(p, _)| p.as_path()))
            {
                Ok(t) => t,
                Err(m) => {
                    match &ca {
                        Some((_, span)) => v.err(k("jwks_ca"), Some(span.clone()), m),
                        None => v.err(skey, Some(sspan), m),
                    }
                    return None;
                }
            };
            let refresh = v.duration(
                &k("jwks_refresh"),
                j.jwks_refresh.as_ref(),
                DEFAULT_JWKS_REFRESH,
            );
            let remote = RemoteJwks::new(url, HttpClient::new(tls), refresh, configured.clone());
            (Keys::Remote(Arc::new(remote)), configured.clone())
        }
    };

    let leeway = v
        .optional_duration(&k("leeway"), j.leeway.as_ref(), Some(DEFAULT_LEEWAY))
        .unwrap_or_default();
    let issuers = string_list(v, &k("issuer"), j.issuer.as_ref(), "issuer");
    let audiences = string_list(v, &k("audience"), j.audience.as_ref(), "audience");
    let mut required_claims = Vec::new();
    for (i, c) in j
        .required_claims
        .as_ref()
        .map(|l| l.get_ref().as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let name = c.get_ref().trim();
        if name.is_empty() {
            v.err(
                format!("{key}.required_claims[{i}]"),
                Some(c.span()),
                "must not be empty",
            );
        } else if !required_claims.iter().any(|n| n == name) {
            required_claims.push(name.to_string());
        }
    }
    let require_exp = j.require_exp.as_ref().is_none_or(|r| *r.get_ref());

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

    Some(Arc::new(JwtVerifier {
        sources,
        keys,
        algorithms: allowed,
        validations,
        required_claims,
        forward_token: j.forward_token.unwrap_or(false),
    }))
}

fn item_span(list: &Spanned<Vec<SpStr>>, i: usize) -> Range<usize> {
    list.get_ref()
        .get(i)
        .map_or_else(|| list.span(), |s| s.span())
}

/// `algorithms = [...]`: known names, not HMAC and public-key algorithms together.
fn algorithms(
    v: &mut Validator<'_>,
    key: &str,
    list: Option<&Spanned<Vec<SpStr>>>,
) -> Option<Vec<Algorithm>> {
    let list = list?;
    if list.get_ref().is_empty() {
        v.err(
            format!("{key}.algorithms"),
            Some(list.span()),
            "must list at least one algorithm (or remove the key to infer them from the key)",
        );
        return None;
    }
    let mut out: Vec<Algorithm> = Vec::new();
    let mut ok = true;
    for (i, s) in list.get_ref().iter().enumerate() {
        let name = s.get_ref().trim();
        match Algorithm::from_str(name) {
            Ok(a) if !out.contains(&a) => out.push(a),
            Ok(_) => {}
            Err(_) => {
                ok = false;
                let all = alg_list(&ALL_ALGORITHMS);
                let msg = if name.eq_ignore_ascii_case("none") {
                    format!("unsigned tokens are never accepted; use one of {all}")
                } else {
                    format!("unknown algorithm {name:?}: use one of {all}")
                };
                v.err(format!("{key}.algorithms[{i}]"), Some(s.span()), msg);
            }
        }
    }
    let hmac: Vec<Algorithm> = out
        .iter()
        .copied()
        .filter(|a| a.family() == AlgorithmFamily::Hmac)
        .collect();
    if !hmac.is_empty() && hmac.len() < out.len() {
        let public: Vec<Algorithm> = out
            .iter()
            .copied()
            .filter(|a| a.family() != AlgorithmFamily::Hmac)
            .collect();
        v.err(
            format!("{key}.algorithms"),
            Some(list.span()),
            format!(
                "mixes HMAC ({}) with public-key algorithms ({}): a token could then be checked with a public key as its HMAC secret",
                alg_list(&hmac),
                alg_list(&public)
            ),
        );
        return None;
    }
    (ok && !out.is_empty()).then_some(out)
}

/// The configured algorithms that `usable` (the key's) contains; an error for each other.
/// `None` when none were configured.
fn fit_algorithms(
    v: &mut Validator<'_>,
    key: &str,
    list: Option<&Spanned<Vec<SpStr>>>,
    configured: Option<&[Algorithm]>,
    usable: &[Algorithm],
    what: &str,
) -> Option<Vec<Algorithm>> {
    let (list, configured) = (list?, configured?);
    let mut out = Vec::new();
    for (i, s) in list.get_ref().iter().enumerate() {
        let Ok(alg) = Algorithm::from_str(s.get_ref().trim()) else {
            continue;
        };
        if usable.contains(&alg) {
            if !out.contains(&alg) {
                out.push(alg);
            }
        } else if configured.contains(&alg) {
            v.err(
                format!("{key}.algorithms[{i}]"),
                Some(s.span()),
                format!(
                    "{} is not usable with {what} (it takes {})",
                    alg_name(alg),
                    alg_list(usable)
                ),
            );
        }
    }
    Some(out)
}

/// `issuer` / `audience`: a string or a list of non-empty strings.
fn string_list(
    v: &mut Validator<'_>,
    key: &str,
    value: Option<&Spanned<OneOrMany>>,
    what: &str,
) -> Option<Vec<String>> {
    let value = value?;
    let list: Vec<String> = match value.get_ref() {
        OneOrMany::One(s) => vec![s.clone()],
        OneOrMany::Many(l) => l.clone(),
    };
    if list.is_empty() {
        v.err(
            key,
            Some(value.span()),
            format!("must name at least one {what} (or remove the key)"),
        );
        return None;
    }
    if list.iter().any(|s| s.trim().is_empty()) {
        v.err(key, Some(value.span()), format!("an empty {what}"));
        return None;
    }
    Some(list)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::config::ConfigError;

    /// A generated key pair as PEM: PKCS#8 private key, SPKI public key, and the raw public
    /// key (PKCS#1 for RSA).
    struct KeyPem {
        private: String,
        public: String,
        raw_public: Vec<u8>,
    }

    fn generate(alg: &'static rcgen::SignatureAlgorithm) -> KeyPem {
        let kp = rcgen::KeyPair::generate_for(alg).expect("key generation");
        KeyPem {
            private: kp.serialize_pem(),
            public: kp.public_key_pem(),
            raw_public: kp.public_key_raw().to_vec(),
        }
    }

    /// Keys are generated once per test binary (RSA generation is the slow one).
    fn rsa() -> &'static KeyPem {
        static K: OnceLock<KeyPem> = OnceLock::new();
        K.get_or_init(|| generate(&rcgen::PKCS_RSA_SHA256))
    }
    fn p256() -> &'static KeyPem {
        static K: OnceLock<KeyPem> = OnceLock::new();
        K.get_or_init(|| generate(&rcgen::PKCS_ECDSA_P256_SHA256))
    }
    fn p384() -> &'static KeyPem {
        static K: OnceLock<KeyPem> = OnceLock::new();
        K.get_or_init(|| generate(&rcgen::PKCS_ECDSA_P384_SHA384))
    }
    fn ed25519() -> &'static KeyPem {
        static K: OnceLock<KeyPem> = OnceLock::new();
        K.get_or_init(|| generate(&rcgen::PKCS_ED25519))
    }

    fn signing_key(alg: Algorithm, k: &KeyPem) -> EncodingKey {
        let pem = k.private.as_bytes();
        match alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => unreachable!("HMAC keys are secrets"),
        }
        .expect("signing key")
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> serde_json::Value {
        json!({ "sub": "alice", "exp": now() + 600 })
    }

    fn sign(
        alg: Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
        claims: &serde_json::Value,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).expect("signing")
    }

    fn hs(alg: Algorithm, claims: &serde_json::Value) -> String {
        sign(
            alg,
            None,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            claims,
        )
    }

    /// A scratch directory for key files, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "wsgate-jwt-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
            std::fs::write(self.0.join(name), contents).expect("write scratch file");
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The config around a `[route.auth.jwt]` table; its first key is on line [`FIRST`].
    const PREFIX: &str = "[[listener]]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"r\"\npath = \"/\"\nbackends = [\"ws://127.0.0.1:9\"]\n\n[route.auth.jwt]\n";
    const FIRST: usize = 10;
    const KEY: &str = "route[0].auth.jwt";

    fn load(dir: &Scratch, table: &str) -> Result<crate::config::Config, Vec<ConfigError>> {
        crate::config::from_toml_str_in(&format!("{PREFIX}{table}"), &dir.0)
    }

    fn verifier(dir: &Scratch, table: &str) -> Arc<JwtVerifier> {
        match load(dir, table) {
            Ok(c) => c.routes[0].policy.jwt.clone().expect("a verifier"),
            Err(e) => panic!("config refused: {e:#?}\n{table}"),
        }
    }

    /// Asserts that the table is refused with an error on its `line`-th line (1 = first key)
    /// for `key` (relative to the jwt table), whose message contains `part`.
    fn assert_refused(dir: &Scratch, table: &str, line: usize, key: &str, part: &str) {
        let errors = match load(dir, table) {
            Ok(_) => panic!("accepted:\n{table}"),
            Err(e) => e,
        };
        let full = if key.is_empty() {
            KEY.to_string()
        } else {
            format!("{KEY}.{key}")
        };
        assert!(
            errors.iter().any(|e| e.key == full
                && e.line == Some(FIRST + line - 1)
                && e.message.contains(part)),
            "no error for {full} at line {} containing {part:?}:\n{errors:#?}\n{table}",
            FIRST + line - 1
        );
    }

    async fn accepted(v: &JwtVerifier, token: &str) -> Claims {
        match v.verify(token).await {
            Ok(c) => c,
            Err(e) => panic!("refused: {e}"),
        }
    }

    /// The refusal message, checked not to quote the token.
    async fn refused(v: &JwtVerifier, token: &str) -> String {
        match v.verify(token).await {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(JwtError::Invalid(m)) => {
                for part in token.split('.').filter(|p| p.len() >= 8) {
                    assert!(!m.contains(&part[..8]), "{m:?} quotes the token");
                }
                m
            }
            Err(e) => panic!("expected Invalid, got {e:?}"),
        }
    }

    #[tokio::test]
    async fn hmac_algorithms() {
        let dir = Scratch::new();
        dir.write("secret", format!("{SECRET}\n"));
        let v = verifier(
            &dir,
            "secret_file = \"secret\"\nalgorithms = [\"HS256\", \"HS384\", \"HS512\"]\n",
        );
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let c = accepted(&v, &hs(alg, &claims())).await;
            assert_eq!(c["sub"], "alice");
        }
        // The trailing newline is not part of the secret.
        let with_newline = EncodingKey::from_secret(format!("{SECRET}\n").as_bytes());
        let t = sign(Algorithm::HS256, None, &with_newline, &claims());
        assert_eq!(refused(&v, &t).await, "signature invalid");

        // Without `algorithms`, a secret takes HS256 only.
        let v = verifier(&dir, "secret_file = \"secret\"\n");
        accepted(&v, &hs(Algorithm::HS256, &claims())).await;
        assert_eq!(
            refused(&v, &hs(Algorithm::HS512, &claims())).await,
            "algorithm HS512 not allowed"
        );
    }

    #[tokio::test]
    async fn secret_from_an_environment_variable() {
        // PATH is set for every test process; reading it avoids `set_var` in a threaded test.
        let Some(path) = std::env::var_os("PATH").filter(|p| !p.is_empty()) else {
            return;
        };
        let dir = Scratch::new();
        let v = verifier(&dir, "secret_env = \"PATH\"\n");
        let key = EncodingKey::from_secret(path.as_encoded_bytes());
        accepted(&v, &sign(Algorithm::HS256, None, &key, &claims())).await;
        assert_eq!(
            secret_from_env("X", Some("".into())).unwrap_err(),
            "environment variable X is empty"
        );
    }

    #[tokio::test]
    async fn rsa_public_key_takes_rs_and_ps() {
        let dir = Scratch::new();
        let k = rsa();
        dir.write("rsa.pem", &k.public);
        let v = verifier(&dir, "public_key = \"rsa.pem\"\n");
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let t = sign(alg, None, &signing_key(alg, k), &claims());
            accepted(&v, &t).await;
        }

        // PKCS#1 `RSA PUBLIC KEY`, with text around it.
        let b64 = base64::engine::general_purpose::STANDARD.encode(&k.raw_public);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        dir.write(
            "rsa1.pem",
            format!(
                "issuer's signing key\n-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
                lines.join("\n")
            ),
        );
        let v = verifier(
            &dir,
            "public_key = \"rsa1.pem\"\nalgorithms = [\"PS256\"]\n",
        );
        let ps = sign(
            Algorithm::PS256,
            None,
            &signing_key(Algorithm::PS256, k),
            &claims(),
        );
        accepted(&v, &ps).await;
        let rs = sign(
            Algorithm::RS256,
            None,
            &signing_key(Algorithm::RS256, k),
            &claims(),
        );
        assert_eq!(refused(&v, &rs).await, "algorithm RS256 not allowed");
    }

    #[tokio::test]
    async fn ec_and_ed25519_public_keys() {
        let dir = Scratch::new();
        for (file, k, alg) in [
            ("p256.pem", p256(), Algorithm::ES256),
            ("p384.pem", p384(), Algorithm::ES384),
            ("ed.pem", ed25519(), Algorithm::EdDSA),
        ] {
            dir.write(file, &k.public);
            let v = verifier(&dir, &format!("public_key = \"{file}\"\n"));
            let t = sign(alg, Some("any"), &signing_key(alg, k), &claims());
            assert_eq!(accepted(&v, &t).await["sub"], "alice");
        }
        // A P-384 key verifies ES384 only.
        let v = verifier(&dir, "public_key = \"p384.pem\"\n");
        let t = sign(
            Algorithm::ES256,
            None,
            &signing_key(Algorithm::ES256, p256()),
            &claims(),
        );
        assert_eq!(refused(&v, &t).await, "algorithm ES256 not allowed");
        // Another key of the right type: the signature does not verify.
        let v = verifier(&dir, "public_key = \"p256.pem\"\n");
        let other = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let t = sign(
            Algorithm::ES256,
            None,
            &signing_key(Algorithm::ES256, &other),
            &claims(),
        );
        assert_eq!(refused(&v, &t).await, "signature invalid");
    }

    #[tokio::test]
    async fn hmac_token_against_a_public_key_is_refused() {
        // The classic confusion: the attacker signs HS256 with the (public) PEM as secret.
        let dir = Scratch::new();
        let k = rsa();
        dir.write("rsa.pem", &k.public);
        let v = verifier(&dir, "public_key = \"rsa.pem\"\n");
        let forged = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(k.public.as_bytes()),
            &claims(),
        );
        assert_eq!(refused(&v, &forged).await, "algorithm HS256 not allowed");

        // `alg: none` and garbage.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"sub":"x"}"#));
        assert_eq!(refused(&v, &none).await, "algorithm \"none\" not supported");
        assert_eq!(refused(&v, "not-a-token").await, "malformed token header");
    }

    #[tokio::test]
    async fn tampered_tokens_are_refused() {
        let dir = Scratch::new();
        dir.write("secret", SECRET);
        let v = verifier(&dir, "secret_file = \"secret\"\n");
        let t = hs(Algorithm::HS256, &claims());
        let parts: Vec<&str> = t.split('.').collect();

        let sig = parts[2];
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        let bad_sig = format!("{}.{}.{flipped}{}", parts[0], parts[1], &sig[1..]);
        assert_eq!(refused(&v, &bad_sig).await, "signature invalid");

        let admin = json!({ "sub": "admin", "exp": now() + 600 });
        let other = hs(Algorithm::HS256, &admin);
        let other_payload = other.split('.').nth(1).unwrap();
        let swapped = format!("{}.{other_payload}.{sig}", parts[0]);
        assert_eq!(refused(&v, &swapped).await, "signature invalid");
    }

    #[tokio::test]
    async fn time_claims_with_leeway() {
        let dir = Scratch::new();
        dir.write("secret", SECRET);
        let v = verifier(&dir, "secret_file = \"secret\"\n");
        let t = |c: serde_json::Value| hs(Algorithm::HS256, &c);

        let expired = t(json!({ "exp": now() - 120 }));
        assert_eq!(refused(&v, &expired).await, "token expired");
        // Within the default 30 s leeway.
        accepted(&v, &t(json!({ "exp": now() - 10 }))).await;
        accepted(&v, &t(json!({ "exp": now() + 60, "nbf": now() + 10 }))).await;
        let early = t(json!({ "exp": now() + 600, "nbf": now() + 120 }));
        assert_eq!(refused(&v, &early).await, "token not valid yet (nbf)");

        let strict = verifier(&dir, "secret_file = \"secret\"\nleeway = \"0\"\n");
        let just_expired = t(json!({ "exp": now() - 10 }));
        assert_eq!(refused(&strict, &just_expired).await, "token expired");
        let wide = verifier(&dir, "secret_file = \"secret\"\nleeway = \"5m\"\n");
        accepted(&wide, &expired).await;

        // `exp` is required unless turned off.
        let forever = t(json!({ "sub": "alice" }));
        assert_eq!(
            refused(&v, &forever).await,
            "required claim \"exp\" missing"
        );
        let lax = verifier(&dir, "secret_file = \"secret\"\nrequire_exp = false\n");
        accepted(&lax, &forever).await;
        assert_eq!(refused(&lax, &expired).await, "token expired");
    }

    #[tokio::test]
    async fn issuer_audience_and_required_claims() {
        let dir = Scratch::new();
        dir.write("secret", SECRET);
        let v = verifier(
            &dir,
            "secret_file = \"secret\"\nissuer = \"https://id.example\"\naudience = [\"wsgate\", \"chat\"]\nrequired_claims = [\"sub\", \"role\"]\n",
        );
        let t = |c: serde_json::Value| hs(Algorithm::HS256, &c);
        let exp = now() + 600;
        let good = json!({ "iss": "https://id.example", "aud": "wsgate", "sub": "a", "role": "user", "exp": exp });
        let c = accepted(&v, &t(good.clone())).await;
        assert_eq!(c["role"], "user");
        let mut list = good.clone();
        list["aud"] = json!(["other", "chat"]);
        accepted(&v, &t(list)).await;

        let mut c = good.clone();
        c["aud"] = json!("elsewhere");
        assert_eq!(refused(&v, &t(c)).await, "audience not accepted");
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(refused(&v, &t(c)).await, "required claim \"aud\" missing");
        let mut c = good.clone();
        c["iss"] = json!("https://evil.example");
        assert_eq!(refused(&v, &t(c)).await, "issuer not accepted");
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(refused(&v, &t(c)).await, "required claim \"iss\" missing");
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("role");
        assert_eq!(refused(&v, &t(c)).await, "required claim \"role\" missing");
        let mut c = good.clone();
        c["role"] = serde_json::Value::Null;
        assert_eq!(refused(&v, &t(c)).await, "required claim \"role\" missing");

        // Without `audience`, `aud` is not looked at; issuer as a list.
        let v = verifier(
            &dir,
            "secret_file = \"secret\"\nissuer = [\"https://a.example\", \"https://id.example\"]\n",
        );
        accepted(&v, &t(good)).await;
    }

    fn jwk(alg: Algorithm, k: &KeyPem, kid: &str, with_alg: bool) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&signing_key(alg, k), alg).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        if !with_alg {
            jwk.common.key_algorithm = None;
        }
        jwk
    }

    fn jwks(keys: Vec<Jwk>) -> String {
        serde_json::to_string(&JwkSet { keys }).unwrap()
    }

    #[tokio::test]
    async fn jwks_file_picks_the_key_by_id() {
        let dir = Scratch::new();
        dir.write(
            "jwks.json",
            jwks(vec![
                jwk(Algorithm::RS256, rsa(), "k1", true),
                jwk(Algorithm::ES256, p256(), "k2", false),
            ]),
        );
        let v = verifier(&dir, "jwks_file = \"jwks.json\"\n");
        let rs = signing_key(Algorithm::RS256, rsa());
        let es = signing_key(Algorithm::ES256, p256());
        accepted(&v, &sign(Algorithm::RS256, Some("k1"), &rs, &claims())).await;
        accepted(&v, &sign(Algorithm::ES256, Some("k2"), &es, &claims())).await;
        // No kid: every key that takes the algorithm is tried.
        accepted(&v, &sign(Algorithm::ES256, None, &es, &claims())).await;
        let unknown = sign(Algorithm::ES256, Some("k9"), &es, &claims());
        assert_eq!(refused(&v, &unknown).await, "unknown key id \"k9\"");
        // k1 declares RS256: PS256 with it is refused, and so is the HMAC confusion.
        let ps = sign(
            Algorithm::PS256,
            Some("k1"),
            &signing_key(Algorithm::PS256, rsa()),
            &claims(),
        );
        assert_eq!(
            refused(&v, &ps).await,
            "algorithm PS256 not allowed for key \"k1\""
        );
        let forged = sign(
            Algorithm::HS256,
            Some("k1"),
            &EncodingKey::from_secret(rsa().public.as_bytes()),
            &claims(),
        );
        assert_eq!(
            refused(&v, &forged).await,
            "algorithm HS256 not allowed for key \"k1\""
        );
        // ES256 signed by another key under k2's id.
        let other = generate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let t = sign(
            Algorithm::ES256,
            Some("k2"),
            &signing_key(Algorithm::ES256, &other),
            &claims(),
        );
        assert_eq!(refused(&v, &t).await, "signature invalid");

        // `algorithms` narrows what the keys accept.
        let v = verifier(
            &dir,
            "jwks_file = \"jwks.json\"\nalgorithms = [\"ES256\"]\n",
        );
        let t = sign(Algorithm::RS256, Some("k1"), &rs, &claims());
        assert_eq!(refused(&v, &t).await, "algorithm RS256 not allowed");
    }

    #[test]
    fn config_errors_name_key_and_line() {
        let dir = Scratch::new();
        dir.write("secret", SECRET);
        dir.write("p256.pem", &p256().public);
        dir.write("private.pem", &p256().private);
        dir.write("notes.txt", "nothing here\n");
        dir.write("bad.json", "{\"keys\": 1}");

        assert_refused(&dir, "leeway = \"5s\"\n", 0, "", "needs a key");
        assert_refused(
            &dir,
            "secret_file = \"secret\"\npublic_key = \"p256.pem\"\n",
            2,
            "public_key",
            "one key source per route",
        );
        assert_refused(
            &dir,
            "secret_env = \"WSGATE_TEST_SURELY_UNSET_VARIABLE\"\n",
            1,
            "secret_env",
            "environment variable WSGATE_TEST_SURELY_UNSET_VARIABLE is not set",
        );
        assert_refused(
            &dir,
            "secret_file = \"missing\"\n",
            1,
            "secret_file",
            "cannot read",
        );
        assert_refused(
            &dir,
            "public_key = \"missing.pem\"\n",
            1,
            "public_key",
            "cannot read",
        );
        assert_refused(
            &dir,
            "public_key = \"notes.txt\"\n",
            1,
            "public_key",
            "no public key in the file",
        );
        assert_refused(
            &dir,
            "public_key = \"private.pem\"\n",
            1,
            "public_key",
            "holds a private key",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nalgorithms = [\"HS256\", \"XS1\"]\n",
            2,
            "algorithms[1]",
            "unknown algorithm \"XS1\"",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nalgorithms = [\"none\"]\n",
            2,
            "algorithms[0]",
            "unsigned tokens are never accepted",
        );
        assert_refused(
            &dir,
            "public_key = \"p256.pem\"\nalgorithms = [\"HS256\", \"ES256\"]\n",
            2,
            "algorithms",
            "mixes HMAC (HS256) with public-key algorithms (ES256)",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nalgorithms = [\"RS256\"]\n",
            2,
            "algorithms[0]",
            "RS256 is not usable with an HMAC secret",
        );
        assert_refused(
            &dir,
            "public_key = \"p256.pem\"\nalgorithms = [\"ES384\"]\n",
            2,
            "algorithms[0]",
            "ES384 is not usable with the EC P-256 key",
        );
        assert_refused(
            &dir,
            "jwks_file = \"bad.json\"\n",
            1,
            "jwks_file",
            "not a JWKS document",
        );
        assert_refused(
            &dir,
            "jwks_url = \"ftp://keys.example/jwks\"\n",
            1,
            "jwks_url",
            "must start with http:// or https://",
        );
        assert_refused(
            &dir,
            "jwks_url = \"http://keys.example/jwks\"\njwks_ca = \"ca.pem\"\n",
            2,
            "jwks_ca",
            "only used with an https:// jwks_url",
        );
        assert_refused(
            &dir,
            "jwks_url = \"https://keys.example/jwks\"\njwks_ca = \"missing-ca.pem\"\n",
            2,
            "jwks_ca",
            "cannot read",
        );
        assert_refused(
            &dir,
            "jwks_url = \"https://keys.example/jwks\"\nalgorithms = [\"HS256\"]\n",
            2,
            "algorithms[0]",
            "needs a shared secret",
        );
        assert_refused(
            &dir,
            "jwks_url = \"https://keys.example/jwks\"\njwks_refresh = \"soon\"\n",
            2,
            "jwks_refresh",
            "invalid duration",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\njwks_refresh = \"1m\"\n",
            2,
            "jwks_refresh",
            "only used with jwks_url",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\naudience = []\n",
            2,
            "audience",
            "at least one audience",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nleeway = \"a while\"\n",
            2,
            "leeway",
            "invalid duration",
        );
        assert_refused(
            &dir,
            "secret_file = \"secret\"\nfrom = [\"header\", \"body\"]\n",
            2,
            "from[1]",
            "unknown token source",
        );

        let errors = load(&dir, "secret_file = \"secret\"\nissuer = 5\n").unwrap_err();
        assert!(
            errors.iter().any(|e| e.key == format!("{KEY}.issuer")
                && e.line == Some(FIRST + 1)
                && e.message.contains("a string or a list of strings")),
            "{errors:#?}"
        );

        // Never fetched at validation: an unreachable URL is fine until the first token.
        verifier(&dir, "jwks_url = \"http://127.0.0.1:9/jwks\"\n");
    }

    /// A JWKS server on 127.0.0.1:0 whose document can be swapped, and which can be stopped.
    struct JwksServer {
        addr: SocketAddr,
        body: Arc<Mutex<String>>,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        async fn start(body: String) -> JwksServer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let body = Arc::new(Mutex::new(body));
            let hits = Arc::new(AtomicUsize::new(0));
            let (b, h) = (body.clone(), hits.clone());
            let task = tokio::spawn(async move {
                // Dropped with the task: every connection ends with the listener.
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (b, h) = (b.clone(), h.clone());
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| {
                            h.fetch_add(1, Ordering::SeqCst);
                            let doc = b.lock().unwrap().clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from(doc)),
                                ))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            JwksServer {
                addr,
                body,
                hits,
                task,
            }
        }

        fn serve(&self, doc: String) {
            *self.body.lock().unwrap() = doc;
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        async fn stop(self) {
            self.task.abort();
            let _ = self.task.await;
        }
    }

    fn remote(v: &JwtVerifier) -> Arc<RemoteJwks> {
        match &v.keys {
            Keys::Remote(r) => r.clone(),
            Keys::Static(_) => panic!("not a JWKS URL verifier"),
        }
    }

    impl RemoteJwks {
        /// Makes the cached set (and the last attempt) look `refresh` old, as time would.
        fn age(&self) {
            let mut st = self.lock();
            let then = Instant::now()
                .checked_sub(self.refresh.max(RETRY_AFTER_FAILURE))
                .expect("a monotonic clock older than the refresh interval");
            if let Some(set) = &st.set {
                st.set = Some(Arc::new(KeySet {
                    keys: set.keys.clone(),
                    fetched: then,
                }));
            }
            st.attempted = Some(then);
        }

        /// Waits until `n` fetch attempts have completed.
        async fn attempts_reach(&self, n: u64) {
            let mut rx = self.attempts.subscribe();
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|a| *a >= n))
                .await
                .expect("fetch attempts")
                .expect("watch");
        }
    }

    #[tokio::test]
    async fn jwks_url_rotation_refresh_and_outage() {
        let rs = signing_key(Algorithm::RS256, rsa());
        let es = signing_key(Algorithm::ES256, p256());
        let k1 = || jwk(Algorithm::RS256, rsa(), "k1", true);
        let k2 = || jwk(Algorithm::ES256, p256(), "k2", false);
        let t1 = sign(Algorithm::RS256, Some("k1"), &rs, &claims());
        let t2 = sign(Algorithm::ES256, Some("k2"), &es, &claims());

        let server = JwksServer::start(jwks(vec![k1()])).await;
        let dir = Scratch::new();
        let v = verifier(
            &dir,
            &format!("jwks_url = \"http://{}/jwks.json\"\n", server.addr),
        );
        let r = remote(&v);
        assert_eq!(server.hits(), 0, "validation must not fetch");

        // First token: fetched lazily.
        accepted(&v, &t1).await;
        assert_eq!(server.hits(), 1);
        accepted(&v, &t1).await;
        assert_eq!(server.hits(), 1, "the set is cached");

        // Rotation: k2 replaces k1; an unknown kid refetches at once.
        server.serve(jwks(vec![k2()]));
        accepted(&v, &t2).await;
        assert_eq!(server.hits(), 2);
        // k1 is gone, and another unknown kid within 10 s does not refetch.
        assert_eq!(refused(&v, &t1).await, "unknown key id \"k1\"");
        assert_eq!(server.hits(), 2);

        // Periodic refresh, in the background of a verify that the old set serves.
        server.serve(jwks(vec![k1(), k2()]));
        r.age();
        accepted(&v, &t2).await;
        r.attempts_reach(3).await;
        assert_eq!(server.hits(), 3);
        accepted(&v, &t1).await;

        // The server goes away: a failed refresh keeps the set.
        server.stop().await;
        r.age();
        accepted(&v, &t2).await;
        r.attempts_reach(4).await;
        accepted(&v, &t2).await;
        accepted(&v, &t1).await;
        assert!(r.lock().last_error.is_some());
    }

    #[tokio::test]
    async fn jwks_url_unreachable_at_first_fetch() {
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let dir = Scratch::new();
        let v = verifier(&dir, &format!("jwks_url = \"http://{closed}/jwks\"\n"));
        let t = sign(
            Algorithm::ES256,
            Some("k2"),
            &signing_key(Algorithm::ES256, p256()),
            &claims(),
        );
        match v.verify(&t).await {
            Err(JwtError::KeysUnavailable(m)) => assert!(m.contains(&closed.to_string()), "{m}"),
            other => panic!("expected KeysUnavailable, got {other:?}"),
        }
        // A burst right after a failure does not refetch.
        assert!(matches!(
            v.verify(&t).await,
            Err(JwtError::KeysUnavailable(_))
        ));
        assert_eq!(*remote(&v).attempts.borrow(), 1);

        // A server that answers with something other than a key set.
        let server = JwksServer::start("<html>not found</html>".into()).await;
        let v = verifier(&dir, &format!("jwks_url = \"http://{}/\"\n", server.addr));
        match v.verify(&t).await {
            Err(JwtError::KeysUnavailable(m)) => assert!(m.contains("not a JWKS document"), "{m}"),
            other => panic!("expected KeysUnavailable, got {other:?}"),
        }
        server.stop().await;
    }
}
