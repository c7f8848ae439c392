//! Time sources: a coarse millisecond tick read with one relaxed load, and a manual clock for
//! tests and simulations.
//!
//! A pool keeps time in *ticks*: milliseconds since the pool's clock started. The full count is
//! a `u64`; nodes store the low 32 bits (`created`, `deadline`) and compare them with wrapping
//! arithmetic, which is exact for differences below 2^31 ms (24.8 days): deadlines are at most
//! [`MAX_TIMEOUT`](crate::config) (7 days) ahead, and an expired deadline is fired by the
//! driver within a tick.
//!
//! - **Real clock**: the driver's `turn` stores `epoch.elapsed()` in milliseconds into the
//!   pool's own tick word; the hot path reads that word (one relaxed load) and never calls
//!   `Instant::now()`. The tick lags real time by less than one driver period.
//! - **Manual clock** ([`ManualClock`]): time moves only when the test calls
//!   [`ManualClock::advance`]; the pool's tick word is the manual clock's.
//!
//! Invariant **K1**: a pool's tick never decreases (stores are `fetch_max` for the real clock,
//! `fetch_add` for the manual one), so a deadline seen expired stays expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{AtomicU64, Ordering};

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
    /// Milliseconds since `epoch` (K1: only ever increased).
    ms: crossbeam_utils::CachePadded<AtomicU64>,
    epoch: Instant,
}

impl ManualInner {
    fn new() -> Arc<Self> {
        Arc::new(ManualInner {
            ms: crossbeam_utils::CachePadded::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        })
    }
}

impl ManualClock {
    /// A manual clock reading zero.
    pub fn new() -> Self {
        ManualClock {
            inner: ManualInner::new(),
        }
    }

    /// Moves the clock forward by `d`, in whole milliseconds (rounded down).
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2);
        self.inner.ms.fetch_add(ms, Ordering::Release);
    }

    /// The time elapsed on this clock since it was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.inner.ms.load(Ordering::Acquire))
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
}

impl Clock {
    pub(crate) fn real() -> Self {
        let tick = ManualInner::new();
        Clock {
            epoch: tick.epoch,
            tick,
            manual: false,
        }
    }

    pub(crate) fn manual(clock: &ManualClock) -> Self {
        Clock {
            epoch: clock.inner.epoch,
            tick: clock.inner.clone(),
            manual: true,
        }
    }

    #[inline]
    fn word(&self) -> &AtomicU64 {
        &self.tick.ms
    }

    /// The current tick (full width).
    #[inline]
    pub(crate) fn now64(&self) -> u64 {
        self.word().load(Ordering::Relaxed)
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
            let t = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
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

    /// What is left until full tick `t`: precise for the real clock.
    pub(crate) fn remaining(&self, t: u64) -> Duration {
        if self.manual {
            Duration::from_millis(t.saturating_sub(self.now64()))
        } else {
            self.instant(t).saturating_duration_since(Instant::now())
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
