//! Several gateways on one real `redis-server` (`[cluster]`): a key's rate
//! and quota hold across three of them within the README's bound, `/usage`
//! on any of them reports the cluster's totals, equal to what clients were
//! answered; Redis stopped and started again empty loses nothing and stops
//! nothing; a key disabled on one gateway closes its sessions on all.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tungstenite::Message;

const ALICE: &str = "alice-0123456789abcdef";
const BOB: &str = "bob-0123456789abcdef00";
const CAROL: &str = "carol-0123456789abcdef";
const DAVE: &str = "dave-0123456789abcdef0";
const ERIN: &str = "erin-0123456789abcdef0";

const KEYS: &str = "[[key]]\nname = \"alice\"\nkey = \"alice-0123456789abcdef\"\nrate = 50\n\n[[key]]\nname = \"bob\"\nkey = \"bob-0123456789abcdef00\"\nquota = 1000\n\n[[key]]\nname = \"carol\"\nkey = \"carol-0123456789abcdef\"\n\n[[key]]\nname = \"dave\"\nkey = \"dave-0123456789abcdef0\"\n\n[[key]]\nname = \"erin\"\nkey = \"erin-0123456789abcdef0\"\nrate = 50\n";

/// A gateway of the cluster on `redis` (its metrics listener's address too).
fn gateway(pki: &TestPki, redis: &Redis, node: &str, i: usize) -> (Gateway, String) {
    gateway_with(pki, redis, node, i, "")
}

/// The same, with more configuration (`extra`, before `[cluster]`).
fn gateway_with(
    pki: &TestPki,
    redis: &Redis,
    node: &str,
    i: usize,
    extra: &str,
) -> (Gateway, String) {
    gateway_in(
        pki,
        redis,
        node,
        &format!("gw{i}"),
        extra,
        "sync_ms = 100\n",
    )
}

/// Gateway `name` of the cluster: `extra` before `[cluster]`, `more` in it.
fn gateway_in(
    pki: &TestPki,
    redis: &Redis,
    node: &str,
    name: &str,
    extra: &str,
    more: &str,
) -> (Gateway, String) {
    let keys = write_config(pki, "cluster-keys.toml", KEYS);
    let cfg = write_config(
        pki,
        &format!("cluster-{name}.toml"),
        &format!(
            "[server]\nmetrics_listen = \"127.0.0.1:0\"\n[keys]\nfile = \"{}\"\n{extra}\n[cluster]\nredis = \"{}\"\ninstance = \"{name}\"\n{more}",
            keys.display(),
            redis.url()
        ),
    );
    let gw = Gateway::start(
        pki,
        &[node.to_string()],
        &["--config", cfg.to_str().unwrap()],
    );
    let metrics = printed_addr(&gw, "metrics on http://");
    (gw, metrics)
}

fn health(metrics: &str) -> Value {
    serde_json::from_str(&plain_get(metrics, "/health").2).unwrap()
}

fn usage(metrics: &str, key: &str) -> Value {
    let v: Value = serde_json::from_str(&plain_get(metrics, "/usage").2).unwrap();
    v["keys"][key].clone()
}

/// Three gateways that see each other.
fn three(pki: &TestPki, redis: &Redis, node: &str) -> Vec<(Gateway, String)> {
    let gws: Vec<_> = (0..3).map(|i| gateway(pki, redis, node, i)).collect();
    for (_, m) in &gws {
        wait_for(TIMEOUT, "three gateways in the cluster", || {
            health(m)["cluster"]["instances"] == 3
        });
    }
    gws
}

/// One call: true when answered, false when refused with -32005.
fn call(ws: &mut tungstenite::WebSocket<TlsStream>, id: u64) -> bool {
    ws.send(Message::text(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"echo"}}"#
    )))
    .unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["id"], id, "{t}");
            return v["error"]["code"] != -32005;
        }
    }
}

