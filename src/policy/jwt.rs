//! JWT verification for a route: keys (HMAC secret, PEM public key, JWKS file or URL with a
//! cached, periodically refreshed key set) and the claim checks.
//!
//! (Skeleton: the interface the rest of the proxy uses. Filled in by the JWT work.)

use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::{Claims, TokenSource};
use crate::config::Validator;
use crate::config::file::SpStr;

/// `[route.auth.jwt]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwt {
    /// Where to look for the token, in order: `"header"`, `"cookie:NAME"`, `"query:NAME"`,
    /// `"subprotocol"`.
    pub from: Option<Spanned<Vec<SpStr>>>,
}

/// Why a token was refused. The message never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("{0}")]
    Invalid(String),
    /// No key set could be fetched yet (JWKS URL down): the proxy answers 503.
    #[error("{0}")]
    KeysUnavailable(String),
}

/// A route's token verifier.
#[derive(Debug)]
pub struct JwtVerifier {
    sources: Vec<TokenSource>,
}

impl JwtVerifier {
    /// Where to look for the token, in order of preference.
    pub fn sources(&self) -> &[TokenSource] {
        &self.sources
    }

    /// Verifies signature and claims; returns the claims.
    /// Whether the token goes on to the backend (`forward_token = true`); by default its
    /// header or cookie is removed. (Query and subprotocol tokens are always removed.)
    pub fn forward_token(&self) -> bool {
        false
    }

    pub async fn verify(&self, _token: &str) -> Result<Claims, JwtError> {
        Err(JwtError::Invalid("not implemented".into()))
    }
}

/// Validates `[route.auth.jwt]`, reading key files now so that errors name key and line.
pub(crate) fn validate(
    v: &mut Validator<'_>,
    key: &str,
    f: &Spanned<FileJwt>,
) -> Option<Arc<JwtVerifier>> {
    let sources = super::token_sources(v, &format!("{key}.from"), f.get_ref().from.as_ref());
    Some(Arc::new(JwtVerifier { sources }))
}
