//! Errors of the image layer: each names the image and, where there is one,
//! the block and the record offset.

use crate::format::FormatError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The image's bytes are not valid ZVHD2 (the detail names block and offset).
    #[error("{location}: {error}")]
    Format { location: String, error: FormatError },
    #[error("{location}: block {block} (record at offset {offset}): {detail}")]
    Verify {
        location: String,
        block: u64,
        offset: u64,
        detail: String,
    },
    #[error("{location}: sidecar {sidecar}: {detail}")]
    Sidecar {
        location: String,
        sidecar: String,
        detail: String,
    },
    #[error("{location}: read at {offset}+{len} is past the end of the disk ({size} bytes)")]
    OutOfRange {
        location: String,
        offset: u64,
        len: u64,
        size: u64,
    },
}
