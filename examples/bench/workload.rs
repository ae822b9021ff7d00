//! What is compared: the systems, the scenarios, and the parameters every system shares.

use std::fmt;
use std::time::Duration;

use crate::DEFAULT_PREFETCH;

/// Publishes awaiting their confirm at once, per system.
pub(crate) const IN_FLIGHT: usize = 1000;
/// S1's prefetch, as the task specifies it.
pub(crate) const PREFETCH: u16 = 100;
/// The S2 handler's stand-in for I/O.
pub(crate) const SLOW_HANDLER: Duration = Duration::from_millis(5);

/// Where S4's handlers send their `order_processed` events: a queue beside the round's.
pub(crate) fn forward_queue(queue: &str) -> String {
    format!("{queue}.out")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    RmqBus,
    /// rmq-bus with a Prometheus exporter installed: what its metrics cost (S1 only).
    RmqBusPrometheus,
    Typical,
    Expert,
}

impl System {
    pub(crate) const ALL: [System; 4] = [
        System::RmqBus,
        System::RmqBusPrometheus,
        System::Typical,
        System::Expert,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            System::RmqBus => "rmq-bus",
            System::RmqBusPrometheus => "rmq-bus-prometheus",
            System::Typical => "lapin-typical",
            System::Expert => "lapin-expert",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|system| system.name() == s)
    }
}

/// Open-loop publishing rates of the latency scenarios, per second.
pub(crate) const LOW_RATE: u32 = 1_000;
pub(crate) const HIGH_RATE: u32 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    S1,
    S2,
    /// The billing pipeline: drain waiting events, each handled by emitting one confirmed event
    /// and then acking.
    S4,
    /// Open loop at [`LOW_RATE`]: latency at normal load, not under saturation.
    LatencyLow,
    /// Open loop at [`HIGH_RATE`].
    LatencyHigh,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 5] = [
        Scenario::S1,
        Scenario::S2,
        Scenario::S4,
        Scenario::LatencyLow,
        Scenario::LatencyHigh,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::S1 => "s1",
            Scenario::S2 => "s2",
            Scenario::S4 => "s4",
            Scenario::LatencyLow => "latency1k",
            Scenario::LatencyHigh => "latency5k",
        }
    }

    /// The systems compared in this scenario: S4 is measured against the expert pipeline, the
    /// latency scenarios against the lapin code most people write and the expert one.
    pub(crate) fn systems(self) -> &'static [System] {
        match self {
            // rmq-bus with a Prometheus exporter: what a recorder costs, in S1 only.
            Scenario::S1 => &System::ALL,
            Scenario::S4 => &[System::RmqBus, System::Expert],
            _ => &[System::RmqBus, System::Typical, System::Expert],
        }
    }

    /// The fixed publishing rate of an open-loop scenario; `None` publishes as fast as
    /// confirms allow.
    pub(crate) fn rate(self) -> Option<u32> {
        match self {
            Scenario::LatencyLow => Some(LOW_RATE),
            Scenario::LatencyHigh => Some(HIGH_RATE),
            _ => None,
        }
    }

    /// Whether the events wait in the queue before the consumer starts (S4), rather than being
    /// published while it runs.
    pub(crate) fn drains_backlog(self) -> bool {
        self == Scenario::S4
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scenario| scenario.name() == s)
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Scenario::S1 => "S1 pipeline",
            Scenario::S2 => "S2 slow handler (5 ms)",
            Scenario::S4 => {
                "S4 billing pipeline (drain waiting events: emit one confirmed event, then ack; \
                 latency is time spent waiting in the queue)"
            }
            Scenario::LatencyLow => "Latency at 1k/s, open loop (publish → handler)",
            Scenario::LatencyHigh => "Latency at 5k/s, open loop (publish → handler)",
        }
    }

    /// S1 uses the prefetch of the task; the others rmq-bus's default, for every system alike.
    pub(crate) fn prefetch(self) -> u16 {
        match self {
            Scenario::S1 => PREFETCH,
            // The parent checked the variable (`s4_prefetch`); its children read it again.
            Scenario::S4 => s4_prefetch().unwrap_or(DEFAULT_PREFETCH),
            _ => DEFAULT_PREFETCH,
        }
    }

    pub(crate) fn handler_delay(self) -> Option<Duration> {
        match self {
            Scenario::S2 => Some(SLOW_HANDLER),
            _ => None,
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// S4's prefetch: `S4_PREFETCH`, else rmq-bus's default, the same for every system.
pub(crate) fn s4_prefetch() -> crate::Res<u16> {
    let prefetch = crate::env_number("S4_PREFETCH", DEFAULT_PREFETCH)?;
    match prefetch {
        0 => Err("S4_PREFETCH must be at least 1".into()),
        prefetch => Ok(prefetch),
    }
}
