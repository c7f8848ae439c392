//! The driver: one place that moves time forward, fires due timers and runs periodic upkeep.
//!
//! ```text
//!   creating thread ── Ring::push (plain stores) ──►  per-shard arm ring ─┐
//!   (ring full)     ── spill (mutex, rare) ───────►  pool spill list ─────┤ turn(): drain,
//!                                                                          ▼ check generation
//!                         wheel (driver lock) ◄── insert live entries ── accept()
//!                              │ advance(now)
//!                              ▼
//!                         due entries ── fire(): try_upgrade → cancel(DeadlineExceeded)
//! ```
//!
//! A `turn` (a) refreshes the clock's tick, (b) takes every ring and the spill list, dropping
//! entries whose context is already released (most short-lived contexts never reach the
//! wheel), (c) advances the wheel to the current tick, (d) fires the due entries outside the
//! lock (a fired `after_func` may run user code, which may itself make contexts), and (e) runs
//! periodic jobs that are due (metrics publication and leak scans of later components).
//!
//! Who turns: a background thread (`ctxpool-driver`, the default, and what the global pool
//! uses), the caller ([`Pool::turn`](crate::Pool::turn), for a manual clock or an embedding
//! event loop), or a tokio task (feature `tokio`).
//!
//! Invariants (cited as **D1**..**D4**):
//!
//! - **D1** a timer fires only through `try_upgrade` with the entry's generation, and only if
//!   the node still owns a timer with the entry's deadline (`D_TIMER` and the same stored
//!   deadline): never into a reused slot (slot L2), never early, at most once effectively
//!   (cancel is idempotent and the first cause wins, tree I3).
//! - **D2** every timer of a live context is in its ring, the spill list, the wheel or the
//!   driver's due list; it leaves them only by firing or by being found stale. A context whose
//!   last reference is gone cannot be observed any more (its slot is released, tree I14/I15),
//!   so its entry is stale: `try_upgrade` with the entry's generation rejects it (slot L2) and
//!   dropping it loses nothing.
//! - **D3** the wheel never holds more than `max(2 × live entries at the last compaction,
//!   MIN_COMPACT)` entries before it is compacted, so its memory is bounded by the pool's
//!   capacity, not by the rate of timers.
//! - **D4** a driver thread reaches its pool only through a `DriverLink`, which the pool clears
//!   (under the link's lock) before it is freed; the thread takes a counted reference for each
//!   turn, so the pool cannot be freed in the middle of one.
//! - **D5** an idle driver thread sleeps without losing a wake-up. After a turn it ticks (parks
//!   until the next tick) while a timer is due within two ticks or while it lingers after
//!   recent work ([`LINGER_TICKS`]); otherwise it sleeps until the next wheel slot or periodic
//!   job (at most [`MAX_SLEEP`]): it marks the tick word stale and itself `sleeping` (clock K3),
//!   runs the heavy fence, and only then looks at the rings and the spill list; if a timer
//!   waits there it does not sleep. A thread arming a timer stores it in its ring, runs the
//!   light fence, and then loads `sleeping`; if set, it wakes the driver (the first waker
//!   clears `sleeping` and unparks). The fences pair as a Dekker handshake (`sync::barrier`):
//!   either the driver sees the new timer, or the armer sees `sleeping` and unparks it (a
//!   token `park` keeps if it comes first). A timer drained into the wheel by its producer
//!   (`drain_own_ring`) wakes a sleeping driver the same way, as does a spilled one, so the
//!   driver's wake-up time always covers every timer. A thread that reads the stale clock
//!   wakes it too (clock `catch_up`): the pool is in use again.
//!
//! - **D7** a zombie's check (tree I10: the heavy fence, then the lease counts, then a claim)
//!   may be handed to the driver instead of run at once, when a driver turns the pool on its
//!   own (a thread or a tokio task) and the releasing thread has a shard: an entry
//!   `(slot, generation, ZOMBIE_CHECK)` in its arm ring (or the spill list), which the drain
//!   collects instead of inserting it in the wheel. After the lock is released, the turn runs
//!   *one* heavy fence for every zombie it collected, then claims and tears down those whose
//!   counts are zero. The fence pairs with each child's light fence exactly as the releasing
//!   thread's would have (it comes after the zombie mark, which happened before the entry was
//!   pushed and drained), so the Dekker argument of I10 holds with the driver as the reader.
//!   A stale entry (the zombie was torn down by its last child, the slot maybe reused) fails
//!   the claim on its generation (slot L4). Liveness: the entry wakes a sleeping driver like a
//!   new timer does (D5), and a ticking driver drains it within a tick.
//!
//! # Where user code runs
//!
//! **D6** the driver thread (and the tokio driver task) never runs an `after_func` callback:
//! the cancel it records for a due timer hands each callback it would run to the
//! runner (`tree::func::run_detached`): a pool of threads that grows whenever a callback has
//! waited a tick behind blocking ones (so each in effect gets a thread of its own, as a
//! goroutine in Go, without a thread per callback), so a callback that blocks or panics delays
//! no timer, no clock refresh and no upkeep. [`Pool::turn`](crate::Pool::turn) called by the
//! user runs the callbacks itself, before it returns (as any cancel on a user thread does).

