//! Fuzzes the `traceparent` parser and writer with the checks of
//! `tests/support/fuzz_checks.rs` (which `cargo test --test corpus` replays on stable).
//!
//! `cargo +nightly fuzz run traceparent` from `fuzz/`; the committed seeds are in
//! `fuzz/corpus/traceparent/`.

#![no_main]

#[path = "../../tests/support/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::traceparent(data);
});
