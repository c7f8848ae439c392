//! Fuzzes `XRequestId` and the `x-user-id` parser with the checks of
//! `tests/support/fuzz_checks.rs` (which `cargo test --test corpus` replays on stable).
//!
//! `cargo +nightly fuzz run request_id` from `fuzz/`; the committed seeds are in
//! `fuzz/corpus/request_id/`.

#![no_main]

#[path = "../../tests/support/fuzz_checks.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_checks::request_id(data);
});
