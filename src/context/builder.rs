//! Making children: [`ChildBuilder`] and the node initialisation they share.

use core::mem::MaybeUninit;
use core::panic::Location;
use std::time::{Duration, Instant};

use super::{CancelGuard, Context, EXHAUSTED, VIEW};
use crate::pool::slot::generation;
use crate::pool::{Local, PoolInner, PoolRef};
use crate::sync::Ordering;
use crate::time::clock::{nanos, widen, NS_PER_MS};
use crate::tree::cause::PoolExhausted;
use crate::tree::node::{
    Custom, Func, Meta, Node, Payload, Values, D_DEADLINE, D_TIMER, F_DETACHED, F_FUNC, F_NEVER,
    F_POOL_REF, F_REQ, F_TRACE, F_USER, F_VALUE, NIL, S_BACKTRACE,
};
use crate::values::{self, Op, RequestId, TraceContext, UserId};

/// Builds a child of a context with values set. Made by [`Context::child`].
///
/// ```
/// use ctxpool::{Context, Op, TraceContext, UserId};
///
/// static RENDER: Op = Op::new("render");
/// let trace = TraceContext { trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736, span_id: 0x00f067aa0ba902b7, flags: 1 };
/// let ctx = Context::background()
///     .child()
///     .op(&RENDER)
///     .trace(trace)
///     .user_id(UserId(1001))
///     .with_cancel();
/// let sub = ctx.with_cancel(); // values are inherited
/// assert_eq!(sub.trace(), Some(trace));
/// assert_eq!(sub.user_id(), Some(UserId(1001)));
/// ```
#[must_use = "a ChildBuilder does nothing until with_cancel, without_cancel or build is called"]
#[derive(Debug)]
pub struct ChildBuilder<'a> {
    parent: Parent<'a>,
    /// A request root: `with_cancel` applies the pool's default timeout.
    request: bool,
    location: &'static Location<'static>,
    op: Option<&'static Op>,
    trace: Option<TraceContext>,
    request_id: Option<RequestId>,
    user_id: Option<UserId>,
    /// A custom value for the child itself (`carry`), whatever its kind.
    carried: Carried,
}

/// A custom value a builder carries to the node it makes; dropped here if no node takes it.
#[derive(Default)]
struct Carried(Option<Custom>);

impl Drop for Carried {
    fn drop(&mut self) {
        if let Some(custom) = self.0.take() {
            let mut data = custom.data;
            // SAFETY: `carry` stored a value with this vtable, and `take` leaves it to no one
            // else: this is its one drop.
            unsafe { (custom.vt.drop)(&mut data) };
        }
    }
}

impl core::fmt::Debug for Carried {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

/// The parent a builder makes a child of: a caller's context, or a pool's background (request
/// roots).
#[derive(Debug)]
enum Parent<'a> {
    Borrowed(&'a Context),
    Owned(Context),
}

/// A requested deadline.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Want {
    After(Duration),
    At(Instant),
    /// The pool's default timeout (request roots).
    Default,
}

/// What kind of node to make.
enum Kind {
    /// Has an owner (`CancelGuard`).
    Cancel,
    /// No owner; cancelled with its parent.
    Plain,
    /// No owner; never cancelled.
    Detached,
    /// No owner; cancelled with its parent; carries a custom value.
    Value(Custom),
}

impl<'a> ChildBuilder<'a> {
    pub(crate) fn new(parent: &'a Context, location: &'static Location<'static>) -> Self {
        ChildBuilder {
            parent: Parent::Borrowed(parent),
            request: false,
            location,
            op: None,
            trace: None,
            request_id: None,
            user_id: None,
            carried: Carried(None),
        }
    }

    /// A builder for a request root of `pool`: a child of its background whose
    /// [`with_cancel`](ChildBuilder::with_cancel) applies the pool's default timeout.
    pub(crate) fn request(pool: &crate::Pool, location: &'static Location<'static>) -> Self {
        ChildBuilder {
            parent: Parent::Owned(pool.background()),
            request: true,
            location,
            op: None,
            trace: None,
            request_id: None,
            user_id: None,
            carried: Carried(None),
        }
    }

