//! Per-operation context metrics, kept per thread in the pool's shards (the discipline of
//! module `sharded`, M1–M3).
//!
//! Each operation label ([`Op`](crate::Op) id, 0 for contexts without one) gets, on first
//! use by a thread in a pool, a block of words in that thread's shard:
//!
//! ```text
//!   created · cancelled[explicit, deadline, parent, exhausted, shutdown]
//!   lifetime buckets[.., +Inf] · lifetime sum (ms) · overrun buckets[.., +Inf] · overrun sum (ms)
//! ```
//!
//! - *created* is counted when a context is published; *released* is the lifetime histogram's
//!   count, observed when its slot is torn down (so `active = created − released` is exact, and
//!   never negative when read released-first, M2); `after_func` registrations are not contexts
//!   and are not counted. A release thus costs two counter words (its bucket and the sum), not
//!   three, and the sum is left alone for a lifetime under a millisecond (it would add 0).
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

use crate::metrics::sharded::{add, Slot};
use crate::pool::shard::Shard;
use crate::sync::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use crate::values::MAX_OPS;

/// Cancellation reasons, in word order.
pub const REASONS: [&str; 5] = ["explicit", "deadline", "parent", "exhausted", "shutdown"];
pub(crate) const R_EXPLICIT: usize = 0;
pub(crate) const R_DEADLINE: usize = 1;
pub(crate) const R_PARENT: usize = 2;
pub(crate) const R_EXHAUSTED: usize = 3;
pub(crate) const R_SHUTDOWN: usize = 4;

const W_CREATED: usize = 0;
const W_CANCELLED: usize = 1;

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
        if ms == 0 {
            // Most contexts live under a millisecond: the first bucket (every bound is at
            // least 0 ms), and nothing to add to the sum.
            add(slot, self.base, 1);
            return;
        }
        // Linear from the smallest bound: most contexts live a few milliseconds, so this
        // usually stops at the first compare.
        let b = self
            .ms
            .iter()
            .position(|&ub| ms <= ub)
            .unwrap_or(self.ms.len());
        add(slot, self.base + b, 1);
        add(slot, self.base + self.ms.len() + 1, ms);
    }

    fn snapshot(&self, blocks: &[&[AtomicU64]]) -> crate::metrics::HistogramSnapshot {
        let n = self.ms.len() + 1;
        let mut counts = vec![0u64; n];
        let mut sum_ms = 0u64;
        for s in blocks {
            for (i, c) in counts.iter_mut().enumerate() {
                *c = c.wrapping_add(s[self.base + i].load(Ordering::Acquire));
            }
            sum_ms = sum_ms.wrapping_add(s[self.base + n].load(Ordering::Acquire));
        }
        crate::metrics::HistogramSnapshot {
            bounds: self.seconds.to_vec(),
            counts,
            sum: sum_ms as f64 / 1e3,
        }
    }
}

/// Blocks of counter words by operation: one per shard (in `Shard::ops`), plus the shared
/// overflow. Word 0 of a block holds its length; the counters start at word 1. A block is
/// allocated on first use and freed with its shard or pool (M3). The cells are inline (8 KiB),
/// so that finding a block is one load from the shard the caller already has.
pub(crate) struct Blocks {
    cells: [AtomicPtr<AtomicU64>; MAX_OPS + 1],
}

impl Blocks {
    pub(crate) fn new() -> Self {
        Blocks {
            cells: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
        }
    }

    /// The words of `op`'s block (without the length word), allocated with `width` counters
    /// if needed.
    #[inline(always)]
    fn get(&self, op: u32, width: usize) -> &[AtomicU64] {
        let cell = &self.cells[(op as usize).min(MAX_OPS)];
        let mut p = cell.load(Ordering::Acquire);
        if p.is_null() {
            p = Self::alloc(cell, width);
        }
        // SAFETY: published by `alloc` with more than `width` words after word 0, freed only
        // in `drop` (M3).
        unsafe { core::slice::from_raw_parts(p.add(1), width) }
    }

    /// The counter words of `op`'s block, if it exists.
    fn peek(&self, op: usize) -> Option<&[AtomicU64]> {
        let p = self.cells[op].load(Ordering::Acquire);
        // SAFETY: as in `get`; word 0 is the number of words after it.
        (!p.is_null()).then(|| unsafe {
            let len = (*p).load(Ordering::Relaxed) as usize;
            core::slice::from_raw_parts(p.add(1), len)
        })
    }

