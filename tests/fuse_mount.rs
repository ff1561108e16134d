//! End-to-end tests over a real FUSE mount made by the `zvmount` binary.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::mount::Mounted;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use zvhd2::{WriteOptions, write_image};

const MIB: usize = 1 << 20;

/// A raw disk, its ZVHD2 image and (optionally) the sidecar, in a tempdir.
struct TestImage {
    dir: tempfile::TempDir,
    raw: Vec<u8>,
    zvhd2: PathBuf,
    /// (offset, size) of each block's record, None for zero blocks.
    records: Vec<Option<(u64, u32)>>,
}

/// 6 blocks of 2 MiB and a 300 KiB tail: random, compressible, zero blocks.
fn make_image(with_sidecar: bool) -> TestImage {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut raw = vec![0u8; 6 * 2 * MIB + 300 * 1024];
    rng.fill(&mut raw[..2 * MIB]); // block 0: incompressible
    for (i, b) in raw[2 * MIB..4 * MIB].iter_mut().enumerate() {
        *b = (i / 4096) as u8; // block 1: compressible
    }
    // block 2: zero; block 3: one byte set; block 4: zero; block 5 random half
    raw[3 * 2 * MIB + 12345] = 0xAB;
    rng.fill(&mut raw[5 * 2 * MIB..5 * 2 * MIB + MIB]);
    rng.fill(&mut raw[6 * 2 * MIB..]); // tail block
    let dir = tempfile::tempdir().unwrap();
    let zvhd2 = dir.path().join("disk.zvhd2");
    let out = File::create(&zvhd2).unwrap();
    let summary = write_image(
        &raw[..],
        raw.len() as u64,
        out,
        &WriteOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let records = summary
        .sidecar
        .entries
        .iter()
        .map(|e| (!e.is_zero()).then_some((e.record_offset, e.record_size)))
        .collect();
    if with_sidecar {
        std::fs::write(
            dir.path().join("disk.zvhd2.zvidx"),
            summary.sidecar.encode(),
        )
        .unwrap();
    }
    TestImage {
        dir,
        raw,
        zvhd2,
        records,
    }
}

fn sha256_file(path: &Path) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_vec()
}

/// Random unaligned reads, across blocks and past the end, equal the raw.
fn check_random_reads(file: &File, raw: &[u8], seed: u64, count: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let size = raw.len() as u64;
    let mut buf = vec![0u8; 3 * MIB];
    for _ in 0..count {
        let offset = rng.gen_range(0..size + 8192);
        let len = match rng.gen_range(0..4) {
            0 => rng.gen_range(1..64),
            1 => rng.gen_range(1..8192),
            2 => rng.gen_range(1..MIB),
            _ => rng.gen_range(MIB..3 * MIB),
        };
        let want_end = (offset + len as u64).min(size);
        let want: &[u8] = if offset >= size {
            &[]
        } else {
            &raw[offset as usize..want_end as usize]
        };
        // pread may return less than asked; loop like any careful reader.
        let mut got = 0;
        while got < len {
            let n = file
                .read_at(&mut buf[got..len], offset + got as u64)
                .unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(got, want.len(), "length of read {len}@{offset}");
        assert!(
            buf[..got] == *want,
            "bytes of read {len}@{offset} differ from the raw disk"
        );
    }
}

#[test]
fn mounted_file_equals_the_raw_disk() {
    let img = make_image(true);
    let m = Mounted::new(&img.zvhd2, &[], "disk.raw");
    let path = m.path("disk.raw");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), img.raw.len() as u64);
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    assert_eq!(sha256_file(&path), Sha256::digest(&img.raw).to_vec());
    let file = File::open(&path).unwrap();
    check_random_reads(&file, &img.raw, 1, 300);

    // Read-only, whatever the caller asks for.
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    let stats = m.stats();
    assert!(stats.fuse_reads > 0, "{stats:?}");
    let json = m.stats_json();
    assert_eq!(json["images"]["disk.raw"]["sidecar"], true, "{json}");
    // An open file keeps a busy mount alive (lazily detached) until closed.
    drop(file);
    let status = m.stop();
    assert!(status.success(), "zvmount exited with {status}");
}

