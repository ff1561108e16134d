//! Turning a source the user typed (a local path, `s3://bucket/key`,
//! `http(s)://…`) and the shared store flags into a ready store and key.
//!
//! Both binaries flatten [`StoreArgs`], so every command accepts every kind
//! of source with the same flags; [`open_source`] is the one place that
//! picks a backend and wraps it in [`ResilientStore`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::file::FileStore;
use super::http::HttpStore;
use super::outage::OutageStats;
use super::resilient::{DEFAULT_IO_TIMEOUT, ResilientStore, RetryPolicy};
use super::s3::S3Store;
use super::{ObjectStore, StoreError, StoreResult};

/// Flags shared by every command that reads or writes a store.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// S3 region (default: from the environment/profile, else us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// S3 endpoint, for S3-compatible stores (OBS, MinIO, Ceph RGW).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Address buckets as ENDPOINT/bucket/key rather than bucket.ENDPOINT/key
    /// (automatic for IP-address and localhost endpoints).
    #[arg(long)]
    pub force_path_style: bool,
    /// Named profile from ~/.aws/config and ~/.aws/credentials.
    #[arg(long)]
    pub profile: Option<String>,
    /// Send S3 requests unsigned (public buckets).
    #[arg(long)]
    pub no_sign_request: bool,
    /// Limit on one request attempt, e.g. 30s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long a read rides out a store outage (transient failures:
    /// connection refused/reset, timeouts, 5xx, throttling) before it fails
    /// with an I/O error, e.g. 120s, 10m; 0 waits forever (like an NFS hard
    /// mount). Permanent failures (no such key, access denied, image
    /// changed) fail at once.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub io_timeout: Duration,
    /// Give up on a request after this many retries even before
    /// --io-timeout (default: reads retry until --io-timeout; upload parts
    /// 4 times).
    #[arg(long)]
    pub retries: Option<u32>,
    /// Requests in flight at once per source.
    #[arg(long, default_value_t = 64)]
    pub max_requests: usize,
    /// Explicit credentials, set by programs (tests) rather than flags: the
    /// standard chain (env, profile, IMDS/IRSA) is used when absent.
    #[arg(skip)]
    pub credentials: Option<StaticCredentials>,
    /// Where the stores opened with these flags count outages (a daemon
    /// shares one for its stats file); each store counts alone when absent.
    #[arg(skip)]
    pub outage_stats: Option<Arc<OutageStats>>,
}

impl Default for StoreArgs {
    fn default() -> Self {
        StoreArgs {
            region: None,
            endpoint_url: None,
            force_path_style: false,
            profile: None,
            no_sign_request: false,
            timeout: Duration::from_secs(30),
            io_timeout: DEFAULT_IO_TIMEOUT,
            retries: None,
            max_requests: 64,
            credentials: None,
            outage_stats: None,
        }
    }
}

impl StoreArgs {
    /// The retry/timeout/concurrency policy these flags ask for.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            timeout: self.timeout,
            io_timeout: (!self.io_timeout.is_zero()).then_some(self.io_timeout),
            max_retries: self.retries.unwrap_or(u32::MAX),
            max_concurrent: self.max_requests.max(1),
            ..RetryPolicy::default()
        }
    }
}

/// An access key pair given in code; its `Debug` never shows the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    /// Access key ID (not secret; shown by `Debug`).
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .finish()
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 500ms, 2m"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("invalid duration {text:?}: unknown unit {other:?}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// What kind of location a source string names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A local file: its directory and file name.
    File { dir: String, name: String },
    /// `s3://bucket/key` (an empty key is the whole bucket).
    S3 { bucket: String, key: String },
    /// An `http://` or `https://` URL, query string included.
    Http { url: String },
}

