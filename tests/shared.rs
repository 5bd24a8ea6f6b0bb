//! Shared node connections (`--shared`): the real gateway, a JSON-RPC node
//! with subscriptions ([`common::PubsubNode`]), real TLS clients. Sessions share one node connection per core; ids, batches and
//! subscriptions must still reach the right client.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

fn text(m: Message) -> String {
    match m {
        Message::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

fn gateway(pki: &TestPki, node: &PubsubNode) -> Gateway {
    gateway_with(pki, node, "")
}

/// Shared mode on one worker (one node connection), no health probes, and
/// `config`: TOML that continues the `[pool]` table (or opens others).
fn gateway_with(pki: &TestPki, node: &PubsubNode, config: &str) -> Gateway {
    let cfg = write_config(
        pki,
        "shared.toml",
        &format!("[pool]\nshared = true\n{config}"),
    );
    Gateway::start(
        pki,
        std::slice::from_ref(&node.url),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--workers",
            "1",
            "--health-probe",
            "off",
        ],
    )
}

/// Read messages until one satisfies `f`, skipping notifications.
fn read_until(ws: &mut tungstenite::WebSocket<TlsStream>, f: impl Fn(&str) -> bool) -> String {
    loop {
        let t = text(ws.read().unwrap());
        if f(&t) {
            return t;
        }
    }
}

#[test]
fn sessions_share_one_node_connection_and_keep_their_ids() {
    let pki = TestPki::new();
    let node = PubsubNode::start();
    let gw = gateway(&pki, &node);
    let mut clients: Vec<_> = (0..3)
        .map(|_| ws_connect(&gw, pki.client_config(), "/"))
        .collect();
    // The same ids from every client, interleaved, strings and numbers.
    for round in 0..20 {
        for (c, ws) in clients.iter_mut().enumerate() {
            let id = if round % 2 == 0 {
                "1".to_string()
            } else {
                "\"a\"".to_string()
            };
            ws.send(Message::Text(format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"m{c}","params":[{round}]}}"#
            )))
            .unwrap();
        }
        for (c, ws) in clients.iter_mut().enumerate() {
            let id = if round % 2 == 0 { "1" } else { "\"a\"" };
            let a = text(ws.read().unwrap());
            assert_eq!(
                a,
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"method":"m{c}","params":[{round}]}}}}"#
                )
            );
        }
    }
    assert_eq!(
        node.connections.load(Ordering::SeqCst),
        1,
        "one node connection for the core"
    );

    // A batch: one array back, the client's ids, notifications unanswered;
    // an element the gateway refuses is answered apart.
    let ws = &mut clients[0];
    ws.send(Message::Text(
        r#"[{"jsonrpc":"2.0","id":7,"method":"x"},{"jsonrpc":"2.0","method":"quiet"},{"jsonrpc":"2.0","id":"q","method":"y"}]"#.into(),
    ))
    .unwrap();
    let a = text(ws.read().unwrap());
    assert!(
        a.starts_with('[') && a.contains(r#""id":7,"#) && a.contains(r#""id":"q","#),
        "{a}"
    );
    assert_eq!(ringway::jsonrpc::elements(a.as_bytes()).count(), 2, "{a}");

    // Not JSON: a parse error with id null; the session goes on.
    ws.send(Message::Text("{not json".into())).unwrap();
    assert!(text(ws.read().unwrap()).contains("-32700"));
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":8,"method":"z"}"#.into(),
    ))
    .unwrap();
    assert!(text(ws.read().unwrap()).contains(r#""id":8,"#));

    // A binary message: close 1003 (unsupported data).
    ws.send(Message::Binary(vec![1, 2, 3])).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1003);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

#[test]
fn subscriptions_reach_their_own_session_and_end_with_it() {
    let pki = TestPki::new();
    let node = PubsubNode::start();
    let gw = gateway(&pki, &node);
    let mut a = ws_connect(&gw, pki.client_config(), "/");
    let mut b = ws_connect(&gw, pki.client_config(), "/");
    a.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":1,"method":"test_subscribe","params":[]}"#.into(),
    ))
    .unwrap();
    let sub_a = text(a.read().unwrap());
    assert!(sub_a.contains(r#""id":1,"#), "{sub_a}");
    let sub_a = result_string(&sub_a);
    b.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":1,"method":"test_subscribe","params":[]}"#.into(),
    ))
    .unwrap();
    let sub_b = result_string(&text(b.read().unwrap()));
    assert_ne!(sub_a, sub_b);

    // Each session sees only its own notifications.
    for _ in 0..5 {
        let n = text(a.read().unwrap());
        assert!(n.contains(&format!(r#""subscription":"{sub_a}""#)), "{n}");
        let n = text(b.read().unwrap());
        assert!(n.contains(&format!(r#""subscription":"{sub_b}""#)), "{n}");
    }

    // B may not end A's subscription.
    b.send(Message::Text(format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"test_unsubscribe","params":["{sub_a}"]}}"#
    )))
    .unwrap();
    let refused = read_until(&mut b, |t| t.contains(r#""id":2"#));
    assert!(refused.contains("-32602"), "{refused}");
    // B ends its own.
    b.send(Message::Text(format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"test_unsubscribe","params":["{sub_b}"]}}"#
    )))
    .unwrap();
    let done = read_until(&mut b, |t| t.contains(r#""id":3"#));
    assert!(done.contains(r#""result":true"#), "{done}");

    // A leaves without unsubscribing: the gateway unsubscribes for it.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (m, p) = node
            .calls
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the gateway unsubscribes for a session that ended");
        if m == "test_unsubscribe" && p.contains(&sub_a) {
            break;
        }
    }
    // B still works.
    b.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":4,"method":"ok"}"#.into(),
    ))
    .unwrap();
    assert!(read_until(&mut b, |t| t.contains(r#""id":4"#)).contains("result"));
    assert_eq!(node.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn a_lost_node_connection_answers_what_waited_and_closes_sessions_1012() {
    let pki = TestPki::new();
    let node = PubsubNode::start();
    let gw = gateway(&pki, &node);
    let mut a = ws_connect(&gw, pki.client_config(), "/");
    let mut b = ws_connect(&gw, pki.client_config(), "/");
    b.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":"w","method":"slow_never"}"#.into(),
    ))
    .unwrap();
    // B's request is answered first (the node answers in order)...
    assert!(text(b.read().unwrap()).contains(r#""id":"w""#));
    // ...then A's request kills the node connection: A gets an error with its id.
    a.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":42,"method":"test_die"}"#.into(),
    ))
    .unwrap();
    let err = text(a.read().unwrap());
    assert!(
        err.contains("-32603") && err.contains(r#""id":42"#),
        "{err}"
    );
    for ws in [&mut a, &mut b] {
        loop {
            match ws.read() {
                Ok(Message::Close(Some(f))) => {
                    assert_eq!(u16::from(f.code), 1012);
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("expected close 1012, got {e}"),
            }
        }
    }
    // A new session gets a new node connection.
    let mut c = ws_connect(&gw, pki.client_config(), "/");
    c.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":1,"method":"again"}"#.into(),
    ))
    .unwrap();
    assert!(text(c.read().unwrap()).contains(r#""id":1,"#));
    assert_eq!(node.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn a_connection_full_of_subscriptions_makes_room_on_another() {
    let pki = TestPki::new();
    let node = PubsubNode::start();
    let gw = gateway_with(&pki, &node, "shared_max_subscriptions = 1\n");
    let subscribe = r#"{"jsonrpc":"2.0","id":1,"method":"test_subscribe","params":[]}"#;
    let mut a = ws_connect(&gw, pki.client_config(), "/");
    a.send(Message::Text(subscribe.into())).unwrap();
    assert!(text(a.read().unwrap()).contains(r#""result":"sub"#));
    // The first connection carries its one subscription: B gets another.
    let mut b = ws_connect(&gw, pki.client_config(), "/");
    b.send(Message::Text(subscribe.into())).unwrap();
    assert!(read_until(&mut b, |t| t.contains(r#""id":1"#)).contains(r#""result":"sub"#));
    assert_eq!(node.connections.load(Ordering::SeqCst), 2);
    for ws in [&mut a, &mut b] {
        assert!(text(ws.read().unwrap()).contains("test_event"));
    }
}

#[test]
fn the_polkadot_js_provider_works_through_the_gateway_unchanged() {
    // @polkadot/rpc-provider from target/js (`.ci/run` installs it with npm).
    let pki = TestPki::new();
    let provider = JsScript::new("polkadot.mjs", &pki);
    let node = PubsubNode::start();
    for shared in [false, true] {
        let mut flags = vec!["--workers", "1", "--health-probe", "off"];
        if shared {
            flags.push("--shared");
        }
        let gw = Gateway::start(&pki, std::slice::from_ref(&node.url), &flags);
        let (ok, stdout, stderr) = provider.run(&[&gw.url("/")]);
        assert!(
            ok && stdout.contains("3 events, unsubscribed true"),
            "shared {shared}: {stdout}\n{stderr}"
        );
    }
}

#[test]
fn admission_limits_apply_to_shared_sessions() {
    let pki = TestPki::new();
    let node = PubsubNode::start();
    let gw = gateway_with(
        &pki,
        &node,
        "[admission]\nmax_subscriptions_per_connection = 2\nrate = 1\nburst = 4\n",
    );
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    // Two subscriptions, then the third is refused with its id.
    for id in 1..=3 {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"test_subscribe","params":[]}}"#
        )))
        .unwrap();
        let a = read_until(&mut ws, |t| t.contains(&format!(r#""id":{id}"#)));
        if id < 3 {
            assert!(a.contains(r#""result":"sub"#), "{a}");
        } else {
            assert!(
                a.contains("-32005") && a.contains("max_subscriptions_per_connection"),
                "{a}"
            );
        }
    }
    // The burst of 4 is nearly spent (3 calls so far) and 1 call/s refills it:
    // of the next five, some are rate limited, each answered with its own id.
    for id in 10..15 {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"m"}}"#
        )))
        .unwrap();
    }
    // Answers come in any order (a refusal is immediate); each has its id.
    let mut answers = std::collections::HashMap::new();
    while answers.len() < 5 {
        let t = text(ws.read().unwrap());
        for id in 10..15 {
            if t.contains(&format!(r#""id":{id}"#)) {
                answers.insert(id, t.clone());
            }
        }
    }
    let limited = answers.values().filter(|a| a.contains("-32005")).count();
    assert!(limited >= 1, "rate limit not applied: {answers:?}");
}

/// The block number of a `chain_newHead` notification.
fn head_number(note: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(note).unwrap();
    let hex = v["params"]["result"]["number"].as_str().unwrap();
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap()
}

/// Subscribe to new heads (by the alias Polkadot-JS uses) and return the id.
fn subscribe_heads(ws: &mut tungstenite::WebSocket<TlsStream>, id: u64) -> String {
    ws.send(Message::Text(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"chain_subscribeNewHead","params":[]}}"#
    )))
    .unwrap();
    let answer = read_until(ws, |t| t.contains(&format!(r#""id":{id}"#)));
    result_string(&answer)
}

#[test]
fn many_sessions_share_one_node_subscription_to_new_heads() {
    let pki = TestPki::new();
    let node = PubsubNode::start();
    let gw = gateway(&pki, &node);
    let mut clients: Vec<_> = (0..8)
        .map(|_| ws_connect(&gw, pki.client_config(), "/"))
        .collect();
    let ids: Vec<String> = clients
        .iter_mut()
        .enumerate()
        .map(|(i, ws)| subscribe_heads(ws, 10 + i as u64))
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "each session has its own id: {ids:?}"
    );

    // Every session gets every head, in order, under its own id.
    let mut last = vec![0u64; clients.len()];
    for round in 0..5 {
        for (i, ws) in clients.iter_mut().enumerate() {
            let note = read_until(ws, |t| t.contains("chain_newHead"));
            assert!(
                note.contains(&format!(r#""subscription":"{}""#, ids[i])),
                "{note}"
            );
            let n = head_number(&note);
            if round > 0 {
                assert_eq!(n, last[i] + 1, "no gap, no repeat: {note}");
            }
            last[i] = n;
        }
    }
    // A late joiner gets the current head at once, then the next ones.
    let mut late = ws_connect(&gw, pki.client_config(), "/");
    let late_id = subscribe_heads(&mut late, 99);
    let first = read_until(&mut late, |t| t.contains("chain_newHead"));
    assert!(first.contains(&late_id), "{first}");
    let next = read_until(&mut late, |t| t.contains("chain_newHead"));
    assert_eq!(head_number(&next), head_number(&first) + 1);

    // One node subscription for all of them (and the metrics say so).
    let metrics = https_get(gw.addr, pki.client_config(), "/metrics").2;
    assert!(
        metrics.contains("\nringway_merged_subscriptions 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nringway_merged_subscribers 9\n"),
        "{metrics}"
    );
    let subscribes = node
        .calls
        .try_iter()
        .filter(|(m, _)| m.starts_with("chain_subscribe"))
        .count();
    assert_eq!(subscribes, 1);

    // Unsubscribing ends a session's stream only; the last one ends the node's.
    clients[0]
        .send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":5,"method":"chain_unsubscribeNewHead","params":["{}"]}}"#,
            ids[0]
        )))
        .unwrap();
    let done = read_until(&mut clients[0], |t| t.contains(r#""id":5"#));
    assert!(done.contains(r#""result":true"#), "{done}");
    let note = read_until(&mut clients[1], |t| t.contains("chain_newHead"));
    assert!(note.contains(&ids[1]));
    drop(late);
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (m, _) = node
            .calls
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the node subscription ends with its last session");
        if m == "chain_unsubscribeNewHeads" {
            break;
        }
    }
}

#[test]
fn merged_subscriptions_move_to_another_node_with_no_gap_and_no_repeat() {
    // Two nodes of one chain; b sends its first head 150 ms late, so the
    // sessions that move to it face a gap of several blocks.
    let (a, b) = PubsubNode::pair(Duration::from_millis(150));
    let pki = TestPki::new();
    let cfg = write_config(&pki, "failover.toml", "[pool]\nshared = true\n");
    let gw = Gateway::start(
        &pki,
        &[a.url.clone(), b.url.clone()],
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--workers",
            "1",
            "--health-probe",
            "off",
        ],
    );
    let whoami = |ws: &mut tungstenite::WebSocket<TlsStream>| -> String {
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":"who","method":"whoami"}"#.into(),
        ))
        .unwrap();
        result_string(&read_until(ws, |t| t.contains(r#""id":"who""#)))
    };
    // Sessions on a subscribe to new heads; those on b do not (so b has
    // no such subscription when a's sessions arrive).
    let mut clients = Vec::new();
    let mut others = Vec::new();
    for i in 0..6 {
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        let node = whoami(&mut ws);
        if node == "a" {
            let sub = subscribe_heads(&mut ws, 10 + i);
            clients.push((ws, node, sub, 0u64));
        } else {
            others.push(ws);
        }
    }
    assert!(clients.len() >= 2, "sessions on node a: {}", clients.len());
    // The first also follows the chain (chainHead_v1_follow): a stream
    // that cannot move.
    clients[0]
        .0
        .send(Message::Text(
            r#"{"jsonrpc":"2.0","id":"f","method":"chainHead_v1_follow","params":[false]}"#.into(),
        ))
        .unwrap();
    let follow = result_string(&read_until(&mut clients[0].0, |t| {
        t.contains(r#""id":"f""#)
    }));
    let mut stopped = false;
    // Every session follows the heads.
    for c in clients.iter_mut() {
        for _ in 0..3 {
            let note = read_until(&mut c.0, |t| t.contains("chain_newHead"));
            assert!(note.contains(&c.2), "{note}");
            let n = head_number(&note);
            assert!(c.3 == 0 || n == c.3 + 1, "{} then {n}", c.3);
            c.3 = n;
        }
    }
    // Node a's connection is lost (a session on it asks it to die).
    let on_a = clients.iter().position(|c| c.1 == "a").unwrap();
    clients[on_a]
        .0
        .send(Message::Text(
            r#"{"jsonrpc":"2.0","id":"x","method":"test_die"}"#.into(),
        ))
        .unwrap();
    // Everyone keeps its subscription id and keeps receiving: every head
    // after the last one it had, none twice, none skipped.
    for c in clients.iter_mut() {
        let until = c.3 + 20;
        while c.3 < until {
            let t = text(c.0.read().unwrap());
            if t.contains(r#""id":"x""#) {
                assert!(t.contains("error"), "the request in flight fails: {t}");
                continue;
            }
            if t.contains(&format!(r#""subscription":"{follow}""#)) {
                stopped |=
                    t.contains("chainHead_v1_followEvent") && t.contains(r#""event":"stop""#);
                continue;
            }
            if !t.contains("chain_newHead") {
                continue;
            }
            assert!(t.contains(&c.2), "same subscription id: {t}");
            let n = head_number(&t);
            assert_eq!(n, c.3 + 1, "no gap, no repeat ({} was on {})", c.2, c.1);
            c.3 = n;
        }
    }
    assert!(stopped, "the follow subscription ends with a stop event");
    // Those that were on a are now on b, and still make calls; b's own
    // sessions went on undisturbed.
    for c in clients.iter_mut() {
        assert_eq!(whoami(&mut c.0), "b");
    }
    for ws in others.iter_mut() {
        assert_eq!(whoami(ws), "b");
    }
    // One subscription on b serves them all; the gap was filled from b.
    let calls: Vec<(String, String)> = b.calls.try_iter().collect();
    let count = |m: &str| calls.iter().filter(|(c, _)| c == m).count();
    assert_eq!(
        count("chain_subscribeNewHeads"),
        1,
        "one node subscription on b: {calls:?}"
    );
    assert!(
        count("chain_getHeader") > 0,
        "the gap was filled: {calls:?}"
    );
    drop(a);
}

#[test]
fn a_late_joiner_to_a_storage_subscription_gets_every_keys_last_value() {
    let pki = TestPki::new();
    let node = PubsubNode::start();
    let gw = gateway(&pki, &node);
    let subscribe = |ws: &mut tungstenite::WebSocket<TlsStream>, id: u64| {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"state_subscribeStorage","params":[["0xaa","0xbb"]]}}"#
        )))
        .unwrap();
        result_string(&read_until(ws, |t| t.contains(&format!(r#""id":{id}"#))))
    };
    let changes = |note: &str| -> Vec<(String, String)> {
        let v: serde_json::Value = serde_json::from_str(note).unwrap();
        v["params"]["result"]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_str().unwrap().into(), c[1].as_str().unwrap().into()))
            .collect()
    };
    let mut a = ws_connect(&gw, pki.client_config(), "/");
    let sub_a = subscribe(&mut a, 1);
    // The first notification has every key; the next ones only what changed.
    let first = read_until(&mut a, |t| t.contains("state_storage"));
    assert!(first.contains(&sub_a));
    assert_eq!(changes(&first).len(), 2, "{first}");
    let mut last_aa = String::new();
    for _ in 0..3 {
        let next = read_until(&mut a, |t| t.contains("state_storage"));
        let c = changes(&next);
        assert_eq!(c.len(), 1, "{next}");
        last_aa = c[0].1.clone();
    }
    let bb = changes(&first)
        .into_iter()
        .find(|(k, _)| k == "0xbb")
        .unwrap()
        .1;
    // A late joiner first gets both keys, each with its last value.
    let mut b = ws_connect(&gw, pki.client_config(), "/");
    let sub_b = subscribe(&mut b, 2);
    let replay = read_until(&mut b, |t| t.contains("state_storage"));
    assert!(replay.contains(&sub_b), "{replay}");
    let got = changes(&replay);
    assert!(got.contains(&("0xbb".into(), bb)), "{replay}");
    let aa = got.iter().find(|(k, _)| k == "0xaa").unwrap();
    assert!(aa.1 >= last_aa, "{replay} (a saw {last_aa})");
    let subscribes = node
        .calls
        .try_iter()
        .filter(|(m, _)| m == "state_subscribeStorage")
        .count();
    assert_eq!(subscribes, 1, "one node subscription");
}

/// Guards merged head streams: a head at or below the height a session
/// had was dropped as a repeat, so a reorganised best head at the tip (the
/// same height, another block) never reached clients. Repeats are told by
/// the block now, not by its height.
#[test]
fn a_reorganised_best_head_reaches_every_session() {
    let pki = TestPki::new();
    let node = PubsubNode::start();
    let gw = gateway(&pki, &node);
    let mut sessions: Vec<_> = (0..2)
        .map(|_| ws_connect(&gw, pki.client_config(), "/"))
        .collect();
    for (i, ws) in sessions.iter_mut().enumerate() {
        subscribe_heads(ws, i as u64);
    }
    for ws in &mut sessions {
        read_until(ws, |t| t.contains("chain_newHead"));
    }
    node.reorg.store(true, std::sync::atomic::Ordering::SeqCst);
    for ws in &mut sessions {
        // Within the next heads (one every 20 ms): dropped, it never comes.
        let reorged = (0..100)
            .map(|_| text(ws.read().unwrap()))
            .find(|t| t.contains(r#""parentHash":"0x01""#))
            .expect("the reorganised head");
        let n = head_number(&reorged);
        // The stream goes on after it.
        let next = read_until(ws, |t| t.contains("chain_newHead"));
        assert_eq!(head_number(&next), n + 1, "{next}");
    }
}
