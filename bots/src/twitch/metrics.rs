//! The Twitch bot's Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `imagine`, `models`, `cancel`, `help`, `pause`, `resume`, `cancel_user`, `unknown`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The NOTICE's `msg-id`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `posted` or `undeliverable`.
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    commands: Family<KindLabels, Counter>,
    sent: Counter,
    refused: Family<ReasonLabels, Counter>,
    budget_waits: Counter,
    results: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ducks_twitch");
        let commands = Family::<KindLabels, Counter>::default();
        let sent = Counter::default();
        let refused = Family::<ReasonLabels, Counter>::default();
        let budget_waits = Counter::default();
        let results = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands taken by this replica, by kind",
            commands.clone(),
        );
        registry.register(
            "messages_sent",
            "Messages sent to Twitch chat, retries included",
            sent.clone(),
        );
        registry.register(
            "messages_refused",
            "Messages Twitch refused with a NOTICE, by its msg-id",
            refused.clone(),
        );
        registry.register(
            "budget_waits",
            "Times a message waited for the shared sending budget",
            budget_waits.clone(),
        );
        registry.register("results", "Results, by outcome", results.clone());
        Self {
            registry,
            commands,
            sent,
            refused,
            budget_waits,
            results,
        }
    }
}

impl Metrics {
    pub fn command(&self, kind: &'static str) {
        self.commands.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn sent(&self) {
        self.sent.inc();
    }

    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.chars().take(40).collect(),
            })
            .inc();
    }

    pub fn budget_wait(&self) {
        self.budget_waits.inc();
    }

    pub fn result(&self, outcome: &'static str) {
        self.results.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
