//! The mount's figures in Prometheus/OpenMetrics text, encoded by the
//! `prometheus-client` crate.
//!
//! Every image series carries `mount` (the mountpoint) and `image` (the
//! served file name) labels; a mount's totals are `sum without (image)`.
//! Series are read from the same per-image snapshots the stats file shows,
//! at scrape time, through a [`Collector`]: nothing is counted twice and a
//! scrape costs a few atomic loads per image.
//!
//! Counters the daemon does not have (yet) are left out rather than shown
//! as zero: the table below names stats-file keys, and a family whose keys
//! no image reports is skipped. That is how outage and hydration figures
//! appear once the image layer counts them.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::Value;

use super::MountTelemetry;
use super::histogram::HistogramSnapshot;

/// `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of [`encode_text_0_0_4`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How a family's value is shown.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// A monotonic count, as is.
    Counter,
    /// A monotonic count of nanoseconds, shown in seconds.
    CounterNsAsSeconds,
    /// A monotonic count of seconds (may be fractional).
    CounterSeconds,
    /// A level that goes up and down.
    Gauge,
}

/// One metric family made of stats-file keys: each `(key, extra label)`
/// pair becomes one series per image.
struct Family {
    /// Name without the `_total` suffix a counter gets on encoding.
    name: &'static str,
    help: &'static str,
    shape: Shape,
    series: &'static [(&'static str, Option<(&'static str, &'static str)>)],
}

const fn one(key: &'static str) -> [(&'static str, Option<(&'static str, &'static str)>); 1] {
    [(key, None)]
}

/// Every per-image counter and gauge, by stats-file key.
const FAMILIES: &[Family] = &[
    Family {
        name: "zvmount_fuse_reads",
        help: "Read requests the FUSE layer answered for the image.",
        shape: Shape::Counter,
        series: &one("fuse_reads"),
    },
    Family {
        name: "zvmount_fuse_read_bytes",
        help: "Bytes returned by FUSE reads of the image.",
        shape: Shape::Counter,
        series: &one("fuse_read_bytes"),
    },
    Family {
        name: "zvmount_fuse_read_errors",
        help: "FUSE reads of the image answered with EIO.",
        shape: Shape::Counter,
        series: &one("fuse_read_errors"),
    },
    Family {
        name: "zvmount_cache_hits",
        help: "Block lookups answered by a cache tier.",
        shape: Shape::Counter,
        series: &[
            ("mem_cache_hits", Some(("tier", "memory"))),
            ("disk_cache_hits", Some(("tier", "disk"))),
        ],
    },
    Family {
        name: "zvmount_cache_misses",
        help: "Demand block lookups no cache could answer (a fetch followed).",
        shape: Shape::Counter,
        series: &one("cache_misses"),
    },
    Family {
        name: "zvmount_inflight_joins",
        help: "Demand reads that joined a fetch already in flight.",
        shape: Shape::Counter,
        series: &one("inflight_joins"),
    },
    Family {
        name: "zvmount_zero_block_reads",
        help: "Reads of all-zero blocks, answered without a fetch.",
        shape: Shape::Counter,
        series: &one("zero_block_reads"),
    },
    Family {
        name: "zvmount_store_requests",
        help: "Range GETs sent to the store (after coalescing).",
        shape: Shape::Counter,
        series: &one("store_requests"),
    },
    Family {
        name: "zvmount_store_read_bytes",
        help: "Bytes the store returned.",
        shape: Shape::Counter,
        series: &one("store_bytes"),
    },
    Family {
        name: "zvmount_blocks_fetched",
        help: "Blocks fetched from the store and decoded (demand and prefetch).",
        shape: Shape::Counter,
        series: &one("blocks_fetched"),
    },
    Family {
        name: "zvmount_blocks_prefetched",
        help: "Blocks fetched by readahead or boot-profile replay.",
        shape: Shape::Counter,
        series: &one("blocks_prefetched"),
    },
    Family {
        name: "zvmount_readahead_triggers",
        help: "Times the sequential detector started a readahead.",
        shape: Shape::Counter,
        series: &one("readahead_triggers"),
    },
    Family {
        name: "zvmount_prefetch_budget_skips",
        help: "Prefetch blocks skipped because the prefetch memory budget was spent.",
        shape: Shape::Counter,
        series: &one("prefetch_budget_skips"),
    },
    Family {
        name: "zvmount_profile_replay_blocks",
        help: "Boot-profile blocks the replay started.",
        shape: Shape::Counter,
        series: &one("profile_blocks"),
    },
    Family {
        name: "zvmount_profile_replay_capped_blocks",
        help: "Boot-profile blocks the replay left out to spare the cache.",
        shape: Shape::Counter,
        series: &one("profile_capped"),
    },
    Family {
        name: "zvmount_verify_failures",
        help: "Blocks that failed a check (CRC32C, BLAKE3, framing, decoded length).",
        shape: Shape::Counter,
        series: &one("verify_failures"),
    },
    Family {
        name: "zvmount_decode_seconds",
        help: "Time spent checking and decoding fetched records (queueing included).",
        shape: Shape::CounterNsAsSeconds,
        series: &one("decode_ns"),
    },
    // Hydration: exported once the daemon counts it.
    Family {
        name: "zvmount_hydrate_done_blocks",
        help: "Blocks of the image held in the local cache by hydration.",
        shape: Shape::Gauge,
        series: &one("hydrate_done"),
    },
    Family {
        name: "zvmount_hydrate_total_blocks",
        help: "Blocks hydration has to hold for the whole image.",
        shape: Shape::Gauge,
        series: &one("hydrate_total"),
    },
    Family {
        name: "zvmount_hydrate_preempted",
        help: "Hydration GETs dropped mid-transfer to give the link to a demand read.",
        shape: Shape::Counter,
        series: &one("hydrate_preempted"),
    },
];

