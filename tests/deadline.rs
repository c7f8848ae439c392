//! Deadlines on a manual clock: the timer wheel, the driver, clamps and request roots.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ctxpool::{Cause, ContextError, DriverMode, ManualClock, Origin, Pool, Reason};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn manual() -> (ManualClock, Pool) {
    let clock = ManualClock::new();
    let pool = Pool::builder()
        .capacity(4096)
        .manual_clock(&clock)
        .max_timeout(Duration::from_secs(60))
        .default_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    (clock, pool)
}

/// Counts `after_func` runs: what only an eager (driver-fired) cancel triggers.
fn counter(ctx: &ctxpool::Context) -> (Arc<AtomicUsize>, ctxpool::AfterFunc) {
    let n = Arc::new(AtomicUsize::new(0));
    let m = n.clone();
    let f = ctx.after_func(move || {
        m.fetch_add(1, Ordering::SeqCst);
    });
    (n, f)
}

#[test]
fn fires_at_its_tick_and_not_before() {
    let (clock, pool) = manual();
    let start = clock.now();
    let ctx = pool.background().with_timeout(ms(30));
    assert_eq!(ctx.deadline(), Some(start + ms(30)));
    assert_eq!(pool.now(), start);
    let (runs, _f) = counter(&ctx);
    clock.advance(ms(29));
    assert_eq!(pool.turn(), 0);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(!ctx.is_cancelled());
    clock.advance(ms(1));
    assert_eq!(pool.turn(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the timer ran the callback");
    assert_eq!(
        ctx.cause(),
        Some(Cause::DeadlineExceeded(start + ms(30))),
        "records the deadline"
    );
    assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    // Later turns fire nothing more.
    clock.advance(ms(100));
    assert_eq!(pool.turn(), 0);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(pool.timer_stats().fired, 1);
}

#[test]
fn many_deadlines_each_fire_at_their_tick() {
    let (clock, pool) = manual();
    let root = pool.background();
    let guards: Vec<_> = (1..=200u64).map(|i| root.with_timeout(ms(i * 7))).collect();
    for t in 1..=1400u64 {
        clock.advance(ms(1));
        let fired = pool.turn();
        let expected = usize::from(t % 7 == 0);
        assert_eq!(fired, expected, "at {t} ms");
        for (i, g) in guards.iter().enumerate() {
            let due = (i as u64 + 1) * 7;
            assert_eq!(
                g.cause().is_some(),
                due <= t,
                "context due at {due} read at {t}"
            );
        }
    }
}

#[test]
fn child_never_outlives_its_parent() {
    let (clock, pool) = manual();
    let parent = pool.background().with_timeout(ms(100));
    let later = parent.with_timeout(ms(500));
    let earlier = parent.with_timeout(ms(40));
    assert_eq!(later.deadline(), parent.deadline());
    assert!(earlier.deadline() < parent.deadline());
    // Only the parent and the earlier child armed a timer.
    assert_eq!(pool.timer_stats().armed, 2);
    clock.advance(ms(40));
    pool.turn();
    assert_eq!(
        earlier.cause(),
        Some(Cause::DeadlineExceeded(earlier.deadline().unwrap()))
    );
    assert!(!later.is_cancelled());
    clock.advance(ms(60));
    pool.turn();
    assert_eq!(
        parent.cause(),
        Some(Cause::DeadlineExceeded(parent.deadline().unwrap()))
    );
    assert_eq!(
        later.cause(),
        Some(Cause::Parent(Origin::DeadlineExceeded(
            parent.deadline().unwrap()
        ))),
        "relies on its parent's timer"
    );
    assert_eq!(later.err(), Some(ContextError::DeadlineExceeded));
}

#[test]
fn max_timeout_clamps_and_counts() {
    let (clock, pool) = manual();
    let ctx = pool.background().with_timeout(Duration::from_secs(3600));
    assert_eq!(ctx.remaining(), Some(Duration::from_secs(60)));
    assert_eq!(pool.timer_stats().clamped, 1);
    let at = pool
        .background()
        .with_deadline(clock.now() + Duration::from_secs(90));
    assert_eq!(at.remaining(), Some(Duration::from_secs(60)));
    assert_eq!(pool.timer_stats().clamped, 2);
    let ok = pool.background().with_timeout(Duration::from_secs(59));
    assert_eq!(pool.timer_stats().clamped, 2);
    drop(ok);
    clock.advance(Duration::from_secs(60));
    pool.turn();
    assert_eq!(
        ctx.cause(),
        Some(Cause::DeadlineExceeded(ctx.deadline().unwrap()))
    );
    assert_eq!(
        at.cause(),
        Some(Cause::DeadlineExceeded(at.deadline().unwrap()))
    );
}

#[test]
fn request_roots_get_the_default_timeout_in_the_same_node() {
    let (clock, pool) = manual();
    pool.testing_quiesce();
    let before = pool.stats().in_use;
    let req = pool.request().with_cancel();
    assert_eq!(req.remaining(), Some(Duration::from_secs(2)));
    assert_eq!(
        pool.stats().in_use,
        before + 1,
        "one node: no second timer context"
    );
    let short = pool.request().with_timeout(ms(10));
    assert_eq!(short.remaining(), Some(ms(10)));
    let long = pool.request().with_timeout(Duration::from_secs(3600));
    assert_eq!(
        long.remaining(),
        Some(Duration::from_secs(60)),
        "still clamped"
    );
    clock.advance(Duration::from_secs(2));
    pool.turn();
    assert_eq!(
        req.cause(),
        Some(Cause::DeadlineExceeded(req.deadline().unwrap()))
    );
    assert!(!long.is_cancelled());
    drop((req, short, long));
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, before);
}

#[test]
fn expired_deadline_reads_immediately_without_the_driver() {
    let (clock, pool) = manual();
    let parent = pool.background().with_timeout(ms(5));
    let child = parent.with_cancel();
    let grandchild = child.with_timeout(ms(50));
    clock.advance(ms(5));
    // No turn: nothing has fired, but the deadline has passed.
    assert_eq!(pool.timer_stats().fired, 0);
    assert!(grandchild.is_cancelled());
    assert_eq!(
        grandchild.cause(),
        Some(Cause::Parent(Origin::DeadlineExceeded(
            parent.deadline().unwrap()
        )))
    );
    assert_eq!(
        parent.cause(),
        Some(Cause::DeadlineExceeded(parent.deadline().unwrap())),
        "the owner was cancelled"
    );
    assert_eq!(
        child.cause(),
        Some(Cause::Parent(Origin::DeadlineExceeded(
            parent.deadline().unwrap()
        )))
    );
    // A deadline in the past is expired at birth.
    let past = pool.background().with_deadline(clock.now() - ms(1));
    assert_eq!(
        past.cause(),
        Some(Cause::DeadlineExceeded(past.deadline().unwrap()))
    );
    assert_eq!(past.remaining(), Some(Duration::ZERO));
    // The timer, when it comes, finds nothing left to do.
    pool.turn();
    assert_eq!(pool.timer_stats().fired, 0);
}

#[test]
fn an_explicit_cancel_before_the_deadline_wins() {
    let (clock, pool) = manual();
    let ctx = pool.background().with_timeout(ms(10));
    ctx.cancel(Reason::Code(7));
    clock.advance(ms(10));
    pool.turn();
    assert_eq!(ctx.cause(), Some(Cause::Cancelled(Reason::Code(7))));
}

#[test]
fn release_before_expiry_disarms_and_leaks_nothing() {
    let (clock, pool) = manual();
    pool.testing_quiesce();
    let start = pool.stats().in_use;
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..1000 {
        let ctx = pool.background().with_timeout(ms(20));
        let r = runs.clone();
        let f = ctx.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert!(f.stop());
        drop(ctx);
    }
    pool.turn();
    // Slots are reused by new contexts with later deadlines: the old timers must not fire
    // into them.
    let survivors: Vec<_> = (0..1000)
        .map(|_| pool.background().with_timeout(Duration::from_secs(30)))
        .collect();
    clock.advance(ms(20));
    assert_eq!(pool.turn(), 0);
    assert!(survivors.iter().all(|s| !s.is_cancelled()));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    drop(survivors);
    clock.advance(Duration::from_secs(31));
    pool.turn();
    let st = pool.timer_stats();
    assert_eq!(st.fired, 0);
    assert_eq!(st.pending, 0, "every stale entry was dropped: {st:?}");
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, start);
    assert_eq!(st.armed, 2000);
    assert_eq!(st.stale, 2000, "every timer left as stale: {st:?}");
}

