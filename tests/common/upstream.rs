//! Fake nodes: tungstenite WebSocket servers on threads with a behaviour
//! each (echo, push, silent, slow, dying, closing), and a Substrate-like
//! mock chain answering health probes and HTTP JSON-RPC.

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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::*;

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
    /// Accept the upgrade, then neither read nor write: a stopped process
    /// (not even pings are answered). Holds the connection for 30 s.
    Frozen,
    /// Echo each message after this long.
    Slow(Duration),
    /// Close with this code after the first message.
    CloseAfterFirst(u16),
    /// Answer every request with this raw JSON result (and its id).
    Answer(String),
    /// A node scripted by method, see [`Script`].
    Scripted(Arc<Script>),
    /// A Substrate-like node for health checks: answers `system_health`,
    /// `chain_getHeader` (at `chain.head`) and `chain_getBlockHash`; echoes
    /// anything else. Refuses and drops connections while `chain.dead` is set.
    Substrate(Arc<FakeChain>),
}

/// A node scripted by method, for fault tests:
/// - `die`: drop the connection (no close frame);
/// - `hang`: never answer;
/// - `renum`: answer with the id re-serialised as a float (`1e2` -> `100.0`);
/// - `batchfail`: answer a whole batch with one error whose id is null
///   (what jsonrpsee does for a batch over its limit);
/// - `stray`: answer with an id nobody sent;
/// - anything else: a result of `big` bytes, the id after it.
#[derive(Debug, Default)]
pub struct Script {
    pub big: usize,
    /// Messages answered so far.
    pub answered: std::sync::atomic::AtomicUsize,
    /// Subscriptions opened, and the most on any one connection.
    pub subscriptions: std::sync::atomic::AtomicUsize,
    pub most_per_connection: std::sync::atomic::AtomicUsize,
}

impl Script {
    pub fn new(big: usize) -> Arc<Script> {
        Arc::new(Script {
            big,
            answered: 0.into(),
            subscriptions: 0.into(),
            most_per_connection: 0.into(),
        })
    }

    /// The answer to one message, `None` for none; `Err` to drop the
    /// connection. `subs`: subscriptions open on this connection.
    fn answer(&self, msg: &str, subs: &mut usize) -> Result<Option<String>, ()> {
        use std::sync::atomic::Ordering::Relaxed;
        if msg.contains("\"die\"") {
            return Err(());
        }
        if msg.contains("\"hang\"") {
            return Ok(None);
        }
        self.answered.fetch_add(1, Relaxed);
        if msg.contains("\"batchfail\"") {
            return Ok(Some(
                r#"{"jsonrpc":"2.0","error":{"code":-32010,"message":"batch too long"},"id":null}"#
                    .into(),
            ));
        }
        let id = ringway::jsonrpc::peek(msg.as_bytes())
            .and_then(|p| p.id)
            .map(|i| String::from_utf8_lossy(i).to_string())
            .unwrap_or_else(|| "null".into());
        if msg.contains("_unsubscribe") {
            *subs = subs.saturating_sub(1);
            return Ok(Some(format!(
                r#"{{"jsonrpc":"2.0","result":true,"id":{id}}}"#
            )));
        }
        if msg.contains("_subscribe") {
            *subs += 1;
            self.most_per_connection.fetch_max(*subs, Relaxed);
            let n = self.subscriptions.fetch_add(1, Relaxed);
            return Ok(Some(format!(
                r#"{{"jsonrpc":"2.0","result":"sub-{n}","id":{id}}}"#
            )));
        }
        if msg.contains("\"renum\"") {
            let v: f64 = id.parse().unwrap_or(0.0);
            return Ok(Some(format!(
                r#"{{"jsonrpc":"2.0","result":"ok","id":{v:.1}}}"#
            )));
        }
        if msg.contains("\"stray\"") {
            return Ok(Some(
                r#"{"jsonrpc":"2.0","result":"?","id":987654321}"#.into(),
            ));
        }
        Ok(Some(format!(
            r#"{{"jsonrpc":"2.0","result":"{}","id":{id}}}"#,
            "x".repeat(self.big)
        )))
    }
}