/// Latency distributions, by stats-file key.
const HISTOGRAMS: &[(&str, &str, &str)] = &[
    (
        "store_latency",
        "zvmount_store_request_duration_seconds",
        "Duration of store range GETs as the image waited for them (retries included).",
    ),
    (
        "miss_wait",
        "zvmount_demand_miss_wait_seconds",
        "How long demand reads of blocks not in memory waited for them.",
    ),
];

/// The mount's own figures (see [`super::MOUNT_KEYS`]): series with only
/// the `mount` label.
const MOUNT_FAMILIES: &[Family] = &[
    Family {
        name: "zvmount_prefetch_budget_used_bytes",
        help: "Bytes of the mount's prefetch budget held now.",
        shape: Shape::Gauge,
        series: &one("prefetch_bytes_in_flight"),
    },
    Family {
        name: "zvmount_prefetch_budget_peak_bytes",
        help: "The most bytes of the mount's prefetch budget ever held at once.",
        shape: Shape::Gauge,
        series: &one("prefetch_bytes_peak"),
    },
    Family {
        name: "zvmount_store_outage",
        help: "1 while the store is unreachable, else 0.",
        shape: Shape::Gauge,
        series: &one("outage"),
    },
    Family {
        name: "zvmount_store_outages",
        help: "Times the store became unreachable.",
        shape: Shape::Counter,
        series: &one("outages"),
    },
    Family {
        name: "zvmount_store_outage_seconds",
        help: "Time the store was unreachable (whole seconds).",
        shape: Shape::CounterSeconds,
        series: &one("outage_seconds"),
    },
    Family {
        name: "zvmount_outage_waited_reads",
        help: "Store calls that waited for the store to come back.",
        shape: Shape::Counter,
        series: &one("reads_waited"),
    },
];

/// A [`Collector`] reading a mount's figures at every scrape.
#[derive(Debug)]
pub struct MountCollector {
    telemetry: Arc<MountTelemetry>,
}

impl MountCollector {
    /// Reads `telemetry` on each scrape.
    pub fn new(telemetry: Arc<MountTelemetry>) -> MountCollector {
        MountCollector { telemetry }
    }
}

/// A registry holding the mount's collector.
pub fn registry(telemetry: Arc<MountTelemetry>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MountCollector::new(telemetry)));
    registry
}

