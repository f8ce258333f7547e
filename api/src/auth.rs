//! API keys: `Authorization: Bearer ducks_…`, what the OpenAI client sends. A key is 32 random
//! bytes; Redis holds only its HMAC-SHA256 digest under `api.pepper`, which is quick to check on
//! every request and useless to whoever reads a copy of Redis without the pepper. Lookups are
//! cached for `api.key_cache_secs`, which is also how long a revoked key keeps working.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ducks_contract::{ApiClient, Caller, JobRequest, Origin, Scope, Secret};
use ducks_queue::{Queue, ScopeLimits, now_ms};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{ApiError, Result};

/// Every key starts with this, so a leaked one is easy to recognise (and to scan for).
pub const KEY_PREFIX: &str = "ducks_";
/// The client an open API (no keys) acts as.
pub const OPEN_CLIENT: &str = "open";

/// Who is calling, as the key says.
#[derive(Clone, Debug, PartialEq)]
pub enum Identity {
    /// A keyed client.
    Client(ApiClient),
    /// Anyone, on an API in open mode.
    Open,
}

impl Identity {
    /// The client id jobs are filed under.
    pub fn client_id(&self) -> &str {
        match self {
            Identity::Client(client) => &client.id,
            Identity::Open => OPEN_CLIENT,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Identity::Client(client) if client.admin)
    }

    /// The origin of a job this caller submits: the API sets it, never the body.
    pub fn origin(&self, webhook: Option<ducks_contract::Webhook>) -> Origin {
        Origin::Api {
            client: match self {
                Identity::Client(client) => Some(client.id.clone()),
                Identity::Open => None,
            },
            webhook,
        }
    }

    /// The requester of a job: the key, or a user of the key's own application (OpenAI's
    /// `user`), so limits apply per key and then per (key, user).
    pub fn requester_id(&self, user: Option<&str>) -> String {
        match (self, user) {
            (Identity::Client(client), Some(user)) => format!("{}/{user}", client.id),
            (Identity::Client(client), None) => client.id.clone(),
            (Identity::Open, Some(user)) => user.to_owned(),
            (Identity::Open, None) => "anonymous".to_owned(),
        }
    }

    /// Whether this caller may see `job`: its own key's jobs (admins: every API job).
    pub fn may_see(&self, job: &JobRequest) -> bool {
        match &job.origin {
            Origin::Api { client, .. } => {
                self.is_admin() || client.as_deref().unwrap_or(OPEN_CLIENT) == self.client_id()
            }
            _ => false,
        }
    }

    /// The caller as the queue's cancel check knows it: every job of its key (a moderator of
    /// the key's scope), or any API job for an admin key.
    pub fn caller(&self) -> Caller {
        if self.is_admin() {
            return Caller::Operator;
        }
        Caller::Moderator {
            origin_kind: "api",
            id: self.requester_id(None),
            scope: self.scope(),
        }
    }

    /// The key's own limits, before the configured ones.
    pub fn limits(&self) -> ScopeLimits {
        match self {
            Identity::Client(client) => ScopeLimits {
                in_flight: client.in_flight,
                rate: client.rate_per_minute,
                window_secs: client.rate_per_minute.map(|_| 60),
            },
            Identity::Open => ScopeLimits::default(),
        }
    }

    /// The key's scope (`api:<client id>`): what its limits count by and its cancels cover.
    pub fn scope(&self) -> Scope {
        self.origin(None).scope()
    }
}

