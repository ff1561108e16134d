//! Prefetching over a real file store: sequential reads trigger readahead
//! whose blocks later reads find in flight or cached, a boot profile is
//! fetched before the reads that need it, the budget bounds it, and the
//! access recorder writes a profile the replay can use.

mod common;

use std::sync::Arc;

use common::images::{BlockKind, ImageFiles, raw_from_kinds, write_files};
use zvhd2::Sidecar;
use zvmount::cache::MemoryCache;
use zvmount::image::{Image, ImageLayout, ImageOptions, MountContext, MountLimits, SidecarSource};
use zvmount::metrics::Metrics;
use zvmount::prefetch::parse_profile;
use zvstore::ObjectStore;
use zvstore::fault::{FaultControl, FaultStore};
use zvstore::file::FileStore;

const BS: u32 = 1 << 20;
const KEY: &str = "disk.zvhd2";

async fn open(
    files: &ImageFiles,
    options: ImageOptions,
) -> (Arc<Image>, Arc<FaultControl>, Arc<Metrics>, u64) {
    open_with_cache(files, options, 256 << 20).await
}

async fn open_with_cache(
    files: &ImageFiles,
    options: ImageOptions,
    cache_bytes: u64,
) -> (Arc<Image>, Arc<FaultControl>, Arc<Metrics>, u64) {
    let store = Arc::new(FaultStore::new(FileStore::new(files.dir.path())));
    let control = store.control();
    let layout = ImageLayout::load(store.as_ref(), KEY, &SidecarSource::Auto)
        .await
        .expect("open image");
    let opened = control.requests();
    let metrics = Arc::new(Metrics::default());
    let store: Arc<dyn ObjectStore> = store;
    let image = Image::new(
        store,
        layout,
        Arc::new(MemoryCache::new(cache_bytes)),
        metrics.clone(),
        options,
    );
    (image, control, metrics, opened)
}

