//! The relay: frames both ways between the client and the backend after the 101.
//!
//! Each direction runs a [`Scanner`] over the bytes as they pass: payloads are forwarded
//! unmodified (client frames stay masked, compressed frames stay compressed), while the frame
//! heads tell the relay what every mainstream proxy cannot know: where frames end, which close
//! code each side sent, how large a message is, and when a peer answers the proxy's ping.
//!
//! The relay owns how a session ends:
//! - **Peers close**: close frames are forwarded both ways and the TCP close follows the
//!   closing handshake (RFC 6455 §7.1.1). A close frame from either side starts
//!   [`CLOSE_TIMEOUT`] for the rest of the handshake; a close frame still unanswered then is
//!   answered by the proxy (`answer_unanswered`). Nothing a side sends after its close
//!   frame is passed on (RFC 6455 §5.5.1): it is read and dropped.
//! - **The proxy closes** (a framing violation, a message over the limit, a dead peer, an idle
//!   or lifetime timer, an expired token, a drain): each side still there gets a close frame
//!   written at a frame boundary, with the code that tells it why (see [`Reason`]); from then on nothing is
//!   forwarded, the peers' replies are read and dropped, and after the replies (or
//!   [`CLOSE_TIMEOUT`]) each socket is shut down.
//! - **Every close frame reaches a peer that reads**: a side that is no longer forwarded is
//!   still read, and what it sends dropped, until its EOF (at most [`DRAIN_LIMIT`] bytes,
//!   within [`CLOSE_TIMEOUT`]): a socket closed with unread input is reset by the kernel, and
//!   a peer still writing gets an error instead of its close frame (`drain.rs`).
//!
//! Memory: a read goes into a buffer on the poll's stack and is written on at once. Only bytes
//! the other side cannot take yet are copied to the heap, and that copy is freed when written.
//! An idle session holds no buffer.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

mod batch;
mod control;
mod drain;
mod ending;
mod fair;
mod idle;
mod inflated;

use batch::Batch;
use control::At;
pub use control::{CloseRequest, Control, Counters, Env, Link, instant_from_millis, millis};
pub use drain::DRAIN_LIMIT;
pub use ending::{CloseInfo, DirStats, Reason, RelayOutcome};
pub use idle::Step;

use crate::config::SessionConfig;
use crate::frame::{self, Event, Scanner, Sender, Violation, opcode};
use crate::outcome::CloseSide;

/// Bytes read in one go. 64 KiB moves large messages in fewer syscalls (measured 25–35% less
/// CPU than 8 KiB for 16 KiB–1 MiB messages); it lives on the stack only during a poll.
const READ_CHUNK: usize = 64 * 1024;

/// Once a closing handshake has begun (a close frame from either side, or one from the
/// proxy), the rest of it must happen within this time; then the sockets are closed. Long
/// enough for a busy backend to answer, short enough that a dead peer does not hold a
/// session (and, during a drain, the process) for long.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the side that broke the protocol waits for its close frame while the other
/// side's answers to what came before the violation still reach it (see `take_over`): the
/// other side's close reply ends the wait sooner, and a side that does not answer cannot
/// keep the offender from learning why it was closed.
const OFFENDER_HOLD: Duration = Duration::from_secs(1);

/// A proxy-written ping's payload: a fixed tag and a counter, so the pong can be recognised
/// and consumed rather than forwarded to the other side.
fn ping_token(seq: u32) -> [u8; 12] {
    let mut t = *b"wsgate\0\0\0\0\0\0";
    t[8..].copy_from_slice(&seq.to_be_bytes());
    t
}

/// The counter of a proxy-written ping whose payload this is (see [`ping_token`]).
fn our_ping(payload: &[u8]) -> Option<u32> {
    let token: &[u8; 12] = payload.try_into().ok()?;
    (token[..8] == ping_token(0)[..8])
        .then(|| u32::from_be_bytes([token[8], token[9], token[10], token[11]]))
}

/// A relay leg: a socket, and how it closes.
pub trait Leg: AsyncRead + AsyncWrite + Unpin {
    /// Writes `buf` as the last bytes this side gets (a close frame that completes its
    /// closing handshake), as `poll_write` does. TLS sends its `close_notify` in the same
    /// write (`tls_io`).
    fn poll_write_last(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, buf)
    }

    /// Whether the peer still takes what was written to it: bytes wait in the socket's send
    /// queue and its TCP has acknowledged some within `within` (a peer reading slowly, not
    /// a dead one). Asked only when a pong is overdue. `false` where it cannot be told.
    fn still_taking(&self, _within: Duration) -> bool {
        false
    }

    /// Ends the writing to a side whose peer has nothing more to say (it has closed, or sent
    /// its close frame and had one, or its ping timeout found it dead), short of a shutdown:
    /// Ready(Ok(true)) once dropping the leg says all a shutdown would, so that it is neither
    /// shut down nor read to its end.
    /// Plain TCP at once (its close sends the same FIN); TLS once its `close_notify` is out.
    /// Ready(Ok(false)): it needs `poll_shutdown` (anything unknown).
    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        Poll::Ready(Ok(false))
    }

    /// Sends the FIN for a leg [`Leg::poll_finish`] finished without one, while the relay
    /// still runs for the other leg: a plain TCP (or TLS, its `close_notify` already out)
    /// socket's write side is shut now rather than when the relay ends. Nothing by default.
    fn send_fin(&mut self) {}

    /// Whether a leg already shut down (`poll_shutdown`: the proxy's close frame and its FIN
    /// went out before the peer answered, the other side having been done first) may be let
    /// go once its peer's close frame has come, without reading it to its end. Every real
    /// leg may (`UpgradedIo`): its closing handshake is over, as when the close frames came
    /// the other way round and `poll_finish` lets it go. Its answer says it has read the
    /// proxy's close frame, and nothing follows a close frame, so there is nothing left to
    /// read for. A client that keeps its socket open after it has our FIN would otherwise
    /// hold the session (and a drain) to the handshake's deadline and have it recorded cut.
    /// An HTTP/2 stream's client need not even end its half (see `UpgradedIo::poll_finish`).
    /// No by default (the in-memory pipes of the relay's tests).
    fn done_once_answered(&self) -> bool {
        false
    }

    /// Whether this leg can be set aside now while its session hibernates (see
    /// [`Step::Idle`]): a plain TCP socket can, by its descriptor alone; a TLS stream when
    /// it holds nothing in flight.
    fn can_hibernate(&self) -> bool {
        false
    }
}

impl Leg for tokio::io::DuplexStream {}

/// Bytes for a side that it could not take yet (only while it is slow to read).
#[derive(Default)]
struct OutBuf {
    buf: Vec<u8>,
    pos: usize,
}

