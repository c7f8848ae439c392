//! The semantics contract, one test per rule (Go parity, then beyond).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use ctxpool::{
    Cause, Context, ContextError, Op, Origin, Pool, PoolExhausted, Reason, RequestId, UserId,
};

fn pool(capacity: u32) -> Pool {
    Pool::builder().capacity(capacity).build().unwrap()
}

#[test]
fn background_is_never_cancelled_and_takes_no_slot() {
    let p = pool(8);
    let bg = p.background();
    assert!(!bg.is_cancelled());
    assert_eq!(bg.err(), None);
    assert_eq!(bg.cause(), None);
    assert!(bg.is_never_cancelled());
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
    // after_func on a never-cancellable context takes no slot and never runs.
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let h = bg.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
    assert!(
        h.stop(),
        "Go: stop on a never-done context reports it stopped the call"
    );
    assert!(!h.stop());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert!(!bg.wait_timeout(Duration::from_millis(1)));
}

#[test]
fn dropping_the_owner_cancels() {
    let p = pool(8);
    let owner = p.background().with_cancel();
    let ctx = owner.context();
    assert!(!ctx.is_cancelled());
    drop(owner);
    assert!(ctx.is_cancelled());
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
    assert_eq!(ctx.err(), Some(ContextError::Canceled));
}

#[test]
fn cancel_is_idempotent_and_first_cause_wins() {
    let p = pool(8);
    let owner = p.background().with_cancel();
    let child = owner.with_cancel();
    assert!(owner.cancel(Reason::Message("first")));
    assert!(!owner.cancel(Reason::Code(2)));
    assert!(!owner.cancel_with(Origin::Shutdown));
    assert_eq!(
        owner.cause(),
        Some(Cause::Cancelled(Reason::Message("first")))
    );
    // The child observed the parent's cancellation first: its own later cancel loses.
    assert!(!child.cancel(Reason::Code(3)));
    assert_eq!(
        child.cause(),
        Some(Cause::Parent(Origin::Cancelled(Reason::Message("first"))))
    );
    drop(child);
    assert_eq!(
        owner.cause(),
        Some(Cause::Cancelled(Reason::Message("first")))
    );
}

#[test]
fn a_lazily_cancelled_parent_wins_over_a_later_child_cancel() {
    let p = pool(8);
    let root = p.background().with_cancel();
    let mid = root.with_cancel();
    let leaf = mid.with_cancel();
    root.cancel_with(Origin::Shutdown);
    // Nobody has read `leaf` yet; its explicit cancel must still see the ancestor first.
    assert!(!leaf.cancel(Reason::Code(9)));
    assert_eq!(leaf.cause(), Some(Cause::Parent(Origin::Shutdown)));
    assert_eq!(mid.cause(), Some(Cause::Parent(Origin::Shutdown)));
}

#[test]
fn inherited_deadline_origin_reads_as_deadline_exceeded() {
    let p = pool(8);
    let root = p.background().with_cancel();
    let child = root.with_cancel();
    let at = p.now() + std::time::Duration::from_millis(3);
    root.cancel_with(Origin::DeadlineExceeded(at));
    assert_eq!(child.err(), Some(ContextError::DeadlineExceeded));
    assert_eq!(
        child.cause(),
        Some(Cause::Parent(Origin::DeadlineExceeded(at))),
        "the deadline is recorded (exactly, as `at` is on the pool's millisecond grid)"
    );
}

#[test]
fn cancel_returns_after_every_descendant_observes_it() {
    let p = pool(4096);
    let root = p.background().with_cancel();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut guards = Vec::new();
    let mut leaves = Vec::new();
    for _ in 0..20 {
        let a = root.with_cancel();
        for _ in 0..5 {
            let b = a.with_cancel();
            let r = ran.clone();
            // Registered callbacks deep in the tree run before cancel returns.
            let _ = b.after_func(move || {
                r.fetch_add(1, Ordering::SeqCst);
            });
            for _ in 0..3 {
                let c = b.with_cancel();
                leaves.push(c.context());
                guards.push(c);
            }
            guards.push(b);
        }
        guards.push(a);
    }
    root.cancel(Reason::None);
    assert_eq!(ran.load(Ordering::SeqCst), 100);
    for leaf in &leaves {
        assert!(leaf.is_cancelled());
        assert_eq!(
            leaf.cause(),
            Some(Cause::Parent(Origin::Cancelled(Reason::None)))
        );
    }
    drop(guards);
    drop(leaves);
    drop(root);
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn blocked_waiters_on_descendants_are_woken() {
    let p = pool(64);
    let root = p.background().with_cancel();
    let mid = root.with_cancel();
    let start = Arc::new(Barrier::new(5));
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let leaf = mid.with_cancel();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                leaf.wait();
                leaf.cause()
            })
        })
        .collect();
    start.wait();
    root.cancel(Reason::Code(7));
    for w in waiters {
        assert_eq!(
            w.join().unwrap(),
            Some(Cause::Parent(Origin::Cancelled(Reason::Code(7))))
        );
    }
}

