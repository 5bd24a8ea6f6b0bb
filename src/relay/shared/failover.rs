//! A shared connection is lost (its node died, failed its checks, or hung):
//! its sessions move to another node instead of closing, where they can.
//!
//! - Requests they had in flight there get JSON-RPC errors with their ids
//!   (whether the node ran them is unknown: they are not sent again).
//! - Their merged subscriptions ([`super::topics`]) are subscribed on the
//!   new node; clients keep their subscription ids; head streams go on
//!   with no repeat and no gap.
//! - Streams that cannot move end as their spec says: `chainHead_v1_follow`
//!   gets `{"event":"stop"}`, `transactionWatch_v1` watches `dropped`,
//!   `author_submitAndWatchExtrinsic` `"dropped"`.
//! - A session that holds another kind of subscription there (one only
//!   that node knows), that moved less than [`MOVE_AGAIN`] ago, or for which
//!   no other node is up, loses its node side as before: errors, then 1012.

use std::rc::{Rc, Weak};

use crate::io::{stop, Stop};
use crate::relay::Which;
use std::time::{Duration, Instant};

use crate::relay::Session;

use super::conn::send_own;
use super::conn::{self, Conn, State, SubCall};
use super::core::Shared;
use super::member::member;
use super::topics;
use super::topics::{notify, recount, reply, split_key, Joiner, Member, Topic};

/// A session does not move twice within this time (it closes instead).
pub const MOVE_AGAIN: Duration = Duration::from_secs(10);