/// Renders `registry` as OpenMetrics text (what `/metrics` answers).
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Renders `registry` in the classic Prometheus text format (0.0.4), for
/// clients that do not ask for OpenMetrics (`curl`, `promtool check
/// metrics`, older scrapers).
///
/// The crate only writes OpenMetrics. For the families this exporter makes
/// (counters, gauges, histograms; no units, info or state sets) the two
/// formats differ in two places only: a counter's `# HELP`/`# TYPE` lines
/// name the family with its `_total` suffix, and there is no `# EOF`.
pub fn encode_text_0_0_4(registry: &Registry) -> Result<String, fmt::Error> {
    let openmetrics = encode(registry)?;
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

type Labels = Vec<(&'static str, String)>;

impl Collector for MountCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let t = &self.telemetry;
        let mount = t.mountpoint().to_owned();
        let snaps = t.image_snapshots();
        let labels =
            |image: &str| -> Labels { vec![("mount", mount.clone()), ("image", image.to_owned())] };

        for family in FAMILIES {
            let reported = snaps.iter().any(|(_, snap)| {
                family
                    .series
                    .iter()
                    .any(|(key, _)| number(snap, key).is_some())
            });
            if !reported {
                continue;
            }
            let kind = match family.shape {
                Shape::Gauge => MetricType::Gauge,
                _ => MetricType::Counter,
            };
            let mut m = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for (image, snap) in &snaps {
                for (key, extra) in family.series {
                    let Some(value) = number(snap, key) else {
                        continue;
                    };
                    let mut l = labels(image);
                    if let Some((k, v)) = extra {
                        l.push((k, (*v).to_owned()));
                    }
                    encode_value(&mut m, &l, family.shape, value)?;
                }
            }
        }

        {
            let mut m = encoder.encode_descriptor(
                "zvmount_store_errors",
                "Store reads that failed after the store's retries, by kind.",
                None,
                MetricType::Counter,
            )?;
            for (image, snap) in &snaps {
                let Some(kinds) = snap.get("store_errors").and_then(Value::as_object) else {
                    continue;
                };
                for (kind, count) in kinds {
                    let mut l = labels(image);
                    l.push(("kind", kind.clone()));
                    let count = count.as_u64().unwrap_or(0);
                    m.encode_family(&l)?
                        .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }

        for (key, name, help) in HISTOGRAMS {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (image, snap) in &snaps {
                let Some(h) = snap
                    .get(*key)
                    .and_then(|v| serde_json::from_value::<HistogramSnapshot>(v.clone()).ok())
                else {
                    continue;
                };
                let sum = h.sum_ns as f64 / 1e9;
                m.encode_family(&labels(image))?
                    .encode_histogram::<NoLabelSet>(sum, h.count, &h.prometheus_buckets(), None)?;
            }
        }

        let mount_snap = t.mount_snapshot();
        for family in MOUNT_FAMILIES {
            let Some(value) = number(&mount_snap, family.series[0].0) else {
                continue;
            };
            let kind = match family.shape {
                Shape::Gauge => MetricType::Gauge,
                _ => MetricType::Counter,
            };
            let mut m = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            let l: Labels = vec![("mount", mount.clone())];
            encode_value(&mut m, &l, family.shape, value)?;
        }

        if let Some(kinds) = mount_snap.get("retries_by_kind").and_then(Value::as_object) {
            let mut m = encoder.encode_descriptor(
                "zvmount_store_retries",
                "Store request attempts sent again after a transient failure, by the failure \
                 (timeout, throttled, server_error, short_body, credentials, connection).",
                None,
                MetricType::Counter,
            )?;
            for (kind, count) in kinds {
                let l: Labels = vec![("mount", mount.clone()), ("kind", kind.clone())];
                let count = count.as_u64().unwrap_or(0);
                m.encode_family(&l)?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }

        let usage = t.cache_usage();
        for (name, help, pick) in [
            (
                "zvmount_cache_bytes",
                "Bytes of decoded blocks a cache tier holds.",
                (|u: &super::CacheUsage| u.bytes) as fn(&super::CacheUsage) -> u64,
            ),
            (
                "zvmount_cache_capacity_bytes",
                "Bytes a cache tier holds before it evicts.",
                |u: &super::CacheUsage| u.capacity,
            ),
        ] {
            if usage.is_empty() {
                break;
            }
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (tier, u) in &usage {
                let l: Labels = vec![("mount", mount.clone()), ("tier", (*tier).to_owned())];
                m.encode_family(&l)?.encode_gauge(&pick(u))?;
            }
        }
        Ok(())
    }
}

/// A numeric stats-file value: a JSON number, or a boolean as 0/1.
fn number(snap: &Value, key: &str) -> Option<f64> {
    match snap.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

fn encode_value(
    m: &mut MetricEncoder<'_>,
    labels: &Labels,
    shape: Shape,
    value: f64,
) -> Result<(), fmt::Error> {
    let mut series = m.encode_family(labels)?;
    match shape {
        // Exact up to 2^53: counts and byte totals of a mount's lifetime.
        Shape::Counter => series.encode_counter::<NoLabelSet, _, u64>(&(value as u64), None),
        Shape::CounterNsAsSeconds => {
            series.encode_counter::<NoLabelSet, _, u64>(&(value / 1e9), None)
        }
        Shape::CounterSeconds => series.encode_counter::<NoLabelSet, _, u64>(&value, None),
        Shape::Gauge => series.encode_gauge(&value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, StoreErrorKind};
    use crate::telemetry::{CacheGauge, CacheUsage, ImageTelemetry};
    use std::time::Duration;

    fn mount() -> (Arc<MountTelemetry>, Arc<Metrics>) {
        let a = Arc::new(Metrics::default());
        let b = Arc::new(Metrics::default());
        let image = |name: &str, m: &Arc<Metrics>| ImageTelemetry {
            name: name.into(),
            metrics: Arc::clone(m),
            summary: Default::default(),
        };
        let t = MountTelemetry::new(
            "/run/zv",
            vec![image("a.raw", &a), image("b.raw", &b)],
            vec![CacheGauge {
                tier: "memory",
                usage: Arc::new(|| CacheUsage {
                    counters: None,
                    bytes: 10,
                    capacity: 20,
                }),
            }],
        );
        (Arc::new(t), a)
    }

    #[test]
    fn scrape_has_per_image_series_histograms_and_caches() {
        let (t, a) = mount();
        Metrics::add(&a.fuse_reads, 5);
        Metrics::add(&a.decode_ns, 1_500_000_000);
        a.store_errors.inc(StoreErrorKind::Forbidden);
        a.store_latency.observe(Duration::from_millis(2));
        let text = encode(&registry(Arc::clone(&t))).unwrap();
        assert!(
            text.contains(r#"zvmount_fuse_reads_total{mount="/run/zv",image="a.raw"} 5"#),
            "{text}"
        );
        assert!(text.contains(r#"zvmount_fuse_reads_total{mount="/run/zv",image="b.raw"} 0"#));
        assert!(
            text.contains(r#"zvmount_decode_seconds_total{mount="/run/zv",image="a.raw"} 1.5"#)
        );
        assert!(text.contains(
            r#"zvmount_store_errors_total{mount="/run/zv",image="a.raw",kind="forbidden"} 1"#
        ));
        assert!(text.contains(
            r#"zvmount_store_request_duration_seconds_bucket{le="0.0025",mount="/run/zv",image="a.raw"} 1"#
        ) || text.contains(
            r#"zvmount_store_request_duration_seconds_bucket{mount="/run/zv",image="a.raw",le="0.0025"} 1"#
        ), "{text}");
        assert!(text.contains(r#"zvmount_cache_capacity_bytes{mount="/run/zv",tier="memory"} 20"#));
        let classic = encode_text_0_0_4(&registry(Arc::clone(&t))).unwrap();
        assert!(
            classic.contains("# TYPE zvmount_fuse_reads_total counter\n"),
            "{classic}"
        );
        assert!(classic.contains("# HELP zvmount_fuse_reads_total Read requests"));
        assert!(classic.contains("# TYPE zvmount_cache_bytes gauge\n"));
        assert!(classic.contains("# TYPE zvmount_demand_miss_wait_seconds histogram\n"));
        assert!(!classic.contains("# EOF"));
        assert!(text.contains(r#"zvmount_hydrate_done_blocks{mount="/run/zv",image="a.raw"} 0"#));
        // A family no snapshot reports is left out, not shown as zero.
        assert!(!text.contains("zvmount_store_outage{"));
        assert!(text.ends_with("# EOF\n"));
    }
}
