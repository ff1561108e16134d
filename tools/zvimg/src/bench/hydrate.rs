//! `zvimg bench hydrate`: how well background hydration and cold reads use
//! the link to the store, each against a baseline measured in the same run.
//!
//! The bench makes an image of `--size` incompressible bytes, uploads it to
//! an `s3s-fs` on 127.0.0.1 that it starts, and reaches it through the test
//! kit's shaping proxy (first-byte latency and a bandwidth cap shared by
//! every connection, as `bench boot` does). Then, each with a fresh host
//! cache and a fresh `zvmount`:
//! 1. `link`: the whole object through the proxy in 8 MiB range GETs, four
//!    at a time — what the link carries at best;
//! 2. `hydrate`: a `--hydrate` mount that nothing reads, from its start to
//!    `hydrate_done == hydrate_total` (target ≥ 90% of `link`);
//! 3. `miss`: one 4 KiB read in each of `--misses` blocks, one at a time
//!    with a pause between them, on a mount with readahead and prefetch off
//!    — first with nothing else running, then while the mount hydrates
//!    (blocks from the end of the disk, last first, so hydration, which
//!    goes from the start, has not reached them; the bench checks it was
//!    still running after the last read). Target: p50 during ≤ 1.2× p50
//!    without;
//! 4. `dd`: one reader, 128 KiB `read`s from start to end of a cold mount
//!    with default flags (target ≥ 80% of `link`); the bytes read are
//!    checked against the image's BLAKE3.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use zvstore::source::parse_duration;
use zvstore::{ObjectStore, StoreConfig, open_source};
use zvtest::mount::Mounted;
use zvtest::proxy::{Shaping, ShapingProxy};
use zvtest::s3::{S3Options, S3Server};

const BUCKET: &str = "zvbench";
const KEY: &str = "hydrate.zvhd2";
const MIB: u64 = 1 << 20;
/// Range size and parallelism of the `link` baseline.
const LINK_RANGE: u64 = 8 * MIB;
const LINK_PARALLEL: usize = 4;
/// Read size of the `dd` pass (`dd bs=128k`).
const DD_BS: usize = 128 << 10;
/// Longest wait for one mount to hydrate.
const HYDRATE_TIMEOUT: Duration = Duration::from_secs(600);

/// Flags of `zvimg bench hydrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size of the test disk (incompressible data throughout).
    #[arg(long, default_value = "512MiB", value_parser = zvmount::util::parse_size)]
    pub size: u64,
    /// First-byte latency the proxy adds to every store request.
    #[arg(long, default_value = "15ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Bandwidth of the proxy each way, e.g. 100MB/s; 0 = unlimited.
    #[arg(long, default_value = "100MB/s", value_parser = super::boot::parse_rate)]
    pub bandwidth: u64,
    /// Blocks read by each `miss` pass.
    #[arg(long, default_value_t = 24)]
    pub misses: usize,
    /// Pause between two `miss` reads (a guest computing between reads).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub think: Duration,
    /// Seed of the data and of the blocks the `miss` passes read.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the results as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Scratch directory (default: a fresh one under $TMPDIR, removed after).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The daemons: s3s-fs, zvmount and its extra arguments.
    #[command(flatten)]
    pub daemons: super::DaemonArgs,
}

