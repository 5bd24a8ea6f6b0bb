//! The module graph stands on floors: each top-level module of `src/` uses
//! only modules on its own floor or below, and no modules import each other
//! in a circle. (Drawn in `src/lib.rs`; code before `#[cfg(test)]` counts.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const FLOORS: &[(u8, &[&str])] = &[
    (
        1,
        &[
            "config", "h1", "ws", "io", "tls", "stats", "route", "hedge", "jsonrpc", "log",
            "signal", "task", "rng",
        ],
    ),
    (
        2,
        &[
            "relay", "probe", "detect", "upstream", "metrics", "health", "policy", "cache", "call",
        ],
    ),
    (3, &["worker", "cluster"]),
    (4, &["gateway", "http"]),
    (5, &["runtime", "fuzzing"]),
];

fn floor(module: &str) -> u8 {
    FLOORS
        .iter()
        .find(|(_, ms)| ms.contains(&module))
        .map(|(f, _)| *f)
        .unwrap_or_else(|| panic!("src/{module}: on no floor (add it to FLOORS and src/lib.rs)"))
}

/// Top-level module -> the top-level modules it names, with a file naming each.
fn imports() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut files = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().map_or(true, |e| e != "rs") {
            continue;
        }
        let rel = p
            .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
            .unwrap();
        let top = rel
            .iter()
            .next()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs");
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap();
        let out = edges.entry(top.to_string()).or_default();
        let mut names = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + 7..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for part in group.split(',') {
                    names.insert(ident(part.trim_start()));
                }
            } else {
                names.insert(ident(rest));
            }
        }
        for n in names {
            if !n.is_empty() && n != top {
                out.entry(n).or_insert_with(|| rel.display().to_string());
            }
        }
    }
    edges
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn every_module_uses_only_modules_on_its_floor_or_below() {
    let edges = imports();
    let mut upward = Vec::new();
    for (from, to) in &edges {
        for (m, file) in to {
            if edges.contains_key(m) && floor(m) > floor(from) {
                upward.push(format!(
                    "{from} (floor {}) -> {m} (floor {}): {file}",
                    floor(from),
                    floor(m)
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports reaching up a floor:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let edges = imports();
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut circle = path[at..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for next in edges[m].keys().filter(|n| edges.contains_key(*n)) {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(circle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!("modules in a circle: {}", circle.join(" -> "));
        }
    }
}
