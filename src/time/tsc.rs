//! A cheap bracket of the precise time: the CPU's time-stamp counter, re-anchored to
//! `Instant::now()` by the driver every tick.
//!
//! Deadlines are counted from the precise time (clock K2), and `Instant::now()` costs 20 to
//! 60 ns on the virtual machines servers run on, once per timed context. Reading the TSC costs
//! a few nanoseconds. An *anchor* pairs a TSC reading with the `Instant` readings taken just
//! before and after it; the time now is then the anchor's plus the cycles since, scaled. The
//! anchor is refreshed by every driver turn (and by every fallback read), so the estimate
//! extrapolates over at most [`MAX_GAP_NS`]; past that, or before the scale is calibrated,
//! or where the TSC is not the kernel's clock source, readers fall back to `Instant::now()`.
//!
//! ```text
//!   anchor:  lo = Instant (ns) ─ tsc = rdtsc ─ hi = Instant (ns)        lo ≤ true(tsc) ≤ hi
//!   read:    Δ = (rdtsc − tsc) × scale          lower = lo + Δ − slack,  upper = hi + Δ + slack
//!            slack = Δ / 1000 + SLACK_NS (scale error, NTP slewing of CLOCK_MONOTONIC, skew)
//! ```
//!
//! Invariants (cited as **T1**..**T3**):
//!
//! - **T1** `lower ≤ true time ≤ upper` at the read: `lo` and `hi` bracket the anchor's TSC
//!   reading (taken in that order on one thread), the cycles since are scaled by a rate
//!   measured over at least [`CALIBRATE_NS`] against `Instant` itself (error below 10⁻⁵), and
//!   the slack covers 0.1% of the gap (CLOCK_MONOTONIC is slewed by at most 0.05%) plus
//!   [`SLACK_NS`] for TSC skew between cores. An anchor whose two `Instant` readings are more
//!   than [`MAX_SPREAD_NS`] apart (the thread was preempted between them) is not stored.
//! - **T2** the anchor's fields are read under a seqlock: a reader that sees the sequence odd
//!   or changed falls back to `Instant::now()`, so it never mixes two anchors.
//! - **T3** a reader whose TSC is behind the anchor's (another core's counter, or a wrapped
//!   difference) or whose gap exceeds [`MAX_GAP_NS`] falls back: extrapolation is bounded.

use crate::sync::{fence, AtomicU64, Ordering};

/// The longest extrapolation from an anchor: 4 ms (a few driver ticks).
pub(crate) const MAX_GAP_NS: u64 = 4_000_000;
/// Fixed slack added to both sides of the bracket (T1).
pub(crate) const SLACK_NS: u64 = 1_000;
/// The scale is used once measured over this long (T1).
pub(crate) const CALIBRATE_NS: u64 = 20_000_000;
/// An anchor whose `Instant` readings are farther apart is dropped (T1).
pub(crate) const MAX_SPREAD_NS: u64 = 2_000;

/// The counter, or `None` where there is none usable.
#[inline(always)]
fn rdtsc() -> u64 {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    {
        // SAFETY: `rdtsc` reads the time-stamp counter; it has no preconditions and touches no
        // memory (x86-64 always has it).
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
    {
        0
    }
}

/// Whether the TSC is the kernel's clock source (so it is invariant and synchronised across
/// CPUs, as the kernel itself relies on); decided once per process.
fn usable() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux", not(loom), not(miri)))]
    {
        static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *USABLE.get_or_init(|| {
            std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .is_ok_and(|s| s.trim() == "tsc")
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(loom), not(miri))))]
    {
        false
    }
}

/// The anchor of a real clock (see the module docs).
pub(crate) struct Anchor {
    /// Even when stable, odd while a writer updates the fields below (T2).
    seq: AtomicU64,
    lo: AtomicU64,
    hi: AtomicU64,
    tsc: AtomicU64,
    /// Nanoseconds per cycle, times 2^32; 0 until calibrated.
    scale: AtomicU64,
    /// The first anchor (`lo`, `tsc`), which the scale is measured from; written once.
    first: [AtomicU64; 2],
}

/// A bracket of the precise time, in nanoseconds since the clock's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bracket {
    pub(crate) lower: u64,
    pub(crate) upper: u64,
}

