//! zvmount as a service: the systemd unit template passes
//! `systemd-analyze verify`, the `Type=notify` protocol (READY=1 only once
//! the mount answers reads, STOPPING=1 on SIGTERM) over a real datagram
//! socket, and a restart after `kill -9` recovering the dead mountpoint.
//! Every mount is a real FUSE mount made by the real binary.

mod common;

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::images::{ImageFiles, raw_mixed, write_files};
use common::mount::is_mounted;

const BLOCK: u32 = 2 << 20;
/// Bounds on waiting, so a broken daemon fails the test instead of hanging
/// it; nothing is asserted about how long anything took.
const WAIT: Duration = Duration::from_secs(60);

/// A `zvmount` child with its stderr in a file; SIGKILLed on drop if still
/// running, and whatever it left mounted is detached.
struct Daemon {
    child: Option<Child>,
    mountpoint: PathBuf,
    stderr_path: PathBuf,
}

impl Daemon {
    fn spawn(args: &[&OsStr], mountpoint: &Path, env: &[(&str, &OsStr)], log: &Path) -> Daemon {
        let stderr = File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_zvmount"))
            .args(args)
            .arg(mountpoint)
            .env("RUST_LOG", "warn,zvmount=info,fuser=off")
            // No host cache: each test reads from its own image.
            .env("ZVMOUNT_CACHE_DIR", "none")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn zvmount");
        Daemon {
            child: Some(child),
            mountpoint: mountpoint.to_owned(),
            stderr_path: log.to_owned(),
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until `name` is listed in the mount; panics with stderr if the
    /// daemon exits first.
    fn wait_serving(&mut self, name: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("zvmount exited ({status}); stderr:\n{}", self.stderr());
            }
            if is_mounted(&self.mountpoint) && self.mountpoint.join(name).exists() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no mount; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id();
        // SAFETY: kill(2) on our own unreaped child.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    }

    /// Waits for the daemon to exit after a signal; panics if it does not.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("zvmount did not exit; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        while is_mounted(&self.mountpoint) {
            let ok = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
}

fn image() -> ImageFiles {
    write_files(raw_mixed(5, BLOCK, 12), BLOCK)
}

fn mountpoint(dir: &Path) -> PathBuf {
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mnt
}

/// The bytes at `offset` of the served disk equal the raw disk's.
fn assert_reads_right(mnt: &Path, img: &ImageFiles, offset: usize, len: usize) {
    use std::os::unix::fs::FileExt;
    let file = File::open(mnt.join("disk.raw")).unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset as u64).unwrap();
    assert!(
        buf == img.raw_bytes[offset..offset + len],
        "wrong bytes at {offset}"
    );
}

/// Every notification the daemon sent so far, one datagram each.
fn drain(socket: &UnixDatagram) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    socket.set_nonblocking(true).unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    socket.set_nonblocking(false).unwrap();
    got
}

/// Waits for a datagram holding the line `state`; returns every datagram
/// up to and including it. Panics with the daemon's stderr if it exits
/// first.
fn wait_for(socket: &UnixDatagram, state: &str, daemon: &mut Daemon) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == state);
                got.push(msg);
                if done {
                    return got;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("recv: {e}"),
        }
        if let Some(child) = daemon.child.as_mut()
            && let Some(status) = child.try_wait().unwrap()
        {
            // What it sent before exiting is still queued. (The reaped
            // child keeps its status for `wait_exit`.)
            got.extend(drain(socket));
            if let Some(i) = got.iter().position(|m| m.lines().any(|l| l == state)) {
                got.truncate(i + 1);
                return got;
            }
            panic!(
                "zvmount exited ({status}) before {state}; got {got:?}; stderr:\n{}",
                daemon.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {state}; got {got:?}; stderr:\n{}",
            daemon.stderr()
        );
    }
}

