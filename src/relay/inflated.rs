//! `max_message_inflated` in the relay: each side's scanner counts the inflated size of the
//! compressed messages it sends (`deflate/inflate.rs`), and a message that passes the limit
//! ends the session with 1009 to its sender, like one over `max_message`.
//!
//! The difference is where it is caught: `max_message` is known from a frame's header, before
//! any of it is forwarded; an inflated size only as the payload streams through. When the
//! limit is passed in the frame's first chunk, nothing of the frame has been forwarded and
//! the session ends as after `max_message`: the other side gets its 1001 as usual, and the
//! sender's stream is followed on (the scanner skips its data frames) so that its close reply
//! is read and recorded before its FIN. When part of the frame has already gone on, the rest
//! is not forwarded (it is what would inflate past the limit), and no close frame fits in the
//! middle of a frame: the other side gets its TCP close (it sees 1006), and the sender its
//! 1009 at once rather than after the other side's reply.

use super::{Leg, Relay, Side, State, release};
use crate::deflate::Counting;

impl<C, B> Relay<C, B>
where
    C: Leg,
    B: Leg,
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
    // A frame of `to`'s half forwarded to `from` still ends before `from`'s close frame.
    to.finish_frame = !to.scanner.at_boundary() && !to.read_eof && to.close_from.is_none();
    to.inject = None;
    to.deferred_close = false;
    st.abandoned = Some(to.who);
    st.progress += 1;
    release(st, from);
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use bytes::Bytes;
    use flate2::Compression;
    use flate2::write::DeflateEncoder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use crate::config::SessionConfig;
    use crate::deflate::Counting;
    use crate::frame::{self, opcode};
    use crate::relay::{Control, Link, relay, test_env};

    /// The client's bomb is cut mid-frame while the backend is halfway through a frame to the
    /// client: that frame still reaches the client whole, then the client's 1009; the backend
    /// gets only what it had, then its TCP close.
    #[tokio::test]
    async fn a_frame_toward_the_sender_is_finished_before_its_1009() {
        let (mut client, client_side) = duplex(1 << 20);
        let (backend_side, mut backend) = duplex(1 << 20);
        let (ctl, link) = (Control::default(), Arc::new(Link::default()));
        let cfg = SessionConfig {
            ping_interval: None,
            ..SessionConfig::default()
        };
        let task = tokio::spawn(async move {
            let counting = Counting {
                limit: 1 << 20,
                client_takeover: false,
                backend_takeover: false,
            };
            let r = relay(
                (client_side, Bytes::new()),
                (backend_side, Bytes::new()),
                test_env(cfg, &ctl, &link),
                0b100,
            );
            r.count_inflated(Some(counting)).await
        });
        // The backend's frame, first half.
        let theirs = frame::encode_frame(opcode::BINARY, true, &[5u8; 1000], None);
        backend.write_all(&theirs[..504]).await.unwrap();
        let mut got = vec![0u8; 504];
        client.read_exact(&mut got).await.unwrap();
        // The client's bomb: its head and 100 bytes reach the backend, then the rest.
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(&vec![0u8; 4 << 20]).unwrap();
        e.flush().unwrap();
        let payload = e.get_ref()[..e.get_ref().len() - 4].to_vec();
        let mut bomb = frame::encode_frame(opcode::BINARY, true, &payload, Some([1, 2, 3, 4]));
        bomb[0] |= 0x40;
        let head = bomb.len() - payload.len();
        client.write_all(&bomb[..head + 100]).await.unwrap();
        let mut got = vec![0u8; head + 100];
        backend.read_exact(&mut got).await.unwrap();
        client.write_all(&bomb[head + 100..]).await.unwrap();
        // The backend finishes its frame; the client gets it, then its close.
        backend.write_all(&theirs[504..]).await.unwrap();
        let mut rest = vec![0u8; theirs.len() - 504];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, theirs[504..]);
        let mut close = [0u8; 4];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close[..2], [0x88, 2 + 15]);
        assert_eq!(close[2..], 1009u16.to_be_bytes());
        // The backend: nothing more of the bomb, no close frame, its end of the stream.
        let mut after = Vec::new();
        backend.read_to_end(&mut after).await.unwrap();
        assert_eq!(after, b"");
        drop((client, backend));
        let out = task.await.unwrap();
        assert_eq!(
            out.proxy_reason,
            Some(super::super::Reason::MessageTooBig(
                crate::outcome::CloseSide::Client
            ))
        );
    }
}
