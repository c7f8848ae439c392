//! Per-thread free lists.
//!
//! Each thread id (see `tid.rs`) has one shard per pool, allocated on the thread's first use of
//! that pool. A shard holds two free lists of slot indices, linked through the nodes' `next`
//! field:
//!
//! ```text
//!   local  (head, len) ── owner thread, plain loads and stores inside its gate (S9);
//!                         a starving thread takes all of it through the handshake (S10)
//!   remote  AtomicU64  ── (count << 32 | head): other threads push (CAS); the owner or a
//!                         starving thread takes all (swap)
//! ```
//!
//! A thread that makes and drops its own contexts only ever touches its own shard's cache lines
//! (it is `CachePadded`) and the nodes themselves. A node freed on another thread goes back to
//! its owner shard's `remote` list, which lies apart from the owner's words (S12).
//!
//! Invariants:
//!
//! - **S1** `local` is read and written only by the thread holding the shard's id (tid T1),
//!   inside its gate, or by a thief that won the reclaim handshake (S9, S10).
//! - **S2** `remote` is a Treiber stack with push-only CAS and take-all `swap`: nothing pops a
//!   single element, so there is no ABA: a pusher's `next` write is ordered before its `Release`
//!   CAS, and the taker's `Acquire` swap sees the whole chain. The word also counts the chain
//!   (each push adds one in the same CAS; fewer than 2^32 slots exist), so the owner takes its
//!   own chain without walking it: its slots are already its own (pool P1).
//! - **S3** every free slot is on exactly one list (a local, a remote, or the pool's spill
//!   list), and a slot on a list has refs 0 (slot L1); whoever removes it from a list owns it
//!   (pool P2).
//! - **S4** the counters `acquired` / `released` are written only by the shard's owner (load +
//!   store, no RMW) and summed on read.
//!
//! # Reclaiming cached slots without a lock on the owner's path
//!
//! A thread caches up to `thread_cache` free slots on its local list. If it then goes idle,
//! those slots must not be lost to the other threads: a thread that finds every shared source
//! empty takes whole local lists of other shards, idle or live, so that a pool refuses a
//! context only when `capacity` contexts are really in use (modulo operations in flight). The
//! owner's side stays plain loads and stores; the rare thief pays the heavy fence. The two
//! words, on the shard's own cache line:
//!
//! ```text
//!   gate   owner-written: IN while inside a local-list operation, else len << 1 (a hint)
//!   steal  0, or 1 while a thief holds the local list (CAS 0 → 1 by thieves only)
//!
//!   owner  enter: gate = IN; light fence; steal == 0 ? go on : (gate = 0; wait steal == 0; retry)
//!          exit:  gate = len << 1 (Release)
//!   thief  gate >> 1 == 0 ? skip : CAS steal 0 → 1 (else skip); heavy fence;
//!          wait gate & IN == 0 (Acquire); take the whole list; steal = 0 (Release)
//! ```
//!
//! - **S9** the owner touches `local` only between an `enter` that saw `steal == 0` and the
//!   following `exit`; a thief touches it only between the `gate & IN == 0` it waited for and
//!   its `steal = 0`. The store to `gate` and the load of `steal` on the owner's side, and the
//!   store to `steal` and the load of `gate` on the thief's, are separated by the asymmetric
//!   fence pair (`sync::barrier`: light on the owner, heavy on the thief), a Dekker handshake:
//!   at least one side sees the other's store, so the owner backs off or the thief waits, and
//!   never both go on. A backed-off owner stores `gate = 0` (the thief empties the list) and
//!   waits for `steal == 0` with `Acquire`, so it sees the emptied list; a thief's `Acquire`
//!   load of a clear `gate` sees every write of the owner's last operation (its `Release`
//!   exit), including the `next` links of the chain it takes.
//! - **S10** at most one thief per shard (the CAS on `steal`), and a thief never holds its own
//!   gate while it waits for another's (it steals from the slow path, outside its own gate),
//!   so two starving threads stealing from each other cannot deadlock. The thief owns the
//!   stolen chain (S3, P2) and keeps at most `thread_cache` of it (pool P6).
//! - **S11** `gate >> 1` is only a hint: a thief that reads 0 skips the shard without a fence,
//!   so a pool that is really exhausted (every hint 0) costs no heavy fence per refusal. A
//!   thief clears the hint of the list it emptied (a CAS from the clear value it waited for,
//!   which fails if the owner has stepped in since), so a stale non-zero hint lasts at most
//!   until the next thief. A thief that loses the `steal` CAS on a shard with a non-zero hint
//!   tries the shared sources once more (the winner spills what it does not keep, P6).
//!
//! The owner's closures in `with_local` do not panic (list and link updates only); a panic
//! there would leave `gate` at `IN` and the shard's thieves and owner waiting for each other.
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
//!   shard t: leases[p % 8]          = { key: (p, gen), local: made - released here }
//!            far.lease_remote[p % 8] = released elsewhere
//!   live children of p counted by shard t = local - lease_remote   (wrapping)
//! ```
//!
//! Which children lease (`PoolInner::lease`): a child whose parent is a root, was made by
//! another thread, or is already leased by another thread. A child made on the thread that
//! made its (non-root) parent, which nobody else leases, holds a reference on the parent
//! instead: that parent's line is its own thread's, and re-keying an entry for each such
//! short-lived parent (usually one or two children) costs more than two reference counts.
//! `PoolBuilder::testing_lease_own_children` makes every child lease, for the loom models.
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
//!
//! # Layout
//!
//! - **S12** the words other threads write in the normal course — the `remote` free list and
//!   the lease entries' remote counts — live in [`Far`], on cache lines of their own after the
//!   owner's words (`repr(C)`, `CachePadded`). The owner's list head, counters and lease
//!   entries are written on every context it makes or drops; had they shared a line with the
//!   remote words, every release on another thread would take that line away from the owner
//!   (a miss on its next operation). Only the layout depends on this; the orderings above are
//!   per word and do not. Measured: `server_mix/ctxpool` 393 → 373 ns median (README).

