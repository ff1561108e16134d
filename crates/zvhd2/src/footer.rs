//! The 512-byte footer struct (head, mid and final copies) and what a reader
//! learns from the head and final footers before it reads the index.
//!
//! Owns the byte layout of the footer, its VHD-style checksum, and every
//! consistency check that can be made from the footers and the file size
//! alone. It does not read the index (see [`super::index`]).

use super::{FOOTER_SIZE, FormatError, FormatResult};

/// How record payloads are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    /// `compress_method` 0: one sync-flushed zlib stream per record.
    Zlib,
    /// `compress_method` 1: one zstd frame per record (the ZVHD2 default).
    Zstd,
}

impl Compression {
    /// The `compress_method` byte of the footer.
    pub fn method_byte(self) -> u8 {
        match self {
            Compression::Zlib => 0,
            Compression::Zstd => 1,
        }
    }
}

/// Size of the footer struct that the checksum covers; the rest of the
/// 4096-byte slot is padding that Huawei's writer does not clear.
pub const FOOTER_STRUCT_SIZE: usize = 512;
/// Cookie of a ZVHD2 image (only the first 6 bytes are compared).
pub const ZVHD2_COOKIE: [u8; 8] = *b"z2strm\0\0";
/// Cookie of the old single-stream ZVHD format.
pub const ZVHD_COOKIE: [u8; 8] = *b"stream\0\0";
/// Bytes of one index segment (32768 entries of 16 bytes).
pub const INDEX_SEG_SIZE: u32 = 512 << 10;
/// Bytes of one bitmap segment (32768 bits).
pub const BITMAP_SEG_SIZE: u32 = 4096;
/// Blocks described by one index segment and by one bitmap segment.
pub const BLOCKS_PER_SEGMENT: u64 = 32768;
/// Smallest block size a reader accepts.
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// Largest block size a reader accepts.
pub const MAX_BLOCK_SIZE: u32 = 32 << 20;
/// Seconds from the Unix epoch to 2000-01-01 00:00 UTC (the VHD epoch).
const VHD_EPOCH_UNIX: u64 = 946_684_800;
const GIB: u64 = 1 << 30;

