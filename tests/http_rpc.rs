//! JSON-RPC over HTTP on the gateway's port: routing by method and block,
//! retry on a pruned node's "State already discarded", keep-alive, limits, CORS.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

fn post(s: &mut TlsStream, body: &str, extra: &str) -> (u16, String, String) {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    read_response(s)
}

fn storage_at(height: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"state_getStorage","params":["0x26aa","0x{height:064x}"]}}"#
    )
}

/// A pruned node that keeps 16 blocks (the gateway is told 256, so it will
/// route some old blocks to it and must retry), and an archive node.
fn two_tier(pki: &TestPki) -> (Gateway, Upstream, Upstream) {
    let pruned = Upstream::start(Behaviour::Substrate(FakeChain::node(1000, 16, "pruned")));
    let archive = Upstream::start(Behaviour::Substrate(FakeChain::node(
        1000,
        u64::MAX,
        "archive",
    )));
    let cfg = write_config(
        pki,
        "tier.toml",
        &format!(
            "[health]\ninterval_ms = 100\n[http]\nmax_body_bytes = 4096\ncors_origins = [\"https://polkadot.js.org\"]\n\
             [[node]]\nurl = \"{}\"\nrole = \"pruned\"\npruning = 256\n[[node]]\nurl = \"{}\"\nrole = \"archive\"\n",
            pruned.url(),
            archive.url()
        ),
    );
    let gw = Gateway::start_args(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        pki.cert.display().to_string(),
        "--key".into(),
        pki.key.display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
    ]);
    // Wait until the health checks have seen the head (and filled the hash window).
    let start = Instant::now();
    loop {
        let mut s = tls_connect(gw.addr, pki.client_config());
        s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let (_, _, body) = read_response(&mut s);
        if body.matches(r#""head":1000"#).count() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "health never saw the heads: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    (gw, pruned, archive)
}

#[test]
fn requests_are_routed_by_block_and_retried_on_pruned_state_errors() {
    let pki = TestPki::new();
    let (gw, _pruned, _archive) = two_tier(&pki);
    let mut s = tls_connect(gw.addr, pki.client_config());
    // Recent block: the pruned node.
    let (status, head, body) = post(&mut s, &storage_at(995), "");
    assert_eq!(status, 200, "{head}{body}");
    assert!(body.contains("pruned@995"), "{body}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "kept alive: {head}"
    );
    // 50 blocks back: within the gateway's idea of pruning (256), so the pruned
    // node is asked, says "State already discarded", and archive answers.
    let (_, _, body) = post(&mut s, &storage_at(950), "");
    assert!(body.contains("archive@950"), "{body}");
    assert!(
        !body.contains("discarded"),
        "the pruned error never reaches the client: {body}"
    );
    // A hash outside the recent window: straight to archive.
    let (_, _, body) = post(&mut s, &storage_at(10), "");
    assert!(body.contains("archive@10"), "{body}");
    // A batch with one old element goes to archive as a whole.
    let batch = format!(r#"[{},{}]"#, storage_at(999), storage_at(20));
    let (_, _, body) = post(&mut s, &batch, "");
    assert!(
        body.contains("archive@999") && body.contains("archive@20"),
        "{body}"
    );
    // Methods without a block: pruned.
    let (_, _, body) = post(
        &mut s,
        r#"{"jsonrpc":"2.0","id":"x","method":"system_health","params":[]}"#,
        "",
    );
    assert!(
        body.contains(r#""id":"x""#) && body.contains("isSyncing"),
        "{body}"
    );
}

#[test]
fn http_limits_and_cors() {
    let pki = TestPki::new();
    let (gw, _pruned, _archive) = two_tier(&pki);
    let mut s = tls_connect(gw.addr, pki.client_config());
    let (status, _, _) = post(&mut s, &"x".repeat(5000), "");
    assert_eq!(status, 413);

    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}").unwrap();
    assert_eq!(read_response(&mut s).0, 415);

    let mut s = tls_connect(gw.addr, pki.client_config());
    let (status, head, _) = post(
        &mut s,
        r#"{"id":1,"method":"system_health"}"#,
        "Origin: https://polkadot.js.org\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        head.contains("Access-Control-Allow-Origin: https://polkadot.js.org"),
        "{head}"
    );
    let (_, head, _) = post(
        &mut s,
        r#"{"id":1,"method":"system_health"}"#,
        "Origin: https://evil.example\r\n",
    );
    assert!(!head.contains("Access-Control-Allow-Origin"), "{head}");
    s.write_all(b"OPTIONS / HTTP/1.1\r\nHost: localhost\r\nOrigin: https://polkadot.js.org\r\nAccess-Control-Request-Method: POST\r\n\r\n").unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 204);
    assert!(
        head.contains("Access-Control-Allow-Methods: POST"),
        "{head}"
    );

    // Chunked request bodies.
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
          10\r\n{\"id\":3,\"method\"\r\n11\r\n:\"system_health\"}\r\n0\r\n\r\n",
    )
    .unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(body.contains(r#""id":3"#), "{body}");
}
