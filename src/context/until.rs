//! [`Context::run_until_cancelled`]: a future raced against the context's cancellation.

use core::future::Future;
use core::pin::pin;
use core::task::Poll;

use super::Context;
use crate::ContextError;

impl Context {
    /// Runs `fut` until it completes or this context is cancelled (its deadline included),
    /// whichever comes first; on cancellation `fut` is dropped unfinished and the context's
    /// error comes back (tokio-util's `CancellationToken::run_until_cancelled`, with the
    /// reason). When both are ready at one poll, the cancellation wins. Allocates nothing.
    ///
    /// ```
    /// use ctxpool::{Context, ContextError, Reason};
    ///
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// # rt.block_on(async {
    /// let guard = Context::background().with_cancel();
    /// let ctx = guard.context();
    /// assert_eq!(ctx.run_until_cancelled(async { 7 }).await, Ok(7));
    ///
    /// guard.cancel(Reason::Message("shutting down"));
    /// let never = std::future::pending::<()>();
    /// assert_eq!(ctx.run_until_cancelled(never).await, Err(ContextError::Canceled));
    /// # });
    /// ```
    pub async fn run_until_cancelled<F: Future>(&self, fut: F) -> Result<F::Output, ContextError> {
        let mut fut = pin!(fut);
        let mut cancelled = pin!(self.cancelled());
        core::future::poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(self.err().unwrap_or(ContextError::Canceled)));
            }
            fut.as_mut().poll(cx).map(Ok)
        })
        .await
    }
}
