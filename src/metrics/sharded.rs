//! Sharded counters, gauges and histograms: one single-writer slot per thread, summed on read.
//!
//! ```text
//!   thread id t (pool::tid, dense, reused)  ──►  chunk t / 16, slot t % 16
//!   chunk: 16 slots × stride words, each slot on its own 128-byte lines (no false sharing)
//!   slot:  [w0 .. w(width-1)]  counter: 1 word · gauge: 1 word · histogram: buckets + sum
//! ```
//!
//! An update is a plain load and store on the calling thread's slot (no read-modify-write, no
//! shared cache line); a read sums every slot. A thread that exits leaves its slot behind with
//! its counts, and the next thread to get its id continues from there, so nothing counted is
//! ever lost. Threads without an id (more than 4,095 at once) share one overflow slot updated
//! with `fetch_add`.
//!
//! Invariants (cited as **M1**..**M3**):
//!
//! - **M1** a slot is written only by the thread holding its id (tid T1: the registry lock
//!   orders one holder's writes before the next holder's), so load + store loses no update.
//! - **M2** updates are `Release` stores and reads are `Acquire` loads, so a reader that sees
//!   an update also sees everything the writer did before it (e.g. a release count read first
//!   implies the matching creation count is visible: an `active` gauge computed as
//!   created − released, reading `released` first, is never negative).
//!   A snapshot read while a histogram is being updated may include an observation's bucket
//!   count before its sum (the count is stored first).
//! - **M3** chunks are allocated once (published by CAS) and freed only when the metric is
//!   dropped.

use core::fmt;
use core::ptr;

use crate::pool::tid;
use crate::sync::{AtomicPtr, AtomicU64, Ordering};

const CHUNK: usize = 16;
/// Words per 128 bytes: slots are padded to a multiple of this.
const LINE_WORDS: usize = 16;

/// Per-thread slots of `width` words.
pub(crate) struct Slots {
    width: usize,
    stride: usize,
    chunks: Box<[AtomicPtr<AtomicU64>]>,
    overflow: Box<[AtomicU64]>,
}

// SAFETY: the chunk pointers point to arrays of atomics owned by this value (M3).
unsafe impl Send for Slots {}
// SAFETY: as for `Send`; every shared access is atomic.
unsafe impl Sync for Slots {}

/// Where the calling thread writes.
pub(crate) enum Slot<'a> {
    /// Its own slot: load + store (M1).
    Own(&'a [AtomicU64]),
    /// The shared overflow slot (tid T2): `fetch_add`.
    Shared(&'a [AtomicU64]),
}

impl Slots {
    pub(crate) fn new(width: usize) -> Self {
        let stride = width.div_ceil(LINE_WORDS) * LINE_WORDS;
        Slots {
            width,
            stride,
            chunks: (0..tid::MAX_THREADS.div_ceil(CHUNK))
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
            overflow: (0..width).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The calling thread's slot.
    #[inline]
    pub(crate) fn slot(&self) -> Slot<'_> {
        match tid::current() {
            Some(t) => Slot::Own(self.own(t)),
            None => Slot::Shared(&self.overflow),
        }
    }

    #[inline(always)]
    pub(crate) fn own(&self, t: usize) -> &[AtomicU64] {
        let mut p = self.chunks[t / CHUNK].load(Ordering::Acquire);
        if p.is_null() {
            p = self.alloc(t / CHUNK);
        }
        // SAFETY: `p` points to `CHUNK * stride` atomics (M3) and `t % CHUNK < CHUNK`.
        unsafe { core::slice::from_raw_parts(p.add((t % CHUNK) * self.stride), self.width) }
    }

    #[cold]
    fn alloc(&self, c: usize) -> *mut AtomicU64 {
        let fresh: Box<[AtomicU64]> = (0..CHUNK * self.stride)
            .map(|_| AtomicU64::new(0))
            .collect();
        let fresh = Box::into_raw(fresh).cast::<AtomicU64>();
        match self.chunks[c].compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: `fresh` was never shared; rebuilt with the length it was made with.
                drop(unsafe {
                    Box::from_raw(ptr::slice_from_raw_parts_mut(fresh, CHUNK * self.stride))
                });
                winner
            }
        }
    }

    /// Calls `f` with every slot, the overflow slot included.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[AtomicU64])) {
        for chunk in self.chunks.iter() {
            let p = chunk.load(Ordering::Acquire);
            if p.is_null() {
                continue;
            }
            for s in 0..CHUNK {
                // SAFETY: a published chunk of `CHUNK * stride` atomics (M3).
                f(unsafe { core::slice::from_raw_parts(p.add(s * self.stride), self.width) });
            }
        }
        f(&self.overflow);
    }

    /// The sum of word `w` over every slot (wrapping).
    pub(crate) fn sum(&self, w: usize) -> u64 {
        let mut total = 0u64;
        self.for_each(|s| total = total.wrapping_add(s[w].load(Ordering::Acquire)));
        total
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for chunk in self.chunks.iter() {
            let p = chunk.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: allocated by `alloc` with this length; nothing else holds it (M3).
                drop(unsafe {
                    Box::from_raw(ptr::slice_from_raw_parts_mut(p, CHUNK * self.stride))
                });
            }
        }
    }
}

