//! Programs the load tests start: the mock node, the gateway, the load
//! generator; each killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A program and what it warned of on stderr (lines with WARN or ERROR),
/// for a failing test to show.
pub struct Proc(pub Child, pub Arc<Mutex<Vec<String>>>);

impl Proc {
    /// What the program warned of so far, one line each.
    pub fn warnings(&self) -> String {
        self.1.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a program and return it with the first `ws://ADDR` it prints.
pub fn start(bin: &PathBuf, args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let warned = Arc::new(Mutex::new(Vec::new()));
    let err = BufReader::new(child.stderr.take().unwrap());
    let keep = warned.clone();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            if line.contains("WARN") || line.contains("ERROR") || line.contains("panic") {
                let mut k = keep.lock().unwrap();
                if k.len() < 50 {
                    k.push(line);
                }
            }
        }
    });
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "{} did not start", bin.display());
        let line = lines.next().expect("output").unwrap();
        if let Some(rest) = line.split("ws://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().to_string();
            std::thread::spawn(move || for _ in lines {});
            return (Proc(child, warned), addr);
        }
    }
}

/// The gateway binary, from the same target directory (built if missing).
pub fn ringway_bin() -> PathBuf {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_ringway-load"));
    let bin = load.with_file_name("ringway");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "ringway", "--bin", "ringway"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    bin
}

/// The load generator.
pub fn load_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ringway-load"))
}

/// The `"errors":N` of a load report.
pub fn errors(json: &str) -> u64 {
    let at = json.find("\"errors\":").expect("errors in the report") + 9;
    json[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
