//! Golden layout: a small image checked byte by byte against the layout
//! reference (`/work/shared/zvhd2-layout.md`, summarised in docs/format.md).

use zvtest::images;

use zvhd2::footer::footer_checksum;
use zvhd2::{Footer, ImageHeader};

const MIB: usize = 1 << 20;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Checks one record at `at` for `block` and returns its padded size.
fn check_record(image: &[u8], at: usize, block: u32) -> usize {
    let r = &image[at..];
    assert_eq!(&r[..12], b"hwstream bg\0", "record magic at {at}");
    let len = u32_at(r, 12) as usize;
    assert_eq!(u32_at(r, 16), block, "block number at {at}");
    assert!(
        r[20..48].iter().all(|&b| b == 0),
        "flag, orig size and reserved are written 0"
    );
    let size = (48 + len + 4).div_ceil(4096) * 4096;
    assert_eq!(
        &r[48..52],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "payload is a zstd frame"
    );
    // Frame header descriptor: content size present, no checksum, no dictionary.
    let fhd = r[52];
    assert_eq!(fhd & 0x04, 0, "no content checksum");
    assert_eq!(fhd & 0x03, 0, "no dictionary id");
    assert_ne!(
        fhd >> 6,
        0,
        "content size in the frame header (4 or 8 bytes for 2 MiB)"
    );
    assert!(
        r[48 + len..size - 4].iter().all(|&b| b == 0),
        "padding written as zeros"
    );
    assert_eq!(&r[size - 4..size], b"end\0");
    size
}

#[test]
fn three_block_image_layout() {
    // data, zero, data (1 MiB + 100 bytes of input in the last block)
    let mut raw = images::raw_random(2 * MIB, 11);
    raw.extend(vec![0u8; 2 * MIB]);
    raw.extend(images::raw_random(MIB + 100, 12));
    let (image, summary) = images::zvhd2_image(&raw, 2 * MIB as u32);
    let orig_size = 5 * MIB as u64 + 512;

    // Head footer at 0.
    let head = Footer::parse(&image[..4096], 0).expect("head footer checksum valid");
    assert_eq!(&head.cookie, b"z2strm\0\0");
    assert_eq!(
        (head.index_lba, head.bitmap_lba, head.non_zero_blk_num),
        (0, 0, 0)
    );
    assert_eq!(head.orig_size, orig_size);
    assert!(image[512..4096].iter().all(|&b| b == 0));

    // Records from 4096, in block order.
    let size0 = check_record(&image, 4096, 0);
    let at2 = 4096 + size0;
    let size2 = check_record(&image, at2, 2);
    assert!(size0 > 2 * MIB, "random block stays about its size");

    // Mid footer right after the last record: head + non_zero_blk_num, stale checksum.
    let mid_at = at2 + size2;
    let mid_bytes = &image[mid_at..mid_at + 4096];
    let mid = Footer::parse_unchecked(mid_bytes, mid_at as u64).unwrap();
    assert_eq!(mid.non_zero_blk_num, 2);
    assert_eq!(mid.checksum, head.checksum, "checksum not recomputed");
    assert_ne!(
        mid.checksum,
        footer_checksum(mid_bytes),
        "mid footer fails validation"
    );
    assert!(Footer::parse(mid_bytes, mid_at as u64).is_err());
    let mut mid_as_head = mid.clone();
    mid_as_head.non_zero_blk_num = 0;
    assert_eq!(mid_as_head, head);

    // Index: one whole 512 KiB segment.
    let index_lba = mid_at + 4096;
    let index = &image[index_lba..index_lba + 512 * 1024];
    assert_eq!(
        (u64_at(index, 0), u32_at(index, 8), u32_at(index, 12)),
        (4096, 0, size0 as u32)
    );
    assert_eq!(
        (u64_at(index, 16), u32_at(index, 24), u32_at(index, 28)),
        (at2 as u64, 2, size2 as u32)
    );
    assert!(index[32..].iter().all(|&b| b == 0));

    // Bitmap: one 4 KiB segment, blocks 0 and 2 set.
    let bitmap_lba = index_lba + 512 * 1024;
    let bitmap = &image[bitmap_lba..bitmap_lba + 4096];
    assert_eq!(bitmap[0], 0b101);
    assert!(bitmap[1..].iter().all(|&b| b == 0));

    // Final footer: the last 4096 bytes, right after the bitmap.
    let final_at = bitmap_lba + 4096;
    assert_eq!(image.len(), final_at + 4096);
    let f =
        Footer::parse(&image[final_at..], final_at as u64).expect("final footer checksum valid");
    assert!(image[final_at + 512..].iter().all(|&b| b == 0));
    assert_eq!(&f.cookie, b"z2strm\0\0");
    assert_eq!(f.features, 2);
    assert_eq!(f.ff_version, 0x0001_0000);
    assert_eq!(f.data_offset, u64::MAX);
    assert_eq!(f.timestamp, head.timestamp);
    assert_eq!(&f.creator_app, b"tap\0");
    assert_eq!(f.creator_version, 0x0001_0004);
    assert_eq!(f.creator_os, 0);
    assert_eq!(f.orig_size, orig_size);
    assert_eq!(f.curr_size, 1 << 30);
    assert_eq!(f.geometry, (2080 << 16) | (16 << 8) | 63, "CHS of 1 GiB");
    assert_eq!(f.disk_type, 4);
    assert_eq!(f.uuid, head.uuid);
    assert_eq!(f.uuid[6] >> 4, 4, "version-4 uuid");
    assert_eq!(
        (f.saved, f.hidden, f.align_64, f.zvhd2_version),
        (0, 0, 0, 1)
    );
    assert_eq!(f.block_size, 2 << 20);
    assert_eq!(f.max_blk_num, 3);
    assert_eq!(f.index_lba, index_lba as u64);
    assert_eq!(f.bitmap_lba, bitmap_lba as u64);
    assert_eq!((f.index_size, f.bitmap_size), (512 * 1024, 4096));
    assert_eq!((f.index_seg_size, f.bitmap_seg_size), (524_288, 4096));
    assert_eq!((f.index_seg_num, f.bitmap_seg_num), (1, 1));
    assert_eq!(f.non_zero_blk_num, 2);
    assert_eq!((f.index_contains_zero_blk, f.compress_method), (0, 1));
    assert!(
        image[final_at + 142..final_at + 512]
            .iter()
            .all(|&b| b == 0),
        "reserved"
    );
    // The head footer carries the same identity fields.
    assert_eq!(
        (head.block_size, head.max_blk_num, head.curr_size),
        (f.block_size, f.max_blk_num, f.curr_size)
    );

    let header =
        ImageHeader::parse(&image[..4096], &image[final_at..], image.len() as u64).unwrap();
    assert_eq!(
        header.metadata_range(),
        Some(index_lba as u64..final_at as u64)
    );
    assert_eq!(summary.image_size, image.len() as u64);
    assert_eq!((summary.blocks, summary.non_zero_blocks), (3, 2));
    let e = &summary.sidecar.entries;
    assert_eq!((e[0].record_offset, e[0].record_size), (4096, size0 as u32));
    assert!(e[1].is_zero());
    assert_eq!(e[2].record_crc32c, crc32c::crc32c(&image[at2..at2 + size2]));
}
