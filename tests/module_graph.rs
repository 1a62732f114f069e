//! The crate's import graph has no circle, and its leaves stay leaves.
//!
//! Read from the source text (not compiled): every `crate::`, `super::` and `self::` path in non-test code is an
//! edge from the module that writes it to the module it names. Checked:
//! - no cycle among the top-level modules, nor among the siblings of any folder (`crypto/rsa` vs
//!   `crypto/ecdsa`, `request/gate` vs `request/sign`, ...);
//! - the leaves import nothing else of the crate: `crypto`, `host`, `mcp`, `envoy_value`, `config::error`;
//! - the algorithms of `crypto` never import one another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Module path of a source file: `src/crypto/rsa/crt.rs` → `crypto::rsa::crt`, `src/config/mod.rs` → `config`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod") | Some("lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comments and without its test module(s).
fn non_test_code(text: &str) -> String {
    let mut code = String::new();
    let mut in_block_comment = false;
    for line in text.lines() {
        let mut line = line.to_string();
        if in_block_comment {
            match line.find("*/") {
                Some(end) => {
                    line = line[end + 2..].to_string();
                    in_block_comment = false;
                }
                None => continue,
            }
        }
        if let Some(start) = line.find("/*") {
            in_block_comment = !line[start..].contains("*/");
            line.truncate(start);
        }
        if let Some(comment) = line.find("//") {
            line.truncate(comment);
        }
        code.push_str(&line);
        code.push('\n');
    }
    // Everything from the first `#[cfg(test)] mod x {` on is test code (the project keeps tests last).
    match code
        .find("#[cfg(test)]\nmod ")
        .or_else(|| code.find("#[cfg(test)]\npub mod "))
    {
        Some(i) if code[i..].lines().nth(1).is_some_and(|l| l.trim_end().ends_with('{')) => code[..i].to_string(),
        _ => code,
    }
}

/// Modules declared test-only (`#[cfg(test)] mod tests;`) in a file.
fn test_only_children(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]" && w[1].starts_with("mod ") && w[1].ends_with(';'))
        .map(|w| w[1].trim_start_matches("mod ").trim_end_matches(';').to_string())
        .collect()
}

/// Every module path referenced by `code` written in module `me`.
fn references(code: &str, me: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let me_parts: Vec<&str> = if me.is_empty() {
        vec![]
    } else {
        me.split("::").collect()
    };
    let bytes = code.as_bytes();
    for (i, _) in code.match_indices("::") {
        // The path the `::` belongs to: walk back to its start.
        let mut start = i;
        while start > 0
            && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_' || bytes[start - 1] == b':')
        {
            start -= 1;
        }
        let head_end = code[start..].find("::").map_or(i, |o| start + o);
        if head_end != i {
            continue; // not the first `::` of its path
        }
        let mut end = i;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':') {
            end += 1;
        }
        let path: Vec<&str> = code[start..end].split("::").filter(|s| !s.is_empty()).collect();
        let (mut base, rest): (Vec<&str>, &[&str]) = match path.first().copied() {
            Some("crate") => (vec![], &path[1..]),
            Some("self") => (me_parts.clone(), &path[1..]),
            Some("super") => {
                // `super` of `a::d` is `a`, whether `a::d` is a file (a/d.rs) or a folder's facade (a/d/mod.rs).
                let mut base = me_parts.clone();
                base.pop();
                let mut rest = &path[1..];
                while rest.first() == Some(&"super") {
                    base.pop();
                    rest = &rest[1..];
                }
                (base, rest)
            }
            _ => continue,
        };
        // The longest known module the path names.
        let mut best = None;
        for segment in rest {
            base.push(segment);
            let candidate = base.join("::");
            if modules.contains(&candidate) {
                best = Some(candidate);
            } else {
                break;
            }
        }
        if let Some(m) = best {
            if m != me {
                found.insert(m);
            }
        }
    }
    found
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut test_only = BTreeSet::new();
    for file in &files {
        let me = module_of(&src, file);
        for child in test_only_children(&std::fs::read_to_string(file).unwrap()) {
            test_only.insert(if me.is_empty() { child } else { format!("{me}::{child}") });
        }
    }
    let mut graph = Graph::new();
    for file in &files {
        let me = module_of(&src, file);
        if test_only.contains(&me) {
            continue;
        }
        let code = non_test_code(&std::fs::read_to_string(file).unwrap());
        graph.insert(me.clone(), references(&code, &me, &modules));
    }
    graph
}

