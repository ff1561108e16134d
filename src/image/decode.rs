//! The threads that verify and decode records, shared by every image of the
//! process, and the memory they decode into.
//!
//! Decoding a record produces a new block-sized buffer that the cache then
//! keeps. Where first touching fresh memory is dear (a nested VM: ~4 µs per
//! 4 KiB page, ~2 ms per 2 MiB block, more than the GET and decode put
//! together), that first touch, not the decode, decides how long a miss
//! takes. So each decode thread, once a job is done, touches the memory its
//! next block will be decoded into: a block-sized allocation, written once
//! per page and freed. The allocator hands the same, now resident, memory
//! to the next decode on that thread (with the thresholds `zvmount` sets at
//! start, glibc keeps freed 2 MiB chunks in the thread's arena rather than
//! unmapping them). The cost is paid between misses instead of inside one;
//! the memory is at most one block per thread that would be used next
//! anyway.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

/// A unit of work: runs on a decode thread; `warm` is the block size to
/// prepare memory for afterwards (0: none).
struct Job {
    work: Box<dyn FnOnce() + Send>,
    warm: usize,
}

/// The process's decode threads.
struct DecodePool {
    jobs: Sender<Job>,
}

/// Page size assumed for pre-touching (a larger real page only means
/// touching some pages more than once).
const PAGE: usize = 4096;

fn pool() -> &'static DecodePool {
    static POOL: OnceLock<DecodePool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("zvmount-decode-{i}"))
                .spawn(move || serve(&rx));
            if let Err(e) = spawned {
                // With no thread at all, `run` reports every job as
                // abandoned rather than hanging.
                tracing::error!("cannot start decode thread {i}: {e}");
            }
        }
        DecodePool { jobs: tx }
    })
}

fn serve(rx: &Mutex<Receiver<Job>>) {
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => {
                let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
        };
        // A panicking job drops its result sender (the waiter sees an
        // abandoned decode); the thread itself carries on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.work));
        if job.warm > 0 {
            next = prefault(job.warm, rx);
        }
    }
}

/// Pages touched between looks at the queue while pre-faulting.
const SLICE: usize = 16 * PAGE;

/// Makes the next `len`-byte allocation of this thread land on resident
/// pages: allocates, writes once per page, frees. Work comes first: between
/// slices it looks for a queued job (without waiting for the queue's lock,
/// which an idle thread holds while it waits) and, if there is one, stops
/// and returns it; the pages touched so far stay resident for that job.
fn prefault(len: usize, rx: &Mutex<Receiver<Job>>) -> Option<Job> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    for slice in buf.spare_capacity_mut().chunks_mut(SLICE) {
        for page in slice.chunks_mut(PAGE) {
            page[0].write(0);
        }
        // Keep the writes: stores into memory freed unread could otherwise
        // be optimised away.
        std::hint::black_box(&mut *slice);
        if let Ok(rx) = rx.try_lock()
            && let Ok(job) = rx.try_recv()
        {
            return Some(job);
        }
    }
    None
}

/// Runs `f` on a decode thread and returns its result; `None` if the job
/// was abandoned (it panicked, or no decode thread could be started).
/// Afterwards the thread prepares memory for a `warm`-byte block (0: none).
pub(super) async fn run<T: Send + 'static>(
    warm: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    let job = Job {
        work: Box::new(move || {
            let _ = tx.send(f());
        }),
        warm,
    };
    if pool().jobs.send(job).is_err() {
        return None;
    }
    rx.await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_and_panics_are_contained() {
        assert_eq!(run(0, || 6 * 7).await, Some(42));
        let panicked: Option<u32> = run(0, || panic!("decoder bug")).await;
        assert_eq!(panicked, None);
        // The pool survives a panicking job, and warming is harmless.
        assert_eq!(run(1 << 20, || "ok").await, Some("ok"));
        let many = futures::future::join_all((0..32u64).map(|i| run(0, move || i * 2))).await;
        assert_eq!(many, (0..32u64).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }
}
