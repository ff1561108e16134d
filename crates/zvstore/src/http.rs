//! Plain HTTP(S) objects — a public object or a presigned URL — read with
//! `Range` requests.
//!
//! A store is the URL's directory; a key is the last path segment plus any
//! query string, so a presigned URL keeps its signature. Reads are pinned
//! with `If-Match` (or `If-Unmodified-Since` when the server gives no strong
//! ETag), and every answer's validator is compared again, for servers that
//! ignore conditional headers. Query strings and user info never appear in
//! locations or errors: they may carry credentials.
//!
//! Sources that go stale while mounted: a URL that redirects (to a
//! short-lived signed URL, typically) has its target cached, and when the
//! target answers 401/403 the original URL is asked once more for a fresh
//! one. A presigned URL given directly names its expiry (`X-Amz-Date` +
//! `X-Amz-Expires`) in the error once it has passed, and a warning at open
//! says when it expires within a day. A `200` whose `Content-Range` is
//! exactly the range asked for is accepted (P2P proxies answer so).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderMap, IF_MATCH, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
    RANGE,
};
use reqwest::{Client, Method, Response, StatusCode, Url, redirect};

use super::{ObjectMeta, ObjectStore, StoreError, StoreResult};
use super::{StoreConfig, redact_url};

/// Prefix marking an [`ObjectMeta::etag`] that is really a `Last-Modified`
/// value (the server sent no strong ETag).
const LAST_MODIFIED_TAG: &str = "last-modified:";

/// Redirects followed for one request before giving up (a loop).
const MAX_REDIRECTS: usize = 10;
/// A presigned URL expiring sooner than this after open is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(24 * 3600);

/// Objects under one HTTP(S) base URL.
#[derive(Clone)]
pub struct HttpStore {
    client: Client,
    /// May hold `user:password@` (reqwest sends it as basic auth): never printed raw.
    base: Url,
    /// Where each key's URL last redirected to (signed targets: never printed).
    targets: Arc<Mutex<HashMap<String, Url>>>,
}

impl std::fmt::Debug for HttpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStore")
            .field("base", &redact_url(self.base.as_str()))
            .finish_non_exhaustive()
    }
}

