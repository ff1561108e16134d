//! A shaping TCP proxy on 127.0.0.1, so a benchmark against a store on
//! loopback sees object-storage-like first-byte latency and bandwidth,
//! repeatably.
//!
//! It forwards every connection to one upstream address and, per
//! connection, treats each burst of client→upstream bytes as a request
//! (HTTP/1.1 without pipelining, which is how S3 clients talk): the first
//! response byte after a request is held until `latency` has passed since
//! the request began. Bytes in each direction pass through a token bucket
//! shared by all connections (a full-duplex link of `bytes_per_sec` each
//! way). It records every request's timing for latency histograms.
//!
//! The proxy owns a small tokio runtime of its own, so synchronous code
//! can start one, and so its pacing doesn't compete with the caller's tasks.
//! It must not inspect or change the bytes it forwards.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Largest piece moved (and paced) at once: small enough that pacing is
/// smooth at tens of MB/s, large enough to keep per-chunk overhead low.
const CHUNK: usize = 64 * 1024;

/// How a [`ShapingProxy`] shapes traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shaping {
    /// Least time from the start of a request to the first byte of its
    /// response (an upstream slower than this is not slowed further).
    pub latency: Duration,
    /// Link rate in each direction; 0 means unlimited.
    pub bytes_per_sec: u64,
}

/// One request seen by the proxy: when it started, when its first response
/// byte was forwarded, when its last one was, and how many bytes answered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestTiming {
    /// Time from the request's first byte to the response's first byte.
    pub first_byte: Duration,
    /// Time from the request's first byte to the response's last byte.
    pub total: Duration,
    /// Response bytes forwarded.
    pub bytes: u64,
}

/// Counters of a proxy since it started (or since [`ShapingProxy::reset`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Requests (client→upstream bursts) seen.
    pub requests: u64,
    /// Bytes forwarded client→upstream.
    pub bytes_up: u64,
    /// Bytes forwarded upstream→client.
    pub bytes_down: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    timings: Mutex<Vec<RequestTiming>>,
}

/// A running proxy; stops (dropping open connections) when dropped.
pub struct ShapingProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ShapingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShapingProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ShapingProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr, shaping: Shaping) -> io::Result<ShapingProxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("zvimg-proxy")
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(("127.0.0.1", 0)))?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let up_bucket = Arc::new(TokenBucket::new(shaping.bytes_per_sec));
        let down_bucket = Arc::new(TokenBucket::new(shaping.bytes_per_sec));
        let c = Arc::clone(&counters);
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                c.connections.fetch_add(1, Ordering::Relaxed);
                let conn = Connection {
                    counters: Arc::clone(&c),
                    up_bucket: Arc::clone(&up_bucket),
                    down_bucket: Arc::clone(&down_bucket),
                    latency: shaping.latency,
                    state: Arc::new(Mutex::new(ConnState::default())),
                };
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        conn.run(client, server).await;
                    }
                });
            }
        });
        Ok(ShapingProxy {
            addr,
            counters,
            runtime: Some(runtime),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ProxyStats {
            connections: g(&self.counters.connections),
            requests: g(&self.counters.requests),
            bytes_up: g(&self.counters.bytes_up),
            bytes_down: g(&self.counters.bytes_down),
        }
    }

    /// Timings of the requests whose responses are complete (a response
    /// counts as complete when the next request on its connection starts or
    /// the connection closes).
    pub fn timings(&self) -> Vec<RequestTiming> {
        self.counters
            .timings
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// Zeroes the counters and forgets the timings, so one proxy can serve
    /// several measured phases.
    pub fn reset(&self) {
        for c in [
            &self.counters.connections,
            &self.counters.requests,
            &self.counters.bytes_up,
            &self.counters.bytes_down,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        if let Ok(mut t) = self.counters.timings.lock() {
            t.clear();
        }
    }
}

impl Drop for ShapingProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so a proxy may be dropped inside async code too.
            rt.shutdown_background();
        }
    }
}

/// The request currently being answered on one connection.
#[derive(Default)]
struct ConnState {
    /// Set when a request starts; cleared into `timings` when the next
    /// one starts or the connection ends.
    current: Option<Exchange>,
}

