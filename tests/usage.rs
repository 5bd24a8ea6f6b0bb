//! API keys' budgets and usage: a key over its rate is refused call by
//! call (-32005 with each id, HTTP 429 + Retry-After) while another key
//! goes on; a quota in credits runs out by calls (method costs) and by
//! notifications, and the client is told; `GET /usage` equals what the
//! clients were answered, and survives SIGTERM and SIGKILL.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tungstenite::Message;

const ALICE: &str = "alice-0123456789abcdef";
const BOB: &str = "bob-0123456789abcdef00";
const CAROL: &str = "carol-0123456789abcdef";
const DAVE: &str = "dave-0123456789abcdef0";

/// A gateway with `keys` (the keys file's text) and a metrics listener;
/// `nodes`: (chain name, path, node url); `extra`: more of `[keys]`.
fn start(
    pki: &TestPki,
    name: &str,
    keys: &str,
    extra: &str,
    nodes: &[(&str, &str, String)],
) -> (Gateway, String) {
    let file = write_config(pki, &format!("{name}-keys.toml"), keys);
    let mut cfg = format!(
        "[server]\nmetrics_listen = \"127.0.0.1:0\"\n[keys]\nfile = \"{}\"\n{extra}\n",
        file.display()
    );
    for (chain, path, url) in nodes {
        cfg.push_str(&format!(
            "[[chain]]\nname = \"{chain}\"\npath = \"{path}\"\n[[chain.node]]\nurl = \"{url}\"\n"
        ));
    }
    let cfg = write_config(pki, &format!("{name}.toml"), &cfg);
    let gw = Gateway::start(pki, &[], &["--config", cfg.to_str().unwrap()]);
    let metrics = printed_addr(&gw, "metrics on http://");
    (gw, metrics)
}

/// `/usage`'s entry for key `name`.
fn usage(metrics: &str, name: &str) -> Value {
    let (status, _, body) = plain_get(metrics, "/usage");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["keys"][name].clone()
}

fn connect(gw: &Gateway, pki: &TestPki, path: &str) -> tungstenite::WebSocket<TlsStream> {
    ws_connect(gw, pki.client_config(), path)
}

/// Send `n` calls of `method` at once, read the `n` answers: (ids answered
/// with a result, ids refused with -32005).
fn burst(
    ws: &mut tungstenite::WebSocket<TlsStream>,
    from: u64,
    n: u64,
    method: &str,
) -> (Vec<u64>, Vec<(u64, Value)>) {
    for id in from..from + n {
        ws.send(Message::text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}"}}"#
        )))
        .unwrap();
    }
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    while ok.len() + refused.len() < n as usize {
        let Message::Text(t) = ws.read().unwrap() else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        let id = v["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("an answer without its id: {t}"));
        if v["error"]["code"] == -32005 {
            refused.push((id, v["error"].clone()));
        } else {
            ok.push(id);
        }
    }
    (ok, refused)
}

