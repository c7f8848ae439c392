//! The tower layer: a request context per request (feature `tower`).
//!
//! Per request, [`ContextService`]:
//!
//! 1. extracts a request context from the headers and the peer address
//!    ([`Propagator::extract_op`], with the route's operation label), and puts a
//!    [`RequestContext`] into the request's extensions;
//! 2. runs the inner service's future until it completes or the context is cancelled,
//!    whichever is first. The context's deadline (the deadline policy: the incoming
//!    `grpc-timeout` within the route's budget, [`ContextLayer::timeout_for`], else the
//!    budget; more only for trusted peers, never above `max_timeout`) is enforced here: past it the inner future is dropped
//!    and the response is `504 Gateway Timeout`, or, for a gRPC request (`content-type:
//!    application/grpc…`), a trailers-only `200` with `grpc-status: 4` (DEADLINE_EXCEEDED).
//!    A context cancelled at shutdown or born cancelled at pool exhaustion gets `503`
//!    (`grpc-status: 14` UNAVAILABLE / `8` RESOURCE_EXHAUSTED; any other cancel `503` /
//!    `1` CANCELLED). The same answer replaces whatever the handler returns once the context
//!    is cancelled (L4), and a response the handler marks with
//!    [`answer_cancelled`](super::answer_cancelled). HTTP answers carry an error body
//!    ([`ContextLayer::error_body`], by default JSON naming the cause);
//! 3. puts `x-request-id` on the response;
//! 4. hands the request context to the response body ([`ContextBody`]), which holds it until
//!    the body ends: a streamed body is produced under the request's context, its deadline
//!    included. Past the deadline (or at shutdown) a body still streaming fails with the
//!    context's error, which makes the server abort the response (HTTP/1 closes the
//!    connection, HTTP/2 resets the stream): the client sees a cut response, never a
//!    complete-looking one. A gRPC body (a server stream) is cut with trailers instead,
//!    `grpc-status` for the cause (`4` DEADLINE_EXCEEDED, `14` UNAVAILABLE, `1` CANCELLED),
//!    so that the client reads the status rather than a reset stream (L5);
//! 5. when the response future or the body is dropped before the end (the client went away,
//!    or a server-wide timeout dropped it), cancels the context with [`CLIENT_DISCONNECTED`],
//!    so every sub-operation watching it stops. After a complete response the context ends
//!    as a normal request does (`OwnerDropped`, not counted as a cancellation).
//!
//! Invariants (cited as **L1**..**L3**):
//!
//! - **L1** exactly one owner of the request's `CancelGuard` at a time: the response future,
//!   then the body. Whoever holds it when it is dropped before the end cancels with
//!   `CLIENT_DISCONNECTED` (`HANDLER_PANICKED` when dropped by a panic's unwinding). The end
//!   is what the server treats as the end, since it may drop the body without polling it
//!   again: the body's last frame, a trailers frame, `is_end_stream` or an exact
//!   `size_hint` of zero after a frame, or as many bytes sent as the response's
//!   `content-length` (else the body's exact `size_hint` when the response was made; hyper
//!   stops writing there); an error of the inner service or body ends it too. The end ends
//!   the context normally.
//! - **L2** a body that is already at its end (`is_end_stream`, e.g. an empty body) ends the
//!   context when the response is made: servers drop such a body without polling it, which
//!   must not read as a disconnect; so do a body of length zero, the response to a `HEAD`
//!   request and a `1xx`, `204` or `304` response, whose bodies are never sent. So does a response made when the context is already
//!   cancelled: the handler answered knowing (say, an error page), and its body is sent
//!   whole.
//! - **L4** a request whose context is cancelled before the handler's response head is ready
//!   gets the layer's answer for the cause, never the handler's: the inner future is
//!   dropped when the cancel comes first, and a response the handler returns with its
//!   context already cancelled (it noticed the cancel and answered anyway, say `200` with
//!   nothing done) is dropped and replaced, unless [`AfterCancel::HandlerAnswers`]. A
//!   response marked [`AnswerCancelled`] is replaced by the answer for its cause. The answer's
//!   body is the error body alone, sent whole; the context ends with the head.
//! - **L3** the body checks the context before each frame (one load) and, while the inner
//!   body is pending, waits on it ([`Context::cancelled_owned`](crate::Context::cancelled_owned)),
//!   so a cancel stops a body that streams without pause and one that is idle alike.
//! - **L5** the body of a gRPC request's response, cut by a cancel (L3), ends with a trailers
//!   frame carrying the cause's `grpc-status` and `grpc-message` (the status of L4's
//!   trailers-only answer), then nothing: the inner body is not polled again. The messages
//!   already sent stay sent; the status says the stream is incomplete.
//!
//! Per-route metrics come from the pool: the operation label chosen by
//! [`ContextLayer::op_for`] labels the context, so `ctxpool_contexts_created_total{op}`,
//! `ctxpool_contexts_cancelled_total{op,reason}` (deadline, explicit = client disconnected,
//! shutdown, exhausted) and the lifetime histogram are per route.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use ::http::header::{HeaderValue, CONTENT_TYPE};
use ::http::{Method, Request, Response, StatusCode, Uri};
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use super::{
    AnswerCancelled, Drain, Propagator, RequestContext, CLIENT_DISCONNECTED, HANDLER_PANICKED,
    X_REQUEST_ID,
};
use crate::{CancelGuard, CancelledOwned, Cause, ContextError, Op, Origin};

