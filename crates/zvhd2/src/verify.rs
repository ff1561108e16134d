//! The one place that decides whether a block's bytes are right.
//!
//! Every reader of block data (the mount's fetch path, the whole-image scan
//! behind `zvimg check` and `zvimg index`, test fixtures) goes through
//! these functions, so they all apply the same rules with the same words:
//!
//! - the image's index and the sidecar agree on where the record is, and a
//!   block the index stores as zeros has the sidecar's zero-block entry
//!   ([`check_placement`]);
//! - the stored record bytes have the sidecar's CRC32C ([`check_record_crc`]);
//! - the record's framing is sound and it decodes to exactly `block_size`
//!   bytes, whose BLAKE3 is the sidecar's ([`decode_checked`]).
//!
//! [`verify_record`] runs all of them in order. The mount computes the
//! CRC32C on one thread while another decodes, so it calls the parts
//! itself and lets a CRC mismatch win over whatever the decode said.
//! Without a sidecar only the framing and the decoded length are checked.
//!
//! Pure: no I/O, no threads.

use crate::index::{BlockLocation, RecordLocation};
use crate::record::decode_record_into;
use crate::zvidx::{SidecarEntry, zero_block_hash};
use crate::{Compression, FormatError, hex};

/// A block whose bytes failed a check: which block, where its record lies
/// (0 for a zero block), and what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("block {block} (record at offset {offset}): {failure}")]
pub struct VerifyError {
    /// Block number in the disk.
    pub block: u64,
    /// Offset of the block's record in the image file (0 for a zero block).
    pub offset: u64,
    /// What was wrong.
    pub failure: VerifyFailure,
}

/// What was wrong with a block (see [`VerifyError`] for which block).
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailure {
    /// The sidecar and the image's own index disagree on the record's place
    /// (offset and size in bytes; 0+0 is a zero block).
    #[error(
        "the sidecar places the record at {sidecar_offset}+{sidecar_size}, the image's index at {index_offset}+{index_size}"
    )]
    Placement {
        /// Record offset per the sidecar.
        sidecar_offset: u64,
        /// Record size per the sidecar.
        sidecar_size: u32,
        /// Record offset per the image's index.
        index_offset: u64,
        /// Record size per the image's index.
        index_size: u32,
    },
    /// The image stores the block as zeros but the sidecar's hash is not
    /// that of a zero block.
    #[error("the sidecar has data for a block the image stores as zeros")]
    SidecarHasData,
    /// The stored record bytes are not those the sidecar was made from.
    #[error(
        "record CRC32C is {actual:08x}, the sidecar says {expected:08x} (corrupted in storage or transit)"
    )]
    RecordCrc {
        /// CRC32C per the sidecar.
        expected: u32,
        /// CRC32C of the bytes read.
        actual: u32,
    },
    /// The record's framing is broken or its payload does not decode (the
    /// format layer's own words).
    #[error("{0}")]
    Record(String),
    /// The record decoded to the wrong number of bytes.
    #[error("decoded {actual} bytes, expected {expected}")]
    Length {
        /// The block size.
        expected: u64,
        /// Bytes produced.
        actual: u64,
    },
    /// The decoded block is not the one the sidecar was made from.
    #[error(
        "BLAKE3 of the decoded block is {}, the sidecar says {}",
        hex(actual),
        hex(expected)
    )]
    BlockHash {
        /// BLAKE3 per the sidecar.
        expected: [u8; 32],
        /// BLAKE3 of the decoded bytes.
        actual: [u8; 32],
    },
}

impl From<VerifyError> for FormatError {
    fn from(e: VerifyError) -> FormatError {
        FormatError::BadRecord {
            block: e.block,
            offset: e.offset,
            detail: e.failure.to_string(),
        }
    }
}

impl VerifyError {
    fn new(block: u64, offset: u64, failure: VerifyFailure) -> VerifyError {
        VerifyError {
            block,
            offset,
            failure,
        }
    }
}

/// The (offset, size) a location stands for in a sidecar entry.
fn place(location: BlockLocation) -> (u64, u32) {
    match location {
        BlockLocation::Record(r) => (r.offset, r.size),
        BlockLocation::Zero => (0, 0),
    }
}