use core::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use super::clock;
use super::ring::Armed;
use super::wheel::{Entry, Wheel};
use crate::pool::slot::{generation, refs};
use crate::pool::{PoolInner, PoolRef};
use crate::sync::{AtomicUsize, Mutex, Ordering, StatU64, StatUsize};
use crate::tree::node::D_TIMER;

/// Ticks a driver keeps ticking after it last saw work before it may sleep (D5): a busy pool's
/// clock stays a plain load, an idle pool's driver sleeps.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) const LINGER_TICKS: u64 = 16;

/// The longest sleep of an idle driver (D5): periodic upkeep re-reads its intervals from the
/// configuration at least this often.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Below this many entries the wheel is never compacted.
const MIN_COMPACT: usize = 4096;

/// Lateness histogram: 4 sub-buckets per power of two of microseconds, up to 2^26 µs.
const LATE_BUCKETS: usize = 27 * 4;

/// Counters of the timer machinery, summed without a lock.
pub(crate) struct Counters {
    pub(crate) fired: StatU64,
    pub(crate) stale: StatU64,
    pub(crate) spilled: StatU64,
    pub(crate) compactions: StatU64,
    /// Clamps counted by threads without a shard (tid T2).
    pub(crate) clamped: StatU64,
    pub(crate) turns: StatU64,
    pub(crate) pending: StatUsize,
    pub(crate) wheel_bytes: StatUsize,
    pub(crate) late: [StatU64; LATE_BUCKETS],
}

impl Counters {
    fn new() -> Self {
        Counters {
            fired: StatU64::new(0),
            stale: StatU64::new(0),
            spilled: StatU64::new(0),
            compactions: StatU64::new(0),
            clamped: StatU64::new(0),
            turns: StatU64::new(0),
            pending: StatUsize::new(0),
            wheel_bytes: StatUsize::new(0),
            late: core::array::from_fn(|_| StatU64::new(0)),
        }
    }

    fn record_lateness(&self, micros: f64) {
        let us = micros.max(0.0) as u64;
        let b = if us < 4 {
            us as usize
        } else {
            let p = 63 - us.leading_zeros() as usize; // >= 2
            let sub = ((us >> (p - 2)) & 3) as usize;
            ((p - 1) * 4 + sub).min(LATE_BUCKETS - 1)
        };
        self.late[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Upper bound in microseconds of lateness bucket `b`.
    fn bucket_upper(b: usize) -> u64 {
        if b < 4 {
            return b as u64 + 1;
        }
        let p = b / 4 + 1;
        let sub = (b % 4) as u64;
        ((4 + sub + 1) << p) >> 2
    }

    /// Fire lateness as a histogram with upper bounds `bounds` (seconds): a fine bucket counts
    /// towards a bound when its own upper bound is at or below it.
    pub(crate) fn lateness_histogram(&self, bounds: &[f64]) -> crate::metrics::HistogramSnapshot {
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum = 0.0;
        for (b, c) in self.late.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let up = Counters::bucket_upper(b) as f64 / 1e6;
            let i = bounds.partition_point(|&le| le < up);
            counts[i] += n;
            // The sum is estimated at each fine bucket's upper bound.
            sum += up * n as f64;
        }
        crate::metrics::HistogramSnapshot {
            bounds: bounds.to_vec(),
            counts,
            sum,
        }
    }

    /// The `q` quantile of fire lateness (bucket upper bound), if anything fired.
    pub(crate) fn lateness_quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .late
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(Counters::bucket_upper(b)));
            }
        }
        None
    }
}

