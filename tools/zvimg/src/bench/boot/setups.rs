//! One image through the six setups of `zvimg bench boot`: convert and
//! upload it, then boot it from a local raw file, after a download, from a
//! cold and a warm `zvmount`, from a daemon replaying a recorded boot
//! profile, and from a daemon over a host cache the image was hydrated
//! into, measuring each through the shaping proxy and the daemon's
//! counters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zvtest::mount::Mounted;
use zvtest::proxy::{ProxyStats, RequestTiming, ShapingProxy};
use zvtest::qemu::{GuestImage, QemuOptions, boot_once};
use zvtest::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

use super::report::{BootResult, ImageFacts, Report};
use super::{Args, BUCKET, Setup, Tools};

/// What one image's run needs: the flags, the programs, the servers.
pub(super) struct Bench<'a> {
    pub(super) args: &'a Args,
    pub(super) tools: &'a Tools,
    pub(super) qemu: &'a QemuOptions,
    pub(super) work: &'a Path,
    pub(super) s3: &'a S3Server,
    pub(super) proxy: &'a ShapingProxy,
}

/// Bytes and requests the proxy saw in one phase, and their timings.
pub(super) struct ProxyPhase {
    pub(super) stats: ProxyStats,
    pub(super) timings: Vec<RequestTiming>,
}

