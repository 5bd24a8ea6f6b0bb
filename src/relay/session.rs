//! A session's shared state: the two sides, the close state, the requests
//! in flight, timers' marks, and (for a session on a shared node
//! connection) its membership there. The futures of the relay (pumps,
//! writers, timer) and a shared connection's reader all act on it.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;

use monoio::time::Instant;

use crate::io::{stop, Stop};
use crate::jsonrpc::Call;
use crate::signal::Signal;
use crate::ws::frame::{write_close, write_frame, OpCode};

use super::archive::state::Archive;
use super::close::{Closing, Effects, Which};
use super::inflight::Inflight;
use super::side::Side;

/// Limits and timers of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// The chain's counters slot (`stats::chain_slot`).
    pub chain: u8,
    /// What a client may send.
    pub codec: crate::ws::codec::Limits,
    /// What a node may send (`limits.max_answer_bytes`).
    pub node_codec: crate::ws::codec::Limits,
    pub max_buffered: usize,
    pub idle_timeout: std::time::Duration,
    pub close_timeout: std::time::Duration,
    pub keepalive: std::time::Duration,
    /// Requests outstanding this long with nothing from the node: it hung.
    pub request_timeout: std::time::Duration,
    /// Over `max_buffered` of what cannot wait at its source this long: a
    /// slow reader (1008).
    pub slow_reader: std::time::Duration,
    /// A write to the client pending this long ends the session.
    pub send_timeout: std::time::Duration,
    /// Refusal counters (slow readers), process-wide.
    pub counts: &'static crate::policy::SharedCounts,
}

/// A session's slot on its core's shared node connections (the shared
/// module's `Member`): what the session itself asks of it. A trait, so
/// that a session does not name the connections that name it.
pub trait Slot: std::any::Any {
    /// The session answers its requests in flight itself (errors): they
    /// are forgotten on the connections.
    fn forget_waiting(&self, s: &Session);
    /// Subscriptions it holds there.
    fn subscriptions(&self) -> u32;
}

/// Pongs queued towards one side at most (a client may send a few pings
/// at once and expect each answered, as Autobahn's 2.10 does).
pub const MAX_PONGS: usize = 16;

/// One client session, in either mode.
pub struct Session {
    pub cfg: SessionConfig,
    /// The API key it came with: revoked by a reload, the session closes.
    pub key: Option<std::sync::Arc<crate::policy::keys::Key>>,
    pub closing: Closing,
    pub client: Side,
    /// The node: a pinned session's own connection. A session on a shared
    /// connection has no socket of its own (see `member`).
    pub node: Option<Box<Side>>,
    pub last_activity: Cell<Instant>,
    /// When the node last sent anything (a hung node sends nothing).
    pub node_seen: Cell<Instant>,
    pub close_deadline: Cell<Option<Instant>>,
    pub writers_left: Cell<u8>,
    pub timer_wake: Signal,
    /// A routed pinned session's archive connection.
    pub archive: Option<Box<Archive>>,
    pub inflight: RefCell<Inflight>,
    /// Subscriptions asked for minus those ended (for the per-session
    /// limit; a shared session counts the ones it owns instead).
    pub subscriptions: Cell<u32>,
    /// Its node was removed by a reload and the grace has passed: it ends
    /// as on shutdown (answers in flight go out, then 1001).
    pub retiring: Cell<bool>,
    /// A session on a shared node connection: its slot there.
    pub member: Option<Box<dyn Slot>>,
    /// Itself, for what must outlive a call into it (answers that come
    /// back on a shared connection).
    pub me: std::rc::Weak<Session>,
    /// Since when more than `max_buffered` bytes have waited for the client.
    pub slow_since: Cell<Option<Instant>>,
}

