//! Under faults: nodes that answer large, late, oddly or not at all; clients
//! that do not read. Nothing stalls, nothing grows without bound, nothing is
//! silently lost. Regressions from the "under attack and faults" report
//! (issue 11, cases 4-8 and 10), each test named for what it guards.

mod common;

use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use tungstenite::Message;

fn text(ws: &mut tungstenite::WebSocket<TlsStream>) -> Option<String> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(t),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Read until the session closes: the texts, and the close code.
fn rest(ws: &mut tungstenite::WebSocket<TlsStream>) -> (Vec<String>, Option<u16>) {
    let mut texts = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => texts.push(t),
            Ok(Message::Close(f)) => return (texts, f.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(_) => return (texts, None),
        }
    }
}

fn id_of(answer: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    v["id"].to_string()
}

/// Pinned sessions see every id, whatever the size of the request or of its
/// answer: the in-flight limit is freed by answers of 20 KB (the id after
/// the result), a node that re-serialises an id still clears it, two
/// requests with one id both count, and when the node is lost exactly the
/// unanswered requests get errors. Runs without admission checks (frames
/// stream) and with them (messages held).
#[test]
fn pinned_sessions_track_every_id_whatever_the_message_size() {
    let pki = TestPki::new();
    let script = Script::new(20_000);
    let node = Upstream::start(Behaviour::Scripted(script.clone()));
    let limited = write_config(
        &pki,
        "inflight.toml",
        "[admission]\nmax_inflight_per_connection = 4\n",
    );
    for extra in [vec![], vec!["--config", limited.to_str().unwrap()]] {
        let gw = Gateway::start(&pki, &[node.url()], &extra);
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        for id in 1..=6 {
            ws.send(Message::Text(format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"big"}}"#
            )))
            .unwrap();
            let answer = text(&mut ws).unwrap();
            assert!(
                answer.len() > 20_000 && !answer.contains("-32005"),
                "{extra:?} {id}"
            );
        }
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":1e2,"method":"renum"}"#.into(),
        ))
        .unwrap();
        assert!(text(&mut ws).unwrap().contains("100.0"));
        let long = format!(
            r#"{{"jsonrpc":"2.0","id":"long","method":"hang","params":["{}"]}}"#,
            "a".repeat(20_000)
        );
        for m in [
            r#"{"jsonrpc":"2.0","id":7,"method":"hang"}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"hang"}"#,
            long.as_str(),
            r#"{"jsonrpc":"2.0","id":99,"method":"die"}"#,
        ] {
            ws.send(Message::Text(m.into())).unwrap();
        }
        let (texts, close) = rest(&mut ws);
        let mut ids: Vec<String> = texts.iter().map(|t| id_of(t)).collect();
        ids.sort();
        assert_eq!(ids, ["\"long\"", "7", "7", "99"], "{extra:?}: {texts:?}");
        assert!(texts.iter().all(|t| t.contains("-32603")), "{texts:?}");
        assert_eq!(close, Some(1012));
    }
}

/// `--shared`: a client that never reads cannot hold more than eight times
/// `limits.max_buffered_bytes` plus one message; it is closed with 1008.
#[test]
fn shared_a_client_that_never_reads_is_closed_1008() {
    let pki = TestPki::new();
    let script = Script::new(100_000);
    let node = Upstream::start(Behaviour::Scripted(script.clone()));
    let cfg = write_config(&pki, "slow.toml", "[limits]\nmax_buffered_bytes = 65536\n");
    let gw = Gateway::start(
        &pki,
        &[node.url()],
        &["--shared", "--config", cfg.to_str().unwrap()],
    );
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for id in 0..300 {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"big"}}"#
        )))
        .unwrap();
    }
    // The gateway gives up on the client (counted) before it reads anything:
    // 30 MB of answers are more than any socket buffer holds.
    wait_for(
        Duration::from_secs(20),
        "the client closed as too slow",
        || metrics(&gw, &pki).contains(r#"ringway_rejections_total{reason="slow_reader"} 1"#),
    );
    let (texts, close) = rest(&mut ws);
    assert!(texts.len() < 300, "closed before all were delivered");
    // The close frame follows what the socket held (or, if the client's
    // buffers stay full past the close deadline, the connection just ends).
    assert!(matches!(close, Some(1008) | None), "{close:?}");
}

fn metrics(gw: &Gateway, pki: &TestPki) -> String {
    https_get(gw.addr, pki.client_config(), "/metrics").2
}

