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
//!    guest boots.
//!
//! The store is an `s3s-fs` server on 127.0.0.1 that this bench starts,
//! reached through a [`ShapingProxy`] that adds first-byte latency and caps
//! bandwidth, so loopback behaves like object storage seen from a
//! hypervisor host. Every boot is QEMU from a qcow2 overlay over the raw
//! file, serial console to a log; the time to the guest's marker line is
//! what is measured. The test guest (`scripts/build-guest-image.sh`) also
//! prints a sha256 of what it read, which is checked. The other tools
//! (convert, push, pull) run as child processes of this very binary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use zvmount::metrics::MetricsSnapshot;
use zvstore::source::parse_duration;

use crate::chart::{self, Bars, Lines, Panel, Series};
use crate::proxy::{ProxyStats, RequestTiming, Shaping, ShapingProxy};

/// Bucket the bench creates in its own S3 server.
const BUCKET: &str = "zvbench";
/// The test guest's marker (see `scripts/guest/rootfs-init`).
const DEFAULT_MARKER: &str = "ZVMOUNT-BOOT-OK";
/// Credentials of the bench's private S3 server.
const S3_KEY: &str = "zvbench";

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
    #[arg(long, default_value = DEFAULT_MARKER)]
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
    /// The S3 server to run on 127.0.0.1 (cargo install s3s-fs@0.14.1 --features binary).
    #[arg(long, default_value = "s3s-fs")]
    pub s3s_fs: PathBuf,
    /// The zvmount binary (default: beside this zvimg, else on PATH).
    #[arg(long)]
    pub zvmount: Option<PathBuf>,
    /// Extra argument for zvmount (repeat), e.g. --zvmount-arg=--readahead=8.
    #[arg(long = "zvmount-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub zvmount_args: Vec<String>,
}

/// Parses a rate like `100MB/s` (the `/s` is optional) into bytes per second.
fn parse_rate(text: &str) -> Result<u64, String> {
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
    Local,
    Download,
    Cold,
    Warm,
    Profiled,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Local => "local raw",
            Setup::Download => "download+boot",
            Setup::Cold => "zvmount cold",
            Setup::Warm => "zvmount warm",
            Setup::Profiled => "zvmount profiled",
        }
    }
}

/// Latency figures of a set of store requests, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The measurement of one boot.
#[derive(Clone, Debug, Serialize)]
pub struct BootResult {
    /// MiB of incompressible data in the image (0 for the plain test image
    /// or a user's image).
    pub data_mib: u64,
    pub setup: Setup,
    /// Time to the marker, counted from the start of the setup (download,
    /// mount) for the setups that have one.
    pub seconds: f64,
    /// Parts of `seconds`.
    pub download_s: f64,
    pub decompress_s: f64,
    pub mount_s: f64,
    pub boot_s: f64,
    /// Bytes the store sent (daemon counter for zvmount, proxy for download).
    pub bytes_fetched: u64,
    /// GETs the store answered.
    pub gets: u64,
    /// What the shaping proxy saw, as a cross-check of the daemon's counters.
    pub proxy_bytes: u64,
    pub proxy_requests: u64,
    /// Latency of the store requests of this setup (request start to last byte).
    pub get_latency: LatencySummary,
    /// The daemon's counters for this boot (zvmount setups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<MetricsSnapshot>,
}

/// An image under test, as stored.
#[derive(Clone, Debug, Serialize)]
pub struct ImageFacts {
    pub data_mib: u64,
    pub disk_bytes: u64,
    pub stored_bytes: u64,
    pub convert_s: f64,
}

