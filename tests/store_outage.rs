//! Stores that fail or go stale while in use, over real parts on 127.0.0.1:
//!
//! - a 503 storm in front of the real s3s-fs (a small gate that answers
//!   `503 SlowDown` while "down" and forwards to the server while "up"):
//!   hundreds of waiting reads cost a bounded number of requests per second,
//!   counted at the gate, and all return the right bytes afterwards;
//! - an HTTP source that redirects to signed targets which expire after a
//!   moment keeps working; a presigned URL given directly that expires
//!   gives an error naming its expiry; a `200` with an exact
//!   `Content-Range` (P2P proxies) is accepted, a wrong one named;
//! - a fake S3 endpoint answering "wrong region" and "request time too
//!   skewed" gives the messages that say what to do.
//!
//! The fake servers here are test-only protocol stand-ins in front of (or
//! beside) the real code path; they add fault cases, they replace nothing.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::s3::{S3Server, unique_bucket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zvstore::outage::OutageStats;
use zvstore::{StoreConfig, StoreError, open_source};

// ---- a tiny HTTP/1.1 server: one request per connection ------------------

/// One request as the fake servers see it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// Path and query, as sent.
    target: String,
    headers: HashMap<String, String>,
    /// The whole request head, as sent (to forward it).
    head: Vec<u8>,
}

impl Request {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }
    fn query(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
    }
}

