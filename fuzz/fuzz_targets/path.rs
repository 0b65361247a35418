//! Fuzzes the path canonicaliser with untrusted request paths: it must never panic, its
//! output must be a fixed point (the backend reads the path the router read) and hold only
//! characters a request target may carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::path::{EscapedSlashes, PathRules, canonicalize, routing_form};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(raw) else {
        return;
    };
    let rules = PathRules {
        merge_slashes: flags & 1 == 0,
        escaped_slashes: if flags & 2 == 0 {
            EscapedSlashes::Refuse
        } else {
            EscapedSlashes::Keep
        },
    };
    if let Ok(c) = canonicalize(raw, &rules) {
        assert_eq!(canonicalize(&c.path, &rules).as_ref(), Ok(&c), "not idempotent: {raw:?}");
        assert!(c.path.starts_with('/'));
        assert!(
            c.path.bytes().all(|b| b.is_ascii_graphic() && !b"\\\"{}|^`?#[]<>".contains(&b)),
            "{raw:?} -> {:?}",
            c.path
        );
        assert!(!routing_form(&c.path).contains(';'));
    }
});
