//! `zvimg convert`: raw (or anything qemu-img reads) → ZVHD2, and ZVHD2 → raw.
//!
//! Raw input is read through its allocation map: holes (`SEEK_DATA` /
//! `SEEK_HOLE`) become zero blocks without a read, so a mostly empty disk
//! converts at the speed of its data. qcow2/vmdk/vhd/vhdx go through a
//! sparse temporary raw file from `qemu-img`, which keeps their map. The
//! output is written beside its destination, its writeback kept running
//! behind the writer, synced and renamed into place: crash-safe, without a
//! long wait for the disk at the end.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::ValueEnum;
use serde::Serialize;
use zvhd2::{DEFAULT_BLOCK_SIZE, WriteOptions};
use zvmount::image::scan::{ScanOptions, scan_blocks};
use zvmount::image::{ImageLayout, SidecarSource};
use zvstore::open_source;

use crate::{SizeChoice, SourceArgs, default_sidecar_path, progress, runtime};

mod io;
pub use io::{OutputThread, SparseFile, WritebackFile};

/// What a `convert` input is (`-f`); detected from magic bytes by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// A raw disk: the bytes of the disk, holes read as zeros.
    Raw,
    /// A ZVHD2 image (decoded and re-encoded, or written out raw).
    Zvhd2,
    /// QEMU copy-on-write v2 (through `qemu-img`).
    Qcow2,
    /// VMware disk (through `qemu-img`).
    Vmdk,
    /// Virtual PC / Azure VHD (through `qemu-img`).
    Vpc,
    /// Hyper-V VHDX (through `qemu-img`).
    Vhdx,
}

/// What `convert` writes (`-O`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A ZVHD2 image and its `.zvidx` sidecar.
    Zvhd2,
    /// A raw disk (sparse where the image has zero blocks).
    Raw,
}

/// Flags of `zvimg convert`.
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
    /// Print what was done as JSON (sizes, bytes read, where the time went).
    #[arg(long)]
    pub json: bool,
    /// Store settings, for a remote ZVHD2 input.
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

/// Runs `zvimg convert`: an error names the input and what in it is wrong.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let local = !is_remote(&args.input);
    if local {
        // The output replaces its destination by a rename: over the input,
        // that would destroy the disk being converted.
        use std::os::unix::fs::MetadataExt;
        if let (Ok(i), Ok(o)) = (
            std::fs::metadata(&args.input),
            std::fs::metadata(&args.output),
        ) && (i.dev(), i.ino()) == (o.dev(), o.ino())
        {
            bail!(
                "{} and {} are the same file: the output would replace the input",
                args.input,
                args.output.display()
            );
        }
    }
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
        (fmt, OutputFormat::Zvhd2) => {
            if !local {
                bail!("{}: {fmt:?} input must be a local file", args.input);
            }
            let profile = match &args.boot_profile {
                Some(p) => Some(crate::files::read_profile(p)?),
                None => None,
            };
            let options = ConvertOptions {
                write: WriteOptions {
                    block_size: args.block_size,
                    level: args.level,
                    threads: args.threads,
                },
                sidecar: args.sidecar,
                boot_profile: profile,
                progress: !args.json,
            };
            let report = convert_to_zvhd2(Path::new(&args.input), fmt, &args.output, &options)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: {} disk, {} blocks ({} non-zero) -> {} ({:.2}x){}; read {} in {:.2} s",
                    args.output.display(),
                    human(report.disk_size),
                    report.blocks,
                    report.non_zero_blocks,
                    human(report.image_size),
                    report.disk_size as f64 / report.image_size.max(1) as f64,
                    if args.sidecar { " + sidecar" } else { "" },
                    human(report.bytes_read),
                    report.seconds.total,
                );
            }
            Ok(ExitCode::SUCCESS)
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

/// Expands a qcow2/vmdk/vhd/vhdx image to a temporary raw file with
/// qemu-img. The file is sparse (`-S 4k`, qemu-img's default made explicit):
/// only the image's allocated, non-zero clusters are written, so walking its
/// holes afterwards keeps the image's allocation map. It is not synced
/// (`-t unsafe`): it is read back at once and deleted.
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
        .args([
            "convert", "-f", fmt_name, "-O", "raw", "-S", "4k", "-t", "unsafe",
        ])
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

