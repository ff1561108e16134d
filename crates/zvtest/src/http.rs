//! A tiny HTTP/1.1 object server on 127.0.0.1 for tests of the `http`
//! backend: serves in-memory objects with `ETag`, honours `Range` (`a-b`,
//! `a-`, `-n`), `If-Match` (412) and HEAD, and can misbehave on demand
//! (refuse HEAD like a presigned URL, ignore `Range`, stall, cut bodies short).
//!
//! It runs on the test's tokio runtime and stops with it. Every response
//! closes its connection, which keeps the parser trivial.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the server misbehaves.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Answer HEAD with 403, as a URL presigned for GET does.
    pub refuse_head: bool,
    /// Answer every GET with 200 and the whole object.
    pub ignore_range: bool,
    /// Read the request, then never answer.
    pub stall: bool,
    /// Announce the full length but send only half the body, then close.
    pub truncate: bool,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, (Bytes, String)>,
    behaviour: Behaviour,
    versions: u64,
}

/// A running server.
pub struct HttpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicU64>,
}

impl HttpServer {
    /// Binds a free port and starts serving on the current tokio runtime.
    pub async fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let requests = Arc::new(AtomicU64::new(0));
        let (st, rq) = (state.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (st, rq) = (st.clone(), rq.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, st, rq).await;
                });
            }
        });
        HttpServer {
            addr,
            state,
            requests,
        }
    }

    /// `http://127.0.0.1:PORT/PATH` (`path` without a leading slash).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Stores (or replaces) the object at `/path`, with a fresh ETag.
    pub fn put(&self, path: &str, bytes: impl Into<Bytes>) {
        let mut s = self.state.lock().unwrap();
        s.versions += 1;
        let etag = format!("\"v{}\"", s.versions);
        s.objects.insert(format!("/{path}"), (bytes.into(), etag));
    }

    /// Changes how the server misbehaves from the next request on.
    pub fn set_behaviour(&self, b: Behaviour) {
        self.state.lock().unwrap().behaviour = b;
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Parsed `Range: bytes=…` against `size`: `Ok(None)` = no range,
/// `Err(())` = unsatisfiable.
fn parse_range(v: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let spec = v.trim().strip_prefix("bytes=").ok_or(())?;
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            size
        } else {
            (b.parse::<u64>().map_err(|_| ())? + 1).min(size)
        };
        if start >= size || start >= end {
            return Err(());
        }
        (start, end)
    };
    Ok(Some((start, end)))
}

async fn serve(
    mut sock: TcpStream,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 << 10 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();

    let (object, behaviour) = {
        let s = state.lock().unwrap();
        (s.objects.get(&path).cloned(), s.behaviour.clone())
    };
    if behaviour.stall {
        std::future::pending::<()>().await;
    }
    let reply = |status: &str, extra: Vec<String>, body: &[u8], announce: usize| {
        let mut head =
            format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {announce}\r\n");
        for h in extra {
            head.push_str(&h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    };
    let out = match object {
        None => reply("404 Not Found", vec![], b"", 0),
        Some(_) if method == "HEAD" && behaviour.refuse_head => {
            reply("403 Forbidden", vec![], b"", 0)
        }
        Some((data, etag)) => {
            let size = data.len() as u64;
            let tag = vec![format!("ETag: {etag}"), "Accept-Ranges: bytes".into()];
            let is_head = method == "HEAD";
            if headers
                .get("if-match")
                .is_some_and(|m| m != &etag && m != "*")
            {
                reply("412 Precondition Failed", vec![], b"", 0)
            } else {
                let range = match headers.get("range") {
                    Some(_) if behaviour.ignore_range => Ok(None),
                    Some(v) => parse_range(v, size),
                    None => Ok(None),
                };
                match range {
                    Err(()) => reply(
                        "416 Range Not Satisfiable",
                        vec![format!("Content-Range: bytes */{size}")],
                        b"",
                        0,
                    ),
                    Ok(r) => {
                        let (status, (a, b), mut extra) = match r {
                            Some((a, b)) => (
                                "206 Partial Content",
                                (a, b),
                                vec![format!("Content-Range: bytes {a}-{}/{size}", b - 1)],
                            ),
                            None => ("200 OK", (0, size), vec![]),
                        };
                        extra.extend(tag);
                        let body = &data[a as usize..b as usize];
                        let sent = if behaviour.truncate {
                            &body[..body.len() / 2]
                        } else {
                            body
                        };
                        reply(status, extra, if is_head { b"" } else { sent }, body.len())
                    }
                }
            }
        }
    };
    sock.write_all(&out).await?;
    sock.shutdown().await
}
