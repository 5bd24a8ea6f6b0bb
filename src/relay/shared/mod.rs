//! Shared node connections (`pool.shared = true`, `--shared`): the node side
//! of a session as a slot on one multiplexed connection per node per core.
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
//! The price is that payloads are rewritten ([`request`]): each request's
//! `id` is replaced by a number unique on its connection, and the answer gets
//! the client's id back ([`conn`]; the rest of both messages is copied as it
//! is). Subscriptions are followed by their ids: a subscribe call's answer
//! registers the id for its session, notifications go to that session only,
//! a session may only unsubscribe (or call `chainHead_*` with) ids it owns,
//! and the gateway unsubscribes for a session that ends. Sessions carry
//! JSON-RPC only: a message that is not JSON gets a `-32700` error, a binary
//! message the close code 1003.
//!
//! It lives inside the relay, not beside it (as the architecture sketch had
//! `mux/`), because the two need each other: a session holds its slot here,
//! and a connection delivers answers into its sessions. Everything else of a
//! session (its client side, closing, requests in flight, limits, timers) is
//! the relay's ([`crate::relay`]). The per-client headers
//! (`X-Forwarded-For`, the client's path and subprotocol) do not reach nodes
//! in this mode: one connection speaks for many clients.
//!
//! The room's files stand on floors, each using only those below it (no
//! circle: `tests/floors.rs` checks it):
//!
//! ```text
//!  mod.rs    the front door: new, join, leave, backpressure
//!  io        a connection's life: connect, reader, writer, timer
//!  answer    the way back: answers to whoever asked, notifications to subscribers
//!  failover  a connection lost: its sessions and topics move, or close (1012)
//!  request   a client's call out: admitted, each request on its way (cache,
//!            its node, archive), a batch gathered back
//!  follow    chainHead_v1 follows merged: one node follow per node, pins
//!            held by the gateway, operations asked once
//!  hedge     reads late on their node asked of another too
//!  topics    merged subscriptions (one node subscription per stream), a head gap filled
//!  core      a core's connections: which one, what a landed answer does,
//!            requests never answered, a reload's end
//!  member    a session's membership of the connections
//!  conn      a connection as data, and requests written onto it
//!  topic     a merged subscription as data
//!  hub       a merged follow as data: the view, pins, operations, kept answers
//! ```
//!
//! When a connection is lost (node gone, protocol error, failed health
//! checks, hung), its sessions move to another node with their merged
//! subscriptions; the requests they had in flight fail with their ids.
//! Sessions that cannot move lose their node side as a pinned session
//! does: errors, then 1012.

mod answer;
pub mod conn;
mod core;
mod failover;
pub mod follow;
mod follow_ops;
mod hedge;
mod hub;
mod io;
mod member;
pub mod request;
mod topic;
pub mod topics;

use std::rc::Rc;

use crate::relay::close::Which;
use crate::relay::Session;

pub use conn::Conn;
pub use core::{Ctx, Settings, Shared};
pub use hub::Limits as FollowLimits;
pub use member::Member;
pub use request::on_request;

use conn::State;
use member::member;

/// This core's shared connections for one chain and generation (see [`Shared`]).
pub fn new(
    pool: Rc<crate::upstream::Pool>,
    router: crate::route::Router,
    settings: Settings,
    counts: std::sync::Arc<crate::policy::SharedCounts>,
    answers: Option<Rc<crate::call::Answers>>,
    hedging: crate::hedge::Hedging,
) -> Rc<Shared> {
    Shared::new(pool, router, settings, counts, answers, hedging, io::start)
}

/// A new session on its connection.
pub fn join(s: &Rc<Session>) {
    let m = member(s);
    let conn = m.conn();
    conn.join(s);
    if conn.state() == State::Dead {
        s.closing.on_gone(&**s, Which::Node);
    }
}

/// The session is over: end its subscriptions on the nodes, leave.
pub fn leave(sh: &Rc<Shared>, s: &Rc<Session>) {
    follow::leave(sh, s);
    let m = member(s);
    for (c, sub, method) in m.subs.borrow_mut().drain(..) {
        if c.state() == State::Dead {
            continue;
        }
        c.subs.borrow_mut().remove(&sub);
        conn::unsubscribe(&c, &sub, &method);
    }
    topics::leave_all(s);
    m.conn().leave(s);
}

/// Wait while this session's client does not read its answers, or its
/// connection's writer is far behind.
pub async fn backpressure(s: &Session) {
    let m = member(s);
    let limit = s.cfg.max_buffered;
    loop {
        if s.closing.ended() || !s.closing.side(Which::Client).takes_data() {
            return;
        }
        if s.client.out.queued.get() > limit {
            s.client.out.space_wake.wait().await;
            continue;
        }
        let conn = m.conn();
        if conn.out_len() > limit * 16 {
            conn.until(|c| c.out_len() <= limit * 16 || c.state() == State::Dead)
                .await;
            continue;
        }
        return;
    }
}
