//! The RabbitMQ transport, through lapin: the only code of rmq-bus that names lapin's types.
//!
//! - [`link`]: a client's connection (confirmed publishes, the direct reply-to consumer);
//! - [`consumer`]: a microservice's connection and its queue consumers, turning lapin deliveries
//!   into [`Inbound`](super::Inbound)s;
//! - [`acks`]: the coalesced acknowledgements of a consumer channel;
//! - [`publisher`]: publisher confirms, and the replies and republished copies a microservice sends;
//! - [`topology`]: declarations and bindings; [`convert`]: properties, tables and errors.

mod acks;
mod consumer;
mod convert;
mod link;
mod publisher;
mod topology;

use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};

pub(crate) use consumer::{Consumer, Session};
pub(crate) use link::Link;
pub(crate) use publisher::Confirm;

use crate::config::{RmqOptions, uri};
use crate::error::{Error, Result};

/// Opens a connection named `name` (shown in the management UI and `rabbitmqctl list_connections`).
/// Connects to the first of the broker URIs of `options` that answers, trying them all again
/// with a growing pause (up to 1 s while a caller waits on `patience`, 5 s without one) until
/// `patience` runs out (`None`: for ever).
pub(super) async fn connect(
    options: &RmqOptions,
    name: &str,
    patience: Option<Duration>,
) -> Result<Connection> {
    let deadline = patience.map(|patience| Instant::now() + patience);
    // A caller waiting on a bound (an emit through an outage) is served soon after the broker is
    // back; a microservice reconnecting in the background backs off further.
    let max_pause = Duration::from_secs(if deadline.is_some() { 1 } else { 5 });
    let mut pause = Duration::from_millis(100);
    loop {
        let mut failure = None;
        for address in options.broker_uris() {
            let properties = ConnectionProperties::default().with_connection_name(name.into());
            match connect_one(address, properties).await {
                Ok(connection) => {
                    tracing::info!(uri = %uri::redact(address), connection = name, "connected to RabbitMQ");
                    return Ok(connection);
                }
                Err(source) => {
                    failure = Some(Error::Connect {
                        uri: uri::redact(address),
                        source: Box::new(source),
                    })
                }
            }
        }
        let error = failure.unwrap_or_else(|| Error::Config("no broker URI configured".to_owned()));
        // The last attempt is made at the deadline, so callers wait for the whole bound.
        let wait = match deadline {
            Some(deadline) if Instant::now() >= deadline => return Err(error),
            Some(deadline) => pause.min(deadline.saturating_duration_since(Instant::now())),
            None => pause,
        };
        tracing::warn!(%error, retry_in = ?wait, "RabbitMQ unreachable; retrying");
        tokio::time::sleep(wait).await;
        pause = (pause * 2).min(max_pause);
    }
}

/// The frame size asked for unless the URI says otherwise (`?frame_max=`). lapin keeps send and
/// receive buffers of 32 frames per connection, resident: RabbitMQ's default of 128 KiB costs
/// 8 MiB a connection, 16 KiB costs 1 MiB, with no measurable loss for messages of a few KiB.
const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

async fn connect_one(uri: &str, properties: ConnectionProperties) -> lapin::Result<Connection> {
    match uri.parse::<lapin::uri::AMQPUri>() {
        Ok(mut parsed) => {
            parsed.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
            Connection::connect_uri(parsed, properties).await
        }
        // Let lapin say what is wrong with it.
        Err(_) => Connection::connect(uri, properties).await,
    }
}
