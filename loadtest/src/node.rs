//! `ringway-load node`: a mock Substrate-like node speaking JSON-RPC 2.0
//! over WebSocket and HTTP on one port, as a real node does on 9944.
//!
//! A block every `--block-ms`; block `n` has a hash that encodes `n`, so any
//! hash can be mapped back to its height. A pruned node (`--pruning N`)
//! answers state queries at blocks more than N behind the head with
//! Substrate's "State already discarded" error; an archive node answers all.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monoio::io::{OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use ringway::io::{give_buf, take_buf, PlainReader, ReadHalf, WriteHalf};
use ringway::jsonrpc::{self, Kind};
use ringway::ws::codec::Role;
use ringway::ws::frame::{write_close, write_frame, OpCode, Parse};
use ringway::ws::handshake::{
    parse_head, validate_upgrade, write_switching_protocols, HEADER_ARRAY,
};

use crate::ws::{Incoming, MessageReader};
pub use ringway::signal::Signal;

/// Mock node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: String,
    pub workers: usize,
    pub block_ms: u64,
    /// `None`: archive. `Some(n)`: state older than n blocks behind the head is gone.
    pub pruning: Option<u64>,
    pub delay: Duration,
    /// The delay applies to every `delay_every`-th answer (1: all of them;
    /// 10: a tenth, as a node with an occasional slow answer).
    pub delay_every: u64,
    /// Size of `state_getStorage` results in bytes (hex-encoded: twice as many characters).
    pub storage_bytes: usize,
    /// Size of `state_getMetadata` results in bytes of hex text.
    pub metadata_bytes: usize,
    /// Start the chain this many blocks high (so that old blocks exist at once).
    pub start_height: u64,
    /// Print the count of client calls when it changes (`--report`).
    pub report: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            report: false,
            listen: "127.0.0.1:9944".into(),
            workers: 1,
            block_ms: 6000,
            pruning: Some(256),
            delay: Duration::ZERO,
            delay_every: 1,
            storage_bytes: 32,
            metadata_bytes: 300 * 1024,
            start_height: 1000,
        }
    }
}

/// The chain as every core sees it: heights derive from one start instant.
struct Chain {
    cfg: NodeConfig,
    start: Instant,
    metadata: String,
    /// Calls from clients (not from a gateway's health probes), for `--report`.
    calls: std::sync::atomic::AtomicU64,
    metadata_calls: std::sync::atomic::AtomicU64,
    /// Answers given, for `delay_every`.
    answers: std::sync::atomic::AtomicU64,
}

const HASH_PREFIX: &str = "0xabababababababababababababababababababababababab";

impl Chain {
    /// Wait before an answer, if this one is to be late.
    async fn delay(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.cfg.delay.is_zero() {
            return;
        }
        let n = self.answers.fetch_add(1, Relaxed);
        if n.is_multiple_of(self.cfg.delay_every.max(1)) {
            monoio::time::sleep(self.cfg.delay).await;
        }
    }

    /// Count a client's message (each element of a batch).
    fn count(&self, msg: &[u8]) {
        use std::sync::atomic::Ordering::Relaxed;
        let one = |e: &[u8]| {
            self.calls.fetch_add(1, Relaxed);
            if jsonrpc::peek(e).and_then(|p| p.method) == Some(b"state_getMetadata") {
                self.metadata_calls.fetch_add(1, Relaxed);
            }
        };
        match jsonrpc::kind(msg) {
            Kind::Batch => jsonrpc::elements(msg).for_each(one),
            _ => one(msg),
        }
    }

    fn head(&self) -> u64 {
        self.cfg.start_height + self.start.elapsed().as_millis() as u64 / self.cfg.block_ms
    }

    fn next_block_at(&self) -> Instant {
        let n = self.start.elapsed().as_millis() as u64 / self.cfg.block_ms + 1;
        self.start + Duration::from_millis(n * self.cfg.block_ms)
    }

    fn hash(n: u64) -> String {
        format!("{HASH_PREFIX}{n:016x}")
    }

    fn height_of(hash: &[u8]) -> Option<u64> {
        let h = std::str::from_utf8(hash).ok()?;
        let tail = h.strip_prefix(HASH_PREFIX)?;
        u64::from_str_radix(tail, 16).ok()
    }