    fn parent(&self) -> &Context {
        match &self.parent {
            Parent::Borrowed(p) => p,
            Parent::Owned(p) => p,
        }
    }

    /// Makes [`with_cancel`](ChildBuilder::with_cancel) apply the pool's default timeout, as
    /// on a request root (read from the pool's packed limits word: no configuration access).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn default_timeout(mut self) -> Self {
        self.request = true;
        self
    }

    /// Sets every field of a request context at once, in place: what `http`'s `extract` does
    /// with the builder's setters, without moving the builder from one setter to the next.
    /// `carried` is stored in the child itself, whatever its kind (a cancellable request
    /// context included), found by [`Context::value`] on it and its descendants: what
    /// `with_value` does, without a node of its own. For values of one word or less (no box:
    /// no allocation): the request's identity.
    #[cfg(feature = "http")]
    pub(crate) fn set_request<T: Send + Sync + 'static>(
        &mut self,
        op: &'static Op,
        trace: TraceContext,
        request_id: RequestId,
        user_id: Option<UserId>,
        carried: T,
    ) {
        debug_assert!(core::mem::size_of::<T>() <= values::INLINE_VALUE_BYTES);
        self.op = Some(op);
        self.trace = Some(trace);
        self.request_id = Some(request_id);
        self.user_id = user_id;
        self.carried = Carried(Some(Custom {
            vt: values::vtable::<T>(),
            data: values::store_value(carried),
        }));
    }

    /// Sets the operation label.
    pub fn op(mut self, op: &'static Op) -> Self {
        self.op = Some(op);
        self
    }

    /// Sets the trace context.
    pub fn trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Sets the request id.
    pub fn request_id(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }

    /// Sets the user id.
    pub fn user_id(mut self, id: UserId) -> Self {
        self.user_id = Some(id);
        self
    }

    /// A cancellable child and its owner; born cancelled with
    /// [`Cause::PoolExhausted`](crate::Cause::PoolExhausted) if the pool is exhausted.
    ///
    /// On a request builder ([`Pool::request`](crate::Pool::request)) the child gets the
    /// pool's default timeout.
    #[inline]
    pub fn with_cancel(self) -> CancelGuard {
        let want = self.request.then_some(Want::Default);
        self.guarded(want)
    }

    /// A cancellable child and its owner, or an error if the pool is exhausted.
    pub fn try_with_cancel(mut self) -> Result<CancelGuard, PoolExhausted> {
        let want = self.request.then_some(Want::Default);
        self.create(Kind::Cancel, want).map(CancelGuard::new)
    }

    /// A cancellable child whose deadline is `timeout` from now (Go's `WithTimeout`), or its
    /// parent's if that is earlier; cut to the pool's maximum timeout. See
    /// [`Context::with_timeout`].
    #[inline]
    pub fn with_timeout(self, timeout: Duration) -> CancelGuard {
        self.guarded(Some(Want::After(timeout)))
    }

    /// Like [`with_timeout`](ChildBuilder::with_timeout), but fails if the pool is exhausted.
    pub fn try_with_timeout(mut self, timeout: Duration) -> Result<CancelGuard, PoolExhausted> {
        self.create(Kind::Cancel, Some(Want::After(timeout)))
            .map(CancelGuard::new)
    }

    /// A cancellable child with deadline `at` (Go's `WithDeadline`), or its parent's if that is
    /// earlier; cut to the pool's maximum timeout from now.
    #[inline]
    pub fn with_deadline(self, at: Instant) -> CancelGuard {
        self.guarded(Some(Want::At(at)))
    }

    /// Like [`with_deadline`](ChildBuilder::with_deadline), but fails if the pool is exhausted.
    pub fn try_with_deadline(mut self, at: Instant) -> Result<CancelGuard, PoolExhausted> {
        self.create(Kind::Cancel, Some(Want::At(at)))
            .map(CancelGuard::new)
    }

    /// A guarded child, born cancelled at exhaustion (a view of the parent's node).
    ///
    /// Inlined into the caller, so that a builder that sets at most an operation label and a
    /// request id (the common `ctx.child().op(&OP).with_cancel()`) is never written to memory
    /// as a whole: its fields are known at the call site, and the child is made by one
    /// out-of-line creation that takes just those values and returns the handle in a register
    /// (`create_labelled_made`). Anything else takes `guarded_slow`.
    #[inline(always)]
    fn guarded(self, want: Option<Want>) -> CancelGuard {
        if self.trace.is_none() && self.user_id.is_none() && self.carried.0.is_none() {
            if let Parent::Borrowed(parent) = self.parent {
                let (location, op, request_id) = (self.location, self.op, self.request_id);
                // Nothing to drop: the parent is borrowed and no value is carried (checked
                // just above). Forgetting the builder spares the call to its drop glue.
                core::mem::forget(self);
                let made = create_labelled_made(parent, location, op, request_id, want);
                return match Made::unpack(parent, made) {
                    Ok(c) => CancelGuard::new(c),
                    Err(_) => CancelGuard::new(parent.exhausted_child()),
                };
            }
        }
        self.guarded_slow(want)
    }

    /// `guarded` for a builder with a trace context, a user id or a carried value, or that
    /// owns its parent (a request root's builder).
    #[inline(never)]
    fn guarded_slow(mut self, want: Option<Want>) -> CancelGuard {
        match self.create(Kind::Cancel, want) {
            Ok(c) => CancelGuard::new(c),
            Err(_) => CancelGuard::new(self.parent().exhausted_child()),
        }
    }

    /// A child with these values, cancelled with its parent, without an owner of its own.
    ///
    /// It has no deadline of its own (it has no owner to cancel it), but inherits its
    /// parent's.
    pub fn build(mut self) -> Context {
        self.create(Kind::Plain, None)
            .unwrap_or_else(|_| self.parent().exhausted_child())
    }

    /// Like [`build`](ChildBuilder::build), but fails if the pool is exhausted.
    pub fn try_build(mut self) -> Result<Context, PoolExhausted> {
        self.create(Kind::Plain, None)
    }

    /// A child with these values that is never cancelled (Go's `WithoutCancel`). Like Go's,
    /// it has no deadline. At pool exhaustion it takes no slot: it reads its parent's values
    /// (not the ones set on this builder, which no slot holds), and is never cancelled all the
    /// same (Go's `WithoutCancel` never is); see [exhaustion](Context#at-pool-exhaustion).
    pub fn without_cancel(mut self) -> Context {
        self.create(Kind::Detached, None)
            .unwrap_or_else(|_| self.parent().detached_child())
    }

    /// A child carrying `value` (see [`Context::with_value`]). At pool exhaustion it is born
    /// cancelled, reads its parent's values, and `value` (which no slot holds) is dropped.
    pub fn with_value<T: Send + Sync + 'static>(mut self, value: T) -> Context {
        self.value_child(value)
            .unwrap_or_else(|_| self.parent().exhausted_child())
    }

    /// Like [`with_value`](ChildBuilder::with_value), but fails if the pool is exhausted.
    pub fn try_with_value<T: Send + Sync + 'static>(
        mut self,
        value: T,
    ) -> Result<Context, PoolExhausted> {
        self.value_child(value)
    }

    /// `try_with_value`, leaving the builder (its parent) to the caller.
    fn value_child<T: Send + Sync + 'static>(
        &mut self,
        value: T,
    ) -> Result<Context, PoolExhausted> {
        // A node holds one custom value: a carried one gives way to this one.
        drop(core::mem::take(&mut self.carried));
        let custom = Custom {
            vt: values::vtable::<T>(),
            data: values::store_value(value),
        };
        let r = self.create(Kind::Value(custom), None);
        if r.as_ref().map_or(true, |c| c.node_idx().is_none()) {
            let mut data = custom.data;
            // SAFETY: no node was made for it (an error, or a view born cancelled: a made
            // node is a plain handle and always takes its value), so the value stored above is
            // still ours, and this is its one drop.
            unsafe { (custom.vt.drop)(&mut data) };
        }
        r
    }

    fn create(&mut self, kind: Kind, deadline: Option<Want>) -> Result<Context, PoolExhausted> {
        let carried = self.carried.0.take();
        let spec = Spec {
            op: self.op,
            trace: self.trace,
            request_id: self.request_id,
            user_id: self.user_id,
            deadline,
            custom: carried,
        };
        let r = create(self.parent(), self.location, &spec, kind);
        if carried.is_some() && r.as_ref().map_or(true, |c| c.node_idx().is_none()) {
            // No node took the value: dropped here, once.
            drop(Carried(carried));
        }
        r
    }
}

