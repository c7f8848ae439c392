//! loom models of the timer protocol (time R1..R3, D1, D2, K1): arming into the per-thread
//! ring (and the spill list when it is full), the driver's `turn` firing due timers, disarming
//! by release, slot reuse, the lazy expiry of `is_cancelled`, and `after_func` callbacks run by
//! a fire.
//!
//! Under loom the ring holds two entries (so a third timer armed before a turn spills), there
//! is no driver thread, and time moves only through a [`ManualClock`]: a "driver" here is a
//! thread calling [`Pool::turn`]. Natively the same models run as smoke tests on real threads
//! (where the ring holds 4096 entries, so nothing spills).
//!
//! `mod regressions` (native only) keeps the timer bugs found in review fixed.
//!
//! Checks use [`Context::err`] (and [`Cause::error`]) rather than comparing whole causes with
//! a literal, so that they hold whatever payload `DeadlineExceeded` carries.

use std::sync::atomic::{AtomicUsize as StdCounter, Ordering};
use std::time::Duration;

use ctxpool::{Cause, ContextError, ManualClock, Pool, Reason};
use ctxpool_loom_tests::*;

const MS: Duration = Duration::from_millis(1);
/// A deadline no model reaches (below the default maximum timeout of 300 s).
const LONG: Duration = Duration::from_secs(1);
/// A timeout beyond the driver's 64-tick "due soon" window at the default 1 ms resolution.
const FAR: Duration = Duration::from_millis(100);
const DEADLINE: Option<ContextError> = Some(ContextError::DeadlineExceeded);

/// A pool of `capacity` slots on a fresh manual clock (no driver thread: `turn` drives it).
fn manual_pool(capacity: u32) -> (ManualClock, Pool) {
    let clock = ManualClock::new();
    let pool = Pool::builder()
        .capacity(capacity)
        .manual_clock(&clock)
        .build()
        .unwrap();
    (clock, pool)
}

/// Counts the runs of an `after_func` callback.
#[derive(Clone)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn new() -> Self {
        Runs(Arc::new(AtomicUsize::new(0)))
    }

    fn register(&self, ctx: &ctxpool::Context) -> ctxpool::AfterFunc {
        let r = self.0.clone();
        ctx.after_func(move || bump(&r))
    }

    fn get(&self) -> usize {
        get(&self.0)
    }
}

/// Executions (loom) or iterations (native) in which a model reached a path of interest, to
/// show that the model covers it; printed with `--nocapture`. Std atomics: not modelled.
struct Coverage {
    name: &'static str,
    hits: StdCounter,
    runs: StdCounter,
}

impl Coverage {
    const fn new(name: &'static str) -> Self {
        Coverage {
            name,
            hits: StdCounter::new(0),
            runs: StdCounter::new(0),
        }
    }

    fn record(&self, hit: bool) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report(&self) {
        eprintln!(
            "  {}: {} of {} executions",
            self.name,
            self.hits.load(Ordering::Relaxed),
            self.runs.load(Ordering::Relaxed)
        );
    }
}

/// (a, c) Arm vs fire vs disarm, then slot reuse: a context with a 1 ms timer and an
/// `after_func` is dropped (disarm = release) on one thread, which then makes a new context
/// with a long deadline, likely in the freed slot; another thread turns, advances the clock
/// past the old deadline and turns again. Afterwards the main thread fills the pool with
/// long-deadline contexts (so the old slot is reused for certain) and turns once more.
///
/// The old entry may fire while the old context lives, be dropped as stale, or come due after
/// its slot was reused: no new context is ever cancelled by it (D1: `try_upgrade` with the
/// entry's generation), and the callback ran exactly once (the fire or the guard's drop).
#[test]
fn old_timer_never_fires_into_reused_slot() {
    static REUSED_BY_THREAD: Coverage = Coverage::new("old slot reused concurrently");
    model(|| {
        let (clock, pool) = manual_pool(2);
        let old = pool.background().with_timeout(MS);
        let old_slot = old.id().slot;
        let runs = Runs::new();
        let af = runs.register(&old);
        let p = pool.clone();
        let reuser = thread::spawn(move || {
            drop(old);
            // Exhausted if the driver still holds the old context or the callback's slot.
            let new = p.background().try_with_timeout(LONG).ok();
            if let Some(n) = &new {
                assert!(!n.is_cancelled(), "new context cancelled: {:?}", n.cause());
            }
            new
        });
        let (c, p) = (clock.clone(), pool.clone());
        let driver = thread::spawn(move || {
            p.turn();
            c.advance(MS);
            p.turn();
        });
        let new = reuser.join().unwrap();
        driver.join().unwrap();
        REUSED_BY_THREAD.record(new.as_ref().is_some_and(|n| n.id().slot == old_slot));
        assert_eq!(runs.get(), 1, "after_func ran {} times", runs.get());

        let mut news: Vec<_> = new.into_iter().collect();
        while let Ok(g) = pool.background().try_with_timeout(LONG) {
            news.push(g);
        }
        assert!(
            news.iter().any(|g| g.id().slot == old_slot),
            "the old slot was not reused"
        );
        clock.advance(2 * MS);
        pool.turn();
        for g in &news {
            assert!(!g.is_cancelled(), "reused slot cancelled: {:?}", g.cause());
        }
        assert_eq!(runs.get(), 1);
        assert!(!af.stop(), "stop() after the callback ran");
        drop((af, news));
        assert_all_released(&pool);
    });
    REUSED_BY_THREAD.report();
}