    fn header(n: u64) -> String {
        format!(
            r#"{{"parentHash":"{}","number":"0x{n:x}","stateRoot":"0x{:064x}","extrinsicsRoot":"0x{:064x}","digest":{{"logs":[]}}}}"#,
            Chain::hash(n.saturating_sub(1)),
            n.wrapping_mul(0x9e37_79b9),
            n.wrapping_mul(0x85eb_ca6b)
        )
    }

    /// Resolve an optional block argument (hash) to a height; `Err` is a JSON error.
    fn at(&self, raw: Option<&[u8]>) -> Result<u64, String> {
        let head = self.head();
        let Some(raw) = raw.filter(|r| *r != b"null") else {
            return Ok(head);
        };
        let hash = jsonrpc::unquote(raw).unwrap_or(raw);
        let text = String::from_utf8_lossy(hash);
        match Chain::height_of(hash) {
            Some(n) if n <= head => {
                if let Some(depth) = self.cfg.pruning {
                    if head - n > depth {
                        return Err(format!(
                            r#"{{"code":4003,"message":"Client error: State already discarded for {text}"}}"#
                        ));
                    }
                }
                Ok(n)
            }
            _ => Err(format!(
                r#"{{"code":4003,"message":"Client error: UnknownBlock: header not found for {text}"}}"#
            )),
        }
    }

