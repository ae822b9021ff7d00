//! Trace context across the broker, for `tracing-opentelemetry` users (feature
//! `opentelemetry`): a delivery's span takes the sender's W3C `traceparent` as its parent, and a
//! publish carries the context of the span it is made in. Without the feature both are no-ops,
//! and rmq-bus still carries `traceparent` forward from handler to emit (see `correlation`).

use serde_json::Value;
use tracing::{Span, field};

use crate::delivery::DeliveryInfo;

/// The span a delivery is handled in (`rmq.delivery`, target `rmq_bus::dispatch`): the
/// attributes of OpenTelemetry's messaging conventions and rmq-bus's short names, computed only
/// when a subscriber wants the span, continuing the sender's trace (feature `opentelemetry`).
/// `pattern` and `error.type` are recorded once known.
pub(crate) fn delivery_span(info: &DeliveryInfo) -> Span {
    let destination =
        || super::consumer_destination(&info.exchange, &info.routing_key, &info.queue);
    let span = tracing::info_span!(
        target: "rmq_bus::dispatch",
        "rmq.delivery",
        "otel.name" = format!("process {}", destination()),
        "otel.kind" = "consumer",
        "messaging.system" = "rabbitmq",
        "messaging.operation.name" = "process",
        "messaging.operation.type" = "process",
        "messaging.destination.name" = destination(),
        "messaging.rabbitmq.destination.routing_key" = info.routing_key.as_str(),
        "messaging.rabbitmq.message.delivery_tag" = info.delivery_tag,
        "messaging.message.conversation_id" = info.properties.correlation_id.as_deref(),
        "error.type" = field::Empty,
        queue = %info.queue,
        delivery_tag = info.delivery_tag,
        redelivered = info.redelivered,
        correlation_id = info.properties.correlation_id.as_deref().unwrap_or(""),
        pattern = field::Empty,
    );
    let traceparent = info
        .properties
        .headers
        .get("traceparent")
        .and_then(Value::as_str);
    continue_trace(&span, traceparent);
    span
}

/// The span an `emit` publishes in (`rmq.publish`, target `rmq_bus::client`), with the same
/// attributes; `error.type` is recorded on failure.
pub(crate) fn publish_span(exchange: &str, routing_key: &str, pattern: &str) -> Span {
    let destination = || super::producer_destination(exchange, routing_key);
    tracing::info_span!(
        target: "rmq_bus::client",
        "rmq.publish",
        "otel.name" = format!("send {}", destination()),
        "otel.kind" = "producer",
        "messaging.system" = "rabbitmq",
        "messaging.operation.name" = "send",
        "messaging.operation.type" = "send",
        "messaging.destination.name" = destination(),
        "messaging.rabbitmq.destination.routing_key" = routing_key,
        "error.type" = field::Empty,
        pattern = pattern,
    )
}

/// Makes `span` continue the trace of `traceparent`, the incoming message's header. Called
/// before the span is first entered; a missing or malformed header leaves it a root.
#[cfg(feature = "opentelemetry")]
fn continue_trace(span: &Span, traceparent: Option<&str>) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if span.is_disabled() {
        return;
    }
    let Some(parent) = traceparent.and_then(parse) else {
        return;
    };
    let context = opentelemetry::Context::new().with_remote_span_context(parent);
    // Fails only without a tracing-opentelemetry layer, which then has no trace to continue.
    let _ = span.set_parent(context);
}

#[cfg(not(feature = "opentelemetry"))]
fn continue_trace(_: &Span, _: Option<&str>) {}

/// The `traceparent` of the current span's OpenTelemetry context, for a message published in
/// it; `None` outside a traced span.
#[cfg(feature = "opentelemetry")]
pub(crate) fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let span = Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn current_traceparent() -> Option<String> {
    None
}

/// A version-00 W3C `traceparent` as a remote span context.
#[cfg(feature = "opentelemetry")]
fn parse(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace_id.len() != 32 || span_id.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_parsed_strictly() {
        let parsed = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let parsed = parsed.map(|context| {
            (
                context.trace_id().to_string(),
                context.span_id().to_string(),
                context.is_sampled(),
                context.is_remote(),
            )
        });
        assert_eq!(
            parsed,
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned(),
                true,
                true
            ))
        );
        for bad in [
            "",
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
