//! Replays the committed fuzz seeds through the fuzz targets' properties,
//! plus deterministic mutations of them, on the stable toolchain. The
//! coverage-guided runs are in `fuzz/` (see README, "Fuzzing").

use std::path::Path;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        // Only the committed seeds: a local fuzz run leaves its corpus here too.
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// Byte flips, truncations and splices of each seed, from a fixed-seed generator.
fn mutations(seeds: &[Vec<u8>], rounds: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    for _ in 0..rounds {
        for s in seeds {
            let mut m = s.clone();
            match next() % 4 {
                0 if !m.is_empty() => {
                    let i = next() as usize % m.len();
                    m[i] ^= 1 << (next() % 8);
                }
                1 if !m.is_empty() => m.truncate(next() as usize % m.len()),
                2 => {
                    let other = &seeds[next() as usize % seeds.len()];
                    let cut = if other.is_empty() {
                        0
                    } else {
                        next() as usize % other.len()
                    };
                    m.extend_from_slice(&other[cut..]);
                }
                _ => {
                    let i = if m.is_empty() {
                        0
                    } else {
                        next() as usize % m.len()
                    };
                    m.insert(i, next() as u8);
                }
            }
            out.push(m);
        }
    }
    out
}

fn check(target: &str, f: fn(&[u8])) {
    let seeds = seeds(target);
    for s in &seeds {
        f(s);
    }
    for m in mutations(&seeds, 2000) {
        f(&m);
    }
}

#[test]
fn frame_header_seeds() {
    check("frame_header", ringway::fuzzing::frame_header);
}

#[test]
fn decoder_seeds() {
    check("decoder", ringway::fuzzing::decoder);
}

#[test]
fn request_head_seeds() {
    check("request_head", ringway::fuzzing::request_head);
}

#[test]
fn upstream_response_seeds() {
    check("upstream_response", ringway::fuzzing::upstream_response);
}

#[test]
fn jsonrpc_seeds() {
    check("jsonrpc", ringway::fuzzing::jsonrpc);
}

#[test]
fn http_body_seeds() {
    check("http_body", ringway::fuzzing::http_body);
}

#[test]
fn cache_rules_seeds() {
    check("cache_rules", ringway::fuzzing::cache_rules);
}

#[test]
fn jsonrpc_strict_seeds() {
    check("jsonrpc_strict", ringway::fuzzing::jsonrpc_strict);
}