/// Rewrites the sidecar beside the image with `profile` as its boot profile.
fn set_boot_profile(files: &ImageFiles, profile: Vec<u64>) {
    let mut sidecar: Sidecar = files.summary.sidecar.clone();
    sidecar.boot_profile = profile;
    std::fs::write(&files.sidecar, sidecar.encode()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_reads_trigger_readahead() {
    let raw = raw_from_kinds(&[BlockKind::Random; 12], BS, 41);
    let files = write_files(raw.clone(), BS);
    let (image, _control, metrics, _) = open(
        &files,
        ImageOptions {
            readahead_blocks: 4,
            ..ImageOptions::default()
        },
    )
    .await;
    // 64 KiB reads straight through blocks 0..8.
    let mut off = 0u64;
    while off < 8 * u64::from(BS) {
        let got = image.read_at(off, 64 << 10).await.unwrap();
        assert!(
            got[..] == raw[off as usize..off as usize + (64 << 10)],
            "at {off}"
        );
        off += 64 << 10;
    }
    let m = metrics.snapshot();
    assert!(m.readahead_triggers >= 1, "{m:?}");
    // Blocks 0, 1 and 2 were demand misses before the stream was seen as
    // sequential; from 3 on every block was already in flight or cached.
    assert_eq!(m.cache_misses, 3, "{m:?}");
    assert!(m.blocks_prefetched >= 5 || m.inflight_joins > 0, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reads_do_not_trigger_readahead() {
    let raw = raw_from_kinds(&[BlockKind::Random; 12], BS, 43);
    let files = write_files(raw.clone(), BS);
    let (image, control, metrics, opened) = open(&files, ImageOptions::default()).await;
    for b in [7u64, 2, 10, 0, 5] {
        image.read_block(b).await.unwrap();
    }
    assert_eq!(metrics.snapshot().readahead_triggers, 0);
    assert_eq!(control.requests() - opened, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_profile_fills_the_cache_before_reads() {
    use BlockKind::*;
    let raw = raw_from_kinds(
        &[
            Random,
            Compressible,
            Zero,
            Random,
            Random,
            Compressible,
            Random,
            Random,
        ],
        BS,
        47,
    );
    let files = write_files(raw.clone(), BS);
    // Out of order, with a zero block, a repeat-free list; 0, 3, 4 are
    // neighbours in the file and may share one GET.
    set_boot_profile(&files, vec![6, 2, 0, 3, 4, 1]);
    let (image, control, metrics, opened) = open(
        &files,
        ImageOptions {
            readahead_blocks: 0,
            ..ImageOptions::default()
        },
    )
    .await;
    assert_eq!(
        image.layout().sidecar.as_ref().unwrap().boot_profile,
        vec![6, 2, 0, 3, 4, 1]
    );
    let replay = image
        .start_profile_prefetch()
        .expect("a profile to replay")
        .await
        .unwrap();
    assert_eq!(replay.started, 5, "{replay:?}");
    assert_eq!(replay.ready, 5);
    assert_eq!(replay.failed, 0);
    let fetched = control.requests() - opened;
    assert!((1..=5).contains(&fetched), "{fetched} GETs");
    for b in [6u64, 2, 0, 3, 4, 1] {
        let block = image.read_block(b).await.unwrap();
        assert!(
            block[..] == raw[(b * u64::from(BS)) as usize..][..BS as usize],
            "block {b}"
        );
    }
    let m = metrics.snapshot();
    assert_eq!(
        control.requests() - opened,
        fetched,
        "reads needed no further GET"
    );
    assert_eq!(m.cache_misses, 0, "{m:?}");
    assert_eq!(m.mem_cache_hits, 5, "{m:?}");
    assert_eq!(m.blocks_prefetched, 5);
    assert_eq!(m.profile_blocks, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_profile_or_no_budget_means_no_replay() {
    let raw = raw_from_kinds(&[BlockKind::Random; 3], BS, 53);
    let files = write_files(raw, BS);
    let (image, ..) = open(&files, ImageOptions::default()).await;
    assert!(
        image.start_profile_prefetch().is_none(),
        "the sidecar has no profile"
    );
    set_boot_profile(&files, vec![0, 1, 2]);
    let (image, control, _, opened) = open(
        &files,
        ImageOptions {
            prefetch_budget_bytes: 0,
            ..ImageOptions::default()
        },
    )
    .await;
    assert!(image.start_profile_prefetch().is_none());
    assert_eq!(image.prefetch([0, 1, 2]), 0);
    assert_eq!(control.requests(), opened);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_respects_the_budget() {
    let raw = raw_from_kinds(&[BlockKind::Random; 8], BS, 59);
    let files = write_files(raw, BS);
    // Room for one block (record + decoded) in flight, not two.
    let options = ImageOptions {
        prefetch_budget_bytes: 3 * u64::from(BS),
        readahead_blocks: 0,
        ..ImageOptions::default()
    };
    let (image, control, metrics, _) = open(&files, options).await;
    // Fetches must not finish (and give their budget back) while the
    // prefetch is being planned: hold every GET far longer than the test.
    control.set(zvstore::fault::FaultPlan {
        latency: std::time::Duration::from_secs(600),
        ..Default::default()
    });
    let started = image.prefetch(0..8);
    assert_eq!(started, 1, "only one block fits the budget at once");
    assert_eq!(metrics.snapshot().prefetch_budget_skips, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_profile_replays() {
    let raw = raw_from_kinds(&[BlockKind::Random; 6], BS, 61);
    let files = write_files(raw.clone(), BS);
    let options = ImageOptions {
        record_access: true,
        readahead_blocks: 0,
        ..ImageOptions::default()
    };
    let (image, ..) = open(&files, options).await;
    for (off, len) in [
        (4 * u64::from(BS) + 5, 100u32),
        (u64::from(BS) - 10, 20),
        (4 * u64::from(BS), 10),
        (5 * u64::from(BS), 1),
    ] {
        image.read_at(off, len).await.unwrap();
    }
    let text = image.recorder().unwrap().to_text();
    assert_eq!(text, "4\n0\n1\n5\n");
    // Replaying it on a fresh image makes those reads hits.
    let (image, _control, metrics, _) = open(
        &files,
        ImageOptions {
            readahead_blocks: 0,
            ..ImageOptions::default()
        },
    )
    .await;
    let replay = image
        .prefetch_profile(parse_profile(&text).unwrap())
        .await
        .unwrap();
    assert_eq!(replay.ready, 4);
    image.read_at(4 * u64::from(BS) + 5, 100).await.unwrap();
    assert_eq!(metrics.snapshot().cache_misses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_stops_at_half_the_cache() {
    let raw = raw_from_kinds(&[BlockKind::Random; 8], BS, 67);
    let files = write_files(raw.clone(), BS);
    set_boot_profile(&files, (0..8).collect());
    // Four blocks of memory cache: replaying all eight would evict the
    // first ones, which the guest reads first.
    let (image, control, metrics, opened) = open_with_cache(
        &files,
        ImageOptions {
            readahead_blocks: 0,
            ..ImageOptions::default()
        },
        4 * u64::from(BS),
    )
    .await;
    let replay = image
        .start_profile_prefetch()
        .expect("a profile to replay")
        .await
        .unwrap();
    assert_eq!(replay.started, 2, "{replay:?}");
    assert_eq!(replay.ready, 2, "{replay:?}");
    assert_eq!(replay.capped, 6, "{replay:?}");
    assert_eq!(metrics.snapshot().profile_capped, 6);
    let fetched = control.requests() - opened;
    for b in [0u64, 1] {
        let block = image.read_block(b).await.unwrap();
        assert!(
            block[..] == raw[(b * u64::from(BS)) as usize..][..BS as usize],
            "block {b}"
        );
    }
    let m = metrics.snapshot();
    assert_eq!(
        m.cache_misses, 0,
        "the profile's first blocks stayed: {m:?}"
    );
    assert_eq!(control.requests() - opened, fetched);
}

/// Opens the image in `files` into `mount`, behind its own counting store.
async fn open_in_mount(
    files: &ImageFiles,
    mount: &Arc<MountContext>,
) -> (Arc<Image>, Arc<FaultControl>, u64) {
    let store = Arc::new(FaultStore::new(FileStore::new(files.dir.path())));
    let control = store.control();
    let layout = ImageLayout::load(store.as_ref(), KEY, &SidecarSource::Auto)
        .await
        .expect("open image");
    let opened = control.requests();
    let store: Arc<dyn ObjectStore> = store;
    let options = ImageOptions {
        readahead_blocks: 0,
        ..ImageOptions::default()
    };
    (
        Image::in_mount(store, layout, mount, options),
        control,
        opened,
    )
}

/// The budget fix: two images of one mount share one prefetch budget and
/// one cache. Both replay boot profiles larger than the cache at once; the
/// bytes in flight never exceed the one budget (with a budget per image
/// they would reach twice it), each replay brings in an equal share of
/// half the cache, and every replayed block is still cached when its guest
/// reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_images_share_one_budget_and_the_cache() {
    const BLOCKS: u64 = 12;
    let bs = u64::from(BS);
    let mut images = Vec::new();
    for seed in [71, 73] {
        let raw = raw_from_kinds(&[BlockKind::Random; BLOCKS as usize], BS, seed);
        let files = write_files(raw.clone(), BS);
        set_boot_profile(&files, (0..BLOCKS).collect());
        images.push((raw, files));
    }
    let metrics = Arc::new(Metrics::default());
    // Eight blocks of cache for two 12-block profiles; a budget with room
    // for two one-block prefetches (record + decoded block each), not three.
    let budget = 5 * bs;
    let mount = MountContext::new(
        Arc::new(MemoryCache::new(8 * bs)),
        Arc::clone(&metrics),
        MountLimits {
            prefetch_budget_bytes: budget,
            prefetch_concurrency: 8,
            decode_threads: 0,
        },
    );
    let mut opened = Vec::new();
    for (raw, files) in &images {
        let (image, control, at_open) = open_in_mount(files, &mount).await;
        // Slow GETs, so both replays have prefetches in flight together.
        control.set(zvstore::fault::FaultPlan {
            latency: std::time::Duration::from_millis(50),
            ..Default::default()
        });
        opened.push((image, control, at_open, raw));
    }
    let tasks: Vec<_> = opened
        .iter()
        .map(|(image, ..)| image.start_profile_prefetch().expect("a profile"))
        .collect();
    let mut replays = Vec::new();
    for t in tasks {
        replays.push(t.await.unwrap());
    }
    let m = metrics.snapshot();
    assert!(
        m.prefetch_bytes_peak > 2 * bs,
        "prefetches overlapped: {m:?}"
    );
    assert!(
        m.prefetch_bytes_peak <= budget,
        "never more than the budget in flight: {m:?}"
    );
    assert_eq!(m.prefetch_bytes_in_flight, 0, "{m:?}");
    // Half of the eight-block cache, split between the two images.
    for r in &replays {
        assert_eq!(
            (r.started, r.ready, r.capped),
            (2, 2, BLOCKS - 2),
            "{replays:?}"
        );
    }
    // Both guests read their profiles' replayed heads from the cache.
    for (image, control, at_open, raw) in &opened {
        let fetched = control.requests() - at_open;
        assert_eq!(fetched, 2, "one GET per replayed block");
        for b in 0..2u64 {
            let block = image.read_block(b).await.unwrap();
            assert!(
                block[..] == raw[(b * bs) as usize..][..BS as usize],
                "block {b}"
            );
        }
        assert_eq!(control.requests() - at_open, fetched, "{}", image.name());
    }
    assert_eq!(metrics.snapshot().cache_misses, 0);
}

/// One sequential detector per reader stream: two handles reading one
/// image sequentially, interleaved read by read, each get readahead (a
/// detector per image would see one random pattern).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reader_stream_has_its_own_readahead() {
    let raw = raw_from_kinds(&[BlockKind::Random; 16], BS, 79);
    let files = write_files(raw.clone(), BS);
    let (image, _control, metrics, _) = open(
        &files,
        ImageOptions {
            readahead_blocks: 2,
            ..ImageOptions::default()
        },
    )
    .await;
    let (a, b) = (image.new_stream(), image.new_stream());
    let bs = u64::from(BS);
    for i in 0..4u64 {
        for (stream, base) in [(&a, 0u64), (&b, 8)] {
            let off = (base + i) * bs;
            let got = image.read_at_in(off, 4096, stream).await.unwrap();
            assert!(got[..] == raw[off as usize..off as usize + 4096]);
        }
    }
    // Each stream turns sequential on its third block and triggers on it
    // and the next: two triggers a stream.
    assert_eq!(metrics.snapshot().readahead_triggers, 4);
}
