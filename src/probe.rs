//! The health thread: probes every node over a kept-open WebSocket and
//! records the results in [`Health`].
//!
//! Each probe is bounded by `health.timeout_ms`: the connect is dropped at
//! the deadline (it holds no buffer), everything after it is stopped with
//! `shutdown(2)` ([`crate::io::with_deadline`]), never dropped in flight.
//! A backend that answers but not in the expected shape (an echo server, a
//! node of another flavour, a head without a number) is alive with an
//! unknown head: it stays in service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use monoio::io::AsyncWriteRentExt;

use crate::config::NodeConfig;
use crate::health::{Health, HealthConfig, Hysteresis, ProbeMode};
use crate::io::{ReadHalf, WriteHalf};
use crate::jsonrpc;
use crate::route::Flavour;
use crate::upstream::{connect, NodeReader, NodeWriter};
use crate::ws::codec::Role;
use crate::ws::frame::{write_frame, OpCode, Parse};
use crate::ws::handshake::parse_upstream_response;
use crate::ws::message::{Assembler, Event};

/// Start the health thread for one configuration generation's nodes. It
/// runs until `stop` is set (a reload started the next one's), within one
/// probe interval.
pub fn spawn(
    nodes: Vec<NodeConfig>,
    flavour: Flavour,
    cfg: HealthConfig,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
) {
    if cfg.mode == ProbeMode::Off {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let mut rt = match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    crate::error!("health checks cannot start: {e}");
                    return;
                }
            };
            let run = std::panic::AssertUnwindSafe(|| {
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for (i, node) in nodes.into_iter().enumerate() {
                        let (health, stop) = (health.clone(), stop.clone());
                        let probe = probe_node(i, node, flavour, cfg, health, stop);
                        tasks.push(monoio::spawn(crate::task::Guarded::new(
                            "a health probe",
                            probe,
                            move || crate::error!("the health probe of node {i} stopped"),
                        )));
                    }
                    for t in tasks {
                        t.await;
                    }
                })
            });
            // Without probes no node's state would ever change again.
            if std::panic::catch_unwind(run).is_err() {
                crate::task::fatal("the health thread");
            }
        });
}

/// A probe connection to one node.
struct Probe {
    r: NodeReader,
    w: NodeWriter,
    fd: std::os::fd::RawFd,
    buf: Vec<u8>,
    asm: Assembler,
    next_id: u64,
}

/// Run `fut` on the probe connection's socket within `dur`: at the deadline
/// its I/O is stopped and the probe fails (the connection is dropped).
async fn within<T>(
    fd: std::os::fd::RawFd,
    dur: std::time::Duration,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let expired = std::cell::Cell::new(false);
    let expire = || {
        expired.set(true);
        crate::io::stop(fd, crate::io::Stop::All);
    };
    let out = crate::io::with_deadline(dur, expire, fut).await;
    match out {
        Err(_) if expired.get() => Err(format!("no answer in {} ms", dur.as_millis())),
        other => other,
    }
}