/// How a subscription that cannot move ends: its notification method and
/// the result to send, by the method that would end it.
fn ending(unsub: &str) -> Option<(&'static str, &'static str)> {
    match unsub {
        "chainHead_v1_unfollow" => Some(("chainHead_v1_followEvent", r#"{"event":"stop"}"#)),
        "transactionWatch_v1_unwatch" => Some((
            "transactionWatch_v1_watchEvent",
            r#"{"event":"dropped","error":"the node serving this watch was lost"}"#,
        )),
        "author_unwatchExtrinsic" => Some(("author_extrinsicUpdate", r#""dropped""#)),
        _ => None,
    }
}

/// A topic's sessions that go to one connection: members and joiners.
type Group = (Rc<Conn>, Vec<Member>, Vec<Joiner>);

/// The group of `s`'s (new) home connection, if `s` is moving.
fn place(groups: &mut Vec<Group>, moving: &[Rc<Session>], s: &Rc<Session>) -> Option<usize> {
    if !moving.iter().any(|m| Rc::ptr_eq(m, s)) {
        return None;
    }
    let home = member(s).conn();
    let at = groups.iter().position(|(c, _, _)| Rc::ptr_eq(c, &home));
    Some(at.unwrap_or_else(|| {
        groups.push((home, Vec::new(), Vec::new()));
        groups.len() - 1
    }))
}

/// Move the `sessions` that used `dead` (and the `topics` it carried);
/// returns those that cannot move.
pub(super) fn rehome(
    sh: &Rc<Shared>,
    dead: &Rc<Conn>,
    sessions: Vec<Rc<Session>>,
    topics: Vec<Topic>,
) -> Vec<Rc<Session>> {
    let now = Instant::now();
    let mut closing = Vec::new();
    let mut moving = Vec::new();
    for s in sessions {
        let m = member(&s);
        let stuck = m
            .subs
            .borrow()
            .iter()
            .any(|(c, _, unsub)| Rc::ptr_eq(c, dead) && ending(unsub).is_none());
        let recent = m.moved_at.get().is_some_and(|t| now - t < MOVE_AGAIN);
        let home_lost = Rc::ptr_eq(&m.conn(), dead);
        let target = if home_lost {
            let mut tried = vec![false; sh.pool.nodes().len()];
            tried[dead.node] = true;
            sh.pool.pick(&tried)
        } else {
            None
        };
        if stuck || recent || (home_lost && target.is_none()) {
            closing.push(s);
            continue;
        }
        // Subscriptions that end with their node, as their spec says.
        let ended: Vec<(Box<[u8]>, Box<str>)> = {
            let mut subs = m.subs.borrow_mut();
            let mut ended = Vec::new();
            subs.retain(|(c, id, unsub)| {
                let here = Rc::ptr_eq(c, dead);
                if here {
                    ended.push((id.clone(), unsub.clone()));
                }
                !here
            });
            ended
        };
        for (id, unsub) in ended {
            if let Some((method, result)) = ending(&unsub) {
                notify(&s, method.as_bytes(), &id, result.as_bytes());
            }
        }
        if let Some(index) = target {
            let to = sh.conn(index);
            m.set_conn(to.clone());
            to.join(&s);
            m.moved_at.set(Some(now));
            crate::debug!(
                "session moved to {} (its node connection was lost)",
                sh.pool.nodes()[index].url
            );
        }
        moving.push(s);
    }
    // Each topic follows its sessions to their (new) connections.
    for t in topics {
        let mut by_conn: Vec<Group> = Vec::new();
        for m in &t.members {
            if let Some(i) = m
                .session
                .upgrade()
                .and_then(|s| place(&mut by_conn, &moving, &s))
            {
                by_conn[i].1.push(m.clone());
            }
        }
        for j in &t.joining {
            if let Some(i) = j.0.upgrade().and_then(|s| place(&mut by_conn, &moving, &s)) {
                by_conn[i].2.push(j.clone());
            }
        }
        for (to, members, joining) in by_conn {
            adopt(&to, &t, members, joining);
        }
    }
    closing
}

/// Take over a topic of a lost connection on `to`: its sessions (`members`,
/// with what they were last given) and those still waiting to join. `to`
/// subscribes anew unless it carries the topic already.
pub fn adopt(to: &Rc<Conn>, old: &Topic, members: Vec<Member>, joining: Vec<Joiner>) {
    for m in members
        .iter()
        .filter_map(|m| m.session.upgrade().map(|s| (s, m)))
    {
        repoint(&m.0, to, &m.1.id);
    }
    for (s, _, sub_id) in &joining {
        if let Some(s) = s.upgrade() {
            repoint(&s, to, sub_id);
        }
    }
    let mut topics = to.topics.borrow_mut();
    let fresh = !topics.contains_key(&old.key);
    let t = topics.entry(old.key.clone()).or_insert_with(|| {
        let mut t = Topic::new(old.key.clone(), old.unsubscribe, old.latest_value);
        // What the sessions were told so far stays the value to replay.
        t.last = old.last.clone();
        t.storage = old.storage.clone();
        t
    });
    // The heads delivered so far: their repeats from this node are skipped.
    for head in &old.recent {
        if !t.recent.contains(head) {
            t.recent.push_back(*head);
        }
    }
    t.members.extend(members);
    let answered = t.node_sub.is_some();
    let replies: Vec<Joiner> = if answered {
        for (s, _, sub_id) in &joining {
            t.members.push(Member {
                session: s.clone(),
                id: sub_id.clone(),
                floor: 0,
            });
        }
        joining
    } else {
        t.joining.extend(joining);
        Vec::new()
    };
    drop(topics);
    for (s, id, sub_id) in replies {
        if let Some(s) = s.upgrade() {
            reply(&s, &id, &sub_id);
        }
    }
    if fresh {
        let (method, params) = split_key(&old.key);
        to.opening.set(to.opening.get() + 1);
        send_own(to, method, params, SubCall::Topic(old.key.clone()));
    }
    recount(to);
}

/// A session's merged subscription `sub_id` now lives on `to`.
fn repoint(s: &Session, to: &Rc<Conn>, sub_id: &[u8]) {
    for m in member(s).merged.borrow_mut().iter_mut() {
        if &*m.1 == sub_id {
            m.0 = to.clone();
        }
    }
}

impl Shared {
    /// The connection is lost: its sessions lose their node side (errors for
    /// what they wait for, then 1012), and so do the sessions that own a
    /// subscription on it.
    pub(super) fn fail(self: &Rc<Self>, conn: &Rc<Conn>, why: &str) {
        if conn.state() == State::Dead {
            return;
        }
        crate::warn!(
            "shared connection to {}: {why}",
            self.pool.nodes()[conn.node].url
        );
        conn.set_dead(why);
        self.slots.borrow_mut()[conn.node].retain(|c| !Rc::ptr_eq(c, conn));
        if let Some(fd) = conn.fd.get() {
            stop(fd, Stop::All);
        }
        // Client follows on this connection's node follow end (`stop`).
        super::follow::lost(self, conn);
        // Sessions whose node this is, or that own a subscription on it,
        // lose their node side: errors for all they wait for, then 1012.
        let subs: Vec<Weak<Session>> = conn.subs.borrow_mut().drain().map(|(_, s)| s).collect();
        let members: Vec<Weak<Session>> =
            conn.members.borrow_mut().drain().map(|(_, s)| s).collect();
        let on_topics = topics::sessions_on(conn);
        let carried: Vec<topics::Topic> =
            conn.topics.borrow_mut().drain().map(|(_, t)| t).collect();
        conn.topic_of.borrow_mut().clear();
        topics::recount(conn);
        let mut sessions: Vec<Rc<Session>> = subs
            .iter()
            .chain(members.iter())
            .chain(on_topics.iter())
            .filter_map(Weak::upgrade)
            .collect();
        sessions.sort_by_key(Rc::as_ptr);
        sessions.dedup_by(|a, b| Rc::ptr_eq(a, b));
        // Those that can move to another node do; the others close below.
        let sessions = rehome(self, conn, sessions, carried);
        // Others that sent a request here (to an archive node) get an error
        // for each such request and go on.
        let message = format!("upstream node connection lost ({why}); reconnect and retry");
        let pending: Vec<conn::Waiting> =
            conn.pending.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in pending {
            // Requests that waited for a cacheable one's answer fail with it.
            if let (Some(k), Some(answers)) = (&w.kept, &self.answers) {
                answers.fail(&k.key, &message);
            }
            let Some(s) = w.session.upgrade() else {
                continue;
            };
            if sessions.iter().any(|c| Rc::ptr_eq(c, &s)) {
                continue;
            }
            let e = crate::jsonrpc::error::error(
                &w.id,
                crate::jsonrpc::error::code::INTERNAL_ERROR,
                &message,
                None,
            );
            s.reply(w.tag, &w.id, &[e.as_bytes()]);
        }
        for s in sessions {
            s.closing.on_gone(&*s, Which::Node);
        }
    }
}
