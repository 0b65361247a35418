//! Counting a compressed message's inflated size as it streams past, without keeping it.
//!
//! The relay forwards compressed payloads unchanged; a copy of each piece is unmasked into a
//! small buffer on the stack and inflated into another, which is thrown away: only the count
//! remains. No message is buffered, and a deflate bomb costs CPU only up to the limit: the
//! count is checked after every output buffer, so inflating stops a few KiB past it.

use flate2::{Decompress, FlushDecompress, Status};

/// Bytes unmasked (input) and inflated (output) per step, on the stack. Output is the larger:
/// deflate expands up to ~1032:1, so small input pieces keep the output loop short.
const IN_STEP: usize = 4 * 1024;
const OUT_STEP: usize = 16 * 1024;

/// RFC 7692 §7.2.2: the sender removed these four bytes (the end of an empty stored block
/// that a sync flush writes) from the end of every message; the receiver appends them.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Why counting stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountError {
    /// The message inflates to more than the limit.
    TooBig,
    /// Not valid raw deflate (RFC 1951).
    Corrupt,
}

/// One direction's counting state: the limit and, while a compressed message is in flight
/// (or for the whole session with context takeover), the inflater.
#[derive(Debug)]
pub struct InflateCount {
    limit: u64,
    /// Context takeover (RFC 7692 §7.1.1): the window persists across messages, so the
    /// inflater is kept between them.
    takeover: bool,
    /// The message in flight is compressed (RSV1 on its first frame).
    pub compressed: bool,
    /// The current frame's masking key and where in it the next payload byte falls.
    mask: Option<[u8; 4]>,
    phase: usize,
    /// Inflated bytes of the message in flight.
    inflated: u64,
    /// About 43 KiB (miniz_oxide's state and 32 KiB window) while it exists.
    inflater: Option<Decompress>,
}

impl InflateCount {
    pub fn new(limit: u64, takeover: bool) -> InflateCount {
        InflateCount {
            limit,
            takeover,
            compressed: false,
            mask: None,
            phase: 0,
            inflated: 0,
            inflater: None,
        }
    }