/// One peer: its socket, the frames it sends, and what is waiting to be written to it.
struct Side<IO> {
    io: IO,
    /// Bytes read past the handshake by hyper, processed before the socket is read. (The
    /// rarely used parts of a side are boxed: an idle session should be small.)
    pre: Option<Box<Bytes>>,
    who: CloseSide,
    /// Scans the frames this side sends.
    scanner: Scanner,
    /// Bytes for this side that it could not take yet.
    out: Option<Box<OutBuf>>,
    needs_flush: bool,
    /// A frame of the proxy's own for this side, waiting for a frame boundary.
    #[allow(
        clippy::box_collection,
        reason = "a thin pointer: 8 bytes in every idle session, where a Box<[u8]> is 16"
    )]
    inject: Option<Box<Vec<u8>>>,
    read_eof: bool,
    /// A read of this side came back `Pending` in this turn of the relay: its waker is
    /// registered, so reading it again before the next turn would only register it again.
    read_blocked: bool,
    write_shut: bool,
    /// The close frame this side sent.
    close_from: Option<Box<CloseInfo>>,
    /// A close frame (forwarded or the proxy's) has been queued for this side. Once the proxy
    /// has taken over, false only for a side whose close frame was dropped (see `step`).
    close_to: bool,
    /// The proxy took over while a data frame from this side was half forwarded: the rest of
    /// that frame still passes, so the other side's stream stays well formed.
    finish_frame: bool,
    /// What this side sends is forwarded. Off once the proxy has taken over, except for the
    /// side that did nothing wrong when the other broke the protocol: its frames (answers to
    /// what came before the violation) still pass until its close reply.
    passing: bool,
    /// The proxy's close frame for this side is held back until the other side has answered
    /// the proxy's close (see `passing`); it is made from `State::reason` when released.
    deferred_close: bool,
    /// Finished by `Leg::poll_finish` (no shutdown): its FIN goes with the socket's close
    /// when the relay ends, or sooner if the other side is not done yet (`Leg::send_fin`).
    fin_owed: bool,
    /// The proxy's last ping (number `pings_sent`, see `ping_token`) is unanswered: its pong
    /// is consumed whenever it comes.
    ping_pending: bool,
    /// The proxy's ping must be answered by `heard`: set when a ping is due (the deadline
    /// counted from when it is written: it may wait for a frame boundary), dropped as soon as
    /// the side sends anything, which proves it alive just as well.
    awaiting_pong: bool,
    pings_sent: u32,
    /// When this side last sent anything; while `awaiting_pong`, the time by which it must
    /// have answered the proxy's ping (one field for both keeps an idle session small).
    heard: At,
}

impl<IO: Leg> Side<IO> {
    /// The side's connection has failed (a write could not go out, or a read failed without
    /// a close frame): done both ways, nothing more to send it or read from it.
    fn failed(&mut self) {
        self.write_shut = true;
        self.read_eof = true;
        self.out = None;
        self.needs_flush = false;
        self.inject = None;
    }

    fn new(io: IO, pre: Bytes, who: CloseSide, scanner: Scanner, now: Instant) -> Self {
        Side {
            io,
            // An empty buffer may still pin hyper's whole read buffer: drop it now.
            pre: (!pre.is_empty()).then(|| Box::new(pre)),
            who,
            scanner,
            out: None,
            needs_flush: false,
            inject: None,
            read_eof: false,
            read_blocked: false,
            write_shut: false,
            close_from: None,
            close_to: false,
            finish_frame: false,
            passing: true,
            deferred_close: false,
            fin_owed: false,
            ping_pending: false,
            awaiting_pong: false,
            pings_sent: 0,
            heard: At::from(now),
        }
    }

    fn out_empty(&self) -> bool {
        self.out.is_none()
    }

    /// Bytes for this side it has not taken yet: queued here, or written and their flush
    /// still pending (an HTTP/2 stream without window, whose bytes hyper took).
    fn output_pending(&self) -> bool {
        !self.out_empty() || self.needs_flush
    }

