//! `after_func`: a callback run once when a context is cancelled, stored in a pool node.
//!
//! An `after_func` registration is a node of its own (flag `F_FUNC`), a registered child of
//! the context, whose payload line holds the closure (up to 48 bytes inline, boxed beyond).
//! Running it and stopping it race through the node's cancel CAS, so exactly one wins (I7):
//!
//! ```text
//!            registered (refs: 1 "pending")
//!              │                        │
//!   ancestor cancel: CAS wins      stop(): CAS wins with STOPPED
//!              │                        │
//!       take closure, run it      unregister, take closure, drop it
//!              └──── drop "pending" ────┘──► node released, parent reference dropped
//! ```
//!
//! `stop()` returns `true` exactly when its CAS won, i.e. when it prevented the run.

use core::mem::{align_of, size_of, MaybeUninit};

use crate::pool::slot::{generation, refs};
use crate::pool::{PoolInner, PoolRef};
use crate::sync::{AtomicBool, Ordering};
use crate::tree::node::{Func, FUNC_WORDS};
use crate::tree::state::Packed;
use crate::tree::{drop_ref, set_cancelled, unregister, upgrade, wait::unlock, Kind, Won};

type Words = [MaybeUninit<usize>; FUNC_WORDS];

const fn is_inline<F>() -> bool {
    size_of::<F>() <= size_of::<Words>() && align_of::<F>() <= align_of::<usize>()
}

/// Moves the closure out of `data` and calls it.
///
/// # Safety
/// `data` holds an `F` packed by `pack::<F>`, owned by the caller and not taken before (I7).
unsafe fn call<F: FnOnce()>(data: *mut Words) {
    // SAFETY: `pack::<F>` wrote an `F` (or a `Box<F>`) into `data`, and the caller took
    // ownership of it by winning the func node's cancel CAS (I7), so it is read exactly once.
    let f: F = unsafe {
        if is_inline::<F>() {
            data.cast::<F>().read()
        } else {
            *Box::from_raw(data.cast::<*mut F>().read())
        }
    };
    f()
}

/// Drops the closure in `data` without calling it.
///
/// # Safety
/// As for [`call`].
unsafe fn drop_fn<F>(data: *mut Words) {
    // SAFETY: as for `call`: the caller owns the closure (I7) and drops it once.
    unsafe {
        if is_inline::<F>() {
            core::ptr::drop_in_place(data.cast::<F>());
        } else {
            drop(Box::from_raw(data.cast::<*mut F>().read()));
        }
    }
}

/// Packs a closure into node payload storage.
pub(crate) fn pack<F: FnOnce() + Send + 'static>(f: F) -> Func {
    let mut data: Words = [MaybeUninit::uninit(); FUNC_WORDS];
    if is_inline::<F>() {
        // SAFETY: `F` fits in `Words` in size and alignment (`is_inline`).
        unsafe { data.as_mut_ptr().cast::<F>().write(f) }
    } else {
        // A pointer written as bytes (not cast to an integer) keeps its provenance.
        // SAFETY: a pointer fits in the first word of `data` in size and alignment.
        unsafe {
            data.as_mut_ptr()
                .cast::<*mut F>()
                .write(Box::into_raw(Box::new(f)))
        }
    }
    Func {
        call: call::<F>,
        drop: drop_fn::<F>,
        data,
    }
}

fn take(pool: &PoolInner, idx: u32) -> Func {
    // SAFETY: the caller won the func node's cancel CAS, which gives it the closure (I7), and
    // holds a reference, so the slot is live.
    let node = unsafe { pool.node(idx) };
    // SAFETY: the payload of a func node is a `Func` written at creation (P2), read once here.
    node.payload.with(|p| unsafe { (*p).func })
}

/// Runs the closure of func node `idx` after its cancel CAS was won, then drops the
/// registration's "pending" reference. A panic in the closure is returned, not propagated, so
/// that the caller finishes its cancel first.
pub(crate) fn fire(pool: &PoolInner, idx: u32) -> std::thread::Result<()> {
    let f = take(pool, idx);
    let mut data = f.data;
    // SAFETY: `f.call` matches the closure stored in `data`, owned by us (I7).
    let r = crate::tree::catch(|| unsafe { (f.call)(&mut data) });
    // The canceller holds a reference above the func node, so this cannot free the pool; a
    // panicking value drop in the cascade is reported like the closure's own.
    let r2 = crate::tree::catch(|| drop(drop_ref(pool, idx)));
    r.and(r2)
}

/// A callback taken from its func node after its cancel CAS was won, to be run on another
/// thread (time D6: never on the driver). Dropped unrun, it drops the closure.
pub(crate) struct Call {
    f: Option<Func>,
}

// SAFETY: the closure was packed from an `F: FnOnce() + Send` (`pack`), and a `Call` owns it
// exclusively (I7), so moving it to another thread is moving an `F`.
unsafe impl Send for Call {}

