//! Propagation over HTTP headers (feature `http`) and a tower layer (feature `tower`).
//!
//! A [`Propagator`] turns an incoming request's headers and peer address into a request
//! context ([`Propagator::extract`]) and carries a context onto an outgoing call's headers
//! ([`Propagator::inject`]). The header grammars are in [`crate::propagation`]; this module
//! decides what to do with each header:
//!
//! | header | incoming | outgoing |
//! |---|---|---|
//! | `traceparent` | kept when valid (one line), its sampled flag honoured; otherwise a new trace starts, sampled as `propagation.sampler` decides, with the random flag, and `tracestate` is ignored | same trace id and flags, a new span id per call; with feature `opentelemetry`, the current OpenTelemetry span's ids and sampled flag when there is one ([`crate::otel`]) |
//! | `tracestate` | all lines combined; a repeated key → that member dropped (the first kept, counted as `duplicate_key`); invalid or over 32 members → dropped whole | passed on unchanged |
//! | `baggage` | all lines combined; invalid members dropped, over the limits → dropped whole | passed on |
//! | `x-request-id` | kept when well-formed (1–128 visible ASCII bytes, one line); generated otherwise | passed on; echoed on the response by the layer |
//! | `grpc-timeout` | the request's deadline under the **deadline policy** below; invalid → the route's budget | the remaining time minus `outbound_deadline_margin`; an expired budget is not sent, the call fails fast |
//! | `x-user-id` | honoured only from a peer in `propagation.trusted_peers` | sent only to a trusted destination, unless [`PropagatorBuilder::forward_user_id`] |
//!
//! **The deadline policy** (the safe default; H6). Each request has a *route budget*: what
//! [`ContextLayer::timeout_for`] (or the `budget` of [`Propagator::extract_route`]) gives
//! its route, else the configured `default_timeout`. The request's deadline is the incoming
//! `grpc-timeout` when it is within the budget, else the budget: a peer may shorten the
//! server's work, never stretch it. Only a peer in `propagation.trusted_peers` may ask for
//! more than the budget, and it still gets at most `max_timeout`. Every cut is counted by
//! reason ([`DeadlineCut`], `ctxpool_propagation_deadline_cuts_total{reason}`) and noted on
//! the request ([`Propagated::deadline_cut`]).
//!
//! | peer | incoming `grpc-timeout` | deadline | counted as |
//! |---|---|---|---|
//! | any | none or invalid | the budget (cut to `max_timeout`) | `max_timeout` when the budget is above it |
//! | any | ≤ the budget | the incoming one | — |
//! | untrusted (or unknown) | > the budget | the budget | `route_budget` |
//! | trusted | > the budget | the incoming one, cut to `max_timeout` | `max_timeout` when cut |
//!
//! Every header that is ignored, dropped or replaced is counted by header and reason
//! ([`Propagator::stats`], rendered by [`Propagator::write_prometheus`] as
//! `ctxpool_propagation_rejected_total{header,reason}`); nothing in a header can make
//! extraction panic, allocate without bound or fail: the worst a hostile header gets is a
//! fresh trace, a generated request id and the default deadline.
//!
//! Invariants:
//!
//! - H1. `extract` always returns a request context: a child of the propagator's parent (or a
//!   request root of the pool) with a deadline (the deadline policy's, H6; clamped to
//!   `max_timeout` by the pool, which counts the clamp). At pool exhaustion it is born cancelled with `PoolExhausted`.
//! - H2. Extracting a request allocates nothing when its propagation headers are a valid
//!   `traceparent`, `x-request-id` and `grpc-timeout`, and `tracestate` and `baggage` each
//!   on one line in normal form, as every implementation we know sends them
//!   (`tests/alloc_free.rs`): the request id is inline, and of `tracestate` and `baggage`
//!   only the incoming value is kept (H5). Injecting allocates nothing in steady state: the
//!   values it makes are cut from a per-thread buffer (`value.rs`, V1–V3; a value over 256
//!   bytes, such as a large edited baggage, gets a buffer of its own), the kept ones cloned
//!   (a reference count).
//! - H3. `inject` never sends a deadline the context does not have: the budget is the
//!   remaining time minus the margin, rounded down (`format_grpc_timeout`); when nothing is
//!   left, no header is written and the call gets `Err(ContextError::DeadlineExceeded)`.
//! - H4. The configuration is read on every call, so a runtime update applies to the next
//!   request: the default and maximum timeouts from the pool's packed limits word (as every
//!   context creation does) and `outbound_deadline_margin` from a word of its own, the
//!   trusted peers through [`Pool::with_config`] (an arc-swap guard: no write to a shared
//!   reference count per request), and only when there is a user id to check; the sampler
//!   the same way, only when a trace starts here.
//! - H5. A `tracestate` or `baggage` that arrives as one line already in normal form (what
//!   [`TraceState::as_str`] or [`Baggage::as_str`] would give) is validated in one pass and
//!   kept as the incoming `HeaderValue`, not parsed into a copy; [`Propagated::tracestate`]
//!   and [`Propagated::baggage`] parse it on first read (it is valid, so the parse succeeds).
//!   Anything else (several lines, whitespace, members to drop) is parsed at once, and sent
//!   on from the parsed text. Either way the same members reach `inject` (property tests in
//!   `propagation::{tracestate, baggage}`: `is_normalised_line_agrees_with_parse`).
//! - H6. The deadline `extract` gives is at most max(route budget, trusted peer's
//!   `grpc-timeout`) and never above `max_timeout`; an untrusted peer's `grpc-timeout` can only
//!   shorten it (`tests/deadline_policy.rs`). The trusted peers are looked up only when an
//!   incoming `grpc-timeout` is above the budget, the limits from the pool's packed word (H4).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;
use crate::metrics::ShardedCounter;
use crate::propagation::{
    format_grpc_timeout, format_traceparent, new_span_id, parse_grpc_timeout, parse_traceparent,
    parse_user_id, Baggage, BaggageError, GrpcTimeoutError, RequestIdError, TraceParentError,
    TraceState, TraceStateError, UserIdError, XRequestId, GRPC_TIMEOUT_MAX_LEN, MAX_REQUEST_ID_LEN,
    TRACEPARENT_LEN,
};
use crate::{CancelGuard, Context, ContextError, Op, Pool, Reason, TraceContext, UserId};

#[cfg(feature = "tower")]
pub mod client;
#[cfg(feature = "tower")]
pub mod drain;
mod identity;
#[cfg(feature = "tower")]
mod layer;
mod value;
#[cfg(feature = "tower")]
pub use client::{ClientError, ClientFuture, ClientLayer, ClientService};
#[cfg(feature = "tower")]
pub use drain::{Drain, DrainReport};
use identity::SharedMeta;
#[cfg(feature = "tonic")]
pub(crate) use layer::Why;
#[cfg(feature = "tower")]
pub use layer::{
    default_error_body, AfterCancel, BoxError, ContextBody, ContextLayer, ContextService,
    ErrorBody, ErrorBodyFor, OpFor, PeerOf, ResponseFuture, TimeoutFor,
};
use value::{header_value, room, LARGEST};

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C Trace Context).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `baggage` (W3C Baggage).
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `grpc-timeout` (gRPC over HTTP/2).
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `x-user-id`.
pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");

