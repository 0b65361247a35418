//! Fuzzes the frame scanner with untrusted bytes cut at arbitrary read boundaries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsgate::frame::fuzz_scanner(data);
});
