//! The prefetch memory budget: one per mount, shared by every image and
//! every reader stream of it.
//!
//! Every prefetch holds bytes of the budget (its compressed records plus
//! the blocks they decode to) and one request slot from the moment it is
//! planned until its blocks are cached. Like mountpoint-s3's memory
//! limiter, a reader stream that holds nothing is always granted its first
//! reservation: it waits for room ([`PrefetchBudget::acquire`]) instead of
//! being skipped, so no stream starves behind a busy one, while a stream
//! that already has prefetches in flight only takes what is free now
//! ([`PrefetchBudget::try_acquire`]). Either way the bytes in flight never
//! exceed the budget; [`Metrics::prefetch_bytes_peak`] records the
//! high-water mark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Bytes that in-flight prefetches may hold (compressed record + decoded
/// block each), and how many prefetch requests may be in flight.
#[derive(Debug)]
pub struct PrefetchBudget {
    bytes: Arc<Semaphore>,
    capacity: u64,
    requests: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// One reader stream's account: the bytes its prefetches hold right now.
/// Cheap to clone; clones share the account.
#[derive(Clone, Debug, Default)]
pub struct BudgetStream {
    held: Arc<AtomicU64>,
    /// Whether a reservation of this stream is waiting for room (one at a
    /// time: an idle stream's later accesses must not pile up waiters).
    waiting: Arc<AtomicBool>,
}

/// Marks a [`BudgetStream`] as having a reservation waiting, until dropped.
#[derive(Debug)]
pub struct WaitingGuard(Arc<AtomicBool>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl BudgetStream {
    /// Bytes of budget this stream's prefetches hold now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Whether the stream has no prefetch in flight (its next reservation
    /// is its "first" and is waited for rather than skipped).
    pub fn is_idle(&self) -> bool {
        self.held() == 0
    }

    /// When the stream is idle and has no reservation waiting yet, marks
    /// one as waiting (until the guard is dropped); `None` otherwise.
    pub fn start_waiting(&self) -> Option<WaitingGuard> {
        if !self.is_idle() {
            return None;
        }
        self.waiting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| WaitingGuard(Arc::clone(&self.waiting)))
    }
}

/// What a prefetch holds while in flight; dropping it returns the budget.
#[derive(Debug)]
pub struct BudgetPermit {
    _bytes: Option<OwnedSemaphorePermit>,
    _request: Option<OwnedSemaphorePermit>,
    held: u64,
    stream: Option<BudgetStream>,
    metrics: Option<Arc<Metrics>>,
}

impl BudgetPermit {
    /// A permit that holds nothing (for demand fetches).
    pub fn none() -> BudgetPermit {
        BudgetPermit {
            _bytes: None,
            _request: None,
            held: 0,
            stream: None,
            metrics: None,
        }
    }

