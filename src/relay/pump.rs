//! A pump reads one side and hands what it read on, in one of three ways:
//!
//! - **stream** (a pinned session that neither routes nor checks calls, and
//!   every node side that need not hold answers): data frames go to the
//!   other side's outbox as the very bytes that were read, the buffer itself
//!   moved (a control frame inside it is cut out with a `copy_within`; an
//!   incomplete header at the end, at most 139 bytes, moves to the next
//!   buffer). On the way, each client request is kept whole (unmasked) to
//!   note its ids, and each answer's ids are scanned as they pass.
//! - **hold** (a pinned session that routes or checks calls, see
//!   [`super::archive`]): each message is held until whole, then decided on.
//! - **messages** (a session on a shared node connection): each client
//!   message is assembled, unmasked, and handed to [`crate::relay::shared`], which
//!   rewrites and sends it.
//!
//! Whatever the way, control frames are each side's own business (a ping is
//! answered towards where it came from), closes and protocol errors go to
//! [`super::close`], and a pump stops reading while the outbox it feeds is
//! over `max_buffered` (backpressure: a slow reader slows its sender).

use monoio::time::Instant;

use crate::io::ReadHalf;
use crate::jsonrpc::scan::IdScanner;
use crate::jsonrpc::Call;
use crate::stats::{Outcome, Source};
use crate::ws::codec::Role;
use crate::ws::frame::OpCode;
use crate::ws::message::{Assembler, Event};

use super::archive::{on_held, Hold, Routed, HOLD_MAX};
use super::close::Which;
use super::session::Session;

