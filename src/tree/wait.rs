//! Waiters: the intrusive list behind `cancelled()`, `wait()` and `wait_timeout()`.
//!
//! A [`Waiter`] lives inside the future or on the stack of the blocked thread (pinned, so no
//! allocation), and is linked into its node's waiter list while it waits. The list and the
//! waiter's `prev`/`next`/`wake` fields are guarded by the node's `LOCK` bit (tree I5).
//!
//! ```text
//!  node.waiters ──► [Waiter] ◄──► [Waiter] ◄──► [Waiter]     (each in a pinned future/frame)
//! ```

use core::marker::PhantomPinned;
use core::ptr;
use core::task::Waker;

use crate::sync::cell::UnsafeCell;
use crate::sync::thread::Thread;
use crate::sync::{spin_hint, AtomicBool, Ordering};
use crate::tree::fallback::Registered;
use crate::tree::node::Node;
use crate::tree::state::{LOCKED, WAKE_BATCH};

/// How to wake a waiter.
pub(crate) enum Wake {
    Task(Waker),
    Thread(Thread),
    /// An `after_func` registered without a slot (`fallback.rs`): the callback itself.
    Func(Box<Registered>),
}

impl Wake {
    /// Wakes the waiter; for [`Wake::Func`] runs the callback here, re-raising its panic
    /// after the registration is released.
    pub(crate) fn wake(self) {
        match self {
            Wake::Task(w) => w.wake(),
            Wake::Thread(t) => t.unpark(),
            Wake::Func(r) => {
                if let Err(p) = r.run() {
                    std::panic::resume_unwind(p);
                }
            }
        }
    }
}

/// A pinned, intrusive waiter.
pub(crate) struct Waiter {
    prev: UnsafeCell<*mut Waiter>,
    next: UnsafeCell<*mut Waiter>,
    wake: UnsafeCell<Option<Wake>>,
    /// Set (under the node's LOCK) when the canceller unlinked this waiter and took its `wake`.
    notified: AtomicBool,
    _pin: PhantomPinned,
}

// SAFETY: the raw pointers are only followed under the owning node's LOCK (tree I5), and the
// waker and thread handle inside are `Send`.
unsafe impl Send for Waiter {}
// SAFETY: shared access goes through the node's LOCK or the atomic `notified`.
unsafe impl Sync for Waiter {}

impl Waiter {
    pub(crate) fn new() -> Self {
        Waiter {
            prev: UnsafeCell::new(ptr::null_mut()),
            next: UnsafeCell::new(ptr::null_mut()),
            wake: UnsafeCell::new(None),
            notified: AtomicBool::new(false),
            _pin: PhantomPinned,
        }
    }

    /// Whether a cancel unlinked and woke this waiter.
    #[inline]
    pub(crate) fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Replaces the wake handle.
    ///
    /// # Safety
    /// The caller holds the node's LOCK, or the waiter is not linked.
    pub(crate) unsafe fn set_wake(&self, wake: Wake) {
        // SAFETY: per the contract nobody else accesses `wake` now.
        self.wake.with_mut(|w| unsafe { *w = Some(wake) });
    }

    /// Takes the wake handle and marks the waiter notified (fallback F3).
    ///
    /// # Safety
    /// The caller holds the node's LOCK and has unlinked the waiter, or it was never linked.
    pub(crate) unsafe fn take_wake(&self) -> Option<Wake> {
        // SAFETY: per the contract nobody else accesses `wake` now.
        let w = self.wake.with_mut(|w| unsafe { (*w).take() });
        self.notified.store(true, Ordering::Release);
        w
    }

    /// Swaps the wake handle, returning the old one (to be dropped after the LOCK is released).
    ///
    /// # Safety
    /// As for [`Waiter::set_wake`].
    pub(crate) unsafe fn replace_wake(&self, wake: Wake) -> Option<Wake> {
        // SAFETY: per the contract nobody else accesses `wake` now.
        self.wake.with_mut(|w| unsafe { (*w).replace(wake) })
    }

