//! The cancellation tree: lazy propagation along parent links, eager only for waiters.
//!
//! # Design
//!
//! A child is linked to its parent by a reference, not by a registration: making a child
//! writes nothing on the parent but one reference count, and dropping it writes nothing on the
//! parent but that count. `is_cancelled()` reads the node's state word and, if it is clear,
//! walks up the ancestors reading theirs. Cancelling a node is one CAS on its own word: O(1),
//! whatever the number of descendants.
//!
//! Only a node that somebody waits on (a `cancelled()` future, a blocking `wait`, an
//! `after_func`) needs to be *told*. Such a node registers itself in its parent's
//! registered-children list, and its parent in the grandparent's, up to the first ancestor that
//! can never be cancelled. A cancel drains its node's waiters and registered children, and
//! cancels those children in turn.
//!
//! ```text
//!        root ◄─ref── req ◄─ref── db_call          is_cancelled(db_call): read db_call,
//!         │                         ▲              then req, then root (stop at a detached
//!         └─ registered: [req] ─────┘ (only        node or at the background)
//!                                      if waited on)
//! ```
//!
//! # States of a node's state word (see `state.rs` for the bits)
//!
//! `active` ─cancel CAS─► `cancelled` (never back, until the slot is retired). `LOCK` and `REG`
//! may be set in either state.
//!
//! # Invariants
//!
//! - **I1** every live node keeps its parent from being torn down: by a reference, or by a
//!   lease in its creator shard (I10); a root of a built pool holds a reference on the pool
//!   (pool P4). So every ancestor of a live node is live, and a walk up the chain only
//!   reads live nodes, whose `meta` is immutable (pool P2, slot L1).
//! - **I2** `CANCELLED` is set at most once per incarnation, by the CAS in `set_cancelled`, and
//!   cleared only by the slot's owner when it retires the slot.
//! - **I3** first cause wins, for every observer: the cause is written by the same CAS that
//!   sets `CANCELLED` (plus the message pointer, under `LOCK`, before `LOCK` is first released).
//!   A reader that finds an ancestor cancelled first *adopts* it into the node with that same
//!   CAS and then reports what the node records, so a node's reported cause never changes.
//! - **I4** lazy propagation is observably eager: after `cancel(A)` returns, any read of a
//!   descendant D (made after, in happens-before order) walks through A, because I1 keeps the
//!   chain D → A alive and A's `CANCELLED` store happens before the read. Every waiter and
//!   `after_func` in A's subtree has been woken or run when `cancel(A)` returns, except those
//!   whose registration is still in flight on another thread, which that thread completes (I8),
//!   and those below a node whose last reference another thread is dropping at that moment,
//!   to which the cancel is handed over and which that thread completes (I11).
//! - **I5** a node's waiter list is guarded by its `LOCK`. A waiter is linked only while the
//!   node is not cancelled (checked under `LOCK`). A cancel sets `CANCELLED` and `LOCK` in one
//!   CAS, then unlinks waiters under `LOCK`, taking each one's wake handle and setting its
//!   `notified` flag before releasing `LOCK`; after that it never touches the waiter. A waiter
//!   that is dropped unlinks itself under `LOCK` unless `notified`. So a waiter is either woken
//!   once or unlinked by its owner, and never freed while linked.
//! - **I6** a node N is on its parent P's registered list iff `N.REG` is set; the list, N's
//!   sibling links and `N.REG` change only under P's `LOCK`. N is linked only while P is not
//!   cancelled. A cancel of P, under P's `LOCK`, takes a reference on each registered child
//!   that is still live (`try_upgrade`; a dying child is handed over by I11) *and then* clears
//!   its `REG`: while `REG` is set a dying child cannot get past its `unregister` (it waits for
//!   P's `LOCK`), so its generation cannot change under the cancel. A dying child unlinks
//!   itself under P's `LOCK` if its `REG` is still set. So the list never holds a
//!   retired slot, and a child's `next` link is reused as the cancel work-list link only after
//!   it left the list.
//! - **I7** a node's custom value is dropped exactly once, by the owner of the dying slot; an
//!   `after_func` closure is taken exactly once, by whoever wins the func node's cancel CAS
//!   (and runs it) or by `stop` (and drops it).
//! - **I8** whoever sets `N.REG` goes on to register N's parent, and so on up: if an ancestor
//!   A is cancelled, either A's cancel finds the registered chain, or the registering thread
//!   finds A cancelled under A's `LOCK` and cancels the chain below it itself.
//! - **I10** a child counted in a lease (pool S5..S7) holds no reference on its parent, yet
//!   keeps it from being reused: a parent whose count reaches zero while leased children may
//!   live becomes a *zombie* (`ZOMBIE` set, state, meta and payload intact, no references) and
//!   is torn down by whichever of it and its children finds the lease counts at zero *after*
//!   the zombie mark, with `try_claim` on the lifecycle word electing exactly one (slot L4: the
//!   claim carries the generation read while the node was still held, so a late claimer
//!   cannot claim a retired or reused slot). The mark and a
//!   child's decrement are each followed by a fence before the other side is read (Dekker):
//!   the asymmetric pair of `sync::barrier`, heavy on the rare side (the mark, an unpin) and
//!   light on the frequent one (a child's release). So the last child cannot miss the mark
//!   and the parent cannot miss the last decrement. Before marking, the parent reads the
//!   counts once: once it has no references they only go down (pool S7) and a stale read
//!   only overestimates, so a zero is final and the common case needs no mark and no fence.
//!   When a driver runs, the parent's side after the mark (fence, counts, claim) is left to
//!   the driver's next turn, batched with every other zombie's (time D7); a parent with a
//!   cancel's note (I11) still does it at once.
//! - **I11** a cancel that pops a registered child with no references left (dying, or a
//!   zombie) cannot take a reference on it; it sets `PENDING` on the child, and pins it
//!   if it is already a zombie. The thread that makes a dying node a zombie sets `ZOMBIE` with
//!   one RMW and looks for `PENDING`. Exactly one of the two therefore sees both marks, pins
//!   the zombie, propagates the cancel into it (reaching
//!   its registered children: no lost wake-up), and unpins it. The pin is a CAS on the
//!   lifecycle word from exactly `(g, 0)` (slot L4), so it fails once a claim won (then no
//!   leased child is left to tell) and no claim wins while it is held; unpinning is followed by
//!   a heavy fence (`sync::barrier`) and a lease re-check, so the teardown a pin deferred is done by the
//!   pinner or by the last child.
//! - **I12** a deadline and an ancestor's cancel: the first one observed wins, for good. Every
//!   path that records a node's own deadline — a lazy read (`is_cancelled`), the driver's
//!   timer fire (`fire_deadline`), a deadline born expired (`expire_at_birth`) — first walks
//!   the ancestors (`peek`) and adopts a cancelled one's cause instead (I3), and only then
//!   records `DeadlineExceeded` with the CAS of I2. The clock was read (and the deadline seen
//!   passed) before that walk, so a `DeadlineExceeded` is recorded only when no ancestor was
//!   cancelled at a moment after the deadline had passed: the deadline came first. Conversely
//!   an ancestor cancelled while the deadline is still ahead is found by the walk of whichever
//!   path comes later, so the child reads `Parent(..)`, never `DeadlineExceeded`, even when
//!   nobody read it before its timer fired.
//! - **I13** a dynamic error recorded on node N (tag `ERROR`, `dyncause.rs`) is a boxed error
//!   whose address N's `msg` holds, written by the cancel winner under `LOCK` (I3). N owns it:
//!   a cancel that loses its CAS never published its box and frees it itself; descendants
//!   that inherit or adopt N's cause copy the address with `INHERITED` set and own nothing;
//!   they keep N live (I1, I10), so the address is valid for every reader holding a reference
//!   on N or a descendant, and N's teardown, after every descendant is gone, frees it.
//! - **I14** the owner's drop of a context's last handle records `OwnerDropped` only when a
//!   child may still read it: when the lease counts read zero after that drop (the same
//!   final zero as in I10: no references, so they only go down, pool S7), every child ever
//!   made under it is gone (a child that did not lease holds a reference, and then the drop
//!   was not the last), so the node is torn down at once, uncancelled, as if it had never had
//!   children. Nobody can observe the difference: the cause of a context is readable only
//!   through a handle or a descendant, and `OwnerDropped` is not counted as a cancellation.
//! - **I15** a node whose state word reads 0 right after its last reference was dropped (by
//!   the owner that now holds the dying slot, slot L1) is *quiet*: it was never cancelled,
//!   waited on, registered or leased as a parent, and no other thread can write the word or
//!   `msg` any more. Every writer of a node's state word either holds a reference or a lease on
//!   it (a cancel, an adoption, a waiter or a child's registration, a lessee mark: each leaves
//!   a bit set, and a handle's release is read by the dropping CAS) or reaches it through its
//!   `REG` (a parent's cancel, which sets `PENDING` before it clears `REG`, or takes a
//!   reference before clearing `REG` and keeps it until `CANCELLED` is set); `msg` is written
//!   only by a cancel (I3). A writer may leave the word at 0 again only through a lock/unlock
//!   pair (the bail-outs of `ensure_registered`, `link`, `unlink_waiter`, the relock in
//!   `Wait::poll`, the fallback's register and stop, `unregister`), and it does so while it
//!   holds a reference: the unlock is a release RMW on the word, so it happens before the
//!   owner's dropping CAS through the reference chain, and the owner's read of 0 sees every
//!   such write. So the teardown of a quiet node (`tear_down_quiet`) skips the unregister, the
//!   error and the resets of the general one, which would all find nothing to do. Roots take
//!   it too, and give back their pool reference (P4). loom: `loom-tests/tests/quiet.rs` races
//!   the owner's drop against a clone's registration, a grandchild's lease, a parent's cancel,
//!   a registration's bail-out and the pool handle's drop.
//! - **I9** a node flagged `F_NEVER` (no owner, no cancellable ancestor: a child of the
//!   background, a `without_cancel` node) is never cancelled; walks, registration and
//!   `after_func` stop at it, so children of never-cancellable parents register nothing.

