//! A hostile client against the default configuration (plus
//! `admission.methods = "safe"`), in both session modes, in front of a
//! mock node that reads requests as a lenient node does (the last of
//! duplicate members wins, names match ignoring case: Go's encoding/json)
//! and counts what it runs. One case per finding of issue 20.

mod common;

use std::io::Write;

use common::*;
use tungstenite::Message;

/// The two session modes.
const MODES: [&[&str]; 2] = [&[], &["--shared"]];

fn gateway(pki: &TestPki, up: &Upstream, extra_toml: &str, flags: &[&str]) -> Gateway {
    let cfg = write_config(
        pki,
        "hostile.toml",
        &format!(
            "[admission]\nmethods = \"safe\"\ndeny_methods = [\"state_trace*\"]\n{extra_toml}"
        ),
    );
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(flags);
    Gateway::start(pki, &[up.url()], &args)
}

/// An echo node is not a JSON-RPC node: health checks test its upgrade only.
const ECHO: &str = "[health]\nprobe = \"connect\"\n";

/// Spellings of refused calls, each with id `id`: what a lenient node
/// would run is a refused method in every one.
fn disguises(id: u64) -> Vec<String> {
    let pad = "x".repeat(70 * 1024);
    vec![
        // An escape in the method name.
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"author_rotat\u0065Keys","params":[]}}"#),
        // An escape in the member name.
        format!(r#"{{"jsonrpc":"2.0","id":{id},"met\u0068od":"author_rotateKeys","params":[]}}"#),
        // The member twice: a last-wins node runs the second.
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"system_health","method":"author_rotateKeys"}}"#
        ),
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"system_health","m\u0065thod":"author_rotateKeys"}}"#
        ),
        // Another case: a case-insensitive node takes it for the method.
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"system_health","METHOD":"author_rotateKeys"}}"#
        ),
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"Method":"author_rotateKeys","method":"system_health"}}"#
        ),
        // Padded past 64 KiB.
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"pad":"{pad}","method":"author_rotateKeys","params":[]}}"#
        ),
        // deny_methods, escaped.
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"state_tr\u0061ceBlock","params":["0x01"]}}"#
        ),
        // In a batch.
        format!(
            r#"[{{"jsonrpc":"2.0","id":{id},"method":"system_health"}},{{"jsonrpc":"2.0","id":{},"method":"author_insert\u004bey","params":[]}}]"#,
            id + 1000
        ),
    ]
}

/// True for a refusal of the gateway's with the request's id.
fn refused_with_id(answer: &str, id: u64) -> bool {
    let v: serde_json::Value =
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    let first = if v.is_array() { &v[0] } else { &v };
    let code = first["error"]["code"].as_i64();
    first["id"] == id && matches!(code, Some(-32601 | -32600))
}

const REFUSED: [&str; 3] = ["author_rotateKeys", "state_traceBlock", "author_insertKey"];

fn assert_never_ran(chain: &FakeChain) {
    let calls = chain.calls.lock().unwrap().clone();
    for m in REFUSED {
        assert!(!calls.contains_key(m), "the node ran {m}: {calls:?}");
    }
}

#[test]
fn the_node_never_runs_a_refused_method_whatever_the_encoding() {
    for mode in MODES {
        let pki = TestPki::new();
        let chain = FakeChain::new(100);
        let up = Upstream::start(Behaviour::Substrate(chain.clone()));
        let gw = gateway(&pki, &up, "", mode);
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        for (i, msg) in disguises(1).into_iter().enumerate() {
            let id = 10 + i as u64;
            let msg = msg.replace(r#""id":1,"#, &format!(r#""id":{id},"#));
            ws.send(Message::Text(msg.clone())).unwrap();
            let answer = ws.read().unwrap().into_text().unwrap();
            assert!(
                refused_with_id(&answer, id),
                "{mode:?}: {} got {answer}",
                &msg[..msg.len().min(120)]
            );
        }
        // The session goes on, and what is allowed reaches the node.
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":99,"method":"system_health","params":[]}"#.into(),
        ))
        .unwrap();
        let answer = ws.read().unwrap().into_text().unwrap();
        assert!(
            answer.contains(r#""id":99"#) && answer.contains("peers"),
            "{answer}"
        );
        assert_never_ran(&chain);
    }
}