use crate::sync::cell::UnsafeCell;
use crate::sync::{barrier, spin_hint, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use crate::time::ring::Ring;
use crate::tree::node::NIL;
use crossbeam_utils::CachePadded;

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

/// Counts one parent's live children made by one shard (S5..S7); the children released by
/// other threads are counted apart, in [`Far::lease_remote`] (S12).
pub(crate) struct Lease {
    /// `(gen << 32) | (idx + 1)` of the parent, or 0.
    pub(crate) key: AtomicU64,
    /// Children made here minus children released here (owner only).
    pub(crate) local: AtomicU32,
}

impl Lease {
    fn new() -> Self {
        Lease {
            key: AtomicU64::new(0),
            local: AtomicU32::new(0),
        }
    }

    /// The key of parent `(idx, gen)`.
    #[inline]
    pub(crate) fn key(idx: u32, gen: u32) -> u64 {
        (u64::from(gen) << 32) | (u64::from(idx) + 1)
    }
}

/// One step of waiting for the other side of the handshake, which holds it for a few
/// instructions unless it was preempted: spin a little, then yield the CPU to it.
fn wait_step(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        spin_hint();
    } else {
        #[cfg(not(loom))]
        std::thread::yield_now();
        #[cfg(loom)]
        spin_hint();
    }
}

/// What [`Shard::steal_local`] got.
#[must_use]
pub(crate) enum Steal {
    /// The whole local list, now the thief's (S3).
    Took(FreeList),
    /// Nothing cached (by the hint, or an empty list).
    Empty,
    /// Another thief holds this shard's list; it may have slots (try again later).
    Contended,
}

/// An empty remote list: head `NIL`, count 0.
const REMOTE_EMPTY: u64 = NIL as u64;

/// `gate` bit: the owner is inside a local-list operation (S9).
const IN: u32 = 1;

/// The words of a shard that other threads write in the normal course (S12): the remote free
/// list and the counts of children released elsewhere, on lines of their own.
pub(crate) struct Far {
    /// Slots freed by other threads, and their count: `(count << 32) | head` (S2).
    pub(crate) remote: AtomicU64,
    /// Per lease entry: children released by other threads (S5).
    pub(crate) lease_remote: [AtomicU32; LEASES],
}

/// One thread's free lists and counters in one pool. `repr(C)`: the owner's words first, then
/// the words other threads write ([`Far`], cache-line aligned), so that a remote free or
/// release does not take the owner's hot line away (S12).
#[repr(C)]
pub(crate) struct Shard {
    /// Owner-only list, reclaimable by a thief (S1, S9).
    pub(crate) local: UnsafeCell<FreeList>,
    /// `IN`, or the local list's length shifted left by one (S9, S11).
    gate: AtomicU32,
    /// 1 while a thief holds the local list (S9, S10).
    steal: AtomicU32,
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
    /// The words other threads write (S12).
    pub(crate) far: CachePadded<Far>,
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
            gate: AtomicU32::new(0),
            steal: AtomicU32::new(0),
            acquired: AtomicU64::new(0),
            released: AtomicU64::new(0),
            leases: core::array::from_fn(|_| Lease::new()),
            ring: AtomicPtr::new(core::ptr::null_mut()),
            armed: AtomicU64::new(0),
            clamped: AtomicU64::new(0),
            far: CachePadded::new(Far {
                remote: AtomicU64::new(REMOTE_EMPTY),
                lease_remote: core::array::from_fn(|_| AtomicU32::new(0)),
            }),
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