/// (c) The timer fires while the owner cancels explicitly: the first cause wins, the callback
/// runs exactly once, and the cause is the explicit one exactly when `cancel` returned `true`.
/// A third outcome: `cancel` first reads the context, finds its deadline passed and expires
/// it lazily (then neither `cancel` nor the turn records anything).
#[test]
fn timer_fire_races_explicit_cancel() {
    static OUTCOMES: [Coverage; 3] = [
        Coverage::new("explicit cancel won"),
        Coverage::new("timer fired"),
        Coverage::new("lazy expiry in cancel() won"),
    ];
    model(|| {
        let (clock, pool) = manual_pool(2);
        let owner = Arc::new(pool.background().with_timeout(MS));
        let runs = Runs::new();
        let af = runs.register(&owner);
        let o = owner.clone();
        let canceller = thread::spawn(move || o.cancel(Reason::Code(1)));
        let (c, p) = (clock.clone(), pool.clone());
        let driver = thread::spawn(move || {
            c.advance(MS);
            p.turn()
        });
        let won = canceller.join().unwrap();
        let fired = driver.join().unwrap();
        assert_eq!(runs.get(), 1, "after_func ran {} times", runs.get());
        let cause = owner.cause().expect("cancelled");
        if won {
            assert_eq!(cause, Cause::Cancelled(Reason::Code(1)));
            assert_eq!(fired, 0, "fired into a context cancelled explicitly");
        } else {
            assert_eq!(cause.error(), ContextError::DeadlineExceeded, "{cause:?}");
            assert!(fired <= 1);
        }
        assert_eq!(pool.timer_stats().fired, fired as u64);
        OUTCOMES[0].record(won);
        OUTCOMES[1].record(fired == 1);
        OUTCOMES[2].record(!won && fired == 0);
        drop((af, owner));
        assert_all_released(&pool);
    });
    OUTCOMES.iter().for_each(Coverage::report);
}

/// (b, d) Ring full → spill: one thread arms three timers (the ring holds two) while another
/// turns, draining the ring under the producer. Then the clock passes every deadline and one
/// turn must fire all three: nothing reads the contexts in between, so no lazy expiry can
/// hide a lost timer. loom checks the ring's cells for data races (R1, R2). The first timer
/// is due within 64 ticks (the driver takes it without a liveness check), the others later
/// (the driver drops them if their context is gone: it must not drop a live one).
#[test]
fn ring_full_spills_and_no_timer_is_lost() {
    static SPILLED: Coverage = Coverage::new("a timer went through the spill list");
    model(|| {
        let (clock, pool) = manual_pool(3);
        let p = pool.clone();
        let producer =
            thread::spawn(move || [MS, FAR, FAR].map(|d| p.background().with_timeout(d)));
        let p = pool.clone();
        let driver = thread::spawn(move || p.turn() + p.turn());
        let guards = producer.join().unwrap();
        assert_eq!(driver.join().unwrap(), 0, "fired before its deadline");
        clock.advance(FAR);
        let fired = pool.turn();
        let st = pool.timer_stats();
        assert_eq!(fired, 3, "a timer was lost: {st:?}");
        assert_eq!((st.armed, st.fired, st.stale), (3, 3, 0), "{st:?}");
        for g in &guards {
            assert_eq!(g.err(), DEADLINE);
        }
        SPILLED.record(st.spilled > 0);
        drop(guards);
        assert_all_released(&pool);
    });
    SPILLED.report();
}

