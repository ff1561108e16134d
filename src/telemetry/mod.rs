//! What a running mount tells its operator: the stats file
//! (`.zvmount-stats.json`), the Prometheus exporter (`--metrics-addr`) and
//! the figures both are made of.
//!
//! Counting happens elsewhere ([`crate::metrics::Metrics`], one per served
//! image); this module only reads those counters, adds them up into mount
//! totals and renders them. It never changes what a read does.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::metrics::{Metrics, MetricsSnapshot};

pub mod error_kind;
pub mod histogram;
pub mod prometheus;
pub mod server;

pub use server::{MetricsAddr, MetricsServer};

/// How full one cache tier is, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheUsage {
    /// Bytes of blocks held now.
    pub bytes: u64,
    /// Bytes the tier holds before it evicts.
    pub capacity: u64,
    /// This process's use of the tier, for the host (disk) cache: hits,
    /// misses, writes, fills dropped, write errors, evictions. In the
    /// stats file as `cache.disk.counters`; `None` for the memory tier,
    /// whose counters are the top-level `mem_cache_*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<crate::cache::HostCacheStats>,
}

/// Reads a cache tier's [`CacheUsage`] at the moment of asking.
pub type UsageProbe = Arc<dyn Fn() -> CacheUsage + Send + Sync>;

/// One cache tier of the mount (`memory`, `disk`), shared by its images.
#[derive(Clone)]
pub struct CacheGauge {
    /// Tier name: the `tier` label and the stats file's key.
    pub tier: &'static str,
    /// Asked on every scrape and stats read.
    pub usage: UsageProbe,
}

impl fmt::Debug for CacheGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheGauge")
            .field("tier", &self.tier)
            .finish_non_exhaustive()
    }
}

/// One served file's counters and what the stats file says about it.
#[derive(Clone, Debug)]
pub struct ImageTelemetry {
    /// The served file name (`disk.raw`): the `image` label.
    pub name: String,
    /// The image's counters.
    pub metrics: Arc<Metrics>,
    /// Fixed facts shown beside the counters (origin, size, sidecar, …);
    /// never a credential: origins are already redacted by the store.
    pub summary: Map<String, Value>,
}

/// Stats keys that belong to the mount, not to one image (the mount-wide
/// prefetch budget; the outage breaker every store of the daemon shares):
/// counted in the mount's own [`Metrics`], left out of each image's
/// section.
pub const MOUNT_KEYS: &[&str] = &[
    "prefetch_bytes_in_flight",
    "prefetch_bytes_peak",
    "outages",
    "outage_seconds",
    "reads_waited",
    "retries",
    "retries_by_kind",
    "outage",
];

/// Everything one mount reports: its images' counters, its own and its
/// caches.
#[derive(Clone, Debug)]
pub struct MountTelemetry {
    mountpoint: String,
    images: Vec<ImageTelemetry>,
    mount: Option<Arc<Metrics>>,
    caches: Vec<CacheGauge>,
}

impl MountTelemetry {
    /// Reports for the mount at `mountpoint` serving `images` through
    /// `caches`.
    pub fn new(
        mountpoint: impl Into<String>,
        images: Vec<ImageTelemetry>,
        caches: Vec<CacheGauge>,
    ) -> MountTelemetry {
        MountTelemetry {
            mountpoint: mountpoint.into(),
            images,
            mount: None,
            caches,
        }
    }

    /// Adds the mount-wide counters (those of [`MOUNT_KEYS`]) to the totals.
    pub fn with_mount_metrics(mut self, mount: Arc<Metrics>) -> MountTelemetry {
        self.mount = Some(mount);
        self
    }

