//! Format benchmarks: decoding one 2 MiB record (zstd and zlib), whole-image
//! encode throughput, and opening an image's index.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use zvhd2::record::{compress_zlib_sync, zstd_compressor};
use zvhd2::{
    BlockIndex, Compression, DEFAULT_BLOCK_SIZE, ImageHeader, WriteOptions, decode_record,
    encode_record, write_image,
};

const BS: usize = DEFAULT_BLOCK_SIZE as usize;

/// Disk-like content: half text-like runs, half random bytes.
fn block(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = vec![0u8; BS];
    for chunk in b.chunks_mut(4096) {
        if rng.gen_bool(0.5) {
            rng.fill_bytes(chunk);
        } else {
            for (i, x) in chunk.iter_mut().enumerate() {
                *x = b"the quick brown fox jumps over the lazy dog "[i % 44];
            }
        }
    }
    b
}

fn decode(c: &mut Criterion) {
    let data = block(1);
    let zstd_record = encode_record(0, &zstd_compressor(3).unwrap().compress(&data).unwrap());
    let zlib_record = encode_record(0, &compress_zlib_sync(&data, 1).unwrap());
    let mut g = c.benchmark_group("decode_2mib_block");
    g.throughput(Throughput::Bytes(BS as u64));
    g.bench_function("zstd", |b| {
        b.iter(|| {
            decode_record(
                black_box(&zstd_record),
                0,
                4096,
                BS as u32,
                Compression::Zstd,
            )
            .unwrap()
        })
    });
    g.bench_function("zlib", |b| {
        b.iter(|| {
            decode_record(
                black_box(&zlib_record),
                0,
                4096,
                BS as u32,
                Compression::Zlib,
            )
            .unwrap()
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    // 16 blocks (32 MiB): 12 with data, 4 zero.
    let mut raw = Vec::with_capacity(16 * BS);
    for i in 0..16u64 {
        if i % 4 == 3 {
            raw.extend(std::iter::repeat_n(0u8, BS));
        } else {
            raw.extend(block(i));
        }
    }
    let mut g = c.benchmark_group("write_image_32mib");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(raw.len() as u64));
    for threads in [1, 0] {
        let options = WriteOptions {
            threads,
            ..WriteOptions::default()
        };
        let name = if threads == 0 {
            "all_cores".to_string()
        } else {
            format!("{threads}_thread")
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                write_image(
                    &raw[..],
                    raw.len() as u64,
                    std::io::sink(),
                    &options,
                    &mut |_| {},
                )
                .unwrap()
            })
        });
    }
    g.finish();

    // Opening the index of a 1 TiB disk (512 Ki blocks, a quarter non-zero).
    let blocks = 512 * 1024usize;
    let locs: Vec<_> = (0..blocks)
        .map(|b| {
            (b % 4 == 0).then_some(zvhd2::RecordLocation {
                offset: 4096 + 4096 * (b / 4) as u64,
                size: 4096,
            })
        })
        .collect();
    let (index, bitmap) = zvhd2::index::encode_metadata(&locs);
    let mut f = zvhd2::Footer::new_head((blocks * BS) as u64, BS as u32, Compression::Zstd);
    f.non_zero_blk_num = (blocks / 4) as u32;
    f.index_lba = 4096 + 4096 * (blocks / 4) as u64 + 4096;
    f.index_size = index.len() as u32;
    f.index_seg_num = (index.len() / (512 * 1024)) as u32;
    f.bitmap_lba = f.index_lba + index.len() as u64;
    let file_size = f.bitmap_lba + bitmap.len() as u64 + 4096;
    let tail = f.encode();
    let head = zvhd2::Footer::new_head((blocks * BS) as u64, BS as u32, Compression::Zstd).encode();
    let header = ImageHeader::parse(&head, &tail, file_size).unwrap();
    let mut meta = index;
    meta.extend_from_slice(&bitmap);
    c.bench_function("open_index_1tib", |b| {
        b.iter(|| BlockIndex::from_metadata(&header, black_box(&meta)).unwrap())
    });
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
