//! # ctxpool
//!
//! Request contexts for latency-sensitive servers: Go's `context.Context` for Rust, with
//! cancellation trees, values and creation sites, pooled in a slab with generational handles,
//! with no heap allocation and no lock on the hot path.
//!
//! ```
//! use ctxpool::{Cause, Context, Op, Reason, RequestId};
//!
//! static HANDLE: Op = Op::new("handle_request");
//!
//! // One context per request, with values stored inline in the pooled node.
//! let req = Context::background()
//!     .child()
//!     .op(&HANDLE)
//!     .request_id(RequestId(7))
//!     .with_cancel();
//!
//! // Sub-operations are children: cancelling the request cancels them.
//! let db = req.with_cancel();
//! let handle = db.context(); // cheap, cloneable, Send + Sync + 'static
//!
//! req.cancel(Reason::Message("client closed the connection"));
//! assert!(handle.is_cancelled());
//! assert!(matches!(handle.cause(), Some(Cause::Parent(_))));
//! assert_eq!(handle.request_id(), Some(RequestId(7)));
//! ```
//!
//! ## Architecture
//!
//! - [`pool`](crate::Pool): a concurrent slab of 128-byte nodes growing by pages, with
//!   per-thread free lists; a handle is (slot, generation) and holds a reference, so a slot is
//!   reused only when nothing can reach it (module `pool`, invariants P1–P4, L1–L4, S1–S7).
//! - the cancellation tree: children hold a reference on their parent and read their
//!   ancestors lazily; only contexts that are waited on register with their parent (module
//!   `tree`, invariants I1–I11).
//! - deadlines (module `time`): a coarse millisecond clock read with one load, per-thread arm
//!   rings (a plain store per armed timer), a hierarchical timer wheel and one driver (a
//!   thread, [`Pool::turn`], or a tokio task with feature `tokio`); a timer is armed only when a
//!   child's deadline is earlier than its parent's, and disarming is free (invariants R1–R3,
//!   W1–W3, D1–D4, K1).
//! - [`config`]: one [`Config`] (TOML/JSON with feature `serde`, on by default), validated with
//!   every problem listed, swapped at run time by [`Pool::update_config`] without a lock on
//!   the hot path.
//! - [`propagation`]: pure parsers and writers for `traceparent`, `tracestate`, `baggage`,
//!   `grpc-timeout`, `x-request-id` and `x-user-id` (W3C Trace Context, W3C Baggage, gRPC over
//!   HTTP/2), bounded work on hostile input, and per-thread random trace, span and request ids.
//! - one `sync` module through which every atomic goes, switched to loom with `--cfg loom`.
//!
//! ## Features
//!
//! The core (contexts, the pool, deadlines, the leak detector, the `propagation` parsers)
//! needs none. Each integration is a cargo feature:
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `serde` | yes | [`Config`] loaded from and saved as TOML or JSON ([`Config::from_file`]) |
//! | `tracing` | yes | spans from contexts ([`Context::span`], [`Traced`]: trace id, span id, request id, user id, operation as fields); the leak detector's alert as a `tracing` warning |
//! | `metrics` | | the pool's metrics through the `metrics` facade (for `metrics-exporter-prometheus`) |
//! | `tokio` | | a tokio task as the timer driver ([`Pool::spawn_tokio_driver`]) |
//! | `http` | | [`http::Propagator`]: request contexts from `http::HeaderMap`s (W3C Trace Context and Baggage, `x-request-id`, `grpc-timeout`, trusted `x-user-id`, sampling) and headers for outgoing calls; the request's identity on its context ([`http::Propagated::of`]) |
//! | `opentelemetry` | | the OpenTelemetry bridge ([`otel`], on `opentelemetry` 0.33, the line of `tracing-opentelemetry` 0.34; implies `http`): [`TraceContext`] and [`propagation::TraceState`] to and from OpenTelemetry's `SpanContext` and `TraceState`; the server span's parent from the incoming `traceparent` ([`http::RequestContext::otel_parent`]); outgoing `traceparent`s naming the current OpenTelemetry span, the exported one, instead of a span id of ctxpool's |
//! | `tonic` | | gRPC on tonic 0.14 ([`grpc`]; implies `tower`; tonic 0.14 needs Rust 1.88): the server layer is [`http::ContextLayer`] (the context from the metadata, `DEADLINE_EXCEEDED`/`CANCELLED`/`UNAVAILABLE` for a cancelled context, a server stream cut with the status in its trailers), the method's context from `tonic::Request` ([`grpc::RequestExt`]), the client layer [`grpc::GrpcClientLayer`] (`grpc-timeout` less the margin, trace, baggage, request id; fail fast and a cancel drop the call with the status), and the server [`grpc::serve`] (hyper's HTTP/2, graceful shutdown; no tonic transport timer racing the deadline) |
//! | `tower` | | the server layer [`http::ContextLayer`] (a request context per request, its deadline enforced under the deadline policy, `504`/`503` once it is cancelled whatever the handler returns, its body held to the end), graceful shutdown with a drain window ([`http::Drain`]) and the client layer [`http::ClientLayer`] (the calling context on every outgoing call: headers, budget, fail fast, cancel drops the call) |
//!
//! [`Context::run_until_cancelled`] races any future against a context, with no feature.
//!
//! A server's whole path, with the features `tower` and `tracing`: the server layer extracts
//! a request context from the incoming headers, the handler works in the context's span and
//! spawns sub-tasks that carry the context (and with it the request's identity), and the
//! client layer puts the context on the outgoing calls. With `opentelemetry` too, the
//! handler's span is exported as the caller's child and the outgoing calls name it. The
//! README's "Propagation" section shows it in code.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![doc(test(attr(deny(warnings))))]

pub mod config;
mod context;
#[cfg(feature = "tonic")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
pub mod leak;
pub mod metrics;
#[cfg(feature = "opentelemetry")]
pub mod otel;
mod pool;
pub mod propagation;
#[cfg(feature = "tracing")]
pub mod span;
mod sync;
mod time;
mod tree;
mod values;

pub use config::Config;
pub use context::{
    CancelGuard, Cancelled, CancelledOwned, ChildBuilder, Context, ContextId, WeakContext,
};
pub use pool::{BuildError, Pool, PoolBuilder, PoolStats, MAX_TIMEOUT_LIMIT};
#[cfg(feature = "tracing")]
pub use span::Traced;
pub use time::{DriverMode, ManualClock, TimerStats};
pub use tree::cause::{Cause, ContextError, Origin, PoolExhausted, Reason};
pub use tree::func::AfterFunc;
pub use values::{Op, RequestId, TraceContext, UserId, INLINE_VALUE_BYTES, MAX_OPS};

/// Size in bytes of one pooled context node (two cache lines).
pub const NODE_SIZE: usize = core::mem::size_of::<tree::node::Node>();

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
