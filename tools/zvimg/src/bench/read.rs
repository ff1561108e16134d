//! `zvimg bench read TARGET`: fio-like read benchmark of one file — a file
//! in a zvmount mount or any raw file — with cold and warm passes.
//!
//! Patterns: random 4 KiB and 1 MiB reads at aligned offsets, one
//! sequential sweep in 1 MiB reads, and `miss`: one 4 KiB read in each of
//! `--count-miss` distinct blocks (kernel readahead off), so on a fresh
//! mount started with `--readahead 0 --prefetch-budget 0` every read is one
//! block miss. Passes, each over the same offsets:
//! - `cold`: after `posix_fadvise(DONTNEED)` (on a fresh mount: every read
//!   misses everything);
//! - `daemon`: page cache dropped again, so reads reach the daemon and hit
//!   its memory cache (only inside a mount);
//! - `warm`: straight again, from the kernel's page cache.
//!
//! Inside a mount, `.zvmount-stats.json` is read before and after each pass
//! to report what the store was asked for (and, for `miss`, how long the
//! daemon spent decoding and waiting). `--baseline SOURCE` times, in this
//! process and one at a time, what a miss must do at least: one range GET
//! of the record, its CRC32C and decode, the decoded block's BLAKE3 (the
//! checks zvmount makes when a sidecar is there) — for the same blocks the
//! `miss` pattern reads, when both are asked for.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use zvmount::cli::StoreArgs;
use zvmount::metrics::MetricsSnapshot;

use baseline::{BaselineResult, baseline, open_baseline, record_blocks};

mod baseline;

/// Flags of `zvimg bench read`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// File to read: `MOUNTPOINT/disk.raw` or a raw file.
    pub target: PathBuf,
    /// Random 4 KiB reads per pass.
    #[arg(long, default_value_t = 2000)]
    pub count_4k: usize,
    /// Random 1 MiB reads per pass.
    #[arg(long, default_value_t = 200)]
    pub count_1m: usize,
    /// Distinct blocks read by the `miss` pattern (at most the disk's).
    #[arg(long, default_value_t = 64)]
    pub count_miss: usize,
    /// Block size of the image, for the `miss` pattern (taken from the
    /// image with --baseline).
    #[arg(long, default_value = "2MiB", value_parser = zvmount::util::parse_size)]
    pub block_size: u64,
    /// Bytes of the sequential sweep (from offset 0; default: the whole
    /// file, at most 1 GiB).
    #[arg(long, value_parser = zvmount::util::parse_size)]
    pub seq_bytes: Option<u64>,
    /// Only these patterns (rand4k, rand1m, seq, miss); default all.
    #[arg(long, value_delimiter = ',')]
    pub patterns: Vec<String>,
    /// Threads issuing reads at once (queue depth).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Pause between one reader's reads, in µs (a guest computing between
    /// reads; gives the daemon idle time, as a boot does).
    #[arg(long, default_value_t = 0)]
    pub think_us: u64,
    /// Seed of the random offsets (same seed, same offsets).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Time one record GET + decode of this image alone (the cold-miss
    /// baseline), e.g. s3://bucket/disk.zvhd2.
    #[arg(long, value_name = "SOURCE")]
    pub baseline: Option<String>,
    /// Records timed for the baseline (without the `miss` pattern; with
    /// it, the blocks it reads).
    #[arg(long, default_value_t = 50)]
    pub baseline_count: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Instead of the passes above: the same fio jobs on TARGET and on
    /// this file (the hydrated image's cache file), see `bench::passthrough`.
    #[arg(long, value_name = "FILE")]
    pub fio_versus: Option<PathBuf>,
    /// Seconds of each random fio job (with --fio-versus).
    #[arg(long, default_value_t = 10)]
    pub fio_seconds: u64,
    /// Passes of each fio job on each side, order alternating; medians
    /// are reported (with --fio-versus).
    #[arg(long, default_value_t = 3)]
    pub fio_repeats: usize,
    /// Store settings for `--baseline`.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Latency and throughput of one pass.
