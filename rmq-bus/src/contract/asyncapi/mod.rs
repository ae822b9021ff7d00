//! AsyncAPI 3.0 documents of what a service registers: [`AsyncApi`].
//!
//! A document is made from the [`Microservice`](crate::Microservice)s and
//! [`ClientProxy`](crate::ClientProxy)s of a service, by reference, before they run; nothing
//! connects. It holds:
//!
//! - `servers`: the brokers of their options' URIs, without credentials;
//! - `channels`: each queue consumed or sent to (AMQP binding `is: queue`), each exchange
//!   (`is: routingKey`, the routing key being the pattern), and RabbitMQ's direct reply-to;
//! - `operations`: a `receive` for each handler of each queue consumed (with a `reply` for a
//!   request handler, the extensions `x-rmq-bus-retry` and `x-rmq-bus-dead-letter-queue`), and a
//!   `send` for each contract a client declares ([`ClientProxy::sends`](crate::ClientProxy::sends));
//! - `components.messages`: each message in NestJS's envelope, `{"pattern", "data"}` for events
//!   and `{"pattern", "data", "id"}` for requests, and their replies `{"response" | "err",
//!   "isDisposed"}`; `components.schemas`: the JSON Schemas (draft 7) of the contract types that
//!   derive `schemars::JsonSchema`, which the envelopes' `data` refer to. A handler whose payload
//!   type has no schema (a closure, a type without `JsonSchema`) gets an unconstrained `data`.
//!
//! rmq-bus's own extensions:
//!
//! | extension | on | says |
//! |---|---|---|
//! | `x-rmq-bus-retry` | `receive` of an event handler | `{"maxAttempts", "delaysMs", "via"}`: deliveries in all, the delay before each retry in milliseconds (the first 20 at most), and how: `delay queues` (a [`RetryPolicy`]), `requeue` (no policy: [`FailurePolicy::RequeueOnce`](crate::config::FailurePolicy::RequeueOnce)) or `none`. Absent for requests (answered, never retried) and unacked queues |
//! | `x-rmq-bus-dead-letter-queue` | `receive` | the queue rmq-bus dead-letters into; absent when it rejects instead (to the queue's own dead-letter exchange) or nothing is acked |
//! | `x-rmq-bus-routing-key` | `send` to an exchange | the routing key: the pattern |
//! | `x-rmq-bus-queue-arguments` | a queue's channel | its `x-` arguments (`x-queue-type`, …), which the AMQP binding has no field for |
//!
//! ```
//! use rmq_bus::contract::AsyncApi;
//! use rmq_bus::{Microservice, Payload, RmqOptions};
//!
//! let service = Microservice::new(RmqOptions::new("BILLING"))
//!     .on_event("order_created", |Payload(order): Payload<serde_json::Value>| async move {});
//! let document = AsyncApi::new("billing", "1.0.0").microservice(&service).to_value();
//! assert_eq!(document["operations"]["receiveOrderCreated"]["action"], "receive");
//! assert_eq!(document["channels"]["BILLING"]["address"], "BILLING");
//! ```

mod amqp;
mod build;
mod messages;

use serde_json::{Map, Value};

use crate::config::{RetryPolicy, RmqOptions};
use crate::contract::check::Described;
use crate::handler::{Route, RouteKind};
use crate::pattern::Pattern;
use crate::schema::{MessageDoc, RouteDoc};

/// The version of the AsyncAPI specification the documents follow.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// An AsyncAPI 3.0 document of a service: its microservices (what they consume and answer) and
/// its clients (what they send), described by reference before they run.
///
/// ```
/// # use rmq_bus::{ClientProxy, Microservice, RmqOptions};
/// use rmq_bus::contract::AsyncApi;
/// # let service = Microservice::new(RmqOptions::new("BILLING"));
/// # let orders = ClientProxy::new(RmqOptions::new("ORDERS"));
/// let json = AsyncApi::new("billing", "1.0.0")
///     .description("Bills the orders the orders service creates.")
///     .microservice(&service)
///     .client(&orders)
///     .to_json();
/// assert!(json.starts_with("{\n  \"asyncapi\": \"3.0.0\""));
/// ```
#[derive(Debug, Clone)]
#[must_use = "an AsyncApi does nothing until written with to_json or to_value"]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    consumed: Vec<Consumed>,
    sent: Vec<Sent>,
}

