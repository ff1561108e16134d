//! `zvimg` as a user runs it: convert, info, check, index, pull, on local files.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{RngCore, SeedableRng};

mod common;
use common::{fails, ok, s, zvimg};

const MIB: usize = 1 << 20;

/// A disk of random, zero and text-like 2 MiB blocks, ending mid-block.
fn mixed_disk(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut raw = vec![0u8; 9 * MIB + 777];
    rng.fill_bytes(&mut raw[..2 * MIB]); // block 0 random
    // block 1 zero; block 2 text; block 3 random; block 4 partial text
    for (i, b) in raw[4 * MIB..6 * MIB].iter_mut().enumerate() {
        *b = b"the quick brown fox "[i % 20];
    }
    rng.fill_bytes(&mut raw[6 * MIB..8 * MIB]);
    for (i, b) in raw[8 * MIB..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let path = dir.join("disk.raw");
    std::fs::write(&path, &raw).unwrap();
    (path, raw)
}

#[test]
fn convert_round_trip_info_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, raw) = mixed_disk(dir.path());
    let image = dir.path().join("disk.zvhd2");
    ok(&["convert", "--sidecar", s(&raw_path), s(&image)]);
    assert!(dir.path().join("disk.zvhd2.zvidx").exists());

    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--json", s(&image)])).unwrap();
    assert_eq!(info["disk_size"], (raw.len() as u64).div_ceil(512) * 512);
    assert_eq!(info["curr_size"], 1u64 << 30);
    assert_eq!(info["blocks"], 5);
    assert_eq!(info["non_zero_blocks"], 4);
    assert_eq!(info["block_size"], 2 * MIB);
    assert!(
        info["sidecar"].as_str().unwrap().contains("matches"),
        "{}",
        info["sidecar"]
    );

    let out = ok(&["check", s(&image)]);
    assert!(
        out.contains("OK") && out.contains("verified against the sidecar"),
        "{out}"
    );

    let back = dir.path().join("back.raw");
    ok(&["convert", s(&image), s(&back)]);
    let decoded = std::fs::read(&back).unwrap();
    assert_eq!(decoded.len() as u64, info["disk_size"].as_u64().unwrap());
    assert_eq!(&decoded[..raw.len()], &raw[..]);
    assert!(decoded[raw.len()..].iter().all(|&b| b == 0));

    let curr = dir.path().join("curr.raw");
    ok(&["convert", "--size", "curr", s(&image), s(&curr)]);
    assert_eq!(std::fs::metadata(&curr).unwrap().len(), 1 << 30);
}

#[test]
fn converting_over_an_image_drops_its_stale_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, _) = mixed_disk(dir.path());
    let image = dir.path().join("disk.zvhd2");
    ok(&["convert", "--sidecar", s(&raw_path), s(&image)]);
    ok(&["convert", s(&raw_path), s(&image)]);
    assert!(!dir.path().join("disk.zvhd2.zvidx").exists());
    // The new image opens (a stale sidecar would be refused as another image's).
    assert!(ok(&["check", s(&image)]).contains("no sidecar"));
}

#[test]
fn check_names_the_corrupt_block() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, _) = mixed_disk(dir.path());
    let image = dir.path().join("disk.zvhd2");
    ok(&["convert", "--sidecar", s(&raw_path), s(&image)]);
    // Flip one byte inside block 0's payload (record 0 starts at 4096).
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[4096 + 100_000] ^= 0x40;
    std::fs::write(&image, &bytes).unwrap();
    let err = fails(&["check", s(&image)]);
    assert!(
        err.contains("block 0") && err.contains("offset 4096"),
        "{err}"
    );
}

#[test]
fn index_rebuilds_the_same_sidecar_and_embeds_a_profile() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, _) = mixed_disk(dir.path());
    let image = dir.path().join("disk.zvhd2");
    ok(&["convert", "--sidecar", s(&raw_path), s(&image)]);
    let written = std::fs::read(dir.path().join("disk.zvhd2.zvidx")).unwrap();
    let rebuilt = dir.path().join("rebuilt.zvidx");
    ok(&["index", s(&image), "-o", s(&rebuilt)]);
    assert_eq!(
        std::fs::read(&rebuilt).unwrap(),
        written,
        "index of the image equals the sidecar convert wrote"
    );

    let profile = dir.path().join("boot.profile");
    std::fs::write(&profile, "# boot\n3\n0\n2\n").unwrap();
    ok(&["index", s(&image), "--boot-profile", s(&profile)]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--json", s(&image)])).unwrap();
    assert_eq!(info["boot_profile_blocks"], 3);

    std::fs::write(&profile, "99\n").unwrap();
    let err = fails(&[
        "index",
        s(&image),
        "--boot-profile",
        s(&profile),
        "-o",
        s(&rebuilt),
    ]);
    assert!(err.contains("block 99"), "{err}");

    // convert applies the same rule before writing anything: zvimg never
    // writes a sidecar that a reader refuses.
    let fresh = dir.path().join("fresh.zvhd2");
    let err = fails(&[
        "convert",
        "--sidecar",
        "--boot-profile",
        s(&profile),
        s(&raw_path),
        s(&fresh),
    ]);
    assert!(err.contains("block 99"), "{err}");
    assert!(!fresh.exists(), "no image written for a bad profile");
    assert!(!dir.path().join("fresh.zvhd2.zvidx").exists());
    // The last block (the disk has 5) is accepted.
    std::fs::write(&profile, "4\n0\n").unwrap();
    ok(&[
        "convert",
        "--sidecar",
        "--boot-profile",
        s(&profile),
        s(&raw_path),
        s(&fresh),
    ]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--json", s(&fresh)])).unwrap();
    assert_eq!(info["boot_profile_blocks"], 2);
}

#[test]
fn convert_refuses_to_write_over_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, raw) = mixed_disk(dir.path());
    let err = fails(&["convert", s(&raw_path), s(&raw_path)]);
    assert!(err.contains("same file"), "{err}");
    // Through another name (a hard link) too.
    let link = dir.path().join("link.raw");
    std::fs::hard_link(&raw_path, &link).unwrap();
    let err = fails(&["convert", s(&raw_path), s(&link)]);
    assert!(err.contains("same file"), "{err}");
    assert_eq!(
        std::fs::read(&raw_path).unwrap(),
        raw,
        "the input is intact"
    );
}

