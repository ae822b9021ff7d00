//! The behaviour suite, run twice: against RabbitMQ and against the in-memory transport
//! (`rmq_bus::testing`). Where the two could differ, RabbitMQ is the reference. Every scenario
//! that both transports can show lives here (`both!` makes a `rabbitmq` and an `in_memory` test
//! of it); what only a real broker can show is in `broker.rs`.
//!
//! - `delivery`: round trip, the packet on the wire, properties and correlation, concurrency,
//!   client errors and reconnection.
//! - `settlement`: manual settling, the three ack modes, a context kept past its handler,
//!   shutdown under load.
//! - `dead_letters`: bad input of every kind, failing and panicking handlers, failure policies.
//! - `retries`: delayed retries on the broker, their backoff, freed prefetch slots, quorum queues.
//! - `request_reply`: values, errors in NestJS's shapes, timeouts, concurrent requests.
//! - `routing`: exchanges, object patterns, interceptors.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

mod behaviour {
    pub mod harness;

    mod dead_letters;
    mod delivery;
    mod request_reply;
    mod retries;
    mod routing;
    mod settlement;
}
