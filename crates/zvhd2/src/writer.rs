//! Streaming raw → ZVHD2 writer with the exact layout Huawei's converter
//! produces; compresses blocks on all cores with bounded memory.
//!
//! Layout written (see `docs/format.md`):
//! head footer at 0 (no index yet, valid checksum); one record per non-zero
//! block in block order from 4096; the mid footer (the head footer with
//! `non_zero_blk_num` filled in and its checksum deliberately left stale,
//! as Huawei's writer does); the index segments; the bitmap segments; the
//! final footer. An empty source gives the head footer alone.
//!
//! Input is a [`DiskSource`]: a sequential [`Read`] (every block is read and
//! checked for zeros) or a source that knows where its holes are (a sparse
//! file walked with `SEEK_DATA`), whose hole blocks become zero blocks
//! without a read. Blocks that are read are still checked for all-zero
//! content, so a source that reports no holes gives the same image.
//!
//! Pipeline: the calling thread reads blocks and writes records in block
//! order; worker threads compress, CRC and hash. At most `2 x threads + 1`
//! non-zero blocks are in flight, so memory stays at a few blocks per
//! thread whatever the image size; input and record buffers are recycled,
//! so the steady state allocates nothing. Neither the source nor the
//! writer needs to be `Send`, and the writer needs no `Seek`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::footer::{
    BITMAP_SEG_SIZE, BLOCKS_PER_SEGMENT, INDEX_SEG_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
};
use super::index::encode_metadata;
use super::record::{
    RECORD_HEADER_SIZE, RECORD_MAGIC, RECORD_TRAILER, record_size, zstd_compressor,
};
use super::zvidx::zero_block_hash;
use super::{
    Compression, DEFAULT_BLOCK_SIZE, FOOTER_SIZE, Footer, FormatError, FormatResult, ImageHeader,
    ImageIdentity, RecordLocation, Sidecar, SidecarEntry,
};

/// How to write an image.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Bytes per block: a power of two from 1 MiB to 32 MiB. Only the
    /// default 2 MiB is readable by Huawei's own tools.
    pub block_size: u32,
    /// zstd level (Huawei's writer uses the library default, 3).
    pub level: i32,
    /// Compression threads; 0 = all cores.
    pub threads: usize,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            level: 3,
            threads: 0,
        }
    }
}

/// What was written.
#[derive(Clone, Debug)]
pub struct WriteSummary {
    /// `orig_size`: the input size rounded up to 512.
    pub disk_size: u64,
    /// Bytes written to `out`.
    pub image_size: u64,
    /// Blocks of the disk (`max_blk_num`).
    pub blocks: u64,
    /// Blocks stored as records.
    pub non_zero_blocks: u64,
    /// Input bytes actually read: hole blocks the source reported are not.
    pub bytes_read: u64,
    /// Where the calling thread's time went.
    pub timings: WriteTimings,
    /// The sidecar index of the image just written.
    pub sidecar: Sidecar,
}

/// Where the calling thread's time went, to tell a slow input, too few
/// cores and a slow output apart. Compression runs on the workers, so
/// `waiting_for_workers` is the time the pipeline was compression-bound.
#[derive(Clone, Debug, Default)]
pub struct WriteTimings {
    /// Asking the source for holes, reading blocks, checking them for zeros.
    pub reading: Duration,
    /// Blocked on the workers for the next block to write.
    pub waiting_for_workers: Duration,
    /// Handing records, index, bitmap and footers to the output.
    pub writing: Duration,
}

fn invalid(msg: String) -> FormatError {
    FormatError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg))
}

