//! `/healthz` (the process answers), `/readyz` (Redis answered the last read and the catalogue is
//! loaded) and `/metrics` (Prometheus text).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use ducks_models::ManifestIndex;

use crate::metrics::Metrics;

/// What the probes look at.
#[derive(Clone)]
pub struct Probe {
    pub metrics: Arc<Metrics>,
    pub catalogue: ManifestIndex,
    /// Whether the last read from the queue succeeded.
    pub queue_ok: Arc<AtomicBool>,
}

pub async fn serve(
    listener: TcpListener,
    probe: Probe,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(probe);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn ready(State(probe): State<Probe>) -> impl IntoResponse {
    let queue = probe.queue_ok.load(Ordering::Relaxed);
    let catalogue = probe.catalogue.is_loaded();
    if queue && catalogue {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: queue reachable {queue}, catalogue loaded {catalogue}\n"),
        )
    }
}

async fn metrics(State(probe): State<Probe>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        probe.metrics.render(),
    )
}
