//! `zvimg bench convert`: raw → ZVHD2 throughput and output size, against
//! `zstd -T0` at the same level on the same file, measured in the same run.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use zvhd2::{WriteOptions, write_image};

use crate::convert::{TempFile, human};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Raw disk to convert; without it a mixed test disk of --generate bytes is made.
    pub input: Option<PathBuf>,
    /// Size of the generated test disk (a third zeros, a third random, a third text-like).
    #[arg(long, default_value = "1GiB", value_parser = zvmount::util::parse_size)]
    pub generate: u64,
    /// zstd level for both.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Runs of each; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Directory for temporary files.
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    input_bytes: u64,
    level: i32,
    zvimg_seconds: f64,
    zvimg_bytes: u64,
    zstd_seconds: f64,
    zstd_bytes: u64,
    /// zvimg MB/s ÷ zstd MB/s (target ≥ 0.8).
    throughput_ratio: f64,
    /// zvimg output ÷ zstd output (target ≤ 1.05).
    size_ratio: f64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let generated;
    let input: &Path = match &args.input {
        Some(p) => p,
        None => {
            generated = TempFile::new(
                args.dir
                    .join(format!("zvimg-bench-{}.raw", std::process::id())),
            );
            generate_mixed(generated.path(), args.generate)?;
            generated.path()
        }
    };
    let size = std::fs::metadata(input)
        .with_context(|| format!("{}: cannot read", input.display()))?
        .len();
    // Warm the page cache so both measure compression, not the first read.
    std::io::copy(&mut File::open(input)?, &mut std::io::sink())?;

    let zv_out = TempFile::new(
        args.dir
            .join(format!("zvimg-bench-{}.zvhd2", std::process::id())),
    );
    let zs_out = TempFile::new(
        args.dir
            .join(format!("zvimg-bench-{}.zst", std::process::id())),
    );
    let mut zv_best = f64::MAX;
    let mut zs_best = f64::MAX;
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        let mut out = BufWriter::with_capacity(1 << 20, File::create(zv_out.path())?);
        let options = WriteOptions {
            level: args.level,
            ..WriteOptions::default()
        };
        write_image(
            BufReader::with_capacity(1 << 20, File::open(input)?),
            size,
            &mut out,
            &options,
            &mut |_| {},
        )?;
        out.flush()?;
        zv_best = zv_best.min(t.elapsed().as_secs_f64());

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
        zs_best = zs_best.min(t.elapsed().as_secs_f64());
    }
    let zv_bytes = std::fs::metadata(zv_out.path())?.len();
    let zs_bytes = std::fs::metadata(zs_out.path())?.len();
    let report = Report {
        input_bytes: size,
        level: args.level,
        zvimg_seconds: zv_best,
        zvimg_bytes: zv_bytes,
        zstd_seconds: zs_best,
        zstd_bytes: zs_bytes,
        throughput_ratio: zs_best / zv_best,
        size_ratio: zv_bytes as f64 / zs_bytes as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mbps = |s: f64| size as f64 / s / 1e6;
        println!(
            "input {} ({} bytes), level {}, best of {}",
            human(size),
            size,
            args.level,
            args.runs
        );
        println!(
            "{:<22} {:>10} {:>10} {:>12}",
            "", "seconds", "MB/s", "output"
        );
        println!(
            "{:<22} {:>10.2} {:>10.0} {:>12}",
            "zvimg convert",
            zv_best,
            mbps(zv_best),
            human(zv_bytes)
        );
        let label = format!("zstd -{} -T0", args.level);
        println!(
            "{label:<22} {:>10.2} {:>10.0} {:>12}",
            zs_best,
            mbps(zs_best),
            human(zs_bytes)
        );
        println!(
            "throughput ratio {:.2}x (target >= 0.8), size ratio {:.3}x (target <= 1.05)",
            report.throughput_ratio, report.size_ratio
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a test disk: repeating thirds of zero, random and text-like 2 MiB blocks.
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
