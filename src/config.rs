//! `zvmount --config FILE`: the TOML schema of a mount, and how it merges
//! with the command line.
//!
//! A file describes one mount: its mountpoint, cache and prefetch options,
//! store settings, and one `[[image]]` table per image (each may override
//! the store settings, for images spread over several endpoints):
//!
//! ```toml
//! mountpoint = "/run/zvmount/web"
//! cache_dir = "/var/cache/zvmount"
//! io_timeout = "120s"
//! mem_cache = "1GiB"
//!
//! [[image]]
//! source = "s3://images/web-2026.zvhd2"
//! name = "web.raw"
//!
//! [[image]]
//! source = "https://cdn.example.com/db.zvhd2"
//! ```
//!
//! Keys are the long flags with `_` for `-`. Unknown keys are errors naming
//! the key, file, line and column. A flag given on the command line wins
//! over the file; the file wins over flag defaults and environment
//! variables. SOURCE arguments, when given, replace the file's images.
//!
//! Nothing here touches a store or the mount: [`MountSettings::resolve`]
//! turns the parsed [`Cli`] and file into a [`MountSettings`] (what
//! `--print-config` prints), and [`MountSettings::into_mount_config`] into
//! what [`crate::daemon::run_mount`] takes.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zvstore::StoreConfig;

use crate::cli::{ByteSize, Cli, HumanDuration, LogFormat};
use crate::daemon::{MountConfig, SizeMode, SourceSpec};
use crate::telemetry::MetricsAddr;

/// `hydrate = true|false|RATE`: a flag that may carry a value reads as
/// either in a file.
fn de_hydrate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "true, false or a rate in MB/s")]
    enum Hydrate {
        Flag(bool),
        Rate(f64),
    }
    Ok(match Option::<Hydrate>::deserialize(d)? {
        Some(Hydrate::Flag(true)) => Some(0.0),
        Some(Hydrate::Flag(false)) | None => None,
        Some(Hydrate::Rate(r)) if r.is_finite() && r >= 0.0 => Some(r),
        Some(Hydrate::Rate(r)) => {
            return Err(serde::de::Error::custom(format!(
                "hydrate: a rate in MB/s, 0 or more (0: unlimited), or true/false; not {r}"
            )));
        }
    })
}

/// `hydrate` as a file says it: `true` for unlimited, else the rate.
fn ser_hydrate<S: serde::Serializer>(rate: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match rate {
        Some(r) if *r == 0.0 => s.serialize_bool(true),
        Some(r) => s.serialize_f64(*r),
        None => s.serialize_none(),
    }
}

/// Why a configuration cannot be used. Every variant names the file (when
/// there is one) and what in it is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (an unknown
    /// key, a value of the wrong type or format).
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column (in characters) on that line.
        column: usize,
        /// toml's description, e.g. "unknown field `mem_cach`, expected …".
        message: String,
    },
    /// The merged settings are incomplete or contradictory.
    #[error("{0}")]
    Invalid(String),
}

// Sizes and durations are written as the flags take them ("512MiB", "30s")
// or as plain numbers (bytes, seconds), and printed back the flags' way.

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrNumber::<ByteSize>(PhantomData))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrNumber::<HumanDuration>(PhantomData))
    }
}

/// A flag value a file may give as the flag's text or as a plain number.
trait FlagValue: FromStr<Err = String> {
    /// What a value looks like, for serde's "invalid type" messages.
    const EXPECTING: &'static str;
    /// The value's name in "invalid {what} -1: negative".
    const WHAT: &'static str;
    /// The value of a plain number (bytes, seconds).
    fn from_number(n: u64) -> Self;
}

impl FlagValue for ByteSize {
    const EXPECTING: &'static str = "a size like \"512MiB\" or a number of bytes";
    const WHAT: &'static str = "size";
    fn from_number(n: u64) -> Self {
        ByteSize(n)
    }
}

impl FlagValue for HumanDuration {
    const EXPECTING: &'static str = "a duration like \"30s\" or a number of seconds";
    const WHAT: &'static str = "duration";
    fn from_number(n: u64) -> Self {
        HumanDuration(Duration::from_secs(n))
    }
}

