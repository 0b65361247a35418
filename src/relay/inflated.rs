//! `max_message_inflated` in the relay: each side's scanner counts the inflated size of the
//! compressed messages it sends (`deflate/inflate.rs`), and a message that passes the limit
//! ends the session with 1009 to its sender, like one over `max_message`.
//!
//! The difference is where it is caught: `max_message` is known from a frame's header, before
//! any of it is forwarded; an inflated size only as the payload streams through. When the
//! limit is passed in the frame's first chunk, nothing of the frame has been forwarded and
//! the other side gets its 1001 as usual. When part of the frame has already gone on, the rest
//! is not forwarded (it is what would inflate past the limit), and no close frame fits in the
//! middle of a frame: the other side gets its TCP close (it sees 1006), and the sender its
//! 1009 at once rather than after the other side's reply.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Relay, Side, State, release};
use crate::deflate::Counting;

impl<C, B> Relay<'_, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// Counts inflated message sizes both ways, as the session negotiated (see `deflate`).
    pub fn count_inflated(mut self, counting: Option<Counting>) -> Self {
        if let Some(c) = counting {
            self.c.scanner.count_inflated(c.limit, c.client_takeover);
            self.b.scanner.count_inflated(c.limit, c.backend_takeover);
        }
        self
    }
}

/// After the proxy took over: if `from`'s scanner stopped inside a frame (an inflated size
/// passed the limit mid-frame), that frame is abandoned (see the module doc).
pub(super) fn abandon_frame<A, Z>(st: &mut State, from: &mut Side<A>, to: &mut Side<Z>) {
    if from.scanner.at_boundary() || from.scanner.stopped().is_none() {
        return;
    }
    from.finish_frame = false;
    from.passing = false;
    to.passing = false;
    to.inject = None;
    to.deferred_close = false;
    st.abandoned = Some(to.who);
    st.progress += 1;
    release(st, from);
}
