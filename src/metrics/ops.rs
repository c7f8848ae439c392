//! Per-operation context metrics, kept in sharded slots (module `sharded`, M1–M3).
//!
//! Each operation label ([`Op`](crate::Op) id, 0 for contexts without one) gets, on first
//! use in a pool, a block of per-thread words:
//!
//! ```text
//!   created · released · cancelled[explicit, deadline, parent, exhausted, shutdown]
//!   lifetime buckets[.., +Inf] · lifetime sum (ms) · overrun buckets[.., +Inf] · overrun sum (ms)
//! ```
//!
//! - *created* is counted when a context is published, *released* when its slot is torn down
//!   (so `active = created − released` is exact, and never negative when read released-first,
//!   M2); `after_func` registrations are not contexts and are not counted.
//! - a cancellation is counted once per context, by the thread whose cancel recorded it on that
//!   context (tree I3): its own cancel, a deadline, or — `parent` — an ancestor's cancellation
//!   reaching it (eagerly if it was registered, else when it was first read). The end of a
//!   context's owner (`OwnerDropped`, Go's `defer cancel()`) is the normal end of a context and
//!   is not counted as a cancellation. A context born cancelled at pool exhaustion counts as
//!   `exhausted` (it has no slot, so it is not counted as created).
//! - lifetimes and deadline overruns (release time past the deadline) are measured on the
//!   pool's millisecond clock at release.
//!
//! With metrics disabled in the configuration, none of this runs: the hot path tests one flag.

use crate::metrics::sharded::{add, Slot, Slots};
use crate::sync::{AtomicBool, AtomicPtr, Ordering};
use crate::values::MAX_OPS;

/// Cancellation reasons, in word order.
pub const REASONS: [&str; 5] = ["explicit", "deadline", "parent", "exhausted", "shutdown"];
pub(crate) const R_EXPLICIT: usize = 0;
pub(crate) const R_DEADLINE: usize = 1;
pub(crate) const R_PARENT: usize = 2;
pub(crate) const R_EXHAUSTED: usize = 3;
pub(crate) const R_SHUTDOWN: usize = 4;

const W_CREATED: usize = 0;
const W_RELEASED: usize = 1;
const W_CANCELLED: usize = 2;

/// Default upper bounds of `context_lifetime_seconds`.
pub const LIFETIME_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];
/// Default upper bounds of `deadline_overrun_seconds`.
pub const OVERRUN_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// Bucket bounds in whole milliseconds (an observation of `ms` goes to the first bound
/// `>= ms`), and their layout in the op block.
struct Buckets {
    ms: Box<[u64]>,
    seconds: Box<[f64]>,
    /// First word: the buckets (`ms.len() + 1`, last `+Inf`), then the sum in ms.
    base: usize,
}

impl Buckets {
    fn new(seconds: &[f64], base: usize) -> Self {
        Buckets {
            ms: seconds.iter().map(|s| (s * 1e3).floor() as u64).collect(),
            seconds: seconds.into(),
            base,
        }
    }

    fn words(&self) -> usize {
        self.ms.len() + 2
    }

    #[inline(always)]
    fn observe(&self, slot: &Slot<'_>, ms: u64) {
        // Linear from the smallest bound: most contexts live a few milliseconds, so this
        // usually stops at the first compare.
        let b = self.ms.iter().position(|&ub| ms <= ub).unwrap_or(self.ms.len());
        add(slot, self.base + b, 1);
        add(slot, self.base + self.ms.len() + 1, ms);
    }

    fn snapshot(&self, slots: &Slots) -> crate::metrics::HistogramSnapshot {
        let n = self.ms.len() + 1;
        let mut counts = vec![0u64; n];
        let mut sum_ms = 0u64;
        slots.for_each(|s| {
            for (i, c) in counts.iter_mut().enumerate() {
                *c = c.wrapping_add(s[self.base + i].load(Ordering::Acquire));
            }
            sum_ms = sum_ms.wrapping_add(s[self.base + n].load(Ordering::Acquire));
        });
        crate::metrics::HistogramSnapshot {
            bounds: self.seconds.to_vec(),
            counts,
            sum: sum_ms as f64 / 1e3,
        }
    }
}

/// The context metrics of one pool.
pub(crate) struct ContextMetrics {
    /// `metrics.enabled` of the configuration in force.
    pub(crate) enabled: AtomicBool,
    ops: Box<[AtomicPtr<Slots>]>,
    lifetime: Buckets,
    overrun: Buckets,
    width: usize,
}

