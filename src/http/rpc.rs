//! The HTTP transport of the call pipeline ([`crate::call`]): a call read
//! and admitted once, each of its requests on its way, and one answer back.
//!
//! - A call the cache has nothing to do with and whose requests all go to
//!   one role is POSTed as it came to a node of that role (the node's own
//!   status and body come back); then each answer a pruned node gave
//!   "state is gone" is asked of an archive node, once, and put in its place.
//! - Otherwise it is split: what the cache may answer goes by the core's
//!   [`crate::call::Answers`] (kept, joined to an identical request on its
//!   way over HTTP or WebSocket, or fetched and kept for every waiter), and
//!   the rest goes as one sub-batch per role; the answers come back as one
//!   array in the client's order ([`crate::call::Gather`]).
//!
//! Each POST to a node: a node that cannot be reached is skipped for the
//! next of its role; one that took the request and did not answer is not
//! (the request may have had effects). A safe read late on its node is
//! asked of a second node too ([`crate::hedge`]); the first answer wins,
//! and winning says nothing against the node it beat.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use crate::cache::Plan;
use crate::call::{Found, Gather, Keep, Reply, Waiter};
use crate::config::Role;
use crate::jsonrpc::error::{code, error};
use crate::jsonrpc::{Call, Request};
use crate::route::Target;
use crate::stats::Outcome;
use crate::upstream::http::{self as rpc_http, Failure, NodeAnswer};
use crate::worker::Worker;

/// What an HTTP call's node requests are made with: its chain, the path the
/// node sees, and what it is told of the client.
#[derive(Clone)]
struct Ask {
    worker: Rc<Worker>,
    path: Rc<str>,
    forwarded: Rc<[u8]>,
}

/// Why no node answered: an HTTP status, and the reason.
type Failed = (u16, String);

/// The answer to one HTTP call (status and body).
pub async fn answer(
    worker: &Rc<Worker>,
    path: &str,
    call: &Call<'_>,
    forwarded: &[u8],
) -> (u16, Vec<u8>) {
    let ask = Ask {
        worker: worker.clone(),
        path: path.into(),
        forwarded: forwarded.into(),
    };
    let chain = &*worker.chain;
    let plans: Vec<Option<Plan>> = call
        .requests()
        .map(|r| {
            worker
                .answers
                .as_ref()
                .and_then(|a| crate::cache::plan(&a.cache.rules, r, chain))
        })
        .collect();
    let targets: Vec<Target> = call
        .requests()
        .map(|r| worker.router.route_request(r, chain))
        .collect();
    let one_role = targets.windows(2).all(|t| t[0] == t[1]);
    if plans.iter().all(Option::is_none) && one_role {
        crate::stats::calls(worker.session.chain, call, Outcome::Forwarded);
        return whole(
            &ask,
            call,
            targets.first().copied().unwrap_or(Target::Pruned),
        )
        .await;
    }
    split(&ask, call, plans, &targets).await
}

/// The call as it came, to a node of `target`'s role; a pruned node's
/// "state is gone" answers asked again of an archive node.
async fn whole(ask: &Ask, call: &Call<'_>, target: Target) -> (u16, Vec<u8>) {
    let w = &ask.worker;
    let reads = w.hedging.arm(call.requests());
    let (node, answer) = match post(ask, call.raw, rpc_http::role_for(target), reads).await {
        Ok(a) => a,
        Err(failed) => return errors_for(call, failed),
    };
    let role = w.pool.nodes()[node].role;
    if answer.status != 200 || role == Role::Archive {
        return (answer.status, answer.body);
    }
    let retry = |r: &Request<'_>| crate::call::retry::may_need_archive(&w.router, r);
    match call.single() {
        Some(req)
            if retry(req) && crate::call::retry::on_archive(&w.router, role, &answer.body) =>
        {
            crate::debug!("pruned node lacks the state; retrying on archive");
            match post(ask, call.raw, Role::Archive, reads).await {
                Ok((_, again)) => (again.status, again.body),
                Err(_) => (answer.status, answer.body),
            }
        }
        Some(_) => (answer.status, answer.body),
        None => (
            200,
            on_archive_where_gone(ask, call, answer.body, role).await,
        ),
    }
}

