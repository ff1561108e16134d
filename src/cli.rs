//! The command-line flags both binaries (`zvmount`, `zvimg`) share, the
//! value types their flags parse into, and `zvmount`'s own command line
//! ([`Cli`]). Clap lives here and in the
//! binaries; the libraries below take plain structs ([`StoreConfig`],
//! [`crate::daemon::MountConfig`]), whose `Default`s are the flags'
//! defaults, written once.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use zvstore::StoreConfig;
use zvstore::units::{format_duration, format_size, parse_duration, parse_size};

use crate::daemon::MountConfig;
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
/// into a command, and hand [`StoreArgs::to_config`] to the libraries.
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

impl From<StoreArgs> for StoreConfig {
    fn from(a: StoreArgs) -> StoreConfig {
        a.to_config()
    }
}

// ---- `zvmount`'s own command line (read by `xtask` for its man page and
// completions; merged with a config file by `crate::config`) ----

/// Mount ZVHD2 disk images from object storage as read-only raw files.
///
/// Each SOURCE (a local path, s3://BUCKET/KEY or https://URL) appears in
/// MOUNTPOINT as `<name>.raw`, a file of the disk's size whose bytes are the
/// decoded image, fetched block by block as they are read. A SOURCE that is
/// a directory or ends in `/` mounts every `*.zvhd2` under it.
///
/// Boot a VM from it through a qcow2 overlay:
///
///   qemu-img create -f qcow2 -b MOUNTPOINT/disk.raw -F raw overlay.qcow2
///
/// Or describe the mount in a file (`zvmount --config /etc/zvmount/web.toml`;
/// `--print-config` shows the result) and run it as a service with the
/// `zvmount@.service` systemd template (`systemctl start zvmount@web`).
///
/// Stop with Ctrl-C or SIGTERM (or `fusermount3 -u MOUNTPOINT`).
/// Counters: `cat MOUNTPOINT/.zvmount-stats.json`.
#[derive(Parser, Debug)]
#[command(
    name = "zvmount",
    version,
    verbatim_doc_comment,
    args_override_self = true,
    override_usage = "zvmount [OPTIONS] SOURCE... MOUNTPOINT\n       zvmount [OPTIONS] --config FILE [SOURCE...] [MOUNTPOINT]"
)]
pub struct Cli {
    /// Images to serve (SOURCE...), then the directory to mount on
    /// (MOUNTPOINT: an existing, empty directory). With --config both are
    /// optional, and a single argument is the MOUNTPOINT.
    #[arg(
        required_unless_present_any = ["config", "print_config"],
        value_name = "PATH"
    )]
    pub paths: Vec<String>,

    /// Read the mount's settings and images from a TOML file (keys are the
    /// long options with `_`, images are `[[image]]` tables with `source`,
    /// `name`, `sidecar` and store settings); options given here win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the merged settings (config file + options) as a config file,
    /// and exit.
    #[arg(long)]
    pub print_config: bool,

    /// File name for an image inside the mount (repeat in SOURCE order;
    /// default: the source's basename with .zvhd2 replaced by .raw).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,

    /// Sidecar index to use (default: SOURCE.zvidx when it exists). Only
    /// with a single SOURCE.
    #[arg(long, value_name = "LOCATION", conflicts_with = "no_sidecar")]
    pub sidecar: Option<String>,

    /// Ignore sidecar indexes; read the image's own index and bitmap.
    #[arg(long)]
    pub no_sidecar: bool,

    /// Memory for decoded blocks (LRU), e.g. 512MiB, 2GiB.
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(MountConfig::default().mem_cache))]
    pub mem_cache: ByteSize,

    /// Host-wide image cache, shared by every zvmount on the host (default
    /// for root: /var/cache/zvmount, or $ZVMOUNT_CACHE_DIR; `none`: no cache).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Size cap of the host cache (whole images are evicted, least
    /// recently used first; 5% of its file system is always kept free).
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(MountConfig::DEFAULT_DISK_CACHE))]
    pub disk_cache: ByteSize,

    /// Fetch every block into the host cache in the background, at the
    /// lowest priority, at most RATE MB/s for the whole mount, shared by
    /// its images (default: unlimited). Written `--hydrate=RATE`.
    #[arg(long, value_name = "RATE", num_args = 0..=1, require_equals = true, default_missing_value = "0", value_parser = parse_hydrate_rate)]
    pub hydrate: Option<f64>,

    /// Blocks to fetch ahead of a sequential reader (0 disables).
    #[arg(long, value_name = "BLOCKS", default_value_t = MountConfig::default().readahead)]
    pub readahead: u32,

    /// Memory that readahead and profile prefetch may hold in flight.
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(MountConfig::default().prefetch_budget))]
    pub prefetch_budget: ByteSize,

    /// Widen every store GET to whole SIZE slices of the image (e.g. 4MiB),
    /// so hosts behind a caching tier (nginx slice, a CDN, Dragonfly) ask
    /// for the same ranges and share them; 0 (the default) is off. Blocks
    /// that come along are cached. See docs/FLEET.md.
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(0))]
    pub fetch_align: ByteSize,

    /// Size of the served file: `orig`, the disk that was converted, or
    /// `curr`, rounded up to a whole GiB as Huawei's tools show it.
    #[arg(long = "size", value_enum, default_value_t = MountConfig::default().size_mode)]
    pub size_mode: SizeMode,

    /// Let other users (and root) read the mount; needs `user_allow_other`
    /// in /etc/fuse.conf when not run as root.
    #[arg(long)]
    pub allow_other: bool,

    /// Record the blocks read, in order, and write them to FILE on unmount
    /// (a boot profile for `zvimg index --boot-profile`).
    #[arg(long, value_name = "FILE")]
    pub record_profile: Option<PathBuf>,

    /// Detach once the mount is up (errors before that still reach the
    /// terminal).
    #[arg(long)]
    pub daemon: bool,

    /// Write logs to FILE (default: stderr; with --daemon, discarded).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// More logging: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log line format: `human` (default) or `json`, one object per line
    /// for log shippers.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics on /metrics at ADDR: IP:PORT (e.g.
    /// 127.0.0.1:9917) or a unix socket path. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<crate::telemetry::MetricsAddr>,

    /// Serve each SOURCE as a plain raw file, without decoding (to measure
    /// the FUSE path on its own).
    #[arg(long, hide = true)]
    pub raw_passthrough: bool,

    /// Set by --daemon on the detached child: say "ready" on stdout once
    /// mounted, then drop the terminal.
    #[arg(long, hide = true)]
    pub daemon_child: bool,

    /// Store options (region, endpoint, credentials profile, timeouts).
    #[command(flatten)]
    pub store: StoreArgs,
}

