//! One WebSocket session after both handshakes: the relay.
//!
//! ```text
//!  client ──read──▶ pump(Role::Client) ──data──▶ upstream outbox ──▶ writer ──▶ node
//!     ▲                  │ ping/close                    ▲
//!     │                  ▼                               │ pong/close (masked)
//!  writer ◀── client outbox ◀──data── pump(Role::Server) ◀──read── node
//! ```
//!
//! Five futures share one task and one `Session`: a pump per direction, a
//! writer per side, and a timer. A pump reads into a pooled buffer, lets the
//! [`Decoder`] walk it, and hands the buffer itself to the other side's
//! outbox: data frames are never re-encoded or copied (a control frame in
//! the middle of a buffer is cut out with a `copy_within`, and an incomplete
//! header at the end, at most 139 bytes, moves to the next buffer). The start
//! of each message (unmasked, at most 16 KiB) is copied aside to note its
//! JSON-RPC ids: requests the node has not answered get errors if it is lost.
//!
//! Sessions that route per message (archive nodes in the pool) or check each
//! call (admission limits) hold each client message until it is whole; see
//! [`Routed`].
//!
//! Control frames are each side's own business: pings are answered towards
//! where they came from, never forwarded; the gateway pings nodes to keep
//! connections alive. Writers put control frames only between data frames.
//!
//! Closing: a close from one side is answered to it at once and passed to the
//! other side (same code), whose answer ends that side. A side that vanishes
//! gives the other side a close: 1012 to the client when its node is lost,
//! 1001 to the node when its client is. A protocol violation closes the
//! offender with the code its error maps to (1002/1007/1009) and the other
//! side with 1001 (client at fault) or 1014 (node at fault). A close deadline
//! bounds all of it; after it, pending reads and writes are stopped with
//! `shutdown(2)` ([`crate::io::stop`]).
//!
//! Backpressure: a pump stops reading while the outbox it feeds holds more
//! than `max_buffered` bytes, so a slow reader slows its sender instead of
//! growing memory.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::Duration;

use monoio::time::Instant;
use std::os::fd::RawFd;

use std::rc::Rc;

use crate::io::{stop, ReadHalf, Stop, WriteHalf};
use crate::jsonrpc;
use crate::route::{ChainView, Router, Target};
use crate::signal::{Broadcast, Signal};
use crate::upstream::{NodeReader, NodeWriter, Pool, UpgradeTemplate};
use crate::ws::codec::{Decoder, Limits as CodecLimits, Role, Step};
use crate::ws::frame::{close_code, write_close, write_frame, OpCode, ProtocolError};
use crate::ws::mask::apply_mask;

/// Limits and timers of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub codec: CodecLimits,
    pub max_buffered: usize,
    pub idle_timeout: Duration,
    pub close_timeout: Duration,
    pub keepalive: Duration,
}

/// The node a session is on, watched so that the session moves away (close
/// 1012, clients reconnect to a healthy node) when health checks mark it down.
#[derive(Debug, Clone)]
pub struct NodeWatch {
    pub health: std::sync::Arc<crate::health::Health>,
    pub index: usize,
    pub every: Duration,
}

/// How a session ended, for logs and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSummary {
    pub client_messages: u64,
    pub upstream_messages: u64,
    /// The close code sent to the client, if any.
    pub client_close_code: Option<u16>,
    pub reason: &'static str,
}

/// A piece of the relayed stream, and where it ends.
struct Chunk {
    buf: Vec<u8>,
    /// Ends between frames (a control frame may follow).
    frame_end: bool,
    /// Ends between messages (another source's message may follow).
    message_end: bool,
}

/// Frames waiting for one side's writer.
#[derive(Default)]
struct Outbox {
    /// Data-frame bytes relayed from the other side.
    data: RefCell<VecDeque<Chunk>>,
    /// Whole messages from elsewhere (an archive node's answers, the gateway's
    /// own JSON-RPC errors), written between two messages of `data`.
    injected: RefCell<VecDeque<Vec<u8>>>,
    /// Pings and pongs, written at the next frame boundary.
    control: RefCell<VecDeque<Vec<u8>>>,
    /// The close frame, written after all queued data.
    close: RefCell<Option<Vec<u8>>>,
    queued: Cell<usize>,
    /// Nothing more will be queued: drain, then shut the transport down.
    finished: Cell<bool>,
    writer_wake: Signal,
    space_wake: Signal,
}

/// One side of the session.
struct Side {
    name: &'static str,
    /// Frames written to this side are masked (the gateway is the client towards nodes).
    masked: bool,
    out: Outbox,
    sent_close: Cell<bool>,
    got_close: Cell<bool>,
    /// Transport closed or failed, or the peer broke the protocol: nothing more to expect.
    dead: Cell<bool>,
    close_code_sent: Cell<Option<u16>>,
    /// A close owed to this side for its protocol error, sent once the other
    /// side has answered what this side sent before the error.
    owed_close: Cell<Option<ProtocolError>>,
    /// The socket, to stop pending I/O when the session ends.
    fd: RawFd,
    /// A read is pending on this side (so ending the session must stop it).
    reading: Cell<bool>,
}

impl Side {
    fn new(name: &'static str, masked: bool, fd: RawFd) -> Side {
        Side {
            name,
            masked,
            out: Outbox::default(),
            sent_close: Cell::new(false),
            got_close: Cell::new(false),
            dead: Cell::new(false),
            close_code_sent: Cell::new(None),
            owed_close: Cell::new(None),
            fd,
            reading: Cell::new(false),
        }
    }

    fn done(&self) -> bool {
        self.dead.get() || (self.sent_close.get() && self.got_close.get())
    }

    fn push_data(&self, buf: Vec<u8>, frame_end: bool, message_end: bool) {
        if self.sent_close.get() || self.dead.get() {
            return;
        }
        self.out.queued.set(self.out.queued.get() + buf.len());
        self.out.data.borrow_mut().push_back(Chunk {
            buf,
            frame_end,
            message_end,
        });
        self.out.writer_wake.notify();
    }

    /// Queue a whole message from elsewhere (frames included).
    fn inject(&self, message: Vec<u8>) {
        if self.sent_close.get() || self.dead.get() {
            return;
        }
        self.out.queued.set(self.out.queued.get() + message.len());
        self.out.injected.borrow_mut().push_back(message);
        self.out.writer_wake.notify();
    }

