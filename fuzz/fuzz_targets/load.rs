//! `cargo +nightly fuzz run load -- -detect_leaks=0`: see `fuzz/src/harness.rs` for what
//! the target decodes and checks, and `fuzz/README.md` for how to run it.

#![no_main]

#[path = "../src/harness.rs"]
#[allow(dead_code)] // each binary uses one target of the shared harness
mod harness;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| harness::load(bytes));
