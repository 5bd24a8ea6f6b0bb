//! `chainHead_v1_follow` merged: many client follows, one node follow per
//! core, against a mock node that enforces a Substrate node's limits
//! ([`common::HeadNode`]: 4 follows per connection, 512 pins, 16
//! operations per follow), in both session modes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<TlsStream>;

/// A client of the new JSON-RPC: its follow id, and what it was told.
struct Follower {
    ws: Ws,
    sub: String,
    /// Follow events, in order.
    events: Vec<Value>,
    /// Answers by id not read yet.
    answers: HashMap<String, Value>,
    next_id: u64,
    /// Events before it were looked at by [`Follower::until`].
    cursor: usize,
}

impl Follower {
    fn new(gw: &Gateway, pki: &TestPki, with_runtime: bool) -> Follower {
        let ws = ws_connect(gw, pki.client_config(), "/");
        let mut f = Follower {
            ws,
            sub: String::new(),
            events: Vec::new(),
            answers: HashMap::new(),
            next_id: 0,
            cursor: 0,
        };
        let a = f.call("chainHead_v1_follow", &format!("[{with_runtime}]"));
        f.sub = a["result"]
            .as_str()
            .unwrap_or_else(|| panic!("{a}"))
            .to_string();
        f
    }

    fn read_one(&mut self) {
        let m = match self.ws.read().expect("a message within the timeout") {
            Message::Text(t) => t,
            other => panic!("unexpected {other:?}"),
        };
        let v: Value = serde_json::from_str(&m).unwrap();
        if v.get("method").is_some() {
            // (A session's other follows' events are not this one's.)
            if v["params"]["subscription"] == self.sub.as_str() {
                self.events.push(v["params"]["result"].clone());
            }
        } else {
            self.answers.insert(v["id"].to_string(), v);
        }
    }

    /// Send `method(params)` and read until its answer.
    fn call(&mut self, method: &str, params: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(id, method, params);
        self.answer(id)
    }