/// Everything one run measured, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub latency_ms: f64,
    pub bandwidth_bytes_per_s: u64,
    pub accel: &'static str,
    pub images: Vec<ImageFacts>,
    pub results: Vec<BootResult>,
    /// The ratios the project targets, from this run.
    pub targets: BTreeMap<String, f64>,
    #[serde(skip)]
    pub timings: BTreeMap<(u64, Setup), Vec<RequestTiming>>,
}

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

    // The images: the base one, then the growing ones (test image only).
    // (MiB of unread data, guest); the first one is the base of the table.
    let mut images: Vec<(u64, Guest)> = Vec::new();
    match (&args.image, &args.guest_dir) {
        (Some(raw), _) => {
            if !growth.is_empty() {
                eprintln!("note: --data-mib applies to the test image only; skipped for --image");
            }
            images.push((
                0,
                Guest {
                    raw: raw.clone(),
                    expected_sha: None,
                },
            ));
        }
        (None, Some(dir)) => images.push(Guest::from_dir(dir)?),
        (None, None) => images.push(Guest::from_dir(&build_guest(&args.build_script, None)?)?),
    }
    if args.image.is_none() {
        for &mib in &growth {
            if images.iter().all(|(m, _)| *m != mib) {
                images.push(Guest::from_dir(&build_guest(
                    &args.build_script,
                    Some(mib),
                )?)?);
            }
        }
    }

    let s3 = S3Server::start(&tools.s3s_fs, &work.join("s3"))?;
    let proxy = ShapingProxy::start(
        s3.addr,
        Shaping {
            latency: args.latency,
            bytes_per_sec: args.bandwidth,
        },
    )
    .context("starting the shaping proxy")?;
    let bench = Bench {
        args: &args,
        tools: &tools,
        work: &work,
        s3: &s3,
        proxy: &proxy,
    };

    let mut report = Report {
        latency_ms: args.latency.as_secs_f64() * 1e3,
        bandwidth_bytes_per_s: args.bandwidth,
        accel: if args.kvm { "kvm" } else { "tcg" },
        images: Vec::new(),
        results: Vec::new(),
        targets: BTreeMap::new(),
        timings: BTreeMap::new(),
    };
    for (mib, guest) in &images {
        bench.image(*mib, guest, &mut report)?;
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
        let zvmount = match &args.zvmount {
            Some(p) => p.clone(),
            None => {
                let beside = zvimg.with_file_name("zvmount");
                if beside.exists() {
                    beside
                } else {
                    PathBuf::from("zvmount")
                }
            }
        };
        for (tool, hint) in [
            (
                "qemu-system-x86_64",
                "apt-get install qemu-system-x86 (scripts/install-deps.sh)",
            ),
            (
                "qemu-img",
                "apt-get install qemu-utils (scripts/install-deps.sh)",
            ),
            ("timeout", "coreutils"),
        ] {
            if !on_path(Path::new(tool)) {
                bail!("{tool} not found: {hint}");
            }
        }
        if !on_path(&zvmount) {
            bail!(
                "zvmount not found at {}: build it (cargo build --release) or pass --zvmount",
                zvmount.display()
            );
        }
        if !on_path(&args.s3s_fs) {
            bail!(
                "{} not found: cargo install s3s-fs@0.14.1 --locked --features binary, or pass --s3s-fs",
                args.s3s_fs.display()
            );
        }
        Ok(Tools {
            zvimg,
            zvmount,
            s3s_fs: args.s3s_fs.clone(),
        })
    }
}

fn on_path(p: &Path) -> bool {
    if p.components().count() > 1 {
        return p.is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(p).is_file()))
        .unwrap_or(false)
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

/// A bootable raw disk and, for the test image, the checksum it must print.
struct Guest {
    raw: PathBuf,
    expected_sha: Option<String>,
}

impl Guest {
    /// The guest in a build-guest-image.sh output, and its MiB of unread data.
    fn from_dir(dir: &Path) -> anyhow::Result<(u64, Guest)> {
        let raw = dir.join("guest.raw");
        let expected = dir.join("guest.expected");
        let sha = std::fs::read_to_string(&expected).with_context(|| {
            format!(
                "{}: not a build-guest-image.sh output (no guest.expected)",
                dir.display()
            )
        })?;
        if !raw.is_file() {
            bail!("{}: no guest.raw", dir.display());
        }
        let data_mib = match std::fs::read_to_string(dir.join("guest.data-mib")) {
            Ok(text) => text
                .trim()
                .parse()
                .with_context(|| format!("{}: bad guest.data-mib", dir.display()))?,
            Err(_) => 0,
        };
        Ok((
            data_mib,
            Guest {
                raw,
                expected_sha: Some(sha.trim().to_string()),
            },
        ))
    }
}

