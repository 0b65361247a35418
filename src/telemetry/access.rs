//! The access log: one record per session when it ends, one per refused handshake.
//!
//! Records go to the `wsgate::access` tracing target at INFO, so they can be routed or
//! filtered on their own (`RUST_LOG=wsgate::access=info,warn`).

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::error::{Fault, ProxyError};
use crate::relay::RelayOutcome;

/// A session has ended.
pub fn session_closed(
    id: u64,
    route: &str,
    client: SocketAddr,
    backend: &str,
    duration: Duration,
    outcome: &RelayOutcome,
) {
    let result = match (&outcome.error, outcome.closed_by) {
        (Some(_), _) => "error",
        (None, crate::error::CloseSide::Proxy) => "ended_by_proxy",
        (None, _) => "closed",
    };
    let error = outcome
        .error
        .as_ref()
        .map(|(dir, e)| format!("{dir}: {e}"))
        .unwrap_or_default();
    tracing::info!(
        target: "wsgate::access",
        event = "session",
        session = id,
        route,
        client = %client,
        backend,
        duration_ms = duration.as_millis() as u64,
        bytes_client_to_backend = outcome.client_to_backend,
        bytes_backend_to_client = outcome.backend_to_client,
        closed_by = outcome.closed_by.as_str(),
        outcome = result,
        error = %error,
        "session closed"
    );
}

/// A handshake was refused before the upgrade.
pub fn refused(
    id: u64,
    route: Option<&str>,
    client: SocketAddr,
    method: &http::Method,
    path: &str,
    status: StatusCode,
    err: &ProxyError,
) {
    let fault = err.fault();
    let reason = err.to_string();
    let level_is_warn = fault != Fault::Client;
    macro_rules! record {
        ($lvl:ident) => {
            tracing::$lvl!(
                target: "wsgate::access",
                event = "refused",
                session = id,
                route = route.unwrap_or("-"),
                client = %client,
                method = %method,
                path,
                status = status.as_u16(),
                outcome = err.outcome(),
                fault = fault.as_str(),
                reason = %reason,
                "handshake refused"
            )
        };
    }
    if level_is_warn {
        record!(warn);
    } else {
        record!(info);
    }
}
