//! Random ids: a per-thread wyrand generator, seeded once per thread.
//!
//! wyrand (Wang Yi's 64-bit generator, the one `fastrand` uses) is one add and one 64×64→128
//! multiply per output, with 2⁶⁴ period; ids need to be unique and unpredictable enough to not
//! collide across services, not cryptographically secure. Each thread seeds its state once,
//! from std's `RandomState` (OS entropy, fetched once per thread by std), the clock and the
//! address of the thread's own state; after that a call is a thread-local load and store: no
//! allocation, no lock, no system call.
//!
//! The state lives in a plain `std::thread_local!` (not in `crate::sync`): it is no
//! synchronisation, so there is nothing for loom to model.

use core::cell::Cell;
use std::hash::{BuildHasher, Hasher};

std::thread_local! {
    /// The wyrand state; 0 means "not seeded yet".
    static STATE: Cell<u64> = const { Cell::new(0) };
}

const WY_ADD: u64 = 0xa076_1d64_78bd_642f;
const WY_XOR: u64 = 0xe703_7ed1_a0b4_28db;

/// One wyrand step: advances `state` and returns the output.
#[inline]
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(WY_ADD);
    let t = u128::from(*state) * u128::from(*state ^ WY_XOR);
    ((t >> 64) as u64) ^ (t as u64)
}

/// A fresh seed: OS entropy (through `RandomState`), the time and `salt` (an address that
/// differs between live threads), never 0.
#[cold]
fn seed(salt: usize) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(salt);
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish() | 1
}

/// A random `u64` from the calling thread's generator (any value, 0 included).
///
/// ```
/// let (a, b) = (ctxpool::propagation::random_u64(), ctxpool::propagation::random_u64());
/// assert_ne!(a, b); // 2⁻⁶⁴ chance of failing
/// ```
#[inline]
pub fn random_u64() -> u64 {
    STATE
        .try_with(|cell| {
            let mut s = cell.get();
            if s == 0 {
                s = seed(cell as *const Cell<u64> as usize);
            }
            let out = wyrand(&mut s);
            // wyrand's state walks an odd-increment sequence through every u64, 0 included;
            // 0 is our "unseeded" mark, so step over it (it would only cost a reseed anyway).
            cell.set(if s == 0 { WY_ADD } else { s });
            out
        })
        // During thread-local teardown: a one-off generator seeded from scratch.
        .unwrap_or_else(|_| {
            let mut s = seed(&WY_ADD as *const u64 as usize);
            wyrand(&mut s)
        })
}

/// A fresh random trace id: 128 random bits, never all zero (W3C Trace Context §3.2.2.3
/// "trace-id"). Every bit is random, so a `traceparent` built from it may set the
/// [random trace id flag](super::FLAG_RANDOM) (Trace Context Level 2).
#[inline]
pub fn new_trace_id() -> u128 {
    loop {
        let id = (u128::from(random_u64()) << 64) | u128::from(random_u64());
        if id != 0 {
            return id;
        }
    }
}

/// A fresh random span (parent) id: 64 random bits, never zero (W3C Trace Context §3.2.2.4
/// "parent-id").
#[inline]
pub fn new_span_id() -> u64 {
    loop {
        let id = random_u64();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_non_zero_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert_ne!(new_trace_id(), 0);
            assert_ne!(new_span_id(), 0);
            assert!(seen.insert(random_u64()));
        }
    }

    #[test]
    fn threads_get_different_streams() {
        let here: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        let there: Vec<u64> = std::thread::spawn(|| (0..4).map(|_| random_u64()).collect())
            .join()
            .unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn bits_look_uniform() {
        // Each of the 64 bits is set in about half of 4,096 draws (±5 σ ≈ ±160).
        let mut ones = [0u32; 64];
        for _ in 0..4096 {
            let x = random_u64();
            for (i, n) in ones.iter_mut().enumerate() {
                *n += ((x >> i) & 1) as u32;
            }
        }
        for (i, n) in ones.iter().enumerate() {
            assert!((1888..=2208).contains(n), "bit {i} set {n} times of 4096");
        }
    }
}
