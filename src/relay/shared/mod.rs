//! Shared node connections (`pool.shared = true`, `--shared`): the node side
//! of a session as a slot on one multiplexed connection per node per core.
//!
//! In the default, session-pinned mode every client session gets its own
//! WebSocket connection to its node and frames pass through unchanged. In
//! shared mode the sessions of one core share **one connection per node**,
//! as Subway and public RPC providers do:
//!
//! - a node that caps its connections (`--rpc-max-connections`, 100 by
//!   default on Substrate) serves any number of clients;
//! - a new session costs no TCP connection and no upgrade towards the node;
//! - requests from many sessions leave in one write and their answers come
//!   back in one read, so the node and the gateway make a fraction of the
//!   system calls per request.
//!
//! The price is that payloads are rewritten ([`request`]): each request's
//! `id` is replaced by a number unique on its connection, and the answer gets
//! the client's id back ([`conn`]; the rest of both messages is copied as it
//! is). Subscriptions are followed by their ids: a subscribe call's answer
//! registers the id for its session, notifications go to that session only,
//! a session may only unsubscribe (or call `chainHead_*` with) ids it owns,
//! and the gateway unsubscribes for a session that ends. Sessions carry
//! JSON-RPC only: a message that is not JSON gets a `-32700` error, a binary
//! message the close code 1003.
//!
//! It lives inside the relay, not beside it (as the architecture sketch had
//! `mux/`), because the two need each other: a session holds its slot here,
//! and a connection delivers answers into its sessions. Everything else of a
//! session (its client side, closing, requests in flight, limits, timers) is
//! the relay's ([`crate::relay`]). The per-client headers
//! (`X-Forwarded-For`, the client's path and subprotocol) do not reach nodes
//! in this mode: one connection speaks for many clients.
//!
//! - [`request`]: a client's request out (ids rewritten, batches, the
//!   cache and its in-flight deduplication); `answer`: the way back.
//! - [`topics`]: merged subscriptions (one node subscription per stream).
//! - [`conn`]: a connection's life (reader, writer, timer).
//! - `failover`: when a connection is lost (node gone, protocol error,
//!   failed health checks, hung), its sessions move to another node with
//!   their merged subscriptions (`fill`: a head stream's gap); the requests
//!   they had in flight fail with their ids. Sessions that cannot move lose
//!   their node side as a pinned session does: errors, then 1012.

mod answer;
pub mod conn;
mod failover;
mod fill;
mod hedge;
pub mod request;
pub mod topics;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::io::{stop, Stop};
use crate::policy::AdmissionCtx;
use crate::relay::close::Which;
use crate::relay::{Session, SessionConfig};
use crate::route::{ChainView, Router};
use crate::signal::Broadcast;
use crate::upstream::{NodeLease, Pool};
use crate::ws::codec::Limits as CodecLimits;

pub use conn::Conn;
pub use request::on_request;

use conn::State;

/// One core's shared connections, one slot per node.
pub struct Shared {
    pool: Rc<Pool>,
    router: Router,
    /// Live connections per node: usually one; another opens when every one
    /// carries `max_subscriptions` (nodes cap subscriptions per connection:
    /// Substrate's `--rpc-max-subscriptions-per-connection` is 1024).
    slots: RefCell<Vec<Vec<Rc<Conn>>>>,
    pub settings: Settings,
    /// Process-wide counters (unmatched answers).
    counts: std::sync::Arc<crate::policy::SharedCounts>,
    /// A reload made a newer generation: connections close once nothing
    /// is left on them (new sessions use the new generation's).
    superseded: Cell<bool>,
    /// This core's kept answers and requests on their way, shared with
    /// HTTP and pinned sessions (`cache.enabled`).
    pub answers: Option<Rc<crate::call::Answers>>,
    /// The last subscription id given out for a merged subscription.
    next_sub: Cell<u64>,
    /// Hedging as this core applies it (its one budget, shared with HTTP).
    pub hedging: crate::hedge::Hedging,
}

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

/// A subscription a session owns: its connection, its id (raw JSON), and
/// the method that ends it.
type Owned = (Rc<Conn>, Box<[u8]>, Box<str>);

/// A merged subscription a session is on: its connection, the session's
/// subscription id, the topic key.
type Merged = (Rc<Conn>, Rc<[u8]>, conn::TopicKey);