/// A session with `key` to each gateway at `addrs`, each driven by `drive`
/// on a thread of its own: the sum of what they return.
fn on_each(
    pki: &TestPki,
    addrs: &[std::net::SocketAddr],
    key: &'static str,
    drive: fn(&mut tungstenite::WebSocket<TlsStream>) -> usize,
) -> usize {
    addrs
        .iter()
        .map(|&addr| {
            let cfg = pki.client_config();
            thread::spawn(move || {
                let url = format!("wss://localhost:{}/{key}", addr.port());
                let stream = tls_connect(addr, cfg);
                let mut ws = tungstenite::client::client(url, stream).unwrap().0;
                drive(&mut ws)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .sum()
}

const SECS: f64 = 10.0;

#[test]
fn three_gateways_hold_one_rate_and_one_quota_and_report_one_usage() {
    let pki = TestPki::new();
    let redis = Redis::start();
    let node = Upstream::start(Behaviour::Echo);
    let gws = three(&pki, &redis, &node.url());
    let addrs: Vec<_> = gws.iter().map(|(g, _)| g.addr).collect();

    // Rate 50/s (burst 50), driven at 300 calls/s over the three for 10 s:
    // one budget answers at most 50 x 10 + 50 (+ the README's sync bound,
    // 3 x 50 x 0.1 s): 565, within the 700 asked; three separate ones
    // would answer about 1,650.
    let secs = SECS;
    let answered = on_each(&pki, &addrs, ALICE, |ws| {
        let start = Instant::now();
        let mut ok = 0;
        for i in 0..(SECS * 100.0) as u64 {
            let due = start + Duration::from_millis(i * 10);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            ok += usize::from(call(ws, i));
        }
        ok
    });
    let bound = (50.0 * secs + 50.0 + 3.0 * 50.0 * 0.1) as usize;
    eprintln!("rate 50/s for {secs} s over three gateways: {answered} answered (bound {bound})");
    assert!(
        answered <= bound,
        "{answered} answered, over the bound {bound}"
    );
    assert!(answered >= 400, "only {answered} answered");

    // Rate 50/s again, for a key whose one client reaches one gateway (a
    // single WebSocket behind an L4 balancer), driven at 100 calls/s for
    // 4 s: that gateway gets most of the rate once the shares follow the
    // calls (an even share would answer about 50 / 3 x 4 + 17 = 83).
    let one = on_each(&pki, &addrs[..1], ERIN, |ws| {
        let start = Instant::now();
        let mut ok = 0;
        for i in 0..400 {
            let due = start + Duration::from_millis(i * 10);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            ok += usize::from(call(ws, i));
        }
        ok
    });
    let one_bound = (50.0 * 4.0 + 50.0 + 3.0 * 50.0 * 0.1) as usize;
    eprintln!(
        "rate 50/s for 4 s through one of three gateways: {one} answered (bound {one_bound})"
    );
    assert!(
        one <= one_bound,
        "{one} answered, over the bound {one_bound}"
    );
    assert!(
        one >= 160,
        "{one} answered: the calls' gateway kept an even share"
    );

    // Quota 1,000 credits through all three, as fast as each goes, until
    // each has been refused for half a second: never over it, and refused
    // on every gateway at the end.
    let quota_answered = on_each(&pki, &addrs, BOB, |ws| {
        let (mut ok, mut last_ok, mut id) = (0, Instant::now(), 0);
        while last_ok.elapsed() < Duration::from_millis(500) {
            id += 1;
            if call(ws, id) {
                ok += 1;
                last_ok = Instant::now();
            }
        }
        ok
    });
    eprintln!("quota 1000 over three gateways: {quota_answered} answered");
    assert!(
        (990..=1000).contains(&quota_answered),
        "{quota_answered} answered of a quota of 1000"
    );

    // /usage on each gateway: the cluster's totals, as answered.
    for (_, m) in &gws {
        wait_for(TIMEOUT, "the cluster's usage on every gateway", || {
            let (a, b) = (usage(m, "alice"), usage(m, "bob"));
            a["cluster"]["calls"] == answered as u64
                && b["cluster"]["calls"] == quota_answered as u64
        });
        let b = usage(m, "bob");
        assert_eq!(b["cluster"]["credits"], quota_answered as u64, "{b}");
    }
    let (_, _, text) = plain_get(&gws[0].1, "/metrics");
    assert!(text.contains("ringway_cluster_instances 3"), "{text}");
    assert!(text.contains("ringway_cluster_up 1"), "{text}");
}

#[test]
fn redis_down_and_back_empty_loses_nothing_and_a_revocation_reaches_every_gateway() {
    let pki = TestPki::new();
    let mut redis = Redis::start();
    let node = Upstream::start(Behaviour::Echo);
    let gws = three(&pki, &redis, &node.url());
    let mut carol: Vec<_> = gws
        .iter()
        .map(|(g, _)| ws_connect(g, pki.client_config(), &format!("/{CAROL}")))
        .collect();
    let mut sent = 0;
    for ws in carol.iter_mut() {
        for _ in 0..20 {
            sent += 1;
            assert!(call(ws, sent));
        }
    }
    // Redis goes away: every gateway says so and goes on serving.
    redis.stop();
    for (_, m) in &gws {
        wait_for(TIMEOUT, "the cluster degraded on every gateway", || {
            health(m)["cluster"]["redis"] == "degraded"
        });
    }
    for ws in carol.iter_mut() {
        for _ in 0..20 {
            sent += 1;
            assert!(call(ws, sent), "served while Redis is down");
        }
    }
    // Back, empty: each gateway publishes its own totals again.
    redis.restart();
    for (_, m) in &gws {
        wait_for(TIMEOUT, "the cluster's usage back on every gateway", || {
            let h = health(m);
            h["cluster"]["redis"] == "up" && usage(m, "carol")["cluster"]["calls"] == sent
        });
    }
    let (_, _, text) = plain_get(&gws[0].1, "/metrics");
    let failures = text
        .lines()
        .find_map(|l| l.strip_prefix("ringway_cluster_sync_failures_total "))
        .unwrap();
    assert!(failures.parse::<u64>().unwrap() >= 1, "{text}");
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.parse().unwrap())
    };
    // The syncs that went through, and the time they took.
    assert!(value("ringway_cluster_syncs_total") >= 1.0, "{text}");
    assert!(value("ringway_cluster_sync_seconds_total") > 0.0, "{text}");

    // Dave disabled on one gateway: his sessions on all three close.
    let mut dave: Vec<_> = gws
        .iter()
        .map(|(g, _)| ws_connect(g, pki.client_config(), &format!("/{DAVE}")))
        .collect();
    let asked = Instant::now();
    let (status, _, body) = post_plain(&gws[0].1, "/keys/dave/disable");
    assert_eq!(status, 200, "{body}");
    for ws in dave.iter_mut() {
        assert_eq!(close_frame(ws).0, 1008);
    }
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "{:?}",
        asked.elapsed()
    );
    // A gateway that starts later knows it.
    let (late, _) = gateway(&pki, &redis, &node.url(), 3);
    wait_for(TIMEOUT, "dave refused by a gateway started later", || {
        let mut s = tls_connect(late.addr, pki.client_config());
        let req = upgrade_request(&format!("/{DAVE}"), |_| {});
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        read_response(&mut s).0 == 401
    });
    // Enabled again: served again.
    assert_eq!(post_plain(&gws[1].1, "/keys/dave/enable").0, 200);
    wait_for(TIMEOUT, "dave served again", || {
        let mut s = tls_connect(gws[2].0.addr, pki.client_config());
        let req = upgrade_request(&format!("/{DAVE}"), |_| {});
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        read_response(&mut s).0 == 101
    });
}

/// `POST path` with no body to a plain HTTP listener.
fn post_plain(addr: &str, path: &str) -> (u16, String, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s)
}

