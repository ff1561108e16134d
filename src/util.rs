//! Small helpers shared by the library and the binaries: sizes like
//! `512MiB` (parsed by [`zvstore::units`], the one place for units), hex
//! for hashes.

pub use zvhd2::hex;
pub use zvstore::units::parse_size;
