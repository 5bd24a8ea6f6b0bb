//! Per-message routing inside a pinned session whose node is pruned, when
//! the pool has archive nodes (rules in [`crate::route`]), and per-call
//! admission checks. The pump holds each client message until it is whole
//! (up to [`HOLD_MAX`]; larger ones stream to the pruned node), then it is
//! sent as it came (still masked) to the pruned node or to the session's
//! archive connection, which is opened on first need. The pruned node's
//! answers are held the same way, so that a "state is gone" answer to a
//! request with a block argument is replaced by the archive node's answer
//! to the same request. Archive answers reach the client as whole messages,
//! between the pruned node's messages. Request ids are never rewritten.
//! The archive connection itself (opening, writing, reading, retiring
//! its sockets) is [`conn`]'s.

use std::rc::Rc;

use monoio::time::Instant;

use crate::jsonrpc::Call;
use crate::route::Target;
use crate::stats::Outcome;
use crate::ws::message::Assembler;

use super::close::Which;
use super::session::Session;

mod conn;
mod routed;
pub mod state;
pub use conn::{connection, Halves};
pub use routed::Routed;
use state::{error_frame, ArchiveState, Pending, RETRY_MAX};
pub use state::{Archive, Hold, HOLD_MAX};

impl Session {
    /// The archive connection failed: every request waiting on it gets an error.
    fn fail_archive(&self, why: &str) {
        let a = self.archive();
        a.state.set(ArchiveState::Failed);
        a.failed_at.set(Some(Instant::now()));
        let waiting: Vec<Pending> = a
            .pending
            .borrow_mut()
            .drain(..)
            .chain(a.queue.borrow_mut().drain(..).map(|(p, _)| p))
            .collect();
        a.queued.set(0);
        a.space.notify();
        for p in &waiting {
            if let Some(f) = error_frame(p, why) {
                self.inject(Which::Client, f);
            }
        }
        a.retry.borrow_mut().clear();
    }

    /// Can a message go to the archive connection now?
    fn archive_usable(&self, r: &Routed<'_>) -> bool {
        match self.archive().state.get() {
            ArchiveState::Failed if !self.archive().retry_due() => false,
            ArchiveState::Up | ArchiveState::Connecting => true,
            ArchiveState::Idle | ArchiveState::Failed => r.pool.pick_archive().is_some(),
        }
    }
}

/// A held message (or, `whole == false`, the first part of a large one) is ready.
pub fn on_held(
    s: &Session,
    from: Which,
    asm: &mut Assembler,
    hold: &mut Hold,
    r: &Routed<'_>,
    whole: bool,
) {
    let raw = match from {
        Which::Client => asm.take_frames(Some(crate::rng::mask_key())),
        Which::Node => asm.take_raw(),
    };
    let frame_end = asm.decoder().at_frame_boundary();
    let message_end = whole && asm.decoder().at_message_boundary();
    match from {
        Which::Client => client_message(s, asm, r, raw),
        Which::Node => node_message(s, asm, hold, r, whole, raw, (frame_end, message_end)),
    }
    if whole {
        asm.clear();
        hold.target = None;
        hold.ids.reset();
    } else {
        hold.target.get_or_insert(Target::Pruned);
    }
}

/// A node's held answer (or, `whole == false`, a part of a large one), as
/// its frames `raw` and where they end: the request it answers is done
/// (a "state is gone" answer is asked of an archive node instead); a
/// notification is charged to the session's key, and not delivered past
/// its quota. Each id is read as the answer passes ([`Hold::ids`]), so a
/// large answer frees its request like a small one.
fn node_message(
    s: &Session,
    asm: &Assembler,
    hold: &mut Hold,
    r: &Routed<'_>,
    whole: bool,
    raw: Vec<u8>,
    (frame_end, message_end): (bool, bool),
) {
    let first_part = hold.target.is_none();
    if !whole {
        // A part of a large answer streams on; what it means is read at its end.
        s.push_data(Which::Client, raw, frame_end, message_end);
        return;
    }
    let mut ids = hold.ids.ids().peekable();
    let first = ids.peek().copied();
    if let (true, Some(id)) = (first_part, first) {
        if retried_on_archive(s, asm.message(), id, r) {
            return;
        }
    }
    let mut answered = 0;
    for id in ids {
        s.answered(id);
        answered += 1;
    }
    if answered == 0 && s.key.is_some() {
        // A notification: a held one past its key's quota is not delivered;
        // a large one went out as it streamed (the session closes after it).
        let delivered = !first_part;
        let length = if first_part {
            asm.message().len()
        } else {
            asm.last_length()
        };
        if !s.notification(length, delivered) && !delivered {
            return;
        }
    }
    let over = !first_part && s.key().is_some_and(|k| k.over_quota());
    s.push_data(Which::Client, raw, frame_end, message_end);
    if over {
        s.quota_used_up();
    }
}

