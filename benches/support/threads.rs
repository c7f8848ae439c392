//! The two-thread timing harness shared by `benches/context.rs` and `benches/counters.rs`.

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// Runs `op(shared)` `iters` times on each of `threads` threads at once and returns the slower
/// thread's elapsed time (criterion divides it by `iters`: the time of one operation as seen by
/// one thread while the others do the same).
///
/// The threads are spawned once per call (once per sample and warm-up round), wait on a
/// barrier so that they start together and spawning is not timed. With `warm`, each first runs
/// `op` once before the barrier, so one-time per-thread costs (a thread id, a slot chunk) stay
/// out of the timing.
pub fn time_threads<S: Sync>(
    threads: usize,
    iters: u64,
    shared: &S,
    warm: bool,
    op: &(impl Fn(&S) + Sync),
) -> Duration {
    let start = Barrier::new(threads);
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    if warm {
                        op(shared);
                    }
                    start.wait();
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        op(std::hint::black_box(shared));
                    }
                    t0.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench thread panicked"))
            .max()
            .unwrap_or_default()
    })
}
