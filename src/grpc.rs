//! gRPC services and clients on tonic (feature `tonic`).
//!
//! gRPC metadata is HTTP/2 headers, so both sides work on the `http::Request` level, under
//! tonic's generated (or generic) code, and reuse the HTTP propagation whole: the same
//! [`Propagator`], the same deadline policy, the same answers for a cancelled context.
//!
//! **Server.** The layer is [`ContextLayer`] itself: it recognises a gRPC request by its
//! `content-type` (`application/grpc…`). Per call it makes the request context from the
//! metadata (`grpc-timeout` under the deadline policy, [`ContextLayer::timeout_for`] giving
//! a method its budget from the URI path `/package.Service/Method`; `traceparent`,
//! `tracestate`, `baggage`, `x-request-id`), puts a [`RequestContext`] into the request's
//! extensions, which tonic hands to the service method ([`RequestExt::request_context`]),
//! and answers a cancelled context with a trailers-only status whatever the method returns
//! afterwards: `DEADLINE_EXCEEDED` past the deadline, `UNAVAILABLE` at shutdown,
//! `RESOURCE_EXHAUSTED` at pool exhaustion, `CANCELLED` otherwise ([`status_for`]). A
//! server stream cut by its deadline ends with trailers carrying that status (layer L5).
//! A client that hangs up (the HTTP/2 stream reset) cancels the request's context with
//! [`CLIENT_DISCONNECTED`](crate::http::CLIENT_DISCONNECTED), so every sub-operation
//! watching it stops.
//!
//! **Which server.** [`serve`]: tonic's routes (`tonic::service::Routes`) behind the layer,
//! served by hyper's HTTP/2 server, with the peer's address for the layer and a graceful
//! shutdown that goes with [`Drain`](crate::http::Drain). Not tonic's `transport::Server`:
//! it wraps every layer it is given in a `grpc-timeout` timer of its own, outside the layers,
//! which answers `CANCELLED` ("Timeout expired") and drops the request's future. It races the
//! context's deadline, which is the same instant: whichever is polled first answers. Behind
//! `Server::builder().layer(..)`, a deadline is therefore answered `DEADLINE_EXCEEDED` or
//! `CANCELLED`, and the context may read `client disconnected`. Under [`serve`] the
//! context's deadline is the only one: `DEADLINE_EXCEEDED`, every time.
//!
//! **Client.** [`GrpcClientLayer`] wraps the channel (any `tower` service of
//! `http::Request`s: tonic's `Channel`, …). Per call it takes the calling context from the
//! request's extensions ([`RequestExt::with_context`], or the [`RequestContext`] of a
//! server request passed on), writes `grpc-timeout` (the remaining time minus
//! `outbound_deadline_margin`), `traceparent`, `tracestate`, `baggage` and `x-request-id`
//! with [`Propagator::inject_context`], and fails fast with `DEADLINE_EXCEEDED` or
//! `CANCELLED` when the budget is spent or the context cancelled, without calling the
//! channel. A cancel while the call is in flight drops it (the stream is reset, the server
//! sees a hang-up) and the call fails with the status for the cause; a server stream being
//! read is cut the same way ([`GrpcClientBody`]). tonic's channel enforces the
//! `grpc-timeout` it is given on its own, with a `CANCELLED` "Timeout expired": the layer
//! answers that as `DEADLINE_EXCEEDED`, which is what it is.
//!
//! ```
//! use ctxpool::grpc::{status_for, GrpcClientLayer, RequestExt};
//! use ctxpool::http::{ContextLayer, Propagator};
//! use ctxpool::{Context, Op, Pool};
//! use std::time::Duration;
//!
//! static FANOUT: Op = Op::new("Demo/Fanout");
//!
//! let pool = Pool::builder().build().unwrap();
//! let propagator = Propagator::new(&pool);
//!
//! // Server: the HTTP layer, a label and a budget per method.
//! let layer = ContextLayer::new(propagator.clone())
//!     .op_for(|_, uri| if uri.path().ends_with("/Fanout") { &FANOUT } else { &ctxpool::http::HTTP_REQUEST })
//!     .timeout_for(|_, uri| uri.path().ends_with("/Fanout").then_some(Duration::from_secs(2)));
//! // `tonic::service::Routes::new(my_service)` behind `layer`, served by
//! // `ctxpool::grpc::serve(listener, layer.layer(routes), shutdown)`.
//! # let _ = layer;
//!
//! // In the service method: the request's context.
//! fn method(request: tonic::Request<()>) -> Result<tonic::Response<()>, tonic::Status> {
//!     let ctx: &Context = request.context().expect("served behind ContextLayer");
//!     if let Some(cause) = ctx.cause() {
//!         return Err(status_for(cause));
//!     }
//!     // Calls made with `tonic::Request::new(msg).with_context(ctx)` carry its deadline
//!     // and trace.
//!     Ok(tonic::Response::new(()))
//! }
//! # let incoming = propagator.extract(&http::HeaderMap::new(), None);
//! # let mut req = tonic::Request::new(());
//! # req.extensions_mut().insert(ctxpool::http::RequestContext::new(incoming.context(), incoming.shared_meta(), propagator.clone()));
//! # method(req).unwrap();
//!
//! // Client: under the channel (`ServiceBuilder::new().layer(..).service(channel)`).
//! let client_layer = GrpcClientLayer::new(propagator);
//! # let _ = client_layer;
//! ```

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::{Code, Status};