    /// Whether the stored task waker would wake the same task as `waker`.
    ///
    /// # Safety
    /// As for [`Waiter::set_wake`].
    pub(crate) unsafe fn will_wake(&self, waker: &Waker) -> bool {
        // SAFETY: per the contract nobody else accesses `wake` now.
        self.wake
            .with(|w| matches!(unsafe { &*w }, Some(Wake::Task(old)) if old.will_wake(waker)))
    }
}

/// Acquires `node`'s LOCK bit; returns the state word seen when it was taken (with LOCKED).
#[inline]
pub(crate) fn lock(node: &Node) -> u64 {
    let mut s = node.state.load(Ordering::Relaxed);
    loop {
        if s & LOCKED != 0 {
            spin_hint();
            s = node.state.load(Ordering::Relaxed);
            continue;
        }
        match node
            .state
            .compare_exchange_weak(s, s | LOCKED, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => return s | LOCKED,
            Err(actual) => s = actual,
        }
    }
}

/// Releases `node`'s LOCK bit.
#[inline]
pub(crate) fn unlock(node: &Node) {
    node.state.fetch_and(!LOCKED, Ordering::Release);
}

/// Links `w` at the head of `node`'s list.
///
/// # Safety
/// The caller holds `node`'s LOCK, the node is not cancelled, and `w` is pinned and not linked.
pub(crate) unsafe fn push(node: &Node, w: *mut Waiter) {
    // SAFETY: LOCK held (I5): we are the only thread touching the list and `w`'s links.
    unsafe {
        let head = node.waiters.with(|h| *h);
        (*w).next.with_mut(|n| *n = head);
        (*w).prev.with_mut(|p| *p = ptr::null_mut());
        if !head.is_null() {
            (*head).prev.with_mut(|p| *p = w);
        }
        node.waiters.with_mut(|h| *h = w);
    }
}

/// Unlinks `w` from `node`'s list.
///
/// # Safety
/// The caller holds `node`'s LOCK and `w` is linked in that list (not notified).
pub(crate) unsafe fn unlink(node: &Node, w: *mut Waiter) {
    // SAFETY: LOCK held (I5) and `w` is linked, so its neighbours are live linked waiters.
    unsafe {
        let prev = (*w).prev.with(|p| *p);
        let next = (*w).next.with(|n| *n);
        if prev.is_null() {
            node.waiters.with_mut(|h| *h = next);
        } else {
            (*prev).next.with_mut(|n| *n = next);
        }
        if !next.is_null() {
            (*next).prev.with_mut(|p| *p = prev);
        }
    }
}

/// Unlinks up to `WAKE_BATCH` waiters, marks them notified and returns their wake handles;
/// the second value says whether waiters remain.
///
/// # Safety
/// The caller holds `node`'s LOCK and the node is cancelled (so nobody links new waiters).
pub(crate) unsafe fn take_batch(node: &Node) -> ([Option<Wake>; WAKE_BATCH], bool) {
    let mut batch: [Option<Wake>; WAKE_BATCH] = Default::default();
    // SAFETY: LOCK held (I5); each linked waiter is live until it is notified or unlinks itself
    // under this same lock.
    unsafe {
        for slot in batch.iter_mut() {
            let w = node.waiters.with(|h| *h);
            if w.is_null() {
                return (batch, false);
            }
            let next = (*w).next.with(|n| *n);
            node.waiters.with_mut(|h| *h = next);
            if !next.is_null() {
                (*next).prev.with_mut(|p| *p = ptr::null_mut());
            }
            *slot = (*w).wake.with_mut(|k| (*k).take());
            // After this store the waiter's owner may free it: no more accesses to `w`.
            (*w).notified.store(true, Ordering::Release);
        }
        let more = !node.waiters.with(|h| *h).is_null();
        (batch, more)
    }
}