impl HttpStore {
    /// A store for the directory of `url`, and the key of `url` in it.
    pub fn for_url(url: &str, args: &StoreConfig) -> StoreResult<(HttpStore, String)> {
        let bad = |detail: String| StoreError::Other {
            location: redact_url(url),
            op: "parse URL".into(),
            detail,
        };
        let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(bad("expected an http:// or https:// URL with a host".into()));
        }
        let path = parsed.path();
        let name = &path[path.rfind('/').map_or(0, |i| i + 1)..];
        if name.is_empty() {
            return Err(bad("the URL must name an object, not a directory".into()));
        }
        let mut key = name.to_string();
        if let Some(q) = parsed.query() {
            key.push('?');
            key.push_str(q);
        }
        let mut base = parsed.clone();
        base.set_query(None);
        base.set_fragment(None);
        base.set_path(&path[..path.len() - name.len()]);
        // Redirects are followed here, not by reqwest, so that a signed
        // target can be cached and renewed (see `send`).
        let client = Client::builder()
            .connect_timeout(args.timeout.min(std::time::Duration::from_secs(10)))
            .redirect(redirect::Policy::none())
            .build()
            .map_err(|e| bad(e.without_url().to_string()))?;
        if let Some(expiry) = presigned_expiry(&parsed) {
            let location = redact_url(url);
            match expiry.duration_since(SystemTime::now()) {
                Err(_) => tracing::warn!(
                    "{location}: the presigned URL expired at {}; reads will be refused",
                    http_time(expiry)
                ),
                Ok(left) if left < EXPIRY_WARNING => tracing::warn!(
                    "{location}: the presigned URL expires at {} (in {:.1} h); reads after that fail",
                    http_time(expiry),
                    left.as_secs_f64() / 3600.0
                ),
                Ok(_) => {}
            }
        }
        let store = HttpStore {
            client,
            base,
            targets: Arc::default(),
        };
        Ok((store, key))
    }

    /// `key` resolved against the base. The `./` keeps a name with a colon
    /// (`disk:1.zvhd2`) a relative path instead of a URL of scheme `disk`.
    fn join(&self, key: &str) -> Result<Url, String> {
        self.base
            .join(&format!("./{key}"))
            .map_err(|e| e.to_string())
    }

    fn url(&self, key: &str) -> StoreResult<Url> {
        self.join(key).map_err(|e| StoreError::Other {
            location: self.location(key),
            op: "build URL".into(),
            detail: e.to_string(),
        })
    }

    /// Sends one request for `key`, following redirects: from the cached
    /// target of an earlier redirect when there is one; when that target
    /// refuses (401/403: a signed URL that expired), from the original URL
    /// once more, which redirects to a fresh target.
    async fn send(
        &self,
        key: &str,
        op: &str,
        method: Method,
        headers: HeaderMap,
    ) -> StoreResult<Response> {
        let original = self.url(key)?;
        let cached = self
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let mut from_cache = cached.is_some();
        let mut url = cached.unwrap_or_else(|| original.clone());
        let mut redirected = false;
        let mut hops = 0;
        loop {
            let resp = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone())
                .send()
                .await
                .map_err(|e| self.send_error(key, op, e))?;
            let status = resp.status();
            if status.is_redirection()
                && let Some(next) = header_str(resp.headers(), reqwest::header::LOCATION.as_str())
                    .and_then(|l| url.join(l).ok())
            {
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(self.protocol_error(
                        key,
                        op,
                        &format!("more than {MAX_REDIRECTS} redirects (a redirect loop?)"),
                    ));
                }
                url = next;
                redirected = true;
                continue;
            }
            if from_cache && matches!(status.as_u16(), 401 | 403) {
                tracing::info!(
                    location = %self.location(key),
                    "the cached redirect target refused ({status}); asking the original URL again"
                );
                self.forget_target(key);
                from_cache = false;
                redirected = false;
                url = original.clone();
                continue;
            }
            if redirected && status.is_success() {
                self.targets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.to_string(), url);
            }
            return Ok(resp);
        }
    }

    fn forget_target(&self, key: &str) {
        self.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// A request that got no answer: transient (refused, reset, DNS,
    /// timeout), unless the request itself could not be built.
    fn send_error(&self, key: &str, op: &str, e: reqwest::Error) -> StoreError {
        let location = self.location(key);
        let builder = e.is_builder();
        let detail = error_chain(&e.without_url());
        if builder {
            return StoreError::Other {
                location,
                op: op.into(),
                detail,
            };
        }
        StoreError::Transient {
            location,
            op: op.into(),
            attempt: 0,
            detail,
        }
    }

    /// The error for a 401/403: an expired presigned URL says when it
    /// expired (from its own query, or the server's "Request has expired").
    async fn refused(&self, key: &str, status: StatusCode, resp: Response) -> StoreError {
        let location = self.location(key);
        let expiry = self.url(key).ok().and_then(|u| presigned_expiry(&u));
        if let Some(at) = expiry
            && at <= SystemTime::now()
        {
            return StoreError::Forbidden {
                location,
                detail: format!(
                    "HTTP {status}: the presigned URL expired at {} (X-Amz-Date + X-Amz-Expires); \
                     mount with a fresh URL",
                    http_time(at)
                ),
            };
        }
        let body = resp.text().await.unwrap_or_default();
        if body.contains("Request has expired")
            || body.contains("AccessDenied: Request has expired")
        {
            return StoreError::Forbidden {
                location,
                detail: format!(
                    "HTTP {status}: the server says \"Request has expired\": the presigned URL \
                     is no longer valid{}; mount with a fresh URL",
                    expiry.map_or(String::new(), |at| format!(
                        " (it says it expires at {})",
                        http_time(at)
                    ))
                ),
            };
        }
        StoreError::Forbidden {
            location,
            detail: format!("HTTP {status}"),
        }
    }

    /// The error for a non-success status.
    fn status_error(
        &self,
        key: &str,
        op: &str,
        status: StatusCode,
        pin: Option<&ObjectMeta>,
        size: Option<u64>,
        range: Option<&Range<u64>>,
    ) -> StoreError {
        let location = self.location(key);
        match status.as_u16() {
            404 | 410 => StoreError::NotFound { location },
            401 | 403 => StoreError::Forbidden {
                location,
                detail: format!("HTTP {status}"),
            },
            412 => StoreError::Changed {
                location,
                expected: pin.and_then(|p| p.etag.clone()).unwrap_or_default(),
                actual: "(different)".into(),
            },
            416 if range.is_some() => {
                let r = range.cloned().unwrap_or(0..0);
                StoreError::OutOfRange {
                    location,
                    start: r.start,
                    end: r.end,
                    size: size.unwrap_or(0),
                }
            }
            408 | 429 | 500..=599 => StoreError::Transient {
                location,
                op: op.into(),
                attempt: 0,
                detail: format!("HTTP {status}"),
            },
            _ => StoreError::Other {
                location,
                op: op.into(),
                detail: format!("unexpected HTTP {status}"),
            },
        }
    }

    /// Conditional headers pinning a request to `pin`.
    fn pin_headers(headers: &mut HeaderMap, pin: Option<&ObjectMeta>) {
        let Some(tag) = pin.and_then(|p| p.etag.as_deref()) else {
            return;
        };
        let (name, value) = match tag.strip_prefix(LAST_MODIFIED_TAG) {
            Some(date) => (IF_UNMODIFIED_SINCE, date),
            // A weak ETag never matches If-Match (strong comparison); the
            // response check below still catches a change.
            None if tag.starts_with("W/") => return,
            None => (IF_MATCH, tag),
        };
        if let Ok(v) = value.parse() {
            headers.insert(name, v);
        }
    }

    /// Fails with [`StoreError::Changed`] when a response's validator
    /// differs from the pinned one.
    fn check_pin(&self, key: &str, pin: Option<&ObjectMeta>, got: &ObjectMeta) -> StoreResult<()> {
        if let Some(want) = pin.and_then(|p| p.etag.as_ref())
            && got.etag.as_ref() != Some(want)
        {
            return Err(StoreError::Changed {
                location: self.location(key),
                expected: want.clone(),
                actual: got.etag.clone().unwrap_or_else(|| "(none)".into()),
            });
        }
        Ok(())
    }

    async fn body(&self, key: &str, op: &str, resp: Response) -> StoreResult<Bytes> {
        resp.bytes().await.map_err(|e| StoreError::Transient {
            location: self.location(key),
            op: op.into(),
            attempt: 0,
            detail: error_chain(&e.without_url()),
        })
    }

    /// Size and identity through a one-byte GET, for servers (presigned
    /// URLs) that refuse HEAD.
    async fn head_by_get(&self, key: &str) -> StoreResult<ObjectMeta> {
        let mut h = HeaderMap::new();
        h.insert(RANGE, "bytes=0-0".parse().expect("static header"));
        let resp = self.send(key, "GET 0..1", Method::GET, h).await?;
        let status = resp.status();
        let size = match status {
            StatusCode::PARTIAL_CONTENT => content_range(resp.headers()).map(|(_, _, size)| size),
            StatusCode::OK => header_u64(resp.headers(), CONTENT_LENGTH.as_str()),
            // An empty object has no byte 0.
            StatusCode::RANGE_NOT_SATISFIABLE => {
                Some(content_range_total(resp.headers()).unwrap_or(0))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.refused(key, status, resp).await);
            }
            _ => return Err(self.status_error(key, "GET 0..1", status, None, None, None)),
        };
        let size = size.ok_or_else(|| {
            self.protocol_error(key, "GET 0..1", "no object size in the response")
        })?;
        Ok(meta_from(resp.headers(), size))
    }

    fn protocol_error(&self, key: &str, op: &str, detail: &str) -> StoreError {
        StoreError::Other {
            location: self.location(key),
            op: op.into(),
            detail: detail.into(),
        }
    }

    fn unsupported(&self, key: &str, op: &str) -> StoreError {
        StoreError::Other {
            location: self.location(key),
            op: op.into(),
            detail: "not supported by https sources (use a local path or s3://)".into(),
        }
    }
}

