//! Shared harness for the loom models in `tests/`.
//!
//! Every model is written once against this module and runs two ways:
//!
//! - under loom (`RUSTFLAGS="--cfg loom"`): [`model`] is `loom::model`, threads, `Arc` and the
//!   counters are loom's, and the library's own atomics, cells, locks and parking are loom's too
//!   (its `src/sync.rs`), so loom explores the interleavings of the library's real code;
//! - natively (a plain `cargo test`): [`model`] runs the body [`smoke_iterations`] times on real
//!   threads, as a smoke test of the same scenario (models double as smoke tests on stable);
//!   a lost wake-up panics after [`LOST_WAKEUP`] instead of hanging.
//!
//! Run the models (from the workspace root for the native run):
//!
//! ```text
//! cd loom-tests
//! LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/work/target-loom \
//!     cargo test --release
//! cargo test -p ctxpool-loom-tests          # native smoke run
//! ```
//!
//! The files: `pool.rs` (slots, free lists, ABA), `tree.rs` (cancel, causes, registered
//! children), `wait.rs` (`cancelled()` and `wait()` wake-ups), `func.rs` (`after_func` and
//! `stop`), `fallback.rs` (`after_func` without a slot, at pool exhaustion), `quiet.rs` (the
//! owner's quiet teardown, tree I15, racing the writers that can leave a node's word at 0),
//! `release.rs` (teardown of nodes kept alive by their children; a broken protocol there shows
//! as a loom deadlock, which aborts the whole test binary, hence its own file).
//!
//! Two requirements on the library for loom to work at all:
//!
//! - every execution must be deterministic given loom's choices. Thread ids (`pool::tid`) pick
//!   shards, and scans over shards (stealing, `stats`, child counts) follow their order, so the
//!   ids must restart with every execution (a `loom::lazy_static!` counter, not a process-wide
//!   static); otherwise loom panics with "Reached unexpected exploration state. Is the model
//!   fully deterministic?".
//! - loom 0.7 cannot schedule fairly between two threads spinning on the same bit lock while
//!   its holder is preempted (they may yield to each other forever: "Model exceeded maximum
//!   number of branches"), so no model has two threads waiting on one node's LOCK at once.

use core::future::Future;
use core::pin::pin;
#[cfg(not(loom))]
use core::task::Poll;
use core::task::{Context as TaskContext, RawWaker, RawWakerVTable, Waker};

use ctxpool::Pool;

#[cfg(loom)]
pub use loom::{
    future::block_on,
    sync::atomic::{AtomicBool, AtomicUsize},
    sync::Arc,
};

/// loom's threads, with a [`spawn`](thread::spawn) that returns only once the new thread has
/// run its first step.
///
/// loom 0.7 (up to its newest release) misses interleavings when a spawned thread has not yet
/// run when the spawning thread performs an operation it conflicts with: the spawned thread's
/// first operation is unknown then, so no backtracking point is recorded there, and the branch
/// marks the thread as skipped (tokio-rs/loom#392, "Atomic load makes threads not explore at
/// all"). A model in which the spawned thread cancels a parent while the spawning thread reads
/// a child of it explored one execution, in which the read always came first; with this
/// handshake it explores twenty, both outcomes among them. The handshake is a relaxed store
/// by the new thread before its closure and a relaxed spin (with `yield_now`) by the spawner:
/// it orders no data, so every interleaving of the two threads' real operations stays open.
#[cfg(loom)]
pub mod thread {
    pub use loom::thread::{yield_now, JoinHandle};

    /// `loom::thread::spawn`, then waits until the new thread has started (see the module).
    pub fn spawn<F, T>(f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let started = loom::sync::Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let mark = started.clone();
        let handle = loom::thread::spawn(move || {
            mark.store(true, Relaxed);
            f()
        });
        while !started.load(Relaxed) {
            loom::thread::yield_now();
        }
        handle
    }
}

#[cfg(not(loom))]
pub use std::{
    sync::atomic::{AtomicBool, AtomicUsize},
    sync::Arc,
    thread,
};

/// `loom::model` under loom; natively, runs `f` [`smoke_iterations`] times.
///
/// Under loom the preemption bound defaults to 2 (`LOOM_MAX_PREEMPTIONS` overrides it), the
/// branch bound to 10,000 (`LOOM_MAX_BRANCHES` overrides it), and it prints how many executions
/// loom explored (see it with `--nocapture`).
#[cfg(loom)]
#[track_caller]
pub fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    use std::sync::atomic::{AtomicUsize as StdCounter, Ordering};
    let runs = std::sync::Arc::new(StdCounter::new(0));
    let counted = runs.clone();
    let start = std::time::Instant::now();
    let caller = core::panic::Location::caller();
    let mut builder = loom::model::Builder::new();
    // Some models build a dozen nodes before their threads start, and the pool's teardown
    // reads every page and shard pointer: their executions are longer than loom's default
    // bound of 1,000 branches without spinning.
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = 10_000;
    }
    // Unbounded exploration of these models takes hours; 2 is the CI setting.
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f()
    });
    eprintln!(
        "loom model at {}:{}: {} executions in {:.1?}",
        caller.file(),
        caller.line(),
        runs.load(Ordering::Relaxed),
        start.elapsed()
    );
}

/// `loom::model` under loom; natively, runs `f` [`smoke_iterations`] times.
#[cfg(not(loom))]
pub fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    for _ in 0..smoke_iterations() {
        f()
    }
}

