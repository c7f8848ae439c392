//! Rule 4: no false exhaustion. A `try_*` constructor succeeds whenever fewer than `capacity`
//! contexts are in use, on any thread, however many threads keep freed slots in their caches
//! (pool P6, shard S9..S11). The other threads here are alive and idle (parked on a channel or
//! a barrier) while the pool is drained: their caches can only be reached by reclaiming them.

use std::sync::{mpsc, Arc, Barrier};
use std::thread;

use ctxpool::{CancelGuard, DriverMode, Pool, RequestId};

fn pool(capacity: u32) -> Pool {
    Pool::builder()
        .capacity(capacity)
        .driver(DriverMode::Manual)
        .build()
        .unwrap()
}

/// Takes every slot with `try_with_cancel`, checks the count and that the next one is refused,
/// and checks every context reads back its own request id (no slot handed out twice).
fn drain(pool: &Pool, expect: u32) -> Vec<CancelGuard> {
    let bg = pool.background();
    let mut held = Vec::new();
    for i in 0..expect {
        let c = bg
            .child()
            .request_id(RequestId(u64::from(i) + 1))
            .try_with_cancel()
            .unwrap_or_else(|_| {
                panic!(
                    "refused with {i} of {} in use: {:?}",
                    pool.capacity(),
                    pool.stats()
                )
            });
        held.push(c);
    }
    assert!(
        bg.try_with_cancel().is_err(),
        "more than capacity: {:?}",
        pool.stats()
    );
    for (i, c) in held.iter().enumerate() {
        assert_eq!(c.request_id(), Some(RequestId(i as u64 + 1)));
        assert!(!c.is_cancelled());
    }
    held
}

#[test]
fn live_worker_cache_is_reclaimed() {
    let pool = pool(4);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let worker = thread::spawn(move || {
        drop(p.background().with_cancel()); // one slot now cached on this thread
        ready_tx.send(()).unwrap();
        done_rx.recv().unwrap(); // alive and idle while the main thread drains the pool
    });
    ready_rx.recv().unwrap();
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 0);
    let held = drain(&pool, 4);
    drop(held);
    done_tx.send(()).unwrap();
    worker.join().unwrap();
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 0);
}

/// Pools of 1,024 with 1, 4, 16 and 64 idle threads that each made and dropped contexts.
#[test]
fn idle_threads_never_hide_free_slots() {
    for threads in [1usize, 4, 16, 64] {
        let pool = pool(1024);
        let per_thread = (1024 / threads).min(64);
        let made = Arc::new(Barrier::new(threads + 1));
        let done = Arc::new(Barrier::new(threads + 1));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (p, made, done) = (pool.clone(), made.clone(), done.clone());
                thread::spawn(move || {
                    let bg = p.background();
                    let mine: Vec<_> = (0..per_thread).map(|_| bg.with_cancel()).collect();
                    assert!(mine.iter().all(|c| !c.is_cancelled()));
                    drop(mine); // cached here, up to the thread cache
                    made.wait();
                    done.wait();
                })
            })
            .collect();
        made.wait();
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 0, "{threads} threads");
        let held = drain(&pool, 1024);
        drop(held);
        done.wait();
        for w in workers {
            w.join().unwrap();
        }
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 0);
    }
}

/// The second way in: a thread that takes over a long chain of freed slots keeps at most its
/// thread cache of them. An acceptor whose request roots are dropped by workers does this.
#[test]
fn adopted_chain_is_cut_to_the_thread_cache() {
    let pool = Pool::builder()
        .capacity(1024)
        .thread_cache(4)
        .driver(DriverMode::Manual)
        .build()
        .unwrap();
    let (to_dropper, dropper_rx) = mpsc::channel::<Vec<CancelGuard>>();
    let dropper = thread::spawn(move || {
        for batch in dropper_rx {
            drop(batch);
        }
    });
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let acceptor = thread::spawn(move || {
        let bg = p.background();
        let roots: Vec<_> = (0..1000).map(|_| bg.with_cancel()).collect();
        to_dropper.send(roots).unwrap();
        drop(to_dropper); // the dropper ends once it has dropped them
        while p.stats().in_use != 0 {
            thread::yield_now();
        }
        let one = bg.with_cancel(); // takes over the 1,000 freed slots
        assert!(!one.is_cancelled());
        ready_tx.send(()).unwrap();
        hold_rx.recv().unwrap(); // idle, holding one
        drop(one);
    });
    ready_rx.recv().unwrap();
    dropper.join().unwrap();
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 1);
    let held = drain(&pool, 1023);
    drop(held);
    hold_tx.send(()).unwrap();
    acceptor.join().unwrap();
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 0);
}

