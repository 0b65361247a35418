//! The admin endpoints: the router and every handler.

// The error side of these results is the HTTP answer itself, made once per admin request:
// boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Admin, Body, json as json_response, json_error, text};
use crate::metrics::collector;
use crate::relay::CloseRequest;
use crate::sessions::{ClientFilter, Filter, SessionInfo};

/// The most sessions one page of `GET /api/sessions` holds, and its default size.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;
/// Sessions the summary (and the status page) lists, newest first.
const SUMMARY_SESSIONS: usize = 100;
/// The largest request body an admin endpoint reads.
const MAX_BODY: usize = 16 * 1024;
/// The status page (one self-contained file: no external assets, works offline).
const STATUS_PAGE: &str = include_str!("status.html");

/// Answers one admin request (already past the [`super::guard`]).
pub async fn route(admin: &Arc<Admin>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let post = req.method() == Method::POST;
    match (segments.as_slice(), get, post) {
        ([""], true, _) => page(),
        (["healthz"], true, _) => text(StatusCode::OK, "ok\n"),
        (["readyz"], true, _) => readyz(admin),
        (["metrics"], true, _) => metrics(admin, &req),
        (["api", "summary"], true, _) => json_response(StatusCode::OK, &summary(admin)),
        (["api", "events"], true, _) => super::events::stream(admin),
        (["api", "routes"], true, _) => {
            json_response(StatusCode::OK, &json!({ "routes": routes(admin) }))
        }
        (["api", "sessions"], true, _) => sessions(admin, req.uri().query()),
        (["api", "sessions", id], true, _) => session(admin, id),
        (["api", "sessions", id, "close"], _, true) => {
            let id = id.to_string();
            match body(req, &["code", "reason"]).await {
                Ok(v) => close(admin, &id, &v),
                Err(e) => e,
            }
        }
        (["api", "backends", action @ ("drain" | "undrain")], _, true) => {
            let drain = *action == "drain";
            let fields: &[&str] = if drain {
                &["route", "backend", "close"]
            } else {
                &["route", "backend"]
            };
            match body(req, fields).await {
                Ok(v) => drain_backend(admin, &v, drain),
                Err(e) => e,
            }
        }
        // It takes no fields: a body that names one (`"config"`) is refused, not ignored.
        (["api", "reload"], _, true) => match body(req, &[]).await {
            Ok(_) => reload(admin).await,
            Err(e) => e,
        },
        (["api", "login"], _, true) => match body(req, &["token"]).await {
            Ok(v) => login(admin, &v),
            Err(e) => e,
        },
        _ => {
            let known = KNOWN.iter().any(|p| matches_pattern(p, &segments));
            if known {
                // RFC 9110 §15.5.6: a 405 names the methods the resource takes.
                let allow = if is_write(&path) { "POST" } else { "GET, HEAD" };
                let mut resp =
                    json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
                resp.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static(allow));
                resp
            } else {
                json_error(StatusCode::NOT_FOUND, "no such admin endpoint")
            }
        }
    }
}

/// Every path the router knows, `*` for a segment of any value (for 405 against 404).
const KNOWN: &[&str] = &[
    "",
    "healthz",
    "readyz",
    "metrics",
    "api/summary",
    "api/events",
    "api/routes",
    "api/sessions",
    "api/sessions/*",
    "api/sessions/*/close",
    "api/backends/drain",
    "api/backends/undrain",
    "api/login",
    "api/reload",
];

/// The paths the router takes a POST on (their handlers are in [`route`]): the writes the
/// guard holds to JSON and a same origin. A POST anywhere else writes nothing and gets the
/// router's 404 or 405.
const WRITES: &[&str] = &[
    "api/sessions/*/close",
    "api/backends/drain",
    "api/backends/undrain",
    "api/reload",
    "api/login",
];

/// Whether a POST to `path` reaches a handler that acts on it.
pub(super) fn is_write(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    WRITES.iter().any(|p| matches_pattern(p, &segments))
}

