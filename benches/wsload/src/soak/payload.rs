//! The soak's messages: mixed sizes and kinds, each a pure function of (stream seed, sequence
//! number), so an echo is checked by making the message again and nothing sent is stored.
//! Text messages mix 1- to 4-byte UTF-8 characters, so a proxy that cut or re-encoded text
//! would be caught as well as one that lost, corrupted or reordered bytes.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// splitmix64: tiny, fast, and good enough to pick sizes and fill payloads.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let span = hi - lo + 1;
        lo + ((self.next_u64() as u128 * span as u128) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A seed for one stream of numbers, derived from a parent seed and an index.
pub fn derive(seed: u64, index: u64) -> u64 {
    Rng::new(seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93)).next_u64()
}

/// Which sizes a session's messages have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Profile {
    /// 60 % 0–125 bytes (7-bit length), 30 % 126–4,096, 10 % 4,097 up to `max` (16-bit
    /// length, and 64-bit once `max` is over 65,535).
    Mixed { max: usize },
    /// 8 KiB up to `max`: what a slow reader is sent, to fill the buffers on the way.
    Bulk { max: usize },
}

impl Profile {
    fn size(self, rng: &mut Rng) -> usize {
        let r = rng.range(0, 99);
        let (lo, hi) = match self {
            Profile::Mixed { max } if r < 60 => (0, 125.min(max)),
            Profile::Mixed { max } if r < 90 => (126.min(max), 4096.min(max)),
            Profile::Mixed { max } => (4097.min(max), max),
            Profile::Bulk { max } => (8192.min(max), max),
        };
        rng.range(lo as u64, hi as u64) as usize
    }
}

/// Message `seq` of the stream `stream`: its kind, size and every byte follow from the two.
pub fn message(stream: u64, seq: u64, profile: Profile) -> Message {
    let mut rng = Rng::new(derive(stream, seq));
    let text = rng.chance(0.4);
    let size = profile.size(&mut rng);
    if text {
        Message::Text(Utf8Bytes::from(text_of(&mut rng, size)))
    } else {
        Message::Binary(Bytes::from(binary_of(&mut rng, size)))
    }
}

fn binary_of(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(size);
    v
}

/// Exactly `size` bytes of UTF-8: mostly printable ASCII, with 2-, 3- and 4-byte characters.
fn text_of(rng: &mut Rng, size: usize) -> String {
    let mut s = String::with_capacity(size);
    while s.len() < size {
        let room = size - s.len();
        let r = rng.next_u64();
        let c = match r % 16 {
            0 if room >= 4 => char::from_u32(0x1F600 + (r >> 8) as u32 % 0x40),
            1 if room >= 3 => char::from_u32(0x4E00 + (r >> 8) as u32 % 0x5000),
            2 if room >= 2 => char::from_u32(0xC0 + (r >> 8) as u32 % 0x40),
            _ => char::from_u32(0x20 + (r >> 8) as u32 % 0x5F),
        };
        s.push(c.unwrap_or('?'));
    }
    s
}

/// Why an echo is not the message that was sent, or None if it is.
pub fn mismatch(got: &Message, stream: u64, seq: u64, profile: Profile) -> Option<String> {
    let want = message(stream, seq, profile);
    let kind = |m: &Message| if m.is_text() { "text" } else { "binary" };
    if got.is_text() != want.is_text() || !(got.is_text() || got.is_binary()) {
        return Some(format!(
            "message {seq}: got a {} message, sent {}",
            kind(got),
            kind(&want)
        ));
    }
    let (g, w) = (payload(got), payload(&want));
    if g.len() != w.len() {
        return Some(format!(
            "message {seq}: got {} bytes, sent {}",
            g.len(),
            w.len()
        ));
    }
    let at = g.iter().zip(w).position(|(a, b)| a != b)?;
    Some(format!(
        "message {seq} ({} bytes): first differing byte at {at}",
        w.len()
    ))
}

fn payload(m: &Message) -> &[u8] {
    match m {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => &[],
    }
}

/// Payload bytes of a data message (0 for control frames).
pub fn len(m: &Message) -> u64 {
    payload(m).len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_reproducible_and_sized_by_profile() {
        let mixed = Profile::Mixed { max: 65_600 };
        let (mut small, mut large, mut text) = (0, 0, 0);
        for seq in 0..2000 {
            let m = message(7, seq, mixed);
            assert_eq!(m, message(7, seq, mixed));
            assert!(mismatch(&m, 7, seq, mixed).is_none());
            assert!(m.len() <= 65_600);
            small += usize::from(m.len() <= 125);
            large += usize::from(m.len() > 4096);
            text += usize::from(m.is_text());
        }
        assert!((1000..1400).contains(&small), "{small}");
        assert!((120..300).contains(&large), "{large}");
        assert!((600..1000).contains(&text), "{text}");
        for seq in 0..50 {
            let m = message(9, seq, Profile::Bulk { max: 65_536 });
            assert!((8192..=65_536).contains(&m.len()));
        }
    }

    #[test]
    fn text_is_exact_utf8_with_wide_characters() {
        let mut rng = Rng::new(1);
        for size in [0, 1, 2, 3, 4, 5, 125, 4096, 65_536] {
            let s = text_of(&mut rng, size);
            assert_eq!(s.len(), size);
        }
        let s = text_of(&mut rng, 10_000);
        assert!(s.chars().any(|c| c.len_utf8() == 4));
        assert!(s.chars().any(|c| c.len_utf8() == 3));
        assert!(s.chars().any(|c| c.len_utf8() == 2));
    }

    #[test]
    fn every_change_is_a_mismatch() {
        let p = Profile::Mixed { max: 65_536 };
        let seq = (0..100).find(|&s| message(3, s, p).len() > 200).unwrap();
        let m = message(3, seq, p);
        assert!(
            mismatch(&m, 3, seq + 1, p).is_some(),
            "another sequence number"
        );
        assert!(mismatch(&m, 4, seq, p).is_some(), "another stream");
        let mut raw = payload(&m).to_vec();
        raw[150] ^= 0x01;
        let flipped = Message::Binary(Bytes::from(raw.clone()));
        let got = mismatch(&flipped, 3, seq, p);
        if m.is_binary() {
            assert!(got.unwrap().contains("at 150"));
        } else {
            assert!(got.unwrap().contains("binary"));
        }
        raw.pop();
        assert!(mismatch(&Message::Binary(Bytes::from(raw)), 3, seq, p).is_some());
        assert!(mismatch(&Message::Ping(Bytes::new()), 3, seq, p).is_some());
    }
}