/// The graph of the children of `parent` ("" for the top level): an edge `a -> b` when anything in `a` (or below
/// it) references anything in `b` (or below it). References to `parent` itself or outside it are left out.
fn children_graph(graph: &Graph, parent: &str) -> Graph {
    let child_of = |module: &str| -> Option<String> {
        let rest = if parent.is_empty() {
            module
        } else {
            module.strip_prefix(parent)?.strip_prefix("::")?
        };
        rest.split("::").next().filter(|s| !s.is_empty()).map(str::to_string)
    };
    let mut out = Graph::new();
    for (from, targets) in graph {
        let Some(a) = child_of(from) else { continue };
        for to in targets {
            if let Some(b) = child_of(to) {
                if a != b {
                    out.entry(a.clone()).or_default().insert(b);
                }
            }
        }
        out.entry(a).or_default();
    }
    out
}

/// A cycle, if the graph has one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_import_circle_at_any_level() {
    let graph = graph();
    assert!(graph.len() > 20, "too few modules found: {:?}", graph.keys());
    let mut parents: BTreeSet<String> = BTreeSet::from([String::new()]);
    for module in graph.keys() {
        let mut parts: Vec<&str> = module.split("::").collect();
        parts.pop();
        parents.insert(parts.join("::"));
    }
    for parent in &parents {
        let level = children_graph(&graph, parent);
        assert!(
            find_cycle(&level).is_none(),
            "import circle under `{}`: {:?}\nedges: {level:#?}",
            if parent.is_empty() { "crate" } else { parent },
            find_cycle(&level)
        );
    }
}

#[test]
fn leaves_import_nothing_else_of_the_crate() {
    let graph = graph();
    for leaf in ["crypto", "host", "mcp", "envoy_value", "config::error"] {
        for (from, targets) in &graph {
            if from != leaf && !from.starts_with(&format!("{leaf}::")) {
                continue;
            }
            for to in targets {
                assert!(
                    to == leaf || to.starts_with(&format!("{leaf}::")),
                    "{from} (in the leaf `{leaf}`) imports {to}"
                );
            }
        }
    }
}

#[test]
fn the_algorithms_do_not_import_one_another() {
    let graph = graph();
    let algorithms = ["crypto::rsa", "crypto::ecdsa", "crypto::ed25519"];
    for (from, targets) in &graph {
        for a in algorithms {
            if from == a || from.starts_with(&format!("{a}::")) {
                for b in algorithms.iter().filter(|b| **b != a) {
                    assert!(
                        !targets.iter().any(|t| t == b || t.starts_with(&format!("{b}::"))),
                        "{from} imports {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_checker_finds_a_planted_circle() {
    // The checker itself: a circle planted in a synthetic graph is found, at the top and one level down.
    let edges = |list: &[(&str, &str)]| -> Graph {
        let mut g = Graph::new();
        for (a, b) in list {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    let g = edges(&[
        ("config::keys", "identity"),
        ("identity", "config::sources"),
        ("claims", "config"),
    ]);
    assert!(find_cycle(&children_graph(&g, "")).is_some());
    let g = edges(&[("crypto::rsa::crt", "crypto::ecdsa"), ("crypto::ecdsa", "crypto::rsa")]);
    assert!(find_cycle(&children_graph(&g, "crypto")).is_some());
    let g = edges(&[
        ("request::gate", "claims"),
        ("request", "request::gate"),
        ("claims", "config"),
    ]);
    assert!(find_cycle(&children_graph(&g, "")).is_none());
    // And the reference reader sees the paths that make edges.
    let modules: BTreeSet<String> = ["a", "a::b", "c"].iter().map(|s| s.to_string()).collect();
    let refs = references(
        "use crate::c::X;\nuse super::b::Y; fn f() { crate::a::b::g() }",
        "a::d",
        &modules,
    );
    assert_eq!(refs, BTreeSet::from(["c".to_string(), "a::b".to_string()]));
}
