//! One data record: `hwstream bg` header, compressed payload, padding, `end` trailer.
//!
//! Owns the record framing and the bounded decompression of its payload
//! (never more than `block_size` bytes are produced, whatever the payload
//! claims).

use std::cell::RefCell;

use super::{Compression, FormatError, FormatResult, SECTOR_ALIGN};

/// The 12 bytes every record starts with.
pub const RECORD_MAGIC: [u8; 12] = *b"hwstream bg\0";
/// The 4 bytes every record ends with.
pub const RECORD_TRAILER: [u8; 4] = *b"end\0";
/// Bytes of the record header before the payload.
pub const RECORD_HEADER_SIZE: usize = 48;

/// The padded length of a record holding a `payload_len`-byte payload.
pub fn record_size(payload_len: u64) -> u64 {
    (RECORD_HEADER_SIZE as u64 + payload_len + RECORD_TRAILER.len() as u64).div_ceil(SECTOR_ALIGN)
        * SECTOR_ALIGN
}

/// An upper bound on the padded size of any valid record of a
/// `block_size`-byte block: a payload can exceed the block only by the
/// compressor's worst-case overhead (zstd: ~1/256; zlib stored blocks:
/// 5 bytes per 16 KiB), so `block_size / 8` plus a few KiB is generous.
/// Readers use it to refuse absurd sizes from a corrupt index before
/// fetching or allocating anything.
pub fn max_record_size(block_size: u32) -> u64 {
    let bs = u64::from(block_size);
    record_size(bs + bs / 8 + 16384)
}

thread_local! {
    /// One zstd decompression context per thread: creating one costs more
    /// than decoding a small block.
    static ZSTD_DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Checks `record` (the whole padded record as located by the index) for
/// `block`, decompresses it and returns exactly `block_size` bytes.
/// `offset` is the record's offset in the image, for error messages.
///
/// Checked: the `hwstream bg` prefix, the block number field, that the
/// payload length fits and that `record.len()` is exactly the padded size
/// it implies, the `end` trailer, and that the payload decodes to exactly
/// `block_size` bytes. Padding bytes and the compressed-flag / orig-size
/// fields are ignored (Huawei's writer leaves them arbitrary or zero).
pub fn decode_record(
    record: &[u8],
    block: u64,
    offset: u64,
    block_size: u32,
    compression: Compression,
) -> FormatResult<Vec<u8>> {
    let mut out = Vec::new();
    decode_record_into(record, block, offset, block_size, compression, &mut out)?;
    Ok(out)
}

/// [`decode_record`] into a buffer the caller supplies (e.g. one whose
/// pages are already resident). `out` is cleared first; on `Ok` it holds
/// exactly `block_size` bytes, on error it is left empty (its capacity is
/// kept either way). Room for `block_size` bytes is reserved if `out` has
/// less; a larger capacity is kept, and a payload decoding to more than
/// `block_size` bytes is still an error.
pub fn decode_record_into(
    record: &[u8],
    block: u64,
    offset: u64,
    block_size: u32,
    compression: Compression,
    out: &mut Vec<u8>,
) -> FormatResult<()> {
    let bad = |detail: String| FormatError::BadRecord {
        block,
        offset,
        detail,
    };
    out.clear();
    let payload = record_payload(record, block).map_err(bad)?;
    out.reserve_exact(block_size as usize);
    let decoded = match compression {
        Compression::Zstd => decode_zstd(payload, block_size, out),
        Compression::Zlib => decode_zlib(payload, block_size, out),
    };
    if let Err(detail) = decoded {
        // Never leave partly decoded bytes behind for a caller to misuse.
        out.clear();
        return Err(bad(detail));
    }
    Ok(())
}

/// The payload of `record` after every framing check (see [`decode_record`]).
fn record_payload(record: &[u8], block: u64) -> Result<&[u8], String> {
    let min = RECORD_HEADER_SIZE + RECORD_TRAILER.len();
    if record.len() < min {
        return Err(format!(
            "record is {} bytes, shorter than its {min}-byte framing",
            record.len()
        ));
    }
    if record[..12] != RECORD_MAGIC {
        return Err(format!(
            "record does not start with \"hwstream bg\" (found {:?})",
            String::from_utf8_lossy(&record[..12])
        ));
    }
    let payload_len = u32::from_le_bytes(record[12..16].try_into().expect("4 bytes"));
    let number = u32::from_le_bytes(record[16..20].try_into().expect("4 bytes"));
    if u64::from(number) != block {
        return Err(format!("record header says block {number}"));
    }
    let framed = RECORD_HEADER_SIZE as u64 + u64::from(payload_len) + RECORD_TRAILER.len() as u64;
    if framed > record.len() as u64 {
        return Err(format!(
            "payload length {payload_len} does not fit in the {}-byte record",
            record.len()
        ));
    }
    let padded = record_size(u64::from(payload_len));
    if padded != record.len() as u64 {
        return Err(format!(
            "record is {} bytes but a {payload_len}-byte payload pads to {padded}",
            record.len()
        ));
    }
    if record[record.len() - 4..] != RECORD_TRAILER {
        return Err(format!(
            "record does not end with \"end\\0\" (found {:02x?})",
            &record[record.len() - 4..]
        ));
    }
    Ok(&record[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + payload_len as usize])
}

fn decode_zstd(payload: &[u8], block_size: u32, out: &mut Vec<u8>) -> Result<(), String> {
    let want = block_size as usize;
    ZSTD_DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot =
                Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd context: {e}"))?);
        }
        let dctx = slot.as_mut().expect("just set");
        // The output buffer's capacity bounds the decode: a frame that
        // would produce more than its capacity fails here, and one that
        // produces more than block_size but fits fails the length check.
        dctx.decompress_to_buffer(payload, out).map_err(|e| {
            format!(
                "zstd payload ({} bytes) does not decode to a {want}-byte block: {e}",
                payload.len()
            )
        })
    })?;
    if out.len() != want {
        return Err(format!(
            "zstd payload decodes to {} bytes, expected {want}",
            out.len()
        ));
    }
    Ok(())
}

