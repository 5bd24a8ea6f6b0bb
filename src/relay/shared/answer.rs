//! The way back on a shared connection: a node's answer gets the client's
//! id back and goes to whoever asked (a session, in its batch's place; or
//! every waiter of a cacheable request); a notification goes to the
//! session that owns its subscription; what matches nothing is counted.
//! Subscriptions opened or ended by answers are followed here.

use std::rc::{Rc, Weak};

use crate::jsonrpc::{self, Kind};
use crate::relay::Session;

use super::conn::unsubscribe;
use super::conn::{Asked, Conn, Hedging, SubCall, Waiting};
use super::Shared;
use crate::jsonrpc::offset_in;

/// Our id in an answer, if it is one of ours.
fn our_id(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
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
            if p.id.is_none() {
                // A notification: to the session that owns its subscription.
                let Some(sub) = p
                    .params
                    .and_then(|params| jsonrpc::member(params, b"subscription"))
                else {
                    return;
                };
                if super::follow::event(sh, conn, sub, msg) {
                    return;
                }
                if super::topics::notification(conn, sub, msg) {
                    return;
                }
                let owner = conn.subs.borrow().get(sub).and_then(Weak::upgrade);
                if let Some(s) = owner {
                    s.send_notification(&[msg]);
                }
            } else {
                unmatched(sh, msg);
            }
        }
        // The gateway sends single requests only (a client's batch goes out
        // request by request): an array is read element by element.
        Kind::Batch => {
            for e in jsonrpc::elements(msg) {
                on_answer(sh, conn, e);
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
        SubCall::Plain | SubCall::Topic(_) | SubCall::Fill(..) | SubCall::Follow(..) => {}
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
    if let SubCall::Follow(serial, call) = w.call {
        return super::follow::answered(sh, conn, serial, call, msg);
    }
    match &w.call {
        SubCall::Topic(key) => return super::topics::answered(conn, key, msg),
        SubCall::Fill(key, i, header) => return super::topics::filled(conn, key, *i, *header, msg),
        _ => {}
    }
    if asked_again(sh, conn, msg, &mut w) {
        return;
    }
    let session = w.session.upgrade();
    if w.call != SubCall::Plain {
        if let Some(p) = jsonrpc::peek(msg) {
            match &session {
                Some(s) => settle_subscription(conn, s, &p, &w.call),
                None => orphan(conn, &p, &w.call),
            }
        }
    }
    let at = offset_in(msg, id);
    if let Some(kept) = w.kept.take() {
        // For every request waiting for it (each gets it with its own id).
        sh.land(conn.node, msg, at..at + id.len(), *kept);
    }
    if let Some(s) = session {
        // After the answer is queued: a close owed to the client may follow it.
        s.reply(w.tag, &w.id, &[&msg[..at], &w.id, &msg[at + id.len()..]]);
    }
}

/// Whether the request is asked again instead of being answered by `msg`:
/// a pruned node without the state asks an archive node, once
/// ([`crate::call::retry`]); a node that does not know the finalized hash
/// the cache filled in (it is a few blocks behind the node that reported
/// it) is asked as the client asked, once, on the same connection. The
/// requests waiting for its answer wait for that one's.
fn asked_again(sh: &Rc<Shared>, conn: &Rc<Conn>, msg: &[u8], w: &mut Waiting) -> bool {
    let role = sh.pool.nodes()[conn.node].role;
    if let Some(request) = w.retry.take() {
        if crate::call::retry::on_archive(&sh.router, role, msg) {
            let s = w.session.upgrade();
            if let Some(archive) = sh.archive_for(s.as_deref()) {
                if let Some(req) = jsonrpc::Call::parse(&request).single().cloned() {
                    crate::debug!("pruned node lacks the state; retrying on archive");
                    let (session, kept) = (w.session.clone(), w.kept.take());
                    sh.send_kept(&archive, session, &req, w.tag, None, kept);
                    return true;
                }
            }
        }
    }
    // (Only such answers are searched for an error: a kept answer may be 300 KB.)
    let filled = w
        .kept
        .as_ref()
        .is_some_and(|k| matches!(k.asked, Asked::Filled(_)));
    if filled && jsonrpc::member(msg, b"error").is_some() {
        let kept = w.kept.as_mut().expect("filled");
        if let Asked::Filled(sent) = std::mem::replace(&mut kept.asked, Asked::Again) {
            if let Some(req) = jsonrpc::Call::parse(&sent).single().cloned() {
                crate::debug!("node lacks the finalized block; asking as the client did");
                let (session, kept) = (w.session.clone(), w.kept.take());
                sh.send_kept(conn, session, &req, w.tag, None, kept);
                return true;
            }
        }
    }
    false
}
