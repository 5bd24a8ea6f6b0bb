//! A client's message onto a shared connection: checked (JSON, admission,
//! subscription ownership, per-session limits), then each request's id
//! replaced by one unique on the connection, remembered to put the client's
//! back on the answer. A batch goes out as one array.

use std::rc::{Rc, Weak};

use crate::jsonrpc::error::{code, error};
use crate::jsonrpc::{call::unsubscribe_method, Call, Kind, Request, Sub};
use crate::relay::Session;
use crate::route::Target;
use crate::stats::Outcome;
use crate::ws::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::ws::mask::apply_mask;

use super::conn::{Asked, Conn, Kept, MustBeFinal, SubCall, Waiting};
use super::{member, Ctx};

/// One whole text message from the client.
pub fn on_request(ctx: &Ctx<'_>, s: &Rc<Session>, msg: &[u8]) {
    if !s.closing.side(crate::relay::Which::Client).takes_data() {
        return;
    }
    // Read once, strictly: what is not JSON with one meaning is answered
    // here (the node would answer it with `"id":null`, which maps back to
    // nobody); each request that goes out is what this reading says.
    let call = Call::parse(msg);
    if let Some(e) = call.unreadable {
        s.send_text(error(b"null", code::PARSE_ERROR, e.reason(), None).as_bytes());
        return;
    }
    if let Some((adm, ip)) = ctx.admission {
        let now = std::time::Instant::now();
        if let Err((refusal, answer)) = adm.check_call(ip, &call, now, s.key.as_deref()) {
            crate::debug!("refused a call from {ip}: {refusal:?}");
            crate::stats::calls(s.cfg.chain, &call, Outcome::Refused);
            if let Some(a) = answer {
                s.send_text(a.as_bytes());
            }
            return;
        }
    }
    let m = member(s);
    let archive = if ctx.route && ctx.shared.router.route_call(&call, ctx.chain) == Target::Archive
    {
        ctx.shared.archive_for(s)
    } else {
        None
    };
    // A subscription call goes where its subscription lives; a new one to a
    // connection with room (nodes cap subscriptions per connection).
    let sub_conn = match call.single().map(|r| r.sub) {
        Some(Sub::Opens)
            if m.conn().subscription_load() >= ctx.shared.settings.max_subscriptions.max(1) =>
        {
            Some(ctx.shared.conn(m.conn().node))
        }
        Some(Sub::Ends(Some(id)) | Sub::Uses(Some(id))) => m
            .subs
            .borrow()
            .iter()
            .find(|(_, sub, _)| &**sub == id)
            .map(|(c, _, _)| c.clone()),
        _ => None,
    };
    let home = m.conn();
    let to = archive.as_ref().or(sub_conn.as_ref()).unwrap_or(&home);
    // Every connection to the node is full and no other may open (a
    // merged stream costs the node nothing more: it joins).
    if let (Some(req), Some(c)) = (call.single(), &sub_conn) {
        let merged = || {
            let params = req.params.unwrap_or(b"[]");
            super::topics::mergeable(req.method().unwrap_or_default(), params).is_some()
        };
        let full = c.subscription_load() >= ctx.shared.settings.max_subscriptions.max(1);
        if req.sub == Sub::Opens && full && !merged() {
            crate::stats::request(s.cfg.chain, req, Outcome::Refused);
            let data = r#"{"limit":"pool.shared_max_connections"}"#;
            if let Some(id) = req.id {
                s.send_text(
                    error(id, code::LIMIT_EXCEEDED, "limit exceeded", Some(data)).as_bytes(),
                );
            }
            return;
        }
    }
    match call.kind {
        Kind::Object => {
            let req = call.single().expect("an object is one request");
            if let Some(answer) = refuse(ctx, s, req) {
                crate::stats::calls(s.cfg.chain, &call, Outcome::Refused);
                if let Some(a) = answer {
                    s.send_text(a.as_bytes());
                }
                return;
            }
            // Streams the same for everyone: one node subscription per topic.
            match req.sub {
                Sub::Ends(Some(sub)) if super::topics::unsubscribe_call(s, req, sub) => {
                    crate::stats::request(s.cfg.chain, req, Outcome::Cached);
                    return;
                }
                // Another session's merged subscription is not this one's to end.
                Sub::Ends(Some(sub)) if super::topics::known(&home, sub) => {
                    crate::stats::request(s.cfg.chain, req, Outcome::Refused);
                    if let Some(id) = req.id {
                        let e = error(id, code::INVALID_PARAMS, "Invalid subscription id", None);
                        s.send_text(e.as_bytes());
                    }
                    return;
                }
                Sub::Opens if req.id.is_some() && archive.is_none() => {
                    let params = req.params.unwrap_or(b"[]");
                    if super::topics::mergeable(req.method().unwrap_or_default(), params).is_some()
                    {
                        return super::topics::subscribe(ctx, to, s, req);
                    }
                }
                _ => {}
            }
            if let Some(id) = req.id {
                s.inflight.borrow_mut().add(id, 0);
            }
            let retryable =
                ctx.route && archive.is_none() && ctx.shared.router.retryable_call(&call);
            if let Some(cache) = ctx.shared.cache.as_ref() {
                if let Some(plan) = crate::cache::plan(&cache.rules, req, ctx.chain) {
                    return cached(&ctx.shared, to, s, req, plan, retryable);
                }
            }
            crate::stats::calls(s.cfg.chain, &call, Outcome::Forwarded);
            let retry = retryable.then(|| Box::from(req.raw));
            ctx.shared.send_kept(to, s, req, 0, retry, None);
        }
        Kind::Batch => send_batch(ctx, to, s, &call),
        Kind::Other => {
            s.send_text(error(b"null", code::INVALID_REQUEST, "Invalid Request", None).as_bytes());
        }
    }
}

