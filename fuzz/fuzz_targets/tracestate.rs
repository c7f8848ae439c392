//! Fuzzes `TraceState` (parse, multi-line combining, insert) with the checks of
//! `tests/support/fuzz_checks.rs` (which `cargo test --test corpus` replays on stable).
//!
//! `cargo +nightly fuzz run tracestate` from `fuzz/`; the committed seeds are in
//! `fuzz/corpus/tracestate/`.

#![no_main]

#[path = "../../tests/support/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::tracestate(data);
});
