//! Small helpers shared by the library and the binaries: sizes like
//! `512MiB` (parsed by [`zvstore::units`], the one place for units), hex
//! for hashes.

pub use zvhd2::hex;
pub use zvstore::units::parse_size;

/// Whether log lines on stderr may carry colour: only for a person at a
/// terminal (a pipe, a file or the journal would keep the escape codes), and
/// never with `NO_COLOR` set to anything (no-color.org).
pub fn stderr_wants_colour() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
