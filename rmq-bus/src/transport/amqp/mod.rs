//! The RabbitMQ transport, through lapin: the only code of rmq-bus that names lapin's types.
//!
//! - [`link`]: a client's connection (confirmed publishes, the direct reply-to consumer);
//! - [`consumer`]: a microservice's connection and its queue consumers, turning lapin deliveries
//!   into [`Inbound`](super::Inbound)s;
//! - [`acks`]: the coalesced acknowledgements of a consumer channel;
//! - [`publisher`]: publisher confirms, and the replies and republished copies a microservice sends;
//! - [`topology`]: declarations and bindings; [`convert`]: properties, tables and errors;
//! - [`handshake`]: one connection attempt, bounded by the handshake timeout.

mod acks;
mod consumer;
mod convert;
mod handshake;
mod link;
mod publisher;
mod topology;

use std::time::{Duration, Instant};

use handshake::AttemptError;
use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};

pub(crate) use consumer::{Consumer, Session};
pub(crate) use link::Link;
pub(crate) use publisher::Confirm;

use crate::config::{RmqOptions, uri};
use crate::error::{BoxError, Error, Result};

/// Opens a connection named `name` (shown in the management UI and `rabbitmqctl list_connections`).
/// Connects to the first of the broker URIs of `options` that answers, trying them all again
/// with a growing pause (up to 1 s while a caller waits on `patience`, 5 s without one) until
/// `patience` runs out (`None`: for ever). Each attempt is bounded by the handshake timeout, so
/// a node that takes TCP connections but never answers is passed over for the next.
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
    let tls = tls_config(options)?;
    loop {
        let mut failure = None;
        for address in options.broker_uris() {
            let properties = ConnectionProperties::default().with_connection_name(name.into());
            match connect_one(address, options, properties, tls.clone()).await {
                Ok(connection) => {
                    tracing::info!(
                        uri = %uri::redact(address),
                        connection = name,
                        heartbeat_secs = connection.configuration().heartbeat(),
                        "connected to RabbitMQ"
                    );
                    return Ok(connection);
                }
                Err(source) => {
                    let error = Error::Connect {
                        uri: uri::redact(address),
                        source,
                    };
                    tracing::debug!(%error, "connection attempt failed; trying the next URI");
                    failure = Some(error);
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

/// One bounded attempt at `uri`, with the heartbeat of `options` unless the URI names one
/// (`?heartbeat=`).
async fn connect_one(
    uri: &str,
    options: &RmqOptions,
    properties: ConnectionProperties,
    tls: OwnedTLSConfig,
) -> std::result::Result<Connection, BoxError> {
    // Let lapin say what is wrong with a URI it cannot read.
    let mut parsed = uri.parse::<lapin::uri::AMQPUri>()?;
    parsed.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    parsed
        .query
        .heartbeat
        .get_or_insert(options.heartbeat_secs());
    let host = parsed.authority.host.clone();
    match handshake::attempt(parsed, properties, tls, options.handshake_timeout).await {
        Ok(connection) => Ok(connection),
        Err(AttemptError::TimedOut(bound)) => Err(format!(
            "no AMQP handshake within {bound:?} (the handshake timeout): the node takes TCP \
             connections but does not answer"
        )
        .into()),
        Err(AttemptError::Lapin(error)) => Err(explain_tls(error, &host)),
    }
}

/// TLS settings: the CA certificates of [`RmqOptions::tls_ca_file`] trusted besides the
/// system's (which `SSL_CERT_FILE` and `SSL_CERT_DIR` can replace).
fn tls_config(options: &RmqOptions) -> Result<OwnedTLSConfig> {
    let cert_chain = match &options.tls_ca_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|error| {
            Error::Config(format!(
                "cannot read the CA certificate file {} (RmqOptions::tls_ca_file): {error}",
                path.display()
            ))
        })?),
        None => None,
    };
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}

/// lapin's error, with what a failed certificate check means said plainly.
fn explain_tls(error: lapin::Error, host: &str) -> BoxError {
    let text = error.to_string();
    let hint = if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        format!(
            "TLS: the broker's certificate is not signed by a trusted CA; trust the CA that \
             signed it with SSL_CERT_FILE or RmqOptions::tls_ca_file ({text})"
        )
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        format!(
            "TLS: the broker's certificate is not valid for the host name {host:?} of the URI; \
             connect by a name the certificate lists ({text})"
        )
    } else {
        return Box::new(error);
    };
    hint.into()
}
