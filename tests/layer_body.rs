//! The tower layer's response body ([`ContextBody`], `src/http/layer.rs` L1–L3): the request
//! context lives while the body streams, ends normally when the body ends, is cancelled
//! with `client disconnected` when the body is dropped before its end, and cuts the body
//! when its deadline passes mid-stream. Driven through the `tower::Service` directly (no
//! network), with a body fed from a channel so that the test decides when each frame comes.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use ctxpool::http::{ContextBody, ContextLayer, Propagator, RequestContext, CLIENT_DISCONNECTED};
use ctxpool::{Cause, Context, ContextError, Origin, Pool};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};

/// A response body whose frames come from a channel; the end when the sender is dropped.
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

/// The request context the handler saw, shared with the test.
type Seen = Arc<Mutex<Option<Context>>>;

/// A pool with a driver thread (deadlines fire on their own).
fn pool() -> Pool {
    Pool::builder().build().unwrap()
}

/// The layer (with `propagator`) around a handler answering with a `ChanBody` fed by `rx`;
/// records the request context in `seen`.
fn service_with(
    propagator: Propagator,
    rx: mpsc::Receiver<Bytes>,
    seen: Seen,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<ContextBody<ChanBody>>,
    Error = Infallible,
    Future: Send,
> {
    let rx = Arc::new(Mutex::new(Some(rx)));
    let inner = tower::service_fn(move |req: Request<Empty<Bytes>>| {
        let rc = req.extensions().get::<RequestContext>().unwrap().clone();
        *seen.lock().unwrap() = Some(rc.context().clone());
        let rx = rx.lock().unwrap().take();
        async move { Ok::<_, Infallible>(Response::new(ChanBody(rx))) }
    });
    ContextLayer::new(propagator).layer(inner)
}

fn request(timeout: Option<&str>) -> Request<Empty<Bytes>> {
    let mut b = Request::get("/stream");
    if let Some(t) = timeout {
        b = b.header("grpc-timeout", t);
    }
    b.body(Empty::new()).unwrap()
}

fn seen(s: &Seen) -> Context {
    s.lock().unwrap().clone().expect("the handler ran")
}

/// A request through the layer whose handler answers `200` with a body fed by the returned
/// sender (a channel of `cap`); also returns the request's context.
async fn streaming(
    propagator: Propagator,
    timeout: Option<&str>,
    cap: usize,
) -> (
    mpsc::Sender<Bytes>,
    Pin<Box<ContextBody<ChanBody>>>,
    Context,
) {
    let (tx, rx) = mpsc::channel(cap);
    let s: Seen = Default::default();
    let resp = service_with(propagator, rx, s.clone())
        .oneshot(request(timeout))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    (tx, Box::pin(resp.into_body()), seen(&s))
}

/// Waits (a generous bound, not a timing assertion) for the next frame of `body`.
async fn next<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
    tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("the body answers")
}

#[tokio::test]
async fn the_context_lives_while_the_body_streams_and_ends_normally_after() {
    let pool = pool();
    let (tx, mut body, ctx) = streaming(Propagator::new(&pool), None, 4).await;
    for i in 0..3 {
        // The head is long gone; the context is still live for the producer.
        assert!(!ctx.is_cancelled(), "frame {i}");
        tx.send(Bytes::from(format!("chunk {i}\n"))).await.unwrap();
        let frame = next(&mut body).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("chunk {i}\n"));
    }
    assert!(!ctx.is_cancelled());
    drop(tx);
    assert!(next(&mut body).await.is_none());
    // L1: the end of the body ends the context normally, before the body is dropped.
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
    drop(body);
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
}

#[tokio::test]
async fn a_body_dropped_before_its_end_is_a_client_disconnect() {
    let pool = pool();
    let (tx, mut body, ctx) = streaming(Propagator::new(&pool), None, 4).await;
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    assert!(next(&mut body).await.unwrap().is_ok());
    assert!(!ctx.is_cancelled());
    // The server drops the body: the client went away mid-response.
    drop(body);
    assert_eq!(ctx.cause(), Some(Cause::Cancelled(CLIENT_DISCONNECTED)));
    // A producer watching the context sees it, and its channel is closed.
    assert!(tx.send(Bytes::from_static(b"more")).await.is_err());
}