/// The error type of [`ContextBody`]: the inner body's error, or the context's
/// ([`ContextError`]) when it was cancelled while the body streamed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Chooses a request's operation label from its method and URI.
pub type OpFor = Arc<dyn Fn(&Method, &Uri) -> &'static Op + Send + Sync>;

/// Gives a request's route its deadline budget from its method and URI (`None`: the
/// configured `default_timeout`).
pub type TimeoutFor = Arc<dyn Fn(&Method, &Uri) -> Option<Duration> + Send + Sync>;

/// Makes the body of the layer's answer to a cancelled request from its cause and status
/// (`None`: an empty body). See [`ContextLayer::error_body`].
pub type ErrorBodyFor = Arc<dyn Fn(Cause, StatusCode) -> Option<ErrorBody> + Send + Sync>;

/// The body of the layer's HTTP answer to a cancelled request, and its content-type (gRPC
/// answers are trailers-only: no body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// The `content-type` header.
    pub content_type: HeaderValue,
    /// The body.
    pub bytes: Bytes,
}

/// The default error body: JSON naming the cause, `{"error":"<code>","message":"<text>"}`,
/// where the code is `deadline_exceeded`, `shutdown`, `pool_exhausted` or `cancelled`
/// (static text: nothing allocated).
///
/// ```
/// use ctxpool::http::default_error_body;
/// use ctxpool::Cause;
///
/// let body = default_error_body(Cause::Shutdown, http::StatusCode::SERVICE_UNAVAILABLE).unwrap();
/// assert_eq!(body.content_type, "application/json");
/// assert_eq!(&body.bytes[..], br#"{"error":"shutdown","message":"the server is shutting down"}"#);
/// ```
pub fn default_error_body(cause: Cause, _status: StatusCode) -> Option<ErrorBody> {
    Some(ErrorBody {
        content_type: HeaderValue::from_static("application/json"),
        bytes: Bytes::from_static(Why::of(Some(cause)).json.as_bytes()),
    })
}

/// What the layer does with a response the handler makes after the request's context was
/// cancelled. See [`ContextLayer::after_cancel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AfterCancel {
    /// The layer answers for the cause (`504`, `503`, gRPC's trailers-only status) whatever
    /// the handler returns: a handler that noticed the cancel and answered `200` anyway does
    /// not get its `200` sent. The default.
    #[default]
    LayerAnswers,
    /// A response the handler has ready is sent as it is, even after a cancel (the
    /// behaviour before this option): for handlers that answer cancellations themselves. A
    /// handler still pending when the context is cancelled is dropped and the layer answers,
    /// as with `LayerAnswers`.
    HandlerAnswers,
}

/// Finds a request's peer address (e.g. from axum's `ConnectInfo`).
pub type PeerOf = Arc<dyn Fn(&::http::Extensions) -> Option<IpAddr> + Send + Sync>;

