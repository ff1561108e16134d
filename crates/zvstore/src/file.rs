//! Local files: the embedded default, no account needed.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, StoreError, StoreResult};

/// Objects are files below `root`; a key is a relative path.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// A store whose keys are paths relative to `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStore { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        if key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(key)
        }
    }

    fn meta_of(&self, key: &str, md: &std::fs::Metadata) -> ObjectMeta {
        use std::os::unix::fs::MetadataExt;
        let _ = key;
        ObjectMeta {
            size: md.len(),
            // Size, mtime (ns) and inode: changes whenever the file is replaced or rewritten.
            etag: Some(format!(
                "{:x}-{:x}-{:x}",
                md.len(),
                md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
                md.ino()
            )),
            modified: md.modified().ok(),
        }
    }

    fn io_err(&self, key: &str, op: &str, e: std::io::Error) -> StoreError {
        let location = self.location(key);
        match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound { location },
            std::io::ErrorKind::PermissionDenied => StoreError::Forbidden {
                location,
                detail: e.to_string(),
            },
            _ => StoreError::Other {
                location,
                op: op.into(),
                detail: e.to_string(),
            },
        }
    }
}

#[async_trait]
impl ObjectStore for FileStore {
    fn location(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let md = std::fs::metadata(self.path(key)).map_err(|e| self.io_err(key, "stat", e))?;
        if !md.is_file() {
            return Err(StoreError::Other {
                location: self.location(key),
                op: "stat".into(),
                detail: "not a regular file".into(),
            });
        }
        Ok(self.meta_of(key, &md))
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Option<&ObjectMeta>,
    ) -> StoreResult<Bytes> {
        let path = self.path(key);
        let this = self.clone();
        let key = key.to_string();
        let pin = pin.cloned();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(|e| this.io_err(&key, "open", e))?;
            let md = file.metadata().map_err(|e| this.io_err(&key, "stat", e))?;
            let now = this.meta_of(&key, &md);
            if let Some(pin) = &pin
                && pin.etag != now.etag
            {
                return Err(StoreError::Changed {
                    location: this.location(&key),
                    expected: pin.etag.clone().unwrap_or_default(),
                    actual: now.etag.clone().unwrap_or_default(),
                });
            }
            if range.start > range.end || range.end > md.len() {
                return Err(StoreError::OutOfRange {
                    location: this.location(&key),
                    start: range.start,
                    end: range.end,
                    size: md.len(),
                });
            }
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            file.read_exact_at(&mut buf, range.start)
                .map_err(|e| this.io_err(&key, "read", e))?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| StoreError::Other {
            location: self.location(""),
            op: "read".into(),
            detail: e.to_string(),
        })?
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<(String, ObjectMeta)>> {
        // A directory walk blocks: run it off the runtime's workers.
        let dir = self.path(prefix);
        let listed = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(&dir)?.flatten() {
                if let Ok(md) = entry.metadata()
                    && md.is_file()
                {
                    found.push((entry.file_name(), md));
                }
            }
            Ok::<_, std::io::Error>(found)
        })
        .await
        .map_err(|e| self.io_err(prefix, "list", std::io::Error::other(e)))?
        .map_err(|e| self.io_err(prefix, "list", e))?;
        let mut out: Vec<_> = listed
            .into_iter()
            .map(|(name, md)| {
                let key = Path::new(prefix).join(name).to_string_lossy().into_owned();
                let meta = self.meta_of(&key, &md);
                (key, meta)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn put_file(&self, key: &str, path: &Path) -> StoreResult<ObjectMeta> {
        let dest = self.path(key);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| self.io_err(key, "mkdir", e))?;
        }
        // Copy to a temporary name and rename, so a reader never sees half a file.
        // A whole image: copy on a blocking thread, not a runtime worker.
        let tmp = dest.with_extension(format!("partial-{}", std::process::id()));
        let (from, to) = (path.to_owned(), tmp.clone());
        tokio::task::spawn_blocking(move || std::fs::copy(from, to))
            .await
            .map_err(|e| self.io_err(key, "copy", std::io::Error::other(e)))?
            .map_err(|e| self.io_err(key, "copy", e))?;
        std::fs::rename(&tmp, &dest).map_err(|e| self.io_err(key, "rename", e))?;
        self.head(key).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(self.io_err(key, "remove", e))
            }
            _ => Ok(()),
        }
    }
}
