//! The context pool: a concurrent slab of [`Node`]s with generational handles.
//!
//! ```text
//!            Pool ──► PoolInner
//!                      ├── pages    [p0: 1024 nodes][p1: 2048][p2: 4096] ... (page.rs)
//!                      ├── fresh    next never-used index (bump, up to capacity)
//!                      ├── spare    next never-used spare index (up to the spent count, P5)
//!                      ├── shards   [tid 0][tid 1] ... one per thread id    (shard.rs)
//!                      │              local free list (owner only), remote free list (CAS)
//!                      └── spill    overflow free list under a mutex (cold)
//! ```
//!
//! Acquiring a slot tries, in order: the thread's local list, its remote list (taken whole),
//! the spill list, a never-used slot (growing by a page when needed), every other shard's
//! remote list, and finally every other shard's local list (the slots other threads keep
//! cached, taken whole through a handshake, shard S9..S11). Only when all are empty is the
//! pool exhausted: the `try_*`
//! constructors return [`PoolExhausted`](crate::PoolExhausted) and the plain ones return a
//! context born cancelled with [`Cause::PoolExhausted`](crate::Cause::PoolExhausted); both are
//! counted in [`PoolStats::exhausted`]. A thread keeps at most `thread_cache` free slots on its
//! local list; beyond that it spills half to the shared list, so the slots a thread caches are
//! bounded, and a thread that finds nothing else takes them back (P6): a context is refused
//! only when the pool's slots are really in use.
//!
//! Invariants (the slot word's are L1..L3 in `slot.rs`, the shards' S1..S4 in `shard.rs`):
//!
//! - **P1** a node's owner shard is the shard whose local or remote list it returns to; it is
//!   set when the node is acquired, while the acquirer owns it.
//! - **P2** a thread that removed a slot from a free list (or bumped `fresh` to it) owns it
//!   exclusively until it publishes a handle via `Life::init`; a thread whose `drop_ref`
//!   reached zero owns it until it puts it on a free list.
//! - **P3** page memory is never freed or moved while the pool lives, so any index ever handed
//!   out stays addressable.
//! - **P4** a built pool is freed when its reference count reaches zero. Every `Pool` handle,
//!   every root node of it (a node whose parent is the pool's background) and every weak id
//!   holds one reference; every other node keeps its parent, hence transitively a root, alive.
//!   So at zero no node is live and no handle can reach the pages. The global pool is never
//!   freed, and keeps no count (its roots take no reference).
//! - **P5** a slot whose last generation ends is *spent* (slot L2): its owner counts it in
//!   `spent` instead of freeing it, and nothing puts it on a free list again. Each spent slot
//!   allows one *spare*: a never-used slot of the spare region (`page::SPARE`), handed out
//!   only while `spare < spent`. So the slots in circulation (in use or free) never exceed
//!   `capacity`, and a spent slot does not shrink the pool, until 2^30 slots have been spent
//!   (2^62 lives; after that a spent slot is not replaced). Spare slots get spent and replaced
//!   the same way.
//! - **P6** no free slot is out of reach: a thread's local list holds at most `thread_cache`
//!   slots after each operation of its owner (`free` spills half beyond it, `adopt` cuts a
//!   taken chain to it), and the last source of `acquire` takes other threads' local lists,
//!   idle, busy or exited. So in a quiescent pool a context is refused only when `capacity`
//!   are in use; with operations in flight, a slot being freed or a list being operated on at
//!   that instant may be missed.

pub(crate) mod page;
pub(crate) mod shard;
pub(crate) mod slot;
pub(crate) mod tid;

use core::fmt;
use core::ptr::NonNull;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::config::{Config, ConfigError};
use crate::metrics::ops::ContextMetrics;
use crate::metrics::ShardedCounter;
use crate::sync::fence;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering, Swap};
use crate::time::clock::Clock;
use crate::time::driver::Timers;
use crate::time::ring::{Armed, Push, Ring};
use crate::time::{DriverMode, ManualClock, TimerStats};
use crate::tree::node::{Node, NIL};
use crate::tree::state::{lessee, mark_lessee, MULTI, ZOMBIE};
use page::{Pages, MAX_CAPACITY, SPARE};
use shard::{FreeList, Lease, Shard, Steal, LEASES};

/// Whether a thief found a shard with cached slots held by another thief.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contended {
    Yes,
    No,
}
use slot::Retired;

/// Owner-shard value of a node acquired by a thread without an id (tid T2).
const NO_SHARD: u16 = 0x0FFF;
/// Bits of a node's shard field naming its owner shard (P1).
pub(crate) const SHARD_MASK: u16 = 0x0FFF;
/// Set in a node's shard field when the node is counted in its creator shard's lease for its
/// parent (shard S5..S7) rather than holding a reference on the parent.
pub(crate) const LEASED: u16 = 0x1000;

/// The calling thread's id and its shard in one pool: looked up once per operation.
#[derive(Clone, Copy)]
pub(crate) struct Local<'a> {
    pub(crate) tid: usize,
    pub(crate) shard: &'a Shard,
}

pub(crate) struct PoolInner {
    pages: Pages,
    capacity: u32,
    thread_cache: u32,
    /// Next never-used index.
    fresh: AtomicU32,
    /// Slots spent (P5), each allowing one spare.
    spent: AtomicU32,
    /// Heavy fences run (`sync::barrier::heavy`): zombie checks, unpins, steals.
    heavy_fences: AtomicU64,
    /// Whether a driver turns this pool on its own (a thread or a tokio task), so that a
    /// zombie's check can be left to its next turn (tree I10, time D7).
    defer_zombies: core::sync::atomic::AtomicBool,
    /// Whether a thread leases the parents it made itself too (testing: the loom models of
    /// the lease protocol); by default their children hold references (`lease`).
    lease_own: bool,
    /// Deferred zombie checks running now (`check_zombies`): a zombie they claim is torn down
    /// on the driver's thread, so until this is back at zero a slot may be about to be freed.
    zombie_checks: AtomicUsize,
    /// Next never-used spare index, minus `SPARE` (P5).
    spare: AtomicU32,
    shards: Box<[AtomicPtr<CachePadded<Shard>>]>,
    /// One past the highest shard index ever allocated (bounds lease scans).
    shards_hwm: AtomicUsize,
    /// Cold, shared free list (S3).
    spill: Mutex<FreeList>,
    /// Length of `spill`, readable without the lock (a hint).
    spill_len: AtomicU32,
    exhausted: AtomicU64,
    /// Counters of threads without an id (tid T2).
    overflow_acquired: AtomicU64,
    overflow_released: AtomicU64,
    /// References to a built pool (P4); unused for the global pool.
    refs: AtomicUsize,
    is_global: bool,
    /// Clock, spill list, wheel and driver (module `time`).
    pub(crate) timers: Timers,
    /// Leak reports and sampled backtraces (module `leak`).
    pub(crate) leaks: crate::leak::Leaks,
    /// Capture a backtrace for every n-th context a thread makes (0: never); from
    /// `leak.backtrace_sample_rate`.
    pub(crate) backtrace_every: AtomicU32,
    /// Per-operation context metrics (module `metrics::ops`).
    pub(crate) metrics: ContextMetrics,
    /// Weak ids that found their context released (`WeakContext::upgrade`).
    pub(crate) stale_handles: ShardedCounter,
    /// The whole configuration, replaced atomically by `update_config`.
    config: Swap<Config>,
    /// Serialises `update_config` (check against the current, then store).
    config_update: Mutex<()>,
    /// `update_config` results: accepted, rejected.
    pub(crate) config_updates: [AtomicU64; 2],
    /// The hot-path limits of the configuration in one word, so that a reader sees one whole
    /// configuration: `default_timeout` in ms (high half) and `max_timeout` in ms (low half).
    limits: AtomicU64,
    /// `propagation.outbound_deadline_margin` in nanoseconds (at most a minute, validated),
    /// read on every outgoing call (`http::Propagator::inject`) without the arc-swap guard.
    outbound_margin_ns: AtomicU64,
    /// What the metrics upkeep publishes besides the pool (held weakly: dropped publishers
    /// are pruned at the next registration or publication).
    #[cfg(feature = "metrics")]
    publishers: Mutex<Vec<std::sync::Weak<dyn crate::metrics::Publish>>>,
}

/// Every how many contexts a thread captures a backtrace (0: never).
fn backtrace_every(c: &Config) -> u32 {
    let rate = c.leak.backtrace_sample_rate;
    if !c.leak.enabled || rate.is_nan() || rate <= 0.0 {
        0
    } else {
        (1.0 / rate.min(1.0)).ceil().min(f64::from(u32::MAX)) as u32
    }
}

/// Whole milliseconds of a validated duration (at most 7 days, so it fits).
fn millis(d: Duration) -> u32 {
    u32::try_from(crate::time::clock::ceil_ms(d)).unwrap_or(u32::MAX)
}

/// Nanoseconds of a duration, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Packs the hot-path limits (see `PoolInner::limits`).
pub(crate) fn pack_limits(default_ms: u32, max_ms: u32) -> u64 {
    (u64::from(default_ms) << 32) | u64::from(max_ms)
}

