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

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::StoreConfig;
use super::{ObjectMeta, ObjectStore, Progress, StoreError, StoreResult, parse_content_range};

/// Smallest part of a multipart upload; files up to this size go in one PUT.
pub const PART_SIZE: u64 = 16 << 20;
/// Parts uploaded at once.
pub const UPLOAD_PARALLELISM: usize = 4;
/// Retries of one upload part unless `--retries` says otherwise.
const DEFAULT_PART_RETRIES: u32 = 4;
/// S3's limit on parts per upload; the part size grows to stay under it.
const MAX_PARTS: u64 = 10_000;

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

/// Builds an S3 client from the standard chain and `args`.
pub async fn s3_client(args: &StoreConfig) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(p) = &args.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &args.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(e) = &args.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    if args.no_sign_request {
        loader = loader.no_credentials();
    } else if let Some(c) = &args.credentials {
        loader = loader.credentials_provider(Credentials::new(
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
            None,
            "zvmount-explicit",
        ));
    }
    let sdk = loader
        .http_client(proxy_aware_client())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(args.timeout.min(Duration::from_secs(10)))
                .build(),
        )
        .load()
        .await;
    let endpoint = args
        .endpoint_url
        .clone()
        .or_else(|| sdk.endpoint_url().map(str::to_string));
    let path_style =
        args.force_path_style || endpoint.as_deref().is_some_and(endpoint_wants_path_style);
    let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(path_style);
    if sdk.region().is_none() {
        b = b.region(Region::new("us-east-1"));
    }
    Client::from_conf(b.build())
}

/// The SDK's default HTTPS client (rustls, aws-lc), but with proxies taken
/// from the environment: `HTTP_PROXY` for `http://` endpoints,
/// `HTTPS_PROXY` for `https://` ones (through `CONNECT`), `NO_PROXY`
/// exceptions. Without those variables it connects directly, as before.
fn proxy_aware_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, Connector, proxy::ProxyConfig};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut b = Connector::builder().proxy_config(ProxyConfig::from_env());
        b.set_connector_settings(settings.cloned());
        if let Some(c) = components {
            b.set_sleep_impl(c.sleep_impl());
        }
        b.tls_provider(Provider::Rustls(CryptoMode::AwsLc)).build()
    })
}

