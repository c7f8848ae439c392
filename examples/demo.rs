//! A simulated server: worker threads handle "requests", each with a request context (a child
//! of a long-lived server root, labelled and carrying its request id), a few sub-operation
//! children (some nested two or three deep), random cancellations (clients hanging up,
//! sub-operations timing out) and a few contexts handed to another thread to be dropped there
//! (after their request was released; 64 to a message, in buffers made before the run and sent
//! back for reuse, so that the hand-off costs every implementation the same few nanoseconds).
//!
//! The same workload then runs on a naive implementation (an `Arc` node per context with a
//! `Mutex<Vec<Weak<_>>>` of children), and on no contexts at all (`none`: the same requests,
//! work and hand-offs, with plain values instead of contexts), so that the demo can print what
//! the contexts themselves cost per request, net of everything else. A counting global
//! allocator reports the heap allocations per request of each. Finally the pool's counters are checked: every context
//! created was released.
//!
//! Every pooled request carries a deadline (the configuration's `default_timeout`, armed as a
//! timer per request); the naive requests carry none. A last phase arms 100,000 timers due
//! within 10 ms and waits for each, then prints how late the driver fired them (p50, p99).
//!
//! ```text
//! cargo run --release --example demo [-- --secs 4 --threads 2 --config FILE]
//! ```
//!
//! With `--config FILE` (TOML or JSON, see `ctxpool::config`) the global pool is built from
//! that configuration; an invalid file makes the demo print every problem and exit with
//! status 2.

use std::hint::black_box;
use std::io::{IsTerminal, Write};
use std::ops::Deref;
use std::process::exit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use ctxpool::{CancelGuard, Config, Context, Op, Pool, Reason, RequestId};

// ---------------------------------------------------------------------------------------------
// Counting allocator: every thread counts its own allocations in a thread-local (no shared
// counter, so counting adds no contention to either implementation); the threads publish
// their counts with their other counters.

#[path = "../benches/support/counting.rs"]
mod counting;
use counting::thread_allocs;

// ---------------------------------------------------------------------------------------------
// The naive implementation compared against (shared with `benches/context.rs`; its nodes
// here carry the operation label and request id that the workload reads).

#[path = "../benches/support/naive.rs"]
mod naive;

// ---------------------------------------------------------------------------------------------
// The two implementations behind one interface, so that both run exactly the same workload.

