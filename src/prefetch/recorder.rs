//! Recording which blocks demand reads touch, in first-touch order, and the
//! profile text format (one block number per line) it is written in.

use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Records which blocks demand reads touch, in first-touch order, each once.
///
/// The check for "already seen" is one atomic load, so recording costs
/// almost nothing on the hot read path.
#[derive(Debug)]
pub struct AccessRecorder {
    block_count: u64,
    seen: Vec<AtomicU64>,
    order: Mutex<Vec<u64>>,
}

impl AccessRecorder {
    /// A recorder for an image of `block_count` blocks.
    pub fn new(block_count: u64) -> AccessRecorder {
        let words = block_count.div_ceil(64) as usize;
        AccessRecorder {
            block_count,
            seen: (0..words).map(|_| AtomicU64::new(0)).collect(),
            order: Mutex::new(Vec::new()),
        }
    }

    /// Notes a demand access to `block` (ignored past the end of the image).
    pub fn record(&self, block: u64) {
        if block >= self.block_count {
            return;
        }
        let Some(word) = self.seen.get((block / 64) as usize) else {
            return;
        };
        let bit = 1u64 << (block % 64);
        if word.load(Ordering::Relaxed) & bit != 0 {
            return;
        }
        // fetch_or decides the race: only the thread that sets the bit appends.
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.order
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(block);
        }
    }

    /// The blocks touched so far, in first-touch order.
    pub fn blocks(&self) -> Vec<u64> {
        self.order.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The profile as text: one block number per line.
    pub fn to_text(&self) -> String {
        format_profile(&self.blocks())
    }

    /// Writes the profile to `path` (via a temporary file and a rename).
    pub fn write_to(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&tmp, self.to_text())?;
        std::fs::rename(&tmp, path)
    }
}

/// A block list as profile text: one decimal block number per line.
pub fn format_profile(blocks: &[u64]) -> String {
    let mut s = String::with_capacity(blocks.len() * 6);
    for b in blocks {
        s.push_str(&b.to_string());
        s.push('\n');
    }
    s
}

/// Parses profile text: one block number per line; blank lines and lines
/// starting with `#` are ignored; repeated blocks keep their first place.
pub fn parse_profile(text: &str) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let block: u64 = line.parse().map_err(|_| {
            format!(
                "profile line {}: expected a block number, found {line:?}",
                n + 1
            )
        })?;
        if seen.insert(block) {
            out.push(block);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_first_touch_order() {
        let r = AccessRecorder::new(200);
        for b in [7u64, 3, 7, 150, 3, 0, 199, 200, 10_000] {
            r.record(b);
        }
        assert_eq!(r.blocks(), vec![7, 3, 150, 0, 199]);
        assert_eq!(parse_profile(&r.to_text()).unwrap(), r.blocks());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot.profile");
        r.write_to(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "7\n3\n150\n0\n199\n");
    }

    #[test]
    fn parse_profile_rejects_garbage_and_skips_comments() {
        assert_eq!(parse_profile("# boot\n1\n\n 2 \n1\n").unwrap(), vec![1, 2]);
        let e = parse_profile("1\nx2\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
