//! Every way a session or a plain HTTP request can fail, and the ONE place that maps each to the wire (HTTP status
//! before the upgrade; for a backend failure a generic reason, its details being the log's),
//! to the access log's [`Outcome`], and to who is at fault.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::handshake::HandshakeError;
use crate::outcome::{Fault, Outcome};

/// Failures on the backend leg, before the client gets its 101.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Every backend of the route refused or failed the TCP connect.
    #[error("no backend reachable ({0})")]
    Unreachable(String),
    /// Every attempt timed out: the backends are there but too slow.
    #[error("backend connect timed out after {:?} ({})", whole_ms(*.0), .1)]
    ConnectTimeout(Duration, String),
    /// The upgrade's answer did not come in time: from the backend named once the attempt
    /// is known ([`BackendError::from_backend`]), or from none when the route's budget ran
    /// out before any attempt.
    #[error("backend {}did not answer the upgrade within {:?}", named(.1.as_deref()), whole_ms(*.0))]
    HandshakeTimeout(Duration, Option<std::sync::Arc<str>>),
    /// The backend answered with something other than 101; passed on to the client.
    #[error("backend {}refused the upgrade with {}", .0.backend_named(), .0.status)]
    Refused(Box<BackendRefusal>),
    /// The backend's answer was not a valid WebSocket handshake (RFC 6455 §4.1).
    #[error("invalid backend handshake: {0}")]
    BadHandshake(String),
    #[error("backend connection failed during the handshake: {0}")]
    Io(String),
    /// The TLS handshake with a `wss://` backend failed (certificate not verified, ...).
    #[error("backend TLS handshake failed: {0}")]
    Tls(String),
    /// Every backend of the route is drained (admin API): none takes new sessions.
    #[error("every backend of the route is drained")]
    AllDrained,
    /// A plain HTTP request's response head did not come within `response_header_timeout`
    /// from the backend named (once the attempt is known).
    #[error("backend {}did not answer within {:?}", named(.1.as_deref()), .0)]
    ResponseTimeout(Duration, Option<std::sync::Arc<str>>),
    /// A plain HTTP request's backend connection failed after the request went out, before
    /// a response head, or the response was not valid HTTP.
    #[error("backend request failed: {0}")]
    RequestFailed(String),
}

impl BackendError {
    /// The backend's own answer to this client's request, below 500 (a redirect to its
    /// login, an auth or a routing answer): its word on the request, not its failure. Passed
    /// on at once rather than failed over, not counted against the backend (its failures
    /// metric, passive health), and logged as the client's refusal.
    pub fn is_backends_word(&self) -> bool {
        matches!(self, BackendError::Refused(r) if r.status.as_u16() < 500)
    }

    /// What the client is told: the failure's kind without its details (the backend's
    /// address, the OS or TLS error), which go to the log (`limits.error_detail`).
    pub fn public_reason(&self) -> &'static str {
        match self {
            BackendError::Unreachable(_) => "no backend reachable",
            BackendError::ConnectTimeout(..) => "backend connect timed out",
            BackendError::HandshakeTimeout(..) => "backend did not answer the upgrade in time",
            BackendError::Refused(_) => "backend refused the upgrade",
            BackendError::BadHandshake(_) => "invalid backend handshake",
            BackendError::Io(_) => "backend connection failed during the handshake",
            BackendError::Tls(_) => "backend TLS handshake failed",
            BackendError::AllDrained => "no backend takes new sessions",
            BackendError::ResponseTimeout(..) => "backend did not answer in time",
            BackendError::RequestFailed(_) => "backend connection failed",
        }
    }

    /// How one backend's failed attempt reads in the log. A connect failure there is that
    /// backend's alone ("backend connect failed"), not the route's `no backend reachable`:
    /// the next backend may well take the session.
    pub fn attempt_text(&self) -> String {
        match self {
            BackendError::Unreachable(d) => format!("backend connect failed ({d})"),
            e => e.to_string(),
        }
    }

    /// The access log's `outcome`.
    pub fn outcome(&self) -> Outcome {
        match self {
            BackendError::Unreachable(_) => Outcome::BackendUnreachable,
            BackendError::ConnectTimeout(..) => Outcome::BackendConnectTimeout,
            BackendError::HandshakeTimeout(..) => Outcome::BackendHandshakeTimeout,
            BackendError::Refused(_) => Outcome::BackendRefused,
            BackendError::BadHandshake(_) => Outcome::BackendBadHandshake,
            BackendError::Io(_) => Outcome::BackendIo,
            BackendError::Tls(_) => Outcome::BackendTls,
            BackendError::AllDrained => Outcome::BackendsDrained,
            BackendError::ResponseTimeout(..) => Outcome::BackendResponseTimeout,
            BackendError::RequestFailed(_) => Outcome::BackendRequestFailed,
        }
    }
}

