//! SIGHUP reloads the whole configuration, as `nginx -s reload` does: new
//! sessions follow the new node list, sessions on a removed node close
//! 1001 after the grace, and a file with an error is refused by name.
//! (Under load, with the load generator: `loadtest/tests/reload.rs`.)

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

fn hup(gw: &Gateway) {
    gw.signal("HUP");
}

/// A config file in front of `nodes`, with fast health checks.
fn config(path: &Path, nodes: &[String], extra: &str) {
    let mut text = format!("{extra}\n[health]\ninterval_ms = 100\n");
    for n in nodes {
        text.push_str(&format!("[[node]]\nurl = \"{n}\"\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// `GET /health` on the public port.
fn health(gw: &Gateway, pki: &TestPki) -> String {
    https_get(gw.addr, pki.client_config(), "/health").2
}

/// Which node answers a new session (each answers with its name).
fn answered_by(gw: &Gateway, pki: &TestPki) -> String {
    let mut ws = ws_connect(gw, pki.client_config(), "/");
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":1,"method":"who"}"#.into(),
    ))
    .unwrap();
    let answer = ws.read().unwrap().into_text().unwrap();
    let _ = ws.close(None);
    result_string(&answer)
}

#[test]
fn new_sessions_follow_the_reloaded_nodes_and_a_removed_nodes_sessions_close_1001() {
    follow_reload(&[]);
}

#[test]
fn shared_mode_follows_a_reload_too() {
    follow_reload(&["--shared"]);
}

fn follow_reload(mode: &[&str]) {
    let pki = TestPki::new();
    let a = Upstream::start(Behaviour::Answer("\"A\"".into()));
    let b = Upstream::start(Behaviour::Answer("\"B\"".into()));
    let file = pki.dir.join("reload.toml");
    let grace = "[pool]\nremoved_grace_ms = 300";
    config(&file, &[a.url()], grace);
    let args = [&["--config", file.to_str().unwrap()][..], mode].concat();
    let gw = Gateway::start(&pki, &[], &args);
    assert_eq!(answered_by(&gw, &pki), "A");
    assert!(health(&gw, &pki).contains(r#""generation":1,"last_reload":"none""#));
    let mut on_a = ws_connect(&gw, pki.client_config(), "/");

    // B added, A removed.
    config(&file, &[b.url()], grace);
    hup(&gw);
    wait_for(TIMEOUT, "generation 2", || {
        health(&gw, &pki).contains(r#""generation":2,"last_reload":"ok""#)
    });
    for _ in 0..6 {
        assert_eq!(answered_by(&gw, &pki), "B", "every worker follows");
    }
    // The session on A goes on until the grace has passed, then is told
    // to go elsewhere.
    on_a.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":7,"method":"who"}"#.into(),
    ))
    .unwrap();
    let answer = on_a.read().unwrap().into_text().unwrap();
    assert_eq!(result_string(&answer), "A");
    let closed = loop {
        match on_a.read() {
            Ok(Message::Close(c)) => break c,
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    let close = closed.expect("a close code");
    assert_eq!(close.code, CloseCode::Away, "{close:?}");
    assert!(close.reason.contains("removed"), "{close:?}");
    let log = gw.stop_and_read_stderr();
    assert!(
        log.contains("configuration reloaded (generation 2)"),
        "{log}"
    );
    assert!(log.contains(&format!("node {} removed", a.url())), "{log}");
}

#[test]
fn a_file_with_an_error_is_refused_by_key_and_the_running_configuration_stays() {
    let pki = TestPki::new();
    let a = Upstream::start(Behaviour::Answer("\"A\"".into()));
    let b = Upstream::start(Behaviour::Answer("\"B\"".into()));
    let file = pki.dir.join("broken.toml");
    config(&file, &[a.url()], "");
    let gw = Gateway::start(&pki, &[], &["--config", file.to_str().unwrap()]);
    let mut open = ws_connect(&gw, pki.client_config(), "/");

    // A new node, and a value out of range.
    config(&file, &[b.url()], "[limits]\nidle_timeout_s = 0");
    hup(&gw);
    wait_for(TIMEOUT, "the refusal", || {
        health(&gw, &pki).contains(r#""generation":1,"last_reload":"refused""#)
    });
    assert_eq!(answered_by(&gw, &pki), "A", "nothing changed");
    open.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":2,"method":"x"}"#.into(),
    ))
    .unwrap();
    assert_eq!(
        result_string(&open.read().unwrap().into_text().unwrap()),
        "A"
    );

    // Listening settings need a restart: kept and named; the rest applies.
    config(
        &file,
        &[b.url()],
        "[server]\nredirect_listen = \"127.0.0.1:0\"",
    );
    hup(&gw);
    wait_for(TIMEOUT, "generation 2", || {
        health(&gw, &pki).contains(r#""generation":2,"last_reload":"ok""#)
    });
    assert_eq!(answered_by(&gw, &pki), "B");
    let log = gw.stop_and_read_stderr();
    let refused = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(refused.contains("limits.idle_timeout_s"), "{refused}");
    assert!(refused.contains("broken.toml"), "{refused}");
    assert!(
        log.contains("server.redirect_listen changed: kept"),
        "{log}"
    );
}

/// Metrics say which generation runs and how reloads went.
#[test]
fn reloads_are_counted_on_metrics() {
    let pki = TestPki::new();
    let a = Upstream::start(Behaviour::Echo);
    let file = pki.dir.join("counted.toml");
    config(&file, &[a.url()], "");
    let gw = Gateway::start(&pki, &[], &["--config", file.to_str().unwrap()]);
    let metrics = || https_get(gw.addr, pki.client_config(), "/metrics").2;
    std::fs::write(&file, "this is not toml").unwrap();
    hup(&gw);
    wait_for(TIMEOUT, "a refused reload", || {
        metrics().contains("ringway_reloads_total{outcome=\"refused\"} 1")
    });
    config(&file, &[a.url()], "");
    hup(&gw);
    wait_for(TIMEOUT, "a reload", || {
        let m = metrics();
        m.contains("ringway_reloads_total{outcome=\"ok\"} 1")
            && m.contains("ringway_config_generation 2")
    });
}

/// A node that accepts and then sends a byte every 200 ms, for ever; and
/// the connections it took so far.
fn trickling_node() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", l.local_addr().unwrap());
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || loop {
                use std::io::Write;
                std::thread::sleep(std::time::Duration::from_millis(200));
                if s.write_all(b"H").is_err() {
                    return;
                }
            });
        }
    });
    (url, taken)
}