    /// Writes `bytes` to this side now if it takes them, else queues them.
    fn send(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> io::Result<()> {
        self.send_as(cx, bytes, false)
    }

    /// [`send`](Self::send); `last`: these are the last bytes this side gets (see
    /// [`Leg::poll_write_last`]). Bytes it cannot take yet are queued and written as any
    /// other, and its ending goes on its own (`step`).
    fn send_as(&mut self, cx: &mut Context<'_>, mut bytes: &[u8], last: bool) -> io::Result<()> {
        if self.write_shut {
            return Ok(());
        }
        self.needs_flush = true;
        if self.out_empty() {
            while !bytes.is_empty() {
                let written = if last {
                    self.io.poll_write_last(cx, bytes)
                } else {
                    Pin::new(&mut self.io).poll_write(cx, bytes)
                };
                match written {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => bytes = &bytes[n..],
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
        }
        if !bytes.is_empty() {
            self.out
                .get_or_insert_with(Default::default)
                .buf
                .extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Writes what is queued. Ready(Ok) once nothing is left (and it has been flushed).
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(out) = &mut self.out {
            while out.pos < out.buf.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &out.buf[out.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                out.pos += n;
            }
            // Give the memory back: the next burst may never come.
            self.out = None;
        }
        if self.needs_flush {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// Session-wide state besides the two sides.
struct State {
    /// The route's settings and signals, the session record's counters and waker: one
    /// pointer to what the registry holds anyway, no copies.
    env: Arc<dyn Env>,
    closed_by: Option<CloseSide>,
    reason: Option<Reason>,
    /// Once set, nothing more is forwarded; replies are read and dropped.
    taken_over: bool,
    /// The end of the closing handshake's allowance.
    close_deadline: Option<At>,
    last_data: At,
    /// The route's lifetime, or the token's expiry if earlier (then `token_end`).
    lifetime_end: Option<At>,
    token_end: bool,
    /// Boxed: most sessions end without one.
    #[allow(
        clippy::box_collection,
        reason = "a thin pointer: 8 bytes in every idle session, where a String is 24"
    )]
    error: Option<Box<String>>,
    /// The first side that sent frames after its close frame (dropped, RFC 6455 §5.5.1).
    late_frames: Option<CloseSide>,
    /// Bytes read from either side and dropped (see `drain.rs`).
    discarded: u32,
    /// A side went over [`DRAIN_LIMIT`] and was read no more: the session ends cut.
    over_drain_limit: bool,
    /// The sides (a bit each, [`State::reading_on`]; the bits above, [`State::stuck_on`])
    /// whose pong was overdue while their TCP still took the data queued for them (`Leg::still_taking`): reading then, and maybe still, through what
    /// their receive buffer holds once the queue is empty. (Here, not in `Side`: a bit in
    /// the state's padding where a `bool` per side would grow every session.)
    reading_on: u8,
    /// The side cut off inside a frame (`inflated.rs`): a TCP close, no close frame.
    abandoned: Option<CloseSide>,
    /// The first side the relay let go once its closing handshake was over (`Leg::poll_finish`),
    /// not because it left: the other side, whose answer to the proxy's close may still be
    /// due, keeps its connection until it answers or the handshake's deadline.
    let_go: Option<CloseSide>,
    /// Bumped by every state change the relay loop must react to (bytes read, a frame queued
    /// or written, a side shut, the proxy taking over), so the loop runs until nothing moves.
    progress: u64,
    /// The route's fair shares (`fair.rs`), on routes that set them.
    fair: Option<Box<fair::Fair>>,
}

impl State {
    fn cfg(&self) -> &SessionConfig {
        self.env.session()
    }

    fn link(&self) -> &Link {
        self.env.link()
    }

    /// Sets whether `who` was found reading (see the field), returning what it was.
    /// Notes whether `who`'s ping waits behind a frame that `who` has stopped taking (its
    /// output stuck), in the upper bits of `reading_on`; returns what it was.
    fn stuck_on(&mut self, who: CloseSide, on: bool) -> bool {
        self.side_bit(who, 4, on)
    }

    fn reading_on(&mut self, who: CloseSide, on: bool) -> bool {
        self.side_bit(who, 1, on)
    }

    /// Sets or clears `who`'s bit of a pair in `reading_on` (the client's is `client_bit`,
    /// the backend's the next one up); returns what it was.
    fn side_bit(&mut self, who: CloseSide, client_bit: u8, on: bool) -> bool {
        let bit = match who {
            CloseSide::Client => client_bit,
            _ => client_bit << 1,
        };
        let was = self.reading_on & bit != 0;
        if on {
            self.reading_on |= bit;
        } else {
            self.reading_on &= !bit;
        }
        was
    }

    fn first_close(&mut self, who: CloseSide) {
        self.closed_by.get_or_insert(who);
        self.close_deadline
            .get_or_insert_with(|| At::now() + CLOSE_TIMEOUT);
    }
}

/// Relays frames until both sides have closed, the proxy has ended the session, or
/// `control` says so. Resolves to what happened, for the access log.
///
/// `allowed_rsv`: the RSV bits the negotiated extensions allow (RFC 6455 §5.2: only what an
/// extension defines; `0b100` with permessage-deflate). `env`: the route's settings, the
/// signals, and the link through which the outside wakes the relay after setting a signal,
/// and where it counts bytes.
///
/// The returned future is the whole state of an idle session, so it is a plain struct (no
/// `async fn`, whose arguments would stay in its state after being moved into the sides).
pub fn relay<C, B>(
    (client, client_pre): (C, Bytes),
    (backend, backend_pre): (B, Bytes),
    env: Arc<dyn Env>,
    allowed_rsv: u8,
) -> Relay<C, B>
where
    C: Leg,
    B: Leg,
{
    let now = Instant::now();
    let cfg = env.session();
    let scanner = |role| Scanner::new(role, allowed_rsv, cfg.max_message);
    let max_lifetime = cfg.max_lifetime.map(|d| {
        // Up to 10% less, so sessions opened together do not all end together.
        d.mul_f64(1.0 - rand::random::<f64>() * 0.1)
    });
    Relay {
        c: Side::new(
            client,
            client_pre,
            CloseSide::Client,
            scanner(Sender::Client),
            now,
        ),
        b: Side::new(
            backend,
            backend_pre,
            CloseSide::Backend,
            scanner(Sender::Server),
            now,
        ),
        st: State {
            lifetime_end: max_lifetime.map(|d| At::from(now) + d),
            token_end: false,
            closed_by: None,
            reason: None,
            taken_over: false,
            close_deadline: None,
            last_data: At::from(now),
            error: None,
            late_frames: None,
            discarded: 0,
            over_drain_limit: false,
            reading_on: 0,
            abandoned: None,
            let_go: None,
            progress: 0,
            fair: fair::Fair::new(&cfg.rates, now),
            env,
        },
        timer: None,
        closing: false,
        done: false,
        hibernate: false,
        woke: 0,
        nap: 0,
    }
}

/// A running relay (see [`relay`]).
pub struct Relay<C, B> {
    c: Side<C>,
    b: Side<B>,
    st: State,
    /// Pings, pong deadlines, idle and lifetime timers and the closing handshake's deadline
    /// share one timer, made when the first of them is armed.
    timer: Option<Pin<Box<Sleep>>>,
    /// The outside's close request has been acted on.
    closing: bool,
    done: bool,
    /// The session may hibernate (`idle.rs`): set by whoever can park it.
    hibernate: bool,
    /// When the session last woke from hibernation, in whole seconds (rounded up) of the
    /// process's clock (see [`millis`]); 0: never. (Seconds: a `u32` fits in the struct's
    /// padding.)
    woke: u32,
    /// How many times this session's wait before hibernating has been doubled (see
    /// [`idle::wait`]): it learns from its own quiet spells.
    nap: u8,
}

impl<C, B> Future for Relay<C, B>
where
    C: Leg,
    B: Leg,
{
    type Output = RelayOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayOutcome> {
        let this = self.get_mut();
        // Awaited as a future, a relay runs to its end in its task (see `poll_step`).
        this.hibernate = false;
        match this.poll_step(cx) {
            Poll::Ready(Step::Ended(outcome)) => Poll::Ready(outcome),
            _ => Poll::Pending,
        }
    }
}

impl<C, B> Relay<C, B>
where
    C: Leg,
    B: Leg,
{
    /// One turn of the relay.
    fn run(&mut self, cx: &mut Context<'_>) -> Poll<Turn> {
        let Relay {
            c,
            b,
            st,
            timer,
            closing,
            hibernate,
            woke,
            nap,
            ..
        } = self;
        // Register before reading the signals: a request set after the read wakes us.
        st.link().waker.register(cx.waker());
        // The turn's one clock read: when the sides were last heard, the last data message,
        // the fair shares and the timers all take this time (a turn is microseconds long,
        // the relay's deadlines are milliseconds).
        let mut now = Instant::now();
        c.read_blocked = false;
        b.read_blocked = false;
        if !*closing {
            let asked = st.link().asked().map(|a| Reason::Asked(a.code, a.by_admin));
            let requested = || st.env.control().requested().map(Reason::Requested);
            if let Some(reason) = asked.or_else(requested) {
                *closing = true;
                take_over(st, c, b, reason, None);
            }
        }
        if *closing && st.env.control().killed() {
            return Poll::Ready(Turn::Over(cut(cx, st, c, b)));
        }
        // Alternate until nothing moves: a write that frees room lets a read proceed.
        loop {
            let before = (st.progress, c.out_empty(), b.out_empty());
            step(cx, st, c, b, now);
            step(cx, st, b, c, now);
            if before == (st.progress, c.out_empty(), b.out_empty()) {
                break;
            }
        }
        if finished(c) && finished(b) {
            return Poll::Ready(Turn::Over(false));
        }
        // One side is done and the other is not (a peer that answered the close and waits
        // for our FIN while the other side takes its time, up to `CLOSE_TIMEOUT`): the done
        // one gets its FIN now. When both are done in one turn, the usual case, the relay
        // has just ended and closing the sockets sends them.
        if std::mem::take(&mut c.fin_owed) {
            c.io.send_fin();
        }
        if std::mem::take(&mut b.fin_owed) {
            b.io.send_fin();
        }
        let may = *hibernate && !*closing;
        let quiet_until = idle::quiet_until(may, *woke, *nap, st, c, b);
        // The timers read the clock again if their timer fired: `now` is then that time.
        if timers(st, c, b, timer, &mut now, quiet_until, cx).is_ready() {
            return Poll::Ready(Turn::Over(cut(cx, st, c, b)));
        }
        // Past its quiet time, and still quiet after the timers ran (a ping they queued keeps
        // it awake): the session may hibernate. Asked again only then, not on every turn.
        match quiet_until {
            Some(at) if at <= now && idle::quiet_until(may, *woke, *nap, st, c, b).is_some() => {
                Poll::Ready(Turn::Idle)
            }
            _ => Poll::Pending,
        }
    }

    fn outcome(&mut self, cut: bool) -> RelayOutcome {
        let (c, b, st) = (&mut self.c, &mut self.b, &mut self.st);
        RelayOutcome {
            client_to_backend: DirStats {
                bytes: st.link().counters.client_to_backend.load(Ordering::Relaxed),
                frames: c.scanner.frames,
                messages: c.scanner.messages,
            },
            backend_to_client: DirStats {
                bytes: st.link().counters.backend_to_client.load(Ordering::Relaxed),
                frames: b.scanner.frames,
                messages: b.scanner.messages,
            },
            client_close: c.close_from.take().map(|c| *c),
            backend_close: b.close_from.take().map(|c| *c),
            closed_by: st.closed_by.unwrap_or(CloseSide::Proxy),
            proxy_reason: st.reason,
            cut: cut || st.over_drain_limit,
            // A side that broke the protocol: which rule, for the operator who must find
            // the broken client library (the close frames say only "protocol error").
            error: st.error.take().map(|e| *e).or_else(|| match st.reason {
                Some(Reason::ProtocolError(side, v)) => Some(format!("{}: {v}", side.as_str())),
                _ => None,
            }),
            late_frames: st.late_frames,
        }
    }
}

/// How a turn of the relay ended, short of waiting.
enum Turn {
    /// The session is over; `true`: it was cut (see [`cut`]).
    Over(bool),
    /// Nothing has moved for the route's `hibernate_after` (see [`Step::Idle`]).
    Idle,
}

/// The session is cut: what the sides have already sent is read and dropped first, so their
/// sockets close with a FIN where possible (see `drain.rs`). Returns `true` (cut).
fn cut<C, B>(cx: &mut Context<'_>, st: &mut State, c: &mut Side<C>, b: &mut Side<B>) -> bool
where
    C: Leg,
    B: Leg,
{
    answer_unanswered(cx, c, b);
    answer_unanswered(cx, b, c);
    // A side still open gets what ends its writing without a shutdown, where it goes out at
    // once: a TLS leg its `close_notify` (RFC 8446 §6.1: a connection is closed with one
    // unless an error alert was sent), which a cut had left out; a plain one nothing more.
    if !c.write_shut {
        let _ = c.io.poll_finish(cx);
    }
    if !b.write_shut {
        let _ = b.io.poll_finish(cx);
    }
    drain::drain_ready(cx, st, c);
    drain::drain_ready(cx, st, b);
    true
}

/// A cut while `to` waits for the answer to its close frame, which the other side never sent
/// (the closing handshake's deadline, or a second signal): the proxy, `to`'s peer, answers it
/// as RFC 6455 §5.5.1 asks, echoing its code, so `to` learns its close went through rather
/// than seeing an abnormal closure (1006). Only at a frame boundary of the stream into `to`,
/// with nothing queued for it, and only what its socket takes at once.
fn answer_unanswered<A: Leg, Z>(cx: &mut Context<'_>, to: &mut Side<A>, from: &Side<Z>) {
    let Some(close) = to.close_from.as_deref() else {
        return;
    };
    if to.close_to
        || to.write_shut
        || !to.out_empty()
        || to.inject.is_some()
        || !from.scanner.at_boundary()
    {
        return;
    }
    let (role, why) = match to.who {
        CloseSide::Client => (Sender::Client, "backend did not answer"),
        _ => (Sender::Server, "client did not answer"),
    };
    let frame = match close.code {
        Some(code) => frame::close_frame(code, why, role),
        None => frame::encode_frame(opcode::CLOSE, true, &[], frame::mask_toward(role)),
    };
    // Whatever happens, the session ends now: a socket that takes nothing gets its FIN.
    let _ = to.io.poll_write_last(cx, &frame);
}

/// A side's I/O error for the record, with its causes: hyper's errors on an HTTP/2 stream
/// say only what it was doing ("error writing a body to connection"), and what happened
/// (`stream error received: stream no longer needed`: the client reset the stream) is their
/// source.
fn side_error(who: CloseSide, e: &std::io::Error) -> String {
    let mut text = format!("{}: {e}", who.as_str());
    let mut cause = e.get_ref().and_then(|inner| inner.source());
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// A side is done once it has sent EOF and its write side is shut.
fn finished<IO>(s: &Side<IO>) -> bool {
    s.read_eof && s.write_shut
}

/// The proxy ends the session: close frames to each side still listening (at the next frame
/// boundary), nothing forwarded from now on.
fn take_over<C, B>(
    st: &mut State,
    c: &mut Side<C>,
    b: &mut Side<B>,
    reason: Reason,
    error: Option<String>,
) where
    C: Leg,
    B: Leg,
{
    if st.taken_over {
        return;
    }
    st.taken_over = true;
    st.progress += 1;
    st.reason = Some(reason);
    if st.error.is_none() {
        st.error = error.map(Box::new);
    }
    // A side at fault ends even a closing handshake the other side had started: the session
    // ends on the proxy's reason, which the outcome and the offender name, so `closed_by` is
    // `proxy`. A drain, the admin API or a timer that overtakes a clean close leaves it to
    // the side that started it; a side that went away ended it itself.
    let who = reason.started_by();
    if reason.offender().is_some() {
        st.closed_by = Some(who);
    }
    st.first_close(who);
    // When one side broke the protocol, the other side is closed first and its frames keep
    // flowing to the offender until its close reply: what it answers to the frames before the
    // violation arrives, as it would without a proxy. Then the offender gets its close.
    let offender = match reason {
        Reason::ProtocolError(side, _) | Reason::MessageTooBig(side) => Some(side),
        _ => None,
    };
    // So too for a side that ended its sending half without a close frame (a FIN): it may
    // still be reading, the answers to what it sent among what comes. A client that sent its
    // messages and shut its write side got none of their echoes, only the proxy's close (and
    // the record counted them as sent). A side that failed (a reset, a TLS end without
    // `close_notify`, a write that failed) reads nothing more, and gets nothing.
    let half_closed = match reason {
        Reason::Gone(side) if !c.write_shut && side == CloseSide::Client => Some(side),
        Reason::Gone(side) if !b.write_shut && side == CloseSide::Backend => Some(side),
        _ => None,
    };
    let held = offender.or(half_closed);
    let (to_client, to_backend) = reason.codes();
    c.passing = held == Some(CloseSide::Backend) && !c.read_eof;
    b.passing = held == Some(CloseSide::Client) && !b.read_eof;
    // (Not a frame sent after the side's close frame: that one is dropped, not finished.)
    c.finish_frame =
        !c.passing && !c.scanner.at_boundary() && !c.read_eof && c.close_from.is_none();
    b.finish_frame =
        !b.passing && !b.scanner.at_boundary() && !b.read_eof && b.close_from.is_none();
    let defer_client = held == Some(CloseSide::Client) && b.passing;
    let defer_backend = held == Some(CloseSide::Backend) && c.passing;
    let (text_client, text_backend) = (
        ending::text(st, &reason, CloseSide::Client),
        ending::text(st, &reason, CloseSide::Backend),
    );
    for (close_to, write_shut, inject, deferred, defer, role, code, text) in [
        (
            &mut c.close_to,
            c.write_shut,
            &mut c.inject,
            &mut c.deferred_close,
            defer_client,
            Sender::Client,
            to_client,
            text_client,
        ),
        (
            &mut b.close_to,
            b.write_shut,
            &mut b.inject,
            &mut b.deferred_close,
            defer_backend,
            Sender::Server,
            to_backend,
            text_backend,
        ),
    ] {
        if !*close_to && !write_shut {
            *close_to = true;
            if defer {
                *deferred = true;
            } else {
                *inject = Some(frame::close_frame(code, text, role).into());
            }
        }
    }
}

/// Moves what `from` sends toward `to`, and settles `to`'s output: queued bytes, the proxy's
/// own frames at boundaries, and the write shutdown once its closing handshake is done.
fn step<A, Z>(
    cx: &mut Context<'_>,
    st: &mut State,
    from: &mut Side<A>,
    to: &mut Side<Z>,
    now: Instant,
) where
    A: Leg,
    Z: Leg,
{
    // 1. What `to` still has to take.
    if to.output_pending() {
        let queued = to.out.as_ref().map(|o| o.pos);
        let polled = to.poll_out(cx);
        if queued.is_some()
            && to.out.as_ref().map(|o| o.pos) != queued
            && to.awaiting_pong
            && to.inject.is_some()
        {
            // The ping waits behind a frame streaming into `to`, and `to` is taking that
            // frame: alive, if slow. Its deadline runs on (see the timers in `run`).
            to.heard = At::from(now) + stall_allowance(st.cfg());
        }
        match polled {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return lost(st, from, to, e),
            Poll::Pending => return,
        }
    }
    // 2. The proxy's own frame for `to`, once the stream into it is between frames.
    if from.read_eof && to.deferred_close {
        from.passing = false;
        release(st, to);
    }
    if to.inject.is_some() && from.read_eof && !from.scanner.at_boundary() {
        // The side feeding `to` left mid-frame: a close frame now would land inside that
        // frame. `to` gets its TCP close without one (it sees 1006, not garbage), at once
        // (`closeless` below): no close frame went out, so no answer is owed.
        to.inject = None;
        to.close_to = false;
        st.progress += 1;
    }
    if to.inject.is_some() && from.scanner.at_boundary() {
        let frame = to.inject.take().unwrap_or_default();
        if to.awaiting_pong && frame.first().is_some_and(|b| b & 0x0f == opcode::PING) {
            // The pong's deadline runs from now, when the ping goes out: a frame streaming
            // into this side may have held it back for longer than the deadline itself.
            to.heard = At::from(now) + st.cfg().pong_timeout;
        }
        st.progress += 1;
        if let Err(e) = to.send(cx, &frame) {
            return lost(st, from, to, e);
        }
    }
    // 3. Bytes read past the handshake first, then the socket, while `to` keeps up (or, once
    //    nothing of `from` is forwarded, to its end: see `drain.rs`).
    if let Some(pre) = from.pre.take() {
        ingest(cx, st, from, to, &pre[..], now);
    }
    while !from.read_eof && !from.read_blocked && (to.out_empty() || drain::discarding(st, from)) {
        if !st.taken_over
            && let Some(fair) = st.fair.as_mut()
            && !fair.may_read(from.who, now)
        {
            // Over its share: left unread, so its own writes wait (`fair.rs`). It sent
            // lately, and its pong may be among what waits: it counts as heard.
            from.heard = At::from(now);
            from.awaiting_pong = false;
            st.reading_on(from.who, false);
            break;
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut from.io).poll_read(cx, &mut buf) {
            Poll::Pending => {
                from.read_blocked = true;
                // A read stopped by the task's budget (tokio's cooperative scheduling) found
                // no end of input: the side has not caught up with its share.
                if let Some(fair) = st.fair.as_mut()
                    && tokio::task::coop::has_budget_remaining()
                {
                    fair.caught_up(from.who);
                }
                break;
            }
            Poll::Ready(Err(e)) => {
                // Progress: a side's end may finish the other's closing handshake (step 4 of
                // the next round: its write side shut once this one has left).
                from.read_eof = true;
                st.progress += 1;
                if !st.taken_over && from.close_from.is_none() {
                    // A connection that failed without a close frame (a reset, a TLS one
                    // closed without `close_notify`) is done both ways: it gets no close
                    // frame of the proxy's and owes no reply. A TLS write into it could take
                    // the close frame and never fail, and the session then waited the
                    // closing handshake's 5 s for that reply, the other side's own reply
                    // unread behind it.
                    from.failed();
                    let error = Some(side_error(from.who, &e));
                    take_over_dyn(st, from, to, Reason::Gone(from.who), error);
                }
                break;
            }
            Poll::Ready(Ok(())) => {}
        }
        let data = buf.filled();
        if data.is_empty() {
            from.read_eof = true;
            st.progress += 1;
            if !st.taken_over && from.close_from.is_none() {
                let reason = Reason::Gone(from.who);
                take_over_dyn(st, from, to, reason, None);
            } else {
                st.first_close(from.who);
            }
            break;
        }
        ingest(cx, st, from, to, data, now);
    }
    // 4. Shut `to`'s write side once its part of the closing handshake is done: it has had a
    //    close frame and has answered (or left), or the other side has left after its close.
    let handshake_done = to.close_to && (to.close_from.is_some() || to.read_eof);
    if to.write_shut && !to.read_eof && handshake_done && to.io.done_once_answered() {
        // Shut before its answer came (the other side was done first); now that it has
        // answered, its closing handshake is over too.
        to.read_eof = true;
        st.let_go.get_or_insert(to.who);
        st.progress += 1;
        return;
    }
    // A side let go has not left: the other side keeps its connection until it answers,
    // unless the other side is the one whose frames stopped making sense. Its answer could
    // not be read as one, so its connection is failed (RFC 6455 §7.1.7): its close frame,
    // then the FIN.
    // A side that left right after its own close frame (it failed the connection, RFC 6455
    // §7.1.7) leaves `to` its answer to that frame: `to` gets its FIN once it has answered
    // (`handshake_done`), left, or run out the closing handshake's deadline. The proxy is
    // the server toward a client, which closes the TCP connection after the handshake
    // (§7.1.1), and a peer without half-close would take an early FIN as the end and drop
    // its answer.
    //
    // The same once the proxy has taken the session over: `to` was sent the proxy's close
    // frame, and gets its FIN after its reply (`handshake_done`), its EOF or the deadline,
    // not as soon as the other side is done, unless its frames stopped making sense (its
    // reply could not be read as one).
    let answer_owed = to.close_to
        && to.close_from.is_none()
        && (!st.taken_over || to.scanner.stopped().is_none());
    let source_done = from.read_eof
        && (st.let_go != Some(from.who) || to.scanner.stopped().is_some())
        && (from.close_from.is_some() || st.taken_over)
        && !answer_owed
        || st.abandoned == Some(to.who);
    // A peer its ping timeout found dead answers nothing: it is not waited for. Its close
    // frame (which says why, should it be alive after all), then its FIN, and it is read no
    // more; the session ends once the other side is done. Not while it is inside a frame
    // toward the other side: that side's close frame waits for the frame's end, which only
    // reading on can bring (else the deadline ends the session, as for any side).
    let dead =
        st.taken_over && st.reason == Some(Reason::PingTimeout(to.who)) && to.scanner.at_boundary();
    // A side whose close frame was dropped (the other side left inside a frame toward it)
    // has nothing to answer, and what it sends has nowhere to go: its FIN at once, and it is
    // read no more. It waited out the closing handshake's 5 s, and was recorded cut.
    let closeless = st.taken_over && !to.close_to;
    // A side whose frames stopped making sense has had its close frame: its connection is
    // failed (RFC 6455 §7.1.7), and whatever it answers cannot be read as an answer. Its FIN
    // follows the close frame at once; it is still read (and discarded) to its EOF, so a
    // peer still sending gets no reset that could destroy that close frame. Its FIN waited
    // for the other side's closing handshake, up to the 5 s.
    let failed = st.taken_over && to.close_to && to.scanner.stopped().is_some();
    if !to.write_shut
        && to.inject.is_none()
        && !to.deferred_close
        && to.out_empty()
        && (handshake_done || source_done || dead || closeless || failed)
    {
        if to.read_eof || dead || closeless || handshake_done && to.close_from.is_some() {
            // A peer with nothing more to say: it has closed, or it has sent its close frame
            // and had one (RFC 6455 §5.5.1: nothing follows a close frame). Plain TCP needs
            // no shutdown: the socket's close when the relay ends sends the FIN a shutdown
            // would (the server closes first, §7.1.1), and there is no EOF to wait for. TLS
            // needs its `close_notify` (sent with the close frame where `forward` could),
            // then the same. Two syscalls and a wake-up fewer per session. A peer that sends
            // bytes after its close frame anyway (or a TLS peer its `close_notify`, after
            // ours) gets a reset instead of a FIN.
            match to.io.poll_finish(cx) {
                Poll::Pending => return,
                Poll::Ready(Ok(false)) => {}
                Poll::Ready(Ok(true) | Err(_)) => {
                    to.write_shut = true;
                    if !to.read_eof {
                        st.let_go.get_or_insert(to.who);
                    }
                    to.read_eof = true;
                    to.fin_owed = true;
                    st.progress += 1;
                    return;
                }
            }
        }
        match Pin::new(&mut to.io).poll_shutdown(cx) {
            Poll::Ready(_) => {
                to.write_shut = true;
                st.progress += 1;
            }
            Poll::Pending => {}
        }
    }
}

/// Lets the proxy's held-back close frame for `to` go (the other side has answered or left).
fn release<Z>(st: &mut State, to: &mut Side<Z>) {
    if !std::mem::take(&mut to.deferred_close) {
        return;
    }
    if let Some(reason) = st.reason {
        let (to_client, to_backend) = reason.codes();
        let (code, role) = match to.who {
            CloseSide::Client => (to_client, Sender::Client),
            _ => (to_backend, Sender::Server),
        };
        to.inject = Some(frame::close_frame(code, ending::text(st, &reason, to.who), role).into());
        st.progress += 1;
    }
}

/// The offender `to` has waited [`OFFENDER_HOLD`] for the other side's close reply: it gets
/// its close frame now, after the rest of the frame `from` is in the middle of.
fn hold_over<A, Z>(st: &mut State, to: &mut Side<A>, from: &mut Side<Z>) {
    if !to.deferred_close {
        return;
    }
    from.passing = false;
    from.finish_frame = !from.scanner.at_boundary() && !from.read_eof && from.close_from.is_none();
    release(st, to);
}

/// Accounts for and forwards one chunk read from `from`.
fn ingest<A, Z>(
    cx: &mut Context<'_>,
    st: &mut State,
    from: &mut Side<A>,
    to: &mut Side<Z>,
    data: &[u8],
    now: Instant,
) where
    A: Leg,
    Z: Leg,
{
    from.heard = At::from(now);
    from.awaiting_pong = false;
    st.reading_on(from.who, false);
    st.progress += 1;
    let counter = match from.who {
        CloseSide::Client => &st.link().counters.client_to_backend,
        _ => &st.link().counters.backend_to_client,
    };
    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
    // Still scanned: a side the proxy closed is watched for its close reply.
    let discarding = drain::discarding(st, from);
    let messages_before = from.scanner.messages;
    let mut controls = 0;
    let mut chunk = data;
    loop {
        if let Err(reason) = forward(cx, st, from, to, chunk, now, &mut controls) {
            take_over_dyn(st, from, to, reason, None);
            inflated::abandon_frame(st, from, to);
        }
        // A message over the limit leaves `from`'s framing intact: the rest of the chunk is
        // read as what it sent after, now that the proxy is closing (nothing of it is
        // forwarded; its close reply ends its closing handshake). What `forward` fed the
        // scanner is a tail of `chunk`.
        let unscanned = from.scanner.take_unscanned();
        if unscanned == 0 {
            break;
        }
        chunk = &chunk[chunk.len().saturating_sub(unscanned)..];
    }
    if !st.taken_over
        && let Some(fair) = st.fair.as_mut()
    {
        // A ping or pong passed on counts as a message: a flood of them reaches the other
        // side as data would.
        let messages = from.scanner.messages - messages_before + controls;
        fair.charge(from.who, data.len() as u64, messages, now);
    }
    control::count(
        &st.link().counters,
        from.who,
        from.scanner.messages,
        from.heard,
    );
    if discarding {
        drain::count(st, from, data.len());
    }
}

/// `take_over` with the sides in (from, to) order; puts them back in (client, backend) order.
fn take_over_dyn<A, Z>(
    st: &mut State,
    from: &mut Side<A>,
    to: &mut Side<Z>,
    reason: Reason,
    error: Option<String>,
) where
    A: Leg,
    Z: Leg,
{
    if from.who == CloseSide::Client {
        take_over(st, from, to, reason, error);
    } else {
        take_over(st, to, from, reason, error);
    }
}

/// `to` could not be written: it is gone. End the session toward `from`.
fn lost<A, Z>(st: &mut State, from: &mut Side<A>, to: &mut Side<Z>, e: io::Error)
where
    A: Leg,
    Z: Leg,
{
    to.failed();
    // Progress, whatever else: `from` may have gone unread while `to` could not take more,
    // its waker not registered, and the next round reads it now. (A flush into a reset
    // HTTP/2 stream fails in a turn of its own; the backend's answer to the proxy's close
    // then waited for the closing handshake's deadline.)
    st.progress += 1;
    if to.close_from.is_some() && from.close_from.is_some() && !st.taken_over {
        // Both have sent their close frames, and `to` has closed its connection: its part is
        // over, and the close reply that could not reach it is no loss. (A side closed while
        // the other is still inside a message is gone, as before: that other side is told.)
        return;
    }
    let error = side_error(to.who, &e);
    if st.taken_over {
        st.error.get_or_insert(Box::new(error));
    } else {
        take_over_dyn(st, to, from, Reason::Gone(to.who), Some(error));
    }
}

/// Passes one chunk from `from` to `to` through the scanner; adds the pings and pongs it
/// met that are not the answer to the proxy's own ping to `controls`.
fn forward<A, Z>(
    cx: &mut Context<'_>,
    st: &mut State,
    from: &mut Side<A>,
    to: &mut Side<Z>,
    data: &[u8],
    now: Instant,
    controls: &mut u64,
) -> Result<(), Reason>
where
    A: Leg,
    Z: Leg,
{
    let mut data = data;
    if from.finish_frame {
        let mut write_err = None;
        let n = from.scanner.feed_to_boundary(data, &mut |ev| {
            if let Event::Forward(bytes) = ev
                && write_err.is_none()
            {
                write_err = to.send(cx, bytes).err();
            }
        });
        data = &data[n..];
        if let Some(e) = write_err {
            lost(st, from, to, e);
            return Ok(());
        }
        if from.scanner.at_boundary() {
            from.finish_frame = false;
            st.progress += 1;
        }
    }
    let passing = from.passing;
    let taken_over = st.taken_over;
    let mut write_err: Option<io::Error> = None;
    let mut release_deferred = false;
    let mut saw_close = false;
    let mut saw_data = false;
    let mut late = false;
    let mut late_messages = 0;
    let ping_pending = &mut from.ping_pending;
    let ping_seq = from.pings_sent;
    let close_from = &mut from.close_from;
    let mut batch = Batch::new(data);
    // (A scanner stopped earlier reports its violation again: not a new one.)
    let stopped_before = from.scanner.stopped().is_some();
    let result = from.scanner.feed(data, &mut |ev| {
        match ev {
            Event::Forward(_) if close_from.is_some() => late = true,
            Event::Forward(bytes) => {
                // A data frame's bytes, even mid-message: a message streaming slowly keeps
                // the session from `idle` as its end would.
                saw_data = true;
                if passing && write_err.is_none() {
                    write_err = batch.add(cx, to, bytes).err();
                }
            }
            Event::Control {
                opcode: op,
                frame,
                payload,
            } => {
                if op == opcode::PONG
                    && let Some(seq) = our_ping(payload).filter(|s| (1..=ping_seq).contains(s))
                {
                    // The answer to one of the proxy's own pings: consumed, not forwarded.
                    // An earlier one's too: a side that was inside a frame when pinged
                    // answers late, by when it may have been pinged again (RFC 6455
                    // §5.5.3 lets it answer only one of them).
                    if seq == ping_seq {
                        *ping_pending = false;
                    }
                    return;
                }
                if op != opcode::CLOSE {
                    *controls += 1;
                }
                if close_from.is_some() {
                    // RFC 6455 §5.5.1: a side sends nothing after its close frame; what it
                    // sends anyway is dropped, not passed on as if the session went on.
                    late = true;
                    return;
                }
                if op == opcode::CLOSE {
                    let (code, reason) = frame::parse_close(payload);
                    *close_from = Some(Box::new(CloseInfo { code, reason }));
                    saw_close = true;
                    if taken_over {
                        // The reply to the proxy's close: the other side gets the proxy's own.
                        release_deferred = true;
                        return;
                    }
                }
                if passing && !release_deferred && write_err.is_none() {
                    // A close frame that ends `to`'s closing handshake (it has sent its own,
                    // or left) is the last `to` gets: what `from` sends after its close is
                    // dropped. It goes as such (TLS: with the `close_notify`, see
                    // `Leg::poll_write_last`).
                    let mut last = false;
                    if op == opcode::CLOSE {
                        to.close_to = true;
                        last = (to.close_from.is_some() || to.read_eof)
                            && to.inject.is_none()
                            && !to.deferred_close;
                    }
                    write_err = batch.add_as(cx, to, frame, last).err();
                }
            }
            // A message sent after its sender's close frame is dropped, and not counted
            // (as one cut at `max_message` is not).
            Event::MessageEnd if close_from.is_some() => late_messages += 1,
            // Its bytes come in a `Forward` of the same chunk, which counted them.
            Event::MessageEnd => {}
        }
    });
    from.scanner.messages -= late_messages;
    if write_err.is_none() {
        write_err = batch.flush(cx, to).err();
    }
    if saw_data && passing {
        st.last_data = At::from(now);
    }
    if release_deferred {
        from.passing = false;
        release(st, to);
    }
    if saw_close {
        st.first_close(from.who);
    }
    if late && st.late_frames.is_none() {
        st.late_frames = Some(from.who);
    }
    if let Some(e) = write_err {
        lost(st, from, to, e);
        return Ok(());
    }
    match result {
        Ok(()) => Ok(()),
        Err(v) => {
            let after_close = from.close_from.is_some();
            if !after_close && !stopped_before && v.is_close() {
                // A close RFC 6455 forbids is still the side's close frame: it sends nothing
                // after it and waits for the answer, so its closing handshake is done once it
                // has the proxy's close. Recorded with the code it sent, if any (the log and
                // the close-code metric show 1005, 1006, 1015 or "invalid"), without its
                // reason, which may not be text.
                from.close_from = Some(Box::new(CloseInfo {
                    code: v.sent_close_code(),
                    reason: String::new(),
                }));
            }
            if !after_close && !st.taken_over {
                return Err(match v {
                    Violation::MessageTooBig(_) | Violation::InflatedTooBig(_) => {
                        Reason::MessageTooBig(from.who)
                    }
                    v => Reason::ProtocolError(from.who, v),
                });
            }
            if after_close {
                // After its close frame, whatever a side sends is late (RFC 6455 §5.5.1) and
                // dropped like any late frame, a second, malformed close included: its
                // closing handshake goes on, not cut short as a protocol error.
                st.late_frames.get_or_insert(from.who);
            }
            // While the proxy is closing, a side's garbage only ends what is forwarded from
            // it; it is still read (and dropped) until its EOF, so that it gets its close
            // frame.
            if st.taken_over && from.passing {
                from.passing = false;
                release(st, to);
            }
            Ok(())
        }
    }
}

/// How long a leg whose ping waits behind a frame may take nothing of that frame before it
/// is taken for dead: `ping_interval` and twice `pong_timeout` (70 s by default), what a
/// leg that answers no ping at all gets at most. Longer than one pong's time: a backend busy
/// with its own work (inflating a queue of compressed messages, say) stops reading for tens
/// of seconds and then goes on (Autobahn's case 12.5.15 through a Node `ws` backend).
fn stall_allowance(cfg: &SessionConfig) -> Duration {
    cfg.ping_interval.unwrap_or_default() + 2 * cfg.pong_timeout
}

/// Pings, pong deadlines, idle and lifetime (or token) timers, and the closing handshake's
/// deadline. Arms `timer` for the earliest of them; Ready when the session must be cut.
/// The session's timers: Ready once one of them ends the session. `quiet_until`: when the
/// session may hibernate (`idle.rs`), a deadline that only wakes the relay.
fn timers<C, B>(
    st: &mut State,
    c: &mut Side<C>,
    b: &mut Side<B>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    now: &mut Instant,
    quiet_until: Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<()>
where
    C: Leg,
    B: Leg,
{
    let start = st.progress;
    loop {
        let at_now = At::from(*now);
        if let Some(deadline) = st.close_deadline
            && at_now >= deadline
        {
            return Poll::Ready(());
        }
        let mut next = st.close_deadline.map(At::instant);
        let mut earliest = |t: Instant| {
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        if let Some(deadline) = st.close_deadline
            && (c.deferred_close || b.deferred_close)
        {
            let release_at = deadline.instant() - (CLOSE_TIMEOUT - OFFENDER_HOLD);
            if *now >= release_at {
                hold_over(st, c, b);
                hold_over(st, b, c);
            } else {
                earliest(release_at);
            }
        }
        // Once past, the caller hibernates the session: no wake-up is needed for it.
        if let Some(at) = quiet_until.filter(|&at| at > *now) {
            earliest(at);
        }
        if !st.taken_over {
            if let Some(fair) = st.fair.as_mut() {
                if let Some(who) = fair.over_grace(*now) {
                    take_over(st, c, b, Reason::RateLimited(who), None);
                    continue;
                }
                if fair.wake_due(*now) {
                    // A side held back may be read again: run the sides.
                    st.progress += 1;
                }
                if let Some(at) = fair.next_wake() {
                    earliest(at);
                }
            }
            if let Some(end) = st.lifetime_end {
                if at_now >= end {
                    let why = [Reason::MaxLifetime, Reason::TokenExpired][st.token_end as usize];
                    take_over(st, c, b, why, None);
                    continue;
                }
                earliest(end.instant());
            }
            if let Some(idle) = st.cfg().idle_timeout {
                let end = st.last_data + idle;
                if at_now >= end {
                    take_over(st, c, b, Reason::IdleTimeout, None);
                    continue;
                }
                earliest(end.instant());
            }
            if let Some(interval) = st.cfg().ping_interval {
                // A leg that has sent anything lately has proven it is alive.
                let mut dead = None;
                // A leg is held back while the other side has not taken what it sent: it is
                // not read, so a pong it sent would wait unread behind its own data. It is
                // neither pinged nor taken for dead then; the other side taking its bytes
                // wakes the relay, and the checks run again.
                // A leg that takes nothing of what is queued for it (its own output), or of
                // what was written to it: a flush still pending (an HTTP/2 stream without
                // window, where hyper took the bytes) holds up reading the other side as
                // queued bytes do. That other side is held; a ping for this one waits
                // behind the flush, its deadline running.
                let stuck = (c.output_pending(), b.output_pending());
                let held = (stuck.1, stuck.0);
                for (
                    who,
                    (pending, awaiting),
                    heard,
                    seq,
                    (inject, closing),
                    role,
                    (held, stuck),
                ) in [
                    (
                        c.who,
                        (&mut c.ping_pending, &mut c.awaiting_pong),
                        &mut c.heard,
                        &mut c.pings_sent,
                        (&mut c.inject, c.close_to || c.close_from.is_some()),
                        Sender::Client,
                        (held.0, stuck.0),
                    ),
                    (
                        b.who,
                        (&mut b.ping_pending, &mut b.awaiting_pong),
                        &mut b.heard,
                        &mut b.pings_sent,
                        (&mut b.inject, b.close_to || b.close_from.is_some()),
                        Sender::Server,
                        (held.1, stuck.1),
                    ),
                ] {
                    // A leg that took every byte given it straight away, however long its
                    // ping has waited behind the frame, has been waiting on nothing: its
                    // deadline runs from when its output is first stuck.
                    let queued_stuck = stuck && inject.is_some() && *awaiting && !closing;
                    if queued_stuck && !st.stuck_on(who, true) {
                        *heard = (*heard).max(at_now + stall_allowance(st.cfg()));
                    } else if !queued_stuck {
                        st.stuck_on(who, false);
                    }
                    match *awaiting {
                        // Nothing follows a close frame (RFC 6455 §5.5.1), a ping or a pong
                        // neither: a side in its closing handshake (it sent its close frame,
                        // or was sent one) is neither pinged nor taken for dead. The closing
                        // handshake has a deadline of its own.
                        _ if closing => {}
                        // The ping is still queued behind a frame streaming into this side:
                        // its deadline starts when it goes out (`step`), while the frame is
                        // only slow in coming. While this side is taking nothing of that
                        // frame (its output stuck), the deadline runs from when the ping was
                        // due, and each write it takes moves it on (`step`): a leg that
                        // stopped reading mid-frame was never pinged, so never found dead,
                        // and held the session (and the other side, unread, gone or not)
                        // for ever.
                        true if inject.is_some() && !stuck => {}
                        true if held => {}
                        true if at_now >= *heard => dead = Some(who),
                        true => earliest(heard.instant()),
                        // A ping (or the proxy's close) is still queued for this side, held
                        // until the stream into it reaches a frame boundary: the next one
                        // waits for it. (Arming the timer for a deadline already past would
                        // fire it again at once, and the loop would spin until it went.)
                        false if inject.is_some() => {}
                        false if held => {}
                        false if at_now >= *heard + interval => {
                            *seq = seq.wrapping_add(1);
                            let token = ping_token(*seq);
                            *inject = Some(
                                frame::encode_frame(
                                    opcode::PING,
                                    true,
                                    &token,
                                    frame::mask_toward(role),
                                )
                                .into(),
                            );
                            st.progress += 1;
                            st.link()
                                .counters
                                .pings_sent
                                .fetch_add(1, Ordering::Relaxed);
                            *pending = true;
                            *awaiting = true;
                            *heard = at_now + st.cfg().pong_timeout;
                            earliest(heard.instant());
                        }
                        false => earliest((*heard + interval).instant()),
                    }
                }
                if let Some(who) = dead {
                    // Its pong may wait behind what was written before its ping, still in
                    // the socket's send queue (which can hold megabytes the proxy handed the
                    // kernel at once) or in the peer's receive buffer (which cannot be seen
                    // from here). While the peer's TCP still takes the queued data, it is
                    // reading, only slowly: its deadline starts again. Once the queue is
                    // empty, a peer that was still taking it at the last deadline has the
                    // rest of its receive buffer to read before the ping: one more
                    // deadline. One that has taken nothing for the pong's time is dead.
                    let pong_timeout = st.cfg().pong_timeout;
                    let (heard, taking) = match who {
                        CloseSide::Client => (&mut c.heard, c.io.still_taking(pong_timeout)),
                        _ => (&mut b.heard, b.io.still_taking(pong_timeout)),
                    };
                    let was_reading = st.reading_on(who, taking);
                    if taking || was_reading {
                        *heard = at_now + pong_timeout;
                        earliest(heard.instant());
                    } else {
                        take_over(st, c, b, Reason::PingTimeout(who), None);
                        continue;
                    }
                }
            }
        }
        if st.progress != start {
            // A close frame or a ping was queued: run the sides again to write it.
            cx.waker().wake_by_ref();
        }
        let Some(next) = next else {
            return Poll::Pending;
        };
        // Re-arm only to fire earlier, or once it has fired: the ping deadline moves with every
        // read, and resetting a tokio timer takes the timer driver's lock. A timer that fires
        // early just runs this function again, which re-arms it for the real deadline.
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next)));
        if next < timer.deadline() || timer.deadline() <= *now {
            timer.as_mut().reset(next);
        }
        return match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // The clock has passed the turn's time: look again with the time it is now.
                *now = Instant::now();
                continue;
            }
            Poll::Pending => Poll::Pending,
        };
    }
}

/// A relay's [`Env`] made by hand, for tests: the settings, a signal and a link the test
/// also holds.
#[cfg(test)]
pub(crate) fn test_env(cfg: SessionConfig, control: &Control, link: &Arc<Link>) -> Arc<dyn Env> {
    struct TestEnv(SessionConfig, Control, Arc<Link>);
    impl Env for TestEnv {
        fn session(&self) -> &SessionConfig {
            &self.0
        }
        fn control(&self) -> &Control {
            &self.1
        }
        fn link(&self) -> &Link {
            &self.2
        }
    }
    Arc::new(TestEnv(cfg, control.clone(), link.clone()))
}

#[cfg(test)]
mod tests;
