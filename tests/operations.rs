//! Start-up, configuration and listener modes of the real binary.

mod common;

use std::process::Command;

use common::*;
use tungstenite::Message;

/// `ringway --check --config FILE`.
/// The address the gateway printed after `marker` at start (`http://ADDR...`).
#[test]
fn without_a_certificate_a_self_signed_one_is_made_and_printed() {
    let up = Upstream::start(Behaviour::Echo);
    let dir = std::env::temp_dir().join(format!("ringway-selfsigned-{}", std::process::id()));
    let cfg = dir.join("ringway.toml");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[node]]\nurl = \"{}\"\n",
            up.url()
        ),
    )
    .unwrap();
    let gw = Gateway::start_args(&["--config".into(), cfg.display().to_string()]);
    let line = gw
        .stdout_lines
        .iter()
        .find(|l| l.contains("self-signed"))
        .expect("path printed");
    let path = line.rsplit(' ').next().unwrap();
    assert!(
        path.starts_with(dir.to_str().unwrap()),
        "written next to the config: {path}"
    );
    let pem = std::fs::read(path).unwrap();
    let stream = tls_connect(gw.addr, client_config_trusting(&pem));
    let (mut ws, _) = tungstenite::client(gw.url("/"), stream).unwrap();
    echo_call(&mut ws, "ok");
}

#[test]
fn plaintext_listener_serves_ws() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start_args(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--plaintext".into(),
        "--upstream".into(),
        up.url(),
    ]);
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/", gw.addr)).unwrap();
    echo_call(&mut ws, "plain");
    let seen = up.next_session();
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
}

