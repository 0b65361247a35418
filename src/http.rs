//! The HTTP front end: hyper's HTTP/1.1 and HTTP/2 servers, configured for a WebSocket edge.
//!
//! A connection is served by the one protocol the listener has already chosen for it: by
//! ALPN on TLS, by the first bytes on a plain listener with HTTP/2 on (`accept.rs`), else
//! HTTP/1.1. The listeners used hyper-util's `auto` builder before, told to serve one
//! protocol only, but with upgrades it reads the connection's first 24 bytes and chooses
//! again whatever it was told:
//! - ALPN did not decide: a client that agreed on `http/1.1` and sent the HTTP/2 preface
//!   was served HTTP/2, one that agreed on `h2` and sent HTTP/1.1 got HTTP/1.1;
//! - `http2 = false` did not turn off HTTP/2 on a plain listener (h2c prior knowledge);
//! - it replayed the 24 bytes through a `Rewind` wrapper, so hyper's first read of every
//!   connection got those bytes alone, its parse came up short, and it grew its head buffer
//!   past 8 KiB and copied it to read the rest.
//!
//! hyper's own builders serve exactly the protocol chosen (`tests/it/h2.rs` has the three
//! cases), with a layer of state less around every connection.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::TokioTimer;
use tokio::time::{Instant, Sleep};

use crate::config::{Http2Config, Limits, ListenerConfig};

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/1.1: TLS clients that negotiated `http/1.1` (or no ALPN), listeners with
    /// `http2 = false`, and plain connections that did not open with the HTTP/2 preface.
    Http1,
    /// HTTP/2: TLS clients that negotiated `h2` (ALPN decides, not the preface: a client
    /// that agreed on one protocol and speaks the other is wrong, not served), and plain
    /// connections that opened with the preface (h2c prior knowledge, as a TLS-terminating
    /// load balancer in front may speak).
    Http2,
}

/// A listener's connection builder for one protocol.
#[derive(Clone, Debug)]
pub enum Builder {
    Http1(http1::Builder),
    Http2(http2::Builder<StreamExecutor>),
}

/// Builds the connection builder for one listener and protocol.
///
/// - A timer is set: without one hyper silently skips the header read timeout and the
///   HTTP/2 keep-alive.
/// - `max_buf_size` bounds the request head (hyper answers 431 past it), `max_headers` the
///   header count (431 as well); HTTP/2's `max_header_list_size` follows the same limit.
/// - HTTP/2 advertises `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441), so browsers open
///   WebSockets as extended CONNECT streams on it.
/// - HTTP/1.1 connections are served with upgrades ([`Builder::serve`]).
/// - HTTP/2 streams run as tasks of their own that a response can give a deadline
///   ([`StreamExecutor`]).
pub fn builder(
    listener: &ListenerConfig,
    limits: &Limits,
    h2: &Http2Config,
    protocol: Protocols,
) -> Builder {
    match protocol {
        Protocols::Http1 => {
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(listener.handshake_timeout)
                .max_buf_size(limits.max_header_bytes)
                .max_headers(limits.max_headers)
                // Keep-alive for plain requests (demo page, refusals are `Connection: close`).
                .keep_alive(true);
            Builder::Http1(b)
        }
        Protocols::Http2 => {
            let mut b = http2::Builder::new(StreamExecutor);
            b.timer(TokioTimer::new())
                .enable_connect_protocol()
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(h2.max_concurrent_streams)
                .initial_stream_window_size(h2.stream_window)
                .initial_connection_window_size(h2.connection_window())
                .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
                .max_local_error_reset_streams(h2.max_local_error_reset_streams)
                .keep_alive_interval(h2.keep_alive_interval)
                .keep_alive_timeout(h2.keep_alive_timeout);
            Builder::Http2(b)
        }
    }
}