#[test]
fn ready_is_sent_once_the_mount_answers_and_stopping_on_sigterm() {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let mnt = mountpoint(dir.path());
    let sock_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&sock_path).unwrap();
    let mut daemon = Daemon::spawn(
        &[img.image.as_os_str()],
        &mnt,
        &[("NOTIFY_SOCKET", sock_path.as_os_str())],
        &dir.path().join("stderr"),
    );

    let before_ready = wait_for(&socket, "READY=1", &mut daemon);
    // READY=1 came after the daemon read through its own mount: it is
    // mounted and serving right now, before we did anything.
    assert!(
        is_mounted(&mnt),
        "READY=1 before the mount: {before_ready:?}"
    );
    let listed: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.iter().any(|n| n == "disk.raw"), "{listed:?}");
    assert!(
        before_ready.iter().all(|m| !m.contains("STOPPING=1")),
        "{before_ready:?}"
    );
    let ready = before_ready.last().unwrap();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=serving 1 image")),
        "{ready:?}"
    );
    // The readiness probe touched no image block.
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join(".zvmount-stats.json")).unwrap()).unwrap();
    assert_eq!(stats["fuse_reads"], 0, "{stats}");

    assert_reads_right(&mnt, &img, 3 * (BLOCK as usize) + 4096, 64 << 10);
    assert!(drain(&socket).iter().all(|m| !m.contains("STOPPING=1")));

    daemon.signal(libc::SIGTERM);
    let after = wait_for(&socket, "STOPPING=1", &mut daemon);
    assert!(after.iter().all(|m| !m.contains("READY=1")), "{after:?}");
    let status = daemon.wait_exit();
    assert!(status.success(), "{status}; stderr:\n{}", daemon.stderr());
    assert!(!is_mounted(&mnt));
}

#[test]
fn without_notify_socket_nothing_is_sent_and_the_mount_works() {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let mnt = mountpoint(dir.path());
    let mut daemon = Daemon::spawn(
        &[img.image.as_os_str()],
        &mnt,
        &[],
        &dir.path().join("stderr"),
    );
    daemon.wait_serving("disk.raw");
    assert_reads_right(&mnt, &img, 0, 4096);
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().success(), "{}", daemon.stderr());
}

#[test]
fn a_crashed_daemons_mountpoint_is_recovered_by_the_next_start() {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let mnt = mountpoint(dir.path());
    let mut first = Daemon::spawn(
        &[img.image.as_os_str()],
        &mnt,
        &[],
        &dir.path().join("first"),
    );
    first.wait_serving("disk.raw");
    assert_reads_right(&mnt, &img, BLOCK as usize, 4096);
    first.signal(libc::SIGKILL);
    first.wait_exit();
    // What a crash leaves: still in the mount table, every access ENOTCONN.
    assert!(is_mounted(&mnt));
    let err = std::fs::read_dir(&mnt).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");

    // The dead mount still lists `disk.raw` from cached attributes, so
    // wait for the new daemon's READY=1 rather than for the file.
    let sock_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&sock_path).unwrap();
    let log = dir.path().join("second");
    let mut second = Daemon::spawn(
        &[img.image.as_os_str()],
        &mnt,
        &[("NOTIFY_SOCKET", sock_path.as_os_str())],
        &log,
    );
    wait_for(&socket, "READY=1", &mut second);
    assert_reads_right(&mnt, &img, 4 * BLOCK as usize + 100, 8192);
    let stderr = second.stderr();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("stale FUSE mount"))
        .collect();
    assert_eq!(lines.len(), 1, "one line says so:\n{stderr}");
    assert!(lines[0].contains(&*mnt.to_string_lossy()), "{}", lines[0]);

    second.signal(libc::SIGTERM);
    assert!(second.wait_exit().success(), "{}", second.stderr());
    // Only one mount was stacked there: nothing is left once it exits.
    assert!(!is_mounted(&mnt), "{}", second.stderr());
    drop(first);
}

#[test]
fn a_live_mount_is_not_taken_over() {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let mnt = mountpoint(dir.path());
    let mut first = Daemon::spawn(
        &[img.image.as_os_str()],
        &mnt,
        &[],
        &dir.path().join("first"),
    );
    first.wait_serving("disk.raw");
    let out = Command::new(env!("CARGO_BIN_EXE_zvmount"))
        .arg(&img.image)
        .arg(&mnt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("already a mount point"), "{stderr}");
    // The first mount still serves.
    assert_reads_right(&mnt, &img, 0, 4096);
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success());
}