/// Values a builder overrides.
pub(crate) struct Spec {
    op: Option<&'static Op>,
    trace: Option<TraceContext>,
    request_id: Option<RequestId>,
    user_id: Option<UserId>,
    /// An own deadline (only for `Kind::Cancel`: a deadline needs an owner, time D2).
    deadline: Option<Want>,
    /// A custom value for the node (`ChildBuilder::carry`), not with `Kind::Value`.
    custom: Option<Custom>,
}

impl Spec {
    /// Nothing overridden: everything inherited.
    pub(crate) const NONE: Spec = Spec {
        op: None,
        trace: None,
        request_id: None,
        user_id: None,
        deadline: None,
        custom: None,
    };
}

/// A cancellable child of `parent` with a deadline and inherited values.
#[inline(always)]
pub(crate) fn create_timed(
    parent: &Context,
    location: &'static Location<'static>,
    want: Want,
) -> Result<Context, PoolExhausted> {
    Made::unpack(parent, create_timed_made(parent, location, want))
}

/// A cancellable child of `parent` with inherited values: `Context::with_cancel`'s fast path.
#[inline(always)]
pub(crate) fn create_cancel(
    parent: &Context,
    location: &'static Location<'static>,
) -> Result<Context, PoolExhausted> {
    Made::unpack(parent, create_cancel_made(parent, location))
}

