//! `zvimg stats` over a real mount (the real `zvmount` binary on real
//! FUSE): the JSON and the table show the figures of the mount's stats
//! file after some reads, per image and in total.
//!
//! Needs the `zvmount` binary built beside this test (`cargo build --bin
//! zvmount`; `scripts/test.sh` builds the whole workspace first).

use std::os::unix::fs::FileExt;
use std::process::Command;

use serde_json::Value;
use zvtest::images::{raw_mixed, write_files};
use zvtest::mount::Mounted;

const BLOCK: u32 = 2 << 20;

fn zvimg(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zvimg"))
        .args(args)
        .output()
        .expect("run zvimg");
    assert!(
        out.status.success(),
        "zvimg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The numbers of the table row labelled `label`: total, then per image.
fn row(table: &str, label: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| {
            l.strip_prefix(label)
                .is_some_and(|rest| rest.starts_with("  "))
        })
        .unwrap_or_else(|| panic!("no {label:?} row in:\n{table}"));
    line[label.len()..]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn stats_json_and_table_match_the_stats_file_after_reads() {
    let a = write_files(raw_mixed(6, BLOCK, 51), BLOCK);
    let b = write_files(raw_mixed(3, BLOCK, 52), BLOCK);
    let m = Mounted::builder()
        .args(["--name", "a.raw", "--name", "b.raw", "--readahead", "0"])
        .arg(&a.image)
        .arg(&b.image)
        .expect_file("a.raw")
        .expect_file("b.raw")
        .start();
    // Reads of a.raw only: blocks 1 and 2 (data), and 3 (zeros).
    let file = std::fs::File::open(m.path("a.raw")).unwrap();
    for block in [1u64, 2, 3] {
        let mut buf = vec![0u8; 64 << 10];
        let at = block * u64::from(BLOCK) + 4096;
        file.read_exact_at(&mut buf, at).unwrap();
        assert!(
            buf == a.raw_bytes[at as usize..][..buf.len()],
            "wrong bytes"
        );
    }
    drop(file);
    let mnt = m.dir().to_str().unwrap().to_owned();

    let file_doc = m.stats_json();
    let json: Value = serde_json::from_str(zvimg(&["stats", &mnt, "--json"]).trim()).unwrap();
    // Reading the stats moves no counter: both documents are the same.
    assert_eq!(json, file_doc);
    let reads = file_doc["fuse_reads"].as_u64().unwrap();
    assert!(reads >= 3, "{file_doc}");
    assert!(file_doc["fuse_read_bytes"].as_u64().unwrap() >= 3 * (64 << 10));
    assert!(file_doc["store_requests"].as_u64().unwrap() >= 2);
    assert_eq!(json["images"]["a.raw"]["fuse_reads"], reads);
    assert_eq!(json["images"]["b.raw"]["fuse_reads"], 0);

    let table = zvimg(&["stats", &mnt]);
    assert!(table.contains("2 images"), "{table}");
    let header = table.lines().nth(1).unwrap();
    assert!(
        header.contains("total") && header.contains("a.raw") && header.contains("b.raw"),
        "{table}"
    );
    let count = |v: &Value| v.as_u64().unwrap().to_string();
    for (label, key) in [
        ("FUSE reads", "fuse_reads"),
        ("store requests", "store_requests"),
        ("cache misses", "cache_misses"),
        ("zero-block reads", "zero_block_reads"),
    ] {
        assert_eq!(
            row(&table, label),
            [
                count(&file_doc[key]),
                count(&file_doc["images"]["a.raw"][key]),
                count(&file_doc["images"]["b.raw"][key]),
            ],
            "{label}:\n{table}"
        );
    }
    assert!(table.contains("memory cache: "), "{table}");

    // Watching: the second report has rates, all zero without reads.
    let watched = zvimg(&["stats", &mnt, "--json", "--watch", "0.2", "--count", "2"]);
    let reports: Vec<Value> = watched
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2, "{watched}");
    assert!(reports[0].get("rates").is_none());
    assert_eq!(reports[1]["rates"]["fuse_reads"], 0.0, "{watched}");
    assert_eq!(reports[1]["fuse_reads"], reads);
    assert!(m.stop().success());
}