#[test]
fn the_wheel_is_compacted_so_memory_stays_bounded() {
    let (clock, pool) = manual();
    // Contexts that live past one turn enter the wheel; released, they leave stale entries
    // behind that a compaction removes long before their 60 s deadlines.
    for round in 0..40 {
        let batch: Vec<_> = (0..1000)
            .map(|_| pool.background().with_timeout(Duration::from_secs(60)))
            .collect();
        pool.turn();
        drop(batch);
        clock.advance(ms(1));
        let st = pool.timer_stats();
        assert!(st.pending <= 2 * 4096 + 1000, "round {round}: {st:?}");
    }
    pool.turn();
    assert!(pool.timer_stats().compactions > 0);
}

#[test]
fn deadline_on_background_and_exhausted_contexts() {
    let (_clock, pool) = manual();
    assert_eq!(pool.background().deadline(), None);
    assert_eq!(pool.background().remaining(), None);
    let tiny = Pool::builder()
        .capacity(1)
        .manual_clock(&ManualClock::new())
        .build()
        .unwrap();
    let a = tiny.background().with_timeout(ms(5));
    let b = tiny.background().with_timeout(ms(5));
    assert_eq!(b.cause(), Some(Cause::PoolExhausted));
    assert_eq!(b.deadline(), None);
    assert!(tiny.background().try_with_timeout(ms(5)).is_err());
    drop(a);
}

