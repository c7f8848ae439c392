//! The example gRPC service of `examples/grpc` (shared with `tests/grpc.rs`).
//!
//! Service `ctxpool.example.Demo`, with hand-written prost messages and tonic's generic
//! server and client (no `.proto` file, no code generation, no `protoc`):
//!
//! - `Work(WorkRequest) -> Hop`: `ms` of work in a spawned task under a child of the
//!   request's context, which stops when the context is cancelled (deadline, client hang-up,
//!   shutdown) and records the cause it saw;
//! - `Fanout(FanoutRequest) -> FanoutReply`: `n` calls to this server's `Work` (or, with
//!   `depth` > 0, to `Fanout` one hop shorter) through the client layer: the trace continues
//!   and the deadline shrinks by `outbound_deadline_margin` per hop;
//! - `Ticks(TicksRequest) -> stream Tick`: `count` messages, one every `ms`, produced under a
//!   child of the request's context; the stream is cut at the deadline with
//!   `DEADLINE_EXCEEDED` in its trailers.
//!
//! Served by `ctxpool::grpc::serve` (hyper's HTTP/2 server; not tonic's `transport::Server`,
//! whose own `grpc-timeout` timer would race the context's deadline), behind
//! `ctxpool::http::ContextLayer` ([`service`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ctxpool::grpc::{status_for, GrpcClientLayer, GrpcClientService, RequestExt};
use ctxpool::http::{
    ContextLayer, ContextService, Drain, Propagator, RequestContext, HTTP_REQUEST,
};
use ctxpool::{Cause, Context, Op, Pool};
use http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower::util::MapRequest;
use tower::Layer;

/// The messages (what `protoc` would generate from the `.proto` in the comments).
pub mod pb {
    /// `message WorkRequest { uint64 ms = 1; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WorkRequest {
        /// Milliseconds of work.
        #[prost(uint64, tag = "1")]
        pub ms: u64,
    }

    /// What a call saw: its identity, its trace and its deadline.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Hop {
        /// `x-request-id`.
        #[prost(string, tag = "1")]
        pub request_id: String,
        /// The trace id (32 hex digits).
        #[prost(string, tag = "2")]
        pub trace_id: String,
        /// This call's span id (16 hex digits).
        #[prost(string, tag = "3")]
        pub span_id: String,
        /// The caller's span id (the incoming `traceparent`'s), empty for a new trace.
        #[prost(string, tag = "4")]
        pub parent_span: String,
        /// The incoming `grpc-timeout`, in milliseconds.
        #[prost(double, optional, tag = "5")]
        pub incoming_timeout_ms: Option<f64>,
        /// Time left when the method started, in milliseconds.
        #[prost(double, optional, tag = "6")]
        pub remaining_ms: Option<f64>,
        /// The incoming baggage.
        #[prost(string, tag = "7")]
        pub baggage: String,
    }

    /// `message FanoutRequest { uint32 n = 1; uint32 depth = 2; uint64 ms = 3; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FanoutRequest {
        /// Calls made.
        #[prost(uint32, tag = "1")]
        pub n: u32,
        /// Fanout hops below this one (0: the calls go to `Work`).
        #[prost(uint32, tag = "2")]
        pub depth: u32,
        /// `Work`'s milliseconds.
        #[prost(uint64, tag = "3")]
        pub ms: u64,
    }

    /// One outgoing call of `Fanout`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Call {
        /// The span id sent in the call's `traceparent`.
        #[prost(string, tag = "1")]
        pub sent_span: String,
        /// The call's gRPC status code (0: OK).
        #[prost(int32, tag = "2")]
        pub code: i32,
        /// Its status message.
        #[prost(string, tag = "3")]
        pub message: String,
        /// `Work`'s reply.
        #[prost(message, optional, tag = "4")]
        pub work: Option<Hop>,
        /// `Fanout`'s reply, one hop down.
        #[prost(message, optional, boxed, tag = "5")]
        pub fanout: Option<Box<FanoutReply>>,
    }

    /// What `Fanout` answers.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FanoutReply {
        /// The fanout's own call.
        #[prost(message, optional, tag = "1")]
        pub hop: Option<Hop>,
        /// Its calls, in order.
        #[prost(message, repeated, tag = "2")]
        pub calls: Vec<Call>,
    }

    /// `message TicksRequest { uint32 count = 1; uint64 ms = 2; }`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TicksRequest {
        /// Messages sent.
        #[prost(uint32, tag = "1")]
        pub count: u32,
        /// Milliseconds between them (the first is sent at once).
        #[prost(uint64, tag = "2")]
        pub ms: u64,
    }

    /// One message of `Ticks`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tick {
        /// Its number, from 0.
        #[prost(uint32, tag = "1")]
        pub n: u32,
    }
}

