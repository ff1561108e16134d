//! `zvmount SOURCE... MOUNTPOINT` or `zvmount --config FILE`: parse flags,
//! merge them with the config file, set up logging, hand over to
//! [`zvmount::daemon::run_mount`]. No logic a test would need lives here.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use zvmount::cli::Cli;
use zvmount::cli::LogFormat;
use zvmount::config::MountSettings;
use zvmount::daemon::run_mount;

/// Log file of a detached child, for [`detach_stdio`].
static LOG_FILE: OnceLock<Option<PathBuf>> = OnceLock::new();

fn main() -> ExitCode {
    tune_allocator();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Options typed on the command line win over the config file; defaults
    // and environment variables do not.
    let typed = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let settings = match MountSettings::resolve(&cli, typed) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("zvmount: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.print_config {
        // What a run would refuse is refused here too.
        if let Err(e) = settings.clone().into_mount_config() {
            eprintln!("zvmount: error: {e}");
            return ExitCode::FAILURE;
        }
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging(
        settings.verbose.unwrap_or(cli.verbose),
        settings.log_file.as_deref(),
        cli.daemon_child,
        settings.log_format.unwrap_or(cli.log_format),
    ) {
        eprintln!("zvmount: error: {}", zvmount::util::error_chain(&e));
        return ExitCode::FAILURE;
    }
    // The detached child is started with --daemon-child and must not
    // detach again when the config file says `daemon = true`.
    let result = if settings.daemon.unwrap_or(cli.daemon) && !cli.daemon_child {
        spawn_detached(settings.mountpoint.as_deref())
    } else {
        run(&cli, settings)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zvmount: error: {}", zvmount::util::error_chain(&e));
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

fn init_logging(
    verbose: u8,
    log_file: Option<&Path>,
    daemon_child: bool,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let default = match verbose {
        // fuser logs a spurious "Unmount failed" after every clean unmount
        // (its is-mounted check is inverted in 0.15): keep it quiet unless
        // asked.
        // The SDK warns about every provider it tried and skipped (IMDS
        // on a host that is not EC2) before the documented fallback.
        0 => "warn,zvmount=info,fuser=off,aws_config=error",
        1 => "info,zvmount=debug,fuser=warn",
        _ => "debug,zvmount=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A detached child logs to stderr, which it points at the log file once
    // the mount is up (see `detach_stdio`).
    let open_log = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))
    };
    let (writer, ansi): (BoxMakeWriter, bool) = match (log_file, daemon_child) {
        (Some(path), false) => (
            BoxMakeWriter::new(std::sync::Mutex::new(open_log(path)?)),
            false,
        ),
        // Until the mount is up its stderr goes to the parent (and the
        // terminal); the log file gets those lines too.
        (Some(path), true) => {
            let file = std::sync::Arc::new(std::sync::Mutex::new(open_log(path)?));
            (
                BoxMakeWriter::new(move || StartupTee(std::sync::Arc::clone(&file))),
                false,
            )
        }
        (None, true) => (BoxMakeWriter::new(std::io::stderr), false),
        (None, false) => (
            BoxMakeWriter::new(std::io::stderr),
            zvmount::util::stderr_wants_colour(),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    match log_format {
        LogFormat::Human => builder.with_ansi(ansi).init(),
        // Fields at the top level, so shippers index them without unwrapping.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn run(cli: &Cli, settings: MountSettings) -> anyhow::Result<()> {
    let log_file = settings.log_file.clone();
    let mut config = settings.into_mount_config()?;
    config.raw_passthrough = cli.raw_passthrough;
    if cli.daemon_child {
        let _ = LOG_FILE.set(log_file);
        config.on_ready = Some(detach_stdio);
    }
    run_mount(config)
}

/// `--daemon`: run the mount in a child without `--daemon`, relay its
/// stderr until it reports "ready" on stdout (or exits), then return.
fn spawn_detached(mountpoint: Option<&std::path::Path>) -> anyhow::Result<()> {
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
        let mountpoint = mountpoint.map_or_else(
            || "MOUNTPOINT".into(),
            |m| {
                m.canonicalize()
                    .unwrap_or_else(|_| m.to_path_buf())
                    .display()
                    .to_string()
            },
        );
        eprintln!(
            "zvmount: mounted (pid {}); stop with `kill {}` or `fusermount3 -u {mountpoint}`",
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

/// Set once the detached child's stderr is the log file itself.
static DETACHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The detached child's log writer: stderr (relayed by the parent to the
/// terminal) and the log file until the mount is up, then stderr alone,
/// which is the log file from then on.
struct StartupTee(std::sync::Arc<std::sync::Mutex<std::fs::File>>);

impl Write for StartupTee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !DETACHED.load(std::sync::atomic::Ordering::Acquire) {
            let mut file = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let _ = file.write_all(buf);
        }
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
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
        DETACHED.store(true, std::sync::atomic::Ordering::Release);
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    if let Ok(devnull) = &devnull {
        // SAFETY: as above, for fd 1.
        unsafe { libc::dup2(devnull.as_raw_fd(), 1) };
    }
}
