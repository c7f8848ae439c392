//! Loopback tests of the tonic integration (`ctxpool::grpc`) on the example gRPC service
//! (`examples/grpc`): the deadline shrinks per hop, `DEADLINE_EXCEEDED` when the deadline
//! passes (server side and client side), a client hang-up cancels the server-side work, the
//! trace continues, a server stream is cut at its deadline, `ctxpool::grpc::serve` shuts down
//! gracefully (a stream in flight ends with the drain's status, then `serve` returns).
//!
//! No assertion here depends on how fast the machine is: deadlines that must not fire are
//! generous (30 s), those that must are spent or tiny, and the tests assert causes, codes
//! and orderings, never elapsed times. Waits for a server-side effect poll until it shows
//! (bounded by `PATIENCE`, far above any run's needs).
#![cfg(feature = "tonic")]

#[path = "../examples/grpc/app.rs"]
#[allow(dead_code)]
mod app;

use std::sync::Arc;
use std::time::Duration;

use app::{pb, App, SentSpan};
use ctxpool::grpc::RequestExt;
use ctxpool::http::Propagator;
use ctxpool::{ContextError, Pool};
use http::uri::PathAndQuery;
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;

/// The bound on waiting for a server-side effect (a failure, not a measurement).
const PATIENCE: Duration = Duration::from_secs(60);
/// A deadline that must not fire.
const GENEROUS: Duration = Duration::from_secs(30);

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

struct Server {
    app: Arc<App>,
    /// Completes the server's `shutdown` future when sent (or dropped).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// `ctxpool::grpc::serve`'s task.
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = Pool::builder().build().unwrap();
    let app = App::new(pool, addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(ctxpool::grpc::serve(
        listener,
        app::service(&app),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        app,
        stop: Some(stop),
        served,
    }
}

/// A client with a propagator of its own (its own pool: another service), under the client
/// layer.
fn layered(s: &Server) -> (Propagator, tonic::client::Grpc<app::DemoChannel>) {
    let pool = Pool::builder().build().unwrap();
    let propagator = Propagator::new(&pool);
    let grpc = tonic::client::Grpc::new(app::channel(&propagator, s.app.addr));
    (propagator, grpc)
}

type RawChannel = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

/// A client without ctxpool and without tonic's channel (which would enforce `grpc-timeout`
/// itself): only the server's deadline can fire.
fn raw(s: &Server) -> tonic::client::Grpc<RawChannel> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{}", s.app.addr).parse().unwrap();
    tonic::client::Grpc::with_origin(client, origin)
}

async fn call_work<T>(
    grpc: &mut tonic::client::Grpc<T>,
    req: Request<pb::WorkRequest>,
) -> Result<pb::Hop, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    grpc.ready()
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let path = PathAndQuery::from_static(app::WORK_PATH);
    grpc.unary(req, path, ProstCodec::default())
        .await
        .map(tonic::Response::into_inner)
}

async fn call_fanout<T>(
    grpc: &mut tonic::client::Grpc<T>,
    req: Request<pb::FanoutRequest>,
) -> Result<pb::FanoutReply, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    grpc.ready()
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let path = PathAndQuery::from_static(app::FANOUT_PATH);
    grpc.unary(req, path, ProstCodec::default())
        .await
        .map(tonic::Response::into_inner)
}

/// Every message of a `Ticks` stream, and the status it ended with (`Ok` at its end).
async fn call_ticks<T>(
    grpc: &mut tonic::client::Grpc<T>,
    req: Request<pb::TicksRequest>,
    mut on_first: impl FnMut(),
) -> (Vec<u32>, Status)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    call_ticks_each(grpc, req, |got| {
        if got == 1 {
            on_first();
        }
    })
    .await
}

