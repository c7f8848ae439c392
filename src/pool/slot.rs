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
//! | dying `(g, 0)`, `g < MAX` | free `(g + 1, 0)` | `retire`: a plain store by the owner of the dying slot |
//! | dying `(MAX, 0)`    | spent `(MAX, 0, CLAIMED)` | `retire`: the last generation; the slot is never reused (L2) |
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
//!   down, and before the slot goes back on a free list; it only ever increases, and a slot
//!   whose generation is [`LAST_GEN`] is *spent* instead: `retire` leaves it in a state no
//!   operation can leave (`(MAX, 0, CLAIMED)`: `try_upgrade` sees no references, `try_claim`
//!   and `try_pin` need exactly `(g, 0)`), and the pool never puts it on a free list again
//!   (pool P5). So a slot has at most 2^32 incarnations, each with its own generation, and
//!   a handle or id carrying generation `g` refers to that incarnation and no other, however
//!   long the process runs: `try_upgrade` compares it.
//!
//!   *Why retire, not widen.* The generation shares one 64-bit word with the reference count
//!   and two flags, because acquire, check and release must each be one atomic operation.
//!   Taking 16 more bits for it would leave the count 14 bits; even 48 bits of generation wrap
//!   in 49 days on one hot slot at the 66 M lives a second one thread can drive (slot reuse is
//!   last-in-first-out per thread). A spent slot costs 128 bytes per 2^32 lives, about two
//!   minutes of one thread at full speed, so about 90 KiB a day for a thread that does
//!   nothing else; the pool replaces it with a spare slot so its capacity does not shrink
//!   (pool P5).
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
/// The last generation a slot can have: `retire` spends the slot instead of wrapping (L2).
pub(crate) const LAST_GEN: u32 = u32::MAX;
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
    /// A free slot whose first incarnation will have generation `gen` (0, except in tests that
    /// start slots near [`LAST_GEN`]).
    pub(crate) fn new(gen: u32) -> Self {
        Life(AtomicU64::new(u64::from(gen) << GEN_SHIFT))
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

    /// Dying `(g, 0)` to free `(g + 1, 0)`, or to spent when `g` is [`LAST_GEN`] (L2). Only the
    /// slot's owner calls this.
    #[inline]
    pub(crate) fn retire(&self, gen: u32) -> Retired {
        if gen == LAST_GEN {
            return self.spend();
        }
        self.0
            .store(u64::from(gen + 1) << GEN_SHIFT, Ordering::Release);
        Retired::Reusable
    }

    /// Free `(g, 0)` to free `(gen, 0)` for a later `gen`: as if `gen − g` lives had passed
    /// (a test hook: generations only move forward, so L2 holds).
    pub(crate) fn skip_to(&self, gen: u32) -> bool {
        let cur = self.0.load(Ordering::Relaxed);
        cur & !(u64::from(u32::MAX) << GEN_SHIFT) == 0
            && generation(cur) < gen
            && self
                .0
                .compare_exchange(
                    cur,
                    u64::from(gen) << GEN_SHIFT,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    #[cold]
    #[inline(never)]
    fn spend(&self) -> Retired {
        // Release, as for a reuse: nothing reads the node again, but a stale reader of the word
        // must see a state in which every transition fails (L2).
        self.0.store(
            u64::from(LAST_GEN) << GEN_SHIFT | CLAIMED,
            Ordering::Release,
        );
        Retired::Spent
    }
}

/// What [`Life::retire`] made of a dying slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a reusable slot must go back on a free list, a spent one must be counted (pool P5)"]
pub(crate) enum Retired {
    /// Free with the next generation: put it back on a free list.
    Reusable,
    /// Its last generation is over: it is never reused (L2).
    Spent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spent_slot_refuses_every_transition() {
        let life = Life::new(LAST_GEN);
        assert_eq!(life.init(), LAST_GEN);
        assert!(life.drop_ref());
        assert_eq!(life.retire(LAST_GEN), Retired::Spent);
        let w = life.load(Ordering::Relaxed);
        assert_eq!((generation(w), refs(w)), (LAST_GEN, 0));
        for gen in [0, 1, LAST_GEN - 1, LAST_GEN] {
            assert!(!life.try_upgrade(gen), "upgrade with {gen}");
            assert!(!life.try_claim(gen), "claim with {gen}");
            assert!(!life.try_pin(gen), "pin with {gen}");
        }
        assert_eq!(
            life.load(Ordering::Relaxed),
            w,
            "a failed transition wrote the word"
        );
    }

    #[test]
    fn generations_only_increase_up_to_the_last() {
        let life = Life::new(LAST_GEN - 2);
        let mut seen = Vec::new();
        loop {
            let g = life.init();
            seen.push(g);
            assert!(life.drop_ref());
            if life.retire(g) == Retired::Spent {
                break;
            }
        }
        assert_eq!(seen, [LAST_GEN - 2, LAST_GEN - 1, LAST_GEN]);
    }
}
