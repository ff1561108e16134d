//! What `zvimg bench boot` measured, and how it is shown: the result
//! types (`--json` serialises them), latency percentiles, the ratios the
//! project targets, the table and the PNG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use zvmount::metrics::MetricsSnapshot;
use zvtest::proxy::RequestTiming;

use super::Setup;
use super::setups::ProxyPhase;
use crate::bench::chart::{self, Bars, Lines, Panel, Series};

/// Latency figures of a set of store requests, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The measurement of one boot.
#[derive(Clone, Debug, Serialize)]
pub struct BootResult {
    /// MiB of incompressible data in the image (0 for the plain test image
    /// or a user's image).
    pub data_mib: u64,
    pub setup: Setup,
    /// Time to the marker, counted from the start of the setup (download,
    /// mount) for the setups that have one.
    pub seconds: f64,
    /// Parts of `seconds`.
    pub download_s: f64,
    pub decompress_s: f64,
    pub mount_s: f64,
    pub boot_s: f64,
    /// Bytes the store sent (daemon counter for zvmount, proxy for download).
    pub bytes_fetched: u64,
    /// GETs the store answered.
    pub gets: u64,
    /// What the shaping proxy saw, as a cross-check of the daemon's counters.
    pub proxy_bytes: u64,
    pub proxy_requests: u64,
    /// Latency of the store requests of this setup (request start to last byte).
    pub get_latency: LatencySummary,
    /// The daemon's counters for this boot (zvmount setups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<MetricsSnapshot>,
}

/// An image under test, as stored.
#[derive(Clone, Debug, Serialize)]
pub struct ImageFacts {
    pub data_mib: u64,
    pub disk_bytes: u64,
    pub stored_bytes: u64,
    pub convert_s: f64,
}

/// Everything one run measured, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub latency_ms: f64,
    pub bandwidth_bytes_per_s: u64,
    pub accel: &'static str,
    pub images: Vec<ImageFacts>,
    pub results: Vec<BootResult>,
    /// The ratios the project targets, from this run.
    pub targets: BTreeMap<String, f64>,
    #[serde(skip)]
    pub timings: BTreeMap<(u64, Setup), Vec<RequestTiming>>,
}

impl BootResult {
    pub(super) fn new(data_mib: u64, setup: Setup, seconds: f64) -> BootResult {
        BootResult {
            data_mib,
            setup,
            seconds,
            download_s: 0.0,
            decompress_s: 0.0,
            mount_s: 0.0,
            boot_s: seconds,
            bytes_fetched: 0,
            gets: 0,
            proxy_bytes: 0,
            proxy_requests: 0,
            get_latency: LatencySummary::default(),
            daemon: None,
        }
    }

    pub(super) fn set_proxy(&mut self, phase: &ProxyPhase) {
        self.proxy_bytes = phase.stats.bytes_down;
        self.proxy_requests = phase.stats.requests;
        self.get_latency = summarize(&phase.timings);
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Percentiles of request latencies (nearest rank).
fn summarize(timings: &[RequestTiming]) -> LatencySummary {
    let mut ms: Vec<f64> = timings.iter().map(|t| millis(t.total)).collect();
    if ms.is_empty() {
        return LatencySummary::default();
    }
    ms.sort_by(f64::total_cmp);
    let pick = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    LatencySummary {
        count: ms.len(),
        p50_ms: pick(0.5),
        p90_ms: pick(0.9),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
    }
}

fn find(report: &Report, mib: u64, setup: Setup) -> Option<&BootResult> {
    report
        .results
        .iter()
        .find(|r| r.data_mib == mib && r.setup == setup)
}

/// The ratios the issue sets targets for.
pub(super) fn compute_targets(report: &mut Report) {
    let mut t = BTreeMap::new();
    let base = report.images.first().map(|i| i.data_mib).unwrap_or(0);
    if let (Some(local), Some(cold), Some(warm)) = (
        find(report, base, Setup::Local),
        find(report, base, Setup::Cold),
        find(report, base, Setup::Warm),
    ) {
        t.insert(
            "cold_vs_local (target <= 1.25)".into(),
            cold.seconds / local.seconds,
        );
        t.insert(
            "warm_vs_local (target <= 1.05)".into(),
            warm.seconds / local.seconds,
        );
    }
    if let (Some(local), Some(profiled)) = (
        find(report, base, Setup::Local),
        find(report, base, Setup::Profiled),
    ) {
        t.insert("profiled_vs_local".into(), profiled.seconds / local.seconds);
    }
    if let (Some(local), Some(hydrated)) = (
        find(report, base, Setup::Local),
        find(report, base, Setup::Hydrated),
    ) {
        t.insert(
            "hydrated_vs_local (target <= 1.05)".into(),
            hydrated.seconds / local.seconds,
        );
    }
    for img in &report.images {
        if let Some(cold) = find(report, img.data_mib, Setup::Cold) {
            t.insert(
                format!("fetched_vs_stored_{}mib (target <= 0.10)", img.data_mib),
                cold.bytes_fetched as f64 / img.stored_bytes.max(1) as f64,
            );
            if let Some(dl) = find(report, img.data_mib, Setup::Download) {
                t.insert(
                    format!("download_vs_cold_{}mib (target >= 3 at 1024)", img.data_mib),
                    dl.seconds / cold.seconds,
                );
            }
        }
    }
    report.targets = t;
}

pub(super) fn render_table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "boot benchmark: {} guest, store via proxy {:.0} ms first byte, {}",
        report.accel,
        report.latency_ms,
        if report.bandwidth_bytes_per_s == 0 {
            "unlimited bandwidth".to_string()
        } else {
            format!("{:.0} MB/s", report.bandwidth_bytes_per_s as f64 / 1e6)
        }
    );
    for img in &report.images {
        let _ = writeln!(
            s,
            "image data {:>4} MiB: disk {}, stored {} (converted in {:.1}s)",
            img.data_mib,
            crate::convert::human(img.disk_bytes),
            crate::convert::human(img.stored_bytes),
            img.convert_s
        );
    }
    let _ = writeln!(
        s,
        "{:>6}  {:<16} {:>8} {:>7} {:>8} {:>8} {:>7} {:>7} {:>10} {:>6} {:>8} {:>8}",
        "data",
        "setup",
        "marker",
        "vs loc",
        "download",
        "decomp",
        "mount",
        "boot",
        "fetched",
        "GETs",
        "GET p50",
        "GET p99"
    );
    for r in &report.results {
        let local = find(report, r.data_mib, Setup::Local)
            .map(|l| l.seconds)
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "{:>4}Mi  {:<16} {:>7.2}s {:>6.2}x {:>7.2}s {:>7.2}s {:>6.2}s {:>6.2}s {:>10} {:>6} {:>6.1}ms {:>6.1}ms",
            r.data_mib,
            r.setup.name(),
            r.seconds,
            r.seconds / local,
            r.download_s,
            r.decompress_s,
            r.mount_s,
            r.boot_s,
            crate::convert::human(r.bytes_fetched),
            r.gets,
            r.get_latency.p50_ms,
            r.get_latency.p99_ms
        );
    }
    for (k, v) in &report.targets {
        let _ = writeln!(s, "{k}: {v:.3}");
    }
    s
}