/// Adds `n` to word `w` of the calling thread's slot.
#[inline(always)]
pub(crate) fn add(slot: &Slot<'_>, w: usize, n: u64) {
    match slot {
        // M1: the only writer of this slot; Release for M2.
        Slot::Own(s) => s[w].store(
            s[w].load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Release,
        ),
        Slot::Shared(s) => {
            s[w].fetch_add(n, Ordering::AcqRel);
        }
    }
}

/// A counter that only goes up, updated without a shared cache line.
///
/// ```
/// use ctxpool::metrics::ShardedCounter;
///
/// let c = ShardedCounter::new();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| (0..1000).for_each(|_| c.inc()));
///     }
/// });
/// assert_eq!(c.get(), 4000);
/// ```
pub struct ShardedCounter {
    slots: Slots,
}

impl ShardedCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        ShardedCounter {
            slots: Slots::new(1),
        }
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        add(&self.slots.slot(), 0, n);
    }

    /// The total, summed over every thread that ever counted (exited ones included).
    pub fn get(&self) -> u64 {
        self.slots.sum(0)
    }
}

impl Default for ShardedCounter {
    fn default() -> Self {
        ShardedCounter::new()
    }
}

impl fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ShardedCounter").field(&self.get()).finish()
    }
}

/// A gauge that goes up and down (an in-flight count), updated without a shared cache line:
/// each thread keeps its own net change, and the value is their sum, so an increment on one
/// thread and the matching decrement on another cancel out exactly.
///
/// ```
/// use ctxpool::metrics::ShardedGauge;
///
/// let g = ShardedGauge::new();
/// g.add(5);
/// std::thread::scope(|s| {
///     s.spawn(|| g.sub(2));
/// });
/// assert_eq!(g.get(), 3);
/// ```
pub struct ShardedGauge {
    slots: Slots,
}

impl ShardedGauge {
    /// A gauge at zero.
    pub fn new() -> Self {
        ShardedGauge {
            slots: Slots::new(1),
        }
    }

    /// Adds `n` (may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        add(&self.slots.slot(), 0, n as u64);
    }

    /// Subtracts `n`.
    #[inline]
    pub fn sub(&self, n: i64) {
        self.add(n.wrapping_neg());
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.slots.sum(0) as i64
    }
}

impl Default for ShardedGauge {
    fn default() -> Self {
        ShardedGauge::new()
    }
}

impl fmt::Debug for ShardedGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ShardedGauge").field(&self.get()).finish()
    }
}