    /// Bytes of budget this permit holds.
    pub fn bytes(&self) -> u64 {
        self.held
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        if let Some(s) = &self.stream {
            s.held.fetch_sub(self.held, Ordering::Relaxed);
        }
        if let Some(m) = &self.metrics {
            m.prefetch_bytes_in_flight
                .fetch_sub(self.held, Ordering::Relaxed);
        }
    }
}

/// Semaphore permits are counted in units of this many bytes so that any
/// budget fits the semaphore's range and one block fits a `u32` request.
const BUDGET_UNIT: u64 = 4096;

impl PrefetchBudget {
    /// A budget of `bytes` (0 disables prefetching) and at most
    /// `max_requests` prefetch requests in flight; bytes in flight are
    /// counted in `metrics`.
    pub fn new(bytes: u64, max_requests: usize, metrics: Arc<Metrics>) -> PrefetchBudget {
        let units = (bytes / BUDGET_UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        PrefetchBudget {
            bytes: Arc::new(Semaphore::new(units)),
            capacity: units as u64 * BUDGET_UNIT,
            requests: Arc::new(Semaphore::new(
                max_requests.clamp(1, Semaphore::MAX_PERMITS),
            )),
            metrics,
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

    fn permit(
        &self,
        units: u32,
        bytes: OwnedSemaphorePermit,
        request: OwnedSemaphorePermit,
        stream: &BudgetStream,
    ) -> BudgetPermit {
        let held = u64::from(units) * BUDGET_UNIT;
        stream.held.fetch_add(held, Ordering::Relaxed);
        let now = self
            .metrics
            .prefetch_bytes_in_flight
            .fetch_add(held, Ordering::Relaxed)
            + held;
        self.metrics
            .prefetch_bytes_peak
            .fetch_max(now, Ordering::Relaxed);
        BudgetPermit {
            _bytes: Some(bytes),
            _request: Some(request),
            held,
            stream: Some(stream.clone()),
            metrics: Some(Arc::clone(&self.metrics)),
        }
    }

    /// Takes `bytes` of budget and one request slot now for `stream`, or
    /// `None` if either is spent (readahead skips rather than queues).
    pub fn try_acquire(&self, bytes: u64, stream: &BudgetStream) -> Option<BudgetPermit> {
        let units = self.units(bytes)?;
        let request = Arc::clone(&self.requests).try_acquire_owned().ok()?;
        let b = Arc::clone(&self.bytes).try_acquire_many_owned(units).ok()?;
        Some(self.permit(units, b, request, stream))
    }

    /// Waits for `bytes` of budget and a request slot for `stream` (a
    /// stream's first reservation, and profile replay, which runs in the
    /// background and may wait). `None` if `bytes` exceeds the whole budget.
    pub async fn acquire(&self, bytes: u64, stream: &BudgetStream) -> Option<BudgetPermit> {
        let units = self.units(bytes)?;
        let request = Arc::clone(&self.requests).acquire_owned().await.ok()?;
        let b = Arc::clone(&self.bytes)
            .acquire_many_owned(units)
            .await
            .ok()?;
        Some(self.permit(units, b, request, stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_bounds_bytes_and_requests() {
        let metrics = Arc::new(Metrics::default());
        let b = PrefetchBudget::new(8 << 20, 2, Arc::clone(&metrics));
        let s = BudgetStream::default();
        let p1 = b.try_acquire(4 << 20, &s).unwrap();
        let p2 = b.try_acquire(4 << 20, &s).unwrap();
        assert_eq!(s.held(), 8 << 20);
        assert!(b.try_acquire(4096, &s).is_none(), "bytes spent");
        drop(p1);
        assert_eq!(b.available(), 4 << 20);
        let _p3 = b.try_acquire(4096, &s).unwrap();
        assert!(b.try_acquire(4096, &s).is_none(), "requests spent");
        drop(p2);
        assert!(
            b.try_acquire(16 << 20, &s).is_none(),
            "larger than the whole budget"
        );
        assert!(
            PrefetchBudget::new(0, 4, Arc::clone(&metrics))
                .try_acquire(1, &s)
                .is_none()
        );
        let snap = metrics.snapshot();
        assert_eq!(snap.prefetch_bytes_peak, 8 << 20);
        assert_eq!(snap.prefetch_bytes_in_flight, 4096);
    }

    #[tokio::test]
    async fn an_idle_stream_waits_for_room_instead_of_starving() {
        let metrics = Arc::new(Metrics::default());
        let b = Arc::new(PrefetchBudget::new(4 << 20, 4, Arc::clone(&metrics)));
        let (busy, idle) = (BudgetStream::default(), BudgetStream::default());
        let held = b.try_acquire(4 << 20, &busy).unwrap();
        assert!(idle.is_idle());
        let waiter = {
            let (b, idle) = (Arc::clone(&b), idle.clone());
            tokio::spawn(async move { b.acquire(2 << 20, &idle).await.map(|p| p.bytes()) })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.unwrap(), Some(2 << 20));
        assert!(metrics.snapshot().prefetch_bytes_peak <= 4 << 20);
    }
}
