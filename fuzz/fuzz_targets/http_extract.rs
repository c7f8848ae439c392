//! Fuzzes `ctxpool::http::Propagator::extract` and `inject` on whole header maps with the
//! check of `tests/support/fuzz_http.rs` (which `cargo test --test corpus` replays on stable):
//! no panic, every limit held, and what is injected extracts to the same request.
//!
//! `cargo +nightly fuzz run http_extract` from `fuzz/`; the committed seeds are in
//! `fuzz/corpus/http_extract/`.

#![no_main]

#[path = "../../tests/support/fuzz_http.rs"]
mod fuzz_http;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_http::run(data);
});