/// The digest a key is stored under.
pub fn digest(key: &str, pepper: &Secret) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(pepper.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The operating system's random source failing is not something to carry on from.
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// 32 random bytes, base64url: for secrets DUCKS makes itself (the dev stack's link key).
pub fn random_secret() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// What `ducks api keys create` prints once: the key and the client's webhook secret.
pub struct NewKey {
    pub key: Secret,
    pub client: ApiClient,
}

/// Options of a new key.
#[derive(Clone, Debug, Default)]
pub struct KeyOptions {
    pub name: String,
    pub admin: bool,
    pub in_flight: Option<u32>,
    pub rate_per_minute: Option<u32>,
}

/// Makes a key and stores its client.
pub async fn create_key(queue: &Queue, pepper: &Secret, options: KeyOptions) -> Result<NewKey> {
    if pepper.is_empty() {
        return Err(ApiError::bad_request(
            "api.pepper is empty: keys are stored as digests under it, so set it first (DUCKS_API__PEPPER).",
        ));
    }
    let key = format!(
        "{KEY_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    );
    let client = ApiClient {
        id: hex::encode(random_bytes::<6>()),
        name: options.name,
        admin: options.admin,
        created_at_ms: now_ms(),
        in_flight: options.in_flight,
        rate_per_minute: options.rate_per_minute,
        webhook_secret: Secret::new(format!("whsec_{}", STANDARD.encode(random_bytes::<24>()))),
        revoked_at_ms: None,
    };
    queue.add_api_client(&digest(&key, pepper), &client).await?;
    Ok(NewKey {
        key: Secret::new(key),
        client,
    })
}

/// Checks keys, with a short cache.
pub struct Authenticator {
    open: bool,
    pepper: Secret,
    cache_for: Duration,
    cache: Mutex<HashMap<String, (Instant, ApiClient)>>,
}

/// Cached keys at most; past it the cache starts again (a flood of distinct keys cannot grow it).
const CACHE_LIMIT: usize = 10_000;

impl Authenticator {
    pub fn new(open: bool, pepper: Secret, cache_for: Duration) -> Self {
        Self {
            open,
            pepper,
            cache_for,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller of a request, from its `Authorization` header.
    pub async fn identify(&self, queue: &Queue, headers: &HeaderMap) -> Result<Identity> {
        if self.open {
            return Ok(Identity::Open);
        }
        let key = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            // The scheme's name is case-insensitive (RFC 9110).
            .and_then(|value| {
                let (scheme, key) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(key)
            })
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "No API key: send `Authorization: Bearer <key>` (create one with `ducks api keys create`).",
                )
            })?;
        let digest = digest(key, &self.pepper);
        let cached = self
            .lock()
            .get(&digest)
            .filter(|(at, _)| at.elapsed() < self.cache_for)
            .map(|(_, client)| client.clone());
        let client = match cached {
            Some(client) => client,
            None => {
                let client = queue
                    .api_client_by_digest(&digest)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("This API key is not valid."))?;
                let mut cache = self.lock();
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(digest, (Instant::now(), client.clone()));
                client
            }
        };
        if client.revoked_at_ms.is_some() {
            return Err(ApiError::unauthorized("This API key has been revoked."));
        }
        Ok(Identity::Client(client))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, ApiClient)>> {
        // Entries are inserted whole: a panic cannot leave one half-written.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, admin: bool) -> Identity {
        Identity::Client(ApiClient {
            id: id.into(),
            name: id.into(),
            admin,
            created_at_ms: 0,
            in_flight: None,
            rate_per_minute: None,
            webhook_secret: Secret::default(),
            revoked_at_ms: None,
        })
    }

    fn job_of(identity: &Identity, user: Option<&str>) -> JobRequest {
        let mut job = JobRequest::new("p", identity.origin(None));
        job.requester.id = identity.requester_id(user);
        job
    }

    #[test]
    fn a_key_sees_and_cancels_its_own_jobs_an_admin_key_every_api_job() {
        let acme = client("acme", false);
        let other = client("other", false);
        let admin = client("root", true);
        let acme_job = job_of(&acme, Some("user-1"));
        let table = [
            (&acme, true),
            (&other, false),
            (&admin, true),
            (&Identity::Open, false),
        ];
        for (identity, allowed) in table {
            assert_eq!(identity.may_see(&acme_job), allowed, "{identity:?}");
            assert_eq!(
                identity.caller().may_cancel(&acme_job),
                allowed,
                "{identity:?}"
            );
        }
        let discord = JobRequest::new(
            "p",
            Origin::Discord {
                application_id: "1".into(),
                interaction_token: Secret::default(),
                channel_id: "2".into(),
                guild_id: None,
            },
        );
        assert!(!admin.may_see(&discord), "admin keys see API jobs only");
    }

    #[test]
    fn requesters_are_per_key_then_per_user() {
        assert_eq!(client("acme", false).requester_id(Some("u7")), "acme/u7");
        assert_eq!(client("acme", false).requester_id(None), "acme");
        assert_eq!(Identity::Open.requester_id(None), "anonymous");
        assert_eq!(client("acme", false).scope().to_string(), "api:acme");
    }

    #[test]
    fn digests_depend_on_the_pepper() {
        let a = digest("ducks_x", &Secret::new("pepper-1"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, digest("ducks_x", &Secret::new("pepper-2")));
        assert_eq!(a, digest("ducks_x", &Secret::new("pepper-1")));
    }
}
