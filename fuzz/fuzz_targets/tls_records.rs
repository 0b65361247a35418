//! Fuzzes the TLS 1.3 record layer (`src/tls_records.rs`): records a peer with the right keys
//! seals as the input steers it (application data, handshake and alert content, key updates),
//! raw bytes, and where the input is cut.
//! The property lives in `wsgate::tls_records`, shared with the regression replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsgate::tls_records::fuzz_records(data);
});