impl Anchor {
    /// An anchor, or `None` where the TSC is not usable.
    pub(crate) fn new() -> Option<Anchor> {
        usable().then(|| Anchor {
            seq: AtomicU64::new(0),
            lo: AtomicU64::new(0),
            hi: AtomicU64::new(0),
            tsc: AtomicU64::new(0),
            scale: AtomicU64::new(0),
            first: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// Takes a new anchor from `elapsed` (nanoseconds since the epoch, read from `Instant`);
    /// returns the precise time it read (the later reading).
    pub(crate) fn refresh(&self, elapsed: impl Fn() -> u64) -> u64 {
        let lo = elapsed();
        let tsc = rdtsc();
        let hi = elapsed();
        if hi.saturating_sub(lo) > MAX_SPREAD_NS {
            return hi;
        }
        // Seqlock writer; a concurrent writer wins and this anchor is dropped.
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 != 0
            || self
                .seq
                .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return hi;
        }
        fence(Ordering::Release);
        let (lo0, tsc0) = (
            self.first[0].load(Ordering::Relaxed),
            self.first[1].load(Ordering::Relaxed),
        );
        if tsc0 == 0 {
            self.first[0].store(lo, Ordering::Relaxed);
            self.first[1].store(tsc, Ordering::Relaxed);
        } else if lo.saturating_sub(lo0) >= CALIBRATE_NS && tsc > tsc0 {
            let scale =
                ((u128::from(lo - lo0) << 32) / u128::from(tsc - tsc0)).min(u128::from(u64::MAX));
            self.scale.store(scale as u64, Ordering::Relaxed);
        }
        self.lo.store(lo, Ordering::Relaxed);
        self.hi.store(hi, Ordering::Relaxed);
        self.tsc.store(tsc, Ordering::Relaxed);
        self.seq.store(s + 2, Ordering::Release);
        hi
    }

    /// The precise time now, bracketed (T1), or `None`: fall back to `Instant::now()`.
    #[inline]
    pub(crate) fn read(&self) -> Option<Bracket> {
        let s = self.seq.load(Ordering::Acquire);
        let (lo, hi, tsc, scale) = (
            self.lo.load(Ordering::Relaxed),
            self.hi.load(Ordering::Relaxed),
            self.tsc.load(Ordering::Relaxed),
            self.scale.load(Ordering::Relaxed),
        );
        fence(Ordering::Acquire);
        if s & 1 != 0 || self.seq.load(Ordering::Relaxed) != s || scale == 0 {
            return None;
        }
        let now = rdtsc();
        let cycles = now.checked_sub(tsc)?;
        let gap = (u128::from(cycles) * u128::from(scale)) >> 32;
        if gap > u128::from(MAX_GAP_NS) {
            return None;
        }
        let gap = gap as u64;
        let slack = gap / 1000 + SLACK_NS;
        Some(Bracket {
            lower: (lo + gap).saturating_sub(slack),
            upper: hi + gap + slack,
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn bracket_holds_the_precise_time() {
        let Some(a) = Anchor::new() else {
            return; // no usable TSC here: readers always fall back
        };
        let epoch = Instant::now();
        let elapsed = || epoch.elapsed().as_nanos() as u64;
        a.refresh(elapsed);
        assert_eq!(a.read(), None, "used before calibration");
        while elapsed() < CALIBRATE_NS + 1_000_000 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // A loaded machine can preempt a refresh between its two `Instant` readings (the anchor
        // is then dropped, T1) or move the thread between cores, so reads may fall back for a
        // while: try until 200 brackets are checked or 10 s pass.
        let mut checked = 0;
        let mut tries = 0u64;
        while checked < 200 && elapsed() < 10_000_000_000 {
            tries += 1;
            if tries % 1_000 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            a.refresh(elapsed);
            let before = elapsed();
            if let Some(b) = a.read() {
                let after = elapsed();
                // T1: lower ≤ the time of the read ≤ upper; the read lies between the two
                // `Instant` readings around it.
                assert!(b.lower <= after, "{b:?} after {after}");
                assert!(b.upper >= before, "{b:?} before {before}");
                assert!(b.upper - b.lower < 20_000, "{b:?}");
                checked += 1;
            }
        }
        assert!(checked > 0, "never read a bracket in {tries} tries");
    }
}