#[async_trait]
impl ObjectStore for HttpStore {
    fn location(&self, key: &str) -> String {
        match self.join(key) {
            Ok(u) => redact_url(u.as_str()),
            Err(_) => redact_url(&format!("{}{key}", self.base)),
        }
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let resp = self
            .send(key, "HEAD", Method::HEAD, HeaderMap::new())
            .await?;
        let status = resp.status();
        match status {
            StatusCode::OK => {
                let size =
                    header_u64(resp.headers(), CONTENT_LENGTH.as_str()).ok_or_else(|| {
                        self.protocol_error(key, "HEAD", "no Content-Length in the response")
                    })?;
                Ok(meta_from(resp.headers(), size))
            }
            // Presigned URLs are signed for GET only; some servers lack HEAD.
            StatusCode::FORBIDDEN
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED => self.head_by_get(key).await,
            _ => Err(self.status_error(key, "HEAD", status, None, None, None)),
        }
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
        let mut h = HeaderMap::new();
        h.insert(
            RANGE,
            format!("bytes={}-{}", range.start, range.end - 1)
                .parse()
                .expect("ascii header"),
        );
        Self::pin_headers(&mut h, pin);
        let resp = self.send(key, &op, Method::GET, h).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let (start, end, size) = content_range(&headers).ok_or_else(|| {
                    self.protocol_error(key, &op, "206 without a valid Content-Range")
                })?;
                self.check_pin(key, pin, &meta_from(&headers, size))?;
                if start != range.start || end != range.end {
                    if range.end > size {
                        return Err(StoreError::OutOfRange {
                            location: self.location(key),
                            start: range.start,
                            end: range.end,
                            size,
                        });
                    }
                    return Err(self.protocol_error(
                        key,
                        &op,
                        &format!("server sent bytes {start}..{end} instead"),
                    ));
                }
                self.body(key, &op, resp).await
            }
            StatusCode::OK => {
                let size = header_u64(&headers, CONTENT_LENGTH.as_str());
                match content_range(&headers) {
                    // P2P proxies answer a range with 200 and a
                    // Content-Range: right when it is exactly the range.
                    Some((start, end, total)) if start == range.start && end == range.end => {
                        self.check_pin(key, pin, &meta_from(&headers, total))?;
                        return self.body(key, &op, resp).await;
                    }
                    Some((start, end, _)) => {
                        return Err(self.protocol_error(
                            key,
                            &op,
                            &format!(
                                "the server (or a proxy in front of it) answered 200 with bytes \
                                 {start}..{end} instead of the range asked for"
                            ),
                        ));
                    }
                    None => {}
                }
                // The Range was ignored: acceptable only when the whole
                // object was wanted.
                if range.start != 0 || size != Some(range.end) {
                    return Err(self.protocol_error(
                        key,
                        &op,
                        "the server (or a proxy in front of it) ignores Range requests: it \
                         answered 200 with the whole object",
                    ));
                }
                self.check_pin(key, pin, &meta_from(&headers, range.end))?;
                self.body(key, &op, resp).await
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(self.refused(key, status, resp).await)
            }
            _ => Err(self.status_error(
                key,
                &op,
                status,
                pin,
                content_range_total(&headers),
                Some(&range),
            )),
        }
    }

    async fn get_suffix(&self, key: &str, len: u64) -> StoreResult<(Bytes, ObjectMeta)> {
        let op = format!("GET last {len} bytes");
        if len == 0 {
            return Ok((Bytes::new(), self.head(key).await?));
        }
        let mut h = HeaderMap::new();
        h.insert(
            RANGE,
            format!("bytes=-{len}").parse().expect("ascii header"),
        );
        let resp = self.send(key, &op, Method::GET, h).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let (start, end, size) = content_range(&headers).ok_or_else(|| {
                    self.protocol_error(key, &op, "206 without a valid Content-Range")
                })?;
                if end != size || start != size.saturating_sub(len) {
                    return Err(self.protocol_error(
                        key,
                        &op,
                        &format!("server sent bytes {start}..{end} of {size}"),
                    ));
                }
                let body = self.body(key, &op, resp).await?;
                Ok((body, meta_from(&headers, size)))
            }
            StatusCode::OK => {
                // Whole object: shorter than `len`, or Range ignored.
                let size = header_u64(&headers, CONTENT_LENGTH.as_str()).ok_or_else(|| {
                    self.protocol_error(key, &op, "no Content-Length in the response")
                })?;
                if size > len {
                    return Err(self.protocol_error(key, &op, "the server ignores Range requests"));
                }
                let body = self.body(key, &op, resp).await?;
                Ok((body, meta_from(&headers, size)))
            }
            // A suffix of an empty object is unsatisfiable.
            StatusCode::RANGE_NOT_SATISFIABLE => Ok((Bytes::new(), self.head(key).await?)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(self.refused(key, status, resp).await)
            }
            _ => Err(self.status_error(key, &op, status, None, None, None)),
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<(String, ObjectMeta)>> {
        Err(self.unsupported(prefix, "LIST"))
    }

    async fn put_file(&self, key: &str, _path: &Path) -> StoreResult<ObjectMeta> {
        Err(self.unsupported(key, "PUT"))
    }

    /// The suffix goes on the name, before any query string (which would not
    /// sign the sibling anyway: a presigned sidecar needs its own URL).
    fn sibling_key(&self, key: &str, suffix: &str) -> String {
        match key.split_once('?') {
            Some((name, query)) => format!("{name}{suffix}?{query}"),
            None => format!("{key}{suffix}"),
        }
    }
}