pub(crate) mod cause;
pub(crate) mod dyncause;
pub(crate) mod fallback;
pub(crate) mod func;
pub(crate) mod node;
pub(crate) mod state;
pub(crate) mod wait;

use crate::pool::slot::generation;
use crate::pool::{PoolInner, PoolRef, LEASED, SHARD_MASK};
use crate::sync::{spin_hint, Ordering};
use cause::Cause;
use node::{Node, D_DEADLINE, D_TIMER, F_DETACHED, F_FUNC, F_NEVER, F_POOL_REF, F_VALUE, NIL};
use state::{Packed, CANCELLED, CAUSE_BITS, LISTENED, LOCKED, PENDING, REGISTERED, ZOMBIE};
use wait::{lock, take_batch, unlock};

/// Outcome of [`set_cancelled`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub(crate) enum Won {
    /// Another cause was recorded first.
    Lost,
    /// Recorded; nothing ever listened on the node and the cause has no message, so no LOCK
    /// was taken and there is nothing to drain.
    Quiet,
    /// Recorded with LOCK held: the caller must drain (or unlock) the node.
    Locked,
}

/// Sets `CANCELLED` and the cause in one CAS (I2, I3). A node that somebody listened on
/// (`LISTENED`: a waiter or a registered child was ever linked) or a cause with a message also
/// takes `LOCK` in the same CAS, to drain the lists or publish the message under it.
#[inline]
pub(crate) fn set_cancelled(node: &Node, cause: Packed) -> Won {
    let mut s = node.state.load(Ordering::Relaxed);
    loop {
        if s & CANCELLED != 0 {
            return Won::Lost;
        }
        if s & LOCKED != 0 {
            spin_hint();
            s = node.state.load(Ordering::Relaxed);
            continue;
        }
        let quiet = cause.msg.is_null() && s & LISTENED == 0;
        let lock = if quiet { 0 } else { LOCKED };
        match node.state.compare_exchange_weak(
            s,
            s | CANCELLED | lock | cause.bits,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) if quiet => return Won::Quiet,
            Ok(_) => {
                // I3: the message pointer, under LOCK, before LOCK is first released.
                node.msg.store(cause.msg.cast_mut(), Ordering::Relaxed);
                return Won::Locked;
            }
            Err(actual) => s = actual,
        }
    }
}

