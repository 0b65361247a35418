//! One slot of the soak: sessions one after another until the deadline, each with its own
//! plan (clean, reset or slow reader), every echo checked for content and order.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use super::payload::{self, derive, Profile, Rng};
use crate::common::{Target, Ws};

type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

/// A slow reader gets bursts of this many bulk messages (about 0.6 MiB), so the bytes it has
/// not read yet overflow the kernel's socket buffers and wait in the proxy.
const SLOW_BURST: u64 = 16;
/// The receive buffer of a slow reader's socket: small, so the kernel does not absorb what
/// the proxy should be holding back.
const SLOW_RCVBUF: u32 = 16 * 1024;
/// How long a reset session's last writes may take before the socket is dropped anyway.
const RESET_WRITE: Duration = Duration::from_secs(1);
/// Errors described in full in the report; the rest are only counted.
const ERRORS_KEPT: usize = 20;

/// What the soak does, fixed for a run.
pub struct Ctx {
    pub target: Target,
    pub ws_config: WebSocketConfig,
    pub seed: u64,
    pub deadline: Instant,
    pub stall: Duration,
    pub connect_timeout: Duration,
    pub think: Duration,
    pub max_size: usize,
    pub reset_share: f64,
    pub slow_share: f64,
    pub connects: Semaphore,
    pub next_id: AtomicU64,
    pub counters: Counters,
    pub errors: Errors,
}

/// What happened so far, read by the sampler while sessions run.
#[derive(Default)]
pub struct Counters {
    pub opened: AtomicU64,
    pub active: AtomicU64,
    pub clean: AtomicU64,
    pub reset: AtomicU64,
    pub slow: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_echoed: AtomicU64,
    pub bytes_echoed: AtomicU64,
    pub pongs: AtomicU64,
    pub connect_failed: AtomicU64,
    pub corrupted: AtomicU64,
    pub lost: AtomicU64,
    pub failed: AtomicU64,
}

impl Counters {
    pub fn errors(&self) -> u64 {
        self.connect_failed.load(Relaxed) + self.failed.load(Relaxed)
    }
}

/// Every unexpected event: counted, and the first few described.
#[derive(Default)]
pub struct Errors {
    first: Mutex<Vec<String>>,
}

impl Errors {
    pub fn note(&self, what: String) {
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.len() < ERRORS_KEPT {
            first.push(what);
        }
    }

    pub fn first(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Bursts of mixed messages with pauses, pings now and then, a close handshake.
    Clean,
    /// Like Clean, then at burst `at` the TCP connection is dropped without a close frame:
    /// with a reset (SO_LINGER 0) or a FIN, with or without messages in flight.
    Reset { at: u32, in_flight: bool, rst: bool },
    /// Bursts of bulk messages read at `rate` bytes per second, then a close handshake.
    Slow { rate: u64 },
}

struct Plan {
    kind: Kind,
    bursts: u32,
    close: CloseFrame,
}

fn plan(ctx: &Ctx, rng: &mut Rng) -> Plan {
    let r = rng.range(0, 999) as f64 / 1000.0;
    let bursts = rng.range(1, 30) as u32;
    let kind = if r < ctx.slow_share {
        Kind::Slow {
            rate: rng.range(64, 256) * 1024,
        }
    } else if r < ctx.slow_share + ctx.reset_share {
        Kind::Reset {
            at: rng.range(0, u64::from(bursts) - 1) as u32,
            in_flight: rng.chance(0.5),
            rst: rng.chance(0.5),
        }
    } else {
        Kind::Clean
    };
    let bursts = if matches!(kind, Kind::Slow { .. }) {
        rng.range(2, 4) as u32
    } else {
        bursts
    };
    Plan {
        kind,
        bursts,
        close: close_frame(rng),
    }
}

/// Mostly 1000; sometimes 1001, or an application code with a reason in several scripts.
fn close_frame(rng: &mut Rng) -> CloseFrame {
    match rng.range(0, 9) {
        0 => CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        },
        1 | 2 => CloseFrame {
            code: CloseCode::from(rng.range(4000, 4999) as u16),
            reason: "soak: fin ✓ Ende 終わり".into(),
        },
        _ => CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        },
    }
}

