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

/// A file's module path inside `src/` (`relay/shared/conn.rs` is
/// `relay::shared::conn`; a `mod.rs` is its folder's), and its code before
/// `#[cfg(test)]`, without comments or visibility paths (`pub(super)`).
fn module_files() -> BTreeMap<Vec<String>, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut todo = vec![src.clone()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().map_or(true, |e| e != "rs") {
            continue;
        }
        let rel = p.strip_prefix(&src).unwrap().with_extension("");
        let mut path: Vec<String> = rel
            .iter()
            .map(|s| s.to_str().unwrap().to_string())
            .collect();
        if path.last().is_some_and(|l| l == "mod") {
            path.pop();
        }
        if path == ["lib"] || path == ["main"] {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap();
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        let code = ["pub(super)", "pub(crate)", "pub(self)"]
            .iter()
            .fold(code, |c, v| c.replace(v, "pub"));
        out.insert(path, code);
    }
    out
}

/// The paths a file names (`crate::a::b`, `super::c`, `self::d`, and those
/// that start with a child module's name), groups `{..}` expanded.
fn named_paths(module: &[String], code: &str, modules: &BTreeSet<Vec<String>>) -> Vec<Vec<String>> {
    fn expand(prefix: Vec<String>, group: &str, out: &mut Vec<Vec<String>>) {
        let (mut depth, mut part, mut parts) = (0, String::new(), Vec::new());
        for ch in group.chars() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(std::mem::take(&mut part));
                    continue;
                }
                _ => {}
            }
            part.push(ch);
        }
        parts.push(part);
        for p in parts {
            let p = p.split(" as ").next().unwrap().trim().to_string();
            if p.is_empty() {
                continue;
            }
            match p.split_once("::{") {
                Some((head, rest)) if p.ends_with('}') => {
                    let mut pre = prefix.clone();
                    pre.extend(head.split("::").map(String::from));
                    expand(pre, &rest[..rest.len() - 1], out);
                }
                _ => {
                    let mut full = prefix.clone();
                    full.extend(p.split("::").map(|s| s.trim().to_string()));
                    out.push(full);
                }
            }
        }
    }
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) || (i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (is_ident(chars[i]) || (chars[i] == ':' && chars.get(i + 1) == Some(&':')))
        {
            i += if chars[i] == ':' { 2 } else { 1 };
        }
        let word: String = chars[start..i].iter().collect();
        let segs: Vec<String> = word
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let head = segs[0].as_str();
        let child = {
            let mut m = module.to_vec();
            m.push(head.to_string());
            modules.contains(&m)
        };
        let keyword = matches!(head, "crate" | "super" | "self");
        if !(keyword || (child && segs.len() > 1)) {
            continue;
        }
        let mut base = if keyword {
            segs.clone()
        } else {
            [vec!["self".to_string()], segs.clone()].concat()
        };
        if word.ends_with("::") && chars.get(i) == Some(&'{') {
            let mut depth = 1;
            let mut j = i + 1;
            while j < chars.len() && depth > 0 {
                match chars[j] {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                j += 1;
            }
            let group: String = chars[i + 1..j - 1].iter().collect();
            expand(std::mem::take(&mut base), &group, &mut out);
            i = j;
        } else {
            out.push(base);
        }
    }
    out
}

/// The module a path lands in: down its module segments, then through a
/// re-export (`pub use child::Name`) of the item it names.
fn resolve(
    from: &[String],
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
    reexports: &BTreeMap<(Vec<String>, String), Vec<String>>,
) -> Vec<String> {
    let mut cur = from.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            cur.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        _ => {}
    }
    while rest.first().is_some_and(|s| s == "super") {
        cur.pop();
        rest = &rest[1..];
    }
    while let Some(next) = rest.first() {
        let mut m = cur.clone();
        m.push(next.clone());
        if !modules.contains(&m) {
            break;
        }
        cur = m;
        rest = &rest[1..];
    }
    match rest
        .first()
        .and_then(|name| reexports.get(&(cur.clone(), name.clone())))
    {
        Some(target) => target.clone(),
        None => cur,
    }
}

/// Guards the rooms' insides: a room's files stand on floors of their own
/// (relay/ had 12 files importing each other in one circle: session ↔
/// archive ↔ shared/*; config, policy and cluster a mod.rs and a child).
#[test]
fn no_files_of_a_room_import_each_other_in_a_circle() {
    let files = module_files();
    let modules: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let mut reexports = BTreeMap::new();
    for (module, code) in &files {
        for stmt in code.split("pub use ").skip(1) {
            let stmt = stmt.split(';').next().unwrap();
            let mut paths = Vec::new();
            let text = format!("self::{stmt}");
            for p in named_paths(module, &text, &modules) {
                paths.push(p);
            }
            for p in paths {
                let Some(name) = p.last().filter(|n| *n != "*") else {
                    continue;
                };
                let target = resolve(module, &p[..p.len() - 1], &modules, &BTreeMap::new());
                reexports.insert((module.clone(), name.clone()), target);
            }
        }
    }
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, code) in &files {
        let out = edges.entry(module.clone()).or_default();
        for p in named_paths(module, code, &modules) {
            let target = resolve(module, &p, &modules, &reexports);
            // Inside one room only (the floors above check between rooms).
            if &target != module && modules.contains(&target) && target[0] == module[0] {
                out.insert(target);
            }
        }
    }
    fn visit(
        m: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut circle: Vec<String> = path[at..].iter().map(|p| p.join("::")).collect();
            circle.push(m.join("::"));
            return Some(circle);
        }
        if !done.insert(m.clone()) {
            return None;
        }
        path.push(m.clone());
        for next in &edges[m] {
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
            panic!("files of one room in a circle: {}", circle.join(" -> "));
        }
    }
}