/// A tower [`Layer`] giving every request a context.
///
/// Per request, the service extracts a request context from the headers and the peer
/// ([`Propagator::extract_op`], labelled by [`op_for`](ContextLayer::op_for)) and puts a
/// [`RequestContext`] into the request's extensions; runs the inner service until it answers
/// or the context is cancelled: past the deadline `504 Gateway Timeout` (a trailers-only
/// `grpc-status: 4` for gRPC), at shutdown or pool exhaustion `503`, with a JSON body naming
/// the cause ([`error_body`](ContextLayer::error_body)); a response the handler makes once
/// its context is cancelled is replaced by that answer ([`after_cancel`](ContextLayer::after_cancel));
/// echoes `x-request-id`;
/// and hands the context to the response body ([`ContextBody`]), which holds it until the
/// body ends. Dropping the response future or the body before the end cancels the context
/// with [`CLIENT_DISCONNECTED`].
///
/// ```
/// use ctxpool::http::{ContextLayer, Propagator};
/// use ctxpool::{Op, Pool};
///
/// static WORK: Op = Op::new("GET /work");
/// let pool = Pool::builder().build().unwrap();
/// let layer = ContextLayer::new(Propagator::new(&pool))
///     .op_for(|_method, uri| if uri.path() == "/work" { &WORK } else { &ctxpool::http::HTTP_REQUEST })
///     .peer_from(|ext| ext.get::<std::net::SocketAddr>().map(|a| a.ip()));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct ContextLayer {
    propagator: Propagator,
    op_for: Option<OpFor>,
    timeout_for: Option<TimeoutFor>,
    peer_of: Option<PeerOf>,
    /// What each request's future and body keep (one `Arc` clone per request).
    settings: Arc<Settings>,
}

/// The layer's settings a request needs after its handler: one `Arc`, held by the response
/// future and then by the body as the request's in-flight token (G1 in `drain.rs`).
#[derive(Clone)]
struct Settings {
    error_body: ErrorBodyFor,
    after_cancel: AfterCancel,
    drain: Option<Drain>,
}

impl std::fmt::Debug for ContextLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextLayer")
            .field("propagator", &self.propagator)
            .field("after_cancel", &self.settings.after_cancel)
            .field("drain", &self.settings.drain)
            .finish_non_exhaustive()
    }
}

impl ContextLayer {
    /// A layer extracting with `propagator`; the operation label is the propagator's and the
    /// peer is unknown (so `x-user-id` is never trusted) until set.
    pub fn new(propagator: Propagator) -> Self {
        ContextLayer {
            propagator,
            op_for: None,
            timeout_for: None,
            peer_of: None,
            settings: Arc::new(Settings {
                error_body: Arc::new(default_error_body),
                after_cancel: AfterCancel::LayerAnswers,
                drain: None,
            }),
        }
    }

    /// Labels each request's context with `f(method, uri)` (one label per route keeps the
    /// metrics' cardinality bounded: return a static `Op` per route, never one per path).
    pub fn op_for(
        mut self,
        f: impl Fn(&Method, &Uri) -> &'static Op + Send + Sync + 'static,
    ) -> Self {
        self.op_for = Some(Arc::new(f));
        self
    }

    /// Gives each request's route a deadline budget, `f(method, uri)` (`None`: the
    /// configured `default_timeout`, read per request so that a configuration update
    /// applies). The request's deadline is its incoming `grpc-timeout` when that is within
    /// the budget, else the budget; only a peer in `propagation.trusted_peers` (see
    /// [`peer_from`](ContextLayer::peer_from)) gets more, up to `max_timeout`. This is the
    /// deadline policy of [`Propagator::extract_route`]: a client can shorten a route's work,
    /// never stretch it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ctxpool::http::{ContextLayer, Propagator};
    ///
    /// let pool = ctxpool::Pool::builder().build().unwrap();
    /// let layer = ContextLayer::new(Propagator::new(&pool)).timeout_for(|_method, uri| {
    ///     // A slow report gets a minute; everything else the default timeout.
    ///     (uri.path() == "/report").then_some(Duration::from_secs(60))
    /// });
    /// # let _ = layer;
    /// ```
    pub fn timeout_for(
        mut self,
        f: impl Fn(&Method, &Uri) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.timeout_for = Some(Arc::new(f));
        self
    }