/// (b) Two producers each fill their ring (draining it themselves or spilling), contending on
/// the driver's lock and the shared spill list
/// (a mutex, plus its length hint read without it); then one turn fires all six timers.
/// (With a third thread turning as well, the model takes minutes even at two preemptions;
/// the ring draining under its producer is `ring_full_spills_and_no_timer_is_lost`.)
#[test]
fn two_producers_spill_at_once() {
    model(|| {
        let (clock, pool) = manual_pool(6);
        let p = pool.clone();
        let other = thread::spawn(move || {
            (0..3)
                .map(|_| p.background().with_timeout(MS))
                .collect::<Vec<_>>()
        });
        let mut guards: Vec<_> = (0..3).map(|_| pool.background().with_timeout(MS)).collect();
        guards.extend(other.join().unwrap());
        clock.advance(MS);
        let fired = pool.turn();
        let st = pool.timer_stats();
        assert_eq!(fired, 6, "a timer was lost: {st:?}");
        assert_eq!((st.armed, st.fired, st.stale), (6, 6, 0), "{st:?}");
        if cfg!(loom) {
            // Two entries per ring under loom: a producer whose ring is half full drains it
            // itself when the driver's lock is free, and spills only when it is not (the
            // other producer draining), so at most each producer's third timer spilled.
            assert!(st.spilled <= 2, "{st:?}");
        }
        drop(guards);
        assert_all_released(&pool);
    });
}

/// (b, c) Lazy expiry vs the driver: the clock has passed the deadline; one thread reads the
/// context (whose `is_cancelled` expires it on the spot) while another turns. Both record
/// `DeadlineExceeded` through the same CAS, so every observer reads one cause, and the
/// callback runs once.
#[test]
fn lazy_expiry_races_driver_fire() {
    static FIRED: Coverage = Coverage::new("the driver's fire won");
    model(|| {
        let (clock, pool) = manual_pool(2);
        let owner = pool.background().with_timeout(MS);
        let runs = Runs::new();
        let af = runs.register(&owner);
        clock.advance(MS);
        let ctx = owner.context();
        let reader = thread::spawn(move || {
            assert!(ctx.is_cancelled(), "deadline passed but not cancelled");
            ctx.cause()
        });
        let p = pool.clone();
        let driver = thread::spawn(move || p.turn());
        let seen = reader.join().unwrap();
        let fired = driver.join().unwrap();
        assert_eq!(seen, owner.cause(), "two observers disagree");
        assert_eq!(owner.err(), DEADLINE);
        assert_eq!(runs.get(), 1, "after_func ran {} times", runs.get());
        assert!(fired <= 1);
        FIRED.record(fired == 1);
        drop((af, owner));
        assert_all_released(&pool);
    });
    FIRED.report();
}

/// (b) Lazy expiry through a child vs the driver: the child has no timer of its own (it
/// inherits its parent's deadline), so reading it expires the parent, the timer's owner
/// (`tree::expire`), while the driver fires the same parent. The child reads
/// `Parent(DeadlineExceeded)`, as every later reader does.
#[test]
fn lazy_expiry_through_child_races_driver_fire() {
    model(|| {
        let (clock, pool) = manual_pool(2);
        let parent = pool.background().with_timeout(MS);
        let child = parent.child().build();
        clock.advance(MS);
        let reader = thread::spawn(move || {
            assert!(child.is_cancelled(), "deadline passed but not cancelled");
            let seen = child.cause();
            (child, seen)
        });
        let p = pool.clone();
        let driver = thread::spawn(move || p.turn());
        let (child, seen) = reader.join().unwrap();
        let fired = driver.join().unwrap();
        let seen = seen.expect("cancelled");
        assert!(matches!(seen, Cause::Parent(_)), "{seen:?}");
        assert_eq!(seen.error(), ContextError::DeadlineExceeded);
        assert_eq!(child.cause(), Some(seen));
        assert_eq!(parent.err(), DEADLINE);
        assert!(matches!(parent.cause(), Some(c) if !matches!(c, Cause::Parent(_))));
        assert!(fired <= 1);
        drop((child, parent));
        assert_all_released(&pool);
    });
}

