//! The example server's router and state, apart from `main` so that `tests/server.rs` can
//! run the same router over loopback.
//!
//! Every request gets a context from [`ContextLayer`]: the incoming trace continues, the
//! incoming `grpc-timeout` within the route's budget (the configured default) is the deadline
//! (only trusted peers may ask for more), and the response carries `x-request-id`. Work that
//! was not done is never answered `200`: a cancelled request gets the layer's `504`/`503`,
//! and a handler whose sub-operation was cancelled (born cancelled with `PoolExhausted` when
//! the pool is at capacity) answers `answer_cancelled(cause)`. Work is done by spawned tasks holding child contexts, so that what
//! stops it is the context (deadline, client gone, shutdown), not a dropped future.
//!
//! With feature `opentelemetry`, `/work` and `/fanout` run in a server span whose
//! OpenTelemetry parent is the incoming `traceparent` (exported when a
//! `tracing-opentelemetry` layer is installed, as `tests/otel_fanout.rs` does), and
//! `/fanout`'s calls name that span in their `traceparent`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use ctxpool::config::ConfigFormat;
use ctxpool::http::{
    answer_cancelled, ClientLayer, ClientService, ContextLayer, Drain, Propagated, Propagator,
    RequestContext, HTTP_REQUEST,
};
use ctxpool::{Cause, Context, Op, Pool, Reason};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tower::util::MapRequest;
use tower::{Layer, ServiceExt};
use tracing::Instrument;

/// `GET /work`.
pub static WORK: Op = Op::new("work");
/// One sub-operation of `/work`.
pub static WORK_PART: Op = Op::new("work_part");
/// `GET /fanout`.
pub static FANOUT: Op = Op::new("fanout");
/// One outgoing call of `/fanout`.
pub static FANOUT_CALL: Op = Op::new("fanout_call");
/// `GET /stream`.
pub static STREAM: Op = Op::new("stream");
/// The producer of a `/stream` body.
pub static STREAM_PRODUCER: Op = Op::new("stream_producer");
/// The server's root context: every request is its child.
pub static SERVER: Op = Op::new("server");

/// How many observed cancellations `/debug/cancelled` keeps.
const OBSERVED_CAP: usize = 1024;

/// A cancellation a piece of work observed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Observed {
    /// The request's `x-request-id`.
    pub request_id: String,
    /// The operation that observed it.
    pub op: String,
    /// The cause, as `Debug` text (e.g. `Parent(Cancelled(Message("client disconnected")))`).
    pub cause: String,
}

/// The server's state, shared by every handler.
pub struct App {
    /// The pool every context lives in.
    pub pool: Pool,
    /// The propagator of the layer (and of outgoing calls).
    pub propagator: Propagator,
    /// The server's root and its requests in flight: `drain.shutdown(grace)` lets them
    /// finish for up to `grace`, then cancels the rest with `Origin::Shutdown` (they answer
    /// `503`), and so refuses later requests.
    pub drain: Drain,
    /// The address the server listens on (for `/fanout`'s calls to itself).
    pub addr: SocketAddr,
    /// Cancellations observed by work, newest last.
    pub observed: Mutex<VecDeque<Observed>>,
    client: FanoutClient,
}

/// The client of `/fanout`'s calls: hyper-util's, under ctxpool's client layer (the calling
/// context's headers and deadline on every call; a cancel drops the call), with a step
/// that notes the `traceparent` span id each call was sent with.
type FanoutClient = ClientService<MapRequest<Client<HttpConnector, Empty<Bytes>>, NoteSpan>>;
type NoteSpan = fn(Request<Empty<Bytes>>) -> Request<Empty<Bytes>>;

/// Where a call's sent span id is noted (a request extension).
#[derive(Clone, Default)]
struct SentSpan(Arc<Mutex<Option<String>>>);

fn note_span(req: Request<Empty<Bytes>>) -> Request<Empty<Bytes>> {
    if let Some(slot) = req.extensions().get::<SentSpan>() {
        *slot.0.lock().unwrap() = sent_span(req.headers());
    }
    req
}

impl App {
    /// State for a server on `addr` with `pool`.
    pub fn new(pool: Pool, addr: SocketAddr) -> Arc<App> {
        let root = pool.background().child().op(&SERVER).with_cancel();
        let drain = Drain::with_root(&pool, root);
        let propagator = Propagator::builder(&pool).parent(drain.context()).build();
        let hyper = Client::builder(TokioExecutor::new()).build_http();
        let client = ClientLayer::new(propagator.clone())
            .layer(MapRequest::new(hyper, note_span as NoteSpan));
        Arc::new(App {
            pool,
            propagator,
            drain,
            addr,
            observed: Mutex::new(VecDeque::new()),
            client,
        })
    }

