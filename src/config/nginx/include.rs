//! `include` as nginx reads it: a path or a pattern (`sites-enabled/*`,
//! `conf.d/*.conf`), relative to the directory of the main file, the
//! matching files in name order, their directives in place of the
//! `include`, at any depth.

use std::path::{Path, PathBuf};

use super::convert::convert;
use super::out::Imported;
use super::syntax::{mark, parse, Directive};

/// Includes nested deeper than this are a loop.
const MAX_DEPTH: usize = 16;

/// Convert the configuration in the file at `path` and every file it
/// includes (Debian's layout: nginx.conf including conf.d/*.conf and
/// sites-enabled/*). A tree copied out of `/etc/nginx` converts where it
/// lies: an absolute `/etc/nginx/...` include is looked for under the main
/// file's directory first.
/// `allow_open`: see [`super::import`].
pub fn import_file(path: &Path, allow_open: bool) -> Result<Imported, String> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut notes = Vec::new();
    let tree = read(path, &base, 0, &mut notes)?;
    convert(&tree, notes, allow_open).map_err(|e| format!("{}: {e}", path.display()))
}

fn read(
    path: &Path,
    base: &Path,
    depth: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<Directive>, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{}: includes nested more than {MAX_DEPTH} deep (a loop?)",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut tree = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    mark(&mut tree, &std::rc::Rc::from(path.display().to_string()));
    expand(tree, base, depth, notes)
}

fn expand(
    block: Vec<Directive>,
    base: &Path,
    depth: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    for mut d in block {
        if d.name == "include" && d.block.is_none() {
            let Some(pattern) = d.args.first() else {
                continue;
            };
            let files = matches(base, pattern);
            if files.is_empty() && !pattern.contains('*') {
                notes.push(format!("include {pattern}: no such file"));
            }
            for f in files {
                out.extend(read(&f, base, depth + 1, notes)?);
            }
            continue;
        }
        if let Some(b) = d.block.take() {
            d.block = Some(expand(b, base, depth, notes)?);
        }
        out.push(d);
    }
    Ok(out)
}

/// The files `pattern` names, in name order (a `*` in its last part). In
/// a copy of `/etc/nginx` elsewhere, `/etc/nginx/...` names the copy's
/// file first.
fn matches(base: &Path, pattern: &str) -> Vec<PathBuf> {
    if let Some(rest) = pattern.strip_prefix("/etc/nginx/") {
        if base != Path::new("/etc/nginx") {
            let copy = glob(&base.join(rest));
            if !copy.is_empty() {
                return copy;
            }
        }
    }
    glob(&base.join(pattern))
}

fn glob(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains('*') {
        return if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let (head, tail) = name.split_once('*').expect("has a star");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            // nginx's glob skips dot files, as the shell does.
            !n.starts_with('.')
                && n.len() >= head.len() + tail.len()
                && n.starts_with(head)
                && n.ends_with(tail)
        })
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}
