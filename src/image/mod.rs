//! Block number → verified, decoded bytes, with single-flight.

pub mod error;
pub mod open;
pub mod scan;

pub use error::ImageError;
pub use open::{ImageLayout, SidecarSource};
