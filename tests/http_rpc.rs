//! JSON-RPC over HTTP on the gateway's port: routing by method and block,
//! retry on a pruned node's "State already discarded", keep-alive, limits, CORS.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

fn post(s: &mut TlsStream, body: &str, extra: &str) -> (u16, String, String) {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    read_response(s)
}

fn storage_at(height: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"state_getStorage","params":["0x26aa","0x{height:064x}"]}}"#
    )
}

/// A pruned node that keeps 16 blocks (the gateway is told 256, so it will
/// route some old blocks to it and must retry), and an archive node.
fn two_tier(pki: &TestPki) -> (Gateway, Upstream, Upstream) {
    let (gw, pruned, archive, _) = two_tier_with_chain(pki);
    (gw, pruned, archive)
}

fn two_tier_with_chain(pki: &TestPki) -> (Gateway, Upstream, Upstream, std::sync::Arc<FakeChain>) {
    let archive_chain = FakeChain::node(1000, u64::MAX, "archive");
    let pruned = Upstream::start(Behaviour::Substrate(FakeChain::node(1000, 16, "pruned")));
    let archive = Upstream::start(Behaviour::Substrate(archive_chain.clone()));
    let cfg = write_config(
        pki,
        "tier.toml",
        &format!(
            "[health]\ninterval_ms = 100\n[http]\nmax_body_bytes = 4096\ncors_origins = [\"https://polkadot.js.org\"]\n\
             [[node]]\nurl = \"{}\"\nrole = \"pruned\"\npruning = 256\n[[node]]\nurl = \"{}\"\nrole = \"archive\"\n",
            pruned.url(),
            archive.url()
        ),
    );
    let gw = Gateway::start(pki, &[], &["--config", cfg.to_str().unwrap()]);
    // Wait until the health checks have seen the head (and filled the hash window).
    let start = Instant::now();
    loop {
        let (_, _, body) = https_get(gw.addr, pki.client_config(), "/health");
        if body.matches(r#""head":1000"#).count() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "health never saw the heads: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and until the recent-hash window has the head's hashes (a recent
    // block is routed to the pruned node only once its hash is known).
    let start = Instant::now();
    loop {
        let mut s = tls_connect(gw.addr, pki.client_config());
        let (_, _, body) = post(&mut s, &storage_at(999), "");
        if body.contains("pruned@999") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "hash window never filled: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (gw, pruned, archive, archive_chain)
}

#[test]
fn requests_are_routed_by_block_and_retried_on_pruned_state_errors() {
    let pki = TestPki::new();
    let (gw, _pruned, _archive) = two_tier(&pki);
    let mut s = tls_connect(gw.addr, pki.client_config());
    // Recent block: the pruned node.
    let (status, head, body) = post(&mut s, &storage_at(995), "");
    assert_eq!(status, 200, "{head}{body}");
    assert!(body.contains("pruned@995"), "{body}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "kept alive: {head}"
    );
    // 50 blocks back: within the gateway's idea of pruning (256), so the pruned
    // node is asked, says "State already discarded", and archive answers.
    let (_, _, body) = post(&mut s, &storage_at(950), "");
    assert!(body.contains("archive@950"), "{body}");
    assert!(
        !body.contains("discarded"),
        "the pruned error never reaches the client: {body}"
    );
    // A hash outside the recent window: straight to archive.
    let (_, _, body) = post(&mut s, &storage_at(10), "");
    assert!(body.contains("archive@10"), "{body}");
    // A batch with one old element is split by role and answered in order.
    let batch = format!(r#"[{},{}]"#, storage_at(999), storage_at(20));
    let (status, _, body) = post(&mut s, &batch, "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["result"], "pruned@999", "{body}");
    assert_eq!(v[1]["result"], "archive@20", "{body}");
    // Methods without a block: pruned.
    let (_, _, body) = post(
        &mut s,
        r#"{"jsonrpc":"2.0","id":"x","method":"system_health","params":[]}"#,
        "",
    );
    assert!(
        body.contains(r#""id":"x""#) && body.contains("isSyncing"),
        "{body}"
    );
}

#[test]
fn http_limits_and_cors() {
    let pki = TestPki::new();
    let (gw, _pruned, _archive) = two_tier(&pki);
    let mut s = tls_connect(gw.addr, pki.client_config());
    let (status, _, _) = post(&mut s, &"x".repeat(5000), "");
    assert_eq!(status, 413);

    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}").unwrap();
    assert_eq!(read_response(&mut s).0, 415);

    let mut s = tls_connect(gw.addr, pki.client_config());
    let (status, head, _) = post(
        &mut s,
        r#"{"id":1,"method":"system_health"}"#,
        "Origin: https://polkadot.js.org\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("Access-Control-Allow-Origin: https://polkadot.js.org"),
        "{head}"
    );
    let (_, head, _) = post(
        &mut s,
        r#"{"id":1,"method":"system_health"}"#,
        "Origin: https://evil.example\r\n",
    );
    assert!(!head.contains("Access-Control-Allow-Origin"), "{head}");
    s.write_all(b"OPTIONS / HTTP/1.1\r\nHost: localhost\r\nOrigin: https://polkadot.js.org\r\nAccess-Control-Request-Method: POST\r\n\r\n").unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 204);
    assert!(
        head.contains("Access-Control-Allow-Methods: POST"),
        "{head}"
    );

    // Chunked request bodies.
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
          10\r\n{\"id\":3,\"method\"\r\n11\r\n:\"system_health\"}\r\n0\r\n\r\n",
    )
    .unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(body.contains(r#""id":3"#), "{body}");

    // Expect: 100-continue gets the interim 100 at once, then the answer.
    let body = r#"{"id":4,"method":"system_health"}"#;
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let asked = Instant::now();
    let (status, _, _) = read_response(&mut s);
    assert_eq!(status, 100);
    assert!(asked.elapsed() < Duration::from_millis(500));
    s.write_all(body.as_bytes()).unwrap();
    let (status, _, answer) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(answer.contains(r#""id":4"#), "{answer}");
    // An expectation the gateway cannot meet.
    let (status, _, _) = post(&mut s, body, "Expect: a-miracle\r\n");
    assert_eq!(status, 417);
}

mod websocket {
    use super::*;
    use std::collections::HashMap;
    use tungstenite::Message;

    fn text(m: Message) -> String {
        match m {
            Message::Text(t) => t,
            other => panic!("expected text, got {other:?}"),
        }
    }

    fn storage(id: u64, height: u64) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"state_getStorage","params":["0x26aa","0x{height:064x}"]}}"#
        )
    }

    #[test]
    fn each_message_goes_to_the_node_that_can_answer_it() {
        let pki = TestPki::new();
        let (gw, pruned, archive) = two_tier(&pki);
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        assert_eq!(pruned.session_count(), 1);
        assert_eq!(
            archive.session_count(),
            0,
            "the archive connection is opened lazily"
        );
        ws.send(Message::Text(storage(1, 995))).unwrap();
        assert!(text(ws.read().unwrap()).contains("pruned@995"));
        assert_eq!(archive.session_count(), 0);
        // Old block: archive (connection opened now).
        ws.send(Message::Text(storage(2, 10))).unwrap();
        let answer = text(ws.read().unwrap());
        assert!(
            answer.contains("archive@10") && answer.contains(r#""id":2"#),
            "{answer}"
        );
        assert_eq!(archive.session_count(), 1);
        // Routed to pruned, refused there ("State already discarded"), retried on archive.
        ws.send(Message::Text(storage(3, 950))).unwrap();
        let answer = text(ws.read().unwrap());
        assert!(
            answer.contains("archive@950") && !answer.contains("discarded"),
            "{answer}"
        );
        // Pipelined, mixed: every id answered once, by the right node.
        let plan: Vec<(u64, u64)> = (10..40)
            .map(|i| (i, if i % 3 == 0 { 5 + i } else { 990 + i % 10 }))
            .collect();
        for (id, h) in &plan {
            ws.send(Message::Text(storage(*id, *h))).unwrap();
        }
        let mut got = HashMap::new();
        while got.len() < plan.len() {
            let a = text(ws.read().unwrap());
            let p = ringway::jsonrpc::peek(a.as_bytes()).unwrap();
            let id: u64 = std::str::from_utf8(p.id.unwrap()).unwrap().parse().unwrap();
            assert!(got.insert(id, a).is_none(), "id {id} answered twice");
        }
        for (id, h) in &plan {
            let want = if *h < 500 {
                format!("archive@{h}")
            } else {
                format!("pruned@{h}")
            };
            assert!(got[id].contains(&want), "id {id}: {}", got[id]);
        }
        // A batch with one old element is split: each element answered by
        // the node that can, as one array in the client's order.
        ws.send(Message::Text(format!(
            "[{},{}]",
            storage(50, 999),
            storage(51, 30)
        )))
        .unwrap();
        let answer = text(ws.read().unwrap());
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v[0]["id"], 50, "{answer}");
        assert_eq!(v[0]["result"], "pruned@999", "{answer}");
        assert_eq!(v[1]["id"], 51, "{answer}");
        assert_eq!(v[1]["result"], "archive@30", "{answer}");
        // Other methods: pruned.
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":60,"method":"system_health","params":[]}"#.into(),
        ))
        .unwrap();
        assert!(text(ws.read().unwrap()).contains("isSyncing"));
    }

    #[test]
    fn subscriptions_stay_on_the_pruned_node_while_archive_requests_go_elsewhere() {
        let pki = TestPki::new();
        let (gw, _pruned, archive) = two_tier(&pki);
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":1,"method":"chain_subscribeNewHeads","params":[]}"#.into(),
        ))
        .unwrap();
        assert!(text(ws.read().unwrap()).contains(r#""result":"sub-1""#));
        let mut notes = Vec::new();
        let mut answers = Vec::new();
        for i in 0..10u64 {
            ws.send(Message::Text(storage(100 + i, 10 + i))).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        while answers.len() < 10 || notes.len() < 5 {
            let m = text(ws.read().unwrap());
            if m.contains("chain_newHead") {
                notes.push(m);
            } else {
                answers.push(m);
            }
        }
        assert_eq!(
            archive.session_count(),
            1,
            "archive answers from one lazily opened connection"
        );
        for (i, a) in answers.iter().enumerate() {
            assert!(a.contains("archive@"), "{i}: {a}");
        }
        // Notifications keep coming in order from the node that created the subscription.
        let numbers: Vec<u64> = notes
            .iter()
            .map(|n| {
                let at = n.find(r#""number":"0x"#).unwrap() + 12;
                let end = at + n[at..].find('"').unwrap();
                u64::from_str_radix(&n[at..end], 16).unwrap()
            })
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }

    #[test]
    fn a_lost_archive_node_answers_with_errors_and_the_session_goes_on() {
        use std::sync::atomic::Ordering::Relaxed;
        let pki = TestPki::new();
        let (gw, _pruned, _archive, archive_chain) = two_tier_with_chain(&pki);
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        ws.send(Message::Text(storage(1, 10))).unwrap();
        assert!(text(ws.read().unwrap()).contains("archive@10"));
        // The archive node drops its connections (its server checks between reads).
        archive_chain.dead.store(true, Relaxed);
        std::thread::sleep(Duration::from_millis(400));
        // An archive-bound request still gets an answer with its id: an error
        // (the pruned node's "state discarded", as no archive is reachable).
        ws.send(Message::Text(storage(2, 20))).unwrap();
        let answer = text(ws.read().unwrap());
        assert!(
            answer.contains(r#""id":2"#) && answer.contains(r#""error""#),
            "{answer}"
        );
        // The session itself goes on with the pruned node.
        ws.send(Message::Text(storage(3, 999))).unwrap();
        assert!(text(ws.read().unwrap()).contains("pruned@999"));
        // The archive node comes back: once its health checks pass again, the
        // same session opens another archive connection and old state is
        // served again.
        archive_chain.dead.store(false, Relaxed);
        let start = std::time::Instant::now();
        for id in 4.. {
            ws.send(Message::Text(storage(id, 30))).unwrap();
            let answer = text(ws.read().unwrap());
            assert!(answer.contains(&format!(r#""id":{id}"#)), "{answer}");
            if answer.contains("archive@30") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no new archive connection: {answer}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Guards one rule for what a node is told of the client: over HTTP the
/// node saw its own address as Host, only the peer in X-Forwarded-For, and
/// no X-Forwarded-Proto (over WebSocket it saw all three as nginx sends them).
#[test]
fn a_node_is_told_of_an_http_client_as_of_a_websocket_one() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Substrate(FakeChain::new(100)));
    let gw = Gateway::start(&pki, &[node.url()], &[]);
    let mut s = tls_connect(gw.addr, pki.client_config());
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"system_name","params":[]}"#;
    let (status, _, answer) = post(&mut s, body, "X-Forwarded-For: 203.0.113.9\r\n");
    assert_eq!(status, 200, "{answer}");
    let seen = loop {
        let seen = node
            .seen
            .recv_timeout(TIMEOUT)
            .expect("the node saw the POST");
        if seen.path == "/" && seen.header("content-type").is_some() {
            break seen;
        }
    };
    assert_eq!(seen.header("host"), Some("localhost"));
    assert_eq!(seen.header("x-forwarded-host"), Some("localhost"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}
