//! The worker's Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `succeeded`, `failed`, `retrying` or `cancelled`.
    pub outcome: &'static str,
    /// The failure code; empty unless the job failed or is retried.
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaunchLabels {
    /// `true` when an earlier worker's runner was adopted instead of a new one started.
    pub adopted: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub jobs: Family<OutcomeLabels, Counter>,
    pub launches: Family<LaunchLabels, Counter>,
    pub in_flight: Gauge,
    pub queue_wait: Histogram,
    pub startup: Histogram,
    pub generation: Histogram,
    pub end_to_end: Histogram,
    pub gpu_seconds: Counter<f64>,
}

fn seconds_histogram() -> Histogram {
    // 50 ms to about 7 minutes.
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ducks_worker");
        let metrics = Self {
            jobs: Family::default(),
            launches: Family::default(),
            in_flight: Gauge::default(),
            queue_wait: seconds_histogram(),
            startup: seconds_histogram(),
            generation: seconds_histogram(),
            end_to_end: seconds_histogram(),
            gpu_seconds: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "jobs",
            "Job attempts by outcome and failure code",
            metrics.jobs.clone(),
        );
        registry.register(
            "launches",
            "Runners started, or adopted from an earlier worker",
            metrics.launches.clone(),
        );
        registry.register(
            "jobs_in_flight",
            "Jobs this worker holds now",
            metrics.in_flight.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "From submit until a worker took the job",
            metrics.queue_wait.clone(),
        );
        registry.register(
            "startup_seconds",
            "From launch until the runner started generating",
            metrics.startup.clone(),
        );
        registry.register(
            "generation_seconds",
            "Time spent denoising and decoding",
            metrics.generation.clone(),
        );
        registry.register(
            "end_to_end_seconds",
            "From submit until the result was published",
            metrics.end_to_end.clone(),
        );
        registry.register(
            "gpu_seconds",
            "GPU time held by launches",
            metrics.gpu_seconds.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn count_job(&self, outcome: &'static str, code: &'static str) {
        self.jobs
            .get_or_create(&OutcomeLabels { outcome, code })
            .inc();
    }

    pub fn count_launch(&self, adopted: bool) {
        let adopted = if adopted { "true" } else { "false" };
        self.launches.get_or_create(&LaunchLabels { adopted }).inc();
    }

    /// Runners started or adopted so far.
    pub fn launches_total(&self, adopted: bool) -> u64 {
        let adopted = if adopted { "true" } else { "false" };
        self.launches.get_or_create(&LaunchLabels { adopted }).get()
    }
}
