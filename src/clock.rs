//! The coarse clock used to stamp context creation: one relaxed atomic load per read.
//!
//! Reading `Instant::now()` costs about as much as creating a context, so creation reads a
//! millisecond tick that a background thread (`ctxpool-clock`, started on first use, one wake-up
//! per millisecond) keeps current. Ticks are milliseconds since the clock started, truncated to
//! 32 bits: ages are computed with wrapping arithmetic and are exact below 49 days.
//!
//! Under `--cfg loom` the clock is frozen at zero (time is not what the models check).

#[cfg(not(loom))]
mod imp {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    static TICK: AtomicU32 = AtomicU32::new(0);
    static START: OnceLock<Instant> = OnceLock::new();

    fn start() -> Instant {
        *START.get_or_init(|| {
            let start = Instant::now();
            let spawned = std::thread::Builder::new()
                .name("ctxpool-clock".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(1));
                    TICK.store(start.elapsed().as_millis() as u32, Ordering::Relaxed);
                });
            // Without the thread, `now` still advances on every `precise` read.
            drop(spawned);
            start
        })
    }

    /// The current tick (milliseconds, wrapping).
    #[inline]
    pub(crate) fn now() -> u32 {
        if START.get().is_none() {
            start();
        }
        TICK.load(Ordering::Relaxed)
    }

    /// A precise reading, which also refreshes the coarse tick.
    pub(crate) fn precise() -> u32 {
        let t = start().elapsed().as_millis() as u32;
        TICK.fetch_max(t, Ordering::Relaxed);
        t
    }
}

#[cfg(loom)]
mod imp {
    /// Frozen under loom.
    pub(crate) fn now() -> u32 {
        0
    }

    /// Frozen under loom.
    pub(crate) fn precise() -> u32 {
        0
    }
}

pub(crate) use imp::{now, precise};