/// Checks that the sidecar's `entry` for `block` describes the same record
/// as the image's index (`location`), and for a zero block that the entry
/// is the zero-block entry of a `block_size`-byte block.
pub fn check_placement(
    block: u64,
    location: BlockLocation,
    entry: &SidecarEntry,
    block_size: u32,
) -> Result<(), VerifyError> {
    let (offset, size) = place(location);
    if entry.record_offset != offset || entry.record_size != size {
        return Err(VerifyError::new(
            block,
            offset,
            VerifyFailure::Placement {
                sidecar_offset: entry.record_offset,
                sidecar_size: entry.record_size,
                index_offset: offset,
                index_size: size,
            },
        ));
    }
    if location == BlockLocation::Zero && entry.block_hash != zero_block_hash(block_size) {
        return Err(VerifyError::new(block, 0, VerifyFailure::SidecarHasData));
    }
    Ok(())
}

/// Checks `actual`, the CRC32C of the record bytes of `block` at `offset`,
/// against the sidecar's `entry`.
pub fn check_record_crc(
    block: u64,
    offset: u64,
    actual: u32,
    entry: &SidecarEntry,
) -> Result<(), VerifyError> {
    if actual != entry.record_crc32c {
        return Err(VerifyError::new(
            block,
            offset,
            VerifyFailure::RecordCrc {
                expected: entry.record_crc32c,
                actual,
            },
        ));
    }
    Ok(())
}

/// Checks the BLAKE3 of `decoded`, the bytes of `block` (record at
/// `offset`), against the sidecar's `entry`.
pub fn check_block_hash(
    block: u64,
    offset: u64,
    decoded: &[u8],
    entry: &SidecarEntry,
) -> Result<(), VerifyError> {
    let actual = *blake3::hash(decoded).as_bytes();
    if actual != entry.block_hash {
        return Err(VerifyError::new(
            block,
            offset,
            VerifyFailure::BlockHash {
                expected: entry.block_hash,
                actual,
            },
        ));
    }
    Ok(())
}

