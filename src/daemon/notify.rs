//! Telling a service manager how the mount is doing (systemd's
//! `Type=notify` protocol over `$NOTIFY_SOCKET`, via the `sd-notify` crate).
//!
//! `READY=1` is sent only once the mount answers reads (see
//! [`probe_mount`]), so units ordered `After=` this one (a VM, libvirt) never
//! start against a mountpoint that is not serving yet. Without
//! `$NOTIFY_SOCKET` every call is a no-op. Failures to notify are logged at
//! debug level and otherwise ignored: the mount works the same without a
//! service manager listening.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::metrics::Metrics;

/// Sends `STATUS=<text>`: a one-line summary `systemctl status` shows.
/// Long-running phases (hydration, profile replay) call this as they go.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// Sends `READY=1` with a status line; call after [`probe_mount`] passed.
pub fn ready(text: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(text)]);
}

/// Sends `STOPPING=1` with a status line, as shutdown begins.
pub fn stopping(text: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(text)]);
}

fn send(states: &[NotifyState<'_>]) {
    // Keep NOTIFY_SOCKET set: later STATUS lines (hydration) and STOPPING
    // need it too.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

/// Reads through the mount as a client would — lists it and reads the
/// stats file — so the answer comes from the FUSE session, not from
/// `mount(2)` having returned. Touches no image block (no store traffic,
/// no counters moved).
pub fn probe_mount(mountpoint: &Path) -> std::io::Result<()> {
    let entries = std::fs::read_dir(mountpoint)?.count();
    let stats = std::fs::read(mountpoint.join(crate::fuse::STATS_FILE_NAME))?;
    tracing::debug!(entries, stats_bytes = stats.len(), "mount answers reads");
    Ok(())
}

/// How often [`report_hydration`] sends a progress line.
pub const HYDRATION_STATUS_EVERY: Duration = Duration::from_secs(2);

/// Sends `STATUS=` lines on background hydration of the images counting
/// into `images` (their `hydrate_done`/`hydrate_total`): one when it
/// starts, one every `every` with the share done and an ETA, and a final
/// one once `finished` resolves (every image's hydration returned).
/// `systemctl status` shows the latest.
pub async fn report_hydration(
    images: Vec<Arc<Metrics>>,
    every: Duration,
    finished: impl Future<Output = ()>,
) {
    let count = |images: &[Arc<Metrics>]| {
        images.iter().fold((0u64, 0u64), |(d, t), m| {
            (
                d + m.hydrate_done.load(Ordering::Relaxed),
                t + m.hydrate_total.load(Ordering::Relaxed),
            )
        })
    };
    status(&format!(
        "hydrating {} image(s) in the background",
        images.len()
    ));
    let started = Instant::now();
    // Blocks already local when hydration began (an earlier run's) do not
    // count towards the rate.
    let mut first: Option<u64> = None;
    let mut ticks = tokio::time::interval_at((started + every).into(), every);
    tokio::pin!(finished);
    loop {
        tokio::select! {
            () = &mut finished => break,
            _ = ticks.tick() => {
                let (done, total) = count(&images);
                let base = *first.get_or_insert(done);
                status(&hydration_line(done, total, base, started.elapsed()));
            }
        }
    }
    let (done, total) = count(&images);
    let word = if done >= total {
        "hydration complete"
    } else {
        "hydration stopped"
    };
    status(&format!(
        "{word}: {done}/{total} blocks local ({}%)",
        percent(done, total)
    ));
}

/// `hydrating: 40% (120/300 blocks), ETA 1m05s`: the share done, and when
/// the rest will be at the rate since `base` blocks were local.
fn hydration_line(done: u64, total: u64, base: u64, elapsed: Duration) -> String {
    let gained = done.saturating_sub(base);
    let left = total.saturating_sub(done);
    let eta = if gained == 0 || elapsed.is_zero() {
        "unknown".to_owned()
    } else {
        let secs = (left as f64 * elapsed.as_secs_f64() / gained as f64).ceil() as u64;
        match secs {
            0..60 => format!("{secs}s"),
            60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
            _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        }
    };
    format!(
        "hydrating: {}% ({done}/{total} blocks), ETA {eta}",
        percent(done, total)
    )
}

/// Whole percent of `done` in `total` (100 when there is nothing to do),
/// rounded down so 100% means done.
fn percent(done: u64, total: u64) -> u64 {
    (done.min(total) * 100).checked_div(total).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_say_share_and_eta() {
        let d = Duration::from_secs(10);
        assert_eq!(
            hydration_line(0, 300, 0, d),
            "hydrating: 0% (0/300 blocks), ETA unknown"
        );
        // 100 blocks in 10 s, 150 left: 15 s more.
        assert_eq!(
            hydration_line(150, 300, 50, d),
            "hydrating: 50% (150/300 blocks), ETA 15s"
        );
        assert_eq!(
            hydration_line(1, 1000, 0, d),
            "hydrating: 0% (1/1000 blocks), ETA 2h46m"
        );
        assert_eq!(percent(299, 300), 99);
        assert_eq!(percent(0, 0), 100);
    }
}