/// The shipped unit, with ExecStart pointed at the built binary (verify
/// checks that it exists), as an instance `zvmount@test.service`.
#[test]
fn unit_template_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/zvmount@.service"),
    )
    .unwrap();
    for wanted in [
        "Type=notify",
        "Restart=on-failure",
        "ExecStart=/usr/bin/zvmount --config /etc/zvmount/%i.toml",
        "DeviceAllow=/dev/fuse rw",
    ] {
        assert!(unit.lines().any(|l| l == wanted), "missing {wanted:?}");
    }
    // Each of these gives the service a mount namespace of its own, where
    // a FUSE mount is invisible to the host.
    for private in [
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateDevices=",
        "PrivateMounts=",
        "ReadWritePaths=",
        "ReadOnlyPaths=",
        "InaccessiblePaths=",
        "TemporaryFileSystem=",
        "BindPaths=",
        "ProtectKernelTunables=",
        "ProtectKernelModules=",
        "ProtectKernelLogs=",
        "ProtectControlGroups=",
        "ProtectProc=",
        "MountFlags=",
    ] {
        assert!(
            !unit.lines().any(|l| l.starts_with(private)),
            "{private} would hide the mount from the host"
        );
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: skipping verify");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zvmount@test.service");
    let exe = env!("CARGO_BIN_EXE_zvmount");
    std::fs::write(&path, unit.replace("/usr/bin/zvmount", exe)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys and bad values are only warnings: none may appear.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

/// `--hydrate` tells the service manager how far it is: a line when it
/// starts, progress lines (share done, ETA) while it runs, and a final
/// line once every block is local. The rate cap (0.5 MB/s for ~4 MB of
/// random blocks, paced by bytes started) makes it run for several
/// seconds, so progress lines are sent however fast the machine is.
#[test]
fn hydration_sends_status_lines_with_progress_and_a_final_one() {
    let img = write_files(raw_mixed(12, BLOCK, 13), BLOCK);
    let dir = tempfile::tempdir().unwrap();
    let mnt = mountpoint(dir.path());
    let cache = dir.path().join("cache");
    let sock_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&sock_path).unwrap();
    let mut daemon = Daemon::spawn(
        &[
            OsStr::new("--hydrate=0.5"),
            OsStr::new("--cache-dir"),
            cache.as_os_str(),
            img.image.as_os_str(),
        ],
        &mnt,
        &[("NOTIFY_SOCKET", sock_path.as_os_str())],
        &dir.path().join("stderr"),
    );
    wait_for(&socket, "READY=1", &mut daemon);
    let deadline = Instant::now() + WAIT;
    let mut statuses = Vec::new();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !statuses
        .iter()
        .any(|s: &String| s.starts_with("hydration complete"))
    {
        assert!(
            Instant::now() < deadline,
            "no final hydration status; got {statuses:?}; stderr:\n{}",
            daemon.stderr()
        );
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            statuses.extend(
                msg.lines()
                    .filter_map(|l| l.strip_prefix("STATUS="))
                    .map(str::to_owned),
            );
        }
    }
    assert!(
        statuses[0].starts_with("hydrating 1 image(s)"),
        "{statuses:?}"
    );
    let progress: Vec<(u64, &str)> = statuses
        .iter()
        .filter_map(|s| {
            let rest = s.strip_prefix("hydrating: ")?;
            let (pct, _) = rest.split_once('%')?;
            Some((pct.parse().unwrap(), s.as_str()))
        })
        .collect();
    assert!(!progress.is_empty(), "no progress line: {statuses:?}");
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress went backwards: {statuses:?}"
    );
    assert!(
        progress.iter().all(|(_, s)| s.contains(" blocks), ETA ")),
        "{statuses:?}"
    );
    let last = statuses.last().unwrap();
    assert!(
        last.starts_with("hydration complete: ") && last.ends_with("(100%)"),
        "{statuses:?}"
    );
    // Hydrated means local: the whole disk reads right.
    assert_reads_right(&mnt, &img, 0, img.raw_bytes.len());
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().success(), "{}", daemon.stderr());
}