impl Call {
    /// Runs the callback; a panic is caught (the panic hook has printed it) and returned.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn run(mut self) -> std::thread::Result<()> {
        let Some(f) = self.f.take() else {
            return Ok(());
        };
        let mut data = f.data;
        // SAFETY: `f.call` matches the closure in `data`, owned by this `Call` (I7).
        crate::tree::catch(|| unsafe { (f.call)(&mut data) })
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            let mut data = f.data;
            // SAFETY: as in `run`: ours, dropped once (I7).
            unsafe { (f.drop)(&mut data) };
        }
    }
}

/// Like [`fire`], but hands the closure back as a [`Call`] instead of running it (the
/// registration's "pending" reference is dropped now).
pub(crate) fn defer(pool: &PoolInner, idx: u32) -> std::thread::Result<Call> {
    let call = Call {
        f: Some(take(pool, idx)),
    };
    // As in `fire`: the canceller holds a reference above the func node.
    crate::tree::catch(|| drop(drop_ref(pool, idx))).map(|()| call)
}

/// Runs `calls` off the current thread (the driver), each on a thread of its own, as Go runs
/// each `AfterFunc` in a goroutine of its own: a callback that blocks delays no other, and one
/// that panics ends only its own thread (the panic hook prints it). If no thread can be
/// started, the callback runs here (the only way not to lose it).
#[cfg(not(loom))]
pub(crate) fn run_detached(calls: Vec<Call>) {
    for call in calls {
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(call)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("ctxpool-callback".into())
            .spawn(move || {
                let call = theirs.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(call) = call {
                    let _ = call.run();
                }
            });
        if spawned.is_err() {
            let call = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(call) = call {
                let _ = call.run();
            }
        }
    }
}

enum Target {
    /// The context can never be cancelled: the callback was dropped unrun; the flag says
    /// whether `stop` was called yet.
    Never(AtomicBool),
    /// The callback ran at registration (the context was already cancelled).
    Ran,
    /// A func node.
    Node(PoolRef, u32, u32),
}

/// The registration handle of [`Context::after_func`](crate::Context::after_func).
///
/// Dropping it does not stop the callback (as in Go); call [`AfterFunc::stop`] for that.
pub struct AfterFunc {
    target: Target,
}

impl AfterFunc {
    pub(crate) fn never() -> Self {
        AfterFunc {
            target: Target::Never(AtomicBool::new(false)),
        }
    }

    pub(crate) fn ran() -> Self {
        AfterFunc {
            target: Target::Ran,
        }
    }

    pub(crate) fn registered(pool: PoolRef, idx: u32, gen: u32) -> Self {
        AfterFunc {
            target: Target::Node(pool, idx, gen),
        }
    }

    /// Unregisters the callback. Returns `true` if this call stopped it from running, and
    /// `false` if it already ran (or is running) or was already stopped. As in Go, stopping the
    /// callback of a context that can never be cancelled returns `true` the first time.
    ///
    /// ```
    /// use ctxpool::Context;
    ///
    /// let ctx = Context::background().with_cancel();
    /// let handle = ctx.after_func(|| println!("cancelled"));
    /// assert!(handle.stop());
    /// assert!(!handle.stop());
    /// ```
    pub fn stop(&self) -> bool {
        let (pool, idx, gen) = match &self.target {
            Target::Never(stopped) => return !stopped.swap(true, Ordering::Relaxed),
            Target::Ran => return false,
            Target::Node(pool, idx, gen) => (pool.get(), *idx, *gen),
        };
        // `idx` came from this pool (P3); `upgrade` checks the generation (L2) and that the
        // slot holds a func node, whose payload is the closure `take` reads.
        if !upgrade(pool, idx, gen, Kind::Func) {
            return false;
        }
        // SAFETY: as above (P3).
        let node = unsafe { pool.node(idx) };
        let won = set_cancelled(node, Packed::STOPPED);
        if won != Won::Lost {
            if won == Won::Locked {
                unlock(node);
            }
            unregister(pool, idx);
            let f = take(pool, idx);
            let mut data = f.data;
            // SAFETY: we won the CAS, so the closure is ours to drop (I7).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                (f.drop)(&mut data)
            }));
            // This handle holds a pool reference, so neither drop can free the pool.
            drop(drop_ref(pool, idx)); // the "pending" reference
            drop(drop_ref(pool, idx)); // ours
            if let Err(p) = r {
                std::panic::resume_unwind(p);
            }
        } else {
            drop(drop_ref(pool, idx));
        }
        won != Won::Lost
    }
}

impl core::fmt::Debug for AfterFunc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.target {
            Target::Never(_) => f.write_str("AfterFunc(never)"),
            Target::Ran => f.write_str("AfterFunc(ran)"),
            Target::Node(pool, idx, gen) => {
                // SAFETY: `idx` came from this pool (P3); we only read the lifecycle word.
                let word = unsafe { pool.get().node(*idx) }
                    .life
                    .load(Ordering::Relaxed);
                let pending = generation(word) == *gen && refs(word) != 0;
                f.debug_struct("AfterFunc")
                    .field("id", &format_args!("{idx}v{gen}"))
                    .field("pending", &pending)
                    .finish()
            }
        }
    }
}
