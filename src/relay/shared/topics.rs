//! Merged subscriptions: streams that carry the same notifications to
//! everyone (new heads, finalized heads, runtime version, storage of the same
//! keys; Ethereum `newHeads`, `logs` with the same filter) are subscribed
//! once per node connection, whatever the number of sessions that ask.
//!
//! - Each session gets a subscription id of its own; notifications go to
//!   every session on the topic, in the order they came, with its id.
//! - A session that joins a latest-value stream (heads, runtime version,
//!   storage) first gets the current value (the last notification; for
//!   storage, every key's last value), as Subway replays it.
//! - The node subscription ends when its last session unsubscribes or
//!   leaves.
//! - When its connection is lost, a topic moves with its sessions to
//!   another node (`failover`): sessions keep their ids; on head streams
//!   nothing is repeated (numbers already delivered are skipped) and nothing
//!   is skipped (a gap is filled with the headers fetched from the new node:
//!   `fill`).
//! - Not merged, per the new JSON-RPC interface spec's rules:
//!   `author_submitAndWatchExtrinsic`, `transactionWatch_v1_*`,
//!   `chainHead_v1_follow` (they belong to one client, on the node that
//!   started them).

use std::cell::Cell;
use std::rc::{Rc, Weak};

use crate::jsonrpc::{self, Request};
use crate::relay::Session;

use super::conn::{send_as, send_own, unsubscribe};
use super::conn::{Conn, SubCall};
use super::topic::{head_identity, head_number, numbered, Fill, FILL_MAX, RECENT_HEADS};
pub use super::topic::{mergeable, split_key, Joiner, Member, Topic, STORAGE_KEYS};
use super::{member, Ctx};
use crate::jsonrpc::offset_in;

/// A subscription id for a session: unique on this core.
pub(super) fn new_sub_id(next: &Cell<u64>) -> Rc<[u8]> {
    let n = next.get().wrapping_add(1);
    next.set(n);
    // Spread over the id space, as a node's random ids are.
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    Rc::from(format!("\"{mixed:016x}\"").into_bytes())
}

/// Answer `s`'s request `id` with `result` (raw JSON).
pub(super) fn reply(s: &Session, id: &[u8], result: &[u8]) {
    let parts: [&[u8]; 5] = [
        br#"{"jsonrpc":"2.0","result":"#,
        result,
        br#","id":"#,
        id,
        b"}",
    ];
    s.send_parts(&parts);
    s.answered(id);
}

/// A notification for `s` with its subscription id.
pub(super) fn notify(s: &Session, method: &[u8], sub: &[u8], result: &[u8]) {
    let parts: [&[u8]; 7] = [
        br#"{"jsonrpc":"2.0","method":""#,
        method,
        br#"","params":{"subscription":"#,
        sub,
        br#","result":"#,
        result,
        b"}}",
    ];
    s.send_notification(&parts);
}

