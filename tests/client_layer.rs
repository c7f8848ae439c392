//! `ClientLayer` over loopback, with hyper-util's client: the calling context's headers and
//! remaining budget reach the server, a spent budget fails fast without a connection, a
//! cancel drops the call (the server sees its client go away), and the error says which.
//! Every wait is on an event (a channel, a cancellation), never on a duration.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Request};
use axum::routing::get;
use axum::{Extension, Router};
use ctxpool::http::{
    ClientError, ClientLayer, ClientService, ContextLayer, Propagator, RequestContext,
    CLIENT_DISCONNECTED, TRACEPARENT,
};
use ctxpool::{Cause, Config, ContextError, Pool, Reason};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};

type Hyper = Client<HttpConnector, Empty<Bytes>>;

/// What the server saw: each request's headers, and the cause its context ended with when
/// the handler was told to wait for it.
struct Seen {
    requests: AtomicUsize,
    headers: mpsc::UnboundedSender<HeaderMap>,
    causes: mpsc::UnboundedSender<Cause>,
}

async fn echo(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> &'static str {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let _ = seen.headers.send(headers);
    "ok"
}

/// Answers only when its request context is cancelled (it never is, but by the client
/// going away), reporting the cause.
async fn hang(
    State(seen): State<Arc<Seen>>,
    Extension(rc): Extension<RequestContext>,
    headers: HeaderMap,
) -> &'static str {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let _ = seen.headers.send(headers);
    let ctx = rc.context().clone();
    let causes = seen.causes.clone();
    // The handler's future is dropped on disconnect; a task outlives it to report.
    tokio::spawn(async move {
        ctx.cancelled().await;
        let _ = causes.send(ctx.cause().unwrap());
    });
    std::future::pending::<()>().await;
    "never"
}

struct Fixture {
    pool: Pool,
    propagator: Propagator,
    client: ClientService<Hyper>,
    addr: SocketAddr,
    seen: Arc<Seen>,
    headers: mpsc::UnboundedReceiver<HeaderMap>,
    causes: mpsc::UnboundedReceiver<Cause>,
}

