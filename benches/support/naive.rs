//! The textbook cancellation tree: what `ctxpool` is measured against, shared by
//! `benches/context.rs` and `examples/demo.rs`.
//!
//! Every node is its own `Arc` allocation; a parent keeps `Weak` links to its children under a
//! mutex so that cancelling it can reach them, and a child keeps a strong link to its parent.
//! This is the shape of Go's `context.cancelCtx` (a mutex-guarded children set) with Rust
//! ownership: the [`Guard`] owns a cancellable node like `CancelGuard` does.
//!
//! A node carries values of type `V`: `()` for the bench (the bare tree, so its nodes are no
//! bigger than the design needs), [`Labels`] for the demo (the operation label and request id
//! that its workload reads).

// Compiled into two targets that use different parts (the bench the bare `()` tree, the demo
// the `Labels` one), so each leaves some items unused.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use ctxpool::Op;

pub struct Node<V> {
    cancelled: AtomicBool,
    parent: Option<Arc<Node<V>>>,
    children: Mutex<Vec<Weak<Node<V>>>>,
    values: V,
}

impl<V> Node<V> {
    fn children(&self) -> MutexGuard<'_, Vec<Weak<Node<V>>>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the flag and cancels every live child, depth first. The flag is set under the
    /// children lock so that a child made concurrently is either on the list taken here or
    /// sees the flag (and is born cancelled).
    fn cancel(&self) -> bool {
        let children = {
            let mut list = self.children();
            if self.cancelled.swap(true, Ordering::AcqRel) {
                return false;
            }
            std::mem::take(&mut *list)
        };
        for child in children {
            if let Some(child) = child.upgrade() {
                child.cancel();
            }
        }
        true
    }
}

/// A cloneable handle (`Arc`) to a node.
pub struct Ctx<V = ()>(Arc<Node<V>>);

// Written out: `#[derive(Clone)]` would require `V: Clone`, and cloning only bumps the `Arc`.
impl<V> Clone for Ctx<V> {
    fn clone(&self) -> Self {
        Ctx(self.0.clone())
    }
}

impl<V> Ctx<V> {
    /// Whether this node or an ancestor was cancelled (propagation is eager: one load).
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// The values this node carries.
    pub fn values(&self) -> &V {
        &self.0.values
    }

    /// A cancellable child carrying `values`, registered on this node's children list.
    pub fn child_with(&self, values: V) -> Guard<V> {
        let node = Arc::new(Node {
            cancelled: AtomicBool::new(false),
            parent: Some(self.0.clone()),
            children: Mutex::new(Vec::new()),
            values,
        });
        {
            let mut list = self.0.children();
            if self.0.cancelled.load(Ordering::Acquire) {
                node.cancelled.store(true, Ordering::Release);
            } else {
                list.push(Arc::downgrade(&node));
            }
        }
        Guard(Ctx(node))
    }
}

impl Ctx {
    /// A cancellable child, registered on this node's children list.
    pub fn with_cancel(&self) -> Guard {
        self.child_with(())
    }
}

/// The owner of a cancellable node: dropping it cancels the node and unlinks it from its
/// parent's children list.
pub struct Guard<V = ()>(Ctx<V>);

impl<V> Guard<V> {
    /// A cancellable root carrying `values`.
    pub fn root_with(values: V) -> Guard<V> {
        Guard(Ctx(Arc::new(Node {
            cancelled: AtomicBool::new(false),
            parent: None,
            children: Mutex::new(Vec::new()),
            values,
        })))
    }

    /// Cancels this node and its subtree; whether this call did it.
    pub fn cancel(&self) -> bool {
        (self.0).0.cancel()
    }

    /// (references to the node, children still linked to it): (1, 0) once all else is gone.
    pub fn leftovers(&self) -> (usize, usize) {
        let node = &(self.0).0;
        (Arc::strong_count(node), node.children().len())
    }
}

impl Guard {
    /// A cancellable root.
    pub fn root() -> Guard {
        Guard::root_with(())
    }
}

impl<V> std::ops::Deref for Guard<V> {
    type Target = Ctx<V>;

    fn deref(&self) -> &Ctx<V> {
        &self.0
    }
}

impl<V> Drop for Guard<V> {
    fn drop(&mut self) {
        let node = &(self.0).0;
        node.cancel();
        if let Some(parent) = &node.parent {
            // Unlink by pointer identity, searching from the back (the most recent child
            // is the likeliest to go first), then swap_remove: O(1) for LIFO drops.
            let me = Arc::as_ptr(node);
            let mut list = parent.children();
            if let Some(i) = list.iter().rposition(|w| w.as_ptr() == me) {
                list.swap_remove(i);
            }
        }
    }
}

/// What a demo node carries: an operation label and a request id (inherited from the parent
/// unless the child sets its own).
pub struct Labels {
    op: Option<&'static Op>,
    request_id: Option<u64>,
}

impl Ctx<Labels> {
    pub fn request_id(&self) -> Option<u64> {
        self.values().request_id
    }

    pub fn op(&self) -> Option<&'static Op> {
        self.values().op
    }

    /// A cancellable child labelled `op`, with `request_id` or else this node's.
    pub fn child(&self, op: &'static Op, request_id: Option<u64>) -> Guard<Labels> {
        self.child_with(Labels {
            op: Some(op),
            request_id: request_id.or(self.values().request_id),
        })
    }
}

impl Guard<Labels> {
    /// A cancellable root labelled `op`, with no request id.
    pub fn labelled_root(op: &'static Op) -> Guard<Labels> {
        Guard::root_with(Labels {
            op: Some(op),
            request_id: None,
        })
    }
}
