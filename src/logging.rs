//! The process logger: `env_logger` behind a filter that keeps client
//! addresses out of every line (DESIGN §9, PRIVACY.md).
//!
//! visitord's own log lines never contain a client address; that is a rule
//! of the code. Libraries are another matter: Pingora logs every failed TLS
//! handshake as `Downstream handshake error from 198.51.100.7:4711: ...` at
//! error level, and its debug and trace lines name peers too. So every line
//! that does not come from visitord itself has each IP address in it
//! replaced by `[addr]` before it is written, at every level.

use std::borrow::Cow;
use std::sync::LazyLock;

use log::{Log, Metadata, Record};
use regex::Regex;

/// Installs the logger. `RUST_LOG` filters as usual; the default is `info`.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Redacting { inner })).is_ok() {
        log::set_max_level(max);
    }
}

struct Redacting {
    inner: env_logger::Logger,
}

impl Log for Redacting {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        if is_ours(record.target()) {
            return self.inner.log(record);
        }
        let text = record.args().to_string();
        let clean = redact(&text);
        self.inner.log(
            &Record::builder()
                .args(format_args!("{clean}"))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

fn is_ours(target: &str) -> bool {
    target == "visitord" || target.starts_with("visitord::")
}

/// IPv4 dotted quads, and anything shaped like an IPv6 address (two or more
/// colons between hex groups, optionally bracketed, with an optional
/// embedded IPv4 tail). Over-matching a time such as `12:34:56` in a library
/// message costs nothing; under-matching would leak an address.
static ADDRESS: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?x)
        \d{1,3}(?:\.\d{1,3}){3}
        | \[?(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?\]?
        ",
    )
    .ok()
});

/// Replaces every address-shaped run in `text` with `[addr]`. If the pattern
/// could not be built (it is a constant, so it can), the whole line is
/// withheld rather than risk a leak.
pub fn redact(text: &str) -> Cow<'_, str> {
    match ADDRESS.as_ref() {
        Some(re) => re.replace_all(text, "[addr]"),
        None => Cow::Borrowed("[log line withheld: address filter unavailable]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_redacted() {
        let cases = [
            (
                "Downstream handshake error from 127.45.67.89:51234: TLS alert",
                "Downstream handshake error from [addr]:51234: TLS alert",
            ),
            ("peer [2001:db8::7]:443 reset", "peer [addr]:443 reset"),
            ("peer 2001:db8:0:0:1:0:0:1 x", "peer [addr] x"),
            ("mapped ::ffff:192.0.2.1 here", "mapped [addr] here"),
            ("loopback ::1 and ::", "loopback [addr] and [addr]"),
            ("fe80::1%eth0", "[addr]%eth0"),
            ("no address here", "no address here"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn own_targets_are_recognised() {
        assert!(is_ours("visitord"));
        assert!(is_ours("visitord::reload"));
        assert!(!is_ours("pingora_core::services::listening"));
        assert!(!is_ours("visitordx"));
    }
}