/// Latency figures of a set of reads, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Reads measured.
    pub count: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// Everything one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Size of the generated raw disk, bytes.
    pub disk_bytes: u64,
    /// Size of its ZVHD2 image in the store, bytes.
    pub stored_bytes: u64,
    /// First-byte latency the shaping proxy adds, ms.
    pub latency_ms: f64,
    /// The shaping proxy's bandwidth cap, bytes per second.
    pub bandwidth_bytes_per_s: u64,
    /// Pass 1: MB/s of the link (8 MiB ranges, 4 at a time).
    pub link_mb_per_s: f64,
    /// Pass 2: store bytes per second of a `--hydrate` mount alone.
    pub hydrate_mb_per_s: f64,
    /// Wall time of pass 2, seconds.
    pub hydrate_seconds: f64,
    /// Bytes pass 2 fetched from the store.
    pub hydrate_store_bytes: u64,
    /// Store requests pass 2 made.
    pub hydrate_store_requests: u64,
    /// `hydrate_mb_per_s / link_mb_per_s` (target ≥ 0.9).
    pub hydrate_vs_link: f64,
    /// Pass 3: demand misses alone, then during hydration.
    pub miss_alone: Latency,
    /// Demand misses while the same image hydrates.
    pub miss_hydrating: Latency,
    /// Blocks hydrated (of the total) right after the last `miss` read.
    pub hydrate_done_after_misses: u64,
    /// Blocks hydration has to fetch in all.
    pub hydrate_total: u64,
    /// `miss_hydrating.p50_ms / miss_alone.p50_ms` (target ≤ 1.2), and at p99.
    pub miss_ratio_p50: f64,
    /// `miss_hydrating.p99_ms / miss_alone.p99_ms`.
    pub miss_ratio_p99: f64,
    /// Pass 4: one `dd bs=128k` over a cold mount.
    pub dd_mb_per_s: f64,
    /// Wall time of pass 4, seconds.
    pub dd_seconds: f64,
    /// Store requests pass 4 made.
    pub dd_store_requests: u64,
    /// Blocks readahead fetched during pass 4.
    pub dd_prefetch_blocks: u64,
    /// `dd_mb_per_s / link_mb_per_s` (target ≥ 0.8).
    pub dd_vs_link: f64,
}

/// Runs the benchmark and prints the results.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.size < 8 * MIB {
        bail!("--size must be at least 8 MiB");
    }
    let zvmount = args.daemons.find_zvmount()?;
    let (work, remove) = match &args.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("zvimg-bench-hydrate-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = Bench::new(&args, zvmount, &work).and_then(|b| b.run());
    if remove {
        let _ = std::fs::remove_dir_all(&work);
    }
    let report = result?;
    let table = render(&report);
    if args.json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

struct Bench<'a> {
    args: &'a Args,
    zvmount: PathBuf,
    work: &'a Path,
    _s3: S3Server,
    proxy: ShapingProxy,
    proxy_store: StoreConfig,
    url: String,
    rt: tokio::runtime::Runtime,
    report: Report,
    /// BLAKE3 of the raw disk, to check what `dd` read.
    digest: blake3::Hash,
    blocks: u64,
}

