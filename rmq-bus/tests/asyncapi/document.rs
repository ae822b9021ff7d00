//! What the document of [`contracts::service`] says.

use rmq_bus::contract::AsyncApi;
use serde_json::{Value, json};

use super::contracts::{InvoiceIssued, Sum, URI, events_client, invoices_client};

/// The document of the service of every feature, with its clients' declared contracts.
pub fn service() -> AsyncApi {
    AsyncApi::new("invoices", "2.1.0")
        .description("Every feature of the document.")
        .microservice(&super::contracts::service())
        .client(&events_client().sends::<InvoiceIssued>())
        .client(&invoices_client().sends::<Sum>())
}

fn document() -> Value {
    service().to_value()
}

#[test]
fn servers_name_the_broker_without_its_credentials() {
    let json = service().to_json();
    assert!(!json.contains("s3cret") && !json.contains("app:"), "{json}");
    let document = document();
    assert_eq!(document["asyncapi"], "3.0.0");
    assert_eq!(document["info"]["title"], "invoices");
    assert_eq!(document["defaultContentType"], "application/json");
    assert_eq!(
        document["servers"]["rabbitmq"],
        json!({
            "host": "rabbit.internal:5672",
            "pathname": "/shop",
            "protocol": "amqp",
            "protocolVersion": "0.9.1",
            "description": "RabbitMQ (credentials are not part of the document)",
        })
    );
    assert!(URI.contains("s3cret"));
}

#[test]
fn queues_and_exchanges_are_channels_with_amqp_bindings() {
    let channels = &document()["channels"];
    let queue = &channels["INVOICES"];
    assert_eq!(queue["address"], "INVOICES");
    let binding = &queue["bindings"]["amqp"];
    assert_eq!(binding["is"], "queue");
    assert_eq!(binding["bindingVersion"], "0.3.0");
    assert_eq!(
        binding["queue"],
        json!({"name": "INVOICES", "durable": true, "exclusive": false, "autoDelete": false, "vhost": "shop"})
    );
    assert_eq!(
        queue["x-rmq-bus-queue-arguments"],
        json!({"x-queue-type": "quorum"})
    );

    let bound = &channels["INVOICES_EVENTS"];
    assert_eq!(
        bound["description"],
        "Bound to the topic exchange `events` with the binding keys `invoice.*`, `invoice.issued`."
    );
    let exchange = &channels["exchange_events"];
    assert_eq!(exchange["address"], "{routingKey}");
    assert_eq!(exchange["bindings"]["amqp"]["is"], "routingKey");
    assert_eq!(exchange["bindings"]["amqp"]["exchange"]["type"], "topic");
    assert_eq!(exchange["bindings"]["amqp"]["exchange"]["name"], "events");
    assert!(exchange["parameters"]["routingKey"].is_object());
    assert_eq!(
        exchange["messages"]["InvoiceIssued"]["$ref"],
        "#/components/messages/InvoiceIssued"
    );

    let reply = &channels["replyTo"];
    assert!(
        reply["address"].is_null(),
        "direct reply-to is a dynamic address"
    );
    assert!(reply["messages"]["SumReply"].is_object());
}

#[test]
fn each_handler_is_a_receive_operation_and_each_declared_contract_a_send() {
    let document = document();
    let operations = document["operations"].as_object().expect("operations");
    let mut keys: Vec<&str> = operations.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "receiveAuditEntry",
            "receiveInvoiceAny",
            "receiveInvoiceIssued",
            "receiveRefund",
            "receiveSum",
            "sendInvoiceIssued",
            "sendSum",
        ]
    );
    let issued = &operations["receiveInvoiceIssued"];
    assert_eq!(issued["action"], "receive");
    assert_eq!(issued["channel"]["$ref"], "#/channels/INVOICES_EVENTS");
    assert_eq!(
        issued["messages"],
        json!([{"$ref": "#/channels/INVOICES_EVENTS/messages/InvoiceIssued"}])
    );
    assert_eq!(issued["description"], "Records an issued invoice.");
    assert_eq!(issued["bindings"]["amqp"]["ack"], true);
    assert_eq!(
        issued["x-rmq-bus-retry"],
        json!({"maxAttempts": 3, "delaysMs": [1000, 2000], "via": "delay queues"})
    );
    assert_eq!(issued["x-rmq-bus-dead-letter-queue"], "INVOICES_EVENTS.dlq");

    let refund = &operations["receiveRefund"];
    assert_eq!(
        refund["x-rmq-bus-retry"],
        json!({"maxAttempts": 2, "delaysMs": [0], "via": "requeue"})
    );

    // Unacked: nothing is retried or dead-lettered.
    let audit = &operations["receiveAuditEntry"];
    assert_eq!(audit["bindings"]["amqp"]["ack"], false);
    assert!(
        audit.get("x-rmq-bus-retry").is_none()
            && audit.get("x-rmq-bus-dead-letter-queue").is_none()
    );

    let sent = &operations["sendInvoiceIssued"];
    assert_eq!(sent["action"], "send");
    assert_eq!(sent["channel"]["$ref"], "#/channels/exchange_events");
    assert_eq!(sent["x-rmq-bus-routing-key"], "invoice.issued");
    assert_eq!(sent["bindings"]["amqp"]["deliveryMode"], 2);
}