/// Every field of the 512-byte footer struct, as stored (little-endian).
/// Offsets are from the start of the footer's 4096-byte slot; bytes 142..512
/// are reserved (zero) and 512..4096 are padding the checksum does not cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Offset 0, 8 bytes: `z2strm` and NULs ([`ZVHD2_COOKIE`]); `stream` for old ZVHD.
    pub cookie: [u8; 8],
    /// Offset 8, u32: 2 as written.
    pub features: u32,
    /// Offset 12, u32: file format version, `0x00010000` as written.
    pub ff_version: u32,
    /// Offset 16, u64: `0xFFFF_FFFF_FFFF_FFFF` as written (unused).
    pub data_offset: u64,
    /// Offset 24, u32: creation time in seconds since 2000-01-01 00:00 UTC (the VHD epoch).
    pub timestamp: u32,
    /// Offset 28, 4 bytes: `tap\0` as written.
    pub creator_app: [u8; 4],
    /// Offset 32, u32: `0x00010004` (older writers: `0x00010003`).
    pub creator_version: u32,
    /// Offset 36, u32: 0 as written.
    pub creator_os: u32,
    /// Offset 40, u64: the source disk's size in bytes, rounded up to a multiple of 512.
    pub orig_size: u64,
    /// Offset 48, u64: `orig_size` rounded up to a whole GiB (the size Huawei's reader reports).
    pub curr_size: u64,
    /// Offset 56, u32: VHD CHS geometry of the size ([`chs_geometry`]); informational.
    pub geometry: u32,
    /// Offset 60, u32: VHD disk type, 4 as written.
    pub disk_type: u32,
    /// Offset 64, u32: bitwise NOT of the byte sum of the 512-byte struct with this
    /// field as zero ([`footer_checksum`]).
    pub checksum: u32,
    /// Offset 68, 16 bytes: random.
    pub uuid: [u8; 16],
    /// Offset 84, u8: 0 as written.
    pub saved: u8,
    /// Offset 85, u8: 0 as written.
    pub hidden: u8,
    /// Offset 86, u8: 0 as written.
    pub align_64: u8,
    /// Offset 87, u8: 1 for ZVHD2; 0 is the old single-stream ZVHD, which is refused.
    pub zvhd2_version: u8,
    /// Offset 88, u32: bytes of disk per block, a power of two in 1..=32 MiB (Huawei writes 2 MiB).
    pub block_size: u32,
    /// Offset 92, u32: blocks in the disk, `ceil(orig_size / block_size)`.
    pub max_blk_num: u32,
    /// Offset 96, u64: byte offset (not an LBA, despite the name) of the first index segment.
    pub index_lba: u64,
    /// Offset 104, u64: byte offset of the first bitmap segment.
    pub bitmap_lba: u64,
    /// Offset 112, u32: bytes of index, `index_seg_num * index_seg_size`.
    pub index_size: u32,
    /// Offset 116, u32: bytes of bitmap, `bitmap_seg_num * bitmap_seg_size`.
    pub bitmap_size: u32,
    /// Offset 120, u32: bytes per index segment, [`INDEX_SEG_SIZE`].
    pub index_seg_size: u32,
    /// Offset 124, u32: bytes per bitmap segment, [`BITMAP_SEG_SIZE`].
    pub bitmap_seg_size: u32,
    /// Offset 128, u32: index segments, `ceil(non_zero_blk_num / 32768)` (of
    /// `max_blk_num` when `index_contains_zero_blk` is 1).
    pub index_seg_num: u32,
    /// Offset 132, u32: bitmap segments, `ceil(max_blk_num / 32768)`.
    pub bitmap_seg_num: u32,
    /// Offset 136, u32: data records in the image.
    pub non_zero_blk_num: u32,
    /// Offset 140, u8: 1 if the index has an entry for every block, zero blocks
    /// included; 0 by default.
    pub index_contains_zero_blk: u8,
    /// Offset 141, u8: 0 = zlib, 1 = zstd ([`Compression`]).
    pub compress_method: u8,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

