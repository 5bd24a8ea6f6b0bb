#![allow(clippy::zombie_processes)] // children are waited for in Proc's Drop
//! The load generator's mock nodes as a pruned and an archive node behind the
//! real gateway, driven by the load generator itself: archive routing by
//! block hash, and the retry of "State already discarded" answers.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn hash(n: u64) -> String {
    format!("0xabababababababababababababababababababababababab{n:016x}")
}

fn run(load: &PathBuf, url: &str, mix: &PathBuf) -> String {
    let out = Command::new(load)
        .args([
            "run",
            url,
            "--connections",
            "4",
            "--messages",
            "200",
            "--duration",
            "10",
            "--json",
            "--mix",
        ])
        .arg(mix)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn mock_pruned_and_archive_nodes_behind_the_gateway() {
    let load = PathBuf::from(env!("CARGO_BIN_EXE_ringway-load"));
    let common = [
        "--listen",
        "127.0.0.1:0",
        "--block-ms",
        "60000",
        "--start-height",
        "1000",
    ];
    let (_pruned, pruned_addr) = start(
        &load,
        &[&["node", "--pruning", "16"][..], &common[..]].concat(),
    );
    let (_archive, archive_addr) =
        start(&load, &[&["node", "--archive"][..], &common[..]].concat());

    let dir = std::env::temp_dir().join(format!("ringway-two-tier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The gateway is told the pruned node keeps 256 blocks; it keeps 16.
    let cfg = dir.join("ringway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[health]\ninterval_ms = 100\n[[node]]\nurl = \"ws://{pruned_addr}\"\nrole = \"pruned\"\npruning = 256\n\
             [[node]]\nurl = \"ws://{archive_addr}\"\nrole = \"archive\"\n"
        ),
    )
    .unwrap();
    // Both ways of reaching nodes: a connection per session, and shared
    // connections (ids rewritten).
    let gateways: Vec<(Proc, String)> = [None, Some("--shared")]
        .into_iter()
        .map(|shared| {
            let mut args = vec![
                "--listen",
                "127.0.0.1:0",
                "--plaintext",
                "--config",
                cfg.to_str().unwrap(),
                "--workers",
                "2",
            ];
            args.extend(shared);
            start(&ringway_bin(), &args)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800)); // health checks fill the recent-hash window

    // Calls at the head, 50 blocks back (pruned node asked, then archive), and
    // 900 back (unknown hash: archive directly).
    let mix = dir.join("mix.txt");
    std::fs::write(
        &mix,
        format!(
            "4 state_getStorage [\"0x26aa\",\"{}\"]\n3 state_getStorage [\"0x26aa\",\"{}\"]\n3 state_getStorage [\"0x26aa\",\"{}\"]\n1 system_health []\n",
            hash(1000),
            hash(950),
            hash(100)
        ),
    )
    .unwrap();
    // Straight to the pruned node, old state fails...
    let direct = run(&load, &format!("ws://{pruned_addr}/"), &mix);
    assert!(
        errors(&direct) > 0,
        "the pruned node alone refuses old state: {direct}"
    );
    // ...through the gateway, every call is answered, in both modes.
    for (_, gw_addr) in &gateways {
        let through = run(&load, &format!("ws://{gw_addr}/"), &mix);
        assert_eq!(errors(&through), 0, "{through}");
        assert!(through.contains("\"ok\":200"), "{through}");
    }
}