/// Whether `data` is all zeros; word-at-a-time so a mostly-empty disk
/// costs memory bandwidth, not a byte loop.
pub fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// A raw disk as [`write_image_from`] reads it: block by block, in
/// increasing offsets.
pub trait DiskSource {
    /// Whether any byte of `[offset, offset + len)` may be non-zero.
    /// `Ok(false)` promises that the range reads as zeros (a hole of a
    /// sparse file): the writer stores a zero block and never reads it.
    /// When in doubt, answer `true`; a block read is still checked for zeros.
    fn may_hold_data(&mut self, offset: u64, len: u64) -> io::Result<bool>;
    /// Fills all of `buf` with the disk's bytes from `offset`; a short read
    /// is an error. Called with increasing offsets, skipping hole blocks.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// A [`DiskSource`] over a sequential reader: no hole knowledge, every
/// block is read in order.
pub struct SequentialSource<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> SequentialSource<R> {
    /// Reads `inner` from its current position, which is disk offset 0.
    pub fn new(inner: R) -> Self {
        SequentialSource { inner, pos: 0 }
    }
}

impl<R: Read> DiskSource for SequentialSource<R> {
    fn may_hold_data(&mut self, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(true)
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset != self.pos {
            // Only possible if `may_hold_data` said false, which it never does.
            return Err(io::Error::other(format!(
                "sequential input at byte {} asked for byte {offset}",
                self.pos
            )));
        }
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }
}

/// A block handed to a worker, with a spare record buffer to fill.
struct Job {
    block: u64,
    data: Vec<u8>,
    record: Vec<u8>,
}

/// A block back from a worker: the record to write and its sidecar facts.
struct Done {
    block: u64,
    /// The input buffer, returned for reuse.
    data: Vec<u8>,
    record: Vec<u8>,
    crc: u32,
    hash: [u8; 32],
}

/// What the writing side still has to put out for one block.
enum Pending {
    Zero,
    Record(Done),
}

/// Lays out the record of `block` in `record` (cleared first) around the
/// zstd frame of `data`, compressed straight into place: no payload copy,
/// and a recycled `record` allocates nothing.
fn compress_record(
    c: &mut zstd::bulk::Compressor<'_>,
    block: u64,
    data: &[u8],
    record: &mut Vec<u8>,
) -> io::Result<()> {
    let bound = zstd::zstd_safe::compress_bound(data.len());
    record.clear();
    record.reserve(RECORD_HEADER_SIZE + bound + RECORD_TRAILER.len() + 4096);
    record.resize(RECORD_HEADER_SIZE, 0); // compressed flag, orig size, reserved: 0
    // The frame goes right after the header: the cursor starts writing there.
    let mut cursor = io::Cursor::new(&mut *record);
    cursor.set_position(RECORD_HEADER_SIZE as u64);
    let len = c.compress_to_buffer(data, &mut cursor)?;
    let payload_len = u32::try_from(len).map_err(|_| io::Error::other("payload over 4 GiB"))?;
    record[..RECORD_MAGIC.len()].copy_from_slice(&RECORD_MAGIC);
    record[12..16].copy_from_slice(&payload_len.to_le_bytes());
    record[16..20].copy_from_slice(&(block as u32).to_le_bytes());
    let size = record_size(u64::from(payload_len)) as usize;
    record.resize(size - RECORD_TRAILER.len(), 0);
    record.extend_from_slice(&RECORD_TRAILER);
    Ok(())
}

fn worker(jobs: &Mutex<mpsc::Receiver<Job>>, results: &mpsc::Sender<io::Result<Done>>, level: i32) {
    let mut compressor = match zstd_compressor(level) {
        Ok(c) => Some(c),
        Err(e) => {
            let _ = results.send(Err(e));
            None
        }
    };
    loop {
        // The lock is held only while waiting for the next job.
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job {
            block,
            data,
            mut record,
        }) = job
        else {
            return;
        };
        let Some(c) = compressor.as_mut() else { return };
        let result = compress_record(c, block, &data, &mut record).map(|()| Done {
            block,
            crc: crc32c::crc32c(&record),
            hash: *blake3::hash(&data).as_bytes(),
            data,
            record,
        });
        if results.send(result).is_err() {
            return;
        }
    }
}

