//! An image's layout as the host cache keeps it: what [`ImageLayout::load`]
//! learnt from the store, encoded so that a fully cached image can be
//! opened again while its store is unreachable.
//!
//! Encoding (little-endian): magic `ZVLAYT01`; u32 length + JSON of the
//! names and object metadata; the final footer's 4096 stored bytes; the
//! image identity's footer hash (32 bytes); u64 block count, then per
//! block u64 record offset and u32 record size (0 = zero block); u64
//! length + the encoded sidecar (0 = none). The cache checksums the whole.

use serde::{Deserialize, Serialize};

use super::ImageLayout;
use crate::cache::host::EntrySpec;
use zvhd2::{
    BlockIndex, BlockLocation, Footer, ImageHeader, ImageIdentity, RecordLocation, Sidecar,
};
use zvstore::ObjectMeta;

const MAGIC: &[u8; 8] = b"ZVLAYT01";

#[derive(Serialize, Deserialize)]
struct Names {
    key: String,
    location: String,
    size: u64,
    etag: Option<String>,
    file_size: u64,
}

/// What the host cache needs to hold `layout`'s image.
pub fn cache_spec(layout: &ImageLayout) -> EntrySpec {
    let count = layout.index.block_count();
    let records = (0..count)
        .map(|b| matches!(layout.index.lookup(b), Some(BlockLocation::Record(_))))
        .collect();
    let block_size = u64::from(layout.index.block_size());
    EntrySpec {
        id: layout.cache_id(),
        source: crate::cache::host::gc::source_name(&layout.location),
        block_size,
        block_count: count,
        data_len: layout.header.disk_size().min(count * block_size),
        records,
        hashes: layout
            .sidecar
            .as_ref()
            .map(|s| s.entries.iter().map(|e| e.block_hash).collect()),
        layout: encode(layout),
    }
}

/// The encoded form of `layout` (see the module docs).
pub fn encode(layout: &ImageLayout) -> Vec<u8> {
    let names = Names {
        key: layout.key.clone(),
        location: layout.location.clone(),
        size: layout.meta.size,
        etag: layout.meta.etag.clone(),
        file_size: layout.header.file_size,
    };
    let json = serde_json::to_vec(&names).expect("plain struct");
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&layout.header.footer.encode_stored());
    out.extend_from_slice(&layout.identity.footer_hash);
    let count = layout.index.block_count();
    out.extend_from_slice(&count.to_le_bytes());
    for b in 0..count {
        let loc = match layout.index.lookup(b) {
            Some(BlockLocation::Record(loc)) => loc,
            _ => RecordLocation { offset: 0, size: 0 },
        };
        out.extend_from_slice(&loc.offset.to_le_bytes());
        out.extend_from_slice(&loc.size.to_le_bytes());
    }
    let sidecar = layout
        .sidecar
        .as_ref()
        .map(Sidecar::encode)
        .unwrap_or_default();
    out.extend_from_slice(&(sidecar.len() as u64).to_le_bytes());
    out.extend_from_slice(&sidecar);
    out
}

/// Decodes what [`encode`] wrote; `None` for anything else (the caller
/// then needs the store).
pub fn decode(bytes: &[u8]) -> Option<ImageLayout> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    if take(8)? != MAGIC {
        return None;
    }
    let json_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let names: Names = serde_json::from_slice(take(json_len)?).ok()?;
    let footer = Footer::parse_unchecked(take(zvhd2::FOOTER_SIZE as usize)?, 0).ok()?;
    let footer_hash: [u8; 32] = take(32)?.try_into().ok()?;
    let count = u64::from_le_bytes(take(8)?.try_into().ok()?);
    // 12 bytes a block must be there before anything is allocated.
    let table = take(usize::try_from(count).ok()?.checked_mul(12)?)?;
    let locations = table.chunks_exact(12).map(|c| {
        let offset = u64::from_le_bytes(c[0..8].try_into().expect("8 bytes"));
        let size = u32::from_le_bytes(c[8..12].try_into().expect("4 bytes"));
        (size != 0).then_some(RecordLocation { offset, size })
    });
    let index = BlockIndex::from_locations(footer.block_size, locations);
    let sidecar_len = usize::try_from(u64::from_le_bytes(take(8)?.try_into().ok()?)).ok()?;
    let sidecar = match sidecar_len {
        0 => None,
        n => Some(Sidecar::decode(take(n)?).ok()?),
    };
    Some(ImageLayout {
        key: names.key,
        location: names.location,
        meta: ObjectMeta {
            size: names.size,
            etag: names.etag,
            modified: None,
        },
        header: ImageHeader {
            footer,
            file_size: names.file_size,
        },
        identity: ImageIdentity {
            image_size: names.size,
            footer_hash,
        },
        index,
        sidecar,
        requests: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::SidecarSource;
    use crate::image::testing::{KEY, image_in_dir};

    #[tokio::test]
    async fn layout_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (store, summary) = image_in_dir(dir.path(), 5);
        for with_sidecar in [false, true] {
            if with_sidecar {
                std::fs::write(dir.path().join("img.zvhd2.zvidx"), summary.sidecar.encode())
                    .unwrap();
            }
            let layout = ImageLayout::load(&store, KEY, &SidecarSource::Auto)
                .await
                .unwrap();
            let bytes = encode(&layout);
            let back = decode(&bytes).unwrap();
            assert_eq!(back.cache_id(), layout.cache_id());
            assert_eq!(back.key, layout.key);
            assert_eq!(back.header.footer.encode(), layout.header.footer.encode());
            assert_eq!(back.sidecar, layout.sidecar);
            for b in 0..layout.index.block_count() {
                assert_eq!(back.index.lookup(b), layout.index.lookup(b));
            }
            // Any truncation is refused, never a panic.
            for cut in [0, 7, 12, 100, bytes.len() - 1] {
                assert!(decode(&bytes[..cut]).is_none());
            }
        }
    }
}