/// How many times a native smoke run repeats a model (env `CTXPOOL_SMOKE_ITERS`, default 50).
#[cfg(not(loom))]
pub fn smoke_iterations() -> usize {
    std::env::var("CTXPOOL_SMOKE_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

/// How long a native smoke run waits for a wake-up before calling it lost.
#[cfg(not(loom))]
pub const LOST_WAKEUP: std::time::Duration = std::time::Duration::from_secs(10);

/// Drives a future to completion on this thread, parking between polls (the native stand-in
/// for `loom::future::block_on`). Panics if the future is not woken within [`LOST_WAKEUP`]
/// (under loom a lost wake-up is reported as a deadlock instead).
#[cfg(not(loom))]
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut f = pin!(f);
    let deadline = std::time::Instant::now() + LOST_WAKEUP;
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        let now = std::time::Instant::now();
        assert!(
            now < deadline,
            "lost wake-up: future not woken within {LOST_WAKEUP:?}"
        );
        std::thread::park_timeout(deadline - now);
    }
}

/// `ctx.wait()`. Natively it panics if the wait is not woken within [`LOST_WAKEUP`] (even when
/// the context reads as cancelled by then: a late read is not a wake-up).
pub fn wait(ctx: &ctxpool::Context) {
    #[cfg(loom)]
    ctx.wait();
    #[cfg(not(loom))]
    {
        let start = std::time::Instant::now();
        let cancelled = ctx.wait_timeout(LOST_WAKEUP);
        assert!(
            cancelled && start.elapsed() < LOST_WAKEUP,
            "lost wake-up: wait() not woken within {LOST_WAKEUP:?}"
        );
    }
}

fn noop_raw() -> RawWaker {
    fn clone(_: *const ()) -> RawWaker {
        noop_raw()
    }
    fn noop(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    RawWaker::new(core::ptr::null(), &VTABLE)
}

/// A waker that does nothing.
pub fn noop_waker() -> Waker {
    // SAFETY: every vtable function ignores the (null) data pointer.
    unsafe { Waker::from_raw(noop_raw()) }
}

/// Polls `f` once with a no-op waker, then drops it; returns whether it was ready. For a
/// `Context::cancelled()` future this links a waiter and registers the context up the tree,
/// then (if still pending) unlinks the waiter again, leaving the registration in place.
pub fn poll_once<F: Future>(f: F) -> bool {
    let waker = noop_waker();
    let mut cx = TaskContext::from_waker(&waker);
    let mut f = pin!(f);
    f.as_mut().poll(&mut cx).is_ready()
}

/// A future that completes when both `a` and `b` have (polling each until it is ready).
pub async fn join2<A: Future<Output = ()>, B: Future<Output = ()>>(a: A, b: B) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let (mut a_done, mut b_done) = (false, false);
    core::future::poll_fn(move |cx| {
        if !a_done {
            a_done = a.as_mut().poll(cx).is_ready();
        }
        if !b_done {
            b_done = b.as_mut().poll(cx).is_ready();
        }
        if a_done && b_done {
            core::task::Poll::Ready(())
        } else {
            core::task::Poll::Pending
        }
    })
    .await
}

/// A pool of `capacity` slots (tiny, so that models force slot reuse and exhaustion), in which
/// a thread leases the parents it made itself as it does any other's, so that a model makes
/// leased children on one thread (`PoolBuilder::testing_lease_own_children`).
pub fn pool(capacity: u32) -> Pool {
    Pool::builder()
        .capacity(capacity)
        .testing_lease_own_children()
        .build()
        .unwrap()
}

/// A pool of `capacity` slots with the default lease rule: a child made on the thread that
/// made its parent holds a reference on it, unless another thread leases that parent.
pub fn pool_own_refs(capacity: u32) -> Pool {
    Pool::builder().capacity(capacity).build().unwrap()
}

/// A pool of `capacity` slots whose threads cache at most `thread_cache` free slots each.
pub fn pool_with_cache(capacity: u32, thread_cache: u32) -> Pool {
    Pool::builder()
        .capacity(capacity)
        .thread_cache(thread_cache)
        .testing_lease_own_children()
        .build()
        .unwrap()
}

/// Asserts that every slot ever taken from `pool` was given back: `in_use == 0` and
/// `created == released`.
#[track_caller]
pub fn assert_all_released(pool: &Pool) {
    settle(pool, 0);
    let s = pool.stats();
    assert_eq!(s.in_use, 0, "contexts still in use: {s:?}");
    assert_eq!(s.created, s.released, "created != released: {s:?}");
}

/// Native runs only (a no-op under loom, where no driver thread defers anything): once a
/// model's threads are joined, the zombie check of a parent released before its last leased
/// child may still wait for the pool's driver thread (time D7), or be running there. Turns the
/// pool (a turn drains every thread's ring) and waits for a running check, until at most
/// `live` contexts are in use or ten seconds have passed (then the caller's assertion reports
/// the leak). On a correct pool this ends after the first turn; the bound only keeps a real
/// leak from hanging the test.
pub fn settle(pool: &Pool, live: u64) {
    #[cfg(not(loom))]
    {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            pool.turn();
            pool.testing_quiesce();
            if pool.stats().in_use <= live || std::time::Instant::now() > until {
                return;
            }
            std::thread::yield_now();
        }
    }
    #[cfg(loom)]
    let _ = (pool, live);
}

/// A value whose drop is counted: captured by `after_func` closures to check that each
/// closure is consumed (run or dropped) exactly once (tree I7). Under loom the `Arc` is
/// loom's, so a closure that is never dropped is also reported as a leak.
pub struct DropCounter(pub Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
    }
}

/// Loads a counter with `SeqCst`.
pub fn get(c: &AtomicUsize) -> usize {
    c.load(core::sync::atomic::Ordering::SeqCst)
}

/// Increments a counter with `SeqCst`.
pub fn bump(c: &AtomicUsize) {
    c.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
}
