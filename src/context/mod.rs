//! [`Context`]: the cheap, cloneable handle to a context node.
//!
//! A handle is 16 bytes: the pool, the slot and its generation. A handle holds one reference
//! on its node (slot L1), so while it exists the node, its values and all its ancestors stay
//! live (tree I1) and it can never observe a different context that reuses the slot. Only
//! [`WeakContext`] can outlive its node; it then reads as cancelled, never as another context.
//!
//! # Handle forms
//!
//! The slot field `idx` of a handle says which of four forms it has; the hot path (a plain
//! node handle) is told apart from the other three by one comparison, `idx < VIEW`:
//!
//! | `idx`                  | `gen`             | form                                               |
//! |------------------------|-------------------|----------------------------------------------------|
//! | `< VIEW` (bit 31 clear)| the generation    | a plain handle: one reference on node `idx`        |
//! | `NIL` (`u32::MAX`)     | 0                 | the pool's background: a pool reference (pool P4)  |
//! | `EXHAUSTED`            | `V_INHERITED` or 0| born cancelled with no node to view (its parent is the background): a pool reference |
//! | `VIEW \| n`            | view kind `V_*`   | a *view* of node `n`: one reference on `n`         |
//!
//! A view is what a context made when no slot is free becomes (issue 13 item 6): it has no
//! node of its own, so it reads its parent's node. Invariants:
//!
//! - **V1** a view holds one counted reference on node `n` (taken with `clone_ref` through a
//!   handle that already referenced `n`, slot L1), released by its `Drop`, exactly like a plain
//!   handle. So `n`, its payload and its ancestors stay live while the view exists (tree I1),
//!   and every read through a view (values, operation, trace, ids, deadline, custom values)
//!   reads `n` as a plain handle would. A view never writes `n`: it never cancels it, never
//!   links waiters or registrations on it, and its `CancelGuard` owns nothing.
//! - **V2** the view kind is fixed at birth: `V_LIVE` clear means born cancelled with
//!   `PoolExhausted` (`Parent(PoolExhausted)` with `V_INHERITED`), whatever later happens to
//!   `n`; or, with `V_PARENT`, born under a parent already cancelled (`n` or a view of it), with
//!   `Parent(origin)` of `n`'s recorded cause, which never changes once recorded (tree I3), as
//!   for a child born with a slot under a cancelled parent. `V_LIVE` (always with
//!   `V_DETACHED`) is a `without_cancel` made at exhaustion, never cancelled; `V_DETACHED`
//!   hides `n`'s deadline (Go's `WithoutCancel` has none).
//! - **V3** `n` is a context node of this pool with `n < EXHAUSTED & !VIEW`, so `VIEW | n` is
//!   neither `NIL` nor `EXHAUSTED`. Slot indices stay below `2^31` (pool pages), and the two
//!   highest are in the spare region, reached only after `2^30 - 2` slots are spent; a view of
//!   one of them would be ambiguous, so it is made as the bare `EXHAUSTED` form instead (born
//!   cancelled without the values) or the background (a `without_cancel`).

mod builder;
mod guard;
mod until;
mod wait;

pub use builder::ChildBuilder;
pub use guard::{CancelGuard, ContextId, WeakContext};
pub use wait::{Cancelled, CancelledOwned};

use core::any::TypeId;
use core::fmt;
use core::panic::Location;
use core::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::pool::{Pool, PoolInner, PoolRef};
use crate::tree::cause::{Cause, ContextError, Origin, PoolExhausted};
use crate::tree::func::{self, AfterFunc};
use crate::tree::node::{Values, D_DEADLINE, F_NEVER, F_REQ, F_TRACE, F_USER, F_VALUE, NIL};
use crate::tree::{self as tree, Peek};
use crate::values::{Op, RequestId, TraceContext, UserId};

/// Slot value of a context that was born cancelled because its pool was exhausted and has no
/// node to view (its parent was a background); its generation field says whether the
/// exhaustion was its own (0) or an ancestor's (`V_INHERITED`).
pub(crate) const EXHAUSTED: u32 = u32::MAX - 1;

/// Bit 31 of a handle's slot field: the handle is not a plain node handle (module docs).
pub(crate) const VIEW: u32 = 1 << 31;

/// View kind (in `gen` of a view or `EXHAUSTED` handle): the exhaustion was an ancestor's, the
/// cause reads `Parent(PoolExhausted)`.
pub(crate) const V_INHERITED: u32 = 1;
/// View kind: the viewed node's deadline is hidden (a `without_cancel` is in the chain).
pub(crate) const V_DETACHED: u32 = 2;
/// View kind: never cancelled (a `without_cancel` made at exhaustion); always with
/// `V_DETACHED`.
pub(crate) const V_LIVE: u32 = 4;
/// View kind: born under a node that was already cancelled: the cause reads
/// `Parent(origin)` of that node's recorded cause (fixed, tree I3), as a child made with a
/// slot would.
pub(crate) const V_PARENT: u32 = 8;

