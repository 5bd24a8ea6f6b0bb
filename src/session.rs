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
//! header at the end, at most 139 bytes, moves to the next buffer).
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
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::time::Instant;
use std::os::fd::RawFd;

use crate::io::{stop, ReadHalf, Stop, WriteHalf};
use crate::ws::codec::{Decoder, Limits as CodecLimits, Role, Step};
use crate::ws::frame::{close_code, write_close, write_frame, OpCode, ProtocolError};

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

/// A one-waiter wake-up flag for futures of the same task.
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.set.set(true);
        let waker = self.waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Frames waiting for one side's writer.
#[derive(Default)]
struct Outbox {
    /// Data-frame bytes, and whether each buffer ends on a frame boundary.
    data: RefCell<VecDeque<(Vec<u8>, bool)>>,
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

    fn push_data(&self, buf: Vec<u8>, boundary: bool) {
        if self.sent_close.get() || self.dead.get() {
            return;
        }
        self.out.queued.set(self.out.queued.get() + buf.len());
        self.out.data.borrow_mut().push_back((buf, boundary));
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
                a.send_close(Some(e.close_code()), e.reason());
                a.dead.set(true);
                a.finish();
                b.send_close(Some(1014), "upstream node protocol error");
            }
        }
        self.start_close_deadline();
        self.check_end();
    }

    /// The session's node failed its health checks.
    fn node_down(&self) {
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
        self.end();
    }
}

/// Relay frames between a client and a node until both sides are closed.
///
/// `client_early` and `upstream_early` are bytes each side sent right after
/// its handshake; they are decoded first.
pub async fn relay<CR, CW, UR, UW>(
    (client_r, client_w): (CR, CW),
    client_early: Vec<u8>,
    (upstream_r, upstream_w): (UR, UW),
    upstream_early: Vec<u8>,
    (client_fd, upstream_fd): (RawFd, RawFd),
    cfg: SessionConfig,
    watch: Option<NodeWatch>,
) -> SessionSummary
where
    CR: ReadHalf,
    CW: WriteHalf,
    UR: ReadHalf,
    UW: WriteHalf,
{
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
    };
    // The halves live here, not in the futures, so that both sockets stay open
    // until every future is done: `stop` must never reach a descriptor that
    // was closed and reused by another connection.
    let (mut client_r, mut client_w, mut upstream_r, mut upstream_w) =
        (client_r, client_w, upstream_r, upstream_w);
    let (client_msgs, upstream_msgs, _, _, _) = monoio::join!(
        pump(&s, Which::Client, &mut client_r, client_early),
        pump(&s, Which::Upstream, &mut upstream_r, upstream_early),
        writer(&s, Which::Client, &mut client_w),
        writer(&s, Which::Upstream, &mut upstream_w),
        timer(&s, watch.as_ref()),
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
async fn pump<R: ReadHalf>(s: &Session, from: Which, io: &mut R, early: Vec<u8>) -> u64 {
    let (src, dst) = s.sides(from);
    let role = match from {
        Which::Client => Role::Client,
        Which::Upstream => Role::Server,
    };
    let mut dec = Decoder::new(role, s.cfg.codec);
    // Bytes that came with the handshake are the first buffer. Later buffers
    // start empty and get room from the reader, sized to the traffic.
    let mut buf = early;
    loop {
        if !buf.is_empty() {
            if let Flow::Stop = process(s, from, &mut dec, &mut buf) {
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
fn process(s: &Session, from: Which, dec: &mut Decoder, buf: &mut Vec<u8>) -> Flow {
    let (src, _) = s.sides(from);
    let mut pos = 0;
    let mut keep = 0;
    loop {
        match dec.step(&buf[pos..]) {
            Ok(Step::Forward(n)) => {
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
                        forward(s, from, buf, keep, pos, dec.at_frame_boundary());
                        s.on_close(from, frame.close_code(), frame.close_reason());
                        return Flow::Stop;
                    }
                }
            }
            Ok(Step::NeedMore) => break,
            Err(e) => {
                let boundary = dec.at_frame_boundary();
                forward(s, from, buf, keep, pos, boundary);
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
    forward(s, from, buf, keep, pos, dec.at_frame_boundary());
    Flow::Continue
}

/// Send `buf[..keep]` to the other side and leave `buf` holding only `buf[pos..]`.
fn forward(s: &Session, from: Which, buf: &mut Vec<u8>, keep: usize, pos: usize, boundary: bool) {
    let (_, dst) = s.sides(from);
    if keep == 0 {
        buf.drain(..pos);
        return;
    }
    let next = buf[pos..].to_vec();
    let mut out = std::mem::replace(buf, next);
    out.truncate(keep);
    dst.push_data(out, boundary);
}

/// Write queued frames to one side, control frames only between data frames.
async fn writer<W: WriteHalf>(s: &Session, which: Which, io: &mut W) {
    let side = match which {
        Which::Client => &s.client,
        Which::Upstream => &s.upstream,
    };
    let mut mid_frame = false;
    let mut failed = false;
    loop {
        let control = if mid_frame {
            None
        } else {
            side.out.control.borrow_mut().pop_front()
        };
        let next = match control {
            Some(frame) => Some((frame, None)),
            None => {
                let data = side.out.data.borrow_mut().pop_front();
                match data {
                    Some((buf, boundary)) => Some((buf, Some(boundary))),
                    None if !mid_frame => side.out.close.borrow_mut().take().map(|f| (f, None)),
                    None => None,
                }
            }
        };
        let Some((buf, data_boundary)) = next else {
            if side.out.finished.get() {
                break;
            }
            side.out.writer_wake.wait().await;
            continue;
        };
        let len = buf.len();
        let (r, buf) = io.write_all(buf).await;
        match data_boundary {
            Some(boundary) => {
                mid_frame = !boundary;
                side.out
                    .queued
                    .set(side.out.queued.get().saturating_sub(len));
                side.out.space_wake.notify();
                drop(buf);
            }
            None => drop(buf),
        }
        if let Err(e) = r {
            if !s.ended.get() {
                crate::debug!("{} write error: {e}", side.name);
            }
            side.out.data.borrow_mut().clear();
            side.out.control.borrow_mut().clear();
            side.out.queued.set(0);
            side.out.space_wake.notify();
            failed = true;
            s.on_gone(which);
            break;
        }
    }
    if !failed {
        io.shutdown().await;
    }
    s.writers_left.set(s.writers_left.get() - 1);
    s.timer_wake.notify();
}

/// Idle timeout, node keepalive pings, and the close deadline. Runs until
/// both writers have finished.
async fn timer(s: &Session, watch: Option<&NodeWatch>) {
    let mut next_ping = Instant::now() + s.cfg.keepalive;
    let mut next_check = watch.map(|w| Instant::now() + w.every);
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
        if wake.is_none() {
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
        match wake {
            Some(at) => {
                let sleep = monoio::time::sleep_until(at);
                monoio::select! {
                    _ = sleep => {}
                    _ = s.timer_wake.wait() => {}
                }
            }
            None => s.timer_wake.wait().await,
        }
    }
}
