//! A client follow's calls on its blocks (see [`super::follow`]):
//! `chainHead_v1_header`, the operations (`_body`, `_call`, `_storage`)
//! and their events, `_unpin`; and the answers to them, each with the
//! client's own ids.
//!
//! - A header is kept by hash while its block is pinned, asked once.
//! - An operation asked while the same one runs joins it (its events so
//!   far replayed); a finished one's events are kept with its block, a
//!   `Metadata_*` call's by the block's runtime.
//! - At most [`hub::NODE_OPERATIONS`] slots are used on the node follow
//!   (a header read one, a storage operation one per item sent); the rest
//!   wait in order, their clients' answers with them, each client's
//!   operations holding at most [`hub::CLIENT_SLOTS`]. A client has at
//!   most [`hub::CLIENT_OPERATIONS`] operations and headers at once
//!   (`limitReached`, or a `null` header, past them).

use std::cell::RefCell;
use std::rc::Rc;

use crate::jsonrpc::error::{code, error};
use crate::jsonrpc::{self, offset_in, Request};
use crate::relay::Session;
use crate::stats::Outcome;

use super::conn::{send_own, Conn, FollowCall, State, SubCall};
use super::hub::{self, Done, Header, HeaderWaiter, Hub, OpWaiter, Open, Raw};

pub(super) const EVENT: &[u8] = b"chainHead_v1_followEvent";
pub(super) const LIMIT_REACHED: &[u8] = br#"{"result":"limitReached"}"#;

/// The spec's errors (`sc-rpc-spec-v2`'s codes).
pub(super) mod errors {
    /// A block hash the follow does not hold pinned.
    pub const INVALID_BLOCK: i32 = -32801;
    /// A `chainHead_v1_unpin` naming a hash twice.
    pub const DUPLICATE_HASHES: i32 = -32804;
    /// `chainHead_v1_continue` for an operation that does not wait.
    pub const INVALID_CONTINUE: i32 = -32803;
    /// `chainHead_v1_call` on a follow without the runtime.
    pub const NO_RUNTIME: i32 = -32802;
}

pub(super) type HubRef = Rc<RefCell<Hub>>;

pub(super) fn param<'a>(req: &Request<'a>, i: usize) -> Option<&'a [u8]> {
    req.params.and_then(|p| jsonrpc::param(p, i))
}

/// Answer `req` with `result` (raw JSON).
pub(super) fn answer(s: &Session, req: &Request<'_>, tag: u64, result: &[u8]) {
    answer_parts(s, req.reply_id(), tag, &[result]);
}

