//! The Discord bot's Prometheus metrics, served at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `imagine`, `models`, `jobs`, `autocomplete`, `reroll`, `cancel`, `details`, `ping`,
    /// `unknown`, `unreadable`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestLabels {
    /// What the request was for (`callback`, `edit_original`, `channel_message`, `commands`).
    pub what: &'static str,
    /// The HTTP status, or `error` when no answer came.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabels {
    pub what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `edited` (the interaction's message), `channel_message` (after the token expired),
    /// `undeliverable` (no way to post; readable through `/jobs`).
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    interactions: Family<KindLabels, Counter>,
    first_answer: Histogram,
    rest: Family<RestLabels, Counter>,
    rate_limited: Family<WhatLabels, Counter>,
    results: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ducks_discord");
        let interactions = Family::<KindLabels, Counter>::default();
        // 0.5 ms to about 8 s: Discord's limit is 3 s.
        let first_answer = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        let rest = Family::<RestLabels, Counter>::default();
        let rate_limited = Family::<WhatLabels, Counter>::default();
        let results = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "interactions",
            "Interactions received, by kind (unreadable: payloads the bot could not parse)",
            interactions.clone(),
        );
        registry.register(
            "first_answer_seconds",
            "Time from receiving an interaction to its first answer being ready",
            first_answer.clone(),
        );
        registry.register(
            "rest_requests",
            "Requests to Discord's REST API, by purpose and status",
            rest.clone(),
        );
        registry.register(
            "rate_limited",
            "429 answers from Discord, by purpose",
            rate_limited.clone(),
        );
        registry.register(
            "results",
            "Results delivered, by how they reached the channel",
            results.clone(),
        );
        Self {
            registry,
            interactions,
            first_answer,
            rest,
            rate_limited,
            results,
        }
    }
}

impl Metrics {
    pub fn interaction(&self, kind: &'static str) {
        self.interactions.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn first_answer(&self, took: Duration) {
        self.first_answer.observe(took.as_secs_f64());
    }

    pub fn rest(&self, what: &'static str, status: &str) {
        self.rest
            .get_or_create(&RestLabels {
                what,
                status: status.to_owned(),
            })
            .inc();
    }

    pub fn rate_limited(&self, what: &'static str) {
        self.rate_limited.get_or_create(&WhatLabels { what }).inc();
    }

    pub fn result(&self, outcome: &'static str) {
        self.results.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
