//! Sources → served files: expands directory/prefix sources, opens each
//! image (store, layout, caches) and renders the stats file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, anyhow, bail};

use super::{MountConfig, SourceSpec, default_name};
use crate::cache::host::CacheEntry;
use crate::cache::{BlockCache, HostCache, MemoryCache, NoCache, TieredCache};
use crate::fuse::{DiskFile, RawFileDisk, ServedFile, StatsSource};
use crate::image::{
    Image, ImageDisk, ImageError, ImageLayout, ImageOptions, MountContext, MountLimits,
    SidecarSource,
};
use crate::metrics::Metrics;
use crate::telemetry::{CacheGauge, CacheUsage, ImageTelemetry, MountTelemetry};
use zvstore::{ObjectStore, open_source};

/// One source, opened.
pub(super) struct Opened {
    pub served: ServedFile,
    pub image: Option<Arc<Image>>,
    /// The image's entry in the host cache, when there is one.
    pub cached: Option<(Arc<HostCache>, Arc<CacheEntry>)>,
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
    (cache, host): Caches,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Vec<Opened>> {
    // Every store counts its outages into the mount's counters.
    let config = &MountConfig {
        store: zvstore::StoreConfig {
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
    for spec in &config.sources {
        let source = &spec.location;
        if config.raw_passthrough {
            let disk = RawFileDisk::open(Path::new(source))
                .with_context(|| format!("cannot open {source}"))?;
            let name = spec.name.clone().unwrap_or_else(|| default_name(source));
            let mtime = std::fs::metadata(source)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            opened.push(Opened {
                summary: serde_json::json!({ "name": name, "origin": source, "size": disk.size(), "raw": true }),
                served: ServedFile { name, disk: Arc::new(disk), mtime, origin: source.clone(), metrics: Arc::default() },
                image: None,
                cached: None,
            });
            continue;
        }
        let store_args = store_args(config, spec);
        let (store, key) = open_source(source, &store_args)
            .await
            .with_context(|| format!("cannot open {source}"))?;
        let keys = if is_collection(source, &key) {
            if spec.name.is_some() || spec.sidecar.is_some() {
                bail!("{source}: a directory or prefix of images takes no name or sidecar");
            }
            let keys = list_images(store.as_ref(), &key).await?;
            if keys.is_empty() {
                bail!("{source}: no *.zvhd2 images under it");
            }
            keys
        } else {
            vec![key]
        };
        for key in keys {
            let name = spec.name.clone().unwrap_or_else(|| default_name(&key));
            let one = open_image(
                sidecar_source(config, spec).await?,
                &store,
                &key,
                name,
                &mount,
                options.clone(),
                host.clone(),
            )
            .await?;
            opened.push(one);
        }
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

/// The store settings of `spec`: its own (a config file's `[[image]]`),
/// counting outages into the mount's stats like the rest, or the mount's.
fn store_args(config: &MountConfig, spec: &SourceSpec) -> zvstore::StoreConfig {
    match &spec.store {
        Some(own) => zvstore::StoreConfig {
            outage_stats: config.store.outage_stats.clone(),
            ..own.clone()
        },
        None => config.store.clone(),
    }
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

/// Where `spec`'s sidecar comes from.
async fn sidecar_source(config: &MountConfig, spec: &SourceSpec) -> anyhow::Result<SidecarSource> {
    Ok(if config.no_sidecar {
        SidecarSource::Ignore
    } else if let Some(location) = &spec.sidecar {
        let (sidecar_store, sidecar_key) =
            open_source(location, &store_args(config, spec))
                .await
                .with_context(|| format!("cannot open sidecar {location}"))?;
        SidecarSource::Object(sidecar_store, sidecar_key)
    } else {
        SidecarSource::Auto
    })
}

async fn open_image(
    sidecar: SidecarSource,
    store: &Arc<dyn ObjectStore>,
    key: &str,
    name: String,
    mount: &Arc<MountContext>,
    options: ImageOptions,
    host: Option<Arc<HostCache>>,
) -> anyhow::Result<Opened> {
    let location = store.location(key);
    let load = ImageLayout::load(store.as_ref(), key, &sidecar);
    // An image the host cache holds whole does not need the store: wait
    // for it briefly (to recheck the image's identity), not --io-timeout.
    let loaded = match host.as_deref().filter(|h| holds_complete(h, &location)) {
        Some(_) => match tokio::time::timeout(COMPLETE_OPEN_WAIT, load).await {
            Ok(loaded) => loaded,
            Err(_) => Err(ImageError::Store(zvstore::StoreError::Transient {
                location: location.clone(),
                op: "open".into(),
                attempt: 1,
                detail: format!(
                    "no answer within {}s, and the host cache holds the whole image",
                    COMPLETE_OPEN_WAIT.as_secs()
                ),
            })),
        },
        None => load.await,
    };
    let layout = match loaded {
        Ok(layout) => layout,
        Err(e) => match host
            .as_deref()
            .and_then(|h| cached_layout(h, &location, &e))
        {
            Some(layout) => layout,
            None => return Err(e).context("cannot open image"),
        },
    };
    let cached = match &host {
        Some(h) => match h.attach(&crate::image::persist::cache_spec(&layout)) {
            Ok(entry) => Some((Arc::clone(h), entry)),
            Err(e) => {
                tracing::warn!(image = %location, "not using the host cache for this image: {e}");
                None
            }
        },
        None => None,
    };
    if layout.requests == 0 && !cached.as_ref().is_some_and(|(_, e)| e.is_complete()) {
        bail!(
            "cannot open image {location}: the store is unreachable and the host cache does not hold all of it"
        );
    }
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
    // A complete entry cached by an earlier run: check it against the
    // sidecar in the background, after which new opens use passthrough.
    if let Some((host, entry)) = &cached
        && entry.is_complete()
        && !entry.is_local()
    {
        let (host, entry) = (Arc::clone(host), Arc::clone(entry));
        tokio::task::spawn_blocking(move || match entry.verify_present() {
            Ok(bad) => host.note_bad_blocks(bad),
            Err(e) => {
                tracing::warn!(image = %entry.id(), "cannot check the host cache entry: {e}")
            }
        });
    }
    Ok(Opened {
        served: ServedFile {
            name,
            disk: Arc::new(match &cached {
                Some((_, entry)) => {
                    ImageDisk::with_cache_entry(Arc::clone(&image), Arc::clone(entry))
                }
                None => ImageDisk::new(Arc::clone(&image)),
            }),
            mtime,
            origin: location,
            metrics,
        },
        image: Some(image),
        cached,
        summary,
    })
}

/// The layout the host cache kept for `location`, when the store could not
/// be reached to load it (`error`): a fully cached image then still mounts.
/// How long a mount waits for the store to open an image whose every
/// block the host cache holds, before it opens it from the cache.
const COMPLETE_OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the host cache holds every block of the image last opened from
/// `location`.
fn holds_complete(host: &HostCache, location: &str) -> bool {
    let Some((id, bytes)) = host.find_by_source(location) else {
        return false;
    };
    let Some(layout) = crate::image::persist::decode(&bytes) else {
        return false;
    };
    layout.cache_id() == id
        && host
            .attach(&crate::image::persist::cache_spec(&layout))
            .is_ok_and(|e| e.is_complete())
}

fn cached_layout(host: &HostCache, location: &str, error: &ImageError) -> Option<ImageLayout> {
    let ImageError::Store(e) = error else {
        return None;
    };
    // Only "could not reach it": a missing or forbidden object is an answer.
    if e.is_not_found()
        || matches!(
            e,
            zvstore::StoreError::Forbidden { .. } | zvstore::StoreError::Changed { .. }
        )
    {
        return None;
    }
    let (id, bytes) = host.find_by_source(location)?;
    let layout = crate::image::persist::decode(&bytes)?;
    if layout.cache_id() != id {
        return None;
    }
    tracing::warn!(
        image = %location,
        cache_id = %id,
        "store unreachable ({e}); opening the image from the host cache without rechecking its identity"
    );
    Some(layout)
}

/// Starts background hydration of every image that has a host-cache entry.
/// Progress goes to the service manager as `STATUS=` lines.
pub(super) fn start_hydration(runtime: &tokio::runtime::Runtime, opened: &[Opened], rate: u64) {
    let mut any = false;
    let mut tasks = Vec::new();
    let mut counters = Vec::new();
    // The rate is the mount's: shared evenly by the images it hydrates.
    let hydrating = opened
        .iter()
        .filter(|o| o.image.is_some() && o.cached.is_some())
        .count()
        .max(1) as u64;
    let rate = match rate {
        0 => 0,
        r => (r / hydrating).max(1),
    };
    for o in opened {
        let (Some(image), Some((host, entry))) = (&o.image, &o.cached) else {
            continue;
        };
        any = true;
        let options = if rate > 0 {
            // Capped: one block at a time keeps the rate smooth.
            crate::hydrate::HydrateOptions {
                rate: Some(rate),
                run_blocks: 1,
                concurrency: 1,
                ..Default::default()
            }
        } else {
            crate::hydrate::HydrateOptions::default()
        };
        tracing::info!(image = %image.name(), missing = entry.record_blocks() - entry.present_blocks(), "hydrating in the background");
        if !counters.iter().any(|c| Arc::ptr_eq(c, image.metrics())) {
            counters.push(Arc::clone(image.metrics()));
        }
        tasks.push(runtime.spawn(crate::hydrate::hydrate(
            Arc::clone(image),
            Arc::clone(host),
            Arc::clone(entry),
            options,
            |_| {},
        )));
    }
    if !any {
        tracing::warn!(
            "--hydrate: no image has a usable host-cache entry (no --cache-dir, or see the warnings above); nothing to hydrate into"
        );
        return;
    }
    runtime.spawn(super::notify::report_hydration(
        counters,
        super::notify::HYDRATION_STATUS_EVERY,
        async move {
            futures::future::join_all(tasks).await;
        },
    ));
}

/// How every image of the mount reads, per the mount's flags.
fn image_options(config: &MountConfig) -> ImageOptions {
    ImageOptions {
        size_mode: config.size_mode,
        readahead_blocks: config.readahead as usize,
        prefetch_budget_bytes: config.prefetch_budget,
        fetch_align: config.fetch_align,
        record_access: config.record_profile.is_some(),
        ..ImageOptions::default()
    }
}

/// The mount's caches: memory in front of the host cache (when there is
/// one), and the host cache itself (images attach to it).
pub(super) type Caches = (Arc<dyn BlockCache>, Option<Arc<HostCache>>);

/// The mount's block caches. Opening the host cache only creates its
/// directories and reads their list (no walk over blocks), but call it
/// outside the async runtime all the same.
///
/// Also returns a usage gauge per tier for the mount's telemetry (the
/// disk tier's is the whole host cache, which every process of the host
/// shares).
pub(super) fn build_cache(config: &MountConfig) -> anyhow::Result<(Caches, Vec<CacheGauge>)> {
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
                    counters: None,
                }
            }),
        });
        memory
    };
    let caches = match &config.disk_cache {
        None => (memory, None),
        Some((dir, size)) => {
            let host =
                Arc::new(HostCache::open(dir, *size).map_err(|e| {
                    anyhow!("cannot open the host cache in {}: {e}", dir.display())
                })?);
            let probe = Arc::clone(&host);
            gauges.push(CacheGauge {
                tier: "disk",
                // Read from the directory at each scrape: other processes
                // of the host fill and evict the same cache.
                usage: Arc::new(move || {
                    use crate::cache::host::gc;
                    let bytes = gc::usage(probe.root());
                    CacheUsage {
                        bytes,
                        capacity: gc::effective_capacity(
                            probe.root(),
                            probe.capacity_bytes(),
                            bytes,
                        ),
                        counters: Some(probe.stats()),
                    }
                }),
            });
            let tiered: Arc<dyn BlockCache> = Arc::new(TieredCache::new(
                memory,
                Arc::clone(&host) as Arc<dyn BlockCache>,
            ));
            (tiered, Some(host))
        }
    };
    Ok((caches, gauges))
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
