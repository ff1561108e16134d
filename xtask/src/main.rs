//! Build chores that need the binaries' clap definitions:
//!
//!   cargo run -p xtask -- dist OUTDIR
//!
//! writes, from `zvmount::cli::Cli` and `zvimg::cli::Cli` (so they can
//! never disagree with `--help`):
//!
//! - `OUTDIR/man/zvmount.1`, `zvimg.1` and one page per zvimg subcommand
//!   (`zvimg-convert.1`, `zvimg-bench-boot.1`, …);
//! - `OUTDIR/completions/bash/{zvmount,zvimg}`,
//!   `OUTDIR/completions/zsh/_{zvmount,zvimg}`,
//!   `OUTDIR/completions/fish/{zvmount,zvimg}.fish`.
//!
//! The Debian package (`cargo deb`, see `[package.metadata.deb]` in the root
//! Cargo.toml) picks them up from `packaging/generated/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Parser, Debug)]
#[command(name = "xtask", about = "Build chores for zvmount")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Write man pages and shell completions for zvmount and zvimg.
    Dist {
        /// Where to write them (created if missing).
        outdir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().task {
        Task::Dist { outdir } => dist(&outdir),
    }
}

fn dist(outdir: &Path) -> anyhow::Result<()> {
    let commands = [zvmount::cli::Cli::command(), zvimg::cli::Cli::command()];
    let man = outdir.join("man");
    create_dir(&man)?;
    let mut pages = 0;
    for cmd in &commands {
        pages += write_man_pages(cmd.clone(), &man)?;
    }
    for (shell, dir, file) in [
        (Shell::Bash, "bash", "{}"),
        (Shell::Zsh, "zsh", "_{}"),
        (Shell::Fish, "fish", "{}.fish"),
    ] {
        let dir = outdir.join("completions").join(dir);
        create_dir(&dir)?;
        for cmd in &commands {
            let name = cmd.get_name().to_owned();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut script);
            let path = dir.join(file.replace("{}", &name));
            std::fs::write(&path, script)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    println!(
        "wrote {pages} man pages and completions for bash, zsh and fish to {}",
        outdir.display()
    );
    Ok(())
}

/// Writes `cmd`'s page and, recursively, one per subcommand (named
/// `parent-sub.1`, as git and cargo do); returns how many.
fn write_man_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<usize> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Fills in every subcommand's bin name ("zvimg bench boot") for its
    // usage line.
    cmd.build();
    write_page_tree(&cmd, dir)
}

fn write_page_tree(cmd: &clap::Command, dir: &Path) -> anyhow::Result<usize> {
    let name = cmd
        .get_bin_name()
        .unwrap_or(cmd.get_name())
        .replace(' ', "-");
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone().display_name(&name))
        .render(&mut page)
        .with_context(|| format!("cannot render the man page of {name}"))?;
    if page.is_empty() {
        bail!("empty man page for {name}");
    }
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    let mut count = 1;
    for sub in cmd.get_subcommands() {
        count += write_page_tree(sub, dir)?;
    }
    Ok(count)
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
