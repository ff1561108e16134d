//! Store failures counted by kind, so a dashboard can tell a throttling
//! store from a missing object or a flaky network.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use zvstore::StoreError;

/// What kind of failure a store read ended in (after the store's retries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The object or its bucket does not exist.
    NotFound,
    /// Access denied (credentials, an expired presigned URL).
    Forbidden,
    /// The object changed since it was opened.
    Changed,
    /// A range outside the object.
    OutOfRange,
    /// An attempt ran out of time.
    Timeout,
    /// 5xx, throttling, resets, short bodies: retryable failures that
    /// outlasted the retries.
    Transient,
    /// The store answered with fewer bytes than asked for.
    ShortRead,
    /// Anything else.
    Other,
}

impl StoreErrorKind {
    /// Every kind, in the order [`ErrorKindCounts`] keeps them.
    pub const ALL: [StoreErrorKind; 8] = [
        StoreErrorKind::NotFound,
        StoreErrorKind::Forbidden,
        StoreErrorKind::Changed,
        StoreErrorKind::OutOfRange,
        StoreErrorKind::Timeout,
        StoreErrorKind::Transient,
        StoreErrorKind::ShortRead,
        StoreErrorKind::Other,
    ];

    /// The kind of `error`.
    pub fn of(error: &StoreError) -> StoreErrorKind {
        match error {
            StoreError::NotFound { .. } | StoreError::BucketNotFound { .. } => {
                StoreErrorKind::NotFound
            }
            StoreError::Forbidden { .. } => StoreErrorKind::Forbidden,
            StoreError::Changed { .. } => StoreErrorKind::Changed,
            StoreError::OutOfRange { .. } => StoreErrorKind::OutOfRange,
            StoreError::Timeout { .. } => StoreErrorKind::Timeout,
            StoreError::Transient { .. } => StoreErrorKind::Transient,
            #[allow(unreachable_patterns)] // the store may grow variants
            _ => StoreErrorKind::Other,
        }
    }

    /// The label value (`kind="timeout"`) and stats-file key.
    pub fn label(self) -> &'static str {
        match self {
            StoreErrorKind::NotFound => "not_found",
            StoreErrorKind::Forbidden => "forbidden",
            StoreErrorKind::Changed => "changed",
            StoreErrorKind::OutOfRange => "out_of_range",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Transient => "transient",
            StoreErrorKind::ShortRead => "short_read",
            StoreErrorKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        StoreErrorKind::ALL
            .iter()
            .position(|&k| k == self)
            .unwrap_or(StoreErrorKind::ALL.len() - 1)
    }
}

/// One counter per [`StoreErrorKind`].
#[derive(Debug, Default)]
pub struct ErrorKindCounts {
    counts: [AtomicU64; StoreErrorKind::ALL.len()],
}

impl ErrorKindCounts {
    /// Counts one failure of `kind`.
    pub fn inc(&self, kind: StoreErrorKind) {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Every kind's count (zeros included, so sums and rates start at 0),
    /// keyed by [`StoreErrorKind::label`].
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        StoreErrorKind::ALL
            .iter()
            .map(|&k| {
                (
                    k.label().to_owned(),
                    self.counts[k.index()].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_counted_apart() {
        let c = ErrorKindCounts::default();
        let timeout = StoreError::Timeout {
            location: "s3://b/k".into(),
            start: 0,
            end: 1,
            secs: 1.0,
            attempt: 3,
        };
        c.inc(StoreErrorKind::of(&timeout));
        c.inc(StoreErrorKind::ShortRead);
        c.inc(StoreErrorKind::ShortRead);
        let s = c.snapshot();
        assert_eq!(s.len(), StoreErrorKind::ALL.len());
        assert_eq!(s["timeout"], 1);
        assert_eq!(s["short_read"], 2);
        assert_eq!(s["forbidden"], 0);
    }
}
