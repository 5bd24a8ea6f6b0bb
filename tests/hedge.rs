//! Hedged reads over HTTP (issue 24): a read a node is late with goes to a
//! second node too and the first answer wins; writes are never sent twice;
//! a budget keeps a slow pool from doubling its own load.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Two nodes of one chain; `extra` continues the `[pool]` table. Probes only
/// test the upgrade: a slow node stays in service, as a hung one does until
/// its probes notice.
fn pool_of_two(
    pki: &TestPki,
    a: &Arc<FakeChain>,
    b: &Arc<FakeChain>,
    extra: &str,
) -> (Gateway, Vec<Upstream>) {
    let nodes = vec![
        Upstream::start(Behaviour::Substrate(a.clone())),
        Upstream::start(Behaviour::Substrate(b.clone())),
    ];
    let cfg = write_config(
        pki,
        "hedge.toml",
        &format!("[health]\nprobe = \"connect\"\n[pool]\n{extra}"),
    );
    let urls: Vec<String> = nodes.iter().map(Upstream::url).collect();
    (
        Gateway::start(pki, &urls, &["--config", cfg.to_str().unwrap()]),
        nodes,
    )
}

/// The sum of a counter family's samples in `/metrics`.
fn total(gw: &Gateway, pki: &TestPki, family: &str) -> u64 {
    let metrics = https_get(gw.addr, pki.client_config(), "/metrics").2;
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The answer to `read(id)` is a node's, within a second.
fn answered_within_a_second(id: u64, took: Duration, answer: &str) {
    assert!(
        answer.contains(&format!(r#""id":{id}"#)) && answer.contains("peers"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(1), "read {id} took {took:?}");
}

/// Four WebSocket sessions through the gateway.
fn four_sessions(gw: &Gateway, pki: &TestPki) -> Vec<tungstenite::WebSocket<TlsStream>> {
    (0..4)
        .map(|_| ws_connect(gw, pki.client_config(), "/"))
        .collect()
}

/// The next text message of a session.
fn text(ws: &mut tungstenite::WebSocket<TlsStream>) -> String {
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            return t.to_string();
        }
    }
}

fn read(id: u64) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"system_health","params":[]}}"#)
}

#[test]
fn a_read_a_node_is_late_with_is_answered_by_another() {
    let pki = TestPki::new();
    let (slow, fast) = (FakeChain::new(100), FakeChain::new(100));
    slow.http_delay_ms.store(5_000, SeqCst);
    let (gw, _nodes) = pool_of_two(
        &pki,
        &slow,
        &fast,
        "hedge_min_ms = 50\nrequest_timeout_ms = 20000\n",
    );
    for id in 0..12 {
        let start = Instant::now();
        let (status, body) = post_json(gw.addr, pki.client_config(), &read(id));
        assert_eq!(status, 200, "{body}");
        answered_within_a_second(id, start.elapsed(), &body);
    }
    assert!(
        slow.http_calls.load(SeqCst) > 0,
        "some reads went to the slow node first"
    );
    let won = total(&gw, &pki, "ringway_hedges_won_total");
    assert_eq!(won as usize, slow.http_calls.load(SeqCst));
}

