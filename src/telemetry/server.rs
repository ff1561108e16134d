//! `--metrics-addr`: a small HTTP/1 server (hyper) answering `GET /metrics`
//! with the mount's Prometheus exposition (OpenMetrics when the client asks
//! for it, as Prometheus does; the classic text format otherwise), on a TCP
//! address or a unix socket. It only reads counters; a slow or broken scraper cannot stall a
//! read (each connection is its own task, with a header timeout).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};

use super::MountTelemetry;
use super::prometheus;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `/metrics` is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    /// `HOST:PORT` with a numeric host, e.g. `127.0.0.1:9917`, `[::1]:9917`.
    Tcp(SocketAddr),
    /// A unix socket path (`/run/zvmount/metrics.sock`, or `unix:PATH`).
    Unix(PathBuf),
}

/// Why `--metrics-addr` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServerError {
    /// The address is neither `IP:PORT` nor a socket path.
    #[error(
        "--metrics-addr {0:?}: expected IP:PORT (e.g. 127.0.0.1:9917) or a unix socket path (containing '/')"
    )]
    BadAddr(String),
    /// Binding or setting up the listener failed (port taken, no permission).
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        /// The address, as `http://IP:PORT/metrics` or `unix:PATH`.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A live process answers on the unix socket already.
    #[error("cannot listen on {addr} for metrics: another process is serving on that socket")]
    SocketInUse {
        /// The socket, as `unix:PATH`.
        addr: String,
    },
}

impl FromStr for MetricsAddr {
    type Err = MetricsServerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(MetricsServerError::BadAddr(s.to_owned()));
            }
            return Ok(MetricsAddr::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(MetricsAddr::Tcp(addr));
        }
        if s.contains('/') {
            return Ok(MetricsAddr::Unix(PathBuf::from(s)));
        }
        Err(MetricsServerError::BadAddr(s.to_owned()))
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "http://{a}/metrics"),
            MetricsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The running exporter. Dropping it stops serving (and removes its unix
/// socket).
#[derive(Debug)]
pub struct MetricsServer {
    addr: MetricsAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` now (so a taken port fails the start, before mounting)
    /// and serves `telemetry` on `runtime` until dropped.
    ///
    /// A unix socket path left by a daemon that died is replaced; one that
    /// another process still answers on is refused.
    pub fn start(
        addr: &MetricsAddr,
        telemetry: Arc<MountTelemetry>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<MetricsServer, MetricsServerError> {
        let registry = Arc::new(prometheus::registry(telemetry));
        let _guard = runtime.enter();
        let bind_err = |source| MetricsServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        let (addr, task) = match addr {
            MetricsAddr::Tcp(a) => {
                let std = std::net::TcpListener::bind(a).map_err(bind_err)?;
                std.set_nonblocking(true).map_err(bind_err)?;
                let bound = MetricsAddr::Tcp(std.local_addr().map_err(bind_err)?);
                let listener = tokio::net::TcpListener::from_std(std).map_err(bind_err)?;
                let task = runtime.spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => serve(stream, Arc::clone(&registry)),
                            Err(e) => accept_failed(e).await,
                        }
                    }
                });
                (bound, task)
            }
            MetricsAddr::Unix(path) => {
                remove_stale_socket(path, addr)?;
                let std = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
                std.set_nonblocking(true).map_err(bind_err)?;
                let listener = tokio::net::UnixListener::from_std(std).map_err(bind_err)?;
                let task = runtime.spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => serve(stream, Arc::clone(&registry)),
                            Err(e) => accept_failed(e).await,
                        }
                    }
                });
                (addr.clone(), task)
            }
        };
        Ok(MetricsServer { addr, task })
    }

    /// Where it listens (with the actual port when port 0 was asked for).
    pub fn addr(&self) -> &MetricsAddr {
        &self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
        if let MetricsAddr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket file nobody answers on is what a killed daemon leaves behind.
fn remove_stale_socket(path: &Path, addr: &MetricsAddr) -> Result<(), MetricsServerError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        // Not ours to delete: let bind report EADDRINUSE with the path.
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(MetricsServerError::SocketInUse {
            addr: addr.to_string(),
        });
    }
    std::fs::remove_file(path).map_err(|source| MetricsServerError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// Out of descriptors and the like: say so and back off rather than spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("metrics server cannot accept a connection: {e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn serve<S>(stream: S, registry: Arc<Registry>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req| answer(req, Arc::clone(&registry)));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        if let Err(e) = conn.await {
            tracing::debug!("metrics connection ended: {e}");
        }
    });
}

async fn answer(
    req: Request<Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: Bytes| {
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(content_type) {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        resp
    };
    let text = "text/plain; charset=utf-8";
    // Prometheus asks for OpenMetrics; anything else gets the classic text.
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let encode = || {
        if openmetrics {
            prometheus::encode(&registry).map(|b| (prometheus::CONTENT_TYPE, b))
        } else {
            prometheus::encode_text_0_0_4(&registry).map(|b| (prometheus::TEXT_CONTENT_TYPE, b))
        }
    };
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => match encode() {
            Ok((content_type, body)) => reply(StatusCode::OK, content_type, Bytes::from(body)),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                text,
                Bytes::from_static(b"cannot encode metrics\n"),
            ),
        },
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            Bytes::from_static(b"only GET /metrics\n"),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            Bytes::from_static(b"zvmount serves Prometheus metrics on /metrics\n"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "127.0.0.1:9917".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Tcp("127.0.0.1:9917".parse().unwrap())
        );
        assert_eq!(
            "[::1]:9917".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Tcp("[::1]:9917".parse().unwrap())
        );
        assert_eq!(
            "/run/zv/m.sock".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Unix("/run/zv/m.sock".into())
        );
        assert_eq!(
            "unix:m.sock".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Unix("m.sock".into())
        );
        for bad in ["9917", "localhost", "unix:", ""] {
            let err = bad.parse::<MetricsAddr>().unwrap_err().to_string();
            assert!(err.contains("expected IP:PORT"), "{bad}: {err}");
        }
    }
}
