//! loom models of releasing nodes: a node whose handles are all gone but that is still kept
//! alive by its children or registrations (tree I1, I4, I10), and the teardown of parents and
//! children released on different threads at once (exactly once, slot L1..L3).
//!
//! These are in their own file because some of them fail with a loom *deadlock* when the
//! protocol is broken, and loom then aborts the whole test binary (a panic while unwinding),
//! which would hide the results of unrelated models.

use ctxpool::{Cause, Origin, Reason};
use ctxpool_loom_tests::*;

const CODE3: Cause = Cause::Parent(Origin::Cancelled(Reason::Code(3)));

/// A waiter two levels below the cancelled root, whose middle node has no handle left (only
/// the leaf keeps it alive): the middle node's handle is dropped on this thread while the leaf's
/// waiter registers (leaf → middle → root) on another, then the root is cancelled. The cancel
/// must still reach the waiter through the registered middle node (I4, I8, I10: a node kept
/// alive only by its children is still part of the tree).
///
/// Regression model: failed at d9455a6 ("Leases"), where a node whose handles were all gone
/// while children it leased still lived had a count of zero (a zombie, I10) and
/// `tree::drain` skipped registered children it could not `try_upgrade`, so the cancel never
/// reached what was registered below the zombie (callback never run / waiter never woken: a
/// loom deadlock, a "lost wake-up" natively). Passes since 15d8466 (cancels handed over to
/// zombies, I11).
#[test]
fn waiter_below_handleless_middle_woken_by_root_cancel() {
    model(|| {
        let pool = pool(3);
        let root = pool.background().with_cancel();
        let middle = root.child().build();
        let leaf = middle.child().build();
        let t = thread::spawn(move || {
            block_on(leaf.cancelled());
            leaf.cause()
        });
        drop(middle);
        assert!(root.cancel(Reason::Code(3)));
        assert_eq!(t.join().unwrap(), Some(CODE3));
        drop(root);
        assert_all_released(&pool);
    });
}

/// An `after_func` on a child whose last handle is dropped on another thread (the registration
/// alone keeps the child alive) while the parent is cancelled: the callback must run (I4, I10).
///
/// Regression model: failed at d9455a6 ("Leases"), where a node whose handles were all gone
/// while children it leased still lived had a count of zero (a zombie, I10) and
/// `tree::drain` skipped registered children it could not `try_upgrade`, so the cancel never
/// reached what was registered below the zombie (callback never run / waiter never woken: a
/// loom deadlock, a "lost wake-up" natively). Passes since 15d8466 (cancels handed over to
/// zombies, I11).
#[test]
fn after_func_on_handleless_child_runs_on_parent_cancel() {
    model(|| {
        let pool = pool(3);
        let root = pool.background().with_cancel();
        let child = root.child().build();
        let ran = Arc::new(AtomicUsize::new(0));
        let consumed = Arc::new(AtomicUsize::new(0));
        let af = {
            let ran = ran.clone();
            let token = DropCounter(consumed.clone());
            child.after_func(move || {
                bump(&ran);
                drop(token);
            })
        };
        let t = thread::spawn(move || drop(child));
        assert!(root.cancel(Reason::Code(1)));
        t.join().unwrap();
        assert_eq!(
            get(&ran),
            1,
            "parent cancelled, callback of its child not run"
        );
        assert_eq!(get(&consumed), 1);
        assert!(!af.stop());
        drop(af);
        drop(root);
        assert_all_released(&pool);
    });
}

/// (7, I10) A parent's guard is dropped while another thread makes a child of it and drops
/// that child: whichever of the two goes last tears the parent down, exactly once.
///
/// BUG (fails at d9455a6, 15d8466 and 1a17f8b): the parent is torn down twice (`released` >
/// `created`, or `in_use` drops while a handle is live). Both sides of the zombie hand-off (I10)
/// can reach `claim`: the parent's `may_tear_down` and the last child's `tear_down` (after its
/// `unlease` saw `ZOMBIE`). The winner tears the parent down, and `tear_down` resets the state word
/// to 0, clearing `ZOMBIE | RECLAIMED`, then retires and frees the slot; the loser, still reading
/// the parent after its own decrement, then finds `RECLAIMED` clear and a lease sum of 0 (the
/// counts are 0, or the key no longer matches the bumped generation) and wins `claim` a second
/// time: a double free of the slot, or a teardown of whatever context reuses it; for a root, its
/// pool reference is released twice and the pool freed under live handles (the SIGSEGV in
/// `Pool::stats` seen in `func.rs`). Seen with eprintln instrumentation at 1a17f8b: "child
/// tear_down claimed parent=0 gen=0", "tear_down idx=0", then "may_tear_down claimed idx=0 gen=0",
/// "tear_down idx=0" again. A fix must tie the election to the incarnation (e.g. do not clear
/// `RECLAIMED`/`ZOMBIE` in `tear_down` but when the slot is re-initialised, and check the
/// generation before claiming), and the child must not read the parent after its decrement unless
/// it can prove the parent has not been torn down meanwhile.
#[test]
fn parent_dropped_while_child_made_and_dropped_elsewhere() {
    model(|| {
        let pool = pool(2);
        let bg = pool.background();
        let root = bg.with_cancel();
        let handle = root.context();
        let t = thread::spawn(move || {
            let child = handle.with_cancel();
            drop(handle);
            let cancelled = child.is_cancelled();
            drop(child);
            cancelled
        });
        drop(root);
        t.join().unwrap();
        let s = pool.stats();
        assert_eq!((s.created, s.released, s.in_use), (2, 2, 0), "{s:?}");
        // The root's slot went back to this thread (its local list, or its remote list if
        // the other thread tore the root down). The child's slot may be cached on the exited
        // thread's local list (see `pool::FINDING_slots_cached_by_exited_thread_are_stranded`).
        let a = bg.try_with_cancel().expect("the root's slot is free");
        drop(a);
        assert_all_released(&pool);
    });
}