/// (b) A child that relies on its parent's timer (its own timeout is later, so it arms
/// none): an `after_func` is registered on it while another thread advances the clock and
/// turns. The registration reads the child (maybe expiring the parent lazily), links itself
/// up to the parent, or finds the parent cancelled under its lock (I8): in every order the
/// callback has run exactly once when both are done.
#[test]
fn child_after_func_fires_through_parent_timer() {
    model(|| {
        let (clock, pool) = manual_pool(3);
        let parent = pool.background().with_timeout(MS);
        let child = parent.with_timeout(LONG);
        assert_eq!(pool.timer_stats().armed, 1, "the child armed a timer");
        let (c, p) = (clock.clone(), pool.clone());
        let driver = thread::spawn(move || {
            c.advance(MS);
            p.turn()
        });
        let runs = Runs::new();
        let af = runs.register(&child);
        let fired = driver.join().unwrap();
        assert_eq!(runs.get(), 1, "after_func ran {} times", runs.get());
        assert!(fired <= 1);
        assert_eq!(child.err(), DEADLINE);
        assert!(matches!(child.cause(), Some(Cause::Parent(_))));
        assert_eq!(parent.err(), DEADLINE);
        drop((af, child, parent));
        assert_all_released(&pool);
    });
}

/// (b) A task waits on `cancelled()` of a child that relies on its parent's timer while
/// another thread advances the clock and turns: the fire (or the waiter's own lazy read)
/// always wakes it. A lost wake-up is a loom deadlock (natively: a panic after 10 s).
#[test]
fn child_waiter_woken_by_parent_timer() {
    model(|| {
        let (clock, pool) = manual_pool(2);
        let parent = pool.background().with_timeout(MS);
        let child = parent.with_timeout(LONG);
        let (c, p) = (clock.clone(), pool.clone());
        let driver = thread::spawn(move || {
            c.advance(MS);
            p.turn()
        });
        block_on(child.cancelled());
        let fired = driver.join().unwrap();
        assert!(fired <= 1);
        assert_eq!(child.err(), DEADLINE);
        drop((child, parent));
        assert_all_released(&pool);
    });
}

/// (f) Re-entrancy: an `after_func` run by a fire calls `turn` itself, while another thread
/// turns too. Every due timer fires exactly once, each callback runs once, nothing deadlocks
/// (the driver fires outside its lock), and the counters add up.
#[test]
fn after_func_calling_turn() {
    model(|| {
        let (clock, pool) = manual_pool(4);
        let a = pool.background().with_timeout(MS);
        let b = pool.background().with_timeout(MS);
        let (ra, rb) = (Runs::new(), Runs::new());
        let (r, p) = (ra.0.clone(), pool.clone());
        let afa = a.after_func(move || {
            bump(&r);
            p.turn();
        });
        let afb = rb.register(&b);
        clock.advance(MS);
        let p = pool.clone();
        let other = thread::spawn(move || p.turn());
        let mine = pool.turn();
        let theirs = other.join().unwrap();
        assert_eq!((ra.get(), rb.get()), (1, 1));
        assert!(mine + theirs <= 2);
        assert_eq!(pool.timer_stats().fired, 2);
        assert_eq!((a.err(), b.err()), (DEADLINE, DEADLINE));
        drop((afa, afb, a, b));
        assert_all_released(&pool);
    });
}

/// Deterministic, single-threaded reproductions of timer bugs found in review (all fixed), kept
/// as regression tests; native only.
#[cfg(not(loom))]
mod regressions {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{manual_pool, MS};