async fn start() -> Fixture {
    let mut cfg = Config::default();
    cfg.propagation.outbound_deadline_margin = Duration::from_millis(50);
    let pool = Pool::builder().config(&cfg).build().unwrap();
    let propagator = Propagator::new(&pool);
    let (htx, headers) = mpsc::unbounded_channel();
    let (ctx_tx, causes) = mpsc::unbounded_channel();
    let seen = Arc::new(Seen {
        requests: AtomicUsize::new(0),
        headers: htx,
        causes: ctx_tx,
    });
    let router = Router::new()
        .route("/echo", get(echo))
        .route("/hang", get(hang))
        .with_state(seen.clone())
        .layer(ContextLayer::new(Propagator::new(&pool)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let hyper: Hyper = Client::builder(TokioExecutor::new()).build_http();
    Fixture {
        client: ClientLayer::new(propagator.clone()).layer(hyper),
        pool,
        propagator,
        addr,
        seen,
        headers,
        causes,
    }
}

impl Fixture {
    fn request(&self, path: &str) -> Request<Empty<Bytes>> {
        Request::get(format!("http://{}{}", self.addr, path))
            .body(Empty::new())
            .unwrap()
    }
}

/// The calling context's trace, request id and remaining budget less the margin reach the
/// server.
#[tokio::test]
async fn headers_and_the_budget_reach_the_server() {
    let mut f = start().await;
    let mut incoming = HeaderMap::new();
    incoming.insert(
        TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    incoming.insert("x-request-id", "client-layer-1".parse().unwrap());
    incoming.insert("grpc-timeout", "10S".parse().unwrap());
    let req = f.propagator.extract(&incoming, None);
    let call = req.context().with_cancel();
    let mut r = f.request("/echo");
    r.extensions_mut().insert(call.context());
    let left_before = call.context().remaining().unwrap();
    let resp = f.client.clone().oneshot(r).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = f.headers.recv().await.unwrap();
    assert_eq!(got["x-request-id"], "client-layer-1");
    assert!(got[TRACEPARENT]
        .to_str()
        .unwrap()
        .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    let budget = ctxpool::propagation::parse_grpc_timeout(got["grpc-timeout"].as_bytes()).unwrap();
    assert!(budget > Duration::ZERO);
    assert!(
        budget <= left_before - Duration::from_millis(50),
        "{budget:?} is at most {left_before:?} less the 50 ms margin"
    );
    // A RequestContext in the extensions works as well as a Context.
    let rc = RequestContext::new(req.context(), req.shared_meta(), f.propagator.clone());
    let mut r = f.request("/echo");
    r.extensions_mut().insert(rc);
    f.client.clone().oneshot(r).await.unwrap();
    assert_eq!(
        f.headers.recv().await.unwrap()["x-request-id"],
        "client-layer-1"
    );
    // No context: sent as it is.
    f.client.clone().oneshot(f.request("/echo")).await.unwrap();
    assert!(!f.headers.recv().await.unwrap().contains_key(TRACEPARENT));
    assert_eq!(f.propagator.stats().injected(), 2);
}

/// A spent budget or a cancelled context fails fast: the client is not called, the server
/// sees nothing, the error says which.
#[tokio::test]
async fn a_spent_budget_or_a_cancel_fails_fast() {
    let f = start().await;
    let root = f.pool.background().with_cancel();

    let spent = root.context().with_timeout(Duration::ZERO);
    let mut r = f.request("/echo");
    r.extensions_mut().insert(spent.context());
    let err = f.client.clone().oneshot(r).await.unwrap_err();
    assert!(
        matches!(err, ClientError::NotSent(ContextError::DeadlineExceeded)),
        "{err}"
    );
    assert!(err.is_deadline_exceeded());

    // Less left than the margin: nothing to send either.
    let short = root.context().with_timeout(Duration::from_millis(20));
    let mut r = f.request("/echo");
    r.extensions_mut().insert(short.context());
    let err = f.client.clone().oneshot(r).await.unwrap_err();
    assert!(
        matches!(err, ClientError::NotSent(ContextError::DeadlineExceeded)),
        "{err}"
    );

    let cancelled = root.context().with_cancel();
    cancelled.cancel(Reason::Message("gave up"));
    let mut r = f.request("/echo");
    r.extensions_mut().insert(cancelled.context());
    let err = f.client.clone().oneshot(r).await.unwrap_err();
    assert!(
        matches!(err, ClientError::NotSent(ContextError::Canceled)),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("call not sent: {}", ContextError::Canceled)
    );

    assert_eq!(f.seen.requests.load(Ordering::SeqCst), 0);
    assert_eq!(f.propagator.stats().failed_fast(), 3);
}

/// Cancelling the calling context while the call is in flight drops the call: the caller
/// gets `Cancelled` at once, and the server's request context is cancelled as a client
/// that went away.
#[tokio::test]
async fn a_cancel_drops_the_call() {
    let mut f = start().await;
    let root = f.pool.background().with_cancel();
    let call = root.context().with_cancel();
    let mut r = f.request("/hang");
    r.extensions_mut().insert(call.context());
    let pending = tokio::spawn(f.client.clone().oneshot(r));
    // The server has the request ...
    f.headers.recv().await.unwrap();
    // ... when the caller cancels.
    root.cancel(Reason::Message("caller gave up"));
    let err = pending.await.unwrap().unwrap_err();
    assert!(
        matches!(err, ClientError::Cancelled(ContextError::Canceled)),
        "{err}"
    );
    assert_eq!(err.context_error(), Some(ContextError::Canceled));
    let cause = f.causes.recv().await.unwrap();
    assert_eq!(cause, Cause::Cancelled(CLIENT_DISCONNECTED));
}

/// `Context::run_until_cancelled`: the future's output, or the context's error once it is
/// cancelled (the future dropped unfinished).
#[tokio::test]
async fn run_until_cancelled_returns_output_or_the_reason() {
    let root = ctxpool::Context::background().with_cancel();
    let ctx = root.context();
    assert_eq!(ctx.run_until_cancelled(async { 1 }).await, Ok(1));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let dropped = Arc::new(AtomicUsize::new(0));
    struct Flag(Arc<AtomicUsize>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let flag = Flag(dropped.clone());
    let waiter = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.run_until_cancelled(async move {
                let _flag = flag;
                rx.await.unwrap();
                2
            })
            .await
        })
    };
    tokio::task::yield_now().await;
    root.cancel(Reason::Message("stop"));
    assert_eq!(waiter.await.unwrap(), Err(ContextError::Canceled));
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the future was dropped");
    drop(tx);
    let expired = ctxpool::Context::background().with_timeout(Duration::ZERO);
    assert_eq!(
        expired
            .context()
            .run_until_cancelled(std::future::pending::<()>())
            .await,
        Err(ContextError::DeadlineExceeded)
    );
}