/// A pinned session's request, if the cache may answer it: answered from
/// it, or by an identical request on its way, or sent on this core's shared
/// connection to the session's node (`node`), whose answer fills it. The
/// session's own connection never sees it. Returns false when the cache has
/// nothing to do with it (it goes the pinned way).
pub fn cache_pinned(
    sh: &Rc<super::Shared>,
    node: usize,
    chain: &dyn crate::route::ChainView,
    s: &Rc<Session>,
    req: &Request<'_>,
) -> bool {
    let Some(cache) = sh.cache.as_ref() else {
        return false;
    };
    let Some(plan) = crate::cache::plan(&cache.rules, req, chain) else {
        return false;
    };
    let id = req.id.expect("cacheable requests have ids");
    s.inflight.borrow_mut().add(id, 0);
    let to = sh.conn(node);
    cached(sh, &to, s, req, plan, false);
    true
}

/// A cacheable request: answered from the cache, or by an identical one
/// already on its way (or being looked up in the cluster's second level),
/// or sent (with the finalized hash filled in where the plan says) with its
/// answer to be kept.
fn cached(
    sh: &Rc<super::Shared>,
    to: &Rc<Conn>,
    s: &Rc<Session>,
    req: &Request<'_>,
    plan: crate::cache::Plan,
    retryable: bool,
) {
    let cache = sh.cache.as_ref().expect("a plan comes from the cache");
    let id = req.id.expect("cacheable requests have ids");
    if let Some(head) = cache.get(&plan.key, std::time::Instant::now()) {
        crate::stats::request(s.cfg.chain, req, Outcome::Cached);
        super::answer::deliver(s, &crate::cache::answer_parts(&head, id));
        s.answered(id);
        return;
    }
    if sh.join_flight(&plan.key, s, id) {
        crate::stats::request(s.cfg.chain, req, Outcome::Joined);
        return;
    }
    if plan.lasting && look_up(sh, to, s, req, &plan, retryable) {
        return;
    }
    crate::stats::request(s.cfg.chain, req, Outcome::Forwarded);
    forward(sh, to, s, req, plan, retryable, Vec::new());
}

/// Ask the cluster's second level for a lasting answer the first missed.
/// The request (and identical ones meanwhile: they join it) waits for the
/// answer: served from it, or sent to the node as usual when it has none.
/// False when there is no second level or it could not be asked.
fn look_up(
    sh: &Rc<super::Shared>,
    to: &Rc<Conn>,
    s: &Rc<Session>,
    req: &Request<'_>,
    plan: &crate::cache::Plan,
    retryable: bool,
) -> bool {
    let Some(second) = sh.second.as_ref() else {
        return false;
    };
    let (shared, to, plan) = (Rc::downgrade(sh), to.clone(), plan.clone());
    let raw: Box<[u8]> = Box::from(req.raw);
    let key: Box<[u8]> = plan.key.clone().into_boxed_slice();
    let asked = second.get(&key, move |head| {
        let Some(sh) = shared.upgrade() else {
            return;
        };
        let waiting = sh.lookups.borrow_mut().remove(&plan.key[..]);
        let waiting = waiting.unwrap_or_default().into_iter();
        let mut live = waiting.filter_map(|(s, id)| s.upgrade().map(|s| (s, id)));
        let Some((first, id)) = live.next() else {
            if head.is_none() {
                if let Some(second) = sh.second.as_ref() {
                    second.forget(&plan.key);
                }
            }
            return;
        };
        let call = Call::parse(&raw);
        let Some(req) = call.single() else {
            return;
        };
        if let Some(head) = head {
            let head: Rc<[u8]> = head.into();
            if let Some(cache) = sh.cache.as_ref() {
                cache.insert_head(&plan.key, head.clone(), plan.ttl);
            }
            crate::stats::request(first.cfg.chain, req, Outcome::Cached);
            for (s, id) in std::iter::once((first, id)).chain(live) {
                super::answer::deliver(&s, &crate::cache::answer_parts(&head, &id));
                s.answered(&id);
            }
            return;
        }
        // None kept: the first still waiting asks the node (as itself).
        let followers = live.map(|(s, id)| (Rc::downgrade(&s), id)).collect();
        let mut own = Vec::new();
        if req.id != Some(&id[..]) {
            req.write(&mut own, Some(&id), req.params);
        }
        let own_call = (!own.is_empty()).then(|| Call::parse(&own));
        let req = own_call.as_ref().and_then(|c| c.single()).unwrap_or(req);
        let to = match to.state() {
            super::conn::State::Dead => sh.conn(to.node),
            _ => to,
        };
        crate::stats::request(first.cfg.chain, req, Outcome::Forwarded);
        forward(&sh, &to, &first, req, plan, retryable, followers);
    });
    if asked {
        let id = Box::from(req.id.expect("cacheable requests have ids"));
        sh.lookups
            .borrow_mut()
            .insert(key, vec![(Rc::downgrade(s), id)]);
    }
    asked
}

