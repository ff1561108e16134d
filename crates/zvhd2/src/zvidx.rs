//! The `.zvidx` sidecar: everything a reader needs in one GET (block table,
//! per-record CRC32C, per-block BLAKE3, image digest, boot profile).
//! Documented byte by byte in `docs/zvidx.md`.
//!
//! Owns the sidecar's encoding and every check that makes a torn, corrupt
//! or foreign sidecar an error rather than wrong data: a trailing BLAKE3 of
//! the whole file, counts checked against the length before anything is
//! allocated, entries checked against the block and image sizes, the image
//! digest recomputed.

use crate::{hex, verify};

use super::footer::{MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use super::record::max_record_size;
use super::{
    BlockIndex, Compression, FOOTER_SIZE, FormatError, FormatResult, ImageHeader, RecordLocation,
    SECTOR_ALIGN,
};

/// First 8 bytes of every sidecar.
pub const ZVIDX_MAGIC: [u8; 8] = *b"ZVIDX\0\r\n";
/// The format version this code writes and reads.
pub const ZVIDX_VERSION: u32 = 1;
/// Bytes before the first entry.
pub const ZVIDX_HEADER_SIZE: usize = 128;
/// Bytes of one entry.
pub const ZVIDX_ENTRY_SIZE: usize = 48;
/// Bytes of the trailing BLAKE3.
const TRAILER_SIZE: usize = 32;

/// Identifies one image, surviving copies and uploads: its size and a hash
/// of its final footer (which holds the image's random uuid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageIdentity {
    /// Size of the ZVHD2 file in bytes.
    pub image_size: u64,
    /// BLAKE3 of the last 4096 bytes of the file (all of it if shorter).
    pub footer_hash: [u8; 32],
}

impl ImageIdentity {
    /// `tail`: the last 4096 bytes of the image (all of it if shorter).
    pub fn from_tail(image_size: u64, tail: &[u8]) -> ImageIdentity {
        ImageIdentity {
            image_size,
            footer_hash: *blake3::hash(tail).as_bytes(),
        }
    }
}

/// One block's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SidecarEntry {
    /// Record offset; 0 with `record_size` 0 for a zero block.
    pub record_offset: u64,
    /// Padded record length; 0 for a zero block.
    pub record_size: u32,
    /// CRC32C of the record bytes as stored (padding included); 0 for a zero block.
    pub record_crc32c: u32,
    /// BLAKE3 of the decoded block (of `block_size` zero bytes for a zero block).
    pub block_hash: [u8; 32],
}

impl SidecarEntry {
    /// Whether the block has no record and reads as zeros.
    pub fn is_zero(&self) -> bool {
        self.record_size == 0
    }
}

/// A decoded sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    /// The image this sidecar describes.
    pub identity: ImageIdentity,
    /// Bytes of disk per block.
    pub block_size: u32,
    /// `orig_size` of the image.
    pub disk_size: u64,
    /// `curr_size` of the image.
    pub curr_size: u64,
    /// How the image's records are compressed.
    pub compression: Compression,
    /// One entry per block, in block order.
    pub entries: Vec<SidecarEntry>,
    /// BLAKE3 over the block hashes in block order.
    pub image_digest: [u8; 32],
    /// Blocks a boot reads, in the order it reads them.
    pub boot_profile: Vec<u64>,
}

/// BLAKE3 of `block_size` zero bytes: the hash of every zero block.
pub fn zero_block_hash(block_size: u32) -> [u8; 32] {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut h = blake3::Hasher::new();
    let mut left = block_size as usize;
    while left > 0 {
        let n = left.min(ZEROS.len());
        h.update(&ZEROS[..n]);
        left -= n;
    }
    *h.finalize().as_bytes()
}

/// BLAKE3 over the block hashes in block order.
pub fn image_digest(entries: &[SidecarEntry]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for e in entries {
        h.update(&e.block_hash);
    }
    *h.finalize().as_bytes()
}

/// A bounds-checked little-endian reader over the sidecar bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        // Callers checked the total length first; slicing cannot fail.
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }
    fn h32(&mut self) -> [u8; 32] {
        self.take(32).try_into().expect("32 bytes")
    }
}

fn bad<T>(msg: String) -> FormatResult<T> {
    Err(FormatError::BadSidecar(msg))
}

impl Sidecar {
    /// A sidecar for the image with `identity` and `header`, computing the
    /// image digest from `entries` (one per block, in block order).
    pub fn from_parts(
        identity: ImageIdentity,
        header: &ImageHeader,
        entries: Vec<SidecarEntry>,
        boot_profile: Vec<u64>,
    ) -> Sidecar {
        Sidecar {
            identity,
            block_size: header.block_size(),
            disk_size: header.disk_size(),
            curr_size: header.curr_size(),
            compression: header.compression(),
            image_digest: image_digest(&entries),
            entries,
            boot_profile,
        }
    }