fn matches_pattern(pattern: &str, segments: &[&str]) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    p.len() == segments.len() && p.iter().zip(segments).all(|(a, b)| *a == "*" || a == b)
}

fn page() -> Response<Body> {
    let mut resp = Response::new(super::full(STATUS_PAGE));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Everything the page needs is inline: nothing else may load or run.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// 200 while new sessions are taken; 503 from the first moment of a drain, before any close
/// frame goes out, so a load balancer stops sending clients first.
fn readyz(admin: &Admin) -> Response<Body> {
    if !admin.state.is_ready() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

/// Prometheus text by default; OpenMetrics when the scraper's `Accept` prefers it.
fn metrics<B>(admin: &Admin, req: &Request<B>) -> Response<Body> {
    let openmetrics = prefers_openmetrics(req.headers());
    let body = collector::render(&admin.registry, openmetrics);
    let mut resp = Response::new(super::full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(if openmetrics {
            collector::OPENMETRICS_TEXT
        } else {
            collector::PROMETHEUS_TEXT
        }),
    );
    resp
}

/// Whether `Accept` ranks OpenMetrics above the Prometheus text format (RFC 9110 §12.5.1:
/// each media range's `q`, 1 when absent): its best `q` must be above 0 and above the text
/// format's (`text/plain`, else `text/*` or `*/*`). A tie, or no `Accept`, is the text format.
fn prefers_openmetrics(headers: &http::HeaderMap) -> bool {
    let (mut om, mut text, mut any) = (0.0f32, None::<f32>, None::<f32>);
    for range in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
            .filter(|q| (0.0..=1.0).contains(q));
        let Some(q) = q else { continue };
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" => text = Some(text.map_or(q, |t| t.max(q))),
            "text/*" | "*/*" => any = Some(any.map_or(q, |a| a.max(q))),
            _ => {}
        }
    }
    om > 0.0 && om > text.or(any).unwrap_or(0.0)
}

/// Reads a JSON request body (at most [`MAX_BODY`]): an object of the endpoint's `fields`
/// only, or empty (`{}`). A field it does not take is a 400 that names it: a typo (`"clse":
/// true`) must not quietly do less than the operator asked for.
async fn body(req: Request<Incoming>, fields: &[&str]) -> Result<Value, Response<Body>> {
    let v = any_body(req).await?;
    let Some(object) = v.as_object() else {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    };
    if let Some(unknown) = object.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(json_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unknown field {unknown:?}: this endpoint takes {}",
                if fields.is_empty() {
                    "none".to_string()
                } else {
                    fields.join(", ")
                }
            ),
        ));
    }
    Ok(v)
}

/// Reads a JSON request body (at most [`MAX_BODY`]); an empty body is `{}`.
async fn any_body(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let bytes = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("cannot read the request body ({e}); at most {MAX_BODY} bytes"),
            )
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        json_error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not JSON: {e}"),
        )
    })
}

/// The status page's summary (also `GET /api/summary`).
pub fn summary(admin: &Admin) -> Value {
    let state = &admin.state;
    let mut sessions = state.sessions.list();
    let open = sessions.len();
    sessions.reverse();
    let truncated = sessions.len() > SUMMARY_SESSIONS;
    sessions.truncate(SUMMARY_SESSIONS);
    let now = Instant::now();
    let mut refusals = Vec::new();
    let mut add_refusals = |route: &str, counts: &crate::telemetry::RefusalCounts| {
        for ((outcome, status), count) in counts.by_status() {
            refusals.push(json!({
                "route": route,
                "outcome": outcome.as_str(),
                "status": (status != 0).then_some(status),
                "count": count,
            }));
        }
    };
    add_refusals("-", &state.unrouted_refusals);
    let generation = state.current();
    for r in generation.routes.iter() {
        add_refusals(&r.name, &r.refusals);
    }
    let mut close_codes = Vec::new();
    for r in generation.routes.iter() {
        for ((from, code), count) in r.stats.close_frames.snapshot() {
            close_codes.push(json!({
                "route": &*r.name,
                "from": from.as_str(),
                "code": code,
                "count": count,
            }));
        }
    }
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": SystemTime::now().duration_since(admin.started).unwrap_or_default().as_secs_f64(),
        "draining": state.is_shutting_down(),
        "sessions_open": open,
        "routes": routes(admin),
        "refusals": refusals,
        "close_codes": close_codes,
        "sessions": sessions.iter().map(|s| session_json(s, now)).collect::<Vec<_>>(),
        "sessions_truncated": truncated,
    })
}

