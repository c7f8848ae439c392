//! A request-shaped mix, net of a no-context baseline: what a server pays for its contexts.
//!
//! One iteration is one request, the same for every id (a seeded PRNG draws the same shape):
//!
//! - a request context, child of one long-lived shared server root; for `ctxpool` it has a
//!   30 s deadline (a timer armed per request, as a server's default timeout would); the peers
//!   have no deadlines (they have no timers to arm), so `ctxpool` does more work per request;
//! - 2 to 4 sub-operations, children of the request; half of them have a child of their own,
//!   and a quarter a grandchild under that; `is_cancelled` is read on every context made;
//! - 1 request in 16 is cancelled during one of its sub-operations (a client hanging up);
//! - 1 sub-operation in 8 is cancelled explicitly (a sub-call that failed);
//! - 1 sub-operation in 8 is handed to a second thread, which drops it after its request was
//!   released (work finishing on another thread): hand-offs go 64 to a message, in buffers
//!   that come back for reuse, so the harness itself stays small (`none` measures it).
//!
//! Ids (compared over time; do not rename): `none` (the same loop, PRNG and hand-offs, with no
//! contexts), `naive` (an `Arc` node with a `Mutex<Vec<Weak<_>>>` of children,
//! `benches/support/naive.rs`), `tokio_util` (`CancellationToken::child_token`), `ctxpool`.
//!
//! Groups:
//!
//! - `server_mix`: one worker and the dropper.
//! - `server_mix_2w`: two workers under the same server root, plus the dropper; the time is
//!   the slower worker's per request (both run at once).
//! - `server_mix_workers`: ids `<impl>/<workers>` for the worker counts in
//!   `CTXPOOL_MIX_WORKERS` (default `1,2`); `benches/scale.sh` runs it at 1 to 16 workers.
//!
//! After the groups, allocations per request of each id are printed (counted on the worker
//! thread over 20,000 requests, after a warm-up).
//!
//! Run with `cargo bench --bench server_mix` (about a minute on 2 cores).
//!
//! With `CTXPOOL_MIX_RUN=<id>:<requests>` set, the binary runs that many requests of one id
//! (one worker) and exits, printing the worker's time per request on stderr:
//! `benches/instructions.sh` counts instructions per request under callgrind that way, a
//! measure that does not move with the machine's load, and `benches/ab.sh` compares two builds
//! by alternating such runs. `CTXPOOL_MIX_METRICS=off` turns the global pool's per-operation
//! metrics off (`metrics.enabled = false`) for `ctxpool`, to measure what they cost.
//! `CTXPOOL_MIX_HANDOFF=off` drops the sub-operations meant for the dropper on the worker
//! instead (for every id), to measure what the cross-thread release costs each implementation.

use std::hint::black_box;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::Criterion;
use ctxpool::{CancelGuard, Context, Reason};
use tokio_util::sync::CancellationToken;

#[path = "support/naive.rs"]
mod naive;

#[path = "support/counting.rs"]
mod counting;

/// Hand-offs per message to the dropper.
const BATCH: usize = 64;
/// The same request shapes for every id.
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// One context implementation behind the mix.
trait Mix: 'static {
    /// The long-lived server root the requests are made under (shared by the workers).
    type Root: Sync;
    /// The owner of a context: dropping it releases the context.
    type Guard: Send + 'static;
    fn root() -> Self::Root;
    fn request(root: &Self::Root) -> Self::Guard;
    fn child(parent: &Self::Guard) -> Self::Guard;
    fn cancel(g: &Self::Guard);
    fn is_cancelled(g: &Self::Guard) -> bool;
}

/// No contexts: the loop, the PRNG and the hand-offs alone.
struct NoContext;

impl Mix for NoContext {
    type Root = ();
    type Guard = u64;
    fn root() {}
    fn request(_: &()) -> u64 {
        black_box(1)
    }
    fn child(parent: &u64) -> u64 {
        black_box(*parent + 1)
    }
    fn cancel(g: &u64) {
        black_box(g);
    }
    fn is_cancelled(g: &u64) -> bool {
        black_box(*g) == 0
    }
}

struct Naive;

impl Mix for Naive {
    type Root = naive::Guard;
    type Guard = naive::Guard;
    fn root() -> naive::Guard {
        naive::Guard::root()
    }
    fn request(root: &naive::Guard) -> naive::Guard {
        root.with_cancel()
    }
    fn child(parent: &naive::Guard) -> naive::Guard {
        parent.with_cancel()
    }
    fn cancel(g: &naive::Guard) {
        g.cancel();
    }
    fn is_cancelled(g: &naive::Guard) -> bool {
        g.is_cancelled()
    }
}

struct TokioUtil;

impl Mix for TokioUtil {
    type Root = CancellationToken;
    type Guard = CancellationToken;
    fn root() -> CancellationToken {
        CancellationToken::new()
    }
    fn request(root: &CancellationToken) -> CancellationToken {
        root.child_token()
    }
    fn child(parent: &CancellationToken) -> CancellationToken {
        parent.child_token()
    }
    fn cancel(g: &CancellationToken) {
        g.cancel();
    }
    fn is_cancelled(g: &CancellationToken) -> bool {
        g.is_cancelled()
    }
}

