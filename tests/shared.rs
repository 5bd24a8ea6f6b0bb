//! Shared node connections (`--shared`): the real gateway, a JSON-RPC node
//! with subscriptions (tungstenite, one thread per connection), real TLS
//! clients. Sessions share one node connection per core; ids, batches and
//! subscriptions must still reach the right client.

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// A node: answers `{"method":M,"params":P}` with `{"result":{"method":M,"params":P}}`,
/// `test_subscribe` with a subscription id and then a notification every
/// 20 ms, `test_unsubscribe` with `true`, and `test_die` by dropping the connection.
struct Node {
    url: String,
    /// WebSocket connections upgraded.
    connections: Arc<AtomicUsize>,
    /// Every call the node got: (method, raw params).
    calls: mpsc::Receiver<(String, String)>,
}

fn start_node() -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let (tx, calls) = mpsc::channel();
    let count = connections.clone();
    let subs_made = Arc::new(AtomicUsize::new(0));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let tx = tx.clone();
            let subs_made = subs_made.clone();
            let count = count.clone();
            thread::spawn(move || serve(stream, tx, subs_made, count));
        }
    });
    Node {
        url,
        connections,
        calls,
    }
}

fn serve(
    stream: std::net::TcpStream,
    calls: mpsc::Sender<(String, String)>,
    subs_made: Arc<AtomicUsize>,
    upgraded: Arc<AtomicUsize>,
) {
    stream.set_nodelay(true).unwrap();
    // (The gateway's start-up reachability check connects without upgrading.)
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    upgraded.fetch_add(1, Ordering::SeqCst);
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut subs: Vec<String> = Vec::new();
    let mut tick = Instant::now();
    let mut n = 0u64;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let answers = if t.trim_start().starts_with('[') {
                    let parts: Vec<String> = ringway::jsonrpc::elements(t.as_bytes())
                        .filter_map(|e| answer(e, &mut subs, &subs_made, &calls))
                        .collect();
                    Some(format!("[{}]", parts.join(",")))
                } else if t.contains("test_die") {
                    return;
                } else {
                    answer(t.as_bytes(), &mut subs, &subs_made, &calls)
                };
                if let Some(a) = answers {
                    ws.send(Message::Text(a)).unwrap();
                }
            }
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
        if tick.elapsed() >= Duration::from_millis(20) {
            tick = Instant::now();
            n += 1;
            for s in &subs {
                let note = format!(
                    r#"{{"jsonrpc":"2.0","method":"test_event","params":{{"subscription":"{s}","result":{n}}}}}"#
                );
                if ws.send(Message::Text(note)).is_err() {
                    return;
                }
            }
        }
    }
}

fn answer(
    msg: &[u8],
    subs: &mut Vec<String>,
    subs_made: &AtomicUsize,
    calls: &mpsc::Sender<(String, String)>,
) -> Option<String> {
    let p = ringway::jsonrpc::peek(msg).expect("the gateway forwards valid JSON-RPC");
    let method = String::from_utf8_lossy(p.method.unwrap_or(b"")).to_string();
    let params = String::from_utf8_lossy(p.params.unwrap_or(b"[]")).to_string();
    let _ = calls.send((method.clone(), params.clone()));
    let id = String::from_utf8_lossy(p.id?).to_string();
    let result = match method.as_str() {
        "test_subscribe" => {
            let s = format!("sub{}", subs_made.fetch_add(1, Ordering::SeqCst));
            subs.push(s.clone());
            format!("\"{s}\"")
        }
        "test_unsubscribe" => {
            let s = ringway::jsonrpc::param(params.as_bytes(), 0).unwrap_or(b"");
            let s = String::from_utf8_lossy(s).trim_matches('"').to_string();
            let had = subs.contains(&s);
            subs.retain(|x| *x != s);
            had.to_string()
        }
        _ => format!(r#"{{"method":"{method}","params":{params}}}"#),
    };
    Some(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#
    ))
}

fn text(m: Message) -> String {
    match m {
        Message::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

fn gateway(pki: &TestPki, node: &Node) -> Gateway {
    gateway_with(pki, node, "")
}

/// Shared mode on one worker (one node connection), no health probes, and
/// `config`: TOML that continues the `[pool]` table (or opens others).
fn gateway_with(pki: &TestPki, node: &Node, config: &str) -> Gateway {
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
    let node = start_node();
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
    let node = start_node();
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
    let node = start_node();
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
    let node = start_node();
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
    let Some(provider) = JsScript::new("polkadot.mjs", &["@polkadot/rpc-provider"], &pki) else {
        return;
    };
    let node = start_node();
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
    let node = start_node();
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
