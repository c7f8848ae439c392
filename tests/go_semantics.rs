//! Go's `context` semantics under real conditions (issue 13): one test per rule.
//!
//! Where timing matters the pool runs on a [`ManualClock`]. Tests on the real clock assert the
//! order of events (a deadline is never before the instant asked for), never how long
//! something took, so they hold on a slow or loaded machine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctxpool::{Cause, ContextError, DriverMode, ManualClock, Origin, Pool, Reason};

const MS: Duration = Duration::from_millis(1);

fn manual() -> (ManualClock, Pool) {
    let clock = ManualClock::new();
    let pool = Pool::builder().manual_clock(&clock).build().unwrap();
    (clock, pool)
}

// ---- 0: a clock no reader sees stale -------------------------------------------------------

/// A pool without a driver thread, never turned, still reads the current time: a deadline
/// counted from it is not already spent (the CI flake of `alloc_free`).
#[test]
fn undriven_pool_clock_is_never_stale() {
    let pool = Pool::builder().driver(DriverMode::Manual).build().unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let before = Instant::now();
    // Read after `before`: at most one tick (1 ms) behind it.
    assert!(pool.now() + MS >= before, "the pool's clock is stale");
    let ctx = pool.background().with_timeout(Duration::from_secs(2));
    assert!(ctx.deadline().unwrap() >= before + Duration::from_secs(2));
    assert!(!ctx.is_cancelled());
    assert!(ctx.remaining().unwrap() > Duration::from_secs(1));
}

// ---- 1: deadline vs an ancestor's cancel ---------------------------------------------------

#[test]
fn parent_cancel_before_the_deadline_wins_even_unread() {
    let (clock, pool) = manual();
    let req = pool.background().with_cancel();
    let db = req.with_timeout(50 * MS);
    req.cancel(Reason::Message("client went away"));
    clock.advance(100 * MS);
    pool.turn(); // the child's timer comes due; nobody read the child before
    assert_eq!(db.err(), Some(ContextError::Canceled));
    assert_eq!(
        db.cause(),
        Some(Cause::Parent(Origin::Cancelled(Reason::Message(
            "client went away"
        ))))
    );
}