/// nginx's 499, "client closed request": the status the records give a request whose
/// client went away before its answer (no answer was sent).
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// A backend's non-101 answer, kept to be passed on to the client.
#[derive(Debug)]
pub struct BackendRefusal {
    pub status: StatusCode,
    /// The few headers worth passing on (content type, authentication challenge, retry hint).
    pub headers: HeaderMap,
    /// The body, cut at `limits.max_error_body`.
    pub body: Bytes,
    /// The status line's reason phrase where it is not the status's own (hyper would write
    /// `<none>` for a status it has no phrase for, such as 499): the backend's, or empty.
    pub reason: Option<hyper::ext::ReasonPhrase>,
    /// The backend that answered, as written in the config (for the record's reason).
    pub backend: Option<std::sync::Arc<str>>,
}

impl BackendRefusal {
    /// The backend followed by a space, or nothing.
    fn backend_named(&self) -> String {
        named(self.backend.as_deref())
    }
}

/// A timeout as a reader wants it: an attempt's share of the budget is a division
/// (299.733245ms), so shown to the nearest millisecond (300ms).
fn whole_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
}

/// A backend's name followed by a space, or nothing.
fn named(backend: Option<&str>) -> String {
    backend.map_or_else(String::new, |b| format!("{b} "))
}

/// ", waiting on BACKEND" where one is named.
fn waiting_on(backend: Option<&str>) -> String {
    backend.map_or_else(String::new, |b| format!(", waiting on {b}"))
}

impl BackendError {
    /// The error as the record of a refused handshake gives it: the backend it came from
    /// named, for those whose text does not name it already (a connect failure's does). With
    /// several backends, a `backend_refused` or `backend_bad_handshake` record otherwise
    /// left the reader to find the backend in another line.
    pub fn from_backend(self, backend: &std::sync::Arc<str>) -> BackendError {
        match self {
            BackendError::Refused(mut r) => {
                r.backend = Some(backend.clone());
                BackendError::Refused(r)
            }
            BackendError::BadHandshake(m) => BackendError::BadHandshake(format!("{backend}: {m}")),
            BackendError::Io(m) => BackendError::Io(format!("{backend}: {m}")),
            BackendError::Tls(m) => BackendError::Tls(format!("{backend}: {m}")),
            BackendError::HandshakeTimeout(t, _) => {
                BackendError::HandshakeTimeout(t, Some(backend.clone()))
            }
            BackendError::ResponseTimeout(t, _) => {
                BackendError::ResponseTimeout(t, Some(backend.clone()))
            }
            BackendError::RequestFailed(m) => {
                BackendError::RequestFailed(format!("{backend}: {m}"))
            }
            other => other,
        }
    }
}

/// Which count an admission limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `[limits]`: the whole process.
    Process,
    /// The route's own keys: that route's sessions only.
    Route,
}

impl Scope {
    /// Where the limit is set, as the config says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Process => "[limits]",
            Scope::Route => "route",
        }
    }
}

/// The English plural's "s" after a count: "1 session", "2 sessions".
fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A handshake an admission limit refused (`crate::limits`), before the backend is dialled.
/// `retry_after` is in whole seconds, for the `Retry-After` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the gateway is at its limit of {limit} session{} (max_sessions)", plural(*.limit))]
    MaxSessions { limit: u32, retry_after: u64 },
    #[error("this route is at its limit of {limit} session{} (max_sessions)", plural(*.limit))]
    RouteMaxSessions { limit: u32, retry_after: u64 },
    #[error("this client address holds its limit of {limit} session{} ({} max_sessions_per_ip)", plural(*.limit), .scope.as_str())]
    SessionsPerIp { scope: Scope, limit: u32 },
    #[error("too many handshakes from this client address ({} handshake_rate_per_ip): retry in {retry_after} s", .scope.as_str())]
    HandshakeRate { scope: Scope, retry_after: u64 },
    /// The table of clients' rate states is full: a flood from more addresses than the
    /// table holds, refused until entries go idle rather than letting memory grow.
    #[error("too many clients are starting handshakes: retry in {retry_after} s")]
    RateTableFull { retry_after: u64 },
    #[error("the gateway is near its file descriptor limit")]
    FdReserve { retry_after: u64 },
}

