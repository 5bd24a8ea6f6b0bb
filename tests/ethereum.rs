//! With real Ethereum nodes: anvil (`npm install @foundry-rs/anvil`), one
//! pruned (`--prune-history 5`) and one archive. `.ci/run` installs anvil into
//! `target/anvil`; without it (or `RINGWAY_ANVIL=/path/to/anvil`) these tests
//! say so and pass.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// JSON-RPC over plain HTTP to an anvil directly.
fn direct(url: &str, body: &str) -> String {
    let addr = url.trim_start_matches("ws://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    read_response(&mut s).2
}

const ACCOUNT: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

fn balance_at(id: u64, block: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_getBalance","params":["{ACCOUNT}","{block}"]}}"#
    )
}

#[test]
fn a_pruned_anvil_is_backed_by_an_archive_one() {
    let bin = anvil_path();
    let pruned = anvil(&bin, &["--prune-history", "5"]);
    let archive = anvil(&bin, &[]);
    for node in [&pruned, &archive] {
        let r = direct(
            &node.url,
            r#"{"jsonrpc":"2.0","id":1,"method":"anvil_mine","params":["0x32"]}"#,
        );
        assert!(r.contains("result"), "{r}");
    }
    // The pruned node alone cannot answer for block 10.
    let r = direct(&pruned.url, &balance_at(1, "0xa"));
    assert!(r.contains("BlockOutOfRange"), "{r}");

    let pki = TestPki::new();
    // The gateway believes the pruned node keeps 100 blocks, so it asks it
    // first and must retry on the archive node.
    let cfg = write_config(
        &pki,
        "eth.toml",
        &format!(
            "[routing]\nchain = \"ethereum\"\n[health]\ninterval_ms = 100\n\
             [[node]]\nurl = \"{}\"\nrole = \"pruned\"\npruning = 100\n[[node]]\nurl = \"{}\"\nrole = \"archive\"\n",
            pruned.url, archive.url
        ),
    );
    let gw = Gateway::start(&pki, &[], &["--config", cfg.to_str().unwrap()]);
    // Health checks speak eth_syncing / eth_blockNumber: both nodes at 50.
    let start = Instant::now();
    loop {
        let body = https_get(gw.addr, pki.client_config(), "/health").2;
        if body.matches(r#""head":50"#).count() == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // HTTP: recent, retried, and explicit old blocks all answered.
    let mut s = tls_connect(gw.addr, pki.client_config());
    for (id, block) in [(1, "latest"), (2, "0xa"), (3, "0x30"), (4, "earliest")] {
        let body = balance_at(id, block);
        let req = format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let (status, _, answer) = read_response(&mut s);
        assert_eq!(status, 200);
        assert!(
            answer.contains(r#""result":"0x"#) && answer.contains(&format!(r#""id":{id}"#)),
            "{block}: {answer}"
        );
    }
    // WebSocket: the same, in one session (ethers and web3 use this path).
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for (id, block) in [(11, "latest"), (12, "0xa"), (13, "0x2f")] {
        ws.send(Message::Text(balance_at(id, block))).unwrap();
        let answer = match ws.read().unwrap() {
            Message::Text(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(
            answer.contains(r#""result":"0x"#) && answer.contains(&format!(r#""id":{id}"#)),
            "{block}: {answer}"
        );
    }
}

#[test]
fn an_ethereum_node_behind_default_flags_stays_in_service() {
    // `--upstream ws://anvil` without `--chain ethereum`: the Substrate probe's
    // methods are unknown there (-32601), which is no reason to drop the node.
    let bin = anvil_path();
    let node = anvil(&bin, &[]);
    let pki = TestPki::new();
    let cfg = write_config(&pki, "fast.toml", "[health]\ninterval_ms = 100\n");
    let gw = Gateway::start(
        &pki,
        std::slice::from_ref(&node.url),
        &["--config", cfg.to_str().unwrap()],
    );
    // Several probes have run: a node marked down would show by now.
    wait_for(Duration::from_secs(5), "probes", || {
        https_get(gw.addr, pki.client_config(), "/health")
            .2
            .contains(r#""probes":4"#)
    });
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#.into(),
    ))
    .unwrap();
    match ws.read().unwrap() {
        Message::Text(t) => assert!(t.contains(r#""result":"0x7a69""#), "{t}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ethereum_subscriptions_over_shared_node_connections() {
    // Two sessions share one connection to a real node: each gets its own
    // eth_subscribe id and its own notifications, and can end only its own.
    let bin = anvil_path();
    let node = anvil(&bin, &[]);
    let pki = TestPki::new();
    let cfg = write_config(
        &pki,
        "shared-eth.toml",
        "[routing]\nchain = \"ethereum\"\n[pool]\nshared = true\n",
    );
    let gw = Gateway::start(
        &pki,
        std::slice::from_ref(&node.url),
        &["--config", cfg.to_str().unwrap(), "--workers", "1"],
    );
    let read = |ws: &mut tungstenite::WebSocket<TlsStream>| match ws.read().unwrap() {
        Message::Text(t) => t,
        other => panic!("{other:?}"),
    };
    let mut sessions = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..2 {
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":"s","method":"eth_subscribe","params":["newHeads"]}"#.into(),
        ))
        .unwrap();
        let t = read(&mut ws);
        assert!(t.contains(r#""id":"s""#), "{t}");
        let sub = result_string(&t);
        subs.push(sub);
        sessions.push(ws);
    }
    assert_ne!(subs[0], subs[1]);
    let r = direct(
        &node.url,
        r#"{"jsonrpc":"2.0","id":1,"method":"anvil_mine","params":["0x1"]}"#,
    );
    assert!(r.contains("result"), "{r}");
    for (ws, sub) in sessions.iter_mut().zip(&subs) {
        let t = read(ws);
        assert!(
            t.contains("eth_subscription") && t.contains(&format!(r#""subscription":"{sub}""#)),
            "{t}"
        );
    }
    // Session 0 may not end session 1's subscription; it may end its own.
    let ws = &mut sessions[0];
    ws.send(Message::Text(format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"eth_unsubscribe","params":["{}"]}}"#,
        subs[1]
    )))
    .unwrap();
    assert!(read(ws).contains("-32602"));
    ws.send(Message::Text(format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"eth_unsubscribe","params":["{}"]}}"#,
        subs[0]
    )))
    .unwrap();
    let t = read(ws);
    assert!(t.contains(r#""id":3"#) && t.contains("true"), "{t}");
}

#[test]
fn ethers_and_web3_work_through_the_gateway_unchanged() {
    let bin = anvil_path();
    let pki = TestPki::new();
    let clients = JsScript::new("clients.mjs", &pki);
    let node = anvil(&bin, &[]);
    let http = node.url.replacen("ws://", "http://", 1);
    for mode in [None, Some("--shared")] {
        let cfg = write_config(&pki, "js.toml", "[routing]\nchain = \"ethereum\"\n");
        let mut args = vec!["--config", cfg.to_str().unwrap()];
        args.extend(mode);
        let gw = Gateway::start(&pki, std::slice::from_ref(&node.url), &args);
        let (ok, stdout, stderr) = clients.run(&[&gw.url("/"), &http]);
        assert!(
            ok && stdout.contains("ethers 31337") && stdout.contains("web3 31337"),
            "{mode:?}: {stdout}\n{stderr}"
        );
    }
}

/// Guards batches split by role: a batch mixing head reads and a read at a
/// block the pruned node has pruned went to the pruned node whole and got
/// `BlockOutOfRangeError`, over HTTP and WebSocket, in both modes. Now
/// viem's and ethers' batching transports, ethers over WebSocket and a
/// raw WebSocket batch each get every answer, in order.
#[test]
fn batches_mixing_head_and_archive_reads_are_answered_whole_by_batching_clients() {
    let bin = anvil_path();
    let pki = TestPki::new();
    let script = JsScript::new("batches.mjs", &pki);
    let pruned = anvil(&bin, &["--prune-history", "2"]);
    let archive = anvil(&bin, &[]);
    for node in [&pruned, &archive] {
        let r = direct(
            &node.url,
            r#"{"jsonrpc":"2.0","id":1,"method":"anvil_mine","params":["0x64"]}"#,
        );
        assert!(r.contains("result"), "{r}");
    }
    assert!(direct(&pruned.url, &balance_at(1, "0x1")).contains("BlockOutOfRange"));
    for shared in [false, true] {
        // The gateway believes the pruned node keeps 256 blocks: it asks it
        // first, and each answer it lacks the state for goes to archive.
        let cfg = write_config(
            &pki,
            "batches.toml",
            &format!(
                "[routing]\nchain = \"ethereum\"\n[health]\ninterval_ms = 100\n[pool]\nshared = {shared}\n\
                 [[node]]\nurl = \"{}\"\nrole = \"pruned\"\n[[node]]\nurl = \"{}\"\nrole = \"archive\"\n",
                pruned.url, archive.url
            ),
        );
        let gw = Gateway::start(&pki, &[], &["--config", cfg.to_str().unwrap()]);
        wait_for(TIMEOUT, "both heads at 100", || {
            https_get(gw.addr, pki.client_config(), "/health")
                .2
                .matches(r#""head":100"#)
                .count()
                == 2
        });
        let https = format!("https://localhost:{}/", gw.addr.port());
        let (ok, stdout, stderr) = script.run(&[&https, &gw.url("/")]);
        assert!(ok, "shared = {shared}: {stdout}\n{stderr}");
        for who in ["viem-http-batch", "ethers-http", "ethers-ws", "ws-batch"] {
            assert!(
                stdout.contains(&format!("{who} chain 31337 head 100")),
                "{who}: {stdout}"
            );
        }
    }
}
