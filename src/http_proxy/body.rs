//! The request body on its way to the backend: streamed frame by frame (never collected),
//! trailers included, counted, cut at the route's `max_request_body`, and given up when the
//! client pauses longer than `request_body_timeout` between two reads.
//!
//! The client's body waits in [`BodyState`] until an attempt starts reading it: a backend
//! whose connect failed never did, so the next backend gets the body whole, and a request
//! with a body fails over like one without.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Sleep;
use tower::BoxError;

use crate::head_guard::ClientBody;

/// How the client's side of the body failed, if it did (see [`BodyState::client_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Over `max_request_body` (413).
    TooLarge(u64),
    /// No body bytes for `request_body_timeout` (408).
    Stalled(Duration),
    /// The client's body broke off: its connection closed or reset, its chunked framing was
    /// invalid, its HTTP/2 stream was reset (400, though usually nobody is left to read it).
    Broken,
}

const FAULT_NONE: u8 = 0;
const FAULT_TOO_LARGE: u8 = 1;
const FAULT_STALLED: u8 = 2;
const FAULT_BROKEN: u8 = 3;

/// What the exchange learns from the request body while the backend connection reads it.
#[derive(Debug)]
pub struct BodyState {
    /// Body bytes read from the client so far.
    pub bytes: AtomicU64,
    /// The route's `max_request_body`.
    limit: Option<u64>,
    /// The route's `request_body_timeout`.
    idle: Duration,
    /// The client's body until an attempt takes it (`None` after, or for no body).
    unread: Mutex<Option<ClientBody>>,
    /// An attempt has started reading the body: it can no longer go to another backend.
    taken: AtomicBool,
    /// The request came without a body: any attempt can send it again.
    empty: bool,
    /// The whole body has been read (or there was none).
    complete: AtomicBool,
    /// Wakes [`BodyState::read_in_full`] when `complete` is set.
    completed: Notify,
    /// A `FAULT_*`: why the body failed on the client's side.
    fault: AtomicU8,
    /// Frames handed to the backend connection so far (its progress in taking the body).
    frames: AtomicU64,
    /// The backend connection waits for the client's next frame (not the other way round);
    /// set by the poll that begins the wait, which arms the attempt's idle timer.
    on_client: AtomicBool,
    /// The trailer fields the backend may have (`headers::request_trailer_names`), set once
    /// the backend request's head is built; none until then.
    trailers: std::sync::OnceLock<Vec<http::HeaderName>>,
}

impl BodyState {
    /// Lets the trailer fields `names` through to the backend (see `trailers`).
    pub fn allow_trailers(&self, names: Vec<http::HeaderName>) {
        let _ = self.trailers.set(names);
    }

    pub fn new(body: ClientBody, limit: Option<u64>, idle: Duration) -> Arc<BodyState> {
        let empty = body.is_end_stream();
        Arc::new(BodyState {
            bytes: AtomicU64::new(0),
            limit,
            idle,
            unread: Mutex::new((!empty).then_some(body)),
            taken: AtomicBool::new(false),
            empty,
            complete: AtomicBool::new(empty),
            completed: Notify::new(),
            fault: AtomicU8::new(FAULT_NONE),
            frames: AtomicU64::new(0),
            on_client: AtomicBool::new(false),
            trailers: std::sync::OnceLock::new(),
        })
    }

    /// Why a failed backend request is the client's doing (413, 408, 400), not the
    /// backend's (502), if it is.
    pub fn client_fault(&self) -> Option<ClientFault> {
        match self.fault.load(Ordering::Relaxed) {
            FAULT_TOO_LARGE => self.limit.map(ClientFault::TooLarge),
            FAULT_STALLED => Some(ClientFault::Stalled(self.idle)),
            FAULT_BROKEN => Some(ClientFault::Broken),
            _ => None,
        }
    }

    /// Whether an attempt has started reading the body (it cannot be sent again).
    pub fn taken(&self) -> bool {
        self.taken.load(Ordering::Acquire)
    }

    /// Whether the request can be sent again whole: it has no body, or no attempt has
    /// started reading it.
    pub fn replayable(&self) -> bool {
        self.empty || !self.taken()
    }

