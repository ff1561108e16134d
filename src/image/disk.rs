//! An open image served as a file of the mount: the adapter from the FUSE
//! layer's [`DiskFile`] to [`Image`], so a FUSE read goes straight down to
//! the image (FUSE → image → cache → store → format).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::Image;
use crate::cache::host::CacheEntry;
use crate::fuse::{DiskFile, DiskReadError};
use crate::prefetch::ReaderStream;

/// An open image served as a file.
#[derive(Debug)]
pub struct ImageDisk {
    image: Arc<Image>,
    /// Its host-cache entry: once the whole disk is there (and checked),
    /// the entry's data file is the disk, for FUSE passthrough.
    cached: Option<Arc<CacheEntry>>,
}

impl ImageDisk {
    /// Serves `image`.
    pub fn new(image: Arc<Image>) -> ImageDisk {
        ImageDisk {
            image,
            cached: None,
        }
    }

    /// Serves `image`, whose host-cache entry is `entry`.
    pub fn with_cache_entry(image: Arc<Image>, entry: Arc<CacheEntry>) -> ImageDisk {
        ImageDisk {
            image,
            cached: Some(entry),
        }
    }

    /// The image served.
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }
}

#[async_trait]
impl DiskFile for ImageDisk {
    fn size(&self) -> u64 {
        self.image.size()
    }

    fn open_stream(&self) -> Option<Arc<ReaderStream>> {
        Some(Arc::new(self.image.new_stream()))
    }

    async fn read_at(
        &self,
        offset: u64,
        len: usize,
        stream: Option<&ReaderStream>,
    ) -> Result<Bytes, DiskReadError> {
        // The FUSE layer never asks for more than `MAX_READ` (1 MiB).
        let len = u32::try_from(len).map_err(|_| format!("read of {len} bytes is too large"))?;
        Ok(match stream {
            Some(s) => self.image.read_at_in(offset, len, s).await?,
            None => self.image.read_at(offset, len).await?,
        })
    }

    fn try_read_now(
        &self,
        offset: u64,
        len: usize,
        stream: Option<&ReaderStream>,
    ) -> Option<Bytes> {
        let len = u32::try_from(len).ok()?;
        match stream {
            Some(s) => self.image.try_read_cached_in(offset, len, s),
            None => self.image.try_read_cached(offset, len),
        }
    }

    fn backing_file(&self) -> Option<std::fs::File> {
        let entry = self.cached.as_ref()?;
        // Same length as the served file (not with --size curr, whose
        // zero tail the data file does not hold), all there and checked.
        if entry.data_len() != self.image.size() || !entry.is_local() {
            return None;
        }
        std::fs::File::open(entry.data_path()).ok()
    }
}
