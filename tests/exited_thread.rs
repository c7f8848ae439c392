//! Alone in its test binary: it relies on the id of an exited thread staying free, which
//! another test's thread in the same process could take (and with it that thread's cached free
//! slots, which are then cached on a live thread: allowed, but not what this test checks).

use std::thread;

use ctxpool::Pool;

/// A thread fills the pool and frees everything into its own cache, then exits: another
/// thread must still find every slot (the exhaustion path takes over exited threads' lists).
#[test]
fn freed_slots_are_found_across_threads_at_capacity() {
    // Thread A fills its cache, frees everything; B must still find room.
    let p = Pool::builder()
        .capacity(16)
        .thread_cache(16)
        .build()
        .unwrap();
    let p2 = p.clone();
    thread::spawn(move || {
        let bg = p2.background();
        let all: Vec<_> = (0..16).map(|_| bg.with_cancel()).collect();
        drop(all);
    })
    .join()
    .unwrap();
    let bg = p.background();
    let again: Vec<_> = (0..16).map(|_| bg.try_with_cancel().unwrap()).collect();
    assert_eq!(p.stats().in_use, 16);
    drop(again);
}
