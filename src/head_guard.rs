//! The request head's refusals: what hyper's HTTP/1.1 parser and the head timers refuse
//! before any request reaches the proxy, made as visible as the proxy's own refusals.
//!
//! hyper answers a head it cannot accept by itself (`400`, `414`, `431`: a status line,
//! `content-length: 0` and `date`, no body) and ends the connection, and it offers no hook
//! to say why. So every client connection's IO goes to hyper through a [`HeadGuard`], which
//! looks at the first bytes hyper writes: when they are that automatic answer, exactly, the
//! guard writes wsgate's instead (the same status, a one-line `text/plain` reason with the
//! configured limits, `Connection: close`), counts the refusal and logs it, then closes the
//! connection the lingering way. Anything else it passes through untouched, and after an
//! upgrade the relay takes the socket out of it (`upgraded.rs`): the guard costs nothing
//! per message.
//!
//! Why the first write of a response only: the first bytes hyper writes on a connection
//! begin a response head, so the match cannot hit a body; wsgate's own responses always
//! carry `content-type`, and a backend's proxied ones `x-request-id`, so it cannot hit one
//! of them either. On a kept-alive connection (plain HTTP routes, `wsgate demo`'s pages) the
//! next response begins with the first write after the last one was written whole (its
//! body dropped by hyper, `HeadWatch::response_done`, then flushed), which is looked at
//! again: a bad head on a later request gets the same answer as on a first. HTTP/2 starts
//! with a SETTINGS frame, which passes through.
//!
//! Refusals that write nothing (the head timers, the HTTP/2 preface on a connection that
//! agreed on HTTP/1.1, and anything else on one that agreed on HTTP/2) are reported by the connection's task (`accept.rs`) through the same
//! [`HeadWatch`], which counts each connection's refusal once.
//!
//! The guard also closes the lingering way a connection whose request body was left
//! unread: a request answered before its body was read (a 413 on its declared length, a
//! policy refusal, a body cut at `max_request_body`) reaches the proxy as a [`ClientBody`],
//! which tells the guard when it is dropped before its end. hyper then reads once more,
//! and closes the connection after the answer; with the client's bytes still coming, the
//! close would send a reset, which can destroy the answer before the client reads it, and
//! fails the client's upload before it has looked for an answer at all (nginx's
//! `lingering_close`, on by default, exists for the same reason).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::Limits;
use crate::outcome::Outcome;
use crate::proxy::ProxyState;

/// How long a lingering close reads (and discards) what the client still sends after the
/// answer and our FIN, in all: a client still sending its head or body would otherwise get a
/// reset, which fails its upload before it has looked for the answer, and may destroy the
/// answer in its receive buffer before it is read (RFC 9112 §9.6). nginx's `lingering_time`.
const LINGER_TIME: Duration = Duration::from_secs(30);
/// A lingering close ends sooner when the client sends nothing for this long (nginx's
/// `lingering_timeout`).
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request head was refused before the proxy saw a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    /// Over the head size or header count limit (431).
    TooLarge,
    /// A request target longer than hyper accepts (414).
    UriTooLong,
    /// Not valid HTTP/1.1 (400).
    Invalid,
    /// The HTTP/2 preface on a connection that agreed on HTTP/1.1 (closed, no answer).
    Http2Preface,
    /// Anything but the HTTP/2 preface on a connection that agreed on HTTP/2 by ALPN
    /// (closed, no answer: RFC 9113 §3.4).
    NoHttp2Preface,
    /// No complete head within the handshake timeout (closed, no answer).
    Timeout,
}

impl HeadRefusal {
    pub fn outcome(self) -> Outcome {
        match self {
            HeadRefusal::TooLarge => Outcome::RequestHeadTooLarge,
            HeadRefusal::UriTooLong => Outcome::UriTooLong,
            HeadRefusal::Invalid | HeadRefusal::Http2Preface | HeadRefusal::NoHttp2Preface => {
                Outcome::RequestHeadInvalid
            }
            HeadRefusal::Timeout => Outcome::RequestHeadTimeout,
        }
    }