/// Guards operations off the signal thread: asking a chain's nodes what
/// they are had a per-read timeout and no total one, on the signal thread,
/// so a node trickling bytes held a reload, and SIGTERM behind it, for ever.
#[test]
fn sigterm_is_served_at_once_while_a_reload_asks_a_trickling_node_its_kind() {
    let pki = TestPki::new();
    let (trickle, taken) = trickling_node();
    let path = pki.dir.join("trickle.toml");
    let write = |extra: &str| {
        std::fs::write(
            &path,
            format!("[health]\nprobe = \"connect\"\n{extra}\n[[chain]]\nname = \"slow\"\n[[chain.node]]\nurl = \"{trickle}\"\n"),
        )
        .unwrap()
    };
    write("");
    let start = std::time::Instant::now();
    let mut gw = Gateway::start(&pki, &[], &["--config", path.to_str().unwrap()]);
    // The start asked the node within its deadline (5 s), not for ever.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    write("# changed");
    // The reload is asking the node (probes only connect and let go).
    let before = taken.load(std::sync::atomic::Ordering::SeqCst);
    hup(&gw);
    wait_for(TIMEOUT, "the reload to ask the node", || {
        taken.load(std::sync::atomic::Ordering::SeqCst) > before + 1
    });
    let term = std::time::Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let exit = gw.wait_exit(std::time::Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    assert!(
        term.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        term.elapsed()
    );
}
