//! The lifecycle word of a slot: generation and reference count packed into one `u64`.
//!
//! ```text
//!  63                    32 31                      0
//! +------------------------+-------------------------+
//! |      generation        |   references (handles)  |
//! +------------------------+-------------------------+
//! ```
//!
//! Transitions (each one atomic operation on this word):
//!
//! | from                | to                    | by                                          |
//! |---------------------|-----------------------|---------------------------------------------|
//! | free `(g, 0)`       | live `(g, 1)`         | `init`: a plain store by the acquiring thread, which owns the free slot (pool P2) |
//! | live `(g, n)`       | `(g, n + 1)`          | `clone` (`fetch_add`) from a handle, `try_upgrade` (CAS, only if `n > 0`) from a weak id |
//! | live `(g, n > 1)`   | `(g, n - 1)`          | `drop_ref` (`fetch_sub`)                     |
//! | live `(g, 1)`       | dying `(g, 0)`        | `drop_ref` or `try_drop_sole` (CAS): the caller now owns the slot |
//! | dying `(g, 0)`      | free `(g + 1, 0)`     | `retire`: a plain store by the owner of the dying slot |
//! | zombie `(g, 0)`     | `(g, 0, PINNED)`      | `try_pin` (CAS): a cancel hands itself over (tree I11) |
//! | `(g, 0, PINNED)`    | `(g, 0)`              | `unpin` (`fetch_and`)                        |
//! | zombie `(g, 0)`     | `(g, 0, CLAIMED)`     | `try_claim` (CAS): wins the teardown (tree I10) |
//!
//! Invariants (cited as **L1**..**L3**):
//!
//! - **L1** references are only ever added to a live slot: `clone` is called through a handle
//!   that already holds one, and `try_upgrade` refuses `n == 0`. So once a slot reaches
//!   `(g, 0)` nobody can resurrect it, and exactly one thread (the one whose decrement reached
//!   zero) owns it.
//! - **L2** the generation changes only in `retire`, after the owner finished tearing the node
//!   down, and before the slot goes back on a free list. A handle or id carrying generation `g`
//!   therefore refers to that incarnation and no other: `try_upgrade` compares it.
//! - **L3** `drop_ref` is `Release` and the thread that reaches zero issues an `Acquire` fence
//!   (as `Arc` does), so every use of the node through any handle happens before the teardown.
//! - **L4** the teardown of a zombie is elected by `try_claim`, a CAS from exactly
//!   `(g, 0)` with the generation `g` the claimer read while the node was still held: at most
//!   one claim wins per incarnation, none wins while a pin is held, and a late claimer whose
//!   generation is stale (the slot was retired, maybe reused) fails.

use crate::sync::{fence, AtomicU64, Ordering};

const REFS_MASK: u64 = (1 << 30) - 1;
/// A thread propagating a cancel into this zombie holds it (tree I11).
const PINNED: u64 = 1 << 30;
/// The zombie's teardown was won (tree I10).
const CLAIMED: u64 = 1 << 31;
const GEN_SHIFT: u32 = 32;
/// Above this many references we abort, as `Arc` does, rather than risk an overflow. Half the
/// field, so that many threads racing past the check cannot carry into `PINNED`/`CLAIMED`.
const MAX_REFS: u64 = REFS_MASK / 2;

#[inline]
pub(crate) fn generation(word: u64) -> u32 {
    (word >> GEN_SHIFT) as u32
}

#[inline]
pub(crate) fn refs(word: u64) -> u32 {
    (word & REFS_MASK) as u32
}

/// The lifecycle word; see the module docs for its transitions.
#[derive(Debug)]
pub(crate) struct Life(AtomicU64);

impl Life {
    pub(crate) fn new() -> Self {
        Life(AtomicU64::new(0))
    }

    #[inline]
    pub(crate) fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }

    /// Free `(g, 0)` to live `(g, 1)`; returns `g`. The caller owns the free slot (pool P2).
    #[inline]
    pub(crate) fn init(&self) -> u32 {
        let g = generation(self.0.load(Ordering::Relaxed));
        // Release: a stale `try_upgrade` that reads this sees a generation that is not its own
        // (L2) and the node's fields are published to anyone who upgrades with the new one.
        self.0
            .store(u64::from(g) << GEN_SHIFT | 1, Ordering::Release);
        g
    }

    /// Adds a reference through a handle that holds one (L1).
    #[inline]
    pub(crate) fn clone_ref(&self) {
        let old = self.0.fetch_add(1, Ordering::Relaxed);
        if old & REFS_MASK >= MAX_REFS {
            std::process::abort();
        }
    }

    /// Adds a reference to incarnation `gen` if it is still live (L1, L2).
    #[inline]
    pub(crate) fn try_upgrade(&self, gen: u32) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if generation(cur) != gen || cur & REFS_MASK == 0 {
                return false;
            }
            if cur & REFS_MASK >= MAX_REFS {
                std::process::abort();
            }
            match self
                .0
                .compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Drops a reference; `true` when it was the last, and the caller now owns the slot (L1, L3).
    #[inline]
    pub(crate) fn drop_ref(&self) -> bool {
        if self.0.fetch_sub(1, Ordering::Release) & REFS_MASK != 1 {
            return false;
        }
        fence(Ordering::Acquire);
        true
    }

    /// Drops the only reference in one CAS, if it is the only one; `true` on success.
    #[inline]
    pub(crate) fn try_drop_sole(&self, gen: u32) -> bool {
        self.0
            .compare_exchange(
                u64::from(gen) << GEN_SHIFT | 1,
                u64::from(gen) << GEN_SHIFT,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Zombie `(g, 0)` to `(g, 0, CLAIMED)`: `true` for exactly one caller per incarnation, and
    /// for none while pinned or once retired (L4).
    #[inline]
    pub(crate) fn try_claim(&self, gen: u32) -> bool {
        self.0
            .compare_exchange(
                u64::from(gen) << GEN_SHIFT,
                u64::from(gen) << GEN_SHIFT | CLAIMED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Zombie `(g, 0)` to `(g, 0, PINNED)`; fails if claimed (nobody left to tell) or retired.
    #[inline]
    pub(crate) fn try_pin(&self, gen: u32) -> bool {
        self.0
            .compare_exchange(
                u64::from(gen) << GEN_SHIFT,
                u64::from(gen) << GEN_SHIFT | PINNED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Releases a pin taken with `try_pin`.
    #[inline]
    pub(crate) fn unpin(&self) {
        self.0.fetch_and(!PINNED, Ordering::AcqRel);
    }

    /// Whether a pin is held (read by the pinner itself).
    #[inline]
    pub(crate) fn is_pinned(&self) -> bool {
        self.0.load(Ordering::Relaxed) & PINNED != 0
    }

    /// Dying `(g, 0)` to free `(g + 1, 0)` (L2). Only the slot's owner calls this.
    #[inline]
    pub(crate) fn retire(&self, gen: u32) {
        self.0.store(
            u64::from(gen.wrapping_add(1)) << GEN_SHIFT,
            Ordering::Release,
        );
    }
}
