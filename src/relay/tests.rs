//! The relay's unit tests: pure parts (reasons, codes, ping tokens) and relays over in-memory pipes.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

use super::*;
use crate::frame::close_code;

fn masked(op: u8, payload: &[u8]) -> Vec<u8> {
    frame::encode_frame(op, true, payload, Some([1, 2, 3, 4]))
}

fn plain(op: u8, payload: &[u8]) -> Vec<u8> {
    frame::encode_frame(op, true, payload, None)
}

/// Reads one unfragmented close frame of at most 125 bytes from `pipe` (unmasked when the
/// proxy masked it, toward a backend) and returns its code and reason. (Shared with the
/// relay's other modules' tests.)
pub(super) async fn read_close(pipe: &mut tokio::io::DuplexStream) -> (Option<u16>, String) {
    let mut head = [0u8; 2];
    pipe.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x88, "not a close frame: {head:?}");
    let mut mask = [0u8; 4];
    if head[1] & 0x80 != 0 {
        pipe.read_exact(&mut mask).await.unwrap();
    }
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    pipe.read_exact(&mut payload).await.unwrap();
    payload
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b ^= mask[i % 4]);
    frame::parse_close(&payload)
}

/// The outside's hold on a test relay: its signal and its link.
struct Outside(Control, Arc<Link>);

impl Outside {
    fn close_with(&self, code: u16) {
        self.0.close_with(code);
        self.1.wake();
    }
}

/// A relay between two in-memory pipes: (client end, backend end, outside, task).
fn spawn_relay(
    capacity: usize,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    Outside,
    tokio::task::JoinHandle<RelayOutcome>,
) {
    let (client, client_side) = duplex(capacity);
    let (backend_side, backend) = duplex(capacity);
    let outside = Outside(Control::default(), Arc::default());
    let (ctl, link) = (outside.0.clone(), outside.1.clone());
    let task = tokio::spawn(async move {
        relay(
            (client_side, Bytes::new()),
            (backend_side, Bytes::new()),
            // No pings: these tests script every frame.
            test_env(
                SessionConfig {
                    ping_interval: None,
                    ..SessionConfig::default()
                },
                &ctl,
                &link,
            ),
            0,
        )
        .await
    });
    (client, backend, outside, task)
}

/// A relay between two in-memory pipes, to be polled by hand: (client end, backend end,
/// relay).
fn relay_by_hand(
    cfg: SessionConfig,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    Relay<tokio::io::DuplexStream, tokio::io::DuplexStream>,
) {
    relay_by_hand_over(cfg, |pipe| pipe)
}

/// [`relay_by_hand`] with each of the relay's ends wrapped in a leg of `wrap`'s making.
fn relay_by_hand_over<L: Leg>(
    cfg: SessionConfig,
    wrap: fn(tokio::io::DuplexStream) -> L,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    Relay<L, L>,
) {
    let (client, client_side) = duplex(1 << 16);
    let (backend_side, backend) = duplex(1 << 16);
    let env = test_env(cfg, &Control::default(), &Arc::default());
    let relay = relay(
        (wrap(client_side), Bytes::new()),
        (wrap(backend_side), Bytes::new()),
        env,
        0,
    );
    (client, backend, relay)
}

/// [`relay_by_hand_over`] legs that finish as TCP does ([`TcpLike`]), with no pings and no
/// hibernation: for the closing handshake's tests, which must see only their own frames.
fn closing_relay() -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    Relay<TcpLike, TcpLike>,
) {
    let quiet = SessionConfig {
        ping_interval: None,
        hibernate_after: None,
        ..SessionConfig::default()
    };
    relay_by_hand_over(quiet, TcpLike)
}

/// Pings every second and `pong_timeout`, and no other timer: no idle or lifetime end, no
/// hibernation.
fn pings_only(pong_timeout: Duration) -> SessionConfig {
    SessionConfig {
        ping_interval: Some(Duration::from_secs(1)),
        pong_timeout,
        idle_timeout: None,
        max_lifetime: None,
        hibernate_after: None,
        ..SessionConfig::default()
    }
}

/// A fair share of `per_sec` messages a second (as many in a burst) for the client, and
/// `grace` before a side held back is closed.
fn client_share(per_sec: u64, grace: Duration) -> crate::config::Rates {
    crate::config::Rates {
        client: crate::config::DirectionRates {
            messages: Some(crate::config::Rate {
                per_sec,
                burst: per_sec,
            }),
            bytes: None,
        },
        backend: Default::default(),
        grace: Some(grace),
    }
}

#[tokio::test]
async fn relays_frames_and_the_closing_handshake() {
    let (mut client, mut backend, _control, task) = spawn_relay(64);
    // Larger than the pipe, so the queueing path runs.
    let big = masked(opcode::BINARY, &[7u8; 1000]);
    let mut got = vec![0u8; big.len()];
    let (w, r) = tokio::join!(client.write_all(&big), backend.read_exact(&mut got));
    w.unwrap();
    r.unwrap();
    assert_eq!(got, big);
    let close = masked(opcode::CLOSE, &[0x03, 0xe8, b'o', b'k']);
    client.write_all(&close).await.unwrap();
    let mut got = vec![0u8; close.len()];
    backend.read_exact(&mut got).await.unwrap();
    assert_eq!(got, close);
    let reply = plain(opcode::CLOSE, &[0x03, 0xe8]);
    backend.write_all(&reply).await.unwrap();
    backend.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, reply);
    let mut rest = Vec::new();
    backend.read_to_end(&mut rest).await.unwrap();
    drop(client);
    let out = task.await.unwrap();
    assert_eq!(
        out.client_close,
        Some(CloseInfo {
            code: Some(1000),
            reason: "ok".into()
        })
    );
    assert_eq!(out.backend_close.as_ref().and_then(|c| c.code), Some(1000));
    assert_eq!(out.closed_by, CloseSide::Client);
    assert_eq!(out.outcome().as_str(), "closed");
    assert_eq!(out.client_to_backend.messages, 1);
    assert_eq!(out.client_to_backend.frames, 2);
}