impl LimitError {
    /// 503 where the gateway is full (it is no client's fault, and another instance may
    /// have room), 429 where one client asks for more than its share (RFC 6585 §4).
    pub fn status(&self) -> StatusCode {
        match self {
            LimitError::MaxSessions { .. }
            | LimitError::RouteMaxSessions { .. }
            | LimitError::FdReserve { .. } => StatusCode::SERVICE_UNAVAILABLE,
            LimitError::SessionsPerIp { .. }
            | LimitError::HandshakeRate { .. }
            | LimitError::RateTableFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Seconds for `Retry-After`; none for a per-address session cap, which frees up only
    /// when the client itself closes a session.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            LimitError::MaxSessions { retry_after, .. }
            | LimitError::RouteMaxSessions { retry_after, .. }
            | LimitError::HandshakeRate { retry_after, .. }
            | LimitError::RateTableFull { retry_after }
            | LimitError::FdReserve { retry_after } => Some(*retry_after),
            LimitError::SessionsPerIp { .. } => None,
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            LimitError::MaxSessions { .. } => Outcome::MaxSessions,
            LimitError::RouteMaxSessions { .. } => Outcome::RouteMaxSessions,
            LimitError::SessionsPerIp { .. } => Outcome::MaxSessionsPerIp,
            LimitError::HandshakeRate { .. } | LimitError::RateTableFull { .. } => {
                Outcome::HandshakeRate
            }
            LimitError::FdReserve { .. } => Outcome::FdReserve,
        }
    }

    /// A full gateway is the proxy's to report; a client over its share is the client's.
    pub fn fault(&self) -> Fault {
        match self.status() {
            StatusCode::TOO_MANY_REQUESTS => Fault::Client,
            _ => Fault::Proxy,
        }
    }
}