#[test]
fn without_cancel_drops_the_deadline() {
    let (clock, pool) = manual();
    let parent = pool.background().with_timeout(ms(5));
    let detached = parent.without_cancel();
    assert_eq!(detached.deadline(), None);
    clock.advance(ms(10));
    pool.turn();
    assert!(parent.is_cancelled());
    assert!(!detached.is_cancelled());
}

#[test]
fn waiting_on_a_deadline_wakes_when_the_driver_fires() {
    let clock = ManualClock::new();
    let pool = Pool::builder().manual_clock(&clock).build().unwrap();
    let ctx = pool.background().with_timeout(ms(50));
    let child = ctx.context().child().build();
    let waiter = std::thread::spawn(move || {
        child.wait();
        child.cause()
    });
    std::thread::sleep(ms(20));
    clock.advance(ms(50));
    pool.turn();
    assert_eq!(
        waiter.join().unwrap(),
        Some(Cause::Parent(Origin::DeadlineExceeded(
            ctx.deadline().unwrap()
        )))
    );
}

#[test]
fn turn_survives_a_panicking_callback() {
    let (clock, pool) = manual();
    let a = pool.background().with_timeout(ms(1));
    let _f = a.after_func(|| panic!("callback panics"));
    let b = pool.background().with_timeout(ms(1));
    let (runs, _g) = counter(&b);
    clock.advance(ms(1));
    // The whole turn runs, then the callback's panic reaches the caller of `turn`.
    let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.turn()));
    assert!(turn.is_err());
    assert!(a.is_cancelled());
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the other timer fired in the same turn"
    );
    assert_eq!(pool.timer_stats().fired, 2);
    // Later turns work.
    let c = pool.background().with_timeout(ms(1));
    clock.advance(ms(1));
    assert_eq!(pool.turn(), 1);
    assert!(c.is_cancelled());
}