/// The reason a request context is cancelled with when its client goes away (the layer's
/// response future, or the response body, is dropped before its end).
pub const CLIENT_DISCONNECTED: Reason = Reason::Message("client disconnected");

/// The reason the tower layer cancels a request's context with when the handler panicked
/// (the response future or body dropped by the unwinding).
pub const HANDLER_PANICKED: Reason = Reason::Message("handler panicked");

/// The HTTP status for a request whose context was cancelled with `cause`: `504 Gateway
/// Timeout` when a deadline passed (its own or an ancestor's), `503 Service Unavailable`
/// otherwise (shutdown, pool exhaustion, an explicit cancel). The tower layer answers with
/// it; a handler whose sub-operation was cancelled answers with [`answer_cancelled`].
///
/// ```
/// use ctxpool::http::status_for;
/// use ctxpool::{Cause, Origin};
///
/// let past = std::time::Instant::now();
/// assert_eq!(status_for(Cause::Parent(Origin::DeadlineExceeded(past))), 504);
/// assert_eq!(status_for(Cause::Shutdown), 503);
/// ```
pub fn status_for(cause: crate::Cause) -> ::http::StatusCode {
    if cause.error() == ContextError::DeadlineExceeded {
        ::http::StatusCode::GATEWAY_TIMEOUT
    } else {
        ::http::StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Marks a handler's response as "not done: cancelled with this cause" (made by
/// [`answer_cancelled`]). The tower layer answers in its place as it answers a request
/// cancelled before its response was ready: the status for the cause ([`status_for`]), its
/// configured error body, or gRPC's trailers-only form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerCancelled(pub crate::Cause);

/// The answer of a handler whose work was cancelled: `status_for(cause)` with an empty body,
/// marked [`AnswerCancelled`] so that the tower layer replaces it with its own answer for
/// `cause` (its error body, or gRPC's trailers-only form).
///
/// The pattern for handlers: look at the cause of every sub-operation whose result the
/// answer needs, not only at the request's context. A sub-operation can be cancelled while
/// the request is not: born cancelled with `PoolExhausted` when the pool is at capacity, or
/// cancelled by a shorter timeout of its own. Answering `200` then claims work that was not
/// done.
///
/// ```
/// use ctxpool::http::{answer_cancelled, AnswerCancelled};
/// use ctxpool::{Cause, Context};
///
/// fn handler(request: &Context) -> http::Response<String> {
///     let part = request.with_cancel(); // born cancelled at pool exhaustion
///     if let Some(cause) = part.cause() {
///         return answer_cancelled(cause);
///     }
///     // ... do the work under `part` ...
///     http::Response::new("done".into())
/// }
///
/// let request = Context::background().with_cancel();
/// assert_eq!(handler(&request).status(), 200);
/// let shed = answer_cancelled::<String>(Cause::PoolExhausted);
/// assert_eq!(shed.status(), 503);
/// assert_eq!(shed.extensions().get(), Some(&AnswerCancelled(Cause::PoolExhausted)));
/// ```
pub fn answer_cancelled<B: Default>(cause: crate::Cause) -> ::http::Response<B> {
    let mut resp = ::http::Response::new(B::default());
    *resp.status_mut() = status_for(cause);
    resp.extensions_mut().insert(AnswerCancelled(cause));
    resp
}

/// The operation label of request contexts made by a propagator without one of its own.
pub static HTTP_REQUEST: Op = Op::new("http_request");

/// Turns request headers into request contexts and contexts into outgoing headers.
///
/// Cheap to clone (one `Arc`); share one per server.
///
/// ```
/// use ctxpool::http::{Propagator, TRACEPARENT};
/// use ctxpool::Pool;
/// use http::HeaderMap;
///
/// let pool = Pool::builder().build().unwrap();
/// let propagator = Propagator::new(&pool);
///
/// let mut incoming = HeaderMap::new();
/// incoming.insert(
///     TRACEPARENT,
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
/// );
/// incoming.insert("grpc-timeout", "250m".parse().unwrap());
/// let req = propagator.extract(&incoming, None);
/// assert_eq!(req.context().trace().unwrap().trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
/// // (deadlines round up to the 1 ms tick: at most one more than asked)
/// assert!(req.context().remaining().unwrap() <= std::time::Duration::from_millis(251));
///
/// // An outgoing call: same trace, a new span, the remaining time minus the margin.
/// let mut outgoing = HeaderMap::new();
/// propagator.inject(&req.context(), req.meta(), &mut outgoing, None).unwrap();
/// let tp = outgoing[TRACEPARENT].to_str().unwrap();
/// assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
/// assert!(outgoing.contains_key("grpc-timeout"));
/// assert_eq!(outgoing["x-request-id"], req.meta().request_id().as_str());
/// ```
#[derive(Clone)]
pub struct Propagator {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    parent: Option<Context>,
    op: &'static Op,
    forward_user_id: bool,
    /// Shared with the pool's metrics upkeep when published (`publish_metrics`): the
    /// upkeep holds it weakly, and it owns no pool handle, so the driver never ends up
    /// dropping a pool from its own turn.
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Propagator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Propagator")
            .field("op", &self.shared.op.name())
            .field("parent", &self.shared.parent.as_ref().map(|p| p.id()))
            .field("forward_user_id", &self.shared.forward_user_id)
            .finish()
    }
}

/// Builds a [`Propagator`]; made by [`Propagator::builder`].
#[derive(Debug)]
#[must_use = "a PropagatorBuilder does nothing until build is called"]
pub struct PropagatorBuilder {
    pool: Pool,
    parent: Option<Context>,
    op: &'static Op,
    forward_user_id: bool,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    publish: bool,
}

impl PropagatorBuilder {
    /// Makes request contexts children of `parent` instead of request roots of the pool:
    /// cancelling `parent` (e.g. with [`Origin::Shutdown`](crate::Origin::Shutdown) at
    /// shutdown) cancels every request in flight, and making a request context writes no
    /// cache line shared with other threads (see [`Propagator::new`]). `parent`'s pool must
    /// be the propagator's.
    pub fn parent(mut self, parent: Context) -> Self {
        self.parent = Some(parent);
        self
    }

    /// The operation label of request contexts (default [`HTTP_REQUEST`]); the tower layer
    /// can choose one per route instead.
    pub fn op(mut self, op: &'static Op) -> Self {
        self.op = op;
        self
    }

    /// Sends `x-user-id` to every destination, trusted or not (default: only to addresses in
    /// `propagation.trusted_peers`).
    pub fn forward_user_id(mut self, yes: bool) -> Self {
        self.forward_user_id = yes;
        self
    }

    /// Publishes the propagator's counters through the `metrics` facade (feature
    /// `metrics`) with the pool's own, every `metrics.publish_interval`, as long as the
    /// propagator lives: the families of [`Propagator::write_prometheus`], as counters set
    /// with `absolute`. Their series carry no label telling propagators apart, so publish
    /// one propagator per recorder.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(mut self) -> Self {
        self.publish = true;
        self
    }

    /// The propagator.
    pub fn build(self) -> Propagator {
        let stats = Arc::new(Stats::new());
        #[cfg(feature = "metrics")]
        if self.publish {
            let weak: std::sync::Weak<dyn crate::metrics::Publish> =
                Arc::downgrade(&stats) as std::sync::Weak<Stats>;
            self.pool.add_publisher(weak);
        }
        Propagator {
            shared: Arc::new(Shared {
                pool: self.pool,
                parent: self.parent,
                op: self.op,
                forward_user_id: self.forward_user_id,
                stats,
            }),
        }
    }
}