#[derive(Debug, Serialize)]
pub struct PassResult {
    /// `rand4k`, `rand1m`, `seq` or `miss`.
    pub pattern: String,
    /// `cold`, `daemon` or `warm`.
    pub pass: String,
    /// Reads done.
    pub ops: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Wall time of the pass, in seconds.
    pub seconds: f64,
    /// Reads per second.
    pub iops: f64,
    /// Throughput in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// Median read latency, µs.
    pub p50_us: f64,
    /// 90th percentile read latency, µs.
    pub p90_us: f64,
    /// 99th percentile read latency, µs.
    pub p99_us: f64,
    /// 99.9th percentile read latency, µs.
    pub p999_us: f64,
    /// Slowest read, µs.
    pub max_us: f64,
    /// Store requests/bytes during the pass (inside a mount).
    pub store_requests: Option<u64>,
    /// Bytes fetched from the store during the pass (inside a mount).
    pub store_bytes: Option<u64>,
    /// Daemon time per block fetched during the pass (inside a mount):
    /// verify + decode, and demand reads' wait for missing blocks.
    pub decode_us_per_block: Option<f64>,
    /// Demand reads' wait for missing blocks per block fetched, µs (inside a mount).
    pub miss_wait_us_per_block: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    target: String,
    size: u64,
    in_mount: bool,
    jobs: usize,
    passes: Vec<PassResult>,
    baseline: Option<BaselineResult>,
}

