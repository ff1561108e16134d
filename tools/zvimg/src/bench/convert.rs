//! `zvimg bench convert`: `zvimg convert` to a durable file (written
//! beside, synced, renamed) against `zstd -T0` at the same level on the same
//! input file (timed without a sync, the harder baseline), in the same run.
//!
//! Inputs are real files: give paths, or make the recipe disks with
//! `--make-real-mix DIR` (424 MiB of a tar of /usr/lib, then 600 MiB of
//! /dev/urandom) and `--make-sparse DIR` (a 64 GiB sparse raw holding 8 MiB
//! of data, and the same disk as qcow2). `--generate` makes a synthetic disk
//! instead and says so loudly: its zero blocks flatter zvimg.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use zvhd2::WriteOptions;

use crate::convert::{
    ConvertOptions, ConvertReport, InputFormat, SparseFile, TempFile, convert_to_zvhd2,
    detect_format, human,
};

/// Flags of `zvimg bench convert`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Disk images to convert (raw, qcow2, vmdk, vhd, vhdx).
    pub inputs: Vec<PathBuf>,
    /// Make (once; kept for later runs) DIR/real-mix.raw: 424 MiB of a tar of
    /// /usr/lib then 600 MiB of /dev/urandom, and bench it.
    #[arg(long, value_name = "DIR")]
    pub make_real_mix: Option<PathBuf>,
    /// Make (once) DIR/sparse-64g.raw, a 64 GiB sparse disk holding 8 MiB of
    /// data, and DIR/sparse-64g.qcow2, the same disk as qcow2; bench both.
    #[arg(long, value_name = "DIR")]
    pub make_sparse: Option<PathBuf>,
    /// Generate a synthetic disk of this size (a third zero blocks) and bench
    /// it. Not a real disk: its zero blocks are skipped for free.
    #[arg(long, value_parser = zvmount::util::parse_size)]
    pub generate: Option<u64>,
    /// zstd level for both.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Runs of each; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Directory for the outputs (and a generated disk): use a real disk, not tmpfs.
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct InputReport {
    input: PathBuf,
    format: String,
    /// Size of the input file (a sparse file's apparent size).
    input_bytes: u64,
    disk_bytes: u64,
    /// Bytes zvimg read (holes skipped).
    zvimg_bytes_read: u64,
    level: i32,
    /// Median of the runs; the runs themselves are in `zvimg_runs`.
    zvimg_seconds: f64,
    zvimg_bytes: u64,
    zstd_seconds: f64,
    zstd_bytes: u64,
    /// zstd seconds ÷ zvimg seconds (target ≥ 0.8).
    throughput_ratio: f64,
    /// zvimg output ÷ zstd output (target ≤ 1.05).
    size_ratio: f64,
    zvimg_runs: Vec<ConvertReport>,
    zstd_runs: Vec<f64>,
}

