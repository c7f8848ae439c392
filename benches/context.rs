//! Benchmarks of `ctxpool` against two peers, each group measuring the three side by side in
//! one run so that the ratios are comparable:
//!
//! - `ctxpool`: this crate.
//! - `naive`: the textbook design (an `Arc` node with an `AtomicBool` cancelled flag and a
//!   `Mutex<Vec<Weak<Node>>>` of children; creating a child pushes onto its parent's list,
//!   dropping it removes it from there, cancelling walks the list). It lives in
//!   `benches/support/naive.rs`, shared with `examples/demo.rs`.
//! - `tokio_util`: `tokio_util::sync::CancellationToken::child_token`.
//!
//! Groups (the ids are compared over time; do not rename them):
//!
//! - `create_drop`: make a cancellable child of a long-lived cancellable root, then drop it.
//!   Id `floor`: the least a pooled create and drop can cost, a pop from a thread-local free
//!   list, one atomic read-modify-write on the slot (its reference count) and a push back; no
//!   tree, no values.
//! - `create_drop_contended`: the same on two threads at once, under one shared parent.
//! - `create_drop_labelled`: make a child labelled with an operation (`parent.child().op(&OP)
//!   .with_cancel()`, the way a handler labels its sub-operations) under a long-lived labelled
//!   root, then drop it; ids `ctxpool` and `naive` (its nodes carry the label).
//! - `cancel_100k`: cancel a root with 100,000 children and check that every child reads
//!   cancelled (building and dropping the tree are not timed).
//! - `metrics_overhead` (ctxpool only, ids `off` and `on`): create and drop a child with a 30 s
//!   deadline under a labelled root, in a pool with metrics disabled and one with them enabled
//!   (every per-operation metric: created, released, lifetime and overrun histograms; the
//!   root's own timer keeps the children from arming theirs, as in a request handler).
//!
//! - `zombie_release`: a parent released while its only child lives on a second thread, then
//!   the child released there (the child is handed over in batches of 64, so the hand-off is
//!   a small part of the time); ids `ctxpool`, `naive`, `tokio_util`. In `ctxpool` this is the
//!   rare side of the lease handshake (tree I10): the parent becomes a zombie until the child
//!   goes.
//!
//! Run with `cargo bench --bench context` (about a minute on 2 cores).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Bencher, Criterion, SamplingMode, Throughput};
use ctxpool::{CancelGuard, Context, Pool, Reason};
use tokio_util::sync::CancellationToken;

/// The textbook cancellation tree `ctxpool` is measured against (shared with the demo).
#[path = "support/naive.rs"]
mod naive;

/// The two-thread timing harness (shared with `benches/counters.rs`).
#[path = "support/threads.rs"]
mod threads;

const CHILDREN: usize = 100_000;
const THREADS: usize = 2;

fn create_drop(c: &mut Criterion) {
    let mut g = c.benchmark_group("create_drop");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let root = Context::background().with_cancel();
    g.bench_function("ctxpool", |b| {
        b.iter(|| drop(black_box(root.with_cancel())))
    });
    drop(root);

    let root = naive::Guard::root();
    g.bench_function("naive", |b| b.iter(|| drop(black_box(root.with_cancel()))));
    drop(root);

    let root = CancellationToken::new();
    g.bench_function("tokio_util", |b| {
        b.iter(|| drop(black_box(root.child_token())))
    });
    drop(root);

    let floor = Floor::new(64);
    g.bench_function("floor", |b| {
        b.iter(|| floor.release(black_box(floor.acquire())))
    });

    g.finish();
}

fn create_drop_labelled(c: &mut Criterion) {
    static SERVER: ctxpool::Op = ctxpool::Op::new("server");
    static QUERY: ctxpool::Op = ctxpool::Op::new("db.query");
    let mut g = c.benchmark_group("create_drop_labelled");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let root = Context::background().child().op(&SERVER).with_cancel();
    g.bench_function("ctxpool", |b| {
        b.iter(|| drop(black_box(root.child().op(&QUERY).with_cancel())))
    });
    drop(root);

    let root = naive::Guard::labelled_root(&SERVER);
    g.bench_function("naive", |b| {
        b.iter(|| drop(black_box(root.child(&QUERY, None))))
    });
    drop(root);

    g.finish();
}

/// The floor of a pooled create and drop: a thread-local free list of slot indices and one
/// atomic read-modify-write on the slot (what any pool must do to hand out a counted slot).
struct Floor {
    slots: Box<[std::sync::atomic::AtomicU64]>,
    free: std::cell::RefCell<Vec<u32>>,
}

impl Floor {
    fn new(n: u32) -> Self {
        Floor {
            slots: (0..n)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            free: std::cell::RefCell::new((0..n).collect()),
        }
    }

    #[inline(never)]
    fn acquire(&self) -> u32 {
        let idx = self.free.borrow_mut().pop().expect("floor pool empty");
        self.slots[idx as usize].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        idx
    }

    #[inline(never)]
    fn release(&self, idx: u32) {
        self.free.borrow_mut().push(idx);
    }
}