    fn push_control(&self, opcode: OpCode, payload: &[u8]) {
        if self.sent_close.get() || self.dead.get() {
            return;
        }
        let mut frame = Vec::with_capacity(payload.len() + 14);
        let mask = self.masked.then(crate::rng::mask_key);
        write_frame(&mut frame, opcode, payload, mask);
        self.out.control.borrow_mut().push_back(frame);
        self.out.writer_wake.notify();
    }

    /// Queue a close frame (once) and stop queueing data. A close owed for a
    /// protocol error takes precedence over the code given.
    fn send_close(&self, code: Option<u16>, reason: &str) {
        if self.sent_close.get() || self.dead.get() {
            return;
        }
        let (code, reason) = match self.owed_close.get() {
            Some(e) => (Some(e.close_code()), e.reason()),
            None => (code, reason),
        };
        let mut frame = Vec::with_capacity(reason.len().min(123) + 8);
        let mask = self.masked.then(crate::rng::mask_key);
        write_close(&mut frame, code, reason, mask);
        *self.out.close.borrow_mut() = Some(frame);
        self.sent_close.set(true);
        self.close_code_sent.set(code);
        self.out.writer_wake.notify();
    }

    fn finish(&self) {
        self.out.finished.set(true);
        self.out.writer_wake.notify();
        self.out.space_wake.notify();
    }
}

struct Session {
    cfg: SessionConfig,
    client: Side,
    upstream: Side,
    last_activity: Cell<Instant>,
    close_deadline: Cell<Option<Instant>>,
    ended: Cell<bool>,
    writers_left: Cell<u8>,
    reason: Cell<&'static str>,
    timer_wake: Signal,
    archive: Archive,
    /// Ids of requests sent to the session's node and not answered yet, so that
    /// if the node is lost each gets an error instead of silence. The value is
    /// the batch the id came in (0: a single request), so that a batch's
    /// errors go back as one array (JSON-RPC 2.0 §6).
    inflight: RefCell<ahash::AHashMap<Vec<u8>, u32>>,
    /// The last batch number given out for `inflight`.
    batches: Cell<u32>,
    /// Subscriptions asked for minus those ended (for the per-session limit).
    subscriptions: Cell<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Client,
    Upstream,
}

impl Session {
    fn sides(&self, from: Which) -> (&Side, &Side) {
        match from {
            Which::Client => (&self.client, &self.upstream),
            Which::Upstream => (&self.upstream, &self.client),
        }
    }

    fn start_close_deadline(&self) {
        if self.close_deadline.get().is_none() {
            self.close_deadline
                .set(Some(Instant::now() + self.cfg.close_timeout));
            self.timer_wake.notify();
        }
    }

    fn set_reason(&self, reason: &'static str) {
        if self.reason.get().is_empty() {
            self.reason.set(reason);
        }
    }

    /// A valid close frame arrived from `from`.
    fn on_close(&self, from: Which, code: Option<u16>, reason: &str) {
        let (a, b) = self.sides(from);
        a.got_close.set(true);
        if !a.sent_close.get() {
            // `a` started the closing handshake: answer it, and tell the other side.
            if from == Which::Upstream {
                self.fail_inflight("upstream node closed the connection; reconnect and retry");
            }
            a.send_close(code, "");
            self.set_reason(match from {
                Which::Client => "client closed",
                Which::Upstream => "node closed",
            });
            b.send_close(code, reason);
            self.start_close_deadline();
        }
        a.finish();
        self.check_end();
    }

    /// `from`'s transport ended or failed without a closing handshake.
    fn on_gone(&self, from: Which) {
        let (a, b) = self.sides(from);
        if a.dead.get() {
            return;
        }
        a.dead.set(true);
        a.finish();
        if !a.got_close.get() {
            match from {
                Which::Client => {
                    self.set_reason("client connection lost");
                    b.send_close(Some(close_code::GOING_AWAY), "client went away");
                }
                Which::Upstream => {
                    self.set_reason("node connection lost");
                    self.fail_inflight("upstream node connection lost; reconnect and retry");
                    b.send_close(
                        Some(close_code::SERVICE_RESTART),
                        "upstream node connection lost",
                    );
                }
            }
        }
        self.start_close_deadline();
        self.check_end();
    }

    /// `from` broke RFC 6455 or a limit: fail its connection, close the other side.
    ///
    /// A client at fault stops being read at once, but its close (1002, 1007,
    /// 1009) waits until the node has answered the close sent to it, so that
    /// responses to the requests the client sent before the bad frame still
    /// reach it. A node at fault is closed at once; its client gets 1014.
    ///
    /// `boundary` says whether what was forwarded ends between frames; if not,
    /// the node's stream is cut inside a frame and can only be dropped.
    fn on_protocol_error(&self, from: Which, e: ProtocolError, boundary: bool) {
        let (a, b) = self.sides(from);
        crate::debug!("{} protocol error: {e}", a.name);
        match from {
            Which::Client => {
                self.set_reason("client protocol error");
                a.owed_close.set(Some(e));
                a.got_close.set(true);
                if boundary {
                    b.send_close(Some(close_code::GOING_AWAY), "client protocol error");
                } else {
                    b.dead.set(true);
                    b.finish();
                }
                if b.dead.get() {
                    a.send_close(None, "");
                }
            }
            Which::Upstream => {
                self.set_reason("node protocol error");
                self.fail_inflight("upstream node protocol error; reconnect and retry");
                a.send_close(Some(e.close_code()), e.reason());
                a.dead.set(true);
                a.finish();
                b.send_close(Some(1014), "upstream node protocol error");
            }
        }
        self.start_close_deadline();
        self.check_end();
    }

    /// Track the ids of a whole message: a request to the node (client side)
    /// adds them, an answer from it (node side) removes them.
    fn note_message(&self, from: Which, json: &[u8]) {
        let p = ids_of(json);
        let mut inflight = self.inflight.borrow_mut();
        match from {
            Which::Client => {
                let batch = if p.batch {
                    let n = self.batches.get().wrapping_add(1).max(1);
                    self.batches.set(n);
                    n
                } else {
                    0
                };
                for id in p.ids {
                    if inflight.len() < INFLIGHT_MAX {
                        inflight.insert(id, batch);
                    }
                }
            }
            Which::Upstream => {
                for id in p.ids {
                    inflight.remove(&id);
                }
            }
        }
    }

