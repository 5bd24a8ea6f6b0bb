//! Admission control with the real gateway: rate limits per client address
//! across workers and connections, method and origin allowlists, connection
//! caps, and which X-Forwarded-For is believed.

mod common;

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

fn gateway(pki: &TestPki, up: &Upstream, admission: &str) -> Gateway {
    let cfg = write_config(
        pki,
        "admission.toml",
        &format!("[health]\nprobe = \"connect\"\n[admission]\n{admission}"),
    );
    Gateway::start(
        pki,
        &[up.url()],
        &["--config", cfg.to_str().unwrap(), "--workers", "2"],
    )
}

fn call(id: u64, method: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":[]}}"#)
}

fn text(m: Message) -> String {
    match m {
        Message::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn messages_over_the_rate_get_32005_with_their_id_and_other_addresses_are_unaffected() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = gateway(&pki, &up, "rate = 20\nburst = 5\n");
    // Four connections from one address, 100 messages per second in all, for 3 s.
    let mut conns: Vec<_> = (0..4)
        .map(|_| ws_connect(&gw, pki.client_config(), "/"))
        .collect();
    let start = Instant::now();
    let total = 300u64;
    for i in 0..total {
        let due = start + Duration::from_millis(i * 10);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        conns[(i % 4) as usize]
            .send(Message::Text(call(i, "system_health")))
            .unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (mut accepted, mut limited) = (0, 0);
    for (c, ws) in conns.iter_mut().enumerate() {
        for _ in 0..(total / 4) {
            let answer = text(ws.read().unwrap());
            let p = ringway::jsonrpc::peek(answer.as_bytes()).unwrap();
            let id: u64 = std::str::from_utf8(p.id.unwrap()).unwrap().parse().unwrap();
            assert_eq!(
                id % 4,
                c as u64,
                "answers come on the connection that asked"
            );
            if answer.contains("-32005") {
                assert!(
                    answer.contains("rate limit exceeded") && answer.contains("retry_after_ms"),
                    "{answer}"
                );
                limited += 1;
            } else {
                assert!(answer.contains("system_health"), "echoed: {answer}");
                accepted += 1;
            }
        }
    }
    let expected = 5.0 + 20.0 * elapsed;
    assert!(
        (accepted as f64 - expected).abs() <= expected * 0.1,
        "accepted {accepted}, expected about {expected:.0} (limited {limited}, {elapsed:.2} s)"
    );
    assert_eq!(accepted + limited, total);
    // Another address has its own bucket.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let mut ws = ws_connect_from(Some(other), &gw, pki.client_config(), "/");
    for i in 0..5 {
        ws.send(Message::Text(call(1000 + i, "system_health")))
            .unwrap();
        assert!(!text(ws.read().unwrap()).contains("-32005"));
    }
}

#[test]
fn refused_methods_get_32601_over_websocket_and_http() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = gateway(
        &pki,
        &up,
        "methods = \"safe\"\ndeny_methods = [\"state_trace*\"]\n",
    );
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    ws.send(Message::Text(call(1, "author_insertKey"))).unwrap();
    let answer = text(ws.read().unwrap());
    assert!(
        answer.contains("-32601") && answer.contains(r#""id":1"#),
        "{answer}"
    );
    ws.send(Message::Text(call(2, "state_traceBlock"))).unwrap();
    assert!(text(ws.read().unwrap()).contains("-32601"));
    ws.send(Message::Text(call(3, "system_health"))).unwrap();
    assert!(
        text(ws.read().unwrap()).contains("system_health"),
        "allowed methods pass"
    );

    let mut s = tls_connect(gw.addr, pki.client_config());
    let body = call(4, "author_rotateKeys");
    let req = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let (status, _, answer) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(
        answer.contains("-32601") && answer.contains(r#""id":4"#),
        "{answer}"
    );
}

#[test]
fn http_over_the_rate_gets_429_with_retry_after() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = gateway(&pki, &up, "rate = 1\nburst = 1\n");
    let mut s = tls_connect(gw.addr, pki.client_config());
    let mut statuses = Vec::new();
    for i in 0..2 {
        let body = call(i, "system_health");
        let req = format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let (status, head, answer) = read_response(&mut s);
        if status == 429 {
            assert!(head.contains("Retry-After: "), "{head}");
            assert!(
                answer.contains("-32005") && answer.contains(r#""id":1"#),
                "{answer}"
            );
        }
        statuses.push(status);
    }
    // The echo node is no HTTP server: the first call gets its 502 answer; what
    // matters is that the second is refused by the limit, before any node.
    assert_eq!(statuses[1], 429, "{statuses:?}");
}

#[test]
fn origins_outside_the_list_get_403() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = gateway(
        &pki,
        &up,
        "origins = [\"https://polkadot.js.org\", \"*.example.com\"]\n",
    );
    for (origin, status) in [
        (Some("https://polkadot.js.org"), 101),
        (Some("http://app.example.com"), 101),
        (Some("https://evil.example.net"), 403),
        (None, 101),
    ] {
        let mut s = tls_connect(gw.addr, pki.client_config());
        let req = upgrade_request("/", |h| {
            if let Some(o) = origin {
                h.push(("Origin".into(), o.into()));
            }
        });
        s.write_all(req.as_bytes()).unwrap();
        let (got, head, body) = read_response(&mut s);
        assert_eq!(got, status, "{origin:?}: {head}{body}");
    }
}

#[test]
fn connection_caps_answer_429_per_address_and_503_in_total() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = gateway(
        &pki,
        &up,
        "max_connections_per_ip = 2\nmax_connections = 3\n",
    );
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    let b: IpAddr = "127.0.0.3".parse().unwrap();
    let _one = ws_connect_from(Some(a), &gw, pki.client_config(), "/");
    let _two = ws_connect_from(Some(a), &gw, pki.client_config(), "/");
    let mut s = tls_connect_from(Some(a), gw.addr, pki.client_config());
    s.write_all(upgrade_request("/", |_| {}).as_bytes())
        .unwrap();
    let (status, head, body) = read_response(&mut s);
    assert_eq!(status, 429, "{head}{body}");
    assert!(body.contains("max_connections_per_ip"), "{body}");
    drop(s);
    std::thread::sleep(Duration::from_millis(100));
    let _three = ws_connect_from(Some(b), &gw, pki.client_config(), "/");
    let mut s = tls_connect_from(Some(b), gw.addr, pki.client_config());
    s.write_all(upgrade_request("/", |_| {}).as_bytes())
        .unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_connections"), "{body}");
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_hops() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let accepted = |gw: &Gateway, xff: &str| {
        let stream = tls_connect(gw.addr, pki.client_config());
        let req = tungstenite::handshake::client::Request::builder()
            .uri(gw.url("/"))
            .header("Host", "localhost")
            .header("X-Forwarded-For", xff)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header(
                "Sec-WebSocket-Key",
                tungstenite::handshake::client::generate_key(),
            )
            .body(())
            .unwrap();
        let (mut ws, _) = tungstenite::client(req, stream).unwrap();
        (0..3)
            .filter(|i| {
                ws.send(Message::Text(call(*i, "system_health"))).unwrap();
                !text(ws.read().unwrap()).contains("-32005")
            })
            .count()
    };
    // Trusted: two proxy-reported addresses, two buckets of 2.
    let trusted = gateway(
        &pki,
        &up,
        "rate = 0.001\nburst = 2\ntrusted_proxy_hops = 1\n",
    );
    assert_eq!(accepted(&trusted, "10.0.0.1"), 2);
    assert_eq!(accepted(&trusted, "10.0.0.2"), 2);
    // Not trusted: the header is ignored, one bucket for the socket address.
    let untrusted = gateway(&pki, &up, "rate = 0.001\nburst = 2\n");
    assert_eq!(accepted(&untrusted, "10.0.0.1"), 2);
    assert_eq!(accepted(&untrusted, "10.0.0.2"), 0);
}

#[test]
fn slow_clients_do_not_delay_a_normal_client() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let cfg = write_config(
        &pki,
        "slow.toml",
        "[health]\nprobe = \"connect\"\n[limits]\nhandshake_timeout_ms = 3000\n",
    );
    let gw = Gateway::start(
        &pki,
        &[up.url()],
        &["--config", cfg.to_str().unwrap(), "--workers", "2"],
    );
    // 300 connections that send a TLS ClientHello one byte a second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            let addr = gw.addr;
            std::thread::spawn(move || {
                let mut socks: Vec<std::net::TcpStream> = (0..100)
                    .filter_map(|_| std::net::TcpStream::connect(addr).ok())
                    .collect();
                let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01];
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < hello.len() {
                    for s in socks.iter_mut() {
                        let _ = s.write_all(&hello[i..i + 1]);
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(1000));
                }
                socks.len()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // A normal client: handshake and 50 round trips, each quick.
    let start = Instant::now();
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    let connect = start.elapsed();
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let t = Instant::now();
        ws.send(Message::Text(call(i, "system_health"))).unwrap();
        let _ = ws.read().unwrap();
        worst = worst.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened: usize = slow.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(opened >= 250, "slow connections opened: {opened}");
    assert!(
        connect < Duration::from_millis(1000),
        "handshake took {connect:?}"
    );
    assert!(
        worst < Duration::from_millis(500),
        "a round trip took {worst:?}"
    );
}

#[test]
fn a_tls_handshake_sent_too_slowly_is_cut_off_early() {
    // handshake_min_rate (100 bytes/s after 2 s) applies inside the TLS
    // handshake too, not only to the request head after it.
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let cfg = write_config(
        &pki,
        "slow-tls.toml",
        "[health]\nprobe = \"connect\"\n[limits]\nhandshake_timeout_ms = 30000\n",
    );
    let gw = Gateway::start(&pki, &[up.url()], &["--config", cfg.to_str().unwrap()]);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // A ClientHello record header, then its body a few bytes every 300 ms.
    let start = Instant::now();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    let closed = loop {
        if s.write_all(&[0x01, 0x00, 0x01]).is_err() {
            break start.elapsed();
        }
        let mut b = [0u8; 64];
        match std::io::Read::read(&mut s, &mut b) {
            Ok(0) => break start.elapsed(),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            _ => break start.elapsed(),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still open after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        closed >= Duration::from_secs(2) && closed < Duration::from_secs(5),
        "closed after {closed:?}"
    );
}

#[test]
fn new_connections_per_second_are_limited_and_refusals_are_counted() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = gateway(
        &pki,
        &up,
        "connection_rate = 0.01\nconnection_burst = 3\nrate = 1\nburst = 1\n",
    );
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            let mut s = tls_connect(gw.addr, pki.client_config());
            s.write_all(upgrade_request("/", |_| {}).as_bytes())
                .unwrap();
            read_response(&mut s).0
        })
        .collect();
    assert_eq!(statuses, vec![101, 101, 101, 429, 429]);
    // /metrics counts them (it is a new connection too: from another address).
    let mut s = tls_connect_from(
        Some("127.0.0.9".parse().unwrap()),
        gw.addr,
        pki.client_config(),
    );
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(
        body.contains(r#"ringway_rejections_total{reason="connection_rate"} 2"#),
        "{body}"
    );
    assert!(body.contains("ringway_node_up{"), "{body}");
}

