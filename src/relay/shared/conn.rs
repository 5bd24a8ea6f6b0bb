//! One WebSocket connection to a node, shared by a core's sessions: its
//! life (connect, reader, writer, keepalive, health, a hung node). What the
//! node sends goes back to sessions in `answer`.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Instant;

use ahash::AHashMap;

use crate::io::{ReadHalf, WriteHalf};
use crate::relay::Session;
use crate::signal::Signal;
use crate::stats::Source;
use crate::upstream::{NodeReader, NodeWriter};
use crate::ws::codec::Role;
use crate::ws::frame::{write_close, OpCode};
use crate::ws::message::{Assembler, Event};

use super::Shared;
use crate::ws::frame::write_frame_parts as frame_parts;

/// Read size on a shared connection.
const CONN_READ: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Connecting,
    Up,
    Dead,
}

/// What a request does to the subscriptions the gateway follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubCall {
    Plain,
    /// Opens a subscription; the method that ends it.
    Subscribe(Box<str>),
    /// Ends the subscription with this id.
    Unsubscribe(Box<[u8]>),
    /// Opens the merged subscription with this topic key (see [`super::topics`]).
    Topic(Box<[u8]>),
    /// Fills a gap of that topic: the hash (false) or header (true) of its
    /// missing block number `i`.
    Fill(Box<[u8]>, u32, bool),
}

/// A merged subscription's topic key (see [`super::topics`]).
pub type TopicKey = Box<[u8]>;

/// A request sent on a shared connection and not answered yet.
pub struct Waiting {
    pub session: Weak<Session>,
    /// The client's id, raw JSON.
    pub id: Box<[u8]>,
    /// Read back by its session: its place in a batch (0: a single request).
    pub tag: u64,
    pub call: SubCall,
    /// The client's request, kept to ask an archive node if the pruned node
    /// answers that the state is gone.
    pub retry: Option<Box<[u8]>>,
    /// A cacheable request: how to keep its answer, and the identical
    /// requests waiting for it.
    pub kept: Option<Box<Kept>>,
    /// Its part in a hedged read (see [`super::hedge`]).
    pub hedging: Hedging,
    /// The connection's sweep count when it was sent ([`Conn::epoch`]).
    pub epoch: u32,
}

impl Waiting {
    /// Someone still waits for its answer: its session, or (a cacheable
    /// request's) the waiters of its key.
    pub fn wanted(&self, answers: Option<&crate::call::Answers>) -> bool {
        self.session.strong_count() > 0
            || self
                .kept
                .as_ref()
                .zip(answers)
                .is_some_and(|(k, a)| a.flying(&k.key))
    }
}

/// A request's part in a hedged read (see [`super::hedge`]).
#[derive(Default)]
pub enum Hedging {
    #[default]
    None,
    /// A read that may still be asked of another node: as the client sent
    /// it, and when it left.
    Due(Box<[u8]>, Instant),
    /// A read also asked of another node (it left at this time).
    Copied(Instant),
    /// The copy sent to this node of request `gid` of connection `of`
    /// (where the request itself waits): the first answer wins.
    Twin { of: Weak<Conn>, gid: u64 },
    /// The request whose copy answered first: its own answer is dropped.
    Abandoned,
}

/// A cacheable request on its way, for whoever waits for its answer (see
/// [`crate::call::answers`]): the key the answer lands under, how it may
/// be kept, and how it was asked.
pub struct Kept {
    pub key: Box<[u8]>,
    pub keep: crate::call::Keep,
    pub asked: Asked,
}

/// How a cacheable request was asked of the node.
pub enum Asked {
    /// As the client sent it.
    AsSent,
    /// With the finalized hash filled in; the client's request as it came,
    /// to ask as it is if the node answers with an error (a node a few
    /// blocks behind does not know that block yet).
    Filled(Box<[u8]>),
    /// Again as the client sent it, after that error: the answer is at the
    /// node's best block, not at the hash the key names, so it is not kept.
    Again,
}