struct Pooled;

impl Mix for Pooled {
    type Root = CancelGuard;
    type Guard = CancelGuard;
    fn root() -> CancelGuard {
        if std::env::var_os("CTXPOOL_MIX_METRICS").is_some_and(|v| v == "off") {
            // `metrics.enabled = false` on the global pool, through its configuration, to
            // measure what the per-operation metrics cost in the mix.
            let pool = ctxpool::Pool::global();
            let mut config = (*pool.config()).clone();
            config.metrics.enabled = false;
            pool.update_config(config).expect("metrics.enabled = false");
        }
        Context::background().with_cancel()
    }
    fn request(root: &CancelGuard) -> CancelGuard {
        root.with_timeout(Duration::from_secs(30))
    }
    fn child(parent: &CancelGuard) -> CancelGuard {
        parent.with_cancel()
    }
    fn cancel(g: &CancelGuard) {
        g.cancel(Reason::None);
    }
    fn is_cancelled(g: &CancelGuard) -> bool {
        g.is_cancelled()
    }
}

/// xorshift64*: a few instructions, the same draws for every id.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    }
}

/// A worker's side of the hand-off: the batch being filled, and the channels to the dropper
/// and back (empty buffers return for reuse).
struct Handoff<G> {
    /// `CTXPOOL_MIX_HANDOFF=off`: drop on the worker instead (an experiment: unset for the
    /// groups' figures).
    local: bool,
    batch: Vec<G>,
    to_dropper: SyncSender<Vec<G>>,
    spare: Receiver<Vec<G>>,
}

impl<G> Handoff<G> {
    fn push(&mut self, g: G) {
        if self.local {
            drop(g);
        } else {
            self.batch.push(g);
        }
    }

    /// Sends a full batch (after the request that made it was released).
    fn flush_if_full(&mut self) {
        if self.batch.len() >= BATCH {
            let next = self
                .spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(BATCH));
            let full = std::mem::replace(&mut self.batch, next);
            self.to_dropper.send(full).expect("dropper gone");
        }
    }
}

/// Runs one request.
#[inline(always)]
fn request<M: Mix>(root: &M::Root, rng: &mut Rng, handoff: &mut Handoff<M::Guard>) {
    let req = M::request(root);
    let r = rng.next();
    let subs = 2 + (r % 3) as usize;
    // 1 in 16 requests is cancelled during sub-operation `cancel_at`.
    let cancel_at = if (r >> 8) % 16 == 0 {
        (r >> 12) as usize % subs
    } else {
        usize::MAX
    };
    let mut live = black_box(M::is_cancelled(&req)) as u32;
    for i in 0..subs {
        let s = rng.next();
        let sub = M::child(&req);
        live += M::is_cancelled(&sub) as u32;
        if s % 2 == 0 {
            let inner = M::child(&sub);
            live += M::is_cancelled(&inner) as u32;
            if (s >> 1) % 2 == 0 {
                let deepest = M::child(&inner);
                live += M::is_cancelled(&deepest) as u32;
            }
        }
        if i == cancel_at {
            M::cancel(&req);
            live += M::is_cancelled(&sub) as u32;
        }
        if (s >> 4) % 8 == 0 {
            M::cancel(&sub);
            live += M::is_cancelled(&sub) as u32;
        }
        if (s >> 8) % 8 == 0 {
            handoff.push(sub);
        }
    }
    black_box(live);
    drop(req);
    handoff.flush_if_full();
}

/// Runs `iters` requests on each of `workers` threads at once under one root, with one dropper
/// thread; returns the slower worker's time (spawning and the final drops are not timed).
fn time_mix<M: Mix>(root: &M::Root, workers: usize, iters: u64) -> Duration {
    let start = Barrier::new(workers);
    let (to_dropper, inbox) = sync_channel::<Vec<M::Guard>>(4 * workers);
    thread::scope(|s| {
        let mut returns = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..workers {
            let (back, spare) = sync_channel::<Vec<M::Guard>>(8);
            returns.push(back);
            let to_dropper = to_dropper.clone();
            let start = &start;
            handles.push(s.spawn(move || {
                let mut handoff = Handoff {
                    local: handoff_off(),
                    batch: Vec::with_capacity(BATCH),
                    to_dropper,
                    spare,
                };
                let mut rng = Rng(SEED);
                // One request first, so that one-time per-thread costs are not timed.
                request::<M>(root, &mut rng, &mut handoff);
                start.wait();
                let t0 = Instant::now();
                for _ in 0..iters {
                    request::<M>(root, &mut rng, &mut handoff);
                }
                let t = t0.elapsed();
                drop(handoff.batch); // untimed
                t
            }));
        }
        drop(to_dropper);
        // The dropper: drops each batch and sends its buffer back to a worker for reuse; it
        // ends when every worker has hung up.
        s.spawn(move || {
            for (n, mut batch) in inbox.into_iter().enumerate() {
                batch.clear();
                let _ = returns[n % returns.len()].try_send(batch);
            }
        });
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .max()
            .unwrap_or_default()
    })
}

