//! The access log: one record when a session opens (at the level `[log] session_open` says),
//! one when it ends, one per refused handshake.
//!
//! Records go to the `wsgate::access` tracing target, so they can be routed or filtered on
//! their own (`RUST_LOG=wsgate::access=info,warn`). Each carries the request's id
//! (`request_id`, also sent to the backend and the client) and, when the trace is keyed
//! otherwise, its `trace_id`. A value there is nothing to say about is left out, not written
//! as 0 or "" (a close code when there was none).

use std::net::SocketAddr;

use http::StatusCode;
use http::request::Parts;

use super::correlation::Correlation;
use crate::config::LogLevel;
use crate::error::ProxyError;
use crate::outcome::Fault;
use crate::relay::{CloseInfo, RelayOutcome};
use crate::sessions::SessionInfo;

/// A session has started relaying: a session that lasts hours shows in the log before it ends.
pub fn session_open(s: &SessionInfo, level: LogLevel) {
    let m = &*s.meta;
    macro_rules! record {
        ($lvl:ident) => {
            tracing::$lvl!(
                target: "wsgate::access",
                event = "session_open",
                session = s.id,
                request_id = m.request_id(),
                trace_id = m.trace_id(),
                route = &*s.route.name,
                client = %crate::ip_text::Addr(s.client),
                backend = &**s.backend(),
                transport = m.transport.as_str(),
                host = m.host(),
                path = m.path(),
                subprotocol = m.subprotocol(),
                user = m.user(),
                user_agent = m.user_agent(),
                "session open"
            )
        };
    }
    match level {
        LogLevel::Info => record!(info),
        LogLevel::Debug => record!(debug),
        LogLevel::Off => {}
    }
}

/// A session has ended.
pub fn session_closed(s: &SessionInfo, out: &RelayOutcome) {
    let m = &*s.meta;
    // Absent without a close frame, or with one that had no code: never a made-up 0.
    let code = |c: &Option<CloseInfo>| c.as_ref().and_then(|c| c.code);
    fn reason(c: &Option<CloseInfo>) -> Option<&str> {
        c.as_ref().map(|c| c.reason.as_str())
    }
    let up = out.client_to_backend;
    let down = out.backend_to_client;
    tracing::info!(
        target: "wsgate::access",
        event = "session",
        session = s.id,
        request_id = m.request_id(),
        trace_id = m.trace_id(),
        route = &*s.route.name,
        client = %crate::ip_text::Addr(s.client),
        backend = &**s.backend(),
        transport = m.transport.as_str(),
        host = m.host(),
        path = m.path(),
        subprotocol = m.subprotocol(),
        user = m.user(),
        user_agent = m.user_agent(),
        duration_ms = s.started.elapsed().as_millis() as u64,
        bytes_client_to_backend = up.bytes,
        bytes_backend_to_client = down.bytes,
        messages_client_to_backend = up.messages,
        messages_backend_to_client = down.messages,
        frames_client_to_backend = up.frames,
        frames_backend_to_client = down.frames,
        closed_by = out.closed_by.as_str(),
        offender = out.proxy_reason.and_then(|r| r.offender()).map(|s| s.as_str()),
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
/// refusal's outcome (a flood of one kind costs a few lines a second). `parts`: the request
/// as refused (its path canonical if it got that far).
#[allow(clippy::too_many_arguments)]
pub fn refused(
    limit: &super::limited::LogLimiter,
    id: u64,
    ids: &Correlation,
    route: Option<&str>,
    client: SocketAddr,
    parts: &Parts,
    status: StatusCode,
    err: &ProxyError,
) {
    let Some(line) = limit.admit(err.outcome()) else {
        return;
    };
    let fault = err.fault();
    // All may carry client bytes: cut to a bound, and logged as `&str` fields, which the
    // text format quotes and escapes (a raw `\n` would start a forged record).
    let reason = super::cut(&err.to_string(), super::MAX_LOGGED_REASON).into_owned();
    let path = super::cut(parts.uri.path(), super::MAX_LOGGED_PATH);
    let host = request_host(parts).map(|h| super::cut(h, super::MAX_LOGGED_VALUE));
    let user_agent = parts
        .headers
        .get(http::header::USER_AGENT)
        .map(|v| super::header_text(v, super::MAX_LOGGED_VALUE));
    macro_rules! record {
        ($lvl:ident) => {
            tracing::$lvl!(
                target: "wsgate::access",
                event = "refused",
                session = id,
                request_id = ids.request_id(),
                trace_id = ids.logged_trace_id(),
                route = route.unwrap_or("-"),
                client = %crate::ip_text::Addr(client),
                method = %parts.method,
                host = host.as_deref(),
                path = &*path,
                user_agent = user_agent.as_deref(),
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

/// The host a request names, without its port: the target's authority (absolute form, HTTP/2
/// `:authority`), else `Host`; `None` if neither is there or readable.
fn request_host(parts: &Parts) -> Option<&str> {
    let host = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    Some(crate::route::strip_port(host))
}