impl Session {
    /// `node_fd`: a pinned session's node socket (`None`: a shared
    /// connection's slot); `routed`: it may open an archive connection.
    pub fn new(
        cfg: SessionConfig,
        client_fd: RawFd,
        node_fd: Option<RawFd>,
        routed: bool,
    ) -> Session {
        let shared = node_fd.is_none();
        Session {
            cfg,
            key: None,
            closing: Closing::new(!shared),
            client: Side::new("client", false, client_fd),
            node: node_fd.map(|fd| Box::new(Side::new("node", true, fd))),
            last_activity: Cell::new(Instant::now()),
            node_seen: Cell::new(Instant::now()),
            close_deadline: Cell::new(None),
            writers_left: Cell::new(if shared { 1 } else { 2 }),
            timer_wake: Signal::default(),
            archive: routed.then(Box::default),
            inflight: RefCell::new(Inflight::default()),
            subscriptions: Cell::new(0),
            retiring: Cell::new(false),
            member: None,
            me: std::rc::Weak::new(),
            slow_since: Cell::new(None),
        }
    }

    /// Its node was removed from the configuration: finish and close (1001).
    pub fn retire(&self) {
        self.retiring.set(true);
        self.timer_wake.notify();
    }

    /// A side of the session (a shared session has no node side of its own).
    pub fn side(&self, which: Which) -> &Side {
        self.side_opt(which).expect("a pinned session's node side")
    }

    fn side_opt(&self, which: Which) -> Option<&Side> {
        match which {
            Which::Client => Some(&self.client),
            Which::Node => self.node.as_deref(),
        }
    }

    /// A routed session's archive connection.
    pub fn archive(&self) -> &Archive {
        self.archive.as_deref().expect("a routed session")
    }

    fn takes_data(&self, which: Which) -> bool {
        self.closing.side(which).takes_data()
    }

    /// Relay data-frame bytes to `to`.
    pub fn push_data(&self, to: Which, buf: Vec<u8>, frame_end: bool, message_end: bool) {
        let (true, Some(side)) = (self.takes_data(to), self.side_opt(to)) else {
            return;
        };
        let out = &side.out;
        out.queued.set(out.queued.get() + buf.len());
        out.data.borrow_mut().push_back(super::side::Chunk {
            buf,
            frame_end,
            message_end,
        });
        out.writer_wake.notify();
    }

    /// Queue a whole message from elsewhere (frames included) to `to`.
    /// What is injected towards the client (an answer from the cache, a
    /// shared connection or an archive node; the gateway's own errors)
    /// cannot wait at its source as relayed data does: a client that lets
    /// it pile up is closed instead ([`Session::client_too_slow`]).
    pub fn inject(&self, to: Which, message: Vec<u8>) {
        let (true, Some(side)) = (self.takes_data(to), self.side_opt(to)) else {
            return;
        };
        // (No clock read unless over the bound: this is every answer's way.)
        let over = to == Which::Client && side.out.queued.get() > self.cfg.max_buffered;
        if over && self.client_too_slow(Instant::now()) {
            self.close_slow_reader("client too slow to read its messages");
            return;
        }
        let out = &side.out;
        out.queued.set(out.queued.get() + message.len());
        out.injected.borrow_mut().push_back(message);
        out.writer_wake.notify();
    }

    /// Queue a text message to the client (a JSON-RPC answer or error).
    pub fn send_text(&self, payload: &[u8]) {
        self.send_parts(&[payload]);
    }

