//! The request's identity on its context: the [`Propagated`] that `extract` made, shared by
//! the request context node (its custom value, one word: no box) and the request's holders,
//! and recycled per thread so that making one allocates nothing in steady state.
//!
//! - N1. A [`SharedMeta`] is an `Arc<Propagated>`; when the last `SharedMeta` of a value drops (it
//!   finds the `Arc` unique), the value is cleared (its header values and parsed text
//!   released) and kept in the dropping thread's free list, up to [`KEEP`] of them, for the
//!   next `extract` on that thread. Two last holders dropping at once on two threads may both
//!   see the other: then the `Arc` is freed as usual, a missed reuse, never a double one
//!   (`Arc::get_mut` admits no other reference).
//! - N2. A request context node holds one `SharedMeta` as its custom value from its creation to
//!   its teardown (`ChildBuilder::carry`), so every descendant reaches the identity with
//!   [`Propagated::of`] (a walk up its ancestors to the first node with a custom value of
//!   this type).

use std::cell::RefCell;
use std::sync::Arc;

use super::Propagated;
use crate::Context;

/// The most cleared values a thread keeps for reuse.
const KEEP: usize = 64;

std::thread_local! {
    static FREE: RefCell<Vec<Arc<Propagated>>> = const { RefCell::new(Vec::new()) };
}

/// A shared, recycled [`Propagated`] (N1).
#[derive(Clone, Debug)]
pub(crate) struct SharedMeta(Option<Arc<Propagated>>);

impl SharedMeta {
    /// `meta`, shared: in a value from this thread's free list when there is one.
    #[cfg(test)]
    pub(crate) fn new(meta: Propagated) -> SharedMeta {
        let mut shared = SharedMeta::blank();
        *shared.fill() = meta;
        shared
    }

    /// A cleared value (N1: every field at its default), from this thread's free list when
    /// there is one, for [`fill`](SharedMeta::fill) to write in place: `Propagated` is a few
    /// hundred bytes, so `extract` writes it where it will live rather than moving it there.
    #[inline]
    pub(crate) fn blank() -> SharedMeta {
        let reused = FREE.try_with(|free| free.borrow_mut().pop()).ok().flatten();
        SharedMeta(Some(reused.unwrap_or_default()))
    }

    /// The value, to write, while this is its only holder (as [`blank`](SharedMeta::blank)
    /// returns it). Were it shared (not reachable: only unique values are kept, N1), a fresh
    /// cleared value replaces it here, so a writer never reaches another holder's value.
    #[inline]
    pub(crate) fn fill(&mut self) -> &mut Propagated {
        let slot = self.0.get_or_insert_with(Arc::default);
        // Plain loads first, so that the one `get_mut` (a compare-and-swap) is the last word.
        if Arc::strong_count(slot) != 1 || Arc::weak_count(slot) != 0 {
            *slot = Arc::default();
        }
        // Unique by the check above: this `SharedMeta` is its only holder, and `&mut self`
        // keeps it from being cloned meanwhile.
        Arc::get_mut(slot).expect("a unique Arc")
    }

    /// Wraps an `Arc` made elsewhere (it is recycled too when this is its last holder).
    pub(crate) fn from_arc(arc: Arc<Propagated>) -> SharedMeta {
        SharedMeta(Some(arc))
    }

    /// The `Arc`.
    pub(crate) fn arc(&self) -> &Arc<Propagated> {
        self.0.as_ref().expect("taken only by drop")
    }
}

impl core::ops::Deref for SharedMeta {
    type Target = Propagated;
    fn deref(&self) -> &Propagated {
        self.arc()
    }
}

impl Drop for SharedMeta {
    fn drop(&mut self) {
        let Some(mut arc) = self.0.take() else {
            return;
        };
        let Some(meta) = Arc::get_mut(&mut arc) else {
            return; // not the last holder (N1)
        };
        // Release what the request held (header buffers, parsed text) now, not at reuse.
        *meta = Propagated::default();
        let _ = FREE.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP {
                if free.capacity() == 0 {
                    free.reserve_exact(KEEP);
                }
                free.push(arc);
            }
        });
    }
}

impl Propagated {
    /// What the request that `ctx` belongs to carried: the [`Propagated`] that
    /// [`Propagator::extract`](super::Propagator::extract) made with the request context,
    /// found from it or any descendant (a sub-task holding only a [`Context`]). `None` for a
    /// context outside any extracted request.
    ///
    /// ```
    /// use ctxpool::http::{Propagated, Propagator, X_REQUEST_ID};
    /// use ctxpool::Pool;
    ///
    /// let pool = Pool::builder().build().unwrap();
    /// let propagator = Propagator::new(&pool);
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert(X_REQUEST_ID, "checkout-42".parse().unwrap());
    /// let req = propagator.extract(&headers, None);
    ///
    /// let sub = req.context().with_cancel();
    /// let ctx = sub.context(); // what a spawned task holds
    /// let meta = Propagated::of(&ctx).unwrap();
    /// assert_eq!(meta.request_id().as_str(), "checkout-42");
    /// assert!(Propagated::of(&ctxpool::Context::background()).is_none());
    /// ```
    pub fn of(ctx: &Context) -> Option<&Propagated> {
        ctx.value::<SharedMeta>().map(|s| &**s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Propagator;
    use crate::{Config, Pool};

    /// N2: the request context node holds the metadata until its teardown; at pool
    /// exhaustion (no node) the value it would have carried is dropped, not leaked.
    #[test]
    fn the_node_holds_the_identity_and_exhaustion_drops_it() {
        let pool = Pool::builder()
            .config(&Config {
                pool_capacity: 1,
                ..Config::default()
            })
            .build()
            .unwrap();
        let p = Propagator::new(&pool);
        let req = p.extract(&http::HeaderMap::new(), None);
        let arc = req.shared_meta();
        // this clone, the `Incoming`, the node
        assert_eq!(Arc::strong_count(&arc), 3);
        let sub = req.context().with_cancel(); // born cancelled: the pool is full
        assert!(sub.context().is_cancelled());
        let second = p.extract(&http::HeaderMap::new(), None);
        assert!(second.context().is_cancelled());
        assert!(Propagated::of(&second.context()).is_none());
        assert_eq!(Arc::strong_count(&second.shared_meta()), 2);
        drop((sub, req));
        assert_eq!(Arc::strong_count(&arc), 1, "the node released its holder");
    }

    /// N1: the last holder puts the cleared value in its thread's free list; the next
    /// `SharedMeta::new` on the thread reuses it.
    #[test]
    fn last_holder_recycles() {
        let a = SharedMeta::new(Propagated::default());
        let ptr = Arc::as_ptr(a.arc());
        let b = a.clone();
        drop(a);
        drop(b);
        let c = SharedMeta::new(Propagated::default());
        assert_eq!(Arc::as_ptr(c.arc()), ptr);
    }
}