/// When a presigned URL stops working: `X-Amz-Date` + `X-Amz-Expires`
/// (SigV4), or `Expires` (SigV2, seconds since the epoch). `None` for a URL
/// that is not presigned.
pub fn presigned_expiry(url: &Url) -> Option<SystemTime> {
    let mut date = None;
    let mut expires = None;
    let mut v2 = None;
    for (k, v) in url.query_pairs() {
        match k.to_ascii_lowercase().as_str() {
            "x-amz-date" => date = Some(v.into_owned()),
            "x-amz-expires" => expires = v.parse::<u64>().ok(),
            "expires" => v2 = v.parse::<u64>().ok(),
            _ => {}
        }
    }
    if let (Some(date), Some(expires)) = (date, expires) {
        return Some(parse_amz_date(&date)? + Duration::from_secs(expires));
    }
    v2.map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// `20261130T080000Z` (SigV4's basic ISO 8601) as a time.
fn parse_amz_date(v: &str) -> Option<SystemTime> {
    let b = v.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &v[0..4],
        &v[4..6],
        &v[6..8],
        &v[9..11],
        &v[11..13],
        &v[13..15]
    );
    let t = aws_sdk_s3::primitives::DateTime::from_str(
        &rfc3339,
        aws_sdk_s3::primitives::DateTimeFormat::DateTime,
    )
    .ok()?;
    SystemTime::try_from(t).ok()
}

