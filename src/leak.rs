//! Leak detection: contexts alive past a threshold, found by a periodic scan in the driver.
//!
//! The scan walks every slot ever handed out (`0..high_water`, then spare slots, pool P5), and
//! for each live one takes a reference with `try_upgrade` (so it reads a stable incarnation,
//! slot L1–L2), reads its
//! creation tick, operation and creation site, and lets the reference go. It takes no lock that
//! creating or releasing a context takes, so it never blocks them; a context released before
//! the scan reaches it cannot be reported (its upgrade fails), and the report groups the rest by
//! operation and creation site with their count, oldest age and a few sample ids.
//!
//! Backtraces are captured only for a sampled fraction of contexts (`leak.backtrace_sample_rate`:
//! every ⌈1/rate⌉-th context a thread makes), stored off-node in a map bounded to
//! [`MAX_BACKTRACES`] entries (when it is full, no more are captured), and removed when their
//! context is released (a bit in the node says it has one, so other releases do not look).
//!
//! Ages past the 32-bit tick. A node stores its creation tick in 32 bits of milliseconds, so
//! its age read from the node alone wraps after 2^32 ms (49.7 days). A scan that finds a
//! context older than 2^31 ms (24.8 days) remembers its full creation tick by id
//! (`Leaks::elders`), and later scans take the age from there, so a context alive for months
//! keeps its true age. This holds while leak detection is on (scans run every `leak.interval`,
//! at most 7 days); the map holds only such elders (a few server roots) and forgets them when
//! they are released. (The `context_lifetime_seconds` histogram, recorded at release from the
//! node alone, files a context alive past 49.7 days by its age modulo 2^32 ms.)
//!
//! When the suspects of a scan exceed `leak.alert_threshold`, one warning is logged through
//! `tracing` (feature `tracing`), at most once per `leak.threshold`.

use core::fmt::{self, Write};
use core::panic::Location;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pool::slot::{generation, refs};
use crate::pool::PoolInner;
use crate::ContextId;

/// Most backtraces kept at once.
pub const MAX_BACKTRACES: usize = 1024;
/// Sample ids kept per group.
const SAMPLES: usize = 3;

/// A group of suspected leaks: contexts of one operation made at one site.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LeakGroup {
    /// The operation label (`"none"` without one).
    pub op: &'static str,
    /// Where the contexts were made.
    pub location: &'static Location<'static>,
    /// How many are alive past the threshold.
    pub count: u64,
    /// The age of the oldest.
    pub oldest: Duration,
    /// A few of their ids.
    pub samples: Vec<ContextId>,
    /// A captured backtrace of one of them, if one was sampled.
    pub backtrace: Option<Arc<String>>,
}

/// The result of a leak scan. See [`Pool::leak_report`](crate::Pool::leak_report).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LeakReport {
    /// Live contexts inspected.
    pub scanned: u64,
    /// Contexts alive past the threshold.
    pub suspects: u64,
    /// The threshold used.
    pub threshold: Duration,
    /// How long the scan took.
    pub scan_time: Duration,
    /// Whether this scan logged the alert.
    pub alerted: bool,
    /// Suspects by operation and site, most numerous first.
    pub groups: Vec<LeakGroup>,
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl LeakReport {
    /// Suspects by operation.
    pub fn by_op(&self) -> Vec<(&'static str, u64)> {
        let mut m: Vec<(&'static str, u64)> = Vec::new();
        for g in &self.groups {
            match m.iter_mut().find(|(op, _)| *op == g.op) {
                Some((_, n)) => *n += g.count,
                None => m.push((g.op, g.count)),
            }
        }
        m
    }

    /// The report as JSON:
    /// `{"scanned":..,"suspects":..,"threshold_seconds":..,"scan_seconds":..,"groups":[{"op":..,
    /// "file":..,"line":..,"count":..,"oldest_seconds":..,"samples":[{"slot":..,"generation":..}],
    /// "backtrace":..|null}]}`.
    pub fn to_json(&self) -> String {
        let mut o = String::new();
        let _ = write!(
            o,
            "{{\"scanned\":{},\"suspects\":{},\"threshold_seconds\":{},\"scan_seconds\":{},\"groups\":[",
            self.scanned,
            self.suspects,
            self.threshold.as_secs_f64(),
            self.scan_time.as_secs_f64()
        );
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"op\":");
            json_str(&mut o, g.op);
            o.push_str(",\"file\":");
            json_str(&mut o, g.location.file());
            let _ = write!(
                o,
                ",\"line\":{},\"count\":{},\"oldest_seconds\":{},\"samples\":[",
                g.location.line(),
                g.count,
                g.oldest.as_secs_f64()
            );
            for (j, s) in g.samples.iter().enumerate() {
                if j > 0 {
                    o.push(',');
                }
                let _ = write!(o, "{{\"slot\":{},\"generation\":{}}}", s.slot, s.generation);
            }
            o.push_str("],\"backtrace\":");
            match &g.backtrace {
                Some(b) => json_str(&mut o, b),
                None => o.push_str("null"),
            }
            o.push('}');
        }
        o.push_str("]}");
        o
    }
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} live contexts older than {:?}",
            self.suspects, self.scanned, self.threshold
        )?;
        for g in &self.groups {
            write!(
                f,
                "\n  {} × op {} at {}:{} (oldest {:?})",
                g.count,
                g.op,
                g.location.file(),
                g.location.line(),
                g.oldest
            )?;
        }
        Ok(())
    }
}

