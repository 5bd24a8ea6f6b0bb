//! `chainHead_v1_follow` merged: one follow per node per core, whatever the
//! number of client follows on it, in both session modes (a pinned
//! session's follow travels on its core's shared connection to its node,
//! as its cacheable calls do).
//!
//! - Each client follow gets its own subscription id, then `initialized`
//!   from the gateway's view (the finalized block and its runtime when it
//!   asked `withRuntime`), a `newBlock` for each block above it and
//!   `bestBlockChanged`; then the node's events as they come, in order.
//! - Pins are the gateway's ([`super::hub`]): a block stays pinned at the
//!   node while the view or any client holds it; a client over its pin
//!   bounds gets its own `stop`.
//! - `chainHead_v1_header`, `_body`, `_call` and `_storage` go out on the
//!   node follow with the gateway's ids and come back with the client's;
//!   the same question of the same block is asked once (those asking
//!   while it runs join it) and its answer kept while the block is pinned;
//!   `Metadata_*` calls are kept by runtime, so clients starting at
//!   different blocks of one runtime download metadata once. At most
//!   [`hub::NODE_OPERATIONS`] run at once on the node follow; the others
//!   wait, and their clients' answers with them.
//! - The gateway continues storage operations itself
//!   (`operationWaitingForContinue` never reaches a client;
//!   `chainHead_v1_continue` is answered `null`).
//! - When the node's connection is lost, or the node stops the follow,
//!   every client follow gets `stop` (the spec's way: the client follows
//!   again, on another node if its session moved).
//!
//! - A client follow asked while the node follow opens is answered with
//!   the node's answer: its id, or the node's error (a node without the
//!   new spec answers "method not found", not `stop` after an id).
//!
//! A follow inside a batch of a shared session is refused (`-32600`: its
//! events could reach the client before the batch with its id); a pinned
//! session's batch goes whole to its own node connection, as before, and
//! calls on a follow the node gave out itself go to the node.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use crate::jsonrpc::error::{code, error};
use crate::jsonrpc::{self, Request};
use crate::relay::Session;
use crate::stats::Outcome;

use super::conn::{send_own, Conn, FollowCall, State, SubCall};
use super::core::Shared;
use super::follow_ops::{self as ops, answer, errors, fail, hashes, param, reply_raw, HubRef};
use super::follow_ops::{recount, unpin_at_node, EVENT};
use super::hub::{Block, Client, Header, Hub, Open, Raw};
use super::topics::{new_sub_id, notify};

const STOP: &[u8] = br#"{"event":"stop"}"#;
/// Whether `req` is for the follow hubs: a `chainHead_v1_follow` (with an
/// id), or a `chainHead_v1_*` call naming a client follow of this core.
pub fn claims(sh: &Shared, req: &Request<'_>) -> bool {
    let Some(method) = req.method() else {
        return false;
    };
    let Some(rest) = method.strip_prefix(b"chainHead_v1_") else {
        return false;
    };
    if rest == b"follow" {
        return req.id.is_some();
    }
    first_param(req).is_some_and(|sub| find(sh, sub).is_some())
}

fn first_param<'a>(req: &Request<'a>) -> Option<&'a [u8]> {
    req.params.and_then(|p| jsonrpc::param(p, 0))
}

/// The hub that has the client follow `sub`.
fn find(sh: &Shared, sub: &[u8]) -> Option<HubRef> {
    sh.hubs
        .borrow()
        .iter()
        .flatten()
        .find(|h| h.borrow().clients.contains_key(sub))
        .cloned()
}