/// Routes, their backends, and the sessions open on each. A route's count takes in its
/// sessions on a backend a reload removed, which are still open until their 1012.
fn routes(admin: &Admin) -> Vec<Value> {
    let mut open: std::collections::HashMap<*const crate::backend::Backend, usize> =
        Default::default();
    let mut by_route: std::collections::HashMap<Arc<str>, usize> = Default::default();
    admin.state.sessions.locked(|live| {
        for s in live {
            *open.entry(Arc::as_ptr(&s.lease.backend)).or_insert(0) += 1;
            *by_route.entry(s.route.name.clone()).or_insert(0) += 1;
        }
    });
    admin
        .state
        .current()
        .routes
        .iter()
        .map(|r| {
            let on =
                |b: &Arc<crate::backend::Backend>| open.get(&Arc::as_ptr(b)).copied().unwrap_or(0);
            let backends: Vec<Value> = r
                .pool
                .backends()
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let mut v = backend_json(&r.pool, i, b);
                    v["sessions_open"] = json!(on(b));
                    v
                })
                .collect();
            json!({
                "name": &*r.name,
                "host": r.config.host,
                "path": r.config.path,
                "sessions_open": by_route.get(&r.name).copied().unwrap_or(0),
                "sessions_opened": r.stats.opened.load(std::sync::atomic::Ordering::Relaxed),
                "backends": backends,
            })
        })
        .collect()
}

