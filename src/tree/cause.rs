//! Why a context was cancelled: [`Cause`], [`Origin`], [`Reason`] and Go's [`ContextError`].
//!
//! A cause is a small `Copy` value (24 bytes at most) so that it can be returned by value from
//! any handle without a lock or an allocation. The first cause recorded on a context wins, and
//! every observer of that context reads the same one (tree invariant I3).

use core::fmt;
use std::time::Instant;

/// A user's explanation for an explicit cancel: nothing, a static message or a numeric code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Reason {
    /// No explanation given.
    #[default]
    None,
    /// A static message, such as `"client went away"`.
    Message(&'static str),
    /// An application-defined code.
    Code(u32),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::None => f.write_str("no reason given"),
            Reason::Message(m) => f.write_str(m),
            Reason::Code(c) => write!(f, "code {c}"),
        }
    }
}

impl From<&'static str> for Reason {
    fn from(m: &'static str) -> Self {
        Reason::Message(m)
    }
}

impl From<u32> for Reason {
    fn from(c: u32) -> Self {
        Reason::Code(c)
    }
}

/// Where a cancellation started: every [`Cause`] except "inherited from the parent".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// Cancelled explicitly with [`CancelGuard::cancel`](crate::CancelGuard::cancel).
    Cancelled(Reason),
    /// The owning [`CancelGuard`](crate::CancelGuard) was dropped (Go's `defer cancel()`).
    OwnerDropped,
    /// The context's deadline passed; the payload is that deadline (millisecond granularity).
    DeadlineExceeded(Instant),
    /// The pool had no free slot when the context was made: it was born cancelled so that an
    /// overloaded server sheds the work instead of allocating without bound.
    PoolExhausted,
    /// The process is shutting down.
    Shutdown,
    /// Cancelled with a dynamic error
    /// ([`CancelGuard::cancel_with_error`](crate::CancelGuard::cancel_with_error)), read with
    /// [`Context::cause_error`](crate::Context::cause_error).
    Error,
}

/// Why a context is cancelled. The first cause recorded wins.
///
/// ```
/// use ctxpool::{Cause, Context, Origin, Reason};
///
/// let root = Context::background().with_cancel();
/// let child = root.with_cancel();
/// root.cancel(Reason::Message("client went away"));
/// assert_eq!(root.cause(), Some(Cause::Cancelled(Reason::Message("client went away"))));
/// assert_eq!(
///     child.cause(),
///     Some(Cause::Parent(Origin::Cancelled(Reason::Message("client went away"))))
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// Cancelled explicitly with [`CancelGuard::cancel`](crate::CancelGuard::cancel).
    Cancelled(Reason),
    /// The owning [`CancelGuard`](crate::CancelGuard) was dropped.
    OwnerDropped,
    /// The context's own deadline passed; the payload is that deadline (millisecond
    /// granularity, as [`Context::deadline`](crate::Context::deadline) reads it).
    DeadlineExceeded(Instant),
    /// Born cancelled: the pool was exhausted.
    PoolExhausted,
    /// The process is shutting down.
    Shutdown,
    /// Cancelled with a dynamic error
    /// ([`CancelGuard::cancel_with_error`](crate::CancelGuard::cancel_with_error)): read it,
    /// and downcast it, with [`Context::cause_error`](crate::Context::cause_error).
    Error,
    /// An ancestor was cancelled; the payload is where that cancellation started.
    Parent(Origin),
}

impl Cause {
    /// Where this cancellation started: the cause itself, or the ancestor's for
    /// [`Cause::Parent`].
    pub fn origin(self) -> Origin {
        match self {
            Cause::Cancelled(r) => Origin::Cancelled(r),
            Cause::OwnerDropped => Origin::OwnerDropped,
            Cause::DeadlineExceeded(at) => Origin::DeadlineExceeded(at),
            Cause::PoolExhausted => Origin::PoolExhausted,
            Cause::Shutdown => Origin::Shutdown,
            Cause::Error => Origin::Error,
            Cause::Parent(o) => o,
        }
    }

    /// Whether the cancellation was inherited from an ancestor.
    pub fn is_inherited(self) -> bool {
        matches!(self, Cause::Parent(_))
    }

    /// Go's `ctx.Err()` for this cause: `DeadlineExceeded` when the origin is a deadline,
    /// `Canceled` otherwise.
    pub fn error(self) -> ContextError {
        match self.origin() {
            Origin::DeadlineExceeded(_) => ContextError::DeadlineExceeded,
            _ => ContextError::Canceled,
        }
    }
}

impl From<Origin> for Cause {
    fn from(o: Origin) -> Self {
        match o {
            Origin::Cancelled(r) => Cause::Cancelled(r),
            Origin::OwnerDropped => Cause::OwnerDropped,
            Origin::DeadlineExceeded(at) => Cause::DeadlineExceeded(at),
            Origin::PoolExhausted => Cause::PoolExhausted,
            Origin::Shutdown => Cause::Shutdown,
            Origin::Error => Cause::Error,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Cancelled(Reason::None) => f.write_str("cancelled"),
            Origin::Cancelled(r) => write!(f, "cancelled: {r}"),
            Origin::OwnerDropped => f.write_str("owner dropped"),
            Origin::DeadlineExceeded(_) => f.write_str("deadline exceeded"),
            Origin::PoolExhausted => f.write_str("context pool exhausted"),
            Origin::Shutdown => f.write_str("shutdown"),
            Origin::Error => f.write_str("cancelled with an error"),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Parent(o) => write!(f, "parent {o}"),
            other => other.origin().fmt(f),
        }
    }
}

/// Go's `context.Canceled` / `context.DeadlineExceeded`, as returned by
/// [`Context::err`](crate::Context::err).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextError {
    /// The context was cancelled (explicitly, by its owner, by shutdown or by exhaustion).
    Canceled,
    /// The context's deadline (or an ancestor's) passed.
    DeadlineExceeded,
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContextError::Canceled => "context canceled",
            ContextError::DeadlineExceeded => "context deadline exceeded",
        })
    }
}

impl std::error::Error for ContextError {}

/// The pool had no free slot; returned by the `try_*` constructors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolExhausted {
    /// The pool's configured capacity, in contexts.
    pub capacity: u32,
}

impl fmt::Display for PoolExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "context pool exhausted (capacity {})", self.capacity)
    }
}

impl std::error::Error for PoolExhausted {}
