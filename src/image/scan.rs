//! Reading every block of an image in order — for `zvimg check`, `index`
//! and `convert -O raw`, and the download-then-boot baseline. Fetches a
//! window of records in parallel and hands out decoded blocks in block order.
//!
//! Records are checked and decoded by the same rules ([`zvhd2::verify`]) and
//! on the same decode threads (`decode`, one per core) as the
//! mount's reads, so `zvimg check` finds exactly what a mount would refuse,
//! and uses every core while the async runtime only moves bytes.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use zvhd2::verify::{self, VerifyError};
use zvhd2::zvidx::zero_block_hash;
use zvhd2::{BlockLocation, Sidecar};
use zvstore::ObjectStore;

use super::{ImageError, ImageLayout};

/// One decoded block, handed out in block order.
#[derive(Debug)]
pub struct ScannedBlock {
    /// Block number in the disk.
    pub block: u64,
    /// Where the image's index puts it.
    pub location: BlockLocation,
    /// CRC32C of the record bytes as stored (`None` for a zero block).
    pub record_crc32c: Option<u32>,
    /// BLAKE3 of `data`, when [`ScanOptions::hash_blocks`] is set or the
    /// scan verifies against a sidecar (computed on the decode threads).
    pub block_hash: Option<[u8; 32]>,
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
    /// Compute each block's BLAKE3 ([`ScannedBlock::block_hash`]), e.g. to
    /// build a sidecar.
    pub hash_blocks: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            parallel: 8,
            verify_with: None,
            hash_blocks: false,
        }
    }
}

/// Calls `each` for every block of the image, in block order. Stops at the
/// first error (from the store, the format, verification, or `each`).
/// `each` may block (write the block to a file): on a multi-threaded
/// runtime it runs in [`tokio::task::block_in_place`], so the fetches
/// and decodes in flight keep going on the other workers.
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
    let zero_hash = zero_block_hash(block_size);
    let compression = layout.header.compression();
    let blocks = layout.index.block_count();
    let sidecar = options.verify_with.clone();
    if let Some(sc) = &sidecar
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
    let verify_err = |error: VerifyError| ImageError::Check {
        location: layout.location.clone(),
        error,
    };
    let hash_blocks = options.hash_blocks;

    let fetches = futures::stream::iter(0..blocks)
        .map(|block| {
            let store = store.clone();
            let zero = zero.clone();
            let sidecar = sidecar.clone();
            let location = layout.index.lookup(block);
            async move {
                let entry = sidecar.as_ref().map(|sc| sc.entries[block as usize]);
                match location {
                    Some(BlockLocation::Record(rec)) => {
                        let range = rec.offset..rec.offset + u64::from(rec.size);
                        let record = store
                            .get_range(&layout.key, range, Some(&layout.meta))
                            .await?;
                        let checked = super::decode::run(0, move || {
                            let mut data = Vec::with_capacity(block_size as usize);
                            let crc = verify::verify_record(
                                &record,
                                block,
                                rec,
                                entry.as_ref(),
                                block_size,
                                compression,
                                &mut data,
                            )?;
                            let hash = match entry {
                                // decode_checked has matched it already.
                                Some(e) => Some(e.block_hash),
                                None if hash_blocks => Some(*blake3::hash(&data).as_bytes()),
                                None => None,
                            };
                            Ok::<_, VerifyError>((crc, hash, Bytes::from(data)))
                        })
                        .await
                        .ok_or_else(|| ImageError::Verify {
                            location: layout.location.clone(),
                            block,
                            offset: rec.offset,
                            detail: "decoding failed: the decode thread gave up".into(),
                        })?
                        .map_err(verify_err)?;
                        let (crc, hash, data) = checked;
                        Ok::<_, ImageError>(ScannedBlock {
                            block,
                            location: BlockLocation::Record(rec),
                            record_crc32c: Some(crc),
                            block_hash: hash,
                            data,
                        })
                    }
                    Some(BlockLocation::Zero) => {
                        if let Some(e) = &entry {
                            verify::check_placement(block, BlockLocation::Zero, e, block_size)
                                .map_err(verify_err)?;
                        }
                        Ok(ScannedBlock {
                            block,
                            location: BlockLocation::Zero,
                            record_crc32c: None,
                            block_hash: (hash_blocks || entry.is_some()).then_some(zero_hash),
                            data: zero,
                        })
                    }
                    None => unreachable!("block {block} < block_count"),
                }
            }
        })
        .buffered(options.parallel.max(1));
    futures::pin_mut!(fetches);

    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    while let Some(item) = fetches.next().await {
        let block = item?;
        if multi_thread {
            tokio::task::block_in_place(|| each(block))?;
        } else {
            each(block)?;
        }
    }
    Ok(())
}
