//! The words the proxy uses for what happened: how a connection, a handshake or a session
//! ended ([`Outcome`]), who closed a session ([`CloseSide`]), who is at fault for a refusal
//! ([`Fault`]), and which policy refused ([`Outcome::policy`]).
//!
//! These names are an operator API: they are the access log's `outcome`, `closed_by`, `fault`
//! and `policy` fields, the keys of the refusal counters ([`crate::Handle::refusals`]), and
//! the labels a metrics endpoint will export. Every producer returns these types and every
//! consumer takes them, so a name is spelled once, here. Renaming one breaks dashboards and
//! alerts: add a variant rather than change a name.

use std::fmt;

/// How a connection, a handshake or a session ended, as a stable snake_case name
/// ([`Outcome::as_str`]).
///
/// Five families: refusals before HTTP (the connection is closed without an answer, or with
/// a bare 400), refusals of the request head by the HTTP parser or its timers (before any
/// request reaches the proxy), refusals of the WebSocket handshake or of a plain HTTP request
/// (answered with an HTTP status, see `error.rs`) or by an admission limit, ends of relayed
/// sessions (after the 101), and ends of proxied plain HTTP exchanges (after the response
/// head, `http_proxy/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    // --- Before HTTP (accept.rs): the connection is closed, counted as unrouted. ---
    /// A listener with `proxy_protocol` got a missing or malformed PROXY header.
    ProxyHeaderInvalid,
    /// A listener with `proxy_protocol` got no PROXY header within the handshake timeout.
    ProxyHeaderTimeout,
    /// Plain HTTP arrived on a TLS port; answered with a 400 that says so.
    PlainHttpOnTls,
    /// No TLS handshake (or no complete one) within the handshake timeout.
    TlsHandshakeTimeout,
    /// The TLS handshake failed (no common version or cipher, bad client certificate, ...).
    TlsHandshakeFailed,

    // --- The request head (accept.rs): refused by hyper's parser or timers, counted as
    // unrouted (no request, so no route). ---
    /// The request head is over `max_header_bytes` or has more than `max_headers` fields (431).
    RequestHeadTooLarge,
    /// The request target is longer than the HTTP parser accepts (414).
    UriTooLong,
    /// The request head is not valid HTTP/1.1: a malformed request line, an obs-fold line, a
    /// bare CR, a control byte in a field, ... (400); or the HTTP/2 preface on a connection
    /// that agreed on HTTP/1.1, or anything else on one that agreed on HTTP/2 (closed without
    /// an answer).
    RequestHeadInvalid,
    /// No complete request head within the listener's handshake timeout (closed without an
    /// answer: a slow or silent client).
    RequestHeadTimeout,

    // --- Refusals by the proxy itself (404, 503). ---
    /// No route matches the request's host and path (404).
    NoRoute,
    /// The gateway is shutting down and takes no new sessions (503); also a connection the
    /// shutdown closed before it sent a complete request (closed without an answer).
    Draining,

    // --- The client's handshake is not a valid WebSocket upgrade (RFC 6455 §4.2.1, RFC 8441). ---
    /// An HTTP/1.1 request without `Upgrade` (426).
    NotAnUpgrade,
    /// The upgrade request's method is not GET (400).
    MethodNotGet,
    /// The request is older than HTTP/1.1 (400).
    HttpVersion,
    /// No `Host` header (400).
    MissingHost,
    /// `Upgrade` does not name `websocket` (400).
    UpgradeNotWebsocket,
    /// `Connection` lacks the `upgrade` token (400).
    ConnectionNotUpgrade,
    /// No `Sec-WebSocket-Key` (400).
    MissingKey,
    /// More than one `Sec-WebSocket-Key` (400).
    DuplicateKey,
    /// `Sec-WebSocket-Key` is not the base64 of 16 bytes (400).
    InvalidKey,
    /// `Sec-WebSocket-Version` other than 13 (426; 400 over HTTP/2).
    VersionNotSupported,
    /// No `Sec-WebSocket-Version` (426; 400 over HTTP/2).
    MissingVersion,
    /// `Sec-WebSocket-Version` on more than one field line (400).
    DuplicateVersion,
    /// A `Sec-WebSocket-Protocol` entry that is not a token (400).
    InvalidSubprotocol,
    /// A `Sec-WebSocket-Extensions` line that is not text, or not RFC 6455 §9.1's list (400).
    InvalidExtensions,
    /// The upgrade request carries a body (400).
    HasBody,
    /// An HTTP/2 request that is not an extended CONNECT (400).
    NotExtendedConnect,
    /// An extended CONNECT for a protocol other than `websocket` (400).
    ProtocolNotWebsocket,
    /// An extended CONNECT without `:scheme` or `:path` (400).
    MissingPseudoHeader,
    /// `Sec-WebSocket-Key` sent over HTTP/2, where it has no place (400).
    KeyOverHttp2,
    /// More than one `Host` header (400).
    DuplicateHost,
    /// The `Host` header names another host than the request target's authority (400,
    /// RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    HostMismatch,
    /// The `Host` header is not a host and port, or the request target's authority carries
    /// userinfo (`user@host`) (400, RFC 9112 §3.2, RFC 9110 §4.2.4, RFC 9113 §8.3.1).
    HostInvalid,
    /// The path cannot be made canonical without ambiguity: an encoded slash, a dot segment
    /// above the root, a control byte, ... (400; see `path.rs`).
    PathInvalid,

    // --- The route's policy refused (policy/). ---
    /// The `Origin` is not allowed (403; cross-site WebSocket hijacking defence).
    OriginRefused,
    /// No acceptable subprotocol on a route that requires one (403).
    SubprotocolRefused,
    /// A required cookie is absent (403).
    CookieMissing,
    /// No token in any configured place (401).
    TokenMissing,
    /// The token did not verify (401).
    TokenInvalid,
    /// The route's key set could not be fetched, so no token can be checked (503).
    TokenKeysUnavailable,
    /// The token verified, but a claim rule refused it (403, `insufficient_scope`).
    ClaimsRefused,
    /// The forward-auth service said no; its answer went to the client.
    AuthDenied,
    /// The forward-auth service could not be asked (503).
    AuthUnavailable,

    // --- The backend leg failed before the 101 (backend.rs). ---
    /// Every backend of the route refused or failed the TCP connect (502).
    BackendUnreachable,
    /// Every backend connect attempt timed out (504).
    BackendConnectTimeout,
    /// The backend did not answer the upgrade in time (504).
    BackendHandshakeTimeout,
    /// The backend answered with something other than 101; passed on to the client.
    BackendRefused,
    /// The backend's answer was not a valid WebSocket handshake (502).
    BackendBadHandshake,
    /// The backend connection failed during the handshake (502).
    BackendIo,
    /// The TLS handshake with a `wss://` backend failed (502).
    BackendTls,
    /// Every backend of the route is drained through the admin API (503).
    BackendsDrained,

    // --- Admission limits (limits/): refused before the backend is dialled. ---
    /// The process holds `[limits] max_sessions` sessions (503 with `Retry-After`).
    MaxSessions,
    /// The route holds its `max_sessions` sessions (503 with `Retry-After`).
    RouteMaxSessions,
    /// The client's address holds `max_sessions_per_ip` sessions, process-wide or on the
    /// route (429).
    MaxSessionsPerIp,
    /// The client's address is over `handshake_rate_per_ip`, process-wide or on the route
    /// (429 with `Retry-After`).
    HandshakeRate,
    /// The process is within `fd_reserve` descriptors of its limit (503 with `Retry-After`).
    FdReserve,

    // --- A plain HTTP request on a route with `http = true` was refused (http_proxy/). ---
    /// The request's body framing is ambiguous or not forwardable: `Content-Length` with
    /// `Transfer-Encoding`, or a transfer coding other than one `chunked` (400).
    RequestFramingInvalid,
    /// An OPTIONS or TRACE request's `Max-Forwards` is not one run of digits (400).
    MaxForwardsInvalid,
    /// The request body is over the route's `max_request_body` (413).
    RequestBodyTooLarge,
    /// The client sent no request body bytes for the route's `request_body_timeout` (408).
    RequestBodyTimeout,
    /// The route has `max_concurrent_requests` waiting for their backends' answers (503).
    Overloaded,
    /// The backend's response head did not come within `response_header_timeout` (504).
    BackendResponseTimeout,
    /// The exchange did not finish within the route's `request_timeout` (504 before the
    /// response head; cut after it).
    RequestTimeout,
    /// The backend connection failed after the request was sent and before the response
    /// head, or the response was not valid HTTP (502).
    BackendRequestFailed,

    // --- A relayed session ended (relay.rs). ---
    /// A normal closing handshake, started by either peer.
    Closed,
    /// A peer started a closing handshake that did not finish within the close timeout (or
    /// went on sending past the relay's drain limit after its close frame, and was read no
    /// more).
    CloseTimeout,
    /// The proxy closed the session from outside (shutdown, or a reload that removed the
    /// route), with 1001 or the code asked for.
    Drained,
    /// The client broke RFC 6455 framing: it got 1002, the backend 1001.
    ClientProtocolError,
    /// The backend broke RFC 6455 framing: it got 1002, the client 1014.
    BackendProtocolError,
    /// A side sent a message over the route's limit: 1009 to it, 1001 to the other.
    MessageTooBig,
    /// A side stayed over its fair share (`client_messages_per_sec`, ...) for the route's
    /// `rate_grace`: 1008 "rate limit" to it, 1001 to the other.
    RateLimited,
    /// The client went away without a close frame (EOF or reset): the backend got 1001. For
    /// a plain HTTP exchange: the client went away before the whole response.
    ClientGone,
    /// The backend went away without a close frame (EOF or reset): the client got 1011. For
    /// a plain HTTP exchange: the backend's response body broke off (the client's response
    /// is cut: its connection or stream is reset).
    BackendGone,
    /// The client did not answer the proxy's ping: 1001 to both.
    ClientPingTimeout,
    /// The backend did not answer the proxy's ping: 1001 to both.
    BackendPingTimeout,
    /// No frame either way for the route's idle timeout: 1001 to both.
    IdleTimeout,
    /// The session reached the route's maximum lifetime: 1001 to both.
    MaxLifetime,
    /// An operator closed the session through the admin API, with the code and reason
    /// asked for, to both sides.
    AdminClosed,
    /// The token the session was opened with expired (`expire_sessions`): 1008 to the client,
    /// 1001 to the backend.
    TokenExpired,

    // --- A proxied plain HTTP exchange ended (http_proxy/). ---
    /// The backend's whole response reached the client.
    Completed,
}

