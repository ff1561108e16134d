//! Block number → record location, in O(1) after open.
//!
//! Owns the decoding of the index and bitmap segments (both
//! `index_contains_zero_blk` modes) into one flat per-block table, and the
//! checks that keep every record location inside the data area of the file.

use super::footer::{BLOCKS_PER_SEGMENT, div_ceil_u64};
use super::record::max_record_size;
use super::{FOOTER_SIZE, FormatError, FormatResult, ImageHeader, SECTOR_ALIGN};

/// Bytes of one index entry: `u64 record_offset, u32 block_number, u32 record_size`.
pub const INDEX_ENTRY_SIZE: usize = 16;

/// Where one record sits in the image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLocation {
    /// Byte offset of the record (its `hwstream bg` header) in the image.
    pub offset: u64,
    /// Padded record length, a multiple of 4096.
    pub size: u32,
}

/// What a block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockLocation {
    /// Reads as zeros; nothing stored.
    Zero,
    /// Stored as the record at this location.
    Record(RecordLocation),
}

/// The whole block table of one image.
#[derive(Clone, Debug)]
pub struct BlockIndex {
    block_size: u32,
    /// One entry per block; `size == 0` means a zero block.
    entries: Vec<RecordLocation>,
    /// Number of entries with a record, counted once at construction.
    non_zero: u64,
}

/// One raw 16-byte index entry.
fn entry_at(index: &[u8], slot: u64) -> (u64, u32, u32) {
    let at = slot as usize * INDEX_ENTRY_SIZE;
    let e = &index[at..at + INDEX_ENTRY_SIZE];
    (
        u64::from_le_bytes(e[0..8].try_into().expect("8 bytes")),
        u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")),
        u32::from_le_bytes(e[12..16].try_into().expect("4 bytes")),
    )
}

/// Checks record locations as they come in block order: each inside the
/// data area, aligned, of a plausible size, after the previous one.
struct LocationChecker {
    /// Records end at or before the mid footer, which precedes the index.
    data_end: u64,
    max_size: u64,
    prev_end: u64,
}

impl LocationChecker {
    fn check(
        &mut self,
        block: u64,
        slot: u64,
        offset: u64,
        size: u32,
    ) -> FormatResult<RecordLocation> {
        let bad = |detail: String| {
            Err(FormatError::BadIndex(format!(
                "entry {slot} (block {block}, record offset {offset}, size {size}): {detail}"
            )))
        };
        let size64 = u64::from(size);
        if offset < FOOTER_SIZE {
            return bad(format!(
                "record offset is inside the head footer (must be >= {FOOTER_SIZE})"
            ));
        }
        if !offset.is_multiple_of(SECTOR_ALIGN) || !size64.is_multiple_of(SECTOR_ALIGN) {
            return bad(format!(
                "record offset and size must be multiples of {SECTOR_ALIGN}"
            ));
        }
        if size64 > self.max_size {
            return bad(format!(
                "record size exceeds the largest possible record ({} bytes)",
                self.max_size
            ));
        }
        // The offset comes straight from the file: an end past u64::MAX is
        // past the data area too, not a wrap-around to a small number.
        let end = match offset.checked_add(size64) {
            Some(end) if end <= self.data_end => end,
            _ => {
                return bad(format!(
                    "record runs past the end of the data area at {} (mid footer before index)",
                    self.data_end
                ));
            }
        };
        if offset < self.prev_end {
            return bad(format!(
                "record overlaps or precedes the previous record, which ends at {}",
                self.prev_end
            ));
        }
        self.prev_end = end;
        Ok(RecordLocation { offset, size })
    }
}