    fn observe(&self, request_id: &str, ctx: &Context) {
        let Some(cause) = ctx.cause() else { return };
        if cause == Cause::OwnerDropped {
            return; // the normal end of a piece of work
        }
        let mut q = self.observed.lock().unwrap();
        if q.len() == OBSERVED_CAP {
            q.pop_front();
        }
        q.push_back(Observed {
            request_id: request_id.to_owned(),
            op: ctx.op().map_or("none", |o| o.name()).to_owned(),
            cause: format!("{cause:?}"),
        });
    }

    /// The Prometheus exposition: the pool's families, then the propagator's.
    pub fn metrics_text(&self) -> String {
        let mut out = self.pool.metrics().to_prometheus();
        self.propagator.write_prometheus(&mut out);
        out
    }
}

/// The router, with the context layer and every endpoint.
pub fn router(app: Arc<App>) -> Router {
    let layer = ContextLayer::new(app.propagator.clone())
        .op_for(|_, uri| match uri.path() {
            "/work" => &WORK,
            "/fanout" => &FANOUT,
            "/stream" => &STREAM,
            _ => &HTTP_REQUEST,
        })
        .peer_from(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
        .drain(&app.drain);
    Router::new()
        .route("/work", get(work))
        .route("/fanout", get(fanout))
        .route("/stream", get(stream))
        .route("/metrics", get(metrics))
        .route("/debug/leaks", get(leaks))
        .route("/debug/config", get(get_config).put(put_config))
        .route("/debug/cancelled", get(cancelled))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(layer)
        .with_state(app)
}

/// Query of `/stream`.
#[derive(Deserialize)]
pub struct StreamQuery {
    /// Lines sent.
    #[serde(default = "one")]
    pub lines: u32,
    /// Milliseconds before each line.
    #[serde(default)]
    pub ms: u64,
}

/// A response body fed by a channel: ends when the producer drops its sender.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// `GET /stream?lines=N&ms=M`: N lines, one every M ms, written by a task under a child of
/// the request's context after the response head is sent. The layer keeps the request's
/// context alive while the body streams, so the producer runs to the end, unless the client
/// goes away (`client disconnected`), the deadline passes (the body is cut) or the server
/// shuts down: it observes which.
async fn stream(
    State(app): State<Arc<App>>,
    Extension(rc): Extension<RequestContext>,
    Query(q): Query<StreamQuery>,
) -> Response {
    let producer = rc.context().child().op(&STREAM_PRODUCER).with_cancel();
    if let Some(cause) = producer.context().cause() {
        // Born cancelled (the pool at capacity) or the request already cancelled: no line
        // will be written, so no `200` either.
        return answer_cancelled(cause);
    }
    let request_id = rc.meta().request_id().as_str().to_owned();
    let lines = q.lines.clamp(1, 100_000);
    let ms = Duration::from_millis(q.ms.min(60_000));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..lines {
            let sent = tokio::select! {
                biased;
                _ = producer.cancelled() => false,
                sent = async {
                    tokio::time::sleep(ms).await;
                    tx.send(Bytes::from(format!("line {i}\n"))).await.is_ok()
                } => sent,
            };
            if !sent {
                // The body is gone or the context cancelled: the cancel says why (a dropped
                // body cancels right after dropping its receiver).
                producer.cancelled().await;
                app.observe(&request_id, &producer);
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/plain")
        .body(axum::body::Body::new(ChannelBody(rx)))
        .expect("a valid response")
}

/// Query of `/work`.
#[derive(Deserialize)]
pub struct WorkQuery {
    /// Simulated work per part, in milliseconds.
    #[serde(default)]
    pub ms: u64,
    /// Sub-operations run side by side.
    #[serde(default)]
    pub children: u32,
}

/// What `/work` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkReply {
    /// `x-request-id`.
    pub request_id: String,
    /// The trace id (32 hex digits).
    pub trace_id: String,
    /// This request's span id.
    pub span_id: String,
    /// The caller's span id, when the trace continued.
    pub parent_span: Option<String>,
    /// The incoming `grpc-timeout`, in milliseconds, if any.
    pub incoming_timeout_ms: Option<f64>,
    /// Time left when the handler started, in milliseconds.
    pub remaining_ms: Option<f64>,
    /// Parts that completed.
    pub parts_done: u32,
}

fn hex_trace(ctx: &Context) -> (String, String) {
    let t = ctx.trace().expect("the layer sets a trace");
    (
        format!("{:032x}", t.trace_id),
        format!("{:016x}", t.span_id),
    )
}

/// The request's server span: ctxpool's span fields ([`Context::span`]), and in
/// OpenTelemetry (when a `tracing-opentelemetry` layer is installed, as in
/// `tests/otel_fanout.rs`) a child of the caller's span, the incoming `traceparent`. The
/// handler and the tasks making its outgoing calls run inside it, so the client layer names
/// it as their parent.
fn server_span(rc: &RequestContext) -> tracing::Span {
    let span = rc.context().span();
    // Fails only without an OpenTelemetry layer (or with the span disabled): nothing to do.
    #[cfg(feature = "opentelemetry")]
    let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, rc.otel_parent());
    span
}

async fn work(
    State(app): State<Arc<App>>,
    Extension(rc): Extension<RequestContext>,
    Query(q): Query<WorkQuery>,
) -> Response {
    let span = server_span(&rc);
    work_in(app, rc, q).instrument(span).await
}

async fn work_in(app: Arc<App>, rc: RequestContext, q: WorkQuery) -> Response {
    let ctx = rc.context().clone();
    let (trace_id, span_id) = hex_trace(&ctx);
    let request_id = rc.meta().request_id().as_str().to_owned();
    let remaining_ms = ctx.remaining().map(|d| d.as_secs_f64() * 1e3);
    let parts = q.children.clamp(1, 64);
    let ms = Duration::from_millis(q.ms.min(60_000));
    // Each part is a spawned task with its own child context: it stops when the context
    // is cancelled, whoever dropped what. (Detached tasks, not a `JoinSet`: a dropped
    // `JoinSet` would abort them, and it is the context that must stop them.)
    let mut tasks = Vec::with_capacity(parts as usize);
    for _ in 0..parts {
        let part = ctx.child().op(&WORK_PART).with_cancel();
        let app = app.clone();
        let request_id = request_id.clone();
        tasks.push(tokio::spawn(async move {
            // A part born cancelled (`PoolExhausted` when the pool is at capacity) stops at
            // once, like one cancelled later: its cause says which.
            let done = tokio::select! {
                biased;
                _ = part.cancelled() => false,
                _ = tokio::time::sleep(ms) => true,
            };
            if done {
                return Ok(());
            }
            app.observe(&request_id, &part);
            Err(part
                .context()
                .cause()
                .unwrap_or(Cause::Cancelled(Reason::None)))
        }));
    }
    let mut parts_done = 0;
    let mut not_done = None;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => parts_done += 1,
            Ok(Err(cause)) => not_done = not_done.or(Some(cause)),
            Err(_) => not_done = not_done.or(Some(Cause::Cancelled(Reason::None))),
        }
    }
    if let Some(cause) = not_done {
        // Work not done is never a `200`: the status for the cause. (When the request's own
        // context is cancelled, the layer answers for its cause whatever this returns.)
        return answer_cancelled(cause);
    }
    Json(WorkReply {
        request_id,
        trace_id,
        span_id,
        parent_span: rc.meta().parent_span().map(|s| format!("{s:016x}")),
        incoming_timeout_ms: rc.meta().incoming_timeout().map(|d| d.as_secs_f64() * 1e3),
        remaining_ms,
        parts_done,
    })
    .into_response()
}