    /// The node is lost: every request still waiting on it gets a JSON-RPC error.
    /// A single request's error is a single response; the unanswered requests
    /// of one batch get one array.
    fn fail_inflight(&self, why: &str) {
        let mut batches: ahash::AHashMap<u32, Vec<String>> = ahash::AHashMap::new();
        let mut bodies = Vec::new();
        for (id, batch) in self.inflight.borrow_mut().drain() {
            let body = crate::admission::rpc_error(&id, -32603, why, None);
            if batch == 0 {
                bodies.push(body);
            } else {
                batches.entry(batch).or_default().push(body);
            }
        }
        bodies.extend(batches.into_values().map(|b| format!("[{}]", b.join(","))));
        for body in bodies {
            let mut f = Vec::with_capacity(body.len() + 10);
            write_frame(&mut f, OpCode::Text, body.as_bytes(), None);
            self.client.inject(f);
        }
    }

    /// The session's node failed its health checks.
    fn node_down(&self) {
        self.fail_inflight("upstream node unhealthy; reconnect and retry");
        self.set_reason("node unhealthy");
        self.client.send_close(
            Some(close_code::SERVICE_RESTART),
            "upstream node unhealthy, reconnect",
        );
        self.upstream
            .send_close(Some(close_code::GOING_AWAY), "going away");
        self.start_close_deadline();
    }

    /// Close both sides on the gateway's own account (idle timeout, shutdown).
    fn close_both(&self, code: u16, reason: &'static str) {
        self.set_reason(reason);
        self.client.send_close(Some(code), reason);
        self.upstream.send_close(Some(code), reason);
        self.start_close_deadline();
    }

    fn check_end(&self) {
        // A close owed to the client goes out once the node side is finished.
        if self.client.owed_close.get().is_some() && self.upstream.done() {
            self.client.send_close(None, "");
        }
        if self.client.done() {
            self.client.finish();
        }
        if self.upstream.done() {
            self.upstream.finish();
        }
        if self.client.done() && self.upstream.done() {
            self.end();
        }
    }

    /// Both sides are done: stop reading; writers drain what is queued, bounded
    /// by the close deadline.
    fn end(&self) {
        if self.ended.replace(true) {
            return;
        }
        for side in [&self.client, &self.upstream] {
            side.finish();
            // Usually both pumps have stopped reading by now (each got its close).
            if side.reading.get() {
                stop(side.fd, Stop::Reads);
            }
        }
        if let (true, Some(fd)) = (self.archive.reading.get(), self.archive.fd.get()) {
            stop(fd, Stop::Reads);
        }
        self.archive.wake_writer.notify();
        self.archive.wake_reader.notify();
        self.start_close_deadline();
        self.timer_wake.notify();
    }

    /// The close deadline passed: drop what is queued and stop every pending
    /// read and write.
    fn force_end(&self) {
        self.set_reason("close deadline passed");
        for side in [&self.client, &self.upstream] {
            side.dead.set(true);
            side.out.data.borrow_mut().clear();
            side.out.control.borrow_mut().clear();
            side.out.close.borrow_mut().take();
            side.out.queued.set(0);
            stop(side.fd, Stop::All);
        }
        if let Some(fd) = self.archive.fd.get() {
            stop(fd, Stop::All);
        }
        self.end();
    }
}

/// One side's connection as the relay gets it.
pub struct Peer<R, W> {
    pub r: R,
    pub w: W,
    /// Bytes it sent right after its handshake; decoded first.
    pub early: Vec<u8>,
    /// Its socket, to stop pending I/O when the session ends.
    pub fd: RawFd,
}

/// Relay frames between a client and a node until both sides are closed.
///
/// `client_early` and `upstream_early` are bytes each side sent right after
/// its handshake; they are decoded first.
pub async fn relay<CR, CW, UR, UW>(
    client: Peer<CR, CW>,
    upstream: Peer<UR, UW>,
    cfg: SessionConfig,
    watch: Option<NodeWatch>,
    routed: Option<Routed<'_>>,
    shutdown: &Broadcast,
) -> SessionSummary
where
    CR: ReadHalf,
    CW: WriteHalf,
    UR: ReadHalf,
    UW: WriteHalf,
{
    let Peer {
        r: client_r,
        w: client_w,
        early: client_early,
        fd: client_fd,
    } = client;
    let Peer {
        r: upstream_r,
        w: upstream_w,
        early: upstream_early,
        fd: upstream_fd,
    } = upstream;
    let s = Session {
        cfg,
        client: Side::new("client", false, client_fd),
        upstream: Side::new("node", true, upstream_fd),
        last_activity: Cell::new(Instant::now()),
        close_deadline: Cell::new(None),
        ended: Cell::new(false),
        writers_left: Cell::new(2),
        reason: Cell::new(""),
        timer_wake: Signal::default(),
        archive: Archive::default(),
        inflight: RefCell::new(ahash::AHashMap::new()),
        batches: Cell::new(0),
        subscriptions: Cell::new(0),
    };
    // The halves live here, not in the futures, so that both sockets stay open
    // until every future is done: `stop` must never reach a descriptor that
    // was closed and reused by another connection.
    let (mut client_r, mut client_w, mut upstream_r, mut upstream_w) =
        (client_r, client_w, upstream_r, upstream_w);
    // The archive connection, opened on first need (again after a failure),
    // also lives here: its reader is handed over in `archive_r`, and every
    // half it ever had is kept in `archive_old` until the session returns.
    let archive_r: RefCell<Option<NodeReader>> = RefCell::new(None);
    let archive_old: RefCell<Vec<Half>> = RefCell::new(Vec::new());
    let archive_early: RefCell<Vec<u8>> = RefCell::new(Vec::new());
    let routed = routed.as_ref();
    let (client_msgs, upstream_msgs, _, _, _, _, _) = monoio::join!(
        pump(&s, Which::Client, &mut client_r, client_early, routed),
        pump(&s, Which::Upstream, &mut upstream_r, upstream_early, routed),
        writer(&s, Which::Client, &mut client_w),
        writer(&s, Which::Upstream, &mut upstream_w),
        timer(&s, watch.as_ref(), shutdown),
        // Boxed, and only for routed sessions: the others keep a small task.
        async {
            if routed.is_some() {
                Box::pin(archive_writer(
                    &s,
                    routed,
                    &archive_r,
                    &archive_old,
                    &archive_early,
                ))
                .await
            }
        },
        async {
            if routed.is_some() {
                Box::pin(archive_reader(
                    &s,
                    routed,
                    &archive_r,
                    &archive_old,
                    &archive_early,
                ))
                .await
            }
        },
    );
    SessionSummary {
        client_messages: client_msgs,
        upstream_messages: upstream_msgs,
        client_close_code: s.client.close_code_sent.get(),
        reason: s.reason.get(),
    }
}