/// A mergeable subscribe call from `s`, on connection `to`.
pub fn subscribe(ctx: &Ctx<'_>, to: &Rc<Conn>, s: &Rc<Session>, req: &Request<'_>) {
    let sh = &ctx.shared;
    let id = req.id.expect("a subscribe call with an id");
    let method = req.method().unwrap_or_default();
    let params = crate::cache::rules::compact(req.params.unwrap_or(b"[]"));
    let (canonical, unsub, latest_value) =
        mergeable(method, &params).expect("checked by the caller");
    let mut key = canonical.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&params);
    let sub_id = new_sub_id(&sh.next_sub);
    member(s).merged.borrow_mut().push((
        to.clone(),
        sub_id.clone(),
        key.clone().into_boxed_slice(),
    ));
    s.inflight.borrow_mut().add(id, 0);
    let mut topics = to.topics.borrow_mut();
    if let Some(t) = topics.get_mut(&key[..]) {
        crate::stats::request(s.cfg.chain, req, crate::stats::Outcome::Joined);
        if t.node_sub.is_none() {
            t.joining.push((Rc::downgrade(s), Box::from(id), sub_id));
            drop(topics);
            return recount(to);
        }
        let floor = t.last_number();
        t.members.push(Member {
            session: Rc::downgrade(s),
            id: sub_id.clone(),
            floor,
        });
        let replay = t.replay();
        drop(topics);
        recount(to);
        reply(s, id, &sub_id);
        if let Some((method, result)) = replay {
            notify(s, &method, &sub_id, &result);
        }
        return;
    }
    crate::stats::request(s.cfg.chain, req, crate::stats::Outcome::Forwarded);
    let key: Box<[u8]> = key.into_boxed_slice();
    let mut t = Topic::new(key.clone(), unsub, latest_value);
    t.joining.push((Rc::downgrade(s), Box::from(id), sub_id));
    topics.insert(key.clone(), t);
    drop(topics);
    recount(to);
    to.opening.set(to.opening.get() + 1);
    // The answer goes to the topic (every joiner), not to this session alone.
    send_as(to, s, req, SubCall::Topic(key));
}

/// The node answered a topic's subscribe call: its joiners get their ids
/// (or the error); nobody left: it ends at once.
pub fn answered(conn: &Conn, key: &[u8], msg: &[u8]) {
    conn.opening.set(conn.opening.get().saturating_sub(1));
    let p = jsonrpc::peek(msg);
    let result = p.as_ref().and_then(|p| p.result).filter(|r| *r != b"null");
    let mut topics = conn.topics.borrow_mut();
    let Some(t) = topics.get_mut(key) else {
        // Ended while it was being opened.
        if let Some(sub) = result {
            let (method, params) = split_key(key);
            let unsub =
                mergeable(method, params).map_or("chain_unsubscribeNewHeads", |(_, u, _)| u);
            unsubscribe(conn, sub, unsub);
        }
        return;
    };
    let joining = std::mem::take(&mut t.joining);
    let Some(sub) = result else {
        // An error: each joiner gets it with its own id; sessions that
        // were moved here lose the stream (they are told by an error
        // notification-less end: their subscription simply stops).
        let t = topics.remove(key).expect("present");
        drop(topics);
        for m in &t.members {
            if let Some(s) = m.session.upgrade() {
                forget(&s, &m.id);
            }
        }
        for (s, id, sub_id) in joining {
            let Some(s) = s.upgrade() else {
                continue;
            };
            forget(&s, &sub_id);
            match p.as_ref().and_then(|p| p.id) {
                Some(their) => {
                    let at = offset_in(msg, their);
                    let parts = [&msg[..at], &id[..], &msg[at + their.len()..]];
                    s.send_parts(&parts);
                }
                None => s.send_parts(&[msg]),
            }
            s.answered(&id);
        }
        return recount(conn);
    };
    t.node_sub = Some(Box::from(sub));
    conn.topic_of
        .borrow_mut()
        .insert(Box::from(sub), t.key.clone());
    let floor = t.last_number();
    let mut replies = Vec::new();
    for (s, id, sub_id) in joining {
        if s.upgrade().is_some() {
            t.members.push(Member {
                session: s.clone(),
                id: sub_id.clone(),
                floor,
            });
            replies.push((s, id, sub_id));
        }
    }
    let empty = t.members.is_empty();
    drop(topics);
    recount(conn);
    for (s, id, sub_id) in replies {
        if let Some(s) = s.upgrade() {
            reply(&s, &id, &sub_id);
        }
    }
    if empty {
        end(conn, key);
    }
}

