//! Metrics: sharded counters, gauges and histograms, and the per-operation context metrics.
//!
//! Updates on the hot path touch only the calling thread's slots (see [`ShardedCounter`]);
//! nothing on the hot path calls a metrics recorder.

pub(crate) mod export;
pub(crate) mod ops;
pub(crate) mod sharded;

pub use export::{MetricsSnapshot, LATENESS_BUCKETS};

/// Something the pool's metrics upkeep publishes through the `metrics` facade beside the
/// pool's own families (e.g. a propagator's counters), held weakly by the pool.
#[cfg(feature = "metrics")]
pub(crate) trait Publish: Send + Sync {
    /// Sets every series from the current counts.
    fn publish(&self);
}
pub use ops::{OpCounts, LIFETIME_BUCKETS, OVERRUN_BUCKETS, REASONS};
pub use sharded::{BadBuckets, HistogramSnapshot, ShardedCounter, ShardedGauge, ShardedHistogram};
