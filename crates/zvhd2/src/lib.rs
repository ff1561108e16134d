#![deny(missing_docs)]
//! The ZVHD2 image format and the `.zvidx` sidecar index: parse, validate,
//! lay out, encode. Pure: no I/O beyond byte slices and `std::io::{Read, Write}`,
//! no tokio. Every length and offset read from a file is checked before use.
//!
//! The byte layout is in `docs/format.md` (and the sidecar's in
//! `docs/zvidx.md`); every public format field's doc gives its offset. In
//! the workspace (`docs/ARCHITECTURE.md`) this is the bottom layer: the
//! `zvmount` daemon, `zvimg` and the test kit build on it, and it depends on
//! none of them — another project (an nbdkit plugin, a converter) can use it
//! alone.
//!
//! Reading an image takes three steps, each on bytes the caller fetched:
//! 1. [`ImageHeader::parse`] on the first and last 4096 bytes and the file size;
//! 2. [`BlockIndex::from_metadata`] on the bytes in [`ImageHeader::metadata_range`]
//!    (index segments followed by bitmap segments), or [`Sidecar::block_index`];
//! 3. [`verify_record`] (or [`decode_record`] without a sidecar) on the bytes
//!    of one record, for each block wanted: every check a reader makes of a
//!    block lives in [`verify`].

pub mod footer;
pub mod index;
pub mod record;
pub mod verify;
pub mod writer;
pub mod zvidx;

pub use footer::{Compression, Footer, ImageHeader};
pub use index::{BlockIndex, BlockLocation, RecordLocation};
pub use record::{decode_record, encode_record, max_record_size};
pub use verify::{VerifyError, VerifyFailure, verify_record};
pub use writer::{
    DiskSource, SequentialSource, WriteOptions, WriteSummary, WriteTimings, write_image,
    write_image_from,
};
pub use zvidx::{ImageIdentity, Sidecar, SidecarEntry};

/// Every footer occupies one 4096-byte slot.
pub const FOOTER_SIZE: u64 = 4096;
/// Records, footers and segments are aligned to this.
pub const SECTOR_ALIGN: u64 = 4096;
/// The only block size Huawei's own tools read correctly.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;

/// Why an image or sidecar cannot be read. Variants carry the block and
/// byte offset that went wrong; the caller adds the image's name.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file is not a ZVHD2 image at all (wrong cookie, old ZVHD, too
    /// short); the text says which.
    #[error("not a ZVHD2 image: {0}")]
    NotZvhd2(String),
    /// A footer's fields are inconsistent with each other or the file size.
    #[error("footer at offset {offset}: {detail}")]
    BadFooter {
        /// Byte offset of the footer's 4096-byte slot in the image.
        offset: u64,
        /// Which field is wrong, and how.
        detail: String,
    },
    /// The index or bitmap segments are malformed (out-of-order, overlapping
    /// or out-of-file records, counts that disagree with the footer).
    #[error("index/bitmap: {0}")]
    BadIndex(String),
    /// One data record is malformed or does not decode to a whole block.
    #[error("block {block} (record at offset {offset}): {detail}")]
    BadRecord {
        /// Block number (disk offset / block size).
        block: u64,
        /// Byte offset of the record in the image.
        offset: u64,
        /// What is wrong: framing, checksum, decoded length.
        detail: String,
    },
    /// A block number at or past the disk's block count was asked for.
    #[error("block {block} is past the end of the disk ({blocks} blocks)")]
    BlockOutOfRange {
        /// The block asked for.
        block: u64,
        /// Blocks in the disk (`max_blk_num`).
        blocks: u64,
    },
    /// The `.zvidx` sidecar is malformed; the text names the field or entry.
    #[error("sidecar: {0}")]
    BadSidecar(String),
    /// The sidecar is well formed but describes another image (size, block
    /// count or footer digest differ).
    #[error("sidecar belongs to another image: {0}")]
    SidecarMismatch(String),
    /// Reading the source or writing the output failed (writer and
    /// streaming readers only).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The result of every fallible function of this crate.
pub type FormatResult<T> = Result<T, FormatError>;

/// Lower-case hex of `bytes` (hashes and uuids in messages and output).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