    /// Counts the runs of an `after_func` callback registered on `ctx`.
    fn count_runs(ctx: &ctxpool::Context) -> (Arc<AtomicUsize>, ctxpool::AfterFunc) {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let af = ctx.after_func(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        (runs, af)
    }

    /// A value whose drop panics.
    struct PanicOnDrop;

    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("PanicOnDrop");
            }
        }
    }

    /// Was a bug (f): `tree_fire` dropped its context reference outside `catch_unwind`. When that drop
    /// is the last reference, the release cascades to ancestors and may run a value's `Drop`;
    /// a panic there unwinds out of `turn`, and the rest of that turn's due list is dropped:
    /// those timers never fire (only a lazy read would still see them expired; waiters and
    /// `after_func`s are never run). On the driver thread the panic also ends the thread, so
    /// no timer of the pool fires again; periodic jobs taken for that turn are lost.
    #[test]
    fn panic_in_release_after_fire_loses_other_due_timers() {
        let (clock, pool) = manual_pool(8);
        let value = pool.background().with_value(PanicOnDrop);
        let first = value.with_timeout(MS);
        drop(value); // `first` now holds the value node's last reference
        let ctx = first.context();
        // Dropping the guard inside its own callback leaves the driver's reference the last.
        let owner = Mutex::new(Some(first));
        let _af = ctx.after_func(move || drop(owner.lock().unwrap().take()));
        drop(ctx);
        let second = pool.background().with_timeout(MS);
        let (runs, _af2) = count_runs(&second);
        clock.advance(MS);
        // The turn completes (every due timer fires), then re-raises the value's panic.
        let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.turn()));
        assert!(
            turn.is_err(),
            "the panic is re-raised to the caller of turn"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the second timer was lost");
        // The driver keeps working afterwards.
        let third = pool.background().with_timeout(MS);
        let (runs3, _af3) = count_runs(&third);
        clock.advance(MS);
        pool.turn();
        assert_eq!(runs3.load(Ordering::SeqCst), 1);
    }

    /// Was a bug (b): `with_deadline` clamped only from above. A deadline 2^31 ms (24.8 days) or more
    /// in the past wraps in the 32-bit stored tick and reads as up to 24.8 days in the future:
    /// `is_cancelled` is false and the driver schedules it that far ahead. Reachable on any
    /// pool older than 24.8 days, since `tick_of` saturates instants before the pool's epoch
    /// at tick 0.
    #[test]
    fn deadline_long_past_reads_as_expired() {
        let (clock, pool) = manual_pool(8);
        let long_ago = clock.now();
        clock.advance(Duration::from_millis((1 << 31) + 10));
        let g = pool.background().with_deadline(long_ago);
        pool.turn();
        assert!(g.is_cancelled(), "remaining {:?}", g.remaining());
    }

    /// Was a bug (b), manual clock: a timer still in its arm ring when the clock moves on by 2^31 ms
    /// or more in one step is widened to the wrong 32-bit epoch and scheduled ~24.8 days
    /// ahead (`clock::widen`); lazy reads also see it unexpired. The K1 comment assumes "an
    /// expired deadline is fired by the driver within a tick", which a manual clock (or a
    /// manual-mode pool not turned for 24.8 days) does not guarantee.
    #[test]
    fn big_manual_clock_step_fires_armed_timer() {
        let (clock, pool) = manual_pool(8);
        let g = pool.background().with_timeout(MS);
        let (runs, _af) = count_runs(&g);
        clock.advance(Duration::from_millis((1 << 31) + 10));
        assert_eq!(pool.turn(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    /// Was a bug (wheel W1): the top level (level 5) wraps every 64^6 ticks (795 days at 1 ms). A
    /// timer whose due tick crosses that boundary lands in slot 0 while `elapsed` is in slot
    /// 63; `next_expiration` masks slots below `now_slot` instead of rotating, so the entry is
    /// invisible until `elapsed` crosses the boundary: it fires one turn late (release), and
    /// in debug builds the `debug_assert` panics under the driver's lock, poisoning it, after
    /// which every `turn` returns 0 at `try_lock` (all timers of the pool stop).
    #[test]
    fn timer_across_top_level_wrap_fires_on_time() {
        let (clock, pool) = manual_pool(8);
        let top: u64 = 1 << 36; // 64^6 ticks of 1 ms
        let step = 1u64 << 30; // below 2^31: nothing is misread on the way
        let mut now = 0;
        while now + step < top - 5 {
            clock.advance(Duration::from_millis(step));
            now += step;
            pool.turn();
        }
        clock.advance(Duration::from_millis(top - 5 - now));
        pool.turn();
        let g = pool.background().with_timeout(10 * MS); // due at tick 64^6 + 5
        let (runs, _af) = count_runs(&g);
        let turn = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.turn()));
        assert!(turn().is_ok(), "turn panicked (W1 debug_assert)");
        clock.advance(10 * MS);
        assert!(turn().is_ok(), "turn panicked (W1 debug_assert)");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "not fired at its tick");
    }
}
