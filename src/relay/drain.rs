//! Reading what a side sends once nothing of it is forwarded any more, so that the close frame
//! the proxy sent it is not lost to a reset.
//!
//! A socket closed with unread bytes in its receive queue makes the kernel send a reset
//! instead of a FIN (RFC 1122 §4.2.2.13, what Linux does): what was still on its way to the
//! peer is discarded and the peer's writes fail. A client that wrote a large message at once
//! and was still writing when the proxy answered 1009 got ECONNRESET or EPIPE instead of its
//! close frame. So the relay keeps reading a side after its close frame, after the proxy took
//! over, and after its frames stopped making sense, and drops what it reads (from a buffer on
//! the poll's stack, never kept), until the side's EOF. This is bounded in time by the closing
//! handshake's deadline ([`super::CLOSE_TIMEOUT`]) and in bytes by [`DRAIN_LIMIT`]; when the
//! session is cut, what has already arrived is read once more without waiting
//! ([`drain_ready`]).

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::{READ_CHUNK, Side, State};

/// The most bytes a session reads and drops before the relay stops reading the side that sends
/// them (and accepts that closing its socket may reset it). A peer still writing when it gets
/// the proxy's close frame has at most its socket's send buffer and the proxy's receive buffer
/// in flight; Linux autotunes them to the connection's needs, up to 4 MiB and 6 MiB by default,
/// and rarely fills both. A peer that sends more than this after the close is not reading its
/// close frame either, and should not make the proxy spend more than a few large messages'
/// worth of reads on it. (One budget for both sides: a counter per side would cost every idle
/// session 16 bytes.)
pub const DRAIN_LIMIT: u32 = 8 * 1024 * 1024;

/// Nothing `side` sends is forwarded any more: its close frame has passed (RFC 6455 §5.5.1:
/// nothing follows it), its frames stopped making sense, or the proxy took over and it is not
/// the side still allowed to answer. What it sends is read and dropped.
pub(super) fn discarding<IO>(st: &State, side: &Side<IO>) -> bool {
    side.close_from.is_some()
        || side.scanner.stopped().is_some()
        || (st.taken_over && !side.passing && !side.finish_frame)
}

/// Counts `n` dropped bytes of `side`; past [`DRAIN_LIMIT`] the side is read no more and the
/// session counts as cut (see [`super::RelayOutcome::cut`]).
pub(super) fn count<IO>(st: &mut State, side: &mut Side<IO>, n: usize) {
    st.discarded = st
        .discarded
        .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    if st.discarded > DRAIN_LIMIT && !side.read_eof {
        tracing::debug!(
            side = side.who.as_str(),
            limit = DRAIN_LIMIT,
            "stopped reading a side that kept sending after the close"
        );
        side.read_eof = true;
        // Its socket will be closed with input unread, so the kernel resets it: a cut, and
        // the record says why (the side's close reply, if it sent one, was not read).
        st.over_drain_limit = true;
        st.error.get_or_insert_with(|| {
            Box::new(format!(
                "{} kept sending after the close: read no more past the session's drain budget of {DRAIN_LIMIT} bytes",
                side.who.as_str()
            ))
        });
        st.progress += 1;
    }
}

/// Reads and drops what `side` has already sent, without waiting, before its socket is closed
/// on a cut: a peer still writing gets a FIN after its close frame rather than a reset where it
/// can be avoided.
pub(super) fn drain_ready<IO: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    st: &mut State,
    side: &mut Side<IO>,
) {
    while !side.read_eof && st.discarded <= DRAIN_LIMIT {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut side.io).poll_read(cx, &mut buf) {
            Poll::Pending => break,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                let n = u32::try_from(buf.filled().len()).unwrap_or(u32::MAX);
                st.discarded = st.discarded.saturating_add(n);
            }
            Poll::Ready(_) => side.read_eof = true,
        }
    }
}
