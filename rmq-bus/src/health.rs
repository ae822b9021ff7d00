//! Health: whether a running microservice or a client is connected to its broker and, for a
//! microservice, consuming each of its queues. What a readiness probe asks
//! ([`Health::is_ready`]); from [`RunningMicroservice::health`](crate::microservice::RunningMicroservice::health)
//! and [`ClientProxy::health`](crate::ClientProxy::health).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// The state of a connection to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected yet, and not trying: a client before its first call, or after
    /// [`close`](crate::ClientProxy::close).
    Idle,
    /// Connecting: a microservice starting, or reconnecting after the connection was lost.
    Connecting,
    /// Connected.
    Connected,
    /// The connection was lost. A microservice is reconnecting; a client reconnects on its next
    /// call.
    Disconnected,
    /// Shut down.
    Closed,
}

impl ConnectionState {
    /// The state's name in `snake_case`, as a health endpoint shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Idle => "idle",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Closed => "closed",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Self {
        [
            ConnectionState::Idle,
            ConnectionState::Connecting,
            ConnectionState::Connected,
            ConnectionState::Disconnected,
            ConnectionState::Closed,
        ]
        .get(usize::from(code))
        .copied()
        .unwrap_or(ConnectionState::Closed)
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One queue's consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerState {
    /// The queue.
    pub queue: String,
    /// Whether its consumer is running on a live connection.
    pub consuming: bool,
}

/// What a microservice or client reports of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Its connection.
    pub connection: ConnectionState,
    /// Its queues' consumers (none for a client).
    pub consumers: Vec<ConsumerState>,
}

impl Health {
    /// Connected, and consuming every queue: ready for traffic (HTTP 200 on a readiness probe,
    /// 503 otherwise). A client is ready once connected.
    pub fn is_ready(&self) -> bool {
        self.connection == ConnectionState::Connected
            && self.consumers.iter().all(|consumer| consumer.consuming)
    }
}

/// A handle on a running microservice's health, to give to whoever answers health checks (an
/// HTTP route, say) while the microservice itself is kept for its shutdown. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HealthProbe(pub(crate) Arc<Tracker>);

impl HealthProbe {
    /// The microservice's health now.
    pub fn health(&self) -> Health {
        self.0.report()
    }
}

/// A microservice's health as its supervisor and consumers update it.
#[derive(Debug)]
pub(crate) struct Tracker {
    connection: AtomicU8,
    /// Per queue, in the order of `queues`.
    consuming: Vec<AtomicBool>,
    queues: Vec<String>,
}

impl Tracker {
    pub(crate) fn new(queues: Vec<String>) -> Self {
        Self {
            connection: AtomicU8::new(ConnectionState::Connecting.code()),
            consuming: queues.iter().map(|_| AtomicBool::new(false)).collect(),
            queues,
        }
    }

    pub(crate) fn connection(&self, state: ConnectionState) {
        self.connection.store(state.code(), Ordering::Release);
        if state != ConnectionState::Connected {
            for consuming in &self.consuming {
                consuming.store(false, Ordering::Release);
            }
        }
    }

    /// Queue number `index` is consumed now.
    pub(crate) fn consuming(&self, index: usize) {
        if let Some(consuming) = self.consuming.get(index) {
            consuming.store(true, Ordering::Release);
        }
    }

    pub(crate) fn report(&self) -> Health {
        Health {
            connection: ConnectionState::from_code(self.connection.load(Ordering::Acquire)),
            consumers: self
                .queues
                .iter()
                .zip(&self.consuming)
                .map(|(queue, consuming)| ConsumerState {
                    queue: queue.clone(),
                    consuming: consuming.load(Ordering::Acquire),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_connected_and_consuming_everything() {
        let tracker = Tracker::new(vec!["a".into(), "b".into()]);
        assert!(!tracker.report().is_ready());
        tracker.connection(ConnectionState::Connected);
        tracker.consuming(0);
        assert!(!tracker.report().is_ready(), "b is not consumed");
        tracker.consuming(1);
        assert!(tracker.report().is_ready());
        tracker.connection(ConnectionState::Disconnected);
        let health = tracker.report();
        assert!(!health.is_ready());
        assert!(health.consumers.iter().all(|consumer| !consumer.consuming));
        assert_eq!(health.connection.as_str(), "disconnected");
    }
}
