//! `Drain` (`src/http/drain.rs`, G1–G2) through the tower layer: a request is in flight from
//! the call until its context ends (the body's end, not the head); a shutdown with nothing in
//! flight ends at once and refuses later requests; one with a request in flight waits for it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use ctxpool::http::{ContextLayer, Drain, Propagator};
use ctxpool::Pool;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};

/// A body fed by a channel; ends when the sender is dropped.
#[derive(Default)]
struct ChanBody(Option<mpsc::Receiver<Bytes>>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.as_mut() {
            None => Poll::Ready(None),
            Some(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn setup() -> (Pool, Drain, ContextLayer) {
    let pool = Pool::builder().build().unwrap();
    let drain = Drain::new(&pool);
    let p = Propagator::builder(&pool).parent(drain.context()).build();
    let layer = ContextLayer::new(p).drain(&drain);
    (pool, drain, layer)
}

fn get() -> Request<Empty<Bytes>> {
    Request::get("/").body(Empty::new()).unwrap()
}

#[tokio::test]
async fn a_request_is_in_flight_until_its_body_ends() {
    let (_pool, drain, layer) = setup();
    let (tx, rx) = mpsc::channel(1);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let svc = layer.layer(tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        let rx = rx.lock().unwrap().take();
        async move { Ok::<_, Infallible>(Response::new(ChanBody(rx))) }
    }));
    assert_eq!(drain.in_flight(), 0);
    let resp = svc.oneshot(get()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(drain.in_flight(), 1, "the body still streams");
    let mut body = Box::pin(resp.into_body());
    tx.send(Bytes::from_static(b"a")).await.unwrap();
    drop(tx);
    let got = body.as_mut().collect().await.unwrap().to_bytes();
    assert_eq!(&got[..], b"a");
    assert_eq!(drain.in_flight(), 0, "the body ended");
}

#[tokio::test]
async fn shutdown_waits_for_a_request_in_flight_then_refuses_new_ones() {
    let (_pool, drain, layer) = setup();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(Mutex::new(Some(released)));
    let svc = layer.layer(tower::service_fn(move |_req: Request<Empty<Bytes>>| {
        let released = released.lock().unwrap().take();
        async move {
            if let Some(r) = released {
                let _ = r.await;
            }
            Ok::<_, Infallible>(Response::new(ChanBody(None)))
        }
    }));
    let pending = tokio::spawn(svc.clone().oneshot(get()));
    while drain.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    // A generous grace period: the request is released right after the drain begins.
    let shutdown = {
        let drain = drain.clone();
        tokio::spawn(async move { drain.shutdown(Duration::from_secs(60)).await })
    };
    while !drain.is_draining() {
        tokio::task::yield_now().await;
    }
    assert!(
        !drain.context().is_cancelled(),
        "the grace period has begun"
    );
    release.send(()).unwrap();
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "finished within the grace period"
    );
    // The server sends the body: the request ends with it.
    Box::pin(resp.into_body()).collect().await.unwrap();
    assert_eq!(drain.in_flight(), 0, "the request ended");
    let report = shutdown.await.unwrap();
    assert_eq!(report.in_flight_at_start, 1);
    assert_eq!(report.cancelled, 0);
    assert!(drain.context().is_cancelled());
    // Later requests are born cancelled with `Shutdown`: 503.
    let resp = svc.oneshot(get()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(drain.in_flight(), 0);
}