/// `create_timed`, out of line, with `create` specialised for it (nothing overridden but the
/// deadline).
#[inline(never)]
fn create_timed_made(parent: &Context, location: &'static Location<'static>, want: Want) -> Made {
    let spec = Spec {
        deadline: Some(want),
        ..Spec::NONE
    };
    Made::pack(create(parent, location, &spec, Kind::Cancel))
}

/// `create_cancel`, out of line, with `create` specialised for it (nothing overridden).
#[inline(never)]
fn create_cancel_made(parent: &Context, location: &'static Location<'static>) -> Made {
    Made::pack(create(parent, location, &Spec::NONE, Kind::Cancel))
}

/// `ChildBuilder`'s cancellable child with at most an operation label, a request id and a
/// deadline set, out of line, with `create` specialised for it (no trace, user id or carried
/// value).
#[inline(never)]
fn create_labelled_made(
    parent: &Context,
    location: &'static Location<'static>,
    op: Option<&'static Op>,
    request_id: Option<RequestId>,
    deadline: Option<Want>,
) -> Made {
    let spec = Spec {
        op,
        request_id,
        deadline,
        ..Spec::NONE
    };
    Made::pack(create(parent, location, &spec, Kind::Cancel))
}

/// What an out-of-line `create` returns: the new handle's slot and generation in one word
/// (`idx | gen << 32`), which comes back in a register. A `Result<Context, _>` would come back
/// through memory, written as two 4-byte stores that the caller reads back as one 8-byte load,
/// which the CPU cannot forward from its store buffer: a stall on every context made.
///
/// A made node's reference travels inside (the handle is rebuilt from the parent's pool
/// pointer, which is the new node's pool), and so does a view's reference on the node it
/// reads (a child of a view born cancelled, V1). A bare `EXHAUSTED` context (a child of one)
/// is `EXHAUSTED` with a non-zero generation; `EXHAUSTED` with 0 is the error (this creation
/// failed).
#[must_use = "a Made carries a reference on the node it names"]
struct Made(u64);

impl Made {
    #[inline(always)]
    fn pack(r: Result<Context, PoolExhausted>) -> Made {
        match r {
            Ok(ctx) => {
                let word = u64::from(ctx.idx) | u64::from(ctx.gen) << 32;
                if ctx.idx == EXHAUSTED {
                    // Its pool reference is taken again by `unpack`.
                    drop(ctx);
                } else {
                    // The node's reference moves into the word.
                    core::mem::forget(ctx);
                }
                Made(word)
            }
            Err(_) => Made(u64::from(EXHAUSTED)),
        }
    }

