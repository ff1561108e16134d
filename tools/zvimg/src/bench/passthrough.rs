//! `zvimg bench read MOUNT/disk.raw --fio-versus FILE`: the same fio jobs
//! on a mounted disk and on a local file — for a fully hydrated image, the
//! host cache's data file behind the mount's FUSE passthrough — so the cost
//! of the mount is one ratio per job.
//!
//! Jobs: 4 KiB random and 1 MiB sequential reads, each buffered and
//! `O_DIRECT`, one reader at queue depth 1 (`psync`). The page cache is
//! dropped (`/proc/sys/vm/drop_caches`, root only) before every pass. Each
//! job runs `repeats` times on each file, the order alternating (file then
//! mount, then mount then file, …) so that neither side always runs first
//! on a cold host (a virtual disk's own cache favours whoever reads
//! second). Each side's figure is the median of its passes. Ratios are
//! mount / file for p99 completion latency and file / mount for MB/s, so
//! 1.0 is "as fast as the file" for both and the target is ≤ 1.1.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Serialize;

/// One fio job as it runs on both files.
struct Job {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    direct: bool,
}

const JOBS: [Job; 4] = [
    Job {
        name: "rand4k",
        rw: "randread",
        bs: "4k",
        direct: false,
    },
    Job {
        name: "rand4k-direct",
        rw: "randread",
        bs: "4k",
        direct: true,
    },
    Job {
        name: "seq1m",
        rw: "read",
        bs: "1m",
        direct: false,
    },
    Job {
        name: "seq1m-direct",
        rw: "read",
        bs: "1m",
        direct: true,
    },
];

/// What fio measured for one job on one file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FioPass {
    /// Throughput, MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// I/O operations per second.
    pub iops: f64,
    /// Median completion latency, µs.
    pub p50_us: f64,
    /// 99th-percentile completion latency, µs.
    pub p99_us: f64,
}

/// One job on both files, and the ratios.
#[derive(Debug, Serialize)]
pub struct FioComparison {
    /// The fio job: pattern, block size, buffered or O_DIRECT.
    pub job: String,
    /// The job on the cache file itself (the baseline): the median of its
    /// passes (MB/s and p99 each).
    pub file: FioPass,
    /// The job on the mounted file: the median of its passes.
    pub mount: FioPass,
    /// Every pass on the file, in the order run.
    pub file_passes: Vec<FioPass>,
    /// Every pass on the mount, in the order run.
    pub mount_passes: Vec<FioPass>,
    /// mount p99 / file p99 (target ≤ 1.1).
    pub p99_ratio: f64,
    /// file MB/s / mount MB/s (target ≤ 1.1).
    pub mb_per_s_ratio: f64,
}

/// The whole comparison, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The mounted file read.
    pub mount: PathBuf,
    /// The cache file it is compared with.
    pub file: PathBuf,
    /// Bytes of each file the jobs cover.
    pub bytes: u64,
    /// Run time of each random-read pass, seconds.
    pub seconds_per_random_pass: u64,
    /// Passes of each job on each file (order alternating).
    pub repeats: usize,
    /// One entry per job, in the order run.
    pub jobs: Vec<FioComparison>,
}