/// Send a cacheable request that nothing kept, its answer to be kept and
/// given to `followers` too.
fn forward(
    sh: &Rc<super::Shared>,
    to: &Rc<Conn>,
    s: &Rc<Session>,
    req: &Request<'_>,
    plan: crate::cache::Plan,
    retryable: bool,
    followers: Vec<super::conn::Follower>,
) {
    let id = req.id.expect("cacheable requests have ids");
    let kept = Box::new(Kept {
        key: plan.key.clone().into_boxed_slice(),
        ttl: plan.ttl,
        must_be_final: match (plan.final_in_answer, plan.at) {
            (true, _) => MustBeFinal::AnswersBlock,
            (false, Some(n)) => MustBeFinal::Block(n),
            (false, None) => MustBeFinal::Nothing,
        },
        followers,
        asked: match plan.params {
            Some(_) => Asked::Filled(Box::from(req.raw)),
            None => Asked::AsSent,
        },
        lasting: plan.lasting,
    });
    // The request as sent: the client's, or one with the params filled in.
    let filled = plan.params.as_ref().map(|params| {
        let mut m = Vec::with_capacity(req.raw.len() + params.len() + 48);
        req.write(&mut m, Some(id), Some(params));
        m
    });
    let sent_call = filled.as_deref().map(Call::parse);
    let sent = sent_call.as_ref().and_then(|c| c.single()).unwrap_or(req);
    let retry = retryable.then(|| Box::from(sent.raw));
    sh.send_kept(to, s, sent, 0, retry, Some(kept));
}

