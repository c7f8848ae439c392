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

/// Atomics that must live in `static`s (loom's cannot be built in a `const`): the operation
/// label registry (`values.rs`), which publishes write-once entries under a mutex and is not
/// part of any protocol the loom models check.
pub(crate) use std::sync::atomic::{AtomicPtr as StaticAtomicPtr, AtomicU32 as StaticAtomicU32};

/// Atomics for statistics only (the timer counters and the lateness histogram): values no
/// protocol reads to decide anything, so loom need not model them (and its atomics are large
/// enough that a hundred of them overflow a model thread's stack).
pub(crate) use std::sync::atomic::{AtomicU64 as StatU64, AtomicUsize as StatUsize};

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;

/// A shared value replaced whole at run time (the pool's configuration): readers get an `Arc`
/// of the old or the new value, never a mix. `arc-swap` normally (no lock for readers); a
/// mutex under loom, whose models check the protocol around it (the packed hot-path word).
pub(crate) struct Swap<T> {
    #[cfg(not(loom))]
    inner: arc_swap::ArcSwap<T>,
    #[cfg(loom)]
    inner: Mutex<std::sync::Arc<T>>,
}

impl<T> Swap<T> {
    pub(crate) fn new(value: std::sync::Arc<T>) -> Self {
        Swap {
            #[cfg(not(loom))]
            inner: arc_swap::ArcSwap::new(value),
            #[cfg(loom)]
            inner: Mutex::new(value),
        }
    }

    pub(crate) fn load(&self) -> std::sync::Arc<T> {
        #[cfg(not(loom))]
        return self.inner.load_full();
        #[cfg(loom)]
        return self.inner.lock().unwrap().clone();
    }

    /// Runs `f` on the current value without touching its reference count (arc-swap's
    /// guard: a per-thread debt slot, so concurrent readers share no written cache line).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        #[cfg(not(loom))]
        return f(&self.inner.load());
        #[cfg(loom)]
        return f(&self.inner.lock().unwrap());
    }

    pub(crate) fn store(&self, value: std::sync::Arc<T>) {
        #[cfg(not(loom))]
        self.inner.store(value);
        #[cfg(loom)]
        {
            *self.inner.lock().unwrap() = value;
        }
    }
}

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

/// Asymmetric fences for a Dekker handshake whose two sides run at very different rates.
///
/// The lease protocol (tree I10, I11) needs "store, full fence, load" on both sides: a child
/// released (often) and a parent becoming a zombie (rarely). [`light`](barrier::light) is what
/// the frequent side runs; [`heavy`](barrier::heavy) is what the rare side runs. Together they
/// give the guarantee of a `SeqCst` fence on each side: on Linux, `heavy` is
/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which runs a full memory barrier on every CPU
/// currently running a thread of this process, so `light` only has to stop the compiler from
/// reordering (`compiler_fence`). Where membarrier is unavailable (other systems, old kernels,
/// or registration refused), and under loom, both are `fence(SeqCst)`.
pub(crate) mod barrier {
    #[cfg(all(target_os = "linux", not(loom), not(miri)))]
    mod imp {
        use std::sync::atomic::{compiler_fence, fence, AtomicU8, Ordering};

        const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
        const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

        const UNKNOWN: u8 = 0;
        const ASYMMETRIC: u8 = 1;
        const SYMMETRIC: u8 = 2;

        /// Decided once, by `init`, before any pool exists; never changes afterwards.
        static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);

        /// Registers for expedited membarrier; called when a pool is made, so that the mode is
        /// fixed (and published by the pool's own publication) before either side runs.
        pub(crate) fn init() {
            if MODE.load(Ordering::Acquire) != UNKNOWN {
                return;
            }
            // SAFETY: membarrier(2) takes (cmd, flags, cpu_id) integers and touches no memory
            // of ours; an unsupported command returns -1.
            let ok = unsafe {
                libc::syscall(
                    libc::SYS_membarrier,
                    MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                    0,
                    0,
                )
            } == 0;
            let _ = MODE.compare_exchange(
                UNKNOWN,
                if ok { ASYMMETRIC } else { SYMMETRIC },
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }

        /// The frequent side's fence.
        #[inline]
        pub(crate) fn light() {
            if MODE.load(Ordering::Relaxed) == ASYMMETRIC {
                compiler_fence(Ordering::SeqCst);
            } else {
                fence(Ordering::SeqCst);
            }
        }

        /// The rare side's fence.
        pub(crate) fn heavy() {
            if MODE.load(Ordering::Relaxed) == ASYMMETRIC {
                // SAFETY: as in `init`; registration succeeded, so the command is permitted.
                let r = unsafe {
                    libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0)
                };
                if r == 0 {
                    return;
                }
                // Refused after a successful registration cannot happen; if it did, the light
                // side would be unprotected, so fail loudly rather than corrupt memory.
                std::process::abort();
            }
            fence(Ordering::SeqCst);
        }
    }

    #[cfg(not(all(target_os = "linux", not(loom), not(miri))))]
    mod imp {
        use super::super::{fence, Ordering};

        pub(crate) fn init() {}

        #[inline]
        pub(crate) fn light() {
            fence(Ordering::SeqCst);
        }

        pub(crate) fn heavy() {
            fence(Ordering::SeqCst);
        }
    }

    pub(crate) use imp::{heavy, init, light};
}
