//! Several chains on one listener: each chosen by host name (with its own
//! certificate, by SNI) or by path prefix on one host; a request for no
//! chain is not found, one whose Host is not its connection's name is
//! misdirected; caches are per chain; a reload adds a chain without
//! touching the others' sessions.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use tungstenite::Message;

/// Two nodes told apart by their label (`state_getStorage` answers `label@block`).
struct Nodes {
    dot: Arc<FakeChain>,
    ksm: Arc<FakeChain>,
    _ups: (Upstream, Upstream),
    dot_url: String,
    ksm_url: String,
}

fn nodes() -> Nodes {
    let dot = FakeChain::node(100, u64::MAX, "DOT");
    let ksm = FakeChain::node(100, u64::MAX, "KSM");
    *dot.genesis.lock().unwrap() = Some(format!("0x{}", "d0".repeat(32)));
    *ksm.genesis.lock().unwrap() = Some(format!("0x{}", "c5".repeat(32)));
    let a = Upstream::start(Behaviour::Substrate(dot.clone()));
    let b = Upstream::start(Behaviour::Substrate(ksm.clone()));
    let (dot_url, ksm_url) = (a.url(), b.url());
    Nodes {
        dot,
        ksm,
        _ups: (a, b),
        dot_url,
        ksm_url,
    }
}

/// A chain table answering `hosts` (and `path`), with its own certificate.
fn chain(pki: &TestPki, name: &str, host: &str, path: &str, node: &str) -> String {
    let (cert, key) = pki.issue(&[host]);
    format!(
        "[[chain]]\nname = \"{name}\"\nhosts = [\"{host}\"]\npath = \"{path}\"\ncert = \"{}\"\nkey = \"{}\"\n[[chain.node]]\nurl = \"{node}\"\n",
        cert.display(),
        key.display()
    )
}

const TOP: &str = "[health]\ninterval_ms = 100\n[admission]\nmethods = \"all\"\n";

/// Start with `chains` on one worker (one core: one cache, so a shared one would show).
fn start(pki: &TestPki, name: &str, chains: &str) -> (Gateway, std::path::PathBuf) {
    let cfg = write_config(pki, name, &format!("{TOP}{chains}"));
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--cert",
        pki.cert.to_str().unwrap(),
        "--key",
        pki.key.to_str().unwrap(),
        "--workers",
        "1",
        "--config",
        cfg.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (Gateway::start_args(&args), cfg)
}

