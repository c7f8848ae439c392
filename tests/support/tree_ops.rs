//! The differential driver shared by `tests/model.rs` (proptest), `tests/corpus.rs` (replay
//! of the committed fuzz corpus) and `fuzz/fuzz_targets/tree_ops.rs` (libFuzzer).
//!
//! A byte string decodes ([`decode`], hand-rolled so that proptest and libFuzzer feed it the
//! same way) into a [`Program`]: a small header and a list of [`Step`]s. [`run`] executes the
//! program against both
//!
//! - the real library, in a fresh built pool of a small capacity (so exhaustion happens), and
//! - a reference model written to be obviously correct: every context is an
//!   `Arc<MNode>` holding a strong link to its parent (so a node lives exactly as long as a
//!   handle, a child or a pending `after_func` reaches it, as the library's references do),
//!   with its cause, child list and pending registrations under a `Mutex`. Cancellation is
//!   *eager* in the model (Go's semantics): cancelling a node records its cause and at once
//!   gives every non-cancelled descendant that is not behind a `without_cancel` node the cause
//!   `Parent(origin)`, and runs their pending `after_func`s. The library propagates lazily,
//!   so any difference in what a handle observes is a bug of one of the two.
//!
//! After every step every observable of every held handle, weak id, registration and value is
//! compared ([`Harness::check`]), and at the end everything is dropped in an order decoded from
//! the header, after which the pool must be empty (`in_use == 0`, `created == released`), every
//! stored value must have been dropped exactly once and every `after_func` closure run at most
//! once and dropped exactly once.
//!
//! Reading a context's cancellation (`is_cancelled`, `err`, `cause`) *adopts* an ancestor's
//! cancellation into the node in the library, which would hide a bug where lazy propagation
//! leaks (a later explicit cancel winning over an earlier ancestor's). So a header bit picks
//! between *eager checks* (cancellation read on every handle after every step) and *lazy
//! checks* (cancellation read only by [`Step::Read`], [`Step::ReadWeak`], [`Step::CheckAll`]
//! and once before the final drops; everything that does not perturb the library, such as
//! values, ids, liveness of weak ids, run counts, drop counts and pool counters, is still
//! compared after every step).
//!
//! One latitude is deliberate: a weak id is only promised to upgrade while a handle of its
//! context is held. Once only descendants or pending `after_func`s keep the context alive, the
//! library may already treat it as released (see `Harness::zombie_tolerated`). Everything
//! else is Go's semantics exactly, with every value and closure dropped exactly once.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use ctxpool::{
    AfterFunc, CancelGuard, Cause, Context, ContextError, ContextId, Op, Origin, Pool,
    PoolExhausted, Reason, RequestId, TraceContext, UserId, WeakContext, INLINE_VALUE_BYTES,
};

/// Most steps one input runs (longer inputs are cut), so that one fuzz input stays fast.
pub const MAX_STEPS: usize = 512;

/// Pool capacities a header can pick: mostly tiny, so that exhaustion is common.
pub const CAPACITIES: [u32; 8] = [64, 64, 1, 2, 3, 4, 8, 16];

static OPS: [Op; 3] = [Op::new("alpha"), Op::new("beta"), Op::new("gamma")];

/// Messages a [`Why::Message`] can carry (the empty one is an edge case of the encoding).
pub const MESSAGES: [&str; 4] = ["client went away", "", "budget spent", "ünïcødé ✓"];

// ---------------------------------------------------------------------------------------------
// Programs: what a byte string means
// ---------------------------------------------------------------------------------------------

/// Run-wide settings, from the first two bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Index into [`CAPACITIES`] (0..8).
    pub capacity: u8,
    /// Read cancellation only on explicit reads (see the module docs).
    pub lazy: bool,
    /// Build the pool with `thread_cache(1)`, so freed slots spill to the shared list.
    pub small_cache: bool,
    /// Seeds the order of the final drops.
    pub seed: u8,
}

/// One operation. Indices (`h`, `g`, `w`, `r`, `parent`) are taken modulo the number of held
/// handles, guards, weak ids or registrations when the step runs; a step with nothing to act
/// on does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make a child of held handle `parent` (of the pool's background if none is held).
    Child { parent: u8, make: Make },
    /// Clone a handle (`guard.context()` for a guard).
    Clone { h: u8 },
    /// Cancel guard `g`.
    Cancel { g: u8, why: Why },
    /// Drop guard `g` (cancels with `OwnerDropped`).
    DropGuard { g: u8 },
    /// Drop held handle `h`, guard or not.
    DropHandle { h: u8 },
    /// Register an `after_func` on handle `h`.
    AfterFunc { h: u8, boxed: bool, try_: bool },
    /// `stop()` registration `r`.
    Stop { r: u8 },
    /// Drop the `AfterFunc` handle of registration `r` (which does not stop it).
    ForgetReg { r: u8 },
    /// Read everything on handle `h`, cancellation included.
    Read { h: u8 },
    /// `downgrade()` handle `h`.
    Downgrade { h: u8 },
    /// `upgrade()` weak id `w`; a success becomes a held handle.
    Upgrade { w: u8 },
    /// Drop weak id `w`.
    DropWeak { w: u8 },
    /// `is_cancelled()` of weak id `w`.
    ReadWeak { w: u8 },
    /// Read everything on every handle and weak id.
    CheckAll,
}

/// How a child is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Make {
    /// `with_cancel()` (or `try_with_cancel()`).
    WithCancel { try_: bool },
    /// `child().build()` (or `try_build()`).
    Build { try_: bool },
    /// `without_cancel()`.
    WithoutCancel,
    /// `with_value(v)` (or `child().try_with_value(v)`).
    Value {
        kind: ValueKind,
        arg: u8,
        try_: bool,
    },
    /// `child()` with a request id, optionally an op, user id and trace, then `then`.
    Builder {
        req: u8,
        op: Option<u8>,
        user: bool,
        trace: bool,
        then: Then,
    },
}

/// The end of a [`Make::Builder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    WithCancel,
    TryWithCancel,
    Build,
    TryBuild,
    WithoutCancel,
    /// `.with_value(u64::from(arg))`.
    Value(u8),
}

/// The type of a custom value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// A `u64`, stored inline.
    U64,
    /// [`InlineVal`]: stored inline, with drop glue.
    Inline,
    /// [`BoxedVal`]: larger than a word, so boxed by the library.
    Boxed,
}

/// The cause of an explicit cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// `cancel(Reason::None)`.
    None,
    /// `cancel(code)`; 31 means `u32::MAX`.
    Code(u8),
    /// `cancel(MESSAGES[i % 4])`.
    Message(u8),
    /// `cancel_with(Origin::Shutdown)`.
    Shutdown,
    /// `cancel_with(Origin::DeadlineExceeded)`.
    Deadline,
    /// `cancel_with(Origin::OwnerDropped)`.
    OwnerDropped,
    /// `cancel_with(Origin::PoolExhausted)`.
    Exhausted,
}

impl Why {
    fn origin(self) -> Origin {
        match self {
            Why::None => Origin::Cancelled(Reason::None),
            Why::Code(c) => Origin::Cancelled(Reason::Code(code(c))),
            Why::Message(m) => Origin::Cancelled(Reason::Message(message(m))),
            Why::Shutdown => Origin::Shutdown,
            Why::Deadline => Origin::DeadlineExceeded(deadline_at()),
            Why::OwnerDropped => Origin::OwnerDropped,
            Why::Exhausted => Origin::PoolExhausted,
        }
    }
}