#[test]
fn wait_timeout_reports_whether_cancelled() {
    let p = pool(8);
    let owner = p.background().with_cancel();
    assert!(!owner.wait_timeout(Duration::from_millis(1)));
    let ctx = owner.context();
    let t = thread::spawn(move || ctx.wait_timeout(Duration::from_secs(60)));
    owner.cancel(Reason::None);
    assert!(t.join().unwrap());
}

#[test]
fn async_waiters_complete_on_cancel() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let p = pool(1024);
    let root = p.background().with_cancel();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let parent = root.context();
            rt.spawn(async move {
                let own = parent.with_cancel();
                let deep = own.with_cancel();
                if i % 2 == 0 {
                    deep.cancelled().await;
                } else {
                    tokio::select! {
                        _ = deep.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(60)) => panic!("not woken"),
                    }
                }
                deep.cause()
            })
        })
        .collect();
    rt.block_on(async {
        tokio::task::yield_now().await;
    });
    root.cancel_with(Origin::Shutdown);
    for t in tasks {
        assert_eq!(
            rt.block_on(t).unwrap(),
            Some(Cause::Parent(Origin::Shutdown))
        );
    }
    drop(root);
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn dropping_a_pending_future_unregisters_it() {
    use std::future::Future;
    use std::task::{Context as Cx, Waker};
    let p = pool(8);
    let root = p.background().with_cancel();
    let child = root.with_cancel();
    for _ in 0..1000 {
        let mut fut = Box::pin(child.cancelled());
        assert!(fut
            .as_mut()
            .poll(&mut Cx::from_waker(Waker::noop()))
            .is_pending());
    }
    root.cancel(Reason::None);
    let mut fut = Box::pin(child.cancelled());
    assert!(fut
        .as_mut()
        .poll(&mut Cx::from_waker(Waker::noop()))
        .is_ready());
}

#[test]
fn without_cancel_keeps_values_but_not_cancellation() {
    let p = pool(8);
    static OP: Op = Op::new("detached");
    let root = p
        .background()
        .child()
        .op(&OP)
        .request_id(RequestId(5))
        .with_cancel();
    let detached = root.without_cancel();
    let under = detached.with_cancel();
    root.cancel(Reason::None);
    assert!(!detached.is_cancelled());
    assert!(detached.is_never_cancelled());
    assert!(!under.is_cancelled());
    assert_eq!(detached.request_id(), Some(RequestId(5)));
    assert_eq!(under.op().map(Op::name), Some("detached"));
    under.cancel(Reason::None);
    assert!(under.is_cancelled());
    assert!(!detached.is_cancelled());
}

