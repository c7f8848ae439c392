//! Parsers and writers for the headers that carry a request's context across services: pure
//! functions over bytes, with no dependency on an HTTP library (the `http` integration
//! builds on them).
//!
//! | header | spec | type / function | limits |
//! |---|---|---|---|
//! | `traceparent` | [W3C Trace Context] Level 1 (REC) and Level 2, "Traceparent Header" | [`parse_traceparent`], [`format_traceparent`] → [`TraceContext`](crate::TraceContext) | 55 bytes for version `00` |
//! | `tracestate` | W3C Trace Context, "Tracestate Header" | [`TraceState`] | 32 members, keys and values ≤ 256 bytes |
//! | `baggage` | [W3C Baggage], "Baggage HTTP Header Format" | [`Baggage`] | 180 members, 8,192 bytes kept, 32 KiB read |
//! | `grpc-timeout` | [gRPC over HTTP/2], "Requests" | [`parse_grpc_timeout`], [`format_grpc_timeout`] | 8 digits and a unit |
//! | `x-request-id` | none (de-facto) | [`XRequestId`] → [`RequestId`](crate::RequestId) | 128 visible ASCII bytes |
//! | `x-user-id` | none (ours) | [`parse_user_id`] → [`UserId`](crate::UserId) | 20 digits, ≤ `u64::MAX` |
//!
//! - **`traceparent`** (`00-<trace id>-<parent id>-<flags>`) identifies the caller's span in a
//!   distributed trace. Version `00` must be exactly 55 bytes of lowercase hex and dashes;
//!   higher versions are read as section "Versioning of traceparent" says (the version-00
//!   fields, then the end or a `-`); version `ff`, all-zero ids, uppercase hex and bad
//!   separators are rejected. Reserved trace flags are cleared; [`FLAG_SAMPLED`] and the
//!   Level 2 [`FLAG_RANDOM`] are kept.
//! - **`tracestate`** carries vendor-specific `key=value` entries beside it, left-most the
//!   vendor that last changed `traceparent`. Header lines are combined in order; empty
//!   members are skipped; a repeated key is dropped (the first kept, the rest counted, as
//!   section "Mutating the tracestate Field" allows); anything else invalid (or a 33rd
//!   member) rejects the whole `tracestate`, which the caller then drops, as the spec allows. Keys follow the
//!   Level 2 grammar (`( lcalpha / DIGIT ) 0*255( keychar )`, `@` anywhere), a superset of
//!   Level 1's `simple-key` / `multi-tenant-key`.
//! - **`baggage`** carries application key/value pairs (values percent-encoded, optional
//!   properties). Invalid members and members past the limits are dropped one by one and
//!   counted; only an input over [`MAX_BAGGAGE_INPUT_BYTES`] is refused whole. See
//!   [`Baggage::parse`] for the spec's words on each choice.
//! - **`grpc-timeout`** carries the caller's remaining deadline (`250m`, `30S`). Written with
//!   the finest unit that fits in 8 digits, rounded down.
//! - **`x-request-id`** is kept as received when it is short visible ASCII, and generated
//!   otherwise; **`x-user-id`** is a decimal `u64` that the caller believes only from a
//!   trusted peer.
//! - **Random ids** ([`new_trace_id`], [`new_span_id`], [`random_u64`]): a per-thread
//!   wyrand generator seeded once per thread; no allocation, lock or system call per id.
//! - **Sampling** ([`Sampler`]): whether a trace that starts here is sampled (always, never,
//!   or a ratio decided from the trace id); a new trace also sets the Level 2
//!   [`FLAG_RANDOM`], since its id is random. An incoming decision is kept and passed on.
//!
//! # Invalid and hostile input
//!
//! Nothing here panics, whatever the bytes. Invalid input is an `Err` (or, for baggage, a
//! dropped member), never a guess: the caller ignores the header (and, for `traceparent`,
//! restarts the trace). Every error type is a small `Copy` enum with a fixed set of
//! snake_case [`reason`](TraceParentError::reason) labels, meant for a metrics label:
//!
//! | type | reasons |
//! |---|---|
//! | [`TraceParentError`] | `too_short`, `too_long`, `bad_version`, `bad_separator`, `uppercase_hex`, `bad_hex`, `zero_trace_id`, `zero_span_id` |
//! | [`TraceStateError`] | `too_many_members`, `bad_member`, `bad_key`, `bad_value` |
//! | [`BaggageError`] | `too_long`, `too_many_members`, `bad_key` |
//! | [`GrpcTimeoutError`] | `empty`, `too_many_digits`, `bad_digit`, `bad_unit` |
//! | [`RequestIdError`] | `empty`, `too_long`, `not_visible_ascii` |
//! | [`UserIdError`] | `empty`, `too_many_digits`, `not_a_digit`, `overflow` |
//!
//! The work is linear in the input and stops early on hostile input: the fixed-size
//! headers (`traceparent`, `grpc-timeout`, `x-request-id`, `x-user-id`) check the length
//! first and look at no more than their maximum length; `tracestate` stops at the first
//! invalid byte, at a key or value's 257th byte, at a 33rd member (repeats included), so
//! 10,000 members or a megabyte value cost one partial pass; `baggage` refuses more than
//! [`MAX_BAGGAGE_INPUT_BYTES`] before reading it. Only [`TraceState`] and [`Baggage`]
//! allocate (their normalised text); the other parsers and writers work in place or in a
//! caller's fixed buffer.
//!
//! ```
//! use std::time::Duration;
//! use ctxpool::propagation::*;
//!
//! // Extract
//! let tc = parse_traceparent(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
//! let state = TraceState::parse([&b"congo=t61rcWkgMzE"[..]]).unwrap_or_default();
//! let deadline = parse_grpc_timeout(b"100m").ok();
//! assert_eq!(deadline, Some(Duration::from_millis(100)));
//!
//! // Inject, as a child span of the caller's.
//! let child = ctxpool::TraceContext { span_id: new_span_id(), ..tc };
//! let mut buf = [0u8; TRACEPARENT_LEN];
//! let traceparent = format_traceparent(&child, &mut buf);
//! assert!(traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
//! let mut state = state;
//! state.insert("rojo", &format!("{:016x}", child.span_id)).unwrap();
//! assert!(state.as_str().starts_with("rojo="));
//! let mut t = [0u8; GRPC_TIMEOUT_MAX_LEN];
//! assert_eq!(format_grpc_timeout(Duration::from_millis(95), &mut t), "95000000n");
//! ```
//!
//! [W3C Trace Context]: https://www.w3.org/TR/trace-context-2/
//! [W3C Baggage]: https://www.w3.org/TR/baggage/
//! [gRPC over HTTP/2]: https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md

mod baggage;
mod grpc_timeout;
mod random;
mod request_id;
mod sampler;
mod traceparent;
mod tracestate;

pub use baggage::{
    Baggage, BaggageError, BaggageMember, MAX_BAGGAGE_BYTES, MAX_BAGGAGE_INPUT_BYTES,
    MAX_BAGGAGE_MEMBERS,
};
pub use grpc_timeout::{
    format_grpc_timeout, parse_grpc_timeout, GrpcTimeoutError, GRPC_TIMEOUT_MAX_LEN,
};
pub use random::{new_span_id, new_trace_id, random_u64};
pub use request_id::{parse_user_id, RequestIdError, UserIdError, XRequestId, MAX_REQUEST_ID_LEN};
pub use sampler::Sampler;
pub use traceparent::{
    format_traceparent, parse_traceparent, TraceParentError, FLAG_RANDOM, FLAG_SAMPLED,
    KNOWN_FLAGS, TRACEPARENT_LEN,
};
pub use tracestate::{
    TraceState, TraceStateError, MAX_TRACESTATE_KEY_LEN, MAX_TRACESTATE_MEMBERS,
    MAX_TRACESTATE_VALUE_LEN,
};
