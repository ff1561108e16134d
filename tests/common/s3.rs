//! The S3-compatible server the tests run against: `s3s-fs` on a free
//! 127.0.0.1 port, access key `test`, secret `test`, installed by
//! `scripts/install-deps.sh`.
//!
//! [`S3Server::start`] gives one server per test binary. A static's drop
//! never runs, so the child is tied to our life with `PR_SET_PDEATHSIG`
//! instead; that signal fires when the *thread* that spawned the child
//! exits, so the shared server is spawned from a thread that never ends.
//! [`S3Server::start_private`] gives a server a test owns (and may stop and
//! restart); it is killed and its data removed on drop.
//!
//! Configuration goes through [`S3Server::store_args`] (explicit endpoint,
//! region and credentials), never through environment variables, which
//! parallel tests would race on.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use zvstore::{StaticCredentials, StoreArgs};

/// Access key and secret the server accepts.
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";

const DIR_PREFIX: &str = "zvmount-s3s-";

/// A running (or stopped) s3s-fs process.
pub struct S3Server {
    port: u16,
    data_dir: PathBuf,
    child: Mutex<Option<Child>>,
    /// Remove the data dir on drop (private servers only).
    owned: bool,
}

static SHARED: OnceLock<S3Server> = OnceLock::new();
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl S3Server {
    /// The server shared by every test of this binary, started on first use.
    pub fn start() -> &'static S3Server {
        SHARED.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("s3s-fs-parent".into())
                .spawn(move || {
                    let server = S3Server::launch(false);
                    let _ = tx.send(server);
                    // Live as long as the process: the child dies with this thread.
                    loop {
                        std::thread::park();
                    }
                })
                .expect("spawn the s3s-fs parent thread");
            rx.recv()
                .expect("s3s-fs failed to start (see the panic above)")
        })
    }

    /// A server of the caller's own, for tests that stop and restart it.
    /// It dies with the calling thread at the latest.
    pub fn start_private() -> S3Server {
        S3Server::launch(true)
    }

    fn launch(owned: bool) -> S3Server {
        sweep_stale_dirs();
        let data_dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&data_dir).expect("create the s3s-fs data dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let server = S3Server {
            port,
            data_dir,
            child: Mutex::new(None),
            owned,
        };
        server.restart();
        server
    }

    /// Starts the process again (same port, same data) after [`S3Server::stop`].
    pub fn restart(&self) {
        let mut child = self.child.lock().unwrap();
        assert!(child.is_none(), "s3s-fs is already running");
        let log = std::fs::File::create(self.data_dir.with_extension("log"))
            .expect("create the s3s-fs log");
        let mut cmd = Command::new("s3s-fs");
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches only this (child) process.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut spawned = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!(
                    "s3s-fs is not on PATH: run scripts/install-deps.sh (it installs s3s-fs 0.14.1)"
                )
            }
            Err(e) => panic!("could not start s3s-fs: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            if let Ok(Some(status)) = spawned.try_wait() {
                let log = std::fs::read_to_string(self.data_dir.with_extension("log"))
                    .unwrap_or_default();
                panic!("s3s-fs exited at start ({status}):\n{log}");
            }
            if Instant::now() > deadline {
                let _ = spawned.kill();
                panic!("s3s-fs did not answer on port {} within 20 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *child = Some(spawned);
    }

    /// Kills the process (data stays for [`S3Server::restart`]).
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether something answers HTTP on the port (s3s-fs says 403 to an unsigned GET /).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Store flags for this server: endpoint, region, explicit credentials,
    /// and short timeouts so failing tests fail fast.
    pub fn store_args(&self) -> StoreArgs {
        StoreArgs {
            region: Some("us-east-1".into()),
            endpoint_url: Some(self.endpoint()),
            credentials: Some(StaticCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
                session_token: None,
            }),
            timeout: Duration::from_secs(10),
            retries: Some(2),
            ..StoreArgs::default()
        }
    }

    /// An S3 client for this server.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        zvstore::s3::s3_client(&self.store_args()).await
    }

    /// Creates `name` (panics on failure: a fixture error, not a test result).
    pub async fn create_bucket(&self, name: &str) {
        self.client()
            .await
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
    }

    /// Stores `bytes` as `bucket/key` with a plain PUT.
    pub async fn put_bytes(&self, bucket: &str, key: &str, bytes: impl Into<bytes::Bytes>) {
        self.client()
            .await
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(bytes.into()))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "put s3://{bucket}/{key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.data_dir);
            let _ = std::fs::remove_file(self.data_dir.with_extension("log"));
        }
    }
}

/// A bucket name no other test of this run uses.
pub fn unique_bucket(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes data dirs of earlier test runs whose process is gone (the shared
/// server's dir cannot be removed by the run that made it).
fn sweep_stale_dirs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let Some(pid) = rest
            .split(['-', '.'])
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let p = entry.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}