/// Reads `input_size` bytes of raw disk from `input` and writes a ZVHD2
/// image to `out`. `progress` is called with the number of input bytes consumed so far.
///
/// The input must hold at least `input_size` bytes (a short read is an
/// error). The disk is `input_size` rounded up to 512 bytes, zero-filled.
pub fn write_image<R: Read, W: Write>(
    input: R,
    input_size: u64,
    out: W,
    options: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> FormatResult<WriteSummary> {
    write_image_from(
        &mut SequentialSource::new(input),
        input_size,
        out,
        options,
        progress,
    )
}

/// [`write_image`] from a [`DiskSource`]: blocks the source reports as
/// holes are zero blocks, never read. `progress` gets the disk bytes
/// done so far (holes included).
pub fn write_image_from<S: DiskSource + ?Sized, W: Write>(
    input: &mut S,
    input_size: u64,
    out: W,
    options: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> FormatResult<WriteSummary> {
    let bs = options.block_size;
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
        return Err(invalid(format!(
            "block size {bs} is not a power of two from 1 MiB to 32 MiB"
        )));
    }
    let zstd_levels = zstd::compression_level_range();
    if !zstd_levels.contains(&options.level) {
        return Err(invalid(format!(
            "zstd level {} is outside {}..={}",
            options.level,
            zstd_levels.start(),
            zstd_levels.end()
        )));
    }
    let head = Footer::new_head(input_size, bs, Compression::Zstd);
    let blocks = input_size.div_ceil(u64::from(bs));
    // The index and bitmap sizes are u32 fields and block numbers are u32.
    let max_index = blocks.div_ceil(BLOCKS_PER_SEGMENT) * u64::from(INDEX_SEG_SIZE);
    if blocks > u64::from(u32::MAX) || max_index > u64::from(u32::MAX) {
        return Err(invalid(format!(
            "a {input_size}-byte disk has {blocks} blocks of {bs} bytes: too many for ZVHD2's 32-bit fields"
        )));
    }
    let mut out = CountingWriter {
        inner: out,
        written: 0,
    };
    let head_bytes = head.encode();
    out.write_all(&head_bytes)?;
    if input_size == 0 {
        out.flush()?;
        let footer = Footer::parse(&head_bytes, 0)?;
        let header = ImageHeader {
            footer,
            file_size: FOOTER_SIZE,
        };
        let identity = ImageIdentity::from_tail(FOOTER_SIZE, &head_bytes);
        let sidecar = Sidecar::from_parts(identity, &header, Vec::new(), Vec::new());
        return Ok(WriteSummary {
            disk_size: 0,
            image_size: FOOTER_SIZE,
            blocks: 0,
            non_zero_blocks: 0,
            bytes_read: 0,
            timings: WriteTimings::default(),
            sidecar,
        });
    }

    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let max_in_flight = 2 * threads + 1;
    // How far reading may run ahead of writing (zero blocks hold no buffer,
    // so they are allowed a longer window).
    let window = max_in_flight as u64 + 1024;
    let zero_hash = zero_block_hash(bs);
    let mut locations: Vec<Option<RecordLocation>> = Vec::with_capacity(blocks as usize);
    let mut entries: Vec<SidecarEntry> = Vec::with_capacity(blocks as usize);
    let mut timings = WriteTimings::default();
    let mut bytes_read = 0u64;

    std::thread::scope(|scope| -> FormatResult<()> {
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(max_in_flight);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<io::Result<Done>>();
        for _ in 0..threads {
            let (rx, tx, level) = (Arc::clone(&job_rx), done_tx.clone(), options.level);
            scope.spawn(move || worker(&rx, &tx, level));
        }
        drop(done_tx);
        // job_tx is dropped on every exit path (errors included), which
        // stops the workers before the scope joins them.

        let mut free: Vec<Vec<u8>> = Vec::new();
        let mut free_records: Vec<Vec<u8>> = Vec::new();
        let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
        // `in_flight`: non-zero blocks read but not yet written out, whether
        // queued, compressing, or compressed and waiting for their turn.
        let (mut next_read, mut next_write, mut in_flight) = (0u64, 0u64, 0usize);
        while next_write < blocks {
            let started = Instant::now();
            while next_read < blocks && in_flight < max_in_flight && next_read - next_write < window
            {
                let offset = next_read * u64::from(bs);
                let want = (input_size - offset).min(u64::from(bs)) as usize;
                let holds_data = input.may_hold_data(offset, want as u64).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("finding the data of the input at byte {offset}: {e}"),
                    )
                })?;
                let mut data = None;
                if holds_data {
                    let mut buf = free.pop().unwrap_or_else(|| vec![0u8; bs as usize]);
                    input.read_exact_at(offset, &mut buf[..want]).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("reading input at byte {offset} of {input_size}: {e}"),
                        )
                    })?;
                    bytes_read += want as u64;
                    buf[want..].fill(0);
                    if is_zero(&buf) {
                        free.push(buf);
                    } else {
                        data = Some(buf);
                    }
                }
                progress(offset + want as u64);
                match data {
                    None => {
                        pending.insert(next_read, Pending::Zero);
                    }
                    Some(data) => {
                        job_tx
                            .send(Job {
                                block: next_read,
                                data,
                                record: free_records.pop().unwrap_or_default(),
                            })
                            .map_err(|_| io::Error::other("compression workers stopped"))?;
                        in_flight += 1;
                    }
                }
                next_read += 1;
            }
            let read = Instant::now();
            timings.reading += read - started;
            while let Some(p) = pending.remove(&next_write) {
                match p {
                    Pending::Zero => {
                        locations.push(None);
                        entries.push(SidecarEntry {
                            record_offset: 0,
                            record_size: 0,
                            record_crc32c: 0,
                            block_hash: zero_hash,
                        });
                    }
                    Pending::Record(done) => {
                        let offset = out.written;
                        out.write_all(&done.record)?;
                        let size = done.record.len() as u32;
                        locations.push(Some(RecordLocation { offset, size }));
                        entries.push(SidecarEntry {
                            record_offset: offset,
                            record_size: size,
                            record_crc32c: done.crc,
                            block_hash: done.hash,
                        });
                        free.push(done.data);
                        free_records.push(done.record);
                        in_flight -= 1;
                    }
                }
                next_write += 1;
            }
            let written = Instant::now();
            timings.writing += written - read;
            // Wait for a worker only when the next block to write was read
            // (and so is with them); otherwise go back and read it.
            if next_write < next_read && !pending.contains_key(&next_write) {
                let done = done_rx
                    .recv()
                    .map_err(|_| io::Error::other("compression workers stopped"))?
                    .map_err(|e| io::Error::new(e.kind(), format!("zstd compression: {e}")))?;
                // Still counted in flight until written: a finished block
                // waiting behind a slow one holds its buffers too.
                pending.insert(done.block, Pending::Record(done));
                timings.waiting_for_workers += written.elapsed();
            }
        }
        Ok(())
    })?;
    let started = Instant::now();

    let non_zero = locations.iter().filter(|l| l.is_some()).count() as u64;
    let mut mid = head.clone();
    mid.checksum = super::footer::footer_checksum(&head_bytes);
    mid.non_zero_blk_num = non_zero as u32;
    // Huawei's writer fills in the count but does not recompute the
    // checksum: the mid footer is stale by design, and readers ignore it.
    out.write_all(&mid.encode_stored())?;

    let (index, bitmap) = encode_metadata(&locations);
    let mut fin = head.clone();
    fin.non_zero_blk_num = non_zero as u32;
    fin.index_lba = out.written;
    fin.index_seg_num = (index.len() / INDEX_SEG_SIZE as usize) as u32;
    fin.index_size = index.len() as u32;
    fin.bitmap_lba = fin.index_lba + index.len() as u64;
    fin.bitmap_seg_num = (bitmap.len() / BITMAP_SEG_SIZE as usize) as u32;
    fin.bitmap_size = bitmap.len() as u32;
    out.write_all(&index)?;
    out.write_all(&bitmap)?;
    let fin_bytes = fin.encode();
    out.write_all(&fin_bytes)?;
    out.flush()?;
    timings.writing += started.elapsed();

    let image_size = out.written;
    let footer = Footer::parse(&fin_bytes, image_size - FOOTER_SIZE)?;
    let header = ImageHeader {
        footer,
        file_size: image_size,
    };
    let identity = ImageIdentity::from_tail(image_size, &fin_bytes);
    let sidecar = Sidecar::from_parts(identity, &header, entries, Vec::new());
    Ok(WriteSummary {
        disk_size: head.orig_size,
        image_size,
        blocks,
        non_zero_blocks: non_zero,
        bytes_read,
        timings,
        sidecar,
    })
}

