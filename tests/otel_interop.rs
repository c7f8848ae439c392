//! Interoperability with OpenTelemetry's W3C propagators (`opentelemetry_sdk` 0.33
//! `TraceContextPropagator` and `BaggagePropagator`), in both directions:
//!
//! - ours → theirs: a request extracted by [`Propagator::extract`] and written onto an
//!   outgoing call by [`Propagator::inject`] is read by OpenTelemetry as the same trace (the
//!   span id we sent as the remote parent, the same flags and `tracestate` members in order)
//!   and the same baggage (every key, every decoded value, the properties).
//! - theirs → ours: a remote span context and baggage injected by OpenTelemetry are read by
//!   [`Propagator::extract`] as the same trace, parent span, `tracestate` and baggage.
//!
//! Baggage values are chosen to need percent-encoding (spaces, `%`, `,`, `;`, `=`, non-ASCII
//! UTF-8). Known OpenTelemetry 0.33 behaviours at odds with the W3C specifications are pinned at
//! the end (`otel_*` tests), so that a change on either side shows up here.

use ctxpool::http::{Incoming, Propagator, BAGGAGE, TRACEPARENT, TRACESTATE};
use ctxpool::Pool;
use http::header::{HeaderMap, HeaderValue};
use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState as OtelTraceState,
};
use opentelemetry::Context as OtelContext;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

#[path = "support/otel_carrier.rs"]
mod otel_carrier;
use otel_carrier::{HeaderExtractor, HeaderInjector};

/// OpenTelemetry's view of `headers`: its extracted context (trace and baggage).
fn otel_extract(headers: &HeaderMap) -> OtelContext {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    BaggagePropagator::new().extract_with_context(&cx, &HeaderExtractor(headers))
}

/// `cx` written by OpenTelemetry's two propagators onto a fresh header map.
fn otel_inject(cx: &OtelContext) -> HeaderMap {
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(&mut headers));
    BaggagePropagator::new().inject_context(cx, &mut HeaderInjector(&mut headers));
    headers
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

const TRACE_ID: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
const PARENT_ID: u64 = 0x00f0_67aa_0ba9_02b7;
const TRACEPARENT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACEPARENT_UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

/// `tracestate` members, left to right (one with a multi-tenant key, one with spaces inside
/// its value, which the grammar allows).
const TRACESTATE_MEMBERS: [(&str, &str); 4] = [
    ("rojo", "00f067aa0ba902b7"),
    ("congo", "t61rcWkgMzE"),
    ("tenant@vendor", "a:b/c d"),
    ("xyz", "1"),
];

/// Baggage entries whose values need percent-encoding, decoded, and the same encoded as a
/// client would send them (upper-case `%XX`, as the spec's examples).
const BAGGAGE_ENTRIES: [(&str, &str, &str); 7] = [
    ("userId", "alice", "alice"),
    ("serverNode", "DF 28", "DF%2028"),
    ("percent", "100% sure", "100%25%20sure"),
    ("list", "a,b", "a%2Cb"),
    ("semi", "x;y", "x%3By"),
    ("eq", "k=v", "k%3Dv"),
    ("name", "Amélie 東京", "Am%C3%A9lie%20%E6%9D%B1%E4%BA%AC"),
];

/// A member with properties (opaque to the spec, passed on as sent).
const PROPS_KEY: &str = "withProps";
const PROPS_VALUE: &str = "v 1";
const PROPS_RAW: &str = "withProps=v%201;ttl=30;flag";
const PROPS: &str = "ttl=30;flag";

fn incoming_headers(traceparent: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap());
    let ts: Vec<String> = TRACESTATE_MEMBERS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    // Two lines, with optional whitespace: combined as one list.
    h.append(
        TRACESTATE,
        HeaderValue::from_str(&ts[..2].join(" , ")).unwrap(),
    );
    h.append(
        TRACESTATE,
        HeaderValue::from_str(&ts[2..].join(",")).unwrap(),
    );
    let mut bag: Vec<String> = BAGGAGE_ENTRIES
        .iter()
        .map(|(k, _, raw)| format!("{k} = {raw}"))
        .collect();
    bag.push(PROPS_RAW.replace(';', " ; "));
    h.insert(BAGGAGE, HeaderValue::from_str(&bag.join(", ")).unwrap());
    h
}

fn pool() -> Pool {
    Pool::builder().build().unwrap()
}

/// The span id of a `traceparent` header we wrote.
fn sent_span_id(headers: &HeaderMap) -> u64 {
    let tp = headers[TRACEPARENT].to_str().unwrap();
    assert_eq!(tp.len(), 55, "{tp}");
    u64::from_str_radix(&tp[36..52], 16).unwrap()
}

fn otel_trace_id(id: u128) -> TraceId {
    TraceId::from(id)
}

