//! `zvimg convert`: raw (or anything qemu-img reads) → ZVHD2, and ZVHD2 → raw.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::ValueEnum;
use zvhd2::{DEFAULT_BLOCK_SIZE, WriteOptions};
use zvmount::image::scan::{ScanOptions, scan_blocks};
use zvmount::image::{ImageLayout, SidecarSource};
use zvstore::open_source;

use crate::{SizeChoice, SourceArgs, default_sidecar_path, progress, runtime};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    Raw,
    Zvhd2,
    Qcow2,
    Vmdk,
    Vpc,
    Vhdx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Zvhd2,
    Raw,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input format (default: detected from the file's magic bytes).
    #[arg(short = 'f', long = "format")]
    pub input_format: Option<InputFormat>,
    /// Output format (default: zvhd2, or raw when the input is ZVHD2).
    #[arg(short = 'O', long = "output-format")]
    pub output_format: Option<OutputFormat>,
    /// Block size of a ZVHD2 output; Huawei's own tools read only 2MiB.
    #[arg(long, default_value = "2MiB", value_parser = parse_block_size)]
    pub block_size: u32,
    /// zstd compression level (Huawei's writer uses 3).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub level: i32,
    /// Compression threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Also write the `.zvidx` sidecar index beside a ZVHD2 output.
    #[arg(long)]
    pub sidecar: bool,
    /// Boot profile (one block number per line) to store in the sidecar.
    #[arg(long, requires = "sidecar")]
    pub boot_profile: Option<PathBuf>,
    /// Size of a raw output.
    #[arg(long, value_enum, default_value_t)]
    pub size: SizeChoice,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Input: a local file, or (ZVHD2 only) s3://bucket/key or an https:// URL.
    pub input: String,
    /// Output file.
    pub output: PathBuf,
}

fn parse_block_size(text: &str) -> Result<u32, String> {
    let n = zvmount::util::parse_size(text)?;
    if !n.is_power_of_two() || !(1 << 20..=32 << 20).contains(&n) {
        return Err(format!(
            "block size {text} must be a power of two from 1MiB to 32MiB"
        ));
    }
    Ok(n as u32)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let local = !is_remote(&args.input);
    let input_format = match args.input_format {
        Some(f) => f,
        None if local => detect_format(Path::new(&args.input))?,
        None => InputFormat::Zvhd2,
    };
    let output_format = args
        .output_format
        .unwrap_or(if input_format == InputFormat::Zvhd2 {
            OutputFormat::Raw
        } else {
            OutputFormat::Zvhd2
        });
    match (input_format, output_format) {
        (InputFormat::Zvhd2, OutputFormat::Raw) => zvhd2_to_raw(&args),
        (InputFormat::Zvhd2, OutputFormat::Zvhd2) => bail!(
            "{} is already ZVHD2 (use `zvimg pull` to copy it)",
            args.input
        ),
        (_, OutputFormat::Raw) => bail!(
            "raw output is for ZVHD2 input; for {input_format:?} use `qemu-img convert -O raw`"
        ),
        (InputFormat::Raw, OutputFormat::Zvhd2) => {
            if !local {
                bail!("{}: raw input must be a local file", args.input);
            }
            raw_to_zvhd2(&args, Path::new(&args.input))
        }
        (fmt, OutputFormat::Zvhd2) => {
            if !local {
                bail!("{}: {fmt:?} input must be a local file", args.input);
            }
            let tmp = qemu_img_to_raw(Path::new(&args.input), fmt, &args.output)?;
            let result = raw_to_zvhd2(&args, tmp.path());
            drop(tmp);
            result
        }
    }
}

/// Whether `source` names an object store rather than a local path.
pub fn is_remote(source: &str) -> bool {
    zvstore::is_remote(source)
}

/// Detects the format of a local image from its magic bytes.
pub fn detect_format(path: &Path) -> anyhow::Result<InputFormat> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file.metadata()?.len();
    let mut head = [0u8; 512];
    let n = read_up_to(&mut file, &mut head)?;
    let head = &head[..n];
    if head.starts_with(b"z2strm") {
        return Ok(InputFormat::Zvhd2);
    }
    if head.starts_with(b"stream\0") {
        bail!(
            "{}: an old ZVHD image (one zlib stream), not ZVHD2; it cannot be read block by block",
            path.display()
        );
    }
    if head.starts_with(b"QFI\xfb") {
        return Ok(InputFormat::Qcow2);
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        return Ok(InputFormat::Vmdk);
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(InputFormat::Vhdx);
    }
    if head.starts_with(b"conectix") {
        return Ok(InputFormat::Vpc);
    }
    if len >= 512 {
        let mut tail = [0u8; 8];
        file.seek(SeekFrom::Start(len - 512))?;
        read_up_to(&mut file, &mut tail)?;
        if &tail == b"conectix" {
            return Ok(InputFormat::Vpc);
        }
    }
    Ok(InputFormat::Raw)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub use crate::files::{TempFile, temp_beside};

