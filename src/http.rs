//! The HTTP front end: hyper-util's connection builder configured for a WebSocket edge.

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::config::{Http2Config, Limits, ListenerConfig};

pub type Builder = auto::Builder<TokioExecutor>;

/// Which protocols a connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1 only: TLS clients that negotiated `http/1.1` (or no ALPN), and listeners
    /// with `http2 = false`.
    Http1,
    /// HTTP/2 only: TLS clients that negotiated `h2`. ALPN decides, not the preface sniff: a
    /// client that agreed on one protocol and speaks the other is wrong, not served.
    Http2,
    /// Either, told apart by the HTTP/2 preface: plain-TCP listeners (h2c prior knowledge,
    /// as a TLS-terminating load balancer in front may speak).
    Sniff,
}

/// Builds the connection builder for one listener and protocol choice.
///
/// - A timer is set: without one hyper silently skips the header read timeout and the
///   HTTP/2 keep-alive.
/// - `max_buf_size` bounds the request head (hyper answers 431 past it), `max_headers` the
///   header count (431 as well); HTTP/2's `max_header_list_size` follows the same limit.
/// - HTTP/2 advertises `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441), so browsers open
///   WebSockets as extended CONNECT streams on it.
/// - Upgrades are served with `serve_connection_with_upgrades` by the caller.
pub fn builder(
    listener: &ListenerConfig,
    limits: &Limits,
    h2: &Http2Config,
    protocols: Protocols,
) -> Builder {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(listener.handshake_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        // Keep-alive for plain requests (demo page, refusals are `Connection: close`).
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams)
        .keep_alive_interval(h2.keep_alive_interval)
        .keep_alive_timeout(h2.keep_alive_timeout);
    match protocols {
        Protocols::Http1 => b.http1_only(),
        Protocols::Http2 => b.http2_only(),
        Protocols::Sniff => b,
    }
}
