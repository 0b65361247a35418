//! The verifier's tests, each built with [`JwtVerifier::new`] from keys and rules (the config
//! side, which keys and algorithms a table yields, is tested in `crate::config`). Key pairs
//! are generated here, once per test binary; `crate::config`'s tests use them too.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Mutex;
use std::time::Instant;

use jsonwebtoken::AlgorithmFamily;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyOperations};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::jwks::{KeySet, RETRY_AFTER_FAILURE};
use super::*;
use crate::http_client::HttpClient;
use crate::test_support::temp_dir::TempDir;

/// A generated key pair as PEM: PKCS#8 private key, SPKI public key, and the raw public
/// key (PKCS#1 for RSA).
pub(crate) struct KeyPem {
    pub(crate) private: String,
    pub(crate) public: String,
    pub(crate) raw_public: Vec<u8>,
}

pub(crate) fn generate(alg: &'static rcgen::SignatureAlgorithm) -> KeyPem {
    let kp = rcgen::KeyPair::generate_for(alg).expect("key generation");
    KeyPem {
        private: kp.serialize_pem(),
        public: kp.public_key_pem(),
        raw_public: kp.public_key_raw().to_vec(),
    }
}

/// Keys are generated once per test binary (RSA generation is the slow one).
pub(crate) fn rsa() -> &'static KeyPem {
    static K: OnceLock<KeyPem> = OnceLock::new();
    K.get_or_init(|| generate(&rcgen::PKCS_RSA_SHA256))
}
pub(crate) fn p256() -> &'static KeyPem {
    static K: OnceLock<KeyPem> = OnceLock::new();
    K.get_or_init(|| generate(&rcgen::PKCS_ECDSA_P256_SHA256))
}
pub(crate) fn p384() -> &'static KeyPem {
    static K: OnceLock<KeyPem> = OnceLock::new();
    K.get_or_init(|| generate(&rcgen::PKCS_ECDSA_P384_SHA384))
}
pub(crate) fn ed25519() -> &'static KeyPem {
    static K: OnceLock<KeyPem> = OnceLock::new();
    K.get_or_init(|| generate(&rcgen::PKCS_ED25519))
}

pub(crate) fn signing_key(alg: Algorithm, k: &KeyPem) -> EncodingKey {
    let pem = k.private.as_bytes();
    match alg.family() {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
        AlgorithmFamily::Hmac => unreachable!("HMAC keys are secrets"),
    }
    .expect("signing key")
}

pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(crate) fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

pub(crate) fn claims() -> serde_json::Value {
    json!({ "sub": "alice", "exp": now() + 600 })
}

pub(crate) fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("signing")
}

