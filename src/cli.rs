//! The `zvmount` command line, as a clap definition: parsed by the binary
//! and read by `xtask` to generate the man page and shell completions, so
//! the two can never disagree.

use std::path::PathBuf;

use clap::Parser;
use zvstore::StoreArgs;

use crate::daemon::SizeMode;
use crate::util::parse_size;

/// Mount ZVHD2 disk images from object storage as read-only raw files.
///
/// Each SOURCE (a local path, s3://BUCKET/KEY or https://URL) appears in
/// MOUNTPOINT as `<name>.raw`, a file of the disk's size whose bytes are the
/// decoded image, fetched block by block as they are read. A SOURCE that is
/// a directory or ends in `/` mounts every `*.zvhd2` under it.
///
/// Boot a VM from it through a qcow2 overlay:
///
///   qemu-img create -f qcow2 -b MOUNTPOINT/disk.raw -F raw overlay.qcow2
///
/// Or describe the mount in a file (`zvmount --config /etc/zvmount/web.toml`;
/// `--print-config` shows the result) and run it as a service with the
/// `zvmount@.service` systemd template (`systemctl start zvmount@web`).
///
/// Stop with Ctrl-C or SIGTERM (or `fusermount3 -u MOUNTPOINT`).
/// Counters: `cat MOUNTPOINT/.zvmount-stats.json`.
#[derive(Parser, Debug)]
#[command(
    name = "zvmount",
    version,
    verbatim_doc_comment,
    override_usage = "zvmount [OPTIONS] SOURCE... MOUNTPOINT\n       zvmount [OPTIONS] --config FILE [SOURCE...] [MOUNTPOINT]"
)]
pub struct Cli {
    /// Images to serve (SOURCE...), then the directory to mount on
    /// (MOUNTPOINT: an existing, empty directory). With --config both are
    /// optional, and a single argument is the MOUNTPOINT.
    #[arg(
        required_unless_present_any = ["config", "print_config"],
        value_name = "PATH"
    )]
    pub paths: Vec<String>,

    /// Read the mount's settings and images from a TOML file (keys are the
    /// long options with `_`, images are `[[image]]` tables with `source`,
    /// `name`, `sidecar` and store settings); options given here win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the merged settings (config file + options) as a config file,
    /// and exit.
    #[arg(long)]
    pub print_config: bool,

    /// File name for an image inside the mount (repeat in SOURCE order;
    /// default: the source's basename with .zvhd2 replaced by .raw).
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,

    /// Sidecar index to use (default: SOURCE.zvidx when it exists). Only
    /// with a single SOURCE.
    #[arg(long, value_name = "LOCATION", conflicts_with = "no_sidecar")]
    pub sidecar: Option<String>,

    /// Ignore sidecar indexes; read the image's own index and bitmap.
    #[arg(long)]
    pub no_sidecar: bool,

    /// Memory for decoded blocks (LRU), e.g. 512MiB, 2GiB.
    #[arg(long, value_name = "SIZE", default_value = "512MiB", value_parser = parse_size)]
    pub mem_cache: u64,

    /// Directory for a persistent cache of decoded blocks.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Size limit of the --cache-dir cache.
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = parse_size, requires = "cache_dir")]
    pub disk_cache: u64,

    /// Blocks to fetch ahead of a sequential reader (0 disables).
    #[arg(long, value_name = "BLOCKS", default_value_t = 4)]
    pub readahead: u32,

    /// Memory that readahead and profile prefetch may hold in flight.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub prefetch_budget: u64,

    /// Size of the served file: `orig`, the disk that was converted, or
    /// `curr`, rounded up to a whole GiB as Huawei's tools show it.
    #[arg(long = "size", default_value_t = SizeMode::Orig)]
    pub size_mode: SizeMode,

    /// Let other users (and root) read the mount; needs `user_allow_other`
    /// in /etc/fuse.conf when not run as root.
    #[arg(long)]
    pub allow_other: bool,

    /// Record the blocks read, in order, and write them to FILE on unmount
    /// (a boot profile for `zvimg index --boot-profile`).
    #[arg(long, value_name = "FILE")]
    pub record_profile: Option<PathBuf>,

    /// Detach once the mount is up (errors before that still reach the
    /// terminal).
    #[arg(long)]
    pub daemon: bool,

    /// Write logs to FILE (default: stderr; with --daemon, discarded).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// More logging: -v debug, -vv trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Serve each SOURCE as a plain raw file, without decoding (to measure
    /// the FUSE path on its own).
    #[arg(long, hide = true)]
    pub raw_passthrough: bool,

    /// Set by --daemon on the detached child: say "ready" on stdout once
    /// mounted, then drop the terminal.
    #[arg(long, hide = true)]
    pub daemon_child: bool,

    /// Store options (region, endpoint, credentials profile, timeouts).
    #[command(flatten)]
    pub store: StoreArgs,
}

impl Cli {
    /// The SOURCE arguments: every path but the last, or none when a
    /// config file is given with a single path.
    pub fn sources(&self) -> &[String] {
        match self.paths.as_slice() {
            [_] if self.config.is_some() => &[],
            [sources @ .., _] => sources,
            [] => &[],
        }
    }

    /// The MOUNTPOINT argument: the last path, if any.
    pub fn mountpoint(&self) -> Option<PathBuf> {
        self.paths.last().map(PathBuf::from)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn the_last_path_is_the_mountpoint() {
        use clap::Parser;
        let cli = super::Cli::parse_from(["zvmount", "a.zvhd2", "b.zvhd2", "/mnt"]);
        assert_eq!(cli.sources(), ["a.zvhd2", "b.zvhd2"]);
        assert_eq!(cli.mountpoint().unwrap(), std::path::Path::new("/mnt"));
        let cli = super::Cli::parse_from(["zvmount", "--config", "c.toml", "/mnt"]);
        assert!(cli.sources().is_empty());
        assert_eq!(cli.mountpoint().unwrap(), std::path::Path::new("/mnt"));
        let cli = super::Cli::parse_from(["zvmount", "--config", "c.toml"]);
        assert!(cli.sources().is_empty() && cli.mountpoint().is_none());
        assert!(super::Cli::try_parse_from(["zvmount"]).is_err());
    }
}
