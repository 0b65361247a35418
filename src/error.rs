//! Every way a session can fail, and the ONE place that maps each to the wire (HTTP status
//! before the upgrade), to the access log's outcome, and to who is at fault.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::handshake::HandshakeError;

/// Who caused a failure: the access log says so, so operators know where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Backend,
    Proxy,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Backend => "backend",
            Fault::Proxy => "proxy",
        }
    }
}

/// Failures on the backend leg, before the client gets its 101.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Every backend of the route refused or failed the TCP connect.
    #[error("no backend reachable ({0})")]
    Unreachable(String),
    /// Every attempt timed out: the backends are there but too slow.
    #[error("backend connect timed out after {0:?} ({1})")]
    ConnectTimeout(Duration, String),
    #[error("backend did not answer the upgrade within {0:?}")]
    HandshakeTimeout(Duration),
    /// The backend answered with something other than 101; passed on to the client.
    #[error("backend refused the upgrade with {}", .0.status)]
    Refused(Box<BackendRefusal>),
    /// The backend's answer was not a valid WebSocket handshake (RFC 6455 §4.1).
    #[error("invalid backend handshake: {0}")]
    BadHandshake(String),
    #[error("backend connection failed during the handshake: {0}")]
    Io(String),
    /// The TLS handshake with a `wss://` backend failed (certificate not verified, ...).
    #[error("backend TLS handshake failed: {0}")]
    Tls(String),
}

/// A backend's non-101 answer, kept to be passed on to the client.
#[derive(Debug)]
pub struct BackendRefusal {
    pub status: StatusCode,
    /// The few headers worth passing on (content type, authentication challenge, retry hint).
    pub headers: HeaderMap,
    /// The body, cut at `limits.max_error_body`.
    pub body: Bytes,
}

/// Why a request did not become a session.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("the gateway is shutting down")]
    Draining,
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The route's policy refused the handshake (origin, subprotocol, cookie, token, auth).
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Handshake(e) => e.status(),
            ProxyError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Backend(e) => match e {
                BackendError::Unreachable(_)
                | BackendError::BadHandshake(_)
                | BackendError::Io(_)
                | BackendError::Tls(_) => StatusCode::BAD_GATEWAY,
                BackendError::ConnectTimeout(..) | BackendError::HandshakeTimeout(_) => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                BackendError::Refused(r) => r.status,
            },
            ProxyError::Policy(e) => e.status(),
        }
    }

    /// Which policy refused (`origin`, `jwt`, ...), or `""` for other refusals.
    pub fn policy(&self) -> &'static str {
        match self {
            ProxyError::Policy(e) => e.policy(),
            _ => "",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoRoute | ProxyError::Handshake(_) => Fault::Client,
            ProxyError::Policy(
                crate::policy::PolicyError::KeysUnavailable(_)
                | crate::policy::PolicyError::AuthUnavailable(_),
            ) => Fault::Proxy,
            ProxyError::Policy(_) => Fault::Client,
            ProxyError::Draining => Fault::Proxy,
            ProxyError::Backend(_) => Fault::Backend,
        }
    }

    /// A short stable name for the access log's `outcome` field.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::Handshake(e) => e.kind(),
            ProxyError::Draining => "draining",
            ProxyError::Policy(e) => e.outcome(),
            ProxyError::Backend(e) => match e {
                BackendError::Unreachable(_) => "backend_unreachable",
                BackendError::ConnectTimeout(..) => "backend_connect_timeout",
                BackendError::HandshakeTimeout(_) => "backend_handshake_timeout",
                BackendError::Refused(_) => "backend_refused",
                BackendError::BadHandshake(_) => "backend_bad_handshake",
                BackendError::Io(_) => "backend_io",
                BackendError::Tls(_) => "backend_tls",
            },
        }
    }
}

/// How a relayed session ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseSide {
    Client,
    Backend,
    /// The proxy ended it (shutdown after the grace period).
    Proxy,
}

impl CloseSide {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseSide::Client => "client",
            CloseSide::Backend => "backend",
            CloseSide::Proxy => "proxy",
        }
    }
}