#[test]
fn over_http_too_the_node_never_runs_a_refused_method() {
    let pki = TestPki::new();
    let chain = FakeChain::new(100);
    let up = Upstream::start(Behaviour::Substrate(chain.clone()));
    let gw = gateway(&pki, &up, "[http]\nmax_body_bytes = 1048576\n", &[]);
    for msg in disguises(5) {
        let (status, body) = post_json(gw.addr, pki.client_config(), &msg);
        assert!(
            refused_with_id(&body, 5),
            "{status} {body} for {}",
            &msg[..msg.len().min(120)]
        );
    }
    let (status, body) = post_json(
        gw.addr,
        pki.client_config(),
        r#"{"jsonrpc":"2.0","id":6,"method":"system_health","params":[]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("peers"), "{body}");
    assert_never_ran(&chain);
}

#[test]
fn what_is_not_json_with_one_meaning_gets_an_error_and_the_session_goes_on() {
    for mode in MODES {
        let pki = TestPki::new();
        let chain = FakeChain::new(100);
        let up = Upstream::start(Behaviour::Substrate(chain.clone()));
        let gw = gateway(&pki, &up, "", mode);
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        for (msg, code, id) in [
            // Two values: a streaming decoder runs the second.
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"system_health"} {"jsonrpc":"2.0","id":2,"method":"author_rotateKeys"}"#,
                -32700,
                serde_json::Value::Null,
            ),
            // A lone surrogate: refused by serde_json, replaced by Go.
            (
                r#"{"jsonrpc":"2.0","id":3,"method":"system_health\ud800"}"#,
                -32700,
                serde_json::Value::Null,
            ),
            // An id a case-insensitive node reads in place of the real one.
            (
                r#"{"jsonrpc":"2.0","id":4,"ID":5,"method":"system_health"}"#,
                -32600,
                4.into(),
            ),
            // The id twice: nobody can tell which to answer with.
            (
                r#"{"jsonrpc":"2.0","id":6,"id":7,"method":"system_health"}"#,
                -32600,
                serde_json::Value::Null,
            ),
        ] {
            ws.send(Message::Text(msg.into())).unwrap();
            let answer = ws.read().unwrap().into_text().unwrap();
            let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(v["error"]["code"], code, "{mode:?} {msg}: {answer}");
            assert_eq!(v["id"], id, "{mode:?} {msg}: {answer}");
        }
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":8,"method":"system_health"}"#.into(),
        ))
        .unwrap();
        let answer = ws.read().unwrap().into_text().unwrap();
        assert!(
            answer.contains(r#""id":8"#) && answer.contains("peers"),
            "{answer}"
        );
        assert_never_ran(&chain);
        assert_eq!(
            chain.calls_of("system_health"),
            1,
            "{mode:?}: only the last"
        );
    }
}

/// The gateway's resident memory, in bytes.
fn rss(gw: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

/// A client that sends `frames` (after its upgrade) and never reads,
/// holding its connection until the returned sender is dropped.
fn never_reads(gw: &Gateway, pki: &TestPki, frames: Vec<u8>) -> std::sync::mpsc::Sender<()> {
    let mut s = raw_upgrade(gw, pki);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // Whatever the gateway takes; a full socket blocks only this thread.
        let _ = s.write_all(&frames);
        let _ = s.flush();
        let _ = rx.recv();
        drop(s);
    });
    tx
}

type Ws = tungstenite::WebSocket<TlsStream>;

/// A neighbour, connected (and answered once) before the hostile client.
fn neighbour(gw: &Gateway, pki: &TestPki) -> Ws {
    let mut ws = ws_connect(gw, pki.client_config(), "/");
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":1,"method":"system_health","params":[]}"#.into(),
    ))
    .unwrap();
    ws.read().unwrap();
    ws
}

/// For `secs`, the neighbour `ws` calls system_health every 50 ms: each
/// must be answered within a second. Returns the most RSS seen above `before`.
fn growth_while_neighbour_is_served(gw: &Gateway, mut ws: Ws, before: u64, secs: u64) -> u64 {
    let mut most = 0;
    let start = std::time::Instant::now();
    let mut id = 1000;
    while start.elapsed() < std::time::Duration::from_secs(secs) {
        id += 1;
        let asked = std::time::Instant::now();
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"system_health","params":[]}}"#
        )))
        .unwrap();
        let answer = ws.read().unwrap().into_text().unwrap();
        assert!(answer.contains(&format!(r#""id":{id}"#)), "{answer}");
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(1),
            "the neighbour waited {:?}",
            asked.elapsed()
        );
        most = most.max(rss(gw).saturating_sub(before));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    most
}

/// A client sends 2,000 calls of `method` in one go and never reads, for 3 s
/// while a neighbour connected before it is served: the most RSS grew.
fn flood_that_is_never_read(gw: &Gateway, pki: &TestPki, method: &str) -> u64 {
    let mut frames = Vec::new();
    for i in 0..2000 {
        let call = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"{method}"}}"#);
        frames.extend(masked_text(call.as_bytes()));
    }
    let (ws, before) = (neighbour(gw, pki), rss(gw));
    let _hold = never_reads(gw, pki, frames);
    growth_while_neighbour_is_served(gw, ws, before, 3)
}

