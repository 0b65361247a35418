//! Fuzzes the frame scanner with untrusted bytes cut at arbitrary read boundaries.
#![no_main]

// Through the `wsgate` library like the other targets: the scanner now counts inflated
// message sizes (`crate::deflate`), so its file no longer compiles on its own, and the
// library is built for the other targets anyway.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsgate::frame::fuzz_scanner(data);
});