/// What processing one buffer led to.
enum Flow {
    Continue,
    Stop,
}

/// Read from `from`, forward data to the other side. Returns messages seen.
async fn pump<R: ReadHalf>(
    s: &Session,
    from: Which,
    io: &mut R,
    early: Vec<u8>,
    routed: Option<&Routed<'_>>,
) -> u64 {
    let (src, dst) = s.sides(from);
    let role = match from {
        Which::Client => Role::Client,
        Which::Upstream => Role::Server,
    };
    let mut dec = Decoder::new(role, s.cfg.codec);
    // Bytes that came with the handshake are the first buffer. Later buffers
    // start empty and get room from the reader, sized to the traffic.
    let mut buf = early;
    let mut hold = Hold::default();
    let mut track = Track::default();
    loop {
        if !buf.is_empty() {
            // Node answers are held only when they may need a retry on archive;
            // for admission alone they stream as usual.
            let flow = match routed {
                Some(r) if from == Which::Client || r.route => {
                    process_held(s, from, &mut dec, &mut buf, &mut hold, r)
                }
                _ => process(s, from, &mut dec, &mut buf, &mut track),
            };
            if let Flow::Stop = flow {
                break;
            }
        }
        if src.got_close.get() || src.dead.get() || s.ended.get() {
            break;
        }
        // Backpressure: wait for the other side's writer to catch up.
        while dst.out.queued.get() > s.cfg.max_buffered && !dst.out.finished.get() && !s.ended.get()
        {
            dst.out.space_wake.wait().await;
        }
        src.reading.set(true);
        let (r, b) = io.read_more(buf).await;
        src.reading.set(false);
        buf = b;
        match r {
            Ok(0) => {
                if !s.ended.get() {
                    s.on_gone(from);
                }
                break;
            }
            Ok(_) => {
                if from == Which::Client {
                    s.last_activity.set(Instant::now());
                }
            }
            Err(e) => {
                if !s.ended.get() {
                    crate::debug!("{} read error: {e}", src.name);
                    s.on_gone(from);
                }
                break;
            }
        }
    }
    dec.messages()
}

/// Walk one buffer: forward data, act on control frames, keep a partial frame.
fn process(
    s: &Session,
    from: Which,
    dec: &mut Decoder,
    buf: &mut Vec<u8>,
    track: &mut Track,
) -> Flow {
    let (src, _) = s.sides(from);
    let mut pos = 0;
    let mut keep = 0;
    loop {
        let payload = dec.payload_position();
        match dec.step(&buf[pos..]) {
            Ok(Step::Forward(n)) => {
                track.take(&buf[pos..pos + n], payload);
                if dec.at_message_boundary() {
                    track.finish(s, from);
                }
                if keep != pos {
                    buf.copy_within(pos..pos + n, keep);
                }
                keep += n;
                pos += n;
            }
            Ok(Step::Control(frame, n)) => {
                pos += n;
                match frame.opcode {
                    OpCode::Ping => src.push_control(OpCode::Pong, frame.payload()),
                    OpCode::Pong => {}
                    _ => {
                        forward(s, from, buf, keep, pos, boundaries(dec));
                        s.on_close(from, frame.close_code(), frame.close_reason());
                        return Flow::Stop;
                    }
                }
            }
            Ok(Step::NeedMore) => break,
            Err(e) => {
                let boundary = dec.at_frame_boundary();
                forward(s, from, buf, keep, pos, (boundary, false));
                s.on_protocol_error(from, e, boundary);
                return Flow::Stop;
            }
        }
        if pos == buf.len() {
            break;
        }
    }
    if keep > 0 && from == Which::Upstream {
        s.last_activity.set(Instant::now());
    }
    forward(s, from, buf, keep, pos, boundaries(dec));
    Flow::Continue
}

fn boundaries(dec: &Decoder) -> (bool, bool) {
    (dec.at_frame_boundary(), dec.at_message_boundary())
}

/// The start of the message in progress, unmasked, to find its ids.
#[derive(Default)]
struct Track {
    json: Vec<u8>,
    over: bool,
}

impl Track {
    fn take(&mut self, bytes: &[u8], payload: Option<(Option<[u8; 4]>, usize)>) {
        let Some((mask, offset)) = payload else {
            return;
        };
        if self.over || self.json.len() + bytes.len() > TRACK_MAX {
            self.over = true;
            return;
        }
        let start = self.json.len();
        self.json.extend_from_slice(bytes);
        if let Some(key) = mask {
            apply_mask(&mut self.json[start..], key, offset);
        }
    }

    fn finish(&mut self, s: &Session, from: Which) {
        if !self.over && !self.json.is_empty() {
            s.note_message(from, &self.json);
        }
        self.json.clear();
        self.over = false;
        if self.json.capacity() > 4096 {
            self.json = Vec::new();
        }
    }
}

/// Send `buf[..keep]` to the other side and leave `buf` holding only `buf[pos..]`.
fn forward(
    s: &Session,
    from: Which,
    buf: &mut Vec<u8>,
    keep: usize,
    pos: usize,
    boundary: (bool, bool),
) {
    let (_, dst) = s.sides(from);
    if keep == 0 {
        buf.drain(..pos);
        return;
    }
    let next = buf[pos..].to_vec();
    let mut out = std::mem::replace(buf, next);
    out.truncate(keep);
    dst.push_data(out, boundary.0, boundary.1);
}

