//! Interceptors: code that runs around every handler of a microservice or controller (logging,
//! timing, authorisation, enrichment), in the spirit of NestJS interceptors.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::value::RawValue;

use super::{BodyCheck, BoxHandler, HandlerError, HandlerResult, Message, Route};
use crate::context::RmqContext;

/// The rest of the chain: the inner interceptors and the handler. Run it, or return without
/// running it to refuse the message (`Err(HandlerError::BadInput(..))` dead-letters it).
pub struct Next {
    message: Message,
    handler: BoxHandler,
}

impl fmt::Debug for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Next {
    /// The delivery's context: pattern, delivery info, headers.
    pub fn context(&self) -> &RmqContext {
        &self.message.ctx
    }

    /// The message data, as raw JSON; `Err` (bad input) when the body is not a JSON packet.
    pub fn data(&self) -> Result<&RawValue, HandlerError> {
        self.message.data()
    }

    /// Replaces the data the handler will see (enrichment).
    pub fn set_data(&mut self, data: Box<RawValue>) {
        self.message.data = Some(data);
    }

    /// Runs the rest of the chain.
    pub async fn run(self) -> HandlerResult {
        (self.handler)(self.message).await
    }
}

/// Wraps handlers. Implemented by any `Fn(Next) -> impl Future<Output = HandlerResult>`:
///
/// ```
/// use rmq_bus::handler::{HandlerResult, Next};
/// async fn timing(next: Next) -> HandlerResult {
///     let (pattern, started) = (next.context().pattern().to_owned(), std::time::Instant::now());
///     let result = next.run().await;
///     tracing::info!(%pattern, elapsed = ?started.elapsed(), ok = result.is_ok(), "handled");
///     result
/// }
/// # let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("q")).intercept(timing);
/// ```
pub trait Interceptor: Send + Sync + 'static {
    /// Handles the message, usually by calling `next.run()` with work before and after.
    fn intercept(&self, next: Next) -> BoxFuture<'static, HandlerResult>;
}

impl<F, Fut> Interceptor for F
where
    F: Fn(Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn intercept(&self, next: Next) -> BoxFuture<'static, HandlerResult> {
        Box::pin(self(next))
    }
}

/// `route` with `interceptor` around its handler.
pub(crate) fn wrap(route: Route, interceptor: Arc<dyn Interceptor>) -> Route {
    let inner = route.handler;
    let handler: BoxHandler = Arc::new(move |message| {
        interceptor.intercept(Next {
            message,
            handler: inner.clone(),
        })
    });
    // An interceptor may settle or refuse a message without running the handler, so the body is
    // decoded (and checked) before it runs.
    Route {
        handler,
        body_check: BodyCheck::Dispatcher,
        ..route
    }
}
