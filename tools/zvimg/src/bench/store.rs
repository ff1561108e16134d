//! `zvimg bench store SOURCE`: how fast a store answers, through the same
//! stack the daemon uses (`open_source`: backend + retries + concurrency cap).
//!
//! Three runs: small "probe" GETs one after another (their latency is
//! time-to-first-byte plus a few KiB, i.e. what one serial cache miss costs),
//! then large GETs sequentially and with `--parallel` in flight (throughput).
//! Offsets are random and aligned to the GET size, so a server-side cache of
//! one region does not flatter the figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use serde::Serialize;
use zvmount::cli::StoreArgs;
use zvmount::util::parse_size;
use zvstore::{ObjectStore, open_source};

/// Flags of `zvimg bench store`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Object to read: a local path, s3://BUCKET/KEY or an https:// URL.
    pub source: String,
    /// Region, endpoint, credentials and timeouts of the store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Bytes per throughput GET.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub size: u64,
    /// GETs per run (probes, sequential, parallel).
    #[arg(long, default_value_t = 64)]
    pub count: usize,
    /// GETs in flight in the parallel run.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Bytes per latency probe.
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    pub probe_size: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Latency and throughput of one run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Bytes per GET.
    pub get_size: u64,
    /// GETs made.
    pub gets: usize,
    /// GETs in flight at once.
    pub in_flight: usize,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
    /// Throughput in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// Median GET latency (to the last byte), ms.
    pub p50_ms: f64,
    /// 99th percentile GET latency, ms.
    pub p99_ms: f64,
    /// Slowest GET, ms.
    pub max_ms: f64,
}

/// Everything `bench store` measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The object, as the store prints it (no credentials).
    pub location: String,
    /// Its size in bytes.
    pub object_size: u64,
    /// Latency of one HEAD, ms.
    pub head_ms: f64,
    /// Small GETs one at a time: latency.
    pub probe: RunReport,
    /// Large GETs one at a time: single-stream throughput.
    pub sequential: RunReport,
    /// Large GETs `--parallel` at a time: aggregate throughput.
    pub parallel: RunReport,
}

/// Runs the benchmark and prints the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Runs the benchmark and returns the figures.
pub async fn measure(args: &Args) -> anyhow::Result<Report> {
    if args.count == 0 || args.parallel == 0 || args.size == 0 || args.probe_size == 0 {
        bail!("--count, --parallel, --size and --probe-size must be positive");
    }
    let (store, key) = open_source(&args.source, &args.store.to_config())
        .await
        .with_context(|| format!("opening {}", args.source))?;
    let t = Instant::now();
    let meta = store.head(&key).await?;
    let head_ms = ms(t.elapsed());
    if meta.size < args.size || meta.size < args.probe_size {
        bail!(
            "{}: object has {} bytes, smaller than one GET; use a larger object or a smaller --size",
            store.location(&key),
            meta.size
        );
    }
    let meta = Arc::new(meta);
    let probe = timed_gets(&store, &key, &meta, args.probe_size, args.count, 1).await?;
    let sequential = timed_gets(&store, &key, &meta, args.size, args.count, 1).await?;
    let parallel = timed_gets(&store, &key, &meta, args.size, args.count, args.parallel).await?;
    Ok(Report {
        location: store.location(&key),
        object_size: meta.size,
        head_ms,
        probe,
        sequential,
        parallel,
    })
}

/// `count` GETs of `size` bytes at random aligned offsets, `in_flight` at a time.
async fn timed_gets(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    meta: &Arc<zvstore::ObjectMeta>,
    size: u64,
    count: usize,
    in_flight: usize,
) -> anyhow::Result<RunReport> {
    let slots = meta.size / size;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight.min(count) {
        let (store, key, meta, next) = (store.clone(), key.to_string(), meta.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let start = rand::thread_rng().gen_range(0..slots) * size;
                let t = Instant::now();
                let bytes = store
                    .get_range(&key, start..start + size, Some(&meta))
                    .await?;
                latencies.push(t.elapsed());
                anyhow::ensure!(bytes.len() as u64 == size, "short read");
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(count);
    while let Some(r) = workers.join_next().await {
        latencies.extend(r.context("benchmark worker panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |q: f64| ms(latencies[((latencies.len() - 1) as f64 * q).round() as usize]);
    Ok(RunReport {
        get_size: size,
        gets: latencies.len(),
        in_flight,
        seconds,
        mb_per_s: (size as f64 * latencies.len() as f64) / seconds / 1e6,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_report(r: &Report) {
    println!(
        "{} ({} bytes), HEAD {:.2} ms",
        r.location, r.object_size, r.head_ms
    );
    for (name, run) in [
        ("probe (TTFB)", &r.probe),
        ("sequential", &r.sequential),
        ("parallel", &r.parallel),
    ] {
        println!(
            "{name:>13}: {} GETs x {} B, {} in flight: {:8.1} MB/s  p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms",
            run.gets, run.get_size, run.in_flight, run.mb_per_s, run.p50_ms, run.p99_ms, run.max_ms
        );
    }
}
