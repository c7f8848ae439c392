//! Pages of nodes: the pool grows by pages of doubling size, allocated on first use.
//!
//! ```text
//! slot index:  0 .. B-1 | B .. 3B-1 | 3B .. 7B-1 | ...     (B = PAGE_BASE)
//! page:           0     |     1     |      2     | ...     page p holds B << p nodes
//! ```
//!
//! Page 0 is large (1,024 nodes, 128 KiB, cut to the capacity) because it is the *hot* page:
//! slots are reused last-freed-first, so a server whose live contexts stay under a thousand or
//! so keeps nearly all of them there, and a node of page 0 is found without the leading-zero
//! count and the page-table load that depends on it ([`Pages::get`]'s first branch). That
//! lookup sits on every hop of an ancestor walk (`is_cancelled`) and on every creation and
//! drop, as a chain of dependent loads; in the `server_mix` request it saved 56 ns of 450
//! (`bash benches/ab.sh`, Zen 3). The price is 128 KiB reserved on a pool's first context
//! instead of 8 KiB.
//!
//! A page, once published, never moves and is freed only when the pool is dropped, so a slot
//! index stays a valid address for the pool's whole life (pool P3) and a stale handle can always
//! *read* its slot's lifecycle word safely; the generation check (slot L2) does the rest.
//!
//! Two regions share this layout. The *main* region holds the pool's `capacity` slots, its last
//! page cut to the capacity. The *spare* region (indices from [`SPARE`] on) holds the slots
//! that replace spent ones (slot L2, pool P5), in whole pages of the same doubling sizes,
//! allocated only when a slot is spent: a pool that never spends a slot has no spare page.
//!
//! ```text
//! index:  0 ........ capacity-1 | (unused) | 2^30 + 0 .. 2^30 + B-1 | 2^30 + B .. | ...
//! table:  ptrs[0..MAX_PAGES]  (main)       | ptrs[MAX_PAGES..]  (spare)
//! ```

use crate::sync::{AtomicPtr, Mutex, Ordering};
use crate::tree::node::Node;

/// Nodes in page 0, the hot page (see the module docs).
#[cfg(not(loom))]
pub(crate) const PAGE_BASE: usize = 1024;
/// Nodes in page 0 (tiny under loom so models exercise growth).
#[cfg(loom)]
pub(crate) const PAGE_BASE: usize = 2;

/// Enough pages to address `MAX_CAPACITY` slots.
pub(crate) const MAX_PAGES: usize = 32;

/// Largest pool capacity, and the most spare slots: indices `u32::MAX` and `u32::MAX - 1` are
/// reserved sentinels, and bit 30 marks the spare region.
pub(crate) const MAX_CAPACITY: u32 = 1 << 30;

/// First index of the spare region (see the module docs).
pub(crate) const SPARE: u32 = MAX_CAPACITY;

/// The page holding `idx` within its region and the offset within it.
#[inline]
pub(crate) fn locate(idx: u32) -> (usize, usize) {
    let x = idx as usize / PAGE_BASE + 1;
    let page = (usize::BITS - 1 - x.leading_zeros()) as usize;
    let start = PAGE_BASE * ((1 << page) - 1);
    (page, idx as usize - start)
}

/// The page-table entry holding `idx` (main or spare region, `idx < 2 * MAX_CAPACITY`) and the
/// offset within its page.
#[inline]
fn entry(idx: u32) -> (usize, usize) {
    let (page, off) = locate(idx & (SPARE - 1));
    ((idx >> 30) as usize * MAX_PAGES + page, off)
}

/// The page-table entry holding `idx` alone, as [`entry`] but without the offset: one
/// leading-zero count (page `p` holds the indices `i` with `B << p <= i + B < B << (p + 1)`).
#[inline]
fn table_index(idx: u32) -> usize {
    let within = (idx & (SPARE - 1)) + PAGE_BASE as u32;
    let page = (31 - within.leading_zeros() - PAGE_BASE.trailing_zeros()) as usize;
    (idx >> 30) as usize * MAX_PAGES + page
}

