//! The relay: bytes both ways between the client and the backend after the 101, until both
//! sides are done, one fails, or the session is cancelled (drain).
//!
//! Our own loop rather than `copy_bidirectional`, because the proxy must own what happens at
//! the edges: which side ended the session, half-close, per-direction counters, cancellation,
//! and (later) a frame scanner that sees each chunk before it is forwarded.
//!
//! Memory: a read goes into a buffer on the poll's stack, and is written on at once. Only
//! when the other side cannot take it all is the rest copied to the heap, and that copy is
//! freed as soon as it is written. An idle session holds no buffer at all.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::error::CloseSide;

/// Bytes read in one go. 64 KiB moves large messages in fewer syscalls (measured 25–35% less
/// CPU than 8 KiB for 16 KiB–1 MiB messages); it lives on the stack only during a poll.
const READ_CHUNK: usize = 64 * 1024;

/// Live per-direction byte counters, readable by the session registry while the relay runs.
#[derive(Debug, Default)]
pub struct Counters {
    pub client_to_backend: AtomicU64,
    pub backend_to_client: AtomicU64,
}

/// How a relay ended.
#[derive(Debug)]
pub struct RelayOutcome {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
    /// The side whose read ended first (EOF or error), or the proxy when cancelled.
    pub closed_by: CloseSide,
    /// An I/O error that ended the session, with the direction it happened on.
    pub error: Option<(&'static str, io::Error)>,
}

/// One direction's state: unwritten bytes, whether its reader is done, what it moved.
struct Half {
    label: &'static str,
    /// Bytes read but not yet accepted by the writer (only under backpressure).
    spill: Vec<u8>,
    spill_pos: usize,
    needs_flush: bool,
    read_done: bool,
    done: bool,
    bytes: u64,
}

impl Half {
    fn new(label: &'static str) -> Half {
        Half {
            label,
            spill: Vec::new(),
            spill_pos: 0,
            needs_flush: false,
            read_done: false,
            done: false,
            bytes: 0,
        }
    }

