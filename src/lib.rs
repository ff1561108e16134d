//! zvmount — mount ZVHD2 disk images from object storage as lazily fetched,
//! read-only raw files.
//!
//! This crate is the read path and the mount; the rest of the workspace is
//! split by boundary (see `docs/ARCHITECTURE.md`):
//!
//! - `zvhd2` (`crates/zvhd2`): the pure format — footers, index, records,
//!   verification, the `.zvidx` sidecar, the writer;
//! - `zvstore` (`crates/zvstore`): the `ObjectStore` trait, file/S3/HTTP
//!   backends, retries and pinning;
//! - `zvimg` (`tools/zvimg`): the companion CLI and benchmarks;
//! - `zvtest` (`crates/zvtest`): the dev-only test kit.
//!
//! A read walks down FUSE → image → cache → store → format, one module per
//! seam:
//!
//! - the format crate [`zvhd2`]: pure ZVHD2 and `.zvidx` parsing, checking
//!   and writing (no I/O, no tokio);
//! - the store crate [`zvstore`]: the `ObjectStore` trait and its file, S3
//!   and HTTP backends, retries, pinning, the one coalescing planner;
//! - [`cache`]: decoded-block caches (memory LRU and the host-wide image cache);
//! - [`hydrate`]: background filling of the host cache until an image is local;
//! - [`image`]: block number → verified, decoded bytes, with single-flight;
//! - [`prefetch`]: sequential readahead and boot-profile replay;
//! - [`fuse`]: FUSE requests → image reads, nothing more;
//! - [`daemon`], [`metrics`]: wiring a mount together and counting what it does;
//! - [`cli`]: the flags both binaries share and `zvmount`'s command line
//!   (clap lives there, not below); [`config`]: the `--config` file, merged
//!   with them.
//! - [`telemetry`]: the stats file and the Prometheus exporter reading those
//!   counts;
//!
//! A read walks down, never back up: [`fuse`] → [`image`] (via
//! [`image::ImageDisk`]) → [`cache`] → the store → the format.
// Every public item is documented: a gap fails clippy's `-D warnings` and
// `cargo doc` under `RUSTDOCFLAGS=-D warnings` (both in scripts/test.sh).
#![warn(missing_docs)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fuse;
pub mod hydrate;
pub mod image;
pub mod metrics;
pub mod prefetch;
pub mod telemetry;
pub mod util;