/// Runs the benchmark and prints the results.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(file) = &args.fio_versus {
        let bytes = args.seq_bytes.unwrap_or(1 << 30);
        return super::passthrough::run(
            &args.target,
            file,
            bytes,
            args.fio_seconds,
            args.fio_repeats,
            args.json,
        );
    }
    let file = File::open(&args.target)
        .with_context(|| format!("cannot open {}", args.target.display()))?;
    let size = file.metadata()?.len();
    if size < 1 << 20 {
        bail!(
            "{} is {size} bytes; the benchmark needs at least 1 MiB",
            args.target.display()
        );
    }
    let stats_path = args.target.parent().map(|d| d.join(".zvmount-stats.json"));
    let stats_path = stats_path.filter(|p| p.exists());
    let want = |p: &str| args.patterns.is_empty() || args.patterns.iter().any(|x| x == p);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut passes = Vec::new();
    let jobs = args.jobs.max(1);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let opened = match &args.baseline {
        Some(source) => Some(rt.block_on(open_baseline(source, &args.store.to_config()))?),
        None => None,
    };
    let mut miss_blocks = Vec::new();
    let mut plans: Vec<(&str, Vec<(u64, usize)>)> = Vec::new();
    if want("rand4k") {
        plans.push((
            "rand4k",
            random_offsets(&mut rng, size, 4096, args.count_4k),
        ));
    }
    if want("rand1m") {
        plans.push((
            "rand1m",
            random_offsets(&mut rng, size, 1 << 20, args.count_1m),
        ));
    }
    if want("miss") {
        let block_size = opened
            .as_ref()
            .map_or(args.block_size, |o| u64::from(o.layout.header.block_size()));
        // Blocks with a record only, when the image is known: a zero block
        // is never a miss.
        let mut blocks: Vec<u64> = match &opened {
            Some(o) => record_blocks(&o.layout).map(|(b, _)| b).collect(),
            None => (0..size / block_size.max(1)).collect(),
        };
        blocks.shuffle(&mut rng);
        blocks.truncate(args.count_miss);
        // Somewhere in the first half of the block, 4 KiB aligned: any
        // readahead the kernel still does stays inside the block.
        let slots = (block_size / 2 / 4096).max(1);
        let ops = blocks
            .iter()
            .map(|&b| (b * block_size + rng.gen_range(0..slots) * 4096, 4096))
            .filter(|&(o, _)| o + 4096 <= size)
            .collect();
        miss_blocks = blocks;
        plans.push(("miss", ops));
    }
    if want("seq") {
        let total = args.seq_bytes.unwrap_or(size.min(1 << 30)).min(size);
        let ops = (0..total)
            .step_by(1 << 20)
            .map(|o| (o, ((1u64 << 20).min(total - o)) as usize))
            .collect();
        plans.push(("seq", ops));
    }
    for (pattern, ops) in &plans {
        // Sequential reads must stay in order per reader; split them in
        // contiguous runs rather than interleaving.
        let mut pass_names = vec!["cold"];
        if stats_path.is_some() {
            pass_names.push("daemon");
        }
        pass_names.push("warm");
        for pass in pass_names {
            if pass != "warm" {
                drop_page_cache(&file, size);
            }
            let before = stats_path.as_deref().and_then(read_stats);
            if *pattern == "miss" {
                // No kernel readahead: one read, one block, one request.
                advise(&file, size, libc::POSIX_FADV_RANDOM);
            }
            let think = Duration::from_micros(args.think_us);
            let (latencies, seconds, bytes) = run_ops(&file, ops, jobs, *pattern == "seq", think)?;
            advise(&file, size, libc::POSIX_FADV_NORMAL);
            let after = stats_path.as_deref().and_then(read_stats);
            let delta = before.zip(after);
            let mut result = summarize(pattern, pass, latencies, seconds, bytes);
            if let Some((b, a)) = &delta {
                result.store_requests = Some(a.store_requests - b.store_requests);
                result.store_bytes = Some(a.store_bytes - b.store_bytes);
                let fetched = a.blocks_fetched - b.blocks_fetched;
                if fetched > 0 {
                    let per = |ns: u64| ns as f64 / 1e3 / fetched as f64;
                    result.decode_us_per_block = Some(per(a.decode_ns - b.decode_ns));
                    result.miss_wait_us_per_block = Some(per(a.miss_wait_ns - b.miss_wait_ns));
                }
            }
            passes.push(result);
        }
    }

    let baseline = match &opened {
        Some(o) => {
            let blocks = if miss_blocks.is_empty() {
                let mut all: Vec<u64> = record_blocks(&o.layout).map(|(b, _)| b).collect();
                all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(args.seed));
                all.truncate(args.baseline_count);
                all
            } else {
                miss_blocks.clone()
            };
            let mut b = rt.block_on(baseline(o, &blocks))?;
            if let Some(p) = passes
                .iter()
                .find(|p| p.pattern == "miss" && p.pass == "cold")
            {
                b.miss_ratio_p50 = Some(p.p50_us / b.total_p50_us.max(1e-9));
                b.miss_ratio_kept_p50 = Some(p.p50_us / b.kept_total_p50_us.max(1e-9));
            }
            Some(b)
        }
        None => None,
    };
    let report = Report {
        target: args.target.display().to_string(),
        size,
        in_mount: stats_path.is_some(),
        jobs,
        passes,
        baseline,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// `count` reads of `len` bytes at `len`-aligned offsets, distinct where the
/// file is large enough (so a cold pass does not hit itself).
fn random_offsets(rng: &mut impl Rng, size: u64, len: u64, count: usize) -> Vec<(u64, usize)> {
    let slots = size / len;
    let mut offsets: Vec<u64> = if (count as u64) * 4 < slots {
        let mut set = std::collections::HashSet::new();
        while set.len() < count {
            set.insert(rng.gen_range(0..slots));
        }
        set.into_iter().collect()
    } else {
        (0..count).map(|_| rng.gen_range(0..slots)).collect()
    };
    offsets.shuffle(rng);
    offsets
        .into_iter()
        .map(|s| (s * len, len as usize))
        .collect()
}

fn drop_page_cache(file: &File, size: u64) {
    advise(file, size, libc::POSIX_FADV_DONTNEED);
}

fn advise(file: &File, size: u64, advice: libc::c_int) {
    // SAFETY: fadvise on an open descriptor; only a hint to the kernel.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, size as libc::off_t, advice) };
}

fn read_stats(path: &Path) -> Option<MetricsSnapshot> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Runs `ops` on `jobs` threads; returns per-op latencies, wall seconds and
/// bytes read. Every read must return its full length (the file is not
/// shorter than the plan).
fn run_ops(
    file: &File,
    ops: &[(u64, usize)],
    jobs: usize,
    contiguous: bool,
    think: Duration,
) -> anyhow::Result<(Vec<Duration>, f64, u64)> {
    let chunks: Vec<Vec<(u64, usize)>> = if contiguous {
        ops.chunks(ops.len().div_ceil(jobs).max(1))
            .map(<[_]>::to_vec)
            .collect()
    } else {
        (0..jobs)
            .map(|j| ops.iter().skip(j).step_by(jobs).copied().collect())
            .collect()
    };
    let started = Instant::now();
    let results: Vec<anyhow::Result<(Vec<Duration>, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut lat = Vec::with_capacity(chunk.len());
                    let mut bytes = 0;
                    for &(offset, len) in chunk {
                        let t = Instant::now();
                        file.read_exact_at(&mut buf[..len], offset)
                            .with_context(|| format!("read of {len} bytes at {offset}"))?;
                        lat.push(t.elapsed());
                        bytes += len as u64;
                        if !think.is_zero() {
                            std::thread::sleep(think);
                        }
                    }
                    Ok((lat, bytes))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader thread panicked"))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut all = Vec::with_capacity(ops.len());
    let mut bytes = 0;
    for r in results {
        let (lat, b) = r?;
        all.extend(lat);
        bytes += b;
    }
    Ok((all, seconds, bytes))
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e6
}

fn summarize(
    pattern: &str,
    pass: &str,
    mut lat: Vec<Duration>,
    seconds: f64,
    bytes: u64,
) -> PassResult {
    lat.sort_unstable();
    let ops = lat.len();
    PassResult {
        pattern: pattern.into(),
        pass: pass.into(),
        ops,
        bytes,
        seconds,
        iops: ops as f64 / seconds.max(1e-9),
        mb_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
        p50_us: percentile_us(&lat, 0.50),
        p90_us: percentile_us(&lat, 0.90),
        p99_us: percentile_us(&lat, 0.99),
        p999_us: percentile_us(&lat, 0.999),
        max_us: lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
        store_requests: None,
        store_bytes: None,
        decode_us_per_block: None,
        miss_wait_us_per_block: None,
    }
}

fn print_table(r: &Report) {
    println!(
        "{} ({} bytes){}, {} job(s)",
        r.target,
        r.size,
        if r.in_mount {
            ", in a zvmount mount"
        } else {
            ""
        },
        r.jobs
    );
    println!(
        "{:<7} {:<6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "pattern",
        "pass",
        "ops",
        "MB/s",
        "IOPS",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "GETs",
        "GET MB"
    );
    for p in &r.passes {
        println!(
            "{:<7} {:<6} {:>6} {:>9.1} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>9} {:>9}",
            p.pattern,
            p.pass,
            p.ops,
            p.mb_per_s,
            p.iops,
            p.p50_us,
            p.p90_us,
            p.p99_us,
            p.p999_us,
            p.store_requests.map_or("-".into(), |v| v.to_string()),
            p.store_bytes
                .map_or("-".into(), |v| format!("{:.1}", v as f64 / 1e6)),
        );
    }
    for p in r.passes.iter().filter(|p| p.decode_us_per_block.is_some()) {
        println!(
            "{} {}: daemon per fetched block: verify+decode {:.0} µs, demand wait {:.0} µs",
            p.pattern,
            p.pass,
            p.decode_us_per_block.unwrap_or(0.0),
            p.miss_wait_us_per_block.unwrap_or(0.0)
        );
    }
    if let Some(b) = &r.baseline {
        println!(
            "baseline {}: {} records{}, p50 GET {:.0} + CRC32C {:.0} + decode {:.0} + BLAKE3 {:.0} µs; total p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs",
            b.source,
            b.records,
            if b.verified {
                ""
            } else {
                " (no sidecar: unverified)"
            },
            b.get_p50_us,
            b.crc_p50_us,
            b.decode_p50_us,
            b.blake3_p50_us,
            b.total_p50_us,
            b.total_p90_us,
            b.total_p99_us
        );
        println!(
            "baseline keeping every decoded block (fresh memory each): total p50 {:.0} µs",
            b.kept_total_p50_us
        );
        if let (Some(r), Some(k)) = (b.miss_ratio_p50, b.miss_ratio_kept_p50) {
            println!("miss cold p50 / baseline p50 = {r:.2} (/ keeping baseline = {k:.2})");
        }
    }
}
