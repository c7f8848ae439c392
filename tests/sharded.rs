//! `ShardedCounter`, `ShardedGauge` and `ShardedHistogram` (src/metrics/sharded.rs, M1..M3):
//! exact counts under contention, counts kept across thread exit and id reuse, bounded slot
//! memory, histogram bucket placement and validation, monotone reads while writers run, and
//! no heap allocation per update.
//!
//! The tests run one at a time ([`serial`]): thread ids are process-wide, and the memory test
//! counts which slot chunks get allocated, which depends on which ids are taken at the moment.
//! Allocations are counted by a `#[global_allocator]` that counts only on threads that asked
//! (as in `tests/alloc_free.rs`), so the harness's other threads cannot disturb a count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex, MutexGuard, PoisonError};
use std::thread;

use ctxpool::metrics::{
    BadBuckets, HistogramSnapshot, ShardedCounter, ShardedGauge, ShardedHistogram,
};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocation during thread-local teardown must not panic.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            let _ = BYTES.try_with(|b| b.set(b.get() + size as u64));
        }
    });
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        note(new);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` while counting this thread's allocations; returns (allocations, bytes).
fn allocations(f: impl FnOnce()) -> (u64, u64) {
    COUNT.with(|c| c.set(0));
    BYTES.with(|b| b.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    (COUNT.with(Cell::get), BYTES.with(Cell::get))
}

/// One test at a time (see the module doc).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn the_allocation_counter_counts() {
    let _serial = serial();
    // Guards against a counter that cannot fail: boxing does allocate, once per call.
    let (n, bytes) = allocations(|| {
        for _ in 0..100 {
            drop(std::hint::black_box(Box::new(1u64)));
        }
    });
    assert_eq!((n, bytes), (100, 800));
}

#[test]
fn eight_threads_count_exactly() {
    let _serial = serial();
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 100_000;
    let c = ShardedCounter::new();
    let start = Barrier::new(THREADS as usize);
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                start.wait();
                for _ in 0..PER_THREAD {
                    c.inc();
                }
            });
        }
    });
    assert_eq!(c.get(), THREADS * PER_THREAD);

    // `add(n)` on the same slots.
    thread::scope(|s| {
        for t in 0..THREADS {
            let c = &c;
            s.spawn(move || c.add(t));
        }
    });
    assert_eq!(c.get(), THREADS * PER_THREAD + (0..THREADS).sum::<u64>());
}

#[test]
fn an_exited_thread_keeps_its_counts() {
    let _serial = serial();
    let c = std::sync::Arc::new(ShardedCounter::new());
    let c2 = c.clone();
    thread::spawn(move || (0..1_000).for_each(|_| c2.inc()))
        .join()
        .unwrap();
    assert_eq!(c.get(), 1_000);

    // The next thread most likely inherits the exited thread's id, and with it the slot: it
    // continues from 1,000 rather than overwriting it.
    let c2 = c.clone();
    thread::spawn(move || (0..500).for_each(|_| c2.inc()))
        .join()
        .unwrap();
    assert_eq!(c.get(), 1_500);

    // And this thread's own counts join them.
    c.add(7);
    assert_eq!(c.get(), 1_507);
}

#[test]
fn short_lived_threads_are_all_counted_in_bounded_memory() {
    let _serial = serial();
    const SPAWNS: u64 = 200;
    const PER_THREAD: u64 = 10;
    let c = ShardedCounter::new();
    let g = ShardedGauge::new();
    // Bytes allocated by each spawned thread inside its updates (only slot chunks are
    // allocated there: the thread id is taken without allocating).
    let mut bytes = Vec::new();
    for i in 0..SPAWNS {
        let (_, b) = thread::scope(|s| {
            s.spawn(|| {
                allocations(|| {
                    for _ in 0..PER_THREAD {
                        c.inc();
                    }
                    g.add(1);
                })
            })
            .join()
            .unwrap()
        });
        bytes.push(b);
        assert_eq!(c.get(), (i + 1) * PER_THREAD, "after spawn {i}");
    }
    assert_eq!(c.get(), SPAWNS * PER_THREAD);
    assert_eq!(g.get(), SPAWNS as i64);

    // Thread ids are reused (each thread starts after the last one exited, so it takes the
    // same id): the first thread allocates each metric's chunk of slots, and no later thread
    // allocates anything. Without reuse, 200 ids would need 13 chunks of 16 slots per metric.
    assert!(
        bytes[0] > 0,
        "the first thread allocated no slots: {bytes:?}"
    );
    assert!(
        bytes[0] <= 2 * 16 * 128,
        "more than one 16-slot chunk per metric: {} bytes",
        bytes[0]
    );
    let later: u64 = bytes[1..].iter().sum();
    assert_eq!(later, 0, "later threads allocated slot memory: {bytes:?}");
}

#[test]
fn gauge_nets_to_zero_across_threads() {
    let _serial = serial();
    const N: i64 = 100_000;
    let g = ShardedGauge::new();
    let start = Barrier::new(2);
    thread::scope(|s| {
        s.spawn(|| {
            start.wait();
            for _ in 0..N {
                g.add(1);
            }
        });
        s.spawn(|| {
            start.wait();
            for _ in 0..N {
                g.sub(1);
            }
        });
    });
    assert_eq!(g.get(), 0);

    // One thread's net change may be negative on its own: only the sum means anything.
    thread::scope(|s| {
        s.spawn(|| g.sub(3));
    });
    assert_eq!(g.get(), -3);
    g.add(3);
    assert_eq!(g.get(), 0);
    g.add(i64::MAX);
    g.sub(i64::MAX);
    assert_eq!(g.get(), 0);
}

#[test]
fn histogram_buckets_follow_prometheus_le() {
    let _serial = serial();
    let h = ShardedHistogram::new(&[1.0, 2.0, 5.0]).unwrap();
    assert_eq!(h.bounds(), &[1.0, 2.0, 5.0]);
    assert_eq!(h.snapshot().count(), 0);
    assert_eq!(
        h.snapshot().cumulative(),
        vec![(1.0, 0), (2.0, 0), (5.0, 0), (f64::INFINITY, 0)]
    );

    // An observation equal to a bound goes in that bucket (`le` is inclusive).
    for v in [-4.0, 0.5, 1.0] {
        h.observe(v); // le=1
    }
    for v in [1.0 + f64::EPSILON, 2.0] {
        h.observe(v); // le=2
    }
    h.observe(5.0); // le=5
    for v in [5.000_001, 1e300] {
        h.observe(v); // +Inf
    }

    let s = h.snapshot();
    assert_eq!(s.bounds, vec![1.0, 2.0, 5.0]);
    assert_eq!(s.counts, vec![3, 2, 1, 2]);
    assert_eq!(s.count(), 8);
    assert_eq!(
        s.cumulative(),
        vec![(1.0, 3), (2.0, 5), (5.0, 6), (f64::INFINITY, 8)]
    );
    let finite = -4.0 + 0.5 + 1.0 + (1.0 + f64::EPSILON) + 2.0 + 5.0 + 5.000_001;
    assert_eq!(s.sum, finite + 1e300);

    // Infinity itself is above every finite bound.
    let h = ShardedHistogram::new(&[1.0]).unwrap();
    h.observe(f64::INFINITY);
    h.observe(f64::NEG_INFINITY);
    let s = h.snapshot();
    assert_eq!(s.counts, vec![1, 1]);
    assert!(s.sum.is_nan(), "inf + -inf");
}

#[test]
fn histogram_sums_over_threads_and_merges() {
    let _serial = serial();
    const PER_THREAD: u64 = 10_000;
    let h = ShardedHistogram::new(&[0.25, 0.5]).unwrap();
    thread::scope(|s| {
        for v in [0.125, 0.25, 0.5, 1.0] {
            let h = &h;
            s.spawn(move || (0..PER_THREAD).for_each(|_| h.observe(v)));
        }
    });
    let s = h.snapshot();
    let n = PER_THREAD;
    assert_eq!(s.counts, vec![2 * n, n, n]);
    assert_eq!(s.count(), 4 * n);
    // Each thread's sum is exact (binary fractions), and so is their total.
    assert_eq!(s.sum, (0.125 + 0.25 + 0.5 + 1.0) * n as f64);

    let mut merged = s.clone();
    merged.merge(&s);
    assert_eq!(
        merged,
        HistogramSnapshot {
            bounds: vec![0.25, 0.5],
            counts: vec![4 * n, 2 * n, 2 * n],
            sum: 2.0 * s.sum,
        }
    );
}

#[test]
fn histogram_rejects_bad_bounds_with_a_message() {
    let _serial = serial();
    let err = |bounds: &[f64]| -> BadBuckets {
        match ShardedHistogram::new(bounds) {
            Ok(h) => panic!("{bounds:?} accepted: {h:?}"),
            Err(e) => e,
        }
    };

    let e = err(&[]);
    assert_eq!(e.0, "no bounds");
    assert_eq!(e.to_string(), "invalid histogram buckets: no bounds");

    let e = err(&[1.0, f64::NAN]);
    assert!(e.0.contains("NaN") && e.0.contains("not finite"), "{e}");
    let e = err(&[f64::NEG_INFINITY, 0.0]);
    assert!(e.0.contains("-inf") && e.0.contains("not finite"), "{e}");
    let e = err(&[1.0, f64::INFINITY]);
    assert!(e.0.contains("inf") && e.0.contains("not finite"), "{e}");

    let e = err(&[1.0, 3.0, 2.0]);
    assert!(e.0.contains("2 is not above 3"), "{e}");
    assert!(e.0.contains("must increase"), "{e}");
    let e = err(&[1.0, 1.0]);
    assert!(e.0.contains("1 is not above 1"), "{e}");
    assert!(e.to_string().starts_with("invalid histogram buckets: "));

    // The edges of what is accepted: one bound, negative bounds, tiny steps.
    assert!(ShardedHistogram::new(&[0.0]).is_ok());
    assert!(ShardedHistogram::new(&[-2.0, -1.0, 0.0]).is_ok());
    assert!(ShardedHistogram::new(&[1.0, 1.0 + f64::EPSILON]).is_ok());
}

#[test]
fn a_concurrent_reader_sees_monotone_totals() {
    let _serial = serial();
    const WRITERS: u64 = 3;
    const PER_THREAD: u64 = 200_000;
    let c = ShardedCounter::new();
    let done = AtomicBool::new(false);
    let start = Barrier::new(WRITERS as usize + 1);
    let reads = thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..PER_THREAD {
                        c.inc();
                    }
                })
            })
            .collect();
        let reader = s.spawn(|| {
            start.wait();
            let (mut last, mut reads) = (0, 0u64);
            while !done.load(Ordering::Acquire) {
                let now = c.get();
                assert!(now >= last, "total went back from {last} to {now}");
                assert!(now <= WRITERS * PER_THREAD, "total {now} above the final");
                last = now;
                reads += 1;
            }
            reads
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap()
    });
    assert!(reads > 0);
    assert_eq!(c.get(), WRITERS * PER_THREAD);
}

#[test]
fn updates_do_not_allocate_after_the_first() {
    let _serial = serial();
    const CYCLES: u64 = 100_000;
    let c = ShardedCounter::new();
    let g = ShardedGauge::new();
    let h = ShardedHistogram::new(&[1.0, 10.0, 100.0]).unwrap();
    // The first update on this thread may take a thread id and allocate a chunk of slots.
    c.inc();
    g.add(1);
    h.observe(1.0);

    let (n, _) = allocations(|| {
        for _ in 0..CYCLES {
            c.inc();
        }
    });
    assert_eq!(n, 0, "ShardedCounter::inc allocated");
    let (n, _) = allocations(|| {
        for i in 0..CYCLES {
            g.add(if i % 2 == 0 { 1 } else { -1 });
        }
    });
    assert_eq!(n, 0, "ShardedGauge::add allocated");
    let (n, _) = allocations(|| {
        for i in 0..CYCLES {
            h.observe((i % 200) as f64);
        }
    });
    assert_eq!(n, 0, "ShardedHistogram::observe allocated");

    assert_eq!(c.get(), CYCLES + 1);
    assert_eq!(g.get(), 1);
    assert_eq!(h.snapshot().count(), CYCLES + 1);
}

/// More threads at once than there are thread ids (4,095): the rest share the overflow slot
/// (tid T2) and are counted all the same, histogram sums included.
#[test]
fn threads_beyond_the_id_limit_use_the_overflow_slot() {
    let _serial = serial();
    const THREADS: usize = 4_200;
    let c = ShardedCounter::new();
    let g = ShardedGauge::new();
    let h = ShardedHistogram::new(&[1.0]).unwrap();
    // Every thread updates, then waits until all have, so that all hold their ids at once.
    let all_in = Barrier::new(THREADS);
    thread::scope(|s| {
        for _ in 0..THREADS {
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn_scoped(s, || {
                    c.add(2);
                    g.sub(1);
                    h.observe(2.0);
                    all_in.wait();
                    c.inc();
                    g.add(1);
                    h.observe(0.5);
                })
                .expect("spawn");
        }
    });
    assert_eq!(c.get(), 3 * THREADS as u64);
    assert_eq!(g.get(), 0);
    let s = h.snapshot();
    assert_eq!(s.counts, vec![THREADS as u64, THREADS as u64]);
    assert_eq!(s.sum, 2.5 * THREADS as f64);
}

#[test]
fn nan_observations_are_ignored() {
    let _serial = serial();
    let h = ShardedHistogram::new(&[1.0, 2.0]).unwrap();
    h.observe(f64::NAN);
    h.observe(0.5);
    let s = h.snapshot();
    assert_eq!(s.counts, vec![1, 0, 0]);
    assert_eq!(s.sum, 0.5);
}