impl Bench<'_> {
    /// A zvimg/zvmount command with the S3 settings, talking to `endpoint`.
    fn s3_command(&self, program: &Path, endpoint: SocketAddr) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("AWS_ENDPOINT_URL", format!("http://{endpoint}"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null());
        cmd
    }

    fn zvimg(&self, endpoint: SocketAddr, args: &[&str], what: &str) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        let out = self
            .s3_command(&self.tools.zvimg, endpoint)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running zvimg {what}"))?;
        if !out.status.success() {
            bail!(
                "zvimg {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(t0.elapsed())
    }

    fn measure<T>(&self, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, ProxyPhase)> {
        self.proxy.reset();
        let value = f()?;
        // Connections still open keep their last exchange; a moment lets
        // clients that just finished close theirs.
        std::thread::sleep(Duration::from_millis(50));
        Ok((
            value,
            ProxyPhase {
                stats: self.proxy.stats(),
                timings: self.proxy.timings(),
            },
        ))
    }

    /// Converts, uploads and boots one image in every setup.
    pub(super) fn image(&self, guest: &GuestImage, report: &mut Report) -> anyhow::Result<()> {
        let data_mib = guest.data_mib;
        let dir = self.work.join(format!("img-{data_mib}"));
        std::fs::create_dir_all(&dir)?;
        let key = format!("guest-{data_mib}.zvhd2");
        let zvhd2 = dir.join(&key);
        let raw = guest.raw.to_string_lossy().into_owned();
        let zv = zvhd2.to_string_lossy().into_owned();
        eprintln!("[{data_mib} MiB] converting {raw}");
        let convert = self.zvimg(
            self.s3.addr(),
            &["convert", "--sidecar", &raw, &zv],
            "convert",
        )?;
        eprintln!("[{data_mib} MiB] uploading to the local S3 server");
        let url = format!("s3://{BUCKET}/{key}");
        self.zvimg(
            self.s3.addr(),
            &["push", "--force-path-style", &zv, &url],
            "push",
        )?;
        let disk_bytes = std::fs::metadata(&guest.raw)?.len();
        let stored_bytes = std::fs::metadata(&zvhd2)?.len();
        // The local copy stays until the profiled setup has indexed it
        // (removed with `dir` at the end).
        report.images.push(ImageFacts {
            data_mib,
            disk_bytes,
            stored_bytes,
            convert_s: convert.as_secs_f64(),
        });

        let push =
            |setup: Setup, r: BootResult, timings: Vec<RequestTiming>, report: &mut Report| {
                eprintln!(
                    "[{data_mib} MiB] {:<16} {:>7.2}s  fetched {:>9}  GETs {}",
                    setup.name(),
                    r.seconds,
                    crate::convert::human(r.bytes_fetched),
                    r.gets
                );
                report.timings.insert((data_mib, setup), timings);
                report.results.push(r);
            };

        // 1. Local raw file.
        let boot = self.boot(&guest.raw, guest, &dir.join("local"))?;
        push(
            Setup::Local,
            BootResult::new(data_mib, Setup::Local, boot.as_secs_f64()),
            Vec::new(),
            report,
        );

        // 2. Download the whole object, decompress, boot.
        let dl = dir.join("download.zvhd2");
        let dl_raw = dir.join("download.raw");
        let ((download, decompress, boot), phase) = self.measure(|| {
            let d = self.zvimg(
                self.proxy.addr(),
                &["pull", "--force-path-style", &url, &dl.to_string_lossy()],
                "pull",
            )?;
            let c = self.zvimg(
                self.s3.addr(),
                &["convert", &dl.to_string_lossy(), &dl_raw.to_string_lossy()],
                "convert",
            )?;
            let b = self.boot(&dl_raw, guest, &dir.join("download"))?;
            Ok((d, c, b))
        })?;
        let _ = std::fs::remove_file(&dl);
        let _ = std::fs::remove_file(&dl_raw);
        let _ = std::fs::remove_file(crate::default_sidecar_path(&dl));
        let mut r = BootResult::new(
            data_mib,
            Setup::Download,
            (download + decompress + boot).as_secs_f64(),
        );
        r.download_s = download.as_secs_f64();
        r.decompress_s = decompress.as_secs_f64();
        r.boot_s = boot.as_secs_f64();
        r.bytes_fetched = phase.stats.bytes_down;
        r.gets = phase.stats.requests;
        r.set_proxy(&phase);
        push(Setup::Download, r, phase.timings, report);

        // 3. and 4. zvmount cold, then warm from the same daemon; the cold
        // daemon also records the boot profile for setup 5.
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let profile = dir.join("boot.profile");
        let profile_arg = profile.to_string_lossy().into_owned();
        let disk = mnt.join("disk.raw");
        let (mount, r, timings) = self.fresh_boot(
            data_mib,
            Setup::Cold,
            &url,
            &mnt,
            &["--record-profile", &profile_arg],
            guest,
            &dir.join("cold"),
        )?;
        let Some(cold_stats) = r.daemon.clone() else {
            bail!("no daemon counters for the cold boot");
        };
        push(Setup::Cold, r, timings, report);

        let (boot, phase) = self.measure(|| self.boot(&disk, guest, &dir.join("warm")))?;
        let warm_stats = mount.try_stats()?;
        let mut r = BootResult::new(data_mib, Setup::Warm, boot.as_secs_f64());
        r.boot_s = boot.as_secs_f64();
        r.bytes_fetched = warm_stats
            .store_bytes
            .saturating_sub(cold_stats.store_bytes);
        r.gets = warm_stats
            .store_requests
            .saturating_sub(cold_stats.store_requests);
        r.set_proxy(&phase);
        r.daemon = Some(warm_stats);
        push(Setup::Warm, r, phase.timings, report);
        // The profile is written on unmount, before the daemon exits.
        super::super::stop_mount(mount)?;

        // 5. A sidecar with the recorded profile replaces the plain one in
        // the store; a fresh daemon replays it.
        let blocks = crate::files::read_profile(&profile)
            .context("the cold daemon's --record-profile output")?;
        if blocks.is_empty() {
            bail!(
                "the cold daemon recorded an empty boot profile in {}",
                profile.display()
            );
        }
        let profiled_sidecar = dir.join("profiled.zvidx");
        let sc = profiled_sidecar.to_string_lossy().into_owned();
        eprintln!(
            "[{data_mib} MiB] indexing with a boot profile of {} blocks",
            blocks.len()
        );
        self.zvimg(
            self.s3.addr(),
            &["index", "--boot-profile", &profile_arg, "-o", &sc, &zv],
            "index",
        )?;
        // `push` stores any file under the key it is given; this is the
        // key `push` gave the image's own sidecar above.
        let sc_url = format!("{url}{}", zvmount::image::open::SIDECAR_SUFFIX);
        self.zvimg(
            self.s3.addr(),
            &["push", "--no-sidecar", "--force-path-style", &sc, &sc_url],
            "push (sidecar)",
        )?;
        let (mount, r, timings) = self.fresh_boot(
            data_mib,
            Setup::Profiled,
            &url,
            &mnt,
            &[],
            guest,
            &dir.join("profiled"),
        )?;
        push(Setup::Profiled, r, timings, report);
        super::super::stop_mount(mount)?;

        // 6. The image hydrated on this host (`zvimg hydrate`, timed
        // apart), then a fresh daemon over that host cache. Skipped when
        // the user chose the daemons' cache: the mount would not see ours.
        if self.user_cache_dir() {
            eprintln!(
                "[{data_mib} MiB] skipping the hydrated setup: --zvmount-arg names a --cache-dir"
            );
        } else {
            let cache = self.cache_dir(&dir.join("hydrated"))?;
            let cache_arg = cache.to_string_lossy().into_owned();
            eprintln!("[{data_mib} MiB] hydrating a host cache with zvimg hydrate");
            let (hydrate, phase) = self.measure(|| {
                self.zvimg(
                    self.proxy.addr(),
                    &[
                        "hydrate",
                        "--force-path-style",
                        "--cache-dir",
                        &cache_arg,
                        &url,
                    ],
                    "hydrate",
                )
            })?;
            let (mount, mut r, timings) = self.fresh_boot(
                data_mib,
                Setup::Hydrated,
                &url,
                &mnt,
                &[],
                guest,
                &dir.join("hydrated"),
            )?;
            r.download_s = hydrate.as_secs_f64();
            eprintln!(
                "[{data_mib} MiB] hydration took {:.2}s, {} from the store",
                r.download_s,
                crate::convert::human(phase.stats.bytes_down)
            );
            push(Setup::Hydrated, r, timings, report);
            super::super::stop_mount(mount)?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Mounts `url` on `mnt` with a fresh daemon (`extra` added to its
    /// arguments) and boots from it: the time counts from the daemon's
    /// start, the fetch figures are the daemon's counters. Returns the
    /// still-running mount.
    #[allow(clippy::too_many_arguments)]
    fn fresh_boot(
        &self,
        data_mib: u64,
        setup: Setup,
        url: &str,
        mnt: &Path,
        extra: &[&str],
        guest: &GuestImage,
        stem: &Path,
    ) -> anyhow::Result<(Mounted, BootResult, Vec<RequestTiming>)> {
        let cache = self.cache_dir(stem)?;
        let mut extra: Vec<&str> = extra.to_vec();
        let cache_arg = cache.to_string_lossy();
        if !self.user_cache_dir() {
            extra.extend(["--cache-dir", &cache_arg]);
        }
        let t0 = Instant::now();
        let (mount, phase_mount) = self.measure(|| self.mount(url, mnt, &extra))?;
        let mount_s = t0.elapsed();
        let disk = mnt.join("disk.raw");
        let (boot, phase_boot) = self.measure(|| self.boot(&disk, guest, stem))?;
        let stats = mount.try_stats()?;
        let mut r = BootResult::new(data_mib, setup, (mount_s + boot).as_secs_f64());
        r.mount_s = mount_s.as_secs_f64();
        r.boot_s = boot.as_secs_f64();
        r.bytes_fetched = stats.store_bytes;
        r.gets = stats.store_requests;
        let phase = ProxyPhase {
            stats: ProxyStats {
                connections: phase_mount.stats.connections + phase_boot.stats.connections,
                requests: phase_mount.stats.requests + phase_boot.stats.requests,
                bytes_up: phase_mount.stats.bytes_up + phase_boot.stats.bytes_up,
                bytes_down: phase_mount.stats.bytes_down + phase_boot.stats.bytes_down,
            },
            timings: phase_mount
                .timings
                .into_iter()
                .chain(phase_boot.timings)
                .collect(),
        };
        r.set_proxy(&phase);
        r.daemon = Some(stats);
        Ok((mount, r, phase.timings))
    }

    /// The host cache of the setup whose files start with `stem`: created
    /// on first use, so the cold setups start empty and the hydrated one
    /// finds what `zvimg hydrate` put there.
    fn cache_dir(&self, stem: &Path) -> anyhow::Result<PathBuf> {
        let dir = stem.with_extension("cache");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Whether the user chose the daemon's host cache (`--zvmount-arg`).
    fn user_cache_dir(&self) -> bool {
        self.args
            .daemons
            .zvmount_args
            .iter()
            .any(|a| a.starts_with("--cache-dir"))
    }

    /// Starts zvmount on `mnt` through the proxy and waits for the disk file.
    fn mount(&self, url: &str, mnt: &Path, extra: &[&str]) -> anyhow::Result<Mounted> {
        let builder = self
            .args
            .daemons
            .proxied_mount(&self.tools.zvmount, mnt, self.proxy.addr(), None)
            .args(extra)
            .arg(url)
            .expect_file("disk.raw");
        Ok(builder.launch()?)
    }

    /// Boots `disk` through a fresh qcow2 overlay; returns the time from
    /// QEMU's start to the marker (and checks the guest's checksum).
    fn boot(&self, disk: &Path, guest: &GuestImage, stem: &Path) -> anyhow::Result<Duration> {
        Ok(boot_once(
            disk,
            stem,
            self.qemu,
            guest.expected_sha.as_deref(),
        )?)
    }
}
