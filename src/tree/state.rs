//! The cancellation state word of a node, and its bits.
//!
//! ```text
//!  63                              32 31        9   8    7..4   3    2     1      0
//! +----------------------------------+-----------+-----+------+---+-----+------+-----------+
//! | payload: code or message length  |  unused   | INH | tag  | - | REG | LOCK | CANCELLED |
//! +----------------------------------+-----------+-----+------+---+-----+------+-----------+
//! ```
//!
//! - `CANCELLED` is set once, by one successful CAS that also writes the cause (tag, INH,
//!   payload) and sets `LOCK`; it is never cleared until the slot is released (tree I2, I3).
//! - `LOCK` guards the node's waiter list and registered-children list (tree I5). It is a bit
//!   lock held for O(1) pointer updates or one batch of at most [`WAKE_BATCH`] waiters, never
//!   across a call into user code.
//! - `REG` says the node sits in its parent's registered-children list; it changes only while
//!   the *parent's* `LOCK` is held (tree I6).
//! - `LESSEE` (bits 12..25: a shard id + 1) and `MULTI` (bit 3) say which shards count
//!   children of this node in their leases (pool S5..S7); `ZOMBIE` (bit 9) marks a node
//!   released before its leased children (tree I10); `PENDING` (bit 11) hands a cancel over to
//!   such a node (tree I11). The claim and the pin live in the lifecycle word, next to the
//!   generation (slot L4).
//! - A `Reason::Message` stores its length in the payload and its pointer in the node's `msg`
//!   field, written under `LOCK` by the cancel winner before `LOCK` is released.

use super::cause::{Cause, Origin, Reason};
use crate::sync::Ordering;
use crate::time::clock::Clock;

pub(crate) const CANCELLED: u64 = 1 << 0;
pub(crate) const LOCKED: u64 = 1 << 1;
pub(crate) const REGISTERED: u64 = 1 << 2;
/// More than one shard has leased this node as a parent (pool S5..S7; tree I10).
pub(crate) const MULTI: u64 = 1 << 3;
/// Released (no references) while leased children may live: torn down by the last of them.
pub(crate) const ZOMBIE: u64 = 1 << 9;
/// A waiter or a registered child was linked on this node at some point: a cancel must take
/// `LOCK` to drain it. Set under `LOCK`, cleared only when the slot is retired.
pub(crate) const LISTENED: u64 = 1 << 26;
/// The parent's cancel popped this node from its registered list while the node had no
/// references left: whoever sees this together with `ZOMBIE` propagates the cancel (tree I11).
pub(crate) const PENDING: u64 = 1 << 11;

const LESSEE_SHIFT: u32 = 12;
const LESSEE_MASK: u64 = 0x1FFF << LESSEE_SHIFT;
const TAG_SHIFT: u32 = 4;
const TAG_MASK: u64 = 0xF << TAG_SHIFT;
const INHERITED: u64 = 1 << 8;
const PAYLOAD_SHIFT: u32 = 32;
/// Bits that make up a recorded cause.
pub(crate) const CAUSE_BITS: u64 = TAG_MASK | INHERITED | (u32::MAX as u64) << PAYLOAD_SHIFT;

/// Most waiters woken per lock hold by a cancel.
pub(crate) const WAKE_BATCH: usize = 32;

const TAG_CANCELLED_NONE: u64 = 1;
const TAG_CANCELLED_MSG: u64 = 2;
const TAG_CANCELLED_CODE: u64 = 3;
const TAG_OWNER_DROPPED: u64 = 4;
const TAG_DEADLINE: u64 = 5;
const TAG_EXHAUSTED: u64 = 6;
const TAG_SHUTDOWN: u64 = 7;
/// Internal: an `after_func` registration was stopped before it ran.
const TAG_STOPPED: u64 = 8;
/// A dynamic error: `msg` points to a boxed `DynError` (`dyncause.rs`), owned by the node
/// that recorded it (not `INHERITED`), freed when its slot is torn down (tree I13).
const TAG_ERROR: u64 = 9;

/// A cause packed for the state word, plus the message pointer when there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Packed {
    pub(crate) bits: u64,
    pub(crate) msg: *const u8,
}

impl Packed {
    /// The internal "stopped" cause of an `after_func` registration.
    pub(crate) const STOPPED: Packed = Packed {
        bits: TAG_STOPPED << TAG_SHIFT,
        msg: core::ptr::null(),
    };

