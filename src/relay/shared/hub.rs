//! A core's one `chainHead_v1_follow` of a node, shared by every client
//! follow on that core, as data: the node subscription, the gateway's view
//! of the chain (the finalized block, the blocks above it, the best one),
//! the blocks pinned at the node and why, each client's pins and
//! operations, and the answers kept by block. What is sent, and to whom,
//! is [`super::follow`]'s.
//!
//! The rules it keeps (the new JSON-RPC spec's, and what a Substrate node
//! enforces, `sc-rpc-spec-v2`):
//!
//! - A block is pinned at the node while the gateway's view holds it (the
//!   finalized block and the blocks not finalized yet: a late client starts
//!   from them) or while any client holds it; the last to let go unpins it.
//! - A client holds at most [`Limits::pins`] blocks, and none the view has
//!   let go of for longer than [`Limits::pin_age`]: past either it is
//!   stopped, alone. The node then never sees more pins, or older ones,
//!   than its limits (512 blocks, 60 s) because of one client.
//! - At most [`NODE_OPERATIONS`] operations run on the node follow at once
//!   (the node's limit per follow); more wait in [`Hub::queue`], bounded.
//!   One client's take at most [`CLIENT_SLOTS`] of them: a large storage
//!   query gets the rest of its items `discardedItems`, as from a busy
//!   node, and the next waiting client's operation goes first.
//! - Every request waiting on the node is answered: by the node, or (its
//!   follow gone first) `limitReached`, as a node answers for a follow it
//!   does not know. An operation whose clients left before the node
//!   answered keeps its slots until that answer, then is stopped there.

use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::relay::Session;

use super::conn::Conn;

/// Raw JSON: a block hash with its quotes, a runtime object, a client's
/// subscription or operation id.
pub type Raw = Rc<[u8]>;

/// Operations a Substrate node runs at once on one follow
/// (`MAX_ONGOING_OPERATIONS` in `sc-rpc-spec-v2`; a header read takes one
/// while it reads, a storage operation one per item).
pub const NODE_OPERATIONS: usize = 16;

/// Operations a client follow may have running (or waiting) at once: past
/// it, `limitReached`, as a node answers.
pub const CLIENT_OPERATIONS: usize = 16;

/// Node slots one client's operations hold at most (half the node's): the
/// others always find some.
pub const CLIENT_SLOTS: usize = NODE_OPERATIONS / 2;

/// Operations waiting for a free slot on the node follow, at most (past
/// it, `limitReached`).
pub const QUEUE_MAX: usize = 1024;

/// An operation's events are kept for clients that ask the same (and for
/// those joining it) up to this many bytes; a larger one is not kept.
pub const KEEP_OP_BYTES: usize = 4 << 20;

/// Answers kept per hub at most, in bytes (header, call, body and storage
/// results of pinned blocks, and runtime-keyed calls).
pub const KEEP_BYTES: usize = 32 << 20;

/// Runtime-keyed answers (`Metadata_*` calls) kept, at most.
pub const RUNTIME_KEPT: usize = 8;

/// Operation events held for operations whose `started` answer has not
/// come yet, at most (per hub).
pub const EARLY_MAX: usize = 64;

/// And their bytes, at most.
pub const EARLY_BYTES: usize = 1 << 20;

/// Per-client pin bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Blocks one client may hold pinned.
    pub pins: usize,
    /// How long a client may hold a block the gateway's view has let go of.
    pub pin_age: Duration,
    /// Blocks pinned at the node (for every client of this core) past
    /// which the clients holding the oldest are stopped.
    pub node_pins: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            pins: 256,
            pin_age: Duration::from_secs(45),
            node_pins: 384,
        }
    }
}

/// A block reported by the node and not finalized yet.
pub struct Block {
    pub hash: Raw,
    pub parent: Raw,
    /// Its `newRuntime` (raw JSON) when it changes the runtime.
    pub new_runtime: Option<Raw>,
}

/// A block pinned at the node: by the view, and by how many clients.
pub struct Pin {
    pub held: bool,
    pub clients: u32,
    /// Its runtime (raw JSON), for answers that depend on the runtime only.
    pub runtime: Option<Raw>,
    /// When the view let go of it (finalized past, or pruned).
    pub released: Option<Instant>,
}