    /// The on-disk form (see `docs/zvidx.md`).
    pub fn encode(&self) -> Vec<u8> {
        let len = ZVIDX_HEADER_SIZE
            + self.entries.len() * ZVIDX_ENTRY_SIZE
            + self.boot_profile.len() * 8
            + TRAILER_SIZE;
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&ZVIDX_MAGIC);
        b.extend_from_slice(&ZVIDX_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // flags
        b.extend_from_slice(&self.identity.image_size.to_le_bytes());
        b.extend_from_slice(&self.identity.footer_hash);
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.push(self.compression.method_byte());
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&self.disk_size.to_le_bytes());
        b.extend_from_slice(&self.curr_size.to_le_bytes());
        b.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.boot_profile.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.image_digest);
        debug_assert_eq!(b.len(), ZVIDX_HEADER_SIZE);
        for e in &self.entries {
            b.extend_from_slice(&e.record_offset.to_le_bytes());
            b.extend_from_slice(&e.record_size.to_le_bytes());
            b.extend_from_slice(&e.record_crc32c.to_le_bytes());
            b.extend_from_slice(&e.block_hash);
        }
        for p in &self.boot_profile {
            b.extend_from_slice(&p.to_le_bytes());
        }
        let trailer = blake3::hash(&b);
        b.extend_from_slice(trailer.as_bytes());
        b
    }

    /// Decodes and fully validates a sidecar: length against counts, the
    /// trailing hash, every header field and entry, the image digest.
    pub fn decode(bytes: &[u8]) -> FormatResult<Sidecar> {
        if bytes.len() < ZVIDX_HEADER_SIZE + TRAILER_SIZE {
            return bad(format!(
                "{} bytes, shorter than the {}-byte minimum (torn or not a .zvidx file)",
                bytes.len(),
                ZVIDX_HEADER_SIZE + TRAILER_SIZE
            ));
        }
        let mut c = Cursor { bytes, at: 0 };
        let magic = c.take(8);
        if magic != ZVIDX_MAGIC {
            return bad(format!("bad magic {magic:02x?}: not a .zvidx file"));
        }
        let version = c.u32();
        if version != ZVIDX_VERSION {
            return bad(format!(
                "format version {version}; this build reads version {ZVIDX_VERSION}"
            ));
        }
        let flags = c.u32();
        let image_size = c.u64();
        let footer_hash = c.h32();
        let block_size = c.u32();
        let method = c.u8();
        let reserved = c.take(3).to_vec();
        let disk_size = c.u64();
        let curr_size = c.u64();
        let entry_count = c.u64();
        let profile_count = c.u64();
        let stored_digest = c.h32();
        let want_len = entry_count
            .checked_mul(ZVIDX_ENTRY_SIZE as u64)
            .and_then(|e| profile_count.checked_mul(8).and_then(|p| e.checked_add(p)))
            .and_then(|n| n.checked_add((ZVIDX_HEADER_SIZE + TRAILER_SIZE) as u64));
        if want_len != Some(bytes.len() as u64) {
            return bad(format!(
                "{} bytes, but {entry_count} entries and {profile_count} boot-profile blocks need {} (torn or corrupt)",
                bytes.len(),
                want_len.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
            ));
        }
        let body = bytes.len() - TRAILER_SIZE;
        let computed = blake3::hash(&bytes[..body]);
        if computed.as_bytes()[..] != bytes[body..] {
            return bad(format!(
                "trailing BLAKE3 {} does not match the contents ({}): corrupt or torn",
                hex(&bytes[body..]),
                computed.to_hex()
            ));
        }
        if flags != 0 || reserved.iter().any(|&b| b != 0) {
            return bad(format!(
                "unknown flags {flags:#x} / reserved bytes {reserved:02x?} set"
            ));
        }
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return bad(format!(
                "block size {block_size} is not a power of two from 1 MiB to 32 MiB"
            ));
        }
        let compression = match method {
            0 => Compression::Zlib,
            1 => Compression::Zstd,
            other => {
                return bad(format!(
                    "compression {other} is neither 0 (zlib) nor 1 (zstd)"
                ));
            }
        };
        let want_entries = disk_size.div_ceil(u64::from(block_size));
        if entry_count != want_entries {
            return bad(format!(
                "{entry_count} entries, but a {disk_size}-byte disk of {block_size}-byte blocks has {want_entries}"
            ));
        }
        if curr_size < disk_size {
            return bad(format!(
                "curr size {curr_size} is smaller than disk size {disk_size}"
            ));
        }
        if image_size < FOOTER_SIZE {
            return bad(format!(
                "image size {image_size} is smaller than one footer"
            ));
        }
        // Records end before the mid footer and the final footer.
        let data_end = image_size.saturating_sub(2 * FOOTER_SIZE);
        let max_size = max_record_size(block_size);
        let zero_hash = zero_block_hash(block_size);
        let mut entries = Vec::with_capacity(entry_count as usize);
        let mut prev_end = FOOTER_SIZE;
        for block in 0..entry_count {
            let e = SidecarEntry {
                record_offset: c.u64(),
                record_size: c.u32(),
                record_crc32c: c.u32(),
                block_hash: c.h32(),
            };
            let size = u64::from(e.record_size);
            if e.is_zero() {
                if e.record_offset != 0 || e.record_crc32c != 0 || e.block_hash != zero_hash {
                    return bad(format!(
                        "block {block}: zero-block entry with offset {}, CRC {:#x} or a hash other than that of zeros",
                        e.record_offset, e.record_crc32c
                    ));
                }
            } else if e.record_offset < prev_end
                || !e.record_offset.is_multiple_of(SECTOR_ALIGN)
                || !size.is_multiple_of(SECTOR_ALIGN)
                || size > max_size
                // checked: an offset near u64::MAX must not wrap past the bound
                || e.record_offset.checked_add(size).is_none_or(|end| end > data_end)
            {
                return bad(format!(
                    "block {block}: record at {} of {size} bytes is misaligned, overlaps the previous record (ending at {prev_end}), \
                     exceeds {max_size} bytes or runs past the data area ending at {data_end}",
                    e.record_offset
                ));
            } else {
                prev_end = e.record_offset + size;
            }
            entries.push(e);
        }
        let mut boot_profile = Vec::with_capacity(profile_count as usize);
        for i in 0..profile_count {
            let b = c.u64();
            if b >= entry_count {
                return bad(format!(
                    "boot profile item {i} is block {b}, past the disk's {entry_count} blocks"
                ));
            }
            boot_profile.push(b);
        }
        let digest = image_digest(&entries);
        if digest != stored_digest {
            return bad(format!(
                "image digest {} does not match the block hashes ({})",
                hex(&stored_digest),
                hex(&digest)
            ));
        }
        Ok(Sidecar {
            identity: ImageIdentity {
                image_size,
                footer_hash,
            },
            block_size,
            disk_size,
            curr_size,
            compression,
            entries,
            image_digest: stored_digest,
            boot_profile,
        })
    }

    /// Errors unless this sidecar describes the image with `identity`.
    pub fn check_identity(&self, identity: &ImageIdentity) -> FormatResult<()> {
        if self.identity.image_size != identity.image_size {
            return Err(FormatError::SidecarMismatch(format!(
                "sidecar is for a {}-byte image, the image is {} bytes",
                self.identity.image_size, identity.image_size
            )));
        }
        if self.identity.footer_hash != identity.footer_hash {
            return Err(FormatError::SidecarMismatch(format!(
                "sidecar is for the image whose final footer hashes to {}, this image's hashes to {}",
                hex(&self.identity.footer_hash),
                hex(&identity.footer_hash)
            )));
        }
        Ok(())
    }

    /// Errors unless the sidecar's geometry matches what the image's own
    /// footer says (a second line of defence after [`Sidecar::check_identity`]).
    pub fn check_header(&self, header: &ImageHeader) -> FormatResult<()> {
        let ours = (
            self.block_size,
            self.disk_size,
            self.curr_size,
            self.compression,
            self.entries.len() as u64,
        );
        let theirs = (
            header.block_size(),
            header.disk_size(),
            header.curr_size(),
            header.compression(),
            header.block_count(),
        );
        if ours != theirs {
            return Err(FormatError::SidecarMismatch(format!(
                "sidecar says (block size, disk size, curr size, compression, blocks) = {ours:?}, the image's footer says {theirs:?}"
            )));
        }
        Ok(())
    }

    /// The block table, as [`BlockIndex::from_metadata`] would build it.
    pub fn block_index(&self) -> BlockIndex {
        BlockIndex::from_locations(
            self.block_size,
            self.entries.iter().map(|e| {
                (!e.is_zero()).then_some(RecordLocation {
                    offset: e.record_offset,
                    size: e.record_size,
                })
            }),
        )
    }

    /// The entry of `block`.
    pub fn entry(&self, block: u64) -> FormatResult<&SidecarEntry> {
        usize::try_from(block)
            .ok()
            .and_then(|i| self.entries.get(i))
            .ok_or(FormatError::BlockOutOfRange {
                block,
                blocks: self.entries.len() as u64,
            })
    }

    /// Checks the stored record bytes of `block` against their CRC32C (the
    /// rule itself is [`crate::verify::check_record_crc`]). Errors name the
    /// block and the record offset.
    pub fn verify_record(&self, block: u64, record: &[u8]) -> FormatResult<()> {
        let e = self.entry(block)?;
        if e.is_zero() || record.len() as u64 != u64::from(e.record_size) {
            return Err(FormatError::BadRecord {
                block,
                offset: e.record_offset,
                detail: format!(
                    "{} record bytes, the sidecar says {} (0: a zero block, with no record)",
                    record.len(),
                    e.record_size
                ),
            });
        }
        Ok(verify::check_record_crc(
            block,
            e.record_offset,
            crc32c::crc32c(record),
            e,
        )?)
    }

    /// Checks decoded `block` bytes against their BLAKE3 (the rule itself is
    /// [`crate::verify::check_block_hash`]).
    pub fn verify_block(&self, block: u64, decoded: &[u8]) -> FormatResult<()> {
        let e = self.entry(block)?;
        Ok(verify::check_block_hash(
            block,
            e.record_offset,
            decoded,
            e,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Footer;

    const BS: u32 = 1 << 20;

    fn sample() -> Sidecar {
        let mut f = Footer::new_head(3 * u64::from(BS) - 512, BS, Compression::Zstd);
        f.non_zero_blk_num = 2;
        let header = ImageHeader {
            footer: f,
            file_size: 1 << 20,
        };
        let identity = ImageIdentity::from_tail(1 << 20, b"tail bytes");
        let entries = vec![
            SidecarEntry {
                record_offset: 4096,
                record_size: 8192,
                record_crc32c: 7,
                block_hash: [1; 32],
            },
            SidecarEntry {
                record_offset: 0,
                record_size: 0,
                record_crc32c: 0,
                block_hash: zero_block_hash(BS),
            },
            SidecarEntry {
                record_offset: 12288,
                record_size: 4096,
                record_crc32c: 9,
                block_hash: [2; 32],
            },
        ];
        Sidecar::from_parts(identity, &header, entries, vec![2, 0])
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = s.encode();
        assert_eq!(bytes.len(), 128 + 3 * 48 + 2 * 8 + 32);
        assert_eq!(Sidecar::decode(&bytes).unwrap(), s);
        let idx = s.block_index();
        assert_eq!(idx.block_count(), 3);
        assert_eq!(idx.non_zero_count(), 2);
    }

    #[test]
    fn every_flip_and_truncation_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(Sidecar::decode(&b).is_err(), "flip at {i}");
            assert!(Sidecar::decode(&bytes[..i]).is_err(), "truncated to {i}");
        }
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut b = sample().encode();
        b[80..88].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = Sidecar::decode(&b).unwrap_err().to_string();
        assert!(e.contains("torn or corrupt"), "{e}");
    }

    /// Re-signs a hand-edited sidecar so the semantic checks are reached.
    fn resign(mut b: Vec<u8>) -> Vec<u8> {
        let n = b.len() - 32;
        let h = blake3::hash(&b[..n]);
        b[n..].copy_from_slice(h.as_bytes());
        b
    }

    #[test]
    fn semantic_checks() {
        let bytes = sample().encode();
        let err = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = bytes.clone();
            f(&mut b);
            Sidecar::decode(&resign(b)).unwrap_err().to_string()
        };
        assert!(err(&|b| b[96] ^= 1).contains("image digest"));
        assert!(err(&|b| b[128 + 96 + 1] = 0).contains("block 2"));
        assert!(err(&|b| b[56..60].copy_from_slice(&3u32.to_le_bytes())).contains("block size"));
        assert!(err(&|b| b[8] = 2).contains("version 2"));
        let n = bytes.len();
        assert!(err(&|b| b[n - 40] = 9).contains("boot profile"));
        // A record offset near u64::MAX must not wrap around past the bound.
        let far = (u64::MAX - 4095).to_le_bytes();
        assert!(err(&|b| b[128 + 96..128 + 104].copy_from_slice(&far)).contains("block 2"));
    }

    #[test]
    fn identity_and_verification() {
        let s = sample();
        s.check_identity(&s.identity).unwrap();
        let other = ImageIdentity::from_tail(1 << 20, b"other");
        assert!(matches!(
            s.check_identity(&other),
            Err(FormatError::SidecarMismatch(_))
        ));
        let other = ImageIdentity {
            image_size: 5,
            ..s.identity
        };
        assert!(
            s.check_identity(&other)
                .unwrap_err()
                .to_string()
                .contains("5 bytes")
        );
        assert!(s.verify_record(1, &[]).is_err());
        assert!(
            s.verify_record(0, &[0; 8192])
                .unwrap_err()
                .to_string()
                .contains("CRC32C")
        );
        s.verify_block(1, &vec![0; BS as usize]).unwrap();
        assert!(s.verify_block(1, &vec![1; BS as usize]).is_err());
        assert!(matches!(
            s.verify_block(3, &[]),
            Err(FormatError::BlockOutOfRange { .. })
        ));
    }
}
