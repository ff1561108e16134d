//! Adjacent-range coalescing: the one planner that turns wanted byte ranges
//! (ZVHD2 records, for the mount) into fewer, larger GETs.
//!
//! Over a network a request costs a round trip; a gap between two wanted
//! ranges costs only its bytes. [`plan_runs`] groups neighbouring ranges
//! into runs, each fetched with one GET, within [`RunLimits`]: the gap one
//! request is "worth", the span of one GET (so one slow GET cannot hold a
//! large batch hostage), the ranges in one run, and an optional cost cap
//! (the prefetch budget: a run holds its bytes plus a decoded block per
//! range while in flight). The mount's demand fetches and its prefetches
//! both plan through it; [`get_ranges`] runs a plan against a store.
//!
//! With an alignment ([`align_runs`]), each run's span is widened to whole
//! aligned slices of the object, so hosts reading the same blocks in any
//! pattern ask a caching tier (nginx `slice`, a CDN, Dragonfly) for the
//! same byte ranges and share its cached copies.
//!
//! Planning is pure; splitting is zero-copy ([`Bytes::slice`]).

use std::ops::Range;

use bytes::Bytes;
use futures::future::try_join_all;

use super::{ObjectMeta, ObjectStore, StoreError, StoreResult};

/// What one run (one GET) may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// Neighbours at most this many bytes apart share a GET (the gap is
    /// read and thrown away).
    pub max_gap: u64,
    /// Most bytes one GET spans, gaps included; a single longer range is
    /// fetched alone.
    pub max_bytes: u64,
    /// Most ranges in one run (at least 1).
    pub max_ranges: usize,
    /// Bytes each range costs beyond its own length while in flight (for
    /// the mount: the block it decodes to).
    pub cost_per_range: u64,
    /// Most a run may cost: its ranges' lengths plus `cost_per_range` each.
    pub max_cost: u64,
}

impl RunLimits {
    /// Limits on gap and span only (no range count or cost cap).
    pub fn new(max_gap: u64, max_bytes: u64) -> RunLimits {
        RunLimits {
            max_gap,
            max_bytes,
            max_ranges: usize::MAX,
            cost_per_range: 0,
            max_cost: u64::MAX,
        }
    }

    fn cost(&self, r: &Range<u64>) -> u64 {
        (r.end - r.start).saturating_add(self.cost_per_range)
    }
}

/// Groups `ranges`, in the order given, into runs: each run is a span of
/// consecutive indices into `ranges` fetched with one GET from the first
/// range's start to the furthest end. A range joins the run before it when
/// it starts at or after the previous range's start, at most
/// `limits.max_gap` bytes past the run's end, and the run stays within
/// every limit. Sort `ranges` by start first to coalesce as much as
/// possible; a caller keeping its own order (a boot profile) gets runs
/// only where that order walks forward through the object. Empty ranges
/// are runs of their own. Every index is in exactly one run, in order.
pub fn plan_runs(ranges: &[Range<u64>], limits: &RunLimits) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut span = 0..0u64;
    let mut cost = 0u64;
    for (i, r) in ranges.iter().enumerate() {
        let joins = runs.last().is_some_and(|run| {
            let prev = &ranges[i - 1];
            let end = span.end.max(r.end);
            r.start < r.end
                && prev.start < prev.end
                && r.start >= prev.start
                && r.start <= span.end.saturating_add(limits.max_gap)
                && end - span.start <= limits.max_bytes
                && run.len() < limits.max_ranges
                && cost.saturating_add(limits.cost(r)) <= limits.max_cost
        });
        if joins {
            let run = runs.last_mut().expect("checked");
            run.end = i + 1;
            span.end = span.end.max(r.end);
            cost = cost.saturating_add(limits.cost(r));
        } else {
            runs.push(i..i + 1);
            span = r.clone();
            cost = limits.cost(r);
        }
    }
    runs
}

/// The byte span one run of [`plan_runs`] fetches.
pub fn run_span(ranges: &[Range<u64>], run: &Range<usize>) -> Range<u64> {
    let wanted = &ranges[run.clone()];
    let start = wanted.iter().map(|r| r.start).min().unwrap_or(0);
    let end = wanted.iter().map(|r| r.end).max().unwrap_or(start);
    start..end
}

