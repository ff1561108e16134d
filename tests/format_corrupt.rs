//! Corrupted and foreign input: every parse either fails with an error or
//! returns exactly the original bytes — never a panic, never wrong bytes
//! (for records: never wrong bytes once the sidecar verifies them).

use zvtest::images;

use std::sync::OnceLock;

use images::{BlockKind, MemImage, decode_all, raw_from_kinds, zvhd2_image};
use proptest::prelude::*;
use zvhd2::{
    Compression, Footer, FormatError, ImageHeader, ImageIdentity, Sidecar, WriteSummary,
    decode_record, encode_record,
};

const MIB: u32 = 1 << 20;

/// A small image: zero, random, compressible, sparse, zero, compressible blocks of 1 MiB.
fn fixture() -> &'static (Vec<u8>, Vec<u8>, WriteSummary) {
    static F: OnceLock<(Vec<u8>, Vec<u8>, WriteSummary)> = OnceLock::new();
    F.get_or_init(|| {
        use BlockKind::*;
        let mut raw = raw_from_kinds(
            &[Zero, Random, Compressible, Sparse, Zero, Compressible],
            MIB,
            21,
        );
        raw.truncate(raw.len() - 3000); // short last block
        let (image, summary) = zvhd2_image(&raw, MIB);
        let want_len = raw.len().div_ceil(512) * 512;
        raw.resize(want_len, 0);
        (raw, image, summary)
    })
}

/// Where the parts of the fixture are.
struct Layout {
    records: std::ops::Range<usize>,
    mid: usize,
    meta: std::ops::Range<usize>,
    fin: usize,
}

fn layout(image: &[u8]) -> Layout {
    let h = MemImage::open(image).unwrap().header;
    let index_lba = h.footer.index_lba as usize;
    Layout {
        records: 4096..index_lba - 4096,
        mid: index_lba - 4096,
        meta: index_lba..(h.footer.bitmap_lba + u64::from(h.footer.bitmap_size)) as usize,
        fin: image.len() - 4096,
    }
}

/// Reads `image` fully, checking the identity and verifying with `sidecar`.
fn read_verified(image: &[u8], sidecar: &Sidecar) -> Result<Vec<u8>, FormatError> {
    let tail = &image[image.len().saturating_sub(4096)..];
    sidecar.check_identity(&ImageIdentity::from_tail(image.len() as u64, tail))?;
    decode_all(image, Some(sidecar))
}

/// The property: an error, or exactly the original disk.
fn assert_err_or_original(result: Result<Vec<u8>, FormatError>, raw: &[u8], what: &str) {
    if let Ok(disk) = result {
        assert!(
            disk == raw,
            "{what}: decoded without error to different bytes"
        );
    }
}

#[test]
fn flips_in_metadata_and_footers_never_give_wrong_bytes() {
    let (raw, image, _) = fixture();
    let l = layout(image);
    let mut offsets: Vec<usize> = Vec::new();
    offsets.extend((0..4096).step_by(97)); // head footer: struct and padding
    offsets.extend((l.mid..l.mid + 4096).step_by(97));
    // Every entry field of the used index entries, then the tail every 512 bytes.
    offsets.extend(l.meta.start..l.meta.start + 4 * 16 + 8);
    offsets.extend((l.meta.start..l.meta.end).step_by(509));
    offsets.extend(l.meta.end - 4096..l.meta.end - 4096 + 8); // bitmap bytes
    offsets.extend(l.fin..l.fin + 512); // every byte of the final footer struct
    offsets.extend((l.fin + 512..image.len()).step_by(97));
    for at in offsets {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = image.clone();
            bad[at] ^= mask;
            let result = decode_all(&bad, None);
            assert_err_or_original(result, raw, &format!("flip {mask:#x} at {at}"));
        }
    }
}

#[test]
fn flips_in_the_final_footer_struct_are_errors() {
    let (_, image, _) = fixture();
    let fin = image.len() - 4096;
    for at in fin..fin + 512 {
        let mut bad = image.clone();
        bad[at] ^= 0x04;
        assert!(MemImage::open(&bad).is_err(), "flip at {at}");
    }
}

#[test]
fn flips_in_records_with_sidecar_never_give_wrong_bytes() {
    let (_, image, summary) = fixture();
    let l = layout(image);
    for at in l
        .records
        .clone()
        .step_by(509)
        .chain(l.records.end - 8..l.records.end)
    {
        let mut bad = image.clone();
        bad[at] ^= 0x20;
        assert!(
            read_verified(&bad, &summary.sidecar).is_err(),
            "flip at {at} in a record went unnoticed"
        );
        // Without the sidecar, framing damage is still an error or harmless.
    }
    // Without the sidecar, damage to the framing (magic, length, block
    // number, trailer) is still an error.
    for e in summary.sidecar.entries.iter().filter(|e| !e.is_zero()) {
        let (start, end) = (
            e.record_offset as usize,
            (e.record_offset + u64::from(e.record_size)) as usize,
        );
        for at in (start..start + 20).chain(end - 4..end) {
            let mut bad = image.clone();
            bad[at] ^= 0x20;
            assert!(decode_all(&bad, None).is_err(), "framing flip at {at}");
        }
    }
}

