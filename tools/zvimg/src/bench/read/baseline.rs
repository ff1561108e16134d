//! `zvimg bench read --baseline SOURCE`: what a cold miss must do at
//! least, timed in this process one record at a time — one range GET of
//! the record, its CRC32C, the decode, the decoded block's BLAKE3 — to
//! compare the mount's `miss` pattern against.

use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use zvstore::StoreConfig;

use super::percentile_us;

/// Timing of what one miss must do, one record at a time, nothing else
/// running: GET, CRC32C of the record, decode, BLAKE3 of the block.
#[derive(Debug, Serialize)]
pub struct BaselineResult {
    pub source: String,
    pub records: usize,
    /// Whether the sidecar's CRC32C and BLAKE3 were checked (as zvmount
    /// does when the image has a sidecar).
    pub verified: bool,
    pub get_p50_us: f64,
    pub crc_p50_us: f64,
    pub decode_p50_us: f64,
    pub blake3_p50_us: f64,
    pub total_p50_us: f64,
    pub total_p90_us: f64,
    pub total_p99_us: f64,
    /// The same blocks again, keeping every decoded block in memory as a
    /// cache must (fresh memory for each, page faults included), p50.
    pub kept_total_p50_us: f64,
    /// `miss` pass p50 / `total_p50_us`, when both ran (target ≤ 1.2).
    pub miss_ratio_p50: Option<f64>,
    /// `miss` pass p50 / `kept_total_p50_us`.
    pub miss_ratio_kept_p50: Option<f64>,
}

/// The image the baseline reads, opened once.
pub(super) struct BaselineImage {
    source: String,
    store: std::sync::Arc<dyn zvstore::ObjectStore>,
    key: String,
    pub(super) layout: zvmount::image::ImageLayout,
}

/// Opens `source` with `store` settings and loads its layout (footers,
/// index, and the sidecar beside it when there is one).
pub(super) async fn open_baseline(
    source: &str,
    store: &StoreConfig,
) -> anyhow::Result<BaselineImage> {
    use zvmount::image::{ImageLayout, SidecarSource};
    let (store, key) = zvstore::open_source(source, store).await?;
    let layout = ImageLayout::load(store.as_ref(), &key, &SidecarSource::Auto)
        .await
        .with_context(|| format!("cannot open {source}"))?;
    Ok(BaselineImage {
        source: source.into(),
        store,
        key,
        layout,
    })
}

/// Blocks of `layout` that have a record, with its location.
pub(super) fn record_blocks(
    layout: &zvmount::image::ImageLayout,
) -> impl Iterator<Item = (u64, zvhd2::RecordLocation)> + '_ {
    use zvhd2::BlockLocation;
    (0..layout.index.block_count()).filter_map(|b| match layout.index.lookup(b) {
        Some(BlockLocation::Record(r)) => Some((b, r)),
        _ => None,
    })
}

/// Times GET + CRC32C + decode + BLAKE3 of each of `blocks`, one at a time:
/// once dropping each block (so the allocator hands the same warm memory
/// back), once keeping them all (as the daemon's cache does).
pub(super) async fn baseline(
    image: &BaselineImage,
    blocks: &[u64],
) -> anyhow::Result<BaselineResult> {
    let (mut result, _) = time_records(image, blocks, false).await?;
    let (kept, held) = time_records(image, blocks, true).await?;
    drop(held);
    result.kept_total_p50_us = kept.total_p50_us;
    Ok(result)
}

async fn time_records(
    image: &BaselineImage,
    blocks: &[u64],
    keep: bool,
) -> anyhow::Result<(BaselineResult, Vec<Vec<u8>>)> {
    use zvhd2::{BlockLocation, decode_record};
    let layout = &image.layout;
    let (block_size, compression) = (layout.header.block_size(), layout.header.compression());
    let mut t = [(); 5].map(|()| Vec::with_capacity(blocks.len()));
    let mut held = Vec::new();
    for &block in blocks {
        let Some(BlockLocation::Record(loc)) = layout.index.lookup(block) else {
            continue;
        };
        let entry = layout
            .sidecar
            .as_ref()
            .and_then(|s| s.entries.get(block as usize));
        let t0 = Instant::now();
        let bytes = image
            .store
            .get_range(
                &image.key,
                loc.offset..loc.offset + u64::from(loc.size),
                Some(&layout.meta),
            )
            .await?;
        let t1 = Instant::now();
        if let Some(e) = entry
            && crc32c::crc32c(&bytes) != e.record_crc32c
        {
            bail!("block {block}: record CRC32C differs from the sidecar");
        }
        let t2 = Instant::now();
        let decoded = decode_record(&bytes, block, loc.offset, block_size, compression)?;
        if decoded.len() != block_size as usize {
            bail!("block {block}: decoded {} bytes", decoded.len());
        }
        let t3 = Instant::now();
        if let Some(e) = entry
            && blake3::hash(&decoded).as_bytes() != &e.block_hash
        {
            bail!("block {block}: BLAKE3 differs from the sidecar");
        }
        let t4 = Instant::now();
        for (v, d) in t
            .iter_mut()
            .zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0])
        {
            v.push(d);
        }
        if keep {
            held.push(decoded);
        }
    }
    if t[0].is_empty() {
        bail!("{} has no data records to time", image.source);
    }
    for v in t.iter_mut() {
        v.sort_unstable();
    }
    let result = BaselineResult {
        source: image.source.clone(),
        records: t[0].len(),
        verified: layout.sidecar.is_some(),
        get_p50_us: percentile_us(&t[0], 0.5),
        crc_p50_us: percentile_us(&t[1], 0.5),
        decode_p50_us: percentile_us(&t[2], 0.5),
        blake3_p50_us: percentile_us(&t[3], 0.5),
        total_p50_us: percentile_us(&t[4], 0.5),
        total_p90_us: percentile_us(&t[4], 0.9),
        total_p99_us: percentile_us(&t[4], 0.99),
        kept_total_p50_us: 0.0,
        miss_ratio_p50: None,
        miss_ratio_kept_p50: None,
    };
    Ok((result, held))
}
