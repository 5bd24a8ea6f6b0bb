//! Gateways run the way a provider runs them, on one real `redis-server`:
//! killed with `kill -9`, restarted under their name or a new one, stopped
//! with SIGTERM, started twice under one name, given a Redis user without
//! pub/sub. Usage stays exact, no key is locked out, no name is shared.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tungstenite::Message;

const ACME: &str = "acme-0123456789abcdef0";
const BILL: &str = "bill-0123456789abcdef0";

/// `acme`: two connections at most; `bill`: 400 credits a day.
const KEYS: &str = "[[key]]\nname = \"acme\"\nkey = \"acme-0123456789abcdef0\"\nmax_connections = 2\n\n[[key]]\nname = \"bill\"\nkey = \"bill-0123456789abcdef0\"\nquota = 400\nperiod = \"day\"\n";

/// The cluster's alive window at `sync_ms = 100`: 20 syncs, at least 2 s.
const ALIVE: Duration = Duration::from_secs(2);

/// A gateway of the cluster named `name` (its metrics listener too).
fn member(pki: &TestPki, redis_url: &str, node: &str, name: &str) -> (Gateway, String) {
    let keys = write_config(pki, "ops-keys.toml", KEYS);
    let cfg = config(pki, redis_url, name, &keys);
    let gw = Gateway::start(
        pki,
        &[node.to_string()],
        &["--config", cfg.to_str().unwrap()],
    );
    let metrics = printed_addr(&gw, "metrics on http://");
    (gw, metrics)
}

fn config(
    pki: &TestPki,
    redis_url: &str,
    name: &str,
    keys: &std::path::Path,
) -> std::path::PathBuf {
    write_config(
        pki,
        &format!("ops-{name}.toml"),
        &format!(
            "[server]\nmetrics_listen = \"127.0.0.1:0\"\n[keys]\nfile = \"{}\"\n[cluster]\nredis = \"{redis_url}\"\ninstance = \"{name}\"\nsync_ms = 100\n",
            keys.display()
        ),
    )
}

fn json(metrics: &str, path: &str) -> Value {
    serde_json::from_str(&plain_get(metrics, path).2).unwrap()
}

fn usage(metrics: &str, key: &str) -> Value {
    json(metrics, "/usage")["keys"][key].clone()
}

/// Kill the gateway the way a crash or `kill -9` does: nothing written.
fn kill9(gw: Gateway) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &gw.pid().to_string()])
        .status();
    drop(gw);
}

/// A WebSocket session with `key`, or the status that refused it.
fn session(
    gw: &Gateway,
    pki: &TestPki,
    key: &str,
) -> Result<tungstenite::WebSocket<TlsStream>, u16> {
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(upgrade_request(&format!("/{key}"), |_| {}).as_bytes())
        .unwrap();
    let (status, _, _) = read_response(&mut s);
    if status != 101 {
        return Err(status);
    }
    Ok(tungstenite::WebSocket::from_raw_socket(
        s,
        tungstenite::protocol::Role::Client,
        None,
    ))
}

/// One call: true when answered, false when refused (-32005).
fn call(ws: &mut tungstenite::WebSocket<TlsStream>, id: u64) -> bool {
    ws.send(Message::text(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"echo"}}"#
    )))
    .unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(&t).unwrap();
            return v["error"]["code"] != -32005;
        }
    }
}