/// Sessions one after another until the deadline.
pub async fn slot(ctx: std::sync::Arc<Ctx>, start: Instant) {
    sleep_until(start).await;
    while Instant::now() < ctx.deadline {
        let id = ctx.next_id.fetch_add(1, Relaxed);
        if !run(&ctx, id).await {
            // Do not spin on a gateway that refuses: the failure is already counted.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One session; false if it could not be opened.
async fn run(ctx: &Ctx, id: u64) -> bool {
    let mut rng = Rng::new(derive(ctx.seed, id));
    let plan = plan(ctx, &mut rng);
    let ws = match connect(ctx, &plan).await {
        Ok(ws) => ws,
        Err(e) => {
            ctx.counters.connect_failed.fetch_add(1, Relaxed);
            ctx.errors.note(format!("session {id}: {e}"));
            return false;
        }
    };
    let c = &ctx.counters;
    c.opened.fetch_add(1, Relaxed);
    c.active.fetch_add(1, Relaxed);
    let mut s = Session {
        ctx,
        id,
        stream: derive(ctx.seed ^ 0x5eed, id),
        profile: match plan.kind {
            Kind::Slow { .. } => Profile::Bulk { max: ctx.max_size },
            _ => Profile::Mixed { max: ctx.max_size },
        },
        sent: 0,
        echoed: 0,
    };
    let r = s.drive(ws, &plan, &mut rng).await;
    c.active.fetch_sub(1, Relaxed);
    let ended = match r {
        Ok(Ended::Closed) if matches!(plan.kind, Kind::Slow { .. }) => &c.slow,
        Ok(Ended::Closed) => &c.clean,
        Ok(Ended::Reset) => &c.reset,
        Err(e) => {
            let lost = s.sent - s.echoed;
            c.lost.fetch_add(lost, Relaxed);
            ctx.errors.note(format!(
                "session {id} ({:?}): {e}; {lost} message(s) not echoed",
                plan.kind
            ));
            &c.failed
        }
    };
    ended.fetch_add(1, Relaxed);
    true
}

async fn connect(ctx: &Ctx, plan: &Plan) -> Result<Ws, String> {
    let rcvbuf = matches!(plan.kind, Kind::Slow { .. }).then_some(SLOW_RCVBUF);
    let _permit = ctx.connects.acquire().await.map_err(|e| e.to_string())?;
    timeout(
        ctx.connect_timeout,
        ctx.target.connect_with(ctx.ws_config, rcvbuf),
    )
    .await
    .map_err(|_| format!("no handshake within {:?}", ctx.connect_timeout))?
}

enum Ended {
    Closed,
    Reset,
}

struct Session<'a> {
    ctx: &'a Ctx,
    id: u64,
    /// The seed of this session's messages.
    stream: u64,
    profile: Profile,
    /// Messages sent, and the first `echoed` of them echoed intact and in order.
    sent: u64,
    echoed: u64,
}

impl Session<'_> {
    async fn drive(&mut self, ws: Ws, plan: &Plan, rng: &mut Rng) -> Result<Ended, String> {
        let (mut sink, mut stream) = ws.split();
        for b in 0..plan.bursts {
            if Instant::now() >= self.ctx.deadline {
                break;
            }
            match plan.kind {
                Kind::Reset { at, in_flight, rst } if at == b => {
                    self.reset(sink, stream, in_flight, rst, rng).await;
                    return Ok(Ended::Reset);
                }
                Kind::Slow { rate } => {
                    self.burst(&mut sink, &mut stream, SLOW_BURST, false, Some(rate))
                        .await?
                }
                _ => {
                    let k = rng.range(1, 8);
                    let ping = rng.chance(0.2);
                    self.burst(&mut sink, &mut stream, k, ping, None).await?;
                    self.think(rng).await;
                }
            }
        }
        self.close(&mut sink, &mut stream, &plan.close).await?;
        Ok(Ended::Closed)
    }

    /// Sends `k` messages (after a ping if `ping`) while reading their echoes, at `read_rate`
    /// bytes per second if given; each echo must be the next message sent, byte for byte.
    async fn burst(
        &mut self,
        sink: &mut Sink,
        stream: &mut Stream,
        k: u64,
        ping: bool,
        read_rate: Option<u64>,
    ) -> Result<(), String> {
        let first = self.sent;
        let ping = ping.then(|| ping_payload(self.id, first));
        let mut echoed = 0;
        let reader = self.read_echoes(stream, first, k, ping.clone(), read_rate, &mut echoed);
        let writer = self.write_messages(sink, first, k, ping.clone());
        let r = tokio::try_join!(writer, reader).map(|_| ());
        self.sent = first + k;
        self.echoed = first + echoed;
        r
    }

    async fn write_messages(
        &self,
        sink: &mut Sink,
        first: u64,
        k: u64,
        ping: Option<Bytes>,
    ) -> Result<(), String> {
        if let Some(p) = ping {
            sink.feed(Message::Ping(p))
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        for seq in first..first + k {
            let m = payload::message(self.stream, seq, self.profile);
            sink.feed(m).await.map_err(|e| format!("send: {e}"))?;
            self.ctx.counters.messages_sent.fetch_add(1, Relaxed);
        }
        sink.flush().await.map_err(|e| format!("send: {e}"))
    }

    async fn read_echoes(
        &self,
        stream: &mut Stream,
        first: u64,
        k: u64,
        mut ping: Option<Bytes>,
        read_rate: Option<u64>,
        echoed: &mut u64,
    ) -> Result<(), String> {
        let c = &self.ctx.counters;
        while *echoed < k || ping.is_some() {
            let m = match timeout(self.ctx.stall, stream.next()).await {
                Err(_) => return Err(format!("stalled: nothing for {:?}", self.ctx.stall)),
                Ok(None) => return Err("the connection ended".into()),
                Ok(Some(Err(e))) => return Err(format!("recv: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            match m {
                Message::Text(_) | Message::Binary(_) => {
                    let seq = first + *echoed;
                    if *echoed == k {
                        c.corrupted.fetch_add(1, Relaxed);
                        return Err(format!("an echo nothing was sent for (after {seq})"));
                    }
                    if let Some(why) = payload::mismatch(&m, self.stream, seq, self.profile) {
                        c.corrupted.fetch_add(1, Relaxed);
                        return Err(format!("corrupted or out of order: {why}"));
                    }
                    *echoed += 1;
                    c.messages_echoed.fetch_add(1, Relaxed);
                    c.bytes_echoed.fetch_add(payload::len(&m), Relaxed);
                    if let Some(rate) = read_rate {
                        let pause = payload::len(&m) as f64 / rate as f64;
                        tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                    }
                }
                Message::Pong(p) if ping.as_ref() == Some(&p) => {
                    ping = None;
                    c.pongs.fetch_add(1, Relaxed);
                }
                Message::Pong(p) => return Err(format!("a pong nobody asked for: {p:?}")),
                Message::Ping(_) | Message::Frame(_) => {}
                Message::Close(f) => return Err(format!("the peer closed: {f:?}")),
            }
        }
        Ok(())
    }

    /// A pause between bursts: up to twice the mean think time, never past the deadline.
    async fn think(&self, rng: &mut Rng) {
        let mean = self.ctx.think.as_millis() as u64;
        let pause = Duration::from_millis(rng.range(0, 2 * mean));
        sleep_until((Instant::now() + pause).min(self.ctx.deadline)).await;
    }

    /// The client's close handshake: the reply must carry the same code and reason.
    async fn close(
        &self,
        sink: &mut Sink,
        stream: &mut Stream,
        frame: &CloseFrame,
    ) -> Result<(), String> {
        sink.send(Message::Close(Some(frame.clone())))
            .await
            .map_err(|e| format!("send close: {e}"))?;
        loop {
            match timeout(self.ctx.stall, stream.next()).await {
                Err(_) => return Err(format!("no close reply within {:?}", self.ctx.stall)),
                Ok(Some(Ok(Message::Close(Some(f))))) if f == *frame => break,
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Err(format!("close reply {f:?}, sent {frame:?}"))
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(_))) => return Err("a data message after the last echo".into()),
                Ok(Some(Err(e))) => return Err(format!("recv before the close reply: {e}")),
                Ok(None) => return Err("the connection ended without a close reply".into()),
            }
        }
        // The handshake is complete; let the server close the TCP connection first.
        let _ = timeout(self.ctx.stall, async {
            while stream.next().await.is_some() {}
        })
        .await;
        Ok(())
    }

    /// Ends the session without a close frame, perhaps with messages still on their way.
    async fn reset(
        &mut self,
        mut sink: Sink,
        stream: Stream,
        in_flight: bool,
        rst: bool,
        rng: &mut Rng,
    ) {
        if in_flight {
            let k = rng.range(1, 8);
            // Abandoned on purpose: their echoes are neither awaited nor counted as lost.
            let _ = timeout(
                RESET_WRITE,
                self.write_messages(&mut sink, self.sent, k, None),
            )
            .await;
        }
        let Ok(ws) = sink.reunite(stream) else { return };
        if rst {
            let tcp = match ws.get_ref() {
                MaybeTlsStream::Plain(t) => Some(t),
                MaybeTlsStream::Rustls(t) => Some(t.get_ref().0),
                _ => None,
            };
            if let Some(t) = tcp {
                let _ = t.set_zero_linger();
            }
        }
        drop(ws);
    }
}

/// The payload of a session's ping: its id and the sequence number it was sent before.
fn ping_payload(id: u64, seq: u64) -> Bytes {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&seq.to_be_bytes());
    Bytes::from(p)
}
