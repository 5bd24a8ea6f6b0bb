//! One core's shared connections: which connection to a node a session
//! or request gets (a new one when all are full), what a cacheable
//! request's answer does when it lands, requests never answered, and a
//! reload's end of a generation's connections.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::io::{stop, Stop};
use crate::policy::AdmissionCtx;
use crate::relay::{Session, SessionConfig};
use crate::route::{ChainView, Router};
use crate::signal::Broadcast;
use crate::upstream::{NodeLease, Pool};
use crate::ws::codec::Limits as CodecLimits;

use super::conn::{self, Conn, State};
use super::member::member;

/// One core's shared connections, one slot per node.
pub struct Shared {
    pub(super) pool: Rc<Pool>,
    pub(super) router: Router,
    /// Live connections per node: usually one; another opens when every one
    /// carries `max_subscriptions` (nodes cap subscriptions per connection:
    /// Substrate's `--rpc-max-subscriptions-per-connection` is 1024).
    pub(super) slots: RefCell<Vec<Vec<Rc<Conn>>>>,
    pub settings: Settings,
    /// Process-wide counters (unmatched answers).
    pub(super) counts: std::sync::Arc<crate::policy::SharedCounts>,
    /// A reload made a newer generation: connections close once nothing
    /// is left on them (new sessions use the new generation's).
    pub(super) superseded: Cell<bool>,
    /// This core's kept answers and requests on their way, shared with
    /// HTTP and pinned sessions (`cache.enabled`).
    pub answers: Option<Rc<crate::call::Answers>>,
    /// The last subscription id given out for a merged subscription.
    pub(super) next_sub: Cell<u64>,
    /// Hedging as this core applies it (its one budget, shared with HTTP).
    pub hedging: crate::hedge::Hedging,
    /// Starts a new connection's task ([`super::io::start`]).
    start: Start,
    /// The follow hub of each node, if any of this core's clients follows
    /// it ([`super::follow`]); the last hub's serial; the follow gauges as
    /// last counted (node follows, client follows, pinned blocks).
    pub(super) hubs: RefCell<Vec<Option<Rc<RefCell<super::hub::Hub>>>>>,
    pub(super) hub_serial: Cell<u64>,
    pub(super) follow_census: Cell<[u64; 3]>,
}

/// How a connection's task is started (the connection's life is above
/// this room's data: [`super::io`]).
pub type Start = fn(&Rc<Shared>, &Rc<Conn>);

/// How shared connections are opened and kept.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// Ping the node this often.
    pub keepalive: Duration,
    /// Check the node's health this often (a node marked down loses its connection).
    pub health_every: Duration,
    pub codec: CodecLimits,
    pub max_head: usize,
    /// Subscriptions on one connection before another opens to the same node.
    pub max_subscriptions: usize,
    /// Connections to one node at most (`pool.shared_max_connections`).
    pub max_connections: usize,
    /// Requests outstanding this long with nothing read from the node: the
    /// connection is taken for lost (a hung node).
    pub request_timeout: Duration,
    /// A client follow's pin bounds.
    pub follow: super::hub::Limits,
}

/// What a session in shared mode needs besides its connection.
pub struct Ctx<'a> {
    pub shared: Rc<Shared>,
    pub cfg: SessionConfig,
    pub chain: &'a dyn ChainView,
    /// Route messages between pruned and archive nodes.
    pub route: bool,
    pub admission: Option<(&'a AdmissionCtx, IpAddr)>,
    /// The worker is shutting down.
    pub shutdown: &'a Broadcast,
    /// Holds the session's place in its node's connection count.
    pub lease: NodeLease,
    /// The API key it came with.
    pub key: Option<std::sync::Arc<crate::policy::keys::Key>>,
}