/// One backend's settings and state: `state` is `healthy`, `unhealthy` (active checks),
/// `ejected` (with `ejected_for_seconds` left) or `draining`; `share` is the part of its
/// weight it takes now (below 1 during slow start).
fn backend_json(
    pool: &crate::backend::BackendPool,
    index: usize,
    b: &crate::backend::Backend,
) -> Value {
    use crate::backend::health::Status;
    let now = Instant::now();
    let status = b.health.status(now);
    let state = if b.is_draining() {
        "draining"
    } else {
        status.as_str()
    };
    let ejected_for = match status {
        Status::Ejected { until } => Some(until.saturating_duration_since(now).as_secs_f64()),
        _ => None,
    };
    json!({
        "name": &*b.name,
        "state": state,
        "healthy": status == Status::Healthy,
        "draining": b.is_draining(),
        "ejected_for_seconds": ejected_for,
        "weight": pool.weight(index),
        "share": pool.share(b),
        "ejections": b.stats.ejections.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// One session, as the API shows it.
pub fn session_json(s: &SessionInfo, now: Instant) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &s.link.counters;
    let last = crate::relay::instant_from_millis(c.last_active.load(Relaxed));
    // A session that has not moved a byte was last active when it started.
    let last = last.max(s.started);
    json!({
        "id": s.id,
        "request_id": s.meta.request_id(),
        "client": s.client.to_string(),
        "route": &*s.route.name,
        "backend": &**s.backend(),
        "transport": s.meta.transport.as_str(),
        "subprotocol": s.meta.subprotocol(),
        "user": s.meta.user(),
        "host": s.meta.host(),
        "path": s.meta.path(),
        "user_agent": s.meta.user_agent(),
        "age_seconds": now.saturating_duration_since(s.started).as_secs_f64(),
        "bytes_client_to_backend": c.client_to_backend.load(Relaxed),
        "bytes_backend_to_client": c.backend_to_client.load(Relaxed),
        "messages_client_to_backend": c.messages_client_to_backend.load(Relaxed),
        "messages_backend_to_client": c.messages_backend_to_client.load(Relaxed),
        "last_active_seconds_ago": now.saturating_duration_since(last).as_secs_f64(),
        // Asked for this session alone (the API, a backend drain) or for all of its route's
        // or the gateway's (a shutdown, a reload that restarts the route).
        "closing": crate::relay::Env::signalled(s),
        "hibernating": c.hibernating.load(Relaxed),
    })
}

/// The query's value for `key`, percent-decoded (`+` a space, as forms send it).
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    crate::query::param(query, key, true)
}

/// The parameters `GET /api/sessions` takes.
const SESSIONS_PARAMS: [&str; 5] = ["route", "backend", "client", "limit", "after"];

/// `GET /api/sessions?route=&backend=&client=&limit=&after=`: live sessions by ascending id.
///
/// A parameter it does not take, one given twice, or a value it cannot read is a 400, as an
/// unknown field of a write is: a misspelt filter (`?rout=chat`) listed every session, and a
/// script that closes what it lists closed them all.
fn sessions(admin: &Admin, query: Option<&str>) -> Response<Body> {
    let bad = |why: String| json_error(StatusCode::BAD_REQUEST, &why);
    let mut seen = Vec::new();
    for (name, _) in query.map(crate::query::pairs).into_iter().flatten() {
        let name = crate::query::decode(name, true);
        if name.is_empty() {
            continue;
        }
        if !SESSIONS_PARAMS.contains(&&*name) {
            return bad(format!(
                "unknown parameter {name:?} (takes {})",
                SESSIONS_PARAMS.join(", ")
            ));
        }
        if seen.contains(&name) {
            return bad(format!("{name} given more than once"));
        }
        seen.push(name);
    }
    let route = query_param(query, "route");
    let backend = query_param(query, "backend");
    let client = match query_param(query, "client").map(|c| c.parse::<ClientFilter>()) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(())) => {
            return bad("client must be an IP address, or ip:port".into());
        }
    };
    let number = |key: &str| -> Result<Option<u64>, Response<Body>> {
        query_param(query, key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("{key} must be a whole number")))
            })
            .transpose()
    };
    let (limit, after) = match (number("limit"), number("after")) {
        (Ok(l), Ok(a)) => (l, a),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    if limit == Some(0) {
        return bad(format!("limit must be 1 to {MAX_PAGE}"));
    }
    let limit = limit.map_or(DEFAULT_PAGE, |l| (l as usize).min(MAX_PAGE));
    let filter = Filter {
        route: route.as_deref(),
        backend: backend.as_deref(),
        client,
    };
    let (page, total) = admin
        .state
        .sessions
        .page(&filter, after.unwrap_or(0), limit);
    let now = Instant::now();
    // Another page follows when this one is full and a later matching session exists.
    let next = (page.len() == limit)
        .then(|| page.last().map(|s| s.id))
        .flatten()
        .filter(|&last| !admin.state.sessions.page(&filter, last, 1).0.is_empty());
    json_response(
        StatusCode::OK,
        &json!({
            "sessions": page.iter().map(|s| session_json(s, now)).collect::<Vec<_>>(),
            "total": total,
            "next": next,
        }),
    )
}

fn parse_id(id: &str) -> Result<u64, Response<Body>> {
    id.parse()
        .map_err(|_| json_error(StatusCode::NOT_FOUND, "no such session"))
}

fn session(admin: &Admin, id: &str) -> Response<Body> {
    let found = parse_id(id).map(|id| admin.state.sessions.get(id));
    match found {
        Ok(Some(s)) => json_response(StatusCode::OK, &session_json(&s, Instant::now())),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "no such session"),
        Err(e) => e,
    }
}