/// Runs every job `repeats` times on `file` and on `mount` in alternating
/// order, reading the first `bytes` of each (random jobs for `seconds`
/// each), and prints the table (medians) or JSON (medians and passes).
pub fn run(
    mount: &Path,
    file: &Path,
    bytes: u64,
    seconds: u64,
    repeats: usize,
    json: bool,
) -> anyhow::Result<()> {
    if Command::new("fio").arg("--version").output().is_err() {
        bail!("fio not found: apt-get install fio (scripts/install-deps.sh installs it)");
    }
    let sizes = (
        std::fs::metadata(mount)?.len(),
        std::fs::metadata(file)?.len(),
    );
    if sizes.0 != sizes.1 {
        bail!(
            "{} is {} bytes but {} is {}: compare a mounted disk with its own cache file",
            mount.display(),
            sizes.0,
            file.display(),
            sizes.1
        );
    }
    let bytes = bytes.min(sizes.0);
    let mut jobs = Vec::new();
    let repeats = repeats.max(1);
    for job in &JOBS {
        let (mut file_passes, mut mount_passes) = (Vec::new(), Vec::new());
        for rep in 0..repeats {
            if rep % 2 == 0 {
                file_passes.push(fio(job, file, bytes, seconds)?);
                mount_passes.push(fio(job, mount, bytes, seconds)?);
            } else {
                mount_passes.push(fio(job, mount, bytes, seconds)?);
                file_passes.push(fio(job, file, bytes, seconds)?);
            }
        }
        let (on_file, on_mount) = (median(&file_passes), median(&mount_passes));
        jobs.push(FioComparison {
            job: job.name.to_string(),
            p99_ratio: on_mount.p99_us / on_file.p99_us.max(1e-9),
            mb_per_s_ratio: on_file.mb_per_s / on_mount.mb_per_s.max(1e-9),
            file: on_file,
            mount: on_mount,
            file_passes,
            mount_passes,
        });
    }
    let report = Report {
        mount: mount.to_owned(),
        file: file.to_owned(),
        bytes,
        seconds_per_random_pass: seconds,
        repeats,
        jobs,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// Each figure's median over `passes` (not one pass's figures: the median
/// MB/s and the median p99 may come from different passes).
fn median(passes: &[FioPass]) -> FioPass {
    let mid = |f: fn(&FioPass) -> f64| {
        let mut v: Vec<f64> = passes.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    FioPass {
        mb_per_s: mid(|p| p.mb_per_s),
        iops: mid(|p| p.iops),
        p50_us: mid(|p| p.p50_us),
        p99_us: mid(|p| p.p99_us),
    }
}

/// Drops the page cache, runs `job` on `path`, parses fio's JSON.
fn fio(job: &Job, path: &Path, bytes: u64, seconds: u64) -> anyhow::Result<FioPass> {
    drop_caches()?;
    let mut cmd = Command::new("fio");
    cmd.arg(format!("--name={}", job.name))
        .arg(format!("--filename={}", path.display()))
        .arg("--readonly")
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.bs))
        .arg(format!("--direct={}", u8::from(job.direct)))
        .arg("--ioengine=psync")
        .arg("--iodepth=1")
        .arg("--numjobs=1")
        .arg(format!("--size={bytes}"))
        // Same offsets on both files.
        .arg("--randrepeat=1")
        .arg("--randseed=1")
        // fio must not lay out or fallocate a file it only reads.
        .arg("--allow_file_create=0")
        .arg("--invalidate=0")
        .arg("--output-format=json");
    if job.rw == "randread" {
        cmd.arg(format!("--runtime={seconds}")).arg("--time_based");
    }
    let out = cmd.output().context("running fio")?;
    if !out.status.success() {
        bail!(
            "fio {} on {} failed ({}): {}",
            job.name,
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&out.stdout).with_context(|| format!("fio {} on {}", job.name, path.display()))
}

fn parse(json: &[u8]) -> anyhow::Result<FioPass> {
    let v: serde_json::Value = serde_json::from_slice(json).context("fio's JSON")?;
    let read = &v["jobs"][0]["read"];
    let pct = |p: &str| {
        read["clat_ns"]["percentile"][p]
            .as_f64()
            .unwrap_or(f64::NAN)
            / 1e3
    };
    let bw = read["bw_bytes"]
        .as_f64()
        .context("no read.bw_bytes in fio's output")?;
    Ok(FioPass {
        mb_per_s: bw / 1e6,
        iops: read["iops"].as_f64().unwrap_or(f64::NAN),
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
    })
}

fn drop_caches() -> anyhow::Result<()> {
    // Dirty pages first, so drop_caches can drop them all.
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .context("dropping the page cache (/proc/sys/vm/drop_caches needs root)")
}

fn render(r: &Report) -> String {
    let mut t = format!(
        "fio, one reader (psync, QD1), page cache dropped before each pass; {} MiB, random jobs {} s; \
         median of {} passes per side, order alternating\n\
         mount {}\nfile  {}\n",
        r.bytes >> 20,
        r.seconds_per_random_pass,
        r.repeats,
        r.mount.display(),
        r.file.display()
    );
    t.push_str(&format!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7}\n",
        "job",
        "file MB/s",
        "mount MB/s",
        "file p50",
        "mount p50",
        "file p99",
        "mount p99",
        "MB/s x",
        "p99 x"
    ));
    for j in &r.jobs {
        t.push_str(&format!(
            "{:<14} {:>10.1} {:>10.1} {:>8.1}us {:>8.1}us {:>8.1}us {:>8.1}us {:>6.2}x {:>6.2}x\n",
            j.job,
            j.file.mb_per_s,
            j.mount.mb_per_s,
            j.file.p50_us,
            j.mount.p50_us,
            j.file.p99_us,
            j.mount.p99_us,
            j.mb_per_s_ratio,
            j.p99_ratio
        ));
    }
    t.push_str("ratios: file MB/s / mount MB/s and mount p99 / file p99; target <= 1.10 each\n");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_json() {
        let json = br#"{"jobs":[{"read":{"bw_bytes":104857600,"iops":25600.5,
            "clat_ns":{"percentile":{"50.000000":12000,"99.000000":85000}}}}]}"#;
        let p = parse(json).unwrap();
        assert_eq!(p.mb_per_s, 104.8576);
        assert_eq!((p.p50_us, p.p99_us), (12.0, 85.0));
        assert!(parse(b"{}").is_err());
    }

    #[test]
    fn medians_are_taken_per_figure() {
        let pass = |mb, p99| FioPass {
            mb_per_s: mb,
            iops: mb,
            p50_us: 1.0,
            p99_us: p99,
        };
        let m = median(&[pass(100.0, 9.0), pass(300.0, 1.0), pass(200.0, 5.0)]);
        assert_eq!((m.mb_per_s, m.p99_us), (200.0, 5.0));
        let m = median(&[pass(100.0, 9.0), pass(300.0, 1.0)]);
        assert_eq!((m.mb_per_s, m.p99_us), (200.0, 5.0));
        assert!(median(&[]).mb_per_s.is_nan());
    }
}