    #[inline(always)]
    fn unpack(parent: &Context, m: Made) -> Result<Context, PoolExhausted> {
        let (idx, gen) = (m.0 as u32, (m.0 >> 32) as u32);
        if idx != EXHAUSTED {
            Ok(Context::from_node(parent.pool, idx, gen))
        } else if gen != 0 {
            Ok(Context::exhausted(parent.pool_ref(), true))
        } else {
            Err(PoolExhausted {
                capacity: parent.inner().capacity(),
            })
        }
    }
}

/// Makes a child of `parent`. Inlined into each caller, so that what a caller does not
/// override costs no test.
#[inline(always)]
fn create(
    parent: &Context,
    location: &'static Location<'static>,
    spec: &Spec,
    kind: Kind,
) -> Result<Context, PoolExhausted> {
    if parent.idx >= VIEW && parent.idx != NIL {
        // A view or the bare exhausted form (context module docs): no node of its own.
        return create_from_view(parent, location, spec, kind);
    }
    let pool = parent.inner();
    let me = pool.local();
    let Some((idx, node)) = pool.acquire(me) else {
        if pool.metrics.on() {
            let op = spec
                .op
                .map_or_else(|| parent.op().map_or(0, Op::id), Op::id);
            pool.metrics
                .cancelled(op, crate::metrics::ops::R_EXHAUSTED, me.map(|l| l.shard));
        }
        return Err(PoolExhausted {
            capacity: pool.capacity(),
        });
    };
    // The parent, if it is a node; the caller's handle keeps it live (slot L1).
    // SAFETY: the index comes from a live handle of this pool.
    let pnode = parent.node_idx().map(|p| (p, unsafe { pool.node(p) }));
    let (mut flags, parent_never, mut dbits) = match pnode {
        Some((_, pn)) => {
            // SAFETY: live (L1): its flags and deadline bits are immutable.
            let (ps, pf) = unsafe { pn.shard_flags() };
            (
                pf & (F_TRACE | F_REQ | F_USER | 0xFF00),
                pf & F_NEVER != 0,
                ps & D_DEADLINE,
            )
        }
        None => (0, true, 0),
    };
    match kind {
        Kind::Cancel => {}
        Kind::Plain => {
            if parent_never {
                flags |= F_NEVER;
            }
        }
        Kind::Detached => {
            flags |= F_DETACHED | F_NEVER;
            dbits = 0;
        }
        Kind::Value(_) => {
            if parent_never {
                flags |= F_NEVER;
            }
            flags |= F_VALUE;
        }
    }
    // SAFETY: we own the slot (P2); nobody reads its payload until `publish`. The parent's
    // payload is immutable while it is live (P2, L1).
    node.payload.with_mut(|dst| unsafe {
        match pnode {
            Some((_, pn)) => pn
                .payload
                .with(|src| core::ptr::copy_nonoverlapping(src, dst, 1)),
            None => dst.write(Payload {
                values: Values::EMPTY,
            }),
        }
        let v = &mut (*dst).values;
        if let Some(op) = spec.op {
            v.op = op.id();
        }
        if let Some(t) = spec.trace {
            v.trace_id = [(t.trace_id >> 64) as u64, t.trace_id as u64];
            v.span_id = t.span_id;
            flags = (flags & 0x00FF) | F_TRACE | (u16::from(t.flags) << 8);
        }
        if let Some(r) = spec.request_id {
            v.request_id = r.0;
            flags |= F_REQ;
        }
        if let Some(u) = spec.user_id {
            v.user_id = u.0;
            flags |= F_USER;
        }
        if let Kind::Value(custom) = kind {
            v.custom = MaybeUninit::new(custom);
        } else if let Some(custom) = spec.custom {
            v.custom = MaybeUninit::new(custom);
            flags |= F_VALUE;
        }
    });
    let mut arm = None;
    let mut born_expired = None;
    // One read of the clock: the creation time (a deadline counts from the precise time).
    let now = pool.timers.clock.now64();
    if let Some(want) = spec.deadline {
        // SAFETY: we own the slot (P2); its payload holds the parent's deadline, if any.
        let inherited = node.payload.with(|p| unsafe { (*p).values.deadline });
        let own = own_deadline(pool, me, now, want, (dbits != 0).then_some(inherited));
        if let Own::Timer(dl) | Own::Expired(dl) = own {
            // SAFETY: as above.
            node.payload
                .with_mut(|p| unsafe { (*p).values.deadline = dl as u32 });
            dbits = D_DEADLINE | D_TIMER;
            if own == Own::Timer(dl) {
                arm = Some(dl);
            } else {
                born_expired = Some(dl as u32);
            }
        }
    }
    let every = pool.backtrace_every.load(Ordering::Relaxed);
    if every != 0 && crate::leak::sample(every) {
        let gen = generation(node.life.load(Ordering::Relaxed));
        if pool.capture_backtrace(idx, gen) {
            dbits |= S_BACKTRACE;
        }
    }
    let gen = publish(pool, me, node, pnode, location, now as u32, flags, dbits);
    if pool.metrics.on() {
        // SAFETY: published just now by us; the payload is immutable while it lives (P2).
        let op = node.payload.with(|p| unsafe { (*p).values.op });
        pool.metrics.created(op, me.map(|l| l.shard));
    }
    if let Some(dl) = arm {
        pool.arm(me, idx, gen, dl);
    } else if let Some(dl) = born_expired {
        // Born expired (time K4): `DeadlineExceeded` now, no timer; an ancestor already
        // cancelled wins (tree I12).
        crate::tree::expire_at_birth(pool, idx, dl);
    }
    Ok(Context::from_node(parent.pool, idx, gen))
}

