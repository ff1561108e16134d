//! The integration tests' fixtures live in the test kit crate (`crates/zvtest`).
#[allow(unused_imports)] // each test binary uses its own subset
pub use zvtest::{http, images, mount, s3};