#[test]
fn a_write_is_never_sent_twice_and_gets_its_error_at_the_timeout() {
    let pki = TestPki::new();
    let (slow, fast) = (FakeChain::new(100), FakeChain::new(100));
    slow.http_delay_ms.store(5_000, SeqCst);
    let (gw, _nodes) = pool_of_two(
        &pki,
        &slow,
        &fast,
        "hedge_min_ms = 50\nrequest_timeout_ms = 1000\n",
    );
    let mut timed_out = 0;
    for id in 0..8 {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"author_submitExtrinsic","params":["0x00"]}}"#
        );
        let (status, answer) = post_json(gw.addr, pki.client_config(), &body);
        assert!(answer.contains(&format!(r#""id":{id}"#)), "{answer}");
        if status == 504 {
            timed_out += 1;
        }
    }
    let calls = slow.http_calls.load(SeqCst) + fast.http_calls.load(SeqCst);
    assert_eq!(calls, 8, "each write reached one node once");
    assert_eq!(
        timed_out,
        slow.http_calls.load(SeqCst),
        "those on the slow node timed out"
    );
}

#[test]
fn the_hedge_budget_holds_when_every_node_is_slow() {
    let pki = TestPki::new();
    let (a, b) = (FakeChain::new(100), FakeChain::new(100));
    a.http_delay_ms.store(300, SeqCst);
    b.http_delay_ms.store(300, SeqCst);
    let (gw, _nodes) = pool_of_two(&pki, &a, &b, "hedge_min_ms = 20\n");
    let gw = Arc::new(gw);
    let threads: Vec<_> = (0..100)
        .map(|id| {
            let (gw, cfg) = (gw.clone(), pki.client_config());
            std::thread::spawn(move || post_json(gw.addr, cfg, &read(id)).0)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    // 100 reads; at most 10% hedged per worker, plus a burst of 10 each (2 workers).
    let calls = a.http_calls.load(SeqCst) + b.http_calls.load(SeqCst);
    assert!(
        (100..=140).contains(&calls),
        "{calls} requests reached the nodes"
    );
}

/// Over a shared WebSocket connection: a read its node is late with is
/// answered by the other node well within a second; a write is sent once.
#[test]
fn a_read_late_on_a_shared_connection_is_answered_by_another_node_and_a_write_is_sent_once() {
    use tungstenite::Message;
    let pki = TestPki::new();
    let (slow, fast) = (FakeChain::new(100), FakeChain::new(100));
    slow.delay_ms.store(3_000, SeqCst);
    let (gw, _nodes) = pool_of_two(
        &pki,
        &slow,
        &fast,
        "shared = true\nhedge_min_ms = 50\nrequest_timeout_ms = 20000\n",
    );
    // Four sessions: each node is the home of two.
    let mut sessions = four_sessions(&gw, &pki);
    for (id, ws) in sessions.iter_mut().enumerate() {
        let start = Instant::now();
        ws.send(Message::text(read(id as u64))).unwrap();
        let answer = text(ws);
        answered_within_a_second(id as u64, start.elapsed(), &answer);
    }
    assert!(
        slow.calls_of("system_health") > 0,
        "some reads went to the slow node first"
    );
    // Each read at home on the slow node was answered by its copy (the
    // slow node reads its next message only after 3 s on each).
    let won = total(&gw, &pki, "ringway_hedges_won_total");
    let hedges = total(&gw, &pki, "ringway_hedges_total");
    assert!(won >= 1 && won == hedges, "{won} of {hedges} hedges won");
    let on_slow = won as usize;
    // A write from every session: those at home on the fast node reach it,
    // and nothing more reaches it well past the hedge delay.
    for (id, ws) in sessions.iter_mut().enumerate() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"author_submitExtrinsic","params":["0x00"]}}"#,
            100 + id
        );
        ws.send(Message::text(body)).unwrap();
    }
    let on_fast = 4 - on_slow;
    wait_for(TIMEOUT, "the writes at home on the fast node", || {
        fast.calls_of("author_submitExtrinsic") == on_fast
    });
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        fast.calls_of("author_submitExtrinsic"),
        on_fast,
        "a write sent twice"
    );
}