/// A request context: cancellation, values, operation label and creation site.
///
/// `Context` is a cheap handle (`Clone + Send + Sync + 'static`, 16 bytes): cloning adds a
/// reference to the pooled node, dropping removes it, and the node's slot is reused only when
/// the last handle, its owner ([`CancelGuard`]) and its children are gone.
///
/// ```
/// use ctxpool::{Cause, Context, ContextError, Reason};
///
/// let root = Context::background().with_cancel();      // owner of a cancellable root
/// let req = root.with_cancel();                        // a child, cancelled with its parent
/// let handle = req.context();                          // a plain, cloneable handle
/// assert!(!handle.is_cancelled());
///
/// root.cancel(Reason::Message("shutting down"));
/// assert!(handle.is_cancelled());
/// assert_eq!(handle.err(), Some(ContextError::Canceled));
/// assert!(matches!(handle.cause(), Some(Cause::Parent(_))));
/// ```
///
/// # At pool exhaustion
///
/// When no slot is free, the plain constructors (`with_cancel`, `with_timeout`,
/// `with_deadline`, `build`, `with_value`) still return a context: one born cancelled that
/// keeps its parent's view. Exactly what exhaustion changes:
///
/// - it takes no slot: it is a view of the parent's node, holding a counted reference on it
///   (the parent stays alive while it does, as for a child);
/// - it is cancelled from birth: [`err`](Context::err) is `Canceled`,
///   [`cause`](Context::cause) is [`Cause::PoolExhausted`] (`Parent(PoolExhausted)` for its
///   children), [`cancelled`](Context::cancelled) and [`wait`](Context::wait) complete at
///   once, and the cause never changes, whatever later happens to the parent. Under a parent
///   that was already cancelled it reads `Parent(..)` of the parent's cause instead, as a
///   child made with a slot would;
/// - what was set on it at creation is dropped, having no slot to live in: a builder's
///   operation, trace, ids and custom value, and its own deadline;
/// - [`location`](Context::location) is `None` and its [`id`](Context::id) reads `exhausted`.
///
/// What it keeps: the parent's values ([`value`](Context::value)), [`op`](Context::op),
/// [`trace`](Context::trace), [`request_id`](Context::request_id),
/// [`user_id`](Context::user_id) and [`deadline`](Context::deadline), read through to the
/// parent's node. A child of it is born cancelled too (Go: a child of a done context is done),
/// takes no slot even when one is free, and reads the same values.
/// [`without_cancel`](Context::without_cancel) at exhaustion is never cancelled, reads the
/// parent's values and has no deadline. [`after_func`](Context::after_func) with no slot free
/// for the registration still does not run its callback while the context is live. The `try_*`
/// constructors return [`PoolExhausted`] instead.
///
/// ```
/// use ctxpool::{Cause, Pool, RequestId};
///
/// let pool = Pool::builder().capacity(1).build().unwrap();
/// let req = pool.background().child().request_id(RequestId(7)).with_cancel(); // the only slot
/// let sub = req.with_cancel(); // no slot left
/// assert_eq!(sub.cause(), Some(Cause::PoolExhausted));
/// assert_eq!(sub.request_id(), Some(RequestId(7)));
/// let detached = req.without_cancel();
/// assert!(!detached.is_cancelled());
/// assert_eq!(detached.request_id(), Some(RequestId(7)));
/// assert!(req.try_with_cancel().is_err());
/// ```
pub struct Context {
    pool: NonNull<PoolInner>,
    idx: u32,
    gen: u32,
}

// SAFETY: a `Context` is a counted reference to a `Sync` pool node (tree I1, pool P4); every
// operation through it is thread-safe (atomics, or reads of immutable fields).
unsafe impl Send for Context {}
// SAFETY: as for `Send`; `&Context` only exposes the same thread-safe operations.
unsafe impl Sync for Context {}

impl Context {
    /// The process-wide pool's background context (Go's `context.Background()`): never
    /// cancelled, no values, no deadline. It takes no slot, and its children register nothing.
    #[cfg(not(loom))]
    pub fn background() -> Context {
        Context {
            pool: crate::pool::global_ptr(),
            idx: NIL,
            gen: 0,
        }
    }

    pub(crate) fn background_of(pool: PoolRef) -> Context {
        Context {
            pool: pool.into_raw(),
            idx: NIL,
            gen: 0,
        }
    }

    pub(crate) fn exhausted(pool: PoolRef, inherited: bool) -> Context {
        Context {
            pool: pool.into_raw(),
            idx: EXHAUSTED,
            gen: u32::from(inherited),
        }
    }