/// The one visitor behind both: TOML integers arrive as `i64`, strings go
/// through the flag's own parser so a file and a flag accept the same text.
struct TextOrNumber<T>(PhantomData<T>);

impl<T: FlagValue> serde::de::Visitor<'_> for TextOrNumber<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<T, E> {
        Ok(T::from_number(n))
    }
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<T, E> {
        u64::try_from(n)
            .map(T::from_number)
            .map_err(|_| E::custom(format!("invalid {} {n}: negative", T::WHAT)))
    }
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }
}

// An exporter address is written as `--metrics-addr` takes it
// (`127.0.0.1:9917`, a socket path), not as its log form (`http://…`).

impl Serialize for MetricsAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MetricsAddr::Tcp(addr) => s.collect_str(addr),
            MetricsAddr::Unix(path) if path.to_string_lossy().contains('/') => {
                s.collect_str(&path.display())
            }
            MetricsAddr::Unix(path) => s.collect_str(&format_args!("unix:{}", path.display())),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `orig` or `curr`, as `--size` takes it.
fn de_size_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SizeMode>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<SizeMode>().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "unknown size {text:?}: expected \"orig\" or \"curr\""
        ))
    })
}

/// Store settings an `[[image]]` table may set for itself, over the
/// mount-wide ones (the same five keys at the top level).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ImageStore {
    region: Option<String>,
    endpoint_url: Option<String>,
    force_path_style: Option<bool>,
    profile: Option<String>,
    no_sign_request: Option<bool>,
}

impl ImageStore {
    /// `base` with these settings put over it.
    fn apply(&self, base: &StoreConfig) -> StoreConfig {
        let mut store = base.clone();
        if let Some(v) = &self.region {
            store.region = Some(v.clone());
        }
        if let Some(v) = &self.endpoint_url {
            store.endpoint_url = Some(v.clone());
        }
        if let Some(v) = self.force_path_style {
            store.force_path_style = v;
        }
        if let Some(v) = &self.profile {
            store.profile = Some(v.clone());
        }
        if let Some(v) = self.no_sign_request {
            store.no_sign_request = v;
        }
        store
    }
}

/// One `[[image]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// A local path, `s3://bucket/key`, `https://…`, or a directory/prefix
    /// (ending in `/`) whose `*.zvhd2` images are all served.
    pub source: String,
    /// File name inside the mount (default: the basename with `.raw`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Sidecar index location (default: SOURCE.zvidx when it exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<String>,
    // Store settings for this image only, over the mount-wide ones.
    /// S3 region (`--region`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3-compatible endpoint (`--endpoint-url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Path-style bucket addressing (`--force-path-style`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Named AWS profile (`--profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Unsigned S3 requests (`--no-sign-request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_sign_request: Option<bool>,
}

/// A mount's settings: the schema of the config file, and (fully filled
/// in) the merged result `--print-config` shows. Every field but `image`
/// is optional in a file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSettings {
    /// Directory to mount on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<PathBuf>,
    /// Memory for decoded blocks (`--mem-cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_cache: Option<ByteSize>,
    /// Persistent block cache directory (`--cache-dir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Size limit of `cache_dir` (`--disk-cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_cache: Option<ByteSize>,
    /// Hydrate the host cache in the background at most this many MB/s;
    /// `0` is unlimited (`--hydrate[=RATE]`); in a file `true` is the same
    /// as `0` and `false` as leaving it out.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_hydrate",
        serialize_with = "ser_hydrate"
    )]
    pub hydrate: Option<f64>,
    /// Blocks of sequential readahead (`--readahead`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readahead: Option<u32>,
    /// Prefetch memory in flight (`--prefetch-budget`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch_budget: Option<ByteSize>,
    /// Slice size store GETs are widened to; 0 is off (`--fetch-align`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_align: Option<ByteSize>,
    /// `orig` or `curr` (`--size`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_size_mode"
    )]
    pub size: Option<SizeMode>,
    /// Let other users read the mount (`--allow-other`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_other: Option<bool>,
    /// Ignore sidecar indexes (`--no-sidecar`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_sidecar: Option<bool>,
    /// Write a boot profile here on unmount (`--record-profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_profile: Option<PathBuf>,
    /// Log file (`--log-file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// Detach once the mount is up (`--daemon`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<bool>,
    /// `human` or `json` (`--log-format`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// More logging: 1 debug, 2 trace (`-v`, `-vv`; `RUST_LOG` overrides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verbose: Option<u8>,
    /// Serve Prometheus metrics here: `IP:PORT` or a unix socket path
    /// (`--metrics-addr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<MetricsAddr>,
    /// Limit on one store request attempt (`--timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// How long a read rides out a store outage before failing; `0`
    /// waits forever (`--io-timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_timeout: Option<HumanDuration>,
    /// Retries of a failed store request before `io_timeout` (`--retries`;
    /// default: until `io_timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Store requests in flight per source (`--max-requests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<usize>,
    // Store settings for every image (an `[[image]]` may override them).
    /// S3 region (`--region`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3-compatible endpoint (`--endpoint-url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Path-style bucket addressing (`--force-path-style`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Named AWS profile (`--profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Unsigned S3 requests (`--no-sign-request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_sign_request: Option<bool>,
    /// The images, in order.
    #[serde(default, rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageEntry>,
}

