//! The context node: the unit the pool hands out, exactly two cache lines.
//!
//! ```text
//! line 0 (synchronisation)                      line 1 (payload, immutable while live)
//! +------+-------+-----+---------+------+       +-----+-------+------+-----+------+--------+
//! | life | state | msg | waiters | meta |  ...  | op | dl | trace | span | req | user | custom |
//! +------+-------+-----+---------+------+       +----+----+-------+------+-----+------+--------+
//!   8      8       8      8        16 + 4 + 3x4   4    4    16      8      8     8      16
//! ```
//!
//! `life` and `state` are the only words written after creation by anyone but the node's
//! owner; `meta` and the payload are written once, while the acquiring thread owns the free
//! slot (pool P2), and only read afterwards through handles that hold a reference (slot L1), so
//! they need no synchronisation of their own beyond the `Release`/`Acquire` pairs that pass
//! handles between threads. An `after_func` node keeps its closure where a context keeps its
//! values.

use core::mem::MaybeUninit;
use core::panic::Location;

use crate::pool::slot::Life;
use crate::sync::cell::UnsafeCell;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64};
use crate::tree::wait::Waiter;
use crate::values::ValueVTable;

/// "No slot": the end of a list, or the parent of a root.
pub(crate) const NIL: u32 = u32::MAX;

// Immutable per-incarnation flags (meta.flags).
/// `without_cancel`: neither cancelled by its parent nor by anything else.
pub(crate) const F_DETACHED: u16 = 1 << 0;
/// Can never be cancelled: no owner and no cancellable ancestor.
pub(crate) const F_NEVER: u16 = 1 << 1;
/// An `after_func` registration; the payload holds the closure.
pub(crate) const F_FUNC: u16 = 1 << 2;
pub(crate) const F_TRACE: u16 = 1 << 3;
pub(crate) const F_REQ: u16 = 1 << 4;
pub(crate) const F_USER: u16 = 1 << 5;
pub(crate) const F_VALUE: u16 = 1 << 6;
/// Holds a reference on its pool (a root of a built pool).
pub(crate) const F_POOL_REF: u16 = 1 << 7;

// Deadline bits of a node's shard field (immutable per incarnation, written while owned).
/// The node has an effective deadline (`Values::deadline`), its own or inherited.
pub(crate) const D_DEADLINE: u16 = 0x2000;
/// The node's own deadline is its effective one: it armed a timer, and a lazy expiry cancels
/// this node (descendants that inherited the deadline adopt it).
pub(crate) const D_TIMER: u16 = 0x4000;

/// A backtrace of this context's creation is stored in the pool's leak detector (module
/// `leak`), to be removed when it is released.
pub(crate) const S_BACKTRACE: u16 = 0x8000;

/// Per-incarnation metadata, written while the slot is owned (pool P2).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub(crate) location: &'static Location<'static>,
    pub(crate) parent: u32,
    /// Coarse creation time, in clock ticks (milliseconds, wrapping).
    pub(crate) created: u32,
}

impl Meta {
    const EMPTY: Meta = Meta {
        location: Location::caller(),
        parent: NIL,
        created: 0,
    };
}

/// A custom value: its vtable and a word holding it (in place or boxed).
#[derive(Clone, Copy)]
pub(crate) struct Custom {
    pub(crate) vt: &'static ValueVTable,
    pub(crate) data: MaybeUninit<usize>,
}

/// The well-known values, copied from parent to child.
#[derive(Clone, Copy)]
pub(crate) struct Values {
    /// [`Op::id`] of the operation label, 0 for none.
    pub(crate) op: u32,
    /// Effective deadline in clock ticks (wrapping; see `time::clock`); meaningful only when
    /// the node's shard field has `D_DEADLINE`.
    pub(crate) deadline: u32,
    pub(crate) trace_id: [u64; 2],
    pub(crate) span_id: u64,
    pub(crate) request_id: u64,
    pub(crate) user_id: u64,
    pub(crate) custom: MaybeUninit<Custom>,
}

impl Values {
    pub(crate) const EMPTY: Values = Values {
        op: 0,
        deadline: 0,
        trace_id: [0; 2],
        span_id: 0,
        request_id: 0,
        user_id: 0,
        custom: MaybeUninit::uninit(),
    };
}

/// Words of closure storage in an `after_func` node.
pub(crate) const FUNC_WORDS: usize = 6;

/// An `after_func` closure: how to call or drop it, and its bytes.
#[derive(Clone, Copy)]
pub(crate) struct Func {
    /// Moves the closure out and calls it. # Safety: `data` holds the closure this entry was
    /// packed with, owned by the caller, not taken before (tree I7).
    pub(crate) call: unsafe fn(*mut [MaybeUninit<usize>; FUNC_WORDS]),
    /// Drops the closure uncalled. # Safety: as for `call`.
    pub(crate) drop: unsafe fn(*mut [MaybeUninit<usize>; FUNC_WORDS]),
    pub(crate) data: [MaybeUninit<usize>; FUNC_WORDS],
}

/// Line 1 of a node: values for a context, the closure for an `after_func` node.
#[derive(Clone, Copy)]
pub(crate) union Payload {
    pub(crate) values: Values,
    pub(crate) func: Func,
}

