//! Running the `zvimg` binary from this package's integration tests (only
//! they get `CARGO_BIN_EXE_zvimg`). Each test binary uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `zvimg ARGS`, independent of the caller's `ZVMOUNT_CACHE_DIR`.
pub fn zvimg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zvimg"))
        .args(args)
        .env_remove("ZVMOUNT_CACHE_DIR")
        .output()
        .expect("run zvimg")
}

/// Runs `zvimg ARGS`, which must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = zvimg(args);
    assert!(
        out.status.success(),
        "zvimg {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `zvimg ARGS`, which must fail; returns its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = zvimg(args);
    assert!(
        !out.status.success(),
        "zvimg {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits for `child` (its output piped) at most `limit`, killing it and
/// failing the test past that (`what` names it); returns its output.
pub fn wait_bounded(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("wait for zvimg").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().expect("zvimg's output")
}

/// A path as the `&str` argument the helpers take.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
