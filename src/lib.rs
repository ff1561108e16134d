//! zvmount — mount ZVHD2 disk images from object storage as lazily fetched,
//! read-only raw files.
//!
//! The crate is split by responsibility, one module per seam:
//!
//! - [`format`]: pure ZVHD2 and `.zvidx` parsing and writing (no I/O, no tokio);
//! - [`store`]: the [`store::ObjectStore`] trait and its file, S3 and HTTP
//!   backends, plus retries, pinning and a fault-injecting wrapper;
//! - [`cache`]: decoded-block caches (memory LRU and persistent disk);
//! - [`image`]: block number → verified, decoded bytes, with single-flight;
//! - [`prefetch`]: sequential readahead and boot-profile replay;
//! - [`fuse`]: FUSE requests → image reads, nothing more;
//! - [`daemon`], [`metrics`]: wiring a mount together and counting what it does;
//! - [`telemetry`]: the stats file and the Prometheus exporter reading those
//!   counts.

pub mod cache;
pub mod daemon;
pub mod fuse;
pub mod image;
pub mod metrics;
pub mod prefetch;
pub mod telemetry;
pub mod util;
