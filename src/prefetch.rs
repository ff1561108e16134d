//! Fetching blocks before a reader asks for them, within a memory budget:
//!
//! - sequential readahead: [`SequentialDetector`] spots streams of
//!   consecutive block accesses and names the next blocks to fetch;
//! - boot-profile replay: [`crate::image::Image::start_profile_prefetch`]
//!   fetches the blocks a recorded boot read, in that order, a few at a time;
//! - profile recording: [`AccessRecorder`] notes the first-touch order of
//!   demand reads, to be written as a profile (one block number per line).
//!
//! Every prefetch holds bytes of a [`PrefetchBudget`] while in flight, so
//! prefetching cannot eat memory; demand reads never wait on the budget.
//! This module decides *what* to prefetch; the image does the fetching.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes that in-flight prefetches may hold (compressed record + decoded
/// block each), and how many prefetch requests may be in flight.
#[derive(Debug)]
pub struct PrefetchBudget {
    bytes: Arc<Semaphore>,
    capacity: u64,
    requests: Arc<Semaphore>,
}

/// What a prefetch holds while in flight; dropping it returns the budget.
#[derive(Debug)]
pub struct BudgetPermit {
    _bytes: Option<OwnedSemaphorePermit>,
    _request: Option<OwnedSemaphorePermit>,
}

impl BudgetPermit {
    /// A permit that holds nothing (for demand fetches).
    pub fn none() -> BudgetPermit {
        BudgetPermit {
            _bytes: None,
            _request: None,
        }
    }
}

/// Semaphore permits are counted in units of this many bytes so that any
/// budget fits the semaphore's range and one block fits a `u32` request.
const BUDGET_UNIT: u64 = 4096;