#[test]
fn unix_socket_nodes_work() {
    use std::os::unix::net::UnixListener;
    let pki = TestPki::new();
    let path = pki.dir.join("node.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut ws = tungstenite::accept(s).unwrap();
                while let Ok(m) = ws.read() {
                    if m.is_text() && ws.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gateway::start(&pki, &[format!("unix:{}", path.display())], &[]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    echo_call(&mut ws, "over unix");
}

#[test]
fn check_names_the_file_and_key_of_a_config_error() {
    let pki = TestPki::new();
    let bad = write_config(&pki, "bad.toml", "[limits]\nmax_frame_bytes = 0\n");
    let out = check_config(bad.to_str().unwrap());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(bad.to_str().unwrap()) && err.contains("limits.max_frame_bytes"),
        "{err}"
    );

    let unknown = write_config(
        &pki,
        "unknown.toml",
        "[server]\nlisten = \"127.0.0.1:1\"\nlsiten = 3\n",
    );
    let out = check_config(unknown.to_str().unwrap());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown.toml") && err.contains("lsiten"),
        "{err}"
    );

    let good = write_config(
        &pki,
        "good.toml",
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.cert.display(),
            pki.key.display()
        ),
    );
    let out = check_config(good.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/ringway.example.toml");
    let out = check_config(example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn http_is_redirected_to_https_with_host_and_path() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let cfg = write_config(
        &pki,
        "redirect.toml",
        "[server]\nredirect_listen = \"127.0.0.1:0\"\n",
    );
    let gw = Gateway::start(&pki, &[up.url()], &["--config", cfg.to_str().unwrap()]);
    let addr = printed_addr(&gw, "redirecting http://");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::Write;
    s.write_all(b"GET /ws?x=1 HTTP/1.1\r\nHost: rpc.example.com:80\r\n\r\n")
        .unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 301, "{head}");
    let want = format!(
        "Location: https://rpc.example.com:{}/ws?x=1\r\n",
        gw.addr.port()
    );
    assert!(head.contains(&want), "{head}");
}

#[test]
fn a_unix_socket_listener_serves_plain_websocket() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let path = pki.dir.join("ringway.sock");
    let cfg = write_config(
        &pki,
        "unix.toml",
        &format!(
            "[server]\nunix_listen = \"{}\"\nunix_mode = \"600\"\n",
            path.display()
        ),
    );
    let gw = Gateway::start(&pki, &[up.url()], &["--config", cfg.to_str().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let (mut ws, _) = tungstenite::client("ws://localhost/", stream).unwrap();
    echo_call(&mut ws, "over the unix listener");
    drop(gw);
}

/// certbot writes ECDSA or RSA keys; older setups have PKCS#1 (`BEGIN RSA
/// PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`) files. Needs the openssl CLI.
#[test]
fn rsa_pkcs1_and_ec_sec1_keys_load() {
    assert!(
        Command::new("openssl").arg("version").output().is_ok(),
        "this test makes keys with the openssl CLI: apt-get install openssl"
    );
    let up = Upstream::start(Behaviour::Echo);
    let dir = std::env::temp_dir().join(format!("ringway-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, &[&str], &str); 2] = [
        ("rsa", &["-newkey", "rsa:2048"], "RSA PRIVATE KEY"),
        (
            "ec",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
            "EC PRIVATE KEY",
        ),
    ];
    for (name, newkey, pem_label) in cases {
        let cert = dir.join(format!("{name}.crt"));
        let pkcs8 = dir.join(format!("{name}.p8"));
        let key = dir.join(format!("{name}.key"));
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
            ])
            .args(["-addext", "subjectAltName=DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(newkey)
            .arg("-keyout")
            .arg(&pkcs8)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        // Convert to the traditional format (PKCS#1 for RSA, SEC1 for EC).
        let tool = if name == "rsa" { "rsa" } else { "ec" };
        let mut conv = Command::new("openssl");
        conv.arg(tool).arg("-in").arg(&pkcs8).arg("-out").arg(&key);
        if name == "rsa" {
            conv.arg("-traditional");
        }
        let ok = conv.output().unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(
            std::fs::read_to_string(&key).unwrap().contains(pem_label),
            "{name}: {pem_label}"
        );
        let gw = Gateway::start_args(&[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--upstream".into(),
            up.url(),
            "--health-probe".into(),
            "connect".into(),
        ]);
        let pem = std::fs::read(&cert).unwrap();
        let stream = tls_connect(gw.addr, client_config_trusting(&pem));
        let (mut ws, _) = tungstenite::client(gw.url("/"), stream).unwrap();
        echo_call(&mut ws, name);
    }
}

/// Session tickets open on every worker: SO_REUSEPORT spreads a client's
/// connections over the cores, and each one after the first resumes (TLS 1.3
/// and TLS 1.2), with a ticket any worker decrypts.
#[test]
fn tls_sessions_resume_on_any_worker() {
    use rustls::HandshakeKind;
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&pki, &[up.url()], &["--workers", "4"]);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots_trusting(pki.ca_pem.as_bytes()))
            .with_no_client_auth();
        let cfg = std::sync::Arc::new(cfg);
        let mut kinds = Vec::new();
        for i in 0..12 {
            let mut ws = ws_connect(&gw, cfg.clone(), "/");
            echo_call(&mut ws, &format!("{i}"));
            kinds.push(ws.get_ref().conn.handshake_kind().unwrap());
            let _ = ws.close(None);
            let _ = ws.read();
        }
        assert_eq!(kinds[0], HandshakeKind::Full, "{version:?}");
        assert!(
            kinds[1..].iter().all(|k| *k == HandshakeKind::Resumed),
            "{version:?}: every later connection resumes, whichever worker takes it: {kinds:?}"
        );
    }
}

/// After a certbot renewal: SIGHUP makes the next handshakes serve the new
/// certificate, sessions already open go on, and files that do not load
/// leave the certificate in use.
#[test]
fn sighup_reloads_the_certificate_and_keeps_sessions() {
    let old = TestPki::new();
    let new = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&old, &[up.url()], &[]);
    // Full handshakes only: a resumed session keeps the certificate it began with.
    let mut both =
        (*client_config_trusting(format!("{}{}", old.ca_pem, new.ca_pem).as_bytes())).clone();
    both.resumption = rustls::client::Resumption::disabled();
    let both = std::sync::Arc::new(both);
    let leaf = |pem: &std::path::Path| {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_file_iter(pem)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
    };
    let served = || {
        let mut ws = ws_connect(&gw, both.clone(), "/");
        let cert = ws.get_ref().conn.peer_certificates().unwrap()[0].clone();
        let _ = ws.close(None);
        cert
    };
    assert_eq!(served(), leaf(&old.cert));
    let mut open = ws_connect(&gw, both.clone(), "/");

    // certbot writes the renewed files in place.
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &gw.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    hup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while served() != leaf(&new.cert) {
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for _ in 0..8 {
        assert_eq!(served(), leaf(&new.cert), "every worker serves it");
    }
    echo_call(&mut open, "still here");

    // A key that does not match: the renewed certificate stays in use.
    std::fs::copy(&TestPki::new().key, &old.key).unwrap();
    hup();
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..4 {
        assert_eq!(served(), leaf(&new.cert));
    }
}

