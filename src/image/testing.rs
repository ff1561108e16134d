//! Unit-test setup shared by the image modules: a small image written to a
//! directory and a file store over it, as `ImageLayout::load` reads it.

use std::path::Path;

use zvhd2::{WriteOptions, WriteSummary, write_image};
use zvstore::file::FileStore;

/// The image's key in the store.
pub(crate) const KEY: &str = "img.zvhd2";

/// Writes a `mib` MiB disk of compressible, non-zero bytes as `img.zvhd2`
/// (no sidecar) in `dir`; the store over `dir` and the writer's summary,
/// whose `sidecar` a test may write beside it.
pub(crate) fn image_in_dir(dir: &Path, mib: u32) -> (FileStore, WriteSummary) {
    let raw: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
    let mut image = Vec::new();
    let summary = write_image(
        &raw[..],
        raw.len() as u64,
        &mut image,
        &WriteOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    std::fs::write(dir.join(KEY), &image).unwrap();
    (FileStore::new(dir), summary)
}
