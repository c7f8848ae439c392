//! loom models of the sharded metrics (src/metrics/sharded.rs, M1..M3): single-writer slots
//! updated by a plain load + store, summed by readers while writers run.
//!
//! Under loom ids of threads are never reused within an execution, so every writer has its
//! own slot; all of them sit in one chunk of 16 slots, which the writers race to allocate
//! (M3: one CAS wins, the loser frees its copy and writes into the winner's).
//!
//! Two things keep these models from passing vacuously:
//!
//! - **Steering.** loom 0.7's DPOR misses the interleavings where a thread whose accesses to
//!   an atomic start with a load (the load + store of an update, the load of a hand-off flag)
//!   runs before a thread that only loads it (tokio-rs/loom#392, #166): a reader racing such a
//!   writer is explored in one order only, the reader first, and every read is 0. Each writer
//!   therefore bumps a [`Steer`] counter after each update and the reader loads it before each
//!   read. Both are `Relaxed`, so they add no synchronisation (nothing the metric's own
//!   orderings do not give); they only give DPOR a read/write pair to reorder.
//! - **Coverage.** Under loom each model records what its racing reads returned over all
//!   executions and asserts that every interesting outcome was explored (with the steering
//!   removed, the first model explores 1 execution and sees only `(0, 0)`). Natively the
//!   outcomes depend on the OS scheduler, so only the per-execution assertions apply.

use core::sync::atomic::Ordering;
use std::collections::BTreeSet;
use std::sync::Mutex;

use ctxpool::metrics::{ShardedCounter, ShardedGauge, ShardedHistogram};
use ctxpool_loom_tests::*;

/// A `Relaxed` counter that writers bump after each update and readers load before each read,
/// to make loom reorder them (see the module doc). It orders nothing.
#[derive(Default)]
struct Steer(AtomicUsize);

impl Steer {
    fn tick(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn look(&self) {
        let _ = self.0.load(Ordering::Relaxed);
    }
}

/// The outcomes of a model's racing reads, over all of its executions.
struct Outcomes<T>(std::sync::Arc<Mutex<BTreeSet<T>>>);

impl<T: Ord + Clone + core::fmt::Debug> Outcomes<T> {
    fn new() -> Self {
        Outcomes(std::sync::Arc::new(Mutex::new(BTreeSet::new())))
    }

    fn handle(&self) -> Self {
        Outcomes(self.0.clone())
    }

    fn record(&self, t: T) {
        self.0.lock().unwrap().insert(t);
    }

    /// Under loom, asserts that every outcome in `expected` was explored; natively, nothing.
    #[track_caller]
    fn assert_explored(&self, expected: &[T]) {
        let seen = self.0.lock().unwrap();
        if cfg!(loom) {
            let missing: Vec<_> = expected.iter().filter(|t| !seen.contains(t)).collect();
            assert!(
                missing.is_empty(),
                "loom never explored {missing:?}; seen {seen:?}"
            );
        }
    }
}

/// (1) Two writers increment a counter twice each while the main thread reads it twice: a
/// read never exceeds the final total, the second read is not below the first (each slot only
/// grows, and a later load of it never returns an older value), and after the joins the total
/// is exact (M1: no update lost; M3: the loser of the chunk race writes into the winner's
/// chunk).
#[test]
fn counter_reads_are_monotone_and_exact() {
    let outcomes = Outcomes::new();
    let seen = outcomes.handle();
    model(move || {
        let c = Arc::new(ShardedCounter::new());
        let steer = Arc::new(Steer::default());
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (c, steer) = (c.clone(), steer.clone());
                thread::spawn(move || {
                    for _ in 0..2 {
                        c.inc();
                        steer.tick();
                    }
                })
            })
            .collect();

        steer.look();
        let first = c.get();
        steer.look();
        let second = c.get();
        assert!(first <= second, "total went back from {first} to {second}");
        assert!(second <= 4, "read {second} above the final 4");
        seen.record((first, second));

        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(c.get(), 4);
    });
    outcomes.assert_explored(&[(0, 0), (0, 2), (1, 3), (2, 2), (0, 4), (4, 4)]);
}