/// VHD checksum: the bitwise NOT of the byte sum of the 512-byte struct
/// with the checksum field (bytes 64..68) taken as zero.
pub fn footer_checksum(footer_struct: &[u8]) -> u32 {
    let sum = footer_struct[..FOOTER_STRUCT_SIZE]
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// `ceil(a / b)` for `b > 0`.
pub(crate) fn div_ceil_u64(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// VHD CHS geometry (Appendix of the VHD specification) of a disk of
/// `size` bytes, packed as `cylinders << 16 | heads << 8 | sectors_per_track`.
/// Nothing reads it; it is written for fidelity with Huawei's converter.
pub fn chs_geometry(size: u64) -> u32 {
    let mut total = (size / 512).min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17u64;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    total = cth / heads;
    ((total as u32) << 16) | ((heads as u32) << 8) | spt as u32
}

impl Footer {
    /// Decodes the first 512 bytes of `bytes` (checksum verified).
    /// `offset` is where the footer sits in the image, for error messages.
    pub fn parse(bytes: &[u8], offset: u64) -> FormatResult<Footer> {
        let footer = Footer::parse_unchecked(bytes, offset)?;
        let expected = footer_checksum(bytes);
        if footer.checksum != expected {
            return Err(FormatError::BadFooter {
                offset,
                detail: format!(
                    "checksum field is {:#010x}, the struct sums to {expected:#010x}",
                    footer.checksum
                ),
            });
        }
        Ok(footer)
    }

    /// Decodes the first 512 bytes of `bytes` without verifying the
    /// checksum (the mid footer's is stale by design).
    pub fn parse_unchecked(bytes: &[u8], offset: u64) -> FormatResult<Footer> {
        if bytes.len() < FOOTER_STRUCT_SIZE {
            return Err(FormatError::BadFooter {
                offset,
                detail: format!(
                    "only {} bytes, the footer struct needs {FOOTER_STRUCT_SIZE}",
                    bytes.len()
                ),
            });
        }
        let b = bytes;
        Ok(Footer {
            cookie: b[0..8].try_into().expect("8 bytes"),
            features: u32_at(b, 8),
            ff_version: u32_at(b, 12),
            data_offset: u64_at(b, 16),
            timestamp: u32_at(b, 24),
            creator_app: b[28..32].try_into().expect("4 bytes"),
            creator_version: u32_at(b, 32),
            creator_os: u32_at(b, 36),
            orig_size: u64_at(b, 40),
            curr_size: u64_at(b, 48),
            geometry: u32_at(b, 56),
            disk_type: u32_at(b, 60),
            checksum: u32_at(b, 64),
            uuid: b[68..84].try_into().expect("16 bytes"),
            saved: b[84],
            hidden: b[85],
            align_64: b[86],
            zvhd2_version: b[87],
            block_size: u32_at(b, 88),
            max_blk_num: u32_at(b, 92),
            index_lba: u64_at(b, 96),
            bitmap_lba: u64_at(b, 104),
            index_size: u32_at(b, 112),
            bitmap_size: u32_at(b, 116),
            index_seg_size: u32_at(b, 120),
            bitmap_seg_size: u32_at(b, 124),
            index_seg_num: u32_at(b, 128),
            bitmap_seg_num: u32_at(b, 132),
            non_zero_blk_num: u32_at(b, 136),
            index_contains_zero_blk: b[140],
            compress_method: b[141],
        })
    }

    /// The 4096-byte on-disk form, checksum computed, padding zeroed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.encode_stored();
        let sum = footer_checksum(&out);
        out[64..68].copy_from_slice(&sum.to_le_bytes());
        out
    }

    /// The 4096-byte on-disk form with the `checksum` field written as it
    /// is in `self`, not recomputed. Used for the mid footer, whose
    /// checksum Huawei's writer leaves stale.
    pub fn encode_stored(&self) -> Vec<u8> {
        let mut b = vec![0u8; FOOTER_SIZE as usize];
        b[0..8].copy_from_slice(&self.cookie);
        b[8..12].copy_from_slice(&self.features.to_le_bytes());
        b[12..16].copy_from_slice(&self.ff_version.to_le_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_le_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_le_bytes());
        b[36..40].copy_from_slice(&self.creator_os.to_le_bytes());
        b[40..48].copy_from_slice(&self.orig_size.to_le_bytes());
        b[48..56].copy_from_slice(&self.curr_size.to_le_bytes());
        b[56..60].copy_from_slice(&self.geometry.to_le_bytes());
        b[60..64].copy_from_slice(&self.disk_type.to_le_bytes());
        b[64..68].copy_from_slice(&self.checksum.to_le_bytes());
        b[68..84].copy_from_slice(&self.uuid);
        b[84] = self.saved;
        b[85] = self.hidden;
        b[86] = self.align_64;
        b[87] = self.zvhd2_version;
        b[88..92].copy_from_slice(&self.block_size.to_le_bytes());
        b[92..96].copy_from_slice(&self.max_blk_num.to_le_bytes());
        b[96..104].copy_from_slice(&self.index_lba.to_le_bytes());
        b[104..112].copy_from_slice(&self.bitmap_lba.to_le_bytes());
        b[112..116].copy_from_slice(&self.index_size.to_le_bytes());
        b[116..120].copy_from_slice(&self.bitmap_size.to_le_bytes());
        b[120..124].copy_from_slice(&self.index_seg_size.to_le_bytes());
        b[124..128].copy_from_slice(&self.bitmap_seg_size.to_le_bytes());
        b[128..132].copy_from_slice(&self.index_seg_num.to_le_bytes());
        b[132..136].copy_from_slice(&self.bitmap_seg_num.to_le_bytes());
        b[136..140].copy_from_slice(&self.non_zero_blk_num.to_le_bytes());
        b[140] = self.index_contains_zero_blk;
        b[141] = self.compress_method;
        b
    }

    /// The head footer a writer puts at offset 0 of a new image of a
    /// `source_size`-byte disk: every field Huawei's converter fills in
    /// (timestamp now, random uuid, CHS geometry, `orig_size` rounded up to
    /// 512, `curr_size` to 1 GiB, bitmap geometry), with no index yet
    /// (`index_lba` = `bitmap_lba` = 0, no index segments, no records).
    /// `block_size` must be non-zero; the caller validates it.
    pub fn new_head(source_size: u64, block_size: u32, compression: Compression) -> Footer {
        let orig_size = source_size.div_ceil(512) * 512;
        let curr_size = orig_size.div_ceil(GIB) * GIB;
        let max_blk_num = div_ceil_u64(orig_size, u64::from(block_size.max(1)));
        let bitmap_seg_num = div_ceil_u64(max_blk_num, BLOCKS_PER_SEGMENT);
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(VHD_EPOCH_UNIX))
            .unwrap_or(0);
        let mut uuid: [u8; 16] = rand::random();
        // Mark it an RFC 4122 version-4 uuid, like uuid_generate() does.
        uuid[6] = (uuid[6] & 0x0f) | 0x40;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        Footer {
            cookie: ZVHD2_COOKIE,
            features: 2,
            ff_version: 0x0001_0000,
            data_offset: u64::MAX,
            timestamp: u32::try_from(timestamp).unwrap_or(u32::MAX),
            creator_app: *b"tap\0",
            creator_version: 0x0001_0004,
            creator_os: 0,
            orig_size,
            curr_size,
            geometry: chs_geometry(curr_size),
            disk_type: 4,
            checksum: 0,
            uuid,
            saved: 0,
            hidden: 0,
            align_64: 0,
            zvhd2_version: 1,
            block_size,
            max_blk_num: u32::try_from(max_blk_num).unwrap_or(u32::MAX),
            index_lba: 0,
            bitmap_lba: 0,
            index_size: 0,
            bitmap_size: u32::try_from(bitmap_seg_num * u64::from(BITMAP_SEG_SIZE))
                .unwrap_or(u32::MAX),
            index_seg_size: INDEX_SEG_SIZE,
            bitmap_seg_size: BITMAP_SEG_SIZE,
            index_seg_num: 0,
            bitmap_seg_num: u32::try_from(bitmap_seg_num).unwrap_or(u32::MAX),
            non_zero_blk_num: 0,
            index_contains_zero_blk: 0,
            compress_method: compression.method_byte(),
        }
    }

    /// Whether the first 6 bytes of the cookie say ZVHD2 (all the reference
    /// reader compares).
    pub fn has_zvhd2_cookie(&self) -> bool {
        self.cookie[..6] == ZVHD2_COOKIE[..6]
    }
}

