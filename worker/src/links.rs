//! Links to generated images: presigned GETs by default, or a public base URL (a CDN such as
//! CloudFront in front of the bucket, or a public bucket) plus the key.

use std::time::Duration;

use ducks_models::{Storage, StorageError};

use crate::config::LinkConfig;

#[derive(Clone, Debug)]
pub enum Links {
    Presigned { expires_in: Duration },
    Public { base_url: String },
}

impl Links {
    pub fn new(config: &LinkConfig) -> Self {
        if config.public_base_url.is_empty() {
            Links::Presigned {
                expires_in: Duration::from_secs(config.presign_ttl_secs),
            }
        } else {
            Links::Public {
                base_url: config.public_base_url.trim_end_matches('/').to_owned(),
            }
        }
    }

    pub async fn link(&self, storage: &Storage, key: &str) -> Result<String, StorageError> {
        match self {
            Links::Presigned { expires_in } => storage.presigned_get(key, *expires_in).await,
            Links::Public { base_url } => Ok(public_link(base_url, key)),
        }
    }
}

/// `base/key`, with each path segment of the key percent-encoded.
fn public_link(base_url: &str, key: &str) -> String {
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

    #[test]
    fn public_links_join_and_encode() {
        let links = Links::new(&LinkConfig {
            public_base_url: "https://cdn.example.com/ducks/".into(),
            presign_ttl_secs: 60,
        });
        let Links::Public { base_url } = links else {
            panic!("a public base URL gives public links");
        };
        assert_eq!(
            public_link(&base_url, "images/2026/11/29/j 1/0.png"),
            "https://cdn.example.com/ducks/images/2026/11/29/j%201/0.png"
        );
    }

    #[test]
    fn presigned_is_the_default() {
        assert!(matches!(
            Links::new(&LinkConfig::default()),
            Links::Presigned { expires_in } if expires_in == Duration::from_secs(86400)
        ));
    }
}
