//! The image read path over a real file store behind the fault wrapper:
//! bytes equal the raw disk, zero blocks and the size tail cost no GET,
//! single-flight, errors confined to the bad block and never cached, and
//! the memory/disk caches.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::images::{BlockKind, ImageFiles, raw_from_kinds, raw_mixed, write_files};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zvhd2::{BlockLocation, VerifyFailure};
use zvmount::cache::{BlockCache, HostCache, MemoryCache, NoCache, TieredCache};
use zvmount::image::{
    BlockFailure, Image, ImageError, ImageLayout, ImageOptions, SidecarSource, SizeMode,
};
use zvmount::metrics::Metrics;
use zvstore::ObjectStore;
use zvstore::fault::{FaultControl, FaultPlan, FaultStore};
use zvstore::file::FileStore;

const BS: u32 = 1 << 20;
const KEY: &str = "disk.zvhd2";

struct Opened {
    image: Arc<Image>,
    control: Arc<FaultControl>,
    metrics: Arc<Metrics>,
    /// Requests the store saw during open.
    open_requests: u64,
}

impl Opened {
    /// Store requests since the image was opened.
    fn gets(&self) -> u64 {
        self.control.requests() - self.open_requests
    }
}

fn quiet() -> ImageOptions {
    // No readahead: these tests count GETs exactly.
    ImageOptions {
        readahead_blocks: 0,
        ..ImageOptions::default()
    }
}

async fn open_with(
    files: &ImageFiles,
    sidecar: bool,
    cache: Arc<dyn BlockCache>,
    options: ImageOptions,
) -> Opened {
    let store = Arc::new(FaultStore::new(FileStore::new(files.dir.path())));
    let control = store.control();
    let source = if sidecar {
        SidecarSource::Auto
    } else {
        SidecarSource::Ignore
    };
    let layout = ImageLayout::load(store.as_ref(), KEY, &source)
        .await
        .expect("open image");
    assert_eq!(layout.sidecar.is_some(), sidecar);
    let open_requests = control.requests();
    let metrics = Arc::new(Metrics::default());
    let store: Arc<dyn ObjectStore> = store;
    let image = Image::new(store, layout, cache, metrics.clone(), options);
    Opened {
        image,
        control,
        metrics,
        open_requests,
    }
}

async fn open(files: &ImageFiles, sidecar: bool) -> Opened {
    open_with(
        files,
        sidecar,
        Arc::new(MemoryCache::new(256 << 20)),
        quiet(),
    )
    .await
}

/// The disk as the image should show it: raw, zero-padded to `size`.
fn expected(raw: &[u8], size: u64) -> Vec<u8> {
    let mut v = raw.to_vec();
    v.resize(size as usize, 0);
    v
}

#[tokio::test]
async fn read_at_equals_raw_at_random_offsets() {
    // 9.5 blocks and an odd tail: orig_size is rounded up to 512 bytes.
    let mut raw = raw_mixed(10, BS, 7);
    raw.truncate(9 * BS as usize + BS as usize / 2 + 777);
    let files = write_files(raw.clone(), BS);
    for sidecar in [true, false] {
        let o = open(&files, sidecar).await;
        let size = o.image.size();
        assert_eq!(size, raw.len().div_ceil(512) as u64 * 512);
        let want = expected(&raw, size);
        let mut rng = StdRng::seed_from_u64(42);
        for i in 0..400 {
            let offset = match i % 4 {
                0 => rng.gen_range(0..size),
                // Near a block boundary.
                1 => {
                    (rng.gen_range(0..10u64) * u64::from(BS)).saturating_sub(rng.gen_range(0..5000))
                }
                // Near the end, including past it.
                2 => size - rng.gen_range(0..9000).min(size) + rng.gen_range(0..2) * 5000,
                _ => rng.gen_range(0..size / 4096) * 4096,
            };
            let len: u32 = match i % 3 {
                0 => rng.gen_range(1..=4096),
                1 => rng.gen_range(1..=3 * BS),
                _ => 131072,
            };
            let got = o
                .image
                .read_at(offset, len)
                .await
                .unwrap_or_else(|e| panic!("read {offset}+{len}: {e}"));
            let end = (offset + u64::from(len)).min(size);
            let want_slice = if offset >= size {
                &[][..]
            } else {
                &want[offset as usize..end as usize]
            };
            assert_eq!(got.len(), want_slice.len(), "length of read {offset}+{len}");
            assert!(
                got[..] == *want_slice,
                "bytes of read {offset}+{len} (sidecar {sidecar})"
            );
        }
        assert_eq!(o.metrics.snapshot().verify_failures, 0);
    }
}