/// The page of main-region index `idx` (`idx < SPARE`): [`table_index`] without the region.
#[inline(always)]
fn main_page(idx: u32) -> usize {
    (31 - (idx + PAGE_BASE as u32).leading_zeros() - PAGE_BASE.trailing_zeros()) as usize
}

/// The first index of table entry `t` (main or spare region).
fn first_index(t: usize) -> usize {
    let region = if t >= MAX_PAGES { SPARE as usize } else { 0 };
    region + PAGE_BASE * ((1 << (t % MAX_PAGES)) - 1)
}

/// Number of nodes in page `page`.
#[inline]
pub(crate) fn page_len(page: usize) -> usize {
    PAGE_BASE << page
}

/// The table of page pointers, main region then spare region. The main region's last page is
/// cut to the capacity, so a pool reserves no more than `capacity` nodes, plus spare pages once
/// slots are spent.
pub(crate) struct Pages {
    ptrs: [AtomicPtr<Node>; 2 * MAX_PAGES],
    /// Entry `t` of `ptrs` less the first index of its page (wrapping pointer arithmetic, never
    /// dereferenced as such): the node at `idx` is `biased[t] + idx`, so the hot lookup
    /// ([`Pages::get`]) is one leading-zero count, one load and one add. Published with `ptrs`
    /// (before it, Release), read only for an index whose page `ensure` returned for (P3).
    biased: [AtomicPtr<Node>; 2 * MAX_PAGES],
    capacity: u32,
    /// Generation of every slot's first incarnation (0; tests start near the last, slot L2).
    first_gen: u32,
    /// Serialises page allocation (cold), so a page is built once.
    grow: Mutex<()>,
}

impl Pages {
    pub(crate) fn new(capacity: u32, first_gen: u32) -> Self {
        Pages {
            ptrs: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
            biased: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
            capacity,
            first_gen,
            grow: Mutex::new(()),
        }
    }

    /// Nodes in table entry `t`: the doubling size, cut at the capacity in the main region.
    fn len(&self, t: usize) -> usize {
        if t >= MAX_PAGES {
            return page_len(t - MAX_PAGES);
        }
        let start = PAGE_BASE * ((1 << t) - 1);
        page_len(t).min((self.capacity as usize).saturating_sub(start))
    }

    /// The node at `idx`.
    ///
    /// # Safety
    /// `idx` was handed out by this pool's fresh counter, after `ensure` returned for its page
    /// (every index in a handle, an id or a list satisfies this; pool P3).
    #[inline]
    pub(crate) unsafe fn get(&self, idx: u32) -> &Node {
        // Page 0, the hot page, by one compare whose outcome the CPU predicts, so that the
        // node's address waits only for `idx` and a load that does not depend on it; the rest
        // of the main region by the leading-zero count; spare indices (spent slots'
        // replacements, rare) take the general path.
        let t = if idx < PAGE_BASE as u32 {
            0
        } else if idx < SPARE {
            main_page(idx)
        } else {
            table_index(idx)
        };
        let biased = self.biased[t].load(Ordering::Acquire);
        let node = biased.wrapping_add(idx as usize);
        debug_assert!(
            core::ptr::eq(node, self.try_get(idx).expect("slot has no page")),
            "slot {idx}: biased lookup disagrees"
        );
        // SAFETY: per the contract the page was published by `ensure` (Release/Acquire on the
        // biased pointer, stored after the page was built) with `self.len(t) > off` nodes (a
        // main index is below the capacity, a spare page is whole), and it lives as long as
        // the pool (P3). `biased + idx` is the page's base plus `idx`'s offset in it: back in
        // bounds of the page's allocation, whose provenance the wrapping arithmetic keeps.
        unsafe { &*node }
    }

    /// The node at `idx` if its page exists (for scans over the indices handed out, where a
    /// slot's page may still be being allocated); a main `idx` is below the capacity.
    pub(crate) fn try_get(&self, idx: u32) -> Option<&Node> {
        let (t, off) = entry(idx);
        let base = self.ptrs[t].load(Ordering::Acquire);
        // SAFETY: a published page holds `self.len(t) > off` initialised nodes (as in `get`)
        // and lives as long as the pool (P3).
        (!base.is_null()).then(|| unsafe { &*base.add(off) })
    }

