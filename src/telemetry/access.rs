//! The access log: one record per session when it ends, one per refused handshake.
//!
//! Records go to the `wsgate::access` tracing target at INFO, so they can be routed or
//! filtered on their own (`RUST_LOG=wsgate::access=info,warn`).

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::error::ProxyError;
use crate::outcome::Fault;
use crate::relay::{CloseInfo, RelayOutcome};

/// A session has ended.
pub fn session_closed(
    id: u64,
    route: &str,
    client: SocketAddr,
    backend: &str,
    transport: &str,
    duration: Duration,
    out: &RelayOutcome,
) {
    let code = |c: &Option<CloseInfo>| c.as_ref().and_then(|c| c.code).map_or(0, u64::from);
    fn reason(c: &Option<CloseInfo>) -> &str {
        c.as_ref().map_or("", |c| c.reason.as_str())
    }
    let up = out.client_to_backend;
    let down = out.backend_to_client;
    tracing::info!(
        target: "wsgate::access",
        event = "session",
        session = id,
        route,
        client = %client,
        backend,
        transport,
        duration_ms = duration.as_millis() as u64,
        bytes_client_to_backend = up.bytes,
        bytes_backend_to_client = down.bytes,
        messages_client_to_backend = up.messages,
        messages_backend_to_client = down.messages,
        frames_client_to_backend = up.frames,
        frames_backend_to_client = down.frames,
        closed_by = out.closed_by.as_str(),
        client_close_code = code(&out.client_close),
        client_close_reason = reason(&out.client_close),
        backend_close_code = code(&out.backend_close),
        backend_close_reason = reason(&out.backend_close),
        outcome = out.outcome().as_str(),
        cut = out.cut,
        error = out.error.as_deref().unwrap_or(""),
        "session closed"
    );
}

/// A handshake was refused before the upgrade; written within `limit`'s budget for the
/// refusal's outcome (a flood of one kind costs a few lines a second).
#[allow(clippy::too_many_arguments)]
pub fn refused(
    limit: &super::limited::LogLimiter,
    id: u64,
    route: Option<&str>,
    client: SocketAddr,
    method: &http::Method,
    path: &str,
    status: StatusCode,
    err: &ProxyError,
) {
    let Some(line) = limit.admit(err.outcome()) else {
        return;
    };
    let fault = err.fault();
    // Both may carry client bytes: cut to a bound, and logged as `&str` fields, which the
    // text format quotes and escapes (a raw `\n` would start a forged record).
    let reason = super::cut(&err.to_string(), super::MAX_LOGGED_REASON).into_owned();
    let path = super::cut(path, super::MAX_LOGGED_PATH);
    macro_rules! record {
        ($lvl:ident) => {
            tracing::$lvl!(
                target: "wsgate::access",
                event = "refused",
                session = id,
                route = route.unwrap_or("-"),
                client = %client,
                method = %method,
                path = &*path,
                status = status.as_u16(),
                outcome = err.outcome().as_str(),
                policy = err.policy(),
                fault = fault.as_str(),
                reason = reason.as_str(),
                suppressed = line.suppressed(),
                "handshake refused"
            )
        };
    }
    if fault == Fault::Client {
        record!(info);
    } else {
        record!(warn);
    }
}
