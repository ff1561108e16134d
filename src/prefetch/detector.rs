//! Spotting sequential streams of block accesses, one detector per reader
//! stream (an open file handle), so two readers of one image (or one reader
//! of each of two images) never disturb each other's pattern.

use std::ops::Range;
use std::sync::Mutex;

use super::BudgetStream;

/// How many independent sequential streams one detector tracks (a guest
/// reading a few files at once through one handle).
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

/// What one reader (an open file handle) carries through its reads: its
/// own sequential detector and its own account of the prefetch budget.
#[derive(Debug)]
pub struct ReaderStream {
    detector: Mutex<SequentialDetector>,
    budget: BudgetStream,
}

impl ReaderStream {
    /// A stream reading `window` blocks ahead once sequential (0 disables).
    pub fn new(window: usize) -> ReaderStream {
        ReaderStream {
            detector: Mutex::new(SequentialDetector::new(window)),
            budget: BudgetStream::default(),
        }
    }

    /// [`SequentialDetector::access`] on this stream's detector.
    pub fn access(&self, block: u64) -> Option<Range<u64>> {
        self.detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .access(block)
    }

    /// This stream's account of the prefetch budget.
    pub fn budget(&self) -> &BudgetStream {
        &self.budget
    }
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
    fn reader_streams_do_not_share_a_pattern() {
        let (a, b) = (ReaderStream::new(2), ReaderStream::new(2));
        // Interleaved, each handle reads sequentially; no handle's pattern
        // is broken by the other's.
        let mut hits = 0;
        for i in 0..4u64 {
            hits += usize::from(a.access(i).is_some());
            hits += usize::from(b.access(1000 + i).is_some());
        }
        assert_eq!(hits, 4);
    }
}