/// A job run by the driver (metrics publication, leak scans); it returns in how many
/// milliseconds it wants to run next (`None`: its interval, `every_ms`).
pub(crate) type Job = Box<dyn FnMut(&PoolInner) -> Option<u64> + Send>;

/// A periodic job run by the driver (metrics publication, leak scans).
pub(crate) struct Periodic {
    pub(crate) every_ms: u64,
    pub(crate) next_ms: u64,
    pub(crate) job: Job,
}

pub(crate) struct DriverState {
    wheel: Wheel,
    /// Spare vector swapped with the spill list, keeping both allocations.
    spare: Vec<Armed>,
    /// Entries due, fired after the lock is released.
    due: Vec<Entry>,
    /// Zombies whose check was deferred (D7), checked after the lock is released.
    zombies: Vec<(u32, u32)>,
    compact_at: usize,
    periodic: Vec<Periodic>,
}

/// The pool's timer state: spill list, driver state and counters.
pub(crate) struct Timers {
    pub(crate) clock: clock::Clock,
    /// Wheel tick in milliseconds (the timer resolution).
    pub(crate) resolution_ms: u32,
    spill: crossbeam_utils::CachePadded<Mutex<Spill>>,
    spill_len: AtomicUsize,
    /// Locked by every turn: on lines of its own.
    state: crossbeam_utils::CachePadded<Mutex<DriverState>>,
    /// Written by the driver every turn: on lines of their own (see `Clock::own`).
    pub(crate) counters: crossbeam_utils::CachePadded<Counters>,
    /// The driver thread, to wake early and to stop.
    #[cfg(not(loom))]
    thread: std::sync::Mutex<Option<DriverThread>>,
    /// Links of driver tasks (feature `tokio`), cleared when the pool is freed (D4).
    #[cfg(not(loom))]
    links: std::sync::Mutex<Vec<Arc<DriverLink>>>,
}

struct Spill {
    list: Vec<Armed>,
    /// Compact when the list grows past this (D3's bound, for the spill list).
    limit: usize,
}

impl Timers {
    pub(crate) fn new(clock: clock::Clock, resolution_ms: u32) -> Self {
        let now = clock.refresh();
        Timers {
            resolution_ms,
            spill: crossbeam_utils::CachePadded::new(Mutex::new(Spill {
                list: Vec::new(),
                limit: MIN_COMPACT,
            })),
            spill_len: AtomicUsize::new(0),
            state: crossbeam_utils::CachePadded::new(Mutex::new(DriverState {
                wheel: Wheel::new(now / u64::from(resolution_ms)),
                spare: Vec::new(),
                due: Vec::new(),
                zombies: Vec::new(),
                compact_at: MIN_COMPACT,
                periodic: Vec::new(),
            })),
            counters: crossbeam_utils::CachePadded::new(Counters::new()),
            clock,
            #[cfg(not(loom))]
            thread: std::sync::Mutex::new(None),
            #[cfg(not(loom))]
            links: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The timer resolution, the tokio driver's period.
    #[cfg_attr(any(loom, not(feature = "tokio")), allow(dead_code))]
    pub(crate) fn period(&self) -> Duration {
        Duration::from_millis(u64::from(self.resolution_ms))
    }

    /// Time until the next wheel tick boundary on the real clock, so that a driver thread
    /// turns right after each tick (a timer then fires within one tick of its deadline, plus
    /// the wake-up latency).
    #[cfg(not(loom))]
    pub(crate) fn until_next_tick(&self) -> Duration {
        let res = u128::from(self.resolution_ms) * 1_000_000;
        let now = self.clock.elapsed_nanos();
        let left = res - now % res;
        Duration::from_nanos(left as u64 + 50_000)
    }

    /// A zombie check was handed to the driver (D7): a driver that ticks sees it within a
    /// tick; a sleeping one is woken (the same handshake as a new timer, D5).
    #[inline]
    pub(crate) fn wake_for_zombie(&self) {
        crate::sync::barrier::light();
        if self.clock.driver_sleeping() {
            self.clock.wake_sleeper();
        }
    }

    /// Wakes the driver thread early (its ring is half full, a timer was spilled, a job was
    /// added), or from its sleep (D5).
    #[cfg_attr(loom, allow(clippy::needless_return))] // the rest is not built under loom
    pub(crate) fn wake(&self) {
        // D5: the caller stored its work (a ring entry, the spill list, a job) before this fence.
        crate::sync::barrier::light();
        if self.clock.driver_sleeping() {
            self.clock.wake_sleeper();
            return;
        }
        #[cfg(not(loom))]
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            t.thread.unpark();
        }
    }

    /// Hands a timer to the driver through the shared spill list (R3: a full ring, or a thread
    /// without a shard).
    #[cold]
    pub(crate) fn spill(&self, pool: &PoolInner, a: Armed) {
        let mut s = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        s.list.push(a);
        if s.list.len() > s.limit {
            // D3 for the spill list: drop entries of released contexts.
            s.list.retain(|a| alive(pool, a.idx, a.gen));
            s.limit = (s.list.len() * 2).max(MIN_COMPACT);
        }
        self.spill_len.store(s.list.len(), Ordering::Relaxed);
        drop(s);
        self.counters.spilled.fetch_add(1, Ordering::Relaxed);
        self.wake();
    }

    /// Adds a periodic job, first run one interval from now. For the upkeep of the metrics and
    /// leak-detection components (a test covers it until they use it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn every(&self, interval: Duration, job: Job) {
        let every_ms = clock::ceil_ms(interval).max(1);
        let next_ms = self.clock.now64() + every_ms;
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .periodic
            .push(Periodic {
                every_ms,
                next_ms,
                job,
            });
        // A sleeping driver recomputes its wake-up time (D5).
        self.wake();
    }