/// The node follow's state.
#[derive(Debug, PartialEq, Eq)]
pub enum Open {
    /// Asked; the node has not answered.
    Opening,
    /// The node's subscription id (raw JSON).
    Live(Box<[u8]>),
}

/// One client's follow.
pub struct Client {
    pub session: Weak<Session>,
    pub with_runtime: bool,
    /// Blocks it holds, and since when.
    pub pins: AHashMap<Raw, Instant>,
    /// Its operations: its operation id (raw JSON) -> the hub's.
    pub ops: AHashMap<Raw, u64>,
    pub next_op: u64,
    /// `initialized` was sent to it.
    pub ready: bool,
    /// Node slots its operations hold.
    pub running: usize,
    /// Its header requests waiting for the node.
    pub headers: usize,
}

impl Client {
    pub fn new(session: Weak<Session>, with_runtime: bool) -> Client {
        Client {
            session,
            with_runtime,
            pins: AHashMap::new(),
            ops: AHashMap::new(),
            next_op: 0,
            ready: false,
            running: 0,
            headers: 0,
        }
    }

    /// A new operation id for it.
    pub fn op_id(&mut self) -> Raw {
        self.next_op += 1;
        Rc::from(format!("\"{}\"", self.next_op).into_bytes())
    }
}

/// A client waiting for an operation's `started` answer: its session, its
/// request's id and place in a batch, its follow and operation ids.
pub struct OpWaiter {
    pub session: Weak<Session>,
    pub id: Box<[u8]>,
    pub tag: u64,
    pub sub: Raw,
    pub op: Raw,
}

