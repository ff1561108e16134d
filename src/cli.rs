//! The command-line flags both binaries (`zvmount`, `zvimg`) share, and
//! the value types their flags parse into. Clap lives here and in the
//! binaries; the libraries below take plain structs ([`StoreConfig`],
//! [`crate::daemon::MountConfig`]), whose `Default`s are the flags'
//! defaults, written once.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use zvstore::StoreConfig;
use zvstore::units::{format_duration, format_size, parse_duration, parse_size};

use crate::image::SizeMode;

/// A byte size flag (`512MiB`, `10GiB`, `4096`), shown the same way in
/// `--help` defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<ByteSize, String> {
        parse_size(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

/// A duration flag (`30s`, `500ms`, `2m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<HumanDuration, String> {
        parse_duration(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl clap::ValueEnum for SizeMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[SizeMode::Orig, SizeMode::Curr]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            SizeMode::Orig => "orig",
            SizeMode::Curr => "curr",
        }))
    }
}

/// The store defaults every flag below shows.
fn store_defaults() -> &'static StoreConfig {
    static DEFAULTS: OnceLock<StoreConfig> = OnceLock::new();
    DEFAULTS.get_or_init(StoreConfig::default)
}

/// Flags shared by every command that reads or writes a store; flatten it
/// into a command. Derefs to the [`StoreConfig`] it stands for, so
/// `open_source(src, &args.store)` takes it as is.
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
    #[arg(long, default_value_t = HumanDuration(store_defaults().timeout))]
    pub timeout: HumanDuration,
    /// How long a read rides out a store outage (transient failures:
    /// connection refused/reset, timeouts, 5xx, throttling) before it fails
    /// with an I/O error, e.g. 120s, 10m; 0 waits forever (like an NFS hard
    /// mount). Permanent failures (no such key, access denied, image
    /// changed) fail at once.
    #[arg(long, default_value_t = HumanDuration(store_defaults().io_timeout))]
    pub io_timeout: HumanDuration,
    /// Give up on a request after this many retries even before
    /// --io-timeout (default: reads retry until --io-timeout; upload parts
    /// 4 times).
    #[arg(long)]
    pub retries: Option<u32>,
    /// Requests in flight at once per source.
    #[arg(long, default_value_t = store_defaults().max_requests)]
    pub max_requests: usize,
    #[arg(skip)]
    config: OnceLock<StoreConfig>,
}

impl StoreArgs {
    /// The configuration these flags ask for.
    pub fn to_config(&self) -> StoreConfig {
        StoreConfig {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.force_path_style,
            profile: self.profile.clone(),
            no_sign_request: self.no_sign_request,
            timeout: self.timeout.0,
            io_timeout: self.io_timeout.0,
            retries: self.retries,
            max_requests: self.max_requests,
            ..StoreConfig::default()
        }
    }
}

impl std::ops::Deref for StoreArgs {
    type Target = StoreConfig;
    fn deref(&self) -> &StoreConfig {
        self.config.get_or_init(|| self.to_config())
    }
}

impl From<StoreArgs> for StoreConfig {
    fn from(a: StoreArgs) -> StoreConfig {
        a.to_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn defaults_are_the_configs() {
        let cli = Cli::parse_from(["x"]);
        let c = cli.store.to_config();
        let d = StoreConfig::default();
        assert_eq!(
            (c.timeout, c.retries, c.max_requests),
            (d.timeout, d.retries, d.max_requests)
        );
        let cli = Cli::parse_from(["x", "--timeout", "500ms", "--retries", "1"]);
        assert_eq!(cli.store.timeout.0, Duration::from_millis(500));
        assert_eq!(cli.store.retries, Some(1));
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
    }
}