impl<'a> Bench<'a> {
    /// Makes and uploads the image, starts the server and the proxy.
    fn new(args: &'a Args, zvmount: PathBuf, work: &'a Path) -> anyhow::Result<Bench<'a>> {
        let rt = crate::runtime()?;
        let s3 = S3Server::launch(S3Options {
            binary: args.daemons.s3s_fs.clone(),
            data_dir: Some(work.join("s3")),
        })?;
        let image = work.join(KEY);
        eprintln!(
            "making a {} image of random data",
            crate::convert::human(args.size)
        );
        let (digest, summary) = make_image(&image, args.size, args.seed)?;
        let url = format!("s3://{BUCKET}/{KEY}");
        rt.block_on(async {
            s3.create_bucket(BUCKET).await;
            let (store, key) = open_source(&url, &s3.store_config()).await?;
            store.put_file(&key, &image).await?;
            let sidecar = crate::default_sidecar_path(&image);
            std::fs::write(&sidecar, summary.sidecar.encode())?;
            store.put_file(&format!("{key}.zvidx"), &sidecar).await?;
            anyhow::Ok(())
        })
        .context("uploading the test image")?;
        let stored_bytes = std::fs::metadata(&image)?.len();
        std::fs::remove_file(&image)?;
        let proxy = ShapingProxy::start(
            s3.addr(),
            Shaping {
                latency: args.latency,
                bytes_per_sec: args.bandwidth,
            },
        )
        .context("starting the shaping proxy")?;
        let mut proxy_store = s3.store_config();
        proxy_store.endpoint_url = Some(format!("http://{}", proxy.addr()));
        proxy_store.force_path_style = true;
        Ok(Bench {
            args,
            zvmount,
            work,
            _s3: s3,
            proxy,
            proxy_store,
            url,
            rt,
            report: Report {
                disk_bytes: args.size,
                stored_bytes,
                latency_ms: args.latency.as_secs_f64() * 1e3,
                bandwidth_bytes_per_s: args.bandwidth,
                ..Report::default()
            },
            digest,
            blocks: summary.blocks,
        })
    }

    fn run(mut self) -> anyhow::Result<Report> {
        self.link()?;
        self.hydrate()?;
        self.misses()?;
        self.dd()?;
        Ok(self.report)
    }

    /// Pass 1: the whole object through the proxy, several ranges at once.
    fn link(&mut self) -> anyhow::Result<()> {
        eprintln!("link: GET the whole object through the proxy");
        let stored = self.report.stored_bytes;
        let seconds = self.rt.block_on(async {
            let (store, key) = open_source(&self.url, &self.proxy_store).await?;
            let store: Arc<dyn ObjectStore> = store;
            let t0 = Instant::now();
            let ranges: Vec<_> = (0..stored)
                .step_by(LINK_RANGE as usize)
                .map(|s| s..(s + LINK_RANGE).min(stored))
                .collect();
            let mut gets = futures::stream::iter(ranges)
                .map(|r| {
                    let (store, key) = (Arc::clone(&store), key.clone());
                    async move { store.get_range(&key, r, None).await.map(|b| b.len()) }
                })
                .buffer_unordered(LINK_PARALLEL);
            let mut got = 0u64;
            while let Some(n) = gets.next().await {
                got += n? as u64;
            }
            if got != stored {
                bail!("the link pass got {got} bytes of {stored}");
            }
            anyhow::Ok(t0.elapsed().as_secs_f64())
        })?;
        self.report.link_mb_per_s = stored as f64 / seconds / 1e6;
        Ok(())
    }

    /// Pass 2: a `--hydrate` mount alone, to the end.
    fn hydrate(&mut self) -> anyhow::Result<()> {
        eprintln!("hydrate: a --hydrate mount that nothing reads");
        let cache = self.fresh_dir("cache-hydrate")?;
        let t0 = Instant::now();
        let mount = self.mount(&cache, &["--hydrate"])?;
        let stats = wait_hydrated(&mount)?;
        let seconds = t0.elapsed().as_secs_f64();
        super::stop_mount(mount)?;
        let _ = std::fs::remove_dir_all(&cache);
        let r = &mut self.report;
        r.hydrate_seconds = seconds;
        r.hydrate_store_bytes = stats.store_bytes;
        r.hydrate_store_requests = stats.store_requests;
        r.hydrate_mb_per_s = stats.store_bytes as f64 / seconds / 1e6;
        r.hydrate_vs_link = r.hydrate_mb_per_s / r.link_mb_per_s;
        Ok(())
    }

    /// Pass 3: single demand misses, alone and during hydration.
    fn misses(&mut self) -> anyhow::Result<()> {
        // Blocks from the last quarter of the disk, last first: hydration
        // walks from block 0 and must not have reached them.
        let quarter = (self.blocks / 4).max(1);
        let count = (self.args.misses as u64).min(quarter) as usize;
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.args.seed ^ 0x6d69_7373);
        let mut chosen = rand::seq::index::sample(&mut rng, quarter as usize, count)
            .into_iter()
            .map(|i| self.blocks - 1 - i as u64)
            .collect::<Vec<_>>();
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        let quiet = ["--readahead", "0", "--prefetch-budget", "0"];

        eprintln!("miss: {count} single misses, nothing else running");
        let cache = self.fresh_dir("cache-miss")?;
        let mount = self.mount(&cache, &quiet)?;
        let alone = self.read_blocks(&mount, &chosen)?;
        super::stop_mount(mount)?;
        let _ = std::fs::remove_dir_all(&cache);

        eprintln!("miss: {count} single misses while the mount hydrates");
        let cache = self.fresh_dir("cache-miss-hydrating")?;
        let mut args = vec!["--hydrate"];
        args.extend(quiet);
        let mount = self.mount(&cache, &args)?;
        // Hydration has started once it has counted its blocks.
        let deadline = Instant::now() + Duration::from_secs(30);
        while mount.try_stats()?.hydrate_total == 0 {
            if Instant::now() > deadline {
                bail!("the mount did not start hydrating:\n{}", mount.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let during = self.read_blocks(&mount, &chosen)?;
        let after = mount.try_stats()?;
        super::stop_mount(mount)?;
        let _ = std::fs::remove_dir_all(&cache);
        if after.hydrate_done >= after.hydrate_total {
            bail!(
                "hydration finished before the last miss ({after:?}); use a larger --size or fewer --misses"
            );
        }
        let r = &mut self.report;
        r.miss_alone = summarize(&alone);
        r.miss_hydrating = summarize(&during);
        r.hydrate_done_after_misses = after.hydrate_done;
        r.hydrate_total = after.hydrate_total;
        r.miss_ratio_p50 = r.miss_hydrating.p50_ms / r.miss_alone.p50_ms;
        r.miss_ratio_p99 = r.miss_hydrating.p99_ms / r.miss_alone.p99_ms;
        Ok(())
    }

    /// One 4 KiB read at the start of each block, `think` apart; the time
    /// of each.
    fn read_blocks(&self, mount: &Mounted, blocks: &[u64]) -> anyhow::Result<Vec<Duration>> {
        let file = File::open(mount.path("disk.raw"))?;
        let block_size = self.args.size.div_ceil(self.blocks);
        let mut buf = vec![0u8; 4096];
        let mut times = Vec::with_capacity(blocks.len());
        for &b in blocks {
            std::thread::sleep(self.args.think);
            let t0 = Instant::now();
            file.read_exact_at(&mut buf, b * block_size)
                .with_context(|| format!("reading block {b}"))?;
            times.push(t0.elapsed());
        }
        Ok(times)
    }

    /// Pass 4: one reader, start to end, 128 KiB at a time, cold mount.
    fn dd(&mut self) -> anyhow::Result<()> {
        eprintln!("dd: one sequential reader over a cold mount, bs=128k");
        let cache = self.fresh_dir("cache-dd")?;
        let mount = self.mount(&cache, &[])?;
        let before = mount.try_stats()?;
        let mut file = File::open(mount.path("disk.raw"))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; DD_BS];
        let t0 = Instant::now();
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        let seconds = t0.elapsed().as_secs_f64();
        drop(file);
        let after = mount.try_stats()?;
        super::stop_mount(mount)?;
        let _ = std::fs::remove_dir_all(&cache);
        if total != self.args.size || hasher.finalize() != self.digest {
            bail!("dd read {total} bytes that differ from the image's");
        }
        let r = &mut self.report;
        r.dd_seconds = seconds;
        r.dd_mb_per_s = total as f64 / seconds / 1e6;
        r.dd_store_requests = after.store_requests - before.store_requests;
        r.dd_prefetch_blocks = after.blocks_prefetched - before.blocks_prefetched;
        r.dd_vs_link = r.dd_mb_per_s / r.link_mb_per_s;
        Ok(())
    }

    fn fresh_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// A fresh zvmount of the image through the proxy, caching in `cache`.
    fn mount(&self, cache: &Path, extra: &[&str]) -> anyhow::Result<Mounted> {
        let mnt = self.fresh_dir("mnt")?;
        let builder = self
            .args
            .daemons
            .proxied_mount(&self.zvmount, &mnt, self.proxy.addr(), Some(cache))
            .args(extra)
            .arg(&self.url)
            .expect_file("disk.raw");
        Ok(builder.launch()?)
    }
}

