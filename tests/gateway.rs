//! End-to-end: the real gateway binary, real upstream WebSocket servers,
//! real TLS clients. Each test names the behaviour it guards.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

fn text(m: Message) -> String {
    match m {
        Message::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn request_and_response_pass_through() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start_relay(&pki, &[up.url()]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for i in 0..50 {
        let req = format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"system_health","params":[]}}"#);
        ws.send(Message::Text(req.clone())).unwrap();
        assert_eq!(text(ws.read().unwrap()), req);
    }
    ws.send(Message::Binary(vec![0, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(vec![0, 1, 2, 255]));
}

#[test]
fn server_pushed_notifications_arrive_in_order() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Push(20));
    let gw = Gateway::start(&pki, &[up.url()], &[]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    for i in 0..20 {
        let note = text(ws.read().unwrap());
        assert!(note.contains(&format!(r#""number":{i}"#)), "{note}");
    }
}

#[test]
fn large_messages_both_ways() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Large(300 * 1024));
    let gw = Gateway::start_relay(&pki, &[up.url()]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    // A 300 KB response, like state_getMetadata.
    ws.send(Message::Text(
        r#"{"id":1,"method":"state_getMetadata"}"#.into(),
    ))
    .unwrap();
    assert_eq!(text(ws.read().unwrap()).len(), 300 * 1024);
    // And a 1 MiB request to an echo node.
    let up2 = Upstream::start(Behaviour::Echo);
    let gw2 = Gateway::start_relay(&pki, &[up2.url()]);
    let mut ws2 = ws_connect(&gw2, pki.client_config(), "/");
    let big: String = (0..(1 << 20))
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    ws2.send(Message::Text(big.clone())).unwrap();
    assert_eq!(text(ws2.read().unwrap()), big);
}

#[test]
fn fragmented_message_reaches_the_node_whole() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&pki, &[up.url()], &[]);
    let mut s = raw_upgrade(&gw, &pki);
    let key = Some([1, 2, 3, 4]);
    let mut bytes = client_frame(0x01, b"{\"id\":1,", key); // text, FIN clear
    bytes.extend(client_frame(0x89, b"mid", key)); // a ping in between
    bytes.extend(client_frame(0x00, b"\"method\":", key)); // continuation
    bytes.extend(client_frame(0x80, b"\"x\"}", key)); // final continuation
    s.write_all(&bytes).unwrap();
    s.flush().unwrap();
    let mut got_pong = false;
    loop {
        let (b0, payload) = read_frame(&mut s).expect("frame");
        match b0 & 0x0f {
            0xA => {
                assert_eq!(payload, b"mid");
                got_pong = true;
            }
            0x1 => {
                assert_eq!(payload, br#"{"id":1,"method":"x"}"#);
                break;
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert!(got_pong, "the gateway answers pings itself");
}

#[test]
fn pings_are_answered_by_the_gateway() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&pki, &[up.url()], &[]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    ws.send(Message::Ping(b"hello".to_vec())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(p, b"hello"),
        other => panic!("expected pong, got {other:?}"),
    }
}

#[test]
fn client_close_is_echoed_and_passed_to_the_node() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start_relay(&pki, &[up.url()]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    ws.send(Message::Text("hi".into())).unwrap();
    assert_eq!(text(ws.read().unwrap()), "hi");
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "leaving".into(),
    }))
    .unwrap();
    let reply = loop {
        match ws.read() {
            Ok(Message::Close(f)) => break f,
            Ok(_) => continue,
            Err(e) => panic!("no close reply: {e}"),
        }
    };
    assert_eq!(reply.map(|f| u16::from(f.code)), Some(1001));
    assert_eq!(up.closes.recv_timeout(TIMEOUT).unwrap(), Some(1001));
}

#[test]
fn node_close_reaches_the_client() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::CloseAfterFirst(4001));
    let gw = Gateway::start_relay(&pki, &[up.url()]);
    let mut ws = ws_connect(&gw, pki.client_config(), "/");
    ws.send(Message::Text("go".into())).unwrap();
    let frame = loop {
        match ws.read() {
            Ok(Message::Close(f)) => break f,
            Ok(_) => continue,
            Err(e) => panic!("no close: {e}"),
        }
    };
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(4001));
    // Complete the handshake; the node sees it answered.
    let _ = ws.flush();
    assert_eq!(up.closes.recv_timeout(TIMEOUT).unwrap(), Some(4001));
}