/// A WebSocket session asking for `sni` (verifying its certificate) with `Host: host`.
fn session(
    gw: &Gateway,
    pki: &TestPki,
    sni: &str,
    host: &str,
    path: &str,
) -> Result<tungstenite::WebSocket<TlsStream>, (u16, String)> {
    let stream = tls_connect_named(gw.addr, pki.client_config(), sni);
    let url = format!("wss://{host}:{}{path}", gw.addr.port());
    match tungstenite::client::client(url, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => Err((
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("{sni} / {host}: {e}"),
    }
}

const STORAGE: &str = r#"{"jsonrpc":"2.0","id":7,"method":"state_getStorage","params":["0x01","0x000000000000000000000000000000000000000000000000000000000000000a"]}"#;

fn storage(ws: &mut tungstenite::WebSocket<TlsStream>) -> String {
    ws.send(Message::Text(STORAGE.into())).unwrap();
    result_string(&ws.read().unwrap().into_text().unwrap())
}

/// One HTTP JSON-RPC request with `sni` and `Host: host`: status and body.
fn post(
    gw: &Gateway,
    pki: &TestPki,
    sni: &str,
    host: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    post_json_to(
        tls_connect_named(gw.addr, pki.client_config(), sni),
        host,
        path,
        body,
    )
}

#[test]
fn each_host_name_reaches_its_own_chain_with_its_own_certificate() {
    let pki = TestPki::new();
    let n = nodes();
    let chains = chain(&pki, "polkadot", "dot.test", "", &n.dot_url)
        + &chain(&pki, "kusama", "ksm.test", "", &n.ksm_url);
    let (gw, _) = start(&pki, "hosts.toml", &chains);
    // Each handshake verifies the certificate for the name asked for: the
    // default one (localhost) would not pass for dot.test or ksm.test.
    let mut dot = session(&gw, &pki, "dot.test", "dot.test", "/").unwrap();
    let mut ksm = session(&gw, &pki, "ksm.test", "ksm.test", "/").unwrap();
    assert_eq!(storage(&mut dot), "DOT@10");
    assert_eq!(storage(&mut ksm), "KSM@10");
    // Over HTTP too, and the port in Host does not matter.
    let host = format!("ksm.test:{}", gw.addr.port());
    let (status, body) = post(&gw, &pki, "ksm.test", &host, "/", STORAGE);
    assert_eq!(
        (status, result_string(&body).as_str()),
        (200, "KSM@10"),
        "{body}"
    );
    // Calls are counted by chain, and each node's figures carry its chain.
    let metrics = https_get(gw.addr, pki.client_config(), "/metrics").2;
    for series in [
        r#"ringway_calls_total{chain="polkadot",method="state_getStorage",outcome="forwarded"} 1"#,
        r#"ringway_node_up{chain="kusama",url="#,
    ] {
        assert!(metrics.contains(series), "{series}\n{metrics}");
    }
    // Kusama's second read (the same storage at the same hash) may have
    // come from the cache of the core that made the first.
    let kusama: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with(r#"ringway_calls_total{chain="kusama",method="state_getStorage""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(kusama, 2, "{metrics}");
    // /health names both chains and their nodes.
    let health = https_get(gw.addr, pki.client_config(), "/health").2;
    assert!(
        health.contains(r#""name":"polkadot""#) && health.contains(r#""name":"kusama""#),
        "{health}"
    );
    let one = https_get(gw.addr, pki.client_config(), "/health?chain=kusama");
    assert_eq!(one.0, 200, "{}", one.2);
    assert!(
        one.2.contains(r#""name":"kusama","status":"ok""#) && !one.2.contains("polkadot"),
        "{}",
        one.2
    );
}

#[test]
fn paths_pick_chains_on_one_host_and_nodes_see_the_path_without_its_prefix() {
    let pki = TestPki::new();
    let dot = Upstream::start(Behaviour::Substrate(FakeChain::node(100, u64::MAX, "DOT")));
    let ksm = Upstream::start(Behaviour::Substrate(FakeChain::node(100, u64::MAX, "KSM")));
    let chains = chain(&pki, "polkadot", "rpc.test", "/polkadot", &dot.url())
        + &chain(&pki, "kusama", "rpc.test", "/kusama", &ksm.url());
    let (gw, _) = start(&pki, "paths.toml", &chains);
    let mut a = session(&gw, &pki, "rpc.test", "rpc.test", "/polkadot").unwrap();
    let mut b = session(&gw, &pki, "rpc.test", "rpc.test", "/kusama/ws?x=1").unwrap();
    assert_eq!(storage(&mut a), "DOT@10");
    assert_eq!(storage(&mut b), "KSM@10");
    let seen = |up: &Upstream| loop {
        let s = up.next_session();
        if !s.is_probe() {
            return s.path;
        }
    };
    assert_eq!(seen(&dot), "/");
    assert_eq!(seen(&ksm), "/ws?x=1");
    let (status, body) = post(&gw, &pki, "rpc.test", "rpc.test", "/kusama", STORAGE);
    assert_eq!(
        (status, result_string(&body).as_str()),
        (200, "KSM@10"),
        "{body}"
    );
    // A path under no chain of the host: 404, never another chain's nodes.
    let (status, body) = post(&gw, &pki, "rpc.test", "rpc.test", "/westend", STORAGE);
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        session(&gw, &pki, "rpc.test", "rpc.test", "/polkadotx")
            .err()
            .map(|e| e.0),
        Some(404)
    );
}

#[test]
fn a_host_not_named_by_the_connection_is_misdirected_and_an_unknown_one_not_found() {
    let pki = TestPki::new();
    let n = nodes();
    let chains = chain(&pki, "polkadot", "dot.test", "", &n.dot_url)
        + &chain(&pki, "kusama", "ksm.test", "", &n.ksm_url);
    let (gw, _) = start(&pki, "misdirected.toml", &chains);
    // Kusama through Polkadot's certificate: 421, over WebSocket and HTTP.
    let refused = session(&gw, &pki, "dot.test", "ksm.test", "/")
        .err()
        .unwrap();
    assert_eq!(refused.0, 421, "{}", refused.1);
    let (status, body) = post(&gw, &pki, "dot.test", "ksm.test", "/", STORAGE);
    assert_eq!(status, 421, "{body}");
    // A host no chain answers: 404 with a body that says so.
    let refused = session(&gw, &pki, "localhost", "nope.test", "/")
        .err()
        .unwrap();
    assert_eq!(refused.0, 404);
    assert!(refused.1.contains("no chain"), "{}", refused.1);
    let (status, _) = post(&gw, &pki, "localhost", "localhost", "/", STORAGE);
    assert_eq!(status, 404);
    // Nothing of it reached a node.
    assert_eq!(n.dot.total_calls() + n.ksm.total_calls(), 0);
}

#[test]
fn identical_cacheable_requests_reach_each_chains_own_node() {
    let pki = TestPki::new();
    let n = nodes();
    let chains = chain(&pki, "polkadot", "dot.test", "", &n.dot_url)
        + &chain(&pki, "kusama", "ksm.test", "", &n.ksm_url);
    let (gw, _) = start(&pki, "cache.toml", &chains);
    wait_for(TIMEOUT, "finality known", || {
        https_get(gw.addr, pki.client_config(), "/health")
            .2
            .matches(r#""finalized":98"#)
            .count()
            >= 2
    });
    // The genesis hash: kept for good once known, and each chain's own.
    let genesis = |ws: &mut tungstenite::WebSocket<TlsStream>| {
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":1,"method":"chain_getBlockHash","params":[0]}"#.into(),
        ))
        .unwrap();
        result_string(&ws.read().unwrap().into_text().unwrap())
    };
    let mut dot = session(&gw, &pki, "dot.test", "dot.test", "/").unwrap();
    // Twice on Polkadot: the second from its cache (the node saw one).
    assert!(genesis(&mut dot).starts_with("0xd0d0"));
    assert!(genesis(&mut dot).starts_with("0xd0d0"));
    assert_eq!(n.dot.calls_of("chain_getBlockHash"), 1);
    // The same bytes on Kusama, on the same core: Kusama's node answers.
    let mut ksm = session(&gw, &pki, "ksm.test", "ksm.test", "/").unwrap();
    assert!(genesis(&mut ksm).starts_with("0xc5c5"));
    assert_eq!(n.ksm.calls_of("chain_getBlockHash"), 1);
}

#[test]
fn a_reload_adds_a_chain_and_the_other_chains_sessions_carry_on() {
    let pki = TestPki::new();
    let n = nodes();
    let dot = chain(&pki, "polkadot", "dot.test", "", &n.dot_url);
    let (gw, cfg) = start(&pki, "reload-chains.toml", &dot);
    let mut open = session(&gw, &pki, "dot.test", "dot.test", "/").unwrap();
    assert_eq!(storage(&mut open), "DOT@10");
    assert_eq!(
        session(&gw, &pki, "localhost", "ksm.test", "/")
            .err()
            .map(|e| e.0),
        Some(404)
    );

    let both = format!(
        "{TOP}{dot}{}",
        chain(&pki, "kusama", "ksm.test", "", &n.ksm_url)
    );
    std::fs::write(&cfg, both).unwrap();
    let ok = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_for(TIMEOUT, "generation 2", || {
        https_get(gw.addr, pki.client_config(), "/health")
            .2
            .contains(r#""generation":2,"last_reload":"ok""#)
    });
    // The new chain is served, with its own certificate (loaded by the reload).
    let mut ksm = session(&gw, &pki, "ksm.test", "ksm.test", "/").unwrap();
    assert_eq!(storage(&mut ksm), "KSM@10");
    // The session opened before goes on.
    open.send(Message::Text(STORAGE.replace(r#""id":7"#, r#""id":8"#)))
        .unwrap();
    assert_eq!(
        result_string(&open.read().unwrap().into_text().unwrap()),
        "DOT@10"
    );
}

#[test]
fn a_chain_table_with_an_error_is_named_by_its_key() {
    let pki = TestPki::new();
    for (text, key) in [
        ("[[chain]]\nhosts = [\"a.test\"]\n[[chain.node]]\nurl = \"ws://127.0.0.1:9944\"\n", "chain[0].name"),
        ("[[chain]]\nname = \"a\"\nhost = \"a.test\"\n", "chain[0].host"),
        ("[[chain]]\nname = \"a\"\n[[chain.node]]\nurl = \"ws://127.0.0.1:9944\"\n[[chain]]\nname = \"b\"\n[[chain.node]]\nurl = \"ws://127.0.0.1:9944\"\n", "chain[1].hosts"),
        ("[[chain]]\nname = \"a\"\nhosts = [\"a.test\"]\n[chain.cache]\nmax_bytes = \"many\"\n[[chain.node]]\nurl = \"ws://127.0.0.1:9944\"\n", "chain[0].cache"),
        ("[[node]]\nurl = \"ws://127.0.0.1:9944\"\n[[chain]]\nname = \"a\"\n[[chain.node]]\nurl = \"ws://127.0.0.1:9944\"\n", "`node`"),
    ] {
        let cfg = write_config(&pki, "bad-chain.toml", text);
        let out = check_config(cfg.to_str().unwrap());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(key) && err.contains("bad-chain.toml"), "{key}: {err}");
    }
}

/// A Debian `/etc/nginx`: nginx.conf including conf.d/*.conf (the pools
/// and the rate zone) and sites-enabled/* (three sites: two chains by name,
/// one host with a location per chain), and a redirect server.
#[test]
fn a_whole_etc_nginx_with_includes_converts_passes_check_and_serves_every_site() {
    let pki = TestPki::new();
    let n = nodes();
    let etc = pki.dir.join("etc-nginx");
    for d in ["conf.d", "sites-enabled"] {
        std::fs::create_dir_all(etc.join(d)).unwrap();
    }
    let tls = |hosts: &[&str]| {
        let (c, k) = pki.issue(hosts);
        format!(
            "ssl_certificate {};\n    ssl_certificate_key {};",
            c.display(),
            k.display()
        )
    };
    let site = |file: &str, text: String| {
        std::fs::write(etc.join("sites-enabled").join(file), text).unwrap()
    };
    std::fs::write(
        etc.join("nginx.conf"),
        "user www-data;\nworker_processes auto;\nevents { worker_connections 768; }\nhttp {\n  sendfile on;\n  include /etc/nginx/conf.d/*.conf;\n  include /etc/nginx/sites-enabled/*;\n  server { listen 80; server_name _; return 301 https://$host$request_uri; }\n}\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("conf.d/pools.conf"),
        format!(
            "upstream polkadot {{ server {}; }}\nupstream kusama {{ server {} weight=2; }}\nlimit_req_zone $binary_remote_addr zone=rpc:10m rate=600r/m;\n",
            n.dot_url.trim_start_matches("ws://"),
            n.ksm_url.trim_start_matches("ws://")
        ),
    )
    .unwrap();
    site(
        "polkadot",
        format!("server {{\n    listen 443 ssl default_server;\n    server_name polkadot.test;\n    {}\n    location / {{\n        proxy_pass http://polkadot;\n        proxy_http_version 1.1;\n        proxy_set_header Upgrade $http_upgrade;\n        proxy_set_header Connection \"upgrade\";\n    }}\n}}\n", tls(&["polkadot.test"])),
    );
    site(
        "kusama",
        format!("server {{\n    listen 443 ssl;\n    server_name kusama.test *.kusama.test;\n    {}\n    location / {{\n        limit_req zone=rpc burst=20;\n        proxy_pass http://kusama;\n    }}\n}}\n", tls(&["kusama.test", "*.kusama.test"])),
    );
    site(
        "rpc",
        format!("server {{\n    listen 443 ssl;\n    server_name rpc.test;\n    {}\n    location /polkadot/ {{ proxy_pass http://polkadot/; }}\n    location /kusama/ {{ proxy_pass http://kusama/; }}\n}}\n", tls(&["rpc.test"])),
    );
    let out = run_ringway(&["import-nginx", etc.join("nginx.conf").to_str().unwrap()]);
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{notes}");
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(notes.contains("worker_processes"), "{notes}");
    assert_eq!(toml.matches("[[chain]]").count(), 4, "{toml}");
    for part in [
        "redirect_listen = \"0.0.0.0:80\"",
        "hosts = [\"kusama.test\", \"*.kusama.test\"]",
        "path = \"/kusama\"",
        "rate = 10",
        "burst = 20",
    ] {
        assert!(toml.contains(part), "{part}:\n{toml}");
    }
    // Port 80 is not ours to bind here.
    let toml = toml.replace("redirect_listen = \"0.0.0.0:80\"", "");
    let cfg = write_config(&pki, "imported.toml", &toml);
    let check = check_config(cfg.to_str().unwrap());
    assert!(
        check.status.success(),
        "{}\n{toml}",
        String::from_utf8_lossy(&check.stderr)
    );
    let gw = Gateway::start_args(&[
        "--config".into(),
        cfg.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--workers".into(),
        "1".into(),
    ]);
    for (sni, path, answer) in [
        ("polkadot.test", "/", "DOT@10"),
        ("kusama.test", "/", "KSM@10"),
        ("ws.kusama.test", "/", "KSM@10"),
        ("rpc.test", "/polkadot/", "DOT@10"),
        ("rpc.test", "/kusama", "KSM@10"),
    ] {
        match session(&gw, &pki, sni, sni, path) {
            Ok(mut ws) => assert_eq!(storage(&mut ws), answer, "{sni}{path}"),
            Err(e) => panic!("{sni}{path}: {e:?}\n{toml}"),
        }
    }
}

/// Real nodes and real clients: Polkadot-JS against a real Substrate runtime
/// (chopsticks) by one host name, ethers against anvil by another, through
/// one listener, each with its own certificate. Neither chain's kind is
/// written: the gateway asks the nodes (anvil answers eth_chainId).
#[test]
fn polkadot_js_and_ethers_reach_their_own_real_chains_by_host_name() {
    let pki = TestPki::new();
    let substrate = chopsticks();
    let ethereum = anvil(&anvil_path(), &[]);
    // API keys as a provider's customers pass them: Polkadot-JS's in the
    // path, ethers' in an X-Api-Key header field.
    const DOT_KEY: &str = "dot-customer-0123456789";
    const ETH_KEY: &str = "eth-customer-0123456789";
    let keys = write_config(
        &pki,
        "real-keys.toml",
        &format!("[[key]]\nname = \"dot-customer\"\nkey = \"{DOT_KEY}\"\nchains = [\"asset-hub\"]\n\n[[key]]\nname = \"eth-customer\"\nkey = \"{ETH_KEY}\"\nchains = [\"anvil\"]\n"),
    );
    let chains = format!(
        "[server]\nmetrics_listen = \"127.0.0.1:0\"\n[keys]\nfile = \"{}\"\n",
        keys.display()
    ) + &chain(&pki, "asset-hub", "dot.test", "", &substrate.url)
        + &chain(&pki, "anvil", "eth.test", "", &ethereum.url);
    let (gw, _) = start(&pki, "real.toml", &chains);
    let clients = JsScript::new("chains.mjs", &pki);
    let port = gw.addr.port();
    let (ok, stdout, stderr) = clients.run(&[
        &format!("wss://dot.test:{port}/{DOT_KEY}"),
        &format!("wss://eth.test:{port}/"),
        ETH_KEY,
    ]);
    assert!(
        ok && stdout.contains("polkadot-js statemine \"asset-hub-rococo\"")
            && stdout.contains("ethers 31337"),
        "{stdout}\n{stderr}"
    );
    // Each customer's usage: Polkadot-JS's start-up calls and the head
    // it was notified of; ethers' calls.
    let metrics = printed_addr(&gw, "metrics on http://");
    let usage: serde_json::Value = serde_json::from_str(&plain_get(&metrics, "/usage").2).unwrap();
    let dot = &usage["keys"]["dot-customer"]["current"];
    assert!(dot["calls"].as_u64().unwrap() >= 5, "{usage}");
    assert!(dot["notifications"].as_u64().unwrap() >= 1, "{usage}");
    assert!(
        dot["bytes_out"].as_u64().unwrap() > 100_000,
        "metadata: {usage}"
    );
    let eth = &usage["keys"]["eth-customer"]["current"];
    assert!(eth["calls"].as_u64().unwrap() >= 2, "{usage}");
    // Without a key, nothing.
    let refused = session(&gw, &pki, "dot.test", "dot.test", "/");
    assert!(refused.is_err(), "a session without a key");
    // The Ethereum chain is routed as one: its probes speak eth_ methods.
    let health = https_get(gw.addr, pki.client_config(), "/health?chain=anvil").2;
    assert!(health.contains(r#""chain":"0x7a69""#), "{health}");
}
