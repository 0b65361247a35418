//! `GET /api/events`: the status page's live feed, as server-sent events. A summary at once,
//! then one a second, until the client goes, the gateway stops, or a successor process takes
//! the admin listener over (the page reconnects to it).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{Admin, Body};

/// How often the page is brought up to date.
const EVERY: Duration = Duration::from_secs(1);

/// The event stream's response.
pub fn stream(admin: &Arc<Admin>) -> Response<Body> {
    let mut interval = tokio::time::interval(EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let body = Events {
        admin: admin.clone(),
        interval,
        stopped: Box::pin(admin.handed_over.clone().cancelled_owned()),
    };
    let mut resp = Response::new(body.boxed());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

struct Events {
    admin: Arc<Admin>,
    interval: tokio::time::Interval,
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        ready!(self.interval.poll_tick(cx));
        let summary = super::api::summary(&self.admin);
        let event = format!("event: summary\ndata: {summary}\n\n");
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}
