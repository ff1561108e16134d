//! Telling a service manager how the mount is doing (systemd's
//! `Type=notify` protocol over `$NOTIFY_SOCKET`, via the `sd-notify` crate).
//!
//! `READY=1` is sent only once the mount answers reads (see
//! [`probe_mount`]), so units ordered `After=` this one (a VM, libvirt) never
//! start against a mountpoint that is not serving yet. Without
//! `$NOTIFY_SOCKET` every call is a no-op. Failures to notify are logged at
//! debug level and otherwise ignored: the mount works the same without a
//! service manager listening.

use std::path::Path;

use sd_notify::NotifyState;

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
