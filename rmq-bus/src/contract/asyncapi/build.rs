//! Assembles a document: a channel for each queue, exchange and the reply-to address, a
//! `receive` operation for each handler of each queue consumed, a `send` for each contract a
//! client declares, and the components they refer to.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::messages::{CORRELATION_ID, Messages, correlation_id, identifier, upper_camel};
use super::{ASYNCAPI_VERSION, AsyncApi, Consumed, Handled, Sent, amqp};
use crate::config::{AckMode, Exchange, ExchangeKind, FailurePolicy, RmqOptions};
use crate::handler::RouteKind;
use crate::pattern::Pattern;
use crate::schema::MessageDoc;

/// The top-level keys, in the specification's order.
pub(super) const TOP_LEVEL_ORDER: &[&str] = &[
    "asyncapi",
    "info",
    "servers",
    "defaultContentType",
    "channels",
    "operations",
    "components",
];

/// At most this many delays are listed in `x-rmq-bus-retry`.
const LISTED_DELAYS: u32 = 20;

/// The runtime expression of the address a reply goes to.
const REPLY_ADDRESS: &str = "$message.header#/replyTo";

/// A channel, by what it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Channel {
    Queue(String),
    Exchange(String),
    /// RabbitMQ's direct reply-to, where replies go.
    ReplyTo,
}

/// The document being assembled.
struct Builder {
    messages: Messages,
    channels: Map<String, Value>,
    channel_keys: HashMap<Channel, String>,
    operations: Map<String, Value>,
}

/// The document of `api`.
pub(super) fn document(api: &AsyncApi) -> Value {
    let mut builder = Builder {
        messages: Messages::new(),
        channels: Map::new(),
        channel_keys: HashMap::new(),
        operations: Map::new(),
    };
    for consumed in &api.consumed {
        builder.consume(consumed);
    }
    for sent in &api.sent {
        builder.send(sent);
    }

    let mut info = json!({ "title": api.title, "version": api.version });
    if let Some(description) = &api.description {
        info["description"] = description.as_str().into();
    }
    let uris = api
        .consumed
        .iter()
        .map(|consumed| &consumed.options)
        .chain(api.sent.iter().map(|sent| &sent.options))
        .map(|options| options.uri.as_str());
    let mut components = Map::new();
    let schemas = builder.messages.schemas.take_definitions();
    if !schemas.is_empty() {
        components.insert("schemas".to_owned(), Value::Object(schemas));
    }
    if !builder.messages.messages.is_empty() {
        components.insert(
            "messages".to_owned(),
            Value::Object(builder.messages.messages),
        );
        components.insert(
            "correlationIds".to_owned(),
            json!({ CORRELATION_ID: correlation_id() }),
        );
    }
    let mut document = json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "defaultContentType": "application/json",
        "channels": builder.channels,
        "operations": builder.operations,
    });
    let servers = amqp::servers(uris);
    if !servers.is_empty() {
        document["servers"] = Value::Object(servers);
    }
    if !components.is_empty() {
        document["components"] = Value::Object(components);
    }
    document
}

impl Builder {
    /// The key of `channel`, made with `make` the first time.
    fn channel(&mut self, channel: Channel, make: impl FnOnce() -> Value) -> String {
        if let Some(key) = self.channel_keys.get(&channel) {
            return key.clone();
        }
        let base = match &channel {
            Channel::Queue(name) => identifier(name),
            Channel::Exchange(name) => format!("exchange_{}", identifier(name)),
            Channel::ReplyTo => "replyTo".to_owned(),
        };
        let key = unique(&self.channels, &base);
        self.channels.insert(key.clone(), make());
        self.channel_keys.insert(channel, key.clone());
        key
    }

    /// The channel of the queue of `options`.
    fn queue_channel(&mut self, options: &RmqOptions) -> String {
        let name = options.queue.clone();
        self.channel(Channel::Queue(name.clone()), || {
            let mut channel = json!({
                "address": name,
                "title": format!("queue {name}"),
                "bindings": amqp::queue_binding(&name, &options.queue_options, &amqp::vhost(options)),
            });
            if !options.queue_options.arguments.is_empty() {
                channel["x-rmq-bus-queue-arguments"] = json!(options.queue_options.arguments);
            }
            channel
        })
    }