/// Nanoseconds `ns` in whole ticks (milliseconds), rounded up.
#[inline(always)]
fn ceil_ticks(ns: u64) -> u64 {
    ns / NS_PER_MS + u64::from(ns % NS_PER_MS != 0)
}

/// Makes a child of a view or of the bare exhausted form (context V1..V3):
///
/// - a `without_cancel` child is made under the viewed node (it ignores that node's
///   cancellation and deadline anyway), or is the background when there is no node;
/// - any other child of a view born cancelled is born cancelled too, with
///   `Parent(PoolExhausted)`: an inherited view of the same node, taking no slot even when one
///   is free (Go: a child of a done context is done);
/// - any other child of a live view (a `without_cancel` made at exhaustion) is made under a
///   detached node made for the view, so that it does not see the viewed node's cancellation
///   or deadline (two slots; the detached node lives as long as the child).
///
/// `Err` when a slot was needed and none was free; the caller then makes
/// `parent.exhausted_child()` (or `detached_child()`).
#[cold]
#[inline(never)]
fn create_from_view(
    parent: &Context,
    location: &'static Location<'static>,
    spec: &Spec,
    kind: Kind,
) -> Result<Context, PoolExhausted> {
    let Some(base) = parent.viewed_node() else {
        // The bare exhausted form: no node to make anything under.
        return Ok(match kind {
            Kind::Detached => Context::background_of(parent.pool_ref()),
            _ => Context::exhausted(parent.pool_ref(), true),
        });
    };
    if let Kind::Detached = kind {
        return create(&base, location, spec, kind);
    }
    if let Some(done) = parent.inherited_child() {
        return Ok(done);
    }
    let detached = create(&base, location, &Spec::NONE, Kind::Detached)?;
    drop(base);
    create(&detached, location, spec, kind)
}

/// What a requested deadline gives a child.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Own {
    /// The inherited deadline is as early: the child relies on its parent's timer.
    Inherited,
    /// The child owns deadline tick `.0` and arms a timer for it.
    Timer(u64),
    /// The instant asked for is not after now: the child is born expired with tick `.0`, and
    /// arms nothing (time K4).
    Expired(u64),
}