    /// A data frame starts: `first` if it opens a message (then RSV1 says whether the message
    /// is compressed; continuation frames carry RSV1 clear, RFC 7692 §6.1).
    pub fn frame(&mut self, first: bool, rsv1: bool, mask: Option<[u8; 4]>) {
        if first {
            self.compressed = rsv1;
            self.inflated = 0;
        }
        self.mask = mask;
        self.phase = 0;
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Inflated bytes of the message in flight so far.
    pub fn inflated(&self) -> u64 {
        self.inflated
    }

    /// Counts one piece of the current frame's payload, as received (still masked).
    pub fn payload(&mut self, data: &[u8]) -> Result<(), CountError> {
        if !self.compressed {
            return Ok(());
        }
        let mut buf = [0u8; IN_STEP];
        for piece in data.chunks(IN_STEP) {
            let buf = &mut buf[..piece.len()];
            buf.copy_from_slice(piece);
            if let Some(key) = self.mask {
                unmask(buf, key, self.phase);
                self.phase = (self.phase + piece.len()) & 3;
            }
            self.inflate(buf)?;
        }
        Ok(())
    }

    /// The message is complete: counts what the trailer releases, then drops the inflater
    /// unless the window must persist.
    pub fn end(&mut self) -> Result<(), CountError> {
        if !self.compressed {
            return Ok(());
        }
        let r = self.inflate(&TRAILER);
        self.compressed = false;
        self.inflated = 0;
        if !self.takeover || r.is_err() {
            self.inflater = None;
        }
        r
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<(), CountError> {
        let d = self.inflater.get_or_insert_with(|| Decompress::new(false));
        let mut out = [0u8; OUT_STEP];
        loop {
            let (in0, out0) = (d.total_in(), d.total_out());
            let status = d
                .decompress(input, &mut out, FlushDecompress::None)
                .map_err(|_| CountError::Corrupt)?;
            let used = (d.total_in() - in0) as usize;
            let made = d.total_out() - out0;
            input = &input[used..];
            self.inflated += made;
            if self.inflated > self.limit {
                return Err(CountError::TooBig);
            }
            if status == Status::StreamEnd {
                // A final block (BFINAL) ends the deflate stream; anything after it starts a
                // new one, with an empty window.
                d.reset(false);
                if input.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if (input.is_empty() && (made as usize) < out.len()) || (used == 0 && made == 0) {
                return Ok(());
            }
        }
    }
}

/// XORs `buf` with the masking key, starting `phase` bytes into it; eight bytes at a time
/// (the byte-wise loop cost as much as inflating random data, measured with the bench).
fn unmask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    let mut k = [0u8; 8];
    for (i, b) in k.iter_mut().enumerate() {
        *b = key[(phase + i) & 3];
    }
    let word = u64::from_ne_bytes(k);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ word;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    // A multiple of 8 bytes in: the key's phase is unchanged for the rest.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= k[i];
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::DeflateEncoder;

    use super::*;

    /// A message as a permessage-deflate sender writes it: raw deflate, sync-flushed, the
    /// trailing `00 00 ff ff` removed (RFC 7692 §7.2.1).
    pub fn compress(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.flush().unwrap();
        let mut out = e.get_ref().clone();
        assert_eq!(out[out.len() - 4..], TRAILER);
        out.truncate(out.len() - 4);
        out
    }

    fn count(c: &mut InflateCount, data: &[u8]) -> Result<u64, CountError> {
        c.frame(true, true, None);
        c.payload(data)?;
        let n = c.inflated();
        c.end()?;
        Ok(n)
    }

    #[test]
    fn counts_exact_inflated_sizes() {
        let text: Vec<u8> = b"the quick brown fox ".repeat(5000);
        let mut c = InflateCount::new(1 << 20, false);
        assert_eq!(count(&mut c, &compress(&text)), Ok(text.len() as u64));
        assert!(c.inflater.is_none(), "no inflater kept between messages");
        assert_eq!(count(&mut c, &compress(b"")), Ok(0));
    }

    #[test]
    fn a_deflate_bomb_is_cut_at_the_limit() {
        // 64 MiB of zeros compress to about 64 KiB.
        let bomb = compress(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        let mut c = InflateCount::new(1 << 20, false);
        c.frame(true, true, None);
        // Fed in pieces, as reads deliver it.
        let r = bomb.chunks(1000).try_for_each(|p| c.payload(p));
        assert_eq!(r, Err(CountError::TooBig));
        // Stopped within one output step of the limit, not after inflating everything.
        assert!(
            c.inflated() <= (1 << 20) + OUT_STEP as u64,
            "{}",
            c.inflated()
        );
    }

    #[test]
    fn masked_pieces_are_unmasked_at_the_right_phase() {
        let text: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut wire = compress(&text);
        let key = [0x11, 0x22, 0x33, 0x44];
        for (i, b) in wire.iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
        let mut c = InflateCount::new(u64::MAX, false);
        c.frame(true, true, Some(key));
        for p in wire.chunks(7) {
            c.payload(p).unwrap();
        }
        assert_eq!(c.inflated(), text.len() as u64);
        c.end().unwrap();
    }

    #[test]
    fn unmask_matches_the_bytewise_rule() {
        let key = [0x11, 0x22, 0x33, 0x44];
        for phase in 0..4 {
            for len in [0, 1, 7, 8, 9, 31] {
                let data: Vec<u8> = (0..len as u8).collect();
                let mut fast = data.clone();
                unmask(&mut fast, key, phase);
                let slow: Vec<u8> = data
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(phase + i) & 3])
                    .collect();
                assert_eq!(fast, slow, "phase {phase} len {len}");
            }
        }
    }

    #[test]
    fn uncompressed_messages_and_garbage() {
        let mut c = InflateCount::new(10, false);
        c.frame(true, false, None);
        c.payload(&[0xff; 100]).unwrap();
        c.end().unwrap();
        // 0xff: a block of the reserved type 3.
        c.frame(true, true, None);
        assert_eq!(c.payload(&[0xff; 10]), Err(CountError::Corrupt));
    }

    #[test]
    fn context_takeover_keeps_the_window() {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        let msg = b"a message that repeats, a message that repeats".repeat(10);
        e.write_all(&msg).unwrap();
        e.flush().unwrap();
        let first = e.get_ref().clone();
        e.write_all(&msg).unwrap();
        e.flush().unwrap();
        let second = e.get_ref()[first.len()..].to_vec();
        let strip = |v: &[u8]| v[..v.len() - 4].to_vec();
        let mut c = InflateCount::new(1 << 20, true);
        assert_eq!(count(&mut c, &strip(&first)), Ok(msg.len() as u64));
        assert_eq!(count(&mut c, &strip(&second)), Ok(msg.len() as u64));
        // Without the window the second message refers to bytes the inflater never saw:
        // miniz_oxide reads them from its zeroed window instead of failing, and the size
        // (which depends only on the lengths, not the bytes) is still exact. So a sender that
        // keeps its window against what was negotiated is still counted right.
        let mut fresh = InflateCount::new(1 << 20, false);
        assert_eq!(count(&mut fresh, &strip(&second)), Ok(msg.len() as u64));
    }
}