#[tokio::test]
async fn drain_sends_close_frames_both_ways() {
    let (mut client, mut backend, control, task) = spawn_relay(1024);
    control.close_with(close_code::GOING_AWAY);
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 0x88, "unmasked close toward the client");
    let mut rest = vec![0u8; (head[1] & 0x7f) as usize];
    client.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest[..2], &1001u16.to_be_bytes());
    let mut head = [0u8; 2];
    backend.read_exact(&mut head).await.unwrap();
    assert_eq!(
        (head[0], head[1] & 0x80),
        (0x88, 0x80),
        "masked close toward the backend"
    );
    client
        .write_all(&masked(opcode::CLOSE, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    backend
        .write_all(&plain(opcode::CLOSE, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    drop(client);
    drop(backend);
    let out = task.await.unwrap();
    assert_eq!(out.outcome().as_str(), "drained");
    assert_eq!(out.closed_by, CloseSide::Proxy);
    assert!(!out.cut);
}

#[tokio::test]
async fn a_close_during_a_frame_waits_for_the_frame_to_end() {
    let (mut client, mut backend, control, task) = spawn_relay(4096);
    let frame = plain(opcode::BINARY, &[9u8; 100]);
    backend.write_all(&frame[..50]).await.unwrap();
    let mut got = vec![0u8; 50];
    client.read_exact(&mut got).await.unwrap();
    control.close_with(close_code::GOING_AWAY);
    // The rest of the frame in flight still passes, then comes the proxy's close frame.
    backend.write_all(&frame[50..]).await.unwrap();
    let mut rest = vec![0u8; frame.len() - 50];
    client.read_exact(&mut rest).await.unwrap();
    assert_eq!(rest, &frame[50..]);
    let mut head = [0u8; 4];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!((head[0], &head[2..]), (0x88, &1001u16.to_be_bytes()[..]));
    drop(client);
    drop(backend);
    assert_eq!(task.await.unwrap().outcome().as_str(), "drained");
}

/// RFC 6455 §5.5.1: nothing follows a close frame. A data frame the backend sends after its
/// close is dropped, and stays dropped when the proxy takes over in its middle (the frame is
/// not "finished" toward the client as a frame in flight would be).
#[tokio::test]
async fn frames_after_a_close_frame_are_dropped_even_across_a_take_over() {
    let (mut client, mut backend, control, task) = spawn_relay(4096);
    let close = plain(opcode::CLOSE, &1000u16.to_be_bytes());
    let late = plain(opcode::BINARY, &[9u8; 100]);
    backend
        .write_all(&[&close[..], &late[..50]].concat())
        .await
        .unwrap();
    let mut got = vec![0u8; close.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, close);
    control.close_with(close_code::GOING_AWAY);
    backend.write_all(&late[50..]).await.unwrap();
    backend.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "after the close frame the client got {rest:?}"
    );
    drop(client);
    drop(backend);
    let out = task.await.unwrap();
    assert_eq!(out.late_frames, Some(CloseSide::Backend));
    assert_eq!(out.backend_to_client.frames, 2);
    // Its frames count (they were read), the dropped message does not, as one cut at
    // `max_message` does not: the record said 1 message where none arrived.
    assert_eq!(out.backend_to_client.messages, 0);
}

/// A close frame RFC 6455 forbids (here code 1006) sent in reply to the proxy's own close
/// still ends that side's closing handshake: the relay finishes without waiting for its EOF,
/// and the record keeps the code the client sent.
#[tokio::test]
async fn a_forbidden_close_in_reply_to_the_proxys_close_is_still_that_sides_close() {
    let (mut client, mut backend, control, task) = spawn_relay(1024);
    control.close_with(close_code::GOING_AWAY);
    assert_eq!(read_close(&mut client).await.0, Some(1001));
    assert_eq!(read_close(&mut backend).await.0, Some(1001));
    // Close code 1006, which no endpoint may send.
    client
        .write_all(&masked(opcode::CLOSE, &1006u16.to_be_bytes()))
        .await
        .unwrap();
    backend
        .write_all(&plain(opcode::CLOSE, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    // Both handshakes are done: the client's pipe is shut before the client has closed
    // anything (it would wait for the close timeout otherwise, and the session be cut).
    let mut after = Vec::new();
    client.read_to_end(&mut after).await.unwrap();
    assert!(after.is_empty(), "{after:?}");
    drop(client);
    drop(backend);
    let out = task.await.unwrap();
    assert!(!out.cut);
    assert_eq!(
        out.client_close,
        Some(CloseInfo {
            code: Some(1006),
            reason: String::new()
        })
    );
    assert_eq!(out.closed_by, CloseSide::Proxy);
    assert_eq!(out.outcome().as_str(), "drained");
}

/// A close RFC 6455 forbids (a one-byte payload) fails the session, and is still the client's
/// close frame: once the client has the proxy's 1002 its closing handshake is done, and the
/// relay ends without waiting for the client to close the connection itself.
#[tokio::test]
async fn a_forbidden_close_fails_the_session_and_still_counts_as_the_senders_close() {
    let (mut client, mut backend, _control, task) = spawn_relay(1024);
    client
        .write_all(&masked(opcode::CLOSE, &[0x03]))
        .await
        .unwrap();
    // The backend is closed first (1001), and its reply lets the client's 1002 go.
    assert_eq!(read_close(&mut backend).await.0, Some(1001));
    backend
        .write_all(&plain(opcode::CLOSE, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    // The client's pipe is shut after its 1002, before the client has closed anything.
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!((got[0], &got[2..4]), (0x88, &1002u16.to_be_bytes()[..]));
    drop(client);
    drop(backend);
    let out = task.await.unwrap();
    assert_eq!(out.outcome().as_str(), "client_protocol_error");
    assert_eq!(out.client_close, Some(CloseInfo::default()));
    assert_eq!(out.closed_by, CloseSide::Proxy);
    assert!(!out.cut);
    // The record names the rule broken, which the close frames call "protocol error".
    assert_eq!(
        out.error.as_deref(),
        Some("client: close frame with a one-byte payload")
    );
}

/// After a side's close frame, a malformed close is late like any other frame: dropped, and
/// the closing handshake completes with the other side's reply, not cut short with 1002.
#[tokio::test]
async fn a_malformed_close_after_a_sides_close_is_late_not_a_protocol_error() {
    let (mut client, mut backend, _control, task) = spawn_relay(1024);
    let close = masked(opcode::CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']);
    let forbidden = masked(opcode::CLOSE, &[0x03, 0xed]); // 1005
    client
        .write_all(&[&close[..], &forbidden[..]].concat())
        .await
        .unwrap();
    let mut got = vec![0u8; close.len()];
    backend.read_exact(&mut got).await.unwrap();
    assert_eq!(got, close);
    let reply = plain(opcode::CLOSE, &1000u16.to_be_bytes());
    backend.write_all(&reply).await.unwrap();
    backend.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(
        got, reply,
        "the client gets the backend's reply, not a 1002"
    );
    drop(client);
    let mut rest = Vec::new();
    backend.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let out = task.await.unwrap();
    assert_eq!(out.outcome().as_str(), "closed");
    assert_eq!(out.late_frames, Some(CloseSide::Client));
    assert_eq!(out.client_close.and_then(|c| c.code), Some(1000));
}

#[test]
fn ping_tokens_differ() {
    assert_ne!(ping_token(1), ping_token(2));
    assert_eq!(&ping_token(1)[..6], b"wsgate");
    assert_eq!(our_ping(&ping_token(7)), Some(7));
    assert_eq!(our_ping(b"wsgate"), None);
    assert_eq!(our_ping(b"wsgatf\0\0\0\0\0\x07"), None);
}

/// The most a session holds for a side that never reads: one read's worth (`READ_CHUNK`) of
/// what the other side sent, on top of what the pipes themselves hold. Everything past that
/// stays with the sender, whose writes wait. Time is paused: the writer's timeout fires only
/// once nothing at all can move.
#[tokio::test(start_paused = true)]
async fn a_side_that_never_reads_holds_at_most_one_read_in_the_relay() {
    const PIPE: usize = 4096;
    let (client, mut backend, outside, _task) = spawn_relay(PIPE);
    // One 4 MiB binary message from the backend, to a client that reads nothing.
    let message = plain(opcode::BINARY, &vec![5u8; 4 << 20]);
    let blocked = tokio::time::timeout(Duration::from_secs(60), backend.write_all(&message)).await;
    assert!(
        blocked.is_err(),
        "the backend's writes must wait for the client"
    );
    let read_from_backend = outside
        .1
        .counters
        .backend_to_client
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    // The client's pipe holds PIPE bytes; what else the relay read, it holds.
    let held = read_from_backend - PIPE;
    assert!(
        held <= READ_CHUNK,
        "the relay holds {held} bytes for a client that does not read (at most {READ_CHUNK})"
    );
    assert!(read_from_backend > PIPE, "the relay forwarded nothing");
    drop(client);
}

/// A side over its fair share is read no faster than the share allows (paused time: the
/// relay's clock is the test's).
#[tokio::test(start_paused = true)]
async fn a_side_over_its_share_is_read_at_its_rate_then_closed_with_1008() {
    over_its_share(masked(opcode::TEXT, b"flood")).await;
}

/// Pings count toward a messages share as messages do: a ping flood reached the backend
/// unslowed on a route with only `client_messages_per_sec`.
#[tokio::test(start_paused = true)]
async fn pings_count_toward_a_messages_share() {
    over_its_share(masked(opcode::PING, b"flood")).await;
}

/// 100 copies of the client frame `one` at once on a share of 10 a second, then one more.
async fn over_its_share(one: Vec<u8>) {
    let (client, client_side) = duplex(1 << 20);
    let (backend_side, mut backend) = duplex(1 << 20);
    let outside = Outside(Control::default(), Arc::default());
    let cfg = SessionConfig {
        ping_interval: None,
        rates: client_share(10, Duration::from_secs(3)),
        ..SessionConfig::default()
    };
    let (ctl, link) = (outside.0.clone(), outside.1.clone());
    let task = tokio::spawn(async move {
        relay(
            (client_side, Bytes::new()),
            (backend_side, Bytes::new()),
            test_env(cfg, &ctl, &link),
            0,
        )
        .await
    });
    // 100 messages at once, 10 times the rate: they come in one read, which is forwarded
    // whole (the relay does not hold bytes it has read), and the client owes 9 s.
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let flood: Vec<u8> = (0..100).flat_map(|_| one.clone()).collect();
    client_write.write_all(&flood).await.unwrap();
    let mut got = vec![0u8; flood.len()];
    backend.read_exact(&mut got).await.unwrap();
    let started = Instant::now();
    // Held: this one is not read while the debt runs, and the grace (3 s) ends first.
    client_write.write_all(&one).await.unwrap();
    // The client gets 1008 "rate limit" when the grace ends.
    let mut head = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), client_read.read_exact(&mut head))
        .await
        .expect("no close frame for the client")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(head[0], 0x88);
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), 1008);
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "closed after {waited:?}, the grace is 3 s"
    );
    // The backend's next frame is the proxy's close (1001), not the held message.
    let mut head = [0u8; 2];
    backend.read_exact(&mut head).await.unwrap();
    assert_eq!(
        head[0], 0x88,
        "the held message must not have been forwarded"
    );
    let mut rest = vec![0u8; 4 + (head[1] & 0x7f) as usize];
    backend.read_exact(&mut rest).await.unwrap();
    let code = u16::from_be_bytes([rest[0] ^ rest[4], rest[1] ^ rest[5]]);
    assert_eq!(code, 1001);
    drop((client_read, client_write, backend));
    assert_eq!(task.await.unwrap().outcome().as_str(), "rate_limited");
}

/// A leg that counts its reads that came back `Pending`.
struct CountingLeg {
    io: tokio::io::DuplexStream,
    pending_reads: Arc<std::sync::atomic::AtomicUsize>,
}

impl AsyncRead for CountingLeg {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if r.is_pending() {
            self.pending_reads.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for CountingLeg {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Leg for CountingLeg {}

#[tokio::test]
async fn a_turn_reads_a_side_with_nothing_to_read_once() {
    use std::sync::atomic::AtomicUsize;
    let (mut client, client_side) = duplex(1024);
    let (backend_side, mut backend) = duplex(1024);
    let (c_pending, b_pending) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let leg = |io, pending_reads: &Arc<AtomicUsize>| CountingLeg {
        io,
        pending_reads: pending_reads.clone(),
    };
    let (control, link) = (Control::default(), Arc::default());
    let cfg = SessionConfig {
        ping_interval: None,
        ..SessionConfig::default()
    };
    let mut relay = relay(
        (leg(client_side, &c_pending), Bytes::new()),
        (leg(backend_side, &b_pending), Bytes::new()),
        test_env(cfg, &control, &link),
        0,
    );
    let mut turn = || {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut relay).poll(&mut cx).is_pending());
        (
            c_pending.load(Ordering::Relaxed),
            b_pending.load(Ordering::Relaxed),
        )
    };
    assert_eq!(turn(), (1, 1));
    // A frame from the client: the turn forwards it, which makes progress and runs both
    // sides again, but a side whose read came back `Pending` in this turn is not read again
    // (its waker is registered: the wake comes when there is something to read).
    let frame = masked(opcode::BINARY, b"hello");
    client.write_all(&frame).await.unwrap();
    assert_eq!(turn(), (2, 2));
    let mut got = vec![0u8; frame.len()];
    backend.read_exact(&mut got).await.unwrap();
    assert_eq!(got, frame);
}

/// Counts the wakes of a relay polled by hand.
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A ping queued for a side that cannot have it yet (the stream into it is inside a frame)
/// waits for it without a timer: once that side has sent something and its next ping is
/// due, a deadline already past would fire at once, again and again, and the turn would
/// spin on its timer until tokio's budget stopped it.
#[tokio::test(start_paused = true)]
async fn a_ping_held_back_by_a_frame_does_not_spin_the_timers() {
    use std::sync::atomic::AtomicUsize;
    let (mut client, mut backend, mut relay) = relay_by_hand(pings_only(Duration::from_secs(60)));
    let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
    let waker = std::task::Waker::from(wakes.clone());
    let mut turn = || {
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut relay).poll(&mut cx).is_pending());
    };
    turn();
    // The backend starts a 1,000-byte message and sends 10 bytes of it: the client's stream
    // is now inside a frame, where no ping may go.
    backend
        .write_all(&[0x82, 126, 0x03, 0xe8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        .await
        .unwrap();
    turn();
    tokio::time::advance(Duration::from_millis(1100)).await;
    turn(); // both pings due: the backend's is written, the client's held back
    turn();
    // The client answers by sending a message (it counts as heard), and goes quiet for
    // another ping interval.
    client
        .write_all(&masked(opcode::BINARY, b"still here"))
        .await
        .unwrap();
    turn();
    tokio::time::advance(Duration::from_millis(1100)).await;
    tokio::task::yield_now().await;
    wakes.0.store(0, Ordering::Relaxed);
    turn();
    // A spinning turn ends only when tokio's budget runs out, which wakes the task to run it
    // again; a settled one leaves nothing to wake it before the backend's pong deadline.
    tokio::task::yield_now().await;
    assert_eq!(wakes.0.load(Ordering::Relaxed), 0, "the turn woke itself");
}

/// A side held back by its fair share stays held when a read of it is stopped by the task's
/// budget rather than by an end of input: its grace runs on, it is not restarted.
#[tokio::test(start_paused = true)]
async fn a_read_stopped_by_the_task_budget_does_not_restart_the_grace() {
    let (mut client, _backend, mut relay) = relay_by_hand(SessionConfig {
        ping_interval: None,
        rates: client_share(1, Duration::from_secs(10)),
        ..SessionConfig::default()
    });
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // Three messages at once, over a share of one a second: read, then held from now on.
    let one = masked(opcode::BINARY, b"m");
    client
        .write_all(&[&one[..], &one, &one].concat())
        .await
        .unwrap();
    assert!(Pin::new(&mut relay).poll(&mut cx).is_pending());
    let held_at = Instant::now();
    client.write_all(&one).await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    // The share allows a read again, but the task's budget is spent: the read comes back
    // Pending with input still waiting.
    std::future::poll_fn(|task_cx| {
        for _ in 0..1000 {
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
            if let Poll::Ready(spent) = tokio::task::coop::poll_proceed(task_cx) {
                spent.made_progress();
            }
        }
        assert!(!tokio::task::coop::has_budget_remaining());
        assert!(Pin::new(&mut relay).poll(&mut cx).is_pending());
        Poll::Ready(())
    })
    .await;
    let fair = relay.st.fair.as_ref().expect("the route sets a share");
    let end = held_at + Duration::from_secs(10);
    assert_eq!(fair.over_grace(end), Some(CloseSide::Client));
}

/// Polls a relay made by [`relay_by_hand`] (or `_over`) once, with no waker to wake; it must not end.
fn still_running<L: Leg>(relay: &mut Relay<L, L>) {
    assert!(poll_once(relay).is_pending(), "the session ended");
}

/// Eight turns of a relay made by [`relay_by_hand`] (or `_over`), each polled once and
/// followed by a yield, so the tasks at the pipes' other ends move between them; the session
/// must not end.
async fn running_turns<L: Leg>(relay: &mut Relay<L, L>) {
    for _ in 0..8 {
        still_running(relay);
        tokio::task::yield_now().await;
    }
}

/// As [`running_turns`], but says whether the session ended in one of the eight turns.
async fn ended_in_turns<L: Leg>(relay: &mut Relay<L, L>) -> bool {
    let mut ended = false;
    for _ in 0..8 {
        ended |= poll_once(relay).is_ready();
        tokio::task::yield_now().await;
    }
    ended
}

/// Polls a relay made by [`relay_by_hand`] (or `_over`) once, with no waker to wake.
fn poll_once<L: Leg>(relay: &mut Relay<L, L>) -> Poll<()> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    Pin::new(relay).poll(&mut cx).map(|_| ())
}

/// Whatever `pipe` holds now, without waiting.
async fn available<R: tokio::io::AsyncRead + Unpin>(pipe: &mut R) -> Vec<u8> {
    use futures_util::FutureExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Some(Ok(n)) = pipe.read(&mut chunk).now_or_never() {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// A ping held back while a long frame streams into its side has its pong deadline from
/// when it goes out, not from when it came due: a live but quiet client receiving one slow
/// frame for longer than `ping_interval + pong_timeout` is not taken for dead (it could not
/// have had the ping, let alone answered it).
#[tokio::test(start_paused = true)]
async fn a_ping_held_back_by_a_long_frame_is_timed_from_when_it_goes_out() {
    let (mut client, mut backend, mut relay) = relay_by_hand(pings_only(Duration::from_secs(1)));
    let mut turn = || still_running(&mut relay);
    turn();
    // The backend starts a 1,000-byte message, 10 bytes at a time, one step every 400 ms:
    // it is alive (it sends), and the client, quiet, is inside that frame all along.
    backend.write_all(&[0x82, 126, 0x03, 0xe8]).await.unwrap();
    let mut sent = 0;
    for _ in 0..10 {
        backend.write_all(&[7u8; 10]).await.unwrap();
        sent += 10;
        turn();
        tokio::time::advance(Duration::from_millis(400)).await;
        turn();
    }
    // Four seconds in, twice the client's `ping_interval + pong_timeout`: nothing but the
    // frame so far has gone to the client (no close frame).
    let so_far = available(&mut client).await;
    assert_eq!(
        so_far.len(),
        4 + sent,
        "{:02x?}",
        &so_far[..so_far.len().min(8)]
    );
    backend.write_all(&[7u8; 900]).await.unwrap();
    turn();
    turn();
    // The frame's end lets the ping through; the client answers it.
    let rest = available(&mut client).await;
    assert!(rest.len() > 900, "{} bytes", rest.len());
    assert_eq!(
        &rest[900..902],
        [0x89, 12],
        "a ping follows the frame, not a close: {:02x?}",
        &rest[900..]
    );
    assert_eq!(rest.len(), 900 + 2 + 12);
    client
        .write_all(&masked(opcode::PONG, &rest[902..]))
        .await
        .unwrap();
    turn();
    tokio::time::advance(Duration::from_millis(1500)).await;
    turn();
    let after = available(&mut client).await;
    assert!(
        after.iter().all(|&b| b != 0x88) || after.is_empty(),
        "the client was closed: {after:02x?}"
    );
    assert!(after.is_empty() || after[0] == 0x89, "{after:02x?}");
}

/// The side that broke the protocol gets its close frame once the other side has answered
/// the proxy's close, or after [`OFFENDER_HOLD`] if it does not: a backend that never
/// answers cannot leave the client without its 1002 (it would see only the TCP close at the
/// closing handshake's deadline, a 1006).
#[tokio::test(start_paused = true)]
async fn the_offender_gets_its_close_even_when_the_other_side_never_answers() {
    let (mut client, mut backend, mut relay) = relay_by_hand(SessionConfig {
        ping_interval: None,
        hibernate_after: None,
        ..SessionConfig::default()
    });
    let mut turn = || still_running(&mut relay);
    turn();
    // An unmasked frame from the client: a protocol error.
    client.write_all(&plain(opcode::TEXT, b"hi")).await.unwrap();
    turn();
    let to_backend = available(&mut backend).await;
    assert_eq!(to_backend.first(), Some(&0x88), "a close to the backend");
    assert!(
        available(&mut client).await.is_empty(),
        "held while the backend may answer"
    );
    // The backend says nothing.
    tokio::time::advance(OFFENDER_HOLD + Duration::from_millis(10)).await;
    turn();
    turn();
    let to_client = available(&mut client).await;
    assert!(
        to_client.len() >= 4,
        "no close frame for the client: {to_client:02x?}"
    );
    assert_eq!(&to_client[..1], [0x88], "{to_client:02x?}");
    assert_eq!(&to_client[2..4], [0x03, 0xea], "1002 to the client");
    // Its connection failed (RFC 6455 §7.1.7), it has nothing to answer that could be read:
    // its FIN follows the close frame, while the backend still has its closing handshake's
    // time. (It waited for the backend, up to the deadline.)
    turn();
    use futures_util::FutureExt;
    let mut byte = [0u8; 1];
    let read = client.read(&mut byte).now_or_never();
    assert!(
        matches!(read, Some(Ok(0))),
        "no FIN after the 1002: {read:?}"
    );
}

/// A side the relay stops reading because the other side does not take what it sent is
/// not taken for dead: a pong would wait behind its own data, unread. Here the backend
/// floods a client that reads a little at a time for longer than `ping_interval +
/// pong_timeout`: the backend is neither pinged nor closed, and every byte reaches the
/// client.
#[tokio::test(start_paused = true)]
async fn a_side_held_back_by_a_slow_reader_is_not_taken_for_dead() {
    let (mut client, backend, mut relay) = relay_by_hand(pings_only(Duration::from_secs(1)));
    let message = plain(opcode::BINARY, &[7u8; 60_000]);
    const MESSAGES: usize = 12;
    let (mut backend_rx, mut backend_tx) = tokio::io::split(backend);
    let writer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            backend_tx.write_all(&message).await.unwrap();
        }
        backend_tx
    });
    running_turns(&mut relay).await;
    // The pipes are full: the relay holds a read and has stopped reading the backend. The
    // client takes a little every 400 ms, for 2.8 s: past `ping_interval + pong_timeout`.
    // (One that takes nothing at all for that long is dead:
    // `a_leg_that_stops_reading_mid_frame_is_found_dead`.)
    let mut got = Vec::new();
    let mut some = [0u8; 4096];
    for _ in 0..7 {
        tokio::time::advance(Duration::from_millis(400)).await;
        if let Some(Ok(n)) = futures_util::FutureExt::now_or_never(client.read(&mut some)) {
            got.extend_from_slice(&some[..n]);
        }
        running_turns(&mut relay).await;
    }
    assert!(!got.is_empty());
    let to_backend = available(&mut backend_rx).await;
    assert!(
        to_backend.is_empty(),
        "held back, the backend got {to_backend:02x?}"
    );
    // The client reads the rest: all of it, no close frame.
    let want = MESSAGES * (4 + 60_000);
    for _ in 0..1000 {
        if got.len() >= want {
            break;
        }
        got.extend(available(&mut client).await);
        running_turns(&mut relay).await;
    }
    assert!(
        got.len() >= want,
        "the client got {} of {want} bytes, ending {:02x?}",
        got.len(),
        &got[got.len().saturating_sub(26)..]
    );
    let (data, after) = got.split_at(want);
    assert!(
        data.chunks(4 + 60_000)
            .all(|m| m[0] == 0x82 && m[4..].iter().all(|&b| b == 7))
    );
    // The client, quiet all along, may have its own ping by now; no close.
    assert!(
        after.is_empty() || after[0] == 0x89 && after.len() == 14,
        "{after:02x?}"
    );
    let _backend_tx = writer.await.unwrap();
    still_running(&mut relay);
}

/// A leg that stops reading in the middle of a frame streaming into it is found dead: its
/// ping waits behind that frame, and while it takes nothing of it the pong's deadline runs
/// from when the ping came due. It was never pinged, so never found dead: the session, the
/// other side (unread, so its close or reset unseen) and the buffers were held for ever.
#[tokio::test(start_paused = true)]
async fn a_leg_that_stops_reading_mid_frame_is_found_dead() {
    let (client, backend, mut relay) =
        relay_by_hand_over(pings_only(Duration::from_secs(1)), TcpLike);
    // The backend reads nothing; the client sends one message more than the pipes hold.
    let _backend = backend;
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let message = masked(opcode::BINARY, &vec![7u8; 300_000]);
    let writer = tokio::spawn(async move {
        let _ = client_tx.write_all(&message).await;
        client_tx
    });
    assert!(!ended_in_turns(&mut relay).await);
    // The backend's ping comes due at 1 s and cannot go out; it has taken nothing for
    // `ping_interval` and twice `pong_timeout` by 4 s.
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(500)).await;
        ended_in_turns(&mut relay).await;
    }
    let close = available(&mut client_rx).await;
    assert!(close.len() >= 4, "no close for the client: {close:02x?}");
    assert_eq!(&close[..1], [0x88], "{close:02x?}");
    assert_eq!(&close[2..4], 1001u16.to_be_bytes(), "{close:02x?}");
    assert_eq!(&close[4..], b"backend not responding");
    writer.abort();
}