fn as_u128(id: TraceId) -> u128 {
    u128::from_be_bytes(id.to_bytes())
}

fn as_u64(id: SpanId) -> u64 {
    u64::from_be_bytes(id.to_bytes())
}

fn ours_tracestate(incoming: &Incoming) -> Vec<(String, String)> {
    incoming
        .meta()
        .tracestate()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Ours → theirs.

#[test]
fn ours_inject_theirs_extract_trace_context() {
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&incoming_headers(TRACEPARENT_SAMPLED), None);
    assert_eq!(incoming.meta().parent_span(), Some(PARENT_ID));
    assert_eq!(incoming.meta().tracestate().len(), TRACESTATE_MEMBERS.len());

    let mut out = HeaderMap::new();
    propagator
        .inject(&incoming.context(), incoming.meta(), &mut out, None)
        .unwrap();
    let span_id = sent_span_id(&out);
    assert_ne!(span_id, 0);
    assert_ne!(span_id, PARENT_ID, "an outgoing call gets a new span id");

    let cx = otel_extract(&out);
    let sc = cx.span().span_context().clone();
    assert!(sc.is_valid(), "{sc:?}");
    assert!(sc.is_remote());
    assert_eq!(as_u128(sc.trace_id()), TRACE_ID);
    assert_eq!(as_u64(sc.span_id()), span_id);
    assert_eq!(sc.trace_flags(), TraceFlags::SAMPLED);
    assert!(sc.is_sampled());

    // The same members in the same order (OpenTelemetry's `header()` keeps its order).
    let expected: Vec<String> = TRACESTATE_MEMBERS
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(sc.trace_state().header(), expected.join(","));
    for (k, v) in TRACESTATE_MEMBERS {
        assert_eq!(sc.trace_state().get(k), Some(v), "{k}");
    }
}

#[test]
fn ours_inject_theirs_extract_baggage_as_received() {
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&incoming_headers(TRACEPARENT_SAMPLED), None);
    let bag = incoming.meta().baggage();
    assert_eq!(bag.len(), BAGGAGE_ENTRIES.len() + 1, "{}", bag.as_str());
    for (k, v, _) in BAGGAGE_ENTRIES {
        assert_eq!(bag.get(k).as_deref(), Some(v), "ours: {k}");
    }

    let mut out = HeaderMap::new();
    propagator
        .inject(&incoming.context(), incoming.meta(), &mut out, None)
        .unwrap();
    let cx = otel_extract(&out);
    let theirs = cx.baggage();
    assert_eq!(
        theirs.len(),
        BAGGAGE_ENTRIES.len() + 1,
        "{:?}",
        out[BAGGAGE]
    );
    for (k, v, _) in BAGGAGE_ENTRIES {
        assert_eq!(theirs.get(k).map(|s| s.as_str()), Some(v), "theirs: {k}");
    }
    let (value, props) = theirs.get_with_metadata(PROPS_KEY).expect(PROPS_KEY);
    assert_eq!(value.as_str(), PROPS_VALUE);
    assert_eq!(props.as_str(), PROPS);
}

/// Values added by the service (`Baggage::insert`, our encoder) read back the same in
/// OpenTelemetry. That needs `=` sent as `%3D` (allowed: a value is "a URL encoded UTF-8
/// string"), since OpenTelemetry 0.33 cuts a value at a raw `=` (pinned below).
#[test]
fn ours_inserted_baggage_theirs_extract() {
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&HeaderMap::new(), None);
    let mut meta = incoming.meta().clone();
    for (k, v, _) in BAGGAGE_ENTRIES {
        meta.baggage_mut().insert(k, v).unwrap();
    }
    let mut out = HeaderMap::new();
    propagator
        .inject(&incoming.context(), &meta, &mut out, None)
        .unwrap();
    let cx = otel_extract(&out);
    let theirs = cx.baggage();
    for (k, v, _) in BAGGAGE_ENTRIES {
        assert_eq!(
            theirs.get(k).map(|s| s.as_str()),
            Some(v),
            "theirs: {k} from {:?}",
            out[BAGGAGE]
        );
    }
    assert_eq!(theirs.len(), BAGGAGE_ENTRIES.len());
}

// ---------------------------------------------------------------------------------------------
// Theirs → ours.

fn otel_remote_context(flags: TraceFlags) -> OtelContext {
    let ts = OtelTraceState::from_key_value(TRACESTATE_MEMBERS).unwrap();
    let sc = SpanContext::new(
        otel_trace_id(TRACE_ID),
        SpanId::from(PARENT_ID),
        flags,
        true,
        ts,
    );
    let mut entries: Vec<KeyValueMetadata> = BAGGAGE_ENTRIES
        .iter()
        // `%` is left out: OpenTelemetry 0.33 sends it unencoded (see the pin below).
        .filter(|(_, v, _)| !v.contains('%'))
        .map(|&(k, v, _)| KeyValueMetadata::new(k, v, ""))
        .collect();
    entries.push(KeyValueMetadata::new(PROPS_KEY, PROPS_VALUE, PROPS));
    OtelContext::new()
        .with_remote_span_context(sc)
        .with_baggage(entries)
}