/// A session's membership of shared connections.
pub struct Member {
    /// The connection to the session's node (another one's after a failover).
    conn: RefCell<Rc<Conn>>,
    /// When it last moved to another node (`failover`).
    moved_at: Cell<Option<std::time::Instant>>,
    /// Subscriptions the session owns.
    subs: RefCell<Vec<Owned>>,
    /// The session's archive connection, picked on first need.
    archive: RefCell<Option<Rc<Conn>>>,
    /// Merged subscriptions it is on: (connection, its id, topic key).
    merged: RefCell<Vec<Merged>>,
}

impl Member {
    pub fn new(conn: Rc<Conn>) -> Member {
        Member {
            conn: RefCell::new(conn),
            moved_at: Cell::new(None),
            subs: RefCell::new(Vec::new()),
            archive: RefCell::new(None),
            merged: RefCell::new(Vec::new()),
        }
    }

    /// The connection to the session's node.
    pub fn conn(&self) -> Rc<Conn> {
        self.conn.borrow().clone()
    }

    fn set_conn(&self, conn: Rc<Conn>) {
        *self.conn.borrow_mut() = conn;
    }

    pub fn subscriptions(&self) -> u32 {
        (self.subs.borrow().len() + self.merged.borrow().len()) as u32
    }

    /// The session's requests in flight are being answered by the session
    /// itself (errors): forget them on the connections.
    pub fn forget_waiting(&self, s: &Session) {
        let archive = self.archive.borrow().clone();
        for c in std::iter::once(&self.conn()).chain(archive.as_ref()) {
            c.forget_waiting_of(s);
        }
    }
}

fn member(s: &Session) -> &Member {
    s.member.as_ref().expect("a session in shared mode")
}

/// A new session on its connection.
pub fn join(s: &Rc<Session>) {
    let m = member(s);
    let conn = m.conn();
    conn.join(s);
    if conn.state() == State::Dead {
        s.closing.on_gone(&**s, Which::Node);
    }
}

/// The session is over: end its subscriptions on the nodes, leave.
pub fn leave(s: &Rc<Session>) {
    let m = member(s);
    for (c, sub, method) in m.subs.borrow_mut().drain(..) {
        if c.state() == State::Dead {
            continue;
        }
        c.subs.borrow_mut().remove(&sub);
        request::unsubscribe(&c, &sub, &method);
    }
    topics::leave_all(s);
    m.conn().leave(s);
}

/// Wait while this session's client does not read its answers, or its
/// connection's writer is far behind.
pub async fn backpressure(s: &Session) {
    let m = member(s);
    let limit = s.cfg.max_buffered;
    loop {
        if s.closing.ended() || !s.closing.side(Which::Client).takes_data() {
            return;
        }
        if s.client.out.queued.get() > limit {
            s.client.out.space_wake.wait().await;
            continue;
        }
        let conn = m.conn();
        if conn.out_len() > limit * 16 {
            conn.until(|c| c.out_len() <= limit * 16 || c.state() == State::Dead)
                .await;
            continue;
        }
        return;
    }
}

impl Shared {
    pub fn new(
        pool: Rc<Pool>,
        router: Router,
        settings: Settings,
        counts: std::sync::Arc<crate::policy::SharedCounts>,
        answers: Option<Rc<crate::call::Answers>>,
        hedging: crate::hedge::Hedging,
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
        if let Some(gid) = request::send_request(to, session, req, tag, retry, kept) {
            hedge::arm(self, to, gid, req);
        }
    }

    /// A cacheable request was answered by `node`: kept (by what that node
    /// has finalized), and given to every request that waits for it.
    fn land(&self, node: usize, msg: &[u8], id_at: std::ops::Range<usize>, kept: conn::Kept) {
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
    fn sweep(&self, conn: &Rc<Conn>) {
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
                    !matches!(w.call, conn::SubCall::Topic(_) | conn::SubCall::Fill(..))
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
    fn close_idle(&self, conn: &Rc<Conn>) {
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
        let (sh, c) = (self.clone(), conn.clone());
        crate::task::spawn(
            "a shared node connection",
            conn::run(self.clone(), conn.clone()),
            // Its sessions move to another node or close (1012), as when
            // the connection is lost.
            move || sh.fail(&c, "its task failed (a bug)"),
        );
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
    fn archive_for(self: &Rc<Self>, s: Option<&Session>) -> Option<Rc<Conn>> {
        let m = s.and_then(|s| s.member.as_deref());
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

    /// The connection is lost: its sessions lose their node side (errors for
    /// what they wait for, then 1012), and so do the sessions that own a
    /// subscription on it.
    fn fail(self: &Rc<Self>, conn: &Rc<Conn>, why: &str) {
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
        let sessions = failover::rehome(self, conn, sessions, carried);
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