/// What a request carried besides what lives in its context node: the trace state, the
/// baggage, the request id's text, and where the deadline came from.
///
/// The trace id, span id, flags, request id (as a number) and user id are also in the
/// context itself ([`Context::trace`], [`Context::request_id`], [`Context::user_id`]), and
/// inherited by its children.
///
/// Incoming `tracestate`, `baggage` and `x-request-id` values that are sent on as they came
/// are kept as the request's own `HeaderValue`s: reference counts on the server's read
/// buffer, so a `Propagated` kept long after its request keeps that buffer alive.
#[derive(Clone, Debug, Default)]
pub struct Propagated {
    parent_span: Option<u64>,
    /// The parsed `tracestate`. Unset while it is empty or still only in `raw` (H5): parsed
    /// from there on first read.
    tracestate: OnceLock<TraceState>,
    /// The parsed baggage, as `tracestate`.
    baggage: OnceLock<Baggage>,
    request_id: Option<XRequestId>,
    user_id: Option<UserId>,
    timeout: Option<Duration>,
    deadline_cut: Option<DeadlineCut>,
    /// The incoming header values, kept when they are exactly what `inject` would send, so
    /// that an outgoing call clones them (a reference count) instead of copying the text,
    /// and `extract` need not parse them into a copy (H5).
    raw: Raw,
}

#[derive(Clone, Debug, Default)]
struct Raw {
    tracestate: Option<HeaderValue>,
    baggage: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
}

/// What a context outside any extracted request carries: nothing.
static NO_META: Propagated = Propagated {
    parent_span: None,
    tracestate: OnceLock::new(),
    baggage: OnceLock::new(),
    request_id: None,
    user_id: None,
    timeout: None,
    deadline_cut: None,
    raw: Raw {
        tracestate: None,
        baggage: None,
        request_id: None,
    },
};

impl Propagated {
    /// The incoming `x-request-id` value, when the request carried a valid one.
    #[cfg(feature = "tower")]
    pub(crate) fn raw_request_id(&self) -> Option<&HeaderValue> {
        self.raw.request_id.as_ref()
    }

    /// The caller's span id (the `parent-id` of a valid incoming `traceparent`); `None` when
    /// this request started a new trace.
    pub fn parent_span(&self) -> Option<u64> {
        self.parent_span
    }

    /// The incoming `tracestate` (empty when absent or dropped).
    pub fn tracestate(&self) -> &TraceState {
        self.tracestate.get_or_init(|| {
            // H5: a kept line was validated by `extract`, so this parse succeeds.
            self.raw
                .tracestate
                .as_ref()
                .and_then(|v| TraceState::parse([v.as_bytes()]).ok())
                .unwrap_or_default()
        })
    }

    /// The incoming baggage (empty when absent or dropped).
    pub fn baggage(&self) -> &Baggage {
        self.baggage.get_or_init(|| {
            // H5: a kept line was validated by `extract`, so this parse succeeds whole.
            self.raw
                .baggage
                .as_ref()
                .and_then(|v| Baggage::parse([v.as_bytes()]).ok())
                .map(|(bag, _)| bag)
                .unwrap_or_default()
        })
    }

    /// Mutable baggage, to add entries sent on outgoing calls.
    pub fn baggage_mut(&mut self) -> &mut Baggage {
        self.baggage();
        self.raw.baggage = None;
        self.baggage
            .get_mut()
            .expect("initialised by `baggage()` above")
    }

    /// The request id: the incoming one when well-formed, else a generated one.
    pub fn request_id(&self) -> XRequestId {
        self.request_id.unwrap_or_else(XRequestId::generate)
    }

    /// The user id, when a trusted peer sent a valid one.
    pub fn user_id(&self) -> Option<UserId> {
        self.user_id
    }

    /// The timeout the request arrived with (`grpc-timeout`, before clamping), if any.
    pub fn incoming_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Why the request's deadline is shorter than the timeout it asked for (or than its
    /// route's budget), if it is: the deadline policy's cut (H6).
    pub fn deadline_cut(&self) -> Option<DeadlineCut> {
        self.deadline_cut
    }
}

/// A request context made by [`Propagator::extract`]: the owner of the context and what the
/// request carried.
///
/// Dropping it cancels the context (with `OwnerDropped`, the normal end of a request).
#[derive(Debug)]
pub struct Incoming {
    guard: CancelGuard,
    /// Also the request context's own value (identity N2).
    meta: SharedMeta,
}

impl Incoming {
    /// A handle to the request context.
    pub fn context(&self) -> Context {
        self.guard.context()
    }

    /// The owner of the request context.
    pub fn guard(&self) -> &CancelGuard {
        &self.guard
    }

    /// What the request carried.
    pub fn meta(&self) -> &Propagated {
        &self.meta
    }

    /// The metadata, shared with the request context (which keeps it for its descendants:
    /// [`Propagated::of`]).
    pub fn shared_meta(&self) -> Arc<Propagated> {
        self.meta.arc().clone()
    }

    /// The parent of the request's server span in OpenTelemetry (feature
    /// `opentelemetry`): the caller's span, remote, or an empty context when the request
    /// started a new trace; see [`crate::otel::parent`].
    #[cfg(feature = "opentelemetry")]
    pub fn otel_parent(&self) -> opentelemetry::Context {
        crate::otel::remote_parent(&self.meta, self.context().trace())
    }

    /// The owner and a copy of the metadata, apart: a copy to edit (e.g.
    /// [`Propagated::baggage_mut`]) and pass to [`Propagator::inject`]; the context keeps
    /// the metadata it was made with.
    pub fn into_parts(self) -> (CancelGuard, Propagated) {
        let meta = (*self.meta).clone();
        (self.guard, meta)
    }

    /// The owner and the shared metadata.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn into_shared(self) -> (CancelGuard, SharedMeta) {
        (self.guard, self.meta)
    }
}

/// The request context the tower layer puts into each request's extensions: the context,
/// what the request carried, and the propagator for outgoing calls.
///
/// ```
/// use ctxpool::http::RequestContext;
///
/// // In a handler: `Extension(rc): Extension<RequestContext>` with axum.
/// fn call_backend(rc: &RequestContext) -> Result<http::HeaderMap, ctxpool::ContextError> {
///     let sub = rc.context().with_timeout(std::time::Duration::from_millis(100));
///     let mut headers = http::HeaderMap::new();
///     rc.inject_for(&sub, &mut headers, None)?; // trace, baggage, request id, deadline
///     Ok(headers)
/// }
/// # let pool = ctxpool::Pool::builder().build().unwrap();
/// # let p = ctxpool::http::Propagator::new(&pool);
/// # let (guard, meta) = p.extract(&http::HeaderMap::new(), None).into_parts();
/// # let rc = RequestContext::new(guard.context(), std::sync::Arc::new(meta), p);
/// let headers = call_backend(&rc).unwrap();
/// assert!(headers.contains_key("grpc-timeout"));
/// ```
#[derive(Clone, Debug)]
pub struct RequestContext {
    ctx: Context,
    meta: SharedMeta,
    propagator: Propagator,
}

