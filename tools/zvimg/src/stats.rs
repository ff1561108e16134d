//! `zvimg stats MOUNTPOINT`: a running mount's figures as a table, read
//! from its `.zvmount-stats.json` (the same figures `--metrics-addr`
//! exports). With `--watch`, like `iostat`: the first table counts since
//! the mount started, each later one shows rates over the last interval.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// `zvimg stats` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The mountpoint of a running zvmount (or its `.zvmount-stats.json`).
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,
    /// Print the stats document as JSON (one line per report when watching,
    /// with per-second rates under `rates`).
    #[arg(long)]
    pub json: bool,
    /// Report again every SECONDS, with rates (per second) over the interval.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<f64>,
    /// Stop after COUNT reports (with --watch; default: until interrupted).
    #[arg(long, value_name = "COUNT", requires = "watch")]
    pub count: Option<u64>,
}

/// The stats file name inside a mount.
const STATS_FILE: &str = ".zvmount-stats.json";

/// How a figure is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Count,
    Bytes,
    /// A counter of nanoseconds, shown as time.
    Nanos,
    /// A histogram object: its mean.
    Mean,
    /// A level (not a counter): never turned into a rate.
    Level,
}

/// Rows of the table: label, stats key, unit. Keys an image does not
/// report are left out (outage and hydration figures appear once the
/// daemon counts them).
const ROWS: &[(&str, &str, Unit)] = &[
    ("FUSE reads", "fuse_reads", Unit::Count),
    ("FUSE read bytes", "fuse_read_bytes", Unit::Bytes),
    ("reads failed (EIO)", "fuse_read_errors", Unit::Count),
    ("memory cache hits", "mem_cache_hits", Unit::Count),
    ("disk cache hits", "disk_cache_hits", Unit::Count),
    ("cache misses", "cache_misses", Unit::Count),
    ("in-flight joins", "inflight_joins", Unit::Count),
    ("zero-block reads", "zero_block_reads", Unit::Count),
    ("store requests", "store_requests", Unit::Count),
    ("store bytes", "store_bytes", Unit::Bytes),
    ("store errors", "fetch_errors", Unit::Count),
    ("store retries (mount)", "retries", Unit::Count),
    ("store request (mean)", "store_latency", Unit::Mean),
    ("demand-miss wait (mean)", "miss_wait", Unit::Mean),
    ("decode time", "decode_ns", Unit::Nanos),
    ("verify failures", "verify_failures", Unit::Count),
    ("blocks fetched", "blocks_fetched", Unit::Count),
    ("blocks prefetched", "blocks_prefetched", Unit::Count),
    ("readahead triggers", "readahead_triggers", Unit::Count),
    (
        "prefetch budget skips",
        "prefetch_budget_skips",
        Unit::Count,
    ),
    ("profile replay blocks", "profile_blocks", Unit::Count),
    ("store unreachable now (1/0)", "outage", Unit::Level),
    ("store outages", "outages", Unit::Count),
    ("outage seconds", "outage_seconds", Unit::Count),
    (
        "reads that waited out an outage",
        "reads_waited",
        Unit::Count,
    ),
    ("hydrated blocks", "hydrate_done", Unit::Level),
    ("blocks to hydrate", "hydrate_total", Unit::Level),
];

/// Runs `zvimg stats`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let path = stats_path(&args.mountpoint);
    let interval = match args.watch {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            bail!("--watch {s}: expected a positive number of seconds")
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let mut previous: Option<(Value, Instant)> = None;
    let mut reports = 0u64;
    loop {
        let doc = read(&path)?;
        let now = Instant::now();
        let rates = previous
            .as_ref()
            .map(|(before, at)| (before, now.duration_since(*at)));
        if args.json {
            let mut out = doc.clone();
            if let (Some((before, elapsed)), Some(map)) = (rates, out.as_object_mut()) {
                map.insert("rates".into(), rates_json(before, &doc, elapsed));
            }
            println!("{}", serde_json::to_string(&out)?);
        } else {
            if reports > 0 {
                println!();
            }
            print!("{}", render(&args.mountpoint, &doc, rates));
        }
        reports += 1;
        let Some(interval) = interval else {
            return Ok(());
        };
        if args.count.is_some_and(|c| reports >= c) {
            return Ok(());
        }
        previous = Some((doc, now));
        std::thread::sleep(interval);
    }
}