    /// Moves bytes from `reader` to `writer` until the reader would block or has ended.
    /// Ready(Ok) once the reader hit EOF and the writer has been shut down (half-close).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        counter: &AtomicU64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            while self.spill_pos < self.spill.len() {
                let n = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.spill[self.spill_pos..])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.spill_pos += n;
            }
            if !self.spill.is_empty() {
                // Give the memory back: the next burst may never come.
                self.spill = Vec::new();
                self.spill_pos = 0;
            }
            if self.read_done {
                if self.needs_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.needs_flush = false;
                }
                ready!(writer.as_mut().poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }

            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match reader.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.needs_flush {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.needs_flush = false;
                    }
                    return Poll::Pending;
                }
            }
            let data = buf.filled();
            if data.is_empty() {
                self.read_done = true;
                continue;
            }
            self.bytes += data.len() as u64;
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            self.needs_flush = true;

            let mut pos = 0;
            while pos < data.len() {
                match writer.as_mut().poll_write(cx, &data[pos..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => pos += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.spill = data[pos..].to_vec();
                        self.spill_pos = 0;
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// How long one direction may stay open after the other has ended. WebSocket has no use for
/// a half-open connection once one side has closed (RFC 6455 §7.1.1: after the closing
/// handshake both close TCP), so a peer that never closes its side is not allowed to hold the
/// session forever. Generous, so a real half-close (a last reply after the client's FIN) still
/// gets through.
pub const HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why [`relay`]'s copy loop stopped.
enum End {
    /// Both directions ended cleanly.
    Both,
    /// One direction failed.
    Error(&'static str, io::Error),
    /// One direction ended and the other did not within [`HALF_CLOSE_TIMEOUT`].
    HalfCloseTimeout,
}

/// Relays until both directions have ended (each end's EOF is passed on as a write shutdown,
/// so half-close works), either direction fails, or `cancel` fires.
pub async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Half::new("client->backend");
    let mut down = Half::new("backend->client");
    let mut first_end: Option<CloseSide> = None;
    let mut linger: Option<Pin<Box<tokio::time::Sleep>>> = None;

    let result = {
        let copy = poll_fn(|cx| {
            if !up.done {
                match up.poll_copy(
                    cx,
                    Pin::new(&mut *client),
                    Pin::new(&mut *backend),
                    &counters.client_to_backend,
                ) {
                    Poll::Ready(Ok(())) => up.done = true,
                    Poll::Ready(Err(e)) => {
                        // A write error means the backend went away; a read error, the client.
                        first_end.get_or_insert(if up.read_done {
                            CloseSide::Backend
                        } else {
                            CloseSide::Client
                        });
                        return Poll::Ready(End::Error(up.label, e));
                    }
                    Poll::Pending => {}
                }
                if up.read_done {
                    first_end.get_or_insert(CloseSide::Client);
                }
            }
            if !down.done {
                match down.poll_copy(
                    cx,
                    Pin::new(&mut *backend),
                    Pin::new(&mut *client),
                    &counters.backend_to_client,
                ) {
                    Poll::Ready(Ok(())) => down.done = true,
                    Poll::Ready(Err(e)) => {
                        first_end.get_or_insert(if down.read_done {
                            CloseSide::Client
                        } else {
                            CloseSide::Backend
                        });
                        return Poll::Ready(End::Error(down.label, e));
                    }
                    Poll::Pending => {}
                }
                if down.read_done {
                    first_end.get_or_insert(CloseSide::Backend);
                }
            }
            if up.done && down.done {
                return Poll::Ready(End::Both);
            }
            if up.done || down.done {
                let timer =
                    linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(HALF_CLOSE_TIMEOUT)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(End::HalfCloseTimeout);
                }
            }
            Poll::Pending
        });
        tokio::select! {
            biased;
            end = copy => Some(end),
            _ = cancel.cancelled() => None,
        }
    };

    let (closed_by, error) = match result {
        Some(End::Both) => (first_end.unwrap_or(CloseSide::Client), None),
        Some(End::Error(label, e)) => (first_end.unwrap_or(CloseSide::Client), Some((label, e))),
        Some(End::HalfCloseTimeout) => (
            first_end.unwrap_or(CloseSide::Client),
            Some((
                "half-close",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "other side did not close within the half-close timeout",
                ),
            )),
        ),
        None => (CloseSide::Proxy, None),
    };
    RelayOutcome {
        client_to_backend: up.bytes,
        backend_to_client: down.bytes,
        closed_by,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn relays_both_ways_and_honours_half_close() {
        let (mut client_peer, mut client_side) = duplex(16);
        let (mut backend_side, mut backend_peer) = duplex(16);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn({
            let counters = counters.clone();
            async move {
                relay(
                    &mut client_side,
                    &mut backend_side,
                    counters,
                    CancellationToken::new(),
                )
                .await
            }
        });
        // More than the duplex capacity, so the spill path runs.
        let big = vec![7u8; 1000];
        let mut got = vec![0u8; 1000];
        let (w, r) = tokio::join!(
            client_peer.write_all(&big),
            backend_peer.read_exact(&mut got)
        );
        w.unwrap();
        r.unwrap();
        assert_eq!(got, big);
        // Client half-closes; the backend can still answer.
        client_peer.shutdown().await.unwrap();
        let mut eof = [0u8; 1];
        assert_eq!(backend_peer.read(&mut eof).await.unwrap(), 0);
        backend_peer.write_all(b"late reply").await.unwrap();
        let mut reply = [0u8; 10];
        client_peer.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"late reply");
        backend_peer.shutdown().await.unwrap();
        let out = task.await.unwrap();
        assert_eq!(out.client_to_backend, 1000);
        assert_eq!(out.backend_to_client, 10);
        assert_eq!(out.closed_by, CloseSide::Client);
        assert!(out.error.is_none());
        assert_eq!(counters.client_to_backend.load(Ordering::Relaxed), 1000);
    }

    #[tokio::test]
    async fn cancellation_ends_the_relay() {
        let (_client_peer, mut client_side) = duplex(16);
        let (mut backend_side, _backend_peer) = duplex(16);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { relay(&mut client_side, &mut backend_side, Arc::default(), cancel).await }
        });
        cancel.cancel();
        let out = task.await.unwrap();
        assert_eq!(out.closed_by, CloseSide::Proxy);
    }
}
