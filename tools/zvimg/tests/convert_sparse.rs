//! `zvimg convert` of large, mostly empty disks: a sparse raw file and the
//! same disk as qcow2 convert byte-exactly while reading only their data
//! (asserted on the bytes-read counter of `--json`, not on a timer), and
//! the raw file converted back stays sparse where the image has zero blocks.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use rand::{RngCore, SeedableRng};

mod common;
use common::{ok, s};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 2 * MIB;
/// Blocks per bitmap segment: block 32768 starts the second one (64 GiB in).
const SEGMENT_BLOCKS: u64 = 32768;
/// Ends 777 bytes into a block, so the last block is short.
const DISK: u64 = (SEGMENT_BLOCKS + 2) * BLOCK + 777;

/// Byte ranges holding data: the start, both sides of the segment
/// boundary, and the end (the short last block).
fn data_ranges() -> Vec<(u64, u64)> {
    let boundary = SEGMENT_BLOCKS * BLOCK;
    vec![
        (0, BLOCK + 4096),
        (boundary - MIB, boundary + MIB),
        (DISK - 500, DISK),
    ]
}

/// Blocks touched by [`data_ranges`]: 0, 1, 32767, 32768 and 32770.
fn data_blocks() -> Vec<u64> {
    vec![0, 1, SEGMENT_BLOCKS - 1, SEGMENT_BLOCKS, SEGMENT_BLOCKS + 2]
}

/// A sparse raw disk of [`DISK`] bytes with random data in [`data_ranges`]
/// and holes elsewhere.
fn sparse_disk(path: &Path) {
    let file = File::create(path).unwrap();
    file.set_len(DISK).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for (start, end) in data_ranges() {
        let mut bytes = vec![0u8; (end - start) as usize];
        rng.fill_bytes(&mut bytes);
        file.write_all_at(&bytes, start).unwrap();
    }
    file.sync_all().unwrap();
}

/// The data extents of a file, as the file system reports them.
fn extents(path: &Path) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let file = File::open(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let start = match seek(&file, SeekFrom::Data(at)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => return out,
            Err(e) => panic!("SEEK_DATA on {}: {e}", path.display()),
        };
        let end = seek(&file, SeekFrom::Hole(start)).unwrap();
        out.push((start, end));
        at = end;
    }
}

fn read_range(path: &Path, start: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, start)
        .unwrap();
    buf
}

/// Converts `input` to ZVHD2 and back to raw; asserts that only the data
/// blocks were read, that the raw output equals the source disk byte for
/// byte, and that it is allocated only in the image's non-zero blocks.
fn convert_and_check(dir: &Path, input: &Path, disk: &Path) {
    let image = dir.join(format!(
        "{}.zvhd2",
        input.file_name().unwrap().to_string_lossy()
    ));
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["convert", "--json", s(input), s(&image)])).unwrap();
    let disk_size = DISK.div_ceil(512) * 512;
    assert_eq!(report["disk_size"], disk_size);
    assert_eq!(report["blocks"], SEGMENT_BLOCKS + 3);
    assert_eq!(report["non_zero_blocks"], data_blocks().len());
    // Only the data blocks were read (the last one is short), not 64 GiB.
    let bytes_read = report["bytes_read"].as_u64().unwrap();
    let at_most =
        (data_blocks().len() as u64 - 1) * BLOCK + (disk_size - (SEGMENT_BLOCKS + 2) * BLOCK);
    assert!(
        bytes_read <= at_most,
        "read {bytes_read} bytes of a {disk_size}-byte disk holding {} blocks of data",
        data_blocks().len()
    );
    assert!(bytes_read >= data_ranges().iter().map(|(a, b)| b - a).sum::<u64>());

    let back = dir.join(format!(
        "{}.back.raw",
        input.file_name().unwrap().to_string_lossy()
    ));
    ok(&["convert", s(&image), s(&back)]);
    assert_eq!(std::fs::metadata(&back).unwrap().len(), disk_size);
    // Sparse where the image has zero blocks: allocated in data blocks only.
    let allocated = std::fs::metadata(&back).unwrap().blocks() * 512;
    assert!(
        allocated <= data_blocks().len() as u64 * BLOCK,
        "{allocated} bytes allocated for {} data blocks",
        data_blocks().len()
    );
    let is_data_block = |b: u64| data_blocks().contains(&b);
    for (start, end) in extents(&back) {
        assert!(
            (start / BLOCK..=(end - 1) / BLOCK).all(is_data_block),
            "{}: data at {start}..{end}, outside the image's data blocks",
            back.display()
        );
    }
    // Outside its extents a file reads zeros, as the source disk does outside
    // its data: comparing the data blocks compares the whole disk.
    for b in data_blocks() {
        let start = b * BLOCK;
        let len = BLOCK.min(DISK - start);
        assert!(
            read_range(&back, start, len) == read_range(disk, start, len),
            "block {b} differs"
        );
    }
    if disk_size > DISK {
        assert!(
            read_range(&back, DISK, disk_size - DISK)
                .iter()
                .all(|&x| x == 0)
        );
    }
}

#[test]
fn sparse_raw_converts_reading_only_its_data() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let raw = dir.path().join("sparse.raw");
    sparse_disk(&raw);
    // The file system keeps it sparse, or this test proves nothing.
    assert!(std::fs::metadata(&raw).unwrap().blocks() * 512 < 64 * MIB);
    convert_and_check(dir.path(), &raw, &raw);
}

#[test]
fn sparse_qcow2_converts_reading_only_its_data() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        panic!("qemu-img is not installed: run scripts/install-deps.sh");
    }
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let raw = dir.path().join("sparse.raw");
    sparse_disk(&raw);
    let qcow2 = dir.path().join("sparse.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&qcow2)])
        .status()
        .unwrap();
    assert!(st.success());
    convert_and_check(dir.path(), &qcow2, &raw);
}
