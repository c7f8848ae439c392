//! [`CancelGuard`] (the owner of a cancellable context), [`WeakContext`] and [`ContextId`].

use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::Deref;

use super::{Context, EXHAUSTED, VIEW};
use crate::pool::PoolRef;
use crate::sync::Ordering;
use crate::tree::cause::{Cause, Origin, Reason};
use crate::tree::node::NIL;
use crate::tree::state::{self, Packed};
use crate::tree::{self as tree, dyncause, Kind};

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
    /// run, except where another thread is at that moment registering a waiter or dropping the
    /// last handle of a context in between: that thread completes the wake-up (tree I4).
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
        tree::cancel(
            pool,
            idx,
            Packed::from_cause(Cause::from(origin), &pool.timers.clock),
        )
    }

    /// Cancels with a dynamic error (Go's `cancel(err)` of `WithCancelCause`): the cause
    /// reads [`Cause::Error`] (`Parent(Origin::Error)` below), `err()` reads `Canceled`, and
    /// [`Context::cause_error`] returns `err`, downcastable to `E`. Returns whether this call
    /// recorded the cause. The cold path: it allocates (the error is shared by every reader
    /// and freed with the context, tree I13).
    ///
    /// ```
    /// use ctxpool::{Cause, Context};
    ///
    /// #[derive(Debug)]
    /// struct Backend(u16);
    /// impl std::fmt::Display for Backend {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         write!(f, "backend answered {}", self.0)
    ///     }
    /// }
    /// impl std::error::Error for Backend {}
    ///
    /// let req = Context::background().with_cancel();
    /// let db = req.with_cancel();
    /// assert!(req.cancel_with_error(Backend(503)));
    /// assert_eq!(req.cause(), Some(Cause::Error));
    /// let err = db.cause_error().unwrap();
    /// assert_eq!(err.downcast_ref::<Backend>().unwrap().0, 503);
    /// ```
    pub fn cancel_with_error<E: std::error::Error + Send + Sync + 'static>(&self, err: E) -> bool {
        let Some(idx) = self.ctx.node_idx() else {
            return false;
        };
        let pool = self.ctx.inner();
        if tree::is_cancelled(pool, idx) {
            return false;
        }
        let raw = dyncause::into_raw(std::sync::Arc::new(err));
        let won = tree::cancel(pool, idx, Packed::error(raw));
        if !won {
            // SAFETY: I13: the CAS was lost, so the box was never published; ours to free.
            unsafe { dyncause::drop_raw(raw) };
        }
        won
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
            if node.life.try_drop_sole(self.ctx.gen) {
                // We dropped the last reference in one CAS, so we own the dying node (slot L1).
                // A clone dropped just before may have made children through it (leases, I10):
                // the CAS read that clone's release, so its lessee mark is visible here.
                let s = node.state.load(Ordering::Acquire);
                let deferred = if s == 0 {
                    // Quiet (tree I15): nothing but its handles ever saw it, the usual end of
                    // a context.
                    tree::tear_down_quiet(pool, idx, node)
                } else if !state::is_leased(s) || pool.lease_sum(idx, self.ctx.gen, s) == 0 {
                    // No child, handle, waiter or registration can observe it: release it
                    // without cancelling, and with no zombie protocol needed. Leased children
                    // all gone counts as none (I14): with no references left the counts only
                    // go down (pool S7), so a zero is final.
                    tree::tear_down_at(pool, idx, node)
                } else {
                    // Children live or lived: cancel as the owner's drop must (they read it
                    // lazily through this node), then release it (maybe as a zombie).
                    let r = tree::catch(|| {
                        if !tree::is_cancelled(pool, idx) {
                            tree::cancel(
                                pool,
                                idx,
                                Packed::from_cause(Cause::OwnerDropped, &pool.timers.clock),
                            );
                        }
                    });
                    let deferred = tree::release(pool, idx);
                    if let Err(p) = r {
                        drop(deferred);
                        std::panic::resume_unwind(p);
                    }
                    deferred
                };
                // Dropped after the calls that borrowed the pool returned (P4).
                drop(deferred);
                return;
            }
            // An ancestor cancelled earlier wins (I3). A panic from user code run by the
            // cancel (an after_func, a Drop) must not leak this guard's reference.
            let r = tree::catch(|| {
                if !tree::is_cancelled(pool, idx) {
                    tree::cancel(
                        pool,
                        idx,
                        Packed::from_cause(Cause::OwnerDropped, &pool.timers.clock),
                    );
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

/// A weak id of a context ([`Context::downgrade`]): does not keep it alive, reads as cancelled
/// once it is released, and never reaches the context that reuses its slot (slot L2).
///
/// A context with an owner ([`CancelGuard`]) reads as cancelled once the owner is gone: the
/// owner's drop cancels it if children made from it still run. A context without an owner
/// (`child().build()`, a value) is released when its last handle is gone and, if children
/// made from it on its own thread still run, when they are gone too: they hold it, so until
/// then the weak id still upgrades to it, uncancelled, as the children read it.
pub struct WeakContext {
    pool: PoolRef,
    /// The handle's slot field (a view's is `VIEW | n`, context module docs).
    idx: u32,
    /// The generation of the node (for a view, of the node it reads).
    gen: u32,
    /// A view's kind (context V2); 0 otherwise.
    view: u32,
}

impl WeakContext {
    pub(crate) fn new(pool: PoolRef, idx: u32, gen: u32) -> Self {
        WeakContext {
            pool,
            idx,
            gen,
            view: 0,
        }
    }

    /// A weak id of a view of kind `view` of node `idx & !VIEW`, generation `gen`: it upgrades
    /// while that node is live, to the same view.
    pub(crate) fn view(pool: PoolRef, idx: u32, gen: u32, view: u32) -> Self {
        WeakContext {
            pool,
            idx,
            gen,
            view,
        }
    }

    /// The context, if it is still live.
    pub fn upgrade(&self) -> Option<Context> {
        match self.idx {
            NIL => Some(Context::background_of(self.pool.clone())),
            EXHAUSTED => Some(Context::exhausted(self.pool.clone(), self.gen != 0)),
            idx if idx & VIEW != 0 => {
                let n = idx & !VIEW;
                // As below: `n` was handed out by this pool (P3) and `upgrade` checks the
                // generation before taking the reference the view holds (context V1).
                let up = crate::tree::upgrade(self.pool.get(), n, self.gen, Kind::Context)
                    .then(|| Context::from_node(self.pool.ptr(), idx, self.view));
                if up.is_none() {
                    self.pool.get().stale_handles.inc();
                }
                up
            }
            idx => {
                // `idx` was handed out by this pool (P3); `upgrade` checks the generation
                // before taking a reference (L1, L2), and that the slot holds a context.
                let up = crate::tree::upgrade(self.pool.get(), idx, self.gen, Kind::Context)
                    .then(|| Context::from_node(self.pool.ptr(), idx, self.gen));
                if up.is_none() {
                    self.pool.get().stale_handles.inc();
                }
                up
            }
        }
    }

    /// Whether the context is cancelled or already released.
    pub fn is_cancelled(&self) -> bool {
        self.upgrade().is_none_or(|c| c.is_cancelled())
    }

    /// The context's identity (as [`Context::id`]).
    pub fn id(&self) -> ContextId {
        match self.idx {
            NIL | EXHAUSTED => ContextId {
                slot: self.idx,
                generation: self.gen,
            },
            idx if idx & VIEW != 0 => ContextId {
                slot: EXHAUSTED,
                generation: self.view,
            },
            idx => ContextId {
                slot: idx,
                generation: self.gen,
            },
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