/// The close code and reason of a close request: `code` (default 1000) must be one an
/// endpoint may send (RFC 6455 §7.4: 1000–1003, 1007–1014, or 3000–4999), `reason` at most
/// 123 bytes (a close frame's payload is at most 125).
fn close_request(
    v: &Value,
    by_admin: bool,
    default_reason: &str,
) -> Result<CloseRequest, Response<Body>> {
    let bad = |m: &str| json_error(StatusCode::BAD_REQUEST, m);
    let code = match v.get("code") {
        None | Some(Value::Null) => crate::frame::close_code::NORMAL,
        Some(c) => c
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|&c| crate::frame::close_code::sendable(c))
            .ok_or_else(|| {
                bad("code must be a close code an endpoint may send: 1000-1003, 1007-1014 or 3000-4999")
            })?,
    };
    let reason = match v.get("reason") {
        None | Some(Value::Null) => default_reason.to_string(),
        Some(Value::String(r)) if r.len() <= 123 => r.clone(),
        Some(Value::String(_)) => return Err(bad("reason must be at most 123 bytes of UTF-8")),
        Some(_) => return Err(bad("reason must be a string")),
    };
    Ok(CloseRequest {
        code,
        reason: reason.into(),
        by_admin,
    })
}

/// `POST /api/sessions/{id}/close`: close frames with the code and reason to both sides.
fn close(admin: &Admin, id: &str, v: &Value) -> Response<Body> {
    let id = match parse_id(id) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let request = match close_request(v, true, "closed by operator") {
        Ok(r) => r,
        Err(e) => return e,
    };
    let (code, reason) = (request.code, request.reason.clone());
    match admin.state.sessions.close_session(id, request) {
        None => json_error(StatusCode::NOT_FOUND, "no such session"),
        Some(first) => {
            tracing::info!(
                session = id,
                code,
                reason = &*reason,
                first,
                "session closed through the admin API"
            );
            json_response(StatusCode::ACCEPTED, &json!({ "id": id, "closing": true }))
        }
    }
}

/// `POST /api/backends/drain` (no new sessions; live ones closed with 1001 when `close` is
/// true, else left to finish) and `POST /api/backends/undrain`.
fn drain_backend(admin: &Admin, v: &Value, drain: bool) -> Response<Body> {
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    let (Some(route_name), Some(backend_name)) = (field("route"), field("backend")) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "route and backend are required (the route's name, the backend's URL as configured)",
        );
    };
    let generation = admin.state.current();
    let Some(route) = generation.routes.named(route_name) else {
        return json_error(StatusCode::NOT_FOUND, "no such route");
    };
    let Some(backend) = route
        .pool
        .backends()
        .iter()
        .find(|b| &*b.name == backend_name)
    else {
        return json_error(StatusCode::NOT_FOUND, "the route has no such backend");
    };
    let close = match v.get("close") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return json_error(StatusCode::BAD_REQUEST, "close must be true or false"),
    };
    let mut closed = 0;
    if drain && close {
        backend.set_draining_closing();
        closed = admin
            .state
            .sessions
            .close_backend(backend, &CloseRequest::backend_draining());
    } else {
        backend.set_draining(drain);
    }
    tracing::info!(
        route = route_name,
        backend = backend_name,
        draining = drain,
        sessions_closed = closed,
        "backend drain changed through the admin API"
    );
    json_response(
        StatusCode::OK,
        &json!({
            "route": route_name,
            "backend": backend_name,
            "draining": drain,
            "sessions_closed": closed,
        }),
    )
}

