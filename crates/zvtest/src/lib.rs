//! The zvmount test kit: real parts on 127.0.0.1 for integration tests and
//! benchmarks, so `tests/`, `tools/zvimg/tests/` and `zvimg bench boot`
//! start, drive and stop them one way.
//!
//! | module | what it runs |
//! |---|---|
//! | [`s3`] | an `s3s-fs` S3 server on a free port (shared per test binary, or private and restartable) |
//! | [`mount`] | the real `zvmount` binary on a real FUSE mountpoint, stopped and checked on drop |
//! | [`http`] | a tiny HTTP/1.1 range server that can misbehave on demand |
//! | [`images`] | raw disks of chosen block kinds, ZVHD2 images and sidecars written from them |
//! | [`qemu`] | a QEMU guest booting from a qcow2 overlay, timed to its serial-console marker |
//! | [`nginx`] | a real nginx as a caching tier, configured by `examples/nginx-slice-cache.conf` |
//! | [`proxy`] | a TCP proxy adding first-byte latency and a bandwidth cap, with per-request timings |
//!
//! [`shm_tempdir`] gives host-cache tests a directory whose free space does
//! not depend on the build disk.
//!
//! Not a mock of anything: every fixture is the real program or protocol.
//! Fixtures for tests panic with a message naming what failed (a fixture
//! failure is not a test result); the ones a benchmark also uses have
//! `try_`/`launch` variants returning this crate's per-module errors.
//! Dev-only: never a dependency of the `zvmount` daemon.
#![warn(missing_docs)]

pub mod http;
pub mod images;
pub mod mount;
pub mod nginx;
pub mod proxy;
pub mod qemu;
pub mod s3;

/// A temporary directory for a host cache: in `/dev/shm` when there is
/// one, so that the cache's 5% free-space floor depends on memory, not on
/// how full the build machine's disk happens to be. Removed on drop.
pub fn shm_tempdir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.expect("create a temporary directory")
}
