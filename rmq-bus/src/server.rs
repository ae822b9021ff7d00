//! [`Microservice`]: consumes queues and runs the handler of each message's pattern, reconnecting
//! by itself when the broker goes away.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::RmqOptions;
use crate::dispatch::{Policy, Router, dispatch};
use crate::error::{Error, Result};
use crate::handler::{Controller, HandlerFn, IntoMessageRoute, IntoRoute, Route};
use crate::interceptor::{Interceptor, wrap};
use crate::pattern::Pattern;
use crate::retry::RetryPolicy;
use crate::transport::{self, Source};

/// Default time in-flight handlers get to finish at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A service that consumes one or more queues and routes each message by pattern to its handler,
/// as NestJS's `app.connectMicroservice(rmqService.getOptions(...))`.
///
/// Handlers run concurrently, up to each queue's prefetch, on that queue's consumer task (so work
/// that computes for long belongs in `tokio::task::spawn_blocking`). Registration is explicit:
/// controllers, `#[event_pattern]` functions and closures are added here, and a pattern
/// registered twice is an error at start. When the connection is lost the microservice
/// reconnects (trying every broker URI, with backoff), declares its topology again and resumes
/// consuming; messages that were in flight are redelivered by the broker.
///
/// ```no_run
/// use rmq_bus::{Microservice, Payload, RmqContext, RmqOptions};
///
/// # async fn demo() -> rmq_bus::Result<()> {
/// Microservice::new(RmqOptions::from_env("BILLING")?)
///     .on_event("order_created", |Payload(order): Payload<serde_json::Value>, ctx: RmqContext| async move {
///         println!("billing {order}");
///         ctx.ack().await
///     })
///     .run()
///     .await
/// # }
/// ```
#[must_use = "a Microservice does nothing until run"]
pub struct Microservice {
    queues: Vec<RmqOptions>,
    routes: Vec<Route>,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Microservice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microservice")
            .field("queues", &self.queues)
            .field("routes", &self.routes)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl Microservice {
    /// A microservice consuming the queue of `options`.
    pub fn new(options: RmqOptions) -> Self {
        Self {
            queues: vec![options],
            routes: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// Consumes another queue too (on the broker of the first), with its own prefetch, ack mode,
    /// retry policy and dead-letter queue. Every handler serves every queue.
    pub fn queue(mut self, options: RmqOptions) -> Self {
        self.queues.push(options);
        self
    }

    /// Registers every handler of a controller (an impl block marked `#[controller]`).
    pub fn controller<C: Controller>(mut self, controller: C) -> Self {
        self.routes.extend(Arc::new(controller).routes());
        self
    }

    /// Registers a free `async fn` marked `#[event_pattern]` or `#[message_pattern]`:
    /// `.handler::<on_order_created>()`.
    pub fn handler<H: HandlerFn>(mut self) -> Self {
        self.routes.push(H::route());
        self
    }

    /// Registers a closure or function for event `pattern`; its arguments are extractors
    /// ([`Payload<T>`](crate::Payload), [`RmqContext`](crate::RmqContext)).
    pub fn on_event<Args, H: IntoRoute<Args>>(
        mut self,
        pattern: impl Into<Pattern>,
        handler: H,
    ) -> Self {
        self.routes.push(handler.into_route(pattern.into()));
        self
    }

    /// Registers a closure or function answering requests for `pattern` (NestJS
    /// `@MessagePattern`); it returns `Result<T: Serialize, E: Into<RpcError>>`.
    pub fn on_message<Args, H: IntoMessageRoute<Args>>(
        mut self,
        pattern: impl Into<Pattern>,
        handler: H,
    ) -> Self {
        self.routes.push(handler.into_message_route(pattern.into()));
        self
    }

    /// Registers a prepared route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Wraps every handler registered **so far** with `interceptor` (as axum's `layer`): call it
    /// last to wrap all of them, or between registrations to wrap only some controllers. An
    /// interceptor added later runs outside those added before.
    pub fn intercept<I: Interceptor>(mut self, interceptor: I) -> Self {
        let interceptor: Arc<dyn Interceptor> = Arc::new(interceptor);
        self.routes = self
            .routes
            .into_iter()
            .map(|route| wrap(route, interceptor.clone()))
            .collect();
        self
    }

    /// Gives every handler registered **so far** that has no retry policy yet this one: call it
    /// right after a controller or handler to set theirs. Handlers without one use their
    /// queue's ([`RmqOptions::retry`]), then its [`FailurePolicy`](crate::FailurePolicy).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        for route in &mut self.routes {
            route.retry.get_or_insert_with(|| policy.clone());
        }
        self
    }

    /// Sets how long in-flight handlers may run after shutdown begins (default 30 s). Messages
    /// of handlers still running then are returned to their queue.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Runs until Ctrl-C or SIGTERM, then drains and closes.
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes, then drains and closes.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.start().await?.shutdown_on(shutdown).await
    }

