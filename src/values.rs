//! Values a context carries inline: the operation label, trace context, request id, user id,
//! and one custom typed value per [`Context::with_value`](crate::Context::with_value) node.
//!
//! The well-known values are copied from parent to child when the child is made (a 48-byte
//! copy, no allocation). Custom values follow Go: each `with_value` adds a node holding one
//! value, and a lookup walks up the ancestors (which every descendant keeps alive).

use core::any::TypeId;
use core::fmt;
use core::mem::{align_of, size_of, MaybeUninit};

use crate::sync::{Ordering, StaticAtomicPtr, StaticAtomicU32};

/// An operation label, declared once as a `static` and carried by reference.
///
/// Each label gets a small numeric id the first time a context uses it (a relaxed load
/// afterwards); a context stores that 4-byte id inline, and per-operation metrics index their
/// tables by it. At most [`MAX_OPS`] labels get their own id; later ones share the last id
/// and read back as the label `"other"`.
///
/// ```
/// use ctxpool::{Context, Op};
///
/// static CHECKOUT: Op = Op::new("checkout");
///
/// let ctx = Context::background().child().op(&CHECKOUT).with_cancel();
/// assert_eq!(ctx.op().map(Op::name), Some("checkout"));
/// ```
#[derive(Debug)]
pub struct Op {
    name: &'static str,
    /// 0 until registered, then the id (1..=MAX_OPS).
    id: StaticAtomicU32,
}

/// The most operation labels with an id of their own (see [`Op`]).
#[cfg(not(loom))]
pub const MAX_OPS: usize = 1024;
/// The most operation labels with an id of their own (kept small so loom models stay small).
#[cfg(loom)]
pub const MAX_OPS: usize = 8;

/// Registered labels by id - 1; written once each under `OPS_LOCK`.
static OPS: [StaticAtomicPtr<Op>; MAX_OPS] =
    [const { StaticAtomicPtr::new(core::ptr::null_mut()) }; MAX_OPS];
static OPS_LEN: StaticAtomicU32 = StaticAtomicU32::new(0);
static OPS_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// What the labels beyond `MAX_OPS` read back as.
static OTHER: Op = Op::new("other");

impl Op {
    /// Declares an operation label.
    pub const fn new(name: &'static str) -> Self {
        Op {
            name,
            id: StaticAtomicU32::new(0),
        }
    }

    /// The label.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// This label's id (1..=[`MAX_OPS`]), registering it on first use.
    #[inline]
    pub fn id(&'static self) -> u32 {
        let id = self.id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        self.register()
    }

    #[cold]
    fn register(&'static self) -> u32 {
        let _g = OPS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        let n = OPS_LEN.load(Ordering::Relaxed) as usize;
        let id = if n < MAX_OPS - 1 {
            OPS[n].store((self as *const Op).cast_mut(), Ordering::Release);
            OPS_LEN.store(n as u32 + 1, Ordering::Release);
            n as u32 + 1
        } else {
            MAX_OPS as u32
        };
        self.id.store(id, Ordering::Relaxed);
        id
    }

    /// The label with id `id`, if any (0 means none).
    pub fn by_id(id: u32) -> Option<&'static Op> {
        match id as usize {
            0 => None,
            MAX_OPS => Some(&OTHER),
            i if i < MAX_OPS => {
                let p = OPS[i - 1].load(Ordering::Acquire);
                // SAFETY: non-null entries are `&'static Op`s stored by `register`, never
                // removed; the `Release` store published the pointee (it is `'static` anyway).
                (!p.is_null()).then(|| unsafe { &*p })
            }
            _ => None,
        }
    }

    /// Every label registered so far, by id.
    pub fn registered() -> impl Iterator<Item = (u32, &'static Op)> {
        let n = OPS_LEN.load(Ordering::Acquire);
        (1..=n).filter_map(|i| Op::by_id(i).map(|op| (i, op)))
    }
}