/// Query of `/fanout`.
#[derive(Deserialize)]
pub struct FanoutQuery {
    /// Calls made side by side.
    #[serde(default = "one")]
    pub n: u32,
    /// Hops: 1 calls `/work`, more calls `/fanout` with one hop less.
    #[serde(default = "one")]
    pub depth: u32,
    /// `ms` passed on to `/work`.
    #[serde(default)]
    pub ms: u64,
}

fn one() -> u32 {
    1
}

/// One outgoing call of `/fanout`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Call {
    /// Its HTTP status (0 when it was not sent: the budget was spent).
    pub status: u16,
    /// The span id sent in its `traceparent`.
    pub sent_span: Option<String>,
    /// Its JSON answer, when it answered with JSON.
    pub reply: Option<serde_json::Value>,
}

/// What `/fanout` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct FanoutReply {
    /// `x-request-id`.
    pub request_id: String,
    /// The trace id.
    pub trace_id: String,
    /// This request's span id.
    pub span_id: String,
    /// Time left when the handler started, in milliseconds.
    pub remaining_ms: Option<f64>,
    /// Each call.
    pub calls: Vec<Call>,
}

async fn fanout(
    State(app): State<Arc<App>>,
    Extension(rc): Extension<RequestContext>,
    Query(q): Query<FanoutQuery>,
) -> Response {
    let span = server_span(&rc);
    fanout_in(app, rc, q).instrument(span).await
}