/// Runs `zvimg bench convert`: converts each input with zvimg and with
/// `zstd` (the median of `--runs`) and prints the comparison.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut inputs = args.inputs.clone();
    if let Some(dir) = &args.make_real_mix {
        inputs.push(make_real_mix(dir)?);
    }
    if let Some(dir) = &args.make_sparse {
        let (raw, qcow2) = make_sparse(dir)?;
        inputs.push(raw);
        inputs.push(qcow2);
    }
    let mut generated = None;
    if let Some(size) = args.generate {
        let tmp = TempFile::new(
            args.dir
                .join(format!("zvimg-bench-{}.raw", std::process::id())),
        );
        eprintln!(
            "zvimg bench convert: WARNING: benchmarking a GENERATED disk of {} (a third zero \
             blocks, a third random, a third text), not a real one; zvimg skips its zero blocks \
             for free. Use --make-real-mix DIR or give a real disk for figures that mean something.",
            human(size)
        );
        generate_mixed(tmp.path(), size)?;
        inputs.push(tmp.path().to_path_buf());
        generated = Some(tmp);
    }
    if inputs.is_empty() {
        bail!(
            "give a disk image to convert, or --make-real-mix DIR / --make-sparse DIR to make \
             the recipe disks (or --generate SIZE for a synthetic one)"
        );
    }
    let mut reports = Vec::new();
    for input in &inputs {
        reports.push(bench_one(input, &args)?);
    }
    drop(generated);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_table(&reports, &args);
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_one(input: &Path, args: &Args) -> anyhow::Result<InputReport> {
    let format = detect_format(input)?;
    if format == InputFormat::Zvhd2 {
        bail!("{}: already ZVHD2", input.display());
    }
    let input_bytes = std::fs::metadata(input)
        .with_context(|| format!("{}: cannot read", input.display()))?
        .len();
    warm_page_cache(input)?;
    let pid = std::process::id();
    let zv_out = TempFile::new(args.dir.join(format!("zvimg-bench-{pid}.zvhd2")));
    let zs_out = TempFile::new(args.dir.join(format!("zvimg-bench-{pid}.zst")));
    let options = ConvertOptions {
        write: WriteOptions {
            level: args.level,
            ..WriteOptions::default()
        },
        sidecar: false,
        boot_profile: None,
        progress: false,
    };
    let mut zvimg_runs = Vec::new();
    let mut zstd_runs = Vec::new();
    for _ in 0..args.runs.max(1) {
        zvimg_runs.push(convert_to_zvhd2(input, format, zv_out.path(), &options)?);

        // Not timed: zstd must not pay for replacing a file with dirty pages.
        let _ = std::fs::remove_file(zs_out.path());
        let t = Instant::now();
        let status = Command::new("zstd")
            .arg(format!("-{}", args.level))
            .args(["-T0", "-q", "-f"])
            .arg(input)
            .arg("-o")
            .arg(zs_out.path())
            .status()
            .context("running zstd (apt-get install zstd)")?;
        if !status.success() {
            bail!("zstd failed: {status}");
        }
        zstd_runs.push(t.elapsed().as_secs_f64());
    }
    let zvimg_seconds = median(zvimg_runs.iter().map(|r| r.seconds.total).collect());
    let zstd_seconds = median(zstd_runs.clone());
    let zvimg_bytes = std::fs::metadata(zv_out.path())?.len();
    let zstd_bytes = std::fs::metadata(zs_out.path())?.len();
    let last = zvimg_runs.last().expect("one run at least");
    Ok(InputReport {
        input: input.to_path_buf(),
        format: format!("{format:?}").to_lowercase(),
        input_bytes,
        disk_bytes: last.disk_size,
        zvimg_bytes_read: last.bytes_read,
        level: args.level,
        zvimg_seconds,
        zvimg_bytes,
        zstd_seconds,
        zstd_bytes,
        throughput_ratio: zstd_seconds / zvimg_seconds,
        size_ratio: zvimg_bytes as f64 / zstd_bytes as f64,
        zvimg_runs,
        zstd_runs,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Reads the input's data (not its holes) once so both sides measure
/// compression from the page cache, not the first read from disk.
fn warm_page_cache(input: &Path) -> anyhow::Result<()> {
    use zvhd2::DiskSource;
    let file = File::open(input).with_context(|| format!("{}: cannot open", input.display()))?;
    let size = file.metadata()?.len();
    let mut src = SparseFile::new(file);
    let mut buf = vec![0u8; 2 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(buf.len() as u64);
        if src.may_hold_data(at, n)? {
            src.read_exact_at(at, &mut buf[..n as usize])?;
        }
        at += n;
    }
    Ok(())
}

fn print_table(reports: &[InputReport], args: &Args) {
    println!(
        "zstd level {}, median of {} runs; zvimg to a durable file (synced, renamed), zstd without a sync",
        args.level,
        args.runs.max(1)
    );
    println!(
        "{:<34} {:>10} {:>10} {:>9} {:>11} {:>9} {:>11} {:>7} {:>6}",
        "input", "disk", "read", "zvimg s", "zvimg out", "zstd s", "zstd out", "speed", "size"
    );
    for r in reports {
        let name = r
            .input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!(
            "{:<34} {:>10} {:>10} {:>9.2} {:>11} {:>9.2} {:>11} {:>6.2}x {:>5.3}x",
            format!("{name} ({})", r.format),
            human(r.disk_bytes),
            human(r.zvimg_bytes_read),
            r.zvimg_seconds,
            human(r.zvimg_bytes),
            r.zstd_seconds,
            human(r.zstd_bytes),
            r.throughput_ratio,
            r.size_ratio,
        );
        for run in &r.zvimg_runs {
            let s = &run.seconds;
            println!(
                "    zvimg run {:.2} s: expand {:.2}, reading {:.2}, waiting for compression {:.2}, \
                 writing {:.2}, final sync {:.2} ({} syncs behind)",
                s.total,
                s.expand,
                s.reading,
                s.waiting_for_workers,
                s.writing,
                s.final_sync,
                run.writeback_syncs
            );
        }
    }
    println!(
        "speed = zstd seconds / zvimg seconds (target >= 0.8); size = zvimg / zstd output (target <= 1.05)"
    );
}

/// DIR/real-mix.raw: the first 424 MiB of `tar cf - -C / usr/lib`, then
/// 600 MiB of /dev/urandom (1 GiB: compressible files, then incompressible
/// data, no zero blocks to skip). Kept if it exists.
pub fn make_real_mix(dir: &Path) -> anyhow::Result<PathBuf> {
    const TAR_BYTES: u64 = 424 << 20;
    const RANDOM_BYTES: u64 = 600 << 20;
    let path = dir.join("real-mix.raw");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == TAR_BYTES + RANDOM_BYTES) {
        eprintln!("zvimg bench convert: using {}", path.display());
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    eprintln!(
        "zvimg bench convert: making {} (424 MiB of a tar of /usr/lib, 600 MiB of /dev/urandom)",
        path.display()
    );
    let tmp = TempFile::new(crate::convert::temp_beside(&path, "partial"));
    let mut out = BufWriter::with_capacity(1 << 20, File::create(tmp.path())?);
    let mut tar = Command::new("tar")
        .args(["cf", "-", "-C", "/", "usr/lib"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running tar")?;
    let stdout = tar.stdout.take().expect("piped");
    let copied = std::io::copy(&mut stdout.take(TAR_BYTES), &mut out)?;
    let _ = tar.kill();
    let _ = tar.wait();
    if copied != TAR_BYTES {
        bail!("tar of /usr/lib gave only {copied} bytes, fewer than 424 MiB");
    }
    let random = File::open("/dev/urandom")?;
    std::io::copy(&mut random.take(RANDOM_BYTES), &mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    tmp.persist(&path)?;
    Ok(path)
}

/// DIR/sparse-64g.raw: 64 GiB, of which 8 MiB hold data (2 MiB each at 0,
/// 1 GiB, 32 GiB and the last 2 MiB; half random, half text), the rest
/// holes; and DIR/sparse-64g.qcow2, the same disk converted by qemu-img.
pub fn make_sparse(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    const SIZE: u64 = 64 << 30;
    const CHUNK: u64 = 2 << 20;
    let raw = dir.join("sparse-64g.raw");
    let qcow2 = dir.join("sparse-64g.qcow2");
    if std::fs::metadata(&raw).is_ok_and(|m| m.len() == SIZE) && qcow2.exists() {
        eprintln!(
            "zvimg bench convert: using {} and {}",
            raw.display(),
            qcow2.display()
        );
        return Ok((raw, qcow2));
    }
    std::fs::create_dir_all(dir)?;
    eprintln!(
        "zvimg bench convert: making {} (64 GiB, 8 MiB of data) and {}",
        raw.display(),
        qcow2.display()
    );
    let file = File::create(&raw)?;
    file.set_len(SIZE)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(64);
    let mut chunk = vec![0u8; CHUNK as usize];
    for at in [0, 1 << 30, 32 << 30, SIZE - CHUNK] {
        let (random, text) = chunk.split_at_mut(CHUNK as usize / 2);
        rng.fill_bytes(random);
        for (i, b) in text.iter_mut().enumerate() {
            *b = b"sparse disk, real data "[(i + rng.gen_range(0..3)) % 23];
        }
        std::os::unix::fs::FileExt::write_all_at(&file, &chunk, at)?;
    }
    file.sync_all()?;
    let _ = std::fs::remove_file(&qcow2);
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .context("running qemu-img (apt-get install qemu-utils)")?;
    if !status.success() {
        bail!("qemu-img convert to qcow2 failed: {status}");
    }
    Ok((raw, qcow2))
}

/// Writes a synthetic disk: repeating thirds of zero, random and text-like 2 MiB blocks.
pub fn generate_mixed(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let words: Vec<String> = (0..512)
        .map(|_| {
            (0..rng.gen_range(2..10))
                .map(|_| rng.gen_range(b'a'..=b'z') as char)
                .collect()
        })
        .collect();
    let block = 2u64 << 20;
    let mut buf = vec![0u8; block as usize];
    let mut written = 0;
    let mut i = 0u64;
    while written < size {
        let n = (size - written).min(block) as usize;
        match i % 3 {
            0 => buf[..n].fill(0),
            1 => rng.fill_bytes(&mut buf[..n]),
            _ => {
                let mut pos = 0;
                while pos < n {
                    let w = words[rng.gen_range(0..words.len())].as_bytes();
                    let k = w.len().min(n - pos);
                    buf[pos..pos + k].copy_from_slice(&w[..k]);
                    pos += k;
                    if pos < n {
                        buf[pos] = b' ';
                        pos += 1;
                    }
                }
            }
        }
        out.write_all(&buf[..n])?;
        written += n as u64;
        i += 1;
    }
    out.flush()?;
    Ok(())
}