/// The leak detector's state in a pool.
pub(crate) struct Leaks {
    last: Mutex<Option<Arc<LeakReport>>>,
    /// Tick of the last alert.
    last_alert: Mutex<Option<u64>>,
    /// Sampled backtraces by (slot, generation).
    pub(crate) backtraces: Mutex<HashMap<(u32, u32), Arc<String>>>,
    /// Full creation ticks of contexts found older than 2^31 ms, by (slot, generation).
    elders: Mutex<HashMap<(u32, u32), u64>>,
}

impl Leaks {
    pub(crate) fn new() -> Self {
        Leaks {
            last: Mutex::new(None),
            last_alert: Mutex::new(None),
            backtraces: Mutex::new(HashMap::new()),
            elders: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn last(&self) -> Option<Arc<LeakReport>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Whether the calling thread's next context is one to capture a backtrace of (every
/// `every`-th).
#[inline]
pub(crate) fn sample(every: u32) -> bool {
    std::thread_local! {
        static MADE: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
    }
    MADE.try_with(|m| {
        let n = m.get().wrapping_add(1);
        let hit = n >= every;
        m.set(if hit { 0 } else { n });
        hit
    })
    .unwrap_or(false)
}

impl PoolInner {
    /// Captures and stores a backtrace for incarnation `(idx, gen)`; `false` if the store is
    /// full.
    #[cold]
    pub(crate) fn capture_backtrace(&self, idx: u32, gen: u32) -> bool {
        let mut map = self
            .leaks
            .backtraces
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_BACKTRACES {
            return false;
        }
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        map.insert((idx, gen), Arc::new(bt));
        true
    }

    /// Forgets the backtrace of released incarnation `(idx, gen)`.
    #[cold]
    pub(crate) fn forget_backtrace(&self, idx: u32, gen: u32) {
        self.leaks
            .backtraces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(idx, gen));
    }

    /// Scans for contexts alive for `threshold` or longer, stores and returns the report, and
    /// alerts if there are more than `alert_threshold`.
    pub(crate) fn scan_leaks(&self, threshold: Duration, alert_threshold: u64) -> Arc<LeakReport> {
        let start = std::time::Instant::now();
        let clock = &self.timers.clock;
        let now64 = clock.now64();
        let now = now64 as u32;
        // Held for the whole scan: it also serialises concurrent scans' view of the elders.
        let mut elders = self.leaks.elders.lock().unwrap_or_else(|e| e.into_inner());
        let mut still_alive: HashMap<(u32, u32), u64> = HashMap::new();
        let threshold_ms =
            u32::try_from(crate::time::clock::ceil_ms(threshold)).unwrap_or(u32::MAX);
        let mut groups: HashMap<(u32, usize), LeakGroup> = HashMap::new();
        let mut scanned = 0u64;
        let mut suspects = 0u64;
        for idx in self.handed_out() {
            let Some(node) = self.try_node(idx) else {
                continue;
            };
            let w = node.life.load(crate::sync::Ordering::Relaxed);
            if refs(w) == 0 {
                continue;
            }
            let gen = generation(w);
            // A context of this generation, or nothing (slot L2; func nodes are not contexts).
            if !crate::tree::upgrade(self, idx, gen, crate::tree::Kind::Context) {
                continue;
            }
            // Our reference, released (through the normal path) when `ctx` drops.
            let ctx = crate::Context::from_node(core::ptr::NonNull::from(self), idx, gen);
            // SAFETY: we hold a reference: the incarnation's fields are stable (slot L1).
            let (meta, op) = unsafe { (node.meta(), node.payload.with(|p| (*p).values.op)) };
            scanned += 1;
            let age = match elders.get(&(idx, gen)) {
                Some(&born) => now64.saturating_sub(born),
                None => u64::from(now.wrapping_sub(meta.created)),
            };
            if age >= 1 << 31 {
                still_alive.insert((idx, gen), now64.saturating_sub(age));
            }
            if age >= u64::from(threshold_ms) {
                suspects += 1;
                let key = (op, meta.location as *const Location<'static> as usize);
                let g = groups.entry(key).or_insert_with(|| LeakGroup {
                    op: crate::Op::by_id(op).map_or("none", crate::Op::name),
                    location: meta.location,
                    count: 0,
                    oldest: Duration::ZERO,
                    samples: Vec::new(),
                    backtrace: None,
                });
                g.count += 1;
                g.oldest = g.oldest.max(Duration::from_millis(age));
                if g.samples.len() < SAMPLES {
                    g.samples.push(ctx.id());
                }
                if g.backtrace.is_none() {
                    g.backtrace = self
                        .leaks
                        .backtraces
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&(idx, gen))
                        .cloned();
                }
            }
            drop(ctx);
        }
        *elders = still_alive;
        drop(elders);
        let mut groups: Vec<LeakGroup> = groups.into_values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then(b.oldest.cmp(&a.oldest)));
        let mut report = LeakReport {
            scanned,
            suspects,
            threshold,
            scan_time: start.elapsed(),
            alerted: false,
            groups,
        };
        if suspects > alert_threshold {
            let mut last = self
                .leaks
                .last_alert
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| now64.saturating_sub(t) >= u64::from(threshold_ms));
            if due {
                *last = Some(now64);
                report.alerted = true;
                #[cfg(feature = "tracing")]
                {
                    let top = report.groups.first();
                    tracing::warn!(
                        suspects,
                        alert_threshold,
                        threshold_seconds = threshold.as_secs_f64(),
                        top_op = top.map(|g| g.op),
                        top_site = top.map(|g| format!("{}:{}", g.location.file(), g.location.line())),
                        "ctxpool: {suspects} contexts alive longer than {threshold:?} (possible leak)"
                    );
                }
            }
        }
        let report = Arc::new(report);
        *self.leaks.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        report
    }
}
