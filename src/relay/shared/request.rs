//! A client's message onto shared connections: read and admitted once
//! ([`crate::call::admit`]), then each request on its own way: refused
//! (subscription ownership, the session's limits), answered from the cache
//! or by an identical request on its way ([`crate::call::answers`]), or
//! sent with its id replaced by one unique on its connection (remembered to
//! put the client's back on the answer). A batch's requests each go where
//! they must (the session's node, an archive node, the cache) and their
//! answers come back as one array in the client's order (the session's
//! [`crate::call::Gather`]).

use std::rc::{Rc, Weak};

use crate::call::{Found, Waiter};
use crate::jsonrpc::error::{code, error};
use crate::jsonrpc::{Call, Kind, Request, Sub};
use crate::relay::Session;
use crate::route::Target;
use crate::stats::Outcome;

use super::conn::{Asked, Conn, Kept};
use super::{member, Ctx, Shared};

/// One whole text message from the client.
pub fn on_request(ctx: &Ctx<'_>, s: &Rc<Session>, msg: &[u8]) {
    if !s.closing.side(crate::relay::Which::Client).takes_data() {
        return;
    }
    if s.key_changed() && s.key_withdrawn() {
        return;
    }
    // Read once, strictly: what is not JSON with one meaning is answered
    // here (the node would answer it with `"id":null`, which maps back to
    // nobody); each request that goes out is what this reading says.
    let call = Call::parse(msg);
    let refused = match ctx.admission {
        Some((adm, ip)) => crate::call::admit(adm, ip, s.key().map(|k| &**k), &call, s.cfg.chain)
            .err()
            .map(|r| r.answer),
        None => call.refusal().map(Some),
    };
    if let Some(answer) = refused {
        if let Some(a) = answer {
            s.send_text(a.as_bytes());
        }
        return;
    }
    match call.kind {
        Kind::Object => single(ctx, s, call.single().expect("an object is one request"), 0),
        Kind::Batch => {
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
                single(ctx, s, req, tag);
            }
        }
        Kind::Other => {
            s.send_text(error(b"null", code::INVALID_REQUEST, "Invalid Request", None).as_bytes());
        }
    }
}

/// One request of the session's call (`tag`: its place in a batch, or 0).
fn single(ctx: &Ctx<'_>, s: &Rc<Session>, req: &Request<'_>, tag: u64) {
    let sh = &ctx.shared;
    let m = member(s);
    // A follow, or a call on a client follow: the core's follow hub's.
    if super::follow::claims(sh, req) {
        if let Some(answer) = refuse(ctx, s, req) {
            crate::stats::request(s.cfg.chain, req, Outcome::Refused);
            if let (Some(a), Some(id)) = (answer, req.id) {
                s.reply(tag, id, &[a.as_bytes()]);
            }
            return;
        }
        return super::follow::on_call(sh, m.conn().node, s, req, tag);
    }
    let archive = (ctx.route && sh.router.route_request(req, ctx.chain) == Target::Archive)
        .then(|| sh.archive_for(Some(s)))
        .flatten();
    // A subscription call goes where its subscription lives; a new one to a
    // connection with room (nodes cap subscriptions per connection).
    let sub_conn = match req.sub {
        Sub::Opens if m.conn().subscription_load() >= sh.settings.max_subscriptions.max(1) => {
            Some(sh.conn(m.conn().node))
        }
        Sub::Ends(Some(id)) | Sub::Uses(Some(id)) => m
            .subs
            .borrow()
            .iter()
            .find(|(_, sub, _)| &**sub == id)
            .map(|(c, _, _)| c.clone()),
        _ => None,
    };
    let home = m.conn();
    let to = archive.as_ref().or(sub_conn.as_ref()).unwrap_or(&home);
    let answer_here = |answer: Option<String>| {
        crate::stats::request(s.cfg.chain, req, Outcome::Refused);
        if let (Some(a), Some(id)) = (answer, req.id) {
            s.reply(tag, id, &[a.as_bytes()]);
        }
    };
    // Every connection to the node is full and no other may open (a
    // merged stream costs the node nothing more: it joins).
    if let Some(c) = &sub_conn {
        let merged = || {
            let params = req.params.unwrap_or(b"[]");
            super::topics::mergeable(req.method().unwrap_or_default(), params).is_some()
        };
        let full = c.subscription_load() >= sh.settings.max_subscriptions.max(1);
        if req.sub == Sub::Opens && full && !merged() {
            let data = r#"{"limit":"pool.shared_max_connections"}"#;
            let e = req
                .id
                .map(|id| error(id, code::LIMIT_EXCEEDED, "limit exceeded", Some(data)));
            return answer_here(e);
        }
    }
    if let Some(answer) = refuse(ctx, s, req) {
        return answer_here(answer);
    }
    // Streams the same for everyone: one node subscription per topic
    // (a single request's; in a batch, a subscription is the session's own).
    match req.sub {
        Sub::Ends(Some(sub)) if tag == 0 && super::topics::unsubscribe_call(s, req, sub) => {
            crate::stats::request(s.cfg.chain, req, Outcome::Cached);
            return;
        }
        // Another session's merged subscription is not this one's to end.
        Sub::Ends(Some(sub)) if super::topics::known(&home, sub) => {
            let e = req
                .id
                .map(|id| error(id, code::INVALID_PARAMS, "Invalid subscription id", None));
            return answer_here(e);
        }
        Sub::Opens if tag == 0 && req.id.is_some() && archive.is_none() => {
            let params = req.params.unwrap_or(b"[]");
            if super::topics::mergeable(req.method().unwrap_or_default(), params).is_some() {
                return super::topics::subscribe(ctx, to, s, req);
            }
        }
        _ => {}
    }
    let retryable =
        ctx.route && archive.is_none() && crate::call::retry::may_need_archive(&sh.router, req);
    send_one(sh, to, s, req, tag, retryable, ctx.chain);
}