    /// Queue a text message whose payload is `parts` joined.
    pub fn send_parts(&self, parts: &[&[u8]]) {
        if !self.takes_data(Which::Client) {
            return;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut f = Vec::with_capacity(len + 10);
        crate::ws::frame::write_frame_parts(&mut f, OpCode::Text, parts, None);
        self.inject(Which::Client, f);
    }

    /// Queue a notification for the client: charged to its API key, and
    /// not delivered past the key's quota (the session closes then).
    pub fn send_notification(&self, parts: &[&[u8]]) {
        if self.key.is_some() && !self.notification(parts.iter().map(|p| p.len()).sum(), false) {
            return;
        }
        self.send_parts(parts);
    }

    /// A batch whose requests go their own ways (ids: those with one, in
    /// order): its number, for the tags of its requests' answers.
    pub fn gather(&self, ids: &[&[u8]]) -> u32 {
        self.inflight.borrow_mut().gather(ids)
    }

    /// The answer to the request `id` tagged `tag` (`parts` joined): to the
    /// client at once, or (a batch's) into its place, the batch going out
    /// as one array when it is whole. The request is done either way.
    pub fn reply(&self, tag: u64, id: &[u8], parts: &[&[u8]]) {
        match crate::call::batch::untag(tag) {
            None => self.send_parts(parts),
            Some((batch, slot)) => {
                let whole = self.inflight.borrow_mut().fill(batch, slot, parts);
                if let Some(array) = whole {
                    self.send_parts(&[&array]);
                }
            }
        }
        self.answered(id);
    }

    /// A ping or pong to `to`, at its next frame boundary. Pongs queue up to
    /// [`MAX_PONGS`]; past that, a new one replaces the last still queued
    /// (RFC 6455 §5.5.3 lets an endpoint answer only the latest ping), so a
    /// peer that pings and never reads holds at most that many (2 KiB).
    pub fn push_control(&self, to: Which, opcode: OpCode, payload: &[u8]) {
        let (true, Some(side)) = (self.takes_data(to), self.side_opt(to)) else {
            return;
        };
        let mut frame = Vec::with_capacity(payload.len() + 14);
        write_frame(
            &mut frame,
            opcode,
            payload,
            side.masked.then(crate::rng::mask_key),
        );
        let mut control = side.out.control.borrow_mut();
        let pong = |f: &Vec<u8>| f.first().is_some_and(|b| b & 0x0f == 0xA);
        let full =
            opcode == OpCode::Pong && control.iter().filter(|f| pong(f)).count() >= MAX_PONGS;
        match control.iter_mut().rev().find(|f| pong(f)) {
            Some(last) if full => *last = frame,
            _ => control.push_back(frame),
        }
        drop(control);
        side.out.writer_wake.notify();
    }

    /// Whether the client lets more than `max_buffered` bytes wait: for
    /// `slow_reader`, or more than eight times that at once (a client that
    /// reads is not closed for one large answer followed by others before
    /// its writer had a turn). Notes since when it is over.
    pub fn client_too_slow(&self, now: Instant) -> bool {
        let queued = self.client.out.queued.get();
        let limit = self.cfg.max_buffered;
        if queued <= limit {
            self.slow_since.set(None);
            return false;
        }
        let since = match self.slow_since.get() {
            Some(since) => since,
            None => {
                // The timer looks again when the slow-reader time is up.
                self.slow_since.set(Some(now));
                self.timer_wake.notify();
                now
            }
        };
        queued > limit.saturating_mul(8) || now.duration_since(since) >= self.cfg.slow_reader
    }

    /// Close a client that does not read (1008): what it has not read is
    /// dropped, so that the close leaves as soon as its socket takes it.
    pub fn close_slow_reader(&self, why: &'static str) {
        crate::debug!("{why}: {} bytes waiting", self.client.out.queued.get());
        self.cfg
            .counts
            .rejections
            .count(crate::policy::Reason::SlowReader);
        self.client.out.clear();
        self.closing
            .close_client(self, crate::ws::frame::close_code::POLICY, why);
    }

    /// Track the ids of a whole request sent to the node.
    pub fn sent(&self, call: &Call<'_>) {
        self.inflight.borrow_mut().sent(call);
    }

    /// An answer from the node: its request is done.
    pub fn answered(&self, id: &[u8]) {
        self.inflight.borrow_mut().answered(id);
        if self.member.is_some() {
            self.closing.settle_node(self);
        }
    }

    pub fn set_reason(&self, reason: &'static str) {
        self.closing.set_reason(reason);
    }

    /// Its API key as the newest configuration has it (a reload that
    /// changed its limits applies from the next call).
    pub fn key(&self) -> Option<&std::sync::Arc<crate::policy::keys::Key>> {
        self.key.as_ref().map(|k| k.current())
    }

    /// Whether a reload changed its key since it started (then each call
    /// looks whether the key still allows it).
    pub fn key_changed(&self) -> bool {
        self.key
            .as_ref()
            .is_some_and(|k| !std::sync::Arc::ptr_eq(k, k.current()))
    }

    /// Whether its key lost the right to this session: revoked, or a
    /// reload took its chain away. Then the session closes (1008): its
    /// requests in flight answered with errors.
    pub fn key_withdrawn(&self) -> bool {
        let Some(key) = self.key() else {
            return false;
        };
        let why = if key.revoked() {
            "key revoked"
        } else if key.spec.chains.is_some()
            && !crate::stats::chain_names()
                .get(self.cfg.chain as usize)
                .is_some_and(|c| key.allows_chain(c))
        {
            "key no longer allows this chain"
        } else {
            return false;
        };
        crate::debug!("session of key {} closed: {why}", key.name());
        self.fail_inflight(&format!("API {why}"));
        self.closing
            .close_both(self, crate::ws::frame::close_code::POLICY, why);
        true
    }

    /// Subscriptions the session holds, for its limit.
    pub fn subscription_count(&self) -> u32 {
        match &self.member {
            Some(m) => m.subscriptions(),
            None => self.subscriptions.get(),
        }
    }
}

impl crate::call::Reply for Session {
    fn answer(&self, tag: u64, id: &[u8], parts: &[&[u8]]) {
        self.reply(tag, id, parts);
    }
}

impl Effects for Session {
    fn queue_close(&self, to: Which, code: Option<u16>, reason: &str) {
        let Some(side) = self.side_opt(to) else {
            return;
        };
        if to == Which::Client {
            crate::stats::count(|c| c.close_sent(code));
        }
        let mut frame = Vec::with_capacity(reason.len().min(123) + 8);
        write_close(
            &mut frame,
            code,
            reason,
            side.masked.then(crate::rng::mask_key),
        );
        *side.out.close.borrow_mut() = Some(frame);
        side.out.writer_wake.notify();
    }