    /// `DeadlineExceeded` with the stored (wrapped) deadline tick `tick`.
    pub(crate) fn deadline(tick: u32) -> Packed {
        Packed {
            bits: (TAG_DEADLINE << TAG_SHIFT) | (u64::from(tick) << PAYLOAD_SHIFT),
            msg: core::ptr::null(),
        }
    }

    /// Packs `cause`; a deadline is stored as a tick of `clock`.
    pub(crate) fn from_cause(cause: Cause, clock: &Clock) -> Packed {
        let (origin, inherited) = match cause {
            Cause::Parent(o) => (o, INHERITED),
            c => (c.origin(), 0),
        };
        let (tag, payload, msg) = match origin {
            Origin::Cancelled(Reason::None) => (TAG_CANCELLED_NONE, 0, core::ptr::null()),
            Origin::Cancelled(Reason::Message(m)) => (
                TAG_CANCELLED_MSG,
                m.len().min(u32::MAX as usize) as u64,
                m.as_ptr(),
            ),
            Origin::Cancelled(Reason::Code(c)) => {
                (TAG_CANCELLED_CODE, u64::from(c), core::ptr::null())
            }
            Origin::OwnerDropped => (TAG_OWNER_DROPPED, 0, core::ptr::null()),
            Origin::DeadlineExceeded(at) => (
                TAG_DEADLINE,
                u64::from(clock.tick_of(at) as u32),
                core::ptr::null(),
            ),
            Origin::PoolExhausted => (TAG_EXHAUSTED, 0, core::ptr::null()),
            Origin::Shutdown => (TAG_SHUTDOWN, 0, core::ptr::null()),
            // Without an error object (`cancel_with(Origin::Error)`): `cause_error` is `None`.
            Origin::Error => (TAG_ERROR, 0, core::ptr::null()),
        };
        Packed {
            bits: (tag << TAG_SHIFT) | inherited | (payload << PAYLOAD_SHIFT),
            msg,
        }
    }

    /// `Origin::Error` with the boxed error at `err` (from `dyncause::into_raw`).
    pub(crate) fn error(err: *const u8) -> Packed {
        Packed {
            bits: TAG_ERROR << TAG_SHIFT,
            msg: err,
        }
    }

    /// The same origin, inherited by a descendant.
    pub(crate) fn inherited(self) -> Packed {
        Packed {
            bits: self.bits | INHERITED,
            msg: self.msg,
        }
    }
}

/// The first shard that leased this node as a parent, if any.
#[inline]
pub(crate) fn lessee(state: u64) -> Option<usize> {
    match (state & LESSEE_MASK) >> LESSEE_SHIFT {
        0 => None,
        t => Some(t as usize - 1),
    }
}

/// Whether any shard ever leased this node as a parent.
#[inline]
pub(crate) fn is_leased(state: u64) -> bool {
    state & (LESSEE_MASK | MULTI) != 0
}

/// Records that shard `t` leases `node` as a parent: the first lessee in the state word, any
/// other one as `MULTI`. Called by a thread holding a handle to `node`.
pub(crate) fn mark_lessee(node: &crate::tree::node::Node, t: usize) {
    let me = ((t as u64) + 1) << LESSEE_SHIFT;
    let mut s = node.state.load(Ordering::Relaxed);
    loop {
        let cur = s & LESSEE_MASK;
        let new = if cur == me || s & MULTI != 0 {
            return;
        } else if cur == 0 {
            s | me
        } else {
            s | MULTI
        };
        match node
            .state
            .compare_exchange_weak(s, new, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => return,
            Err(actual) => s = actual,
        }
    }
}

/// The metrics reason (`metrics::ops::R_*`) of a packed cause, or `None` for the normal end of
/// a context (its owner dropped) and internal causes.
#[inline]
pub(crate) fn reason(bits: u64) -> Option<usize> {
    use crate::metrics::ops::{R_DEADLINE, R_EXHAUSTED, R_EXPLICIT, R_PARENT, R_SHUTDOWN};
    let tag = (bits & TAG_MASK) >> TAG_SHIFT;
    match tag {
        TAG_OWNER_DROPPED | TAG_STOPPED | 0 => None,
        _ if bits & INHERITED != 0 => Some(R_PARENT),
        TAG_DEADLINE => Some(R_DEADLINE),
        TAG_EXHAUSTED => Some(R_EXHAUSTED),
        TAG_SHUTDOWN => Some(R_SHUTDOWN),
        _ => Some(R_EXPLICIT),
    }
}