/// The answer `msg` to request `id`, held whole: if it is a pruned node's
/// "state is gone" to a request kept for it, the request goes to the
/// archive connection instead, and true is returned.
fn retried_on_archive(s: &Session, msg: &[u8], id: &[u8], r: &Routed<'_>) -> bool {
    let Some(a) = s.archive.as_deref() else {
        return false;
    };
    let mut retry = a.retry.borrow_mut();
    let Some(i) = retry.iter().position(|(rid, _)| rid.as_slice() == id) else {
        return false;
    };
    let (_, request) = retry.remove(i).expect("index from position");
    drop(retry);
    if !(r.router.is_pruned_error(msg) && s.archive_usable(r)) {
        return false;
    }
    crate::debug!("pruned node lacks the state; retrying on archive");
    // The archive answers it now, not the session's node.
    s.answered(id);
    a.send(request, &Call::parse(msg));
    true
}

/// A client's message, always whole here (its frames `raw`, masked): read
/// once, admitted ([`crate::call::admit`]), then sent where it must go. A
/// message that cannot be read one way only is answered by the gateway
/// where a policy reads calls; where none does (a plain WebSocket relay),
/// it goes to the session's node unchanged, and neither the cache nor
/// routing acts on it.
fn client_message(s: &Session, asm: &Assembler, r: &Routed<'_>, raw: Vec<u8>) {
    if s.key_changed() && s.key_withdrawn() {
        return;
    }
    let call = Call::parse(asm.message());
    if let Some((adm, ip)) = r.admission {
        if let Err(refused) = crate::call::admit(adm, ip, s.key().map(|k| &**k), &call, s.cfg.chain)
        {
            if let Some(answer) = refused.answer {
                s.send_text(answer.as_bytes());
            }
            return;
        }
    }
    let readable = call.unreadable.is_none() && call.refusal().is_none();
    if !readable {
        crate::stats::calls(s.cfg.chain, &call, Outcome::Forwarded);
        s.sent(&call);
        return s.push_data(Which::Node, raw, true, true);
    }
    let me = s.me.upgrade().expect("a session's own weak");
    if let Some(req) = call.single() {
        if let Some(answer) = r
            .admission
            .and_then(|(adm, _)| super::limits::check(s, adm, req))
        {
            crate::stats::request(s.cfg.chain, req, Outcome::Refused);
            if let Some(answer) = answer {
                s.send_text(answer.as_bytes());
            }
            return;
        }
        if let Some((side, node)) = &r.side {
            // Follows merged on this core's follow hub (its shared connection).
            if crate::relay::shared::follow::claims(side, req) {
                return crate::relay::shared::follow::on_call(side, *node, &me, req, 0);
            }
            if side.plan(req, r.chain).is_some() {
                crate::relay::shared::request::pinned(side, *node, r.chain, r.route, &me, req, 0);
                return;
            }
        }
    } else if let Some((side, node)) = r.side.as_ref().filter(|(sh, _)| splits(sh, r, &call)) {
        return split(s, &me, side, *node, r, &call);
    }
    crate::stats::calls(s.cfg.chain, &call, Outcome::Forwarded);
    let archive =
        r.route && r.router.route_call(&call, r.chain) == Target::Archive && s.archive_usable(r);
    if archive {
        return s.archive().send(raw, &call);
    }
    s.sent(&call);
    if r.route && r.router.retryable_call(&call) && s.archive_usable(r) {
        if let Some(id) = call.single().and_then(|q| q.id) {
            let mut retry = s.archive().retry.borrow_mut();
            if retry.len() == RETRY_MAX {
                retry.pop_front();
            }
            retry.push_back((id.to_vec(), raw.clone()));
        }
    }
    s.push_data(Which::Node, raw, true, true);
}

/// Whether a batch goes request by request (over this core's shared
/// connections, its answers put back as one array): the cache may answer
/// one of them, or they need different nodes (by role and block), or one
/// may need an archive node after the pruned one (a block named). A batch
/// that opens or uses a subscription stays whole on the session's node.
fn splits(sh: &crate::relay::shared::Shared, r: &Routed<'_>, call: &Call<'_>) -> bool {
    if call.requests().any(|q| q.sub != crate::jsonrpc::Sub::None) {
        return false;
    }
    let cached = call.requests().any(|q| sh.plan(q, r.chain).is_some());
    let routed = r.route
        && call.requests().any(|q| {
            r.router.route_request(q, r.chain) == Target::Archive
                || crate::call::retry::may_need_archive(r.router, q)
        });
    cached || routed
}

/// A batch split: each request on its own way (refused here, answered from
/// the cache, sent to the session's node's or an archive node's shared
/// connection), its answer in its place of the batch's array.
fn split(
    s: &Session,
    me: &Rc<Session>,
    sh: &Rc<crate::relay::shared::Shared>,
    node: usize,
    r: &Routed<'_>,
    call: &Call<'_>,
) {
    let ids: Vec<&[u8]> = call.ids().collect();
    let batch = s.gather(&ids);
    let mut slot = 0;
    for req in call.requests() {
        let tag = match req.id {
            Some(_) => {
                slot += 1;
                crate::call::batch::tag(batch, slot - 1)
            }
            None => 0,
        };
        let limited = r
            .admission
            .and_then(|(adm, _)| super::limits::check(s, adm, req));
        if let Some(answer) = limited {
            crate::stats::request(s.cfg.chain, req, Outcome::Refused);
            if let (Some(a), Some(id)) = (answer, req.id) {
                s.reply(tag, id, &[a.as_bytes()]);
            }
            continue;
        }
        crate::relay::shared::request::pinned(sh, node, r.chain, r.route, me, req, tag);
    }
}