struct Exchange {
    started: Instant,
    first_byte: Option<Instant>,
    last_byte: Option<Instant>,
    bytes: u64,
    /// Whether the response has started; client bytes before that belong
    /// to the same request (a request body in several writes).
    answered: bool,
}

impl Exchange {
    fn timing(&self) -> Option<RequestTiming> {
        let first = self.first_byte?;
        let last = self.last_byte.unwrap_or(first);
        Some(RequestTiming {
            first_byte: first - self.started,
            total: last - self.started,
            bytes: self.bytes,
        })
    }
}

struct Connection {
    counters: Arc<Counters>,
    up_bucket: Arc<TokenBucket>,
    down_bucket: Arc<TokenBucket>,
    latency: Duration,
    state: Arc<Mutex<ConnState>>,
}

impl Connection {
    async fn run(self, client: TcpStream, server: TcpStream) {
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_r, client_w) = client.into_split();
        let (server_r, server_w) = server.into_split();
        let up = self.upstream(client_r, server_w);
        let down = self.downstream(server_r, client_w);
        tokio::pin!(up, down);
        // The client closing its side (after passing it on) still lets the
        // response finish; the server closing, or any error, ends both.
        tokio::select! {
            _ = &mut down => {}
            r = &mut up => {
                if r.is_ok() {
                    let _ = down.await;
                }
            }
        }
        self.finish_exchange(None);
    }

    /// Moves the current exchange's timing into the shared list and, when
    /// `next` is given, starts a new exchange.
    fn finish_exchange(&self, next: Option<Instant>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some(timing) = st.current.as_ref().and_then(Exchange::timing)
            && let Ok(mut t) = self.counters.timings.lock()
        {
            t.push(timing);
        }
        st.current = next.map(|started| Exchange {
            started,
            first_byte: None,
            last_byte: None,
            bytes: 0,
            answered: false,
        });
    }

    async fn upstream(&self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return to.shutdown().await;
            }
            let new_request = match self.state.lock() {
                Ok(st) => st.current.as_ref().is_none_or(|ex| ex.answered),
                Err(_) => true,
            };
            if new_request {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                self.finish_exchange(Some(Instant::now()));
            }
            self.up_bucket.take(n as u64).await;
            to.write_all(&buf[..n]).await?;
            self.counters
                .bytes_up
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    async fn downstream(&self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            // The first byte of a response waits out the request's latency.
            let hold_until = match self.state.lock() {
                Ok(mut st) => match st.current.as_mut() {
                    Some(ex) if !ex.answered => {
                        ex.answered = true;
                        Some(ex.started + self.latency)
                    }
                    _ => None,
                },
                Err(_) => None,
            };
            if let Some(t) = hold_until {
                tokio::time::sleep_until(t.into()).await;
            }
            self.down_bucket.take(n as u64).await;
            to.write_all(&buf[..n]).await?;
            self.counters
                .bytes_down
                .fetch_add(n as u64, Ordering::Relaxed);
            let now = Instant::now();
            if let Ok(mut st) = self.state.lock()
                && let Some(ex) = st.current.as_mut()
            {
                ex.first_byte.get_or_insert(now);
                ex.last_byte = Some(now);
                ex.bytes += n as u64;
            }
        }
    }
}

/// A token bucket that lets callers run into debt: `take` returns once the
/// bytes it took would have been earned at `rate`, so a stream of takes
/// averages `rate` however large each piece is.
struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    state: Mutex<BucketState>,
}