    /// Wraps a reference the caller took on node `(idx, gen)` (or, with `idx = VIEW | n` and
    /// a view kind as `gen`, on node `n`: a view).
    pub(crate) fn from_node(pool: NonNull<PoolInner>, idx: u32, gen: u32) -> Context {
        Context { pool, idx, gen }
    }

    /// A view of kind `kind` of node `n`, on which this handle holds a reference (directly or
    /// as a view, V1); takes a reference of its own. At the two highest slot indices (V3) the
    /// bare form instead.
    #[cold]
    fn view(&self, n: u32, kind: u32) -> Context {
        if n >= (EXHAUSTED & !VIEW) {
            return if kind & V_LIVE != 0 {
                Context::background_of(self.pool_ref())
            } else {
                Context::exhausted(self.pool_ref(), kind & V_INHERITED != 0)
            };
        }
        // SAFETY: this handle references `n` (V1, slot L1), so cloning a reference is allowed.
        unsafe { self.inner().node(n) }.life.clone_ref();
        Context {
            pool: self.pool,
            idx: VIEW | n,
            gen: kind,
        }
    }

    /// The node a view reads (V1), `None` for every other form.
    #[inline]
    fn viewed(&self) -> Option<u32> {
        (self.idx & VIEW != 0 && self.idx < EXHAUSTED).then_some(self.idx & !VIEW)
    }

    /// The node this handle holds a reference on and reads: its own, or the viewed one.
    #[inline]
    fn ref_idx(&self) -> Option<u32> {
        if self.idx < VIEW {
            Some(self.idx)
        } else {
            self.viewed()
        }
    }

    /// What a child of this context is when no slot is free for it (or for a node it needs):
    /// born cancelled with `PoolExhausted`, a view of this context's node (V1, V2).
    #[cold]
    pub(crate) fn exhausted_child(&self) -> Context {
        match self.idx {
            NIL => Context::exhausted(self.pool_ref(), false),
            EXHAUSTED => Context::exhausted(self.pool_ref(), true),
            // A parent already cancelled gives its cause (V2), as with a slot.
            idx if idx < VIEW && tree::is_cancelled(self.inner(), idx) => self.view(idx, V_PARENT),
            idx if idx < VIEW => self.view(idx, 0),
            idx if self.gen & V_LIVE != 0 => self.view(idx & !VIEW, self.gen & V_DETACHED),
            idx => self.view(
                idx & !VIEW,
                (self.gen & (V_DETACHED | V_PARENT)) | V_INHERITED,
            ),
        }
    }

    /// What a `without_cancel` of this context is when no slot is free for it: never
    /// cancelled, a view of this context's node without its deadline (V2), or the background
    /// when there is no node.
    #[cold]
    pub(crate) fn detached_child(&self) -> Context {
        match self.ref_idx() {
            Some(n) => self.view(n, V_LIVE | V_DETACHED),
            None => Context::background_of(self.pool_ref()),
        }
    }

    /// A child of a view born cancelled (V2): an inherited view of the same node, with no
    /// slot, whether or not one is free (Go: a child of a done context is done).
    #[cold]
    pub(crate) fn inherited_child(&self) -> Option<Context> {
        let n = self.viewed()?;
        (self.gen & V_LIVE == 0)
            .then(|| self.view(n, (self.gen & (V_DETACHED | V_PARENT)) | V_INHERITED))
    }

    /// A plain handle on the node a view reads, for making a live child under it.
    #[cold]
    pub(crate) fn viewed_node(&self) -> Option<Context> {
        let n = self.viewed()?;
        // SAFETY: this view references `n` (V1), so cloning a reference is allowed, and its
        // generation is current (slot L2).
        let node = unsafe { self.inner().node(n) };
        node.life.clone_ref();
        let gen = crate::pool::slot::generation(node.life.load(crate::sync::Ordering::Relaxed));
        Some(Context {
            pool: self.pool,
            idx: n,
            gen,
        })
    }

    #[inline]
    pub(crate) fn inner(&self) -> &PoolInner {
        // SAFETY: a handle keeps its pool alive (pool P4).
        unsafe { self.pool.as_ref() }
    }

    /// The node of a plain handle: its own, which it may cancel, wait on and register on.
    /// `None` for the background, views and the bare exhausted form.
    #[inline]
    pub(crate) fn node_idx(&self) -> Option<u32> {
        (self.idx < VIEW).then_some(self.idx)
    }

    #[inline]
    pub(crate) fn pool_ref(&self) -> PoolRef {
        // SAFETY: this handle keeps the pool alive (P4).
        unsafe { PoolRef::acquire(self.pool) }
    }

    /// The pool this context lives in.
    pub fn pool(&self) -> Pool {
        Pool {
            inner: self.pool_ref(),
        }
    }

