//! The HTTP front end: hyper-util's auto builder configured for a WebSocket edge.

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::config::{Limits, ListenerConfig};

/// Builds the connection builder for one listener.
///
/// - A timer is set: without one hyper silently skips the header read timeout.
/// - `max_buf_size` bounds the request head (hyper answers 431 past it), `max_headers` the
///   header count (431 as well).
/// - Upgrades are served with `serve_connection_with_upgrades` by the caller.
pub fn builder(listener: &ListenerConfig, limits: &Limits) -> auto::Builder<TokioExecutor> {
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
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(100)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    b
}
