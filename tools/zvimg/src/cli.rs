//! The `zvimg` command line, as a clap definition: parsed by the binary
//! and read by `xtask` to generate the man page and shell completions.

use clap::{Parser, Subcommand};

use crate::bench::{
    boot as bench_boot, convert as bench_convert, fleet as bench_fleet, hydrate as bench_hydrate,
    read as bench_read, store as bench_store,
};
use crate::{cache, check, convert, hydrate, index, info, stats, transfer};

/// `zvimg [-v] COMMAND ...`.
#[derive(Parser, Debug)]
#[command(
    name = "zvimg",
    version,
    about = "Convert, index, inspect, verify, upload and benchmark ZVHD2 disk images"
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Benchmarks: convert, store, read, boot, fleet, hydrate.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `zvimg bench` subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Convert throughput and size against `zstd -3 -T0` of the same raw file.
    Convert(bench_convert::Args),
    /// GET time-to-first-byte and throughput of a store.
    Store(bench_store::Args),
    /// fio-like read latency and throughput of a (mounted) file.
    Read(bench_read::Args),
    /// Boot a guest from local raw, download+boot, zvmount cold and warm.
    Boot(bench_boot::Args),
    /// Many hosts reading one boot set at once, with and without a caching
    /// tier (nginx) in front of the origin: origin traffic, hit ratio, time.
    Fleet(bench_fleet::Args),
    /// Hydration throughput, demand misses during hydration, and a cold
    /// sequential read, each against the link.
    Hydrate(bench_hydrate::Args),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