fn code(c: u8) -> u32 {
    if c >= 31 {
        u32::MAX
    } else {
        u32::from(c)
    }
}

fn message(m: u8) -> &'static str {
    MESSAGES[usize::from(m) % MESSAGES.len()]
}

/// A decoded input.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Program {
    pub config: Config,
    pub steps: Vec<Step>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn more(&self) -> bool {
        self.pos < self.data.len()
    }

    /// The next byte; 0 past the end, so a cut input still decodes.
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
}

/// Decodes a byte string; every byte string is a valid program.
///
/// Layout: `[h0, seed, step...]`. `h0`: bits 0–2 capacity index, bit 3 lazy checks, bit 4
/// `thread_cache(1)`. Each step is an opcode byte (modulo 16) and its arguments.
pub fn decode(data: &[u8]) -> Program {
    let mut r = Reader { data, pos: 0 };
    let h0 = r.byte();
    let config = Config {
        capacity: h0 & 7,
        lazy: h0 & 8 != 0,
        small_cache: h0 & 16 != 0,
        seed: r.byte(),
    };
    let mut steps = Vec::new();
    while r.more() && steps.len() < MAX_STEPS {
        let step = match r.byte() % 16 {
            0 | 1 => {
                let parent = r.byte();
                let make = decode_make(&mut r);
                Step::Child { parent, make }
            }
            2 => Step::Clone { h: r.byte() },
            3 | 15 => Step::Cancel {
                g: r.byte(),
                why: decode_why(r.byte()),
            },
            4 => Step::DropGuard { g: r.byte() },
            5 => Step::DropHandle { h: r.byte() },
            6 => {
                let h = r.byte();
                let f = r.byte();
                Step::AfterFunc {
                    h,
                    boxed: f & 1 != 0,
                    try_: f & 2 != 0,
                }
            }
            7 => Step::Stop { r: r.byte() },
            8 => Step::ForgetReg { r: r.byte() },
            9 => Step::Read { h: r.byte() },
            10 => Step::Downgrade { h: r.byte() },
            11 => Step::Upgrade { w: r.byte() },
            12 => Step::DropWeak { w: r.byte() },
            13 => Step::ReadWeak { w: r.byte() },
            _ => Step::CheckAll,
        };
        steps.push(step);
    }
    Program { config, steps }
}

fn decode_make(r: &mut Reader<'_>) -> Make {
    let m = r.byte();
    match m % 8 {
        0 | 7 => Make::WithCancel { try_: false },
        1 => Make::WithCancel { try_: true },
        2 => Make::Build { try_: m & 8 != 0 },
        3 => Make::Build { try_: true },
        4 => Make::WithoutCancel,
        5 => {
            let sel = (m >> 3) % 6;
            Make::Value {
                kind: [ValueKind::U64, ValueKind::Inline, ValueKind::Boxed][usize::from(sel % 3)],
                try_: sel >= 3,
                arg: r.byte(),
            }
        }
        _ => {
            let req = r.byte();
            let f = r.byte();
            let then = match (f >> 4) % 6 {
                0 => Then::WithCancel,
                1 => Then::TryWithCancel,
                2 => Then::Build,
                3 => Then::TryBuild,
                4 => Then::WithoutCancel,
                _ => Then::Value(r.byte()),
            };
            Make::Builder {
                req,
                op: (f & 3 != 3).then_some(f & 3),
                user: f & 4 != 0,
                trace: f & 8 != 0,
                then,
            }
        }
    }
}

fn decode_why(w: u8) -> Why {
    let p = w >> 3;
    match w & 7 {
        0 => Why::None,
        1 | 7 => Why::Code(p),
        2 => Why::Message(p % MESSAGES.len() as u8),
        3 => Why::Shutdown,
        4 => Why::Deadline,
        5 => Why::OwnerDropped,
        _ => Why::Exhausted,
    }
}

/// Encodes a program so that `decode(&encode(p)) == p` (for programs whose fields are in the
/// ranges `decode` produces; `model.rs` checks the round trip).
pub fn encode(p: &Program) -> Vec<u8> {
    let c = p.config;
    let mut out = vec![
        (c.capacity & 7) | (u8::from(c.lazy) << 3) | (u8::from(c.small_cache) << 4),
        c.seed,
    ];
    for s in &p.steps {
        match *s {
            Step::Child { parent, make } => {
                out.extend([0, parent]);
                encode_make(make, &mut out);
            }
            Step::Clone { h } => out.extend([2, h]),
            Step::Cancel { g, why } => out.extend([3, g, encode_why(why)]),
            Step::DropGuard { g } => out.extend([4, g]),
            Step::DropHandle { h } => out.extend([5, h]),
            Step::AfterFunc { h, boxed, try_ } => {
                out.extend([6, h, u8::from(boxed) | (u8::from(try_) << 1)])
            }
            Step::Stop { r } => out.extend([7, r]),
            Step::ForgetReg { r } => out.extend([8, r]),
            Step::Read { h } => out.extend([9, h]),
            Step::Downgrade { h } => out.extend([10, h]),
            Step::Upgrade { w } => out.extend([11, w]),
            Step::DropWeak { w } => out.extend([12, w]),
            Step::ReadWeak { w } => out.extend([13, w]),
            Step::CheckAll => out.push(14),
        }
    }
    out
}

fn encode_make(m: Make, out: &mut Vec<u8>) {
    match m {
        Make::WithCancel { try_ } => out.push(u8::from(try_)),
        Make::Build { try_ } => out.push(if try_ { 3 } else { 2 }),
        Make::WithoutCancel => out.push(4),
        Make::Value { kind, arg, try_ } => {
            let sel = match kind {
                ValueKind::U64 => 0,
                ValueKind::Inline => 1,
                ValueKind::Boxed => 2,
            } + if try_ { 3 } else { 0 };
            out.extend([5 | (sel << 3), arg]);
        }
        Make::Builder {
            req,
            op,
            user,
            trace,
            then,
        } => {
            let t = match then {
                Then::WithCancel => 0,
                Then::TryWithCancel => 1,
                Then::Build => 2,
                Then::TryBuild => 3,
                Then::WithoutCancel => 4,
                Then::Value(_) => 5,
            };
            let f =
                op.map_or(3, |o| o & 3) | (u8::from(user) << 2) | (u8::from(trace) << 3) | (t << 4);
            out.extend([6, req, f]);
            if let Then::Value(v) = then {
                out.push(v);
            }
        }
    }
}

fn encode_why(w: Why) -> u8 {
    match w {
        Why::None => 0,
        Why::Code(c) => 1 | (c.min(31) << 3),
        Why::Message(m) => 2 | ((m % MESSAGES.len() as u8) << 3),
        Why::Shutdown => 3,
        Why::Deadline => 4,
        Why::OwnerDropped => 5,
        Why::Exhausted => 6,
    }
}

// ---------------------------------------------------------------------------------------------
// Values and closures whose drops are counted
// ---------------------------------------------------------------------------------------------