/// The cause recorded on a cancelled node, packed, waiting out a cancel that still holds the
/// LOCK it took to write the message (I3).
pub(crate) fn recorded(node: &Node) -> Packed {
    let mut s = node.state.load(Ordering::Acquire);
    if state::needs_msg(s) {
        while s & LOCKED != 0 {
            spin_hint();
            s = node.state.load(Ordering::Acquire);
        }
    }
    Packed {
        bits: s & CAUSE_BITS,
        msg: node.msg.load(Ordering::Relaxed).cast_const(),
    }
}

/// Cancels `idx` with `cause` and everything registered below it; returns whether this call
/// recorded the cause. The caller holds a reference on `idx`.
pub(crate) fn cancel(pool: &PoolInner, idx: u32, cause: Packed) -> bool {
    cancel_in(pool, idx, cause, &mut None)
}

/// [`cancel`], handing every `after_func` callback it would run to `defer` instead of running
/// it, when `defer` is given (the driver: user code never runs on the clock, time D6).
pub(crate) fn cancel_in(
    pool: &PoolInner,
    idx: u32,
    cause: Packed,
    defer: &mut Option<&mut Vec<func::Call>>,
) -> bool {
    // SAFETY: the caller holds a reference (I1, P3).
    let node = unsafe { pool.node(idx) };
    let won = set_cancelled(node, cause);
    if won == Won::Lost {
        return false;
    }
    count_cancel(pool, node, cause);
    let inherited = cause.inherited();
    let mut work = NIL;
    let mut panic = None;
    settle(pool, idx, node, won, &mut work, &mut panic, defer);
    while work != NIL {
        let c = work;
        // SAFETY: `drain` took a reference on every node it put on the work list (I6).
        let cn = unsafe { pool.node(c) };
        work = cn.next.load(Ordering::Relaxed);
        let won = set_cancelled(cn, inherited);
        if won != Won::Lost {
            count_cancel(pool, cn, inherited);
            settle(pool, c, cn, won, &mut work, &mut panic, defer);
        }
        // A panicking value drop must not stop the propagation (the rest of `work` would keep
        // its references and never be woken): note it, finish, then re-raise.
        let r = catch(|| {
            if cn.life.is_pinned() {
                unpin(pool, c);
            } else if cn.life.drop_ref() {
                // The canceller holds a reference above `c`, so this cannot free the pool.
                drop(release(pool, c));
            }
        });
        if let Err(p) = r {
            panic.get_or_insert(p);
        }
    }
    if let Some(p) = panic {
        std::panic::resume_unwind(p);
    }
    true
}

/// Counts a cancellation recorded on `node` (referenced by the caller) in its operation's
/// metrics (metrics `ops`: once per context, by the thread that recorded it).
#[inline]
fn count_cancel(pool: &PoolInner, node: &Node, cause: Packed) {
    if !pool.metrics.on() {
        return;
    }
    let Some(reason) = state::reason(cause.bits) else {
        return;
    };
    // SAFETY: the caller holds a reference (I1): flags and payload are immutable.
    if unsafe { node.flags() } & F_FUNC != 0 {
        return;
    }
    // SAFETY: as above.
    let op = node.payload.with(|p| unsafe { (*p).values.op });
    pool.metrics
        .cancelled(op, reason, pool.local().map(|l| l.shard));
}

/// A caught panic, to be re-raised once the protocol step in progress is complete.
pub(crate) type Panic = Box<dyn std::any::Any + Send>;

/// Runs `f`, catching a panic from user code (a `Drop`, a waker, a callback).
#[inline]
pub(crate) fn catch(f: impl FnOnce()) -> Result<(), Panic> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

/// After a won `set_cancelled`: runs an `after_func` closure, or wakes the node's waiters and
/// queues its registered children (when it took LOCK; a quiet node has neither).
#[allow(clippy::too_many_arguments)]
fn settle(
    pool: &PoolInner,
    idx: u32,
    node: &Node,
    won: Won,
    work: &mut u32,
    panic: &mut Option<Panic>,
    defer: &mut Option<&mut Vec<func::Call>>,
) {
    // SAFETY: the caller holds a reference, so the flags are stable (I1).
    if unsafe { node.flags() } & F_FUNC != 0 {
        if won == Won::Locked {
            unlock(node);
        }
        let r = match defer {
            Some(calls) => func::defer(pool, idx).map(|call| calls.push(call)),
            None => func::fire(pool, idx),
        };
        if let Err(p) = r {
            panic.get_or_insert(p);
        }
    } else if won == Won::Locked {
        drain(pool, node, work, panic, defer);
    }
}