/// `span` widened to whole slices of `align` bytes of an object of
/// `object_len` bytes: the start rounded down and the end rounded up to a
/// multiple of `align`, the end capped at `object_len` (the last slice of
/// an object is short). `align` 0 leaves `span` as it is, and so does an
/// empty span (nothing to fetch). The result always contains `span` when
/// `span` lies within the object.
pub fn align_span(span: Range<u64>, align: u64, object_len: u64) -> Range<u64> {
    if align == 0 || span.start >= span.end {
        return span;
    }
    let start = span.start - span.start % align;
    let end = span
        .end
        .div_ceil(align)
        .saturating_mul(align)
        .min(object_len)
        .max(span.end);
    start..end
}

/// The runs of [`plan_runs`] (over `ranges` sorted by start) as GETs of
/// whole `align`-byte slices of an object of `object_len` bytes: each run's
/// span widened by [`align_span`], and neighbouring runs whose widened
/// spans overlap merged into one, so one plan never fetches a slice twice.
/// A merged run may exceed the limits it was planned with (alignment wins:
/// the tier caches whole slices anyway). Returns each run with the span to
/// GET; every index is in exactly one run, in order. `align` 0 gives the
/// runs' own spans.
pub fn align_runs(
    ranges: &[Range<u64>],
    runs: Vec<Range<usize>>,
    align: u64,
    object_len: u64,
) -> Vec<(Range<usize>, Range<u64>)> {
    let mut out: Vec<(Range<usize>, Range<u64>)> = Vec::with_capacity(runs.len());
    for run in runs {
        let span = align_span(run_span(ranges, &run), align, object_len);
        match out.last_mut() {
            Some((prev, prev_span))
                if align > 0
                    && span.start < span.end
                    && prev_span.start < prev_span.end
                    && span.start < prev_span.end
                    && prev_span.start < span.end =>
            {
                prev.end = run.end;
                *prev_span = prev_span.start.min(span.start)..prev_span.end.max(span.end);
            }
            _ => out.push((run, span)),
        }
    }
    out
}

/// Cuts `fetched`, the bytes of `span`, into `wanted` (each inside `span`).
/// Anything else is a bug upstream and yields an error, never wrong bytes.
pub fn split(
    span: &Range<u64>,
    wanted: &[Range<u64>],
    fetched: &Bytes,
) -> Result<Vec<Bytes>, String> {
    let len = span.end - span.start;
    if fetched.len() as u64 != len {
        return Err(format!(
            "read {}..{} returned {} bytes, expected {len}",
            span.start,
            span.end,
            fetched.len()
        ));
    }
    wanted
        .iter()
        .map(|r| {
            if r.start < span.start || r.end > span.end || r.start > r.end {
                return Err(format!(
                    "range {}..{} is outside read {}..{}",
                    r.start, r.end, span.start, span.end
                ));
            }
            Ok(fetched.slice((r.start - span.start) as usize..(r.end - span.start) as usize))
        })
        .collect()
}

