//! Time sources: a coarse millisecond tick read with one relaxed load, and a manual clock for
//! tests and simulations.
//!
//! A pool keeps time in *ticks*: milliseconds since the pool's clock started. The full count is
//! a `u64`; nodes store the low 32 bits (`created`, `deadline`) and compare them with wrapping
//! arithmetic, which is exact for differences below 2^31 ms (24.8 days): deadlines are at most
//! [`MAX_TIMEOUT`](crate::config) (7 days) ahead, and an expired deadline is fired by the
//! driver within a tick.
//!
//! - **Real clock**: while the driver thread ticks, its `turn` stores `epoch.elapsed()` in
//!   milliseconds into the pool's own tick word every tick, and the hot path reads that word
//!   (one relaxed load) without calling `Instant::now()`. When nobody keeps the word fresh —
//!   the driver thread sleeps (nothing due for a while, `driver.rs`), or the pool has no driver
//!   thread at all ([`DriverMode::Manual`](crate::DriverMode::Manual) on the real clock) — the
//!   word carries a `stale` flag, and every read then takes the time from `Instant::now()`
//!   itself (and pushes the word forward, K1).
//! - **Manual clock** ([`ManualClock`]): time moves only when the test calls
//!   [`ManualClock::advance`]; the pool's tick word is the manual clock's, never stale.
//!
//! A *deadline* is never counted from the tick word: it is counted from an upper bound of the
//! precise time (`Clock::precise_bracket`: the TSC anchor of `tsc.rs`, or `Instant::now()`)
//! and rounded *up* to a whole tick, so a deadline never reads as expired before the instant
//! asked for (the tick word is at most the floor of real time), and `Context::deadline()` is
//! at or after that instant and less than one tick (plus the bracket's few microseconds,
//! `tsc.rs` T1) after it.
//!
//! Invariants:
//!
//! - **K1** a pool's tick never decreases (stores are `fetch_max` for the real clock,
//!   `fetch_add` for the manual one), so a deadline seen expired stays expired.
//! - **K2** the tick word never exceeds real time (it is `floor` of the elapsed milliseconds
//!   at some past instant), so a deadline rounded up from the precise time is never early.
//! - **K3** a read of the real clock's tick either finds `stale` clear, in which case the word
//!   was refreshed by the driver after it last woke (the driver stores the tick, then clears
//!   `stale` with `Release`; the reader loads `stale` with `Acquire`) and the driver wakes every
//!   tick until it sets `stale` again; or it finds `stale` set and reads `Instant::now()`. So
//!   no read sees a tick older than one driver period plus the driver's wake-up latency.
//! - **K4** a context whose requested instant is not after the precise time when it is made
//!   (`with_timeout(Duration::ZERO)`, `with_deadline(past)`) is born cancelled with
//!   `DeadlineExceeded` (or its cancelled ancestor's cause, tree I12) and arms no timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::thread::Thread;
use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering};

/// A clock that moves only when told to: for deterministic tests of deadlines.
///
/// Build a pool on it with [`PoolBuilder::manual_clock`](crate::PoolBuilder::manual_clock);
/// such a pool has no driver thread, so fire due timers with [`Pool::turn`](crate::Pool::turn).
///
/// ```
/// use std::time::Duration;
/// use ctxpool::{ManualClock, Pool};
///
/// let clock = ManualClock::new();
/// let pool = Pool::builder().manual_clock(&clock).build().unwrap();
/// let ctx = pool.background().with_timeout(Duration::from_millis(30));
/// clock.advance(Duration::from_millis(29));
/// pool.turn();
/// assert!(!ctx.is_cancelled());
/// clock.advance(Duration::from_millis(1));
/// pool.turn();
/// assert!(ctx.is_cancelled());
/// ```
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

/// A tick word and its epoch: a manual clock's, or a pool's real clock's (then written by its
/// driver every tick: on a line of its own, so that it does not bounce other data between the
/// driver and the threads making contexts).
struct ManualInner {
    /// Milliseconds since `epoch` (K1: only ever increased) and the real clock's `stale` flag
    /// (K3; never set on a manual clock), on one line.
    word: crossbeam_utils::CachePadded<TickWord>,
    epoch: Instant,
}

struct TickWord {
    ms: AtomicU64,
    stale: AtomicBool,
    /// The driver is in a long sleep (time D5): a thread that hands it work, or reads the
    /// clock, wakes it.
    sleeping: AtomicBool,
}