#[test]
fn after_func_runs_once_and_stop_tells_the_truth() {
    let p = pool(16);
    let ran = Arc::new(AtomicUsize::new(0));
    let owner = p.background().with_cancel();
    let r = ran.clone();
    let first = owner.after_func(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let r = ran.clone();
    let stopped = owner.after_func(move || {
        r.fetch_add(100, Ordering::SeqCst);
    });
    assert!(stopped.stop());
    owner.cancel(Reason::None);
    owner.cancel(Reason::None);
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert!(!first.stop(), "it already ran");
    // Registered on an already-cancelled context: runs at once.
    let r = ran.clone();
    let late = owner.after_func(move || {
        r.fetch_add(10, Ordering::SeqCst);
    });
    assert_eq!(ran.load(Ordering::SeqCst), 11);
    assert!(!late.stop());
    drop(owner);
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn large_closures_and_values_are_supported() {
    let p = pool(16);
    let owner = p.background().with_cancel();
    let big = [7u64; 32];
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let _h = owner.after_func(move || {
        s.store(big.iter().sum::<u64>() as usize, Ordering::SeqCst);
    });
    let v = owner.with_value(String::from("a boxed value"));
    assert_eq!(
        v.value::<String>().map(String::as_str),
        Some("a boxed value")
    );
    drop(v);
    drop(owner);
    assert_eq!(seen.load(Ordering::SeqCst), 7 * 32);
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn values_stay_readable_while_a_handle_exists() {
    let p = pool(8);
    let owner = p.background().child().user_id(UserId(3)).with_cancel();
    let v = owner.with_value(99u32);
    drop(owner);
    assert!(v.is_cancelled());
    assert_eq!(v.value::<u32>(), Some(&99));
    assert_eq!(v.user_id(), Some(UserId(3)));
}

#[test]
fn creation_site_is_recorded() {
    let p = pool(8);
    let line = line!() + 1;
    let ctx = p.background().with_cancel();
    let loc = ctx.location().unwrap();
    assert_eq!((loc.file(), loc.line()), (file!(), line));
    let line = line!() + 1;
    let v = ctx.child().request_id(RequestId(1)).build();
    assert_eq!(v.location().unwrap().line(), line);
}

#[test]
fn stale_weak_handles_never_reach_the_reused_slot() {
    let p = pool(1);
    let first = p.background().with_cancel();
    let weak = first.downgrade();
    let id = first.id();
    assert!(weak.upgrade().is_some());
    drop(first);
    let second = p.background().with_cancel();
    assert_eq!(second.id().slot, id.slot, "capacity 1 forces reuse");
    assert_ne!(second.id(), id);
    assert!(weak.upgrade().is_none());
    assert!(weak.is_cancelled());
    assert!(!second.is_cancelled());
}

#[test]
fn exhaustion_sheds_work_without_allocating_more() {
    let p = Pool::builder().capacity(2).build().unwrap();
    let a = p.background().with_cancel();
    let b = a.with_cancel();
    assert_eq!(
        p.background().try_with_cancel().err(),
        Some(PoolExhausted { capacity: 2 })
    );
    let born = a.with_cancel();
    assert!(born.is_cancelled());
    assert_eq!(born.cause(), Some(Cause::PoolExhausted));
    let under = born.with_cancel();
    assert_eq!(under.cause(), Some(Cause::Parent(Origin::PoolExhausted)));
    assert!(
        born.try_after_func(|| {}).is_ok(),
        "runs at once: born cancelled"
    );
    assert!(a.try_after_func(|| {}).is_err());
    p.testing_quiesce();
    let stats = p.stats();
    assert_eq!(stats.in_use, 2);
    assert!(stats.exhausted >= 3);
    drop((born, under, b));
    assert!(a.try_with_cancel().is_ok());
}

#[test]
fn contexts_can_be_dropped_on_other_threads() {
    let p = pool(256);
    let root = p.background().with_cancel();
    for _ in 0..20 {
        let batch: Vec<_> = (0..50).map(|_| root.with_cancel()).collect();
        thread::spawn(move || drop(batch)).join().unwrap();
    }
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 1);
    assert!(p.stats().high_water <= 256);
    drop(root);
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn memory_stays_proportional_to_live_children_under_a_long_lived_root() {
    use std::future::Future;
    use std::task::{Context as Cx, Waker};
    let p = pool(1 << 16);
    let root = p.background().with_cancel();
    let mut cx = Cx::from_waker(Waker::noop());
    for i in 0..1_000_000u32 {
        let child = root.with_cancel();
        if i % 4 == 0 {
            // Registers the child in the root; dropping it must reclaim the registration.
            let mut fut = std::pin::pin!(child.cancelled());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
    }
    p.testing_quiesce();
    let stats = p.stats();
    assert_eq!(stats.in_use, 1);
    assert!(stats.high_water <= 64, "high water {}", stats.high_water);
    root.cancel(Reason::None);
}

#[test]
fn every_drop_order_is_safe() {
    // Owner, handle, child owner, child handle, weak, after_func, value child: all 7! orders
    // would be 5040 runs; all orders of the first five with the rest interleaved is plenty.
    let p = pool(64);
    let items = 5usize;
    let mut perm: Vec<usize> = (0..items).collect();
    let mut count = 0;
    loop {
        {
            let owner = p.background().with_cancel();
            let handle = owner.context();
            let child = owner.with_cancel();
            let child_handle = child.context();
            let value = child_handle.with_value(1u8);
            let _weak = value.downgrade();
            let _af = child.after_func(|| {});
            let mut slots: Vec<Option<Box<dyn std::any::Any>>> = vec![
                Some(Box::new(owner)),
                Some(Box::new(handle)),
                Some(Box::new(child)),
                Some(Box::new(child_handle)),
                Some(Box::new(value)),
            ];
            for &i in &perm {
                slots[i] = None;
            }
        }
        p.testing_quiesce();
        assert_eq!(p.stats().in_use, 0, "order {perm:?} leaked");
        count += 1;
        // next permutation
        let Some(i) = (0..items - 1).rev().find(|&i| perm[i] < perm[i + 1]) else {
            break;
        };
        let j = (i + 1..items).rev().find(|&j| perm[j] > perm[i]).unwrap();
        perm.swap(i, j);
        perm[i + 1..].reverse();
    }
    assert_eq!(count, 120);
}

#[test]
fn debug_takes_no_lock_and_shows_the_state() {
    let p = pool(8);
    static OP: Op = Op::new("debugged");
    let owner = p.background().child().op(&OP).with_cancel();
    let s = format!("{:?}", *owner);
    assert!(s.contains("debugged") && s.contains("active"), "{s}");
    owner.cancel(Reason::Message("bye"));
    let s = format!("{owner:?}");
    assert!(s.contains("cancelled") && s.contains("bye"), "{s}");
    assert!(format!("{:?}", p.background()).contains("background"));
}

#[test]
fn concurrent_cancels_agree_on_one_cause() {
    for _ in 0..200 {
        let p = pool(8);
        let owner = Arc::new(p.background().with_cancel());
        let child = owner.with_cancel();
        let start = Arc::new(Barrier::new(2));
        let (o2, s2) = (owner.clone(), start.clone());
        let t = thread::spawn(move || {
            s2.wait();
            o2.cancel(Reason::Code(1))
        });
        start.wait();
        let mine = owner.cancel(Reason::Code(2));
        let theirs = t.join().unwrap();
        assert!(mine ^ theirs, "exactly one cancel records its cause");
        let winner = if mine { 2 } else { 1 };
        assert_eq!(owner.cause(), Some(Cause::Cancelled(Reason::Code(winner))));
        assert_eq!(
            child.cause(),
            Some(Cause::Parent(Origin::Cancelled(Reason::Code(winner))))
        );
    }
}

#[test]
fn invalid_pool_settings_list_every_problem() {
    let err = Pool::builder()
        .capacity(0)
        .thread_cache(0)
        .build()
        .unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.to_string().contains("capacity"));
    assert!(err.to_string().contains("thread_cache"));
}

#[test]
fn the_global_pool_serves_background() {
    let ctx = Context::background().with_cancel();
    assert!(Pool::global().stats().in_use >= 1);
    assert!(Pool::init_global(Pool::builder()).is_err());
    drop(ctx);
}

#[test]
fn parents_released_before_their_children_stay_readable_until_the_last_child_goes() {
    let p = pool(64);
    let owner = p.background().with_cancel();
    let valued = owner.with_value(5u64);
    let leaf = valued.with_cancel();
    drop(valued);
    drop(owner);
    // Both ancestors have no references left; the leaf still reads through them.
    assert!(leaf.is_cancelled());
    assert_eq!(leaf.cause(), Some(Cause::Parent(Origin::OwnerDropped)));
    assert_eq!(leaf.value::<u64>(), Some(&5));
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 3);
    // The last child tears the chain down, here from another thread.
    thread::spawn(move || drop(leaf)).join().unwrap();
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn lease_collisions_fall_back_to_references() {
    // Many live parents at once on one thread: lease entries collide and children fall back
    // to counting on the parent; every path must reclaim everything, in any release order.
    let p = pool(4096);
    let bg = p.background();
    for round in 0..4 {
        let parents: Vec<_> = (0..40).map(|_| bg.with_cancel()).collect();
        let mut children = Vec::new();
        for parent in &parents {
            for _ in 0..3 {
                children.push(parent.with_cancel());
            }
        }
        if round % 2 == 0 {
            drop(parents);
            assert!(children.iter().all(|c| c.is_cancelled()));
            drop(children);
        } else {
            let handles: Vec<_> = children.iter().map(|c| c.context()).collect();
            drop(children);
            thread::spawn(move || drop(handles)).join().unwrap();
            assert!(parents.iter().all(|c| !c.is_cancelled()));
            drop(parents);
        }
        p.testing_quiesce();
        assert_eq!(p.stats().in_use, 0, "round {round}");
    }
}

#[test]
fn children_made_on_many_threads_of_one_parent_are_counted() {
    let p = pool(1 << 14);
    let root = p.background().with_cancel();
    let start = Arc::new(Barrier::new(4));
    let kept: Vec<_> = (0..4)
        .map(|_| {
            let root = root.context();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                for _ in 0..10_000 {
                    drop(root.with_cancel());
                }
                (0..10).map(|_| root.with_cancel()).collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let handle = root.context();
    drop(root);
    drop(handle);
    // The root is now a zombie kept by 40 children made (and counted) on four threads.
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 41);
    assert!(kept
        .iter()
        .all(|c| c.cause() == Some(Cause::Parent(Origin::OwnerDropped))));
    drop(kept);
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn a_waiter_below_a_released_parent_is_woken_by_the_grandparent() {
    use std::future::Future;
    use std::task::{Context as Cx, Waker};
    let p = pool(64);
    let grand = p.background().with_cancel();
    let parent = grand.child().build(); // plain child: cancelled only through `grand`
    let leaf = parent.with_cancel();
    let mut cx = Cx::from_waker(Waker::noop());
    let mut fut = Box::pin(leaf.cancelled());
    assert!(fut.as_mut().poll(&mut cx).is_pending()); // registers leaf → parent → grand
    drop(parent); // the parent has no references left: a zombie kept by `leaf`
    grand.cancel_with(Origin::Shutdown);
    assert!(fut.as_mut().poll(&mut cx).is_ready());
    drop(fut);
    assert_eq!(leaf.cause(), Some(Cause::Parent(Origin::Shutdown)));
    drop(leaf);
    drop(grand);
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn the_last_page_is_cut_to_the_capacity() {
    // Page 0 holds 1,024 nodes and page 1 would hold 2,048: the capacity ends 65 into page 1.
    const CAPACITY: usize = 1024 + 65;
    let p = Pool::builder().capacity(CAPACITY as u32).build().unwrap();
    let bg = p.background();
    let all: Vec<_> = (0..CAPACITY)
        .map(|_| bg.try_with_cancel().unwrap())
        .collect();
    assert!(bg.try_with_cancel().is_err());
    assert_eq!(p.stats().reserved_bytes, CAPACITY * ctxpool::NODE_SIZE);
    drop(all);
}

/// (tree I10, time D7) Parents released while their children live are zombies whose checks
/// are left to the next turn, which pays one heavy fence for all of them, not one each. Counted,
/// not timed: the pool has no driver, so only this thread turns it.
#[test]
fn deferred_zombie_checks_share_one_heavy_fence_per_turn() {
    let p = Pool::builder()
        .capacity(256)
        .driver(ctxpool::DriverMode::Manual)
        .testing_defer_zombies()
        .testing_lease_own_children()
        .build()
        .unwrap();
    let root = p.background().with_cancel();
    p.testing_quiesce();
    let base = p.stats().in_use;
    let children: Vec<Context> = (0..16)
        .map(|_| {
            let parent = root.with_cancel();
            let child = parent.child().build();
            drop(parent); // a zombie: its check waits for the turn
            child
        })
        .collect();
    assert_eq!(
        p.stats().in_use,
        base + 32,
        "zombies are kept for their children"
    );
    let fences = p.stats().heavy_fences;
    p.turn();
    assert_eq!(
        p.stats().heavy_fences - fences,
        1,
        "one fence for 16 zombies"
    );
    assert_eq!(
        p.stats().in_use,
        base + 32,
        "children still hold their parents"
    );
    drop(children); // each last child tears its parent down
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, base);
    let fences = p.stats().heavy_fences;
    p.turn();
    assert_eq!(
        p.stats().heavy_fences,
        fences,
        "a turn with no zombie pays no fence"
    );
    drop(root);
}

/// `WeakContext`: a context with an owner reads as cancelled once the owner is gone, even while
/// a child made from it on its own thread (which holds it) still runs; a context without an
/// owner is released, and its weak id reads as cancelled, only when that child is gone too.
#[test]
fn weak_ids_of_parents_whose_children_still_run() {
    let p = pool(16);
    let root = p.background().with_cancel();

    let owned = root.with_cancel();
    let child = owned.with_cancel();
    let weak = owned.downgrade();
    drop(owned);
    assert!(
        weak.is_cancelled(),
        "the owner's drop cancels a parent of live children"
    );
    assert_eq!(
        child.cause(),
        Some(Cause::Parent(Origin::OwnerDropped)),
        "and the child reads it"
    );
    drop(child);
    assert!(weak.upgrade().is_none());
    assert!(weak.is_cancelled());

    let plain = root.child().build();
    let child = plain.with_cancel();
    let weak = plain.downgrade();
    drop(plain);
    let held = weak.upgrade().expect("held by its child");
    assert!(!held.is_cancelled() && !child.is_cancelled());
    drop(held);
    drop(child);
    assert!(weak.upgrade().is_none());
    assert!(weak.is_cancelled());
    drop(root);
    p.testing_quiesce();
    assert_eq!(p.stats().in_use, 0);
}