/// `--shared`: an answer that names no request of ours (`"id":null`, an
/// id nobody sent) is counted, and the request it should have answered
/// gets its error at the request timeout, in its batch's place, while the
/// node answers everything else.
#[test]
fn shared_answers_naming_no_request_are_counted_and_their_requests_get_errors() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Scripted(Script::new(10)));
    let cfg = write_config(&pki, "sweep.toml", "[pool]\nrequest_timeout_ms = 1000\n");
    let gw = Gateway::start(
        &pki,
        &[node.url()],
        &["--shared", "--config", cfg.to_str().unwrap()],
    );
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    let start = std::time::Instant::now();
    ws.send(Message::Text(
        r#"[{"jsonrpc":"2.0","id":1,"method":"batchfail"},{"jsonrpc":"2.0","id":2,"method":"x"}]"#
            .into(),
    ))
    .unwrap();
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":5,"method":"stray"}"#.into(),
    ))
    .unwrap();
    // The session goes on meanwhile.
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":6,"method":"x"}"#.into(),
    ))
    .unwrap();
    assert_eq!(id_of(&text(&mut ws).unwrap()), "6");
    // The two errors come at one sweep, in either order.
    let mut two = [text(&mut ws).unwrap(), text(&mut ws).unwrap()];
    let took = start.elapsed();
    two.sort_by_key(|t| !t.starts_with('['));
    let [batch, stray] = two;
    let v: serde_json::Value = serde_json::from_str(&batch).unwrap();
    assert_eq!(v[0]["id"], 1, "{batch}");
    assert_eq!(v[0]["error"]["code"], -32603, "{batch}");
    assert_eq!(v[1]["id"], 2, "{batch}");
    assert_eq!(v[1]["result"], "xxxxxxxxxx", "{batch}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(
        stray.contains(r#""id":5"#) && stray.contains("-32603"),
        "{stray}"
    );
    let metrics = metrics(&gw, &pki);
    assert!(
        metrics.contains("ringway_unmatched_answers_total 2"),
        "{metrics}"
    );
}

/// `--shared`: an id that is an object, array or boolean is not a JSON-RPC
/// id: -32600, as a node would answer.
#[test]
fn shared_invalid_ids_get_32600() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Scripted(Script::new(10)));
    let gw = Gateway::start(&pki, &[node.url()], &["--shared"]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for id in [r#"{"a":1}"#, "[1]", "true"] {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"x"}}"#
        )))
        .unwrap();
        let answer = text(&mut ws).unwrap();
        assert!(
            answer.contains("-32600") && answer.contains(r#""id":null"#),
            "{id}: {answer}"
        );
    }
}

const FAST_HEALTH: &str =
    "[health]\ninterval_ms = 100\ntimeout_ms = 500\nfall = 2\nrise = 2\nmax_lag = 5\n";

fn health(gw: &Gateway, pki: &TestPki) -> (u16, String) {
    let (status, _, body) = https_get(gw.addr, pki.client_config(), "/health");
    (status, body)
}

/// A backend that answers every call with `"0x1"` (JSON-RPC, but no header)
/// stays in service with an unknown head, instead of black-holing the pool.
#[test]
fn a_probe_answer_without_a_block_number_keeps_the_node_in_service() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Answer("\"0x1\"".into()));
    let cfg = write_config(&pki, "probe.toml", FAST_HEALTH);
    let gw = Gateway::start(&pki, &[node.url()], &["--config", cfg.to_str().unwrap()]);
    wait_for(Duration::from_secs(5), "three probes", || {
        health(&gw, &pki).1.contains(r#""probes":3"#)
    });
    let (status, body) = health(&gw, &pki);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""up":true"#), "{body}");
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":3,"method":"x"}"#.into(),
    ))
    .unwrap();
    assert!(text(&mut ws).unwrap().contains("0x1"));
}