/// An operation on the node follow, for one client or several asking the
/// same of the same block.
pub struct Op {
    /// Its key while others may join it (and its answer may be kept).
    pub key: Option<Box<[u8]>>,
    /// The block it reads (its kept answer goes when the block is unpinned;
    /// none: runtime-keyed).
    pub block: Option<Raw>,
    /// The client follow that asked it first (its slots count as that
    /// client's).
    pub owner: Raw,
    /// Items asked (a storage query's; 1 for the others).
    pub items: usize,
    /// Items not sent (past the slots it got): added to the node's
    /// `discardedItems`.
    pub withheld: usize,
    /// Some of its items were discarded: its answer is not kept.
    pub partial: bool,
    /// Sent, and its clients left before the node answered: stopped at
    /// the node when it does.
    pub abandoned: bool,
    /// What to send, while it waits for a slot: method and params after
    /// the follow subscription (`,"0x..",..]`).
    pub queued: Option<(&'static str, Box<[u8]>)>,
    /// Slots it holds on the node follow while it runs (a storage
    /// operation one per item sent, as a node reserves them).
    pub slots: usize,
    /// The node's `started` answer (raw result), once it came.
    pub started: Option<Box<[u8]>>,
    /// The node's operation id, once started.
    pub node_id: Option<Box<[u8]>>,
    pub waiting: Vec<OpWaiter>,
    /// Clients it reports to: their follow and operation ids.
    pub clients: Vec<(Raw, Raw)>,
    /// Its events so far (while kept), and their bytes.
    pub events: Vec<Box<[u8]>>,
    pub bytes: usize,
}

/// A finished operation's answer, kept: the `started` result and the events.
pub struct Done {
    pub started: Box<[u8]>,
    pub events: Vec<Box<[u8]>>,
    pub bytes: usize,
    pub block: Option<Raw>,
}

/// A client waiting for a header: its session, its request's id and
/// place in a batch, its follow.
pub struct HeaderWaiter {
    pub session: Weak<Session>,
    pub id: Box<[u8]>,
    pub tag: u64,
    pub sub: Raw,
}

/// A header asked of the node: who waits for it.
pub type HeaderWaiters = Vec<HeaderWaiter>;

/// A kept or asked header.
pub enum Header {
    Kept(Raw),
    Asked(HeaderWaiters),
}

/// A core's follow of one node.
pub struct Hub {
    /// Tells its answers from an earlier hub's of the same node.
    pub serial: u64,
    pub conn: Rc<Conn>,
    pub open: Open,
    pub initialized: bool,
    pub finalized: Option<Raw>,
    /// The finalized block's runtime (raw JSON), if any.
    pub runtime: Option<Raw>,
    /// Blocks not finalized yet, parents first.
    pub blocks: Vec<Block>,
    pub best: Option<Raw>,
    /// Blocks pinned at the node.
    pub pins: AHashMap<Raw, Pin>,
    /// Client follows by their subscription id (raw JSON).
    pub clients: AHashMap<Raw, Client>,
    /// Client follows asked while the node follow was opening: answered
    /// with the node's answer (their id, or its error), with their
    /// request's id and place in a batch.
    pub answering: Vec<(Raw, Box<[u8]>, u64)>,
    pub ops: AHashMap<u64, Op>,
    pub next_op: u64,
    pub by_key: AHashMap<Box<[u8]>, u64>,
    pub by_node_id: AHashMap<Box<[u8]>, u64>,
    /// Operations waiting for a slot on the node follow, and headers.
    pub queue: VecDeque<u64>,
    pub header_queue: VecDeque<Raw>,
    /// Slots taken on the node follow: its operations running (a storage
    /// operation one per item) and headers asked (a node counts a header
    /// read among its operations while it reads).
    pub running: usize,
    pub headers: AHashMap<Raw, Header>,
    /// Operation events that came before the node's answer to their call.
    pub early: AHashMap<Box<[u8]>, Vec<Box<[u8]>>>,
    pub early_bytes: usize,
    pub done: AHashMap<Box<[u8]>, Rc<Done>>,
    /// Runtime-keyed answers, oldest first.
    pub runtime_done: VecDeque<Box<[u8]>>,
    pub kept_bytes: usize,
    pub limits: Limits,
}

/// What a change of the view asks of the node: blocks to unpin there.
pub type Unpins = Vec<Raw>;

/// What a client follow's end leaves to do.
#[derive(Default)]
pub struct Removed {
    /// Blocks the node may unpin.
    pub unpins: Unpins,
    /// Operations nobody else wants: to stop at the node.
    pub orphans: Vec<u64>,
    /// Its requests still waiting for the node's `started`: to answer.
    pub unanswered: Vec<OpWaiter>,
}

impl Hub {
    pub fn new(serial: u64, conn: Rc<Conn>, limits: Limits) -> Hub {
        Hub {
            serial,
            conn,
            open: Open::Opening,
            initialized: false,
            finalized: None,
            runtime: None,
            blocks: Vec::new(),
            best: None,
            pins: AHashMap::new(),
            clients: AHashMap::new(),
            answering: Vec::new(),
            ops: AHashMap::new(),
            next_op: 0,
            by_key: AHashMap::new(),
            by_node_id: AHashMap::new(),
            queue: VecDeque::new(),
            header_queue: VecDeque::new(),
            running: 0,
            headers: AHashMap::new(),
            early: AHashMap::new(),
            early_bytes: 0,
            done: AHashMap::new(),
            runtime_done: VecDeque::new(),
            kept_bytes: 0,
            limits,
        }
    }

    /// The node's `initialized`: the view starts at the last finalized
    /// block; the others it reported are unpinned at once.
    pub fn initialized(&mut self, finalized: Vec<Raw>, runtime: Option<Raw>) -> Unpins {
        let mut unpins = finalized;
        let last = unpins.pop();
        if let Some(f) = &last {
            self.pins.insert(
                f.clone(),
                Pin {
                    held: true,
                    clients: 0,
                    runtime: runtime.clone(),
                    released: None,
                },
            );
        }
        self.best = last.clone();
        self.finalized = last;
        self.runtime = runtime;
        self.initialized = true;
        unpins
    }

    /// The runtime of a block the view or a client holds.
    fn runtime_of(&self, hash: &[u8]) -> Option<Raw> {
        self.pins.get(hash).and_then(|p| p.runtime.clone())
    }

