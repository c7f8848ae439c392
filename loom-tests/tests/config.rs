//! loom models of a runtime configuration update (`Pool::update_config`) against the hot path:
//! a context made while the update runs reads the old limits or the new ones, whole — never
//! the new default with the old maximum or the reverse — and a rejected update changes nothing.
//!
//! The limits a context reads on creation (`default_timeout`, `max_timeout`) live in one packed
//! atomic word, published after the whole `Config` is swapped in. With old = (30 s, 60 s) and
//! new = (10 s, 20 s), a torn read (default 30 s, max 20 s) would show as a request root cut to
//! 20 s and a clamp counted; a whole read shows 30 s or 10 s and no clamp.

use std::time::Duration;

use ctxpool::{Config, DriverMode, ManualClock, Pool};
use ctxpool_loom_tests::*;

fn config(default_s: u64, max_s: u64) -> Config {
    Config {
        default_timeout: Duration::from_secs(default_s),
        max_timeout: Duration::from_secs(max_s),
        pool_capacity: 8,
        ..Config::default()
    }
}

fn manual_pool(clock: &ManualClock) -> Pool {
    pool_from(clock, config(30, 60))
}

fn pool_from(clock: &ManualClock, start: Config) -> Pool {
    Pool::builder()
        .config(&start)
        .manual_clock(clock)
        .driver(DriverMode::Manual)
        .build()
        .unwrap()
}

/// An accepted update from `old` to `new` races with a request root, which must read one whole
/// configuration. A single read can expose a mix in one direction only (the old default with
/// the new, smaller maximum shows as a clamp), so (1) and (1b) update both ways.
fn reader_sees_whole(old: (u64, u64), new: (u64, u64)) {
    model(move || {
        let clock = ManualClock::new();
        let pool = pool_from(&clock, config(old.0, old.1));
        let updater = {
            let pool = pool.clone();
            thread::spawn(move || pool.update_config(config(new.0, new.1)).is_ok())
        };
        let req = pool.request().with_cancel();
        let left = req.remaining().unwrap();
        assert!(
            left == Duration::from_secs(old.0) || left == Duration::from_secs(new.0),
            "a torn configuration: {left:?}"
        );
        assert_eq!(pool.timer_stats().clamped, 0, "a torn read clamps");
        // The full configuration agrees with itself, whichever one was read.
        let c = pool.config();
        assert!(c.default_timeout <= c.max_timeout);
        assert!(updater.join().unwrap());
        // Once the update returned, new contexts see it.
        let after = pool.request().with_cancel();
        assert_eq!(after.remaining(), Some(Duration::from_secs(new.0)));
        assert_eq!(*pool.config(), config(new.0, new.1));
    });
}

/// (1) Shrinking limits.
#[test]
fn reader_sees_old_or_new_limits_whole() {
    reader_sees_whole((30, 60), (10, 20));
}

/// (1b) Growing limits.
#[test]
fn reader_sees_old_or_new_limits_whole_growing() {
    reader_sees_whole((10, 20), (30, 60));
}

/// (2) A rejected update races with a reader: nothing changes, ever.
#[test]
fn rejected_update_changes_nothing() {
    model(|| {
        let clock = ManualClock::new();
        let pool = manual_pool(&clock);
        let updater = {
            let pool = pool.clone();
            // Default above max, and a capacity change: rejected with both problems.
            thread::spawn(move || {
                let mut bad = config(90, 20);
                bad.pool_capacity = 16;
                pool.update_config(bad).unwrap_err().problems.len()
            })
        };
        let req = pool.request().with_timeout(Duration::from_secs(3600));
        assert_eq!(req.remaining(), Some(Duration::from_secs(60)), "old max");
        assert_eq!(updater.join().unwrap(), 2);
        assert_eq!(*pool.config(), config(30, 60));
        let after = pool.request().with_cancel();
        assert_eq!(after.remaining(), Some(Duration::from_secs(30)));
    });
}

/// (3) Two updates race: the last one stored wins whole, and the hot word matches the full
/// configuration afterwards (updates are serialised).
#[test]
fn concurrent_updates_leave_a_consistent_pair() {
    model(|| {
        let clock = ManualClock::new();
        let pool = manual_pool(&clock);
        let a = {
            let pool = pool.clone();
            thread::spawn(move || pool.update_config(config(10, 20)).unwrap())
        };
        pool.update_config(config(5, 40)).unwrap();
        a.join().unwrap();
        let c = pool.config();
        let req = pool.request().with_timeout(Duration::from_secs(3600));
        assert_eq!(req.remaining(), Some(c.max_timeout));
        let d = pool.request().with_cancel();
        assert_eq!(d.remaining(), Some(c.default_timeout));
    });
}