#[tokio::test]
async fn curr_size_tail_reads_as_zeros_with_no_fetch() {
    let raw = raw_from_kinds(
        &[
            BlockKind::Random,
            BlockKind::Compressible,
            BlockKind::Random,
        ],
        BS,
        3,
    );
    let files = write_files(raw.clone(), BS);
    let o = open_with(
        &files,
        true,
        Arc::new(MemoryCache::new(64 << 20)),
        ImageOptions {
            size_mode: SizeMode::Curr,
            ..quiet()
        },
    )
    .await;
    let curr = o.image.layout().header.curr_size();
    assert_eq!(o.image.size(), curr);
    assert_eq!(curr, 1 << 30);
    for (offset, len) in [
        (3 * u64::from(BS), 4096u32),
        (curr - 100, 4096),
        (500 << 20, 8 << 20),
    ] {
        let got = o.image.read_at(offset, len).await.unwrap();
        assert_eq!(
            got.len() as u64,
            (offset + u64::from(len)).min(curr) - offset
        );
        assert!(got.iter().all(|&b| b == 0), "tail at {offset} is zeros");
    }
    assert_eq!(o.gets(), 0, "the tail needs no GET");
    assert!(o.image.read_at(curr, 10).await.unwrap().is_empty());
    // A read straddling the end of the data and the tail.
    let edge = 3 * u64::from(BS) - 100;
    let got = o.image.read_at(edge, 200).await.unwrap();
    assert_eq!(&got[..100], &raw[edge as usize..]);
    assert!(got[100..].iter().all(|&b| b == 0));
}

