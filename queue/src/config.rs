//! Queue settings. Durations are whole milliseconds or seconds so they read well in environment variables.

use std::collections::BTreeMap;

use ducks_contract::Scope;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Name inside the hash tag of every key; queues with different names are independent.
    pub name: String,
    /// Submit answers `QueueFull` once this many jobs wait (queued or delayed).
    pub max_backlog: u64,
    /// Largest accepted job message, in bytes.
    pub max_payload_bytes: usize,
    /// Unfinished jobs one requester may have; 0 means no limit.
    pub per_requester_in_flight: u32,
    /// Submits one requester may make per window; 0 means no limit.
    pub per_requester_rate: u32,
    pub per_requester_window_secs: u64,
    /// Limits per scope (a Discord server, a Twitch channel, an API client), by origin kind
    /// (`twitch`: every channel) or by scope (`twitch:ducks`: one channel). A scope's own entry
    /// wins over its kind's, field by field, and both over the built-in defaults
    /// ([`ScopeLimits::builtin`]).
    pub scopes: BTreeMap<String, ScopeLimits>,
    /// How long an idempotency key keeps returning the first job.
    pub idempotency_ttl_secs: u64,
    /// How long a job's status stays readable after its last change, and how long events stay
    /// on an origin's stream when no front end reads it with a consumer group.
    pub status_ttl_secs: u64,
    /// The most an event is kept for front ends that read it with a consumer group but have not
    /// yet: a front end away longer than this misses its older events.
    pub events_max_age_secs: u64,
    /// Approximate length cap of the dead letters.
    pub dead_letters_max_len: u64,
    /// A job whose worker has not renewed its lease for this long is handed to another worker.
    pub lease_ms: u64,
    /// Deliveries after which a job that never finishes goes to the dead letters.
    pub max_deliveries: u32,
    /// Retries a job gets after failures that a retry can fix.
    pub max_retries: u32,
    /// First retry backoff; it doubles each attempt, with jitter, up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Longest a blocking read waits for new jobs before checking for stale and delayed ones.
    pub block_ms: u64,
    /// Events a front end's consumer read but did not acknowledge for this long go to another
    /// consumer of its group (the first is presumed dead).
    pub event_claim_after_ms: u64,
    /// Consumers (workers, front ends) silent this long with nothing pending are removed from
    /// their group.
    pub dead_consumer_secs: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            name: "main".into(),
            max_backlog: 10_000,
            max_payload_bytes: 16 * 1024,
            per_requester_in_flight: 4,
            per_requester_rate: 20,
            per_requester_window_secs: 60,
            scopes: BTreeMap::new(),
            idempotency_ttl_secs: 24 * 3600,
            status_ttl_secs: 24 * 3600,
            events_max_age_secs: 7 * 24 * 3600,
            dead_letters_max_len: 10_000,
            lease_ms: 30_000,
            max_deliveries: 3,
            max_retries: 3,
            retry_base_ms: 2_000,
            retry_max_ms: 60_000,
            block_ms: 2_000,
            event_claim_after_ms: 60_000,
            dead_consumer_secs: 3_600,
        }
    }
}

/// The limits of one scope. Unset fields fall back to the origin kind's entry, then to the
/// built-in defaults; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScopeLimits {
    /// Unfinished jobs the whole scope may have at once (a raid of a thousand viewers cannot
    /// queue a thousand jobs).
    pub in_flight: Option<u32>,
    /// Submits the whole scope may make per window.
    pub rate: Option<u32>,
    pub window_secs: Option<u64>,
}

/// The limits that apply to one scope, every field settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub in_flight: u32,
    pub rate: u32,
    pub window_secs: u64,
}

impl ScopeLimits {
    /// What applies to a kind no setting names: a Twitch channel 10 jobs at once and 30 a
    /// minute, a Discord server 20 and 60; API clients, the command line and raw Redis clients
    /// no scope limit (their requesters' limits still apply).
    pub fn builtin(kind: &str) -> ScopeLimits {
        let (in_flight, rate) = match kind {
            "twitch" => (10, 30),
            "discord" => (20, 60),
            _ => (0, 0),
        };
        ScopeLimits {
            in_flight: Some(in_flight),
            rate: Some(rate),
            window_secs: Some(60),
        }
    }

    fn or(self, other: ScopeLimits) -> ScopeLimits {
        ScopeLimits {
            in_flight: self.in_flight.or(other.in_flight),
            rate: self.rate.or(other.rate),
            window_secs: self.window_secs.or(other.window_secs),
        }
    }
}

impl QueueConfig {
    /// The limits of `scope`: its own entry, then its kind's, then the built-in ones.
    pub fn scope_limits(&self, scope: &Scope) -> Settled {
        self.scope_limits_with(scope, ScopeLimits::default())
    }

    /// [`QueueConfig::scope_limits`], with `given` (an API key's own limits) before all of them.
    pub fn scope_limits_with(&self, scope: &Scope, given: ScopeLimits) -> Settled {
        let own = given.or(self
            .scopes
            .get(&scope.to_string())
            .copied()
            .unwrap_or_default());
        let kind = self.scopes.get(scope.kind).copied().unwrap_or_default();
        let limits = own.or(kind).or(ScopeLimits::builtin(scope.kind));
        Settled {
            in_flight: limits.in_flight.unwrap_or(0),
            rate: limits.rate.unwrap_or(0),
            window_secs: limits.window_secs.unwrap_or(60).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_takes_its_own_limits_then_its_kinds_then_the_builtin_ones() {
        let mut config = QueueConfig::default();
        config.scopes.insert(
            "twitch".into(),
            ScopeLimits {
                rate: Some(100),
                ..ScopeLimits::default()
            },
        );
        config.scopes.insert(
            "twitch:ducks".into(),
            ScopeLimits {
                in_flight: Some(3),
                ..ScopeLimits::default()
            },
        );
        let scope = |kind, name: &str| Scope {
            kind,
            name: name.into(),
        };
        let settled = |in_flight, rate, window_secs| Settled {
            in_flight,
            rate,
            window_secs,
        };
        let table = [
            (scope("twitch", "ducks"), settled(3, 100, 60)),
            (scope("twitch", "geese"), settled(10, 100, 60)),
            (scope("discord", "1234"), settled(20, 60, 60)),
            (scope("api", "acme"), settled(0, 0, 60)),
            (scope("cli", ""), settled(0, 0, 60)),
        ];
        for (scope, expect) in table {
            assert_eq!(config.scope_limits(&scope), expect, "{scope}");
        }
    }
}