/// Whether a recorded cause needs the `msg` field to be decoded.
pub(crate) fn needs_msg(state: u64) -> bool {
    matches!(
        (state & TAG_MASK) >> TAG_SHIFT,
        TAG_CANCELLED_MSG | TAG_ERROR
    )
}

/// Whether a recorded cause is a dynamic error (its `msg` is a boxed error, possibly null).
pub(crate) fn is_error(state: u64) -> bool {
    (state & TAG_MASK) >> TAG_SHIFT == TAG_ERROR
}

/// Whether a recorded cause is a deadline.
pub(crate) fn is_deadline(state: u64) -> bool {
    (state & TAG_MASK) >> TAG_SHIFT == TAG_DEADLINE
}

/// Whether the state word of a cancelled node records an inherited cause.
pub(crate) fn is_inherited(state: u64) -> bool {
    state & INHERITED != 0
}

/// Whether the node owns the boxed error its `msg` points to (tree I13): a dynamic error it
/// recorded itself, not one inherited from an ancestor (which owns it).
pub(crate) fn owns_error(state: u64) -> bool {
    state & CANCELLED != 0 && is_error(state) && state & INHERITED == 0
}

/// Decodes the cause recorded in a cancelled state word. `msg` is the node's message pointer,
/// read after `LOCKED` was seen clear (so the cancel winner's write is visible).
/// A deadline is decoded against `clock`.
pub(crate) fn decode(state: u64, msg: *const u8, clock: &Clock) -> Cause {
    let payload = (state >> PAYLOAD_SHIFT) as u32;
    let origin = match (state & TAG_MASK) >> TAG_SHIFT {
        TAG_CANCELLED_MSG if !msg.is_null() => {
            // SAFETY: `msg` and `payload` are the pointer and length of a `&'static str` that
            // `Packed::from_cause` split; the cancel winner stored the pointer before releasing
            // LOCK and the caller read it after observing LOCK clear (state.rs header).
            let s = unsafe {
                core::str::from_utf8_unchecked(core::slice::from_raw_parts(msg, payload as usize))
            };
            Origin::Cancelled(Reason::Message(s))
        }
        TAG_CANCELLED_MSG | TAG_CANCELLED_NONE => Origin::Cancelled(Reason::None),
        TAG_CANCELLED_CODE => Origin::Cancelled(Reason::Code(payload)),
        TAG_OWNER_DROPPED => Origin::OwnerDropped,
        TAG_DEADLINE => Origin::DeadlineExceeded(clock.instant(clock.widen(payload))),
        TAG_EXHAUSTED => Origin::PoolExhausted,
        TAG_ERROR => Origin::Error,
        // TAG_STOPPED only occurs on after_func nodes, which no handle reads.
        _ => Origin::Shutdown,
    };
    if state & INHERITED != 0 {
        Cause::Parent(origin)
    } else {
        Cause::from(origin)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_cause_round_trips() {
        let clock = Clock::real(false);
        let at = clock.instant(12_345);
        let causes = [
            Cause::Cancelled(Reason::None),
            Cause::Cancelled(Reason::Message("bye")),
            Cause::Cancelled(Reason::Code(u32::MAX)),
            Cause::OwnerDropped,
            Cause::DeadlineExceeded(at),
            Cause::PoolExhausted,
            Cause::Shutdown,
            Cause::Parent(Origin::Cancelled(Reason::Message(""))),
            Cause::Parent(Origin::Cancelled(Reason::Code(7))),
            Cause::Parent(Origin::DeadlineExceeded(at)),
            Cause::Parent(Origin::Shutdown),
            Cause::Error,
            Cause::Parent(Origin::Error),
        ];
        for c in causes {
            let p = Packed::from_cause(c, &clock);
            assert_eq!(
                p.bits & !CAUSE_BITS,
                0,
                "{c:?} spills out of the cause bits"
            );
            let state = p.bits | CANCELLED;
            assert_eq!(decode(state, p.msg, &clock), c);
            assert_eq!(
                decode(p.inherited().bits | CANCELLED, p.msg, &clock),
                Cause::Parent(c.origin())
            );
        }
    }
}