/// A leg that took every byte of a slow frame straight away for longer than `pong_timeout`
/// (its ping waiting behind the frame all along), then is briefly slower than the sender
/// (one write waits), is not taken for dead at once: its deadline runs from when its output
/// is first stuck. (Found by review: a leg with no kernel check, as an HTTP/2 stream, was
/// closed at its first full write.)
#[tokio::test(start_paused = true)]
async fn a_leg_taking_everything_then_briefly_full_is_not_dead() {
    use futures_util::FutureExt;
    let (client, backend, mut relay) = relay_by_hand(pings_only(Duration::from_secs(1)));
    let (mut backend_rx, _backend_tx) = tokio::io::split(backend);
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let whole = masked(opcode::BINARY, &vec![7u8; 300_000]);
    let mut sent = 0;
    let mut chunk = vec![0u8; 1 << 17];
    // 1 KiB every 200 ms for 3 s; the backend reads all of it each time.
    for _ in 0..15 {
        client_tx
            .write_all(&whole[sent..sent + 1024])
            .await
            .unwrap();
        sent += 1024;
        running_turns(&mut relay).await;
        while let Some(Ok(n)) = backend_rx.read(&mut chunk).now_or_never() {
            if n == 0 {
                break;
            }
        }
        tokio::time::advance(Duration::from_millis(200)).await;
        running_turns(&mut relay).await;
    }
    // A burst: 120 KiB, more than the pipes hold; the backend reads it 100 ms later.
    let burst = whole[sent..sent + 120_000].to_vec();
    let writer = tokio::spawn(async move { client_tx.write_all(&burst).await.map(|_| client_tx) });
    running_turns(&mut relay).await;
    tokio::time::advance(Duration::from_millis(100)).await;
    running_turns(&mut relay).await;
    let to_client = available(&mut client_rx).await;
    assert!(
        to_client.is_empty(),
        "the client got {to_client:02x?} (the backend taken for dead)"
    );
    writer.abort();
}