/// What the head and final footers say, validated against the file size.
#[derive(Clone, Debug)]
pub struct ImageHeader {
    /// The footer the reader trusts (the final one; the head one for an empty image).
    pub footer: Footer,
    /// Size of the ZVHD2 file in bytes.
    pub file_size: u64,
}

/// Checks the cookie and version of a footer before anything else, so that
/// a foreign file or an old ZVHD gets a message saying so rather than a
/// checksum error.
fn check_identity_fields(bytes: &[u8], offset: u64, which: &str) -> FormatResult<()> {
    if bytes.len() < FOOTER_STRUCT_SIZE {
        return Err(FormatError::NotZvhd2(format!(
            "{which} footer at offset {offset}: only {} bytes, need {FOOTER_STRUCT_SIZE}",
            bytes.len()
        )));
    }
    if bytes[..6] == ZVHD_COOKIE[..6] {
        return Err(FormatError::NotZvhd2(format!(
            "{which} footer at offset {offset} has cookie \"stream\": old ZVHD (single stream), not ZVHD2"
        )));
    }
    if bytes[..6] != ZVHD2_COOKIE[..6] {
        return Err(FormatError::NotZvhd2(format!(
            "{which} footer at offset {offset}: cookie {} is not \"z2strm\"",
            printable(&bytes[..8])
        )));
    }
    if bytes[87] == 0 {
        return Err(FormatError::NotZvhd2(format!(
            "{which} footer at offset {offset}: zvhd2_version is 0: old ZVHD (single stream), not ZVHD2"
        )));
    }
    Ok(())
}

