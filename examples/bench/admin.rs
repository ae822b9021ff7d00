//! Queue administration: each round's queue is declared before its child starts and deleted,
//! with whatever is left in it, after; a queue's waiting messages counted; and the drain that
//! takes S4's forwarded events as they arrive (`S4_DRAIN=1`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::Res;

/// Declares the round's queue as rmq-bus does (durable, no arguments), so both sides match.
pub(crate) async fn declare_queue(uri: &str, queue: &str) -> Res<()> {
    let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    declare_on(&channel, queue).await?;
    close(connection, channel, "declared").await;
    Ok(())
}

/// Closes `channel`, then `connection`. (A channel dropped instead closes itself as the
/// connection closes it too, and lapin logs an error for the second close.)
pub(crate) async fn close(connection: Connection, channel: Channel, why: &str) {
    let _ = channel.close(200, ShortString::from(why)).await;
    let _ = connection.close(200, ShortString::from(why)).await;
}

/// Declares `queue` on `channel`, durable with no arguments.
pub(crate) async fn declare_on(channel: &Channel, queue: &str) -> Res<()> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// How many messages wait in `queue` (a passive declare: it must exist).
pub(crate) async fn ready_messages(uri: &str, queue: &str) -> Res<u32> {
    let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    close(connection, channel, "counted").await;
    Ok(declared.message_count())
}

/// Deletes the round's queue, with whatever is left in it.
pub(crate) async fn delete_queue(uri: &str, queue: &str) -> Res<()> {
    let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
        .await?;
    close(connection, channel, "deleted").await;
    Ok(())
}

/// A consumer that takes every message of `queue` as it arrives (the broker acks them as it
/// sends them), as a downstream service keeps its queue short; counts what it took.
pub(crate) struct Drain {
    connection: Connection,
    channel: Channel,
    taken: Arc<AtomicU64>,
}

impl Drain {
    pub(crate) async fn start(uri: &str, queue: &str) -> Res<Self> {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let mut consumer = channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let taken = Arc::new(AtomicU64::new(0));
        let counter = taken.clone();
        tokio::spawn(async move {
            while let Some(Ok(_)) = consumer.next().await {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Self {
            connection,
            channel,
            taken,
        })
    }

    /// Stops; how many messages it took.
    pub(crate) async fn stop(self) -> u64 {
        close(self.connection, self.channel, "drained").await;
        self.taken.load(Ordering::Relaxed)
    }
}
