//! Webhooks, as the Standard Webhooks specification defines them: each delivery is a JSON POST
//! with `webhook-id` (the same on every retry, so receivers can drop repeats),
//! `webhook-timestamp` and `webhook-signature` (`v1,` + base64 HMAC-SHA256 over
//! `id.timestamp.body` under the key's `whsec_` secret).
//!
//! Deliveries live in Redis until they are made or given up (`api.webhook_retry_secs`), so an
//! API restart loses none; replicas take due deliveries under a lease, so each is sent by one.
//! Addresses are checked when the job is accepted and again on the address actually connected to
//! (a resolver that refuses private answers: no DNS rebinding into the API's own network), and
//! redirects are not followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ducks_contract::{JobEvent, Origin, Secret, time::rfc3339_ms};
use ducks_queue::{Queue, now_ms};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::view;

/// The longest webhook URL accepted.
const MAX_URL_LEN: usize = 2_048;
/// Deliveries taken per round.
const BATCH: usize = 32;
/// Deliveries in flight at once per replica: a slow receiver holds one of these, not the rest.
const IN_FLIGHT: usize = 64;
/// The longest a client lookup for a delivery may take.
const LOOKUP_LIMIT: Duration = Duration::from_secs(5);
/// How long a done delivery is remembered, so its event read again never sends it twice.
const REMEMBER_DONE: Duration = Duration::from_secs(8 * 24 * 3600);
/// How often due deliveries are looked for.
const POLL: Duration = Duration::from_millis(200);
/// The first retry's pause; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Whether `url` may receive webhooks: http(s), no credentials in it, and no literal private
/// address unless `allow_private`. Names are checked again when they are resolved.
pub fn check_url(url: &str, allow_private: bool) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!(
            "The webhook URL is longer than {MAX_URL_LEN} characters."
        ));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("The webhook URL is not a URL ({e})."))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err("The webhook URL must start with https:// (or http://).".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "The webhook URL must not carry a user name or password; verify the signature instead."
                .into(),
        );
    }
    let Some(host) = parsed.host() else {
        return Err("The webhook URL has no host.".into());
    };
    if allow_private {
        return Ok(());
    }
    let refused = match host {
        url::Host::Ipv4(ip) => !is_public(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => !is_public(IpAddr::V6(ip)),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost") || name.ends_with(".internal")
        }
    };
    if refused {
        return Err("The webhook URL points at a private, loopback or link-local address, which this API does not call.".into());
    }
    Ok(())
}

/// Whether an address is on the public internet: not loopback, private, link-local, shared
/// (carrier NAT), unspecified, multicast, documentation or benchmarking space, nor an IPv6 form
/// of one of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |high: u16, low: u16| {
                let [a, b] = high.to_be_bytes();
                let [c, d] = low.to_be_bytes();
                is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)))
            };
            match segments {
                // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d): the IPv4 address.
                [0, 0, 0, 0, 0, 0xffff, high, low] | [0, 0, 0, 0, 0, 0, high, low]
                    if !v6.is_loopback() && !v6.is_unspecified() =>
                {
                    embedded(high, low)
                }
                // NAT64 (64:ff9b::/96) reaches the IPv4 address it carries.
                [0x64, 0xff9b, 0, 0, 0, 0, high, low] => embedded(high, low),
                // 6to4 (2002::/16) carries an IPv4 address too.
                [0x2002, high, low, ..] => embedded(high, low),
                [first, second, ..] => {
                    !(v6.is_loopback()
                        || v6.is_unspecified()
                        || v6.is_multicast()
                        || (first & 0xfe00) == 0xfc00 // unique local
                        || (first & 0xffc0) == 0xfe80 // link-local
                        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                        || (first == 0x64 && second == 0xff9b) // local-use NAT64 (64:ff9b:1::/48)
                        || (first == 0x2001 && second == 0) // Teredo
                        || (first == 0x2001 && second == 0x0db8)) // documentation
                }
            }
        }
    }
}