impl ImageHeader {
    /// `head`: the first min(4096, file_size) bytes; `tail`: the last
    /// min(4096, file_size) bytes; `file_size`: the object's size.
    ///
    /// A 4096-byte file is the image of an empty source: only the head
    /// footer, read as an empty disk. Otherwise the final footer is the one
    /// trusted, and every field is checked against the others and the file
    /// size.
    pub fn parse(head: &[u8], tail: &[u8], file_size: u64) -> FormatResult<ImageHeader> {
        let want = file_size.min(FOOTER_SIZE);
        if file_size < FOOTER_SIZE {
            return Err(FormatError::NotZvhd2(format!(
                "file is {file_size} bytes, smaller than one {FOOTER_SIZE}-byte footer"
            )));
        }
        if head.len() as u64 != want || tail.len() as u64 != want {
            return Err(FormatError::NotZvhd2(format!(
                "expected the first and last {want} bytes, got {} and {} bytes",
                head.len(),
                tail.len()
            )));
        }
        check_identity_fields(head, 0, "head")?;
        let head_footer = Footer::parse(head, 0)?;
        if file_size == FOOTER_SIZE {
            // Empty source: only the head footer was written.
            if head_footer.orig_size != 0 || head_footer.max_blk_num != 0 {
                return Err(FormatError::BadFooter {
                    offset: 0,
                    detail: format!(
                        "the file holds only the head footer (4096 bytes) but orig_size is {} and max_blk_num {}: truncated image?",
                        head_footer.orig_size, head_footer.max_blk_num
                    ),
                });
            }
            check_block_size(&head_footer, 0)?;
            return Ok(ImageHeader {
                footer: head_footer,
                file_size,
            });
        }
        let final_offset = file_size - FOOTER_SIZE;
        if file_size < 2 * FOOTER_SIZE {
            return Err(FormatError::BadFooter {
                offset: final_offset,
                detail: format!(
                    "file is {file_size} bytes: too short for a head and a final footer"
                ),
            });
        }
        check_identity_fields(tail, final_offset, "final")?;
        let footer = Footer::parse(tail, final_offset)?;
        validate_final(&footer, file_size, final_offset)?;
        Ok(ImageHeader { footer, file_size })
    }

    /// Byte range holding the index segments followed by the bitmap
    /// segments (contiguous in every image), or `None` when there is nothing
    /// to read (empty image).
    pub fn metadata_range(&self) -> Option<std::ops::Range<u64>> {
        let f = &self.footer;
        if self.is_empty_image() {
            return None;
        }
        let start = f.index_lba;
        let end = f.bitmap_lba.checked_add(u64::from(f.bitmap_size))?;
        (end > start).then_some(start..end)
    }

    /// Whether this is the image of an empty source (a lone head footer).
    pub fn is_empty_image(&self) -> bool {
        self.file_size <= FOOTER_SIZE
    }

    /// The disk size the user converted (`orig_size`).
    pub fn disk_size(&self) -> u64 {
        self.footer.orig_size
    }

    /// `orig_size` rounded up to a whole GiB, as Huawei's reader reports it.
    pub fn curr_size(&self) -> u64 {
        self.footer.curr_size
    }

    /// Bytes of disk per block (a power of two, 1..=32 MiB).
    pub fn block_size(&self) -> u32 {
        self.footer.block_size
    }

    /// Number of blocks of the disk (`max_blk_num`).
    pub fn block_count(&self) -> u64 {
        u64::from(self.footer.max_blk_num)
    }

    /// How the records are compressed.
    pub fn compression(&self) -> Compression {
        if self.footer.compress_method == 0 {
            Compression::Zlib
        } else {
            Compression::Zstd
        }
    }
}

fn check_block_size(f: &Footer, offset: u64) -> FormatResult<()> {
    let bs = f.block_size;
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
        return Err(FormatError::BadFooter {
            offset,
            detail: format!("block_size {bs} is not a power of two from 1 MiB to 32 MiB"),
        });
    }
    Ok(())
}

