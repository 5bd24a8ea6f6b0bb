//! The way back on a shared connection: a node's answer gets the client's
//! id back and goes to the session that asked (a batch's answers as one
//! array; an error for a whole batch to that batch's session); a
//! notification goes to the session that owns its subscription; what
//! matches nothing is counted. Subscriptions opened or ended by answers are
//! followed here.

use std::rc::{Rc, Weak};

use crate::jsonrpc::{self, Kind};
use crate::relay::Session;
use crate::ws::frame::OpCode;

use super::conn::{Asked, Conn, Hedging, SubCall, Waiting};
use super::request::{frame_parts, offset_in, unsubscribe};
use super::Shared;

/// Our id in an answer, if it is one of ours.
fn our_id(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// Queue a text message for a session's client (a client that does not
/// read what it asked for cannot hold the shared connection back: see
/// [`Session::inject`]).
pub(super) fn deliver(s: &Session, parts: &[&[u8]]) {
    use crate::relay::Which;
    if !s.closing.side(Which::Client).takes_data() {
        return;
    }
    let mut f = Vec::new();
    frame_parts(&mut f, OpCode::Text, parts, None);
    s.inject(Which::Client, f);
}

/// Queue a notification for a session's client: charged to its API key,
/// and not delivered past the key's quota (the session closes then).
pub(super) fn deliver_notification(s: &Session, parts: &[&[u8]]) {
    if s.key.is_some() && !s.notification(parts.iter().map(|p| p.len()).sum(), false) {
        return;
    }
    deliver(s, parts);
}

/// One whole message from a node.
pub(super) fn on_answer(sh: &Rc<Shared>, conn: &Rc<Conn>, msg: &[u8]) {
    match jsonrpc::kind(msg) {
        Kind::Object => {
            // Nodes put `id` before `result`: finding it does not walk a
            // large answer (a 300 KB `state_getMetadata`).
            let id = jsonrpc::member(msg, b"id");
            if let Some(gid) = id.and_then(our_id) {
                let Some(w) = conn.pending.borrow_mut().remove(&gid) else {
                    return unmatched(sh, msg);
                };
                answer(sh, conn, msg, id.expect("parsed above"), w);
                return;
            }
            let Some(p) = jsonrpc::peek(msg) else {
                return unmatched(sh, msg);
            };
            if p.id == Some(b"null") && p.error.is_some() {
                return batch_error(sh, conn, msg);
            }
            if p.id.is_none() {
                // A notification: to the session that owns its subscription.
                let Some(sub) = p
                    .params
                    .and_then(|params| jsonrpc::member(params, b"subscription"))
                else {
                    return;
                };
                if super::topics::notification(conn, sub, msg) {
                    return;
                }
                let owner = conn.subs.borrow().get(sub).and_then(Weak::upgrade);
                if let Some(s) = owner {
                    deliver_notification(&s, &[msg]);
                }
            } else {
                unmatched(sh, msg);
            }
        }
        Kind::Batch => {
            // The answers to one batch: one array back to its session.
            let mut to: Option<Rc<Session>> = None;
            let mut done: Vec<Box<[u8]>> = Vec::new();
            let mut body: Vec<u8> = Vec::with_capacity(msg.len() + 16);
            body.push(b'[');
            let mut first = true;
            for e in jsonrpc::elements(msg) {
                let Some(p) = jsonrpc::peek(e) else {
                    continue;
                };
                let w =
                    p.id.and_then(our_id)
                        .and_then(|id| conn.pending.borrow_mut().remove(&id));
                let Some(w) = w else {
                    continue;
                };
                let Some(s) = w.session.upgrade() else {
                    orphan(conn, &p, &w.call);
                    continue;
                };
                settle_subscription(conn, &s, &p, &w.call);
                if !first {
                    body.push(b',');
                }
                first = false;
                let id = p.id.expect("matched by id");
                let at = offset_in(e, id);
                body.extend_from_slice(&e[..at]);
                body.extend_from_slice(&w.id);
                body.extend_from_slice(&e[at + id.len()..]);
                done.push(w.id);
                to.get_or_insert(s);
            }
            body.push(b']');
            {
                let pending = conn.pending.borrow();
                conn.batches
                    .borrow_mut()
                    .retain(|b| b.iter().any(|g| pending.contains_key(g)));
            }
            if let Some(s) = to {
                deliver(&s, &[&body]);
                for id in done {
                    s.answered(&id);
                }
            }
        }
        Kind::Other => {}
    }
}

/// An answer the gateway did not ask for (an id it never issued, or no
/// longer waits for): logged and counted (`ringway_unmatched_answers_total`).
fn unmatched(sh: &Shared, msg: &[u8]) {
    use std::sync::atomic::Ordering::Relaxed;
    let n = sh.counts.unmatched_answers.fetch_add(1, Relaxed);
    if n.is_power_of_two() || n == 0 {
        crate::warn!(
            "a node's answer matches no request in flight ({} so far): {}",
            n + 1,
            String::from_utf8_lossy(&msg[..msg.len().min(200)])
        );
    }
}

/// One error with `"id":null` for a whole batch (jsonrpsee's answer to a
/// batch over its limit). It names no request: it goes, as it is, to the
/// session of the batch waiting here only when there is exactly one. With
/// several, it could be any one's, so no client gets it: each of those
/// batches' requests gets the gateway's own error instead (a late answer
/// to one is then counted as unmatched).
fn batch_error(sh: &Shared, conn: &Conn, msg: &[u8]) {
    let candidates: Vec<Vec<u64>> = {
        let mut batches = conn.batches.borrow_mut();
        let pending = conn.pending.borrow();
        batches.retain(|b| b.iter().any(|g| pending.contains_key(g)));
        batches.drain(..).collect()
    };
    if candidates.is_empty() {
        return unmatched(sh, msg);
    }
    let one = candidates.len() == 1;
    for gids in candidates {
        let waiting: Vec<Waiting> = gids
            .iter()
            .filter_map(|g| conn.pending.borrow_mut().remove(g))
            .collect();
        let Some(s) = waiting.first().and_then(|w| w.session.upgrade()) else {
            continue;
        };
        if one {
            deliver(&s, &[msg]);
        } else {
            let body = crate::jsonrpc::error::errors(
                waiting.iter().map(|w| &*w.id),
                true,
                crate::jsonrpc::error::code::INTERNAL_ERROR,
                "the node refused a batch without saying which; retry",
            );
            if let Some(body) = body {
                deliver(&s, &[body.as_bytes()]);
            }
        }
        for w in &waiting {
            s.answered(&w.id);
        }
    }
}

/// A subscription opened for a session that has ended since: end it.
fn orphan(conn: &Conn, p: &jsonrpc::Peek<'_>, call: &SubCall) {
    opened(conn, call);
    if let (SubCall::Subscribe(unsub), Some(sub)) = (call, p.result) {
        unsubscribe(conn, sub, unsub);
    }
}

/// A subscribe call was answered (with a subscription or an error).
fn opened(conn: &Conn, call: &SubCall) {
    if let SubCall::Subscribe(_) = call {
        conn.opening.set(conn.opening.get().saturating_sub(1));
    }
}

/// Track subscriptions opened or ended by an answer.
fn settle_subscription(conn: &Rc<Conn>, s: &Rc<Session>, p: &jsonrpc::Peek<'_>, call: &SubCall) {
    opened(conn, call);
    let m = super::member(s);
    match call {
        // Topics are settled in `answer` (never in a batch).
        SubCall::Plain | SubCall::Topic(_) | SubCall::Fill(..) => {}
        SubCall::Subscribe(unsub) => {
            if let Some(sub) = p.result {
                // A session that is closing still gets it: it ends its
                // subscriptions when it is over (see `super::leave`).
                if s.closing.side(crate::relay::Which::Client).takes_data() {
                    conn.subs
                        .borrow_mut()
                        .insert(Box::from(sub), Rc::downgrade(s));
                }
                m.subs
                    .borrow_mut()
                    .push((conn.clone(), Box::from(sub), unsub.clone()));
            }
        }
        SubCall::Unsubscribe(sub) => {
            conn.subs.borrow_mut().remove(sub);
            m.subs.borrow_mut().retain(|(_, s, _)| s != sub);
        }
    }
}

/// A single answer to a request of ours.
fn answer(sh: &Rc<Shared>, conn: &Rc<Conn>, msg: &[u8], id: &[u8], mut w: Waiting) {
    // A hedged read: the first answer wins (see `super::hedge`).
    match std::mem::take(&mut w.hedging) {
        Hedging::Twin { of, gid } => {
            if let Some(request) = super::hedge::copy_answered(sh, conn, &of, gid) {
                answer(sh, conn, msg, id, request);
            }
            return;
        }
        Hedging::Abandoned => return,
        // Its own answer first (a copy that comes later is dropped).
        Hedging::Due(_, sent) | Hedging::Copied(sent) => {
            sh.pool.health().record_answer(conn.node, sent.elapsed())
        }
        Hedging::None => {}
    }
    match &w.call {
        SubCall::Topic(key) => return super::topics::answered(conn, key, msg),
        SubCall::Fill(key, i, header) => return super::fill::filled(conn, key, *i, *header, msg),
        _ => {}
    }
    let settle = |s: Option<&Rc<Session>>| {
        if w.call == SubCall::Plain {
            return;
        }
        let Some(p) = jsonrpc::peek(msg) else {
            return;
        };
        match s {
            Some(s) => settle_subscription(conn, s, &p, &w.call),
            None => orphan(conn, &p, &w.call),
        }
    };
    let at = offset_in(msg, id);
    let Some(s) = w.session.upgrade() else {
        settle(None);
        if let Some(kept) = w.kept.take() {
            sh.land(conn.node, msg, at..at + id.len(), *kept);
        }
        return;
    };
    // A pruned node without the state: ask an archive node, once (the
    // requests waiting for this one's answer wait for that one's).
    if let Some(request) = &w.retry {
        if sh.router.is_pruned_error(msg) {
            if let Some(archive) = sh.archive_for(&s) {
                if let Some(req) = jsonrpc::Call::parse(request).single().cloned() {
                    crate::debug!("pruned node lacks the state; retrying on archive");
                    sh.send_kept(&archive, &s, &req, w.batch, None, w.kept.take());
                    return;
                }
            }
        }
    }
    // The finalized hash the cache filled in is one this node does not know
    // yet (it is a few blocks behind the node that reported it): ask again
    // as the client asked, once, on the same connection. (Only such answers
    // are searched for an error: a kept answer may be 300 KB.)
    let filled = w
        .kept
        .as_ref()
        .is_some_and(|k| matches!(k.asked, Asked::Filled(_)));
    if filled && jsonrpc::member(msg, b"error").is_some() {
        let kept = w.kept.as_mut().expect("filled");
        if let Asked::Filled(sent) = std::mem::replace(&mut kept.asked, Asked::Again) {
            if let Some(req) = jsonrpc::Call::parse(&sent).single().cloned() {
                crate::debug!("node lacks the finalized block; asking as the client did");
                sh.send_kept(conn, &s, &req, w.batch, None, w.kept.take());
                return;
            }
        }
    }
    settle(Some(&s));
    if let Some(kept) = w.kept.take() {
        sh.land(conn.node, msg, at..at + id.len(), *kept);
    }
    deliver(&s, &[&msg[..at], &w.id, &msg[at + id.len()..]]);
    // After the answer is queued: a close owed to the client may follow it.
    s.answered(&w.id);
}