/// A time as an RFC 3339 UTC string, for messages.
pub(crate) fn http_time(t: SystemTime) -> String {
    aws_sdk_s3::primitives::DateTime::from(t)
        .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
        .unwrap_or_else(|_| format!("{t:?}"))
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    header_str(h, name).and_then(|v| v.trim().parse().ok())
}

/// Identity from a response's headers: the ETag, or `Last-Modified` when
/// there is no ETag.
fn meta_from(h: &HeaderMap, size: u64) -> ObjectMeta {
    let etag = header_str(h, ETAG.as_str())
        .map(str::to_string)
        .or_else(|| {
            header_str(h, LAST_MODIFIED.as_str()).map(|d| format!("{LAST_MODIFIED_TAG}{d}"))
        });
    ObjectMeta {
        size,
        etag,
        modified: None,
    }
}

/// `Content-Range: bytes START-END/SIZE` as `(start, end_exclusive, size)`.
fn content_range(h: &HeaderMap) -> Option<(u64, u64, u64)> {
    super::parse_content_range(header_str(h, CONTENT_RANGE.as_str())?)
}

/// The `SIZE` of `Content-Range: bytes */SIZE` (sent with 416).
fn content_range_total(h: &HeaderMap) -> Option<u64> {
    let v = header_str(h, CONTENT_RANGE.as_str())?
        .trim()
        .strip_prefix("bytes ")?;
    v.split_once('/')?.1.trim().parse().ok()
}

