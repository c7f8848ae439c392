//! loom models of issue 13's races: a timer firing vs an ancestor's cancel (tree I12), and the
//! driver going to sleep vs a new timer being armed (time D5, no lost wake-up).
//!
//! As in `timer.rs`, time moves only through a [`ManualClock`] and a "driver" is a thread
//! calling [`Pool::turn`] (or the driver's sleep protocol, `Pool::__sleep_until_work`).
//! Natively the same models run as smoke tests on real threads.

use std::time::Duration;

use ctxpool::{Cause, ContextError, ManualClock, Origin, Pool, Reason};
use ctxpool_loom_tests::*;

const MS: Duration = Duration::from_millis(1);
const LONG: Duration = Duration::from_secs(1);

fn manual_pool(capacity: u32) -> (ManualClock, Pool) {
    let clock = ManualClock::new();
    let pool = Pool::builder()
        .capacity(capacity)
        .manual_clock(&clock)
        .build()
        .unwrap();
    (clock, pool)
}

const PARENT: Cause = Cause::Parent(Origin::Cancelled(Reason::Code(1)));

/// I12: the child's deadline has passed; one thread cancels the parent while another turns
/// (the child's timer fires) and a third reads the child. Whichever is observed first wins for
/// good: the child reads `Parent(..)` or `DeadlineExceeded`, every read agrees with the final
/// one, and a fire that finds the parent cancelled does not record a deadline.
#[test]
fn timer_fire_vs_ancestor_cancel() {
    model(|| {
        let (clock, pool) = manual_pool(4);
        let req = pool.background().with_cancel();
        let db = req.with_timeout(MS);
        clock.advance(MS);
        let reader = {
            let db = db.context();
            thread::spawn(move || db.cause())
        };
        let p = pool.clone();
        let driver = thread::spawn(move || p.turn());
        req.cancel(Reason::Code(1));
        let fired = driver.join().unwrap();
        let seen = reader.join().unwrap();
        let last = db.cause().unwrap();
        assert!(
            last == PARENT || matches!(last, Cause::DeadlineExceeded(_)),
            "{last:?}"
        );
        if let Some(seen) = seen {
            assert_eq!(seen, last, "the cause changed after it was read");
        }
        if fired == 0 {
            // The fire yielded (or the reader recorded the cause first): never a deadline
            // recorded over the parent's cancel.
            assert!(last == PARENT || seen.is_some());
        }
        assert_eq!(db.cause(), Some(last));
        drop(db);
        drop(req);
    });
}

/// I12: the parent's cancel happens before the child's deadline passes (program order); the
/// timer fires later on another thread, which nobody read before: `Canceled` with the
/// parent's cause.
#[test]
fn ancestor_cancel_before_deadline_beats_a_later_fire() {
    model(|| {
        let (clock, pool) = manual_pool(4);
        let req = pool.background().with_cancel();
        let db = req.with_timeout(MS);
        req.cancel(Reason::Code(1));
        let (c, p) = (clock.clone(), pool.clone());
        let driver = thread::spawn(move || {
            c.advance(MS);
            p.turn()
        });
        let seen = db.err();
        driver.join().unwrap();
        assert_eq!(seen, Some(ContextError::Canceled));
        assert_eq!(db.cause(), Some(PARENT));
    });
}

/// D5: the driver goes to sleep while another thread arms a timer. Either the driver sees the
/// timer in the ring and does not sleep, or the armer sees it sleeping and wakes it; a lost
/// wake-up is a loom deadlock (natively, a panic after 10 s). The timer is then found by the
/// next turn and fires on time.
#[test]
fn driver_sleep_vs_new_timer() {
    model(|| {
        let (clock, pool) = manual_pool(4);
        let p = pool.clone();
        let driver = thread::spawn(move || {
            p.__sleep_until_work();
            p.turn();
        });
        let ctx = pool.background().with_timeout(MS);
        driver.join().unwrap();
        clock.advance(MS);
        assert_eq!(pool.turn(), 1, "the armed timer was lost");
        assert_eq!(ctx.err(), Some(ContextError::DeadlineExceeded));
    });
}

/// D5 with a spilled timer: a ring of two entries (under loom) is full after two timers, so
/// the third goes through the spill list, which wakes a sleeping driver too.
#[test]
fn driver_sleep_vs_spilled_timer() {
    model(|| {
        let (_clock, pool) = manual_pool(8);
        let a = pool.background().with_timeout(LONG);
        let b = pool.background().with_timeout(LONG);
        let p = pool.clone();
        let driver = thread::spawn(move || p.__sleep_until_work());
        let c = pool.background().with_timeout(LONG);
        let slept = driver.join().unwrap();
        // Timers were pending before the driver tried to sleep: it must not have slept.
        assert!(!slept);
        drop((a, b, c));
    });
}
