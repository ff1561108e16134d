//! Loading an image's layout from a store: the head and final footers, then
//! the sidecar (one GET) or the index and bitmap (one more GET).

use std::sync::Arc;

use bytes::Bytes;

use zvhd2::{BlockIndex, FOOTER_SIZE, FormatError, ImageHeader, ImageIdentity, Sidecar};
use zvstore::{ObjectMeta, ObjectStore, StoreError};

use super::error::ImageError;

/// Where the sidecar index comes from.
#[derive(Clone, Debug, Default)]
pub enum SidecarSource {
    /// `KEY.zvidx` beside the image if it exists; the image's own index otherwise.
    #[default]
    Auto,
    /// Never use a sidecar.
    Ignore,
    /// This object (must exist and match the image).
    Object(Arc<dyn ObjectStore>, String),
}

/// Everything known about an image once it is open: no block data yet.
#[derive(Clone, Debug)]
pub struct ImageLayout {
    /// The image's key in its store.
    pub key: String,
    /// Printable location of the image (for messages).
    pub location: String,
    /// Size and identity at open; every later read is pinned to it.
    pub meta: ObjectMeta,
    /// The parsed footers: geometry (block size, disk sizes), compression.
    pub header: ImageHeader,
    /// What a sidecar or cache entry must match to belong to this image.
    pub identity: ImageIdentity,
    /// Where each block's record is (or that it is a zero block).
    pub index: BlockIndex,
    /// The sidecar, when one was found and matched.
    pub sidecar: Option<Sidecar>,
    /// Store requests the open took.
    pub requests: u64,
}

impl ImageLayout {
    /// Reads the footers, then the sidecar or the image's own index and
    /// bitmap, of `key`: two round trips with a sidecar, three without.
    pub async fn load(
        store: &dyn ObjectStore,
        key: &str,
        sidecar: &SidecarSource,
    ) -> Result<ImageLayout, ImageError> {
        let location = store.location(key);
        let format_err = |error| ImageError::Format {
            location: location.clone(),
            error,
        };

        // One suffix read gives the size, the identity and the final footer.
        let (tail, meta) = store.get_suffix(key, FOOTER_SIZE).await?;
        let mut requests = 1;
        if meta.size < FOOTER_SIZE {
            return Err(format_err(FormatError::NotZvhd2(format!(
                "file is {} bytes, shorter than one {FOOTER_SIZE}-byte footer",
                meta.size
            ))));
        }
        let identity = ImageIdentity::from_tail(meta.size, &tail);

        // The head footer and the sidecar don't depend on each other.
        let head_fut = async {
            if meta.size == FOOTER_SIZE {
                Ok(tail.clone())
            } else {
                store.get_range(key, 0..FOOTER_SIZE, Some(&meta)).await
            }
        };
        let sidecar_fut = fetch_sidecar(store, key, sidecar);
        let (head, found) = tokio::join!(head_fut, sidecar_fut);
        let head = head?;
        if meta.size != FOOTER_SIZE {
            requests += 1;
        }
        let (sidecar_bytes, sidecar_name, sidecar_requests) = found?;
        requests += sidecar_requests;

        let header = ImageHeader::parse(&head, &tail, meta.size).map_err(format_err)?;

        let sidecar = match sidecar_bytes
            .map(|bytes| accept_sidecar(&location, &sidecar_name, &bytes, &identity, &header))
            .transpose()
        {
            Ok(found) => found,
            // A sidecar found beside the image may be left over from the
            // image it replaced: it must not make the image unmountable.
            // One named explicitly stays a hard error.
            Err(e) if matches!(sidecar, SidecarSource::Auto) => {
                tracing::warn!(
                    "{e}; it was found beside the image (not named with --sidecar), so it is \
                     ignored and the image's own index is used (re-create it with `zvimg index`)"
                );
                None
            }
            Err(e) => return Err(e),
        };

        let index = match &sidecar {
            Some(sc) => sc.block_index(),
            None => {
                let metadata = match header.metadata_range() {
                    Some(range) if range.start < range.end => {
                        requests += 1;
                        store.get_range(key, range, Some(&meta)).await?
                    }
                    _ => bytes::Bytes::new(),
                };
                BlockIndex::from_metadata(&header, &metadata).map_err(format_err)?
            }
        };

        Ok(ImageLayout {
            key: key.to_string(),
            location,
            meta,
            header,
            identity,
            index,
            sidecar,
            requests,
        })
    }

    /// The sidecar `source` names for this (already loaded) image, decoded
    /// and checked against it; `None` when there is none to use. For a
    /// caller that wants the image's own index and the sidecar both, as
    /// `zvimg check` does, without opening the image twice.
    pub async fn load_sidecar(
        &self,
        store: &dyn ObjectStore,
        source: &SidecarSource,
    ) -> Result<Option<Sidecar>, ImageError> {
        let (bytes, name, _) = fetch_sidecar(store, &self.key, source).await?;
        bytes
            .map(|b| accept_sidecar(&self.location, &name, &b, &self.identity, &self.header))
            .transpose()
    }

