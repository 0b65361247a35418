//! The streaming frame scanner: arbitrary valid frame sequences cut at arbitrary read
//! boundaries come out byte-identical with the right events; every §5 violation is caught
//! before a byte of the offending frame is forwarded.

use proptest::prelude::*;
use wsgate::frame::{
    Event, FrameError, FrameHeader, Scanner, Sender, Violation, encode_frame, opcode, parse_close,
};

/// What a scan produced: the bytes passed on (forwarded data and control frames, in order),
/// the control frames seen, and the number of messages completed.
#[derive(Debug, Default, PartialEq)]
struct Out {
    bytes: Vec<u8>,
    controls: Vec<(u8, Vec<u8>)>,
    messages: usize,
}

impl Out {
    /// Adds what one event reports: the bytes of everything, the control frames apart.
    fn record(&mut self, ev: Event<'_>) {
        match ev {
            Event::Forward(b) => self.bytes.extend_from_slice(b),
            Event::Control {
                opcode,
                frame,
                payload,
            } => {
                self.bytes.extend_from_slice(frame);
                self.controls.push((opcode, payload.to_vec()));
            }
            Event::MessageEnd => self.messages += 1,
        }
    }
}

fn scan(scanner: &mut Scanner, chunks: &[&[u8]]) -> (Out, Option<Violation>) {
    let mut out = Out::default();
    for chunk in chunks {
        let r = scanner.feed(chunk, &mut |ev| out.record(ev));
        if let Err(v) = r {
            return (out, Some(v));
        }
    }
    (out, None)
}

fn frame(op: u8, fin: bool, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    encode_frame(op, fin, &payload, mask)
}

/// A generated stream: its bytes, the control frames in it (opcode, payload), how many data
/// messages it holds, and whether it is masked (from a client).
type Generated = (Vec<u8>, Vec<(u8, Vec<u8>)>, usize, bool);

/// A valid message sequence: data messages of 1–3 fragments with interleaved control frames.
fn stream_strategy() -> impl Strategy<Value = Generated> {
    let lens = prop_oneof![
        0usize..=125,
        126usize..=300,
        Just(65_536usize),
        Just(70_000usize)
    ];
    let message = (
        prop::collection::vec(lens, 1..=3),
        any::<bool>(),
        prop::option::of((
            prop_oneof![Just(opcode::PING), Just(opcode::PONG)],
            0usize..=125,
        )),
    );
    (prop::collection::vec(message, 1..=5), any::<bool>()).prop_map(|(messages, masked)| {
        let mask = masked.then_some([9, 8, 7, 6]);
        let mut bytes = Vec::new();
        let mut controls = Vec::new();
        for (frags, text, control) in &messages {
            for (i, len) in frags.iter().enumerate() {
                let op = if i == 0 {
                    if *text { opcode::TEXT } else { opcode::BINARY }
                } else {
                    opcode::CONTINUATION
                };
                bytes.extend(frame(op, i + 1 == frags.len(), *len, mask));
                // A control frame between fragments (or after the message).
                if let Some((cop, clen)) = control
                    && i == 0
                {
                    let payload: Vec<u8> = (0..*clen).map(|i| i as u8).collect();
                    bytes.extend(encode_frame(*cop, true, &payload, mask));
                    controls.push((*cop, payload));
                }
            }
        }
        (bytes, controls, messages.len(), masked)
    })
}