/// A request admitted and checked: answered from the cache (or an identical
/// request on its way), or sent on `to`. Its id is in flight either way.
fn send_one(
    sh: &Rc<Shared>,
    to: &Rc<Conn>,
    s: &Rc<Session>,
    req: &Request<'_>,
    tag: u64,
    retryable: bool,
    chain: &dyn crate::route::ChainView,
) {
    if let Some(id) = req.id {
        s.inflight.borrow_mut().add(id, 0);
    }
    if let Some(plan) = sh.plan(req, chain) {
        return cached(sh, to, s, req, tag, plan, retryable);
    }
    crate::stats::request(s.cfg.chain, req, Outcome::Forwarded);
    let retry = retryable.then(|| Box::from(req.raw));
    sh.send_kept(to, Rc::downgrade(s), req, tag, retry, None);
}

/// A pinned session's request that goes by this core's shared connections:
/// one the cache may answer, or one of a batch split by where its requests
/// go. The session's own connection never sees it; its node is `node`.
/// `route`: archive-bound requests go to an archive node's connection.
pub fn pinned(
    sh: &Rc<Shared>,
    node: usize,
    chain: &dyn crate::route::ChainView,
    route: bool,
    s: &Rc<Session>,
    req: &Request<'_>,
    tag: u64,
) {
    let archive = (route && sh.router.route_request(req, chain) == Target::Archive)
        .then(|| sh.archive_for(None))
        .flatten();
    let to = archive.unwrap_or_else(|| sh.conn(node));
    let retryable =
        route && to.node == node && crate::call::retry::may_need_archive(&sh.router, req);
    send_one(sh, &to, s, req, tag, retryable, chain);
}

/// A cacheable request: answered from the cache, or by an identical one
/// already on its way (or being looked up in the cluster's second level),
/// or fetched (with the finalized hash filled in where the plan says) for
/// every request that waits for it.
fn cached(
    sh: &Rc<Shared>,
    to: &Rc<Conn>,
    s: &Rc<Session>,
    req: &Request<'_>,
    tag: u64,
    plan: crate::cache::Plan,
    retryable: bool,
) {
    let answers = sh.answers.as_ref().expect("a plan comes from the cache");
    let id = req.id.expect("cacheable requests have ids");
    let me: Rc<dyn crate::call::Reply> = s.clone();
    match answers.ask(&plan, Waiter::new(Rc::downgrade(&me), id, tag)) {
        Found::Hit(head) => {
            crate::stats::request(s.cfg.chain, req, Outcome::Cached);
            s.reply(tag, id, &crate::cache::answer_parts(&head, id));
        }
        Found::Joined => crate::stats::request(s.cfg.chain, req, Outcome::Joined),
        Found::Fetch => {
            crate::stats::request(s.cfg.chain, req, Outcome::Forwarded);
            // The request as sent: the client's, or one with the params filled in.
            let mut sent = Vec::with_capacity(req.raw.len() + 80);
            req.write(&mut sent, Some(id), plan.params.as_deref().or(req.params));
            let asked = match plan.params {
                Some(_) => Asked::Filled(Box::from(req.raw)),
                None => Asked::AsSent,
            };
            let (weak, to) = (Rc::downgrade(sh), to.clone());
            let kept = Kept {
                key: plan.key.clone().into_boxed_slice(),
                keep: crate::call::Keep::of(&plan, 0),
                asked,
            };
            answers.fetch(&plan, move || {
                if let Some(sh) = weak.upgrade() {
                    fetch(&sh, &to, &sent, retryable, kept);
                }
            });
        }
    }
}

/// Ask the node for a cacheable request's answer, for whoever waits for it
/// (the request is no session's: its answer lands for every waiter).
fn fetch(sh: &Rc<Shared>, to: &Rc<Conn>, sent: &[u8], retryable: bool, kept: Kept) {
    let to = match to.state() {
        super::conn::State::Dead => sh.conn(to.node),
        _ => to.clone(),
    };
    let call = Call::parse(sent);
    let Some(req) = call.single() else {
        return;
    };
    let retry = retryable.then(|| Box::from(sent));
    sh.send_kept(&to, Weak::new(), req, 0, retry, Some(Box::new(kept)));
}

/// Checks of one request before it goes out: subscription ownership, then
/// the per-session limits. `Some(answer)` refuses it (`None`: no id, no answer).
fn refuse(ctx: &Ctx<'_>, s: &Session, req: &Request<'_>) -> Option<Option<String>> {
    if let Some(sub) = req.sub.names() {
        let m = member(s);
        let foreign = |c: &Conn| {
            c.subs
                .borrow()
                .get(sub)
                .is_some_and(|w| !std::ptr::eq(w.as_ptr(), s))
        };
        let on_archive = m.archive.borrow().as_ref().is_some_and(|a| foreign(a));
        if foreign(&m.conn()) || on_archive {
            let answer = error(
                req.reply_id(),
                code::INVALID_PARAMS,
                "Invalid subscription id",
                None,
            );
            return Some(req.id.map(|_| answer));
        }
    }
    let (adm, _) = ctx.admission?;
    crate::relay::limits::check(s, adm, req)
}
