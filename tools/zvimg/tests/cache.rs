//! `zvimg hydrate` and `zvimg cache ls|rm|gc` on local files, as a user runs them.

use std::path::Path;
use std::process::Command;

use rand::{RngCore, SeedableRng};

mod common;
use common::{ok, s, wait_bounded, zvimg};

const MIB: usize = 1 << 20;

/// `blocks` 2 MiB blocks, random except block 1 (zero), converted.
fn image(dir: &Path, name: &str, blocks: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut raw = vec![0u8; blocks * 2 * MIB];
    rng.fill_bytes(&mut raw);
    raw[2 * MIB..4 * MIB].fill(0);
    let raw_path = dir.join(format!("{name}.raw"));
    std::fs::write(&raw_path, &raw).unwrap();
    let img = dir.join(format!("{name}.zvhd2"));
    ok(&["convert", s(&raw_path), s(&img)]);
    ok(&["index", s(&img)]);
    raw
}

fn ls(cache: &Path) -> Vec<serde_json::Value> {
    let out = ok(&["cache", "--cache-dir", s(cache), "ls", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn hydrate_fills_the_cache_then_ls_rm_gc_manage_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = zvtest::shm_tempdir();
    let cache = cache_dir.path().join("cache");
    let a = image(dir.path(), "a", 4, 1);
    image(dir.path(), "b", 3, 2);

    let out = ok(&[
        "hydrate",
        "--cache-dir",
        s(&cache),
        s(&dir.path().join("a.zvhd2")),
    ]);
    assert!(out.contains("3/3 blocks"), "{out}");
    // Again: nothing left to fetch.
    let again = ok(&[
        "hydrate",
        "--cache-dir",
        s(&cache),
        s(&dir.path().join("a.zvhd2")),
    ]);
    assert!(
        again.contains("3/3 blocks") && again.contains("(0 B fetched"),
        "{again}"
    );

    let listed = ls(&cache);
    assert_eq!(listed.len(), 1);
    let a_id = listed[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed[0]["blocks_present"], 3);
    assert_eq!(listed[0]["blocks_total"], 3);
    assert_eq!(listed[0]["in_use"], false);
    // The entry's data file is the raw disk.
    let data = std::fs::read(cache.join("images").join(&a_id).join("data")).unwrap();
    assert!(
        data == a,
        "the hydrated cache file differs from the raw disk"
    );

    // Named by a relative path, from the image's directory: listed by its
    // absolute path, as every process of the host would name it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zvimg"))
        .current_dir(dir.path())
        .args(["hydrate", "--cache-dir", s(&cache), "b.zvhd2"])
        .env_remove("ZVMOUNT_CACHE_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = ls(&cache);
    assert_eq!(listed.len(), 2);
    let b_source = dir.path().join("b.zvhd2").to_string_lossy().into_owned();
    assert!(
        listed.iter().any(|e| e["source"] == b_source.as_str()),
        "{listed:?}"
    );
    // Last use in RFC 3339 UTC, e.g. 2026-11-30T14:20:44Z.
    let last_use = listed[0]["last_use"].as_str().unwrap();
    assert!(
        last_use.len() == 20 && last_use.ends_with('Z') && last_use.as_bytes()[10] == b'T',
        "{last_use}"
    );
    let table = ok(&["cache", "--cache-dir", s(&cache), "ls"]);
    assert!(
        table.contains(&a_id) && table.contains("2 images"),
        "{table}"
    );

    // gc down to one image's worth: the least recently used (a) goes.
    let out = ok(&[
        "cache",
        "--cache-dir",
        s(&cache),
        "gc",
        "--max-size",
        "5MiB",
    ]);
    assert!(out.contains(&format!("evicted {a_id}")), "{out}");
    let left = ls(&cache);
    assert_eq!(left.len(), 1);
    let b_id = left[0]["id"].as_str().unwrap().to_owned();

    ok(&["cache", "--cache-dir", s(&cache), "rm", &b_id]);
    assert!(ls(&cache).is_empty());
    let out = zvimg(&["cache", "--cache-dir", s(&cache), "rm", &b_id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image"));
}

/// A record that fails its checks does not mend by waiting: `zvimg hydrate`
/// leaves that block out, hydrates every other one, then fails naming it
/// (it used to retry it forever as an outage, then to stop at it).
#[test]
fn hydrate_of_a_corrupt_image_fails_naming_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = zvtest::shm_tempdir();
    let cache = cache_dir.path().join("cache");
    image(dir.path(), "bad", 12, 3);
    let img = dir.path().join("bad.zvhd2");
    // Flip bytes a quarter into the records (inside an early record of
    // incompressible data; the sidecar, written from the good image, holds
    // its CRC32C), so that runs after it are left to hydrate.
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", s(&img)])).unwrap();
    // The index starts right after the last record (and the mid footer).
    let index_at = info["footer"]["index_lba"].as_u64().unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    let at = (index_at as usize) / 4;
    for b in &mut bytes[at..at + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&img, &bytes).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_zvimg"))
        .args(["hydrate", "--cache-dir", s(&cache), s(&img)])
        .env_remove("ZVMOUNT_CACHE_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a hydration that treats the corruption as an outage never ends.
    let out = wait_bounded(
        child,
        std::time::Duration::from_secs(120),
        "zvimg hydrate of a corrupt image",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("left out 1 block") && err.contains("fail"),
        "{err}"
    );
    // Every other block with data is local.
    let listed = ls(&cache);
    let (present, total) = (
        listed[0]["blocks_present"].as_u64().unwrap(),
        listed[0]["blocks_total"].as_u64().unwrap(),
    );
    assert_eq!((present, total), (10, 11), "{err}");
    // Logs to a pipe carry no colour codes.
    assert!(!err.contains('\x1b'), "escape codes in piped logs: {err:?}");
}
