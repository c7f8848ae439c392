//! Context metrics and leak detection: exact counts under concurrency, the exposition, the
//! metrics switch, and leak scans on a manual clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctxpool::metrics::REASONS;
use ctxpool::{
    CancelGuard, Cause, Config, Context, DriverMode, ManualClock, Op, Origin, Pool, Reason,
};

static STRESS: Op = Op::new("stress");
static CHILD: Op = Op::new("stress.child");

/// The metrics reason of a cause, as `ctxpool::metrics::ops` documents it.
fn reason(c: Cause) -> Option<usize> {
    let o = match c {
        Cause::Parent(Origin::OwnerDropped) | Cause::OwnerDropped => return None,
        Cause::Parent(_) => return Some(2),
        c => c.origin(),
    };
    Some(match o {
        Origin::Cancelled(_) => 0,
        Origin::DeadlineExceeded(_) => 1,
        Origin::PoolExhausted => 3,
        Origin::Shutdown => 4,
        _ => unreachable!(),
    })
}

fn counts(pool: &Pool, op: &str) -> ctxpool::metrics::OpCounts {
    pool.metrics()
        .ops
        .into_iter()
        .find(|(n, _)| *n == op)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no op {op}"))
}

#[test]
fn stress_counts_add_up() {
    let clock = ManualClock::new();
    let pool = Pool::builder()
        .capacity(1 << 16)
        .manual_clock(&clock)
        .build()
        .unwrap();
    pool.testing_quiesce();
    let start = pool.stats().in_use;
    let expected: [Arc<AtomicU64>; 5] = Default::default();
    let made = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pool = pool.clone();
            let expected = expected.clone();
            let made = made.clone();
            s.spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                let mut rnd = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for _ in 0..20_000 {
                    let r = rnd();
                    let root = pool.background().child().op(&STRESS).with_timeout(
                        // Some deadlines already expired (read lazily), most far away.
                        Duration::from_millis(if r % 7 == 0 { 0 } else { 60_000 }),
                    );
                    let kids: Vec<_> = (0..(r >> 8) % 4)
                        .map(|_| root.child().op(&CHILD).with_cancel())
                        .collect();
                    made.fetch_add(1 + kids.len() as u64, Ordering::Relaxed);
                    match (r >> 16) % 4 {
                        0 => {
                            root.cancel(Reason::Code(1));
                        }
                        1 => {
                            root.cancel_with(Origin::Shutdown);
                        }
                        2 if !kids.is_empty() => {
                            kids[0].cancel(Reason::None);
                        }
                        _ => {}
                    }
                    // Every context is read before it is dropped, so each cancellation is
                    // recorded on it (lazily for children) and counted exactly once.
                    for k in kids.iter().rev() {
                        if let Some(r) = k.cause().and_then(reason) {
                            expected[r].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(r) = root.cause().and_then(reason) {
                        expected[r].fetch_add(1, Ordering::Relaxed);
                    }
                    // Drop on this or another thread.
                    if r % 3 == 0 {
                        std::thread::scope(|s2| {
                            s2.spawn(move || drop(kids));
                        });
                    } else {
                        drop(kids);
                    }
                    drop(root);
                }
            });
        }
    });
    let m = pool.metrics();
    let (mut created, mut released, mut cancelled) = (0, 0, [0u64; 5]);
    for (_, c) in &m.ops {
        created += c.created;
        released += c.released;
        assert_eq!(c.active(), 0);
        for (total, n) in cancelled.iter_mut().zip(c.cancelled) {
            *total += n;
        }
    }
    assert_eq!(created, made.load(Ordering::Relaxed));
    assert_eq!(released, created);
    let want: Vec<u64> = expected.iter().map(|e| e.load(Ordering::Relaxed)).collect();
    assert_eq!(cancelled.to_vec(), want, "by reason {REASONS:?}");
    assert!(
        [0, 1, 2, 4].iter().all(|&r| want[r] > 0),
        "every reason but exhausted occurs: {want:?}"
    );
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, start);
    // Every "stress" root (4 threads × 20,000) was observed once in its lifetime histogram,
    // which is what `released` reports.
    let stress = counts(&pool, "stress");
    assert_eq!(stress.lifetime.count(), 4 * 20_000);
    assert_eq!(stress.released, 4 * 20_000);
    assert_eq!(stress.created, 4 * 20_000);
}

