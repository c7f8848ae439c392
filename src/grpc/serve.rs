//! The gRPC server ([`serve`]): tonic routes behind [`ContextLayer`], served by hyper's
//! HTTP/2 server, with no `grpc-timeout` timer besides the request context's deadline.
//!
//! Invariants:
//!
//! - S1. Every accepted connection is watched by the [`GracefulShutdown`] before the accept
//!   loop looks at `shutdown` again: none escapes the graceful shutdown.
//! - S2. No accept error but the listener's own failure ends the loop (see [`serve`]); the
//!   graceful shutdown runs on every way out of the loop.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::http::BoxError;

#[cfg(doc)]
use crate::http::{ContextLayer, Drain};

/// How long [`serve`] waits before accepting again after an accept error that is not the
/// connection's own: a resource limit (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) frees up as
/// connections close, not by retrying at once.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves gRPC over HTTP/2 on `listener` with `service` until `shutdown` completes, then
/// shuts down gracefully.
///
/// **Why not tonic's `transport::Server`.** It wraps every layer it is given in a
/// `grpc-timeout` timer of its own, outside the layers, which answers `CANCELLED` ("Timeout
/// expired") and drops the request's future at the very instant the context's deadline
/// fires. Whichever is polled first answers: a deadline comes back `DEADLINE_EXCEEDED` or
/// `CANCELLED`, and the server-side cause may read `client disconnected` (the layer saw its
/// future dropped). `serve` has no timer of its own: the request context's deadline is the
/// only one, so a call past it is answered `DEADLINE_EXCEEDED` every time, and its context
/// ends with `DeadlineExceeded`.
///
/// `service` is typically `ContextLayer::new(..).layer(tonic::service::Routes::new(svc))`.
/// Per connection: `TCP_NODELAY` is set, and each request gets the peer's [`SocketAddr`] in
/// its extensions, which the layer reads with
/// `.peer_from(|ext| ext.get::<SocketAddr>().map(|a| a.ip()))` (for `trusted_peers`: their
/// `x-user-id` and longer deadlines). Each call gets a clone of `service`.
///
/// **Shutdown.** When `shutdown` completes, `serve` stops accepting (the listener is
/// dropped), tells every open connection to finish (HTTP/2 `GOAWAY`: no new streams, the
/// ones in flight go on), and returns once every connection has closed. A call in flight is
/// not cut by `serve`: it ends on its own, or by its context. To bound the wait, run
/// [`Drain::shutdown`] beside it, started from the same signal (the layer built with
/// [`ContextLayer::drain`]): the calls in flight get the grace period, then their contexts
/// are cancelled with `Shutdown` and the layer answers them `UNAVAILABLE` (a server stream
/// ends with `grpc-status: 14` in its trailers); their connections then close, and `serve`
/// returns. Without a drain, `serve` waits for the slowest call.
///
/// **Accept errors.** Errors of the connection being accepted (`ECONNABORTED`,
/// `ECONNRESET`, `ECONNREFUSED`, `EINTR`, `EPERM`, `ETIMEDOUT`) are skipped at once. Errors of
/// the listener itself (`EINVAL`, a socket that is not listening; `EOPNOTSUPP`) end the
/// accept loop: open connections are shut down as above and `serve` returns the error. Any
/// other error (a resource limit: `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) does not end the
/// server: it accepts again after [`ACCEPT_BACKOFF`] (while still watching `shutdown`).
/// Nothing is logged. Errors of a connection after it is accepted (a reset, a protocol
/// error) end that connection only.
///
/// `shutdown`'s output is ignored. Needs a tokio runtime (connections are spawned tasks).
///
/// ```no_run
/// use std::net::SocketAddr;
/// use std::time::Duration;
/// use ctxpool::http::{ContextLayer, Drain, Propagator};
/// use ctxpool::Pool;
/// use tower::Layer;
///
/// # #[derive(Clone)]
/// # struct MyService;
/// # impl tonic::server::NamedService for MyService { const NAME: &'static str = "my.Service"; }
/// # impl tower::Service<http::Request<tonic::body::Body>> for MyService {
/// #     type Response = http::Response<tonic::body::Body>;
/// #     type Error = std::convert::Infallible;
/// #     type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
/// #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
/// #         std::task::Poll::Ready(Ok(()))
/// #     }
/// #     fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
/// #         std::future::ready(Ok(tonic::Status::unimplemented("").into_http()))
/// #     }
/// # }
/// # fn main() { let _ = run(); }
/// # async fn run() -> std::io::Result<()> {
/// let pool = Pool::builder().build().unwrap();
/// let drain = Drain::new(&pool);
/// let propagator = Propagator::builder(&pool).parent(drain.context()).build();
/// let layer = ContextLayer::new(propagator)
///     .peer_from(|ext| ext.get::<SocketAddr>().map(|a| a.ip()))
///     .drain(&drain);
/// // `MyService`: a tonic-generated server (`MyServiceServer::new(..)`), or any named service.
/// let service = layer.layer(tonic::service::Routes::new(MyService));
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
/// let shutdown = async move {
///     let _ = tokio::signal::ctrl_c().await;
///     // The calls in flight get 5 s, then `UNAVAILABLE`; `serve` returns when their
///     // connections have closed.
///     tokio::spawn(async move { drain.shutdown(Duration::from_secs(5)).await });
/// };
/// ctxpool::grpc::serve(listener, service, shutdown).await
/// # }
/// ```
pub async fn serve<S, B, F>(listener: TcpListener, service: S, shutdown: F) -> io::Result<()>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    F: Future,
{
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let result = loop {
        // `shutdown` first: once it has completed it is never polled again (the loop ends).
        let accepted = poll_fn(|cx| match shutdown.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => listener.poll_accept(cx).map(Some),
        });
        let (io, peer) = match accepted.await {
            None => break Ok(()),
            Some(Ok(a)) => a,
            Some(Err(e)) => match Accept::of(&e) {
                Accept::Skip => continue,
                Accept::Fatal => break Err(e),
                Accept::Backoff => {
                    let mut pause = std::pin::pin!(tokio::time::sleep(ACCEPT_BACKOFF));
                    let stop = poll_fn(|cx| match shutdown.as_mut().poll(cx) {
                        Poll::Ready(_) => Poll::Ready(true),
                        Poll::Pending => pause.as_mut().poll(cx).map(|()| false),
                    });
                    if stop.await {
                        break Ok(());
                    }
                    continue;
                }
            },
        };
        // S1: watched before the next look at `shutdown`.
        let conn = connection(&graceful, io, peer, service.clone());
        tokio::spawn(conn);
    };
    // S2: on every way out. No new connections from here...
    drop(listener);
    // ... and every open one is told to finish its streams and awaited.
    graceful.shutdown().await;
    result
}