/// Counts bytes so record offsets are known without `Seek`.
struct CountingWriter<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 1000]));
        for at in [0, 63, 64, 999] {
            let mut v = vec![0u8; 1000];
            v[at] = 1;
            assert!(!is_zero(&v), "{at}");
        }
    }

    #[test]
    fn rejects_bad_options() {
        let mut sink = Vec::new();
        let opts = WriteOptions {
            block_size: 3 << 20,
            ..Default::default()
        };
        assert!(write_image(&[][..], 0, &mut sink, &opts, &mut |_| {}).is_err());
        let opts = WriteOptions {
            level: 1000,
            ..Default::default()
        };
        assert!(write_image(&[][..], 0, &mut sink, &opts, &mut |_| {}).is_err());
    }

    /// Generates `blocks` non-zero 1 MiB blocks on the fly: block 0 is
    /// random (slow to compress), the rest a constant byte (fast), so the
    /// fast blocks finish while block 0 is still compressing.
    struct SlowFirstBlock {
        pos: u64,
        len: u64,
        first: Vec<u8>,
        read_blocks: std::rc::Rc<std::cell::Cell<u64>>,
        written: std::rc::Rc<std::cell::Cell<u64>>,
        max_outstanding: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl Read for SlowFirstBlock {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            const MB: u64 = 1 << 20;
            let n = (buf.len() as u64)
                .min(self.len - self.pos)
                .min(MB - self.pos % MB) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let at = self.pos + i as u64;
                *b = if at < MB { self.first[at as usize] } else { 1 };
            }
            if self.pos.is_multiple_of(MB) && n > 0 {
                let read = self.read_blocks.get() + 1;
                self.read_blocks.set(read);
                let outstanding = read - self.written.get();
                self.max_outstanding
                    .set(self.max_outstanding.get().max(outstanding));
            }
            self.pos += n as u64;
            Ok(n)
        }
    }

    /// Counts records as they are written (each starts with its magic).
    struct RecordCounter(std::rc::Rc<std::cell::Cell<u64>>);

    impl Write for RecordCounter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.starts_with(&super::super::record::RECORD_MAGIC) {
                self.0.set(self.0.get() + 1);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocks_waiting_behind_a_slow_one_count_against_the_bound() {
        use std::cell::Cell;
        use std::rc::Rc;
        let blocks = 150u64;
        let written = Rc::new(Cell::new(0));
        let max_outstanding = Rc::new(Cell::new(0));
        let input = SlowFirstBlock {
            pos: 0,
            len: blocks << 20,
            first: {
                // xorshift64: incompressible, so slow at level 19.
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                (0..1u32 << 20)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            },
            read_blocks: Rc::new(Cell::new(0)),
            written: written.clone(),
            max_outstanding: max_outstanding.clone(),
        };
        let opts = WriteOptions {
            block_size: 1 << 20,
            level: 19,
            threads: 2,
        };
        let s = write_image(
            input,
            blocks << 20,
            RecordCounter(written.clone()),
            &opts,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(s.non_zero_blocks, blocks);
        assert_eq!(written.get(), blocks);
        // 2 x threads + 1 blocks read but not yet written, at most.
        assert!(
            max_outstanding.get() <= 5,
            "{} blocks were held in memory at once",
            max_outstanding.get()
        );
    }

    #[test]
    fn short_input_is_an_error() {
        let mut sink = Vec::new();
        let err = write_image(
            &[1u8; 100][..],
            5000,
            &mut sink,
            &WriteOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("reading input"), "{err}");
    }

    /// An in-memory disk that knows its holes and counts what is read.
    struct HoleyDisk {
        bytes: Vec<u8>,
        holes: Vec<std::ops::Range<u64>>,
        read: u64,
    }

    impl DiskSource for HoleyDisk {
        fn may_hold_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
            Ok(!self
                .holes
                .iter()
                .any(|h| h.start <= offset && offset + len <= h.end))
        }
        fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            assert!(
                self.may_hold_data(offset, buf.len() as u64)?,
                "read a hole at {offset}"
            );
            buf.copy_from_slice(&self.bytes[offset as usize..offset as usize + buf.len()]);
            self.read += buf.len() as u64;
            Ok(())
        }
    }

    #[test]
    fn hole_blocks_are_not_read_and_the_image_is_the_same() {
        const MB: usize = 1 << 20;
        // 12 blocks of 1 MiB + a tail: data in blocks 0, 5 (partly), 11 and
        // the tail; block 7 holds written zeros (no hole, so read and checked).
        let mut bytes = vec![0u8; 12 * MB + 777];
        for (i, b) in bytes[..MB].iter_mut().enumerate() {
            *b = (i % 7) as u8;
        }
        bytes[5 * MB + 3] = 9;
        bytes[11 * MB..].fill(0xab);
        let holes = vec![
            MB as u64..5 * MB as u64,
            6 * MB as u64..7 * MB as u64,
            8 * MB as u64..11 * MB as u64,
        ];
        let opts = WriteOptions {
            block_size: MB as u32,
            level: 3,
            threads: 2,
        };
        let size = bytes.len() as u64;
        let mut plain = Vec::new();
        let full = write_image(&bytes[..], size, &mut plain, &opts, &mut |_| {}).unwrap();
        let mut disk = HoleyDisk {
            bytes: bytes.clone(),
            holes,
            read: 0,
        };
        let mut sparse = Vec::new();
        let mut last_progress = 0;
        let skipped = write_image_from(&mut disk, size, &mut sparse, &opts, &mut |p| {
            assert!(p >= last_progress);
            last_progress = p;
        })
        .unwrap();
        assert_eq!(last_progress, size);
        assert_eq!(full.bytes_read, size);
        // Blocks 0, 5, 7, 11, 12 read.
        assert_eq!(disk.read, 4 * MB as u64 + 777);
        assert_eq!(skipped.bytes_read, disk.read);
        assert_eq!(skipped.non_zero_blocks, 4);
        assert_eq!(skipped.non_zero_blocks, full.non_zero_blocks);
        assert_eq!(skipped.image_size, full.image_size);
        // Same records at the same offsets; only the footers' uuid/time differ.
        assert_eq!(skipped.sidecar.entries, full.sidecar.entries);
        let mid = skipped
            .sidecar
            .entries
            .iter()
            .map(|e| e.record_offset + u64::from(e.record_size))
            .max()
            .unwrap() as usize;
        let fin = skipped.image_size as usize - 4096;
        assert_eq!(sparse[4096..mid], plain[4096..mid], "records");
        assert_eq!(
            sparse[mid + 4096..fin],
            plain[mid + 4096..fin],
            "index, bitmap"
        );
    }
}