fn masked_text(payload: &[u8]) -> Vec<u8> {
    client_frame(0x81, payload, Some([1, 2, 3, 4]))
}

#[test]
fn a_client_that_never_reads_its_cached_answers_holds_bounded_memory() {
    for mode in MODES {
        let pki = TestPki::new();
        let chain = FakeChain::new(100);
        chain
            .metadata_bytes
            .store(300_000, std::sync::atomic::Ordering::Relaxed);
        let up = Upstream::start(Behaviour::Substrate(chain.clone()));
        let gw = gateway(&pki, &up, "", mode);
        // 2,000 state_getMetadata requests (140 KB), answered from the
        // cache (300 KB each: 600 MB if all were queued).
        let growth = flood_that_is_never_read(&gw, &pki, "state_getMetadata");
        eprintln!(
            "{mode:?}: RSS grew {} MB at most; the node was asked for metadata {} times",
            growth >> 20,
            chain.calls_of("state_getMetadata")
        );
        assert!(growth < 100 << 20, "{mode:?}: RSS grew {} MB", growth >> 20);
    }
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    for mode in MODES {
        let pki = TestPki::new();
        let up = Upstream::start(Behaviour::Echo);
        let gw = gateway(&pki, &up, ECHO, mode);
        // 200,000 pings of 125 bytes (27 MB of pongs if each were queued).
        let ping = client_frame(0x89, &[b'p'; 125], Some([1, 2, 3, 4]));
        let frames: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 200_000)
            .collect();
        let (ws, before) = (neighbour(&gw, &pki), rss(&gw));
        let hold = never_reads(&gw, &pki, frames);
        let growth = growth_while_neighbour_is_served(&gw, ws, before, 3);
        eprintln!("{mode:?}: RSS grew {} MB at most", growth >> 20);
        assert!(growth < 10 << 20, "{mode:?}: RSS grew {} MB", growth >> 20);
        drop(hold);
    }
}

#[test]
fn pings_alone_do_not_keep_a_session_from_idling_out() {
    for mode in MODES {
        let pki = TestPki::new();
        let up = Upstream::start(Behaviour::Echo);
        let gw = gateway(
            &pki,
            &up,
            &format!("{ECHO}[limits]\nidle_timeout_s = 1\n"),
            mode,
        );
        let mut s = raw_upgrade(&gw, &pki);
        s.get_ref()
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let start = std::time::Instant::now();
        let code = loop {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "{mode:?}: still open after 5 s of pings"
            );
            s.write_all(&client_frame(0x89, b"hi", Some([1, 2, 3, 4])))
                .unwrap();
            match read_frame(&mut s) {
                Some((b0, payload)) if b0 & 0x0f == 0x8 => {
                    break u16::from_be_bytes([payload[0], payload[1]]);
                }
                _ => continue,
            }
        };
        assert_eq!(code, 1001, "{mode:?}");
    }
}