pub(super) fn draw_chart(path: &Path, report: &Report) -> anyhow::Result<()> {
    let base = report.images.first().map(|i| i.data_mib).unwrap_or(0);
    let setups = [
        Setup::Local,
        Setup::Download,
        Setup::Cold,
        Setup::Warm,
        Setup::Profiled,
        Setup::Hydrated,
    ];
    let mut panels = vec![Panel::Bars(Bars {
        title: format!("Time to boot marker ({base} MiB unread data)"),
        y_label: "seconds".into(),
        bars: setups
            .iter()
            .filter_map(|&s| find(report, base, s).map(|r| (s.name().to_string(), r.seconds)))
            .collect(),
    })];
    let mut grown: Vec<u64> = report.images.iter().map(|i| i.data_mib).collect();
    grown.sort_unstable();
    if grown.len() > 1 {
        panels.push(Panel::Lines(Lines {
            title: "Boot time as the image's data grows".into(),
            x_label: "incompressible data in the image (GiB)".into(),
            y_label: "seconds to marker".into(),
            series: setups
                .iter()
                .map(|&s| Series {
                    name: s.name().into(),
                    points: grown
                        .iter()
                        .filter_map(|&m| find(report, m, s).map(|r| (m as f64 / 1024.0, r.seconds)))
                        .collect(),
                })
                .collect(),
            log_x: false,
        }));
    }
    let cdf = |timings: &[RequestTiming]| -> Vec<(f64, f64)> {
        let mut ms: Vec<f64> = timings.iter().map(|t| millis(t.total)).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len() as f64;
        ms.iter()
            .enumerate()
            .map(|(i, &v)| (v, (i + 1) as f64 / n * 100.0))
            .collect()
    };
    let series: Vec<Series> = [Setup::Cold, Setup::Profiled, Setup::Warm, Setup::Download]
        .iter()
        .filter_map(|&s| {
            let t = report.timings.get(&(base, s))?;
            (!t.is_empty()).then(|| Series {
                name: format!("{} ({} GETs)", s.name(), t.len()),
                points: cdf(t),
            })
        })
        .collect();
    if !series.is_empty() {
        panels.push(Panel::Lines(Lines {
            title: "Store request latency (CDF)".into(),
            x_label: "ms from request to last byte".into(),
            y_label: "% of requests".into(),
            series,
            log_x: true,
        }));
    }
    chart::render(path, &panels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let t = |ms: u64| RequestTiming {
            first_byte: Duration::ZERO,
            total: Duration::from_millis(ms),
            bytes: 1,
        };
        let timings: Vec<_> = (1..=100).map(t).collect();
        let s = summarize(&timings);
        assert_eq!(
            (s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(summarize(&[]).count, 0);
    }
}