/// With `node`'s LOCK held and `CANCELLED` set: wakes its waiters in batches, moves its live
/// registered children onto `work` (each with a reference taken), and releases LOCK (I5, I6).
/// A waiter that is an `after_func` without a slot (fallback F3) runs its callback here, or
/// hands it to `defer` when given (the driver, time D6).
fn drain(
    pool: &PoolInner,
    node: &Node,
    work: &mut u32,
    panic: &mut Option<Panic>,
    defer: &mut Option<&mut Vec<func::Call>>,
) {
    // Registered children, all at once: no user code runs under the lock.
    let mut c = node.children.load(Ordering::Relaxed);
    node.children.store(NIL, Ordering::Relaxed);
    while c != NIL {
        // SAFETY: a registered child is live or dying, never retired (I6), and came from this
        // pool.
        let cn = unsafe { pool.node(c) };
        let next = cn.next.load(Ordering::Relaxed);
        // While `REG` is set and we hold the LOCK, the child cannot finish a teardown (its
        // `unregister` waits for this LOCK), so its generation is current: take a reference
        // (or pin it, I11) *before* clearing `REG` (I6).
        let gen = generation(cn.life.load(Ordering::Relaxed));
        let keep = cn.life.try_upgrade(gen) || pin_pending(cn, gen);
        cn.state.fetch_and(!REGISTERED, Ordering::Release);
        if keep {
            cn.next.store(*work, Ordering::Relaxed);
            *work = c;
        }
        c = next;
    }
    loop {
        // SAFETY: LOCK held and CANCELLED set (caller's contract, then re-taken below).
        let (batch, more) = unsafe { take_batch(node) };
        unlock(node);
        for w in batch.into_iter().flatten() {
            let r = match (w, &mut *defer) {
                (wait::Wake::Func(reg), Some(calls)) => {
                    // The canceller holds a reference on `node`: releasing the registration's
                    // cannot tear it down (fallback F2).
                    catch(|| calls.push(reg.into_call()))
                }
                (w, _) => catch(|| w.wake()),
            };
            if let Err(p) = r {
                panic.get_or_insert(p);
            }
        }
        if !more {
            return;
        }
        lock(node);
    }
}

/// Where `idx` (on which the caller holds a reference) reads as cancelled, without changing
/// anything: `Own` if its state word is cancelled, `Ancestor(i)` for the nearest cancelled
/// ancestor `i`, `None` otherwise (I4).
pub(crate) fn peek(pool: &PoolInner, idx: u32) -> Peek {
    // SAFETY: the caller holds a reference (I1).
    let node = unsafe { pool.node(idx) };
    if node.state.load(Ordering::Acquire) & CANCELLED != 0 {
        return Peek::Own;
    }
    // SAFETY: reference held (I1).
    if unsafe { node.flags() } & (F_DETACHED | F_NEVER) != 0 {
        return Peek::Active;
    }
    // SAFETY: reference held (I1).
    let mut p = unsafe { node.meta() }.parent;
    while p != NIL {
        // SAFETY: ancestors of a live node are live (I1).
        let pn = unsafe { pool.node(p) };
        if pn.state.load(Ordering::Acquire) & CANCELLED != 0 {
            return Peek::Ancestor(p);
        }
        // SAFETY: live ancestor (I1).
        if unsafe { pn.flags() } & (F_DETACHED | F_NEVER) != 0 {
            return Peek::Active;
        }
        // SAFETY: live ancestor (I1).
        p = unsafe { pn.meta() }.parent;
    }
    Peek::Active
}

/// Result of [`peek`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peek {
    Active,
    Own,
    Ancestor(u32),
}

/// Whether `idx` (on which the caller holds a reference) or an ancestor is cancelled; adopts an
/// ancestor's cancellation into the node first (I3, I4).
#[inline]
pub(crate) fn is_cancelled(pool: &PoolInner, idx: u32) -> bool {
    match peek(pool, idx) {
        Peek::Active => {
            if !deadline_passed(pool, idx) {
                return false;
            }
            expire(pool, idx);
            // Now cancelled: by the expiry, or by whatever cancel won the race with it (I3).
            if let Peek::Ancestor(_) = peek(pool, idx) {
                adopt(pool, idx);
            }
            true
        }
        Peek::Own => true,
        Peek::Ancestor(_) => {
            adopt(pool, idx);
            true
        }
    }
}

/// Whether `idx` (referenced by the caller) has an effective deadline that has passed on the
/// pool's clock (time K1: once true, stays true).
#[inline]
fn deadline_passed(pool: &PoolInner, idx: u32) -> bool {
    // SAFETY: the caller holds a reference (I1); deadline bits and payload are immutable.
    let node = unsafe { pool.node(idx) };
    // SAFETY: as above.
    if unsafe { node.shard_flags() }.0 & D_DEADLINE == 0 {
        return false;
    }
    // SAFETY: as above.
    let dl = node.payload.with(|p| unsafe { (*p).values.deadline });
    crate::time::clock::expired(pool.timers.clock.now(), dl)
}