#[test]
fn without_sidecar_the_image_index_is_used() {
    let img = make_image(false);
    let m = Mounted::new(&img.zvhd2, &["--name", "vm.img"], "vm.img");
    assert_eq!(
        sha256_file(&m.path("vm.img")),
        Sha256::digest(&img.raw).to_vec()
    );
    assert_eq!(m.stats_json()["images"]["vm.img"]["sidecar"], false);
}

#[test]
fn concurrent_readers_fetch_each_block_once() {
    let img = make_image(true);
    let m = Mounted::new(&img.zvhd2, &["--readahead", "0"], "disk.raw");
    let path = m.path("disk.raw");
    let raw = &img.raw;
    // Eight readers over the same blocks, each in a different order, 4 KiB
    // at a time so they collide inside blocks.
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let path = &path;
            s.spawn(move || {
                let file = File::open(path).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let mut buf = vec![0u8; 4096];
                for _ in 0..400 {
                    let offset = rng.gen_range(0..raw.len() as u64 / 4096) * 4096;
                    file.read_exact_at(&mut buf, offset).unwrap();
                    assert!(
                        buf[..] == raw[offset as usize..offset as usize + 4096],
                        "bytes at {offset}"
                    );
                }
            });
        }
    });
    let stats = m.stats();
    let stored = img.records.iter().flatten().count() as u64;
    assert!(
        stats.blocks_fetched <= stored,
        "{} blocks fetched for {stored} stored: {stats:?}",
        stats.blocks_fetched
    );
    assert!(
        stats.store_requests <= stored,
        "{} GETs for {stored} stored blocks: {stats:?}",
        stats.store_requests
    );
}

#[test]
fn a_corrupt_record_fails_only_its_own_reads() {
    let img = make_image(true);
    // Flip one payload byte of block 1's record.
    let (offset, _) = img.records[1].expect("block 1 is stored");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img.zvhd2)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset + 100).unwrap();
    f.write_all_at(&[b[0] ^ 0xFF], offset + 100).unwrap();
    drop(f);

    let m = Mounted::new(&img.zvhd2, &["--readahead", "0"], "disk.raw");
    let file = File::open(m.path("disk.raw")).unwrap();
    let mut buf = vec![0u8; 4096];
    for attempt in 0..2 {
        let err = file
            .read_exact_at(&mut buf, 2 * MIB as u64 + 8192)
            .unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EIO),
            "attempt {attempt}: {err}"
        );
    }
    // Every other block still reads right.
    for block in [0usize, 2, 3, 4, 5, 6] {
        let off = block * 2 * MIB;
        let len = 4096.min(img.raw.len() - off);
        file.read_exact_at(&mut buf[..len], off as u64).unwrap();
        assert!(buf[..len] == img.raw[off..off + len], "block {block}");
    }
    let log = m.stderr();
    assert!(
        log.contains("block 1"),
        "log does not name the block:\n{log}"
    );
    assert!(m.stats().verify_failures >= 1);
}

#[test]
fn the_image_vanishing_gives_eio_then_recovers() {
    let img = make_image(true);
    let m = Mounted::new(
        &img.zvhd2,
        &["--readahead", "0", "--retries", "0"],
        "disk.raw",
    );
    let file = File::open(m.path("disk.raw")).unwrap();
    let moved = img.dir.path().join("elsewhere");
    std::fs::rename(&img.zvhd2, &moved).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = file.read_exact_at(&mut buf, 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    std::fs::rename(&moved, &img.zvhd2).unwrap();
    file.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..] == img.raw[..4096]);
}

#[test]
fn several_images_under_one_mount() {
    let img = make_image(true);
    let second = img.dir.path().join("other.zvhd2");
    std::fs::copy(&img.zvhd2, &second).unwrap();
    let m = Mounted::builder()
        .arg(&img.zvhd2)
        .arg(&second)
        .expect_file("disk.raw")
        .expect_file("other.raw")
        .start();
    assert_eq!(
        sha256_file(&m.path("other.raw")),
        Sha256::digest(&img.raw).to_vec()
    );
    drop(m);

    // A directory source mounts every image in it.
    let m = Mounted::builder()
        .arg(img.dir.path())
        .expect_file("disk.raw")
        .expect_file("other.raw")
        .start();
    assert_eq!(
        std::fs::metadata(m.path("disk.raw")).unwrap().len(),
        img.raw.len() as u64
    );
}

