//! A real nginx on 127.0.0.1 as the fleet's caching tier, configured by the
//! shipped `examples/nginx-slice-cache.conf` (slice, cache key, lock), with
//! only its addresses, cache path and slice size swapped in, so tests and
//! `zvimg bench fleet` exercise exactly what an operator deploys.
//!
//! nginx runs in the foreground (`daemon off`) from a temporary folder that
//! holds its pid, logs, temp files and cache, and is stopped on drop.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shipped example, compiled in.
pub const EXAMPLE_CONF: &str = include_str!("../../../examples/nginx-slice-cache.conf");

/// The example's placeholders, replaced at start.
const EXAMPLE_ORIGIN: &str = "server 127.0.0.1:9000;";
const EXAMPLE_LISTEN: &str = "listen 127.0.0.1:8080;";
const EXAMPLE_CACHE: &str = "/var/cache/nginx/zvmount";
const EXAMPLE_SLICE: &str = "slice 4m;";

/// How long nginx may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running nginx; stopped (SIGTERM, then SIGKILL) and its folder removed
/// on drop.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx as a caching tier in front of `origin` with slices of
    /// `slice_bytes` (a multiple of 1 KiB). Errors name what failed, with
    /// nginx's error log.
    pub fn launch(origin: SocketAddr, slice_bytes: u64) -> io::Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let d = dir.path();
        std::fs::create_dir_all(d.join("cache"))?;
        std::fs::create_dir_all(d.join("tmp"))?;
        let tier = EXAMPLE_CONF
            .replace(EXAMPLE_ORIGIN, &format!("server {origin};"))
            .replace(EXAMPLE_LISTEN, &format!("listen {addr};"))
            .replace(EXAMPLE_CACHE, &d.join("cache").display().to_string())
            .replace(EXAMPLE_SLICE, &format!("slice {}k;", slice_bytes / 1024));
        std::fs::write(d.join("tier.conf"), tier)?;
        // Running as root, nginx's workers would drop to `nobody`, who cannot
        // write the test's folder: keep them as the user running the test.
        let user = if is_root() { "user root;" } else { "" };
        let tmp = d.join("tmp");
        let main = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\n{user}\n\
             pid {pid};\nerror_log {err} warn;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log {acc};\n  client_body_temp_path {t}/body;\n  \
             proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n  \
             uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  \
             include {tier};\n}}\n",
            pid = d.join("nginx.pid").display(),
            err = d.join("error.log").display(),
            acc = d.join("access.log").display(),
            t = tmp.display(),
            tier = d.join("tier.conf").display(),
        );
        let conf = d.join("nginx.conf");
        std::fs::write(&conf, main)?;
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start nginx: {e}")))?;
        let mut nginx = Nginx { child, addr, dir };
        let started = Instant::now();
        loop {
            if TcpStream::connect(addr).is_ok() {
                return Ok(nginx);
            }
            if let Some(status) = nginx.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "nginx exited ({status}) before listening; error log:\n{}",
                    nginx.error_log()
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(io::Error::other(format!(
                    "nginx did not listen on {addr} within {START_TIMEOUT:?}; error log:\n{}",
                    nginx.error_log()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`Nginx::launch`] for tests: panics with the reason.
    pub fn start(origin: SocketAddr, slice_bytes: u64) -> Nginx {
        Nginx::launch(origin, slice_bytes).unwrap_or_else(|e| panic!("nginx: {e}"))
    }

    /// Where clients reach the tier.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/PATH` (`path` without a leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Its folder (configuration, logs, cache).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        read_lossy(&self.dir.path().join("error.log"))
    }

    /// The access log so far: one line per client request.
    pub fn access_log(&self) -> String {
        read_lossy(&self.dir.path().join("access.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nginx` from PATH, or Debian's `/usr/sbin/nginx` (not on a user's PATH).
pub fn nginx_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.is_file() {
        sbin
    } else {
        PathBuf::from("nginx")
    }
}

/// Whether nginx is installed (`scripts/install-deps.sh` installs it).
pub fn available() -> bool {
    Command::new(nginx_binary())
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A port free at the moment of asking (bound to port 0, then released).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn read_lossy(path: &Path) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}
