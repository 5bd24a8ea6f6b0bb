//! The session's archive connection: opened on the first message routed to
//! an archive node, written to and read from beside the session's pruned
//! node, and opened again (after [`super::state::ARCHIVE_RETRY`]) when it fails. Its
//! sockets are owned by the session's future ([`Halves`]), never closed
//! under pending I/O.

use std::cell::RefCell;

use crate::io::{stop, ReadHalf, Stop, WriteHalf};
use crate::jsonrpc::scan::IdScanner;
use crate::stats::Source;
use crate::upstream::{NodeReader, NodeWriter};
use crate::ws::codec::Role;
use crate::ws::frame::{close_code, write_close, write_frame, OpCode};
use crate::ws::message::{Assembler, Event};

use super::routed::Routed;
use super::state::{Archive, ArchiveState};
use crate::relay::close::Which;
use crate::relay::session::Session;

/// The archive connection's halves, owned by the session's future so that
/// a socket is never closed under pending I/O (its descriptor could be
/// reused by another connection): the reader of the connection in use is
/// handed over in `reader` (with the connection's number), and a retired
/// connection's halves wait in `old` until both are there (neither has I/O
/// pending then), and are dropped: a session that retries archive nodes
/// holds one retired socket at most, not every one it ever opened.
#[derive(Default)]
pub struct Halves {
    reader: RefCell<Option<(u32, NodeReader)>>,
    old: RefCell<Retired<NodeReader, NodeWriter>>,
    /// Bytes the node sent right after its 101.
    early: RefCell<Vec<u8>>,
}

impl Halves {
    fn retire(&self, gen: u32, half: Half<NodeReader, NodeWriter>) {
        self.old.borrow_mut().retire(gen, half);
    }
}

/// Halves of retired connections (by number) whose other half is not done.
struct Retired<R, W>(Vec<(u32, Half<R, W>)>);

impl<R, W> Default for Retired<R, W> {
    fn default() -> Self {
        Retired(Vec::new())
    }
}

impl<R, W> Retired<R, W> {
    /// A half of connection `gen` is done with: once its other half is too,
    /// both are dropped (the socket closes).
    fn retire(&mut self, gen: u32, half: Half<R, W>) {
        self.0.push((gen, half));
        let has = |reader: bool| {
            self.0
                .iter()
                .any(|(g, h)| *g == gen && matches!(h, Half::R(_)) == reader)
        };
        if has(true) && has(false) {
            self.0.retain(|(g, _)| *g != gen);
        }
    }
}

/// The archive connection of a routed session: its writer (which opens it)
/// and its reader, until the session ends.
pub async fn connection(s: &Session, r: &Routed<'_>, halves: &Halves) {
    monoio::join!(writer(s, r, halves), reader(s, halves));
}

