//! HTTP JSON-RPC under abuse: bodies that are huge in pieces, never end,
//! overflow, or are framed so that another proxy in front could read them
//! differently (request smuggling). Each gets a status and the gateway goes
//! on serving. Regressions from the "under attack" report (issue 11, cases
//! 1-3 and 9).

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

const HEAD: &str = "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";

/// One worker (so a stalled core would stall the next request too), an
/// HTTP-speaking node, a short body deadline.
fn gateway(pki: &TestPki) -> (Gateway, Upstream) {
    gateway_with(pki, "max_body_bytes = 1048576\nbody_timeout_ms = 400\n")
}

/// The same with `http`: keys of the `[http]` table.
fn gateway_with(pki: &TestPki, http: &str) -> (Gateway, Upstream) {
    let node = Upstream::start(Behaviour::Substrate(FakeChain::new(10)));
    let cfg = write_config(pki, "abuse.toml", &format!("[http]\n{http}"));
    let gw = Gateway::start(
        pki,
        &[node.url()],
        &["--workers", "1", "--config", cfg.to_str().unwrap()],
    );
    (gw, node)
}

fn send(gw: &Gateway, pki: &TestPki, bytes: &[u8]) -> (u16, String) {
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    s.write_all(bytes).unwrap();
    let (status, _, body) = read_response(&mut s);
    (status, body)
}