    /// The status hyper answers with (`hyper::proto::h1::role::Server::on_error`), or `None`
    /// for a connection closed without an answer.
    fn status(self) -> Option<u16> {
        match self {
            HeadRefusal::TooLarge => Some(431),
            HeadRefusal::UriTooLong => Some(414),
            HeadRefusal::Invalid => Some(400),
            HeadRefusal::Http2Preface | HeadRefusal::NoHttp2Preface | HeadRefusal::Timeout => None,
        }
    }

    /// What a connection's error from hyper says was refused; `None` for an error that is no
    /// refusal (the client left, a socket error, an HTTP/2 connection error).
    ///
    /// `idle`: a header timeout on a kept-alive connection with nothing of a next request
    /// ([`HeadWatch::idle_between_requests`]) is an idle connection closing, not a refusal.
    /// hyper tells a long URI from a large head only by its status, so the guard counts those
    /// from the answer it replaced.
    pub fn of_error(e: &hyper::Error, idle: bool) -> Option<HeadRefusal> {
        if e.is_timeout() {
            (!idle).then_some(HeadRefusal::Timeout)
        } else if e.is_parse_version_h2() {
            Some(HeadRefusal::Http2Preface)
        } else if e.is_parse_too_large() {
            Some(HeadRefusal::TooLarge)
        } else if e.is_parse() {
            Some(HeadRefusal::Invalid)
        } else {
            None
        }
    }
}

/// A listener's reasons, with its limits: the body of each answer and the log's `reason`.
#[derive(Debug)]
pub struct HeadReasons {
    too_large: String,
    timeout: String,
}

impl HeadReasons {
    pub fn new(limits: &Limits, handshake_timeout: Duration) -> HeadReasons {
        HeadReasons {
            too_large: format!(
                "request header fields too large: the request head is over {} bytes or {} \
                 header fields",
                limits.max_header_bytes, limits.max_headers
            ),
            timeout: format!(
                "request head timeout: no complete request head within {handshake_timeout:?}"
            ),
        }
    }

    pub fn reason(&self, refusal: HeadRefusal) -> &str {
        match refusal {
            HeadRefusal::TooLarge => &self.too_large,
            HeadRefusal::UriTooLong => {
                "URI too long: the request target is longer than the proxy accepts"
            }
            HeadRefusal::Invalid => {
                "bad request: the request head is not valid HTTP/1.1 (a malformed request line \
                 or header field)"
            }
            HeadRefusal::Http2Preface => {
                "bad request: the HTTP/2 preface on a connection that agreed on HTTP/1.1"
            }
            HeadRefusal::NoHttp2Preface => {
                "bad request: not the HTTP/2 preface on a connection that agreed on HTTP/2 (ALPN h2)"
            }
            HeadRefusal::Timeout => &self.timeout,
        }
    }
}

/// What a connection's task, its service and its [`HeadGuard`] share: whether a request
/// arrived, whether the connection's refusal has been counted and logged (once), and
/// whether the last request's body was left unread (the close then lingers).
pub struct HeadWatch {
    state: Arc<ProxyState>,
    reasons: Arc<HeadReasons>,
    client: SocketAddr,
    seen_request: AtomicBool,
    refused: AtomicBool,
    body_unread: AtomicBool,
    /// An HTTP/1.1 response's body is done with (`accept.rs`'s `Tracked`, dropped): once
    /// what hyper wrote of it is flushed, the next write begins a response again, which may
    /// be hyper's automatic answer to the kept-alive connection's next head.
    response_done: AtomicBool,
    /// Bytes of a next request head have come since the last response was written whole:
    /// a header timeout then is a head that never completed, not an idle keep-alive.
    next_head: AtomicBool,
    /// When a write that cannot go on fails (milliseconds of `crate::relay::millis`, plus
    /// one; 0: never): the end of a plain request's `request_timeout` while its response is
    /// being sent (`arm_write_deadline`). A client that stops reading leaves hyper waiting
    /// to write and the response body unpolled, so the deadline the body keeps was never
    /// looked at: the exchange held its client and backend connections for as long as the
    /// client liked.
    write_deadline: std::sync::atomic::AtomicU64,
    /// The shutdown closes the connection before its first request: its write side is shut
    /// (over TLS, with our `close_notify`: RFC 8446 §6.1) and hyper's reads return end of
    /// file, so hyper ends the connection as a leaving client's.
    ended: AtomicBool,
}

