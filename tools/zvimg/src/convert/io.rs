//! The two ends of a conversion on the local file system: the input read
//! through its allocation map ([`SparseFile`]) and the output written from a
//! thread of its own with its writeback running behind ([`OutputThread`]
//! over [`WritebackFile`]).

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zvhd2::DiskSource;

/// A local raw file read through its allocation map: what the file system
/// reports as a hole (`SEEK_HOLE`) reads as zeros by definition, so blocks
/// inside one are never read. On a file system without `SEEK_DATA` every
/// block is read.
pub struct SparseFile {
    file: File,
    /// The data extent at or after the last offset asked about; `u64::MAX..`
    /// when no data follows.
    extent: Range<u64>,
    /// Blocks at or past this offset were not asked about yet.
    asked_up_to: u64,
}

impl SparseFile {
    /// Reads `file` (its offset is not used: reads are positioned).
    pub fn new(file: File) -> Self {
        SparseFile {
            file,
            extent: 0..0,
            asked_up_to: 0,
        }
    }

    /// The data extent starting at or after `from`.
    fn next_extent(&self, from: u64) -> std::io::Result<Range<u64>> {
        use rustix::fs::{SeekFrom as At, seek};
        use rustix::io::Errno;
        match seek(&self.file, At::Data(from)) {
            Ok(start) => {
                let end = seek(&self.file, At::Hole(start))?;
                Ok(start..end.max(start + 1))
            }
            // No data at or after `from`: the rest is one hole.
            Err(Errno::NXIO) => Ok(u64::MAX..u64::MAX),
            // No hole support here: treat everything as data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => Ok(from..u64::MAX),
            Err(e) => Err(e.into()),
        }
    }
}

impl DiskSource for SparseFile {
    fn may_hold_data(&mut self, offset: u64, len: u64) -> std::io::Result<bool> {
        if offset < self.asked_up_to {
            // Offsets come in increasing order; a step back would need a new walk.
            self.extent = 0..0;
        }
        self.asked_up_to = offset;
        if offset >= self.extent.end {
            self.extent = self.next_extent(offset)?;
        }
        Ok(self.extent.start < offset.saturating_add(len))
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
}

/// How often the output's writeback is pushed along while converting.
const WRITEBACK_STEP: u64 = 64 << 20;

/// The output file, with its writeback running behind the writer: every
/// `WRITEBACK_STEP` (64 MiB) bytes a background thread `fdatasync`s what is written
/// so far, so the disk works while the cores compress and the final sync
/// finds little left. (`sync_file_range` would do it without a thread, but
/// neither rustix nor nix offers it safely.) Errors of those syncs are kept
/// and returned by [`WritebackFile::finish`]: a failed writeback is reported
/// once per open file, so the final sync alone could miss it.
pub struct WritebackFile {
    file: File,
    since_kick: u64,
    kick: Option<mpsc::SyncSender<()>>,
    syncer: Option<std::thread::JoinHandle<std::io::Result<u32>>>,
}

impl WritebackFile {
    /// Wraps a file just created for writing; starts the syncing thread.
    pub fn new(file: File) -> std::io::Result<Self> {
        let clone = file.try_clone()?;
        // One kick may wait while a sync runs; more are folded into it.
        let (kick, kicks) = mpsc::sync_channel::<()>(1);
        let syncer = std::thread::Builder::new()
            .name("zvimg-writeback".into())
            .spawn(move || -> std::io::Result<u32> {
                let mut syncs = 0;
                for () in kicks {
                    clone.sync_data()?;
                    syncs += 1;
                }
                Ok(syncs)
            })?;
        Ok(WritebackFile {
            file,
            since_kick: 0,
            kick: Some(kick),
            syncer: Some(syncer),
        })
    }