/// One Redis command over RESP, its raw answer.
fn redis_cmd(port: u16, args: &[&str]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Guards the ledger's heartbeat: a gateway killed while it held a key's
/// `max_connections` sessions left its field in Redis with `sessions 2`,
/// and every other gateway refused the key (429) for the rest of the period.
#[test]
fn a_killed_gateways_sessions_stop_counting_within_the_alive_window() {
    let pki = TestPki::new();
    let redis = Redis::start();
    let node = Upstream::start(Behaviour::Echo);
    let (a, _) = member(&pki, &redis.url(), &node.url(), "kill-a");
    let (b, b_metrics) = member(&pki, &redis.url(), &node.url(), "kill-b");
    let held: Vec<_> = (0..2).map(|_| session(&a, &pki, ACME).unwrap()).collect();
    wait_for(TIMEOUT, "b to see a's two sessions", || {
        usage(&b_metrics, "acme")["cluster"]["sessions"] == 2
    });
    assert_eq!(
        session(&b, &pki, ACME).err(),
        Some(429),
        "the key is at its limit"
    );
    kill9(a);
    drop(held);
    let killed = Instant::now();
    wait_for(
        ALIVE + Duration::from_secs(3),
        "the key admitted again",
        || session(&b, &pki, ACME).is_ok(),
    );
    let took = killed.elapsed();
    assert!(
        took <= ALIVE + Duration::from_secs(1),
        "admitted after {took:?}"
    );
}

/// Guards resuming one's own field: a gateway restarted under its name
/// without a state file published zeros over its field, and the key's
/// usage (and its quota) went back to what the others had used.
#[test]
fn a_gateway_restarted_under_its_name_resumes_its_usage() {
    let pki = TestPki::new();
    let redis = Redis::start();
    let node = Upstream::start(Behaviour::Echo);
    let (a, a_metrics) = member(&pki, &redis.url(), &node.url(), "resume-a");
    let (b, _) = member(&pki, &redis.url(), &node.url(), "resume-b");
    let mut ws = session(&b, &pki, BILL).unwrap();
    for id in 0..30 {
        assert!(call(&mut ws, id));
    }
    drop(ws);
    wait_for(TIMEOUT, "a to see b's 30 calls", || {
        usage(&a_metrics, "bill")["cluster"]["calls"] == 30
    });
    kill9(b);
    let (b, b_metrics) = member(&pki, &redis.url(), &node.url(), "resume-b");
    wait_for(TIMEOUT, "b's own 30 calls back", || {
        usage(&b_metrics, "bill")["current"]["calls"] == 30
    });
    // Neither lost nor doubled, seen from either gateway.
    for m in [&a_metrics, &b_metrics] {
        wait_for(TIMEOUT, "the totals", || {
            usage(m, "bill")["cluster"]["calls"] == 30
        });
    }
    let mut ws = session(&b, &pki, BILL).unwrap();
    assert!(call(&mut ws, 99));
    wait_for(TIMEOUT, "31 in the totals", || {
        usage(&a_metrics, "bill")["cluster"]["calls"] == 31
    });
    drop(a);
}

/// Guards the grant of a gateway that died: restarted under a new name
/// (as pods are), only 267 of a quota of 400 could be used: the dead
/// field's reservation still counted.
#[test]
fn a_gateway_renamed_after_a_crash_can_use_the_whole_remaining_quota_and_no_more() {
    let pki = TestPki::new();
    let redis = Redis::start();
    let node = Upstream::start(Behaviour::Echo);
    let (a, _) = member(&pki, &redis.url(), &node.url(), "pod-1");
    let (b, b_metrics) = member(&pki, &redis.url(), &node.url(), "pod-2");
    let mut ws = session(&a, &pki, BILL).unwrap();
    for id in 0..100 {
        assert!(call(&mut ws, id));
    }
    drop(ws);
    wait_for(TIMEOUT, "b to see a's 100 credits", || {
        usage(&b_metrics, "bill")["cluster"]["credits"] == 100
    });
    kill9(a);
    let (c, _) = member(&pki, &redis.url(), &node.url(), "pod-3");
    // Once the dead field stops holding its grant, every credit left is usable.
    std::thread::sleep(ALIVE + Duration::from_millis(500));
    let mut answered = 0;
    let mut refused_since: Option<Instant> = None;
    let mut id = 1000;
    for gw in [&c, &b] {
        let mut ws = session(gw, &pki, BILL).unwrap();
        refused_since = None;
        while refused_since.is_none_or(|t| t.elapsed() < Duration::from_millis(800)) {
            id += 1;
            if call(&mut ws, id) {
                answered += 1;
                refused_since = None;
            } else {
                refused_since.get_or_insert_with(Instant::now);
            }
        }
    }
    assert!(refused_since.is_some());
    assert_eq!(answered, 300, "the quota left was 300");
    drop((b, c));
}

/// A gateway stopped with SIGTERM gives back at once what it held: its
/// sessions and its unused grant (before, after the alive window at best).
#[test]
fn sigterm_gives_back_the_sessions_and_the_grant_at_once() {
    let pki = TestPki::new();
    let redis = Redis::start();
    let node = Upstream::start(Behaviour::Echo);
    let (a, _) = member(&pki, &redis.url(), &node.url(), "term-a");
    let (b, b_metrics) = member(&pki, &redis.url(), &node.url(), "term-b");
    let _held: Vec<_> = (0..2).map(|_| session(&a, &pki, ACME).unwrap()).collect();
    let mut ws = session(&a, &pki, BILL).unwrap();
    for id in 0..10 {
        assert!(call(&mut ws, id));
    }
    wait_for(TIMEOUT, "b to see a's sessions", || {
        usage(&b_metrics, "acme")["cluster"]["sessions"] == 2
    });
    let mut a = a;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &a.pid().to_string()])
        .status();
    assert!(a.wait_exit(TIMEOUT).is_some_and(|s| s.success()));
    // At its exit, not after the alive window: given back by its last sync.
    let exited = Instant::now();
    wait_for(Duration::from_secs(1), "a's sessions given back", || {
        usage(&b_metrics, "acme")["cluster"]["sessions"] == 0
    });
    assert!(session(&b, &pki, ACME).is_ok());
    assert!(exited.elapsed() < ALIVE);
    // Its field keeps its figures for billing, with its grant down to what it used.
    let fields = redis_cmd(redis.port, &["KEYS", "ringway:usage:bill:*"]);
    let hash = fields
        .lines()
        .find(|l| l.starts_with("ringway:usage:bill:"))
        .unwrap_or_else(|| panic!("{fields}"))
        .to_string();
    let field = redis_cmd(redis.port, &["HGET", &hash, "term-a"]);
    let numbers: Vec<u64> = field
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("{field}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    // calls credits notifications bytes_in bytes_out sessions granted beat
    assert_eq!((numbers[0], numbers[1]), (10, 10), "{field}");
    assert_eq!(numbers[5], 0, "no session: {field}");
    assert_eq!(numbers[6], 10, "the unused grant given back: {field}");
    assert_eq!(numbers[7], 0, "gone: {field}");
}