#[test]
fn node_dying_mid_session_answers_in_flight_requests_then_closes_1012() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::DieAfterFirst);
    let gw = Gateway::start(&pki, &[up.url()], &[]);
    let mut s = raw_upgrade(&gw, &pki);
    let request = br#"{"jsonrpc":"2.0","id":1,"method":"system_health"}"#;
    s.write_all(&client_frame(0x81, request, Some([9, 9, 9, 9])))
        .unwrap();
    s.flush().unwrap();
    // The request in flight is answered with an error, then the session closes.
    let (b0, payload) = read_frame(&mut s).expect("an error answer");
    let text = String::from_utf8(payload).unwrap();
    assert_eq!(b0, 0x81, "{text}");
    assert!(
        text.contains("-32603") && text.contains(r#""id":1"#),
        "{text}"
    );
    assert_eq!(read_close_code(&mut s), Some(1012));
}

#[test]
fn node_dying_mid_batch_answers_the_batch_as_one_array() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::DieAfterFirst);
    let gw = Gateway::start(&pki, &[up.url()], &[]);
    let mut s = raw_upgrade(&gw, &pki);
    let batch = br#"[{"jsonrpc":"2.0","id":7,"method":"system_health"},{"jsonrpc":"2.0","id":"eight","method":"chain_getHeader"}]"#;
    s.write_all(&client_frame(0x81, batch, Some([1, 2, 3, 4])))
        .unwrap();
    s.flush().unwrap();
    // JSON-RPC 2.0 §6: a batch is answered by one array holding each id's answer.
    let (b0, payload) = read_frame(&mut s).expect("an error answer");
    let text = String::from_utf8(payload).unwrap();
    assert_eq!(b0, 0x81, "{text}");
    assert!(text.starts_with('[') && text.ends_with(']'), "{text}");
    assert_eq!(text.matches("-32603").count(), 2, "{text}");
    assert!(text.contains(r#""id":7"#), "{text}");
    assert!(text.contains(r#""id":"eight""#), "{text}");
    assert_eq!(read_close_code(&mut s), Some(1012));
}

#[test]
fn no_reachable_node_gives_502_with_a_reason() {
    let pki = TestPki::new();
    let dead = format!("ws://127.0.0.1:{}", dead_port());
    let gw = Gateway::start(&pki, std::slice::from_ref(&dead), &[]);
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(upgrade_request("/", |_| {}).as_bytes())
        .unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 502);
    assert!(body.contains(&dead), "{body}");
}

#[test]
fn a_refusing_node_is_skipped() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let dead = format!("ws://127.0.0.1:{}", dead_port());
    let gw = Gateway::start_relay(&pki, &[dead, up.url()]);
    for _ in 0..6 {
        let mut ws = ws_connect(&gw, pki.client_config(), "/");
        ws.send(Message::Text("x".into())).unwrap();
        assert_eq!(text(ws.read().unwrap()), "x");
    }
}

#[test]
fn sessions_are_balanced_over_nodes() {
    let pki = TestPki::new();
    let a = Upstream::start(Behaviour::Echo);
    let b = Upstream::start(Behaviour::Echo);
    // No probes: least connections alone (how slowly nodes answer their
    // probes also counts: tests/faults.rs, a_slow_node_gets_fewer_new_sessions).
    let gw = Gateway::start(
        &pki,
        &[a.url(), b.url()],
        &["--workers", "1", "--health-probe", "off"],
    );
    // Held open, so least-connections sees them.
    let conns: Vec<_> = (0..10)
        .map(|_| ws_connect(&gw, pki.client_config(), "/"))
        .collect();
    let on_a = a.session_count();
    let on_b = b.session_count();
    assert_eq!(on_a + on_b, 10);
    assert!((4..=6).contains(&on_a), "a {on_a} b {on_b}");
    drop(conns);
}

#[test]
fn node_sees_path_subprotocol_and_forwarding_headers() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&pki, &[format!("{}/rpc", up.url())], &[]);
    let mut s = tls_connect(gw.addr, pki.client_config());
    let req = upgrade_request("/?apikey=1", |h| {
        h.push(("Sec-WebSocket-Protocol".into(), "jsonrpc, other".into()));
        h.push(("Origin".into(), "https://polkadot.js.org".into()));
        h.push(("X-Forwarded-For".into(), "203.0.113.9".into()));
    });
    s.write_all(req.as_bytes()).unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 101, "{head}");
    assert!(
        head.contains("Sec-WebSocket-Protocol: jsonrpc\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    let seen = up.next_session();
    assert_eq!(seen.path, "/rpc?apikey=1");
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("origin"), Some("https://polkadot.js.org"));
    assert_eq!(seen.header("host"), Some("localhost"));
    assert_eq!(seen.header("x-forwarded-host"), Some("localhost"));
}