/// Write queued frames to one side, control frames only between data frames.
async fn writer<W: WriteHalf>(s: &Session, which: Which, io: &mut W) {
    let side = match which {
        Which::Client => &s.client,
        Which::Upstream => &s.upstream,
    };
    let mut mid_frame = false;
    let mut mid_message = false;
    let mut failed = false;
    let mut shut = false;
    loop {
        let Some(NextWrite {
            buf,
            counted,
            ends,
            last,
        }) = next_write(&side.out, mid_frame, mid_message)
        else {
            if side.out.finished.get() {
                break;
            }
            side.out.writer_wake.wait().await;
            continue;
        };
        let len = buf.len();
        if last && which == Which::Client {
            // Our close to the client is the last thing it gets: it leaves
            // with close_notify and the FIN in one write (the node side
            // waits for the node to close first, as RFC 6455 §7.1.1 asks).
            let r = io.write_final(buf).await;
            shut = true;
            if r.is_err() && !s.ended.get() {
                crate::debug!("{} write error on close", side.name);
            }
            continue;
        }
        let (r, _) = io.write_all(buf).await;
        if let Some((frame_end, message_end)) = ends {
            mid_frame = !frame_end;
            mid_message = !message_end;
        }
        if counted {
            side.out
                .queued
                .set(side.out.queued.get().saturating_sub(len));
            side.out.space_wake.notify();
        }
        if let Err(e) = r {
            if !s.ended.get() {
                crate::debug!("{} write error: {e}", side.name);
            }
            side.out.data.borrow_mut().clear();
            side.out.injected.borrow_mut().clear();
            side.out.control.borrow_mut().clear();
            side.out.queued.set(0);
            side.out.space_wake.notify();
            failed = true;
            s.on_gone(which);
            break;
        }
    }
    if !failed && !shut {
        io.shutdown().await;
    }
    s.writers_left.set(s.writers_left.get() - 1);
    s.timer_wake.notify();
}

/// The next bytes for a writer.
struct NextWrite {
    buf: Vec<u8>,
    /// Counted against the backpressure limit (data, not control frames).
    counted: bool,
    /// For relayed data: whether it ends between frames and between messages.
    ends: Option<(bool, bool)>,
    /// The close frame: nothing follows it.
    last: bool,
}

/// What to write next: control frames between frames, injected messages
/// between messages, relayed data, and the close after everything.
fn next_write(out: &Outbox, mid_frame: bool, mid_message: bool) -> Option<NextWrite> {
    let w = |buf, counted, ends| {
        Some(NextWrite {
            buf,
            counted,
            ends,
            last: false,
        })
    };
    if !mid_frame {
        if let Some(frame) = out.control.borrow_mut().pop_front() {
            return w(frame, false, None);
        }
    }
    if !mid_message {
        if let Some(message) = out.injected.borrow_mut().pop_front() {
            return w(message, true, None);
        }
    }
    if let Some(c) = out.data.borrow_mut().pop_front() {
        return w(c.buf, true, Some((c.frame_end, c.message_end)));
    }
    if !mid_frame && out.injected.borrow().is_empty() {
        return out.close.borrow_mut().take().map(|buf| NextWrite {
            buf,
            counted: false,
            ends: None,
            last: true,
        });
    }
    None
}

/// How long a session waits on shutdown for answers to requests in flight
/// before it fails them (JSON-RPC errors with their ids) and closes (1001).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// How often a draining session (or worker) looks at what is still in flight.
pub const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Idle timeout, node keepalive pings, the close deadline, and the worker's
/// shutdown. Runs until both writers have finished.
async fn timer(s: &Session, watch: Option<&NodeWatch>, shutdown: &Broadcast) {
    let mut next_ping = Instant::now() + s.cfg.keepalive;
    let mut next_check = watch.map(|w| Instant::now() + w.every);
    let mut drain_until = None;
    while s.writers_left.get() > 0 {
        let now = Instant::now();
        if let Some(deadline) = s.close_deadline.get() {
            if now >= deadline {
                s.force_end();
                return;
            }
        }
        // While closing, only the close deadline matters.
        let mut wake = s.close_deadline.get();
        if wake.is_none() && shutdown.fired() {
            // Shutting down: answers to requests in flight still go out,
            // then the client is told to go elsewhere (1001).
            let until = *drain_until.get_or_insert(now + SHUTDOWN_DRAIN);
            if s.inflight.borrow().is_empty() || now >= until {
                s.fail_inflight("gateway shutting down; reconnect and retry");
                s.close_both(close_code::GOING_AWAY, "server shutting down");
                continue;
            }
            wake = Some(until.min(now + DRAIN_POLL));
        } else if wake.is_none() {
            let idle_at = s.last_activity.get() + s.cfg.idle_timeout;
            if now >= idle_at {
                s.close_both(close_code::GOING_AWAY, "idle timeout");
                continue;
            }
            if now >= next_ping {
                s.upstream.push_control(OpCode::Ping, b"");
                next_ping = now + s.cfg.keepalive;
            }
            if let (Some(w), Some(at)) = (watch, next_check) {
                if now >= at {
                    if !w.health.is_up(w.index) {
                        s.node_down();
                        continue;
                    }
                    next_check = Some(now + w.every);
                }
            }
            let soonest = next_check.map_or(next_ping, |c| c.min(next_ping));
            wake = Some(idle_at.min(soonest));
        }
        let stopping = async {
            if shutdown.fired() {
                std::future::pending::<()>().await
            }
            shutdown.wait().await
        };
        match wake {
            Some(at) => {
                let sleep = monoio::time::sleep_until(at);
                monoio::select! {
                    _ = sleep => {}
                    _ = s.timer_wake.wait() => {}
                    _ = stopping => {}
                }
            }
            None => {
                monoio::select! {
                    _ = s.timer_wake.wait() => {}
                    _ = stopping => {}
                }
            }
        }
    }
}

/// Per-message routing inside a session whose node is pruned, when the pool
/// has archive nodes (rules in [`crate::route`]). Each client message is held
/// until it is whole (up to [`HOLD_MAX`]; larger ones stream to the pruned
/// node), then sent as it came (still masked) to the pruned node or to the
/// session's archive connection, which is opened on first need. The pruned
/// node's answers are held the same way, so that a "state is gone" answer to
/// a request with a block argument is replaced by the archive node's answer
/// to the same request. Archive answers reach the client as whole messages,
/// between the pruned node's messages. Request ids are never rewritten.
pub struct Routed<'r> {
    pub router: &'r Router,
    pub chain: &'r dyn ChainView,
    pub pool: Rc<Pool>,
    pub template: UpgradeTemplate,
    pub connect_timeout: Duration,
    /// Route messages to archive (else all go to the session's node).
    pub route: bool,
    /// Check each call against admission limits, for this client address.
    pub admission: Option<(&'r crate::admission::AdmissionCtx, std::net::IpAddr)>,
}

/// In-flight ids tracked per session at most (beyond, new ones are not tracked).
const INFLIGHT_MAX: usize = 4096;
/// Message bytes copied to find ids on the streaming path; longer messages'
/// ids are not tracked.
const TRACK_MAX: usize = 16 * 1024;