/// (2) A gauge raised on one thread (+2, then +3) and lowered on another (−5): a read while
/// both run is one of the sums of their partial changes, and after the joins the gauge is 0.
#[test]
fn gauge_add_and_sub_on_two_threads_net_to_zero() {
    let outcomes = Outcomes::new();
    let seen = outcomes.handle();
    model(move || {
        let g = Arc::new(ShardedGauge::new());
        let steer = Arc::new(Steer::default());
        let (g1, s1) = (g.clone(), steer.clone());
        let up = thread::spawn(move || {
            g1.add(2);
            s1.tick();
            g1.add(3);
            s1.tick();
        });
        let (g2, s2) = (g.clone(), steer.clone());
        let down = thread::spawn(move || {
            g2.sub(5);
            s2.tick();
        });

        steer.look();
        let mid = g.get();
        assert!(
            [0, 2, 5, -5, -3].contains(&mid),
            "read {mid}: no sum of partial changes"
        );
        seen.record(mid);

        up.join().unwrap();
        down.join().unwrap();
        assert_eq!(g.get(), 0);
    });
    outcomes.assert_explored(&[0, 2, 5, -5, -3]);
}

/// (3) A histogram snapshot races two observations (0.5 into `le=1`, then 3.0 into `+Inf`):
/// the snapshot's count is 0..=2, each bucket at most its final count, its sum one of the
/// partial sums, and (M2: the counts are read first, and a count is stored after the previous
/// observation's sum) a snapshot that sees the second observation's count also sees the first
/// observation's sum. After the join the snapshot is exact.
#[test]
fn histogram_snapshot_races_observe() {
    let outcomes = Outcomes::new();
    let seen = outcomes.handle();
    model(move || {
        let h = Arc::new(ShardedHistogram::new(&[1.0]).unwrap());
        let steer = Arc::new(Steer::default());
        let (h1, s1) = (h.clone(), steer.clone());
        let observer = thread::spawn(move || {
            h1.observe(0.5);
            s1.tick();
            h1.observe(3.0);
            s1.tick();
        });

        steer.look();
        let s = h.snapshot();
        assert!(s.count() <= 2, "count {} of 2 observations", s.count());
        assert!(s.counts[0] <= 1 && s.counts[1] <= 1, "{s:?}");
        assert!(
            [0.0, 0.5, 3.5].contains(&s.sum),
            "sum {} is no partial sum",
            s.sum
        );
        if s.counts[1] == 1 {
            assert!(s.sum >= 0.5, "saw the 2nd count but not the 1st sum: {s:?}");
        }
        // Sums in halves, to record them exactly.
        seen.record((s.count(), (s.sum * 2.0) as u64));

        observer.join().unwrap();
        let s = h.snapshot();
        assert_eq!(s.counts, vec![1, 1]);
        assert_eq!(s.count(), 2);
        assert_eq!(s.sum, 3.5);
        assert_eq!(s.cumulative(), vec![(1.0, 1), (f64::INFINITY, 2)]);
    });
    // (count, sum in halves): nothing yet, the 1st count before its sum, the 1st complete,
    // both counts with only the 1st sum, both complete.
    outcomes.assert_explored(&[(0, 0), (1, 0), (1, 1), (2, 1), (2, 7)]);
}

/// (4) M2 as `ops.rs` relies on it: a context is created on one thread and released on
/// another that learnt of it through a release/acquire hand-off. A reader that reads
/// `released` first and `created` second never sees more releases than creations (an
/// `active` gauge computed as created − released is never negative).
#[test]
fn released_read_first_never_exceeds_created() {
    let outcomes = Outcomes::new();
    let seen = outcomes.handle();
    model(move || {
        let created = Arc::new(ShardedCounter::new());
        let released = Arc::new(ShardedCounter::new());
        let handed = Arc::new(AtomicBool::new(false));
        let steer = Arc::new(Steer::default());

        let (c1, h1, s1) = (created.clone(), handed.clone(), steer.clone());
        let creator = thread::spawn(move || {
            c1.inc();
            s1.tick();
            h1.store(true, Ordering::Release);
        });
        let (r2, h2, s2) = (released.clone(), handed.clone(), steer.clone());
        let releaser = thread::spawn(move || {
            // Steady state: this thread's slot chunk is published before the hand-off.
            // Otherwise the chunk's publishing CAS (AcqRel, read with Acquire by `get`) would
            // carry the hand-off to the reader by itself and hide a slot store or a sum load
            // that lost its Release / Acquire.
            r2.add(0);
            s2.tick();
            if h2.load(Ordering::Acquire) {
                r2.inc();
                s2.tick();
            }
        });

        steer.look();
        let r = released.get();
        steer.look();
        let c = created.get();
        assert!(r <= c, "released {r} > created {c}");
        seen.record((r, c));

        creator.join().unwrap();
        releaser.join().unwrap();
        assert_eq!(created.get(), 1);
        assert!(released.get() <= 1);
    });
    outcomes.assert_explored(&[(0, 0), (0, 1), (1, 1)]);
}
