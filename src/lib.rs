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
//!   reused only when nothing can reach it (module `pool`, invariants P1–P4, L1–L3, S1–S4).
//! - the cancellation tree: children hold a reference on their parent and read their
//!   ancestors lazily; only contexts that are waited on register with their parent (module
//!   `tree`, invariants I1–I9).
//! - one `sync` module through which every atomic goes, switched to loom with `--cfg loom`.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![doc(test(attr(deny(warnings))))]

pub mod config;
mod context;
mod pool;
mod sync;
mod time;
mod tree;
mod values;

pub use config::Config;
pub use context::{CancelGuard, Cancelled, ChildBuilder, Context, ContextId, WeakContext};
pub use pool::{BuildError, Pool, PoolBuilder, PoolStats, MAX_TIMEOUT_LIMIT};
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