/// Times `iters` (parent, child) pairs: the child is made under the parent and handed to a
/// second thread, the parent is released here, and the second thread releases the child.
/// Hand-offs go 64 to a message, in buffers that come back for reuse.
fn zombie_pairs<P, C: Send + 'static>(
    iters: u64,
    parent: impl Fn() -> P,
    child: impl Fn(&P) -> C,
) -> Duration {
    use std::sync::mpsc::sync_channel;
    const BATCH: usize = 64;
    let (to_dropper, inbox) = sync_channel::<Vec<C>>(4);
    let (back, spare) = sync_channel::<Vec<C>>(8);
    std::thread::scope(|s| {
        s.spawn(move || {
            for mut batch in inbox {
                batch.clear();
                let _ = back.try_send(batch);
            }
        });
        let mut batch = Vec::with_capacity(BATCH);
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            let p = parent();
            batch.push(child(&p));
            drop(p);
            if batch.len() == BATCH {
                let next = spare
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(BATCH));
                to_dropper
                    .send(std::mem::replace(&mut batch, next))
                    .expect("dropper gone");
            }
        }
        let t = t0.elapsed();
        drop(batch);
        drop(to_dropper);
        t
    })
}

fn zombie_release(c: &mut Criterion) {
    let mut g = c.benchmark_group("zombie_release");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let root = Context::background().with_cancel();
    g.bench_function("ctxpool", |b| {
        b.iter_custom(|iters| zombie_pairs(iters, || root.with_cancel(), |p| p.with_cancel()))
    });
    drop(root);

    let root = naive::Guard::root();
    g.bench_function("naive", |b| {
        b.iter_custom(|iters| zombie_pairs(iters, || root.with_cancel(), |p| p.with_cancel()))
    });
    drop(root);

    let root = CancellationToken::new();
    g.bench_function("tokio_util", |b| {
        b.iter_custom(|iters| zombie_pairs(iters, || root.child_token(), |p| p.child_token()))
    });
    drop(root);

    g.finish();
}

/// Runs `op(parent)` `iters` times on each of [`THREADS`] threads at once.
///
/// The threads are spawned once per `iter_custom` call (once per sample, and per warm-up round),
/// wait on a barrier so that they start together and spawning is not timed, and each times its
/// own `iters` operations. We return the longer of the two threads' elapsed times, which criterion
/// divides by `iters`: the reported time is *elapsed wall time / ops per thread*, i.e. the time
/// of one create+drop as seen by one thread while the other does the same under the same parent.
/// The threads run in parallel, so the pair completes `THREADS` (2) ops per reported time;
/// perfect scaling would report the same time as the uncontended `create_drop`.
fn contended<P: Sync>(b: &mut Bencher<'_>, parent: &P, op: impl Fn(&P) + Sync) {
    b.iter_custom(|iters| threads::time_threads(THREADS, iters, parent, false, &op));
}

fn create_drop_contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("create_drop_contended");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let root = Context::background().with_cancel();
    g.bench_function("ctxpool", |b| {
        contended(b, &root, |p| drop(black_box(p.with_cancel())))
    });
    drop(root);

    let root = naive::Guard::root();
    g.bench_function("naive", |b| {
        contended(b, &root, |p| drop(black_box(p.with_cancel())))
    });
    drop(root);

    let root = CancellationToken::new();
    g.bench_function("tokio_util", |b| {
        contended(b, &root, |p| drop(black_box(p.child_token())))
    });
    drop(root);

    g.finish();
}

fn cancel_100k(c: &mut Criterion) {
    let mut g = c.benchmark_group("cancel_100k");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(CHILDREN as u64));

    // Each iteration builds a fresh tree (untimed), times the cancel of its root plus a check
    // of every child, and hands the tree back so that criterion drops it untimed too.
    let pool = Pool::builder().capacity(1 << 18).build().expect("pool");
    g.bench_function("ctxpool", |b| {
        b.iter_batched(
            || {
                let root = pool.background().with_cancel();
                let children: Vec<CancelGuard> =
                    (0..CHILDREN).map(|_| root.with_cancel()).collect();
                (root, children)
            },
            |(root, children)| {
                root.cancel(Reason::None);
                for child in &children {
                    assert!(child.is_cancelled());
                }
                (root, children)
            },
            BatchSize::PerIteration,
        )
    });
    assert_eq!(pool.stats().in_use, 0, "ctxpool bench leaked contexts");

    g.bench_function("naive", |b| {
        b.iter_batched(
            || {
                let root = naive::Guard::root();
                let children: Vec<naive::Guard> =
                    (0..CHILDREN).map(|_| root.with_cancel()).collect();
                (root, children)
            },
            |(root, children)| {
                root.cancel();
                for child in &children {
                    assert!(child.is_cancelled());
                }
                (root, children)
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("tokio_util", |b| {
        b.iter_batched(
            || {
                let root = CancellationToken::new();
                let children: Vec<CancellationToken> =
                    (0..CHILDREN).map(|_| root.child_token()).collect();
                (root, children)
            },
            |(root, children)| {
                root.cancel();
                for child in &children {
                    assert!(child.is_cancelled());
                }
                (root, children)
            },
            BatchSize::PerIteration,
        )
    });

    g.finish();
}

fn metrics_overhead(c: &mut Criterion) {
    static REQUEST: ctxpool::Op = ctxpool::Op::new("request");
    let mut g = c.benchmark_group("metrics_overhead");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (id, enabled) in [("off", false), ("on", true)] {
        let mut config = ctxpool::Config::default();
        config.metrics.enabled = enabled;
        let pool = Pool::builder().config(&config).build().unwrap();
        let root = pool
            .background()
            .child()
            .op(&REQUEST)
            .with_timeout(Duration::from_secs(10));
        g.bench_function(id, |b| {
            b.iter(|| drop(black_box(root.with_timeout(Duration::from_secs(30)))))
        });
    }
    g.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated `pub fn` would
// trip the crate's `missing_docs = "deny"` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    create_drop(&mut c);
    create_drop_labelled(&mut c);
    create_drop_contended(&mut c);
    cancel_100k(&mut c);
    metrics_overhead(&mut c);
    zombie_release(&mut c);
    c.final_summary();
}