/// POST one call with `key` in X-Api-Key: (status, head, body).
fn post(gw: &Gateway, pki: &TestPki, key: &str, method: &str) -> (u16, String, String) {
    let body = format!(r#"{{"jsonrpc":"2.0","id":7,"method":"{method}"}}"#);
    let mut s = tls_connect(gw.addr, pki.client_config());
    let req = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    read_response(&mut s)
}

/// A POST with `key` refused: 429, a Retry-After field (`retry`, in
/// lower case), and the JSON-RPC error (`error` in it) with the id.
fn refused_over_http(
    gw: &Gateway,
    pki: &TestPki,
    key: &str,
    method: &str,
    retry: &str,
    error: &str,
) {
    let (status, head, body) = post(gw, pki, key, method);
    assert_eq!(status, 429, "{body}");
    assert!(head.to_ascii_lowercase().contains(retry), "{head}");
    assert!(body.contains(error) && body.contains("\"id\":7"), "{body}");
}

#[test]
fn a_key_over_its_rate_gets_32005_with_each_id_while_another_key_goes_on() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Substrate(FakeChain::new(100)));
    let keys = format!(
        "[[key]]\nname = \"alice\"\nkey = \"{ALICE}\"\nrate = 10\n\n[[key]]\nname = \"bob\"\nkey = \"{BOB}\"\nrate = 10000\n\n[[key]]\nname = \"carol\"\nkey = \"{CAROL}\"\nrate = 1\n"
    );
    let (gw, metrics) = start(&pki, "rate", &keys, "", &[("dot", "/", node.url())]);
    let mut alice = connect(&gw, &pki, &format!("/{ALICE}"));
    let mut bob = connect(&gw, &pki, &format!("/{BOB}"));
    let t0 = Instant::now();
    let (ok, refused) = burst(&mut alice, 1, 60, "echo");
    let allowed = 10 + (t0.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        ok.len() >= 10 && ok.len() <= allowed,
        "{} answered",
        ok.len()
    );
    for (id, e) in &refused {
        assert_eq!(e["message"], "rate limit exceeded", "{id}: {e}");
        assert!(e["data"]["retry_after_ms"].as_u64().unwrap() > 0, "{e}");
    }
    let (bob_ok, bob_refused) = burst(&mut bob, 1, 60, "echo");
    assert_eq!((bob_ok.len(), bob_refused.len()), (60, 0));
    // Over HTTP (a key of one call per second): 429 with Retry-After, the
    // error with the request's id.
    assert_eq!(post(&gw, &pki, CAROL, "echo").0, 200);
    refused_over_http(&gw, &pki, CAROL, "echo", "retry-after: 1", "-32005");
    // The session stays open: a call after the wait it was told is answered.
    let told = refused.last().unwrap().1["data"]["retry_after_ms"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(told + 20));
    assert_eq!(burst(&mut alice, 100, 1, "echo").0.len(), 1);
    let a = usage(&metrics, "alice");
    assert_eq!(a["current"]["calls"], ok.len() as u64 + 1, "{a}");
    assert_eq!(a["current"]["credits"], ok.len() as u64 + 1, "{a}");
    assert_eq!(a["current"]["refused"]["rate"], refused.len() as u64, "{a}");
    assert_eq!(a["sessions"], 1, "{a}");
    assert!(a["current"]["bytes_in"].as_u64().unwrap() > 60 * 40, "{a}");
    assert!(a["current"]["bytes_out"].as_u64().unwrap() > 0, "{a}");
    let b = usage(&metrics, "bob");
    assert_eq!(b["current"]["calls"], 60, "{b}");
    assert_eq!(b["current"]["refused"]["rate"], 0, "{b}");
    // And per key in Prometheus.
    let (_, _, text) = plain_get(&metrics, "/metrics");
    assert!(
        text.contains("ringway_key_calls_total{key=\"bob\"} 60"),
        "{text}"
    );
}