/// Every check the final footer allows on its own and against the file size.
fn validate_final(f: &Footer, file_size: u64, offset: u64) -> FormatResult<()> {
    let bad = |detail: String| Err(FormatError::BadFooter { offset, detail });
    check_block_size(f, offset)?;
    let bs = u64::from(f.block_size);
    let blocks = u64::from(f.max_blk_num);
    let want_blocks = div_ceil_u64(f.orig_size, bs);
    if blocks != want_blocks {
        return bad(format!(
            "max_blk_num {blocks} != ceil(orig_size {} / block_size {bs}) = {want_blocks}",
            f.orig_size
        ));
    }
    if f.curr_size < f.orig_size {
        return bad(format!(
            "curr_size {} is smaller than orig_size {}",
            f.curr_size, f.orig_size
        ));
    }
    if f.compress_method > 1 {
        return bad(format!(
            "compress_method {} is neither 0 (zlib) nor 1 (zstd)",
            f.compress_method
        ));
    }
    if f.index_seg_size != INDEX_SEG_SIZE {
        return bad(format!(
            "index_seg_size {} != {INDEX_SEG_SIZE}",
            f.index_seg_size
        ));
    }
    if f.bitmap_seg_size != BITMAP_SEG_SIZE {
        return bad(format!(
            "bitmap_seg_size {} != {BITMAP_SEG_SIZE}",
            f.bitmap_seg_size
        ));
    }
    let non_zero = u64::from(f.non_zero_blk_num);
    if non_zero > blocks {
        return bad(format!(
            "non_zero_blk_num {non_zero} exceeds max_blk_num {blocks}"
        ));
    }
    let index_entries = match f.index_contains_zero_blk {
        0 => non_zero,
        1 => blocks,
        other => {
            return bad(format!(
                "index_contains_zero_blk {other} is neither 0 nor 1"
            ));
        }
    };
    let want_index_segs = div_ceil_u64(index_entries, BLOCKS_PER_SEGMENT);
    if u64::from(f.index_seg_num) != want_index_segs {
        return bad(format!(
            "index_seg_num {} != ceil({index_entries} index entries / {BLOCKS_PER_SEGMENT}) = {want_index_segs} (index_contains_zero_blk {})",
            f.index_seg_num, f.index_contains_zero_blk
        ));
    }
    let want_bitmap_segs = div_ceil_u64(blocks, BLOCKS_PER_SEGMENT);
    if u64::from(f.bitmap_seg_num) != want_bitmap_segs {
        return bad(format!(
            "bitmap_seg_num {} != ceil(max_blk_num {blocks} / {BLOCKS_PER_SEGMENT}) = {want_bitmap_segs}",
            f.bitmap_seg_num
        ));
    }
    let want_index_size = want_index_segs * u64::from(INDEX_SEG_SIZE);
    if u64::from(f.index_size) != want_index_size {
        return bad(format!(
            "index_size {} != index_seg_num {} x {INDEX_SEG_SIZE} = {want_index_size}",
            f.index_size, f.index_seg_num
        ));
    }
    let want_bitmap_size = want_bitmap_segs * u64::from(BITMAP_SEG_SIZE);
    if u64::from(f.bitmap_size) != want_bitmap_size {
        return bad(format!(
            "bitmap_size {} != bitmap_seg_num {} x {BITMAP_SEG_SIZE} = {want_bitmap_size}",
            f.bitmap_size, f.bitmap_seg_num
        ));
    }
    if f.index_lba < FOOTER_SIZE {
        return bad(format!(
            "index_lba {} is inside the head footer (must be >= {FOOTER_SIZE})",
            f.index_lba
        ));
    }
    let index_end = f.index_lba.checked_add(u64::from(f.index_size));
    if index_end != Some(f.bitmap_lba) {
        return bad(format!(
            "bitmap_lba {} does not follow the index (index_lba {} + index_size {})",
            f.bitmap_lba, f.index_lba, f.index_size
        ));
    }
    let final_footer = file_size - FOOTER_SIZE;
    match f.bitmap_lba.checked_add(u64::from(f.bitmap_size)) {
        Some(end) if end <= final_footer => {}
        _ => {
            return bad(format!(
                "bitmap (bitmap_lba {} + bitmap_size {}) runs past the final footer at {final_footer} (file size {file_size})",
                f.bitmap_lba, f.bitmap_size
            ));
        }
    }
    if non_zero > 0 && f.index_lba < 2 * FOOTER_SIZE + 4096 {
        // Head footer, at least one 4096-byte record and the mid footer
        // come before the index.
        return bad(format!(
            "index_lba {} leaves no room for {non_zero} record(s) and the mid footer",
            f.index_lba
        ));
    }
    Ok(())
}

