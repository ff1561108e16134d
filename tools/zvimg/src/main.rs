//! `zvimg`: parse flags, set up logging, dispatch to the subcommand's
//! module in the `zvimg` library.

use std::process::ExitCode;

use clap::Parser;
use zvimg::bench::{
    boot as bench_boot, convert as bench_convert, fleet as bench_fleet, hydrate as bench_hydrate,
    read as bench_read, store as bench_store,
};
use zvimg::cli::{BenchCommand, Cli, Command};
use zvimg::{cache, check, convert, hydrate, index, info, runtime, stats, transfer};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        // Not the SDK's warnings about each credential or region provider
        // it tried (IMDS off EC2) before the documented fallback.
        0 => "warn,aws_config=error",
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
        .with_ansi(zvmount::util::stderr_wants_colour())
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
        Command::Bench(BenchCommand::Fleet(a)) => ok(bench_fleet::run(a)),
        Command::Bench(BenchCommand::Hydrate(a)) => ok(bench_hydrate::run(a)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zvimg: error: {}", zvmount::util::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
