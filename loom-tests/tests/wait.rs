//! loom models of waiting: the `cancelled()` future and the blocking `wait()` (tree I5, I8).
//! A lost wake-up shows up under loom as a deadlock (every thread blocked) and natively as a
//! hang.

use ctxpool::{Cause, Origin, Reason};
use ctxpool_loom_tests::*;

const CODE3: Cause = Cause::Parent(Origin::Cancelled(Reason::Code(3)));

/// (6) A task blocks on `cancelled()` of a child while the parent is cancelled on another
/// thread: the waker is registered before the cancel or the poll sees the cancel; never lost.
#[test]
fn cancelled_future_woken_by_parent_cancel() {
    model(|| {
        let pool = pool(2);
        let root = pool.background().with_cancel();
        let ctx = root.child().build();
        let t = thread::spawn(move || {
            block_on(ctx.cancelled());
            assert!(ctx.is_cancelled());
            ctx.cause()
        });
        assert!(root.cancel(Reason::Code(3)));
        assert_eq!(t.join().unwrap(), Some(CODE3));
        drop(root);
        assert_all_released(&pool);
    });
}

/// (6) Two-level chain: the waiter's registration climbs leaf → middle → root while the root
/// (the grandparent) is cancelled: either the cancel finds the registered chain, or the
/// registering thread finds the root cancelled under its lock and cancels the chain itself
/// (I8).
#[test]
fn cancelled_future_woken_by_grandparent_cancel() {
    model(|| {
        let pool = pool(3);
        let root = pool.background().with_cancel();
        let middle = root.with_cancel();
        let leaf = middle.child().build();
        let t = thread::spawn(move || {
            block_on(leaf.cancelled());
            leaf.cause()
        });
        assert!(root.cancel(Reason::Code(3)));
        assert_eq!(t.join().unwrap(), Some(CODE3));
        assert_eq!(middle.cause(), Some(CODE3));
        drop((middle, root));
        assert_all_released(&pool);
    });
}

/// (6) The blocking `wait()` (thread park / unpark) racing a cancel of the parent.
#[test]
fn blocking_wait_woken_by_parent_cancel() {
    model(|| {
        let pool = pool(2);
        let root = pool.background().with_cancel();
        let ctx = root.with_cancel();
        let handle = ctx.context();
        let t = thread::spawn(move || {
            wait(&handle);
            handle.cause()
        });
        assert!(root.cancel(Reason::Code(3)));
        assert_eq!(t.join().unwrap(), Some(CODE3));
        drop((ctx, root));
        assert_all_released(&pool);
    });
}

/// Registration up a three-level chain (leaf → c → b → a) races a cancel of the middle node b:
/// the leaf's waiter is woken with b's cause, the root a stays active, and all registrations
/// (c in b, b in a) are undone by the time every handle is dropped.
#[test]
fn registration_up_chain_races_middle_cancel() {
    model(|| {
        let pool = pool(4);
        let a = pool.background().with_cancel();
        let b = a.with_cancel();
        let c = b.with_cancel();
        let leaf = c.child().build();
        let t = thread::spawn(move || {
            block_on(leaf.cancelled());
            leaf.cause()
        });
        assert!(b.cancel(Reason::Code(3)));
        assert_eq!(t.join().unwrap(), Some(CODE3));
        assert!(!a.is_cancelled());
        assert_eq!(c.cause(), Some(CODE3));
        drop((c, b));
        assert_eq!(pool.stats().in_use, 1);
        drop(a);
        assert_all_released(&pool);
    });
}

/// A `cancelled()` future polled once (its waiter linked) and dropped (its waiter unlinked
/// unless already notified) while the parent's cancel takes the waiter list: the waiter is
/// touched by the canceller only while linked, never after its owner freed it (I5).
#[test]
fn dropped_future_unlinks_while_cancel_wakes() {
    model(|| {
        let pool = pool(2);
        let root = pool.background().with_cancel();
        let ctx = root.child().build();
        let t = thread::spawn(move || {
            let ready = poll_once(ctx.cancelled());
            (ready, ctx.cause())
        });
        assert!(root.cancel(Reason::Code(3)));
        let (ready, cause) = t.join().unwrap();
        if ready {
            assert_eq!(cause, Some(CODE3));
        }
        drop(root);
        assert_all_released(&pool);
    });
}

/// (6) `cancelled_owned()`: the future holds the only handle to the context (the one it was
/// made from is dropped first) and is woken by the parent's cancel on another thread; when
/// it completes and is dropped, its handle releases the node.
#[test]
fn owned_future_woken_by_parent_cancel() {
    model(|| {
        let pool = pool(2);
        let root = pool.background().with_cancel();
        let fut = root.child().build().cancelled_owned();
        let t = thread::spawn(move || {
            let mut fut = Box::pin(fut);
            block_on(fut.as_mut());
            fut.context().cause()
        });
        assert!(root.cancel(Reason::Code(3)));
        assert_eq!(t.join().unwrap(), Some(CODE3));
        drop(root);
        assert_all_released(&pool);
    });
}

/// `cancelled_owned()` polled once and dropped while the parent's cancel takes the waiter
/// list: its `Drop` unlinks the waiter (unless notified) before its handle, the context's
/// last, releases the node (struct fields drop after `Drop::drop`), so the canceller never
/// touches a waiter or a node that is gone (I5, tree I1).
#[test]
fn dropped_owned_future_holding_the_last_handle() {
    model(|| {
        let pool = pool(2);
        let root = pool.background().with_cancel();
        let fut = root.child().build().cancelled_owned();
        let t = thread::spawn(move || poll_once(fut));
        assert!(root.cancel(Reason::Code(3)));
        t.join().unwrap();
        drop(root);
        assert_all_released(&pool);
    });
}

/// Two waiters on one context (two `cancelled()` futures polled by one task, so both are on
/// the node's waiter list at once) while the context's owner cancels it: both are woken, and
/// the list is drained without touching a waiter after its owner dropped it.
///
/// (The two waiters are in one thread on purpose: with two threads spinning on the same node
/// LOCK bit while its holder is preempted, loom 0.7 explores an unbounded path in which the two
/// spinners yield to each other forever and reports "Model exceeded maximum number of
/// branches"; that is a limit of loom's scheduler with spin locks, not a bug in the library.)
#[test]
fn two_waiters_one_cancel() {
    model(|| {
        let pool = pool(1);
        let owner = pool.background().with_cancel();
        let h = owner.context();
        let t = thread::spawn(move || block_on(join2(h.cancelled(), h.cancelled())));
        assert!(owner.cancel(Reason::Code(3)));
        t.join().unwrap();
        drop(owner);
        assert_all_released(&pool);
    });
}
