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

/// An error and its causes on one line, `outer: cause: root cause`, like
/// anyhow's `{:#}`, but a cause whose text the message already holds
/// (an error that prints its source in its own message) is not repeated.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod error_chain_tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 127.0.0.1:1 for metrics: {source}")]
    struct Bind {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let e = anyhow::Error::new(Bind { source: io }).context("starting the metrics server");
        assert_eq!(
            error_chain(&e),
            "starting the metrics server: cannot listen on 127.0.0.1:1 for metrics: address in use"
        );
        let plain = anyhow::anyhow!("root").context("middle").context("top");
        assert_eq!(error_chain(&plain), "top: middle: root");
    }
}
