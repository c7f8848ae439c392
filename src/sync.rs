//! The one place that names atomics, cells, locks and thread primitives.
//!
//! Every lock-free algorithm in the crate imports its primitives from here, so that building
//! with `RUSTFLAGS="--cfg loom"` swaps all of them for [loom]'s model-checked versions at once
//! (the pattern of `tokio/src/loom` and `sharded-slab/src/sync.rs`). A stray
//! `std::sync::atomic` import elsewhere would be a race that loom never sees; `grep` for it.
//!
//! On the std side [`UnsafeCell`] gets loom's closure API (`with` / `with_mut`), so the same code
//! compiles both ways and every raw access to a cell is a visible, greppable point.
//!
//! [loom]: https://docs.rs/loom

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
};

pub(crate) use std::sync::atomic::Ordering;

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;

/// Thread parking, for the blocking `wait`.
pub(crate) mod thread {
    #[cfg(loom)]
    pub(crate) use loom::thread::{current, park, Thread};
    #[cfg(not(loom))]
    pub(crate) use std::thread::{current, park, park_timeout, Thread};
}

/// One step of a bounded spin: a CPU hint natively, a scheduling point under loom (a loom model
/// that spins without yielding never terminates).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// `UnsafeCell` with loom's access API.
pub(crate) mod cell {
    #[cfg(loom)]
    pub(crate) use loom::cell::UnsafeCell;

    /// std `UnsafeCell` behind loom's `with` / `with_mut` API.
    #[cfg(not(loom))]
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(loom))]
    impl<T> UnsafeCell<T> {
        #[inline]
        pub(crate) const fn new(data: T) -> Self {
            Self(std::cell::UnsafeCell::new(data))
        }

        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}