/// Shared mode: a node's error with `"id":null` names no request. With
/// requests of two clients waiting on one connection, it belongs to
/// neither for sure: neither client gets it (it was once given to the
/// oldest batch, another client's); each gets the gateway's own error for
/// its request at the request timeout, in its batch's place.
#[test]
fn shared_an_error_naming_no_request_goes_to_no_other_client() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Scripted(Script::new(10)));
    let cfg = write_config(&pki, "null-id.toml", "[pool]\nrequest_timeout_ms = 1000\n");
    // One worker: both sessions on one node connection.
    let gw = Gateway::start(
        &pki,
        &[node.url()],
        &[
            "--shared",
            "--workers",
            "1",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let mut a = ws_connect(&gw, pki.client_config(), "/");
    let mut b = ws_connect(&gw, pki.client_config(), "/");
    // A's batch waits (the node never answers "hang")...
    a.send(Message::Text(
        r#"[{"jsonrpc":"2.0","id":1,"method":"hang"},{"jsonrpc":"2.0","id":2,"method":"x"}]"#
            .into(),
    ))
    .unwrap();
    // ... (A's request after it comes back: A's batch is on its way)
    a.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":3,"method":"x"}"#.into(),
    ))
    .unwrap();
    assert!(a.read().unwrap().into_text().unwrap().contains(r#""id":3"#));
    // ... when B's batch gets an error with a null id.
    b.send(Message::Text(
        r#"[{"jsonrpc":"2.0","id":7,"method":"batchfail"},{"jsonrpc":"2.0","id":8,"method":"x"}]"#
            .into(),
    ))
    .unwrap();
    let answer = b.read().unwrap().into_text().unwrap();
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let ids: Vec<i64> = v
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [7, 8], "{answer}");
    assert!(!answer.contains("batch too long"), "{answer}");
    // A gets nothing of B's: its own answers only (an error for its batch).
    let answer = a.read().unwrap().into_text().unwrap();
    assert!(!answer.contains("batch too long"), "{answer}");
    assert!(
        answer.contains(r#""id":1"#) && answer.contains(r#""id":2"#),
        "{answer}"
    );
}

/// `cache.methods` naming a subscription reached a panic in the cache's
/// path; subscriptions and writes are refused at `--check` (and at start
/// and reload), naming the key and the file.
#[test]
fn cache_methods_refuse_subscriptions_and_writes() {
    let pki = TestPki::new();
    for (method, what) in [
        ("chain_subscribeNewHeads", "a subscription"),
        ("eth_subscribe", "a subscription"),
        ("author_submitExtrinsic", "a write"),
        ("eth_sendRawTransaction", "a write"),
    ] {
        let cfg = write_config(
            &pki,
            "cache.toml",
            &format!("[cache.methods]\n{method} = 60\n"),
        );
        let out = check_config(cfg.to_str().unwrap());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{method} accepted");
        assert!(
            err.contains(&format!("cache.methods.{method}"))
                && err.contains(what)
                && err.contains("cache.toml"),
            "{err}"
        );
    }
}

/// The same client, asking what the cache cannot answer (each answer 300
/// KB from the node): a pinned session's node waits for it (backpressure);
/// on a shared connection, which cannot wait, it has at most
/// `max_inflight_per_connection` (256) requests out and is closed (1008)
/// once its answers pile up. Its neighbour is served meanwhile.
#[test]
fn a_client_that_never_reads_what_it_asked_a_node_holds_bounded_memory() {
    for mode in MODES {
        let pki = TestPki::new();
        let script = Script::new(300_000);
        let node = Upstream::start(Behaviour::Scripted(script.clone()));
        let gw = gateway(&pki, &node, ECHO, mode);
        let growth = flood_that_is_never_read(&gw, &pki, "x");
        let answered = script.answered.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "{mode:?}: RSS grew {} MB at most; the node answered {answered}",
            growth >> 20
        );
        assert!(growth < 100 << 20, "{mode:?}: RSS grew {} MB", growth >> 20);
        // 256 of the client's, and the neighbour's (one each 50 ms for 3 s).
        assert!(
            answered <= 256 + 70,
            "{mode:?}: the node answered {answered}"
        );
    }
}

fn get_from(gw: &Gateway, pki: &TestPki, path: &str, forwarded_for: &str) -> u16 {
    let mut s = tls_connect(gw.addr, pki.client_config());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {forwarded_for}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    read_response(&mut s).0
}

/// `/metrics` on the public port told anyone the node pool's traffic: by
/// default it answers clients on the gateway's host only (404 for others;
/// here a client behind a trusted proxy), unless `server.public_metrics`.
#[test]
fn metrics_on_the_public_port_answer_local_clients_only_unless_asked() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = gateway(&pki, &up, &format!("trusted_proxy_hops = 1\n{ECHO}"), &[]);
    assert_eq!(get_from(&gw, &pki, "/metrics", "203.0.113.9"), 404);
    assert_eq!(get_from(&gw, &pki, "/metrics", "127.0.0.1"), 200);
    assert_eq!(
        get_from(&gw, &pki, "/health", "203.0.113.9"),
        200,
        "health stays public"
    );
    drop(gw);
    let gw = gateway(
        &pki,
        &up,
        &format!("trusted_proxy_hops = 1\n{ECHO}[server]\npublic_metrics = true\n"),
        &[],
    );
    assert_eq!(get_from(&gw, &pki, "/metrics", "203.0.113.9"), 200);
}