#[test]
fn the_driver_thread_fires_on_the_real_clock() {
    let pool = Pool::builder().build().unwrap();
    let ctx = pool.background().with_timeout(ms(20));
    let t0 = std::time::Instant::now();
    ctx.wait();
    assert!(
        t0.elapsed() >= ms(19),
        "not before the deadline: {:?}",
        t0.elapsed()
    );
    assert_eq!(
        ctx.cause(),
        Some(Cause::DeadlineExceeded(ctx.deadline().unwrap()))
    );
    assert!(pool.timer_stats().fired + pool.timer_stats().stale <= 1);
}

#[test]
fn a_rejected_update_leaves_the_old_limits_in_force() {
    let (clock, pool) = manual();
    let mut bad = (*pool.config()).clone();
    bad.default_timeout = Duration::from_secs(120); // above max (60 s)
    bad.max_timeout = Duration::from_secs(30 * 24 * 3600); // absurd
    bad.pool_capacity = 1; // fixed at build time
    let err = pool.update_config(bad).unwrap_err();
    let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"max_timeout"), "{err}");
    assert!(keys.contains(&"pool_capacity"), "{err}");
    assert_eq!(pool.config().default_timeout, Duration::from_secs(2));
    let req = pool.request().with_cancel();
    assert_eq!(req.remaining(), Some(Duration::from_secs(2)), "old default");
    let long = pool.background().with_timeout(Duration::from_secs(3600));
    assert_eq!(long.remaining(), Some(Duration::from_secs(60)), "old max");

    let mut good = (*pool.config()).clone();
    good.default_timeout = Duration::from_millis(500);
    good.max_timeout = Duration::from_secs(10);
    pool.update_config(good).unwrap();
    let req2 = pool.request().with_cancel();
    assert_eq!(req2.remaining(), Some(ms(500)));
    let long2 = pool.background().with_timeout(Duration::from_secs(3600));
    assert_eq!(long2.remaining(), Some(Duration::from_secs(10)));
    // Contexts made before keep their deadlines.
    assert_eq!(req.remaining(), Some(Duration::from_secs(2)));
    clock.advance(ms(500));
    pool.turn();
    assert!(req2.is_cancelled() && !req.is_cancelled());
}

#[test]
fn builder_takes_a_config_and_rejects_a_bad_one_with_every_problem() {
    let mut c = ctxpool::Config {
        default_timeout: Duration::from_secs(10),
        pool_capacity: 64,
        ..Default::default()
    };
    let pool = Pool::builder()
        .config(&c)
        .driver(DriverMode::Manual)
        .build()
        .unwrap();
    assert_eq!(pool.capacity(), 64);
    assert_eq!(*pool.config(), c);
    c.pool_capacity = 0;
    c.default_timeout = Duration::from_secs(3600);
    let err = Pool::builder().config(&c).build().unwrap_err();
    assert!(err.problems.len() >= 2, "{err}");
}

#[test]
fn a_coarser_resolution_fires_within_one_tick() {
    let clock = ManualClock::new();
    let pool = Pool::builder()
        .manual_clock(&clock)
        .timer_resolution(ms(10))
        .build()
        .unwrap();
    let ctx = pool.background().with_timeout(ms(25));
    let (runs, _f) = counter(&ctx);
    clock.advance(ms(25));
    pool.turn();
    // The deadline has passed (a read says so), but the wheel's tick is 10 ms: the timer fires
    // at the first tick at or after it, 30 ms, never before 25 ms.
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    clock.advance(ms(5));
    pool.turn();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(Pool::builder()
        .timer_resolution(Duration::from_micros(1500))
        .build()
        .is_err());
}