/// How a pump hands messages on.
enum Way<'a, 'r> {
    Stream(IdScanner),
    Hold(&'a Routed<'r>, Hold),
    Messages(&'a crate::relay::shared::Ctx<'r>, &'a std::rc::Rc<Session>),
}

/// What processing one buffer led to.
enum Flow {
    Continue,
    Stop,
    /// The client's own outbox went over `max_buffered` (answers from the
    /// cache, refusals): the rest of the buffer waits until it drains.
    Pause,
}

/// Read from `from` and hand on, until its close, its end, or the session's.
/// `seen` gets the number of data messages read.
pub async fn pump<R: ReadHalf>(
    s: &Session,
    from: Which,
    io: &mut R,
    early: Vec<u8>,
    routed: Option<&Routed<'_>>,
    mux: Option<(&crate::relay::shared::Ctx<'_>, &std::rc::Rc<Session>)>,
    seen: &std::cell::Cell<u64>,
) {
    let role = match from {
        Which::Client => Role::Client,
        Which::Node => Role::Server,
    };
    let (mut way, keep, keep_raw) = match (from, mux, routed) {
        (Which::Client, Some((ctx, rc)), _) => (Way::Messages(ctx, rc), usize::MAX, false),
        // A client's message is held whole (up to `max_message_bytes`) and
        // read before it goes anywhere; its frames as received up to
        // HOLD_MAX (larger ones are framed again). Node answers are held
        // only when they may need a retry on archive (up to HOLD_MAX; larger
        // ones stream); for admission alone they stream as usual.
        (Which::Client, None, Some(r)) => (Way::Hold(r, Hold::default()), usize::MAX, true),
        (Which::Node, _, Some(r)) if r.route => (Way::Hold(r, Hold::default()), HOLD_MAX, true),
        // Stream: a client request is kept whole for its ids; an answer's
        // ids are scanned as they pass.
        (Which::Client, None, None) => (Way::Stream(IdScanner::new()), usize::MAX, false),
        (Which::Node, _, _) => (Way::Stream(IdScanner::new()), 0, false),
    };
    let limits = match from {
        Which::Client => s.cfg.codec,
        Which::Node => s.cfg.node_codec,
    };
    // A client's frames are kept up to HOLD_MAX (a larger message is framed
    // again from its payload); a node's held answer goes out in parts of
    // HOLD_MAX, so its frames are never dropped: each part is all of them.
    let mut asm = Assembler::new(role, limits, keep, keep_raw);
    if from == Which::Client {
        asm = asm.raw_max(HOLD_MAX);
    }
    let src = s.side(from);
    // Bytes that came with the handshake are the first buffer. Later buffers
    // start empty and get room from the reader, sized to the traffic.
    let mut buf = early;
    let source = match from {
        Which::Client => Source::Client,
        Which::Node => Source::Node,
    };
    let mut fresh = buf.len();
    loop {
        let mut paused = false;
        if !buf.is_empty() {
            let seen = asm.messages();
            let flow = process(s, from, &mut asm, &mut buf, &mut way);
            crate::stats::read(source, asm.messages() - seen, fresh);
            if let (Which::Client, Some(k)) = (from, &s.key) {
                k.usage.bytes_in(fresh);
            }
            fresh = 0;
            match flow {
                Flow::Stop => break,
                Flow::Pause => paused = true,
                Flow::Continue => {}
            }
        }
        if !s.closing.side(from).reads() || s.closing.ended() {
            break;
        }
        // Backpressure: wait for the other side's writer to catch up (on a
        // shared connection: for this client to read its answers, and for
        // the connection's writer); a client's pump also for its own
        // client's writer (what it answers itself: cache hits, refusals).
        match mux {
            Some(_) if from == Which::Client => crate::relay::shared::backpressure(s).await,
            _ => {
                let dst = s.side(from.other());
                let own = &s.client.out;
                let over = |out: &super::side::Outbox| {
                    out.queued.get() > s.cfg.max_buffered && !out.finished.get()
                };
                loop {
                    if s.closing.ended() {
                        break;
                    }
                    if over(&dst.out) {
                        if !src.paused.replace(true) && from == Which::Node {
                            // Its client reads nothing? The timer looks at
                            // the write pending (send timeout).
                            s.timer_wake.notify();
                        }
                        dst.out.space_wake.wait().await;
                    } else if let Some(a) = s
                        .archive
                        .as_deref()
                        .filter(|a| from == Which::Client && a.queued.get() > s.cfg.max_buffered)
                    {
                        // The archive node's queue, likewise.
                        src.paused.set(true);
                        a.space.wait().await;
                    } else if from == Which::Client && over(own) {
                        src.paused.set(true);
                        // Its client reads nothing? The timer watches the
                        // write (send timeout) and what piles up.
                        s.client_too_slow(Instant::now());
                        s.timer_wake.notify();
                        own.space_wake.wait().await;
                    } else {
                        break;
                    }
                }
                src.paused.set(false);
            }
        }
        if paused {
            // The rest of the buffer first, before reading more.
            continue;
        }
        src.reading.set(true);
        let (r, b) = io.read_more(buf).await;
        src.reading.set(false);
        buf = b;
        match r {
            Ok(n) if n > 0 => {
                fresh = n;
                // (A client's activity is its data, counted in `process`:
                // pings alone do not keep a session from idling out.)
                if from == Which::Node {
                    s.node_seen.set(Instant::now());
                }
            }
            Ok(_) => {
                if !s.closing.ended() {
                    s.closing.on_gone(s, from);
                }
                break;
            }
            Err(e) => {
                if !s.closing.ended() {
                    crate::debug!("{} read error: {e}", src.name);
                    s.closing.on_gone(s, from);
                }
                break;
            }
        }
    }
    seen.set(asm.messages());
}

/// Walk one buffer: hand on data, act on control frames, keep a partial frame.
fn process(
    s: &Session,
    from: Which,
    asm: &mut Assembler,
    buf: &mut Vec<u8>,
    way: &mut Way<'_, '_>,
) -> Flow {
    let streams = matches!(way, Way::Stream(_));
    let mut pos = 0;
    // Stream: bytes before `keep` are forwarded (control frames cut out).
    let mut keep = 0;
    let mut flow = Flow::Continue;
    let mut data = false;
    let mut quota_over = false;
    while pos < buf.len() {
        let payload_at = asm.decoder().payload_position().map(|_| pos);
        match asm.step(&buf[pos..]) {
            Ok(Event::Data { n, end }) => {
                data = true;
                match (&mut *way, payload_at, from) {
                    (Way::Stream(scan), Some(at), Which::Node) => scan.feed(&buf[at..at + n]),
                    // A held answer's ids, read as it passes (a large one
                    // goes out in parts before it is whole).
                    (Way::Hold(_, hold), Some(at), Which::Node) => hold.ids.feed(&buf[at..at + n]),
                    _ => {}
                }
                if streams {
                    if keep != pos {
                        buf.copy_within(pos..pos + n, keep);
                    }
                    keep += n;
                }
                pos += n;
                if end {
                    on_message(s, from, asm, way, true);
                    // A notification streamed past its key's quota: what
                    // is read so far goes out, then the session closes.
                    if streams && from == Which::Node && s.key().is_some_and(|k| k.over_quota()) {
                        quota_over = true;
                        flow = Flow::Stop;
                        break;
                    }
                    // Answers the gateway gave itself filled the client's
                    // outbox: the rest waits (streamed data cannot).
                    let archive_over = s
                        .archive
                        .as_deref()
                        .is_some_and(|a| a.queued.get() > s.cfg.max_buffered);
                    if from == Which::Client
                        && !streams
                        && (s.client.out.queued.get() > s.cfg.max_buffered || archive_over)
                    {
                        flow = Flow::Pause;
                        break;
                    }
                } else if from == Which::Node
                    && matches!(way, Way::Hold(..))
                    && asm.raw_len() >= HOLD_MAX
                {
                    on_message(s, from, asm, way, false);
                }
            }
            Ok(Event::Control(frame, n)) => {
                pos += n;
                match frame.opcode {
                    OpCode::Ping => s.push_control(from, OpCode::Pong, frame.payload()),
                    OpCode::Pong => {}
                    _ => {
                        if streams {
                            forward(s, from, buf, keep, pos, asm);
                            keep = 0;
                            pos = 0;
                        } else if let Way::Hold(..) = way {
                            if asm.raw_len() > 0 {
                                on_message(s, from, asm, way, false);
                            }
                        }
                        s.closing
                            .on_close(s, from, frame.close_code(), frame.close_reason());
                        flow = Flow::Stop;
                        break;
                    }
                }
            }
            Ok(Event::NeedMore) => break,
            Err(e) => {
                let boundary = match way {
                    Way::Stream(_) => asm.decoder().at_frame_boundary(),
                    // A held message never went out: the other side is between messages.
                    Way::Hold(_, hold) => {
                        hold.target.is_none() || asm.decoder().at_frame_boundary()
                    }
                    Way::Messages(..) => true,
                };
                if streams {
                    let (dec_frame_end, _) = (asm.decoder().at_frame_boundary(), ());
                    forward_with(s, from, buf, keep, pos, (dec_frame_end, false));
                    keep = 0;
                    pos = 0;
                }
                s.closing.on_protocol_error(s, from, e, boundary);
                flow = Flow::Stop;
                break;
            }
        }
    }
    if (from == Which::Node && pos > 0) || (from == Which::Client && data) {
        s.last_activity.set(Instant::now());
    }
    if streams {
        if keep > 0 || pos > 0 {
            forward(s, from, buf, keep, pos, asm);
        }
        if quota_over {
            s.quota_used_up();
        }
    } else {
        buf.drain(..pos);
    }
    flow
}

/// A whole message (or, `whole == false`, the first part of a large held one).
fn on_message(s: &Session, from: Which, asm: &mut Assembler, way: &mut Way<'_, '_>, whole: bool) {
    // A request that crossed our Close (shutdown, idle, a key withdrawn):
    // it can get no answer (RFC 6455 5.5.1: no data after a Close), so it
    // is neither taken nor charged; the client sees the Close and retries.
    if from == Which::Client && !s.closing.side(Which::Client).takes_data() {
        asm.clear();
        return;
    }
    match way {
        Way::Stream(scan) => match from {
            Which::Client => {
                let call = Call::parse(asm.message());
                crate::stats::calls(s.cfg.chain, &call, Outcome::Forwarded);
                s.sent(&call);
                asm.clear();
            }
            Which::Node => {
                let mut ids = 0;
                for id in scan.ids() {
                    s.answered(id);
                    ids += 1;
                }
                scan.reset();
                // No id: a notification (it went out as it streamed).
                if ids == 0 && s.key.is_some() {
                    s.notification(asm.last_length(), true);
                }
            }
        },
        Way::Hold(r, hold) => on_held(s, from, asm, hold, r, whole),
        Way::Messages(ctx, rc) => {
            if asm.is_text() {
                crate::relay::shared::on_request(ctx, rc, asm.message());
            } else {
                crate::debug!("binary message on a shared connection");
                s.closing.close_client(
                    s,
                    crate::ws::frame::close_code::UNSUPPORTED,
                    "JSON-RPC text messages only",
                );
            }
            asm.clear();
        }
    }
}

/// Send `buf[..keep]` to the other side and leave `buf` holding only `buf[pos..]`.
fn forward(s: &Session, from: Which, buf: &mut Vec<u8>, keep: usize, pos: usize, asm: &Assembler) {
    let d = asm.decoder();
    forward_with(
        s,
        from,
        buf,
        keep,
        pos,
        (d.at_frame_boundary(), d.at_message_boundary()),
    );
}

fn forward_with(
    s: &Session,
    from: Which,
    buf: &mut Vec<u8>,
    keep: usize,
    pos: usize,
    ends: (bool, bool),
) {
    if keep == 0 {
        buf.drain(..pos);
        return;
    }
    let next = buf[pos..].to_vec();
    let mut out = std::mem::replace(buf, next);
    out.truncate(keep);
    s.push_data(from.other(), out, ends.0, ends.1);
}
