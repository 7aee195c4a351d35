//! User agent -> browser, OS and device, by the uap-core rule set
//! (`conf/uap-core/regexes.yaml`, Apache-2.0) through the `ua-parser` crate
//! (docs/design.md §3).
//!
//! The rules are compiled once per [`AgentParser`]; a reload builds a new
//! parser off the request path. Browsers send the same few thousand user
//! agents over and over, so answers are kept in a bounded concurrent cache
//! and a repeat costs a hash and a shard read lock.
//!
//! Mapping to VisitorAPI's fields: uap's catch-all family "Other" becomes
//! `""` for browser and OS, but stays "Other" for the device family (what
//! VisitorAPI answers for desktops). Versions are `major.minor.patch` as far
//! as the user agent gives them ("131.0.0", "10", "17.5"). Brand and model
//! are `""` when unknown. An empty user agent gives all fields empty and
//! device family "Other".

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quick_cache::sync::Cache;
use ua_parser::{device, os, user_agent, Extractor, Regexes};

/// How many distinct user agents the cache keeps.
const CACHE_ENTRIES: usize = 10_000;

/// Only the first this many bytes of a user agent are looked at. Browsers
/// stay well below it and name themselves early; a client padding its agent
/// to the header limit would otherwise cost milliseconds of regex work per
/// request (64 KiB takes 1-2 ms) and fill the cache with large keys. With
/// the cut, a miss costs tens of microseconds at worst and the cache holds
/// at most about `CACHE_ENTRIES * MAX_LEN` bytes of keys.
pub const MAX_LEN: usize = 512;

/// uap-core's name for "no rule matched".
const OTHER: &str = "Other";

/// Browser, OS and device of one user agent, as VisitorAPI names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Browser family ("Chrome", "Mobile Safari"), `""` when unknown.
    pub browser: String,
    /// "131.0.0": up to three version parts, `""` when unknown.
    pub browser_version: String,
    /// OS family ("Windows", "iOS"), `""` when unknown.
    pub os: String,
    /// "10", "17.5": up to three version parts, `""` when unknown.
    pub os_version: String,
    /// "Apple", "Samsung", `""` when unknown.
    pub device_brand: String,
    /// "iPhone", "SM-S918B", `""` when unknown.
    pub device_model: String,
    /// uap's device family ("iPhone", "Samsung SM-S918B"), "Other" when
    /// unknown, as for desktops.
    pub device_family: String,
}

/// The one unknown agent a request that needs no user agent shares.
static UNKNOWN: std::sync::LazyLock<Arc<Agent>> =
    std::sync::LazyLock::new(|| Arc::new(Agent::unknown()));

impl Agent {
    /// [`Agent::unknown`], shared: no allocation per request.
    pub fn unknown_shared() -> Arc<Agent> {
        Arc::clone(&UNKNOWN)
    }

    /// What nothing is known about: empty fields, device family "Other".
    pub fn unknown() -> Agent {
        Agent {
            browser: String::new(),
            browser_version: String::new(),
            os: String::new(),
            os_version: String::new(),
            device_brand: String::new(),
            device_model: String::new(),
            device_family: OTHER.to_owned(),
        }
    }
}

