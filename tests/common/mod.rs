//! The integration tests' fixtures live in the test kit crate (`crates/zvtest`);
//! `guest` boots the test guest for the outage test.
#[allow(unused_imports)] // each test binary uses its own subset
pub use zvtest::{http, images, mount, s3};

#[allow(dead_code)]
pub mod guest;