#[test]
fn exhaustion_is_counted_as_a_cancellation() {
    let pool = Pool::builder()
        .capacity(1)
        .driver(DriverMode::Manual)
        .build()
        .unwrap();
    let a = pool.background().child().op(&STRESS).with_cancel();
    let b = pool.background().child().op(&STRESS).with_cancel();
    assert_eq!(b.cause(), Some(Cause::PoolExhausted));
    let c = counts(&pool, "stress");
    assert_eq!(c.cancelled[3], 1);
    assert_eq!(c.created, 1);
    drop((a, b));
}

#[test]
fn lifetimes_and_overruns_on_the_manual_clock() {
    let clock = ManualClock::new();
    let pool = Pool::builder().manual_clock(&clock).build().unwrap();
    let a = pool
        .background()
        .child()
        .op(&STRESS)
        .with_timeout(Duration::from_millis(10));
    clock.advance(Duration::from_millis(40));
    drop(a);
    let c = counts(&pool, "stress");
    assert_eq!(c.lifetime.count(), 1);
    assert!((c.lifetime.sum - 0.040).abs() < 1e-9);
    assert_eq!(c.lifetime.cumulative()[2], (0.01, 0)); // not within 10 ms
    assert_eq!(c.lifetime.cumulative()[4], (0.05, 1));
    assert_eq!(c.overrun.count(), 1);
    assert!((c.overrun.sum - 0.030).abs() < 1e-9);
    // Nothing observed the deadline (no turn, no read) before the owner released it: no
    // cancellation was recorded, so none is counted. Once the driver fires, it is.
    assert_eq!(c.cancelled[1], 0);
    let b = pool
        .background()
        .child()
        .op(&STRESS)
        .with_timeout(Duration::from_millis(10));
    clock.advance(Duration::from_millis(10));
    pool.turn();
    assert_eq!(counts(&pool, "stress").cancelled[1], 1);
    drop(b);
}

#[test]
fn metrics_off_counts_nothing() {
    let config = Config {
        metrics: ctxpool::config::MetricsConfig {
            enabled: false,
            ..Default::default()
        },
        pool_capacity: 64,
        ..Config::default()
    };
    let pool = Pool::builder()
        .config(&config)
        .driver(DriverMode::Manual)
        .build()
        .unwrap();
    for _ in 0..10 {
        let c = pool.background().child().op(&STRESS).with_cancel();
        c.cancel(Reason::None);
    }
    assert!(pool
        .metrics()
        .ops
        .iter()
        .all(|(_, c)| c.created == 0 && c.cancelled == [0; 5]));
    // Switched on at run time, counting starts.
    let mut on = (*pool.config()).clone();
    on.metrics.enabled = true;
    pool.update_config(on).unwrap();
    drop(pool.background().child().op(&STRESS).with_cancel());
    assert_eq!(counts(&pool, "stress").created, 1);
}

#[test]
fn exposition_has_every_family() {
    let pool = Pool::builder().driver(DriverMode::Manual).build().unwrap();
    let w = {
        let c = pool.background().with_cancel();
        c.downgrade()
    };
    assert!(w.upgrade().is_none());
    let text = pool.metrics().to_prometheus();
    for family in [
        "contexts_created_total",
        "contexts_cancelled_total",
        "contexts_released_total",
        "contexts_active",
        "context_lifetime_seconds",
        "deadline_overrun_seconds",
        "pool_capacity",
        "pool_in_use",
        "pool_high_water",
        "pool_exhausted_total",
        "pool_spent_slots_total",
        "timers_pending",
        "timer_fire_lateness_seconds",
        "deadline_clamped_total",
        "stale_handle_total",
        "leak_suspects",
        "config_updates_total",
    ] {
        assert!(
            text.contains(&format!("# HELP ctxpool_{family} ")),
            "{family}"
        );
        assert!(
            text.contains(&format!("# TYPE ctxpool_{family} ")),
            "{family}"
        );
    }
    assert!(text.contains("ctxpool_stale_handle_total 1"));
    assert!(text.contains("ctxpool_context_lifetime_seconds_bucket{op=\"none\",le=\"+Inf\"} 1"));
}

