//! OpenTelemetry span parentage over the example server's `/fanout` (feature
//! `opentelemetry`): the server's spans exported through `tracing-opentelemetry` into
//! `opentelemetry_sdk`'s in-memory exporter, the server called over loopback.
//!
//! - every exported span's parent id is the span id its caller sent in `traceparent` (the
//!   test's client for the first hop, the server's client layer for the others), with one
//!   exported span per request sent (a server span per request);
//! - every outgoing `traceparent` names an exported span, of the same trace;
//! - a request without `traceparent` gets a root span, whose trace the calls continue.
//!
//! One global subscriber for the binary; each test has a trace of its own and reads only
//! its spans. The waits are for the spans to end (after the responses), bounded generously,
//! not timed.

#[path = "../examples/server/app.rs"]
#[allow(dead_code)]
mod app;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use app::{App, FanoutReply};
use axum::body::Bytes;
use axum::http::Request;
use ctxpool::{Config, Pool};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

/// The exporter of the binary's one OpenTelemetry pipeline (installed on first use).
fn exporter() -> InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let tracer = provider.tracer("ctxpool-otel-fanout");
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(tracer));
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
            exporter
        })
        .clone()
}

async fn start() -> (Arc<App>, SocketAddr) {
    let pool = Pool::builder().config(&Config::default()).build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = App::new(pool, addr);
    let router = app::router(app.clone());
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (app, addr)
}

async fn get(addr: SocketAddr, path: &str, traceparent: Option<&str>) -> FanoutReply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// The exported spans of `trace`, once there are `n` (the server spans end after the
/// responses are written).
async fn spans_of(trace: TraceId, n: usize) -> Vec<SpanData> {
    let exporter = exporter();
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        if spans.len() >= n || Instant::now() > give_up {
            assert_eq!(spans.len(), n, "exported spans of {trace}: {spans:#?}");
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn span_id(hex: &str) -> SpanId {
    SpanId::from_hex(hex).unwrap()
}

/// Every span id sent in a `traceparent` by the server (the calls of `reply`, and of the
/// replies of its calls), with the `parent_span` the callee reported for it when the callee
/// was `/work`.
fn sent_spans(reply: &serde_json::Value, out: &mut Vec<(SpanId, Option<SpanId>)>) {
    // A `/work` reply has no calls.
    let Some(calls) = reply["calls"].as_array() else {
        return;
    };
    for call in calls {
        assert_eq!(call["status"], 200, "{call}");
        let sent = span_id(call["sent_span"].as_str().unwrap());
        let seen = call["reply"]["parent_span"].as_str().map(span_id);
        out.push((sent, seen));
        sent_spans(&call["reply"], out);
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_span_is_a_child_of_the_span_its_caller_sent() {
    exporter();
    let (_app, addr) = start().await;
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let reply = get(addr, "/fanout?n=3&depth=2", Some(&tp)).await;
    let reply = serde_json::to_value(&reply).unwrap();

    let mut sent = Vec::new();
    sent_spans(&reply, &mut sent);
    // 3 calls to /fanout, each making 1 call to /work.
    assert_eq!(sent.len(), 6, "{reply:#}");
    // What /work received is what was sent.
    for (sent, seen) in &sent {
        if let Some(seen) = seen {
            assert_eq!(seen, sent);
        }
    }
    let outgoing: Vec<SpanId> = sent.iter().map(|(s, _)| *s).collect();
    let mut callers = outgoing.clone();
    callers.push(span_id(CALLER_SPAN));

    // One server span per request: 1 + 3 × 2.
    let spans = spans_of(TraceId::from_hex(TRACE).unwrap(), callers.len()).await;
    let exported: Vec<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();

    // Every exported span's parent is a span id its caller sent: as many spans under each
    // id as requests were sent with it (the top server span names itself on its 3 calls).
    let mut parents = HashMap::new();
    for s in &spans {
        assert!(s.parent_span_is_remote, "{s:#?}");
        assert!(callers.contains(&s.parent_span_id), "{s:#?}");
        *parents.entry(s.parent_span_id).or_insert(0) += 1;
    }
    let mut requests = HashMap::new();
    for id in &callers {
        *requests.entry(*id).or_insert(0) += 1;
    }
    assert_eq!(parents, requests);
    assert_eq!(parents[&span_id(CALLER_SPAN)], 1);

    // Every outgoing traceparent names an exported span (never ctxpool's own span id).
    for id in &outgoing {
        assert!(exported.contains(id), "sent {id}, exported {exported:?}");
    }
    // ctxpool's span ids (in the replies, and in the context's log fields) are not sent.
    let own = span_id(reply["span_id"].as_str().unwrap());
    assert!(!outgoing.contains(&own));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_traceparent_gets_a_root_whose_trace_the_calls_continue() {
    exporter();
    let (_app, addr) = start().await;
    let reply = get(addr, "/fanout?n=2", None).await;
    let reply = serde_json::to_value(&reply).unwrap();
    let calls = reply["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    // The trace the calls carried: the exported one (the SDK's root chose its id).
    let trace = calls[0]["reply"]["trace_id"].as_str().unwrap();
    assert_eq!(calls[1]["reply"]["trace_id"].as_str().unwrap(), trace);
    let spans = spans_of(TraceId::from_hex(trace).unwrap(), 3).await;
    let roots: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == SpanId::INVALID)
        .collect();
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let root = roots[0].span_context.span_id();
    for call in calls {
        let sent = span_id(call["sent_span"].as_str().unwrap());
        assert_eq!(sent, root, "{call}");
        assert_eq!(
            call["reply"]["parent_span"].as_str().map(span_id),
            Some(root)
        );
    }
    let children = spans.iter().filter(|s| s.parent_span_id == root).count();
    assert_eq!(children, 2, "{spans:#?}");
}
