//! Fuzzes `Baggage` (parse, limits, percent-encoding, insert) with the checks of
//! `tests/support/fuzz_checks.rs` (which `cargo test --test corpus` replays on stable).
//!
//! `cargo +nightly fuzz run baggage` from `fuzz/`; the committed seeds are in
//! `fuzz/corpus/baggage/`.

#![no_main]

#[path = "../../tests/support/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::baggage(data);
});
