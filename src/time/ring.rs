//! The arm ring: how a thread hands new timers to the driver without a lock or an RMW.
//!
//! Each thread's shard owns one ring (allocated on its first timer). The thread is the only
//! producer; the driver, under its lock, is the only consumer.
//!
//! ```text
//!   entries [ (slot, gen, deadline) ; CAPACITY ]   16 bytes each
//!   head ─ consumer (driver) ─ its own cache line      tail ─ producer (owner) ─ its own line
//!   live entries: head..tail (wrapping positions, tail - head <= CAPACITY)
//! ```
//!
//! Arming is two plain stores and a `Release` store of `tail`; no compare-and-swap, no shared
//! cache line written on the hot path (the driver reads `tail` once per turn). When the ring is
//! half full the producer drains it into the wheel itself if the driver's lock is free (else
//! it wakes the driver); when it is full the timer goes to the pool's shared spill list
//! instead (a mutex; only reached when the driver falls behind).
//!
//! Invariants (cited as **R1**..**R3**):
//!
//! - **R1** only the shard's owner (shard S1) writes `tail` and the entries at positions
//!   `tail..head + CAPACITY`; only a thread holding the driver's lock — the driver, or the
//!   owner draining its own half-full ring — writes `head` and reads the entries at
//!   `head..tail`.
//! - **R2** the producer writes an entry, then stores `tail` with `Release`; the consumer loads
//!   `tail` with `Acquire` before reading entries below it. The consumer reads entries, then
//!   stores `head` with `Release`; the producer loads `head` with `Acquire` before reusing a
//!   position below it. So no entry is read and written at once.
//! - **R0** positions are `usize` counters that wrap; `tail − head` (wrapping) is exact because
//!   it never exceeds `CAPACITY`, so the wrap of either (after 2^64 timers) changes nothing.
//! - **R3** an entry only says "this incarnation has a timer due at that deadline": it may be
//!   stale (the context was released) and the driver checks the generation; it is never lost,
//!   since a full ring sends the timer to the spill list instead.

use crossbeam_utils::CachePadded;

use crate::sync::cell::UnsafeCell;
use crate::sync::{AtomicUsize, Ordering};

/// Entries per ring (64 KiB): at one timer per 20 ns a ring fills in 80 µs; the producer
/// wakes the driver at half.
#[cfg(not(loom))]
pub(crate) const CAPACITY: usize = 4096;
#[cfg(loom)]
pub(crate) const CAPACITY: usize = 2;

/// The `deadline` of an entry that is not a timer but a zombie's deferred check (tree I10,
/// driver D7): no tick is this far.
pub(crate) const ZOMBIE_CHECK: u64 = u64::MAX;

/// An armed timer as the producer hands it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Armed {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
    /// The full deadline tick (the node keeps its low 32 bits), so that a driver that turns
    /// late, or a manual clock that jumps far, still reads it right.
    pub(crate) deadline: u64,
}

pub(crate) struct Ring {
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
    entries: Box<[UnsafeCell<Armed>; CAPACITY]>,
}

// SAFETY: the cells are accessed per R1/R2: each position is written by the single producer
// only while the consumer cannot read it, and read by the single consumer only after the
// producer's `Release` store of `tail` published it.
unsafe impl Sync for Ring {}
// SAFETY: as for `Sync`; `Armed` is plain data.
unsafe impl Send for Ring {}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    Ok,
    /// Stored, and the ring just reached half full: wake the driver.
    Wake,
    /// The ring is full; nothing was stored.
    Full,
}

impl Ring {
    pub(crate) fn new() -> Self {
        Ring {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            entries: (0..CAPACITY)
                .map(|_| {
                    UnsafeCell::new(Armed {
                        idx: 0,
                        gen: 0,
                        deadline: 0,
                    })
                })
                .collect::<Box<[_]>>()
                .try_into()
                .unwrap_or_else(|_| unreachable!("CAPACITY entries")),
        }
    }

    /// Hands `a` to the driver.
    ///
    /// # Safety
    /// The caller is the ring's producer: it holds its shard's thread id (R1).
    #[inline(always)]
    pub(crate) unsafe fn push(&self, a: Armed) -> Push {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        let len = tail.wrapping_sub(head);
        if len >= CAPACITY {
            return Push::Full;
        }
        // SAFETY: R1/R2: position `tail` is outside `head..tail`, so the consumer does not read
        // it until the `Release` store below, and the `Acquire` load of `head` ordered the
        // consumer's last read of it before this write.
        // Field by field from registers: a 16-byte copy of `a` through the stack would be a
        // load spanning two smaller stores, which the CPU cannot forward (a stall per timer).
        self.entries[tail % CAPACITY].with_mut(|p| unsafe {
            core::ptr::addr_of_mut!((*p).idx).write(a.idx);
            core::ptr::addr_of_mut!((*p).gen).write(a.gen);
            core::ptr::addr_of_mut!((*p).deadline).write(a.deadline);
        });
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        if len + 1 == CAPACITY / 2 {
            Push::Wake
        } else {
            Push::Ok
        }
    }

    /// Whether entries wait to be taken (the driver, before it sleeps, time D5). Any thread
    /// may ask; the answer may be stale unless fenced (D5's heavy fence).
    pub(crate) fn pending(&self) -> bool {
        self.tail.load(Ordering::Acquire) != self.head.load(Ordering::Acquire)
    }

    /// Takes every entry handed over so far.
    ///
    /// # Safety
    /// The caller is the ring's consumer: it holds the driver's lock (R1).
    pub(crate) unsafe fn drain(&self, mut f: impl FnMut(Armed)) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let n = tail.wrapping_sub(head);
        for i in 0..n {
            let pos = head.wrapping_add(i) % CAPACITY;
            // SAFETY: R2: positions `head..tail` were published by the `Acquire` load of
            // `tail`, and the producer does not write them until `head` moves past them.
            let a = self.entries[pos].with(|p| unsafe { p.read() });
            f(a);
        }
        self.head.store(tail, Ordering::Release);
        n
    }
}