/// A call [`claims`] took, from `s` whose node is `node`.
pub fn on_call(sh: &Rc<Shared>, node: usize, s: &Rc<Session>, req: &Request<'_>, tag: u64) {
    let method = req.method().unwrap_or_default();
    if let Some(id) = req.id {
        s.inflight.borrow_mut().add(id, 0);
    }
    if method == b"chainHead_v1_follow" {
        return follow(sh, node, s, req, tag);
    }
    let sub = first_param(req).expect("claimed by its follow id");
    let Some(hub) = find(sh, sub) else {
        return;
    };
    let owner = hub.borrow().clients[sub].session.clone();
    if !std::ptr::eq(owner.as_ptr(), &**s) {
        crate::stats::request(s.cfg.chain, req, Outcome::Refused);
        let e = error(
            req.reply_id(),
            code::INVALID_PARAMS,
            "Invalid subscription id",
            None,
        );
        return reply_raw(s, req, tag, e.as_bytes());
    }
    let sub: Raw = Rc::from(sub);
    let outcome = match &method[b"chainHead_v1_".len()..] {
        b"unfollow" => {
            stop_client(sh, &hub, &sub, false);
            answer(s, req, tag, b"null");
            Outcome::Cached
        }
        b"header" => ops::header(&hub, s, req, tag, &sub),
        b"body" => ops::operation(&hub, s, req, tag, &sub, "chainHead_v1_body"),
        b"call" => ops::operation(&hub, s, req, tag, &sub, "chainHead_v1_call"),
        b"storage" => ops::operation(&hub, s, req, tag, &sub, "chainHead_v1_storage"),
        b"unpin" => ops::unpin(&hub, s, req, tag, &sub),
        b"continue" => {
            // The gateway continues operations itself: one still running
            // never waits for this client (as a node answers then).
            let running =
                param(req, 1).is_some_and(|op| hub.borrow().clients[&sub].ops.contains_key(op));
            match running {
                true => fail(
                    s,
                    req,
                    tag,
                    errors::INVALID_CONTINUE,
                    "Wait for continue event was not generated for the subscription",
                ),
                false => answer(s, req, tag, b"null"),
            }
            Outcome::Cached
        }
        b"stopOperation" => {
            if let Some(op) = param(req, 1) {
                ops::stop_operation(&hub, &sub, op);
            }
            answer(s, req, tag, b"null");
            Outcome::Cached
        }
        _ => {
            fail(s, req, tag, code::METHOD_NOT_FOUND, "Method not found");
            Outcome::Refused
        }
    };
    crate::stats::request(s.cfg.chain, req, outcome);
}

/// Count a client follow in its session's subscriptions (for the
/// per-session limit): a shared session counts its own; a pinned one
/// counted it at the call, and here only a follow the gateway ends.
fn counted(s: &Session, up: bool, by_gateway: bool) {
    match s.member.is_some() {
        true => {
            let m = super::member::member(s);
            let n = m.follows.get();
            m.follows.set(if up { n + 1 } else { n.saturating_sub(1) });
        }
        false if by_gateway => s.subscriptions.set(s.subscriptions.get().saturating_sub(1)),
        false => {}
    }
}

/// A client follows: it gets its id now, and the chain from the view once
/// the node follow is initialized.
fn follow(sh: &Rc<Shared>, node: usize, s: &Rc<Session>, req: &Request<'_>, tag: u64) {
    if tag != 0 {
        // Its events could reach the client before the batch with its id.
        crate::stats::request(s.cfg.chain, req, Outcome::Refused);
        let why = "chainHead_v1_follow must be sent on its own, not in a batch";
        return fail(s, req, tag, code::INVALID_REQUEST, why);
    }
    let with_runtime = param(req, 0) == Some(b"true");
    let existing = sh.hubs.borrow()[node].clone();
    let outcome = match existing {
        Some(_) => Outcome::Joined,
        None => Outcome::Forwarded,
    };
    let hub = existing.unwrap_or_else(|| open(sh, node));
    let sub = new_sub_id(&sh.next_sub);
    hub.borrow_mut()
        .clients
        .insert(sub.clone(), Client::new(Rc::downgrade(s), with_runtime));
    counted(s, true, false);
    crate::stats::request(s.cfg.chain, req, outcome);
    let mut h = hub.borrow_mut();
    if h.open == Open::Opening {
        // Answered with the node's answer: its id, or its error.
        h.answering.push((sub, Box::from(req.reply_id()), tag));
        return;
    }
    drop(h);
    answer(s, req, tag, &sub);
    let mut h = hub.borrow_mut();
    if h.initialized {
        start(&mut h, &sub, s, true);
    }
    drop(h);
    recount(sh);
}

/// A new hub for `node`: its follow asked on a connection to it.
fn open(sh: &Rc<Shared>, node: usize) -> HubRef {
    let conn = sh.conn(node);
    let serial = sh.hub_serial.get() + 1;
    sh.hub_serial.set(serial);
    conn.follows.set(conn.follows.get() + 1);
    send_own(
        &conn,
        b"chainHead_v1_follow",
        b"[true]",
        SubCall::Follow(serial, FollowCall::Open),
    );
    crate::debug!(
        "following {} for this core's clients",
        sh.pool.nodes()[node].public_name()
    );
    let hub = Rc::new(RefCell::new(Hub::new(serial, conn, sh.settings.follow)));
    sh.hubs.borrow_mut()[node] = Some(hub.clone());
    hub
}

