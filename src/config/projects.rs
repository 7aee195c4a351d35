//! `projects.toml` (docs/design.md §4): the projects that may call the API, each
//! with the domains allowed to call it, an optional request limit, and
//! whether its answers are signed.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::raw::{parse_toml, read, ConfigError, RawProjects};
use crate::origin::DomainPattern;

/// Longest accepted project id (docs/design.md §4: `[A-Za-z0-9_-]{1,64}`).
pub const MAX_PROJECT_ID_LEN: usize = 64;

/// A project id: `[A-Za-z0-9_-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectId(String);

impl ProjectId {
    /// Accepts exactly the ids docs/design.md §4 allows.
    pub fn parse(s: &str) -> Option<ProjectId> {
        is_valid_project_id(s).then(|| ProjectId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[A-Za-z0-9_-]{1,64}`, checked without allocating (used per request).
pub fn is_valid_project_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PROJECT_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One project of `projects.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: ProjectId,
    pub domains: Vec<DomainPattern>,
    /// Requests per minute for the whole project; 0: no limit.
    pub requests_per_minute: u32,
    /// The answer's `data` carries `token`, a JWS of the facts
    /// (docs/signing.md); needs `[signing]`.
    pub signed: bool,
}

/// `projects.toml`, validated: ids unique, domains parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Projects {
    /// File order, for listings and metrics.
    list: Vec<Project>,
    by_id: HashMap<String, usize>,
}

impl Projects {
    pub fn get(&self, id: &str) -> Option<&Project> {
        self.find(id).map(|(_, p)| p)
    }

    /// The project and its index in file order (see [`Projects::at`]).
    pub fn find(&self, id: &str) -> Option<(usize, &Project)> {
        self.by_id
            .get(id)
            .and_then(|&i| Some((i, self.list.get(i)?)))
    }

    /// The project at `index` in file order.
    pub fn at(&self, index: usize) -> Option<&Project> {
        self.list.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Project> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Projects {
    /// Reads and validates `projects.toml`.
    pub fn load(file: &Path) -> Result<Projects, ConfigError> {
        let text = read(file)?;
        Projects::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Projects, ConfigError> {
        let raw: RawProjects = parse_toml(file, text)?;
        let mut list = Vec::with_capacity(raw.project.len());
        let mut by_id = HashMap::with_capacity(raw.project.len());
        for (i, p) in raw.project.into_iter().enumerate() {
            let id = ProjectId::parse(&p.id).ok_or_else(|| {
                ConfigError::invalid(
                    file,
                    format!("project[{i}].id"),
                    format!("{:?}: must match [A-Za-z0-9_-]{{1,64}}", p.id),
                )
            })?;
            if by_id.insert(p.id.clone(), i).is_some() {
                return Err(ConfigError::invalid(
                    file,
                    format!("project[{i}].id"),
                    format!("{:?}: duplicate project id", p.id),
                ));
            }
            if p.domains.is_empty() {
                return Err(ConfigError::invalid(
                    file,
                    format!("project[{i}].domains"),
                    "must list at least one domain",
                ));
            }
            let domains = p
                .domains
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    DomainPattern::parse(d).map_err(|e| {
                        ConfigError::invalid(file, format!("project[{i}].domains[{j}]"), e)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            list.push(Project {
                id,
                domains,
                requests_per_minute: p.requests_per_minute,
                signed: p.signed,
            });
        }
        Ok(Projects { list, by_id })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    fn projects(text: &str) -> Result<Projects, ConfigError> {
        Projects::parse(Path::new("projects.toml"), text)
    }

    #[test]
    fn projects_parse() {
        let p = projects(
            r#"
[[project]]
id = "demo"
domains = ["localhost", "example.com", "*.example.com"]
[[project]]
id = "shop_2-x"
domains = ["shop.example.org"]
"#,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.get("demo").unwrap().domains.len(), 3);
        assert!(p.get("shop_2-x").is_some());
        assert!(p.get("Demo").is_none());
    }

    /// The packaged projects.toml is comments only: valid, and it allows no
    /// origin until the operator writes a project.
    #[test]
    fn a_file_without_projects_is_valid_and_allows_no_one() {
        let shipped = include_str!("../../debian/projects.toml");
        assert!(shipped.contains("# [[project]]"), "a commented example");
        for text in ["", shipped] {
            let p = projects(text).unwrap();
            assert!(p.is_empty());
            assert!(p.get("www").is_none());
            assert!(p.at(0).is_none());
        }
    }

    #[test]
    fn bad_project_id_is_refused() {
        for id in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            let e = projects(&format!(
                "[[project]]\nid = {id:?}\ndomains = [\"a.com\"]\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("projects.toml: project[0].id:"), "{e}");
        }
    }

    #[test]
    fn duplicate_project_is_refused() {
        let e = projects(
            "[[project]]\nid = \"a\"\ndomains = [\"a.com\"]\n[[project]]\nid = \"a\"\ndomains = [\"b.com\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("project[1].id: \"a\": duplicate"), "{e}");
    }

    #[test]
    fn bad_domain_names_index() {
        let e = projects("[[project]]\nid = \"a\"\ndomains = [\"a.com\", \"*.\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("projects.toml: project[0].domains[1]:"),
            "{e}"
        );
    }

    #[test]
    fn project_without_domains_is_refused() {
        let e = projects("[[project]]\nid = \"a\"\ndomains = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("project[0].domains: must list"), "{e}");
    }

    #[test]
    fn unknown_project_key_is_refused() {
        let e = projects("[[project]]\nid = \"a\"\ndomains = [\"a.com\"]\nsecret = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("project[0]"), "{e}");
        assert!(e.contains("unknown field `secret`"), "{e}");
    }

    #[test]
    fn project_id_rule() {
        assert!(is_valid_project_id("demo"));
        assert!(is_valid_project_id("A-b_9"));
        assert!(is_valid_project_id(&"x".repeat(64)));
        assert!(!is_valid_project_id(&"x".repeat(65)));
        assert!(!is_valid_project_id(""));
        assert!(!is_valid_project_id("a.b"));
        assert!(!is_valid_project_id("a%20"));
    }
}
