//! `tracing` spans from contexts (feature `tracing`): the fields a span records, and a
//! context travelling with its span into a spawned task. A small recording subscriber
//! stands in for `tracing-subscriber`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ctxpool::http::{Propagator, TRACEPARENT, X_REQUEST_ID, X_USER_ID};
use ctxpool::{Config, Context, Op, Pool, RequestId, UserId};
use http::{HeaderMap, HeaderValue};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Span fields by span id, and (span fields at the time) for each event, in order.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<BTreeMap<u64, BTreeMap<String, String>>>>,
    events: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    current: Arc<Mutex<Vec<u64>>>,
    next: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.to_string());
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.spans.lock().unwrap().insert(id, fields);
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        values.record(&mut Fields(spans.get_mut(&span.into_u64()).unwrap()));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {
        let current = self.current.lock().unwrap().last().copied();
        let fields = current
            .and_then(|id| self.spans.lock().unwrap().get(&id).cloned())
            .unwrap_or_default();
        self.events.lock().unwrap().push(fields);
    }
    fn enter(&self, span: &Id) {
        self.current.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, _: &Id) {
        self.current.lock().unwrap().pop();
    }
}

static CHECKOUT: Op = Op::new("checkout");

fn fields(rec: &Recorder, keys: &[&str]) -> Vec<(String, String)> {
    let events = rec.events.lock().unwrap();
    let last = events.last().expect("an event");
    keys.iter()
        .map(|k| (k.to_string(), last.get(*k).cloned().unwrap_or_default()))
        .collect()
}

/// A span from a request context records its trace id, span id, the original
/// `x-request-id` text, the user id and the operation; a descendant's span has the same.
#[test]
fn span_fields_from_an_extracted_request() {
    let rec = Recorder::default();
    let _default = tracing::subscriber::set_default(rec.clone());
    let mut cfg = Config::default();
    cfg.propagation.trusted_peers = vec!["10.0.0.0/8".parse().unwrap()];
    let pool = Pool::builder().config(&cfg).build().unwrap();
    let p = Propagator::builder(&pool).op(&CHECKOUT).build();
    let mut headers = HeaderMap::new();
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    headers.insert(X_REQUEST_ID, HeaderValue::from_static("order-4711"));
    headers.insert(X_USER_ID, HeaderValue::from_static("1001"));
    let req = p.extract(&headers, Some("10.1.2.3".parse().unwrap()));
    let sub = req.context().with_cancel();
    let span_id = format!("{:016x}", sub.context().trace().unwrap().span_id);
    {
        let _in = sub.context().span().entered();
        tracing::info!("inside");
    }
    assert_eq!(
        fields(
            &rec,
            &["trace_id", "span_id", "request_id", "user_id", "op"]
        ),
        [
            ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("span_id", span_id.as_str()),
            ("request_id", "order-4711"),
            ("user_id", "1001"),
            ("op", "checkout"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

/// Without a request, the context's own ids: the request id in hex; ids it lacks are left
/// empty.
#[test]
fn span_fields_from_a_plain_context() {
    let rec = Recorder::default();
    let _default = tracing::subscriber::set_default(rec.clone());
    let ctx = Context::background()
        .child()
        .request_id(RequestId(0xabc))
        .user_id(UserId(7))
        .with_cancel();
    ctx.span().in_scope(|| tracing::info!("inside"));
    assert_eq!(
        fields(&rec, &["request_id", "user_id", "trace_id", "op"]),
        [
            ("request_id", "0000000000000abc"),
            ("user_id", "7"),
            ("trace_id", ""),
            ("op", ""),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

/// `Traced::task`: one value moved into a spawned task; its future runs inside the span (an
/// event in it carries the request id) and has the context (cancelled with the request).
#[test]
fn traced_travels_into_a_spawned_task() {
    let rec = Recorder::default();
    let _default = tracing::subscriber::set_default(rec.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let req = Context::background()
        .child()
        .request_id(RequestId(0x42))
        .with_cancel();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = req.traced().task(|t| async move {
        rx.await.unwrap();
        tracing::info!("in the task");
        t.context().cancelled().await;
        t.context().is_cancelled()
    });
    let handle = rt.spawn(task);
    tx.send(()).unwrap();
    req.cancel(ctxpool::Reason::Message("done"));
    assert!(rt.block_on(handle).unwrap());
    assert_eq!(
        fields(&rec, &["request_id"]),
        [("request_id".to_string(), "0000000000000042".to_string())]
    );
}