/// The same leg, reading slowly: each write it takes moves its deadline on, so a reader that
/// keeps taking the frame, however slowly, is not taken for dead.
#[tokio::test(start_paused = true)]
async fn a_leg_that_reads_a_frame_slowly_is_not_taken_for_dead() {
    use futures_util::FutureExt;
    let (client, backend, mut relay) =
        relay_by_hand_over(pings_only(Duration::from_secs(1)), TcpLike);
    let (mut backend_rx, _backend_tx) = tokio::io::split(backend);
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let message = masked(opcode::BINARY, &vec![7u8; 300_000]);
    let writer = tokio::spawn(async move {
        let _ = client_tx.write_all(&message).await;
        client_tx
    });
    running_turns(&mut relay).await;
    // 8 KiB every 400 ms, for 4 s: four times the ping's interval and deadline.
    let mut chunk = vec![0u8; 8192];
    let mut got = 0;
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(400)).await;
        if let Some(Ok(n)) = backend_rx.read(&mut chunk).now_or_never() {
            got += n;
        }
        running_turns(&mut relay).await;
    }
    assert!(got > 0);
    let to_client = available(&mut client_rx).await;
    assert!(to_client.is_empty(), "the client got {to_client:02x?}");
    writer.abort();
}

/// `idle` counts data, not only whole messages: a message streaming for longer than `idle`
/// is no idle session (the doc's "without data in either direction").
#[tokio::test(start_paused = true)]
async fn a_message_streaming_for_longer_than_idle_is_not_idle() {
    let (mut client, mut backend, mut relay) = relay_by_hand(SessionConfig {
        ping_interval: None,
        idle_timeout: Some(Duration::from_secs(1)),
        max_lifetime: None,
        hibernate_after: None,
        ..SessionConfig::default()
    });
    let mut turn = || still_running(&mut relay);
    turn();
    // A 1,000-byte message, 100 bytes every 400 ms: 4 s for one message.
    backend.write_all(&[0x82, 126, 0x03, 0xe8]).await.unwrap();
    for _ in 0..10 {
        backend.write_all(&[7u8; 100]).await.unwrap();
        turn();
        tokio::time::advance(Duration::from_millis(400)).await;
        turn();
    }
    let got = available(&mut client).await;
    assert_eq!(
        got.len(),
        4 + 1000,
        "{:02x?}",
        &got[got.len().saturating_sub(16)..]
    );
    // Then a second message within `idle` of the first one's last bytes: still open.
    tokio::time::advance(Duration::from_millis(500)).await;
    backend
        .write_all(&plain(opcode::TEXT, b"after"))
        .await
        .unwrap();
    turn();
    assert_eq!(available(&mut client).await, plain(opcode::TEXT, b"after"));
}