#[test]
fn truncations_are_errors() {
    let (_, image, summary) = fixture();
    let mut cuts: Vec<usize> = (0..image.len()).step_by(4093).collect();
    cuts.extend([
        0,
        1,
        511,
        512,
        4095,
        4096,
        4097,
        8192,
        image.len() - 4097,
        image.len() - 4096,
        image.len() - 1,
    ]);
    for cut in cuts {
        let short = &image[..cut];
        if short.is_empty() {
            continue;
        }
        assert!(decode_all(short, None).is_err(), "truncated to {cut}");
        assert!(
            read_verified(short, &summary.sidecar).is_err(),
            "truncated to {cut}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_damage_with_sidecar(flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
                                  cut in prop::option::of(any::<prop::sample::Index>())) {
        let (raw, image, summary) = fixture();
        let mut bad = image.clone();
        for (at, mask) in &flips {
            let i = at.index(bad.len());
            bad[i] ^= mask;
        }
        if let Some(cut) = cut {
            bad.truncate(cut.index(bad.len()).max(1));
        }
        // Damage that a reader may ignore (padding, the mid footer, the
        // index tail) reads back as the original; anything else is an error.
        if let Ok(disk) = read_verified(&bad, &summary.sidecar) {
            prop_assert!(disk == *raw, "damage gave wrong bytes despite the sidecar");
        }
        if let Ok(disk) = decode_all(&bad, None) {
            // Without a sidecar only payload damage may slip through.
            let l = layout(image);
            let any_in_records = flips.iter().any(|(at, _)| l.records.contains(&at.index(image.len())));
            prop_assert!(disk == *raw || any_in_records, "metadata damage gave wrong bytes");
        }
    }

    #[test]
    fn random_metadata_damage_without_sidecar(flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6)) {
        let (raw, image, _) = fixture();
        let l = layout(image);
        let mut bad = image.clone();
        // Damage only the index, bitmap and footers.
        let regions = [0..4096, l.mid..l.mid + 4096, l.meta.clone(), l.fin..image.len()];
        let total: usize = regions.iter().map(|r| r.len()).sum();
        for (at, mask) in &flips {
            let mut i = at.index(total);
            for r in &regions {
                if i < r.len() {
                    bad[r.start + i] ^= mask;
                    break;
                }
                i -= r.len();
            }
        }
        if let Ok(disk) = decode_all(&bad, None) {
            prop_assert!(disk == *raw);
        }
    }

    #[test]
    fn sidecar_damage_is_detected(at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let (_, _, summary) = fixture();
        let mut bytes = summary.sidecar.encode();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        prop_assert!(Sidecar::decode(&bytes).is_err());
    }
}

/// Rewrites the final footer of `image` with `edit` applied and a valid checksum.
fn with_final_footer(image: &[u8], edit: impl FnOnce(&mut Footer)) -> Vec<u8> {
    let fin = image.len() - 4096;
    let mut f = Footer::parse(&image[fin..], fin as u64).unwrap();
    edit(&mut f);
    let mut out = image.to_vec();
    out[fin..].copy_from_slice(&f.encode());
    out
}