pub(super) fn answer_parts(s: &Session, id: &[u8], tag: u64, result: &[&[u8]]) {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(result.len() + 4);
    parts.push(br#"{"jsonrpc":"2.0","id":"#);
    parts.push(id);
    parts.push(br#","result":"#);
    parts.extend_from_slice(result);
    parts.push(b"}");
    s.reply(tag, id, &parts);
}

pub(super) fn reply_raw(s: &Session, req: &Request<'_>, tag: u64, msg: &[u8]) {
    s.reply(tag, req.reply_id(), &[msg]);
}

pub(super) fn fail(s: &Session, req: &Request<'_>, tag: u64, code: i32, message: &str) {
    reply_raw(
        s,
        req,
        tag,
        error(req.reply_id(), code, message, None).as_bytes(),
    );
}

/// The hashes of a JSON array (or one hash).
pub(super) fn hashes(raw: Option<&[u8]>) -> Vec<Raw> {
    match raw {
        Some(r) if r.first() == Some(&b'[') => jsonrpc::elements(r).map(Rc::from).collect(),
        Some(r) => vec![Rc::from(r)],
        None => Vec::new(),
    }
}

/// Send `method([node_sub, args...])` on a hub's connection, for `call`.
pub(super) fn ask(
    conn: &Conn,
    serial: u64,
    method: &[u8],
    sub: &[u8],
    args: &[&[u8]],
    call: FollowCall,
) {
    let len = sub.len() + args.iter().map(|a| a.len() + 1).sum::<usize>() + 2;
    let mut params = Vec::with_capacity(len);
    params.push(b'[');
    params.extend_from_slice(sub);
    for a in args {
        params.push(b',');
        params.extend_from_slice(a);
    }
    params.push(b']');
    send_own(conn, method, &params, SubCall::Follow(serial, call));
}

/// Unpin `hashes` at the node (one call).
pub(super) fn unpin_at_node(h: &Hub, hashes: &[Raw]) {
    let Open::Live(sub) = &h.open else {
        return;
    };
    if hashes.is_empty() || h.conn.state() == State::Dead {
        return;
    }
    let mut list = Vec::with_capacity(hashes.len() * 70 + 2);
    list.push(b'[');
    for (i, hash) in hashes.iter().enumerate() {
        if i > 0 {
            list.push(b',');
        }
        list.extend_from_slice(hash);
    }
    list.push(b']');
    let (unpin, own) = (b"chainHead_v1_unpin", FollowCall::Own);
    ask(&h.conn, h.serial, unpin, sub, &[&list], own);
}

/// The node's answer `msg`, given to `s` with its own id.
pub(super) fn with_their_id(s: &Session, msg: &[u8], id: &[u8], tag: u64, ours: Option<&[u8]>) {
    match ours {
        Some(ours) => {
            let at = offset_in(msg, ours);
            s.reply(tag, id, &[&msg[..at], id, &msg[at + ours.len()..]]);
        }
        None => s.reply(tag, id, &[msg]),
    }
}

/// `chainHead_v1_header`: kept by hash, asked once.
pub(super) fn header(
    hub: &HubRef,
    s: &Rc<Session>,
    req: &Request<'_>,
    tag: u64,
    sub: &Raw,
) -> Outcome {
    let Some(hash) = param(req, 1).map(Rc::<[u8]>::from) else {
        fail(s, req, tag, code::INVALID_PARAMS, "Invalid params");
        return Outcome::Refused;
    };
    let mut h = hub.borrow_mut();
    if !h.clients[sub].pins.contains_key(&hash) {
        drop(h);
        fail(s, req, tag, errors::INVALID_BLOCK, "Invalid block hash");
        return Outcome::Refused;
    }
    if let Some(Header::Kept(header)) = h.headers.get(&hash) {
        let header = header.clone();
        drop(h);
        answer(s, req, tag, &header);
        return Outcome::Cached;
    }
    if !h.op_room(sub) || h.header_queue.len() >= hub::QUEUE_MAX {
        // As a node answers a header past its operations.
        drop(h);
        answer(s, req, tag, b"null");
        return Outcome::Refused;
    }
    h.clients.get_mut(sub).expect("checked").headers += 1;
    let waiter = HeaderWaiter {
        session: Rc::downgrade(s),
        id: Box::from(req.reply_id()),
        tag,
        sub: sub.clone(),
    };
    match h.headers.get_mut(&hash) {
        Some(Header::Asked(waiters)) => {
            waiters.push(waiter);
            Outcome::Joined
        }
        _ => {
            h.headers.insert(hash.clone(), Header::Asked(vec![waiter]));
            h.header_queue.push_back(hash);
            dispatch(&mut h);
            Outcome::Forwarded
        }
    }
}

/// `chainHead_v1_unpin`: the client's pins go; the node's where nobody else holds them.
pub(super) fn unpin(
    hub: &HubRef,
    s: &Rc<Session>,
    req: &Request<'_>,
    tag: u64,
    sub: &Raw,
) -> Outcome {
    let named = hashes(param(req, 1));
    let mut h = hub.borrow_mut();
    let twice = named
        .iter()
        .enumerate()
        .any(|(i, x)| named[..i].contains(x));
    match h.unpin(sub, &named) {
        Ok(unpins) => {
            unpin_at_node(&h, &unpins);
            drop(h);
            answer(s, req, tag, b"null");
            Outcome::Cached
        }
        Err(_) => {
            drop(h);
            match twice {
                true => fail(
                    s,
                    req,
                    tag,
                    errors::DUPLICATE_HASHES,
                    "Received duplicate hashes",
                ),
                false => fail(s, req, tag, errors::INVALID_BLOCK, "Invalid block hash"),
            }
            Outcome::Refused
        }
    }
}

/// The key an operation's answer is kept under: the method and its
/// params after the follow (so: the block); a `Metadata_*` call's by
/// the block's runtime instead. And the block it belongs to (none:
/// runtime-keyed).
pub(super) fn op_key(h: &Hub, method: &str, rest: &[u8], hash: &Raw) -> (Box<[u8]>, Option<Raw>) {
    let whole = rest_params(rest);
    let function = jsonrpc::param(&whole, 2).and_then(jsonrpc::unquote);
    let metadata =
        method == "chainHead_v1_call" && function.is_some_and(|f| f.starts_with(b"Metadata_"));
    if let (true, Some(rt)) = (metadata, h.block_runtime(hash)) {
        let after_hash = &rest[1 + hash.len()..];
        let mut key = b"rt\0".to_vec();
        key.extend_from_slice(&rt);
        key.push(0);
        key.extend_from_slice(after_hash);
        return (key.into_boxed_slice(), None);
    }
    let mut key = method.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(rest);
    (key.into_boxed_slice(), Some(hash.clone()))
}

/// `,"0x..",..]` (what follows the follow id) as an array of its own.
pub(super) fn rest_params(rest: &[u8]) -> Vec<u8> {
    let mut a = b"[null".to_vec();
    a.extend_from_slice(rest);
    a
}

/// `chainHead_v1_body`, `_call`, `_storage`: answered from what is kept,
/// joined to the same one running, or started (now or when a slot frees).
pub(super) fn operation(
    hub: &HubRef,
    s: &Rc<Session>,
    req: &Request<'_>,
    tag: u64,
    sub: &Raw,
    method: &'static str,
) -> Outcome {
    let params = crate::cache::rules::compact(req.params.unwrap_or(b"[]"));
    let (Some(first), Some(hash)) = (jsonrpc::param(&params, 0), jsonrpc::param(&params, 1)) else {
        fail(s, req, tag, code::INVALID_PARAMS, "Invalid params");
        return Outcome::Refused;
    };
    let rest: Box<[u8]> = Box::from(&params[offset_in(&params, first) + first.len()..]);
    let hash: Raw = Rc::from(hash);
    let mut h = hub.borrow_mut();
    if !h.clients[sub].pins.contains_key(&hash) {
        drop(h);
        fail(s, req, tag, errors::INVALID_BLOCK, "Invalid block hash");
        return Outcome::Refused;
    }
    if !h.op_room(sub) {
        drop(h);
        answer(s, req, tag, LIMIT_REACHED);
        return Outcome::Refused;
    }
    if method == "chainHead_v1_call" && !h.clients[sub].with_runtime {
        drop(h);
        fail(
            s,
            req,
            tag,
            errors::NO_RUNTIME,
            "The `chainHead_follow` subscription was started with `withRuntime` set to `false`",
        );
        return Outcome::Refused;
    }
    let (key, block) = op_key(&h, method, &rest, &hash);
    let op_id = h.clients.get_mut(sub).expect("checked").op_id();
    if let Some(done) = h.done.get(&key).cloned() {
        drop(h);
        started_to(s, req.reply_id(), tag, &done.started, &op_id);
        for e in &done.events {
            op_event_to(s, sub, e, &op_id);
        }
        return Outcome::Cached;
    }
    let waiter = OpWaiter {
        session: Rc::downgrade(s),
        id: Box::from(req.reply_id()),
        tag,
        sub: sub.clone(),
        op: op_id.clone(),
    };
    if let Some(lop) = h.by_key.get(&key).copied() {
        h.clients
            .get_mut(sub)
            .expect("checked")
            .ops
            .insert(op_id.clone(), lop);
        let op = h.ops.get_mut(&lop).expect("indexed");
        let Some(started) = op.started.clone() else {
            op.waiting.push(waiter);
            return Outcome::Joined;
        };
        op.clients.push((sub.clone(), op_id.clone()));
        let events = op.events.clone();
        drop(h);
        started_to(s, req.reply_id(), tag, &started, &op_id);
        for e in &events {
            op_event_to(s, sub, e, &op_id);
        }
        return Outcome::Joined;
    }
    if h.queue.len() >= hub::QUEUE_MAX {
        drop(h);
        answer(s, req, tag, LIMIT_REACHED);
        return Outcome::Refused;
    }
    let lop = h.add_op(Some(key), block, sub.clone());
    h.clients
        .get_mut(sub)
        .expect("checked")
        .ops
        .insert(op_id, lop);
    let op = h.ops.get_mut(&lop).expect("added");
    op.waiting.push(waiter);
    if method == "chainHead_v1_storage" {
        op.items =
            jsonrpc::param(&rest_params(&rest), 2).map_or(1, |i| jsonrpc::elements(i).count());
    }
    op.queued = Some((method, rest));
    h.queue.push_back(lop);
    dispatch(&mut h);
    Outcome::Forwarded
}

/// Send waiting operations while the node follow has slots.
pub(super) fn dispatch(h: &mut Hub) {
    let Open::Live(node_sub) = &h.open else {
        return;
    };
    let node_sub = node_sub.clone();
    while h.running < hub::NODE_OPERATIONS {
        let Some(hash) = h.header_queue.pop_front() else {
            break;
        };
        h.running += 1;
        let call = FollowCall::Header(hash.clone());
        ask(
            &h.conn,
            h.serial,
            b"chainHead_v1_header",
            &node_sub,
            &[&hash],
            call,
        );
    }
    // The first waiting operation whose client holds fewer than its
    // share, with as many of its items as fit.
    let mut i = 0;
    while h.running < hub::NODE_OPERATIONS && i < h.queue.len() {
        let lop = h.queue[i];
        let Some(op) = h.ops.get(&lop) else {
            h.queue.remove(i);
            continue;
        };
        let held = h.clients.get(&op.owner).map_or(0, |c| c.running);
        let room = hub::CLIENT_SLOTS
            .saturating_sub(held)
            .min(hub::NODE_OPERATIONS - h.running);
        if room == 0 {
            i += 1;
            continue;
        }
        h.queue.remove(i);
        let op = h.ops.get_mut(&lop).expect("present");
        let Some((method, rest)) = op.queued.take() else {
            continue;
        };
        let slots = op.items.clamp(1, room);
        op.slots = slots;
        op.withheld = op.items.saturating_sub(slots);
        let rest = match op.withheld {
            0 => rest,
            _ => first_items(&rest, slots),
        };
        let owner = op.owner.clone();
        h.running += slots;
        if let Some(c) = h.clients.get_mut(&owner) {
            c.running += slots;
        }
        let mut params = b"[".to_vec();
        params.extend_from_slice(&node_sub);
        params.extend_from_slice(&rest);
        let call = SubCall::Follow(h.serial, FollowCall::Op(lop));
        send_own(&h.conn, method.as_bytes(), &params, call);
    }
}

/// A storage query's params after the follow (`,"0x..",[items],..]`)
/// with its first `n` items only.
fn first_items(rest: &[u8], n: usize) -> Box<[u8]> {
    let whole = rest_params(rest);
    let Some(items) = jsonrpc::param(&whole, 2) else {
        return Box::from(rest);
    };
    // `whole` is `[null` and then `rest`.
    let at = offset_in(&whole, items) - 5;
    let mut out = rest[..at].to_vec();
    out.push(b'[');
    for (i, item) in jsonrpc::elements(items).take(n).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    out.extend_from_slice(&rest[at + items.len()..]);
    out.into_boxed_slice()
}

/// A `started` answer saying `n` items were discarded.
fn with_discarded(started: &[u8], n: u64) -> Box<[u8]> {
    let text = n.to_string();
    match jsonrpc::member(started, b"discardedItems") {
        Some(was) => {
            let at = offset_in(started, was);
            [&started[..at], text.as_bytes(), &started[at + was.len()..]].concat()
        }
        None => {
            let end = started.len() - 1;
            let field = format!(r#","discardedItems":{text}}}"#);
            [&started[..end], field.as_bytes()].concat()
        }
    }
    .into_boxed_slice()
}

fn discarded(started: &[u8]) -> u64 {
    jsonrpc::member(started, b"discardedItems")
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The client's `started` answer: the node's, with the client's operation id.
pub(super) fn started_to(s: &Session, id: &[u8], tag: u64, started: &[u8], op_id: &[u8]) {
    match jsonrpc::member(started, b"operationId") {
        Some(theirs) => {
            let at = offset_in(started, theirs);
            let parts = [&started[..at], op_id, &started[at + theirs.len()..]];
            answer_parts(s, id, tag, &parts);
        }
        None => answer_parts(s, id, tag, &[started]),
    }
}

/// An operation event for a client, with its operation id.
pub(super) fn op_event_to(s: &Session, sub: &[u8], result: &[u8], op_id: &[u8]) {
    let Some(theirs) = jsonrpc::member(result, b"operationId") else {
        return;
    };
    let at = offset_in(result, theirs);
    let parts: [&[u8]; 9] = [
        br#"{"jsonrpc":"2.0","method":""#,
        EVENT,
        br#"","params":{"subscription":"#,
        sub,
        br#","result":"#,
        &result[..at],
        op_id,
        &result[at + theirs.len()..],
        b"}}",
    ];
    s.send_notification(&parts);
}

/// The node answered an operation's call: `started` (its waiters become
/// its clients), `limitReached` or an error (its waiters get it).
pub(super) fn op_answered(hub: &HubRef, lop: u64, msg: &[u8], result: Option<&[u8]>) {
    let started = result
        .filter(|r| jsonrpc::member(r, b"result").and_then(jsonrpc::unquote) == Some(b"started"));
    let mut h = hub.borrow_mut();
    let Some(op) = h.ops.get_mut(&lop) else {
        return;
    };
    if op.abandoned {
        // Nobody wants it any more: stopped at the node, its slots free.
        let node_id = started.and_then(|r| jsonrpc::member(r, b"operationId"));
        if let (Some(node_id), Open::Live(sub)) = (node_id, &h.open) {
            let (method, own) = (b"chainHead_v1_stopOperation", FollowCall::Own);
            ask(&h.conn, h.serial, method, sub, &[node_id], own);
        }
        h.finish(lop);
        if let Some(node_id) = node_id {
            h.forget_early(node_id);
        }
        dispatch(&mut h);
        return;
    }
    let Some(started) = started else {
        let op = h.finish(lop).expect("present");
        dispatch(&mut h);
        drop(h);
        let ours = jsonrpc::peek(msg).and_then(|p| p.id);
        for w in op.waiting {
            if let Some(s) = w.session.upgrade() {
                with_their_id(&s, msg, &w.id, w.tag, ours);
            }
        }
        return;
    };
    let node_id: Box<[u8]> = jsonrpc::member(started, b"operationId")
        .map(Box::from)
        .unwrap_or_default();
    // Items the node discarded hold no slot; with those not sent, the
    // client is told of them all (and asks them again).
    let by_node = discarded(started) as usize;
    let gone = by_node.min(op.slots.saturating_sub(1));
    op.slots -= gone;
    let told = op.withheld + by_node;
    let started: Box<[u8]> = match told {
        0 => Box::from(started),
        n => with_discarded(started, n as u64),
    };
    op.partial = told > 0;
    let owner = op.owner.clone();
    op.started = Some(started.clone());
    op.node_id = Some(node_id.clone());
    let waiting = std::mem::take(&mut op.waiting);
    op.clients
        .extend(waiting.iter().map(|w| (w.sub.clone(), w.op.clone())));
    h.by_node_id.insert(node_id.clone(), lop);
    h.free_slots(&owner, gone);
    let early = h.forget_early(&node_id);
    if gone > 0 {
        dispatch(&mut h);
    }
    drop(h);
    for w in &waiting {
        if let Some(s) = w.session.upgrade() {
            started_to(&s, &w.id, w.tag, &started, &w.op);
        }
    }
    // Events the node sent before its answer to the call.
    for e in early {
        let kind = jsonrpc::member(&e, b"event")
            .and_then(jsonrpc::unquote)
            .unwrap_or_default()
            .to_vec();
        op_event(hub, &kind, &e);
    }
}

/// An operation's event from the node: to its clients (kept while the
/// operation may be asked again); the last one ends it.
pub(super) fn op_event(hub: &HubRef, kind: &[u8], result: &[u8]) {
    let Some(node_id) = jsonrpc::member(result, b"operationId") else {
        return;
    };
    let mut h = hub.borrow_mut();
    let Some(&lop) = h.by_node_id.get(node_id) else {
        // Before the node's answer to the call (or for one stopped).
        h.hold_early(node_id, result);
        return;
    };
    if kind == b"operationWaitingForContinue" {
        if let Open::Live(sub) = &h.open {
            let (method, own) = (b"chainHead_v1_continue", FollowCall::Own);
            ask(&h.conn, h.serial, method, sub, &[node_id], own);
        }
        return;
    }
    let op = h.ops.get_mut(&lop).expect("indexed");
    if op.key.is_some() {
        op.bytes += result.len();
        op.events.push(Box::from(result));
        if op.bytes > hub::KEEP_OP_BYTES {
            // Too large to keep: it goes on for its clients only.
            op.events = Vec::new();
            let key = op.key.take().expect("checked");
            h.by_key.remove(&key);
        }
    }
    let op = &h.ops[&lop];
    let clients: Vec<(Raw, Raw, Rc<Session>)> = op
        .clients
        .iter()
        .filter_map(|(sub, cop)| {
            let s = h.clients.get(sub)?.session.upgrade()?;
            Some((sub.clone(), cop.clone(), s))
        })
        .collect();
    let last = matches!(
        kind,
        b"operationBodyDone"
            | b"operationCallDone"
            | b"operationStorageDone"
            | b"operationInaccessible"
            | b"operationError"
    );
    if last {
        let op = h.finish(lop).expect("present");
        let ok = !matches!(kind, b"operationInaccessible" | b"operationError") && !op.partial;
        if let (true, Some(key), Some(started)) = (ok, op.key, op.started) {
            let done = Done {
                started,
                events: op.events,
                bytes: op.bytes,
                block: op.block,
            };
            h.keep(key, done);
        }
        dispatch(&mut h);
    }
    drop(h);
    for (sub, cop, s) in clients {
        op_event_to(&s, &sub, result, &cop);
    }
}

/// A client stops its operation `op`: it leaves it; the node's stops when
/// nobody else is on it. (Its request, if the node has not answered it
/// yet, is answered `limitReached`.)
pub(super) fn stop_operation(hub: &HubRef, sub: &Raw, op: &[u8]) {
    let mut h = hub.borrow_mut();
    let Some(lop) = h.clients.get_mut(sub).and_then(|c| c.ops.remove(op)) else {
        return;
    };
    let Some(o) = h.ops.get_mut(&lop) else {
        return;
    };
    o.clients.retain(|(s, c)| !(s == sub && &**c == op));
    let (gone, stay): (Vec<OpWaiter>, Vec<OpWaiter>) = std::mem::take(&mut o.waiting)
        .into_iter()
        .partition(|w| &w.sub == sub && &*w.op == op);
    o.waiting = stay;
    if o.clients.is_empty() && o.waiting.is_empty() {
        stop_node_op(&mut h, lop);
    }
    drop(h);
    unanswered(gone);
}

/// Requests whose follow or operation ended before the node answered.
pub(super) fn unanswered(waiters: Vec<OpWaiter>) {
    for w in waiters {
        if let Some(s) = w.session.upgrade() {
            answer_parts(&s, &w.id, w.tag, &[LIMIT_REACHED]);
        }
    }
}

/// Stop an operation nobody wants any more (on the node if it started;
/// one the node has not answered yet is stopped when it does).
pub(super) fn stop_node_op(h: &mut Hub, lop: u64) {
    let Some(op) = h.ops.get_mut(&lop) else {
        return;
    };
    if op.queued.is_none() && op.node_id.is_none() {
        op.abandoned = true;
        if let Some(key) = op.key.take() {
            if h.by_key.get(&key) == Some(&lop) {
                h.by_key.remove(&key);
            }
        }
        return;
    }
    let Some(op) = h.finish(lop) else {
        return;
    };
    if let (Some(node_id), Open::Live(sub)) = (op.node_id, &h.open) {
        let (method, own) = (b"chainHead_v1_stopOperation", FollowCall::Own);
        ask(&h.conn, h.serial, method, sub, &[&node_id], own);
    }
    dispatch(h);
}

/// This core's follow gauges: node follows, client follows, blocks pinned at nodes.
pub(super) fn recount(sh: &super::core::Shared) {
    let (mut hubs, mut clients, mut pins) = (0, 0, 0);
    for h in sh.hubs.borrow().iter().flatten() {
        let h = h.borrow();
        hubs += 1;
        clients += h.clients.len() as u64;
        pins += h.pins.len() as u64;
    }
    let now = [hubs, clients, pins];
    let was = sh.follow_census.replace(now);
    crate::stats::count(|c| {
        for (i, g) in c.follows.iter().enumerate() {
            g.add(now[i]);
            g.sub(was[i]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_query_cut_to_its_first_items_keeps_the_rest_of_its_params() {
        let rest = br#","0xab",[{"key":"0x01","type":"value"},{"key":"0x02","type":"hash"},{"key":"0x03","type":"value"}],null]"#;
        assert_eq!(
            &*first_items(rest, 2),
            br#","0xab",[{"key":"0x01","type":"value"},{"key":"0x02","type":"hash"}],null]"#
        );
    }

    #[test]
    fn discarded_items_are_told_whether_or_not_the_node_named_any() {
        let node = br#"{"result":"started","operationId":"7","discardedItems":1}"#;
        assert_eq!(discarded(node), 1);
        assert_eq!(
            &*with_discarded(node, 9),
            br#"{"result":"started","operationId":"7","discardedItems":9}"#
        );
        assert_eq!(
            &*with_discarded(br#"{"result":"started","operationId":"7"}"#, 3),
            br#"{"result":"started","operationId":"7","discardedItems":3}"#
        );
    }
}