/// Bytes as text where they are printable ASCII, `\xNN` elsewhere, quoted.
fn printable(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Footer {
        let mut f = Footer::new_head(5 << 20, 2 << 20, Compression::Zstd);
        f.uuid = [7; 16];
        f.timestamp = 1234;
        f
    }

    #[test]
    fn encode_parse_round_trip() {
        let f = sample();
        let bytes = f.encode();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes[512..].iter().all(|&b| b == 0));
        let mut back = Footer::parse(&bytes, 0).unwrap();
        assert_eq!(back.checksum, footer_checksum(&bytes));
        back.checksum = f.checksum;
        assert_eq!(back, f);
    }

    #[test]
    fn checksum_is_not_of_the_sum() {
        let bytes = sample().encode();
        let sum: u32 = bytes[..512]
            .iter()
            .enumerate()
            .filter(|(i, _)| !(64..68).contains(i))
            .map(|(_, &b)| u32::from(b))
            .sum();
        assert_eq!(u32_at(&bytes, 64), !sum);
    }

    #[test]
    fn bad_checksum_is_reported() {
        let mut bytes = sample().encode();
        bytes[100] ^= 1;
        let err = Footer::parse(&bytes, 8192).unwrap_err().to_string();
        assert!(err.contains("checksum") && err.contains("8192"), "{err}");
    }

    #[test]
    fn new_head_fields() {
        let f = Footer::new_head(777, 2 << 20, Compression::Zstd);
        assert_eq!(f.orig_size, 1024);
        assert_eq!(f.curr_size, 1 << 30);
        assert_eq!(f.max_blk_num, 1);
        assert_eq!(f.bitmap_seg_num, 1);
        assert_eq!(f.bitmap_size, 4096);
        let empty = Footer::new_head(0, 2 << 20, Compression::Zstd);
        assert_eq!(
            (empty.orig_size, empty.curr_size, empty.max_blk_num),
            (0, 0, 0)
        );
    }

    #[test]
    fn chs_matches_vhd_spec_examples() {
        // 1 GiB: 2097152 sectors -> spt 63, 16 heads, 2080 cylinders.
        assert_eq!(chs_geometry(1 << 30), (2080 << 16) | (16 << 8) | 63);
        // Capped at 65535 x 16 x 255 for huge disks.
        assert_eq!(chs_geometry(1 << 45), (65535 << 16) | (16 << 8) | 255);
    }

    #[test]
    fn old_zvhd_is_named() {
        let mut f = sample();
        f.cookie = ZVHD_COOKIE;
        f.zvhd2_version = 0;
        let bytes = f.encode();
        let err = ImageHeader::parse(&bytes, &bytes, 4096)
            .unwrap_err()
            .to_string();
        assert!(err.contains("old ZVHD"), "{err}");
        let mut f = sample();
        f.zvhd2_version = 0;
        let bytes = f.encode();
        let err = ImageHeader::parse(&bytes, &bytes, 4096)
            .unwrap_err()
            .to_string();
        assert!(err.contains("old ZVHD"), "{err}");
    }

    #[test]
    fn empty_image() {
        let bytes = Footer::new_head(0, 2 << 20, Compression::Zstd).encode();
        let h = ImageHeader::parse(&bytes, &bytes, 4096).unwrap();
        assert_eq!(h.disk_size(), 0);
        assert!(h.metadata_range().is_none());
        // A lone head footer that claims data is a truncated image.
        let bytes = Footer::new_head(1 << 20, 2 << 20, Compression::Zstd).encode();
        let err = ImageHeader::parse(&bytes, &bytes, 4096)
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
