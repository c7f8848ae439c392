//! loom models of `after_func` registered without a slot (issue 13 item 6, `tree/fallback.rs`
//! F1..F3): when the pool is full the registration is a heap waiter on the context's own node.
//! Its callback runs at most once and never while the context is live, `stop()` returns
//! `true` exactly when it prevented the run, and the closure is consumed exactly once; under
//! loom a closure never consumed also leaks a loom `Arc`, which loom reports.

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

    /// Registers on `ctx`, whose pool must have no slot free (so the fallback is used).
    fn register(&self, ctx: &Context) -> AfterFunc {
        let ran = self.ran.clone();
        let token = DropCounter(self.consumed.clone());
        ctx.after_func(move || {
            bump(&ran);
            drop(token);
        })
    }

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

/// (F3) `stop()` races the context's cancel: exactly one takes the callback.
#[test]
fn fallback_after_func_stop_races_cancel() {
    model(|| {
        let pool = pool(1);
        let owner = Arc::new(pool.background().with_cancel());
        let probe = Probe::new();
        assert!(
            owner.try_after_func(|| {}).is_err(),
            "the pool must be full"
        );
        let af = probe.register(&owner);
        assert_eq!(get(&probe.ran), 0, "ran while the context is live");
        let o = owner.clone();
        let canceller = thread::spawn(move || assert!(o.cancel(Reason::Code(1))));
        let stopped = af.stop();
        canceller.join().unwrap();
        probe.check(stopped);
        assert!(!af.stop(), "a second stop() must return false");
        drop(af);
        drop(owner);
        assert_all_released(&pool);
    });
}

/// (F2, F3) `stop()` races the owner dropping its guard (cancel, then release of the node
/// the registration holds a reference on): everything is reclaimed whichever wins.
#[test]
fn fallback_after_func_stop_races_owner_drop() {
    model(|| {
        let pool = pool(1);
        let owner = pool.background().with_cancel();
        assert!(
            owner.try_after_func(|| {}).is_err(),
            "the pool must be full"
        );
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

/// (I8) Registering without a slot on a child races the parent's cancel: once both are done
/// the callback has run exactly once (by the canceller, which drains the child's waiters, or
/// by the registering thread, which finds the parent cancelled), and `stop()` is too late.
#[test]
fn fallback_after_func_registration_races_parent_cancel() {
    model(|| {
        let pool = pool(2);
        let root = pool.background().with_cancel();
        let child = root.child().build();
        assert!(
            child.try_after_func(|| {}).is_err(),
            "the pool must be full"
        );
        let probe = Arc::new(Probe::new());
        let p = probe.clone();
        let t = thread::spawn(move || {
            let af = p.register(&child);
            drop(child);
            af
        });
        assert!(root.cancel(Reason::Code(1)));
        let af = t.join().unwrap();
        assert_eq!(
            get(&probe.ran),
            1,
            "cancel returned and registration done, callback not run"
        );
        assert!(!af.stop());
        probe.check(false);
        drop(af);
        drop(root);
        assert_all_released(&pool);
    });
}
