//! Differential model test: random operation sequences run against the library and against
//! the reference model in `support/tree_ops.rs` (see its docs), compared after every step.
//!
//! - `library_matches_model`: proptest over raw byte strings (the same inputs libFuzzer feeds
//!   `fuzz/fuzz_targets/tree_ops.rs`). `PROPTEST_CASES=N` runs more cases.
//! - one test per named scenario of `support/seeds.rs` (regressions); those of
//!   `seeds::FIXED_BUGS` have their own tests below, next to tests of the same bugs written
//!   against the API.
//! - `seed_corpus_is_committed`: the scenarios are committed, encoded, as the fuzz corpus
//!   seeds `fuzz/corpus/tree_ops/seed-<name>`; `CTXPOOL_BLESS_CORPUS=1` rewrites them after a
//!   change of the scenarios or of the encoding.
//! - `replay_hex`: `TREE_OPS_HEX=<hex> cargo test --test model replay_hex -- --nocapture`
//!   replays one input (for instance the canonical encoding a failure prints);
//!   `TREE_OPS_REPEAT=N` replays it N times in one thread.

#[path = "support/tree_ops.rs"]
mod tree_ops;

#[path = "support/seeds.rs"]
mod seeds;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ctxpool::{Cause, Origin, Pool};
use proptest::prelude::*;
use tree_ops::{decode, encode, run, run_program};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Failures are kept as named scenarios in support/seeds.rs, not in a regressions file.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Up to ~100 operations (a step is 1 to 5 bytes) on a pool of 1 to 64 slots.
    #[test]
    fn library_matches_model(data in proptest::collection::vec(any::<u8>(), 0..=256)) {
        run(&data);
    }

    #[test]
    fn decoding_and_encoding_round_trip(data in proptest::collection::vec(any::<u8>(), 0..=256)) {
        let p = decode(&data);
        prop_assert_eq!(decode(&encode(&p)), p);
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            run_program(&seeds::$name());
        }
    )*};
}

scenarios!(
    cancel_propagates_to_descendants,
    first_cause_wins,
    lazy_ancestor_cancel_beats_later_child_cancel,
    lazy_ancestor_cancel_beats_owner_drop,
    owner_drop_cascades_through_plain_children,
    without_cancel_shields_descendants,
    values_are_inherited_and_typed,
    after_func_runs_once_and_stop_tells_the_truth,
    weak_never_reaches_a_reused_slot,
    exhaustion_sheds_work,
    deep_chain_cancel_middle_then_root,
    lazy_deep_chain_read_only_at_the_leaf,
    after_func_registered_across_a_detached_boundary,
    seeded_drop_order,
    small_thread_cache_churn,
    upgraded_weak_is_a_full_handle,
    cancel_with_every_origin,
    children_of_a_cancelled_context,
);

#[test]
fn every_scenario_has_a_test() {
    // `scenarios!` above must list every entry of `seeds::ALL`, and every entry of
    // `seeds::FIXED_BUGS` must have a test of its own (checked by name here).
    let listed = include_str!("model.rs");
    for (name, _) in seeds::ALL {
        assert!(
            listed.contains(&format!("    {name},\n")),
            "scenario {name} has no test in the scenarios! list"
        );
    }
    for (name, _) in seeds::FIXED_BUGS {
        assert!(
            listed.contains(&format!("\nfn {name}() {{\n")),
            "fixed-bug scenario {name} has no test of its own"
        );
    }
}

#[test]
fn scenarios_round_trip() {
    for (name, make) in seeds::ALL.iter().chain(seeds::FIXED_BUGS) {
        let p = make();
        assert_eq!(
            decode(&encode(&p)),
            p,
            "scenario {name} does not round-trip"
        );
    }
}

// Regressions for fixed library bugs (see `seeds::FIXED_BUGS`).

/// Regression for the fixed lease-zombie bug: a cancel skipped a registered child whose
/// handles were all gone, so `after_func`s pending below it never ran and their slots leaked.
#[test]
fn after_func_below_a_dropped_handle_runs_on_ancestor_cancel() {
    run_program(&seeds::after_func_below_a_dropped_handle_runs_on_ancestor_cancel());
}

/// Regression for the fixed lease-zombie bug, with the handleless context in the middle and
/// the `after_func` registered after its handle was dropped.
#[test]
fn after_func_below_a_handleless_context_runs_on_ancestor_cancel() {
    run_program(&seeds::after_func_below_a_handleless_context_runs_on_ancestor_cancel());
}

/// Regression for the fixed bug where `with_value` on a context born cancelled (pool
/// exhausted) never dropped the value.
#[test]
fn value_under_an_exhausted_parent_is_dropped() {
    run_program(&seeds::value_under_an_exhausted_parent_is_dropped());
}

/// Regression for the fixed bug where `with_value` on a context born cancelled (pool
/// exhausted) never dropped the value, written against the API directly.
#[test]
fn value_under_an_exhausted_parent_is_dropped_api() {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let pool = Pool::builder().capacity(1).build().unwrap();
    let owner = pool.background().with_cancel(); // takes the only slot
    let shed = owner.with_cancel(); // born cancelled
    assert_eq!(shed.cause(), Some(Cause::PoolExhausted));
    let drops = Arc::new(AtomicUsize::new(0));
    let child = shed.with_value(Counted(drops.clone()));
    assert_eq!(child.cause(), Some(Cause::Parent(Origin::PoolExhausted)));
    assert!(child.value::<Counted>().is_none());
    drop(child);
    assert_eq!(drops.load(Ordering::SeqCst), 1, "the value was leaked");
}

/// Regression for the fixed lease-zombie bug, written against the API: a pending
/// `after_func` keeps its context alive after the context's last handle is gone, and must run
/// when an ancestor is cancelled.
#[test]
fn after_func_below_a_dropped_handle_runs_on_ancestor_cancel_api() {
    let pool = Pool::builder().capacity(8).build().unwrap();
    let owner = pool.background().with_cancel();
    let plain = owner.child().build();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _registration = plain.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    drop(plain);
    drop(owner);
    assert_eq!(ran.load(Ordering::SeqCst), 1, "the after_func never ran");
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 0);
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/tree_ops")
}

#[test]
fn seed_corpus_is_committed() {
    let dir = corpus_dir();
    let bless = std::env::var_os("CTXPOOL_BLESS_CORPUS").is_some();
    if bless {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, make) in seeds::ALL.iter().chain(seeds::FIXED_BUGS) {
        let path = dir.join(format!("seed-{name}"));
        let bytes = encode(&make());
        if bless {
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `CTXPOOL_BLESS_CORPUS=1 cargo test --test model seed_corpus`",
                path.display()
            )
        });
        assert!(
            committed == bytes,
            "{} is stale; run `CTXPOOL_BLESS_CORPUS=1 cargo test --test model seed_corpus`",
            path.display()
        );
    }
}

#[test]
fn replay_hex() {
    let Ok(hex) = std::env::var("TREE_OPS_HEX") else {
        return;
    };
    let hex = hex.trim();
    assert!(hex.len() % 2 == 0, "TREE_OPS_HEX: odd number of digits");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("TREE_OPS_HEX: hex digits"))
        .collect();
    println!("{:#?}", decode(&bytes));
    // `TREE_OPS_REPEAT=N` replays it N times in one thread, as a fuzzer process does: some
    // differences need the state (thread shards, caches, the driver's timing) that earlier runs
    // leave behind.
    let repeat = std::env::var("TREE_OPS_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1usize);
    for _ in 0..repeat {
        run(&bytes);
    }
}
