//! loom models of the quiet teardown (tree I15): the owner's drop that finds the state word
//! at 0 right after its dropping CAS releases the slot without the general teardown's checks
//! (no unregister, no message, no reset of the word). I15 says that this is sound because
//! every writer of the word either holds a reference (its last write happens before the
//! owner's CAS, through the reference chain) or reaches the node through its registration
//! (which leaves the word non-zero). These models race the owner's drop against each kind of
//! writer that can leave the word at 0 again, and against a root's pool reference (P4).
//!
//! The default lease rule is used (`pool_own_refs`): a request's sub-operations take
//! references on their parents, which is the path the quiet teardown serves.

use ctxpool::{Cause, Origin, Pool, Reason};
use ctxpool_loom_tests::*;

const CODE7: Cause = Cause::Parent(Origin::Cancelled(Reason::Code(7)));

/// Once the model's threads are joined: waits for deferred checks (natively), asserts the
/// pool's `(created, released, in_use)`, then takes every one of the slots the releases gave
/// back (from this thread's cache, or reclaimed from an exited thread's) as a chain of
/// contexts, each a child of the one before, checks that each is a fresh, live context (a slot
/// torn down the quiet way must come back as clean as one torn down the general way: no
/// leftover cancel, lessee mark or registration), and drops them; their releases are counted
/// by the caller's `assert_all_released`.
#[track_caller]
fn check_counts_and_reuse(pool: &Pool, counts: (u64, u64, u64), capacity: u64) {
    settle(pool, counts.2);
    let s = pool.stats();
    assert_eq!((s.created, s.released, s.in_use), counts, "{s:?}");
    reuse_free_slots(pool, (capacity - counts.2) as usize);
}

/// Takes `n` free slots as a chain of contexts and checks that each is fresh (see
/// [`check_counts_and_reuse`]), then drops them.
fn reuse_free_slots(pool: &Pool, n: usize) {
    let mut chain: Vec<ctxpool::CancelGuard> = Vec::with_capacity(n);
    for i in 0..n {
        let next = match chain.last() {
            Some(parent) => parent.try_with_cancel(),
            None => pool.background().try_with_cancel(),
        };
        let next = next.unwrap_or_else(|_| panic!("free slot {i} of {n}"));
        assert_eq!(next.cause(), None);
        chain.push(next);
    }
    while let Some(last) = chain.pop() {
        drop(last);
    }
}

/// A clone of a child is read on another thread (`cause`: the ancestor walk, no write) and
/// waited on once (`cancelled()` polled and dropped: a waiter linked and unlinked under the
/// node's lock, and a registration in the parent), then dropped, while the owner drops its
/// guard here. Whichever drop is last tears the child down exactly once, and out of its
/// parent's registered list (I6: a registered node is never retired; the registration leaves
/// the child's word non-zero, so this is the general teardown's race, which the quiet one
/// must not take). Capacity 3 makes the next context, made outside the parent, reuse the
/// slot: the parent's cancel must not reach it.
#[test]
fn owner_drop_races_clone_registered_elsewhere() {
    model(|| {
        let pool = pool_own_refs(3);
        let root = pool.background().with_cancel();
        // Below a root and made on its parent's thread: the child holds a reference on `mid`.
        let mid = root.with_cancel();
        let child = mid.with_cancel();
        let handle = child.context();
        let t = thread::spawn(move || {
            // Cancelled here only by the owner's drop (a guard dropped while a clone lives
            // cancels the child, as Go's `defer cancel()` does).
            let c = handle.cause();
            assert!(c.is_none() || c == Some(Cause::OwnerDropped), "{c:?}");
            let ready = poll_once(handle.cancelled());
            assert!(!ready || handle.cause() == Some(Cause::OwnerDropped));
            drop(handle);
        });
        drop(child);
        t.join().unwrap();
        settle(&pool, 2);
        let s = pool.stats();
        assert_eq!(
            s.in_use, 2,
            "the child's slot was not reclaimed, or twice: {s:?}"
        );
        // The child's slot, reused outside `mid`: a stale registration would make `mid`'s
        // cancel reach it.
        let other = root
            .try_with_cancel()
            .expect("the child's slot is free again");
        assert!(!poll_once(other.cancelled()));
        assert!(mid.cancel(Reason::Code(7)));
        assert_eq!(mid.with_cancel().cause(), Some(CODE7));
        assert_eq!(
            other.cause(),
            None,
            "the parent's cancel reached a reused slot"
        );
        drop((other, mid, root));
        assert_all_released(&pool);
    });
}

