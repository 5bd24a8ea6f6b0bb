//! The response cache in shared mode, with a node that counts the calls it
//! gets from client sessions: many clients cost it about what one does, an
//! answer that could change is never served from the cache, and identical
//! requests in flight reach it once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tungstenite::Message;

/// A gateway in shared mode (two workers) in front of `chain`.
fn gateway(pki: &TestPki, chain: &Arc<FakeChain>, up: &Upstream, extra: &str) -> Gateway {
    gateway_in(pki, chain, up, extra, &["--shared"])
}

/// The same in `mode` (`--shared`, or nothing: pinned sessions).
fn gateway_in(
    pki: &TestPki,
    chain: &Arc<FakeChain>,
    up: &Upstream,
    extra: &str,
    mode: &[&str],
) -> Gateway {
    let cfg = write_config(
        pki,
        "cache.toml",
        &format!(
            "[health]\ninterval_ms = 100\n{extra}\n[[node]]\nurl = \"{}\"\n",
            up.url()
        ),
    );
    let args = [&["--config", cfg.to_str().unwrap()][..], mode].concat();
    let gw = Gateway::start(pki, &[], &args);
    // The finalized block is known once a probe asked for it.
    let head = chain.head.load(std::sync::atomic::Ordering::Relaxed);
    wait_for(TIMEOUT, "the finalized block", || {
        https_get(gw.addr, pki.client_config(), "/health")
            .2
            .contains(&format!("\"head\":{head}"))
    });
    std::thread::sleep(Duration::from_millis(300));
    gw
}

/// What Polkadot-JS asks at start (the calls whose answers are the same
/// for everyone), each with the client's own ids.
fn start_up(gw: &Gateway, cfg: Arc<rustls::ClientConfig>, client: usize) {
    let mut ws = ws_connect(gw, cfg, "/");
    let calls = [
        ("rpc_methods", "[]"),
        ("chain_getBlockHash", "[0]"),
        ("state_getRuntimeVersion", "[]"),
        ("system_chain", "[]"),
        ("system_properties", "[]"),
        ("state_getMetadata", "[]"),
    ];
    for (i, (method, params)) in calls.iter().enumerate() {
        let id = format!("\"c{client}-{i}\"");
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#
        )))
        .unwrap();
        let answer = ws.read().unwrap().into_text().unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["id"].to_string(), id, "{answer}");
        assert!(
            v["result"].is_string() || v["result"].is_object(),
            "{answer}"
        );
        if *method == "state_getMetadata" {
            // Asked for the latest: answered at the finalized block.
            assert!(
                v["result"].as_str().unwrap().starts_with("meta@0x"),
                "{answer}"
            );
        }
    }
    let _ = ws.close(None);
}

#[test]
fn many_clients_cost_the_node_about_what_one_does() {
    let pki = TestPki::new();
    let chain = FakeChain::new(100);
    chain
        .metadata_bytes
        .store(300_000, std::sync::atomic::Ordering::Relaxed);
    let up = Upstream::start(Behaviour::Substrate(chain.clone()));
    let gw = Arc::new(gateway(&pki, &chain, &up, ""));

    start_up(&gw, pki.client_config(), 0);
    let one = chain.total_calls();
    assert!(one > 0 && one <= 6, "one client: {one} calls");
    let clients: Vec<_> = (1..=20)
        .map(|c| {
            let (gw, cfg) = (gw.clone(), pki.client_config());
            std::thread::spawn(move || start_up(&gw, cfg, c))
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let twenty = chain.total_calls() - one;
    eprintln!(
        "node calls: one client {one}, 20 more clients {twenty}: {:?}",
        chain.calls.lock().unwrap()
    );
    // At most once more per core (each core keeps its own cache).
    assert!(
        twenty <= one,
        "20 more clients: {twenty} calls (one client: {one})"
    );
    assert!(
        chain.calls_of("state_getMetadata") <= 2,
        "metadata once per block hash per core: {:?}",
        chain.calls.lock().unwrap()
    );
    let metrics = metrics(&gw, &pki);
    assert!(
        metrics.contains(r#"ringway_cache_hits_total{chain="default"} "#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"ringway_calls_total{chain="default",method="state_getMetadata",outcome="cached"}"#
        ),
        "{metrics}"
    );
}

fn metrics(gw: &Gateway, pki: &TestPki) -> String {
    https_get(gw.addr, pki.client_config(), "/metrics").2
}

/// One session's call, answered.
fn call(
    ws: &mut tungstenite::WebSocket<TlsStream>,
    id: u64,
    method: &str,
    params: &str,
) -> serde_json::Value {
    ws.send(Message::Text(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#
    )))
    .unwrap();
    let answer = ws.read().unwrap().into_text().unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["id"], id, "{answer}");
    v
}