fn still_serves(gw: &Gateway, pki: &TestPki) {
    let body = r#"{"jsonrpc":"2.0","id":9,"method":"system_health"}"#;
    let req = format!("{HEAD}Content-Length: {}\r\n\r\n{body}", body.len());
    let (status, answer) = send(gw, pki, req.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""id":9"#), "{answer}");
}

#[test]
fn a_chunk_size_that_overflows_gets_400_not_a_panic() {
    let pki = TestPki::new();
    let (gw, _node) = gateway(&pki);
    let req =
        format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n1\r\n{{\r\nffffffffffffffff\r\nAAAA");
    let (status, body) = send(&gw, &pki, req.as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("chunk size"), "{body}");
    still_serves(&gw, &pki);
    let log = gw.stop_and_read_stderr();
    assert!(!log.contains("panic"), "{log}");
}

#[test]
fn a_body_of_one_byte_chunks_is_answered() {
    let pki = TestPki::new();
    let (gw, _node) = gateway(&pki);
    // 200 KB of JSON whitespace in 1-byte chunks: 1.2 MB on the wire.
    let json = format!(
        r#"{{"jsonrpc":"2.0","id":5,"method":"system_health"{}}}"#,
        " ".repeat(200_000)
    );
    let mut req = format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    for b in json.bytes() {
        req.extend_from_slice(b"1\r\n");
        req.push(b);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = send(&gw, &pki, &req);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""id":5"#), "{body}");
}

#[test]
fn chunked_trailers_and_extensions_are_bounded() {
    let pki = TestPki::new();
    let (gw, _node) = gateway(&pki);
    let mut req =
        format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n").into_bytes();
    for _ in 0..2000 {
        req.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let (status, body) = send(&gw, &pki, &req);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("trailer"), "{body}");

    let req = format!(
        "{HEAD}Transfer-Encoding: chunked\r\n\r\n2;{}\r\n{{}}\r\n0\r\n\r\n",
        "e".repeat(4000)
    );
    let (status, body) = send(&gw, &pki, req.as_bytes());
    assert_eq!(status, 400, "{body}");
    still_serves(&gw, &pki);
}

#[test]
fn a_body_that_stalls_gets_408_at_the_body_deadline() {
    let pki = TestPki::new();
    let (gw, _node) = gateway(&pki);
    // Announces 100 KB, sends 10 bytes, then nothing.
    let req = format!("{HEAD}Content-Length: 100000\r\n\r\n{{\"id\":1,  ");
    let (status, body) = send(&gw, &pki, req.as_bytes());
    assert_eq!(status, 408, "{body}");
    // Chunked too.
    let req = format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n10\r\n{{\"id\"");
    let (status, _) = send(&gw, &pki, req.as_bytes());
    assert_eq!(status, 408);
    still_serves(&gw, &pki);
}

#[test]
fn framing_another_proxy_could_read_differently_gets_400() {
    let pki = TestPki::new();
    let (gw, _node) = gateway(&pki);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"system_health"}"#;
    let cases = [
        format!("{HEAD}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        format!(
            "{HEAD}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        format!("{HEAD}Content-Length: +49\r\n\r\n{body}"),
        format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n+31\r\n{body}\r\n0\r\n\r\n"),
        format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n 31 \r\n{body}\r\n0\r\n\r\n"),
        format!(
            "{HEAD}Transfer-Encoding: chunked\r\nContent-Length: 49\r\n\r\n31\r\n{body}\r\n0\r\n\r\n"
        ),
        format!(
            "POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 49\r\n\r\n{body}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: 49\r\n\r\n{body}"
        ),
    ];
    assert_eq!(body.len(), 49);
    for case in &cases {
        let (status, answer) = send(&gw, &pki, case.as_bytes());
        assert_eq!(status, 400, "{case:?}: {answer}");
    }
    // A coding the gateway does not implement: 501.
    let (status, _) = send(
        &gw,
        &pki,
        format!("{HEAD}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 501);
    still_serves(&gw, &pki);
}

#[test]
fn a_refused_body_closes_the_connection_after_the_answer() {
    // Nothing after an unframeable request may be read as a next request.
    let pki = TestPki::new();
    let (gw, _node) = gateway(&pki);
    let smuggled = r#"{"jsonrpc":"2.0","id":2,"method":"system_health"}"#;
    let req = format!(
        "{HEAD}Content-Length: +5\r\n\r\n{{}}   POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 400);
    assert!(head.contains("Connection: close"), "{head}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// Issue 24: a body that arrives quickly and then stops was cut only at
/// the whole body's deadline (30 s by default: its average rate stayed
/// high). With no byte for `http.body_idle_timeout_ms` it gets 408, whatever
/// came before.
#[test]
fn a_body_stalled_after_a_burst_gets_408_when_it_stalls() {
    let pki = TestPki::new();
    let (gw, _node) = gateway_with(
        &pki,
        "max_body_bytes = 4194304\nbody_idle_timeout_ms = 500\n",
    );
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    s.write_all(format!("{HEAD}Content-Length: 2097152\r\n\r\n").as_bytes())
        .unwrap();
    s.write_all(&vec![b' '; 1 << 20]).unwrap();
    let start = std::time::Instant::now();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("stalled"), "{body}");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "cut after {took:?}");
    still_serves(&gw, &pki);
    let metrics = https_get(gw.addr, pki.client_config(), "/metrics").2;
    assert!(
        metrics.contains(r#"ringway_http_bodies_cut_total{reason="stalled"} 1"#),
        "{metrics}"
    );
}

/// Issue 24: every unfinished body held its declared length: 1,000 stalled
/// 10 MB bodies could hold 10 GB. Beyond `http.max_bodies_bytes` per worker,
/// a new body gets 503 (with Retry-After) before anything is read.
#[test]
fn unfinished_bodies_are_held_within_a_budget_per_worker() {
    let pki = TestPki::new();
    let (gw, _node) = gateway_with(
        &pki,
        "max_body_bytes = 4194304\nmax_bodies_bytes = 8388608\n",
    );
    // Four 2 MiB bodies fill the budget; they stall after 1 KiB.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tls_connect(gw.addr, pki.client_config());
        s.write_all(format!("{HEAD}Content-Length: 2097152\r\n\r\n").as_bytes())
            .unwrap();
        s.write_all(&[b' '; 1024]).unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    s.write_all(format!("{HEAD}Content-Length: 2097152\r\n\r\n").as_bytes())
        .unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    let metrics = https_get(gw.addr, pki.client_config(), "/metrics").2;
    assert!(
        metrics.contains(r#"ringway_http_bodies_cut_total{reason="budget"} 1"#),
        "{metrics}"
    );
    // A small body still fits, and once the others go, so does a large one.
    still_serves(&gw, &pki);
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"system_health","pad":"{}"}}"#,
        "x".repeat(3 << 20)
    );
    let (status, _) = send(
        &gw,
        &pki,
        format!("{HEAD}Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
    );
    assert_eq!(status, 200);
}