/// [`call_ticks`], calling `on_tick` with the number of messages received after each.
async fn call_ticks_each<T>(
    grpc: &mut tonic::client::Grpc<T>,
    req: Request<pb::TicksRequest>,
    mut on_tick: impl FnMut(usize),
) -> (Vec<u32>, Status)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Err(e) = grpc.ready().await {
        return (vec![], Status::from_error(e.into()));
    }
    let path = PathAndQuery::from_static(app::TICKS_PATH);
    let mut stream = match grpc
        .server_streaming::<_, pb::Tick, _>(req, path, ProstCodec::default())
        .await
    {
        Ok(s) => s.into_inner(),
        Err(status) => return (vec![], status),
    };
    let mut got = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(t)) => {
                got.push(t.n);
                on_tick(got.len());
            }
            Ok(None) => return (got, Status::ok("")),
            Err(status) => return (got, status),
        }
    }
}

/// Polls `f` until it gives `Some` (bounded by `PATIENCE`).
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The context of a request the client is serving, which came with `x-request-id: id` and
/// a generous deadline: the client layer sends that id on.
fn caller(propagator: &Propagator, id: &str) -> ctxpool::http::Incoming {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-request-id", id.parse().unwrap());
    headers.insert("grpc-timeout", "30S".parse().unwrap());
    propagator.extract(&headers, None)
}

/// A request with `x-request-id: id` in its metadata (for the raw client: the client layer
/// writes the calling context's id instead).
fn with_request_id<T>(mut req: Request<T>, id: &'static str) -> Request<T> {
    req.metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    req
}