impl std::fmt::Debug for HeadWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadWatch")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl HeadWatch {
    pub fn new(state: Arc<ProxyState>, reasons: Arc<HeadReasons>, client: SocketAddr) -> Self {
        HeadWatch {
            state,
            reasons,
            client,
            seen_request: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            body_unread: AtomicBool::new(false),
            response_done: AtomicBool::new(false),
            next_head: AtomicBool::new(false),
            write_deadline: std::sync::atomic::AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }

    /// From now until the connection's next request, a write the client does not take by
    /// `at` fails the connection (HTTP/1.1: one exchange at a time, and the next request is
    /// read only once the last response has been written).
    pub fn arm_write_deadline(&self, at: tokio::time::Instant) {
        // Rounded up to the next millisecond (`millis` rounds down), plus one for "none":
        // the connection's deadline is never before the response body's own.
        let ms = crate::relay::millis(at.into_std()).saturating_add(2);
        self.write_deadline.store(ms, Ordering::Relaxed);
    }

    fn write_deadline(&self) -> Option<tokio::time::Instant> {
        match self.write_deadline.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(tokio::time::Instant::from_std(
                crate::relay::instant_from_millis(ms - 1),
            )),
        }
    }

    /// hyper has parsed a request head and called the service. (A body an earlier request
    /// left unread was read to its end after all, or this head could not have come.)
    pub fn request_seen(&self) {
        self.seen_request.store(true, Ordering::Relaxed);
        self.body_unread.store(false, Ordering::Relaxed);
        self.next_head.store(false, Ordering::Relaxed);
        // The last response has been written: its deadline is done with.
        self.write_deadline.store(0, Ordering::Relaxed);
    }

    pub fn seen_request(&self) -> bool {
        self.seen_request.load(Ordering::Relaxed)
    }

    /// hyper is done with an HTTP/1.1 response's body (it drops it before it writes the
    /// body's end and flushes): see [`HeadGuard`]'s `poll_flush`.
    pub fn response_done(&self) {
        self.response_done.store(true, Ordering::Relaxed);
        self.next_head.store(false, Ordering::Relaxed);
    }

    /// Whether the connection is between requests with nothing of a next one: a header
    /// timeout now is an idle keep-alive closing, not a refused head.
    pub fn idle_between_requests(&self) -> bool {
        self.seen_request() && !self.next_head.load(Ordering::Relaxed)
    }

    /// Counts the connection's refusal (unrouted: there is no request to route) and logs it
    /// within the refusal log's budget, unless this connection's refusal was already
    /// reported.
    pub fn refuse(&self, refusal: HeadRefusal, error: Option<&hyper::Error>) {
        if self.refused.swap(true, Ordering::Relaxed) {
            return;
        }
        // Nothing here comes from the client: the reason is ours and hyper's error text is
        // one of its fixed descriptions.
        report_unrouted(
            &self.state,
            self.client,
            refusal.outcome(),
            refusal.status(),
            self.reasons.reason(refusal),
            error.map(|e| e as &dyn std::fmt::Display),
            "request head refused",
        );
    }

    /// The gateway is shutting down and closes this connection before it sent a complete
    /// request: counted as `draining` (unrouted, no answer), unless a refusal of its head was
    /// already reported. Not logged: a shutdown may close thousands of connections at once,
    /// and it logs its own summary.
    pub fn closed_by_shutdown(&self) {
        if !self.refused.swap(true, Ordering::Relaxed) {
            self.state.unrouted_refusals.add(Outcome::Draining);
        }
    }

    /// From now on hyper reads end of file: see `ended`. The connection's task polls hyper
    /// again to let it see it.
    pub fn end_reads(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }
}

/// Counts a refusal that came before any request was routed (`unrouted_refusals`, by
/// outcome and status) and logs it as an access record within the refusal log's budget.
/// `message` says at which point the connection was refused.
pub(crate) fn report_unrouted(
    state: &ProxyState,
    client: SocketAddr,
    outcome: Outcome,
    status: Option<u16>,
    reason: &str,
    error: Option<&dyn std::fmt::Display>,
    message: &'static str,
) {
    state
        .unrouted_refusals
        .add_status(outcome, status.unwrap_or(0));
    let Some(line) = state.refusal_log.admit(outcome) else {
        return;
    };
    tracing::info!(
        target: "wsgate::access",
        event = "refused",
        route = "-",
        client = %client,
        status,
        outcome = outcome.as_str(),
        fault = "client",
        reason,
        error = error.map(tracing::field::display),
        suppressed = line.suppressed(),
        "{message}"
    );
}