/// Decodes `record` (the whole padded record of `block` at `loc`) into
/// `out` and checks the result: framing, exactly `block_size` bytes, and,
/// with a sidecar `entry`, the block's BLAKE3. `out` is cleared first; on
/// error it is left empty (its capacity kept, for reuse), so a caller can
/// never hand out partly checked bytes.
pub fn decode_checked(
    record: &[u8],
    block: u64,
    loc: RecordLocation,
    entry: Option<&SidecarEntry>,
    block_size: u32,
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<(), VerifyError> {
    let fail = |failure| VerifyError::new(block, loc.offset, failure);
    decode_record_into(record, block, loc.offset, block_size, compression, out).map_err(
        |e| match e {
            FormatError::BadRecord { detail, .. } => fail(VerifyFailure::Record(detail)),
            other => fail(VerifyFailure::Record(other.to_string())),
        },
    )?;
    let checked = if out.len() as u64 != u64::from(block_size) {
        Err(fail(VerifyFailure::Length {
            expected: u64::from(block_size),
            actual: out.len() as u64,
        }))
    } else if let Some(e) = entry {
        check_block_hash(block, loc.offset, out, e)
    } else {
        Ok(())
    };
    if checked.is_err() {
        out.clear();
    }
    checked
}

/// Every check of one record in order: placement and CRC32C against the
/// sidecar `entry` (when there is one), then [`decode_checked`]. Returns the
/// record's CRC32C (computed whether or not there is a sidecar, for callers
/// that build one).
pub fn verify_record(
    record: &[u8],
    block: u64,
    loc: RecordLocation,
    entry: Option<&SidecarEntry>,
    block_size: u32,
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<u32, VerifyError> {
    if let Some(e) = entry {
        check_placement(block, BlockLocation::Record(loc), e, block_size)?;
    }
    if record.len() as u64 != u64::from(loc.size) {
        // The index's size bounds the record; anything else is a fetch bug.
        return Err(VerifyError::new(
            block,
            loc.offset,
            VerifyFailure::Record(format!(
                "{} record bytes, the index says {}",
                record.len(),
                loc.size
            )),
        ));
    }
    let crc = crc32c::crc32c(record);
    if let Some(e) = entry {
        check_record_crc(block, loc.offset, crc, e)?;
    }
    decode_checked(record, block, loc, entry, block_size, compression, out)?;
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{compress_zstd, encode_record, zstd_compressor};

    const BS: u32 = 1 << 20;

    fn fixture() -> (Vec<u8>, Vec<u8>, RecordLocation, SidecarEntry) {
        let data: Vec<u8> = (0..BS).map(|i| (i % 251) as u8 ^ (i >> 13) as u8).collect();
        let payload = compress_zstd(&mut zstd_compressor(3).unwrap(), &data).unwrap();
        let record = encode_record(3, &payload);
        let loc = RecordLocation {
            offset: 8192,
            size: record.len() as u32,
        };
        let entry = SidecarEntry {
            record_offset: loc.offset,
            record_size: loc.size,
            record_crc32c: crc32c::crc32c(&record),
            block_hash: *blake3::hash(&data).as_bytes(),
        };
        (data, record, loc, entry)
    }

    fn verify(
        record: &[u8],
        loc: RecordLocation,
        entry: Option<&SidecarEntry>,
    ) -> Result<Vec<u8>, VerifyError> {
        let mut out = Vec::new();
        verify_record(record, 3, loc, entry, BS, Compression::Zstd, &mut out)?;
        Ok(out)
    }

    #[test]
    fn good_record_passes_with_and_without_sidecar() {
        let (data, record, loc, entry) = fixture();
        assert_eq!(verify(&record, loc, Some(&entry)).unwrap(), data);
        assert_eq!(verify(&record, loc, None).unwrap(), data);
    }

    #[test]
    fn each_rule_names_block_offset_and_cause() {
        let (_, record, loc, entry) = fixture();
        let msg = |e: VerifyError| {
            assert_eq!((e.block, e.offset), (3, 8192));
            e.to_string()
        };
        let mut bad = record.clone();
        bad[100] ^= 1;
        let e = verify(&bad, loc, Some(&entry)).unwrap_err();
        assert!(matches!(e.failure, VerifyFailure::RecordCrc { .. }));
        assert!(msg(e).contains("CRC32C"));

        let other_hash = SidecarEntry {
            block_hash: [7; 32],
            ..entry
        };
        let e = verify(&record, loc, Some(&other_hash)).unwrap_err();
        assert!(matches!(e.failure, VerifyFailure::BlockHash { .. }));
        assert!(msg(e).starts_with("block 3 (record at offset 8192): BLAKE3"));

        let moved = SidecarEntry {
            record_offset: 4096,
            ..entry
        };
        let e = verify(&record, loc, Some(&moved)).unwrap_err();
        assert!(msg(e).contains("places the record at 4096"));

        let mut framing = record.clone();
        framing[0] = b'X';
        let e = verify(&framing, loc, None).unwrap_err();
        assert!(matches!(e.failure, VerifyFailure::Record(_)));
        assert!(msg(e).contains("hwstream"));
    }

    #[test]
    fn zero_blocks_must_have_the_zero_entry() {
        let zero = SidecarEntry {
            record_offset: 0,
            record_size: 0,
            record_crc32c: 0,
            block_hash: zero_block_hash(BS),
        };
        check_placement(9, BlockLocation::Zero, &zero, BS).unwrap();
        let data = SidecarEntry {
            block_hash: [1; 32],
            ..zero
        };
        let e = check_placement(9, BlockLocation::Zero, &data, BS).unwrap_err();
        assert!(matches!(e.failure, VerifyFailure::SidecarHasData));
        let (_, _, loc, entry) = fixture();
        let e = check_placement(9, BlockLocation::Zero, &entry, BS).unwrap_err();
        assert!(matches!(e.failure, VerifyFailure::Placement { .. }));
        let e = check_placement(9, BlockLocation::Record(loc), &zero, BS).unwrap_err();
        assert!(matches!(e.failure, VerifyFailure::Placement { .. }));
    }

    #[test]
    fn failed_decode_leaves_the_buffer_empty() {
        let (_, record, loc, entry) = fixture();
        let wrong = SidecarEntry {
            block_hash: [0; 32],
            ..entry
        };
        let mut out = Vec::with_capacity(BS as usize);
        assert!(
            decode_checked(
                &record,
                3,
                loc,
                Some(&wrong),
                BS,
                Compression::Zstd,
                &mut out
            )
            .is_err()
        );
        assert!(out.is_empty());
        assert!(out.capacity() >= BS as usize);
    }
}
