//! API keys (first step): passed the ways providers pass them, never sent
//! on to a node; refused with 401 (none, unknown, disabled), 403 (another
//! chain, another origin) and 429 (its connections); revoked by a reload
//! within a second without touching other keys' sessions; real clients
//! with the key in the path and the query.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

const ALICE: &str = "alice-0123456789abcdef";
const BOB: &str = "bob-0123456789abcdef00";

fn keys_file(pki: &TestPki, alice_disabled: bool) -> std::path::PathBuf {
    write_config(
        pki,
        "keys.toml",
        &format!(
            "[[key]]\nname = \"alice\"\nkey = \"{ALICE}\"\ndisabled = {alice_disabled}\nmax_connections = 3\n\n[[key]]\nname = \"bob\"\nkey = \"{BOB}\"\nchains = [\"kusama\"]\norigins = [\"https://bob.example\"]\n"
        ),
    )
}

/// Two chains (polkadot for any host, kusama at /kusama), keys required.
fn start(pki: &TestPki, dot: &str, ksm: &str) -> Gateway {
    let keys = keys_file(pki, false);
    let cfg = write_config(
        pki,
        "keys-gw.toml",
        &format!(
            "[server]\nmetrics_listen = \"127.0.0.1:0\"\n[keys]\nfile = \"{}\"\n[log]\naccess = true\n[[chain]]\nname = \"polkadot\"\n[[chain.node]]\nurl = \"{dot}\"\n[[chain]]\nname = \"kusama\"\npath = \"/kusama\"\n[[chain.node]]\nurl = \"{ksm}\"\n",
            keys.display()
        ),
    );
    Gateway::start(pki, &[], &["--config", cfg.to_str().unwrap()])
}

/// The status of an upgrade to `path` with extra header fields.
fn upgrade_status(
    gw: &Gateway,
    pki: &TestPki,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let mut s = tls_connect(gw.addr, pki.client_config());
    let req = upgrade_request(path, |h| {
        for (n, v) in extra {
            h.push((n.to_string(), v.to_string()));
        }
    });
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let (status, _, body) = read_response(&mut s);
    (status, body)
}

/// The next connection the node saw that is not the gateway's health probe.
fn seen(up: &Upstream) -> SeenRequest {
    loop {
        let s = up.next_session();
        if s.header("user-agent") != Some("ringway-health") {
            return s;
        }
    }
}

#[test]
fn a_key_passed_as_providers_pass_it_is_used_and_never_reaches_the_node() {
    let pki = TestPki::new();
    let dot = Upstream::start(Behaviour::Substrate(FakeChain::new(100)));
    let ksm = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &dot.url(), &ksm.url());
    let bearer = format!("Bearer {ALICE}");
    for (path, header) in [
        (format!("/{ALICE}"), None),
        (format!("/?apikey={ALICE}&x=1"), None),
        ("/".to_string(), Some(("X-Api-Key", ALICE))),
        ("/".to_string(), Some(("Authorization", bearer.as_str()))),
    ] {
        let extra: Vec<(&str, &str)> = header.into_iter().collect();
        let (status, body) = upgrade_status(&gw, &pki, &path, &extra);
        assert_eq!(status, 101, "{path} {extra:?}: {body}");
        let s = seen(&dot);
        assert!(!s.path.contains(ALICE), "{}", s.path);
        assert!(
            s.header("x-api-key").is_none() && s.header("authorization").is_none(),
            "{s:?}"
        );
        assert!(s.path == "/" || s.path == "/?x=1", "{}", s.path);
    }
    // A key on a chain's path: /kusama/<key> reaches kusama's node as /.
    let (status, body) = upgrade_status(
        &gw,
        &pki,
        &format!("/kusama/{BOB}"),
        &[("Origin", "https://bob.example")],
    );
    assert_eq!(status, 101, "{body}");
    assert_eq!(seen(&ksm).path, "/");
    // Over HTTP: the call answered, the key in no access line.
    let (status, body) = post_json_to(
        tls_connect(gw.addr, pki.client_config()),
        "localhost",
        &format!("/{ALICE}"),
        r#"{"jsonrpc":"2.0","id":1,"method":"echo"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let log = gw.stop_and_read_stderr();
    assert!(!log.contains(ALICE) && !log.contains(BOB), "{log}");
}