/// A request's body as the proxy gets it from hyper: the same frames, and what happens when
/// it is dropped before its end (the request was answered without it):
/// - on HTTP/1.1 the connection's [`HeadGuard`] closes it the lingering way (see the
///   module's doc);
/// - on HTTP/2 the rest of the stream is read and dropped after the answer, within the same
///   limits, so that the stream ends as the client sends its end. Dropped, the stream would
///   be reset after the answer (`RST_STREAM(NO_ERROR)`, as RFC 9113 §8.1 allows), which
///   stops the client's upload, and which curl before 8 takes for an error and drops the
///   answer with (`curl: (92)`, Debian 12's curl 7.88).
pub struct ClientBody {
    /// `None` only once a drop has handed it to the HTTP/2 drain.
    inner: Option<Incoming>,
    unread: Unread,
}

/// What a [`ClientBody`] dropped before its end does; `None` once it has ended (or failed),
/// and for a body that never had any.
pub enum Unread {
    None,
    /// Tells the connection's watch (HTTP/1.1).
    Http1(Arc<HeadWatch>),
    /// Reads the rest of the stream in a task of its own (HTTP/2).
    Http2,
}

impl Unread {
    /// What `body` would do, left unread: an HTTP/1.1 body not already over tells `watch` (a
    /// handshake has none, so no reference is taken); an HTTP/2 one is drained (an extended
    /// CONNECT's is empty: its stream is the WebSocket's).
    pub fn of(body: &Incoming, http1: bool, watch: &Arc<HeadWatch>) -> Unread {
        match (body.is_end_stream(), http1) {
            (true, _) => Unread::None,
            (false, true) => Unread::Http1(watch.clone()),
            (false, false) => Unread::Http2,
        }
    }
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unread = match self.unread {
            Unread::None => "none",
            Unread::Http1(_) => "http1",
            Unread::Http2 => "http2",
        };
        f.debug_struct("ClientBody")
            .field("inner", &self.inner)
            .field("unread", &unread)
            .finish()
    }
}

impl ClientBody {
    pub fn new(inner: Incoming, unread: Unread) -> ClientBody {
        ClientBody {
            inner: Some(inner),
            unread,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        // The end (a chunked body's is `None`; a sized one's the frame that completes it),
        // or an error: the client is done sending, or gone.
        if !matches!(frame, Some(Ok(_))) || inner.is_end_stream() {
            this.unread = Unread::None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.unread, Unread::None) {
            Unread::None => {}
            Unread::Http1(watch) => watch.body_unread.store(true, Ordering::Relaxed),
            Unread::Http2 => {
                if let (Some(body), Ok(rt)) =
                    (self.inner.take(), tokio::runtime::Handle::try_current())
                {
                    rt.spawn(drain(body));
                }
            }
        }
    }
}

/// Reads an HTTP/2 request body to its end and drops it, within the lingering close's
/// limits: [`LINGER_TIMEOUT`] between two frames, [`LINGER_TIME`] in all. (hyper gives the
/// stream's flow-control window back as each frame is read.)
async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt;
    let end = Instant::now() + LINGER_TIME;
    loop {
        match tokio::time::timeout_at(next_read_by(end), body.frame()).await {
            Ok(Some(Ok(_))) => {}
            _ => return,
        }
    }
}

/// When a lingering read (a connection's, or an HTTP/2 stream's) must have brought
/// something: [`LINGER_TIMEOUT`] from now, at the latest `end` ([`LINGER_TIME`] after it
/// began).
fn next_read_by(end: Instant) -> Instant {
    (Instant::now() + LINGER_TIMEOUT).min(end)
}

/// A client connection as the listener gives it to hyper, and as `upgraded.rs` takes it
/// back after an upgrade: one name, so the two cannot drift apart.
pub type ClientIo<S> = hyper_util::rt::TokioIo<HeadGuard<S>>;