/// Book-keeping for one custom value: its drops by the library and by the model.
pub struct ValueRec {
    tag: u8,
    real_drops: AtomicU32,
    model_drops: AtomicU32,
}

/// A custom value stored inline in the node (one word), with drop glue.
pub struct InlineVal(Arc<ValueRec>);

/// A custom value too large for the node: the library boxes it.
pub struct BoxedVal(Arc<ValueRec>, [u64; 2]);

const _: () = assert!(std::mem::size_of::<InlineVal>() <= INLINE_VALUE_BYTES);
const _: () = assert!(std::mem::size_of::<BoxedVal>() > INLINE_VALUE_BYTES);

impl Drop for InlineVal {
    fn drop(&mut self) {
        self.0.real_drops.fetch_add(1, SeqCst);
    }
}

impl Drop for BoxedVal {
    fn drop(&mut self) {
        self.0.real_drops.fetch_add(1, SeqCst);
    }
}

/// Book-keeping for one `after_func` closure: runs and drops, as the library did them.
pub struct RegRec {
    runs: AtomicU32,
    drops: AtomicU32,
}

/// Captured by every closure: counts its drop.
struct OnDrop(Arc<RegRec>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.drops.fetch_add(1, SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// Counters shared by all model nodes.
struct Book {
    capacity: usize,
    /// Slots in use: live context nodes and pending registrations.
    slots: AtomicUsize,
    /// Times a slot was asked for and none was free.
    exhausted: AtomicU64,
}

impl Book {
    fn alloc(&self) -> bool {
        if self.slots.load(SeqCst) < self.capacity {
            self.slots.fetch_add(1, SeqCst);
            true
        } else {
            self.exhausted.fetch_add(1, SeqCst);
            false
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MKind {
    Background,
    /// Born cancelled at exhaustion: no slot; a view of the node it was made under (its
    /// `parent`, the nearest node with a slot), whose values it reads; `None` under the
    /// background. Its cause is fixed at birth (issue 13 item 6).
    Exhausted,
    /// A `without_cancel` made at exhaustion: no slot, never cancelled, a view of `parent`.
    LiveView,
    Cancel,
    Plain,
    Detached,
    Value,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Vals {
    op: Option<&'static str>,
    trace: Option<TraceContext>,
    req: Option<RequestId>,
    user: Option<UserId>,
}

enum MValue {
    U64(u64),
    Inline(Arc<ValueRec>),
    Boxed(Arc<ValueRec>),
}

struct MState {
    cause: Option<Cause>,
    children: Vec<Weak<MNode>>,
    /// Pending registrations on this node.
    regs: Vec<Arc<MReg>>,
}

/// A model context.
struct MNode {
    /// The strong link a child holds on its parent (for a view, on the node it reads); `None`
    /// for the background and for exhausted contexts made under it.
    parent: Option<Arc<MNode>>,
    kind: MKind,
    never: bool,
    slot: bool,
    vals: Vals,
    own: Option<MValue>,
    book: Arc<Book>,
    st: Mutex<MState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for MNode {
    fn drop(&mut self) {
        if self.slot {
            self.book.slots.fetch_sub(1, SeqCst);
        }
        if let Some(MValue::Inline(rec) | MValue::Boxed(rec)) = &self.own {
            rec.model_drops.fetch_add(1, SeqCst);
        }
    }
}

impl MNode {
    fn new(
        parent: Option<Arc<MNode>>,
        kind: MKind,
        never: bool,
        cause: Option<Cause>,
        vals: Vals,
        own: Option<MValue>,
        book: &Arc<Book>,
    ) -> Arc<MNode> {
        Arc::new(MNode {
            // Views hold no slot (issue 13 item 6).
            slot: parent.is_some() && !matches!(kind, MKind::Exhausted | MKind::LiveView),
            parent,
            kind,
            never,
            vals,
            own,
            book: book.clone(),
            st: Mutex::new(MState {
                cause,
                children: Vec::new(),
                regs: Vec::new(),
            }),
        })
    }

    /// A context born cancelled at exhaustion, a view of `of` (the node it reads, if any).
    fn exhausted(of: Option<Arc<MNode>>, inherited: bool, book: &Arc<Book>) -> Arc<MNode> {
        let cause = if inherited {
            Cause::Parent(Origin::PoolExhausted)
        } else {
            Cause::PoolExhausted
        };
        MNode::view(of, MKind::Exhausted, Some(cause), book)
    }

    /// A child of `parent` born cancelled at exhaustion: `PoolExhausted`, or under a parent
    /// already cancelled (a plain node, or a view born cancelled) `Parent` of its cause, as
    /// with a slot; a view of the node `parent` reads.
    fn exhausted_under(parent: &Arc<MNode>, book: &Arc<Book>) -> Arc<MNode> {
        match (parent.kind, parent.cause()) {
            (MKind::LiveView | MKind::Background, _) | (_, None) => {
                MNode::exhausted(parent.viewed(), false, book)
            }
            (_, Some(c)) => MNode::view(
                parent.viewed(),
                MKind::Exhausted,
                Some(Cause::Parent(c.origin())),
                book,
            ),
        }
    }

    /// A view (no slot, no own value) of `of`: reads its values; not one of its children (a
    /// cancel of `of` does not reach it).
    fn view(
        of: Option<Arc<MNode>>,
        kind: MKind,
        cause: Option<Cause>,
        book: &Arc<Book>,
    ) -> Arc<MNode> {
        let vals = of.as_ref().map(|n| n.vals).unwrap_or_default();
        MNode::new(of, kind, kind == MKind::LiveView, cause, vals, None, book)
    }

    fn is_view(&self) -> bool {
        matches!(self.kind, MKind::Exhausted | MKind::LiveView)
    }

    /// The node a view of this context reads: itself, or the one it views itself.
    fn viewed(self: &Arc<Self>) -> Option<Arc<MNode>> {
        match self.kind {
            MKind::Background => None,
            MKind::Exhausted | MKind::LiveView => self.parent.clone(),
            _ => Some(self.clone()),
        }
    }

    fn cause(&self) -> Option<Cause> {
        lock(&self.st).cause
    }

    /// The nearest custom value that `pick` accepts, on this node or an ancestor.
    fn lookup<T>(&self, pick: impl Fn(&MValue) -> Option<T>) -> Option<T> {
        let mut cur = Some(self);
        while let Some(n) = cur {
            if let Some(v) = n.own.as_ref().and_then(&pick) {
                return Some(v);
            }
            cur = n.parent.as_deref();
        }
        None
    }

    fn value_u64(&self) -> Option<u64> {
        self.lookup(|v| match v {
            MValue::U64(x) => Some(*x),
            _ => None,
        })
    }

    fn value_inline(&self) -> Option<u8> {
        self.lookup(|v| match v {
            MValue::Inline(r) => Some(r.tag),
            _ => None,
        })
    }

    fn value_boxed(&self) -> Option<u8> {
        self.lookup(|v| match v {
            MValue::Boxed(r) => Some(r.tag),
            _ => None,
        })
    }
}

/// The instant the model cancels with for `Why::Deadline` (the library records it at
/// millisecond granularity on its pool's clock, so causes are compared with `norm_deadline`).
pub fn deadline_at() -> std::time::Instant {
    static AT: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *AT.get_or_init(std::time::Instant::now)
}

/// A cause with any recorded deadline replaced by `deadline_at()`.
fn norm_deadline(c: Cause) -> Cause {
    match c {
        Cause::DeadlineExceeded(_) => Cause::DeadlineExceeded(deadline_at()),
        Cause::Parent(Origin::DeadlineExceeded(_)) => {
            Cause::Parent(Origin::DeadlineExceeded(deadline_at()))
        }
        c => c,
    }
}

/// Go's `ctx.Err()` for a cause, written out independently of `Cause::error`.
fn model_err(c: Cause) -> ContextError {
    match c {
        Cause::DeadlineExceeded(_) | Cause::Parent(Origin::DeadlineExceeded(_)) => {
            ContextError::DeadlineExceeded
        }
        _ => ContextError::Canceled,
    }
}

/// Cancels `n` with `origin` (Go: `cancel()` then every descendant at once); returns whether
/// this recorded the cause.
fn model_cancel(n: &Arc<MNode>, origin: Origin) -> bool {
    {
        let mut st = lock(&n.st);
        if st.cause.is_some() || n.never {
            return false;
        }
        st.cause = Some(Cause::from(origin));
    }
    let inherited = Cause::Parent(origin);
    let mut fired = Vec::new();
    let mut work = vec![n.clone()];
    while let Some(x) = work.pop() {
        let children: Vec<Arc<MNode>> = {
            let mut st = lock(&x.st);
            fired.append(&mut st.regs);
            st.children.iter().filter_map(Weak::upgrade).collect()
        };
        for c in children {
            if c.kind == MKind::Detached {
                continue;
            }
            let mut cs = lock(&c.st);
            // A cancelled child's subtree was cancelled with it.
            if cs.cause.is_none() {
                cs.cause = Some(inherited);
                drop(cs);
                work.push(c);
            }
        }
    }
    for r in fired {
        r.finish(RegState::Ran);
    }
    true
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegState {
    /// Registered, holds a slot and its context.
    Pending,
    /// Ran (at cancellation, or at registration on a cancelled context).
    Ran,
    /// Stopped before it ran.
    Stopped,
    /// On a context that can never be cancelled: never runs.
    Never { stopped: bool },
    /// `try_after_func` handed the closure back (exhaustion); we dropped it.
    HandedBack,
}

/// A model `after_func` registration.
struct MReg {
    state: Mutex<RegState>,
    /// Holds a pool slot while pending (`false`: registered without one, at exhaustion).
    slot: bool,
    /// The context, held while pending.
    node: Mutex<Option<Arc<MNode>>>,
}

impl MReg {
    fn state(&self) -> RegState {
        *lock(&self.state)
    }

    /// Pending → `to`: gives back the slot and the reference on the context.
    fn finish(&self, to: RegState) {
        let mut s = lock(&self.state);
        assert_eq!(
            *s,
            RegState::Pending,
            "model: finishing a registration twice"
        );
        *s = to;
        drop(s);
        let node = lock(&self.node)
            .take()
            .expect("a pending registration holds its context");
        if self.slot {
            node.book.slots.fetch_sub(1, SeqCst);
        }
        drop(node);
    }

    fn stop(self: &Arc<Self>) -> bool {
        match self.state() {
            RegState::Pending => {
                let node = lock(&self.node).clone().expect("pending");
                lock(&node.st).regs.retain(|r| !Arc::ptr_eq(r, self));
                drop(node);
                self.finish(RegState::Stopped);
                true
            }
            RegState::Never { stopped: false } => {
                *lock(&self.state) = RegState::Never { stopped: true };
                true
            }
            _ => false,
        }
    }

    /// (runs, drops) the closure should have had.
    fn expected(&self) -> (u32, u32) {
        match self.state() {
            RegState::Pending => (0, 0),
            RegState::Ran => (1, 1),
            RegState::Stopped | RegState::Never { .. } | RegState::HandedBack => (0, 1),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: real objects paired with model ones
// ---------------------------------------------------------------------------------------------

enum Real {
    Guard(CancelGuard),
    Ctx(Context),
}

impl Real {
    fn ctx(&self) -> &Context {
        match self {
            Real::Guard(g) => g,
            Real::Ctx(c) => c,
        }
    }
}

struct Held {
    real: Real,
    model: Arc<MNode>,
    /// The id the library gave the context when it was made.
    id: ContextId,
    /// A stable name for messages.
    name: usize,
}

enum MWeak {
    /// The background and exhausted contexts with no node: a weak id of them always upgrades.
    Always(Arc<MNode>),
    Node(Weak<MNode>),
    /// A view (issue 13 item 6): upgrades to the same view while the node it reads lives.
    View {
        of: Weak<MNode>,
        kind: MKind,
        cause: Option<Cause>,
        book: Arc<Book>,
    },
}

impl MWeak {
    fn upgrade(&self) -> Option<Arc<MNode>> {
        match self {
            MWeak::Always(n) => Some(n.clone()),
            MWeak::Node(w) => w.upgrade(),
            MWeak::View {
                of,
                kind,
                cause,
                book,
            } => of
                .upgrade()
                .map(|n| MNode::view(Some(n), *kind, *cause, book)),
        }
    }

    /// The node whose liveness the weak id follows.
    fn target(&self) -> Option<Arc<MNode>> {
        match self {
            MWeak::Always(n) => Some(n.clone()),
            MWeak::Node(w) | MWeak::View { of: w, .. } => w.upgrade(),
        }
    }
}

struct WeakPair {
    real: WeakContext,
    model: MWeak,
    id: ContextId,
    /// The handle it was downgraded from.
    of: usize,
    /// A stable name for messages.
    name: usize,
}

struct RegPair {
    real: Option<AfterFunc>,
    model: Arc<MReg>,
    rec: Arc<RegRec>,
    of: usize,
}

/// Runs `data` against the library and the model; panics on any difference.
pub fn run(data: &[u8]) {
    run_program(&decode(data));
}

/// Runs a decoded program.
pub fn run_program(p: &Program) {
    let mut h = Harness::new(p);
    for (i, step) in p.steps.iter().enumerate() {
        h.step_no = i;
        h.step(*step);
        h.check(!h.lazy);
    }
    h.step_no = p.steps.len();
    h.check(true);
    h.drop_all();
}

struct Harness {
    pool: Pool,
    book: Arc<Book>,
    background: Arc<MNode>,
    held: Vec<Held>,
    weaks: Vec<WeakPair>,
    regs: Vec<RegPair>,
    values: Vec<Arc<ValueRec>>,
    lazy: bool,
    seed: u8,
    program: Vec<u8>,
    log: Vec<String>,
    step_no: usize,
    next_name: usize,
}

/// Compares one observable; on a difference, panics with the program and what ran so far.
macro_rules! same {
    ($h:expr, $what:expr, $real:expr, $model:expr) => {{
        let (real, model) = ($real, $model);
        if real != model {
            $h.fail(format_args!(
                "{}: library {:?}, model {:?}",
                $what, real, model
            ));
        }
    }};
}

impl Harness {
    fn new(p: &Program) -> Harness {
        let capacity = CAPACITIES[usize::from(p.config.capacity & 7)];
        let mut builder = Pool::builder().capacity(capacity);
        if p.config.small_cache {
            builder = builder.thread_cache(1);
        }
        let pool = builder.build().expect("valid pool settings");
        let book = Arc::new(Book {
            capacity: capacity as usize,
            slots: AtomicUsize::new(0),
            exhausted: AtomicU64::new(0),
        });
        let background = MNode::new(
            None,
            MKind::Background,
            true,
            None,
            Vals::default(),
            None,
            &book,
        );
        let mut h = Harness {
            pool,
            book,
            background,
            held: Vec::new(),
            weaks: Vec::new(),
            regs: Vec::new(),
            values: Vec::new(),
            lazy: p.config.lazy,
            seed: p.config.seed,
            program: encode(p),
            log: vec![format!("config {:?} (capacity {capacity})", p.config)],
            step_no: 0,
            next_name: 0,
        };
        let bg = h.pool.background();
        let model = h.background.clone();
        h.hold(Real::Ctx(bg), model);
        h
    }

    #[cold]
    fn fail(&self, what: fmt::Arguments<'_>) -> ! {
        let hex: String = self.program.iter().map(|b| format!("{b:02x}")).collect();
        panic!(
            "tree_ops: library and model differ after step {}: {what}\n\
             program (canonical encoding, replay with tree_ops::run): {hex}\n\
             log:\n  {}",
            self.step_no,
            self.log.join("\n  ")
        );
    }

    fn hold(&mut self, real: Real, model: Arc<MNode>) -> usize {
        let name = self.next_name;
        self.next_name += 1;
        let id = real.ctx().id();
        self.held.push(Held {
            real,
            model,
            id,
            name,
        });
        name
    }

    fn note(&mut self, s: String) {
        self.log.push(format!("#{} {s}", self.step_no));
    }

    fn pick(len: usize, i: u8) -> Option<usize> {
        (len > 0).then(|| usize::from(i) % len)
    }

    fn guards(&self) -> Vec<usize> {
        (0..self.held.len())
            .filter(|&i| matches!(self.held[i].real, Real::Guard(_)))
            .collect()
    }

    fn new_value(&mut self, tag: u8) -> Arc<ValueRec> {
        let rec = Arc::new(ValueRec {
            tag,
            real_drops: AtomicU32::new(0),
            model_drops: AtomicU32::new(0),
        });
        self.values.push(rec.clone());
        rec
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Child { parent, make } => self.child(parent, make),
            Step::Clone { h } => {
                let Some(i) = Self::pick(self.held.len(), h) else {
                    return self.note("clone: nothing held".into());
                };
                let real = match &self.held[i].real {
                    Real::Guard(g) => g.context(),
                    Real::Ctx(c) => c.clone(),
                };
                let model = self.held[i].model.clone();
                let from = self.held[i].name;
                let name = self.hold(Real::Ctx(real), model);
                self.note(format!("clone h{from} -> h{name}"));
            }
            Step::Cancel { g, why } => {
                let guards = self.guards();
                let Some(k) = Self::pick(guards.len(), g) else {
                    return self.note("cancel: no guard".into());
                };
                let i = guards[k];
                let Real::Guard(guard) = &self.held[i].real else {
                    unreachable!()
                };
                let real = match why {
                    Why::None => guard.cancel(Reason::None),
                    Why::Code(c) => guard.cancel(code(c)),
                    Why::Message(m) => guard.cancel(message(m)),
                    other => guard.cancel_with(other.origin()),
                };
                let model = model_cancel(&self.held[i].model, why.origin());
                self.note(format!(
                    "cancel h{} with {:?} -> {real}",
                    self.held[i].name,
                    why.origin()
                ));
                same!(
                    self,
                    format_args!("return of cancel(h{})", self.held[i].name),
                    real,
                    model
                );
            }
            Step::DropGuard { g } => {
                let guards = self.guards();
                let Some(k) = Self::pick(guards.len(), g) else {
                    return self.note("drop guard: no guard".into());
                };
                self.drop_held(guards[k]);
            }
            Step::DropHandle { h } => {
                let Some(i) = Self::pick(self.held.len(), h) else {
                    return self.note("drop handle: nothing held".into());
                };
                self.drop_held(i);
            }
            Step::AfterFunc { h, boxed, try_ } => self.after_func(h, boxed, try_),
            Step::Stop { r } => {
                let live: Vec<usize> = (0..self.regs.len())
                    .filter(|&i| self.regs[i].real.is_some())
                    .collect();
                let Some(k) = Self::pick(live.len(), r) else {
                    return self.note("stop: no registration".into());
                };
                let reg = &self.regs[live[k]];
                let real = reg.real.as_ref().expect("live").stop();
                let model = reg.model.stop();
                self.note(format!("stop r{} -> {real}", live[k]));
                same!(
                    self,
                    format_args!("return of stop(r{})", live[k]),
                    real,
                    model
                );
            }
            Step::ForgetReg { r } => {
                let live: Vec<usize> = (0..self.regs.len())
                    .filter(|&i| self.regs[i].real.is_some())
                    .collect();
                let Some(k) = Self::pick(live.len(), r) else {
                    return self.note("forget: no registration".into());
                };
                self.regs[live[k]].real = None;
                self.note(format!("drop AfterFunc handle r{}", live[k]));
            }
            Step::Read { h } => {
                let Some(i) = Self::pick(self.held.len(), h) else {
                    return self.note("read: nothing held".into());
                };
                self.note(format!("read h{}", self.held[i].name));
                self.check_held(i, true);
            }
            Step::Downgrade { h } => {
                let Some(i) = Self::pick(self.held.len(), h) else {
                    return self.note("downgrade: nothing held".into());
                };
                let held = &self.held[i];
                let real = held.real.ctx().downgrade();
                let model = match (&held.model.parent, held.model.kind) {
                    (_, MKind::Background) | (None, MKind::Exhausted) => {
                        MWeak::Always(held.model.clone())
                    }
                    (Some(n), MKind::Exhausted | MKind::LiveView) => MWeak::View {
                        of: Arc::downgrade(n),
                        kind: held.model.kind,
                        cause: held.model.cause(),
                        book: self.book.clone(),
                    },
                    _ => MWeak::Node(Arc::downgrade(&held.model)),
                };
                let pair = WeakPair {
                    real,
                    model,
                    id: held.id,
                    of: held.name,
                    name: self.next_name,
                };
                self.next_name += 1;
                self.note(format!("downgrade h{} -> w{}", pair.of, pair.name));
                self.weaks.push(pair);
            }
            Step::Upgrade { w } => {
                let Some(i) = Self::pick(self.weaks.len(), w) else {
                    return self.note("upgrade: no weak id".into());
                };
                let real = self.weaks[i].real.upgrade();
                let model = self.weaks[i].model.upgrade();
                let w = self.weaks[i].name;
                self.note(format!("upgrade w{w} -> {}", real.is_some()));
                if real.is_none() && self.zombie_tolerated(self.weaks[i].model.target().as_ref()) {
                    return self.note("  (a zombie: tolerated)".into());
                }
                same!(
                    self,
                    format_args!("upgrade(w{w}) is_some"),
                    real.is_some(),
                    model.is_some()
                );
                if let (Some(real), Some(model)) = (real, model) {
                    same!(
                        self,
                        format_args!("id of upgrade(w{w})"),
                        real.id(),
                        self.weaks[i].id
                    );
                    let name = self.hold(Real::Ctx(real), model);
                    self.note(format!("  -> h{name}"));
                }
            }
            Step::DropWeak { w } => {
                let Some(i) = Self::pick(self.weaks.len(), w) else {
                    return self.note("drop weak: no weak id".into());
                };
                let w = self.weaks.remove(i);
                self.note(format!("drop w{}", w.name));
            }
            Step::ReadWeak { w } => {
                let Some(i) = Self::pick(self.weaks.len(), w) else {
                    return self.note("read weak: no weak id".into());
                };
                self.note(format!("read w{}", self.weaks[i].name));
                self.check_weak(i, true);
            }
            Step::CheckAll => {
                self.note("check all".into());
                self.check(true);
            }
        }
    }

    fn child(&mut self, parent: u8, make: Make) {
        let rec = match make {
            Make::Value {
                kind: ValueKind::Inline | ValueKind::Boxed,
                arg,
                ..
            } => Some(self.new_value(arg)),
            _ => None,
        };
        let fresh_bg;
        let (pctx, pmodel, pname) = match Self::pick(self.held.len(), parent) {
            Some(i) => (
                self.held[i].real.ctx(),
                self.held[i].model.clone(),
                format!("h{}", self.held[i].name),
            ),
            None => {
                fresh_bg = self.pool.background();
                (&fresh_bg, self.background.clone(), "background".to_string())
            }
        };
        // The model's node kind, the builder's values, and the custom value.
        let (kind, try_, guard, vals, value): (MKind, bool, bool, Vals, Option<(ValueKind, u8)>) =
            match make {
                Make::WithCancel { try_ } => (MKind::Cancel, try_, true, Vals::default(), None),
                Make::Build { try_ } => (MKind::Plain, try_, false, Vals::default(), None),
                Make::WithoutCancel => (MKind::Detached, false, false, Vals::default(), None),
                Make::Value { kind, arg, try_ } => (
                    MKind::Value,
                    try_,
                    false,
                    Vals::default(),
                    Some((kind, arg)),
                ),
                Make::Builder {
                    req,
                    op,
                    user,
                    trace,
                    then,
                } => {
                    let vals = Vals {
                        op: op.map(|o| OPS[usize::from(o) % OPS.len()].name()),
                        trace: trace.then(|| trace_of(req)),
                        req: Some(RequestId(u64::from(req))),
                        user: user.then(|| UserId(u64::from(req) << 8 | 0x5a)),
                    };
                    match then {
                        Then::WithCancel => (MKind::Cancel, false, true, vals, None),
                        Then::TryWithCancel => (MKind::Cancel, true, true, vals, None),
                        Then::Build => (MKind::Plain, false, false, vals, None),
                        Then::TryBuild => (MKind::Plain, true, false, vals, None),
                        Then::WithoutCancel => (MKind::Detached, false, false, vals, None),
                        Then::Value(v) => {
                            (MKind::Value, false, false, vals, Some((ValueKind::U64, v)))
                        }
                    }
                }
            };

        // The library.
        let real: Result<Real, PoolExhausted> = {
            let mut b = pctx.child();
            if let Some(o) = vals.op {
                b = b.op(OPS.iter().find(|x| x.name() == o).expect("known op"));
            }
            if let Some(t) = vals.trace {
                b = b.trace(t);
            }
            if let Some(r) = vals.req {
                b = b.request_id(r);
            }
            if let Some(u) = vals.user {
                b = b.user_id(u);
            }
            let builder_used = matches!(make, Make::Builder { .. });
            match (kind, value) {
                (MKind::Cancel, _) if try_ => b.try_with_cancel().map(Real::Guard),
                (MKind::Cancel, _) if builder_used => Ok(Real::Guard(b.with_cancel())),
                (MKind::Cancel, _) => Ok(Real::Guard(pctx.with_cancel())),
                (MKind::Plain, _) if try_ => b.try_build().map(Real::Ctx),
                (MKind::Plain, _) => Ok(Real::Ctx(b.build())),
                (MKind::Detached, _) if builder_used => Ok(Real::Ctx(b.without_cancel())),
                (MKind::Detached, _) => Ok(Real::Ctx(pctx.without_cancel())),
                (_, Some((vk, arg))) => {
                    let r = rec.clone();
                    match (vk, try_) {
                        (ValueKind::U64, false) if builder_used => Ok(b.with_value(u64::from(arg))),
                        (ValueKind::U64, false) => Ok(pctx.with_value(u64::from(arg))),
                        (ValueKind::U64, true) => b.try_with_value(u64::from(arg)),
                        (ValueKind::Inline, false) => {
                            Ok(pctx.with_value(InlineVal(r.expect("rec"))))
                        }
                        (ValueKind::Inline, true) => b.try_with_value(InlineVal(r.expect("rec"))),
                        (ValueKind::Boxed, false) => {
                            Ok(pctx.with_value(BoxedVal(r.expect("rec"), [7, 9])))
                        }
                        (ValueKind::Boxed, true) => {
                            b.try_with_value(BoxedVal(r.expect("rec"), [7, 9]))
                        }
                    }
                    .map(Real::Ctx)
                }
                (_, None) => unreachable!("a value child has a value"),
            }
        };

        // The model.
        let own = value.map(|(vk, arg)| match vk {
            ValueKind::U64 => MValue::U64(u64::from(arg)),
            ValueKind::Inline => MValue::Inline(rec.clone().expect("rec")),
            ValueKind::Boxed => MValue::Boxed(rec.clone().expect("rec")),
        });
        // At exhaustion (issue 13 item 6) a child is a view of the node its parent reads:
        // born cancelled with `PoolExhausted` (or never cancelled, for `without_cancel`), with
        // that node's values; what the builder set, and a custom value, are dropped.
        let book = self.book.clone();
        let made = |base: &Arc<MNode>, kind: MKind, vals: Vals, own: Option<MValue>| {
            let cause = match kind {
                MKind::Detached => None,
                _ => base.cause().map(|c| Cause::Parent(c.origin())),
            };
            let never = match kind {
                MKind::Detached => true,
                MKind::Cancel => false,
                _ => base.never,
            };
            let inherited = base.vals;
            let vals = Vals {
                op: vals.op.or(inherited.op),
                trace: vals.trace.or(inherited.trace),
                req: vals.req.or(inherited.req),
                user: vals.user.or(inherited.user),
            };
            let node = MNode::new(Some(base.clone()), kind, never, cause, vals, own, &book);
            let mut st = lock(&base.st);
            st.children.retain(|w| w.strong_count() > 0);
            st.children.push(Arc::downgrade(&node));
            drop(st);
            node
        };
        let background = || {
            MNode::new(
                None,
                MKind::Background,
                true,
                None,
                Vals::default(),
                None,
                &book,
            )
        };
        // What a child is when no slot is free for it.
        let full = |parent: &Arc<MNode>| -> Result<Arc<MNode>, ()> {
            if kind == MKind::Detached {
                Ok(match parent.viewed() {
                    Some(n) => MNode::view(Some(n), MKind::LiveView, None, &book),
                    None => background(),
                })
            } else if try_ {
                Err(())
            } else {
                Ok(MNode::exhausted_under(parent, &book))
            }
        };
        let model: Result<Arc<MNode>, ()> = if pmodel.is_view() && pmodel.parent.is_none() {
            // Born cancelled under the background: no node to read or to make anything under.
            drop_model_value(own);
            if kind == MKind::Detached {
                Ok(background())
            } else {
                Ok(MNode::exhausted(None, true, &self.book))
            }
        } else if pmodel.kind == MKind::Exhausted && kind != MKind::Detached {
            // A child of a context born cancelled is born cancelled, even from `try_*`, with
            // no slot; its value is dropped at once.
            drop_model_value(own);
            let cause = pmodel.cause().map(|c| Cause::Parent(c.origin()));
            Ok(MNode::view(
                pmodel.parent.clone(),
                MKind::Exhausted,
                cause,
                &self.book,
            ))
        } else if pmodel.kind == MKind::LiveView && kind != MKind::Detached {
            // Under a live view: a detached node made for the view, then the child under it.
            let n = pmodel.parent.clone().expect("a view of a node");
            if !self.book.alloc() {
                drop_model_value(own);
                full(&pmodel)
            } else {
                let detached = made(&n, MKind::Detached, Vals::default(), None);
                if !self.book.alloc() {
                    drop_model_value(own);
                    drop(detached);
                    full(&pmodel)
                } else {
                    Ok(made(&detached, kind, vals, own))
                }
            }
        } else {
            // A plain parent, or a `without_cancel` of a view (made under the viewed node).
            let base = if pmodel.is_view() {
                pmodel.parent.clone().expect("a view of a node")
            } else {
                pmodel.clone()
            };
            if !self.book.alloc() {
                drop_model_value(own);
                full(&pmodel)
            } else {
                Ok(made(&base, kind, vals, own))
            }
        };

        let desc = format!("child of {pname} {make:?}");
        match (real, model) {
            (Ok(real), Ok(model)) => {
                if matches!(real, Real::Guard(_)) != guard {
                    self.fail(format_args!("{desc}: wrong handle kind"));
                }
                let name = self.hold(real, model);
                let id = self.held.last().expect("just pushed").id;
                self.note(format!("{desc} -> h{name} ({id})"));
            }
            (Err(e), Err(())) => {
                self.note(format!("{desc} -> Err({e})"));
                same!(
                    self,
                    "PoolExhausted::capacity",
                    e.capacity as usize,
                    self.book.capacity
                );
            }
            (real, model) => self.fail(format_args!(
                "{desc}: library {}, model {}",
                if real.is_ok() {
                    "Ok"
                } else {
                    "Err(PoolExhausted)"
                },
                if model.is_ok() {
                    "Ok"
                } else {
                    "Err(PoolExhausted)"
                },
            )),
        }
    }

    fn after_func(&mut self, h: u8, boxed: bool, try_: bool) {
        let Some(i) = Self::pick(self.held.len(), h) else {
            return self.note("after_func: nothing held".into());
        };
        let rec = Arc::new(RegRec {
            runs: AtomicU32::new(0),
            drops: AtomicU32::new(0),
        });
        let ctx = self.held[i].real.ctx();
        let guard = OnDrop(rec.clone());
        let real: Result<AfterFunc, PoolExhausted> = if boxed {
            let pad = [0x5au64; 8];
            attach(ctx, try_, move || {
                let g = &guard;
                if std::hint::black_box(pad)[3] == 0x5a {
                    g.0.runs.fetch_add(1, SeqCst);
                }
            })
        } else {
            attach(ctx, try_, move || {
                let g = &guard;
                g.0.runs.fetch_add(1, SeqCst);
            })
        };

        let node = &self.held[i].model;
        let mut slot = true;
        let state = if node.never {
            RegState::Never { stopped: false }
        } else if node.cause().is_some() {
            RegState::Ran
        } else if !self.book.alloc() {
            if try_ {
                RegState::HandedBack
            } else {
                // Registered without a slot (issue 13 item 6): pending all the same.
                slot = false;
                RegState::Pending
            }
        } else {
            RegState::Pending
        };
        let model = Arc::new(MReg {
            slot,
            state: Mutex::new(state),
            node: Mutex::new((state == RegState::Pending).then(|| node.clone())),
        });
        if state == RegState::Pending {
            lock(&node.st).regs.push(model.clone());
        }
        let of = self.held[i].name;
        let r = self.regs.len();
        self.note(format!(
            "after_func(boxed {boxed}, try {try_}) on h{of} -> r{r} {state:?}{}",
            if real.is_err() { " (library: Err)" } else { "" }
        ));
        same!(
            self,
            format_args!("try_after_func(h{of}) is_err"),
            real.is_err(),
            state == RegState::HandedBack
        );
        self.regs.push(RegPair {
            real: real.ok(),
            model,
            rec,
            of,
        });
    }

    fn drop_held(&mut self, i: usize) {
        let held = self.held.remove(i);
        self.note(format!(
            "drop {} h{}",
            if matches!(held.real, Real::Guard(_)) {
                "guard"
            } else {
                "handle"
            },
            held.name
        ));
        match held.real {
            Real::Guard(g) => {
                drop(g);
                model_cancel(&held.model, Origin::OwnerDropped);
            }
            Real::Ctx(c) => drop(c),
        }
        drop(held.model);
    }

    /// Compares everything; cancellation (which the library records on read) only when
    /// `perturb`.
    fn check(&self, perturb: bool) {
        // The driver may be tearing down a zombie that it claimed before the last leased
        // child's drop could (time D7): wait for that before comparing slots and drops.
        self.pool.testing_quiesce();
        // Counters first: a read of a cancellation may itself run pending `after_func`s (by
        // adopting an ancestor's cancellation), which would hide one that a cancel missed.
        self.check_pass(false);
        if perturb {
            self.check_pass(true);
            // Reads must not have run, dropped or released anything.
            self.check_pass(false);
        }
    }

    fn check_pass(&self, perturb: bool) {
        let mut ids: HashMap<ContextId, (*const MNode, usize)> = HashMap::new();
        for i in 0..self.held.len() {
            self.check_held(i, perturb);
            let h = &self.held[i];
            if h.model.slot {
                let ptr = Arc::as_ptr(&h.model);
                if let Some((other, name)) = ids.insert(h.id, (ptr, h.name)) {
                    if other != ptr {
                        self.fail(format_args!(
                            "h{} and h{} are different contexts with one id {}",
                            name, h.name, h.id
                        ));
                    }
                }
            }
        }
        for i in 0..self.weaks.len() {
            self.check_weak(i, perturb);
        }
        for (i, r) in self.regs.iter().enumerate() {
            let (runs, drops) = r.model.expected();
            same!(
                self,
                format_args!("runs of after_func r{i} on h{}", r.of),
                r.rec.runs.load(SeqCst),
                runs
            );
            same!(
                self,
                format_args!("drops of the closure of r{i} on h{}", r.of),
                r.rec.drops.load(SeqCst),
                drops
            );
        }
        for v in &self.values {
            let real = v.real_drops.load(SeqCst);
            let model = v.model_drops.load(SeqCst);
            same!(
                self,
                format_args!("drops of value tag {}", v.tag),
                real,
                model
            );
        }
        let stats = self.pool.stats();
        same!(
            self,
            "pool in_use",
            stats.in_use,
            self.book.slots.load(SeqCst) as u64
        );
        same!(
            self,
            "pool exhausted count",
            stats.exhausted,
            self.book.exhausted.load(SeqCst)
        );
        same!(
            self,
            "created - released",
            stats.created - stats.released,
            stats.in_use
        );
    }

    fn check_held(&self, i: usize, perturb: bool) {
        let h = &self.held[i];
        let c = h.real.ctx();
        let m = &h.model;
        let n = h.name;
        same!(self, format_args!("id of h{n}"), c.id(), h.id);
        let shown = h.id.to_string();
        same!(
            self,
            format_args!("h{n} is background"),
            shown == "background",
            m.kind == MKind::Background
        );
        same!(
            self,
            format_args!("h{n} is exhausted"),
            shown == "exhausted",
            m.is_view()
        );
        if m.slot && h.id.slot as usize >= self.book.capacity {
            self.fail(format_args!("h{n} has slot {} beyond capacity", h.id.slot));
        }
        same!(
            self,
            format_args!("is_never_cancelled(h{n})"),
            c.is_never_cancelled(),
            m.never
        );
        same!(
            self,
            format_args!("location(h{n}).is_some()"),
            c.location().is_some(),
            m.slot
        );
        same!(
            self,
            format_args!("request_id(h{n})"),
            c.request_id(),
            m.vals.req
        );
        same!(
            self,
            format_args!("user_id(h{n})"),
            c.user_id(),
            m.vals.user
        );
        same!(self, format_args!("trace(h{n})"), c.trace(), m.vals.trace);
        same!(
            self,
            format_args!("op(h{n})"),
            c.op().map(Op::name),
            m.vals.op
        );
        same!(
            self,
            format_args!("value::<u64>(h{n})"),
            c.value::<u64>().copied(),
            m.value_u64()
        );
        same!(
            self,
            format_args!("value::<InlineVal>(h{n})"),
            c.value::<InlineVal>().map(|v| v.0.tag),
            m.value_inline()
        );
        same!(
            self,
            format_args!("value::<BoxedVal>(h{n})"),
            c.value::<BoxedVal>().map(|v| v.0.tag),
            m.value_boxed()
        );
        if perturb {
            let cause = m.cause();
            same!(
                self,
                format_args!("is_cancelled(h{n})"),
                c.is_cancelled(),
                cause.is_some()
            );
            same!(
                self,
                format_args!("err(h{n})"),
                c.err(),
                cause.map(model_err)
            );
            same!(
                self,
                format_args!("cause(h{n})"),
                c.cause().map(norm_deadline),
                cause.map(norm_deadline)
            );
        }
    }

    /// Whether a weak id of `n` may already read as released although `n` is alive. A weak id
    /// is only promised to upgrade while a handle (or guard) of its context is held: once only
    /// children or `after_func` registrations keep the context alive, the library may already
    /// treat it as released (with parent leases, tree I10, such a node is a "zombie" with no
    /// references), and then `upgrade()` is `None` and `is_cancelled()` is `true`.
    fn zombie_tolerated(&self, n: Option<&Arc<MNode>>) -> bool {
        n.is_some_and(|n| {
            n.slot
                && !self.held.iter().any(|h| {
                    // A held view of `n` holds a reference on it, as a handle does.
                    Arc::ptr_eq(&h.model, n)
                        || (h.model.is_view()
                            && h.model.parent.as_ref().is_some_and(|p| Arc::ptr_eq(p, n)))
                })
        })
    }

    fn check_weak(&self, i: usize, perturb: bool) {
        let w = &self.weaks[i];
        let (i, of) = (w.name, w.of);
        same!(
            self,
            format_args!("id of w{i} (of h{of})"),
            w.real.id(),
            w.id
        );
        let model = w.model.upgrade();
        let zombie = self.zombie_tolerated(w.model.target().as_ref());
        let real = w.real.upgrade();
        if !(zombie && real.is_none()) {
            same!(
                self,
                format_args!("upgrade(w{i}) is_some (of h{of})"),
                real.is_some(),
                model.is_some()
            );
        }
        drop(real);
        if perturb {
            let cancelled = match &model {
                Some(n) => n.cause().is_some(),
                None => true,
            };
            let real = w.real.is_cancelled();
            if !(zombie && real) {
                same!(
                    self,
                    format_args!("is_cancelled(w{i}) (of h{of})"),
                    real,
                    cancelled
                );
            }
        }
    }

    /// Drops everything left, in an order drawn from the seed, comparing after each drop, then
    /// checks that the pool is empty and every value and closure was dropped exactly once.
    fn drop_all(mut self) {
        let mut rng = u32::from(self.seed).wrapping_mul(0x9E37_79B9) | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng as usize
        };
        self.step_no = usize::MAX;
        self.log.push("final drops:".into());
        loop {
            let live_regs: Vec<usize> = (0..self.regs.len())
                .filter(|&i| self.regs[i].real.is_some())
                .collect();
            let lens = [self.held.len(), self.weaks.len(), live_regs.len()];
            let total: usize = lens.iter().sum();
            if total == 0 {
                break;
            }
            let mut k = next() % total;
            if k < lens[0] {
                self.drop_held(k);
            } else {
                k -= lens[0];
                if k < lens[1] {
                    let w = self.weaks.remove(k);
                    self.log.push(format!("drop w{}", w.name));
                } else {
                    k -= lens[1];
                    self.log
                        .push(format!("drop AfterFunc handle r{}", live_regs[k]));
                    self.regs[live_regs[k]].real = None;
                }
            }
            self.check(!self.lazy);
        }
        self.check(true);
        let stats = self.pool.stats();
        same!(self, "in_use after dropping everything", stats.in_use, 0);
        same!(
            self,
            "created == released after dropping everything",
            stats.created,
            stats.released
        );
        same!(
            self,
            "model slots after dropping everything",
            self.book.slots.load(SeqCst),
            0
        );
        for (i, r) in self.regs.iter().enumerate() {
            same!(
                self,
                format_args!("registration r{i} settled"),
                r.model.state() == RegState::Pending,
                false
            );
            same!(
                self,
                format_args!("closure of r{i} dropped once"),
                r.rec.drops.load(SeqCst),
                1
            );
        }
        for v in &self.values {
            same!(
                self,
                format_args!("value tag {} dropped once", v.tag),
                v.real_drops.load(SeqCst),
                1
            );
        }
        // The background model node is the only one left.
        same!(
            self,
            "model background references",
            Arc::strong_count(&self.background),
            1
        );
    }
}

fn drop_model_value(own: Option<MValue>) {
    if let Some(MValue::Inline(rec) | MValue::Boxed(rec)) = own {
        rec.model_drops.fetch_add(1, SeqCst);
    }
}

fn trace_of(req: u8) -> TraceContext {
    TraceContext {
        trace_id: (u128::from(req) + 1).wrapping_mul(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
        span_id: u64::from(req) * 31 + 7,
        flags: req,
    }
}

/// `after_func` or `try_after_func` (dropping a handed-back closure).
fn attach<F: FnOnce() + Send + 'static>(
    ctx: &Context,
    try_: bool,
    f: F,
) -> Result<AfterFunc, PoolExhausted> {
    if try_ {
        ctx.try_after_func(f).map_err(|(e, f)| {
            drop(f);
            e
        })
    } else {
        Ok(ctx.after_func(f))
    }
}