use crate::http::{BoxError, Propagator, RequestContext, Why};
use crate::{CancelledOwned, Cause, Context, ContextError};

#[cfg(doc)]
use crate::http::ContextLayer;

mod serve;

pub use serve::{serve, ACCEPT_BACKOFF};

/// The gRPC status for a context cancelled with `cause`, as the server layer answers it:
/// `DEADLINE_EXCEEDED` for a deadline (the request's own or an ancestor's), `UNAVAILABLE`
/// at shutdown, `RESOURCE_EXHAUSTED` for a context born at pool exhaustion, `CANCELLED`
/// for any other cancel.
///
/// ```
/// use ctxpool::grpc::status_for;
/// use ctxpool::{Cause, Origin};
/// use tonic::Code;
///
/// let past = std::time::Instant::now();
/// assert_eq!(status_for(Cause::DeadlineExceeded(past)).code(), Code::DeadlineExceeded);
/// assert_eq!(status_for(Cause::Parent(Origin::DeadlineExceeded(past))).code(), Code::DeadlineExceeded);
/// assert_eq!(status_for(Cause::Shutdown).code(), Code::Unavailable);
/// assert_eq!(status_for(Cause::PoolExhausted).code(), Code::ResourceExhausted);
/// assert_eq!(status_for(Cause::OwnerDropped).code(), Code::Cancelled);
/// ```
pub fn status_for(cause: Cause) -> Status {
    let why = Why::of(Some(cause));
    Status::new(Code::from_bytes(why.grpc_status.as_bytes()), why.message)
}

/// The status for `ctx` when it is cancelled ([`status_for`] its cause); `None` while it is
/// not.
pub fn status_of(ctx: &Context) -> Option<Status> {
    ctx.cause().map(status_for)
}

/// The status for a context error when the cause is not at hand.
fn status_for_error(ctx: Option<&Context>, err: ContextError) -> Status {
    match ctx.and_then(Context::cause) {
        Some(cause) => status_for(cause),
        None if err == ContextError::DeadlineExceeded => {
            Status::deadline_exceeded("deadline exceeded")
        }
        None => Status::cancelled("request cancelled"),
    }
}

/// The request context on a `tonic::Request`: read it in a service method, attach it to an
/// outgoing call.
pub trait RequestExt {
    /// The [`RequestContext`] the server layer ([`ContextLayer`]) made for this call: the
    /// context, what the metadata carried, the propagator.
    fn request_context(&self) -> Option<&RequestContext>;

    /// The request's context: a [`Context`] attached with
    /// [`with_context`](RequestExt::with_context), else the server layer's.
    fn context(&self) -> Option<&Context>;

    /// Attaches `ctx` as the calling context of an outgoing call (read by
    /// [`GrpcClientLayer`]).
    fn with_context(self, ctx: &Context) -> Self;
}

