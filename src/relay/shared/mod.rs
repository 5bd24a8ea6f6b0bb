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
    /// This core's response cache (`cache.enabled`).
    pub cache: Option<Rc<crate::cache::Cache>>,
    /// Cacheable requests on their way, by cache key: where their answer
    /// will come (identical requests wait for it: see [`Shared::join_flight`]).
    flights: RefCell<ahash::AHashMap<Box<[u8]>, Flight>>,
    /// The cluster's second level of the cache (`[cluster] cache`).
    pub second: Option<crate::cache::second::Level2>,
    /// Lasting requests the first level missed, being looked up in the
    /// second, by cache key: the sessions waiting (identical ones join).
    pub lookups: RefCell<ahash::AHashMap<Box<[u8]>, Vec<conn::Follower>>>,
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

/// Where a cacheable request's answer will come: its connection and its id there.
type Flight = (Weak<Conn>, u64);

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
    /// The last batch number given out (answers to one batch go back as one array).
    batches: Cell<u32>,
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
            batches: Cell::new(0),
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

    fn next_batch(&self) -> u32 {
        let n = self.batches.get().wrapping_add(1).max(1);
        self.batches.set(n);
        n
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
        cache: Option<Rc<crate::cache::Cache>>,
        second: Option<crate::cache::second::Level2>,
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
            cache,
            flights: RefCell::new(ahash::AHashMap::new()),
            second,
            lookups: RefCell::new(ahash::AHashMap::new()),
            next_sub: Cell::new(0),
            hedging,
        })
    }

    /// If an identical cacheable request (same `key`) is on its way, wait
    /// for its answer instead of sending another: `s` gets it with `id`.
    pub fn join_flight(&self, key: &[u8], s: &Rc<Session>, id: &[u8]) -> bool {
        if let Some(waiting) = self.lookups.borrow_mut().get_mut(key) {
            waiting.push((Rc::downgrade(s), Box::from(id)));
            return true;
        }
        let mut flights = self.flights.borrow_mut();
        let Some((conn, gid)) = flights.get(key) else {
            return false;
        };
        let joined = conn.upgrade().is_some_and(|c| {
            let mut pending = c.pending.borrow_mut();
            match pending.get_mut(gid).and_then(|w| w.kept.as_mut()) {
                Some(k) if &*k.key == key => {
                    k.followers.push((Rc::downgrade(s), Box::from(id)));
                    true
                }
                _ => false,
            }
        });
        if !joined {
            flights.remove(key);
        }
        joined
    }

    /// Send a request whose answer is to be kept (`kept`, if any): identical
    /// requests join it until it lands.
    pub fn send_kept(
        &self,
        to: &Rc<Conn>,
        s: &Rc<Session>,
        req: &crate::jsonrpc::Request<'_>,
        batch: u32,
        retry: Option<Box<[u8]>>,
        kept: Option<Box<conn::Kept>>,
    ) {
        let key = kept.as_ref().map(|k| k.key.clone());
        let gid = request::send_request(to, s, req, batch, retry, kept);
        if let (Some(key), Some(gid)) = (key, gid) {
            self.flights
                .borrow_mut()
                .insert(key, (Rc::downgrade(to), gid));
        }
        if let (Some(gid), 0) = (gid, batch) {
            hedge::arm(self, to, gid, req);
        }
    }

    /// A cacheable request was answered: keep the answer, and give it to
    /// the requests that waited for it (each with its own id).
    /// `node` answered it: what it must have finalized is by its own view.
    fn land(&self, node: usize, msg: &[u8], id_at: std::ops::Range<usize>, kept: conn::Kept) {
        self.flights.borrow_mut().remove(&kept.key);
        let node_final = self.pool.health().finalized_of(node);
        let keep = !matches!(kept.asked, conn::Asked::Again)
            && match kept.must_be_final {
                conn::MustBeFinal::Block(n) => n == 0 || n <= node_final,
                _ => true,
            };
        let answers_block =
            (kept.must_be_final == conn::MustBeFinal::AnswersBlock).then_some(node_final);
        let head = self.cache.as_ref().filter(|_| keep);
        let head = head.and_then(|c| c.keep(&kept.key, msg, kept.ttl, answers_block));
        if let Some(second) = self.second.as_ref().filter(|_| kept.lasting) {
            match head {
                Some(head) => second.put(&kept.key, &head, kept.ttl),
                None => second.forget(&kept.key),
            }
        }
        for (s, id) in kept.followers {
            let Some(s) = s.upgrade() else {
                continue;
            };
            let parts = [&msg[..id_at.start], &id[..], &msg[id_at.end..]];
            answer::deliver(&s, &parts);
            s.answered(&id);
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

    /// The session's archive connection: the one it has, or a new pick.
    fn archive_for(self: &Rc<Self>, s: &Session) -> Option<Rc<Conn>> {
        let m = member(s);
        if let Some(c) = &*m.archive.borrow() {
            if c.state() != State::Dead {
                return Some(c.clone());
            }
        }
        let index = self.pool.pick_archive()?;
        let conn = self.conn(index);
        *m.archive.borrow_mut() = Some(conn.clone());
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
        for mut w in pending {
            // Requests that waited for this one's answer fail with it.
            let followers = w.kept.take().map(|k| k.followers).unwrap_or_default();
            for (f, id) in followers {
                let Some(f) = f.upgrade() else {
                    continue;
                };
                if sessions.iter().any(|c| Rc::ptr_eq(c, &f)) {
                    continue;
                }
                f.answered(&id);
                let e = crate::jsonrpc::error::error(
                    &id,
                    crate::jsonrpc::error::code::INTERNAL_ERROR,
                    &message,
                    None,
                );
                f.send_text(e.as_bytes());
            }
            let Some(s) = w.session.upgrade() else {
                continue;
            };
            if sessions.iter().any(|c| Rc::ptr_eq(c, &s)) {
                continue;
            }
            s.answered(&w.id);
            s.send_text(
                crate::jsonrpc::error::error(
                    &w.id,
                    crate::jsonrpc::error::code::INTERNAL_ERROR,
                    &message,
                    None,
                )
                .as_bytes(),
            );
        }
        for s in sessions {
            s.closing.on_gone(&*s, Which::Node);
        }
    }
}
