//! [`Microservice`]: what a service registers (controllers, handlers, interceptors, retry
//! policies) and the supervisor that keeps its consumers running, reconnecting by itself when
//! the broker goes away. What happens to each delivery is
//! the dispatcher's business.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{DEFAULT_DRAIN_TIMEOUT, RetryPolicy, RmqOptions};
use crate::dispatch::{Router, serve, stop_requested};
use crate::error::{Error, Result};
use crate::handler::{
    Controller, HandlerFn, Interceptor, IntoMessageRoute, IntoRoute, Route, wrap,
};
use crate::health::{ConnectionState, Health, HealthProbe, Tracker};
use crate::pattern::Pattern;
use crate::telemetry::{self, Role, Started};
use crate::transport;

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
/// Before it runs, it can be described by reference in an AsyncAPI document (feature
/// `asyncapi`): `contract::AsyncApi::new(title, version).microservice(&service)`.
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
    /// Microservices merged into this one: each serves its own queues with its own handlers.
    merged: Vec<Microservice>,
    drain_timeout: Duration,
    /// A registration made in an order where it does nothing, reported by `start`.
    misuse: Option<&'static str>,
}

impl std::fmt::Debug for Microservice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microservice")
            .field("queues", &self.queues)
            .field("routes", &self.routes)
            .field("merged", &self.merged)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Microservice {
    /// A microservice consuming the queue of `options`.
    pub fn new(options: RmqOptions) -> Self {
        Self {
            queues: vec![options],
            routes: Vec::new(),
            merged: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            misuse: None,
        }
    }

    /// Consumes another queue too (on the broker of the first), with its own prefetch, ack mode,
    /// retry policy and dead-letter queue. Every handler of this microservice serves every one of
    /// its queues (and, with an exchange, is bound on it); for handlers of one queue only, build
    /// a microservice for that queue and [`merge`](Self::merge) it.
    pub fn queue(mut self, options: RmqOptions) -> Self {
        self.queues.push(options);
        self
    }

    /// Runs `other` on this microservice's connection: its queues are served by its own
    /// handlers only, and it starts, reconnects and shuts down with this one. This is how a
    /// service keeps its commands on a plain queue while only some handlers subscribe to an
    /// exchange:
    ///
    /// ```no_run
    /// use rmq_bus::{Microservice, Payload, RmqOptions};
    /// use rmq_bus::config::Exchange;
    /// # async fn demo() -> rmq_bus::Result<()> {
    /// let carrier_updates = Microservice::new(
    ///     RmqOptions::new("SHIPPING_CARRIERS").exchange(Exchange::topic("carriers")),
    /// )
    /// .on_event("shipment.*", |Payload(update): Payload<serde_json::Value>| async move {
    ///     // shipment.delivered, shipment.delayed: bound on the topic exchange
    /// });
    /// Microservice::new(RmqOptions::new("SHIPPING")) // commands, on a plain queue
    ///     .on_message("get_shipment", |Payload(id): Payload<String>| async move {
    ///         Ok::<_, rmq_bus::RpcError>(id)
    ///     })
    ///     .merge(carrier_updates)
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn merge(mut self, other: Microservice) -> Self {
        self.merged.push(other);
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

    /// Registers a closure or function for event `pattern`, ordered by the key at `key_path`
    /// in its data (`"orderId"`, dotted for nesting): what `#[event_pattern("…", ordered_by =
    /// "orderId")]` declares for a function. Events with the same key are handled one at a time,
    /// in delivery order, retries included; other keys run concurrently (see
    /// [`Route::ordered_by`]).
    ///
    /// ```no_run
    /// use rmq_bus::{Microservice, Payload, RmqOptions};
    /// # async fn demo() -> rmq_bus::Result<()> {
    /// Microservice::new(RmqOptions::from_env("ORDERS")?)
    ///     .on_ordered_event("order_updated", "orderId", |Payload(update): Payload<serde_json::Value>| async move {
    ///         // o-1's updates one after another, o-2's meanwhile
    ///     })
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn on_ordered_event<Args, H: IntoRoute<Args>>(
        mut self,
        pattern: impl Into<Pattern>,
        key_path: &str,
        handler: H,
    ) -> Self {
        self.routes
            .push(handler.into_route(pattern.into()).ordered_by(key_path));
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
    /// interceptor added later runs outside those added before. Called before any handler is
    /// registered it would wrap none, so [`start`](Self::start) refuses that.
    pub fn intercept<I: Interceptor>(mut self, interceptor: I) -> Self {
        if self.routes.is_empty() {
            self.misuse.get_or_insert(
                "Microservice::intercept was called before any handler was registered, so it wraps none; call it after .controller(…), .on_event(…) and the like",
            );
        }
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
    /// queue's ([`RmqOptions::retry`]), then its [`FailurePolicy`](crate::config::FailurePolicy).
    /// Called before any handler is registered it would cover none, so [`start`](Self::start)
    /// refuses that; a policy for every handler of a queue is [`RmqOptions::retry`].
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        if self.routes.is_empty() {
            self.misuse.get_or_insert(
                "Microservice::retry was called before any handler was registered, so it covers none; call it after .controller(…) or .on_event(…), or give the queue a policy with RmqOptions::retry",
            );
        }
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
    /// first connection is tried for the first queue's
    /// [`reconnect_timeout`](RmqOptions::reconnect_timeout), so that a wrong URI shows at start.
    pub async fn start(self) -> Result<RunningMicroservice> {
        let drain = self.drain_timeout;
        let mut queues = Vec::new();
        self.into_queues(&mut queues)?;
        let (first, _) = queues
            .first()
            .ok_or_else(|| Error::Config("a microservice needs a queue".into()))?;
        let patience = first.reconnect_timeout;
        let health = Arc::new(Tracker::new(
            queues
                .iter()
                .map(|(options, _)| options.queue.clone())
                .collect(),
        ));
        let shared = Arc::new(Shared {
            queues,
            drain,
            health: health.clone(),
        });
        let consumers = ConsumerSet::open(&shared, Some(patience)).await?;
        let (stop, stopping) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(shared, consumers, stopping));
        Ok(RunningMicroservice {
            stop,
            supervisor,
            health,
        })
    }
}

impl Microservice {
    /// Checks this microservice and those merged into it, and lists every queue with the
    /// router of its handlers.
    fn into_queues(self, queues: &mut Vec<(RmqOptions, Arc<Router>)>) -> Result<()> {
        if let Some(misuse) = self.misuse {
            return Err(Error::Config(misuse.to_owned()));
        }
        let router = Arc::new(Router::new(self.routes)?);
        for options in self.queues.iter().flat_map(RmqOptions::consumed_queues) {
            options.validate_consumer()?;
            if queues.iter().any(|(other, _)| other.queue == options.queue) {
                return Err(Error::Config(format!(
                    "queue {:?} is consumed twice; a queue belongs to one microservice (merge them, or use .queue for another queue with the same handlers)",
                    options.queue
                )));
            }
            queues.push((options, router.clone()));
        }
        for merged in self.merged {
            merged.into_queues(queues)?;
        }
        Ok(())
    }
}

#[cfg(feature = "asyncapi")]
impl crate::contract::asyncapi::sealed::Sealed for Microservice {}

#[cfg(feature = "asyncapi")]
impl crate::contract::asyncapi::Consumes for Microservice {
    fn __consumed(&self) -> Vec<crate::contract::asyncapi::Consumed> {
        let mut consumed: Vec<_> = self
            .queues
            .iter()
            .map(|options| crate::contract::asyncapi::Consumed::new(options, &self.routes))
            .collect();
        for merged in &self.merged {
            consumed.extend(merged.__consumed());
        }
        consumed
    }
}

/// What every connection of a microservice consumes, each queue with its handlers.
struct Shared {
    queues: Vec<(RmqOptions, Arc<Router>)>,
    drain: Duration,
    health: Arc<Tracker>,
}

/// A started [`Microservice`]; shut it down with [`shutdown`](Self::shutdown).
#[derive(Debug)]
#[must_use = "dropping it stops the microservice at once, without draining; keep it and call shutdown"]
pub struct RunningMicroservice {
    stop: watch::Sender<bool>,
    supervisor: JoinHandle<Result<()>>,
    health: Arc<Tracker>,
}

impl RunningMicroservice {
    /// Its connection, and whether each of its queues is being consumed: a readiness probe
    /// answers 200 when [`Health::is_ready`], 503 otherwise. Cheap: a few atomic loads.
    pub fn health(&self) -> Health {
        self.health.report()
    }

    /// A handle reporting [`health`](Self::health), which outlives a move of the microservice
    /// into [`shutdown_on`](Self::shutdown_on).
    pub fn health_probe(&self) -> HealthProbe {
        HealthProbe(self.health.clone())
    }

    /// Stops consuming, lets in-flight handlers finish (up to the drain timeout), settles what
    /// they left, and closes the connection. Unsettled messages go back to their queues.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.supervisor.await.map_err(supervisor_failed)?
    }

    /// Runs until `signal` completes, then shuts down.
    pub async fn shutdown_on(mut self, signal: impl Future<Output = ()>) -> Result<()> {
        tokio::select! {
            () = signal => self.shutdown().await,
            ended = &mut self.supervisor => ended.map_err(supervisor_failed)?,
        }
    }
}

fn supervisor_failed(join: tokio::task::JoinError) -> Error {
    Error::TaskFailed {
        task: "microservice supervisor",
        reason: join.to_string(),
    }
}

/// Keeps the consumers running: when one stops by itself (connection lost, channel closed,
/// consumer cancelled), closes the rest and opens a new set, for as long as it takes.
async fn supervise(
    shared: Arc<Shared>,
    mut consumers: ConsumerSet,
    mut stopping: watch::Receiver<bool>,
) -> Result<()> {
    loop {
        tokio::select! {
            () = stop_requested(&mut stopping) => {
                shared.health.connection(ConnectionState::Closed);
                return consumers.close().await;
            }
            ended = consumers.tasks.join_next() => match ended {
                Some(Ok(Err(error))) => tracing::error!(%error, "reconnecting"),
                Some(Err(join)) => tracing::error!(error = %join, "a consumer task ended abnormally; reconnecting"),
                _ => {}
            },
        }
        let lost = Started::now();
        shared.health.connection(ConnectionState::Disconnected);
        // The others' deliveries return to their queues when the connection goes: cut them
        // short rather than drain, so that recovery does not wait for the drain timeout.
        consumers.abandon().await;
        consumers = loop {
            let opened = tokio::select! {
                () = stop_requested(&mut stopping) => return Ok(()),
                opened = ConsumerSet::open(&shared, None) => opened,
            };
            match opened {
                Ok(consumers) => break consumers,
                // Not an outage (connecting retries for ever) but, say, a declaration refused.
                Err(error) => {
                    shared.health.connection(ConnectionState::Disconnected);
                    tracing::error!(%error, "could not restore the consumers; retrying in 5 s");
                    tokio::select! {
                        () = stop_requested(&mut stopping) => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        };
        telemetry::reconnected(Role::Microservice, Some(lost));
        tracing::info!("consumers restored");
    }
}

/// One connection and the consumer tasks of its queues.
struct ConsumerSet {
    session: Option<transport::Session>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<()>>,
}

impl ConsumerSet {
    /// Connects (`patience`: how long to keep trying; `None`, for ever), declares and consumes.
    async fn open(shared: &Arc<Shared>, patience: Option<Duration>) -> Result<Self> {
        let (first, _) = shared
            .queues
            .first()
            .ok_or_else(|| Error::Config("a microservice needs a queue".into()))?;
        shared.health.connection(ConnectionState::Connecting);
        let session = transport::Session::connect(first, patience).await?;
        telemetry::connected(Role::Microservice);
        shared.health.connection(ConnectionState::Connected);
        let (stop, stopping) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (index, (options, router)) in shared.queues.iter().enumerate() {
            let consumer = match session.consume(options, &router.keys()).await {
                Ok(consumer) => consumer,
                Err(error) => {
                    telemetry::disconnected(Role::Microservice);
                    return Err(error);
                }
            };
            shared.health.consuming(index);
            tracing::info!(queue = %options.queue, prefetch = options.prefetch, "consuming");
            let (options, router, stopping) = (options.clone(), router.clone(), stopping.clone());
            let drain = shared.drain;
            tasks.spawn(async move { serve(consumer, &options, router, stopping, drain).await });
        }
        Ok(Self {
            session: Some(session),
            stop,
            tasks,
        })
    }

    /// Stops the consumers at once (their handlers too) and closes the connection.
    async fn abandon(mut self) {
        self.tasks.shutdown().await;
        if let Some(session) = self.session.take() {
            session.close().await;
        }
        telemetry::disconnected(Role::Microservice);
    }

    /// Stops the consumers (draining in-flight handlers) and closes the connection.
    async fn close(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(Err(error @ Error::DrainTimeout(_))) = joined {
                result = Err(error);
            }
        }
        if let Some(session) = self.session.take() {
            session.close().await;
        }
        telemetry::disconnected(Role::Microservice);
        tracing::info!("consumers stopped");
        result
    }
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
