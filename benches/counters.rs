//! Counter benchmarks: `ShardedCounter` against its peers on two threads at once, plus the
//! cache-line ping-pong figure that says whether those two threads really ran in parallel.
//!
//! Groups (the ids are compared over time; do not rename them):
//!
//! - `counter_2threads`: two threads, released together by a barrier, each add one to the same
//!   counter `iters` times; the time reported is the slower thread's elapsed time / `iters`,
//!   i.e. the cost of one increment as seen by one thread while the other hammers the same
//!   counter.
//!   - `sharded`: `ShardedCounter::inc` (each thread stores into its own slot, on its own cache
//!     line: no line is shared, so this should cost about as much as on one thread).
//!   - `shared_atomic`: one `AtomicU64::fetch_add(1, Relaxed)` shared by both threads (every
//!     increment takes the line exclusive, so the line bounces between the two cores).
//!   - `metrics_counter`: a `metrics::Counter` handle made once (`counter!` before the loop)
//!     with the Prometheus recorder installed, `counter.increment(1)`: a dynamic call into the
//!     exporter's shared atomic, so it should land near `shared_atomic`. Needs
//!     `--features metrics` (without it the id is skipped).
//! - `cache_line_pingpong`, id `two_threads`: two threads take turns bumping one shared atomic,
//!   each spinning until it sees the other's write; the time is per round trip (two hand-offs
//!   of the line). On two cores running at once this is a cache-to-cache transfer each way
//!   (about 50 to 300 ns); if the threads share one core, or one is descheduled, every hand-off
//!   waits for a context switch and the figure jumps to microseconds, which also means the
//!   `counter_2threads` numbers did not measure contention.
//!
//! Each thread does one untimed operation before the barrier, so one-time costs (taking a
//! thread id, allocating the slot chunk) are not timed; spawning is not timed either.
//!
//! Run with `cargo bench --features metrics --bench counters` (about 20 s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Bencher, Criterion};
use ctxpool::metrics::ShardedCounter;

/// The two-thread timing harness (shared with `benches/context.rs`).
#[path = "support/threads.rs"]
mod threads;

const THREADS: usize = 2;

/// Runs `op(shared)` `iters` times on each of [`THREADS`] threads at once and returns the slower
/// thread's elapsed time (criterion divides it by `iters`). Returns the number of operations
/// done in all, so that the caller can check the counter afterwards.
fn contended<S: Sync>(b: &mut Bencher<'_>, shared: &S, op: impl Fn(&S) + Sync) -> u64 {
    let mut ops = 0;
    b.iter_custom(|iters| {
        ops += (iters + 1) * THREADS as u64;
        threads::time_threads(THREADS, iters, shared, true, &op)
    });
    ops
}

fn counter_2threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("counter_2threads");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let counter = ShardedCounter::new();
    let mut ops = 0;
    g.bench_function("sharded", |b| ops += contended(b, &counter, |c| c.inc()));
    assert_eq!(counter.get(), ops, "ShardedCounter lost increments");

    let counter = AtomicU64::new(0);
    let mut ops = 0;
    g.bench_function("shared_atomic", |b| {
        ops += contended(b, &counter, |c| {
            c.fetch_add(1, Ordering::Relaxed);
        })
    });
    assert_eq!(counter.load(Ordering::Relaxed), ops);

    #[cfg(feature = "metrics")]
    {
        use metrics_exporter_prometheus::PrometheusBuilder;

        let _handle = PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder");
        let counter = metrics::counter!("ctxpool_bench_increments_total");
        g.bench_function("metrics_counter", |b| {
            contended(b, &counter, |c| c.increment(1));
        });
    }
    #[cfg(not(feature = "metrics"))]
    eprintln!("counter_2threads/metrics_counter skipped: run with --features metrics");

    g.finish();
}

/// Spins until `turn` reads `want`. Yields after every 128 spins (several microseconds, far
/// more than a cache-to-cache transfer), so that two threads sharing one core hand over in a
/// context switch rather than a whole time slice (the figure is large either way).
#[inline]
fn await_turn(turn: &AtomicU64, want: u64) {
    let mut spins = 0u32;
    while turn.load(Ordering::Acquire) != want {
        spins += 1;
        if spins & 127 == 0 {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn cache_line_pingpong(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_line_pingpong");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    g.bench_function("two_threads", |b| {
        b.iter_custom(|iters| {
            let turn = AtomicU64::new(0);
            let start = Barrier::new(THREADS);
            thread::scope(|s| {
                // Player 0 writes the odd values, player 1 the even ones: round `i` is
                // 2i -> 2i + 1 (player 0) -> 2i + 2 (player 1).
                let players: Vec<_> = (0..THREADS as u64)
                    .map(|me| {
                        let (turn, start) = (&turn, &start);
                        s.spawn(move || {
                            start.wait();
                            let t0 = Instant::now();
                            for i in 0..iters {
                                let want = 2 * i + me;
                                await_turn(turn, want);
                                turn.store(want + 1, Ordering::Release);
                            }
                            t0.elapsed()
                        })
                    })
                    .collect();
                players
                    .into_iter()
                    .map(|p| p.join().expect("bench thread panicked"))
                    .max()
                    .unwrap_or_default()
            })
        })
    });

    g.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated `pub fn` would
// trip the crate's `missing_docs = "deny"` lint.
fn main() {
    match thread::available_parallelism() {
        Ok(n) => eprintln!("available_parallelism: {n}"),
        Err(e) => eprintln!("available_parallelism: unknown ({e})"),
    }
    let mut c = Criterion::default().configure_from_args();
    counter_2threads(&mut c);
    cache_line_pingpong(&mut c);
    c.final_summary();
}