impl<T> RequestExt for tonic::Request<T> {
    fn request_context(&self) -> Option<&RequestContext> {
        self.extensions().get::<RequestContext>()
    }

    fn context(&self) -> Option<&Context> {
        self.extensions()
            .get::<Context>()
            .or_else(|| self.request_context().map(RequestContext::context))
    }

    fn with_context(mut self, ctx: &Context) -> Self {
        self.extensions_mut().insert(ctx.clone());
        self
    }
}

/// A tower `Layer` putting the calling context on every outgoing gRPC call; see the
/// [module docs](self).
///
/// ```
/// use ctxpool::grpc::GrpcClientLayer;
/// use ctxpool::http::{Propagator, TRACEPARENT};
/// use ctxpool::Pool;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// # rt.block_on(async {
/// let pool = Pool::builder().build().unwrap();
/// let propagator = Propagator::new(&pool);
/// // A channel that answers with the metadata it was sent (a real one: tonic's `Channel`).
/// let channel = service_fn(|req: http::Request<()>| async move {
///     let mut resp = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
///     *resp.headers_mut() = req.headers().clone();
///     Ok::<_, std::convert::Infallible>(resp)
/// });
/// let channel = GrpcClientLayer::new(propagator.clone()).layer(channel);
///
/// let req = propagator.extract(&http::HeaderMap::new(), None);
/// let mut call = http::Request::new(());
/// call.extensions_mut().insert(req.context());
/// let sent = channel.clone().oneshot(call).await.unwrap();
/// assert!(sent.headers().contains_key(TRACEPARENT) && sent.headers().contains_key("grpc-timeout"));
///
/// // A spent budget fails fast with DEADLINE_EXCEEDED, without calling the channel.
/// let spent = req.context().with_timeout(std::time::Duration::ZERO);
/// let mut call = http::Request::new(());
/// call.extensions_mut().insert(spent.context());
/// let err = channel.oneshot(call).await.unwrap_err();
/// let status = err.downcast::<tonic::Status>().unwrap();
/// assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct GrpcClientLayer {
    propagator: Propagator,
}

impl GrpcClientLayer {
    /// A layer injecting with `propagator` (its counters count the calls and the ones that
    /// failed fast).
    pub fn new(propagator: Propagator) -> Self {
        GrpcClientLayer { propagator }
    }
}

impl<S> tower_layer::Layer<S> for GrpcClientLayer {
    type Service = GrpcClientService<S>;

    fn layer(&self, inner: S) -> GrpcClientService<S> {
        GrpcClientService {
            inner,
            propagator: self.propagator.clone(),
        }
    }
}

/// The service made by [`GrpcClientLayer`]. Its errors are boxed [`Status`]es when the
/// context stopped the call (tonic's client reads them as the call's status), else the
/// channel's own.
#[derive(Clone, Debug)]
pub struct GrpcClientService<S> {
    inner: S,
    propagator: Propagator,
}

impl<S> GrpcClientService<S> {
    /// The wrapped channel.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, ResBody> tower_service::Service<::http::Request<B>> for GrpcClientService<S>
where
    S: tower_service::Service<::http::Request<B>, Response = ::http::Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = ::http::Response<GrpcClientBody<ResBody>>;
    type Error = BoxError;
    type Future = GrpcClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: ::http::Request<B>) -> Self::Future {
        let ctx = match req.extensions().get::<Context>() {
            Some(ctx) => Some(ctx.clone()),
            None => req
                .extensions()
                .get::<RequestContext>()
                .map(|rc| rc.context().clone()),
        };
        let Some(ctx) = ctx else {
            return GrpcClientFuture {
                inner: Some(self.inner.call(req)),
                cancelled: None,
                early: None,
            };
        };
        let dest = req.uri().host().and_then(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()
        });
        if let Err(e) = self
            .propagator
            .inject_context(&ctx, req.headers_mut(), dest)
        {
            return GrpcClientFuture {
                inner: None,
                cancelled: None,
                early: Some(status_for_error(Some(&ctx), e)),
            };
        }
        GrpcClientFuture {
            inner: Some(self.inner.call(req)),
            cancelled: Some(ctx.cancelled_owned()),
            early: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`GrpcClientService`]: the channel's, dropped if the calling context is
    /// cancelled first.
    pub struct GrpcClientFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        cancelled: Option<CancelledOwned>,
        early: Option<Status>,
    }
}