/// Takes the command line's value when it was typed there, else the
/// file's, else the command line's default.
fn pick<T>(typed: bool, cli: T, file: Option<T>) -> Option<T> {
    if typed { Some(cli) } else { file.or(Some(cli)) }
}

/// Like [`pick`] for settings that may be absent everywhere.
fn pick_opt<T>(typed: bool, cli: Option<T>, file: Option<T>) -> Option<T> {
    if typed { cli } else { file.or(cli) }
}

impl MountSettings {
    /// Parses a config file's text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<MountSettings, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start).min(text.len());
            let (line, column) = line_column(text, offset);
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })
    }

    /// Reads and parses a config file. Relative paths in it (mountpoint,
    /// cache and log files, local image sources and sidecars, a unix
    /// metrics socket) are taken relative to the file's own directory, as
    /// nginx and systemd do, not to wherever zvmount was started.
    pub fn load(path: &Path) -> Result<MountSettings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut settings = MountSettings::parse(&text, path)?;
        // A file in the working directory: its relative paths are already
        // relative to it.
        if let Some(base) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            settings.rebase(base);
        }
        Ok(settings)
    }

    /// Makes every relative local path of the file relative to `base`.
    fn rebase(&mut self, base: &Path) {
        let path = |p: &mut Option<PathBuf>| {
            if let Some(p) = p
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        };
        path(&mut self.mountpoint);
        // `none` (no cache) is a word, not a path.
        if self.cache_dir.as_deref() != Some(Path::new("none")) {
            path(&mut self.cache_dir);
        }
        path(&mut self.record_profile);
        path(&mut self.log_file);
        if let Some(MetricsAddr::Unix(p)) = &mut self.metrics_addr
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        // Local paths only: URLs (`s3://`, `https://`, `file://`) stay.
        let local = |s: &mut String| {
            if !s.contains("://") && Path::new(s.as_str()).is_relative() {
                let joined = base.join(s.as_str());
                let mut out = joined.to_string_lossy().into_owned();
                // A directory source keeps its trailing slash.
                if s.ends_with('/') && !out.ends_with('/') {
                    out.push('/');
                }
                *s = out;
            }
        };
        for image in &mut self.images {
            local(&mut image.source);
            if let Some(sidecar) = &mut image.sidecar {
                local(sidecar);
            }
        }
    }

    /// Merges `cli` over the file it names (if any). `typed(id)` says
    /// whether the argument with clap id `id` (the field name) was given on
    /// the command line rather than defaulted or taken from the
    /// environment.
    pub fn resolve(cli: &Cli, typed: impl Fn(&str) -> bool) -> Result<MountSettings, ConfigError> {
        let file = match &cli.config {
            Some(path) => MountSettings::load(path)?,
            None => MountSettings::default(),
        };
        MountSettings::merge(cli, typed, file)
    }

    /// [`MountSettings::resolve`] with the file already parsed.
    pub fn merge(
        cli: &Cli,
        typed: impl Fn(&str) -> bool,
        file: MountSettings,
    ) -> Result<MountSettings, ConfigError> {
        let (sources, mountpoint) = (cli.sources(), cli.mountpoint());
        let images = if sources.is_empty() {
            if !cli.names.is_empty() || cli.sidecar.is_some() {
                return Err(ConfigError::Invalid(
                    "--name and --sidecar apply to SOURCE arguments; with images from a config \
                     file, set `name` and `sidecar` in their [[image]] tables"
                        .into(),
                ));
            }
            file.images
        } else {
            cli_images(cli, sources)?
        };
        let s = &cli.store;
        Ok(MountSettings {
            mountpoint: mountpoint.or(file.mountpoint),
            mem_cache: pick(typed("mem_cache"), cli.mem_cache, file.mem_cache),
            cache_dir: pick_opt(typed("cache_dir"), cli.cache_dir.clone(), file.cache_dir),
            disk_cache: pick(typed("disk_cache"), cli.disk_cache, file.disk_cache),
            hydrate: pick_opt(typed("hydrate"), cli.hydrate, file.hydrate),
            readahead: pick(typed("readahead"), cli.readahead, file.readahead),
            prefetch_budget: pick(
                typed("prefetch_budget"),
                cli.prefetch_budget,
                file.prefetch_budget,
            ),
            fetch_align: pick(typed("fetch_align"), cli.fetch_align, file.fetch_align),
            size: pick(typed("size_mode"), cli.size_mode, file.size),
            allow_other: pick(typed("allow_other"), cli.allow_other, file.allow_other),
            no_sidecar: pick(typed("no_sidecar"), cli.no_sidecar, file.no_sidecar),
            record_profile: pick_opt(
                typed("record_profile"),
                cli.record_profile.clone(),
                file.record_profile,
            ),
            log_file: pick_opt(typed("log_file"), cli.log_file.clone(), file.log_file),
            daemon: pick(typed("daemon"), cli.daemon, file.daemon),
            log_format: pick(typed("log_format"), cli.log_format, file.log_format),
            verbose: pick(typed("verbose"), cli.verbose, file.verbose),
            metrics_addr: pick_opt(
                typed("metrics_addr"),
                cli.metrics_addr.clone(),
                file.metrics_addr,
            ),
            timeout: pick(typed("timeout"), s.timeout, file.timeout),
            io_timeout: pick(typed("io_timeout"), s.io_timeout, file.io_timeout),
            retries: pick_opt(typed("retries"), s.retries, file.retries),
            max_requests: pick(typed("max_requests"), s.max_requests, file.max_requests),
            region: pick_opt(typed("region"), s.region.clone(), file.region),
            endpoint_url: pick_opt(
                typed("endpoint_url"),
                s.endpoint_url.clone(),
                file.endpoint_url,
            ),
            force_path_style: pick(
                typed("force_path_style"),
                s.force_path_style,
                file.force_path_style,
            ),
            profile: pick_opt(typed("profile"), s.profile.clone(), file.profile),
            no_sign_request: pick(
                typed("no_sign_request"),
                s.no_sign_request,
                file.no_sign_request,
            ),
            images,
        })
    }

    /// The settings as a config file (what `--print-config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// What [`crate::daemon::run_mount`] needs. Takes settings from
    /// [`MountSettings::merge`], which fills in every option that has a
    /// default; fails when the mountpoint or every image is missing.
    pub fn into_mount_config(self) -> Result<MountConfig, ConfigError> {
        fn required<T>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
            value.ok_or_else(|| ConfigError::Invalid(format!("`{key}` is not set")))
        }
        let mountpoint = self.mountpoint.ok_or_else(|| {
            ConfigError::Invalid(
                "no mountpoint: give MOUNTPOINT or `mountpoint` in the config file".into(),
            )
        })?;
        if self.images.is_empty() {
            return Err(ConfigError::Invalid(
                "no images: give SOURCE arguments or [[image]] tables in the config file".into(),
            ));
        }
        // Values a type cannot rule out, refused here rather than obeyed
        // strangely (a negative rate, a store nobody may ask).
        if let Some(rate) = self.hydrate
            && !(rate.is_finite() && rate >= 0.0)
        {
            return Err(ConfigError::Invalid(format!(
                "hydrate: the rate is in MB/s, 0 or more (0: unlimited), not {rate}"
            )));
        }
        if self.max_requests == Some(0) {
            return Err(ConfigError::Invalid(
                "max_requests: at least 1 request must be allowed in flight".into(),
            ));
        }
        if let Some(ByteSize(align)) = self.fetch_align
            && align != 0
            && !(align.is_power_of_two() && align >= 64 << 10)
        {
            return Err(ConfigError::Invalid(format!(
                "fetch_align: {align} bytes is not a power of two of at least 64KiB (e.g. 4MiB, a tier's slice size; 0 is off)"
            )));
        }
        let mount_store = ImageStore {
            region: self.region,
            endpoint_url: self.endpoint_url,
            force_path_style: self.force_path_style,
            profile: self.profile,
            no_sign_request: self.no_sign_request,
        };
        let store = mount_store.apply(&StoreConfig {
            timeout: required(self.timeout, "timeout")?.0,
            io_timeout: required(self.io_timeout, "io_timeout")?.0,
            retries: self.retries,
            max_requests: required(self.max_requests, "max_requests")?,
            ..StoreConfig::default()
        });
        let sources = self
            .images
            .into_iter()
            .map(|image| {
                let own = image.store();
                SourceSpec {
                    store: (own != ImageStore::default()).then(|| own.apply(&store)),
                    location: image.source,
                    name: image.name,
                    sidecar: image.sidecar,
                }
            })
            .collect();
        let disk_cache = match default_cache_dir(self.cache_dir) {
            Some(dir) => Some((dir, required(self.disk_cache, "disk_cache")?.0)),
            None => None,
        };
        Ok(MountConfig {
            metrics_addr: self.metrics_addr,
            sources,
            mountpoint,
            store,
            no_sidecar: required(self.no_sidecar, "no_sidecar")?,
            mem_cache: required(self.mem_cache, "mem_cache")?.0,
            disk_cache,
            hydrate: self.hydrate.map(|mb| (mb.max(0.0) * 1e6) as u64),
            readahead: required(self.readahead, "readahead")?,
            prefetch_budget: required(self.prefetch_budget, "prefetch_budget")?.0,
            fetch_align: required(self.fetch_align, "fetch_align")?.0,
            allow_other: required(self.allow_other, "allow_other")?,
            size_mode: required(self.size, "size")?,
            record_profile: self.record_profile,
            raw_passthrough: false,
            on_ready: None,
        })
    }
}

