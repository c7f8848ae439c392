//! loom models of the pool: slot lifecycle (slot L1..L3), per-thread free lists and the remote
//! and spill lists (pool P1..P4, shard S1..S4), page growth.
//!
//! Under loom ids of threads are never reused within an execution, so the main thread and each
//! spawned thread own distinct shards: a slot freed by a thread other than its acquirer goes
//! to the acquirer's remote list, exactly the path these models want to exercise.

use ctxpool::{ContextId, RequestId};
use ctxpool_loom_tests::*;

/// (1) ABA: a weak id of a context whose only handle is dropped on another thread while a third
/// party reuses the slot (capacity 1 forces the reuse). The weak id upgrades only to the
/// original incarnation (checked through its request id), never to the new one, and reads as
/// cancelled once the original is gone. The pool's counters balance.
#[test]
fn stale_weak_never_reaches_reused_slot() {
    model(|| {
        let pool = pool(1);
        let bg = pool.background();
        let old = bg.child().request_id(RequestId(1)).with_cancel();
        let weak = old.downgrade();
        let old_id = old.id();

        // Drops the only reference: the guard releases the slot at once (try_drop_sole) or,
        // if the weak id upgraded first, cancels it and leaves the release to that handle.
        let dropper = thread::spawn(move || drop(old));

        // Makes a new context; with capacity 1 it gets a slot only once the old one is freed
        // (stolen from the main thread's remote list).
        let bg2 = bg.clone();
        let maker = thread::spawn(move || {
            let new = bg2.child().request_id(RequestId(2)).try_with_cancel().ok();
            if let Some(new) = &new {
                assert_eq!(new.id().slot, old_id.slot);
                assert_ne!(new.id(), old_id);
                assert!(!new.is_cancelled());
                assert_eq!(new.request_id(), Some(RequestId(2)));
            }
            new
        });

        // The stale id, concurrently with both.
        match weak.upgrade() {
            Some(c) => {
                assert_eq!(c.id(), old_id);
                assert_eq!(
                    c.request_id(),
                    Some(RequestId(1)),
                    "upgraded to another incarnation"
                );
            }
            None => assert!(weak.is_cancelled()),
        }

        dropper.join().unwrap();
        let new = maker.join().unwrap();

        // The new incarnation (if any) is alive now: the weak id must not reach it.
        assert!(weak.upgrade().is_none());
        assert!(weak.is_cancelled());
        let s = pool.stats();
        match &new {
            Some(n) => {
                assert!(!n.is_cancelled());
                assert_eq!((s.in_use, s.created, s.released, s.exhausted), (1, 2, 1, 0));
            }
            None => assert_eq!((s.in_use, s.created, s.released, s.exhausted), (0, 1, 1, 1)),
        }
        drop(new);
        assert_all_released(&pool);

        // The slot comes back to this thread, wherever it was freed to.
        let again = bg.try_with_cancel().expect("the only slot is free");
        assert_eq!(again.id().slot, old_id.slot);
        assert!(!again.is_cancelled());
        assert!(weak.upgrade().is_none());
        assert!(bg.try_with_cancel().is_err(), "the slot was freed twice");
        drop(again);
        assert_all_released(&pool);
    });
}

/// (7) The last two references to a node (its guard and a clone) are dropped on two threads at
/// once: the node is released exactly once (its value dropped once, the counters balance, and
/// the slot is on exactly one free list), including the release of its never-cancellable
/// parent further up the chain.
#[test]
fn last_handle_dropped_on_other_thread() {
    model(|| {
        let pool = pool(2);
        let drops = Arc::new(AtomicUsize::new(0));
        let bg = pool.background();
        let guard = {
            let with_value = bg.with_value(DropCounter(drops.clone()));
            with_value.with_cancel()
        };
        let handle = guard.context();
        let weak = guard.downgrade();

        let t = thread::spawn(move || drop(handle));
        drop(guard);
        t.join().unwrap();

        assert!(weak.upgrade().is_none());
        assert_eq!(
            get(&drops),
            1,
            "the value node was not dropped exactly once"
        );
        assert_all_released(&pool);
        assert_eq!(pool.stats().created, 2);

        // Both slots are free exactly once: two contexts fit, a third does not.
        let a = bg.try_with_cancel().expect("slot 1 is free");
        let b = bg.try_with_cancel().expect("slot 2 is free");
        assert_ne!(a.id().slot, b.id().slot);
        assert!(bg.try_with_cancel().is_err(), "a slot was freed twice");
        assert!(weak.upgrade().is_none());
        drop((a, b));
        assert_all_released(&pool);
    });
}

