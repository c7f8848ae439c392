//! loom models of `after_func` (tree I7): the callback runs at most once, `stop()` returns
//! `true` exactly when it prevented the run, and the closure is consumed (run or dropped)
//! exactly once; under loom a closure that is never consumed also leaks a loom `Arc`, which
//! loom reports.

use ctxpool::{AfterFunc, Context, Reason};
use ctxpool_loom_tests::*;

struct Probe {
    ran: Arc<AtomicUsize>,
    consumed: Arc<AtomicUsize>,
}

impl Probe {
    fn new() -> Self {
        Probe {
            ran: Arc::new(AtomicUsize::new(0)),
            consumed: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn register(&self, ctx: &Context) -> AfterFunc {
        let ran = self.ran.clone();
        let token = DropCounter(self.consumed.clone());
        ctx.after_func(move || {
            bump(&ran);
            drop(token);
        })
    }

    /// After everything is joined: ran at most once, consumed exactly once, and `stopped`
    /// (whether some `stop()` returned true) is the opposite of "ran".
    #[track_caller]
    fn check(&self, stopped: bool) {
        let ran = get(&self.ran);
        assert!(ran <= 1, "callback ran {ran} times");
        assert_eq!(get(&self.consumed), 1, "closure not consumed exactly once");
        assert_eq!(
            stopped,
            ran == 0,
            "stop() = {stopped} but the callback ran {ran} times"
        );
    }
}

/// (5) `stop()` on one thread races the context's cancel on another.
#[test]
fn after_func_stop_races_cancel() {
    model(|| {
        let pool = pool(2);
        let owner = Arc::new(pool.background().with_cancel());
        let probe = Probe::new();
        let af = probe.register(&owner);
        let o = owner.clone();
        let canceller = thread::spawn(move || assert!(o.cancel(Reason::Code(1))));
        let stopped = af.stop();
        canceller.join().unwrap();
        probe.check(stopped);
        assert!(!af.stop(), "a second stop() must return false");
        assert_eq!(pool.stats().in_use, 1, "the registration was not reclaimed");
        drop(owner);
        assert_all_released(&pool);
    });
}

/// (5) `stop()` races the owner dropping its guard (cancel with `OwnerDropped`, then release):
/// everything is reclaimed whichever wins.
///
/// BUG (crashes with SIGSEGV at d9455a6..1a17f8b): the after_func node is a leased child of
/// the owner's node, so dropping the owner makes it a zombie whose teardown is claimed twice
/// (see `release::parent_dropped_while_child_made_and_dropped_elsewhere`); the root's pool
/// reference is then released twice and `Pool::stats` reads a freed pool. Because loom runs
/// in-process, the crash takes the rest of this test binary with it.
#[test]
fn after_func_stop_races_owner_drop() {
    model(|| {
        let pool = pool(2);
        let owner = pool.background().with_cancel();
        let probe = Probe::new();
        let af = probe.register(&owner);
        let t = thread::spawn(move || drop(owner));
        let stopped = af.stop();
        t.join().unwrap();
        probe.check(stopped);
        drop(af);
        assert_all_released(&pool);
    });
}

/// (5, I8) Registering an `after_func` on a child races the parent's cancel: once both are
/// done the callback has run exactly once (by the canceller, or by the registering thread
/// when it found the parent cancelled), and `stop()` can no longer prevent it.
///
/// Regression model: failed at d9455a6 ("Leases"), where a node whose handles were all gone
/// while children it leased still lived had a count of zero (a zombie, I10) and
/// `tree::drain` skipped registered children it could not `try_upgrade`, so the cancel never
/// reached what was registered below the zombie (callback never run / waiter never woken: a
/// loom deadlock, a "lost wake-up" natively). Passes since 15d8466 (cancels handed over to
/// zombies, I11).
#[test]
fn after_func_registration_races_parent_cancel() {
    model(|| {
        let pool = pool(3);
        let root = pool.background().with_cancel();
        let child = root.child().build();
        let probe = Arc::new(Probe::new());
        let p = probe.clone();
        let t = thread::spawn(move || p.register(&child));
        assert!(root.cancel(Reason::Code(1)));
        let af = t.join().unwrap();
        assert_eq!(
            get(&probe.ran),
            1,
            "cancel returned and registration done, callback not run"
        );
        assert!(!af.stop());
        probe.check(false);
        assert_eq!(pool.stats().in_use, 1);
        drop(root);
        assert_all_released(&pool);
    });
}

/// Two `stop()`s race each other and a cancel: exactly one of the three wins.
///
/// BUG (crashes with SIGSEGV at d9455a6..1a17f8b): the after_func node is a leased child of
/// the owner's node, so dropping the owner makes it a zombie whose teardown is claimed twice
/// (see `release::parent_dropped_while_child_made_and_dropped_elsewhere`); the root's pool
/// reference is then released twice and `Pool::stats` reads a freed pool. Because loom runs
/// in-process, the crash takes the rest of this test binary with it.
#[test]
fn after_func_two_stops_race_cancel() {
    model(|| {
        let pool = pool(2);
        let owner = pool.background().with_cancel();
        let probe = Probe::new();
        let af = Arc::new(probe.register(&owner));
        let a = af.clone();
        let t = thread::spawn(move || a.stop());
        let canceller = thread::spawn(move || {
            owner.cancel(Reason::Code(1));
        });
        let mine = af.stop();
        let theirs = t.join().unwrap();
        canceller.join().unwrap();
        assert!(!(mine && theirs), "two stop() calls both returned true");
        probe.check(mine || theirs);
        drop(af);
        assert_all_released(&pool);
    });
}
