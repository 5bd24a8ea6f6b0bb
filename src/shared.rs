//! Shared node connections (`pool.shared = true`, `--shared`).
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
//! The price is that payloads are rewritten: each request's `id` is replaced
//! by a number unique on its connection, and the answer gets the client's id
//! back (the rest of both messages is copied as it is). Subscriptions are
//! followed by their ids: a subscribe call's answer registers the id for its
//! session, notifications go to that session only, a session may only
//! unsubscribe (or call `chainHead_*` with) ids it owns, and the gateway
//! unsubscribes for a session that ends. Sessions carry JSON-RPC only: a
//! message that is not JSON gets a `-32700` error, a binary message the close
//! code 1003.
//!
//! When a shared connection is lost (node gone, protocol error, failed health
//! checks), every request waiting on it gets a `-32603` error with its id and
//! the sessions on it are closed with 1012, as pinned sessions are: clients
//! reconnect and land on a healthy node. The per-client headers
//! (`X-Forwarded-For`, the client's path and subprotocol) do not reach nodes
//! in this mode: one connection speaks for many clients.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::admission::{rpc_error, AdmissionCtx, Reason};
use crate::io::{stop, ReadHalf, Stop, WriteHalf};
use crate::jsonrpc::{self, Kind};
use crate::route::{ChainView, Router, Target};
use crate::session::{SessionConfig, DRAIN_POLL, SHUTDOWN_DRAIN};
use crate::signal::{Broadcast, Signal};
use crate::upstream::{NodeLease, NodeReader, NodeWriter, Pool};
use crate::ws::codec::{Decoder, Limits as CodecLimits, Role, Step};
use crate::ws::frame::{close_code, write_close, FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::ws::mask::apply_mask;

/// Read size on a shared connection.
const CONN_READ: usize = 256 * 1024;

/// One core's shared connections, one slot per node.
pub struct Shared {
    pool: Rc<Pool>,
    router: Router,
    /// Live connections per node: usually one; another opens when every one
    /// carries `max_subscriptions` (nodes cap subscriptions per connection:
    /// Substrate's `--rpc-max-subscriptions-per-connection` is 1024).
    slots: RefCell<Vec<Vec<Rc<Conn>>>>,
    settings: Settings,
    next_client: Cell<u64>,
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
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Connecting,
    Up,
    Dead,
}

/// One WebSocket connection to a node, shared by this core's sessions.
pub struct Conn {
    node: usize,
    state: Cell<State>,
    /// Why it died, for the sessions that waited on it.
    why: RefCell<String>,
    /// Masked frames to write to the node.
    out: RefCell<Vec<u8>>,
    writer_wake: Signal,
    timer_wake: Signal,
    /// Sessions waiting for the connection to come up, or for room in `out`.
    waiters: RefCell<Vec<Waker>>,
    pending: RefCell<AHashMap<u64, Waiting>>,
    /// Subscription id (raw JSON) -> the session that owns it.
    subs: RefCell<AHashMap<Box<[u8]>, Weak<Client>>>,
    /// Sessions whose node this is.
    clients: RefCell<AHashMap<u64, Weak<Client>>>,
    next_id: Cell<u64>,
    fd: Cell<Option<RawFd>>,
}

/// A request sent on a shared connection and not answered yet.
struct Waiting {
    client: Weak<Client>,
    /// The client's id, raw JSON.
    id: Box<[u8]>,
    /// The client's batch it came in (0: a single request).
    batch: u32,
    call: Call,
    /// The client's request, kept to ask an archive node if the pruned node
    /// answers that the state is gone.
    retry: Option<Box<[u8]>>,
}

/// What a call does to subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Plain,
    /// Opens a subscription; the method that ends it.
    Subscribe(Box<str>),
    /// Ends the subscription with this id.
    Unsubscribe(Box<[u8]>),
}

/// A subscription a session owns: its connection, its id (raw JSON), and
/// the method that ends it.
type Owned = (Rc<Conn>, Box<[u8]>, Box<str>);

/// A session's errors for one batch: the session and the batch's ids.
type BatchErrors = (Rc<Client>, Vec<Box<[u8]>>);

/// One client session in shared mode.
pub struct Client {
    key: u64,
    /// Frames to write to the client.
    out: RefCell<Vec<u8>>,
    writer_wake: Signal,
    reader_wake: Signal,
    timer_wake: Signal,
    /// The close frame to write once `out` is written.
    close: RefCell<Option<Vec<u8>>>,
    sent_close: Cell<bool>,
    got_close: Cell<bool>,
    /// The transport failed or the session is over: write nothing more.
    dead: Cell<bool>,
    close_code: Cell<Option<u16>>,
    close_deadline: Cell<Option<Instant>>,
    inflight: Cell<usize>,
    batches: Cell<u32>,
    /// Subscriptions this session owns: where, its id, the method that ends it.
    subs: RefCell<Vec<Owned>>,
    /// The session's archive connection, picked on first need.
    archive: RefCell<Option<Rc<Conn>>>,
    last_activity: Cell<Instant>,
    reason: Cell<&'static str>,
    close_timeout: Duration,
    /// The reader has stopped (the timer runs until then: a client that
    /// never answers our close is cut off at the close deadline).
    reader_done: Cell<bool>,
    /// Bytes waiting for the client at most before it is closed (1008).
    max_out: usize,
    fd: RawFd,
}

