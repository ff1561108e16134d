//! Errors of the image layer: each names the image and, where there is one,
//! the block and the record offset.

use std::sync::Arc;

use super::fetch::BlockFailure;
use zvhd2::FormatError;
use zvstore::StoreError;

/// Why an image could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The store failed outside any one block (opening, listing).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image's bytes are not valid ZVHD2 (the detail names block and offset).
    #[error("{location}: {error}")]
    Format {
        /// The image.
        location: String,
        /// The format crate's error.
        error: FormatError,
    },
    /// A check of the image's content failed (a scan, or a block of the
    /// wrong length handed out by a cache).
    #[error("{location}: block {block} (record at offset {offset}): {detail}")]
    Verify {
        /// The image.
        location: String,
        /// The block (0-based, in block-size units of the disk).
        block: u64,
        /// Byte offset of its record in the image file.
        offset: u64,
        /// What the check found.
        detail: String,
    },
    /// A block of a whole-image scan failed a check of [`zvhd2::verify`]
    /// (the error names block and record offset).
    #[error("{location}: {error}")]
    Check {
        /// The image.
        location: String,
        /// The failed check.
        #[source]
        error: zvhd2::VerifyError,
    },
    /// One block could not be produced: its fetch failed, or its record or
    /// decoded bytes failed a check. `source` says which (and is shared by
    /// every reader that waited for the block).
    #[error(
        "{location}: block {block} (record at offset {offset}): {}",
        failure_detail(source)
    )]
    Block {
        /// The image.
        location: String,
        /// The block (0-based).
        block: u64,
        /// Byte offset of its record in the image file.
        offset: u64,
        /// What failed.
        source: Arc<BlockFailure>,
    },
    /// The sidecar index is unusable for this image.
    #[error("{location}: sidecar {sidecar}: {detail}")]
    Sidecar {
        /// The image.
        location: String,
        /// The sidecar's location (or how it was given).
        sidecar: String,
        /// Why it does not fit (identity, geometry, length, CRC).
        detail: String,
    },
    /// A read outside the disk.
    #[error("{location}: read at {offset}+{len} is past the end of the disk ({size} bytes)")]
    OutOfRange {
        /// The image.
        location: String,
        /// Byte offset of the read in the disk.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The disk's size in bytes.
        size: u64,
    },
}

impl ImageError {
    /// The block failure behind a [`ImageError::Block`].
    pub fn block_failure(&self) -> Option<&BlockFailure> {
        match self {
            ImageError::Block { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the image's bytes were wrong (checksum, hash, framing,
    /// length), as opposed to unreachable: retrying the same bytes will not
    /// help, and the operator should suspect the stored object.
    pub fn is_corruption(&self) -> bool {
        match self {
            ImageError::Verify { .. } | ImageError::Format { .. } | ImageError::Check { .. } => {
                true
            }
            ImageError::Block { source, .. } => source.is_corruption(),
            _ => false,
        }
    }
}

/// The failure's own words, without the block and offset a record error
/// repeats (the variant's message names them already).
fn failure_detail(failure: &BlockFailure) -> String {
    match failure {
        BlockFailure::Verify(e) => e.failure.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_errors_name_image_block_offset_and_cause_once() {
        let err = ImageError::Block {
            location: "s3://b/disk.zvhd2".into(),
            block: 7,
            offset: 4096,
            source: Arc::new(BlockFailure::Verify(zvhd2::VerifyError {
                block: 7,
                offset: 4096,
                failure: zvhd2::VerifyFailure::Record("bad magic".into()),
            })),
        };
        assert_eq!(
            err.to_string(),
            "s3://b/disk.zvhd2: block 7 (record at offset 4096): bad magic"
        );
        assert!(err.is_corruption());
        assert!(std::error::Error::source(&err).is_some());
        let fetch = ImageError::Block {
            location: "x".into(),
            block: 1,
            offset: 2,
            source: Arc::new(BlockFailure::ShortRead {
                expected: 10,
                actual: 5,
            }),
        };
        assert!(!fetch.is_corruption());
        assert!(fetch.to_string().contains("5 bytes for a 10-byte range"));
    }
}