/// A notification on a connection: to every session on its topic, if it
/// belongs to one. Returns false when it does not.
pub fn notification(conn: &Rc<Conn>, sub: &[u8], msg: &[u8]) -> bool {
    let Some(key) = conn.topic_of.borrow().get(sub).cloned() else {
        return false;
    };
    let p = jsonrpc::peek(msg);
    // The id as it stands in this message (`sub` may be a copy of it).
    let Some(sub) = p
        .as_ref()
        .and_then(|p| p.params)
        .and_then(|ps| jsonrpc::member(ps, b"subscription"))
    else {
        return true;
    };
    let method = p.as_ref().and_then(|p| p.method).unwrap_or_default();
    let result = p
        .as_ref()
        .and_then(|p| p.params)
        .and_then(|ps| jsonrpc::member(ps, b"result"))
        .unwrap_or_default();
    let number = if numbered(&key) {
        head_number(result)
    } else {
        None
    };
    let identity = number.map(|_| head_identity(result));
    let members = {
        let mut topics = conn.topics.borrow_mut();
        let Some(t) = topics.get_mut(&key) else {
            return true;
        };
        if let Some(fill) = &mut t.fill {
            fill.held.push(Box::from(msg));
            return true;
        }
        t.members.retain(|m| m.session.strong_count() > 0);
        // Sessions moved here from a lost node: a gap behind this head is
        // filled first (with the headers fetched from this node).
        if let Some(n) = number {
            let from = t
                .members
                .iter()
                .filter(|m| m.floor > 0 && m.floor + 1 < n)
                .map(|m| m.floor + 1)
                .min();
            if let Some(from) = from {
                if n - from <= FILL_MAX {
                    start_fill(conn, t, from, n, method, msg);
                    return true;
                }
            }
        }
        t.remember(method, result);
        // A head some session may have had already: one delivered lately.
        let seen = match (number, identity) {
            (Some(n), Some(id)) => {
                let seen = t.recent.contains(&(n, id));
                if !seen {
                    if t.recent.len() == RECENT_HEADS {
                        t.recent.pop_front();
                    }
                    t.recent.push_back((n, id));
                }
                seen
            }
            _ => false,
        };
        let members = t.members.clone();
        if let Some(n) = number {
            for m in &mut t.members {
                m.floor = m.floor.max(n);
            }
        }
        (members, seen)
    };
    let (members, seen) = members;
    let at = offset_in(msg, sub);
    let mut delivered = 0;
    for m in members {
        // Never the same head twice: what a session was given is skipped
        // (a reorganised head at a height it had is not the same head).
        if seen && number.is_some_and(|n| n <= m.floor) {
            continue;
        }
        if let Some(s) = m.session.upgrade() {
            let parts = [&msg[..at], &m.id[..], &msg[at + sub.len()..]];
            s.send_notification(&parts);
            delivered += 1;
        }
    }
    crate::stats::count(|c| {
        c.topic_notes.add(1);
        c.topic_deliveries.add(delivered);
    });
    true
}

/// `s` calls an unsubscribe method with `sub`: if it is one of its merged
/// subscriptions, it ends here (and on the node with its last session).
pub fn unsubscribe_call(s: &Session, req: &Request<'_>, sub: &[u8]) -> bool {
    let m = member(s);
    let found = {
        let mut merged = m.merged.borrow_mut();
        let at = merged.iter().position(|(_, id, _)| &**id == sub);
        at.map(|i| merged.remove(i))
    };
    let Some((conn, sub_id, key)) = found else {
        return false;
    };
    leave_topic(&conn, &key, &sub_id);
    if let Some(id) = req.id {
        s.inflight.borrow_mut().add(id, 0);
        reply(s, id, b"true");
    }
    true
}

/// Take `sub_id` off a topic; the last one out ends it on the node.
fn leave_topic(conn: &Conn, key: &[u8], sub_id: &[u8]) {
    let empty = {
        let mut topics = conn.topics.borrow_mut();
        let Some(t) = topics.get_mut(key) else {
            return;
        };
        t.members.retain(|m| &*m.id != sub_id);
        t.joining.retain(|(_, _, id)| &**id != sub_id);
        t.members.is_empty() && t.joining.is_empty()
    };
    if empty {
        end(conn, key);
    }
    recount(conn);
}