/// An answer: status line text, headers, body.
struct Reply(&'static str, Vec<String>, Vec<u8>);

type Handler =
    Arc<dyn Fn(Request) -> futures::future::BoxFuture<'static, Vec<u8>> + Send + Sync + 'static>;

/// Serves `handler` on a free port; counts requests.
async fn serve(handler: Handler) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (handler, c) = (Arc::clone(&handler), Arc::clone(&c));
            tokio::spawn(async move {
                let Some(req) = read_request(&mut sock).await else {
                    return;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let out = handler(req).await;
                let _ = sock.write_all(&out).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, count)
}

async fn read_request(sock: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 << 10 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Request {
        method,
        target,
        headers,
        head: buf,
    })
}

fn render(Reply(status, headers, body): Reply, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        out.push_str(&h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(&body);
    }
    out
}

/// Answers a GET/HEAD of `data` honouring `Range: bytes=a-b`.
fn ranged(req: &Request, data: &[u8], etag: &str) -> Reply {
    let size = data.len();
    let mut headers = vec![format!("ETag: {etag}")];
    let Some(spec) = req
        .headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
    else {
        return Reply("200 OK", headers, data.to_vec());
    };
    let (a, b) = spec.split_once('-').unwrap();
    let (a, b): (usize, usize) = if a.is_empty() {
        let n: usize = b.parse().unwrap();
        (size.saturating_sub(n), size)
    } else {
        let a: usize = a.parse().unwrap();
        let b = if b.is_empty() {
            size
        } else {
            (b.parse::<usize>().unwrap() + 1).min(size)
        };
        (a, b)
    };
    headers.push(format!("Content-Range: bytes {a}-{}/{size}", b - 1));
    Reply("206 Partial Content", headers, data[a..b].to_vec())
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---- 503 storm --------------------------------------------------------------

/// In front of the real server: while `down`, every request gets `503
/// SlowDown`; otherwise it is forwarded (with `Connection: close`, so one
/// request per connection) and the server's answer relayed.
async fn gate(upstream: u16, down: Arc<AtomicBool>) -> (u16, Arc<AtomicU64>) {
    let handler: Handler = Arc::new(move |req: Request| {
        let down = Arc::clone(&down);
        Box::pin(async move {
            if down.load(Ordering::SeqCst) {
                let body = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>".to_vec();
                return render(
                    Reply(
                        "503 Slow Down",
                        vec!["Content-Type: application/xml".into()],
                        body,
                    ),
                    req.method == "HEAD",
                );
            }
            let mut head = req.head.clone();
            // Ask the server to close after answering, so the relay below
            // ends with the answer. (Connection is not a signed header.)
            let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            head.splice(end + 2..end + 2, b"Connection: close\r\n".iter().copied());
            let mut up = TcpStream::connect(("127.0.0.1", upstream)).await.unwrap();
            up.write_all(&head).await.unwrap();
            let mut answer = Vec::new();
            let _ = up.read_to_end(&mut answer).await;
            answer
        })
    });
    let (addr, count) = serve(handler).await;
    (addr.port(), count)
}

/// Readers with an --io-timeout of their own keep arriving during an
/// outage: near its deadline a read may probe early, but only once between
/// two paced probes, so the store still sees a few requests a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_near_their_deadlines_do_not_storm_the_store() {
    let server = S3Server::start();
    let bucket = unique_bucket("deadlines");
    server.create_bucket(&bucket).await;
    server.put_bytes(&bucket, "obj", payload(4096)).await;
    let down = Arc::new(AtomicBool::new(true));
    let (port, requests) = gate(server.port(), Arc::clone(&down)).await;
    let args = StoreConfig {
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        io_timeout: Duration::from_millis(500),
        retries: None,
        ..server.store_config()
    };
    let (store, key) = open_source(&format!("s3://{bucket}/obj"), &args)
        .await
        .unwrap();
    // One reader after another for 4 s, each giving up after 0.5 s.
    let started = std::time::Instant::now();
    let mut reads = 0;
    while started.elapsed() < Duration::from_secs(4) {
        assert!(store.get_range(&key, 0..4096, None).await.is_err());
        reads += 1;
    }
    let sent = requests.load(Ordering::SeqCst);
    eprintln!("{reads} reads, {sent} requests in 4 s of outage");
    // Paced probes (one to two a second at most) plus at most one early
    // probe between two of them.
    assert!(sent <= 24, "{sent} requests from {reads} reads in 4 s");
    down.store(false, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_costs_a_few_requests_per_second() {
    const READS: u64 = 300;
    const LEN: u64 = 4096;
    let server = S3Server::start();
    let bucket = unique_bucket("storm");
    let data = payload((READS * LEN) as usize);
    server.create_bucket(&bucket).await;
    server.put_bytes(&bucket, "obj", data.clone()).await;

    let down = Arc::new(AtomicBool::new(true));
    let (port, requests) = gate(server.port(), Arc::clone(&down)).await;
    let stats = Arc::new(OutageStats::default());
    let args = StoreConfig {
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        io_timeout: Duration::ZERO,
        retries: None,
        outage_stats: Some(Arc::clone(&stats)),
        ..server.store_config()
    };
    let (store, key) = open_source(&format!("s3://{bucket}/obj"), &args)
        .await
        .unwrap();

    // Hundreds of readers arrive during the storm.
    let reads: Vec<_> = (0..READS)
        .map(|i| {
            let (store, key) = (Arc::clone(&store), key.clone());
            tokio::spawn(async move { store.get_range(&key, i * LEN..(i + 1) * LEN, None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let in_window = requests.load(Ordering::SeqCst) - settled;
    eprintln!("storm: {settled} requests in the first 2 s, {in_window} in the next 5 s");
    // The first wave is capped by --max-requests (64); after it, one probe
    // at a time, one to two a second (max_delay 1 s).
    assert!(
        settled <= 64 + 10,
        "{settled} requests in the first 2 s of the storm"
    );
    assert!(
        in_window <= 12,
        "{in_window} requests in 5 s of storm with {READS} reads waiting"
    );

    down.store(false, Ordering::SeqCst);
    for (i, r) in reads.into_iter().enumerate() {
        let got = r.await.unwrap().unwrap();
        let i = i as u64;
        assert!(
            got[..] == data[(i * LEN) as usize..((i + 1) * LEN) as usize],
            "read {i}: wrong bytes"
        );
    }
    assert_eq!(stats.outages.load(Ordering::Relaxed), 1);
    assert!(stats.reads_waited.load(Ordering::Relaxed) >= READS - 64);
}

#[tokio::test]
async fn a_permanent_failure_is_not_waited_for() {
    let server = S3Server::start();
    let bucket = unique_bucket("perm");
    server.create_bucket(&bucket).await;
    let args = StoreConfig {
        io_timeout: Duration::ZERO,
        retries: None,
        ..server.store_config()
    };
    let (store, key) = open_source(&format!("s3://{bucket}/missing"), &args)
        .await
        .unwrap();
    // With --io-timeout 0 (wait forever), only a fast failure ends this.
    let err = store.get_range(&key, 0..10, None).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

// ---- HTTP: redirects to expiring signed URLs, presigned expiry, proxies ------

/// An origin that redirects `/disk` to `/signed/disk?exp=UNIX&sig=…`, valid
/// for `ttl`; a signed URL past its `exp` gets 403 "Request has expired".
/// `/presigned/disk?X-Amz-Date=…&X-Amz-Expires=…` is served until it
/// expires. `/p2p/disk` answers ranges with 200 + Content-Range, and
/// `/badproxy/disk` with 200 + the wrong Content-Range.
struct Origin {
    base: String,
    requests: Arc<AtomicU64>,
    redirects: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

const EXPIRED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";

async fn origin(data: Arc<Vec<u8>>, ttl: Duration) -> Origin {
    let redirects = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let (r, f) = (Arc::clone(&redirects), Arc::clone(&refused));
    let handler: Handler = Arc::new(move |req: Request| {
        let (data, r, f) = (Arc::clone(&data), Arc::clone(&r), Arc::clone(&f));
        Box::pin(async move {
            let head = req.method == "HEAD";
            let reply = match req.path() {
                "/disk" => {
                    r.fetch_add(1, Ordering::SeqCst);
                    let exp = unix_now() + ttl.as_secs();
                    Reply(
                        "302 Found",
                        vec![format!(
                            "Location: /signed/disk?exp={exp}&sig=0123456789abcdef"
                        )],
                        vec![],
                    )
                }
                "/signed/disk" => {
                    let exp: u64 = req.query("exp").and_then(|e| e.parse().ok()).unwrap_or(0);
                    if unix_now() >= exp {
                        f.fetch_add(1, Ordering::SeqCst);
                        Reply("403 Forbidden", vec![], EXPIRED.into())
                    } else {
                        ranged(&req, &data, "\"v1\"")
                    }
                }
                "/presigned/disk" => {
                    let date = req.query("X-Amz-Date").unwrap_or_default();
                    let secs: u64 = req
                        .query("X-Amz-Expires")
                        .and_then(|e| e.parse().ok())
                        .unwrap_or(0);
                    if amz_date_to_unix(&date) + secs <= unix_now() {
                        f.fetch_add(1, Ordering::SeqCst);
                        Reply("403 Forbidden", vec![], EXPIRED.into())
                    } else {
                        ranged(&req, &data, "\"v1\"")
                    }
                }
                "/p2p/disk" | "/badproxy/disk" => {
                    let mut reply = ranged(&req, &data, "\"v1\"");
                    if reply.0.starts_with("206") {
                        reply.0 = "200 OK";
                        if req.path() == "/badproxy/disk" {
                            // Claims the bytes right after the ones asked for.
                            for h in &mut reply.1 {
                                if let Some(cr) = h.strip_prefix("Content-Range: bytes ") {
                                    let (span, size) = cr.split_once('/').unwrap();
                                    let (a, b) = span.split_once('-').unwrap();
                                    let (a, b): (u64, u64) =
                                        (a.parse().unwrap(), b.parse().unwrap());
                                    *h = format!("Content-Range: bytes {}-{}/{size}", a + 1, b + 1);
                                }
                            }
                        }
                    }
                    reply
                }
                _ => Reply("404 Not Found", vec![], vec![]),
            };
            render(reply, head)
        })
    });
    let (addr, requests) = serve(handler).await;
    Origin {
        base: format!("http://{addr}"),
        requests,
        redirects,
        refused,
    }
}

/// `YYYYMMDDTHHMMSSZ` → seconds since the epoch (days from civil date).
fn amz_date_to_unix(v: &str) -> u64 {
    if v.len() != 16 {
        return 0;
    }
    let n = |a: usize, b: usize| v[a..b].parse::<i64>().unwrap_or(0);
    let (y, m, d) = (n(0, 4), n(4, 6), n(6, 8));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + n(9, 11) * 3600 + n(11, 13) * 60 + n(13, 15)) as u64
}

fn unix_to_amz_date(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[tokio::test]
async fn an_expiring_redirect_target_is_renewed_from_the_original_url() {
    let data = Arc::new(payload(1 << 20));
    let o = origin(Arc::clone(&data), Duration::from_secs(2)).await;
    let (store, key) = open_source(&format!("{}/disk", o.base), &StoreConfig::default())
        .await
        .unwrap();
    for i in 0..5u64 {
        let got = store
            .get_range(&key, i * 1000..i * 1000 + 500, None)
            .await
            .unwrap();
        assert!(got[..] == data[(i * 1000) as usize..(i * 1000 + 500) as usize]);
    }
    assert_eq!(
        o.redirects.load(Ordering::SeqCst),
        1,
        "the redirect target is cached"
    );
    // Past the target's expiry: one refusal, one new redirect, right bytes.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let got = store.get_range(&key, 4096..8192, None).await.unwrap();
    assert!(got[..] == data[4096..8192]);
    assert_eq!(o.refused.load(Ordering::SeqCst), 1);
    assert_eq!(o.redirects.load(Ordering::SeqCst), 2);
    assert!(o.requests.load(Ordering::SeqCst) <= 1 + 5 + 3);
}

#[tokio::test]
async fn a_presigned_url_that_expires_names_its_expiry() {
    let data = Arc::new(payload(64 << 10));
    let o = origin(Arc::clone(&data), Duration::from_secs(60)).await;
    let signed_at = unix_now();
    let url = format!(
        "{}/presigned/disk?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={}&X-Amz-Expires=2&X-Amz-Signature=feed",
        o.base,
        unix_to_amz_date(signed_at)
    );
    let (store, key) = open_source(&url, &StoreConfig::default()).await.unwrap();
    let got = store.get_range(&key, 0..100, None).await.unwrap();
    assert!(got[..] == data[..100]);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let err = store.get_range(&key, 0..100, None).await.unwrap_err();
    assert!(matches!(err, StoreError::Forbidden { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("presigned URL expired at"), "{msg}");
    assert!(!msg.contains("feed"), "the signature leaked: {msg}");
    assert!(msg.contains("X-Amz-Expires"), "{msg}");
}

#[tokio::test]
async fn a_200_with_the_exact_content_range_is_accepted() {
    let data = Arc::new(payload(64 << 10));
    let o = origin(Arc::clone(&data), Duration::from_secs(60)).await;
    let (store, key) = open_source(&format!("{}/p2p/disk", o.base), &StoreConfig::default())
        .await
        .unwrap();
    let got = store.get_range(&key, 100..5000, None).await.unwrap();
    assert!(got[..] == data[100..5000]);

    let (store, key) = open_source(
        &format!("{}/badproxy/disk", o.base),
        &StoreConfig::default(),
    )
    .await
    .unwrap();
    let err = store.get_range(&key, 100..5000, None).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("proxy"), "{msg}");
    assert!(msg.contains("instead of the range asked for"), "{msg}");
}

// ---- S3: wrong region, clock skew ------------------------------------------

/// A fake S3 endpoint that answers every request with `reply`.
async fn fake_s3(
    reply: impl Fn(&Request) -> Reply + Send + Sync + 'static,
) -> (String, Arc<AtomicU64>) {
    let reply = Arc::new(reply);
    let handler: Handler = Arc::new(move |req: Request| {
        let out = render(reply(&req), req.method == "HEAD");
        Box::pin(async move { out })
    });
    let (addr, count) = serve(handler).await;
    (format!("http://{addr}"), count)
}

fn fake_args(endpoint: String) -> StoreConfig {
    StoreConfig {
        endpoint_url: Some(endpoint),
        // Permanent answers must not wait; a bug that waited would hang here.
        io_timeout: Duration::from_secs(30),
        retries: None,
        ..S3Server::start().store_config()
    }
}

#[tokio::test]
async fn a_bucket_in_another_region_says_which() {
    // HEAD: 301 with no body, the region in a header.
    let (endpoint, _) = fake_s3(|_| {
        Reply(
            "301 Moved Permanently",
            vec!["x-amz-bucket-region: eu-west-1".into()],
            vec![],
        )
    })
    .await;
    let (store, key) = open_source("s3://far-bucket/disk.zvhd2", &fake_args(endpoint))
        .await
        .unwrap();
    let err = store.head(&key).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("is in eu-west-1: pass --region eu-west-1"),
        "{msg}"
    );

    // GET: 400 AuthorizationHeaderMalformed naming the expected region.
    let (endpoint, _) = fake_s3(|_| {
        Reply(
            "400 Bad Request",
            vec!["Content-Type: application/xml".into()],
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'ap-southeast-2'</Message><Region>ap-southeast-2</Region></Error>".to_vec(),
        )
    })
    .await;
    let (store, key) = open_source("s3://far-bucket/disk.zvhd2", &fake_args(endpoint))
        .await
        .unwrap();
    let err = store.get_range(&key, 0..10, None).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("pass --region ap-southeast-2"), "{msg}");
}

#[tokio::test]
async fn a_skewed_clock_is_retried_once_then_named() {
    // The store's clock is an hour ahead of ours.
    let server_time = SystemTime::now() + Duration::from_secs(3600);
    let date = httpdate(server_time);
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = Arc::clone(&seen);
    let (endpoint, count) = fake_s3(move |req| {
        s.lock()
            .unwrap()
            .push(req.headers.get("x-amz-date").cloned().unwrap_or_default());
        Reply(
            "403 Forbidden",
            vec![
                "Content-Type: application/xml".into(),
                format!("Date: {date}"),
            ],
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time and the current time is too large.</Message><MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds></Error>".to_vec(),
        )
    })
    .await;
    let (store, key) = open_source("s3://b/disk.zvhd2", &fake_args(endpoint))
        .await
        .unwrap();
    let err = store.get_range(&key, 0..10, None).await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(count.load(Ordering::SeqCst), 2, "retried exactly once");
    let seen = seen.lock().unwrap();
    assert_ne!(
        seen[0], seen[1],
        "the retry was signed with the SDK's corrected clock"
    );
    assert!(msg.contains("host clock is"), "{msg}");
    assert!(msg.contains("behind the store's"), "{msg}");
    let off: f64 = msg
        .split("host clock is ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {msg}"));
    assert!((3500.0..3700.0).contains(&off), "{msg}");
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for `t`.
fn httpdate(t: SystemTime) -> String {
    aws_sdk_s3::primitives::DateTime::from(t)
        .fmt(aws_sdk_s3::primitives::DateTimeFormat::HttpDate)
        .unwrap()
}