fn decode_zlib(payload: &[u8], block_size: u32, out: &mut Vec<u8>) -> Result<(), String> {
    use flate2::{Decompress, FlushDecompress, Status};
    let want = block_size as usize;
    let mut z = Decompress::new(true);
    loop {
        let consumed = z.total_in() as usize;
        let before = (z.total_in(), z.total_out());
        let status = z
            .decompress_vec(&payload[consumed..], out, FlushDecompress::Sync)
            .map_err(|e| format!("zlib payload: {e}"))?;
        // `out` may have more capacity than one block: overshooting it is
        // an over-long stream, not a short one.
        if out.len() > want {
            return Err(format!("zlib payload decodes to more than {want} bytes"));
        }
        if out.len() == want {
            break;
        }
        let stalled = (z.total_in(), z.total_out()) == before;
        if status == Status::StreamEnd || stalled {
            return Err(format!(
                "zlib payload decodes to only {} bytes, expected {want}",
                out.len()
            ));
        }
    }
    // The stream has no end marker (sync flush only); what remains may be
    // the empty stored block of the flush, but must not produce data.
    let mut probe = Vec::with_capacity(1);
    let consumed = z.total_in() as usize;
    if consumed < payload.len() {
        let _ = z.decompress_vec(&payload[consumed..], &mut probe, FlushDecompress::Sync);
        if !probe.is_empty() {
            return Err(format!("zlib payload decodes to more than {want} bytes"));
        }
    }
    Ok(())
}

