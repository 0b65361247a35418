//! What counting inflated sizes (`max_message_inflated`) costs, per MiB of compressed input:
//!
//! - `inflate_count/{text,random}`: `InflateCount` alone on one message, unmasked: text-like
//!   JSON lines (compressing about 6:1) and random bytes (deflate stores them: 1:1).
//! - `scanner/{plain,counted}/{text,random}`: the relay's per-direction work on the same
//!   message as one masked client frame fed in 64 KiB reads, without and with counting: the
//!   difference is what counting adds to the relay.
//!
//! Throughput is in compressed (wire) bytes. Run with `cargo bench --bench inflate`.

use std::hint::black_box;
use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flate2::Compression;
use flate2::write::DeflateEncoder;
use wsgate::deflate::inflate::InflateCount;
use wsgate::frame::{FrameHeader, Scanner, Sender, opcode};

/// A small deterministic generator (xorshift64*), so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Chat-like JSON lines from a small vocabulary, `len` bytes.
fn text(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "hello", "world", "the", "proxy", "message", "room", "lobby", "user", "joined", "left",
        "typing", "price", "update", "order", "book", "bid", "ask", "42", "3.14", "true",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(len + 256);
    while out.len() < len {
        let id = rng.next() % 100_000;
        write!(
            out,
            "{{\"id\":{id},\"user\":\"u{}\",\"text\":\"",
            rng.next() % 500
        )
        .unwrap();
        for _ in 0..(4 + rng.next() % 12) {
            out.extend_from_slice(WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(b"\"}\n");
    }
    out.truncate(len);
    out
}

fn random(len: usize) -> Vec<u8> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// As a permessage-deflate sender writes a message: raw deflate, sync-flushed, without the
/// trailing `00 00 ff ff` (RFC 7692 §7.2.1).
fn compress(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.flush().unwrap();
    let mut out = e.get_ref().clone();
    out.truncate(out.len() - 4);
    out
}

/// About 1 MiB of compressed input of each kind.
fn inputs() -> [(&'static str, Vec<u8>); 2] {
    [
        ("text", compress(&text(6 << 20))),
        ("random", compress(&random(1 << 20))),
    ]
}

fn inflate_count(c: &mut Criterion) {
    let mut g = c.benchmark_group("inflate_count");
    for (name, wire) in inputs() {
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut count = InflateCount::new(u64::MAX, false);
                count.frame(true, true, None);
                for piece in wire.chunks(64 << 10) {
                    count.payload(black_box(piece)).unwrap();
                }
                let n = count.inflated();
                count.end().unwrap();
                n
            })
        });
    }
    g.finish();
}

fn scanner(c: &mut Criterion) {
    let mut g = c.benchmark_group("scanner");
    for (name, wire) in inputs() {
        let mut frame = Vec::new();
        let mask = [0x11, 0x22, 0x33, 0x44];
        FrameHeader {
            fin: true,
            rsv: 0b100,
            opcode: opcode::BINARY,
            mask: Some(mask),
            payload_len: wire.len() as u64,
        }
        .encode(&mut frame);
        let start = frame.len();
        frame.extend_from_slice(&wire);
        wsgate::frame::apply_mask(&mut frame[start..], mask, 0);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        for counted in [false, true] {
            let label = format!("{}/{name}", ["plain", "counted"][counted as usize]);
            g.bench_function(label, |b| {
                b.iter(|| {
                    let mut s = Scanner::new(Sender::Client, 0b100, None);
                    if counted {
                        s.count_inflated(u64::MAX, false);
                    }
                    let mut forwarded = 0usize;
                    for chunk in frame.chunks(64 << 10) {
                        s.feed(black_box(chunk), &mut |ev| {
                            if let wsgate::frame::Event::Forward(b) = ev {
                                forwarded += b.len();
                            }
                        })
                        .unwrap();
                    }
                    forwarded
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, inflate_count, scanner);
criterion_main!(benches);