/// The deadline tick a child should own, clamped to the maximum timeout (counted). Counted
/// from the clock's precise time and rounded up, never from the coarse tick `now`, so that it
/// is never earlier than the instant asked for (time K2).
#[inline]
fn own_deadline(
    pool: &PoolInner,
    me: Option<Local<'_>>,
    now: u64,
    want: Want,
    inherited: Option<u32>,
) -> Own {
    let clock = &pool.timers.clock;
    let (default_ms, max_ms) = pool.limits();
    // Deadlines from the upper bound of the precise time (never early), "already past" and
    // the cut from the lower one (never before its instant, never beyond the maximum), K2.
    // All in nanoseconds since the clock's epoch (`u64`: 584 years), rounded to ticks last.
    let (lower, upper) = clock.precise_bracket();
    let max = u64::from(max_ms) * NS_PER_MS;
    // The cut: never later than `now + max_timeout` (rounded down, so `remaining()` never
    // exceeds the maximum); counted only when the request itself was longer.
    let cut = lower.saturating_add(max);
    let (mut dl, expired, over) = match want {
        Want::After(d) => {
            let d = nanos(d);
            (ceil_ticks(upper.saturating_add(d)), d == 0, d > max)
        }
        Want::At(at) => {
            let at = clock.ns_of(at);
            (ceil_ticks(at), at <= lower, at > cut)
        }
        Want::Default => (
            ceil_ticks(upper.saturating_add(u64::from(default_ms) * NS_PER_MS)),
            false,
            default_ms > max_ms,
        ),
    };
    let cap = cut / NS_PER_MS;
    if dl > cap {
        dl = cap;
        if over {
            pool.count_clamp(me);
        }
    }
    // A deadline in the past is "now": already expired, and never so far back that its
    // 32-bit tick would wrap around into the future (time K1).
    dl = dl.max(now);
    match inherited {
        Some(p) if widen(now, p) <= dl => Own::Inherited,
        _ if expired => Own::Expired(dl),
        _ => Own::Timer(dl),
    }
}

/// Finishes an acquired slot whose payload is written: takes what the new node holds on its
/// parent (a lease or a reference, I1, I10) or, for a root of a built pool, on the pool (P4);
/// writes its metadata (`created` is the current tick); and publishes it with one reference.
/// Returns the generation.
#[inline]
#[allow(clippy::too_many_arguments)]
fn publish(
    pool: &PoolInner,
    me: Option<Local<'_>>,
    node: &Node,
    pnode: Option<(u32, &Node)>,
    location: &'static Location<'static>,
    created: u32,
    mut flags: u16,
    dbits: u16,
) -> u32 {
    let (parent, leased) = match pnode {
        None => {
            // A root of a built pool holds a reference on it (P4), released by its teardown;
            // the global pool is never freed and keeps no count.
            if !pool.is_global() {
                // SAFETY: the caller's handle keeps the pool alive.
                let _ = unsafe { PoolRef::acquire(core::ptr::NonNull::from(pool)) }.into_raw();
                flags |= F_POOL_REF;
            }
            (NIL, false)
        }
        Some((p, pn)) => {
            let pgen = generation(pn.life.load(Ordering::Relaxed));
            // I1: counted in this thread's lease for the parent (I10), or else a reference;
            // the caller's handle keeps the parent live meanwhile.
            let leased = pool.lease(me, pn, p, pgen);
            if !leased {
                pn.life.clone_ref();
            }
            (p, leased)
        }
    };
    // SAFETY: we own the slot (P2); nobody reads these fields until `init` publishes it.
    unsafe {
        node.meta.with_mut(|m| {
            *m = Meta {
                location,
                parent,
                created,
            }
        });
        node.set_incarnation(leased, dbits, flags);
    }
    node.life.init()
}

/// Initialises acquired slot `idx` as an `after_func` node under live node `parent`.
pub(crate) fn init_func(
    pool: &PoolInner,
    me: Option<Local<'_>>,
    idx: u32,
    parent: u32,
    location: &'static Location<'static>,
    func: Func,
) -> u32 {
    // SAFETY: `idx` was just acquired (P2); `parent` comes from the caller's live handle.
    let (node, pn) = unsafe { (pool.node(idx), pool.node(parent)) };
    // SAFETY: we own the slot (P2).
    node.payload
        .with_mut(|p| unsafe { p.write(Payload { func }) });
    let created = pool.timers.clock.now();
    publish(
        pool,
        me,
        node,
        Some((parent, pn)),
        location,
        created,
        F_FUNC,
        0,
    )
}