impl RequestContext {
    /// Wraps a context, its metadata and the propagator that made them.
    pub fn new(ctx: Context, meta: Arc<Propagated>, propagator: Propagator) -> Self {
        RequestContext {
            ctx,
            meta: SharedMeta::from_arc(meta),
            propagator,
        }
    }

    /// The layer's: the metadata shared with the context already.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn from_shared(ctx: Context, meta: SharedMeta, propagator: Propagator) -> Self {
        RequestContext {
            ctx,
            meta,
            propagator,
        }
    }

    /// Adds `value` to the request context, in one call (e.g. in a middleware, on the
    /// `RequestContext` in the request's extensions): the context becomes a child carrying
    /// it (see [`Context::with_value`]), cancelled with the request, which handlers and
    /// their sub-tasks find with [`Context::value`].
    ///
    /// ```
    /// # let pool = ctxpool::Pool::builder().build().unwrap();
    /// # let p = ctxpool::http::Propagator::new(&pool);
    /// # let incoming = p.extract(&http::HeaderMap::new(), None);
    /// # let mut rc = ctxpool::http::RequestContext::new(incoming.context(), incoming.shared_meta(), p);
    /// #[derive(Debug, PartialEq)]
    /// struct Tenant(u32);
    ///
    /// rc.insert_value(Tenant(7));
    /// assert_eq!(rc.context().with_cancel().value::<Tenant>(), Some(&Tenant(7)));
    /// // The request's identity is still reachable from it.
    /// assert!(ctxpool::http::Propagated::of(rc.context()).is_some());
    /// ```
    #[track_caller]
    pub fn insert_value<T: Send + Sync + 'static>(&mut self, value: T) {
        self.ctx = self.ctx.with_value(value);
    }

    /// The parent of the request's server span in OpenTelemetry (feature
    /// `opentelemetry`): the caller's span, remote, or an empty context when the request
    /// started a new trace; see [`crate::otel::parent`]. With `tracing-opentelemetry`:
    /// `span.set_parent(rc.otel_parent())`, before the span is first entered.
    #[cfg(feature = "opentelemetry")]
    pub fn otel_parent(&self) -> opentelemetry::Context {
        crate::otel::remote_parent(&self.meta, self.ctx.trace())
    }

    /// The request's context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// What the request carried.
    pub fn meta(&self) -> &Propagated {
        &self.meta
    }

    /// The propagator.
    pub fn propagator(&self) -> &Propagator {
        &self.propagator
    }

    /// Writes the request's propagation headers for an outgoing call to `dest`; see
    /// [`Propagator::inject`].
    pub fn inject(
        &self,
        headers: &mut HeaderMap,
        dest: Option<IpAddr>,
    ) -> Result<(), ContextError> {
        self.propagator.inject(&self.ctx, &self.meta, headers, dest)
    }

    /// Like [`inject`](RequestContext::inject), with the deadline, trace and cancellation
    /// of `ctx` (a descendant of the request's context, e.g. a sub-operation with a shorter
    /// timeout).
    pub fn inject_for(
        &self,
        ctx: &Context,
        headers: &mut HeaderMap,
        dest: Option<IpAddr>,
    ) -> Result<(), ContextError> {
        self.propagator.inject(ctx, &self.meta, headers, dest)
    }
}

impl Propagator {
    /// A propagator making request roots of `pool` labelled [`HTTP_REQUEST`].
    ///
    /// On a pool made with [`Pool::builder`] every root holds a reference on the pool (pool
    /// P4), so each request writes the pool's reference count, one cache line shared by
    /// every thread. A server should rather give its propagator a long-lived parent
    /// ([`PropagatorBuilder::parent`], e.g. a server root it cancels at shutdown): children
    /// are counted in their thread's shard, with no shared write. Roots of the global pool
    /// hold no reference.
    pub fn new(pool: &Pool) -> Self {
        Propagator::builder(pool).build()
    }

    /// A builder, to set a parent context, an operation label, user-id forwarding or metrics
    /// publication.
    pub fn builder(pool: &Pool) -> PropagatorBuilder {
        PropagatorBuilder {
            pool: pool.clone(),
            parent: None,
            op: &HTTP_REQUEST,
            forward_user_id: false,
            publish: false,
        }
    }

