//! Test images: raw disks with a chosen mix of zero, random and
//! compressible blocks; ZVHD2 images written from them; an in-memory ZVHD2
//! reader built only from the format crate's parts (so a test can compare
//! the daemon against it); and a helper that puts raw + image + sidecar
//! files in a temporary directory.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use zvhd2::{
    BlockIndex, BlockLocation, FOOTER_SIZE, FormatError, FormatResult, ImageHeader, Sidecar,
    WriteOptions, WriteSummary, decode_record, write_image,
};

/// What one block of a [`raw_from_kinds`] disk holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// All zeros (no record in the image).
    Zero,
    /// Incompressible random bytes.
    Random,
    /// Text-like bytes that compress well.
    Compressible,
    /// Zeros except one non-zero byte near the end (defeats naive
    /// "first bytes are zero" checks).
    Sparse,
}

/// Fills `buf` with the content of one block of `kind`.
pub fn fill_block(buf: &mut [u8], kind: BlockKind, rng: &mut StdRng) {
    match kind {
        BlockKind::Zero => buf.fill(0),
        BlockKind::Random => rng.fill_bytes(buf),
        BlockKind::Compressible => {
            let words: [&[u8]; 6] = [
                b"zvmount ",
                b"block ",
                b"ZVHD2 ",
                b"huawei ",
                b"\n",
                b"0123456789 ",
            ];
            let mut at = 0;
            while at < buf.len() {
                let w = words[rng.gen_range(0..words.len())];
                let n = w.len().min(buf.len() - at);
                buf[at..at + n].copy_from_slice(&w[..n]);
                at += n;
            }
        }
        BlockKind::Sparse => {
            buf.fill(0);
            let n = buf.len();
            buf[n - 1 - rng.gen_range(0..64.min(n))] = rng.gen_range(1..=255);
        }
    }
}

/// A raw disk of one block per `kinds` entry, each `block_size` bytes.
pub fn raw_from_kinds(kinds: &[BlockKind], block_size: u32, seed: u64) -> Vec<u8> {
    let bs = block_size as usize;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut raw = vec![0u8; kinds.len() * bs];
    for (chunk, &kind) in raw.chunks_mut(bs).zip(kinds) {
        fill_block(chunk, kind, &mut rng);
    }
    raw
}

/// `blocks` blocks cycling through zero, random, compressible, zero,
/// sparse, compressible (deterministic in `seed`).
pub fn raw_mixed(blocks: usize, block_size: u32, seed: u64) -> Vec<u8> {
    use BlockKind::*;
    let cycle = [Zero, Random, Compressible, Zero, Sparse, Compressible];
    let kinds: Vec<BlockKind> = (0..blocks).map(|i| cycle[i % cycle.len()]).collect();
    raw_from_kinds(&kinds, block_size, seed)
}

/// `len` random bytes.
pub fn raw_random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// A mixed disk of `blocks` 2 MiB blocks in a fixed cycle of incompressible
/// (2 MiB records), highly compressible (small records) and zero blocks, so
/// that fixed-size slices of its image hold varying numbers of records and
/// records straddle slice boundaries (the fleet tests and `bench fleet`):
/// the raw disk, the image, and its sidecar.
pub fn mixed_cycle_disk(blocks: usize, seed: u64) -> (Vec<u8>, Vec<u8>, Sidecar) {
    use BlockKind::*;
    let cycle = [
        Random,
        Compressible,
        Compressible,
        Random,
        Zero,
        Compressible,
        Random,
    ];
    let kinds: Vec<BlockKind> = (0..blocks).map(|i| cycle[i % cycle.len()]).collect();
    let raw = raw_from_kinds(&kinds, zvhd2::DEFAULT_BLOCK_SIZE, seed);
    let (image, summary) = zvhd2_image(&raw, zvhd2::DEFAULT_BLOCK_SIZE);
    (raw, image, summary.sidecar)
}

/// Writes `raw` as a ZVHD2 image in memory with `block_size` (2 threads).
pub fn zvhd2_image(raw: &[u8], block_size: u32) -> (Vec<u8>, WriteSummary) {
    let options = WriteOptions {
        block_size,
        threads: 2,
        ..WriteOptions::default()
    };
    let mut out = Vec::new();
    let summary =
        write_image(raw, raw.len() as u64, &mut out, &options, &mut |_| {}).expect("write_image");
    assert_eq!(summary.image_size, out.len() as u64);
    (out, summary)
}

/// Converts the raw disk file `raw` to the ZVHD2 file `out` and its
/// sidecar `OUT.zvidx`, with the library function `zvimg convert` uses
/// (default options); returns what the writer reports.
pub fn convert_file(raw: &Path, out: &Path) -> WriteSummary {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let size = std::fs::metadata(raw)
        .unwrap_or_else(|e| panic!("stat {}: {e}", raw.display()))
        .len();
    let input = BufReader::with_capacity(1 << 20, open(raw));
    let file = File::create(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let mut writer = BufWriter::new(file);
    let summary = write_image(
        input,
        size,
        &mut writer,
        &WriteOptions::default(),
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("convert {}: {e}", raw.display()));
    writer
        .into_inner()
        .unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
    let mut sidecar = out.as_os_str().to_owned();
    sidecar.push(".zvidx");
    std::fs::write(PathBuf::from(&sidecar), summary.sidecar.encode())
        .unwrap_or_else(|e| panic!("write {}: {e}", Path::new(&sidecar).display()));
    summary
}

/// An image opened from memory, the way the real reader does it in three steps.
pub struct MemImage<'a> {
    /// The whole image file.
    pub bytes: &'a [u8],
    /// Its parsed footers.
    pub header: ImageHeader,
    /// Its block index.
    pub index: BlockIndex,
}