/// An error and its sources on one line (reqwest's top level says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_locations() {
        let (s, key) = HttpStore::for_url(
            "https://h.example/a/b/img.zvhd2?X-Amz-Signature=s3cr3t",
            &StoreConfig::default(),
        )
        .unwrap();
        assert_eq!(key, "img.zvhd2?X-Amz-Signature=s3cr3t");
        assert_eq!(
            s.url(&key).unwrap().as_str(),
            "https://h.example/a/b/img.zvhd2?X-Amz-Signature=s3cr3t"
        );
        assert_eq!(s.location(&key), "https://h.example/a/b/img.zvhd2?…");
        assert_eq!(
            s.sibling_key(&key, ".zvidx"),
            "img.zvhd2.zvidx?X-Amz-Signature=s3cr3t"
        );
        assert!(HttpStore::for_url("https://h.example/dir/", &StoreConfig::default()).is_err());
        // A colon in the name must not turn the key into a URL of its own.
        let (s, key) =
            HttpStore::for_url("https://h.example/d/disk:1.zvhd2", &StoreConfig::default())
                .unwrap();
        assert_eq!(
            s.url(&key).unwrap().as_str(),
            "https://h.example/d/disk:1.zvhd2"
        );
        assert_eq!(
            s.url(&s.sibling_key(&key, ".zvidx")).unwrap().as_str(),
            "https://h.example/d/disk:1.zvhd2.zvidx"
        );
        let (s, key) = HttpStore::for_url(
            "https://me:pa55word@h.example/x.img",
            &StoreConfig::default(),
        )
        .unwrap();
        assert!(!format!("{s:?} {}", s.location(&key)).contains("pa55word"));
    }

    #[test]
    fn presigned_expiry_from_the_query() {
        let u = Url::parse(
            "https://h/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261130T080000Z&X-Amz-Expires=3600&X-Amz-Signature=s",
        )
        .unwrap();
        let at = presigned_expiry(&u).unwrap();
        assert_eq!(http_time(at), "2026-11-30T09:00:00Z");
        let v2 = Url::parse("https://h/x?AWSAccessKeyId=a&Expires=1700000000&Signature=s").unwrap();
        assert_eq!(
            presigned_expiry(&v2),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(presigned_expiry(&Url::parse("https://h/x").unwrap()), None);
        let bad = Url::parse("https://h/x?X-Amz-Date=2026&X-Amz-Expires=60").unwrap();
        assert_eq!(presigned_expiry(&bad), None);
    }

    #[test]
    fn content_ranges() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_RANGE, "bytes 10-19/100".parse().unwrap());
        assert_eq!(content_range(&h), Some((10, 20, 100)));
        h.insert(CONTENT_RANGE, "bytes 19-10/100".parse().unwrap());
        assert_eq!(content_range(&h), None);
        h.insert(CONTENT_RANGE, "bytes */100".parse().unwrap());
        assert_eq!(content_range_total(&h), Some(100));
    }
}
