//! A hierarchical timer wheel, owned by the driver (single-threaded: the driver's lock).
//!
//! ```text
//!   level 0: 64 slots × 1 tick         level 3: 64 slots × 64^3 ticks
//!   level 1: 64 slots × 64 ticks       level 4: 64 slots × 64^4 ticks
//!   level 2: 64 slots × 64^2 ticks     level 5: 64 slots × 64^5 ticks (~2 years at 1 ms)
//!   each level: `occupied` bitmap (bit s = slot s non-empty) + 64 vectors of entries
//! ```
//!
//! Times are in *wheel ticks* (the configured resolution). An entry due at `when` lives at the
//! level of the highest 6-bit group in which `when` and `elapsed` differ, in the slot given by
//! `when`'s bits of that group: a timer due within 64 ticks is in level 0, and so on. The next
//! expiration is found with one `trailing_zeros` per level; when a slot of level `l > 0` comes
//! due, its entries are re-inserted at lower levels (cascade), so each entry moves at most
//! once per level. Insert is O(1) (a push), the next expiration is O(levels).
//!
//! Entries are not intrusive: the wheel holds `(slot, generation, deadline)` and never touches a
//! node. Disarming is free: a context that is released simply leaves a stale entry behind,
//! which the driver recognises by its generation when it comes due (or in a compaction) and
//! drops. Firing takes a reference with `try_upgrade`, so an entry can never fire into a
//! reused slot (slot L2).
//!
//! Invariants (cited as **W1**..**W3**):
//!
//! - **W1** every entry at level `l` is due after `elapsed`, in the same 64^(l+1)-tick window
//!   as `elapsed` (the top level: at most 64^6 ticks ahead, so its slot numbers may wrap), and
//!   in a slot after `elapsed`'s slot at that level (counting from it, around); so the first
//!   occupied slot from the current one on, on the lowest non-empty level, is the next
//!   expiration.
//! - **W2** `len` is the number of entries held (stale ones included).
//! - **W3** bit `s` of `occupied` is set iff slot `s` is non-empty.

/// Levels; 64^6 ticks is over two years at the finest resolution.
const LEVELS: usize = 6;
const SLOTS: usize = 64;
const BITS: u32 = 6;

/// A pending timer: the context's slot, generation and stored (wrapped) deadline in
/// milliseconds, plus its due time in wheel ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) idx: u32,
    pub(crate) gen: u32,
    pub(crate) deadline: u32,
    pub(crate) when: u64,
}

struct Level {
    occupied: u64,
    slots: [Vec<Entry>; SLOTS],
}

pub(crate) struct Wheel {
    /// Wheel ticks processed so far.
    elapsed: u64,
    levels: Box<[Level]>,
    len: usize,
}

/// Ticks covered by one slot of `level`.
#[inline]
fn slot_range(level: usize) -> u64 {
    1u64 << (BITS * level as u32)
}

/// The level at which an entry due at `when` lives, seen from `elapsed` (W1).
#[inline]
fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    (significant / BITS as usize).min(LEVELS - 1)
}

impl Wheel {
    pub(crate) fn new(elapsed: u64) -> Self {
        Wheel {
            elapsed,
            levels: (0..LEVELS)
                .map(|_| Level {
                    occupied: 0,
                    // A few entries per slot up front (36 KiB per pool), so that a driver seeing a
                    // trickle of timers does not allocate on each slot's first use.
                    slots: core::array::from_fn(|_| Vec::with_capacity(4)),
                })
                .collect(),
            len: 0,
        }
    }

    /// Entries held, stale ones included (W2).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `e`; hands it back if it is already due (`e.when <= elapsed`).
    pub(crate) fn insert(&mut self, e: Entry) -> Result<(), Entry> {
        if e.when <= self.elapsed {
            return Err(e);
        }
        // Beyond the top level's window: park it at the farthest slot; it cascades from
        // there and is re-inserted with its real due time (never reached with 7-day timeouts).
        let horizon = self.elapsed + (slot_range(LEVELS) - 1);
        let placed = e.when.min(horizon);
        let level = level_for(self.elapsed, placed);
        let slot = ((placed >> (BITS * level as u32)) & (SLOTS as u64 - 1)) as usize;
        let l = &mut self.levels[level];
        l.slots[slot].push(e);
        l.occupied |= 1 << slot;
        self.len += 1;
        Ok(())
    }

