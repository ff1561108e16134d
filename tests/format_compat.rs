//! Images as Huawei's tools write them, quirks included: arbitrary bytes in
//! footer and record padding, a stale mid footer, garbage past the used
//! index entries, `index_contains_zero_blk` = 1, zlib records. Built here by
//! hand (not by our writer) so each quirk is present on purpose.

use zvtest::images;

use images::{BlockKind, decode_all, raw_from_kinds};
use zvhd2::footer::BLOCKS_PER_SEGMENT;
use zvhd2::index::encode_metadata;
use zvhd2::record::{compress_zlib_sync, zstd_compressor};
use zvhd2::{Compression, Footer, RecordLocation, encode_record};

const MIB: u32 = 1 << 20;

#[derive(Clone, Copy)]
struct Quirks {
    compression: Compression,
    /// Entry b describes block b (index_contains_zero_blk = 1).
    zero_entries: bool,
    /// Fill footer padding, record padding and header fields, and the
    /// index tail with junk.
    garbage: bool,
}

fn junk(buf: &mut [u8], seed: u8) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed) | 1;
    }
}

/// Builds a ZVHD2 image of `raw` (a whole number of `bs` blocks) by hand.
fn build(raw: &[u8], bs: u32, q: Quirks) -> Vec<u8> {
    let mut head = Footer::new_head(raw.len() as u64, bs, q.compression);
    let head_bytes = head.encode();
    let mut out = head_bytes.clone();
    if q.garbage {
        junk(&mut out[512..], 1);
    }
    let mut locs = Vec::new();
    let mut compressor = zstd_compressor(3).unwrap();
    for (block, data) in raw.chunks(bs as usize).enumerate() {
        if data.iter().all(|&b| b == 0) {
            locs.push(None);
            continue;
        }
        let payload = match q.compression {
            Compression::Zstd => compressor.compress(data).unwrap(),
            Compression::Zlib => compress_zlib_sync(data, 1).unwrap(),
        };
        let mut record = encode_record(block as u32, &payload);
        if q.garbage {
            record[20] = 1; // compressed flag
            record[24..28].copy_from_slice(&bs.to_le_bytes()); // orig size
            let n = record.len();
            junk(&mut record[48 + payload.len()..n - 4], 2);
        }
        locs.push(Some(RecordLocation {
            offset: out.len() as u64,
            size: record.len() as u32,
        }));
        out.extend_from_slice(&record);
    }
    let non_zero = locs.iter().filter(|l| l.is_some()).count() as u32;
    head.checksum = u32::from_le_bytes(head_bytes[64..68].try_into().unwrap());
    head.non_zero_blk_num = non_zero;
    let mut mid = head.encode_stored();
    if q.garbage {
        junk(&mut mid[512..], 3);
    }
    out.extend_from_slice(&mid);

    let (mut index, bitmap) = encode_metadata(&locs);
    if q.zero_entries {
        index.clear();
        for (b, l) in locs.iter().enumerate() {
            let l = l.unwrap_or(RecordLocation { offset: 0, size: 0 });
            index.extend_from_slice(&l.offset.to_le_bytes());
            index.extend_from_slice(&(b as u32).to_le_bytes());
            index.extend_from_slice(&l.size.to_le_bytes());
        }
        let segs = (locs.len() as u64).div_ceil(BLOCKS_PER_SEGMENT) as usize;
        index.resize(segs * 512 * 1024, 0);
    }
    let used = if q.zero_entries {
        locs.len()
    } else {
        non_zero as usize
    } * 16;
    if q.garbage {
        junk(&mut index[used..], 4);
    }
    let mut fin = head.clone();
    fin.index_contains_zero_blk = u8::from(q.zero_entries);
    fin.index_lba = out.len() as u64;
    fin.index_size = index.len() as u32;
    fin.index_seg_num = (index.len() / (512 * 1024)) as u32;
    fin.bitmap_lba = fin.index_lba + index.len() as u64;
    out.extend_from_slice(&index);
    out.extend_from_slice(&bitmap);
    let mut fin_bytes = fin.encode();
    if q.garbage {
        junk(&mut fin_bytes[512..], 5);
    }
    out.extend_from_slice(&fin_bytes);
    out
}

fn raw() -> Vec<u8> {
    use BlockKind::*;
    raw_from_kinds(
        &[Compressible, Zero, Random, Sparse, Zero, Zero, Compressible],
        MIB,
        31,
    )
}

fn check(q: Quirks) {
    let raw = raw();
    let image = build(&raw, MIB, q);
    assert_eq!(decode_all(&image, None).unwrap(), raw);
}

#[test]
fn plain_hand_built_image_reads() {
    check(Quirks {
        compression: Compression::Zstd,
        zero_entries: false,
        garbage: false,
    });
}

#[test]
fn garbage_in_padding_and_stale_mid_footer_are_ignored() {
    check(Quirks {
        compression: Compression::Zstd,
        zero_entries: false,
        garbage: true,
    });
}

#[test]
fn index_with_zero_block_entries() {
    check(Quirks {
        compression: Compression::Zstd,
        zero_entries: true,
        garbage: false,
    });
    check(Quirks {
        compression: Compression::Zstd,
        zero_entries: true,
        garbage: true,
    });
}

#[test]
fn zlib_records() {
    check(Quirks {
        compression: Compression::Zlib,
        zero_entries: false,
        garbage: false,
    });
    check(Quirks {
        compression: Compression::Zlib,
        zero_entries: true,
        garbage: true,
    });
}

#[test]
fn mid_footer_content_is_irrelevant() {
    let raw = raw();
    let mut image = build(
        &raw,
        MIB,
        Quirks {
            compression: Compression::Zstd,
            zero_entries: false,
            garbage: false,
        },
    );
    let h = images::MemImage::open(&image).unwrap().header;
    let mid = h.footer.index_lba as usize - 4096;
    junk(&mut image[mid..mid + 4096], 9);
    assert_eq!(decode_all(&image, None).unwrap(), raw);
}

#[test]
fn older_creator_version_reads() {
    let raw = raw();
    let image = build(
        &raw,
        MIB,
        Quirks {
            compression: Compression::Zstd,
            zero_entries: false,
            garbage: false,
        },
    );
    let fin = image.len() - 4096;
    let mut f = Footer::parse(&image[fin..], fin as u64).unwrap();
    f.creator_version = 0x0001_0003;
    let mut image = image.clone();
    image[fin..].copy_from_slice(&f.encode());
    assert_eq!(decode_all(&image, None).unwrap(), raw);
}
