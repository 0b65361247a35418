//! Forward-auth: a subrequest to an auth service decides whether a handshake may proceed
//! (nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`).
//!
//! (Skeleton: the interface the rest of the proxy uses. Filled in by the forward-auth work.)

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use toml::Spanned;

use crate::config::Validator;
use crate::config::file::SpStr;

/// `[route.auth.forward_auth]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwardAuth {
    pub url: Option<SpStr>,
}

/// What the auth service is told about the handshake.
pub struct AuthQuery<'a> {
    /// The client's request as received.
    pub parts: &'a Parts,
    /// The client's address (after PROXY protocol and trusted forwarding headers).
    pub client: IpAddr,
    /// `X-Forwarded-For` as it will be sent to the backend.
    pub forwarded_for: &'a str,
    /// `http` or `https`, as seen by the client.
    pub scheme: &'a str,
    /// The request's host (with port, as the client sent it).
    pub host: &'a str,
}

/// The auth service's answer.
#[derive(Debug)]
pub enum AuthDecision {
    /// 2xx: proceed, adding these headers (the configured copies) to the backend request.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// 401 or 403 (or any other non-2xx): passed to the client as it came.
    Deny {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
}

/// The auth service could not be asked (timeout, connection error): the client gets 503.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ForwardAuthError(pub String);

/// A route's forward-auth settings and its decision cache.
#[derive(Debug)]
pub struct ForwardAuth {
    copy_headers: Vec<HeaderName>,
}

impl ForwardAuth {
    /// The headers copied from the auth service's answer to the backend request; the
    /// client's own headers of these names are always removed.
    pub fn copy_headers(&self) -> &[HeaderName] {
        &self.copy_headers
    }

    pub async fn check(&self, _q: &AuthQuery<'_>) -> Result<AuthDecision, ForwardAuthError> {
        Err(ForwardAuthError("not implemented".into()))
    }
}

/// Validates `[route.auth.forward_auth]`.
pub(crate) fn validate(
    _v: &mut Validator<'_>,
    _key: &str,
    _f: &Spanned<FileForwardAuth>,
) -> Option<Arc<ForwardAuth>> {
    Some(Arc::new(ForwardAuth {
        copy_headers: Vec::new(),
    }))
}
