//! SDK failures as [`StoreError`]s naming the object and operation:
//! transient or permanent for the retry layer, and messages that say what
//! to do for a bucket in another region or a host clock that is off.

use std::time::SystemTime;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::S3Store;
use crate::{ObjectMeta, ObjectStore, StoreError, StoreResult};

impl S3Store {
    /// Maps an SDK failure to a [`StoreError`] naming the object and operation.
    pub(super) fn map_err<E>(&self, key: &str, op: &str, e: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let location = self.location(key);
        let detail = chain_text(&e);
        let service = match &e {
            SdkError::ServiceError(_) => true,
            // A request that cannot be sent as built will not be sent later.
            SdkError::DispatchFailure(d) if d.is_user() => false,
            // No credentials anywhere in the chain (environment, profile,
            // instance metadata): a setup to fix, not an outage to wait out.
            SdkError::DispatchFailure(_) if is_missing_credentials(&detail) => {
                return StoreError::Forbidden {
                    location,
                    detail: format!(
                        "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                         pass --profile NAME, or --no-sign-request for a public bucket ({detail})"
                    ),
                };
            }
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

    pub(super) fn check_pin(
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

    pub(super) fn protocol_error(&self, key: &str, op: &str, detail: String) -> StoreError {
        StoreError::Other {
            location: self.location(key),
            op: op.into(),
            detail,
        }
    }

    /// Distinguishes a missing bucket from a missing key after a bodiless 404.
    pub(super) async fn not_found(&self, key: &str) -> StoreError {
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
}

/// The first attempt's result, or, when S3 said `RequestTimeTooSkewed`, a
/// second attempt's: the SDK learnt the server's time from the refusal and
/// signs the retry with the corrected clock.
pub(super) async fn skew_retry<T, E, F, Fut>(
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
        crate::http::http_time(server)
    )
}

/// An error and its sources as one line, `outer: inner: root`, each text
/// once (the SDK's errors repeat their source in their own message), and
/// without the `Debug` dump that the SDK's `DisplayErrorContext` appends.
pub(super) fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        next = err.source();
    }
    out
}

/// Whether an SDK failure says that no credentials could be loaded (as
/// opposed to the store not answering).
fn is_missing_credentials(detail: &str) -> bool {
    detail.contains("loading credentials")
        || detail.contains("provided credentials")
        || detail.contains("no credentials found")
        || detail.contains("credential provider was not enabled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("root cause")]
    struct Root;

    #[derive(Debug, thiserror::Error)]
    #[error("dispatch failure")]
    struct Outer(#[source] Root);

    #[test]
    fn chains_read_as_one_line_without_debug_dumps() {
        assert_eq!(chain_text(&Outer(Root)), "dispatch failure: root cause");
        assert!(is_missing_credentials(
            "dispatch failure: other: an error occurred while loading credentials: failed to load IMDS session token"
        ));
        assert!(is_missing_credentials(
            "the credential provider was not enabled: no credentials found in chain"
        ));
        assert!(!is_missing_credentials(
            "dispatch failure: io error: Connection refused"
        ));
    }
}