#[test]
fn a_quota_runs_out_by_calls_and_by_notifications_and_the_client_is_told() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Echo);
    let pusher = Upstream::start(Behaviour::Push(100));
    let keys = format!(
        "[[key]]\nname = \"carol\"\nkey = \"{CAROL}\"\nquota = 25\nperiod = \"day\"\n\n[[key]]\nname = \"dave\"\nkey = \"{DAVE}\"\nquota = 30\n"
    );
    let (gw, metrics) = start(
        &pki,
        "quota",
        &keys,
        "[keys.method_costs]\nheavy = 10\n",
        &[("dot", "/", node.url()), ("push", "/push", pusher.url())],
    );
    // Calls: two heavy ones (20 credits), the third would pass 25.
    let mut carol = connect(&gw, &pki, &format!("/{CAROL}"));
    let (ok, refused) = burst(&mut carol, 1, 2, "heavy");
    assert_eq!((ok.len(), refused.len()), (2, 0));
    let (_, refused) = burst(&mut carol, 3, 1, "heavy");
    let e = &refused[0].1;
    assert_eq!(e["message"], "quota exceeded", "{e}");
    assert_eq!(e["data"]["quota"], 25, "{e}");
    assert_eq!(e["data"]["period"], "day", "{e}");
    let resets = e["data"]["resets"].as_str().unwrap();
    assert!(
        resets.len() == 20 && resets.ends_with("T00:00:00Z"),
        "{resets}"
    );
    // What is left goes to cheap calls: five, then none.
    let (ok, refused) = burst(&mut carol, 4, 6, "light");
    assert_eq!((ok.len(), refused.len()), (5, 1));
    refused_over_http(&gw, &pki, CAROL, "light", "retry-after: ", "quota exceeded");
    let c = usage(&metrics, "carol");
    assert_eq!(c["current"]["credits"], 25, "{c}");
    assert_eq!(c["current"]["calls"], 7, "{c}");
    assert_eq!(c["current"]["refused"]["quota"], 3, "{c}");

    // Notifications: 100 pushed, 30 credits. Past the quota they stop, and
    // the session closes 1008 saying why.
    let mut dave = connect(&gw, &pki, &format!("/push/{DAVE}"));
    let (code, reason, notes) = close_frame(&mut dave);
    assert_eq!(code, 1008);
    assert!(reason.contains("quota"), "{reason}");
    // A pinned session's notification streams out before it is counted:
    // the one that crosses the quota has gone out.
    assert!((30..=31).contains(&notes), "{notes}");
    let d = usage(&metrics, "dave");
    assert_eq!(d["current"]["notifications"], notes, "{d}");
    assert_eq!(d["current"]["credits"], notes, "{d}");
}

/// The usage of key `name` in the state file, once it says `calls`.
fn wait_for_state(path: &std::path::Path, name: &str, calls: u64) {
    wait_for(Duration::from_secs(5), "the state file", || {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| v["keys"][name]["current"]["calls"] == calls)
    });
}

#[test]
fn usage_equals_what_was_answered_and_survives_sigterm_and_sigkill() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Substrate(FakeChain::new(100)));
    let state = pki.dir.join("usage-state.json");
    let keys = format!("[[key]]\nname = \"erin\"\nkey = \"{ALICE}\"\nquota = 40\n");
    let extra = format!("state = \"{}\"\nstate_interval_ms = 200\n", state.display());
    let nodes = [("dot", "/", node.url())];
    let (gw, metrics) = start(&pki, "state", &keys, &extra, &nodes);
    let mut ws = connect(&gw, &pki, &format!("/{ALICE}"));
    assert_eq!(burst(&mut ws, 1, 10, "echo").0.len(), 10);
    for _ in 0..5 {
        assert_eq!(post(&gw, &pki, ALICE, "echo").0, 200);
    }
    let e = usage(&metrics, "erin");
    assert_eq!(e["current"]["calls"], 15, "{e}");
    assert_eq!(e["current"]["credits"], 15, "{e}");
    assert_eq!(e["period"], "month", "{e}");
    drop(ws);

    // SIGTERM: written at drain.
    let mut gw = gw;
    assert!(Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        gw.wait_exit(Duration::from_secs(15)).is_some(),
        "no exit on SIGTERM"
    );
    wait_for_state(&state, "erin", 15);
    drop(gw);

    // Restarted: the quota used still counts (25 left of 40).
    let (gw, metrics) = start(&pki, "state", &keys, &extra, &nodes);
    assert_eq!(usage(&metrics, "erin")["current"]["calls"], 15);
    let mut ws = connect(&gw, &pki, &format!("/{ALICE}"));
    let (ok, refused) = burst(&mut ws, 1, 30, "echo");
    assert_eq!((ok.len(), refused.len()), (25, 5));

    // SIGKILL after the state file caught up: nothing lost.
    wait_for_state(&state, "erin", 40);
    let gw_pid = gw.pid();
    assert!(Command::new("kill")
        .args(["-KILL", &gw_pid.to_string()])
        .status()
        .unwrap()
        .success());
    drop(ws);
    drop(gw);
    let (gw, metrics) = start(&pki, "state", &keys, &extra, &nodes);
    let e = usage(&metrics, "erin");
    assert_eq!(e["current"]["calls"], 40, "{e}");
    assert_eq!(e["current"]["refused"]["quota"], 5, "{e}");
    let mut ws = connect(&gw, &pki, &format!("/{ALICE}"));
    assert_eq!(
        burst(&mut ws, 1, 1, "echo").1.len(),
        1,
        "the quota is still used up"
    );
}