impl ManualInner {
    fn new(stale: bool) -> Arc<Self> {
        Arc::new(ManualInner {
            word: crossbeam_utils::CachePadded::new(TickWord {
                ms: AtomicU64::new(0),
                stale: AtomicBool::new(stale),
                sleeping: AtomicBool::new(false),
            }),
            epoch: Instant::now(),
        })
    }
}

impl ManualClock {
    /// A manual clock reading zero.
    pub fn new() -> Self {
        ManualClock {
            inner: ManualInner::new(false),
        }
    }

    /// Moves the clock forward by `d`, in whole milliseconds (rounded down).
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2);
        self.inner.word.ms.fetch_add(ms, Ordering::Release);
    }

    /// The time elapsed on this clock since it was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.inner.word.ms.load(Ordering::Acquire))
    }

    /// The current time of this clock as an `Instant` (its creation instant plus
    /// [`elapsed`](ManualClock::elapsed)), for [`Context::with_deadline`](crate::Context::with_deadline).
    pub fn now(&self) -> Instant {
        self.inner.epoch + self.elapsed()
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

/// A pool's time source.
pub(crate) struct Clock {
    /// The tick word: the real clock's own (milliseconds since `epoch`, refreshed by the
    /// driver), or the manual clock's. Reading it is the same load either way.
    tick: Arc<ManualInner>,
    epoch: Instant,
    manual: bool,
    /// The thread that sleeps in `driver::sleep` (time D5), woken by `wake_sleeper`.
    sleeper: Mutex<Option<Thread>>,
    /// The TSC anchor of a real clock, where the TSC is usable (`tsc.rs`): the precise time
    /// without `Instant::now()`.
    anchor: Option<super::tsc::Anchor>,
}

impl Clock {
    /// The real clock. `driven`: a driver thread will keep the tick fresh (it clears `stale`
    /// after its first refresh); otherwise the word stays `stale` and every read takes the
    /// time from `Instant::now()` (K3).
    pub(crate) fn real(driven: bool) -> Self {
        let tick = ManualInner::new(!driven && cfg!(not(loom)));
        Clock {
            epoch: tick.epoch,
            tick,
            manual: false,
            sleeper: Mutex::new(None),
            anchor: super::tsc::Anchor::new(),
        }
    }

    /// A pool clock on manual clock `clock`.
    pub(crate) fn manual(clock: &ManualClock) -> Self {
        Clock {
            epoch: clock.inner.epoch,
            tick: clock.inner.clone(),
            manual: true,
            sleeper: Mutex::new(None),
            anchor: None,
        }
    }

    #[inline]
    fn word(&self) -> &AtomicU64 {
        &self.tick.word.ms
    }

    /// The current tick (full width): the tick word, or the precise time when the word is
    /// stale (K3).
    #[inline]
    pub(crate) fn now64(&self) -> u64 {
        // Under loom no driver thread exists and real clocks are never stale (`real`): the
        // models check the protocols around the tick, not its freshness.
        #[cfg(not(loom))]
        if self.tick.word.stale.load(Ordering::Acquire) {
            return self.catch_up();
        }
        self.word().load(Ordering::Relaxed)
    }

    /// A read while nobody keeps the tick word fresh: the precise time, pushed into the word
    /// (K1) so that no later read of the word returns less.
    ///
    /// A driver that sleeps because nothing was due is woken: somebody uses the pool again,
    /// and a ticking driver makes the next reads cheap again (time D5).
    #[cold]
    #[inline(never)]
    #[cfg_attr(loom, allow(dead_code))]
    fn catch_up(&self) -> u64 {
        let t = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
        // K1 with one RMW per millisecond at most, not one per read.
        let cur = self.word().load(Ordering::Relaxed);
        let t = if t > cur {
            self.word().fetch_max(t, Ordering::Relaxed).max(t)
        } else {
            cur
        };
        if self.driver_sleeping() {
            self.wake_sleeper();
        }
        t
    }

    /// Whether the driver is in a long sleep (time D5): one relaxed load.
    #[inline]
    pub(crate) fn driver_sleeping(&self) -> bool {
        self.tick.word.sleeping.load(Ordering::Relaxed)
    }

    /// Wakes the sleeping driver; only the first caller of a sleep unparks it (D5).
    #[cold]
    #[inline(never)]
    pub(crate) fn wake_sleeper(&self) {
        if self.tick.word.sleeping.swap(false, Ordering::AcqRel) {
            if let Some(t) = self
                .sleeper
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                t.unpark();
            }
        }
    }

    /// Registers the current thread as the one that sleeps (the driver, D5).
    pub(crate) fn set_sleeper(&self) {
        *self.sleeper.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(crate::sync::thread::current());
    }

    /// Starts a long sleep of the driver: marks the tick stale (K3) and the driver sleeping
    /// (D5). The caller then runs the heavy fence and looks for work before it parks.
    pub(crate) fn begin_sleep(&self) {
        if !self.manual {
            self.tick.word.stale.store(true, Ordering::Release);
        }
        self.tick.word.sleeping.store(true, Ordering::Relaxed);
    }

    /// Ends a sleep; returns whether somebody woke the driver (rather than its timeout).
    pub(crate) fn end_sleep(&self) -> bool {
        !self.tick.word.sleeping.swap(false, Ordering::AcqRel)
    }

    /// Marks the real tick word stale (the driver is about to sleep past the next tick) or
    /// fresh (the driver refreshed it and ticks again), K3. Only the driver thread calls this.
    #[cfg(not(loom))]
    pub(crate) fn set_stale(&self, stale: bool) {
        if !self.manual {
            self.tick.word.stale.store(stale, Ordering::Release);
        }
    }

    /// The precise time since the epoch, as an upper bound (see [`Clock::precise_bracket`]).
    #[inline]
    #[cfg_attr(loom, allow(dead_code))] // the driver thread's sleep, not built under loom
    pub(crate) fn precise(&self) -> Duration {
        Duration::from_nanos(self.precise_bracket().1)
    }

    /// The precise time since the epoch in nanoseconds, bracketed: `(lower, upper)` with
    /// lower ≤ the time of the call ≤ upper. What deadlines are counted from (K2): a deadline
    /// counted from `upper` is never early, and "already past" is decided against `lower`.
    /// On the real clock the TSC anchor gives a bracket a few microseconds wide without
    /// calling `Instant::now()` (`tsc.rs`, T1); otherwise (no usable TSC, an anchor too old)
    /// it is one `Instant::now()` reading, which also re-anchors. The manual clock's time is
    /// exact. In integers, not `Duration`s: this is on the path of every timed context made.
    #[inline]
    pub(crate) fn precise_bracket(&self) -> (u64, u64) {
        if self.manual {
            let t = self
                .word()
                .load(Ordering::Acquire)
                .saturating_mul(NS_PER_MS);
            return (t, t);
        }
        if let Some(b) = self.anchor.as_ref().and_then(super::tsc::Anchor::read) {
            return (b.lower, b.upper);
        }
        self.precise_slow()
    }

    /// [`precise_bracket`](Clock::precise_bracket) from `Instant::now()`.
    #[cold]
    #[inline(never)]
    fn precise_slow(&self) -> (u64, u64) {
        let t = match &self.anchor {
            Some(a) => a.refresh(|| self.elapsed_ns()),
            None => self.elapsed_ns(),
        };
        (t, t)
    }

    /// Nanoseconds since the epoch from `Instant::now()` (fits in `u64` for 584 years).
    #[inline]
    fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX / 2)
    }

    /// The current tick, truncated to what nodes store.
    #[inline]
    pub(crate) fn now(&self) -> u32 {
        self.now64() as u32
    }

    /// Reads real time into the tick (the driver calls this every turn); returns the tick.
    pub(crate) fn refresh(&self) -> u64 {
        if self.manual {
            self.word().load(Ordering::Acquire)
        } else {
            let t = match &self.anchor {
                // A new TSC anchor too, from the same readings (`tsc.rs`).
                Some(a) => a.refresh(|| self.elapsed_ns()) / 1_000_000,
                None => u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
            };
            // K1: never backwards, whoever refreshes concurrently.
            self.word().fetch_max(t, Ordering::Relaxed).max(t)
        }
    }

    /// Milliseconds since the epoch, as precisely as the clock allows: `Instant::now()` for the
    /// real clock, the manual time otherwise. Also refreshes the real tick.
    pub(crate) fn precise_ms(&self) -> f64 {
        if self.manual {
            self.word().load(Ordering::Acquire) as f64
        } else {
            let e = self.epoch.elapsed();
            let t = u64::try_from(e.as_millis()).unwrap_or(u64::MAX);
            self.word().fetch_max(t, Ordering::Relaxed);
            e.as_secs_f64() * 1e3
        }
    }

    /// Nanoseconds since the epoch on the real clock (the manual clock's time otherwise).
    #[cfg(not(loom))]
    pub(crate) fn elapsed_nanos(&self) -> u128 {
        if self.manual {
            u128::from(self.word().load(Ordering::Acquire)) * 1_000_000
        } else {
            self.epoch.elapsed().as_nanos()
        }
    }

    /// The full tick of a stored (wrapped) tick `t`, relative to now.
    #[inline]
    pub(crate) fn widen(&self, t: u32) -> u64 {
        widen(self.now64(), t)
    }

    /// The instant of full tick `t`.
    pub(crate) fn instant(&self, t: u64) -> Instant {
        self.epoch + Duration::from_millis(t)
    }

    /// The tick at or after `at` (deadlines never round down), saturating at zero.
    pub(crate) fn tick_of(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
        u64::try_from(ms).unwrap_or(u64::MAX / 2)
    }

    /// `at` in nanoseconds since the epoch (0 if before it), saturating.
    #[inline]
    pub(crate) fn ns_of(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }

    /// What is left until full tick `t`: precise for the real clock.
    pub(crate) fn remaining(&self, t: u64) -> Duration {
        if self.manual {
            Duration::from_millis(t.saturating_sub(self.now64()))
        } else {
            // From the upper bound of the precise time: never more than is truly left (what
            // an outgoing `grpc-timeout` is made from), at most the bracket's few
            // microseconds less.
            Duration::from_nanos(
                t.saturating_mul(NS_PER_MS)
                    .saturating_sub(self.precise_bracket().1),
            )
        }
    }
}