/// A context node. See the module docs for the layout.
#[cfg_attr(not(loom), repr(C, align(64)))]
pub(crate) struct Node {
    pub(crate) life: Life,
    pub(crate) state: AtomicU64,
    /// Pointer of a `Reason::Message` (its length is in `state`); written under `LOCK`.
    pub(crate) msg: AtomicPtr<u8>,
    /// Head of the intrusive waiter list; guarded by `LOCK` (tree I5).
    pub(crate) waiters: UnsafeCell<*mut Waiter>,
    pub(crate) meta: UnsafeCell<Meta>,
    /// Owner shard (low 16 bits, pool P1) and flags (high 16 bits); written while owned.
    pub(crate) shard_flags: UnsafeCell<u32>,
    /// Head of the registered-children list; guarded by this node's `LOCK` (tree I6).
    pub(crate) children: AtomicU32,
    /// Free-list link (pool), sibling link (guarded by the parent's `LOCK`), or cancel work
    /// list link (owned by the cancelling thread): one role at a time (tree I6).
    pub(crate) next: AtomicU32,
    /// Sibling back link; guarded by the parent's `LOCK`.
    pub(crate) prev: AtomicU32,
    pub(crate) payload: UnsafeCell<Payload>,
}

// SAFETY: every field is either atomic or an `UnsafeCell` whose accesses follow the rules in
// the module docs and tree I5/I6: written only by the slot's exclusive owner (pool P2) or under
// the node's `LOCK`; the raw waiter pointers point into pinned `Waiter`s that unlink themselves
// under `LOCK` before they are freed (tree I5). The payload's custom value and closure are
// `Send + Sync` / `Send` by the bounds of `with_value` and `after_func`.
unsafe impl Send for Node {}
// SAFETY: as for `Send`.
unsafe impl Sync for Node {}

impl Node {
    /// A free node whose first incarnation has generation `first_gen` (slot L2).
    pub(crate) fn new(first_gen: u32) -> Self {
        Node {
            life: Life::new(first_gen),
            state: AtomicU64::new(0),
            msg: AtomicPtr::new(core::ptr::null_mut()),
            waiters: UnsafeCell::new(core::ptr::null_mut()),
            meta: UnsafeCell::new(Meta::EMPTY),
            shard_flags: UnsafeCell::new(0),
            children: AtomicU32::new(NIL),
            next: AtomicU32::new(NIL),
            prev: AtomicU32::new(NIL),
            payload: UnsafeCell::new(Payload {
                values: Values::EMPTY,
            }),
        }
    }

    /// The node's metadata.
    ///
    /// # Safety
    /// The caller holds a reference on the node, or owns the slot (pool P2), so the
    /// incarnation whose metadata it reads cannot change under it (slot L1).
    #[inline]
    pub(crate) unsafe fn meta(&self) -> Meta {
        // SAFETY: per this function's contract the slot's owner wrote `meta` before the
        // reference the caller holds was published, and nobody writes it while it is held.
        self.meta.with(|p| unsafe { *p })
    }

    /// The owner shard (16 bits) and flags (16 bits).
    ///
    /// # Safety
    /// As for [`Node::meta`].
    #[inline]
    pub(crate) unsafe fn shard_flags(&self) -> (u16, u16) {
        // SAFETY: as for `meta`.
        let w = self.shard_flags.with(|p| unsafe { *p });
        (w as u16, (w >> 16) as u16)
    }

    /// Flags of the current incarnation.
    ///
    /// # Safety
    /// As for [`Node::meta`].
    #[inline]
    pub(crate) unsafe fn flags(&self) -> u16 {
        // SAFETY: forwarded contract.
        unsafe { self.shard_flags().1 }
    }

    /// Sets the owner shard, keeping the flags.
    ///
    /// # Safety
    /// The caller owns the free slot (pool P2).
    #[inline]
    pub(crate) unsafe fn set_shard(&self, shard: u16) {
        // SAFETY: the caller owns the slot exclusively, so nobody else reads or writes it.
        self.shard_flags
            .with_mut(|p| unsafe { *p = (*p & 0xFFFF_0000) | u32::from(shard) });
    }

    /// Writes the per-incarnation part of the shard field in one store, keeping the owner
    /// shard (P1): the `LEASED` bit, the deadline and backtrace bits (`D_DEADLINE`, `D_TIMER`,
    /// `S_BACKTRACE`) and the flags.
    ///
    /// # Safety
    /// The caller owns the slot (pool P2).
    #[inline]
    pub(crate) unsafe fn set_incarnation(&self, leased: bool, dbits: u16, flags: u16) {
        debug_assert_eq!(dbits & !(D_DEADLINE | D_TIMER | S_BACKTRACE), 0);
        let leased = if leased { crate::pool::LEASED } else { 0 };
        let low = u32::from(leased | dbits) | (u32::from(flags) << 16);
        // SAFETY: the caller owns the slot exclusively.
        self.shard_flags.with_mut(|p| unsafe {
            *p = (*p & u32::from(crate::pool::SHARD_MASK)) | low;
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn node_is_two_cache_lines() {
        assert_eq!(core::mem::size_of::<Node>(), 128);
        assert_eq!(core::mem::size_of::<Payload>(), 64);
    }
}