/// Guards one name, one gateway: two gateways with one `cluster.instance`
/// both ran, overwriting each other's figures (budgets doubled, usage lost).
#[test]
fn a_second_gateway_under_a_running_ones_name_refuses_to_start() {
    let pki = TestPki::new();
    let redis = Redis::start();
    let node = Upstream::start(Behaviour::Echo);
    let (_a, _) = member(&pki, &redis.url(), &node.url(), "twin");
    let keys = write_config(&pki, "ops-keys.toml", KEYS);
    let cfg = config(&pki, &redis.url(), "twin", &keys);
    let started = Instant::now();
    let out = Gateway::run_to_exit(&pki, &node.url(), &["--config", cfg.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cluster.instance") && stderr.contains(cfg.to_str().unwrap()),
        "{stderr}"
    );
    assert!(started.elapsed() < ALIVE + Duration::from_secs(2));
}

/// A gateway restarting after a crash waits out the alive window for its
/// own name instead of failing.
#[test]
fn a_gateway_restarted_after_a_crash_waits_for_its_name() {
    let pki = TestPki::new();
    let redis = Redis::start();
    let node = Upstream::start(Behaviour::Echo);
    let (a, _) = member(&pki, &redis.url(), &node.url(), "phoenix");
    kill9(a);
    let start = Instant::now();
    let (_a, metrics) = member(&pki, &redis.url(), &node.url(), "phoenix");
    assert!(start.elapsed() <= ALIVE + Duration::from_secs(2));
    wait_for(TIMEOUT, "the cluster up", || {
        json(&metrics, "/health")["cluster"]["redis"] == "up"
    });
}

/// CPU time (utime + stime) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Guards a Redis user without pub/sub (Redis 7's `resetchannels`): the
/// revocation listener reconnected in a busy loop (0.4 of a core, idle,
/// nothing in the log). Now it backs off, the syncs go on, `/health` names
/// the missing permission, and a revocation still reaches every gateway
/// within a sync and a second.
#[test]
fn a_redis_user_without_channels_costs_the_push_not_the_cluster() {
    let pki = TestPki::new();
    let redis = Redis::start();
    let acl = redis_cmd(
        redis.port,
        &[
            "ACL",
            "SETUSER",
            "ringway",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
        ],
    );
    assert!(acl.starts_with("+OK"), "{acl}");
    let url = format!("redis://ringway:pw@127.0.0.1:{}/", redis.port);
    let node = Upstream::start(Behaviour::Echo);
    let (a, a_metrics) = member(&pki, &url, &node.url(), "acl-a");
    let (b, b_metrics) = member(&pki, &url, &node.url(), "acl-b");
    wait_for(TIMEOUT, "both in the cluster", || {
        json(&b_metrics, "/health")["cluster"]["instances"] == 2
    });
    let health = json(&a_metrics, "/health");
    assert_eq!(health["cluster"]["redis"], "up", "{health}");
    assert!(
        health["cluster"]["problems"].to_string().contains("NOPERM"),
        "{health}"
    );
    // Idle: no busy loop (a second of CPU per ten seconds would be 0.1 of a core).
    let ticks_per_s = 100;
    let before = cpu_ticks(a.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(a.pid()) - before;
    assert!(used < 3 * ticks_per_s / 10, "{used} ticks in 3 s");
    // A revocation asked of a reaches b's session within a sync and a second.
    let mut held = session(&b, &pki, ACME).unwrap();
    let (status, _, body) = post_admin(&a_metrics, "/keys/acme/disable");
    assert_eq!(status, 200, "{body}");
    let asked = Instant::now();
    let (code, _, _) = close_frame(&mut held);
    assert_eq!(code, 1008);
    assert!(
        asked.elapsed() < Duration::from_millis(1100),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(json(&a_metrics, "/health")["cluster"]["redis"], "up");
}

/// `POST path` to a metrics listener, from this host, naming it as Host.
fn post_admin(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s)
}

/// JSON-RPC over plain HTTP to an anvil directly.
fn direct(url: &str, body: &str) -> Value {
    let addr = url.trim_start_matches("ws://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    serde_json::from_str(&read_response(&mut s).2).unwrap()
}

/// A single-chain gateway (named `default`, as every single-chain one is)
/// on the cluster's Redis, with the second-level cache.
fn chain_gateway(pki: &TestPki, redis: &Redis, node: &str, name: &str) -> Gateway {
    let cfg = write_config(
        pki,
        &format!("l2-{name}.toml"),
        &format!(
            "[routing]\nchain = \"ethereum\"\n[health]\ninterval_ms = 100\n[cluster]\nredis = \"{}\"\ninstance = \"{name}\"\n",
            redis.url()
        ),
    );
    Gateway::start(
        pki,
        &[node.to_string()],
        &["--config", cfg.to_str().unwrap()],
    )
}

/// Guards the second level's keys: two single-chain gateways in front of
/// chain ids 1 and 5 (both named `default`) on one Redis served each
/// other's blocks from it, for up to an hour.
#[test]
fn two_chains_on_one_redis_each_answer_their_own_blocks() {
    let bin = anvil_path();
    let one = anvil(&bin, &["--chain-id", "1", "--timestamp", "1700000000"]);
    let five = anvil(&bin, &["--chain-id", "5", "--timestamp", "1600000000"]);
    for node in [&one, &five] {
        let r = direct(
            &node.url,
            r#"{"jsonrpc":"2.0","id":1,"method":"anvil_mine","params":["0x64"]}"#,
        );
        assert!(r.get("result").is_some(), "{r}");
    }
    let block =
        r#"{"jsonrpc":"2.0","id":7,"method":"eth_getBlockByNumber","params":["0x5",false]}"#;
    let want = |url: &str| direct(url, block)["result"]["hash"].clone();
    assert_ne!(want(&one.url), want(&five.url));
    let pki = TestPki::new();
    let redis = Redis::start();
    let g1 = chain_gateway(&pki, &redis, &one.url, "chain-1");
    let g5 = chain_gateway(&pki, &redis, &five.url, "chain-5");
    let through = |gw: &Gateway| {
        let (status, body) = post_json(gw.addr, pki.client_config(), block);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["result"]["hash"].clone()
    };
    // Chain 1's block 5 reaches Redis first; chain 5's gateway must not take it.
    wait_for(TIMEOUT, "chain 1's block in Redis", || {
        assert_eq!(through(&g1), want(&one.url));
        redis_cmd(redis.port, &["KEYS", "ringway:cache:*"]).contains("ringway:cache:")
    });
    for _ in 0..5 {
        assert_eq!(through(&g5), want(&five.url));
        assert_eq!(through(&g1), want(&one.url));
    }
    // Keys are digests, not a client's params.
    let keys = redis_cmd(redis.port, &["KEYS", "ringway:cache:*"]);
    for k in keys.lines().filter(|l| l.starts_with("ringway:cache:")) {
        assert_eq!(k.len(), "ringway:cache:".len() + 64, "{k}");
    }
}

/// Answers larger than `cluster.cache_max_bytes` (1 MiB) stay out of
/// Redis: one client could otherwise fill it with 8 MiB answers.
#[test]
fn a_five_mib_answer_is_not_kept_in_redis() {
    let pki = TestPki::new();
    let redis = Redis::start();
    let chain = FakeChain::new(100);
    chain
        .metadata_bytes
        .store(5 << 20, std::sync::atomic::Ordering::Relaxed);
    let node = Upstream::start(Behaviour::Substrate(chain.clone()));
    let cfg = write_config(
        &pki,
        "l2-big.toml",
        &format!(
            "[health]\ninterval_ms = 100\n[cluster]\nredis = \"{}\"\ninstance = \"big\"\n",
            redis.url()
        ),
    );
    let gw = Gateway::start(&pki, &[node.url()], &["--config", cfg.to_str().unwrap()]);
    let small = r#"{"jsonrpc":"2.0","id":1,"method":"state_getRuntimeVersion","params":["0x0000000000000000000000000000000000000000000000000000000000000050"]}"#;
    let big = r#"{"jsonrpc":"2.0","id":2,"method":"state_getMetadata","params":["0x0000000000000000000000000000000000000000000000000000000000000050"]}"#;
    wait_for(TIMEOUT, "the small answer kept in Redis", || {
        let (status, _) = post_json(gw.addr, pki.client_config(), small);
        assert_eq!(status, 200);
        redis_cmd(redis.port, &["KEYS", "ringway:cache:*"]).contains("ringway:cache:")
    });
    let (status, body) = post_json(gw.addr, pki.client_config(), big);
    assert_eq!(status, 200);
    assert!(body.len() > 5 << 20);
    let keys = redis_cmd(redis.port, &["KEYS", "ringway:cache:*"]);
    let keys: Vec<&str> = keys
        .lines()
        .filter(|l| l.starts_with("ringway:cache:"))
        .collect();
    assert_eq!(keys.len(), 1, "only the small answer: {keys:?}");
    let len = redis_cmd(redis.port, &["STRLEN", keys[0]]);
    assert!(
        len.trim_start_matches(':').trim().parse::<usize>().unwrap() < 1 << 20,
        "{len}"
    );
}

/// `cluster.cache_redis`: the second level on a Redis of its own (one that
/// may evict, `allkeys-lru`), the ledger on the cluster's: eviction never
/// reaches a key's usage.
#[test]
fn the_cache_can_live_on_a_redis_of_its_own() {
    let pki = TestPki::new();
    let (ledger, cache) = (Redis::start(), Redis::start());
    let chain = FakeChain::new(100);
    let node = Upstream::start(Behaviour::Substrate(chain));
    let cfg = write_config(
        &pki,
        "l2-apart.toml",
        &format!(
            "[health]\ninterval_ms = 100\n[keys]\nfile = \"{}\"\n[cluster]\nredis = \"{}\"\ncache_redis = \"{}\"\ninstance = \"apart\"\n",
            write_config(&pki, "ops-keys.toml", KEYS).display(),
            ledger.url(),
            cache.url()
        ),
    );
    let gw = Gateway::start(&pki, &[node.url()], &["--config", cfg.to_str().unwrap()]);
    let mut ws = session(&gw, &pki, ACME).unwrap();
    let ask = r#"{"jsonrpc":"2.0","id":1,"method":"state_getRuntimeVersion","params":["0x0000000000000000000000000000000000000000000000000000000000000050"]}"#;
    wait_for(TIMEOUT, "the answer kept in the cache's Redis", || {
        ws.send(Message::text(ask)).unwrap();
        assert!(matches!(ws.read(), Ok(Message::Text(t)) if t.contains("result")));
        redis_cmd(cache.port, &["KEYS", "ringway:cache:*"]).contains("ringway:cache:")
    });
    wait_for(TIMEOUT, "the key's usage in the cluster's Redis", || {
        redis_cmd(ledger.port, &["KEYS", "ringway:usage:*"]).contains("ringway:usage:acme")
    });
    assert!(!redis_cmd(ledger.port, &["KEYS", "ringway:cache:*"]).contains("ringway:cache:"));
    assert!(!redis_cmd(cache.port, &["KEYS", "ringway:usage:*"]).contains("ringway:usage:"));
}

/// `--check` tries what the configuration needs of its Redis user: keys
/// and scripts it cannot do without (exit 2, naming them), channels it can
/// (a warning).
#[test]
fn check_names_the_redis_permissions_that_are_missing() {
    let pki = TestPki::new();
    let redis = Redis::start();
    for (user, rules) in [
        ("nochan", vec!["~*", "+@all", "resetchannels"]),
        ("nokeys", vec!["~other:*", "+@all", "allchannels"]),
    ] {
        let mut args = vec!["ACL", "SETUSER", user, "on", ">pw"];
        args.extend(rules);
        assert!(redis_cmd(redis.port, &args).starts_with("+OK"));
    }
    let keys = write_config(&pki, "ops-keys.toml", KEYS);
    let url = |user: &str| format!("redis://{user}:pw@127.0.0.1:{}/", redis.port);
    let out = check_config(
        config(&pki, &url("nochan"), "check-a", &keys)
            .to_str()
            .unwrap(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("SUBSCRIBE") && stderr.contains("PUBLISH"),
        "{stderr}"
    );
    let out = check_config(
        config(&pki, &url("nokeys"), "check-b", &keys)
            .to_str()
            .unwrap(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error") && stderr.contains("keys under `ringway:*`"),
        "{stderr}"
    );
}

/// A rolling restart of all three gateways while clients call through
/// them (each reconnecting to another when its gateway drains): every call
/// a gateway took is in `/usage` exactly once, and no client is refused
/// for connections its key does not have.
#[test]
fn a_rolling_restart_under_load_counts_every_call_once_and_locks_no_key_out() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    let pki = Arc::new(TestPki::new());
    let redis = Redis::start();
    let node = Upstream::start(Behaviour::Echo);
    let names = ["roll-a", "roll-b", "roll-c"];
    let mut gws: Vec<(Gateway, String)> = names
        .iter()
        .map(|n| member(&pki, &redis.url(), &node.url(), n))
        .collect();
    let addrs = Arc::new(Mutex::new(
        gws.iter().map(|(g, _)| g.addr).collect::<Vec<_>>(),
    ));
    let (answered, refused, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    // Two clients of `acme` (two connections at most: a connection each
    // everywhere, as a rollout moves them), two of `bill` (until its
    // credits are used up).
    let clients: Vec<_> = [ACME, ACME, BILL, BILL]
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            let (pki, addrs, answered, refused, stop) = (
                pki.clone(),
                addrs.clone(),
                answered.clone(),
                refused.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut id = 0u64;
                let mut turn = i;
                while !stop.load(SeqCst) {
                    turn += 1;
                    let addr = addrs.lock().unwrap()[turn % 3];
                    let mut ws = match connect_to(addr, &pki, key) {
                        Ok(ws) => ws,
                        // bill's credits are used up: nothing more to do.
                        Err(Some(429)) if key == BILL => break,
                        // The gateway said no to acme: the lockout.
                        Err(Some(status)) if status != 503 => {
                            refused.fetch_add(1, SeqCst);
                            eprintln!("refused: {status}");
                            continue;
                        }
                        // Draining (503), or gone (between its drain and
                        // its successor): the client tries the next one.
                        Err(_) => continue,
                    };
                    while !stop.load(SeqCst) {
                        id += 1;
                        let sent = ws.send(Message::text(format!(
                            r#"{{"jsonrpc":"2.0","id":{id},"method":"echo"}}"#
                        )));
                        if sent.is_err() {
                            break;
                        }
                        match ws.read() {
                            // Past bill's quota: refused, not a call.
                            Ok(Message::Text(t)) if t.contains("-32005") => {}
                            Ok(Message::Text(_)) => {
                                answered.fetch_add(1, SeqCst);
                            }
                            _ => break,
                        }
                    }
                }
            })
        })
        .collect();
    wait_for(TIMEOUT, "calls through every gateway", || {
        answered.load(SeqCst) > 300
    });
    for (i, name) in names.iter().enumerate() {
        let (mut old, _) = gws.remove(0);
        old.signal("TERM");
        assert!(old.wait_exit(TIMEOUT).is_some_and(|s| s.success()));
        let fresh = member(&pki, &redis.url(), &node.url(), name);
        addrs.lock().unwrap()[i] = fresh.0.addr;
        gws.push(fresh);
        let at = answered.load(SeqCst);
        wait_for(TIMEOUT, "calls after the restart", || {
            answered.load(SeqCst) > at + 200
        });
    }
    stop.store(true, SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let total = answered.load(SeqCst);
    let metrics = &gws[0].1;
    let counted = || {
        let (a, b) = (usage(metrics, "acme"), usage(metrics, "bill"));
        a["cluster"]["calls"].as_u64().unwrap_or(0) + b["cluster"]["calls"].as_u64().unwrap_or(0)
    };
    wait_for(TIMEOUT, "every answered call in /usage", || {
        counted() >= total
    });
    assert_eq!(
        counted(),
        total,
        "calls in /usage against calls answered: {}",
        json(metrics, "/usage")
    );
    // Two clients of acme, two connections: none was ever refused for more.
    let a = usage(metrics, "acme");
    assert_eq!(
        a["cluster"]["refused"]["connections"].as_u64().unwrap_or(0),
        0,
        "{a}"
    );
    assert_eq!(refused.load(SeqCst), 0, "a client was refused a connection");
}

/// A WebSocket session with `key` to the gateway at `addr`; refused, the
/// HTTP status the gateway answered (`None`: no gateway there).
fn connect_to(
    addr: std::net::SocketAddr,
    pki: &TestPki,
    key: &str,
) -> Result<tungstenite::WebSocket<TlsStream>, Option<u16>> {
    let Ok(tcp) = std::net::TcpStream::connect(addr) else {
        return Err(None);
    };
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(pki.client_config(), name).unwrap();
    let stream = rustls::StreamOwned::new(conn, tcp);
    let url = format!("wss://localhost:{}/{key}", addr.port());
    tungstenite::client::client(url, stream)
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => {
                Some(r.status().as_u16())
            }
            _ => None,
        })
}
