//! Pages of nodes: the pool grows by pages of doubling size, allocated on first use.
//!
//! ```text
//! slot index:  0 .. B-1 | B .. 3B-1 | 3B .. 7B-1 | ...     (B = PAGE_BASE)
//! page:           0     |     1     |      2     | ...     page p holds B << p nodes
//! ```
//!
//! A page, once published, never moves and is freed only when the pool is dropped, so a slot
//! index stays a valid address for the pool's whole life (pool P3) and a stale handle can always
//! *read* its slot's lifecycle word safely; the generation check (slot L2) does the rest.

use crate::sync::{AtomicPtr, Mutex, Ordering};
use crate::tree::node::Node;

/// Nodes in page 0.
#[cfg(not(loom))]
pub(crate) const PAGE_BASE: usize = 64;
/// Nodes in page 0 (tiny under loom so models exercise growth).
#[cfg(loom)]
pub(crate) const PAGE_BASE: usize = 2;

/// Enough pages to address `MAX_CAPACITY` slots.
pub(crate) const MAX_PAGES: usize = 32;

/// Largest pool capacity: indices `u32::MAX` and `u32::MAX - 1` are reserved sentinels.
pub(crate) const MAX_CAPACITY: u32 = 1 << 30;

/// The page holding `idx` and the offset within it.
#[inline]
pub(crate) fn locate(idx: u32) -> (usize, usize) {
    let x = idx as usize / PAGE_BASE + 1;
    let page = (usize::BITS - 1 - x.leading_zeros()) as usize;
    let start = PAGE_BASE * ((1 << page) - 1);
    (page, idx as usize - start)
}

/// Number of nodes in page `page`.
#[inline]
pub(crate) fn page_len(page: usize) -> usize {
    PAGE_BASE << page
}

/// The table of page pointers. The last page is cut to the capacity, so a pool never reserves
/// more than `capacity` nodes.
pub(crate) struct Pages {
    ptrs: [AtomicPtr<Node>; MAX_PAGES],
    capacity: u32,
    /// Serialises page allocation (cold), so a page is built once.
    grow: Mutex<()>,
}

impl Pages {
    pub(crate) fn new(capacity: u32) -> Self {
        Pages {
            ptrs: core::array::from_fn(|_| AtomicPtr::new(core::ptr::null_mut())),
            capacity,
            grow: Mutex::new(()),
        }
    }

    /// Nodes in page `page` of this pool: the doubling size, cut at the capacity.
    fn len(&self, page: usize) -> usize {
        let start = PAGE_BASE * ((1 << page) - 1);
        page_len(page).min((self.capacity as usize).saturating_sub(start))
    }

    /// The node at `idx`.
    ///
    /// # Safety
    /// `idx` was handed out by this pool's fresh counter, after `ensure` returned for its page
    /// (every index in a handle, an id or a list satisfies this; pool P3).
    #[inline]
    pub(crate) unsafe fn get(&self, idx: u32) -> &Node {
        let (page, off) = locate(idx);
        let base = self.ptrs[page].load(Ordering::Acquire);
        debug_assert!(!base.is_null(), "slot {idx} has no page");
        // SAFETY: per the contract the page was published by `ensure` (Release/Acquire on the
        // pointer) with `self.len(page) > off` nodes (`idx < capacity`), and it lives as long as the pool (P3).
        unsafe { &*base.add(off) }
    }

    /// The node at `idx` if its page exists (for scans over `0..fresh`, where a slot's page may
    /// still be being allocated); `idx` is below the capacity.
    pub(crate) fn try_get(&self, idx: u32) -> Option<&Node> {
        let (page, off) = locate(idx);
        let base = self.ptrs[page].load(Ordering::Acquire);
        // SAFETY: a published page holds `self.len(page) > off` initialised nodes (`idx` is
        // below the capacity) and lives as long as the pool (P3).
        (!base.is_null()).then(|| unsafe { &*base.add(off) })
    }

    /// Makes sure the page holding `idx` exists.
    pub(crate) fn ensure(&self, idx: u32) {
        let (page, _) = locate(idx);
        if !self.ptrs[page].load(Ordering::Acquire).is_null() {
            return;
        }
        let _grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        if !self.ptrs[page].load(Ordering::Acquire).is_null() {
            return;
        }
        let len = self.len(page);
        let fresh: Box<[Node]> = (0..len).map(|_| Node::new()).collect();
        let raw = Box::into_raw(fresh) as *mut Node;
        self.ptrs[page].store(raw, Ordering::Release);
    }

    /// Bytes of node memory currently reserved.
    pub(crate) fn reserved_bytes(&self) -> usize {
        (0..MAX_PAGES)
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
}
