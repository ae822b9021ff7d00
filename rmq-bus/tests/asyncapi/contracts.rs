//! A service with every kind of handler the document describes: contracts with and without a
//! schema, a request with an object pattern, a topic wildcard with `#[payload("key")]`
//! arguments, a free function and a closure. Compiled with and without the `asyncapi` feature,
//! so that the macros' code is checked both ways (the types derive `JsonSchema` only with it).

use std::time::Duration;

use rmq_bus::config::{AckMode, Exchange, QueueOptions, RetryPolicy};
#[cfg(feature = "asyncapi")]
use rmq_bus::contract::schemars;
use rmq_bus::contract::{Event, Request};
use rmq_bus::{
    ClientProxy, Microservice, Payload, RmqOptions, RpcError, controller, event_pattern,
    message_pattern,
};
use serde::{Deserialize, Serialize};

/// The broker of every queue here: credentials that must not reach the document.
pub const URI: &str = "amqp://app:s3cret@rabbit.internal:5672/shop";

/// An invoice was issued.
#[derive(Event, Serialize, Deserialize)]
#[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
#[event(pattern = "invoice.issued")]
#[serde(rename_all = "camelCase")]
pub struct InvoiceIssued {
    /// The invoice's id.
    pub invoice_id: String,
    /// What is due.
    pub amount: f64,
}

/// Adds numbers up, as NestJS's `{ cmd: 'sum' }`.
#[derive(Request, Serialize, Deserialize)]
#[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
#[request(pattern(cmd = "sum"), reply = Total)]
pub struct Sum(pub Vec<i64>);

/// The reply to [`Sum`].
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
pub struct Total {
    /// The sum.
    pub total: i64,
}

/// An audit line: a contract without a schema (it does not derive `JsonSchema`).
#[derive(Event, Serialize, Deserialize)]
#[event(pattern = "audit.entry")]
pub struct AuditEntry {
    /// What happened.
    pub line: String,
}

/// Where an invoice goes.
#[derive(Deserialize)]
#[cfg_attr(feature = "asyncapi", derive(schemars::JsonSchema))]
pub struct Address {
    /// Its city.
    pub city: String,
}

/// Invoice events, from the topic exchange.
pub struct Invoices;

#[controller]
impl Invoices {
    /// Records an issued invoice.
    #[event_pattern]
    async fn issued(&self, #[payload] invoice: InvoiceIssued) {
        let _ = invoice;
    }

    /// Sees every other invoice event, reading two keys of its data.
    #[event_pattern("invoice.*")]
    async fn any(
        &self,
        #[payload("invoiceId")] id: String,
        #[payload("address")] address: Option<Address>,
    ) {
        let _ = (id, address);
    }
}

/// Commands.
pub struct Commands;

#[controller]
impl Commands {
    /// Adds the numbers up.
    #[message_pattern]
    async fn sum(&self, #[payload] sum: Sum) -> Result<Total, RpcError> {
        Ok(Total {
            total: sum.0.iter().sum(),
        })
    }
}

/// Writes the audit line down.
#[event_pattern]
async fn audit(#[payload] entry: AuditEntry) {
    let _ = entry;
}

/// The options of `queue` on [`URI`].
pub fn options(queue: &str) -> RmqOptions {
    RmqOptions::new(queue).uri(URI)
}

/// The service: the `sum` command on `INVOICES` (a quorum queue); events on `INVOICES_EVENTS`, bound to
/// the topic exchange `events`, with a retry policy; audit lines on `AUDIT`, unacked; and a
/// closure for `refund` on `INVOICES`.
pub fn service() -> Microservice {
    let retry = RetryPolicy::exponential(3, Duration::from_secs(1), Duration::from_secs(30));
    let events = Microservice::new(options("INVOICES_EVENTS").exchange(Exchange::topic("events")))
        .controller(Invoices)
        .retry(retry);
    let audit = Microservice::new(options("AUDIT").ack_mode(AckMode::NoAck)).handler::<audit>();
    Microservice::new(options("INVOICES").queue_options(QueueOptions::default().quorum()))
        .controller(Commands)
        .on_event(
            "refund",
            |Payload(refund): Payload<serde_json::Value>| async move {
                let _ = refund;
            },
        )
        .merge(events)
        .merge(audit)
}

/// A client publishing invoice events to the topic exchange.
pub fn events_client() -> ClientProxy {
    ClientProxy::new(RmqOptions::for_exchange(Exchange::topic("events")).uri(URI))
}

/// A client sending `sum` requests to `INVOICES`.
pub fn invoices_client() -> ClientProxy {
    ClientProxy::new(options("INVOICES"))
}

#[test]
fn a_service_with_every_kind_of_handler_registers() {
    let _ = (service(), events_client(), invoices_client());
}
