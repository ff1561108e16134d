//! `zvimg bench`: one module per benchmark — `convert` (throughput and size
//! against `zstd`), `store` (GET latency and throughput of a store), `read`
//! (fio-like reads of a mounted file), `boot` (a real guest booting from
//! each way of getting a disk), `hydrate` (hydration and cold reads against
//! the link) — and `chart`, the PNG renderer they share.
//! The servers, mounts and guests they drive come from the test kit
//! (`zvtest`).

pub mod boot;
pub mod chart;
pub mod convert;
pub mod hydrate;
pub mod passthrough;
pub mod read;
pub mod store;