#[tokio::test]
async fn a_deadline_mid_stream_cuts_the_body_with_the_context_error() {
    let pool = pool();
    let (tx, mut body, ctx) = streaming(Propagator::new(&pool), Some("300m"), 4).await;
    tx.send(Bytes::from_static(b"in time")).await.unwrap();
    assert!(next(&mut body).await.unwrap().is_ok());
    // No more frames: the body waits on its producer until the deadline fires (L3: woken by
    // the context, not by a frame).
    let err = next(&mut body).await.unwrap().unwrap_err();
    assert_eq!(
        err.downcast_ref::<ContextError>(),
        Some(&ContextError::DeadlineExceeded)
    );
    assert!(matches!(
        ctx.cause().map(Cause::origin),
        Some(Origin::DeadlineExceeded(_))
    ));
    // Once cut, the body ends the context; dropping it is not a disconnect.
    drop(body);
    assert!(matches!(ctx.cause(), Some(Cause::DeadlineExceeded(_))));
    drop(tx);
}

#[tokio::test]
async fn a_cancel_stops_a_body_that_never_pauses() {
    let pool = pool();
    let root = pool.background().with_cancel();
    let propagator = Propagator::builder(&pool).parent(root.context()).build();
    let (tx, mut body, ctx) = streaming(propagator, None, 64).await;
    for _ in 0..8 {
        tx.send(Bytes::from_static(b"x")).await.unwrap();
    }
    assert!(next(&mut body).await.unwrap().is_ok());
    // The server shuts down: its root's cancel reaches the request.
    root.cancel_with(Origin::Shutdown);
    // Frames are ready in the channel, yet the next poll reports the cancel (L3).
    let err = next(&mut body).await.unwrap().unwrap_err();
    assert_eq!(
        err.downcast_ref::<ContextError>(),
        Some(&ContextError::Canceled)
    );
    assert_eq!(ctx.cause(), Some(Cause::Parent(Origin::Shutdown)));
}

/// The layer around a handler answering `body()`; records the request context in `seen`.
fn answering<B, F>(
    pool: &Pool,
    seen: Seen,
    method: Method,
    body: F,
) -> (Response<ContextBody<B>>, Context)
where
    B: Body + Default + Send + 'static,
    B::Data: From<Bytes>,
    F: Fn() -> B + Send + Sync + Clone + 'static,
{
    responding(pool, seen, method, move || Response::new(body()))
}

/// The layer around a handler answering `make()`; records the request context in `seen`.
fn responding<B, F>(
    pool: &Pool,
    seen: Seen,
    method: Method,
    make: F,
) -> (Response<ContextBody<B>>, Context)
where
    B: Body + Default + Send + 'static,
    B::Data: From<Bytes>,
    F: Fn() -> Response<B> + Send + Sync + Clone + 'static,
{
    let s2 = seen.clone();
    let inner = tower::service_fn(move |req: Request<Empty<Bytes>>| {
        let rc = req.extensions().get::<RequestContext>().unwrap().clone();
        *s2.lock().unwrap() = Some(rc.context().clone());
        let make = make.clone();
        async move { Ok::<_, Infallible>(make()) }
    });
    let svc = ContextLayer::new(Propagator::new(pool)).layer(inner);
    let req = Request::builder()
        .method(method)
        .uri("/")
        .body(Empty::new())
        .unwrap();
    let resp = futures_now(svc.oneshot(req));
    (resp, self::seen(&seen))
}

/// The handler futures here complete at once: poll to completion on this thread.
fn futures_now<F: std::future::Future<Output = Result<T, Infallible>>, T>(f: F) -> T {
    let waker = std::task::Waker::noop();
    let mut cx = TaskContext::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(t)) => t,
        Poll::Ready(Err(e)) => match e {},
        Poll::Pending => panic!("the handler answers at once"),
    }
}

#[tokio::test]
async fn a_head_request_or_an_empty_body_ends_the_context_with_the_response() {
    let pool = pool();
    // HEAD: the server never polls the body; the context ends normally at the response.
    let (resp, ctx) = answering(&pool, Seen::default(), Method::HEAD, || {
        Full::new(Bytes::from_static(b"hi"))
    });
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
    drop(resp);
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));

    // An empty body (`is_end_stream` at once): the same (L2).
    let (resp, ctx) = answering(&pool, Seen::default(), Method::GET, Empty::<Bytes>::new);
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
    drop(resp);
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));

    // A whole body: live until its frame is taken; `Full` then reports its end, so the
    // context ends without another poll (L1).
    let (resp, ctx) = answering(&pool, Seen::default(), Method::GET, || {
        Full::new(Bytes::from_static(b"hi"))
    });
    assert!(!ctx.is_cancelled());
    let mut body = Box::pin(resp.into_body());
    let frame = next(&mut body).await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "hi");
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
    drop(body);
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));

    // A whole body collected, as a client would.
    let (resp, ctx) = answering(&pool, Seen::default(), Method::GET, || {
        Full::new(Bytes::from_static(b"hello"))
    });
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "hello"
    );
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
}

