//! loom models of the cancellation tree (tree I1..I10): child creation, concurrent cancels,
//! cause adoption, and releases racing a cancel through the registered-children lists.

use ctxpool::{Cause, Origin, Reason};
use ctxpool_loom_tests::*;

const CODE7: Cause = Cause::Parent(Origin::Cancelled(Reason::Code(7)));

/// (2) A child made on one thread while its parent is cancelled on another: once the cancel
/// returned and the maker is joined, the child reads cancelled with `Parent(origin)`; if the
/// maker saw it cancelled earlier, it saw the same cause (I3, I4).
#[test]
fn child_creation_races_parent_cancel() {
    model(|| {
        let pool = pool(3);
        let root = pool.background().with_cancel();
        let handle = root.context();
        let maker = thread::spawn(move || {
            let child = handle.with_cancel();
            let grandchild = child.child().build();
            if let Some(c) = grandchild.cause() {
                assert_eq!(c, CODE7);
            }
            (child, grandchild)
        });
        assert!(root.cancel(Reason::Code(7)));
        let (child, grandchild) = maker.join().unwrap();
        assert!(child.is_cancelled());
        assert_eq!(child.cause(), Some(CODE7));
        assert_eq!(grandchild.cause(), Some(CODE7));
        assert_eq!(root.cause(), Some(Cause::Cancelled(Reason::Code(7))));
        drop((child, grandchild, root));
        assert_all_released(&pool);
    });
}

/// (3) Two cancels with different causes race: exactly one returns `true`, and every observer
/// (both cancelling threads right after their cancel, and everyone after the joins, on the
/// root and on a child that adopts the cancellation) reads the winner's cause. Both causes
/// carry a message, so a reader must never pair one cancel's length with the other's pointer
/// (I2, I3).
///
/// (This thread does not read concurrently: a reader of a message cause waits for the cancel
/// winner's LOCK, and two such readers spinning on one LOCK is a schedule loom cannot bound;
/// see `message_cause_read_while_cancel_in_flight` for a concurrent reader.)
#[test]
fn concurrent_cancels_agree_on_cause() {
    model(|| {
        let pool = pool(2);
        let root = Arc::new(pool.background().with_cancel());
        let child = root.with_cancel();

        let spawn_cancel = |msg: &'static str| {
            let root = root.clone();
            let child = child.context();
            thread::spawn(move || {
                let won = root.cancel(Reason::Message(msg));
                (won, root.cause(), child.cause())
            })
        };
        let a = spawn_cancel("first");
        let b = spawn_cancel("second!");

        let (won_a, root_a, child_a) = a.join().unwrap();
        let (won_b, root_b, child_b) = b.join().unwrap();
        assert!(won_a ^ won_b, "exactly one cancel records the cause");
        let origin = Origin::Cancelled(Reason::Message(if won_a { "first" } else { "second!" }));
        let own = Some(Cause::from(origin));
        let inherited = Some(Cause::Parent(origin));
        assert_eq!(root_a, own);
        assert_eq!(root_b, own);
        assert_eq!(root.cause(), own);
        assert_eq!(child_a, inherited);
        assert_eq!(child_b, inherited);
        assert_eq!(child.cause(), inherited);
        drop(child);
        drop(root);
        assert_all_released(&pool);
    });
}

/// (3, I3) A reader of the root and of a child (which adopts the root's cancellation) runs
/// while a cancel with a message is in flight: it reads nothing or the whole message, never a
/// cause whose message pointer is not written yet.
#[test]
fn message_cause_read_while_cancel_in_flight() {
    model(|| {
        let pool = pool(2);
        let root = pool.background().with_cancel();
        let child = root.child().build();
        let handle = root.context();
        let t = thread::spawn(move || (handle.cause(), child.cause()));
        assert!(root.cancel(Reason::Message("bye")));
        let (r, c) = t.join().unwrap();
        let origin = Origin::Cancelled(Reason::Message("bye"));
        assert!(
            r.is_none() || r == Some(Cause::from(origin)),
            "root read {r:?}"
        );
        assert!(
            c.is_none() || c == Some(Cause::Parent(origin)),
            "child read {c:?}"
        );
        drop(root);
        assert_all_released(&pool);
    });
}

