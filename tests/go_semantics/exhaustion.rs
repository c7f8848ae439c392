//! Rule 4: no false exhaustion. A `try_*` constructor succeeds whenever fewer than `capacity`
//! contexts are in use, on any thread, however many threads keep freed slots in their caches
//! (pool P6, shard S9..S11). The other threads here are alive and idle (parked on a channel or
//! a barrier) while the pool is drained: their caches can only be reached by reclaiming them.

use std::sync::{mpsc, Arc, Barrier};
use std::thread;

use ctxpool::{CancelGuard, DriverMode, Pool, RequestId};

fn pool(capacity: u32) -> Pool {
    Pool::builder()
        .capacity(capacity)
        .driver(DriverMode::Manual)
        .build()
        .unwrap()
}

/// Takes every slot with `try_with_cancel`, checks the count and that the next one is refused,
/// and checks every context reads back its own request id (no slot handed out twice).
fn drain(pool: &Pool, expect: u32) -> Vec<CancelGuard> {
    let bg = pool.background();
    let mut held = Vec::new();
    for i in 0..expect {
        let c = bg
            .child()
            .request_id(RequestId(u64::from(i) + 1))
            .try_with_cancel()
            .unwrap_or_else(|_| {
                panic!(
                    "refused with {i} of {} in use: {:?}",
                    pool.capacity(),
                    pool.stats()
                )
            });
        held.push(c);
    }
    assert!(
        bg.try_with_cancel().is_err(),
        "more than capacity: {:?}",
        pool.stats()
    );
    for (i, c) in held.iter().enumerate() {
        assert_eq!(c.request_id(), Some(RequestId(i as u64 + 1)));
        assert!(!c.is_cancelled());
    }
    held
}

#[test]
fn live_worker_cache_is_reclaimed() {
    let pool = pool(4);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let worker = thread::spawn(move || {
        drop(p.background().with_cancel()); // one slot now cached on this thread
        ready_tx.send(()).unwrap();
        done_rx.recv().unwrap(); // alive and idle while the main thread drains the pool
    });
    ready_rx.recv().unwrap();
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 0);
    let held = drain(&pool, 4);
    drop(held);
    done_tx.send(()).unwrap();
    worker.join().unwrap();
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 0);
}

/// Pools of 1,024 with 1, 4, 16 and 64 idle threads that each made and dropped contexts.
#[test]
fn idle_threads_never_hide_free_slots() {
    for threads in [1usize, 4, 16, 64] {
        let pool = pool(1024);
        let per_thread = (1024 / threads).min(64);
        let made = Arc::new(Barrier::new(threads + 1));
        let done = Arc::new(Barrier::new(threads + 1));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (p, made, done) = (pool.clone(), made.clone(), done.clone());
                thread::spawn(move || {
                    let bg = p.background();
                    let mine: Vec<_> = (0..per_thread).map(|_| bg.with_cancel()).collect();
                    assert!(mine.iter().all(|c| !c.is_cancelled()));
                    drop(mine); // cached here, up to the thread cache
                    made.wait();
                    done.wait();
                })
            })
            .collect();
        made.wait();
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 0, "{threads} threads");
        let held = drain(&pool, 1024);
        drop(held);
        done.wait();
        for w in workers {
            w.join().unwrap();
        }
        pool.testing_quiesce();
        assert_eq!(pool.stats().in_use, 0);
    }
}

/// The second way in: a thread that takes over a long chain of freed slots keeps at most its
/// thread cache of them. An acceptor whose request roots are dropped by workers does this.
#[test]
fn adopted_chain_is_cut_to_the_thread_cache() {
    let pool = Pool::builder()
        .capacity(1024)
        .thread_cache(4)
        .driver(DriverMode::Manual)
        .build()
        .unwrap();
    let (to_dropper, dropper_rx) = mpsc::channel::<Vec<CancelGuard>>();
    let dropper = thread::spawn(move || {
        for batch in dropper_rx {
            drop(batch);
        }
    });
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let p = pool.clone();
    let acceptor = thread::spawn(move || {
        let bg = p.background();
        let roots: Vec<_> = (0..1000).map(|_| bg.with_cancel()).collect();
        to_dropper.send(roots).unwrap();
        drop(to_dropper); // the dropper ends once it has dropped them
        while p.stats().in_use != 0 {
            thread::yield_now();
        }
        let one = bg.with_cancel(); // takes over the 1,000 freed slots
        assert!(!one.is_cancelled());
        ready_tx.send(()).unwrap();
        hold_rx.recv().unwrap(); // idle, holding one
        drop(one);
    });
    ready_rx.recv().unwrap();
    dropper.join().unwrap();
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 1);
    let held = drain(&pool, 1023);
    drop(held);
    hold_tx.send(()).unwrap();
    acceptor.join().unwrap();
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 0);
}

/// Threads making and dropping contexts while another keeps draining the pool: every context
/// reads back its own value (no slot is ever owned twice) and the counts balance.
#[test]
fn reclaim_races_owners_without_losing_or_sharing_slots() {
    let pool = pool(64);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3u64)
        .map(|w| {
            let (p, stop) = (pool.clone(), stop.clone());
            thread::spawn(move || {
                let bg = p.background();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = RequestId(w << 32 | i);
                    let batch: Vec<_> = (0..8)
                        .filter_map(|_| bg.child().request_id(id).try_with_cancel().ok())
                        .collect();
                    for c in &batch {
                        assert_eq!(c.request_id(), Some(id), "a slot owned twice");
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let bg = pool.background();
    for round in 0..200u64 {
        let id = RequestId(u64::MAX - round);
        let held: Vec<_> = (0..64)
            .map_while(|_| bg.child().request_id(id).try_with_cancel().ok())
            .collect();
        for c in &held {
            assert_eq!(c.request_id(), Some(id), "a slot owned twice");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let s = pool.stats();
    assert_eq!((s.in_use, s.created - s.released), (0, 0), "{s:?}");
    assert!(s.high_water <= 64);
    drop(drain(&pool, 64));
}
