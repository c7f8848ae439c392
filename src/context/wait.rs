//! Waiting for cancellation: the [`Cancelled`] future and the blocking `wait`.
//!
//! Both link a pinned [`Waiter`] into the node's list (tree I5) and register the node up the
//! tree (tree I8), so that a cancel anywhere above wakes them.

use core::borrow::Borrow;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};

use super::Context;
use crate::sync::thread;
use crate::sync::Ordering;
use crate::tree::state::{CANCELLED, LISTENED};
use crate::tree::wait::{lock, push, unlink, unlock, Waiter, Wake};
use crate::tree::{self as tree};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Init,
    Waiting,
    Done,
}

/// Future returned by [`Context::cancelled`]. Allocation-free, `Send`, and cancel-safe.
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled<'a> {
    wait: Wait<&'a Context>,
}

/// Future returned by [`Context::cancelled_owned`]: [`Cancelled`] holding its own handle
/// to the context, for a future or stream that must own what it waits on (`'static`).
/// Allocation-free, `Send`, and cancel-safe.
#[must_use = "futures do nothing unless polled"]
pub struct CancelledOwned {
    wait: Wait<Context>,
}

/// The state of both futures: `C` is how the context is held.
struct Wait<C: Borrow<Context>> {
    ctx: C,
    waiter: Waiter,
    stage: Stage,
}

impl<C: Borrow<Context>> Wait<C> {
    fn new(ctx: C) -> Self {
        Wait {
            ctx,
            waiter: Waiter::new(),
            stage: Stage::Init,
        }
    }

    fn fmt(&self, name: &str, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct(name)
            .field("ctx", &self.ctx.borrow().id())
            .field("stage", &self.stage)
            .finish()
    }
}

impl core::fmt::Debug for Cancelled<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.wait.fmt("Cancelled", f)
    }
}

impl core::fmt::Debug for CancelledOwned {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.wait.fmt("CancelledOwned", f)
    }
}

impl<'a> Cancelled<'a> {
    pub(crate) fn new(ctx: &'a Context) -> Self {
        Cancelled {
            wait: Wait::new(ctx),
        }
    }
}

impl CancelledOwned {
    pub(crate) fn new(ctx: Context) -> Self {
        CancelledOwned {
            wait: Wait::new(ctx),
        }
    }

    /// The context waited on.
    pub fn context(&self) -> &Context {
        &self.wait.ctx
    }
}

/// Links `waiter` (with `wake`) into the context's node unless it is cancelled. Returns
/// `false` if the context is already cancelled. The caller must then, *after* recording that
/// the waiter is linked (so that an unwind unlinks it), call [`register`].
///
/// # Safety
/// `waiter` is pinned and stays linked until it is notified or unlinked under the node's LOCK.
unsafe fn link(ctx: &Context, waiter: &Waiter, wake: Wake) -> bool {
    let Some(idx) = ctx.node_idx() else {
        return false;
    };
    // SAFETY: the handle keeps the node live (tree I1).
    let node = unsafe { ctx.inner().node(idx) };
    let s = lock(node);
    if s & CANCELLED != 0 {
        unlock(node);
        drop(wake);
        return false;
    }
    // SAFETY: LOCK held, node not cancelled, and the caller pins `waiter` (I5). The slot was
    // empty (a fresh waiter), so no user code (a waker's drop) runs under the lock.
    unsafe {
        waiter.set_wake(wake);
        push(node, waiter as *const Waiter as *mut Waiter);
    }
    if s & LISTENED == 0 {
        node.state.fetch_or(LISTENED, Ordering::Relaxed);
    }
    unlock(node);
    true
}

/// Registers the context's node up the tree (tree I8). May run user code (an `after_func`, a
/// `Drop`) through the cancels it completes, and so may unwind.
fn register(ctx: &Context) {
    if let Some(idx) = ctx.node_idx() {
        tree::ensure_registered(ctx.inner(), idx);
    }
}

/// Unlinks `waiter` unless a cancel already did (I5).
fn unlink_waiter(ctx: &Context, waiter: &Waiter) {
    if waiter.is_notified() {
        return;
    }
    let Some(idx) = ctx.node_idx() else { return };
    // SAFETY: the handle keeps the node live (I1).
    let node = unsafe { ctx.inner().node(idx) };
    lock(node);
    if !waiter.is_notified() {
        // SAFETY: LOCK held and the waiter is linked (not notified) (I5).
        unsafe { unlink(node, waiter as *const Waiter as *mut Waiter) };
    }
    unlock(node);
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        // SAFETY: `wait` is structurally pinned: it is never moved out of this pinned future
        // (no method moves it), so it stays where `Wait::poll` links it until its `Drop`.
        unsafe { self.get_unchecked_mut().wait.poll(cx) }
    }
}

