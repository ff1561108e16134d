//! The threads that verify and decode records, shared by every image of the
//! process, and the memory they decode into.
//!
//! Decoding a record produces a block-sized buffer that the cache then
//! keeps. Where first touching fresh memory is dear (a nested VM: ~4 µs per
//! 4 KiB page, ~2 ms per 2 MiB block, more than the GET and decode put
//! together), that first touch, not the decode, decides how long a miss
//! takes. So the pool keeps a few block buffers whose pages are already
//! resident ([`take_buffer`]): a decode takes one and decodes into it (the
//! buffer then leaves the pool for the cache), and each decode thread,
//! once a job is done and while no other job is queued, allocates and
//! writes once per page new buffers until the pool is full again. The cost
//! of faulting the pages in is paid between misses instead of inside one.
//!
//! Memory: at most [`BUFFERS_PER_THREAD`] buffers per decode thread, each
//! one block (2 MiB for ZVHD2), are held ready, i.e. 2 × threads × block
//! size (8 MiB on a 2-core host); it is memory the next misses would
//! allocate anyway. Buffers of another block size (a second image with a
//! different one) are dropped to make room for the size being refilled.

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

/// Pre-faulted buffers held ready per decode thread: a miss needs one for
/// its block, and a coalesced run or a CRC + decode pair keeps two threads
/// busy at once.
const BUFFERS_PER_THREAD: usize = 2;

/// Buffers whose pages are resident, waiting for a decode. Empty, with
/// capacity exactly one block.
struct Buffers {
    ready: Vec<Vec<u8>>,
    /// Buffers being filled by a thread right now (counted against the
    /// bound so two idle threads do not both overshoot it).
    filling: usize,
    /// Most buffers held (ready + filling).
    max: usize,
}

fn buffers() -> &'static Mutex<Buffers> {
    static BUFFERS: OnceLock<Mutex<Buffers>> = OnceLock::new();
    BUFFERS.get_or_init(|| {
        Mutex::new(Buffers {
            ready: Vec::new(),
            filling: 0,
            max: BUFFERS_PER_THREAD * threads(),
        })
    })
}

fn lock_buffers() -> std::sync::MutexGuard<'static, Buffers> {
    buffers().lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer with capacity for `len` bytes: a pre-faulted one from
/// the pool when there is one of that size, else a fresh allocation.
pub(super) fn take_buffer(len: usize) -> Vec<u8> {
    let mut pool = lock_buffers();
    if let Some(i) = pool.ready.iter().rposition(|b| b.capacity() == len) {
        return pool.ready.swap_remove(i);
    }
    drop(pool);
    Vec::with_capacity(len)
}

/// Returns a buffer that was not handed out (a failed decode) to the pool,
/// if there is room; its pages are still resident.
pub(super) fn give_back(mut buf: Vec<u8>) {
    buf.clear();
    let mut pool = lock_buffers();
    if buf.capacity() > 0 && pool.ready.len() + pool.filling < pool.max {
        pool.ready.push(buf);
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

fn pool() -> &'static DecodePool {
    static POOL: OnceLock<DecodePool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = threads();
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
            next = refill(job.warm, rx);
        }
    }
}

/// Pages touched between looks at the queue while pre-faulting.
const SLICE: usize = 16 * PAGE;

/// Fills the pool up with pre-faulted `len`-byte buffers: allocates, writes
/// once per page, adds. Work comes first: between slices it looks for a
/// queued job (without waiting for the queue's lock, which an idle thread
/// holds while it waits) and, if there is one, stops and returns it; the
/// buffer being filled joins the pool with the pages touched so far.
fn refill(len: usize, rx: &Mutex<Receiver<Job>>) -> Option<Job> {
    loop {
        {
            let mut pool = lock_buffers();
            if pool.ready.len() + pool.filling >= pool.max {
                // Full of buffers of another size: make room for this one,
                // the size being decoded now.
                match pool.ready.iter().position(|b| b.capacity() != len) {
                    Some(i) => drop(pool.ready.swap_remove(i)),
                    None => return None,
                }
            }
            pool.filling += 1;
        }
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let mut interrupted = None;
        for slice in buf.spare_capacity_mut().chunks_mut(SLICE) {
            for page in slice.chunks_mut(PAGE) {
                page[0].write(0);
            }
            // Keep the writes: stores into memory nobody reads could
            // otherwise be optimised away.
            std::hint::black_box(&mut *slice);
            if let Ok(rx) = rx.try_lock()
                && let Ok(job) = rx.try_recv()
            {
                interrupted = Some(job);
                break;
            }
        }
        {
            let mut pool = lock_buffers();
            pool.filling -= 1;
            pool.ready.push(buf);
        }
        if interrupted.is_some() {
            return interrupted;
        }
    }
}

/// Runs `f` on a decode thread and returns its result; `None` if the job
/// was abandoned (it panicked, or no decode thread could be started).
/// Afterwards the thread refills the pool of pre-faulted `warm`-byte
/// buffers (0: none).
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

    #[tokio::test]
    async fn buffers_are_empty_and_block_sized() {
        const LEN: usize = 3 * 4096 + 17;
        // Warm the pool for LEN-byte buffers, then take more than it holds.
        let _ = run(LEN, || ()).await;
        let taken: Vec<_> = (0..BUFFERS_PER_THREAD * threads() + 2)
            .map(|_| take_buffer(LEN))
            .collect();
        for b in &taken {
            assert!(b.is_empty());
            assert_eq!(b.capacity(), LEN);
        }
        for b in taken {
            give_back(b);
        }
        let pool = lock_buffers();
        assert!(pool.ready.len() + pool.filling <= pool.max);
    }
}