/// Cancels the owner of `idx`'s expired deadline (the nearest node, `idx` or an ancestor, whose
/// own timer set it) with `DeadlineExceeded`, exactly as its timer would (time D1): an expired
/// deadline reads as such before the driver fires it.
#[cold]
fn expire(pool: &PoolInner, idx: u32) {
    // SAFETY: reference held (I1).
    let dl = unsafe { pool.node(idx) }
        .payload
        // SAFETY: immutable while referenced (P2).
        .with(|p| unsafe { (*p).values.deadline });
    let mut cur = idx;
    while cur != NIL {
        // SAFETY: `idx` or one of its ancestors: live (I1).
        let node = unsafe { pool.node(cur) };
        // SAFETY: live (I1).
        let (bits, meta) = unsafe { (node.shard_flags().0, node.meta()) };
        // SAFETY: live (I1), payload immutable.
        let own = node.payload.with(|p| unsafe { (*p).values.deadline });
        if bits & D_TIMER != 0 && own == dl {
            cancel(pool, cur, Packed::deadline(dl));
            return;
        }
        cur = meta.parent;
    }
}

/// Records the expiry of `idx`'s own deadline `dl` (its timer came due), unless an ancestor's
/// cancel is seen first, which `idx` then adopts (I12). Returns whether this call recorded
/// `DeadlineExceeded`. The caller holds a reference on `idx`.
pub(crate) fn fire_deadline(
    pool: &PoolInner,
    idx: u32,
    dl: u32,
    defer: &mut Option<&mut Vec<func::Call>>,
) -> bool {
    match peek(pool, idx) {
        Peek::Active => cancel_in(pool, idx, Packed::deadline(dl), defer),
        Peek::Own => false,
        Peek::Ancestor(_) => {
            adopt_in(pool, idx, defer);
            false
        }
    }
}

/// A context born with an own deadline `dl` already passed (time K4): records
/// `DeadlineExceeded` at once (no timer is armed), or the cause of an ancestor already
/// cancelled (I12). The caller holds the new node's only reference.
#[cold]
#[inline(never)]
pub(crate) fn expire_at_birth(pool: &PoolInner, idx: u32, dl: u32) {
    let _ = fire_deadline(pool, idx, dl, &mut None);
}

/// Records an ancestor's cancellation on `idx` and on every node between them, from the top
/// down, each with the cause its own parent recorded (I3): a node never reads `Parent(x)`
/// while its parent records something else, whatever races with the adoption.
#[cold]
fn adopt(pool: &PoolInner, idx: u32) {
    adopt_in(pool, idx, &mut None)
}

/// [`adopt`], deferring `after_func` callbacks to `defer` when given (see [`cancel_in`]).
fn adopt_in(pool: &PoolInner, idx: u32, defer: &mut Option<&mut Vec<func::Call>>) {
    loop {
        // Find the nearest cancelled ancestor of `idx` and the node just below it.
        let mut below = idx;
        // SAFETY: live (I1).
        let mut cur = unsafe { pool.node(idx).meta() }.parent;
        loop {
            if cur == NIL {
                return;
            }
            // SAFETY: ancestors of a live node are live (I1, I10).
            let cn = unsafe { pool.node(cur) };
            if cn.state.load(Ordering::Acquire) & CANCELLED != 0 {
                break;
            }
            below = cur;
            // SAFETY: as above.
            cur = unsafe { cn.meta() }.parent;
        }
        // SAFETY: as above.
        let origin = recorded(unsafe { pool.node(cur) });
        cancel_in(pool, below, origin.inherited(), defer);
        if below == idx {
            return;
        }
    }
}

/// The cause recorded on a cancelled node, for `Debug`: never waits, so a message still being
/// written reads as `Reason::None`.
pub(crate) fn cause_now(pool: &PoolInner, idx: u32) -> Option<Cause> {
    let (node, inherit) = match peek(pool, idx) {
        Peek::Active => return None,
        // SAFETY: reference held / live ancestor (I1).
        Peek::Own => (unsafe { pool.node(idx) }, false),
        // SAFETY: live ancestor (I1).
        Peek::Ancestor(a) => (unsafe { pool.node(a) }, true),
    };
    let s = node.state.load(Ordering::Acquire);
    let msg = if s & LOCKED == 0 {
        node.msg.load(Ordering::Relaxed).cast_const()
    } else {
        core::ptr::null()
    };
    let c = state::decode(s & CAUSE_BITS, msg, &pool.timers.clock);
    Some(if inherit {
        Cause::Parent(c.origin())
    } else {
        c
    })
}

/// The cause of `idx`, if it is cancelled (I3).
pub(crate) fn cause(pool: &PoolInner, idx: u32) -> Option<Cause> {
    if !is_cancelled(pool, idx) {
        return None;
    }
    // SAFETY: the caller holds a reference (I1).
    let node = unsafe { pool.node(idx) };
    let p = recorded(node);
    Some(state::decode(p.bits, p.msg, &pool.timers.clock))
}

