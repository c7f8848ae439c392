//! The OpenTelemetry bridge (feature `opentelemetry`, `ctxpool::otel`) without a server:
//! the conversions both ways, the server span's parent made from an extracted request, and
//! which span `inject` names (the current local OpenTelemetry span, else ctxpool's own).
//! Spans are made with `opentelemetry_sdk`'s tracer and in-memory exporter.

use ctxpool::http::{Propagated, Propagator, TRACEPARENT, TRACESTATE};
use ctxpool::propagation::{parse_traceparent, TraceState, TraceStateError};
use ctxpool::{Pool, TraceContext};
use http::header::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceId, TraceState as OtelTraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::Context as OtelContext;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

const TRACE_ID: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
const CALLER: u64 = 0x00f0_67aa_0ba9_02b7;

fn pool() -> Pool {
    Pool::builder().build().unwrap()
}

fn incoming(flags: &str, tracestate: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let tp = format!("00-{TRACE_ID:032x}-{CALLER:016x}-{flags}");
    h.insert(TRACEPARENT, HeaderValue::from_str(&tp).unwrap());
    if let Some(ts) = tracestate {
        h.insert(TRACESTATE, HeaderValue::from_str(ts).unwrap());
    }
    h
}

fn sent(headers: &HeaderMap) -> TraceContext {
    parse_traceparent(headers[TRACEPARENT].as_bytes()).unwrap()
}

fn sdk() -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (provider, exporter)
}

#[test]
fn trace_context_round_trips_through_span_context() {
    for (trace_id, span_id, flags) in [
        (1u128, 1u64, 0u8),
        (TRACE_ID, CALLER, 1),
        (u128::MAX, u64::MAX, 3),
        (TRACE_ID, 2, 2),
    ] {
        let tc = TraceContext {
            trace_id,
            span_id,
            flags,
        };
        for remote in [false, true] {
            let sc = tc.to_span_context(remote, OtelTraceState::NONE);
            assert!(sc.is_valid());
            assert_eq!(sc.is_remote(), remote);
            assert_eq!(sc.trace_id(), TraceId::from(trace_id));
            assert_eq!(sc.span_id(), SpanId::from(span_id));
            assert_eq!(sc.is_sampled(), flags & 1 == 1);
            assert_eq!(TraceContext::from_span_context(&sc), Some(tc));
        }
    }
    assert_eq!(
        TraceContext::from_span_context(&SpanContext::empty_context()),
        None
    );
}

#[test]
fn trace_state_converts_both_ways_in_order() {
    let ours =
        TraceState::parse([&b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,tenant@vendor=a:b c"[..]])
            .unwrap();
    let theirs = ours.to_otel().unwrap();
    assert_eq!(theirs.header(), ours.as_str());
    assert_eq!(theirs.get("tenant@vendor"), Some("a:b c"));
    assert_eq!(TraceState::from_otel(&theirs).unwrap(), ours);

    let empty = TraceState::new().to_otel().unwrap();
    assert_eq!(empty, OtelTraceState::NONE);
    assert!(TraceState::from_otel(&empty).unwrap().is_empty());

    // Level 2 allows `@` anywhere; OpenTelemetry allows one, with a short system id.
    let level2 = TraceState::parse([&b"a@b@c=1"[..]]).unwrap();
    assert_eq!(level2.to_otel(), Err(TraceStateError::BadKey));
    // OpenTelemetry allows values this grammar does not (a control byte).
    let odd = OtelTraceState::from_key_value([("k", "a\u{7f}b")]).unwrap();
    assert_eq!(TraceState::from_otel(&odd), Err(TraceStateError::BadValue));
}

#[test]
fn the_server_span_parent_is_the_incoming_traceparent() {
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let req = propagator.extract(&incoming("01", Some("rojo=1,congo=2")), None);
    let parent = req.otel_parent();
    let caller = parent.span().span_context().clone();
    assert!(caller.is_remote());
    assert_eq!(
        TraceContext::from_span_context(&caller),
        Some(TraceContext {
            trace_id: TRACE_ID,
            span_id: CALLER,
            flags: 1
        })
    );
    assert_eq!(caller.trace_state().header(), "rojo=1,congo=2");

    // From a sub-task's context alone.
    let sub = req.context().with_cancel();
    let from_sub = ctxpool::otel::parent(&sub.context());
    assert_eq!(from_sub.span().span_context(), &caller);

    // A server span started under it is exported as the caller's child.
    let (provider, exporter) = sdk();
    let tracer = provider.tracer("otel_bridge");
    opentelemetry::trace::Span::end(&mut tracer.start_with_context("server", &parent));
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].parent_span_id, SpanId::from(CALLER));
    assert_eq!(spans[0].span_context.trace_id(), TraceId::from(TRACE_ID));

    // A new trace, or a context of no request: a root.
    let fresh = propagator.extract(&HeaderMap::new(), None);
    assert!(!fresh.otel_parent().has_active_span());
    assert!(!ctxpool::otel::parent(&ctxpool::Context::background()).has_active_span());
    assert!(Propagated::of(&fresh.context()).is_some());
}