/// A W3C trace context: trace id, parent span id and trace flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The 16-byte trace id (non-zero when valid).
    pub trace_id: u128,
    /// The 8-byte span id (non-zero when valid).
    pub span_id: u64,
    /// The trace flags byte (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Whether the trace is sampled (the W3C `sampled` flag, bit 0): the caller, or the
    /// sampler that started the trace, records it.
    ///
    /// ```
    /// use ctxpool::TraceContext;
    ///
    /// let tc = TraceContext { trace_id: 1, span_id: 2, flags: 0x01 };
    /// assert!(tc.sampled());
    /// assert!(!TraceContext { flags: 0x02, ..tc }.sampled());
    /// ```
    pub const fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// A request id, carried inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An authenticated user id, carried inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub u64);

/// Largest custom value stored inline in the node; larger ones are boxed (one allocation per
/// `with_value`, freed with the node).
pub const INLINE_VALUE_BYTES: usize = size_of::<usize>();

/// Type-erased operations on a stored custom value.
pub(crate) struct ValueVTable {
    pub(crate) type_id: fn() -> TypeId,
    /// Drops the value in place (or its box). # Safety: the word holds a value stored by
    /// `store_value` for this vtable's type, not dropped before (tree I7).
    pub(crate) drop: unsafe fn(*mut MaybeUninit<usize>),
    /// A pointer to the value. # Safety: the word holds a live value stored by `store_value`
    /// for this vtable's type.
    pub(crate) get: unsafe fn(*const MaybeUninit<usize>) -> *const (),
}

const fn is_inline<T>() -> bool {
    size_of::<T>() <= size_of::<usize>() && align_of::<T>() <= align_of::<usize>()
}

/// Drops the `T` stored in `data`.
///
/// # Safety
/// `data` holds a `T` stored by `store_value::<T>`, not dropped before (tree I7).
unsafe fn drop_value<T>(data: *mut MaybeUninit<usize>) {
    if is_inline::<T>() {
        // SAFETY: `store_value::<T>` wrote a `T` in place (it fits, checked by `is_inline`);
        // the caller drops each stored value exactly once (tree I7).
        unsafe { core::ptr::drop_in_place(data.cast::<T>()) }
    } else {
        // SAFETY: `store_value::<T>` stored `Box::into_raw` of a `Box<T>`; dropped once (I7).
        drop(unsafe { Box::from_raw(data.cast::<*mut T>().read()) })
    }
}

/// A pointer to the `T` stored in `data`.
///
/// # Safety
/// `data` holds a live `T` stored by `store_value::<T>`.
unsafe fn get_value<T>(data: *const MaybeUninit<usize>) -> *const () {
    if is_inline::<T>() {
        data.cast()
    } else {
        // SAFETY: `store_value::<T>` wrote the box pointer into the word (as a pointer).
        unsafe { data.cast::<*const ()>().read() }
    }
}

/// The vtable for `T`.
pub(crate) fn vtable<T: Send + Sync + 'static>() -> &'static ValueVTable {
    struct Holder<T>(T);
    impl<T: Send + Sync + 'static> Holder<T> {
        const VT: ValueVTable = ValueVTable {
            type_id: TypeId::of::<T>,
            drop: drop_value::<T>,
            get: get_value::<T>,
        };
    }
    &Holder::<T>::VT
}

/// Stores `value` into a word: in place if it fits, else boxed.
pub(crate) fn store_value<T: Send + Sync + 'static>(value: T) -> MaybeUninit<usize> {
    let mut word = MaybeUninit::<usize>::uninit();
    if is_inline::<T>() {
        // SAFETY: `T` fits in a `usize` in size and alignment (`is_inline`).
        unsafe { word.as_mut_ptr().cast::<T>().write(value) }
    } else {
        // A pointer written as bytes (not cast to an integer) keeps its provenance.
        // SAFETY: a pointer fits in a `usize` word in size and alignment.
        unsafe {
            word.as_mut_ptr()
                .cast::<*mut T>()
                .write(Box::into_raw(Box::new(value)))
        }
    }
    word
}