#[test]
fn bad_sources_and_mountpoints_are_refused_clearly() {
    let img = make_image(false);
    let err = Mounted::builder()
        .arg(img.dir.path().join("missing.zvhd2"))
        .try_start()
        .unwrap_err();
    assert!(err.contains("missing.zvhd2"), "{err}");
    assert!(err.contains("zvmount: error:"), "{err}");

    let not_an_image = img.dir.path().join("junk.zvhd2");
    std::fs::write(&not_an_image, vec![7u8; 8192]).unwrap();
    let err = Mounted::builder()
        .arg(&not_an_image)
        .try_start()
        .unwrap_err();
    assert!(err.contains("junk.zvhd2"), "{err}");

    // A profile that could not be written at unmount is refused at start.
    let err = Mounted::builder()
        .arg(&img.zvhd2)
        .arg("--record-profile")
        .arg(img.dir.path().join("no-such-dir").join("boot.profile"))
        .try_start()
        .unwrap_err();
    assert!(
        err.contains("--record-profile") && err.contains("does not exist"),
        "{err}"
    );

    // A stale mount left by a crashed daemon is recovered, not refused:
    // tests/service.rs.
}

#[test]
fn qemu_img_sees_the_raw_disk() {
    if std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("qemu-img not installed: skipping");
        return;
    }
    let img = make_image(true);
    let raw_path = img.dir.path().join("disk.bin");
    std::fs::write(&raw_path, &img.raw).unwrap();
    let m = Mounted::new(&img.zvhd2, &[], "disk.raw");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "raw"])
        .arg(m.path("disk.raw"))
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(json["virtual-size"], img.raw.len() as u64);
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(m.path("disk.raw"))
        .arg(&raw_path)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
}

/// A daemon started with `--daemon`: not our child once its parent has
/// returned, so it is stopped by pid (SIGTERM) and waited for by watching
/// the mount go away; lazily unmounted if it does not.
struct Detached {
    pid: libc::pid_t,
    mountpoint: PathBuf,
}

impl Detached {
    /// Sends SIGTERM and waits (bounded) for the mount to disappear.
    fn stop(&mut self) -> bool {
        if self.pid == 0 {
            return true;
        }
        // SAFETY: kill(2) with a pid read from the daemon's own message.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        self.pid = 0;
        wait_unmounted(&self.mountpoint)
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if !self.stop() {
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

/// Waits up to 20 s for `mountpoint` not to be mounted; false if it still is.
fn wait_unmounted(mountpoint: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while common::mount::is_mounted(mountpoint) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

#[test]
fn daemon_mode_returns_only_once_mounted() {
    let img = make_image(true);
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let log = dir.path().join("zvmount.log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zvmount"))
        .arg("--daemon")
        .arg("--log-file")
        .arg(&log)
        .arg(&img.zvhd2)
        .arg(&mountpoint)
        .env("RUST_LOG", "warn,zvmount=info,fuser=off")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let pid: libc::pid_t = stderr
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pid in the message: {stderr}"));
    let mut daemon = Detached {
        pid,
        mountpoint: mountpoint.clone(),
    };
    assert!(out.status.success(), "{}: {stderr}", out.status);
    // Mounted already when the command returned: no waiting here.
    assert!(common::mount::is_mounted(&mountpoint), "{stderr}");
    assert_eq!(
        sha256_file(&mountpoint.join("disk.raw")),
        Sha256::digest(&img.raw).to_vec()
    );
    // Detached from our session: the terminal's signals cannot reach it.
    // SAFETY: getsid(2) has no memory effects.
    let (ours, its) = unsafe { (libc::getsid(0), libc::getsid(pid)) };
    assert!(its > 0 && its != ours, "session {its} vs ours {ours}");
    assert!(daemon.stop(), "{} still mounted", mountpoint.display());
    // After detaching, its logs go to --log-file; so do those from before
    // (the image opened, mounted), which the terminal saw too.
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("unmounting"), "log file: {logged}");
    assert!(
        logged.contains("image opened") && logged.contains("mounted"),
        "log file: {logged}"
    );
}

#[test]
fn daemon_mode_failures_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zvmount"))
        .arg("--daemon")
        .arg(dir.path().join("missing.zvhd2"))
        .arg(&mountpoint)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("missing.zvhd2"),
        "names the source: {stderr}"
    );
    assert!(stderr.contains("before mounting"), "{stderr}");
    assert!(!common::mount::is_mounted(&mountpoint));
}