/// Builds the padded on-disk record for `block` around a compressed `payload`.
/// Padding is zeros. Panics if `payload` is 4 GiB or more (a payload is a
/// compressed block of at most 32 MiB).
pub fn encode_record(block: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("record payload under 4 GiB");
    let size = record_size(u64::from(len)) as usize;
    let mut r = Vec::with_capacity(size);
    r.extend_from_slice(&RECORD_MAGIC);
    r.extend_from_slice(&len.to_le_bytes());
    r.extend_from_slice(&block.to_le_bytes());
    r.resize(RECORD_HEADER_SIZE, 0); // compressed flag, orig size, reserved: 0
    r.extend_from_slice(payload);
    r.resize(size - RECORD_TRAILER.len(), 0);
    r.extend_from_slice(&RECORD_TRAILER);
    r
}

/// Compresses one block as a zstd frame the way Huawei's writer does:
/// content size in the header, no checksum, no dictionary.
pub fn compress_zstd(
    compressor: &mut zstd::bulk::Compressor<'_>,
    block: &[u8],
) -> std::io::Result<Vec<u8>> {
    compressor.compress(block)
}

/// A zstd compressor configured for ZVHD2 frames at `level`.
pub fn zstd_compressor(level: i32) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(CParameter::ContentSizeFlag(true))?;
    c.set_parameter(CParameter::ChecksumFlag(false))?;
    Ok(c)
}

