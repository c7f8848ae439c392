//! The OpenTelemetry bridge (feature `opentelemetry`, on `opentelemetry` 0.33: the release
//! line `tracing-opentelemetry` 0.34 depends on, so the two combine).
//!
//! Three things make the span ids ctxpool sends the spans that get exported:
//!
//! 1. **Conversions**, both ways: [`TraceContext::to_span_context`] and
//!    [`TraceContext::from_span_context`]; [`TraceState::to_otel`] and
//!    [`TraceState::from_otel`].
//! 2. **The server span's parent is the incoming `traceparent`**: [`parent`] (and
//!    [`RequestContext::otel_parent`](crate::http::RequestContext::otel_parent),
//!    [`Incoming::otel_parent`](crate::http::Incoming::otel_parent)) makes an OpenTelemetry
//!    `Context` whose span is the caller's, remote, with the incoming `tracestate`: what
//!    `tracing-opentelemetry`'s `OpenTelemetrySpanExt::set_parent` takes, or a `Tracer`'s
//!    `start_with_context`. For a request that started a new trace it is an empty context,
//!    so the server span is a root.
//! 3. **The outgoing `traceparent` names the exported span**: [`Propagator::inject`] (and
//!    so [`Propagator::inject_context`] and the client layer) looks up the OpenTelemetry
//!    span current on the calling thread ([`current_span`]: the span of
//!    `opentelemetry::Context::current()`, when it is valid and local). When there is one,
//!    `traceparent` carries its trace id and span id, and its sampled flag (it is what the
//!    exporter records); ctxpool's own span id is sent only when there is none.
//!
//! # Which span is current
//!
//! The hook reads `opentelemetry::Context::current()` and nothing else, so ctxpool depends
//! on `opentelemetry` only, not on `tracing-opentelemetry`: code that attaches contexts
//! itself (`Context::attach`, `FutureExt::with_context`) and code that uses `tracing` spans
//! exported by `tracing-opentelemetry` are both covered, since `tracing-opentelemetry`'s
//! layer makes an entered span's context current (`with_context_activation`, on by
//! default). With `tracing`, run the handler and the tasks that make outgoing calls inside
//! the server span (`Instrument::instrument`, [`Traced::task`](crate::Traced::task)): the
//! client layer injects in `call`, inside the caller's poll, so in the caller's span.
//!
//! A remote span context (the caller's, attached without a span of ours) is not an
//! exported span of this process and is skipped: ctxpool's own span id is sent then.
//!
//! # Trace ids
//!
//! With an incoming `traceparent`, the server span continues its trace (through [`parent`])
//! and the trace ids agree. A request without one starts a trace twice: ctxpool's (its id
//! in the context, in log fields) and the OpenTelemetry SDK's root span (an id its
//! `IdGenerator` chooses). Outgoing calls then carry the SDK's trace id, the one exported, so
//! the trace continues downstream under the id the exporter knows; the random flag is sent
//! only when the trace is ctxpool's (whose ids are random) or the span's flags say so.
//!
//! # Cost
//!
//! With the feature off, `inject` is what it was (no lookup; zero allocations,
//! `tests/alloc_free.rs`). With it on, each `inject` makes one thread-local read of
//! OpenTelemetry's current context (a `RefCell` borrow and a few loads; no allocation, no
//! clone of the context or of its `tracestate`: `tests/alloc_free.rs`,
//! `http_inject_names_the_current_otel_span`).
//!
//! [`Propagator::inject`]: crate::http::Propagator::inject
//! [`Propagator::inject_context`]: crate::http::Propagator::inject_context
//!
//! ```
//! use ctxpool::http::{Propagator, TRACEPARENT};
//! use ctxpool::{Pool, TraceContext};
//! use opentelemetry::trace::TraceContextExt;
//!
//! let pool = Pool::builder().build().unwrap();
//! let propagator = Propagator::new(&pool);
//! let mut incoming = http::HeaderMap::new();
//! incoming.insert(
//!     TRACEPARENT,
//!     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
//! );
//! let req = propagator.extract(&incoming, None);
//!
//! // The server span's parent: the caller's span, remote.
//! let parent = req.otel_parent();
//! let caller = parent.span().span_context().clone();
//! assert_eq!(caller.span_id(), 0x00f067aa0ba902b7u64.into());
//! assert!(caller.is_remote() && caller.is_sampled());
//!
//! // A span of ours, current (as `tracing-opentelemetry` makes an entered span).
//! let ours = TraceContext { trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736, span_id: 0x77, flags: 1 };
//! let cx = opentelemetry::Context::new().with_remote_span_context(
//!     ours.to_span_context(false, Default::default()),
//! );
//! let _current = cx.attach();
//!
//! // The outgoing call names it.
//! let mut out = http::HeaderMap::new();
//! propagator.inject(&req.context(), req.meta(), &mut out, None).unwrap();
//! assert_eq!(out[TRACEPARENT], "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000077-01");
//! ```

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState as OtelTraceState,
};