/// Messages larger than this are not held: they stream to the pruned node.
const HOLD_MAX: usize = 64 * 1024;
/// Requests kept for a possible retry on archive.
const RETRY_MAX: usize = 256;
/// After the archive connection fails, archive-bound calls go to the pruned
/// node (which answers truthfully) for this long; then another connection is tried.
const ARCHIVE_RETRY: Duration = Duration::from_secs(1);

/// A message being held: its frames as received, and its payload unmasked.
#[derive(Default)]
struct Hold {
    raw: Vec<u8>,
    peek: Vec<u8>,
    /// Decided for a large message whose first part already went out.
    target: Option<Target>,
}

#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
enum ArchiveState {
    #[default]
    Idle,
    Connecting,
    Up,
    Failed,
}

/// A message sent to the archive node and not answered yet.
struct Pending {
    ids: Vec<Vec<u8>>,
    batch: bool,
}

/// The session's archive connection and what waits on it.
#[derive(Default)]
struct Archive {
    /// Whole client messages (masked frames) to write.
    queue: RefCell<VecDeque<(Pending, Vec<u8>)>>,
    pending: RefCell<Vec<Pending>>,
    /// Pongs and the close for the archive node.
    control: RefCell<VecDeque<Vec<u8>>>,
    state: Cell<ArchiveState>,
    fd: Cell<Option<RawFd>>,
    reading: Cell<bool>,
    wake_writer: Signal,
    wake_reader: Signal,
    /// Requests sent to the pruned node that may come back "state is gone".
    retry: RefCell<VecDeque<(Vec<u8>, Vec<u8>)>>,
    /// When the connection last failed: another is tried after [`ARCHIVE_RETRY`].
    failed_at: Cell<Option<Instant>>,
    /// Connections opened so far: a reader of an older one fails nothing.
    generation: Cell<u32>,
}

impl Archive {
    /// After a failure, time to try another connection.
    fn retry_due(&self) -> bool {
        self.state.get() == ArchiveState::Failed
            && self
                .failed_at
                .get()
                .map_or(true, |t| t.elapsed() >= ARCHIVE_RETRY)
    }

    fn send(&self, message: Vec<u8>, peek: &[u8]) {
        let pending = ids_of(peek);
        self.queue.borrow_mut().push_back((pending, message));
        self.wake_writer.notify();
    }
}

/// The ids of a request or batch (raw JSON), for error answers.
fn ids_of(msg: &[u8]) -> Pending {
    match jsonrpc::kind(msg) {
        jsonrpc::Kind::Batch => Pending {
            ids: jsonrpc::elements(msg)
                .filter_map(|e| jsonrpc::peek(e)?.id.map(<[u8]>::to_vec))
                .collect(),
            batch: true,
        },
        _ => Pending {
            ids: jsonrpc::peek(msg)
                .and_then(|p| p.id)
                .map(|id| vec![id.to_vec()])
                .unwrap_or_default(),
            batch: false,
        },
    }
}

/// A text frame (server to client) with JSON-RPC errors for `p`'s ids.
fn error_frame(p: &Pending, why: &str) -> Option<Vec<u8>> {
    if p.ids.is_empty() {
        return None;
    }
    let one = |id: &[u8]| {
        format!(
            r#"{{"jsonrpc":"2.0","error":{{"code":-32603,"message":"archive node unavailable: {why}"}},"id":{}}}"#,
            String::from_utf8_lossy(id)
        )
    };
    let body = if p.batch {
        format!(
            "[{}]",
            p.ids.iter().map(|i| one(i)).collect::<Vec<_>>().join(",")
        )
    } else {
        one(&p.ids[0])
    };
    let mut f = Vec::with_capacity(body.len() + 10);
    write_frame(&mut f, OpCode::Text, body.as_bytes(), None);
    Some(f)
}

impl Session {
    /// The archive connection failed: every request waiting on it gets an error.
    fn fail_archive(&self, why: &str) {
        let a = &self.archive;
        a.state.set(ArchiveState::Failed);
        a.failed_at.set(Some(Instant::now()));
        let waiting: Vec<Pending> = a
            .pending
            .borrow_mut()
            .drain(..)
            .chain(a.queue.borrow_mut().drain(..).map(|(p, _)| p))
            .collect();
        for p in &waiting {
            if let Some(f) = error_frame(p, why) {
                self.client.inject(f);
            }
        }
        a.retry.borrow_mut().clear();
    }

    /// Can a message go to the archive connection now?
    fn archive_usable(&self, r: &Routed<'_>) -> bool {
        match self.archive.state.get() {
            ArchiveState::Failed if !self.archive.retry_due() => false,
            ArchiveState::Up | ArchiveState::Connecting => true,
            ArchiveState::Idle | ArchiveState::Failed => r.pool.pick_archive().is_some(),
        }
    }
}

/// [`process`] for routed sessions: hold each message until whole, then route it.
fn process_held(
    s: &Session,
    from: Which,
    dec: &mut Decoder,
    buf: &mut Vec<u8>,
    hold: &mut Hold,
    r: &Routed<'_>,
) -> Flow {
    let (src, _) = s.sides(from);
    let mut pos = 0;
    let mut flow = Flow::Continue;
    while pos < buf.len() {
        let payload = dec.payload_position();
        match dec.step(&buf[pos..]) {
            Ok(Step::Forward(n)) => {
                let bytes = &buf[pos..pos + n];
                hold.raw.extend_from_slice(bytes);
                if let Some((mask, offset)) = payload {
                    let take = n.min(HOLD_MAX.saturating_sub(hold.peek.len()));
                    let start = hold.peek.len();
                    hold.peek.extend_from_slice(&bytes[..take]);
                    if let Some(key) = mask {
                        apply_mask(&mut hold.peek[start..], key, offset);
                    }
                }
                pos += n;
                if dec.at_message_boundary() {
                    on_held(s, from, hold, r, dec, true);
                } else if hold.raw.len() >= HOLD_MAX {
                    on_held(s, from, hold, r, dec, false);
                }
            }
            Ok(Step::Control(frame, n)) => {
                pos += n;
                match frame.opcode {
                    OpCode::Ping => src.push_control(OpCode::Pong, frame.payload()),
                    OpCode::Pong => {}
                    _ => {
                        if !hold.raw.is_empty() {
                            on_held(s, from, hold, r, dec, false);
                        }
                        s.on_close(from, frame.close_code(), frame.close_reason());
                        flow = Flow::Stop;
                        break;
                    }
                }
            }
            Ok(Step::NeedMore) => break,
            Err(e) => {
                // A held message never went out: the other side is between messages.
                let boundary = hold.target.is_none() || dec.at_frame_boundary();
                s.on_protocol_error(from, e, boundary);
                flow = Flow::Stop;
                break;
            }
        }
    }
    if from == Which::Upstream && pos > 0 {
        s.last_activity.set(Instant::now());
    }
    buf.drain(..pos);
    flow
}

