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
//! - Not merged, per the new JSON-RPC interface spec's rules:
//!   `author_submitAndWatchExtrinsic`, `transactionWatch_v1_*`,
//!   `chainHead_v1_follow` (they belong to one client, on the node that
//!   started them).

use std::cell::Cell;
use std::rc::{Rc, Weak};

use crate::jsonrpc::{self, Request};
use crate::relay::Session;

use super::conn::{Conn, SubCall};
use super::request::{offset_in, send_as, unsubscribe};
use super::{member, Ctx};

/// A mergeable subscribe method: its canonical name (aliases of one stream
/// share a topic), the method that ends it on the node, and whether a
/// late joiner gets the current value first.
pub fn mergeable(method: &[u8], params: &[u8]) -> Option<(&'static str, &'static str, bool)> {
    Some(match method {
        b"chain_subscribeNewHeads" | b"chain_subscribeNewHead" | b"subscribe_newHead" => {
            ("chain_subscribeNewHeads", "chain_unsubscribeNewHeads", true)
        }
        b"chain_subscribeFinalizedHeads" | b"chain_subscribeFinalisedHeads" => (
            "chain_subscribeFinalizedHeads",
            "chain_unsubscribeFinalizedHeads",
            true,
        ),
        b"chain_subscribeAllHeads" => {
            ("chain_subscribeAllHeads", "chain_unsubscribeAllHeads", true)
        }
        b"state_subscribeRuntimeVersion" | b"chain_subscribeRuntimeVersion" => (
            "state_subscribeRuntimeVersion",
            "state_unsubscribeRuntimeVersion",
            true,
        ),
        b"state_subscribeStorage" => ("state_subscribeStorage", "state_unsubscribeStorage", true),
        b"eth_subscribe" => {
            let kind = jsonrpc::param(params, 0).and_then(jsonrpc::unquote)?;
            match kind {
                b"newHeads" => ("eth_subscribe", "eth_unsubscribe", true),
                b"logs" | b"newPendingTransactions" => ("eth_subscribe", "eth_unsubscribe", false),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// A session waiting to join: (session, its request id, the subscription id it will get).
type Joiner = (Weak<Session>, Box<[u8]>, Box<[u8]>);

/// A notification's method and result, raw.
type Note = (Box<[u8]>, Box<[u8]>);

/// One merged node subscription on a connection.
pub struct Topic {
    /// Canonical method, a zero byte, compact params.
    pub key: Box<[u8]>,
    pub unsubscribe: &'static str,
    /// The node's subscription id (raw JSON), once it answered.
    pub node_sub: Option<Box<[u8]>>,
    /// Sessions receiving it: (session, its subscription id as raw JSON).
    pub members: Vec<(Weak<Session>, Box<[u8]>)>,
    /// Sessions whose subscribe call waits for the node's answer:
    /// (session, request id, the subscription id it will get).
    pub joining: Vec<Joiner>,
    latest_value: bool,
    /// The last notification's method and result (latest-value streams).
    last: Option<Note>,
    /// `state_subscribeStorage`: the block and every key's last value.
    storage: Option<Storage>,
}

/// What a storage subscription's clients have been told so far.
#[derive(Default)]
struct Storage {
    block: serde_json::Value,
    values: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A subscription id for a session: unique on this core.
fn new_sub_id(next: &Cell<u64>) -> Box<[u8]> {
    let n = next.get().wrapping_add(1);
    next.set(n);
    // Spread over the id space, as a node's random ids are.
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    format!("\"{mixed:016x}\"").into_bytes().into_boxed_slice()
}

/// Answer `s`'s request `id` with `result` (raw JSON).
fn reply(ctx_sh: &super::Shared, s: &Session, id: &[u8], result: &[u8]) {
    let parts: [&[u8]; 5] = [
        br#"{"jsonrpc":"2.0","result":"#,
        result,
        br#","id":"#,
        id,
        b"}",
    ];
    super::answer::deliver(ctx_sh, s, &parts);
    s.answered(id);
}

/// A mergeable subscribe call from `s`, on connection `to`.
pub fn subscribe(ctx: &Ctx<'_>, to: &Rc<Conn>, s: &Rc<Session>, req: &Request<'_>) {
    let sh = &ctx.shared;
    let id = req.id.expect("a subscribe call with an id");
    let method = req.method.unwrap_or_default();
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
        crate::metrics::request(req, crate::metrics::Outcome::Joined);
        if t.node_sub.is_none() {
            t.joining.push((Rc::downgrade(s), Box::from(id), sub_id));
            drop(topics);
            return recount(to);
        }
        t.members.push((Rc::downgrade(s), sub_id.clone()));
        let replay = t.replay();
        drop(topics);
        recount(to);
        reply(sh, s, id, &sub_id);
        if let Some((method, result)) = replay {
            notify(sh, s, &method, &sub_id, &result);
        }
        return;
    }
    crate::metrics::request(req, crate::metrics::Outcome::Forwarded);
    let key: Box<[u8]> = key.into_boxed_slice();
    topics.insert(
        key.clone(),
        Topic {
            key: key.clone(),
            unsubscribe: unsub,
            node_sub: None,
            members: Vec::new(),
            joining: vec![(Rc::downgrade(s), Box::from(id), sub_id)],
            latest_value,
            last: None,
            storage: (canonical == "state_subscribeStorage").then(Storage::default),
        },
    );
    drop(topics);
    recount(to);
    to.opening.set(to.opening.get() + 1);
    // The answer goes to the topic (every joiner), not to this session alone.
    send_as(to, s, req, SubCall::Topic(key));
}

impl Topic {
    /// The current value for a late joiner: (notification method, result).
    fn replay(&self) -> Option<Note> {
        if !self.latest_value {
            return None;
        }
        let (method, last) = self.last.as_ref()?;
        match &self.storage {
            Some(st) => {
                let changes: Vec<serde_json::Value> = st
                    .values
                    .iter()
                    .map(|(k, v)| serde_json::json!([k, v]))
                    .collect();
                let result = serde_json::json!({"block": st.block, "changes": changes});
                Some((method.clone(), result.to_string().into_bytes().into()))
            }
            None => Some((method.clone(), last.clone())),
        }
    }

    /// Remember a notification's value (latest-value streams).
    fn remember(&mut self, method: &[u8], result: &[u8]) {
        if !self.latest_value {
            return;
        }
        if let Some(st) = &mut self.storage {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(result) {
                st.block = v["block"].clone();
                for change in v["changes"].as_array().into_iter().flatten() {
                    if let Some(k) = change[0].as_str() {
                        st.values.insert(k.to_string(), change[1].clone());
                    }
                }
            }
        }
        self.last = Some((Box::from(method), Box::from(result)));
    }
}

/// A notification for `s` with its subscription id.
fn notify(sh: &super::Shared, s: &Session, method: &[u8], sub: &[u8], result: &[u8]) {
    let parts: [&[u8]; 7] = [
        br#"{"jsonrpc":"2.0","method":""#,
        method,
        br#"","params":{"subscription":"#,
        sub,
        br#","result":"#,
        result,
        b"}}",
    ];
    super::answer::deliver(sh, s, &parts);
}

/// The node answered a topic's subscribe call: its joiners get their ids
/// (or the error); nobody left: it ends at once.
pub fn answered(sh: &super::Shared, conn: &Conn, key: &[u8], msg: &[u8]) {
    conn.opening.set(conn.opening.get().saturating_sub(1));
    let p = jsonrpc::peek(msg);
    let result = p.as_ref().and_then(|p| p.result).filter(|r| *r != b"null");
    let mut topics = conn.topics.borrow_mut();
    let Some(t) = topics.get_mut(key) else {
        // Ended while it was being opened.
        if let Some(sub) = result {
            let unsub = mergeable_unsubscribe(key);
            unsubscribe(conn, sub, unsub);
        }
        return;
    };
    let joining = std::mem::take(&mut t.joining);
    let Some(sub) = result else {
        // An error: each joiner gets it with its own id.
        let t = topics.remove(key).expect("present");
        drop(topics);
        for (s, id, sub_id) in joining {
            let Some(s) = s.upgrade() else {
                continue;
            };
            forget(&s, &sub_id);
            let at = p.as_ref().and_then(|p| p.id).map(|i| offset_in(msg, i));
            match (at, p.as_ref().and_then(|p| p.id)) {
                (Some(at), Some(their)) => {
                    let parts = [&msg[..at], &id[..], &msg[at + their.len()..]];
                    super::answer::deliver(sh, &s, &parts);
                }
                _ => super::answer::deliver(sh, &s, &[msg]),
            }
            s.answered(&id);
        }
        drop(t);
        return recount(conn);
    };
    t.node_sub = Some(Box::from(sub));
    conn.topic_of
        .borrow_mut()
        .insert(Box::from(sub), t.key.clone());
    let mut replies = Vec::new();
    for (s, id, sub_id) in joining {
        if s.upgrade().is_some() {
            t.members.push((s.clone(), sub_id.clone()));
            replies.push((s, id, sub_id));
        }
    }
    let empty = t.members.is_empty();
    drop(topics);
    recount(conn);
    for (s, id, sub_id) in replies {
        if let Some(s) = s.upgrade() {
            reply(sh, &s, &id, &sub_id);
        }
    }
    if empty {
        end(conn, key);
    }
}

/// The unsubscribe method of a topic key.
fn mergeable_unsubscribe(key: &[u8]) -> &'static str {
    let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    let params = &key[(end + 1).min(key.len())..];
    mergeable(&key[..end], params).map_or("chain_unsubscribeNewHeads", |(_, u, _)| u)
}

/// A notification on a connection: to every session on its topic, if it
/// belongs to one. Returns false when it does not.
pub fn notification(sh: &super::Shared, conn: &Conn, sub: &[u8], msg: &[u8]) -> bool {
    let Some(key) = conn.topic_of.borrow().get(sub).cloned() else {
        return false;
    };
    let members = {
        let mut topics = conn.topics.borrow_mut();
        let Some(t) = topics.get_mut(&key) else {
            return true;
        };
        if let Some(p) = jsonrpc::peek(msg) {
            if let (Some(m), Some(r)) = (
                p.method,
                p.params.and_then(|ps| jsonrpc::member(ps, b"result")),
            ) {
                t.remember(m, r);
            }
        }
        t.members.retain(|(s, _)| s.strong_count() > 0);
        t.members.clone()
    };
    let at = offset_in(msg, sub);
    let mut delivered = 0;
    for (s, sub_id) in members {
        if let Some(s) = s.upgrade() {
            let parts = [&msg[..at], &sub_id[..], &msg[at + sub.len()..]];
            super::answer::deliver(sh, &s, &parts);
            delivered += 1;
        }
    }
    crate::metrics::count(|c| {
        c.topic_notes.add(1);
        c.topic_deliveries.add(delivered);
    });
    true
}

/// `s` calls an unsubscribe method with `sub`: if it is one of its merged
/// subscriptions, it ends here (and on the node with its last session).
pub fn unsubscribe_call(sh: &super::Shared, s: &Session, req: &Request<'_>, sub: &[u8]) -> bool {
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
        reply(sh, s, id, b"true");
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
        t.members.retain(|(_, id)| &**id != sub_id);
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
        t.members.iter().any(|(_, id)| &**id == sub)
            || t.joining.iter().any(|(_, _, id)| &**id == sub)
    })
}

/// Sessions on any topic of `conn` (they lose their streams with it).
pub fn sessions_on(conn: &Conn) -> Vec<Weak<Session>> {
    let topics = conn.topics.borrow();
    topics
        .values()
        .flat_map(|t| {
            t.members
                .iter()
                .map(|(s, _)| s.clone())
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
    crate::metrics::count(|c| {
        c.topics.add(topics);
        c.topics.sub(was_topics);
        c.topic_members.add(members);
        c.topic_members.sub(was_members);
    });
}