    /// The pool contexts are made in.
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// The counters of what was extracted, rejected and injected.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// A request context from incoming `headers` and the `peer` that sent them, labelled
    /// with the propagator's operation. Never fails (H1); see the module docs for what each
    /// header does.
    #[track_caller]
    pub fn extract(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Incoming {
        self.extract_op(headers, peer, self.shared.op)
    }

    /// Like [`extract`](Propagator::extract), labelled `op`.
    #[track_caller]
    pub fn extract_op(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        op: &'static Op,
    ) -> Incoming {
        self.extract_route(headers, peer, op, None)
    }

    /// Like [`extract_op`](Propagator::extract_op), with the route's deadline `budget`
    /// (`None`: the configured `default_timeout`): the deadline is the incoming
    /// `grpc-timeout` when it is within the budget, else the budget; only a peer in
    /// `propagation.trusted_peers` gets more, up to `max_timeout` (the deadline policy in the
    /// module docs, H6). Cuts are counted ([`Stats::deadline_cuts`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxpool::http::{DeadlineCut, Propagator, HTTP_REQUEST};
    /// use ctxpool::{Config, Pool};
    ///
    /// let mut config = Config::default();
    /// config.propagation.trusted_peers = vec!["10.0.0.0/8".parse().unwrap()];
    /// let pool = Pool::builder().config(&config).build().unwrap();
    /// let p = Propagator::new(&pool);
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("grpc-timeout", "1H".parse().unwrap());
    /// let budget = Some(Duration::from_secs(2));
    ///
    /// // An untrusted peer asking for an hour gets the route's 2 s.
    /// let untrusted = p.extract_route(&headers, Some([192, 0, 2, 1].into()), &HTTP_REQUEST, budget);
    /// assert!(untrusted.context().remaining().unwrap() <= Duration::from_millis(2_001));
    /// assert_eq!(untrusted.meta().deadline_cut(), Some(DeadlineCut::RouteBudget));
    ///
    /// // A trusted one gets more, cut to max_timeout (5 minutes).
    /// let trusted = p.extract_route(&headers, Some([10, 0, 0, 1].into()), &HTTP_REQUEST, budget);
    /// assert!(trusted.context().remaining().unwrap() > Duration::from_secs(200));
    /// assert_eq!(trusted.meta().deadline_cut(), Some(DeadlineCut::MaxTimeout));
    /// assert_eq!(p.stats().deadline_cuts(DeadlineCut::RouteBudget), 1);
    /// ```
    #[track_caller]
    pub fn extract_route(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        op: &'static Op,
        budget: Option<Duration>,
    ) -> Incoming {
        let stats = &self.shared.stats;
        stats.requests.inc();
        // Identity N1: written in place, in a cleared value this thread recycled.
        let mut shared = SharedMeta::blank();
        let meta = shared.fill();

        // traceparent, then tracestate only with a valid traceparent (W3C trace-context §4.3).
        let found = Found::new(headers);
        let parent = stats
            .one(Header::TraceParent, found.traceparent, |b| {
                parse_traceparent(b).map_err(|e| e.reason())
            })
            .map(|(tc, _)| tc);
        let trace = match parent {
            Some(tc) => {
                meta.parent_span = Some(tc.span_id);
                // H5: one line already in normal form is kept as it came, unparsed.
                let kept = match found.tracestate {
                    Lines::None => Ok(false),
                    Lines::One(first) => TraceState::is_normalised_line(first.as_bytes()),
                    Lines::Many => Ok(false),
                };
                match (kept, found.tracestate) {
                    (_, Lines::None) => {}
                    (Ok(true), Lines::One(first)) => meta.raw.tracestate = Some(first.clone()),
                    (Err(e), _) => stats.reject(Header::TraceState, e.reason()),
                    (Ok(_), _) => {
                        let lines = headers.get_all(TRACESTATE);
                        match TraceState::parse_counting(lines.iter().map(HeaderValue::as_bytes)) {
                            Ok((ts, dropped)) => {
                                if dropped > 0 {
                                    stats.reject_n(
                                        Header::TraceState,
                                        DUPLICATE_KEY,
                                        dropped as u64,
                                    );
                                }
                                meta.tracestate = OnceLock::from(ts);
                            }
                            Err(e) => stats.reject(Header::TraceState, e.reason()),
                        }
                    }
                }
                TraceContext {
                    trace_id: tc.trace_id,
                    span_id: new_span_id(),
                    flags: tc.flags,
                }
            }
            None => {
                stats.new_traces.inc();
                if !matches!(found.tracestate, Lines::None) {
                    stats.reject(Header::TraceState, NO_TRACEPARENT);
                }
                // A new trace: the configured sampler decides; the id is random (W3C Level 2
                // random flag).
                self.sampler().new_trace()
            }
        };

        match found.baggage {
            Lines::None => {}
            // H5: one line already in normal form is kept as it came, unparsed.
            Lines::One(first) if Baggage::is_normalised_line(first.as_bytes()) => {
                meta.raw.baggage = Some(first.clone());
            }
            _ => {
                let lines = headers.get_all(BAGGAGE);
                match Baggage::parse(lines.iter().map(HeaderValue::as_bytes)) {
                    Ok((b, dropped)) => {
                        if dropped > 0 {
                            stats.reject_n(Header::Baggage, INVALID_MEMBER, dropped as u64);
                        }
                        meta.baggage = OnceLock::from(b);
                    }
                    Err(e) => stats.reject(Header::Baggage, e.reason()),
                }
            }
        }

        meta.request_id = stats
            .one(Header::RequestId, found.request_id, |b| {
                XRequestId::parse(b).map_err(|e| e.reason())
            })
            .map(|(id, v)| {
                meta.raw.request_id = Some(v.clone());
                id
            });
        let request_id = match meta.request_id {
            Some(id) => id,
            None => {
                stats.generated_ids.inc();
                let id = XRequestId::generate();
                meta.request_id = Some(id);
                id
            }
        };

        meta.timeout = stats
            .one(Header::GrpcTimeout, found.grpc_timeout, |b| {
                parse_grpc_timeout(b).map_err(|e| e.reason())
            })
            .map(|(d, _)| d);

        // H6: the deadline policy.
        let (default_ms, max_ms) = self.shared.pool.inner.get().limits();
        let max = Duration::from_millis(u64::from(max_ms));
        let route = budget;
        let budget = route.unwrap_or(Duration::from_millis(u64::from(default_ms)));
        let want = match meta.timeout {
            Some(asked) if asked <= budget => Some(asked),
            Some(asked) if self.trusted(peer) => Some(asked),
            Some(_) => {
                stats.cut(DeadlineCut::RouteBudget);
                meta.deadline_cut = Some(DeadlineCut::RouteBudget);
                route
            }
            None => route,
        };
        // `None`: the default timeout, read by the pool from the same limits word.
        if want.unwrap_or(budget) > max {
            stats.cut(DeadlineCut::MaxTimeout);
            meta.deadline_cut = Some(DeadlineCut::MaxTimeout);
        }

        meta.user_id = match found.user_id {
            Lines::None => None,
            _ if !self.trusted(peer) => {
                stats.reject(Header::UserId, UNTRUSTED_PEER);
                None
            }
            lines => stats
                .one(Header::UserId, lines, |b| {
                    parse_user_id(b).map_err(|e| e.reason())
                })
                .map(|(id, _)| id),
        };

        let mut builder = match &self.shared.parent {
            Some(p) => p.child(),
            None => self.shared.pool.request(),
        };
        // Identity N1, N2: the metadata, shared with the context node (a recycled `Arc`).
        let user_id = meta.user_id;
        let meta = shared;
        builder.set_request(op, trace, request_id.id(), user_id, meta.clone());
        // The deadline chosen above (H6); the pool clamps it to max_timeout and counts the
        // clamp (H1).
        let guard = match want {
            Some(d) => builder.with_timeout(d),
            None => builder.default_timeout().with_cancel(),
        };
        Incoming { guard, meta }
    }

    /// The configured sampler, for a trace that starts here.
    fn sampler(&self) -> crate::propagation::Sampler {
        self.shared.pool.with_config(|cfg| cfg.propagation.sampler)
    }

    /// Whether `addr` is in the configured trusted peers.
    fn trusted(&self, addr: Option<IpAddr>) -> bool {
        addr.is_some_and(|a| self.shared.pool.with_config(|cfg| is_trusted(cfg, a)))
    }

    /// Writes `ctx`'s propagation headers for an outgoing call to `dest` (`None`: unknown,
    /// treated as untrusted), replacing any already there: `traceparent` (the context's trace
    /// with a new span id, or with feature `opentelemetry` the OpenTelemetry span current on
    /// this thread: [`crate::otel`]), `tracestate` and `baggage` from `meta`, `x-request-id`,
    /// `grpc-timeout` (the remaining time minus `outbound_deadline_margin`) and, towards a
    /// trusted destination, `x-user-id`.
    ///
    /// Fails fast, writing nothing, when `ctx` is cancelled or its remaining budget after the
    /// margin is zero (H3): the call would only fail downstream.
    ///
    /// The values it makes share per-thread buffers of 1 KiB instead of allocating one each
    /// (H2): holding an injected value (after the headers are sent) keeps its buffer alive.
    pub fn inject(
        &self,
        ctx: &Context,
        meta: &Propagated,
        headers: &mut HeaderMap,
        dest: Option<IpAddr>,
    ) -> Result<(), ContextError> {
        let stats = &self.shared.stats;
        if let Some(err) = ctx.err() {
            stats.failed_fast.fetch_add(1, Ordering::Relaxed);
            return Err(err);
        }
        // V3: room for every value made below, while the previous call's are gone: the
        // formatted ones, and the parsed `tracestate`/`baggage` text when there is no kept
        // incoming value to clone (cut from the chunk up to `LARGEST` bytes).
        let cut = |raw: &Option<HeaderValue>, text: Option<&str>| match (raw, text) {
            (None, Some(t)) if t.len() <= LARGEST => t.len(),
            _ => 0,
        };
        room(
            GRPC_TIMEOUT_MAX_LEN
                + TRACEPARENT_LEN
                + MAX_REQUEST_ID_LEN
                + 20
                + cut(
                    &meta.raw.tracestate,
                    meta.tracestate.get().map(TraceState::as_str),
                )
                + cut(&meta.raw.baggage, meta.baggage.get().map(Baggage::as_str)),
        );
        // Nothing to replace in an empty map: its removals are skipped (each is a lookup).
        let fresh = headers.is_empty();
        let user = meta.user_id.or_else(|| ctx.user_id());
        // H4: the margin from its own word; the peers (only needed with a user id to send)
        // through the configuration.
        let margin = self.shared.pool.outbound_margin();
        let send_user = user.is_some()
            && (self.shared.forward_user_id
                || dest.is_some_and(|d| self.shared.pool.with_config(|cfg| is_trusted(cfg, d))));
        let budget = match ctx.remaining() {
            None => None,
            Some(left) => {
                let budget = left.saturating_sub(margin);
                let mut buf = [0u8; GRPC_TIMEOUT_MAX_LEN];
                let text = format_grpc_timeout(budget, &mut buf);
                // Zero, or under the wire format's finest unit: nothing to send.
                if budget.is_zero() || text.starts_with('0') {
                    stats.failed_fast.fetch_add(1, Ordering::Relaxed);
                    return Err(ContextError::DeadlineExceeded);
                }
                Some(header_value(text))
            }
        };

        let outgoing = self.outgoing_trace(ctx);
        let mut buf = [0u8; TRACEPARENT_LEN];
        let tp = format_traceparent(&outgoing, &mut buf);
        headers.insert(TRACEPARENT, header_value(tp));
        put(
            headers,
            fresh,
            TRACESTATE,
            &meta.raw.tracestate,
            &meta.tracestate,
        );
        put(headers, fresh, BAGGAGE, &meta.raw.baggage, &meta.baggage);
        match &meta.raw.request_id {
            Some(v) => headers.insert(X_REQUEST_ID, v.clone()),
            None => headers.insert(X_REQUEST_ID, header_value(meta.request_id().as_str())),
        };
        match budget {
            Some(v) => {
                headers.insert(GRPC_TIMEOUT, v);
            }
            None if !fresh => {
                headers.remove(GRPC_TIMEOUT);
            }
            None => {}
        }
        match user {
            Some(user) if send_user => {
                let mut digits = itoa_u64(user.0);
                headers.insert(X_USER_ID, digits.value());
            }
            _ => {
                if user.is_some() {
                    stats.user_id_withheld.fetch_add(1, Ordering::Relaxed);
                }
                if !fresh {
                    headers.remove(X_USER_ID);
                }
            }
        }
        stats.injected.inc();
        Ok(())
    }

    /// The `traceparent` of an outgoing call from `ctx`: the current OpenTelemetry span's
    /// (feature `opentelemetry`, [`crate::otel`]) when there is one, else `ctx`'s trace (or
    /// a new one) with a new span id of ctxpool's.
    fn outgoing_trace(&self, ctx: &Context) -> TraceContext {
        let trace = ctx.trace();
        #[cfg(feature = "opentelemetry")]
        if let Some(span) = crate::otel::current_span() {
            return crate::otel::outgoing(span, trace);
        }
        let trace = trace.unwrap_or_else(|| self.sampler().new_trace());
        TraceContext {
            span_id: new_span_id(),
            ..trace
        }
    }

    /// [`inject`](Propagator::inject) with the metadata of the request `ctx` belongs to
    /// ([`Propagated::of`]): what a sub-task holding only a [`Context`] calls. A context
    /// outside any extracted request sends its trace (or a new one), deadline and user id,
    /// with a generated request id.
    ///
    /// ```
    /// use ctxpool::http::{Propagator, TRACEPARENT, X_REQUEST_ID};
    ///
    /// let pool = ctxpool::Pool::builder().build().unwrap();
    /// let propagator = Propagator::new(&pool);
    /// let mut incoming = http::HeaderMap::new();
    /// incoming.insert(X_REQUEST_ID, "r-1".parse().unwrap());
    /// let req = propagator.extract(&incoming, None);
    /// let sub = req.context().with_cancel();
    /// let ctx = sub.context(); // all a sub-task keeps
    ///
    /// let mut out = http::HeaderMap::new();
    /// propagator.inject_context(&ctx, &mut out, None).unwrap();
    /// assert_eq!(out[X_REQUEST_ID], "r-1");
    /// assert!(out.contains_key(TRACEPARENT));
    /// ```
    pub fn inject_context(
        &self,
        ctx: &Context,
        headers: &mut HeaderMap,
        dest: Option<IpAddr>,
    ) -> Result<(), ContextError> {
        let meta = Propagated::of(ctx).unwrap_or(&NO_META);
        self.inject(ctx, meta, headers, dest)
    }

    /// Appends the propagation counters in the Prometheus text format (with `# HELP` and
    /// `# TYPE`), to follow [`MetricsSnapshot::to_prometheus`](crate::metrics::MetricsSnapshot::to_prometheus).
    pub fn write_prometheus(&self, out: &mut String) {
        self.shared.stats.write_prometheus(out);
    }
}

/// How many lines of a header a request has.
#[derive(Clone, Copy, Default)]
enum Lines<'a> {
    #[default]
    None,
    One(&'a HeaderValue),
    Many,
}

impl<'a> Lines<'a> {
    /// One more line.
    fn add(&mut self, v: &'a HeaderValue) {
        *self = match self {
            Lines::None => Lines::One(v),
            _ => Lines::Many,
        };
    }
}

/// The most header lines for which [`Found::new`] walks the map instead of looking each
/// propagation header up: walking a line costs 1–2 ns (a length compare, and the bytes on a
/// match), where the six lookups (each hashing the name byte by byte, then probing) cost
/// about as much as walking 30 lines (`cargo bench --bench propagation`, group
/// `extract_headers`).
const WALK_MAX: usize = 24;

/// The propagation headers of a request.
#[derive(Default)]
struct Found<'a> {
    traceparent: Lines<'a>,
    tracestate: Lines<'a>,
    baggage: Lines<'a>,
    request_id: Lines<'a>,
    grpc_timeout: Lines<'a>,
    user_id: Lines<'a>,
}