    /// Connects, declares and starts consuming; returns once every consumer is running. The
    /// first connection is tried for the queue's
    /// [`reconnect_timeout`](RmqOptions::reconnect_timeout), so that a wrong URI shows at start.
    pub async fn start(self) -> Result<RunningMicroservice> {
        let router = Arc::new(Router::new(self.routes)?);
        let first = self
            .queues
            .first()
            .ok_or_else(|| Error::Config("a microservice needs a queue".into()))?;
        for options in &self.queues {
            options.validate()?;
        }
        let patience = first.reconnect_wait();
        let shared = Arc::new(Shared {
            queues: self.queues,
            router,
            drain: self.drain_timeout,
        });
        let session = Session::open(&shared, Some(patience)).await?;
        let (stop, stopping) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(shared, session, stopping));
        Ok(RunningMicroservice { stop, supervisor })
    }
}

/// What every session of a microservice consumes and routes to.
struct Shared {
    queues: Vec<RmqOptions>,
    router: Arc<Router>,
    drain: Duration,
}

/// A started [`Microservice`]; shut it down with [`shutdown`](Self::shutdown).
#[derive(Debug)]
#[must_use = "dropping it stops the microservice at once, without draining; keep it and call shutdown"]
pub struct RunningMicroservice {
    stop: watch::Sender<bool>,
    supervisor: JoinHandle<Result<()>>,
}

impl RunningMicroservice {
    /// Stops consuming, lets in-flight handlers finish (up to the drain timeout), settles what
    /// they left, and closes the connection. Unsettled messages go back to their queues.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.supervisor
            .await
            .map_err(|e| Error::Config(format!("the microservice task ended abnormally: {e}")))?
    }

    /// Runs until `signal` completes, then shuts down.
    pub async fn shutdown_on(mut self, signal: impl Future<Output = ()>) -> Result<()> {
        tokio::select! {
            () = signal => self.shutdown().await,
            ended = &mut self.supervisor => {
                ended.map_err(|e| Error::Config(format!("the microservice task ended abnormally: {e}")))?
            }
        }
    }
}

