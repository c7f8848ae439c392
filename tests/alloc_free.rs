//! Steady-state context operations perform zero heap allocations, counted by a
//! `#[global_allocator]` (only allocations made by the measuring thread are counted, so the
//! test harness's other threads cannot disturb the count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Waker};

use std::time::Duration;

use ctxpool::{
    Context, DriverMode, ManualClock, Op, Pool, Reason, RequestId, TraceContext, UserId,
};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: allocation during thread-local teardown must not panic.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const CYCLES: usize = 100_000;

/// Runs `f` for warm-up, then `CYCLES` times while counting this thread's allocations.
fn allocations(f: impl FnMut()) -> u64 {
    allocations_in(CYCLES, f)
}

/// [`allocations`] over `cycles` calls.
fn allocations_in(cycles: usize, mut f: impl FnMut()) -> u64 {
    for _ in 0..1_000 {
        f();
    }
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    for _ in 0..cycles {
        f();
    }
    COUNTING.with(|on| on.set(false));
    COUNT.with(|c| c.get())
}

static OP: Op = Op::new("alloc_free");
static RUNS: AtomicUsize = AtomicUsize::new(0);

fn trace() -> TraceContext {
    TraceContext {
        trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        span_id: 0x00f0_67aa_0ba9_02b7,
        flags: 1,
    }
}

#[test]
fn the_counter_counts() {
    // Guards against a counter that cannot fail: boxing does allocate, once per cycle.
    let n = allocations(|| drop(std::hint::black_box(Box::new(1u64))));
    assert_eq!(n, CYCLES as u64);
}

#[test]
fn child_create_drop() {
    let root = Context::background().with_cancel();
    assert_eq!(allocations(|| drop(root.with_cancel())), 0);
}

#[test]
fn create_cancel() {
    let root = Context::background().with_cancel();
    let n = allocations(|| {
        let c = root.with_cancel();
        assert!(c.cancel(Reason::Code(1)));
        assert!(c.is_cancelled());
    });
    assert_eq!(n, 0);
}

#[test]
fn chain_of_depth_8() {
    let root = Context::background().with_cancel();
    let n = allocations(|| {
        let a = root.with_cancel();
        let b = a.with_cancel();
        let c = b.with_cancel();
        let d = c.with_cancel();
        let e = d.with_cancel();
        let f = e.with_cancel();
        let g = f.with_cancel();
        let h = g.with_cancel();
        a.cancel(Reason::None);
        assert!(h.is_cancelled());
    });
    assert_eq!(n, 0);
}

#[test]
fn inline_values() {
    let root = Context::background().with_cancel();
    let n = allocations(|| {
        let req = root
            .child()
            .op(&OP)
            .request_id(RequestId(7))
            .trace(trace())
            .user_id(UserId(9))
            .with_cancel();
        let v = req.with_value(42u64);
        let sub = v.with_cancel();
        assert_eq!(sub.value::<u64>(), Some(&42));
        assert_eq!(sub.request_id(), Some(RequestId(7)));
    });
    assert_eq!(n, 0);
}

#[test]
fn without_cancel() {
    let root = Context::background().with_cancel();
    let n = allocations(|| {
        let detached = root.without_cancel();
        root.is_cancelled();
        drop(detached);
    });
    assert_eq!(n, 0);
}

#[test]
fn after_func_register_stop() {
    let root = Context::background().with_cancel();
    let n = allocations(|| {
        let h = root.after_func(|| {
            RUNS.fetch_add(1, Ordering::Relaxed);
        });
        assert!(h.stop());
    });
    assert_eq!(n, 0);
    let n = allocations(|| {
        let c = root.with_cancel();
        let _h = c.after_func(|| {
            RUNS.fetch_add(1, Ordering::Relaxed);
        });
        c.cancel(Reason::None);
    });
    assert_eq!(n, 0);
}

