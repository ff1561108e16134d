//! `zvimg bench fleet`: a boot storm on one machine. N zvmount daemons,
//! each with a cache directory of its own (standing in for hosts), read the
//! same boot set at the same moment, with and without a caching tier in
//! front of the origin; the origin's traffic is counted on the origin's
//! side.
//!
//! Setups:
//! 1. `direct`: every host straight to the origin (no alignment);
//! 2. `tier`: through nginx configured by `examples/nginx-slice-cache.conf`
//!    (slice, cache key, lock), hosts not aligned;
//! 3. `tier+align`: the same, hosts with `--fetch-align` = the slice size.
//!
//! The origin is the test kit's HTTP range server holding the image and its
//! sidecar, behind the kit's shaping proxy (first-byte latency, bandwidth
//! cap, request and byte counters): the origin's requests and bytes are the
//! proxy's. The boot set is a fixed, scattered ~80% of the disk's blocks
//! (or `--profile`, one block number per line); each host reads 64 KiB in
//! each of its blocks, in an order of its own, one read at a time (a boot
//! reads at queue depth ≈ 1), checking every byte against the raw disk.
//! "Time to read the boot set" is per host, from the common start.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use zvhd2::{BlockLocation, DEFAULT_BLOCK_SIZE};
use zvmount::util::parse_size;
use zvstore::source::parse_duration;
use zvtest::http::HttpServer;
use zvtest::mount::Mounted;
use zvtest::nginx::Nginx;
use zvtest::proxy::{Shaping, ShapingProxy};

/// Bytes each host reads in each block of the boot set.
const READ: usize = 64 << 10;

/// Flags of `zvimg bench fleet`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Hosts (daemons) booting at once.
    #[arg(long, default_value_t = 4)]
    pub hosts: usize,
    /// Blocks (2 MiB) of the generated disk: incompressible, compressible
    /// and zero blocks mixed.
    #[arg(long, default_value_t = 96)]
    pub blocks: usize,
    /// The boot set: a file of block numbers, one per line (default: a
    /// fixed scattered 80% of the blocks).
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Tier slice size, and the hosts' --fetch-align in `tier+align`.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub slice: u64,
    /// First-byte latency the origin adds to every request.
    #[arg(long, default_value = "15ms", value_parser = parse_duration)]
    pub latency: Duration,
    /// Origin bandwidth cap in bytes per second each way (0: none).
    #[arg(long, default_value = "100MB", value_parser = parse_size)]
    pub bandwidth: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One setup's figures.
#[derive(Debug, Serialize)]
pub struct SetupReport {
    /// `direct`, `tier` or `tier+align`.
    pub setup: String,
    /// Requests the origin answered (counted at the origin's proxy).
    pub origin_requests: u64,
    /// Bytes the origin sent (headers included).
    pub origin_bytes: u64,
    /// Origin bytes over the stored bytes of the boot set's records.
    pub origin_vs_set: f64,
    /// Bytes the hosts fetched from what they talk to (tier or origin).
    pub hosts_fetched: u64,
    /// 1 − origin bytes / bytes the hosts fetched (0 without a tier).
    pub tier_hit_ratio: f64,
    /// Per host: seconds from the common start to its last read.
    pub host_seconds: Vec<f64>,
}

/// Everything `bench fleet` measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Hosts (daemons) that read at once.
    pub hosts: usize,
    /// Size of the stored image.
    pub image_bytes: u64,
    /// Blocks in the boot set.
    pub set_blocks: usize,
    /// Stored bytes of the boot set's records.
    pub set_record_bytes: u64,
    /// Bytes of the slices those records touch (what a slicing tier fetches once).
    pub set_slice_bytes: u64,
    /// Slice size in bytes.
    pub slice: u64,
    /// First-byte latency the origin added, in milliseconds.
    pub latency_ms: f64,
    /// The origin's bandwidth cap, bytes per second (0: none).
    pub bandwidth: u64,
    /// One entry per setup, in the order run.
    pub setups: Vec<SetupReport>,
}

/// Runs the benchmark and prints the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Runs every setup and returns the figures.
pub fn measure(args: &Args) -> anyhow::Result<Report> {
    if args.hosts == 0 || args.blocks == 0 {
        bail!("--hosts and --blocks must be at least 1");
    }
    if args.slice == 0 || !args.slice.is_multiple_of(1024) {
        bail!("--slice must be a non-zero multiple of 1 KiB");
    }
    let (raw, image, sidecar) = zvtest::images::mixed_cycle_disk(args.blocks, 42);
    let set = boot_set(args)?;
    let index = sidecar.block_index();
    let records: Vec<std::ops::Range<u64>> = set
        .iter()
        .filter_map(|&b| match index.lookup(b)? {
            BlockLocation::Record(loc) => Some(loc.offset..loc.offset + u64::from(loc.size)),
            BlockLocation::Zero => None,
        })
        .collect();
    let set_record_bytes = records.iter().map(|r| r.end - r.start).sum();
    let len = image.len() as u64;
    let slices: BTreeSet<u64> = records
        .iter()
        .flat_map(|r| r.start / args.slice..r.end.div_ceil(args.slice))
        .collect();
    let set_slice_bytes = slices
        .iter()
        .map(|s| ((s + 1) * args.slice).min(len) - s * args.slice)
        .sum();

    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(HttpServer::start());
    server.put("images/disk.zvhd2", image.clone());
    server.put("images/disk.zvhd2.zvidx", sidecar.encode());
    let origin_addr: SocketAddr = server
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("origin address")?;
    let origin = ShapingProxy::start(
        origin_addr,
        Shaping {
            latency: args.latency,
            bytes_per_sec: args.bandwidth,
        },
    )
    .context("starting the origin's shaping proxy")?;
    let tier = Nginx::launch(origin.addr(), args.slice).context("starting nginx")?;
    let align = format!("{}KiB", args.slice / 1024);

    let direct_url = format!("http://{}/images/disk.zvhd2", origin.addr());
    let tier_url = tier.url("images/disk.zvhd2");
    let mut setups = Vec::new();
    for (name, url, align, fresh_tier) in [
        ("direct", &direct_url, None, false),
        ("tier", &tier_url, None, false),
        ("tier+align", &tier_url, Some(align.as_str()), true),
    ] {
        // Each tier setup starts from an empty tier.
        let own_tier;
        let url = if fresh_tier {
            own_tier = Nginx::launch(origin.addr(), args.slice).context("starting nginx")?;
            own_tier.url("images/disk.zvhd2")
        } else {
            url.clone()
        };
        let r = run_setup(name, &url, align, args.hosts, &raw, &set, &origin)
            .with_context(|| format!("setup {name}"))?;
        setups.push(SetupReport {
            origin_vs_set: r.origin_bytes as f64 / set_record_bytes as f64,
            tier_hit_ratio: if name == "direct" {
                0.0
            } else {
                1.0 - r.origin_bytes as f64 / r.hosts_fetched.max(1) as f64
            },
            ..r
        });
    }
    Ok(Report {
        hosts: args.hosts,
        image_bytes: len,
        set_blocks: set.len(),
        set_record_bytes,
        set_slice_bytes,
        slice: args.slice,
        latency_ms: args.latency.as_secs_f64() * 1e3,
        bandwidth: args.bandwidth,
        setups,
    })
}