#[test]
fn requests_without_a_usable_key_are_refused_with_what_is_wrong() {
    let pki = TestPki::new();
    let dot = Upstream::start(Behaviour::Echo);
    let ksm = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &dot.url(), &ksm.url());
    // Path, header fields, the status, a word of its reason.
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: [Case; 5] = [
        ("/".into(), vec![], 401, "required"),
        (
            "/".into(),
            vec![("X-Api-Key", "not-a-key-at-all-000000")],
            401,
            "unknown",
        ),
        // Bob may use kusama only, and from his origin only.
        (
            format!("/{BOB}"),
            vec![("Origin", "https://bob.example")],
            403,
            "chain",
        ),
        (
            format!("/kusama/{BOB}"),
            vec![("Origin", "https://evil.example")],
            403,
            "origin",
        ),
        (format!("/kusama?apikey={ALICE}"), vec![], 101, ""),
    ];
    for (path, extra, want, why) in cases {
        let (status, body) = upgrade_status(&gw, &pki, &path, &extra);
        assert_eq!(status, want, "{path}: {body}");
        assert!(body.contains(why), "{path}: {body}");
        assert!(!body.contains(ALICE) && !body.contains(BOB), "{body}");
    }
    // Over HTTP: 401 with a JSON-RPC error.
    let (status, body) = post_json(
        gw.addr,
        pki.client_config(),
        r#"{"jsonrpc":"2.0","id":1,"method":"echo"}"#,
    );
    assert_eq!(status, 401, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("API key"),
        "{body}"
    );
    // Alice may hold three connections at once.
    let open: Vec<_> = (0..3)
        .map(|_| ws_connect(&gw, pki.client_config(), &format!("/{ALICE}")))
        .collect();
    assert_eq!(upgrade_status(&gw, &pki, &format!("/{ALICE}"), &[]).0, 429);
    drop(open);
    wait_for(TIMEOUT, "alice's connections closed", || {
        upgrade_status(&gw, &pki, &format!("/{ALICE}"), &[]).0 == 101
    });
}

#[test]
fn a_reload_that_disables_a_key_closes_its_sessions_within_a_second_and_no_others() {
    let pki = TestPki::new();
    let dot = Upstream::start(Behaviour::Echo);
    let ksm = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &dot.url(), &ksm.url());
    let mut alice = ws_connect(&gw, pki.client_config(), &format!("/{ALICE}"));
    let mut bob = {
        let stream = tls_connect(gw.addr, pki.client_config());
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(
            gw.url(&format!("/kusama/{BOB}")),
        )
        .unwrap();
        req.headers_mut()
            .insert("Origin", "https://bob.example".parse().unwrap());
        tungstenite::client::client(req, stream).unwrap().0
    };
    echo_call(&mut alice, "before");
    echo_call(&mut bob, "before");

    // Under load: alice keeps a call in flight all along.
    let call = |id: u64| Message::text(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"echo"}}"#));
    alice.send(call(1)).unwrap();
    keys_file(&pki, true);
    let ok = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let start = Instant::now();
    let mut answered = 0;
    loop {
        match alice.read() {
            Ok(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1008);
                assert_eq!(f.reason, "key revoked");
                break;
            }
            Ok(Message::Text(_)) => {
                answered += 1;
                let _ = alice.send(call(answered + 1));
            }
            Ok(_) => {}
            Err(e) => panic!("{e} after {answered} answers"),
        }
    }
    assert!(answered > 10, "alice was under load: {answered} answers");
    // The reload is seen at the next look (every 500 ms) after it took effect.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    echo_call(&mut bob, "after");
    assert_eq!(upgrade_status(&gw, &pki, &format!("/{ALICE}"), &[]).0, 401);
    // Usage is untouched by the reload: bob's two calls, alice's calls,
    // her refused connection.
    let metrics = printed_addr(&gw, "metrics on http://");
    let usage: serde_json::Value = serde_json::from_str(&plain_get(&metrics, "/usage").2).unwrap();
    assert_eq!(usage["keys"]["bob"]["current"]["calls"], 2, "{usage}");
    assert_eq!(usage["keys"]["bob"]["state"], "active", "{usage}");
    let a = &usage["keys"]["alice"];
    assert_eq!(a["state"], "disabled", "{usage}");
    assert!(
        a["current"]["calls"].as_u64().unwrap() > answered,
        "{usage}"
    );
    assert_eq!(a["current"]["refused"]["disabled"], 1, "{usage}");
}