/// A client connection's IO as hyper gets it: passes everything through, except hyper's
/// automatic answer to a refused request head, which it replaces with wsgate's (see the
/// module's doc).
pub struct HeadGuard<S> {
    io: S,
    watch: Arc<HeadWatch>,
    phase: Phase,
    /// Bytes read before hyper took over (the protocol sniff, `accept.rs`): hyper's first
    /// reads get them. Boxed: `None` on most connections, and hyper takes them at once.
    pre: Option<Box<Bytes>>,
    /// The timer of a write that waits while the watch has a write deadline.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

enum Phase {
    /// Nothing written yet: the first write is looked at.
    First,
    /// The first response was not hyper's automatic answer: everything passes.
    Through,
    /// wsgate's answer in place of hyper's, then the lingering close (boxed: rare).
    Answer(Box<Answer>),
    /// hyper closes a connection whose request body was left unread: the lingering close.
    Linger(Box<Linger>),
}

struct Answer {
    bytes: Vec<u8>,
    written: usize,
    linger: Option<Linger>,
}

/// The lingering close: our FIN, then the client's bytes read and dropped until it closes,
/// pauses for [`LINGER_TIMEOUT`], or [`LINGER_TIME`] has passed since the first poll.
struct Linger {
    /// The next read's deadline: [`LINGER_TIMEOUT`] from the last one, at most `end`.
    timer: Pin<Box<Sleep>>,
    end: Instant,
    shut: bool,
}

impl<S> HeadGuard<S> {
    pub fn new(io: S, watch: Arc<HeadWatch>) -> HeadGuard<S> {
        HeadGuard {
            io,
            watch,
            phase: Phase::First,
            pre: None,
            stalled: None,
        }
    }

    /// A write that came back `Pending`: still pending, or failed with `TimedOut` once the
    /// watch's write deadline has passed.
    fn waiting_write<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let Some(at) = self.watch.write_deadline() else {
            return Poll::Pending;
        };
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not take the response within the request timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Hands `pre` (bytes already read from `io`) to hyper before anything else is read.
    pub fn with_prefix(mut self, pre: bytes::Bytes) -> HeadGuard<S> {
        self.pre = (!pre.is_empty()).then(|| Box::new(pre));
        self
    }

    /// The connection itself, for the relay after an upgrade, and whatever of the prefix
    /// hyper has not read (nothing, in practice: its first read takes all of it).
    pub fn into_inner(self) -> (S, bytes::Bytes) {
        (self.io, self.pre.map(|b| *b).unwrap_or_default())
    }