/// (7) A node dropped on a non-owner thread goes to its owner's remote list, from which the
/// owner takes it back and another thread can steal it, concurrently. Capacity 1: at most one
/// of the two concurrent makers gets the slot; every miss is counted as an exhaustion.
#[test]
fn remote_free_is_reused_by_owner_or_stealer() {
    model(|| {
        let pool = pool(1);
        let bg = pool.background();
        let first = bg.with_cancel();
        let first_id = first.id();

        // Frees the slot to the main thread's remote list.
        let dropper = thread::spawn(move || drop(first));
        // Tries to steal it.
        let bg2 = bg.clone();
        let stealer = thread::spawn(move || bg2.try_with_cancel().ok());
        // The owner tries to take it back.
        let mine = bg.try_with_cancel().ok();

        dropper.join().unwrap();
        let stolen = stealer.join().unwrap();
        assert!(
            mine.is_none() || stolen.is_none(),
            "one slot handed out twice"
        );
        for g in mine.iter().chain(stolen.iter()) {
            assert_eq!(g.id().slot, first_id.slot);
            assert_ne!(g.id(), first_id);
            assert!(!g.is_cancelled());
        }
        let got = u64::from(mine.is_some()) + u64::from(stolen.is_some());
        let s = pool.stats();
        assert_eq!(s.in_use, got);
        assert_eq!(s.created, 1 + got);
        assert_eq!(s.exhausted, 2 - got);
        // A stolen slot now belongs to the stealer's shard: dropping it here sends it to that
        // shard's remote list.
        drop((mine, stolen));
        assert_all_released(&pool);

        let again = bg.try_with_cancel().expect("the only slot is free");
        assert!(bg.try_with_cancel().is_err(), "the slot was freed twice");
        drop(again);
        assert_all_released(&pool);
    });
}

/// Slots spilled to the shared list by one thread (thread cache 1) are taken by another while
/// the first keeps freeing; nothing is lost or handed out twice.
#[test]
fn spill_list_shared_between_threads() {
    model(|| {
        let pool = pool_with_cache(2, 1);
        let bg = pool.background();
        let a = bg.with_cancel();
        let b = bg.with_cancel();
        let ids = [a.id(), b.id()];

        let bg2 = bg.clone();
        let taker = thread::spawn(move || bg2.try_with_cancel().ok());
        // Frees two slots on their owner thread: the second overflows the thread cache of 1,
        // so half of the local list moves to the spill list.
        drop(a);
        drop(b);
        let taken = taker.join().unwrap();
        if let Some(t) = &taken {
            assert!(ids.iter().any(|id| id.slot == t.id().slot));
            assert!(!ids.contains(&t.id()));
        }
        let s = pool.stats();
        assert_eq!(s.in_use, u64::from(taken.is_some()));
        assert_eq!(s.exhausted, u64::from(taken.is_none()));
        drop(taken);
        assert_all_released(&pool);

        // Both slots are reachable from here, once each.
        let x = bg.try_with_cancel().expect("a free slot");
        let y = bg.try_with_cancel().expect("a second free slot");
        assert_ne!(x.id().slot, y.id().slot);
        assert!(bg.try_with_cancel().is_err(), "a slot is on two free lists");
        drop((x, y));
        assert_all_released(&pool);
    });
}