#[test]
fn inject_names_the_current_span_and_otherwise_its_own() {
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let req = propagator.extract(&incoming("01", None), None);
    let ctx = req.context();
    let own = ctx.trace().unwrap();

    // No OpenTelemetry span: ctxpool's trace, a new span id per call.
    let mut a = HeaderMap::new();
    let mut b = HeaderMap::new();
    propagator.inject(&ctx, req.meta(), &mut a, None).unwrap();
    propagator.inject(&ctx, req.meta(), &mut b, None).unwrap();
    assert_eq!(sent(&a).trace_id, TRACE_ID);
    assert_ne!(sent(&a).span_id, sent(&b).span_id);
    assert_ne!(sent(&a).span_id, CALLER);

    // The caller's (remote) span attached: not a span of ours, so still ctxpool's own.
    {
        let _remote = req.otel_parent().attach();
        let mut h = HeaderMap::new();
        propagator.inject(&ctx, req.meta(), &mut h, None).unwrap();
        assert_ne!(sent(&h).span_id, CALLER);
        assert_eq!(ctxpool::otel::current_span(), None);
    }

    // A server span current: every call names it (inject and inject_context alike).
    let (provider, exporter) = sdk();
    let tracer = provider.tracer("otel_bridge");
    let span = tracer.start_with_context("server", &req.otel_parent());
    let cx = OtelContext::current_with_span(span);
    let server = cx.span().span_context().clone();
    {
        let _current = cx.clone().attach();
        let mut h = HeaderMap::new();
        propagator.inject(&ctx, req.meta(), &mut h, None).unwrap();
        assert_eq!(
            sent(&h),
            TraceContext {
                trace_id: TRACE_ID,
                span_id: u64::from_be_bytes(server.span_id().to_bytes()),
                flags: 1,
            }
        );
        let sub = ctx.with_cancel();
        let mut h2 = HeaderMap::new();
        propagator
            .inject_context(&sub.context(), &mut h2, None)
            .unwrap();
        assert_eq!(h2[TRACEPARENT], h[TRACEPARENT]);
    }
    cx.span().end();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].span_context.span_id(), server.span_id());
    assert_eq!(spans[0].parent_span_id, SpanId::from(CALLER));

    // Detached again: ctxpool's own, with its trace and flags.
    let mut h = HeaderMap::new();
    propagator.inject(&ctx, req.meta(), &mut h, None).unwrap();
    assert_eq!(sent(&h).flags, own.flags);
    assert_ne!(
        sent(&h).span_id,
        u64::from_be_bytes(server.span_id().to_bytes())
    );
}

#[test]
fn the_sent_sampled_flag_is_the_current_spans() {
    let pool = pool();
    let propagator = Propagator::new(&pool);
    // The caller did not sample; a span of ours that records anyway is what is sent.
    let req = propagator.extract(&incoming("00", None), None);
    let ours = TraceContext {
        trace_id: TRACE_ID,
        span_id: 0x77,
        flags: 1,
    };
    let cx = OtelContext::new()
        .with_remote_span_context(ours.to_span_context(false, OtelTraceState::NONE));
    let _current = cx.attach();
    let mut h = HeaderMap::new();
    propagator
        .inject(&req.context(), req.meta(), &mut h, None)
        .unwrap();
    assert_eq!(sent(&h), ours);
}
