//! WebSocket frame headers (RFC 6455 §5.2): parse and encode.
//!
//! The header codec, the streaming [`Scanner`] the relay runs per direction, and the few frames
//! the proxy writes itself (close frames, pings).

use crate::deflate::inflate::{CountError, InflateCount};

/// Opcodes of RFC 6455 §5.2.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;

    pub fn is_control(op: u8) -> bool {
        op & 0x8 != 0
    }
}

/// Every close code the proxy sends or names (RFC 6455 §7.4.1 and its IANA registry), with
/// the reason phrase the proxy writes for it. Nowhere else spells a close code as a number.
pub mod close_code {
    /// 1000: the closing handshake of a session that did what it came for.
    pub const NORMAL: u16 = 1000;
    /// 1001: the proxy's own close: drain and shutdown, idle and lifetime timers, a peer
    /// that stopped answering pings, and the innocent side of a violation or a vanished
    /// client.
    pub const GOING_AWAY: u16 = 1001;
    /// 1002: to a side that broke RFC 6455 framing.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// 1007: to a side whose close reason is not UTF-8 (the relay does not check messages'
    /// text: those pass as sent).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// 1008, "policy violation": to the client when the token its session was opened with
    /// expires (`expire_sessions`). Not 1001: the client must get a fresh token before it
    /// reconnects, not reconnect with the same one.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// 1009: to a side that sent a message over the route's limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// 1011, "the server encountered an unexpected condition": to the client when the
    /// backend connection is lost mid-session (reset, or EOF without a close frame). Not
    /// 1001, which wsgate keeps for its own drain, so a client can tell "backend crashed"
    /// (reconnect with backoff) from "proxy restarting" (reconnect now).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// 1012: to both sides when a reload removes their route, drops their backend or
    /// restarts their changed route (`reload.rs`, spread), or on `Handle::close_route`.
    pub const SERVICE_RESTART: u16 = 1012;
    /// 1014, "bad gateway": to the client when the backend breaks the WebSocket protocol.
    pub const BAD_GATEWAY: u16 = 1014;

    /// Whether an endpoint may send `code` in a close frame (RFC 6455 §7.4.1 and §7.4.2 with
    /// the IANA registry): 1000–1003 and 1007–1014 are defined for that, 3000–4999 belong to
    /// libraries and applications; 1004–1006 and 1015 must never be sent, the rest is
    /// reserved.
    pub const fn sendable(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// The reason phrase for `code` (`""` for a code not listed here). Short, as a close
    /// frame's payload is at most 125 bytes.
    pub const fn phrase(code: u16) -> &'static str {
        match code {
            NORMAL => "normal closure",
            GOING_AWAY => "going away",
            PROTOCOL_ERROR => "protocol error",
            INVALID_PAYLOAD => "invalid payload data",
            POLICY_VIOLATION => "policy violation",
            MESSAGE_TOO_BIG => "message too big",
            INTERNAL_ERROR => "internal error",
            SERVICE_RESTART => "service restart",
            BAD_GATEWAY => "bad gateway",
            _ => "",
        }
    }
}

/// Largest header: 2 bytes + 8 bytes of extended length + 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;
/// Control frames carry at most 125 payload bytes (§5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..3 as the top three bits of the low nibble's neighbour: `0b0rrr`.
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("control frame longer than 125 bytes")]
    ControlTooLong,
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("64-bit length with the most significant bit set")]
    LengthMsbSet,
    /// A payload length in a longer form than it needs: RFC 6455 §5.2 says "the minimal
    /// number of bytes MUST be used to encode the length".
    #[error("payload length not in its shortest form")]
    NonMinimalLength,
}