    /// Answer one request object. `None` for a notification (no id).
    fn call(&self, req: &[u8], subs: &Subscriptions) -> Option<String> {
        let Some(p) = jsonrpc::peek(req) else {
            return Some(
                r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}"#
                    .into(),
            );
        };
        let id = String::from_utf8_lossy(p.id?).into_owned();
        let method = p.method.unwrap_or(b"");
        let params = p.params.unwrap_or(b"[]");
        let result: Result<String, String> = match method {
            b"system_health" => Ok(r#"{"peers":8,"isSyncing":false,"shouldHavePeers":true}"#.into()),
            b"system_name" => Ok(r#""ringway-mock-node""#.into()),
            b"system_version" => Ok(r#""0.1.0""#.into()),
            b"system_chain" => Ok(r#""Development""#.into()),
            b"system_properties" => Ok(r#"{"ss58Format":42,"tokenDecimals":12,"tokenSymbol":"UNIT"}"#.into()),
            b"state_getRuntimeVersion" => self
                .at(jsonrpc::param(params, 0))
                .map(|_| r#"{"specName":"mock","implName":"mock","specVersion":1,"implVersion":1,"transactionVersion":1,"apis":[]}"#.into()),
            b"rpc_methods" => Ok(r#"{"methods":["chain_getBlockHash","chain_getHeader","chain_subscribeNewHeads","echo","state_call","state_getMetadata","state_getStorage","system_health"]}"#.into()),
            b"chain_getBlockHash" => {
                let head = self.head();
                match jsonrpc::param(params, 0).filter(|r| *r != b"null") {
                    None => Ok(format!(r#""{}""#, Chain::hash(head))),
                    Some(raw) => match std::str::from_utf8(raw).ok().and_then(|s| s.parse::<u64>().ok()) {
                        Some(n) if n <= head => Ok(format!(r#""{}""#, Chain::hash(n))),
                        Some(_) => Ok("null".into()),
                        None => Err(r#"{"code":-32602,"message":"Invalid params"}"#.into()),
                    },
                }
            }
            b"chain_getFinalizedHead" => Ok(format!(r#""{}""#, Chain::hash(self.head().saturating_sub(2)))),
            b"chain_getHeader" => self.at(jsonrpc::param(params, 0)).map(Chain::header),
            b"state_getStorage" => self
                .at(jsonrpc::param(params, 1))
                .map(|n| format!(r#""0x{}""#, hex_fill(self.cfg.storage_bytes, n))),
            b"state_getMetadata" => self.at(jsonrpc::param(params, 0)).map(|_| self.metadata.clone()),
            b"state_call" => self.at(jsonrpc::param(params, 2)).map(|n| format!(r#""0x{n:016x}""#)),
            b"chain_subscribeNewHeads" | b"chain_subscribeNewHead" | b"chain_subscribeAllHeads" | b"chain_subscribeFinalizedHeads" => {
                Ok(format!(r#""{}""#, subs.add()))
            }
            // Runtime upgrades do not happen here: the subscription stays silent.
            b"state_subscribeRuntimeVersion" => Ok(r#""rv-1""#.into()),
            b"state_unsubscribeRuntimeVersion" => Ok("true".into()),
            b"chain_unsubscribeNewHeads" | b"chain_unsubscribeNewHead" | b"chain_unsubscribeAllHeads" | b"chain_unsubscribeFinalizedHeads" => {
                let sid = jsonrpc::param(params, 0).and_then(jsonrpc::unquote).unwrap_or(b"");
                Ok(subs.remove(sid).to_string())
            }
            b"echo" => Ok(String::from_utf8_lossy(params).into_owned()),
            _ => Err(r#"{"code":-32601,"message":"Method not found"}"#.into()),
        };
        Some(match result {
            Ok(r) => format!(r#"{{"jsonrpc":"2.0","result":{r},"id":{id}}}"#),
            Err(e) => format!(r#"{{"jsonrpc":"2.0","error":{e},"id":{id}}}"#),
        })
    }

    /// Answer a message: an object or a batch.
    fn answer(&self, msg: &[u8], subs: &Subscriptions) -> Option<String> {
        match jsonrpc::kind(msg) {
            Kind::Batch => {
                let parts: Vec<String> = jsonrpc::elements(msg)
                    .filter_map(|e| self.call(e, subs))
                    .collect();
                if parts.is_empty() {
                    None
                } else {
                    Some(format!("[{}]", parts.join(",")))
                }
            }
            _ => self.call(msg, subs),
        }
    }
}

fn hex_fill(bytes: usize, seed: u64) -> String {
    let unit = format!("{seed:016x}");
    unit.repeat(bytes * 2 / 16 + 1)[..bytes * 2].to_string()
}

/// Subscriptions of one connection.
#[derive(Default)]
struct Subscriptions {
    next: Cell<u64>,
    active: RefCell<Vec<String>>,
    changed: Signal,
}

impl Subscriptions {
    fn add(&self) -> String {
        let n = self.next.get() + 1;
        self.next.set(n);
        let id = format!("0x{n:016x}");
        self.active.borrow_mut().push(id.clone());
        self.changed.notify();
        id
    }

    fn remove(&self, id: &[u8]) -> bool {
        let mut a = self.active.borrow_mut();
        let before = a.len();
        a.retain(|s| s.as_bytes() != id);
        before != a.len()
    }
}

/// Frames waiting to be written on one connection.
#[derive(Default)]
struct Outq {
    frames: RefCell<VecDeque<Vec<u8>>>,
    closed: Cell<bool>,
    wake: Signal,
}

impl Outq {
    fn push_text(&self, text: &str) {
        let mut f = Vec::with_capacity(text.len() + 10);
        write_frame(&mut f, OpCode::Text, text.as_bytes(), None);
        self.frames.borrow_mut().push_back(f);
        self.wake.notify();
    }

    fn push(&self, frame: Vec<u8>) {
        self.frames.borrow_mut().push_back(frame);
        self.wake.notify();
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake.notify();
    }
}

/// Run the node until the process ends.
pub fn run(cfg: NodeConfig) -> Result<(), String> {
    let addr: std::net::SocketAddr = cfg
        .listen
        .parse()
        .map_err(|e| format!("--listen {}: {e}", cfg.listen))?;
    let listeners = ringway::runtime::listeners::bind_listeners(addr, cfg.workers)
        .map_err(|e| format!("listen {addr}: {e}"))?;
    let local = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let metadata = format!(r#""0x{}""#, hex_fill(cfg.metadata_bytes / 2, 0x6d65_7461));
    let chain = Arc::new(Chain {
        cfg: cfg.clone(),
        start: Instant::now(),
        metadata,
        calls: 0.into(),
        metadata_calls: 0.into(),
        answers: 0.into(),
    });
    if cfg.report {
        // A line whenever the count of client calls changed (once a second at most).
        let chain = chain.clone();
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering::Relaxed;
            let mut last = u64::MAX;
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let n = chain.calls.load(Relaxed);
                if n != last {
                    last = n;
                    println!(
                        "calls {n} state_getMetadata {}",
                        chain.metadata_calls.load(Relaxed)
                    );
                }
            }
        });
    }
    println!(
        "mock node listening on ws://{local} ({}, block every {} ms, {} workers)",
        match cfg.pruning {
            None => "archive".to_string(),
            Some(n) => format!("pruned, {n} blocks"),
        },
        cfg.block_ms,
        cfg.workers
    );
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let chain = chain.clone();
            std::thread::Builder::new()
                .name(format!("node-{i}"))
                .spawn(move || crate::runtime(move || serve(l, chain)))
                .expect("spawn")
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

async fn serve(listener: std::net::TcpListener, chain: Arc<Chain>) {
    let listener = monoio::net::TcpListener::from_std(listener).expect("listener");
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                monoio::spawn(connection(s, chain.clone()));
            }
            Err(_) => monoio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn connection(tcp: TcpStream, chain: Arc<Chain>) {
    let (r, mut w) = tcp.into_split();
    let mut r = PlainReader::new(r);
    let mut buf = take_buf();
    loop {
        // One HTTP request (or the upgrade) per iteration.
        let (head_len, upgrade, key, content_length, path_ok, probe) = loop {
            let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
            match parse_head(&buf, &mut headers, 16384, 128) {
                Ok(Parse::Done(head, n)) => {
                    let upgrade = head.wants_websocket();
                    let key = validate_upgrade(&head).ok().map(|u| u.key.to_vec());
                    let cl = head
                        .single("content-length")
                        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let method_ok = head.method == "POST" || upgrade;
                    let probe = head.single("user-agent") == Some(&b"ringway-health"[..]);
                    break (n, upgrade, key, cl, method_ok, probe);
                }
                Ok(Parse::NeedMore(_)) => {}
                Err(_) => {
                    let _ = w
                        .write_all(
                            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec(),
                        )
                        .await;
                    give_buf(buf);
                    return;
                }
            }
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity());
            }
            let (res, b) = r.read_more(buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                give_buf(buf);
                return;
            }
        };
        if upgrade {
            let Some(key) = key else {
                let _ = w
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec())
                    .await;
                give_buf(buf);
                return;
            };
            let mut out = Vec::new();
            write_switching_protocols(&mut out, &key, None);
            let (res, _) = w.write_all(out).await;
            if res.is_err() {
                return;
            }
            buf.drain(..head_len);
            websocket(r, w, buf, chain, !probe).await;
            return;
        }
        if !path_ok {
            let body = "the mock node answers POST JSON-RPC and WebSocket upgrades\n";
            let resp = format!("HTTP/1.1 405 Method Not Allowed\r\nAllow: POST\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            let _ = w.write_all(resp.into_bytes()).await;
            give_buf(buf);
            return;
        }
        // HTTP JSON-RPC: read the body.
        while buf.len() < head_len + content_length {
            if buf.len() == buf.capacity() {
                buf.reserve(head_len + content_length - buf.len());
            }
            let (res, b) = r.read_more(buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                give_buf(buf);
                return;
            }
        }
        if !probe {
            chain.count(&buf[head_len..head_len + content_length]);
        }
        chain.delay().await;
        let subs = Subscriptions::default();
        let body = chain
            .answer(&buf[head_len..head_len + content_length], &subs)
            .unwrap_or_default();
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (res, _) = w.write_all(resp.into_bytes()).await;
        if res.is_err() {
            give_buf(buf);
            return;
        }
        buf.drain(..head_len + content_length);
    }
}

async fn websocket(
    r: PlainReader<TcpStream>,
    mut w: OwnedWriteHalf<TcpStream>,
    early: Vec<u8>,
    chain: Arc<Chain>,
    counted: bool,
) {
    let mut reader = MessageReader::new(r, early, Role::Client, 64 << 20);
    let out = Outq::default();
    let subs = Subscriptions::default();
    let done = Cell::new(false);
    let read_loop = async {
        loop {
            match reader.next().await {
                Ok(Some(Incoming::Text(m) | Incoming::Binary(m))) => {
                    if counted {
                        chain.count(&m);
                    }
                    chain.delay().await;
                    if let Some(resp) = chain.answer(&m, &subs) {
                        out.push_text(&resp);
                    }
                }
                Ok(Some(Incoming::Ping(p))) => {
                    let mut f = Vec::new();
                    write_frame(&mut f, OpCode::Pong, &p, None);
                    out.push(f);
                }
                Ok(Some(Incoming::Pong)) => {}
                Ok(Some(Incoming::Close(code))) => {
                    let mut f = Vec::new();
                    write_close(&mut f, code, "", None);
                    out.push(f);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        done.set(true);
        out.close();
        subs.changed.notify();
    };
    let write_loop = async {
        loop {
            let next = out.frames.borrow_mut().pop_front();
            match next {
                Some(f) => {
                    let (res, _) = w.write_all(f).await;
                    if res.is_err() {
                        break;
                    }
                }
                None if out.closed.get() => break,
                None => out.wake.wait().await,
            }
        }
        w.shutdown().await;
    };
    let notify_loop = async {
        while !done.get() {
            if subs.active.borrow().is_empty() {
                subs.changed.wait().await;
                continue;
            }
            let at = chain.next_block_at();
            let sleep = monoio::time::sleep_until(monoio::time::Instant::from_std(at));
            monoio::select! {
                _ = sleep => {}
                _ = subs.changed.wait() => continue,
            }
            let head = chain.head();
            let ts = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            let header = Chain::header(head);
            for sid in subs.active.borrow().iter() {
                out.push_text(&format!(
                    r#"{{"jsonrpc":"2.0","method":"chain_newHead","params":{{"subscription":"{sid}","result":{header},"ts":{ts}}}}}"#
                ));
            }
        }
    };
    monoio::join!(read_loop, write_loop, notify_loop);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(pruning: Option<u64>) -> Chain {
        Chain {
            cfg: NodeConfig {
                pruning,
                block_ms: 1000,
                start_height: 1000,
                ..NodeConfig::default()
            },
            start: Instant::now(),
            metadata: "\"0x00\"".into(),
            calls: 0.into(),
            metadata_calls: 0.into(),
            answers: 0.into(),
        }
    }

    #[test]
    fn hashes_encode_heights() {
        assert_eq!(Chain::height_of(Chain::hash(1234).as_bytes()), Some(1234));
        assert_eq!(Chain::hash(1).len(), 66);
    }

    #[test]
    fn a_pruned_node_refuses_old_state_and_an_archive_node_does_not() {
        let subs = Subscriptions::default();
        let old = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"state_getStorage","params":["0x26aa","{}"]}}"#,
            Chain::hash(10)
        );
        let pruned = chain(Some(256)).answer(old.as_bytes(), &subs).unwrap();
        assert!(pruned.contains("State already discarded"), "{pruned}");
        assert!(pruned.ends_with(r#""id":7}"#));
        let archive = chain(None).answer(old.as_bytes(), &subs).unwrap();
        assert!(archive.contains(r#""result":"0x"#), "{archive}");
        let recent = format!(
            r#"{{"id":8,"method":"state_getStorage","params":["0x26aa","{}"]}}"#,
            Chain::hash(999)
        );
        assert!(chain(Some(256))
            .answer(recent.as_bytes(), &subs)
            .unwrap()
            .contains("result"));
    }

    #[test]
    fn batches_unknown_methods_and_notifications() {
        let subs = Subscriptions::default();
        let c = chain(Some(256));
        let batch = c.answer(br#"[{"id":1,"method":"system_health"},{"id":"a","method":"nope"},{"method":"system_health"}]"#, &subs).unwrap();
        assert!(
            batch.starts_with('[') && batch.contains("-32601") && batch.contains(r#""id":"a""#),
            "{batch}"
        );
        assert_eq!(
            c.answer(br#"{"jsonrpc":"2.0","method":"system_health"}"#, &subs),
            None
        );
        let sub = c
            .answer(
                br#"{"id":2,"method":"chain_subscribeNewHeads","params":[]}"#,
                &subs,
            )
            .unwrap();
        assert!(sub.contains(r#""result":"0x"#));
        assert_eq!(subs.active.borrow().len(), 1);
    }
}