#[test]
fn clone_heavy() {
    let root = Context::background().with_cancel();
    let n = allocations(|| {
        let c = root.with_cancel();
        let handles = [c.context(), c.context(), c.context(), c.context()];
        let more = handles.clone();
        let weak = c.downgrade();
        drop(handles);
        assert!(weak.upgrade().is_some());
        drop(c);
        assert!(more[0].is_cancelled());
    });
    assert_eq!(n, 0);
}

#[test]
fn cancelled_future_registration() {
    let root = Context::background().with_cancel();
    let n = allocations(|| {
        let c = root.with_cancel();
        let sub = c.with_cancel();
        {
            let mut fut = pin!(sub.cancelled());
            let mut cx = TaskContext::from_waker(Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            c.cancel(Reason::None);
            assert!(fut.as_mut().poll(&mut cx).is_ready());
        }
        drop(sub);
    });
    assert_eq!(n, 0);
}

#[test]
fn built_pool_roots() {
    let pool = Pool::builder().capacity(64).build().unwrap();
    let bg = pool.background();
    let n = allocations(|| drop(bg.with_cancel()));
    assert_eq!(n, 0);
}

#[test]
fn deadline_armed_create_drop() {
    // A pool turned by this thread every 1,024 cycles: the count covers arming, the driver's
    // drain of the ring and its advance, all in steady state.
    let pool = Pool::builder()
        .capacity(4096)
        .driver(DriverMode::Manual)
        .build()
        .unwrap();
    let bg = pool.background();
    let mut i = 0u32;
    let n = allocations(|| {
        drop(bg.with_timeout(Duration::from_secs(30)));
        i += 1;
        if i % 1024 == 0 {
            pool.turn();
        }
    });
    assert_eq!(n, 0);
    assert!(pool.timer_stats().armed > CYCLES as u64);
}

#[test]
fn deadline_not_armed_create_drop() {
    // A later deadline than the parent's: no timer, only the inherited deadline.
    let root = Context::background().with_timeout(Duration::from_secs(10));
    let armed = Pool::global().timer_stats().armed;
    let n = allocations(|| drop(root.with_timeout(Duration::from_secs(30))));
    assert_eq!(n, 0);
    let _ = armed; // other tests arm on the global pool concurrently: no exact count here
    assert!(root.deadline().is_some());
}

#[test]
fn request_roots_with_default_timeout() {
    static REQ: Op = Op::new("request");
    let pool = Pool::builder()
        .capacity(4096)
        .driver(DriverMode::Manual)
        .build()
        .unwrap();
    let mut i = 0u32;
    let n = allocations(|| {
        let req = pool
            .request()
            .op(&REQ)
            .request_id(RequestId(7))
            .with_cancel();
        std::hint::black_box(req.is_cancelled());
        drop(req);
        i += 1;
        if i % 1024 == 0 {
            pool.turn();
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn expired_deadline_read() {
    // The lazy expiry path (read after the deadline, before any turn) allocates nothing.
    let clock = ManualClock::new();
    // The manual clock runs 100 s here: keep the driver's periodic upkeep (leak scans and
    // metrics publication, which allocate their reports) out of the count.
    let mut config = ctxpool::Config::default();
    config.leak.enabled = false;
    config.metrics.publish_interval = Duration::from_secs(3600);
    config.pool_capacity = 4096;
    let pool = Pool::builder()
        .config(&config)
        .manual_clock(&clock)
        .build()
        .unwrap();
    let bg = pool.background();
    // Turned every cycle, so the driver's wheel slots are all warm after the warm-up (each
    // slot's vector is allocated on its first use, then kept).
    let n = allocations(|| {
        let c = bg.with_timeout(Duration::from_millis(1));
        clock.advance(Duration::from_millis(1));
        assert!(c.is_cancelled());
        drop(c);
        pool.turn();
    });
    assert_eq!(n, 0);
}

#[test]
fn one_million_armed_timers_memory() {
    let clock = ManualClock::new();
    let pool = Pool::builder()
        .capacity(1 << 20)
        .manual_clock(&clock)
        .max_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let bg = pool.background();
    const N: usize = 1_000_000;
    let mut guards = Vec::with_capacity(N);
    for i in 0..N {
        // Spread over ten minutes, so the wheel uses every level it needs.
        guards.push(bg.with_timeout(Duration::from_millis(1 + (i as u64 * 7919) % 600_000)));
        if i % 2048 == 0 {
            pool.turn();
        }
    }
    pool.turn();
    let t = pool.timer_stats();
    let p = pool.stats();
    assert_eq!(t.armed, N as u64);
    assert_eq!(t.pending, N);
    let per_timer = t.wheel_bytes as f64 / N as f64;
    println!(
        "1,000,000 armed timers: wheel {:.1} MiB ({per_timer:.1} B/timer), nodes {:.1} MiB \
         (128 B/context, deadline included), rings 64 KiB per thread",
        t.wheel_bytes as f64 / (1 << 20) as f64,
        p.reserved_bytes as f64 / (1 << 20) as f64,
    );
    // 24-byte entries plus vector slack.
    assert!(per_timer <= 64.0, "{per_timer} B per timer");
    // Everything fires once, then the wheel is empty.
    clock.advance(Duration::from_secs(601));
    assert_eq!(pool.turn(), N);
    assert_eq!(pool.timer_stats().pending, 0);
    drop(guards);
    pool.testing_quiesce();
    assert_eq!(pool.stats().in_use, 0);
}

#[test]
fn node_size_is_at_most_two_cache_lines() {
    println!("node size: {} bytes", ctxpool::NODE_SIZE);
    const { assert!(ctxpool::NODE_SIZE <= 128) };
    assert_eq!(std::mem::size_of::<Context>(), 16);
}

#[test]
fn traceparent_parse_and_format() {
    use ctxpool::propagation::{format_traceparent, parse_traceparent, TRACEPARENT_LEN};
    let mut buf = [0u8; TRACEPARENT_LEN];
    let n = allocations(|| {
        let tc = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let tc = std::hint::black_box(tc).unwrap();
        assert_eq!(tc, trace());
        assert_eq!(format_traceparent(&tc, &mut buf).len(), TRACEPARENT_LEN);
        assert!(
            parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_err()
        );
    });
    assert_eq!(n, 0);
}

#[test]
fn request_ids_parse_and_generate() {
    use ctxpool::propagation::{new_span_id, new_trace_id, XRequestId};
    let n = allocations(|| {
        let id = XRequestId::parse(std::hint::black_box(b"req-7f3a/eu-west-1")).unwrap();
        assert_eq!(id.as_str().len(), 18);
        std::hint::black_box(id.id());
        let fresh = XRequestId::generate();
        assert_eq!(
            fresh.id().0,
            u64::from_str_radix(fresh.as_str(), 16).unwrap()
        );
        assert!(XRequestId::parse(b"has space").is_err());
        assert_ne!(new_trace_id(), 0);
        assert_ne!(new_span_id(), 0);
    });
    assert_eq!(n, 0);
}

#[test]
fn grpc_timeout_and_user_id() {
    use ctxpool::propagation::{
        format_grpc_timeout, parse_grpc_timeout, parse_user_id, GRPC_TIMEOUT_MAX_LEN,
    };
    let mut buf = [0u8; GRPC_TIMEOUT_MAX_LEN];
    let n = allocations(|| {
        let d = parse_grpc_timeout(std::hint::black_box(b"250m")).unwrap();
        assert_eq!(format_grpc_timeout(d, &mut buf), "250000u");
        assert_eq!(parse_user_id(b"42"), Ok(UserId(42)));
    });
    assert_eq!(n, 0);
}

/// A pool for the http tests: turned by the test's thread every 1,024 cycles, as in
/// `deadline_armed_create_drop` (with a driver thread, the wheel's growth would land on
/// whichever thread drains the ring). The upkeep the turns run (a metrics publish, a leak
/// scan: they allocate, off the request path) is pushed beyond the test's length, so the
/// count is the request path's alone. On a [`ctxpool::ManualClock`] that never moves: on the
/// real clock, a machine slow enough that 1,024 cycles outlast most of a request's 250 ms
/// budget sent its timers into the wheel (growing its vectors: allocations counted here), so
/// the count depended on the machine's speed.
fn turned_pool() -> Pool {
    let mut cfg = ctxpool::Config {
        pool_capacity: 4096,
        ..ctxpool::Config::default()
    };
    cfg.metrics.publish_interval = Duration::from_secs(3600);
    cfg.leak.threshold = Duration::from_secs(3600);
    cfg.leak.interval = Duration::from_secs(3600);
    Pool::builder()
        .config(&cfg)
        .manual_clock(&ctxpool::ManualClock::new())
        .build()
        .unwrap()
}

/// `Propagator::extract` of a request whose only propagation header is a valid
/// `traceparent` (the request id generated, the default deadline armed) allocates nothing,
/// nor does dropping the request context (http H2).
#[test]
fn http_extract_with_traceparent() {
    use ctxpool::http::{Propagator, TRACEPARENT};
    let pool = turned_pool();
    let propagator = Propagator::new(&pool);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        TRACEPARENT,
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    headers.insert("grpc-timeout", http::HeaderValue::from_static("250m"));
    headers.insert("x-request-id", http::HeaderValue::from_static("req-1"));
    // The first arc-swap read on a thread allocates that thread's debt-list node, once; the
    // upkeep job the turns run reads the configuration, so read it once before counting.
    pool.with_config(|_| ());
    let mut i = 0u32;
    let n = allocations(|| {
        let req = propagator.extract(&headers, None);
        let tc = req.context().trace().unwrap();
        assert_eq!(tc.trace_id, trace().trace_id);
        assert_eq!(req.meta().request_id().as_str(), "req-1");
        assert!(req.context().deadline().is_some());
        drop(req);
        i += 1;
        if i % 1024 == 0 {
            pool.turn();
        }
    });
    assert_eq!(n, 0);
    assert_eq!(propagator.stats().requests(), (1_000 + CYCLES) as u64);
}

/// The whole round of a proxying server: `extract` of a request with every propagation
/// header (`tracestate` and `baggage` on one line each, in normal form, held in a shared
/// buffer as hyper hands them over), `inject` into an outgoing map that is cleared between
/// calls (its values dropped, as after a send), and the drop: no allocation (http H2, H5,
/// V3). The injected values are checked, so the work is not skipped.
#[test]
fn http_extract_inject_full() {
    use ctxpool::http::{Propagator, BAGGAGE, TRACEPARENT, TRACESTATE};
    let pool = turned_pool();
    let propagator = Propagator::new(&pool);
    let shared = |s: &str| {
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from(s.as_bytes().to_vec())).unwrap()
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        TRACEPARENT,
        shared("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,tenant@vendor=a:b";
    let baggage = "userId=alice,serverNode=DF%2028,isProduction=false";
    headers.insert(TRACESTATE, shared(tracestate));
    headers.insert(BAGGAGE, shared(baggage));
    headers.insert("grpc-timeout", shared("2S"));
    headers.insert("x-request-id", shared("req-1"));
    pool.with_config(|_| ());
    let mut out = http::HeaderMap::new();
    let mut i = 0u32;
    let n = allocations(|| {
        let req = propagator.extract(&headers, None);
        out.clear();
        propagator
            .inject(&req.context(), req.meta(), &mut out, None)
            .unwrap();
        assert_eq!(out.len(), 5);
        assert_eq!(out[TRACESTATE], tracestate);
        assert_eq!(out[BAGGAGE], baggage);
        assert_eq!(
            &out[TRACEPARENT].as_bytes()[..36],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-"
        );
        assert_eq!(out["x-request-id"], "req-1");
        let budget =
            ctxpool::propagation::parse_grpc_timeout(out["grpc-timeout"].as_bytes()).unwrap();
        assert!(budget < Duration::from_secs(2));
        drop(req);
        i += 1;
        if i % 1024 == 0 {
            pool.turn();
        }
    });
    assert_eq!(n, 0);
    assert_eq!(propagator.stats().injected(), (1_000 + CYCLES) as u64);
    // Reading the baggage parses the kept line once (H5); the parse is what was sent.
    let req = propagator.extract(&headers, None);
    assert_eq!(req.meta().baggage().as_str(), baggage);
    assert_eq!(req.meta().tracestate().len(), 3);
}

/// The request's identity on its context (http identity N1, N2): a sub-operation holding only
/// a `Context` (a child of the request context) injects the request's headers, its original
/// `x-request-id` included, with `inject_context`; extract, the child, inject and the drops
/// allocate nothing in steady state (the shared metadata is recycled per thread).
#[test]
fn http_extract_inject_from_a_descendant() {
    use ctxpool::http::{Propagated, Propagator, TRACEPARENT, TRACESTATE};
    let pool = turned_pool();
    let propagator = Propagator::new(&pool);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        TRACEPARENT,
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    headers.insert(TRACESTATE, http::HeaderValue::from_static("rojo=1,congo=2"));
    headers.insert("grpc-timeout", http::HeaderValue::from_static("2S"));
    headers.insert("x-request-id", http::HeaderValue::from_static("req-7"));
    pool.with_config(|_| ());
    let mut out = http::HeaderMap::new();
    let mut i = 0u32;
    let n = allocations(|| {
        let req = propagator.extract(&headers, None);
        let sub = req.context().with_cancel();
        let ctx = sub.context();
        assert_eq!(Propagated::of(&ctx).unwrap().request_id().as_str(), "req-7");
        out.clear();
        propagator.inject_context(&ctx, &mut out, None).unwrap();
        assert_eq!(out["x-request-id"], "req-7");
        assert_eq!(out[TRACESTATE], "rojo=1,congo=2");
        drop(ctx);
        drop(sub);
        drop(req);
        i += 1;
        if i % 1024 == 0 {
            pool.turn();
        }
    });
    assert_eq!(n, 0);
}

/// `inject` of a request whose `tracestate` and `baggage` were not in normal form (so they
/// were parsed, and their text is cut from the per-thread chunk on every call), and after
/// `baggage_mut` added an entry: no allocation in steady state either (V3: `inject` makes
/// room for the parsed text too).
#[test]
fn http_inject_parsed_tracestate_and_baggage() {
    use ctxpool::http::{Propagator, BAGGAGE, TRACEPARENT, TRACESTATE};
    let pool = ctxpool::Pool::builder()
        .driver(DriverMode::Manual)
        .build()
        .unwrap();
    let propagator = Propagator::new(&pool);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        TRACEPARENT,
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    // Whitespace around members: valid, not in normal form.
    headers.insert(
        TRACESTATE,
        http::HeaderValue::from_static("rojo=00f067aa0ba902b7 , congo=t61rcWkgMzE"),
    );
    // Far beyond the test's length on a loaded machine: nothing turns this pool's clock, so
    // each deadline counts from the test's start (with 2S the last sizes could run past it).
    headers.insert("grpc-timeout", http::HeaderValue::from_static("100S"));
    pool.with_config(|_| ());
    // Sizes around where one call's values straddle the end of a chunk.
    // (Up to 220: the edited text stays within `LARGEST`, 256 bytes; longer values get a
    // buffer of their own, V2.)
    for (len, edit) in (100..220).step_by(7).flat_map(|n| [(n, false), (n, true)]) {
        let long = format!("k=v , big={}", "x".repeat(len));
        headers.insert(BAGGAGE, http::HeaderValue::from_str(&long).unwrap());
        let req = propagator.extract(&headers, None);
        let (guard, mut meta) = req.into_parts();
        if edit {
            meta.baggage_mut().insert("added", "by the server").unwrap();
        }
        let want_baggage = meta.baggage().as_str().to_owned();
        let ctx = guard.context();
        let mut out = http::HeaderMap::new();
        // A chunk holds a few calls: 2,000 go round it hundreds of times.
        let n = allocations_in(2_000, || {
            out.clear();
            propagator.inject(&ctx, &meta, &mut out, None).unwrap();
            assert_eq!(out[TRACESTATE], "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
            assert_eq!(out[BAGGAGE].as_bytes(), want_baggage.as_bytes());
        });
        assert_eq!(n, 0, "baggage of {len} bytes, edited: {edit}");
    }
}

/// Feature `opentelemetry`: `inject` under a current OpenTelemetry span (as
/// `tracing-opentelemetry` makes an entered span current) names that span in `traceparent`,
/// and looking it up allocates nothing (the current context is read in place; its
/// `tracestate` is not cloned). Attaching the context is the caller's, outside the count.
#[cfg(feature = "opentelemetry")]
#[test]
fn http_inject_names_the_current_otel_span() {
    use ctxpool::http::{Propagator, TRACEPARENT};
    use opentelemetry::trace::{TraceContextExt, TraceState};
    let pool = turned_pool();
    let propagator = Propagator::new(&pool);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        TRACEPARENT,
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    headers.insert("grpc-timeout", http::HeaderValue::from_static("100S"));
    pool.with_config(|_| ());
    let req = propagator.extract(&headers, None);
    let ours = TraceContext {
        span_id: 0x0123_4567_89ab_cdef,
        ..trace()
    };
    let state = TraceState::from_key_value([("rojo", "1"), ("congo", "2")]).unwrap();
    let cx =
        opentelemetry::Context::new().with_remote_span_context(ours.to_span_context(false, state));
    let _current = cx.attach();
    let mut out = http::HeaderMap::new();
    let n = allocations(|| {
        out.clear();
        propagator
            .inject(&req.context(), req.meta(), &mut out, None)
            .unwrap();
        assert_eq!(
            out[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0123456789abcdef-01"
        );
    });
    assert_eq!(n, 0);
}

/// `ContextLayer`'s own work per request (the request context from the headers, the
/// response future raced against it, the `x-request-id` answer, the body holding the
/// context) allocates once: the `RequestContext` boxed into the request's extensions (the
/// `http` crate boxes every extension). The request already carries an extension, as a
/// router's does, so the extension map itself exists; the same round without the layer is
/// subtracted.
#[test]
fn layer_round_allocates_only_the_extension() {
    use ctxpool::http::{ContextLayer, Propagator, TRACEPARENT};
    use tower::{Layer, Service};
    let pool = turned_pool();
    pool.with_config(|_| ());
    // A handler's response has headers of its own (so the layer's `x-request-id` finds the
    // map made, as it does behind a real router).
    let inner = tower::service_fn(|_req: http::Request<()>| {
        let mut resp = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        std::future::ready(Ok::<_, std::convert::Infallible>(resp))
    });
    let mut bare = inner;
    let mut svc = ContextLayer::new(Propagator::new(&pool)).layer(inner);
    let request = || {
        let mut req = http::Request::new(());
        req.headers_mut().insert(
            TRACEPARENT,
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        req.headers_mut()
            .insert("grpc-timeout", http::HeaderValue::from_static("100S"));
        req.extensions_mut().insert(7u8);
        req
    };
    let mut cx = TaskContext::from_waker(Waker::noop());
    let mut i = 0u32;
    let round = allocations_in(20_000, || {
        let fut = svc.call(request());
        let resp = match pin!(fut).poll(&mut cx) {
            std::task::Poll::Ready(r) => r.unwrap(),
            std::task::Poll::Pending => panic!("the inner service is ready at once"),
        };
        assert!(resp.headers().contains_key("x-request-id"));
        drop(resp);
        i += 1;
        if i % 1024 == 0 {
            pool.turn();
        }
    });
    let alone = allocations_in(20_000, || {
        let fut = bare.call(request());
        match pin!(fut).poll(&mut cx) {
            std::task::Poll::Ready(r) => drop(r.unwrap()),
            std::task::Poll::Pending => panic!("the inner service is ready at once"),
        }
    });
    assert_eq!(
        round - alone,
        20_000,
        "{round} with the layer, {alone} without"
    );
}
