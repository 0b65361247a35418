//! Fuzzes the opening handshake: arbitrary bytes through hyper's HTTP/1.1 and HTTP/2 server
//! parsers (the front end's builder) into `handshake::validate`.
//! The property lives in `wsgate::fuzz`, shared with the regression replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsgate::fuzz::fuzz_handshake(data);
});
