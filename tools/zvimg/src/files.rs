//! Local files `zvimg` writes and reads: temporary files that vanish unless
//! persisted, atomic writes, boot-profile files.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A file at a temporary path, removed when dropped unless
/// [`TempFile::persist`]ed: a failed or interrupted run leaves nothing
/// half-written behind.
#[derive(Debug)]
pub struct TempFile(Option<PathBuf>);

impl TempFile {
    /// Owns `path` (which need not exist yet).
    pub fn new(path: PathBuf) -> Self {
        TempFile(Some(path))
    }

    /// The temporary path.
    pub fn path(&self) -> &Path {
        self.0
            .as_deref()
            .expect("a TempFile has its path until persisted")
    }

    /// Renames the file to `dest` (atomic on one file system) and keeps it.
    /// On error the temporary file is still removed.
    pub fn persist(mut self, dest: &Path) -> anyhow::Result<()> {
        let path = self.0.take().expect("persisted once");
        if let Err(e) = std::fs::rename(&path, dest) {
            let _ = std::fs::remove_file(&path);
            return Err(e).with_context(|| format!("{}: cannot rename into place", dest.display()));
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A temporary name beside `dest` (same file system, so rename is atomic).
pub fn temp_beside(dest: &Path, tag: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Writes `bytes` to `path` via a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = TempFile::new(temp_beside(path, "partial"));
    std::fs::write(tmp.path(), bytes)
        .with_context(|| format!("{}: cannot write", tmp.path().display()))?;
    tmp.persist(path)
}

/// Reads a boot profile file (see [`zvmount::prefetch::parse_profile`]).
pub fn read_profile(path: &Path) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read boot profile", path.display()))?;
    zvmount::prefetch::parse_profile(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_vanish_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let dropped = dir.path().join("a");
        std::fs::write(&dropped, b"x").unwrap();
        drop(TempFile::new(dropped.clone()));
        assert!(!dropped.exists());
        let dest = dir.path().join("kept");
        write_atomic(&dest, b"data").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"data");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