/// A held message (or, `whole == false`, the first part of a large one) is ready.
fn on_held(s: &Session, from: Which, hold: &mut Hold, r: &Routed<'_>, dec: &Decoder, whole: bool) {
    let raw = std::mem::take(&mut hold.raw);
    let frame_end = dec.at_frame_boundary();
    let message_end = whole && dec.at_message_boundary();
    match from {
        Which::Client => {
            if let (true, true, Some((adm, ip))) = (whole, hold.target.is_none(), r.admission) {
                let refused = match adm.check_call(ip, &hold.peek, std::time::Instant::now()) {
                    Err((refusal, answer)) => {
                        crate::debug!("refused a call from {ip}: {refusal:?}");
                        Some(answer)
                    }
                    Ok(()) => session_limits(s, adm, &hold.peek),
                };
                if let Some(answer) = refused {
                    if let Some(answer) = answer {
                        let mut f = Vec::with_capacity(answer.len() + 10);
                        write_frame(&mut f, OpCode::Text, answer.as_bytes(), None);
                        s.client.inject(f);
                    }
                    hold.peek.clear();
                    return;
                }
            }
            let target = *hold.target.get_or_insert_with(|| {
                if whole
                    && r.route
                    && r.router.route(&hold.peek, r.chain) == Target::Archive
                    && s.archive_usable(r)
                {
                    Target::Archive
                } else {
                    Target::Pruned
                }
            });
            match target {
                Target::Archive => s.archive.send(raw, &hold.peek),
                Target::Pruned => {
                    if whole {
                        s.note_message(Which::Client, &hold.peek);
                    }
                    if whole && r.route && r.router.retryable(&hold.peek) && s.archive_usable(r) {
                        if let Some(id) = jsonrpc::peek(&hold.peek).and_then(|p| p.id) {
                            let mut retry = s.archive.retry.borrow_mut();
                            if retry.len() == RETRY_MAX {
                                retry.pop_front();
                            }
                            retry.push_back((id.to_vec(), raw.clone()));
                        }
                    }
                    s.upstream.push_data(raw, frame_end, message_end);
                }
            }
        }
        Which::Upstream => {
            let first_part = hold.target.is_none();
            if whole && first_part && !s.archive.retry.borrow().is_empty() {
                if let Some(id) = jsonrpc::peek(&hold.peek).and_then(|p| p.id) {
                    let mut retry = s.archive.retry.borrow_mut();
                    if let Some(i) = retry.iter().position(|(rid, _)| rid.as_slice() == id) {
                        let (_, request) = retry.remove(i).expect("index from position");
                        drop(retry);
                        if r.router.is_pruned_error(&hold.peek) && s.archive_usable(r) {
                            crate::debug!("pruned node lacks the state; retrying on archive");
                            // The archive answers it now, not the session's node.
                            s.note_message(Which::Upstream, &hold.peek);
                            s.archive.send(request, &hold.peek);
                            hold.peek.clear();
                            return;
                        }
                    }
                }
            }
            if whole && first_part {
                s.note_message(Which::Upstream, &hold.peek);
            }
            s.client.push_data(raw, frame_end, message_end);
        }
    }
    if whole {
        hold.peek.clear();
        hold.target = None;
    } else {
        hold.target.get_or_insert(Target::Pruned);
    }
}