#[test]
fn requests_are_answered_over_direct_reply_to() {
    let document = document();
    let receive = &document["operations"]["receiveSum"];
    assert!(
        receive.get("x-rmq-bus-retry").is_none(),
        "requests are answered, never retried"
    );
    assert_eq!(receive["x-rmq-bus-dead-letter-queue"], "INVOICES.dlq");
    for operation in [receive, &document["operations"]["sendSum"]] {
        assert_eq!(
            operation["reply"],
            json!({
                "address": {
                    "location": "$message.header#/replyTo",
                    "description": "The request's AMQP reply_to property.",
                },
                "channel": {"$ref": "#/channels/replyTo"},
                "messages": [{"$ref": "#/channels/replyTo/messages/SumReply"}],
            })
        );
    }
    assert_eq!(
        document["operations"]["sendSum"]["bindings"]["amqp"]["deliveryMode"],
        1
    );
    let reply = &document["components"]["messages"]["SumReply"]["payload"]["oneOf"];
    assert_eq!(
        reply[0]["properties"]["response"],
        json!({"$ref": "#/components/schemas/Total"})
    );
    assert_eq!(reply[1]["required"], json!(["err"]));
}

#[test]
fn messages_are_nestjs_envelopes_around_the_contracts_schemas() {
    let document = document();
    let messages = &document["components"]["messages"];
    let issued = &messages["InvoiceIssued"];
    assert_eq!(issued["name"], "invoice.issued");
    assert_eq!(issued["title"], "InvoiceIssued");
    assert_eq!(issued["description"], "An invoice was issued.");
    assert_eq!(issued["contentType"], "application/json");
    assert_eq!(
        issued["correlationId"]["$ref"],
        "#/components/correlationIds/correlationId"
    );
    assert_eq!(
        issued["payload"],
        json!({
            "type": "object",
            "properties": {
                "pattern": {"const": "invoice.issued"},
                "data": {"$ref": "#/components/schemas/InvoiceIssued"},
            },
            "required": ["pattern", "data"],
        })
    );
    let schema = &document["components"]["schemas"]["InvoiceIssued"];
    assert_eq!(schema["properties"]["invoiceId"]["type"], "string");
    assert_eq!(
        schema["properties"]["amount"]["description"],
        "What is due."
    );
    assert_eq!(schema["description"], "An invoice was issued.");

    let sum = &messages["Sum"]["payload"];
    assert_eq!(
        sum["properties"]["pattern"],
        json!({"const": {"cmd": "sum"}})
    );
    assert_eq!(sum["required"], json!(["pattern", "data", "id"]));
    assert_eq!(
        sum["properties"]["data"],
        json!({"$ref": "#/components/schemas/Sum"})
    );

    // A wildcard handler reading two keys: the pattern is any matching key, the data an object.
    let any = &messages["InvoiceAny"]["payload"]["properties"];
    assert_eq!(any["pattern"]["type"], "string");
    assert_eq!(
        any["data"]["properties"]["invoiceId"],
        json!({"type": "string"})
    );
    assert!(any["data"]["properties"]["address"].is_object());

    // A contract without a schema, and a closure: any data.
    for key in ["AuditEntry", "Refund"] {
        let data = &messages[key]["payload"]["properties"]["data"];
        assert!(
            data.get("$ref").is_none() && data.get("type").is_none(),
            "{key}: {data}"
        );
    }
    assert_eq!(
        messages["AuditEntry"]["description"],
        "An audit line: a contract without a schema (it does not derive `JsonSchema`)."
    );
}

#[test]
fn the_json_is_the_same_every_time_with_the_top_level_keys_in_order() {
    let (first, second) = (service().to_json(), service().to_json());
    assert_eq!(first, second);
    let keys: Vec<&str> = first
        .lines()
        .filter(|line| line.starts_with("  \""))
        .map(|line| line.trim().split('"').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        [
            "asyncapi",
            "info",
            "servers",
            "defaultContentType",
            "channels",
            "operations",
            "components"
        ]
    );
    let parsed: Value = serde_json::from_str(&first).expect("valid JSON");
    assert_eq!(parsed, document());
}
