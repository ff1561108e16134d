//! `zvimg cache ls|rm|gc`: what the host cache holds, removing an image,
//! enforcing the size cap.

use std::path::PathBuf;
use std::time::SystemTime;

use zvmount::cache::host::gc;

use crate::convert::human;

/// Where zvmount caches by default (when run as root).
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/zvmount";

/// Flags of `zvimg cache`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The host cache directory.
    #[arg(long, value_name = "DIR", env = "ZVMOUNT_CACHE_DIR", default_value = DEFAULT_CACHE_DIR, global = true)]
    pub cache_dir: PathBuf,
    /// What to do with the cache.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `zvimg cache`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Images in the cache: size, blocks present/total, last use.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove one image (refused while a zvmount uses it).
    Rm {
        /// The image id, as `ls` shows it.
        id: String,
    },
    /// Evict images not in use, least recently used first, down to SIZE
    /// (and until 5% of the file system is free).
    Gc {
        /// Size the cache is brought down to, e.g. 10GiB.
        #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = zvmount::util::parse_size)]
        max_size: u64,
    },
}

/// Runs `zvimg cache ls|rm|gc` on the cache directory.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = &args.cache_dir;
    if !root.join("images").is_dir() {
        anyhow::bail!(
            "{} is not a zvmount host cache (no images/ in it)",
            root.display()
        );
    }
    match args.command {
        Command::Ls { json } => {
            let list = gc::list(root);
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:<52} {:>10} {:>10} {:>15} {:>9} {:>6}  SOURCE",
                "ID", "DISK", "ON DISK", "BLOCKS", "LAST USE", "IN USE"
            );
            for s in &list {
                println!(
                    "{:<52} {:>10} {:>10} {:>15} {:>9} {:>6}  {}",
                    s.id,
                    human(s.disk_size),
                    human(s.cached_bytes),
                    format!("{}/{}", s.blocks_present, s.blocks_total),
                    if s.damaged {
                        "-".to_string()
                    } else {
                        ago(s.last_use)
                    },
                    if s.in_use { "yes" } else { "no" },
                    s.source
                );
            }
            let total: u64 = list.iter().map(|s| s.cached_bytes).sum();
            println!("{} images, {} on disk", list.len(), human(total));
        }
        Command::Rm { id } => {
            let freed = gc::remove(root, &id)?;
            println!("removed {id} ({} freed)", human(freed));
        }
        Command::Gc { max_size } => {
            let report = gc::collect(root, max_size, 0);
            for id in &report.removed {
                println!("evicted {id}");
            }
            println!(
                "{} images evicted, {} freed; {} in the cache",
                report.removed.len(),
                human(report.freed),
                human(report.usage_after)
            );
            if report.usage_after > max_size {
                println!("still over {}: the rest is in use", human(max_size));
            }
        }
    }
    Ok(())
}

/// "3m", "2h", "5d" since `t`.
fn ago(t: SystemTime) -> String {
    let s = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
