//! A lock-free latency histogram with fixed buckets, cheap enough for every
//! store request and every demand miss (one atomic add per bucket and sum).
//!
//! `prometheus-client`'s own `Histogram` takes a write lock per observation
//! and cannot be read back outside its encoder; this one keeps plain
//! counters that the stats file and the Prometheus exporter both read, and
//! that add up across images.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (an implicit `+Inf` follows).
/// From a loopback store's ~0.5 ms to an outage's two-minute wait.
pub const BUCKET_BOUNDS_SECONDS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

const BUCKETS: usize = BUCKET_BOUNDS_SECONDS.len() + 1;

/// Counts of durations per bucket of [`BUCKET_BOUNDS_SECONDS`], their sum
/// and their number. Shared by reference; every method takes `&self`.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let i = BUCKET_BOUNDS_SECONDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A copy of the counters (each read atomically).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: buckets.iter().sum(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            buckets,
        }
    }
}

/// A point-in-time copy of a [`LatencyHistogram`], as it appears in the
/// stats file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HistogramSnapshot {
    /// Number of observations.
    pub count: u64,
    /// Sum of the observed durations, in nanoseconds.
    pub sum_ns: u64,
    /// Observations per bucket of [`BUCKET_BOUNDS_SECONDS`] (not
    /// cumulative), then the `+Inf` bucket.
    pub buckets: Vec<u64>,
}

impl HistogramSnapshot {
    /// `(upper bound in seconds, observations in that bucket)` pairs, the
    /// last bound being `f64::MAX` (`+Inf`), as `prometheus-client`'s
    /// encoder takes them.
    pub fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        BUCKET_BOUNDS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.buckets.iter().copied().chain(std::iter::repeat(0)))
            .collect()
    }

    /// Mean duration, if anything was observed.
    pub fn mean(&self) -> Option<Duration> {
        (self.count > 0).then(|| Duration::from_nanos(self.sum_ns / self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(100)); // first bucket
        h.observe(Duration::from_millis(1)); // exactly on a bound: that bucket
        h.observe(Duration::from_millis(7)); // 0.01
        h.observe(Duration::from_secs(600)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.len(), BUCKETS);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[4], 1);
        assert_eq!(s.buckets[BUCKETS - 1], 1);
        assert_eq!(s.sum_ns, 100_000 + 1_000_000 + 7_000_000 + 600_000_000_000);
        let pairs = s.prometheus_buckets();
        assert_eq!(pairs.len(), BUCKETS);
        assert_eq!(pairs.last(), Some(&(f64::MAX, 1)));
    }

    #[test]
    fn empty_snapshot_encodes_zero_buckets() {
        let s = HistogramSnapshot::default();
        assert_eq!(s.prometheus_buckets().iter().map(|b| b.1).sum::<u64>(), 0);
        assert_eq!(s.mean(), None);
    }
}