trait Model: 'static {
    const NAME: &'static str;
    /// Whether cancelling does anything (`false` for the no-context baseline).
    const CANCELS: bool = true;
    /// A cloneable handle.
    type Ctx: Clone + Send + Sync + 'static;
    /// The owner of a cancellable context: dropping it cancels and releases.
    type Guard: Deref<Target = Self::Ctx> + Send + 'static;
    fn request(server: &Self::Ctx, id: u64) -> Self::Guard;
    fn child(parent: &Self::Ctx, op: &'static Op) -> Self::Guard;
    fn cancel(owner: &Self::Guard, why: &'static str);
    fn is_cancelled(ctx: &Self::Ctx) -> bool;
    /// The values a log line would read.
    fn values(ctx: &Self::Ctx) -> (Option<u64>, Option<&'static Op>);
}

struct Pooled;

impl Model for Pooled {
    const NAME: &'static str = "ctxpool";
    type Ctx = Context;
    type Guard = CancelGuard;
    fn request(server: &Context, id: u64) -> CancelGuard {
        server
            .child()
            .op(&HANDLE_REQUEST)
            .request_id(RequestId(id))
            .with_timeout(request_timeout())
    }
    fn child(parent: &Context, op: &'static Op) -> CancelGuard {
        parent.child().op(op).with_cancel()
    }
    fn cancel(owner: &CancelGuard, why: &'static str) {
        owner.cancel(Reason::Message(why));
    }
    fn is_cancelled(ctx: &Context) -> bool {
        ctx.is_cancelled()
    }
    fn values(ctx: &Context) -> (Option<u64>, Option<&'static Op>) {
        (ctx.request_id().map(|r| r.0), ctx.op())
    }
}

/// No contexts: the baseline. A request "context" is its values on the stack, never
/// cancelled; it is handed to the reaper like the others.
struct NoContext;

/// The values a request carries, without a context around them.
#[derive(Clone, Copy)]
struct Bare {
    id: u64,
    op: &'static Op,
}

/// `Deref` to itself, so that `Bare` can be its own guard.
struct BareGuard(Bare);

impl Deref for BareGuard {
    type Target = Bare;
    fn deref(&self) -> &Bare {
        &self.0
    }
}

impl Model for NoContext {
    const NAME: &'static str = "none";
    const CANCELS: bool = false;
    type Ctx = Bare;
    type Guard = BareGuard;
    fn request(_server: &Bare, id: u64) -> BareGuard {
        BareGuard(Bare {
            id,
            op: &HANDLE_REQUEST,
        })
    }
    fn child(parent: &Bare, op: &'static Op) -> BareGuard {
        BareGuard(Bare { id: parent.id, op })
    }
    fn cancel(owner: &BareGuard, why: &'static str) {
        black_box((owner.id, why));
    }
    fn is_cancelled(ctx: &Bare) -> bool {
        black_box(ctx.id) == u64::MAX
    }
    fn values(ctx: &Bare) -> (Option<u64>, Option<&'static Op>) {
        (Some(ctx.id), Some(ctx.op))
    }
}

struct Naive;

impl Model for Naive {
    const NAME: &'static str = "naive";
    type Ctx = naive::Ctx<naive::Labels>;
    type Guard = naive::Guard<naive::Labels>;
    fn request(server: &Self::Ctx, id: u64) -> Self::Guard {
        server.child(&HANDLE_REQUEST, Some(id))
    }
    fn child(parent: &Self::Ctx, op: &'static Op) -> Self::Guard {
        parent.child(op, None)
    }
    fn cancel(owner: &Self::Guard, _why: &'static str) {
        owner.cancel();
    }
    fn is_cancelled(ctx: &Self::Ctx) -> bool {
        ctx.is_cancelled()
    }
    fn values(ctx: &Self::Ctx) -> (Option<u64>, Option<&'static Op>) {
        (ctx.request_id(), ctx.op())
    }
}

// ---------------------------------------------------------------------------------------------
// The workload.

static SERVER: Op = Op::new("server");
static HANDLE_REQUEST: Op = Op::new("handle_request");
static SUB_OPS: [Op; 4] = [
    Op::new("auth"),
    Op::new("db.query"),
    Op::new("cache.get"),
    Op::new("render"),
];
static DB_ROW: Op = Op::new("db.row");
static RPC: Op = Op::new("rpc.call");

/// The deadline of every pooled request: the global pool's configured default timeout.
fn request_timeout() -> Duration {
    static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TIMEOUT.get_or_init(|| Pool::global().config().default_timeout)
}

const WARM_UP: Duration = Duration::from_millis(500);
const TICK: Duration = Duration::from_millis(250);
/// Most rounds the implementations take turns in (one a second of `--secs`, at least one).
const MAX_ROUNDS: usize = 4;
/// Ticks a second: how often a log (not a terminal) gets a progress line.
const PER_SECOND: u32 = 4;
/// A run in which no request completes for this long, or whose threads do not stop within it,
/// is reported as stuck (exit status 1) instead of hanging.
const STALL: Duration = Duration::from_secs(5);

/// xorshift64: a tiny PRNG, good enough to pick what happens to a request.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A context handed to the reaper thread, which drops it there.
enum Handoff<M: Model> {
    /// A sub-operation's owner (the work "finishes in the background").
    Owner(M::Guard),
    /// A clone of a request's handle (e.g. kept by an access logger).
    Handle(M::Ctx),
}

/// Per-thread counters, kept locally and published after every request.
#[derive(Clone, Copy, Default)]
struct Counts {
    requests: u64,
    contexts: u64,
    aborted: u64,
    handed_off: u64,
    allocs: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            requests: self.requests - o.requests,
            contexts: self.contexts - o.contexts,
            aborted: self.aborted - o.aborted,
            handed_off: self.handed_off - o.handed_off,
            allocs: self.allocs - o.allocs,
        }
    }
}

/// One thread's published counters, on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Slot {
    requests: AtomicU64,
    contexts: AtomicU64,
    aborted: AtomicU64,
    handed_off: AtomicU64,
    allocs: AtomicU64,
}

impl Slot {
    fn publish(&self, c: &Counts) {
        self.requests.store(c.requests, Relaxed);
        self.contexts.store(c.contexts, Relaxed);
        self.aborted.store(c.aborted, Relaxed);
        self.handed_off.store(c.handed_off, Relaxed);
        self.allocs.store(c.allocs, Relaxed);
    }
}

