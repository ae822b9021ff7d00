//! The three systems under test, each as a publishing and a consuming side behind one interface,
//! so that a round ([`crate::child`]) runs them alike.

mod bus;
mod expert;
mod raw;
mod typical;

use std::sync::Arc;
use std::time::Duration;

use rmq_bus::ClientProxy;

pub(crate) use raw::{RawPublisher, sends_message_id as baseline_sends_message_id};

use crate::measure::{Recorder, handle};
use crate::payload::OrderEvent;
use crate::workload::{Scenario, System};
use crate::{Res, RunningMicroservice};

/// What a raw baseline's handler does with an event, besides recording it.
#[derive(Clone)]
enum Work {
    /// Nothing more: the consumer's loop handles the event inline.
    Inline,
    /// Waits, S2's stand-in for I/O.
    Sleep(Duration),
    /// Sends one event on and waits for its confirm, as S4's billing does before it acks.
    Forward(Arc<RawPublisher>),
}

impl Work {
    async fn run(&self, recorder: &Recorder, event: &OrderEvent) {
        match self {
            Work::Inline => handle(recorder, event, None).await,
            Work::Sleep(delay) => handle(recorder, event, Some(*delay)).await,
            Work::Forward(publisher) => match publisher.publish(event).await {
                Ok(()) => handle(recorder, event, None).await,
                Err(error) => recorder.fail(format!("forwarding: {error}")),
            },
        }
    }
}

/// The publishing side of a system.
pub(crate) enum Publisher {
    Bus(ClientProxy),
    Raw(raw::RawPublisher),
}

impl Publisher {
    pub(crate) async fn open(system: System, uri: &str, queue: &str) -> Res<Self> {
        match system {
            System::RmqBus | System::RmqBusPrometheus => {
                Ok(Publisher::Bus(bus::connect(uri, queue).await?))
            }
            System::Typical | System::Expert => {
                Ok(Publisher::Raw(raw::RawPublisher::open(uri, queue).await?))
            }
        }
    }

    /// Publishes one event and waits for its confirm.
    pub(crate) async fn publish(&self, event: OrderEvent) -> Result<(), String> {
        match self {
            Publisher::Bus(client) => bus::emit(client, &event).await,
            Publisher::Raw(raw) => raw.publish(&event).await,
        }
    }

    pub(crate) async fn close(self) {
        match self {
            Publisher::Bus(client) => client.close().await,
            Publisher::Raw(raw) => raw.close().await,
        }
    }
}

/// The round a raw baseline's consumer starts for, handed down as one value: the signature of
/// [`Consumer::start`] is not written out again below it.
struct Round<'a> {
    system: System,
    scenario: Scenario,
    uri: &'a str,
    queue: &'a str,
    recorder: &'a Arc<Recorder>,
}

/// The consuming side of a system, running (with, in S4, the client its handlers send with).
pub(crate) enum Consumer {
    Bus(RunningMicroservice, Option<ClientProxy>),
    Raw(raw::RawConsumer),
}

impl Consumer {
    pub(crate) async fn start(
        system: System,
        scenario: Scenario,
        uri: &str,
        queue: &str,
        recorder: &Arc<Recorder>,
    ) -> Res<Self> {
        match system {
            System::RmqBus | System::RmqBusPrometheus => {
                let (running, forward) = bus::start(scenario, uri, queue, recorder).await?;
                Ok(Consumer::Bus(running, forward))
            }
            System::Typical | System::Expert => {
                let round = Round {
                    system,
                    scenario,
                    uri,
                    queue,
                    recorder,
                };
                Ok(Consumer::Raw(raw::RawConsumer::start(&round).await?))
            }
        }
    }

    /// Lets handlers finish and closes; an error if the consumer itself failed.
    pub(crate) async fn stop(self) -> Result<(), String> {
        match self {
            Consumer::Bus(running, forward) => {
                let stopped = running
                    .shutdown()
                    .await
                    .map_err(|e| format!("microservice: {e}"));
                if let Some(client) = forward {
                    client.close().await;
                }
                stopped
            }
            Consumer::Raw(raw) => raw.stop().await,
        }
    }
}
