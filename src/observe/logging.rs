//! The process logger: `env_logger` behind a filter that keeps client
//! addresses and request content out of every line (docs/design.md §7, §9,
//! PRIVACY.md).
//!
//! visitord's own log lines never contain a client address, a header value,
//! a query string or a visitor fact; that is a rule of the code. Libraries
//! are another matter: Pingora logs every failed TLS handshake as
//! `Downstream handshake error from 198.51.100.7:4711: ...` at error level,
//! and at debug `pingora_proxy::proxy_h1` prints each whole upstream request
//! (`Cookie`, `Authorization`, the query, `User-Agent`, `X-Visitor-*`), at
//! trace `pingora_core` prints the bytes sent and received. So every line
//! that does not come from visitord itself is rewritten before it is
//! written, at every level ([`redact`]): every quoted string (how `Debug`
//! prints a header name or value, a string or a byte buffer) becomes `"…"`,
//! every query after a path becomes `?…`, and every IP address `[addr]`.
//! A path without its query stays, for debugging. (`h2` logs through
//! `tracing`, which this build does not forward to `log`.)
//!
//! Pingora and rustls log what clients do at warn or error level: failed
//! TLS handshakes (scanners, clients that distrust the certificate), an
//! invalid server name, an unexpected TLS message or alert, connections
//! closed or reset mid-request, heads that never complete, HTTP/2 streams
//! reset after their answer started. Like nginx, visitord logs these at
//! info or debug ([`CLIENT_CAUSED`], and every rustls line at debug, since
//! each is about what the peer sent): a warn or error line should mean the
//! operator has something to do.
//!
//! The file watcher's own trace and debug lines are dropped: with the log
//! file in a watched folder, each line would be a new file event, and each
//! event a new line.

use std::borrow::Cow;
use std::sync::LazyLock;

