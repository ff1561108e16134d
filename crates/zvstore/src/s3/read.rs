//! HEAD, ranged GETs (pinned to the ETag seen at open) and LIST.

use std::ops::Range;
use std::time::SystemTime;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::S3Store;
use super::errors::skew_retry;
use crate::{ObjectMeta, ObjectStore, StoreError, StoreResult, parse_content_range};

impl S3Store {
    pub(super) async fn head_object(&self, key: &str) -> StoreResult<ObjectMeta> {
        let req = self.client.head_object().bucket(&self.bucket).key(key);
        let out = match skew_retry(req.clone().send().await, || req.send()).await {
            Ok(out) => out,
            Err(e) => {
                return Err(match self.map_err(key, "HEAD", e) {
                    StoreError::NotFound { .. } => self.not_found(key).await,
                    other => other,
                });
            }
        };
        let size = out
            .content_length
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                self.protocol_error(key, "HEAD", "no Content-Length in the response".into())
            })?;
        Ok(ObjectMeta {
            size,
            etag: out.e_tag,
            modified: system_time(out.last_modified.as_ref()),
        })
    }

    pub(super) async fn get_object_range(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Option<&ObjectMeta>,
    ) -> StoreResult<Bytes> {
        let op = format!("GET {}..{}", range.start, range.end);
        if range.start >= range.end {
            return crate::empty_range(self, key, range, pin).await;
        }
        if let Some(p) = pin
            && range.end > p.size
        {
            return Err(StoreError::OutOfRange {
                location: self.location(key),
                start: range.start,
                end: range.end,
                size: p.size,
            });
        }
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1));
        if let Some(tag) = pin.and_then(|p| p.etag.as_deref()) {
            req = req.if_match(tag);
        }
        let out = match skew_retry(req.clone().send().await, || req.send()).await {
            Ok(out) => out,
            Err(e) => {
                return Err(match self.map_err(key, &op, e) {
                    StoreError::Changed { location, .. } => StoreError::Changed {
                        location,
                        expected: pin.and_then(|p| p.etag.clone()).unwrap_or_default(),
                        actual: "(different)".into(),
                    },
                    StoreError::Other { detail, .. } if detail.contains("InvalidRange") => {
                        StoreError::OutOfRange {
                            location: self.location(key),
                            start: range.start,
                            end: range.end,
                            size: pin.map_or(0, |p| p.size),
                        }
                    }
                    // Some servers answer NoSuchKey for a missing bucket too.
                    StoreError::NotFound { .. } => self.not_found(key).await,
                    other => other,
                });
            }
        };
        self.check_pin(key, pin, out.e_tag.as_deref())?;
        match out.content_range.as_deref().and_then(parse_content_range) {
            Some((s, e, _)) if s == range.start && e == range.end => {}
            Some((s, e, size)) if range.end > size || e < range.end => {
                let _ = s;
                return Err(StoreError::OutOfRange {
                    location: self.location(key),
                    start: range.start,
                    end: range.end,
                    size,
                });
            }
            Some((s, e, _)) => {
                return Err(self.protocol_error(
                    key,
                    &op,
                    format!("server sent bytes {s}..{e} instead"),
                ));
            }
            None => {
                // A whole-object answer is right only when the whole object was asked for.
                let len = out.content_length.unwrap_or(-1);
                if range.start != 0 || len != range.end as i64 {
                    return Err(self.protocol_error(
                        key,
                        &op,
                        "no Content-Range in the answer to a range GET".into(),
                    ));
                }
            }
        }
        self.collect(key, &op, out.body).await
    }

    pub(super) async fn get_object_suffix(
        &self,
        key: &str,
        len: u64,
    ) -> StoreResult<(Bytes, ObjectMeta)> {
        let op = format!("GET last {len} bytes");
        if len == 0 {
            return Ok((Bytes::new(), self.head(key).await?));
        }
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes=-{len}"));
        let out = match skew_retry(req.clone().send().await, || req.send()).await {
            Ok(out) => out,
            Err(e) => {
                let status = e.raw_response().map_or(0, |r| r.status().as_u16());
                // A suffix of an empty object is unsatisfiable (416), and some
                // S3-compatible servers fail a suffix longer than the object
                // (s3s-fs: 500). Both are answered by HEAD + pinned range GET;
                // a real outage fails those too, and is retried above us.
                if status == 416 || status >= 500 {
                    let meta = self.head(key).await?;
                    let start = meta.size.saturating_sub(len);
                    let body = self.get_range(key, start..meta.size, Some(&meta)).await?;
                    return Ok((body, meta));
                }
                return Err(match self.map_err(key, &op, e) {
                    StoreError::NotFound { .. } => self.not_found(key).await,
                    other => other,
                });
            }
        };
        let size = match out.content_range.as_deref().and_then(parse_content_range) {
            Some((start, end, size)) => {
                if end != size || start != size.saturating_sub(len) {
                    return Err(self.protocol_error(
                        key,
                        &op,
                        format!("server sent bytes {start}..{end} of {size}"),
                    ));
                }
                size
            }
            None => {
                let size = out
                    .content_length
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(u64::MAX);
                if size > len {
                    return Err(self.protocol_error(
                        key,
                        &op,
                        "no Content-Range in the answer to a suffix GET".into(),
                    ));
                }
                size
            }
        };
        let meta = ObjectMeta {
            size,
            etag: out.e_tag.clone(),
            modified: system_time(out.last_modified.as_ref()),
        };
        let body = self.collect(key, &op, out.body).await?;
        Ok((body, meta))
    }

    pub(super) async fn list_objects(
        &self,
        prefix: &str,
    ) -> StoreResult<Vec<(String, ObjectMeta)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.map_err(prefix, "LIST", e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                let size = o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                out.push((
                    key.to_string(),
                    ObjectMeta {
                        size,
                        etag: o.e_tag().map(str::to_string),
                        modified: system_time(o.last_modified()),
                    },
                ));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    pub(super) async fn collect(
        &self,
        key: &str,
        op: &str,
        body: ByteStream,
    ) -> StoreResult<Bytes> {
        body.collect()
            .await
            .map(|a| a.into_bytes())
            .map_err(|e| StoreError::Transient {
                location: self.location(key),
                op: op.into(),
                attempt: 0,
                detail: super::errors::chain_text(&e),
            })
    }
}

pub(super) fn system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

#[cfg(test)]
mod tests {
    use crate::parse_content_range;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 1, 1)));
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 10, 10)));
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
    }
}
