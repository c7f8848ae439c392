//! Graceful shutdown with a drain window (feature `tower`).
//!
//! A [`Drain`] owns a server's root context, the parent of every request context
//! ([`Drain::context`] as the propagator's parent), and counts the requests in flight through
//! the layer ([`ContextLayer::drain`](super::ContextLayer::drain)): a request is in flight
//! from the layer's call until its context ends (the response body's end, or the answer's head
//! when there is no body to hold it for). [`Drain::shutdown`] lets them finish for up to a
//! grace period, then cancels the rest with [`Origin::Shutdown`]: their handlers stop, and the
//! layer answers them `503` (gRPC `14`), or cuts a body still streaming.
//!
//! Stopping accepting is the server's part (axum's `with_graceful_shutdown`, hyper's
//! `graceful_shutdown`): the drain runs beside it, and the server's own wait for its
//! connections ends once the last request has its answer.
//!
//! Invariants:
//!
//! - G1. Counting costs a request two updates of a sharded gauge (its thread's shard: no
//!   cache line shared with other threads) and nothing else; the count is read only while
//!   draining, by the drainer, every [`POLL`] (no handshake on the request's path: a request
//!   ending as the drain starts is seen at the next read).
//! - G2. `shutdown` cancels the root with `Shutdown` (the first cause wins: `cancel_now`
//!   before it, or dropping the last `Drain`, which ends the root as any owner does), never
//!   before the grace period ends unless nothing is in flight; requests made after that are
//!   born cancelled and answered `503` at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::ShardedGauge;
use crate::{CancelGuard, Context, Op, Origin, Pool};

/// How often [`Drain::shutdown`] reads the count of requests in flight (G1).
pub const POLL: Duration = Duration::from_millis(10);

/// The operation label of a [`Drain`]'s root context.
pub static SERVER_ROOT: Op = Op::new("server_root");

/// A server's root context and its requests in flight, for a graceful shutdown: see the
/// [module docs](self). Cheap to clone (one `Arc`).
///
/// ```
/// use std::time::Duration;
/// use ctxpool::http::{ContextLayer, Drain, Propagator};
/// use ctxpool::Pool;
///
/// let pool = Pool::builder().build().unwrap();
/// let drain = Drain::new(&pool);
/// let propagator = Propagator::builder(&pool).parent(drain.context()).build();
/// let layer = ContextLayer::new(propagator).drain(&drain);
/// # let _ = layer;
/// // At SIGTERM, beside the server's own graceful shutdown (it stops accepting):
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let report = drain.shutdown(Duration::from_secs(5)).await;
/// assert_eq!(report.cancelled, 0); // nothing was in flight
/// # });
/// assert!(drain.context().is_cancelled()); // later requests get 503
/// ```
#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    root: CancelGuard,
    in_flight: ShardedGauge,
    draining: AtomicBool,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("in_flight", &self.in_flight())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

/// What [`Drain::shutdown`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Requests in flight when the drain began.
    pub in_flight_at_start: u64,
    /// Requests still in flight when the grace period ended, cancelled with `Shutdown`
    /// (0 when every request finished in time).
    pub cancelled: u64,
}

impl Drain {
    /// A drain with a new root context of `pool` (labelled [`SERVER_ROOT`], no deadline):
    /// make it the parent of the request contexts ([`Drain::context`]).
    pub fn new(pool: &Pool) -> Self {
        let root = pool.background().child().op(&SERVER_ROOT).with_cancel();
        Drain::with_root(pool, root)
    }

    /// A drain cancelling `root` (a context of `pool`) at the end of the grace period.
    pub fn with_root(pool: &Pool, root: CancelGuard) -> Self {
        Drain {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                root,
                in_flight: ShardedGauge::new(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// The root context: the parent for request contexts
    /// ([`PropagatorBuilder::parent`](super::PropagatorBuilder::parent)).
    pub fn context(&self) -> Context {
        self.inner.root.context()
    }

    /// Requests in flight through layers counting into this drain.
    pub fn in_flight(&self) -> u64 {
        self.inner.in_flight.get().max(0) as u64
    }

    /// Whether [`shutdown`](Drain::shutdown) has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Cancels the root with [`Origin::Shutdown`] now: every request in flight stops.
    pub fn cancel_now(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.inner.root.cancel_with(Origin::Shutdown);
    }

    /// Lets the requests in flight finish for up to `grace`, then cancels the rest (and the
    /// root, so later requests are refused) with [`Origin::Shutdown`]; returns when the root
    /// is cancelled. Waits on the pool's own timers (no runtime needed), reading the count
    /// every [`POLL`] (G1).
    pub async fn shutdown(&self, grace: Duration) -> DrainReport {
        let inner = &self.inner;
        inner.draining.store(true, Ordering::Relaxed);
        let in_flight_at_start = self.in_flight();
        // The window is not under the root: cancelling the root must not end it early.
        let window = inner.pool.background().with_timeout(grace);
        while self.in_flight() > 0 && !window.is_cancelled() {
            let tick = window.with_timeout(POLL);
            tick.cancelled().await;
        }
        let cancelled = self.in_flight();
        inner.root.cancel_with(Origin::Shutdown);
        DrainReport {
            in_flight_at_start,
            cancelled,
        }
    }

    /// A request enters (the layer's call); the token leaves on drop.
    pub(crate) fn enter(&self) {
        self.inner.in_flight.add(1);
    }

    /// A request's context ended.
    pub(crate) fn leave(&self) {
        self.inner.in_flight.sub(1);
    }
}
