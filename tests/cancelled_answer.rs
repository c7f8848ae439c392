//! Responses after cancellation (`src/http/layer.rs`, L4): once the request's context is
//! cancelled before the handler's response is ready, the layer answers for the cause
//! (`504`/`503` with an error body, or gRPC's trailers-only status) whatever the handler
//! returns; `AfterCancel::HandlerAnswers` keeps the handler's answer; a handler marks work not
//! done with `answer_cancelled`. Driven through `tower::Service` (no network); every handler
//! waits on the cancel itself, so nothing here depends on timing but the order of events.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use ctxpool::http::{
    answer_cancelled, AfterCancel, ContextLayer, ErrorBody, Propagator, RequestContext,
};
use ctxpool::{Cause, Origin, Pool};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use tower::{Layer, Service, ServiceExt};

/// What a handler does.
#[derive(Clone, Copy)]
enum Handler {
    /// Waits for its context's cancel, then answers `200` anyway (the bug this fixes).
    NoticesThenOk,
    /// Answers `answer_cancelled(PoolExhausted)` at once (a sub-operation born cancelled).
    SubOperationShed,
    /// Answers `200` at once.
    Ok,
}

fn service(
    layer: ContextLayer,
    handler: Handler,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<ctxpool::http::ContextBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    layer.layer(tower::service_fn(move |req: Request<Empty<Bytes>>| {
        let ctx = req
            .extensions()
            .get::<RequestContext>()
            .unwrap()
            .context()
            .clone();
        async move {
            Ok::<_, Infallible>(match handler {
                Handler::NoticesThenOk => {
                    ctx.cancelled().await;
                    Response::new(Full::new(Bytes::from_static(b"done")))
                }
                Handler::SubOperationShed => answer_cancelled(Cause::PoolExhausted),
                Handler::Ok => Response::new(Full::new(Bytes::from_static(b"done"))),
            })
        }
    }))
}

fn request(method: Method, grpc: bool, timeout: Option<&str>) -> Request<Empty<Bytes>> {
    let mut b = Request::builder().method(method).uri("/work");
    if grpc {
        b = b.header("content-type", "application/grpc");
    }
    if let Some(t) = timeout {
        b = b.header("grpc-timeout", t);
    }
    b.body(Empty::new()).unwrap()
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn call(
    svc: impl Service<
        Request<Empty<Bytes>>,
        Response = Response<ctxpool::http::ContextBody<Full<Bytes>>>,
        Error = Infallible,
        Future: Send,
    >,
    req: Request<Empty<Bytes>>,
) -> Answer {
    // A generous bound, not a timing assertion: the answers come within milliseconds.
    let resp = tokio::time::timeout(Duration::from_secs(30), svc.oneshot(req))
        .await
        .expect("an answer")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = Box::pin(body).collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn json(a: &Answer) -> serde_json::Value {
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(
        a.headers["content-length"],
        a.body.len().to_string().as_str()
    );
    serde_json::from_slice(&a.body).unwrap()
}

#[tokio::test]
async fn a_handler_answering_200_after_its_deadline_gets_504() {
    let pool = Pool::builder().build().unwrap();
    let svc = service(
        ContextLayer::new(Propagator::new(&pool)),
        Handler::NoticesThenOk,
    );
    let a = call(svc, request(Method::GET, false, Some("20m"))).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    let v = json(&a);
    assert_eq!(v["error"], "deadline_exceeded");
    assert!(a.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn grpc_gets_a_trailers_only_deadline_exceeded() {
    let pool = Pool::builder().build().unwrap();
    let svc = service(
        ContextLayer::new(Propagator::new(&pool)),
        Handler::NoticesThenOk,
    );
    let a = call(svc, request(Method::POST, true, Some("20m"))).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "gRPC: HTTP 200, the status in the headers"
    );
    assert_eq!(a.headers["grpc-status"], "4");
    assert_eq!(a.headers["content-type"], "application/grpc");
    assert!(a.body.is_empty(), "trailers-only: no body");
}

#[tokio::test]
async fn shutdown_gets_503_and_grpc_unavailable() {
    for grpc in [false, true] {
        let pool = Pool::builder().build().unwrap();
        let root = pool.background().with_cancel();
        let p = Propagator::builder(&pool).parent(root.context()).build();
        let svc = service(ContextLayer::new(p), Handler::NoticesThenOk);
        let pending = tokio::spawn(call(svc, request(Method::POST, grpc, None)));
        // Before or after the request reaches its handler, the answer is the same: a
        // request context made under a cancelled root is born cancelled with its cause.
        tokio::task::yield_now().await;
        root.cancel_with(Origin::Shutdown);
        let a = pending.await.unwrap();
        if grpc {
            assert_eq!(a.headers["grpc-status"], "14");
        } else {
            assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(json(&a)["error"], "shutdown");
        }
    }
}

#[tokio::test]
async fn handler_answers_keeps_the_handlers_response() {
    let pool = Pool::builder().build().unwrap();
    let layer = ContextLayer::new(Propagator::new(&pool)).after_cancel(AfterCancel::HandlerAnswers);
    let svc = service(layer, Handler::NoticesThenOk);
    let a = call(svc, request(Method::GET, false, Some("20m"))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..], b"done");
}

#[tokio::test]
async fn a_shed_sub_operation_is_answered_503_for_http_and_grpc() {
    let pool = Pool::builder().build().unwrap();
    for layer in [
        ContextLayer::new(Propagator::new(&pool)),
        ContextLayer::new(Propagator::new(&pool)).after_cancel(AfterCancel::HandlerAnswers),
    ] {
        let svc = service(layer, Handler::SubOperationShed);
        let a = call(svc.clone(), request(Method::GET, false, None)).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(&a)["error"], "pool_exhausted");
        let a = call(svc, request(Method::POST, true, None)).await;
        assert_eq!(a.headers["grpc-status"], "8");
    }
}

#[tokio::test]
async fn error_bodies_are_configurable() {
    let pool = Pool::builder().build().unwrap();
    let layer = ContextLayer::new(Propagator::new(&pool)).error_body(|cause, status| {
        Some(ErrorBody {
            content_type: HeaderValue::from_static("text/plain"),
            bytes: Bytes::from(format!("{} {:?}", status.as_u16(), cause.error())),
        })
    });
    let a = call(
        service(layer, Handler::NoticesThenOk),
        request(Method::GET, false, Some("20m")),
    )
    .await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.headers["content-type"], "text/plain");
    assert_eq!(&a.body[..], b"504 DeadlineExceeded");

    // None: an empty body, the status alone.
    let layer = ContextLayer::new(Propagator::new(&pool)).error_body(|_, _| None);
    let a = call(
        service(layer, Handler::NoticesThenOk),
        request(Method::GET, false, Some("20m")),
    )
    .await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(a.body.is_empty());
    assert!(!a.headers.contains_key("content-type"));
}

#[tokio::test]
async fn head_gets_the_status_without_a_body() {
    let pool = Pool::builder().build().unwrap();
    let svc = service(
        ContextLayer::new(Propagator::new(&pool)),
        Handler::NoticesThenOk,
    );
    let a = call(svc, request(Method::HEAD, false, Some("20m"))).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(a.body.is_empty());
}

#[tokio::test]
async fn a_live_request_keeps_the_handlers_answer() {
    let pool = Pool::builder().build().unwrap();
    let svc = service(ContextLayer::new(Propagator::new(&pool)), Handler::Ok);
    let a = call(svc, request(Method::GET, false, None)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..], b"done");
}