    /// A new block: the view holds it, and so does every client that was
    /// told of the chain so far.
    pub fn new_block(&mut self, block: Block, now: Instant) {
        let runtime = block
            .new_runtime
            .clone()
            .or_else(|| self.runtime_of(&block.parent));
        let mut clients = 0;
        for c in self.clients.values_mut().filter(|c| c.ready) {
            c.pins.insert(block.hash.clone(), now);
            clients += 1;
        }
        self.pins.insert(
            block.hash.clone(),
            Pin {
                held: true,
                clients,
                runtime,
                released: None,
            },
        );
        self.blocks.push(block);
    }

    /// The node finalized `finalized` (oldest first) and pruned `pruned`:
    /// the view moves up; what it let go of and no client holds is unpinned.
    pub fn finalized(&mut self, finalized: &[Raw], pruned: &[Raw], now: Instant) -> Unpins {
        let Some(last) = finalized.last() else {
            return Vec::new();
        };
        let mut released: Vec<Raw> = Vec::new();
        released.extend(self.finalized.take());
        released.extend(finalized[..finalized.len() - 1].iter().cloned());
        released.extend(pruned.iter().cloned());
        self.blocks
            .retain(|b| !finalized.contains(&b.hash) && !pruned.contains(&b.hash));
        if let Some(p) = self.pins.get(last) {
            self.runtime = p.runtime.clone().or(self.runtime.take());
        }
        self.finalized = Some(last.clone());
        let mut unpins = Vec::new();
        for h in released {
            if &h == last {
                continue;
            }
            let Some(p) = self.pins.get_mut(&h) else {
                continue;
            };
            p.held = false;
            p.released = Some(now);
            if p.clients == 0 {
                unpins.push(h);
            }
        }
        self.unpinned(&unpins);
        unpins
    }

    /// Forget what is kept of blocks unpinned at the node (a header asked
    /// of one stays, for its waiters: the node answers it).
    pub fn unpinned(&mut self, hashes: &[Raw]) {
        for h in hashes {
            self.pins.remove(h);
            if matches!(self.headers.get(h), Some(Header::Kept(_))) {
                self.headers.remove(h);
            }
        }
        if hashes.is_empty() {
            return;
        }
        let mut freed = 0;
        self.done.retain(|_, d| {
            let gone = d.block.as_ref().is_some_and(|b| hashes.contains(b));
            if gone {
                freed += d.bytes;
            }
            !gone
        });
        self.kept_bytes -= freed;
    }

    /// A client that joins now: what it holds from the start (the view).
    pub fn join(&mut self, sub: &Raw, now: Instant) {
        let mut held: Vec<Raw> = self.finalized.iter().cloned().collect();
        held.extend(self.blocks.iter().map(|b| b.hash.clone()));
        let Some(c) = self.clients.get_mut(sub) else {
            return;
        };
        c.ready = true;
        for h in held {
            if c.pins.insert(h.clone(), now).is_none() {
                if let Some(p) = self.pins.get_mut(&h) {
                    p.clients += 1;
                }
            }
        }
    }

    /// A client lets go of `hashes`: each must be one it holds, once.
    /// Returns what the node may unpin, or the hash it does not hold.
    pub fn unpin(&mut self, sub: &[u8], hashes: &[Raw]) -> Result<Unpins, Raw> {
        let Some(c) = self.clients.get_mut(sub) else {
            return Ok(Vec::new());
        };
        for (i, h) in hashes.iter().enumerate() {
            if !c.pins.contains_key(h) || hashes[..i].contains(h) {
                return Err(h.clone());
            }
        }
        for h in hashes {
            c.pins.remove(h);
        }
        Ok(self.release(hashes))
    }

    /// Client pins of `hashes` dropped: what the node may unpin now.
    fn release(&mut self, hashes: &[Raw]) -> Unpins {
        let mut unpins = Vec::new();
        for h in hashes {
            if let Some(p) = self.pins.get_mut(h) {
                p.clients = p.clients.saturating_sub(1);
                if p.clients == 0 && !p.held {
                    unpins.push(h.clone());
                }
            }
        }
        self.unpinned(&unpins);
        unpins
    }

