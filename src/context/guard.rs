//! [`CancelGuard`] (the owner of a cancellable context), [`WeakContext`] and [`ContextId`].

use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::Deref;

use super::{Context, EXHAUSTED};
use crate::pool::PoolRef;
use crate::sync::Ordering;
use crate::tree::cause::{Cause, Origin, Reason};
use crate::tree::node::NIL;
use crate::tree::state::{self, Packed};
use crate::tree::{self as tree};

/// The owner of a cancellable context (Go's `cancel` function, as a value).
///
/// Dereferences to the [`Context`] it owns. Dropping it cancels the context with
/// [`Cause::OwnerDropped`]; [`cancel`](CancelGuard::cancel) cancels earlier with a reason.
/// When nothing else references the context, dropping the guard is a single atomic operation.
///
/// ```
/// use ctxpool::{Cause, Context, Reason};
///
/// let owner = Context::background().with_cancel();
/// let ctx = owner.context();
/// owner.cancel(Reason::Code(499));
/// owner.cancel(Reason::Message("too late")); // the first cause wins
/// assert_eq!(ctx.cause(), Some(Cause::Cancelled(Reason::Code(499))));
/// ```
#[must_use = "dropping a CancelGuard cancels its context at once"]
pub struct CancelGuard {
    ctx: ManuallyDrop<Context>,
}

impl CancelGuard {
    pub(crate) fn new(ctx: Context) -> Self {
        CancelGuard {
            ctx: ManuallyDrop::new(ctx),
        }
    }

    /// Cancels the context and every descendant with `reason`; returns whether this call
    /// recorded the cause (`false` if it was already cancelled). Returns after every
    /// descendant reads as cancelled and every waiter and `after_func` below it was woken or
    /// run (tree I4).
    pub fn cancel(&self, reason: impl Into<Reason>) -> bool {
        self.cancel_with(Origin::Cancelled(reason.into()))
    }

    /// Cancels with any origin, e.g. [`Origin::Shutdown`].
    pub fn cancel_with(&self, origin: Origin) -> bool {
        let Some(idx) = self.ctx.node_idx() else {
            return false;
        };
        let pool = self.ctx.inner();
        // An ancestor cancelled earlier wins (I3): adopt it instead of recording our cause.
        if tree::is_cancelled(pool, idx) {
            return false;
        }
        tree::cancel(pool, idx, Packed::from_cause(Cause::from(origin)))
    }

    /// A cloneable handle to the owned context.
    pub fn context(&self) -> Context {
        Context::clone(&self.ctx)
    }
}

impl Deref for CancelGuard {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl Drop for CancelGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(idx) = self.ctx.node_idx() {
            let pool = self.ctx.inner();
            // SAFETY: the guard holds a reference (slot L1).
            let node = unsafe { pool.node(idx) };
            // Only this guard can make children while it is the sole reference, so with no
            // lease ever taken on the node (I10) and a count of one, nobody else can observe
            // it (no handle, child, waiter or registration): release it without cancelling.
            let unleased = !state::is_leased(node.state.load(Ordering::Acquire));
            if unleased && node.life.try_drop_sole(self.ctx.gen) {
                // Unleased (checked above; only this guard could have leased it since), so no
                // child can read it: no zombie protocol needed (tree I10).
                let deferred = tree::tear_down(pool, idx);
                // Dropped after the call that borrowed the pool returned (P4).
                drop(deferred);
                return;
            }
            // An ancestor cancelled earlier wins (I3). A panic from user code run by the
            // cancel (an after_func, a Drop) must not leak this guard's reference.
            let r = tree::catch(|| {
                if !tree::is_cancelled(pool, idx) {
                    tree::cancel(pool, idx, Packed::from_cause(Cause::OwnerDropped));
                }
            });
            // SAFETY: dropped exactly once, here.
            unsafe { ManuallyDrop::drop(&mut self.ctx) };
            if let Err(p) = r {
                std::panic::resume_unwind(p);
            }
            return;
        }
        // SAFETY: dropped exactly once, here.
        unsafe { ManuallyDrop::drop(&mut self.ctx) };
    }
}

impl fmt::Debug for CancelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CancelGuard").field(&*self.ctx).finish()
    }
}

/// The identity of a context: its slot and generation. Unique among live contexts of a pool,
/// and never equal for two incarnations of one slot (up to 2^32 reuses of that slot).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextId {
    /// The slot index (`u32::MAX` for a background context).
    pub slot: u32,
    /// The slot's generation when the context was made.
    pub generation: u32,
}

impl fmt::Debug for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.slot {
            NIL => f.write_str("background"),
            EXHAUSTED => f.write_str("exhausted"),
            s => write!(f, "{s}v{}", self.generation),
        }
    }
}

/// A weak id of a context ([`Context::downgrade`]): does not keep it alive; reads as cancelled
/// once it is released (its owner and every handle gone, even if children made from it still
/// run), and never reaches the context that reuses its slot (slot L2).
pub struct WeakContext {
    pool: PoolRef,
    idx: u32,
    gen: u32,
}

impl WeakContext {
    pub(crate) fn new(pool: PoolRef, idx: u32, gen: u32) -> Self {
        WeakContext { pool, idx, gen }
    }

    /// The context, if it is still live.
    pub fn upgrade(&self) -> Option<Context> {
        match self.idx {
            NIL => Some(Context::background_of(self.pool.clone())),
            EXHAUSTED => Some(Context::exhausted(self.pool.clone(), self.gen != 0)),
            idx => {
                // SAFETY: `idx` was handed out by this pool (P3); `try_upgrade` checks the
                // generation before taking a reference (L1, L2).
                let node = unsafe { self.pool.get().node(idx) };
                node.life
                    .try_upgrade(self.gen)
                    .then(|| Context::from_node(self.pool.ptr(), idx, self.gen))
            }
        }
    }

    /// Whether the context is cancelled or already released.
    pub fn is_cancelled(&self) -> bool {
        self.upgrade().is_none_or(|c| c.is_cancelled())
    }

    /// The context's identity.
    pub fn id(&self) -> ContextId {
        ContextId {
            slot: self.idx,
            generation: self.gen,
        }
    }
}

impl fmt::Debug for WeakContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakContext")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}