async fn probe_node(
    i: usize,
    node: NodeConfig,
    flavour: Flavour,
    cfg: HealthConfig,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
) {
    // Where the last generation's probes left this node (up for a new one).
    let mut h = Hysteresis::resume(health.alive(i));
    let mut conn: Option<Probe> = None;
    let mut identified = false;
    let mut last_hashed: u64 = 0;
    loop {
        if conn.is_none() {
            identified = false;
        }
        let (result, rtt) = match cfg.mode {
            // A fresh upgrade each time; the node's head stays unknown.
            ProbeMode::Connect => {
                let start = std::time::Instant::now();
                let opened = open(&node, cfg.timeout).await.map(|_| None);
                (opened, start.elapsed())
            }
            _ => probe_once(&node, flavour, &mut conn, cfg.timeout).await,
        };
        let (ok, head) = match result {
            Ok(head) => (true, head),
            Err(e) => {
                crate::debug!("health: {} failed: {e}", node.url);
                conn = None;
                identified = false;
                (false, None)
            }
        };
        // Which chain it is on, once per probe connection (a node may be
        // replaced behind its address).
        if let (true, Some(_), Some(c)) = (ok && !identified, head, conn.as_mut()) {
            let fd = c.fd;
            match within(fd, cfg.timeout, identity(c, flavour)).await {
                Ok(Some((id, genesis))) => {
                    if let Some(g) = genesis {
                        health.record_genesis(i, &g);
                    }
                    health.record_identity(i, &id);
                    identified = true;
                }
                Ok(None) => identified = true,
                Err(_) => conn = None,
            }
        }
        // How fast it answers (the calls, not a connect), for balancing.
        health.record_rtt(i, if ok { rtt } else { cfg.timeout });
        if ok {
            health.record_latency(i, crate::health::Timed::Probe, rtt);
        }
        let was_up = health.is_up(i);
        health.record(i, &mut h, ok, head, &cfg);
        if was_up != health.is_up(i) {
            if health.is_up(i) {
                crate::info!("node {} is up (head {})", node.url, health.head(i));
            } else {
                crate::warn!("node {} is down ({})", node.url, health.down_reason(i));
            }
        }
        // Feed the routers' recent-hash window from this node's new heads.
        if let (Some(head), Flavour::Substrate, Some(c)) = (head, flavour, conn.as_mut()) {
            if head > last_hashed {
                let from = head.saturating_sub(64).max(last_hashed + 1);
                let fd = c.fd;
                let fetched = within(fd, cfg.timeout, fetch_hashes(c, from, head, &health)).await;
                match fetched {
                    Ok(()) => last_hashed = head,
                    Err(_) => conn = None,
                }
            }
        }
        // The finalized block, for the response cache (answers about blocks
        // at or below it never change). Nodes that do not say are skipped.
        if let (Some(_), Some(c)) = (head, conn.as_mut()) {
            let fd = c.fd;
            match within(fd, cfg.timeout, finalized(c, flavour)).await {
                Ok(Some((n, hash))) => health.record_finalized(i, n, hash.as_deref()),
                Ok(None) => {}
                Err(_) => conn = None,
            }
        }
        monoio::time::sleep(cfg.interval).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// One probe: returns the node's head, or why it failed.
/// What [`Probe::call`] says of a backend that answers with something other
/// than a JSON-RPC response (an echo server), or that does not know the probe's
/// methods (a node of another flavour): it is alive; its head is unknown.
const NOT_RPC: &str = "the backend does not answer JSON-RPC";

/// How [`Probe::call`]'s error for a JSON-RPC error answer starts.
const RPC_ERROR: &str = "error answer: ";

/// One probe: the node's head (`None` when the backend answers but is not a
/// JSON-RPC node: it is alive, and its head is unknown), or why it failed.
async fn probe_once(
    node: &NodeConfig,
    flavour: Flavour,
    conn: &mut Option<Probe>,
    timeout: std::time::Duration,
) -> (Result<Option<u64>, String>, std::time::Duration) {
    let start = std::time::Instant::now();
    if conn.is_none() {
        match open(node, timeout).await {
            Ok(c) => *conn = Some(c),
            Err(e) => return (Err(e), timeout),
        }
    }
    let c = conn.as_mut().expect("just opened");
    let fd = c.fd;
    let calls = std::time::Instant::now();
    let checked = within(
        fd,
        timeout.saturating_sub(start.elapsed()),
        check(c, flavour),
    )
    .await;
    (checked, calls.elapsed())
}

/// The node's health and head, on an open probe connection.
async fn check(c: &mut Probe, flavour: Flavour) -> Result<Option<u64>, String> {
    let (health_method, head_method) = match flavour {
        Flavour::Substrate => ("system_health", "chain_getHeader"),
        Flavour::Ethereum => ("eth_syncing", "eth_blockNumber"),
    };
    // A backend that answers, but not this flavour's methods, is alive with
    // an unknown head: there is no reason to take it out of service.
    let status = match c.call(health_method, "[]").await {
        Err(e) if e == NOT_RPC || e.starts_with(RPC_ERROR) => return Ok(None),
        other => other?,
    };
    let syncing = match flavour {
        Flavour::Substrate => {
            const SYNCING: &[u8] = b"\"isSyncing\":true";
            status.windows(SYNCING.len()).any(|w| w == SYNCING)
        }
        Flavour::Ethereum => status != b"false",
    };
    if syncing {
        return Err("node reports it is syncing".into());
    }
    let head = match c.call(head_method, "[]").await {
        Err(e) if e == NOT_RPC || e.starts_with(RPC_ERROR) => return Ok(None),
        other => other?,
    };
    // A JSON-RPC answer without a block number where one was expected: a
    // backend that speaks JSON-RPC but not this (any answer "0x1" to
    // everything, say). Alive, head unknown: never black-hole a pool over it.
    let hex = match flavour {
        Flavour::Substrate => find_string_member(&head, b"number"),
        Flavour::Ethereum => jsonrpc::unquote(&head),
    };
    Ok(hex.and_then(|hex| {
        let digits = hex.strip_prefix(b"0x").unwrap_or(hex);
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok())
    }))
}

/// The node's finalized block: its number and hash, if it says (Substrate
/// `chain_getFinalizedHead` then that header; Ethereum the `finalized` tag).
async fn finalized(
    c: &mut Probe,
    flavour: Flavour,
) -> Result<Option<(u64, Option<String>)>, String> {
    let (header, hash) = match flavour {
        Flavour::Substrate => {
            let hash = match c.call("chain_getFinalizedHead", "[]").await {
                Err(e) if e == NOT_RPC || e.starts_with(RPC_ERROR) => return Ok(None),
                other => other?,
            };
            let Some(hash) =
                jsonrpc::unquote(&hash).map(|h| String::from_utf8_lossy(h).into_owned())
            else {
                return Ok(None);
            };
            let header = c.call("chain_getHeader", &format!("[\"{hash}\"]")).await;
            (header, Some(hash))
        }
        Flavour::Ethereum => {
            let block = c
                .call("eth_getBlockByNumber", r#"["finalized",false]"#)
                .await;
            let hash = block
                .as_ref()
                .ok()
                .and_then(|b| find_string_member(b, b"hash"))
                .map(|h| String::from_utf8_lossy(h).into_owned());
            (block, hash)
        }
    };
    let header = match header {
        Err(e) if e == NOT_RPC || e.starts_with(RPC_ERROR) => return Ok(None),
        other => other?,
    };
    let number = find_string_member(&header, b"number").and_then(|hex| {
        let digits = hex.strip_prefix(b"0x").unwrap_or(hex);
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok())
    });
    Ok(number.map(|n| (n, hash)))
}

/// The chain a node is on: Substrate its genesis hash, Ethereum its chain
/// id (`None`: it does not say).
/// Which chain a node says it is on (Substrate: its genesis hash;
/// Ethereum: `eth_chainId`), and for Ethereum its genesis block's hash.
async fn identity(
    c: &mut Probe,
    flavour: Flavour,
) -> Result<Option<(String, Option<String>)>, String> {
    let (method, params) = match flavour {
        Flavour::Substrate => ("chain_getBlockHash", "[0]"),
        Flavour::Ethereum => ("eth_chainId", "[]"),
    };
    let text =
        |v: &[u8]| jsonrpc::unquote(v).map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    let id = match c.call(method, params).await {
        Err(e) if e == NOT_RPC || e.starts_with(RPC_ERROR) => return Ok(None),
        Err(e) => return Err(e),
        Ok(v) => text(&v),
    };
    let Some(id) = id else { return Ok(None) };
    let genesis = match flavour {
        Flavour::Substrate => None,
        Flavour::Ethereum => match c.call("eth_getBlockByNumber", r#"["0x0",false]"#).await {
            Ok(block) => jsonrpc::member(&block, b"hash").and_then(text),
            Err(e) if e == NOT_RPC || e.starts_with(RPC_ERROR) => None,
            Err(e) => return Err(e),
        },
    };
    Ok(Some((id, genesis)))
}

async fn fetch_hashes(c: &mut Probe, from: u64, to: u64, health: &Health) -> Result<(), String> {
    for n in from..=to {
        let result = c.call("chain_getBlockHash", &format!("[{n}]")).await?;
        if let Some(hash) = jsonrpc::unquote(&result) {
            health.publish_hash(&String::from_utf8_lossy(hash), n);
        }
    }
    Ok(())
}

fn find_string_member<'a>(obj: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut pat = Vec::with_capacity(key.len() + 3);
    pat.push(b'"');
    pat.extend_from_slice(key);
    pat.extend_from_slice(b"\":");
    let at = obj.windows(pat.len()).position(|w| w == pat.as_slice())? + pat.len();
    let rest = &obj[at..];
    let start = rest.iter().position(|&b| b == b'"')? + 1;
    let len = rest[start..].iter().position(|&b| b == b'"')?;
    Some(&rest[start..start + len])
}

