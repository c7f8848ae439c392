//! Values a context carries inline: the operation label, trace context, request id, user id,
//! and one custom typed value per [`Context::with_value`](crate::Context::with_value) node.
//!
//! The well-known values are copied from parent to child when the child is made (a 48-byte
//! copy, no allocation). Custom values follow Go: each `with_value` adds a node holding one
//! value, and a lookup walks up the ancestors (which every descendant keeps alive).

use core::any::TypeId;
use core::fmt;
use core::mem::{align_of, size_of, MaybeUninit};

/// An operation label, declared once as a `static` and carried by reference.
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
}

impl Op {
    /// Declares an operation label.
    pub const fn new(name: &'static str) -> Self {
        Op { name }
    }

    /// The label.
    pub const fn name(&self) -> &'static str {
        self.name
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
