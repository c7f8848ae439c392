//! `tracing` spans made from contexts (feature `tracing`): [`Context::span`] and [`Traced`].
//!
//! A span made from a context records the context's `trace_id`, `span_id`, `request_id` (the
//! original `x-request-id` text when the context belongs to a request extracted by
//! [`ctxpool::http`](crate::http), else the context's [`RequestId`](crate::RequestId) in hex),
//! `user_id` and `op` as fields, so every event inside it carries them. Ids a context does
//! not have are left empty.
//!
//! [`Traced`] keeps a context and its span together: one value to move into a spawned task,
//! whose future runs inside the span ([`Traced::task`]).

use core::future::Future;

use tracing::instrument::Instrumented;
use tracing::{Instrument, Span};

use crate::Context;

impl Context {
    /// An `INFO` span named `context` with this context's ids as fields: `trace_id` and
    /// `span_id` (hex, as in `traceparent`), `request_id`, `user_id` and `op` (see the
    /// [module docs](crate::span)). Entering it is one call
    /// (`let _in = ctx.span().entered();`).
    ///
    /// ```
    /// use ctxpool::{Context, Op, RequestId};
    ///
    /// static LOAD: Op = Op::new("load_user");
    /// let ctx = Context::background().child().op(&LOAD).request_id(RequestId(7)).with_cancel();
    /// let _in = ctx.span().entered();
    /// tracing::info!("loading"); // carries op = "load_user", request_id = "0000000000000007"
    /// ```
    pub fn span(&self) -> Span {
        let span = tracing::info_span!(
            "context",
            op = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            request_id = tracing::field::Empty,
            user_id = tracing::field::Empty,
        );
        if span.is_disabled() {
            return span;
        }
        if let Some(op) = self.op() {
            span.record("op", op.name());
        }
        if let Some(tc) = self.trace() {
            span.record("trace_id", tracing::field::display(Hex32(tc.trace_id)));
            span.record("span_id", tracing::field::display(Hex16(tc.span_id)));
        }
        #[cfg(feature = "http")]
        if let Some(meta) = crate::http::Propagated::of(self) {
            let id = meta.request_id();
            span.record("request_id", id.as_str());
        } else if let Some(id) = self.request_id() {
            span.record("request_id", tracing::field::display(id));
        }
        #[cfg(not(feature = "http"))]
        if let Some(id) = self.request_id() {
            span.record("request_id", tracing::field::display(id));
        }
        if let Some(user) = self.user_id() {
            span.record("user_id", user.0);
        }
        span
    }

    /// This context and [its span](Context::span), together.
    pub fn traced(&self) -> Traced {
        Traced {
            span: self.span(),
            ctx: self.clone(),
        }
    }
}

/// A context and its span, moved as one value (into a spawned task, a callback, a queue).
///
/// ```
/// use ctxpool::Context;
///
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let req = Context::background().with_cancel();
/// let task = tokio::spawn(req.traced().task(|t| async move {
///     tracing::info!("in the request's span"); // fields: its trace, request and user ids
///     t.context().is_cancelled()
/// }));
/// assert!(!task.await.unwrap());
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct Traced {
    ctx: Context,
    span: Span,
}

impl Traced {
    /// Pairs `ctx` with a span of the caller's choosing (e.g. one with more fields).
    pub fn new(ctx: Context, span: Span) -> Self {
        Traced { ctx, span }
    }

    /// The context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The span.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Enters the span until the guard drops (synchronous code only: do not hold it across
    /// an `.await`).
    pub fn enter(&self) -> tracing::span::Entered<'_> {
        self.span.enter()
    }

    /// Runs `f` inside the span.
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        self.span.in_scope(f)
    }

    /// The future `f` makes from this value, run inside the span at every poll: what to
    /// hand to `tokio::spawn`.
    pub fn task<Fut: Future>(self, f: impl FnOnce(Traced) -> Fut) -> Instrumented<Fut> {
        let span = self.span.clone();
        f(self).instrument(span)
    }

    /// The context and the span, apart.
    pub fn into_parts(self) -> (Context, Span) {
        (self.ctx, self.span)
    }
}

/// A trace id as 32 lowercase hex digits, formatted without allocating.
struct Hex32(u128);

impl core::fmt::Display for Hex32 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A span id as 16 lowercase hex digits.
struct Hex16(u64);

impl core::fmt::Display for Hex16 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
