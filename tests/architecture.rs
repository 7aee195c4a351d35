//! Keeps the house one-way (docs/design.md §8, docs/architecture.md): reads `src/`
//! and fails when
//! - a module is not placed in a layer below (a new file needs a decision),
//! - a module imports from a higher layer,
//! - the `use crate::…` graph has a cycle (sideways imports are allowed
//!   only while they stay acyclic),
//! - a Pingora type is named outside the Pingora glue (`PINGORA_FILES`).
//!
//! `pingora_limits` (a count-min sketch and an in-flight counter, no
//! network or HTTP types) counts as a plain data-structure crate.
//!
//! Test modules (`#[cfg(test)] mod tests`) are not read: a test may reach
//! for whatever helps it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module's layer (a folder under `src/` is one module):
/// a module may import from its own layer (without a cycle) and from lower
/// ones.
const LAYERS: &[(&str, u8)] = &[
    // L0: leaves, plain data in and out.
    ("labels", 0),
    ("clock", 0),
    ("net", 0),
    ("lookup", 0),
    ("limits", 0),
    ("observe", 0),
    ("origin", 0),
    // L1: the serde surface and the typed configuration.
    ("config", 1),
    // L2: values built from configuration and data.
    ("visitor", 2),
    ("certs", 2),
    ("sites", 2),
    ("shared_store", 2),
    // L3: one world per request.
    ("snapshot", 3),
    // L4: decisions and views.
    ("request", 4),
    ("dashboard", 4),
    // L5: Pingora glue.
    ("proxy", 5),
    ("conn", 5),
    ("services", 5),
    // L6: the server and the command line.
    ("server", 6),
    ("main", 6),
];

/// The files (or folders, ending in `/`) under `src/` that may name
/// Pingora types: the glue, and the upstream peer templates (Pingora's
/// `HttpPeer`).
const PINGORA_FILES: &[&str] = &[
    "proxy.rs",
    "server.rs",
    "main.rs",
    "conn/accept.rs",
    "conn/connection.rs",
    "services/",
    "sites/upstream.rs",
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

/// Module -> the modules it imports, and file (under `src/`) -> its
/// production code.
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
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        code.insert(rel.to_string_lossy().replace('\\', "/"), prod);
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
    for (file, text) in &code {
        if PINGORA_FILES
            .iter()
            .any(|p| file == p || (p.ends_with('/') && file.starts_with(p)))
        {
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
                problems.push(format!("src/{file}: line {}: {}", n + 1, line.trim()));
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

/// Concerns are folders: the top of `src/` stays readable at a glance
/// (docs/design.md §8).
#[test]
fn src_has_at_most_twenty_entries_besides_lib_and_main() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let entries: Vec<String> = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    let counted: Vec<&String> = entries
        .iter()
        .filter(|n| *n != "lib.rs" && *n != "main.rs")
        .collect();
    assert!(
        counted.len() <= 20,
        "{} entries: {counted:?}",
        counted.len()
    );
}

/// No source file over 600 lines of production code, no function over 100
/// lines and at most five over 60 (lines that are neither blank nor
/// comments; docs/design.md §8).
#[test]
fn files_and_functions_stay_short() {
    let (_, code) = read_house();
    let mut problems = Vec::new();
    let mut over_60 = Vec::new();
    for (file, text) in &code {
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        if lines > 600 {
            problems.push(format!("src/{file}: {lines} code lines (at most 600)"));
        }
        for (name, n) in function_lengths(text) {
            if n > 100 {
                problems.push(format!("src/{file}: fn {name}: {n} lines (at most 100)"));
            } else if n > 60 {
                over_60.push(format!("src/{file}: fn {name}: {n} lines"));
            }
        }
    }
    if over_60.len() > 5 {
        problems.push(format!(
            "{} functions over 60 lines (at most 5):\n  {}",
            over_60.len(),
            over_60.join("\n  ")
        ));
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// Each function in `code` (comments already removed) and its length in
/// non-blank lines, from its `fn` line to its closing brace.
fn function_lengths(code: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = fn_name(lines[i]) else {
            i += 1;
            continue;
        };
        let (mut depth, mut started, mut j) = (0i64, false, i);
        while j < lines.len() {
            let line = without_strings(lines[j]);
            depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
            started |= line.contains('{');
            if (started && depth <= 0) || (!started && line.trim_end().ends_with(';')) {
                break;
            }
            j += 1;
        }
        if started {
            let end = j.min(lines.len() - 1);
            let n = lines[i..=end]
                .iter()
                .filter(|l| !l.trim().is_empty())
                .count();
            out.push((name, n));
            i = j + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// The name of the function a line starts, if it starts one.
fn fn_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(w) = words.peek() {
        if w.starts_with("pub") || ["const", "async", "unsafe", "extern"].contains(w) {
            words.next();
        } else {
            break;
        }
    }
    if words.next()? != "fn" {
        return None;
    }
    first_segment(words.next()?)
}

/// A line with its string literals emptied (their braces are not code).
fn without_strings(line: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in line.chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
                out.push(c);
            }
        } else {
            if c == '"' {
                quoted = true;
            }
            out.push(c);
        }
    }
    out
}

#[test]
fn the_measure_sees_functions() {
    let code =
        "pub fn a() {\n    let s = \"{\";\n    x();\n}\nfn b(x: u8) -> u8;\nasync fn c() {\n\n}\n";
    assert_eq!(
        function_lengths(code),
        [("a".to_owned(), 4), ("c".to_owned(), 2)]
    );
}