struct BucketState {
    /// Bytes available (negative: owed).
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64) -> TokenBucket {
        TokenBucket {
            rate,
            state: Mutex::new(BucketState {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// A burst of 10 ms at the rate (at least one chunk): idle time earns
    /// no more than that, so a pause does not buy an unshaped burst.
    fn burst(&self) -> f64 {
        (self.rate as f64 / 100.0).max(CHUNK as f64)
    }

    async fn take(&self, n: u64) {
        if self.rate == 0 {
            return;
        }
        let wait = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            let now = Instant::now();
            let earned = (now - st.last).as_secs_f64() * self.rate as f64;
            st.tokens = (st.tokens + earned).min(self.burst());
            st.last = now;
            st.tokens -= n as f64;
            if st.tokens >= 0.0 {
                None
            } else {
                Some(Duration::from_secs_f64(-st.tokens / self.rate as f64))
            }
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An upstream that answers each message (up to a newline) with
    /// `reply_len` bytes derived from it.
    fn echo_server(reply_len: usize) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                std::thread::spawn(move || {
                    let mut line = Vec::new();
                    let mut byte = [0u8; 1];
                    while let Ok(1) = s.read(&mut byte) {
                        if byte[0] != b'\n' {
                            line.push(byte[0]);
                            continue;
                        }
                        let reply = reply_for(&line, reply_len);
                        if s.write_all(&reply).is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        addr
    }

    fn reply_for(request: &[u8], len: usize) -> Vec<u8> {
        let seed = request
            .iter()
            .fold(7u32, |a, &b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        (0..len)
            .map(|i| (seed.wrapping_add((i as u32).wrapping_mul(2654435761)) >> 13) as u8)
            .collect()
    }

    #[test]
    fn bytes_pass_unchanged_and_are_counted() {
        let upstream = echo_server(300_000);
        let proxy = ShapingProxy::start(
            upstream,
            Shaping {
                latency: Duration::ZERO,
                bytes_per_sec: 0,
            },
        )
        .unwrap();
        let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        for msg in [&b"first"[..], b"second", b"third"] {
            s.write_all(msg).unwrap();
            s.write_all(b"\n").unwrap();
            let mut got = vec![0u8; 300_000];
            s.read_exact(&mut got).unwrap();
            assert!(
                got == reply_for(msg, 300_000),
                "reply to {:?} differs",
                String::from_utf8_lossy(msg)
            );
        }
        drop(s);
        let stats = proxy.stats();
        assert_eq!(stats.connections, 1);
        assert_eq!(stats.requests, 3);
        assert_eq!(stats.bytes_down, 900_000);
        assert_eq!(stats.bytes_up, "first\nsecond\nthird\n".len() as u64);
    }

    #[test]
    fn every_request_waits_at_least_the_latency() {
        let latency = Duration::from_millis(40);
        let upstream = echo_server(10);
        let proxy = ShapingProxy::start(
            upstream,
            Shaping {
                latency,
                bytes_per_sec: 0,
            },
        )
        .unwrap();
        let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        for _ in 0..3 {
            let t0 = Instant::now();
            s.write_all(b"ping\n").unwrap();
            let mut got = [0u8; 10];
            s.read_exact(&mut got).unwrap();
            assert!(t0.elapsed() >= latency, "answered in {:?}", t0.elapsed());
        }
        drop(s);
        // The proxy's own record agrees once the connection has closed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.timings().len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let timings = proxy.timings();
        assert_eq!(timings.len(), 3);
        assert!(
            timings
                .iter()
                .all(|t| t.first_byte >= latency && t.bytes == 10),
            "{timings:?}"
        );
    }

    #[test]
    fn bandwidth_is_capped() {
        // 1 MB at 4 MB/s takes at least ~250 ms (less the one burst allowed).
        let upstream = echo_server(1_000_000);
        let rate = 4_000_000;
        let proxy = ShapingProxy::start(
            upstream,
            Shaping {
                latency: Duration::ZERO,
                bytes_per_sec: rate,
            },
        )
        .unwrap();
        let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        let t0 = Instant::now();
        s.write_all(b"x\n").unwrap();
        let mut got = vec![0u8; 1_000_000];
        s.read_exact(&mut got).unwrap();
        let floor = Duration::from_secs_f64((1_000_000.0 - CHUNK as f64 * 2.0) / rate as f64);
        assert!(
            t0.elapsed() >= floor,
            "1 MB took {:?}, expected at least {floor:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn reset_zeroes_counters() {
        let upstream = echo_server(5);
        let proxy = ShapingProxy::start(
            upstream,
            Shaping {
                latency: Duration::ZERO,
                bytes_per_sec: 0,
            },
        )
        .unwrap();
        let mut s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        s.write_all(b"a\n").unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        proxy.reset();
        assert_eq!(proxy.stats(), ProxyStats::default());
    }
}