fn total(slots: &[Slot]) -> Counts {
    let mut t = Counts::default();
    for s in slots {
        t.requests += s.requests.load(Relaxed);
        t.contexts += s.contexts.load(Relaxed);
        t.aborted += s.aborted.load(Relaxed);
        t.handed_off += s.handed_off.load(Relaxed);
        t.allocs += s.allocs.load(Relaxed);
    }
    t
}

/// A little CPU work on behalf of `ctx`, reading its values as a log line would.
fn work<M: Model>(ctx: &M::Ctx, seed: u64) {
    if M::is_cancelled(ctx) {
        return;
    }
    let mut x = seed | 1;
    for _ in 0..16 + seed % 32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box((x, M::values(ctx)));
}

fn handle_request<M: Model>(
    server: &M::Ctx,
    id: u64,
    rng: &mut Rng,
    out: &mut Outbox<M>,
    c: &mut Counts,
) {
    let req = M::request(server, id);
    c.contexts += 1;
    let rq = rng.next();
    // 2 to 4 sub-operations; in one request in 16 the client hangs up during one of them.
    let subs = 2 + (rq % 3) as usize;
    let hangup = ((rq >> 8) % 16 == 0).then_some((rq >> 12) as usize % subs);
    for i in 0..subs {
        if M::is_cancelled(&req) {
            c.aborted += 1;
            break;
        }
        let r = rng.next();
        let sub = M::child(&req, &SUB_OPS[r as usize % SUB_OPS.len()]);
        c.contexts += 1;
        work::<M>(&sub, r);
        // Half the sub-operations go one level deeper, a quarter two.
        let nested = (r >> 8) % 4;
        if nested >= 2 {
            let row = M::child(&sub, &DB_ROW);
            c.contexts += 1;
            work::<M>(&row, r >> 16);
            if nested == 3 {
                let rpc = M::child(&row, &RPC);
                c.contexts += 1;
                work::<M>(&rpc, r >> 24);
                if (r >> 32) % 8 == 0 {
                    M::cancel(&sub, "sub-operation deadline");
                    assert!(
                        M::is_cancelled(&rpc) || !M::CANCELS,
                        "a grandchild missed its cancellation"
                    );
                }
            }
        }
        if hangup == Some(i) {
            M::cancel(&req, "client closed the connection");
            assert!(
                M::is_cancelled(&sub) || !M::CANCELS,
                "a child missed its request's cancellation"
            );
        }
        // One sub-operation in 8 is finished (dropped) by another thread, after its request.
        if (r >> 40) % 8 == 0 {
            out.batch.push(Handoff::Owner(sub));
            c.handed_off += 1;
        }
    }
    // One request in 16 leaves a handle to another thread, which may release it last.
    if (rq >> 20) % 16 == 0 {
        out.batch.push(Handoff::Handle((*req).clone()));
        c.handed_off += 1;
    }
    drop(req);
    out.flush_if_full();
}

/// A worker's side of the hand-off to the reaper: the batch being filled, and where full
/// batches go and empty buffers come back from. Batching keeps the harness cheap (one channel
/// message per `BATCH` hand-offs instead of a futex wake-up per context) and the same for
/// every implementation, so that the per-request figures measure the contexts.
struct Outbox<M: Model> {
    w: usize,
    batch: Vec<Handoff<M>>,
    to_reaper: SyncSender<(usize, Vec<Handoff<M>>)>,
    spare: Receiver<Vec<Handoff<M>>>,
}

/// Hand-offs per message to the reaper.
const BATCH: usize = 64;
/// Buffers per worker, made before the run: a worker with none left waits for the reaper to
/// send one back, so that the steady state allocates nothing.
const BUFFERS: usize = 4;

impl<M: Model> Outbox<M> {
    /// Sends the batch if it is full (after the request that filled it was released), and
    /// takes an empty buffer back.
    fn flush_if_full(&mut self) {
        if self.batch.len() >= BATCH {
            let next = self.spare.recv().expect("the reaper hung up");
            let full = std::mem::replace(&mut self.batch, next);
            self.to_reaper
                .send((self.w, full))
                .expect("the reaper hung up");
        }
    }
}