/// `log.format = "json"`: every line a JSON object a log shipper can parse;
/// a format it does not know is a config error naming the key.
#[test]
fn json_logs_are_one_object_per_line() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&pki, &[up.url()], &["--log-format", "json", "--access-log"]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    echo_call(&mut ws, "hi");
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
    // And one JSON-RPC request over HTTP.
    let mut s = tls_connect(gw.addr, pki.client_config());
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"system_health"}"#;
    use std::io::Write;
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // (The echo node speaks WebSocket only: 502, with a JSON-RPC error.)
    let status = read_response(&mut s).0;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let err = gw.stop_and_read_stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        // RFC 3339, UTC, milliseconds: 2026-11-29T08:12:03.123Z
        let ts = v["ts"].as_str().unwrap_or_default();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        assert!(v["level"].is_string() && v["msg"].is_string());
    }
    assert!(
        lines.iter().any(|l| l.contains(r#""msg":"ready""#)),
        "{err}"
    );
    // Access lines (--access-log): key=value pairs inside the message.
    let ws_line = lines
        .iter()
        .find(|l| l.contains("access kind=ws"))
        .unwrap_or_else(|| panic!("no session access line: {err}"));
    assert!(
        ws_line.contains("client=127.0.0.1") && ws_line.contains("in=1 out=1 close=1000"),
        "{ws_line}"
    );
    let http_line = lines
        .iter()
        .find(|l| l.contains("access kind=http"))
        .unwrap_or_else(|| panic!("no HTTP access line: {err}"));
    assert!(
        http_line.contains(&format!("status={status} ")),
        "{http_line}"
    );

    let bad = write_config(&pki, "badlog.toml", "[log]\nformat = \"xml\"\n");
    let out = check_config(bad.to_str().unwrap());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("badlog.toml") && err.contains("log.format"),
        "{err}"
    );
}

/// `systemctl stop` or a restart: SIGTERM stops new connections, lets the
/// answer to a request in flight go out, then closes every session with
/// 1001 (going away) and exits 0. In both session modes.
#[test]
fn sigterm_lets_answers_out_then_closes_1001_and_exits() {
    use std::time::{Duration, Instant};
    for mode in [&[][..], &["--shared"][..]] {
        let pki = TestPki::new();
        let node = Upstream::start(Behaviour::Slow(Duration::from_millis(1500)));
        let mut args = vec!["--health-probe", "off"];
        args.extend_from_slice(mode);
        let mut gw = Gateway::start(&pki, &[node.url()], &args);
        let mut idle = ws_connect(&gw, pki.client_config(), "/");
        let mut busy = ws_connect(&gw, pki.client_config(), "/");
        let request = r#"{"jsonrpc":"2.0","id":7,"method":"system_health","params":[]}"#;
        busy.send(Message::Text(request.into())).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let sent = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &gw.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());

        // The idle session goes at once.
        match idle.read().unwrap() {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001, "{mode:?}"),
            other => panic!("{mode:?}: {other:?}"),
        }
        let _ = idle.flush(); // the close reply
        assert!(sent.elapsed() < Duration::from_millis(1000), "{mode:?}");
        // No new connections.
        std::thread::sleep(Duration::from_millis(100));
        assert!(std::net::TcpStream::connect(gw.addr).is_err(), "{mode:?}");
        // The busy one gets its answer first.
        match busy.read().unwrap() {
            Message::Text(t) => assert!(t.contains(r#""id":7"#), "{mode:?}: {t}"),
            other => panic!("{mode:?}: {other:?}"),
        }
        match busy.read().unwrap() {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001, "{mode:?}"),
            other => panic!("{mode:?}: {other:?}"),
        }
        let _ = busy.flush();
        let status = gw
            .wait_exit(Duration::from_secs(5))
            .expect("exits by itself");
        assert!(status.success(), "{mode:?}: {status:?}");
    }
}