/// One WebSocket connection to a node, shared by this core's sessions.
pub struct Conn {
    pub node: usize,
    state: Cell<State>,
    /// Why it died, for the sessions that waited on it.
    pub why: RefCell<String>,
    /// Masked frames to write to the node.
    out: RefCell<Vec<u8>>,
    writer_wake: Signal,
    timer_wake: Signal,
    /// Sessions waiting for the connection to come up, or for room in `out`.
    waiters: RefCell<Vec<Waker>>,
    pub pending: RefCell<AHashMap<u64, Waiting>>,
    /// Subscription id (raw JSON) -> the session that owns it.
    pub subs: RefCell<AHashMap<Box<[u8]>, Weak<Session>>>,
    /// Sessions whose node this is, by address.
    pub members: RefCell<AHashMap<usize, Weak<Session>>>,
    /// Merged subscriptions, by topic key; and their node ids -> topic key.
    pub topics: RefCell<AHashMap<Box<[u8]>, super::topics::Topic>>,
    pub topic_of: RefCell<AHashMap<Box<[u8]>, TopicKey>>,
    /// Topics and their sessions as last counted in the core's gauges.
    pub census: Cell<(u64, u64)>,
    next_id: Cell<u64>,
    pub fd: Cell<Option<RawFd>>,
    /// Subscribe calls sent and not answered yet.
    pub opening: Cell<usize>,
    /// When the node last sent anything.
    seen: Cell<Instant>,
    /// Reads that may be hedged: when, and their ids here (oldest first).
    pub hedge_queue: RefCell<std::collections::VecDeque<(Instant, u64)>>,
    /// Sweeps of requests gone unanswered so far (one each [`SWEEP`]).
    pub(super) epoch: Cell<u32>,
}

/// How often a connection looks for requests its node never answered
/// (while it answers others): each gets its error once it is
/// `pool.request_timeout_ms` old, to a sweep's precision.
pub const SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

fn key(s: &Session) -> usize {
    s as *const Session as usize
}

impl Conn {
    pub fn new(node: usize) -> Conn {
        Conn {
            node,
            state: Cell::new(State::Connecting),
            why: RefCell::new(String::new()),
            out: RefCell::new(Vec::new()),
            writer_wake: Signal::default(),
            timer_wake: Signal::default(),
            waiters: RefCell::new(Vec::new()),
            pending: RefCell::new(AHashMap::new()),
            subs: RefCell::new(AHashMap::new()),
            members: RefCell::new(AHashMap::new()),
            topics: RefCell::new(AHashMap::new()),
            topic_of: RefCell::new(AHashMap::new()),
            census: Cell::new((0, 0)),
            next_id: Cell::new(1),
            fd: Cell::new(None),
            opening: Cell::new(0),
            seen: Cell::new(Instant::now()),
            hedge_queue: RefCell::default(),
            epoch: Cell::new(0),
        }
    }

    pub fn state(&self) -> State {
        self.state.get()
    }

    pub fn set_dead(&self, why: &str) {
        self.state.set(State::Dead);
        *self.why.borrow_mut() = why.to_string();
        self.wake_all();
        self.writer_wake.notify();
        self.timer_wake.notify();
    }

    /// Subscriptions held here, and being opened.
    pub fn subscription_load(&self) -> usize {
        self.subs.borrow().len() + self.topics.borrow().len() + self.opening.get()
    }

    /// When the node last sent anything on this connection.
    pub fn seen(&self) -> Instant {
        self.seen.get()
    }

    pub fn out_len(&self) -> usize {
        self.out.borrow().len()
    }

    pub fn join(&self, s: &Rc<Session>) {
        self.members.borrow_mut().insert(key(s), Rc::downgrade(s));
    }

    pub fn leave(&self, s: &Session) {
        let mut members = self.members.borrow_mut();
        members.remove(&key(s));
        if members.is_empty() {
            // A superseded connection closes once unused.
            self.timer_wake.notify();
        }
    }

    pub fn wake_timer(&self) {
        self.timer_wake.notify();
    }

    /// Nothing uses it: no session on it, no subscription, no request.
    fn unused(&self) -> bool {
        self.members.borrow().is_empty()
            && self.subs.borrow().is_empty()
            && self.topics.borrow().is_empty()
            && self.pending.borrow().is_empty()
    }