/// The full tick of stored tick `t`, given the full tick `now` (K1; differences below 2^31).
#[inline]
pub(crate) fn widen(now: u64, t: u32) -> u64 {
    let diff = t.wrapping_sub(now as u32) as i32;
    now.wrapping_add_signed(i64::from(diff))
}

/// Whether stored tick `deadline` has passed at tick `now` (both wrapped).
#[inline]
pub(crate) fn expired(now: u32, deadline: u32) -> bool {
    now.wrapping_sub(deadline) as i32 >= 0
}

/// Nanoseconds in a millisecond.
pub(crate) const NS_PER_MS: u64 = 1_000_000;

/// `d` in nanoseconds, saturating (no 128-bit arithmetic: this is on the hot path).
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// `d` in whole milliseconds, rounded up, saturating.
#[inline]
pub(crate) fn ceil_ms(d: Duration) -> u64 {
    // In `u64` (no 128-bit arithmetic on the hot path): whole seconds are whole milliseconds,
    // so rounding the sub-second part up rounds the whole up.
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_nanos().div_ceil(1_000_000)))
        .min(u64::MAX / 2)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn widen_and_expiry_across_the_wrap() {
        let now = (1u64 << 32) + 5; // the stored tick wrapped to 5
        assert_eq!(widen(now, 10), now + 5);
        assert_eq!(widen(now, u32::MAX), now - 6);
        assert!(expired(5, u32::MAX));
        assert!(expired(5, 5));
        assert!(!expired(5, 6));
        assert!(!expired(u32::MAX, 3)); // 3 is after the wrap
    }

    #[test]
    fn ceil_rounds_up_partial_milliseconds() {
        assert_eq!(ceil_ms(Duration::ZERO), 0);
        assert_eq!(ceil_ms(Duration::from_micros(1)), 1);
        assert_eq!(ceil_ms(Duration::from_millis(30)), 30);
        assert_eq!(ceil_ms(Duration::from_micros(30_001)), 31);
        assert_eq!(ceil_ms(Duration::new(2, 999_999_999)), 3000);
        assert_eq!(ceil_ms(Duration::MAX), u64::MAX / 2);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let clock = Clock::manual(&c);
        assert_eq!(clock.refresh(), 0);
        c.advance(Duration::from_millis(7));
        assert_eq!(clock.now(), 7);
        assert_eq!(clock.remaining(10), Duration::from_millis(3));
        assert_eq!(c.now(), c.now()); // stable without advancing
    }
}