impl<'a> Found<'a> {
    fn new(headers: &'a HeaderMap) -> Self {
        if headers.len() <= WALK_MAX {
            let mut found = Found::default();
            for (name, value) in headers {
                let lines = match name.as_str() {
                    "traceparent" => &mut found.traceparent,
                    "tracestate" => &mut found.tracestate,
                    "baggage" => &mut found.baggage,
                    "x-request-id" => &mut found.request_id,
                    "grpc-timeout" => &mut found.grpc_timeout,
                    "x-user-id" => &mut found.user_id,
                    _ => continue,
                };
                lines.add(value);
            }
            found
        } else {
            Found {
                traceparent: single(headers, &TRACEPARENT),
                tracestate: single(headers, &TRACESTATE),
                baggage: single(headers, &BAGGAGE),
                request_id: single(headers, &X_REQUEST_ID),
                grpc_timeout: single(headers, &GRPC_TIMEOUT),
                user_id: single(headers, &X_USER_ID),
            }
        }
    }
}

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Lines<'a> {
    let mut it = headers.get_all(name).iter();
    match (it.next(), it.next()) {
        (None, _) => Lines::None,
        (Some(v), None) => Lines::One(v),
        (Some(_), Some(_)) => Lines::Many,
    }
}

/// Sets `name` to the kept incoming value, else to the parsed one's text; removes it when
/// there is none (H5: an unset `parsed` with no `raw` is empty) unless the map was `fresh`
/// (empty when `inject` began).
fn put<T: AsRef<str>>(
    headers: &mut HeaderMap,
    fresh: bool,
    name: HeaderName,
    raw: &Option<HeaderValue>,
    parsed: &OnceLock<T>,
) {
    let text = parsed.get().map_or("", AsRef::as_ref);
    if let Some(v) = raw {
        headers.insert(name, v.clone());
    } else if text.is_empty() {
        if !fresh {
            headers.remove(name);
        }
    } else {
        // Validated text (the grammars admit only visible ASCII and spaces).
        headers.insert(name, header_value(text));
    }
}

