//! The response body on its way to the client, and what is written when the exchange ends:
//! one access record (`event = "http"`) and the route's HTTP counters, like a WebSocket
//! session's end. The body passes frame by frame as the backend sends them (a long-poll
//! answer or a server-sent event reaches the client at once), trailers included.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;
use tower::BoxError;

use http::request::Parts;

use super::body::BodyState;
use super::pick::InFlight;
use crate::outcome::Outcome;
use crate::proxy::Ctx;
use crate::route::Route;
use crate::telemetry::{MAX_LOGGED_PATH, MAX_LOGGED_VALUE, cut};

/// Everything the exchange's access record says besides how it ended.
#[derive(Debug)]
pub struct Record {
    pub id: u64,
    pub request_id: Box<str>,
    pub trace_id: Option<Box<str>>,
    pub route: Arc<Route>,
    pub client: SocketAddr,
    pub backend: Arc<str>,
    pub method: Method,
    /// The client's HTTP version.
    pub version: Version,
    pub host: Option<Box<str>>,
    /// Cut to [`crate::telemetry::MAX_LOGGED_PATH`]; never the query (it may carry a token).
    pub path: Box<str>,
    pub user: Option<Box<str>>,
    pub user_agent: Option<Box<str>>,
    pub status: StatusCode,
    pub started: Instant,
    pub request_body: Arc<BodyState>,
}

impl Record {
    /// What the record says of the request (every value the client chose cut to its
    /// bound); the user is the policy's, the backend and the status are the answer's.
    pub fn of_request(
        cx: &Ctx<'_>,
        route: &Arc<Route>,
        parts: &Parts,
        host: &str,
        started: Instant,
        request_body: Arc<BodyState>,
    ) -> Record {
        Record {
            id: cx.id,
            request_id: cx.ids.request_id().into(),
            trace_id: cx.ids.logged_trace_id().map(Into::into),
            route: route.clone(),
            client: cx.conn.client,
            backend: Arc::from(""),
            method: parts.method.clone(),
            version: parts.version,
            host: (!host.is_empty())
                .then(|| cut(crate::route::strip_port(host), MAX_LOGGED_VALUE).into()),
            path: cut(parts.uri.path(), MAX_LOGGED_PATH).into(),
            // The policy's, once it has run (`set_user`).
            user: None,
            user_agent: parts
                .headers
                .get(http::header::USER_AGENT)
                .map(|v| crate::telemetry::header_text(v, MAX_LOGGED_VALUE).into()),
            status: StatusCode::OK,
            started,
            request_body,
        }
    }

    /// The user the policy admitted (known only once it has run).
    pub fn set_user(&mut self, user: Option<String>) {
        self.user = user.map(|u| cut(&u, MAX_LOGGED_VALUE).into());
    }

    /// Counts the exchange on its route and writes its access record.
    pub fn finish(self, outcome: Outcome, response_bytes: u64, error: Option<&str>) {
        let lasted = self.started.elapsed();
        self.route
            .stats
            .http
            .observe(self.status.as_u16(), outcome, Some(lasted));
        tracing::info!(
            target: "wsgate::access",
            event = "http",
            session = self.id,
            request_id = &*self.request_id,
            trace_id = self.trace_id.as_deref(),
            route = &*self.route.name,
            client = %crate::ip_text::Addr(self.client),
            backend = &*self.backend,
            method = self.method.as_str(),
            version = ?self.version,
            host = self.host.as_deref(),
            path = &*self.path,
            user = self.user.as_deref(),
            user_agent = self.user_agent.as_deref(),
            status = self.status.as_u16(),
            duration_ms = duration_ms(lasted),
            bytes_request = self.request_body.bytes.load(Ordering::Relaxed),
            bytes_response = response_bytes,
            outcome = outcome.as_str(),
            error = error.unwrap_or(""),
            "http request"
        );
    }
}

/// The exchange's record while it waits for the response head. hyper drops the exchange
/// when its client goes away first; the record is then written as nginx writes one, with
/// status 499 and outcome `client_gone`, so a client that gave up on a slow backend is seen.
/// Dropped at the end of a shutdown's grace (`Listeners::cut`), it writes the proxy's drop
/// instead (503, `draining`).
#[derive(Debug)]
pub struct Waiting<'s> {
    record: Option<Record>,
    /// The backend being asked, for the record's `backend`.
    tried: Option<Tried>,
    sessions: &'s crate::sessions::Sessions,
}

/// The backend a plain request was sent to last, shared between the exchange (its
/// records written before an answer: 499, 504, `draining`) and the attempts, which set it.
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<std::sync::Mutex<Option<Arc<str>>>>);

impl Tried {
    pub fn set(&self, backend: &Arc<str>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(backend.clone());
    }