/// (3) A child's own cancel races its parent's cancel and a reader that adopts the parent's
/// cancellation into the child: the child's cause is decided once, and its `cancel()` returns
/// `true` iff its own cause is the one recorded (I3: adoption is the same CAS).
#[test]
fn own_cancel_races_adoption_of_parent_cancel() {
    model(|| {
        let pool = pool(2);
        let root = pool.background().with_cancel();
        let child = Arc::new(root.with_cancel());
        let reader = child.context();

        let c = child.clone();
        let own = thread::spawn(move || c.cancel(Reason::Code(2)));
        let r = thread::spawn(move || reader.cause());
        root.cancel(Reason::Code(7));

        let won = own.join().unwrap();
        let seen = r.join().unwrap();
        let fin = child.cause();
        if won {
            assert_eq!(fin, Some(Cause::Cancelled(Reason::Code(2))));
        } else {
            assert_eq!(fin, Some(CODE7));
        }
        assert!(
            seen.is_none() || seen == fin,
            "reader saw {seen:?}, final {fin:?}"
        );
        drop(child);
        drop(root);
        assert_all_released(&pool);
    });
}

/// (4) A child registered in its parent (it was waited on: a `cancelled()` future polled once,
/// then dropped, leaves the registration) is released on another thread while the parent is
/// cancelled: the parent's cancel skips or cancels it, the child unregisters itself under the
/// parent's lock, no slot is used after it is freed, and every slot comes back (I6).
#[test]
fn cancel_races_release_of_registered_child() {
    model(|| {
        let pool = pool(2);
        let root = pool.background().with_cancel();
        let child = root.with_cancel();
        assert!(!poll_once(child.cancelled()));
        let t = thread::spawn(move || drop(child));
        assert!(root.cancel(Reason::Code(7)));
        t.join().unwrap();
        let s = pool.stats();
        assert_eq!(
            s.in_use, 1,
            "the child's slot was not reclaimed, or twice: {s:?}"
        );
        drop(root);
        assert_all_released(&pool);
    });
}

/// (4) A child with an `after_func` (registered in the child, and the child in the parent) is
/// dropped on another thread (its guard cancels it: `OwnerDropped`) while the parent is
/// cancelled: the callback runs exactly once, the closure is consumed once, and the child and
/// the registration are both reclaimed.
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
fn cancel_races_release_of_child_with_after_func() {
    model(|| {
        let pool = pool(3);
        let root = pool.background().with_cancel();
        let child = root.with_cancel();
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
        assert!(root.cancel(Reason::Code(7)));
        t.join().unwrap();
        assert_eq!(get(&ran), 1);
        assert_eq!(get(&consumed), 1);
        assert!(!af.stop());
        let s = pool.stats();
        assert_eq!(
            s.in_use, 1,
            "child or registration not reclaimed, or reclaimed twice: {s:?}"
        );
        drop(root);
        assert_all_released(&pool);
    });
}

/// A registered child is released while its parent's cancel drains the registered list, and
/// its slot is immediately reused by an unrelated new root context (capacity 2 leaves no other
/// slot). The parent's cancel must not cancel (or take a reference on) the new incarnation:
/// the generation it checks must be the one that was registered (I6, slot L2).
///
/// Regression model: failed at c7e16e0, dd9e444 and d9455a6 (given deterministic thread ids):
/// `tree::drain` cleared the child's `REGISTERED` bit *before* reading its generation for
/// `try_upgrade`. In that window the dying child's `unregister` saw `REG` clear and returned
/// without the parent's LOCK, the child was retired and freed, the slot reused by a new
/// context, and `drain` read the *new* generation, upgraded it, put the unrelated context on
/// its work list (overwriting its `next` link) and cancelled it with `Parent(..)`. Passes since
/// 15d8466 ("take the reference before clearing REG").
#[test]
fn registered_child_slot_reused_during_parent_cancel() {
    model(|| {
        let pool = pool(2);
        let bg = pool.background();
        let root = bg.with_cancel();
        let child = root.with_cancel();
        let child_id = child.id();
        assert!(!poll_once(child.cancelled()));
        let bg2 = bg.clone();
        let t = thread::spawn(move || {
            drop(child);
            // The only free slot, if any, is the child's.
            bg2.try_with_cancel().ok()
        });
        root.cancel(Reason::Code(7));
        let fresh = t.join().unwrap();
        if let Some(f) = &fresh {
            assert_eq!(f.id().slot, child_id.slot);
            assert!(
                !f.is_cancelled(),
                "an unrelated context that reused a registered child's slot was cancelled \
                 by the old parent's cancel: {:?}",
                f.cause()
            );
        }
        drop(fresh);
        drop(root);
        assert_all_released(&pool);
    });
}