/// Compresses one block as Huawei's zlib build does: a fresh zlib stream at
/// `level` ended by a sync flush only (no final block, no Adler-32).
pub fn compress_zlib_sync(block: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    use flate2::{Compress, FlushCompress, Status};
    let mut z = Compress::new(flate2::Compression::new(level), true);
    let mut out = Vec::with_capacity(block.len() + block.len() / 8 + 1024);
    loop {
        let consumed = z.total_in() as usize;
        let status = z
            .compress_vec(&block[consumed..], &mut out, FlushCompress::Sync)
            .map_err(std::io::Error::other)?;
        if z.total_in() as usize == block.len()
            && out.len() < out.capacity()
            && status != Status::BufError
        {
            break;
        }
        out.reserve(64 << 10);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u32 = 1 << 20;

    fn block() -> Vec<u8> {
        (0..BS).map(|i| (i % 251) as u8 ^ (i >> 12) as u8).collect()
    }

    fn zstd_record(data: &[u8], block: u32) -> Vec<u8> {
        let payload = compress_zstd(&mut zstd_compressor(3).unwrap(), data).unwrap();
        encode_record(block, &payload)
    }

    #[test]
    fn zstd_round_trip_and_framing() {
        let data = block();
        let r = zstd_record(&data, 5);
        assert_eq!(r.len() % 4096, 0);
        assert_eq!(&r[..12], b"hwstream bg\0");
        assert_eq!(&r[r.len() - 4..], b"end\0");
        assert_eq!(
            decode_record(&r, 5, 4096, BS, Compression::Zstd).unwrap(),
            data
        );
        // Padding is ignored.
        let mut r2 = r.clone();
        let len = u32::from_le_bytes(r2[12..16].try_into().unwrap()) as usize;
        let n = r2.len();
        for b in &mut r2[48 + len..n - 4] {
            *b = 0xee;
        }
        assert_eq!(
            decode_record(&r2, 5, 4096, BS, Compression::Zstd).unwrap(),
            data
        );
    }

    #[test]
    fn framing_errors_are_named() {
        let data = block();
        let r = zstd_record(&data, 5);
        let err = |r: &[u8], b: u64| {
            decode_record(r, b, 4096, BS, Compression::Zstd)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&r, 6).contains("says block 5"));
        let mut m = r.clone();
        m[0] = b'X';
        assert!(err(&m, 5).contains("hwstream"));
        let mut m = r.clone();
        let n = m.len();
        m[n - 2] = b'X';
        assert!(err(&m, 5).contains("end"));
        assert!(
            err(&r[..r.len() - 4096], 5).contains("does not fit")
                || err(&r[..r.len() - 4096], 5).contains("pads")
        );
        let mut longer = r.clone();
        longer.extend_from_slice(&[0; 4096]);
        assert!(err(&longer, 5).contains("pads to"));
        let mut m = r.clone();
        m[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&m, 5).contains("does not fit"));
        assert!(err(&[0u8; 10], 5).contains("shorter"));
    }

    #[test]
    fn zstd_wrong_length_is_an_error() {
        let small = zstd_record(&vec![1u8; (BS / 2) as usize], 0);
        let e = decode_record(&small, 0, 0, BS, Compression::Zstd)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected"), "{e}");
        let big = zstd_record(&vec![1u8; (BS * 2) as usize], 0);
        assert!(decode_record(&big, 0, 0, BS, Compression::Zstd).is_err());
        let junk = encode_record(0, b"definitely not a zstd frame");
        assert!(decode_record(&junk, 0, 0, BS, Compression::Zstd).is_err());
    }

    #[test]
    fn decode_into_reuses_the_buffer_and_empties_it_on_error() {
        let data = block();
        let r = zstd_record(&data, 5);
        // A used buffer with more room than a block: exactly the block out.
        let mut out = vec![0xaa; BS as usize + 8192];
        decode_record_into(&r, 5, 0, BS, Compression::Zstd, &mut out).unwrap();
        assert_eq!(out, data);
        // Wrong block number, a short stream, a long one that fits the
        // capacity: errors, and no bytes left behind.
        assert!(decode_record_into(&r, 6, 0, BS, Compression::Zstd, &mut out).is_err());
        assert!(out.is_empty());
        let mut roomy = Vec::with_capacity(BS as usize * 3);
        let big = zstd_record(&vec![1u8; (BS * 2) as usize], 0);
        assert!(decode_record_into(&big, 0, 0, BS, Compression::Zstd, &mut roomy).is_err());
        assert!(roomy.is_empty());
        let mut twice = data.clone();
        twice.extend_from_slice(&data);
        let long = encode_record(2, &compress_zlib_sync(&twice, 1).unwrap());
        let e = decode_record_into(&long, 2, 0, BS, Compression::Zlib, &mut roomy).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        assert!(roomy.is_empty());
        let half = encode_record(
            2,
            &compress_zlib_sync(&data[..(BS / 2) as usize], 1).unwrap(),
        );
        assert!(decode_record_into(&half, 2, 0, BS, Compression::Zlib, &mut roomy).is_err());
        assert!(roomy.is_empty());
        let zl = encode_record(2, &compress_zlib_sync(&data, 1).unwrap());
        decode_record_into(&zl, 2, 0, BS, Compression::Zlib, &mut roomy).unwrap();
        assert_eq!(roomy, data);
    }

    #[test]
    fn zlib_sync_flush_records() {
        let data = block();
        let payload = compress_zlib_sync(&data, 1).unwrap();
        assert_eq!(&payload[..2], &[0x78, 0x01]);
        assert_eq!(&payload[payload.len() - 4..], &[0, 0, 0xff, 0xff]);
        let r = encode_record(2, &payload);
        assert_eq!(
            decode_record(&r, 2, 0, BS, Compression::Zlib).unwrap(),
            data
        );
        // Too short and too long streams are errors.
        let half = encode_record(
            2,
            &compress_zlib_sync(&data[..(BS / 2) as usize], 1).unwrap(),
        );
        assert!(decode_record(&half, 2, 0, BS, Compression::Zlib).is_err());
        let mut twice = data.clone();
        twice.extend_from_slice(&data);
        let long = encode_record(2, &compress_zlib_sync(&twice, 1).unwrap());
        assert!(decode_record(&long, 2, 0, BS, Compression::Zlib).is_err());
        let junk = encode_record(2, &[0xffu8; 100]);
        assert!(decode_record(&junk, 2, 0, BS, Compression::Zlib).is_err());
    }
}