/// Per-session limits: requests in flight and subscriptions. `Some(answer)`
/// refuses the message (the answer is `None` when it has no id).
fn session_limits(
    s: &Session,
    adm: &crate::admission::AdmissionCtx,
    msg: &[u8],
) -> Option<Option<String>> {
    use crate::admission::{rpc_error, Reason};
    let p = jsonrpc::peek(msg)?;
    let id = p.id.unwrap_or(b"null");
    let refuse = |reason: Reason, what: &str| {
        adm.shared.rejections.count(reason);
        let data = format!(r#"{{"limit":"{what}"}}"#);
        Some(p.id.map(|_| rpc_error(id, -32005, "limit exceeded", Some(&data))))
    };
    if adm.max_inflight > 0 && p.id.is_some() && s.inflight.borrow().len() >= adm.max_inflight {
        return refuse(Reason::Inflight, "max_inflight_per_connection");
    }
    let method = p.method.unwrap_or(b"");
    let is = |needle: &[u8]| {
        method
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    if adm.max_subscriptions > 0 {
        if is(b"unsubscribe") {
            s.subscriptions.set(s.subscriptions.get().saturating_sub(1));
        } else if is(b"subscribe") {
            if s.subscriptions.get() >= adm.max_subscriptions {
                return refuse(Reason::Subscriptions, "max_subscriptions_per_connection");
            }
            s.subscriptions.set(s.subscriptions.get() + 1);
        }
    }
    None
}

/// A half of a closed archive connection, kept open until the session returns.
enum Half {
    R(#[allow(dead_code)] NodeReader),
    W(#[allow(dead_code)] NodeWriter),
}

/// Write to the archive node: opens the connection on the first message, and
/// another after a failure once [`ARCHIVE_RETRY`] has passed.
async fn archive_writer(
    s: &Session,
    r: Option<&Routed<'_>>,
    slot_r: &RefCell<Option<NodeReader>>,
    old: &RefCell<Vec<Half>>,
    early: &RefCell<Vec<u8>>,
) {
    let Some(r) = r else { return };
    let a = &s.archive;
    let mut w: Option<NodeWriter> = None;
    let mut _lease = None;
    loop {
        if s.ended.get() || s.client.done() {
            break;
        }
        let has_work = !a.control.borrow().is_empty() || !a.queue.borrow().is_empty();
        let failed = a.state.get() == ArchiveState::Failed;
        if !has_work || (failed && !a.retry_due()) {
            a.wake_writer.wait().await;
            continue;
        }
        if failed {
            // Retire the failed connection (its reader, if still reading,
            // ends) and open another below.
            if let Some(fd) = a.fd.get() {
                stop(fd, Stop::All);
            }
            if let Some(dead) = w.take() {
                old.borrow_mut().push(Half::W(dead));
            }
            _lease = None;
            a.control.borrow_mut().clear();
            a.state.set(ArchiveState::Idle);
        }
        if w.is_none() {
            a.state.set(ArchiveState::Connecting);
            // Boxed: this rare, large future must not size every session's task.
            let open = Box::pin(crate::upstream::open_archive(
                &r.pool,
                &r.template,
                r.connect_timeout,
            ));
            match open.await {
                Ok((stream, first, lease)) => {
                    crate::debug!(
                        "session opened an archive connection to {}",
                        lease.node().url
                    );
                    a.fd.set(Some(stream.raw_fd()));
                    let (rd, wr) = stream.into_split();
                    if let Some(stale) = slot_r.borrow_mut().replace(rd) {
                        old.borrow_mut().push(Half::R(stale));
                    }
                    *early.borrow_mut() = first;
                    w = Some(wr);
                    _lease = Some(lease);
                    a.generation.set(a.generation.get() + 1);
                    a.state.set(ArchiveState::Up);
                    a.wake_reader.notify();
                }
                Err(e) => {
                    crate::warn!("archive connection failed: {e}");
                    s.fail_archive("no archive node accepted the connection");
                    continue;
                }
            }
        }
        let item = a.control.borrow_mut().pop_front().or_else(|| {
            let (p, raw) = a.queue.borrow_mut().pop_front()?;
            a.pending.borrow_mut().push(p);
            Some(raw)
        });
        let Some(item) = item else { continue };
        let (res, _) = w.as_mut().expect("connected above").write_all(item).await;
        if res.is_err() {
            s.fail_archive("connection lost");
        }
    }
    if let Some(mut w) = w {
        if a.state.get() == ArchiveState::Up {
            let mut close = Vec::new();
            write_close(
                &mut close,
                Some(close_code::NORMAL),
                "",
                Some(crate::rng::mask_key()),
            );
            let _ = w.write_all(close).await;
        }
        w.shutdown().await;
        // The socket stays open until the session returns.
        old.borrow_mut().push(Half::W(w));
    }
}

/// Read the archive node's answers; each whole message goes to the client.
/// Follows the connection the writer opens, and the next one after a failure.
async fn archive_reader(
    s: &Session,
    r: Option<&Routed<'_>>,
    slot_r: &RefCell<Option<NodeReader>>,
    old: &RefCell<Vec<Half>>,
    early: &RefCell<Vec<u8>>,
) {
    if r.is_none() {
        return;
    }
    let a = &s.archive;
    loop {
        loop {
            if s.ended.get() || s.client.done() {
                return;
            }
            if a.state.get() == ArchiveState::Up && slot_r.borrow().is_some() {
                break;
            }
            a.wake_reader.wait().await;
        }
        let Some(mut io) = slot_r.borrow_mut().take() else {
            continue;
        };
        let generation = a.generation.get();
        // Only the connection in use may fail the archive: an older one's
        // reader ends without a word when the writer retires it.
        let fail = |why: &str| {
            if a.generation.get() == generation {
                s.fail_archive(why);
            }
        };
        let mut buf = std::mem::take(&mut *early.borrow_mut());
        let mut dec = Decoder::new(Role::Server, s.cfg.codec);
        let mut message = Vec::new();
        'outer: loop {
            let mut pos = 0;
            while pos < buf.len() {
                match dec.step(&buf[pos..]) {
                    Ok(Step::Forward(n)) => {
                        message.extend_from_slice(&buf[pos..pos + n]);
                        pos += n;
                        if dec.at_message_boundary() {
                            let done = std::mem::take(&mut message);
                            answered(a, &done);
                            s.client.inject(done);
                        }
                    }
                    Ok(Step::Control(frame, n)) => {
                        pos += n;
                        match frame.opcode {
                            OpCode::Ping => {
                                let mut pong = Vec::new();
                                write_frame(
                                    &mut pong,
                                    OpCode::Pong,
                                    frame.payload(),
                                    Some(crate::rng::mask_key()),
                                );
                                a.control.borrow_mut().push_back(pong);
                                a.wake_writer.notify();
                            }
                            OpCode::Pong => {}
                            _ => {
                                fail("the archive node closed the connection");
                                break 'outer;
                            }
                        }
                    }
                    Ok(Step::NeedMore) => break,
                    Err(e) => {
                        crate::debug!("archive protocol error: {e}");
                        fail("archive node protocol error");
                        break 'outer;
                    }
                }
            }
            buf.drain(..pos);
            if s.ended.get() || s.client.done() {
                break;
            }
            a.reading.set(true);
            let (res, b) = io.read_more(buf).await;
            a.reading.set(false);
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                if !s.ended.get() && !s.client.done() {
                    fail("connection lost");
                }
                break;
            }
        }
        old.borrow_mut().push(Half::R(io));
    }
}

/// An archive answer arrived: forget the request it answers.
fn answered(a: &Archive, frames: &[u8]) {
    // Server frames are unmasked: the payload of a single-frame message starts
    // after its header; that is all a JSON-RPC id lookup needs.
    let payload = match crate::ws::frame::FrameHeader::parse(frames) {
        Ok(crate::ws::frame::Parse::Done(_, n)) => &frames[n..],
        _ => return,
    };
    let first_id = match jsonrpc::kind(payload) {
        jsonrpc::Kind::Batch => jsonrpc::elements(payload)
            .next()
            .and_then(|e| jsonrpc::peek(e)?.id),
        _ => jsonrpc::peek(payload).and_then(|p| p.id),
    };
    if let Some(id) = first_id {
        let mut pending = a.pending.borrow_mut();
        if let Some(i) = pending
            .iter()
            .position(|p| p.ids.first().map(Vec::as_slice) == Some(id))
        {
            pending.remove(i);
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// Guards the memory of an idle session (BENCHMARKS.md, B4): the relay's
    /// state is the largest part of a session's task. Regressed once when the
    /// archive futures were inlined (7.5 KiB); they are boxed now.
    #[test]
    fn the_relay_future_of_a_tls_session_stays_small() {
        fn out_size<A, B, C, D, E, G, F>(_: impl Fn(A, B, C, D, E, G) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let relay = out_size(
            super::relay::<
                crate::tls::TlsReader,
                crate::tls::TlsWriter,
                crate::upstream::NodeReader,
                crate::upstream::NodeWriter,
            >,
        );
        assert!(relay <= 6 * 1024, "relay future is {relay} bytes");
    }
}
