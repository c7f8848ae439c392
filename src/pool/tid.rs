//! Small, reusable thread ids: the index of a thread's shard in every pool.
//!
//! A thread gets the lowest free id on its first pool operation and gives it back when it exits,
//! so the ids in use stay dense and a pool's shard table stays as small as the number of threads
//! that ever ran at once (the scheme of `sharded-slab/src/tid.rs`). A thread that starts after
//! another exited inherits that thread's shards, free lists included: nothing is stranded by
//! thread churn.
//!
//! Invariants:
//!
//! - **T1** at any instant, an id is held by at most one live thread. Handing an id over goes
//!   through the registry mutex, which orders everything the old holder did before everything
//!   the new holder does; this is what lets a shard's local free list be touched without
//!   atomics (see `shard.rs`, S1).
//! - **T3** (no longer relied on) the free lists an exited thread left behind are reclaimed
//!   like a live thread's, through the shard's handshake (shard S9..S11), so no path acts as
//!   the holder of an id it does not hold.
//! - **T2** a thread without an id (more than [`MAX_THREADS`] at once, or one that is already
//!   tearing down its thread-locals) gets `None` and must use the shared, synchronised paths.
//!
//! Under `--cfg loom` ids are not reused: loom gives every modelled execution fresh
//! thread-locals and statics, so a per-execution counter hands out the same ids in the same
//! order in every execution (loom needs that determinism), unique among its few threads.

/// Most threads that can hold an id at once (ids fit in 12 bits, one value reserved); more
/// threads still work, on the shared paths.
#[cfg(not(loom))]
pub(crate) const MAX_THREADS: usize = 4095;
/// Most threads that can hold an id at once (kept small so loom models stay small).
#[cfg(loom)]
pub(crate) const MAX_THREADS: usize = 8;

#[cfg(not(loom))]
mod imp {
    use super::MAX_THREADS;
    use std::sync::Mutex;

    struct Registry {
        next: usize,
        free: Vec<usize>,
    }

    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        next: 0,
        free: Vec::new(),
    });

    struct Tid(Option<usize>);

    impl Tid {
        fn register() -> Self {
            let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            // Lowest free id first keeps shard tables dense.
            if let Some(pos) = reg
                .free
                .iter()
                .enumerate()
                .min_by_key(|(_, id)| **id)
                .map(|(pos, _)| pos)
            {
                return Tid(Some(reg.free.swap_remove(pos)));
            }
            if reg.next < MAX_THREADS {
                reg.next += 1;
                Tid(Some(reg.next - 1))
            } else {
                Tid(None)
            }
        }
    }

    impl Drop for Tid {
        fn drop(&mut self) {
            if let Some(id) = self.0 {
                // T1: the mutex orders this thread's last shard access before the next holder's
                // first.
                let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
                reg.free.push(id);
            }
        }
    }

    thread_local! {
        static TID: Tid = Tid::register();
    }

    /// This thread's id, or `None` (T2).
    #[inline]
    pub(crate) fn current() -> Option<usize> {
        TID.try_with(|t| t.0).ok().flatten()
    }
}

#[cfg(loom)]
mod imp {
    use super::MAX_THREADS;
    use loom::sync::atomic::{AtomicUsize, Ordering};

    loom::lazy_static! {
        // Reset for every modelled execution, so each execution assigns the same ids in the
        // same order and loom replays deterministically.
        static ref NEXT: AtomicUsize = AtomicUsize::new(0);
    }

    loom::thread_local! {
        static TID: usize = NEXT.fetch_add(1, Ordering::Relaxed) % MAX_THREADS;
    }

    /// This thread's id (never reused within one loom execution).
    #[inline]
    pub(crate) fn current() -> Option<usize> {
        Some(TID.with(|t| *t))
    }
}

pub(crate) use imp::current;