#[test]
fn per_session_limits_on_requests_in_flight_and_subscriptions() {
    let pki = TestPki::new();
    let silent = Upstream::start(Behaviour::Silent);
    let gw = gateway(&pki, &silent, "max_inflight_per_connection = 2\n");
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for i in 0..3 {
        ws.send(Message::Text(call(i, "system_health"))).unwrap();
    }
    let answer = text(ws.read().unwrap());
    assert!(
        answer.contains("-32005") && answer.contains(r#""id":2"#),
        "{answer}"
    );
    assert!(answer.contains("max_inflight_per_connection"), "{answer}");

    let echo = Upstream::start(Behaviour::Echo);
    let gw = gateway(&pki, &echo, "max_subscriptions_per_connection = 2\n");
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    let mut refused = 0;
    for i in 0..3 {
        ws.send(Message::Text(call(i, "chain_subscribeNewHeads")))
            .unwrap();
        let a = text(ws.read().unwrap());
        if a.contains("-32005") {
            assert!(
                a.contains("max_subscriptions_per_connection") && a.contains(r#""id":2"#),
                "{a}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 1);
    // Ending one makes room for another.
    ws.send(Message::Text(call(10, "chain_unsubscribeNewHeads")))
        .unwrap();
    let _ = ws.read().unwrap();
    ws.send(Message::Text(call(11, "chain_subscribeNewHeads")))
        .unwrap();
    assert!(!text(ws.read().unwrap()).contains("-32005"));
}

#[test]
fn a_request_head_trickling_in_is_cut_off_before_the_timeout() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = gateway(&pki, &up, "");
    let mut s = tls_connect(gw.addr, pki.client_config());
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    s.flush().unwrap();
    // One byte every 300 ms: far below 100 bytes/s.
    let mut status = 0;
    for b in b"Host: localhost\r\nX-Slow: aaaaaaaaaaaaaaaa".iter() {
        if s.write_all(&[*b]).and_then(|_| s.flush()).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if start.elapsed() > Duration::from_secs(3) {
            status = read_response(&mut s).0;
            break;
        }
    }
    assert_eq!(status, 408);
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "cut off after {:?}",
        start.elapsed()
    );
}
