//! The API's Prometheus metrics, served at `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's pattern (`/v1/jobs/{id}`), never the path itself: ids would explode the
    /// label set.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `delivered`, `failed` (to be retried) or `given_up`.
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    watchers: Gauge,
    webhooks: Family<WebhookLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ducks_api");
        let requests = Family::<RequestLabels, Counter>::default();
        // 1 ms to about 16 s; waits for images end in the last buckets.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        let watchers = Gauge::default();
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "request_seconds",
            "Time to answer, by route",
            latency.clone(),
        );
        registry.register(
            "event_watchers",
            "Open server-sent-event streams",
            watchers.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook attempts by outcome",
            webhooks.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            watchers,
            webhooks,
        }
    }
}

/// Counts one open event stream while it lives.
pub struct Watching(Gauge);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn watching(self: &Arc<Self>) -> Watching {
        self.watchers.inc();
        Watching(self.watchers.clone())
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks
            .get_or_create(&WebhookLabels { outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
