//! Uploads (one PUT, or a parallel multipart upload that is aborted on
//! any failure) and DELETE.

use std::path::Path;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::S3Store;
use crate::{ObjectMeta, ObjectStore, Progress, StoreError, StoreResult};

/// Smallest part of a multipart upload; files up to this size go in one PUT.
pub const PART_SIZE: u64 = 16 << 20;
/// Parts uploaded at once.
pub const UPLOAD_PARALLELISM: usize = 4;
/// Retries of one upload part unless `--retries` says otherwise.
pub(super) const DEFAULT_PART_RETRIES: u32 = 4;
/// S3's limit on parts per upload; the part size grows to stay under it.
const MAX_PARTS: u64 = 10_000;

impl S3Store {
    /// One PUT up to [`PART_SIZE`], a parallel multipart upload above it
    /// (aborted on any failure, so no incomplete upload is left billed);
    /// then a HEAD checks the stored size and ETag.
    pub(super) async fn put_object_file(
        &self,
        key: &str,
        path: &Path,
        progress: Progress,
    ) -> StoreResult<ObjectMeta> {
        let size = std::fs::metadata(path)
            .map_err(|e| self.io_err(key, path, e))?
            .len();
        let etag = if size <= PART_SIZE {
            let etag = self.put_small(key, path, size).await?;
            progress(size);
            etag
        } else {
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| self.map_err(key, "create multipart upload", e))?;
            let upload_id = created.upload_id.ok_or_else(|| {
                self.protocol_error(
                    key,
                    "create multipart upload",
                    "no upload id in the response".into(),
                )
            })?;
            match self.put_parts(key, path, size, &upload_id, &progress).await {
                Ok(etag) => etag,
                Err(e) => {
                    let abort = self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(&upload_id)
                        .send()
                        .await;
                    if let Err(ae) = abort {
                        tracing::warn!(location = %self.location(key), error = %super::errors::chain_text(&ae), "could not abort the failed multipart upload");
                    }
                    return Err(e);
                }
            }
        };
        let meta = self.head(key).await?;
        if meta.size != size {
            return Err(self.protocol_error(
                key,
                "verify upload",
                format!("stored object has {} bytes, the file {size}", meta.size),
            ));
        }
        if let (Some(sent), Some(stored)) = (&etag, &meta.etag)
            && sent != stored
        {
            return Err(self.protocol_error(
                key,
                "verify upload",
                format!("stored ETag {stored} differs from the upload's {sent}"),
            ));
        }
        Ok(meta)
    }

    /// S3 answers a DELETE of a missing key with success; some compatible
    /// servers say NoSuchKey, which is success here too.
    pub(super) async fn delete_object(&self, key: &str) -> StoreResult<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.map_err(key, "DELETE", e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn put_small(&self, key: &str, path: &Path, size: u64) -> StoreResult<Option<String>> {
        let data = read_part(path, 0, size)
            .await
            .map_err(|e| self.io_err(key, path, e))?;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data))
            .customize()
            .config_override(self.upload_retries())
            .send()
            .await
            .map_err(|e| self.map_err(key, "PUT", e))?;
        Ok(out.e_tag)
    }

    fn upload_retries(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default()
            .retry_config(RetryConfig::standard().with_max_attempts(self.part_attempts))
    }

    pub(super) fn io_err(&self, key: &str, path: &Path, e: std::io::Error) -> StoreError {
        StoreError::Other {
            location: self.location(key),
            op: format!("read {}", path.display()),
            detail: e.to_string(),
        }
    }

    /// Uploads `path` in parts; the caller aborts `upload_id` on error.
    async fn put_parts(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        upload_id: &str,
        progress: &Progress,
    ) -> StoreResult<Option<String>> {
        let part_size = PART_SIZE.max(size.div_ceil(MAX_PARTS));
        let parts = size.div_ceil(part_size);
        let mut done: Vec<CompletedPart> = futures::stream::iter(0..parts)
            .map(|i| async move {
                let start = i * part_size;
                let len = part_size.min(size - start);
                let number = i as i32 + 1;
                let op = format!(
                    "upload part {number}/{parts} (bytes {start}..{})",
                    start + len
                );
                let data = read_part(path, start, len)
                    .await
                    .map_err(|e| self.io_err(key, path, e))?;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(data))
                    .customize()
                    .config_override(self.upload_retries())
                    .send()
                    .await
                    .map_err(|e| self.map_err(key, &op, e))?;
                progress(len);
                Ok::<_, StoreError>(
                    CompletedPart::builder()
                        .set_e_tag(out.e_tag)
                        .part_number(number)
                        .build(),
                )
            })
            .buffer_unordered(UPLOAD_PARALLELISM)
            .try_collect()
            .await?;
        done.sort_by_key(|p| p.part_number);
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.map_err(key, "complete multipart upload", e))?;
        Ok(out.e_tag)
    }
}

/// Reads `len` bytes at `offset` of a local file, off the async threads.
async fn read_part(path: &Path, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&path)?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
        file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}
