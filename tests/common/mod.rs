//! Test harness: the real `ringway` binary on 127.0.0.1:0 with a test CA,
//! real WebSocket upstreams (tungstenite servers on threads), and clients:
//! tungstenite over rustls, and a raw TLS client for malformed input.
#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(clippy::result_large_err)] // tungstenite's handshake callback signature
#![allow(clippy::zombie_processes)] // the child is waited for in Gateway's Drop

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, RootCertStore, StreamOwned};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A CA and a leaf certificate for localhost/127.0.0.1 signed by it, as PEM files.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!(
            "ringway-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: OpenSSL (Node.js clients) takes a leaf whose issuer
        // equals its subject for self-signed.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringway test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let cert = dir.join("fullchain.pem");
        let key = dir.join("privkey.pem");
        std::fs::write(&cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        TestPki {
            dir,
            ca_pem: ca.pem(),
            cert,
            key,
        }
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config_trusting(self.ca_pem.as_bytes())
    }
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The string `result` of a JSON-RPC answer (a subscription id).
pub fn result_string(answer: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    v["result"]
        .as_str()
        .unwrap_or_else(|| panic!("no string result: {answer}"))
        .to_string()
}

/// The certificates of a PEM text as trust anchors.
pub fn roots_trusting(pem: &[u8]) -> RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

pub fn client_config_trusting(pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let roots = roots_trusting(pem);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// The gateway binary, killed on drop (and checked for panics).
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub stdout_lines: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Gateway {
    /// Wait up to `within` for the gateway to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stop the gateway and return what it wrote to stderr.
    pub fn stop_and_read_stderr(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// The gateway's process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Start with TLS from `pki`, in front of `upstreams`, plus extra flags.
    pub fn start(pki: &TestPki, upstreams: &[String], extra: &[&str]) -> Gateway {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cert".into(),
            pki.cert.display().to_string(),
            "--key".into(),
            pki.key.display().to_string(),
            "--workers".into(),
            "2".into(),
        ];
        for u in upstreams {
            args.push("--upstream".into());
            args.push(u.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Gateway::start_args(&args)
    }

    pub fn start_args(args: &[String]) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringway"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringway");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let err_thread = thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        loop {
            match rx.recv_timeout(TIMEOUT) {
                Ok(line) => {
                    let found = line
                        .split("listening on ")
                        .nth(1)
                        .and_then(|rest| rest.split("://").nth(1))
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|a| a.parse().ok());
                    lines.push(line);
                    if let Some(addr) = found {
                        return Gateway {
                            child,
                            addr,
                            stdout_lines: lines,
                            stderr: Some(err_thread),
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "gateway did not start; stdout {lines:?}; stderr {}",
                        err_thread.join().unwrap_or_default()
                    );
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("wss://localhost:{}{}", self.addr.port(), path)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr.take() {
            let err = t.join().unwrap_or_default();
            if std::env::var_os("RINGWAY_TEST_LOG").is_some() {
                eprintln!("--- gateway stderr ---\n{err}");
            }
            if err.contains("panicked") && !thread::panicking() {
                panic!("the gateway panicked:\n{err}");
            }
        }
    }
}

/// What an upstream saw of one handshake.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// The gateway's own health check connection, or an HTTP request (not a session).
    pub fn is_probe(&self) -> bool {
        self.header("user-agent") == Some("ringway-health") || self.header("upgrade").is_none()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How a test upstream behaves after the handshake.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Echo text and binary messages.
    Echo,
    /// Send `n` text notifications right away, then echo.
    Push(usize),
    /// Answer each message with `n` bytes of text.
    Large(usize),
    /// Drop the TCP connection after the first message, without a close frame.
    DieAfterFirst,
    /// Never answer.
    Silent,
    /// Echo each message after this long.
    Slow(Duration),
    /// Close with this code after the first message.
    CloseAfterFirst(u16),
    /// A Substrate-like node for health checks: answers `system_health`,
    /// `chain_getHeader` (at `chain.head`) and `chain_getBlockHash`; echoes
    /// anything else. Refuses and drops connections while `chain.dead` is set.
    Substrate(Arc<FakeChain>),
}

/// Knobs of a [`Behaviour::Substrate`] node, shared with the test.
#[derive(Debug, Default)]
pub struct FakeChain {
    pub head: std::sync::atomic::AtomicU64,
    pub dead: std::sync::atomic::AtomicBool,
    /// Blocks of state kept; `u64::MAX` for an archive node.
    pub pruning: std::sync::atomic::AtomicU64,
    /// Put in `state_getStorage` results, to tell which node answered.
    pub label: std::sync::Mutex<String>,
}

impl FakeChain {
    pub fn new(head: u64) -> Arc<FakeChain> {
        Self::node(head, u64::MAX, "node")
    }

    /// A node keeping `pruning` blocks of state, labelled `label`.
    pub fn node(head: u64, pruning: u64, label: &str) -> Arc<FakeChain> {
        Arc::new(FakeChain {
            head: head.into(),
            dead: false.into(),
            pruning: pruning.into(),
            label: std::sync::Mutex::new(label.into()),
        })
    }

    /// Answer a message (object or batch).
    pub fn answer_all(&self, msg: &str) -> String {
        if msg.trim_start().starts_with('[') {
            let parts: Vec<String> = ringway::jsonrpc::elements(msg.as_bytes())
                .map(|e| self.answer(std::str::from_utf8(e).unwrap()))
                .collect();
            format!("[{}]", parts.join(","))
        } else {
            self.answer(msg)
        }
    }

    fn answer(&self, req: &str) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let p = ringway::jsonrpc::peek(req.as_bytes()).expect("json-rpc");
        let id = String::from_utf8_lossy(p.id.unwrap_or(b"null")).to_string();
        let head = self.head.load(Relaxed);
        let result = match p.method.unwrap_or(b"") {
            b"system_health" => {
                r#"{"peers":3,"isSyncing":false,"shouldHavePeers":true}"#.to_string()
            }
            b"chain_getHeader" => format!(r#"{{"number":"0x{head:x}","parentHash":"0x00"}}"#),
            b"state_getStorage" => {
                let at = p
                    .params
                    .and_then(|ps| ringway::jsonrpc::param(ps, 1))
                    .and_then(ringway::jsonrpc::unquote)
                    .and_then(|h| {
                        u64::from_str_radix(std::str::from_utf8(h.strip_prefix(b"0x")?).ok()?, 16)
                            .ok()
                    })
                    .unwrap_or(head);
                if head.saturating_sub(at) > self.pruning.load(Relaxed) {
                    return format!(
                        r#"{{"jsonrpc":"2.0","error":{{"code":4003,"message":"Client error: State already discarded for 0x{at:064x}"}},"id":{id}}}"#
                    );
                }
                format!(r#""{}@{at}""#, self.label.lock().unwrap())
            }
            b"chain_getBlockHash" => {
                let n: u64 = p
                    .params
                    .and_then(|ps| ringway::jsonrpc::param(ps, 0))
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(head);
                format!(r#""0x{n:064x}""#)
            }
            _ => return req.to_string(),
        };
        format!(r#"{{"jsonrpc":"2.0","result":{result},"id":{id}}}"#)
    }
}

/// A tungstenite WebSocket server on a thread, one thread per connection.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: mpsc::Receiver<SeenRequest>,
    pub closes: mpsc::Receiver<Option<u16>>,
}

impl Upstream {
    pub fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = mpsc::channel();
        let (close_tx, closes) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let seen_tx = seen_tx.clone();
                let close_tx = close_tx.clone();
                let behaviour = behaviour.clone();
                thread::spawn(move || serve(stream, behaviour, seen_tx, close_tx));
            }
        });
        Upstream { addr, seen, closes }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The next client session's handshake (skipping the gateway's health probes).
    pub fn next_session(&self) -> SeenRequest {
        loop {
            let r = self.seen.recv_timeout(TIMEOUT).expect("a session");
            if !r.is_probe() {
                return r;
            }
        }
    }

    /// Client sessions seen so far (not counting health probes).
    pub fn session_count(&self) -> usize {
        self.seen.try_iter().filter(|r| !r.is_probe()).count()
    }
}

fn serve(
    stream: TcpStream,
    behaviour: Behaviour,
    seen_tx: mpsc::Sender<SeenRequest>,
    close_tx: mpsc::Sender<Option<u16>>,
) {
    let _ = stream.set_nodelay(true);
    if let Behaviour::Substrate(chain) = &behaviour {
        if chain.dead.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        let mut first = [0u8; 4];
        if stream.peek(&mut first).is_ok() && &first == b"POST" {
            return serve_http(stream, chain, seen_tx);
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    }
    let raw = stream.try_clone().unwrap();
    let callback = |req: &Request, mut resp: Response| {
        let headers = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        if let Some(p) = req.headers().get("sec-websocket-protocol") {
            let first = p
                .to_str()
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .trim()
                .to_string();
            resp.headers_mut()
                .insert("sec-websocket-protocol", first.parse().unwrap());
        }
        let _ = seen_tx.send(SeenRequest {
            path: req.uri().to_string(),
            headers,
        });
        Ok(resp)
    };
    let cfg = WebSocketConfig {
        max_message_size: Some(64 << 20),
        ..Default::default()
    };
    let (mut subscribed, mut notes) = (false, 0u64);
    let Ok(mut ws) = tungstenite::accept_hdr_with_config(stream, callback, Some(cfg)) else {
        return;
    };
    if let Behaviour::Push(n) = behaviour {
        for i in 0..n {
            let note = format!(
                r#"{{"jsonrpc":"2.0","method":"chain_newHead","params":{{"subscription":"s1","result":{{"number":{i}}}}}}}"#
            );
            if ws.send(Message::Text(note)).is_err() {
                return;
            }
        }
    }
    loop {
        if let Behaviour::Substrate(chain) = &behaviour {
            if chain.dead.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = raw.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        match ws.read() {
            Ok(Message::Text(t)) if matches!(behaviour, Behaviour::Substrate(_)) => {
                let Behaviour::Substrate(chain) = &behaviour else {
                    unreachable!()
                };
                if t.contains("chain_subscribeNewHeads") {
                    // A subscription: notifications follow every 100 ms (read timeout).
                    let id = ringway::jsonrpc::peek(t.as_bytes())
                        .and_then(|p| p.id)
                        .map(|i| String::from_utf8_lossy(i).to_string())
                        .unwrap_or_default();
                    subscribed = true;
                    let reply = format!(r#"{{"jsonrpc":"2.0","result":"sub-1","id":{id}}}"#);
                    if ws.send(Message::Text(reply)).is_err() {
                        return;
                    }
                    continue;
                }
                if ws.send(Message::Text(chain.answer_all(&t))).is_err() {
                    return;
                }
            }
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if subscribed {
                    notes += 1;
                    let note = format!(
                        r#"{{"jsonrpc":"2.0","method":"chain_newHead","params":{{"subscription":"sub-1","result":{{"number":"0x{notes:x}"}}}}}}"#
                    );
                    if ws.send(Message::Text(note)).is_err() {
                        return;
                    }
                }
                continue;
            }
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                let reply = match &behaviour {
                    Behaviour::Silent => continue,
                    Behaviour::Slow(d) => {
                        thread::sleep(*d);
                        msg
                    }
                    Behaviour::Large(n) => Message::Text("x".repeat(*n)),
                    Behaviour::DieAfterFirst => {
                        let _ = raw.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    Behaviour::CloseAfterFirst(code) => {
                        let code = *code;
                        let _ = ws.close(Some(tungstenite::protocol::CloseFrame {
                            code: code.into(),
                            reason: "bye".into(),
                        }));
                        let _ = ws.flush();
                        // Wait for the close reply.
                        while ws.read().is_ok() {}
                        let _ = close_tx.send(Some(code));
                        return;
                    }
                    _ => msg,
                };
                if ws.send(reply).is_err() {
                    return;
                }
            }
            Ok(Message::Close(frame)) => {
                let _ = close_tx.send(frame.map(|f| u16::from(f.code)));
                // tungstenite queues the reply; flush it.
                let _ = ws.flush();
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to the gateway, trusting `cfg`.
pub fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> TlsStream {
    tls_connect_from(None, addr, cfg)
}

/// The same from a given local address (127.x.y.z: another client address).
pub fn tls_connect_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> TlsStream {
    let tcp = match from {
        None => TcpStream::connect(addr).unwrap(),
        Some(ip) => {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
            sock.connect(&addr.into()).unwrap();
            sock.into()
        }
    };
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(TIMEOUT)).unwrap();
    let conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

/// A tungstenite client over TLS through the gateway.
pub fn ws_connect(
    gw: &Gateway,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
) -> WebSocket<TlsStream> {
    ws_connect_from(None, gw, cfg, path)
}

/// The same from a given local address.
pub fn ws_connect_from(
    from: Option<std::net::IpAddr>,
    gw: &Gateway,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
) -> WebSocket<TlsStream> {
    let stream = tls_connect_from(from, gw.addr, cfg);
    let ws_cfg = WebSocketConfig {
        max_message_size: Some(64 << 20),
        ..Default::default()
    };
    let (ws, resp) = tungstenite::client::client_with_config(gw.url(path), stream, Some(ws_cfg))
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// Read an HTTP response: status, head, body (by Content-Length).
pub fn read_response(s: &mut impl Read) -> (u16, String, String) {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => data.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&data).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = s.read_exact(&mut body);
    (status, head, String::from_utf8_lossy(&body).to_string())
}

/// A valid upgrade request head with one header replaced or removed.
pub fn upgrade_request(path: &str, edit: impl Fn(&mut Vec<(String, String)>)) -> String {
    let mut headers: Vec<(String, String)> = vec![
        ("Host".into(), "localhost".into()),
        ("Upgrade".into(), "websocket".into()),
        ("Connection".into(), "Upgrade".into()),
        (
            "Sec-WebSocket-Key".into(),
            "dGhlIHNhbXBsZSBub25jZQ==".into(),
        ),
        ("Sec-WebSocket-Version".into(), "13".into()),
    ];
    edit(&mut headers);
    let mut out = format!("GET {path} HTTP/1.1\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out
}

/// A client frame built by hand (masked unless `mask` is None).
pub fn client_frame(first_byte: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first_byte];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if payload.len() < 126 {
        out.push(m | payload.len() as u8);
    } else if payload.len() <= 65535 {
        out.push(m | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Read one server frame: (first byte, payload). None on EOF.
pub fn read_frame(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((h[0], payload))
}

/// Upgrade a raw TLS stream; panics unless the answer is 101.
pub fn raw_upgrade(gw: &Gateway, pki: &TestPki) -> TlsStream {
    let mut s = tls_connect(gw.addr, pki.client_config());
    s.write_all(upgrade_request("/", |_| {}).as_bytes())
        .unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 101, "{head}");
    s
}

/// Read frames until a close frame; return its code (None for an empty close,
/// Some(0) if the connection ended without one).
pub fn read_close_code(s: &mut impl Read) -> Option<u16> {
    loop {
        match read_frame(s) {
            Some((b0, payload)) if b0 & 0x0f == 0x8 => {
                return if payload.len() >= 2 {
                    Some(u16::from_be_bytes([payload[0], payload[1]]))
                } else {
                    None
                };
            }
            Some(_) => continue,
            None => return Some(0),
        }
    }
}

/// Write `text` to a file in `pki.dir` and return its path.
pub fn write_config(pki: &TestPki, name: &str, text: &str) -> PathBuf {
    let p = pki.dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A port nothing listens on (bound then released).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// HTTP JSON-RPC for a [`Behaviour::Substrate`] node: keep-alive, Content-Length bodies.
fn serve_http(stream: TcpStream, chain: &FakeChain, seen_tx: mpsc::Sender<SeenRequest>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push((n.to_string(), v.trim().to_string()));
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let _ = seen_tx.send(SeenRequest {
            path: request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string(),
            headers,
        });
        let answer = chain.answer_all(std::str::from_utf8(&body).unwrap_or(""));
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A Node.js script from `tests/js`, run from `target/js` (where `.ci/run`
/// installs the npm packages it imports), trusting the test CA.
pub struct JsScript {
    path: PathBuf,
    ca: PathBuf,
}

impl JsScript {
    /// `None` (the test skips, saying so) when a package in `needs` is not installed.
    pub fn new(name: &str, needs: &[&str], pki: &TestPki) -> Option<JsScript> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let js = root.join("target/js");
        if let Some(missing) = needs
            .iter()
            .find(|p| !js.join("node_modules").join(p).exists())
        {
            eprintln!("{missing} not installed (cd target/js && npm install {missing}); skipping");
            return None;
        }
        // Run from a copy next to node_modules, so that `import` finds them.
        let path = js.join(name);
        std::fs::copy(root.join("tests/js").join(name), &path).unwrap();
        let ca = pki.dir.join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        Some(JsScript { path, ca })
    }

    /// Run it with `args`: whether it succeeded, its stdout and its stderr.
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("node")
            .arg(&self.path)
            .args(args)
            .env("NODE_EXTRA_CA_CERTS", &self.ca)
            .output()
            .expect("node");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