    /// Whether the wheel holds any entry (the loom models' stand-in for "sleep until the next
    /// slot", D5).
    pub(crate) fn wheel_busy(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.wheel.len() > 0 || !st.due.is_empty()
    }

    /// The tick (milliseconds) at which the driver next has work: a wheel slot or a periodic
    /// job; `None` if it has none.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn next_event_ms(&self) -> Option<u64> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let wheel = st
            .wheel
            .next_due()
            .map(|w| w.saturating_mul(u64::from(self.resolution_ms)));
        let job = st.periodic.iter().map(|p| p.next_ms).min();
        match (wheel, job) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What a drain needs to know about now: the resolution and the staleness horizon.
#[derive(Clone, Copy)]
struct DrainAt {
    res: u64,
    /// Deadlines (full ticks) after this are due more than 64 wheel ticks from now:
    /// `deadline > far` iff `deadline.div_ceil(res) > now_w + 64`, with no division.
    far: u64,
}

impl DrainAt {
    fn new(now_w: u64, res: u64) -> Self {
        DrainAt {
            res,
            far: (now_w + 64).saturating_mul(res),
        }
    }
}

/// Takes armed timer `a` into the wheel (or the due list); `false` if it was dropped as
/// stale.
#[inline(always)]
fn accept(pool: &PoolInner, st: &mut DriverState, a: Armed, at: DrainAt) -> bool {
    if a.deadline == super::ring::ZOMBIE_CHECK {
        st.zombies.push((a.idx, a.gen));
        return true;
    }
    // A timer due soon goes straight in (firing checks the generation anyway, D1); one due
    // later is dropped now if its context is already gone, which keeps most short-lived
    // contexts out of the wheel. Each check costs a read of the node's line; the common case
    // (a stale entry) costs no division and no call.
    if a.deadline > at.far && !alive(pool, a.idx, a.gen) {
        return false;
    }
    insert(st, a, at.res);
    true
}

/// Puts armed timer `a` into the wheel, or on the due list if it is due already.
#[inline(never)]
fn insert(st: &mut DriverState, a: Armed, res: u64) {
    // Due at the first wheel tick at or after the deadline (never early).
    let when = if res == 1 {
        a.deadline
    } else {
        a.deadline.div_ceil(res)
    };
    let e = Entry {
        idx: a.idx,
        gen: a.gen,
        deadline: a.deadline as u32,
        when,
    };
    if let Err(e) = st.wheel.insert(e) {
        st.due.push(e);
    }
}

/// Whether incarnation `gen` of slot `idx` may still be referenced (a hint: it can be released
/// right after; firing re-checks with `try_upgrade`, D1).
#[inline]
fn alive(pool: &PoolInner, idx: u32, gen: u32) -> bool {
    // SAFETY: `idx` was handed out by this pool (it came from a handle), P3.
    let w = unsafe { pool.node(idx) }.life.load(Ordering::Relaxed);
    generation(w) == gen && refs(w) > 0
}

impl PoolInner {
    /// Called by a ring's producer when its ring is half full: drains it into the wheel itself
    /// if the driver's lock is free (it is then the ring's consumer, R1), which costs no system
    /// call and reads nodes the producer made (in its own cache); otherwise wakes the driver.
    /// Due entries go to the due list, fired by the next turn.
    #[cold]
    pub(crate) fn drain_own_ring(&self, ring: &super::ring::Ring) {
        let t = &self.timers;
        let mut guard = match t.state.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                t.wake();
                return;
            }
        };
        let res = u64::from(t.resolution_ms);
        let at = DrainAt::new(t.clock.now64() / res, res);
        let mut stale = 0u64;
        // SAFETY: R1: we hold the driver lock, so we are the ring's only consumer.
        unsafe {
            ring.drain(|a| {
                if !accept(self, &mut guard, a, at) {
                    stale += 1;
                }
            })
        };
        // Zombie checks drained here stay in the driver state for its next turn (D7): their
        // teardowns run user code, which must not run inside this thread's `arm`.
        drop(guard);
        t.counters.stale.fetch_add(stale, Ordering::Relaxed);
        // D5: the wheel may now hold a timer earlier than a sleeping driver's wake-up. Store
        // (the drain, under the driver's lock), fence, load `sleeping`: a driver that missed
        // this wake-up took the lock after the drain, so its wake-up time covers the timer.
        crate::sync::barrier::light();
        if t.clock.driver_sleeping() {
            t.clock.wake_sleeper();
        }
    }

    /// Whether timers wait in a ring or the spill list (D5: the driver looks, after its heavy
    /// fence, before it sleeps).
    pub(crate) fn arms_pending(&self) -> bool {
        let mut pending = self.timers.spill_len.load(Ordering::Relaxed) > 0;
        self.for_each_ring(|ring| pending |= ring.pending());
        pending
    }

    /// D5, the driver's side: marks it sleeping (and the tick stale), runs the heavy fence,
    /// then looks for timers handed over meanwhile. `true`: it may park, and whoever hands it
    /// work from now on wakes it; `false`: work arrived, so it must not sleep (the flags are
    /// cleared by the caller's `end_sleep`, and the tick by its next turn).
    pub(crate) fn try_begin_sleep(&self) -> bool {
        let clock = &self.timers.clock;
        clock.begin_sleep();
        crate::sync::barrier::heavy();
        !self.arms_pending()
    }

    /// One turn of the driver; returns how many timers fired. A turn that finds another turn
    /// holding the wheel (on another thread) does nothing; timers fire outside that lock, so a
    /// callback that turns again works. A panic raised while firing (a callback, or a value's
    /// `Drop`) is re-raised once the whole turn is done.
    pub(crate) fn turn(&self) -> usize {
        self.turn_inner(false).fired
    }

    /// [`turn`](PoolInner::turn), also saying how many armed timers it took from the rings
    /// and the spill list (the driver's measure of activity, D5). `detach`: the `after_func`
    /// callbacks the fired timers would run go to threads of their own (D6) instead of
    /// running on this one.
    pub(crate) fn turn_inner(&self, detach: bool) -> Turned {
        let t = &self.timers;
        let now_ms = t.clock.refresh();
        let res = u64::from(t.resolution_ms);
        let mut guard = match t.state.try_lock() {
            Ok(g) => g,
            // Every step below leaves the state consistent between entries, so a panic that
            // poisoned the lock (a bug) must not stop the timers for good.
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Turned::default(),
        };
        let st = &mut *guard;
        t.counters.turns.fetch_add(1, Ordering::Relaxed);
        let mut stale = 0u64;
        let mut taken = 0usize;
        let now_w = now_ms / res;
        let at = DrainAt::new(now_w, res);
        let mut accept = |st: &mut DriverState, a: Armed| {
            taken += 1;
            if !accept(self, st, a, at) {
                stale += 1;
            }
        };
        // (b) rings, then the spill list.
        self.for_each_ring(|ring| {
            // SAFETY: R1: we hold the driver lock, so we are the rings' only consumer.
            unsafe { ring.drain(|a| accept(st, a)) };
        });
        if t.spill_len.load(Ordering::Relaxed) > 0 {
            let mut s = t.spill.lock().unwrap_or_else(|e| e.into_inner());
            core::mem::swap(&mut s.list, &mut st.spare);
            t.spill_len.store(0, Ordering::Relaxed);
            drop(s);
            let mut spare = core::mem::take(&mut st.spare);
            for a in spare.drain(..) {
                accept(st, a);
            }
            st.spare = spare;
        }
        // (c) advance.
        let DriverState { wheel, due, .. } = st;
        wheel.advance(now_w, |e| due.push(e));
        // D3: compact once stale entries could outnumber live ones.
        if st.wheel.len() > st.compact_at {
            stale += st.wheel.retain(|e| alive(self, e.idx, e.gen)) as u64;
            st.compact_at = (st.wheel.len() * 2).max(MIN_COMPACT);
            t.counters.compactions.fetch_add(1, Ordering::Relaxed);
        }
        t.counters.pending.store(st.wheel.len(), Ordering::Relaxed);
        t.counters
            .wheel_bytes
            .store(st.wheel.heap_bytes(), Ordering::Relaxed);
        let mut due = core::mem::take(&mut st.due);
        let mut zombies = core::mem::take(&mut st.zombies);
        let mut jobs = Vec::new();
        if st.periodic.iter().any(|p| p.next_ms <= now_ms) {
            jobs = core::mem::take(&mut st.periodic);
        }
        drop(guard);
        // (d) fire, outside the lock. A panic (a callback, or a value's `Drop` run by the
        // release of the reference we took) does not stop the turn: every due timer fires,
        // counters and jobs are restored, then the first panic is re-raised.
        let mut fired = 0;
        let mut panic = None;
        let mut calls = Vec::new();
        for e in due.drain(..) {
            let mut sink = detach.then_some(&mut calls);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tree_fire(self, e, &mut sink)
            })) {
                Ok(Fire::Fired) => fired += 1,
                Ok(Fire::Stale) => stale += 1,
                Ok(Fire::AlreadyCancelled) => {}
                Err(p) => {
                    fired += 1;
                    panic.get_or_insert(p);
                }
            }
        }
        t.counters.stale.fetch_add(stale, Ordering::Relaxed);
        t.counters.fired.fetch_add(fired as u64, Ordering::Relaxed);
        // (d') the zombies handed over since the last turn: one heavy fence for all (D7).
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.check_zombies(&mut zombies)
        })) {
            zombies.clear();
            panic.get_or_insert(p);
        }
        if !calls.is_empty() {
            // D6: user code runs elsewhere.
            #[cfg(not(loom))]
            crate::tree::func::run_detached(calls);
        }
        // D6: callbacks stuck behind blocking ones get threads of their own.
        #[cfg(not(loom))]
        if detach && crate::tree::func::spawn_if_stuck(Duration::from_millis(res)) {
            taken += 1; // callbacks wait: keep ticking (D5)
        }
        // (e) periodic jobs, outside the lock.
        for p in jobs.iter_mut().filter(|p| p.next_ms <= now_ms) {
            // A panicking job is skipped this round; the driver keeps going.
            let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (p.job)(self)))
                .ok()
                .flatten();
            p.next_ms = now_ms.saturating_add(next.unwrap_or(p.every_ms).max(1));
        }
        let mut guard = t.state.lock().unwrap_or_else(|e| e.into_inner());
        if guard.due.capacity() < due.capacity() {
            guard.due = due;
        }
        if guard.zombies.is_empty() && guard.zombies.capacity() < zombies.capacity() {
            guard.zombies = zombies;
        }
        if !jobs.is_empty() {
            // Jobs added while these ran come after them.
            jobs.append(&mut guard.periodic);
            guard.periodic = jobs;
        }
        drop(guard);
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
        Turned { fired, taken }
    }
}