async fn fanout_in(app: Arc<App>, rc: RequestContext, q: FanoutQuery) -> Response {
    let ctx = rc.context().clone();
    let (trace_id, span_id) = hex_trace(&ctx);
    let remaining_ms = ctx.remaining().map(|d| d.as_secs_f64() * 1e3);
    let n = q.n.clamp(1, 64);
    let path = if q.depth <= 1 {
        format!("/work?ms={}", q.ms)
    } else {
        format!("/fanout?n=1&depth={}&ms={}", q.depth.min(8) - 1, q.ms)
    };
    let mut tasks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let call = ctx.child().op(&FANOUT_CALL).with_cancel();
        let uri: axum::http::Uri = format!("http://{}{}", app.addr, path).parse().unwrap();
        let mut req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
        // The client layer reads the calling context from the extensions.
        req.extensions_mut().insert(call.context());
        let noted = SentSpan::default();
        req.extensions_mut().insert(noted.clone());
        let app = app.clone();
        tasks.push(tokio::spawn(
            async move {
                let sent_span = || noted.0.lock().unwrap().clone();
                let resp = match app.client.clone().oneshot(req).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        if e.context_error().is_some() {
                            // The request's id, from the call's context alone.
                            let ctx = call.context();
                            let id = Propagated::of(&ctx).map(|m| m.request_id());
                            app.observe(id.as_ref().map_or("", |i| i.as_str()), &ctx);
                        }
                        return Call {
                            status: 0,
                            sent_span: sent_span(),
                            reply: None,
                        };
                    }
                };
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                Call {
                    status,
                    sent_span: sent_span(),
                    reply: body.ok().and_then(|b| serde_json::from_slice(&b).ok()),
                }
            }
            // In the server span: the client layer names it in the call's `traceparent`.
            .in_current_span(),
        ));
    }
    let mut calls = Vec::with_capacity(n as usize);
    for task in tasks {
        if let Ok(c) = task.await {
            calls.push(c);
        }
    }
    Json(FanoutReply {
        request_id: rc.meta().request_id().as_str().to_owned(),
        trace_id,
        span_id,
        remaining_ms,
        calls,
    })
    .into_response()
}

fn sent_span(h: &HeaderMap) -> Option<String> {
    let tp = h.get("traceparent")?.to_str().ok()?;
    tp.split('-').nth(2).map(str::to_owned)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.metrics_text(),
    )
        .into_response()
}

async fn leaks(State(app): State<Arc<App>>) -> Response {
    let report = app.pool.scan_leaks();
    ([("content-type", "application/json")], report.to_json()).into_response()
}

async fn cancelled(State(app): State<Arc<App>>) -> Json<Vec<Observed>> {
    Json(app.observed.lock().unwrap().iter().cloned().collect())
}

async fn get_config(State(app): State<Arc<App>>) -> Response {
    (
        [("content-type", "application/json")],
        app.pool.config().to_json_string(),
    )
        .into_response()
}

/// `PUT /debug/config`: a whole configuration, JSON (or TOML with `content-type:
/// application/toml`). Validated first: `400` with every problem, the old configuration in
/// force; `200` with the new one otherwise.
///
/// Every rejected PUT (not UTF-8, not parsing, not valid) is counted in
/// `ctxpool_config_updates_total{result="rejected"}`: `Pool::update_config_from` parses and
/// validates in one step.
async fn put_config(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let toml = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/toml"));
    let format = if toml {
        ConfigFormat::Toml
    } else {
        ConfigFormat::Json
    };
    match app.pool.update_config_from(&body, format) {
        Ok(()) => get_config(State(app)).await,
        Err(e) => {
            let problems: Vec<(String, String)> = e
                .problems
                .iter()
                .map(|p| (p.key.clone(), p.message.clone()))
                .collect();
            problems_response(&problems)
        }
    }
}

fn problems_response(problems: &[(String, String)]) -> Response {
    let list: Vec<serde_json::Value> = problems
        .iter()
        .map(|(k, m)| serde_json::json!({ "key": k, "message": m }))
        .collect();
    let mut resp = Json(serde_json::json!({ "problems": list })).into_response();
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp
}
