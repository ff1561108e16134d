//! An open image served as a file of the mount: the adapter from the FUSE
//! layer's [`DiskFile`] to [`Image`], so a FUSE read goes straight down to
//! the image (FUSE → image → cache → store → format).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::Image;
use crate::fuse::{DiskFile, DiskReadError};
use crate::prefetch::ReaderStream;

/// An open image served as a file.
#[derive(Debug)]
pub struct ImageDisk {
    image: Arc<Image>,
}

impl ImageDisk {
    /// Serves `image`.
    pub fn new(image: Arc<Image>) -> ImageDisk {
        ImageDisk { image }
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
}