impl<'a> MemImage<'a> {
    /// Parses the footers and the index of an in-memory image.
    pub fn open(bytes: &'a [u8]) -> FormatResult<MemImage<'a>> {
        let size = bytes.len() as u64;
        let edge = bytes.len().min(FOOTER_SIZE as usize);
        let header = ImageHeader::parse(&bytes[..edge], &bytes[bytes.len() - edge..], size)?;
        let metadata = match header.metadata_range() {
            Some(r) => bytes.get(r.start as usize..r.end as usize).ok_or_else(|| {
                FormatError::BadIndex(format!(
                    "metadata {r:?} past the end of a {size}-byte image"
                ))
            })?,
            None => &[],
        };
        let index = BlockIndex::from_metadata(&header, metadata)?;
        Ok(MemImage {
            bytes,
            header,
            index,
        })
    }

    /// The stored record bytes of `block` (`None` for a zero block).
    pub fn record(&self, block: u64) -> FormatResult<Option<&'a [u8]>> {
        match self.index.locate(block)? {
            BlockLocation::Zero => Ok(None),
            BlockLocation::Record(loc) => {
                let end = loc.offset + u64::from(loc.size);
                let r = self
                    .bytes
                    .get(loc.offset as usize..end as usize)
                    .ok_or_else(|| FormatError::BadRecord {
                        block,
                        offset: loc.offset,
                        detail: "record past the end of the image".into(),
                    })?;
                Ok(Some(r))
            }
        }
    }

    /// Decoded bytes of `block`; with `sidecar`, verified by CRC32C and BLAKE3.
    pub fn block(&self, block: u64, sidecar: Option<&Sidecar>) -> FormatResult<Vec<u8>> {
        let bs = self.header.block_size();
        let data = match self.record(block)? {
            None => vec![0u8; bs as usize],
            Some(r) => {
                if let Some(s) = sidecar {
                    s.verify_record(block, r)?;
                }
                let offset = r.as_ptr() as usize - self.bytes.as_ptr() as usize;
                decode_record(r, block, offset as u64, bs, self.header.compression())?
            }
        };
        if let Some(s) = sidecar {
            s.verify_block(block, &data)?;
        }
        Ok(data)
    }

    /// The whole disk (`orig_size` bytes).
    pub fn read_disk(&self, sidecar: Option<&Sidecar>) -> FormatResult<Vec<u8>> {
        let mut disk = Vec::with_capacity(self.header.disk_size() as usize);
        for b in 0..self.index.block_count() {
            disk.extend_from_slice(&self.block(b, sidecar)?);
        }
        disk.truncate(self.header.disk_size() as usize);
        Ok(disk)
    }
}

/// Decodes a whole in-memory image to its `orig_size`-byte disk.
pub fn decode_all(image: &[u8], sidecar: Option<&Sidecar>) -> FormatResult<Vec<u8>> {
    MemImage::open(image)?.read_disk(sidecar)
}

/// Raw disk, ZVHD2 image and `.zvidx` sidecar written into a temporary directory.
pub struct ImageFiles {
    /// Removed on drop.
    pub dir: tempfile::TempDir,
    /// `disk.raw`: the raw disk.
    pub raw: PathBuf,
    /// `disk.zvhd2`: the image of it.
    pub image: PathBuf,
    /// `disk.zvhd2.zvidx`: the image's sidecar.
    pub sidecar: PathBuf,
    /// The raw disk's bytes.
    pub raw_bytes: Vec<u8>,
    /// What the writer reported (sizes, block counts, the sidecar).
    pub summary: WriteSummary,
}

/// Writes `raw` to `disk.raw`, its ZVHD2 image to `disk.zvhd2` and the
/// sidecar to `disk.zvhd2.zvidx` in a new temporary directory.
pub fn write_files(raw: Vec<u8>, block_size: u32) -> ImageFiles {
    let dir = tempfile::tempdir().expect("tempdir");
    let (image, summary) = zvhd2_image(&raw, block_size);
    let paths = (
        dir.path().join("disk.raw"),
        dir.path().join("disk.zvhd2"),
        dir.path().join("disk.zvhd2.zvidx"),
    );
    std::fs::write(&paths.0, &raw).expect("write raw");
    std::fs::write(&paths.1, &image).expect("write image");
    std::fs::write(&paths.2, summary.sidecar.encode()).expect("write sidecar");
    ImageFiles {
        dir,
        raw: paths.0,
        image: paths.1,
        sidecar: paths.2,
        raw_bytes: raw,
        summary,
    }
}