/// Registers `idx` and its ancestors up to the first never-cancellable one, so that a cancel
/// anywhere above reaches `idx` eagerly (I6, I8). The caller holds a reference on `idx`.
pub(crate) fn ensure_registered(pool: &PoolInner, mut idx: u32) {
    loop {
        // SAFETY: `idx` is the caller's node or one of its ancestors: live (I1).
        let node = unsafe { pool.node(idx) };
        // SAFETY: live (I1).
        let (meta, flags) = unsafe { (node.meta(), node.flags()) };
        if flags & (F_DETACHED | F_NEVER) != 0 || meta.parent == NIL {
            return;
        }
        if node.state.load(Ordering::Acquire) & (REGISTERED | CANCELLED) != 0 {
            return;
        }
        // SAFETY: the parent of a live node is live (I1).
        let pn = unsafe { pool.node(meta.parent) };
        // SAFETY: live (I1).
        if unsafe { pn.flags() } & F_NEVER != 0 {
            return;
        }
        let ps = lock(pn);
        if ps & CANCELLED != 0 {
            // LOCK is held, so the canceller released it at least once: `msg` is written (I3).
            let origin = Packed {
                bits: ps & CAUSE_BITS,
                msg: pn.msg.load(Ordering::Relaxed).cast_const(),
            };
            unlock(pn);
            cancel(pool, idx, origin.inherited());
            return;
        }
        // REG only changes under the parent's LOCK, which we hold (I6).
        if node.state.load(Ordering::Acquire) & (REGISTERED | CANCELLED) != 0 {
            unlock(pn);
            return;
        }
        let head = pn.children.load(Ordering::Relaxed);
        node.next.store(head, Ordering::Relaxed);
        node.prev.store(NIL, Ordering::Relaxed);
        if head != NIL {
            // SAFETY: registered siblings are live or dying, never retired (I6).
            unsafe { pool.node(head) }
                .prev
                .store(idx, Ordering::Relaxed);
        }
        pn.children.store(idx, Ordering::Relaxed);
        if ps & LISTENED == 0 {
            pn.state.fetch_or(LISTENED, Ordering::Relaxed);
        }
        node.state.fetch_or(REGISTERED, Ordering::Release);
        unlock(pn);
        idx = meta.parent;
    }
}

/// Removes `idx` from its parent's registered list if it is on it (I6). The caller holds a
/// reference on `idx` or owns the dying slot.
pub(crate) fn unregister(pool: &PoolInner, idx: u32) {
    // SAFETY: live or dying, owned by the caller (I1, P2).
    let node = unsafe { pool.node(idx) };
    if node.state.load(Ordering::Acquire) & REGISTERED == 0 {
        return;
    }
    // SAFETY: as above.
    let parent = unsafe { node.meta() }.parent;
    // SAFETY: the parent is live while `idx` holds its reference (I1).
    let pn = unsafe { pool.node(parent) };
    lock(pn);
    if node.state.load(Ordering::Relaxed) & REGISTERED != 0 {
        let prev = node.prev.load(Ordering::Relaxed);
        let next = node.next.load(Ordering::Relaxed);
        if prev == NIL {
            pn.children.store(next, Ordering::Relaxed);
        } else {
            // SAFETY: registered siblings are live or dying (I6).
            unsafe { pool.node(prev) }
                .next
                .store(next, Ordering::Relaxed);
        }
        if next != NIL {
            // SAFETY: as above.
            unsafe { pool.node(next) }
                .prev
                .store(prev, Ordering::Relaxed);
        }
        node.state.fetch_and(!REGISTERED, Ordering::Relaxed);
    }
    unlock(pn);
}

/// The pool reference of a root that was torn down. The caller drops it once no `&PoolInner`
/// argument is live any more, since it may free the pool (P4): freeing memory that a live
/// function argument borrows would be undefined behaviour.
#[must_use = "dropping the pool reference may free the pool; drop it after the last use"]
pub(crate) struct Deferred(#[allow(dead_code)] Option<PoolRef>); // held for its `Drop`

/// What an id expects to find in its slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// A context (a `WeakContext`, a leak scan's id).
    Context,
    /// An `after_func` registration (`AfterFunc::stop`).
    Func,
}

/// Takes a reference on incarnation `gen` of slot `idx` if it is still live (slot L1, L2) *and*
/// of the kind the caller expects; `false` otherwise, holding nothing. The generation alone
/// already identifies the incarnation (L2); the kind check means that no id could ever make
/// one kind of node's payload be read as the other's, even if that ever failed.
pub(crate) fn upgrade(pool: &PoolInner, idx: u32, gen: u32, kind: Kind) -> bool {
    // SAFETY: `idx` was handed out by this pool (P3): its lifecycle word is always readable.
    let node = unsafe { pool.node(idx) };
    if !node.life.try_upgrade(gen) {
        return false;
    }
    // SAFETY: we hold a reference, so the incarnation's flags are stable (slot L1).
    let is_func = unsafe { node.flags() } & F_FUNC != 0;
    if is_func == (kind == Kind::Func) {
        return true;
    }
    // The caller holds its pool by a reference of its own, so this cannot free the pool.
    drop(drop_ref(pool, idx));
    false
}

/// Drops one reference on `idx`; releases the node (and, in turn, ancestors) at zero.
#[inline]
pub(crate) fn drop_ref(pool: &PoolInner, idx: u32) -> Deferred {
    // SAFETY: the caller holds the reference it drops (I1).
    if unsafe { pool.node(idx) }.life.drop_ref() {
        release(pool, idx)
    } else {
        Deferred(None)
    }
}

/// Called when `idx`'s reference count reached zero (the caller owns the dying node, L1):
/// tears it down now, or leaves it a zombie for its last leased child (I10).
pub(crate) fn release(pool: &PoolInner, idx: u32) -> Deferred {
    if may_tear_down(pool, idx) {
        tear_down(pool, idx)
    } else {
        Deferred(None)
    }
}

