//! What a server layer costs per request: an axum router with a trivial handler, called
//! in-process through tower's `oneshot` on a current-thread tokio runtime.
//!
//! Group `layer_overhead` (ids compared over time; do not rename):
//!
//! - `bare`: the router alone.
//! - `ctxpool`: the same behind `ContextLayer` (a pooled request context from the incoming
//!   `traceparent`, `tracestate`, `baggage` and `grpc-timeout`, held by the response body
//!   until it ends; the handler reads the request's context).
//! - `incumbent`: what a team would build from the usual crates: tower-http's `TimeoutLayer`
//!   (its deadline) around a layer that extracts the OpenTelemetry trace context and baggage
//!   (`TraceContextPropagator` + `BaggagePropagator`, `opentelemetry_sdk` 0.33) and makes a
//!   `CancellationToken` per request (a child of a server-wide token), both put in the
//!   request's extensions for the handler.
//!
//! Every request carries the same four headers. The target is `ctxpool − bare ≤
//! 0.5 × (incumbent − bare)`. After the group, allocations per request of each id are
//! printed (the whole round: the request, the layer, the handler, the response).
//!
//! Run with `cargo bench --all-features --bench layer`.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::Criterion;
use ctxpool::http::{ContextLayer, Propagator, RequestContext};
use ctxpool::Pool;
use http::{Request, Response};
use http_body_util::BodyExt;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service, ServiceExt};

#[path = "support/counting.rs"]
mod counting;

#[path = "../tests/support/otel_carrier.rs"]
#[allow(dead_code)] // the injector is not used here
mod otel_carrier;
use otel_carrier::HeaderExtractor;

fn request() -> Request<Body> {
    Request::get("/")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        .header("baggage", "userId=alice,serverNode=DF%2028")
        .header("grpc-timeout", "2S")
        .body(Body::empty())
        .expect("a valid request")
}

/// The incumbent's per-request layer: OpenTelemetry extraction and a cancellation token.
#[derive(Clone)]
struct IncumbentLayer {
    propagator: std::sync::Arc<TextMapCompositePropagator>,
    server: CancellationToken,
}

#[derive(Clone)]
struct IncumbentService<S> {
    inner: S,
    layer: IncumbentLayer,
}

impl<S> Layer<S> for IncumbentLayer {
    type Service = IncumbentService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        IncumbentService {
            inner,
            layer: self.clone(),
        }
    }
}

impl<S> Service<Request<Body>> for IncumbentService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let otel = self
            .layer
            .propagator
            .extract(&HeaderExtractor(req.headers()));
        let token = self.layer.server.child_token();
        req.extensions_mut().insert(otel);
        req.extensions_mut().insert(token.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let _cancel_on_drop = token.drop_guard();
            fut.await
        })
    }
}

/// One request through `svc`, the response body read to its end.
async fn once<S>(svc: S)
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Error: std::fmt::Debug,
{
    let resp = svc.oneshot(request()).await.expect("the router answers");
    let body = resp.into_body().collect().await;
    black_box(body.is_ok());
}

fn routers(pool: &Pool) -> (Router, Router, Router) {
    let bare = Router::new().route("/", get(|| async { "ok" }));
    let ctxpool = Router::new()
        .route(
            "/",
            get(|req: Request<Body>| async move {
                let rc = req.extensions().get::<RequestContext>().cloned();
                black_box(rc.map(|rc| rc.context().is_cancelled()));
                "ok"
            }),
        )
        .layer(ContextLayer::new(Propagator::new(pool)));
    let incumbent = Router::new()
        .route(
            "/",
            get(|req: Request<Body>| async move {
                let token = req.extensions().get::<CancellationToken>().cloned();
                black_box(token.map(|t| t.is_cancelled()));
                "ok"
            }),
        )
        .layer(IncumbentLayer {
            propagator: std::sync::Arc::new(TextMapCompositePropagator::new(vec![
                Box::new(TraceContextPropagator::new()),
                Box::new(BaggagePropagator::new()),
            ])),
            server: CancellationToken::new(),
        })
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ));
    (bare, ctxpool, incumbent)
}

fn layer_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let pool = Pool::builder().build().expect("the default configuration");
    let (bare, ctxpool, incumbent) = routers(&pool);
    let mut g = c.benchmark_group("layer_overhead");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (id, router) in [
        ("bare", &bare),
        ("ctxpool", &ctxpool),
        ("incumbent", &incumbent),
    ] {
        g.bench_function(id, |b| b.iter(|| rt.block_on(once(router.clone()))));
    }
    g.finish();

    println!("allocations per request (the whole round, after a warm-up):");
    for (id, router) in [
        ("bare", &bare),
        ("ctxpool", &ctxpool),
        ("incumbent", &incumbent),
    ] {
        for _ in 0..1_000 {
            rt.block_on(once(router.clone()));
        }
        let before = counting::thread_allocs();
        const N: u64 = 10_000;
        for _ in 0..N {
            rt.block_on(once(router.clone()));
        }
        let per = (counting::thread_allocs() - before) as f64 / N as f64;
        println!("  {id:<10} {per:.2}");
    }
}

// Written out instead of `criterion_group!`/`criterion_main!`, whose generated `pub fn` would
// trip the crate's `missing_docs = "deny"` lint.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    layer_overhead(&mut c);
    c.final_summary();
}