/// End a topic: unsubscribe on the node (once it answered its subscribe).
fn end(conn: &Conn, key: &[u8]) {
    let t = {
        let mut topics = conn.topics.borrow_mut();
        match topics.get(key) {
            Some(t) if t.node_sub.is_none() => {
                // Still opening: removed now, ended when the answer comes.
                topics.remove(key);
                drop(topics);
                return recount(conn);
            }
            Some(_) => topics.remove(key),
            None => None,
        }
    };
    if let Some(Topic {
        node_sub: Some(sub),
        unsubscribe: unsub,
        ..
    }) = t
    {
        conn.topic_of.borrow_mut().remove(&sub);
        unsubscribe(conn, &sub, unsub);
    }
    recount(conn);
}

/// A session ends: it leaves every topic it is on.
pub fn leave_all(s: &Session) {
    let m = member(s);
    let merged = std::mem::take(&mut *m.merged.borrow_mut());
    for (conn, sub_id, key) in merged {
        leave_topic(&conn, &key, &sub_id);
    }
}

/// Forget a session's merged subscription `sub_id` (its subscribe failed).
fn forget(s: &Session, sub_id: &[u8]) {
    member(s)
        .merged
        .borrow_mut()
        .retain(|(_, id, _)| &**id != sub_id);
}

/// Whether `sub` is a session's id on one of `conn`'s topics.
pub fn known(conn: &Conn, sub: &[u8]) -> bool {
    conn.topics.borrow().values().any(|t| {
        t.members.iter().any(|m| &*m.id == sub) || t.joining.iter().any(|(_, _, id)| &**id == sub)
    })
}

/// Sessions on any topic of `conn`.
pub fn sessions_on(conn: &Conn) -> Vec<Weak<Session>> {
    let topics = conn.topics.borrow();
    topics
        .values()
        .flat_map(|t| {
            t.members
                .iter()
                .map(|m| m.session.clone())
                .chain(t.joining.iter().map(|(s, _, _)| s.clone()))
        })
        .collect()
}

/// Bring this core's merged-subscription gauges up to date with `conn`'s
/// topics (after any change to them).
pub fn recount(conn: &Conn) {
    let (topics, members) = {
        let t = conn.topics.borrow();
        let members: usize = t.values().map(|t| t.members.len() + t.joining.len()).sum();
        (t.len() as u64, members as u64)
    };
    let (was_topics, was_members) = conn.census.replace((topics, members));
    crate::stats::count(|c| {
        c.topics.add(topics);
        c.topics.sub(was_topics);
        c.topic_members.add(members);
        c.topic_members.sub(was_members);
    });
}

/// Ask `conn` for the hashes of blocks `from..n`, holding `msg` (head `n`)
/// and whatever follows until their headers are in.
pub(super) fn start_fill(conn: &Conn, t: &mut Topic, from: u64, n: u64, method: &[u8], msg: &[u8]) {
    let numbers: Vec<u64> = (from..n).collect();
    crate::debug!("filling heads {from}..{} for sessions moved here", n - 1);
    let ethereum = split_key(&t.key).0 == b"eth_subscribe";
    for (i, k) in numbers.iter().enumerate() {
        if ethereum {
            // One step: the block by number (its header fields, and more).
            let params = format!("[\"0x{k:x}\",false]");
            let call = SubCall::Fill(t.key.clone(), i as u32, true);
            send_own(conn, b"eth_getBlockByNumber", params.as_bytes(), call);
        } else {
            let params = format!("[{k}]");
            let call = SubCall::Fill(t.key.clone(), i as u32, false);
            send_own(conn, b"chain_getBlockHash", params.as_bytes(), call);
        }
    }
    t.fill = Some(Fill {
        outstanding: numbers.len(),
        hashes: vec![None; numbers.len()],
        headers: vec![None; numbers.len()],
        numbers,
        held: vec![Box::from(msg)],
        method: Box::from(method),
    });
}

