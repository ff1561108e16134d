//! `zvimg check`: decode every block of an image and verify it against
//! its sidecar, by the mount's own rules and on its decode threads.

use std::process::ExitCode;
use std::sync::Arc;

use zvhd2::BlockLocation;
use zvmount::image::scan::{ScanOptions, scan_blocks};
use zvmount::image::{ImageError, ImageLayout, SidecarSource};
use zvmount::util::hex;
use zvstore::{ObjectStore, open_source};

use crate::{SourceArgs, runtime};

/// Flags of `zvimg check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Verify against this sidecar (local path or URL; default: IMAGE.zvidx when it exists).
    #[arg(long)]
    pub sidecar: Option<String>,
    /// Decode only; don't look for a sidecar beside the image.
    #[arg(long, conflicts_with = "sidecar")]
    pub no_sidecar: bool,
    /// Records fetched and decoded at once.
    #[arg(long, default_value_t = ScanOptions::default().parallel)]
    pub parallel: usize,
    /// Where the image is and how to reach it.
    #[command(flatten)]
    pub source: SourceArgs,
    /// The image: a local path, s3://bucket/key or an https:// URL.
    pub image: String,
}

/// Runs `zvimg check`: exit status 1 at the first fault.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let (store, key) = open_source(&args.image, &args.source.store.to_config()).await?;
        // The image's own index is what is checked; the sidecar is the reference.
        let layout = ImageLayout::load(store.as_ref(), &key, &SidecarSource::Ignore).await?;
        let sidecar_source = match (&args.sidecar, args.no_sidecar) {
            (_, true) => SidecarSource::Ignore,
            (Some(s), _) => {
                let (sc_store, sc_key) = open_sidecar_source(s, &args.source).await?;
                SidecarSource::Object(sc_store, sc_key)
            }
            (None, false) => SidecarSource::Auto,
        };
        let auto = matches!(sidecar_source, SidecarSource::Auto);
        let sidecar = layout
            .load_sidecar(store.as_ref(), &sidecar_source)
            .await
            .map_err(|e| {
                // A check reports a sidecar that does not describe the
                // image (a mount only warns and reads without it); say
                // how to go on.
                let hint = if auto {
                    format!(
                        " (rebuild it with `zvimg index {}`, or check the image alone with --no-sidecar)",
                        args.image
                    )
                } else {
                    String::new()
                };
                anyhow::anyhow!("{e}{hint}")
            })?
            .map(Arc::new);
        let options = ScanOptions {
            parallel: args.parallel,
            verify_with: sidecar.clone(),
            ..ScanOptions::default()
        };
        let mut records = 0u64;
        let result = scan_blocks(
            store.clone(),
            &layout,
            &options,
            |b| -> Result<(), ImageError> {
                if matches!(b.location, BlockLocation::Record(_)) {
                    records += 1;
                }
                Ok(())
            },
        )
        .await;
        match result {
            Ok(()) => {
                println!(
                    "{}: OK: {} blocks ({records} records) decoded{}",
                    layout.location,
                    layout.index.block_count(),
                    match &sidecar {
                        Some(sc) => format!(
                            ", verified against the sidecar, digest blake3:{}",
                            hex(&sc.image_digest)
                        ),
                        None =>
                            " (no sidecar: contents not verified against checksums)".to_string(),
                    }
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("zvimg: check FAILED: {e}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// A sidecar given on the command line: a local path or a URL.
async fn open_sidecar_source(
    source: &str,
    args: &SourceArgs,
) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    Ok(open_source(source, &args.store.to_config()).await?)
}