#[test]
fn stopping_while_a_vm_holds_the_disk_detaches_and_keeps_serving_it() {
    let img = make_image(true);
    let m = Mounted::new(&img.zvhd2, &[], "disk.raw");
    let file = File::open(m.path("disk.raw")).unwrap();
    let mut first = vec![0u8; 4096];
    file.read_exact_at(&mut first, 0).unwrap();
    // SAFETY: kill(2) on our running child.
    unsafe { libc::kill(m.pid().unwrap() as libc::pid_t, libc::SIGTERM) };
    // The mount leaves the namespace (lazily detached) ...
    assert!(wait_unmounted(m.dir()), "{}", m.stderr());
    // ... while the open file keeps reading the right bytes, blocks never
    // read before included.
    let mut all = vec![0u8; img.raw.len()];
    file.read_exact_at(&mut all, 0).unwrap();
    assert!(all == img.raw, "bytes differ after the lazy unmount");
    assert!(m.stderr().contains("busy"), "says why: {}", m.stderr());
    drop(file);
    let status = m.stop();
    assert!(status.success(), "zvmount exited with {status}");
}

#[test]
fn stat_and_statfs_look_like_a_read_only_disk() {
    use std::os::unix::fs::MetadataExt;
    let img = make_image(true);
    let m = Mounted::new(&img.zvhd2, &[], "disk.raw");
    let meta = std::fs::metadata(m.path("disk.raw")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.nlink(), 1);
    assert_eq!(meta.blocks(), (img.raw.len() as u64).div_ceil(512));
    assert!(meta.blksize() >= 4096, "{}", meta.blksize());
    // The image's own mtime, stable across stats (a changing one would
    // make the kernel drop the page cache).
    let image_mtime = std::fs::metadata(&img.zvhd2).unwrap().mtime();
    assert_eq!(meta.mtime(), image_mtime);
    assert_eq!(
        std::fs::metadata(m.path("disk.raw")).unwrap().mtime(),
        meta.mtime()
    );
    let root = std::fs::metadata(m.dir()).unwrap();
    assert!(root.is_dir());
    assert_eq!(root.permissions().mode() & 0o777, 0o555);
    let mut names: Vec<String> = std::fs::read_dir(m.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".zvmount-stats.json", "disk.raw"]);
    // `df`: read-only, and large enough to hold the disk.
    let path = std::ffi::CString::new(m.dir().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs(3) fills the zeroed struct; `path` is NUL-terminated.
    let vfs = unsafe {
        let mut vfs: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(path.as_ptr(), &mut vfs), 0);
        vfs
    };
    assert_ne!(vfs.f_flag & libc::ST_RDONLY, 0, "mounted read-only");
    assert!(vfs.f_blocks * vfs.f_frsize >= img.raw.len() as u64);
    assert_eq!(vfs.f_bavail, 0);
}

