//! Reading every block of an image in order — for `zvimg check`, `index`
//! and `convert -O raw`, and the download-then-boot baseline. Fetches a
//! window of records in parallel and hands out decoded blocks in block order.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use zvhd2::{BlockLocation, Sidecar, decode_record};
use zvstore::ObjectStore;

use super::{ImageError, ImageLayout};

/// One decoded block, handed out in block order.
#[derive(Debug)]
pub struct ScannedBlock {
    pub block: u64,
    pub location: BlockLocation,
    /// CRC32C of the record bytes as stored (`None` for a zero block).
    pub record_crc32c: Option<u32>,
    /// Exactly `block_size` decoded bytes.
    pub data: Bytes,
}

/// How to scan.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// Records fetched and decoded at once.
    pub parallel: usize,
    /// Check CRC32C and BLAKE3 against this sidecar, and its table against the image's.
    pub verify_with: Option<Arc<Sidecar>>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            parallel: 8,
            verify_with: None,
        }
    }
}

/// Calls `each` for every block of the image, in block order. Stops at the
/// first error (from the store, the format, verification, or `each`).
pub async fn scan_blocks<F, E>(
    store: Arc<dyn ObjectStore>,
    layout: &ImageLayout,
    options: &ScanOptions,
    mut each: F,
) -> Result<(), E>
where
    F: FnMut(ScannedBlock) -> Result<(), E>,
    E: From<ImageError>,
{
    let block_size = layout.header.block_size();
    let zero = Bytes::from(vec![0u8; block_size as usize]);
    let zero_hash = *blake3::hash(&zero).as_bytes();
    let compression = layout.header.compression();
    let blocks = layout.index.block_count();
    if let Some(sc) = &options.verify_with
        && sc.entries.len() as u64 != blocks
    {
        return Err(E::from(ImageError::Sidecar {
            location: layout.location.clone(),
            sidecar: String::from("given"),
            detail: format!(
                "has {} block entries, the image has {blocks} blocks",
                sc.entries.len()
            ),
        }));
    }

    let fetches = futures::stream::iter(0..blocks)
        .map(|block| {
            let store = store.clone();
            let zero = zero.clone();
            let location = layout.index.lookup(block);
            async move {
                match location {
                    Some(BlockLocation::Record(rec)) => {
                        let range = rec.offset..rec.offset + u64::from(rec.size);
                        let record = store
                            .get_range(&layout.key, range, Some(&layout.meta))
                            .await?;
                        let loc = layout.location.clone();
                        tokio::task::spawn_blocking(move || {
                            let crc = crc32c::crc32c(&record);
                            let data =
                                decode_record(&record, block, rec.offset, block_size, compression)
                                    .map_err(|error| ImageError::Format {
                                        location: loc,
                                        error,
                                    })?;
                            Ok::<_, ImageError>((
                                BlockLocation::Record(rec),
                                Some(crc),
                                Bytes::from(data),
                            ))
                        })
                        .await
                        .unwrap_or_else(|e| {
                            Err(ImageError::Verify {
                                location: layout.location.clone(),
                                block,
                                offset: rec.offset,
                                detail: format!("decoding failed: {e}"),
                            })
                        })
                        .map(|(l, c, d)| (block, l, c, d))
                    }
                    Some(BlockLocation::Zero) => Ok((block, BlockLocation::Zero, None, zero)),
                    None => unreachable!("block {block} < block_count"),
                }
            }
        })
        .buffered(options.parallel.max(1));
    futures::pin_mut!(fetches);

    while let Some(item) = fetches.next().await {
        let (block, location, record_crc32c, data) = item?;
        if let Some(sc) = &options.verify_with {
            verify_against(
                layout,
                sc,
                block,
                location,
                record_crc32c,
                &data,
                &zero_hash,
            )?;
        }
        each(ScannedBlock {
            block,
            location,
            record_crc32c,
            data,
        })?;
    }
    Ok(())
}

/// Compares one scanned block with its sidecar entry.
fn verify_against(
    layout: &ImageLayout,
    sidecar: &Sidecar,
    block: u64,
    location: BlockLocation,
    crc: Option<u32>,
    data: &[u8],
    zero_hash: &[u8; 32],
) -> Result<(), ImageError> {
    let entry = &sidecar.entries[block as usize];
    let (offset, size) = match location {
        BlockLocation::Record(r) => (r.offset, r.size),
        BlockLocation::Zero => (0, 0),
    };
    let fail = |detail: String| ImageError::Verify {
        location: layout.location.clone(),
        block,
        offset,
        detail,
    };
    if entry.record_offset != offset || entry.record_size != size {
        return Err(fail(format!(
            "sidecar places the record at {}+{}, the image's index at {offset}+{size}",
            entry.record_offset, entry.record_size
        )));
    }
    if let Some(crc) = crc {
        if crc != entry.record_crc32c {
            return Err(fail(format!(
                "record CRC32C {crc:08x} differs from the sidecar's {:08x}: the stored record is corrupt",
                entry.record_crc32c
            )));
        }
        let hash = blake3::hash(data);
        if hash.as_bytes() != &entry.block_hash {
            return Err(fail(
                "decoded block's BLAKE3 differs from the sidecar's".into(),
            ));
        }
    } else if &entry.block_hash != zero_hash {
        return Err(fail(
            "sidecar has data for a block the image stores as zeros".into(),
        ));
    }
    Ok(())
}