    /// Drop `s`'s requests in flight here (it answers them itself).
    pub fn forget_waiting_of(&self, s: &Session) {
        let mut opening = self.opening.get();
        self.pending.borrow_mut().retain(|_, w| {
            let mine = std::ptr::eq(w.session.as_ptr(), s);
            if mine && matches!(w.call, SubCall::Subscribe(_)) {
                opening = opening.saturating_sub(1);
            }
            // Other sessions wait for its answer: it stays, without an owner.
            if mine && matches!(w.call, SubCall::Topic(_)) {
                w.session = Weak::new();
                return true;
            }
            !mine
        });
        self.opening.set(opening);
    }

    /// Wait until `cond` holds (re-checked on every wake of the waiters).
    pub async fn until(&self, cond: impl Fn(&Conn) -> bool) {
        std::future::poll_fn(|cx| {
            if cond(self) {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }

    /// The sweep count now (a request's age is counted in sweeps: no clock
    /// read per request).
    pub fn epoch(&self) -> u32 {
        self.epoch.get()
    }

    pub fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Queue a text frame whose payload is `parts` joined (masked: the
    /// gateway is the client here).
    pub fn send_parts(&self, parts: &[&[u8]]) {
        let mut out = self.out.borrow_mut();
        frame_parts(&mut out, OpCode::Text, parts, Some(crate::rng::mask_key()));
        drop(out);
        self.writer_wake.notify();
    }

    fn send_control(&self, opcode: OpCode, payload: &[u8]) {
        let mut out = self.out.borrow_mut();
        frame_parts(&mut out, opcode, &[payload], Some(crate::rng::mask_key()));
        drop(out);
        self.writer_wake.notify();
    }
}

/// Open a shared connection and run it until it is lost.
pub async fn run(sh: Rc<Shared>, conn: Rc<Conn>) {
    let node = &sh.pool.nodes()[conn.node];
    let attempt =
        crate::upstream::open_shared(node, sh.settings.max_head, sh.settings.connect_timeout).await;
    let (stream, early) = match attempt {
        Ok(s) => s,
        Err(e) => {
            sh.pool.health().report_connect_failure(conn.node);
            sh.fail(&conn, &e);
            return;
        }
    };
    conn.fd.set(Some(stream.raw_fd()));
    if conn.state() == State::Dead {
        // Failed while connecting (nothing can, today; but never resurrect).
        return;
    }
    conn.state.set(State::Up);
    conn.wake_all();
    conn.writer_wake.notify();
    let (mut r, mut w) = stream.into_split();
    monoio::join!(
        async {
            let why = reader(&sh, &conn, &mut r, early).await;
            sh.fail(&conn, &why);
        },
        async {
            let why = writer(&conn, &mut w).await;
            sh.fail(&conn, &why);
        },
        timer(&sh, &conn),
    );
}

async fn writer(conn: &Conn, w: &mut NodeWriter) -> String {
    let mut spare: Vec<u8> = Vec::new();
    loop {
        if conn.state() == State::Dead {
            return String::new();
        }
        let out = {
            let mut o = conn.out.borrow_mut();
            if o.is_empty() {
                None
            } else {
                Some(std::mem::replace(&mut *o, std::mem::take(&mut spare)))
            }
        };
        let Some(buf) = out else {
            conn.writer_wake.wait().await;
            continue;
        };
        let (res, mut b) = w.write_all(buf).await;
        if let Err(e) = res {
            return format!("write failed: {e}");
        }
        b.clear();
        if b.capacity() <= CONN_READ {
            spare = b;
        }
        conn.wake_all();
    }
}

/// Keepalive pings, and the node's health: a node marked down loses its
/// connection, and so does one that sends nothing while requests wait on it
/// for `pool.request_timeout_ms` (a hung node). After a reload: a removed
/// node's sessions are retired (after the grace), and a superseded
/// connection closes once unused.
async fn timer(sh: &Rc<Shared>, conn: &Rc<Conn>) {
    let mut next_ping = Instant::now() + sh.settings.keepalive;
    let mut pinged = Instant::now();
    let mut waiting_since: Option<Instant> = None;
    let mut next_sweep = Instant::now() + SWEEP;
    let mut retired = false;
    loop {
        if conn.state() == State::Dead {
            return;
        }
        if !retired && sh.pool.health().retired(conn.node) {
            retired = true;
            let members: Vec<_> = conn.members.borrow().values().cloned().collect();
            for s in members.iter().filter_map(std::rc::Weak::upgrade) {
                s.retire();
            }
        }
        // (No session of its generation on the node: none on its way to it.)
        if sh.superseded.get() && conn.unused() && sh.pool.active(conn.node) == 0 {
            sh.close_idle(conn);
            return;
        }
        if !sh.pool.health().serving(conn.node) {
            sh.fail(conn, "the node failed its health checks");
            return;
        }
        let now = Instant::now();
        if conn.pending.borrow().is_empty() {
            waiting_since = None;
        } else {
            let since = *waiting_since.get_or_insert(now);
            let quiet = conn.seen.get().max(since);
            // Halfway, a ping (once): a node that is only slow answers it.
            let probe = quiet + sh.settings.request_timeout / 2;
            if probe > pinged {
                next_ping = next_ping.min(probe);
            }
            if now >= quiet + sh.settings.request_timeout {
                sh.pool.health().report_connect_failure(conn.node);
                sh.fail(conn, "the node stopped answering");
                return;
            }
        }
        if now >= next_sweep {
            next_sweep = now + SWEEP;
            sh.sweep(conn);
        }
        if now >= next_ping {
            conn.send_control(OpCode::Ping, b"");
            pinged = now;
            next_ping = now + sh.settings.keepalive;
        }
        let mut at = next_ping
            .min(now + sh.settings.health_every)
            .min(next_sweep);
        if let Some(hedge_at) = super::hedge::tick(sh, conn, now) {
            at = at.min(hedge_at);
        }
        let sleep = monoio::time::sleep_until(at.into());
        monoio::select! {
            _ = sleep => {}
            _ = conn.timer_wake.wait() => {}
        }
    }
}

async fn reader(sh: &Rc<Shared>, conn: &Rc<Conn>, r: &mut NodeReader, early: Vec<u8>) -> String {
    let mut asm =
        Assembler::new(Role::Server, sh.settings.codec, usize::MAX, false).retain(1 << 20);
    let mut buf = early;
    let mut fresh = buf.len();
    loop {
        let mut pos = 0;
        let seen = asm.messages();
        while pos < buf.len() {
            match asm.step(&buf[pos..]) {
                Ok(Event::Data { n, end }) => {
                    pos += n;
                    if end {
                        super::answer::on_answer(sh, conn, asm.message());
                        asm.clear();
                    }
                }
                Ok(Event::Control(frame, n)) => {
                    pos += n;
                    match frame.opcode {
                        OpCode::Ping => conn.send_control(OpCode::Pong, frame.payload()),
                        OpCode::Pong => {}
                        _ => {
                            let mut f = Vec::new();
                            write_close(
                                &mut f,
                                frame.close_code(),
                                "",
                                Some(crate::rng::mask_key()),
                            );
                            conn.out.borrow_mut().extend_from_slice(&f);
                            conn.writer_wake.notify();
                            return "the node closed the connection".into();
                        }
                    }
                }
                Ok(Event::NeedMore) => break,
                Err(e) => return format!("protocol error: {e}"),
            }
        }
        buf.drain(..pos);
        crate::stats::read(Source::Node, asm.messages() - seen, fresh);
        if conn.state() == State::Dead {
            return String::new();
        }
        // One connection carries the answers of many sessions: large reads.
        if buf.capacity() - buf.len() < CONN_READ / 4 {
            buf.reserve(CONN_READ);
        }
        let (res, b) = r.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) => return "the node closed the connection".into(),
            Err(e) => return format!("read failed: {e}"),
            Ok(n) => {
                fresh = n;
                conn.seen.set(Instant::now());
            }
        }
    }
}