/// A histogram with fixed bucket bounds, updated without a shared cache line: each thread
/// counts into its own buckets, and a snapshot sums them. Memory is fixed by the number of
/// buckets, whatever the number of observations (nothing stores samples).
///
/// ```
/// use ctxpool::metrics::ShardedHistogram;
///
/// let h = ShardedHistogram::new(&[0.001, 0.01, 0.1]).unwrap();
/// h.observe(0.005);
/// h.observe(0.05);
/// h.observe(5.0);
/// let s = h.snapshot();
/// assert_eq!(s.count(), 3);
/// assert_eq!(s.cumulative(), vec![(0.001, 0), (0.01, 1), (0.1, 2), (f64::INFINITY, 3)]);
/// assert!((s.sum - 5.055).abs() < 1e-9);
/// ```
pub struct ShardedHistogram {
    bounds: Box<[f64]>,
    /// Words: one count per bucket (the last is `+Inf`), then the sum's bits.
    slots: Slots,
}

/// Bucket bounds that are empty, not finite or not strictly increasing.
#[derive(Clone, Debug, PartialEq)]
pub struct BadBuckets(pub String);

impl fmt::Display for BadBuckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid histogram buckets: {}", self.0)
    }
}

impl std::error::Error for BadBuckets {}

impl ShardedHistogram {
    /// A histogram with these upper bounds (finite, strictly increasing; a `+Inf` bucket is
    /// implied).
    pub fn new(bounds: &[f64]) -> Result<Self, BadBuckets> {
        if bounds.is_empty() {
            return Err(BadBuckets("no bounds".into()));
        }
        if let Some(b) = bounds.iter().find(|b| !b.is_finite()) {
            return Err(BadBuckets(format!("{b} is not finite")));
        }
        if let Some(w) = bounds.windows(2).find(|w| w[0] >= w[1]) {
            return Err(BadBuckets(format!(
                "{} is not above {}: bounds must increase",
                w[1], w[0]
            )));
        }
        Ok(ShardedHistogram {
            bounds: bounds.into(),
            slots: Slots::new(bounds.len() + 2),
        })
    }

    /// The upper bounds (without `+Inf`).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Records one observation. A NaN is ignored (it belongs to no bucket, and would make the
    /// sum NaN for good).
    #[inline]
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let b = self.bounds.partition_point(|&ub| ub < v);
        let slot = self.slots.slot();
        add(&slot, b, 1);
        let sum = self.bounds.len() + 1;
        match &slot {
            Slot::Own(s) => {
                let old = f64::from_bits(s[sum].load(Ordering::Relaxed));
                s[sum].store((old + v).to_bits(), Ordering::Release);
            }
            Slot::Shared(s) => {
                let _ = s[sum].fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                    Some((f64::from_bits(bits) + v).to_bits())
                });
            }
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let n = self.bounds.len() + 1;
        let mut counts = vec![0u64; n];
        let mut sum = 0.0;
        self.slots.for_each(|s| {
            for (c, w) in counts.iter_mut().zip(s.iter()) {
                *c = c.wrapping_add(w.load(Ordering::Acquire));
            }
            sum += f64::from_bits(s[n].load(Ordering::Acquire));
        });
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            counts,
            sum,
        }
    }
}

impl fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedHistogram")
            .field("bounds", &self.bounds)
            .field("count", &self.snapshot().count())
            .finish()
    }
}

/// A histogram's counts at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds, without `+Inf`.
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); one more than `bounds`, the last for `+Inf`.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cumulative counts by upper bound, `+Inf` last (Prometheus's `_bucket{le}` series).
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        self.bounds
            .iter()
            .copied()
            .chain(core::iter::once(f64::INFINITY))
            .zip(&self.counts)
            .map(|(b, c)| {
                acc += c;
                (b, acc)
            })
            .collect()
    }

    /// Adds another snapshot with the same bounds.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }
}