    /// What to do with a response the handler makes after the request's context was
    /// cancelled (default [`AfterCancel::LayerAnswers`]: the layer's answer for the cause
    /// replaces it).
    pub fn after_cancel(mut self, what: AfterCancel) -> Self {
        Arc::make_mut(&mut self.settings).after_cancel = what;
        self
    }

    /// Counts the requests in flight into `drain`, for a graceful shutdown
    /// ([`Drain::shutdown`]): each from the call until its context ends (its response body's
    /// end). Make `drain`'s root the parent of the request contexts
    /// ([`Drain::context`] as the propagator's parent), so that the shutdown cancels them.
    pub fn drain(mut self, drain: &Drain) -> Self {
        Arc::make_mut(&mut self.settings).drain = Some(drain.clone());
        self
    }

    /// The body of the layer's HTTP answer to a cancelled request, from its cause and status
    /// (default [`default_error_body`], JSON naming the cause; `None`: an empty body). gRPC
    /// answers are trailers-only and carry no body whatever this says.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use ctxpool::http::{ContextLayer, ErrorBody, Propagator};
    /// use http::HeaderValue;
    ///
    /// let pool = ctxpool::Pool::builder().build().unwrap();
    /// let layer = ContextLayer::new(Propagator::new(&pool)).error_body(|cause, status| {
    ///     Some(ErrorBody {
    ///         content_type: HeaderValue::from_static("text/plain"),
    ///         bytes: Bytes::from(format!("{status}: {cause:?}\n")),
    ///     })
    /// });
    /// # let _ = layer;
    /// ```
    pub fn error_body(
        mut self,
        f: impl Fn(Cause, StatusCode) -> Option<ErrorBody> + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.settings).error_body = Arc::new(f);
        self
    }

    /// Reads the peer address from the request's extensions with `f` (needed for
    /// `x-user-id` from `trusted_peers`, and for their longer deadlines).
    pub fn peer_from(
        mut self,
        f: impl Fn(&::http::Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.peer_of = Some(Arc::new(f));
        self
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> ContextService<S> {
        ContextService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`ContextLayer`].
#[derive(Clone, Debug)]
pub struct ContextService<S> {
    inner: S,
    layer: ContextLayer,
}

pin_project_lite::pin_project! {
    /// The response future of [`ContextService`]: the inner service's future, raced against
    /// the request context, which it owns until the response head is ready (then the body
    /// holds it, L1). Not boxed: it is the inner future plus a few words, with no
    /// allocation of its own.
    ///
    /// Dropped before it completes, the client went away (or the handler panicked): the
    /// context is cancelled with [`CLIENT_DISCONNECTED`] (or [`HANDLER_PANICKED`]).
    pub struct ResponseFuture<F> {
        // The handler's future; `None` if the context was cancelled before the call, and
        // once it completed or was cut off (dropped at once: the handler's work stops).
        #[pin]
        inner: Option<F>,
        #[pin]
        cancelled: CancelledOwned,
        // What the response is made with; taken when it is.
        rest: Option<Rest>,
    }
}

/// What [`ResponseFuture`] keeps for the response.
struct Rest {
    owner: Owner,
    ctx: crate::Context,
    grpc: bool,
    head: bool,
    request_id: HeaderValue,
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body + Default,
    ResBody::Data: From<Bytes>,
{
    type Output = Result<Response<ContextBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The inner future first, so a response that is ready wins over a deadline that
        // passed at the same time.
        let result = match this.inner.as_mut().as_pin_mut() {
            Some(fut) => match fut.poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending if this.cancelled.poll(cx).is_ready() => None,
                Poll::Pending => return Poll::Pending,
            },
            None => None,
        };
        this.inner.set(None);
        let Rest {
            mut owner,
            ctx,
            grpc,
            head,
            request_id,
        } = this
            .rest
            .take()
            .expect("ResponseFuture polled after it completed");
        // L1: the guard passes to the body, or the context ends here.
        let guard = owner.0.take().expect("owner taken once");
        let flight = owner.1.take().expect("owner taken once");
        let settings = &*flight.0;
        // L4: the layer answers for a cancelled context whatever the handler made (unless
        // told otherwise), and for a response the handler marked `AnswerCancelled`.
        let answer = match &result {
            None => Some(ctx.cause()),
            Some(Ok(resp)) => match ctx.cause() {
                Some(c) if settings.after_cancel == AfterCancel::LayerAnswers => Some(Some(c)),
                _ => resp
                    .extensions()
                    .get::<AnswerCancelled>()
                    .map(|a| Some(a.0)),
            },
            Some(Err(_)) => None,
        };
        let mut resp = match (result, answer) {
            (Some(Err(e)), _) => {
                drop(guard);
                return Poll::Ready(Err(e));
            }
            (_, Some(cause)) => {
                drop(guard);
                cancelled_response(cause, grpc, head, &settings.error_body)
            }
            (None, None) => unreachable!("a cancelled context has a cause"),
            (Some(Ok(resp)), None) if head || bodiless(resp.status()) => {
                drop(guard);
                resp.map(ContextBody::ended)
            }
            (Some(Ok(resp)), None) => {
                let length = content_length(resp.headers());
                resp.map(|body| ContextBody::new(body, guard, flight, length, grpc))
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID, request_id);
        Poll::Ready(Ok(resp))
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Default + Send + 'static,
    ResBody::Data: From<Bytes>,
{
    type Response = Response<ContextBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let peer = layer.peer_of.as_ref().and_then(|f| f(req.extensions()));
        let op = match &layer.op_for {
            Some(f) => f(req.method(), req.uri()),
            None => layer.propagator.shared.op,
        };
        let budget = layer
            .timeout_for
            .as_ref()
            .and_then(|f| f(req.method(), req.uri()));
        let grpc = is_grpc(&req);
        // L2: the server sends no body for HEAD, and drops it unpolled.
        let head = req.method() == Method::HEAD;
        let (guard, meta) = layer
            .propagator
            .extract_route(req.headers(), peer, op, budget)
            .into_shared();
        // The incoming value when there was one (a reference to its bytes), else cut from
        // this thread's chunk (`value.rs` V3): no allocation of its own.
        let request_id = meta
            .raw_request_id()
            .cloned()
            .unwrap_or_else(|| super::value::header_value(meta.request_id().as_str()));
        let ctx = guard.context();
        req.extensions_mut().insert(RequestContext::from_shared(
            ctx.clone(),
            meta,
            layer.propagator.clone(),
        ));
        // The clone that was driven to readiness serves this request (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = (!ctx.is_cancelled()).then(|| inner.call(req));
        // Moved into the future, so that dropping it even before its first poll counts as
        // the client going away.
        let owner = Owner(Some(guard), Some(InFlight::enter(&layer.settings)));
        ResponseFuture {
            inner: fut,
            cancelled: ctx.cancelled_owned(),
            rest: Some(Rest {
                owner,
                ctx,
                grpc,
                head,
                request_id,
            }),
        }
    }
}

/// Statuses whose responses have no body: servers send none and drop it unpolled (L2).
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// The response's `content-length`, when it is one valid number (what the server will
/// write, and then stop).
fn content_length(headers: &::http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(::http::header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// Owns the request's `CancelGuard` while the response future or body is alive; dropped
/// before the end, the client went away (L1), or the handler panicked.
struct Owner(Option<CancelGuard>, Option<InFlight>);

impl Owner {
    /// The response is complete: the context ends normally (L1), and the request leaves
    /// the drain's count after it.
    fn finish(&mut self) {
        drop(self.0.take());
        drop(self.1.take());
    }
}

/// A request in flight: the layer's settings, and a place in their drain's count (if any)
/// until dropped (after the request's context ends: `Owner` drops its fields in order).
struct InFlight(Arc<Settings>);

impl InFlight {
    fn enter(settings: &Arc<Settings>) -> Self {
        if let Some(d) = &settings.drain {
            d.enter();
        }
        InFlight(settings.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(d) = &self.0.drain {
            d.leave();
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`ContextService`]: the inner body, holding the request context
    /// until it ends.
    ///
    /// The end is the inner body's last frame, `is_end_stream` after a frame, all bytes of
    /// an exact `size_hint`, or an error: the context then ends normally. Dropped before
    /// the end (the client went away), the body cancels the context with
    /// [`CLIENT_DISCONNECTED`]. A cancel while it streams (deadline, shutdown) fails the next
    /// poll with the context's error, so the server aborts the response. A body already at
    /// its end, the body of a `HEAD` response, and one made after the context was cancelled
    /// hold nothing: their context ends with the response head.
    ///
    /// Its error is the inner body's, or the context's [`ContextError`] when the context
    /// was cancelled (deadline, shutdown) while the body streamed.
    ///
    /// It is not `Unpin` (it waits on the context with a waiter linked by address, without
    /// allocating): servers pin their bodies; to poll one by hand, `Box::pin` it.
    pub struct ContextBody<B> {
        #[pin]
        inner: B,
        // Set while the context is held and may still be cancelled (L3).
        #[pin]
        cancelled: Option<CancelledOwned>,
        owner: Owner,
        // Bytes of data sent, against `total` (L1).
        sent: u64,
        // The body's length as the server knows it when it starts sending: the response's
        // `content-length`, else the inner body's exact `size_hint` (which is what is *left*
        // once frames go out, so it is read once, here).
        total: Option<u64>,
        // The layer's error body, sent before anything else (L4).
        error: Option<Bytes>,
        // A gRPC response: a cancel ends it with trailers (L5).
        grpc: bool,
        // Cut with trailers (L5): nothing more is sent.
        cut: bool,
    }
}

impl<B: Body> ContextBody<B> {
    /// `inner`, holding `guard` until it ends (L1, L2); `content_length` is the response's
    /// header, if any.
    fn new(
        inner: B,
        guard: CancelGuard,
        flight: InFlight,
        content_length: Option<u64>,
        grpc: bool,
    ) -> Self {
        let total = content_length.or_else(|| inner.size_hint().exact());
        if inner.is_end_stream() || total == Some(0) || guard.context().is_cancelled() {
            // L2: nothing will be polled, or the handler answered knowing the context was
            // cancelled (an error page): the context ends with the response head, then the
            // request leaves the drain's count.
            drop(guard);
            drop(flight);
            return ContextBody::ended(inner);
        }
        ContextBody {
            cancelled: Some(guard.context().cancelled_owned()),
            owner: Owner(Some(guard), Some(flight)),
            inner,
            sent: 0,
            total,
            error: None,
            grpc,
            cut: false,
        }
    }

    /// `inner`, with no context to hold (the context already ended).
    fn ended(inner: B) -> Self {
        ContextBody {
            inner,
            cancelled: None,
            owner: Owner(None, None),
            sent: 0,
            total: None,
            error: None,
            grpc: false,
            cut: false,
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ContextBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextBody")
            .field("inner", &self.inner)
            .field("holds_context", &self.owner.0.is_some())
            .field("sent", &self.sent)
            .finish()
    }
}

impl<B> Body for ContextBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        // L4: the layer's error body is the whole body (`inner` is an empty default).
        if let Some(data) = this.error.take() {
            return Poll::Ready(Some(Ok(Frame::data(data.into()))));
        }
        // L5: after the trailers, nothing.
        if *this.cut {
            return Poll::Ready(None);
        }
        // Set exactly while the owner holds the guard.
        let Some(err) = this
            .cancelled
            .as_ref()
            .as_pin_ref()
            .map(|c| c.context().err())
        else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        // L3: a cancel stops a body that never pauses.
        if let Some(err) = err {
            return Poll::Ready(Some(cut(
                this.cancelled,
                this.owner,
                this.cut,
                *this.grpc,
                err,
            )));
        }
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.sent = this.sent.saturating_add(data.remaining() as u64);
                }
                // L1: the end as the server sees it, which may not poll again: after trailers,
                // after the announced length (hyper stops writing there), or when the body
                // says so.
                if frame.is_trailers()
                    || this.total.is_some_and(|n| *this.sent >= n)
                    || this.inner.is_end_stream()
                    || this.inner.size_hint().exact() == Some(0)
                {
                    this.cancelled.set(None);
                    this.owner.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                // The end, or the body's own error: either way the context ends normally.
                this.cancelled.set(None);
                this.owner.finish();
                Poll::Ready(other.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                // L3: woken by a cancel while the inner body waits.
                let err = match this.cancelled.as_mut().as_pin_mut() {
                    Some(mut c) => match c.as_mut().poll(cx) {
                        Poll::Ready(()) => c.context().err(),
                        Poll::Pending => None,
                    },
                    None => None,
                };
                if let Some(err) = err {
                    return Poll::Ready(Some(cut(
                        this.cancelled,
                        this.owner,
                        this.cut,
                        *this.grpc,
                        err,
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.cut || (self.error.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.error {
            Some(data) => SizeHint::with_exact(data.len() as u64),
            None => self.inner.size_hint(),
        }
    }
}

/// The body's last frame when its context was cancelled while it streamed (L3): the
/// context's error, or for gRPC the cause's trailers (L5). The context ends either way.
fn cut<D>(
    mut cancelled: Pin<&mut Option<CancelledOwned>>,
    owner: &mut Owner,
    cut: &mut bool,
    grpc: bool,
    err: ContextError,
) -> Result<Frame<D>, BoxError> {
    let cause = cancelled
        .as_ref()
        .as_pin_ref()
        .and_then(|c| c.context().cause());
    cancelled.set(None);
    owner.finish();
    if !grpc {
        return Err(Box::new(err));
    }
    *cut = true;
    let why = Why::of(cause);
    let mut trailers = ::http::HeaderMap::with_capacity(2);
    trailers.insert("grpc-status", HeaderValue::from_static(why.grpc_status));
    trailers.insert("grpc-message", HeaderValue::from_static(why.message));
    Ok(Frame::trailers(trailers))
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(guard) = self.0.take() {
            let reason = if std::thread::panicking() {
                HANDLER_PANICKED
            } else {
                CLIENT_DISCONNECTED
            };
            guard.cancel(reason);
        }
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Why a request was cancelled, as the layer answers it.
pub(crate) struct Why {
    pub(crate) grpc_status: &'static str,
    pub(crate) message: &'static str,
    json: &'static str,
}

impl Why {
    pub(crate) fn of(cause: Option<Cause>) -> Why {
        match cause {
            Some(c) if c.error() == ContextError::DeadlineExceeded => Why {
                grpc_status: "4",
                message: "deadline exceeded",
                json: r#"{"error":"deadline_exceeded","message":"the request's deadline passed before its response was ready"}"#,
            },
            Some(c) if c.origin() == Origin::Shutdown => Why {
                grpc_status: "14",
                message: "server shutting down",
                json: r#"{"error":"shutdown","message":"the server is shutting down"}"#,
            },
            Some(c) if c.origin() == Origin::PoolExhausted => Why {
                grpc_status: "8",
                message: "request contexts exhausted",
                json: r#"{"error":"pool_exhausted","message":"the server is overloaded: request contexts exhausted"}"#,
            },
            _ => Why {
                grpc_status: "1",
                message: "request cancelled",
                json: r#"{"error":"cancelled","message":"the request was cancelled"}"#,
            },
        }
    }
}

/// The layer's answer for a request cancelled with `cause` before its response was ready
/// (or marked [`AnswerCancelled`] by its handler), L4: `504`/`503` with the configured error
/// body (none for `HEAD`), or for gRPC a trailers-only response (HTTP `200`, the status in
/// the headers).
fn cancelled_response<B: Body + Default>(
    cause: Option<Cause>,
    grpc: bool,
    head: bool,
    error_body: &ErrorBodyFor,
) -> Response<ContextBody<B>> {
    let why = Why::of(cause);
    let mut resp = Response::new(ContextBody::ended(B::default()));
    if grpc {
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static(why.grpc_status));
        h.insert("grpc-message", HeaderValue::from_static(why.message));
        return resp;
    }
    let status = cause.map_or(StatusCode::SERVICE_UNAVAILABLE, super::status_for);
    *resp.status_mut() = status;
    let body = cause.and_then(|c| error_body(c, status));
    if let Some(body) = body {
        resp.headers_mut().insert(CONTENT_TYPE, body.content_type);
        resp.headers_mut().insert(
            ::http::header::CONTENT_LENGTH,
            HeaderValue::from(body.bytes.len()),
        );
        if !head && !body.bytes.is_empty() {
            resp.body_mut().error = Some(body.bytes);
        }
    }
    resp
}