#[test]
fn parent_cancel_before_the_deadline_wins_with_a_waiter() {
    let (clock, pool) = manual();
    let req = pool.background().with_cancel();
    let db = req.with_timeout(50 * MS);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let _f = db.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    req.cancel(Reason::Code(7));
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    clock.advance(100 * MS);
    pool.turn();
    assert_eq!(
        db.cause(),
        Some(Cause::Parent(Origin::Cancelled(Reason::Code(7))))
    );
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn child_born_under_a_cancelled_parent_reads_the_parents_cause() {
    let (clock, pool) = manual();
    let req = pool.background().with_cancel();
    req.cancel(Reason::Code(3));
    let db = req.with_timeout(50 * MS);
    clock.advance(100 * MS);
    pool.turn();
    assert_eq!(db.err(), Some(ContextError::Canceled));
    assert_eq!(
        db.cause(),
        Some(Cause::Parent(Origin::Cancelled(Reason::Code(3))))
    );
}

#[test]
fn deadline_before_the_parent_cancel_wins_for_good() {
    let (clock, pool) = manual();
    let req = pool.background().with_cancel();
    let db = req.with_timeout(50 * MS);
    clock.advance(50 * MS);
    pool.turn(); // the timer fires first
    req.cancel(Reason::Code(1));
    assert_eq!(db.err(), Some(ContextError::DeadlineExceeded));
    // Read first, then cancelled: the same.
    let db2 = req.with_timeout(Duration::from_secs(5));
    drop(db2);
    let req2 = pool.background().with_cancel();
    let db3 = req2.with_timeout(10 * MS);
    clock.advance(10 * MS);
    assert_eq!(db3.err(), Some(ContextError::DeadlineExceeded));
    req2.cancel(Reason::Code(2));
    pool.turn();
    assert_eq!(db3.err(), Some(ContextError::DeadlineExceeded));
}

// ---- 2: born expired -----------------------------------------------------------------------

#[test]
fn born_expired_is_deadline_exceeded_at_once_without_a_timer() {
    let (clock, pool) = manual();
    clock.advance(10 * MS);
    let req = pool.background().with_cancel();
    let armed = pool.timer_stats().armed;
    let zero = req.with_timeout(Duration::ZERO);
    let past = req.with_deadline(clock.now() - 5 * MS);
    let now = req.with_deadline(clock.now());
    for ctx in [&zero, &past, &now] {
        assert!(ctx.is_cancelled());
        assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    }
    assert_eq!(pool.timer_stats().armed, armed, "no timer is armed");
    req.cancel(Reason::Code(9));
    for ctx in [&zero, &past, &now] {
        assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
        assert!(matches!(ctx.cause(), Some(Cause::DeadlineExceeded(_))));
    }
    assert_eq!(pool.turn(), 0);
}

#[test]
fn born_expired_on_the_real_clock() {
    let pool = Pool::builder().driver(DriverMode::Manual).build().unwrap();
    let ctx = pool.background().with_timeout(Duration::ZERO);
    assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    let ctx = pool.background().with_deadline(Instant::now());
    assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    assert_eq!(pool.timer_stats().armed, 0);
}

#[test]
fn born_expired_under_a_cancelled_parent_reads_the_parent() {
    let (_clock, pool) = manual();
    let req = pool.background().with_cancel();
    req.cancel(Reason::Code(4));
    let ctx = req.with_timeout(Duration::ZERO);
    assert_eq!(
        ctx.cause(),
        Some(Cause::Parent(Origin::Cancelled(Reason::Code(4))))
    );
}

// ---- 3: never early ------------------------------------------------------------------------

fn never_early(pool: &Pool, tries: usize) {
    let d = 20 * MS;
    for _ in 0..tries {
        let t0 = Instant::now();
        let ctx = pool.background().with_timeout(d);
        let t1 = Instant::now();
        let dl = ctx.deadline().unwrap();
        assert!(dl >= t0 + d, "deadline() before the instant asked for");
        // One tick, plus the few microseconds of the TSC clock's bracket (time/tsc.rs, T1).
        assert!(
            dl <= t1 + d + MS + Duration::from_micros(10),
            "deadline() more than one tick late"
        );
        while !ctx.is_cancelled() {
            std::hint::spin_loop();
        }
        assert!(
            Instant::now() >= t0 + d,
            "expired before the instant asked for"
        );
        assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    }
}

#[test]
fn never_early_with_a_driver_thread() {
    never_early(&Pool::builder().build().unwrap(), 20);
}

#[test]
fn never_early_without_a_driver() {
    never_early(
        &Pool::builder().driver(DriverMode::Manual).build().unwrap(),
        20,
    );
}

#[test]
fn never_early_on_a_manual_clock_and_on_time() {
    let (clock, pool) = manual();
    clock.advance(3 * MS);
    let ctx = pool.background().with_timeout(20 * MS);
    assert_eq!(ctx.deadline(), Some(clock.now() + 20 * MS));
    clock.advance(19 * MS);
    pool.turn();
    assert!(!ctx.is_cancelled());
    clock.advance(MS);
    assert!(ctx.is_cancelled());
    // A sub-millisecond timeout rounds up: never early.
    let ctx = pool.background().with_timeout(Duration::from_micros(1500));
    clock.advance(MS);
    assert!(!ctx.is_cancelled());
    clock.advance(MS);
    assert!(ctx.is_cancelled());
}

// ---- 8: an idle driver sleeps, and wakes for new work --------------------------------------

/// A driver that sleeps (nothing due) still fires a timer armed later: no lost wake-up.
#[test]
fn sleeping_driver_wakes_for_a_new_timer() {
    let pool = Pool::builder().build().unwrap();
    for _ in 0..5 {
        // Let the driver go idle (whether it did or not, the assertions below hold).
        std::thread::sleep(Duration::from_millis(60));
        let ctx = pool.background().with_timeout(5 * MS);
        let waiter = ctx.context();
        assert!(
            waiter.wait_timeout(Duration::from_secs(30)),
            "timer not fired"
        );
        assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    }
}

/// An idle pool's driver does not turn every tick.
#[test]
fn idle_driver_does_not_tick() {
    let pool = Pool::builder().build().unwrap();
    let _long = pool.background().with_timeout(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(100));
    let before = pool.timer_stats().turns;
    std::thread::sleep(Duration::from_millis(500));
    let turns = pool.timer_stats().turns - before;
    // A ticking driver turns about 500 times here; a sleeping one a handful (a slower machine
    // only turns less).
    assert!(turns < 50, "{turns} turns in 500 ms idle");
}

// ---- 5: user code never runs on the clock --------------------------------------------------

/// A callback that blocks when its deadline fires delays no other timer and not the clock.
#[test]
fn blocking_callback_does_not_stall_the_driver() {
    let pool = Pool::builder().build().unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let blocker = pool.background().with_timeout(2 * MS);
    let _f = blocker.after_func(move || {
        started_tx.send(()).unwrap();
        // Blocks until the test is done with the checks below.
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
    });
    started_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("callback never ran");
    // The callback is blocked now. Other timers fire, and the clock moves.
    for _ in 0..3 {
        let ctx = pool.background().with_timeout(3 * MS);
        assert!(ctx.context().wait_timeout(Duration::from_secs(30)));
        assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    }
    let before = Instant::now();
    let later = pool.background().with_timeout(Duration::from_secs(1));
    assert!(later.deadline().unwrap() >= before + Duration::from_secs(1));
    assert!(!later.is_cancelled());
    release_tx.send(()).unwrap();
}

/// Callbacks that block do not hold up the ones behind them: eight callbacks fired by the
/// driver block until the test releases them, and a ninth, fired after them, still runs (the
/// runner starts a thread for a callback kept waiting). Then a burst of callbacks all run.
#[test]
fn blocked_callbacks_do_not_hold_up_later_ones() {
    let pool = Pool::builder().build().unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let release = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let (mut keep, mut guards) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        let ctx = pool.background().with_timeout(MS);
        let (tx, release) = (started_tx.clone(), release.clone());
        keep.push(ctx.after_func(move || {
            tx.send(()).unwrap();
            let (lock, cv) = &*release;
            let mut go = lock.lock().unwrap();
            while !*go {
                go = cv.wait(go).unwrap();
            }
        }));
        guards.push(ctx); // until the end of the test (the deadline fires meanwhile)
    }
    for _ in 0..8 {
        started_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a blocking callback never ran");
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let late = pool.background().with_timeout(MS);
    let _f = late.after_func(move || tx.send(()).unwrap());
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a callback behind eight blocked ones never ran");
    let (lock, cv) = &*release;
    *lock.lock().unwrap() = true;
    cv.notify_all();
    let ran = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = (0..500)
        .map(|_| {
            let ctx = pool.background().with_timeout(MS);
            let r = ran.clone();
            let f = ctx.after_func(move || {
                r.fetch_add(1, Ordering::SeqCst);
            });
            (ctx, f)
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(30);
    while ran.load(Ordering::SeqCst) < 500 && Instant::now() < until {
        std::thread::sleep(MS);
    }
    assert_eq!(ran.load(Ordering::SeqCst), 500);
    drop((burst, keep, guards));
}

/// A panicking callback ends only its own thread: later timers still fire.
#[test]
fn panicking_callback_does_not_stop_the_driver() {
    let pool = Pool::builder().build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let boom = pool.background().with_timeout(MS);
    let _f = boom.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
        panic!("callback panics (expected by the test)");
    });
    assert!(boom.context().wait_timeout(Duration::from_secs(30)));
    for _ in 0..3 {
        let ctx = pool.background().with_timeout(2 * MS);
        assert!(ctx.context().wait_timeout(Duration::from_secs(30)));
    }
    let give_up = Instant::now() + Duration::from_secs(30);
    while ran.load(Ordering::SeqCst) == 0 && Instant::now() < give_up {
        std::thread::yield_now();
    }
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

/// `Pool::turn` called by the user runs the callbacks itself, before it returns; so does an
/// explicit cancel on the cancelling thread.
#[test]
fn user_turn_and_user_cancel_run_callbacks_inline() {
    let (clock, pool) = manual();
    let ran = Arc::new(AtomicUsize::new(0));
    let ctx = pool.background().with_timeout(5 * MS);
    let r = ran.clone();
    let _f = ctx.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    clock.advance(5 * MS);
    assert_eq!(pool.turn(), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    let owner = pool.background().with_cancel();
    let r = ran.clone();
    let _g = owner.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    owner.cancel(Reason::None);
    assert_eq!(ran.load(Ordering::SeqCst), 2);
}

// ---- 7: causes that carry an error ---------------------------------------------------------

#[derive(Debug, PartialEq)]
struct Backend(u16);

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backend answered {}", self.0)
    }
}

impl std::error::Error for Backend {}

/// Counts drops, to show the error is freed with the context.
struct Tracked(Arc<AtomicUsize>);

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracked")
    }
}