/// What a turn did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Turned {
    /// Timers that cancelled their context.
    pub(crate) fired: usize,
    /// Armed timers taken from the rings and the spill list.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) taken: usize,
}

enum Fire {
    Fired,
    Stale,
    AlreadyCancelled,
}

/// Fires one due entry (D1).
fn tree_fire(
    pool: &PoolInner,
    e: Entry,
    defer: &mut Option<&mut Vec<crate::tree::func::Call>>,
) -> Fire {
    // SAFETY: `e.idx` came from a handle of this pool (P3).
    let node = unsafe { pool.node(e.idx) };
    if !node.life.try_upgrade(e.gen) {
        return Fire::Stale;
    }
    // The reference taken above, released when `ctx` drops (through the normal release path).
    let ctx = crate::Context::from_node(NonNull::from(pool), e.idx, e.gen);
    // SAFETY: we hold a reference, so the incarnation's fields are stable (slot L1).
    let (own_timer, deadline) = unsafe {
        (
            node.shard_flags().0 & D_TIMER != 0,
            node.payload.with(|p| (*p).values.deadline),
        )
    };
    if !own_timer || deadline != e.deadline {
        drop(ctx);
        return Fire::Stale;
    }
    // An ancestor cancelled first wins (tree I12). A panicking `after_func` below still counts
    // as fired: the cancel completed (tree I7).
    let fired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::tree::fire_deadline(pool, e.idx, e.deadline, defer)
    }));
    let won = *fired.as_ref().unwrap_or(&true);
    if won {
        let late_ms = pool.timers.clock.precise_ms() - pool.timers.clock.widen(e.deadline) as f64;
        pool.timers.counters.record_lateness(late_ms * 1e3);
    }
    // Releasing our reference may free the node and its ancestors, running values' `Drop`;
    // a panic there propagates to `turn`, which completes the turn first.
    drop(ctx);
    if let Err(p) = fired {
        std::panic::resume_unwind(p);
    }
    if won {
        Fire::Fired
    } else {
        Fire::AlreadyCancelled
    }
}