/// A body that yields `frames` in order, then its end, which it reports only when polled
/// past it. With `exact`, its `size_hint` is the data still to come, as hyper's own bodies
/// report it (what is *left*, not the total).
#[derive(Default)]
struct Scripted {
    frames: std::collections::VecDeque<Frame<Bytes>>,
    exact: bool,
}

impl Scripted {
    fn new(frames: impl IntoIterator<Item = Frame<Bytes>>, exact: bool) -> Self {
        Scripted {
            frames: frames.into_iter().collect(),
            exact,
        }
    }
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if !self.exact {
            return http_body::SizeHint::default();
        }
        let left = self
            .frames
            .iter()
            .filter_map(Frame::data_ref)
            .map(Bytes::len)
            .sum::<usize>();
        http_body::SizeHint::with_exact(left as u64)
    }
}

#[tokio::test]
async fn a_shrinking_exact_size_hint_ends_the_context_after_the_last_byte_only() {
    let pool = pool();
    let (resp, ctx) = answering(&pool, Seen::default(), Method::GET, || {
        Scripted::new(
            (0..3).map(|_| Frame::data(Bytes::from_static(b"0123456789"))),
            true,
        )
    });
    let mut body = Box::pin(resp.into_body());
    for i in 0..3 {
        assert!(!ctx.is_cancelled(), "before frame {i}");
        assert!(next(&mut body).await.unwrap().is_ok());
    }
    // All 30 announced bytes are out: the server may stop polling here (L1).
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
}

#[tokio::test]
async fn a_trailers_frame_is_the_end() {
    let pool = pool();
    let (resp, ctx) = answering(&pool, Seen::default(), Method::GET, || {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Scripted::new(
            [
                Frame::data(Bytes::from_static(b"hello")),
                Frame::trailers(trailers),
            ],
            false,
        )
    });
    let mut body = Box::pin(resp.into_body());
    assert!(next(&mut body).await.unwrap().unwrap().is_data());
    assert!(!ctx.is_cancelled());
    assert!(next(&mut body).await.unwrap().unwrap().is_trailers());
    // hyper drops the body right after trailers, unpolled: not a disconnect.
    drop(body);
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
}

#[tokio::test]
async fn a_content_length_header_bounds_a_body_of_unknown_size() {
    let pool = pool();
    let (tx, rx) = mpsc::channel(4);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let (resp, ctx) = responding(&pool, Seen::default(), Method::GET, move || {
        let mut r = Response::new(ChanBody(rx.lock().unwrap().take()));
        r.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static("5"),
        );
        r
    });
    let mut body = Box::pin(resp.into_body());
    tx.send(Bytes::from_static(b"hel")).await.unwrap();
    assert!(next(&mut body).await.unwrap().is_ok());
    assert!(!ctx.is_cancelled(), "3 of 5 bytes sent");
    tx.send(Bytes::from_static(b"lo")).await.unwrap();
    assert!(next(&mut body).await.unwrap().is_ok());
    // hyper stops writing at the announced length and drops the body.
    drop(body);
    assert_eq!(ctx.cause(), Some(Cause::OwnerDropped));
}

#[tokio::test]
async fn bodiless_statuses_end_the_context_with_the_response() {
    let pool = pool();
    for status in [
        StatusCode::NO_CONTENT,
        StatusCode::NOT_MODIFIED,
        StatusCode::CONTINUE,
    ] {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let rx = Arc::new(Mutex::new(Some(rx)));
        let (resp, ctx) = responding(&pool, Seen::default(), Method::GET, move || {
            let mut r = Response::new(ChanBody(rx.lock().unwrap().take()));
            *r.status_mut() = status;
            r
        });
        assert_eq!(ctx.cause(), Some(Cause::OwnerDropped), "{status}");
        drop((resp, tx));
        assert_eq!(ctx.cause(), Some(Cause::OwnerDropped), "{status}");
    }
}

#[test]
fn a_panicking_handler_cancels_with_its_own_reason() {
    let pool = pool();
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    let inner = tower::service_fn(move |req: Request<Empty<Bytes>>| {
        let rc = req.extensions().get::<RequestContext>().unwrap().clone();
        *s2.lock().unwrap() = Some(rc.context().clone());
        async move {
            if rc.context().is_cancelled() {
                return Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()));
            }
            panic!("the handler fails");
        }
    });
    let svc = ContextLayer::new(Propagator::new(&pool)).layer(inner);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures_now(svc.oneshot(request(None)))
    }));
    assert!(unwound.is_err());
    assert_eq!(
        self::seen(&seen).cause(),
        Some(Cause::Cancelled(ctxpool::http::HANDLER_PANICKED))
    );
}