fn open_err(image: &[u8]) -> String {
    match MemImage::open(image) {
        Ok(_) => panic!("image opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_cookie() {
    let (_, image, _) = fixture();
    let mut bad = image.clone();
    bad[..6].copy_from_slice(b"conect");
    assert!(matches!(
        MemImage::open(&bad),
        Err(FormatError::NotZvhd2(_))
    ));
    let bad = with_final_footer(image, |f| f.cookie = *b"vhdxfile");
    let e = open_err(&bad);
    assert!(e.contains("not \"z2strm\""), "{e}");
    // Only the first 6 bytes count.
    let ok = with_final_footer(image, |f| f.cookie[6] = b'!');
    MemImage::open(&ok).unwrap();
}

#[test]
fn bad_checksum() {
    let (_, image, _) = fixture();
    let mut bad = image.clone();
    let fin = bad.len() - 4096;
    bad[fin + 64] ^= 1;
    let e = open_err(&bad);
    assert!(
        e.contains("checksum") && e.contains(&fin.to_string()),
        "{e}"
    );
    let mut bad = image.clone();
    bad[40] ^= 1;
    let e = open_err(&bad);
    assert!(e.contains("checksum") && e.contains("offset 0"), "{e}");
}

#[test]
fn old_zvhd() {
    let (_, image, _) = fixture();
    let mut head = Footer::parse(&image[..4096], 0).unwrap();
    head.cookie = *b"stream\0\0";
    head.zvhd2_version = 0;
    let mut bad = image.clone();
    bad[..4096].copy_from_slice(&head.encode());
    let e = open_err(&bad);
    assert!(e.contains("old ZVHD (single stream), not ZVHD2"), "{e}");
}

/// A footer edit, named by the field its error message must mention.
type FooterEdit = (&'static str, Box<dyn Fn(&mut Footer)>);

#[test]
fn field_checks_name_the_field() {
    let (_, image, _) = fixture();
    let cases: Vec<FooterEdit> = vec![
        ("index_lba", Box::new(|f| f.index_lba = 1 << 40)),
        ("bitmap", Box::new(|f| f.bitmap_lba += 4096)),
        ("block_size", Box::new(|f| f.block_size = 3 << 20)),
        ("max_blk_num", Box::new(|f| f.max_blk_num += 1)),
        ("curr_size", Box::new(|f| f.curr_size = 512)),
        ("index_seg_size", Box::new(|f| f.index_seg_size = 4096)),
        ("bitmap_seg_num", Box::new(|f| f.bitmap_seg_num = 2)),
        ("index_seg_num", Box::new(|f| f.index_seg_num = 2)),
        ("index_size", Box::new(|f| f.index_size = 4096)),
        ("compress_method", Box::new(|f| f.compress_method = 7)),
        (
            "index_contains_zero_blk",
            Box::new(|f| f.index_contains_zero_blk = 2),
        ),
        ("non_zero_blk_num", Box::new(|f| f.non_zero_blk_num = 99)),
        ("index_lba", Box::new(|f| f.index_lba = 0)),
    ];
    for (field, edit) in cases {
        let e = open_err(&with_final_footer(image, edit));
        assert!(e.contains(field), "expected {field} in {e}");
    }
}

#[test]
fn offsets_past_eof() {
    let (_, image, _) = fixture();
    let bad = with_final_footer(image, |f| {
        f.index_lba = u64::MAX - 100;
        f.bitmap_lba = f.index_lba.wrapping_add(u64::from(f.index_size));
    });
    assert!(MemImage::open(&bad).is_err());
    // Index entry pointing past the data area.
    let l = layout(image);
    let mut bad = image.clone();
    bad[l.meta.start..l.meta.start + 8].copy_from_slice(&(l.fin as u64).to_le_bytes());
    let e = open_err(&bad);
    assert!(
        e.contains("past the end of the data area") || e.contains("overlaps"),
        "{e}"
    );
}

#[test]
fn record_header_disagreeing_with_index() {
    let (_, image, _) = fixture();
    let mem = MemImage::open(image).unwrap();
    let rec = mem.record(1).unwrap().unwrap();
    let mut r = rec.to_vec();
    r[16..20].copy_from_slice(&2u32.to_le_bytes());
    let e = decode_record(&r, 1, 4096, MIB, Compression::Zstd).unwrap_err();
    assert!(matches!(
        e,
        FormatError::BadRecord {
            block: 1,
            offset: 4096,
            ..
        }
    ));
    assert!(e.to_string().contains("says block 2"), "{e}");
    // The index's record size disagreeing with the record's payload length.
    let e = decode_record(&rec[..rec.len() - 4096], 1, 4096, MIB, Compression::Zstd).unwrap_err();
    assert!(e.to_string().contains("payload"), "{e}");
}

#[test]
fn payload_not_zstd() {
    let junk = encode_record(0, &[0x55; 3000]);
    let e = decode_record(&junk, 0, 4096, MIB, Compression::Zstd)
        .unwrap_err()
        .to_string();
    assert!(e.contains("zstd"), "{e}");
}

#[test]
fn decodes_to_wrong_length() {
    let (_, image, _) = fixture();
    let mem = MemImage::open(image).unwrap();
    let rec = mem.record(2).unwrap().unwrap();
    // A 1 MiB block read as if the image had 2 MiB blocks.
    let e = decode_record(rec, 2, 0, 2 * MIB, Compression::Zstd)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected 2097152"), "{e}");
    // ...and a 1 MiB block where 1 MiB blocks are expected but zlib was declared.
    assert!(decode_record(rec, 2, 0, MIB, Compression::Zlib).is_err());
}

#[test]
fn sidecar_of_another_image() {
    let (_, image, summary) = fixture();
    let (other, other_summary) = zvhd2_image(&fixture().0, MIB);
    // Same content, same size, different uuid/timestamp: still another image.
    assert_eq!(other.len(), image.len());
    let tail = &other[other.len() - 4096..];
    let e = summary
        .sidecar
        .check_identity(&ImageIdentity::from_tail(other.len() as u64, tail))
        .unwrap_err();
    assert!(matches!(e, FormatError::SidecarMismatch(_)), "{e}");
    let e = read_verified(image, &other_summary.sidecar).unwrap_err();
    assert!(e.to_string().contains("another image"), "{e}");
    // Geometry check against a header of a different disk.
    let small = zvhd2_image(&[1u8; 4096], MIB).0;
    let small_header = MemImage::open(&small).unwrap().header;
    assert!(matches!(
        summary.sidecar.check_header(&small_header),
        Err(FormatError::SidecarMismatch(_))
    ));
}

#[test]
fn header_needs_exact_edges() {
    let (_, image, _) = fixture();
    let n = image.len() as u64;
    assert!(ImageHeader::parse(&image[..100], &image[image.len() - 4096..], n).is_err());
    assert!(ImageHeader::parse(&image[..4096], &image[..4096], 100).is_err());
}
