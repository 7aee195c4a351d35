//! `visitord.toml` and `projects.toml` parsing: errors are fine, panics are
//! not, and whatever parses holds up to its own promises.
//!
//! Input: any UTF-8 text, given to both parsers.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use visitord::config::{is_valid_project_id, Config, ConfigError, ListenerKind, Projects};
use visitord::origin::DomainPattern;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    match Config::parse(Path::new("f.toml"), text) {
        Ok(config) => {
            assert!(!config.listeners.is_empty());
            let addrs: HashSet<_> = config.listeners.iter().map(|l| l.addr).collect();
            assert_eq!(
                addrs.len(),
                config.listeners.len(),
                "a listener is listed twice"
            );
            let needs_tls = config.listeners.iter().any(|l| l.kind == ListenerKind::Tls);
            assert!(!needs_tls || config.tls.is_some());
            if let Some(hsts) = config.tls.as_ref().and_then(|t| t.hsts.as_ref()) {
                assert!(hsts.to_str().is_ok(), "hsts {hsts:?}");
            }
            assert!((1..=1024).contains(&config.server.threads));
            let path = config.api.path.as_str();
            assert!(path.starts_with('/') && path.ends_with('/') && path.len() > 1);
            assert!(!path.contains("//"), "{path:?}");
            assert!(!config.geo.databases.is_empty());
            if let Some(m) = config.metrics {
                assert!(config.listeners.iter().all(|l| l.addr != m.addr));
            }
        }
        Err(e) => check_error(&e),
    }

    match Projects::parse(Path::new("projects.toml"), text) {
        Ok(projects) => {
            assert_eq!(projects.iter().count(), projects.len());
            for p in projects.iter() {
                assert!(is_valid_project_id(p.id.as_str()));
                assert!(!p.domains.is_empty());
                let found = projects.get(p.id.as_str()).map(|q| &q.id);
                assert_eq!(found, Some(&p.id), "ids are unique and found");
                for d in &p.domains {
                    let shown = d.to_string();
                    assert_eq!(DomainPattern::parse(&shown).as_ref(), Ok(d));
                }
            }
        }
        Err(e) => {
            assert_eq!(e.file(), Path::new("projects.toml"));
            let _ = e.to_string();
        }
    }
});

fn check_error(e: &ConfigError) {
    assert_eq!(e.file(), Path::new("f.toml"));
    let message = e.to_string();
    assert!(message.starts_with("f.toml"), "{message}");
}