    #[cold]
    fn alloc(cell: &AtomicPtr<AtomicU64>, width: usize) -> *mut AtomicU64 {
        // Whole 128-byte lines, so that different threads' blocks share as little as possible.
        let len = (width + 1).div_ceil(16) * 16;
        let block: Box<[AtomicU64]> = (0..len)
            .map(|i| AtomicU64::new(if i == 0 { len as u64 - 1 } else { 0 }))
            .collect();
        let fresh = Box::into_raw(block).cast::<AtomicU64>();
        match cell.compare_exchange(
            core::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: never shared; rebuilt with the length it was made with.
                drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(fresh, len)) });
                winner
            }
        }
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        for cell in self.cells.iter() {
            let p = cell.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: allocated by `alloc`, whose word 0 is the length minus one (M3).
                unsafe {
                    let len = (*p).load(Ordering::Relaxed) as usize + 1;
                    drop(Box::from_raw(core::ptr::slice_from_raw_parts_mut(p, len)));
                }
            }
        }
    }
}

/// The context metrics of one pool. The per-thread words live in each shard (`Shard::ops`),
/// so an update loads the block pointer from the caller's shard, then loads and stores.
pub(crate) struct ContextMetrics {
    /// `metrics.enabled` of the configuration in force.
    pub(crate) enabled: AtomicBool,
    /// Blocks of threads without a shard (tid T2), updated with `fetch_add`.
    overflow: Blocks,
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
            overflow: Blocks::new(),
            lifetime,
            overrun,
            width,
        }
    }

    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The calling thread's words for operation `op`: its shard's block (`shard` from
    /// `pool.local()`; its owner is the only writer, M1), or the shared overflow block.
    #[inline(always)]
    fn slot<'a>(&'a self, op: u32, shard: Option<&'a Shard>) -> Slot<'a> {
        match shard {
            Some(sh) => Slot::Own(sh.ops.get(op, self.width)),
            None => Slot::Shared(self.overflow.get(op, self.width)),
        }
    }

    #[inline(always)]
    pub(crate) fn created(&self, op: u32, shard: Option<&Shard>) {
        add(&self.slot(op, shard), W_CREATED, 1);
    }

    /// A context's release: its lifetime, and its overrun if it had a deadline that passed.
    #[inline]
    pub(crate) fn released(
        &self,
        op: u32,
        shard: Option<&Shard>,
        lifetime_ms: u32,
        overrun_ms: Option<u32>,
    ) {
        let slot = self.slot(op, shard);
        // The release is counted by its lifetime bucket (`released` is their sum).
        self.lifetime.observe(&slot, u64::from(lifetime_ms));
        if let Some(o) = overrun_ms {
            self.overrun.observe(&slot, u64::from(o));
        }
    }

    #[inline]
    pub(crate) fn cancelled(&self, op: u32, reason: usize, shard: Option<&Shard>) {
        add(&self.slot(op, shard), W_CANCELLED + reason, 1);
    }

    /// Counts of every operation seen so far, by op id (0: no label), summed over `shards`.
    pub(crate) fn snapshot<'a>(&'a self, shards: &[&'a Shard]) -> Vec<(u32, OpCounts)> {
        let mut out = Vec::new();
        for op in 0..=MAX_OPS {
            let blocks: Vec<&[AtomicU64]> = shards
                .iter()
                .filter_map(|sh| sh.ops.peek(op))
                .chain(self.overflow.peek(op))
                .collect();
            if blocks.is_empty() {
                continue;
            }
            let sum = |w: usize| {
                blocks
                    .iter()
                    .fold(0u64, |a, b| a.wrapping_add(b[w].load(Ordering::Acquire)))
            };
            // M2: released (the lifetime count) first, so that created − released is never
            // negative.
            let lifetime = self.lifetime.snapshot(&blocks);
            let released = lifetime.counts.iter().fold(0u64, |a, &c| a.wrapping_add(c));
            let created = sum(W_CREATED);
            out.push((
                op as u32,
                OpCounts {
                    created,
                    released,
                    cancelled: core::array::from_fn(|r| sum(W_CANCELLED + r)),
                    lifetime,
                    overrun: self.overrun.snapshot(&blocks),
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