/// `method` with `params` on `ws`: the answer.
fn ask(ws: &mut tungstenite::WebSocket<TlsStream>, id: u64, method: &str, params: &str) -> Value {
    ws.send(Message::text(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#
    )))
    .unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["id"], id, "{t}");
            return v;
        }
    }
}

#[test]
fn three_cold_gateways_cost_the_node_one_metadata_call_per_hash() {
    use std::sync::atomic::Ordering::Relaxed;
    let pki = TestPki::new();
    let redis = Redis::start();
    let chain = FakeChain::new(100);
    chain.metadata_bytes.store(300_000, Relaxed);
    // Each answer takes a while: the other gateways' lookups come while
    // the first fetch is on its way.
    chain.delay_ms.store(200, Relaxed);
    let node = Upstream::start(Behaviour::Substrate(chain.clone()));
    let gws: Vec<_> = (0..3)
        .map(|i| {
            gateway_with(
                &pki,
                &redis,
                &node.url(),
                i,
                "[health]\ninterval_ms = 100\n",
            )
        })
        .collect();
    let head = chain.head.load(Relaxed);
    for (g, _) in &gws {
        wait_for(TIMEOUT, "the finalized block on every gateway", || {
            https_get(g.addr, pki.client_config(), "/health")
                .2
                .contains(&format!("\"head\":{head}"))
        });
    }
    thread::sleep(Duration::from_millis(300));

    // Four clients on each gateway (on both its cores) start at once, as
    // Polkadot-JS does: the latest metadata and runtime version.
    let clients: Vec<_> = gws
        .iter()
        .flat_map(|(g, _)| [g.addr; 4])
        .map(|addr| {
            let cfg = pki.client_config();
            thread::spawn(move || {
                let url = format!("wss://localhost:{}/{CAROL}", addr.port());
                let mut ws = tungstenite::client::client(url, tls_connect(addr, cfg))
                    .unwrap()
                    .0;
                let meta = ask(&mut ws, 1, "state_getMetadata", "[]");
                let meta = meta["result"].as_str().unwrap_or_default().to_string();
                assert!(meta.starts_with("meta@0x"), "{meta:.80}");
                let version = ask(&mut ws, 2, "state_getRuntimeVersion", "[]");
                assert!(version["result"].is_object(), "{version}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let calls = chain.calls.lock().unwrap().clone();
    eprintln!("node calls from 12 clients on 3 cold gateways: {calls:?}");
    assert_eq!(chain.calls_of("state_getMetadata"), 1, "{calls:?}");
    assert_eq!(chain.calls_of("state_getRuntimeVersion"), 1, "{calls:?}");

    // A gateway started later, cold, asks the node nothing.
    let (late, _) = gateway_with(
        &pki,
        &redis,
        &node.url(),
        3,
        "[health]\ninterval_ms = 100\n",
    );
    wait_for(TIMEOUT, "the finalized block on the late gateway", || {
        https_get(late.addr, pki.client_config(), "/health")
            .2
            .contains(&format!("\"head\":{head}"))
    });
    thread::sleep(Duration::from_millis(300));
    let mut ws = ws_connect(&late, pki.client_config(), &format!("/{CAROL}"));
    let meta = ask(&mut ws, 7, "state_getMetadata", "[]");
    assert!(meta["result"].as_str().unwrap().starts_with("meta@0x"));
    assert_eq!(chain.calls_of("state_getMetadata"), 1);

    let stores: u64 = gws
        .iter()
        .map(|(_, m)| {
            let text = plain_get(m, "/metrics").2;
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix("ringway_cluster_cache_stores_total "));
            n.unwrap_or_else(|| panic!("{text}"))
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(stores, 2, "metadata and runtime version kept once each");

    // Redis gone: a lookup costs a miss and nothing else.
    let mut redis = redis;
    redis.stop();
    let hash = format!("\"0x{}\"", "ab".repeat(32));
    let asked = Instant::now();
    let meta = ask(&mut ws, 8, "state_getMetadata", &format!("[{hash}]"));
    assert!(
        meta["result"].as_str().unwrap().starts_with("meta@0x"),
        "{meta}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(chain.calls_of("state_getMetadata"), 2);
}

#[test]
fn gateways_reach_redis_over_tls_and_a_revocation_is_pushed_between_syncs() {
    let pki = TestPki::new();
    let ca = pki.dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let redis = Redis::start_tls(&pki.cert, &pki.key, &ca);
    assert!(redis.url().starts_with("rediss://"));
    let (cert, key) = pki.issue(&["gateway"]);
    // Syncs far apart: a revocation must be pushed, not read at a sync.
    let tls = format!(
        "sync_ms = 10000\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    );
    let node = Upstream::start(Behaviour::Echo);
    let gws: Vec<_> = (0..2)
        .map(|i| gateway_tls(&pki, &redis, &node.url(), i, &tls))
        .collect();
    // The second sees both at its first sync (the first at its next).
    wait_for(TIMEOUT, "two gateways on Redis over TLS", || {
        let h = health(&gws[1].1);
        h["cluster"]["redis"] == "up" && h["cluster"]["instances"] == 2
    });
    assert_eq!(health(&gws[0].1)["cluster"]["redis"], "up");
    // A revocation is pushed through it (pub/sub): the other gateway's
    // session closes within a second, well before its next sync.
    let mut dave = ws_connect(&gws[1].0, pki.client_config(), &format!("/{DAVE}"));
    assert!(call(&mut dave, 1));
    let asked = Instant::now();
    assert_eq!(post_plain(&gws[0].1, "/keys/dave/disable").0, 200);
    assert_eq!(close_frame(&mut dave).0, 1008);
    eprintln!("revoked on the other gateway after {:?}", asked.elapsed());
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    // Without the client certificate Redis refuses it: the gateway serves
    // on its own share, and says Redis is degraded.
    let ca_only = format!("tls_ca = \"{}\"\n", ca.display());
    let (lone, m) = gateway_tls(&pki, &redis, &node.url(), 2, &ca_only);
    wait_for(TIMEOUT, "a sync failure", || {
        plain_get(&m, "/metrics")
            .2
            .lines()
            .any(|l| l.starts_with("ringway_cluster_sync_failures_total ") && !l.ends_with(" 0"))
    });
    assert_eq!(health(&m)["cluster"]["redis"], "degraded");
    let mut ws = ws_connect(&lone, pki.client_config(), &format!("/{CAROL}"));
    assert!(call(&mut ws, 1));
}

/// A gateway of the cluster with `tls` lines in `[cluster]`.
fn gateway_tls(pki: &TestPki, redis: &Redis, node: &str, i: usize, tls: &str) -> (Gateway, String) {
    gateway_in(pki, redis, node, &format!("tls{i}"), "", tls)
}
