//! Boot-profile replay: fetching the blocks a recorded boot read, in that
//! order, before the guest asks for them.
//!
//! The replay is one reader stream of the mount's prefetch budget: it plans
//! runs of neighbouring records ([`super::planner`]), waits for budget for
//! each (it runs in the background and may wait), and stops once it has
//! brought in its share of the mount's cache
//! ([`crate::image::MountContext::replay_cap`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::BudgetStream;
use crate::image::{FetchKind, Image};
use crate::metrics::Metrics;

/// What a boot-profile replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileReplay {
    /// Fetches the replay started (blocks not already present).
    pub started: u64,
    /// Blocks of the profile that ended up fetched or cached.
    pub ready: u64,
    /// Blocks whose fetch failed (a demand read will try again).
    pub failed: u64,
    /// Blocks skipped because they could never fit the budget.
    pub skipped: u64,
    /// Blocks left out because the replay had brought in its share of the
    /// mount's cache (more would evict the profiles' own first blocks).
    pub capped: u64,
    /// Time from start until the last block was ready.
    pub elapsed: Duration,
}

/// Replays `profile` (block numbers in the order to fetch them) on `image`,
/// bringing in at most `cap` bytes of blocks. Ends when every block started
/// is ready (or failed).
pub async fn run(image: Arc<Image>, profile: Vec<u64>, cap: u64) -> ProfileReplay {
    let started_at = Instant::now();
    let metrics = Arc::clone(image.metrics());
    let budget = image.mount().budget();
    let account = BudgetStream::default();
    let block_size = u64::from(image.block_size());
    let mut replay = ProfileReplay::default();
    let mut waits = Vec::new();
    let mut brought = 0u64;
    let mut runs = image.prefetch_runs(profile).into_iter();
    while let Some(mut run) = runs.next() {
        // Room for this run (all of it, or its head) under the cap?
        let room = (cap.saturating_sub(brought) / block_size) as usize;
        if room < run.len() {
            replay.capped += (run.len() - room) as u64;
            replay.capped += runs.by_ref().map(|r| r.len() as u64).sum::<u64>();
            run.truncate(room);
            if run.is_empty() {
                break;
            }
        }
        brought += run.len() as u64 * block_size;
        // Fetched by a reader since the runs were planned?
        let run: Vec<_> = run
            .into_iter()
            .filter(|(b, _)| !image.is_present(*b))
            .collect();
        if run.is_empty() {
            continue;
        }
        let Some(permit) = budget.acquire(image.run_cost(&run), &account).await else {
            Metrics::add(&metrics.prefetch_budget_skips, run.len() as u64);
            replay.skipped += run.len() as u64;
            continue;
        };
        let (w, n) = image.claim(&run, FetchKind::Profile, permit);
        Metrics::add(&metrics.profile_blocks, n as u64);
        replay.started += n as u64;
        waits.extend(w.into_iter().map(|(_, f)| f));
    }
    for result in futures::future::join_all(waits).await {
        match result {
            Ok(_) => replay.ready += 1,
            Err(_) => replay.failed += 1,
        }
    }
    Metrics::add(&metrics.profile_capped, replay.capped);
    replay.elapsed = started_at.elapsed();
    replay
}