#[test]
fn bad_handshakes_get_their_status() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&pki, &[up.url()], &[]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "wrong method",
            upgrade_request("/", |_| {}).replacen("GET", "POST", 1),
            405,
            "Allow: GET",
        ),
        (
            "no key",
            upgrade_request("/", |h| h.retain(|(n, _)| n != "Sec-WebSocket-Key")),
            400,
            "",
        ),
        (
            "short key",
            upgrade_request("/", |h| h[3].1 = "c2hvcnQ=".into()),
            400,
            "",
        ),
        (
            "version 8",
            upgrade_request("/", |h| h[4].1 = "8".into()),
            426,
            "Sec-WebSocket-Version: 13",
        ),
        (
            "no version",
            upgrade_request("/", |h| h.truncate(4)),
            426,
            "Sec-WebSocket-Version: 13",
        ),
        (
            "no host",
            upgrade_request("/", |h| {
                h.remove(0);
            }),
            400,
            "",
        ),
        (
            "no connection upgrade",
            upgrade_request("/", |h| h[2].1 = "keep-alive".into()),
            400,
            "",
        ),
        (
            "too many headers",
            upgrade_request("/", |h| {
                for i in 0..100 {
                    h.push((format!("X-{i}"), "v".into()));
                }
            }),
            431,
            "",
        ),
        (
            "head too large",
            upgrade_request("/", |h| h.push(("X-Big".into(), "a".repeat(20000)))),
            431,
            "",
        ),
        ("garbage", "\x16\x03 not http\r\n\r\n".to_string(), 400, ""),
        (
            "plain GET",
            "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(),
            426,
            "Upgrade: websocket",
        ),
        (
            "JSON-RPC POST without a JSON content type",
            "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}".to_string(),
            415,
            "",
        ),
        (
            "PUT",
            "PUT / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}".to_string(),
            405,
            "Allow: GET",
        ),
    ];
    for (name, req, status, header) in cases {
        let mut s = tls_connect(gw.addr, pki.client_config());
        s.write_all(req.as_bytes()).unwrap();
        let (got, head, body) = read_response(&mut s);
        assert_eq!(got, status, "{name}: {head}{body}");
        assert!(head.contains(header), "{name}: {head}");
        assert!(!body.trim().is_empty(), "{name}: a body says why");
    }
}