    /// Makes sure the page holding `idx` exists.
    pub(crate) fn ensure(&self, idx: u32) {
        let (t, _) = entry(idx);
        if !self.ptrs[t].load(Ordering::Acquire).is_null() {
            return;
        }
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        if !self.ptrs[t].load(Ordering::Acquire).is_null() {
            return;
        }
        let len = self.len(t);
        let fresh: Box<[Node]> = (0..len).map(|_| Node::new(self.first_gen)).collect();
        let raw = Box::into_raw(fresh) as *mut Node;
        // `biased` first: whoever sees the page in `ptrs` (the check above, Acquire) then
        // sees its biased pointer too, which is all that `get` reads.
        self.biased[t].store(raw.wrapping_sub(first_index(t)), Ordering::Release);
        self.ptrs[t].store(raw, Ordering::Release);
    }

    /// Bytes of node memory currently reserved.
    pub(crate) fn reserved_bytes(&self) -> usize {
        (0..2 * MAX_PAGES)
            .filter(|&p| !self.ptrs[p].load(Ordering::Acquire).is_null())
            .map(|p| self.len(p) * core::mem::size_of::<Node>())
            .sum()
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        for (page, ptr) in self.ptrs.iter().enumerate() {
            let raw = ptr.load(Ordering::Acquire);
            if !raw.is_null() {
                // SAFETY: a non-null entry was published by `ensure` from `Box::into_raw` of a
                // slice of `self.len(page)` nodes, and the pool is being dropped, so no handle
                // into it remains (pool P4).
                drop(unsafe {
                    Box::from_raw(core::ptr::slice_from_raw_parts_mut(raw, self.len(page)))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_covers_pages_without_gaps() {
        let mut expect = (0usize, 0usize);
        for idx in 0..(PAGE_BASE as u32 * 40) {
            assert_eq!(locate(idx), expect, "idx {idx}");
            expect.1 += 1;
            if expect.1 == page_len(expect.0) {
                expect = (expect.0 + 1, 0);
            }
        }
        let (page, off) = locate(MAX_CAPACITY - 1);
        assert!(page < MAX_PAGES && off < page_len(page));
    }

    #[test]
    fn spare_region_has_its_own_table_entries() {
        assert_eq!(entry(0), (0, 0));
        assert_eq!(entry(SPARE), (MAX_PAGES, 0));
        assert_eq!(entry(SPARE + PAGE_BASE as u32), (MAX_PAGES + 1, 0));
        let (t, off) = entry(SPARE + MAX_CAPACITY - 1);
        assert!(t < 2 * MAX_PAGES && off < page_len(t - MAX_PAGES));
    }

    #[test]
    fn table_index_and_first_index_agree_with_entry() {
        let probes = (0..PAGE_BASE as u32 * 70)
            .chain([MAX_CAPACITY - 2, MAX_CAPACITY - 1])
            .flat_map(|i| [i, SPARE + i]);
        for idx in probes {
            let (t, off) = entry(idx);
            assert_eq!(table_index(idx), t, "idx {idx}");
            if idx < SPARE {
                assert_eq!(main_page(idx), t, "idx {idx}");
            }
            assert_eq!(first_index(t) + off, idx as usize, "idx {idx}");
        }
    }

    #[test]
    fn spare_pages_are_whole_and_main_pages_cut() {
        let pages = Pages::new(100, 7);
        pages.ensure(0);
        pages.ensure(99);
        pages.ensure(SPARE + 3);
        let node = core::mem::size_of::<Node>();
        assert_eq!(pages.reserved_bytes(), (100 + PAGE_BASE) * node);
        let spare = pages
            .try_get(SPARE + PAGE_BASE as u32 - 1)
            .expect("spare page 0");
        let w = spare.life.load(Ordering::Relaxed);
        assert_eq!(crate::pool::slot::generation(w), 7);
        assert!(pages.try_get(SPARE + PAGE_BASE as u32).is_none());
    }
}
