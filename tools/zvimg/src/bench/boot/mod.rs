//! `zvimg bench boot`: how long a real guest takes to boot from a disk that
//! lives in object storage, per way of getting the disk there.
//!
//! Setups, for each image:
//! 1. `local`: a local raw file (the baseline);
//! 2. `download`: download the whole ZVHD2 object, decompress it to raw,
//!    then boot (what users do without zvmount);
//! 3. `cold`: a fresh `zvmount` of the object (no caches), then boot;
//! 4. `warm`: a second boot from the same daemon;
//! 5. `profiled`: a fresh daemon again, but the image's sidecar now holds
//!    the boot profile the `cold` daemon recorded (`--record-profile`), so
//!    the mount replays it (prefetches those blocks in order) while the
//!    guest boots;
//! 6. `hydrated`: the image hydrated on this host beforehand (`zvimg
//!    hydrate` into a host cache, its time shown apart), then a fresh
//!    daemon over that cache (new opens are served by FUSE passthrough).
//!
//! Each zvmount setup gets a host cache of its own (`--cache-dir` under the
//! scratch directory, unless `--zvmount-arg` names one), so `cold` is cold
//! whatever earlier runs left in the host's default cache.
//!
//! The store is an `s3s-fs` server on 127.0.0.1 that this bench starts,
//! reached through a [`ShapingProxy`] that adds first-byte latency and caps
//! bandwidth, so loopback behaves like object storage seen from a
//! hypervisor host. Every boot is QEMU from a qcow2 overlay over the raw
//! file, serial console to a log; the time to the guest's marker line is
//! what is measured. The test guest (`scripts/build-guest-image.sh`) also
//! prints a sha256 of what it read, which is checked. The other tools
//! (convert, push, pull) run as child processes of this very binary.
//!
//! The server, the proxy, the mounts and the QEMU runs are the test kit's
//! (`zvtest`), the same ones the end-to-end tests use. This module holds
//! the flags and the run; `setups` drives one image through the six
//! setups; `report` turns the measurements into the table, the JSON and
//! the chart.

mod report;
mod setups;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use zvstore::source::parse_duration;
use zvtest::proxy::{Shaping, ShapingProxy};
use zvtest::qemu::{self, Accel, GuestImage, QemuOptions};
use zvtest::s3::{S3Options, S3Server};

use report::{Report, compute_targets, draw_chart, render_table};
use setups::Bench;

/// Bucket the bench creates in its own S3 server.
const BUCKET: &str = "zvbench";

/// Flags of `zvimg bench boot`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A directory made by scripts/build-guest-image.sh (guest.raw and the
    /// sha256 the guest must print). Default: build (or reuse) the test
    /// image with --build-script.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub guest_dir: Option<PathBuf>,
    /// Your own bootable raw disk instead of the test image; it must print
    /// --marker on the serial console (ttyS0) when booted and then power off.
    #[arg(long, value_name = "RAW")]
    pub image: Option<PathBuf>,
    /// Text on the serial console that marks the end of boot.
    #[arg(long, default_value = qemu::MARKER)]
    pub marker: String,
    /// First-byte latency the proxy adds to every store request.
    #[arg(long, default_value = "15ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Bandwidth of the proxy each way, e.g. 100MB/s, 1GiB/s; 0 = unlimited.
    #[arg(long, default_value = "100MB/s", value_parser = parse_rate)]
    pub bandwidth: u64,
    /// Sizes (MiB of incompressible data added to the test image) for the
    /// "image grows" comparison; `--data-mib ''` skips it.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,2048,4096",
        value_name = "MIB,..."
    )]
    pub data_mib: Vec<String>,
    /// Boot with KVM (`-accel kvm -cpu host`) instead of TCG; only on hosts
    /// where KVM is real (nested /dev/kvm on cloud VMs crawls).
    #[arg(long)]
    pub kvm: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory_mib: u32,
    /// Longest one boot may take.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the results as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Where to write the PNG chart.
    #[arg(long, default_value = "boot-bench.png")]
    pub chart: PathBuf,
    /// Scratch directory (default: a fresh one under $TMPDIR, removed after).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The test-image build script (for the default image and --data-mib).
    #[arg(long, default_value = "scripts/build-guest-image.sh")]
    pub build_script: PathBuf,
    /// The daemons: s3s-fs, zvmount and its extra arguments.
    #[command(flatten)]
    pub daemons: super::DaemonArgs,
}

/// Parses a rate like `100MB/s` (the `/s` is optional) into bytes per second.
pub(crate) fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(t);
    zvmount::util::parse_size(t).map_err(|e| format!("invalid bandwidth {text:?}: {e}"))
}

