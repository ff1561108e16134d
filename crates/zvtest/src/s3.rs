//! The S3-compatible server the tests and `zvimg bench boot` run against:
//! `s3s-fs` on a free 127.0.0.1 port, access key `test`, secret `test`,
//! installed by `scripts/install-deps.sh`.
//!
//! [`S3Server::start`] gives one server per test binary. A static's drop
//! never runs, so the child is tied to our life with `PR_SET_PDEATHSIG`
//! instead; that signal fires when the *thread* that spawned the child
//! exits, so the shared server is spawned from a thread that never ends.
//! [`S3Server::start_private`] gives a server a test owns (and may stop and
//! restart); it is killed and its data removed on drop.
//! [`S3Server::launch`] is the fallible form for callers that report errors
//! rather than panic (the boot benchmark), with their own binary and data
//! directory.
//!
//! Configuration goes through [`S3Server::store_config`] (explicit endpoint,
//! region and credentials), never through environment variables, which
//! parallel tests would race on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use zvstore::{ObjectStore, StaticCredentials, StoreConfig};

/// Access key the server accepts.
pub const ACCESS_KEY: &str = "test";
/// Secret key the server accepts.
pub const SECRET_KEY: &str = "test";

const DIR_PREFIX: &str = "zvmount-s3s-";

