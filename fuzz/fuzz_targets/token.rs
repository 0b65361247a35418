//! Fuzzes token finding (`src/policy/token.rs`) and the JWT header reader.
//! The property lives in `wsgate::fuzz`, shared with the regression replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsgate::fuzz::fuzz_token(data);
});