/// Writes `size` random bytes (seeded) as a ZVHD2 image at `path`; the
/// raw disk's BLAKE3 and the writer's summary.
fn make_image(
    path: &Path,
    size: u64,
    seed: u64,
) -> anyhow::Result<(blake3::Hash, zvhd2::WriteSummary)> {
    let raw = path.with_extension("raw");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hasher = blake3::Hasher::new();
    {
        let mut out = BufWriter::new(File::create(&raw)?);
        let mut chunk = vec![0u8; MIB as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(MIB) as usize;
            rng.fill(&mut chunk[..n]);
            hasher.update(&chunk[..n]);
            out.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        out.flush()?;
    }
    let input = BufReader::with_capacity(1 << 20, File::open(&raw)?);
    let mut writer = BufWriter::new(File::create(path)?);
    let summary = zvhd2::write_image(input, size, &mut writer, &Default::default(), &mut |_| {})
        .context("converting the test disk")?;
    writer.flush()?;
    drop(writer);
    std::fs::remove_file(&raw)?;
    Ok((hasher.finalize(), summary))
}

/// Polls the mount's stats until hydration says the image is complete.
fn wait_hydrated(mount: &Mounted) -> anyhow::Result<zvmount::metrics::MetricsSnapshot> {
    let deadline = Instant::now() + HYDRATE_TIMEOUT;
    loop {
        let s = mount.try_stats()?;
        if s.hydrate_total > 0 && s.hydrate_done == s.hydrate_total {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!(
                "hydration did not finish in {HYDRATE_TIMEOUT:?}: {s:?}\n{}",
                mount.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn summarize(times: &[Duration]) -> Latency {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            0.0
        } else {
            ms[((ms.len() - 1) as f64 * q).round() as usize]
        }
    };
    Latency {
        count: ms.len(),
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

fn render(r: &Report) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut t = String::new();
    t.push_str(&format!(
        "disk {} ({} stored), link shaped to {:.0} MB/s, {:.0} ms first byte\n",
        crate::convert::human(r.disk_bytes),
        crate::convert::human(r.stored_bytes),
        r.bandwidth_bytes_per_s as f64 / 1e6,
        r.latency_ms
    ));
    t.push_str(&format!(
        "link (8 MiB ranges x{LINK_PARALLEL})      {:>8.1} MB/s\n",
        r.link_mb_per_s
    ));
    t.push_str(&format!(
        "hydrate, nothing reading      {:>8.1} MB/s  {:.2}x link (target >= 0.90: {})  {:.1}s, {} GETs\n",
        r.hydrate_mb_per_s,
        r.hydrate_vs_link,
        verdict(r.hydrate_vs_link >= 0.9),
        r.hydrate_seconds,
        r.hydrate_store_requests
    ));
    t.push_str(&format!(
        "miss alone          p50 {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  ({} reads)\n",
        r.miss_alone.p50_ms, r.miss_alone.p90_ms, r.miss_alone.p99_ms, r.miss_alone.count
    ));
    t.push_str(&format!(
        "miss hydrating      p50 {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  p50 {:.2}x, p99 {:.2}x alone (target <= 1.2: {}); hydrated {}/{} after\n",
        r.miss_hydrating.p50_ms,
        r.miss_hydrating.p90_ms,
        r.miss_hydrating.p99_ms,
        r.miss_ratio_p50,
        r.miss_ratio_p99,
        verdict(r.miss_ratio_p50 <= 1.2),
        r.hydrate_done_after_misses,
        r.hydrate_total
    ));
    t.push_str(&format!(
        "dd bs=128k, cold mount        {:>8.1} MB/s  {:.2}x link (target >= 0.80: {})  {} GETs, {} blocks prefetched\n",
        r.dd_mb_per_s,
        r.dd_vs_link,
        verdict(r.dd_vs_link >= 0.8),
        r.dd_store_requests,
        r.dd_prefetch_blocks
    ));
    t
}
