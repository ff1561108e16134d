//! `zvimg info`: an image's sizes, blocks, compression, sidecar and footer
//! fields, from any source.

use std::process::ExitCode;

use serde::Serialize;
use zvhd2::Compression;
use zvmount::image::open::sidecar_key;
use zvmount::image::{ImageError, ImageLayout, SidecarSource};
use zvmount::util::hex;
use zvstore::open_source;

use crate::convert::human;
use crate::{SourceArgs, runtime};

/// Flags of `zvimg info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where the image is and how to reach it.
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

/// Runs `zvimg info`.
pub fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let (store, key) = open_source(&args.image, &args.source.store.to_config()).await?;
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