#[test]
fn theirs_inject_ours_extract() {
    let headers = otel_inject(&otel_remote_context(TraceFlags::SAMPLED));
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&headers, None);

    let trace = incoming.context().trace().expect("a trace");
    assert_eq!(trace.trace_id, TRACE_ID);
    assert_eq!(trace.flags, 0x01);
    assert_ne!(trace.span_id, PARENT_ID, "our request is a span of its own");
    assert_eq!(incoming.meta().parent_span(), Some(PARENT_ID));

    let expected: Vec<(String, String)> = TRACESTATE_MEMBERS
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(ours_tracestate(&incoming), expected);

    let bag = incoming.meta().baggage();
    let mut n = 0;
    for (k, v, _) in BAGGAGE_ENTRIES.iter().filter(|(_, v, _)| !v.contains('%')) {
        assert_eq!(
            bag.get(k).as_deref(),
            Some(*v),
            "{k} from {:?}",
            headers[BAGGAGE]
        );
        n += 1;
    }
    let member = bag.iter().find(|m| m.key == PROPS_KEY).expect(PROPS_KEY);
    assert_eq!(member.value, PROPS_VALUE);
    assert_eq!(member.properties, PROPS);
    assert_eq!(bag.len(), n + 1);
    assert_eq!(
        propagator
            .stats()
            .rejected_total(ctxpool::http::Header::Baggage),
        0
    );
}

/// OpenTelemetry → ctxpool → OpenTelemetry: the next hop sees what the first one sent.
#[test]
fn theirs_through_ours_to_theirs() {
    let first = otel_remote_context(TraceFlags::SAMPLED);
    let headers = otel_inject(&first);
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&headers, None);
    let mut out = HeaderMap::new();
    propagator
        .inject(&incoming.context(), incoming.meta(), &mut out, None)
        .unwrap();

    let last = otel_extract(&out);
    let (a, b) = (
        first.span().span_context().clone(),
        last.span().span_context().clone(),
    );
    assert_eq!(b.trace_id(), a.trace_id());
    assert_ne!(b.span_id(), a.span_id());
    assert_eq!(as_u64(b.span_id()), sent_span_id(&out));
    assert_eq!(b.trace_flags(), a.trace_flags());
    assert_eq!(b.trace_state().header(), a.trace_state().header());
    let (a, b) = (first.baggage(), last.baggage());
    assert_eq!(b.len(), a.len());
    for (k, (v, meta)) in a {
        let Some((v2, meta2)) = b.get_with_metadata(k.as_str()) else {
            panic!("{k} lost")
        };
        assert_eq!(v2, v, "{k}");
        assert_eq!(meta2, meta, "{k}");
    }
}

// ---------------------------------------------------------------------------------------------
// New and unsampled traces.

#[test]
fn new_trace_is_a_valid_sampled_remote_parent_for_otel() {
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&HeaderMap::new(), None);
    assert_eq!(incoming.meta().parent_span(), None);
    let ours = incoming.context().trace().expect("a new trace");
    assert_ne!(ours.trace_id, 0);

    let mut out = HeaderMap::new();
    propagator
        .inject(&incoming.context(), incoming.meta(), &mut out, None)
        .unwrap();
    assert!(!out.contains_key(TRACESTATE), "no empty tracestate is sent");
    assert!(!out.contains_key(BAGGAGE), "no empty baggage is sent");

    let cx = otel_extract(&out);
    let sc = cx.span().span_context().clone();
    assert!(sc.is_valid(), "{:?} -> {sc:?}", out[TRACEPARENT]);
    assert!(sc.is_remote());
    assert!(sc.is_sampled());
    assert_eq!(as_u128(sc.trace_id()), ours.trace_id);
    assert_eq!(as_u64(sc.span_id()), sent_span_id(&out));
    assert_eq!(sc.trace_state().header(), "");
    assert!(cx.baggage().is_empty());
}

#[test]
fn unsampled_stays_unsampled_from_a_w3c_caller() {
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&incoming_headers(TRACEPARENT_UNSAMPLED), None);
    assert_eq!(incoming.context().trace().unwrap().flags & 0x01, 0);

    let mut out = HeaderMap::new();
    propagator
        .inject(&incoming.context(), incoming.meta(), &mut out, None)
        .unwrap();
    assert!(out[TRACEPARENT].to_str().unwrap().ends_with("-00"));
    let sc = otel_extract(&out).span().span_context().clone();
    assert!(sc.is_valid());
    assert_eq!(as_u128(sc.trace_id()), TRACE_ID);
    assert_eq!(sc.trace_flags(), TraceFlags::NOT_SAMPLED);
    assert!(!sc.is_sampled());
}

