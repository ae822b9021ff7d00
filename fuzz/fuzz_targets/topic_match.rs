//! Fuzz target: see `checks::topic_match`.
#![no_main]

#[path = "../src/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::topic_match(data));