impl Shared {
    pub fn new(pool: Rc<Pool>, router: Router, settings: Settings) -> Rc<Shared> {
        let n = pool.nodes().len();
        Rc::new(Shared {
            pool,
            router,
            slots: RefCell::new(vec![Vec::new(); n]),
            settings,
            next_client: Cell::new(1),
        })
    }

    /// A connection to node `index` for a session: the live one with the
    /// fewest subscriptions, or a new one if there is none or all are full.
    fn conn(self: &Rc<Self>, index: usize) -> Rc<Conn> {
        let best = self.slots.borrow()[index]
            .iter()
            .filter(|c| c.state.get() != State::Dead)
            .min_by_key(|c| c.subs.borrow().len())
            .cloned();
        if let Some(c) = best {
            if c.subs.borrow().len() < self.settings.max_subscriptions.max(1) {
                return c;
            }
        }
        let conn = Rc::new(Conn {
            node: index,
            state: Cell::new(State::Connecting),
            why: RefCell::new(String::new()),
            out: RefCell::new(Vec::new()),
            writer_wake: Signal::default(),
            timer_wake: Signal::default(),
            waiters: RefCell::new(Vec::new()),
            pending: RefCell::new(AHashMap::new()),
            subs: RefCell::new(AHashMap::new()),
            clients: RefCell::new(AHashMap::new()),
            next_id: Cell::new(1),
            fd: Cell::new(None),
        });
        self.slots.borrow_mut()[index].push(conn.clone());
        monoio::spawn(run_conn(self.clone(), conn.clone()));
        conn
    }