impl PrefetchBudget {
    /// A budget of `bytes` (0 disables prefetching) and at most
    /// `max_requests` prefetch requests in flight.
    pub fn new(bytes: u64, max_requests: usize) -> PrefetchBudget {
        let units = (bytes / BUDGET_UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        PrefetchBudget {
            bytes: Arc::new(Semaphore::new(units)),
            capacity: units as u64 * BUDGET_UNIT,
            requests: Arc::new(Semaphore::new(
                max_requests.clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// The total budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes not held by any prefetch right now.
    pub fn available(&self) -> u64 {
        self.bytes.available_permits() as u64 * BUDGET_UNIT
    }

    fn units(&self, bytes: u64) -> Option<u32> {
        let units = bytes.div_ceil(BUDGET_UNIT).max(1);
        if units > self.capacity / BUDGET_UNIT {
            return None;
        }
        u32::try_from(units).ok()
    }

    /// Takes `bytes` of budget and one request slot now, or `None` if either
    /// is spent (readahead skips rather than queues).
    pub fn try_acquire(&self, bytes: u64) -> Option<BudgetPermit> {
        let units = self.units(bytes)?;
        let request = Arc::clone(&self.requests).try_acquire_owned().ok()?;
        let b = Arc::clone(&self.bytes).try_acquire_many_owned(units).ok()?;
        Some(BudgetPermit {
            _bytes: Some(b),
            _request: Some(request),
        })
    }

    /// Waits for `bytes` of budget and a request slot (profile replay, which
    /// runs in the background and may wait). `None` if `bytes` exceeds the
    /// whole budget.
    pub async fn acquire(&self, bytes: u64) -> Option<BudgetPermit> {
        let units = self.units(bytes)?;
        let request = Arc::clone(&self.requests).acquire_owned().await.ok()?;
        let b = Arc::clone(&self.bytes)
            .acquire_many_owned(units)
            .await
            .ok()?;
        Some(BudgetPermit {
            _bytes: Some(b),
            _request: Some(request),
        })
    }
}

/// How many independent sequential streams are tracked (a guest reading a
/// few files at once, or two processes).
const STREAMS: usize = 8;
/// Consecutive block transitions that make a stream "sequential".
const SEQUENTIAL_AFTER: u32 = 2;

#[derive(Clone, Copy, Debug, Default)]
struct Stream {
    last: u64,
    run: u32,
    stamp: u64,
    used: bool,
}

/// Spots sequential streams of block accesses and names the blocks to read
/// ahead of each.
#[derive(Debug)]
pub struct SequentialDetector {
    window: u64,
    streams: [Stream; STREAMS],
    clock: u64,
}

impl SequentialDetector {
    /// Reads `window` blocks ahead of a sequential stream (0 disables).
    pub fn new(window: usize) -> SequentialDetector {
        SequentialDetector {
            window: window as u64,
            streams: [Stream::default(); STREAMS],
            clock: 0,
        }
    }

    /// Notes an access to `block`; returns the window of blocks to have
    /// ahead, if this access moves a sequential stream onto a new block.
    /// The whole window is returned each time: the caller skips blocks
    /// already cached or in flight, so a block the budget could not take
    /// once is tried again on the next step.
    pub fn access(&mut self, block: u64) -> Option<Range<u64>> {
        if self.window == 0 {
            return None;
        }
        self.clock += 1;
        let clock = self.clock;
        if let Some(s) = self.streams.iter_mut().find(|s| s.used && s.last == block) {
            s.stamp = clock;
            return None;
        }
        if let Some(s) = self
            .streams
            .iter_mut()
            .find(|s| s.used && s.last.checked_add(1) == Some(block))
        {
            s.last = block;
            s.run += 1;
            s.stamp = clock;
            if s.run < SEQUENTIAL_AFTER {
                return None;
            }
            let start = block.saturating_add(1);
            return Some(start..start.saturating_add(self.window));
        }
        let victim = self
            .streams
            .iter_mut()
            .min_by_key(|s| if s.used { s.stamp } else { 0 })
            .expect("STREAMS > 0");
        *victim = Stream {
            last: block,
            run: 0,
            stamp: clock,
            used: true,
        };
        None
    }
}

/// Records which blocks demand reads touch, in first-touch order, each once.
///
/// The check for "already seen" is one atomic load, so recording costs
/// almost nothing on the hot read path.
#[derive(Debug)]
pub struct AccessRecorder {
    block_count: u64,
    seen: Vec<AtomicU64>,
    order: Mutex<Vec<u64>>,
}

impl AccessRecorder {
    /// A recorder for an image of `block_count` blocks.
    pub fn new(block_count: u64) -> AccessRecorder {
        let words = block_count.div_ceil(64) as usize;
        AccessRecorder {
            block_count,
            seen: (0..words).map(|_| AtomicU64::new(0)).collect(),
            order: Mutex::new(Vec::new()),
        }
    }

    /// Notes a demand access to `block` (ignored past the end of the image).
    pub fn record(&self, block: u64) {
        if block >= self.block_count {
            return;
        }
        let Some(word) = self.seen.get((block / 64) as usize) else {
            return;
        };
        let bit = 1u64 << (block % 64);
        if word.load(Ordering::Relaxed) & bit != 0 {
            return;
        }
        // fetch_or decides the race: only the thread that sets the bit appends.
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.order
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(block);
        }
    }

    /// The blocks touched so far, in first-touch order.
    pub fn blocks(&self) -> Vec<u64> {
        self.order.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The profile as text: one block number per line.
    pub fn to_text(&self) -> String {
        format_profile(&self.blocks())
    }

    /// Writes the profile to `path` (via a temporary file and a rename).
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&tmp, self.to_text())?;
        std::fs::rename(&tmp, path)
    }
}

/// A block list as profile text: one decimal block number per line.
pub fn format_profile(blocks: &[u64]) -> String {
    let mut s = String::with_capacity(blocks.len() * 6);
    for b in blocks {
        s.push_str(&b.to_string());
        s.push('\n');
    }
    s
}

/// Parses profile text: one block number per line; blank lines and lines
/// starting with `#` are ignored; repeated blocks keep their first place.
pub fn parse_profile(text: &str) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let block: u64 = line.parse().map_err(|_| {
            format!(
                "profile line {}: expected a block number, found {line:?}",
                n + 1
            )
        })?;
        if seen.insert(block) {
            out.push(block);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_stream_triggers_sliding_readahead() {
        let mut d = SequentialDetector::new(4);
        assert_eq!(d.access(10), None);
        assert_eq!(d.access(10), None);
        assert_eq!(d.access(11), None);
        assert_eq!(d.access(12), Some(13..17));
        assert_eq!(d.access(12), None);
        assert_eq!(d.access(13), Some(14..18));
        assert_eq!(d.access(14), Some(15..19));
    }

    #[test]
    fn random_access_does_not_trigger() {
        let mut d = SequentialDetector::new(4);
        for b in [5u64, 90, 3, 77, 41, 6, 200, 91, 4] {
            assert_eq!(d.access(b), None, "block {b}");
        }
    }

    #[test]
    fn interleaved_streams_are_tracked_separately() {
        let mut d = SequentialDetector::new(2);
        let mut got = Vec::new();
        for (a, b) in (0..4u64).zip(100..104u64) {
            got.push(d.access(a));
            got.push(d.access(b));
        }
        assert_eq!(got[4], Some(3..5));
        assert_eq!(got[5], Some(103..105));
        assert_eq!(got[6], Some(4..6));
    }

    #[test]
    fn disabled_window_never_triggers() {
        let mut d = SequentialDetector::new(0);
        assert!((0..10).all(|b| d.access(b).is_none()));
    }

    #[test]
    fn recorder_keeps_first_touch_order() {
        let r = AccessRecorder::new(200);
        for b in [7u64, 3, 7, 150, 3, 0, 199, 200, 10_000] {
            r.record(b);
        }
        assert_eq!(r.blocks(), vec![7, 3, 150, 0, 199]);
        assert_eq!(parse_profile(&r.to_text()).unwrap(), r.blocks());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot.profile");
        r.write_to(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "7\n3\n150\n0\n199\n");
    }

    #[test]
    fn parse_profile_rejects_garbage_and_skips_comments() {
        assert_eq!(parse_profile("# boot\n1\n\n 2 \n1\n").unwrap(), vec![1, 2]);
        let e = parse_profile("1\nx2\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn budget_bounds_bytes_and_requests() {
        let b = PrefetchBudget::new(8 << 20, 2);
        let p1 = b.try_acquire(4 << 20).unwrap();
        let p2 = b.try_acquire(4 << 20).unwrap();
        assert!(b.try_acquire(4096).is_none(), "bytes spent");
        drop(p1);
        assert_eq!(b.available(), 4 << 20);
        let _p3 = b.try_acquire(4096).unwrap();
        assert!(b.try_acquire(4096).is_none(), "requests spent");
        drop(p2);
        assert!(
            b.try_acquire(16 << 20).is_none(),
            "larger than the whole budget"
        );
        assert!(PrefetchBudget::new(0, 4).try_acquire(1).is_none());
    }
}
