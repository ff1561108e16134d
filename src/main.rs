//! `zvmount SOURCE... MOUNTPOINT`: parse flags, set up logging, hand over
//! to [`zvmount::daemon::run_mount`]. No logic a test would need lives here.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use clap::Parser;
use zvmount::cli::{ByteSize, StoreArgs};
use zvmount::daemon::{MountConfig, SizeMode, run_mount};
use zvmount::telemetry::MetricsAddr;

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
/// Stop with Ctrl-C or SIGTERM (or `fusermount3 -u MOUNTPOINT`).
/// Counters: `cat MOUNTPOINT/.zvmount-stats.json`.
#[derive(Parser, Debug)]
#[command(name = "zvmount", version, verbatim_doc_comment)]
struct Cli {
    /// Images to serve, then the directory to mount on.
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,

    /// An existing, empty directory.
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,

    /// File name for an image inside the mount (repeat in SOURCE order;
    /// default: the source's basename with .zvhd2 replaced by .raw).
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,

    /// Sidecar index to use (default: SOURCE.zvidx when it exists). Only
    /// with a single SOURCE.
    #[arg(long, value_name = "LOCATION", conflicts_with = "no_sidecar")]
    sidecar: Option<String>,

    /// Ignore sidecar indexes; read the image's own index and bitmap.
    #[arg(long)]
    no_sidecar: bool,

    /// Memory for decoded blocks (LRU), e.g. 512MiB, 2GiB.
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(MountConfig::default().mem_cache))]
    mem_cache: ByteSize,

    /// Host-wide image cache, shared by every zvmount on the host (default
    /// for root: /var/cache/zvmount, or $ZVMOUNT_CACHE_DIR; `none`: no cache).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Size cap of the host cache (whole images are evicted, least
    /// recently used first; 5% of its file system is always kept free).
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(MountConfig::DEFAULT_DISK_CACHE))]
    disk_cache: ByteSize,

    /// Fetch every block into the host cache in the background, at the
    /// lowest priority, at most RATE MB/s (default: unlimited).
    #[arg(long, value_name = "RATE", num_args = 0..=1, require_equals = true, default_missing_value = "0")]
    hydrate: Option<f64>,

    /// Blocks to fetch ahead of a sequential reader (0 disables).
    #[arg(long, value_name = "BLOCKS", default_value_t = MountConfig::default().readahead)]
    readahead: u32,

    /// Memory that readahead and profile prefetch may hold in flight.
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(MountConfig::default().prefetch_budget))]
    prefetch_budget: ByteSize,

    /// Size of the served file: `orig`, the disk that was converted, or
    /// `curr`, rounded up to a whole GiB as Huawei's tools show it.
    #[arg(long = "size", value_enum, default_value_t = MountConfig::default().size_mode)]
    size_mode: SizeMode,

    /// Let other users (and root) read the mount; needs `user_allow_other`
    /// in /etc/fuse.conf when not run as root.
    #[arg(long)]
    allow_other: bool,

    /// Record the blocks read, in order, and write them to FILE on unmount
    /// (a boot profile for `zvimg index --boot-profile`).
    #[arg(long, value_name = "FILE")]
    record_profile: Option<PathBuf>,

    /// Detach once the mount is up (errors before that still reach the
    /// terminal).
    #[arg(long)]
    daemon: bool,

    /// Write logs to FILE (default: stderr; with --daemon, discarded).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,

    /// More logging: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Log line format: `human` (default) or `json`, one object per line
    /// for log shippers.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    /// Serve Prometheus metrics on /metrics at ADDR: IP:PORT (e.g.
    /// 127.0.0.1:9917) or a unix socket path. Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<MetricsAddr>,

    /// Serve each SOURCE as a plain raw file, without decoding (to measure
    /// the FUSE path on its own).
    #[arg(long, hide = true)]
    raw_passthrough: bool,

    /// Set by --daemon on the detached child: say "ready" on stdout once
    /// mounted, then drop the terminal.
    #[arg(long, hide = true)]
    daemon_child: bool,

    #[command(flatten)]
    store: StoreArgs,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Readable lines: time, level, message, fields.
    Human,
    /// One JSON object per line (timestamp, level, fields, message).
    Json,
}

