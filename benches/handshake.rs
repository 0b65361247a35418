//! Micro-benchmarks of the per-connection and per-frame hot paths that need no I/O:
//!
//! - `handshake/validate/*`: RFC 6455 §4.2.1 checks of a client's upgrade request, as a
//!   browser sends it (Chrome- and Firefox-shaped, 14 headers each, cookies included).
//! - `handshake/accept_key`: SHA-1 + base64 of `Sec-WebSocket-Accept`.
//! - `frame_header_parse/*`: `FrameHeader::parse` on client (masked) binary frame headers with
//!   a 7-bit (64 B), 16-bit (16 KiB) and 64-bit (1 MiB) payload length.
//!
//! Run with `cargo bench --bench handshake` (see benches/README.md).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Version, request};
use wsgate::frame::{FrameHeader, opcode};
use wsgate::handshake::{accept_key, validate};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The upgrade request Chrome sends for `new WebSocket(url, ["chat", "superchat"])`, as hyper
/// hands it to the proxy (header names lower-cased, in arrival order).
fn chrome_request() -> request::Parts {
    Request::builder()
        .method("GET")
        .uri("/chat?room=lobby")
        .version(Version::HTTP_11)
        .header("host", "chat.example.com")
        .header("connection", "Upgrade")
        .header("pragma", "no-cache")
        .header("cache-control", "no-cache")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/131.0.0.0 Safari/537.36",
        )
        .header("upgrade", "websocket")
        .header("origin", "https://chat.example.com")
        .header("sec-websocket-version", "13")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("accept-language", "en-US,en;q=0.9,de;q=0.8")
        .header(
            "cookie",
            "session=3f9a1c0e7b2d4a6f8e1c3b5d7f9a2c4e; theme=dark; _ga=GA1.2.1234567890.1700000000",
        )
        .header("sec-websocket-key", KEY)
        .header(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        )
        .header("sec-websocket-protocol", "chat, superchat")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// Firefox's shape of the same request: `Connection: keep-alive, Upgrade`, so the token
/// search has to look past the first list element.
fn firefox_request() -> request::Parts {
    Request::builder()
        .method("GET")
        .uri("/chat?room=lobby")
        .version(Version::HTTP_11)
        .header("host", "chat.example.com")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
        )
        .header("accept", "*/*")
        .header("accept-language", "en-US,en;q=0.5")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("sec-websocket-version", "13")
        .header("origin", "https://chat.example.com")
        .header("sec-websocket-protocol", "chat, superchat")
        .header("sec-websocket-extensions", "permessage-deflate")
        .header("sec-websocket-key", KEY)
        .header("connection", "keep-alive, Upgrade")
        .header(
            "cookie",
            "session=3f9a1c0e7b2d4a6f8e1c3b5d7f9a2c4e; theme=dark; _ga=GA1.2.1234567890.1700000000",
        )
        .header("pragma", "no-cache")
        .header("upgrade", "websocket")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn bench_handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    for (name, parts) in [("chrome", chrome_request()), ("firefox", firefox_request())] {
        let hs = validate(&parts).expect("the benchmark request must be valid");
        assert_eq!(hs.protocols, ["chat", "superchat"]);
        group.bench_with_input(BenchmarkId::new("validate", name), &parts, |b, parts| {
            b.iter(|| validate(black_box(parts)))
        });
    }
    assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    group.bench_function("accept_key", |b| {
        b.iter(|| accept_key(black_box(KEY.as_bytes())))
    });
    group.finish();
}

/// A client's (masked) binary frame header announcing `payload_len` bytes.
fn masked_header(payload_len: u64) -> Vec<u8> {
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode: opcode::BINARY,
        mask: Some([0x37, 0xfa, 0x21, 0x3d]),
        payload_len,
    };
    let mut out = Vec::new();
    header.encode(&mut out);
    assert_eq!(FrameHeader::parse(&out), Ok(Some((header, out.len()))));
    out
}

fn bench_frame_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header_parse");
    for (name, payload_len) in [
        ("len7_64B", 64u64),
        ("len16_16KiB", 16 * 1024),
        ("len64_1MiB", 1024 * 1024),
    ] {
        let buf = masked_header(payload_len);
        group.bench_with_input(BenchmarkId::from_parameter(name), &buf, |b, buf| {
            b.iter(|| FrameHeader::parse(black_box(buf)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_handshake, bench_frame_header);
criterion_main!(benches);
