//! Fuzzes the client-address logic: trusted CIDRs, X-Forwarded-For/-Proto/-Host
//! (`src/policy/forwarding.rs`).
//! The property lives in `wsgate::fuzz`, shared with the regression replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsgate::fuzz::fuzz_forwarded(data);
});