impl Outcome {
    /// Every outcome, in declaration order: what a metrics endpoint registers up front, so a
    /// counter reads 0 before its first event instead of being absent.
    pub const ALL: &'static [Outcome] = &[
        Outcome::ProxyHeaderInvalid,
        Outcome::ProxyHeaderTimeout,
        Outcome::PlainHttpOnTls,
        Outcome::TlsHandshakeTimeout,
        Outcome::TlsHandshakeFailed,
        Outcome::RequestHeadTooLarge,
        Outcome::UriTooLong,
        Outcome::RequestHeadInvalid,
        Outcome::RequestHeadTimeout,
        Outcome::NoRoute,
        Outcome::Draining,
        Outcome::NotAnUpgrade,
        Outcome::MethodNotGet,
        Outcome::HttpVersion,
        Outcome::MissingHost,
        Outcome::UpgradeNotWebsocket,
        Outcome::ConnectionNotUpgrade,
        Outcome::MissingKey,
        Outcome::DuplicateKey,
        Outcome::InvalidKey,
        Outcome::VersionNotSupported,
        Outcome::MissingVersion,
        Outcome::DuplicateVersion,
        Outcome::InvalidSubprotocol,
        Outcome::InvalidExtensions,
        Outcome::HasBody,
        Outcome::NotExtendedConnect,
        Outcome::ProtocolNotWebsocket,
        Outcome::MissingPseudoHeader,
        Outcome::KeyOverHttp2,
        Outcome::DuplicateHost,
        Outcome::HostMismatch,
        Outcome::HostInvalid,
        Outcome::PathInvalid,
        Outcome::OriginRefused,
        Outcome::SubprotocolRefused,
        Outcome::CookieMissing,
        Outcome::TokenMissing,
        Outcome::TokenInvalid,
        Outcome::TokenKeysUnavailable,
        Outcome::ClaimsRefused,
        Outcome::AuthDenied,
        Outcome::AuthUnavailable,
        Outcome::BackendUnreachable,
        Outcome::BackendConnectTimeout,
        Outcome::BackendHandshakeTimeout,
        Outcome::BackendRefused,
        Outcome::BackendBadHandshake,
        Outcome::BackendIo,
        Outcome::BackendTls,
        Outcome::BackendsDrained,
        Outcome::MaxSessions,
        Outcome::RouteMaxSessions,
        Outcome::MaxSessionsPerIp,
        Outcome::HandshakeRate,
        Outcome::FdReserve,
        Outcome::RequestFramingInvalid,
        Outcome::MaxForwardsInvalid,
        Outcome::RequestBodyTooLarge,
        Outcome::RequestBodyTimeout,
        Outcome::Overloaded,
        Outcome::BackendResponseTimeout,
        Outcome::RequestTimeout,
        Outcome::BackendRequestFailed,
        Outcome::Closed,
        Outcome::CloseTimeout,
        Outcome::Drained,
        Outcome::ClientProtocolError,
        Outcome::BackendProtocolError,
        Outcome::MessageTooBig,
        Outcome::RateLimited,
        Outcome::ClientGone,
        Outcome::BackendGone,
        Outcome::ClientPingTimeout,
        Outcome::BackendPingTimeout,
        Outcome::IdleTimeout,
        Outcome::MaxLifetime,
        Outcome::AdminClosed,
        Outcome::TokenExpired,
        Outcome::Completed,
    ];

    /// The stable name: the access log's `outcome`, the refusal counters' key.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::ProxyHeaderInvalid => "proxy_header_invalid",
            Outcome::ProxyHeaderTimeout => "proxy_header_timeout",
            Outcome::PlainHttpOnTls => "plain_http_on_tls",
            Outcome::TlsHandshakeTimeout => "tls_handshake_timeout",
            Outcome::TlsHandshakeFailed => "tls_handshake_failed",
            Outcome::RequestHeadTooLarge => "request_head_too_large",
            Outcome::UriTooLong => "uri_too_long",
            Outcome::RequestHeadInvalid => "request_head_invalid",
            Outcome::RequestHeadTimeout => "request_head_timeout",
            Outcome::NoRoute => "no_route",
            Outcome::Draining => "draining",
            Outcome::NotAnUpgrade => "not_an_upgrade",
            Outcome::MethodNotGet => "method_not_get",
            Outcome::HttpVersion => "http_version",
            Outcome::MissingHost => "missing_host",
            Outcome::UpgradeNotWebsocket => "upgrade_not_websocket",
            Outcome::ConnectionNotUpgrade => "connection_not_upgrade",
            Outcome::MissingKey => "missing_key",
            Outcome::DuplicateKey => "duplicate_key",
            Outcome::InvalidKey => "invalid_key",
            Outcome::VersionNotSupported => "version_not_supported",
            Outcome::MissingVersion => "missing_version",
            Outcome::DuplicateVersion => "duplicate_version",
            Outcome::InvalidSubprotocol => "invalid_subprotocol",
            Outcome::InvalidExtensions => "invalid_extensions",
            Outcome::HasBody => "has_body",
            Outcome::NotExtendedConnect => "not_extended_connect",
            Outcome::ProtocolNotWebsocket => "protocol_not_websocket",
            Outcome::MissingPseudoHeader => "missing_pseudo_header",
            Outcome::KeyOverHttp2 => "key_over_http2",
            Outcome::DuplicateHost => "duplicate_host",
            Outcome::HostMismatch => "host_mismatch",
            Outcome::HostInvalid => "host_invalid",
            Outcome::PathInvalid => "path_invalid",
            Outcome::OriginRefused => "origin_refused",
            Outcome::SubprotocolRefused => "subprotocol_refused",
            Outcome::CookieMissing => "cookie_missing",
            Outcome::TokenMissing => "token_missing",
            Outcome::TokenInvalid => "token_invalid",
            Outcome::TokenKeysUnavailable => "token_keys_unavailable",
            Outcome::ClaimsRefused => "claims_refused",
            Outcome::AuthDenied => "auth_denied",
            Outcome::AuthUnavailable => "auth_unavailable",
            Outcome::BackendUnreachable => "backend_unreachable",
            Outcome::BackendConnectTimeout => "backend_connect_timeout",
            Outcome::BackendHandshakeTimeout => "backend_handshake_timeout",
            Outcome::BackendRefused => "backend_refused",
            Outcome::BackendBadHandshake => "backend_bad_handshake",
            Outcome::BackendIo => "backend_io",
            Outcome::BackendTls => "backend_tls",
            Outcome::BackendsDrained => "backends_drained",
            Outcome::MaxSessions => "max_sessions",
            Outcome::RouteMaxSessions => "route_max_sessions",
            Outcome::MaxSessionsPerIp => "max_sessions_per_ip",
            Outcome::HandshakeRate => "handshake_rate",
            Outcome::FdReserve => "fd_reserve",
            Outcome::RequestFramingInvalid => "request_framing_invalid",
            Outcome::MaxForwardsInvalid => "max_forwards_invalid",
            Outcome::RequestBodyTooLarge => "request_body_too_large",
            Outcome::RequestBodyTimeout => "request_body_timeout",
            Outcome::Overloaded => "overloaded",
            Outcome::BackendResponseTimeout => "backend_response_timeout",
            Outcome::RequestTimeout => "request_timeout",
            Outcome::BackendRequestFailed => "backend_request_failed",
            Outcome::Closed => "closed",
            Outcome::CloseTimeout => "close_timeout",
            Outcome::Drained => "drained",
            Outcome::ClientProtocolError => "client_protocol_error",
            Outcome::BackendProtocolError => "backend_protocol_error",
            Outcome::MessageTooBig => "message_too_big",
            Outcome::RateLimited => "rate_limited",
            Outcome::ClientGone => "client_gone",
            Outcome::BackendGone => "backend_gone",
            Outcome::ClientPingTimeout => "client_ping_timeout",
            Outcome::BackendPingTimeout => "backend_ping_timeout",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::MaxLifetime => "max_lifetime",
            Outcome::AdminClosed => "admin_closed",
            Outcome::TokenExpired => "token_expired",
            Outcome::Completed => "completed",
        }
    }

    /// Which policy refused, for the access log's `policy` field (`origin`, `subprotocol`,
    /// `cookie`, `jwt`, `forward_auth`); `""` for an outcome no policy produces.
    pub const fn policy(self) -> &'static str {
        match self {
            Outcome::OriginRefused => "origin",
            Outcome::SubprotocolRefused => "subprotocol",
            Outcome::CookieMissing => "cookie",
            Outcome::TokenMissing
            | Outcome::TokenInvalid
            | Outcome::TokenKeysUnavailable
            | Outcome::ClaimsRefused => "jwt",
            Outcome::AuthDenied | Outcome::AuthUnavailable => "forward_auth",
            _ => "",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who caused a refusal: the access log's `fault`, so operators know where to look.
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

/// Who started the end of a relayed session: the access log's `closed_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseSide {
    Client,
    Backend,
    /// The proxy ended it (a violation, a timer, a drain, or shutdown after the grace period).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_outcome_once_in_order() {
        // A variant added without its `ALL` entry shifts the discriminants or the length.
        assert_eq!(Outcome::ALL.len(), Outcome::Completed as usize + 1);
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o} out of place in Outcome::ALL");
        }
    }

    #[test]
    fn names_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for o in Outcome::ALL {
            let name = o.as_str();
            assert!(seen.insert(name), "{name} used twice");
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is not snake_case"
            );
            assert_eq!(o.to_string(), name);
        }
    }

    #[test]
    fn handshake_outcomes_keep_their_names() {
        use crate::handshake::HandshakeError::*;
        let errors = [
            NotAnUpgrade,
            MethodNotGet(http::Method::POST),
            HttpVersionTooOld(http::Version::HTTP_10),
            MissingHost,
            UpgradeNotWebSocket,
            ConnectionNotUpgrade,
            MissingKey,
            DuplicateKey,
            InvalidKey,
            VersionNotSupported("8".into()),
            MissingVersion,
            DuplicateVersion("13, 13".into()),
            InvalidSubprotocol("a b".into()),
            DuplicateSubprotocol("a".into()),
            InvalidExtensions("x-\u{e9}".into(), "not text"),
            HasBody,
            NotExtendedConnect,
            ProtocolNotWebSocket("x".into()),
            MissingPseudoHeader,
            KeyOverHttp2,
            DuplicateHost,
        ];
        // The names logs and dashboards already use (before `Outcome` existed, `kind()`).
        let names = [
            "not_an_upgrade",
            "method_not_get",
            "http_version",
            "missing_host",
            "upgrade_not_websocket",
            "connection_not_upgrade",
            "missing_key",
            "duplicate_key",
            "invalid_key",
            "version_not_supported",
            "missing_version",
            "duplicate_version",
            "invalid_subprotocol",
            "invalid_subprotocol",
            "invalid_extensions",
            "has_body",
            "not_extended_connect",
            "protocol_not_websocket",
            "missing_pseudo_header",
            "key_over_http2",
            "duplicate_host",
        ];
        for (e, name) in errors.iter().zip(names) {
            assert_eq!(e.outcome().as_str(), name);
        }
    }
}
