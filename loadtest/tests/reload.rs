#![allow(clippy::zombie_processes)] // children are waited for in Proc's Drop
//! A reload under load loses nothing: the load generator keeps 40 sessions
//! busy (4 requests in flight each) and opens new sessions all along, while
//! the node list changes ten times (SIGHUP each time); every request is
//! answered and every connection opens, in both modes.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// `GET /health` from a plain ws:// gateway.
fn health(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn reload_under_load(mode: &[&str]) {
    let load = load_bin();
    let nodes: Vec<(Proc, String)> = (0..3)
        .map(|_| {
            start(
                &load,
                &["node", "--listen", "127.0.0.1:0", "--block-ms", "500"],
            )
        })
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "ringway-reload-load-{}-{}",
        std::process::id(),
        mode.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("ringway.toml");
    let write = |set: &[usize]| {
        let mut text = String::from("[health]\ninterval_ms = 200\n");
        for &i in set {
            text.push_str(&format!("[[node]]\nurl = \"ws://{}\"\n", nodes[i].1));
        }
        std::fs::write(&cfg, text).unwrap();
    };
    write(&[0, 1]);
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--plaintext",
        "--workers",
        "2",
        "--config",
        cfg.to_str().unwrap(),
    ];
    args.extend_from_slice(mode);
    let (gw, addr) = start(&ringway_bin(), &args);
    let url = format!("ws://{addr}/");

    let busy = Command::new(&load)
        .args(["run", &url, "--connections", "40", "--depth", "4"])
        .args(["--duration", "6", "--json", "--method", "system_health"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let fresh = Command::new(&load)
        .args(["connect", &url, "--rate", "40", "--duration", "6", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Ten changes: nodes added, removed, and back (the removed ones keep
    // their sessions for the default grace, a minute: longer than the run).
    let sets: [&[usize]; 10] = [
        &[1, 2],
        &[2],
        &[0, 2],
        &[0, 1, 2],
        &[0],
        &[1],
        &[1, 2],
        &[0, 2],
        &[2],
        &[0, 1],
    ];
    let t0 = Instant::now();
    for (k, set) in sets.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(400));
        write(set);
        let ok = Command::new("kill")
            .args(["-HUP", &gw.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let want = format!("\"generation\":{}", k + 2);
        while !health(&addr).contains(&want) {
            assert!(t0.elapsed() < Duration::from_secs(20), "no {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let busy = busy.wait_with_output().unwrap();
    let fresh = fresh.wait_with_output().unwrap();
    let busy = String::from_utf8(busy.stdout).unwrap();
    let fresh = String::from_utf8(fresh.stdout).unwrap();
    let warned = gw.warnings();
    assert_eq!(errors(&busy), 0, "{busy}\ngateway:\n{warned}");
    assert!(!busy.contains("\"ok\":0,"), "{busy}");
    assert_eq!(errors(&fresh), 0, "{fresh}\ngateway:\n{warned}");
    assert!(!fresh.contains("\"ok\":0,"), "{fresh}");
    assert!(health(&addr).contains("\"generation\":11,\"last_reload\":\"ok\""));
    drop(gw);
}

#[test]
fn a_reload_under_load_loses_nothing() {
    reload_under_load(&[]);
}

#[test]
fn a_reload_under_load_loses_nothing_in_shared_mode() {
    reload_under_load(&["--shared"]);
}