/// Runs the build script (which caches) and returns the directory it prints.
fn build_guest(script: &Path, data_mib: Option<u64>) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(script);
    if let Some(mib) = data_mib {
        cmd.args(["--data-mib", &mib.to_string()]);
    }
    eprintln!("building (or reusing) the test guest: {cmd:?}");
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| {
        format!(
            "cannot run {} (run from the repository root or pass --build-script)",
            script.display()
        )
    })?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or("").trim();
    if dir.is_empty() {
        bail!("{} printed no output directory", script.display());
    }
    Ok(PathBuf::from(dir))
}

/// A private s3s-fs on a free port of 127.0.0.1, stopped on drop.
struct S3Server {
    child: Child,
    addr: SocketAddr,
}

impl S3Server {
    fn start(binary: &Path, data: &Path) -> anyhow::Result<S3Server> {
        std::fs::create_dir_all(data.join(BUCKET))
            .with_context(|| format!("creating {}", data.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(data.with_extension("log"))?;
        let child = Command::new(binary)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                S3_KEY,
                "--secret-key",
                S3_KEY,
            ])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = S3Server { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "{} exited at start ({status}); see {}",
                    binary.display(),
                    data.with_extension("log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within 20s", binary.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (and reaped) on drop unless it was waited for.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Bench<'a> {
    args: &'a Args,
    tools: &'a Tools,
    work: &'a Path,
    s3: &'a S3Server,
    proxy: &'a ShapingProxy,
}

/// Bytes and requests the proxy saw in one phase, and their timings.
struct ProxyPhase {
    stats: ProxyStats,
    timings: Vec<RequestTiming>,
}

impl Bench<'_> {
    /// A zvimg/zvmount command with the S3 settings, talking to `endpoint`.
    fn s3_command(&self, program: &Path, endpoint: SocketAddr) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("AWS_ENDPOINT_URL", format!("http://{endpoint}"))
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_KEY)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null());
        cmd
    }

    fn zvimg(&self, endpoint: SocketAddr, args: &[&str], what: &str) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let out = self
            .s3_command(&self.tools.zvimg, endpoint)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running zvimg {what}"))?;
        if !out.status.success() {
            bail!(
                "zvimg {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(t0.elapsed())
    }

    fn measure<T>(&self, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, ProxyPhase)> {
        self.proxy.reset();
        let value = f()?;
        // Connections still open keep their last exchange; a moment lets
        // clients that just finished close theirs.
        std::thread::sleep(Duration::from_millis(50));
        Ok((
            value,
            ProxyPhase {
                stats: self.proxy.stats(),
                timings: self.proxy.timings(),
            },
        ))
    }

    /// Converts, uploads and boots one image in every setup.
    fn image(&self, data_mib: u64, guest: &Guest, report: &mut Report) -> anyhow::Result<()> {
        let dir = self.work.join(format!("img-{data_mib}"));
        std::fs::create_dir_all(&dir)?;
        let key = format!("guest-{data_mib}.zvhd2");
        let zvhd2 = dir.join(&key);
        let raw = guest.raw.to_string_lossy().into_owned();
        let zv = zvhd2.to_string_lossy().into_owned();
        eprintln!("[{data_mib} MiB] converting {raw}");
        let convert = self.zvimg(
            self.s3.addr,
            &["convert", "--sidecar", &raw, &zv],
            "convert",
        )?;
        eprintln!("[{data_mib} MiB] uploading to the local S3 server");
        let url = format!("s3://{BUCKET}/{key}");
        self.zvimg(
            self.s3.addr,
            &["push", "--force-path-style", &zv, &url],
            "push",
        )?;
        let disk_bytes = std::fs::metadata(&guest.raw)?.len();
        let stored_bytes = std::fs::metadata(&zvhd2)?.len();
        // The local copy stays until the profiled setup has indexed it
        // (removed with `dir` at the end).
        report.images.push(ImageFacts {
            data_mib,
            disk_bytes,
            stored_bytes,
            convert_s: convert.as_secs_f64(),
        });

        let push =
            |setup: Setup, r: BootResult, timings: Vec<RequestTiming>, report: &mut Report| {
                eprintln!(
                    "[{data_mib} MiB] {:<16} {:>7.2}s  fetched {:>9}  GETs {}",
                    setup.name(),
                    r.seconds,
                    crate::convert::human(r.bytes_fetched),
                    r.gets
                );
                report.timings.insert((data_mib, setup), timings);
                report.results.push(r);
            };

        // 1. Local raw file.
        let boot = self.boot(&guest.raw, guest, &dir.join("local"))?;
        push(
            Setup::Local,
            BootResult::new(data_mib, Setup::Local, boot.as_secs_f64()),
            Vec::new(),
            report,
        );

        // 2. Download the whole object, decompress, boot.
        let dl = dir.join("download.zvhd2");
        let dl_raw = dir.join("download.raw");
        let ((download, decompress, boot), phase) = self.measure(|| {
            let d = self.zvimg(
                self.proxy.addr(),
                &["pull", "--force-path-style", &url, &dl.to_string_lossy()],
                "pull",
            )?;
            let c = self.zvimg(
                self.s3.addr,
                &["convert", &dl.to_string_lossy(), &dl_raw.to_string_lossy()],
                "convert",
            )?;
            let b = self.boot(&dl_raw, guest, &dir.join("download"))?;
            Ok((d, c, b))
        })?;
        let _ = std::fs::remove_file(&dl);
        let _ = std::fs::remove_file(&dl_raw);
        let _ = std::fs::remove_file(crate::default_sidecar_path(&dl));
        let mut r = BootResult::new(
            data_mib,
            Setup::Download,
            (download + decompress + boot).as_secs_f64(),
        );
        r.download_s = download.as_secs_f64();
        r.decompress_s = decompress.as_secs_f64();
        r.boot_s = boot.as_secs_f64();
        r.bytes_fetched = phase.stats.bytes_down;
        r.gets = phase.stats.requests;
        r.set_proxy(&phase);
        push(Setup::Download, r, phase.timings, report);

        // 3. and 4. zvmount cold, then warm from the same daemon; the cold
        // daemon also records the boot profile for setup 5.
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let profile = dir.join("boot.profile");
        let profile_arg = profile.to_string_lossy().into_owned();
        let disk = mnt.join("disk.raw");
        let (mount, r, timings) = self.fresh_boot(
            data_mib,
            Setup::Cold,
            &url,
            &mnt,
            &["--record-profile", &profile_arg],
            guest,
            &dir.join("cold"),
        )?;
        let Some(cold_stats) = r.daemon.clone() else {
            bail!("no daemon counters for the cold boot");
        };
        push(Setup::Cold, r, timings, report);

        let (boot, phase) = self.measure(|| self.boot(&disk, guest, &dir.join("warm")))?;
        let warm_stats = mount.stats()?;
        let mut r = BootResult::new(data_mib, Setup::Warm, boot.as_secs_f64());
        r.boot_s = boot.as_secs_f64();
        r.bytes_fetched = warm_stats
            .store_bytes
            .saturating_sub(cold_stats.store_bytes);
        r.gets = warm_stats
            .store_requests
            .saturating_sub(cold_stats.store_requests);
        r.set_proxy(&phase);
        r.daemon = Some(warm_stats);
        push(Setup::Warm, r, phase.timings, report);
        // The profile is written on unmount, before the daemon exits.
        mount.stop()?;

        // 5. A sidecar with the recorded profile replaces the plain one in
        // the store; a fresh daemon replays it.
        let blocks = crate::inspect::read_profile(&profile)
            .context("the cold daemon's --record-profile output")?;
        if blocks.is_empty() {
            bail!(
                "the cold daemon recorded an empty boot profile in {}",
                profile.display()
            );
        }
        let profiled_sidecar = dir.join("profiled.zvidx");
        let sc = profiled_sidecar.to_string_lossy().into_owned();
        eprintln!(
            "[{data_mib} MiB] indexing with a boot profile of {} blocks",
            blocks.len()
        );
        self.zvimg(
            self.s3.addr,
            &["index", "--boot-profile", &profile_arg, "-o", &sc, &zv],
            "index",
        )?;
        // `push` stores any file under the key it is given; this is the
        // key `push` gave the image's own sidecar above.
        let sc_url = format!("{url}{}", zvmount::image::open::SIDECAR_SUFFIX);
        self.zvimg(
            self.s3.addr,
            &["push", "--no-sidecar", "--force-path-style", &sc, &sc_url],
            "push (sidecar)",
        )?;
        let (mount, r, timings) = self.fresh_boot(
            data_mib,
            Setup::Profiled,
            &url,
            &mnt,
            &[],
            guest,
            &dir.join("profiled"),
        )?;
        push(Setup::Profiled, r, timings, report);
        mount.stop()?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Mounts `url` on `mnt` with a fresh daemon (`extra` added to its
    /// arguments) and boots from it: the time counts from the daemon's
    /// start, the fetch figures are the daemon's counters. Returns the
    /// still-running mount.
    #[allow(clippy::too_many_arguments)]
    fn fresh_boot(
        &self,
        data_mib: u64,
        setup: Setup,
        url: &str,
        mnt: &Path,
        extra: &[&str],
        guest: &Guest,
        stem: &Path,
    ) -> anyhow::Result<(Mount, BootResult, Vec<RequestTiming>)> {
        let t0 = Instant::now();
        let (mount, phase_mount) = self.measure(|| self.mount(url, mnt, extra))?;
        let mount_s = t0.elapsed();
        let disk = mnt.join("disk.raw");
        let (boot, phase_boot) = self.measure(|| self.boot(&disk, guest, stem))?;
        let stats = mount.stats()?;
        let mut r = BootResult::new(data_mib, setup, (mount_s + boot).as_secs_f64());
        r.mount_s = mount_s.as_secs_f64();
        r.boot_s = boot.as_secs_f64();
        r.bytes_fetched = stats.store_bytes;
        r.gets = stats.store_requests;
        let phase = ProxyPhase {
            stats: ProxyStats {
                connections: phase_mount.stats.connections + phase_boot.stats.connections,
                requests: phase_mount.stats.requests + phase_boot.stats.requests,
                bytes_up: phase_mount.stats.bytes_up + phase_boot.stats.bytes_up,
                bytes_down: phase_mount.stats.bytes_down + phase_boot.stats.bytes_down,
            },
            timings: phase_mount
                .timings
                .into_iter()
                .chain(phase_boot.timings)
                .collect(),
        };
        r.set_proxy(&phase);
        r.daemon = Some(stats);
        Ok((mount, r, phase.timings))
    }

    /// Starts zvmount on `mnt` through the proxy and waits for the disk file.
    fn mount(&self, url: &str, mnt: &Path, extra: &[&str]) -> anyhow::Result<Mount> {
        let log = std::fs::File::create(mnt.with_extension("log"))?;
        let child = self
            .s3_command(&self.tools.zvmount, self.proxy.addr())
            .args(["--force-path-style", "--name", "disk.raw"])
            // Cold means cold: no host cache unless a setup asks for one.
            .env("ZVMOUNT_CACHE_DIR", "none")
            .args(&self.args.zvmount_args)
            .args(extra)
            .arg(url)
            .arg(mnt)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.tools.zvmount.display()))?;
        let mut m = Mount {
            child: Some(child),
            dir: mnt.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let disk = mnt.join("disk.raw");
        loop {
            if let Some(status) = m.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                m.child = None;
                bail!(
                    "zvmount exited before mounting ({status}); see {}",
                    mnt.with_extension("log").display()
                );
            }
            if is_mountpoint(mnt) && disk.exists() {
                return Ok(m);
            }
            if Instant::now() > deadline {
                bail!(
                    "zvmount did not mount within 60s; see {}",
                    mnt.with_extension("log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Boots `disk` through a fresh qcow2 overlay; returns the time from
    /// QEMU's start to the marker (and checks the guest's checksum).
    fn boot(&self, disk: &Path, guest: &Guest, stem: &Path) -> anyhow::Result<Duration> {
        let overlay = stem.with_extension("qcow2");
        let log = stem.with_extension("log");
        let _ = std::fs::remove_file(&overlay);
        let _ = std::fs::remove_file(&log);
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(disk)
            .arg(&overlay)
            .stdin(Stdio::null())
            .status()
            .context("running qemu-img")?;
        if !status.success() {
            bail!("qemu-img create over {} failed ({status})", disk.display());
        }
        let outcome = run_qemu(&overlay, &log, self.args, &self.args.marker);
        let _ = std::fs::remove_file(&overlay);
        let (elapsed, line) = outcome?;
        if let Some(want) = &guest.expected_sha {
            let got = line.split_whitespace().nth(1).unwrap_or("");
            if got != want {
                bail!(
                    "guest booted from {} read wrong bytes: printed sha256 {got:?}, expected {want}",
                    disk.display()
                );
            }
        }
        Ok(elapsed)
    }
}

/// Runs QEMU on `overlay` until it powers off; returns the time to the first
/// serial line holding `marker`, and that line.
fn run_qemu(
    overlay: &Path,
    log: &Path,
    args: &Args,
    marker: &str,
) -> anyhow::Result<(Duration, String)> {
    let secs = args.timeout.as_secs().max(1).to_string();
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", &secs, "qemu-system-x86_64"]);
    if args.kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg"]);
    }
    cmd.args([
        "-m",
        &args.memory_mib.to_string(),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
    ])
    .args(["-display", "none", "-no-reboot", "-serial"])
    .arg(format!("file:{}", log.display()))
    .arg("-drive")
    .arg(format!("file={},format=qcow2,if=virtio", overlay.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = Reaped(Some(cmd.spawn().context("starting qemu-system-x86_64")?));
    let deadline = t0 + args.timeout;
    let mut found: Option<(Duration, String)> = None;
    loop {
        if found.is_none() {
            found = find_marker(log, marker).map(|line| (t0.elapsed(), line));
        }
        let c = child.0.as_mut().expect("child is held until reaped");
        if let Some(status) = c.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            child.0 = None;
            if found.is_none() {
                // The marker may have been written just before the exit.
                found = find_marker(log, marker).map(|line| (t0.elapsed(), line));
            }
            return match found {
                Some(f) if status.success() => Ok(f),
                Some(_) => bail!(
                    "qemu exited with {status} after the marker: {}",
                    stderr.trim()
                ),
                None => bail!(
                    "guest did not print {marker:?} (qemu {status}; {}); serial log {} ends:\n{}",
                    stderr.trim(),
                    log.display(),
                    tail(log, 15)
                ),
            };
        }
        if Instant::now() > deadline {
            bail!(
                "guest did not boot within {:?}; serial log {} ends:\n{}",
                args.timeout,
                log.display(),
                tail(log, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(if found.is_some() { 50 } else { 10 }));
    }
}

/// The first complete line of `log` that contains `marker`, from the
/// marker on. A line still being written (no newline yet) does not count:
/// QEMU may be halfway through the checksum after the marker.
fn find_marker(log: &Path, marker: &str) -> Option<String> {
    let bytes = std::fs::read(log).ok()?;
    let complete = &bytes[..bytes.iter().rposition(|&b| b == b'\n')? + 1];
    String::from_utf8_lossy(complete)
        .lines()
        .find_map(|l| l.find(marker).map(|at| l[at..].trim_end().to_string()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn is_mountpoint(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    zvmount::daemon::mounted_fs_type(&dir).is_some()
}

/// A running zvmount, stopped (SIGTERM, then a lazy unmount) on drop.
struct Mount {
    child: Option<Child>,
    dir: PathBuf,
}

impl Mount {
    fn stats(&self) -> anyhow::Result<MetricsSnapshot> {
        let path = self.dir.join(".zvmount-stats.json");
        let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&raw).with_context(|| format!("parsing {}", path.display()))
    }

    /// SIGTERM and wait; an error if the daemon fails or leaves the mount.
    fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("zvmount had already exited")
        };
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("zvmount did not exit within 30s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!(
                "zvmount exited with {status}; see {}",
                self.dir.with_extension("log").display()
            );
        }
        if is_mountpoint(&self.dir) {
            bail!("zvmount exited but {} is still mounted", self.dir.display());
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mountpoint(&self.dir) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.dir)
                .status();
        }
    }
}

impl BootResult {
    fn new(data_mib: u64, setup: Setup, seconds: f64) -> BootResult {
        BootResult {
            data_mib,
            setup,
            seconds,
            download_s: 0.0,
            decompress_s: 0.0,
            mount_s: 0.0,
            boot_s: seconds,
            bytes_fetched: 0,
            gets: 0,
            proxy_bytes: 0,
            proxy_requests: 0,
            get_latency: LatencySummary::default(),
            daemon: None,
        }
    }

    fn set_proxy(&mut self, phase: &ProxyPhase) {
        self.proxy_bytes = phase.stats.bytes_down;
        self.proxy_requests = phase.stats.requests;
        self.get_latency = summarize(&phase.timings);
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Percentiles of request latencies (nearest rank).
fn summarize(timings: &[RequestTiming]) -> LatencySummary {
    let mut ms: Vec<f64> = timings.iter().map(|t| millis(t.total)).collect();
    if ms.is_empty() {
        return LatencySummary::default();
    }
    ms.sort_by(f64::total_cmp);
    let pick = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    LatencySummary {
        count: ms.len(),
        p50_ms: pick(0.5),
        p90_ms: pick(0.9),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
    }
}

fn find(report: &Report, mib: u64, setup: Setup) -> Option<&BootResult> {
    report
        .results
        .iter()
        .find(|r| r.data_mib == mib && r.setup == setup)
}

/// The ratios the issue sets targets for.
fn compute_targets(report: &mut Report) {
    let mut t = BTreeMap::new();
    let base = report.images.first().map(|i| i.data_mib).unwrap_or(0);
    if let (Some(local), Some(cold), Some(warm)) = (
        find(report, base, Setup::Local),
        find(report, base, Setup::Cold),
        find(report, base, Setup::Warm),
    ) {
        t.insert(
            "cold_vs_local (target <= 1.25)".into(),
            cold.seconds / local.seconds,
        );
        t.insert(
            "warm_vs_local (target <= 1.05)".into(),
            warm.seconds / local.seconds,
        );
    }
    if let (Some(local), Some(profiled)) = (
        find(report, base, Setup::Local),
        find(report, base, Setup::Profiled),
    ) {
        t.insert("profiled_vs_local".into(), profiled.seconds / local.seconds);
    }
    for img in &report.images {
        if let Some(cold) = find(report, img.data_mib, Setup::Cold) {
            t.insert(
                format!("fetched_vs_stored_{}mib (target <= 0.10)", img.data_mib),
                cold.bytes_fetched as f64 / img.stored_bytes.max(1) as f64,
            );
            if let Some(dl) = find(report, img.data_mib, Setup::Download) {
                t.insert(
                    format!("download_vs_cold_{}mib (target >= 3 at 1024)", img.data_mib),
                    dl.seconds / cold.seconds,
                );
            }
        }
    }
    report.targets = t;
}

fn render_table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "boot benchmark: {} guest, store via proxy {:.0} ms first byte, {}",
        report.accel,
        report.latency_ms,
        if report.bandwidth_bytes_per_s == 0 {
            "unlimited bandwidth".to_string()
        } else {
            format!("{:.0} MB/s", report.bandwidth_bytes_per_s as f64 / 1e6)
        }
    );
    for img in &report.images {
        let _ = writeln!(
            s,
            "image data {:>4} MiB: disk {}, stored {} (converted in {:.1}s)",
            img.data_mib,
            crate::convert::human(img.disk_bytes),
            crate::convert::human(img.stored_bytes),
            img.convert_s
        );
    }
    let _ = writeln!(
        s,
        "{:>6}  {:<16} {:>8} {:>7} {:>8} {:>8} {:>7} {:>7} {:>10} {:>6} {:>8} {:>8}",
        "data",
        "setup",
        "marker",
        "vs loc",
        "download",
        "decomp",
        "mount",
        "boot",
        "fetched",
        "GETs",
        "GET p50",
        "GET p99"
    );
    for r in &report.results {
        let local = find(report, r.data_mib, Setup::Local)
            .map(|l| l.seconds)
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "{:>4}Mi  {:<16} {:>7.2}s {:>6.2}x {:>7.2}s {:>7.2}s {:>6.2}s {:>6.2}s {:>10} {:>6} {:>6.1}ms {:>6.1}ms",
            r.data_mib,
            r.setup.name(),
            r.seconds,
            r.seconds / local,
            r.download_s,
            r.decompress_s,
            r.mount_s,
            r.boot_s,
            crate::convert::human(r.bytes_fetched),
            r.gets,
            r.get_latency.p50_ms,
            r.get_latency.p99_ms
        );
    }
    for (k, v) in &report.targets {
        let _ = writeln!(s, "{k}: {v:.3}");
    }
    s
}

fn draw_chart(path: &Path, report: &Report) -> anyhow::Result<()> {
    let base = report.images.first().map(|i| i.data_mib).unwrap_or(0);
    let setups = [
        Setup::Local,
        Setup::Download,
        Setup::Cold,
        Setup::Warm,
        Setup::Profiled,
    ];
    let mut panels = vec![Panel::Bars(Bars {
        title: format!("Time to boot marker ({base} MiB unread data)"),
        y_label: "seconds".into(),
        bars: setups
            .iter()
            .filter_map(|&s| find(report, base, s).map(|r| (s.name().to_string(), r.seconds)))
            .collect(),
    })];
    let mut grown: Vec<u64> = report.images.iter().map(|i| i.data_mib).collect();
    grown.sort_unstable();
    if grown.len() > 1 {
        panels.push(Panel::Lines(Lines {
            title: "Boot time as the image's data grows".into(),
            x_label: "incompressible data in the image (GiB)".into(),
            y_label: "seconds to marker".into(),
            series: setups
                .iter()
                .map(|&s| Series {
                    name: s.name().into(),
                    points: grown
                        .iter()
                        .filter_map(|&m| find(report, m, s).map(|r| (m as f64 / 1024.0, r.seconds)))
                        .collect(),
                })
                .collect(),
            log_x: false,
        }));
    }
    let cdf = |timings: &[RequestTiming]| -> Vec<(f64, f64)> {
        let mut ms: Vec<f64> = timings.iter().map(|t| millis(t.total)).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len() as f64;
        ms.iter()
            .enumerate()
            .map(|(i, &v)| (v, (i + 1) as f64 / n * 100.0))
            .collect()
    };
    let series: Vec<Series> = [Setup::Cold, Setup::Profiled, Setup::Warm, Setup::Download]
        .iter()
        .filter_map(|&s| {
            let t = report.timings.get(&(base, s))?;
            (!t.is_empty()).then(|| Series {
                name: format!("{} ({} GETs)", s.name(), t.len()),
                points: cdf(t),
            })
        })
        .collect();
    if !series.is_empty() {
        panels.push(Panel::Lines(Lines {
            title: "Store request latency (CDF)".into(),
            x_label: "ms from request to last byte".into(),
            y_label: "% of requests".into(),
            series,
            log_x: true,
        }));
    }
    chart::render(path, &panels)
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

    #[test]
    fn marker_is_found_mid_line() {
        let dir =
            std::env::temp_dir().join(format!("zvimg-bench-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("serial.log");
        std::fs::write(&log, b"[ 1.0] noise\r\nsh: ZVMOUNT-BOOT-OK ab").unwrap();
        assert_eq!(
            find_marker(&log, DEFAULT_MARKER),
            None,
            "a half-written line must not count"
        );
        std::fs::write(&log, b"[ 1.0] noise\r\nsh: ZVMOUNT-BOOT-OK abc123\r\n").unwrap();
        assert_eq!(
            find_marker(&log, DEFAULT_MARKER).as_deref(),
            Some("ZVMOUNT-BOOT-OK abc123")
        );
        assert_eq!(find_marker(&log, "NOPE"), None);
        assert_eq!(find_marker(&dir.join("missing"), DEFAULT_MARKER), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let t = |ms: u64| RequestTiming {
            first_byte: Duration::ZERO,
            total: Duration::from_millis(ms),
            bytes: 1,
        };
        let timings: Vec<_> = (1..=100).map(t).collect();
        let s = summarize(&timings);
        assert_eq!(
            (s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(summarize(&[]).count, 0);
    }
}