/// (7, I10) A child made on this thread is dropped on another thread while the parent's last
/// handle is dropped here: the parent is torn down exactly once, after the child.
///
/// BUG (fails at d9455a6, 15d8466 and 1a17f8b): the parent is torn down twice (`released` >
/// `created`, or `in_use` drops while a handle is live). Both sides of the zombie hand-off (I10)
/// can reach `claim`: the parent's `may_tear_down` and the last child's `tear_down` (after its
/// `unlease` saw `ZOMBIE`). The winner tears the parent down, and `tear_down` resets the state word
/// to 0, clearing `ZOMBIE | RECLAIMED`, then retires and frees the slot; the loser, still reading
/// the parent after its own decrement, then finds `RECLAIMED` clear and a lease sum of 0 (the
/// counts are 0, or the key no longer matches the bumped generation) and wins `claim` a second
/// time: a double free of the slot, or a teardown of whatever context reuses it.
#[test]
fn child_dropped_elsewhere_while_parent_dropped() {
    model(|| {
        let pool = pool(2);
        let bg = pool.background();
        let root = bg.with_cancel();
        let child = root.child().build();
        let t = thread::spawn(move || {
            // The parent is never cancelled before this thread reads it... unless the guard
            // drop (OwnerDropped) already happened; either way the read is of a live chain.
            let c = child.cause();
            assert!(c.is_none() || c == Some(Cause::Parent(Origin::OwnerDropped)));
            drop(child);
        });
        drop(root);
        t.join().unwrap();
        assert_all_released(&pool);
        let a = bg.try_with_cancel().expect("a free slot");
        let b = bg.try_with_cancel().expect("a second free slot");
        assert!(bg.try_with_cancel().is_err(), "a slot was freed twice");
        drop((a, b));
        assert_all_released(&pool);
    });
}

/// A parent's last handle is dropped on another thread (so it is torn down there, reading the
/// per-thread child counts, tree I10) while this thread, which made and dropped a child of it
/// earlier, makes a child of another parent whose slot maps to the same per-thread count entry
/// (slots 0 and 8), so the entry is re-keyed concurrently with the read (shard S5..S7). Exactly
/// one teardown, nothing leaked, the new child is unaffected.
#[test]
fn parent_torn_down_while_count_entry_is_rekeyed() {
    model(|| {
        let pool = pool_with_cache(10, 16);
        let bg = pool.background();
        let p1 = bg.with_cancel();
        let fillers: Vec<_> = (0..7).map(|_| bg.with_cancel()).collect();
        let p2 = bg.with_cancel();
        assert_eq!((p1.id().slot, p2.id().slot), (0, 8));
        drop(fillers);
        drop(p1.child().build()); // counted, then uncounted, in this thread's entry for slot 0
        let last = p1.context();
        drop(p1); // cancels (OwnerDropped); `last` keeps it alive
        let t = thread::spawn(move || drop(last));
        let c2 = p2.child().build(); // re-keys the entry from slot 0 to slot 8
        assert!(!c2.is_cancelled());
        t.join().unwrap();
        let s = pool.stats();
        assert_eq!(s.in_use, 2, "{s:?}");
        assert!(!c2.is_cancelled());
        p2.cancel(Reason::Code(3));
        assert_eq!(c2.cause(), Some(CODE3));
        drop((c2, p2));
        assert_all_released(&pool);
    });
}

/// (D7) A parent released on this thread while its leased child is released on another, with
/// the zombie's check deferred to the next turn: whoever sees the other's mark tears the
/// parent down (the child after its light fence, or the turn after its heavy fence), exactly
/// once, and nothing is left once a turn ran after both releases. (A turn racing the
/// releases is left to the native stress test: with the driver's sleep protocol, D5, a turn
/// has too many atomics for loom to explore beside two releases.)
#[test]
fn deferred_zombie_check_tears_down_once() {
    model(|| {
        let pool = ctxpool::Pool::builder()
            .capacity(3)
            .testing_defer_zombies()
            .testing_lease_own_children()
            .build()
            .unwrap();
        let root = pool.background().with_cancel();
        let parent = root.with_cancel();
        let child = parent.with_cancel();
        let t = thread::spawn(move || drop(child));
        drop(parent);
        t.join().unwrap();
        pool.turn();
        drop(root);
        assert_all_released(&pool);
        assert!(pool.background().try_with_cancel().is_ok());
        if pool.stats().heavy_fences > 0 {
            DEFERRED_RAN.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // The deferred check ran (a turn's heavy fence) in at least one execution.
    assert!(DEFERRED_RAN.load(std::sync::atomic::Ordering::Relaxed));
}

static DEFERRED_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
