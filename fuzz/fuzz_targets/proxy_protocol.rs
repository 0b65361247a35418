//! Fuzzes the PROXY protocol v1/v2 parser (`src/proxy_protocol.rs`).
//! The property lives in `wsgate::fuzz`, shared with the regression replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsgate::fuzz::fuzz_proxy_protocol(data);
});