/// A batch's answer from a pruned node, with each "state is gone" answer
/// to a request that names a block replaced by an archive node's.
async fn on_archive_where_gone(ask: &Ask, call: &Call<'_>, body: Vec<u8>, role: Role) -> Vec<u8> {
    let w = &ask.worker;
    let asked: Vec<&Request<'_>> = call.requests().filter(|r| r.id.is_some()).collect();
    let ids: Vec<&[u8]> = asked.iter().map(|r| r.id.expect("filtered")).collect();
    let answers = crate::call::batch::match_answers(&body, &ids);
    let gone: Vec<usize> = (0..asked.len())
        .filter(|&i| crate::call::retry::may_need_archive(&w.router, asked[i]))
        .filter(|&i| answers[i].is_some_and(|a| crate::call::retry::on_archive(&w.router, role, a)))
        .collect();
    if gone.is_empty() {
        return body;
    }
    crate::debug!(
        "pruned node lacks the state for {} requests of a batch; retrying on archive",
        gone.len()
    );
    let mut again = Vec::new();
    crate::call::batch::write_batch(&mut again, gone.iter().map(|&i| asked[i]));
    let Ok((_, archive)) = post(ask, &again, Role::Archive, false).await else {
        return body;
    };
    let gone_ids: Vec<&[u8]> = gone.iter().map(|&i| ids[i]).collect();
    let better = crate::call::batch::match_answers(&archive.body, &gone_ids);
    let mut g = Gather::new(&ids);
    for (i, a) in answers.iter().enumerate() {
        let replaced = gone.iter().position(|&j| j == i).and_then(|k| better[k]);
        if let Some(a) = replaced.or(*a) {
            g.fill(i, &[a]);
        }
    }
    g.finish()
}

/// The places of a split call's answers, filled by its parts as they come
/// (the cache's, joined flights', the nodes'); `done` when all are in.
struct Places {
    gather: RefCell<Gather>,
    done: crate::signal::Signal,
    /// A part had an answer from somewhere (else the call's status is a failure's).
    answered: Cell<bool>,
    failed: Cell<Option<u16>>,
}

impl Reply for Places {
    fn answer(&self, tag: u64, _id: &[u8], parts: &[&[u8]]) {
        if self.gather.borrow_mut().fill(tag as usize, parts) {
            self.done.notify();
        }
    }
}

impl Places {
    fn answered(&self, slot: usize, parts: &[&[u8]]) {
        self.answered.set(true);
        self.answer(slot as u64, b"", parts);
    }

    fn failed(&self, slot: usize, id: &[u8], (status, why): &Failed) {
        self.failed.set(Some(*status));
        let e = error(
            id,
            code::INTERNAL_ERROR,
            &format!("upstream unavailable ({why})"),
            None,
        );
        self.answer(slot as u64, id, &[e.as_bytes()]);
    }
}

