//! Fuzz target: a `ServerSession` over a 5-client roster fed a script of honest, arbitrary,
//! mutated and replayed client messages and deadlines (see `harness.rs`); must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::server(data);
});