/// Shared mode opened another node connection for every
/// `shared_max_subscriptions` subscriptions, without end: one client with
/// many sessions could open any number to a node. At
/// `pool.shared_max_connections` per node and core, a subscription that
/// finds no room is refused (-32005 with its id) and no connection opens.
#[test]
fn shared_connections_per_node_are_capped() {
    let pki = TestPki::new();
    let script = Script::new(10);
    let node = Upstream::start(Behaviour::Scripted(script.clone()));
    let cfg = write_config(
        &pki,
        "cap.toml",
        "[health]\nprobe = \"connect\"\n[pool]\nshared_max_subscriptions = 2\nshared_max_connections = 2\n",
    );
    let gw = Gateway::start(
        &pki,
        &[node.url()],
        &[
            "--shared",
            "--workers",
            "1",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    let mut answers = Vec::new();
    for id in 0..6 {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"test_subscribeEvents","params":[]}}"#
        )))
        .unwrap();
        answers.push(ws.read().unwrap().into_text().unwrap());
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(script.subscriptions.load(Relaxed), 4, "{answers:?}");
    for a in &answers[4..] {
        assert!(
            a.contains("-32005") && a.contains("shared_max_connections"),
            "{a}"
        );
    }
    let sessions = node.seen.try_iter().filter(|r| !r.is_probe()).count();
    assert_eq!(sessions, 2, "node connections");
}

/// A node of another chain behind one of the pool's addresses (its genesis
/// hash differs) is taken out by its probes: the pool is on the chain most
/// nodes report (or `health.chain`), and no session goes to it.
#[test]
fn a_node_of_another_chain_is_taken_out() {
    let pki = TestPki::new();
    let (a, b, c) = (
        FakeChain::new(100),
        FakeChain::new(100),
        FakeChain::new(100),
    );
    *b.genesis.lock().unwrap() = Some(format!("0x{:064x}", 0xbad));
    let nodes: Vec<Upstream> = [&a, &b, &c]
        .iter()
        .map(|ch| Upstream::start(Behaviour::Substrate((*ch).clone())))
        .collect();
    let cfg = write_config(
        &pki,
        "chains.toml",
        "[health]\ninterval_ms = 100\nfall = 2\n",
    );
    let urls: Vec<String> = nodes.iter().map(Upstream::url).collect();
    let gw = Gateway::start(&pki, &urls, &["--config", cfg.to_str().unwrap()]);
    wait_for(TIMEOUT, "the other chain's node taken out", || {
        let (_, _, body) = https_get(gw.addr, pki.client_config(), "/health");
        body.contains(r#""other_chain":true"#) && body.contains(r#""up":false"#)
    });
    let (_, _, body) = https_get(gw.addr, pki.client_config(), "/health");
    assert!(
        body.contains(&format!(r#""chain":"0x{:064x}""#, 0)),
        "{body}"
    );
    for i in 0..8 {
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"system_health","params":[]}}"#
        )))
        .unwrap();
        ws.read().unwrap();
    }
    assert_eq!(b.calls_of("system_health"), 0, "no session on node b");
    assert_eq!(a.calls_of("system_health") + c.calls_of("system_health"), 8);
}

/// A client that takes nothing at all (its socket full) while its node
/// streams to it: relayed data waits at the node (backpressure), and the
/// write pending for `limits.send_timeout_ms` ends the session, as nginx's
/// `send_timeout`; the node is told (1001).
#[test]
fn a_write_that_makes_no_progress_ends_the_session() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Large(1 << 20));
    let gw = gateway(
        &pki,
        &up,
        &format!("{ECHO}[limits]\nsend_timeout_ms = 1000\n"),
        &[],
    );
    let mut frames = Vec::new();
    for i in 0..40 {
        let call = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"big"}}"#);
        frames.extend(masked_text(call.as_bytes()));
    }
    let start = std::time::Instant::now();
    let hold = never_reads(&gw, &pki, frames);
    let code = up.closes.recv_timeout(TIMEOUT).expect("the node told");
    assert_eq!(code, Some(1001));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    drop(hold);
}

/// The pong bound keeps what a reading client expects: a few pings sent at
/// once get a pong each, in order (Autobahn 2.10 checks this).
#[test]
fn a_few_pings_at_once_each_get_their_pong() {
    for mode in MODES {
        let pki = TestPki::new();
        let up = Upstream::start(Behaviour::Echo);
        let gw = gateway(&pki, &up, ECHO, mode);
        let mut s = raw_upgrade(&gw, &pki);
        let pings: Vec<u8> = (0..10)
            .flat_map(|i| client_frame(0x89, format!("payload-{i}").as_bytes(), Some([1, 2, 3, 4])))
            .collect();
        s.write_all(&pings).unwrap();
        for i in 0..10 {
            let (b0, payload) = read_frame(&mut s).expect("a pong");
            assert_eq!(b0 & 0x0f, 0xA, "{mode:?}");
            assert_eq!(payload, format!("payload-{i}").as_bytes(), "{mode:?}");
        }
    }
}