proptest! {
    #[test]
    fn any_cut_gives_identical_bytes_and_events(
        (stream, controls, messages, masked) in stream_strategy(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.extend([0, stream.len()]);
        points.sort_unstable();
        let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
        let from = if masked { Sender::Client } else { Sender::Server };
        let mut scanner = Scanner::new(from, 0, None);
        let (out, violation) = scan(&mut scanner, &chunks);
        prop_assert_eq!(violation, None);
        prop_assert!(out.bytes == stream, "bytes differ");
        prop_assert_eq!(out.controls, controls);
        prop_assert_eq!(out.messages, messages);
        prop_assert!(scanner.at_boundary());
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Byte-at-a-time feeding is the hardest cut of all.
    #[test]
    fn one_byte_reads((stream, controls, messages, masked) in stream_strategy()) {
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let from = if masked { Sender::Client } else { Sender::Server };
        let mut scanner = Scanner::new(from, 0, None);
        let (out, violation) = scan(&mut scanner, &chunks);
        prop_assert_eq!(violation, None);
        prop_assert!(out.bytes == stream);
        prop_assert_eq!(out.controls.len(), controls.len());
        prop_assert_eq!(out.messages, messages);
    }
}

/// Feeds `good` then `bad` (one chunk, then byte by byte) and checks that exactly `good` was
/// forwarded and the violation reported.
fn assert_cut(from: Sender, good: &[u8], bad: &[u8], want: Violation) {
    for split in [false, true] {
        let mut stream = good.to_vec();
        stream.extend_from_slice(bad);
        stream.extend(frame(opcode::TEXT, true, 3, None)); // never reached
        let chunks: Vec<&[u8]> = if split {
            stream.chunks(1).collect()
        } else {
            vec![&stream[..]]
        };
        let mut s = Scanner::new(from, 0, Some(1000));
        let (out, v) = scan(&mut s, &chunks);
        assert_eq!(v, Some(want), "split={split}");
        assert_eq!(
            out.bytes, good,
            "split={split}: forwarded past the violation"
        );
    }
}

const M: Option<[u8; 4]> = Some([1, 2, 3, 4]);

#[test]
fn masking_direction() {
    let ok = frame(opcode::TEXT, true, 5, M);
    assert_cut(
        Sender::Client,
        &ok,
        &frame(opcode::TEXT, true, 5, None),
        Violation::UnmaskedFromClient,
    );
    let ok = frame(opcode::TEXT, true, 5, None);
    assert_cut(
        Sender::Server,
        &ok,
        &frame(opcode::TEXT, true, 5, M),
        Violation::MaskedFromServer,
    );
}

#[test]
fn control_frames_are_short_and_unfragmented() {
    let ok = frame(opcode::PING, true, 125, M);
    let mut long = vec![0x89, 0x80 | 126, 0, 126];
    long.extend([1, 2, 3, 4]);
    assert_cut(
        Sender::Client,
        &ok,
        &long,
        Violation::Frame(FrameError::ControlTooLong),
    );
    assert_cut(
        Sender::Client,
        &ok,
        &frame(opcode::PING, false, 1, M),
        Violation::Frame(FrameError::FragmentedControl),
    );
}

#[test]
fn reserved_opcodes_and_bits() {
    let ok = frame(opcode::BINARY, true, 2, M);
    for op in [3u8, 7, 0xB, 0xF] {
        let mut bad = frame(opcode::BINARY, true, 2, M);
        bad[0] = 0x80 | op;
        assert_cut(
            Sender::Client,
            &ok,
            &bad,
            Violation::Frame(FrameError::ReservedOpcode(op)),
        );
    }
    let mut rsv = frame(opcode::BINARY, true, 2, M);
    rsv[0] |= 0x40;
    assert_cut(Sender::Client, &ok, &rsv, Violation::ReservedBits);
    // With permessage-deflate negotiated, RSV1 passes on data frames...
    let mut s = Scanner::new(Sender::Client, 0b100, None);
    assert_eq!(scan(&mut s, &[&rsv]).1, None);
    // ...but never on control frames.
    let mut ping = frame(opcode::PING, true, 1, M);
    ping[0] |= 0x40;
    let mut s = Scanner::new(Sender::Client, 0b100, None);
    assert_eq!(scan(&mut s, &[&ping]).1, Some(Violation::ReservedBits));
    // ...nor on a message's later fragments (RFC 7692 §6.1): RSV1 marks its first frame.
    let mut first = frame(opcode::BINARY, false, 2, M);
    first[0] |= 0x40;
    let mut rest = frame(opcode::CONTINUATION, true, 2, M);
    let mut s = Scanner::new(Sender::Client, 0b100, None);
    assert_eq!(scan(&mut s, &[&first, &rest]).1, None);
    rest[0] |= 0x40;
    let mut s = Scanner::new(Sender::Client, 0b100, None);
    assert_eq!(
        scan(&mut s, &[&first, &rest]).1,
        Some(Violation::ReservedBits)
    );
}

/// Close frames RFC 6455 forbids on the wire stop the stream before a byte of them passes.
#[test]
fn forbidden_close_frames() {
    let ok = encode_frame(opcode::CLOSE, true, &[0x03, 0xE8], M);
    let mut s = Scanner::new(Sender::Client, 0, None);
    assert_eq!(scan(&mut s, &[&ok]).1, None);
    let ping = frame(opcode::PING, true, 1, M);
    for (payload, want) in [
        (&[0x03][..], Violation::CloseTooShort),
        (&[0x03, 0xED], Violation::CloseCode(1005)),
        (&[0x03, 0xEE], Violation::CloseCode(1006)),
        (&[0x03, 0xF7], Violation::CloseCode(1015)),
        (&[0x07, 0xD0], Violation::CloseCode(2000)),
        (&[0x13, 0x88], Violation::CloseCode(5000)),
        (
            &[0x03, 0xE8, b'o', 0xC3],
            Violation::CloseReasonNotUtf8(1000),
        ),
    ] {
        let bad = encode_frame(opcode::CLOSE, true, payload, M);
        assert_cut(Sender::Client, &ping, &bad, want);
    }
    // Codes an endpoint may send, and a UTF-8 reason, pass.
    for code in [1000u16, 1003, 1007, 1014, 3000, 4999] {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("é".as_bytes());
        let mut s = Scanner::new(Sender::Server, 0, None);
        let f = encode_frame(opcode::CLOSE, true, &payload, None);
        assert_eq!(scan(&mut s, &[&f]).1, None, "{code}");
    }
}

#[test]
fn continuation_order() {
    let ok = frame(opcode::TEXT, true, 1, M);
    assert_cut(
        Sender::Client,
        &ok,
        &frame(opcode::CONTINUATION, true, 1, M),
        Violation::UnexpectedContinuation,
    );
    let start = frame(opcode::TEXT, false, 1, M);
    assert_cut(
        Sender::Client,
        &start,
        &frame(opcode::BINARY, true, 1, M),
        Violation::ExpectedContinuation,
    );
}

#[test]
fn length_msb() {
    let ok = frame(opcode::TEXT, true, 1, None);
    let mut bad = vec![0x82, 127];
    bad.extend((1u64 << 63).to_be_bytes());
    assert_cut(
        Sender::Server,
        &ok,
        &bad,
        Violation::Frame(FrameError::LengthMsbSet),
    );
}

#[test]
fn non_minimal_lengths() {
    let ok = frame(opcode::TEXT, true, 1, None);
    let mut short16 = vec![0x82, 126];
    short16.extend(125u16.to_be_bytes());
    let mut short64 = vec![0x82, 127];
    short64.extend(65535u64.to_be_bytes());
    for bad in [short16, short64] {
        assert_cut(
            Sender::Server,
            &ok,
            &bad,
            Violation::Frame(FrameError::NonMinimalLength),
        );
    }
}

#[test]
fn message_size_limit_counts_every_fragment_and_cuts_at_the_header() {
    // Limit 1000 (see assert_cut): 600 + 600 crosses it at the second fragment's header.
    let first = frame(opcode::BINARY, false, 600, M);
    assert_cut(
        Sender::Client,
        &first,
        &frame(opcode::CONTINUATION, true, 600, M),
        Violation::MessageTooBig(1000),
    );
    // A single frame over the limit is cut before its payload is seen.
    let ok = frame(opcode::BINARY, true, 1000, M);
    let mut header_only = Vec::new();
    FrameHeader {
        fin: true,
        rsv: 0,
        opcode: opcode::BINARY,
        mask: M,
        payload_len: 1 << 40,
    }
    .encode(&mut header_only);
    assert_cut(
        Sender::Client,
        &ok,
        &header_only,
        Violation::MessageTooBig(1000),
    );
    // Control frames do not count toward a message.
    let mut s = Scanner::new(Sender::Client, 0, Some(1000));
    let mut stream = frame(opcode::BINARY, false, 900, M);
    stream.extend(frame(opcode::PING, true, 125, M));
    stream.extend(frame(opcode::CONTINUATION, true, 100, M));
    assert_eq!(scan(&mut s, &[&stream]).1, None);
}

#[test]
fn close_frames_are_read() {
    let mut payload = 4001u16.to_be_bytes().to_vec();
    payload.extend_from_slice("bye ✓".as_bytes());
    let close = encode_frame(opcode::CLOSE, true, &payload, M);
    let mut s = Scanner::new(Sender::Client, 0, None);
    let (out, v) = scan(&mut s, &close.chunks(3).collect::<Vec<_>>());
    assert_eq!(v, None);
    assert_eq!(
        out.bytes, close,
        "the close frame passes on masked, unchanged"
    );
    assert_eq!(out.controls.len(), 1);
    assert_eq!(
        parse_close(&out.controls[0].1),
        (Some(4001), "bye ✓".to_string())
    );
    assert_eq!(parse_close(&[]), (None, String::new()));
}

#[test]
fn boundary_tracking() {
    let mut s = Scanner::new(Sender::Server, 0, None);
    let f = frame(opcode::BINARY, true, 100, None);
    scan(&mut s, &[&f[..50]]);
    assert!(!s.at_boundary());
    scan(&mut s, &[&f[50..]]);
    assert!(s.at_boundary());
    // A held partial header has forwarded nothing, so the stream is still at a boundary.
    scan(&mut s, &[&f[..1]]);
    assert!(s.at_boundary());
}

/// Like [`scan`], but goes on past a message over the limit as the relay does: the unscanned
/// tail of that chunk is fed again, then the rest. Forwards after it are collected apart. A
/// violation that stops the scanner ends the scan.
fn scan_past_limit(scanner: &mut Scanner, chunks: &[&[u8]]) -> (Out, Out, Option<Violation>) {
    let (mut before, mut after, mut violation) = (Out::default(), Out::default(), None);
    for chunk in chunks {
        let mut chunk: &[u8] = chunk;
        loop {
            let out = if violation.is_some() {
                &mut after
            } else {
                &mut before
            };
            let r = scanner.feed(chunk, &mut |ev| out.record(ev));
            if let Err(v) = r {
                assert_eq!(violation.replace(v), None, "reported twice");
                if scanner.stopped().is_some() {
                    return (before, after, violation);
                }
            }
            let unscanned = scanner.take_unscanned();
            if unscanned == 0 {
                break;
            }
            chunk = &chunk[chunk.len() - unscanned..];
        }
    }
    (before, after, violation)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// A message over `max_message` leaves the framing intact: the scanner reports what came
    /// before it, the violation once, and after it only the control frames (the sender's
    /// close reply among them), never a data byte, however the stream is cut. Every frame is
    /// counted.
    #[test]
    fn past_a_message_over_the_limit_only_control_frames_are_reported(
        masked in any::<bool>(),
        first_fragment in 0usize..=900,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mask = masked.then_some([9, 8, 7, 6]);
        let from = if masked { Sender::Client } else { Sender::Server };
        let mut good = frame(opcode::TEXT, true, 10, mask);
        good.extend(encode_frame(opcode::PING, true, b"p1", mask));
        let mut stream = good.clone();
        // A message of two fragments whose second takes it past 1000 bytes.
        stream.extend(frame(opcode::BINARY, false, first_fragment, mask));
        stream.extend(frame(opcode::CONTINUATION, true, 1001 - first_fragment, mask));
        stream.extend(frame(opcode::TEXT, true, 2000, mask));
        stream.extend(encode_frame(opcode::PING, true, b"p2", mask));
        stream.extend(frame(opcode::BINARY, true, 5, mask));
        stream.extend(encode_frame(opcode::CLOSE, true, &[0x03, 0xf1], mask));
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.extend([0, stream.len()]);
        points.sort_unstable();
        let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
        let mut scanner = Scanner::new(from, 0, Some(1000));
        let (before, after, violation) = scan_past_limit(&mut scanner, &chunks);
        prop_assert_eq!(violation, Some(Violation::MessageTooBig(1000)));
        // The first fragment passed (within the limit); the second's head did not.
        let passed = good.len() + frame(opcode::BINARY, false, first_fragment, mask).len();
        prop_assert!(before.bytes == stream[..passed], "forwarded past the cut");
        prop_assert_eq!(before.controls, vec![(opcode::PING, b"p1".to_vec())]);
        let mut controls_after = encode_frame(opcode::PING, true, b"p2", mask);
        controls_after.extend(encode_frame(opcode::CLOSE, true, &[0x03, 0xf1], mask));
        prop_assert!(after.bytes == controls_after, "data reported after the cut");
        prop_assert_eq!(after.messages, 0);
        prop_assert_eq!(
            after.controls,
            vec![(opcode::PING, b"p2".to_vec()), (opcode::CLOSE, vec![0x03, 0xf1])]
        );
        prop_assert_eq!(scanner.frames, 8);
        prop_assert!(scanner.at_boundary());
    }
}

/// A compressed (RSV1) frame whose payload inflates to `len` zeros.
fn deflated_frame(len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&vec![0u8; len]).unwrap();
    e.flush().unwrap();
    // RFC 7692 §7.2.1: the sync flush's trailing 00 00 ff ff is left off.
    let payload = &e.get_ref()[..e.get_ref().len() - 4];
    let mut f = encode_frame(opcode::BINARY, true, payload, mask);
    f[0] |= 0x40;
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// A message whose inflated size passes `max_message_inflated` in a frame of which
    /// nothing was forwarded leaves the framing intact, as one over `max_message` does:
    /// after it only control frames are reported. Met further into the frame, after some of
    /// it went on, it stops the stream there instead (the relay cuts that frame). Either way
    /// nothing past the bytes counted is forwarded.
    #[test]
    fn past_a_message_inflating_over_the_limit_only_control_frames_are_reported(
        masked in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mask = masked.then_some([9, 8, 7, 6]);
        let from = if masked { Sender::Client } else { Sender::Server };
        let mut good = frame(opcode::TEXT, true, 10, mask);
        good.extend(encode_frame(opcode::PING, true, b"p1", mask));
        let bomb = deflated_frame(64 << 10, mask);
        let mut stream = good.clone();
        stream.extend(&bomb);
        stream.extend(frame(opcode::TEXT, true, 2000, mask));
        stream.extend(encode_frame(opcode::PING, true, b"p2", mask));
        stream.extend(encode_frame(opcode::CLOSE, true, &[0x03, 0xf1], mask));
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.extend([0, stream.len()]);
        points.sort_unstable();
        let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
        let mut scanner = Scanner::new(from, 0b100, None);
        scanner.count_inflated(1000, false);
        let (before, after, violation) = scan_past_limit(&mut scanner, &chunks);
        prop_assert_eq!(violation, Some(Violation::InflatedTooBig(1000)));
        prop_assert!(before.bytes.starts_with(&good), "what came before was not passed");
        prop_assert_eq!(before.controls, vec![(opcode::PING, b"p1".to_vec())]);
        let bomb_at = good.len()..good.len() + bomb.len();
        if !points.iter().any(|p| *p > bomb_at.start && *p < bomb_at.end) {
            // The whole frame came in one read: it was met before anything of it went on.
            prop_assert!(scanner.stopped().is_none(), "stopped at a whole frame");
        }
        if scanner.stopped().is_none() {
            prop_assert!(before.bytes == good, "part of the frame went on");
            let mut controls_after = encode_frame(opcode::PING, true, b"p2", mask);
            controls_after.extend(encode_frame(opcode::CLOSE, true, &[0x03, 0xf1], mask));
            prop_assert!(after.bytes == controls_after, "data reported after the cut");
            prop_assert_eq!(after.messages, 0);
            prop_assert_eq!(scanner.frames, 6);
            prop_assert!(scanner.at_boundary());
        } else {
            prop_assert!(stream.starts_with(&before.bytes));
            prop_assert!(before.bytes.len() < good.len() + bomb.len(), "the whole bomb went on");
            prop_assert!(after == Out::default(), "reported after a stop");
        }
    }
}