fn boot_set(args: &Args) -> anyhow::Result<Vec<u64>> {
    let Some(path) = &args.profile else {
        return Ok((0..args.blocks as u64).filter(|b| b % 5 != 2).collect());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let b: u64 = l
                .trim()
                .parse()
                .with_context(|| format!("{}:{}: not a block number", path.display(), i + 1))?;
            if b >= args.blocks as u64 {
                bail!("{}:{}: block {b} is past the disk", path.display(), i + 1);
            }
            Ok(b)
        })
        .collect()
}

/// Starts `hosts` daemons on `url`, has them read `set` at once, and stops
/// them.
fn run_setup(
    name: &str,
    url: &str,
    align: Option<&str>,
    hosts: usize,
    raw: &[u8],
    set: &[u64],
    origin: &ShapingProxy,
) -> anyhow::Result<SetupReport> {
    let caches: Vec<tempfile::TempDir> = (0..hosts)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    origin.reset();
    let mounts: Vec<Mounted> = caches
        .iter()
        .map(|c| {
            let mut b = Mounted::builder()
                .args([
                    "--timeout",
                    "10s",
                    "--readahead",
                    "0",
                    "--prefetch-budget",
                    "0",
                ])
                .env_remove("HTTP_PROXY")
                .env_remove("http_proxy");
            if let Some(a) = align {
                b = b.args(["--fetch-align", a]);
            }
            b.arg("--cache-dir")
                .arg(c.path())
                .arg(url)
                .expect_file("disk.raw")
                .launch()
                .map_err(anyhow::Error::from)
        })
        .collect::<anyhow::Result<_>>()?;
    let start = Barrier::new(hosts);
    let bs = u64::from(DEFAULT_BLOCK_SIZE);
    let results: Vec<anyhow::Result<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = mounts
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let start = &start;
                s.spawn(move || -> anyhow::Result<f64> {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(100 + i as u64);
                    let mut order = set.to_vec();
                    order.shuffle(&mut rng);
                    let f = File::open(m.path("disk.raw"))?;
                    let mut buf = vec![0u8; READ];
                    start.wait();
                    let t0 = Instant::now();
                    for b in order {
                        let at = b * bs + rng.gen_range(0..(bs - READ as u64) / 4096) * 4096;
                        f.read_exact_at(&mut buf, at)
                            .with_context(|| format!("host {i}: read at {at}"))?;
                        if buf[..] != raw[at as usize..at as usize + READ] {
                            bail!("host {i}: wrong bytes at {at} (block {b})");
                        }
                    }
                    Ok(t0.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("reader panicked")))
            .collect()
    });
    let host_seconds = results.into_iter().collect::<anyhow::Result<Vec<f64>>>()?;
    let hosts_fetched = mounts.iter().map(|m| m.stats().store_bytes).sum();
    let stats = origin.stats();
    for m in mounts {
        m.try_stop()?;
    }
    Ok(SetupReport {
        setup: name.to_string(),
        origin_requests: stats.requests,
        origin_bytes: stats.bytes_down,
        origin_vs_set: 0.0,
        hosts_fetched,
        tier_hit_ratio: 0.0,
        host_seconds,
    })
}

fn print_report(r: &Report) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "fleet: {} hosts, image {:.1} MiB, boot set {} blocks = {:.1} MiB of records \
         ({:.1} MiB in {} KiB slices); origin +{:.0} ms first byte, {} MB/s",
        r.hosts,
        mib(r.image_bytes),
        r.set_blocks,
        mib(r.set_record_bytes),
        mib(r.set_slice_bytes),
        r.slice / 1024,
        r.latency_ms,
        r.bandwidth / 1_000_000
    );
    println!(
        "| setup | origin GETs | origin MiB | origin / boot set | hosts fetched MiB | tier hit ratio | time to read the boot set per host (s) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in &r.setups {
        let times: Vec<String> = s.host_seconds.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "| {} | {} | {:.1} | {:.2}× | {:.1} | {:.2} | {} |",
            s.setup,
            s.origin_requests,
            mib(s.origin_bytes),
            s.origin_vs_set,
            mib(s.hosts_fetched),
            s.tier_hit_ratio,
            times.join(" / ")
        );
    }
}
