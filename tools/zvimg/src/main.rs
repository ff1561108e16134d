//! `zvimg` — convert, index, inspect, verify, upload and benchmark ZVHD2
//! disk images. Parses flags and prints; the work is in the `zvmount` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zvmount::cli::StoreArgs;

mod bench;
mod cache;
mod check;
mod convert;
mod files;
mod hydrate;
mod index;
mod info;
mod progress;
mod stats;
mod transfer;

use bench::{
    boot as bench_boot, convert as bench_convert, read as bench_read, store as bench_store,
};

#[derive(Parser, Debug)]
#[command(
    name = "zvimg",
    version,
    about = "Convert, index, inspect, verify, upload and benchmark ZVHD2 disk images"
)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Which size a raw disk has (the one definition is
/// [`zvmount::image::SizeMode`]; this name is what `convert` calls it).
pub use zvmount::image::SizeMode as SizeChoice;

#[derive(Subcommand, Debug)]
enum Command {
    /// Convert a disk image: raw/qcow2/vmdk/vhd/vhdx → ZVHD2, or ZVHD2 → raw.
    Convert(convert::Args),
    /// Build the `.zvidx` sidecar index of a ZVHD2 image.
    Index(index::IndexArgs),
    /// Show an image's sizes, blocks, compression and footer fields.
    Info(info::InfoArgs),
    /// Decode every block (and verify it against the sidecar); exit 1 at the first fault.
    Check(check::CheckArgs),
    /// Upload an image and its sidecar to S3 (parallel multipart).
    Push(transfer::PushArgs),
    /// Download an image (and its sidecar, if any) from any source to a local file.
    Pull(transfer::PullArgs),
    /// A running mount's figures (reads, cache hits, store traffic, latency)
    /// per image, from its stats file; `--watch` adds rates.
    Stats(stats::Args),
    /// Fill the host cache with a whole image, without mounting it.
    Hydrate(hydrate::Args),
    /// The host cache: ls, rm, gc.
    Cache(cache::Args),
    /// Benchmarks: convert, store, read, boot.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Convert throughput and size against `zstd -3 -T0` of the same raw file.
    Convert(bench_convert::Args),
    /// GET time-to-first-byte and throughput of a store.
    Store(bench_store::Args),
    /// fio-like read latency and throughput of a (mounted) file.
    Read(bench_read::Args),
    /// Boot a guest from local raw, download+boot, zvmount cold and warm.
    Boot(bench_boot::Args),
}

/// Store flags shared by every subcommand that reads a source.
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ZVIMG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();

    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Convert(a) => convert::run(a),
        Command::Index(a) => index::index(a),
        Command::Info(a) => info::info(a),
        Command::Check(a) => check::check(a),
        Command::Push(a) => transfer::push(a),
        Command::Pull(a) => transfer::pull(a),
        Command::Stats(a) => ok(stats::run(a)),
        Command::Hydrate(a) => ok(hydrate::run(a)),
        Command::Cache(a) => ok(cache::run(a)),
        Command::Bench(BenchCommand::Convert(a)) => bench_convert::run(a),
        Command::Bench(BenchCommand::Store(a)) => {
            runtime().and_then(|rt| ok(rt.block_on(bench_store::run(a))))
        }
        Command::Bench(BenchCommand::Read(a)) => ok(bench_read::run(a)),
        Command::Bench(BenchCommand::Boot(a)) => ok(bench_boot::run(a)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zvimg: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
