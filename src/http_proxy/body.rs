//! The request body on its way to the backend: streamed frame by frame (never collected),
//! trailers included, counted, and cut at the route's `max_request_body`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tower::BoxError;

/// What the exchange learns from the request body while the backend connection reads it.
#[derive(Debug, Default)]
pub struct BodyState {
    /// Body bytes read from the client so far.
    pub bytes: AtomicU64,
    /// The route's `max_request_body`.
    limit: Option<u64>,
    /// The body went over the limit: the backend request failed because of the client.
    too_large: AtomicBool,
}

impl BodyState {
    /// The limit the body went over, if it did: then a failed backend request is the
    /// client's 413, not the backend's 502.
    pub fn exceeded(&self) -> Option<u64> {
        self.limit
            .filter(|_| self.too_large.load(Ordering::Relaxed))
    }
}

/// The body went over `max_request_body` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body over {0} bytes")]
struct TooLarge(u64);

/// The client's body as the backend request's body.
#[derive(Debug)]
pub struct RequestBody {
    /// `None`: no body (a retried request, which never has one).
    inner: Option<Incoming>,
    state: Arc<BodyState>,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            state: Arc::new(BodyState {
                limit,
                ..BodyState::default()
            }),
        }
    }

    /// An empty body sharing `state` (each attempt of a retried request).
    pub fn empty(state: Arc<BodyState>) -> RequestBody {
        RequestBody { inner: None, state }
    }

    pub fn state(&self) -> &Arc<BodyState> {
        &self.state
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
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            let total = this.state.bytes.fetch_add(len, Ordering::Relaxed) + len;
            if let Some(limit) = this.state.limit.filter(|&l| total > l) {
                this.state.too_large.store(true, Ordering::Relaxed);
                // Nothing more is read: hyper answers the client and closes its connection.
                this.inner = None;
                return Poll::Ready(Some(Err(TooLarge(limit).into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // Exact for a `Content-Length` body, so the backend gets the same framing.
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