impl ImageEntry {
    fn store(&self) -> ImageStore {
        ImageStore {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.force_path_style,
            profile: self.profile.clone(),
            no_sign_request: self.no_sign_request,
        }
    }
}

/// The host cache directory: `cache_dir` (flag or file), else
/// `$ZVMOUNT_CACHE_DIR`, else /var/cache/zvmount for root (others must ask
/// for one); `none` (or an empty variable) means no cache.
fn default_cache_dir(chosen: Option<PathBuf>) -> Option<PathBuf> {
    const DEFAULT_FOR_ROOT: &str = "/var/cache/zvmount";
    let chosen = chosen
        .or_else(|| std::env::var_os("ZVMOUNT_CACHE_DIR").map(PathBuf::from))
        .or_else(|| {
            nix::unistd::geteuid()
                .is_root()
                .then(|| PathBuf::from(DEFAULT_FOR_ROOT))
        })?;
    (!chosen.as_os_str().is_empty() && chosen.as_os_str() != "none").then_some(chosen)
}

/// The command line's SOURCEs as image entries: `--name`s in order, the
/// one `--sidecar` for a single source.
fn cli_images(cli: &Cli, sources: &[String]) -> Result<Vec<ImageEntry>, ConfigError> {
    if cli.sidecar.is_some() && sources.len() > 1 {
        return Err(ConfigError::Invalid(format!(
            "--sidecar names the index of one image; it cannot be used with {} sources",
            sources.len()
        )));
    }
    if cli.names.len() > sources.len() {
        return Err(ConfigError::Invalid(format!(
            "{} --name given for {} sources",
            cli.names.len(),
            sources.len()
        )));
    }
    Ok(sources
        .iter()
        .enumerate()
        .map(|(i, source)| ImageEntry {
            source: source.clone(),
            name: cli.names.get(i).cloned(),
            sidecar: cli.sidecar.clone(),
            region: None,
            endpoint_url: None,
            force_path_style: None,
            profile: None,
            no_sign_request: None,
        })
        .collect())
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};

    /// Parses `args` as the binary does and merges them over `file`.
    fn resolve(args: &[&str], file: &str) -> Result<MountSettings, ConfigError> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("zvmount").chain(args.iter().copied()))
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let ids: Vec<String> = Cli::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let typed = |id: &str| {
            assert!(ids.iter().any(|k| k == id), "no argument with id {id:?}");
            matches.value_source(id) == Some(ValueSource::CommandLine)
        };
        let file = MountSettings::parse(file, Path::new("test.toml"))?;
        MountSettings::merge(&cli, typed, file)
    }

    const TWO_IMAGES: &str = r#"