fn bench_group(c: &mut Criterion, group: &str, workers: usize) {
    let mut g = c.benchmark_group(group);
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    bench_ids(&mut g, workers, |id| id.to_string());
    g.finish();
}

fn bench_ids(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    workers: usize,
    name: impl Fn(&str) -> String,
) {
    run_id::<NoContext>(g, &name("none"), workers);
    run_id::<Naive>(g, &name("naive"), workers);
    run_id::<TokioUtil>(g, &name("tokio_util"), workers);
    run_id::<Pooled>(g, &name("ctxpool"), workers);
}

fn run_id<M: Mix>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    workers: usize,
) {
    let root = M::root();
    g.bench_function(id, |b| {
        b.iter_custom(|iters| time_mix::<M>(&root, workers, iters))
    });
}

fn scale(c: &mut Criterion) {
    let list = std::env::var("CTXPOOL_MIX_WORKERS").unwrap_or_else(|_| "1,2".to_string());
    let mut g = c.benchmark_group("server_mix_workers");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for workers in list
        .split(',')
        .filter_map(|w| w.trim().parse::<usize>().ok())
    {
        for (name, run) in [
            ("none", run_id::<NoContext> as fn(&mut _, &str, usize)),
            ("naive", run_id::<Naive>),
            ("tokio_util", run_id::<TokioUtil>),
            ("ctxpool", run_id::<Pooled>),
        ] {
            run(&mut g, &format!("{name}/{workers}"), workers);
        }
    }
    g.finish();
}

/// Whether `CTXPOOL_MIX_HANDOFF=off` asks for the hand-offs to be dropped on the worker.
fn handoff_off() -> bool {
    std::env::var_os("CTXPOOL_MIX_HANDOFF").is_some_and(|v| v == "off")
}

/// Allocations per request on the worker thread, after a warm-up, over 20,000 requests.
fn allocs_per_request<M: Mix>() -> f64 {
    const N: u64 = 20_000;
    let root = M::root();
    let (to_dropper, inbox) = sync_channel::<Vec<M::Guard>>(64);
    let (back, spare) = sync_channel::<Vec<M::Guard>>(64);
    let dropper = thread::spawn(move || {
        for mut batch in inbox {
            batch.clear();
            let _ = back.try_send(batch);
        }
    });
    let mut handoff = Handoff {
        local: false,
        batch: Vec::with_capacity(BATCH),
        to_dropper,
        spare,
    };
    let mut rng = Rng(SEED);
    for _ in 0..N {
        request::<M>(&root, &mut rng, &mut handoff);
    }
    let before = counting::thread_allocs();
    for _ in 0..N {
        request::<M>(&root, &mut rng, &mut handoff);
    }
    let per = (counting::thread_allocs() - before) as f64 / N as f64;
    drop(handoff);
    dropper.join().unwrap();
    per
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated `pub fn` would
// trip the crate's `missing_docs = "deny"` lint.
fn main() {
    // `CTXPOOL_MIX_RUN=<id>:<requests>`: run that many requests of one id (one worker, the
    // dropper, the same loop as the groups) and exit, for counting instructions under
    // callgrind (`benches/instructions.sh`), where time is not the measure.
    if let Ok(spec) = std::env::var("CTXPOOL_MIX_RUN") {
        let (id, n) = spec
            .split_once(':')
            .expect("CTXPOOL_MIX_RUN=<id>:<requests>");
        let n: u64 = n.parse().expect("CTXPOOL_MIX_RUN: requests");
        let t = match id {
            "none" => time_mix::<NoContext>(&NoContext::root(), 1, n),
            "naive" => time_mix::<Naive>(&Naive::root(), 1, n),
            "tokio_util" => time_mix::<TokioUtil>(&TokioUtil::root(), 1, n),
            "ctxpool" => time_mix::<Pooled>(&Pooled::root(), 1, n),
            other => panic!("CTXPOOL_MIX_RUN: unknown id {other:?}"),
        };
        // On stderr, so that a caller counting instructions can ignore it.
        eprintln!(
            "{id}: {:.1} ns/request over {n} requests",
            t.as_nanos() as f64 / n.max(1) as f64
        );
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_group(&mut c, "server_mix", 1);
    bench_group(&mut c, "server_mix_2w", 2);
    scale(&mut c);
    c.final_summary();
    println!("allocations per request (worker thread, 20,000 requests after a warm-up):");
    println!("  none        {:.2}", allocs_per_request::<NoContext>());
    println!("  naive       {:.2}", allocs_per_request::<Naive>());
    println!("  tokio_util  {:.2}", allocs_per_request::<TokioUtil>());
    println!("  ctxpool     {:.2}", allocs_per_request::<Pooled>());
}