    /// A stable name for the image's content, for cache keys.
    pub fn cache_id(&self) -> String {
        format!(
            "{:016x}-{}",
            self.identity.image_size,
            crate::util::hex(&self.identity.footer_hash[..16])
        )
    }
}

/// Decodes a sidecar and accepts it only if it describes this image:
/// identity first (the usual mismatch: a sidecar of another image or
/// version), then every geometry field against the image's own footer,
/// compression and curr_size included.
fn accept_sidecar(
    location: &str,
    name: &str,
    bytes: &[u8],
    identity: &ImageIdentity,
    header: &ImageHeader,
) -> Result<Sidecar, ImageError> {
    let bad = |e: FormatError| ImageError::Sidecar {
        location: location.to_string(),
        sidecar: name.to_string(),
        detail: e.to_string(),
    };
    let decoded = Sidecar::decode(bytes).map_err(bad)?;
    decoded
        .check_identity(identity)
        .and_then(|()| decoded.check_header(header))
        .map_err(bad)?;
    Ok(decoded)
}

/// What readers append to an image's name to find its sidecar.
pub const SIDECAR_SUFFIX: &str = ".zvidx";

/// The sidecar key that readers look for beside `image_key` in `store`.
pub fn sidecar_key(store: &dyn ObjectStore, image_key: &str) -> String {
    store.sibling_key(image_key, SIDECAR_SUFFIX)
}

/// Largest sidecar we accept: 48 bytes a block covers a 16 TiB image at 2 MiB blocks.
const MAX_SIDECAR_BYTES: u64 = 512 << 20;

/// Fetches the sidecar bytes per `source`: (bytes if any, its name, requests made).
async fn fetch_sidecar(
    store: &dyn ObjectStore,
    image_key: &str,
    source: &SidecarSource,
) -> Result<(Option<Bytes>, String, u64), ImageError> {
    match source {
        SidecarSource::Ignore => Ok((None, String::new(), 0)),
        SidecarSource::Auto => {
            let key = sidecar_key(store, image_key);
            let name = store.location(&key);
            match read_whole(store, &key).await {
                Ok(bytes) => Ok((Some(bytes), name, 1)),
                Err(e) if e.is_not_found() => Ok((None, name, 1)),
                // A presigned URL signs only the image: no sidecar for us, not an error.
                Err(StoreError::Forbidden { .. }) => {
                    tracing::warn!(
                        "{name}: sidecar not readable (access denied); using the image's own index"
                    );
                    Ok((None, name, 1))
                }
                Err(e) => Err(e.into()),
            }
        }
        SidecarSource::Object(sc_store, key) => {
            let name = sc_store.location(key);
            let bytes = read_whole(sc_store.as_ref(), key).await?;
            Ok((Some(bytes), name, 1))
        }
    }
}

/// A whole (small) object in one request: a suffix read longer than any sidecar.
async fn read_whole(store: &dyn ObjectStore, key: &str) -> Result<Bytes, StoreError> {
    let (bytes, meta) = store.get_suffix(key, MAX_SIDECAR_BYTES).await?;
    if meta.size > MAX_SIDECAR_BYTES {
        return Err(StoreError::Other {
            location: store.location(key),
            op: "read sidecar".into(),
            detail: format!("{} bytes is too large for a sidecar", meta.size),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testing::image_in_dir;
    use zvhd2::Compression;
    use zvstore::file::FileStore;

    /// A sidecar whose identity matches but whose geometry disagrees with
    /// the image's footer is never trusted: named explicitly it is refused;
    /// found beside the image it is ignored for the image's own index.
    #[tokio::test]
    async fn sidecar_with_other_geometry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, summary) = image_in_dir(dir.path(), 3);

        std::fs::write(dir.path().join("img.zvhd2.zvidx"), summary.sidecar.encode()).unwrap();
        let layout = ImageLayout::load(&store, "img.zvhd2", &SidecarSource::Auto)
            .await
            .unwrap();
        assert!(layout.sidecar.is_some());

        for change in [
            |s: &mut Sidecar| s.compression = Compression::Zlib,
            |s: &mut Sidecar| s.curr_size += 1 << 30,
        ] {
            let mut other = summary.sidecar.clone();
            change(&mut other);
            std::fs::write(dir.path().join("img.zvhd2.zvidx"), other.encode()).unwrap();
            let named = SidecarSource::Object(
                Arc::new(FileStore::new(dir.path())),
                "img.zvhd2.zvidx".into(),
            );
            let err = ImageLayout::load(&store, "img.zvhd2", &named)
                .await
                .unwrap_err();
            assert!(matches!(err, ImageError::Sidecar { .. }), "{err}");
            let beside = ImageLayout::load(&store, "img.zvhd2", &SidecarSource::Auto)
                .await
                .unwrap();
            assert!(beside.sidecar.is_none());
            assert_eq!(beside.index.block_count(), layout.index.block_count());
        }
    }
}
