//! Outgoing header values without an allocation each.
//!
//! An `http::HeaderValue` owns its bytes as a `bytes::Bytes`. Made from a `&str`, that is a
//! fresh heap buffer per value: three per [`inject`](super::Propagator::inject) (the
//! `traceparent` with its new span id, the `grpc-timeout`, a generated `x-request-id`), and as
//! many frees when the request is sent. Instead, each thread cuts its values from a chunk of
//! [`CHUNK`] bytes of its own (`bytes::BytesMut`, `split().freeze()`): a value is a reference
//! to its slice of the chunk, counted by the chunk's shared reference count.
//!
//! ```text
//!   thread's BytesMut: [ value | value | value |  free ........................ ]
//!                        ▲ Bytes  ▲ Bytes  ▲ Bytes   ▲ the next value is written here
//!   the chunk is freed when the BytesMut has moved on and its last Bytes is dropped
//! ```
//!
//! Invariants (cited as **V1**..**V3**):
//!
//! - **V1** a value's bytes never change: the thread writes only past the end of what it has
//!   cut (`split` hands out `[0, len)` and keeps `[len, cap)`), and re-uses a chunk only when
//!   it holds the chunk's sole reference, i.e. every value cut from it has been dropped
//!   (`BytesMut::reserve` reclaims a shared buffer only when it is unique).
//! - **V2** memory is bounded by what the caller holds: a thread keeps at most one chunk
//!   for itself; every other chunk lives exactly as long as a value cut from it. Holding
//!   one value keeps its whole chunk (at most [`CHUNK`] bytes) alive; values longer than
//!   [`LARGEST`] get a buffer of their own, so a large value never pins a chunk and a chunk
//!   holds at least 4 of them.
//! - **V3** steady state allocates nothing: `inject` first makes [`room`] for every value it
//!   may cut, while the values of the previous outgoing call are gone (its headers were sent
//!   and dropped), so `reserve` finds the chunk unique and starts it over in place. Otherwise
//!   a new chunk costs two allocations (its buffer, and the shared count made at its first
//!   `split`), shared by every value cut from it (about 10 calls' worth of `traceparent`,
//!   `grpc-timeout` and `x-request-id`).
//!
//! Values are not checked again for visible ASCII (a pass over every byte): the callers
//! format them (hex, digits, a unit) or validated them against a grammar that admits less
//! than a header value does. Debug builds check.

use std::cell::RefCell;

use ::http::header::HeaderValue;
use bytes::BytesMut;

/// The size of a thread's chunk.
pub(crate) const CHUNK: usize = 1024;
/// The longest value cut from a chunk (V2); longer ones get their own buffer.
pub(crate) const LARGEST: usize = CHUNK / 4;

thread_local! {
    /// The calling thread's chunk (V1).
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Makes sure the calling thread's chunk has `n` (at most [`CHUNK`]) bytes free, so that
/// the next values, up to `n` bytes, are cut from one chunk; reclaims the chunk in place when
/// every value cut from it is gone (V3).
pub(crate) fn room(n: usize) {
    let _ = ARENA.try_with(|arena| {
        if let Ok(mut arena) = arena.try_borrow_mut() {
            if arena.capacity() - arena.len() < n {
                arena.reserve(CHUNK);
            }
        }
    });
}

/// A header value holding `text`, cut from the calling thread's chunk when it fits (V1–V3).
///
/// `text` must be a valid header value (visible ASCII, spaces and tabs): the callers format
/// it themselves (hex, digits) or validated it. A byte that is not is a bug in the caller,
/// which debug builds report by a panic.
pub(crate) fn header_value(text: &str) -> HeaderValue {
    debug_assert!(
        text.bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
        "a propagation header value is visible ASCII: {text:?}"
    );
    let text_bytes = text.as_bytes();
    let cut = if text.len() <= LARGEST {
        // `try_with`/`try_borrow_mut`: during thread-local teardown, or if this were ever
        // re-entered, fall back to a buffer of its own.
        ARENA
            .try_with(|arena| {
                let mut arena = arena.try_borrow_mut().ok()?;
                if arena.capacity() - arena.len() < text.len() {
                    // V1, V3: reclaims the chunk in place when unique, else a new one.
                    arena.reserve(CHUNK);
                }
                arena.extend_from_slice(text_bytes);
                Some(arena.split().freeze())
            })
            .ok()
            .flatten()
    } else {
        None
    };
    match cut {
        // SAFETY: `from_maybe_shared_unchecked` asks for valid UTF-8; `bytes` is a copy of
        // `text`, a `&str`. (That the bytes are also valid in a header is the caller's
        // promise, checked above in debug builds; a broken one is a wrong header, not UB.)
        Some(bytes) => unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) },
        None => HeaderValue::from_str(text).expect("a propagation header value is visible ASCII"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_hold_their_text_while_the_chunk_moves_on() {
        // Enough values to fill several chunks, all held: none may see another's bytes (V1).
        let texts: Vec<String> = (0..2_000)
            .map(|i| format!("v{i:x}-{}", "x".repeat(i % 90)))
            .collect();
        let values: Vec<HeaderValue> = texts.iter().map(|t| header_value(t)).collect();
        for (t, v) in texts.iter().zip(&values) {
            assert_eq!(v.as_bytes(), t.as_bytes());
        }
        // Dropping every other one and writing more leaves the rest intact.
        let kept: Vec<_> = values.into_iter().step_by(2).collect();
        let more: Vec<HeaderValue> = (0..500).map(|i| header_value(&format!("m{i}"))).collect();
        for (t, v) in texts.iter().step_by(2).zip(&kept) {
            assert_eq!(v.as_bytes(), t.as_bytes());
        }
        for (i, v) in more.iter().enumerate() {
            assert_eq!(v.as_bytes(), format!("m{i}").as_bytes());
        }
    }

    #[test]
    fn large_values_get_their_own_buffer() {
        let big = "b".repeat(LARGEST + 1);
        let v = header_value(&big);
        assert_eq!(v.as_bytes(), big.as_bytes());
        let exact = "e".repeat(LARGEST);
        assert_eq!(header_value(&exact).as_bytes(), exact.as_bytes());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "visible ASCII")]
    fn a_control_byte_is_a_caller_bug() {
        header_value("a\nb");
    }

    #[test]
    fn values_are_usable_on_other_threads() {
        let v = header_value("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let back = std::thread::spawn(move || v.to_str().unwrap().len())
            .join()
            .unwrap();
        assert_eq!(back, 55);
    }
}