/// The boot-profile loop an operator runs: record the blocks a first boot
/// reads, embed them in the sidecar, and a fresh mount fetches them before
/// they are asked for.
#[test]
fn a_recorded_boot_profile_is_replayed_by_the_next_mount() {
    let img = make_image(true);
    let profile = img.dir.path().join("boot.profile");
    let touch = |m: &Mounted, blocks: &[u64]| {
        let file = File::open(m.path("disk.raw")).unwrap();
        for &b in blocks {
            let mut buf = vec![0u8; 4096];
            file.read_exact_at(&mut buf, b * 2 * MIB as u64).unwrap();
            let at = (b as usize) * 2 * MIB;
            assert_eq!(buf, img.raw[at..at + 4096], "block {b}");
        }
    };

    // 1. Record: first touches in the order 5, 1, 3.
    let recording = profile.to_str().unwrap().to_string();
    let m = Mounted::new(
        &img.zvhd2,
        &["--readahead", "0", "--record-profile", &recording],
        "disk.raw",
    );
    touch(&m, &[5, 1, 3, 5, 1]);
    assert!(m.stop().success());
    let text = std::fs::read_to_string(&profile).expect("profile written on unmount");
    let blocks = zvmount::prefetch::parse_profile(&text).unwrap();
    assert_eq!(blocks, vec![5, 1, 3], "recorded profile:\n{text}");

    // 2. Embed it in the sidecar, as `zvimg index --boot-profile` does.
    let sidecar_path = img.dir.path().join("disk.zvhd2.zvidx");
    let mut sidecar = zvhd2::Sidecar::decode(&std::fs::read(&sidecar_path).unwrap()).unwrap();
    sidecar.boot_profile = blocks;
    std::fs::write(&sidecar_path, sidecar.encode()).unwrap();

    // 3. A fresh mount replays it: the blocks arrive without being read.
    let m = Mounted::new(&img.zvhd2, &["--readahead", "0"], "disk.raw");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while m.stats().blocks_prefetched < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "profile not replayed: {:?}",
            m.stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = m.stats();
    assert_eq!(before.cache_misses, 0, "{before:?}");
    touch(&m, &[5, 1, 3]);
    let after = m.stats();
    assert_eq!(
        after.store_requests, before.store_requests,
        "reads went to the store: {after:?}"
    );
    assert_eq!(after.cache_misses, 0, "{after:?}");
    assert!(m.stop().success());
}

/// The budget fix over a real mount: two images whose boot profiles are
/// each larger than the mount's memory cache. The mount holds at most one
/// prefetch budget in flight for both, each replay brings in its share
/// (half the cache, split between the two), and both guests then read
/// their replayed blocks from the cache.
#[test]
fn two_images_replay_within_one_budget_and_cache() {
    const BLOCKS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let mut raws = Vec::new();
    for (name, seed) in [("a", 11u64), ("b", 13)] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut raw = vec![0u8; BLOCKS * 2 * MIB];
        rng.fill(&mut raw[..]);
        let path = dir.path().join(format!("{name}.zvhd2"));
        let summary = write_image(
            &raw[..],
            raw.len() as u64,
            File::create(&path).unwrap(),
            &WriteOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        let mut sidecar = summary.sidecar;
        sidecar.boot_profile = (0..BLOCKS as u64).collect();
        std::fs::write(
            dir.path().join(format!("{name}.zvhd2.zvidx")),
            sidecar.encode(),
        )
        .unwrap();
        raws.push((path, raw));
    }
    let budget = 10 * MIB as u64;
    let m = Mounted::builder()
        .args([
            "--readahead",
            "0",
            "--mem-cache",
            "16MiB",
            "--prefetch-budget",
            "10MiB",
        ])
        .arg(&raws[0].0)
        .arg(&raws[1].0)
        .expect_file("a.raw")
        .expect_file("b.raw")
        .start();
    // 16 MiB of cache: 8 MiB for replays, 4 MiB (two blocks) per image.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while m.stats().profile_capped < 2 * (BLOCKS as u64 - 2) || m.stats().blocks_prefetched < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "replays did not finish: {:?}",
            m.stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = m.stats();
    assert_eq!(before.profile_blocks, 4, "{before:?}");
    assert!(before.prefetch_bytes_peak > 0, "{before:?}");
    assert!(
        before.prefetch_bytes_peak <= budget,
        "more than the one budget in flight: {before:?}"
    );
    for (name, raw) in [("a.raw", &raws[0].1), ("b.raw", &raws[1].1)] {
        let file = File::open(m.path(name)).unwrap();
        for b in 0..2usize {
            let mut buf = vec![0u8; 4096];
            file.read_exact_at(&mut buf, (b * 2 * MIB) as u64).unwrap();
            assert_eq!(
                buf,
                raw[b * 2 * MIB..b * 2 * MIB + 4096],
                "{name} block {b}"
            );
        }
    }
    let after = m.stats();
    assert_eq!(after.store_requests, before.store_requests, "{after:?}");
    assert_eq!(after.cache_misses, 0, "{after:?}");
    assert!(m.stop().success());
}