/// Panic routing: when every node fails its checks but still accepts
/// sessions (here: a lone node saying it is syncing), sessions still go to
/// it, open ones are not moved away, and /health says degraded.
#[test]
fn with_every_node_down_by_probes_sessions_still_go_to_the_best_candidate() {
    let pki = TestPki::new();
    let chain = FakeChain::new(50);
    let node = Upstream::start(Behaviour::Substrate(chain.clone()));
    let cfg = write_config(&pki, "panic.toml", FAST_HEALTH);
    for mode in [None, Some("--shared")] {
        let mut args = vec!["--config", cfg.to_str().unwrap()];
        args.extend(mode);
        let gw = Gateway::start(&pki, &[node.url()], &args);
        let mut open = ws_connect(&gw, pki.client_config(), "/");
        chain.syncing.store(true, Relaxed);
        wait_for(Duration::from_secs(5), "the node marked down", || {
            health(&gw, &pki).1.contains(r#""status":"degraded""#)
        });
        assert_eq!(health(&gw, &pki).0, 503);
        for ws in [&mut open, &mut ws_connect(&gw, pki.client_config(), "/")] {
            ws.send(Message::Text(
                r#"{"jsonrpc":"2.0","id":4,"method":"chain_getHeader"}"#.into(),
            ))
            .unwrap();
            assert!(text(ws).unwrap().contains(r#""id":4"#), "{mode:?}");
        }
        chain.syncing.store(false, Relaxed);
        wait_for(Duration::from_secs(5), "the node back", || {
            health(&gw, &pki).1.contains(r#""status":"ok""#)
        });
    }
}

/// A node that takes HTTP requests and never answers (SIGSTOPped): each
/// request gets a JSON-RPC error with its id after `pool.request_timeout_ms`
/// (504), not silence.
#[test]
fn http_requests_to_a_hung_node_time_out_with_their_ids() {
    let pki = TestPki::new();
    // Accepts connections (the kernel does) and never reads or answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", hung.local_addr().unwrap());
    let cfg = write_config(&pki, "hung.toml", "[pool]\nrequest_timeout_ms = 500\n");
    let gw = Gateway::start(
        &pki,
        &[url],
        &["--config", cfg.to_str().unwrap(), "--health-probe", "off"],
    );
    let body = r#"[{"jsonrpc":"2.0","id":"a","method":"x"},{"jsonrpc":"2.0","id":2,"method":"y"}]"#;
    let mut s = tls_connect(gw.addr, pki.client_config());
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (status, _, answer) = read_response(&mut s);
    assert_eq!(status, 504, "{answer}");
    assert!(
        answer.contains(r#""id":"a""#) && answer.contains(r#""id":2"#),
        "{answer}"
    );
    assert!(answer.contains("no answer within 500 ms"), "{answer}");
    drop(hung);
}

/// A node that takes WebSocket requests and never answers (a stopped
/// process): after `pool.request_timeout_ms` with nothing from it (a ping
/// halfway included), the requests waiting get errors with their ids and the
/// client 1012, in both modes, instead of waiting forever.
#[test]
fn websocket_requests_to_a_hung_node_fail_after_the_request_timeout() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Frozen);
    let cfg = write_config(
        &pki,
        "frozen.toml",
        "[pool]\nrequest_timeout_ms = 600\n[health]\ninterval_ms = 100\n",
    );
    for mode in [None, Some("--shared")] {
        let mut args = vec!["--config", cfg.to_str().unwrap(), "--health-probe", "off"];
        args.extend(mode);
        let gw = Gateway::start(&pki, &[node.url()], &args);
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":"w","method":"x"}"#.into(),
        ))
        .unwrap();
        let (texts, close) = rest(&mut ws);
        assert_eq!(texts.len(), 1, "{mode:?}: {texts:?}");
        assert!(
            texts[0].contains(r#""id":"w""#) && texts[0].contains("-32603"),
            "{texts:?}"
        );
        assert_eq!(close, Some(1012), "{mode:?}");
    }
}

/// Balancing counts how slowly a node answers as well as its sessions: a
/// node answering its probes in 60 ms gets far fewer new sessions than one
/// answering at once (a node that starts to hang is avoided before its
/// checks mark it down).
#[test]
fn a_slow_node_gets_fewer_new_sessions() {
    let pki = TestPki::new();
    let fast = Upstream::start(Behaviour::Echo);
    let slow = Upstream::start(Behaviour::Slow(Duration::from_millis(60)));
    let cfg = write_config(&pki, "slow-node.toml", FAST_HEALTH);
    let gw = Gateway::start(
        &pki,
        &[fast.url(), slow.url()],
        &["--config", cfg.to_str().unwrap(), "--workers", "1"],
    );
    wait_for(Duration::from_secs(10), "three probes of each node", || {
        let body = health(&gw, &pki).1;
        let probes: Vec<u64> = body
            .split(r#""probes":"#)
            .skip(1)
            .filter_map(|r| r.split(['}', ',']).next()?.parse().ok())
            .collect();
        probes.len() == 2 && probes.iter().all(|&n| n >= 3)
    });
    let held: Vec<_> = (0..12)
        .map(|_| ws_connect(&gw, pki.client_config(), "/"))
        .collect();
    let (on_fast, on_slow) = (fast.session_count(), slow.session_count());
    assert_eq!(on_fast + on_slow, 12);
    assert!(on_fast >= 9, "fast {on_fast} slow {on_slow}");
    drop(held);
}

/// A pinned session whose client reads slowly is held by backpressure, not
/// taken for a hung node: the gateway stops reading the node, so the node's
/// silence past the request timeout means nothing. Every answer arrives.
#[test]
fn a_slow_reader_is_not_mistaken_for_a_hung_node() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Scripted(Script::new(100_000)));
    let cfg = write_config(
        &pki,
        "slow-reader.toml",
        "[pool]\nrequest_timeout_ms = 400\n[limits]\nmax_buffered_bytes = 65536\n[health]\ninterval_ms = 100\n",
    );
    let gw = Gateway::start(
        &pki,
        &[node.url()],
        &["--config", cfg.to_str().unwrap(), "--health-probe", "off"],
    );
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for id in 0..100 {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"big"}}"#
        )))
        .unwrap();
    }
    // Not reading, for well past the request timeout (nothing to wait for:
    // the point is that nothing happens meanwhile).
    std::thread::sleep(Duration::from_millis(1500));
    for id in 0..100 {
        let answer = text(&mut ws).unwrap_or_else(|| panic!("closed before answer {id}"));
        assert_eq!(id_of(&answer), id.to_string());
    }
}

