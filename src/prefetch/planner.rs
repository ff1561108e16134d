//! Planning prefetches: which blocks to fetch, grouped into runs of
//! neighbouring records, each run one GET. The grouping itself is the
//! store crate's one planner ([`zvstore::coalesce::plan_runs`]), the same
//! one demand fetches use; this adds the prefetch-specific part: the order
//! is the caller's (readahead window, boot profile), not the file's.

use zvhd2::RecordLocation;
use zvstore::coalesce::{RunLimits, plan_runs};

/// Groups `candidates` (blocks with their records, in the order to fetch
/// them) into runs within `limits`; runs join only records that follow
/// each other forwards in the file.
pub fn plan(
    candidates: impl IntoIterator<Item = (u64, RecordLocation)>,
    limits: &RunLimits,
) -> Vec<Vec<(u64, RecordLocation)>> {
    let candidates: Vec<(u64, RecordLocation)> = candidates.into_iter().collect();
    let ranges: Vec<_> = candidates
        .iter()
        .map(|(_, loc)| loc.offset..loc.offset + u64::from(loc.size))
        .collect();
    plan_runs(&ranges, limits)
        .into_iter()
        .map(|run| candidates[run].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(offset: u64, size: u32) -> RecordLocation {
        RecordLocation { offset, size }
    }

    #[test]
    fn runs_follow_the_given_order_and_the_cost_cap() {
        let limits = RunLimits {
            max_gap: 0,
            max_bytes: 1 << 30,
            max_ranges: 8,
            cost_per_range: 1 << 20,
            max_cost: 3 << 20,
        };
        let c = vec![
            (5, loc(20480, 4096)),
            (6, loc(24576, 4096)),
            (1, loc(4096, 4096)),
            (2, loc(8192, 4096)),
            (3, loc(12288, 4096)),
            (4, loc(16384, 4096)),
        ];
        let runs: Vec<Vec<u64>> = plan(c, &limits)
            .into_iter()
            .map(|r| r.into_iter().map(|(b, _)| b).collect())
            .collect();
        assert_eq!(runs, vec![vec![5, 6], vec![1, 2], vec![3, 4]]);
    }
}