pub(crate) fn hs(alg: Algorithm, claims: &serde_json::Value) -> String {
    sign(
        alg,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// Rules with these algorithms, and the defaults otherwise.
fn rules(algorithms: Option<Vec<Algorithm>>) -> JwtRules {
    JwtRules {
        algorithms,
        ..JwtRules::default()
    }
}

/// A verifier of HMAC tokens signed with [`SECRET`], taking `algs`.
fn hmac(algs: &[Algorithm], r: JwtRules) -> JwtVerifier {
    let key = Key::hmac(SECRET.as_bytes(), algs.to_vec());
    JwtVerifier::new(
        Keys::Static(vec![key]),
        JwtRules {
            algorithms: Some(algs.to_vec()),
            ..r
        },
    )
}

/// A verifier with the public key in a PEM file, taking `algs` (by default all the key can).
fn pem(path: &Path, algs: Option<Vec<Algorithm>>) -> JwtVerifier {
    let (mut key, _) = Key::from_pem_file(path).expect("a public key");
    let algs = algs.unwrap_or_else(|| key.algorithms().to_vec());
    key.set_algorithms(algs.clone());
    JwtVerifier::new(Keys::Static(vec![key]), rules(Some(algs)))
}

/// A verifier with the keys of a JWKS file, limited to `algs` if given.
fn jwks_file(path: &Path, algs: Option<Vec<Algorithm>>) -> JwtVerifier {
    let parsed = parse_jwks(&std::fs::read(path).expect("JWKS file"), true).expect("a JWKS");
    let keys = restrict(parsed.keys, algs.as_deref());
    JwtVerifier::new(Keys::Static(keys), rules(algs))
}

/// A verifier with the key set at `url`, fetched when first needed.
fn jwks_url(url: &str) -> JwtVerifier {
    let url: Uri = url.parse().expect("a URL");
    let tls = crate::http_client::tls_for(&url, None).expect("TLS settings");
    let keys = Keys::remote(url, HttpClient::new(tls), DEFAULT_JWKS_REFRESH, None);
    JwtVerifier::new(keys, JwtRules::default())
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
    let dir = TempDir::new("jwt");
    dir.write("secret", format!("{SECRET}\n"));
    let all = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
    let secret = secret_from_file(&dir.join("secret")).expect("secret");
    let v = JwtVerifier::new(
        Keys::Static(vec![Key::hmac(&secret, all.to_vec())]),
        rules(Some(all.to_vec())),
    );
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let c = accepted(&v, &hs(alg, &claims())).await;
        assert_eq!(c["sub"], "alice");
    }
    // The trailing newline is not part of the secret.
    let with_newline = EncodingKey::from_secret(format!("{SECRET}\n").as_bytes());
    let t = sign(Algorithm::HS256, None, &with_newline, &claims());
    assert_eq!(refused(&v, &t).await, "signature invalid");

    // A secret taking HS256 only (what a secret without `algorithms` takes).
    let v = hmac(&[Algorithm::HS256], JwtRules::default());
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
    let secret = secret_from_env("PATH", Some(path.clone())).expect("secret");
    let v = JwtVerifier::new(
        Keys::Static(vec![Key::hmac(&secret, vec![Algorithm::HS256])]),
        rules(Some(vec![Algorithm::HS256])),
    );
    let key = EncodingKey::from_secret(path.as_encoded_bytes());
    accepted(&v, &sign(Algorithm::HS256, None, &key, &claims())).await;
    assert_eq!(
        secret_from_env("X", Some("".into())).unwrap_err(),
        "environment variable X is empty"
    );
}

#[tokio::test]
async fn rsa_public_key_takes_rs_and_ps() {
    let dir = TempDir::new("jwt");
    let k = rsa();
    dir.write("rsa.pem", &k.public);
    let v = pem(&dir.join("rsa.pem"), None);
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
    let v = pem(&dir.join("rsa1.pem"), Some(vec![Algorithm::PS256]));
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
    let dir = TempDir::new("jwt");
    for (file, k, alg) in [
        ("p256.pem", p256(), Algorithm::ES256),
        ("p384.pem", p384(), Algorithm::ES384),
        ("ed.pem", ed25519(), Algorithm::EdDSA),
    ] {
        dir.write(file, &k.public);
        let v = pem(&dir.join(file), None);
        let t = sign(alg, Some("any"), &signing_key(alg, k), &claims());
        assert_eq!(accepted(&v, &t).await["sub"], "alice");
    }
    // A P-384 key verifies ES384 only.
    let v = pem(&dir.join("p384.pem"), None);
    let t = sign(
        Algorithm::ES256,
        None,
        &signing_key(Algorithm::ES256, p256()),
        &claims(),
    );
    assert_eq!(refused(&v, &t).await, "algorithm ES256 not allowed");
    // Another key of the right type: the signature does not verify.
    let v = pem(&dir.join("p256.pem"), None);
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
    let dir = TempDir::new("jwt");
    let k = rsa();
    dir.write("rsa.pem", &k.public);
    let v = pem(&dir.join("rsa.pem"), None);
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
    let v = hmac(&[Algorithm::HS256], JwtRules::default());
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
    let hs256 = |r: JwtRules| hmac(&[Algorithm::HS256], r);
    let v = hs256(JwtRules::default());
    let t = |c: serde_json::Value| hs(Algorithm::HS256, &c);

    let expired = t(json!({ "exp": now() - 120 }));
    assert_eq!(refused(&v, &expired).await, "token expired");
    // Within the default 30 s leeway.
    accepted(&v, &t(json!({ "exp": now() - 10 }))).await;
    accepted(&v, &t(json!({ "exp": now() + 60, "nbf": now() + 10 }))).await;
    let early = t(json!({ "exp": now() + 600, "nbf": now() + 120 }));
    assert_eq!(refused(&v, &early).await, "token not valid yet (nbf)");

    let strict = hs256(JwtRules {
        leeway: Duration::ZERO,
        ..JwtRules::default()
    });
    let just_expired = t(json!({ "exp": now() - 10 }));
    assert_eq!(refused(&strict, &just_expired).await, "token expired");
    let wide = hs256(JwtRules {
        leeway: Duration::from_secs(300),
        ..JwtRules::default()
    });
    accepted(&wide, &expired).await;

    // `exp` is required unless turned off.
    let forever = t(json!({ "sub": "alice" }));
    assert_eq!(
        refused(&v, &forever).await,
        "required claim \"exp\" missing"
    );
    let lax = hs256(JwtRules {
        require_exp: false,
        ..JwtRules::default()
    });
    accepted(&lax, &forever).await;
    assert_eq!(refused(&lax, &expired).await, "token expired");

    // `iat`, when there, is a NumericDate like `exp` and `nbf`.
    accepted(&v, &t(json!({ "exp": now() + 60, "iat": now() - 5 }))).await;
    accepted(&v, &t(json!({ "exp": now() + 60, "iat": 1.5 }))).await;
    for iat in [
        json!("yesterday"),
        json!([1]),
        json!(-1),
        json!(true),
        json!(null),
    ] {
        let token = t(json!({ "exp": now() + 60, "iat": iat }));
        assert_eq!(
            refused(&v, &token).await,
            "claim \"iat\" malformed (not a NumericDate)",
            "iat {iat}"
        );
    }
}

#[tokio::test]
async fn issuer_audience_and_required_claims() {
    let strings = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect());
    let v = hmac(
        &[Algorithm::HS256],
        JwtRules {
            issuers: strings(&["https://id.example"]),
            audiences: strings(&["wsgate", "chat"]),
            required_claims: vec!["sub".into(), "role".into()],
            ..JwtRules::default()
        },
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
    // RFC 7519 §4.1.1: one issuer. A list naming the accepted one beside another is not it.
    let mut c = good.clone();
    c["iss"] = json!(["https://evil.example", "https://id.example"]);
    assert_eq!(refused(&v, &t(c)).await, "issuer not accepted");
    let mut c = good.clone();
    c["iss"] = json!(["https://id.example"]);
    assert_eq!(refused(&v, &t(c)).await, "issuer not accepted");
    // A time claim that is there but no NumericDate is called malformed, not missing.
    for bad in [json!(-1), json!("soon"), json!(1e30)] {
        let mut c = good.clone();
        c["exp"] = bad.clone();
        assert_eq!(
            refused(&v, &t(c)).await,
            "claim \"exp\" malformed (not a NumericDate)",
            "{bad}"
        );
    }
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("role");
    assert_eq!(refused(&v, &t(c)).await, "required claim \"role\" missing");
    let mut c = good.clone();
    c["role"] = serde_json::Value::Null;
    assert_eq!(refused(&v, &t(c)).await, "required claim \"role\" missing");

    // Without `audience`, `aud` is not looked at; issuer as a list.
    let v = hmac(
        &[Algorithm::HS256],
        JwtRules {
            issuers: strings(&["https://a.example", "https://id.example"]),
            ..JwtRules::default()
        },
    );
    accepted(&v, &t(good)).await;
}

/// RFC 7515 §4.1.11: a header listing a critical extension the recipient does not
/// understand is refused, even with a good signature (wsgate understands none).
#[tokio::test]
async fn critical_header_extensions_are_refused() {
    let v = hmac(&[Algorithm::HS256], JwtRules::default());
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let with_crit = |crit: Vec<&str>| {
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(crit.into_iter().map(str::to_owned).collect());
        header.extras.insert("x", true);
        jsonwebtoken::encode(&header, &claims(), &key).expect("signing")
    };
    assert_eq!(
        refused(&v, &with_crit(vec!["x"])).await,
        "critical header extension \"x\" not understood"
    );
    assert_eq!(
        refused(&v, &with_crit(vec!["b64", "x"])).await,
        "critical header extension \"b64\" not understood"
    );
    assert_eq!(
        refused(&v, &with_crit(vec![])).await,
        "malformed token header (empty crit)"
    );
    // An extension that is merely present, not critical, is ignored.
    let mut header = Header::new(Algorithm::HS256);
    header.extras.insert("x", true);
    accepted(&v, &jsonwebtoken::encode(&header, &claims(), &key).unwrap()).await;
}

/// Claim rules run after the signature: a good token without the values is
/// `InsufficientScope`, naming the claim only; a session ends at `exp` plus the leeway.
#[tokio::test]
async fn claim_rules_and_session_end() {
    let s = |x: &str| ClaimValue::Str(x.into());
    let v = hmac(
        &[Algorithm::HS256],
        JwtRules {
            claims: vec![
                ClaimRule::new("role", vec![s("admin"), s("ops")]),
                ClaimRule::new("org.id", vec![s("42")]),
            ],
            expire_sessions: true,
            leeway: Duration::from_millis(1500),
            ..JwtRules::default()
        },
    );
    let t = |c: serde_json::Value| hs(Algorithm::HS256, &c);
    let exp = now() + 600;
    let good = json!({ "role": ["user", "ops"], "org": { "id": "42" }, "exp": exp });
    let c = accepted(&v, &t(good.clone())).await;
    let end = std::time::UNIX_EPOCH + Duration::from_secs(exp) + Duration::from_millis(1500);
    assert_eq!(v.session_end(&c), Some(end));
    for (bad, claim) in [
        (
            json!({ "role": "user", "org": { "id": "42" }, "exp": exp }),
            "role",
        ),
        (json!({ "org": { "id": "42" }, "exp": exp }), "role"),
        (
            json!({ "role": "admin", "org": { "id": 42 }, "exp": exp }),
            "org.id",
        ),
    ] {
        match v.verify(&t(bad)).await {
            Err(JwtError::InsufficientScope(m)) => {
                assert_eq!(m, format!("claim {claim:?} has no accepted value"));
            }
            other => panic!("expected InsufficientScope, got {other:?}"),
        }
    }
    // A bad signature is still `Invalid`, whatever the claims say.
    let forged = format!("{}x", t(good));
    assert_eq!(refused(&v, &forged).await, "signature invalid");

    // Without `expire_sessions`, or without `exp`, nothing ends the session.
    let plain = hmac(&[Algorithm::HS256], JwtRules::default());
    assert_eq!(plain.session_end(&c), None);
    let mut no_exp = c.clone();
    no_exp.remove("exp");
    assert_eq!(v.session_end(&no_exp), None);
    no_exp.insert("exp".into(), json!(1e300));
    assert_eq!(v.session_end(&no_exp), None, "too far off to represent");
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
    let dir = TempDir::new("jwt");
    dir.write(
        "jwks.json",
        jwks(vec![
            jwk(Algorithm::RS256, rsa(), "k1", true),
            jwk(Algorithm::ES256, p256(), "k2", false),
        ]),
    );
    let v = jwks_file(&dir.join("jwks.json"), None);
    let rs = signing_key(Algorithm::RS256, rsa());
    // RFC 7517 §4.3: a key whose `key_ops` leave out "verify" checks no signature.
    let mut wrapping = jwk(Algorithm::RS256, rsa(), "k3", true);
    wrapping.common.key_operations = Some(vec![KeyOperations::Encrypt, KeyOperations::WrapKey]);
    let mut verifying = jwk(Algorithm::ES256, p256(), "k4", true);
    verifying.common.key_operations = Some(vec![KeyOperations::Verify]);
    dir.write("ops.json", jwks(vec![wrapping, verifying]));
    let ops = jwks_file(&dir.join("ops.json"), None);
    let t = sign(Algorithm::RS256, Some("k3"), &rs, &claims());
    assert_eq!(refused(&ops, &t).await, "unknown key id \"k3\"");
    let es = signing_key(Algorithm::ES256, p256());
    accepted(&ops, &sign(Algorithm::ES256, Some("k4"), &es, &claims())).await;

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
    let v = jwks_file(&dir.join("jwks.json"), Some(vec![Algorithm::ES256]));
    let t = sign(Algorithm::RS256, Some("k1"), &rs, &claims());
    assert_eq!(refused(&v, &t).await, "algorithm RS256 not allowed");
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

impl jwks::RemoteJwks {
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
    let v = jwks_url(&format!("http://{}/jwks.json", server.addr));
    let r = remote(&v);
    assert_eq!(server.hits(), 0, "building the verifier must not fetch");

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
    let v = jwks_url(&format!("http://{closed}/jwks"));
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
    let v = jwks_url(&format!("http://{}/", server.addr));
    match v.verify(&t).await {
        Err(JwtError::KeysUnavailable(m)) => assert!(m.contains("not a JWKS document"), "{m}"),
        other => panic!("expected KeysUnavailable, got {other:?}"),
    }
    server.stop().await;
}