fn stats_path(arg: &Path) -> PathBuf {
    if arg.is_dir() {
        arg.join(STATS_FILE)
    } else {
        arg.to_owned()
    }
}

fn read(path: &Path) -> anyhow::Result<Value> {
    let raw = std::fs::read(path).with_context(|| {
        format!(
            "cannot read {} (is a zvmount running there?)",
            path.display()
        )
    })?;
    serde_json::from_slice(&raw).with_context(|| format!("{} is not stats JSON", path.display()))
}

/// The images of a stats document, in name order: (name, figures).
fn images(doc: &Value) -> Vec<(&str, &Value)> {
    doc.get("images")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default()
}

/// The figure `key` of `scope` as a number (a histogram gives its mean in
/// nanoseconds).
fn figure(scope: &Value, key: &str, unit: Unit) -> Option<f64> {
    let v = scope.get(key)?;
    match unit {
        Unit::Mean => {
            // No observation has no mean: shown as "-".
            let count = v.get("count")?.as_f64().filter(|&c| c > 0.0)?;
            let sum = v.get("sum_ns")?.as_f64()?;
            Some(sum / count)
        }
        // A flag (the outage gauge) shows as 1 or 0.
        _ => v
            .as_f64()
            .or_else(|| v.as_bool().map(|b| f64::from(u8::from(b)))),
    }
}

/// Per-second rate of `key` between two documents; a histogram gives the
/// mean of the observations made in between.
fn rate(before: &Value, after: &Value, key: &str, unit: Unit, elapsed: Duration) -> Option<f64> {
    match unit {
        Unit::Level => figure(after, key, unit),
        Unit::Mean => {
            let (b, a) = (before.get(key)?, after.get(key)?);
            let count = a.get("count")?.as_f64()? - b.get("count")?.as_f64()?;
            let sum = a.get("sum_ns")?.as_f64()? - b.get("sum_ns")?.as_f64()?;
            (count > 0.0).then(|| sum / count)
        }
        _ => {
            let d = figure(after, key, unit)? - figure(before, key, unit).unwrap_or(0.0);
            Some(d.max(0.0) / elapsed.as_secs_f64().max(1e-9))
        }
    }
}

fn rates_json(before: &Value, after: &Value, elapsed: Duration) -> Value {
    let mut out = serde_json::Map::new();
    for (_, key, unit) in ROWS {
        if let Some(r) = rate(before, after, key, *unit, elapsed) {
            out.insert((*key).to_owned(), Value::from(r));
        }
    }
    Value::Object(out)
}

fn format(value: f64, unit: Unit, per_second: bool) -> String {
    let suffix = if per_second && !matches!(unit, Unit::Mean | Unit::Level) {
        "/s"
    } else {
        ""
    };
    let text = match unit {
        Unit::Count if per_second => format!("{value:.1}"),
        Unit::Count | Unit::Level => format!("{value:.0}"),
        Unit::Bytes => bytes(value),
        Unit::Nanos | Unit::Mean => duration(value / 1e9),
    };
    format!("{text}{suffix}")
}

fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn duration(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else if seconds >= 1e-3 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{:.0} µs", seconds * 1e6)
    }
}

