//! How an image is read ([`ImageOptions`]: sizes, prefetch, coalescing,
//! verification) and what of that is the mount's ([`MountLimits`]).

use std::fmt;

/// Which size the image reports.
/// Parsed from and shown as `orig` / `curr` (the `--size` flag of both
/// binaries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeMode {
    /// The size of the disk that was converted (`orig_size`): what the user had.
    #[default]
    Orig,
    /// `orig_size` rounded up to a whole GiB (`curr_size`), as Huawei's own
    /// reader reports it; the extra tail reads as zeros.
    Curr,
}

impl std::str::FromStr for SizeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SizeMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "orig" => Ok(SizeMode::Orig),
            "curr" => Ok(SizeMode::Curr),
            _ => Err(format!("invalid size mode {s:?}: expected orig or curr")),
        }
    }
}

impl fmt::Display for SizeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SizeMode::Orig => "orig",
            SizeMode::Curr => "curr",
        })
    }
}

/// How an [`Image`](super::Image) reads.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Which size to report.
    pub size_mode: SizeMode,
    /// Check each record's CRC32C and each block's BLAKE3 against the
    /// sidecar when there is one. The decoded length is always checked.
    pub verify: bool,
    /// Blocks to read ahead of a sequential stream (0 disables readahead).
    pub readahead_blocks: usize,
    /// Bytes that in-flight prefetches may hold (0 disables prefetching).
    /// Mount-wide: read by [`MountLimits::from`]; an image opened into an
    /// existing [`MountContext`](super::MountContext) uses the context's budget instead.
    pub prefetch_budget_bytes: u64,
    /// Prefetch requests in flight at once (readahead and profile replay);
    /// mount-wide like `prefetch_budget_bytes`.
    pub prefetch_concurrency: usize,
    /// Neighbouring records closer than this are fetched in one GET (the
    /// gap is read and thrown away).
    pub coalesce_gap: u64,
    /// Upper bound on the bytes of one coalesced GET.
    pub max_coalesce_bytes: u64,
    /// Widen every GET to whole slices of this many bytes of the image,
    /// aligned to multiples of it (0: off), so that hosts behind a caching
    /// tier ask for the same ranges; the records that come along are
    /// decoded and cached too. Costs bytes (the rest of each slice).
    pub fetch_align: u64,
    /// Blocks decoded at once (0: one per CPU); mount-wide like
    /// `prefetch_budget_bytes`.
    pub decode_threads: usize,
    /// Record the first-touch order of demand reads (see [`Image::recorder`](super::Image::recorder)).
    pub record_access: bool,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            size_mode: SizeMode::Orig,
            verify: true,
            readahead_blocks: 4,
            prefetch_budget_bytes: 64 << 20,
            prefetch_concurrency: 4,
            coalesce_gap: 64 << 10,
            max_coalesce_bytes: 8 << 20,
            fetch_align: 0,
            decode_threads: 0,
            record_access: false,
        }
    }
}

/// The limits one mount shares between all its images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountLimits {
    /// Bytes that in-flight prefetches of all images may hold together
    /// (0 disables prefetching).
    pub prefetch_budget_bytes: u64,
    /// Prefetch requests in flight at once, all images together.
    pub prefetch_concurrency: usize,
    /// Blocks decoded at once, all images together (0: one per CPU).
    pub decode_threads: usize,
}

impl Default for MountLimits {
    fn default() -> Self {
        MountLimits::from(&ImageOptions::default())
    }
}

impl From<&ImageOptions> for MountLimits {
    fn from(o: &ImageOptions) -> Self {
        MountLimits {
            prefetch_budget_bytes: o.prefetch_budget_bytes,
            prefetch_concurrency: o.prefetch_concurrency,
            decode_threads: o.decode_threads,
        }
    }
}