static LEAKY: Op = Op::new("leaky");

#[test]
fn a_leak_is_reported_once_with_its_site_then_disappears() {
    let clock = ManualClock::new();
    let pool = Pool::builder().manual_clock(&clock).build().unwrap();
    let line = line!() + 1;
    let held = pool.background().child().op(&LEAKY).with_cancel();
    let young = pool.background().child().op(&LEAKY).with_cancel();
    // The driver's upkeep scans every leak.interval (30 s); threshold 5 min.
    clock.advance(Duration::from_secs(299));
    drop(young); // released before the threshold: never reported
    clock.advance(Duration::from_secs(1));
    pool.turn();
    let r = pool.leak_report().expect("the driver scanned");
    assert_eq!(r.suspects, 1, "{r}");
    let g = &r.groups[0];
    assert_eq!((g.op, g.count), ("leaky", 1));
    assert_eq!(g.location.file(), file!());
    assert_eq!(g.location.line(), line);
    assert_eq!(g.samples, vec![held.id()]);
    assert!(g.oldest >= Duration::from_secs(300));
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["groups"][0]["op"], "leaky");
    assert_eq!(json["groups"][0]["line"], line);
    assert!(pool
        .metrics()
        .to_prometheus()
        .contains("ctxpool_leak_suspects{op=\"leaky\"} 1"));
    drop(held);
    clock.advance(Duration::from_secs(30));
    pool.turn();
    assert_eq!(pool.leak_report().unwrap().suspects, 0);
}

#[test]
fn alert_is_rate_limited_and_backtraces_are_sampled() {
    let clock = ManualClock::new();
    let mut config = Config::default();
    config.leak.alert_threshold = 2;
    config.leak.backtrace_sample_rate = 0.5;
    let pool = Pool::builder()
        .config(&config)
        .manual_clock(&clock)
        .build()
        .unwrap();
    // A creating function of its own, kept out of line, so that its frame is in the sampled
    // backtrace in an optimised build too (an inlined closure's frame is not, without debug
    // information).
    #[inline(never)]
    fn make_leaky(pool: &Pool) -> CancelGuard {
        pool.background().child().op(&LEAKY).with_cancel()
    }
    let held: Vec<_> = (0..4).map(|_| make_leaky(&pool)).collect();
    clock.advance(Duration::from_secs(300));
    let r = pool.scan_leaks();
    assert_eq!(r.suspects, 4);
    assert!(r.alerted);
    let bt = r.groups[0].backtrace.as_ref().expect("half were sampled");
    assert!(bt.contains("make_leaky"), "{bt}");
    assert!(
        !pool.scan_leaks().alerted,
        "at most one alert per threshold"
    );
    clock.advance(Duration::from_secs(300));
    assert!(pool.scan_leaks().alerted);
    drop(held);
}

#[test]
fn a_million_live_contexts_are_scanned_without_blocking_creators() {
    let clock = ManualClock::new();
    let pool = Pool::builder()
        .capacity(1 << 21)
        .manual_clock(&clock)
        .build()
        .unwrap();
    let root = pool.background().child().op(&LEAKY).with_cancel();
    let live: Vec<Context> = (0..1_000_000).map(|_| root.child().build()).collect();
    clock.advance(Duration::from_secs(300));
    let stop = Arc::new(AtomicBool::new(false));
    let made_during = Arc::new(AtomicU64::new(0));
    let creator = {
        let (pool, stop, made) = (pool.clone(), stop.clone(), made_during.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                drop(pool.background().with_cancel());
                made.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    while made_during.load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    let before = made_during.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let r = pool.scan_leaks();
    let took = t0.elapsed();
    let during = made_during.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    creator.join().unwrap();
    println!(
        "leak scan: {} live contexts in {took:?} ({:.0} ns each); a creator thread made {during} \
         contexts meanwhile",
        r.scanned,
        took.as_nanos() as f64 / r.scanned as f64
    );
    assert!(r.scanned >= 1_000_001);
    assert_eq!(r.suspects, 1_000_001);
    assert!(during > 0, "creation went on during the scan");
    drop(live);
}