/// Guards notification charging on a routed session's archive connection:
/// a subscription routed to an archive node streamed its notifications to
/// the client uncharged, past any quota.
#[test]
fn notifications_from_an_archive_node_are_charged_like_any() {
    let pki = TestPki::new();
    let (pruned, archive) = (PubsubNode::start(), PubsubNode::start());
    let keys = write_config(
        &pki,
        "archive-keys.toml",
        &format!("[[key]]\nname = \"dave\"\nkey = \"{DAVE}\"\nquota = 30\n"),
    );
    let cfg = write_config(
        &pki,
        "archive-notes.toml",
        &format!(
            "[server]\nmetrics_listen = \"127.0.0.1:0\"\n[keys]\nfile = \"{}\"\n\
             [health]\nprobe = \"connect\"\n[routing]\narchive_methods = [\"test_subscribe\"]\n\
             [[node]]\nurl = \"{}\"\nrole = \"pruned\"\n[[node]]\nurl = \"{}\"\nrole = \"archive\"\n",
            keys.display(),
            pruned.url,
            archive.url
        ),
    );
    let gw = Gateway::start(&pki, &[], &["--config", cfg.to_str().unwrap()]);
    let metrics = printed_addr(&gw, "metrics on http://");
    let mut dave = connect(&gw, &pki, &format!("/{DAVE}"));
    dave.send(Message::text(
        r#"{"jsonrpc":"2.0","id":1,"method":"test_subscribe","params":[]}"#,
    ))
    .unwrap();
    // The close comes within the quota's worth of messages (uncharged,
    // they would flow for ever: 100 is well past it).
    let mut texts = 0;
    let (code, reason) = loop {
        match dave.read().unwrap() {
            Message::Close(Some(f)) => break (u16::from(f.code), f.reason.to_string()),
            Message::Text(_) => texts += 1,
            _ => {}
        }
        assert!(texts < 100, "{texts} messages and no close: uncharged");
    };
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("quota"), "{reason}");
    // The subscription's answer and its notifications, within the quota.
    assert!((29..=31).contains(&texts), "{texts}");
    let d = usage(&metrics, "dave");
    assert_eq!(d["current"]["notifications"], texts - 1, "{d}");
}

/// Guards the usage state file: one that could not be read was replaced
/// within `state_interval_ms`, usage starting again from zero: the
/// billing record was gone without a word but a log line.
#[test]
fn an_unreadable_state_file_stops_the_start_or_is_moved_aside_never_overwritten() {
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Echo);
    let keys = write_config(
        &pki,
        "state-keys.toml",
        &format!("[[key]]\nname = \"carol\"\nkey = \"{CAROL}\"\n"),
    );
    let state = pki.dir.join("keys.state");
    std::fs::write(&state, b"{ this is not a state file").unwrap();
    let cfg = |reset: bool| {
        write_config(
            &pki,
            "state.toml",
            &format!(
                "[keys]\nfile = \"{}\"\nstate = \"{}\"\nstate_reset = {reset}\n",
                keys.display(),
                state.display()
            ),
        )
    };
    // Without a cluster to resume from: refused, the file as it was.
    let out = Gateway::run_to_exit(
        &pki,
        &node.url(),
        &["--config", cfg(false).to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("keys.state") && stderr.contains("state_reset"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        b"{ this is not a state file"
    );
    // With keys.state_reset: moved aside, and a new one written.
    let gw = Gateway::start(
        &pki,
        &[node.url()],
        &["--config", cfg(true).to_str().unwrap()],
    );
    let aside: Vec<_> = std::fs::read_dir(&pki.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("keys.state.bad-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read(aside[0].path()).unwrap(),
        b"{ this is not a state file"
    );
    wait_for(TIMEOUT, "a new state file", || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.contains("\"version\""))
    });
    drop(gw);
}
