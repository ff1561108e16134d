//! `zvimg bench`: one module per benchmark — `convert` (throughput and size
//! against `zstd`), `store` (GET latency and throughput of a store), `read`
//! (fio-like reads of a mounted file), `boot` (a real guest booting from
//! each way of getting a disk), `fleet` (many hosts reading one boot set at
//! once, with and without a caching tier), `hydrate` (hydration and cold
//! reads against the link) — and `chart`, the PNG renderer they share.
//! The servers, mounts and guests they drive come from the test kit
//! (`zvtest`).

pub mod boot;
pub mod chart;
pub mod convert;
pub mod fleet;
pub mod hydrate;
pub mod passthrough;
pub mod read;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use zvtest::mount::MountBuilder;
use zvtest::s3::{ACCESS_KEY, SECRET_KEY};

/// The daemons a bench starts (`bench boot`, `bench hydrate`): where they
/// are, and what to pass every zvmount.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// The S3 server to run on 127.0.0.1 (cargo install s3s-fs@0.14.1 --features binary).
    #[arg(long, default_value = "s3s-fs")]
    pub s3s_fs: PathBuf,
    /// The zvmount binary (default: beside this zvimg, else on PATH).
    #[arg(long)]
    pub zvmount: Option<PathBuf>,
    /// Extra argument for every zvmount (repeat), e.g. --zvmount-arg=--readahead=8.
    #[arg(long = "zvmount-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub zvmount_args: Vec<String>,
}

impl DaemonArgs {
    /// The zvmount to run (`--zvmount`, else beside this zvimg, else from
    /// PATH), once it and `--s3s-fs` are known to be there.
    pub fn find_zvmount(&self) -> anyhow::Result<PathBuf> {
        let zvmount = match &self.zvmount {
            Some(p) => p.clone(),
            None => {
                let beside = std::env::current_exe()
                    .context("cannot find the zvimg executable")?
                    .with_file_name("zvmount");
                if beside.exists() {
                    beside
                } else {
                    PathBuf::from("zvmount")
                }
            }
        };
        if !zvtest::qemu::on_path(&zvmount) {
            bail!(
                "zvmount not found at {}: build it (cargo build --release) or pass --zvmount",
                zvmount.display()
            );
        }
        if !zvtest::qemu::on_path(&self.s3s_fs) {
            bail!(
                "{} not found: cargo install s3s-fs@0.14.1 --locked --features binary, or pass --s3s-fs",
                self.s3s_fs.display()
            );
        }
        Ok(zvmount)
    }

    /// A zvmount of one S3 image served as `disk.raw` on `mnt`, reaching the
    /// bench's S3 server through `proxy` (the caller adds its flags, the
    /// SOURCE and starts it): the test server's keys, path-style, `cache`
    /// as `--cache-dir` when given (before the user's `--zvmount-arg`s, so
    /// theirs win), and the user's `RUST_LOG` kept.
    pub fn proxied_mount(
        &self,
        zvmount: &Path,
        mnt: &Path,
        proxy: SocketAddr,
        cache: Option<&Path>,
    ) -> MountBuilder {
        let mut builder = MountBuilder::default()
            .binary(zvmount)
            .mountpoint(mnt)
            .check_on_drop(false)
            .env("AWS_ENDPOINT_URL", format!("http://{proxy}"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .args(["--force-path-style", "--name", "disk.raw"]);
        if let Some(cache) = cache {
            builder = builder.arg("--cache-dir").arg(cache);
        }
        builder = builder.args(&self.zvmount_args);
        if let Some(filter) = std::env::var_os("RUST_LOG") {
            builder = builder.env("RUST_LOG", filter);
        }
        builder
    }
}

/// Stops a bench's zvmount (SIGTERM, wait); an error naming its log if the
/// daemon fails or leaves the mount behind.
pub fn stop_mount(mount: zvtest::mount::Mounted) -> anyhow::Result<()> {
    let log = mount.stderr_path().to_owned();
    let status = mount.try_stop()?;
    if !status.success() {
        bail!("zvmount exited with {status}; see {}", log.display());
    }
    Ok(())
}