impl BlockIndex {
    /// Builds the table from the bytes of [`ImageHeader::metadata_range`]
    /// (empty slice for an empty image). Validates every entry against the file.
    pub fn from_metadata(header: &ImageHeader, metadata: &[u8]) -> FormatResult<BlockIndex> {
        let f = &header.footer;
        let block_size = f.block_size;
        let blocks = u64::from(f.max_blk_num);
        let Some(range) = header.metadata_range() else {
            if !metadata.is_empty() {
                return Err(FormatError::BadIndex(format!(
                    "the image has no index or bitmap, but {} metadata bytes were given",
                    metadata.len()
                )));
            }
            if f.non_zero_blk_num != 0 {
                return Err(FormatError::BadIndex(format!(
                    "non_zero_blk_num is {} but the image has no index",
                    f.non_zero_blk_num
                )));
            }
            let entries = vec![RecordLocation { offset: 0, size: 0 }; blocks as usize];
            return Ok(BlockIndex {
                block_size,
                entries,
                non_zero: 0,
            });
        };
        let want_len = range.end - range.start;
        if metadata.len() as u64 != want_len {
            return Err(FormatError::BadIndex(format!(
                "expected {want_len} bytes of index and bitmap (offsets {}..{}), got {}",
                range.start,
                range.end,
                metadata.len()
            )));
        }
        let (index, bitmap) = metadata.split_at(f.index_size as usize);
        let non_zero = u64::from(f.non_zero_blk_num);
        // The header checked that index_lba >= 4096; the mid footer sits
        // right before the index whenever there are records.
        let mut checker = LocationChecker {
            data_end: f.index_lba.saturating_sub(FOOTER_SIZE),
            max_size: max_record_size(block_size),
            prev_end: FOOTER_SIZE,
        };
        let mut entries = Vec::new();
        entries.try_reserve_exact(blocks as usize).map_err(|_| {
            FormatError::BadIndex(format!("cannot allocate a table of {blocks} blocks"))
        })?;
        let index_entries = index.len() as u64 / INDEX_ENTRY_SIZE as u64;
        let zero = RecordLocation { offset: 0, size: 0 };
        if f.index_contains_zero_blk == 0 {
            let set = count_bits(bitmap, blocks);
            if set != non_zero {
                return Err(FormatError::BadIndex(format!(
                    "the bitmap marks {set} of {blocks} blocks non-zero, but non_zero_blk_num is {non_zero}"
                )));
            }
            // Defensive: the header tied index_size to non_zero_blk_num.
            if non_zero > index_entries {
                return Err(FormatError::BadIndex(format!(
                    "{non_zero} non-zero blocks but the index holds only {index_entries} entries"
                )));
            }
            let mut slot = 0u64;
            for block in 0..blocks {
                if bitmap[(block / 8) as usize] >> (block % 8) & 1 == 0 {
                    entries.push(zero);
                    continue;
                }
                let (offset, number, size) = entry_at(index, slot);
                if u64::from(number) != block {
                    return Err(FormatError::BadIndex(format!(
                        "entry {slot} is for block {number}, but the bitmap puts block {block} there"
                    )));
                }
                if offset == 0 || size == 0 {
                    return Err(FormatError::BadIndex(format!(
                        "entry {slot} (block {block}) has offset {offset} and size {size}, but the bitmap marks the block non-zero"
                    )));
                }
                entries.push(checker.check(block, slot, offset, size)?);
                slot += 1;
            }
        } else {
            if blocks > index_entries {
                return Err(FormatError::BadIndex(format!(
                    "{blocks} blocks but the index holds only {index_entries} entries"
                )));
            }
            let mut count = 0u64;
            for block in 0..blocks {
                let (offset, number, size) = entry_at(index, block);
                if offset == 0 || size == 0 {
                    entries.push(zero);
                    continue;
                }
                if u64::from(number) != block {
                    return Err(FormatError::BadIndex(format!(
                        "entry {block} is for block {number} (index_contains_zero_blk = 1: entry b describes block b)"
                    )));
                }
                entries.push(checker.check(block, block, offset, size)?);
                count += 1;
            }
            if count != non_zero {
                return Err(FormatError::BadIndex(format!(
                    "the index has {count} non-zero entries, but non_zero_blk_num is {non_zero}"
                )));
            }
        }
        Ok(BlockIndex {
            block_size,
            entries,
            non_zero,
        })
    }

    /// A table from explicit locations (one per block; `None` = zero block).
    pub fn from_locations(
        block_size: u32,
        locations: impl IntoIterator<Item = Option<RecordLocation>>,
    ) -> BlockIndex {
        let entries: Vec<RecordLocation> = locations
            .into_iter()
            .map(|l| {
                l.filter(|l| l.size != 0)
                    .unwrap_or(RecordLocation { offset: 0, size: 0 })
            })
            .collect();
        let non_zero = entries.iter().filter(|e| e.size != 0).count() as u64;
        BlockIndex {
            block_size,
            entries,
            non_zero,
        }
    }