/// Why a request did not become a session.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The path cannot be made canonical without ambiguity (see `path.rs`).
    #[error(transparent)]
    Path(#[from] crate::path::PathError),
    /// The `Host` header and the request target's authority name different hosts.
    #[error("Host header does not match the request target's authority")]
    HostMismatch,
    /// The `Host` header or the target's authority is not a plain host and port: the
    /// reason says which.
    #[error("{0}")]
    HostInvalid(&'static str),
    #[error("the gateway is shutting down")]
    Draining,
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The route's policy refused the handshake (origin, subprotocol, cookie, token, auth).
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// An admission limit refused the handshake (sessions, handshake rate, descriptors).
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A plain request whose body framing is ambiguous (request smuggling shapes): the
    /// reason says which.
    #[error("{0}")]
    RequestFraming(&'static str),
    /// An OPTIONS or TRACE request whose `Max-Forwards` is not one run of digits.
    #[error("invalid Max-Forwards")]
    MaxForwardsInvalid,
    /// An HTTP/2 request with more header fields than `limits.max_headers` (hyper's HTTP/1.1
    /// parser refuses those itself; its HTTP/2 server bounds only their bytes).
    #[error("request has more than {0} header fields")]
    TooManyHeaders(usize),
    /// An HTTP/1.1 request head over `limits.max_header_bytes`. hyper refuses one only
    /// while its read buffer is below the limit: a kept-alive connection's buffer has grown
    /// (up to 64 KiB), and a whole larger head then arrives in one read and parses.
    #[error("request header fields too large: the request head is over {0} bytes")]
    HeadTooLarge(usize),
    /// A plain request's body is over the route's `max_request_body`.
    #[error("request body over the route's limit of {0} bytes")]
    BodyTooLarge(u64),
    /// A plain request's client sent no body bytes for the route's `request_body_timeout`.
    #[error("no request body received for {0:?}")]
    BodyTimeout(Duration),
    /// A plain request's body broke off on the client's side (its connection closed, its
    /// chunked framing was invalid, its HTTP/2 stream was reset).
    #[error("the request body broke off")]
    BodyBroken,
    /// The route has `max_concurrent_requests` waiting for their backends' answers.
    #[error("too many requests in progress on this route, try again later")]
    Overloaded,
    /// A plain request did not finish within the route's `request_timeout`: no response
    /// head by then, from the backend named (the one asked last), if one was.
    #[error("request did not complete within {:?}{}", .0, waiting_on(.1.as_deref()))]
    RequestTimeout(Duration, Option<std::sync::Arc<str>>),
    /// The client went away while its backend was asked for the upgrade (recorded, never
    /// answered: there is nobody to answer).
    #[error("the client went away before its upgrade was answered")]
    ClientGone,
}

/// The gateway is shutting down and takes no new sessions (a phase's error, which becomes
/// [`ProxyError::Draining`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draining;

impl From<Draining> for ProxyError {
    fn from(_: Draining) -> ProxyError {
        ProxyError::Draining
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Handshake(e) => e.status(),
            ProxyError::Path(_) | ProxyError::HostMismatch | ProxyError::HostInvalid(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Backend(e) => match e {
                BackendError::Unreachable(_)
                | BackendError::BadHandshake(_)
                | BackendError::Io(_)
                | BackendError::Tls(_)
                | BackendError::RequestFailed(_) => StatusCode::BAD_GATEWAY,
                BackendError::ConnectTimeout(..)
                | BackendError::HandshakeTimeout(..)
                | BackendError::ResponseTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
                BackendError::Refused(r) => r.status,
                BackendError::AllDrained => StatusCode::SERVICE_UNAVAILABLE,
            },
            ProxyError::Policy(e) => e.status(),
            ProxyError::Limit(e) => e.status(),
            ProxyError::RequestFraming(_) | ProxyError::MaxForwardsInvalid => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::TooManyHeaders(_) | ProxyError::HeadTooLarge(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyBroken => StatusCode::BAD_REQUEST,
            ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RequestTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
            // nginx's "client closed request", as a plain request's record says it.
            ProxyError::ClientGone => CLIENT_CLOSED_REQUEST,
        }
    }

    /// Seconds for a `Retry-After` header, where the refusal has a useful one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::Limit(e) => e.retry_after(),
            _ => None,
        }
    }

    /// Which policy refused (`origin`, `jwt`, ...), or `""` for other refusals.
    pub fn policy(&self) -> &'static str {
        self.outcome().policy()
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoRoute
            | ProxyError::Handshake(_)
            | ProxyError::Path(_)
            | ProxyError::HostMismatch
            | ProxyError::HostInvalid(_)
            | ProxyError::RequestFraming(_)
            | ProxyError::MaxForwardsInvalid
            | ProxyError::TooManyHeaders(_)
            | ProxyError::HeadTooLarge(_)
            | ProxyError::BodyTooLarge(_)
            | ProxyError::BodyTimeout(_)
            | ProxyError::BodyBroken
            | ProxyError::ClientGone => Fault::Client,
            ProxyError::Policy(
                crate::policy::PolicyError::KeysUnavailable(_)
                | crate::policy::PolicyError::AuthUnavailable(_),
            ) => Fault::Proxy,
            ProxyError::Policy(_) => Fault::Client,
            ProxyError::Draining | ProxyError::Overloaded => Fault::Proxy,
            // Logged as the proxy's own refusals of clients are, at info, not as a backend
            // failing.
            ProxyError::Backend(b) if b.is_backends_word() => Fault::Client,
            ProxyError::Backend(_) | ProxyError::RequestTimeout(..) => Fault::Backend,
            ProxyError::Limit(e) => e.fault(),
        }
    }

    /// The access log's `outcome` and the refusal counters' key.
    pub fn outcome(&self) -> Outcome {
        match self {
            ProxyError::NoRoute => Outcome::NoRoute,
            ProxyError::Handshake(e) => e.outcome(),
            ProxyError::Path(_) => Outcome::PathInvalid,
            ProxyError::HostMismatch => Outcome::HostMismatch,
            ProxyError::HostInvalid(_) => Outcome::HostInvalid,
            ProxyError::Draining => Outcome::Draining,
            ProxyError::Policy(e) => e.outcome(),
            ProxyError::Backend(e) => e.outcome(),
            ProxyError::Limit(e) => e.outcome(),
            ProxyError::RequestFraming(_) => Outcome::RequestFramingInvalid,
            ProxyError::MaxForwardsInvalid => Outcome::MaxForwardsInvalid,
            ProxyError::TooManyHeaders(_) | ProxyError::HeadTooLarge(_) => {
                Outcome::RequestHeadTooLarge
            }
            ProxyError::BodyTooLarge(_) => Outcome::RequestBodyTooLarge,
            ProxyError::BodyTimeout(_) => Outcome::RequestBodyTimeout,
            ProxyError::BodyBroken | ProxyError::ClientGone => Outcome::ClientGone,
            ProxyError::Overloaded => Outcome::Overloaded,
            ProxyError::RequestTimeout(..) => Outcome::RequestTimeout,
        }
    }
}
