//! `zvimg hydrate SOURCE`: fill the host cache with a whole image without
//! mounting it (pre-warm a host before VMs are placed on it).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use zvmount::cache::{BlockCache, HostCache};
use zvmount::hydrate::{HydrateOptions, hydrate};
use zvmount::image::{Image, ImageLayout, ImageOptions, SidecarSource, persist};
use zvmount::metrics::Metrics;
use zvstore::open_source;

use crate::convert::human;
use crate::{SourceArgs, progress, runtime};

/// How often `zvimg hydrate` prints a progress line when stderr is not a
/// terminal (no progress bar).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Flags of `zvimg hydrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The host cache to fill (the one zvmount uses).
    #[arg(long, value_name = "DIR", env = "ZVMOUNT_CACHE_DIR", default_value = crate::cache::DEFAULT_CACHE_DIR)]
    pub cache_dir: std::path::PathBuf,
    /// Size cap of the host cache (least recently used images not in use
    /// are evicted to make room).
    #[arg(long, value_name = "SIZE", default_value = "10GiB", value_parser = zvmount::util::parse_size)]
    pub cache_size: u64,
    /// At most this many MB/s from the store (default: unlimited).
    #[arg(long, value_name = "MB/s")]
    pub rate: Option<f64>,
    /// Ignore the sidecar (blocks are then not checked against its hashes).
    #[arg(long)]
    pub no_sidecar: bool,
    /// Where the image is and how to reach it.
    #[command(flatten)]
    pub source: SourceArgs,
    /// The image: a local path, s3://bucket/key or an https:// URL.
    pub image: String,
}

/// Runs `zvimg hydrate`: fetches every block the host cache lacks, checked
/// against the sidecar when there is one, and reports progress.
pub fn run(args: Args) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        if args.cache_dir.as_os_str().is_empty() || args.cache_dir.as_os_str() == "none" {
            anyhow::bail!(
                "zvimg hydrate fills a host cache: --cache-dir (or ZVMOUNT_CACHE_DIR) must name one, not `{}`",
                args.cache_dir.display()
            );
        }
        let store_config = args.source.store.to_config();
        let io_timeout = store_config.io_timeout;
        let (store, key) = open_source(&args.image, &store_config).await?;
        let sidecar = if args.no_sidecar {
            SidecarSource::Ignore
        } else {
            SidecarSource::Auto
        };
        let layout = ImageLayout::load(store.as_ref(), &key, &sidecar).await?;
        let host = Arc::new(
            HostCache::open(&args.cache_dir, args.cache_size)
                .with_context(|| format!("cannot open the host cache {}", args.cache_dir.display()))?,
        );
        let entry = host.attach(&persist::cache_spec(&layout))?;
        let block_size = u64::from(layout.index.block_size());
        let metrics = Arc::new(Metrics::default());
        let options = ImageOptions {
            readahead_blocks: 0,
            prefetch_budget_bytes: 0,
            ..ImageOptions::default()
        };
        let image = Image::new(
            store,
            layout,
            Arc::clone(&host) as Arc<dyn BlockCache>,
            Arc::clone(&metrics),
            options,
        );
        let total = entry.record_blocks();
        let bar = progress::bytes_bar(total * block_size, "hydrate");
        let started = Instant::now();
        let last_line = std::sync::Mutex::new(Instant::now());
        let done = hydrate(
            Arc::clone(&image),
            Arc::clone(&host),
            Arc::clone(&entry),
            HydrateOptions {
                rate: args.rate.map(|mb| (mb.max(0.0) * 1e6) as u64),
                // A command gives up on a store that stays down (a mount
                // would wait for it).
                give_up_after: Some(io_timeout).filter(|t| !t.is_zero()),
                ..HydrateOptions::default()
            },
            |p| {
                bar.set_position(p.done * block_size);
                // Without a terminal (a service, a pipe): a line now and then.
                let mut last = last_line.lock().unwrap_or_else(|e| e.into_inner());
                if bar.is_hidden() && last.elapsed() >= PROGRESS_EVERY {
                    *last = Instant::now();
                    eprintln!(
                        "{}: {}/{} blocks local, {:.1} MB fetched",
                        args.image,
                        p.done,
                        p.total,
                        p.bytes as f64 / 1e6
                    );
                }
            },
        )
        .await;
        bar.finish_and_clear();
        // A block that fails its checks (or the object replaced or gone)
        // will not mend by waiting: say which, and fail.
        let done = match done {
            Ok(done) => done,
            Err(stopped) => anyhow::bail!("{}: {stopped}", args.image),
        };
        let host_stats = host.stats();
        drop(image);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{}: {}/{} blocks in the host cache ({} fetched in {secs:.1}s, {:.1} MB/s){}",
            args.image,
            done.done,
            done.total,
            human(done.bytes),
            done.bytes as f64 / secs.max(1e-3) / 1e6,
            if done.done == done.total {
                format!("; local copy: {}", entry.data_path().display())
            } else {
                String::new()
            }
        );
        if host_stats.write_errors > 0 || done.done < done.total {
            anyhow::bail!(
                "the host cache in {} did not take the whole image (cache full or its disk failing)",
                args.cache_dir.display()
            );
        }
        Ok(())
    })
}