    fn send(&mut self, id: u64, method: &str, params: &str) {
        self.ws
            .send(Message::Text(format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#
            )))
            .unwrap();
    }

    fn answer(&mut self, id: u64) -> Value {
        loop {
            if let Some(a) = self.answers.remove(&id.to_string()) {
                return a;
            }
            self.read_one();
        }
    }

    /// Read until an event after those looked at satisfies `f`; returns
    /// its index in `events`.
    fn until(&mut self, f: impl Fn(&Value) -> bool) -> usize {
        loop {
            if let Some(i) = self.events[self.cursor..].iter().position(&f) {
                self.cursor += i + 1;
                return self.cursor - 1;
            }
            self.cursor = self.events.len();
            self.read_one();
        }
    }

    fn until_event(&mut self, kind: &str) -> Value {
        let i = self.until(|e| e["event"] == kind);
        self.events[i].clone()
    }

    /// A call on its follow: `chainHead_v1_<what>` with the follow id first.
    fn on_follow(&mut self, what: &str, rest: &str) -> Value {
        let sub = self.sub.clone();
        self.call(
            &format!("chainHead_v1_{what}"),
            &format!(r#"["{sub}",{rest}]"#),
        )
    }

    /// An operation's last event (after its `started` answer).
    fn operation(&mut self, what: &str, rest: &str) -> Value {
        let a = self.on_follow(what, rest);
        assert_eq!(a["result"]["result"], "started", "{a}");
        let op = a["result"]["operationId"].clone();
        let i = self.until(|e| {
            e["operationId"] == op
                && matches!(
                    e["event"].as_str(),
                    Some("operationCallDone" | "operationBodyDone" | "operationStorageDone")
                )
        });
        self.events[i].clone()
    }

    fn finalized_hash(&self) -> String {
        let init = self
            .events
            .iter()
            .find(|e| e["event"] == "initialized")
            .unwrap();
        init["finalizedBlockHashes"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .into()
    }
}

/// `n` clients following with the runtime, each told `initialized`.
fn followers(gw: &Gateway, pki: &TestPki, n: usize) -> Vec<Follower> {
    let mut clients: Vec<Follower> = (0..n).map(|_| Follower::new(gw, pki, true)).collect();
    for c in &mut clients {
        c.until_event("initialized");
    }
    clients
}

fn gateway(pki: &TestPki, nodes: &[&HeadNode], shared: bool, extra: &str) -> Gateway {
    let cfg = write_config(
        pki,
        "follow.toml",
        &format!("[pool]\nshared = {shared}\n{extra}"),
    );
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    Gateway::start(
        pki,
        &urls,
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

/// What a PAPI client does at its start, by hand: follow with the runtime,
/// the finalized block's header, its `:code` hash, the metadata; then the
/// next block and its finalization, letting go of the old finalized block.
fn papi_start(f: &mut Follower) -> String {
    f.until_event("initialized");
    let fin = f.finalized_hash();
    let header = f.on_follow("header", &format!("\"{fin}\""));
    assert!(
        header["result"].as_str().unwrap().starts_with("0x"),
        "{header}"
    );
    let code = f.operation(
        "storage",
        &format!(r#""{fin}",[{{"key":"0x3a636f6465","type":"hash"}}],null"#),
    );
    assert_eq!(code["event"], "operationStorageDone");
    let meta = f.operation(
        "call",
        &format!(r#""{fin}","Metadata_metadata_at_version","0x0f000000""#),
    );
    assert!(
        meta["output"].as_str().unwrap().len() > 100_000,
        "the metadata"
    );
    fin
}

fn many_clients_cost_the_node_one_client(shared: bool) {
    let pki = TestPki::new();
    let node = HeadNode::start();
    let first = node.block();
    let gw = gateway(&pki, &[&node], shared, "");
    // One client's cost at the node, first.
    let mut one = Follower::new(&gw, &pki, true);
    let fin = papi_start(&mut one);
    let alone = node.seen();
    // Then 40 more, at once.
    let mut many: Vec<Follower> = (0..40).map(|_| Follower::new(&gw, &pki, true)).collect();
    for f in &mut many {
        assert_eq!(papi_start(f), fin);
    }
    // The next block, finalized: every client sees it, and lets go of the old one.
    let next = node.block();
    node.finalize(&next);
    for f in many.iter_mut().chain(std::iter::once(&mut one)) {
        let e = f.until_event("finalized");
        assert!(
            e["finalizedBlockHashes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == next.as_str()),
            "{e}"
        );
        let unpin = f.on_follow("unpin", &format!(r#"["{fin}","{first}"]"#));
        assert_eq!(unpin["result"], Value::Null, "{unpin}");
    }
    let seen = node.seen();
    assert_eq!(seen.calls_of("chainHead_v1_follow"), 1, "{seen:?}");
    assert_eq!(
        seen.calls_of("chainHead_v1_call"),
        1,
        "the metadata, once: {seen:?}"
    );
    assert_eq!(seen.max_follows_on_a_connection, 1, "{seen:?}");
    assert_eq!(
        seen.follows_refused + seen.stopped + seen.limit_reached,
        0,
        "{seen:?}"
    );
    assert!(
        seen.total_calls() <= 3 * alone.total_calls(),
        "41 clients cost the node {} calls, one client {}: {seen:?}",
        seen.total_calls(),
        alone.total_calls()
    );
    // The old finalized block is unpinned at the node once the last client let go.
    wait_for(TIMEOUT, "the node to hold only the finalized block", || {
        node.pinned() == 1
    });
}

#[test]
fn forty_shared_sessions_following_cost_the_node_one_follow() {
    many_clients_cost_the_node_one_client(true);
}

#[test]
fn forty_pinned_sessions_following_cost_the_node_one_follow() {
    many_clients_cost_the_node_one_client(false);
}

#[test]
fn a_late_follower_starts_from_the_gateways_view() {
    let pki = TestPki::new();
    let node = HeadNode::start();
    let gw = gateway(&pki, &[&node], true, "");
    let mut early = Follower::new(&gw, &pki, true);
    early.until_event("initialized");
    let a = node.block();
    let b = node.block();
    early.until(|e| e["blockHash"] == b.as_str());
    let mut late = Follower::new(&gw, &pki, false);
    late.until(|e| e["event"] == "bestBlockChanged");
    let kinds: Vec<&str> = late
        .events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["initialized", "newBlock", "newBlock", "bestBlockChanged"]
    );
    assert!(
        late.events[0].get("finalizedBlockRuntime").is_none(),
        "it did not ask for the runtime"
    );
    assert_eq!(late.events[1]["blockHash"], a.as_str());
    assert_eq!(late.events[2]["parentBlockHash"], a.as_str());
    assert_eq!(late.events[3]["bestBlockHash"], b.as_str());
    // A follow without the runtime may not call it (as a node answers).
    let call = late.on_follow("call", &format!(r#""{b}","Core_version","0x""#));
    assert_eq!(call["error"]["code"], -32802, "{call}");
    // Nor use a block it was not told of, nor another client's follow.
    let header = late.on_follow("header", r#""0x1234""#);
    assert_eq!(header["error"]["code"], -32801, "{header}");
    let theirs = early.sub.clone();
    let stolen = late.call("chainHead_v1_unfollow", &format!(r#"["{theirs}"]"#));
    assert_eq!(stolen["error"]["code"], -32602, "{stolen}");
    assert_eq!(node.seen().calls_of("chainHead_v1_follow"), 1);
}

#[test]
fn a_reorg_reaches_every_client_in_the_nodes_order() {
    let pki = TestPki::new();
    let node = HeadNode::start();
    let gw = gateway(&pki, &[&node], true, "");
    let mut clients = followers(&gw, &pki, 3);
    let genesis = clients[0].finalized_hash();
    let a = node.block();
    let x = node.block_on(&genesis);
    node.set_best(&x);
    node.finalize(&x);
    for c in &mut clients {
        let fin = c.until_event("finalized");
        assert_eq!(fin["finalizedBlockHashes"], serde_json::json!([x]));
        assert_eq!(fin["prunedBlockHashes"], serde_json::json!([a]));
        let order: Vec<String> = c
            .events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["event"].as_str().unwrap(),
                    e["blockHash"]
                        .as_str()
                        .or(e["bestBlockHash"].as_str())
                        .unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                "initialized ".to_string(),
                format!("bestBlockChanged {genesis}"),
                format!("newBlock {a}"),
                format!("bestBlockChanged {a}"),
                format!("newBlock {x}"),
                format!("bestBlockChanged {x}"),
                "finalized ".to_string(),
            ]
        );
        let unpin = c.on_follow("unpin", &format!(r#"["{genesis}","{a}"]"#));
        assert_eq!(unpin["result"], Value::Null, "{unpin}");
    }
    // Genesis and the pruned block are let go of at the node with the last client.
    wait_for(TIMEOUT, "the node to hold only x", || node.pinned() == 1);
    // Unpinning twice, or a hash named twice, gets the node's errors.
    let again = clients[0].on_follow("unpin", &format!(r#""{a}""#));
    assert_eq!(again["error"]["code"], -32801, "{again}");
    let twice = clients[0].on_follow("unpin", &format!(r#"["{x}","{x}"]"#));
    assert_eq!(twice["error"]["code"], -32804, "{twice}");
}

#[test]
fn a_client_that_never_unpins_is_stopped_alone() {
    let pki = TestPki::new();
    let node = HeadNode::start();
    let gw = gateway(&pki, &[&node], true, "[limits]\nfollow_pin_age_ms = 300\n");
    let mut good = Follower::new(&gw, &pki, true);
    let mut bad = Follower::new(&gw, &pki, true);
    good.until_event("initialized");
    bad.until_event("initialized");
    let mut held = vec![good.finalized_hash()];
    // The bad client reads, and never unpins.
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        bad.until_event("stop");
        let _ = stopped_tx.send(());
    });
    node.tick(Duration::from_millis(50));
    // The good client lets go of what each finalization releases.
    let mut finalizations = 0;
    let mut after_stop = None;
    while after_stop.is_none_or(|n| finalizations < n + 5) {
        let i = good.until(|e| e["event"] == "finalized" || e["event"] == "stop");
        let e = good.events[i].clone();
        assert_ne!(e["event"], "stop", "the good client was stopped");
        let mut fin: Vec<String> = e["finalizedBlockHashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect();
        let pruned = e["prunedBlockHashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string());
        let newest = fin.pop().unwrap();
        held.extend(fin);
        held.extend(pruned);
        let list: Vec<String> = held.drain(..).map(|h| format!("\"{h}\"")).collect();
        let unpin = good.on_follow("unpin", &format!("[{}]", list.join(",")));
        assert_eq!(unpin["result"], Value::Null, "{unpin}");
        held.push(newest);
        finalizations += 1;
        if after_stop.is_none() && stopped.try_recv().is_ok() {
            after_stop = Some(finalizations);
        }
        assert!(finalizations < 400, "the bad client was never stopped");
    }
    let s = node.seen();
    assert_eq!(
        (s.stopped, s.calls_of("chainHead_v1_follow")),
        (0, 1),
        "{s:?}"
    );
    // The bad client's blocks were let go of at the node.
    assert!(node.pinned() < 10, "{} pinned", node.pinned());
}

#[test]
fn operations_beyond_the_nodes_sixteen_wait_for_a_slot() {
    let pki = TestPki::new();
    let node = HeadNode::start();
    let gw = gateway(&pki, &[&node], true, "");
    let mut clients = followers(&gw, &pki, 3);
    let fin = clients[0].finalized_hash();
    // 3 clients x 12 different calls at once: 36 operations, 16 slots at the node.
    for (n, c) in clients.iter_mut().enumerate() {
        for i in 0..12 {
            let sub = c.sub.clone();
            c.send(
                100 + i,
                "chainHead_v1_call",
                &format!(r#"["{sub}","{fin}","Test_{n}_{i}","0x"]"#),
            );
        }
    }
    for c in &mut clients {
        let mut ops = Vec::new();
        for i in 0..12 {
            let a = c.answer(100 + i);
            assert_eq!(a["result"]["result"], "started", "{a}");
            ops.push(a["result"]["operationId"].clone());
        }
        let mut unique = ops.clone();
        unique.sort_by_key(|v| v.to_string());
        unique.dedup();
        assert_eq!(unique.len(), 12, "its own operation ids: {ops:?}");
        for op in ops {
            c.until(|e| e["event"] == "operationCallDone" && e["operationId"] == op);
        }
    }
    let s = node.seen();
    assert_eq!(
        s.limit_reached, 0,
        "the node never saw more than its 16: {s:?}"
    );
    assert_eq!(s.calls_of("chainHead_v1_call"), 36, "{s:?}");
    // One client's own bound: 16 at once, then limitReached (as a node answers).
    let c = &mut clients[0];
    let sub = c.sub.clone();
    for i in 0..17 {
        c.send(
            200 + i,
            "chainHead_v1_body",
            &format!(r#"["{sub}","{fin}"]"#),
        );
    }
    let answers: Vec<Value> = (0..17).map(|i| c.answer(200 + i)).collect();
    let started = answers
        .iter()
        .filter(|a| a["result"]["result"] == "started")
        .count();
    assert_eq!(started, 16, "{answers:?}");
    assert_eq!(
        answers[16]["result"]["result"], "limitReached",
        "{answers:?}"
    );
    // The same body of the same block is asked of the node once.
    assert_eq!(node.seen().calls_of("chainHead_v1_body"), 1);
}

/// A mock node whose operations run for `secs` (long enough for what a
/// test does meanwhile).
fn slow_node(secs: u64) -> HeadNode {
    HeadNode::with(HeadLimits {
        op_time: Duration::from_secs(secs),
        ..HeadLimits::default()
    })
}

/// A storage query of `n` items from `from` on (descendants, as PAPI
/// reads a map).
fn storage_items(from: usize, n: usize) -> String {
    let items: Vec<String> = (from..from + n)
        .map(|i| format!(r#"{{"key":"0x{i:02x}","type":"descendantsValues"}}"#))
        .collect();
    format!("[{}]", items.join(","))
}

#[test]
fn one_clients_large_storage_query_leaves_slots_for_the_others() {
    let pki = TestPki::new();
    let node = slow_node(6);
    let gw = gateway(&pki, &[&node], true, "");
    let mut c = followers(&gw, &pki, 2);
    let fin = c[0].finalized_hash();
    // 16 items would take every slot of the node follow for 6 s.
    let a = c[0].on_follow(
        "storage",
        &format!(r#""{fin}",{},null"#, storage_items(0, 16)),
    );
    assert_eq!(a["result"]["result"], "started", "{a}");
    let discarded = a["result"]["discardedItems"].as_u64().unwrap();
    assert!(discarded >= 8, "one client takes at most half: {a}");
    // Another client's header and operation go ahead meanwhile.
    let h = c[1].on_follow("header", &format!("\"{fin}\""));
    assert!(
        h["result"].as_str().is_some_and(|x| x.starts_with("0x")),
        "{h}"
    );
    let b = c[1].on_follow("body", &format!("\"{fin}\""));
    assert_eq!(b["result"]["result"], "started", "{b}");
    assert_eq!(node.running(), 2, "both run at the node at once");
    assert_eq!(node.seen().limit_reached, 0, "{:?}", node.seen());
    // The first client's query gives the items it was not told were discarded.
    let op = a["result"]["operationId"].clone();
    let mut items = 0;
    loop {
        let i = c[0].until(|e| e["operationId"] == op);
        match c[0].events[i]["event"].as_str() {
            Some("operationStorageItems") => items += 1,
            Some("operationStorageDone") => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(items, 16 - discarded, "{a}");
}

#[test]
fn an_operation_abandoned_before_its_answer_is_stopped_at_the_node() {
    let pki = TestPki::new();
    let node = slow_node(30);
    let gw = gateway(&pki, &[&node], true, "");
    let mut c = followers(&gw, &pki, 3);
    let fin = c[0].finalized_hash();
    // The first client asks 8 items and is gone before the node answers.
    let mut gone = c.remove(0);
    let sub = gone.sub.clone();
    gone.send(
        50,
        "chainHead_v1_storage",
        &format!(r#"["{sub}","{fin}",{},null]"#, storage_items(0, 8)),
    );
    gone.ws.close(None).unwrap();
    let _ = gone.ws.flush();
    wait_for(Duration::from_secs(10), "the node told to stop it", || {
        node.seen().calls_of("chainHead_v1_stopOperation") == 1
    });
    // Its slots are free: the others get all 16 between them.
    for (i, f) in c.iter_mut().enumerate() {
        let items = storage_items(8 * i, 8);
        let a = f.on_follow("storage", &format!(r#""{fin}",{items},null"#));
        assert_eq!(a["result"]["result"], "started", "{a}");
        assert_eq!(a["result"]["discardedItems"], 0, "{a}");
    }
    assert_eq!(node.running(), 2);
    assert_eq!(node.seen().limit_reached, 0, "{:?}", node.seen());
}

#[test]
fn every_request_on_a_follow_is_answered_when_the_follow_ends_first() {
    let pki = TestPki::new();
    let node = slow_node(1);
    let gw = gateway(&pki, &[&node], true, "");
    let mut keep = Follower::new(&gw, &pki, true);
    let mut f = Follower::new(&gw, &pki, true);
    keep.until_event("initialized");
    f.until_event("initialized");
    let old = f.finalized_hash();
    // A header asked, and the block let go of before the node answers.
    let next = node.block();
    node.finalize(&next);
    f.until_event("finalized");
    keep.until_event("finalized");
    let unpin = keep.on_follow("unpin", &format!("[\"{old}\"]"));
    assert_eq!(unpin["result"], Value::Null, "{unpin}");
    let sub = f.sub.clone();
    f.send(40, "chainHead_v1_header", &format!(r#"["{sub}","{old}"]"#));
    f.send(41, "chainHead_v1_unpin", &format!(r#"["{sub}",["{old}"]]"#));
    let header = f.answer(40);
    assert!(
        header.get("result").is_some() || header.get("error").is_some(),
        "{header}"
    );
    assert_eq!(f.answer(41)["result"], Value::Null);
    // An operation asked, and the follow ended before the node answers.
    f.send(
        42,
        "chainHead_v1_call",
        &format!(r#"["{sub}","{next}","Test_1","0x"]"#),
    );
    f.send(43, "chainHead_v1_unfollow", &format!(r#"["{sub}"]"#));
    let call = f.answer(42);
    assert!(call["result"]["result"].is_string(), "{call}");
    assert_eq!(f.answer(43)["result"], Value::Null);
    wait_for(Duration::from_secs(10), "the node told to stop it", || {
        node.running() == 0
    });
    assert_eq!(node.seen().limit_reached, 0, "{:?}", node.seen());
}

#[test]
fn node_loss_stops_the_follows_on_it_and_they_follow_again_on_another_node() {
    let pki = TestPki::new();
    let (a, b) = (HeadNode::start(), HeadNode::start());
    let gw = gateway(&pki, &[&a, &b], true, "");
    // Sessions spread over both nodes: one node follow on each.
    let mut clients = followers(&gw, &pki, 6);
    assert_eq!(
        (a.follows(), b.follows()),
        (1, 1),
        "one node follow per node"
    );
    a.kill();
    let fresh = b.block();
    let mut stopped = 0;
    for c in &mut clients {
        let i = c.until(|e| e["event"] == "stop" || e["blockHash"] == fresh.as_str());
        if c.events[i]["event"] != "stop" {
            continue;
        }
        stopped += 1;
        // As PAPI does: follow again on the same session (it moved to b).
        let again = c.call("chainHead_v1_follow", "[true]");
        c.sub = again["result"]
            .as_str()
            .unwrap_or_else(|| panic!("{again}"))
            .to_string();
        c.events.clear();
        c.cursor = 0;
        let init = c.until_event("initialized");
        assert!(init["finalizedBlockHashes"].is_array(), "{init}");
        c.until(|e| e["blockHash"] == fresh.as_str());
    }
    assert!(stopped > 0, "some sessions were on a");
    assert_eq!(b.follows(), 1, "they joined b's follow");
    assert_eq!(b.seen().calls_of("chainHead_v1_follow"), 1);
}

#[test]
fn a_follow_the_node_refuses_gets_the_nodes_error_not_a_stop() {
    let pki = TestPki::new();
    let node = HeadNode::with(HeadLimits {
        follows_per_connection: 0,
        ..Default::default()
    });
    let gw = gateway(&pki, &[&node], true, "");
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":"f","method":"chainHead_v1_follow","params":[true]}"#.into(),
    ))
    .unwrap();
    let a: Value = match ws.read().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (a["id"].as_str(), a["error"]["code"].as_i64()),
        (Some("f"), Some(-32800)),
        "{a}"
    );
    // Inside a batch, a follow is refused with its id (its events could
    // reach the client before the batch that names it).
    ws.send(Message::Text(
        r#"[{"jsonrpc":"2.0","id":1,"method":"chainHead_v1_follow","params":[true]},{"jsonrpc":"2.0","id":2,"method":"system_health","params":[]}]"#.into(),
    ))
    .unwrap();
    let batch: Value = match ws.read().unwrap() {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(batch[0]["error"]["code"], -32600, "{batch}");
    assert_eq!(batch[1]["result"]["peers"], 3, "{batch}");
}

#[test]
fn transactions_pass_through_to_one_node_and_every_event_is_charged() {
    let pki = TestPki::new();
    let (a, b) = (HeadNode::start(), HeadNode::start());
    const KEY: &str = "tx-customer-0123456789";
    let keys = write_config(
        &pki,
        "keys.toml",
        &format!("[[key]]\nname = \"tx\"\nkey = \"{KEY}\"\n"),
    );
    let extra = format!(
        "[server]\nmetrics_listen = \"127.0.0.1:0\"\n[keys]\nfile = \"{}\"\n",
        keys.display()
    );
    let gw = gateway(&pki, &[&a, &b], true, &extra);
    let mut ws = ws_connect(&gw, pki.client_config(), &format!("/{KEY}"));
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":1,"method":"transactionWatch_v1_submitAndWatch","params":["0x00"]}"#.into(),
    ))
    .unwrap();
    let mut events = Vec::new();
    let mut answer = None;
    while events.len() < 4 || answer.is_none() {
        let v: Value = match ws.read().unwrap() {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("{other:?}"),
        };
        match v.get("method") {
            Some(_) => events.push(v["params"]["result"]["event"].as_str().unwrap().to_string()),
            None => answer = Some(v),
        }
    }
    assert_eq!(
        events,
        [
            "validated",
            "broadcasted",
            "bestChainBlockIncluded",
            "finalized"
        ]
    );
    for (id, method, params) in [
        (2, "transaction_v1_broadcast", r#"["0x00"]"#.to_string()),
        (
            3,
            "transaction_v1_stop",
            r#"["mock-broadcast-2"]"#.to_string(),
        ),
    ] {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#
        )))
        .unwrap();
        let v: Value = match ws.read().unwrap() {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(v.get("result").is_some(), "{v}");
    }
    // All of it on one node, sent once (never hedged to the other).
    let calls = |n: &HeadNode| {
        let s = n.seen();
        [
            "transactionWatch_v1_submitAndWatch",
            "transaction_v1_broadcast",
            "transaction_v1_stop",
        ]
        .iter()
        .map(|m| s.calls_of(m))
        .collect::<Vec<_>>()
    };
    let (on_a, on_b) = (calls(&a), calls(&b));
    assert!(
        (on_a == [1, 1, 1] && on_b == [0, 0, 0]) || (on_b == [1, 1, 1] && on_a == [0, 0, 0]),
        "{on_a:?} {on_b:?}"
    );
    // A follow on the same session: its events are notifications too.
    let mut f = Follower {
        ws,
        sub: String::new(),
        events: Vec::new(),
        answers: HashMap::new(),
        next_id: 10,
        cursor: 0,
    };
    let a = f.call("chainHead_v1_follow", "[true]");
    f.sub = a["result"].as_str().unwrap().to_string();
    f.until_event("bestBlockChanged");
    // Every watch and follow event is charged to the key, as any notification.
    let metrics = printed_addr(&gw, "metrics on http://");
    let usage: Value = serde_json::from_str(&plain_get(&metrics, "/usage").2).unwrap();
    let n = usage["keys"]["tx"]["current"]["notifications"]
        .as_u64()
        .unwrap();
    assert_eq!(
        n,
        4 + 2,
        "four watch events, initialized, bestBlockChanged: {usage}"
    );
}

fn follows_count_against_the_sessions_subscription_limit(shared: bool) {
    let pki = TestPki::new();
    let node = HeadNode::start();
    let gw = gateway(
        &pki,
        &[&node],
        shared,
        "[admission]\nmax_subscriptions_per_connection = 2\n",
    );
    let mut f = Follower::new(&gw, &pki, true);
    let first = f.sub.clone();
    let second = f.call("chainHead_v1_follow", "[true]");
    assert!(second["result"].is_string(), "{second}");
    let third = f.call("chainHead_v1_follow", "[true]");
    assert_eq!(third["error"]["code"], -32005, "{third}");
    let unfollow = f.call("chainHead_v1_unfollow", &format!(r#"["{first}"]"#));
    assert_eq!(unfollow["result"], Value::Null, "{unfollow}");
    let again = f.call("chainHead_v1_follow", "[true]");
    assert!(
        again["result"].is_string(),
        "room again after an unfollow: {again}"
    );
    assert_eq!(node.seen().calls_of("chainHead_v1_follow"), 1);
}

#[test]
fn follows_count_against_a_shared_sessions_subscription_limit() {
    follows_count_against_the_sessions_subscription_limit(true);
}

#[test]
fn follows_count_against_a_pinned_sessions_subscription_limit() {
    follows_count_against_the_sessions_subscription_limit(false);
}
