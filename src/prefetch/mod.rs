//! Fetching blocks before a reader asks for them, within one memory budget
//! per mount:
//!
//! - [`detector`]: a [`SequentialDetector`] per reader stream (one per open
//!   file handle) spots consecutive block accesses and names the next
//!   blocks to fetch;
//! - [`planner`]: which of the named blocks to fetch, grouped into runs of
//!   neighbouring records (the store crate's one coalescing planner,
//!   [`zvstore::coalesce::plan_runs`]), each run small enough for the budget;
//! - [`replay`]: boot-profile replay, the blocks a recorded boot read, in
//!   that order, a few runs at a time, up to a share of the mount's cache;
//! - [`recorder`]: the first-touch order of demand reads, written out as a
//!   profile (one block number per line);
//! - [`budget`]: the mount-wide [`PrefetchBudget`] every prefetch holds
//!   bytes of while in flight, so prefetching cannot eat memory however
//!   many images a mount serves; demand reads never wait on it.
//!
//! This module decides *what* to prefetch and *when*; the image
//! ([`crate::image`]) does the fetching.

pub mod budget;
pub mod detector;
pub mod planner;
pub mod recorder;
pub mod replay;

pub use budget::{BudgetPermit, BudgetStream, PrefetchBudget};
pub use detector::{ReaderStream, SequentialDetector};
pub use recorder::{AccessRecorder, format_profile, parse_profile};
pub use replay::ProfileReplay;