/// Log file of a detached child, for [`detach_stdio`].
static LOG_FILE: OnceLock<Option<PathBuf>> = OnceLock::new();

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli) {
        eprintln!("zvmount: error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = if cli.daemon {
        spawn_detached()
    } else {
        run(cli)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zvmount: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps freed 2 MiB buffers (fetched records, evicted blocks) inside the
/// process for reuse instead of unmapping them. glibc serves allocations
/// that large with a fresh `mmap` by default, and first-touching fresh
/// pages is what a cache miss spends most of its time on where page faults
/// are dear (measured ~4 µs per 4 KiB page in a nested VM: ~2 ms per
/// block, more than the GET and decode together; see docs/BENCHMARKS.md).
/// Memory stays bounded by the cache size plus what is in flight, since
/// freed buffers are reused for the next blocks.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The largest threshold glibc accepts on 64-bit (half its 64 MiB heap).
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 512 << 20;
        // SAFETY: mallopt only adjusts allocator parameters; called before
        // any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let default = match cli.verbose {
        // fuser logs a spurious "Unmount failed" after every clean unmount
        // (its is-mounted check is inverted in 0.15): keep it quiet unless
        // asked.
        0 => "warn,zvmount=info,fuser=off",
        1 => "info,zvmount=debug,fuser=warn",
        _ => "debug,zvmount=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A detached child logs to stderr, which it points at the log file once
    // the mount is up (see `detach_stdio`).
    let (writer, ansi): (BoxMakeWriter, bool) = match (&cli.log_file, cli.daemon_child) {
        (Some(path), false) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        (_, true) => (BoxMakeWriter::new(std::io::stderr), false),
        (None, false) => (BoxMakeWriter::new(std::io::stderr), true),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    match cli.log_format {
        LogFormat::Human => builder.with_ansi(ansi).init(),
        // Fields at the top level, so shippers index them without unwrapping.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.sidecar.is_some() && cli.sources.len() > 1 {
        bail!(
            "--sidecar names the index of one image; it cannot be used with {} sources",
            cli.sources.len()
        );
    }
    if cli.names.len() > cli.sources.len() {
        bail!(
            "{} --name given for {} sources",
            cli.names.len(),
            cli.sources.len()
        );
    }
    let on_ready: Option<fn()> = if cli.daemon_child {
        let _ = LOG_FILE.set(cli.log_file.clone());
        Some(detach_stdio)
    } else {
        None
    };
    run_mount(MountConfig {
        sources: cli.sources,
        mountpoint: cli.mountpoint,
        names: cli.names,
        store: cli.store.to_config(),
        sidecar: cli.sidecar,
        no_sidecar: cli.no_sidecar,
        mem_cache: cli.mem_cache.0,
        disk_cache: cache_dir(cli.cache_dir).map(|dir| (dir, cli.disk_cache.0)),
        hydrate: cli.hydrate.map(|mb| (mb.max(0.0) * 1e6) as u64),
        readahead: cli.readahead,
        prefetch_budget: cli.prefetch_budget.0,
        allow_other: cli.allow_other,
        size_mode: cli.size_mode,
        record_profile: cli.record_profile,
        raw_passthrough: cli.raw_passthrough,
        on_ready,
        metrics_addr: cli.metrics_addr,
    })
}

/// The host cache directory: `--cache-dir`, else `$ZVMOUNT_CACHE_DIR`, else
/// /var/cache/zvmount for root (others must ask for one); `none` (or an
/// empty variable) means no cache.
fn cache_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    const DEFAULT_FOR_ROOT: &str = "/var/cache/zvmount";
    let chosen = flag
        .or_else(|| std::env::var_os("ZVMOUNT_CACHE_DIR").map(PathBuf::from))
        .or_else(|| is_root().then(|| PathBuf::from(DEFAULT_FOR_ROOT)))?;
    (!chosen.as_os_str().is_empty() && chosen.as_os_str() != "none").then_some(chosen)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `--daemon`: run the mount in a child without `--daemon`, relay its
/// stderr until it reports "ready" on stdout (or exits), then return.
fn spawn_detached() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the zvmount executable")?;
    let args = std::env::args_os().skip(1).filter(|a| a != "--daemon");
    let mut child = Command::new(exe);
    child
        .args(args)
        .arg("--daemon-child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches no memory of the
    // parent; it runs in the forked child just before exec.
    unsafe {
        // A session of its own: no controlling terminal, so neither Ctrl-C
        // in the shell that started us nor the terminal closing (SIGHUP)
        // reaches the daemon.
        child.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = child
        .spawn()
        .context("cannot start the background zvmount")?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let relay = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    let mut ready = String::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    BufReader::new(stdout)
        .read_line(&mut ready)
        .context("cannot read from the background zvmount")?;
    if ready.trim() == "ready" {
        let _ = relay.join();
        eprintln!(
            "zvmount: mounted (pid {}); stop with `kill {}` or `fusermount3 -u MOUNTPOINT`",
            child.id(),
            child.id()
        );
        return Ok(());
    }
    let status = child
        .wait()
        .context("cannot wait for the background zvmount")?;
    let _ = relay.join();
    bail!("the background zvmount exited before mounting ({status})")
}

/// In the detached child, once mounted: tell the parent, then point stdout
/// at /dev/null and stderr at the log file (or /dev/null).
fn detach_stdio() {
    use std::os::fd::AsRawFd;
    let log = LOG_FILE.get().cloned().flatten();
    let target = match &log {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path),
        None => std::fs::OpenOptions::new().write(true).open("/dev/null"),
    };
    let devnull = std::fs::OpenOptions::new().write(true).open("/dev/null");
    if let Ok(target) = &target {
        // SAFETY: dup2 on two open descriptors; fd 2 stays valid throughout.
        unsafe { libc::dup2(target.as_raw_fd(), 2) };
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    if let Ok(devnull) = &devnull {
        // SAFETY: as above, for fd 1.
        unsafe { libc::dup2(devnull.as_raw_fd(), 1) };
    }
}
