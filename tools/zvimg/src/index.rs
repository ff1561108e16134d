//! `zvimg index`: build the `.zvidx` sidecar of an image (hashes computed
//! on the decode threads), optionally with a boot profile.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use zvhd2::{BlockLocation, Sidecar, SidecarEntry};
use zvmount::image::open::sidecar_key;
use zvmount::image::scan::{ScanOptions, scan_blocks};
use zvmount::image::{ImageError, ImageLayout, SidecarSource};
use zvmount::util::hex;
use zvstore::{is_remote, open_source};

use crate::files::{TempFile, read_profile, write_atomic};
use crate::{SourceArgs, default_sidecar_path, runtime};

/// Flags of `zvimg index`.
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
    #[arg(long, default_value_t = ScanOptions::default().parallel)]
    pub parallel: usize,
    /// Where the image is and how to reach it.
    #[command(flatten)]
    pub source: SourceArgs,
    /// The image: a local path, s3://bucket/key or an https:// URL.
    pub image: String,
}

/// Runs `zvimg index`.
pub fn index(args: IndexArgs) -> anyhow::Result<ExitCode> {
    let profile = match &args.boot_profile {
        Some(p) => read_profile(p)?,
        None => Vec::new(),
    };
    runtime()?.block_on(async {
        let (store, key) = open_source(&args.image, &args.source.store.to_config()).await?;
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

fn tempfile_with(bytes: &[u8]) -> anyhow::Result<TempFile> {
    let path = std::env::temp_dir().join(format!(
        "zvimg-{}-{}.zvidx",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&path, bytes)?;
    Ok(TempFile::new(path))
}
