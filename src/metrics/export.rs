//! A pool's metrics at one moment ([`MetricsSnapshot`]), rendered as a Prometheus text
//! exposition, and published through the `metrics` facade (feature `metrics`).
//!
//! **Histograms.** `metrics-exporter-prometheus` keeps every histogram sample recorded through
//! the facade until a scrape or its upkeep drains them, so memory grows with the rate of
//! observations (metrics-rs/metrics#245, #339, #467). ctxpool never records samples: its
//! histograms are fixed buckets counted in per-thread slots, so their memory is fixed, and
//! [`MetricsSnapshot::to_prometheus`] renders them as proper `_bucket`/`_sum`/`_count` series.
//! Through the facade it publishes its counters (with `absolute`) and gauges (with `set`)
//! only — a facade histogram would have to replay every observation. Serve the exposition
//! from `to_prometheus` (appended to your exporter's `render()` if you have one).

use core::fmt::Write;

use crate::metrics::{HistogramSnapshot, OpCounts, REASONS};
use crate::pool::PoolStats;
use crate::time::TimerStats;

/// Upper bounds, in seconds, of `timer_fire_lateness_seconds`.
pub const LATENESS_BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Every metric of a pool at one moment. See [`Pool::metrics`](crate::Pool::metrics).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Context counts by operation label (`"none"` for contexts without one).
    pub ops: Vec<(&'static str, OpCounts)>,
    /// The pool's counters.
    pub pool: PoolStats,
    /// The timers' counters.
    pub timers: TimerStats,
    /// Timer fire lateness (deadline to cancel), seconds.
    pub lateness: HistogramSnapshot,
    /// Weak ids that found their context released.
    pub stale_handles: u64,
    /// Contexts alive past the leak threshold at the last scan, by operation.
    pub leak_suspects: Vec<(&'static str, u64)>,
    /// Runtime configuration updates accepted and rejected.
    pub config_updates: [u64; 2],
}

/// Writes a label value with the exposition format's escapes.
fn label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn float(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP ctxpool_{name} {help}\n# TYPE ctxpool_{name} {kind}"
    );
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl core::fmt::Display) {
    let _ = write!(out, "ctxpool_{name}");
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"");
            label(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
    for (le, c) in h.cumulative() {
        let le = float(le);
        let mut l = labels.to_vec();
        l.push(("le", &le));
        sample(out, &format!("{name}_bucket"), &l, c);
    }
    sample(out, &format!("{name}_sum"), labels, h.sum);
    sample(out, &format!("{name}_count"), labels, h.count());
}

