//! Links to generated images: permanent signed links served by the API, links through a CDN (or a
//! public bucket), or presigned S3 links, in that order of preference (`[links]`).

use std::time::Duration;

use crate::{Storage, StorageError};
use ducks_contract::Secret;
use ducks_contract::links::{LinkConfig, permanent_link};

#[derive(Clone, Debug)]
pub enum Links {
    /// `<base_url>/i/<slug>`: short, never expiring, and not guessable.
    Permanent {
        base_url: String,
        signing_key: Secret,
    },
    Cdn {
        base_url: String,
    },
    Presigned {
        expires_in: Duration,
    },
}

impl Links {
    /// The kind of link the settings ask for; the error names the setting to fix.
    pub fn new(config: &LinkConfig) -> Result<Self, String> {
        let trimmed = |url: &str| url.trim_end_matches('/').to_owned();
        if !config.base_url.is_empty() {
            if config.signing_key.is_empty() {
                return Err(
                    "links.base_url is set but links.signing_key is empty: permanent links need the key the API checks them with"
                        .into(),
                );
            }
            return Ok(Links::Permanent {
                base_url: trimmed(&config.base_url),
                signing_key: config.signing_key.clone(),
            });
        }
        if !config.cdn_base_url.is_empty() {
            return Ok(Links::Cdn {
                base_url: trimmed(&config.cdn_base_url),
            });
        }
        Ok(Links::Presigned {
            expires_in: Duration::from_secs(config.presign_ttl_secs),
        })
    }

    /// Where a permanent link (`/i/<slug>`) sends whoever opens it: the CDN when one is
    /// configured, otherwise a presigned link made now, so it is always fresh.
    pub fn behind_permanent(config: &LinkConfig) -> Self {
        Self::new(&LinkConfig {
            base_url: String::new(),
            ..config.clone()
        })
        .unwrap_or(Links::Presigned {
            expires_in: Duration::from_secs(config.presign_ttl_secs),
        })
    }

    pub async fn link(&self, storage: &Storage, key: &str) -> Result<String, StorageError> {
        match self {
            Links::Permanent {
                base_url,
                signing_key,
            } => Ok(permanent_link(base_url, key, signing_key)),
            Links::Cdn { base_url } => Ok(cdn_link(base_url, key)),
            Links::Presigned { expires_in } => storage.presigned_get(key, *expires_in).await,
        }
    }
}

/// `base/key`, with each path segment of the key percent-encoded.
fn cdn_link(base_url: &str, key: &str) -> String {
    let path: Vec<String> = key.split('/').map(encode_segment).collect();
    format!("{base_url}/{}", path.join("/"))
}

fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ducks_contract::links::key_of;

    #[test]
    fn cdn_links_join_and_encode() {
        let links = Links::new(&LinkConfig {
            cdn_base_url: "https://cdn.example.com/ducks/".into(),
            ..LinkConfig::default()
        })
        .unwrap();
        let Links::Cdn { base_url } = links else {
            panic!("a CDN base URL gives CDN links");
        };
        assert_eq!(
            cdn_link(&base_url, "images/2026/11/29/j 1/0.png"),
            "https://cdn.example.com/ducks/images/2026/11/29/j%201/0.png"
        );
    }

    #[tokio::test]
    async fn permanent_links_win_and_carry_the_key_signed() {
        let config = LinkConfig {
            signing_key: Secret::new("k"),
            base_url: "https://ducks.example.com/".into(),
            cdn_base_url: "https://cdn.example.com".into(),
            ..LinkConfig::default()
        };
        let links = Links::new(&config).unwrap();
        let storage = Storage::connect(&crate::S3Config::default()).await;
        let link = links.link(&storage, "images/a/0.png").await.unwrap();
        let slug = link
            .strip_prefix("https://ducks.example.com/i/")
            .expect("an API link");
        assert_eq!(key_of(slug, &Secret::new("k")).unwrap(), "images/a/0.png");
    }

    #[test]
    fn presigned_is_the_default_and_a_base_url_needs_its_key() {
        assert!(matches!(
            Links::new(&LinkConfig::default()),
            Ok(Links::Presigned { expires_in }) if expires_in == Duration::from_secs(86400)
        ));
        let unsigned = LinkConfig {
            base_url: "https://ducks.example.com".into(),
            ..LinkConfig::default()
        };
        assert!(
            Links::new(&unsigned)
                .unwrap_err()
                .contains("links.signing_key")
        );
    }
}
