//! Adjacent-range coalescing: turning a batch of wanted byte ranges into
//! fewer, larger GETs, and handing each caller back exactly its bytes.
//!
//! Over a network a request costs a round trip; a gap between two wanted
//! ranges costs only its bytes. Two ranges are merged when the gap between
//! them is at most `max_gap` bytes (the bytes one request is "worth"), and a
//! merged request never grows past [`MAX_MERGED_LEN`], so one slow GET cannot
//! hold a large batch hostage. Splitting is zero-copy ([`Bytes::slice`]).
//!
//! Planning is pure; [`get_ranges`] is the one async helper that runs a plan
//! against a store.

use std::ops::Range;

use bytes::Bytes;
use futures::future::try_join_all;

use super::{ObjectMeta, ObjectStore, StoreError, StoreResult};

/// Upper bound on one merged request; ranges already longer are fetched alone.
pub const MAX_MERGED_LEN: u64 = 64 << 20;

/// One GET of a plan: the byte range to fetch, and the indices (into the
/// caller's `wanted` slice) of the ranges it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedRead {
    /// Bytes to fetch.
    pub range: Range<u64>,
    /// Indices of the wanted ranges inside `range`, in offset order.
    pub serves: Vec<usize>,
}

/// Plans merged GETs for `wanted` (any order; overlaps allowed; empty ranges
/// get no GET and are served by none). Two ranges share a GET when the gap
/// between them is at most `max_gap` and the merged GET stays within
/// [`MAX_MERGED_LEN`]. The plan is sorted by offset.
pub fn plan(wanted: &[Range<u64>], max_gap: u64) -> Vec<MergedRead> {
    let mut order: Vec<usize> = (0..wanted.len())
        .filter(|&i| wanted[i].start < wanted[i].end)
        .collect();
    order.sort_by_key(|&i| (wanted[i].start, wanted[i].end));
    let mut out: Vec<MergedRead> = Vec::new();
    for i in order {
        let r = &wanted[i];
        if let Some(last) = out.last_mut() {
            let gap = r.start.saturating_sub(last.range.end);
            let merged_end = last.range.end.max(r.end);
            if gap <= max_gap && merged_end - last.range.start <= MAX_MERGED_LEN {
                last.range.end = merged_end;
                last.serves.push(i);
                continue;
            }
        }
        out.push(MergedRead {
            range: r.clone(),
            serves: vec![i],
        });
    }
    out
}

/// Cuts the bytes fetched for `read` into the wanted ranges it serves,
/// returned as `(index into wanted, bytes)`. `fetched` must be exactly
/// `read.range` long (stores guarantee it); anything else is a bug upstream
/// and yields an error rather than wrong bytes.
pub fn split(
    read: &MergedRead,
    wanted: &[Range<u64>],
    fetched: &Bytes,
) -> Result<Vec<(usize, Bytes)>, String> {
    let len = read.range.end - read.range.start;
    if fetched.len() as u64 != len {
        return Err(format!(
            "merged read {}..{} returned {} bytes, expected {len}",
            read.range.start,
            read.range.end,
            fetched.len()
        ));
    }
    read.serves
        .iter()
        .map(|&i| {
            let r = wanted
                .get(i)
                .ok_or_else(|| format!("plan refers to range #{i}, which was not wanted"))?;
            if r.start < read.range.start || r.end > read.range.end {
                return Err(format!(
                    "range {}..{} is outside merged read {}..{}",
                    r.start, r.end, read.range.start, read.range.end
                ));
            }
            let a = (r.start - read.range.start) as usize;
            let b = (r.end - read.range.start) as usize;
            Ok((i, fetched.slice(a..b)))
        })
        .collect()
}

/// Fetches every range in `ranges` from `key`, merging neighbours closer than
/// `max_gap` into one GET, running the GETs concurrently (the store's own
/// cap bounds them), each pinned to `pin`. Results are in `ranges` order.
pub async fn get_ranges(
    store: &dyn ObjectStore,
    key: &str,
    ranges: &[Range<u64>],
    pin: Option<&ObjectMeta>,
    max_gap: u64,
) -> StoreResult<Vec<Bytes>> {
    let reads = plan(ranges, max_gap);
    let fetched = try_join_all(
        reads
            .iter()
            .map(|read| store.get_range(key, read.range.clone(), pin)),
    )
    .await?;
    let mut out = vec![Bytes::new(); ranges.len()];
    for (read, bytes) in reads.iter().zip(&fetched) {
        let parts = split(read, ranges, bytes).map_err(|detail| StoreError::Other {
            location: store.location(key),
            op: format!("GET {}..{}", read.range.start, read.range.end),
            detail,
        })?;
        for (i, b) in parts {
            out[i] = b;
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
        let wanted = vec![0..10, 12..20, 100..110, 111..111, 115..120];
        let p = plan(&wanted, 5);
        assert_eq!(
            p,
            vec![
                MergedRead {
                    range: 0..20,
                    serves: vec![0, 1]
                },
                MergedRead {
                    range: 100..120,
                    serves: vec![2, 4]
                },
            ]
        );
        // A zero gap threshold still merges touching ranges, never gapped ones.
        let p = plan(&[0..10, 10..20, 21..30], 0);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].range, 0..20);
    }

    #[test]
    fn unsorted_and_overlapping() {
        let wanted = vec![50..60, 0..10, 5..55];
        let p = plan(&wanted, 0);
        assert_eq!(
            p,
            vec![MergedRead {
                range: 0..60,
                serves: vec![1, 2, 0]
            }]
        );
    }

    #[test]
    fn merged_reads_are_capped() {
        let mb = 1 << 20;
        let wanted: Vec<_> = (0..100u64).map(|i| i * mb..(i + 1) * mb).collect();
        let p = plan(&wanted, u64::MAX);
        assert!(
            p.iter()
                .all(|r| r.range.end - r.range.start <= MAX_MERGED_LEN)
        );
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn split_rejects_wrong_length() {
        let read = MergedRead {
            range: 0..10,
            serves: vec![0],
        };
        let wanted = std::slice::from_ref(&read.range);
        assert!(split(&read, wanted, &Bytes::from_static(b"short")).is_err());
    }

    proptest! {
        /// Every wanted range is served exactly once, by a read that covers
        /// it, and splitting returns exactly its bytes.
        #[test]
        fn plan_then_split_returns_wanted_bytes(
            raw in proptest::collection::vec((0u64..4000, 0u64..300), 0..40),
            max_gap in 0u64..500,
        ) {
            let object: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let object = Bytes::from(object);
            let wanted: Vec<Range<u64>> = raw.iter().map(|&(s, l)| s..s + l).collect();
            let p = plan(&wanted, max_gap);
            let mut seen = vec![0u32; wanted.len()];
            for w in p.windows(2) {
                prop_assert!(w[0].range.end <= w[1].range.start);
            }
            for read in &p {
                let fetched = object.slice(read.range.start as usize..read.range.end as usize);
                for (i, b) in split(read, &wanted, &fetched).unwrap() {
                    seen[i] += 1;
                    prop_assert_eq!(&b[..], &object[wanted[i].start as usize..wanted[i].end as usize]);
                }
            }
            for (i, r) in wanted.iter().enumerate() {
                prop_assert_eq!(seen[i], u32::from(r.start < r.end));
            }
        }
    }
}