/// One way of getting a disk to boot from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Setup {
    /// The raw disk on local storage: the floor every other setup is measured against.
    Local,
    /// Download the whole image, decompress it to raw, then boot from the local copy.
    Download,
    /// Boot through a fresh mount with empty caches.
    Cold,
    /// Boot again through the cold setup's daemon, its caches holding the first boot's blocks.
    Warm,
    /// Boot through a cold mount replaying a boot profile recorded earlier.
    Profiled,
    /// Boot through a new mount of an image `zvimg hydrate` put whole in a fresh host cache first.
    Hydrated,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Local => "local raw",
            Setup::Download => "download+boot",
            Setup::Cold => "zvmount cold",
            Setup::Warm => "zvmount warm",
            Setup::Profiled => "zvmount profiled",
            Setup::Hydrated => "zvmount hydrated",
        }
    }
}

/// Runs `zvimg bench boot`: every setup over each image size, then the
/// table, the JSON and the chart; an error if a guest reads wrong bytes
/// or does not boot.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.marker.is_empty() {
        bail!("--marker must not be empty");
    }
    let growth: Vec<u64> = args
        .data_mib
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .with_context(|| format!("--data-mib: {s:?} is not a number of MiB"))
        })
        .collect::<anyhow::Result<_>>()?;
    let tools = Tools::find(&args)?;
    let scratch = match &args.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Scratch {
                path: d.clone(),
                remove: false,
            }
        }
        None => {
            let base =
                std::env::temp_dir().join(format!("zvimg-bench-boot-{}", std::process::id()));
            std::fs::create_dir_all(&base)
                .with_context(|| format!("creating {}", base.display()))?;
            Scratch {
                path: base,
                remove: true,
            }
        }
    };
    let work = scratch.path.clone();

    // The images: the base one, then the growing ones (test image only);
    // the first one is the base of the table.
    let mut images: Vec<GuestImage> = Vec::new();
    match (&args.image, &args.guest_dir) {
        (Some(raw), _) => {
            if !growth.is_empty() {
                eprintln!("note: --data-mib applies to the test image only; skipped for --image");
            }
            images.push(GuestImage {
                raw: raw.clone(),
                expected_sha: None,
                data_mib: 0,
            });
        }
        (None, Some(dir)) => images.push(GuestImage::from_dir(dir)?),
        (None, None) => images.push(GuestImage::from_dir(&qemu::build_guest(
            &args.build_script,
            None,
        )?)?),
    }
    if args.image.is_none() {
        for &mib in &growth {
            if images.iter().all(|g| g.data_mib != mib) {
                images.push(GuestImage::from_dir(&qemu::build_guest(
                    &args.build_script,
                    Some(mib),
                )?)?);
            }
        }
    }

    let s3 = S3Server::launch(S3Options {
        binary: tools.s3s_fs.clone(),
        data_dir: Some(work.join("s3")),
    })?;
    // s3s-fs serves each top-level folder as a bucket.
    std::fs::create_dir_all(s3.data_dir().join(BUCKET))
        .with_context(|| format!("creating bucket {BUCKET} in {}", s3.data_dir().display()))?;
    let proxy = ShapingProxy::start(
        s3.addr(),
        Shaping {
            latency: args.latency,
            bytes_per_sec: args.bandwidth,
        },
    )
    .context("starting the shaping proxy")?;
    let qemu = QemuOptions {
        accel: if args.kvm { Accel::Kvm } else { Accel::Tcg },
        memory_mib: args.memory_mib,
        timeout: args.timeout,
        marker: args.marker.clone(),
    };
    let bench = Bench {
        args: &args,
        tools: &tools,
        qemu: &qemu,
        work: &work,
        s3: &s3,
        proxy: &proxy,
    };

    let mut report = Report {
        latency_ms: args.latency.as_secs_f64() * 1e3,
        bandwidth_bytes_per_s: args.bandwidth,
        accel: qemu.accel.name(),
        images: Vec::new(),
        results: Vec::new(),
        targets: BTreeMap::new(),
        timings: BTreeMap::new(),
    };
    for guest in &images {
        bench.image(guest, &mut report)?;
    }
    compute_targets(&mut report);

    let table = render_table(&report);
    if args.json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{table}");
    }
    draw_chart(&args.chart, &report)?;
    eprintln!("chart: {}", args.chart.display());
    Ok(())
}

/// The programs the bench drives.
struct Tools {
    zvimg: PathBuf,
    zvmount: PathBuf,
    s3s_fs: PathBuf,
}

impl Tools {
    fn find(args: &Args) -> anyhow::Result<Tools> {
        let zvimg = std::env::current_exe().context("cannot find the zvimg executable")?;
        qemu::require_tools()?;
        let zvmount = args.daemons.find_zvmount()?;
        Ok(Tools {
            zvimg,
            zvmount,
            s3s_fs: args.daemons.s3s_fs.clone(),
        })
    }
}

/// A scratch directory, removed on drop when the bench made it.
struct Scratch {
    path: PathBuf,
    remove: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("100MB/s").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1GiB/s").unwrap(), 1 << 30);
        assert_eq!(parse_rate("0").unwrap(), 0);
        assert!(parse_rate("fast").is_err());
    }
}