/// For a node with zero references: `true` if it can be torn down now (no leased child can
/// still read it), `false` if it became a zombie that its last leased child tears down (I10).
fn may_tear_down(pool: &PoolInner, idx: u32) -> bool {
    // SAFETY: zero references: the node is dying, owned by the caller (L1).
    let node = unsafe { pool.node(idx) };
    if !state::is_leased(node.state.load(Ordering::Acquire)) {
        return true;
    }
    let gen = generation(node.life.load(Ordering::Relaxed));
    // Common case: every leased child is already gone. Counts only go down once the node has
    // no references (pool S7) and a stale read only overestimates them, so a zero here is
    // final: no zombie, no fence.
    // (A `PENDING` note does not matter then: with no leased child left, nothing below this
    // node is registered, since registered children are leased or hold a reference.)
    if pool.lease_sum(idx, gen, node.state.load(Ordering::Acquire)) == 0 {
        return true;
    }
    let prev = node.state.fetch_or(ZOMBIE, Ordering::AcqRel);
    // The rare side of the Dekker handshake with `PoolInner::unlease` (I10): the heavy fence
    // and the re-read of the counts, now or (batched with other zombies') at the driver's next
    // turn. A cancel's note (I11) is handled now.
    if prev & PENDING == 0 && pool.defer_zombie(pool.local(), idx, gen) {
        return false;
    }
    pool.heavy_fence();
    if prev & PENDING != 0 {
        // I11: the parent's cancel left a note before we became a zombie: we propagate it,
        // pinned so that the last child cannot tear the node down meanwhile. If the pin fails,
        // a child already claimed it: no leased child is left to tell.
        if !node.life.try_pin(gen) {
            return false;
        }
        // SAFETY: the node still keeps its parent from being torn down (I1), and the parent
        // is cancelled (it left the note).
        let parent = unsafe { pool.node(node.meta().parent) };
        // A panicking callback below must not leave the pin (and so the zombie and every
        // ancestor) in place forever: unpin first, then re-raise.
        let r = catch(|| {
            cancel(pool, idx, recorded(parent).inherited());
        });
        let claimed = unpin_check(pool, idx, gen);
        if let Err(p) = r {
            if claimed {
                // The teardown may end at a root whose pool reference is the last one; the
                // callers up the stack still borrow the pool, so that reference is leaked
                // rather than dropped here (only on this panic path).
                core::mem::forget(tear_down(pool, idx));
            }
            std::panic::resume_unwind(p);
        }
        return claimed;
    }
    let s = node.state.load(Ordering::Acquire);
    pool.lease_sum(idx, gen, s) == 0 && node.life.try_claim(gen)
}

/// For a registered child of generation `gen` that a cancel found with no references left
/// (I11), under its parent's LOCK with its `REG` still set: leaves a note for the thread
/// releasing it or, if it already is a zombie, pins it. `true` when pinned: the caller then
/// propagates the cancel into it and unpins it.
fn pin_pending(node: &Node, gen: u32) -> bool {
    let prev = node.state.fetch_or(PENDING, Ordering::AcqRel);
    prev & ZOMBIE != 0 && node.life.try_pin(gen)
}

/// Unpins a zombie and tears it down if its last leased child is gone (I10, I11). Called by a
/// canceller that holds a reference above `idx`, so the teardown cannot reach the pool.
fn unpin(pool: &PoolInner, idx: u32) {
    // SAFETY: pinned, so not retired: the generation is current (L4).
    let gen = generation(unsafe { pool.node(idx) }.life.load(Ordering::Relaxed));
    if unpin_check(pool, idx, gen) {
        drop(tear_down(pool, idx));
    }
}

/// Releases a pin, then (after a heavy fence, I11) claims the zombie if no leased child is
/// left.
fn unpin_check(pool: &PoolInner, idx: u32, gen: u32) -> bool {
    // SAFETY: pinned: not torn down until this unpin (I11).
    let node = unsafe { pool.node(idx) };
    node.life.unpin();
    // The rare side of the Dekker handshake with `PoolInner::unlease` (I10, I11).
    pool.heavy_fence();
    let s = node.state.load(Ordering::Acquire);
    pool.lease_sum(idx, gen, s) == 0 && node.life.try_claim(gen)
}

/// Counts the release of context `node` (owned by the caller, P2): lifetime and overrun.
#[inline]
fn count_release(
    pool: &PoolInner,
    me: Option<crate::pool::Local<'_>>,
    node: &Node,
    created: u32,
    shard: u16,
) {
    let now = pool.timers.clock.now();
    // SAFETY: owned (P2).
    let (op, dl) = node
        .payload
        .with(|p| unsafe { ((*p).values.op, (*p).values.deadline) });
    let overrun = (shard & D_DEADLINE != 0 && crate::time::clock::expired(now, dl))
        .then(|| now.wrapping_sub(dl));
    pool.metrics
        .released(op, me.map(|l| l.shard), now.wrapping_sub(created), overrun);
}

/// What a torn-down node (shard field `shard`) held on its parent `parent` (`pn`): its lease or
/// its reference, given back. `true` when that made the caller the owner of the parent, which
/// it must then tear down in turn.
#[inline(always)]
fn let_go_of_parent(
    pool: &PoolInner,
    me: Option<crate::pool::Local<'_>>,
    shard: u16,
    parent: u32,
    pn: &Node,
) -> bool {
    if shard & LEASED != 0 {
        // I10: the last leased child of a zombie tears it down. The generation is read
        // while our lease still holds the parent; after `unlease` the parent may be torn
        // down (and its slot reused) at any moment, so everything below is atomic reads
        // and a claim that fails on a stale generation (L4).
        let pgen = generation(pn.life.load(Ordering::Relaxed));
        pool.unlease(me, shard & SHARD_MASK, parent, pn) && {
            // Zombie path: two children released at once must not both miss each other's
            // decrement (the light fence in `unlease` only pairs with the parent's heavy
            // one), so a full fence on each of them before reading the counts.
            crate::sync::fence(Ordering::SeqCst);
            let ps = pn.state.load(Ordering::Acquire);
            pool.lease_sum(parent, pgen, ps) == 0 && pn.life.try_claim(pgen)
        }
    } else {
        pn.life.drop_ref() && may_tear_down(pool, parent)
    }
}

