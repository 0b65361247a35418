//! Fuzzes the config loader over arbitrary TOML text: it must never panic.
//! The property lives in `wsgate::fuzz`, shared with the regression replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsgate::fuzz::fuzz_config(data);
});
