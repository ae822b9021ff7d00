//! The instruments rmq-bus records through: the `metrics` crate's handles with the feature
//! `metrics`, empty stand-ins without it, so that call sites need no `cfg`.
//!
//! Handles are made once (per queue, per route, per client), never per message: a handle made
//! while no recorder is installed is a no-op whose use costs one branch.

/// An attribute: a name from [`super::names`] and a low-cardinality value.
pub(crate) type Attribute = (&'static str, String);

#[cfg(feature = "metrics")]
mod imp {
    use super::Attribute;

    pub(crate) use metrics::{Counter, Gauge, Histogram};

    fn labels(attributes: &[Attribute]) -> Vec<metrics::Label> {
        attributes
            .iter()
            .map(|(key, value)| metrics::Label::new(*key, value.clone()))
            .collect()
    }

    pub(crate) fn counter(name: &'static str, attributes: &[Attribute]) -> Counter {
        metrics::counter!(name, labels(attributes))
    }

    pub(crate) fn gauge(name: &'static str, attributes: &[Attribute]) -> Gauge {
        metrics::gauge!(name, labels(attributes))
    }

    pub(crate) fn histogram(name: &'static str, attributes: &[Attribute]) -> Histogram {
        metrics::histogram!(name, labels(attributes))
    }

    /// Tells the installed recorder the unit and meaning of every instrument (exporters use them
    /// for names such as `_seconds` and `_total`, and help texts). Made with the first handles,
    /// so after the application installed its recorder.
    pub(crate) fn describe() {
        use metrics::Unit;

        use crate::telemetry::names::*;
        let counters = [
            (
                SENT,
                "Messages rmq-bus published (emits and requests), failed ones with error.type.",
            ),
            (CONSUMED, "Messages delivered to this service's consumers."),
            (
                SETTLEMENTS,
                "Deliveries settled, by how (rmq_bus.settlement) and, for dead letters and rejections, why (rmq_bus.reason).",
            ),
            (RECONNECTS, "Connections opened again after one was lost."),
            (
                OUTBOX_PUBLISHED,
                "Outbox rows the broker confirmed, removed from the outbox.",
            ),
            (
                OUTBOX_DEAD,
                "Outbox rows that can never be published, moved to rmq_bus_outbox_dead.",
            ),
        ];
        for (name, help) in counters {
            metrics::describe_counter!(name, Unit::Count, help);
        }
        let durations = [
            (OPERATION_DURATION, "Publish until the broker's confirm."),
            (
                PROCESS_DURATION,
                "Handler run time, from routing to its return.",
            ),
            (
                OUTAGE_DURATION,
                "Time from losing a connection to consuming again.",
            ),
        ];
        for (name, help) in durations {
            metrics::describe_histogram!(name, Unit::Seconds, help);
        }
        metrics::describe_histogram!(
            ACK_BATCH,
            Unit::Count,
            "Deliveries one multiple ack settled."
        );
        let gauges = [
            (IN_FLIGHT, "Handlers running now, per queue."),
            (PREFETCH, "The prefetch window of each queue's consumer."),
            (
                UNACKED,
                "Deliveries received and not acked on the wire yet: the prefetch window in use.",
            ),
            (CONNECTIONS, "Open connections to the broker, by role."),
            (
                OUTBOX_BACKLOG,
                "Rows waiting in the outbox, as its relay last counted them.",
            ),
        ];
        for (name, help) in gauges {
            metrics::describe_gauge!(name, Unit::Count, help);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use super::Attribute;

    /// Stands in for `metrics::Counter` without the feature `metrics`.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Counter;
    impl Counter {
        pub(crate) fn increment(&self, _: u64) {}
    }

    /// Stands in for `metrics::Gauge` without the feature `metrics`.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Gauge;
    impl Gauge {
        pub(crate) fn set(&self, _: f64) {}
        pub(crate) fn increment(&self, _: f64) {}
        pub(crate) fn decrement(&self, _: f64) {}
    }

    /// Stands in for `metrics::Histogram` without the feature `metrics`.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Histogram;
    impl Histogram {
        pub(crate) fn record(&self, _: f64) {}
    }

    pub(crate) fn counter(_: &'static str, _: &[Attribute]) -> Counter {
        Counter
    }

    pub(crate) fn gauge(_: &'static str, _: &[Attribute]) -> Gauge {
        Gauge
    }

    pub(crate) fn histogram(_: &'static str, _: &[Attribute]) -> Histogram {
        Histogram
    }

    pub(crate) fn describe() {}
}

pub(crate) use imp::*;

/// Whether anything is recorded at all: without the feature `metrics` nothing reads the
/// instruments, so nothing that only feeds them (a clock, a count) is taken.
pub(crate) const RECORDING: bool = cfg!(feature = "metrics");

/// Whether timings are taken at all.
pub(crate) const TIMED: bool = RECORDING;
