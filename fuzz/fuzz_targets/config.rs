//! Fuzzes the configuration loaders (TOML and JSON, picked by the first byte) and their
//! writers' round trip, with the check of `tests/support/fuzz_config.rs` (which
//! `cargo test --test corpus` replays on stable).
//!
//! `cargo +nightly fuzz run config` from `fuzz/`; the committed seeds are in
//! `fuzz/corpus/config/`.

#![no_main]

#[path = "../../tests/support/fuzz_config.rs"]
mod fuzz_config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_config::run(data);
});