    /// A builder for a child with values set (operation, trace, request id, user id).
    ///
    /// ```
    /// use ctxpool::{Context, Op, RequestId};
    ///
    /// static GET_USER: Op = Op::new("get_user");
    /// let req = Context::background()
    ///     .child()
    ///     .op(&GET_USER)
    ///     .request_id(RequestId(42))
    ///     .with_cancel();
    /// assert_eq!(req.request_id(), Some(RequestId(42)));
    /// ```
    #[track_caller]
    pub fn child(&self) -> ChildBuilder<'_> {
        ChildBuilder::new(self, Location::caller())
    }

    /// A cancellable child and its owner (Go's `WithCancel`). Dropping the returned
    /// [`CancelGuard`] cancels the child (cause [`Cause::OwnerDropped`]). At pool exhaustion
    /// the child is born cancelled with [`Cause::PoolExhausted`] and reads this context's
    /// values (see [exhaustion](Context#at-pool-exhaustion) and
    /// [`try_with_cancel`](Context::try_with_cancel)).
    #[track_caller]
    #[inline]
    pub fn with_cancel(&self) -> CancelGuard {
        match builder::create_cancel(self, Location::caller()) {
            Ok(ctx) => CancelGuard::new(ctx),
            Err(_) => CancelGuard::new(self.exhausted_child()),
        }
    }

    /// A cancellable child whose deadline is `timeout` from now (Go's `WithTimeout`).
    ///
    /// The effective deadline is the earlier of this context's and the new one, and at most
    /// the pool's maximum timeout from now (a longer one is cut and counted in
    /// [`TimerStats::clamped`](crate::TimerStats::clamped)). Only a child whose own deadline
    /// is earlier than the inherited one arms a timer; either way, once the deadline passes
    /// the child reads as cancelled with [`Cause::DeadlineExceeded`] (or
    /// `Parent(DeadlineExceeded)` when the deadline is inherited) on the next
    /// `is_cancelled()`, even before the timer fires. Deadlines have the granularity of the
    /// pool's clock, 1 ms: counted from the precise time (`Instant::now()`) and rounded up,
    /// so a deadline never reads as expired before `now + timeout`, and
    /// [`deadline`](Context::deadline) is at or after that instant and less than one tick
    /// after it; expiry is seen at most one tick late. A `timeout` of zero gives a child
    /// born cancelled with [`Cause::DeadlineExceeded`] (no timer armed), unless this context
    /// is already cancelled (then its cause). If this context is cancelled before the
    /// child's deadline passes, the child reads `Parent(..)` for good, even if its timer
    /// fires later. Dropping the guard cancels the child (and so disarms its timer, at no
    /// cost).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxpool::Context;
    ///
    /// let req = Context::background().with_timeout(Duration::from_secs(30));
    /// let db = req.with_timeout(Duration::from_millis(50)); // earlier: arms its own timer
    /// let cache = req.with_timeout(Duration::from_secs(60)); // later: keeps the parent's 30 s
    /// assert!(db.deadline() < cache.deadline());
    /// assert_eq!(cache.deadline(), req.deadline());
    /// // Rounded up to the 1 ms tick, never early: at most one tick more than asked.
    /// assert!(req.remaining().unwrap() <= Duration::from_millis(30_001));
    /// ```
    #[track_caller]
    #[inline]
    pub fn with_timeout(&self, timeout: Duration) -> CancelGuard {
        match builder::create_timed(self, Location::caller(), builder::Want::After(timeout)) {
            Ok(ctx) => CancelGuard::new(ctx),
            Err(_) => CancelGuard::new(self.exhausted_child()),
        }
    }

    /// Like [`with_timeout`](Context::with_timeout), but fails when the pool is exhausted.
    #[track_caller]
    pub fn try_with_timeout(&self, timeout: Duration) -> Result<CancelGuard, PoolExhausted> {
        builder::create_timed(self, Location::caller(), builder::Want::After(timeout))
            .map(CancelGuard::new)
    }

    /// A cancellable child with deadline `at` (Go's `WithDeadline`); see
    /// [`with_timeout`](Context::with_timeout) for how deadlines combine and are cut. An
    /// instant in the past gives a child that is already expired.
    #[track_caller]
    pub fn with_deadline(&self, at: Instant) -> CancelGuard {
        match builder::create_timed(self, Location::caller(), builder::Want::At(at)) {
            Ok(ctx) => CancelGuard::new(ctx),
            Err(_) => CancelGuard::new(self.exhausted_child()),
        }
    }

    /// Like [`with_timeout`](Context::with_timeout), with a cause that the deadline reports
    /// when it fires (Go's `WithTimeoutCause`): `err()` then reads `DeadlineExceeded`,
    /// `cause()` reads [`Cause::DeadlineExceeded`] (or `Parent(..)` below), and
    /// [`cause_error`](Context::cause_error) returns `cause`. If this context's own deadline
    /// is earlier, or the child is cancelled another way, the cause is not reported, as in
    /// Go. The cold path: it allocates, and takes two slots (the cause rides in a node of its
    /// own, right above the child).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxpool::{ContextError, ManualClock, Pool};
    ///
    /// #[derive(Debug)]
    /// struct SlowQuery;
    /// impl std::fmt::Display for SlowQuery {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("query took too long")
    ///     }
    /// }
    /// impl std::error::Error for SlowQuery {}
    ///
    /// let clock = ManualClock::new();
    /// let pool = Pool::builder().manual_clock(&clock).build().unwrap();
    /// let db = pool.background().with_timeout_cause(Duration::from_millis(50), SlowQuery);
    /// clock.advance(Duration::from_millis(50));
    /// assert_eq!(db.err(), Some(ContextError::DeadlineExceeded));
    /// assert!(db.cause_error().unwrap().is::<SlowQuery>());
    /// ```
    #[track_caller]
    pub fn with_timeout_cause<E: std::error::Error + Send + Sync + 'static>(
        &self,
        timeout: Duration,
        cause: E,
    ) -> CancelGuard {
        self.cause_carrier(cause).with_timeout(timeout)
    }

    /// Like [`with_deadline`](Context::with_deadline), with a cause that the deadline reports
    /// when it fires (Go's `WithDeadlineCause`); see
    /// [`with_timeout_cause`](Context::with_timeout_cause).
    #[track_caller]
    pub fn with_deadline_cause<E: std::error::Error + Send + Sync + 'static>(
        &self,
        at: Instant,
        cause: E,
    ) -> CancelGuard {
        self.cause_carrier(cause).with_deadline(at)
    }

    /// The value node above a deadline with a cause: it carries the cause, which the deadline
    /// reports when it fires (tree I13).
    #[track_caller]
    fn cause_carrier<E: std::error::Error + Send + Sync + 'static>(&self, cause: E) -> Context {
        self.child()
            .with_value(crate::tree::dyncause::DeadlineCause(std::sync::Arc::new(
                cause,
            )))
    }

    /// The dynamic cause of this context (Go's `context.Cause(ctx)` for a run-time error):
    /// the error it or an ancestor was cancelled with by
    /// [`CancelGuard::cancel_with_error`], or the cause of the deadline (made with
    /// [`with_timeout_cause`](Context::with_timeout_cause) or
    /// [`with_deadline_cause`](Context::with_deadline_cause)) that cancelled it. Downcast it
    /// with `downcast_ref`. `None` while active and for every other cause (read those with
    /// [`cause`](Context::cause)).
    pub fn cause_error(&self) -> Option<std::sync::Arc<dyn std::error::Error + Send + Sync>> {
        crate::tree::dyncause::error_of(self.inner(), self.node_idx()?)
    }

    /// Like [`with_deadline`](Context::with_deadline), but fails when the pool is exhausted.
    #[track_caller]
    pub fn try_with_deadline(&self, at: Instant) -> Result<CancelGuard, PoolExhausted> {
        builder::create_timed(self, Location::caller(), builder::Want::At(at)).map(CancelGuard::new)
    }

    /// The effective deadline (own or inherited), if any (Go's `ctx.Deadline()`), at
    /// millisecond granularity: at or after the instant asked for, less than one tick (1 ms)
    /// after it.
    pub fn deadline(&self) -> Option<Instant> {
        let dl = self.stored_deadline()?;
        let clock = &self.inner().timers.clock;
        Some(clock.instant(clock.widen(dl)))
    }

    /// Time left until the deadline, zero once it passed; `None` without a deadline. Read
    /// from the precise time (not the coarse tick) on the real clock, rounded so that it is
    /// never more than what is truly left.
    pub fn remaining(&self) -> Option<Duration> {
        let dl = self.stored_deadline()?;
        let clock = &self.inner().timers.clock;
        Some(clock.remaining(clock.widen(dl)))
    }

    fn stored_deadline(&self) -> Option<u32> {
        let idx = self.ref_idx()?;
        if self.idx >= VIEW && self.gen & V_DETACHED != 0 {
            return None; // V2: hidden
        }
        // SAFETY: this handle (or view, V1) keeps the node live (I1); the deadline bits and the
        // payload are immutable while it is (P2).
        unsafe {
            let node = self.inner().node(idx);
            (node.shard_flags().0 & D_DEADLINE != 0)
                .then(|| node.payload.with(|p| (*p).values.deadline))
        }
    }

    /// Like [`with_cancel`](Context::with_cancel), but fails when the pool is exhausted.
    #[track_caller]
    #[inline]
    pub fn try_with_cancel(&self) -> Result<CancelGuard, PoolExhausted> {
        builder::create_cancel(self, Location::caller()).map(CancelGuard::new)
    }

    /// A child that keeps this context's values but is never cancelled (Go's
    /// `WithoutCancel`), nor are its children through it, and has no deadline. At pool
    /// exhaustion it takes no slot and reads this context's values all the same (see
    /// [exhaustion](Context#at-pool-exhaustion)); never cancelled either.
    #[track_caller]
    pub fn without_cancel(&self) -> Context {
        self.child().without_cancel()
    }

    /// A child carrying `value`, found by [`value`](Context::value) on it and its descendants
    /// (Go's `WithValue`, keyed by type). Values up to
    /// [`INLINE_VALUE_BYTES`](crate::INLINE_VALUE_BYTES) are stored in the node; larger ones
    /// are boxed (one allocation, freed with the node) — wrap big values in an `Arc` you
    /// clone to keep creation allocation-free.
    ///
    /// ```
    /// use ctxpool::Context;
    ///
    /// #[derive(Debug, PartialEq)]
    /// struct Tenant(u32);
    ///
    /// let ctx = Context::background().with_value(Tenant(7));
    /// let child = ctx.with_cancel();
    /// assert_eq!(child.value::<Tenant>(), Some(&Tenant(7)));
    /// assert_eq!(child.value::<u64>(), None);
    /// ```
    #[track_caller]
    pub fn with_value<T: Send + Sync + 'static>(&self, value: T) -> Context {
        self.child().with_value(value)
    }

    /// The nearest value of type `T` set on this context or an ancestor.
    pub fn value<T: 'static>(&self) -> Option<&T> {
        let pool = self.inner();
        let mut cur = self.ref_idx()?;
        while cur != NIL {
            // SAFETY: this handle (or view, V1) keeps the node and its ancestors live (I1).
            let node = unsafe { pool.node(cur) };
            // SAFETY: live (I1).
            let (meta, flags) = unsafe { (node.meta(), node.flags()) };
            if flags & F_VALUE != 0 {
                // SAFETY: F_VALUE: the payload's custom value was written at creation (P2) and
                // is immutable while the node is live; the pointer stays valid while `self`
                // keeps the node live, which the returned borrow of `self` guarantees.
                let found = node.payload.with(|p| unsafe {
                    let custom =
                        core::ptr::addr_of!((*p).values.custom).cast::<crate::tree::node::Custom>();
                    if ((*custom).vt.type_id)() == TypeId::of::<T>() {
                        let data = core::ptr::addr_of!((*custom).data);
                        Some(&*((*custom).vt.get)(data).cast::<T>())
                    } else {
                        None
                    }
                });
                if found.is_some() {
                    return found;
                }
            }
            cur = meta.parent;
        }
        None
    }

    fn values(&self) -> Option<(Values, u16)> {
        let idx = self.ref_idx()?;
        // SAFETY: this handle (or view, V1) keeps the node live (I1).
        let node = unsafe { self.inner().node(idx) };
        // SAFETY: live; the payload of a context node is its `Values`, immutable (P2).
        Some(unsafe { (node.payload.with(|p| (*p).values), node.flags()) })
    }

    /// The operation label, if one was set on this context or inherited.
    pub fn op(&self) -> Option<&'static Op> {
        self.values().and_then(|(v, _)| Op::by_id(v.op))
    }

    /// The trace context, if set or inherited.
    pub fn trace(&self) -> Option<TraceContext> {
        let (v, flags) = self.values()?;
        (flags & F_TRACE != 0).then(|| TraceContext {
            trace_id: (u128::from(v.trace_id[0]) << 64) | u128::from(v.trace_id[1]),
            span_id: v.span_id,
            flags: (flags >> 8) as u8,
        })
    }

    /// The request id, if set or inherited.
    pub fn request_id(&self) -> Option<RequestId> {
        let (v, flags) = self.values()?;
        (flags & F_REQ != 0).then_some(RequestId(v.request_id))
    }

    /// The user id, if set or inherited.
    pub fn user_id(&self) -> Option<UserId> {
        let (v, flags) = self.values()?;
        (flags & F_USER != 0).then_some(UserId(v.user_id))
    }

    /// Where this context was made (the caller of the constructor).
    pub fn location(&self) -> Option<&'static Location<'static>> {
        let idx = self.node_idx()?;
        // SAFETY: live (I1).
        Some(unsafe { self.inner().node(idx).meta() }.location)
    }

    /// This context's identity: its slot and generation. A context made at pool exhaustion
    /// has no slot: its id is `exhausted` (slot `u32::MAX - 1`).
    pub fn id(&self) -> ContextId {
        ContextId {
            slot: if self.idx == NIL || self.idx < VIEW {
                self.idx
            } else {
                EXHAUSTED
            },
            generation: self.gen,
        }
    }

    /// Whether this context or an ancestor is cancelled (Go's `<-ctx.Done()` without
    /// blocking). An ancestor's cancellation is recorded on this context the first time it is
    /// observed, so every later read agrees.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        if self.idx < VIEW {
            tree::is_cancelled(self.inner(), self.idx)
        } else {
            // The background never; exhausted forms unless `V_LIVE` (V2).
            self.idx != NIL && self.gen & V_LIVE == 0
        }
    }

    /// Go's `ctx.Err()`: `None` while active, then `Canceled` or `DeadlineExceeded`.
    pub fn err(&self) -> Option<ContextError> {
        self.cause().map(Cause::error)
    }

    /// Go's `context.Cause(ctx)`: the first cause recorded, `None` while active.
    pub fn cause(&self) -> Option<Cause> {
        if self.idx < VIEW {
            return tree::cause(self.inner(), self.idx);
        }
        if self.idx == NIL || self.gen & V_LIVE != 0 {
            None
        } else if let Some(n) = self.viewed().filter(|_| self.gen & V_PARENT != 0) {
            // V2: `n` was cancelled when this view was made, so its cause is recorded and fixed.
            tree::cause(self.inner(), n).map(|c| Cause::Parent(c.origin()))
        } else if self.gen & V_INHERITED != 0 {
            Some(Cause::Parent(Origin::PoolExhausted))
        } else {
            Some(Cause::PoolExhausted)
        }
    }

    /// Whether this context can never be cancelled (the background, a `without_cancel`
    /// context, or a value child of either). Go's `ctx.Done() == nil`.
    pub fn is_never_cancelled(&self) -> bool {
        if self.idx < VIEW {
            // SAFETY: live (I1).
            (unsafe { self.inner().node(self.idx).flags() } & F_NEVER) != 0
        } else {
            self.idx == NIL || self.gen & V_LIVE != 0
        }
    }

    /// A future that completes when this context is cancelled. It is `Send`, cancel-safe (drop
    /// it at any time) and allocates nothing.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use ctxpool::Context;
    ///
    /// let owner = Context::background().with_cancel();
    /// let ctx = owner.context();
    /// let task = tokio::spawn(async move { ctx.cancelled().await; ctx.err() });
    /// drop(owner);
    /// assert!(task.await.unwrap().is_some());
    /// # });
    /// ```
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled::new(self)
    }

    /// Like [`cancelled`](Context::cancelled), but the future holds its own handle to the
    /// context (a clone of this one), so it is `'static`: for a future, a stream or an HTTP
    /// body that must own what it waits on.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use ctxpool::Context;
    ///
    /// let owner = Context::background().with_cancel();
    /// let done = owner.context().cancelled_owned();
    /// let task = tokio::spawn(async move { done.await });
    /// owner.cancel(ctxpool::Reason::None);
    /// task.await.unwrap();
    /// # });
    /// ```
    pub fn cancelled_owned(&self) -> CancelledOwned {
        CancelledOwned::new(self.clone())
    }

    /// Blocks the thread until this context is cancelled. Blocks forever on a context that can
    /// never be cancelled.
    pub fn wait(&self) {
        wait::wait(self, None);
    }

    /// Blocks until this context is cancelled or `timeout` passes; returns whether it is
    /// cancelled.
    #[cfg(not(loom))]
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> bool {
        wait::wait(self, Some(std::time::Instant::now() + timeout))
    }

    /// Runs `f` once when this context is cancelled (Go's `AfterFunc`): on the cancelling
    /// thread, before its `cancel` returns; or, when the cancel is a deadline fired by the
    /// pool's driver thread (or tokio driver task), on a thread of its own, so that `f` may
    /// block or panic without delaying any timer. Runs it at once if the context is already
    /// cancelled, and never if it can never be cancelled. The registration takes one pool
    /// slot; closures up to 48 bytes are stored in it, larger ones boxed. If the pool is
    /// exhausted the registration goes on a fallback list on the context's node instead (the
    /// cold path: one heap allocation), with the same semantics: `f` does not run while the
    /// context is live, runs once when it is cancelled, and [`AfterFunc::stop`] returns `true`
    /// exactly when it prevented the run (see
    /// [`try_after_func`](Context::try_after_func) to fail instead).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use ctxpool::Context;
    ///
    /// static CLOSED: AtomicBool = AtomicBool::new(false);
    /// let owner = Context::background().with_cancel();
    /// let _registration = owner.after_func(|| CLOSED.store(true, Ordering::SeqCst));
    /// drop(owner);
    /// assert!(CLOSED.load(Ordering::SeqCst));
    /// ```
    #[track_caller]
    pub fn after_func<F: FnOnce() + Send + 'static>(&self, f: F) -> AfterFunc {
        match self.try_after_func(f) {
            Ok(handle) => handle,
            Err((_, f)) => crate::tree::fallback::register(self, f),
        }
    }

    /// Like [`after_func`](Context::after_func), but hands `f` back when the pool is
    /// exhausted (no slot for the registration; the context is live).
    #[track_caller]
    pub fn try_after_func<F: FnOnce() + Send + 'static>(
        &self,
        f: F,
    ) -> Result<AfterFunc, (PoolExhausted, F)> {
        if self.is_never_cancelled() {
            return Ok(AfterFunc::never());
        }
        if self.is_cancelled() {
            f();
            return Ok(AfterFunc::ran());
        }
        let Some(idx) = self.node_idx() else {
            unreachable!("background and exhausted contexts were handled above")
        };
        let pool = self.inner();
        let me = pool.local();
        let Some((fidx, _)) = pool.acquire(me) else {
            return Err((
                PoolExhausted {
                    capacity: pool.capacity(),
                },
                f,
            ));
        };
        let gen = builder::init_func(pool, me, fidx, idx, Location::caller(), func::pack(f));
        // Hold a reference while registering: the callback may fire, and release the
        // registration, as soon as it is linked.
        // SAFETY: `fidx` was acquired from this pool and published by `init_func`.
        unsafe { pool.node(fidx) }.life.clone_ref();
        tree::ensure_registered(pool, fidx);
        // `self` keeps the pool alive, so this cannot free it.
        drop(tree::drop_ref(pool, fidx));
        Ok(AfterFunc::registered(self.pool_ref(), fidx, gen))
    }

    /// A weak id of this context: it does not keep the node alive, and once the node is
    /// released it reads as cancelled and never as the context that reuses the slot (see
    /// [`WeakContext`] for when a context with children is released).
    pub fn downgrade(&self) -> WeakContext {
        match self.viewed() {
            Some(n) => {
                // SAFETY: this view references `n` (V1): its generation is current (slot L2).
                let word = unsafe { self.inner().node(n) }
                    .life
                    .load(crate::sync::Ordering::Relaxed);
                WeakContext::view(
                    self.pool_ref(),
                    self.idx,
                    crate::pool::slot::generation(word),
                    self.gen,
                )
            }
            None => WeakContext::new(self.pool_ref(), self.idx, self.gen),
        }
    }
}