/// Keeps a session running: when one of its consumers stops by itself (connection lost, channel
/// closed, consumer cancelled), closes the rest and opens a new session, for as long as it takes.
async fn supervise(
    shared: Arc<Shared>,
    mut session: Session,
    mut stopping: watch::Receiver<bool>,
) -> Result<()> {
    loop {
        tokio::select! {
            () = stop_requested(&mut stopping) => return session.close().await,
            ended = session.consumers.join_next() => match ended {
                Some(Ok(Err(error))) => tracing::error!(%error, "reconnecting"),
                Some(Err(join)) => tracing::error!(error = %join, "a consumer task ended abnormally; reconnecting"),
                _ => {}
            },
        }
        // The others' deliveries return to their queues when the connection goes: cut them
        // short rather than drain, so that recovery does not wait for the drain timeout.
        session.abandon().await;
        session = loop {
            let opened = tokio::select! {
                () = stop_requested(&mut stopping) => return Ok(()),
                opened = Session::open(&shared, None) => opened,
            };
            match opened {
                Ok(session) => break session,
                // Not an outage (connecting retries for ever) but, say, a declaration refused.
                Err(error) => {
                    tracing::error!(%error, "could not restore the consumers; retrying in 5 s");
                    tokio::select! {
                        () = stop_requested(&mut stopping) => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        };
        tracing::info!("consumers restored");
    }
}

/// One connection and its consumers.
struct Session {
    transport: Option<transport::Session>,
    stop: watch::Sender<bool>,
    consumers: JoinSet<Result<()>>,
}

impl Session {
    /// Connects (`patience`: how long to keep trying; `None`, for ever), declares and consumes.
    async fn open(shared: &Arc<Shared>, patience: Option<Duration>) -> Result<Self> {
        let first = shared
            .queues
            .first()
            .ok_or_else(|| Error::Config("a microservice needs a queue".into()))?;
        let transport = transport::Session::connect(first, patience).await?;
        let (stop, stopping) = watch::channel(false);
        let mut consumers = JoinSet::new();
        for options in &shared.queues {
            let source = transport.consume(options, &shared.router).await?;
            tracing::info!(
                queue = options.queue(),
                prefetch = options.prefetch_count(),
                "consuming"
            );
            let consumer = QueueConsumer {
                source,
                policy: Arc::new(Policy::of(options)),
                prefetch: options.prefetch_count().into(),
            };
            consumers.spawn(consumer.run(shared.router.clone(), stopping.clone(), shared.drain));
        }
        Ok(Self {
            transport: Some(transport),
            stop,
            consumers,
        })
    }

    /// Stops the consumers at once (their handlers too) and closes the connection.
    async fn abandon(mut self) {
        self.consumers.shutdown().await;
        if let Some(transport) = self.transport.take() {
            transport.close().await;
        }
    }

    /// Stops the consumers (draining in-flight handlers) and closes the connection.
    async fn close(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        let mut result = Ok(());
        while let Some(joined) = self.consumers.join_next().await {
            if let Ok(Err(error @ Error::DrainTimeout(_))) = joined {
                result = Err(error);
            }
        }
        if let Some(transport) = self.transport.take() {
            transport.close().await;
        }
        tracing::info!("consumers stopped");
        result
    }
}

/// One queue's consumer and how its deliveries are disposed of.
struct QueueConsumer {
    source: Source,
    policy: Arc<Policy>,
    prefetch: usize,
}

impl QueueConsumer {
    /// Runs handlers for deliveries, at most `prefetch` at once, until told to stop (then drains
    /// them) or the consumer dies (then lets them finish on their own: their messages come back
    /// anyway).
    ///
    /// The handlers run concurrently on this task rather than as a task each: a task per
    /// delivery costs a spawn, a wake-up across threads and a copy of the handler's future, which
    /// was a fifth of the CPU time per message. Handlers that compute for long belong in
    /// `tokio::task::spawn_blocking`, as anywhere in async code.
    async fn run(
        mut self,
        router: Arc<Router>,
        mut stop: watch::Receiver<bool>,
        drain: Duration,
    ) -> Result<()> {
        let mut handlers = FuturesUnordered::new();
        let stopped = stop_requested(&mut stop);
        tokio::pin!(stopped);
        let ended = loop {
            let room = handlers.len() < self.prefetch;
            tokio::select! {
                biased;
                () = &mut stopped => break Ok(()),
                Some(()) = handlers.next(), if !handlers.is_empty() => {}
                delivery = self.source.next(), if room => match delivery {
                    Ok(inbound) => {
                        handlers.push(dispatch(router.clone(), self.policy.clone(), inbound));
                    }
                    Err(reason) => {
                        break Err(Error::ConsumerStopped {
                            queue: self.source.queue().to_owned(),
                            reason,
                        });
                    }
                },
            }
        };
        if ended.is_err() {
            // The consumer is gone: its deliveries return to the queue whatever the handlers do.
            if !handlers.is_empty() {
                tokio::spawn(async move { while handlers.next().await.is_some() {} });
            }
            return ended;
        }
        self.source.cancel().await;
        let drained =
            tokio::time::timeout(drain, async { while handlers.next().await.is_some() {} }).await;
        let left = handlers.len();
        // Closing first returns every unsettled message to the queue, so handlers cut short
        // below cannot settle theirs by the failure policy.
        self.source.close().await;
        drop(handlers);
        match drained {
            Err(_) => Err(Error::DrainTimeout(left)),
            Ok(()) => Ok(()),
        }
    }
}

/// Resolves once a stop is asked for (or the asker is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
