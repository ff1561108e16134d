//! `zvimg info`, `check` and `index`: read an image from any source.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use zvhd2::{BlockLocation, Compression, Sidecar, SidecarEntry};
use zvmount::image::open::sidecar_key;
use zvmount::image::scan::{ScanOptions, scan_blocks};
use zvmount::image::{ImageError, ImageLayout, SidecarSource};
use zvmount::util::hex;
use zvstore::{ObjectStore, open_source};

use crate::convert::{human, is_remote};
use crate::{SourceArgs, default_sidecar_path, runtime};

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub source: SourceArgs,
    /// The image: a local path, s3://bucket/key or an https:// URL.
    pub image: String,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Verify against this sidecar (local path or URL; default: IMAGE.zvidx when it exists).
    #[arg(long)]
    pub sidecar: Option<String>,
    /// Decode only; don't look for a sidecar beside the image.
    #[arg(long, conflicts_with = "sidecar")]
    pub no_sidecar: bool,
    /// Records fetched and decoded at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    #[command(flatten)]
    pub source: SourceArgs,
    /// The image: a local path, s3://bucket/key or an https:// URL.
    pub image: String,
}

#[derive(clap::Args, Debug)]
pub struct IndexArgs {
    /// Where to write the sidecar (default: IMAGE.zvidx beside the image, also in object stores).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Boot profile to embed: block numbers in first-read order, one per line
    /// (as written by `zvmount --record-profile`).
    #[arg(long)]
    pub boot_profile: Option<PathBuf>,
    /// Records fetched and decoded at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    #[command(flatten)]
    pub source: SourceArgs,
    /// The image: a local path, s3://bucket/key or an https:// URL.
    pub image: String,
}

#[derive(Serialize)]
struct Info {
    location: String,
    image_size: u64,
    disk_size: u64,
    curr_size: u64,
    block_size: u32,
    blocks: u64,
    non_zero_blocks: u64,
    zero_blocks: u64,
    compression: Compression,
    compression_ratio: f64,
    sidecar: String,
    image_digest: Option<String>,
    boot_profile_blocks: Option<usize>,
    footer: FooterInfo,
}

#[derive(Serialize)]
struct FooterInfo {
    cookie: String,
    features: u32,
    ff_version: String,
    timestamp: u32,
    creator_app: String,
    creator_version: String,
    uuid: String,
    zvhd2_version: u8,
    max_blk_num: u32,
    index_lba: u64,
    bitmap_lba: u64,
    index_size: u32,
    bitmap_size: u32,
    index_seg_num: u32,
    bitmap_seg_num: u32,
    non_zero_blk_num: u32,
    index_contains_zero_blk: u8,
    compress_method: u8,
}