/// Expands a qcow2/vmdk/vhd/vhdx image to a temporary raw file with qemu-img.
fn qemu_img_to_raw(input: &Path, fmt: InputFormat, output: &Path) -> anyhow::Result<TempFile> {
    let fmt_name = match fmt {
        InputFormat::Qcow2 => "qcow2",
        InputFormat::Vmdk => "vmdk",
        InputFormat::Vpc => "vpc",
        InputFormat::Vhdx => "vhdx",
        InputFormat::Raw | InputFormat::Zvhd2 => unreachable!("not a qemu-img format"),
    };
    let tmp = TempFile::new(temp_beside(output, "raw"));
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", fmt_name, "-O", "raw"])
        .arg(input)
        .arg(tmp.path())
        .status();
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "{}: reading {fmt_name} needs qemu-img, which is not installed (apt-get install qemu-utils)",
                input.display()
            )
        }
        Err(e) => bail!("{}: running qemu-img: {e}", input.display()),
        Ok(s) if !s.success() => bail!(
            "{}: qemu-img convert -f {fmt_name} failed ({s})",
            input.display()
        ),
        Ok(_) => Ok(tmp),
    }
}

fn raw_to_zvhd2(args: &Args, input: &Path) -> anyhow::Result<ExitCode> {
    if args.block_size != DEFAULT_BLOCK_SIZE {
        eprintln!(
            "zvimg: warning: block size {} MiB: Huawei Cloud's own tools read only 2 MiB blocks; zvmount reads it",
            args.block_size >> 20
        );
    }
    let profile = match &args.boot_profile {
        Some(p) => Some(crate::files::read_profile(p)?),
        None => None,
    };
    let file = File::open(input).with_context(|| format!("{}: cannot open", input.display()))?;
    let size = file.metadata()?.len();
    let tmp = TempFile::new(temp_beside(&args.output, "partial"));
    let out = File::create(tmp.path())
        .with_context(|| format!("{}: cannot create", tmp.path().display()))?;
    let bar = progress::bytes_bar(size, "convert");
    let options = WriteOptions {
        block_size: args.block_size,
        level: args.level,
        threads: args.threads,
    };
    let mut writer = BufWriter::with_capacity(1 << 20, out);
    let summary = zvhd2::write_image(
        std::io::BufReader::with_capacity(1 << 20, file),
        size,
        &mut writer,
        &options,
        &mut |done| bar.set_position(done),
    )
    .with_context(|| format!("converting {}", input.display()))?;
    let out = writer.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    bar.finish_and_clear();
    tmp.persist(&args.output)?;

    let mut sidecar = summary.sidecar;
    let sidecar_path = default_sidecar_path(&args.output);
    if !args.sidecar && sidecar_path.exists() {
        // A sidecar of the image this one replaced would be refused by every reader.
        std::fs::remove_file(&sidecar_path).with_context(|| {
            format!(
                "{}: cannot remove the old image's sidecar",
                sidecar_path.display()
            )
        })?;
        eprintln!(
            "zvimg: removed {}, the sidecar of the image replaced",
            sidecar_path.display()
        );
    }
    if args.sidecar {
        if let Some(p) = profile {
            sidecar.boot_profile = p;
        }
        crate::files::write_atomic(&sidecar_path, &sidecar.encode())?;
    }
    println!(
        "{}: {} disk, {} blocks ({} non-zero) -> {} ({:.2}x){}",
        args.output.display(),
        human(summary.disk_size),
        summary.blocks,
        summary.non_zero_blocks,
        human(summary.image_size),
        summary.disk_size as f64 / summary.image_size.max(1) as f64,
        if args.sidecar { " + sidecar" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

fn zvhd2_to_raw(args: &Args) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, key) = open_source(&args.input, &args.source.store).await?;
        let layout = ImageLayout::load(store.as_ref(), &key, &SidecarSource::Auto).await?;
        let size = match args.size {
            SizeChoice::Orig => layout.header.disk_size(),
            SizeChoice::Curr => layout.header.curr_size(),
        };
        let verify = layout.sidecar.clone().map(Arc::new);
        let tmp = TempFile::new(temp_beside(&args.output, "partial"));
        let mut out = File::create(tmp.path())
            .with_context(|| format!("{}: cannot create", tmp.path().display()))?;
        out.set_len(size)?;
        let bar = progress::bytes_bar(size, "decode");
        let block_size = u64::from(layout.header.block_size());
        let options = ScanOptions {
            parallel: 8,
            verify_with: verify,
            ..ScanOptions::default()
        };
        scan_blocks(
            store.clone(),
            &layout,
            &options,
            |b| -> anyhow::Result<()> {
                let start = b.block * block_size;
                bar.set_position((start + block_size).min(size));
                if b.record_crc32c.is_none() || start >= size {
                    return Ok(()); // zero block: the file is sparse there
                }
                let len = (size - start).min(block_size) as usize;
                out.seek(SeekFrom::Start(start))
                    .and_then(|_| out.write_all(&b.data[..len]))
                    .with_context(|| format!("{}: write failed", args.output.display()))
            },
        )
        .await?;
        out.sync_all()?;
        bar.finish_and_clear();
        tmp.persist(&args.output)?;
        println!(
            "{}: {} raw disk from {}",
            args.output.display(),
            human(size),
            layout.location
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Bytes as a short human figure (binary units).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}