/// Fetches every range in `ranges` from `key`, coalescing neighbours per
/// `limits` (after sorting by start), running the GETs concurrently (the
/// store's own cap bounds them), each pinned to `pin`. Results are in
/// `ranges` order.
pub async fn get_ranges(
    store: &dyn ObjectStore,
    key: &str,
    ranges: &[Range<u64>],
    pin: Option<&ObjectMeta>,
    limits: &RunLimits,
) -> StoreResult<Vec<Bytes>> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| (ranges[i].start, ranges[i].end));
    let sorted: Vec<Range<u64>> = order.iter().map(|&i| ranges[i].clone()).collect();
    let runs = plan_runs(&sorted, limits);
    let spans: Vec<Range<u64>> = runs.iter().map(|run| run_span(&sorted, run)).collect();
    let fetched = try_join_all(spans.iter().map(|span| async move {
        if span.start == span.end {
            return Ok(Bytes::new());
        }
        store.get_range(key, span.clone(), pin).await
    }))
    .await?;
    let mut out = vec![Bytes::new(); ranges.len()];
    for ((run, span), bytes) in runs.iter().zip(&spans).zip(&fetched) {
        let parts =
            split(span, &sorted[run.clone()], bytes).map_err(|detail| StoreError::Other {
                location: store.location(key),
                op: format!("GET {}..{}", span.start, span.end),
                detail,
            })?;
        for (i, b) in run.clone().zip(parts) {
            out[order[i]] = b;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_close_ranges_only() {
        let wanted = vec![0..10, 12..20, 100..110, 115..120];
        assert_eq!(
            plan_runs(&wanted, &RunLimits::new(5, 1000)),
            vec![0..2, 2..4]
        );
        // A zero gap still merges touching ranges, never gapped ones.
        let p = plan_runs(&[0..10, 10..20, 21..30], &RunLimits::new(0, 1000));
        assert_eq!(p, vec![0..2, 2..3]);
    }

    #[test]
    fn backward_steps_start_a_new_run() {
        // Profile order: 2 after 1 joins, 0 after 2 does not.
        let wanted = vec![4096..8192, 8192..12288, 0..4096];
        assert_eq!(
            plan_runs(&wanted, &RunLimits::new(0, 1 << 20)),
            vec![0..2, 2..3]
        );
    }

    #[test]
    fn every_limit_splits_runs() {
        let mb = 1 << 20;
        let wanted: Vec<_> = (0..10u64).map(|i| i * mb..(i + 1) * mb).collect();
        let span = plan_runs(&wanted, &RunLimits::new(0, 3 * mb));
        assert_eq!(span, vec![0..3, 3..6, 6..9, 9..10]);
        let count = plan_runs(
            &wanted,
            &RunLimits {
                max_ranges: 4,
                ..RunLimits::new(0, u64::MAX)
            },
        );
        assert_eq!(count, vec![0..4, 4..8, 8..10]);
        let cost = plan_runs(
            &wanted,
            &RunLimits {
                cost_per_range: mb,
                max_cost: 5 * mb,
                ..RunLimits::new(0, u64::MAX)
            },
        );
        assert_eq!(cost[0], 0..2, "each range costs 2 MiB against 5 MiB");
    }

    #[test]
    fn split_rejects_wrong_length() {
        let whole = std::slice::from_ref(&(0..10u64));
        assert!(split(&(0..10), whole, &Bytes::from_static(b"short")).is_err());
        let outside = std::slice::from_ref(&(3..9u64));
        assert!(split(&(0..5), outside, &Bytes::from_static(b"12345")).is_err());
    }

    #[test]
    fn spans_widen_to_slices_and_stop_at_the_object_end() {
        let mib = 1u64 << 20;
        let a = 4 * mib;
        assert_eq!(align_span(5 * mib..5 * mib + 10, a, 100 * mib), a..2 * a);
        // Already aligned: unchanged.
        assert_eq!(align_span(a..2 * a, a, 100 * mib), a..2 * a);
        // Straddling a boundary takes both slices.
        assert_eq!(align_span(a - 1..a + 1, a, 100 * mib), 0..2 * a);
        // The last slice is short: capped at the object's end.
        assert_eq!(
            align_span(9 * mib..9 * mib + 1, a, 10 * mib),
            2 * a..10 * mib
        );
        // No alignment, or nothing to fetch: as given.
        assert_eq!(align_span(3..7, 0, 100), 3..7);
        assert_eq!(align_span(7..7, 4, 100), 7..7);
    }

    #[test]
    fn runs_sharing_a_slice_become_one_get() {
        let a = 100u64;
        // Two runs apart by more than the gap, but in the same slice; a third
        // in the next slice; a fourth far away.
        let wanted = vec![10..20, 60..70, 120..130, 510..520];
        let runs = plan_runs(&wanted, &RunLimits::new(5, 1000));
        assert_eq!(runs, vec![0..1, 1..2, 2..3, 3..4]);
        let aligned = align_runs(&wanted, runs, a, 1000);
        assert_eq!(
            aligned,
            vec![(0..2, 0..100), (2..3, 100..200), (3..4, 500..600)]
        );
        // Without alignment, the runs' own spans.
        let runs = plan_runs(&wanted, &RunLimits::new(5, 1000));
        let plain = align_runs(&wanted, runs, 0, 1000);
        assert_eq!(plain[1], (1..2, 60..70));
    }

    #[test]
    fn different_access_patterns_ask_for_the_same_slices() {
        // One host reads records one at a time, another all at once: with
        // alignment both ask for exactly the same set of ranges.
        let records: Vec<Range<u64>> = (0..20u64).map(|i| i * 700..i * 700 + 650).collect();
        let (align, len) = (4096, 20 * 700);
        let mut one_by_one: Vec<Range<u64>> = records
            .iter()
            .map(|r| align_span(r.clone(), align, len))
            .collect();
        one_by_one.dedup();
        let runs = plan_runs(&records, &RunLimits::new(64, 1 << 20));
        let spans: Vec<Range<u64>> = align_runs(&records, runs, align, len)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        let slices = |v: &[Range<u64>]| -> Vec<u64> {
            let mut s: Vec<u64> = v
                .iter()
                .flat_map(|r| (r.start / align..r.end.div_ceil(align)).collect::<Vec<_>>())
                .collect();
            s.sort();
            s.dedup();
            s
        };
        assert_eq!(slices(&one_by_one), slices(&spans));
        for s in one_by_one.iter().chain(&spans) {
            assert_eq!(s.start % align, 0, "{s:?} starts on a slice");
            assert!(s.end % align == 0 || s.end == len, "{s:?} ends on a slice");
        }
    }

    proptest! {
        /// Every wanted range is served exactly once, by a run whose span
        /// covers it, within the limits, and splitting returns exactly its
        /// bytes.
        #[test]
        fn plan_then_split_returns_wanted_bytes(
            raw in proptest::collection::vec((0u64..4000, 0u64..300), 0..40),
            max_gap in 0u64..500,
            max_bytes in 1u64..3000,
            max_ranges in 1usize..6,
        ) {
            let object: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let object = Bytes::from(object);
            let mut wanted: Vec<Range<u64>> = raw.iter().map(|&(s, l)| s..s + l).collect();
            wanted.sort_by_key(|r| (r.start, r.end));
            let limits = RunLimits { max_ranges, ..RunLimits::new(max_gap, max_bytes) };
            let runs = plan_runs(&wanted, &limits);
            let mut next = 0;
            for run in &runs {
                prop_assert_eq!(run.start, next);
                prop_assert!(!run.is_empty());
                next = run.end;
                let span = run_span(&wanted, run);
                prop_assert!(run.len() == 1 || (span.end - span.start <= max_bytes && run.len() <= max_ranges));
                let fetched = object.slice(span.start as usize..span.end as usize);
                let parts = split(&span, &wanted[run.clone()], &fetched).unwrap();
                for (i, b) in run.clone().zip(parts) {
                    prop_assert_eq!(&b[..], &object[wanted[i].start as usize..wanted[i].end as usize]);
                }
            }
            prop_assert_eq!(next, wanted.len());
        }

        /// Aligned runs cover every wanted range, start and end on slice
        /// boundaries (or the object's end), and never overlap.
        #[test]
        fn aligned_runs_cover_and_never_overlap(
            raw in proptest::collection::vec((0u64..4000, 1u64..300), 0..40),
            max_gap in 0u64..500,
            align in 1u64..1500,
        ) {
            let len = 5000u64;
            let mut wanted: Vec<Range<u64>> = raw.iter().map(|&(s, l)| s..(s + l).min(len)).collect();
            wanted.sort_by_key(|r| (r.start, r.end));
            let runs = plan_runs(&wanted, &RunLimits::new(max_gap, 2000));
            let aligned = align_runs(&wanted, runs, align, len);
            let mut next = 0;
            let mut prev_end = 0;
            for (run, span) in &aligned {
                prop_assert_eq!(run.start, next);
                next = run.end;
                prop_assert_eq!(span.start % align, 0);
                prop_assert!(span.end % align == 0 || span.end == len);
                prop_assert!(span.start >= prev_end, "{:?} overlaps the one before", span);
                prev_end = span.end;
                for r in &wanted[run.clone()] {
                    prop_assert!(span.start <= r.start && r.end <= span.end);
                }
            }
            prop_assert_eq!(next, wanted.len());
        }
    }
}