fn worker<M: Model>(w: usize, server: &M::Ctx, mut out: Outbox<M>, slot: &Slot, stop: &AtomicBool) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut c = Counts::default();
    while !stop.load(Relaxed) {
        c.requests += 1;
        handle_request::<M>(
            server,
            ((w as u64) << 48) | c.requests,
            &mut rng,
            &mut out,
            &mut c,
        );
        c.allocs = thread_allocs();
        slot.publish(&c);
    }
}

/// Drops whatever it is handed, on its own thread, and sends each emptied buffer back to the
/// worker it came from.
fn reaper<M: Model>(
    rx: Receiver<(usize, Vec<Handoff<M>>)>,
    back: Vec<SyncSender<Vec<Handoff<M>>>>,
    slot: &Slot,
) {
    let mut c = Counts::default();
    for (w, mut batch) in rx {
        for h in batch.drain(..) {
            match h {
                Handoff::Owner(owner) => black_box(M::is_cancelled(&owner)),
                Handoff::Handle(ctx) => black_box(M::is_cancelled(&ctx)),
            };
        }
        // Never full: a worker has at most `BUFFERS` buffers in all.
        let _ = back[w].try_send(batch);
        c.allocs = thread_allocs();
        slot.publish(&c);
    }
}

/// Counts a thread's exit, panicking or not.
struct Exit<'a>(&'a AtomicUsize);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
}

/// One progress line: rewritten in place on a terminal (`tty`), a line of its own otherwise.
fn progress(
    out: &mut impl Write,
    tty: bool,
    name: &str,
    secs: f64,
    rps: f64,
    live: Option<(u64, u32)>,
) {
    let lead = if tty { "\r" } else { "" };
    let _ = write!(
        out,
        "{lead}  [{name:<7}] {secs:>5.2} s  {:>6.2} M req/s",
        rps / 1e6
    );
    let _ = match live {
        Some((in_use, high)) => write!(
            out,
            "  active contexts {in_use:>5}  pool high water {high:>6}"
        ),
        None => write!(out, "  (no pool: contexts are heap nodes)"),
    };
    let _ = if tty { out.flush() } else { writeln!(out) };
}

/// Reports a run that stopped making progress and exits without waiting for it.
fn stuck(name: &str, what: &str) -> ! {
    eprintln!(
        "\n[{name}] STUCK: {what} within {} s (deadlock or livelock?)",
        STALL.as_secs()
    );
    exit(1)
}

#[derive(Default)]
struct Outcome {
    secs: f64,
    /// Counters over the measured phase.
    delta: Counts,
}

/// Rounds of one implementation add up: their measured time and their counters.
impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, o: Outcome) {
        self.secs += o.secs;
        self.delta = Counts {
            requests: self.delta.requests + o.delta.requests,
            contexts: self.delta.contexts + o.delta.contexts,
            aborted: self.delta.aborted + o.delta.aborted,
            handed_off: self.delta.handed_off + o.delta.handed_off,
            allocs: self.delta.allocs + o.delta.allocs,
        };
    }
}