/// The service's name.
pub const SERVICE: &str = "ctxpool.example.Demo";
/// `/ctxpool.example.Demo/Work`.
pub const WORK_PATH: &str = "/ctxpool.example.Demo/Work";
/// `/ctxpool.example.Demo/Fanout`.
pub const FANOUT_PATH: &str = "/ctxpool.example.Demo/Fanout";
/// `/ctxpool.example.Demo/Ticks`.
pub const TICKS_PATH: &str = "/ctxpool.example.Demo/Ticks";

/// `Work`.
pub static WORK: Op = Op::new("grpc_work");
/// `Work`'s task.
pub static WORK_PART: Op = Op::new("grpc_work_part");
/// `Fanout`.
pub static FANOUT: Op = Op::new("grpc_fanout");
/// One outgoing call of `Fanout`.
pub static FANOUT_CALL: Op = Op::new("grpc_fanout_call");
/// `Ticks`.
pub static TICKS: Op = Op::new("grpc_ticks");
/// `Ticks`'s producer.
pub static TICKS_PRODUCER: Op = Op::new("grpc_ticks_producer");
/// The server's root context: every call is its child.
pub static SERVER: Op = Op::new("grpc_server");

/// How many observed cancellations the server keeps.
const OBSERVED_CAP: usize = 1024;

/// A cancellation a piece of work observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The call's `x-request-id`.
    pub request_id: String,
    /// The operation that observed it.
    pub op: String,
    /// The cause.
    pub cause: Cause,
}

/// The client of `Fanout`'s calls: tonic's channel under ctxpool's client layer, with a step
/// that notes the `traceparent` span id each call was sent with.
pub type DemoChannel = GrpcClientService<MapRequest<Channel, NoteSpan>>;
/// The step noting the sent span id.
pub type NoteSpan = fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>;

/// Where a call's sent span id is noted (a request extension).
#[derive(Clone, Default)]
pub struct SentSpan(pub Arc<Mutex<Option<String>>>);

fn note_span(req: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    if let Some(slot) = req.extensions().get::<SentSpan>() {
        let span = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(|tp| tp.split('-').nth(2))
            .map(str::to_owned);
        *slot.0.lock().unwrap() = span;
    }
    req
}

/// A client of `addr` (lazily connected) under the client layer of `propagator`.
pub fn channel(propagator: &Propagator, addr: SocketAddr) -> DemoChannel {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_lazy();
    GrpcClientLayer::new(propagator.clone()).layer(MapRequest::new(channel, note_span as NoteSpan))
}

/// The server's state, shared by every method.
pub struct App {
    /// The pool every context lives in.
    pub pool: Pool,
    /// The propagator of the layer and of outgoing calls.
    pub propagator: Propagator,
    /// The server's root and its calls in flight (graceful shutdown).
    pub drain: Drain,
    /// The address the server listens on (for `Fanout`'s calls to itself).
    pub addr: SocketAddr,
    /// Request ids of the `Work` calls whose task started.
    pub started: Mutex<Vec<String>>,
    /// Cancellations observed by work, newest last.
    pub observed: Mutex<VecDeque<Observed>>,
    client: DemoChannel,
}

