//! WebSocket frame headers (RFC 6455 §5.2): parse and encode.
//!
//! Today this serves the demo's echo backend; the frame-aware relay builds its streaming
//! scanner on the same header codec.

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

/// Close codes of RFC 6455 §7.4.1 that the proxy uses.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
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
    #[error("non-minimal length encoding")]
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
                if n <= u16::MAX as u64 {
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