    pub fn get(&self) -> Option<Arc<str>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl<'s> Waiting<'s> {
    pub fn new(sessions: &'s crate::sessions::Sessions) -> Waiting<'s> {
        Waiting {
            record: None,
            tried: None,
            sessions,
        }
    }

    pub fn arm(&mut self, record: Record, tried: Tried) {
        self.record = Some(record);
        self.tried = Some(tried);
    }

    /// The record, no longer written on drop (the exchange answered or was refused).
    pub fn take(&mut self) -> Option<Record> {
        self.record.take()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            if let Some(backend) = self.tried.as_ref().and_then(Tried::get) {
                record.backend = backend;
            }
            if self.sessions.is_draining() {
                record.status = http::StatusCode::SERVICE_UNAVAILABLE;
                record.finish(
                    Outcome::Draining,
                    0,
                    Some("the shutdown's grace ran out before the response head"),
                );
            } else {
                record.status = crate::error::CLIENT_CLOSED_REQUEST;
                record.finish(
                    Outcome::ClientGone,
                    0,
                    Some("the client went away before the response head"),
                );
            }
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The backend's response body, observed: bytes counted, the route's `request_timeout`
/// applied, and the record written once when it ends (completely, broken off by the
/// backend, timed out, or dropped because the client went away).
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
    /// The whole exchange's deadline (`request_timeout`), if the route has one.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    bytes: u64,
    /// Whether a frame has gone to hyper.
    sent_any: bool,
    /// The backend's error, held back for one turn (see `poll_frame`).
    held: Option<BoxError>,
    /// `None` once written.
    record: Option<Box<Record>>,
    /// Counts the exchange on its backend (`least_conn`) until the body ends.
    _in_flight: InFlight,
}

impl ResponseBody {
    /// The deadline also bounds the client's taking of the response: a client that stops
    /// reading leaves the body unpolled. On an HTTP/1.1 connection (`watch`) the
    /// connection's writes fail at the deadline instead (`HeadWatch::arm_write_deadline`),
    /// until the connection's next request (hyper and the socket buffer hundreds of KiB
    /// after the body's last frame); over HTTP/2 the stream's task ends at it
    /// (`http::end_stream_at`), which resets the stream and drops this body.
    pub fn new(
        inner: Incoming,
        deadline: Option<(tokio::time::Instant, Duration)>,
        record: Record,
        in_flight: InFlight,
        watch: Option<&Arc<crate::head_guard::HeadWatch>>,
    ) -> ResponseBody {
        match (watch, deadline) {
            (Some(w), Some((at, _))) => w.arm_write_deadline(at),
            // HTTP/2: the stream's task ends at the deadline, polled or not.
            (None, Some((at, _))) => crate::http::end_stream_at(at),
            (_, None) => {}
        }
        ResponseBody {
            inner,
            deadline: deadline.map(|(at, _)| Box::pin(tokio::time::sleep_until(at))),
            timeout: deadline.map_or(Duration::ZERO, |(_, d)| d),
            bytes: 0,
            sent_any: false,
            held: None,
            record: Some(Box::new(record)),
            _in_flight: in_flight,
        }
    }

    fn finish(&mut self, outcome: Outcome, error: Option<&str>) {
        if let Some(record) = self.record.take() {
            record.finish(outcome, self.bytes, error);
        }
    }
}

/// The response was cut at the route's `request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request did not complete within {0:?}")]
struct Elapsed(Duration);

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = this.held.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            let e = Elapsed(this.timeout);
            this.finish(Outcome::RequestTimeout, Some(&e.to_string()));
            return Poll::Ready(Some(Err(e.into())));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        super::headers::response_trailers(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                this.sent_any = true;
                // Trailers are a body's last frame: hyper writes them and drops the body
                // without asking for more, and `Incoming` does not call itself ended
                // after them.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.finish(Outcome::Completed, None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                // The backend reset or closed mid-body: the client's response is cut (its
                // stream reset, or its connection closed), never passed off as complete.
                let error = crate::http_client::error_chain(&e);
                this.finish(Outcome::BackendGone, Some(&error));
                if !this.sent_any {
                    // Before any of the body: hyper's HTTP/1.1 connection holds the response
                    // head in its buffer until the body's first frame or a wait, and an
                    // error then drops it unsent, so the client got no answer at all (most
                    // of the time) where the record says 200. One turn of waiting first:
                    // hyper flushes the head, and the client sees it cut, as from nginx.
                    this.sent_any = true;
                    this.held = Some(e.into());
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(e.into())))
            }
            None => {
                this.finish(Outcome::Completed, None);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper drops a body it has sent to its end without polling past it (a HEAD answer,
        // a 204), or one the client no longer waits for.
        let now = tokio::time::Instant::now();
        let timed_out = self.deadline.as_ref().is_some_and(|d| now >= d.deadline());
        let (outcome, error) = if self.inner.is_end_stream() {
            (Outcome::Completed, None)
        } else if timed_out {
            // The connection's write deadline (`new`): the client did not take the response.
            let e = Elapsed(self.timeout).to_string();
            (Outcome::RequestTimeout, Some(e))
        } else {
            (Outcome::ClientGone, None)
        };
        self.finish(outcome, error.as_deref());
    }
}
