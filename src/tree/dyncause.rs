//! Dynamic causes: any `std::error::Error` as a cancellation cause (Go's `WithCancelCause`
//! with a run-time error), and deadlines that report a cause of their own when they fire (Go's
//! `WithDeadlineCause`, `WithTimeoutCause`). The cold path: only contexts that use them
//! allocate (the error's `Arc`, and a box for the pointer the node keeps).
//!
//! - An error given to [`CancelGuard::cancel_with_error`](crate::CancelGuard::cancel_with_error)
//!   is boxed and recorded like a message (tree I3: tag `ERROR`, the box's address in the
//!   node's `msg`, written by the cancel winner under `LOCK`). Ownership follows tree **I13**.
//! - A deadline with a cause is a value node carrying [`DeadlineCause`] with the timed child
//!   right below it: when the child records its own `DeadlineExceeded`, the cause is read from
//!   its parent. The value node is private to this module, so no other node carries one.

use core::any::TypeId;
use std::error::Error;
use std::sync::Arc;

use crate::pool::PoolInner;
use crate::sync::Ordering;
use crate::tree::node::{Custom, F_VALUE, NIL};
use crate::tree::state::{self, CANCELLED};

/// A dynamic error, shared by every reader.
pub(crate) type DynError = Arc<dyn Error + Send + Sync + 'static>;

/// The cause a deadline made with `with_timeout_cause`/`with_deadline_cause` reports; carried
/// by the value node right above the timed context.
pub(crate) struct DeadlineCause(pub(crate) DynError);

/// Boxes `e` for a node's `msg` field; freed with [`drop_raw`] (tree I13).
pub(crate) fn into_raw(e: DynError) -> *const u8 {
    Box::into_raw(Box::new(e)).cast_const().cast()
}

/// A new handle to the error at `p`.
///
/// # Safety
/// `p` came from [`into_raw`] and has not been freed: its owner node is live (tree I13).
pub(crate) unsafe fn clone_raw(p: *const u8) -> DynError {
    // SAFETY: the caller's contract: `p` is a live `Box<DynError>`.
    unsafe { (*p.cast::<DynError>()).clone() }
}

/// Frees the error at `p`.
///
/// # Safety
/// `p` came from [`into_raw`]; this is its one release (its owner's teardown, or a cancel
/// that lost its CAS and so never published it).
pub(crate) unsafe fn drop_raw(p: *const u8) {
    // SAFETY: the caller's contract.
    drop(unsafe { Box::from_raw(p.cast_mut().cast::<DynError>()) });
}

/// The dynamic cause of `idx` (on which the caller holds a reference): the error it (or the
/// ancestor whose cancel it inherited) was cancelled with, or the cause of the deadline that
/// cancelled it, if that deadline was made with one. `None` while active, and for every other
/// cause.
pub(crate) fn error_of(pool: &PoolInner, idx: u32) -> Option<DynError> {
    if !crate::tree::is_cancelled(pool, idx) {
        return None;
    }
    // SAFETY: the caller holds a reference (I1).
    let p = crate::tree::recorded(unsafe { pool.node(idx) });
    if state::is_error(p.bits) {
        // SAFETY: an error pointer recorded on `idx` is owned by `idx` or by the ancestor whose
        // cause it inherited, live while `idx` is (I1, I13).
        return (!p.msg.is_null()).then(|| unsafe { clone_raw(p.msg) });
    }
    if !state::is_deadline(p.bits) {
        return None;
    }
    // The node that recorded the deadline first-hand: `idx` or the nearest such ancestor.
    let mut cur = idx;
    loop {
        // SAFETY: `idx` or one of its ancestors: live (I1).
        let n = unsafe { pool.node(cur) };
        let s = n.state.load(Ordering::Acquire);
        if s & CANCELLED != 0 && !state::is_inherited(s) {
            break;
        }
        // SAFETY: live (I1).
        cur = unsafe { n.meta() }.parent;
        if cur == NIL {
            return None;
        }
    }
    // SAFETY: live (I1).
    let parent = unsafe { pool.node(cur).meta() }.parent;
    if parent == NIL {
        return None;
    }
    // SAFETY: the parent of a live node is live (I1); its flags and payload are immutable.
    let pn = unsafe { pool.node(parent) };
    // SAFETY: as above.
    if unsafe { pn.flags() } & F_VALUE == 0 {
        return None;
    }
    // SAFETY: F_VALUE: the custom value was written at creation and is immutable while the
    // node is live (P2); a `DeadlineCause` is read only after its type id matched.
    pn.payload.with(|p| unsafe {
        let custom = core::ptr::addr_of!((*p).values.custom).cast::<Custom>();
        if ((*custom).vt.type_id)() != TypeId::of::<DeadlineCause>() {
            return None;
        }
        let data = core::ptr::addr_of!((*custom).data);
        let cause = &*((*custom).vt.get)(data).cast::<DeadlineCause>();
        Some(cause.0.clone())
    })
}
