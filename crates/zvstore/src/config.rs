//! How to reach stores: one plain struct, [`StoreConfig`], that every
//! backend takes. Command-line parsing of it lives in the binaries.

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use super::outage::OutageStats;
use super::resilient::{DEFAULT_IO_TIMEOUT, RetryPolicy};

/// How to reach stores: S3 addressing and credentials, and the limits every
/// request runs under. [`Default`] is what the binaries' flags default to.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// S3 region (`None`: from the environment/profile, else us-east-1).
    pub region: Option<String>,
    /// S3 endpoint, for S3-compatible stores (OBS, MinIO, Ceph RGW).
    pub endpoint_url: Option<String>,
    /// Address buckets as ENDPOINT/bucket/key rather than bucket.ENDPOINT/key
    /// (automatic for IP-address and localhost endpoints).
    pub force_path_style: bool,
    /// Named profile from ~/.aws/config and ~/.aws/credentials.
    pub profile: Option<String>,
    /// Send S3 requests unsigned (public buckets).
    pub no_sign_request: bool,
    /// Limit on one request attempt.
    pub timeout: Duration,
    /// How long a read rides out a store outage (transient failures:
    /// connection refused/reset, timeouts, 5xx, throttling) before it fails;
    /// zero waits forever (like an NFS hard mount). Permanent failures (no
    /// such key, access denied, image changed) fail at once.
    pub io_timeout: Duration,
    /// Give up on a request after this many retries even before
    /// `io_timeout` (`None`: reads retry until `io_timeout`; upload parts
    /// 4 times).
    pub retries: Option<u32>,
    /// Requests in flight at once per source.
    pub max_requests: usize,
    /// Explicit credentials, set by programs (tests) rather than flags: the
    /// standard chain (env, profile, IMDS/IRSA) is used when absent.
    pub credentials: Option<StaticCredentials>,
    /// Where the stores opened with this configuration count outages (a
    /// daemon shares one for its stats file); each store counts alone when
    /// absent.
    pub outage_stats: Option<Arc<OutageStats>>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
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

impl StoreConfig {
    /// The retry/timeout/concurrency policy this configuration asks for.
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
    /// Secret access key (never shown).
    pub secret_access_key: String,
    /// Session token of temporary credentials.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_shown() {
        let c = StaticCredentials {
            access_key_id: "AK".into(),
            secret_access_key: "SECRET".into(),
            session_token: None,
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