/// Why the user agent rules could not be loaded. Every message starts with
/// where the rules came from: the file's path, or "built-in regexes.yaml".
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The rules file could not be read.
    #[error("{}: cannot read: {reason}", path.display())]
    Read {
        /// The file, as given.
        path: PathBuf,
        /// The I/O error.
        reason: std::io::Error,
    },
    /// The rules are not YAML of the uap-core shape.
    #[error("{origin}: {reason}")]
    Yaml {
        /// Where the rules came from.
        origin: String,
        /// The deserializer's message, with the key and line.
        reason: serde_norway::Error,
    },
    /// A rule does not compile (bad regex, replacement naming a missing group).
    #[error("{origin}: {key}: {reason}")]
    Rule {
        /// Where the rules came from.
        origin: String,
        /// The failing rule, e.g. `os_parsers[12]`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Compiled uap-core rules plus a cache of recent answers. `Send + Sync`;
/// share it behind the snapshot's `Arc`.
pub struct AgentParser {
    /// Owns everything it points to: the rules are deserialized into owned
    /// `Cow`s, so the `'static` borrows nothing, and a reload simply drops
    /// the old parser.
    extractor: Extractor<'static>,
    cache: Cache<Box<str>, Arc<Agent>>,
}

impl AgentParser {
    /// Parses and compiles rules in uap-core's `regexes.yaml` format.
    pub fn from_yaml(yaml: &str) -> Result<AgentParser, AgentError> {
        Self::compile(yaml, "user agent rules")
    }

    /// Reads and compiles a `regexes.yaml` file; errors name the file.
    pub fn from_file(path: &Path) -> Result<AgentParser, AgentError> {
        let yaml = crate::lookup::input::read_to_string(path, None).map_err(|reason| {
            AgentError::Read {
                path: path.to_owned(),
                reason,
            }
        })?;
        Self::compile(&yaml, &path.display().to_string())
    }

    /// The uap-core rules shipped with visitord (`conf/uap-core`, 0.18.0).
    pub fn builtin() -> Result<AgentParser, AgentError> {
        Self::compile(
            include_str!("../../conf/uap-core/regexes.yaml"),
            "built-in regexes.yaml",
        )
    }

    /// Browser, OS and device of `user_agent`, judged on its first
    /// [`MAX_LEN`] bytes. Repeats are served from the cache as the same `Arc`.
    pub fn parse(&self, user_agent: &str) -> Arc<Agent> {
        let user_agent = truncate(user_agent, MAX_LEN);
        if let Some(agent) = self.cache.get(user_agent) {
            return agent;
        }
        // Two threads missing on the same agent both parse it; that is
        // cheaper than making one wait on the other.
        let agent = Arc::new(self.extract(user_agent));
        self.cache.insert(user_agent.into(), Arc::clone(&agent));
        agent
    }

    fn compile(yaml: &str, origin: &str) -> Result<AgentParser, AgentError> {
        // `Regexes<'static>` is possible because ua-parser's `Cow` fields do
        // not borrow from the input (no `#[serde(borrow)]`): every string is
        // owned, so the extractor can outlive `yaml`.
        let rules: Regexes<'static> =
            serde_norway::from_str(yaml).map_err(|reason| AgentError::Yaml {
                origin: origin.to_owned(),
                reason,
            })?;
        let rule_error = |key: String, reason: &dyn std::fmt::Display| AgentError::Rule {
            origin: origin.to_owned(),
            key,
            reason: reason.to_string(),
        };

        // Pushed one by one, rather than through `Extractor::try_from`, so
        // that an error can say which rule failed.
        let mut ua = user_agent::Builder::new();
        for (i, rule) in rules.user_agent_parsers.into_iter().enumerate() {
            ua = ua
                .push(rule)
                .map_err(|e| rule_error(format!("user_agent_parsers[{i}]"), &e))?;
        }
        let mut os = os::Builder::new();
        for (i, rule) in rules.os_parsers.into_iter().enumerate() {
            os = os
                .push(rule)
                .map_err(|e| rule_error(format!("os_parsers[{i}]"), &e))?;
        }
        let mut dev = device::Builder::new();
        for (i, rule) in rules.device_parsers.into_iter().enumerate() {
            dev = dev
                .push(rule)
                .map_err(|e| rule_error(format!("device_parsers[{i}]"), &e))?;
        }
        let extractor = Extractor {
            ua: ua
                .build()
                .map_err(|e| rule_error("user_agent_parsers".into(), &e))?,
            os: os
                .build()
                .map_err(|e| rule_error("os_parsers".into(), &e))?,
            dev: dev
                .build()
                .map_err(|e| rule_error("device_parsers".into(), &e))?,
        };
        Ok(AgentParser {
            extractor,
            cache: Cache::new(CACHE_ENTRIES),
        })
    }

    fn extract(&self, user_agent: &str) -> Agent {
        let (browser, os, device) = self.extractor.extract(user_agent);
        let (browser, browser_version) = browser.map_or_else(Default::default, |b| {
            (family(&b.family), version([b.major, b.minor, b.patch]))
        });
        let (os, os_version) = os.map_or_else(Default::default, |o| {
            (
                family(&o.os),
                version([o.major.as_deref(), o.minor.as_deref(), o.patch.as_deref()]),
            )
        });
        let (device_family, device_brand, device_model) = match device {
            Some(d) if !d.device.is_empty() => (
                d.device.into_owned(),
                d.brand.map(Cow::into_owned).unwrap_or_default(),
                d.model.map(Cow::into_owned).unwrap_or_default(),
            ),
            _ => (OTHER.to_owned(), String::new(), String::new()),
        };
        Agent {
            browser,
            browser_version,
            os,
            os_version,
            device_brand,
            device_model,
            device_family,
        }
    }
}

impl std::fmt::Debug for AgentParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentParser")
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    s.get(..end).unwrap_or_default()
}

