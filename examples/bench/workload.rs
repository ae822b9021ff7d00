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

    /// Whether the system takes part in `scenario`: the exporter's cost is measured in S1.
    pub(crate) fn runs(self, scenario: Scenario) -> bool {
        self != System::RmqBusPrometheus || scenario == Scenario::S1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    S1,
    S2,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 2] = [Scenario::S1, Scenario::S2];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::S1 => "s1",
            Scenario::S2 => "s2",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scenario| scenario.name() == s)
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Scenario::S1 => "S1 pipeline",
            Scenario::S2 => "S2 slow handler (5 ms)",
        }
    }

    /// S1 uses the prefetch of the task; S2 rmq-bus's default, for every system alike.
    pub(crate) fn prefetch(self) -> u16 {
        match self {
            Scenario::S1 => PREFETCH,
            Scenario::S2 => DEFAULT_PREFETCH,
        }
    }

    pub(crate) fn handler_delay(self) -> Option<Duration> {
        match self {
            Scenario::S1 => None,
            Scenario::S2 => Some(SLOW_HANDLER),
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