    /// The channel of `exchange`, whose address is the routing key: the pattern.
    fn exchange_channel(&mut self, exchange: &Exchange, options: &RmqOptions) -> String {
        self.channel(Channel::Exchange(exchange.name.clone()), || {
            let routing = if exchange.kind == ExchangeKind::Fanout {
                "Clients publish with the pattern as routing key, which a fanout exchange ignores: every bound queue gets a copy."
            } else {
                "The routing key is the message's pattern."
            };
            json!({
                "address": "{routingKey}",
                "title": format!("{} exchange {}", amqp::kind_name(exchange.kind), exchange.name),
                "parameters": { "routingKey": { "description": routing } },
                "bindings": amqp::exchange_binding(exchange, &amqp::vhost(options)),
            })
        })
    }

    /// The channel replies go to: RabbitMQ's direct reply-to.
    fn reply_channel(&mut self) -> String {
        self.channel(Channel::ReplyTo, || {
            json!({
                "address": null,
                "title": "direct reply-to",
                "description": "RabbitMQ's direct reply-to: a requester consumes the pseudo-queue `amq.rabbitmq.reply-to` and names it in each request's reply_to property; the handler publishes its reply there, through the default exchange.",
            })
        })
    }

    /// Lists message `message` in channel `channel`, and returns the reference to it there.
    fn list(&mut self, channel: &str, message: &str) -> Value {
        if let Some(Value::Object(channel)) = self.channels.get_mut(channel) {
            let listed = channel
                .entry("messages")
                .or_insert_with(|| Value::Object(Map::new()));
            listed[message] = json!({ "$ref": format!("#/components/messages/{message}") });
        }
        json!({ "$ref": format!("#/channels/{channel}/messages/{message}") })
    }

    /// Files `operation` under `base`, or `base_<channel>` (then a number) if that is taken.
    fn operation(&mut self, base: String, channel: &str, operation: Value) {
        let key = if self.operations.contains_key(&base) {
            unique(&self.operations, &format!("{base}_{channel}"))
        } else {
            base
        };
        self.operations.insert(key, operation);
    }

    /// The reply of a request operation: its message on the direct reply-to channel.
    fn reply(&mut self, message: &str, pattern: &Pattern, doc: &MessageDoc) -> Value {
        let reply = self.messages.reply(message, pattern, doc);
        let channel = self.reply_channel();
        let listed = self.list(&channel, &reply);
        json!({
            "address": {
                "location": REPLY_ADDRESS,
                "description": "The request's AMQP reply_to property.",
            },
            "channel": { "$ref": format!("#/channels/{channel}") },
            "messages": [listed],
        })
    }