/// Whether `addr` is in the configured trusted peers (IPv4-mapped IPv6 addresses compared as
/// IPv4).
fn is_trusted(cfg: &Config, addr: IpAddr) -> bool {
    let addr = addr.to_canonical();
    cfg.propagation
        .trusted_peers
        .iter()
        .any(|net| net.contains(&addr))
}

/// Decimal digits of a u64, without allocating a `String`.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn value(&mut self) -> HeaderValue {
        header_value(core::str::from_utf8(&self.buf[self.start..]).expect("decimal digits"))
    }
}

fn itoa_u64(mut n: u64) -> Digits {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start: i }
}

/// A header whose rejections are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Header {
    /// `traceparent`.
    TraceParent,
    /// `tracestate`.
    TraceState,
    /// `baggage`.
    Baggage,
    /// `x-request-id`.
    RequestId,
    /// `grpc-timeout`.
    GrpcTimeout,
    /// `x-user-id`.
    UserId,
}

impl Header {
    /// Every header, in label order.
    pub const ALL: [Header; 6] = [
        Header::TraceParent,
        Header::TraceState,
        Header::Baggage,
        Header::RequestId,
        Header::GrpcTimeout,
        Header::UserId,
    ];

    /// The header's name (the `header` label).
    pub fn name(self) -> &'static str {
        match self {
            Header::TraceParent => "traceparent",
            Header::TraceState => "tracestate",
            Header::Baggage => "baggage",
            Header::RequestId => "x-request-id",
            Header::GrpcTimeout => "grpc-timeout",
            Header::UserId => "x-user-id",
        }
    }

    /// Every reason this header can be rejected for (the `reason` labels): the parser's
    /// reasons and this module's.
    pub fn reasons(self) -> &'static [&'static str] {
        match self {
            Header::TraceParent => &TRACEPARENT_REASONS,
            Header::TraceState => &TRACESTATE_REASONS,
            Header::Baggage => &BAGGAGE_REASONS,
            Header::RequestId => &REQUEST_ID_REASONS,
            Header::GrpcTimeout => &GRPC_TIMEOUT_REASONS,
            Header::UserId => &USER_ID_REASONS,
        }
    }
}

/// Why the deadline policy cut a request's deadline (the `reason` label of
/// `ctxpool_propagation_deadline_cuts_total`; see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadlineCut {
    /// A peer outside `trusted_peers` asked for more than the route's budget: it got the
    /// budget.
    RouteBudget,
    /// The deadline asked for (a trusted peer's `grpc-timeout`, or a route's budget) was
    /// above `max_timeout`: it got `max_timeout`.
    MaxTimeout,
}

impl DeadlineCut {
    /// Every reason, in label order.
    pub const ALL: [DeadlineCut; 2] = [DeadlineCut::RouteBudget, DeadlineCut::MaxTimeout];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            DeadlineCut::RouteBudget => "route_budget",
            DeadlineCut::MaxTimeout => "max_timeout",
        }
    }
}

/// The family of deadline cuts.
const CUTS: &str = "ctxpool_propagation_deadline_cuts_total";
const CUTS_HELP: &str =
    "Incoming deadlines cut by the server's deadline policy, by reason (route_budget: an untrusted peer asked for more than the route's budget; max_timeout).";

/// Several lines of a header that must appear once.
const DUPLICATE: &str = "duplicate";
/// `tracestate` without a valid `traceparent` (ignored, W3C trace-context §4.3).
const NO_TRACEPARENT: &str = "no_traceparent";
/// A `tracestate` list-member dropped for a key that came earlier (the first is kept).
const DUPLICATE_KEY: &str = "duplicate_key";
/// A baggage list-member dropped on its own.
const INVALID_MEMBER: &str = "invalid_member";
/// `x-user-id` from a peer outside `trusted_peers`.
const UNTRUSTED_PEER: &str = "untrusted_peer";

/// A parser error type's every variant, listed once; the `match` in `exhaustive` makes
/// adding a variant without listing it here a compile error.
macro_rules! reasons {
    ($name:ident, $err:ident, [$($variant:ident),*], [$($extra:expr),*]) => {
        static $name: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
            #[allow(dead_code)]
            fn exhaustive(e: $err) {
                match e {
                    $($err::$variant)|* => {}
                }
            }
            let mut v = vec![$($err::$variant.reason()),*];
            v.extend_from_slice(&[$($extra),*]);
            v
        });
    };
}

reasons!(
    TRACEPARENT_REASONS,
    TraceParentError,
    [
        TooShort,
        TooLong,
        BadVersion,
        BadSeparator,
        UppercaseHex,
        BadHex,
        ZeroTraceId,
        ZeroSpanId
    ],
    [DUPLICATE]
);
reasons!(
    TRACESTATE_REASONS,
    TraceStateError,
    [TooManyMembers, BadMember, BadKey, BadValue],
    [DUPLICATE_KEY, NO_TRACEPARENT]
);
reasons!(
    BAGGAGE_REASONS,
    BaggageError,
    [TooLong, TooManyMembers, BadKey],
    [INVALID_MEMBER]
);
reasons!(
    REQUEST_ID_REASONS,
    RequestIdError,
    [Empty, TooLong, NotVisibleAscii],
    [DUPLICATE]
);
reasons!(
    GRPC_TIMEOUT_REASONS,
    GrpcTimeoutError,
    [Empty, TooManyDigits, BadDigit, BadUnit],
    [DUPLICATE]
);
reasons!(
    USER_ID_REASONS,
    UserIdError,
    [Empty, TooManyDigits, NotADigit, Overflow],
    [DUPLICATE, UNTRUSTED_PEER]
);

/// The family of rejected incoming headers.
const REJECTED: &str = "ctxpool_propagation_rejected_total";
const REJECTED_HELP: &str = "Incoming headers ignored or dropped, by header and reason.";

#[cfg(feature = "metrics")]
impl crate::metrics::Publish for Stats {
    fn publish(&self) {
        use metrics::counter;
        for (name, _, value) in self.families() {
            counter!(name).absolute(value);
        }
        for h in Header::ALL {
            for r in h.reasons() {
                counter!(REJECTED, "header" => h.name(), "reason" => *r)
                    .absolute(self.rejected(h, r));
            }
        }
        for c in DeadlineCut::ALL {
            counter!(CUTS, "reason" => c.label()).absolute(self.deadline_cuts(c));
        }
    }
}

