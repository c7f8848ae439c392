//! `after_func` when no slot is free: a fallback registration on the context's own node.
//!
//! [`Context::after_func`] normally takes a pool slot for its registration (`func.rs`). When
//! none is free, the registration is a heap-allocated [`Waiter`] (the cold path: one `Arc` and
//! one `Box`) linked on the context's node, whose wake handle is the callback itself
//! ([`Wake::Func`]); the node is registered up the tree as for a `cancelled()` future (tree I8),
//! so that a cancel anywhere above reaches it. The node's cancel drains it with its other
//! waiters (tree I5) and runs the callback (or, on the driver, hands it to the callback runner,
//! time D6), after the node's LOCK is released.
//!
//! ```text
//!   node.waiters ──► [Waiter (Arc)] ── wake: Func(Box<Registered { call, ctx, keep }>)
//!                          ▲                                        │     │
//!   AfterFunc::Fallback ───┘ (an Arc)          a reference on node ─┘     └─ the Arc again
//! ```
//!
//! Invariants (cited as **F1**..**F3**):
//!
//! - **F1** the waiter's memory is kept by two `Arc`s: the [`AfterFunc`] handle's, and the one
//!   inside its own wake handle (`keep`). While the waiter is linked its wake handle is in it,
//!   so it cannot be freed; whoever takes the wake handle (under the node's LOCK) takes that
//!   `Arc` with it, after which the waiter is never touched through the list again.
//! - **F2** while linked, the registration holds a counted reference on the context's node
//!   (`ctx`, slot L1): the node is not torn down, nor made a zombie, with a waiter on it, and
//!   `stop` can rely on [`tree::upgrade`] succeeding while the registration is pending.
//! - **F3** the wake handle is taken exactly once, under the node's LOCK, and marks the waiter
//!   notified in the same critical section: by the cancel (`take_batch`, tree I5), or by
//!   `stop` after it unlinked the waiter. So exactly one of them gets the callback: the cancel
//!   runs it, `stop` drops it and returns `true` (Go's contract); a second `stop` finds the
//!   waiter notified and returns `false`. No second LOCK holder waits (loom's constraint).

use std::sync::Arc;

use crate::context::Context;
use crate::pool::slot::generation;
use crate::pool::PoolInner;
use crate::sync::Ordering;
use crate::tree::func::{self, AfterFunc, Call};
use crate::tree::state::{CANCELLED, LISTENED};
use crate::tree::wait::{lock, push, unlink, unlock, Waiter, Wake};
use crate::tree::{drop_ref, ensure_registered, upgrade, Kind};

/// The wake handle of a fallback registration: the callback, the reference on the context
/// (F2) and the waiter's memory (F1).
pub(crate) struct Registered {
    call: Call,
    ctx: Context,
    keep: Arc<Waiter>,
}

impl Registered {
    /// Runs the callback (a panic is caught and returned), then releases the context reference
    /// and the waiter. Called by whoever took the wake handle (F3), which holds a reference on
    /// the node, so releasing ours cannot tear it down.
    pub(crate) fn run(self) -> std::thread::Result<()> {
        let Registered { call, ctx, keep } = self;
        let r = call.run();
        drop(ctx);
        drop(keep);
        r
    }

    /// The callback, to be run off this thread (the driver, time D6); releases the rest, as
    /// [`run`](Registered::run) does.
    pub(crate) fn into_call(self) -> Call {
        let Registered { call, ctx, keep } = self;
        drop(ctx);
        drop(keep);
        call
    }
}

/// Registers `f` on `ctx`, a live plain context that can be cancelled, without a slot.
pub(crate) fn register<F: FnOnce() + Send + 'static>(ctx: &Context, f: F) -> AfterFunc {
    let Some(idx) = ctx.node_idx() else {
        unreachable!("after_func handles the background and exhausted contexts first")
    };
    let pool = ctx.inner();
    // SAFETY: `ctx` keeps the node live (I1).
    let node = unsafe { pool.node(idx) };
    let gen = generation(node.life.load(Ordering::Relaxed));
    let waiter = Arc::new(Waiter::new());
    let wake = Wake::Func(Box::new(Registered {
        call: Call::new(func::pack(f)),
        ctx: ctx.clone(),
        keep: waiter.clone(),
    }));
    // SAFETY: the waiter is not linked yet: nobody else can reach it.
    unsafe { waiter.set_wake(wake) };
    let s = lock(node);
    if s & CANCELLED != 0 {
        // Cancelled since `after_func` looked: run it now, as Go does on a done context.
        // SAFETY: never linked.
        let wake = unsafe { waiter.take_wake() };
        unlock(node);
        if let Some(w) = wake {
            w.wake();
        }
        return AfterFunc::ran();
    }
    // SAFETY: LOCK held and the node is not cancelled (I5); the waiter lives in an `Arc` whose
    // memory never moves and is kept while linked (F1).
    unsafe { push(node, Arc::as_ptr(&waiter).cast_mut()) };
    if s & LISTENED == 0 {
        node.state.fetch_or(LISTENED, Ordering::Relaxed);
    }
    unlock(node);
    // A cancel above now reaches the node (I8); one that came first is completed here, and
    // runs the callback on this thread.
    ensure_registered(pool, idx);
    AfterFunc::fallback(ctx.pool_ref(), idx, gen, waiter)
}

/// `AfterFunc::stop` of a fallback registration on node `(idx, gen)`: `true` iff this call
/// took the callback before a cancel did (F3), and dropped it unrun.
pub(crate) fn stop(pool: &PoolInner, idx: u32, gen: u32, waiter: &Arc<Waiter>) -> bool {
    if waiter.is_notified() {
        return false;
    }
    // F2: while the registration is pending the node is live; if the upgrade fails, the wake
    // handle was taken (and the node released since).
    if !upgrade(pool, idx, gen, Kind::Context) {
        return false;
    }
    // SAFETY: we hold a reference (L1).
    let node = unsafe { pool.node(idx) };
    lock(node);
    let taken = if waiter.is_notified() {
        None
    } else {
        let w = Arc::as_ptr(waiter).cast_mut();
        // SAFETY: LOCK held and the waiter is linked on this node (not notified, F3).
        unsafe {
            unlink(node, w);
            waiter.take_wake()
        }
    };
    unlock(node);
    let stopped = taken.is_some();
    // Drops the closure unrun, the registration's reference on the node and its `Arc` (we
    // still hold a reference of our own, so the node stays).
    let r = crate::tree::catch(|| drop(taken));
    // The handle holds a pool reference, so this cannot free the pool.
    drop(drop_ref(pool, idx));
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
    stopped
}