impl Clone for Context {
    #[inline]
    fn clone(&self) -> Self {
        match self.ref_idx() {
            // SAFETY: this handle (or view, V1) holds a reference (L1).
            Some(idx) => unsafe { self.inner().node(idx) }.life.clone_ref(),
            // Background and exhausted handles hold a pool reference (P4).
            None => core::mem::forget(self.pool_ref()),
        }
        Context {
            pool: self.pool,
            idx: self.idx,
            gen: self.gen,
        }
    }
}

impl Drop for Context {
    #[inline]
    fn drop(&mut self) {
        match self.ref_idx() {
            // A plain handle's reference, or a view's (V1).
            Some(idx) => {
                let deferred = tree::drop_ref(self.inner(), idx);
                // Dropped after the call that borrowed the pool returned (P4).
                drop(deferred);
            }
            // SAFETY: background and exhausted handles hold a pool reference taken with
            // `into_raw` or `acquire` (P4); this is its release.
            None => drop(unsafe { PoolRef::from_raw(self.pool) }),
        }
    }
}

impl fmt::Debug for Context {
    /// Takes no lock and never waits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Context");
        d.field("id", &self.id());
        let Some(idx) = self.node_idx() else {
            return match self.idx {
                NIL => d.field("state", &"background").finish(),
                _ if self.is_never_cancelled() => d
                    .field("op", &self.op().map(Op::name))
                    .field("state", &"never cancelled")
                    .finish(),
                _ => d
                    .field("op", &self.op().map(Op::name))
                    .field("state", &"cancelled")
                    .field("cause", &self.cause())
                    .finish(),
            };
        };
        let pool = self.inner();
        // SAFETY: live (I1).
        let meta = unsafe { pool.node(idx).meta() };
        let state = match tree::peek(pool, idx) {
            Peek::Active if self.is_never_cancelled() => "never cancelled",
            Peek::Active => "active",
            _ => "cancelled",
        };
        d.field("op", &self.op().map(Op::name))
            .field("state", &state)
            .field(
                "age",
                &std::time::Duration::from_millis(u64::from(
                    pool.timers.clock.now().wrapping_sub(meta.created),
                )),
            )
            .field("cause", &tree::cause_now(pool, idx))
            .field(
                "at",
                &format_args!("{}:{}", meta.location.file(), meta.location.line()),
            )
            .finish()
    }
}
