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
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::ValueEnum;
use serde::Serialize;
use zvhd2::{DEFAULT_BLOCK_SIZE, DiskSource, WriteOptions};
use zvmount::image::scan::{ScanOptions, scan_blocks};
use zvmount::image::{ImageLayout, SidecarSource};
use zvstore::open_source;

use crate::{SizeChoice, SourceArgs, default_sidecar_path, progress, runtime};

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

/// A local raw file read through its allocation map: what the file system
/// reports as a hole (`SEEK_HOLE`) reads as zeros by definition, so blocks
/// inside one are never read. On a file system without `SEEK_DATA` every
/// block is read.
pub struct SparseFile {
    file: File,
    /// The data extent at or after the last offset asked about; `u64::MAX..`
    /// when no data follows.
    extent: Range<u64>,
    /// Blocks at or past this offset were not asked about yet.
    asked_up_to: u64,
}

impl SparseFile {
    /// Reads `file` (its offset is not used: reads are positioned).
    pub fn new(file: File) -> Self {
        SparseFile {
            file,
            extent: 0..0,
            asked_up_to: 0,
        }
    }

    /// The data extent starting at or after `from`.
    fn next_extent(&self, from: u64) -> std::io::Result<Range<u64>> {
        use rustix::fs::{SeekFrom as At, seek};
        use rustix::io::Errno;
        match seek(&self.file, At::Data(from)) {
            Ok(start) => {
                let end = seek(&self.file, At::Hole(start))?;
                Ok(start..end.max(start + 1))
            }
            // No data at or after `from`: the rest is one hole.
            Err(Errno::NXIO) => Ok(u64::MAX..u64::MAX),
            // No hole support here: treat everything as data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => Ok(from..u64::MAX),
            Err(e) => Err(e.into()),
        }
    }
}

impl DiskSource for SparseFile {
    fn may_hold_data(&mut self, offset: u64, len: u64) -> std::io::Result<bool> {
        if offset < self.asked_up_to {
            // Offsets come in increasing order; a step back would need a new walk.
            self.extent = 0..0;
        }
        self.asked_up_to = offset;
        if offset >= self.extent.end {
            self.extent = self.next_extent(offset)?;
        }
        Ok(self.extent.start < offset.saturating_add(len))
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
}

/// How often the output's writeback is pushed along while converting.
const WRITEBACK_STEP: u64 = 64 << 20;

/// The output file, with its writeback running behind the writer: every
/// `WRITEBACK_STEP` (64 MiB) bytes a background thread `fdatasync`s what is written
/// so far, so the disk works while the cores compress and the final sync
/// finds little left. (`sync_file_range` would do it without a thread, but
/// neither rustix nor nix offers it safely.) Errors of those syncs are kept
/// and returned by [`WritebackFile::finish`]: a failed writeback is reported
/// once per open file, so the final sync alone could miss it.
pub struct WritebackFile {
    file: File,
    since_kick: u64,
    kick: Option<mpsc::SyncSender<()>>,
    syncer: Option<std::thread::JoinHandle<std::io::Result<u32>>>,
}

impl WritebackFile {
    /// Wraps a file just created for writing; starts the syncing thread.
    pub fn new(file: File) -> std::io::Result<Self> {
        let clone = file.try_clone()?;
        // One kick may wait while a sync runs; more are folded into it.
        let (kick, kicks) = mpsc::sync_channel::<()>(1);
        let syncer = std::thread::Builder::new()
            .name("zvimg-writeback".into())
            .spawn(move || -> std::io::Result<u32> {
                let mut syncs = 0;
                for () in kicks {
                    clone.sync_data()?;
                    syncs += 1;
                }
                Ok(syncs)
            })?;
        Ok(WritebackFile {
            file,
            since_kick: 0,
            kick: Some(kick),
            syncer: Some(syncer),
        })
    }