fn family(name: &str) -> String {
    if name == OTHER {
        String::new()
    } else {
        name.to_owned()
    }
}

/// Joins the leading present parts: `[131, 0, 0]` -> "131.0.0",
/// `[10, None, 5]` -> "10".
fn version(parts: [Option<&str>; 3]) -> String {
    let mut joined = String::new();
    for part in parts.into_iter().map_while(|p| p.filter(|p| !p.is_empty())) {
        if !joined.is_empty() {
            joined.push('.');
        }
        joined.push_str(part);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    static PARSER: LazyLock<AgentParser> = LazyLock::new(|| match AgentParser::builtin() {
        Ok(parser) => parser,
        Err(e) => panic!("built-in rules: {e}"),
    });

    const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

    fn agent(
        browser: &str,
        browser_version: &str,
        os: &str,
        os_version: &str,
        device: [&str; 3],
    ) -> Agent {
        let [device_family, device_brand, device_model] = device.map(str::to_owned);
        Agent {
            browser: browser.into(),
            browser_version: browser_version.into(),
            os: os.into(),
            os_version: os_version.into(),
            device_brand,
            device_model,
            device_family,
        }
    }

    #[test]
    fn known_user_agents() {
        let cases = [
            (
                CHROME_WINDOWS,
                agent("Chrome", "131.0.0", "Windows", "10", ["Other", "", ""]),
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                agent("Mobile Safari", "17.5", "iOS", "17.5", ["iPhone", "Apple", "iPhone"]),
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.6723.102 Mobile Safari/537.36",
                agent(
                    "Chrome Mobile",
                    "130.0.6723",
                    "Android",
                    "14",
                    ["Samsung SM-S918B", "Samsung", "SM-S918B"],
                ),
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
                agent("Safari", "17.6", "Mac OS X", "10.15.7", ["Mac", "Apple", "Mac"]),
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
                agent("Firefox", "132.0", "Linux", "", ["Other", "", ""]),
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                agent("Edge", "131.0.0", "Windows", "10", ["Other", "", ""]),
            ),
            (
                "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Mobile Safari/537.36",
                agent("Chrome Mobile", "129.0.0", "Android", "13", ["Pixel 7", "Google", "Pixel 7"]),
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
                agent("Mobile Safari", "16.6", "iOS", "16.6", ["iPad", "Apple", "iPad"]),
            ),
            (
                "curl/8.5.0",
                agent("curl", "8.5.0", "", "", ["Other", "", ""]),
            ),
            ("", agent("", "", "", "", ["Other", "", ""])),
            (
                "\u{0}\u{1}garbage ((( ;;; \u{7f}",
                agent("", "", "", "", ["Other", "", ""]),
            ),
        ];
        for (user_agent, expected) in cases {
            assert_eq!(*PARSER.parse(user_agent), expected, "{user_agent:?}");
        }
    }

    #[test]
    fn version_joins_leading_parts() {
        assert_eq!(version([Some("131"), Some("0"), Some("0")]), "131.0.0");
        assert_eq!(version([Some("10"), None, Some("5")]), "10");
        assert_eq!(version([Some("17"), Some("5"), Some("")]), "17.5");
        assert_eq!(version([None, Some("1"), None]), "");
    }

    #[test]
    fn repeats_come_from_the_cache() {
        let first = PARSER.parse(CHROME_WINDOWS);
        let second = PARSER.parse(CHROME_WINDOWS);
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn long_user_agents_are_judged_on_their_start() {
        let padding = "x".repeat(MAX_LEN);
        let first = PARSER.parse(&format!("{CHROME_WINDOWS} {padding} Firefox/132.0"));
        assert_eq!(first.browser, "Chrome");
        // Past MAX_LEN bytes the agents are the same one, cached once.
        let second = PARSER.parse(&format!("{CHROME_WINDOWS} {padding} Edg/131.0.0.0"));
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc");
        // "é" is two bytes: cutting inside it drops it whole.
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("aé", 3), "aé");
        assert_eq!(truncate("éé", 1), "");
    }

    #[test]
    fn parser_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AgentParser>();
    }

    #[test]
    fn small_rule_set_from_yaml() {
        let yaml = r#"
user_agent_parsers:
  - regex: '(Visitord)/(\d+)\.(\d+)'
os_parsers:
  - regex: '(VisitOS) (\d+)'
device_parsers:
  - regex: 'Robot'
    device_replacement: 'Spider'
    brand_replacement: 'Spider'
"#;
        let parser = match AgentParser::from_yaml(yaml) {
            Ok(parser) => parser,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            *parser.parse("Visitord/1.2 (VisitOS 7; Robot)"),
            agent("Visitord", "1.2", "VisitOS", "7", ["Spider", "Spider", ""])
        );
        assert_eq!(
            *parser.parse("Mozilla/5.0"),
            agent("", "", "", "", ["Other", "", ""])
        );
    }

    #[test]
    fn malformed_file_error_names_the_file() {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("temp dir: {e}"),
        };
        let path = dir.path().join("regexes.yaml");
        let cases = [
            ("user_agent_parsers: [\n", "did not find expected"),
            (
                "user_agent_parsers: []\nos_parsers: []\n",
                "missing field `device_parsers`",
            ),
            (
                "user_agent_parsers:\n  - regex: '(unclosed'\nos_parsers: []\ndevice_parsers: []\n",
                "user_agent_parsers[0]: ",
            ),
            (
                "user_agent_parsers:\n  - regex: 'no group'\n    family_replacement: 'X $1'\nos_parsers: []\ndevice_parsers: []\n",
                "user_agent_parsers[0]: MissingGroup(1)",
            ),
            (
                "user_agent_parsers: []\nos_parsers: []\ndevice_parsers:\n  - regex: 'x'\n    regex_flag: 'q'\n",
                "device_parsers[0].regex_flag: unknown variant",
            ),
        ];
        for (yaml, expected) in cases {
            if let Err(e) = std::fs::write(&path, yaml) {
                panic!("{}: {e}", path.display());
            }
            match AgentParser::from_file(&path) {
                Ok(_) => panic!("{yaml:?} was accepted"),
                Err(e) => {
                    let message = e.to_string();
                    let file = format!("{}: ", path.display());
                    assert!(message.starts_with(&file), "{message}");
                    assert!(message.contains(expected), "{message}");
                }
            }
        }
    }

    #[test]
    fn missing_file_error_names_the_file() {
        let path = Path::new("/nonexistent/visitord/regexes.yaml");
        match AgentParser::from_file(path) {
            Ok(_) => panic!("a missing file was accepted"),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.starts_with("/nonexistent/visitord/regexes.yaml: cannot read: "),
                    "{message}"
                );
            }
        }
    }
}