impl FrameHeader {
    /// Parses a header at the start of `buf`. `Ok(None)`: not enough bytes yet.
    /// Returns the header and its length in bytes.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let op = b0 & 0x0F;
        if !matches!(op, 0x0..=0x2 | 0x8..=0xA) {
            return Err(FrameError::ReservedOpcode(op));
        }
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let mut pos = 2;
        let payload_len = match len7 {
            126 => {
                if buf.len() < pos + 2 {
                    return Ok(None);
                }
                let n = u16::from_be_bytes([buf[2], buf[3]]) as u64;
                pos += 2;
                if n < 126 {
                    return Err(FrameError::NonMinimalLength);
                }
                n
            }
            127 => {
                if buf.len() < pos + 8 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let n = u64::from_be_bytes(b);
                pos += 8;
                if n >> 63 != 0 {
                    return Err(FrameError::LengthMsbSet);
                }
                // Not passed on: browsers fail the connection on a non-minimal length
                // (Chromium's frame parser does), so a frame forwarded as it came would end
                // the session there, with nothing to say which side broke the rule.
                if n <= u64::from(u16::MAX) {
                    return Err(FrameError::NonMinimalLength);
                }
                n
            }
            n => n as u64,
        };
        if opcode::is_control(op) {
            if payload_len > MAX_CONTROL_PAYLOAD {
                return Err(FrameError::ControlTooLong);
            }
            if !fin {
                return Err(FrameError::FragmentedControl);
            }
        }
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv,
                opcode: op,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 0x7) << 4) | (self.opcode & 0x0F));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.payload_len {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= u16::MAX as u64 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        if let Some(m) = self.mask {
            out.extend_from_slice(&m);
        }
    }
}