/// Virtual-host addressing needs DNS for `bucket.HOST`: impossible for IP
/// addresses and `localhost`.
fn endpoint_wants_path_style(endpoint: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" || host.ends_with(".localhost")
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

    /// Maps an SDK failure to a [`StoreError`] naming the object and operation.
    fn map_err<E>(&self, key: &str, op: &str, e: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let location = self.location(key);
        let detail = DisplayErrorContext(&e).to_string();
        let service = match &e {
            SdkError::ServiceError(_) => true,
            // A request that cannot be sent as built will not be sent later.
            SdkError::DispatchFailure(d) if d.is_user() => false,
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => {
                return StoreError::Transient {
                    location,
                    op: op.into(),
                    attempt: 0,
                    detail,
                };
            }
            _ => false,
        };
        if !service {
            return StoreError::Other {
                location,
                op: op.into(),
                detail,
            };
        }
        let status = e.raw_response().map_or(0, |r| r.status().as_u16());
        let code = e.code().unwrap_or("");
        let described = match (e.code(), e.message()) {
            (Some(c), Some(m)) => format!("HTTP {status} {c}: {m}"),
            (Some(c), None) => format!("HTTP {status} {c}"),
            _ => format!("HTTP {status}"),
        };
        if let Some(region) = wrong_region(&e) {
            return StoreError::Other {
                location,
                op: op.into(),
                detail: format!(
                    "bucket {} is in {region}: pass --region {region} ({described})",
                    self.bucket
                ),
            };
        }
        if code == "RequestTimeTooSkewed" {
            return StoreError::Forbidden {
                location,
                detail: skew_message(&e, &described),
            };
        }
        match (status, code) {
            // The provider chain refreshes expired credentials before the
            // next attempt signs: a pause, not a failure.
            (_, "ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired") => {
                StoreError::Transient {
                    location,
                    op: op.into(),
                    attempt: 0,
                    detail: format!("{described} (credentials expired; refreshing)"),
                }
            }
            (_, "NoSuchBucket") => StoreError::BucketNotFound {
                location: format!("s3://{}", self.bucket),
            },
            (404, _) | (_, "NoSuchKey") | (_, "NotFound") => StoreError::NotFound { location },
            (401 | 403, _) => StoreError::Forbidden {
                location,
                detail: described,
            },
            (412, _) | (_, "PreconditionFailed") => StoreError::Changed {
                location,
                expected: "(pinned ETag)".into(),
                actual: "(different)".into(),
            },
            (
                _,
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "RequestTimeout"
                | "InternalError",
            )
            | (408 | 429 | 500..=599, _) => StoreError::Transient {
                location,
                op: op.into(),
                attempt: 0,
                detail: described,
            },
            _ => StoreError::Other {
                location,
                op: op.into(),
                detail: described,
            },
        }
    }

    fn check_pin(
        &self,
        key: &str,
        pin: Option<&ObjectMeta>,
        etag: Option<&str>,
    ) -> StoreResult<()> {
        if let Some(want) = pin.and_then(|p| p.etag.as_deref())
            && etag != Some(want)
        {
            return Err(StoreError::Changed {
                location: self.location(key),
                expected: want.into(),
                actual: etag.unwrap_or("(none)").into(),
            });
        }
        Ok(())
    }

    fn protocol_error(&self, key: &str, op: &str, detail: String) -> StoreError {
        StoreError::Other {
            location: self.location(key),
            op: op.into(),
            detail,
        }
    }

    async fn collect(&self, key: &str, op: &str, body: ByteStream) -> StoreResult<Bytes> {
        body.collect()
            .await
            .map(|a| a.into_bytes())
            .map_err(|e| StoreError::Transient {
                location: self.location(key),
                op: op.into(),
                attempt: 0,
                detail: DisplayErrorContext(&e).to_string(),
            })
    }

    /// Distinguishes a missing bucket from a missing key after a bodiless 404.
    async fn not_found(&self, key: &str) -> StoreError {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
                StoreError::BucketNotFound {
                    location: format!("s3://{}", self.bucket),
                }
            }
            _ => StoreError::NotFound {
                location: self.location(key),
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

    fn io_err(&self, key: &str, path: &Path, e: std::io::Error) -> StoreError {
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

/// The first attempt's result, or, when S3 said `RequestTimeTooSkewed`, a
/// second attempt's: the SDK learnt the server's time from the refusal and
/// signs the retry with the corrected clock.
async fn skew_retry<T, E, F, Fut>(
    first: Result<T, SdkError<E, HttpResponse>>,
    again: F,
) -> Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    match first {
        Err(e) if e.code() == Some("RequestTimeTooSkewed") => {
            tracing::info!(
                "S3 says the request time is too skewed; retrying with the SDK's clock-skew correction"
            );
            again().await
        }
        other => other,
    }
}

/// The region a bucket is really in, when S3 says the request went to the
/// wrong one: `301 PermanentRedirect` (the `x-amz-bucket-region` header),
/// or `AuthorizationHeaderMalformed` ("... expecting 'eu-west-1'").
fn wrong_region<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> Option<String> {
    let raw = e.raw_response()?;
    let status = raw.status().as_u16();
    let code = e.code().unwrap_or("");
    if !(status == 301
        || matches!(
            code,
            "PermanentRedirect"
                | "AuthorizationHeaderMalformed"
                | "IllegalLocationConstraintException"
        ))
    {
        return None;
    }
    if let Some(r) = raw.headers().get("x-amz-bucket-region") {
        return Some(r.to_string());
    }
    let quoted = |text: &str| {
        let rest = &text[text.find("expecting '")? + "expecting '".len()..];
        Some(rest[..rest.find('\'')?].to_string())
    };
    if let Some(r) = e.message().and_then(quoted) {
        return Some(r);
    }
    let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
    let region = &body[body.find("<Region>")? + "<Region>".len()..];
    Some(region[..region.find('<')?].to_string())
}

/// What to say when S3 refuses a request as too skewed even after the SDK
/// corrected for it: the host clock is off, and by how much (from the
/// answer's `Date`, or the `ServerTime` S3 puts in the error body).
fn skew_message<E>(e: &SdkError<E, HttpResponse>, described: &str) -> String {
    let server = e.raw_response().and_then(|raw| {
        let text = raw
            .headers()
            .get("date")
            .map(|d| {
                (
                    d.to_string(),
                    aws_sdk_s3::primitives::DateTimeFormat::HttpDate,
                )
            })
            .or_else(|| {
                let body = std::str::from_utf8(raw.body().bytes()?).ok()?;
                let t = &body[body.find("<ServerTime>")? + "<ServerTime>".len()..];
                Some((
                    t[..t.find('<')?].to_string(),
                    aws_sdk_s3::primitives::DateTimeFormat::DateTime,
                ))
            })?;
        let t = aws_sdk_s3::primitives::DateTime::from_str(&text.0, text.1).ok()?;
        SystemTime::try_from(t).ok()
    });
    let Some(server) = server else {
        return format!("{described}: the host clock is off from the store's; fix it (NTP)");
    };
    let (sign, off) = match SystemTime::now().duration_since(server) {
        Ok(ahead) => ("ahead of", ahead),
        Err(behind) => ("behind", behind.duration()),
    };
    format!(
        "the host clock is {:.0} s {sign} the store's (server time {}); fix the clock (NTP) — \
         S3 refuses requests signed more than 15 minutes off ({described})",
        off.as_secs_f64(),
        super::http::http_time(server)
    )
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

fn system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

#[async_trait]
impl ObjectStore for S3Store {
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
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

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Option<&ObjectMeta>,
    ) -> StoreResult<Bytes> {
        let op = format!("GET {}..{}", range.start, range.end);
        if range.start >= range.end {
            return super::empty_range(self, key, range, pin).await;
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

    async fn get_suffix(&self, key: &str, len: u64) -> StoreResult<(Bytes, ObjectMeta)> {
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

    async fn list(&self, prefix: &str) -> StoreResult<Vec<(String, ObjectMeta)>> {
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

    async fn put_file(&self, key: &str, path: &Path) -> StoreResult<ObjectMeta> {
        self.put_file_with_progress(key, path, Arc::new(|_| {}))
            .await
    }

    /// S3 answers a DELETE of a missing key with success; some compatible
    /// servers say NoSuchKey, which is success here too.
    async fn delete(&self, key: &str) -> StoreResult<()> {
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

    /// One PUT up to [`PART_SIZE`], a parallel multipart upload above it
    /// (aborted on any failure, so no incomplete upload is left billed);
    /// then a HEAD checks the stored size and ETag.
    async fn put_file_with_progress(
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
                        tracing::warn!(location = %self.location(key), error = %DisplayErrorContext(&ae), "could not abort the failed multipart upload");
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_for_ip_and_localhost() {
        assert!(endpoint_wants_path_style("http://127.0.0.1:9000"));
        assert!(endpoint_wants_path_style("http://[::1]:9000"));
        assert!(endpoint_wants_path_style("http://localhost:9000"));
        assert!(!endpoint_wants_path_style(
            "https://obs.cn-north-4.myhuaweicloud.com"
        ));
        assert!(!endpoint_wants_path_style("not a url"));
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 1, 1)));
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, 10, 10)));
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
    }
}