/// On shutdown a request whose answer does not come within the drain time
/// gets a JSON-RPC error with its id before the 1001: never silence.
#[test]
fn sigterm_fails_unanswered_requests_with_their_ids() {
    use std::time::{Duration, Instant};
    let pki = TestPki::new();
    let node = Upstream::start(Behaviour::Silent);
    let mut running = Vec::new();
    for mode in [&[][..], &["--shared"][..]] {
        let mut args = vec!["--health-probe", "off"];
        args.extend_from_slice(mode);
        let gw = Gateway::start(&pki, &[node.url()], &args);
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        let batch = r#"[{"jsonrpc":"2.0","id":"a","method":"system_health"},{"jsonrpc":"2.0","id":"b","method":"system_name"}]"#;
        ws.send(Message::Text(
            r#"{"jsonrpc":"2.0","id":9,"method":"system_health"}"#.into(),
        ))
        .unwrap();
        ws.send(Message::Text(batch.into())).unwrap();
        running.push((mode, gw, ws));
    }
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    for (_, gw, _) in &running {
        let ok = Command::new("kill")
            .args(["-TERM", &gw.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    for (mode, mut gw, mut ws) in running {
        let mut texts = Vec::new();
        let code = loop {
            match ws.read().unwrap() {
                Message::Text(t) => texts.push(t.to_string()),
                Message::Close(f) => break f.map(|f| u16::from(f.code)),
                _ => {}
            }
        };
        let _ = ws.flush();
        assert_eq!(code, Some(1001), "{mode:?}");
        assert!(
            sent.elapsed() >= Duration::from_secs(4),
            "{mode:?}: waited for answers"
        );
        let single = texts
            .iter()
            .find(|t| t.starts_with('{'))
            .expect("single error");
        let v: serde_json::Value = serde_json::from_str(single).unwrap();
        assert_eq!(v["id"], 9, "{mode:?}");
        assert_eq!(v["error"]["code"], -32603, "{mode:?}");
        let batch = texts
            .iter()
            .find(|t| t.starts_with('['))
            .expect("batch errors");
        let v: serde_json::Value = serde_json::from_str(batch).unwrap();
        let mut ids: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect();
        ids.sort_by_key(|i| i.to_string());
        assert_eq!(ids, vec!["a", "b"], "{mode:?}: one array for the batch");
        assert!(gw
            .wait_exit(Duration::from_secs(5))
            .expect("exits")
            .success());
    }
}

/// `server.metrics_listen`: Prometheus metrics and health on a private
/// plain-HTTP port; the public port then has no /metrics (but keeps /health
/// for load balancers).
#[test]
fn metrics_can_be_served_apart_from_the_public_port() {
    use std::io::Write;
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let cfg = write_config(
        &pki,
        "metrics.toml",
        "[server]\nmetrics_listen = \"127.0.0.1:0\"\n",
    );
    let gw = Gateway::start(&pki, &[up.url()], &["--config", cfg.to_str().unwrap()]);
    let addr = printed_addr(&gw, "metrics on http://");
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        read_response(&mut s)
    };
    let (status, head, body) = get("/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(body.contains("ringway_connections"), "{body}");
    assert!(body.contains("ringway_node_up{"), "{body}");
    let (status, _, body) = get("/health");
    assert!(status == 200 || status == 503, "{status}");
    assert!(body.starts_with('{'), "{body}");
    assert_eq!(get("/other").0, 404);

    let public = |path| https_get(gw.addr, pki.client_config(), path).0;
    assert_eq!(public("/metrics"), 404, "not on the public port");
    assert_ne!(public("/health"), 404);
}

#[test]
fn check_with_a_missing_certificate_names_the_config_file_and_the_key() {
    // Regression: `--check` named the certificate but not the config file
    // that pointed at it.
    let pki = TestPki::new();
    let cfg = write_config(
        &pki,
        "nocert.toml",
        "[tls]\ncert = \"/nonexistent/fullchain.pem\"\nkey = \"/nonexistent/privkey.pem\"\n",
    );
    let out = check_config(cfg.to_str().unwrap());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(cfg.to_str().unwrap())
            && err.contains("tls.cert")
            && err.contains("/nonexistent/fullchain.pem"),
        "{err}"
    );
}

/// `ringway import-nginx` on the nginx blocks of both seeds (the Polkadot
/// wiki's, and docs.polkadot.com's with its rate limit and "(...)"
/// placeholders): each converts, `--check` accepts the result, and ringway
/// started from it relays a session (certificate and node addresses filled
/// in as a user's would be).
#[test]
fn import_nginx_turns_the_seed_blocks_into_configs_that_serve() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let node = up.url().trim_start_matches("ws://").to_string();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nginx");
    for name in ["000-polkadot-wiki.conf", "001-polkadot-docs.conf"] {
        let text = std::fs::read_to_string(fixtures.join(name))
            .unwrap()
            .replace("CERT_LOCATION_KEY", pki.key.to_str().unwrap())
            .replace("CERT_LOCATION", pki.cert.to_str().unwrap())
            .replace("localhost:9944", &node);
        let nginx = write_config(&pki, &format!("{name}.nginx"), &text);
        let out = run_ringway(&["import-nginx", nginx.to_str().unwrap()]);
        let notes = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {notes}");
        assert!(
            notes.contains("not carried over: proxy_set_header"),
            "{name}: {notes}"
        );
        let toml = String::from_utf8(out.stdout).unwrap();
        let cfg = write_config(&pki, &format!("{name}.toml"), &toml);
        let check = check_config(cfg.to_str().unwrap());
        assert!(
            check.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let gw = Gateway::start_args(&[
            "--config".into(),
            cfg.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ]);
        // The wiki's block names the certificate; the docs' block leaves the
        // virtual host's TLS lines out: a self-signed certificate then.
        let client = match gw.stdout_lines.iter().find(|l| l.contains("self-signed")) {
            Some(line) => {
                client_config_trusting(&std::fs::read(line.rsplit(' ').next().unwrap()).unwrap())
            }
            None => pki.client_config(),
        };
        let (mut ws, _) = tungstenite::client(gw.url("/"), tls_connect(gw.addr, client)).unwrap();
        // A JSON-RPC call (the converted limit_req reads each call: what is
        // not one is answered by the gateway), echoed by the node.
        let call = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"hello","params":["{name}"]}}"#);
        ws.send(Message::Text(call.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text(call));
    }
}

/// `ringway import-nginx` never widens access: an `allow`/`deny` pair in
/// an included site on a proxied location fails the conversion, naming
/// the site's file and line; `--allow-open` converts it with a warning.
#[test]
fn import_nginx_refuses_to_open_a_location_nginx_restricted() {
    let pki = TestPki::new();
    let etc = pki.dir.join("nginx-access");
    std::fs::create_dir_all(etc.join("sites-enabled")).unwrap();
    std::fs::write(
        etc.join("nginx.conf"),
        "events {}\nhttp {\n  include sites-enabled/*;\n}\n",
    )
    .unwrap();
    let site = etc.join("sites-enabled/rpc");
    std::fs::write(
        &site,
        "server {\n  listen 443 ssl;\n  location / {\n    allow 10.0.0.0/8;\n    deny all;\n    proxy_pass http://localhost:9944;\n  }\n}\n",
    )
    .unwrap();
    let conf = etc.join("nginx.conf");
    let out = run_ringway(&["import-nginx", conf.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:4", site.display())) && stderr.contains("allow 10.0.0.0/8"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let out = run_ringway(&["import-nginx", "--allow-open", conf.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains(&format!("{}:5", site.display())),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("[[node]]"));
}
