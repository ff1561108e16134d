//! S3 and S3-compatible stores (AWS, Huawei OBS, MinIO, Ceph RGW) through
//! aws-sdk-s3.
//!
//! Configuration follows the standard chain (env, profile, IMDS/IRSA) with
//! the explicit overrides of [`StoreConfig`]; path-style addressing is turned
//! on for IP-address and localhost endpoints. The SDK's own retries are off
//! for reads: [`super::resilient`] owns retries and timeouts. Upload parts,
//! which that layer does not wrap, use the SDK's standard retries.
//!
//! `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` (and their lower-case forms) are
//! honoured, as curl and reqwest do: the SDK's default client ignores them,
//! so the client is built with a proxy connector configured from them.
//!
//! Reads are pinned with `If-Match` and the answer's ETag is compared again
//! (some S3-compatible servers ignore `If-Match` on GET). Credentials never
//! reach a location, an error or a `Debug` line: the client is not printed.
//!
//! Failures are classified for [`super::resilient`]: transient (no answer,
//! 5xx, `SlowDown`, throttling, expired credentials — which the provider
//! chain refreshes) or permanent, with messages that say what to do for the
//! ones a user can fix: a bucket in another region ("pass --region X"), a
//! host clock off by more than S3 accepts (`RequestTimeTooSkewed`, retried
//! once first: the SDK corrects its clock skew from the answer's `Date`).
//!
//! One file per concern: `client` builds the SDK client, `read` holds
//! the GET/HEAD/LIST operations, `write` the PUT (single and multipart)
//! and DELETE ones, `errors` the mapping of SDK failures to
//! [`StoreError`](crate::StoreError)s.

mod client;
mod errors;
mod read;
mod write;

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::StoreConfig;
use super::{ObjectMeta, ObjectStore, Progress, StoreResult};

pub use client::s3_client;
use write::DEFAULT_PART_RETRIES;
pub use write::{PART_SIZE, UPLOAD_PARALLELISM};

/// Objects in one bucket.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Attempts per upload part (SDK retries; reads are retried above us).
    part_attempts: u32,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately not the client: its config holds the credentials provider.
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A store for `bucket`, configured from `args` and the standard chain.
    /// Sends no request.
    pub async fn connect(bucket: &str, args: &StoreConfig) -> StoreResult<S3Store> {
        Ok(S3Store::with_client(
            s3_client(args).await,
            bucket,
            args.retries.unwrap_or(DEFAULT_PART_RETRIES) + 1,
        ))
    }

    /// A store over an existing client.
    pub fn with_client(client: Client, bucket: &str, part_attempts: u32) -> S3Store {
        S3Store {
            client,
            bucket: bucket.into(),
            part_attempts: part_attempts.max(1),
        }
    }

    /// The client, for fixtures and tools that need other S3 operations.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket this store reads and writes.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.head_object(key).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Option<&ObjectMeta>,
    ) -> StoreResult<Bytes> {
        self.get_object_range(key, range, pin).await
    }

    async fn get_suffix(&self, key: &str, len: u64) -> StoreResult<(Bytes, ObjectMeta)> {
        self.get_object_suffix(key, len).await
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<(String, ObjectMeta)>> {
        self.list_objects(prefix).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> StoreResult<ObjectMeta> {
        self.put_file_with_progress(key, path, Arc::new(|_| {}))
            .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.delete_object(key).await
    }

    async fn put_file_with_progress(
        &self,
        key: &str,
        path: &Path,
        progress: Progress,
    ) -> StoreResult<ObjectMeta> {
        self.put_object_file(key, path, progress).await
    }
}