/// A node only briefly late on a shared connection (60 ms on every call,
/// sending nothing meanwhile: a busy or descheduled node) has its reads
/// answered by the other node, and is not taken for a hung one: it stays
/// in service and no request gets an error (a lost connection's).
#[test]
fn a_node_briefly_late_on_a_shared_connection_is_not_taken_out_by_its_hedges() {
    use tungstenite::Message;
    let pki = TestPki::new();
    let (slow, fast) = (FakeChain::new(100), FakeChain::new(100));
    slow.delay_ms.store(60, SeqCst);
    let (gw, _nodes) = pool_of_two(&pki, &slow, &fast, "shared = true\nhedge_min_ms = 20\n");
    let mut sessions = four_sessions(&gw, &pki);
    // Over two probe intervals: enough silent late reads to fall three
    // times over if each counted as a failed check.
    let start = Instant::now();
    let mut id = 0u64;
    while start.elapsed() < Duration::from_secs(5) {
        for ws in sessions.iter_mut() {
            id += 1;
            ws.send(Message::text(read(id))).unwrap();
            let answer = text(ws);
            assert!(answer.contains("peers"), "read {id}: {answer}");
        }
    }
    assert!(
        total(&gw, &pki, "ringway_hedges_won_total") >= 6,
        "the slow node's reads were hedged"
    );
    let health = https_get(gw.addr, pki.client_config(), "/health").2;
    assert!(!health.contains(r#""up":false"#), "{health}");
}

/// A pool of two whose `[health]` probes every 100 ms (a node marked down
/// shows within a second), with `pool` continuing the `[pool]` table.
fn probed_pool_of_two(
    pki: &TestPki,
    a: &Arc<FakeChain>,
    b: &Arc<FakeChain>,
    pool: &str,
) -> (Gateway, Vec<Upstream>) {
    let nodes = vec![
        Upstream::start(Behaviour::Substrate(a.clone())),
        Upstream::start(Behaviour::Substrate(b.clone())),
    ];
    let cfg = write_config(
        pki,
        "probed.toml",
        &format!("[health]\nprobe = \"connect\"\ninterval_ms = 100\n[pool]\n{pool}"),
    );
    let urls: Vec<String> = nodes.iter().map(Upstream::url).collect();
    (
        Gateway::start(pki, &urls, &["--config", cfg.to_str().unwrap()]),
        nodes,
    )
}

/// Probes run so far on every node, from `/health`.
fn probes(gw: &Gateway, pki: &TestPki) -> u64 {
    let body = https_get(gw.addr, pki.client_config(), "/health").2;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let nodes = v["nodes"].as_array().expect("nodes");
    nodes.iter().map(|n| n["probes"].as_u64().unwrap()).sum()
}

/// Guards health from evidence: over HTTP, every hedge the copy won counted
/// as a failed check of the first node, so a burst of reads that are slow on
/// one node (an `eth_call` looping to the gas cap) took a healthy node out
/// and closed the WebSocket sessions on it (1012).
#[test]
fn a_burst_of_slow_reads_over_http_leaves_every_node_up_and_every_session_open() {
    use tungstenite::Message;
    let pki = TestPki::new();
    let (slow, fast) = (FakeChain::new(100), FakeChain::new(100));
    slow.http_delay_ms.store(200, SeqCst);
    let (gw, _nodes) = probed_pool_of_two(&pki, &slow, &fast, "hedge_min_ms = 20\n");
    let mut sessions = four_sessions(&gw, &pki);
    let gw = Arc::new(gw);
    let probes_before = probes(&gw, &pki);
    // Rounds of 30 reads at once, over several probe intervals.
    for round in 0..4u64 {
        let threads: Vec<_> = (0..30)
            .map(|i| {
                let (gw, cfg) = (gw.clone(), pki.client_config());
                std::thread::spawn(move || post_json(gw.addr, cfg, &read(round * 100 + i)))
            })
            .collect();
        for t in threads {
            let (status, body) = t.join().unwrap();
            assert_eq!(status, 200, "{body}");
        }
    }
    assert!(
        slow.http_calls.load(SeqCst) > 0 && total(&gw, &pki, "ringway_hedges_won_total") >= 1,
        "reads went to the slow node first and were hedged"
    );
    // Probes ran since the burst: a node taken out would show now.
    wait_for(TIMEOUT, "more probes", || {
        probes(&gw, &pki) >= probes_before + 10
    });
    let health = https_get(gw.addr, pki.client_config(), "/health").2;
    assert!(!health.contains(r#""up":false"#), "{health}");
    for (id, ws) in sessions.iter_mut().enumerate() {
        ws.send(Message::text(read(9_000 + id as u64))).unwrap();
        assert!(text(ws).contains("peers"), "session {id} still served");
    }
}

/// Node-local cursors and every kind of write: never asked of a second node.
const NEVER_TWICE: &[&str] = &[
    "eth_getFilterChanges",
    "eth_getFilterLogs",
    "eth_sendRawTransactionConditional",
    "eth_sendRawTransactionSync",
    "eth_sendBundle",
    "eth_sendPrivateTransaction",
    "eth_sendUserOperation",
    "engine_newPayloadV3",
    "engine_forkchoiceUpdatedV3",
];

fn call_of(id: usize, method: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":["0x01"]}}"#)
}

/// Guards the hedging rule: what may be asked twice came from a deny-list
/// of writes, so `eth_getFilterChanges` (a cursor on one node) and writes
/// not on the list were sent to a second node when the first was late.
#[test]
fn filters_and_writes_off_the_safe_list_are_sent_once_over_http() {
    let pki = TestPki::new();
    let (slow, fast) = (FakeChain::new(100), FakeChain::new(100));
    slow.http_delay_ms.store(1_500, SeqCst);
    let (gw, _nodes) = pool_of_two(
        &pki,
        &slow,
        &fast,
        "hedge_min_ms = 20\nrequest_timeout_ms = 1000\n",
    );
    let mut sent = 0;
    for (i, m) in NEVER_TWICE.iter().enumerate() {
        for k in 0..3 {
            let id = i * 10 + k;
            let (_, answer) = post_json(gw.addr, pki.client_config(), &call_of(id, m));
            assert!(answer.contains(&format!(r#""id":{id}"#)), "{m}: {answer}");
            sent += 1;
        }
    }
    assert!(
        slow.http_calls.load(SeqCst) > 0,
        "some went to the slow node"
    );
    let calls = slow.http_calls.load(SeqCst) + fast.http_calls.load(SeqCst);
    assert_eq!(calls, sent, "each reached one node once");
    assert_eq!(total(&gw, &pki, "ringway_hedges_total"), 0);
}

/// The same rule on shared WebSocket connections.
#[test]
fn filters_and_writes_off_the_safe_list_are_sent_once_on_shared_connections() {
    use tungstenite::Message;
    let pki = TestPki::new();
    let (slow, fast) = (FakeChain::new(100), FakeChain::new(100));
    slow.delay_ms.store(150, SeqCst);
    let (gw, _nodes) = pool_of_two(
        &pki,
        &slow,
        &fast,
        "shared = true\nhedge_min_ms = 20\nrequest_timeout_ms = 20000\n",
    );
    let mut sessions = four_sessions(&gw, &pki);
    for (i, m) in NEVER_TWICE.iter().enumerate() {
        for (k, ws) in sessions.iter_mut().enumerate() {
            let id = i * 10 + k;
            ws.send(Message::text(call_of(id, m))).unwrap();
            assert!(text(ws).contains(&format!(r#""id":{id}"#)), "{m}");
        }
    }
    assert!(slow.total_calls() > 0, "some went to the slow node");
    assert_eq!(
        slow.total_calls() + fast.total_calls(),
        NEVER_TWICE.len() * 4,
        "each reached one node once"
    );
    assert_eq!(total(&gw, &pki, "ringway_hedges_total"), 0);
}