/// The quiet race of a lock/unlock pair (I15): a clone of a child is waited on on another
/// thread (`cancelled()` polled once: the child's registration in its parent takes the
/// parent's lock, and bails out if the child was cancelled meanwhile, leaving the parent's
/// word at 0 again), then dropped, while the child is cancelled and dropped here and then its
/// parent's owner drops it. When the parent's word reads 0 at that drop, the quiet teardown
/// runs, with the other thread's lock/unlock ordered before it through the child's reference
/// on the parent; everything is released once, and a waiter that saw the child cancelled saw
/// this thread's cause. The order that reaches both the bail-out and then the quiet teardown
/// is among the executions at `LOOM_MAX_PREEMPTIONS=2` (60 of about 471,000, counted with a
/// probe in each path; it took three preemptions before the harness's spawn handshake).
#[test]
fn quiet_parent_drop_after_registration_bail_out() {
    model(|| {
        let pool = pool_own_refs(4);
        let root = pool.background().with_cancel();
        let mid = root.with_cancel();
        let child = mid.with_cancel();
        let handle = child.context();
        let t = thread::spawn(move || {
            let ready = poll_once(handle.cancelled());
            assert!(!ready || handle.cause() == Some(Cause::Cancelled(Reason::Code(7))));
            drop(handle);
        });
        assert!(child.cancel(Reason::Code(7)));
        drop(child);
        drop(mid);
        t.join().unwrap();
        check_counts_and_reuse(&pool, (3, 2, 1), 4);
        drop(root);
        assert_all_released(&pool);
    });
}

/// A grandchild made through a clone on another thread (its lease on the child and the lessee
/// mark in the child's word) and the clone dropped there, while the child's owner drops its
/// guard here. In every order the owner's drop finds a grandchild alive that leases the child:
/// before the clone's release, it is not the last handle; after it, its dropping CAS read that
/// release and with it the lessee mark, so the word is not 0 and the drop goes the general way.
/// Either way the child is cancelled (`OwnerDropped`, as Go's `defer cancel()`), which the
/// grandchild reads once the owner's drop is done, and then the child is torn down once, by
/// the grandchild's release. A quiet teardown here would free the child under its lessee
/// without cancelling it.
#[test]
fn owner_drop_races_grandchild_made_through_clone() {
    model(|| {
        let pool = pool_own_refs(4);
        let root = pool.background().with_cancel();
        let mid = root.with_cancel();
        let child = mid.with_cancel();
        let handle = child.context();
        let dropped = Arc::new(AtomicBool::new(false));
        let seen = dropped.clone();
        let t = thread::spawn(move || {
            let grandchild = handle.with_cancel();
            drop(handle);
            let c = grandchild.cause();
            assert!(
                c.is_none() || c == Some(Cause::Parent(Origin::OwnerDropped)),
                "{c:?}"
            );
            while !seen.load(std::sync::atomic::Ordering::Acquire) {
                thread::yield_now();
            }
            assert_eq!(
                grandchild.cause(),
                Some(Cause::Parent(Origin::OwnerDropped)),
                "the owner's drop did not cancel a child its lessee still reads"
            );
            drop(grandchild);
        });
        drop(child);
        dropped.store(true, std::sync::atomic::Ordering::Release);
        t.join().unwrap();
        check_counts_and_reuse(&pool, (4, 2, 2), 4);
        drop((mid, root));
        assert_all_released(&pool);
    });
}

/// A child's owner reads it and drops it on another thread while its parent is cancelled
/// here, the child never registered (nothing waited on it): the parent's cancel does not write
/// the child's word, so the drop goes the quiet way unless the read adopted the cancel first,
/// and it gives back its lease on the parent while the cancel runs. A child made after the
/// join reads the cancel; everything is released once.
///
/// (Written first with the roles swapped, the guard of the parent moved to the spawned thread
/// to cancel there, loom explored one execution of that shape, never running the cancel before
/// the read: tokio-rs/loom#392, which the harness's `thread::spawn` now works around.)
#[test]
fn quiet_owner_drop_races_parent_cancel() {
    model(|| {
        let pool = pool_own_refs(3);
        let root = pool.background().with_cancel();
        let child = root.with_cancel();
        let t = thread::spawn(move || {
            assert!(!child.is_cancelled() || child.cause() == Some(CODE7));
            drop(child);
        });
        assert!(root.cancel(Reason::Code(7)));
        t.join().unwrap();
        check_counts_and_reuse(&pool, (2, 1, 1), 3);
        let late = root.with_cancel();
        assert_eq!(late.cause(), Some(CODE7));
        drop((late, root));
        assert_all_released(&pool);
    });
}

/// A root of a built pool holds a reference on the pool (P4). Dropped quietly on another
/// thread while this thread drops the `Pool` handle, the pool is freed once, by whichever
/// release is last, and never while the root's teardown still reads it; a second root made
/// earlier and dropped here checks that the slot lists the quiet drop wrote are consistent.
#[test]
fn quiet_root_drop_races_pool_handle_drop() {
    model(|| {
        let pool = pool_own_refs(2);
        let bg = pool.background();
        let root = bg.with_cancel();
        let other = bg.with_cancel();
        drop(other);
        let t = thread::spawn(move || drop(root));
        let s = pool.stats();
        assert!(s.in_use <= 1, "{s:?}");
        drop(bg);
        drop(pool);
        t.join().unwrap();
    });
}