/// The table: one row per figure, a column for the mount's total and one
/// per image; with `rates`, per-second rates since the previous document.
fn render(mountpoint: &Path, doc: &Value, rates: Option<(&Value, Duration)>) -> String {
    let imgs = images(doc);
    let mut header = vec!["".to_owned(), "total".to_owned()];
    header.extend(imgs.iter().map(|(n, _)| (*n).to_owned()));
    let mut rows = vec![header];
    let before_images = rates.map(|(b, _)| images(b));
    for (label, key, unit) in ROWS {
        let total = match rates {
            Some((before, elapsed)) => rate(before, doc, key, *unit, elapsed),
            None => figure(doc, key, *unit),
        };
        let Some(total) = total else {
            continue;
        };
        let mut row = vec![(*label).to_owned(), format(total, *unit, rates.is_some())];
        for (i, (name, scope)) in imgs.iter().enumerate() {
            let v = match (rates, &before_images) {
                (Some((_, elapsed)), Some(before)) => before
                    .iter()
                    .find(|(n, _)| n == name)
                    .or(before.get(i))
                    .and_then(|(_, b)| rate(b, scope, key, *unit, elapsed)),
                _ => figure(scope, key, *unit),
            };
            row.push(v.map_or_else(|| "-".into(), |v| format(v, *unit, rates.is_some())));
        }
        rows.push(row);
    }
    let mut out = String::new();
    let title = match rates {
        Some((_, elapsed)) => format!(
            "zvmount {}: per second over the last {:.1} s\n",
            mountpoint.display(),
            elapsed.as_secs_f64()
        ),
        None => format!(
            "zvmount {}: since mount, {} image{}\n",
            mountpoint.display(),
            imgs.len(),
            if imgs.len() == 1 { "" } else { "s" }
        ),
    };
    out.push_str(&title);
    out.push_str(&table(&rows));
    if let Some(kinds) = doc.get("retries_by_kind").and_then(Value::as_object) {
        let nonzero: Vec<String> = kinds
            .iter()
            .filter_map(|(k, v)| Some((k, v.as_u64().filter(|&n| n > 0)?)))
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !nonzero.is_empty() && rates.is_none() {
            out.push_str(&format!("store retries by cause: {}\n", nonzero.join(", ")));
        }
    }
    if let Some(caches) = doc.get("cache").and_then(Value::as_object) {
        for (tier, usage) in caches {
            let used = usage.get("bytes").and_then(Value::as_f64).unwrap_or(0.0);
            let cap = usage.get("capacity").and_then(Value::as_f64).unwrap_or(0.0);
            let pct = if cap > 0.0 { used / cap * 100.0 } else { 0.0 };
            out.push_str(&format!(
                "{tier} cache: {} of {} ({pct:.0}%)\n",
                bytes(used),
                bytes(cap)
            ));
        }
    }
    out
}

/// Left-aligned first column, right-aligned numbers.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..cols).map(width).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 0 {
                line.push_str(&format!("{cell:<w$}", w = widths[0]));
            } else {
                line.push_str(&format!("  {cell:>w$}", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(reads_a: u64, reads_b: u64) -> Value {
        serde_json::json!({
            "fuse_reads": reads_a + reads_b,
            "fuse_read_bytes": (reads_a + reads_b) * 4096,
            "store_latency": {"count": 2, "sum_ns": 3_000_000, "buckets": []},
            "cache": {"memory": {"bytes": 1048576, "capacity": 4194304}},
            "images": {
                "a.raw": {"fuse_reads": reads_a, "fuse_read_bytes": reads_a * 4096,
                          "store_latency": {"count": 2, "sum_ns": 3_000_000, "buckets": []}},
                "b.raw": {"fuse_reads": reads_b, "fuse_read_bytes": reads_b * 4096,
                          "store_latency": {"count": 0, "sum_ns": 0, "buckets": []}}
            }
        })
    }

    #[test]
    fn table_has_a_total_and_a_column_per_image() {
        let text = render(Path::new("/mnt"), &doc(10, 0), None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "zvmount /mnt: since mount, 2 images");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["total", "a.raw", "b.raw"],
            "{text}"
        );
        let reads = lines.iter().find(|l| l.starts_with("FUSE reads")).unwrap();
        assert_eq!(
            reads.split_whitespace().collect::<Vec<_>>(),
            ["FUSE", "reads", "10", "10", "0"]
        );
        assert!(text.contains("40.0 KiB"), "{text}");
        assert!(text.contains("store request (mean)"), "{text}");
        let mean = text
            .lines()
            .find(|l| l.starts_with("store request"))
            .unwrap();
        assert!(mean.ends_with("1.50 ms   1.50 ms      -"), "{text}");
        assert!(
            text.contains("memory cache: 1.0 MiB of 4.0 MiB (25%)"),
            "{text}"
        );
        // Figures no image reports are left out.
        assert!(!text.contains("hydrated"), "{text}");
    }

    #[test]
    fn watching_shows_rates() {
        let before = doc(10, 0);
        let after = doc(30, 5);
        let text = render(
            Path::new("/mnt"),
            &after,
            Some((&before, Duration::from_secs(2))),
        );
        let reads = text.lines().find(|l| l.starts_with("FUSE reads")).unwrap();
        assert_eq!(
            reads.split_whitespace().collect::<Vec<_>>(),
            ["FUSE", "reads", "12.5/s", "10.0/s", "2.5/s"],
            "{text}"
        );
        let r = rates_json(&before, &after, Duration::from_secs(2));
        assert_eq!(r["fuse_reads"], 12.5);
    }
}
