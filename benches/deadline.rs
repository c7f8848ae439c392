//! Deadline benchmarks: `ctxpool`'s timed contexts against tokio's timers and a hand-rolled
//! timer heap, each group measuring its peers side by side in one run so that the ratios are
//! comparable.
//!
//! Groups and ids (the ids are compared over time; do not rename them):
//!
//! - `timeout_create_drop`: arm one timer due in 30 s and disarm it again, the life of a request
//!   that finishes well before its deadline. Each id pays for everything its design needs at the
//!   arming and dropping thread; work its design defers to another thread is not timed here.
//!   - `ctxpool`: `Context::background().with_timeout(30 s)`, then drop the `CancelGuard` (the
//!     global pool). Arming is a store into this thread's arm ring; the pool's driver thread
//!     drains the ring in the background (that is the design) and finds the entry stale.
//!   - `tokio_timeout`: `tokio::time::timeout(30 s, pending())`, pinned, polled once (which
//!     registers its `Sleep` with the runtime's timer wheel) with a no-op waker, then dropped
//!     (which deregisters it); inside a current-thread runtime with time enabled.
//!   - `delay_queue`: `tokio_util::time::DelayQueue::insert((), 30 s)` then `remove` on a
//!     long-lived queue, in the same kind of runtime context.
//!   - `naive_heap`: a `Mutex` around a `BinaryHeap` of `(deadline, id)` with lazy removal (see
//!     [`NaiveTimers`]): arm = `Instant::now()` + lock + push; drop = lock + mark cancelled +
//!     purge what is cancelled at the top.
//!
//!   All four read the time once per timer (ctxpool the CPU's time-stamp counter through its
//!   TSC anchor, so that no deadline is early; the others `Instant::now`), and all can fire
//!   the timer if it is not dropped, so they do the same job.
//!
//! - `clock_read`: the time sources themselves, the floor under a timed creation that is
//!   never early: `rdtsc` (one `_rdtsc()`, x86_64 only) and `instant_now` (`Instant::now()`).
//!
//! - `fire_100k` (throughput: 100,000 timers per iteration): arm 100,000 timers due 1..=10 ms
//!   after each is armed (`i % 10 + 1` ms, so the due times are spread uniformly over the 10 ms),
//!   and wait until every one has fired and its waiting observer was woken. Timed from before the
//!   first arm until the last observer was woken and every timer, observer and task was released
//!   (tokio frees each task as it completes, so ctxpool's release is timed too). The floor is
//!   ~10 ms of waiting plus the timer resolution (1 ms for both); what is above it is arming,
//!   firing, waking and releasing 100,000 timers.
//!   - `ctxpool`: a built pool (its own driver thread, 1 ms resolution). Children of one root,
//!     made with `with_deadline(Instant::now() + d)`; right after each is made, one
//!     `cancelled()` future (boxed, owning a handle) is polled once, which links a waiter into
//!     the node before its deadline. The driver fires each timer by cancelling its context,
//!     which wakes the waiter; this thread parks until every observer has completed. Each
//!     observer has its own waker (made once, outside the timing) that counts it down exactly
//!     once, however often it is woken, and an observer whose first poll is already ready counts
//!     itself. Nothing reads `is_cancelled()` in between, so no deadline is observed lazily
//!     without the driver, and each iteration checks that the driver fired every timer that was
//!     not already complete at its first poll (`TimerStats::fired`).
//!     `with_deadline(Instant::now() + d)` rather than `with_timeout(d)`: `with_timeout` counts
//!     from the pool's coarse tick, which lags real time by up to 1 ms, so its timers would be
//!     due up to 1 ms earlier than tokio's `sleep(d)` (`Instant::now() + d`, rounded up to the
//!     millisecond like ctxpool's); both arm through the same path.
//!   - `tokio_timeout`: a current-thread runtime (one thread, which both arms and, when idle,
//!     turns the timer wheel); 100,000 `tokio::time::sleep(d)` tasks spawned onto a `JoinSet`
//!     and joined. The ctxpool id uses two threads (this one and the pool's driver), as its
//!     design does: on a machine with few cores its time depends on whether the scheduler runs
//!     the driver on the measuring thread's core (on 2 cores, about 25% slower when it does).
//!
//! Run with `cargo bench --bench deadline` (about a minute).
#![allow(missing_docs)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskCx, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use ctxpool::{Context, Pool};
use tokio::task::JoinSet;
use tokio_util::time::DelayQueue;