/// The pool reference a torn-down root (node flags `flags`) gave back, for the caller to drop
/// once it no longer uses `pool` (P4); none for a root of the global pool.
#[inline]
fn root_pool_ref(pool: &PoolInner, flags: u16) -> Deferred {
    if flags & F_POOL_REF == 0 {
        return Deferred(None);
    }
    // SAFETY: F_POOL_REF means `publish` (context/builder.rs) stored a reference from
    // `into_raw` for this root (P4); the root is torn down once (L1), so this is that
    // reference's one release, handed to the caller (`Deferred`).
    Deferred(Some(unsafe {
        PoolRef::from_raw(core::ptr::NonNull::from(pool))
    }))
}

/// [`tear_down_at`] of a quiet node (I15): one whose state word the caller read as 0 once it
/// owned the node (slot L1). The usual end of a context. It does what `tear_down_at` does for
/// such a node, less the checks that the zero word answers and the stores of values the fields
/// already hold (`state` 0, `msg` null); a node with a value or a stored backtrace goes the
/// general way. A root gives back its pool reference, if it holds one (P4).
#[inline]
pub(crate) fn tear_down_quiet<'p>(pool: &'p PoolInner, idx: u32, node: &'p Node) -> Deferred {
    debug_assert_eq!(node.state.load(Ordering::Relaxed), 0);
    debug_assert!(node.msg.load(Ordering::Relaxed).is_null());
    // SAFETY: owned (P2).
    let (meta, (shard, flags)) = unsafe { (node.meta(), node.shard_flags()) };
    if flags & (F_VALUE | F_FUNC) != 0 || shard & node::S_BACKTRACE != 0 {
        return tear_down_at(pool, idx, node);
    }
    let me = pool.local();
    if pool.metrics.on() {
        count_release(pool, me, node, meta.created, shard);
    }
    pool.retire(me, idx, node, generation(node.life.load(Ordering::Relaxed)));
    if meta.parent == NIL {
        return root_pool_ref(pool, flags);
    }
    // SAFETY: the node kept its parent live or a zombie (I1, I10).
    let pn = unsafe { pool.node(meta.parent) };
    if let_go_of_parent(pool, me, shard, meta.parent, pn) {
        tear_down_at(pool, meta.parent, pn)
    } else {
        Deferred(None)
    }
}

/// Tears down a node that nothing can reach any more, returns its slot, and releases what it
/// held on its parent (iteratively, so a long chain cannot overflow the stack).
pub(crate) fn tear_down(pool: &PoolInner, idx: u32) -> Deferred {
    // SAFETY: we own the dying slot (L1, P2, I10).
    tear_down_at(pool, idx, unsafe { pool.node(idx) })
}

/// [`tear_down`] of `idx`, whose node the caller already has.
#[inline]
pub(crate) fn tear_down_at<'p>(pool: &'p PoolInner, mut idx: u32, mut node: &'p Node) -> Deferred {
    let mut panic = None;
    let mut deferred = Deferred(None);
    let me = pool.local();
    loop {
        if node.state.load(Ordering::Relaxed) & REGISTERED != 0 {
            unregister(pool, idx);
        }
        // SAFETY: owned (P2).
        let (meta, (shard, flags)) = unsafe { (node.meta(), node.shard_flags()) };
        let custom = (flags & F_VALUE != 0).then(|| {
            node.payload.with(|p| {
                // SAFETY: owned (P2): nobody else reads or writes the payload of a dying slot,
                // and F_VALUE says the custom value was written at creation.
                unsafe { (*p).values.custom.assume_init() }
            })
        });
        debug_assert_eq!(node.children.load(Ordering::Relaxed), NIL);
        if flags & F_FUNC == 0 && pool.metrics.on() {
            count_release(pool, me, node, meta.created, shard);
        }
        if shard & node::S_BACKTRACE != 0 {
            pool.forget_backtrace(idx, generation(node.life.load(Ordering::Relaxed)));
        }
        // I13: an error this node recorded is freed with it (after the slot is back, below).
        let s = node.state.load(Ordering::Acquire);
        let error = state::owns_error(s).then(|| node.msg.load(Ordering::Acquire));
        node.state.store(0, Ordering::Relaxed);
        node.msg.store(core::ptr::null_mut(), Ordering::Relaxed);
        pool.retire(me, idx, node, generation(node.life.load(Ordering::Relaxed)));
        if let Some(err) = error.filter(|e| !e.is_null()) {
            // SAFETY: I13: this node owned the error, and no descendant is left to read it.
            if let Err(p) = catch(|| unsafe { dyncause::drop_raw(err.cast_const()) }) {
                panic.get_or_insert(p);
            }
        }
        if let Some(custom) = custom {
            let mut data = custom.data;
            // SAFETY: `with_value` stored a value with this vtable; the slot was retired above,
            // so this is the one drop of it (I7).
            let r = catch(|| unsafe { (custom.vt.drop)(&mut data) });
            if let Err(p) = r {
                panic.get_or_insert(p);
            }
        }
        let parent = meta.parent;
        if parent == NIL {
            deferred = root_pool_ref(pool, flags);
            break;
        }
        // SAFETY: the node kept its parent live or a zombie (I1, I10).
        let pn = unsafe { pool.node(parent) };
        if !let_go_of_parent(pool, me, shard, parent, pn) {
            break;
        }
        idx = parent;
        node = pn;
    }
    if let Some(p) = panic {
        // Release the pool reference before unwinding (nothing below uses `pool` any more
        // except through the caller, which holds its own reference or is dropping this one).
        drop(deferred);
        std::panic::resume_unwind(p);
    }
    deferred
}