    /// A client's follow ends: its pins go and its operations lose it.
    pub fn remove(&mut self, sub: &[u8]) -> Removed {
        let mut out = Removed::default();
        let Some(c) = self.clients.remove(sub) else {
            return out;
        };
        let hashes: Vec<Raw> = c.pins.into_keys().collect();
        out.unpins = self.release(&hashes);
        for (_, lop) in c.ops {
            if let Some(op) = self.ops.get_mut(&lop) {
                op.clients.retain(|(s, _)| &**s != sub);
                let (gone, stay) = std::mem::take(&mut op.waiting)
                    .into_iter()
                    .partition(|w| &*w.sub == sub);
                op.waiting = stay;
                out.unanswered.extend::<Vec<OpWaiter>>(gone);
                if op.clients.is_empty() && op.waiting.is_empty() {
                    out.orphans.push(lop);
                }
            }
        }
        out
    }

    /// Clients to stop: those holding more than their share of pins, or a
    /// block the view let go of longer than the pin age ago; then, while
    /// the node holds too many pins, those holding the oldest released one.
    pub fn overdue(&self, now: Instant) -> Vec<Raw> {
        let mut stop: Vec<Raw> = Vec::new();
        let released = |h: &Raw| self.pins.get(h).and_then(|p| p.released);
        for (sub, c) in &self.clients {
            let old = c.pins.keys().filter_map(released).min();
            let stale = old.is_some_and(|t| now.duration_since(t) > self.limits.pin_age);
            if c.pins.len() > self.limits.pins || stale {
                stop.push(sub.clone());
            }
        }
        let mut excess = self.pins.len().saturating_sub(self.limits.node_pins);
        if excess > 0 {
            // The oldest released pins first, with the clients holding them.
            let mut old: Vec<(Instant, &Raw)> = self
                .pins
                .iter()
                .filter_map(|(h, p)| p.released.map(|t| (t, h)))
                .collect();
            old.sort();
            for (_, h) in old {
                if excess == 0 {
                    break;
                }
                excess -= 1;
                for (sub, c) in &self.clients {
                    if c.pins.contains_key(h) && !stop.contains(sub) {
                        stop.push(sub.clone());
                    }
                }
            }
        }
        stop
    }

    /// Whether a client may ask one more operation or header.
    pub fn op_room(&self, sub: &[u8]) -> bool {
        self.clients
            .get(sub)
            .is_some_and(|c| c.ops.len() + c.headers < CLIENT_OPERATIONS)
    }

    /// A new operation (for the caller to fill in and send or queue).
    pub fn add_op(&mut self, key: Option<Box<[u8]>>, block: Option<Raw>, owner: Raw) -> u64 {
        self.next_op += 1;
        let lop = self.next_op;
        if let Some(k) = &key {
            self.by_key.insert(k.clone(), lop);
        }
        self.ops.insert(
            lop,
            Op {
                key,
                block,
                owner,
                items: 1,
                withheld: 0,
                partial: false,
                abandoned: false,
                queued: None,
                slots: 1,
                started: None,
                node_id: None,
                waiting: Vec::new(),
                clients: Vec::new(),
                events: Vec::new(),
                bytes: 0,
            },
        );
        lop
    }

    /// An operation is over (done, failed or stopped): it leaves the maps
    /// and its clients; its slot frees (if it held one).
    pub fn finish(&mut self, lop: u64) -> Option<Op> {
        let op = self.ops.remove(&lop)?;
        if let Some(k) = &op.key {
            if self.by_key.get(k) == Some(&lop) {
                self.by_key.remove(k);
            }
        }
        if let Some(n) = &op.node_id {
            self.by_node_id.remove(n);
            self.forget_early(n);
        }
        if op.queued.is_some() {
            self.queue.retain(|q| *q != lop);
        } else {
            self.free_slots(&op.owner, op.slots);
        }
        for (sub, cop) in &op.clients {
            if let Some(c) = self.clients.get_mut(sub) {
                c.ops.remove(cop);
            }
        }
        for w in &op.waiting {
            if let Some(c) = self.clients.get_mut(&w.sub) {
                c.ops.remove(&w.op);
            }
        }
        Some(op)
    }

    /// `n` slots of `owner`'s are free again.
    pub fn free_slots(&mut self, owner: &[u8], n: usize) {
        self.running = self.running.saturating_sub(n);
        if let Some(c) = self.clients.get_mut(owner) {
            c.running = c.running.saturating_sub(n);
        }
    }