/// The timeout of `timeout_create_drop`: long enough never to fire during the bench.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Timers per `fire_100k` iteration.
const TIMERS: usize = 100_000;

/// When timer `i` of `fire_100k` is due, from its arming: 1..=10 ms, uniformly.
fn due_in(i: usize) -> Duration {
    Duration::from_millis((i % 10 + 1) as u64)
}

fn current_thread_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// The hand-rolled peer.

/// Hashes the sequential `u64` ids of [`NaiveTimers`] with one multiply (Fibonacci hashing)
/// instead of SipHash: what a hand-rolled timer set keyed by its own counter would use.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Below this many cancelled ids the heap is never compacted.
const PURGE_MIN: usize = 1024;

/// The textbook timer set: one mutex around a min-heap of `(deadline, id)`, with lazy removal.
///
/// A binary heap cannot remove an arbitrary entry cheaply, so cancelling a timer only records
/// its id in `cancelled`. The cancelled entries are then dropped:
///
/// - at the top, at once: after each cancel, cancelled entries at the top are popped (the common
///   case, timeouts cancelled roughly in the order they were armed, keeps the heap near the
///   number of live timers with no compaction at all);
/// - anywhere, in bulk: once at least half of the heap is cancelled (and at least
///   [`PURGE_MIN`] ids), the heap is rebuilt without them (`retain`, O(n)) and `cancelled` is
///   cleared, which also forgets ids cancelled after they fired. That is amortised O(1) per
///   cancel and bounds both collections to about twice the live timers.
///
/// Firing ([`NaiveTimers::expire`]) pops due entries, skipping cancelled ones.
struct NaiveTimers {
    inner: Mutex<NaiveInner>,
}

struct NaiveInner {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    cancelled: HashSet<u64, BuildHasherDefault<IdHasher>>,
    next_id: u64,
}

/// An armed timer of [`NaiveTimers`]; dropping it cancels the timer (like a `CancelGuard`).
struct NaiveTimer<'a> {
    timers: &'a NaiveTimers,
    id: u64,
}