/// How to convert to ZVHD2.
pub struct ConvertOptions {
    /// Block size, zstd level, threads.
    pub write: WriteOptions,
    /// Also write the `.zvidx` sidecar beside the output.
    pub sidecar: bool,
    /// Block numbers to store in the sidecar as the boot profile.
    pub boot_profile: Option<Vec<u64>>,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a conversion did, for `--json` and the benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertReport {
    /// The image written.
    pub output: PathBuf,
    /// The disk's size (`orig_size`).
    pub disk_size: u64,
    /// The ZVHD2 file's size.
    pub image_size: u64,
    /// Blocks of the disk (`max_blk_num`).
    pub blocks: u64,
    /// Blocks stored as records.
    pub non_zero_blocks: u64,
    /// Raw bytes read: holes are skipped, so this is about the data's size.
    pub bytes_read: u64,
    /// Background `fdatasync`s run while converting.
    pub writeback_syncs: u32,
    /// Where the time went.
    pub seconds: ConvertSeconds,
}

/// Where a conversion's wall-clock time went, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConvertSeconds {
    /// Start to the output renamed into place.
    pub total: f64,
    /// qemu-img expanding a non-raw input to a sparse raw file.
    pub expand: f64,
    /// The writer reading input, finding holes and checking zeros.
    pub reading: f64,
    /// The writer waiting for compression workers (compression-bound).
    pub waiting_for_workers: f64,
    /// The writer handing bytes to the output file.
    pub writing: f64,
    /// The final sync: writeback the background syncs had not done yet.
    pub final_sync: f64,
}

/// Converts a local `input` of format `fmt` (not ZVHD2) to a ZVHD2 image at
/// `output`: written beside it, synced, renamed into place.
pub fn convert_to_zvhd2(
    input: &Path,
    fmt: InputFormat,
    output: &Path,
    options: &ConvertOptions,
) -> anyhow::Result<ConvertReport> {
    let started = Instant::now();
    if options.write.block_size != DEFAULT_BLOCK_SIZE {
        eprintln!(
            "zvimg: warning: block size {} MiB: Huawei Cloud's own tools read only 2 MiB blocks; zvmount reads it",
            options.write.block_size >> 20
        );
    }
    let (expanded, raw_path) = match fmt {
        InputFormat::Raw => (None, input.to_path_buf()),
        InputFormat::Zvhd2 => bail!("{}: already ZVHD2", input.display()),
        _ => {
            let tmp = qemu_img_to_raw(input, fmt, output)?;
            let path = tmp.path().to_path_buf();
            (Some(tmp), path)
        }
    };
    let expand = started.elapsed();
    let file =
        File::open(&raw_path).with_context(|| format!("{}: cannot open", input.display()))?;
    let size = file.metadata()?.len();
    if !size.is_multiple_of(512) {
        // ZVHD2 disks are whole 512-byte sectors (as VHD's are): the image's
        // disk is larger than the input, its tail zeros.
        tracing::warn!(
            "{} is {size} bytes, not a whole number of 512-byte sectors: the image's disk is {} bytes, zero-padded",
            input.display(),
            size.next_multiple_of(512)
        );
    }
    if let Some(profile) = &options.boot_profile {
        // The same rule `zvimg index` and every sidecar reader apply: a
        // profile naming a block past the disk makes the sidecar unreadable,
        // so refuse it before any output is written.
        let blocks = size.div_ceil(u64::from(options.write.block_size));
        if let Some(&bad) = profile.iter().find(|&&b| b >= blocks) {
            bail!(
                "boot profile names block {bad}, the disk {} has {blocks} blocks",
                input.display()
            );
        }
    }
    let tmp = TempFile::new(temp_beside(output, "partial"));
    let out = File::create(tmp.path())
        .with_context(|| format!("{}: cannot create", tmp.path().display()))?;
    let bar = if options.progress {
        progress::bytes_bar(size, "convert")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut writer = OutputThread::new(WritebackFile::new(out)?)?;
    let summary = zvhd2::write_image_from(
        &mut SparseFile::new(file),
        size,
        &mut writer,
        &options.write,
        &mut |done| bar.set_position(done),
    )
    .with_context(|| format!("converting {}", input.display()))?;
    drop(expanded);
    let (final_sync, writeback_syncs) = writer
        .finish()
        .with_context(|| format!("{}: cannot sync", tmp.path().display()))?;
    bar.finish_and_clear();
    tmp.persist(output)?;
    // The rename itself is durable only once the directory is.
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("{}: cannot sync the directory", dir.display()))?;

    let mut sidecar = summary.sidecar;
    let sidecar_path = default_sidecar_path(output);
    if !options.sidecar && sidecar_path.exists() {
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
    if options.sidecar {
        if let Some(p) = &options.boot_profile {
            sidecar.boot_profile = p.clone();
        }
        crate::files::write_atomic(&sidecar_path, &sidecar.encode())?;
    }
    let t = &summary.timings;
    Ok(ConvertReport {
        output: output.to_path_buf(),
        disk_size: summary.disk_size,
        image_size: summary.image_size,
        blocks: summary.blocks,
        non_zero_blocks: summary.non_zero_blocks,
        bytes_read: summary.bytes_read,
        writeback_syncs,
        seconds: ConvertSeconds {
            total: started.elapsed().as_secs_f64(),
            expand: expand.as_secs_f64(),
            reading: t.reading.as_secs_f64(),
            waiting_for_workers: t.waiting_for_workers.as_secs_f64(),
            writing: t.writing.as_secs_f64(),
            final_sync: final_sync.as_secs_f64(),
        },
    })
}

fn zvhd2_to_raw(args: &Args) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        let (store, key) = open_source(&args.input, &args.source.store.to_config()).await?;
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