impl PoolInner {
    fn new(b: &PoolBuilder, is_global: bool) -> Self {
        let (capacity, thread_cache) = (b.capacity, b.thread_cache_value());
        crate::sync::barrier::init();
        let clock = match &b.manual_clock {
            Some(c) => Clock::manual(c),
            // K3: without a driver thread nothing keeps the tick word fresh, so every read
            // takes the precise time.
            None => Clock::real(b.driver == DriverMode::Thread && cfg!(not(loom))),
        };
        PoolInner {
            pages: Pages::new(capacity, b.first_gen),
            capacity,
            thread_cache,
            fresh: AtomicU32::new(0),
            spent: AtomicU32::new(0),
            heavy_fences: AtomicU64::new(0),
            defer_zombies: core::sync::atomic::AtomicBool::new(b.defer_zombies),
            lease_own: b.lease_own,
            zombie_checks: AtomicUsize::new(0),
            spare: AtomicU32::new(0),
            shards: (0..tid::MAX_THREADS)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
            shards_hwm: AtomicUsize::new(0),
            spill: Mutex::new(FreeList::EMPTY),
            spill_len: AtomicU32::new(0),
            exhausted: AtomicU64::new(0),
            overflow_acquired: AtomicU64::new(0),
            overflow_released: AtomicU64::new(0),
            refs: AtomicUsize::new(1),
            is_global,
            timers: Timers::new(clock, b.resolution_ms),
            metrics: ContextMetrics::new(
                b.effective_config().metrics.enabled,
                &b.lifetime_buckets,
                &b.overrun_buckets,
            ),
            stale_handles: ShardedCounter::new(),
            leaks: crate::leak::Leaks::new(),
            backtrace_every: AtomicU32::new(backtrace_every(&b.effective_config())),
            config: Swap::new(std::sync::Arc::new(b.effective_config())),
            config_update: Mutex::new(()),
            config_updates: [AtomicU64::new(0), AtomicU64::new(0)],
            limits: AtomicU64::new(pack_limits(b.default_timeout_ms, b.max_timeout_ms)),
            outbound_margin_ns: AtomicU64::new(nanos(
                b.effective_config().propagation.outbound_deadline_margin,
            )),
            #[cfg(feature = "metrics")]
            publishers: Mutex::new(Vec::new()),
        }
    }

    /// The rare side of an asymmetric fence pair (`sync::barrier`), counted.
    pub(crate) fn heavy_fence(&self) {
        self.heavy_fences.fetch_add(1, Ordering::Relaxed);
        crate::sync::barrier::heavy();
    }

    /// Leaves the check of zombie `(idx, gen)` (tree I10: the heavy fence, then the lease
    /// counts) to the driver's next turn, which runs one heavy fence for every zombie made
    /// since the last (time D7). `false` when it cannot: no driver turns this pool on its own,
    /// or the calling thread has no shard; the caller then checks now.
    #[inline]
    pub(crate) fn defer_zombie(&self, me: Option<Local<'_>>, idx: u32, gen: u32) -> bool {
        let Some(l) = me else {
            return false;
        };
        if !self.defer_zombies.load(Ordering::Relaxed) {
            return false;
        }
        let a = Armed {
            idx,
            gen,
            deadline: crate::time::ring::ZOMBIE_CHECK,
        };
        // SAFETY: `me` is this thread's shard (S1): we are its ring's producer (R1).
        let ring = unsafe { l.shard.ring() };
        // SAFETY: as above.
        match unsafe { ring.push(a) } {
            Push::Ok => self.timers.wake_for_zombie(),
            Push::Wake => self.drain_own_ring(ring),
            Push::Full => self.timers.spill(self, a),
        }
        true
    }