/// Checks of one request before it goes out: a valid id, subscription
/// ownership, then the per-session limits. `Some(answer)` refuses it
/// (`None`: no id, no answer).
fn refuse(ctx: &Ctx<'_>, s: &Session, req: &Request<'_>) -> Option<Option<String>> {
    if let Some(why) = req.invalid {
        // Answered even without an id: it may have one nobody can tell.
        return Some(Some(error(
            req.reply_id(),
            code::INVALID_REQUEST,
            why,
            None,
        )));
    }
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

/// What a request does to the subscriptions the connection follows.
fn sub_call(req: &Request<'_>) -> SubCall {
    match req.sub {
        Sub::Ends(Some(sub)) => SubCall::Unsubscribe(Box::from(sub)),
        Sub::Opens => req
            .method()
            .and_then(|m| std::str::from_utf8(m).ok())
            .and_then(unsubscribe_method)
            .map_or(SubCall::Plain, |m| SubCall::Subscribe(m.into_boxed_str())),
        _ => SubCall::Plain,
    }
}

/// Send one request with its id replaced; remember how to answer it.
/// Returns the id it has on the connection (none for a notification).
pub fn send_request(
    to: &Conn,
    s: &Rc<Session>,
    req: &Request<'_>,
    batch: u32,
    retry: Option<Box<[u8]>>,
    kept: Option<Box<Kept>>,
) -> Option<u64> {
    let Some(id) = req.id else {
        // A notification: no answer to map.
        to.send_parts(&req.parts(None, req.params));
        return None;
    };
    let gid = to.next_id();
    let mut digits = [0u8; 20];
    to.send_parts(&req.parts(Some(decimal(gid, &mut digits)), req.params));
    register(to, s, gid, id, batch, sub_call(req), retry, kept);
    Some(gid)
}

/// Send one request (with an id) whose answer is handled as `call` says.
pub fn send_as(to: &Conn, s: &Rc<Session>, req: &Request<'_>, call: SubCall) {
    let Some(id) = req.id else {
        return;
    };
    let gid = to.next_id();
    let mut digits = [0u8; 20];
    to.send_parts(&req.parts(Some(decimal(gid, &mut digits)), req.params));
    register(to, s, gid, id, 0, call, None, None);
}

#[allow(clippy::too_many_arguments)]
fn register(
    to: &Conn,
    s: &Rc<Session>,
    gid: u64,
    id: &[u8],
    batch: u32,
    call: SubCall,
    retry: Option<Box<[u8]>>,
    kept: Option<Box<Kept>>,
) {
    to.pending.borrow_mut().insert(
        gid,
        Waiting {
            session: Rc::downgrade(s),
            id: Box::from(id),
            batch,
            call,
            retry,
            kept,
            hedging: Default::default(),
        },
    );
}

/// A batch goes out as one array with every id replaced, and its answers
/// come back to the client as one array.
fn send_batch(ctx: &Ctx<'_>, to: &Conn, s: &Rc<Session>, call: &Call<'_>) {
    let batch = member(s).next_batch();
    let tracker = s.inflight.borrow_mut().next_batch();
    let mut body: Vec<u8> = Vec::with_capacity(call.raw.len() + 16);
    let mut local: Vec<String> = Vec::new();
    let mut forwarded = 0;
    let mut gids = Vec::new();
    body.push(b'[');
    for req in call.requests() {
        if let Some(answer) = refuse(ctx, s, req) {
            crate::stats::request(s.cfg.chain, req, Outcome::Refused);
            local.extend(answer);
            continue;
        }
        crate::stats::request(s.cfg.chain, req, Outcome::Forwarded);
        if forwarded > 0 {
            body.push(b',');
        }
        forwarded += 1;
        match req.id {
            Some(id) => {
                let gid = to.next_id();
                gids.push(gid);
                req.write(&mut body, Some(decimal(gid, &mut [0u8; 20])), req.params);
                s.inflight.borrow_mut().add(id, tracker);
                register(to, s, gid, id, batch, sub_call(req), None, None);
            }
            None => req.write(&mut body, None, req.params),
        }
    }
    body.push(b']');
    if forwarded == 0 && local.is_empty() {
        // `[]`: an empty batch is an invalid request (JSON-RPC 2.0 §6).
        local.push(error(
            b"null",
            code::INVALID_REQUEST,
            "Invalid Request",
            None,
        ));
    }
    if !local.is_empty() {
        // Answered here: those of the batch the gateway refused, as one array.
        s.send_text(format!("[{}]", local.join(",")).as_bytes());
    }
    if forwarded > 0 {
        to.send_parts(&[&body]);
        if !gids.is_empty() {
            to.batches.borrow_mut().push_back(gids);
        }
    }
}

/// Send the gateway's own request `method(params)` (params raw JSON); its
/// answer is handled as `call` says (`Plain`: dropped).
pub fn send_own(c: &Conn, method: &[u8], params: &[u8], call: SubCall) {
    let id = c.next_id();
    let mut digits = [0u8; 20];
    c.pending.borrow_mut().insert(
        id,
        Waiting {
            session: Weak::new(),
            id: Box::from(&b"null"[..]),
            batch: 0,
            call,
            retry: None,
            kept: None,
            hedging: Default::default(),
        },
    );
    c.send_parts(&[
        br#"{"jsonrpc":"2.0","id":"#,
        decimal(id, &mut digits),
        br#","method":""#,
        method,
        br#"","params":"#,
        params,
        b"}",
    ]);
}

/// Send `method(sub)` on behalf of a session that is gone; its answer is dropped.
pub fn unsubscribe(c: &Conn, sub: &[u8], method: &str) {
    let mut params = Vec::with_capacity(sub.len() + 2);
    params.push(b'[');
    params.extend_from_slice(sub);
    params.push(b']');
    send_own(c, method.as_bytes(), &params, SubCall::Plain);
}

/// Append a whole frame whose payload is `parts` joined.
pub fn frame_parts(out: &mut Vec<u8>, opcode: OpCode, parts: &[&[u8]], mask: Option<[u8; 4]>) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode,
        mask,
        payload_len: len as u64,
    };
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    out.reserve(n + len);
    out.extend_from_slice(&h[..n]);
    let start = out.len();
    for p in parts {
        out.extend_from_slice(p);
    }
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

/// `n` in decimal, written into `buf` (a gateway id, without a String per request).
pub(super) fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Where `part` (a subslice of `whole`) starts in it.
pub fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_decimal() {
        for n in [0, 7, 10, 12345, u64::MAX] {
            assert_eq!(decimal(n, &mut [0u8; 20]), n.to_string().as_bytes());
        }
    }
}