/// Classifies `source` without opening anything.
pub fn parse_source(source: &str) -> StoreResult<SourceKind> {
    let bad = |detail: &str| StoreError::Other {
        location: redact_url(source),
        op: "parse source".into(),
        detail: detail.into(),
    };
    if let Some(rest) = source.strip_prefix("s3://") {
        // An empty key (`s3://bucket/`) names the whole bucket, for listing.
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("expected s3://BUCKET/KEY"));
        }
        return Ok(SourceKind::S3 {
            bucket: bucket.into(),
            key: key.into(),
        });
    }
    let lower = source.get(..8).unwrap_or(source).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(SourceKind::Http { url: source.into() });
    }
    if source.contains("://") {
        return Err(bad(
            "unknown scheme: expected a local path, s3://BUCKET/KEY or https://URL",
        ));
    }
    let path = Path::new(source);
    let name = path
        .file_name()
        .ok_or_else(|| bad("a local source must name a file"))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_string_lossy().into_owned(),
        _ => ".".into(),
    };
    Ok(SourceKind::File { dir, name })
}

/// Opens `source` with `args`: a local path (a file store rooted at its
/// directory, key = file name), `s3://bucket/key` or `http(s)://…`, wrapped
/// in [`ResilientStore`]. Returns the store and the object's key in it.
/// Nothing is requested yet; the first `head`/read talks to the store.
pub async fn open_source(
    source: &str,
    args: &StoreArgs,
) -> StoreResult<(Arc<dyn ObjectStore>, String)> {
    let policy = args.retry_policy();
    let stats = args.outage_stats.clone().unwrap_or_default();
    Ok(match parse_source(source)? {
        SourceKind::File { dir, name } => (
            Arc::new(ResilientStore::with_outage_stats(
                FileStore::new(dir),
                policy,
                stats,
            )),
            name,
        ),
        SourceKind::S3 { bucket, key } => {
            let s3 = S3Store::connect(&bucket, args).await?;
            (
                Arc::new(ResilientStore::with_outage_stats(s3, policy, stats)),
                key,
            )
        }
        SourceKind::Http { url } => {
            let (http, key) = HttpStore::for_url(&url, args)?;
            (
                Arc::new(ResilientStore::with_outage_stats(http, policy, stats)),
                key,
            )
        }
    })
}

/// `url` without its query string and user info, which may hold credentials
/// (presigned signatures, `user:password@`).
pub fn redact_url(url: &str) -> String {
    let (base, had_query) = match url.split_once('?') {
        Some((b, _)) => (b, true),
        None => (url, false),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) => format!("{scheme}://{}/{path}", strip_userinfo(authority)),
            None => format!("{scheme}://{}", strip_userinfo(rest)),
        },
        None => base.to_string(),
    };
    if had_query {
        format!("{base}?…")
    } else {
        base
    }
}

fn strip_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            parse_source("s3://b/dir/img.zvhd2").unwrap(),
            SourceKind::S3 {
                bucket: "b".into(),
                key: "dir/img.zvhd2".into()
            }
        );
        assert_eq!(
            parse_source("s3://b/").unwrap(),
            SourceKind::S3 {
                bucket: "b".into(),
                key: "".into()
            }
        );
        assert!(parse_source("s3:///k").is_err());
        assert!(parse_source("ftp://x/y").is_err());
        assert_eq!(
            parse_source("/data/img.zvhd2").unwrap(),
            SourceKind::File {
                dir: "/data".into(),
                name: "img.zvhd2".into()
            }
        );
        assert_eq!(
            parse_source("img").unwrap(),
            SourceKind::File {
                dir: ".".into(),
                name: "img".into()
            }
        );
        assert!(matches!(
            parse_source("HTTPS://h/x").unwrap(),
            SourceKind::Http { .. }
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://u:pw@h.example/b/k.img?X-Amz-Signature=abc"),
            "https://h.example/b/k.img?…"
        );
        assert_eq!(redact_url("http://h:80/x"), "http://h:80/x");
        let c = StaticCredentials {
            access_key_id: "AK".into(),
            secret_access_key: "SECRET".into(),
            session_token: None,
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