/// Connect and upgrade within `timeout` (the connect is dropped at the
/// deadline: it holds no buffer; the upgrade's I/O is stopped).
async fn open(node: &NodeConfig, timeout: std::time::Duration) -> Result<Probe, String> {
    let start = std::time::Instant::now();
    let stream = match monoio::time::timeout(timeout, connect(node)).await {
        Ok(s) => s.map_err(|e| format!("connect: {e}"))?,
        Err(_) => return Err(format!("no connection in {} ms", timeout.as_millis())),
    };
    let fd = stream.raw_fd();
    within(
        fd,
        timeout.saturating_sub(start.elapsed()),
        upgrade(node, stream),
    )
    .await
}

async fn upgrade(
    node: &NodeConfig,
    mut stream: crate::upstream::NodeStream,
) -> Result<Probe, String> {
    let fd = stream.raw_fd();
    let key = crate::rng::ws_key();
    let host = match &node.addr {
        crate::config::NodeAddr::Tcp(a) => a[0].to_string(),
        crate::config::NodeAddr::Unix(_) => "localhost".into(),
    };
    let path = if node.path.is_empty() {
        "/"
    } else {
        node.path.as_str()
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: ringway-health\r\n\r\n"
    );
    let res = match &mut stream {
        crate::upstream::NodeStream::Tcp(s) => s.write_all(req.into_bytes()).await.0,
        crate::upstream::NodeStream::Unix(s) => s.write_all(req.into_bytes()).await.0,
    };
    res.map_err(|e| format!("write: {e}"))?;
    let (mut r, w) = stream.into_split();
    let mut buf = Vec::new();
    loop {
        let (res, b) = r.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) => return Err("closed during the upgrade".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        match parse_upstream_response(&buf, &key, None, 16384) {
            Ok(Parse::Done(_, n)) => {
                buf.drain(..n);
                return Ok(Probe {
                    r,
                    w,
                    fd,
                    buf,
                    asm: Assembler::new(Role::Server, Default::default(), usize::MAX, false),
                    next_id: 1,
                });
            }
            Ok(Parse::NeedMore(_)) => {}
            Err(e) => return Err(format!("upgrade refused: {e}")),
        }
    }
}