impl App {
    /// State for a server on `addr` with `pool` (inside a tokio runtime).
    pub fn new(pool: Pool, addr: SocketAddr) -> Arc<App> {
        let root = pool.background().child().op(&SERVER).with_cancel();
        let drain = Drain::with_root(&pool, root);
        let propagator = Propagator::builder(&pool).parent(drain.context()).build();
        let client = channel(&propagator, addr);
        Arc::new(App {
            pool,
            propagator,
            drain,
            addr,
            started: Mutex::new(Vec::new()),
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
            cause,
        });
    }

    /// The causes observed for `request_id`, oldest first.
    pub fn observed_for(&self, request_id: &str) -> Vec<Observed> {
        let q = self.observed.lock().unwrap();
        q.iter()
            .filter(|o| o.request_id == request_id)
            .cloned()
            .collect()
    }
}

/// The server's layer: a context per call, labelled by method.
pub fn layer(app: &App) -> ContextLayer {
    ContextLayer::new(app.propagator.clone())
        .op_for(|_, uri| match uri.path() {
            WORK_PATH => &WORK,
            FANOUT_PATH => &FANOUT,
            TICKS_PATH => &TICKS,
            _ => &HTTP_REQUEST,
        })
        .peer_from(|ext| ext.get::<SocketAddr>().map(|a| a.ip()))
        .drain(&app.drain)
}

/// The `Demo` service behind the layer, for `ctxpool::grpc::serve`.
pub fn service(app: &Arc<App>) -> ContextService<tonic::service::Routes> {
    layer(app).layer(tonic::service::Routes::new(Demo(app.clone())))
}

/// The `Demo` service: routes each method to tonic's generic server.
#[derive(Clone)]
pub struct Demo(pub Arc<App>);

impl tonic::server::NamedService for Demo {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for Demo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let app = self.0.clone();
        match req.uri().path() {
            WORK_PATH => Box::pin(async move {
                let method = tower::service_fn(move |r| work(app.clone(), r));
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(method, req).await)
            }),
            FANOUT_PATH => Box::pin(async move {
                let method = tower::service_fn(move |r| fanout(app.clone(), r));
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(method, req).await)
            }),
            TICKS_PATH => Box::pin(async move {
                let method = tower::service_fn(move |r| ticks(app.clone(), r));
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(method, req).await)
            }),
            _ => Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// The layer's request context (there is always one behind the layer).
fn request_context<T>(req: &Request<T>) -> Result<RequestContext, Status> {
    req.request_context()
        .cloned()
        .ok_or_else(|| Status::internal("served without ctxpool's ContextLayer"))
}

fn hop(rc: &RequestContext) -> pb::Hop {
    let ctx = rc.context();
    let t = ctx.trace().expect("the layer sets a trace");
    pb::Hop {
        request_id: rc.meta().request_id().as_str().to_owned(),
        trace_id: format!("{:032x}", t.trace_id),
        span_id: format!("{:016x}", t.span_id),
        parent_span: rc
            .meta()
            .parent_span()
            .map_or_else(String::new, |s| format!("{s:016x}")),
        incoming_timeout_ms: rc.meta().incoming_timeout().map(|d| d.as_secs_f64() * 1e3),
        remaining_ms: ctx.remaining().map(|d| d.as_secs_f64() * 1e3),
        baggage: rc.meta().baggage().as_str().to_owned(),
    }
}

/// `Work`: the work runs in a spawned task under a child context, so that it outlives the
/// method's future (dropped when the client hangs up) long enough to see why it stopped.
async fn work(app: Arc<App>, req: Request<pb::WorkRequest>) -> Result<Response<pb::Hop>, Status> {
    let rc = request_context(&req)?;
    let hop = hop(&rc);
    let ms = Duration::from_millis(req.get_ref().ms.min(3_600_000));
    let part = rc.context().child().op(&WORK_PART).with_cancel();
    let request_id = hop.request_id.clone();
    let task = tokio::spawn(async move {
        app.started.lock().unwrap().push(request_id.clone());
        let done = tokio::select! {
            biased;
            _ = part.cancelled() => false,
            _ = tokio::time::sleep(ms) => true,
        };
        if !done {
            app.observe(&request_id, &part.context());
        }
        part.context().cause()
    });
    match task.await {
        // Done, or ended normally.
        Ok(None) => Ok(Response::new(hop)),
        // The work was cancelled: not done, so no OK (the layer answers for the request's
        // own cancel in any case).
        Ok(Some(cause)) => Err(status_for(cause)),
        Err(_) => Err(Status::internal("the work panicked")),
    }
}

