//! raw → ZVHD2 → raw round trips through the writer and the pure readers,
//! with and without sidecar verification.

use zvtest::images;

use images::{BlockKind, MemImage, decode_all, raw_from_kinds, raw_mixed, raw_random, zvhd2_image};
use zvhd2::{ImageIdentity, Sidecar, WriteOptions, write_image};

const MIB: u32 = 1 << 20;

/// Writes `raw`, reads it back both ways, and checks the sidecar.
fn round_trip(raw: &[u8], block_size: u32) -> Vec<u8> {
    let (image, summary) = zvhd2_image(raw, block_size);
    let disk_size = raw.len().div_ceil(512) * 512;
    assert_eq!(summary.disk_size, disk_size as u64);
    let mut want = raw.to_vec();
    want.resize(disk_size, 0);

    assert_eq!(
        decode_all(&image, None).unwrap(),
        want,
        "decode without sidecar"
    );
    let sidecar = Sidecar::decode(&summary.sidecar.encode()).unwrap();
    assert_eq!(sidecar, summary.sidecar);
    let tail = &image[image.len().saturating_sub(4096)..];
    sidecar
        .check_identity(&ImageIdentity::from_tail(image.len() as u64, tail))
        .unwrap();
    let mem = MemImage::open(&image).unwrap();
    sidecar.check_header(&mem.header).unwrap();
    assert_eq!(
        mem.read_disk(Some(&sidecar)).unwrap(),
        want,
        "decode with sidecar"
    );
    // The sidecar's block table equals the one built from the image.
    let from_sidecar = sidecar.block_index();
    assert_eq!(from_sidecar.block_count(), mem.index.block_count());
    for b in 0..mem.index.block_count() {
        assert_eq!(from_sidecar.lookup(b), mem.index.lookup(b), "block {b}");
    }
    assert_eq!(summary.non_zero_blocks, mem.index.non_zero_count());
    image
}

#[test]
fn empty_input() {
    let image = round_trip(&[], 2 * MIB);
    assert_eq!(image.len(), 4096);
    let mem = MemImage::open(&image).unwrap();
    assert_eq!(mem.header.disk_size(), 0);
    assert_eq!(mem.index.block_count(), 0);
}

#[test]
fn all_zero() {
    let image = round_trip(&vec![0u8; 6 * MIB as usize], 2 * MIB);
    let mem = MemImage::open(&image).unwrap();
    assert_eq!(mem.index.non_zero_count(), 0);
    let f = &mem.header.footer;
    assert_eq!(f.index_size, 0);
    assert_eq!(f.index_lba, f.bitmap_lba);
    // head footer, mid footer, one bitmap segment, final footer
    assert_eq!(image.len(), 4 * 4096);
}

#[test]
fn all_random() {
    round_trip(&raw_random(3 * 2 * MIB as usize, 1), 2 * MIB);
}

#[test]
fn mixed_blocks() {
    round_trip(&raw_mixed(13, 2 * MIB, 2), 2 * MIB);
}

#[test]
fn size_not_a_multiple_of_the_block_size() {
    let mut raw = raw_mixed(3, 2 * MIB, 3);
    raw.truncate(5 * MIB as usize + 777);
    let image = round_trip(&raw, 2 * MIB);
    let mem = MemImage::open(&image).unwrap();
    assert_eq!(mem.header.disk_size(), 5 * u64::from(MIB) + 1024);
    assert_eq!(mem.header.curr_size(), 1 << 30);
    // A tiny source: one short block.
    round_trip(&raw_random(777, 4), 2 * MIB);
    // Last byte non-zero (block ends exactly at input end).
    let mut raw = vec![0u8; 3 * MIB as usize - 512];
    *raw.last_mut().unwrap() = 1;
    round_trip(&raw, 2 * MIB);
}

#[test]
fn other_block_sizes() {
    round_trip(&raw_mixed(7, MIB, 5), MIB);
    round_trip(&raw_mixed(5, 4 * MIB, 6), 4 * MIB);
}

#[test]
fn every_block_kind_alone_and_sparse() {
    use BlockKind::*;
    for kind in [Zero, Random, Compressible, Sparse] {
        round_trip(&raw_from_kinds(&[kind], MIB, 7), MIB);
    }
}

#[test]
fn thread_counts_give_the_same_layout() {
    let raw = raw_mixed(11, MIB, 8);
    let mut images = Vec::new();
    for threads in [1, 2, 5] {
        let mut out = Vec::new();
        let options = WriteOptions {
            block_size: MIB,
            threads,
            ..WriteOptions::default()
        };
        let s = write_image(&raw[..], raw.len() as u64, &mut out, &options, &mut |_| {}).unwrap();
        // Everything but the footers (timestamp and uuid differ) is identical.
        images.push((out, s.sidecar.entries, s.sidecar.image_digest));
    }
    for (out, entries, digest) in &images[1..] {
        assert_eq!(out.len(), images[0].0.len());
        let records_end = out.len() - 4096;
        let mid = entries
            .iter()
            .filter(|e| !e.is_zero())
            .map(|e| e.record_offset + u64::from(e.record_size))
            .max()
            .unwrap() as usize;
        assert_eq!(out[4096..mid], images[0].0[4096..mid]);
        assert_eq!(
            out[mid + 4096..records_end],
            images[0].0[mid + 4096..records_end]
        );
        assert_eq!(entries, &images[0].1);
        assert_eq!(digest, &images[0].2);
    }
}

#[test]
fn progress_reaches_the_input_size() {
    let raw = raw_mixed(4, MIB, 9);
    let mut seen = Vec::new();
    let options = WriteOptions {
        block_size: MIB,
        threads: 2,
        ..WriteOptions::default()
    };
    write_image(
        &raw[..],
        raw.len() as u64,
        std::io::sink(),
        &options,
        &mut |n| seen.push(n),
    )
    .unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(seen.last(), Some(&(raw.len() as u64)));
}

#[test]
fn higher_levels_still_round_trip() {
    let raw = raw_mixed(4, MIB, 10);
    for level in [1, 19] {
        let mut out = Vec::new();
        let options = WriteOptions {
            block_size: MIB,
            threads: 2,
            level,
        };
        write_image(&raw[..], raw.len() as u64, &mut out, &options, &mut |_| {}).unwrap();
        assert_eq!(decode_all(&out, None).unwrap(), raw);
    }
}
