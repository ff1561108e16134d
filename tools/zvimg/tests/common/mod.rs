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

/// A path as the `&str` argument the helpers take.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