#[test]
fn what_could_change_is_asked_again() {
    let pki = TestPki::new();
    let chain = FakeChain::new(100);
    let up = Upstream::start(Behaviour::Substrate(chain.clone()));
    let gw = gateway(&pki, &chain, &up, "");
    let mut ws = ws_connect(&gw, pki.client_config(), "/");

    // Block 98 is finalized, 99 is not: its hash may change.
    for _ in 0..3 {
        call(&mut ws, 1, "chain_getBlockHash", "[98]");
        call(&mut ws, 2, "chain_getBlockHash", "[99]");
        call(&mut ws, 3, "chain_getHeader", "[]");
        let e = call(&mut ws, 4, "state_getMetadata", r#"["0xdead"]"#);
        assert!(e["error"].is_object(), "{e}");
    }
    assert_eq!(
        chain.calls_of("chain_getBlockHash"),
        4,
        "98 once, 99 three times"
    );
    assert_eq!(
        chain.calls_of("chain_getHeader"),
        3,
        "the best header each time"
    );
    assert_eq!(
        chain.calls_of("state_getMetadata"),
        3,
        "errors are not kept"
    );

    // With the cache off, everything reaches the node.
    drop(ws);
    drop(gw);
    let chain = FakeChain::new(100);
    let up = Upstream::start(Behaviour::Substrate(chain.clone()));
    let gw = gateway(&pki, &chain, &up, "[cache]\nenabled = false");
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for _ in 0..3 {
        call(&mut ws, 1, "system_chain", "[]");
    }
    assert_eq!(chain.calls_of("system_chain"), 3);
}

#[test]
fn identical_requests_in_flight_reach_the_node_once() {
    let pki = TestPki::new();
    let chain = FakeChain::new(100);
    let up = Upstream::start(Behaviour::Substrate(chain.clone()));
    let gw = Arc::new(gateway(&pki, &chain, &up, ""));
    chain
        .delay_ms
        .store(300, std::sync::atomic::Ordering::Relaxed);
    let hash = format!("\"0x{:064x}\"", 50);
    let clients: Vec<_> = (0..12)
        .map(|c| {
            let (gw, cfg, hash) = (gw.clone(), pki.client_config(), hash.clone());
            std::thread::spawn(move || {
                let mut ws = ws_connect(&gw, cfg, "/");
                let v = call(&mut ws, 100 + c, "state_getMetadata", &format!("[{hash}]"));
                assert!(v["result"].as_str().unwrap().starts_with("meta@0x"));
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        chain.calls_of("state_getMetadata") <= 2,
        "one per core: {}",
        chain.calls_of("state_getMetadata")
    );
}

#[test]
fn pinned_sessions_are_answered_from_the_cache_too() {
    let pki = TestPki::new();
    let chain = FakeChain::new(100);
    let up = Upstream::start(Behaviour::Substrate(chain.clone()));
    let gw = Arc::new(gateway_in(&pki, &chain, &up, "", &[]));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (gw, cfg) = (gw.clone(), pki.client_config());
            std::thread::spawn(move || {
                let mut ws = ws_connect(&gw, cfg, "/");
                for i in 0..3 {
                    let v = call(&mut ws, c * 10 + i, "system_chain", "[]");
                    assert_eq!(v["result"], "Fake");
                    let v = call(&mut ws, c * 10 + i + 5, "state_getMetadata", "[]");
                    assert!(v["result"].as_str().unwrap().starts_with("meta@0x"));
                }
                // What the cache does not answer goes the pinned way.
                let v = call(&mut ws, 99, "chain_getHeader", "[]");
                assert!(v["result"].is_object());
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        chain.calls_of("system_chain") <= 2,
        "{:?}",
        chain.calls.lock().unwrap()
    );
    assert!(chain.calls_of("state_getMetadata") <= 2);
    assert_eq!(chain.calls_of("chain_getHeader"), 4);
}

#[test]
fn a_node_behind_the_finalized_block_still_answers_latest_metadata() {
    // Two pruned nodes: `a` at 100 (98 finalized) and `b` four blocks
    // behind (within max_lag). The cache fills the latest finalized hash,
    // a's 98, into `state_getMetadata`; b has not imported that block.
    let pki = TestPki::new();
    for mode in [&["--shared"][..], &[]] {
        let a = FakeChain::node(100, u64::MAX, "a");
        let b = FakeChain::node(96, u64::MAX, "b");
        let ua = Upstream::start(Behaviour::Substrate(a.clone()));
        let ub = Upstream::start(Behaviour::Substrate(b.clone()));
        let cfg = write_config(
            &pki,
            "lagging.toml",
            &format!(
                "[health]\ninterval_ms = 100\n[[node]]\nurl = \"{}\"\n[[node]]\nurl = \"{}\"\n",
                ua.url(),
                ub.url()
            ),
        );
        let args = [&["--config", cfg.to_str().unwrap()][..], mode].concat();
        let gw = Gateway::start(&pki, &[], &args);
        wait_for(TIMEOUT, "both nodes up, the finalized block known", || {
            let (status, _, body) = https_get(gw.addr, pki.client_config(), "/health");
            status == 200
                && body.contains("\"head\":100")
                && body.contains("\"head\":96")
                && !body.contains("\"up\":false")
        });
        std::thread::sleep(Duration::from_millis(300));
        // A session on each node (which one a session is on, its storage
        // answer says).
        let on = |label: &str| {
            for _ in 0..40 {
                let mut ws = ws_connect(&gw, pki.client_config(), "/");
                let v = call(&mut ws, 1, "state_getStorage", r#"["0x00"]"#);
                if v["result"].as_str().unwrap().starts_with(label) {
                    return ws;
                }
            }
            panic!("no session on node {label}");
        };
        let (mut on_b, mut on_a) = (on("b@"), on("a@"));

        for i in 0..2 {
            let v = call(&mut on_b, 10 + i, "state_getMetadata", "[]");
            assert!(
                v["result"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("meta@best")),
                "{mode:?}: b answers as the client asked: {v}"
            );
        }
        assert_eq!(
            b.calls_of("state_getMetadata"),
            4,
            "{mode:?}: at the filled-in hash (unknown to b), then as asked, twice: \
             b's answer at its best block is not kept"
        );
        let v = call(&mut on_a, 20, "state_getMetadata", "[]");
        assert!(
            v["result"]
                .as_str()
                .is_some_and(|r| r.starts_with("meta@0x")),
            "{mode:?}: a's answer is at the finalized hash: {v}"
        );
    }
}

/// Guards the cache over HTTP: 50 identical reads of a finalized block
/// over HTTP reached the node 50 times, and 20 at once 20 times (HTTP had
/// no cache and no in-flight joins: most EVM backends talk HTTP).
#[test]
fn identical_finalized_reads_over_http_cost_the_node_one_call_even_at_once() {
    let pki = TestPki::new();
    let chain = FakeChain::new(1000);
    let up = Upstream::start(Behaviour::Substrate(chain.clone()));
    let gw = gateway_in(&pki, &chain, &up, "", &[]);
    let read = |id: usize, n: u64| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"chain_getBlockHash","params":[{n}]}}"#)
    };
    for id in 0..50 {
        let (status, body) = post_json(gw.addr, pki.client_config(), &read(id, 5));
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&format!("\"0x{:064x}\"", 5)) && body.contains(&format!(r#""id":{id}"#)),
            "{body}"
        );
    }
    // One call per core at most: each of the two workers keeps its own.
    let first = chain.http_calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&first), "{first} calls");
    // 20 at once, while the node takes its time: they join the first.
    chain
        .http_delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let gw = Arc::new(gw);
    let threads: Vec<_> = (0..20)
        .map(|id| {
            let (gw, cfg, body) = (gw.clone(), pki.client_config(), read(100 + id, 6));
            std::thread::spawn(move || post_json(gw.addr, cfg, &body))
        })
        .collect();
    for (id, t) in threads.into_iter().enumerate() {
        let (status, body) = t.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!(r#""id":{}"#, 100 + id)), "{body}");
    }
    let more = chain.http_calls.load(std::sync::atomic::Ordering::SeqCst) - first;
    assert!((1..=2).contains(&more), "{more} calls for 20 at once");
}