/// One operation's counts, summed over threads.
#[derive(Clone, Debug, PartialEq)]
pub struct OpCounts {
    /// Contexts made.
    pub created: u64,
    /// Contexts released.
    pub released: u64,
    /// Cancellations by reason, in the order of [`REASONS`].
    pub cancelled: [u64; 5],
    /// Lifetimes of released contexts.
    pub lifetime: crate::metrics::HistogramSnapshot,
    /// How long after their deadline contexts were released (only those released late).
    pub overrun: crate::metrics::HistogramSnapshot,
}

impl OpCounts {
    /// Contexts alive: created − released.
    pub fn active(&self) -> u64 {
        self.created.saturating_sub(self.released)
    }
}

impl ContextMetrics {
    pub(crate) fn new(enabled: bool, lifetime: &[f64], overrun: &[f64]) -> Self {
        let base = W_CANCELLED + REASONS.len();
        let lifetime = Buckets::new(lifetime, base);
        let overrun = Buckets::new(overrun, base + lifetime.words());
        let width = base + lifetime.words() + overrun.words();
        ContextMetrics {
            enabled: AtomicBool::new(enabled),
            ops: (0..=MAX_OPS)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
            lifetime,
            overrun,
            width,
        }
    }

    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The calling thread's words for operation `op` (`tid` from `pool.local()`).
    #[inline(always)]
    fn slot(&self, op: u32, tid: Option<usize>) -> Slot<'_> {
        let cell = &self.ops[(op as usize).min(MAX_OPS)];
        let mut p = cell.load(Ordering::Acquire);
        if p.is_null() {
            p = self.alloc(cell);
        }
        // SAFETY: published below, freed only in `drop` (M3).
        let slots = unsafe { &*p };
        match tid {
            Some(t) => Slot::Own(slots.own(t)),
            None => slots.slot(),
        }
    }

    #[cold]
    fn alloc(&self, cell: &AtomicPtr<Slots>) -> *mut Slots {
        let fresh = Box::into_raw(Box::new(Slots::new(self.width)));
        match cell.compare_exchange(
            core::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: never shared.
                drop(unsafe { Box::from_raw(fresh) });
                winner
            }
        }
    }

    #[inline]
    pub(crate) fn created(&self, op: u32, tid: Option<usize>) {
        add(&self.slot(op, tid), W_CREATED, 1);
    }

    /// A context's release: its lifetime, and its overrun if it had a deadline that passed.
    #[inline]
    pub(crate) fn released(
        &self,
        op: u32,
        tid: Option<usize>,
        lifetime_ms: u32,
        overrun_ms: Option<u32>,
    ) {
        let slot = self.slot(op, tid);
        add(&slot, W_RELEASED, 1);
        self.lifetime.observe(&slot, u64::from(lifetime_ms));
        if let Some(o) = overrun_ms {
            self.overrun.observe(&slot, u64::from(o));
        }
    }

    #[inline]
    pub(crate) fn cancelled(&self, op: u32, reason: usize) {
        add(
            &self.slot(op, crate::pool::tid::current()),
            W_CANCELLED + reason,
            1,
        );
    }

    /// Counts of every operation seen so far, by op id (0: no label).
    pub(crate) fn snapshot(&self) -> Vec<(u32, OpCounts)> {
        let mut out = Vec::new();
        for (op, cell) in self.ops.iter().enumerate() {
            let p = cell.load(Ordering::Acquire);
            if p.is_null() {
                continue;
            }
            // SAFETY: published by `alloc`, freed only in `drop` (M3).
            let slots = unsafe { &*p };
            // M2: released first, so that created − released is never negative.
            let released = slots.sum(W_RELEASED);
            let created = slots.sum(W_CREATED);
            out.push((
                op as u32,
                OpCounts {
                    created,
                    released,
                    cancelled: core::array::from_fn(|r| slots.sum(W_CANCELLED + r)),
                    lifetime: self.lifetime.snapshot(slots),
                    overrun: self.overrun.snapshot(slots),
                },
            ));
        }
        out
    }

    /// Empty histograms with this pool's bounds (for families with no series yet).
    pub(crate) fn empty(&self) -> OpCounts {
        let h = |b: &Buckets| crate::metrics::HistogramSnapshot {
            bounds: b.seconds.to_vec(),
            counts: vec![0; b.ms.len() + 1],
            sum: 0.0,
        };
        OpCounts {
            created: 0,
            released: 0,
            cancelled: [0; 5],
            lifetime: h(&self.lifetime),
            overrun: h(&self.overrun),
        }
    }
}

impl Drop for ContextMetrics {
    fn drop(&mut self) {
        for cell in self.ops.iter() {
            let p = cell.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: allocated by `alloc`; the pool is being freed (M3).
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}