mountpoint = "/run/zvmount/web"
cache_dir = "/var/cache/zvmount"
io_timeout = "10m"
mem_cache = "1GiB"
timeout = "45s"
endpoint_url = "http://127.0.0.1:9000"

[[image]]
source = "s3://images/web-2026.zvhd2"
name = "web.raw"

[[image]]
source = "https://cdn.example.com/db.zvhd2"
sidecar = "https://cdn.example.com/db.zvhd2.zvidx"
region = "eu-west-1"
force_path_style = true
"#;

    #[test]
    fn a_file_describes_a_whole_mount() {
        let settings = resolve(&["--config", "x.toml"], TWO_IMAGES).unwrap();
        let config = settings.into_mount_config().unwrap();
        assert_eq!(config.mountpoint, Path::new("/run/zvmount/web"));
        assert_eq!(config.mem_cache, 1 << 30);
        assert_eq!(
            config.disk_cache,
            Some((PathBuf::from("/var/cache/zvmount"), 10 << 30))
        );
        assert_eq!(config.store.timeout, Duration::from_secs(45));
        assert_eq!(config.store.io_timeout, Duration::from_secs(600));
        assert_eq!(
            config.store.endpoint_url.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(config.sources.len(), 2);
        let (web, db) = (&config.sources[0], &config.sources[1]);
        assert_eq!(web.location, "s3://images/web-2026.zvhd2");
        assert_eq!(web.name.as_deref(), Some("web.raw"));
        assert!(web.store.is_none(), "no settings of its own");
        let db_store = db.store.as_ref().expect("own store settings");
        assert_eq!(db_store.region.as_deref(), Some("eu-west-1"));
        assert!(db_store.force_path_style);
        // The mount-wide settings stay under the image's own.
        assert_eq!(
            db_store.endpoint_url.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(db_store.timeout, Duration::from_secs(45));
        assert_eq!(
            db.sidecar.as_deref(),
            Some("https://cdn.example.com/db.zvhd2.zvidx")
        );
        // Untouched options keep the flags' defaults.
        assert_eq!(config.readahead, 4);
        assert_eq!(config.prefetch_budget, 64 << 20);
    }

    #[test]
    fn typed_options_win_over_the_file_and_the_file_over_defaults() {
        let settings = resolve(
            &[
                "--config",
                "x.toml",
                "--mem-cache",
                "256MiB",
                "--readahead",
                "0",
            ],
            TWO_IMAGES,
        )
        .unwrap();
        assert_eq!(settings.mem_cache, Some(ByteSize(256 << 20)));
        assert_eq!(settings.readahead, Some(0));
        assert_eq!(
            settings.timeout,
            Some(HumanDuration(Duration::from_secs(45)))
        );
        assert_eq!(
            settings.io_timeout,
            Some(HumanDuration(Duration::from_secs(600)))
        );
        assert_eq!(settings.max_requests, Some(64), "the flag's default");
        assert_eq!(settings.retries, None, "no default: retry until io_timeout");
    }

    #[test]
    fn positionals_replace_the_files_images_and_mountpoint() {
        let settings = resolve(&["--config", "x.toml", "/mnt/other"], TWO_IMAGES).unwrap();
        assert_eq!(
            settings.mountpoint.as_deref(),
            Some(Path::new("/mnt/other"))
        );
        assert_eq!(settings.images.len(), 2, "one positional is the mountpoint");

        let settings = resolve(
            &["--config", "x.toml", "a.zvhd2", "--name", "a.raw", "/mnt/x"],
            TWO_IMAGES,
        )
        .unwrap();
        assert_eq!(settings.images.len(), 1);
        assert_eq!(settings.images[0].source, "a.zvhd2");
        assert_eq!(settings.images[0].name.as_deref(), Some("a.raw"));

        let err = resolve(&["--config", "x.toml", "--name", "a.raw"], TWO_IMAGES).unwrap_err();
        assert!(err.to_string().contains("[[image]]"), "{err}");
    }

    #[test]
    fn without_a_file_the_command_line_is_the_whole_config() {
        let settings = resolve(
            &[
                "a.zvhd2",
                "b.zvhd2",
                "--name",
                "x.raw",
                "--cache-dir",
                "none",
                "/mnt",
            ],
            "",
        )
        .unwrap();
        let config = settings.into_mount_config().unwrap();
        assert_eq!(config.sources.len(), 2);
        assert_eq!(config.sources[0].name.as_deref(), Some("x.raw"));
        assert_eq!(config.sources[1].name, None);
        assert_eq!(config.mem_cache, 512 << 20);
        assert!(config.disk_cache.is_none());

        for (flag, want) in [
            ("--max-requests=0", "max_requests"),
            ("--fetch-align=3KiB", "fetch_align"),
        ] {
            let err = resolve(&["a", flag, "--cache-dir", "none", "/mnt"], "")
                .unwrap()
                .into_mount_config()
                .unwrap_err();
            assert!(err.to_string().contains(want), "{flag}: {err}");
        }
        let ok = resolve(&["a", "--fetch-align=4MiB", "--hydrate=0", "/mnt"], "").unwrap();
        assert!(ok.into_mount_config().is_ok());
        // The flag takes what the file takes.
        let ok = resolve(&["a", "--hydrate=true", "/mnt"], "").unwrap();
        assert_eq!(ok.hydrate, Some(0.0));
        for bad in ["--hydrate=-1", "--hydrate=nan", "--hydrate=fast"] {
            let parsed = Cli::command().try_get_matches_from(["zvmount", "a", bad, "/mnt"]);
            assert!(parsed.is_err(), "{bad} accepted");
        }
        // In a file, the flag form reads as a bool too.
        for (text, want) in [
            ("hydrate = true", Some(0.0)),
            ("hydrate = false", None),
            ("hydrate = 25", Some(25.0)),
            ("hydrate = 2.5", Some(2.5)),
        ] {
            let s = resolve(&["--config", "x.toml", "a", "/mnt"], text).unwrap();
            assert_eq!(s.hydrate, want, "{text}");
        }
        let err = resolve(&["--config", "x.toml", "a", "/mnt"], "hydrate = \"fast\"").unwrap_err();
        assert!(err.to_string().contains("true, false or a rate"), "{err}");

        let err = resolve(&["a", "b", "--sidecar", "s", "/mnt"], "").unwrap_err();
        assert!(err.to_string().contains("--sidecar"), "{err}");
        let err = resolve(&["a", "--name", "x", "--name", "y", "/mnt"], "").unwrap_err();
        assert!(
            err.to_string().contains("2 --name given for 1 sources"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let text = "mountpoint = \"/mnt\"\n\nmem_cach = \"1GiB\"\n";
        let err = MountSettings::parse(text, Path::new("/etc/zvmount/web.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("/etc/zvmount/web.toml:3:1: "), "{msg}");
        assert!(msg.contains("mem_cach"), "{msg}");

        let text = "[[image]]\nsource = \"a.zvhd2\"\n  nmae = \"x.raw\"\n";
        let err = MountSettings::parse(text, Path::new("c.toml")).unwrap_err();
        match &err {
            ConfigError::Parse {
                line,
                column,
                message,
                ..
            } => {
                assert_eq!((*line, *column), (3, 3), "{err}");
                assert!(message.contains("nmae"), "{err}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_values_are_named_with_their_line() {
        let err = MountSettings::parse("\nmem_cache = \"12 parsecs\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml:2:"), "{err}");
        assert!(err.contains("12 parsecs"), "{err}");
        let err = MountSettings::parse("size = \"huge\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("orig"), "{err}");
        let err = MountSettings::parse("[[image]]\nname = \"x\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source"), "{err}");
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        let settings = resolve(&["--config", "x.toml", "--allow-other"], TWO_IMAGES).unwrap();
        let text = settings.to_toml();
        assert!(text.contains("mem_cache = \"1GiB\""), "{text}");
        assert!(text.contains("timeout = \"45s\""), "{text}");
        assert!(text.contains("[[image]]"), "{text}");
        let again = MountSettings::parse(&text, Path::new("printed.toml")).unwrap();
        assert_eq!(again, settings);
    }

    #[test]
    fn sizes_and_durations_print_exactly() {
        assert_eq!(ByteSize(512 << 20).to_string(), "512MiB");
        assert_eq!(ByteSize(10 << 30).to_string(), "10GiB");
        assert_eq!(ByteSize(1_000_000).to_string(), "1000000");
        assert_eq!(ByteSize(0).to_string(), "0");
        assert_eq!(HumanDuration(Duration::from_secs(30)).to_string(), "30s");
        assert_eq!(
            HumanDuration(Duration::from_millis(1500)).to_string(),
            "1500ms"
        );
        let s: MountSettings = toml::from_str("mem_cache = 4096\ntimeout = 2").unwrap();
        assert_eq!(s.mem_cache, Some(ByteSize(4096)));
        assert_eq!(s.timeout, Some(HumanDuration(Duration::from_secs(2))));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../packaging/example.toml");
        let settings = MountSettings::parse(text, Path::new("example.toml")).unwrap();
        assert_eq!(settings.images.len(), 2);
        assert_eq!(settings.allow_other, Some(true));
    }

    #[test]
    fn hydrate_rates_are_checked_where_they_are_written() {
        for bad in ["-5", "nan", "inf"] {
            let text = format!("mountpoint = \"/mnt\"\nhydrate = {bad}\n");
            let e = MountSettings::parse(&text, Path::new("web.toml")).unwrap_err();
            assert!(e.to_string().starts_with("web.toml:2:"), "{e}");
        }
        let s = MountSettings::parse("hydrate = true\n", Path::new("a.toml")).unwrap();
        assert_eq!(s.hydrate, Some(0.0));
        assert!(s.to_toml().contains("hydrate = true"), "{}", s.to_toml());
        let s = MountSettings::parse("hydrate = 12.5\n", Path::new("a.toml")).unwrap();
        assert!(s.to_toml().contains("hydrate = 12.5"), "{}", s.to_toml());
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.toml");
        std::fs::write(
            &file,
            "mountpoint = \"mnt\"\ncache_dir = \"/var/cache/zv\"\nlog_file = \"logs/zv.log\"\n\
             metrics_addr = \"unix:run/m.sock\"\n\
             [[image]]\nsource = \"images/web.zvhd2\"\nsidecar = \"idx/web.zvidx\"\n\
             [[image]]\nsource = \"s3://bucket/db.zvhd2\"\n\
             [[image]]\nsource = \"more/\"\n",
        )
        .unwrap();
        let s = MountSettings::load(&file).unwrap();
        let d = dir.path();
        let off = dir.path().join("off.toml");
        std::fs::write(&off, "cache_dir = \"none\"\n").unwrap();
        assert_eq!(
            MountSettings::load(&off).unwrap().cache_dir,
            Some(PathBuf::from("none")),
            "no cache, not a directory called none"
        );
        assert_eq!(s.mountpoint, Some(d.join("mnt")));
        assert_eq!(s.cache_dir, Some(PathBuf::from("/var/cache/zv")));
        assert_eq!(s.log_file, Some(d.join("logs/zv.log")));
        assert_eq!(
            s.metrics_addr,
            Some(MetricsAddr::Unix(d.join("run/m.sock")))
        );
        let at = |p: &str| d.join(p).to_string_lossy().into_owned();
        assert_eq!(s.images[0].source, at("images/web.zvhd2"));
        assert_eq!(
            s.images[0].sidecar.as_deref(),
            Some(at("idx/web.zvidx").as_str())
        );
        assert_eq!(s.images[1].source, "s3://bucket/db.zvhd2");
        assert_eq!(s.images[2].source, format!("{}/", at("more")));
    }

    #[test]
    fn line_columns_count_characters() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é = 1\nx", 7), (2, 1));
    }
}