/// How a driver thread or task reaches its pool (D4).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct DriverLink {
    pool: std::sync::Mutex<Option<NonNull<PoolInner>>>,
}

// SAFETY: the pointer is only dereferenced under the link's lock while the pool is alive (D4),
// and `PoolInner` is `Sync`.
unsafe impl Send for DriverLink {}
// SAFETY: as for `Send`.
unsafe impl Sync for DriverLink {}

#[cfg_attr(loom, allow(dead_code))]
impl DriverLink {
    pub(crate) fn new(pool: NonNull<PoolInner>) -> Arc<Self> {
        Arc::new(DriverLink {
            pool: std::sync::Mutex::new(Some(pool)),
        })
    }

    /// A counted reference to the pool, unless it is gone or going (D4).
    pub(crate) fn upgrade(&self) -> Option<PoolRef> {
        let g = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let p = (*g)?;
        // SAFETY: the pool clears this link before it is freed (D4), and we hold the link's
        // lock, so it is still allocated; `try_acquire` refuses a pool whose count is zero.
        unsafe { PoolRef::try_acquire(p) }
    }

    /// Called by the pool as it is freed (D4).
    pub(crate) fn clear(&self) {
        *self.pool.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The body of the `ctxpool-driver` thread: turns, then ticks or sleeps (D5), until the pool
/// is freed (D4).
#[cfg(not(loom))]
fn driver_thread(link: &DriverLink) {
    // Whether the last park was a sleep (the tick word is marked stale, clock K3).
    let mut slept = false;
    let mut linger_until = 0u64;
    let mut registered = false;
    loop {
        let Some(pool) = link.upgrade() else {
            return;
        };
        let p = pool.get();
        let clock = &p.timers.clock;
        if !registered {
            clock.set_sleeper();
            registered = true;
        }
        // Somebody woke us (rather than the timeout): the pool is in use, so linger.
        let woken = slept && clock.end_sleep();
        // A panic from user code run by a fired timer is the user's to see (it was printed by
        // the panic hook); the driver keeps going.
        let turned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.turn_inner(true)))
            .unwrap_or_default();
        if slept {
            // The turn refreshed the tick: reads may use it again (K3).
            clock.set_stale(false);
            slept = false;
        }
        let res = u64::from(p.timers.resolution_ms);
        let now = clock.now64();
        if woken || turned.taken > 0 || turned.fired > 0 {
            linger_until = now + LINGER_TICKS * res;
        }
        let next = p.timers.next_event_ms();
        let soon = next.is_some_and(|n| n <= now + 2 * res);
        let period = if soon || now < linger_until {
            p.timers.until_next_tick()
        } else if p.try_begin_sleep() {
            slept = true;
            // Recomputed after the fence: a producer may have drained its ring into the wheel.
            let at = p.timers.next_event_ms();
            let left = at.map_or(MAX_SLEEP, |at| {
                Duration::from_millis(at)
                    .saturating_sub(clock.precise())
                    .saturating_add(Duration::from_micros(50))
            });
            left.min(MAX_SLEEP)
        } else {
            // Work arrived while we were deciding: turn again at once.
            slept = true;
            Duration::ZERO
        };
        // May be the last reference: the pool is then freed here, and clears the link.
        drop(pool);
        if !period.is_zero() {
            std::thread::park_timeout(period);
        }
    }
}

