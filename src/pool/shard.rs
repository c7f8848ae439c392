//! Per-thread free lists.
//!
//! Each thread id (see `tid.rs`) has one shard per pool, allocated on the thread's first use of
//! that pool. A shard holds two free lists of slot indices, linked through the nodes' `next`
//! field:
//!
//! ```text
//!   local  (head, len) ── owner thread only, plain loads and stores
//!   remote  AtomicU32  ── other threads push (CAS); owner or a starving thread takes all (swap)
//! ```
//!
//! A thread that makes and drops its own contexts only ever touches its own shard's cache line
//! (it is `CachePadded`) and the nodes themselves. A node freed on another thread goes back to
//! its owner shard's `remote` list.
//!
//! Invariants:
//!
//! - **S1** `local` is read and written only by the thread holding the shard's id (tid T1), or,
//!   when the id is free, by a thread holding the id registry's lock (tid T3).
//! - **S2** `remote` is a Treiber stack with push-only CAS and take-all `swap`: nothing pops a
//!   single element, so there is no ABA: a pusher's `next` write is ordered before its `Release`
//!   CAS, and the taker's `Acquire` swap sees the whole chain.
//! - **S3** every free slot is on exactly one list (a local, a remote, or the pool's spill
//!   list), and a slot on a list has refs 0 (slot L1); whoever removes it from a list owns it
//!   (pool P2).
//! - **S4** the counters `acquired` / `released` are written only by the shard's owner (load +
//!   store, no RMW) and summed on read.
//!
//! # Leases: counting children without writing to the parent
//!
//! A child must keep its parent's slot from being reused (tree I1), but a reference count on
//! the parent would make every child creation and release write the parent's cache line, which
//! all threads making children of one long-lived root share. Instead, each shard has
//! [`LEASES`] direct-mapped lease entries: entry `p % LEASES` counts the live children of
//! parent `p` that this shard's thread made.
//!
//! ```text
//!   shard t: leases[p % 8] = { key: (p, gen), local: made - released here, remote: released elsewhere }
//!   live children of p counted by shard t = local - remote   (wrapping)
//! ```
//!
//! - **S5** `key`, `local` and the reset of `remote` are written only by the shard's owner;
//!   `remote` is otherwise only incremented (`fetch_add`) by other threads releasing a child.
//! - **S6** an entry is re-keyed only when its count is zero, so a count never mixes two
//!   parents; re-keying follows the seqlock pattern (key cleared, `Release` fence, counts
//!   reset, new key stored with `Release`) so a concurrent reader can tell a torn read (the key
//!   changed: the old count was zero).
//! - **S7** a lease for `p` is only taken by a thread holding a handle to `p`, so once `p`'s
//!   reference count is zero its lease counts only go down.
//! - **S8** the lease counters are `u32`s that wrap: `local − remote` (wrapping) is the exact
//!   number of live children as long as that number is below 2^32, and it never exceeds the
//!   slots in circulation (at most `capacity` ≤ 2^30, pool P5). So a counter that wraps after
//!   2^32 children made (or released) on one shard is harmless, however long the process
//!   runs. The key packs the parent's generation and `idx + 1` (`idx` < 2^31, spare slots
//!   included) into one `u64`, so keys of distinct incarnations never collide (slot L2).

use crate::sync::cell::UnsafeCell;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use crate::time::ring::Ring;
use crate::tree::node::NIL;

/// A singly linked list of free slots: its head and length.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FreeList {
    pub(crate) head: u32,
    pub(crate) len: u32,
}

impl FreeList {
    pub(crate) const EMPTY: FreeList = FreeList { head: NIL, len: 0 };
}

/// Lease entries per shard.
pub(crate) const LEASES: usize = 8;

/// Counts one parent's live children made by one shard (S5..S7).
pub(crate) struct Lease {
    /// `(gen << 32) | (idx + 1)` of the parent, or 0.
    pub(crate) key: AtomicU64,
    /// Children made here minus children released here (owner only).
    pub(crate) local: AtomicU32,
    /// Children released by other threads.
    pub(crate) remote: AtomicU32,
}

impl Lease {
    fn new() -> Self {
        Lease {
            key: AtomicU64::new(0),
            local: AtomicU32::new(0),
            remote: AtomicU32::new(0),
        }
    }

    /// The key of parent `(idx, gen)`.
    #[inline]
    pub(crate) fn key(idx: u32, gen: u32) -> u64 {
        (u64::from(gen) << 32) | (u64::from(idx) + 1)
    }
}

/// One thread's free lists and counters in one pool.
pub(crate) struct Shard {
    /// Owner-only list (S1).
    pub(crate) local: UnsafeCell<FreeList>,
    /// Slots freed by other threads (S2).
    pub(crate) remote: AtomicU32,
    /// Contexts handed out by this shard's owner (S4).
    pub(crate) acquired: AtomicU64,
    /// Contexts released by this shard's owner (S4).
    pub(crate) released: AtomicU64,
    /// Child counts by parent (S5..S7).
    pub(crate) leases: [Lease; LEASES],
    /// This thread's arm ring (time ring R1), allocated by the owner on its first timer and
    /// freed with the pool.
    pub(crate) ring: AtomicPtr<Ring>,
    /// Timers armed by this shard's owner (S4).
    pub(crate) armed: AtomicU64,
    /// Deadlines this shard's owner cut to the maximum timeout (S4).
    pub(crate) clamped: AtomicU64,
    /// Per-operation metric words counted by this shard's owner (S4, metrics M1).
    pub(crate) ops: crate::metrics::ops::Blocks,
}

impl Drop for Shard {
    fn drop(&mut self) {
        let p = self.ring.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: allocated by `ring` with `Box::into_raw`; the shard is being freed with
            // its pool, so no producer or driver can reach the ring any more.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl Shard {
    pub(crate) fn new() -> Self {
        Shard {
            local: UnsafeCell::new(FreeList::EMPTY),
            remote: AtomicU32::new(NIL),
            acquired: AtomicU64::new(0),
            released: AtomicU64::new(0),
            leases: core::array::from_fn(|_| Lease::new()),
            ring: AtomicPtr::new(core::ptr::null_mut()),
            armed: AtomicU64::new(0),
            clamped: AtomicU64::new(0),
            ops: crate::metrics::ops::Blocks::new(),
        }
    }

    /// This shard's arm ring, allocated on first use.
    ///
    /// # Safety
    /// The caller holds the shard's thread id (S1): it is the ring's producer.
    #[inline(always)]
    pub(crate) unsafe fn ring(&self) -> &Ring {
        let p = self.ring.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: published by `new_ring` from `Box::into_raw`, freed only with the pool.
            return unsafe { &*p };
        }
        // SAFETY: forwarded contract: we are the shard's owner.
        unsafe { self.new_ring() }
    }

    /// Allocates and publishes this shard's ring, on its first timer.
    ///
    /// # Safety
    /// The caller holds the shard's thread id (S1): the only thread that stores `ring`.
    #[cold]
    #[inline(never)]
    unsafe fn new_ring(&self) -> &Ring {
        let fresh = Box::into_raw(Box::new(Ring::new()));
        // Release: the driver's `Acquire` load sees an initialised ring. Only the owner stores.
        self.ring.store(fresh, Ordering::Release);
        // SAFETY: just published; freed only with the pool.
        unsafe { &*fresh }
    }

    /// Bumps a single-writer counter (S4).
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}
