//! Turning a source the user typed (a local path, `s3://bucket/key`,
//! `http(s)://…`) and the shared store flags into a ready store and key.
//!
//! Every command takes every kind of source with the same
//! [`StoreConfig`]; [`parse_source`] is the one parser of source strings and
//! [`open_source`] the one place that picks a backend (the backends take
//! the config, this module builds them) and wraps it in [`ResilientStore`].

use std::path::Path;
use std::sync::Arc;

pub use crate::redact_url;
pub use crate::units::parse_duration;

use super::StoreConfig;
use super::file::FileStore;
use super::http::HttpStore;
use super::resilient::ResilientStore;
use super::s3::S3Store;
use super::{ObjectStore, StoreError, StoreResult};

/// What kind of location a source string names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A local file: its directory and file name.
    File {
        /// The directory (`.` for a bare file name).
        dir: String,
        /// The file name inside it.
        name: String,
    },
    /// `s3://bucket/key` (an empty key is the whole bucket).
    S3 {
        /// The bucket.
        bucket: String,
        /// The key inside it, without a leading `/`.
        key: String,
    },
    /// An `http://` or `https://` URL, query string included.
    Http {
        /// The whole URL.
        url: String,
    },
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

/// Whether `source` names an object store (S3 or HTTP(S), any letter case)
/// rather than a local path.
pub fn is_remote(source: &str) -> bool {
    matches!(
        parse_source(source),
        Ok(SourceKind::S3 { .. } | SourceKind::Http { .. })
    )
}

/// Opens `source` with `args`: a local path (a file store rooted at its
/// directory, key = file name), `s3://bucket/key` or `http(s)://…`, wrapped
/// in [`ResilientStore`]. Returns the store and the object's key in it.
/// Nothing is requested yet; the first `head`/read talks to the store.
pub async fn open_source(
    source: &str,
    args: &StoreConfig,
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
        assert!(is_remote("HTTPS://h/x") && is_remote("s3://b/k"));
        assert!(!is_remote("dir/https.img"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://u:pw@h.example/b/k.img?X-Amz-Signature=abc"),
            "https://h.example/b/k.img?…"
        );
        assert_eq!(redact_url("http://h:80/x"), "http://h:80/x");
    }
}