use log::{Level, Log, Metadata, Record};
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
        let target = record.target();
        if is_ours(target) {
            if self.inner.matches(record) {
                self.inner.log(record);
            }
            return;
        }
        if is_watcher(target) && record.level() > Level::Info {
            return;
        }
        // A line that may be demoted is formatted before the filter sees it,
        // so that `RUST_LOG=info` shows it and `warn` does not.
        if !(may_demote(target) || self.inner.matches(record)) {
            return;
        }
        let text = record.args().to_string();
        let level = level_for(target, &text, record.level());
        let clean = redact(&text);
        let emit = |line: &Record<'_>| {
            if self.inner.matches(line) {
                self.inner.log(line);
            }
        };
        emit(
            &Record::builder()
                .args(format_args!("{clean}"))
                .level(level)
                .target(target)
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

/// The file watcher's crates (`notify` and its inotify backend).
fn is_watcher(target: &str) -> bool {
    target.starts_with("notify") || target.starts_with("inotify")
}

/// rustls's lines at warn and error are all about what the peer sent (an
/// invalid server name, an unexpected message, a warning alert, a
/// renegotiation attempt); the handshake failure itself, if any, is
/// Pingora's line.
const RUSTLS: &str = "rustls";

fn may_demote(target: &str) -> bool {
    target.starts_with(RUSTLS) || CLIENT_CAUSED.iter().any(|(t, _, _)| target.starts_with(t))
}

/// Pingora's HTTP/2 server session: a client that reset a stream after its
/// answer started makes Pingora try to write to it again (31,000 lines in
/// 15 s from one connection at warn).
const H2_SERVER: &str = "pingora_core::protocols::http::v2::server";

/// Library lines about what a client did, by target prefix and text
/// prefix, and the most severe level they are written at.
const CLIENT_CAUSED: &[(&str, &str, Level)] = &[
    // A failed TLS handshake: a scanner, an old client, a cut connection.
    (
        "pingora_core::services::listening",
        "Downstream handshake error",
        Level::Info,
    ),
    (
        "pingora_core::services::listening",
        "Downstream handshake timeout",
        Level::Info,
    ),
    // Reading a request head failed: closed, reset, too slow, too large.
    ("pingora_proxy", "Fail to proxy: Downstream", Level::Debug),
    (
        "pingora_proxy",
        "failed to send error response to downstream",
        Level::Debug,
    ),
    // A client that picked HTTP/2 and then sent something else.
    ("pingora_core::apps", "H2 handshake error", Level::Debug),
    // A stream the client reset after its answer started.
    (H2_SERVER, "Response header is already sent", Level::Debug),
    (
        H2_SERVER,
        "Try to write body after end of stream",
        Level::Debug,
    ),
    (
        H2_SERVER,
        "Tried to write trailers after end of stream",
        Level::Debug,
    ),
    // At most once a connection: a client that sent many malformed streams.
    (
        H2_SERVER,
        "tearing down downstream h2 connection",
        Level::Info,
    ),
    (
        "pingora_core::protocols::http::v1::server",
        "Respond header is already sent",
        Level::Debug,
    ),
    // The client closed without a TLS close_notify.
    (
        "pingora_core::protocols::tls",
        "TLS shutdown failed",
        Level::Debug,
    ),
    // The metrics listener's client went away.
    (
        "pingora_core::apps::http_app",
        "HTTP server fails to read from downstream",
        Level::Debug,
    ),
];

/// The level a library line is written at: client-caused lines at most at
/// their [`CLIENT_CAUSED`] level (a connection the accept gate refused at
/// debug, a flood must not flood the log), every other line at its own.
fn level_for(target: &str, text: &str, level: Level) -> Level {
    if text.contains(crate::limits::CONNECTION_REFUSED) || target.starts_with(RUSTLS) {
        return level.max(Level::Debug);
    }
    CLIENT_CAUSED
        .iter()
        .find(|(t, prefix, _)| target.starts_with(t) && text.starts_with(prefix))
        .map_or(level, |(_, _, most)| level.max(*most))
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

/// What a library may print of a request or response: quoted strings
/// (with their escapes; `b"…"` is a byte buffer), byte arrays (`Vec<u8>`'s
/// `Debug`, as Pingora prints a path that is not UTF-8) and a query after
/// a path (`/p?email=…` in a URI's `Debug`), up to whitespace or a
/// delimiter of the `Debug` around it.
static CONTENT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r#"(?x)
        (?P<quoted> b?"(?:[^"\\]|\\.)*" )
        | (?P<bytes> \[\d{1,3}(?:,\s?\d{1,3}){3,}\] )
        | (?P<query> \?[^\s"',;)}\]]+ )
        "#,
    )
    .ok()
});