use crate::http::Propagated;
use crate::propagation::{TraceState, TraceStateError, FLAG_RANDOM, FLAG_SAMPLED, KNOWN_FLAGS};
use crate::{Context, TraceContext};

impl TraceContext {
    /// This trace context as an OpenTelemetry `SpanContext`, `remote` or not, with `state`
    /// as its `tracestate` (see [`TraceState::to_otel`]). The flags are passed as they are
    /// (the sampled flag and Level 2's random flag).
    ///
    /// ```
    /// use ctxpool::TraceContext;
    ///
    /// let tc = TraceContext { trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736, span_id: 0xf067aa0ba902b7, flags: 3 };
    /// let sc = tc.to_span_context(true, Default::default());
    /// assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
    /// assert_eq!(sc.trace_flags().to_u8(), 3);
    /// assert_eq!(TraceContext::from_span_context(&sc), Some(tc));
    /// ```
    pub fn to_span_context(&self, remote: bool, state: OtelTraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.span_id),
            TraceFlags::new(self.flags),
            remote,
            state,
        )
    }

    /// The trace id, span id and flags of an OpenTelemetry `SpanContext`; `None` when it is
    /// not valid (a zero trace or span id: no span). Flags other than the sampled and random
    /// flags are cleared, as [`parse_traceparent`](crate::propagation::parse_traceparent)
    /// clears them.
    ///
    /// ```
    /// use ctxpool::TraceContext;
    /// use opentelemetry::trace::SpanContext;
    ///
    /// assert_eq!(TraceContext::from_span_context(&SpanContext::empty_context()), None);
    /// ```
    pub fn from_span_context(sc: &SpanContext) -> Option<TraceContext> {
        if !sc.is_valid() {
            return None;
        }
        Some(TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8() & KNOWN_FLAGS,
        })
    }
}

impl TraceState {
    /// This `tracestate` as OpenTelemetry's, members in the same order.
    ///
    /// Fails with [`TraceStateError::BadKey`] on a key OpenTelemetry refuses: it checks the
    /// multi-tenant form (one `@`, then at most 13 bytes of system id starting with a
    /// letter or digit) more strictly than the Level 2 grammar this crate follows (`@`
    /// anywhere). Every value this crate accepts, OpenTelemetry accepts.
    ///
    /// ```
    /// use ctxpool::propagation::{TraceState, TraceStateError};
    ///
    /// let ts = TraceState::parse([&b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"[..]]).unwrap();
    /// let otel = ts.to_otel().unwrap();
    /// assert_eq!(otel.header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    /// assert_eq!(TraceState::from_otel(&otel), Ok(ts));
    ///
    /// let level2 = TraceState::parse([&b"a@b@c=1"[..]]).unwrap();
    /// assert_eq!(level2.to_otel().unwrap_err(), TraceStateError::BadKey);
    /// ```
    pub fn to_otel(&self) -> Result<OtelTraceState, TraceStateError> {
        if self.is_empty() {
            return Ok(OtelTraceState::NONE);
        }
        OtelTraceState::from_key_value(self.iter()).map_err(|_| TraceStateError::BadKey)
    }

    /// OpenTelemetry's `tracestate` as this crate's, members in the same order, validated
    /// as [`TraceState::parse`] validates a header (OpenTelemetry checks values less: a
    /// byte outside 0x20–0x7e, or a trailing space, is [`TraceStateError::BadValue`]); a
    /// repeated key keeps its first occurrence.
    pub fn from_otel(state: &OtelTraceState) -> Result<TraceState, TraceStateError> {
        let header = state.header();
        TraceState::parse([header.as_bytes()])
    }
}