impl Cli {
    /// The SOURCE arguments: every path but the last, or none when a
    /// config file is given with a single path.
    pub fn sources(&self) -> &[String] {
        match self.paths.as_slice() {
            [_] if self.config.is_some() => &[],
            [sources @ .., _] => sources,
            [] => &[],
        }
    }

    /// The MOUNTPOINT argument: the last path, if any.
    pub fn mountpoint(&self) -> Option<PathBuf> {
        self.paths.last().map(PathBuf::from)
    }
}

/// How `zvmount` writes log lines (`--log-format`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines: time, level, message, fields.
    Human,
    /// One JSON object per line (timestamp, level, fields, message).
    Json,
}

/// `--hydrate=RATE`: MB/s, 0 or more (0: unlimited), or `true` (unlimited)
/// as a config file also takes it.
fn parse_hydrate_rate(s: &str) -> Result<f64, String> {
    if s == "true" {
        return Ok(0.0);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "a rate in MB/s, 0 or more (0: unlimited), or true; not `{s}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct StoreOnly {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn defaults_are_the_configs() {
        let cli = StoreOnly::parse_from(["x"]);
        let c = cli.store.to_config();
        let d = StoreConfig::default();
        assert_eq!(
            (c.timeout, c.retries, c.max_requests),
            (d.timeout, d.retries, d.max_requests)
        );
        let cli = StoreOnly::parse_from(["x", "--timeout", "500ms", "--retries", "1"]);
        assert_eq!(cli.store.timeout.0, Duration::from_millis(500));
        assert_eq!(cli.store.retries, Some(1));
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn the_last_path_is_the_mountpoint() {
        let cli = super::Cli::parse_from(["zvmount", "a.zvhd2", "b.zvhd2", "/mnt"]);
        assert_eq!(cli.sources(), ["a.zvhd2", "b.zvhd2"]);
        assert_eq!(cli.mountpoint().unwrap(), std::path::Path::new("/mnt"));
        let cli = super::Cli::parse_from(["zvmount", "--config", "c.toml", "/mnt"]);
        assert!(cli.sources().is_empty());
        assert_eq!(cli.mountpoint().unwrap(), std::path::Path::new("/mnt"));
        let cli = super::Cli::parse_from(["zvmount", "--config", "c.toml"]);
        assert!(cli.sources().is_empty() && cli.mountpoint().is_none());
        assert!(super::Cli::try_parse_from(["zvmount"]).is_err());
    }
}