#[test]
fn unsampled_stays_unsampled_from_otel() {
    let headers = otel_inject(&otel_remote_context(TraceFlags::NOT_SAMPLED));
    assert!(headers[TRACEPARENT].to_str().unwrap().ends_with("-00"));
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&headers, None);
    let trace = incoming.context().trace().unwrap();
    assert_eq!(trace.trace_id, TRACE_ID);
    assert_eq!(trace.flags, 0x00);

    let mut out = HeaderMap::new();
    propagator
        .inject(&incoming.context(), incoming.meta(), &mut out, None)
        .unwrap();
    let sc = otel_extract(&out).span().span_context().clone();
    assert!(sc.is_valid());
    assert!(!sc.is_sampled());
    assert_eq!(as_u128(sc.trace_id()), TRACE_ID);
}

// ---------------------------------------------------------------------------------------------
// Pinned OpenTelemetry 0.33 deviations from W3C Baggage and Trace Context. If one of these
// starts failing, one side changed: fold the case into the tests above.

/// OpenTelemetry sends `%` unencoded (its encode set is controls, space, `"`, `,`, `;`, `=`),
/// although a value is "a URL encoded UTF-8 string" (W3C Baggage, "value"), so `%` must be
/// `%25`. `100% sure` goes out as `100%%20sure`: not a valid percent-encoding, so we drop that
/// member (counted as `invalid_member`) and keep the rest, as "Mutating baggage" allows.
#[test]
fn otel_sends_percent_unencoded_and_we_drop_that_member() {
    let cx = OtelContext::new().with_baggage(vec![
        KeyValueMetadata::new("percent", "100% sure", ""),
        KeyValueMetadata::new("ok", "fine", ""),
    ]);
    let headers = otel_inject(&cx);
    let sent = headers[BAGGAGE].to_str().unwrap();
    assert!(sent.contains("percent=100%%20sure"), "{sent}");

    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&headers, None);
    let bag = incoming.meta().baggage();
    assert_eq!(bag.get("percent"), None);
    assert_eq!(bag.get("ok").as_deref(), Some("fine"));
    assert_eq!(
        propagator
            .stats()
            .rejected(ctxpool::http::Header::Baggage, "invalid_member"),
        1
    );
}

/// A peer may send `=` unencoded inside a value (it is a `baggage-octet`; "Parsers MUST NOT
/// assume that the equal sign is only used to separate key and value"). We pass it on as
/// received; OpenTelemetry 0.33 keeps only the text up to the second `=`.
#[test]
fn otel_truncates_a_value_at_a_raw_equals_sign() {
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, HeaderValue::from_static(TRACEPARENT_SAMPLED));
    headers.insert(BAGGAGE, HeaderValue::from_static("eq=k=v,ok=fine"));
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&headers, None);
    assert_eq!(incoming.meta().baggage().get("eq").as_deref(), Some("k=v"));

    let mut out = HeaderMap::new();
    propagator
        .inject(&incoming.context(), incoming.meta(), &mut out, None)
        .unwrap();
    let cx = otel_extract(&out);
    assert_eq!(cx.baggage().get("eq").map(|v| v.as_str()), Some("k"));
    assert_eq!(cx.baggage().get("ok").map(|v| v.as_str()), Some("fine"));
}

/// Trace Context Level 2 defines flag `0x02` (`random-trace-id`); we keep it and send it on
/// (`…-03` for a sampled trace, what every new trace of ours is), as Level 1 also asks
/// receivers to accept flags they do not know. OpenTelemetry 0.31's `TraceContextPropagator`
/// rejected any version-00 flags above `02` and restarted the trace; 0.33 accepts them and
/// keeps the sampled bit.
#[test]
fn otel_reads_a_traceparent_with_sampled_and_random_flags() {
    let mut headers = HeaderMap::new();
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"),
    );
    let pool = pool();
    let propagator = Propagator::new(&pool);
    let incoming = propagator.extract(&headers, None);
    assert_eq!(incoming.context().trace().unwrap().flags, 0x03);

    let mut out = HeaderMap::new();
    propagator
        .inject(&incoming.context(), incoming.meta(), &mut out, None)
        .unwrap();
    let sent = out[TRACEPARENT].to_str().unwrap();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(sent.ends_with("-03"), "{sent}");
    let sc = otel_extract(&out).span().span_context().clone();
    assert!(sc.is_valid(), "{sc:?}");
    assert!(sc.is_sampled());
    assert_eq!(as_u128(sc.trace_id()), TRACE_ID);
}