/// The trace context of the OpenTelemetry span current on this thread (the span of
/// `opentelemetry::Context::current()`), when there is one that is valid and local: the
/// span [`Propagator::inject`](crate::http::Propagator::inject) names as the parent of an
/// outgoing call. A remote span context (a caller's) is not one.
///
/// No allocation: the current context is read in place, not cloned.
///
/// ```
/// use ctxpool::otel::current_span;
/// use ctxpool::TraceContext;
/// use opentelemetry::trace::TraceContextExt;
///
/// assert_eq!(current_span(), None);
/// let tc = TraceContext { trace_id: 7, span_id: 9, flags: 1 };
/// let remote = opentelemetry::Context::new()
///     .with_remote_span_context(tc.to_span_context(true, Default::default()));
/// let guard = remote.attach();
/// assert_eq!(current_span(), None); // the caller's span, not ours
/// drop(guard);
/// let local = opentelemetry::Context::new()
///     .with_remote_span_context(tc.to_span_context(false, Default::default()));
/// let _guard = local.attach();
/// assert_eq!(current_span(), Some(tc));
/// ```
pub fn current_span() -> Option<TraceContext> {
    opentelemetry::Context::map_current(|cx| {
        if !cx.has_active_span() {
            return None;
        }
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_remote() {
            return None;
        }
        TraceContext::from_span_context(sc)
    })
}

/// What an outgoing call carries when `span` (the current OpenTelemetry span) is its
/// parent: the span's ids and sampled flag; the random flag from the context's trace when
/// it is the same trace, else from the span.
pub(crate) fn outgoing(span: TraceContext, ctx: Option<TraceContext>) -> TraceContext {
    let random = match ctx {
        Some(tc) if tc.trace_id == span.trace_id => tc.flags & FLAG_RANDOM,
        _ => span.flags & FLAG_RANDOM,
    };
    TraceContext {
        flags: (span.flags & FLAG_SAMPLED) | random,
        ..span
    }
}

/// The OpenTelemetry parent of the server span of the request `ctx` belongs to: the
/// caller's span (the incoming `traceparent`'s trace id, parent id and flags, with the
/// incoming `tracestate`), as a remote span context; an empty `Context` (a root span) when
/// the request started a new trace or `ctx` belongs to no extracted request.
///
/// The incoming `tracestate` is dropped from it when OpenTelemetry refuses one of its keys
/// ([`TraceState::to_otel`]); the outgoing `tracestate` is ctxpool's and is unaffected.
///
/// With `tracing-opentelemetry`, `span.set_parent(ctxpool::otel::parent(&ctx))` before the
/// span is first entered.
pub fn parent(ctx: &Context) -> opentelemetry::Context {
    match Propagated::of(ctx) {
        Some(meta) => remote_parent(meta, ctx.trace()),
        None => opentelemetry::Context::new(),
    }
}

/// The caller's span as a remote parent, from a request's metadata and its context's trace.
pub(crate) fn remote_parent(
    meta: &Propagated,
    trace: Option<TraceContext>,
) -> opentelemetry::Context {
    let (Some(span_id), Some(tc)) = (meta.parent_span(), trace) else {
        return opentelemetry::Context::new();
    };
    let caller = TraceContext { span_id, ..tc };
    let state = meta.tracestate().to_otel().unwrap_or_default();
    opentelemetry::Context::new().with_remote_span_context(caller.to_span_context(true, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_flags() {
        let span = TraceContext {
            trace_id: 5,
            span_id: 6,
            flags: FLAG_SAMPLED,
        };
        let same = TraceContext {
            trace_id: 5,
            span_id: 1,
            flags: FLAG_RANDOM,
        };
        assert_eq!(outgoing(span, Some(same)).flags, FLAG_SAMPLED | FLAG_RANDOM);
        let other = TraceContext {
            trace_id: 4,
            ..same
        };
        assert_eq!(outgoing(span, Some(other)).flags, FLAG_SAMPLED);
        assert_eq!(outgoing(span, None), span);
        let unsampled = TraceContext { flags: 0, ..span };
        assert_eq!(outgoing(unsampled, Some(same)).flags, FLAG_RANDOM);
        assert_eq!(outgoing(unsampled, Some(same)).span_id, 6);
    }

    #[test]
    fn flags_outside_the_known_ones_are_cleared() {
        let tc = TraceContext {
            trace_id: 1,
            span_id: 2,
            flags: 0xff,
        };
        let back =
            TraceContext::from_span_context(&tc.to_span_context(false, OtelTraceState::NONE));
        assert_eq!(back.unwrap().flags, KNOWN_FLAGS);
    }
}