/// `Fanout`: `n` calls to `Work` (or `Fanout`, one hop down) side by side, each under a child
/// of the request's context.
async fn fanout(
    app: Arc<App>,
    req: Request<pb::FanoutRequest>,
) -> Result<Response<pb::FanoutReply>, Status> {
    let rc = request_context(&req)?;
    let hop = hop(&rc);
    let pb::FanoutRequest { n, depth, ms } = req.into_inner();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n.clamp(1, 16) {
        let call = rc.context().child().op(&FANOUT_CALL).with_cancel();
        let mut client = tonic::client::Grpc::new(app.client.clone());
        calls.spawn(async move {
            let sent = SentSpan::default();
            let mut out = pb::Call::default();
            let ready = client.ready().await.map_err(Status::from_error);
            let result = match ready {
                Err(s) => Err(s),
                Ok(()) if depth > 0 => {
                    let msg = pb::FanoutRequest {
                        n: 1,
                        depth: depth - 1,
                        ms,
                    };
                    let mut r = Request::new(msg).with_context(&call.context());
                    r.extensions_mut().insert(sent.clone());
                    let path = PathAndQuery::from_static(FANOUT_PATH);
                    client
                        .unary::<_, pb::FanoutReply, _>(r, path, ProstCodec::default())
                        .await
                        .map(|reply| out.fanout = Some(Box::new(reply.into_inner())))
                }
                Ok(()) => {
                    let mut r = Request::new(pb::WorkRequest { ms }).with_context(&call.context());
                    r.extensions_mut().insert(sent.clone());
                    let path = PathAndQuery::from_static(WORK_PATH);
                    client
                        .unary::<_, pb::Hop, _>(r, path, ProstCodec::default())
                        .await
                        .map(|reply| out.work = Some(reply.into_inner()))
                }
            };
            if let Err(status) = result {
                out.code = status.code() as i32;
                out.message = status.message().to_owned();
            }
            out.sent_span = sent.0.lock().unwrap().clone().unwrap_or_default();
            drop(call);
            (i, out)
        });
    }
    let mut done = Vec::with_capacity(calls.len());
    while let Some(r) = calls.join_next().await {
        done.push(r.map_err(|_| Status::internal("a call panicked"))?);
    }
    done.sort_by_key(|(i, _)| *i);
    Ok(Response::new(pb::FanoutReply {
        hop: Some(hop),
        calls: done.into_iter().map(|(_, c)| c).collect(),
    }))
}

/// The stream of `Ticks`.
pub type TickStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Tick, Status>>;

/// `Ticks`: a producer task under a child of the request's context feeds the stream; the
/// layer holds the context until the stream ends and cuts it at the deadline (trailers with
/// `DEADLINE_EXCEEDED`), and the producer stops and records why.
async fn ticks(
    app: Arc<App>,
    req: Request<pb::TicksRequest>,
) -> Result<Response<TickStream>, Status> {
    let rc = request_context(&req)?;
    let producer = rc.context().child().op(&TICKS_PRODUCER).with_cancel();
    if let Some(cause) = producer.context().cause() {
        return Err(status_for(cause));
    }
    let request_id = rc.meta().request_id().as_str().to_owned();
    let pb::TicksRequest { count, ms } = req.into_inner();
    let ms = Duration::from_millis(ms.min(60_000));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for n in 0..count {
            let sent = tokio::select! {
                biased;
                _ = producer.cancelled() => false,
                sent = async {
                    if n > 0 {
                        tokio::time::sleep(ms).await;
                    }
                    tx.send(Ok(pb::Tick { n })).await.is_ok()
                } => sent,
            };
            if !sent {
                // The stream is gone or the context cancelled: the cause says which.
                producer.cancelled().await;
                app.observe(&request_id, &producer.context());
                return;
            }
        }
    });
    Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
        rx,
    )))
}