#[cfg(not(loom))]
pub(crate) struct DriverThread {
    link: Arc<DriverLink>,
    thread: std::thread::Thread,
    join: Option<std::thread::JoinHandle<()>>,
}

#[cfg(not(loom))]
impl PoolInner {
    /// Starts the background driver of the pool at `me` (once, right after it is built).
    pub(crate) fn start_driver_thread(me: NonNull<PoolInner>) {
        let link = DriverLink::new(me);
        let thread_link = link.clone();
        let spawned = std::thread::Builder::new()
            .name("ctxpool-driver".into())
            .spawn(move || driver_thread(&thread_link));
        // SAFETY: the caller passes a pool it just built; nothing frees it before this returns.
        let inner = unsafe { me.as_ref() };
        match spawned {
            Ok(join) => {
                *inner
                    .timers
                    .thread
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(DriverThread {
                    link,
                    thread: join.thread().clone(),
                    join: Some(join),
                });
            }
            // No thread (e.g. a sandbox without threads): deadlines still read as expired
            // lazily, on the precise clock (K3), and `Pool::turn` fires them.
            Err(_) => {
                link.clear();
                inner.timers.clock.set_stale(true);
            }
        }
    }

    /// A new link to this pool for a driver task (D4), cleared when the pool is freed.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn driver_link(&self) -> Arc<DriverLink> {
        let link = DriverLink::new(NonNull::from(self));
        let mut links = self.timers.links.lock().unwrap_or_else(|e| e.into_inner());
        // Links of tasks that ended are held only here.
        links.retain(|l| Arc::strong_count(l) > 1);
        links.push(link.clone());
        link
    }

    /// Stops the driver thread (from `PoolInner::drop`): clears its link (D4), wakes it, and
    /// joins it unless this is the driver thread itself (it dropped the last reference).
    pub(crate) fn stop_driver_thread(&self) {
        let t = self
            .timers
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for link in self
            .timers
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            link.clear();
        }
        if let Some(mut t) = t {
            t.link.clear();
            t.thread.unpark();
            if std::thread::current().id() != t.thread.id() {
                if let Some(j) = t.join.take() {
                    let _ = j.join();
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::{ManualClock, Pool};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn periodic_jobs_run_when_due_and_survive_a_panic() {
        let clock = ManualClock::new();
        let pool = Pool::builder().manual_clock(&clock).build().unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let inner = pool.inner.get();
        inner.timers.every(
            Duration::from_millis(10),
            Box::new(move |_| {
                r.fetch_add(1, Ordering::SeqCst);
                None
            }),
        );
        inner.timers.every(
            Duration::from_millis(10),
            Box::new(|_| panic!("job panics")),
        );
        pool.turn();
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        clock.advance(Duration::from_millis(10));
        pool.turn();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_millis(5));
        pool.turn();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_millis(5));
        pool.turn();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn lateness_buckets_are_ordered_and_cover_their_values() {
        let c = super::Counters::new();
        for us in [0.0, 3.0, 5.0, 100.0, 1_000.0, 1_500.0, 2_000_000.0] {
            c.record_lateness(us);
        }
        let p50 = c.lateness_quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_micros(100) && p50 < Duration::from_micros(200),
            "{p50:?}"
        );
        assert!(c.lateness_quantile(1.0).unwrap() >= Duration::from_secs(2));
        let mut last = 0;
        for b in 0..super::LATE_BUCKETS {
            let up = super::Counters::bucket_upper(b);
            assert!(up > last, "bucket {b}");
            last = up;
        }
    }
}

/// The tokio driver task (feature `tokio`).
#[cfg(all(feature = "tokio", not(loom)))]
pub(crate) async fn tokio_driver(link: Arc<DriverLink>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = link.upgrade() else {
            return;
        };
        // D6: callbacks on threads of their own, never on the runtime's worker.
        let _ = pool.get().turn_inner(true);
        drop(pool);
    }
}
