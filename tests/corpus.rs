//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) on stable, so that every
//! input the fuzzer found interesting, and every seed, stays a regression test without
//! nightly or cargo-fuzz.
//!
//! Every target directory is walked, so a new fuzz target's corpus is picked up as soon as it
//! is committed; a target this file has no driver for is skipped with a note (add it to
//! `driver`). The test fails if no input at all was replayed.

#[path = "support/tree_ops.rs"]
mod tree_ops;

#[path = "support/fuzz_checks.rs"]
mod fuzz_checks;

#[cfg(feature = "serde")]
#[path = "support/fuzz_config.rs"]
mod fuzz_config;

#[cfg(feature = "http")]
#[path = "support/fuzz_http.rs"]
mod fuzz_http;

use std::path::{Path, PathBuf};

/// The driver for a fuzz target's inputs, by target name.
fn driver(target: &str) -> Option<fn(&[u8])> {
    match target {
        "tree_ops" => Some(tree_ops::run),
        "traceparent" => Some(fuzz_checks::traceparent),
        "tracestate" => Some(fuzz_checks::tracestate),
        "baggage" => Some(fuzz_checks::baggage),
        "grpc_timeout" => Some(fuzz_checks::grpc_timeout),
        "request_id" => Some(fuzz_checks::request_id),
        #[cfg(feature = "serde")]
        "config" => Some(fuzz_config::run),
        #[cfg(feature = "http")]
        "http_extract" => Some(fuzz_http::run),
        _ => None,
    }
}

fn visible_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn replay_fuzz_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = 0usize;
    let mut failed = Vec::new();
    for target_dir in visible_entries(&root) {
        if !target_dir.is_dir() {
            continue;
        }
        let target = target_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 target name")
            .to_owned();
        let inputs: Vec<PathBuf> = visible_entries(&target_dir)
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        let Some(run) = driver(&target) else {
            eprintln!(
                "note: fuzz/corpus/{target}: no driver in tests/corpus.rs, skipped {} inputs",
                inputs.len()
            );
            continue;
        };
        for input in &inputs {
            let data = std::fs::read(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(input.display().to_string());
            }
            replayed += 1;
        }
        eprintln!("fuzz/corpus/{target}: replayed {} inputs", inputs.len());
    }
    assert!(
        failed.is_empty(),
        "{} of {replayed} corpus inputs failed (each one's panic is printed above):\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
    assert!(
        replayed > 0,
        "no corpus input was replayed from {}",
        root.display()
    );
}
