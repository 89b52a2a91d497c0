//! Fuzz target: arbitrary bytes → `ServerMessage::decode` / `ClientMessage::decode`; whatever
//! decodes must survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::decode(data));
