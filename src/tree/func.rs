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
    /// A callback packed by [`pack`], owned by the new `Call`.
    pub(crate) fn new(f: Func) -> Self {
        Call { f: Some(f) }
    }

    /// Runs the callback; a panic is caught (the panic hook has printed it) and returned.
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

/// Runs `calls` off the current thread (the driver), on the callback runner: a pool of threads
/// that grows when every runner thread is busy, by one thread per batch handed over and, while
/// callbacks wait a tick, by one per such callback at the next driver turn
/// ([`spawn_if_stuck`]); a thread idle for a second ends. So a callback that blocks delays the others by about a tick at most (Go runs
/// each in a goroutine of its own), one that panics ends nothing (the panic hook prints it),
/// and a burst of thousands of deadlines firing at once does not start a thread each. If no
/// thread can be started, the callbacks run here (the only way not to lose them).
#[cfg(not(loom))]
pub(crate) fn run_detached(calls: Vec<Call>) {
    if calls.is_empty() {
        return;
    }
    let r = runner();
    let mut st = r.state.lock().unwrap_or_else(|e| e.into_inner());
    let now = std::time::Instant::now();
    st.queue.extend(calls.into_iter().map(|c| (now, c)));
    let spawn = st.idle == 0;
    if spawn {
        st.threads += 1;
    }
    drop(st);
    if spawn {
        r.spawn();
    } else {
        r.ready.notify_all();
    }
}

/// Called by the driver every turn: while no runner thread is idle (they all run callbacks
/// that block), starts one more for each callback that has waited a tick or more (at most 64
/// a turn). Returns whether callbacks wait (the driver keeps ticking then).
#[cfg(not(loom))]
pub(crate) fn spawn_if_stuck(tick: std::time::Duration) -> bool {
    let Some(r) = RUNNER.get() else {
        return false;
    };
    let mut st = r.state.lock().unwrap_or_else(|e| e.into_inner());
    let stuck = if st.idle == 0 {
        st.queue
            .iter()
            .take(64)
            .take_while(|(t, _)| t.elapsed() >= tick)
            .count()
    } else {
        0
    };
    st.threads += stuck;
    let waiting = !st.queue.is_empty();
    drop(st);
    for _ in 0..stuck {
        r.spawn();
    }
    waiting
}

/// The callback runner's shared state (see [`run_detached`]).
#[cfg(not(loom))]
struct Runner {
    state: std::sync::Mutex<RunnerState>,
    ready: std::sync::Condvar,
}

#[cfg(not(loom))]
struct RunnerState {
    /// Callbacks waiting, with the time each was handed over.
    queue: std::collections::VecDeque<(std::time::Instant, Call)>,
    /// Runner threads waiting for work.
    idle: usize,
    /// Runner threads alive (or being started).
    threads: usize,
}

#[cfg(not(loom))]
static RUNNER: std::sync::OnceLock<Runner> = std::sync::OnceLock::new();

#[cfg(not(loom))]
fn runner() -> &'static Runner {
    RUNNER.get_or_init(|| Runner {
        state: std::sync::Mutex::new(RunnerState {
            queue: std::collections::VecDeque::new(),
            idle: 0,
            threads: 0,
        }),
        ready: std::sync::Condvar::new(),
    })
}

#[cfg(not(loom))]
impl Runner {
    /// Starts a runner thread (the caller counted it in `threads`); if none can be started,
    /// runs what waits here.
    fn spawn(&'static self) {
        let started = std::thread::Builder::new()
            .name("ctxpool-callback".into())
            .spawn(move || self.work());
        if started.is_err() {
            let waiting: Vec<Call> = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                st.threads -= 1;
                st.queue.drain(..).map(|(_, c)| c).collect()
            };
            for call in waiting {
                let _ = call.run();
            }
        }
    }

    /// A runner thread: runs callbacks until none has come for a second.
    fn work(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((_, call)) = st.queue.pop_front() {
                drop(st);
                // A panic is caught in `run` (the panic hook has printed it): the thread goes on.
                let _ = call.run();
                st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.idle += 1;
            let (guard, timeout) = self
                .ready
                .wait_timeout(st, std::time::Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            st.idle -= 1;
            if timeout.timed_out() && st.queue.is_empty() {
                st.threads -= 1;
                return;
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
    /// A registration without a slot (`fallback.rs`) on context node `(idx, gen)`.
    Fallback(PoolRef, u32, u32, std::sync::Arc<crate::tree::wait::Waiter>),
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

    pub(crate) fn fallback(
        pool: PoolRef,
        idx: u32,
        gen: u32,
        waiter: std::sync::Arc<crate::tree::wait::Waiter>,
    ) -> Self {
        AfterFunc {
            target: Target::Fallback(pool, idx, gen, waiter),
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
            Target::Fallback(pool, idx, gen, waiter) => {
                return crate::tree::fallback::stop(pool.get(), *idx, *gen, waiter)
            }
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
            Target::Fallback(_, idx, gen, waiter) => f
                .debug_struct("AfterFunc")
                .field("id", &format_args!("{idx}v{gen}"))
                .field("fallback", &true)
                .field("pending", &!waiter.is_notified())
                .finish(),
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