    /// Stops the background syncs, then syncs the file (data and metadata).
    /// Returns the time the final sync took and how many background syncs ran.
    pub fn finish(mut self) -> std::io::Result<(Duration, u32)> {
        drop(self.kick.take());
        let syncs = match self.syncer.take().map(|h| h.join()) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => return Err(std::io::Error::other("writeback thread panicked")),
            None => 0,
        };
        let started = Instant::now();
        self.file.sync_all()?;
        Ok((started.elapsed(), syncs))
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.since_kick += n as u64;
        if self.since_kick >= WRITEBACK_STEP {
            self.since_kick = 0;
            if let Some(kick) = &self.kick {
                // Full: a sync is already queued and will cover these bytes.
                // Disconnected: the syncer stopped on an error `finish` returns.
                let _ = kick.try_send(());
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for WritebackFile {
    fn drop(&mut self) {
        drop(self.kick.take());
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
    }
}

/// Bytes handed to the output thread at a time.
const OUTPUT_CHUNK: usize = 1 << 20;
/// Chunks that may wait for the output thread: 64 MiB of slack, so a
/// `write` held up by writeback (stable pages, a running `fdatasync`) does
/// not stall the thread that feeds the compression workers.
const OUTPUT_QUEUE: usize = 64;

/// A [`WritebackFile`] written by a thread of its own. The converting thread
/// both reads the input and writes records in order; when a `write` blocks
/// behind the disk, the workers run dry. This writer copies into 1 MiB
/// chunks and queues them (bounded: memory stays at most
/// `OUTPUT_QUEUE` x 1 MiB); a write error stops the thread and is returned
/// by the next `write` or by [`OutputThread::finish`].
pub struct OutputThread {
    chunk: Vec<u8>,
    full: Option<mpsc::SyncSender<Vec<u8>>>,
    empty: mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<WritebackFile>>>,
}

impl OutputThread {
    /// Starts the thread that writes to `file`.
    pub fn new(mut file: WritebackFile) -> std::io::Result<Self> {
        let (full, chunks) = mpsc::sync_channel::<Vec<u8>>(OUTPUT_QUEUE);
        let (recycle, empty) = mpsc::channel::<Vec<u8>>();
        let thread = std::thread::Builder::new()
            .name("zvimg-output".into())
            .spawn(move || -> std::io::Result<WritebackFile> {
                for mut chunk in chunks {
                    file.write_all(&chunk)?;
                    chunk.clear();
                    // The converting thread may have finished already.
                    let _ = recycle.send(chunk);
                }
                Ok(file)
            })?;
        Ok(OutputThread {
            chunk: Vec::with_capacity(OUTPUT_CHUNK),
            full: Some(full),
            empty,
            thread: Some(thread),
        })
    }

    fn send_chunk(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(OUTPUT_CHUNK));
        let chunk = std::mem::replace(&mut self.chunk, next);
        let sent = self.full.as_ref().map(|tx| tx.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: its error is the one to report.
            _ => Err(self
                .stop()
                .err()
                .unwrap_or_else(|| std::io::Error::other("the output thread stopped"))),
        }
    }

    fn stop(&mut self) -> std::io::Result<WritebackFile> {
        drop(self.full.take());
        match self.thread.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the output thread panicked")),
            None => Err(std::io::Error::other("the output thread already stopped")),
        }
    }

    /// Writes what is queued, then syncs the file as
    /// [`WritebackFile::finish`] does; returns the same figures.
    pub fn finish(mut self) -> std::io::Result<(Duration, u32)> {
        self.send_chunk()?;
        self.stop()?.finish()
    }
}

impl Write for OutputThread {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(OUTPUT_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == OUTPUT_CHUNK {
            self.send_chunk()?;
        }
        Ok(n)
    }

    /// Hands the partial chunk to the thread; it is on disk only after
    /// [`OutputThread::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        self.send_chunk()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_thread_writes_everything_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w =
            OutputThread::new(WritebackFile::new(File::create(&path).unwrap()).unwrap()).unwrap();
        let mut want = Vec::new();
        for i in 0..5000u32 {
            // Odd sizes, so pieces straddle chunk boundaries.
            let piece = vec![(i % 251) as u8; 1 + (i as usize * 7919) % 3000];
            w.write_all(&piece).unwrap();
            want.extend_from_slice(&piece);
        }
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn output_thread_reports_a_full_disk() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut w = OutputThread::new(WritebackFile::new(full).unwrap()).unwrap();
        let chunk = vec![7u8; 1 << 20];
        // The error surfaces at a later write or at finish, never not at all.
        let mut err = None;
        for _ in 0..(OUTPUT_QUEUE + 4) {
            if let Err(e) = w.write_all(&chunk) {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => w.finish().unwrap_err(),
        };
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
    }
}