/// `POST /api/reload`: reads the config file again and applies it (as SIGHUP does, without
/// the certificates): 200 with what changed, or 400 with every error (nothing changed); 503
/// once a shutdown has begun, when a new config could only bind listeners nobody serves.
async fn reload(admin: &Admin) -> Response<Body> {
    if admin.state.is_shutting_down() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: the running config stays until the process exits",
        );
    }
    // As SIGHUP is: it would be applied here, said done, and lost at the hand-over.
    if let Some(message) = admin.state.successor.reload_refusal() {
        return json_error(StatusCode::CONFLICT, &message);
    }
    match crate::reload::from_file(&admin.state).await {
        Ok(r) => json_response(
            StatusCode::OK,
            &json!({
                "added": r.added,
                "removed": r.removed,
                "changed": r.changed,
                "unchanged": r.unchanged,
                "sessions_closing": r.sessions_closing,
                "generation": r.generation,
                "listeners": {
                    "added": r.listeners.added,
                    "removed": r.listeners.removed,
                    "changed": r.listeners.changed,
                },
                "restart_needed": r.restart_needed,
            }),
        ),
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": format!("the config file {} does not load; the running config stays", e.source),
                "errors": e.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
        ),
    }
}

/// `POST /api/login` with `{"token": "..."}`: sets the status page's cookie.
fn login(admin: &Admin, v: &Value) -> Response<Body> {
    let Some(token) = &admin.config.token else {
        let mut resp = Response::new(super::full(""));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        return resp;
    };
    let presented = v.get("token").and_then(Value::as_str).unwrap_or("");
    if !super::guard::token_eq(presented, &token.0) {
        return json_error(StatusCode::UNAUTHORIZED, "wrong token");
    }
    let secure = if admin.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
        super::guard::COOKIE,
        token.0
    );
    let mut resp = Response::new(super::full(""));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_accept_ranks_it_first() {
        let prefers = |accept: &str| {
            let mut h = http::HeaderMap::new();
            if !accept.is_empty() {
                h.insert(header::ACCEPT, accept.parse().unwrap());
            }
            prefers_openmetrics(&h)
        };
        // What Prometheus sends by default.
        assert!(prefers(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(prefers("application/openmetrics-text; version=1.0.0"));
        // A scraper set to prefer the text format.
        assert!(!prefers(
            "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.1"
        ));
        assert!(!prefers("application/openmetrics-text;q=0"));
        assert!(!prefers("application/openmetrics-text;q=0.5, */*;q=0.5"));
        assert!(prefers("application/openmetrics-text;q=0.5, */*;q=0.4"));
        assert!(!prefers(""));
        assert!(!prefers("text/plain"));
    }

    #[test]
    fn query_parameters_are_decoded() {
        let q = Some("route=chat&backend=ws%3A%2F%2F127.0.0.1%3A9001%2F&limit=5&x");
        assert_eq!(query_param(q, "route").as_deref(), Some("chat"));
        assert_eq!(
            query_param(q, "backend").as_deref(),
            Some("ws://127.0.0.1:9001/")
        );
        assert_eq!(query_param(q, "limit").as_deref(), Some("5"));
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "client"), None);
        assert_eq!(
            query_param(Some("client=a+b%2"), "client").as_deref(),
            Some("a b%2")
        );
    }

    #[test]
    fn close_requests_are_checked() {
        let ok = |v: Value| close_request(&v, true, "d").map(|r| (r.code, r.reason.to_string()));
        assert_eq!(ok(json!({})).unwrap(), (1000, "d".to_string()));
        assert_eq!(
            ok(json!({"code": 4001, "reason": "bye"})).unwrap(),
            (4001, "bye".to_string())
        );
        for bad in [
            json!({"code": 1005}),
            json!({"code": 1006}),
            json!({"code": 999}),
            json!({"code": 5000}),
            json!({"code": "1000"}),
            json!({"reason": "x".repeat(124)}),
            json!({"reason": 5}),
        ] {
            assert!(ok(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn known_paths_give_405_for_a_wrong_method() {
        assert!(matches_pattern(
            "api/sessions/*/close",
            &["api", "sessions", "7", "close"]
        ));
        assert!(!matches_pattern(
            "api/sessions/*",
            &["api", "sessions", "7", "close"]
        ));
    }
}