impl Shared {
    pub fn new(
        pool: Rc<Pool>,
        router: Router,
        settings: Settings,
        counts: std::sync::Arc<crate::policy::SharedCounts>,
        answers: Option<Rc<crate::call::Answers>>,
        hedging: crate::hedge::Hedging,
        start: Start,
    ) -> Rc<Shared> {
        let n = pool.nodes().len();
        Rc::new(Shared {
            pool,
            router,
            slots: RefCell::new(vec![Vec::new(); n]),
            settings,
            counts,
            superseded: Cell::new(false),
            answers,
            next_sub: Cell::new(0),
            hedging,
            start,
            hubs: RefCell::new(vec![None; n]),
            hub_serial: Cell::new(0),
            follow_census: Cell::new([0; 3]),
        })
    }

    /// The cache's plan for `req`, if the cache is on and may answer it.
    pub fn plan(
        &self,
        req: &crate::jsonrpc::Request<'_>,
        chain: &dyn ChainView,
    ) -> Option<crate::cache::Plan> {
        let answers = self.answers.as_ref()?;
        crate::cache::plan(&answers.cache.rules, req, chain)
    }

    /// Send a request (for `session`, or for the waiters of its cache key:
    /// `kept`); a single read may be hedged.
    pub fn send_kept(
        &self,
        to: &Rc<Conn>,
        session: Weak<Session>,
        req: &crate::jsonrpc::Request<'_>,
        tag: u64,
        retry: Option<Box<[u8]>>,
        kept: Option<Box<conn::Kept>>,
    ) {
        if let Some(gid) = conn::send_request(to, session, req, tag, retry, kept) {
            self.arm(to, gid, req);
        }
    }

    /// A request just sent on `to` as `gid`: if it is a read that may be
    /// hedged, when its hedge is due.
    pub(super) fn arm(&self, to: &Conn, gid: u64, req: &crate::jsonrpc::Request<'_>) {
        let sh = self;
        if sh.pool.nodes().len() < 2 || !sh.hedging.arm(std::iter::once(req)) {
            return;
        }
        let estimate = sh.pool.health().estimate(to.node);
        let Some(delay) = sh.hedging.delay(estimate, sh.settings.request_timeout / 2) else {
            return;
        };
        let now = std::time::Instant::now();
        if let Some(w) = to.pending.borrow_mut().get_mut(&gid) {
            w.hedging = conn::Hedging::Due(Box::from(req.raw), now);
        }
        let mut queue = to.hedge_queue.borrow_mut();
        let first = queue.is_empty();
        queue.push_back((now + delay, gid));
        drop(queue);
        if first {
            to.wake_timer();
        }
    }

    /// A cacheable request was answered by `node`: kept (by what that node
    /// has finalized), and given to every request that waits for it.
    pub(super) fn land(
        &self,
        node: usize,
        msg: &[u8],
        id_at: std::ops::Range<usize>,
        kept: conn::Kept,
    ) {
        let Some(answers) = self.answers.as_ref() else {
            return;
        };
        let mut keep = kept.keep;
        keep.node_final = self.pool.health().finalized_of(node);
        keep.not_the_keys = matches!(kept.asked, conn::Asked::Again);
        answers.land(&kept.key, msg, id_at, keep);
    }

    /// Requests `conn`'s node has not answered within the request timeout
    /// while it answered others (a node that answers nothing is found hung
    /// instead): each gets its error, its waiters too. The gateway's own
    /// requests, hedge copies and marks left by them are dropped.
    pub(super) fn sweep(&self, conn: &Rc<Conn>) {
        let epoch = conn.epoch.get().wrapping_add(1);
        conn.epoch.set(epoch);
        // A request sent during sweep k is 0-1 sweep old at sweep k+1.
        let timeout = self.settings.request_timeout.as_millis();
        let sweeps = timeout.div_ceil(conn::SWEEP.as_millis()) as u32 + 1;
        let overdue: Vec<conn::Waiting> = {
            let mut pending = conn.pending.borrow_mut();
            let old: Vec<u64> = pending
                .iter()
                .filter(|(_, w)| epoch.wrapping_sub(w.epoch) >= sweeps)
                .filter(|(_, w)| {
                    !matches!(
                        w.call,
                        conn::SubCall::Topic(_)
                            | conn::SubCall::Fill(..)
                            | conn::SubCall::Follow(..)
                    )
                })
                .map(|(gid, _)| *gid)
                .collect();
            old.iter().filter_map(|g| pending.remove(g)).collect()
        };
        if overdue.is_empty() {
            return;
        }
        crate::warn!(
            "{} requests to {} had no answer within {} ms while it answered others",
            overdue.len(),
            self.pool.nodes()[conn.node].public_name(),
            self.settings.request_timeout.as_millis()
        );
        let why = format!(
            "no answer from the node within {} ms",
            self.settings.request_timeout.as_millis()
        );
        for w in overdue {
            if let (Some(k), Some(answers)) = (&w.kept, &self.answers) {
                answers.fail(&k.key, &why);
            }
            if let Some(s) = w.session.upgrade() {
                let e = crate::jsonrpc::error::error(
                    &w.id,
                    crate::jsonrpc::error::code::INTERNAL_ERROR,
                    &why,
                    None,
                );
                s.reply(w.tag, &w.id, &[e.as_bytes()]);
            }
        }
    }