/// Counters of a [`Propagator`]. Those touched on every request or outgoing call are
/// [`ShardedCounter`]s (no shared cache line between threads); the rejection counters are
/// relaxed atomics, touched only when a header is bad.
#[derive(Debug)]
pub struct Stats {
    requests: ShardedCounter,
    new_traces: ShardedCounter,
    generated_ids: ShardedCounter,
    injected: ShardedCounter,
    failed_fast: AtomicU64,
    user_id_withheld: AtomicU64,
    /// One counter per (header, reason), in `Header::ALL` × `Header::reasons` order.
    rejected: Box<[AtomicU64]>,
    /// One counter per `DeadlineCut`, in `DeadlineCut::ALL` order (touched only on a cut).
    cuts: [AtomicU64; 2],
}

impl Stats {
    fn new() -> Self {
        let n: usize = Header::ALL.iter().map(|h| h.reasons().len()).sum();
        Stats {
            requests: ShardedCounter::new(),
            new_traces: ShardedCounter::new(),
            generated_ids: ShardedCounter::new(),
            injected: ShardedCounter::new(),
            failed_fast: AtomicU64::new(0),
            user_id_withheld: AtomicU64::new(0),
            rejected: (0..n).map(|_| AtomicU64::new(0)).collect(),
            cuts: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    fn index(header: Header, reason: &str) -> Option<usize> {
        let mut base = 0;
        for h in Header::ALL {
            if h == header {
                return h
                    .reasons()
                    .iter()
                    .position(|r| *r == reason)
                    .map(|i| base + i);
            }
            base += h.reasons().len();
        }
        None
    }

    /// The value of a single-line header, parsed; a duplicated or invalid one is counted
    /// under `header` (as `duplicate`, or the parser's reason) and ignored.
    fn one<'a, T>(
        &self,
        header: Header,
        lines: Lines<'a>,
        parse: impl FnOnce(&[u8]) -> Result<T, &'static str>,
    ) -> Option<(T, &'a HeaderValue)> {
        match lines {
            Lines::None => None,
            Lines::Many => {
                self.reject(header, DUPLICATE);
                None
            }
            Lines::One(v) => match parse(v.as_bytes()) {
                Ok(t) => Some((t, v)),
                Err(reason) => {
                    self.reject(header, reason);
                    None
                }
            },
        }
    }

    fn cut(&self, why: DeadlineCut) {
        self.cuts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn reject(&self, header: Header, reason: &'static str) {
        self.reject_n(header, reason, 1);
    }

    fn reject_n(&self, header: Header, reason: &'static str, n: u64) {
        // Every reason a parser returns is in its REASONS list (checked by a test); an
        // unlisted one is still counted, under the header's last label, rather than lost.
        let i = Stats::index(header, reason).unwrap_or_else(|| {
            Stats::index(header, header.reasons()[header.reasons().len() - 1]).unwrap_or(0)
        });
        self.rejected[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Requests extracted.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// Requests that started a new trace (no valid `traceparent`).
    pub fn new_traces(&self) -> u64 {
        self.new_traces.get()
    }

    /// Requests given a generated request id.
    pub fn generated_request_ids(&self) -> u64 {
        self.generated_ids.get()
    }

    /// Outgoing calls whose headers were written.
    pub fn injected(&self) -> u64 {
        self.injected.get()
    }

    /// Outgoing calls refused because the context was cancelled or its budget spent.
    pub fn failed_fast(&self) -> u64 {
        self.failed_fast.load(Ordering::Relaxed)
    }

    /// Outgoing calls to an untrusted destination from which `x-user-id` was withheld.
    pub fn user_id_withheld(&self) -> u64 {
        self.user_id_withheld.load(Ordering::Relaxed)
    }

    /// Incoming headers rejected for `reason` (one of `header.reasons()`).
    pub fn rejected(&self, header: Header, reason: &str) -> u64 {
        Stats::index(header, reason).map_or(0, |i| self.rejected[i].load(Ordering::Relaxed))
    }

    /// Incoming deadlines cut by the deadline policy for `why` (module docs, H6).
    pub fn deadline_cuts(&self, why: DeadlineCut) -> u64 {
        self.cuts[why as usize].load(Ordering::Relaxed)
    }

    /// Incoming `header`s rejected for any reason.
    pub fn rejected_total(&self, header: Header) -> u64 {
        header
            .reasons()
            .iter()
            .map(|r| self.rejected(header, r))
            .sum()
    }

    /// The plain counter families: (name, help, value).
    fn families(&self) -> [(&'static str, &'static str, u64); 6] {
        [
            (
                "ctxpool_propagation_requests_total",
                "Requests whose headers were extracted into a context.",
                self.requests(),
            ),
            (
                "ctxpool_propagation_new_traces_total",
                "Requests without a valid traceparent, which started a new trace.",
                self.new_traces(),
            ),
            (
                "ctxpool_propagation_generated_request_ids_total",
                "Requests given a generated x-request-id.",
                self.generated_request_ids(),
            ),
            (
                "ctxpool_propagation_injected_total",
                "Outgoing calls whose propagation headers were written.",
                self.injected(),
            ),
            (
                "ctxpool_propagation_failed_fast_total",
                "Outgoing calls refused: context cancelled or deadline budget spent.",
                self.failed_fast(),
            ),
            (
                "ctxpool_propagation_user_id_withheld_total",
                "Outgoing calls to untrusted destinations from which x-user-id was withheld.",
                self.user_id_withheld(),
            ),
        ]
    }

    fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, help, value) in self.families() {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        }
        let _ = writeln!(out, "# HELP {REJECTED} {REJECTED_HELP}");
        let _ = writeln!(out, "# TYPE {REJECTED} counter");
        for h in Header::ALL {
            for r in h.reasons() {
                let _ = writeln!(
                    out,
                    "{REJECTED}{{header=\"{}\",reason=\"{}\"}} {}",
                    h.name(),
                    r,
                    self.rejected(h, r)
                );
            }
        }
        let _ = writeln!(out, "# HELP {CUTS} {CUTS_HELP}");
        let _ = writeln!(out, "# TYPE {CUTS} counter");
        for c in DeadlineCut::ALL {
            let _ = writeln!(
                out,
                "{CUTS}{{reason=\"{}\"}} {}",
                c.label(),
                self.deadline_cuts(c)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_lists_have_no_duplicates_or_blanks() {
        for h in Header::ALL {
            let rs = h.reasons();
            assert!(!rs.is_empty());
            for (i, r) in rs.iter().enumerate() {
                assert!(!r.is_empty(), "{}: blank reason", h.name());
                assert!(
                    r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{}: reason {r:?} is not snake_case",
                    h.name()
                );
                assert!(!rs[..i].contains(r), "{}: {r} twice", h.name());
            }
        }
    }

    #[test]
    fn digits() {
        for n in [0u64, 7, 10, 1001, u64::MAX] {
            assert_eq!(itoa_u64(n).value(), n.to_string().as_str());
        }
    }
}
