//! The pool's 32-bit millisecond tick wraps after 2^32 ms (49.7 days of uptime). Nodes store
//! the low 32 bits of their creation tick and deadline, and every comparison widens them
//! against the full 64-bit tick (time K1), so deadlines that straddle the wrap behave exactly
//! like any other, and leak ages stay true past it.

use std::time::Duration;

use ctxpool::{Cause, ManualClock, Origin, Pool};

const WRAP_MS: u64 = 1 << 32;

fn pool_at(clock: &ManualClock) -> Pool {
    Pool::builder().manual_clock(clock).build().unwrap()
}

#[test]
fn deadline_straddling_the_wrap_fires_on_time() {
    let clock = ManualClock::new();
    let pool = pool_at(&clock);
    // A long-lived root made at the start, with the default 30 s request deadline ignored:
    // a plain cancellable root, so it lives across the wrap.
    let root = pool.background().with_cancel();
    clock.advance(Duration::from_millis(WRAP_MS - 20));
    pool.turn();
    let req = root.with_timeout(Duration::from_millis(50)); // due 30 ms after the wrap
    let child = req.with_timeout(Duration::from_secs(10)); // inherits the earlier deadline
    assert_eq!(child.deadline(), req.deadline());
    let at = req.deadline().unwrap();

    clock.advance(Duration::from_millis(49));
    pool.turn();
    assert!(!req.is_cancelled(), "expired early across the wrap");
    assert!(!child.is_cancelled());
    assert_eq!(req.remaining(), Some(Duration::from_millis(1)));

    clock.advance(Duration::from_millis(1));
    assert_eq!(pool.turn(), 1, "the timer did not fire across the wrap");
    assert_eq!(req.cause(), Some(Cause::DeadlineExceeded(at)));
    assert_eq!(
        child.cause().map(Cause::origin),
        Some(Origin::DeadlineExceeded(at))
    );
    assert!(!root.is_cancelled());
}

#[test]
fn earlier_own_deadline_before_the_wrap_beats_the_parents_after_it() {
    let clock = ManualClock::new();
    let pool = pool_at(&clock);
    clock.advance(Duration::from_millis(WRAP_MS - 100));
    let parent = pool.background().with_timeout(Duration::from_millis(200)); // after the wrap
    let child = parent.with_timeout(Duration::from_millis(50)); // before it
    assert!(child.deadline() < parent.deadline());
    clock.advance(Duration::from_millis(50));
    pool.turn();
    assert!(child.is_cancelled());
    assert!(!parent.is_cancelled());
    clock.advance(Duration::from_millis(150));
    pool.turn();
    assert!(parent.is_cancelled());
}

#[test]
fn leak_age_stays_true_past_the_wrap() {
    let clock = ManualClock::new();
    let pool = pool_at(&clock);
    let elder = pool.background().with_cancel();
    let day = Duration::from_secs(24 * 3600);
    // Scans every few days, as a pool with leak detection on would (its interval is at most
    // the threshold, at most 7 days).
    for _ in 0..20 {
        clock.advance(3 * day);
        let report = pool.scan_leaks();
        assert_eq!(report.suspects, 1);
    }
    // 60 days: past the 49.7 days of the 32-bit tick.
    let report = pool.scan_leaks();
    assert_eq!(report.groups[0].oldest, 60 * day, "{report:?}");
    drop(elder);
    assert_eq!(pool.scan_leaks().suspects, 0);
}
