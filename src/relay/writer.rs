//! A side's one writer: everything queued for a side ([`super::side::Outbox`])
//! leaves through it, in the order the frames must keep.

use crate::io::WriteHalf;

use super::close::Which;
use super::session::Session;
use super::side::Outbox;

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

/// The most a writer gathers into one write.
const GATHER_MAX: usize = 256 * 1024;

/// Write queued frames to one side until its outbox is finished and empty.
///
/// Everything queued when the writer wakes leaves in one write (one TLS
/// record, one send), in the order `next_write` gives: pipelined answers
/// and requests do not cost a system call each, and a peer reading the
/// socket sees them together, as they arrived. Nothing waits for more to
/// gather: a lone message leaves at once.
pub async fn writer<W: WriteHalf>(s: &Session, which: Which, io: &mut W) {
    let side = s.side(which);
    let mut mid_frame = false;
    let mut mid_message = false;
    let mut failed = false;
    let mut shut = false;
    loop {
        let Some(first) = next_write(&side.out, mid_frame, mid_message) else {
            if side.out.finished.get() {
                break;
            }
            side.out.writer_wake.wait().await;
            continue;
        };
        // Where the stream stands after `w`, and the bytes it counts.
        let take = |w: &NextWrite, at: &mut (bool, bool), counted: &mut usize| {
            if w.counted {
                *counted += w.buf.len();
            }
            if let Some((frame_end, message_end)) = w.ends {
                *at = (!frame_end, !message_end);
            }
        };
        let mut counted = 0;
        let mut at = (mid_frame, mid_message);
        take(&first, &mut at, &mut counted);
        let mut last = first.last;
        let mut buf = first.buf;
        while !last && buf.len() < GATHER_MAX {
            let Some(next) = next_write(&side.out, at.0, at.1) else {
                break;
            };
            take(&next, &mut at, &mut counted);
            last = next.last;
            buf.extend_from_slice(&next.buf);
        }
        (mid_frame, mid_message) = at;
        // What is being written no longer counts against the other side's
        // pump: it may read the next buffer meanwhile.
        if counted > 0 {
            side.out
                .queued
                .set(side.out.queued.get().saturating_sub(counted));
            side.out.space_wake.notify();
            if which == Which::Client && side.out.queued.get() <= s.cfg.max_buffered {
                // Back within the bound: a slow reader's clock starts anew.
                s.slow_since.set(None);
            }
        }
        if last && which == Which::Client {
            // Our close to the client is the last thing it gets: it leaves
            // with close_notify and the FIN in one write (the node side
            // waits for the node to close first, as RFC 6455 §7.1.1 asks).
            let r = io.write_final(buf).await;
            shut = true;
            if r.is_err() && !s.closing.ended() {
                crate::debug!("{} write error on close", side.name);
            }
            continue;
        }
        side.writing.set(true);
        side.writes.set(side.writes.get().wrapping_add(1));
        if let (Which::Client, Some(k)) = (which, &s.key) {
            k.usage.bytes_out(buf.len());
        }
        let (r, _) = io.write_all(buf).await;
        side.writing.set(false);
        if let Err(e) = r {
            if !s.closing.ended() {
                crate::debug!("{} write error: {e}", side.name);
            }
            side.out.clear();
            failed = true;
            s.closing.on_gone(s, which);
            break;
        }
    }
    if !failed && !shut {
        io.shutdown().await;
    }
    s.writers_left.set(s.writers_left.get() - 1);
    s.timer_wake.notify();
}
