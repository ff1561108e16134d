//! Sources → served files: expands directory/prefix sources, opens each
//! image (store, layout, caches) and renders the stats file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, anyhow, bail};

use super::{MountConfig, default_name};
use crate::cache::{BlockCache, DiskCache, MemoryCache, NoCache, TieredCache};
use crate::fuse::{DiskFile, RawFileDisk, ServedFile, StatsSource};
use crate::image::{
    Image, ImageDisk, ImageLayout, ImageOptions, MountContext, MountLimits, SidecarSource,
};
use crate::metrics::Metrics;
use crate::telemetry::{CacheGauge, CacheUsage, ImageTelemetry, MountTelemetry};
use zvstore::{ObjectStore, open_source};

/// One source, opened.
pub(super) struct Opened {
    pub served: ServedFile,
    pub image: Option<Arc<Image>>,
    /// What the stats file says about it.
    pub summary: serde_json::Value,
}

impl Opened {
    /// Writes the blocks this image saw read, in first-read order, one
    /// number per line. With several images each gets `FILE.<name>`.
    pub fn write_profile(&self, path: &Path, several: bool) -> anyhow::Result<()> {
        let Some(recorder) = self.image.as_ref().and_then(|i| i.recorder()) else {
            return Ok(());
        };
        let target = if several {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{}", self.served.name));
            p
        } else {
            path.as_os_str().to_owned()
        };
        let target = PathBuf::from(target);
        recorder
            .write_to(&target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        tracing::info!(file = %target.display(), blocks = recorder.blocks().len(), "boot profile written");
        Ok(())
    }
}

/// Opens every source of `config`, in order, reading through `cache`, into
/// one mount whose own (mount-wide) counters are `metrics`; each image
/// counts into its own [`Metrics`].
pub(super) async fn open_all(
    config: &MountConfig,
    cache: Arc<dyn BlockCache>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Vec<Opened>> {
    // Every store counts its outages into the mount's counters.
    let config = &MountConfig {
        store: zvstore::StoreArgs {
            outage_stats: Some(Arc::clone(&metrics.outage)),
            ..config.store.clone()
        },
        ..config.clone()
    };
    let options = image_options(config);
    // One budget, one set of decode slots and one cache for every image:
    // K images must not hold K budgets in flight.
    let mount = MountContext::new(cache, metrics, MountLimits::from(&options));
    let mut opened = Vec::new();
    let mut names = config.names.iter();
    for source in &config.sources {
        if config.raw_passthrough {
            let disk = RawFileDisk::open(Path::new(source))
                .with_context(|| format!("cannot open {source}"))?;
            let name = names
                .next()
                .cloned()
                .unwrap_or_else(|| default_name(source));
            let mtime = std::fs::metadata(source)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            opened.push(Opened {
                summary: serde_json::json!({ "name": name, "origin": source, "size": disk.size(), "raw": true }),
                served: ServedFile { name, disk: Arc::new(disk), mtime, origin: source.clone(), metrics: Arc::default() },
                image: None,
            });
            continue;
        }
        let (store, key) = open_source(source, &config.store)
            .await
            .with_context(|| format!("cannot open {source}"))?;
        let keys = if is_collection(source, &key) {
            let keys = list_images(store.as_ref(), &key).await?;
            if keys.is_empty() {
                bail!("{source}: no *.zvhd2 images under it");
            }
            keys
        } else {
            vec![key]
        };
        for key in keys {
            let name = names.next().cloned().unwrap_or_else(|| default_name(&key));
            let one = open_image(config, &store, &key, name, &mount, options.clone()).await?;
            opened.push(one);
        }
    }
    if let Some(extra) = names.next() {
        bail!(
            "--name {extra:?} has no image to name ({} images)",
            opened.len()
        );
    }
    // Replays start once every image is open, so each one's share of the
    // cache is its share of the whole mount. A profile being recorded must
    // see the guest's own order instead.
    if config.record_profile.is_none() {
        for image in opened.iter().filter_map(|o| o.image.as_ref()) {
            if let Some(task) = image.start_profile_prefetch() {
                tracing::info!(image = %image.name(), "replaying the sidecar's boot profile");
                drop(task);
            }
        }
    }
    Ok(opened)
}

/// Whether `source` names a directory or prefix rather than one image.
fn is_collection(source: &str, key: &str) -> bool {
    source.ends_with('/')
        || key.ends_with('/')
        || (!source.contains("://") && Path::new(source).is_dir())
}

async fn list_images(store: &dyn ObjectStore, prefix: &str) -> anyhow::Result<Vec<String>> {
    let listed = store
        .list(prefix)
        .await
        .with_context(|| format!("cannot list {}", store.location(prefix)))?;
    Ok(listed
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with(".zvhd2"))
        .collect())
}

async fn open_image(
    config: &MountConfig,
    store: &Arc<dyn ObjectStore>,
    key: &str,
    name: String,
    mount: &Arc<MountContext>,
    options: ImageOptions,
) -> anyhow::Result<Opened> {
    let sidecar = if config.no_sidecar {
        SidecarSource::Ignore
    } else if let Some(location) = &config.sidecar {
        let (sidecar_store, sidecar_key) = open_source(location, &config.store)
            .await
            .with_context(|| format!("cannot open sidecar {location}"))?;
        SidecarSource::Object(sidecar_store, sidecar_key)
    } else {
        SidecarSource::Auto
    };
    let location = store.location(key);
    let layout = ImageLayout::load(store.as_ref(), key, &sidecar)
        .await
        .with_context(|| format!("cannot open image {location}"))?;
    tracing::info!(
        image = %location,
        sidecar = layout.sidecar.is_some(),
        requests = layout.requests,
        "image opened"
    );
    let mtime = layout.meta.modified.unwrap_or_else(SystemTime::now);
    let summary = serde_json::json!({
        "name": name,
        "origin": location,
        "disk_size": layout.header.disk_size(),
        "sidecar": layout.sidecar.is_some(),
        "open_requests": layout.requests,
    });
    // Each image counts on its own; the mount's totals are sums.
    let metrics = Arc::new(Metrics::default());
    let image = Image::in_mount_counting(
        Arc::clone(store),
        layout,
        mount,
        options,
        Arc::clone(&metrics),
    );
    Ok(Opened {
        served: ServedFile {
            name,
            disk: Arc::new(ImageDisk::new(Arc::clone(&image))),
            mtime,
            origin: location,
            metrics,
        },
        image: Some(image),
        summary,
    })
}

/// How every image of the mount reads, per the mount's flags.
fn image_options(config: &MountConfig) -> ImageOptions {
    ImageOptions {
        size_mode: config.size_mode,
        readahead_blocks: config.readahead as usize,
        prefetch_budget_bytes: config.prefetch_budget,
        record_access: config.record_profile.is_some(),
        ..ImageOptions::default()
    }
}

/// The mount's block cache, and a gauge per tier for the mount's
/// telemetry. Opening a disk cache walks its directory: call it outside
/// the async runtime.
pub(super) fn build_cache(
    config: &MountConfig,
) -> anyhow::Result<(Arc<dyn BlockCache>, Vec<CacheGauge>)> {
    let mut gauges = Vec::new();
    let memory: Arc<dyn BlockCache> = if config.mem_cache == 0 {
        Arc::new(NoCache)
    } else {
        let memory = Arc::new(MemoryCache::new(config.mem_cache));
        let probe = Arc::clone(&memory);
        gauges.push(CacheGauge {
            tier: "memory",
            usage: Arc::new(move || {
                let s = probe.stats();
                CacheUsage {
                    bytes: s.bytes,
                    capacity: s.capacity,
                }
            }),
        });
        memory
    };
    let cache: Arc<dyn BlockCache> = match &config.disk_cache {
        None => memory,
        Some((dir, size)) => {
            let disk =
                Arc::new(DiskCache::open(dir, *size).map_err(|e| {
                    anyhow!("cannot open the disk cache in {}: {e}", dir.display())
                })?);
            let probe = Arc::clone(&disk);
            gauges.push(CacheGauge {
                tier: "disk",
                usage: Arc::new(move || {
                    let s = probe.stats();
                    CacheUsage {
                        bytes: s.bytes,
                        capacity: s.capacity,
                    }
                }),
            });
            Arc::new(TieredCache::new(memory, disk))
        }
    };
    Ok((cache, gauges))
}

/// What the mount reports: each served file's counters and summary, the
/// mount-wide counters (`mount`: the prefetch budget) and the cache tiers.
pub(super) fn telemetry(
    mountpoint: &Path,
    opened: &[Opened],
    mount: Arc<Metrics>,
    caches: Vec<CacheGauge>,
) -> MountTelemetry {
    let images = opened
        .iter()
        .map(|o| ImageTelemetry {
            name: o.served.name.clone(),
            metrics: Arc::clone(&o.served.metrics),
            summary: o.summary.as_object().cloned().unwrap_or_default(),
        })
        .collect();
    MountTelemetry::new(mountpoint.display().to_string(), images, caches).with_mount_metrics(mount)
}

/// Renders the stats file from the mount's telemetry each time it is read.
pub(super) fn stats_source(telemetry: Arc<MountTelemetry>) -> StatsSource {
    Arc::new(move || telemetry.stats_file())
}
