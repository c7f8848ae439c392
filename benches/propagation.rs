//! Propagation over HTTP headers: `ctxpool::http::Propagator` against OpenTelemetry's W3C
//! propagators, in one group so that the ratio is comparable.
//!
//! Group `extract_inject` (the ids are compared over time; do not rename them). Every
//! iteration reads the same incoming `http::HeaderMap` (`traceparent`, a `tracestate` of 3
//! members, a `baggage` of 3 entries, one percent-encoded) and writes an outgoing one, made
//! once outside the timing and cleared (its memory kept) before each write:
//!
//! - `ctxpool`: `propagator.extract(&headers, None)` (a pooled request context with the
//!   default deadline, the trace, `tracestate`, baggage and a generated request id), then
//!   `propagator.inject(..)` (`traceparent` with a new span id, `tracestate`, `baggage`,
//!   `x-request-id`, `grpc-timeout`), then the request context is dropped. The pool is built
//!   with `Pool::builder().build()`, not the global one.
//! - `opentelemetry`: a `TextMapCompositePropagator` of `TraceContextPropagator` and
//!   `BaggagePropagator` (`opentelemetry_sdk` 0.33) extracts into an `opentelemetry::Context`
//!   and injects it (`traceparent`, `tracestate`, `baggage`), through the `HeaderMap`
//!   adapters `opentelemetry-http` would provide; the context is dropped. It does less than
//!   `ctxpool` (no deadline, no request id, no new span id).
//!
//! Before the group runs, the heap allocations per operation of each id are counted (a
//! counting global allocator, per thread) and printed, with those of extracting a request
//! whose only propagation header is a valid `traceparent` (zero for `ctxpool`: invariant H2
//! of `ctxpool::http`).
//!
//! Group `extract_inject_with_parent`, id `ctxpool`: the same round with the request
//! contexts children of a long-lived root, as a server sets it up.
//!
//! Group `extract_inject_floor`: the `HeaderMap` operations of each id alone (values made
//! beforehand), a lower bound for any implementation over `http::HeaderMap`.
//!
//! Group `extract_headers`: `extract` alone, of the same propagation headers among ordinary
//! ones (`host`, `user-agent`, `authorization`, …), ids `lines_N` for maps of N lines: how
//! the cost grows with the request's size, across the switch from walking the map to
//! looking headers up (`ctxpool::http`, `WALK_MAX`).
//!
//! Run with `cargo bench --bench propagation`.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use ctxpool::http::Propagator;
use ctxpool::Pool;
use http::header::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

// ---------------------------------------------------------------------------------------------
// Counting allocator: each thread counts its own allocations in a thread-local, so criterion's
// other threads (if any) cannot disturb a count.

#[path = "support/counting.rs"]
mod counting;
use counting::thread_allocs;

#[path = "../tests/support/otel_carrier.rs"]
mod otel_carrier;
use otel_carrier::{HeaderExtractor, HeaderInjector};

// ---------------------------------------------------------------------------------------------

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The incoming request's propagation headers.
fn incoming() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("traceparent", HeaderValue::from_static(TRACEPARENT));
    h.insert(
        "tracestate",
        HeaderValue::from_static("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,tenant@vendor=a:b"),
    );
    h.insert(
        "baggage",
        HeaderValue::from_static("userId=alice,serverNode=DF%2028,isProduction=false"),
    );
    h
}

fn otel_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

fn ctxpool_once(propagator: &Propagator, headers: &HeaderMap, out: &mut HeaderMap) {
    let incoming = propagator.extract(black_box(headers), None);
    out.clear();
    propagator
        .inject(&incoming.context(), incoming.meta(), out, None)
        .expect("a fresh request context has its whole budget");
    black_box(&*out);
}

fn otel_once(propagator: &TextMapCompositePropagator, headers: &HeaderMap, out: &mut HeaderMap) {
    let cx = propagator.extract(&HeaderExtractor(black_box(headers)));
    out.clear();
    propagator.inject_context(&cx, &mut HeaderInjector(out));
    black_box(&*out);
}

/// Heap allocations per call of `f`, on this thread, after a warm-up (per-thread caches,
/// the pool's first page, the outgoing map's capacity).
fn allocs_per_op(mut f: impl FnMut()) -> f64 {
    const WARM_UP: u64 = 1_000;
    const N: u64 = 10_000;
    for _ in 0..WARM_UP {
        f();
    }
    let before = thread_allocs();
    for _ in 0..N {
        f();
    }
    (thread_allocs() - before) as f64 / N as f64
}

fn report_allocs(pool: &Pool) {
    let propagator = Propagator::new(pool);
    let otel = otel_propagator();
    let headers = incoming();
    let mut out = HeaderMap::new();
    let ours = allocs_per_op(|| ctxpool_once(&propagator, &headers, &mut out));
    let theirs = allocs_per_op(|| otel_once(&otel, &headers, &mut out));

    let mut only_tp = HeaderMap::new();
    only_tp.insert("traceparent", HeaderValue::from_static(TRACEPARENT));
    let ours_tp = allocs_per_op(|| drop(black_box(propagator.extract(black_box(&only_tp), None))));
    let theirs_tp = allocs_per_op(|| drop(black_box(otel.extract(&HeaderExtractor(&only_tp)))));

    println!("heap allocations per operation (counted on this thread):");
    println!("  extract_inject/ctxpool          {ours:>6.2}");
    println!("  extract_inject/opentelemetry    {theirs:>6.2}");
    println!("  extract traceparent only, ctxpool        {ours_tp:>6.2}");
    println!("  extract traceparent only, opentelemetry  {theirs_tp:>6.2}");
}