/// Tell a client follow the chain as the view has it: `initialized`, a
/// `newBlock` for each block above the finalized one, the best block
/// (`late`: the node's own `initialized` was before it came).
fn start(h: &mut Hub, sub: &Raw, s: &Session, late: bool) {
    h.join(sub, Instant::now());
    let with_runtime = h.clients[sub].with_runtime;
    let Some(finalized) = h.finalized.clone() else {
        return;
    };
    let mut init = Vec::with_capacity(256);
    init.extend_from_slice(br#"{"event":"initialized","finalizedBlockHashes":["#);
    init.extend_from_slice(&finalized);
    init.push(b']');
    if let (true, Some(rt)) = (with_runtime, &h.runtime) {
        init.extend_from_slice(br#","finalizedBlockRuntime":"#);
        init.extend_from_slice(rt);
    }
    init.push(b'}');
    notify(s, EVENT, sub, &init);
    for b in &h.blocks {
        let runtime = b.new_runtime.as_deref().filter(|_| with_runtime);
        notify(s, EVENT, sub, &new_block(b, runtime));
    }
    // (At the node's own `initialized`, its blocks and best block follow.)
    if let (true, Some(best)) = (late, &h.best) {
        notify(s, EVENT, sub, &best_block(best));
    }
}

fn new_block(b: &Block, runtime: Option<&[u8]>) -> Vec<u8> {
    let mut e = Vec::with_capacity(200);
    e.extend_from_slice(br#"{"event":"newBlock","blockHash":"#);
    e.extend_from_slice(&b.hash);
    e.extend_from_slice(br#","parentBlockHash":"#);
    e.extend_from_slice(&b.parent);
    e.extend_from_slice(br#","newRuntime":"#);
    e.extend_from_slice(runtime.unwrap_or(b"null"));
    e.push(b'}');
    e
}

fn best_block(hash: &[u8]) -> Vec<u8> {
    let mut e = br#"{"event":"bestBlockChanged","bestBlockHash":"#.to_vec();
    e.extend_from_slice(hash);
    e.push(b'}');
    e
}

/// The hub of `conn`'s node, if its follow lives on `conn`.
fn hub_on(sh: &Shared, conn: &Rc<Conn>) -> Option<HubRef> {
    let hub = sh.hubs.borrow()[conn.node].clone()?;
    let here = Rc::ptr_eq(&hub.borrow().conn, conn);
    here.then_some(hub)
}

/// A notification on `conn`: the node follow's events go to the client
/// follows (false: not the node follow's).
pub fn event(sh: &Rc<Shared>, conn: &Rc<Conn>, sub: &[u8], msg: &[u8]) -> bool {
    if conn.follow_sub.borrow().as_deref() != Some(sub) {
        return false;
    }
    let Some(hub) = hub_on(sh, conn) else {
        return true;
    };
    let Some(result) = jsonrpc::peek(msg)
        .and_then(|p| p.params)
        .and_then(|ps| jsonrpc::member(ps, b"result"))
    else {
        return true;
    };
    let kind = jsonrpc::member(result, b"event")
        .and_then(jsonrpc::unquote)
        .unwrap_or_default();
    let now = Instant::now();
    match kind {
        b"initialized" => {
            let finalized = hashes(jsonrpc::member(result, b"finalizedBlockHashes"));
            let runtime = jsonrpc::member(result, b"finalizedBlockRuntime").map(Rc::from);
            let mut h = hub.borrow_mut();
            let unpins = h.initialized(finalized, runtime);
            unpin_at_node(&h, &unpins);
            for (sub, s) in h.sessions() {
                if !h.clients[&sub].ready {
                    start(&mut h, &sub, &s, false);
                }
            }
        }
        b"newBlock" => {
            let member = |k: &[u8]| jsonrpc::member(result, k).map(Rc::<[u8]>::from);
            let (Some(hash), Some(parent)) = (member(b"blockHash"), member(b"parentBlockHash"))
            else {
                return true;
            };
            let new_runtime = member(b"newRuntime").filter(|r| &**r != b"null");
            let block = Block {
                hash,
                parent,
                new_runtime,
            };
            // Clients that did not ask for the runtime get `newRuntime: null`.
            let plain = block.new_runtime.as_ref().map(|_| new_block(&block, None));
            let mut h = hub.borrow_mut();
            h.new_block(block, now);
            for (sub, s) in h.sessions() {
                let c = &h.clients[&sub];
                if c.ready {
                    let e = plain
                        .as_deref()
                        .filter(|_| !c.with_runtime)
                        .unwrap_or(result);
                    notify(&s, EVENT, &sub, e);
                }
            }
            drop(h);
            police(sh, &hub, now);
        }
        b"bestBlockChanged" => {
            let mut h = hub.borrow_mut();
            h.best = jsonrpc::member(result, b"bestBlockHash").map(Rc::from);
            to_ready(&h, result);
        }
        b"finalized" => {
            let finalized = hashes(jsonrpc::member(result, b"finalizedBlockHashes"));
            let pruned = hashes(jsonrpc::member(result, b"prunedBlockHashes"));
            let mut h = hub.borrow_mut();
            to_ready(&h, result);
            let unpins = h.finalized(&finalized, &pruned, now);
            unpin_at_node(&h, &unpins);
            drop(h);
            police(sh, &hub, now);
        }
        b"stop" => {
            crate::warn!(
                "{} stopped this core's follow; its client follows are stopped",
                sh.pool.nodes()[conn.node].public_name()
            );
            end_hub(sh, &hub, false);
        }
        _ => ops::op_event(&hub, kind, result),
    }
    recount(sh);
    true
}

/// A block event to every client follow that was told the chain so far.
fn to_ready(h: &Hub, result: &[u8]) {
    for (sub, s) in h.sessions() {
        if h.clients[&sub].ready {
            notify(&s, EVENT, &sub, result);
        }
    }
}

/// Stop the client follows over their pin bounds.
fn police(sh: &Rc<Shared>, hub: &HubRef, now: Instant) {
    let overdue = hub.borrow().overdue(now);
    for sub in overdue {
        crate::debug!("a client follow holds too many or too old pins: stopped");
        crate::stats::count(|c| c.follow_stopped.add(1));
        stop_client(sh, hub, &sub, true);
    }
}

/// End a client follow: told `stop` when the gateway ends it
/// (`by_gateway`), its pins and operations released either way.
fn stop_client(sh: &Rc<Shared>, hub: &HubRef, sub: &Raw, by_gateway: bool) {
    let mut h = hub.borrow_mut();
    let session = h.clients.get(sub).and_then(|c| c.session.upgrade());
    let gone = h.remove(sub);
    unpin_at_node(&h, &gone.unpins);
    for lop in gone.orphans {
        ops::stop_node_op(&mut h, lop);
    }
    let empty = h.clients.is_empty();
    drop(h);
    ops::unanswered(gone.unanswered);
    if let Some(s) = session {
        if by_gateway {
            notify(&s, EVENT, sub, STOP);
        }
        counted(&s, false, by_gateway);
    }
    if empty {
        end_hub(sh, hub, true);
    }
    recount(sh);
}

/// The hub is over (no client left, or the node follow stopped): clients
/// still on it get `stop`, the node follow ends.
fn end_hub(sh: &Rc<Shared>, hub: &HubRef, unfollow: bool) {
    let mut h = hub.borrow_mut();
    {
        let mut hubs = sh.hubs.borrow_mut();
        let slot = &mut hubs[h.conn.node];
        if slot.as_ref().is_some_and(|x| Rc::ptr_eq(x, hub)) {
            *slot = None;
        }
    }
    let conn = h.conn.clone();
    conn.follows.set(conn.follows.get().saturating_sub(1));
    let sub = conn.follow_sub.borrow_mut().take();
    if let (true, Some(sub), true) = (unfollow, sub, conn.state() != State::Dead) {
        ops::ask(
            &conn,
            h.serial,
            b"chainHead_v1_unfollow",
            &sub,
            &[],
            FollowCall::Own,
        );
    }
    let answering = std::mem::take(&mut h.answering);
    let clients: Vec<(Raw, Client)> = h.clients.drain().collect();
    let ops: Vec<super::hub::Op> = h.ops.drain().map(|(_, op)| op).collect();
    let headers: Vec<Header> = h.headers.drain().map(|(_, w)| w).collect();
    drop(h);
    conn.wake_timer();
    let why = "the node's follow ended; follow again";
    for w in ops.into_iter().flat_map(|op| op.waiting) {
        if let Some(s) = w.session.upgrade() {
            let e = error(&w.id, code::INTERNAL_ERROR, why, None);
            s.reply(w.tag, &w.id, &[e.as_bytes()]);
        }
    }
    for waiters in headers.into_iter().filter_map(|h| match h {
        Header::Asked(w) => Some(w),
        Header::Kept(_) => None,
    }) {
        for w in waiters {
            if let Some(s) = w.session.upgrade() {
                let e = error(&w.id, code::INTERNAL_ERROR, why, None);
                s.reply(w.tag, &w.id, &[e.as_bytes()]);
            }
        }
    }
    for (sub, c) in clients {
        let Some(s) = c.session.upgrade() else {
            continue;
        };
        counted(&s, false, true);
        // A follow not answered yet gets an error; one that was, `stop`.
        match answering.iter().find(|(x, _, _)| *x == sub) {
            Some((_, id, tag)) => {
                let e = error(id, code::INTERNAL_ERROR, why, None);
                s.reply(*tag, id, &[e.as_bytes()]);
            }
            None => notify(&s, EVENT, &sub, STOP),
        }
    }
    recount(sh);
}

/// `conn` is lost: the hub whose follow lived on it ends (its clients get `stop`).
pub fn lost(sh: &Rc<Shared>, conn: &Rc<Conn>) {
    if let Some(hub) = hub_on(sh, conn) {
        end_hub(sh, &hub, false);
    }
}

/// A session ends: its client follows end with it.
pub fn leave(sh: &Rc<Shared>, s: &Session) {
    let hubs: Vec<HubRef> = sh.hubs.borrow().iter().flatten().cloned().collect();
    for hub in hubs {
        let mine: Vec<Raw> = hub
            .borrow()
            .clients
            .iter()
            .filter(|(_, c)| std::ptr::eq(c.session.as_ptr(), s) || c.session.strong_count() == 0)
            .map(|(sub, _)| sub.clone())
            .collect();
        for sub in mine {
            stop_client(sh, &hub, &sub, false);
        }
    }
}

/// The node answered one of the hubs' requests.
pub fn answered(sh: &Rc<Shared>, conn: &Rc<Conn>, serial: u64, call: FollowCall, msg: &[u8]) {
    let p = jsonrpc::peek(msg);
    let result = p.as_ref().and_then(|p| p.result);
    let hub = hub_on(sh, conn).filter(|h| h.borrow().serial == serial);
    let Some(hub) = hub else {
        // A hub that ended before its follow was answered: end that follow.
        if let (FollowCall::Open, Some(sub)) = (&call, result.filter(|r| r.first() == Some(&b'"')))
        {
            ops::ask(
                conn,
                serial,
                b"chainHead_v1_unfollow",
                sub,
                &[],
                FollowCall::Own,
            );
        }
        return;
    };
    match call {
        FollowCall::Open => {
            let answering = std::mem::take(&mut hub.borrow_mut().answering);
            let clients: Vec<_> = {
                let h = hub.borrow();
                answering
                    .into_iter()
                    .filter_map(|(sub, id, tag)| {
                        let s = h.clients.get(&sub)?.session.upgrade()?;
                        Some((sub, id, tag, s))
                    })
                    .collect()
            };
            match result.filter(|r| r.first() == Some(&b'"')) {
                Some(node_sub) => {
                    hub.borrow_mut().open = Open::Live(Box::from(node_sub));
                    *conn.follow_sub.borrow_mut() = Some(Box::from(node_sub));
                    for (sub, id, tag, s) in clients {
                        ops::answer_parts(&s, &id, tag, &[&sub]);
                    }
                }
                None => {
                    crate::warn!(
                        "{} refused this core's follow: {}",
                        sh.pool.nodes()[conn.node].public_name(),
                        String::from_utf8_lossy(&msg[..msg.len().min(200)])
                    );
                    // Each client that asked gets the node's answer, with its id.
                    let ours = p.as_ref().and_then(|p| p.id);
                    for (sub, id, tag, s) in clients {
                        hub.borrow_mut().remove(&sub);
                        counted(&s, false, true);
                        ops::with_their_id(&s, msg, &id, tag, ours);
                    }
                    end_hub(sh, &hub, false);
                }
            }
        }
        FollowCall::Header(hash) => {
            let waiters = {
                let mut h = hub.borrow_mut();
                h.running = h.running.saturating_sub(1);
                ops::dispatch(&mut h);
                let kept = result
                    .filter(|r| r.first() == Some(&b'"'))
                    .map(Rc::<[u8]>::from);
                let was = match (&kept, h.pins.contains_key(&hash)) {
                    (Some(k), true) => h.headers.insert(hash, Header::Kept(k.clone())),
                    _ => h.headers.remove(&hash),
                };
                let waiters = match was {
                    Some(Header::Asked(w)) => w,
                    _ => Vec::new(),
                };
                for w in &waiters {
                    if let Some(c) = h.clients.get_mut(&w.sub) {
                        c.headers = c.headers.saturating_sub(1);
                    }
                }
                waiters
            };
            for w in waiters {
                if let Some(s) = w.session.upgrade() {
                    ops::with_their_id(&s, msg, &w.id, w.tag, p.as_ref().and_then(|p| p.id));
                }
            }
        }
        FollowCall::Op(lop) => ops::op_answered(&hub, lop, msg, result),
        FollowCall::Own => {}
    }
}