/// ethers and web3 (unchanged) with the key in the query, against anvil.
#[test]
fn ethers_and_web3_use_a_key_in_the_query() {
    let pki = TestPki::new();
    let node = anvil(&anvil_path(), &[]);
    let http = node.url.replacen("ws://", "http://", 1);
    let keys = write_config(
        &pki,
        "eth-keys.toml",
        &format!("[[key]]\nname = \"alice\"\nkey = \"{ALICE}\"\n"),
    );
    let cfg = write_config(
        &pki,
        "keys-eth.toml",
        &format!(
            "[keys]\nfile = \"{}\"\n[routing]\nchain = \"ethereum\"\n",
            keys.display()
        ),
    );
    let gw = Gateway::start(
        &pki,
        std::slice::from_ref(&node.url),
        &["--config", cfg.to_str().unwrap()],
    );
    let clients = JsScript::new("clients.mjs", &pki);
    let (ok, stdout, stderr) = clients.run(&[&gw.url(&format!("/?apikey={ALICE}")), &http]);
    assert!(
        ok && stdout.contains("ethers 31337") && stdout.contains("web3 31337"),
        "{stdout}\n{stderr}"
    );
    let (status, _) = upgrade_status(&gw, &pki, "/", &[]);
    assert_eq!(status, 401);
}

/// A gateway on two chains with key `carol`, whose keys file is `keys`.
fn start_with_keys(pki: &TestPki, dot: &str, ksm: &str, keys: &str) -> Gateway {
    let file = write_config(pki, "tight-keys.toml", keys);
    let cfg = write_config(
        pki,
        "tight-gw.toml",
        &format!(
            "[keys]\nfile = \"{}\"\n[[chain]]\nname = \"polkadot\"\n[[chain.node]]\nurl = \"{dot}\"\n[[chain]]\nname = \"kusama\"\npath = \"/kusama\"\n[[chain.node]]\nurl = \"{ksm}\"\n",
            file.display()
        ),
    );
    Gateway::start(pki, &[], &["--config", cfg.to_str().unwrap()])
}

fn hup(gw: &Gateway) {
    gw.signal("HUP");
}

/// The answer to `method` on `ws`.
fn answer(ws: &mut tungstenite::WebSocket<TlsStream>, id: u64, method: &str) -> serde_json::Value {
    ws.send(Message::text(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#
    )))
    .unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Guards keys tightened at reload: their open sessions kept the old key
/// (its chains, methods, rate and quota) for as long as they lived.
#[test]
fn a_key_tightened_by_a_reload_binds_its_open_sessions_from_their_next_call() {
    const CAROL: &str = "carol-0123456789abcdef";
    let pki = TestPki::new();
    let dot = Upstream::start(Behaviour::Echo);
    let ksm = Upstream::start(Behaviour::Echo);
    let open = format!("[[key]]\nname = \"carol\"\nkey = \"{CAROL}\"\n");
    let gw = start_with_keys(&pki, &dot.url(), &ksm.url(), &open);
    let mut on_dot = ws_connect(&gw, pki.client_config(), &format!("/{CAROL}"));
    let mut on_ksm = ws_connect(&gw, pki.client_config(), &format!("/kusama/{CAROL}"));
    assert!(answer(&mut on_dot, 1, "anything").get("error").is_none());
    assert!(answer(&mut on_ksm, 1, "anything").get("error").is_none());
    // Tightened: polkadot only, `echo` only, a quota of 3 credits.
    let tight = format!(
        "[[key]]\nname = \"carol\"\nkey = \"{CAROL}\"\nchains = [\"polkadot\"]\nallow_methods = [\"echo\"]\nquota = 4\n"
    );
    write_config(&pki, "tight-keys.toml", &tight);
    hup(&gw);
    // The next call of each session finds the new limits (a reload is
    // taken within the gateway's next look at its file: wait for it).
    wait_for(TIMEOUT, "the method refused", || {
        answer(&mut on_dot, 2, "anything")["error"]["code"] == -32601
    });
    // The quota of 4 credits (some used already) holds for the open session.
    let answers: Vec<_> = (10..20).map(|id| answer(&mut on_dot, id, "echo")).collect();
    let ok = answers.iter().filter(|a| a.get("error").is_none()).count();
    assert!(ok < 4, "{ok} answered");
    let last = answers.last().unwrap();
    assert_eq!(last["error"]["code"], -32005, "{last}");
    assert_eq!(last["error"]["data"]["quota"], 4, "{last}");
    let closed = on_ksm.send(Message::text(r#"{"jsonrpc":"2.0","id":3,"method":"echo"}"#));
    assert!(closed.is_ok());
    let (code, reason, _) = close_frame(&mut on_ksm);
    assert_eq!(code, 1008);
    assert!(reason.contains("chain"), "{reason}");
}
