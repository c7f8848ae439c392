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
//! - **S1** `local` is read and written only by the thread holding the shard's id (tid T1).
//! - **S2** `remote` is a Treiber stack with push-only CAS and take-all `swap`: nothing pops a
//!   single element, so there is no ABA: a pusher's `next` write is ordered before its `Release`
//!   CAS, and the taker's `Acquire` swap sees the whole chain.
//! - **S3** every free slot is on exactly one list (a local, a remote, or the pool's spill
//!   list), and a slot on a list has refs 0 (slot L1); whoever removes it from a list owns it
//!   (pool P2).
//! - **S4** the counters `acquired` / `released` are written only by the shard's owner (load +
//!   store, no RMW) and summed on read.

use crate::sync::cell::UnsafeCell;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
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
}

impl Shard {
    pub(crate) fn new() -> Self {
        Shard {
            local: UnsafeCell::new(FreeList::EMPTY),
            remote: AtomicU32::new(NIL),
            acquired: AtomicU64::new(0),
            released: AtomicU64::new(0),
        }
    }

    /// Bumps a single-writer counter (S4).
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}
