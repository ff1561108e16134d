//! `zvimg push` and `pull`: move an image and its sidecar between a local
//! file and any store.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures::StreamExt;
use zvmount::image::open::sidecar_key;
use zvstore::{ObjectStore, StoreError, open_source};

use crate::convert::human;
use crate::files::{TempFile, temp_beside};
use crate::{SourceArgs, default_sidecar_path, progress, runtime};

/// Flags of `zvimg push`.
#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Don't upload IMAGE.zvidx even when it exists.
    #[arg(long)]
    pub no_sidecar: bool,
    /// Where the destination is and how to reach it.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Local ZVHD2 image.
    pub image: PathBuf,
    /// Destination: s3://bucket/key (or a local path).
    pub dest: String,
}

/// Flags of `zvimg pull`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Bytes per ranged GET.
    #[arg(long, default_value = "16MiB", value_parser = zvmount::util::parse_size)]
    pub chunk: u64,
    /// GETs in flight.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Where the source is and how to reach it.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Source: s3://bucket/key, an https:// URL or a local path.
    pub source_url: String,
    /// Local output file (its sidecar, if the source has one, lands beside it).
    pub output: PathBuf,
}

/// Runs `zvimg push`: uploads the image (multipart on S3), then its
/// sidecar (or removes a stale one at the destination); errors name the
/// object.
pub fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let size = std::fs::metadata(&args.image)
        .with_context(|| format!("{}: cannot read", args.image.display()))?
        .len();
    let sidecar = default_sidecar_path(&args.image);
    let with_sidecar = !args.no_sidecar && sidecar.exists();
    runtime()?.block_on(async {
        let (store, key) = open_source(&args.dest, &args.source.store.to_config()).await?;
        let bar = progress::bytes_bar(size, "upload");
        let started = std::time::Instant::now();
        let progress_bar = bar.clone();
        let meta = store
            .put_file_with_progress(&key, &args.image, std::sync::Arc::new(move |n| progress_bar.inc(n)))
            .await?;
        bar.finish_and_clear();
        if meta.size != size {
            bail!("{}: uploaded {size} bytes but the store reports {}", store.location(&key), meta.size);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{}: {} uploaded in {secs:.1}s ({:.0} MB/s), etag {}",
            store.location(&key),
            human(size),
            size as f64 / secs.max(1e-9) / 1e6,
            meta.etag.as_deref().unwrap_or("-")
        );
        let sc_key = sidecar_key(store.as_ref(), &key);
        if with_sidecar {
            store.put_file(&sc_key, &sidecar).await?;
            println!("{}: sidecar uploaded", store.location(&sc_key));
        } else {
            // A sidecar at the destination describes the image this push
            // replaced: left there, mounts would find a stale index.
            store.delete(&sc_key).await?;
            if !args.no_sidecar {
                println!("note: no sidecar at {}; `zvimg index` builds one (mounts then need one GET to open)", sidecar.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `zvimg pull`: downloads the image in `--chunk` ranges, `--parallel`
/// at a time, through a temporary file renamed into place when complete.
pub fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    if args.chunk == 0 {
        bail!("--chunk must be positive");
    }
    runtime()?.block_on(async {
        let (store, key) = open_source(&args.source_url, &args.source.store.to_config()).await?;
        let started = std::time::Instant::now();
        let size = download(
            store.as_ref(),
            &key,
            &args.output,
            args.chunk,
            args.parallel,
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{}: {} from {} in {secs:.1}s ({:.0} MB/s)",
            args.output.display(),
            human(size),
            store.location(&key),
            size as f64 / secs.max(1e-9) / 1e6
        );
        let sc_key = sidecar_key(store.as_ref(), &key);
        let sc_path = default_sidecar_path(&args.output);
        match download(store.as_ref(), &sc_key, &sc_path, args.chunk, args.parallel).await {
            Ok(_) => println!("{}: sidecar", sc_path.display()),
            Err(e)
                if matches!(
                    e.downcast_ref::<StoreError>(),
                    Some(StoreError::NotFound { .. })
                ) => {}
            Err(e) => return Err(e),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Copies a whole object to `dest` with parallel ranged GETs pinned to the
/// object's identity; `dest` appears only when complete.
pub async fn download(
    store: &dyn ObjectStore,
    key: &str,
    dest: &Path,
    chunk: u64,
    parallel: usize,
) -> anyhow::Result<u64> {
    let meta = store.head(key).await?;
    let tmp = TempFile::new(temp_beside(dest, "partial"));
    let file = File::create(tmp.path())
        .with_context(|| format!("{}: cannot create", tmp.path().display()))?;
    file.set_len(meta.size)?;
    let bar = progress::bytes_bar(meta.size, "download");
    let ranges =
        (0..meta.size.div_ceil(chunk)).map(|i| i * chunk..((i + 1) * chunk).min(meta.size));
    let mut gets = futures::stream::iter(ranges)
        .map(|r| {
            let meta = &meta;
            async move {
                store
                    .get_range(key, r.clone(), Some(meta))
                    .await
                    .map(|b| (r.start, b))
            }
        })
        .buffer_unordered(parallel.max(1));
    let file = std::sync::Arc::new(file);
    while let Some(item) = gets.next().await {
        let (offset, bytes) = item?;
        let len = bytes.len() as u64;
        // A chunk is megabytes: write it on a blocking thread, not a
        // runtime worker.
        let f = std::sync::Arc::clone(&file);
        tokio::task::spawn_blocking(move || f.write_all_at(&bytes, offset))
            .await?
            .with_context(|| format!("{}: write failed", tmp.path().display()))?;
        bar.inc(len);
    }
    let f = std::sync::Arc::clone(&file);
    tokio::task::spawn_blocking(move || f.sync_all()).await??;
    bar.finish_and_clear();
    tmp.persist(dest)?;
    Ok(meta.size)
}