    /// Checks zombies whose check was deferred (tree I10, time D7): one heavy fence for all of
    /// them, then each whose lease counts are zero is claimed and torn down. An entry whose
    /// zombie was already torn down (by its last child) fails the claim on its generation
    /// (slot L4). The caller holds a reference on the pool (or it is the global one) and no
    /// lock: a teardown runs user code (values' `Drop`).
    pub(crate) fn check_zombies(&self, zombies: &mut Vec<(u32, u32)>) {
        if zombies.is_empty() {
            return;
        }
        // Counted before any claim, uncounted after the last teardown (also on a panic from
        // a value's `Drop`): `testing_quiesce` waits for it.
        struct Running<'a>(&'a AtomicUsize);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.zombie_checks.fetch_add(1, Ordering::SeqCst);
        let _running = Running(&self.zombie_checks);
        self.heavy_fence();
        for (idx, gen) in zombies.drain(..) {
            // SAFETY: `idx` came from a handle of this pool (P3); only atomics are read
            // before the claim, which fails on a stale generation (L4).
            let node = unsafe { self.node(idx) };
            let s = node.state.load(Ordering::Acquire);
            if self.lease_sum(idx, gen, s) == 0 && node.life.try_claim(gen) {
                // The caller holds a pool reference: this cannot free the pool (P4).
                drop(crate::tree::tear_down(self, idx));
            }
        }
    }

    /// Every slot index ever handed out: the main region's `0..fresh`, then the spare
    /// region's (P5).
    pub(crate) fn handed_out(&self) -> impl Iterator<Item = u32> {
        let main = self.fresh.load(Ordering::Acquire).min(self.capacity);
        let spare = self.spare.load(Ordering::Acquire).min(MAX_CAPACITY);
        (0..main).chain(SPARE..SPARE + spare)
    }

    /// The node at an index of `handed_out()`, if its page is published yet.
    pub(crate) fn try_node(&self, idx: u32) -> Option<&Node> {
        self.pages.try_get(idx)
    }

    /// `(default_timeout, max_timeout)` in milliseconds, from one load (one whole config).
    #[inline]
    pub(crate) fn limits(&self) -> (u32, u32) {
        let w = self.limits.load(Ordering::Acquire);
        ((w >> 32) as u32, w as u32)
    }

    /// `propagation.outbound_deadline_margin` in force (one load).
    // Used by `http` (and the tests).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    #[inline]
    pub(crate) fn outbound_margin(&self) -> Duration {
        Duration::from_nanos(self.outbound_margin_ns.load(Ordering::Relaxed))
    }

    /// The current configuration.
    pub(crate) fn config(&self) -> std::sync::Arc<Config> {
        self.config.load()
    }

    /// Runs `f` on the configuration in force, without cloning its `Arc`.
    pub(crate) fn with_config<R>(&self, f: impl FnOnce(&Config) -> R) -> R {
        self.config.with(f)
    }

    /// Validates `new` against the running configuration and, if it passes, makes it current:
    /// first the whole `Config` (readers of `config()` see the old or the new one), then the
    /// packed hot-path word (readers of `limits()` see the old or the new pair, never a mix).
    pub(crate) fn update_config(&self, new: Config) -> Result<(), ConfigError> {
        let _serial = self.config_update.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.config.load();
        if let Err(e) = new.check_update(&current) {
            self.config_updates[1].fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let limits = pack_limits(millis(new.default_timeout), millis(new.max_timeout));
        let metrics_on = new.metrics.enabled;
        let margin_ns = nanos(new.propagation.outbound_deadline_margin);
        self.backtrace_every
            .store(backtrace_every(&new), Ordering::Relaxed);
        self.config.store(std::sync::Arc::new(new));
        self.limits.store(limits, Ordering::Release);
        self.outbound_margin_ns.store(margin_ns, Ordering::Relaxed);
        self.metrics.enabled.store(metrics_on, Ordering::Relaxed);
        self.config_updates[0].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Calls `f` with every arm ring (the driver, under its lock).
    pub(crate) fn for_each_ring(&self, mut f: impl FnMut(&Ring)) {
        for t in 0..self.shards_hwm.load(Ordering::Acquire) {
            let ptr = self.shards[t].load(Ordering::Acquire);
            if ptr.is_null() {
                continue;
            }
            // SAFETY: published shard, freed only in `drop`.
            let ring = unsafe { &*ptr }.ring.load(Ordering::Acquire);
            if !ring.is_null() {
                // SAFETY: published by the shard's owner (`Shard::ring`), freed with the shard.
                f(unsafe { &*ring });
            }
        }
    }

    /// Hands the timer of incarnation `(idx, gen)`, due at tick `deadline`, to the
    /// driver: plain stores into this thread's arm ring (time R1..R3). `deadline` is the full
    /// tick.
    #[inline(always)]
    pub(crate) fn arm(&self, me: Option<Local<'_>>, idx: u32, gen: u32, deadline: u64) {
        let a = Armed { idx, gen, deadline };
        match me {
            Some(l) => {
                Shard::bump(&l.shard.armed);
                // SAFETY: `me` is this thread's shard (S1): we are its ring's producer (R1).
                // SAFETY: as above.
                let ring = unsafe { l.shard.ring() };
                // SAFETY: as above.
                match unsafe { ring.push(a) } {
                    Push::Ok => {
                        // Time D5: store (the push), fence, load `sleeping`.
                        crate::sync::barrier::light();
                        if self.timers.clock.driver_sleeping() {
                            self.timers.clock.wake_sleeper();
                        }
                    }
                    Push::Wake => self.drain_own_ring(ring),
                    Push::Full => self.timers.spill(self, a),
                }
            }
            None => self.timers.spill(self, a),
        }
    }

    /// Counts a deadline cut to the maximum timeout.
    #[inline]
    pub(crate) fn count_clamp(&self, me: Option<Local<'_>>) {
        if let Some(l) = me {
            Shard::bump(&l.shard.clamped);
        } else {
            self.timers.counters.clamped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Registers the periodic upkeep with the driver: metrics publication every
    /// `metrics.publish_interval` and leak scans every `leak.interval`, read from the
    /// configuration in force at each turn (so runtime updates apply).
    fn start_upkeep(&self) {
        let mut last_publish = self.timers.clock.now64();
        let mut last_scan = last_publish;
        let every = std::time::Duration::from_millis(u64::from(self.timers.resolution_ms));
        self.timers.every(
            every,
            Box::new(move |pool: &PoolInner| {
                let cfg = pool.config();
                let now = pool.timers.clock.now64();
                let due = |last: u64, d: std::time::Duration| {
                    now.saturating_sub(last) >= crate::time::clock::ceil_ms(d)
                };
                if cfg.leak.enabled && due(last_scan, cfg.leak.interval) {
                    last_scan = now;
                    pool.scan_leaks(cfg.leak.threshold, cfg.leak.alert_threshold);
                }
                if cfg.metrics.enabled && due(last_publish, cfg.metrics.publish_interval) {
                    last_publish = now;
                    #[cfg(feature = "metrics")]
                    pool.publish_metrics();
                }
                // Next run: when the first enabled job is due (an idle driver sleeps until then,
                // time D5; it re-reads the configuration at least every `MAX_SLEEP`).
                let left = |last: u64, d: std::time::Duration| {
                    (last + crate::time::clock::ceil_ms(d)).saturating_sub(now)
                };
                let mut next = u64::MAX;
                if cfg.leak.enabled {
                    next = next.min(left(last_scan, cfg.leak.interval));
                }
                if cfg.metrics.enabled {
                    next = next.min(left(last_publish, cfg.metrics.publish_interval));
                }
                let most = crate::time::clock::ceil_ms(crate::time::driver::MAX_SLEEP);
                Some(next.clamp(1, most))
            }),
        );
    }

    /// Publishes the pool's families and every live registered publisher's through the
    /// `metrics` facade.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_metrics(&self) {
        self.metrics_snapshot().publish();
        // Upgraded under the lock, published after it (a recorder's code runs unlocked).
        let live: Vec<std::sync::Arc<dyn crate::metrics::Publish>> = {
            let mut list = self.publishers.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        for p in live {
            p.publish();
        }
    }

    /// Registers `p` for publication with the pool's metrics.
    #[cfg(all(feature = "http", feature = "metrics"))]
    pub(crate) fn add_publisher(&self, p: std::sync::Weak<dyn crate::metrics::Publish>) {
        let mut list = self.publishers.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(p);
    }

    pub(crate) fn metrics_snapshot(&self) -> crate::metrics::MetricsSnapshot {
        let shards: Vec<&Shard> = self
            .shards
            .iter()
            .filter_map(|p| {
                let p = p.load(Ordering::Acquire);
                // SAFETY: published shards, freed only with the pool.
                (!p.is_null()).then(|| unsafe { &**p })
            })
            .collect();
        let ops = self
            .metrics
            .snapshot(&shards)
            .into_iter()
            .map(|(id, c)| (crate::Op::by_id(id).map_or("none", crate::Op::name), c))
            .collect();
        crate::metrics::MetricsSnapshot {
            ops: crate::metrics::export::with_none(ops, self.metrics.empty()),
            pool: self.stats(),
            timers: self.timer_stats(),
            lateness: self
                .timers
                .counters
                .lateness_histogram(&crate::metrics::LATENESS_BUCKETS),
            stale_handles: self.stale_handles.get(),
            leak_suspects: self.leaks.last().map_or_else(Vec::new, |r| r.by_op()),
            config_updates: [
                self.config_updates[0].load(Ordering::Relaxed),
                self.config_updates[1].load(Ordering::Relaxed),
            ],
        }
    }

    pub(crate) fn timer_stats(&self) -> TimerStats {
        let (mut armed, mut clamped) = (0, self.timers.counters.clamped.load(Ordering::Relaxed));
        for slot in self.shards.iter() {
            let ptr = slot.load(Ordering::Acquire);
            if !ptr.is_null() {
                // SAFETY: published shard, freed only in `drop`.
                let shard = unsafe { &*ptr };
                armed += shard.armed.load(Ordering::Relaxed);
                clamped += shard.clamped.load(Ordering::Relaxed);
            }
        }
        let c = &self.timers.counters;
        TimerStats {
            armed,
            clamped,
            fired: c.fired.load(Ordering::Relaxed),
            stale: c.stale.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
            wheel_bytes: c.wheel_bytes.load(Ordering::Relaxed),
            spilled: c.spilled.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            turns: c.turns.load(Ordering::Relaxed),
            lateness_p50: c.lateness_quantile(0.5),
            lateness_p99: c.lateness_quantile(0.99),
        }
    }

    /// The node at `idx`.
    ///
    /// # Safety
    /// `idx` came from this pool's `acquire` (P3).
    #[inline]
    pub(crate) unsafe fn node(&self, idx: u32) -> &Node {
        // SAFETY: forwarded contract (P3).
        unsafe { self.pages.get(idx) }
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Whether this is the process-wide pool (never freed; its roots hold no reference, P4).
    #[inline]
    pub(crate) fn is_global(&self) -> bool {
        self.is_global
    }

    /// The calling thread's id and shard, or `None` for a thread without an id (tid T2).
    #[inline]
    pub(crate) fn local(&self) -> Option<Local<'_>> {
        let tid = tid::current()?;
        Some(Local {
            tid,
            shard: self.shard(tid),
        })
    }

    /// This thread's shard, allocated on first use.
    #[inline]
    fn shard(&self, tid: usize) -> &Shard {
        let ptr = self.shards[tid].load(Ordering::Acquire);
        if !ptr.is_null() {
            // SAFETY: shard pointers are published once (below) and freed only in `drop`.
            return unsafe { &*ptr };
        }
        self.shard_slow(tid)
    }

    #[cold]
    fn shard_slow(&self, tid: usize) -> &Shard {
        let fresh = Box::into_raw(Box::new(CachePadded::new(Shard::new())));
        self.shards_hwm.fetch_max(tid + 1, Ordering::AcqRel);
        match self.shards[tid].compare_exchange(
            core::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: just published; freed only in `drop`.
            Ok(_) => unsafe { &*fresh },
            Err(existing) => {
                // SAFETY: `fresh` was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: published by the winner; freed only in `drop`.
                unsafe { &*existing }
            }
        }
    }

    /// Takes a free slot for the calling thread (`me` is `self.local()`); the caller owns it
    /// (P2) until it publishes a handle. Returns its index and node.
    #[inline]
    pub(crate) fn acquire(&self, me: Option<Local<'_>>) -> Option<(u32, &Node)> {
        if let Some(l) = me {
            // SAFETY: we hold id `l.tid` (S1) and are in no gate.
            let popped = unsafe { l.shard.with_local(|list| self.pop(list)) };
            if popped.is_some() {
                Shard::bump(&l.shard.acquired);
                return popped;
            }
        }
        self.acquire_counted(me)
    }

    /// `acquire` past the thread's local list: the slow sources, and the counts.
    #[cold]
    fn acquire_counted(&self, me: Option<Local<'_>>) -> Option<(u32, &Node)> {
        let idx = match me {
            Some(l) => {
                let idx = self.acquire_slow(Some((l.tid, l.shard)));
                if idx.is_some() {
                    Shard::bump(&l.shard.acquired);
                }
                idx
            }
            None => {
                let idx = self.acquire_slow(None);
                if idx.is_some() {
                    self.overflow_acquired.fetch_add(1, Ordering::Relaxed);
                }
                idx
            }
        };
        match idx {
            // SAFETY: `idx` was just acquired, so it was handed out by `fresh` (P3).
            Some(idx) => Some((idx, unsafe { self.node(idx) })),
            None => {
                self.exhausted.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Pops the head of a list whose nodes the caller owns; returns it with its node.
    #[inline]
    fn pop(&self, list: &mut FreeList) -> Option<(u32, &Node)> {
        if list.head == NIL {
            return None;
        }
        let idx = list.head;
        // SAFETY: `idx` is on a free list, so it was handed out by `fresh` (P3).
        let node = unsafe { self.node(idx) };
        list.head = node.next.load(Ordering::Relaxed);
        list.len -= 1;
        Some((idx, node))
    }

    #[cold]
    fn acquire_slow(&self, me: Option<(usize, &Shard)>) -> Option<u32> {
        let shard_id = me.map_or(NO_SHARD, |(t, _)| t as u16);
        // 1. Slots other threads freed back to us: already ours (P1), counted (S2), so the
        // chain is not walked.
        if let Some((_, shard)) = me {
            let (head, len) = shard.take_remote();
            if head != NIL {
                return Some(self.adopt_own(head, len, shard));
            }
        }
        // 2.-5. The shared sources; once more if another thief held a shard with cached slots
        // (it keeps `thread_cache` of them and spills the rest, P6).
        match self.take_shared(shard_id, me) {
            Ok(idx) => Some(idx),
            Err(Contended::Yes) => self.take_shared(shard_id, me).ok(),
            Err(Contended::No) => None,
        }
    }

    /// Steps 2 to 5 of `acquire_slow`.
    fn take_shared(&self, shard_id: u16, me: Option<(usize, &Shard)>) -> Result<u32, Contended> {
        // 2. The spill list.
        if self.spill_len.load(Ordering::Relaxed) > 0 {
            let mut spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
            if spill.head != NIL {
                let take = (self.thread_cache / 2).max(1).min(spill.len);
                let head = spill.head;
                let mut tail = head;
                for _ in 1..take {
                    // SAFETY: every index on the spill list was handed out by `fresh` (P3).
                    tail = unsafe { self.node(tail) }.next.load(Ordering::Relaxed);
                }
                // SAFETY: as above.
                let tail_node = unsafe { self.node(tail) };
                spill.head = tail_node.next.load(Ordering::Relaxed);
                spill.len -= take;
                self.spill_len.store(spill.len, Ordering::Relaxed);
                tail_node.next.store(NIL, Ordering::Relaxed);
                drop(spill);
                return Ok(self.adopt(head, shard_id, me));
            }
        }
        // 3. A never-used slot, or a spare one replacing a spent slot (P5).
        if let Some(idx) = self.take_fresh() {
            self.pages.ensure(idx);
            // SAFETY: `idx` came from `fresh` or `spare` and its page exists (P3); nobody else
            // has it (P2).
            unsafe { self.node(idx).set_shard(shard_id) };
            return Ok(idx);
        }
        let shards = &self.shards[..self.shards_hwm.load(Ordering::Acquire)];
        // 4. Steal whatever other threads freed to their owners.
        for slot in shards {
            let ptr = slot.load(Ordering::Acquire);
            if ptr.is_null() {
                continue;
            }
            // SAFETY: published shard, freed only in `drop`.
            let other = unsafe { &*ptr };
            let (head, _) = other.take_remote();
            if head != NIL {
                return Ok(self.adopt(head, shard_id, me));
            }
        }
        // 5. Take the slots other threads keep cached, idle or exited ones included (S9..S11).
        let mut contended = Contended::No;
        for (t, slot) in shards.iter().enumerate() {
            if me.is_some_and(|(mine, _)| mine == t) {
                continue;
            }
            let ptr = slot.load(Ordering::Acquire);
            if ptr.is_null() {
                continue;
            }
            // SAFETY: published shard, freed only in `drop`.
            let other = unsafe { &*ptr };
            match other.steal_local(&self.heavy_fences) {
                Steal::Took(list) => return Ok(self.adopt(list.head, shard_id, me)),
                Steal::Empty => {}
                Steal::Contended => contended = Contended::Yes,
            }
        }
        Err(contended)
    }

    /// Bumps `fresh` below the capacity, or else `spare` below the spent count (P5); returns the
    /// never-used index taken.
    fn take_fresh(&self) -> Option<u32> {
        let bump = |counter: &AtomicU32, limit: u32| {
            let mut cur = counter.load(Ordering::Relaxed);
            while cur < limit {
                match counter.compare_exchange_weak(
                    cur,
                    cur + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(cur),
                    Err(actual) => cur = actual,
                }
            }
            None
        };
        bump(&self.fresh, self.capacity).or_else(|| {
            let allowed = self.spent.load(Ordering::Relaxed).min(MAX_CAPACITY);
            bump(&self.spare, allowed).map(|k| SPARE + k)
        })
    }

    /// Takes ownership of a detached chain of free slots: returns its head and keeps the rest
    /// on this thread's local list (or the spill list for a thread without an id).
    fn adopt(&self, head: u32, shard_id: u16, me: Option<(usize, &Shard)>) -> u32 {
        let mut len = 0u32;
        let mut cur = head;
        while cur != NIL {
            // SAFETY: the chain was detached from a free list, so we own every slot on it (S3,
            // P2) and each index came from `fresh` (P3).
            let node = unsafe { self.node(cur) };
            // SAFETY: we own the slot (P2).
            unsafe { node.set_shard(shard_id) };
            len += 1;
            cur = node.next.load(Ordering::Relaxed);
        }
        self.keep_rest(head, len, me.map(|(_, shard)| shard));
        head
    }

    /// Takes ownership of this thread's own remote chain of `len` slots, whose owner shard is
    /// already this one (P1): returns its head, keeps the rest (at most `thread_cache`, P6).
    fn adopt_own(&self, head: u32, len: u32, shard: &Shard) -> u32 {
        self.keep_rest(head, len, Some(shard));
        head
    }

    /// Of an owned chain of `len` slots from `head`, keeps all but the head on `shard`'s local
    /// list, at most `thread_cache` of them (P6), and spills the rest (all of it without a
    /// shard).
    fn keep_rest(&self, head: u32, len: u32, shard: Option<&Shard>) {
        // SAFETY: the caller owns the chain (S3, P2); `head` came from `fresh` (P3).
        let rest = unsafe { self.node(head) }.next.load(Ordering::Relaxed);
        if rest == NIL {
            return;
        }
        let rest_list = FreeList {
            head: rest,
            len: len - 1,
        };
        let Some(shard) = shard else {
            return self.spill_chain(rest_list);
        };
        // SAFETY: the caller holds the shard's id (S1) and is in no gate (the slow path).
        let excess = unsafe {
            shard.with_local(|l| {
                self.append(l, rest_list);
                self.cut_to(l, self.thread_cache)
            })
        };
        if excess.head != NIL {
            self.spill_chain(excess);
        }
    }

    /// Appends an owned chain to a list (without a walk when the list is empty).
    fn append(&self, list: &mut FreeList, chain: FreeList) {
        if list.head == NIL {
            *list = chain;
            return;
        }
        let mut tail = chain.head;
        loop {
            // SAFETY: the chain's slots are owned by the caller (S3) and came from `fresh`.
            let next = unsafe { self.node(tail) }.next.load(Ordering::Relaxed);
            if next == NIL {
                break;
            }
            tail = next;
        }
        // SAFETY: as above.
        unsafe { self.node(tail) }
            .next
            .store(list.head, Ordering::Relaxed);
        list.head = chain.head;
        list.len += chain.len;
    }

    /// Puts an owned chain on the spill list.
    #[cold]
    fn spill_chain(&self, chain: FreeList) {
        let mut spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        self.append(&mut spill, chain);
        self.spill_len.store(spill.len, Ordering::Relaxed);
    }

    /// Retires the dying incarnation `gen` of slot `idx` (`node`), which the caller owns (P2):
    /// back to its owner shard's list, or counted as spent when that was its last generation
    /// (slot L2, P5). `me` is the caller's `self.local()`.
    #[inline]
    pub(crate) fn retire(&self, me: Option<Local<'_>>, idx: u32, node: &Node, gen: u32) {
        match node.life.retire(gen) {
            Retired::Reusable => self.free(me, idx, node),
            Retired::Spent => self.spend(me),
        }
    }

    /// Counts a spent slot (P5): released, never freed, and one more spare allowed.
    #[cold]
    #[inline(never)]
    fn spend(&self, me: Option<Local<'_>>) {
        match me {
            Some(l) => Shard::bump(&l.shard.released),
            None => {
                self.overflow_released.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.spent.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns retired slot `idx` (`node`, slot L2) to its owner shard's list (P1); `me` is the
    /// caller's `self.local()`.
    #[inline]
    fn free(&self, me: Option<Local<'_>>, idx: u32, node: &Node) {
        // SAFETY: the caller owns the dying slot (P2), so its owner shard cannot change.
        let owner = unsafe { node.shard_flags() }.0 & SHARD_MASK;
        match me {
            Some(l) => {
                Shard::bump(&l.shard.released);
                if l.tid as u16 == owner {
                    // SAFETY: we hold id `l.tid` (S1) and are in no gate.
                    let len = unsafe {
                        l.shard.with_local(|list| {
                            node.next.store(list.head, Ordering::Relaxed);
                            list.head = idx;
                            list.len += 1;
                            list.len
                        })
                    };
                    if len > self.thread_cache {
                        self.spill_half(l.shard);
                    }
                    return;
                }
            }
            None => {
                self.overflow_released.fetch_add(1, Ordering::Relaxed);
            }
        }
        if owner == NO_SHARD {
            node.next.store(NIL, Ordering::Relaxed);
            self.spill_chain(FreeList { head: idx, len: 1 });
            return;
        }
        // S2: push onto the owner's remote stack, counting it.
        let remote = &self.shard(owner as usize).far.remote;
        let mut cur = remote.load(Ordering::Relaxed);
        loop {
            node.next.store(cur as u32, Ordering::Relaxed);
            let new = ((cur >> 32) + 1) << 32 | u64::from(idx);
            match remote.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Moves half of a too-long local list to the spill list.
    #[cold]
    fn spill_half(&self, shard: &Shard) {
        // SAFETY: called by the holder of the shard's id (S1), in no gate.
        let chain = unsafe { shard.with_local(|l| self.cut_to(l, (l.len / 2).max(1))) };
        if chain.head != NIL {
            self.spill_chain(chain);
        }
    }

    /// Cuts an owned list to its first `keep` slots (at least one) and returns the rest.
    fn cut_to(&self, list: &mut FreeList, keep: u32) -> FreeList {
        let keep = keep.max(1);
        if list.len <= keep {
            return FreeList::EMPTY;
        }
        let mut tail = list.head;
        for _ in 1..keep {
            // SAFETY: the list's slots are owned by the caller (S3) and came from `fresh` (P3).
            tail = unsafe { self.node(tail) }.next.load(Ordering::Relaxed);
        }
        // SAFETY: as above.
        let node = unsafe { self.node(tail) };
        let rest = FreeList {
            head: node.next.load(Ordering::Relaxed),
            len: list.len - keep,
        };
        node.next.store(NIL, Ordering::Relaxed);
        list.len = keep;
        rest
    }

    /// Counts a new child of live parent `p` (`pnode`, generation `gen`) in the calling
    /// thread's lease for `p` (shard S5..S7) and marks the parent as leased by this shard.
    /// Returns `false` when the child takes a reference on the parent instead: a thread without
    /// an id, a parent this thread made below a root that no other thread leases (see below),
    /// or the entry busy with another parent. The caller holds a handle to `p` (S7).
    #[inline]
    pub(crate) fn lease(&self, me: Option<Local<'_>>, pnode: &Node, p: u32, gen: u32) -> bool {
        let Some(l) = me else {
            return false;
        };
        // A parent this thread made below a root, which no other thread leases, is the common
        // case below a request (its sub-operations and theirs): a reference is cheaper there.
        // This thread wrote the parent's line when it made it and usually makes and drops its
        // children too, while a lease entry would be re-keyed for each such parent (a check of
        // the remote count, the seqlock stores, `mark_lessee`'s CAS) and summed at its release,
        // for fewer than two children on average. A child released on another thread then
        // writes the parent's life word (the cost the S12 layout spares the shard's lines);
        // measured over the request mix, that is still cheaper. Leases pay off on long-lived
        // parents that many threads make or release children of: a root is leased whenever an
        // entry is free, and so is a parent once another thread leases it, so that new
        // children stop writing a shared parent's line (those holding references keep them).
        // Either way is I1-correct: the state read is a hint, and a reference is the fallback
        // whenever a lease is refused. A parent held by references of its children stays live
        // until they go (a weak id still upgrades to it; `WeakContext`).
        if !self.lease_own {
            // SAFETY: the caller holds a handle to the parent (S7): its owner shard and its
            // metadata are fixed while it lives (slot L1).
            let (owner, _) = unsafe { pnode.shard_flags() };
            if usize::from(owner & SHARD_MASK) == l.tid
                // SAFETY: as above.
                && unsafe { pnode.meta() }.parent != NIL
                && !crate::tree::state::is_leased(pnode.state.load(Ordering::Relaxed))
            {
                return false;
            }
        }
        let e = p as usize % LEASES;
        let lease = &l.shard.leases[e];
        let key = Lease::key(p, gen);
        if lease.key.load(Ordering::Relaxed) == key {
            // S5: owner-only counter.
            let n = lease.local.load(Ordering::Relaxed);
            lease.local.store(n.wrapping_add(1), Ordering::Relaxed);
            return true;
        }
        self.lease_slow(l.tid, lease, &l.shard.far.lease_remote[e], pnode, key)
    }

    #[cold]
    fn lease_slow(
        &self,
        t: usize,
        lease: &Lease,
        remote: &AtomicU32,
        parent: &Node,
        key: u64,
    ) -> bool {
        let live = lease
            .local
            .load(Ordering::Relaxed)
            .wrapping_sub(remote.load(Ordering::Acquire));
        if live != 0 {
            return false;
        }
        // S6: re-key with the seqlock pattern.
        // Release: a `lease_sum` that reads the cleared key (and so counts 0 for the old
        // parent) must happen after the decrements that brought the old count to zero, which
        // this thread acquired in the `live` check above.
        lease.key.store(0, Ordering::Release);
        fence(Ordering::Release);
        remote.store(0, Ordering::Relaxed);
        lease.local.store(1, Ordering::Relaxed);
        lease.key.store(key, Ordering::Release);
        // The caller holds a handle to the parent (S7), so it is live (slot L1).
        mark_lessee(parent, t);
        true
    }

    /// Uncounts a released child made by shard `owner` of parent `p` (`pnode`) (S5), then,
    /// after the light side of an asymmetric fence (`sync::barrier`), says whether the parent
    /// is a zombie waiting for its children (tree I10). `me` is the caller's `self.local()`.
    #[inline]
    pub(crate) fn unlease(&self, me: Option<Local<'_>>, owner: u16, p: u32, pnode: &Node) -> bool {
        let owner = owner as usize;
        match me {
            Some(l) if l.tid == owner => {
                let lease = &l.shard.leases[p as usize % LEASES];
                let n = lease.local.load(Ordering::Relaxed);
                lease.local.store(n.wrapping_sub(1), Ordering::Release);
            }
            _ => {
                // The shard exists: the child was counted in it.
                let remote = &self.shard(owner).far.lease_remote[p as usize % LEASES];
                remote.fetch_add(1, Ordering::Release);
            }
        }
        // The frequent side of the Dekker handshake with `may_tear_down` (tree I10).
        crate::sync::barrier::light();
        // The parent is live or a zombie, or was torn down just now (then its slot is still
        // addressable, P3, and the caller's claim fails on the generation, slot L4).
        pnode.state.load(Ordering::Acquire) & ZOMBIE != 0
    }

    /// Live children of `(p, gen)` counted in leases, given its state word `s` (tree I10). Only
    /// called once `p`'s reference count is zero, so the counts only go down (S7).
    pub(crate) fn lease_sum(&self, p: u32, gen: u32, s: u64) -> u32 {
        let key = Lease::key(p, gen);
        let entry = p as usize % LEASES;
        let count = |t: usize| -> u32 {
            let ptr = self.shards[t].load(Ordering::Acquire);
            if ptr.is_null() {
                return 0;
            }
            // SAFETY: published shard, freed only in `drop`.
            let shard = unsafe { &**ptr };
            let lease = &shard.leases[entry];
            // S6: seqlock read; a changed key means the entry was re-keyed at count zero.
            if lease.key.load(Ordering::Acquire) != key {
                return 0;
            }
            let n = lease
                .local
                .load(Ordering::Relaxed)
                .wrapping_sub(shard.far.lease_remote[entry].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if lease.key.load(Ordering::Relaxed) != key {
                return 0;
            }
            n
        };
        let lessee = lessee(s);
        if s & MULTI != 0 {
            (0..self.shards_hwm.load(Ordering::Acquire))
                .map(count)
                .fold(0, u32::wrapping_add)
        } else if let Some(t) = lessee {
            count(t)
        } else {
            0
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let (mut acquired, mut released) = (
            self.overflow_acquired.load(Ordering::Relaxed),
            self.overflow_released.load(Ordering::Relaxed),
        );
        for slot in self.shards.iter() {
            let ptr = slot.load(Ordering::Acquire);
            if !ptr.is_null() {
                // SAFETY: published shard, freed only in `drop`.
                let shard = unsafe { &*ptr };
                acquired += shard.acquired.load(Ordering::Relaxed);
                released += shard.released.load(Ordering::Relaxed);
            }
        }
        PoolStats {
            capacity: self.capacity,
            in_use: acquired.saturating_sub(released),
            high_water: self.fresh.load(Ordering::Relaxed),
            exhausted: self.exhausted.load(Ordering::Relaxed),
            created: acquired,
            released,
            reserved_bytes: self.pages.reserved_bytes(),
            spent_slots: self.spent.load(Ordering::Relaxed),
            heavy_fences: self.heavy_fences.load(Ordering::Relaxed),
        }
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        #[cfg(not(loom))]
        self.stop_driver_thread();
        for slot in self.shards.iter() {
            let ptr = slot.load(Ordering::Acquire);
            if !ptr.is_null() {
                // SAFETY: published by `shard_slow` from `Box::into_raw`; the pool is being
                // dropped, so nobody else can reach it (P4).
                drop(unsafe { Box::from_raw(ptr) });
            }
        }
    }
}

/// A counted reference to a pool (P4): what handles and roots hold.
pub(crate) struct PoolRef(NonNull<PoolInner>);

// SAFETY: `PoolInner` is `Sync` (atomics, a mutex, and cells accessed per S1/P2), and the
// reference count makes the pointer valid for as long as the `PoolRef` lives (P4).
unsafe impl Send for PoolRef {}
// SAFETY: as for `Send`.
unsafe impl Sync for PoolRef {}

impl PoolRef {
    #[inline]
    pub(crate) fn get(&self) -> &PoolInner {
        // SAFETY: the pointer holds a reference (P4), or points at the leaked global pool.
        unsafe { self.0.as_ref() }
    }

    #[inline]
    pub(crate) fn ptr(&self) -> NonNull<PoolInner> {
        self.0
    }

    /// Takes one more reference on the pool at `ptr`.
    ///
    /// # Safety
    /// The caller can show the pool is alive (it holds a reference, or a node of it).
    #[inline]
    pub(crate) unsafe fn acquire(ptr: NonNull<PoolInner>) -> PoolRef {
        // SAFETY: alive per the contract.
        let inner = unsafe { ptr.as_ref() };
        if !inner.is_global {
            inner.refs.fetch_add(1, Ordering::Relaxed);
        }
        PoolRef(ptr)
    }

    /// A reference to the pool at `ptr` unless its count already reached zero (it is being
    /// freed); the global pool always succeeds.
    ///
    /// # Safety
    /// The pool's memory is still allocated (the caller holds a `DriverLink`'s lock, time D4).
    pub(crate) unsafe fn try_acquire(ptr: NonNull<PoolInner>) -> Option<PoolRef> {
        // SAFETY: allocated per the contract.
        let inner = unsafe { ptr.as_ref() };
        if inner.is_global {
            return Some(PoolRef(ptr));
        }
        let mut n = inner.refs.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return None;
            }
            match inner
                .refs
                .compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Some(PoolRef(ptr)),
                Err(actual) => n = actual,
            }
        }
    }

    /// Gives up this reference without dropping the pool: the caller keeps it inside a node
    /// (a root, P4) and releases it later with [`PoolRef::from_raw`].
    #[inline]
    pub(crate) fn into_raw(self) -> NonNull<PoolInner> {
        let p = self.0;
        core::mem::forget(self);
        p
    }

    /// Re-wraps a reference given up with [`PoolRef::into_raw`].
    ///
    /// # Safety
    /// `ptr` came from `into_raw` and that reference was not re-wrapped before.
    #[inline]
    pub(crate) unsafe fn from_raw(ptr: NonNull<PoolInner>) -> PoolRef {
        PoolRef(ptr)
    }
}

impl Clone for PoolRef {
    fn clone(&self) -> Self {
        // SAFETY: `self` holds a reference.
        unsafe { PoolRef::acquire(self.0) }
    }
}

impl Drop for PoolRef {
    fn drop(&mut self) {
        let inner = self.get();
        if inner.is_global {
            return;
        }
        if inner.refs.fetch_sub(1, Ordering::Release) == 1 {
            crate::sync::fence(Ordering::Acquire);
            // SAFETY: the count reached zero, so this was the last reference and no node is
            // live (P4); the pool was allocated by `Box::new` in `PoolBuilder::build`.
            drop(unsafe { Box::from_raw(self.0.as_ptr()) });
        }
    }
}

/// A pool of contexts. Cheap to clone; the pool is freed when the last handle, context and
/// weak id of it are gone.
///
/// Most programs use the process-wide pool behind [`Context::background`](crate::Context::background);
/// build your own for isolation (a capacity per tenant) or in tests:
///
/// ```
/// use ctxpool::Pool;
///
/// let pool = Pool::builder().capacity(1024).build().unwrap();
/// let req = pool.background().with_cancel();
/// assert_eq!(pool.stats().in_use, 1);
/// drop(req);
/// assert_eq!(pool.stats().in_use, 0);
/// ```
#[derive(Clone)]
pub struct Pool {
    pub(crate) inner: PoolRef,
}

impl Pool {
    /// A builder for a new pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The process-wide pool used by [`Context::background`](crate::Context::background),
    /// made on first use with [`PoolBuilder::default`] settings unless [`Pool::init_global`]
    /// ran first.
    #[cfg(not(loom))]
    pub fn global() -> Pool {
        Pool {
            inner: PoolRef(global_ptr()),
        }
    }

    /// Configures the process-wide pool before its first use.
    ///
    /// Fails, leaving the running pool alone, when the global pool already exists or the
    /// builder's settings are invalid.
    #[cfg(not(loom))]
    pub fn init_global(builder: PoolBuilder) -> Result<(), BuildError> {
        let mut problems = builder.problems();
        let mut made = false;
        if problems.is_empty() {
            GLOBAL.get_or_init(|| {
                made = true;
                builder.leak_global()
            });
            if !made {
                problems.push("the global pool is already initialised".into());
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BuildError { problems })
        }
    }

    /// The never-cancelled root of this pool (Go's `context.Background()`); takes no slot.
    pub fn background(&self) -> crate::Context {
        crate::Context::background_of(self.inner.clone())
    }

    /// Counters of this pool; see [`PoolStats`].
    pub fn stats(&self) -> PoolStats {
        self.inner.get().stats()
    }

    /// The most contexts this pool holds at once.
    pub fn capacity(&self) -> u32 {
        self.inner.get().capacity
    }

    /// A builder for a request root: a child of this pool's background whose
    /// [`with_cancel`](crate::ChildBuilder::with_cancel) applies the configured default
    /// timeout in the same node (no second timer, nothing else to cancel), and whose
    /// [`with_timeout`](crate::ChildBuilder::with_timeout) overrides it (still cut to the
    /// maximum timeout). The seed's `CreateRequestContext`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxpool::{Op, Pool};
    ///
    /// static HANDLE: Op = Op::new("handle");
    /// let pool = Pool::builder().default_timeout(Duration::from_secs(2)).build().unwrap();
    /// let req = pool.request().op(&HANDLE).with_cancel();
    /// assert!(req.remaining().unwrap() <= Duration::from_millis(2_001)); // up to a 1 ms tick over
    /// ```
    #[track_caller]
    pub fn request(&self) -> crate::ChildBuilder<'static> {
        crate::ChildBuilder::request(self, core::panic::Location::caller())
    }

    /// Runs one turn of the timer driver now: reads the clock, fires every timer that is due
    /// and runs due periodic upkeep; returns how many timers fired. Needed only with
    /// [`DriverMode::Manual`] or a [`ManualClock`]; harmless otherwise (a turn that finds
    /// another in progress does nothing).
    pub fn turn(&self) -> usize {
        self.inner.get().turn()
    }

    /// The driver's sleep protocol (time D5) run on the calling thread, for the loom models
    /// of `loom-tests` only; not part of the API. Returns `false` if timers were already
    /// handed over (it does not sleep), `true` once woken by a thread that handed it work.
    #[doc(hidden)]
    pub fn __sleep_until_work(&self) -> bool {
        let p = self.inner.get();
        let clock = &p.timers.clock;
        clock.set_sleeper();
        // A timer in the wheel: the real driver would sleep only until it is due.
        if !p.try_begin_sleep() || p.timers.wheel_busy() {
            let _ = clock.end_sleep();
            return false;
        }
        #[cfg(not(loom))]
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while clock.driver_sleeping() {
            #[cfg(loom)]
            crate::sync::thread::park();
            #[cfg(not(loom))]
            {
                std::thread::park_timeout(std::time::Duration::from_millis(1));
                assert!(std::time::Instant::now() < give_up, "lost wake-up");
            }
        }
        true
    }

    /// The pool clock's current time as an `Instant`: its coarse tick (milliseconds, as
    /// deadlines see it), or the manual clock's time.
    pub fn now(&self) -> std::time::Instant {
        let clock = &self.inner.get().timers.clock;
        clock.instant(clock.now64())
    }

    /// Every metric of this pool now: per-operation context counts and histograms, pool and
    /// timer counters. Render it with [`MetricsSnapshot::to_prometheus`].
    ///
    /// [`MetricsSnapshot::to_prometheus`]: crate::metrics::MetricsSnapshot::to_prometheus
    pub fn metrics(&self) -> crate::metrics::MetricsSnapshot {
        self.inner.get().metrics_snapshot()
    }

    /// The report of the last leak scan (the driver scans every `leak.interval` when
    /// `leak.enabled`), if one ran.
    pub fn leak_report(&self) -> Option<std::sync::Arc<crate::leak::LeakReport>> {
        self.inner.get().leaks.last()
    }

    /// Scans for leaks now, with the configured threshold: contexts alive for
    /// `leak.threshold` or longer, grouped by operation and creation site.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxpool::{ManualClock, Op, Pool};
    ///
    /// static JOB: Op = Op::new("job");
    /// let clock = ManualClock::new();
    /// let pool = Pool::builder().manual_clock(&clock).build().unwrap();
    /// let forgotten = pool.background().child().op(&JOB).with_cancel();
    /// clock.advance(Duration::from_secs(301)); // past the default threshold, 5 min
    /// let report = pool.scan_leaks();
    /// assert_eq!(report.suspects, 1);
    /// assert_eq!(report.groups[0].op, "job");
    /// drop(forgotten);
    /// assert_eq!(pool.scan_leaks().suspects, 0); // released: never reported
    /// ```
    pub fn scan_leaks(&self) -> std::sync::Arc<crate::leak::LeakReport> {
        let cfg = self.config();
        self.inner
            .get()
            .scan_leaks(cfg.leak.threshold, cfg.leak.alert_threshold)
    }

    /// The configuration in force.
    pub fn config(&self) -> std::sync::Arc<Config> {
        self.inner.get().config()
    }

    /// Runs `f` on the configuration in force, without cloning its `Arc` (cheaper than
    /// [`config`](Pool::config) on a hot path: concurrent readers write no shared line).
    pub fn with_config<R>(&self, f: impl FnOnce(&Config) -> R) -> R {
        self.inner.get().with_config(f)
    }

    /// `propagation.outbound_deadline_margin` in force: one load, for every outgoing call.
    #[cfg(feature = "http")]
    pub(crate) fn outbound_margin(&self) -> Duration {
        self.inner.get().outbound_margin()
    }

    /// See `PoolInner::add_publisher`.
    #[cfg(all(feature = "http", feature = "metrics"))]
    pub(crate) fn add_publisher(&self, p: std::sync::Weak<dyn crate::metrics::Publish>) {
        self.inner.get().add_publisher(p);
    }

    /// Replaces the configuration at run time, or explains why not.
    ///
    /// The new configuration is validated first, against every rule of
    /// [`Config::validate`] and the settings that cannot change once the pool is built
    /// (`pool_capacity`, `timer_resolution`; see [`Config::check_update`]). A rejected update
    /// changes nothing. An accepted one is visible to the hot path at once, without a lock:
    /// the whole configuration is swapped with `arc-swap` (readers never block or see a
    /// mix), and the two values contexts read on creation (`default_timeout`,
    /// `max_timeout`) are published together in one atomic word. Contexts already made keep
    /// their deadlines.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxpool::{Config, Pool};
    ///
    /// let pool = Pool::builder().config(&Config::default()).build().unwrap();
    /// let mut bad = (*pool.config()).clone();
    /// bad.default_timeout = Duration::from_secs(600); // above max_timeout (5m)
    /// bad.pool_capacity = 7; // fixed at build time
    /// let err = pool.update_config(bad).unwrap_err();
    /// assert_eq!(err.problems.len(), 2);
    /// assert_eq!(pool.config().default_timeout, Duration::from_secs(30)); // unchanged
    ///
    /// let mut good = (*pool.config()).clone();
    /// good.default_timeout = Duration::from_secs(5);
    /// pool.update_config(good).unwrap();
    /// let left = pool.request().with_cancel().remaining().unwrap();
    /// assert!(left <= Duration::from_millis(5_001)); // up to a 1 ms tick over
    /// ```
    pub fn update_config(&self, config: Config) -> Result<(), ConfigError> {
        self.inner.get().update_config(config)
    }

    /// Spawns this pool's timer driver as a task on the current tokio runtime: it turns the
    /// timers every timer resolution and ends by itself when the pool is freed (it holds no
    /// reference that would keep the pool alive). Build the pool with
    /// [`DriverMode::Manual`] so that it has no driver thread as well.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use ctxpool::{Cause, DriverMode, Pool};
    ///
    /// let pool = Pool::builder().driver(DriverMode::Manual).build().unwrap();
    /// let driver = pool.spawn_tokio_driver();
    /// let ctx = pool.background().with_timeout(Duration::from_millis(5));
    /// ctx.cancelled().await;
    /// assert_eq!(ctx.cause(), Some(Cause::DeadlineExceeded(ctx.deadline().unwrap())));
    /// drop((ctx, pool));
    /// driver.await.unwrap(); // ends once the pool is freed
    /// # }
    /// ```
    #[cfg(all(feature = "tokio", not(loom)))]
    pub fn spawn_tokio_driver(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.get();
        let link = inner.driver_link();
        inner.defer_zombies.store(true, Ordering::Relaxed);
        tokio::spawn(crate::time::driver::tokio_driver(
            link,
            inner.timers.period(),
        ))
    }

    /// Testing only: waits until no deferred zombie check (time D7) is running on the driver.
    /// A zombie's last leased child and the driver's check race to claim it; when the driver
    /// wins, the slot is freed (and the values dropped) on the driver's thread just after the
    /// child's drop returned. A test that compares `stats().in_use` or value drops with a model
    /// right after a drop calls this first. Waits by yielding; the check it waits for runs no
    /// user code but values' `Drop`.
    #[doc(hidden)]
    pub fn testing_quiesce(&self) {
        let inner = self.inner.get();
        while inner.zombie_checks.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
    }

    /// Testing only: moves free slot `slot` forward to generation `gen`, as if that many lives
    /// had passed on it, so a test can reach the end of a slot's generations in a few steps.
    /// Refused (`false`) unless the slot was handed out, is free (no reference, not waiting
    /// for children) and `gen` is above its generation. Generations only move forward, so no
    /// id can come to match an incarnation other than its own (slot L2). Call it while no
    /// other thread uses the pool.
    #[doc(hidden)]
    pub fn testing_skip_generations(&self, slot: u32, gen: u32) -> bool {
        let inner = self.inner.get();
        let main = inner.fresh.load(Ordering::Acquire).min(inner.capacity);
        let spare = inner.spare.load(Ordering::Acquire);
        if slot >= main && !(SPARE..SPARE.saturating_add(spare)).contains(&slot) {
            return false;
        }
        let Some(node) = inner.try_node(slot) else {
            return false;
        };
        node.state.load(Ordering::Acquire) == 0 && node.life.skip_to(gen)
    }

    /// Counters of this pool's timers; see [`TimerStats`].
    pub fn timer_stats(&self) -> TimerStats {
        self.inner.get().timer_stats()
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(not(loom))]
static GLOBAL: std::sync::OnceLock<GlobalPtr> = std::sync::OnceLock::new();

#[cfg(not(loom))]
struct GlobalPtr(NonNull<PoolInner>);
// SAFETY: the global pool is leaked and `PoolInner` is `Sync`.
#[cfg(not(loom))]
unsafe impl Send for GlobalPtr {}
// SAFETY: as for `Send`.
#[cfg(not(loom))]
unsafe impl Sync for GlobalPtr {}

#[cfg(not(loom))]
#[inline]
pub(crate) fn global_ptr() -> NonNull<PoolInner> {
    GLOBAL
        .get_or_init(|| PoolBuilder::default().leak_global())
        .0
}

/// Settings for a new [`Pool`].
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    capacity: u32,
    thread_cache: Option<u32>,
    resolution_ms: u32,
    default_timeout_ms: u32,
    max_timeout_ms: u32,
    manual_clock: Option<ManualClock>,
    driver: DriverMode,
    config: Option<Config>,
    lifetime_buckets: Vec<f64>,
    overrun_buckets: Vec<f64>,
    problems: Vec<String>,
    first_gen: u32,
    defer_zombies: bool,
    lease_own: bool,
}

/// The longest timeout a pool accepts: 7 days (deadlines are 32-bit millisecond ticks compared
/// with wrapping arithmetic, exact up to 24 days).
pub const MAX_TIMEOUT_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A duration in whole milliseconds for a builder setting, or a problem.
fn whole_ms(key: &str, d: Duration, problems: &mut Vec<String>) -> u32 {
    if d > MAX_TIMEOUT_LIMIT {
        problems.push(format!(
            "{key}: {d:?} is above the limit of {MAX_TIMEOUT_LIMIT:?}"
        ));
        return 0;
    }
    u32::try_from(crate::time::clock::ceil_ms(d)).unwrap_or(u32::MAX)
}

impl Default for PoolBuilder {
    /// Capacity 1,048,576 contexts (128 MiB of nodes at most, reserved page by page as used).
    fn default() -> Self {
        PoolBuilder {
            capacity: 1 << 20,
            thread_cache: None,
            resolution_ms: 1,
            default_timeout_ms: 30_000,
            max_timeout_ms: 300_000,
            manual_clock: None,
            driver: DriverMode::Thread,
            config: None,
            lifetime_buckets: crate::metrics::LIFETIME_BUCKETS.to_vec(),
            overrun_buckets: crate::metrics::OVERRUN_BUCKETS.to_vec(),
            problems: Vec::new(),
            first_gen: 0,
            defer_zombies: false,
            lease_own: false,
        }
    }
}

impl PoolBuilder {
    /// The most contexts alive at once, from 1 to 2^30. Memory grows by pages up to
    /// `capacity × 128` bytes.
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most free slots one thread keeps for itself before spilling half to the shared list
    /// (default: `capacity / 16`, between 1 and 1024).
    pub fn thread_cache(mut self, slots: u32) -> Self {
        self.thread_cache = Some(slots);
        self
    }

    /// The timer wheel's tick: whole milliseconds from 1 ms to 1 s (default 1 ms). A timer
    /// fires within one tick after its deadline.
    pub fn timer_resolution(mut self, d: Duration) -> Self {
        if d.subsec_nanos() % 1_000_000 != 0
            || d < Duration::from_millis(1)
            || d > Duration::from_secs(1)
        {
            self.problems.push(format!(
                "timer_resolution: {d:?} must be whole milliseconds from 1ms to 1s"
            ));
        } else {
            self.resolution_ms = d.as_millis() as u32;
        }
        self
    }

    /// The deadline of request roots made by [`Pool::request`] (default 30 s).
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout_ms = whole_ms("default_timeout", d, &mut self.problems);
        self
    }

    /// The longest deadline any context may have, from now (default 5 min); longer requested
    /// deadlines are cut to it and counted in [`TimerStats::clamped`].
    pub fn max_timeout(mut self, d: Duration) -> Self {
        self.max_timeout_ms = whole_ms("max_timeout", d, &mut self.problems);
        self
    }

    /// Takes every setting a [`Config`] has for a pool: capacity, timer resolution, default
    /// and maximum timeouts; the whole configuration is then what [`Pool::config`] returns.
    /// An invalid configuration makes [`build`](PoolBuilder::build) fail with all its
    /// problems.
    pub fn config(mut self, config: &Config) -> Self {
        if let Err(e) = config.validate() {
            self.problems
                .extend(e.problems.iter().map(|p| p.to_string()));
        }
        self.capacity = config.pool_capacity;
        self.resolution_ms = millis(config.timer_resolution).max(1);
        self.default_timeout_ms = millis(config.default_timeout);
        self.max_timeout_ms = millis(config.max_timeout);
        self.config = Some(config.clone());
        self
    }

    /// The configuration the pool starts with: the one given to [`config`](PoolBuilder::config)
    /// with this builder's settings applied over it (or the defaults).
    fn effective_config(&self) -> Config {
        let mut c = self.config.clone().unwrap_or_default();
        c.pool_capacity = self.capacity;
        c.timer_resolution = Duration::from_millis(u64::from(self.resolution_ms));
        c.default_timeout = Duration::from_millis(u64::from(self.default_timeout_ms));
        c.max_timeout = Duration::from_millis(u64::from(self.max_timeout_ms));
        c
    }

    /// Upper bounds, in seconds, of the `context_lifetime_seconds` histogram (default
    /// [`LIFETIME_BUCKETS`](crate::metrics::LIFETIME_BUCKETS)); finite and increasing.
    pub fn lifetime_buckets(mut self, bounds: &[f64]) -> Self {
        if let Err(e) = crate::metrics::ShardedHistogram::new(bounds) {
            self.problems.push(format!("lifetime_buckets: {e}"));
        }
        self.lifetime_buckets = bounds.to_vec();
        self
    }

    /// Upper bounds, in seconds, of the `deadline_overrun_seconds` histogram (default
    /// [`OVERRUN_BUCKETS`](crate::metrics::OVERRUN_BUCKETS)).
    pub fn overrun_buckets(mut self, bounds: &[f64]) -> Self {
        if let Err(e) = crate::metrics::ShardedHistogram::new(bounds) {
            self.problems.push(format!("overrun_buckets: {e}"));
        }
        self.overrun_buckets = bounds.to_vec();
        self
    }

    /// Runs the pool on a [`ManualClock`]: time moves only when the clock is advanced, and
    /// timers fire only in [`Pool::turn`] (no driver thread is started).
    pub fn manual_clock(mut self, clock: &ManualClock) -> Self {
        self.manual_clock = Some(clock.clone());
        self.driver = DriverMode::Manual;
        self
    }

    /// Who turns the timers (default: a background thread; a manual clock implies
    /// [`DriverMode::Manual`]).
    pub fn driver(mut self, mode: DriverMode) -> Self {
        self.driver = mode;
        self
    }

    /// Testing only: zombie checks are left to [`Pool::turn`] even without a driver, so that a
    /// test (or a loom model) can run the deferred path (tree I10, time D7). Contexts whose
    /// parent was released before them are then torn down only by a turn.
    #[doc(hidden)]
    pub fn testing_defer_zombies(mut self) -> Self {
        self.defer_zombies = true;
        self
    }

    /// Testing only: a thread leases the parents it made itself as it does any other's, instead
    /// of counting their children as references (see `PoolInner::lease`), so that tests and
    /// loom models of the lease protocol can make parent and child on one thread.
    #[doc(hidden)]
    pub fn testing_lease_own_children(mut self) -> Self {
        self.lease_own = true;
        self
    }

    /// Testing only: every slot's first incarnation gets generation `gen` instead of 0, so a
    /// test can drive a slot through the end of its generations (slot L2) in a few steps.
    #[doc(hidden)]
    pub fn testing_first_generation(mut self, gen: u32) -> Self {
        self.first_gen = gen;
        self
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = self.problems.clone();
        if self.default_timeout_ms == 0
            && !problems.iter().any(|p| p.starts_with("default_timeout"))
        {
            problems.push("default_timeout: must be at least 1ms".to_string());
        }
        if self.max_timeout_ms == 0 && !problems.iter().any(|p| p.starts_with("max_timeout")) {
            problems.push("max_timeout: must be at least 1ms".to_string());
        }
        if self.default_timeout_ms > self.max_timeout_ms && self.max_timeout_ms != 0 {
            problems.push(format!(
                "default_timeout: {}ms is above max_timeout {}ms",
                self.default_timeout_ms, self.max_timeout_ms
            ));
        }
        if self.manual_clock.is_some() && self.driver == DriverMode::Thread {
            problems.push(
                "driver: a pool on a manual clock is turned by Pool::turn, not a thread"
                    .to_string(),
            );
        }
        if self.capacity == 0 {
            problems.push("capacity: must be at least 1".to_string());
        }
        if self.capacity > MAX_CAPACITY {
            problems.push(format!(
                "capacity: {} is above the maximum of {MAX_CAPACITY}",
                self.capacity
            ));
        }
        if self.thread_cache == Some(0) {
            problems.push("thread_cache: must be at least 1".to_string());
        }
        problems
    }

    fn thread_cache_value(&self) -> u32 {
        self.thread_cache
            .unwrap_or((self.capacity / 16).clamp(1, 1024))
    }

    #[cfg(not(loom))]
    fn leak_global(&self) -> GlobalPtr {
        let inner = NonNull::from(Box::leak(Box::new(PoolInner::new(self, true))));
        // SAFETY: just made, leaked: lives forever.
        unsafe { inner.as_ref() }.start_upkeep();
        if self.driver == DriverMode::Thread {
            // SAFETY: just made; nothing can free it before this returns.
            unsafe { inner.as_ref() }
                .defer_zombies
                .store(true, Ordering::Relaxed);
            PoolInner::start_driver_thread(inner);
        }
        GlobalPtr(inner)
    }

    /// Builds the pool, or lists every problem with the settings.
    pub fn build(self) -> Result<Pool, BuildError> {
        let problems = self.problems();
        if !problems.is_empty() {
            return Err(BuildError { problems });
        }
        let inner = NonNull::from(Box::leak(Box::new(PoolInner::new(&self, false))));
        // SAFETY: just made; nothing can free it before this returns.
        unsafe { inner.as_ref() }.start_upkeep();
        #[cfg(not(loom))]
        if self.driver == DriverMode::Thread {
            // SAFETY: just made; nothing can free it before this returns.
            unsafe { inner.as_ref() }
                .defer_zombies
                .store(true, Ordering::Relaxed);
            PoolInner::start_driver_thread(inner);
        }
        Ok(Pool {
            inner: PoolRef(inner),
        })
    }
}

/// Invalid pool settings: every problem found, one per entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    /// Each problem, naming the setting and why.
    pub problems: Vec<String>,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid pool settings: {}", self.problems.join("; "))
    }
}

impl std::error::Error for BuildError {}

/// A snapshot of a pool's counters. Counters are summed over per-thread shards without a lock,
/// so a snapshot taken while other threads work may be a few operations stale.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// The most contexts alive at once.
    pub capacity: u32,
    /// Contexts alive now (created − released). A parent released while a child made on
    /// another thread may still read it is torn down by whichever comes last: that child, or
    /// the driver's batched check (time D7) — so for a moment after the last drop returns,
    /// the driver may still be freeing it on its own thread.
    pub in_use: u64,
    /// Slots ever taken from fresh memory: the most contexts that were alive at once, plus
    /// free slots that were cached on threads at the time. Never decreases.
    pub high_water: u32,
    /// Times a context could not be made because the pool was full.
    pub exhausted: u64,
    /// Contexts ever made.
    pub created: u64,
    /// Contexts ever released.
    pub released: u64,
    /// Bytes of node memory reserved (pages allocated so far).
    pub reserved_bytes: usize,
    /// Slots retired for good because their 2^32 generations were used up: a handle to any
    /// past incarnation can then never match a new one. Each is replaced by a spare slot of
    /// 128 bytes, so the capacity stays the same. A thread that makes and drops contexts
    /// back to back reuses one slot; at full speed it spends it in a few minutes.
    pub spent_slots: u32,
    /// Heavy fences run (process-wide barriers: `membarrier(2)` on Linux, which interrupts
    /// every CPU running a thread of the process). They run when a parent is released while
    /// children it made live on (the zombie checks, batched into at most one per driver turn
    /// when a driver runs), and when a thread reclaims slots that another thread caches.
    pub heavy_fences: u64,
}