pub fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let (store, key) = open_source(&args.image, &args.source.store).await?;
        let mut layout = ImageLayout::load(store.as_ref(), &key, &SidecarSource::Ignore).await?;
        let sidecar_status = match layout.load_sidecar(store.as_ref(), &SidecarSource::Auto).await {
            Ok(Some(sc)) => {
                layout.sidecar = Some(sc);
                format!("{} (matches)", store.location(&sidecar_key(store.as_ref(), &key)))
            }
            Ok(None) => "none".to_string(),
            Err(ImageError::Sidecar { sidecar, detail, .. }) => format!("{sidecar}: REFUSED: {detail}"),
            Err(e) => return Err(e.into()),
        };
        let f = &layout.header.footer;
        let blocks = layout.index.block_count();
        let non_zero = layout.index.non_zero_count();
        let info = Info {
            location: layout.location.clone(),
            image_size: layout.meta.size,
            disk_size: layout.header.disk_size(),
            curr_size: layout.header.curr_size(),
            block_size: layout.header.block_size(),
            blocks,
            non_zero_blocks: non_zero,
            zero_blocks: blocks - non_zero,
            compression: layout.header.compression(),
            compression_ratio: layout.header.disk_size() as f64 / layout.meta.size.max(1) as f64,
            sidecar: sidecar_status,
            image_digest: layout.sidecar.as_ref().map(|s| hex(&s.image_digest)),
            boot_profile_blocks: layout.sidecar.as_ref().map(|s| s.boot_profile.len()),
            footer: FooterInfo {
                cookie: String::from_utf8_lossy(&f.cookie).trim_end_matches('\0').to_string(),
                features: f.features,
                ff_version: format!("{:#010x}", f.ff_version),
                timestamp: f.timestamp,
                creator_app: String::from_utf8_lossy(&f.creator_app).trim_end_matches('\0').to_string(),
                creator_version: format!("{:#010x}", f.creator_version),
                uuid: hex(&f.uuid),
                zvhd2_version: f.zvhd2_version,
                max_blk_num: f.max_blk_num,
                index_lba: f.index_lba,
                bitmap_lba: f.bitmap_lba,
                index_size: f.index_size,
                bitmap_size: f.bitmap_size,
                index_seg_num: f.index_seg_num,
                bitmap_seg_num: f.bitmap_seg_num,
                non_zero_blk_num: f.non_zero_blk_num,
                index_contains_zero_blk: f.index_contains_zero_blk,
                compress_method: f.compress_method,
            },
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&info)?);
        } else {
            println!("image:        {}", info.location);
            println!("format:       ZVHD2 v{}, {:?}, {} blocks", f.zvhd2_version, info.compression, human(u64::from(info.block_size)));
            println!("disk size:    {} ({} bytes; curr_size {} bytes)", human(info.disk_size), info.disk_size, info.curr_size);
            println!("image size:   {} ({} bytes), ratio {:.2}x", human(info.image_size), info.image_size, info.compression_ratio);
            println!("blocks:       {} ({} with data, {} zero)", info.blocks, info.non_zero_blocks, info.zero_blocks);
            println!("sidecar:      {}", info.sidecar);
            if let Some(d) = &info.image_digest {
                println!("digest:       blake3:{d}");
            }
            if let Some(n) = info.boot_profile_blocks {
                println!("boot profile: {n} blocks");
            }
            let ff = &info.footer;
            println!(
                "footer:       cookie {:?}, uuid {}, created by {:?} {} at {} (s since 2000)",
                ff.cookie, ff.uuid, ff.creator_app, ff.creator_version, ff.timestamp
            );
            println!(
                "              index at {} ({} segs, {} B), bitmap at {} ({} segs, {} B), zero-block entries {}",
                ff.index_lba, ff.index_seg_num, ff.index_size, ff.bitmap_lba, ff.bitmap_seg_num, ff.bitmap_size, ff.index_contains_zero_blk
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let (store, key) = open_source(&args.image, &args.source.store).await?;
        // The image's own index is what is checked; the sidecar is the reference.
        let layout = ImageLayout::load(store.as_ref(), &key, &SidecarSource::Ignore).await?;
        let sidecar_source = match (&args.sidecar, args.no_sidecar) {
            (_, true) => SidecarSource::Ignore,
            (Some(s), _) => {
                let (sc_store, sc_key) = open_sidecar_source(s, &args.source).await?;
                SidecarSource::Object(sc_store, sc_key)
            }
            (None, false) => SidecarSource::Auto,
        };
        let sidecar = layout
            .load_sidecar(store.as_ref(), &sidecar_source)
            .await?
            .map(Arc::new);
        let options = ScanOptions {
            parallel: args.parallel,
            verify_with: sidecar.clone(),
            ..ScanOptions::default()
        };
        let mut records = 0u64;
        let result = scan_blocks(
            store.clone(),
            &layout,
            &options,
            |b| -> Result<(), ImageError> {
                if matches!(b.location, BlockLocation::Record(_)) {
                    records += 1;
                }
                Ok(())
            },
        )
        .await;
        match result {
            Ok(()) => {
                println!(
                    "{}: OK: {} blocks ({records} records) decoded{}",
                    layout.location,
                    layout.index.block_count(),
                    match &sidecar {
                        Some(sc) => format!(
                            ", verified against the sidecar, digest blake3:{}",
                            hex(&sc.image_digest)
                        ),
                        None =>
                            " (no sidecar: contents not verified against checksums)".to_string(),
                    }
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("zvimg: check FAILED: {e}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// A sidecar given on the command line: a local path or a URL.
async fn open_sidecar_source(
    source: &str,
    args: &SourceArgs,
) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    Ok(open_source(source, &args.store).await?)
}

pub fn index(args: IndexArgs) -> anyhow::Result<ExitCode> {
    let profile = match &args.boot_profile {
        Some(p) => read_profile(p)?,
        None => Vec::new(),
    };
    runtime()?.block_on(async {
        let (store, key) = open_source(&args.image, &args.source.store).await?;
        let layout = ImageLayout::load(store.as_ref(), &key, &SidecarSource::Ignore).await?;
        let bar = crate::progress::bytes_bar(layout.meta.size, "index");
        let mut entries = Vec::with_capacity(layout.index.block_count() as usize);
        let mut done = 0u64;
        scan_blocks(
            store.clone(),
            &layout,
            &ScanOptions {
                parallel: args.parallel,
                verify_with: None,
                hash_blocks: true,
            },
            |b| -> Result<(), ImageError> {
                let (record_offset, record_size) = match b.location {
                    BlockLocation::Record(r) => (r.offset, r.size),
                    BlockLocation::Zero => (0, 0),
                };
                done += u64::from(record_size);
                bar.set_position(done);
                entries.push(SidecarEntry {
                    record_offset,
                    record_size,
                    record_crc32c: b.record_crc32c.unwrap_or(0),
                    block_hash: b.block_hash.expect("hash_blocks is set"),
                });
                Ok(())
            },
        )
        .await?;
        bar.finish_and_clear();
        for &block in &profile {
            if block >= layout.index.block_count() {
                anyhow::bail!(
                    "boot profile names block {block}, the image has {} blocks",
                    layout.index.block_count()
                );
            }
        }
        let sidecar = Sidecar::from_parts(layout.identity, &layout.header, entries, profile);
        let bytes = sidecar.encode();
        let dest = match (&args.output, is_remote(&args.image)) {
            (Some(p), _) => {
                write_atomic(p, &bytes)?;
                p.display().to_string()
            }
            (None, false) => {
                let p = default_sidecar_path(Path::new(&args.image));
                write_atomic(&p, &bytes)?;
                p.display().to_string()
            }
            (None, true) => {
                let tmp = tempfile_with(&bytes)?;
                let sc_key = sidecar_key(store.as_ref(), &key);
                store.put_file(&sc_key, tmp.path()).await?;
                store.location(&sc_key)
            }
        };
        println!(
            "{dest}: sidecar for {} ({} blocks, {} bytes), digest blake3:{}",
            layout.location,
            sidecar.entries.len(),
            bytes.len(),
            hex(&sidecar.image_digest)
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Reads a boot profile file (see [`zvmount::prefetch::parse_profile`]).
pub fn read_profile(path: &Path) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read boot profile", path.display()))?;
    zvmount::prefetch::parse_profile(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` via a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // Removed on any failure, so no half-written temporary is left behind.
    let tmp = crate::convert::TempFile::new(crate::convert::temp_beside(path, "partial"));
    std::fs::write(tmp.path(), bytes)
        .with_context(|| format!("{}: cannot write", tmp.path().display()))?;
    std::fs::rename(tmp.path(), path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))?;
    std::mem::forget(tmp);
    Ok(())
}

fn tempfile_with(bytes: &[u8]) -> anyhow::Result<crate::convert::TempFile> {
    let path = std::env::temp_dir().join(format!(
        "zvimg-{}-{}.zvidx",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&path, bytes)?;
    Ok(crate::convert::TempFile::new(path))
}