    /// A reload made a newer generation: each connection closes once no
    /// session is left on it.
    pub fn supersede(&self) {
        self.superseded.set(true);
        for c in self.slots.borrow().iter().flatten() {
            c.wake_timer();
        }
    }

    /// Close a connection nothing uses any more (no warning: nothing failed).
    pub(super) fn close_idle(&self, conn: &Rc<Conn>) {
        conn.set_dead("superseded by a reload");
        self.slots.borrow_mut()[conn.node].retain(|c| !Rc::ptr_eq(c, conn));
        if let Some(fd) = conn.fd.get() {
            stop(fd, Stop::All);
        }
    }

    /// A connection to node `index` for a session: the live one with the
    /// fewest subscriptions, or a new one if there is none or all are full
    /// (and fewer than `max_connections` are open: else the least full).
    pub fn conn(self: &Rc<Self>, index: usize) -> Rc<Conn> {
        let (best, live) = {
            let slots = self.slots.borrow();
            let live = slots[index].iter().filter(|c| c.state() != State::Dead);
            let best = live.clone().min_by_key(|c| c.subscription_load()).cloned();
            (best, live.count())
        };
        if let Some(c) = best {
            let full = c.subscription_load() >= self.settings.max_subscriptions.max(1);
            if !full || live >= self.settings.max_connections.max(1) {
                return c;
            }
        }
        let conn = Rc::new(Conn::new(index));
        self.slots.borrow_mut()[index].push(conn.clone());
        (self.start)(self, &conn);
        conn
    }

    /// Pick a node for a new session and wait until its shared connection is
    /// up; on failure try the next node. The error is an HTTP status and body.
    pub async fn open(self: &Rc<Self>) -> Result<(Rc<Conn>, NodeLease), (u16, String)> {
        let n = self.pool.nodes().len();
        let mut tried = vec![false; n];
        let mut failures = Vec::new();
        while let Some(index) = self.pool.pick(&tried) {
            tried[index] = true;
            let conn = self.conn(index);
            // Leased before waiting: a superseded connection is not closed
            // under a session on its way to it (see `conn::timer`).
            let lease = self.pool.lease(index);
            conn.until(|c| c.state() != State::Connecting).await;
            if conn.state() == State::Up {
                return Ok((conn, lease));
            }
            failures.push(format!(
                "{}: {}",
                self.pool.nodes()[index].public_name(),
                conn.why.borrow()
            ));
        }
        Err((
            502,
            format!(
                "no upstream node accepted the connection ({})",
                failures.join("; ")
            ),
        ))
    }

    /// An archive node's connection: the one a session in shared mode has
    /// (it stays with one), else a new pick (kept by that session).
    pub(super) fn archive_for(self: &Rc<Self>, s: Option<&Session>) -> Option<Rc<Conn>> {
        let m = s.filter(|s| s.member.is_some()).map(member);
        if let Some(c) = m.and_then(|m| m.archive.borrow().clone()) {
            if c.state() != State::Dead {
                return Some(c);
            }
        }
        let index = self.pool.pick_archive()?;
        let conn = self.conn(index);
        if let Some(m) = m {
            *m.archive.borrow_mut() = Some(conn.clone());
        }
        Some(conn)
    }
}