/// Every request context of `op` ended; how many were cancelled by their deadline.
async fn deadline_cancels(app: &App, op: &str) -> u64 {
    let deadline = ctxpool::metrics::REASONS
        .iter()
        .position(|r| *r == "deadline")
        .unwrap();
    eventually(&format!("every {op} context ended"), || {
        let m = app.pool.metrics();
        let (_, c) = m.ops.iter().find(|(name, _)| *name == op)?;
        (c.created > 0 && c.active() == 0).then_some(c.cancelled[deadline])
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_shrinks_per_hop() {
    let s = start().await;
    let (propagator, mut grpc) = layered(&s);
    let margin_ms = s
        .app
        .pool
        .config()
        .propagation
        .outbound_deadline_margin
        .as_secs_f64()
        * 1e3;
    let root = propagator.pool().request().with_timeout(GENEROUS);
    let req = Request::new(pb::FanoutRequest {
        n: 1,
        depth: 2,
        ms: 0,
    })
    .with_context(&root.context());
    let mut reply = call_fanout(&mut grpc, req).await.unwrap();
    // (incoming grpc-timeout, remaining at the start) of each hop, the caller first.
    let mut hops = Vec::new();
    loop {
        let hop = reply.hop.clone().unwrap();
        hops.push((hop.incoming_timeout_ms.unwrap(), hop.remaining_ms.unwrap()));
        let call = reply.calls[0].clone();
        assert_eq!(call.code, 0, "{}", call.message);
        match (call.fanout, call.work) {
            (Some(down), None) => reply = *down,
            (None, Some(work)) => {
                hops.push((
                    work.incoming_timeout_ms.unwrap(),
                    work.remaining_ms.unwrap(),
                ));
                break;
            }
            other => panic!("a call with no reply: {other:?}"),
        }
    }
    assert_eq!(hops.len(), 4, "three fanout hops and the work: {hops:?}");
    // What the first hop was sent: at most the client's budget less the margin (a
    // deadline rounds up to the next 1 ms tick, never early: up to 1 ms more than asked).
    assert!(hops[0].0 <= GENEROUS.as_secs_f64() * 1e3 - margin_ms + 1.0);
    for w in hops.windows(2) {
        let ((_, caller_remaining), (incoming, _)) = (w[0], w[1]);
        // What a hop was sent is at most what its caller had left, less the margin
        // (`grpc-timeout` is rounded down): the deadline shrinks hop by hop.
        assert!(
            incoming <= caller_remaining - margin_ms + 1e-9,
            "the deadline did not shrink by the margin: {hops:?}"
        );
        assert!(w[1].0 < w[0].0, "{hops:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded_from_the_server() {
    let s = start().await;
    let mut grpc = raw(&s);
    // Only the server's deadline can fire (the raw client enforces none): an hour of work
    // under a 20 ms grpc-timeout.
    let mut req = with_request_id(Request::new(pb::WorkRequest { ms: 3_600_000 }), "dl-1");
    req.set_timeout(Duration::from_millis(20));
    let status = call_work(&mut grpc, req).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The request's context ended by its deadline, on the server.
    assert_eq!(deadline_cancels(&s.app, "grpc_work").await, 1);
    // And the work, if it had started, saw the deadline as its cause.
    if s.app.started.lock().unwrap().iter().any(|r| r == "dl-1") {
        let seen = eventually("the work observed its cancel", || {
            s.app.observed_for("dl-1").pop()
        })
        .await;
        assert_eq!(
            seen.cause.error(),
            ContextError::DeadlineExceeded,
            "{seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded_from_the_client_layer() {
    let s = start().await;
    let (propagator, mut grpc) = layered(&s);
    let root = propagator.pool().request().with_timeout(GENEROUS);

    // A spent budget fails fast: DEADLINE_EXCEEDED, and the server never sees the call.
    let spent = root.context().with_timeout(Duration::ZERO);
    let req = Request::new(pb::WorkRequest { ms: 0 }).with_context(&spent.context());
    let status = call_work(&mut grpc, req).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(propagator.stats().failed_fast(), 1);
    assert_eq!(s.app.propagator.stats().requests(), 0);

    // A cancelled caller fails fast with CANCELLED.
    let cancelled = root.context().with_cancel();
    let ctx = cancelled.context();
    drop(cancelled);
    let req = Request::new(pb::WorkRequest { ms: 0 }).with_context(&ctx);
    let status = call_work(&mut grpc, req).await.unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(s.app.propagator.stats().requests(), 0);

    // A tiny budget: whichever side's deadline fires first, the call is DEADLINE_EXCEEDED
    // (tonic's channel enforces the grpc-timeout too; the layer reads its "Timeout expired"
    // as the deadline it is).
    let tiny = root.context().with_timeout(Duration::from_millis(30));
    let req = Request::new(pb::WorkRequest { ms: 3_600_000 }).with_context(&tiny.context());
    let status = call_work(&mut grpc, req).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hang_up_cancels_the_server_work() {
    let s = start().await;
    let (propagator, grpc) = layered(&s);
    let root = caller(&propagator, "hangup-1");
    let ctx = root.context();
    let call = tokio::spawn(async move {
        let mut grpc = grpc;
        let req = Request::new(pb::WorkRequest { ms: 3_600_000 }).with_context(&ctx);
        call_work(&mut grpc, req).await
    });
    eventually("the work started", || {
        s.app
            .started
            .lock()
            .unwrap()
            .iter()
            .any(|r| r == "hangup-1")
            .then_some(())
    })
    .await;
    // The client goes away: its call future is dropped, the stream reset.
    call.abort();
    let _ = call.await;
    let seen = eventually("the work observed the hang-up", || {
        s.app.observed_for("hangup-1").pop()
    })
    .await;
    assert_eq!(seen.op, "grpc_work_part");
    assert!(
        format!("{:?}", seen.cause).contains("client disconnected"),
        "{seen:?}"
    );
    assert_eq!(seen.cause.error(), ContextError::Canceled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancel_drops_the_call_and_cancels_the_server_work() {
    let s = start().await;
    let (propagator, grpc) = layered(&s);
    let root = caller(&propagator, "cancel-1");
    let call_ctx = root.context().with_cancel();
    let ctx = call_ctx.context();
    let call = tokio::spawn(async move {
        let mut grpc = grpc;
        let req = Request::new(pb::WorkRequest { ms: 3_600_000 }).with_context(&ctx);
        call_work(&mut grpc, req).await
    });
    eventually("the work started", || {
        s.app
            .started
            .lock()
            .unwrap()
            .iter()
            .any(|r| r == "cancel-1")
            .then_some(())
    })
    .await;
    // The caller's context is cancelled: the client layer drops the call (CANCELLED) ...
    drop(call_ctx);
    let status = call.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    // ... which the server sees as a hang-up.
    let seen = eventually("the work observed the hang-up", || {
        s.app.observed_for("cancel-1").pop()
    })
    .await;
    assert!(
        format!("{:?}", seen.cause).contains("client disconnected"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_continues_through_fanout() {
    let s = start().await;
    let (propagator, mut grpc) = layered(&s);
    // The client is itself serving a request that came with a trace, baggage and an id.
    let mut incoming = http::HeaderMap::new();
    incoming.insert(
        "traceparent",
        format!("00-{TRACE}-{SPAN}-01").parse().unwrap(),
    );
    incoming.insert("baggage", "tier=gold".parse().unwrap());
    incoming.insert("x-request-id", "trace-1".parse().unwrap());
    incoming.insert("grpc-timeout", "30S".parse().unwrap());
    let req_ctx = propagator.extract(&incoming, None);
    let sent = SentSpan::default();
    let mut req = Request::new(pb::FanoutRequest {
        n: 2,
        depth: 0,
        ms: 0,
    })
    .with_context(&req_ctx.context());
    req.extensions_mut().insert(sent.clone());
    let reply = call_fanout(&mut grpc, req).await.unwrap();

    let sent = sent
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("a traceparent was sent");
    let hop = reply.hop.unwrap();
    assert_eq!(hop.trace_id, TRACE, "the trace continues");
    assert_eq!(hop.parent_span, sent, "the caller's span is the parent");
    assert_ne!(hop.span_id, sent);
    assert_eq!(hop.request_id, "trace-1");
    assert_eq!(hop.baggage, "tier=gold");
    assert_eq!(reply.calls.len(), 2);
    let mut spans = Vec::new();
    for c in &reply.calls {
        assert_eq!(c.code, 0, "{}", c.message);
        let w = c.work.clone().unwrap();
        assert_eq!(w.trace_id, TRACE, "the trace continues a second hop");
        assert_eq!(
            w.parent_span, c.sent_span,
            "the fanout's call is the parent"
        );
        assert_ne!(c.sent_span, hop.span_id);
        assert_eq!(w.request_id, "trace-1", "the request id is passed on");
        assert_eq!(w.baggage, "tier=gold", "the baggage is passed on");
        spans.push(c.sent_span.clone());
    }
    spans.sort();
    spans.dedup();
    assert_eq!(spans.len(), 2, "a new span id per outgoing call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_is_cut_at_its_deadline() {
    let s = start().await;
    let mut grpc = raw(&s);
    // Endless ticks under a short grpc-timeout: only the server's deadline ends the stream.
    let mut req = with_request_id(
        Request::new(pb::TicksRequest {
            count: u32::MAX,
            ms: 5,
        }),
        "ticks-1",
    );
    req.set_timeout(Duration::from_millis(200));
    let (got, status) = call_ticks(&mut grpc, req, || {}).await;
    // Cut mid-stream (trailers) or, on a slow run, before its head (trailers-only): either
    // way the status, not a reset stream.
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{status:?} after {got:?}"
    );
    assert!(
        got.iter().copied().eq(0..got.len() as u32),
        "in order: {got:?}"
    );
    assert_eq!(deadline_cancels(&s.app, "grpc_ticks").await, 1);
    if !got.is_empty() {
        // The producer ran: it saw the deadline.
        let seen = eventually("the producer observed its cancel", || {
            s.app.observed_for("ticks-1").pop()
        })
        .await;
        assert_eq!(seen.op, "grpc_ticks_producer");
        assert_eq!(
            seen.cause.error(),
            ContextError::DeadlineExceeded,
            "{seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_cut_mid_stream_ends_with_the_status() {
    let s = start().await;
    let mut grpc = raw(&s);
    let mut req = Request::new(pb::TicksRequest {
        count: u32::MAX,
        ms: 5,
    });
    req.set_timeout(GENEROUS);
    // After the first message (the head is sent, the body streams), the server shuts down
    // with no grace: the stream ends with UNAVAILABLE in its trailers (layer L5), not with
    // a reset.
    let app = s.app.clone();
    let (got, status) = call_ticks(&mut grpc, req, move || {
        let app = app.clone();
        tokio::spawn(async move { app.drain.shutdown(Duration::ZERO).await });
    })
    .await;
    assert!(!got.is_empty());
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "server shutting down");
}

/// `serve`'s task ends (bounded by `PATIENCE`: a failure, not a measurement).
async fn served(s: Server) -> std::io::Result<()> {
    tokio::time::timeout(PATIENCE, s.served)
        .await
        .expect("serve returned after its shutdown")
        .expect("serve did not panic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_cuts_a_stream_at_the_end_of_the_grace() {
    let mut s = start().await;
    let mut grpc = raw(&s);
    let mut req = Request::new(pb::TicksRequest {
        count: u32::MAX,
        ms: 5,
    });
    req.set_timeout(GENEROUS);
    // After the first message, `serve`'s shutdown fires: it stops accepting and tells the
    // connection to finish its streams (GOAWAY), which go on. After three more, the drain
    // starts: the endless stream outlives any grace, so the layer ends it with UNAVAILABLE
    // at the end of the grace; then the connection closes and `serve` returns.
    let mut stop = s.stop.take();
    let app = s.app.clone();
    let mut served_early = None;
    let mut drained = None;
    let (got, status) = call_ticks_each(&mut grpc, req, |n| {
        if n == 1 {
            let _ = stop.take().unwrap().send(());
        }
        if n == 4 {
            // The stream is still open, so its connection is, so `serve` waits.
            served_early = Some(s.served.is_finished());
            let app = app.clone();
            drained = Some(tokio::spawn(async move {
                app.drain.shutdown(Duration::from_millis(20)).await
            }));
        }
    })
    .await;
    assert!(
        got.len() >= 4,
        "the stream went on after the shutdown: {got:?}"
    );
    assert!(
        got.iter().copied().eq(0..got.len() as u32),
        "in order: {got:?}"
    );
    assert_eq!(served_early, Some(false), "serve waited for the stream");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "server shutting down");
    let report = drained.unwrap().await.unwrap();
    assert_eq!((report.in_flight_at_start, report.cancelled), (1, 1));
    served(s).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_stream_finish_within_the_grace() {
    let mut s = start().await;
    let mut grpc = raw(&s);
    let mut req = Request::new(pb::TicksRequest { count: 5, ms: 50 });
    req.set_timeout(GENEROUS);
    // After the first message, `serve`'s shutdown and the drain (a grace far longer than
    // the stream) start together: the stream ends whole, with OK, and nothing is
    // cancelled; then the connection closes and `serve` returns.
    let mut stop = s.stop.take();
    let app = s.app.clone();
    let mut drained = None;
    let (got, status) = call_ticks_each(&mut grpc, req, |n| {
        if n == 1 {
            let _ = stop.take().unwrap().send(());
            let app = app.clone();
            drained = Some(tokio::spawn(
                async move { app.drain.shutdown(GENEROUS).await },
            ));
        }
    })
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?} after {got:?}");
    assert_eq!(got, [0, 1, 2, 3, 4]);
    let report = drained.unwrap().await.unwrap();
    // In flight at the drain's start unless the whole stream was sent before it (a client
    // slower than 200 ms at reading its first message): either way, nothing cancelled.
    assert!(report.in_flight_at_start <= 1, "{report:?}");
    assert_eq!(report.cancelled, 0, "{report:?}");
    served(s).await.unwrap();
}