    fn fail_inflight(&self, why: &str) {
        if let Some(m) = &self.member {
            m.forget_waiting(self);
        }
        let bodies = self.inflight.borrow_mut().fail_all(why);
        for body in bodies {
            self.send_text(&body);
        }
    }

    fn finish(&self, which: Which) {
        if let Some(side) = self.side_opt(which) {
            side.out.finish();
        }
    }

    fn start_deadline(&self) {
        if self.close_deadline.get().is_none() {
            self.close_deadline
                .set(Some(Instant::now() + self.cfg.close_timeout));
            self.timer_wake.notify();
        }
    }

    /// Both sides are done: stop reading; writers drain what is queued,
    /// bounded by the close deadline.
    fn end(&self) {
        for side in [Some(&self.client), self.node.as_deref()]
            .into_iter()
            .flatten()
        {
            side.out.finish();
            // Usually both pumps have stopped reading by now (each got its close).
            if side.reading.get() {
                stop(side.fd, Stop::Reads);
            }
        }
        if let Some(a) = &self.archive {
            a.end();
        }
        self.start_deadline();
        self.timer_wake.notify();
    }

    fn node_quiet(&self) -> bool {
        self.inflight.borrow().is_empty()
    }
}

impl Session {
    /// A notification of `bytes` for this session's client (`delivered`:
    /// it went out already: counted, and the caller calls
    /// [`Session::quota_used_up`] once what it streamed is queued). False
    /// when its API key's quota is used up: it is not to be delivered, and
    /// the session closes.
    pub fn notification(&self, bytes: usize, delivered: bool) -> bool {
        let Some(key) = self.key() else {
            return true;
        };
        if key.notification(bytes, delivered) {
            return true;
        }
        if !delivered {
            self.quota_used_up();
        }
        false
    }

    /// Its API key's quota is used up while notifications flow: the session
    /// closes (1008), requests in flight answered with errors, so that the
    /// client is told rather than left waiting for what no longer comes.
    pub fn quota_used_up(&self) {
        if !self.closing.ended() && self.closing.side(Which::Client).takes_data() {
            if let Some(key) = &self.key {
                crate::debug!("session of key {} closed: quota used up", key.name());
            }
            self.fail_inflight("API key quota used up until its period ends");
            self.closing.close_both(
                self,
                crate::ws::frame::close_code::POLICY,
                "API key quota used up",
            );
        }
    }

    /// The close deadline passed: drop what is queued and stop every pending
    /// read and write.
    pub fn force_end(&self) {
        for side in [Some(&self.client), self.node.as_deref()]
            .into_iter()
            .flatten()
        {
            side.out.clear();
            stop(side.fd, Stop::All);
        }
        if let Some(a) = &self.archive {
            a.stop_all();
        }
        self.closing.force_end(self);
        self.end();
    }
}