/// A half of a closed archive connection, kept open until the session returns.
enum Half<R, W> {
    R(#[allow(dead_code)] R),
    W(#[allow(dead_code)] W),
}

/// Write to the archive node: opens the connection on the first message, and
/// another after a failure once [`super::state::ARCHIVE_RETRY`] has passed.
async fn writer(s: &Session, r: &Routed<'_>, halves: &Halves) {
    let (slot_r, early) = (&halves.reader, &halves.early);
    let a = s.archive();
    let mut w: Option<NodeWriter> = None;
    let mut w_gen = 0;
    let mut _lease = None;
    loop {
        if s.closing.ended() || s.closing.side(Which::Client).done() {
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
                halves.retire(w_gen, Half::W(dead));
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
                r.template
                    .as_ref()
                    .expect("a session that routes has a template"),
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
                    w_gen = a.generation.get() + 1;
                    // A reader never taken had no I/O: it goes with its writer.
                    let stale = slot_r.borrow_mut().replace((w_gen, rd));
                    if let Some((g, stale)) = stale {
                        halves.retire(g, Half::R(stale));
                    }
                    *early.borrow_mut() = first;
                    w = Some(wr);
                    _lease = Some(lease);
                    a.generation.set(w_gen);
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
            a.queued.set(a.queued.get().saturating_sub(raw.len()));
            a.space.notify();
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
        halves.retire(w_gen, Half::W(w));
    }
}

/// Read the archive node's answers; each whole message goes to the client.
/// Follows the connection the writer opens, and the next one after a failure.
async fn reader(s: &Session, halves: &Halves) {
    let (slot_r, early) = (&halves.reader, &halves.early);
    let a = s.archive();
    loop {
        loop {
            if s.closing.ended() || s.closing.side(Which::Client).done() {
                return;
            }
            if a.state.get() == ArchiveState::Up && slot_r.borrow().is_some() {
                break;
            }
            a.wake_reader.wait().await;
        }
        let Some((generation, mut io)) = slot_r.borrow_mut().take() else {
            continue;
        };
        // Only the connection in use may fail the archive: an older one's
        // reader ends without a word when the writer retires it.
        let fail = |why: &str| {
            if a.generation.get() == generation {
                s.fail_archive(why);
            }
        };
        let mut buf = std::mem::take(&mut *early.borrow_mut());
        // Whole messages as received (they reach the client between the
        // pruned node's messages), and each one's ids.
        let mut asm = Assembler::new(Role::Server, s.cfg.node_codec, 0, true);
        let mut ids = IdScanner::new();
        let mut fresh = buf.len();
        'outer: loop {
            let mut pos = 0;
            let seen = asm.messages();
            while pos < buf.len() {
                let payload = asm.decoder().payload_position().is_some();
                match asm.step(&buf[pos..]) {
                    Ok(Event::Data { n, end }) => {
                        if payload {
                            ids.feed(&buf[pos..pos + n]);
                        }
                        pos += n;
                        if end {
                            let first = ids.ids().next();
                            let notification = first.is_none();
                            answered(a, first);
                            ids.reset();
                            let frames = asm.take_raw();
                            // A notification (of a subscription routed
                            // here) is charged as any: past the key's
                            // quota it is not delivered, and the session closes.
                            let charged = !notification
                                || s.key.is_none()
                                || s.notification(asm.last_length(), false);
                            if charged {
                                s.inject(Which::Client, frames);
                            }
                        }
                    }
                    Ok(Event::Control(frame, n)) => {
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
                    Ok(Event::NeedMore) => break,
                    Err(e) => {
                        crate::debug!("archive protocol error: {e}");
                        fail("archive node protocol error");
                        break 'outer;
                    }
                }
            }
            buf.drain(..pos);
            crate::stats::read(Source::Node, asm.messages() - seen, fresh);
            if s.closing.ended() || s.closing.side(Which::Client).done() {
                break;
            }
            a.reading.set(true);
            let (res, b) = io.read_more(buf).await;
            a.reading.set(false);
            buf = b;
            match res {
                Ok(n) if n > 0 => fresh = n,
                _ => {
                    if !s.closing.ended() && !s.closing.side(Which::Client).done() {
                        fail("connection lost");
                    }
                    break;
                }
            }
        }
        halves.retire(generation, Half::R(io));
    }
}

/// An archive answer arrived (with these ids): forget the request it answers.
fn answered(a: &Archive, first: Option<&[u8]>) {
    let Some(first) = first else { return };
    let mut pending = a.pending.borrow_mut();
    if let Some(i) = pending
        .iter()
        .position(|p| p.ids.first().map(Vec::as_slice) == Some(first))
    {
        pending.remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards the archive sockets: every connection a session ever opened
    /// (one more after each failure) stayed open for the session's life.
    #[test]
    fn a_retired_connection_closes_once_both_its_halves_are_done() {
        use std::rc::Rc;
        let socket = |_| Rc::new(());
        let mut retired: Retired<Rc<()>, Rc<()>> = Retired::default();
        let mut sockets = Vec::new();
        for gen in 1..=50u32 {
            let s = socket(gen);
            sockets.push(Rc::downgrade(&s));
            retired.retire(gen, Half::W(s.clone()));
            retired.retire(gen, Half::R(s));
        }
        assert!(retired.0.is_empty());
        assert!(sockets.iter().all(|s| s.upgrade().is_none()), "all closed");
        // One half alone keeps its socket: the other may have I/O pending.
        let s = socket(51);
        retired.retire(51, Half::W(s.clone()));
        assert_eq!(Rc::strong_count(&s), 2);
        retired.retire(51, Half::R(s.clone()));
        assert_eq!(Rc::strong_count(&s), 1);
    }
}