impl NaiveTimers {
    fn new() -> Self {
        NaiveTimers {
            inner: Mutex::new(NaiveInner {
                heap: BinaryHeap::new(),
                cancelled: HashSet::default(),
                next_id: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NaiveInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn arm(&self, after: Duration) -> NaiveTimer<'_> {
        let when = Instant::now() + after;
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        g.heap.push(Reverse((when, id)));
        NaiveTimer { timers: self, id }
    }

    fn cancel(&self, id: u64) {
        let mut g = self.lock();
        let NaiveInner {
            heap, cancelled, ..
        } = &mut *g;
        cancelled.insert(id);
        while let Some(&Reverse((_, top))) = heap.peek() {
            if !cancelled.remove(&top) {
                break;
            }
            heap.pop();
        }
        if cancelled.len() >= PURGE_MIN && 2 * cancelled.len() >= heap.len() {
            heap.retain(|Reverse((_, id))| !cancelled.contains(id));
            cancelled.clear();
        }
    }

    /// Pops every timer due at `now` and calls `fire` with its id, skipping cancelled ones.
    fn expire(&self, now: Instant, mut fire: impl FnMut(u64)) {
        let mut g = self.lock();
        let NaiveInner {
            heap, cancelled, ..
        } = &mut *g;
        while let Some(&Reverse((when, id))) = heap.peek() {
            if when > now {
                break;
            }
            heap.pop();
            if !cancelled.remove(&id) {
                fire(id);
            }
        }
    }

    /// Entries held: heap and cancelled set.
    fn footprint(&self) -> (usize, usize) {
        let g = self.lock();
        (g.heap.len(), g.cancelled.len())
    }
}

impl Drop for NaiveTimer<'_> {
    fn drop(&mut self) {
        self.timers.cancel(self.id);
    }
}

/// Checks the lazy-removal scheme: due timers fire, cancelled ones never do, and cancelling out
/// of order keeps the collections bounded.
fn check_naive_timers() {
    let t = NaiveTimers::new();
    let keep = t.arm(Duration::ZERO);
    let mut armed: Vec<NaiveTimer<'_>> = (0..10_000).map(|_| t.arm(TIMEOUT)).collect();
    // Cancel newest first: never at the top (that is `keep`), so only compaction frees them.
    while armed.pop().is_some() {}
    let (heap, cancelled) = t.footprint();
    assert!(
        heap <= 2 * PURGE_MIN && cancelled <= PURGE_MIN,
        "{heap} {cancelled}"
    );
    let mut fired = Vec::new();
    t.expire(Instant::now(), |id| fired.push(id));
    assert_eq!(fired, [keep.id]);
    drop(keep);
    t.expire(Instant::now() + 2 * TIMEOUT, |id| {
        panic!("cancelled timer {id} fired")
    });
}

// ---------------------------------------------------------------------------------------------
// timeout_create_drop

fn timeout_create_drop(c: &mut Criterion) {
    let mut g = c.benchmark_group("timeout_create_drop");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let root = Context::background();
    g.bench_function("ctxpool", |b| {
        b.iter(|| {
            let t = root.with_timeout(TIMEOUT);
            black_box(&t);
            drop(t)
        })
    });
    let st = Pool::global().timer_stats();
    eprintln!(
        "  ctxpool timers: armed {} fired {} stale {} pending {} spilled {} turns {}",
        st.armed, st.fired, st.stale, st.pending, st.spilled, st.turns
    );

    let rt = current_thread_rt();
    g.bench_function("tokio_timeout", |b| {
        let _e = rt.enter();
        let mut cx = TaskCx::from_waker(Waker::noop());
        b.iter(|| {
            let f = pin!(tokio::time::timeout(TIMEOUT, std::future::pending::<()>()));
            assert!(matches!(f.poll(&mut cx), Poll::Pending));
        })
    });

    g.bench_function("delay_queue", |b| {
        let _e = rt.enter();
        let mut q: DelayQueue<()> = DelayQueue::new();
        b.iter(|| {
            let k = q.insert((), TIMEOUT);
            black_box(&k);
            black_box(q.remove(&k));
        })
    });

    check_naive_timers();
    let timers = NaiveTimers::new();
    g.bench_function("naive_heap", |b| {
        b.iter(|| {
            let t = timers.arm(TIMEOUT);
            black_box(&t);
            drop(t)
        })
    });
    let (heap, cancelled) = timers.footprint();
    assert!(
        heap <= 2 * PURGE_MIN && cancelled <= PURGE_MIN,
        "{heap} {cancelled}"
    );

    g.finish();
}

// ---------------------------------------------------------------------------------------------
// fire_100k

/// Observers not yet complete in this iteration; the last one unparks the measuring thread.
struct Countdown {
    left: AtomicUsize,
    thread: Thread,
}

/// One observer's waker. A waker may be woken more than once (a wake-up that races with the
/// first poll completing, or a spurious one), so it counts its observer down only the first
/// time: `done` is reset before each iteration.
struct ObserverWake {
    done: AtomicBool,
    countdown: Arc<Countdown>,
}

impl ObserverWake {
    fn complete(&self) {
        if !self.done.swap(true, Ordering::AcqRel)
            && self.countdown.left.fetch_sub(1, Ordering::AcqRel) == 1
        {
            self.countdown.thread.unpark();
        }
    }
}

impl Wake for ObserverWake {
    fn wake(self: Arc<Self>) {
        self.complete();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.complete();
    }
}

/// How long `fire_100k` waits for its observers before it reports them as lost.
const STALL: Duration = Duration::from_secs(10);

/// An observer of `ctx`'s cancellation that owns its handle.
async fn observe(ctx: Context) {
    ctx.cancelled().await
}

fn fire_100k(c: &mut Criterion) {
    let mut g = c.benchmark_group("fire_100k");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(TIMERS as u64));

    let pool = Pool::builder().capacity(1 << 18).build().expect("pool");
    let countdown = Arc::new(Countdown {
        left: AtomicUsize::new(0),
        thread: thread::current(),
    });
    let wakes: Vec<Arc<ObserverWake>> = (0..TIMERS)
        .map(|_| {
            Arc::new(ObserverWake {
                done: AtomicBool::new(false),
                countdown: countdown.clone(),
            })
        })
        .collect();
    let mut ready_at_first_poll = 0;
    g.bench_function("ctxpool", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let root = pool.background().with_cancel();
                for w in &wakes {
                    w.done.store(false, Ordering::Relaxed);
                }
                countdown.left.store(TIMERS, Ordering::Release);
                let mut guards = Vec::with_capacity(TIMERS);
                let mut observers = Vec::with_capacity(TIMERS);
                let mut ready = 0;
                let fired_before = pool.timer_stats().fired;

                let t0 = Instant::now();
                for (i, w) in wakes.iter().enumerate() {
                    let t = root.with_deadline(Instant::now() + due_in(i));
                    let mut o = Box::pin(observe(t.context()));
                    let waker = Waker::from(w.clone());
                    if o.as_mut().poll(&mut TaskCx::from_waker(&waker)).is_ready() {
                        // Cancelled before its first poll returned (due already, or fired
                        // while it registered): complete, maybe with no wake-up to come.
                        ready += 1;
                        w.complete();
                    }
                    guards.push(t);
                    observers.push(o);
                }
                while countdown.left.load(Ordering::Acquire) != 0 {
                    thread::park_timeout(STALL);
                    assert!(
                        t0.elapsed() < STALL,
                        "{} of {TIMERS} observers never woken",
                        countdown.left.load(Ordering::Acquire)
                    );
                }
                drop(observers);
                drop(guards);
                total += t0.elapsed();

                drop(root);
                // The driver adds to `fired` after its turn's last wake: give it a moment.
                let give_up = Instant::now() + Duration::from_secs(5);
                while ((pool.timer_stats().fired - fired_before) as usize) + ready < TIMERS {
                    assert!(
                        Instant::now() < give_up,
                        "the driver did not fire every timer"
                    );
                    thread::sleep(Duration::from_micros(100));
                }
                ready_at_first_poll += ready;
            }
            total
        })
    });
    let st = pool.timer_stats();
    eprintln!(
        "  ctxpool timers: fired {} ({ready_at_first_poll} observers were ready at their first \
         poll), lateness p50 {:?} p99 {:?}, turns {}",
        st.fired, st.lateness_p50, st.lateness_p99, st.turns
    );
    assert_eq!(pool.stats().in_use, 0, "ctxpool bench leaked contexts");

    let rt = current_thread_rt();
    g.bench_function("tokio_timeout", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(async {
                    let t0 = Instant::now();
                    let mut set = JoinSet::new();
                    for i in 0..TIMERS {
                        set.spawn(tokio::time::sleep(due_in(i)));
                    }
                    while let Some(r) = set.join_next().await {
                        r.expect("sleep task");
                    }
                    t0.elapsed()
                });
            }
            total
        })
    });

    g.finish();
}

// ---------------------------------------------------------------------------------------------
// clock_read

fn clock_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock_read");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    #[cfg(target_arch = "x86_64")]
    g.bench_function("rdtsc", |b| {
        // SAFETY: `_rdtsc` has no preconditions on x86_64.
        b.iter(|| black_box(unsafe { core::arch::x86_64::_rdtsc() }))
    });
    g.bench_function("instant_now", |b| b.iter(|| black_box(Instant::now())));
    g.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, like benches/context.rs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    clock_read(&mut c);
    timeout_create_drop(&mut c);
    fire_100k(&mut c);
    c.final_summary();
}