    /// The next slot to come due: `(level, slot, due tick)` (W1). The bitmap is rotated to
    /// start at the current slot, so that an entry of the top level whose due tick lies in the
    /// next top-level window (slot numbers wrap) is found in order too.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        for (level, l) in self.levels.iter().enumerate() {
            if l.occupied == 0 {
                continue;
            }
            let now_slot = (self.elapsed >> (BITS * level as u32)) & (SLOTS as u64 - 1);
            let dist = u64::from(l.occupied.rotate_right(now_slot as u32).trailing_zeros());
            let slot = ((now_slot + dist) & (SLOTS as u64 - 1)) as usize;
            let start = self.elapsed & !(slot_range(level + 1) - 1);
            return Some((level, slot, start + (now_slot + dist) * slot_range(level)));
        }
        None
    }

    /// The wheel tick at which the driver next has work (a slot comes due, or a higher level
    /// cascades), if any entry is held.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.next_expiration().map(|(_, _, at)| at)
    }

    /// Advances to wheel tick `now`, handing every entry due by then to `due` (in due order
    /// across slots; any order within one). Cascaded entries are re-inserted lower down.
    pub(crate) fn advance(&mut self, now: u64, mut due: impl FnMut(Entry)) {
        while let Some((level, slot, at)) = self.next_expiration() {
            if at > now {
                break;
            }
            self.elapsed = self.elapsed.max(at);
            let l = &mut self.levels[level];
            l.occupied &= !(1 << slot);
            let mut entries = core::mem::take(&mut l.slots[slot]);
            self.len -= entries.len();
            for e in entries.drain(..) {
                if let Err(e) = self.insert(e) {
                    due(e);
                }
            }
            // Keep the vector's memory for the next round, unless a burst made it large.
            if entries.capacity() <= 4096 {
                self.levels[level].slots[slot] = entries;
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    /// Drops every entry `keep` refuses; returns how many went.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) -> usize {
        let before = self.len;
        for l in &mut self.levels {
            for (s, v) in l.slots.iter_mut().enumerate() {
                if v.is_empty() {
                    continue;
                }
                let n = v.len();
                v.retain(|e| keep(e));
                self.len -= n - v.len();
                if v.is_empty() {
                    l.occupied &= !(1 << s);
                    if v.capacity() > 4096 {
                        *v = Vec::with_capacity(4);
                    }
                }
            }
        }
        before - self.len
    }

    /// Bytes the wheel's vectors hold (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.levels
            .iter()
            .flat_map(|l| l.slots.iter())
            .map(|v| v.capacity() * core::mem::size_of::<Entry>())
            .sum()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(idx: u32, when: u64) -> Entry {
        Entry {
            idx,
            gen: 0,
            deadline: when as u32,
            when,
        }
    }

    #[test]
    fn fires_at_its_tick_and_not_before() {
        let mut w = Wheel::new(0);
        for (i, when) in [1u64, 63, 64, 65, 4095, 4096, 300_000, 604_800_000]
            .into_iter()
            .enumerate()
        {
            w.insert(e(i as u32, when)).unwrap();
        }
        assert_eq!(w.len(), 8);
        for when in [1u64, 63, 64, 65, 4095, 4096, 300_000, 604_800_000] {
            let mut got = Vec::new();
            w.advance(when - 1, |x| got.push(x.when));
            assert!(got.is_empty(), "fired before {when}: {got:?}");
            w.advance(when, |x| got.push(x.when));
            assert_eq!(got, vec![when]);
        }
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn due_entries_are_handed_back() {
        let mut w = Wheel::new(10);
        assert_eq!(w.insert(e(1, 10)), Err(e(1, 10)));
        assert_eq!(w.insert(e(1, 3)), Err(e(1, 3)));
    }

    #[test]
    fn retain_drops_and_fixes_the_bitmap() {
        let mut w = Wheel::new(0);
        for i in 0..100 {
            w.insert(e(i, 1 + u64::from(i) * 37)).unwrap();
        }
        assert_eq!(w.retain(|x| x.idx % 2 == 0), 50);
        assert_eq!(w.len(), 50);
        let mut fired = Vec::new();
        w.advance(1 << 20, |x| fired.push(x.idx));
        assert_eq!(fired.len(), 50);
        assert!(fired.iter().all(|i| i % 2 == 0));
    }

    proptest! {
        /// Differential test against a sorted list: every entry fires exactly once, at the
        /// first advance whose target reaches its due tick, whatever the insert/advance mix.
        #[test]
        fn matches_a_sorted_reference(ops in proptest::collection::vec((any::<bool>(), 0u64..200_000), 1..300)) {
            let mut w = Wheel::new(0);
            let mut reference: Vec<Entry> = Vec::new();
            let mut now = 0u64;
            for (i, (is_insert, x)) in ops.into_iter().enumerate() {
                if is_insert {
                    let entry = e(i as u32, now + 1 + x % 100_000);
                    w.insert(entry).unwrap();
                    reference.push(entry);
                } else {
                    now += x % 5_000;
                    let mut fired = Vec::new();
                    w.advance(now, |x| fired.push(x));
                    let mut expected: Vec<Entry> = reference.iter().copied().filter(|r| r.when <= now).collect();
                    reference.retain(|r| r.when > now);
                    fired.sort_by_key(|x| (x.when, x.idx));
                    expected.sort_by_key(|x| (x.when, x.idx));
                    prop_assert_eq!(fired, expected);
                    prop_assert_eq!(w.len(), reference.len());
                }
            }
        }
    }
}
