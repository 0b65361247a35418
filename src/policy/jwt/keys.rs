//! Verification keys: an HMAC secret (from a variable or a file), a PEM public key, or the
//! keys of a JWK set, each with the algorithms it may verify.

use std::path::Path;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;

use super::{alg_name, shown};

/// One verification key and the algorithms it may verify.
#[derive(Debug, Clone)]
pub struct Key {
    pub(super) kid: Option<String>,
    pub(super) algs: Vec<Algorithm>,
    /// `DecodingKey`'s `Debug` redacts the key material.
    pub(super) key: DecodingKey,
}

impl Key {
    /// An HMAC secret, verifying `algs` (all of the HMAC family).
    pub fn hmac(secret: &[u8], algs: Vec<Algorithm>) -> Key {
        Key {
            kid: None,
            algs,
            key: DecodingKey::from_secret(secret),
        }
    }

    /// A public key from a PEM file: `PUBLIC KEY` (SPKI: RSA, EC P-256/P-384, Ed25519) or
    /// `RSA PUBLIC KEY` (PKCS#1), with every algorithm it can verify, and what kind of key it
    /// is (for messages).
    pub fn from_pem_file(path: &Path) -> Result<(Key, &'static str), String> {
        pem_public_key(path)
    }

    /// The algorithms this key may verify.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algs
    }

    /// Limits the key to these of its algorithms.
    pub fn set_algorithms(&mut self, algs: Vec<Algorithm>) {
        self.algs = algs;
    }

    /// A shared secret (`kty: oct`), not a public key.
    pub fn is_hmac(&self) -> bool {
        self.key.family() == AlgorithmFamily::Hmac
    }
}

/// Keys limited to `allowed` algorithms; keys left with none are dropped.
pub fn restrict(mut keys: Vec<Key>, allowed: Option<&[Algorithm]>) -> Vec<Key> {
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
pub struct ParsedJwks {
    pub keys: Vec<Key>,
    /// Keys left out (which one, and why), for the log.
    pub skipped: Vec<(String, String)>,
}

/// Parses a JWKS document. Keys are taken one by one, so that one key of an unknown type
/// does not make the whole set unusable. HMAC keys (`kty: oct`) only when `allow_hmac`: a
/// set served over HTTP is public, and a secret in it is no secret.
pub fn parse_jwks(body: &[u8], allow_hmac: bool) -> Result<ParsedJwks, String> {
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
    // RFC 7517 §4.3: the operations a key is for; one that lists them without `verify` is
    // not for checking signatures.
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("not for verification (\"key_ops\" without \"verify\")".into());
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

    let bytes = crate::config::read_limited(path, crate::config::MAX_NAMED_FILE)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
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
pub fn secret_from_env(name: &str, value: Option<std::ffi::OsString>) -> Result<Vec<u8>, String> {
    let Some(value) = value else {
        return Err(format!("environment variable {name} is not set"));
    };
    if value.is_empty() {
        return Err(format!("environment variable {name} is empty"));
    }
    Ok(value.into_encoded_bytes())
}

/// An HMAC secret from a file: its bytes, less one trailing newline (`\n` or `\r\n`).
pub fn secret_from_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = crate::config::read_limited(path, crate::config::MAX_NAMED_FILE)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
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