/// An answer to a gap fill's request: a hash (`header == false`), or a header.
pub fn filled(conn: &Rc<Conn>, key: &[u8], i: u32, header: bool, msg: &[u8]) {
    let result = jsonrpc::peek(msg)
        .and_then(|p| p.result)
        .filter(|r| *r != b"null")
        .map(Box::<[u8]>::from);
    let i = i as usize;
    let next = {
        let mut topics = conn.topics.borrow_mut();
        let Some(fill) = topics.get_mut(key).and_then(|t| t.fill.as_mut()) else {
            return;
        };
        if i >= fill.numbers.len() {
            return;
        }
        if header {
            fill.headers[i] = result;
        } else {
            fill.hashes[i] = result;
        }
        fill.outstanding = fill.outstanding.saturating_sub(1);
        if fill.outstanding > 0 {
            return;
        }
        if !header && fill.hashes.iter().all(Option::is_some) {
            // Step two: the headers.
            fill.outstanding = fill.numbers.len();
            let hashes: Vec<Box<[u8]>> = fill.hashes.iter().flatten().cloned().collect();
            Some(hashes)
        } else {
            None
        }
    };
    if let Some(hashes) = next {
        for (i, h) in hashes.iter().enumerate() {
            let mut params = b"[".to_vec();
            params.extend_from_slice(h);
            params.push(b']');
            send_own(
                conn,
                b"chain_getHeader",
                &params,
                SubCall::Fill(Box::from(key), i as u32, true),
            );
        }
        return;
    }
    finish_fill(conn, key);
}

/// The gap's headers are in (or could not be had): deliver them to the
/// sessions that miss them, in order, then what was held.
fn finish_fill(conn: &Rc<Conn>, key: &[u8]) {
    let fill = {
        let mut topics = conn.topics.borrow_mut();
        let Some(t) = topics.get_mut(key) else {
            return;
        };
        let Some(fill) = t.fill.take() else {
            return;
        };
        for (n, h) in fill.numbers.iter().zip(&fill.headers) {
            if let Some(h) = h {
                for m in &mut t.members {
                    if m.floor > 0 && m.floor < *n {
                        if let Some(s) = m.session.upgrade() {
                            notify(&s, &fill.method, &m.id, h);
                        }
                        m.floor = *n;
                    }
                }
            }
        }
        // A header that could not be had is not asked for again.
        let last = fill.numbers.last().copied().unwrap_or(0);
        for m in &mut t.members {
            if m.floor > 0 {
                m.floor = m.floor.max(last);
            }
        }
        fill
    };
    let sub = conn
        .topics
        .borrow()
        .get(key)
        .and_then(|t| t.node_sub.clone());
    if let Some(sub) = sub {
        for held in fill.held {
            notification(conn, &sub, &held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the storage replay map: it kept every key ever notified.
    #[test]
    fn the_storage_replay_map_is_bounded() {
        assert!(
            mergeable(b"state_subscribeStorage", b"[]").is_none(),
            "all storage"
        );
        assert!(mergeable(b"state_subscribeStorage", b"[[]]").is_none());
        assert!(mergeable(b"state_subscribeStorage", br#"[["0x01"]]"#).is_some());
        let mut t = Topic::new(
            Box::from(&b"state_subscribeStorage\0[[\"0x01\"]]"[..]),
            "state_unsubscribeStorage",
            true,
        );
        for i in 0..5_000 {
            let note = format!(r#"{{"block":"0x01","changes":[["0x{i:04x}","0x00"]]}}"#);
            t.remember(b"state_storage", note.as_bytes());
        }
        assert_eq!(t.storage.as_ref().unwrap().values.len(), STORAGE_KEYS);
    }
}