/// Rewrites a library's line so that it holds no request content and no
/// address: quoted strings become `"…"`, byte arrays `[…]`, queries `?…`,
/// and every address-shaped run `[addr]`. If a pattern could not be built
/// (they are constants, so they can), the whole line is withheld rather
/// than risk a leak.
pub fn redact(text: &str) -> Cow<'_, str> {
    let (Some(content), Some(address)) = (CONTENT.as_ref(), ADDRESS.as_ref()) else {
        return Cow::Borrowed("[log line withheld: filter unavailable]");
    };
    let clean = content.replace_all(text, |c: &regex::Captures<'_>| {
        if c.name("quoted").is_some() {
            "\"…\""
        } else if c.name("bytes").is_some() {
            "[…]"
        } else {
            "?…"
        }
    });
    if address.is_match(&clean) {
        Cow::Owned(address.replace_all(&clean, "[addr]").into_owned())
    } else {
        clean
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

    /// What `pingora_proxy::proxy_h1` printed at debug before: the whole
    /// upstream request.
    #[test]
    fn request_content_is_redacted() {
        let line = r#"Sending header to upstream RequestHeader { base: Parts { method: GET, uri: /t25?email=alice%40example.com&x=1, version: HTTP/1.1, headers: {"host": "site.example.com", "cookie": "sid=s3cr3t; a=\"q\"", "authorization": "Bearer tok3n", "user-agent": "Agent/1.0 (X11)", "x-visitor-city": "Amsterdam", "x-forwarded-for": "198.51.100.7"} }, header_name_map: Some({"cookie": CaseHeaderName(b"Cookie")}), raw_path_fallback: [47, 116, 63, 113, 61, 49], send_end_stream: true }"#;
        let clean = redact(line);
        for secret in [
            "alice",
            "x=1",
            "s3cr3t",
            "tok3n",
            "Agent",
            "Amsterdam",
            "198.51",
            "Cookie",
            "116",
        ] {
            assert!(!clean.contains(secret), "{secret} in {clean}");
        }
        assert!(clean.contains("uri: /t25?…,"), "{clean}");
        assert!(clean.contains("raw_path_fallback: […]"), "{clean}");
        // Wire bytes, a response body, a server name echoed by rustls.
        for (input, want) in [
            (
                r#"Writing request header: b"GET /a?b=c HTTP/1.1\r\nCookie: x\r\n\r\n""#,
                r#"Writing request header: "…""#,
            ),
            (
                r#"Illegal SNI hostname received "bad_name!""#,
                r#"Illegal SNI hostname received "…""#,
            ),
            // Words, numbers, a question at the end of a sentence stay.
            (
                "H2 fd: 17 ping sent, read 4096 bytes?",
                "H2 fd: 17 ping sent, read 4096 bytes?",
            ),
        ] {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    const LISTENING: &str = "pingora_core::services::listening";

    #[test]
    fn client_caused_lines_are_info_or_debug_not_error() {
        let line = "Downstream handshake error from [addr]:4711: tls handshake eof";
        assert_eq!(level_for(LISTENING, line, Level::Error), Level::Info);
        assert_eq!(level_for(LISTENING, line, Level::Debug), Level::Debug);
        assert_eq!(
            level_for(LISTENING, "Downstream handshake timeout", Level::Error),
            Level::Info
        );
        let refused = format!(
            "Downstream handshake error from [addr]:1: {}",
            crate::limits::CONNECTION_REFUSED
        );
        assert_eq!(level_for(LISTENING, &refused, Level::Error), Level::Debug);
        for (target, text) in [
            ("pingora_proxy", "Fail to proxy: Downstream ConnectionClosed context: while reading request headers"),
            ("pingora_proxy", "Fail to proxy: Downstream ReadError context: request head not complete within limits.request_header_timeout"),
            ("pingora_proxy", "failed to send error response to downstream: WriteError"),
            ("pingora_core::apps", "H2 handshake error invalid preface"),
            ("rustls::msgs::handshake", "Illegal SNI extension: ignoring IP address presented as hostname (3132)"),
            ("rustls::msgs::handshake", "Illegal SNI hostname received \"…\""),
            ("rustls::check", "Received a CertificateURL handshake message while expecting [ClientHello]"),
            ("rustls::common_state", "TLS alert warning received: AlertMessagePayload { level: Warning, description: UnrecognisedName }"),
            ("rustls::common_state", "Sending warning alert NoRenegotiation"),
            (H2_SERVER, "Response header is already sent, cannot send again"),
            ("pingora_core::protocols::tls::rustls::server", "TLS shutdown failed, unexpected end of file"),
        ] {
            assert_eq!(level_for(target, text, Level::Warn), Level::Debug, "{text}");
            assert_eq!(level_for(target, text, Level::Error), Level::Debug, "{text}");
        }
        assert_eq!(level_for(RUSTLS, "x", Level::Trace), Level::Trace);
        assert!(may_demote("rustls::check") && may_demote(H2_SERVER));
        // Other errors of the same modules, and the same words elsewhere,
        // keep their level.
        let other = "Accept() failed Too many open files";
        assert_eq!(level_for(LISTENING, other, Level::Error), Level::Error);
        assert_eq!(level_for("pingora_proxy", line, Level::Error), Level::Error);
        let upstream = "Fail to proxy: Upstream ConnectRefused";
        assert_eq!(
            level_for("pingora_proxy", upstream, Level::Error),
            Level::Error
        );
    }

    #[test]
    fn the_file_watcher_never_logs_below_info() {
        assert!(is_watcher("notify::inotify"));
        assert!(is_watcher("inotify"));
        assert!(!is_watcher("visitord::services::reload"));
    }

    #[test]
    fn own_targets_are_recognised() {
        assert!(is_ours("visitord"));
        assert!(is_ours("visitord::services::reload"));
        assert!(!is_ours("pingora_core::services::listening"));
        assert!(!is_ours("visitordx"));
    }
}
