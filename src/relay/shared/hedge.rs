//! Hedged reads on shared connections, as over HTTP
//! ([`crate::hedge`]): a read its node has not answered within the hedge
//! delay (learned from the node's answers here, at least `pool.hedge_min_ms`)
//! is sent to another serving node of the same role too, and the first
//! answer wins. At most one copy per read, within the core's budget
//! (`pool.hedge_budget` of its reads); never a write, a subscription, a
//! `chainHead_*` call or a batch.
//!
//! A read is armed when it is sent ([`super::core::Shared`]'s `arm`);
//! this is what happens when its hedge is due, and to the copy's answer.
//!
//! The request itself stays where it was sent (its `Waiting`); the copy
//! waits on the other connection as a [`Hedging::Twin`] naming it. The
//! request's own answer first: it is answered as usual, and the copy's
//! answer, when it comes, finds nothing and is dropped. The copy's answer
//! first: the request is taken from its connection (an
//! [`Hedging::Abandoned`] mark is left there, which drops the late answer
//! and keeps a hung node's connection counted as waiting, so that it is
//! still found hung) and answered with the copy's answer; when that node
//! sent nothing on the connection since the read left, it counts as a
//! failed check of the node once it has been silent for [`SILENT_FOR`] (a
//! node merely slower than usual while it answers other requests does not,
//! nor one quiet for a moment: on a busy machine, copies win often). A copy has no
//! session of its own: when a connection fails, only the requests
//! themselves get errors.

use std::rc::Rc;
use std::time::Instant;

use crate::jsonrpc::Call;

use super::conn::{Conn, Hedging, SubCall, Waiting};
use super::Shared;

/// How long a node must have sent nothing on a connection before a read
/// hedged away from it counts as a failed check of the node.
pub const SILENT_FOR: std::time::Duration = std::time::Duration::from_millis(500);

/// The connection's timer: the hedges due now go out; when the next is due.
pub fn tick(sh: &Rc<Shared>, conn: &Rc<Conn>, now: Instant) -> Option<Instant> {
    loop {
        let (at, gid) = *conn.hedge_queue.borrow().front()?;
        if at > now {
            return Some(at);
        }
        conn.hedge_queue.borrow_mut().pop_front();
        hedge(sh, conn, gid);
    }
}

/// Ask request `gid` of `conn` of another node too, if it still waits
/// (and its session with it), another node can, and the budget allows.
fn hedge(sh: &Rc<Shared>, conn: &Rc<Conn>, gid: u64) {
    let (raw, id) = {
        let mut pending = conn.pending.borrow_mut();
        let Some(w) = pending.get_mut(&gid) else {
            return;
        };
        if !w.wanted(sh.answers.as_deref()) {
            return;
        }
        let Hedging::Due(raw, sent) = std::mem::take(&mut w.hedging) else {
            return;
        };
        w.hedging = Hedging::Copied(sent);
        (raw, w.id.clone())
    };
    let pool = &sh.pool;
    let mut tried = vec![false; pool.nodes().len()];
    tried[conn.node] = true;
    let role = pool.nodes()[conn.node].role;
    let Some(other) = pool.pick_role(role, &tried).filter(|&o| o != conn.node) else {
        return;
    };
    if !sh.hedging.take() {
        return;
    }
    let call = Call::parse(&raw);
    let Some(req) = call.single() else {
        return;
    };
    let to = sh.conn(other);
    let copy = to.next_id();
    let mut digits = [0u8; 20];
    to.send_parts(&req.parts(Some(super::conn::decimal(copy, &mut digits)), req.params));
    to.pending.borrow_mut().insert(
        copy,
        Waiting {
            session: std::rc::Weak::new(),
            id,
            tag: 0,
            call: SubCall::Plain,
            retry: None,
            kept: None,
            hedging: Hedging::Twin {
                of: Rc::downgrade(conn),
                gid,
            },
            epoch: to.epoch(),
        },
    );
    crate::debug!(
        "a read late on node {} is asked of node {other} too",
        conn.node
    );
}

/// The copy of request `gid` of `of`, sent to `conn`, was answered: if the
/// request still waits, this answer is its answer (returned, with the
/// request); else it is dropped.
pub fn copy_answered(
    sh: &Shared,
    conn: &Conn,
    of: &std::rc::Weak<Conn>,
    gid: u64,
) -> Option<Waiting> {
    let first = of.upgrade()?;
    let mut pending = first.pending.borrow_mut();
    let health = sh.pool.health();
    let sent = match pending.get(&gid) {
        Some(w) if w.wanted(sh.answers.as_deref()) => match w.hedging {
            Hedging::Copied(sent) => Some(sent),
            _ => None,
        },
        _ => None,
    };
    let Some(sent) = sent else {
        health.hedged(first.node, conn.node, false, false);
        return None;
    };
    let w = pending.insert(
        gid,
        Waiting {
            session: std::rc::Weak::new(),
            id: Box::from(&b"null"[..]),
            tag: 0,
            call: SubCall::Plain,
            retry: None,
            kept: None,
            hedging: Hedging::Abandoned,
            epoch: first.epoch(),
        },
    );
    // A node that sent nothing on the connection since the read left, and
    // nothing for `SILENT_FOR`, is failing (hung, stopped): that counts as a
    // failed check. One that only answers later than usual while it answers
    // others is not, nor one quiet for a moment (busy, descheduled: on a
    // loaded machine that is tens of milliseconds, a hedge delay or two).
    let seen = first.seen();
    let silent = seen < sent && seen.elapsed() >= SILENT_FOR;
    health.hedged(first.node, conn.node, true, silent);
    w
}