    /// Whether an operation was sent and the node has not answered it
    /// (its events may come first).
    pub fn awaiting_answer(&self) -> bool {
        self.ops
            .values()
            .any(|o| o.queued.is_none() && o.node_id.is_none())
    }

    /// Hold an event for an operation the node has not answered yet
    /// (within [`EARLY_MAX`] and [`EARLY_BYTES`]; nothing while no
    /// operation awaits its answer: an event for one stopped).
    pub fn hold_early(&mut self, node_id: &[u8], event: &[u8]) {
        let held: usize = self.early.values().map(Vec::len).sum();
        if held >= EARLY_MAX
            || self.early_bytes + event.len() > EARLY_BYTES
            || !self.awaiting_answer()
        {
            return;
        }
        self.early_bytes += event.len();
        self.early
            .entry(Box::from(node_id))
            .or_default()
            .push(Box::from(event));
    }

    /// The events held for `node_id` (gone from the buffer).
    pub fn forget_early(&mut self, node_id: &[u8]) -> Vec<Box<[u8]>> {
        let events = self.early.remove(node_id).unwrap_or_default();
        self.early_bytes -= events.iter().map(|e| e.len()).sum::<usize>();
        if !self.awaiting_answer() {
            self.early.clear();
            self.early_bytes = 0;
        }
        events
    }

    /// Keep a finished operation's answer (within [`KEEP_BYTES`]; a
    /// runtime-keyed one among the last [`RUNTIME_KEPT`]).
    pub fn keep(&mut self, key: Box<[u8]>, done: Done) {
        if done.bytes > KEEP_OP_BYTES {
            return;
        }
        if done.block.is_none() {
            if self.runtime_done.len() == RUNTIME_KEPT {
                if let Some(old) = self.runtime_done.pop_front() {
                    if let Some(d) = self.done.remove(&old) {
                        self.kept_bytes -= d.bytes;
                    }
                }
            }
            self.runtime_done.push_back(key.clone());
        }
        if self.kept_bytes + done.bytes > KEEP_BYTES {
            return;
        }
        self.kept_bytes += done.bytes;
        if let Some(old) = self.done.insert(key, Rc::new(done)) {
            self.kept_bytes -= old.bytes;
        }
    }

    /// The block's runtime, for a runtime-keyed answer's key.
    pub fn block_runtime(&self, hash: &[u8]) -> Option<Raw> {
        self.runtime_of(hash)
    }

