//! A pool's driver thread stops when the pool is freed. Alone in its test binary, so that no
//! other test's pools start or stop driver threads while it counts them.

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use ctxpool::{DriverMode, Pool};

fn driver_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "ctxpool-driver")
        .count()
}

/// Polls until `driver_threads() == n`, failing after 10 s.
fn until(n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while driver_threads() != n {
        assert!(
            Instant::now() < deadline,
            "expected {n} driver threads, found {}",
            driver_threads()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_driver_thread_stops_when_the_pool_is_freed() {
    until(0);
    let pools: Vec<Pool> = (0..4).map(|_| Pool::builder().build().unwrap()).collect();
    let ctxs: Vec<_> = pools
        .iter()
        .map(|p| p.background().with_timeout(Duration::from_secs(10)))
        .collect();
    until(4);
    drop(pools);
    // The contexts keep their pools alive (pool P4): the threads keep running.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(driver_threads(), 4);
    drop(ctxs);
    until(0);
    // A manual pool starts none; a pool whose timer fires on its own driver thread, which
    // then holds the last reference, also stops cleanly (the thread frees the pool itself).
    let manual = Pool::builder().driver(DriverMode::Manual).build().unwrap();
    assert_eq!(driver_threads(), 0);
    drop(manual);
    let pool = Pool::builder().build().unwrap();
    let ctx = pool.background().with_timeout(Duration::from_millis(5));
    until(1);
    drop(pool);
    ctx.wait();
    drop(ctx);
    until(0);
}