    /// Whether the whole body has been read from the client (and handed to the backend's
    /// connection), or there was none.
    pub fn read_whole(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Resolves once the whole body has been read from the client: when the backend's
    /// `response_header_timeout` starts, so a slow upload is not taken for a slow backend.
    pub async fn read_in_full(&self) {
        loop {
            let notified = self.completed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.complete.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Resolves when the backend is overdue by `patience` (its `response_header_timeout`):
    /// that long after the whole body was read (at once for a request without one), its
    /// response head late; or, while the body is still coming, that long without taking a
    /// frame of it when the wait was not on the client (a connect, a backend that stopped
    /// reading). A client that pauses is `request_body_timeout`'s, never the backend's.
    pub async fn backend_overdue(&self, patience: Duration) {
        loop {
            let seen = self.frames.load(Ordering::Relaxed);
            tokio::select! {
                () = self.read_in_full() => break,
                () = tokio::time::sleep(patience) => {
                    if self.frames.load(Ordering::Relaxed) == seen
                        && !self.on_client.load(Ordering::Relaxed)
                    {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(patience).await;
    }

    fn set_complete(&self) {
        self.complete.store(true, Ordering::Release);
        self.completed.notify_waiters();
    }

    fn set_fault(&self, fault: u8) {
        self.fault.store(fault, Ordering::Relaxed);
    }

    fn unread(&self) -> std::sync::MutexGuard<'_, Option<ClientBody>> {
        self.unread.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The body went over `max_request_body` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body over {0} bytes")]
struct TooLarge(u64);

/// The client sent no body bytes for `request_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes for {0:?}")]
struct Stalled(Duration);

/// One attempt's view of the client's body, as the backend request's body.
#[derive(Debug)]
pub struct RequestBody {
    /// The client's body once this attempt has taken it from the state.
    inner: Option<ClientBody>,
    /// This attempt is done with the body (it ended, or failed): nothing more is read.
    done: bool,
    /// Fires `request_body_timeout` after a wait for the client began; set again at the
    /// start of each wait (`BodyState::on_client`), so time the backend spent not reading
    /// never counts.
    idle: Option<Pin<Box<Sleep>>>,
    state: Arc<BodyState>,
}

impl RequestBody {
    /// The body for one attempt: it takes the client's body from `state` only when the
    /// backend connection first reads it.
    pub fn attempt(state: Arc<BodyState>) -> RequestBody {
        RequestBody {
            inner: None,
            done: false,
            idle: None,
            state,
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.inner = None;
        self.idle = None;
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.inner.is_none() {
            this.state.taken.store(true, Ordering::Release);
            let unread = this.state.unread().take();
            match unread {
                Some(body) => this.inner = Some(body),
                None => {
                    // No body, or another attempt took it (it cannot be sent twice).
                    this.finish();
                    return Poll::Ready(None);
                }
            }
        }
        let inner = this.inner.as_mut().expect("taken above");
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => {
                this.state.set_fault(FAULT_BROKEN);
                this.finish();
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                this.state.set_complete();
                this.finish();
                return Poll::Ready(None);
            }
            Poll::Pending => {
                let d = this.state.idle;
                if !this.state.on_client.swap(true, Ordering::Relaxed) {
                    let at = tokio::time::Instant::now() + d;
                    match this.idle.as_mut() {
                        Some(idle) => idle.as_mut().reset(at),
                        None => this.idle = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                let idle = this.idle.as_mut().expect("set when the wait began");
                ready!(idle.as_mut().poll(cx));
                this.state.set_fault(FAULT_STALLED);
                this.finish();
                return Poll::Ready(Some(Err(Stalled(d).into())));
            }
        };
        this.state.on_client.store(false, Ordering::Relaxed);
        this.state.frames.fetch_add(1, Ordering::Relaxed);
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            let total = this.state.bytes.fetch_add(len, Ordering::Relaxed) + len;
            if let Some(limit) = this.state.limit.filter(|&l| total > l) {
                this.state.set_fault(FAULT_TOO_LARGE);
                // Nothing more is read: hyper answers the client and closes its connection.
                this.finish();
                return Poll::Ready(Some(Err(TooLarge(limit).into())));
            }
        }
        if this.inner.as_ref().is_some_and(Body::is_end_stream) {
            this.state.set_complete();
        }
        let frame = match frame.into_trailers() {
            Ok(mut trailers) => {
                let allowed = this.state.trailers.get().map_or(&[][..], Vec::as_slice);
                super::headers::request_trailers(&mut trailers, allowed);
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.state.unread().as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Exact for a `Content-Length` body, so the backend gets the same framing.
        if self.done {
            return SizeHint::with_exact(0);
        }
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => self
                .state
                .unread()
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
        }
    }
}