impl Probe {
    /// Send a request and return the raw `result` of its answer (an error answer is an error).
    async fn call(&mut self, method: &str, params: &str) -> Result<Vec<u8>, String> {
        let id = self.next_id;
        self.next_id += 1;
        let body =
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        let mut frame = Vec::with_capacity(body.len() + 14);
        write_frame(
            &mut frame,
            OpCode::Text,
            body.as_bytes(),
            Some(crate::rng::mask_key()),
        );
        let (res, _) = self.w.write_all(frame).await;
        res.map_err(|e| format!("write: {e}"))?;
        loop {
            let msg = self.next_message().await?;
            let Some(p) = jsonrpc::peek(&msg) else {
                continue;
            };
            if p.id != Some(id.to_string().as_bytes()) {
                continue; // a notification or a late answer
            }
            if let Some(err) = p.error {
                // An error answer: the node is there and speaks JSON-RPC, but
                // not these methods (a node of another flavour, say).
                return Err(format!(
                    "{RPC_ERROR}{method} answered {}",
                    String::from_utf8_lossy(err)
                ));
            }
            // An answer with our id but neither result nor error (an echo of
            // the request, say): alive, but not a JSON-RPC node.
            return p
                .result
                .map(|r| r.to_vec())
                .ok_or_else(|| NOT_RPC.to_string());
        }
    }

    /// The next data message; pings are answered on the way.
    async fn next_message(&mut self) -> Result<Vec<u8>, String> {
        loop {
            let mut pos = 0;
            let mut done = None;
            while pos < self.buf.len() && done.is_none() {
                match self.asm.step(&self.buf[pos..]) {
                    Ok(Event::Data { n, end }) => {
                        pos += n;
                        if end {
                            done = Some(self.asm.message().to_vec());
                            self.asm.clear();
                        }
                    }
                    Ok(Event::Control(frame, n)) => {
                        pos += n;
                        match frame.opcode {
                            OpCode::Close => return Err("node closed the probe connection".into()),
                            OpCode::Ping => {
                                let mut pong = Vec::new();
                                let mask = Some(crate::rng::mask_key());
                                write_frame(&mut pong, OpCode::Pong, frame.payload(), mask);
                                let _ = self.w.write_all(pong).await;
                            }
                            _ => {}
                        }
                    }
                    Ok(Event::NeedMore) => break,
                    Err(e) => return Err(format!("bad frame: {e}")),
                }
            }
            self.buf.drain(..pos);
            if let Some(m) = done {
                return Ok(m);
            }
            let (res, b) = self.r.read_more(std::mem::take(&mut self.buf)).await;
            self.buf = b;
            match res {
                Ok(0) => return Err("node closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}