/// Why an s3s-fs server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The program is not on PATH (or not at the given path).
    #[error(
        "{binary} not found: run scripts/install-deps.sh (it installs s3s-fs 0.14.1: cargo install s3s-fs@0.14.1 --locked --features binary)"
    )]
    NotFound {
        /// The program that was run.
        binary: PathBuf,
    },
    /// Spawning failed for another reason.
    #[error("could not start {binary}: {source}")]
    Spawn {
        /// The program that was run.
        binary: PathBuf,
        /// What `spawn` said.
        source: std::io::Error,
    },
    /// The process exited before it answered.
    #[error("{binary} exited at start ({status}); its log {log}:\n{tail}")]
    Exited {
        /// The program that was run.
        binary: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log file.
        log: String,
        /// The log's content.
        tail: String,
    },
    /// Nothing answered HTTP on the port in time.
    #[error("{binary} did not answer on 127.0.0.1:{port} within {waited:?}")]
    NoAnswer {
        /// The program that was run.
        binary: PathBuf,
        /// The port it was given.
        port: u16,
        /// How long we waited.
        waited: Duration,
    },
    /// Preparing the data directory, log or port failed.
    #[error("{what}: {source}")]
    Io {
        /// The step and path.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Where and how to run a server started with [`S3Server::launch`].
#[derive(Clone, Debug)]
pub struct S3Options {
    /// The s3s-fs program (a name on PATH or a path).
    pub binary: PathBuf,
    /// Folder for the objects (each top-level folder is a bucket); the log
    /// goes beside it as `<data_dir>.log`. `None`: a fresh folder under
    /// `$TMPDIR`, removed on drop.
    pub data_dir: Option<PathBuf>,
}

impl Default for S3Options {
    fn default() -> S3Options {
        S3Options {
            binary: PathBuf::from("s3s-fs"),
            data_dir: None,
        }
    }
}

/// How long a starting server may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running (or stopped) s3s-fs process.
pub struct S3Server {
    binary: PathBuf,
    port: u16,
    data_dir: PathBuf,
    child: Mutex<Option<Child>>,
    /// Remove the data dir on drop (servers in a folder of their own only).
    owned: bool,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
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
                    let server =
                        S3Server::launch(S3Options::default()).unwrap_or_else(|e| panic!("{e}"));
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
        S3Server::launch(S3Options::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server of the caller's own as `options` say and waits until
    /// it answers. It dies with the calling thread at the latest.
    pub fn launch(options: S3Options) -> Result<S3Server, S3Error> {
        let io = |what: String| move |source| S3Error::Io { what, source };
        let (data_dir, owned) = match options.data_dir {
            Some(dir) => (dir, false),
            None => {
                sweep_stale_dirs();
                let dir = std::env::temp_dir().join(format!(
                    "{DIR_PREFIX}{}-{}",
                    std::process::id(),
                    NEXT_DIR.fetch_add(1, Ordering::Relaxed)
                ));
                (dir, true)
            }
        };
        std::fs::create_dir_all(&data_dir)
            .map_err(io(format!("creating {}", data_dir.display())))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port on 127.0.0.1".into()))?
            .port();
        let server = S3Server {
            binary: options.binary,
            port,
            data_dir,
            child: Mutex::new(None),
            owned,
        };
        server.try_restart()?;
        Ok(server)
    }

    /// Starts the process again (same port, same data) after [`S3Server::stop`].
    /// Panics if it is running or does not come up.
    pub fn restart(&self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`S3Server::restart`], returning the failure.
    pub fn try_restart(&self) -> Result<(), S3Error> {
        let mut child = self.child.lock().unwrap();
        assert!(child.is_none(), "s3s-fs is already running");
        let log_path = self.data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path).map_err(|source| S3Error::Io {
            what: format!("creating {}", log_path.display()),
            source,
        })?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: pre_exec runs between fork and exec; the closure only
        // makes one prctl(2) call (async-signal-safe, allocation-free) on
        // the child itself, so the server dies with the thread that spawned it.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let mut spawned = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                S3Error::NotFound {
                    binary: self.binary.clone(),
                }
            } else {
                S3Error::Spawn {
                    binary: self.binary.clone(),
                    source,
                }
            }
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers() {
            if let Ok(Some(status)) = spawned.try_wait() {
                return Err(S3Error::Exited {
                    binary: self.binary.clone(),
                    status,
                    log: log_path.display().to_string(),
                    tail: std::fs::read_to_string(&log_path).unwrap_or_default(),
                });
            }
            if Instant::now() > deadline {
                let _ = spawned.kill();
                let _ = spawned.wait();
                return Err(S3Error::NoAnswer {
                    binary: self.binary.clone(),
                    port: self.port,
                    waited: START_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *child = Some(spawned);
        Ok(())
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

    /// The TCP port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, e.g. as a proxy's upstream.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The store configuration for this server: endpoint, region, explicit credentials,
    /// and short timeouts so failing tests fail fast.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some(self.endpoint()),
            credentials: Some(StaticCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
                session_token: None,
            }),
            timeout: Duration::from_secs(10),
            retries: Some(2),
            ..StoreConfig::default()
        }
    }

    /// An S3 client for this server.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        zvstore::s3::s3_client(&self.store_config()).await
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

    /// Converts `raw` to ZVHD2 ([`crate::images::zvhd2_image`], 2 MiB
    /// blocks) and stores the image as `disk.zvhd2` and its sidecar as
    /// `disk.zvhd2.zvidx` in a new bucket named after `bucket_prefix`;
    /// returns the image's `s3://` URL. Blocking: call it from a test's
    /// thread, not from inside a tokio runtime.
    pub fn upload_raw(&self, bucket_prefix: &str, raw: &[u8]) -> String {
        let (image, summary) = crate::images::zvhd2_image(raw, zvhd2::DEFAULT_BLOCK_SIZE);
        let bucket = unique_bucket(bucket_prefix);
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        rt.block_on(async {
            self.create_bucket(&bucket).await;
            self.put_bytes(&bucket, "disk.zvhd2", image).await;
            self.put_bytes(&bucket, "disk.zvhd2.zvidx", summary.sidecar.encode())
                .await;
        });
        format!("s3://{bucket}/disk.zvhd2")
    }

    /// Uploads the image file `image` as `bucket/key`, and its sidecar
    /// `IMAGE.zvidx` as `bucket/KEY.zvidx`, through zvstore's S3 backend
    /// (multipart for large files, as `zvimg push` does).
    pub async fn put_image_files(&self, bucket: &str, key: &str, image: &Path) {
        let url = format!("s3://{bucket}/{key}");
        let (store, key) = zvstore::open_source(&url, &self.store_config())
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        store
            .put_file(&key, image)
            .await
            .unwrap_or_else(|e| panic!("upload {}: {e}", image.display()));
        let mut sidecar = image.as_os_str().to_owned();
        sidecar.push(".zvidx");
        let sidecar = Path::new(&sidecar);
        store
            .put_file(&store.sibling_key(&key, ".zvidx"), sidecar)
            .await
            .unwrap_or_else(|e| panic!("upload {}: {e}", sidecar.display()));
    }

    /// The folder holding the objects (one subfolder per bucket).
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
