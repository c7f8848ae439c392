//! Metrics: sharded counters, gauges and histograms, and the per-operation context metrics.
//!
//! Updates on the hot path touch only the calling thread's slots (see [`ShardedCounter`]);
//! nothing on the hot path calls a metrics recorder.

pub(crate) mod export;
pub(crate) mod ops;
pub(crate) mod sharded;

pub use export::{MetricsSnapshot, LATENESS_BUCKETS};
pub use ops::{OpCounts, LIFETIME_BUCKETS, OVERRUN_BUCKETS, REASONS};
pub use sharded::{BadBuckets, HistogramSnapshot, ShardedCounter, ShardedGauge, ShardedHistogram};
