//! Publication through the `metrics` facade (feature `metrics`): the pool's upkeep publishes
//! the pool's families and, for a propagator built with `publish_metrics`, the propagation
//! counters, every `metrics.publish_interval`, into whatever recorder is installed. In its
//! own test binary: the recorder is process-wide.

use std::time::{Duration, Instant};

use ctxpool::http::Propagator;
use ctxpool::{Config, Pool};
use http::{HeaderMap, HeaderValue};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Waits (a generous bound, not a timing assertion) until `render()` has every line of
/// `want`; returns the last text.
fn wait_for(render: impl Fn() -> String, want: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let text = render();
        if want.iter().all(|w| text.lines().any(|l| l == *w)) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "missing {:?} in:\n{text}",
            want.iter()
                .filter(|w| !text.lines().any(|l| l == **w))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pool_and_propagator_counters_reach_the_installed_recorder() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");
    let mut cfg = Config::default();
    cfg.metrics.publish_interval = Duration::from_millis(10);
    let pool = Pool::builder().config(&cfg).build().unwrap();
    let published = Propagator::builder(&pool).publish_metrics().build();
    // Not published: its counts must not show up (they would overwrite the other's).
    let silent = Propagator::new(&pool);

    let mut headers = HeaderMap::new();
    headers.insert("tracestate", HeaderValue::from_static("a=1"));
    for _ in 0..3 {
        drop(published.extract(&headers, None));
    }
    drop(silent.extract(&HeaderMap::new(), None));

    let text = wait_for(
        || handle.render(),
        &[
            "ctxpool_propagation_requests_total 3",
            "ctxpool_propagation_new_traces_total 3",
            "ctxpool_propagation_rejected_total{header=\"tracestate\",reason=\"no_traceparent\"} 3",
            "ctxpool_propagation_injected_total 0",
            &format!("ctxpool_pool_capacity {}", pool.capacity()),
        ],
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ctxpool_contexts_created_total{op=\"http_request\"} ")),
        "{text}"
    );

    // A dropped propagator is no longer published: its last values stay in the recorder,
    // and new requests through another propagator do not move them.
    drop(published);
    drop(silent.extract(&headers, None));
    std::thread::sleep(Duration::from_millis(100));
    let text = handle.render();
    assert!(
        text.lines()
            .any(|l| l == "ctxpool_propagation_requests_total 3"),
        "{text}"
    );
}
