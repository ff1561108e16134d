//! A local raw file served as is, through the same FUSE path as images (to
//! measure the FUSE layer on its own).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{DiskFile, DiskReadError};
use crate::prefetch::ReaderStream;

/// A local raw file served as is.
#[derive(Debug)]
pub struct RawFileDisk {
    file: Arc<std::fs::File>,
    size: u64,
}

impl RawFileDisk {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> std::io::Result<RawFileDisk> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(RawFileDisk {
            file: Arc::new(file),
            size,
        })
    }
}

#[async_trait]
impl DiskFile for RawFileDisk {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(
        &self,
        offset: u64,
        len: usize,
        _stream: Option<&ReaderStream>,
    ) -> Result<Bytes, DiskReadError> {
        let file = Arc::clone(&self.file);
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map(|()| Bytes::from(buf))
        })
        .await??;
        Ok(bytes)
    }
}