/// `v1,<base64 signature>` of one delivery, as the specification computes it.
pub fn sign(secret: &Secret, id: &str, timestamp: u64, body: &str) -> Result<String, String> {
    let encoded = secret
        .expose()
        .strip_prefix("whsec_")
        .ok_or("webhook secrets start with whsec_")?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| "the webhook secret is not base64".to_owned())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// One delivery, as stored in Redis until it is made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    /// `webhook-id`: the same on every attempt.
    pub id: String,
    pub client: String,
    pub url: String,
    /// The JSON body, fixed at the first attempt so every attempt signs the same bytes.
    pub body: String,
    pub first_at_ms: u64,
    pub attempts: u32,
}

/// The delivery an event makes, when its job asked for one: terminal events always, others
/// when the job asked for progress. `entry` is the event's stream entry id, which makes the
/// delivery id stable.
pub fn delivery_for(event: &JobEvent, entry: &str) -> Option<Delivery> {
    let Origin::Api {
        client: Some(client),
        webhook: Some(webhook),
    } = &event.origin
    else {
        return None;
    };
    if !event.kind.is_terminal() && !webhook.progress {
        return None;
    }
    let body = serde_json::json!({
        "type": format!("job.{}", view::event_name(&event.kind)),
        "timestamp": rfc3339_ms(event.at_ms),
        "data": view::event(event),
    });
    Some(Delivery {
        id: format!("msg_{}_{entry}", event.job_id),
        client: client.clone(),
        url: webhook.url.clone(),
        body: body.to_string(),
        first_at_ms: event.at_ms,
        attempts: 0,
    })
}