    /// Bytes of disk per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Number of blocks of the disk (`max_blk_num`).
    pub fn block_count(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Number of blocks with a record.
    pub fn non_zero_count(&self) -> u64 {
        self.non_zero
    }

    /// Location of `block`; `None` past the end of the disk.
    pub fn lookup(&self, block: u64) -> Option<BlockLocation> {
        let e = self.entries.get(usize::try_from(block).ok()?)?;
        Some(if e.size == 0 {
            BlockLocation::Zero
        } else {
            BlockLocation::Record(*e)
        })
    }

    /// Like [`BlockIndex::lookup`], with an error naming the disk's size.
    pub fn locate(&self, block: u64) -> FormatResult<BlockLocation> {
        self.lookup(block).ok_or(FormatError::BlockOutOfRange {
            block,
            blocks: self.block_count(),
        })
    }
}

/// Number of set bits among the first `bits` bits of `bitmap` (LSB first).
/// Bits past `bits` (the tail of the last segment) are ignored.
fn count_bits(bitmap: &[u8], bits: u64) -> u64 {
    let full = (bits / 8) as usize;
    let mut n: u64 = bitmap[..full]
        .iter()
        .map(|b| u64::from(b.count_ones()))
        .sum();
    let rest = bits % 8;
    if rest != 0 {
        n += u64::from((bitmap[full] & ((1u8 << rest) - 1)).count_ones());
    }
    n
}

/// The index and bitmap bytes (in [`ImageHeader::metadata_range`] form) for
/// records at `locations` (one per block, in block order; `None` = zero
/// block), as [`super::write_image`] lays them out with
/// `index_contains_zero_blk` = 0. Returns (index segments, bitmap segments).
pub fn encode_metadata(locations: &[Option<RecordLocation>]) -> (Vec<u8>, Vec<u8>) {
    let blocks = locations.len() as u64;
    let non_zero = locations.iter().filter(|l| l.is_some()).count() as u64;
    let seg_entries = BLOCKS_PER_SEGMENT as usize;
    let index_len =
        div_ceil_u64(non_zero, BLOCKS_PER_SEGMENT) as usize * seg_entries * INDEX_ENTRY_SIZE;
    let bitmap_len = div_ceil_u64(blocks, BLOCKS_PER_SEGMENT) as usize * (seg_entries / 8);
    let mut index = Vec::with_capacity(index_len);
    let mut bitmap = vec![0u8; bitmap_len];
    for (block, loc) in locations.iter().enumerate() {
        if let Some(loc) = loc {
            index.extend_from_slice(&loc.offset.to_le_bytes());
            index.extend_from_slice(&(block as u32).to_le_bytes());
            index.extend_from_slice(&loc.size.to_le_bytes());
            bitmap[block / 8] |= 1 << (block % 8);
        }
    }
    index.resize(index_len, 0);
    (index, bitmap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Compression, Footer};

    const BS: u32 = 2 << 20;

    /// A header and metadata for `blocks` blocks where `data` lists the
    /// non-zero blocks (ascending), records 4096 bytes each from 4096.
    fn synth(blocks: u64, data: &[u64], zero_mode: bool) -> (ImageHeader, Vec<u8>) {
        let mut f = Footer::new_head(blocks * u64::from(BS), BS, Compression::Zstd);
        let mut locs: Vec<Option<RecordLocation>> = vec![None; blocks as usize];
        for (i, &b) in data.iter().enumerate() {
            locs[b as usize] = Some(RecordLocation {
                offset: 4096 + 4096 * i as u64,
                size: 4096,
            });
        }
        let (mut index, bitmap) = encode_metadata(&locs);
        if zero_mode {
            index = Vec::new();
            for (b, l) in locs.iter().enumerate() {
                let l = l.unwrap_or(RecordLocation { offset: 0, size: 0 });
                index.extend_from_slice(&l.offset.to_le_bytes());
                index.extend_from_slice(&(b as u32).to_le_bytes());
                index.extend_from_slice(&l.size.to_le_bytes());
            }
            let segs = div_ceil_u64(blocks, BLOCKS_PER_SEGMENT) as usize;
            index.resize(segs * 512 * 1024, 0);
            f.index_contains_zero_blk = 1;
        }
        f.non_zero_blk_num = data.len() as u32;
        f.index_lba = 4096 + 4096 * data.len() as u64 + 4096;
        f.index_size = index.len() as u32;
        f.index_seg_num = (index.len() / (512 * 1024)) as u32;
        f.bitmap_lba = f.index_lba + index.len() as u64;
        let file_size = f.bitmap_lba + bitmap.len() as u64 + 4096;
        let tail = f.encode();
        let head = Footer::new_head(blocks * u64::from(BS), BS, Compression::Zstd).encode();
        let header = ImageHeader::parse(&head, &tail, file_size).unwrap();
        let mut meta = index;
        meta.extend_from_slice(&bitmap);
        assert_eq!(
            header.metadata_range().unwrap().end - header.metadata_range().unwrap().start,
            meta.len() as u64
        );
        (header, meta)
    }

    fn check(blocks: u64, data: &[u64], zero_mode: bool) {
        let (h, meta) = synth(blocks, data, zero_mode);
        let idx = BlockIndex::from_metadata(&h, &meta).unwrap();
        assert_eq!(idx.block_count(), blocks);
        assert_eq!(idx.non_zero_count(), data.len() as u64);
        let set: std::collections::HashSet<u64> = data.iter().copied().collect();
        for (i, &b) in data.iter().enumerate() {
            assert_eq!(
                idx.lookup(b),
                Some(BlockLocation::Record(RecordLocation {
                    offset: 4096 + 4096 * i as u64,
                    size: 4096
                })),
                "block {b}"
            );
            if b > 0 && !set.contains(&(b - 1)) {
                assert_eq!(idx.lookup(b - 1), Some(BlockLocation::Zero));
            }
        }
        assert_eq!(idx.lookup(blocks), None);
    }

    #[test]
    fn rank_across_segment_boundaries() {
        let data = [0, 1, 7, 8, 32767, 32768, 32769, 65535, 65536, 69999];
        check(70000, &data, false);
        check(70000, &data, true);
        check(70000, &[], false);
        // More than one index segment of entries.
        let many: Vec<u64> = (0..40000).map(|i| i * 2 + 1).collect();
        check(80001, &many, false);
    }

    #[test]
    fn bits_past_the_disk_are_ignored() {
        let (h, mut meta) = synth(10, &[3, 9], false);
        let bitmap_at = h.footer.index_size as usize;
        meta[bitmap_at + 1] |= 0xfc; // blocks 10..15: past the end
        meta[bitmap_at + 100] = 0xff;
        let idx = BlockIndex::from_metadata(&h, &meta).unwrap();
        assert_eq!(idx.non_zero_count(), 2);
    }

    #[test]
    fn index_tail_garbage_is_ignored() {
        let (h, mut meta) = synth(10, &[3, 9], false);
        for b in &mut meta[32..h.footer.index_size as usize] {
            *b = 0xa5;
        }
        let idx = BlockIndex::from_metadata(&h, &meta).unwrap();
        assert_eq!(idx.non_zero_count(), 2);
    }

    #[test]
    fn corrupt_entries_are_rejected() {
        let (h, meta) = synth(10, &[3, 9], false);
        let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut m = meta.clone();
            f(&mut m);
            BlockIndex::from_metadata(&h, &m).unwrap_err().to_string()
        };
        let bitmap_at = h.footer.index_size as usize;
        assert!(mutate(&|m| m[bitmap_at] |= 1).contains("bitmap marks 3"));
        assert!(mutate(&|m| m[8] = 4).contains("for block 4"));
        assert!(mutate(&|m| m[0..8].copy_from_slice(&0u64.to_le_bytes())).contains("offset 0"));
        assert!(mutate(&|m| m[0..8].copy_from_slice(&4196u64.to_le_bytes())).contains("multiples"));
        assert!(
            mutate(&|m| m[16..24].copy_from_slice(&4096u64.to_le_bytes())).contains("overlaps")
        );
        assert!(
            mutate(&|m| m[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes()))
                .contains("past the end")
        );
        assert!(
            mutate(&|m| m[12..16].copy_from_slice(&(64u32 << 20).to_le_bytes()))
                .contains("largest")
        );
        // An offset near u64::MAX must not wrap around past the checks.
        assert!(
            mutate(&|m| m[16..24].copy_from_slice(&(u64::MAX - 4095).to_le_bytes()))
                .contains("past the end")
        );
        assert!(BlockIndex::from_metadata(&h, &meta[1..]).is_err());
    }
}