#[tokio::test]
async fn zero_blocks_need_no_get() {
    use BlockKind::*;
    let raw = raw_from_kinds(&[Zero, Random, Zero, Zero, Sparse], BS, 5);
    let files = write_files(raw.clone(), BS);
    let o = open(&files, true).await;
    for b in [0u64, 2, 3] {
        let block = o.image.read_block(b).await.unwrap();
        assert_eq!(block.len(), BS as usize);
        assert!(block.iter().all(|&x| x == 0));
    }
    let span = o
        .image
        .read_at(2 * u64::from(BS) + 5, 2 * BS - 10)
        .await
        .unwrap();
    assert!(span.iter().all(|&x| x == 0));
    assert_eq!(o.gets(), 0);
    assert!(o.metrics.snapshot().zero_block_reads >= 5);
    // The sparse block has a record and its one non-zero byte.
    assert_eq!(
        o.image.read_block(4).await.unwrap()[..],
        raw[4 * BS as usize..]
    );
    assert_eq!(o.gets(), 1);
    // Past the end of the disk is an error naming the image.
    let err = o.image.read_block(5).await.unwrap_err();
    assert!(matches!(err, ImageError::OutOfRange { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_one_get_for_32_readers() {
    let raw = raw_from_kinds(&[BlockKind::Random, BlockKind::Random], BS, 9);
    let files = write_files(raw.clone(), BS);
    let o = open(&files, true).await;
    // Slow the store so that the readers overlap the fetch (the count holds
    // either way: late readers hit the cache).
    o.control.set(FaultPlan {
        latency: Duration::from_millis(100),
        ..FaultPlan::default()
    });
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let image = o.image.clone();
            tokio::spawn(async move { image.read_block(1).await })
        })
        .collect();
    for r in readers {
        let block = r.await.unwrap().unwrap();
        assert!(block[..] == raw[BS as usize..]);
    }
    assert_eq!(o.gets(), 1, "one GET however many readers");
    let m = o.metrics.snapshot();
    assert_eq!(m.blocks_fetched, 1);
    assert_eq!(m.cache_misses, 1);
    assert_eq!(m.inflight_joins + m.mem_cache_hits, 31);
    assert!(
        m.inflight_joins > 0,
        "readers joined the fetch in flight: {m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_on_different_blocks() {
    let raw = raw_mixed(12, BS, 11);
    let files = write_files(raw.clone(), BS);
    let o = open(&files, true).await;
    let mut tasks = Vec::new();
    for reader in 0..48u64 {
        let image = o.image.clone();
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move {
            let b = (reader * 7) % 12;
            let off = b * u64::from(BS) + reader * 512;
            let got = image.read_at(off, 64 << 10).await.unwrap();
            assert!(
                got[..] == raw[off as usize..off as usize + (64 << 10)],
                "reader {reader} block {b}"
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let non_zero = o.image.layout().index.non_zero_count();
    assert_eq!(o.gets(), non_zero, "each non-zero block fetched once");
}

#[tokio::test]
async fn multi_block_read_coalesces_neighbouring_records() {
    let raw = raw_from_kinds(&[BlockKind::Random; 4], BS, 13);
    let files = write_files(raw.clone(), BS);
    let o = open(&files, true).await;
    let got = o.image.read_at(100, 3 * BS).await.unwrap();
    assert!(got[..] == raw[100..100 + 3 * BS as usize]);
    assert_eq!(o.gets(), 1, "four neighbouring records in one GET");
    assert_eq!(o.metrics.snapshot().blocks_fetched, 4);
}

/// Flips a byte inside the compressed payload of `block`'s record.
fn corrupt_record_in_file(files: &ImageFiles, block: u64) -> u64 {
    let bytes = std::fs::read(&files.image).unwrap();
    let mem = common::images::MemImage::open(&bytes).unwrap();
    let loc = match mem.index.lookup(block) {
        Some(BlockLocation::Record(loc)) => loc,
        other => panic!("{other:?}"),
    };
    let mut bytes = bytes.clone();
    bytes[loc.offset as usize + 48 + 100] ^= 0x01;
    std::fs::write(&files.image, bytes).unwrap();
    loc.offset
}

#[tokio::test]
async fn corrupted_record_fails_that_block_only() {
    let raw = raw_from_kinds(
        &[
            BlockKind::Random,
            BlockKind::Compressible,
            BlockKind::Random,
        ],
        BS,
        17,
    );
    let files = write_files(raw.clone(), BS);
    let offset = corrupt_record_in_file(&files, 1);
    let o = open(&files, true).await;
    let err = o.image.read_block(1).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ImageError::Block { block: 1, source, .. }
            if matches!(&**source, BlockFailure::Verify(e) if matches!(e.failure, VerifyFailure::RecordCrc { .. }))),
        "{msg}"
    );
    assert!(err.is_corruption(), "{msg}");
    assert!(msg.contains("CRC32C"), "{msg}");
    assert!(
        msg.contains(&offset.to_string()),
        "names the record offset: {msg}"
    );
    assert!(msg.contains("disk.zvhd2"), "names the image: {msg}");
    // A read spanning the bad block fails; the neighbours are fine.
    assert!(o.image.read_at(u64::from(BS) - 10, 20).await.is_err());
    assert!(o.image.read_block(0).await.unwrap()[..] == raw[..BS as usize]);
    assert!(o.image.read_block(2).await.unwrap()[..] == raw[2 * BS as usize..]);
    // The failure is not cached: the next read fetches again (and, the
    // record failing its check, once more before giving up).
    let before = o.gets();
    assert!(o.image.read_block(1).await.is_err());
    assert_eq!(o.gets(), before + 2);
    assert!(o.metrics.snapshot().verify_failures >= 2);
}

#[tokio::test]
async fn damaged_record_framing_fails_without_sidecar() {
    let raw = raw_from_kinds(&[BlockKind::Random, BlockKind::Random], BS, 19);
    let files = write_files(raw.clone(), BS);
    let mut bytes = std::fs::read(&files.image).unwrap();
    let loc = match common::images::MemImage::open(&bytes)
        .unwrap()
        .index
        .lookup(1)
    {
        Some(BlockLocation::Record(loc)) => loc,
        other => panic!("{other:?}"),
    };
    // The "hwstream bg" magic of block 1.
    bytes[loc.offset as usize] ^= 0xff;
    std::fs::write(&files.image, bytes).unwrap();
    let o = open(&files, false).await;
    let err = o.image.read_block(1).await.unwrap_err();
    assert!(
        matches!(&err, ImageError::Block { block: 1, source, .. }
            if matches!(&**source, BlockFailure::Verify(e) if matches!(e.failure, VerifyFailure::Record(_)))),
        "{err}"
    );
    assert!(err.is_corruption(), "{err}");
    assert!(o.image.read_block(0).await.unwrap()[..] == raw[..BS as usize]);
}

#[tokio::test]
async fn store_faults_are_errors_and_the_next_read_retries() {
    let raw = raw_from_kinds(&[BlockKind::Random, BlockKind::Compressible], BS, 23);
    let files = write_files(raw.clone(), BS);
    // No cache, so every read goes to the store and meets the next fault.
    let o = open_with(&files, true, Arc::new(NoCache), quiet()).await;
    for (plan, corruption) in [
        (
            FaultPlan {
                fail_permanent: 1,
                ..FaultPlan::default()
            },
            false,
        ),
        (
            FaultPlan {
                fail_transient: 1,
                ..FaultPlan::default()
            },
            false,
        ),
        (
            FaultPlan {
                truncate: 1,
                ..FaultPlan::default()
            },
            false,
        ),
        (
            // Damaged on the fetch and on the one refetch.
            FaultPlan {
                corrupt: 2,
                ..FaultPlan::default()
            },
            true,
        ),
    ] {
        let desc = format!("{plan:?}");
        o.control.set(plan);
        let err = o.image.read_block(1).await.expect_err(&desc);
        assert!(
            matches!(err, ImageError::Block { block: 1, .. }),
            "{desc}: {err}"
        );
        // Fetch failures are reported as such, not as bad content.
        assert_eq!(err.is_corruption(), corruption, "{desc}: {err}");
        assert!(err.to_string().contains("disk.zvhd2"), "{desc}: {err}");
        let block = o
            .image
            .read_block(1)
            .await
            .unwrap_or_else(|e| panic!("{desc}: retry failed: {e}"));
        assert!(block[..] == raw[BS as usize..], "{desc}");
    }
    // Damaged in transit once: the refetch serves the read.
    o.control.set(FaultPlan {
        corrupt: 1,
        ..FaultPlan::default()
    });
    let block = o.image.read_block(1).await.expect("refetched after damage");
    assert!(block[..] == raw[BS as usize..]);
    let m = o.metrics.snapshot();
    assert_eq!(m.fetch_errors, 3, "{m:?}");
    assert_eq!(m.verify_failures, 3, "{m:?}");
}

#[tokio::test]
async fn memory_cache_byte_bound_holds_through_reads() {
    let raw = raw_from_kinds(&[BlockKind::Random; 8], BS, 29);
    let files = write_files(raw.clone(), BS);
    let mem = Arc::new(MemoryCache::new(3 * u64::from(BS)));
    let o = open_with(&files, true, mem.clone(), quiet()).await;
    for round in 0..2 {
        for b in 0..8u64 {
            let got = o
                .image
                .read_at(b * u64::from(BS) + 4096, 4096)
                .await
                .unwrap();
            assert!(
                got[..] == raw[(b * u64::from(BS) + 4096) as usize..][..4096],
                "round {round} block {b}"
            );
            let st = mem.stats();
            assert!(st.bytes <= 3 * u64::from(BS), "{st:?}");
        }
    }
    assert_eq!(mem.stats().entries, 3);
    assert_eq!(
        o.gets(),
        16,
        "an 8-block cycle through a 3-block cache always misses"
    );
}

#[tokio::test]
async fn no_cache_still_reads_correctly() {
    let raw = raw_from_kinds(&[BlockKind::Random, BlockKind::Random], BS, 31);
    let files = write_files(raw.clone(), BS);
    let o = open_with(&files, true, Arc::new(NoCache), quiet()).await;
    for _ in 0..2 {
        assert!(o.image.read_block(1).await.unwrap()[..] == raw[BS as usize..]);
    }
    assert_eq!(o.gets(), 2);
}

/// Memory in front of the host cache, with the image attached to it.
async fn open_host_cached(files: &ImageFiles, host: &Arc<HostCache>) -> Opened {
    let layout = ImageLayout::load(&FileStore::new(files.dir.path()), KEY, &SidecarSource::Auto)
        .await
        .unwrap();
    host.attach(&zvmount::image::persist::cache_spec(&layout))
        .unwrap();
    let tiered = Arc::new(TieredCache::new(
        Arc::new(MemoryCache::new(64 << 20)),
        Arc::clone(host) as Arc<dyn BlockCache>,
    ));
    open_with(files, true, tiered, quiet()).await
}

#[tokio::test]
async fn host_cache_survives_reopen_and_serves_without_gets() {
    let raw = raw_mixed(6, BS, 37);
    let files = write_files(raw.clone(), BS);
    // The cache keeps 5% of its file system free: use one with room.
    let cache_dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    {
        let host = Arc::new(HostCache::open(cache_dir.path(), 64 << 20).unwrap());
        let o = open_host_cached(&files, &host).await;
        for b in 0..6 {
            o.image.read_block(b).await.unwrap();
        }
        host.flush();
        assert_eq!(host.stats().writes, o.image.layout().index.non_zero_count());
    }
    let host = Arc::new(HostCache::open(cache_dir.path(), 64 << 20).unwrap());
    let o = open_host_cached(&files, &host).await;
    let size = o.image.size();
    let got = o.image.read_at(0, size as u32).await.unwrap();
    assert!(got[..] == raw[..]);
    assert_eq!(o.gets(), 0, "every block came from the host cache");
    let m = o.metrics.snapshot();
    assert_eq!(m.disk_cache_hits, o.image.layout().index.non_zero_count());
    assert_eq!(m.cache_misses, 0);
    // Now promoted to memory.
    o.image.read_block(1).await.unwrap();
    assert_eq!(o.metrics.snapshot().mem_cache_hits, 1);
}

/// Prints the latency of warm 4 KiB reads and of cold misses (no assertion
/// on time). Run: `cargo test --release --test image_read -- --ignored --nocapture latency`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency_figures() {
    let bs: u32 = 2 << 20;
    let raw = raw_from_kinds(
        &[
            BlockKind::Random,
            BlockKind::Compressible,
            BlockKind::Random,
            BlockKind::Compressible,
        ],
        bs,
        71,
    );
    let files = write_files(raw, bs);
    let o = open(&files, true).await;
    let mut cold = Vec::new();
    for b in 0..4u64 {
        let t = std::time::Instant::now();
        o.image.read_at(b * u64::from(bs), 4096).await.unwrap();
        cold.push(t.elapsed());
    }
    let mut rng = StdRng::seed_from_u64(1);
    let mut warm = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let off = rng.gen_range(0..(4 * u64::from(bs) - 4096) / 4096) * 4096;
        let t = std::time::Instant::now();
        let got = o.image.read_at(off, 4096).await.unwrap();
        warm.push(t.elapsed());
        assert_eq!(got.len(), 4096);
    }
    warm.sort();
    let pct = |p: f64| warm[((warm.len() as f64 * p) as usize).min(warm.len() - 1)];
    println!("cold 4 KiB reads (GET + verify + decode of a 2 MiB block, local file): {cold:?}");
    println!(
        "warm 4 KiB reads: p50 {:?} p99 {:?} max {:?}",
        pct(0.50),
        pct(0.99),
        warm[warm.len() - 1]
    );
}