impl AsyncApi {
    /// A document titled `title` (the service's name) at `version` (the service's version, not
    /// the specification's).
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            description: None,
            consumed: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Describes the service in `info.description` (CommonMark).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Adds what `service` consumes: its queues (and those of the microservices merged into it),
    /// their exchanges, and a `receive` operation for each handler, as registered so far.
    pub fn microservice(mut self, service: &impl Consumes) -> Self {
        self.consumed.extend(service.__consumed());
        self
    }

    /// Adds what `client` sends: a channel for its queue or exchange, and a `send` operation for
    /// each contract it declares with [`ClientProxy::sends`](crate::ClientProxy::sends).
    pub fn client(mut self, client: &impl Sends) -> Self {
        self.sent.push(client.__sent());
        self
    }

    /// The document, as JSON.
    pub fn to_value(&self) -> Value {
        build::document(self)
    }

    /// The document as pretty-printed JSON, ending with a newline: the top-level keys in the
    /// specification's order, every other object's keys sorted, so that the same service gives
    /// the same text.
    pub fn to_json(&self) -> String {
        let Value::Object(document) = self.to_value() else {
            return String::new();
        };
        let mut document: Map<String, Value> = document;
        let mut entries = Vec::new();
        for key in build::TOP_LEVEL_ORDER {
            if let Some(value) = document.remove(*key) {
                entries.push(((*key).to_owned(), value));
            }
        }
        entries.extend(document);
        let mut out = String::from("{\n");
        let last = entries.len().saturating_sub(1);
        for (i, (key, value)) in entries.into_iter().enumerate() {
            // String values escape their newlines, so every raw newline is between two tokens.
            let text = format!("{:#}", sorted(value)).replace('\n', "\n  ");
            let comma = if i == last { "" } else { "," };
            out.push_str(&format!("  {}: {text}{comma}\n", Value::from(key)));
        }
        out.push_str("}\n");
        out
    }
}

/// `value` with the keys of every object in sorted order, whatever serde_json's map keeps.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(String, Value)> = object.into_iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.cmp(b));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

pub(crate) mod sealed {
    /// Keeps [`Consumes`](super::Consumes) and [`Sends`](super::Sends) to rmq-bus's types.
    pub trait Sealed {}
}

/// What consumes messages, for [`AsyncApi::microservice`]: a [`Microservice`](crate::Microservice).
pub trait Consumes: sealed::Sealed {
    /// The queues consumed, each with its handlers. Not public API.
    #[doc(hidden)]
    fn __consumed(&self) -> Vec<Consumed>;
}

/// What sends messages, for [`AsyncApi::client`]: a [`ClientProxy`](crate::ClientProxy).
pub trait Sends: sealed::Sealed {
    /// Where it sends, and the contracts it declares. Not public API.
    #[doc(hidden)]
    fn __sent(&self) -> Sent;
}

/// A queue a microservice consumes and the handlers serving it. Not public API.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Consumed {
    options: RmqOptions,
    routes: Vec<Handled>,
}

impl Consumed {
    /// The queue of `options`, served by `routes`.
    pub(crate) fn new(options: &RmqOptions, routes: &[Route]) -> Self {
        Self {
            options: options.clone(),
            routes: routes.iter().map(Handled::of).collect(),
        }
    }
}

/// What a document needs of a route.
#[derive(Debug, Clone)]
struct Handled {
    pattern: Pattern,
    kind: RouteKind,
    retry: Option<RetryPolicy>,
    doc: Option<RouteDoc>,
}

impl Handled {
    fn of(route: &Route) -> Self {
        Self {
            pattern: route.pattern.clone(),
            kind: route.kind,
            retry: route.retry.clone(),
            doc: route.doc,
        }
    }

    fn message(&self) -> MessageDoc {
        self.doc.map_or(MessageDoc::unknown(), |doc| doc.message)
    }
}

/// Where a client sends, and the contracts it declares. Not public API.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Sent {
    options: RmqOptions,
    contracts: Vec<Described>,
}

impl Sent {
    /// A client of `options` declaring `contracts`.
    pub(crate) fn new(options: &RmqOptions, contracts: Vec<Described>) -> Self {
        Self {
            options: options.clone(),
            contracts,
        }
    }
}
