//! A Substrate node's new JSON-RPC (`chainHead_v1_*`) as a mock that
//! enforces what a real node enforces and chopsticks does not
//! (`sc-rpc-spec-v2`'s defaults):
//!
//! - at most 4 `chainHead_v1_follow` per connection: the fifth gets `-32800`;
//! - at most 512 blocks pinned over every follow of the node (unique
//!   hashes); when a pin would pass that, the follows whose oldest pin is
//!   older than 60 s are stopped, and if there is still no room, all;
//! - at most 16 operation slots per follow (a header read takes one while
//!   it reads, a storage operation one per item): `limitReached` (a header:
//!   `null`) past them;
//! - `-32801` for a block the follow does not hold, `-32804` for an unpin
//!   naming a hash twice; pruned blocks stay pinned until unpinned.
//!
//! Blocks come when the test makes them ([`HeadNode::block`],
//! [`HeadNode::block_on`] for a fork, [`HeadNode::finalize`]), or on a
//! timer ([`HeadNode::tick`]). It answers the gateway's health probes and
//! chain detection as a Substrate node does, and counts every client call.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::handshake::server::{Request, Response};
use tungstenite::Message;

/// The limits the mock enforces.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub follows_per_connection: usize,
    pub pinned_blocks: usize,
    pub pin_age: Duration,
    pub operations: usize,
    /// How long an operation runs before its events come.
    pub op_time: Duration,
}

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits {
            follows_per_connection: 4,
            pinned_blocks: 512,
            pin_age: Duration::from_secs(60),
            operations: 16,
            op_time: Duration::from_millis(20),
        }
    }
}

struct Block {
    hash: String,
    parent: String,
    number: u64,
}

struct Follow {
    conn: u64,
    with_runtime: bool,
    pins: HashMap<String, Instant>,
    slots: usize,
    next_op: u64,
}

/// An operation's events, due at a time, for a follow.
struct Due {
    at: Instant,
    sub: String,
    op: String,
    slots: usize,
    events: Vec<String>,
}

/// What the node saw, for the tests' assertions.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Client calls by method (health probes apart).
    pub calls: HashMap<String, usize>,
    /// The most follows one connection held at once.
    pub max_follows_on_a_connection: usize,
    /// The most blocks pinned at once.
    pub max_pinned: usize,
    pub follows_refused: usize,
    /// Follows the node stopped (for its pin limit).
    pub stopped: usize,
    /// Operations refused with `limitReached` (or a header's `null`).
    pub limit_reached: usize,
}

impl Seen {
    pub fn calls_of(&self, method: &str) -> usize {
        self.calls.get(method).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> usize {
        self.calls.values().sum()
    }
}

struct Chain {
    limits: HeadLimits,
    blocks: Vec<Block>,
    /// Index of the finalized block in `blocks`; the best block's hash.
    finalized: usize,
    best: String,
    follows: HashMap<String, Follow>,
    next_sub: u64,
    next_conn: u64,
    /// Outgoing messages by connection.
    outs: HashMap<u64, mpsc::Sender<String>>,
    due: Vec<Due>,
    seen: Seen,
    metadata_bytes: usize,
}

const RUNTIME: &str = r#"{"type":"valid","spec":{"specName":"mock","implName":"mock","specVersion":1,"implVersion":0,"apis":{},"transactionVersion":1}}"#;

fn hash(n: u64, salt: u64) -> String {
    format!("0x{:032x}{:032x}", n, salt)
}

impl Chain {
    fn block(&self, h: &str) -> Option<&Block> {
        self.blocks.iter().find(|b| b.hash == h)
    }

    fn pinned_total(&self) -> usize {
        let mut all: Vec<&String> = self.follows.values().flat_map(|f| f.pins.keys()).collect();
        all.sort();
        all.dedup();
        all.len()
    }

    fn send(&self, conn: u64, msg: String) {
        if let Some(tx) = self.outs.get(&conn) {
            let _ = tx.send(msg);
        }
    }

    fn event(&self, sub: &str, result: &str) {
        if let Some(f) = self.follows.get(sub) {
            self.send(
                f.conn,
                format!(
                    r#"{{"jsonrpc":"2.0","method":"chainHead_v1_followEvent","params":{{"subscription":"{sub}","result":{result}}}}}"#
                ),
            );
        }
    }