/// Two threads grow the pool by the same page at once (page 0 holds two nodes under loom):
/// one page is published, the loser's is freed, and both contexts live in it.
#[test]
fn concurrent_page_growth() {
    model(|| {
        let pool = pool(4);
        let bg = pool.background();
        let held = [bg.with_cancel(), bg.with_cancel()]; // page 0 is full

        let bg2 = bg.clone();
        let t = thread::spawn(move || {
            let g = bg2.with_cancel();
            assert!(!g.is_cancelled());
            g
        });
        let mine = bg.with_cancel();
        assert!(!mine.is_cancelled());
        let theirs = t.join().unwrap();
        assert!(!theirs.is_cancelled());
        let ids: Vec<ContextId> = held
            .iter()
            .map(|h| h.id())
            .chain([mine.id(), theirs.id()])
            .collect();
        let mut slots: Vec<u32> = ids.iter().map(|id| id.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 1, 2, 3]);
        assert_eq!(pool.stats().exhausted, 0);
        assert!(bg.try_with_cancel().is_err());
        // Both new nodes are usable: a child of one, cancelled through it.
        drop(held);
        let c = theirs.with_cancel();
        theirs.cancel(ctxpool::Reason::Code(1));
        assert!(c.is_cancelled());
        assert!(!mine.is_cancelled());
        drop((mine, theirs, c));
        assert_all_released(&pool);
    });
}

/// (retire) A slot at its last generation is spent by a drop on another thread while this
/// thread makes a context (slot L2, pool P5): the maker gets nothing (the slot is still held,
/// or its spend is not visible yet) or the spare slot, never the spent one; afterwards exactly
/// one slot (the spare) is in circulation, so the capacity is still 1.
#[test]
fn spent_slot_is_replaced_once() {
    model(|| {
        let pool = ctxpool::Pool::builder()
            .capacity(1)
            .testing_first_generation(u32::MAX)
            .build()
            .unwrap();
        let bg = pool.background();
        let last = bg.child().request_id(RequestId(1)).with_cancel();
        let spent: ContextId = last.id();
        assert_eq!(spent.generation, u32::MAX);
        let dropper = thread::spawn(move || drop(last));
        let made = bg.try_with_cancel().ok();
        if let Some(c) = &made {
            assert_ne!(c.id().slot, spent.slot, "a spent slot was reused");
            assert!(!c.is_cancelled());
        }
        dropper.join().unwrap();
        assert_eq!(pool.stats().spent_slots, 1);
        let one = match made {
            Some(c) => c,
            None => bg.try_with_cancel().expect("the spare slot"),
        };
        assert_ne!(one.id().slot, spent.slot);
        assert!(
            bg.try_with_cancel().is_err(),
            "the spent slot grew the pool"
        );
        drop(one);
        assert_all_released(&pool);
    });
}

/// (reclaim) A starving thread takes another thread's cached slots (shard S9..S11) while that
/// thread makes and drops its own contexts from the same local list. Capacity 2, one slot held
/// by the main thread all along: the other slot is cached by the worker, then either popped
/// by it or reclaimed by main, never both (each context reads back its own request id; at most
/// one of the two is alive beside the held one), and the counts balance.
#[test]
fn reclaim_races_owner_pop_and_push() {
    model(|| {
        let pool = pool(2);
        let bg = pool.background();
        let held = bg.child().request_id(RequestId(100)).with_cancel();
        let bg2 = bg.clone();
        let worker = thread::spawn(move || {
            drop(bg2.child().request_id(RequestId(1)).with_cancel()); // cached on this thread
            let again = bg2.child().request_id(RequestId(2)).try_with_cancel().ok();
            if let Some(c) = &again {
                assert_eq!(c.request_id(), Some(RequestId(2)));
                assert!(!c.is_cancelled());
            }
            again.is_some()
            // `again` dropped here: back to this thread's list, or to its remote list
        });
        let stolen = bg.child().request_id(RequestId(3)).try_with_cancel().ok();
        if let Some(c) = &stolen {
            assert_eq!(c.request_id(), Some(RequestId(3)), "a slot owned twice");
            assert_ne!(c.id().slot, held.id().slot);
        }
        let worker_got = worker.join().unwrap();
        assert_eq!(held.request_id(), Some(RequestId(100)));
        drop(stolen);
        drop(held);
        assert_all_released(&pool);
        let _ = worker_got;
        // Both slots are reachable again, wherever they were cached.
        let a = bg.try_with_cancel().expect("slot a");
        let b = bg.try_with_cancel().expect("slot b");
        assert_ne!(a.id().slot, b.id().slot);
        assert!(bg.try_with_cancel().is_err());
    });
}