fn extract_inject(c: &mut Criterion) {
    let pool = Pool::builder().build().expect("the default configuration");
    report_allocs(&pool);

    let mut g = c.benchmark_group("extract_inject");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let headers = incoming();
    let mut out = HeaderMap::new();

    let propagator = Propagator::new(&pool);
    g.bench_function("ctxpool", |b| {
        b.iter(|| ctxpool_once(&propagator, &headers, &mut out))
    });

    let otel = otel_propagator();
    g.bench_function("opentelemetry", |b| {
        b.iter(|| otel_once(&otel, &headers, &mut out))
    });
    g.finish();

    // The way a server is set up (`examples/server`): requests are children of a long-lived
    // server root, so making one writes nothing shared with other threads.
    let mut g = c.benchmark_group("extract_inject_with_parent");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let root = pool.background().with_cancel();
    let propagator = Propagator::builder(&pool).parent(root.context()).build();
    g.bench_function("ctxpool", |b| {
        b.iter(|| ctxpool_once(&propagator, &headers, &mut out))
    });
    g.finish();
}

/// Group `extract_inject_floor`: the `http::HeaderMap` work alone, with no parsing, no
/// formatting and no context, values made beforehand (a reference count each), into the
/// same cleared outgoing map:
///
/// - `headermap_ctxpool`: what `extract_inject/ctxpool` does to maps: a walk of the incoming
///   map for its six headers, and five inserts (`traceparent`, `tracestate`, `baggage`,
///   `x-request-id`, `grpc-timeout`).
/// - `headermap_opentelemetry`: what `extract_inject/opentelemetry` must do at least: three
///   lookups, three inserts.
///
/// These bound from below what any implementation over `HeaderMap` can reach.
fn extract_inject_floor(c: &mut Criterion) {
    use ctxpool::http::TRACEPARENT as TP;
    use ctxpool::http::{BAGGAGE, GRPC_TIMEOUT, TRACESTATE, X_REQUEST_ID};
    let mut g = c.benchmark_group("extract_inject_floor");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let headers = incoming();
    let mut out = HeaderMap::new();
    let values: Vec<HeaderValue> = [TRACEPARENT, "a=1", "k=v", "0123456789abcdef", "2999m"]
        .iter()
        .map(|v| {
            HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(v.as_bytes())).unwrap()
        })
        .collect();
    g.bench_function("headermap_ctxpool", |b| {
        b.iter(|| {
            let mut found = [None; 6];
            for (name, value) in black_box(&headers) {
                let i = match name.as_str() {
                    "traceparent" => 0,
                    "tracestate" => 1,
                    "baggage" => 2,
                    "x-request-id" => 3,
                    "grpc-timeout" => 4,
                    "x-user-id" => 5,
                    _ => continue,
                };
                found[i] = Some(value);
            }
            black_box(&found);
            out.clear();
            out.insert(TP, values[0].clone());
            out.insert(TRACESTATE, values[1].clone());
            out.insert(BAGGAGE, values[2].clone());
            out.insert(X_REQUEST_ID, values[3].clone());
            out.insert(GRPC_TIMEOUT, values[4].clone());
            black_box(&out);
        })
    });
    g.bench_function("headermap_opentelemetry", |b| {
        b.iter(|| {
            let h = black_box(&headers);
            black_box((h.get("traceparent"), h.get("tracestate"), h.get("baggage")));
            out.clear();
            out.insert(TP, values[0].clone());
            out.insert(TRACESTATE, values[1].clone());
            out.insert(BAGGAGE, values[2].clone());
            black_box(&out);
        })
    });
    g.finish();
}

/// The incoming map of [`incoming`] with ordinary headers added (`host`, `user-agent`, …,
/// then `x-extra-N`), `lines` lines in all.
fn incoming_with(lines: usize) -> HeaderMap {
    let mut h = incoming();
    let ordinary = [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("content-type", "application/json"),
        ("content-length", "42"),
        (
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo",
        ),
        ("cookie", "session=3f2a9c"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
    ];
    let mut i = 0;
    while h.len() < lines {
        match ordinary.get(i) {
            Some((k, v)) => h.insert(*k, HeaderValue::from_static(v)),
            None => h.insert(
                http::header::HeaderName::try_from(format!("x-extra-{i}")).unwrap(),
                HeaderValue::from_static("1"),
            ),
        };
        i += 1;
    }
    h
}

/// Group `extract_headers`: `extract` (and drop) of the same propagation headers among
/// more and more ordinary ones, ids `lines_N` for a map of N lines. Up to 24 lines
/// `extract` walks the map; above, it looks each propagation header up.
fn extract_headers(c: &mut Criterion, pool: &Pool) {
    let mut g = c.benchmark_group("extract_headers");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    let propagator = Propagator::new(pool);
    for lines in [3, 8, 16, 24, 25, 32, 64] {
        let headers = incoming_with(lines);
        assert_eq!(headers.len(), lines);
        g.bench_function(format!("lines_{lines}"), |b| {
            b.iter(|| drop(black_box(propagator.extract(black_box(&headers), None))))
        });
    }
    g.finish();
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated `pub fn` would
// trip the crate's `missing_docs = "deny"` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    extract_inject(&mut c);
    let pool = Pool::builder().build().expect("the default configuration");
    extract_headers(&mut c, &pool);
    extract_inject_floor(&mut c);
    c.final_summary();
}
