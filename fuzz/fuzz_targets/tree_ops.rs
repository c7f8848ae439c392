//! Fuzzes the context tree against the reference model of `tests/support/tree_ops.rs` (the
//! same driver `cargo test --test model` and `--test corpus` run on stable).
//!
//! `cargo +nightly fuzz run tree_ops` from `fuzz/`; the committed seeds are in
//! `fuzz/corpus/tree_ops/`.

#![no_main]

#[path = "../../tests/support/tree_ops.rs"]
mod tree_ops;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tree_ops::run(data);
});