    /// Stops the background syncs, then syncs the file (data and metadata).
    /// Returns the time the final sync took and how many background syncs ran.
    pub fn finish(mut self) -> std::io::Result<(Duration, u32)> {
        drop(self.kick.take());
        let syncs = match self.syncer.take().map(|h| h.join()) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => return Err(std::io::Error::other("writeback thread panicked")),
            None => 0,
        };
        let started = Instant::now();
        self.file.sync_all()?;
        Ok((started.elapsed(), syncs))
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.since_kick += n as u64;
        if self.since_kick >= WRITEBACK_STEP {
            self.since_kick = 0;
            if let Some(kick) = &self.kick {
                // Full: a sync is already queued and will cover these bytes.
                // Disconnected: the syncer stopped on an error `finish` returns.
                let _ = kick.try_send(());
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for WritebackFile {
    fn drop(&mut self) {
        drop(self.kick.take());
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
    }
}

/// Bytes handed to the output thread at a time.
const OUTPUT_CHUNK: usize = 1 << 20;
/// Chunks that may wait for the output thread: 64 MiB of slack, so a
/// `write` held up by writeback (stable pages, a running `fdatasync`) does
/// not stall the thread that feeds the compression workers.
const OUTPUT_QUEUE: usize = 64;

/// A [`WritebackFile`] written by a thread of its own. The converting thread
/// both reads the input and writes records in order; when a `write` blocks
/// behind the disk, the workers run dry. This writer copies into 1 MiB
/// chunks and queues them (bounded: memory stays at most
/// `OUTPUT_QUEUE` x 1 MiB); a write error stops the thread and is returned
/// by the next `write` or by [`OutputThread::finish`].
pub struct OutputThread {
    chunk: Vec<u8>,
    full: Option<mpsc::SyncSender<Vec<u8>>>,
    empty: mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<WritebackFile>>>,
}

impl OutputThread {
    /// Starts the thread that writes to `file`.
    pub fn new(mut file: WritebackFile) -> std::io::Result<Self> {
        let (full, chunks) = mpsc::sync_channel::<Vec<u8>>(OUTPUT_QUEUE);
        let (recycle, empty) = mpsc::channel::<Vec<u8>>();
        let thread = std::thread::Builder::new()
            .name("zvimg-output".into())
            .spawn(move || -> std::io::Result<WritebackFile> {
                for mut chunk in chunks {
                    file.write_all(&chunk)?;
                    chunk.clear();
                    // The converting thread may have finished already.
                    let _ = recycle.send(chunk);
                }
                Ok(file)
            })?;
        Ok(OutputThread {
            chunk: Vec::with_capacity(OUTPUT_CHUNK),
            full: Some(full),
            empty,
            thread: Some(thread),
        })
    }

    fn send_chunk(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(OUTPUT_CHUNK));
        let chunk = std::mem::replace(&mut self.chunk, next);
        let sent = self.full.as_ref().map(|tx| tx.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: its error is the one to report.
            _ => Err(self
                .stop()
                .err()
                .unwrap_or_else(|| std::io::Error::other("the output thread stopped"))),
        }
    }

    fn stop(&mut self) -> std::io::Result<WritebackFile> {
        drop(self.full.take());
        match self.thread.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the output thread panicked")),
            None => Err(std::io::Error::other("the output thread already stopped")),
        }
    }

    /// Writes what is queued, then syncs the file as
    /// [`WritebackFile::finish`] does; returns the same figures.
    pub fn finish(mut self) -> std::io::Result<(Duration, u32)> {
        self.send_chunk()?;
        self.stop()?.finish()
    }
}

impl Write for OutputThread {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(OUTPUT_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == OUTPUT_CHUNK {
            self.send_chunk()?;
        }
        Ok(n)
    }

    /// Hands the partial chunk to the thread; it is on disk only after
    /// [`OutputThread::finish`].
    fn flush(&mut self) -> std::io::Result<()> {
        self.send_chunk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_thread_writes_everything_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut w =
            OutputThread::new(WritebackFile::new(File::create(&path).unwrap()).unwrap()).unwrap();
        let mut want = Vec::new();
        for i in 0..5000u32 {
            // Odd sizes, so pieces straddle chunk boundaries.
            let piece = vec![(i % 251) as u8; 1 + (i as usize * 7919) % 3000];
            w.write_all(&piece).unwrap();
            want.extend_from_slice(&piece);
        }
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn output_thread_reports_a_full_disk() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut w = OutputThread::new(WritebackFile::new(full).unwrap()).unwrap();
        let chunk = vec![7u8; 1 << 20];
        // The error surfaces at a later write or at finish, never not at all.
        let mut err = None;
        for _ in 0..(OUTPUT_QUEUE + 4) {
            if let Err(e) = w.write_all(&chunk) {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => w.finish().unwrap_err(),
        };
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
    }
}