    /// Live client follows of sessions still there.
    pub fn sessions(&self) -> Vec<(Raw, Rc<Session>)> {
        self.clients
            .iter()
            .filter_map(|(sub, c)| c.session.upgrade().map(|s| (sub.clone(), s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Raw {
        Rc::from(format!("\"{s}\"").into_bytes())
    }

    fn hub() -> Hub {
        let conn = Rc::new(Conn::new(0));
        Hub::new(1, conn, Limits::default())
    }

    fn block(h: &str, parent: &str) -> Block {
        Block {
            hash: raw(h),
            parent: raw(parent),
            new_runtime: None,
        }
    }

    fn client(hub: &mut Hub, name: &str) -> Raw {
        let sub = raw(name);
        hub.clients
            .insert(sub.clone(), Client::new(Weak::new(), true));
        sub
    }

    #[test]
    fn a_block_stays_pinned_at_the_node_until_the_last_client_lets_go() {
        let now = Instant::now();
        let mut h = hub();
        assert_eq!(
            h.initialized(vec![raw("f0"), raw("f1")], None),
            vec![raw("f0")]
        );
        let (a, b) = (client(&mut h, "a"), client(&mut h, "b"));
        h.join(&a, now);
        h.join(&b, now);
        h.new_block(block("b2", "f1"), now);
        // Finalizing b2 lets the view go of f1; both clients hold it.
        assert!(h.finalized(&[raw("b2")], &[], now).is_empty());
        assert_eq!(h.unpin(&a, &[raw("f1")]), Ok(vec![]));
        assert_eq!(h.unpin(&b, &[raw("f1")]), Ok(vec![raw("f1")]));
        // A hash it no longer holds, or named twice, is refused.
        assert_eq!(h.unpin(&b, &[raw("f1")]), Err(raw("f1")));
        assert_eq!(h.unpin(&a, &[raw("b2"), raw("b2")]), Err(raw("b2")));
        // b2 is the view's finalized block: a client letting go keeps it pinned.
        assert_eq!(h.unpin(&a, &[raw("b2")]), Ok(vec![]));
        assert!(h.pins.contains_key(&raw("b2")));
    }

    #[test]
    fn pruned_blocks_are_unpinned_once_nobody_holds_them() {
        let now = Instant::now();
        let mut h = hub();
        h.initialized(vec![raw("f")], None);
        let a = client(&mut h, "a");
        h.join(&a, now);
        h.new_block(block("x", "f"), now);
        h.new_block(block("y", "f"), now);
        let unpins = h.finalized(&[raw("x")], &[raw("y")], now);
        assert!(unpins.is_empty(), "the client holds f and y");
        let unpins = h.remove(&a).unpins;
        let mut unpins: Vec<String> = unpins
            .iter()
            .map(|u| String::from_utf8_lossy(u).into())
            .collect();
        unpins.sort();
        assert_eq!(unpins, ["\"f\"", "\"y\""]);
        assert_eq!(h.pins.len(), 1, "only the finalized x");
    }

    #[test]
    fn a_client_that_never_unpins_is_the_only_one_stopped() {
        let t0 = Instant::now();
        let mut h = hub();
        h.limits.pin_age = Duration::from_secs(10);
        h.initialized(vec![raw("f")], None);
        let (good, bad) = (client(&mut h, "good"), client(&mut h, "bad"));
        h.join(&good, t0);
        h.join(&bad, t0);
        let mut parent = "f".to_string();
        for i in 0..20 {
            let name = format!("b{i}");
            let now = t0 + Duration::from_secs(i);
            h.new_block(block(&name, &parent), now);
            let released = parent.clone();
            h.finalized(&[raw(&name)], &[], now);
            let unpins = h.unpin(&good, &[raw(&released)]).unwrap();
            assert!(unpins.is_empty(), "bad still holds {released}");
            parent = name;
        }
        assert_eq!(h.overdue(t0 + Duration::from_secs(20)), vec![bad.clone()]);
        let unpins = h.remove(&bad).unpins;
        assert_eq!(unpins.len(), 20, "f and b0..b18");
        assert!(h.overdue(t0 + Duration::from_secs(20)).is_empty());
    }

    #[test]
    fn the_node_never_holds_more_pins_than_its_share() {
        let t0 = Instant::now();
        let mut h = hub();
        h.limits = Limits {
            pins: 1000,
            pin_age: Duration::from_secs(3600),
            node_pins: 8,
        };
        h.initialized(vec![raw("f")], None);
        let hoarder = client(&mut h, "hoarder");
        h.join(&hoarder, t0);
        let mut parent = "f".to_string();
        for i in 0..10 {
            let name = format!("b{i}");
            h.new_block(block(&name, &parent), t0);
            h.finalized(&[raw(&name)], &[], t0);
            parent = name;
        }
        assert_eq!(h.overdue(t0), vec![hoarder]);
    }

    #[test]
    fn a_late_client_starts_from_the_view_and_a_runtime_follows_its_blocks() {
        let now = Instant::now();
        let mut h = hub();
        let rt: Raw = Rc::from(&br#"{"type":"valid","spec":{"specVersion":1}}"#[..]);
        h.initialized(vec![raw("f")], Some(rt.clone()));
        h.new_block(block("a", "f"), now);
        let late = client(&mut h, "late");
        h.join(&late, now);
        let pins = &h.clients[&late].pins;
        assert!(pins.contains_key(&raw("f")) && pins.contains_key(&raw("a")));
        assert_eq!(h.block_runtime(&raw("a")), Some(rt));
        let new: Raw = Rc::from(&br#"{"type":"valid","spec":{"specVersion":2}}"#[..]);
        h.new_block(
            Block {
                hash: raw("b"),
                parent: raw("a"),
                new_runtime: Some(new.clone()),
            },
            now,
        );
        h.finalized(&[raw("a"), raw("b")], &[], now);
        assert_eq!(h.runtime, Some(new));
    }
}