    /// Looks at the first bytes hyper writes: its automatic answer is replaced (and the
    /// refusal reported); anything else lets every later write through.
    fn first_write(&mut self, first: &[u8]) -> bool {
        let Some((refusal, date)) = automatic_answer(first) else {
            self.phase = Phase::Through;
            return false;
        };
        let watch = &self.watch;
        watch.refuse(refusal, None);
        self.phase = Phase::Answer(Box::new(Answer {
            bytes: answer(refusal, watch.reasons.reason(refusal), date),
            written: 0,
            linger: None,
        }));
        true
    }
}

/// Recognises hyper's automatic answer to a refused head in one write: the status line of a
/// 400, 414 or 431, then `connection: close` (hyper adds it when it will close),
/// `content-length: 0` and `date`, nothing else. Returns the refusal and the date's value.
fn automatic_answer(buf: &[u8]) -> Option<(HeadRefusal, &[u8])> {
    const LINES: [(HeadRefusal, &[u8]); 3] = [
        (HeadRefusal::Invalid, b"HTTP/1.1 400 Bad Request\r\n"),
        (HeadRefusal::UriTooLong, b"HTTP/1.1 414 URI Too Long\r\n"),
        (
            HeadRefusal::TooLarge,
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        ),
    ];
    let (refusal, rest) = LINES
        .iter()
        .find_map(|(r, line)| buf.strip_prefix(*line).map(|rest| (*r, rest)))?;
    let rest = rest.strip_prefix(b"connection: close\r\n").unwrap_or(rest);
    let date = rest
        .strip_prefix(b"content-length: 0\r\ndate: ")?
        .strip_suffix(b"\r\n\r\n")?;
    // An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"): 29 printable bytes.
    let is_date = date.len() == 29 && date.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
    is_date.then_some((refusal, date))
}

/// wsgate's answer: hyper's status and date, the reason as a `text/plain` body.
fn answer(refusal: HeadRefusal, reason: &str, date: &[u8]) -> Vec<u8> {
    let status = match refusal {
        HeadRefusal::TooLarge => "431 Request Header Fields Too Large",
        HeadRefusal::UriTooLong => "414 URI Too Long",
        _ => "400 Bad Request",
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\ndate: ",
        reason.len() + 1
    );
    let mut out = Vec::with_capacity(head.len() + date.len() + reason.len() + 5);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
    out
}

impl Answer {
    /// Writes what is left of the answer.
    fn poll_write_out<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.written < self.bytes.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// Ends the connection of an HTTP/1.1 request that asked for an upgrade and was not given
/// one (a refused handshake: 400, 403, 502...), as any other answered connection ends: its
/// write side shut (over TLS, `close_notify` first) and the lingering read. hyper hands such
/// a connection to the request's upgrade whatever the answer's status, without shutting it
/// down; with the upgrade dropped, the socket was just closed: no `close_notify` (RFC 8446
/// §6.1), and a reset where the client had sent more (frames right behind its request),
/// which can destroy the refusal before the client reads it.
///
/// `cut` (the end of a shutdown's grace) ends it where it is.
pub async fn close_refused(
    on_upgrade: hyper::upgrade::OnUpgrade,
    cut: tokio_util::sync::CancellationToken,
) {
    let close = async {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut linger = Linger::new();
        std::future::poll_fn(|cx| linger.poll(&mut io, cx)).await;
    };
    tokio::select! {
        () = close => {}
        () = cut.cancelled() => {}
    }
}

impl Linger {
    fn new() -> Linger {
        let end = Instant::now() + LINGER_TIME;
        Linger {
            timer: Box::pin(tokio::time::sleep_until(next_read_by(end))),
            end,
            shut: false,
        }
    }