pub use ringway::fuzzing::{node_reading, NodeReading};

/// The params of a [`NodeReading`] as JSON text, for `ringway::jsonrpc::param`.
struct Peeked<'a> {
    params: Option<&'a [u8]>,
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
    /// `system_health` says the node is syncing (probes fail; sessions work).
    pub syncing: std::sync::atomic::AtomicBool,
    /// Calls from client sessions (not health probes), by method.
    pub calls: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// Answer each client call after this many milliseconds.
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// Bytes of `state_getMetadata` results.
    pub metadata_bytes: std::sync::atomic::AtomicUsize,
    /// Its genesis hash (`chain_getBlockHash(0)`), when not the default.
    pub genesis: std::sync::Mutex<Option<String>>,
    /// HTTP JSON-RPC requests received (each after `http_delay_ms`).
    pub http_calls: std::sync::atomic::AtomicUsize,
    pub http_delay_ms: std::sync::atomic::AtomicU64,
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
            syncing: false.into(),
            calls: Default::default(),
            delay_ms: 0.into(),
            metadata_bytes: 1000.into(),
            genesis: Default::default(),
            http_calls: 0.into(),
            http_delay_ms: 0.into(),
        })
    }

    /// Calls of `method` from client sessions so far.
    pub fn calls_of(&self, method: &str) -> usize {
        self.calls.lock().unwrap().get(method).copied().unwrap_or(0)
    }

    /// Calls from client sessions so far, all methods.
    pub fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }

    /// Count a client session's message (each request of a batch, as a
    /// lenient node reads it: see [`node_reading`]), then wait the delay.
    fn count(&self, msg: &str) {
        let mut calls = self.calls.lock().unwrap();
        for r in node_reading(msg.as_bytes())
            .map(|(_, rs)| rs)
            .unwrap_or_default()
        {
            if let Some(m) = r.method {
                *calls.entry(m).or_default() += 1;
            }
        }
        drop(calls);
        let delay = self.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
    }

    /// Answer a message (object or batch), read as a lenient node reads it.
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
        let Some((_, reading)) = node_reading(req.as_bytes()) else {
            return r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}"#
                .to_string();
        };
        let r = &reading[0];
        let id = r.id_json();
        let params = r.params.as_ref().map(|v| v.to_string());
        let p = Peeked {
            params: params.as_deref().map(str::as_bytes),
        };
        let head = self.head.load(Relaxed);
        let result = match r.method.as_deref().unwrap_or("").as_bytes() {
            b"system_health" => format!(
                r#"{{"peers":3,"isSyncing":{},"shouldHavePeers":true}}"#,
                self.syncing.load(Relaxed)
            ),
            b"chain_getHeader" => {
                // At a hash (this chain's hashes are their numbers), or the best.
                let n = p
                    .params
                    .and_then(|ps| ringway::jsonrpc::param(ps, 0))
                    .and_then(ringway::jsonrpc::unquote)
                    .and_then(|h| {
                        u64::from_str_radix(std::str::from_utf8(h.strip_prefix(b"0x")?).ok()?, 16)
                            .ok()
                    })
                    .unwrap_or(head);
                format!(r#"{{"number":"0x{n:x}","parentHash":"0x00"}}"#)
            }
            // Two blocks behind the best, as GRANDPA usually is.
            b"chain_getFinalizedHead" => format!(r#""0x{:064x}""#, head.saturating_sub(2)),
            b"state_getMetadata" => {
                let at = p
                    .params
                    .and_then(|ps| ringway::jsonrpc::param(ps, 0))
                    .and_then(ringway::jsonrpc::unquote)
                    .map_or("best".into(), |h| String::from_utf8_lossy(h).into_owned());
                // A block above this node's head is one it has not imported.
                let above_head = at
                    .strip_prefix("0x")
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .is_some_and(|n| n > head);
                if at == "0xdead" || above_head {
                    return format!(
                        r#"{{"jsonrpc":"2.0","error":{{"code":4003,"message":"Unknown block"}},"id":{id}}}"#
                    );
                }
                let size = self.metadata_bytes.load(Relaxed);
                format!(r#""meta@{at}:{}""#, "6d".repeat(size / 2))
            }
            b"state_getRuntimeVersion" => r#"{"specName":"fake","specVersion":1}"#.to_string(),
            b"system_chain" => r#""Fake""#.to_string(),
            b"system_properties" => r#"{"ss58Format":42}"#.to_string(),
            b"rpc_methods" => r#"{"methods":["system_chain"]}"#.to_string(),
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
                match self.genesis.lock().unwrap().clone() {
                    Some(g) if n == 0 => format!(r#""{g}""#),
                    _ => format!(r#""0x{n:064x}""#),
                }
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
    let probe = std::cell::Cell::new(false);
    let callback = |req: &Request, mut resp: Response| {
        probe.set(
            req.headers()
                .get("user-agent")
                .is_some_and(|v| v.as_bytes() == b"ringway-health"),
        );
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
    let mut script_subs = 0usize;
    if let Behaviour::Frozen = behaviour {
        thread::sleep(Duration::from_secs(30));
        return;
    }
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
                if !probe.get() {
                    chain.count(&t);
                }
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
            Ok(Message::Text(t))
                if matches!(behaviour, Behaviour::Scripted(_) | Behaviour::Answer(_)) =>
            {
                let reply = match &behaviour {
                    Behaviour::Scripted(script) => match script.answer(&t, &mut script_subs) {
                        Ok(Some(a)) => a,
                        Ok(None) => continue,
                        Err(()) => {
                            let _ = raw.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    },
                    Behaviour::Answer(result) => {
                        let id = ringway::jsonrpc::peek(t.as_bytes())
                            .and_then(|p| p.id)
                            .map(|i| String::from_utf8_lossy(i).to_string())
                            .unwrap_or_else(|| "null".into());
                        format!(r#"{{"jsonrpc":"2.0","result":{result},"id":{id}}}"#)
                    }
                    _ => unreachable!(),
                };
                if ws.send(Message::Text(reply)).is_err() {
                    return;
                }
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
        chain
            .http_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let delay = chain
            .http_delay_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
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

/// A JSON-RPC node for shared-connection tests (`tests/shared.rs`): answers `{"method":M,"params":P}` with `{"result":{"method":M,"params":P}}`,
/// `test_subscribe` with a subscription id and then a notification every
/// 20 ms, `test_unsubscribe` with `true`, `whoami` with its name, and
/// `test_die` by dropping the connection. Its chain: a block every 20 ms
/// (a height shared by the nodes of a [`PubsubNode::pair`]);
/// `chain_subscribeNewHead(s)` sends every head, in order, as `chain_newHead`
/// `{"number":"0x…"}` (the first after `first_head_delay`);
/// `chain_getBlockHash(n)` and `chain_getHeader(hash)` answer for it.
pub struct PubsubNode {
    pub url: String,
    /// WebSocket connections upgraded.
    pub connections: Arc<AtomicUsize>,
    /// Every call the node got: (method, raw params).
    pub calls: mpsc::Receiver<(String, String)>,
    /// Set: each head subscription sends, once, a reorganised best head at
    /// the height it last sent (another parent: `"parentHash":"0x01"`).
    pub reorg: Arc<std::sync::atomic::AtomicBool>,
}

/// What the connections of a [`PubsubNode`] share.
struct PubsubChain {
    reorg: Arc<std::sync::atomic::AtomicBool>,
    name: String,
    height: Arc<std::sync::atomic::AtomicU64>,
    first_head_delay: Duration,
    subs_made: AtomicUsize,
    upgraded: Arc<AtomicUsize>,
}

impl PubsubNode {
    pub fn start() -> PubsubNode {
        Self::start_on("node", ticking_height(), Duration::ZERO)
    }

    /// Two nodes of one chain (the same heads): `a`, and `b`, whose first
    /// head on a new subscription comes `b_first_head_delay` late.
    pub fn pair(b_first_head_delay: Duration) -> (PubsubNode, PubsubNode) {
        let height = ticking_height();
        (
            Self::start_on("a", height.clone(), Duration::ZERO),
            Self::start_on("b", height, b_first_head_delay),
        )
    }

    fn start_on(
        name: &str,
        height: Arc<std::sync::atomic::AtomicU64>,
        first_head_delay: Duration,
    ) -> PubsubNode {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, calls) = mpsc::channel();
        let reorg = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let chain = Arc::new(PubsubChain {
            reorg: reorg.clone(),
            name: name.into(),
            height,
            first_head_delay,
            subs_made: AtomicUsize::new(0),
            upgraded: connections.clone(),
        });
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let tx = tx.clone();
                let chain = chain.clone();
                thread::spawn(move || serve_pubsub(stream, tx, chain));
            }
        });
        PubsubNode {
            url,
            connections,
            calls,
            reorg,
        }
    }
}

/// A chain height that grows by one every 20 ms, from 100.
fn ticking_height() -> Arc<std::sync::atomic::AtomicU64> {
    let height = Arc::new(std::sync::atomic::AtomicU64::new(100));
    let h = Arc::downgrade(&height);
    thread::spawn(move || loop {
        thread::sleep(Duration::from_millis(20));
        match h.upgrade() {
            Some(h) => h.fetch_add(1, Ordering::SeqCst),
            None => return,
        };
    });
    height
}

/// A subscription on a pubsub connection.
struct PubsubSub {
    id: String,
    /// A head stream: the last head sent (0: none yet), and when the first may go.
    heads: Option<(u64, Instant)>,
    /// A storage subscription: its keys, and whether all were sent once
    /// (after that only the first key changes).
    storage: Option<(Vec<String>, bool)>,
}

fn serve_pubsub(
    stream: std::net::TcpStream,
    calls: mpsc::Sender<(String, String)>,
    chain: Arc<PubsubChain>,
) {
    stream.set_nodelay(true).unwrap();
    // (The gateway's start-up reachability check connects without upgrading.)
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    chain.upgraded.fetch_add(1, Ordering::SeqCst);
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut subs: Vec<PubsubSub> = Vec::new();
    let mut tick = Instant::now();
    let mut n = 0u64;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let answers = if t.trim_start().starts_with('[') {
                    let parts: Vec<String> = ringway::jsonrpc::elements(t.as_bytes())
                        .filter_map(|e| answer_pubsub(e, &mut subs, &chain, &calls))
                        .collect();
                    Some(format!("[{}]", parts.join(",")))
                } else if t.contains("test_die") {
                    return;
                } else {
                    answer_pubsub(t.as_bytes(), &mut subs, &chain, &calls)
                };
                if let Some(a) = answers {
                    ws.send(Message::Text(a)).unwrap();
                }
            }
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
        // Heads: every one, in order, from the first (after the delay).
        let height = chain.height.load(Ordering::SeqCst);
        let reorg = chain.reorg.swap(false, Ordering::SeqCst);
        for sub in &mut subs {
            let Some((last, from)) = &mut sub.heads else {
                continue;
            };
            if Instant::now() < *from {
                continue;
            }
            if reorg && *last > 0 {
                let note = format!(
                    r#"{{"jsonrpc":"2.0","method":"chain_newHead","params":{{"subscription":"{}","result":{{"number":"0x{:x}","parentHash":"0x01"}}}}}}"#,
                    sub.id, *last
                );
                if ws.send(Message::Text(note)).is_err() {
                    return;
                }
            }
            let first = if *last == 0 { height } else { *last + 1 };
            for h in first..=height {
                let note = format!(
                    r#"{{"jsonrpc":"2.0","method":"chain_newHead","params":{{"subscription":"{}","result":{{"number":"0x{h:x}","parentHash":"0x00"}}}}}}"#,
                    sub.id
                );
                if ws.send(Message::Text(note)).is_err() {
                    return;
                }
                *last = h;
            }
        }
        if tick.elapsed() >= Duration::from_millis(20) {
            tick = Instant::now();
            n += 1;
            for sub in subs.iter_mut().filter(|s| s.heads.is_none()) {
                let note = match &mut sub.storage {
                    Some((keys, sent)) => {
                        let changed = if *sent { &keys[..1] } else { &keys[..] };
                        *sent = true;
                        let changes: Vec<String> = changed
                            .iter()
                            .map(|k| format!(r#"["{k}","0x{n:04x}"]"#))
                            .collect();
                        format!(
                            r#"{{"jsonrpc":"2.0","method":"state_storage","params":{{"subscription":"{}","result":{{"block":"0x{n:064x}","changes":[{}]}}}}}}"#,
                            sub.id,
                            changes.join(",")
                        )
                    }
                    None => format!(
                        r#"{{"jsonrpc":"2.0","method":"test_event","params":{{"subscription":"{}","result":{n}}}}}"#,
                        sub.id
                    ),
                };
                if ws.send(Message::Text(note)).is_err() {
                    return;
                }
            }
        }
    }
}

fn answer_pubsub(
    msg: &[u8],
    subs: &mut Vec<PubsubSub>,
    chain: &PubsubChain,
    calls: &mpsc::Sender<(String, String)>,
) -> Option<String> {
    let p = ringway::jsonrpc::peek(msg).expect("the gateway forwards valid JSON-RPC");
    let method = String::from_utf8_lossy(p.method.unwrap_or(b"")).to_string();
    let params = String::from_utf8_lossy(p.params.unwrap_or(b"[]")).to_string();
    let _ = calls.send((method.clone(), params.clone()));
    let id = String::from_utf8_lossy(p.id?).to_string();
    let first = || ringway::jsonrpc::param(params.as_bytes(), 0).unwrap_or(b"");
    let result = match method.as_str() {
        "test_subscribe"
        | "chainHead_v1_follow"
        | "chain_subscribeNewHeads"
        | "chain_subscribeNewHead" => {
            let s = format!("sub{}", chain.subs_made.fetch_add(1, Ordering::SeqCst));
            let heads = method
                .starts_with("chain_")
                .then(|| (0, Instant::now() + chain.first_head_delay));
            subs.push(PubsubSub {
                id: s.clone(),
                heads,
                storage: None,
            });
            format!("\"{s}\"")
        }
        "state_subscribeStorage" => {
            let s = format!("sub{}", chain.subs_made.fetch_add(1, Ordering::SeqCst));
            let keys: Vec<String> = serde_json::from_str::<serde_json::Value>(&params).unwrap()[0]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string())
                .collect();
            subs.push(PubsubSub {
                id: s.clone(),
                heads: None,
                storage: Some((keys, false)),
            });
            format!("\"{s}\"")
        }
        "test_unsubscribe"
        | "chain_unsubscribeNewHeads"
        | "chain_unsubscribeNewHead"
        | "state_unsubscribeStorage" => {
            let s = String::from_utf8_lossy(first())
                .trim_matches('"')
                .to_string();
            let had = subs.iter().any(|x| x.id == s);
            subs.retain(|x| x.id != s);
            had.to_string()
        }
        "whoami" => format!("\"{}\"", chain.name),
        "chain_getBlockHash" => {
            let n: u64 = std::str::from_utf8(first()).unwrap().parse().unwrap();
            format!("\"0x{n:064x}\"")
        }
        "chain_getHeader" => {
            let hash = String::from_utf8_lossy(first())
                .trim_matches('"')
                .to_string();
            let n = u64::from_str_radix(hash.trim_start_matches("0x"), 16).unwrap();
            format!(r#"{{"number":"0x{n:x}","parentHash":"0x00"}}"#)
        }
        _ => format!(r#"{{"method":"{method}","params":{params}}}"#),
    };
    Some(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#
    ))
}