impl<F, ResBody, E> Future for GrpcClientFuture<F>
where
    F: Future<Output = Result<::http::Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<::http::Response<GrpcClientBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(status) = this.early.take() {
            return Poll::Ready(Err(Box::new(status)));
        }
        if let Some(mut cancelled) = this.cancelled.as_mut().as_pin_mut() {
            if cancelled.as_mut().poll(cx).is_ready() {
                let ctx = cancelled.context();
                let err = ctx.err().unwrap_or(ContextError::Canceled);
                let status = status_for_error(Some(ctx), err);
                // Dropping the channel's future resets the stream: the server sees a hang-up.
                this.inner.set(None);
                this.cancelled.set(None);
                return Poll::Ready(Err(Box::new(status)));
            }
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(Box::new(Status::cancelled("call dropped"))));
        };
        match inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                this.cancelled.set(None);
                Poll::Ready(Err(channel_error(e.into())))
            }
            Poll::Ready(Ok(resp)) => {
                // The body watches the context from here (its waiter moves with it).
                let ctx = this
                    .cancelled
                    .as_ref()
                    .as_pin_ref()
                    .map(|c| c.context().clone());
                this.cancelled.set(None);
                Poll::Ready(Ok(resp.map(|body| GrpcClientBody::new(body, ctx))))
            }
        }
    }
}

/// The channel's error; tonic's own `grpc-timeout` timer ("Timeout expired", which tonic
/// reads as `CANCELLED`) as `DEADLINE_EXCEEDED`: it enforces the deadline this layer sent.
fn channel_error(err: BoxError) -> BoxError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return Box::new(Status::deadline_exceeded("deadline exceeded"));
        }
        source = e.source();
    }
    err
}

pin_project_lite::pin_project! {
    /// The response body of [`GrpcClientService`]: the channel's, cut with the status for
    /// the cause ([`status_for`]) when the calling context is cancelled before it ends (a
    /// server stream being read stops at the client's deadline too). Dropping it resets the
    /// stream, as dropping the channel's body does.
    pub struct GrpcClientBody<B> {
        #[pin]
        inner: B,
        // Set while the context may still cut the body.
        #[pin]
        cancelled: Option<CancelledOwned>,
        done: bool,
    }
}

impl<B> GrpcClientBody<B> {
    fn new(inner: B, ctx: Option<Context>) -> Self {
        GrpcClientBody {
            inner,
            cancelled: ctx.map(|c| c.cancelled_owned()),
            done: false,
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for GrpcClientBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClientBody")
            .field("inner", &self.inner)
            .field("watching", &self.cancelled.is_some())
            .finish()
    }
}

impl<B> Body for GrpcClientBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let status = match this.cancelled.as_mut().as_pin_mut() {
            None => return this.inner.poll_frame(cx).map_err(Into::into),
            Some(c) => {
                // Checked before each frame (one load), and waited on below while the inner
                // body is pending.
                match c.context().err() {
                    Some(err) => Some(status_for_error(Some(c.context()), err)),
                    None => match this.inner.as_mut().poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if frame.is_trailers() {
                                this.cancelled.set(None);
                            }
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Poll::Ready(other) => {
                            this.cancelled.set(None);
                            return Poll::Ready(other.map(|r| r.map_err(Into::into)));
                        }
                        Poll::Pending => match this.cancelled.as_mut().as_pin_mut() {
                            Some(mut c) => match c.as_mut().poll(cx) {
                                Poll::Ready(()) => {
                                    let err = c.context().err().unwrap_or(ContextError::Canceled);
                                    Some(status_for_error(Some(c.context()), err))
                                }
                                Poll::Pending => None,
                            },
                            None => None,
                        },
                    },
                }
            }
        };
        match status {
            Some(status) => {
                this.cancelled.set(None);
                *this.done = true;
                Poll::Ready(Some(Err(Box::new(status))))
            }
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