/// Runs the workload on `threads` workers plus a reaper for `WARM_UP` + `secs`, printing a
/// progress line every `TICK`; `live` gives (contexts in use, pool high water) if known.
fn run<M: Model>(
    server: &M::Ctx,
    threads: usize,
    secs: f64,
    live: &dyn Fn() -> Option<(u64, u32)>,
) -> Outcome {
    let stop = AtomicBool::new(false);
    let exited = AtomicUsize::new(0);
    let slots: Vec<Slot> = (0..=threads).map(|_| Slot::default()).collect();
    let (workers, reaper_slot) = slots.split_at(threads);
    let (tx, rx) = mpsc::sync_channel::<(usize, Vec<Handoff<M>>)>(threads * BUFFERS);
    let mut outboxes = Vec::with_capacity(threads);
    let mut back = Vec::with_capacity(threads);
    for w in 0..threads {
        let (give, spare) = mpsc::sync_channel(BUFFERS);
        for _ in 1..BUFFERS {
            give.send(Vec::with_capacity(BATCH))
                .expect("the receiver is here");
        }
        back.push(give);
        outboxes.push(Outbox::<M> {
            w,
            batch: Vec::with_capacity(BATCH),
            to_reaper: tx.clone(),
            spare,
        });
    }
    drop(tx);
    thread::scope(|s| {
        s.spawn(|| {
            let _exit = Exit(&exited);
            reaper::<M>(rx, back, &reaper_slot[0])
        });
        for ((w, slot), out) in workers.iter().enumerate().zip(outboxes) {
            let (stop, exited) = (&stop, &exited);
            s.spawn(move || {
                let _exit = Exit(exited);
                worker::<M>(w, server, out, slot, stop)
            });
        }

        thread::sleep(WARM_UP);
        let main_allocs = thread_allocs();
        let start = total(&slots);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs_f64(secs);
        let (mut last, mut last_t, mut last_progress) = (start, t0, t0);
        let mut out = std::io::stdout().lock();
        // On a terminal the progress line is rewritten in place; in a log (a pipe, CI), one
        // line a second instead of one carriage-return-joined line.
        let tty = out.is_terminal();
        let mut ticks = 0u32;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            thread::sleep(TICK.min(end - now));
            let (cur, now) = (total(&slots), Instant::now());
            let rps = (cur.requests - last.requests) as f64 / (now - last_t).as_secs_f64();
            ticks += 1;
            let shown = tty || ticks % PER_SECOND == 0;
            if shown {
                progress(
                    &mut out,
                    tty,
                    M::NAME,
                    (now - t0).as_secs_f64(),
                    rps,
                    live(),
                );
            }
            if cur.requests != last.requests {
                last_progress = now;
            } else if now - last_progress >= STALL {
                stuck(M::NAME, "no request completed");
            }
            (last, last_t) = (cur, now);
        }
        let delta = total(&slots) - start;
        let secs = t0.elapsed().as_secs_f64();
        let main_allocs = thread_allocs() - main_allocs;
        stop.store(true, Relaxed);
        if tty {
            let _ = writeln!(out);
        }
        let stopping = Instant::now();
        while exited.load(Relaxed) <= threads {
            if stopping.elapsed() >= STALL {
                stuck(M::NAME, "the worker threads did not stop");
            }
            thread::sleep(Duration::from_millis(10));
        }
        Outcome {
            secs,
            delta: Counts {
                allocs: delta.allocs + main_allocs,
                ..delta
            },
        }
    })
}

struct Args {
    secs: f64,
    threads: usize,
    config: Option<String>,
    metrics_out: Option<String>,
}

fn parse_args() -> Args {
    let usage = "usage: demo [--secs N] [--threads N] [--config FILE]\n  \
                 --secs N       seconds of measured load per implementation (default 4;\n  \
                                the implementations take turns, one round a second, at most 4)\n  \
                 --threads N    worker threads (default 2)\n  \
                 --config FILE  build the global pool from this TOML or JSON configuration\n  \
                 --metrics-out FILE  write the final Prometheus exposition there";
    let (mut secs, mut threads, mut config, mut metrics_out) = (4.0_f64, 2_usize, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| match args.next() {
            Some(v) => v,
            None => {
                eprintln!("demo: {name} needs a value\n{usage}");
                exit(2)
            }
        };
        match arg.as_str() {
            "--secs" => match value("--secs").parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => secs = s,
                _ => {
                    eprintln!("demo: --secs must be a positive number\n{usage}");
                    exit(2)
                }
            },
            "--threads" => match value("--threads").parse::<usize>() {
                Ok(t) if (1..=256).contains(&t) => threads = t,
                _ => {
                    eprintln!("demo: --threads must be between 1 and 256\n{usage}");
                    exit(2)
                }
            },
            "--config" => config = Some(value("--config")),
            "--metrics-out" => metrics_out = Some(value("--metrics-out")),
            "-h" | "--help" => {
                println!("{usage}");
                exit(0)
            }
            other => {
                eprintln!("demo: unknown argument {other:?}\n{usage}");
                exit(2)
            }
        }
    }
    Args {
        secs,
        threads,
        config,
        metrics_out,
    }
}

/// Builds the global pool from `--config FILE`; prints every problem and exits 2 if the file
/// is invalid.
fn configure(path: &str) {
    let config = match Config::from_file(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: {path}: {e}");
            exit(2)
        }
    };
    if let Err(e) = Pool::init_global(Pool::builder().config(&config)) {
        eprintln!("demo: {path}: {e}");
        exit(2)
    }
    println!("configuration: {path}");
}

