//! The contracts of the ordering app, shared by the `orders`, `billing` and `shop` examples: each
//! message type bound to its pattern, in the wire format a NestJS service sends (camelCase
//! fields, `@Payload('orderPayload')`, `@Payload('order')`). A typo in a pattern or a payload of
//! the wrong type is a compile error in every service that uses them.

// Each example uses a part of the contracts.
#![allow(dead_code)]

use std::fmt;

use rmq_bus::contract::{Event, Request, schemars};
use serde::{Deserialize, Serialize};

/// Where an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum OrderStatus {
    /// Saved, waiting for billing.
    Pending,
    /// Billed.
    Processed,
    /// Refused by billing's fraud check.
    CanceledFraud,
    /// Could not be handed to billing.
    Failed,
}

impl fmt::Display for OrderStatus {
    /// As on the wire: `PENDING`, `CANCELED_FRAUD`, …
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Processed => "PROCESSED",
            OrderStatus::CanceledFraud => "CANCELED_FRAUD",
            OrderStatus::Failed => "FAILED",
        })
    }
}

/// An order, as stored, answered over HTTP and carried in events.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Order {
    /// Its id, made by the orders service.
    pub(crate) order_id: String,
    /// What was ordered.
    pub(crate) product_name: String,
    /// Its price.
    pub(crate) price: f64,
    /// Who ordered it.
    pub(crate) buyer: String,
    /// Where it stands.
    pub(crate) status: OrderStatus,
}

/// An order was placed and waits to be billed. Sent by orders to the billing queue.
#[derive(Clone, Debug, Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(pattern = "order_created")]
#[serde(rename_all = "camelCase")]
pub(crate) struct OrderCreated {
    /// The order, as NestJS's billing reads it with `@Payload('orderPayload')`.
    pub(crate) order_payload: Order,
}

/// Billing's verdict on an order: processed, or canceled as fraud. Sent by billing to the
/// orders queue.
#[derive(Clone, Debug, Event, Serialize, Deserialize, schemars::JsonSchema)]
#[event(pattern = "order_processed")]
pub(crate) struct OrderProcessed {
    /// The order, with its new status.
    pub(crate) order: Order,
}

/// Asks the orders service for an order; answered with the order, or the error
/// `{"status": "error", "message": "order not found"}`.
#[derive(Clone, Debug, Request, Serialize, Deserialize, schemars::JsonSchema)]
#[request(pattern = "get_order", reply = Order)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GetOrder {
    /// The order's id.
    pub(crate) order_id: String,
}