/// A resolver that answers only public addresses (unless private ones are allowed), so the
/// address reqwest connects to is the one that was checked.
struct PublicOnly {
    allow_private: bool,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| allow_private || is_public(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{} resolves to no public address", name.as_str()).into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Sends due deliveries until `stop` turns true.
pub struct Sender {
    queue: Queue,
    http: reqwest::Client,
    retry_for: Duration,
    timeout: Duration,
    allow_private: bool,
    metrics: Arc<Metrics>,
}

impl Sender {
    pub fn new(
        queue: Queue,
        config: &crate::ApiConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let timeout = Duration::from_secs(config.webhook_timeout_secs.max(1));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve and connect on its own, past the address check.
            .no_proxy()
            .timeout(timeout)
            .dns_resolver(Arc::new(PublicOnly {
                allow_private: config.webhook_allow_private,
            }))
            .user_agent(concat!("ducks-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        Ok(Self {
            queue,
            http,
            retry_for: Duration::from_secs(config.webhook_retry_secs),
            timeout,
            allow_private: config.webhook_allow_private,
            metrics,
        })
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        // A taken delivery is leased for longer than one attempt can take: the client lookup,
        // the request, and storing the outcome.
        let lease = LOOKUP_LIMIT + self.timeout + Duration::from_secs(30);
        let sender = Arc::new(self);
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut sending = tokio::task::JoinSet::new();
        while !*stop.borrow() {
            while sending.try_join_next().is_some() {}
            let free = slots.available_permits().min(BATCH);
            let due = if free == 0 {
                Vec::new()
            } else {
                let take = sender.queue.take_due_webhooks(free, lease);
                tokio::select! {
                    taken = take => taken.unwrap_or_else(|e| {
                        warn!(message = "Reading due webhooks failed; retrying.", error = %e);
                        Vec::new()
                    }),
                    _ = stop.changed() => break,
                }
            };
            let idle = due.is_empty();
            for (id, stored) in due {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let sender = sender.clone();
                sending.spawn(async move {
                    sender.attempt(id, stored).await;
                    drop(slot);
                });
            }
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        // Deliveries in flight finish or are cut short; a cut one comes due again after its lease.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while sending.join_next().await.is_some() {}
        })
        .await;
        sending.abort_all();
    }

    async fn attempt(&self, id: String, stored: String) {
        let mut delivery: Delivery = match serde_json::from_str(&stored) {
            Ok(delivery) => delivery,
            Err(e) => {
                warn!(message = "Dropping an unreadable webhook delivery.", delivery = %id, error = %e);
                let _ = self.queue.finish_webhook(&id, REMEMBER_DONE).await;
                return;
            }
        };
        delivery.attempts += 1;
        // Checked again at every attempt (a literal address never reaches the resolver); an
        // address refused now is refused for good.
        if let Err(why) = check_url(&delivery.url, self.allow_private) {
            warn!(message = "Webhook given up: its address is refused.", delivery = %delivery.id, reason = %why);
            let _ = self.queue.finish_webhook(&id, REMEMBER_DONE).await;
            self.metrics.webhook("given_up");
            return;
        }
        let result = self.send(&delivery).await;
        let outcome = match result {
            Ok(()) => {
                info!(message = "Webhook delivered.", delivery = %delivery.id, attempts = delivery.attempts);
                let _ = self.queue.finish_webhook(&id, REMEMBER_DONE).await;
                "delivered"
            }
            Err(why)
                if now_ms().saturating_sub(delivery.first_at_ms)
                    > self.retry_for.as_millis() as u64 =>
            {
                warn!(message = "Webhook given up.", delivery = %delivery.id, attempts = delivery.attempts, reason = %why);
                let _ = self.queue.finish_webhook(&id, REMEMBER_DONE).await;
                "given_up"
            }
            Err(why) => {
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << delivery.attempts.saturating_sub(1).min(16))
                    .min(MAX_BACKOFF);
                let jittered = backoff.mul_f64(0.8 + fastrand::f64() * 0.4);
                warn!(message = "Webhook failed; it will be retried.", delivery = %delivery.id, attempts = delivery.attempts, retry_in_ms = jittered.as_millis() as u64, reason = %why);
                let stored = serde_json::to_string(&delivery).unwrap_or(stored);
                if let Err(e) = self.queue.retry_webhook(&id, &stored, jittered).await {
                    warn!(message = "Could not reschedule a webhook; its lease brings it back.", delivery = %delivery.id, error = %e);
                }
                "failed"
            }
        };
        self.metrics.webhook(outcome);
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), String> {
        let client = tokio::time::timeout(LOOKUP_LIMIT, self.queue.api_client(&delivery.client))
            .await
            .map_err(|_| "the job queue did not answer".to_owned())?
            .map_err(|e| e.to_string())?
            .ok_or("the API key that asked for it no longer exists")?;
        let timestamp = now_ms() / 1000;
        let signature = sign(
            &client.webhook_secret,
            &delivery.id,
            timestamp,
            &delivery.body,
        )?;
        let response = self
            .http
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(delivery.body.clone())
            .send()
            .await
            // Without the URL: webhook URLs often carry a token.
            .map_err(|e| format!("{:#}", e.without_url()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", response.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_specifications_example() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signature = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn only_public_addresses_receive_webhooks_by_default() {
        let table = [
            ("https://hooks.example.com/ducks", true),
            ("http://203.0.114.5/x", true),
            ("http://127.0.0.1:8080/x", false),
            ("http://10.1.2.3/x", false),
            ("http://192.168.0.1/x", false),
            ("http://169.254.169.254/latest/meta-data", false),
            ("http://100.64.0.1/x", false),
            ("http://[::1]/x", false),
            ("http://[fd00::1]/x", false),
            ("http://[::ffff:127.0.0.1]/x", false),
            ("http://[::ffff:203.0.114.5]/x", true),
            ("http://[::10.0.0.1]/x", false),
            ("http://[64:ff9b::a00:1]/x", false),
            ("http://[64:ff9b::cb00:7205]/x", true),
            ("http://[64:ff9b:1::1]/x", false),
            ("http://[2002:c0a8:1::1]/x", false),
            ("http://[2001:0:4136:e378::1]/x", false),
            ("http://[fec0::1]/x", false),
            ("http://[2606:4700::1111]/x", true),
            ("http://192.0.0.8/x", false),
            ("http://localhost:9000/x", false),
            ("http://metadata.google.internal/x", false),
            ("ftp://example.com/x", false),
            ("https://user:pw@example.com/x", false),
            ("not a url", false),
        ];
        for (url, allowed) in table {
            assert_eq!(check_url(url, false).is_ok(), allowed, "{url}");
        }
        assert!(check_url("http://127.0.0.1:8080/x", true).is_ok());
    }
}