/// A call split by where its requests go: the cache's, and one sub-batch per role.
async fn split(
    ask: &Ask,
    call: &Call<'_>,
    plans: Vec<Option<Plan>>,
    targets: &[Target],
) -> (u16, Vec<u8>) {
    let w = &ask.worker;
    let ids: Vec<&[u8]> = call.ids().collect();
    let places = Rc::new(Places {
        gather: RefCell::new(Gather::new(&ids)),
        done: Default::default(),
        answered: Cell::new(false),
        failed: Cell::new(None),
    });
    let me: Rc<dyn Reply> = places.clone();
    // By role: (the requests, their places); notifications have none.
    let mut groups: [(Vec<&Request<'_>>, Vec<Option<usize>>); 2] = Default::default();
    let mut slot = 0;
    for ((req, plan), target) in call.requests().zip(plans).zip(targets) {
        let place = req.id.map(|_| {
            slot += 1;
            slot - 1
        });
        match (plan, place) {
            (Some(plan), Some(place)) => cached(ask, &places, &me, req, place, plan, *target),
            _ => {
                crate::stats::request(w.session.chain, req, Outcome::Forwarded);
                let g = &mut groups[usize::from(*target == Target::Archive)];
                g.0.push(req);
                g.1.push(place);
            }
        }
    }
    for (i, (reqs, places_of)) in groups.into_iter().enumerate() {
        if reqs.is_empty() {
            continue;
        }
        let mut body = Vec::new();
        crate::call::batch::write_batch(&mut body, reqs.iter().copied());
        let sub = Call::parse(&body);
        let role = if i == 1 { Role::Archive } else { Role::Pruned };
        let (ask, places, ids) = (
            ask.clone(),
            places.clone(),
            reqs.iter()
                .map(|r| r.id.map(Box::<[u8]>::from))
                .collect::<Vec<_>>(),
        );
        let reads = w.hedging.arm(sub.requests());
        crate::task::spawn(
            "an HTTP sub-batch",
            async move {
                let call = Call::parse(&body);
                let answer = match post(&ask, &body, role, reads).await {
                    Ok((node, a)) => {
                        let role = ask.worker.pool.nodes()[node].role;
                        Ok(on_archive_where_gone(&ask, &call, a.body, role).await)
                    }
                    Err(failed) => Err(failed),
                };
                let asked: Vec<&[u8]> = ids.iter().flatten().map(|i| &**i).collect();
                let got = match &answer {
                    Ok(body) => crate::call::batch::match_answers(body, &asked),
                    Err(_) => vec![None; asked.len()],
                };
                let mut k = 0;
                for (id, place) in ids.iter().zip(&places_of) {
                    let (Some(id), Some(place)) = (id, place) else {
                        continue;
                    };
                    match (&answer, got[k]) {
                        (_, Some(a)) => places.answered(*place, &[a]),
                        (Err(failed), None) => places.failed(*place, id, failed),
                        (Ok(_), None) => {
                            let why = (
                                502,
                                "the node's answer to the batch left this request out".into(),
                            );
                            places.failed(*place, id, &why)
                        }
                    }
                    k += 1;
                }
            },
            || {},
        );
    }
    let wait = w.config.request_timeout * 2 + Duration::from_secs(1);
    while !places.gather.borrow().is_done() {
        let waited = monoio::time::timeout(wait, places.done.wait()).await;
        if waited.is_err() {
            let mut g = places.gather.borrow_mut();
            g.fail("no answer in time");
            break;
        }
    }
    let body = match ids.is_empty() {
        // Notifications only: nothing to answer (JSON-RPC 2.0 §6).
        true => Vec::new(),
        false => places.gather.borrow().finish(),
    };
    let status = match (places.answered.get(), places.failed.get()) {
        (false, Some(status)) => status,
        _ => 200,
    };
    match call.is_batch() {
        true => (status, body),
        // A single request: its answer alone.
        false => (
            status,
            places
                .gather
                .borrow()
                .answer(0)
                .unwrap_or_default()
                .to_vec(),
        ),
    }
}

/// A request the cache may answer, for place `place`: kept, joined, or
/// fetched from a node of `target`'s role for every request that waits.
fn cached(
    ask: &Ask,
    places: &Rc<Places>,
    me: &Rc<dyn Reply>,
    req: &Request<'_>,
    place: usize,
    plan: Plan,
    target: Target,
) {
    let w = &ask.worker;
    let answers = w.answers.clone().expect("a plan comes from the cache");
    let id = req.id.expect("cacheable requests have ids");
    match answers.ask(&plan, Waiter::new(Rc::downgrade(me), id, place as u64)) {
        Found::Hit(head) => {
            crate::stats::request(w.session.chain, req, Outcome::Cached);
            places.answered(place, &crate::cache::answer_parts(&head, id));
        }
        Found::Joined => {
            places.answered.set(true);
            crate::stats::request(w.session.chain, req, Outcome::Joined);
        }
        Found::Fetch => {
            crate::stats::request(w.session.chain, req, Outcome::Forwarded);
            places.answered.set(true);
            let mut sent = Vec::with_capacity(req.raw.len() + 80);
            req.write(&mut sent, Some(id), plan.params.as_deref().or(req.params));
            let asked = plan.params.is_some().then(|| Box::<[u8]>::from(req.raw));
            let (ask, later) = (ask.clone(), answers.clone());
            answers.fetch(&plan.clone(), move || {
                crate::task::spawn(
                    "an HTTP fetch for the cache",
                    async move { fetch(&ask, &later, plan, sent, asked, target).await },
                    || {},
                );
            });
        }
    }
}

/// Fetch a cacheable request's answer (`sent`: as it goes to the node;
/// `asked`: as the client asked, when the cache filled in a block hash)
/// and land it for every request that waits for it.
async fn fetch(
    ask: &Ask,
    answers: &crate::call::Answers,
    plan: Plan,
    sent: Vec<u8>,
    asked: Option<Box<[u8]>>,
    target: Target,
) {
    let w = &ask.worker;
    let call = Call::parse(&sent);
    let reads = w.hedging.arm(call.requests());
    let mut keep = Keep::of(&plan, 0);
    let mut got = post(ask, &sent, rpc_http::role_for(target), reads).await;
    if let Ok((node, a)) = &got {
        let role = w.pool.nodes()[*node].role;
        let gone = call
            .single()
            .is_some_and(|r| crate::call::retry::may_need_archive(&w.router, r))
            && crate::call::retry::on_archive(&w.router, role, &a.body);
        if gone {
            got = post(ask, &sent, Role::Archive, reads).await;
        } else if let (Some(asked), true) =
            (&asked, crate::jsonrpc::member(&a.body, b"error").is_some())
        {
            // The node does not know the finalized hash filled in (it is a
            // few blocks behind): asked as the client asked, not kept.
            keep.not_the_keys = true;
            got = post(ask, asked, rpc_http::role_for(target), reads).await;
        }
    }
    match got {
        Ok((node, a)) => {
            keep.node_final = w.pool.health().finalized_of(node);
            let id_at = crate::jsonrpc::member(&a.body, b"id").map(|id| {
                let at = crate::jsonrpc::offset_in(&a.body, id);
                at..at + id.len()
            });
            match id_at {
                Some(at) if crate::jsonrpc::kind(&a.body) == crate::jsonrpc::Kind::Object => {
                    answers.land(&plan.key, &a.body, at, keep);
                }
                _ => answers.fail(&plan.key, "the node's answer named no request"),
            }
        }
        Err((_, why)) => answers.fail(&plan.key, &format!("upstream unavailable ({why})")),
    }
}

/// POST `body` to a node of `role` (any node when none of it serves),
/// hedged when `reads` allows: the node that answered, and its answer.
async fn post(
    ask: &Ask,
    body: &[u8],
    role: Role,
    reads: bool,
) -> Result<(usize, NodeAnswer), Failed> {
    let w = &ask.worker;
    let pool = &w.pool;
    let timeout = w.config.request_timeout;
    let max = w.config.limits.max_answer_bytes as usize;
    // Each answer's time is the node's response time (a histogram per node).
    let forward = |index| async move {
        let start = std::time::Instant::now();
        let answer = rpc_http::forward(
            pool,
            &w.http,
            index,
            &ask.path,
            body,
            &ask.forwarded,
            max,
            timeout,
        );
        let answer = answer.await;
        if answer.is_ok() {
            pool.health()
                .record_latency(index, crate::health::Timed::Http, start.elapsed());
        }
        answer
    };
    let mut tried = vec![false; pool.nodes().len()];
    let mut failed = (502, String::from("no upstream node"));
    while let Some(first) = pool.pick_role(role, &tried) {
        tried[first] = true;
        let delay = reads
            .then(|| w.hedging.delay(pool.health().estimate(first), timeout / 2))
            .flatten();
        let (index, answered) = match delay {
            None => (first, forward(first).await),
            Some(delay) => {
                let second = || pool.pick_role(role, &tried).filter(|_| w.hedging.take());
                hedged(first, delay, second, &forward, pool.health()).await
            }
        };
        tried[index] = true;
        let name = pool.nodes()[index].public_name();
        match answered {
            Ok(a) => return Ok((index, a)),
            Err(Failure::NotSent(e)) => failed = (502, format!("{name}: {e}")),
            Err(e @ Failure::TimedOut(_)) => {
                crate::warn!("{name}: {e}");
                return Err((504, format!("{name}: {e}")));
            }
            Err(e) => return Err((502, format!("{name}: {e}"))),
        }
    }
    Err(failed)
}

/// Ask node `first`; if it has not answered within `delay`, ask the node
/// `second` gives too (if any: it checks the hedge budget), and take the
/// first answer (the later one is dropped, its connection closed). Returns
/// the node that answered and its answer.
async fn hedged<F, Fut>(
    first: usize,
    delay: Duration,
    second: impl FnOnce() -> Option<usize>,
    forward: &F,
    health: &crate::health::Health,
) -> (usize, Result<NodeAnswer, Failure>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<NodeAnswer, Failure>>,
{
    let mut a = std::pin::pin!(forward(first));
    monoio::select! {
        r = &mut a => return (first, r),
        _ = monoio::time::sleep(delay) => {}
    }
    let Some(other) = second() else {
        return (first, a.await);
    };
    let mut b = std::pin::pin!(forward(other));
    let (winner, r) = monoio::select! {
        r = &mut a => (first, r),
        r = &mut b => (other, r),
    };
    // A failure is not an answer: the other may still give one.
    let (winner, r) = match (winner == first, r) {
        (_, Ok(answer)) => (winner, Ok(answer)),
        (true, Err(_)) => (other, b.await),
        (false, Err(_)) => (first, a.await),
    };
    // A copy that answered first is no evidence against the first node
    // (it was faster this once); its timeout or error would have been.
    let won = winner == other && r.is_ok();
    health.hedged(first, other, won, false);
    (winner, r)
}

/// No node answered: a JSON-RPC error for each request, with its id.
fn errors_for(call: &Call<'_>, (status, why): Failed) -> (u16, Vec<u8>) {
    let message = format!("upstream unavailable ({why})");
    let ids = call.requests().map(|r| r.reply_id());
    let out = crate::jsonrpc::error::errors(ids, call.is_batch(), code::INTERNAL_ERROR, &message)
        .unwrap_or_else(|| error(b"null", code::INTERNAL_ERROR, &message, None));
    (status, out.into_bytes())
}
