//! The client layer: the calling context on every outgoing call (feature `tower`).
//!
//! [`ClientLayer`] wraps any tower HTTP client (`Service<http::Request<B>>`: hyper-util's
//! legacy `Client`, a `tower::ServiceBuilder` stack, …). Per call, [`ClientService`]:
//!
//! 1. takes the calling context from the request's extensions: a [`Context`], else the
//!    context of a [`RequestContext`] (what the server layer puts there). A request with
//!    neither is sent as it is;
//! 2. writes its propagation headers with [`Propagator::inject_context`]: `traceparent`
//!    (a new span id, or the exported span's with feature `opentelemetry`), `tracestate`,
//!    `baggage`, the original `x-request-id`, the remaining budget minus
//!    `outbound_deadline_margin` as `grpc-timeout`, and `x-user-id` towards a trusted
//!    destination (the URI's host when it is an IP address);
//! 3. fails fast, without calling the client, when the context is cancelled or its budget is
//!    spent: [`ClientError::NotSent`] with the context's error (`DeadlineExceeded` or
//!    `Canceled`);
//! 4. drops the client's future (which cancels the call: hyper closes the connection) when
//!    the context is cancelled or its deadline passes before the response head arrives:
//!    [`ClientError::Cancelled`] with the context's error.
//!
//! The response body is not watched: read it under
//! [`Context::run_until_cancelled`](crate::Context::run_until_cancelled) to bound it too.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use ::http::Request;

use super::{Propagator, RequestContext};
use crate::{CancelledOwned, Context, ContextError};

/// Why an outgoing call through [`ClientService`] failed.
#[derive(Debug)]
pub enum ClientError<E> {
    /// Not sent: the calling context was already cancelled, or its deadline budget (less the
    /// margin) was spent. The client was not called.
    NotSent(ContextError),
    /// Sent, then dropped: the calling context was cancelled, or its deadline passed, before
    /// the response came.
    Cancelled(ContextError),
    /// The client's own error.
    Service(E),
}

impl<E> ClientError<E> {
    /// The context's error, when the context stopped the call (before or during it).
    pub fn context_error(&self) -> Option<ContextError> {
        match self {
            ClientError::NotSent(e) | ClientError::Cancelled(e) => Some(*e),
            ClientError::Service(_) => None,
        }
    }

    /// Whether the context's deadline stopped the call.
    pub fn is_deadline_exceeded(&self) -> bool {
        self.context_error() == Some(ContextError::DeadlineExceeded)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for ClientError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotSent(e) => write!(f, "call not sent: {e}"),
            ClientError::Cancelled(e) => write!(f, "call dropped: {e}"),
            ClientError::Service(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ClientError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Service(e) => Some(e),
            _ => None,
        }
    }
}

/// A tower `Layer` putting the calling context on every outgoing call; see the
/// [module docs](self).
///
/// ```
/// use ctxpool::http::{ClientError, ClientLayer, Propagator, TRACEPARENT};
/// use ctxpool::{ContextError, Pool};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// # rt.block_on(async {
/// let pool = Pool::builder().build().unwrap();
/// let propagator = Propagator::new(&pool);
/// // Any tower HTTP client; this one answers with the headers it was sent.
/// let client = service_fn(|req: http::Request<()>| async move {
///     Ok::<_, std::convert::Infallible>(req.headers().clone())
/// });
/// let client = ClientLayer::new(propagator.clone()).layer(client);
///
/// let req = propagator.extract(&http::HeaderMap::new(), None);
/// let mut call = http::Request::new(());
/// call.extensions_mut().insert(req.context());
/// let sent = client.clone().oneshot(call).await.unwrap();
/// assert!(sent.contains_key(TRACEPARENT) && sent.contains_key("grpc-timeout"));
///
/// // A spent budget fails fast, without calling the client.
/// let spent = req.context().with_timeout(std::time::Duration::ZERO);
/// let mut call = http::Request::new(());
/// call.extensions_mut().insert(spent.context());
/// let err = client.oneshot(call).await.unwrap_err();
/// assert!(matches!(err, ClientError::NotSent(ContextError::DeadlineExceeded)));
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct ClientLayer {
    propagator: Propagator,
}

impl ClientLayer {
    /// A layer injecting with `propagator` (its counters count the calls and the failures).
    pub fn new(propagator: Propagator) -> Self {
        ClientLayer { propagator }
    }
}

impl<S> tower_layer::Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> ClientService<S> {
        ClientService {
            inner,
            propagator: self.propagator.clone(),
        }
    }
}

/// The service made by [`ClientLayer`].
#[derive(Clone, Debug)]
pub struct ClientService<S> {
    inner: S,
    propagator: Propagator,
}

impl<S> ClientService<S> {
    /// The wrapped client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B> tower_service::Service<Request<B>> for ClientService<S>
where
    S: tower_service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = ClientError<S::Error>;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ClientError::Service)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ctx = match req.extensions().get::<Context>() {
            Some(ctx) => Some(ctx.clone()),
            None => req
                .extensions()
                .get::<RequestContext>()
                .map(|rc| rc.context().clone()),
        };
        let Some(ctx) = ctx else {
            return ClientFuture {
                inner: Some(self.inner.call(req)),
                cancelled: None,
                ctx: None,
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
            return ClientFuture {
                inner: None,
                cancelled: None,
                ctx: None,
                early: Some(e),
            };
        }
        ClientFuture {
            inner: Some(self.inner.call(req)),
            cancelled: Some(ctx.cancelled_owned()),
            ctx: Some(ctx),
            early: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`ClientService`]: the client's, dropped if the context is cancelled
    /// first.
    pub struct ClientFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        cancelled: Option<CancelledOwned>,
        ctx: Option<Context>,
        early: Option<ContextError>,
    }
}

impl<F, T, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, ClientError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(e) = this.early.take() {
            return Poll::Ready(Err(ClientError::NotSent(e)));
        }
        if let Some(cancelled) = this.cancelled.as_mut().as_pin_mut() {
            if cancelled.poll(cx).is_ready() {
                // Drop the client's future now: that is what cancels the call.
                this.inner.set(None);
                let err = this
                    .ctx
                    .as_ref()
                    .and_then(Context::err)
                    .unwrap_or(ContextError::Canceled);
                return Poll::Ready(Err(ClientError::Cancelled(err)));
            }
        }
        match this.inner.as_mut().as_pin_mut() {
            Some(inner) => inner.poll(cx).map_err(ClientError::Service),
            None => Poll::Ready(Err(ClientError::Cancelled(ContextError::Canceled))),
        }
    }
}