    /// The mount-wide counters, as a JSON object.
    pub fn mount_snapshot(&self) -> Value {
        self.mount
            .as_ref()
            .map(|m| serde_json::to_value(m.snapshot()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The mountpoint, as given to [`MountTelemetry::new`].
    pub fn mountpoint(&self) -> &str {
        &self.mountpoint
    }

    /// The served images.
    pub fn images(&self) -> &[ImageTelemetry] {
        &self.images
    }

    /// Every cache tier and how full it is now.
    pub fn cache_usage(&self) -> Vec<(&'static str, CacheUsage)> {
        self.caches.iter().map(|c| (c.tier, (c.usage)())).collect()
    }

    /// Each image's counters, as JSON objects (the stats file's per-image
    /// figures), in serving order; [`MOUNT_KEYS`] are left out.
    pub fn image_snapshots(&self) -> Vec<(String, Value)> {
        self.images
            .iter()
            .map(|i| {
                let mut snap = serde_json::to_value(i.metrics.snapshot()).unwrap_or_default();
                if let Some(map) = snap.as_object_mut() {
                    for key in MOUNT_KEYS {
                        map.remove(*key);
                    }
                }
                (i.name.clone(), snap)
            })
            .collect()
    }

    /// Every image's counters added up, with the mount's own.
    fn total_value(&self) -> Value {
        let mut all: Vec<Value> = self.image_snapshots().into_iter().map(|s| s.1).collect();
        all.push(self.mount_snapshot());
        all.retain(|v| v.is_object());
        sum_values(&all)
    }

    /// The mount's totals: every image's counters added up, with the
    /// mount's own.
    pub fn totals(&self) -> MetricsSnapshot {
        serde_json::from_value(self.total_value()).unwrap_or_default()
    }

    /// The stats file's document: the mount's totals at the top level
    /// (their names are what scripts read: `fuse_reads`, `store_bytes`, …),
    /// `cache` with each tier's bytes and capacity, and `images` mapping each
    /// served file name to its summary and its own counters.
    pub fn stats_document(&self) -> Value {
        let snaps = self.image_snapshots();
        let mut doc = self.total_value();
        let Some(top) = doc.as_object_mut() else {
            return doc;
        };
        let caches: Map<String, Value> = self
            .cache_usage()
            .into_iter()
            .map(|(tier, usage)| {
                (
                    tier.to_owned(),
                    serde_json::to_value(usage).unwrap_or_default(),
                )
            })
            .collect();
        top.insert("cache".into(), Value::Object(caches));
        let mut images = Map::new();
        for (image, (name, snap)) in self.images.iter().zip(snaps) {
            let mut entry = image.summary.clone();
            if let Value::Object(counters) = snap {
                entry.extend(counters);
            }
            images.insert(name, Value::Object(entry));
        }
        top.insert("images".into(), Value::Object(images));
        doc
    }

    /// [`MountTelemetry::stats_document`] as the stats file's bytes
    /// (pretty JSON and a newline).
    pub fn stats_file(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(&self.stats_document()).unwrap_or_default();
        text.push(b'\n');
        text
    }
}

/// Adds JSON documents of the same shape: numbers add (as `u64` when both
/// are, else as `f64`), booleans "or" (an outage flag: is any image in
/// one), objects add key by key, arrays element by element; anything else
/// keeps the first value. Summing the serialized snapshots
/// rather than the fields keeps the list of counters in one place
/// ([`MetricsSnapshot`]): a counter added there is summed here unchanged.
pub fn sum_values(values: &[Value]) -> Value {
    let mut iter = values.iter();
    let Some(first) = iter.next() else {
        return serde_json::to_value(MetricsSnapshot::default()).unwrap_or_default();
    };
    let mut total = first.clone();
    for v in iter {
        add_into(&mut total, v);
    }
    total
}

fn add_into(total: &mut Value, v: &Value) {
    match (total, v) {
        (Value::Number(a), Value::Number(b)) => {
            let sum = match (a.as_u64(), b.as_u64()) {
                (Some(x), Some(y)) => Value::from(x.saturating_add(y)),
                _ => Value::from(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
            };
            *a = match sum {
                Value::Number(n) => n,
                _ => return,
            };
        }
        (Value::Bool(a), Value::Bool(b)) => *a |= *b,
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                match a.get_mut(k) {
                    Some(av) => add_into(av, bv),
                    None => {
                        a.insert(k.clone(), bv.clone());
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, bv) in b.iter().enumerate() {
                match a.get_mut(i) {
                    Some(av) => add_into(av, bv),
                    None => a.push(bv.clone()),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::StoreErrorKind;

    fn telemetry() -> (MountTelemetry, Arc<Metrics>, Arc<Metrics>) {
        let a = Arc::new(Metrics::default());
        let b = Arc::new(Metrics::default());
        let image = |name: &str, m: &Arc<Metrics>| ImageTelemetry {
            name: name.into(),
            metrics: Arc::clone(m),
            summary: serde_json::json!({ "origin": format!("s3://b/{name}") })
                .as_object()
                .cloned()
                .unwrap(),
        };
        let caches = vec![CacheGauge {
            tier: "memory",
            usage: Arc::new(|| CacheUsage {
                counters: None,
                bytes: 4096,
                capacity: 1 << 20,
            }),
        }];
        let t = MountTelemetry::new("/mnt", vec![image("a.raw", &a), image("b.raw", &b)], caches);
        (t, a, b)
    }

    #[test]
    fn totals_are_the_sum_of_images() {
        let (t, a, b) = telemetry();
        Metrics::add(&a.fuse_reads, 3);
        Metrics::add(&b.fuse_reads, 4);
        Metrics::add(&b.store_bytes, 1 << 20);
        a.store_errors.inc(StoreErrorKind::Timeout);
        b.store_errors.inc(StoreErrorKind::Timeout);
        a.miss_wait.observe(Duration::from_millis(3));
        b.miss_wait.observe(Duration::from_millis(300));
        let total = t.totals();
        assert_eq!(total.fuse_reads, 7);
        assert_eq!(total.store_bytes, 1 << 20);
        assert_eq!(total.store_errors["timeout"], 2);
        assert_eq!(total.miss_wait.count, 2);
        assert_eq!(total.miss_wait.sum_ns, 303_000_000);
    }

    #[test]
    fn stats_document_keeps_top_level_names_and_adds_images() {
        let (t, a, _b) = telemetry();
        Metrics::add(&a.fuse_reads, 2);
        let doc = t.stats_document();
        assert_eq!(doc["fuse_reads"], 2);
        assert_eq!(doc["store_bytes"], 0);
        assert_eq!(doc["images"]["a.raw"]["fuse_reads"], 2);
        assert_eq!(doc["images"]["b.raw"]["fuse_reads"], 0);
        assert_eq!(doc["images"]["a.raw"]["origin"], "s3://b/a.raw");
        assert_eq!(doc["cache"]["memory"]["capacity"], 1 << 20);
        // The top level still parses as the totals.
        let parsed: MetricsSnapshot = serde_json::from_value(doc).unwrap();
        assert_eq!(parsed.fuse_reads, 2);
    }

    #[test]
    fn mount_counters_count_once_in_totals_and_not_per_image() {
        let (t, _a, _b) = telemetry();
        let mount = Arc::new(Metrics::default());
        Metrics::add(&mount.prefetch_bytes_peak, 8 << 20);
        let t = t.with_mount_metrics(mount);
        assert_eq!(t.totals().prefetch_bytes_peak, 8 << 20);
        let doc = t.stats_document();
        assert_eq!(doc["prefetch_bytes_peak"], 8 << 20);
        assert!(doc["images"]["a.raw"].get("prefetch_bytes_peak").is_none());
    }

    #[test]
    fn sums_mixed_numbers_and_new_keys() {
        let a = serde_json::json!({"x": 1, "f": 0.5, "h": [1, 2], "o": {"k": 1}});
        let b = serde_json::json!({"x": 2, "f": 1, "h": [1, 2, 3], "o": {"j": 5}, "n": 7});
        let s = sum_values(&[a, b]);
        assert_eq!(
            s,
            serde_json::json!({"x": 3, "f": 1.5, "h": [2, 4, 3], "o": {"k": 1, "j": 5}, "n": 7})
        );
    }
}