/// Arms `n` timers due within 10 ms on the global pool's driver and waits for each; returns
/// the wall time from the first arm to the last observed expiry.
fn deadline_phase(n: usize) -> Duration {
    let root = Context::background();
    let start = Instant::now();
    let guards: Vec<CancelGuard> = (0..n)
        .map(|i| root.with_timeout(Duration::from_millis(1 + i as u64 % 10)))
        .collect();
    for g in &guards {
        // Blocks until the driver fires it (or returns at once if it already did).
        g.wait();
    }
    let took = start.elapsed();
    for g in &guards {
        assert_eq!(
            g.cause(),
            Some(ctxpool::Cause::DeadlineExceeded(g.deadline().unwrap()))
        );
    }
    took
}

/// The CPU's model name (Linux), with its family and model numbers (a VM may name only the
/// vendor, "AMD EPYC", and the numbers then tell Zen 3 from Zen 4), for the record of where
/// numbers were measured.
fn cpu_model() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return "unknown".to_string();
    };
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let mut cpu = field("model name").unwrap_or_else(|| "unknown".to_string());
    if let (Some(family), Some(model)) = (field("cpu family"), field("model")) {
        cpu.push_str(&format!(" (family {family}, model {model})"));
    }
    cpu
}

fn main() {
    let Args {
        secs,
        threads,
        config,
        metrics_out,
    } = parse_args();
    if let Some(path) = &config {
        configure(path);
    }
    let pool = Pool::global();
    let before = pool.stats();
    // The implementations take turns, `rounds` times, so that a shared machine whose speed
    // changes over seconds (a neighbour's load) slows each of them alike, not whichever one
    // happened to run then.
    let rounds = (secs as usize).clamp(1, MAX_ROUNDS);
    let slice = secs / rounds as f64;
    println!(
        "ctxpool demo: {threads} worker thread(s) + 1 reaper thread, {secs} s measured per \
         implementation, in {rounds} round(s) taking turns, each after a {} ms warm-up",
        WARM_UP.as_millis()
    );
    println!(
        "context node: {} bytes, global pool capacity {}",
        ctxpool::NODE_SIZE,
        before.capacity
    );

    // ctxpool: every request is a child of one long-lived server context; the same workload
    // on the naive tree; and on no contexts: the cost of everything but the contexts.
    let pooled_server = Context::background().child().op(&SERVER).with_cancel();
    let naive_server = naive::Guard::labelled_root(&SERVER);
    let bare_server = Bare { id: 0, op: &SERVER };
    let (mut pooled, mut naive_run, mut none_run) =
        (Outcome::default(), Outcome::default(), Outcome::default());
    for _ in 0..rounds {
        pooled += run::<Pooled>(&pooled_server.context(), threads, slice, &|| {
            let s = pool.stats();
            Some((s.in_use, s.high_water))
        });
        naive_run += run::<Naive>(&naive_server, threads, slice, &|| None);
        none_run += run::<NoContext>(&bare_server, threads, slice, &|| None);
    }
    drop(pooled_server);
    let after = pool.stats();
    let naive_leftovers = naive_server.leftovers();
    drop(naive_server);

    let per_sec = |o: &Outcome, n: u64| n as f64 / o.secs / 1e6;
    let per_req = |o: &Outcome| o.delta.allocs as f64 / o.delta.requests.max(1) as f64;
    let (p, n) = (&pooled.delta, &naive_run.delta);
    // Worker-thread time per request (each worker runs requests back to back), and the same
    // net of the no-context baseline: what the contexts of one request cost.
    let ns_per_req = |o: &Outcome| o.secs * threads as f64 * 1e9 / o.delta.requests.max(1) as f64;
    let base = ns_per_req(&none_run);
    let net = |o: &Outcome| ns_per_req(o) - base;
    println!(
        "cpu: {} ({} logical CPUs)",
        cpu_model(),
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("                          ctxpool        naive");
    println!(
        "  contexts/s          {:>9.2} M  {:>9.2} M   ctxpool {:.2}x",
        per_sec(&pooled, p.contexts),
        per_sec(&naive_run, n.contexts),
        per_sec(&pooled, p.contexts) / per_sec(&naive_run, n.contexts)
    );
    println!(
        "  requests/s          {:>9.2} M  {:>9.2} M   (no contexts: {:.2} M)",
        per_sec(&pooled, p.requests),
        per_sec(&naive_run, n.requests),
        per_sec(&none_run, none_run.delta.requests)
    );
    println!(
        "  ns/request          {:>11.0}  {:>11.0}   (no contexts: {:.0} ns)",
        ns_per_req(&pooled),
        ns_per_req(&naive_run),
        base
    );
    let speedup = net(&naive_run) / net(&pooled);
    let verdict = if speedup >= 1.0 {
        format!("ctxpool {speedup:.2}x faster")
    } else {
        format!("ctxpool {:.2}x slower", 1.0 / speedup)
    };
    println!(
        "  contexts, net ns/request {:>6.0}  {:>11.0}   {verdict}",
        net(&pooled),
        net(&naive_run),
    );
    println!(
        "  allocations/request {:>11.4}  {:>11.4}   ({} vs {} allocations in total)",
        per_req(&pooled),
        per_req(&naive_run),
        p.allocs,
        n.allocs
    );
    println!(
        "  contexts/request    {:>11.2}  {:>11.2}",
        p.contexts as f64 / p.requests.max(1) as f64,
        n.contexts as f64 / n.requests.max(1) as f64,
    );
    println!(
        "  hung up (aborted)   {:>10.1}%  {:>10.1}%   handed to the reaper: {} vs {}",
        100.0 * p.aborted as f64 / p.requests.max(1) as f64,
        100.0 * n.aborted as f64 / n.requests.max(1) as f64,
        p.handed_off,
        n.handed_off
    );
    println!(
        "pool: created {} released {}, in use {} -> {}, high water {}, exhausted {}, \
         reserved {} KiB",
        after.created,
        after.released,
        before.in_use,
        after.in_use,
        after.high_water,
        after.exhausted,
        after.reserved_bytes / 1024
    );

    let t0 = pool.timer_stats();
    // Within the pool's capacity (a configured pool may be small).
    let n = 100_000.min(pool.capacity() as usize / 2);
    let took = deadline_phase(n);
    let t = pool.timer_stats();
    let show = |d: Option<Duration>| {
        d.map_or("-".to_string(), |d| {
            format!("{:.2} ms", d.as_secs_f64() * 1e3)
        })
    };
    println!(
        "deadlines: {n} timers due within 10 ms all observed expired after {:.1} ms; \
         fired by the driver {}, fire lateness p50 {} p99 {} (resolution {} ms); \
         request timers armed during the load {}",
        took.as_secs_f64() * 1e3,
        t.fired - t0.fired,
        show(t.lateness_p50),
        show(t.lateness_p99),
        pool.config().timer_resolution.as_millis(),
        t0.armed,
    );
    // The driver may still hold a reference to a context it just fired (it releases it right
    // after the cancel): let the last releases land before checking conservation.
    let settle = Instant::now() + Duration::from_secs(2);
    while pool.stats().in_use != before.in_use && Instant::now() < settle {
        thread::sleep(Duration::from_millis(1));
    }
    let after = pool.stats();

    let mut problems = Vec::new();
    if after.created - before.created != after.released - before.released {
        problems.push(format!(
            "pool created {} contexts but released {}",
            after.created - before.created,
            after.released - before.released
        ));
    }
    if after.in_use != before.in_use {
        problems.push(format!(
            "pool in use went from {} to {}",
            before.in_use, after.in_use
        ));
    }
    if naive_leftovers != (1, 0) {
        problems.push(format!(
            "naive server root still has {} references and {} linked children",
            naive_leftovers.0, naive_leftovers.1
        ));
    }
    let m = pool.metrics();
    let (created, released): (u64, u64) = m
        .ops
        .iter()
        .fold((0, 0), |(c, r), (_, o)| (c + o.created, r + o.released));
    println!(
        "metrics: {} operations, {created} contexts created and {released} released by op, {} active",
        m.ops.len(),
        created - released
    );
    if pool.config().metrics.enabled && created != released {
        problems.push(format!(
            "metrics count {created} created but {released} released"
        ));
    }
    if let Some(path) = &metrics_out {
        match std::fs::write(path, m.to_prometheus()) {
            Ok(()) => println!("metrics: Prometheus exposition written to {path}"),
            Err(e) => problems.push(format!("cannot write {path}: {e}")),
        }
    }
    if problems.is_empty() {
        println!(
            "conservation: OK (every pooled context created was released; \
             naive root back to 1 reference, 0 children)"
        );
    } else {
        for p in &problems {
            eprintln!("conservation FAILED: {p}");
        }
        exit(1);
    }
}