    /// A queue a microservice consumes, its exchange, and a `receive` for each of its handlers.
    fn consume(&mut self, consumed: &Consumed) {
        let options = &consumed.options;
        let queue = self.queue_channel(options);
        let exchange = options
            .exchange
            .as_ref()
            .map(|exchange| (exchange, self.exchange_channel(exchange, options)));
        if let Some((exchange, _)) = exchange {
            let description = bound_description(exchange, &consumed.routes);
            if let Some(channel) = self.channels.get_mut(&queue) {
                channel["description"] = description.into();
            }
        }
        for route in &consumed.routes {
            let doc = route.message();
            let message = self.messages.message(route.kind, &route.pattern, &doc);
            let listed = self.list(&queue, &message);
            if let Some((_, channel)) = &exchange {
                self.list(channel, &message);
            }
            let (verb, what) = match route.kind {
                RouteKind::Event => ("Handles", "events"),
                RouteKind::Message => ("Answers", "requests"),
            };
            let pattern = route.pattern.key();
            let mut operation = json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{queue}") },
                "messages": [listed],
                "summary": format!("{verb} `{pattern}` {what} from queue `{}`.", options.queue),
                "bindings": amqp::receive_binding(options),
            });
            if let Some(description) = route.doc.map(|doc| doc.description)
                && !description.is_empty()
            {
                operation["description"] = description.into();
            }
            if route.kind == RouteKind::Message {
                operation["reply"] = self.reply(&message, &route.pattern, &doc);
            }
            if let Some(retry) = retry(options, route) {
                operation["x-rmq-bus-retry"] = retry;
            }
            if options.ack_mode != AckMode::NoAck
                && let Some(queue) = options.dead_letters()
            {
                operation["x-rmq-bus-dead-letter-queue"] = queue.into();
            }
            self.operation(
                format!("receive{}", upper_camel(&message)),
                &queue,
                operation,
            );
        }
    }

    /// Where a client sends, and a `send` for each contract it declares.
    fn send(&mut self, sent: &Sent) {
        let options = &sent.options;
        let (channel, target) = match &options.exchange {
            Some(exchange) => (
                self.exchange_channel(exchange, options),
                format!("exchange `{}`", exchange.name),
            ),
            None => (
                self.queue_channel(options),
                format!("queue `{}`", options.queue),
            ),
        };
        for contract in &sent.contracts {
            let message =
                self.messages
                    .message(contract.kind, &contract.pattern, &contract.message);
            let listed = self.list(&channel, &message);
            let (verb, what, persistent) = match contract.kind {
                RouteKind::Event => ("Emits", "events", options.persistent),
                RouteKind::Message => ("Sends", "requests", false),
            };
            let pattern = contract.pattern.key();
            let mut operation = json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{channel}") },
                "messages": [listed],
                "summary": format!("{verb} `{pattern}` {what} to {target}."),
                "bindings": amqp::send_binding(persistent),
            });
            if options.exchange.is_some() {
                operation["x-rmq-bus-routing-key"] = contract.pattern.key().into();
            }
            if contract.kind == RouteKind::Message {
                operation["reply"] = self.reply(&message, &contract.pattern, &contract.message);
            }
            self.operation(
                format!("send{}", upper_camel(&message)),
                &channel,
                operation,
            );
        }
    }
}

/// What a queue's channel says of its exchange and binding keys.
fn bound_description(exchange: &Exchange, routes: &[Handled]) -> String {
    let kind = amqp::kind_name(exchange.kind);
    if exchange.kind == ExchangeKind::Fanout {
        return format!("Bound to the fanout exchange `{}`.", exchange.name);
    }
    let mut keys: Vec<&str> = routes.iter().map(|route| route.pattern.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    let keys: Vec<String> = keys.iter().map(|key| format!("`{key}`")).collect();
    format!(
        "Bound to the {kind} exchange `{}` with the binding keys {}.",
        exchange.name,
        keys.join(", ")
    )
}

/// `x-rmq-bus-retry`: how often an event handler's failure is tried again, and after which
/// delays (in milliseconds, the first 20 at most). Requests are answered, never retried; nothing
/// is retried without acks.
fn retry(options: &RmqOptions, route: &Handled) -> Option<Value> {
    if route.kind == RouteKind::Message || options.ack_mode == AckMode::NoAck {
        return None;
    }
    Some(match route.retry.as_ref().or(options.retry.as_ref()) {
        Some(policy) => {
            let retries = policy.max_attempts().saturating_sub(1).min(LISTED_DELAYS);
            let delays: Vec<u128> = (2..2 + retries)
                .map(|attempt| policy.delay_before(attempt).as_millis())
                .collect();
            json!({ "maxAttempts": policy.max_attempts(), "delaysMs": delays, "via": "delay queues" })
        }
        None => match options.failure_policy {
            FailurePolicy::RequeueOnce => {
                json!({ "maxAttempts": 2, "delaysMs": [0], "via": "requeue" })
            }
            _ => json!({ "maxAttempts": 1, "delaysMs": [], "via": "none" }),
        },
    })
}

/// `base`, or `base2`, `base3`… if `map` has it.
fn unique(map: &Map<String, Value>, base: &str) -> String {
    let mut key = base.to_owned();
    let mut n = 1;
    while map.contains_key(&key) {
        n += 1;
        key = format!("{base}{n}");
    }
    key
}