impl Future for CancelledOwned {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        // SAFETY: as for `Cancelled`: `wait` is structurally pinned.
        unsafe { self.get_unchecked_mut().wait.poll(cx) }
    }
}

impl<C: Borrow<Context>> Wait<C> {
    /// The poll of both futures.
    ///
    /// # Safety
    /// `self` is pinned (never moved again until dropped): the waiter is linked by address
    /// from the first `Pending` until `Drop` unlinks it or a cancel notifies it (I5).
    unsafe fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self;
        let ctx: &Context = this.ctx.borrow();
        match this.stage {
            Stage::Done => Poll::Ready(()),
            Stage::Init => {
                if ctx.is_cancelled() {
                    this.stage = Stage::Done;
                    return Poll::Ready(());
                }
                if ctx.is_never_cancelled() {
                    return Poll::Pending;
                }
                // SAFETY: the waiter is pinned (this function's contract) and `Drop` unlinks it.
                if !unsafe { link(ctx, &this.waiter, Wake::Task(cx.waker().clone())) } {
                    this.stage = Stage::Done;
                    return Poll::Ready(());
                }
                // Recorded before `register`, which may unwind: `Drop` then unlinks the waiter.
                this.stage = Stage::Waiting;
                register(ctx);
                if this.waiter.is_notified() {
                    this.stage = Stage::Done;
                    return Poll::Ready(());
                }
                Poll::Pending
            }
            Stage::Waiting => {
                if this.waiter.is_notified() {
                    this.stage = Stage::Done;
                    return Poll::Ready(());
                }
                // Also complete if the context reads as cancelled while our wake-up is still
                // on its way (or was lost to a panicking waker elsewhere).
                if ctx.is_cancelled() {
                    unlink_waiter(ctx, &this.waiter);
                    this.stage = Stage::Done;
                    return Poll::Ready(());
                }
                let Some(idx) = ctx.node_idx() else {
                    return Poll::Pending;
                };
                // SAFETY: the handle keeps the node live (I1).
                let node = unsafe { ctx.inner().node(idx) };
                // Clone the new waker before taking the lock and drop the old one after
                // releasing it: no user code runs under the lock (state.rs).
                let mut fresh = Some(Wake::Task(cx.waker().clone()));
                lock(node);
                if this.waiter.is_notified() {
                    unlock(node);
                    this.stage = Stage::Done;
                    return Poll::Ready(());
                }
                // SAFETY: LOCK held (I5).
                unsafe {
                    if !this.waiter.will_wake(cx.waker()) {
                        fresh = this.waiter.replace_wake(fresh.take().expect("set above"));
                    }
                }
                unlock(node);
                drop(fresh);
                Poll::Pending
            }
        }
    }
}

impl<C: Borrow<Context>> Drop for Wait<C> {
    fn drop(&mut self) {
        if self.stage == Stage::Waiting {
            unlink_waiter(self.ctx.borrow(), &self.waiter);
        }
    }
}

/// Unlinks a blocking waiter when its frame is left, normally or by unwinding.
struct LinkedGuard<'a> {
    ctx: &'a Context,
    waiter: &'a Waiter,
}

impl Drop for LinkedGuard<'_> {
    fn drop(&mut self) {
        unlink_waiter(self.ctx, self.waiter);
    }
}

/// Blocks until cancelled or `deadline`; returns whether the context is cancelled.
pub(super) fn wait(ctx: &Context, deadline: Option<std::time::Instant>) -> bool {
    if ctx.is_cancelled() {
        return true;
    }
    let waiter = core::pin::pin!(Waiter::new());
    let waiter: &Waiter = &waiter;
    if ctx.is_never_cancelled() {
        loop {
            match deadline {
                #[cfg(not(loom))]
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return false;
                    }
                    thread::park_timeout(d - now);
                }
                #[cfg(loom)]
                Some(_) => return false,
                None => thread::park(),
            }
        }
    }
    // SAFETY: `waiter` is pinned on this frame and `_linked` unlinks it before the frame ends,
    // even when unwinding.
    if !unsafe { link(ctx, waiter, Wake::Thread(thread::current())) } {
        return true;
    }
    let _linked = LinkedGuard { ctx, waiter };
    register(ctx);
    loop {
        if waiter.is_notified() {
            return true;
        }
        match deadline {
            #[cfg(not(loom))]
            Some(d) => {
                let now = std::time::Instant::now();
                if now >= d {
                    return ctx.is_cancelled();
                }
                thread::park_timeout(d - now);
            }
            #[cfg(loom)]
            Some(_) => return ctx.is_cancelled(),
            None => thread::park(),
        }
    }
}