/// XORs `data` with the masking key (§5.3); `offset` is the position of `data[0]` within the
/// payload, so a payload can be unmasked in pieces.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// A complete unmasked frame (for frames the proxy or the demo backend writes).
pub fn encode_frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER_LEN + payload.len());
    FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    }
    .encode(&mut out);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(m) = mask {
        apply_mask(&mut out[start..], m, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_length_forms() {
        for len in [0u64, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = FrameHeader {
                    fin: true,
                    rsv: 0b100,
                    opcode: opcode::BINARY,
                    mask,
                    payload_len: len,
                };
                let mut out = Vec::new();
                h.encode(&mut out);
                assert_eq!(FrameHeader::parse(&out), Ok(Some((h, out.len()))));
                // Every strict prefix asks for more bytes.
                for cut in 0..out.len() {
                    assert_eq!(FrameHeader::parse(&out[..cut]), Ok(None));
                }
            }
        }
    }

    #[test]
    fn rejects_invalid_headers() {
        assert_eq!(
            FrameHeader::parse(&[0x83, 0]),
            Err(FrameError::ReservedOpcode(3))
        );
        assert_eq!(
            FrameHeader::parse(&[0x89, 126, 0, 200]),
            Err(FrameError::ControlTooLong)
        );
        assert_eq!(
            FrameHeader::parse(&[0x09, 0]),
            Err(FrameError::FragmentedControl)
        );
        let mut msb = vec![0x82, 127];
        msb.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(FrameHeader::parse(&msb), Err(FrameError::LengthMsbSet));
        // Lengths in a longer form than they need (RFC 6455 §5.2), at each boundary.
        for bad in [
            vec![0x82, 126, 0, 0],
            vec![0x82, 126, 0, 125],
            vec![0x82, 127, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0x82, 127, 0, 0, 0, 0, 0, 0, 0, 125],
            vec![0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
        ] {
            assert_eq!(
                FrameHeader::parse(&bad),
                Err(FrameError::NonMinimalLength),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn masking_is_its_own_inverse_in_pieces() {
        let mut data = b"Hello, WebSocket".to_vec();
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        apply_mask(&mut data[..5], mask, 0);
        apply_mask(&mut data[5..], mask, 5);
        apply_mask(&mut data, mask, 0);
        assert_eq!(data, b"Hello, WebSocket");
    }
}

/// Which side a stream of frames comes from: a client's frames must be masked, a server's
/// must not (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// Why a frame stream was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unmasked frame from a client")]
    UnmaskedFromClient,
    #[error("masked frame from a server")]
    MaskedFromServer,
    #[error("reserved bits set that no negotiated extension allows here")]
    ReservedBits,
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// The message would exceed the route's limit (a policy, not a protocol error: 1009).
    /// The stream stays well framed, so the scanner goes on past it, skipping data frames.
    #[error("message larger than the limit of {0} bytes")]
    MessageTooBig(u64),
    /// The compressed message inflates past `max_message_inflated` (1009, like the above).
    #[error("message inflates to more than the limit of {0} bytes")]
    InflatedTooBig(u64),
    /// A compressed message that is not valid deflate (RFC 7692 §8: fail the connection).
    #[error("compressed message is not valid deflate")]
    BadDeflate,
    /// A close frame whose payload is one byte: a code takes two (RFC 6455 §5.5.1).
    #[error("close frame with a one-byte payload")]
    CloseTooShort,
    /// A close code no endpoint may send (RFC 6455 §7.4: 1005, 1006, 1015, or reserved), so
    /// it is not passed on as if it had been.
    #[error("close code {0} may not be sent")]
    CloseCode(u16),
    /// A close reason that is not UTF-8 (RFC 6455 §5.5.1 and §8.1: 1007).
    #[error("close reason is not valid UTF-8")]
    CloseReasonNotUtf8(u16),
}

impl Violation {
    /// The close code the offending side receives.
    pub fn close_code(&self) -> u16 {
        match self {
            Violation::MessageTooBig(_) | Violation::InflatedTooBig(_) => {
                close_code::MESSAGE_TOO_BIG
            }
            Violation::CloseReasonNotUtf8(_) => close_code::INVALID_PAYLOAD,
            _ => close_code::PROTOCOL_ERROR,
        }
    }

    /// A close frame RFC 6455 forbids (its code, its length or its reason).
    pub fn is_close(&self) -> bool {
        matches!(
            self,
            Violation::CloseTooShort | Violation::CloseCode(_) | Violation::CloseReasonNotUtf8(_)
        )
    }

    /// The code of a forbidden close frame, where it has one: what the access log and the
    /// close-code metric record as the side's close.
    pub fn sent_close_code(&self) -> Option<u16> {
        match *self {
            Violation::CloseCode(c) | Violation::CloseReasonNotUtf8(c) => Some(c),
            _ => None,
        }
    }
}

/// What the scanner found in a chunk, in stream order, except that data frames' bytes are
/// reported in runs: one `Forward` for all of a chunk's data frames up to the next control
/// frame, held head, violation or the chunk's end, after the `MessageEnd`s of the messages it
/// completes.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Bytes to pass on unchanged (data frame headers and payloads, possibly many frames).
    /// A chunk of many small messages gives one of these, not one per frame: the relay
    /// writes a run on in one call either way, and an event per frame only added a call
    /// and a range check per message.
    Forward(&'a [u8]),
    /// A complete control frame: its bytes as received (to forward) and its payload unmasked
    /// (to read the close code, or to recognise the proxy's own pong).
    Control {
        opcode: u8,
        frame: &'a [u8],
        payload: &'a [u8],
    },
    /// A data message was completed (its final frame's bytes are forwarded by the `Forward`
    /// that ends the run they belong to).
    MessageEnd,
}

/// Bytes of a frame head or a control frame that straddle reads. Control frames are held
/// whole (at most 14 + 125 bytes) so they can be inspected and, for the proxy's own pongs,
/// dropped; a data frame's header is held until complete so that a violation is cut exactly
/// at the frame start. Boxed and only while in use: an idle scanner holds nothing.
#[derive(Debug)]
struct Held {
    bytes: [u8; MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD as usize],
    len: usize,
}

/// A streaming frame scanner for one direction.
///
/// It follows frame boundaries as bytes stream through, forwarding payloads untouched (client
/// frames stay masked, compressed frames stay compressed). It validates framing per RFC 6455
/// §5 and stops at the first violation, before any byte of the offending frame is forwarded.
#[derive(Debug)]
pub struct Scanner {
    from: Sender,
    /// RSV bits a negotiated extension allows on data frames (`0b100` for permessage-deflate).
    allowed_rsv: u8,
    /// `u64::MAX`: no limit (8 bytes instead of an `Option`'s 16: the scanner is in every
    /// idle session, twice).
    max_message: u64,
    held: Option<Box<Held>>,
    /// Payload bytes of the current data frame still to pass.
    remaining: u64,
    /// The current data frame is the final one of its message.
    final_frame: bool,
    /// A fragmented data message is in progress.
    in_message: bool,
    message_len: u64,
    /// Counts inflated sizes of compressed messages (`max_message_inflated`); boxed, and its
    /// inflater exists only while a compressed message is in flight.
    count: Option<Box<InflateCount>>,
    stopped: Option<Violation>,
    /// A message went over `max_message` (or its inflated size over the limit in a frame of
    /// which nothing had gone on): the stream is still followed frame by frame, so its
    /// sender's close reply is recognised, but no data frame of it is reported again (see
    /// [`Violation::MessageTooBig`]).
    skipping: bool,
    /// How many bytes at the end of the chunk that met the message over the limit were not
    /// scanned: those past that frame's head, or past its payload in the chunk for an
    /// inflated size (see [`Scanner::take_unscanned`]). 16 bits, so
    /// that the scanner keeps its size: the relay reads 64 KiB at a time.
    unscanned: u16,
    pub frames: u64,
    pub messages: u64,
}

impl Scanner {
    pub fn new(from: Sender, allowed_rsv: u8, max_message: Option<u64>) -> Scanner {
        Scanner {
            from,
            allowed_rsv,
            max_message: max_message.unwrap_or(u64::MAX),
            held: None,
            remaining: 0,
            final_frame: false,
            in_message: false,
            message_len: 0,
            count: None,
            stopped: None,
            skipping: false,
            unscanned: 0,
            frames: 0,
            messages: 0,
        }
    }

    /// Counts the inflated size of each compressed message (RSV1 on its first frame) and stops
    /// the stream once one passes `limit`. `takeover`: the sender keeps its compression window
    /// across messages (RFC 7692 §7.1.1), so the inflater must too.
    pub fn count_inflated(&mut self, limit: u64, takeover: bool) {
        self.count = Some(Box::new(InflateCount::new(limit, takeover)));
    }

    /// Counts `bytes` of the current frame's payload; `last`: they end a message.
    fn count_payload(&mut self, bytes: &[u8], last: bool) -> Result<(), Violation> {
        let Some(c) = self.count.as_deref_mut().filter(|c| c.compressed) else {
            return Ok(());
        };
        let r = c
            .payload(bytes)
            .and_then(|()| if last { c.end() } else { Ok(()) });
        r.map_err(|e| match e {
            CountError::TooBig => Violation::InflatedTooBig(c.limit()),
            CountError::Corrupt => Violation::BadDeflate,
        })
    }

    /// Stops on a counting violation in the `n` payload bytes at `pos`: before the frame if
    /// it began in this chunk (nothing of it was forwarded, `at_boundary` holds), else where
    /// the counted bytes begin (the frame is cut in the middle, see the relay).
    ///
    /// An inflated size over the limit in a frame of which nothing has gone on leaves the
    /// framing intact, as a message over `max_message` does: the rest of the frame and what
    /// follows are skipped the same way (see [`Scanner::skip`]), so the sender's close
    /// reply is still seen.
    fn stop_counted(
        &mut self,
        v: Violation,
        frame_start: Option<usize>,
        chunk: &[u8],
        (fwd, pos, n): (usize, usize, usize),
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Violation> {
        match frame_start {
            Some(start) => {
                if let Violation::InflatedTooBig(_) = v
                    && let Ok(unscanned) = u16::try_from(chunk.len() - pos - n)
                {
                    sink_forward(&chunk[fwd..start], sink);
                    self.skip(unscanned);
                    self.remaining -= n as u64;
                    // (Its message, ended or not, is not counted: `feed` keeps the count.)
                    self.final_frame = false;
                    return Err(v);
                }
                self.remaining = 0;
                self.final_frame = false;
                self.stop(v, &chunk[fwd..start], sink)
            }
            None => self.stop(v, &chunk[fwd..pos], sink),
        }
    }

    /// True between frames: nothing of a frame has been forwarded without the rest of it.
    /// Frames the proxy writes itself may be inserted into the stream only here. Always, once
    /// the data frames are skipped: none of them is forwarded.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 || self.skipping
    }

    /// After [`Violation::MessageTooBig`] (or [`Violation::InflatedTooBig`] in a frame of which
    /// nothing had gone on): how many bytes at the end of the chunk just fed were left
    /// unscanned (those past the offending frame's head, or its bytes in the chunk), to be fed again once
    /// the relay has taken over. The framing is intact, so the sender's later frames are
    /// still followed: data frames are counted and dropped, control frames reported (its
    /// close reply among them). 0 otherwise.
    pub fn take_unscanned(&mut self) -> usize {
        std::mem::take(&mut self.unscanned) as usize
    }

    /// The violation that stopped this scanner, if any.
    pub fn stopped(&self) -> Option<Violation> {
        self.stopped
    }

    /// Scans one chunk, reporting events in stream order (data frames' bytes in runs, see
    /// [`Event`]). Returns the violation that stopped the stream (nothing at or after the
    /// offending frame's first byte is reported). [`Violation::MessageTooBig`], and
    /// [`Violation::InflatedTooBig`] met in a frame of which nothing has been reported, leave
    /// the framing intact and are returned once (the scanner is not [`Scanner::stopped`]): the
    /// rest of the chunk is for [`Scanner::take_unscanned`], and later chunks report control
    /// frames only.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Violation> {
        if self.skipping {
            // Past a message over the limit: only control frames are reported, and the
            // messages dropped are not counted as messages (their frames and bytes are).
            let messages = self.messages;
            let r = self.scan(chunk, &mut |ev| {
                if let Event::Control { .. } = ev {
                    sink(ev);
                }
            });
            self.messages = messages;
            return r;
        }
        self.scan(chunk, sink)
    }

    fn scan(&mut self, chunk: &[u8], sink: &mut impl FnMut(Event<'_>)) -> Result<(), Violation> {
        if let Some(v) = self.stopped {
            return Err(v);
        }
        let mut pos = 0;
        // Start of bytes not yet reported as `Forward`.
        let mut fwd = 0;
        // Where the data frame in flight began, if in this chunk with nothing of it forwarded.
        let mut frame_start = None;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let n =
                    (chunk.len() - pos).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                let last = n as u64 == self.remaining && self.final_frame;
                if let Err(v) = self.count_payload(&chunk[pos..pos + n], last) {
                    return self.stop_counted(v, frame_start, chunk, (fwd, pos, n), sink);
                }
                pos += n;
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.end_frame(sink);
                }
                continue;
            }
            // At a frame start, or inside a held head/control frame.
            let (head, from_held): (&[u8], bool) = match &self.held {
                Some(h) => (&h.bytes[..h.len], true),
                None => (&chunk[pos..], false),
            };
            // Parse from what is held plus what this chunk adds.
            let mut joined = [0u8; MAX_HEADER_LEN];
            let view: &[u8] = if from_held {
                let have = head.len().min(MAX_HEADER_LEN);
                joined[..have].copy_from_slice(&head[..have]);
                let take = (MAX_HEADER_LEN - have).min(chunk.len() - pos);
                joined[have..have + take].copy_from_slice(&chunk[pos..pos + take]);
                &joined[..have + take]
            } else {
                head
            };
            let parsed = match FrameHeader::parse(view) {
                Ok(p) => p,
                Err(e) => return self.stop(e.into(), &chunk[fwd..pos], sink),
            };
            let Some((header, header_len)) = parsed else {
                // Incomplete head: hold it (with what was held) and wait for more.
                sink_forward(&chunk[fwd..pos], sink);
                self.hold(&chunk[pos..]);
                return Ok(());
            };
            let held_len = self.held.as_ref().map_or(0, |h| h.len);
            if let Err(v) = self.check(&header) {
                if let Violation::MessageTooBig(_) = v {
                    let unscanned = chunk.len() - pos - (header_len - held_len);
                    return self.skip_from(v, &header, &chunk[fwd..pos], unscanned, sink);
                }
                return self.stop(v, &chunk[fwd..pos], sink);
            }
            if opcode::is_control(header.opcode) {
                let total = header_len + header.payload_len as usize;
                let have = held_len + (chunk.len() - pos);
                sink_forward(&chunk[fwd..pos], sink);
                if have < total {
                    self.hold(&chunk[pos..]);
                    return Ok(());
                }
                // The whole control frame is here: in the held buffer plus this chunk.
                let used = total - held_len;
                let mut frame_buf = [0u8; MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD as usize];
                if let Some(h) = &self.held {
                    frame_buf[..held_len].copy_from_slice(&h.bytes[..held_len]);
                }
                frame_buf[held_len..total].copy_from_slice(&chunk[pos..pos + used]);
                self.held = None;
                self.frames += 1;
                let mut payload = [0u8; MAX_CONTROL_PAYLOAD as usize];
                let plen = header.payload_len as usize;
                payload[..plen].copy_from_slice(&frame_buf[header_len..total]);
                if let Some(m) = header.mask {
                    apply_mask(&mut payload[..plen], m, 0);
                }
                if header.opcode == opcode::CLOSE
                    && let Err(v) = check_close(&payload[..plen])
                {
                    return self.stop(v, &[], sink);
                }
                sink(Event::Control {
                    opcode: header.opcode,
                    frame: &frame_buf[..total],
                    payload: &payload[..plen],
                });
                pos += used;
                fwd = pos;
                continue;
            }
            // A data frame: forward whatever of its head was held, then stream it.
            self.frames += 1;
            frame_start = (held_len == 0).then_some(pos);
            if let Some(c) = &mut self.count {
                let first = header.opcode != opcode::CONTINUATION;
                c.frame(first, header.rsv & 0b100 != 0, header.mask);
            }
            let from_chunk = header_len - held_len;
            if let Some(h) = self.held.take() {
                sink_forward(&chunk[fwd..pos], sink);
                sink(Event::Forward(&h.bytes[..h.len]));
                fwd = pos;
            }
            pos += from_chunk;
            self.remaining = header.payload_len;
            self.final_frame = header.fin;
            if self.remaining == 0
                && header.fin
                && let Err(v) = self.count_payload(&[], true)
            {
                return self.stop_counted(v, frame_start, chunk, (fwd, pos, 0), sink);
            }
            if self.remaining == 0 {
                self.end_frame(sink);
            }
        }
        sink_forward(&chunk[fwd..pos], sink);
        Ok(())
    }

    /// Passes on only the rest of the data frame in flight, so that a frame of the proxy's own
    /// can follow it. Returns how many bytes of `chunk` that took; [`Scanner::at_boundary`]
    /// says whether the frame is complete.
    pub fn feed_to_boundary(&mut self, chunk: &[u8], sink: &mut impl FnMut(Event<'_>)) -> usize {
        if self.at_boundary() {
            return 0;
        }
        let n = chunk
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.remaining -= n as u64;
        sink_forward(&chunk[..n], sink);
        if self.remaining == 0 {
            self.end_frame(sink);
        }
        n
    }

    /// Checks one complete header against the stream's state and updates the message state.
    fn check(&mut self, h: &FrameHeader) -> Result<(), Violation> {
        match (self.from, h.mask.is_some()) {
            (Sender::Client, false) => return Err(Violation::UnmaskedFromClient),
            (Sender::Server, true) => return Err(Violation::MaskedFromServer),
            _ => {}
        }
        if opcode::is_control(h.opcode) {
            // No extension defines RSV bits on control frames (RFC 7692 §6.1 forbids RSV1).
            if h.rsv != 0 && self.allowed_rsv != 0b111 {
                return Err(Violation::ReservedBits);
            }
            return Ok(());
        }
        if h.rsv & !self.allowed_rsv != 0 {
            return Err(Violation::ReservedBits);
        }
        // permessage-deflate marks a message by its first frame only (RFC 7692 §6.1: never
        // on a non-first fragment). Another extension (`0b111`) may say otherwise.
        if self.allowed_rsv == 0b100 && h.opcode == opcode::CONTINUATION && h.rsv != 0 {
            return Err(Violation::ReservedBits);
        }
        match (h.opcode, self.in_message) {
            (opcode::CONTINUATION, false) => return Err(Violation::UnexpectedContinuation),
            (opcode::TEXT | opcode::BINARY, true) => return Err(Violation::ExpectedContinuation),
            (opcode::CONTINUATION, true) => {}
            _ => self.message_len = 0,
        }
        let len = self.message_len.saturating_add(h.payload_len);
        if len > self.max_message {
            return Err(Violation::MessageTooBig(self.max_message));
        }
        self.message_len = len;
        self.in_message = !h.fin;
        Ok(())
    }

    /// The data frame in flight has all passed: the message ends with it if it was final.
    fn end_frame(&mut self, sink: &mut impl FnMut(Event<'_>)) {
        if self.final_frame {
            self.messages += 1;
            self.final_frame = false;
            sink(Event::MessageEnd);
        }
    }

    fn hold(&mut self, more: &[u8]) {
        let held = self.held.get_or_insert_with(|| {
            Box::new(Held {
                bytes: [0; MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD as usize],
                len: 0,
            })
        });
        // A head never exceeds 14 bytes and a control frame 139, so this always fits: the
        // caller only holds what `parse` found incomplete or a control frame still arriving.
        let n = more.len().min(held.bytes.len() - held.len);
        held.bytes[held.len..held.len + n].copy_from_slice(&more[..n]);
        held.len += n;
    }

    /// A data frame `h` takes its message over `max_message`: what came before it is
    /// reported, then nothing more of this chunk; past its head (the last `unscanned` bytes,
    /// see [`Scanner::take_unscanned`]) its payload and every later data frame are skipped.
    /// (More than 64 KiB left unscanned cannot be noted: the stream stops there instead.)
    fn skip_from(
        &mut self,
        v: Violation,
        h: &FrameHeader,
        before: &[u8],
        unscanned: usize,
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Violation> {
        let Ok(unscanned) = u16::try_from(unscanned) else {
            return self.stop(v, before, sink);
        };
        sink_forward(before, sink);
        self.skip(unscanned);
        self.frames += 1;
        self.in_message = !h.fin;
        self.remaining = h.payload_len;
        // (An empty final frame ends its message here: nothing is left to end it later.)
        self.final_frame = h.fin && h.payload_len > 0;
        Err(v)
    }

    /// From here on data frames are counted and dropped, control frames reported; the last
    /// `unscanned` bytes of the chunk just fed are for [`Scanner::take_unscanned`].
    fn skip(&mut self, unscanned: u16) {
        self.held = None;
        self.skipping = true;
        self.unscanned = unscanned;
        // Its inflater would need the skipped bytes; the limit has done its work.
        self.count = None;
        self.max_message = u64::MAX;
    }

    fn stop(
        &mut self,
        v: Violation,
        before: &[u8],
        sink: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Violation> {
        sink_forward(before, sink);
        self.held = None;
        self.stopped = Some(v);
        Err(v)
    }
}

fn sink_forward(bytes: &[u8], sink: &mut impl FnMut(Event<'_>)) {
    if !bytes.is_empty() {
        sink(Event::Forward(bytes));
    }
}

/// A close frame's payload (unmasked) as RFC 6455 §5.5.1 and §7.4 allow it: empty, or a
/// code an endpoint may send and a UTF-8 reason.
fn check_close(payload: &[u8]) -> Result<(), Violation> {
    match payload {
        [] => Ok(()),
        [_] => Err(Violation::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::sendable(code) {
                Err(Violation::CloseCode(code))
            } else if std::str::from_utf8(reason).is_err() {
                Err(Violation::CloseReasonNotUtf8(code))
            } else {
                Ok(())
            }
        }
    }
}

/// Reads a close frame's payload (already unmasked): code and reason, if well formed.
pub fn parse_close(payload: &[u8]) -> (Option<u16>, String) {
    if payload.len() < 2 {
        return (None, String::new());
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    (
        Some(code),
        String::from_utf8_lossy(&payload[2..]).into_owned(),
    )
}

/// A close frame the proxy writes: masked toward a server (the proxy is its client),
/// unmasked toward a client.
pub fn close_frame(code: u16, reason: &str, to: Sender) -> Vec<u8> {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // Control payloads are at most 125 bytes; cut the reason on a character boundary.
    let mut r = reason;
    while r.len() > MAX_CONTROL_PAYLOAD as usize - 2 {
        let mut cut = r.len() - 1;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r = &r[..cut];
    }
    payload.extend_from_slice(r.as_bytes());
    encode_frame(opcode::CLOSE, true, &payload, mask_toward(to))
}

/// A mask for frames written toward `to`: a fresh random key toward a server, none toward a
/// client (RFC 6455 §5.3).
pub fn mask_toward(to: Sender) -> Option<[u8; 4]> {
    match to {
        Sender::Server => Some(rand::random()),
        Sender::Client => None,
    }
}

/// The fuzz property, shared by the cargo-fuzz target and the regression test: the first byte
/// picks the sender, limit and read sizes; the rest is scanned in pieces. The scanner must not
/// panic, must pass on exactly a prefix of its input, and, without a violation, everything but
/// an incomplete trailing frame head or control frame. Past a message over the limit it is
/// fed on as the relay feeds it (`take_unscanned`): nothing but the input's own control
/// frames, in order, may be reported. When the knobs allow RSV1 (permessage-deflate), the
/// scanner also counts inflated sizes (`max_message_inflated`, the limit the knobs' byte
/// times 16, the context kept or not by its sixth bit) when the knobs set a limit: the
/// inflater then reads the payloads, and a stream that inflates too far or is not deflate at
/// all must end as the other violations do.
#[doc(hidden)]
pub fn fuzz_scanner(data: &[u8]) {
    let Some((&knobs, input)) = data.split_first() else {
        return;
    };
    let from = if knobs & 1 == 0 {
        Sender::Client
    } else {
        Sender::Server
    };
    let allowed_rsv = (knobs >> 1) & 0b111;
    let max_message = (knobs & 0x10 != 0).then_some(u64::from(knobs) * 64);
    let step = usize::from(knobs >> 5) * 3 + 1;
    let mut scanner = Scanner::new(from, allowed_rsv, max_message);
    if allowed_rsv & 0b100 != 0 && max_message.is_some() {
        scanner.count_inflated(u64::from(knobs) * 16, knobs & 0x20 != 0);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut stopped = false;
    // Past a message over the limit: where the next control frame may start in `input`.
    let mut skipped_from: Option<usize> = None;
    for chunk in input.chunks(step) {
        let mut chunk = chunk;
        loop {
            let mut forwarded_after_cut = false;
            let r = scanner.feed(chunk, &mut |ev| match ev {
                Event::Forward(_) | Event::MessageEnd if skipped_from.is_some() => {
                    forwarded_after_cut = true;
                }
                Event::Forward(b) => out.extend_from_slice(b),
                Event::Control {
                    opcode: op,
                    frame,
                    payload,
                } => {
                    assert!(payload.len() <= MAX_CONTROL_PAYLOAD as usize);
                    assert!(op != opcode::CLOSE || check_close(payload).is_ok());
                    match &mut skipped_from {
                        // Each control frame reported past the cut is one of the input's,
                        // in order.
                        Some(at) => {
                            let found = input[*at..]
                                .windows(frame.len())
                                .position(|w| w == frame)
                                .expect("a control frame past the cut that the input lacks");
                            *at += found + frame.len();
                        }
                        None => out.extend_from_slice(frame),
                    }
                }
                Event::MessageEnd => {}
            });
            assert!(
                !forwarded_after_cut,
                "data reported past a message over the limit"
            );
            match r {
                Err(Violation::MessageTooBig(_) | Violation::InflatedTooBig(_))
                    if skipped_from.is_none() && scanner.stopped().is_none() =>
                {
                    skipped_from = Some(out.len());
                }
                Err(_) => {
                    stopped = true;
                    break;
                }
                Ok(()) => {}
            }
            let unscanned = scanner.take_unscanned();
            if unscanned == 0 {
                break;
            }
            assert!(unscanned <= chunk.len());
            chunk = &chunk[chunk.len() - unscanned..];
        }
        if stopped {
            break;
        }
    }
    if skipped_from.is_some() {
        stopped = true;
    }
    assert!(
        input.starts_with(&out),
        "forwarded bytes are not a prefix of the input"
    );
    if !stopped {
        let held = input.len() - out.len();
        assert!(
            held <= MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD as usize,
            "{held} bytes neither forwarded nor held"
        );
    }
}