    /// Shuts the write side, then reads and drops what comes until the end or a timer.
    /// Errors end it: it is a courtesy. (A client that never stops sending does not hold the
    /// worker: each read spends tokio's cooperative budget, which yields when it runs out.)
    fn poll<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if !self.shut {
            if ready!(Pin::new(&mut *io).poll_shutdown(cx)).is_err() {
                return Poll::Ready(());
            }
            self.shut = true;
        }
        let mut sink = [0u8; 8192];
        loop {
            if self.timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut sink);
            match ready!(Pin::new(&mut *io).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => {
                    self.timer.as_mut().reset(next_read_by(self.end));
                }
                _ => return Poll::Ready(()),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.watch.ended.load(Ordering::Relaxed) {
            // Our end first (over TLS, the `close_notify`): hyper shuts down a connection
            // that ends before its head begins, but one that ends with half a head fails.
            let _ = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
            return Poll::Ready(Ok(()));
        }
        if let Some(pre) = this.pre.as_mut() {
            let n = pre.len().min(buf.remaining());
            buf.put_slice(&pre.split_to(n));
            if pre.is_empty() {
                this.pre = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        // After a kept-alive response, the start of a next head (a slowloris on a kept-alive
        // connection left no record: its timeout read as an idle connection's).
        if buf.filled().len() > before
            && matches!(this.phase, Phase::First)
            && this.watch.seen_request()
        {
            this.watch.next_head.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match this.phase {
            // After the shutdown has begun a write fails in the socket, as it would unguarded.
            Phase::Through | Phase::Linger(_) => match Pin::new(&mut this.io).poll_write(cx, buf) {
                Poll::Pending => this.waiting_write(cx),
                done => done,
            },
            Phase::First => {
                if buf.is_empty() {
                    Poll::Ready(Ok(0))
                } else if this.first_write(buf) {
                    Poll::Ready(Ok(buf.len()))
                } else {
                    Pin::new(&mut this.io).poll_write(cx, buf)
                }
            }
            // hyper writes nothing after its automatic answer (the connection is closing);
            // were it to, those bytes would follow a response whose length is already said.
            Phase::Answer(_) => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let total = || bufs.iter().map(|b| b.len()).sum::<usize>();
        match this.phase {
            Phase::Through | Phase::Linger(_) => {
                match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
                    Poll::Pending => this.waiting_write(cx),
                    done => done,
                }
            }
            Phase::First => {
                // hyper's automatic answer is one buffer; anything else is not it.
                let mut filled = bufs.iter().filter(|b| !b.is_empty());
                let answered = match (filled.next(), filled.next()) {
                    (None, _) => return Poll::Ready(Ok(0)),
                    (Some(only), None) => this.first_write(only),
                    _ => {
                        this.phase = Phase::Through;
                        false
                    }
                };
                if answered {
                    Poll::Ready(Ok(total()))
                } else {
                    Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
                }
            }
            Phase::Answer(_) => Poll::Ready(Ok(total())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Phase::Answer(answer) = &mut this.phase {
            ready!(answer.poll_write_out(&mut this.io, cx))?;
        }
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        // A kept-alive HTTP/1.1 connection's response is written whole (hyper flushes once
        // it has written a message's end): its next write begins a response again, which is
        // looked at as the first was. A bad head there got hyper's bare answer, without the
        // reason (found by black-box testing of plain HTTP proxying).
        if matches!(this.phase, Phase::Through)
            && this.watch.response_done.swap(false, Ordering::Relaxed)
        {
            this.phase = Phase::First;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match &mut this.phase {
            Phase::Answer(answer) => {
                ready!(answer.poll_write_out(&mut this.io, cx))?;
                ready!(Pin::new(&mut this.io).poll_flush(cx))?;
                let linger = answer.linger.get_or_insert_with(Linger::new);
                linger.poll(&mut this.io, cx).map(Ok)
            }
            Phase::Linger(linger) => linger.poll(&mut this.io, cx).map(Ok),
            Phase::First | Phase::Through => {
                if !this.watch.body_unread.load(Ordering::Relaxed) {
                    return Pin::new(&mut this.io).poll_shutdown(cx);
                }
                let mut linger = Box::new(Linger::new());
                let poll = linger.poll(&mut this.io, cx).map(Ok);
                this.phase = Phase::Linger(linger);
                poll
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DATE: &str = "Wed, 02 Dec 2026 11:20:54 GMT";

    fn watch() -> Arc<HeadWatch> {
        let config = crate::config::from_toml_str(
            "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[route]]\nname = \"r\"\npath = \"/\"\n\
             backends = [\"ws://127.0.0.1:1\"]\n",
        )
        .unwrap();
        let reasons = Arc::new(HeadReasons::new(&config.limits, Duration::from_secs(10)));
        let state = Arc::new(ProxyState::new(config, Default::default()));
        Arc::new(HeadWatch::new(
            state,
            reasons,
            "192.0.2.1:1234".parse().unwrap(),
        ))
    }

    fn counted(watch: &HeadWatch) -> Vec<((Outcome, u16), u64)> {
        watch
            .state
            .unrouted_refusals
            .by_status()
            .into_iter()
            .collect()
    }

    #[tokio::test]
    async fn hyper_s_answer_is_replaced_counted_and_followed_by_a_lingering_close() {
        let watch = watch();
        // A duplex pipe is not vectored: hyper would use `poll_write`.
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut guard = HeadGuard::new(server, watch.clone());
        let hyper_answer = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n"
        );
        guard.write_all(hyper_answer.as_bytes()).await.unwrap();
        assert_eq!(
            counted(&watch),
            vec![((Outcome::RequestHeadTooLarge, 431), 1)]
        );
        // The client still sends (the rest of its head) while the guard shuts down.
        let shutdown = tokio::spawn(async move { guard.shutdown().await });
        client.write_all(&[b'a'; 10_000]).await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let expected = answer(
            HeadRefusal::TooLarge,
            watch.reasons.reason(HeadRefusal::TooLarge),
            DATE.as_bytes(),
        );
        assert_eq!(got, expected);
        // The shutdown ends when the client closes.
        assert!(!shutdown.is_finished());
        drop(client);
        shutdown.await.unwrap().unwrap();
        // Reported once, whoever reports it next (the connection's task, on hyper's error).
        watch.refuse(HeadRefusal::TooLarge, None);
        assert_eq!(counted(&watch).len(), 1);
    }

    #[tokio::test]
    async fn a_request_body_left_unread_makes_the_close_linger() {
        let watch = watch();
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut guard = HeadGuard::new(server, watch.clone());
        let page = "HTTP/1.1 413 Payload Too Large\r\ncontent-type: text/plain\r\n\
                    content-length: 0\r\n\r\n";
        guard.write_all(page.as_bytes()).await.unwrap();
        // What `ClientBody` does when the proxy drops a body before its end.
        watch.body_unread.store(true, Ordering::Relaxed);
        let shutdown = tokio::spawn(async move { guard.shutdown().await });
        // The rest of the body still comes, and is read and dropped.
        client.write_all(&[b'x'; 100_000]).await.unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, page);
        assert!(!shutdown.is_finished());
        drop(client);
        shutdown.await.unwrap().unwrap();
        // A later request on the connection (the body was read after all) clears it.
        watch.request_seen();
        assert!(!watch.body_unread.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn anything_but_a_first_automatic_answer_passes_untouched() {
        let watch = watch();
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut guard = HeadGuard::new(server, watch.clone());
        let page = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 2\r\n\r\nhi";
        // After a first response of the proxy's own, even an answer of that shape is left
        // alone: it could be a body's bytes.
        let later =
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        guard.write_all(page.as_bytes()).await.unwrap();
        guard.write_all(later.as_bytes()).await.unwrap();
        guard.shutdown().await.unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, format!("{page}{later}"));
        assert!(counted(&watch).is_empty());
        // The socket comes out as it went in.
        let _: (tokio::io::DuplexStream, _) = guard.into_inner();
    }

    #[test]
    fn recognises_hyper_s_automatic_answers() {
        for (line, refusal) in [
            ("400 Bad Request", HeadRefusal::Invalid),
            ("414 URI Too Long", HeadRefusal::UriTooLong),
            ("431 Request Header Fields Too Large", HeadRefusal::TooLarge),
        ] {
            for close in ["connection: close\r\n", ""] {
                let head =
                    format!("HTTP/1.1 {line}\r\n{close}content-length: 0\r\ndate: {DATE}\r\n\r\n");
                assert_eq!(
                    automatic_answer(head.as_bytes()),
                    Some((refusal, DATE.as_bytes())),
                    "{head:?}"
                );
            }
        }
    }

    #[test]
    fn anything_else_is_not_hyper_s_answer() {
        let ok = format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n");
        assert!(automatic_answer(ok.as_bytes()).is_some());
        for other in [
            // wsgate's own refusals carry a content-type and a body.
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
                 content-length: 0\r\ndate: {DATE}\r\n\r\n"
            ),
            // Another status, a body, bytes after the head, a cut head, a bad date.
            format!("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\ndate: {DATE}\r\n\r\n"),
            format!("{ok}abc"),
            ok[..ok.len() - 2].to_string(),
            ok.replace(DATE, "Wed, 02 Dec 2026 11:20:54 GM"),
            ok.replace(DATE, "Wed, 02 Dec 2026 11:20:54\r\nGM"),
            "HTTP/1.1 101 Switching Protocols\r\n\r\n".to_string(),
            // HTTP/2's first frame (SETTINGS).
            "\0\0\x06\x04\0\0\0\0\0\0\x03\0\0\0\x64".to_string(),
            String::new(),
        ] {
            assert_eq!(automatic_answer(other.as_bytes()), None, "{other:?}");
        }
    }

    #[test]
    fn the_answer_says_why_and_closes() {
        let reasons = HeadReasons::new(&Limits::default(), Duration::from_secs(10));
        let reason = reasons.reason(HeadRefusal::TooLarge);
        assert_eq!(
            reason,
            "request header fields too large: the request head is over 32768 bytes or 100 \
             header fields"
        );
        let bytes = answer(HeadRefusal::TooLarge, reason, DATE.as_bytes());
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 431 Request Header Fields Too Large\r\n\
                 content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
                 connection: close\r\ndate: {DATE}",
                body.len()
            )
        );
        assert_eq!(body, format!("{reason}\n"));
        assert_eq!(
            reasons.reason(HeadRefusal::Timeout),
            "request head timeout: no complete request head within 10s"
        );
    }
}
