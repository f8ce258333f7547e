//! S3 through `aws-sdk-s3`: the bucket that holds model weights and generated images. Used by the
//! runner, the worker, `ducks models`, and the API for the images it serves.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, timeout::TimeoutConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use ducks_contract::Secret;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// Where the bucket is and how to sign for it. Keys left empty fall back to the standard AWS chain
/// (environment, profile, web identity such as IRSA, instance metadata).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint of an S3-compatible server (MinIO, the embedded dev server); empty for AWS.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    /// Never printed: `Debug` shows `[redacted]`.
    pub secret_access_key: Secret,
    /// Path-style URLs (`endpoint/bucket/key`), which S3-compatible servers need.
    pub force_path_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: "us-east-1".into(),
            bucket: "ducks".into(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            force_path_style: false,
        }
    }
}

/// The longest a presigned link can live (a SigV4 limit).
const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSummary {
    pub key: String,
    /// Empty where the server lists none (s3s-fs).
    pub etag: String,
    pub size: u64,
    pub last_modified: String,
    /// The same time as Unix seconds, when the server lists one.
    pub modified_secs: Option<u64>,
}

impl ObjectSummary {
    /// Changes whenever the object does: the ETag, and size and time for servers that list no
    /// ETag.
    pub fn version(&self) -> String {
        format!("{}|{}|{}", self.etag, self.size, self.last_modified)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("s3://{bucket}/{key} does not exist")]
    NotFound { bucket: String, key: String },
    #[error("S3 is unreachable or refused the request for {key}: {detail}")]
    Unavailable { key: String, detail: String },
    #[error("writing {path} failed: {source}")]
    Local {
        path: String,
        source: std::io::Error,
    },
}

/// A client for one bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Storage {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl Storage {
    pub async fn connect(config: &S3Config) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(timeouts);
        if !config.access_key_id.is_empty() {
            loader = loader.credentials_provider(Credentials::new(
                &config.access_key_id,
                config.secret_access_key.expose(),
                None,
                None,
                "ducks-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.force_path_style);
        if !config.endpoint.is_empty() {
            builder = builder.endpoint_url(&config.endpoint);
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The body of an object, not yet read.
    async fn body_of(&self, key: &str) -> Result<ByteStream, StorageError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.classify(key, e))?;
        Ok(object.body)
    }

    /// A small object (a manifest) in memory.
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let body =
            self.body_of(key)
                .await?
                .collect()
                .await
                .map_err(|e| StorageError::Unavailable {
                    key: key.to_owned(),
                    detail: e.to_string(),
                })?;
        Ok(body.into_bytes().to_vec())
    }

    /// Streams an object into `file`, handing each chunk to `inspect` (for hashing). Returns the
    /// number of bytes written.
    pub async fn download(
        &self,
        key: &str,
        file: &mut tokio::fs::File,
        path_for_errors: &str,
        inspect: &mut dyn FnMut(&[u8]),
    ) -> Result<u64, StorageError> {
        let mut body = self.body_of(key).await?;
        let mut written = 0u64;
        let local = |source| StorageError::Local {
            path: path_for_errors.to_owned(),
            source,
        };
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StorageError::Unavailable {
                key: key.to_owned(),
                detail: e.to_string(),
            })?
        {
            inspect(&chunk);
            file.write_all(&chunk).await.map_err(local)?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(local)?;
        Ok(written)
    }

    pub async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        metadata: HashMap<String, String>,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_metadata(Some(metadata))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.classify(key, e))?;
        Ok(())
    }

    /// Every key under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self
            .list_objects(prefix)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect())
    }

    /// Every object under `prefix` with what identifies its version: the worker re-reads only the
    /// manifests whose version moved.
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.classify(prefix, e))?;
            objects.extend(page.contents().iter().filter_map(|o| {
                Some(ObjectSummary {
                    key: o.key()?.to_owned(),
                    etag: o.e_tag().unwrap_or_default().to_owned(),
                    size: o.size().unwrap_or_default().max(0) as u64,
                    last_modified: o.last_modified().map(|t| t.to_string()).unwrap_or_default(),
                    modified_secs: o.last_modified().and_then(|t| u64::try_from(t.secs()).ok()),
                })
            }));
        }
        Ok(objects)
    }

    /// Whether `key` exists, by a HEAD request.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match self.classify(key, e) {
                StorageError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    /// A link that lets whoever holds it GET `key` until it expires (at most 7 days, the limit of
    /// SigV4 presigning).
    pub async fn presigned_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<String, StorageError> {
        let config = PresigningConfig::expires_in(expires_in.min(MAX_PRESIGN)).map_err(|e| {
            StorageError::Unavailable {
                key: key.to_owned(),
                detail: e.to_string(),
            }
        })?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| self.classify(key, e))?;
        Ok(request.uri().to_owned())
    }

    /// Creates the bucket if it does not exist (development only).
    pub async fn ensure_bucket(&self) -> Result<(), StorageError> {
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.classify("", e)),
        }
    }

    fn classify<
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    >(
        &self,
        key: &str,
        error: SdkError<E, R>,
    ) -> StorageError {
        if matches!(error.code(), Some("NoSuchKey" | "NotFound")) {
            return StorageError::NotFound {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
            };
        }
        let detail = match error.code() {
            Some(code) => format!("{code}: {}", error.message().unwrap_or_default()),
            None => aws_smithy_error_chain(&error),
        };
        StorageError::Unavailable {
            key: key.to_owned(),
            detail,
        }
    }
}

/// The error and its causes on one line: the SDK's top-level text ("dispatch failure") hides
/// the useful part ("Connection refused").
fn aws_smithy_error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