impl MetricsSnapshot {
    /// The Prometheus text exposition (format 0.0.4) of every `ctxpool_` family, each with
    /// `# HELP` and `# TYPE`.
    ///
    /// ```
    /// use ctxpool::{DriverMode, Op, Pool};
    ///
    /// static GET: Op = Op::new("get");
    /// let pool = Pool::builder().driver(DriverMode::Manual).build().unwrap();
    /// drop(pool.background().child().op(&GET).with_cancel());
    /// let text = pool.metrics().to_prometheus();
    /// assert!(text.contains("# TYPE ctxpool_contexts_created_total counter"));
    /// assert!(text.contains("ctxpool_contexts_created_total{op=\"get\"} 1"));
    /// assert!(text.contains("ctxpool_contexts_active{op=\"get\"} 0"));
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut o = String::with_capacity(4096);
        let ops = &self.ops;
        header(
            &mut o,
            "contexts_created_total",
            "counter",
            "Contexts made, by operation.",
        );
        for (op, c) in ops {
            sample(&mut o, "contexts_created_total", &[("op", op)], c.created);
        }
        header(
            &mut o,
            "contexts_cancelled_total",
            "counter",
            "Contexts cancelled, by operation and reason (explicit, deadline, parent, exhausted, shutdown); the end of a context's owner is not a cancellation.",
        );
        for (op, c) in ops {
            for (r, n) in REASONS.iter().zip(c.cancelled) {
                sample(
                    &mut o,
                    "contexts_cancelled_total",
                    &[("op", op), ("reason", r)],
                    n,
                );
            }
        }
        header(
            &mut o,
            "contexts_released_total",
            "counter",
            "Contexts released, by operation.",
        );
        for (op, c) in ops {
            sample(&mut o, "contexts_released_total", &[("op", op)], c.released);
        }
        header(
            &mut o,
            "contexts_active",
            "gauge",
            "Contexts alive (created - released), by operation.",
        );
        for (op, c) in ops {
            sample(&mut o, "contexts_active", &[("op", op)], c.active());
        }
        header(
            &mut o,
            "context_lifetime_seconds",
            "histogram",
            "Lifetime of released contexts, by operation (millisecond clock).",
        );
        for (op, c) in ops {
            histogram(
                &mut o,
                "context_lifetime_seconds",
                &[("op", op)],
                &c.lifetime,
            );
        }
        header(
            &mut o,
            "deadline_overrun_seconds",
            "histogram",
            "How long after their deadline contexts were released, by operation.",
        );
        for (op, c) in ops {
            histogram(
                &mut o,
                "deadline_overrun_seconds",
                &[("op", op)],
                &c.overrun,
            );
        }
        let p = &self.pool;
        header(
            &mut o,
            "pool_capacity",
            "gauge",
            "Most contexts the pool holds at once.",
        );
        sample(&mut o, "pool_capacity", &[], p.capacity);
        header(
            &mut o,
            "pool_in_use",
            "gauge",
            "Contexts alive in the pool.",
        );
        sample(&mut o, "pool_in_use", &[], p.in_use);
        header(
            &mut o,
            "pool_high_water",
            "gauge",
            "Slots ever taken from fresh memory.",
        );
        sample(&mut o, "pool_high_water", &[], p.high_water);
        header(
            &mut o,
            "pool_exhausted_total",
            "counter",
            "Contexts refused because the pool was full.",
        );
        sample(&mut o, "pool_exhausted_total", &[], p.exhausted);
        header(
            &mut o,
            "pool_spent_slots_total",
            "counter",
            "Slots retired for good after their last generation (each replaced by a spare).",
        );
        sample(&mut o, "pool_spent_slots_total", &[], p.spent_slots);
        header(
            &mut o,
            "timers_pending",
            "gauge",
            "Timer entries in the wheel.",
        );
        sample(&mut o, "timers_pending", &[], self.timers.pending);
        header(
            &mut o,
            "timer_fire_lateness_seconds",
            "histogram",
            "Time from a deadline to its timer's cancel.",
        );
        histogram(&mut o, "timer_fire_lateness_seconds", &[], &self.lateness);
        header(
            &mut o,
            "deadline_clamped_total",
            "counter",
            "Requested deadlines cut to the maximum timeout.",
        );
        sample(&mut o, "deadline_clamped_total", &[], self.timers.clamped);
        header(
            &mut o,
            "stale_handle_total",
            "counter",
            "Weak context ids that found their context released.",
        );
        sample(&mut o, "stale_handle_total", &[], self.stale_handles);
        header(
            &mut o,
            "leak_suspects",
            "gauge",
            "Contexts alive past the leak threshold at the last scan, by operation.",
        );
        for (op, n) in &self.leak_suspects {
            sample(&mut o, "leak_suspects", &[("op", op)], n);
        }
        header(
            &mut o,
            "config_updates_total",
            "counter",
            "Runtime configuration updates, by result.",
        );
        sample(
            &mut o,
            "config_updates_total",
            &[("result", "accepted")],
            self.config_updates[0],
        );
        sample(
            &mut o,
            "config_updates_total",
            &[("result", "rejected")],
            self.config_updates[1],
        );
        o
    }

    /// Publishes the counters and gauges through the `metrics` facade (counters with
    /// `absolute`, gauges with `set`); histograms are left to [`to_prometheus`]
    /// (see the module docs). Called by the driver every `metrics.publish_interval`.
    ///
    /// [`to_prometheus`]: MetricsSnapshot::to_prometheus
    #[cfg(feature = "metrics")]
    pub fn publish(&self) {
        use metrics::{counter, gauge};
        for (op, c) in &self.ops {
            let op = *op;
            counter!("ctxpool_contexts_created_total", "op" => op).absolute(c.created);
            counter!("ctxpool_contexts_released_total", "op" => op).absolute(c.released);
            gauge!("ctxpool_contexts_active", "op" => op).set(c.active() as f64);
            for (r, n) in REASONS.iter().zip(c.cancelled) {
                counter!("ctxpool_contexts_cancelled_total", "op" => op, "reason" => *r)
                    .absolute(n);
            }
        }
        let p = &self.pool;
        gauge!("ctxpool_pool_capacity").set(f64::from(p.capacity));
        gauge!("ctxpool_pool_in_use").set(p.in_use as f64);
        gauge!("ctxpool_pool_high_water").set(f64::from(p.high_water));
        counter!("ctxpool_pool_exhausted_total").absolute(p.exhausted);
        counter!("ctxpool_pool_spent_slots_total").absolute(u64::from(p.spent_slots));
        gauge!("ctxpool_timers_pending").set(self.timers.pending as f64);
        counter!("ctxpool_deadline_clamped_total").absolute(self.timers.clamped);
        counter!("ctxpool_stale_handle_total").absolute(self.stale_handles);
        for (op, n) in &self.leak_suspects {
            gauge!("ctxpool_leak_suspects", "op" => *op).set(*n as f64);
        }
        counter!("ctxpool_config_updates_total", "result" => "accepted")
            .absolute(self.config_updates[0]);
        counter!("ctxpool_config_updates_total", "result" => "rejected")
            .absolute(self.config_updates[1]);
    }
}

/// Whether `ops` has every op that must appear, with `"none"` always present.
pub(crate) fn with_none(
    mut ops: Vec<(&'static str, OpCounts)>,
    empty: OpCounts,
) -> Vec<(&'static str, OpCounts)> {
    if !ops.iter().any(|(n, _)| *n == "none") {
        ops.insert(0, ("none", empty));
    }
    ops
}
