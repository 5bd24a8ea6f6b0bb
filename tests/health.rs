//! Health checks and failover with several nodes: the real gateway, real
//! WebSocket nodes that answer the Substrate health probes.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// Poll `f` every 50 ms until it is true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn get_health(gw: &Gateway, pki: &TestPki) -> (u16, String) {
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut s);
    let _ = s.read(&mut [0u8; 1]);
    (status, body)
}

const FAST_HEALTH: &str =
    "[health]\ninterval_ms = 100\ntimeout_ms = 500\nfall = 2\nrise = 2\nmax_lag = 5\n";

#[test]
fn health_endpoint_reports_every_node() {
    let pki = TestPki::new();
    let chain = FakeChain::new(1000);
    let a = Upstream::start(Behaviour::Substrate(chain.clone()));
    let b = Upstream::start(Behaviour::Substrate(FakeChain::new(1000)));
    let cfg = write_config(&pki, "h.toml", FAST_HEALTH);
    let gw = Gateway::start(
        &pki,
        &[a.url()],
        &["--config", cfg.to_str().unwrap(), "--archive", &b.url()],
    );
    assert!(eventually(Duration::from_secs(5), || get_health(&gw, &pki)
        .1
        .contains(r#""head":1000"#)));
    let (status, body) = get_health(&gw, &pki);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"ok""#), "{body}");
    assert!(
        body.contains(r#""role":"pruned""#) && body.contains(r#""role":"archive""#),
        "{body}"
    );
    assert!(body.contains(&a.url()) && body.contains(&b.url()), "{body}");
}

#[test]
fn a_lagging_node_is_marked_down_and_its_sessions_move() {
    let pki = TestPki::new();
    let fast = FakeChain::new(1000);
    let slow = FakeChain::new(1000);
    let a = Upstream::start(Behaviour::Substrate(fast.clone()));
    let b = Upstream::start(Behaviour::Substrate(slow.clone()));
    let cfg = write_config(&pki, "lag.toml", FAST_HEALTH);
    let gw = Gateway::start(
        &pki,
        &[a.url(), b.url()],
        &["--config", cfg.to_str().unwrap(), "--workers", "1"],
    );
    assert!(eventually(Duration::from_secs(5), || get_health(&gw, &pki)
        .1
        .matches(r#""head":1000"#)
        .count()
        == 2));
    // Sessions on both nodes.
    let mut sessions: Vec<_> = (0..6)
        .map(|_| ws_connect(&gw, pki.client_config(), "/"))
        .collect();
    let on_b = b.session_count();
    assert!(on_b > 0, "some sessions on b");
    // b stops following the chain.
    fast.head.store(1020, Relaxed);
    assert!(eventually(Duration::from_secs(5), || get_health(&gw, &pki)
        .1
        .contains(r#""lag":20"#)));
    let (_, body) = get_health(&gw, &pki);
    assert!(body.contains(r#""up":false"#), "{body}");
    // Its sessions are closed with 1012; the others stay.
    let mut closed_1012 = 0;
    for ws in sessions.iter_mut() {
        ws.get_mut()
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        match ws.read() {
            Ok(Message::Close(Some(f))) if u16::from(f.code) == 1012 => closed_1012 += 1,
            _ => {}
        }
    }
    assert_eq!(
        closed_1012, on_b,
        "every session on the lagging node, and only those"
    );
    // New sessions go to a.
    let _ = b.seen.try_iter().count();
    for _ in 0..4 {
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        ws.send(Message::Text(r#"{"id":1,"method":"x"}"#.into()))
            .unwrap();
        assert!(matches!(ws.read().unwrap(), Message::Text(_)));
    }
    let new_on_b = b.session_count();
    assert_eq!(new_on_b, 0);
    // Caught up: back in service.
    slow.head.store(1020, Relaxed);
    assert!(eventually(Duration::from_secs(5), || !get_health(
        &gw, &pki
    )
    .1
    .contains(r#""up":false"#)));
}

#[test]
fn a_dead_node_is_skipped_and_all_dead_gives_502_naming_each() {
    let pki = TestPki::new();
    let chain_a = FakeChain::new(50);
    let chain_b = FakeChain::new(50);
    let a = Upstream::start(Behaviour::Substrate(chain_a.clone()));
    let b = Upstream::start(Behaviour::Substrate(chain_b.clone()));
    let cfg = write_config(&pki, "dead.toml", FAST_HEALTH);
    let gw = Gateway::start(
        &pki,
        &[a.url(), b.url()],
        &["--config", cfg.to_str().unwrap()],
    );
    chain_a.dead.store(true, Relaxed);
    assert!(eventually(Duration::from_secs(5), || get_health(&gw, &pki)
        .1
        .contains(r#""up":false"#)));
    for _ in 0..4 {
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        ws.send(Message::Text(r#"{"id":1,"method":"y"}"#.into()))
            .unwrap();
        assert!(matches!(ws.read().unwrap(), Message::Text(_)));
    }
    chain_b.dead.store(true, Relaxed);
    assert!(eventually(Duration::from_secs(5), || get_health(&gw, &pki)
        .0
        == 503));
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(upgrade_request("/", |_| {}).as_bytes())
        .unwrap();
    // Panic routing: with no node up, every node is tried anyway; both
    // refuse, and the client learns why from each.
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("no upstream node accepted the connection"),
        "{body}"
    );
    assert_eq!(body.matches("127.0.0.1:").count(), 2, "{body}");
}

#[test]
fn a_backend_that_is_not_a_json_rpc_node_counts_as_alive() {
    // An echo server answers the probe with its own request: no result, no
    // error. It stays in service (head unknown) rather than being marked down.
    let pki = TestPki::new();
    let echo = Upstream::start(Behaviour::Echo);
    let cfg = write_config(&pki, "echo.toml", FAST_HEALTH);
    let gw = Gateway::start(&pki, &[echo.url()], &["--config", cfg.to_str().unwrap()]);
    // More probes than `fall`: a node marked down would show by now.
    assert!(eventually(Duration::from_secs(5), || get_health(&gw, &pki)
        .1
        .contains(r#""probes":4"#)));
    let (status, body) = get_health(&gw, &pki);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""up":true"#) && body.contains(r#""probes":"#),
        "{body}"
    );
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"still_served"}"#;
    ws.send(Message::Text(call.into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text(call.into()));
}