    /// Runs `f` on the local list as its owner, inside the gate (S9); returns what `f` returns.
    ///
    /// # Safety
    /// The caller holds the shard's thread id (S1) and is not inside this shard's gate already.
    #[inline(always)]
    pub(crate) unsafe fn with_local<R>(&self, f: impl FnOnce(&mut FreeList) -> R) -> R {
        loop {
            self.gate.store(IN, Ordering::Relaxed);
            barrier::light();
            // Acquire: a thief's `steal = 0` published the list it emptied.
            if self.steal.load(Ordering::Acquire) == 0 {
                break;
            }
            self.back_off();
        }
        // SAFETY: S9: inside the gate with no thief, we alone touch the list.
        let (r, len) = self.local.with_mut(|l| unsafe {
            let l = &mut *l;
            (f(l), l.len)
        });
        // Release: a thief that reads the gate clear sees this operation's writes (S9).
        self.gate.store(len.saturating_mul(2), Ordering::Release);
        r
    }

    /// A thief holds the list: step out of the gate and wait until it is done (S9).
    #[cold]
    #[inline(never)]
    fn back_off(&self) {
        // The thief takes the whole list, so its length will be 0.
        self.gate.store(0, Ordering::Release);
        let mut spins = 0u32;
        while self.steal.load(Ordering::Acquire) != 0 {
            wait_step(&mut spins);
        }
    }

    /// Takes this shard's whole local list as a thief (S9..S11).
    ///
    /// The caller must not be inside any shard's gate (S10).
    #[cold]
    pub(crate) fn steal_local(&self, fences: &AtomicU64) -> Steal {
        if self.gate.load(Ordering::Relaxed) >> 1 == 0 {
            return Steal::Empty;
        }
        if self
            .steal
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Steal::Contended;
        }
        fences.fetch_add(1, Ordering::Relaxed);
        barrier::heavy();
        // Acquire: pairs with the owner's `Release` exit or back-off (S9).
        let mut spins = 0u32;
        let mut seen = self.gate.load(Ordering::Acquire);
        while seen & IN != 0 {
            wait_step(&mut spins);
            seen = self.gate.load(Ordering::Acquire);
        }
        // SAFETY: S9: we hold `steal` and saw the gate clear after the heavy fence, so the
        // owner is out of the list and stays out until we store `steal = 0`.
        let list = self
            .local
            .with_mut(|l| unsafe { core::mem::replace(&mut *l, FreeList::EMPTY) });
        // S11: the list is empty now; clear the hint unless the owner has stepped in since
        // (while we hold `steal` it can only store `IN` and then 0, never `seen` again), so the
        // next thief does not pay a fence for nothing.
        let _ = self
            .gate
            .compare_exchange(seen, 0, Ordering::Relaxed, Ordering::Relaxed);
        self.steal.store(0, Ordering::Release);
        if list.head == NIL {
            Steal::Empty
        } else {
            Steal::Took(list)
        }
    }

    /// Takes the whole remote list: its head and length (S2).
    #[inline]
    pub(crate) fn take_remote(&self) -> (u32, u32) {
        if self.far.remote.load(Ordering::Relaxed) == REMOTE_EMPTY {
            return (NIL, 0);
        }
        let w = self.far.remote.swap(REMOTE_EMPTY, Ordering::Acquire);
        (w as u32, (w >> 32) as u32)
    }

    /// Bumps a single-writer counter (S4).
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// S11: a steal clears the hint of the list it emptied, so the next thief skips the shard
    /// without a fence (found by review: the hint stayed stale while the owner idled).
    #[test]
    fn steal_clears_the_hint() {
        let s = Shard::new();
        // SAFETY: this thread stands in for the shard's owner; nothing else touches it.
        unsafe {
            s.with_local(|l| {
                *l = FreeList { head: 7, len: 3 };
            })
        };
        assert_eq!(s.gate.load(Ordering::Relaxed) >> 1, 3);
        let fences = AtomicU64::new(0);
        match s.steal_local(&fences) {
            Steal::Took(list) => assert_eq!((list.head, list.len), (7, 3)),
            _ => panic!("nothing taken"),
        }
        assert_eq!(s.gate.load(Ordering::Relaxed), 0, "stale hint");
        assert!(matches!(s.steal_local(&fences), Steal::Empty));
        assert_eq!(
            fences.load(Ordering::Relaxed),
            1,
            "a fence for an empty hint"
        );
    }
}
