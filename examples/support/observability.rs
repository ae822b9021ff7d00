//! What the examples share to be observed: rmq-bus's metrics exported for Prometheus, and the
//! HTTP routes `/metrics` (the text exposition) and `/health` (200 when the microservice is
//! connected and consuming every queue, 503 otherwise: a readiness probe).
//!
//! Included by the examples with `#[path = "support/observability.rs"] mod observability;`.

// Each example uses what it needs of it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rmq_bus::ClientProxy;
use rmq_bus::health::{Health, HealthProbe};
use serde_json::json;

/// OpenTelemetry's advice for the buckets of messaging durations, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Installs the process's metrics recorder: Prometheus, with OpenTelemetry's mapping of names
/// (`messaging.client.sent.messages` → `messaging_client_sent_messages_total`, durations in
/// `_seconds` histograms). Call it before starting microservices and clients: their instruments
/// are made when they start. Exporting over OTLP instead is a matter of installing another
/// recorder here (metrics-exporter-opentelemetry, say).
pub(crate) fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets_for_metric(Matcher::Suffix("duration".into()), &DURATION_BUCKETS)
        .and_then(|builder| builder.install_recorder())
        .map_err(|error| format!("cannot install the Prometheus recorder: {error}"))?;
    // Histograms keep their samples until drained: drain them now and then even if nobody
    // scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// What `/health` reports on: the service's microservice, and the clients it sends with.
#[derive(Clone)]
struct Observed {
    metrics: PrometheusHandle,
    microservice: HealthProbe,
    clients: Vec<(&'static str, ClientProxy)>,
}

/// The routes `/metrics` and `/health` for `microservice` and the `clients` it sends with.
/// Readiness is the microservice's: a client connects again on its next call, so a client
/// that lost its connection is shown, not counted against readiness (nothing would call it
/// again while the service is out of rotation).
pub(crate) fn routes(
    metrics: PrometheusHandle,
    microservice: HealthProbe,
    clients: Vec<(&'static str, ClientProxy)>,
) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(health))
        .with_state(Observed {
            metrics,
            microservice,
            clients,
        })
}

async fn render_metrics(State(observed): State<Observed>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        observed.metrics.render(),
    )
}

async fn health(State(observed): State<Observed>) -> impl IntoResponse {
    let health = observed.microservice.health();
    let status = if health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let clients: serde_json::Map<String, serde_json::Value> = observed
        .clients
        .iter()
        .map(|(name, client)| {
            let connection = client.health().connection.as_str();
            ((*name).to_owned(), json!({ "connection": connection }))
        })
        .collect();
    let body = json!({
        "status": if health.is_ready() { "ok" } else { "unavailable" },
        "microservice": describe(&health),
        "clients": clients,
    });
    (status, Json(body))
}

fn describe(health: &Health) -> serde_json::Value {
    let consumers: Vec<_> = health
        .consumers
        .iter()
        .map(|consumer| json!({ "queue": consumer.queue, "consuming": consumer.consuming }))
        .collect();
    json!({ "connection": health.connection.as_str(), "consumers": consumers })
}

/// Serves `routes` on `METRICS_PORT` (default 9464, OpenTelemetry's Prometheus port) in the
/// background, for a service without an HTTP server of its own. A port that cannot be bound is
/// logged and the service runs on without the endpoints.
pub(crate) async fn serve_on_metrics_port(routes: Router) -> Result<(), String> {
    let port = match std::env::var("METRICS_PORT") {
        Err(_) => 9464,
        Ok(raw) => raw.trim().parse().map_err(|_| {
            format!("environment variable METRICS_PORT={raw:?} is not a port number")
        })?,
    };
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => {
            tracing::info!("metrics and health on http://{address}/metrics and /health");
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, routes).await {
                    tracing::error!(%error, "the metrics server failed");
                }
            });
        }
        Err(error) => tracing::error!(
            %error,
            "cannot serve /metrics and /health on {address} (set METRICS_PORT to a free port); running without them"
        ),
    }
    Ok(())
}