impl std::fmt::Display for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tracked")
    }
}

impl std::error::Error for Tracked {}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn cancel_with_error_is_readable_and_downcastable_below() {
    let (_clock, pool) = manual();
    let req = pool.background().with_cancel();
    let db = req.with_cancel();
    let _waited = db.after_func(|| {});
    let lazy = req.with_cancel(); // not registered: adopts on read
    assert!(req.cancel_with_error(Backend(503)));
    assert!(!req.cancel_with_error(Backend(500)), "the first cause wins");
    assert_eq!(req.cause(), Some(Cause::Error));
    assert_eq!(req.err(), Some(ContextError::Canceled));
    for ctx in [&db, &lazy] {
        assert_eq!(ctx.cause(), Some(Cause::Parent(Origin::Error)));
        let e = ctx.cause_error().unwrap();
        assert_eq!(e.downcast_ref::<Backend>(), Some(&Backend(503)));
        assert_eq!(e.to_string(), "backend answered 503");
    }
    assert!(req.cause_error().unwrap().is::<Backend>());
    // Other causes carry no error.
    let other = pool.background().with_cancel();
    assert!(other.cause_error().is_none());
    other.cancel(Reason::Code(1));
    assert!(other.cause_error().is_none());
}

#[test]
fn dynamic_error_is_freed_with_the_context_and_a_losing_one_at_once() {
    let (_clock, pool) = manual();
    let drops = Arc::new(AtomicUsize::new(0));
    let req = pool.background().with_cancel();
    let child = req.with_cancel();
    assert!(req.cancel_with_error(Tracked(drops.clone())));
    assert!(!req.cancel_with_error(Tracked(drops.clone())));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the losing error is dropped"
    );
    let held = child.cause_error().unwrap();
    drop((req, child));
    assert_eq!(drops.load(Ordering::SeqCst), 1, "a reader's Arc keeps it");
    drop(held);
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn deadline_with_a_cause_reports_it_when_it_fires() {
    let (clock, pool) = manual();
    let req = pool.background().with_cancel();
    let db = req.with_timeout_cause(50 * MS, Backend(504));
    let below = db.with_cancel();
    let at = req.with_deadline_cause(clock.now() + 80 * MS, Backend(1));
    assert!(db.cause_error().is_none(), "active");
    clock.advance(50 * MS);
    pool.turn();
    assert_eq!(db.err(), Some(ContextError::DeadlineExceeded));
    assert!(matches!(db.cause(), Some(Cause::DeadlineExceeded(_))));
    assert_eq!(
        db.cause_error().unwrap().downcast_ref::<Backend>(),
        Some(&Backend(504))
    );
    assert_eq!(
        below.cause_error().unwrap().downcast_ref::<Backend>(),
        Some(&Backend(504))
    );
    assert!(!at.is_cancelled());
    clock.advance(30 * MS);
    assert_eq!(
        at.cause_error().unwrap().downcast_ref::<Backend>(),
        Some(&Backend(1))
    );
    // Cancelled another way first: the deadline's cause is not reported (as in Go).
    let early = req.with_timeout_cause(10 * MS, Backend(2));
    early.cancel(Reason::Code(5));
    clock.advance(10 * MS);
    assert!(early.cause_error().is_none());
    // A parent's earlier deadline wins, with the parent's cause (none here).
    let short = req.with_timeout(5 * MS);
    let long = short.with_timeout_cause(Duration::from_secs(1), Backend(3));
    clock.advance(5 * MS);
    assert_eq!(long.err(), Some(ContextError::DeadlineExceeded));
    assert!(long.cause_error().is_none());
}

// ---- 6: a full pool ------------------------------------------------------------------------

/// `without_cancel()` at exhaustion is never cancelled (Go's `WithoutCancel` never is), also
/// under a context that was itself born cancelled by exhaustion.
#[test]
fn without_cancel_at_exhaustion_is_never_cancelled() {
    let pool = Pool::builder().capacity(1).build().unwrap();
    let only = pool.background().with_cancel();
    let full = only.without_cancel();
    assert!(!full.is_cancelled());
    assert!(full.is_never_cancelled());
    assert_eq!(full.err(), None);
    let born_cancelled = only.with_cancel();
    assert_eq!(born_cancelled.cause(), Some(Cause::PoolExhausted));
    let below = born_cancelled.without_cancel();
    assert!(!below.is_cancelled());
    assert!(below.is_never_cancelled());
}

// ---- 4: no false exhaustion ----------------------------------------------------------------

#[path = "go_semantics/exhaustion.rs"]
mod exhaustion;