    fn stop(&mut self, sub: &str) {
        self.event(sub, r#"{"event":"stop"}"#);
        self.follows.remove(sub);
        self.due.retain(|d| d.sub != sub);
        self.seen.stopped += 1;
    }

    /// Pin `h` for `sub` as `sc-rpc-spec-v2` does: a new hash over the
    /// global limit stops the follows with old pins, then all of them.
    /// False: `sub` was stopped.
    fn pin(&mut self, sub: &str, h: &str) -> bool {
        let known = self.follows.values().any(|f| f.pins.contains_key(h));
        if !known && self.pinned_total() >= self.limits.pinned_blocks {
            let now = Instant::now();
            let old: Vec<String> = self
                .follows
                .iter()
                .filter(|(_, f)| {
                    f.pins
                        .values()
                        .min()
                        .is_some_and(|t| now.duration_since(*t) > self.limits.pin_age)
                })
                .map(|(s, _)| s.clone())
                .collect();
            for s in old {
                self.stop(&s);
            }
            if self.pinned_total() >= self.limits.pinned_blocks {
                let all: Vec<String> = self.follows.keys().cloned().collect();
                for s in all {
                    self.stop(&s);
                }
            }
        }
        let Some(f) = self.follows.get_mut(sub) else {
            return false;
        };
        f.pins.insert(h.to_string(), Instant::now());
        self.seen.max_pinned = self.seen.max_pinned.max(self.pinned_total());
        true
    }

    fn add_block(&mut self, parent: &str) -> String {
        let number = self.block(parent).expect("a known parent").number + 1;
        let h = hash(number, self.blocks.len() as u64);
        self.blocks.push(Block {
            hash: h.clone(),
            parent: parent.to_string(),
            number,
        });
        let best_moves = parent == self.best;
        if best_moves {
            self.best = h.clone();
        }
        let subs: Vec<String> = self.follows.keys().cloned().collect();
        for sub in subs {
            if !self.pin(&sub, &h) {
                continue;
            }
            let runtime = match self.follows[&sub].with_runtime {
                true => r#","newRuntime":null"#,
                false => "",
            };
            self.event(
                &sub,
                &format!(r#"{{"event":"newBlock","blockHash":"{h}","parentBlockHash":"{parent}"{runtime}}}"#),
            );
            if best_moves {
                self.event(
                    &sub,
                    &format!(r#"{{"event":"bestBlockChanged","bestBlockHash":"{h}"}}"#),
                );
            }
        }
        h
    }

    /// Finalize `h` (and its ancestors); prune the blocks not above it.
    fn finalize(&mut self, h: &str) {
        let mut route = Vec::new();
        let mut at = h.to_string();
        let old = self.blocks[self.finalized].hash.clone();
        while at != old {
            route.push(at.clone());
            at = self
                .block(&at)
                .expect("above the finalized block")
                .parent
                .clone();
        }
        route.reverse();
        let target = self.block(h).unwrap().number;
        // Not finalized and not descending from `h`: pruned.
        let descends = |chain: &Chain, b: &Block| {
            let mut x = b;
            loop {
                if x.hash == h {
                    return true;
                }
                if x.number <= target {
                    return false;
                }
                x = chain.block(&x.parent).unwrap();
            }
        };
        let finalized_number = self.blocks[self.finalized].number;
        let pruned: Vec<String> = self
            .blocks
            .iter()
            .filter(|b| {
                b.number > finalized_number && !route.contains(&b.hash) && !descends(self, b)
            })
            .map(|b| b.hash.clone())
            .collect();
        self.finalized = self.blocks.iter().position(|b| b.hash == h).unwrap();
        if pruned.contains(&self.best) {
            self.best = h.to_string();
        }
        let list = |v: &[String]| {
            v.iter()
                .map(|x| format!("\"{x}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        let note = format!(
            r#"{{"event":"finalized","finalizedBlockHashes":[{}],"prunedBlockHashes":[{}]}}"#,
            list(&route),
            list(&pruned)
        );
        let subs: Vec<String> = self.follows.keys().cloned().collect();
        for sub in subs {
            self.event(&sub, &note);
        }
        self.blocks.retain(|b| !pruned.contains(&b.hash));
        self.finalized = self.blocks.iter().position(|b| b.hash == h).unwrap();
    }

    fn not_finalized(&self) -> Vec<&Block> {
        let f = &self.blocks[self.finalized];
        let mut out: Vec<&Block> = self.blocks.iter().filter(|b| b.number > f.number).collect();
        out.sort_by_key(|b| b.number);
        out
    }
}

/// The mock node: its address and what it saw.
pub struct HeadNode {
    pub url: String,
    chain: Arc<Mutex<Chain>>,
    dead: Arc<AtomicBool>,
}

impl HeadNode {
    pub fn start() -> HeadNode {
        Self::with(HeadLimits::default())
    }

    pub fn with(limits: HeadLimits) -> HeadNode {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let genesis = hash(0, 0);
        let chain = Arc::new(Mutex::new(Chain {
            limits,
            blocks: vec![Block {
                hash: genesis.clone(),
                parent: hash(0, u64::MAX),
                number: 0,
            }],
            finalized: 0,
            best: genesis,
            follows: HashMap::new(),
            next_sub: 0,
            next_conn: 0,
            outs: HashMap::new(),
            due: Vec::new(),
            seen: Seen::default(),
            metadata_bytes: 200_000,
        }));
        let dead = Arc::new(AtomicBool::new(false));
        let (c, d) = (chain.clone(), dead.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if d.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let (c, d) = (c.clone(), d.clone());
                thread::spawn(move || serve(stream, c, d));
            }
        });
        HeadNode { url, chain, dead }
    }

    /// A new block on the best one (it becomes the best).
    pub fn block(&self) -> String {
        let mut c = self.chain.lock().unwrap();
        let best = c.best.clone();
        c.add_block(&best)
    }

    /// A new block on `parent` (a fork unless `parent` is the best).
    pub fn block_on(&self, parent: &str) -> String {
        self.chain.lock().unwrap().add_block(parent)
    }

    /// Make `h` the best block.
    pub fn set_best(&self, h: &str) {
        let mut c = self.chain.lock().unwrap();
        c.best = h.to_string();
        let subs: Vec<String> = c.follows.keys().cloned().collect();
        for sub in subs {
            c.event(
                &sub,
                &format!(r#"{{"event":"bestBlockChanged","bestBlockHash":"{h}"}}"#),
            );
        }
    }

    pub fn finalize(&self, h: &str) {
        self.chain.lock().unwrap().finalize(h);
    }

    /// A block every `every`, the one before it finalized, while the node lives.
    pub fn tick(&self, every: Duration) {
        let (chain, dead) = (Arc::downgrade(&self.chain), self.dead.clone());
        thread::spawn(move || loop {
            thread::sleep(every);
            let Some(chain) = chain.upgrade() else { return };
            if dead.load(Ordering::SeqCst) {
                return;
            }
            let mut c = chain.lock().unwrap();
            let parent = c.best.clone();
            c.add_block(&parent);
            if c.block(&parent)
                .is_some_and(|b| b.number > c.blocks[c.finalized].number)
            {
                c.finalize(&parent);
            }
        });
    }

    pub fn best(&self) -> String {
        self.chain.lock().unwrap().best.clone()
    }

    pub fn seen(&self) -> Seen {
        self.chain.lock().unwrap().seen.clone()
    }

    /// Blocks pinned now, over every follow.
    pub fn pinned(&self) -> usize {
        self.chain.lock().unwrap().pinned_total()
    }

    /// Operations running now (started, not done or stopped).
    pub fn running(&self) -> usize {
        self.chain.lock().unwrap().due.len()
    }

    /// Follows open now.
    pub fn follows(&self) -> usize {
        self.chain.lock().unwrap().follows.len()
    }

    /// Drop every connection and refuse new ones (a node that died).
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }
}

impl Drop for HeadNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Accept a WebSocket upgrade: the socket, and whether it is the
/// gateway's health probe (`User-Agent: ringway-health`).
pub fn accept_noting_probe(stream: TcpStream) -> Option<(tungstenite::WebSocket<TcpStream>, bool)> {
    stream.set_nodelay(true).unwrap();
    let probe = std::cell::Cell::new(false);
    let callback = |req: &Request, resp: Response| {
        probe.set(
            req.headers()
                .get("user-agent")
                .is_some_and(|v| v.as_bytes() == b"ringway-health"),
        );
        Ok(resp)
    };
    let ws = tungstenite::accept_hdr(stream, callback).ok()?;
    Some((ws, probe.get()))
}

fn serve(stream: TcpStream, chain: Arc<Mutex<Chain>>, dead: Arc<AtomicBool>) {
    let Some((mut ws, probe)) = accept_noting_probe(stream) else {
        return;
    };
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let conn = {
        let mut c = chain.lock().unwrap();
        c.next_conn += 1;
        let conn = c.next_conn;
        c.outs.insert(conn, tx.clone());
        conn
    };
    loop {
        if dead.load(Ordering::SeqCst) {
            break;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                let mut c = chain.lock().unwrap();
                for msg in answer_all(&mut c, conn, probe, &t) {
                    let _ = tx.send(msg);
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        {
            // Operations whose time has come, on this connection's follows.
            let mut c = chain.lock().unwrap();
            let now = Instant::now();
            let mine: Vec<String> = c
                .follows
                .iter()
                .filter(|(_, f)| f.conn == conn)
                .map(|(s, _)| s.clone())
                .collect();
            let (ready, wait): (Vec<Due>, Vec<Due>) = std::mem::take(&mut c.due)
                .into_iter()
                .partition(|d| d.at <= now && mine.contains(&d.sub));
            c.due = wait;
            for d in ready {
                for e in &d.events {
                    c.event(&d.sub, e);
                }
                if let Some(f) = c.follows.get_mut(&d.sub) {
                    f.slots -= d.slots;
                }
            }
        }
        let mut failed = false;
        while let Ok(m) = rx.try_recv() {
            if ws.send(Message::Text(m)).is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            break;
        }
    }
    let mut c = chain.lock().unwrap();
    c.outs.remove(&conn);
    c.follows.retain(|_, f| f.conn != conn);
}

fn answer_all(c: &mut Chain, conn: u64, probe: bool, text: &str) -> Vec<String> {
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return vec![
                r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}"#
                    .into(),
            ]
        }
    };
    match v {
        serde_json::Value::Array(reqs) => {
            let mut after = Vec::new();
            let answers: Vec<String> = reqs
                .iter()
                .map(|r| {
                    let mut out = answer(c, conn, probe, r);
                    let first = out.remove(0);
                    after.extend(out);
                    first
                })
                .collect();
            let mut all = vec![format!("[{}]", answers.join(","))];
            all.extend(after);
            all
        }
        r => answer(c, conn, probe, &r),
    }
}

/// The answer to one request, then any events it causes (in order).
fn answer(c: &mut Chain, conn: u64, probe: bool, r: &serde_json::Value) -> Vec<String> {
    let id = r["id"].to_string();
    let method = r["method"].as_str().unwrap_or("");
    let p = &r["params"];
    if !probe {
        *c.seen.calls.entry(method.to_string()).or_default() += 1;
    }
    let ok = |result: String| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
    let err = |code: i32, message: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":"{message}"}}}}"#)
    };
    let q = |s: &str| format!("\"{s}\"");
    let sub = p[0].as_str().unwrap_or("").to_string();
    let known = c.follows.get(&sub).is_some_and(|f| f.conn == conn);
    let pinned = |c: &Chain, h: &str| c.follows.get(&sub).is_some_and(|f| f.pins.contains_key(h));
    let head = c.blocks.iter().find(|b| b.hash == c.best).unwrap().number;
    match method {
        "system_health" => vec![ok(
            r#"{"peers":3,"isSyncing":false,"shouldHavePeers":true}"#.into(),
        )],
        "chain_getHeader" => {
            let at = p[0].as_str().map(str::to_string).unwrap_or(c.best.clone());
            let n = c.block(&at).map_or(head, |b| b.number);
            vec![ok(format!(r#"{{"number":"0x{n:x}","parentHash":"0x00"}}"#))]
        }
        "chain_getFinalizedHead" => vec![ok(q(&c.blocks[c.finalized].hash))],
        "chain_getBlockHash" => {
            let n = p[0].as_u64().unwrap_or(head);
            let h = c
                .blocks
                .iter()
                .find(|b| b.number == n)
                .map_or("null".to_string(), |b| q(&b.hash));
            vec![ok(h)]
        }
        "system_chain" => vec![ok(q("Mock"))],
        "rpc_methods" => vec![ok(
            r#"{"methods":["chainHead_v1_follow","chainSpec_v1_genesisHash"]}"#.into(),
        )],
        "chainSpec_v1_genesisHash" => vec![ok(q(&c.blocks[0].hash))],
        "chainSpec_v1_chainName" => vec![ok(q("Mock"))],
        "chainSpec_v1_properties" => vec![ok(r#"{"ss58Format":42}"#.into())],
        "chainHead_v1_follow" => {
            let here = c.follows.values().filter(|f| f.conn == conn).count();
            if here >= c.limits.follows_per_connection {
                c.seen.follows_refused += 1;
                return vec![err(
                    -32800,
                    "Maximum number of chainHead_follow has been reached",
                )];
            }
            c.next_sub += 1;
            let s = format!("mock-follow-{}", c.next_sub);
            let with_runtime = p[0].as_bool().unwrap_or(false);
            c.follows.insert(
                s.clone(),
                Follow {
                    conn,
                    with_runtime,
                    pins: HashMap::new(),
                    slots: 0,
                    next_op: 0,
                },
            );
            let here = here + 1;
            c.seen.max_follows_on_a_connection = c.seen.max_follows_on_a_connection.max(here);
            let mut out = vec![ok(q(&s))];
            let finalized = c.blocks[c.finalized].hash.clone();
            let above: Vec<(String, String)> = c
                .not_finalized()
                .iter()
                .map(|b| (b.hash.clone(), b.parent.clone()))
                .collect();
            for h in std::iter::once(&finalized).chain(above.iter().map(|(h, _)| h)) {
                if !c.pin(&s, h) {
                    return out;
                }
            }
            let event = |result: String| {
                format!(
                    r#"{{"jsonrpc":"2.0","method":"chainHead_v1_followEvent","params":{{"subscription":"{s}","result":{result}}}}}"#
                )
            };
            let runtime = match with_runtime {
                true => format!(r#","finalizedBlockRuntime":{RUNTIME}"#),
                false => String::new(),
            };
            out.push(event(format!(
                r#"{{"event":"initialized","finalizedBlockHashes":["{finalized}"]{runtime}}}"#
            )));
            for (h, parent) in above {
                let nr = if with_runtime {
                    r#","newRuntime":null"#
                } else {
                    ""
                };
                out.push(event(format!(
                    r#"{{"event":"newBlock","blockHash":"{h}","parentBlockHash":"{parent}"{nr}}}"#
                )));
            }
            out.push(event(format!(
                r#"{{"event":"bestBlockChanged","bestBlockHash":"{}"}}"#,
                c.best
            )));
            out
        }
        "chainHead_v1_unfollow" => {
            let had = known;
            if had {
                c.follows.remove(&sub);
                c.due.retain(|d| d.sub != sub);
            }
            vec![ok(had.to_string())]
        }
        "chainHead_v1_unpin" => {
            if !known {
                return vec![ok("null".into())];
            }
            let hashes: Vec<String> = match &p[1] {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect(),
                h => h.as_str().map(str::to_string).into_iter().collect(),
            };
            let mut unique = hashes.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != hashes.len() {
                return vec![err(
                    -32804,
                    "Received duplicate hashes for the `chainHead_unpin` method",
                )];
            }
            if !hashes.iter().all(|h| pinned(c, h)) {
                return vec![err(-32801, "Invalid block hash")];
            }
            let f = c.follows.get_mut(&sub).unwrap();
            for h in &hashes {
                f.pins.remove(h);
            }
            vec![ok("null".into())]
        }
        "chainHead_v1_header" => {
            if !known {
                return vec![ok("null".into())];
            }
            let h = p[1].as_str().unwrap_or("");
            if !pinned(c, h) {
                return vec![err(-32801, "Invalid block hash")];
            }
            if c.follows[&sub].slots >= c.limits.operations {
                c.seen.limit_reached += 1;
                return vec![ok("null".into())];
            }
            let n = c.block(h).map_or(0, |b| b.number);
            vec![ok(format!("\"0x{}{:08x}\"", &h[2..], n))]
        }
        "chainHead_v1_body" | "chainHead_v1_call" | "chainHead_v1_storage" => {
            if !known {
                return vec![ok(r#"{"result":"limitReached"}"#.into())];
            }
            let h = p[1].as_str().unwrap_or("").to_string();
            if !pinned(c, &h) {
                return vec![err(-32801, "Invalid block hash")];
            }
            let mut items: Vec<String> = p[2]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["key"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let want = if method == "chainHead_v1_storage" {
                items.len()
            } else {
                1
            };
            let limits = c.limits;
            let f = c.follows.get_mut(&sub).unwrap();
            let free = limits.operations - f.slots;
            let slots = want.min(free);
            if slots == 0 {
                c.seen.limit_reached += 1;
                return vec![ok(r#"{"result":"limitReached"}"#.into())];
            }
            f.slots += slots;
            // A storage operation's items past the slots it got are
            // discarded (the client asks them again).
            let discarded = items.len().saturating_sub(slots);
            items.truncate(slots);
            let op = f.next_op.to_string();
            f.next_op += 1;
            let events = match method {
                "chainHead_v1_body" => {
                    vec![format!(
                        r#"{{"event":"operationBodyDone","operationId":"{op}","value":["0x0102"]}}"#
                    )]
                }
                "chainHead_v1_call" => {
                    let output = match p[2].as_str().unwrap_or("") {
                        "Metadata_metadata_at_version" | "Metadata_metadata" => {
                            "ab".repeat(c.metadata_bytes)
                        }
                        "Metadata_metadata_versions" => "080e0000000f000000".into(),
                        _ => "00".into(),
                    };
                    vec![format!(
                        r#"{{"event":"operationCallDone","operationId":"{op}","output":"0x{output}"}}"#
                    )]
                }
                _ => {
                    let mut e: Vec<String> = items
                        .iter()
                        .map(|k| {
                            format!(
                                r#"{{"event":"operationStorageItems","operationId":"{op}","items":[{{"key":"{k}","value":"0x{}"}}]}}"#,
                                &h[h.len() - 8..]
                            )
                        })
                        .collect();
                    e.push(format!(
                        r#"{{"event":"operationStorageDone","operationId":"{op}"}}"#
                    ));
                    e
                }
            };
            c.due.push(Due {
                at: Instant::now() + limits.op_time,
                sub: sub.clone(),
                op: op.clone(),
                slots,
                events,
            });
            let discarded = match method {
                "chainHead_v1_storage" => format!(r#","discardedItems":{discarded}"#),
                _ => String::new(),
            };
            vec![ok(format!(
                r#"{{"result":"started","operationId":"{op}"{discarded}}}"#
            ))]
        }
        // The transaction methods: a watch's events at once, a broadcast's id.
        "transactionWatch_v1_submitAndWatch" => {
            c.next_sub += 1;
            let s = format!("mock-watch-{}", c.next_sub);
            let best = c.best.clone();
            let note = |result: String| {
                format!(
                    r#"{{"jsonrpc":"2.0","method":"transactionWatch_v1_watchEvent","params":{{"subscription":"{s}","result":{result}}}}}"#
                )
            };
            vec![
                ok(q(&s)),
                note(r#"{"event":"validated"}"#.into()),
                note(r#"{"event":"broadcasted"}"#.into()),
                note(format!(
                    r#"{{"event":"bestChainBlockIncluded","block":{{"hash":"{best}","index":0}}}}"#
                )),
                note(format!(
                    r#"{{"event":"finalized","block":{{"hash":"{best}","index":0}}}}"#
                )),
            ]
        }
        "transaction_v1_broadcast" => {
            c.next_sub += 1;
            vec![ok(format!("\"mock-broadcast-{}\"", c.next_sub))]
        }
        "transaction_v1_stop" | "transactionWatch_v1_unwatch" => vec![ok("null".into())],
        "chainHead_v1_continue" => vec![ok("null".into())],
        "chainHead_v1_stopOperation" => {
            // The operation ends, its slots free.
            let op = p[1].as_str().unwrap_or("");
            let (stopped, left): (Vec<Due>, Vec<Due>) = std::mem::take(&mut c.due)
                .into_iter()
                .partition(|d| d.sub == sub && d.op == op);
            c.due = left;
            if let Some(f) = c.follows.get_mut(&sub) {
                f.slots -= stopped.iter().map(|d| d.slots).sum::<usize>();
            }
            vec![ok("null".into())]
        }
        _ => vec![err(-32601, "Method not found")],
    }
}
