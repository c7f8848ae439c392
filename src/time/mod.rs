//! Time: clocks, the arm rings, the timer wheel and the driver.
//!
//! A deadline is a context's effective deadline (its own or inherited), stored as a 32-bit
//! millisecond tick in the node. Only a context whose own deadline is earlier than the one it
//! inherits arms a timer: a plain store into its thread's arm ring (`ring.rs`). The driver
//! (`driver.rs`) moves armed timers into a hierarchical wheel (`wheel.rs`) and fires them by
//! cancelling the context with [`Cause::DeadlineExceeded`](crate::Cause::DeadlineExceeded).
//! Independently of the driver, a read of a context whose deadline has passed cancels it on
//! the spot (`tree::is_cancelled`), so an expired deadline is observed even before the timer
//! fires.
//!
//! # Why a timer is armed when its context is made, not when somebody first waits
//!
//! Arming only for a context that something waits on (a `cancelled()` future, `wait`, an
//! `after_func`, a waited-on descendant) would save the ring push and the driver's drain for
//! contexts that are only polled with `is_cancelled`. It would break Go's order of a deadline
//! and a later cancel of an ancestor: in Go the timer fires at the deadline, so a context whose
//! deadline passed reads `DeadlineExceeded` even when its parent is cancelled afterwards and
//! nobody looked in between. Unarmed, nothing records the expiry, and the first read after the
//! parent's cancel finds the parent first (tree I12) and reports `Canceled`:
//! `tests/go_semantics.rs::deadline_before_the_parent_cancel_wins_for_good` fails that way.
//! Keeping Go's order lazily would need the tick of every cancel, which the node has no room
//! for. (Tried and measured on the 2-core Zen 3 VM: dropping every entry at the drain instead
//! of checking its node saved nothing that 15 rotated rounds of `benches/rotate.sh` could tell
//! from noise, so the drain is not where a request's time goes either.)

pub(crate) mod clock;
pub(crate) mod driver;
pub(crate) mod ring;
pub(crate) mod tsc;
pub(crate) mod wheel;

use std::time::Duration;

pub use clock::ManualClock;

/// Who moves a pool's timers forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DriverMode {
    /// A background thread, `ctxpool-driver`: it ticks every timer resolution while the pool
    /// is busy, and sleeps when nothing is due until the next timer, the next upkeep (at most
    /// 1 s) or new work (driver D5). It never runs `after_func` callbacks (D6). It stops when
    /// the pool is freed. The default, and the global pool's.
    #[default]
    Thread,
    /// Nobody: call [`Pool::turn`](crate::Pool::turn) yourself (an embedding event loop, or
    /// tests with a [`ManualClock`]), or spawn the tokio driver (feature `tokio`). On the real
    /// clock every read of the time then takes `Instant::now()` (no tick word goes stale).
    /// Callbacks fired by `Pool::turn` run on the caller's thread; the tokio driver hands
    /// them to threads of their own.
    Manual,
}

/// Counters of a pool's timers; see [`Pool::timer_stats`](crate::Pool::timer_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct TimerStats {
    /// Timers armed (contexts whose own deadline was earlier than their parent's).
    pub armed: u64,
    /// Timers that cancelled their context.
    pub fired: u64,
    /// Entries dropped because their context was released (or had been reused) first.
    pub stale: u64,
    /// Entries in the wheel (some may be stale until they come due or a compaction runs).
    pub pending: usize,
    /// Bytes the wheel holds.
    pub wheel_bytes: usize,
    /// Timers handed over through the shared spill list because a ring was full.
    pub spilled: u64,
    /// Wheel compactions (each drops the stale entries).
    pub compactions: u64,
    /// Requested deadlines cut to the maximum timeout.
    pub clamped: u64,
    /// Driver turns.
    pub turns: u64,
    /// Median lateness of fired timers (deadline to cancel), as a bucket upper bound.
    pub lateness_p50: Option<Duration>,
    /// 99th percentile of the lateness.
    pub lateness_p99: Option<Duration>,
}