/// One connection, watched by `graceful` (S1).
fn connection<S, B>(
    graceful: &GracefulShutdown,
    io: TcpStream,
    peer: SocketAddr,
    service: S,
) -> impl Future<Output = ()> + Send + 'static
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Small messages must not wait for Nagle's algorithm; a failure here only costs latency.
    let _ = io.set_nodelay(true);
    let svc = TowerToHyperService::new(WithPeer {
        inner: service,
        peer,
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc);
    let conn = graceful.watch(conn);
    async move {
        // A connection's error (a reset, a protocol error) ends that connection only.
        let _ = conn.await;
    }
}

/// What an accept error means for the loop.
enum Accept {
    /// The connection's own: accept the next one at once.
    Skip,
    /// The listener's: stop.
    Fatal,
    /// Anything else (a resource limit): wait [`ACCEPT_BACKOFF`], then accept again.
    Backoff,
}

impl Accept {
    fn of(e: &io::Error) -> Accept {
        use io::ErrorKind::*;
        match e.kind() {
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
            | PermissionDenied | TimedOut => Accept::Skip,
            InvalidInput | Unsupported => Accept::Fatal,
            _ => Accept::Backoff,
        }
    }
}

/// The tower service of a connection: puts the peer's address into each request's
/// extensions and tonic's body around hyper's.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S, B> tower_service::Service<http::Request<Incoming>> for WithPeer<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Incoming>) -> S::Future {
        req.extensions_mut().insert(self.peer);
        self.inner.call(req.map(tonic::body::Body::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors() {
        let kind = |k| Accept::of(&io::Error::from(k));
        assert!(matches!(
            kind(io::ErrorKind::ConnectionAborted),
            Accept::Skip
        ));
        assert!(matches!(kind(io::ErrorKind::Interrupted), Accept::Skip));
        assert!(matches!(kind(io::ErrorKind::InvalidInput), Accept::Fatal));
        assert!(matches!(kind(io::ErrorKind::OutOfMemory), Accept::Backoff));
        #[cfg(target_os = "linux")]
        assert!(matches!(
            Accept::of(&io::Error::from_raw_os_error(libc::EMFILE)),
            Accept::Backoff
        ));
    }
}