impl Builder {
    /// Serves one connection with `service`: HTTP/1.1 with upgrades (a WebSocket's
    /// `Upgraded` is the connection itself), or HTTP/2 (extended CONNECT streams).
    pub fn serve<I, S, B>(&self, io: I, service: S) -> Connection<I, S>
    where
        I: Read + Write + Unpin + Send + 'static,
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<Box<dyn StdError + Send + Sync>>,
        B: Body + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
        StreamExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
    {
        match self {
            Builder::Http1(b) => Connection::Http1(b.serve_connection(io, service).with_upgrades()),
            Builder::Http2(b) => Connection::Http2(Box::new(b.serve_connection(io, service))),
        }
    }
}

/// One connection being served ([`Builder::serve`]): a future that ends with the connection
/// (for HTTP/1.1, also once it has been upgraded and handed over).
///
/// HTTP/2's state is boxed: it is more than twice HTTP/1.1's, and every connection's task
/// would carry the larger of the two, though HTTP/1.1 connections, one per WebSocket, are
/// most of them.
#[allow(
    clippy::large_enum_variant,
    reason = "HTTP/1.1 is the common case: boxing it would cost an allocation per connection"
)]
pub enum Connection<I, S>
where
    S: HttpService<Incoming>,
{
    Http1(http1::UpgradeableConnection<I, S>),
    Http2(Box<http2::Connection<I, S, StreamExecutor>>),
}

impl<I, S, B> Connection<I, S>
where
    I: Read + Write + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    StreamExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    /// Finishes the request in flight, then closes (HTTP/2: GOAWAY, then the open streams
    /// run to their end). Keep polling the connection until it is done.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.get_mut() {
            Connection::Http1(c) => Pin::new(c).graceful_shutdown(),
            Connection::Http2(c) => Pin::new(&mut **c).graceful_shutdown(),
        }
    }
}

impl<I, S, B> Future for Connection<I, S>
where
    I: Read + Write + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    StreamExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Connection::Http1(c) => Pin::new(c).poll(cx),
            Connection::Http2(c) => Pin::new(&mut **c).poll(cx),
        }
    }
}

tokio::task_local! {
    /// The deadline of the HTTP/2 stream whose task is running ([`StreamExecutor`]).
    static STREAM_DEADLINE: Arc<OnceLock<Instant>>;
}

/// Ends the HTTP/2 stream being served by the current task at `at`, whatever it is waiting
/// for; a no-op outside one (an HTTP/1.1 connection has its own write deadline,
/// `HeadWatch::arm_write_deadline`). The first deadline set holds.
///
/// A response body's own deadline holds only while hyper polls it, and hyper polls an
/// HTTP/2 body only when the stream's flow-control window has room: a client that stops
/// reading (no `WINDOW_UPDATE`) leaves the body unpolled, the backend's connection held,
/// for as long as it likes.
pub fn end_stream_at(at: Instant) {
    let _ = STREAM_DEADLINE.try_with(|d| d.set(at));
}

/// hyper's executor for HTTP/2 streams: spawns each stream's task (its service future, then
/// the piping of its response body) on tokio, and ends the task at the deadline that the
/// response set ([`end_stream_at`]). Ending it drops hyper's stream handles, which resets the
/// stream (`RST_STREAM` with `CANCEL`) and drops the response body, backend connection and
/// all; the body's record then says `request_timeout`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let deadline = Arc::new(OnceLock::new());
        let ends = Deadline {
            at: deadline.clone(),
            sleep: None,
        };
        tokio::spawn(async move {
            // Biased: the stream first, so a deadline it has just set is armed in the same
            // turn (nothing else would wake the task for it).
            tokio::select! {
                biased;
                () = STREAM_DEADLINE.scope(deadline, stream) => {}
                () = ends => {}
            }
        });
    }
}

/// Ready once the deadline a stream set has passed; pending while none is set.
struct Deadline {
    at: Arc<OnceLock<Instant>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.sleep.is_none() {
            match this.at.get() {
                Some(at) => this.sleep = Some(Box::pin(tokio::time::sleep_until(*at))),
                None => return Poll::Pending,
            }
        }
        this.sleep
            .as_mut()
            .map_or(Poll::Pending, |s| s.as_mut().poll(cx))
    }
}
