//! One WebSocket connection to a node, shared by a core's sessions, as
//! data: what waits to be written, the requests waiting for answers, the
//! subscriptions it carries, its sessions; and the writing of requests
//! onto it (each id replaced by one unique on the connection). Its life
//! (connect, reader, writer, keepalive, a hung node) is [`super::io`]'s.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Instant;

use ahash::AHashMap;

use crate::jsonrpc::{call::unsubscribe_method, Request, Sub};
use crate::relay::Session;
use crate::signal::Signal;
use crate::ws::frame::OpCode;

use crate::ws::frame::write_frame_parts as frame_parts;

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
    /// A request of the follow hub with this serial (see [`super::follow`]).
    Follow(u64, FollowCall),
}

/// What a follow hub's request was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowCall {
    /// The node follow itself.
    Open,
    /// A block's header (its hash, raw JSON).
    Header(std::rc::Rc<[u8]>),
    /// The hub's operation with this number.
    Op(u64),
    /// Unpin, continue, stop an operation, unfollow: the answer is dropped.
    Own,
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
    pub(super) state: Cell<State>,
    /// Why it died, for the sessions that waited on it.
    pub why: RefCell<String>,
    /// Masked frames to write to the node.
    pub(super) out: RefCell<Vec<u8>>,
    pub(super) writer_wake: Signal,
    pub(super) timer_wake: Signal,
    /// Sessions waiting for the connection to come up, or for room in `out`.
    pub(super) waiters: RefCell<Vec<Waker>>,
    pub pending: RefCell<AHashMap<u64, Waiting>>,
    /// Subscription id (raw JSON) -> the session that owns it.
    pub subs: RefCell<AHashMap<Box<[u8]>, Weak<Session>>>,
    /// Sessions whose node this is, by address.
    pub members: RefCell<AHashMap<usize, Weak<Session>>>,
    /// Merged subscriptions, by topic key; and their node ids -> topic key.
    pub topics: RefCell<AHashMap<Box<[u8]>, super::topic::Topic>>,
    pub topic_of: RefCell<AHashMap<Box<[u8]>, TopicKey>>,
    /// Topics and their sessions as last counted in the core's gauges.
    pub census: Cell<(u64, u64)>,
    pub(super) next_id: Cell<u64>,
    pub fd: Cell<Option<RawFd>>,
    /// Subscribe calls sent and not answered yet.
    pub opening: Cell<usize>,
    /// When the node last sent anything.
    pub(super) seen: Cell<Instant>,
    /// Reads that may be hedged: when, and their ids here (oldest first).
    pub hedge_queue: RefCell<std::collections::VecDeque<(Instant, u64)>>,
    /// Sweeps of requests gone unanswered so far (one each [`SWEEP`]).
    pub(super) epoch: Cell<u32>,
    /// Follow hubs' node follows here (opening or live), and the live
    /// one's subscription id (see [`super::follow`]).
    pub follows: Cell<usize>,
    pub follow_sub: RefCell<Option<Box<[u8]>>>,
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
            follows: Cell::new(0),
            follow_sub: RefCell::new(None),
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
        self.subs.borrow().len()
            + self.topics.borrow().len()
            + self.opening.get()
            + self.follows.get()
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
    pub(super) fn unused(&self) -> bool {
        self.members.borrow().is_empty()
            && self.subs.borrow().is_empty()
            && self.topics.borrow().is_empty()
            && self.pending.borrow().is_empty()
            && self.follows.get() == 0
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

    pub(super) fn wake_all(&self) {
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

    pub(super) fn send_control(&self, opcode: OpCode, payload: &[u8]) {
        let mut out = self.out.borrow_mut();
        frame_parts(&mut out, opcode, &[payload], Some(crate::rng::mask_key()));
        drop(out);
        self.writer_wake.notify();
    }
}

/// What a request does to the subscriptions the connection follows.
pub fn sub_call(req: &Request<'_>) -> SubCall {
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

/// Send one request with its id replaced; remember how to answer it (for
/// `session`, or for nobody: a cacheable request's waiters). Returns the
/// id it has on the connection (none for a notification).
pub fn send_request(
    to: &Conn,
    session: Weak<Session>,
    req: &Request<'_>,
    tag: u64,
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
    if matches!(req.sub, Sub::Opens) {
        to.opening.set(to.opening.get() + 1);
    }
    register(to, session, gid, id, tag, sub_call(req), retry, kept);
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
    register(to, Rc::downgrade(s), gid, id, 0, call, None, None);
}

#[allow(clippy::too_many_arguments)]
fn register(
    to: &Conn,
    session: Weak<Session>,
    gid: u64,
    id: &[u8],
    tag: u64,
    call: SubCall,
    retry: Option<Box<[u8]>>,
    kept: Option<Box<Kept>>,
) {
    to.pending.borrow_mut().insert(
        gid,
        Waiting {
            session,
            id: Box::from(id),
            tag,
            call,
            retry,
            kept,
            hedging: Default::default(),
            epoch: to.epoch(),
        },
    );
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
            tag: 0,
            call,
            retry: None,
            kept: None,
            hedging: Default::default(),
            epoch: c.epoch(),
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

/// `n` in decimal, written into `buf` (a gateway id, without a String per request).
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
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
