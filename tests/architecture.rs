//! Keeps the house one-way (DESIGN §8, docs/architecture.md): reads `src/`
//! and fails when
//! - a module is not placed in a layer below (a new file needs a decision),
//! - a module imports from a higher layer,
//! - the `use crate::…` graph has a cycle (sideways imports are allowed
//!   only while they stay acyclic),
//! - a Pingora type is named outside the Pingora layer (`proxy`,
//!   `accept`, `connection`, `health_checks`, `store_sync`, `acme_service`,
//!   `services`, `server`, `main`, and `upstream`, whose peer templates are
//!   Pingora's `HttpPeer`).
//!
//! `pingora_limits` (a count-min sketch and an in-flight counter, no
//! network or HTTP types) counts as a plain data-structure crate.
//!
//! Test modules (`#[cfg(test)] mod tests`) are not read: a test may reach
//! for whatever helps it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module's layer: a module may import from its own layer (without a
/// cycle) and from lower ones.
const LAYERS: &[(&str, u8)] = &[
    // L0: leaves, plain data in and out.
    ("clock", 0),
    ("header_buf", 0),
    ("json", 0),
    ("country", 0),
    ("agent", 0),
    ("geo", 0),
    ("limits", 0),
    ("project_counts", 0),
    ("metrics", 0),
    ("host", 0),
    ("origin", 0),
    ("client_ip", 0),
    ("proxy_protocol", 0),
    ("logging", 0),
    ("systemd", 0),
    ("request_head", 0),
    ("usage", 0),
    ("metrics_access", 0),
    ("reload_history", 0),
    // L1: the serde surface and the typed configuration.
    ("config", 1),
    // L2: values built from configuration and data.
    ("answer", 2),
    ("visitor", 2),
    ("query", 2),
    ("tls", 2),
    ("sites", 2),
    ("upstream", 2),
    ("shared_store", 2),
    ("acme", 2),
    // L3: one immutable world.
    ("snapshot", 3),
    // L4: decisions.
    ("route", 4),
    ("api", 4),
    ("site_request", 4),
    ("dashboard", 4),
    // L5: Pingora glue.
    ("proxy", 5),
    ("accept", 5),
    ("connection", 5),
    ("health_checks", 5),
    ("reload", 5),
    ("services", 5),
    ("store_sync", 5),
    ("acme_service", 5),
    // L6: the server and the command line.
    ("server", 6),
    ("main", 6),
];

const PINGORA_MODULES: &[&str] = &[
    "proxy",
    "accept",
    "acme_service",
    "connection",
    "health_checks",
    "store_sync",
    "services",
    "server",
    "main",
    "upstream",
];

/// The module a source file belongs to: `src/x.rs` and `src/x/*.rs` are `x`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its test module (and what follows it) and
/// without comments.
fn production_code(text: &str) -> String {
    let mut code = text;
    let mut from = 0;
    while let Some(found) = text[from..].find("#[cfg(test)]") {
        let at = from + found;
        let item = text[at..]
            .lines()
            .skip(1)
            .find(|l| !l.trim_start().starts_with("#["))
            .unwrap_or("");
        if item
            .trim_start()
            .trim_start_matches("pub(crate) ")
            .starts_with("mod tests")
        {
            code = &text[..at];
            break;
        }
        from = at + 1;
    }
    code.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every crate module `code` names: `crate::x`, `crate::{x, y::z}`, and in
/// the binary, `visitord::x`.
fn imports(code: &str, root: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let prefix = format!("{root}::");
    let mut rest = code;
    while let Some(at) = rest.find(&prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                if let Some(name) = first_segment(item.trim()) {
                    out.insert(name);
                }
            }
        } else if let Some(name) = first_segment(rest) {
            out.insert(name);
        }
    }
    out.remove("self");
    out
}

fn first_segment(text: &str) -> Option<String> {
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Module -> the modules it imports, and module -> its production code.
fn read_house() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut code: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
        let prod = production_code(&text);
        let root = if module == "main" {
            "visitord"
        } else {
            "crate"
        };
        let mut names = imports(&prod, root);
        names.remove(&module);
        graph.entry(module.clone()).or_default().extend(names);
        let entry = code.entry(module).or_default();
        entry.push_str(&prod);
        entry.push('\n');
    }
    (graph, code)
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

#[test]
fn every_module_has_a_layer_and_imports_only_downwards() {
    let (graph, _) = read_house();
    let mut problems = Vec::new();
    for (module, imports) in &graph {
        let Some(own) = layer(module) else {
            problems.push(format!(
                "src/{module}: not placed in a layer (tests/architecture.rs LAYERS)"
            ));
            continue;
        };
        for target in imports {
            match layer(target) {
                Some(l) if l > own => problems.push(format!(
                    "{module} (L{own}) imports {target} (L{l}): an import that runs up a layer"
                )),
                Some(_) => {}
                None => problems.push(format!("{module} imports {target}, which has no layer")),
            }
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_import_graph_has_no_cycle() {
    let (graph, _) = read_house();
    // Depth-first search; a grey node met again closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Grey,
        Black,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        match marks.get(node) {
            Some(Mark::Black) => return,
            Some(Mark::Grey) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut ring = path[start..].to_vec();
                ring.push(node.to_owned());
                cycles.push(ring.join(" -> "));
                return;
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Grey);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, marks, path, cycles);
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Black);
    }
    let mut marks = BTreeMap::new();
    let mut cycles = Vec::new();
    for node in graph.keys() {
        visit(node, &graph, &mut marks, &mut Vec::new(), &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}\n", cycles.join("\n"));
}

#[test]
fn pingora_types_stay_in_the_pingora_layer() {
    let (_, code) = read_house();
    let mut problems = Vec::new();
    for (module, text) in &code {
        if PINGORA_MODULES.contains(&module.as_str()) {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let named = line.match_indices("pingora").any(|(at, _)| {
                let rest = &line[at + "pingora".len()..];
                let before = line[..at].chars().next_back();
                // Inside a string literal (a log target, say) names no type.
                let quoted = line[..at].matches('"').count() % 2 == 1;
                !quoted
                    && !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                    && (rest.starts_with("::") || rest.starts_with('_'))
                    && !rest.starts_with("_limits")
            });
            if named {
                problems.push(format!("{module}: line {}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "Pingora named outside its layer:\n{}\n",
        problems.join("\n")
    );
}

#[test]
fn the_reader_sees_imports() {
    let names = imports(
        "use crate::a::B;\nuse crate::{c, d::E, self};\nlet x = crate::f::g();\nmy_crate::h;",
        "crate",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["a", "c", "d", "f"]);
    let code = production_code(
        "use crate::a; // crate::b\n#[cfg(test)]\nmod helper;\nuse crate::x;\n#[cfg(test)]\n#[allow(x)]\nmod tests { use crate::c; }",
    );
    let names: Vec<String> = imports(&code, "crate").into_iter().collect();
    assert_eq!(names, ["a", "x"]);
}
