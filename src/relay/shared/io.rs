//! A shared connection's life: connect, then its reader (what the node
//! sends goes back to sessions: [`super::answer`]), its writer, and its
//! timer (keepalive pings, the node's health, a hung node, requests never
//! answered, hedges due), until it is lost ([`super::failover`]).

use std::rc::Rc;
use std::time::Instant;

use crate::io::{ReadHalf, WriteHalf};
use crate::stats::Source;
use crate::upstream::{NodeReader, NodeWriter};
use crate::ws::codec::Role;
use crate::ws::frame::{write_close, OpCode};
use crate::ws::message::{Assembler, Event};

use super::conn::{Conn, State, SWEEP};
use super::core::Shared;

/// Read size on a shared connection.
const CONN_READ: usize = 256 * 1024;

/// Start the task of a connection just made (see [`Shared::conn`]): its
/// sessions move to another node or close (1012) if it fails, as when the
/// connection is lost.
pub fn start(sh: &Rc<Shared>, conn: &Rc<Conn>) {
    let (s, c) = (sh.clone(), conn.clone());
    crate::task::spawn(
        "a shared node connection",
        run(sh.clone(), conn.clone()),
        move || s.fail(&c, "its task failed (a bug)"),
    );
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
