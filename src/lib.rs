//! zvmount — mount ZVHD2 disk images from object storage as lazily fetched,
//! read-only raw files.
//!
//! The crate is split by responsibility, one module per seam:
//!
//! - [`format`]: pure ZVHD2 and `.zvidx` parsing and writing (no I/O, no tokio);
//! - [`store`]: the [`store::ObjectStore`] trait and its file, S3 and HTTP
//!   backends, plus retries, pinning and a fault-injecting wrapper;
//! - [`cache`]: decoded-block caches (memory LRU and the host-wide image cache);
//! - [`image`]: block number → verified, decoded bytes, with single-flight;
//! - [`prefetch`]: sequential readahead and boot-profile replay;
//! - [`hydrate`]: background filling of the host cache until an image is local;
//! - [`fuse`]: FUSE requests → image reads, nothing more;
//! - [`daemon`], [`metrics`]: wiring a mount together and counting what it does.

pub mod cache;
pub mod daemon;
pub mod fuse;
pub mod hydrate;
pub mod image;
pub mod metrics;
pub mod prefetch;
pub mod util;
