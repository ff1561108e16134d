//! `zvimg` — convert, index, inspect, verify, upload and benchmark ZVHD2
//! disk images. One module per subcommand; [`cli`] holds the clap
//! definition (read by `xtask` for the man page and completions), and the
//! binary only parses flags and dispatches. The mount-side work is in the
//! `zvmount` library.
#![warn(missing_docs)]

use std::path::PathBuf;

use zvmount::cli::StoreArgs;

pub mod bench;
pub mod cache;
pub mod check;
pub mod cli;
pub mod convert;
pub mod files;
pub mod hydrate;
pub mod index;
pub mod info;
pub mod progress;
pub mod stats;
pub mod transfer;

/// Which size a raw disk has (the one definition is
/// [`zvmount::image::SizeMode`]; this name is what `convert` calls it).
pub use zvmount::image::SizeMode as SizeChoice;

/// Store flags shared by every subcommand that reads a source.
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// Region, endpoint, credentials profile, timeouts and request limits.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The tokio runtime every async subcommand runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Default sidecar path for a local image.
pub fn default_sidecar_path(image: &std::path::Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".zvidx");
    PathBuf::from(s)
}
