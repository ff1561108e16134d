//! `zvimg bench`: one module per benchmark — `convert` (throughput and size
//! against `zstd`), `store` (GET latency and throughput of a store), `read`
//! (fio-like reads of a mounted file), `boot` (a real guest booting from
//! each way of getting a disk), `fleet` (many hosts reading one boot set at
//! once, with and without a caching tier), `hydrate` (hydration and cold
//! reads against the link) — and `chart`, the PNG renderer they share.
//! The servers, mounts and guests they drive come from the test kit
//! (`zvtest`).

pub mod boot;
pub mod chart;
pub mod convert;
pub mod fleet;
pub mod hydrate;
pub mod passthrough;
pub mod read;
pub mod store;