    /// Pick a node for a new session and wait until its shared connection is
    /// up; on failure try the next node. The error is an HTTP status and body.
    pub async fn open(self: &Rc<Self>) -> Result<(Rc<Conn>, NodeLease), (u16, String)> {
        let n = self.pool.nodes().len();
        let mut tried = vec![false; n];
        if self.pool.pick(&tried).is_none() {
            return Err((
                503,
                format!("no healthy upstream node ({n} configured, all failing health checks)"),
            ));
        }
        let mut failures = Vec::new();
        while let Some(index) = self.pool.pick(&tried) {
            tried[index] = true;
            let conn = self.conn(index);
            conn.until(|c| c.state.get() != State::Connecting).await;
            if conn.state.get() == State::Up {
                return Ok((conn, self.pool.lease(index)));
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
    fn archive_for(self: &Rc<Self>, client: &Client) -> Option<Rc<Conn>> {
        if let Some(c) = &*client.archive.borrow() {
            if c.state.get() != State::Dead {
                return Some(c.clone());
            }
        }
        let index = self.pool.pick_archive()?;
        let conn = self.conn(index);
        *client.archive.borrow_mut() = Some(conn.clone());
        Some(conn)
    }

    /// The connection is lost: answer what waits on it, close its sessions.
    fn fail(&self, conn: &Rc<Conn>, why: &str) {
        if conn.state.get() == State::Dead {
            return;
        }
        crate::warn!(
            "shared connection to {}: {why}",
            self.pool.nodes()[conn.node].url
        );
        conn.state.set(State::Dead);
        *conn.why.borrow_mut() = why.to_string();
        self.slots.borrow_mut()[conn.node].retain(|c| !Rc::ptr_eq(c, conn));
        if let Some(fd) = conn.fd.get() {
            stop(fd, Stop::All);
        }
        conn.wake_all();
        conn.writer_wake.notify();
        conn.timer_wake.notify();
        // Errors for every request in flight, a batch's as one array.
        let pending: Vec<Waiting> = conn.pending.borrow_mut().drain().map(|(_, w)| w).collect();
        fail_waiting(
            pending,
            &format!("upstream node connection lost ({why}); reconnect and retry"),
        );
        // Subscriptions are gone with the connection: their sessions close,
        // and so do the sessions whose node this is.
        let subs: Vec<Weak<Client>> = conn.subs.borrow_mut().drain().map(|(_, c)| c).collect();
        let clients: Vec<Weak<Client>> =
            conn.clients.borrow_mut().drain().map(|(_, c)| c).collect();
        for c in subs.iter().chain(clients.iter()).filter_map(Weak::upgrade) {
            c.set_reason("node connection lost");
            c.send_close(close_code::SERVICE_RESTART, "upstream node connection lost");
        }
    }
}

/// Answer requests in flight with JSON-RPC errors (-32603, `message`), each
/// with its id, a batch's as one array (JSON-RPC 2.0 §6).
fn fail_waiting(pending: Vec<Waiting>, message: &str) {
    let mut groups: AHashMap<(u64, u32), BatchErrors> = AHashMap::new();
    let mut singles = Vec::new();
    for w in pending {
        let Some(c) = w.client.upgrade() else {
            continue;
        };
        c.inflight.set(c.inflight.get().saturating_sub(1));
        if w.batch == 0 {
            singles.push((c, w.id));
        } else {
            groups
                .entry((c.key, w.batch))
                .or_insert_with(|| (c.clone(), Vec::new()))
                .1
                .push(w.id);
        }
    }
    for (c, id) in singles {
        c.send_text(rpc_error(&id, -32603, message, None).as_bytes());
    }
    for (_, (c, ids)) in groups {
        let parts: Vec<String> = ids
            .iter()
            .map(|id| rpc_error(id, -32603, message, None))
            .collect();
        c.send_text(format!("[{}]", parts.join(",")).as_bytes());
    }
}

impl Conn {
    /// Take `client`'s requests in flight out of this connection.
    fn take_pending_of(&self, client: &Rc<Client>) -> Vec<Waiting> {
        let mut pending = self.pending.borrow_mut();
        let keys: Vec<u64> = pending
            .iter()
            .filter(|(_, w)| std::ptr::eq(w.client.as_ptr(), Rc::as_ptr(client)))
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| pending.remove(k)).collect()
    }

    /// Wait until `cond` holds (re-checked on every wake of the waiters).
    async fn until(&self, cond: impl Fn(&Conn) -> bool) {
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

    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// Queue a text frame whose payload is `parts` joined (masked: the
    /// gateway is the client here).
    fn send_parts(&self, parts: &[&[u8]]) {
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

impl Client {
    fn alive(&self) -> bool {
        !self.dead.get() && !self.sent_close.get()
    }

    /// Queue a text frame to the client.
    fn send_text(&self, payload: &[u8]) {
        self.send_parts(&[payload]);
    }

    fn send_parts(&self, parts: &[&[u8]]) {
        if !self.alive() {
            return;
        }
        let over = {
            let mut out = self.out.borrow_mut();
            frame_parts(&mut out, OpCode::Text, parts, None);
            out.len() > self.max_out
        };
        if over {
            // A client that does not read what it asked for (notifications
            // pile up): the node connection is shared, so it cannot wait.
            crate::debug!("client too slow: {} bytes waiting", self.out.borrow().len());
            self.out.borrow_mut().clear();
            self.set_reason("client too slow");
            self.send_close(close_code::POLICY, "client too slow to read its messages");
        }
        self.writer_wake.notify();
    }

    fn send_close(&self, code: u16, reason: &str) {
        if !self.alive() {
            return;
        }
        let mut frame = Vec::with_capacity(reason.len().min(123) + 4);
        write_close(&mut frame, Some(code), reason, None);
        *self.close.borrow_mut() = Some(frame);
        self.sent_close.set(true);
        self.close_code.set(Some(code));
        if self.close_deadline.get().is_none() {
            self.close_deadline
                .set(Some(Instant::now() + self.close_timeout));
        }
        self.writer_wake.notify();
        self.reader_wake.notify();
        self.timer_wake.notify();
    }

    fn set_reason(&self, why: &'static str) {
        if self.reason.get().is_empty() {
            self.reason.set(why);
        }
    }

    fn done(&self) -> bool {
        self.dead.get() || (self.sent_close.get() && self.got_close.get())
    }
}

/// Append a whole frame whose payload is `parts` joined.
fn frame_parts(out: &mut Vec<u8>, opcode: OpCode, parts: &[&[u8]], mask: Option<[u8; 4]>) {
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
fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
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
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// The method that ends a subscription opened by `method`, if it opens one.
fn unsubscribe_method(method: &str) -> Option<String> {
    if is_unsubscribe(method.as_bytes()) {
        return None;
    }
    if method == "eth_subscribe" {
        return Some("eth_unsubscribe".into());
    }
    if let Some(i) = method.find("subscribe") {
        return Some(format!("{}unsubscribe{}", &method[..i], &method[i + 9..]));
    }
    if let Some(prefix) = method.strip_suffix("submitAndWatchExtrinsic") {
        return Some(format!("{prefix}unwatchExtrinsic"));
    }
    if let Some(prefix) = method.strip_suffix("_submitAndWatch") {
        return Some(format!("{prefix}_unwatch"));
    }
    if let Some(prefix) = method.strip_suffix("_follow") {
        return Some(format!("{prefix}_unfollow"));
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn is_unsubscribe(method: &[u8]) -> bool {
    contains(method, b"unsubscribe")
        || contains(method, b"unwatch")
        || contains(method, b"unfollow")
}

/// Calls whose first parameter is a subscription id the caller must own.
fn takes_subscription(method: &[u8]) -> bool {
    is_unsubscribe(method) || method.starts_with(b"chainHead_")
}

/// What a session needs besides its connection.
pub struct Ctx<'a> {
    pub shared: Rc<Shared>,
    pub cfg: SessionConfig,
    pub chain: &'a dyn ChainView,
    /// Route messages between pruned and archive nodes.
    pub route: bool,
    pub admission: Option<(&'a AdmissionCtx, IpAddr)>,
    /// The worker is shutting down.
    pub shutdown: &'a Broadcast,
}

/// What a session did, for the log.
pub struct Summary {
    pub messages: u64,
    pub close_code: Option<u16>,
    pub reason: &'static str,
}

/// Serve one client session over the shared connection `conn`.
pub async fn session<R: ReadHalf, W: WriteHalf>(
    ctx: Ctx<'_>,
    conn: Rc<Conn>,
    _lease: NodeLease,
    mut r: R,
    mut w: W,
    early: Vec<u8>,
    fd: RawFd,
) -> Summary {
    let key = ctx.shared.next_client.get();
    ctx.shared.next_client.set(key + 1);
    let client = Rc::new(Client {
        key,
        out: RefCell::new(Vec::new()),
        writer_wake: Signal::default(),
        reader_wake: Signal::default(),
        timer_wake: Signal::default(),
        close: RefCell::new(None),
        sent_close: Cell::new(false),
        got_close: Cell::new(false),
        dead: Cell::new(false),
        close_code: Cell::new(None),
        close_deadline: Cell::new(None),
        inflight: Cell::new(0),
        batches: Cell::new(0),
        subs: RefCell::new(Vec::new()),
        archive: RefCell::new(None),
        last_activity: Cell::new(Instant::now()),
        reason: Cell::new(""),
        close_timeout: ctx.cfg.close_timeout,
        reader_done: Cell::new(false),
        max_out: (ctx.cfg.max_buffered * 16).max(ctx.cfg.codec.max_message as usize + 16),
        fd,
    });
    conn.clients
        .borrow_mut()
        .insert(key, Rc::downgrade(&client));
    if conn.state.get() == State::Dead {
        client.send_close(close_code::SERVICE_RESTART, "upstream node connection lost");
    }
    let (messages, _, _) = monoio::join!(
        client_reader(&ctx, &conn, &client, &mut r, early),
        client_writer(&ctx, &client, &mut w),
        client_timer(&ctx, &conn, &client),
    );
    // The session is over: end its subscriptions on the nodes.
    for (c, sub, method) in client.subs.borrow_mut().drain(..) {
        if c.state.get() == State::Dead {
            continue;
        }
        c.subs.borrow_mut().remove(&sub);
        unsubscribe(&c, &sub, &method);
    }
    conn.clients.borrow_mut().remove(&key);
    Summary {
        messages,
        close_code: client.close_code.get(),
        reason: client.reason.get(),
    }
}

async fn client_reader<R: ReadHalf>(
    ctx: &Ctx<'_>,
    conn: &Rc<Conn>,
    client: &Rc<Client>,
    r: &mut R,
    early: Vec<u8>,
) -> u64 {
    let mut dec = Decoder::new(Role::Client, ctx.cfg.codec);
    let mut buf = early;
    let mut msg: Vec<u8> = Vec::new();
    let mut text = true;
    'session: loop {
        let mut pos = 0;
        while pos < buf.len() {
            let payload = dec.payload_position();
            match dec.step(&buf[pos..]) {
                Ok(Step::Forward(n)) => {
                    if let Some((mask, offset)) = payload {
                        let start = msg.len();
                        msg.extend_from_slice(&buf[pos..pos + n]);
                        if let Some(key) = mask {
                            apply_mask(&mut msg[start..], key, offset);
                        }
                    } else {
                        // A data frame's header: its opcode says what the
                        // message is (continuations keep the first frame's).
                        match OpCode::from_u8(buf[pos] & 0x0f) {
                            OpCode::Text => text = true,
                            OpCode::Binary => text = false,
                            _ => {}
                        }
                    }
                    pos += n;
                    if dec.at_message_boundary() {
                        if text {
                            on_request(ctx, conn, client, &msg);
                        } else {
                            client.set_reason("binary message");
                            client
                                .send_close(close_code::UNSUPPORTED, "JSON-RPC text messages only");
                        }
                        msg.clear();
                        if msg.capacity() > 64 * 1024 {
                            msg = Vec::new();
                        }
                    }
                }
                Ok(Step::Control(frame, n)) => {
                    pos += n;
                    match frame.opcode {
                        OpCode::Ping => {
                            if client.alive() {
                                frame_parts(
                                    &mut client.out.borrow_mut(),
                                    OpCode::Pong,
                                    &[frame.payload()],
                                    None,
                                );
                                client.writer_wake.notify();
                            }
                        }
                        OpCode::Pong => {}
                        _ => {
                            client.got_close.set(true);
                            client.set_reason("client closed");
                            // Answer with its code (1000 when it gave none).
                            let code = frame.close_code().unwrap_or(close_code::NORMAL);
                            client.send_close(code, "");
                            client.writer_wake.notify();
                            client.timer_wake.notify();
                            break 'session;
                        }
                    }
                }
                Ok(Step::NeedMore) => break,
                Err(e) => {
                    crate::debug!("client protocol error: {e}");
                    client.set_reason("client protocol error");
                    client.send_close(e.close_code(), e.reason());
                    break 'session;
                }
            }
        }
        buf.drain(..pos);
        if buf.is_empty() {
            // The reader sizes the next buffer to the traffic (512 bytes when quiet).
            buf = Vec::new();
        }
        // After our close, keep reading (and dropping) until the client's
        // close, its EOF or the close deadline: closing with its close
        // frame unread would reset the connection.
        if client.done() {
            break;
        }
        // Backpressure: the client does not read its answers, or the node is slow.
        while client.alive()
            && (client.out.borrow().len() > ctx.cfg.max_buffered
                || conn.out.borrow().len() > ctx.cfg.max_buffered * 16)
        {
            if conn.out.borrow().len() > ctx.cfg.max_buffered * 16 {
                let limit = ctx.cfg.max_buffered * 16;
                conn.until(|c| c.out.borrow().len() <= limit || c.state.get() == State::Dead)
                    .await;
            } else {
                client.reader_wake.wait().await;
            }
        }
        let (res, b) = r.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => {
                client.set_reason("client connection lost");
                client.dead.set(true);
                client.writer_wake.notify();
                client.timer_wake.notify();
                break;
            }
            Ok(_) => client.last_activity.set(Instant::now()),
        }
    }
    client.reader_done.set(true);
    client.writer_wake.notify();
    client.timer_wake.notify();
    dec.messages()
}

/// One whole text message from the client.
fn on_request(ctx: &Ctx<'_>, conn: &Rc<Conn>, client: &Rc<Client>, msg: &[u8]) {
    if !client.alive() {
        return;
    }
    // The node must be able to answer with an id we can map back: JSON that
    // does not parse would come back with `"id":null`, so it is answered here.
    if serde_json::from_slice::<serde::de::IgnoredAny>(msg).is_err() {
        client.send_text(
            br#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}"#,
        );
        return;
    }
    if let Some((adm, ip)) = ctx.admission {
        if let Err((refusal, answer)) = adm.check_call(ip, msg, Instant::now()) {
            crate::debug!("refused a call from {ip}: {refusal:?}");
            if let Some(a) = answer {
                client.send_text(a.as_bytes());
            }
            return;
        }
    }
    let target = if ctx.route && ctx.shared.router.route(msg, ctx.chain) == Target::Archive {
        ctx.shared.archive_for(client)
    } else {
        None
    };
    let to = target.as_ref().unwrap_or(conn);
    match jsonrpc::kind(msg) {
        Kind::Object => {
            let Some(p) = jsonrpc::peek(msg) else {
                client.send_text(br#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}"#);
                return;
            };
            if let Some(answer) = refuse(ctx, conn, client, &p) {
                if let Some(a) = answer {
                    client.send_text(a.as_bytes());
                }
                return;
            }
            let retry = (ctx.route && target.is_none() && ctx.shared.router.retryable(msg))
                .then(|| Box::from(msg));
            send_request(to, client, msg, &p, 0, retry);
        }
        Kind::Batch => send_batch(ctx, to, conn, client, msg),
        Kind::Other => {
            client.send_text(br#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}"#);
        }
    }
}

/// Per-session checks: subscription ownership, requests in flight,
/// subscriptions. `Some(answer)` refuses the call (`None`: no id, no answer).
fn refuse(
    ctx: &Ctx<'_>,
    conn: &Conn,
    client: &Rc<Client>,
    p: &jsonrpc::Peek<'_>,
) -> Option<Option<String>> {
    let method = p.method.unwrap_or(b"");
    let id = p.id.unwrap_or(b"null");
    if takes_subscription(method) {
        if let Some(sub) = p.params.and_then(|params| jsonrpc::param(params, 0)) {
            let foreign = |c: &Conn| {
                c.subs
                    .borrow()
                    .get(sub)
                    .is_some_and(|w| !std::ptr::eq(w.as_ptr(), Rc::as_ptr(client)))
            };
            let on_archive = client.archive.borrow().as_ref().is_some_and(|a| foreign(a));
            if foreign(conn) || on_archive {
                return Some(p.id.map(|_| rpc_error(id, -32602, "Invalid subscription id", None)));
            }
        }
    }
    if let Some((adm, _)) = ctx.admission {
        let limit = |reason: Reason, what: &str| {
            adm.shared.rejections.count(reason);
            let data = format!(r#"{{"limit":"{what}"}}"#);
            Some(p.id.map(|_| rpc_error(id, -32005, "limit exceeded", Some(&data))))
        };
        if adm.max_inflight > 0 && p.id.is_some() && client.inflight.get() >= adm.max_inflight {
            return limit(Reason::Inflight, "max_inflight_per_connection");
        }
        if adm.max_subscriptions > 0
            && !is_unsubscribe(method)
            && std::str::from_utf8(method)
                .ok()
                .and_then(unsubscribe_method)
                .is_some()
            && client.subs.borrow().len() as u32 >= adm.max_subscriptions
        {
            return limit(Reason::Subscriptions, "max_subscriptions_per_connection");
        }
    }
    None
}

/// How a call changes subscriptions.
fn call_of(p: &jsonrpc::Peek<'_>) -> Call {
    let method = p.method.unwrap_or(b"");
    if is_unsubscribe(method) {
        if let Some(sub) = p.params.and_then(|params| jsonrpc::param(params, 0)) {
            return Call::Unsubscribe(Box::from(sub));
        }
        return Call::Plain;
    }
    match std::str::from_utf8(method)
        .ok()
        .and_then(unsubscribe_method)
    {
        Some(m) => Call::Subscribe(m.into_boxed_str()),
        None => Call::Plain,
    }
}

/// Send one request with its id replaced; remember how to answer it.
fn send_request(
    to: &Conn,
    client: &Rc<Client>,
    msg: &[u8],
    p: &jsonrpc::Peek<'_>,
    batch: u32,
    retry: Option<Box<[u8]>>,
) {
    let Some(id) = p.id else {
        // A notification: no answer to map.
        to.send_parts(&[msg]);
        return;
    };
    let gid = to.next_id();
    let mut digits = [0u8; 20];
    let at = offset_in(msg, id);
    to.send_parts(&[&msg[..at], decimal(gid, &mut digits), &msg[at + id.len()..]]);
    register(to, client, gid, id, batch, call_of(p), retry);
}

fn register(
    to: &Conn,
    client: &Rc<Client>,
    gid: u64,
    id: &[u8],
    batch: u32,
    call: Call,
    retry: Option<Box<[u8]>>,
) {
    client.inflight.set(client.inflight.get() + 1);
    to.pending.borrow_mut().insert(
        gid,
        Waiting {
            client: Rc::downgrade(client),
            id: Box::from(id),
            batch,
            call,
            retry,
        },
    );
}

/// A batch goes out as one array with every id replaced, and its answers
/// come back to the client as one array.
fn send_batch(ctx: &Ctx<'_>, to: &Conn, conn: &Conn, client: &Rc<Client>, msg: &[u8]) {
    let batch = client.batches.get().wrapping_add(1).max(1);
    client.batches.set(batch);
    let mut body: Vec<u8> = Vec::with_capacity(msg.len() + 16);
    let mut local: Vec<String> = Vec::new();
    let mut forwarded = 0;
    body.push(b'[');
    for e in jsonrpc::elements(msg) {
        let Some(p) = jsonrpc::peek(e) else {
            local.push(rpc_error(b"null", -32600, "Invalid Request", None));
            continue;
        };
        if let Some(answer) = refuse(ctx, conn, client, &p) {
            local.extend(answer);
            continue;
        }
        if forwarded > 0 {
            body.push(b',');
        }
        forwarded += 1;
        match p.id {
            Some(id) => {
                let gid = to.next_id();
                let at = offset_in(e, id);
                body.extend_from_slice(&e[..at]);
                body.extend_from_slice(decimal(gid, &mut [0u8; 20]));
                body.extend_from_slice(&e[at + id.len()..]);
                register(to, client, gid, id, batch, call_of(&p), None);
            }
            None => body.extend_from_slice(e),
        }
    }
    body.push(b']');
    if forwarded == 0 && local.is_empty() {
        // `[]`: an empty batch is an invalid request (JSON-RPC 2.0 §6).
        local.push(rpc_error(b"null", -32600, "Invalid Request", None));
    }
    if !local.is_empty() {
        // Answered here: those of the batch the gateway refused, as one array.
        client.send_text(format!("[{}]", local.join(",")).as_bytes());
    }
    if forwarded > 0 {
        to.send_parts(&[&body]);
    }
}

async fn client_writer<W: WriteHalf>(ctx: &Ctx<'_>, client: &Rc<Client>, w: &mut W) {
    let mut spare: Vec<u8> = Vec::new();
    let mut finished = false;
    loop {
        if client.dead.get() {
            break;
        }
        let mut buf = std::mem::replace(&mut *client.out.borrow_mut(), std::mem::take(&mut spare));
        // The close goes after everything queued, in the same write, and
        // finishes the stream (nothing may follow a close frame).
        let close = client.close.borrow_mut().take();
        if let Some(frame) = close {
            buf.extend_from_slice(&frame);
            if w.write_final(buf).await.is_err() {
                client.set_reason("client connection lost");
            }
            finished = true;
            break;
        }
        if buf.is_empty() {
            spare = buf;
            if client.sent_close.get() {
                break;
            }
            client.writer_wake.wait().await;
            continue;
        }
        let (res, mut b) = w.write_all(buf).await;
        if res.is_err() {
            client.set_reason("client connection lost");
            client.dead.set(true);
            stop(client.fd, Stop::All);
            break;
        }
        b.clear();
        if b.capacity() <= ctx.cfg.max_buffered.min(64 * 1024) {
            spare = b;
        }
        client.reader_wake.notify();
    }
    client.out.borrow_mut().clear();
    if !client.dead.get() && !finished {
        w.shutdown().await;
    }
    client.dead.set(true);
    client.reader_wake.notify();
    client.timer_wake.notify();
}

/// Idle timeout, the close deadline, and the worker's shutdown (answers to
/// requests in flight still go out, for up to [`SHUTDOWN_DRAIN`], then 1001).
async fn client_timer(ctx: &Ctx<'_>, conn: &Rc<Conn>, client: &Rc<Client>) {
    let mut drain_until = None;
    loop {
        if client.reader_done.get() && (client.dead.get() || client.sent_close.get()) {
            return;
        }
        let now = Instant::now();
        if let Some(deadline) = client.close_deadline.get() {
            if now >= deadline {
                client.set_reason("close deadline");
                client.dead.set(true);
                stop(client.fd, Stop::All);
                client.writer_wake.notify();
                return;
            }
        }
        let mut at = client.close_deadline.get();
        if at.is_none() && client.dead.get() {
            // The writer is done and nothing was closed: nothing to time.
            client.timer_wake.wait().await;
            continue;
        }
        if at.is_none() && ctx.shutdown.fired() {
            let until = *drain_until.get_or_insert(now + SHUTDOWN_DRAIN);
            if client.inflight.get() == 0 || now >= until {
                let conns = std::iter::once(conn.clone()).chain(client.archive.borrow().clone());
                let pending: Vec<Waiting> = conns.flat_map(|c| c.take_pending_of(client)).collect();
                fail_waiting(pending, "gateway shutting down; reconnect and retry");
                client.set_reason("server shutting down");
                client.send_close(close_code::GOING_AWAY, "server shutting down");
                continue;
            }
            at = Some(until.min(now + DRAIN_POLL));
        }
        if at.is_none() {
            let idle_at = client.last_activity.get() + ctx.cfg.idle_timeout;
            if now >= idle_at {
                client.set_reason("idle timeout");
                client.send_close(close_code::GOING_AWAY, "idle timeout");
                continue;
            }
            at = Some(idle_at);
        }
        let stopping = async {
            if ctx.shutdown.fired() {
                std::future::pending::<()>().await
            }
            ctx.shutdown.wait().await
        };
        let sleep = monoio::time::sleep_until(at.expect("set above").into());
        monoio::select! {
            _ = sleep => {}
            _ = client.timer_wake.wait() => {}
            _ = stopping => {}
        }
    }
}

/// Open a shared connection and run it until it is lost.
async fn run_conn(sh: Rc<Shared>, conn: Rc<Conn>) {
    let node = &sh.pool.nodes()[conn.node];
    let attempt = monoio::time::timeout(
        sh.settings.connect_timeout,
        crate::upstream::open_shared(node, sh.settings.max_head),
    )
    .await;
    let (stream, early) = match attempt {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            sh.pool.health().report_connect_failure(conn.node);
            sh.fail(&conn, &e);
            return;
        }
        Err(_) => {
            sh.pool.health().report_connect_failure(conn.node);
            sh.fail(
                &conn,
                &format!(
                    "no answer within {} ms",
                    sh.settings.connect_timeout.as_millis()
                ),
            );
            return;
        }
    };
    conn.fd.set(Some(stream.raw_fd()));
    if conn.state.get() == State::Dead {
        // Failed while connecting (nothing can, today; but never resurrect).
        return;
    }
    conn.state.set(State::Up);
    conn.wake_all();
    conn.writer_wake.notify();
    let (mut r, mut w) = stream.into_split();
    monoio::join!(
        async {
            let why = conn_reader(&sh, &conn, &mut r, early).await;
            sh.fail(&conn, &why);
        },
        async {
            let why = conn_writer(&conn, &mut w).await;
            sh.fail(&conn, &why);
        },
        conn_timer(&sh, &conn),
    );
}

async fn conn_writer(conn: &Conn, w: &mut NodeWriter) -> String {
    let mut spare: Vec<u8> = Vec::new();
    loop {
        if conn.state.get() == State::Dead {
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
        if b.capacity() <= 256 * 1024 {
            spare = b;
        }
        conn.wake_all();
    }
}

/// Keepalive pings, and the node's health: a node marked down loses its connection.
async fn conn_timer(sh: &Shared, conn: &Rc<Conn>) {
    let mut next_ping = Instant::now() + sh.settings.keepalive;
    loop {
        if conn.state.get() == State::Dead {
            return;
        }
        if !sh.pool.health().is_up(conn.node) {
            sh.fail(conn, "the node failed its health checks");
            return;
        }
        let now = Instant::now();
        if now >= next_ping {
            conn.send_control(OpCode::Ping, b"");
            next_ping = now + sh.settings.keepalive;
        }
        let at = next_ping.min(now + sh.settings.health_every);
        let sleep = monoio::time::sleep_until(at.into());
        monoio::select! {
            _ = sleep => {}
            _ = conn.timer_wake.wait() => {}
        }
    }
}

async fn conn_reader(
    sh: &Rc<Shared>,
    conn: &Rc<Conn>,
    r: &mut NodeReader,
    early: Vec<u8>,
) -> String {
    let mut dec = Decoder::new(Role::Server, sh.settings.codec);
    let mut buf = early;
    let mut msg: Vec<u8> = Vec::new();
    loop {
        let mut pos = 0;
        while pos < buf.len() {
            let payload = dec.payload_position();
            match dec.step(&buf[pos..]) {
                Ok(Step::Forward(n)) => {
                    if payload.is_some() {
                        msg.extend_from_slice(&buf[pos..pos + n]);
                    }
                    pos += n;
                    if dec.at_message_boundary() {
                        on_answer(sh, conn, &msg);
                        msg.clear();
                        if msg.capacity() > 1 << 20 {
                            msg = Vec::new();
                        }
                    }
                }
                Ok(Step::Control(frame, n)) => {
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
                Ok(Step::NeedMore) => break,
                Err(e) => return format!("protocol error: {e}"),
            }
        }
        buf.drain(..pos);
        if conn.state.get() == State::Dead {
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
            Ok(_) => {}
        }
    }
}

/// Our id in an answer, if it is one of ours.
fn our_id(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// One whole message from a node.
fn on_answer(sh: &Rc<Shared>, conn: &Rc<Conn>, msg: &[u8]) {
    match jsonrpc::kind(msg) {
        Kind::Object => {
            // Nodes put `id` before `result`: finding it does not walk a
            // large answer (a 300 KB `state_getMetadata`).
            let id = jsonrpc::member(msg, b"id");
            if let Some(gid) = id.and_then(our_id) {
                let Some(w) = conn.pending.borrow_mut().remove(&gid) else {
                    crate::debug!("answer to an unknown id {gid}");
                    return;
                };
                answer(sh, conn, msg, id.expect("parsed above"), w);
                return;
            }
            let Some(p) = jsonrpc::peek(msg) else {
                return;
            };
            if p.id.is_none() {
                // A notification: to the session that owns its subscription.
                let Some(sub) = p
                    .params
                    .and_then(|params| jsonrpc::member(params, b"subscription"))
                else {
                    return;
                };
                let owner = conn.subs.borrow().get(sub).and_then(Weak::upgrade);
                if let Some(c) = owner {
                    c.send_text(msg);
                }
            } else {
                crate::debug!(
                    "an answer the gateway cannot place: {}",
                    String::from_utf8_lossy(&msg[..msg.len().min(200)])
                );
            }
        }
        Kind::Batch => {
            // The answers to one batch: one array back to its session.
            let mut to: Option<Rc<Client>> = None;
            let mut body: Vec<u8> = Vec::with_capacity(msg.len() + 16);
            body.push(b'[');
            let mut first = true;
            for e in jsonrpc::elements(msg) {
                let Some(p) = jsonrpc::peek(e) else {
                    continue;
                };
                let w =
                    p.id.and_then(our_id)
                        .and_then(|id| conn.pending.borrow_mut().remove(&id));
                let Some(w) = w else {
                    continue;
                };
                let Some(c) = w.client.upgrade() else {
                    orphan(conn, &p, &w.call);
                    continue;
                };
                c.inflight.set(c.inflight.get().saturating_sub(1));
                settle_subscription(conn, &c, &p, &w.call);
                if !first {
                    body.push(b',');
                }
                first = false;
                let id = p.id.expect("matched by id");
                let at = offset_in(e, id);
                body.extend_from_slice(&e[..at]);
                body.extend_from_slice(&w.id);
                body.extend_from_slice(&e[at + id.len()..]);
                to.get_or_insert(c);
            }
            body.push(b']');
            if let Some(c) = to {
                c.send_text(&body);
            }
        }
        Kind::Other => {}
    }
}

/// A subscription opened for a session that has ended since: end it.
fn orphan(conn: &Conn, p: &jsonrpc::Peek<'_>, call: &Call) {
    if let (Call::Subscribe(unsub), Some(sub)) = (call, p.result) {
        unsubscribe(conn, sub, unsub);
    }
}

/// Send `method(sub)` on behalf of a session that is gone; its answer is dropped.
fn unsubscribe(c: &Conn, sub: &[u8], method: &str) {
    let id = c.next_id();
    let mut digits = [0u8; 20];
    c.pending.borrow_mut().insert(
        id,
        Waiting {
            client: Weak::new(),
            id: Box::from(&b"null"[..]),
            batch: 0,
            call: Call::Plain,
            retry: None,
        },
    );
    c.send_parts(&[
        br#"{"jsonrpc":"2.0","id":"#,
        decimal(id, &mut digits),
        br#","method":""#,
        method.as_bytes(),
        br#"","params":["#,
        sub,
        b"]}",
    ]);
}

/// Track subscriptions opened or ended by an answer.
fn settle_subscription(conn: &Rc<Conn>, c: &Rc<Client>, p: &jsonrpc::Peek<'_>, call: &Call) {
    match call {
        Call::Plain => {}
        Call::Subscribe(unsub) => {
            if let Some(sub) = p.result {
                // A session that is closing still gets it: it ends its
                // subscriptions when it is over (see `session`).
                if c.alive() {
                    conn.subs
                        .borrow_mut()
                        .insert(Box::from(sub), Rc::downgrade(c));
                }
                c.subs
                    .borrow_mut()
                    .push((conn.clone(), Box::from(sub), unsub.clone()));
            }
        }
        Call::Unsubscribe(sub) => {
            conn.subs.borrow_mut().remove(sub);
            c.subs.borrow_mut().retain(|(_, s, _)| s != sub);
        }
    }
}

/// A single answer to a request of ours.
fn answer(sh: &Rc<Shared>, conn: &Rc<Conn>, msg: &[u8], id: &[u8], w: Waiting) {
    let settle = |c: Option<&Rc<Client>>| {
        if w.call == Call::Plain {
            return;
        }
        let Some(p) = jsonrpc::peek(msg) else {
            return;
        };
        match c {
            Some(c) => settle_subscription(conn, c, &p, &w.call),
            None => orphan(conn, &p, &w.call),
        }
    };
    let Some(c) = w.client.upgrade() else {
        settle(None);
        return;
    };
    // A pruned node without the state: ask an archive node, once.
    if let Some(request) = &w.retry {
        if sh.router.is_pruned_error(msg) {
            if let Some(archive) = sh.archive_for(&c) {
                if let Some(rp) = jsonrpc::peek(request) {
                    crate::debug!("pruned node lacks the state; retrying on archive");
                    c.inflight.set(c.inflight.get().saturating_sub(1));
                    send_request(&archive, &c, request, &rp, w.batch, None);
                    return;
                }
            }
        }
    }
    c.inflight.set(c.inflight.get().saturating_sub(1));
    settle(Some(&c));
    let at = offset_in(msg, id);
    c.send_parts(&[&msg[..at], &w.id, &msg[at + id.len()..]]);
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

    #[test]
    fn the_method_that_ends_a_subscription() {
        let end = |m: &str| unsubscribe_method(m);
        assert_eq!(
            end("chain_subscribeNewHeads").as_deref(),
            Some("chain_unsubscribeNewHeads")
        );
        assert_eq!(end("eth_subscribe").as_deref(), Some("eth_unsubscribe"));
        assert_eq!(
            end("author_submitAndWatchExtrinsic").as_deref(),
            Some("author_unwatchExtrinsic")
        );
        assert_eq!(
            end("chainHead_v1_follow").as_deref(),
            Some("chainHead_v1_unfollow")
        );
        assert_eq!(
            end("transactionWatch_v1_submitAndWatch").as_deref(),
            Some("transactionWatch_v1_unwatch")
        );
        assert_eq!(end("chain_unsubscribeNewHeads"), None);
        assert_eq!(end("system_health"), None);
    }
}