/// `--shared`: past `pool.shared_max_subscriptions` on its connection, a
/// session's next subscription opens on another connection to the node
/// (Substrate allows 1,024 per connection); each is ended where it lives.
/// (A stream of the kind that is merged would be one node subscription:
/// `tests/shared.rs`.)
#[test]
fn shared_subscriptions_spread_over_connections_at_their_cap() {
    let pki = TestPki::new();
    let script = Script::new(10);
    let node = Upstream::start(Behaviour::Scripted(script.clone()));
    let cfg = write_config(&pki, "subs.toml", "[pool]\nshared_max_subscriptions = 4\n");
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
    let mut subs = Vec::new();
    for id in 0..10 {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"test_subscribeEvents","params":[]}}"#
        )))
        .unwrap();
        subs.push(result_string(&text(&mut ws).unwrap()));
    }
    assert_eq!(script.subscriptions.load(Relaxed), 10);
    assert!(script.most_per_connection.load(Relaxed) <= 4);
    for (id, sub) in subs.iter().enumerate() {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"test_unsubscribeEvents","params":["{sub}"]}}"#,
            100 + id
        )))
        .unwrap();
        assert!(text(&mut ws).unwrap().contains("true"), "{sub}");
    }
}

/// Guards the accounting of large answers on a routed pinned session: an
/// answer over 64 KiB (held only in part) skipped its id, so after 256 of
/// them every request was refused with `max_inflight_per_connection`.
#[test]
fn large_answers_on_a_routed_session_leave_nothing_in_flight() {
    let pki = TestPki::new();
    let pruned_chain = FakeChain::node(1000, 16, "pruned");
    pruned_chain.metadata_bytes.store(128 * 1024, Relaxed);
    let pruned = Upstream::start(Behaviour::Substrate(pruned_chain));
    let archive = Upstream::start(Behaviour::Substrate(FakeChain::node(
        1000,
        u64::MAX,
        "archive",
    )));
    let cfg = write_config(
        &pki,
        "routed.toml",
        &format!(
            "[cache]\nenabled = false\n[[node]]\nurl = \"{}\"\nrole = \"pruned\"\npruning = 256\n\
             [[node]]\nurl = \"{}\"\nrole = \"archive\"\n",
            pruned.url(),
            archive.url()
        ),
    );
    let gw = Gateway::start(&pki, &[], &["--config", cfg.to_str().unwrap()]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for id in 1..=300 {
        ws.send(Message::Text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"state_getMetadata","params":[]}}"#
        )))
        .unwrap();
        let answer = match ws.read() {
            Ok(Message::Text(t)) => t,
            other => panic!("{id}: {other:?}"),
        };
        assert!(
            answer.len() > 128 * 1024 && answer.contains(&format!(r#""id":{id}"#)),
            "{id}: {}",
            &answer[..answer.len().min(200)]
        );
    }
}
