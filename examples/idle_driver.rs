//! Measures how often an idle process's `ctxpool-driver` thread wakes (issue 13, item 8).
//!
//! ```text
//! cargo run --release --example idle_driver -- [SECONDS]   # default 10
//! ```
//!
//! Uses the global pool (a request context with a 30 s timeout is made, dropped, and a
//! long-lived one kept), then idles for SECONDS and prints the driver thread's voluntary
//! context switches (Linux: `/proc/self/task/<tid>/status`) and the pool's driver turns.

use std::time::Duration;

use ctxpool::Context;

/// Voluntary context switches of this process's thread named `name` (Linux only).
fn switches(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok());
    }
    None
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let bg = Context::background();
    drop(bg.with_timeout(Duration::from_secs(30)));
    let _kept = bg.with_timeout(Duration::from_secs(3600));
    let pool = bg.pool();
    // Let the driver finish its last work and settle.
    std::thread::sleep(Duration::from_millis(200));
    let (s0, t0) = (switches("ctxpool-driver"), pool.timer_stats().turns);
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (s1, t1) = (switches("ctxpool-driver"), pool.timer_stats().turns);
    match (s0, s1) {
        (Some(a), Some(b)) => println!(
            "idle {secs} s: driver voluntary context switches {} ({:.1}/s), turns {}",
            b - a,
            (b - a) as f64 / secs,
            t1 - t0
        ),
        _ => println!(
            "idle {secs} s: driver turns {} (context switches: /proc not available)",
            t1 - t0
        ),
    }
}