/// Threads making and dropping contexts while another keeps draining the pool: every context
/// reads back its own value (no slot is ever owned twice) and the counts balance.
#[test]
fn reclaim_races_owners_without_losing_or_sharing_slots() {
    let pool = pool(64);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3u64)
        .map(|w| {
            let (p, stop) = (pool.clone(), stop.clone());
            thread::spawn(move || {
                let bg = p.background();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = RequestId(w << 32 | i);
                    let batch: Vec<_> = (0..8)
                        .filter_map(|_| bg.child().request_id(id).try_with_cancel().ok())
                        .collect();
                    for c in &batch {
                        assert_eq!(c.request_id(), Some(id), "a slot owned twice");
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let bg = pool.background();
    for round in 0..200u64 {
        let id = RequestId(u64::MAX - round);
        let held: Vec<_> = (0..64)
            .map_while(|_| bg.child().request_id(id).try_with_cancel().ok())
            .collect();
        for c in &held {
            assert_eq!(c.request_id(), Some(id), "a slot owned twice");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let s = pool.stats();
    assert_eq!((s.in_use, s.created - s.released), (0, 0), "{s:?}");
    assert!(s.high_water <= 64);
    drop(drain(&pool, 64));
}

// ---- 6: a full pool keeps the parent's view (issue 13 item 6) ------------------------------

mod parent_view {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use ctxpool::{
        Cause, ContextError, DriverMode, ManualClock, Op, Origin, Pool, Reason, RequestId,
        TraceContext, UserId,
    };

    static CHECKOUT: Op = Op::new("checkout");
    static OTHER: Op = Op::new("other");

    #[derive(Debug, PartialEq)]
    struct Tenant(u32);

    const TRACE: TraceContext = TraceContext {
        trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        span_id: 0x00f0_67aa_0ba9_02b7,
        flags: 1,
    };

    fn pool(capacity: u32) -> (ManualClock, Pool) {
        let clock = ManualClock::new();
        let pool = Pool::builder()
            .capacity(capacity)
            .manual_clock(&clock)
            .driver(DriverMode::Manual)
            .build()
            .unwrap();
        (clock, pool)
    }

    /// A full pool of capacity 2: a value node and, below it, a request context with every
    /// well-known value and a deadline.
    fn full() -> (ManualClock, Pool, ctxpool::Context, ctxpool::CancelGuard) {
        let (clock, pool) = pool(2);
        let tenant = pool.background().with_value(Tenant(7));
        let req = tenant
            .child()
            .op(&CHECKOUT)
            .trace(TRACE)
            .request_id(RequestId(42))
            .user_id(UserId(1001))
            .with_timeout(Duration::from_secs(30));
        assert!(req.try_with_cancel().is_err(), "the pool is full");
        (clock, pool, tenant, req)
    }

    fn counter() -> (Arc<AtomicUsize>, impl FnOnce() + Send + 'static) {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        (runs, move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
    }

    /// Every way of making a child at exhaustion gives a context born cancelled with
    /// `PoolExhausted` that reads its parent's values, operation, trace, ids and deadline.
    #[test]
    fn exhausted_child_reads_the_parent_view() {
        let (_clock, pool, _tenant, req) = full();
        let made = [
            req.with_cancel().context(),
            req.with_timeout(Duration::from_millis(5)).context(),
            req.with_deadline(pool.now() + Duration::from_secs(60))
                .context(),
            req.child().build(),
            req.with_value(3u64),
            // What the builder sets has no slot to live in: the parent's values show.
            req.child()
                .op(&OTHER)
                .request_id(RequestId(9))
                .user_id(UserId(9))
                .with_cancel()
                .context(),
        ];
        for c in &made {
            assert!(c.is_cancelled());
            assert_eq!(c.cause(), Some(Cause::PoolExhausted));
            assert_eq!(c.err(), Some(ContextError::Canceled));
            assert!(!c.is_never_cancelled());
            assert_eq!(c.op().map(Op::name), Some("checkout"));
            assert_eq!(c.trace(), Some(TRACE));
            assert_eq!(c.request_id(), Some(RequestId(42)));
            assert_eq!(c.user_id(), Some(UserId(1001)));
            assert_eq!(c.deadline(), req.deadline());
            assert_eq!(c.value::<Tenant>(), Some(&Tenant(7)));
            assert_eq!(c.value::<u64>(), None, "the value had no slot");
            assert_eq!(c.id().to_string(), "exhausted");
            c.wait(); // done: returns at once
        }
        assert_eq!(pool.stats().in_use, 2, "views take no slot");
        drop(made);
        drop(req);
        pool.testing_quiesce();
    }

    /// Born cancelled with `PoolExhausted`, for good: a later cancel of the parent (or its
    /// deadline passing) does not change the cause; `cancelled()` is ready at once.
    #[test]
    fn exhaustion_cause_is_fixed_at_birth() {
        let (clock, pool, _tenant, req) = full();
        let c = req.with_cancel();
        assert!(
            !c.cancel(Reason::Code(1)),
            "born cancelled: nothing to record"
        );
        let mut fut = std::pin::pin!(c.cancelled());
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        req.cancel(Reason::Code(2));
        assert_eq!(c.cause(), Some(Cause::PoolExhausted));
        clock.advance(Duration::from_secs(31));
        pool.turn();
        assert_eq!(c.cause(), Some(Cause::PoolExhausted));
        assert_eq!(
            c.request_id(),
            Some(RequestId(42)),
            "still reads the values"
        );
    }

    /// Under a parent already cancelled, a child made at exhaustion reads the parent's cause
    /// (`Parent(..)`), as one made with a slot does (rule 1: a child born under a cancelled
    /// parent), and so do its children; it still reads the values.
    #[test]
    fn exhausted_child_of_a_cancelled_parent_reads_its_cause() {
        let (_clock, _pool, _tenant, req) = full();
        req.cancel(Reason::Code(3));
        let parent_cause = Some(Cause::Parent(Origin::Cancelled(Reason::Code(3))));
        let c = req.with_cancel();
        assert_eq!(c.cause(), parent_cause);
        assert_eq!(c.err(), Some(ContextError::Canceled));
        assert_eq!(c.request_id(), Some(RequestId(42)));
        let under = c.with_cancel();
        assert_eq!(under.cause(), parent_cause);
        assert_eq!(under.value::<Tenant>(), Some(&Tenant(7)));
    }

    /// The parent's node lives as long as an exhausted child does (the view holds a counted
    /// reference on it), and not longer.
    #[test]
    fn the_view_keeps_the_parent_node_alive() {
        let (_clock, pool, tenant, req) = full();
        let c = req.with_cancel().context();
        let c2 = c.clone();
        drop(req); // cancels it; the node stays for the views
        drop(tenant);
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 2);
        assert_eq!(c2.request_id(), Some(RequestId(42)));
        assert_eq!(c2.value::<Tenant>(), Some(&Tenant(7)));
        drop(c);
        assert_eq!(c2.user_id(), Some(UserId(1001)));
        drop(c2);
        pool.testing_quiesce();
        let s = pool.stats();
        assert_eq!((s.in_use, s.created - s.released), (0, 0), "{s:?}");
    }

    /// `without_cancel()` at exhaustion is never cancelled, reads the parent's values, and has
    /// no deadline (Go's `WithoutCancel`), whatever happens to the parent.
    #[test]
    fn without_cancel_at_exhaustion_keeps_the_values() {
        let (clock, pool, _tenant, req) = full();
        let d = req.without_cancel();
        let via_builder = req.child().without_cancel();
        for d in [&d, &via_builder] {
            assert!(!d.is_cancelled());
            assert!(d.is_never_cancelled());
            assert_eq!(d.cause(), None);
            assert_eq!(d.deadline(), None);
            assert_eq!(d.request_id(), Some(RequestId(42)));
            assert_eq!(d.trace(), Some(TRACE));
            assert_eq!(d.op().map(Op::name), Some("checkout"));
            assert_eq!(d.value::<Tenant>(), Some(&Tenant(7)));
        }
        req.cancel(Reason::Code(7));
        clock.advance(Duration::from_secs(60));
        pool.turn();
        assert!(!d.is_cancelled());
        assert!(!d.downgrade().is_cancelled());
        assert_eq!(d.user_id(), Some(UserId(1001)));
        assert_eq!(pool.stats().in_use, 2);
    }

    /// Children of exhausted contexts, once slots are free again: a child of a context born
    /// cancelled is born cancelled too (Go: a child of a done context is done), with
    /// `Parent(PoolExhausted)`, reads the same values and takes no slot, even from `try_*`;
    /// a `without_cancel()` of it is live and takes a slot of its own.
    #[test]
    fn children_of_an_exhausted_context() {
        let (_clock, pool) = pool(3);
        let filler = pool.background().with_cancel();
        let tenant = pool.background().with_value(Tenant(7));
        let req = tenant
            .child()
            .request_id(RequestId(42))
            .with_timeout(Duration::from_secs(30));
        let born = req.with_cancel();
        assert_eq!(born.cause(), Some(Cause::PoolExhausted));
        drop(filler); // one slot free
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 2);
        let under = born.with_cancel();
        assert_eq!(under.cause(), Some(Cause::Parent(Origin::PoolExhausted)));
        assert_eq!(under.request_id(), Some(RequestId(42)));
        assert_eq!(under.deadline(), req.deadline());
        assert_eq!(under.value::<Tenant>(), Some(&Tenant(7)));
        let tried = born
            .try_with_cancel()
            .expect("a child of a done context is made");
        assert_eq!(tried.cause(), Some(Cause::Parent(Origin::PoolExhausted)));
        assert_eq!(tried.value::<Tenant>(), Some(&Tenant(7)));
        let value = born.with_value(1u64);
        assert!(value.is_cancelled());
        assert_eq!(
            value.value::<u64>(),
            None,
            "born cancelled: no slot for the value"
        );
        assert_eq!(
            pool.stats().in_use,
            2,
            "children of a done context take no slot"
        );
        let detached = born.without_cancel();
        assert!(!detached.is_cancelled());
        assert!(detached.is_never_cancelled());
        assert_eq!(detached.request_id(), Some(RequestId(42)));
        assert_eq!(detached.value::<Tenant>(), Some(&Tenant(7)));
        assert_eq!(detached.deadline(), None);
        assert_eq!(
            pool.stats().in_use,
            3,
            "a live without_cancel takes the free slot"
        );
        drop((under, tried, value, detached, born, req, tenant));
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 0);
    }

    /// A `without_cancel()` made at exhaustion, and children of it once slots are free: they
    /// are live, cancellable by their own guards only, read the values and have no inherited
    /// deadline; at exhaustion again they are born cancelled and read the same values.
    #[test]
    fn children_of_a_without_cancel_made_at_exhaustion() {
        let (_clock, pool) = pool(3);
        let filler = pool.background().with_cancel();
        let req = pool
            .background()
            .child()
            .request_id(RequestId(5))
            .with_timeout(Duration::from_secs(30));
        let spare = pool.background().with_cancel();
        let d = req.without_cancel(); // the pool is full: a view
        assert!(d.is_never_cancelled());
        // Full: a child of `d` is born cancelled, keeps the values, has no deadline.
        let born = d.with_cancel();
        assert_eq!(born.cause(), Some(Cause::PoolExhausted));
        assert_eq!(born.request_id(), Some(RequestId(5)));
        assert_eq!(born.deadline(), None);
        drop(born);
        drop((filler, spare)); // two slots free
        let child = d.child().user_id(UserId(3)).with_cancel();
        assert!(!child.is_cancelled());
        assert_eq!(child.request_id(), Some(RequestId(5)));
        assert_eq!(child.user_id(), Some(UserId(3)));
        assert_eq!(child.deadline(), None);
        req.cancel(Reason::Code(1));
        assert!(
            !child.is_cancelled(),
            "cut off from the request's cancellation"
        );
        assert!(!d.is_cancelled());
        child.cancel(Reason::Code(2));
        assert_eq!(child.cause(), Some(Cause::Cancelled(Reason::Code(2))));
        drop((child, d, req));
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 0);
    }

    /// `after_func` with no slot free for the registration, on a live context: the callback
    /// does not run while the context is live, and runs once when it is cancelled.
    #[test]
    fn after_func_at_exhaustion_waits_for_the_cancel() {
        let (_clock, pool) = pool(1);
        let owner = pool.background().with_cancel();
        let (runs, f) = counter();
        let af = owner.after_func(f);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "ran while the context is live"
        );
        assert!(!owner.is_cancelled());
        assert!(
            owner.try_after_func(|| {}).is_err(),
            "try_ still hands it back"
        );
        owner.cancel(Reason::Code(1));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!af.stop(), "it ran");
        drop(owner);
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 0);
    }

    /// `stop()` on such a registration keeps Go's contract: `true` iff it stopped the call;
    /// the closure is dropped unrun, and a later cancel runs nothing.
    #[test]
    fn after_func_at_exhaustion_can_be_stopped() {
        let (_clock, pool) = pool(1);
        let owner = pool.background().with_cancel();
        let dropped = Arc::new(AtomicUsize::new(0));
        struct OnDrop(Arc<AtomicUsize>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let token = OnDrop(dropped.clone());
        let (runs, f) = counter();
        let af = owner.after_func(move || {
            let _t = &token;
            f();
        });
        assert!(af.stop());
        assert!(!af.stop());
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "dropped once, unrun");
        drop(owner);
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 0);
    }

    /// Dropping the registration handle does not stop the callback (as in Go); a cancel of an
    /// ancestor reaches it (the context is registered up the tree), and so does a deadline
    /// fired by a turn of the pool's clock.
    #[test]
    fn after_func_at_exhaustion_is_reached_by_ancestors_and_deadlines() {
        let (clock, pool) = pool(2);
        let root = pool.background().with_cancel();
        let leaf = root.child().build();
        let (runs, f) = counter();
        drop(leaf.after_func(f));
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        root.cancel(Reason::Code(1));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        drop((leaf, root));

        let timed = pool.background().with_timeout(Duration::from_millis(5));
        let filler = pool.background().with_cancel();
        let (tx, rx) = mpsc::channel();
        let af = timed.after_func(move || tx.send(()).unwrap());
        assert!(rx.try_recv().is_err(), "ran while the context is live");
        clock.advance(Duration::from_millis(5));
        pool.turn();
        rx.recv().unwrap();
        assert!(!af.stop());
        drop((timed, filler));
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 0);
    }

    /// `after_func` on a context that was itself born cancelled by exhaustion runs at once
    /// (Go: it is done), and on a `without_cancel()` view never runs.
    #[test]
    fn after_func_on_exhausted_contexts() {
        let (_clock, _pool, _tenant, req) = full();
        let born = req.with_cancel();
        let (runs, f) = counter();
        let af = born.after_func(f);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!af.stop());
        let d = req.without_cancel();
        let (runs, f) = counter();
        let af = d.after_func(f);
        req.cancel(Reason::Code(1));
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        assert!(af.stop(), "never cancelled: stop() is true the first time");
    }
}

/// With a driver thread: a deadline fired by the driver runs an `after_func` registered
/// without a slot off the driver (time D6), on a callback runner thread, not on the caller's.
#[test]
fn fallback_after_func_fired_by_the_driver_runs_off_the_driver() {
    let pool = Pool::builder().capacity(1).build().unwrap();
    let timed = pool
        .background()
        .with_timeout(std::time::Duration::from_millis(2));
    let (tx, rx) = mpsc::channel();
    let _af = timed.after_func(move || {
        tx.send(thread::current().name().map(str::to_owned))
            .unwrap()
    });
    let name = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the callback never ran");
    assert_eq!(name.as_deref(), Some("ctxpool-callback"));
    assert!(timed.is_cancelled());
}