#[test]
fn a_silent_client_gets_408_after_the_handshake_timeout() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let cfg = write_config(&pki, "t.toml", "[limits]\nhandshake_timeout_ms = 300\n");
    let gw = Gateway::start(&pki, &[up.url()], &["--config", cfg.to_str().unwrap()]);
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(b"GET / HTTP/1.1\r\nHost: local").unwrap();
    s.flush().unwrap();
    let start = Instant::now();
    let (status, _, _) = read_response(&mut s);
    assert_eq!(status, 408);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn bad_frames_get_their_close_code() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let cfg = write_config(
        &pki,
        "f.toml",
        "[limits]\nmax_frame_bytes = 1000\nmax_message_bytes = 1500\n",
    );
    let gw = Gateway::start(&pki, &[up.url()], &["--config", cfg.to_str().unwrap()]);
    let key = Some([7, 7, 7, 7]);
    let mut fragmented_too_big = client_frame(0x02, &[0; 800], key);
    fragmented_too_big.extend(client_frame(0x80, &[0; 800], key));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", client_frame(0x81, b"hi", None), 1002),
        ("rsv1", client_frame(0xC1, b"hi", key), 1002),
        ("reserved opcode", client_frame(0x83, b"", key), 1002),
        ("long ping", client_frame(0x89, &[0; 126], key), 1002),
        ("fragmented ping", client_frame(0x09, b"", key), 1002),
        ("stray continuation", client_frame(0x80, b"x", key), 1002),
        (
            "invalid utf-8",
            client_frame(0x81, b"\xce\xba\xff", key),
            1007,
        ),
        (
            "invalid close code",
            client_frame(0x88, &1005u16.to_be_bytes(), key),
            1002,
        ),
        ("one-byte close", client_frame(0x88, &[3], key), 1002),
        ("frame too big", client_frame(0x82, &[0; 1001], key), 1009),
        ("message too big", fragmented_too_big, 1009),
    ];
    for (name, bytes, code) in cases {
        let mut s = raw_upgrade(&gw, &pki);
        s.write_all(&bytes).unwrap();
        s.flush().unwrap();
        assert_eq!(read_close_code(&mut s), Some(code), "{name}");
    }
}

#[test]
fn responses_sent_before_a_bad_frame_still_arrive() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start_relay(&pki, &[up.url()]);
    let mut s = raw_upgrade(&gw, &pki);
    let key = Some([1, 1, 1, 1]);
    let mut bytes = client_frame(0x81, b"{\"id\":7}", key);
    bytes.extend(client_frame(0x81, b"x", None)); // unmasked: protocol error
    s.write_all(&bytes).unwrap();
    s.flush().unwrap();
    let (b0, payload) = read_frame(&mut s).unwrap();
    assert_eq!((b0, payload.as_slice()), (0x81, &b"{\"id\":7}"[..]));
    assert_eq!(read_close_code(&mut s), Some(1002));
}

#[test]
fn idle_sessions_are_closed_with_1001() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let cfg = write_config(&pki, "i.toml", "[limits]\nidle_timeout_s = 1\n");
    let gw = Gateway::start(&pki, &[up.url()], &["--config", cfg.to_str().unwrap()]);
    let mut s = raw_upgrade(&gw, &pki);
    assert_eq!(read_close_code(&mut s), Some(1001));
    assert_eq!(up.closes.recv_timeout(TIMEOUT).unwrap(), Some(1001));
}

#[test]
fn many_concurrent_sessions_on_all_workers() {
    let pki = TestPki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start_relay(&pki, &[up.url()]);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let cfg = pki.client_config();
            let addr = gw.addr;
            let url = gw.url("/");
            std::thread::spawn(move || {
                let stream = tls_connect(addr, cfg);
                let (mut ws, _) = tungstenite::client(url, stream).unwrap();
                for i in 0..100 {
                    let m = format!("{t}-{i}");
                    ws.send(Message::Text(m.clone())).unwrap();
                    assert_eq!(text(ws.read().unwrap()), m);
                }
                ws.close(None).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