#[test]
fn a_sidecar_of_another_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, _) = mixed_disk(dir.path());
    let a = dir.path().join("a.zvhd2");
    let b = dir.path().join("b.zvhd2");
    ok(&["convert", "--sidecar", s(&raw_path), s(&a)]);
    ok(&["convert", "--sidecar", s(&raw_path), s(&b)]);
    // Same content, but a different image (its own uuid): the sidecar must not match.
    let err = fails(&[
        "check",
        "--sidecar",
        s(&dir.path().join("b.zvhd2.zvidx")),
        s(&a),
    ]);
    assert!(
        err.contains("another image") || err.contains("sidecar"),
        "{err}"
    );
    let info = ok(&["info", s(&a)]);
    assert!(info.contains("matches"), "{info}");
    // Found beside the image: refused too, with the way on.
    std::fs::copy(
        dir.path().join("b.zvhd2.zvidx"),
        dir.path().join("a.zvhd2.zvidx"),
    )
    .unwrap();
    let err = fails(&["check", s(&a)]);
    assert!(
        err.contains("another image") && err.contains("--no-sidecar"),
        "{err}"
    );
    ok(&["check", "--no-sidecar", s(&a)]);
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, _) = mixed_disk(dir.path());
    let err = fails(&["info", s(&raw_path)]);
    assert!(err.contains("not a ZVHD2"), "{err}");
    let err = fails(&["info", s(&dir.path().join("missing.zvhd2"))]);
    assert!(err.contains("not found"), "{err}");
    let err = fails(&[
        "convert",
        "--block-size",
        "3MiB",
        s(&raw_path),
        s(&dir.path().join("x.zvhd2")),
    ]);
    assert!(err.contains("power of two"), "{err}");
    // A truncated image: the final footer is gone.
    let image = dir.path().join("disk.zvhd2");
    ok(&["convert", s(&raw_path), s(&image)]);
    let len = std::fs::metadata(&image).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let err = fails(&["check", s(&image)]);
    assert!(err.contains("disk.zvhd2"), "{err}");
}

#[test]
fn qcow2_input_goes_through_qemu_img() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        panic!("qemu-img is not installed: run scripts/install-deps.sh");
    }
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, raw) = mixed_disk(dir.path());
    let qcow = dir.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2", s(&raw_path), s(&qcow)])
        .status()
        .unwrap();
    assert!(st.success());
    let image = dir.path().join("disk.zvhd2");
    ok(&["convert", s(&qcow), s(&image)]);
    let back = dir.path().join("back.raw");
    ok(&["convert", s(&image), s(&back)]);
    let decoded = std::fs::read(&back).unwrap();
    assert_eq!(&decoded[..raw.len()], &raw[..]);
}

#[test]
fn pull_copies_image_and_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let (raw_path, _) = mixed_disk(dir.path());
    let image = dir.path().join("disk.zvhd2");
    ok(&["convert", "--sidecar", s(&raw_path), s(&image)]);
    let copy = dir.path().join("copy.zvhd2");
    ok(&["pull", "--chunk", "1MiB", s(&image), s(&copy)]);
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&image).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.path().join("copy.zvhd2.zvidx")).unwrap(),
        std::fs::read(dir.path().join("disk.zvhd2.zvidx")).unwrap()
    );
    // The pulled copy is the same image: its sidecar matches.
    assert!(ok(&["check", s(&copy)]).contains("verified against the sidecar"));
}

#[test]
fn convert_json_counts_what_was_read() {
    let dir = tempfile::tempdir().unwrap();
    // Block 1 is written zeros, not a hole: it is read, found zero, not stored.
    let (raw_path, raw) = mixed_disk(dir.path());
    let image = dir.path().join("disk.zvhd2");
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["convert", "--json", s(&raw_path), s(&image)])).unwrap();
    assert_eq!(report["bytes_read"], raw.len() as u64);
    assert_eq!(report["blocks"], 5);
    assert_eq!(report["non_zero_blocks"], 4);
    assert_eq!(
        report["image_size"],
        std::fs::metadata(&image).unwrap().len()
    );
    // Written beside and renamed: no temporary left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

/// A raw disk that is not whole sectors converts, zero-padded, with a
/// warning that says so (the disk grows to the next 512 bytes).
#[test]
fn convert_warns_when_the_raw_size_is_not_whole_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("odd.raw");
    std::fs::write(&raw, vec![7u8; 1000]).unwrap();
    let img = dir.path().join("odd.zvhd2");
    let out = zvimg(&["convert", s(&raw), s(&img)]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a whole number of 512-byte sectors") && err.contains("1024 bytes"),
        "{err}"
    );
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", s(&img)])).unwrap();
    assert_eq!(info["disk_size"], 1024, "{info}");
}
