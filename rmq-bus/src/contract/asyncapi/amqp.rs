//! The AMQP side of a document: servers from broker URIs (never their credentials), and the
//! AsyncAPI AMQP bindings (version 0.3.0) of channels and operations.

use serde_json::{Map, Value, json};

use crate::config::uri;
use crate::config::{AckMode, Exchange, ExchangeKind, QueueOptions, RmqOptions};

/// The version of the AsyncAPI AMQP bindings used.
pub(super) const BINDING_VERSION: &str = "0.3.0";

/// What a document shows of one broker URI.
#[derive(Debug, PartialEq, Eq)]
struct Broker {
    /// `amqp` or `amqps`.
    protocol: String,
    /// `host:port`, as written.
    host: String,
    /// `/%2f`: the path, naming the virtual host, as written (none if empty).
    pathname: Option<String>,
}

/// The server of `uri`, if it is an AMQP one (in-memory URIs have none). The user and password
/// are left out.
fn broker(uri: &str) -> Option<Broker> {
    let (scheme, rest) = uri.split_once("://")?;
    if scheme != "amqp" && scheme != "amqps" {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() {
        return None;
    }
    let path = rest[end..].split(['?', '#']).next().unwrap_or_default();
    Some(Broker {
        protocol: scheme.to_owned(),
        host: host.to_owned(),
        pathname: (!path.is_empty()).then(|| path.to_owned()),
    })
}

/// The virtual host of the first broker URI of `options`: the path, percent-decoded (`%2f` is
/// `/`), or `/` when there is none.
pub(super) fn vhost(options: &RmqOptions) -> String {
    let Some(broker) = options.broker_uris().next().and_then(broker) else {
        return "/".to_owned();
    };
    match broker
        .pathname
        .as_deref()
        .and_then(|path| path.strip_prefix('/'))
    {
        Some(vhost) if !vhost.is_empty() => percent_decode(vhost),
        _ => "/".to_owned(),
    }
}

/// `%XX` escapes decoded; anything else (and an escape that is not one) kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `servers` of a document: each AMQP broker of `uris` once, in order, named `rabbitmq`
/// (`rabbitmq1`, `rabbitmq2`, … when there are several).
pub(super) fn servers<'a>(uris: impl Iterator<Item = &'a str>) -> Map<String, Value> {
    let mut brokers: Vec<Broker> = Vec::new();
    for broker in uris.flat_map(uri::split).filter_map(broker) {
        if !brokers.contains(&broker) {
            brokers.push(broker);
        }
    }
    let several = brokers.len() > 1;
    brokers
        .into_iter()
        .enumerate()
        .map(|(i, broker)| {
            let key = if several {
                format!("rabbitmq{}", i + 1)
            } else {
                "rabbitmq".to_owned()
            };
            let mut server = json!({
                "host": broker.host,
                "protocol": broker.protocol,
                "protocolVersion": "0.9.1",
                "description": "RabbitMQ (credentials are not part of the document)",
            });
            if let Some(pathname) = broker.pathname {
                server["pathname"] = pathname.into();
            }
            (key, server)
        })
        .collect()
}

/// The AMQP binding of a queue's channel.
pub(super) fn queue_binding(name: &str, queue: &QueueOptions, vhost: &str) -> Value {
    json!({
        "amqp": {
            "is": "queue",
            "queue": {
                "name": name,
                "durable": queue.durable,
                "exclusive": queue.exclusive,
                "autoDelete": queue.auto_delete,
                "vhost": vhost,
            },
            "bindingVersion": BINDING_VERSION,
        }
    })
}

/// The name of an exchange kind, as AMQP writes it.
pub(super) fn kind_name(kind: ExchangeKind) -> &'static str {
    match kind {
        ExchangeKind::Topic => "topic",
        ExchangeKind::Direct => "direct",
        ExchangeKind::Fanout => "fanout",
        ExchangeKind::ConsistentHash => "x-consistent-hash",
    }
}

/// The AMQP binding of an exchange's channel, whose address is the routing key.
pub(super) fn exchange_binding(exchange: &Exchange, vhost: &str) -> Value {
    json!({
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": exchange.name,
                "type": kind_name(exchange.kind),
                "durable": exchange.durable,
                "autoDelete": false,
                "vhost": vhost,
            },
            "bindingVersion": BINDING_VERSION,
        }
    })
}

/// The AMQP binding of a `receive` operation: whether deliveries are acked.
pub(super) fn receive_binding(options: &RmqOptions) -> Value {
    json!({
        "amqp": {
            "ack": options.ack_mode != AckMode::NoAck,
            "bindingVersion": BINDING_VERSION,
        }
    })
}

/// The AMQP binding of a `send` operation: persistent (2) or transient (1).
pub(super) fn send_binding(persistent: bool) -> Value {
    json!({
        "amqp": {
            "deliveryMode": if persistent { 2 } else { 1 },
            "bindingVersion": BINDING_VERSION,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_leave_credentials_out_and_keep_each_broker_once() {
        let servers = servers(
            [
                "amqp://guest:secret@127.0.0.1:5672/%2f",
                "amqps://app:pw@rabbit-1:5671/shop?heartbeat=10, amqps://app:pw@rabbit-2/shop",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "memory://test",
            ]
            .into_iter(),
        );
        let text = Value::Object(servers.clone()).to_string();
        assert!(!text.contains("secret") && !text.contains("pw") && !text.contains("guest"));
        assert_eq!(servers.len(), 3, "{text}");
        assert_eq!(servers["rabbitmq1"]["host"], "127.0.0.1:5672");
        assert_eq!(servers["rabbitmq1"]["pathname"], "/%2f");
        assert_eq!(servers["rabbitmq2"]["protocol"], "amqps");
        assert_eq!(servers["rabbitmq2"]["pathname"], "/shop");
        assert_eq!(servers["rabbitmq3"]["host"], "rabbit-2");
    }

    #[test]
    fn the_vhost_is_the_decoded_path() {
        let vhost_of = |uri: &str| vhost(&RmqOptions::new("q").uri(uri));
        assert_eq!(vhost_of("amqp://u:p@h:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://h"), "/");
        assert_eq!(vhost_of("amqp://h/shop%2Dtest?x=1"), "shop-test");
        assert_eq!(vhost_of("amqp://h/100%"), "100%");
        assert_eq!(vhost_of("memory://x"), "/");
    }
}