/// A leg that finishes as plain TCP does: no shutdown once its closing handshake is over,
/// its FIN at `send_fin` or when dropped.
struct TcpLike(tokio::io::DuplexStream);

impl AsyncRead for TcpLike {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpLike {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Leg for TcpLike {
    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        Poll::Ready(Ok(true))
    }

    fn send_fin(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = Pin::new(&mut self.0).poll_shutdown(&mut cx);
    }

    fn done_once_answered(&self) -> bool {
        true
    }
}

/// `pipe` has neither bytes nor its end to read now.
fn assert_open(pipe: &mut tokio::io::DuplexStream, why: &str) {
    use futures_util::FutureExt;
    let mut byte = [0u8; 1];
    assert!(pipe.read(&mut byte).now_or_never().is_none(), "{why}");
}

/// A backend whose close frame RFC 6455 forbids (code 1005) has sent its close: once it has
/// the proxy's 1002 the relay lets it go, but the client, told 1014, keeps its connection
/// until it answers (or the closing handshake's deadline), as after any other violation; its
/// FIN does not come with the offender's.
#[tokio::test(start_paused = true)]
async fn the_side_not_at_fault_keeps_its_connection_until_it_answers() {
    let (mut client, mut backend, mut relay) = closing_relay();
    let mut turn = || poll_once(&mut relay);
    assert!(turn().is_pending());
    backend
        .write_all(&plain(opcode::CLOSE, &[0x03, 0xed]))
        .await
        .unwrap();
    assert!(turn().is_pending());
    assert_eq!(read_close(&mut client).await.0, Some(1014));
    tokio::time::advance(OFFENDER_HOLD + Duration::from_millis(10)).await;
    assert!(turn().is_pending());
    assert!(turn().is_pending());
    assert_eq!(read_close(&mut backend).await.0, Some(1002));
    // The client has not answered: no FIN for it yet.
    assert_open(
        &mut client,
        "the client's connection ended before its answer",
    );
    client
        .write_all(&masked(opcode::CLOSE, &[0x03, 0xf6]))
        .await
        .unwrap();
    assert!(turn().is_ready(), "the session goes on after both closes");
    drop(relay);
    assert_eq!(client.read(&mut [0u8; 1]).await.unwrap(), 0);
}

/// The backend breaks the framing; the client answers its 1014 at once; the backend, told
/// 1002 then, answers and closes its TCP later: the session ends at that EOF, not at the
/// closing handshake's deadline.
#[tokio::test(start_paused = true)]
async fn an_offender_that_answers_and_leaves_ends_the_session_at_its_eof() {
    use futures_util::FutureExt;
    let (mut client, mut backend, mut relay) = closing_relay();
    let mut turn = || poll_once(&mut relay);
    assert!(turn().is_pending());
    // A ping of 126 bytes: a protocol error.
    let mut ping = vec![0x89, 126, 0, 126];
    ping.extend_from_slice(&[b'x'; 126]);
    backend.write_all(&ping).await.unwrap();
    assert!(turn().is_pending());
    assert_eq!(read_close(&mut client).await.0, Some(1014));
    client
        .write_all(&masked(opcode::CLOSE, &[0x03, 0xf6]))
        .await
        .unwrap();
    assert!(turn().is_pending());
    assert!(turn().is_pending());
    assert_eq!(read_close(&mut backend).await.0, Some(1002));
    tokio::time::advance(Duration::from_secs(2)).await;
    backend
        .write_all(&plain(opcode::CLOSE, &[0x03, 0xea]))
        .await
        .unwrap();
    assert!(turn().is_pending());
    // Its EOF, in a turn of its own (the wake-up it brings is the only one).
    backend.shutdown().await.unwrap();
    assert!(
        turn().is_ready(),
        "the session waits on after the offender left"
    );
    let _ = client.read(&mut [0u8; 1]).now_or_never();
}

/// The side whose frames stopped making sense has its connection failed (RFC 6455 §7.1.7):
/// its close frame, then its FIN, without waiting for an answer the relay could not read
/// as one (Autobahn's client drops the connection itself after a second otherwise).
#[tokio::test(start_paused = true)]
async fn the_offender_gets_its_fin_right_after_its_close() {
    use futures_util::FutureExt;
    let (mut client, mut backend, mut relay) = closing_relay();
    let mut turn = || poll_once(&mut relay);
    assert!(turn().is_pending());
    // An unmasked frame from the client: a protocol error.
    client.write_all(&plain(opcode::TEXT, b"hi")).await.unwrap();
    assert!(turn().is_pending());
    assert_eq!(read_close(&mut backend).await.0, Some(1001));
    // The backend answers, and is let go; the client gets its 1002 and its FIN.
    backend
        .write_all(&plain(opcode::CLOSE, &[0x03, 0xe9]))
        .await
        .unwrap();
    assert!(turn().is_pending());
    assert_eq!(read_close(&mut client).await.0, Some(1002));
    let mut byte = [0u8; 1];
    assert_eq!(
        client.read(&mut byte).now_or_never().map(|r| r.unwrap()),
        Some(0),
        "no FIN for the offender after its close"
    );
}

/// A peer found dead by its ping timeout is not waited for: it gets its close frame and its
/// FIN at once, and the session ends as soon as the live side has answered its close, not
/// at the closing handshake's deadline.
#[tokio::test(start_paused = true)]
async fn a_dead_peer_is_not_waited_for() {
    use futures_util::FutureExt;
    let cfg = pings_only(Duration::from_secs(1));
    let (mut client, mut backend, mut relay) = relay_by_hand_over(cfg, TcpLike);
    let mut turn = || poll_once(&mut relay);
    assert!(turn().is_pending());
    tokio::time::advance(Duration::from_millis(1100)).await;
    assert!(turn().is_pending());
    assert!(turn().is_pending());
    // Both sides are pinged; only the client answers.
    let ping = available(&mut client).await;
    assert_eq!((ping.len(), ping[0]), (14, 0x89), "{ping:02x?}");
    client
        .write_all(&masked(opcode::PONG, &ping[2..]))
        .await
        .unwrap();
    assert!(turn().is_pending());
    tokio::time::advance(Duration::from_millis(1100)).await;
    assert!(turn().is_pending());
    assert!(turn().is_pending());
    assert_eq!(
        read_close(&mut client).await,
        (Some(1001), "backend not responding".into())
    );
    // The backend got its ping, then its close and its FIN, with no wait for an answer.
    let mut to_backend = Vec::new();
    let got = backend.read_to_end(&mut to_backend).now_or_never();
    assert!(
        matches!(got, Some(Ok(_))),
        "no FIN for the dead backend; it got {to_backend:02x?}"
    );
    // (Masked toward a backend: a ping of 2 + 4 + 12 bytes.)
    assert_eq!(to_backend[0], 0x89);
    assert_eq!(to_backend.get(18), Some(&0x88), "{to_backend:02x?}");
    // The client answers: the session is over, well before the closing deadline.
    client
        .write_all(&masked(opcode::CLOSE, &[0x03, 0xe9]))
        .await
        .unwrap();
    assert!(turn().is_ready(), "the session waited for the dead backend");
}

/// A message over `max_message` is a policy's refusal, not broken framing: the sender's
/// stream is still followed, so what it sends after is dropped frame by frame, its close
/// reply ends its closing handshake and is recorded, and its FIN comes after that reply.
#[tokio::test]
async fn a_message_over_the_limit_ends_with_a_closing_handshake() {
    let cfg = SessionConfig {
        max_message: Some(100),
        ping_interval: None,
        hibernate_after: None,
        ..SessionConfig::default()
    };
    let (mut client, mut backend, relay) = relay_by_hand_over(cfg, TcpLike);
    let task = tokio::spawn(relay);
    // 200 bytes, then a message sent before the client knew: both dropped.
    let too_big = [
        masked(opcode::BINARY, &[1u8; 200]),
        masked(opcode::TEXT, b"late"),
    ]
    .concat();
    client.write_all(&too_big).await.unwrap();
    answer_the_1009(&mut client, &mut backend, task).await;
    let mut to_backend = Vec::new();
    backend.read_to_end(&mut to_backend).await.unwrap();
    assert_eq!(to_backend, b"", "after the 1001");
}

/// A closing handshake the client started, that the proxy ends itself because the backend
/// sent a message over the limit before its close reply, is the proxy's end: `closed_by`
/// `proxy` beside the outcome and the offender (it stayed `client`).
#[tokio::test]
async fn a_closing_handshake_the_proxy_ends_itself_is_closed_by_the_proxy() {
    let cfg = SessionConfig {
        max_message: Some(100),
        ping_interval: None,
        hibernate_after: None,
        ..SessionConfig::default()
    };
    let (mut client, mut backend, relay) = relay_by_hand_over(cfg, TcpLike);
    let task = tokio::spawn(relay);
    client
        .write_all(&masked(opcode::CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']))
        .await
        .unwrap();
    assert_eq!(read_close(&mut backend).await, (Some(1000), "bye".into()));
    let reply = [
        plain(opcode::BINARY, &[1u8; 200]),
        plain(opcode::CLOSE, &[0x03, 0xe8]),
    ]
    .concat();
    backend.write_all(&reply).await.unwrap();
    let (code, _) = read_close(&mut client).await;
    assert_ne!(code, Some(1000), "the backend's reply was not forwarded");
    drop(backend);
    drop(client);
    let out = task.await.unwrap();
    assert_eq!(out.outcome().as_str(), "message_too_big", "{out:?}");
    assert_eq!(out.closed_by, CloseSide::Proxy, "{out:?}");
}

/// The end of a session whose client sent a message over a limit, then one more: the
/// backend is closed first and answers; then the client gets its 1009, its connection
/// staying open for its reply, and its FIN after that reply. The record has the client's
/// code, its three frames counted (the one over the limit, the late one, the close) and no
/// message.
async fn answer_the_1009(
    client: &mut tokio::io::DuplexStream,
    backend: &mut tokio::io::DuplexStream,
    task: tokio::task::JoinHandle<RelayOutcome>,
) -> RelayOutcome {
    assert_eq!(read_close(backend).await.0, Some(1001));
    backend
        .write_all(&plain(opcode::CLOSE, &[0x03, 0xe9]))
        .await
        .unwrap();
    assert_eq!(read_close(client).await.0, Some(1009));
    client
        .write_all(&masked(opcode::CLOSE, &[0x03, 0xf1]))
        .await
        .unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"", "after the 1009");
    let out = task.await.unwrap();
    assert_eq!(out.outcome().as_str(), "message_too_big");
    assert_eq!(out.client_close.as_ref().and_then(|c| c.code), Some(1009));
    assert_eq!(out.client_to_backend.frames, 3);
    assert_eq!(out.client_to_backend.messages, 0);
    out
}

/// A peer found dead inside a frame toward the other side is read on until that frame ends:
/// the other side's close frame can only follow it. Here the backend stalls half-way through
/// a frame, is taken for dead, then finishes it: the client gets the whole frame, then its
/// 1001, and the session ends at its answer, not at the deadline.
#[tokio::test(start_paused = true)]
async fn a_peer_found_dead_inside_a_frame_is_read_to_its_end() {
    let (mut client, mut backend, mut relay) =
        relay_by_hand_over(pings_only(Duration::from_secs(1)), TcpLike);
    let mut turn = || poll_once(&mut relay);
    assert!(turn().is_pending());
    let frame = plain(opcode::BINARY, &[7u8; 100]);
    backend.write_all(&frame[..50]).await.unwrap();
    assert!(turn().is_pending());
    // The client stays alive (it sends); the backend answers nothing, its ping included.
    for message in [b"x", b"y"] {
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(turn().is_pending());
        client
            .write_all(&masked(opcode::TEXT, message))
            .await
            .unwrap();
        assert!(turn().is_pending());
        assert!(turn().is_pending());
    }
    let to_backend = available(&mut backend).await;
    assert!(
        to_backend.windows(2).any(|w| w == [0x88, 0x80 | 24]),
        "the backend was not closed: {to_backend:02x?}"
    );
    // Alive after all: the rest of its frame reaches the client, then the client's 1001.
    backend.write_all(&frame[50..]).await.unwrap();
    assert!(turn().is_pending());
    assert!(turn().is_pending());
    let got = available(&mut client).await;
    assert_eq!(got[..frame.len()], frame[..], "{got:02x?}");
    let (code, reason) = frame::parse_close(&got[frame.len() + 2..]);
    assert_eq!(
        (got[frame.len()], code, reason.as_str()),
        (0x88, Some(1001), "backend not responding")
    );
    client
        .write_all(&masked(opcode::CLOSE, &[0x03, 0xe9]))
        .await
        .unwrap();
    assert!(turn().is_ready(), "the session waited for the deadline");
}

/// A sender that streams on past its 1009 for more than [`DRAIN_LIMIT`] is read no more: its
/// connection may be reset and its close reply lost, so the record says the session was cut,
/// and why, rather than that its closing handshake simply ended.
#[tokio::test]
async fn a_sender_streaming_past_the_drain_limit_ends_the_session_cut() {
    let cfg = SessionConfig {
        max_message: Some(100),
        ping_interval: None,
        hibernate_after: None,
        ..SessionConfig::default()
    };
    let (client, mut backend, relay) = relay_by_hand_over(cfg, TcpLike);
    let task = tokio::spawn(relay);
    let (mut from_client, mut to_relay) = tokio::io::split(client);
    // A message over the limit, then 64 KiB messages past the drain limit, written until
    // the relay stops reading (its end of the pipe then goes, and the writes fail).
    let flood = tokio::spawn(async move {
        let chunk = masked(opcode::BINARY, &[1u8; 64 * 1024]);
        let mut sent = 0usize;
        let mut write = to_relay
            .write_all(&masked(opcode::BINARY, &[1u8; 200]))
            .await;
        while write.is_ok() && sent <= 2 * DRAIN_LIMIT as usize {
            write = to_relay.write_all(&chunk).await;
            sent += chunk.len();
        }
        (write.is_err(), sent)
    });
    assert_eq!(read_close(&mut backend).await.0, Some(1001));
    backend
        .write_all(&plain(opcode::CLOSE, &[0x03, 0xe9]))
        .await
        .unwrap();
    let out = task.await.unwrap();
    let (stopped, sent) = flood.await.unwrap();
    assert!(stopped, "the relay read all {sent} bytes");
    assert!(sent > DRAIN_LIMIT as usize, "stopped after {sent} bytes");
    let mut to_client = Vec::new();
    from_client.read_to_end(&mut to_client).await.unwrap();
    assert_eq!(frame::parse_close(&to_client[2..]).0, Some(1009));
    assert_eq!(out.outcome().as_str(), "message_too_big");
    assert!(out.cut, "a side read no more, yet not cut");
    let error = out.error.unwrap_or_default();
    assert!(
        error.contains("client kept sending") && error.contains(&DRAIN_LIMIT.to_string()),
        "{error}"
    );
}

/// An inflated size over `max_message_inflated` met in a frame of which nothing has gone on
/// leaves the framing intact, as a message over `max_message` does: the sender's stream is
/// followed on, its close reply ends its closing handshake and is recorded, and its FIN
/// comes after that reply.
#[tokio::test]
async fn a_message_inflating_past_the_limit_ends_with_a_closing_handshake() {
    use std::io::Write;
    let cfg = SessionConfig {
        ping_interval: None,
        hibernate_after: None,
        ..SessionConfig::default()
    };
    let (mut client, client_side) = duplex(1 << 16);
    let (backend_side, mut backend) = duplex(1 << 16);
    let env = test_env(cfg, &Control::default(), &Arc::default());
    let task = tokio::spawn(
        relay(
            (TcpLike(client_side), Bytes::new()),
            (TcpLike(backend_side), Bytes::new()),
            env,
            0b100,
        )
        .count_inflated(Some(crate::deflate::Counting {
            limit: 1 << 10,
            client_takeover: false,
            backend_takeover: false,
        })),
    );
    // 64 KiB of zeros in a few dozen bytes, then a message sent before the client knew.
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&[0u8; 64 << 10]).unwrap();
    e.flush().unwrap();
    let payload = e.get_ref()[..e.get_ref().len() - 4].to_vec();
    let mut bomb = masked(opcode::BINARY, &payload);
    bomb[0] |= 0x40;
    client
        .write_all(&[bomb, masked(opcode::TEXT, b"late")].concat())
        .await
        .unwrap();
    let out = answer_the_1009(&mut client, &mut backend, task).await;
    assert!(!out.cut);
}

/// A side that has sent its close frame is in its closing handshake: it sends nothing more,
/// a pong neither (RFC 6455 §5.5.1), so its unanswered ping does not find it dead and it is
/// not pinged again. The other side's close reply, within the handshake's deadline, still
/// reaches it, and the session ends closed.
#[tokio::test(start_paused = true)]
async fn a_side_that_sent_its_close_is_not_taken_for_dead() {
    let (mut client, mut backend, mut relay) =
        relay_by_hand_over(pings_only(Duration::from_secs(1)), TcpLike);
    still_running(&mut relay);
    tokio::time::advance(Duration::from_millis(1100)).await;
    still_running(&mut relay);
    still_running(&mut relay);
    // Both sides are pinged; the backend answers, the client closes instead.
    let ping = available(&mut client).await;
    assert_eq!((ping.len(), ping[0]), (14, 0x89), "{ping:02x?}");
    let to_backend = available(&mut backend).await;
    assert_eq!(to_backend[0], 0x89, "{to_backend:02x?}");
    let token: Vec<u8> = to_backend[6..18]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ to_backend[2 + i % 4])
        .collect();
    backend
        .write_all(&plain(opcode::PONG, &token))
        .await
        .unwrap();
    client
        .write_all(&masked(opcode::CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']))
        .await
        .unwrap();
    still_running(&mut relay);
    assert_eq!(read_close(&mut backend).await, (Some(1000), "bye".into()));
    // Past the client's pong deadline, and past the next ping's time: nothing for it.
    for _ in 0..3 {
        tokio::time::advance(Duration::from_millis(1100)).await;
        still_running(&mut relay);
        still_running(&mut relay);
    }
    assert_eq!(
        available(&mut client).await,
        b"",
        "the client was sent more"
    );
    // The backend answers late, within the closing handshake's deadline.
    backend
        .write_all(&plain(opcode::CLOSE, &[0x03, 0xe8, b'l', b'a', b't', b'e']))
        .await
        .unwrap();
    // Both closing handshakes are over: the session ends in this turn.
    let out = relay.await;
    assert_eq!(read_close(&mut client).await, (Some(1000), "late".into()));
    assert_eq!(out.outcome(), crate::outcome::Outcome::Closed, "{out:?}");
    assert_eq!(out.closed_by, CloseSide::Client);
    assert!(!out.cut);
}

/// The proxy's close (the backend had gone) waits for the client's reply before its FIN, as
/// RFC 6455 §7.1.1 has the server close TCP after the closing handshake: a client without
/// half-close takes an early FIN for the end and drops its answer. Once the reply has come
/// the closing handshake is over, and the session ends then, not cut, though the client
/// keeps its end open. (It used to be read to its EOF, so a client slow to close its socket
/// held the session, and a drain, to the handshake's deadline, and its record said `cut`.)
#[tokio::test(start_paused = true)]
async fn a_client_that_answered_the_proxys_close_is_not_read_to_its_end() {
    let (mut client, backend, mut relay) = closing_relay();
    still_running(&mut relay);
    // The backend goes away without a close frame.
    drop(backend);
    still_running(&mut relay);
    assert_eq!(
        read_close(&mut client).await,
        (Some(1011), "backend connection lost".into())
    );
    still_running(&mut relay);
    assert_open(&mut client, "the client had its FIN before it could answer");
    // The client answers, and keeps its end open.
    client
        .write_all(&masked(opcode::CLOSE, &[0x03, 0xf3]))
        .await
        .unwrap();
    // (On the paused clock, a session that waited would end at the handshake's deadline.)
    let waited = Instant::now();
    let out = relay.await;
    assert_eq!(
        waited.elapsed(),
        Duration::ZERO,
        "it waited for the client's EOF"
    );
    assert!(!out.cut, "{out:?}");
    assert_eq!(out.outcome(), crate::outcome::Outcome::BackendGone);
    assert_eq!(out.client_close.and_then(|c| c.code), Some(1011));
    drop(client);
}

/// When the proxy ends a session (here `idle`), a side that has not answered its close
/// keeps its connection until it does, though the other side answered and left at once:
/// its FIN came with the other side's end, before a client without half-close could
/// answer. Its answer then ends the session at once, not cut.
#[tokio::test(start_paused = true)]
async fn a_side_the_proxy_closed_gets_its_fin_after_its_answer() {
    let (mut client, mut backend, mut relay) = relay_by_hand_over(
        SessionConfig {
            ping_interval: None,
            idle_timeout: Some(Duration::from_secs(1)),
            max_lifetime: None,
            hibernate_after: None,
            ..SessionConfig::default()
        },
        TcpLike,
    );
    running_turns(&mut relay).await;
    tokio::time::advance(Duration::from_millis(1500)).await;
    running_turns(&mut relay).await;
    let closes = (available(&mut backend).await, available(&mut client).await);
    assert_eq!(&closes.0[..1], [0x88], "{closes:02x?}");
    assert_eq!(&closes.1[..1], [0x88], "{closes:02x?}");
    // The backend answers and leaves; the client is slow to answer.
    backend
        .write_all(&plain(opcode::CLOSE, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    drop(backend);
    running_turns(&mut relay).await;
    assert_open(&mut client, "the client had its FIN before it could answer");
    client
        .write_all(&masked(opcode::CLOSE, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    let waited = Instant::now();
    let out = relay.await;
    assert_eq!(
        waited.elapsed(),
        Duration::ZERO,
        "it waited for the deadline"
    );
    assert!(!out.cut, "{out:?}");
    assert_eq!(out.outcome(), crate::outcome::Outcome::IdleTimeout);
    drop(client);
}

/// A backend that fails the connection: its close frame, then its TCP close at once, as RFC
/// 6455 §7.1.7 allows (Node's `ws` does so on invalid UTF-8). The client gets the close frame
/// but not yet a FIN: it answers, as clients do, and the session ends `closed` with both
/// close codes. With the FIN sent along, a client without half-close (Twisted's, so
/// Autobahn's) dropped its socket unanswered, and the record said `client_gone`.
#[tokio::test(start_paused = true)]
async fn a_backend_that_fails_the_connection_leaves_the_client_its_answer() {
    for backend_drops in [false, true] {
        let (mut client, _backend, relay) = backend_fails_the_connection(backend_drops).await;
        assert_open(&mut client, "the client had its FIN before it could answer");
        let mut byte = [0u8; 1];
        client
            .write_all(&masked(opcode::CLOSE, &[0x03, 0xef]))
            .await
            .unwrap();
        let waited = Instant::now();
        let out = relay.await;
        assert_eq!(waited.elapsed(), Duration::ZERO, "{out:?}");
        assert_eq!(out.outcome(), crate::outcome::Outcome::Closed, "{out:?}");
        assert_eq!(out.closed_by, CloseSide::Backend);
        assert_eq!(out.backend_close.as_ref().and_then(|c| c.code), Some(1007));
        assert_eq!(out.client_close.as_ref().and_then(|c| c.code), Some(1007));
        assert!(!out.cut && out.error.is_none(), "{out:?}");
        assert_eq!(client.read(&mut byte).await.unwrap(), 0);
    }
}

/// The same, toward a client that answers the backend's close with its TCP close alone: that
/// is the client going away, as before.
#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_without_answering_the_backends_close_is_gone() {
    let (client, _backend, relay) = backend_fails_the_connection(false).await;
    drop(client);
    let out = relay.await;
    assert_eq!(
        out.outcome(),
        crate::outcome::Outcome::ClientGone,
        "{out:?}"
    );
    assert_eq!(out.closed_by, CloseSide::Backend);
    assert!(!out.cut, "{out:?}");
}

/// A [`closing_relay`] whose backend sends close 1007 and then shuts its write side (or, with
/// `drops`, drops its end): the client has read that close frame. The backend's end is
/// returned when it was only shut, to be kept open.
async fn backend_fails_the_connection(
    drops: bool,
) -> (
    tokio::io::DuplexStream,
    Option<tokio::io::DuplexStream>,
    Relay<TcpLike, TcpLike>,
) {
    let (mut client, mut backend, mut relay) = closing_relay();
    still_running(&mut relay);
    backend
        .write_all(&plain(opcode::CLOSE, &[0x03, 0xef]))
        .await
        .unwrap();
    let backend = if drops {
        drop(backend);
        None
    } else {
        backend.shutdown().await.unwrap();
        Some(backend)
    };
    still_running(&mut relay);
    still_running(&mut relay);
    assert_eq!(read_close(&mut client).await.0, Some(1007));
    (client, backend, relay)
}

/// A side that leaves inside a frame (its header said 10 bytes, 3 came, then its FIN or its
/// end): the other side, inside that frame, can be sent no close frame, so it has nothing
/// to answer; it gets its TCP close at once and the session ends, not cut. It was held for
/// the closing handshake's 5 s and recorded cut.
#[tokio::test(start_paused = true)]
async fn a_side_that_leaves_inside_a_frame_ends_the_session_at_once() {
    for (leaver, drops) in [
        (CloseSide::Backend, false),
        (CloseSide::Backend, true),
        (CloseSide::Client, false),
        (CloseSide::Client, true),
    ] {
        let (client, backend, relay) = closing_relay();
        let relay = tokio::spawn(relay);
        let (gone, mut other, partial) = if leaver == CloseSide::Backend {
            let mut head = plain(opcode::BINARY, &[7; 10]);
            head.truncate(2 + 3);
            (backend, client, head)
        } else {
            let mut head = masked(opcode::BINARY, &[7; 10]);
            head.truncate(2 + 4 + 3);
            (client, backend, head)
        };
        let mut gone = gone;
        gone.write_all(&partial).await.unwrap();
        // The three bytes reach the other side, and nothing more: no close frame inside the
        // frame, and the FIN at once.
        let mut got = vec![0u8; partial.len()];
        other.read_exact(&mut got).await.unwrap();
        if drops {
            drop(gone);
        } else {
            gone.shutdown().await.unwrap();
        }
        let waited = Instant::now();
        let mut rest = Vec::new();
        other.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{leaver:?}: {rest:?} after the cut frame");
        let out = relay.await.unwrap();
        assert_eq!(
            waited.elapsed(),
            Duration::ZERO,
            "{leaver:?} {drops}: {out:?}"
        );
        assert!(!out.cut, "{leaver:?} {drops}: {out:?}");
        assert_eq!(out.closed_by, leaver, "{out:?}");
    }
}

/// A side's error in the record carries its causes: hyper's HTTP/2 stream errors say only
/// what hyper was doing, and the client's reset (its reason) is their source.
#[test]
fn a_sides_error_names_its_causes() {
    #[derive(Debug)]
    struct Doing(std::io::Error);
    impl std::fmt::Display for Doing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error writing a body to connection")
        }
    }
    impl std::error::Error for Doing {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let reset = std::io::Error::other("stream no longer needed");
    let e = std::io::Error::other(Doing(reset));
    assert_eq!(
        super::side_error(CloseSide::Client, &e),
        "client: error writing a body to connection: stream no longer needed"
    );
    let plain = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        super::side_error(CloseSide::Backend, &plain),
        format!("backend: {plain}")
    );
}

/// A client's clean close that a drain overtakes before the backend's reply is still the
/// client's end (`closed_by` is `client` "when its close frame came first"): only a side at
/// fault makes it the proxy's. (Found by review.)
#[tokio::test]
async fn a_drain_during_a_clients_clean_close_leaves_it_the_clients() {
    let (mut client, mut backend, control, task) = spawn_relay(1024);
    client
        .write_all(&masked(opcode::CLOSE, &[0x03, 0xe8]))
        .await
        .unwrap();
    assert_eq!(read_close(&mut backend).await.0, Some(1000));
    // The backend has not answered yet when the shutdown asks every session to close.
    control.close_with(close_code::GOING_AWAY);
    let _ = read_close(&mut client).await;
    backend
        .write_all(&plain(opcode::CLOSE, &[0x03, 0xe8]))
        .await
        .unwrap();
    drop(client);
    drop(backend);
    let out = task.await.unwrap();
    assert_eq!(out.closed_by, CloseSide::Client, "{out:?}");
}

/// An HTTP/2 stream as hyper hands it over (`UpgradedIo::Hyper`): its writes are taken at
/// once, and a flush waits for the client's flow-control window. A reset (RST_STREAM) ends
/// its reads at once (hyper reads CANCEL as an EOF); the flush waiting fails later, on a
/// wake-up of its own (hyper's send task sees the reset), and flushes after that are done.
struct StreamLike {
    io: tokio::io::DuplexStream,
    state: Arc<StreamState>,
}

#[derive(Default)]
struct StreamState {
    reset: std::sync::atomic::AtomicBool,
    /// 0: the flush waits; 1: it fails (once); 2: it has failed.
    flush: std::sync::atomic::AtomicU8,
    read_waker: std::sync::Mutex<Option<std::task::Waker>>,
    flush_waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl StreamState {
    fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
        if let Some(w) = self.read_waker.lock().unwrap().take() {
            w.wake();
        }
    }

    fn fail_flush(&self) {
        self.flush.store(1, Ordering::SeqCst);
        if let Some(w) = self.flush_waker.lock().unwrap().take() {
            w.wake();
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.flush.load(Ordering::SeqCst) {
            0 => {
                *self.flush_waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
            1 => {
                self.flush.store(2, Ordering::SeqCst);
                Poll::Ready(Err(io::Error::other("stream no longer needed")))
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for StreamLike {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.state.reset.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.state.read_waker.lock().unwrap() = Some(cx.waker().clone());
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for StreamLike {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.state.flush.load(Ordering::SeqCst) != 0 {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.state.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.state.poll_flush(cx)
    }
}

impl Leg for StreamLike {
    fn done_once_answered(&self) -> bool {
        true
    }
}

/// A relay task between a [`StreamLike`] client leg and a [`TcpLike`] backend leg: (client
/// end, backend end, the stream's state, task).
fn stream_relay(
    cfg: SessionConfig,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    Arc<StreamState>,
    tokio::task::JoinHandle<RelayOutcome>,
) {
    let (client, client_side) = duplex(1 << 16);
    let (backend_side, backend) = duplex(1 << 16);
    let state = Arc::new(StreamState::default());
    let env = test_env(cfg, &Control::default(), &Arc::default());
    let leg = StreamLike {
        io: client_side,
        state: state.clone(),
    };
    let task = tokio::spawn(relay(
        (leg, Bytes::new()),
        (TcpLike(backend_side), Bytes::new()),
        env,
        0,
    ));
    (client, backend, state, task)
}

/// An HTTP/2 client resets its stream while the backend's messages wait for its window: the
/// proxy's 1001 goes to the backend, and the session ends with the backend's answer. When
/// the flush into the reset stream failed in a turn of its own, that turn ended without
/// reading the backend, whose reads had waited behind the flush: nothing woke the relay for
/// the answer, and the session lingered the closing handshake's 5 s (about one HTTP/2
/// session in ten reset while echoes flowed).
#[tokio::test(start_paused = true)]
async fn a_reset_http2_stream_whose_flush_fails_later_ends_with_the_backends_answer() {
    let (mut client, mut backend, state, task) = stream_relay(SessionConfig {
        ping_interval: None,
        hibernate_after: None,
        ..SessionConfig::default()
    });
    // An echo under way: the backend's message is written into the stream, whose flush
    // waits for the client's window.
    let hello = masked(opcode::BINARY, b"hello");
    client.write_all(&hello).await.unwrap();
    let mut got = vec![0u8; hello.len()];
    backend.read_exact(&mut got).await.unwrap();
    backend
        .write_all(&plain(opcode::BINARY, b"hello"))
        .await
        .unwrap();
    let mut echo = [0u8; 7];
    client.read_exact(&mut echo).await.unwrap();
    // The next echo wakes the relay, which leaves it unread behind the flush.
    backend
        .write_all(&plain(opcode::BINARY, b"again"))
        .await
        .unwrap();
    tokio::task::yield_now().await;
    // The client resets the stream: its read ends, and the backend gets the proxy's 1001.
    state.reset();
    assert_eq!(read_close(&mut backend).await.0, Some(1001));
    // The flush into the reset stream fails on a wake-up of its own; then the backend
    // answers the 1001 and closes.
    state.fail_flush();
    tokio::task::yield_now().await;
    backend
        .write_all(&plain(opcode::CLOSE, &[0x03, 0xe9]))
        .await
        .unwrap();
    backend.shutdown().await.unwrap();
    let waited = Instant::now();
    let out = task.await.unwrap();
    assert_eq!(waited.elapsed(), Duration::ZERO, "{out:?}");
    assert_eq!(out.closed_by, CloseSide::Client, "{out:?}");
    assert_eq!(out.backend_close.as_ref().and_then(|c| c.code), Some(1001));
    assert!(!out.cut, "{out:?}");
}

/// A side whose close frame the other side never answers gets the proxy's answer when the
/// closing handshake's deadline ends the session: its own code echoed (RFC 6455 §5.5.1), then
/// the FIN. It got the FIN alone, and its library reported an abnormal closure (1006).
#[tokio::test(start_paused = true)]
async fn a_close_the_other_side_never_answers_is_answered_at_the_deadline() {
    // The client closes; the backend takes the close frame and says nothing.
    let (mut client, mut backend, _outside, task) = spawn_relay(1024);
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    client
        .write_all(&masked(opcode::CLOSE, &payload))
        .await
        .unwrap();
    assert_eq!(
        read_close(&mut backend).await,
        (Some(1000), "bye".to_string())
    );
    let started = Instant::now();
    assert_eq!(
        read_close(&mut client).await,
        (Some(1000), "backend did not answer".to_string())
    );
    let waited = started.elapsed();
    assert!(
        waited >= CLOSE_TIMEOUT && waited < CLOSE_TIMEOUT * 2,
        "{waited:?}"
    );
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let out = task.await.unwrap();
    assert_eq!(out.outcome().as_str(), "close_timeout");
    assert!(out.cut, "{out:?}");
    drop(backend);

    // The backend closes (without a code); the client never answers.
    let (mut client, mut backend, _outside, task) = spawn_relay(1024);
    backend.write_all(&plain(opcode::CLOSE, &[])).await.unwrap();
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(head, [0x88, 0]);
    assert_eq!(read_close(&mut backend).await, (None, String::new()));
    let out = task.await.unwrap();
    assert_eq!(out.outcome().as_str(), "close_timeout");
    drop(client);
}

/// An HTTP/2 client that grants no window: what the relay writes into its stream is taken
/// (hyper buffers it) but never flushed, and the backend is not read meanwhile. The backend
/// is held back, as it is behind a TCP client's full socket: not pinged, not taken for dead.
/// The client, whose own pong cannot come through its closed window either, is. The backend
/// had been blamed (`backend_ping_timeout`, its connection closed with "backend not
/// responding") while it answered every ping.
#[tokio::test(start_paused = true)]
async fn a_backend_behind_an_unflushed_http2_stream_is_not_taken_for_dead() {
    let (_client, mut backend, _state, task) = stream_relay(pings_only(Duration::from_secs(2)));
    backend
        .write_all(&plain(opcode::BINARY, &[7u8; 1000]))
        .await
        .unwrap();
    // The backend answers every ping it gets; it is read only if the relay reads it.
    let answering = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = backend.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some((op, payload)) = take_masked(&mut buf) {
                if op == opcode::PING {
                    let _ = backend.write_all(&plain(opcode::PONG, &payload)).await;
                }
            }
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the session did not end")
        .unwrap();
    answering.abort();
    assert_eq!(
        out.proxy_reason,
        Some(Reason::PingTimeout(CloseSide::Client)),
        "{out:?}"
    );
}

/// One masked frame (toward a backend) off the front of `buf`: opcode and unmasked payload.
fn take_masked(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let len = usize::from(buf[1] & 0x7f);
    assert!(len < 126 && buf[1] & 0x80 != 0, "{buf:?}");
    if buf.len() < 6 + len {
        return None;
    }
    let mask = [buf[2], buf[3], buf[4], buf[5]];
    let payload = buf[6..6 + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    let op = buf[0] & 0x0f;
    buf.drain(..6 + len);
    Some((op, payload))
}
