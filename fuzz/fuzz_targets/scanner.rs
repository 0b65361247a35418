//! Fuzzes the frame scanner with untrusted bytes cut at arbitrary read boundaries.
#![no_main]

// The scanner's module is compiled here on its own rather than through the `wsgate` crate:
// it depends on nothing but `rand` and `thiserror`, and building the whole proxy (rustls, aws-lc, hyper) with
// fuzzing instrumentation took minutes for no extra coverage of this target.
#[path = "../../src/frame.rs"]
#[allow(dead_code)]
mod frame;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    frame::fuzz_scanner(data);
});
