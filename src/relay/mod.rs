//! One WebSocket session after the handshakes: the relay, for both modes.
//!
//! ```text
//!  client ──read──▶ pump(client) ──data──▶ node outbox ──▶ writer ──▶ node      (pinned)
//!     ▲                 │  └──whole messages──▶ shared: ids rewritten ─▶ shared connection
//!     │                 ▼ ping/close
//!  writer ◀── client outbox ◀──data── pump(node) ◀──read── node                 (pinned)
//!                       ▲─────answers, notifications─── shared connection's reader (shared)
//! ```
//!
//! A session is a [`Session`] and a handful of futures on one task (run by
//! [`join`], which polls only the woken ones): a pump
//! per side it reads ([`pump`]), a writer per side it writes
//! ([`writer`]), and a [`timer`]. The two modes differ only in the
//! node side: a pinned session has a socket of its own to its node (and,
//! when it routes, an archive connection: [`archive`]); a session in shared
//! mode has a slot on its core's multiplexed connection to the node
//! ([`crate::relay::shared`]), whose reader delivers answers into the session's client
//! outbox. Closing ([`close`]), requests in flight ([`inflight`]), the
//! per-session limits ([`limits`]), backpressure and timers are the same code.
//!
//! Backpressure: a pump stops reading while the outbox it feeds holds more
//! than `max_buffered` bytes (a session on a shared connection: while its own
//! client outbox does, or the connection's), so a slow reader slows its sender
//! instead of growing memory; a shared connection cannot wait for one slow
//! client, so such a client is closed (1008) instead.
//!
//! The room's files stand on floors (no circle: `tests/floors.rs`):
//! this file (the two relays) on top; then `pump`; `archive` and `shared`
//! (their node sides); `limits`, `timer`, `writer`; [`session`] (which
//! names its shared slot only through the [`session::Slot`] trait); and
//! below it `side`, `close`, `inflight`, `join`, `archive::state`.

pub mod archive;
pub mod close;
pub mod inflight;
pub mod join;
pub mod limits;
pub mod pump;
pub mod session;
pub mod shared;
pub mod side;
pub mod timer;
pub mod writer;

use std::cell::Cell;
use std::os::fd::RawFd;
use std::pin::pin;
use std::rc::Rc;

use crate::io::{ReadHalf, WriteHalf};
use crate::signal::Broadcast;

pub use archive::Routed;
pub use close::Which;
pub use session::{Session, SessionConfig};
pub use timer::{NodeWatch, DRAIN_POLL, SHUTDOWN_DRAIN};

/// How a session ended, for logs and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSummary {
    pub client_messages: u64,
    /// Messages from the node (a pinned session's own connection only).
    pub upstream_messages: Option<u64>,
    /// The close code sent to the client, if any.
    pub client_close_code: Option<u16>,
    pub reason: &'static str,
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

/// A pinned session: relay frames between a client and its own node
/// connection until both sides are closed.
pub async fn relay<CR, CW, UR, UW>(
    client: Peer<CR, CW>,
    node: Peer<UR, UW>,
    cfg: SessionConfig,
    watch: Option<NodeWatch>,
    routed: Option<Routed<'_>>,
    shutdown: &Broadcast,
    key: Option<std::sync::Arc<crate::policy::keys::Key>>,
) -> SessionSummary
where
    CR: ReadHalf,
    CW: WriteHalf,
    UR: ReadHalf,
    UW: WriteHalf,
{
    let archive_routed = routed.as_ref().is_some_and(|r| r.route);
    let s = Rc::new_cyclic(|me| {
        let mut s = Session::new(cfg, client.fd, Some(node.fd), archive_routed);
        s.me = me.clone();
        s.key = key;
        s
    });
    // The halves live here, not in the futures, so that both sockets stay open
    // until every future is done: `stop` must never reach a descriptor that
    // was closed and reused by another connection.
    let (mut client_r, mut client_w, mut node_r, mut node_w) = (client.r, client.w, node.r, node.w);
    // The archive connection's halves (a routed session's only), opened on
    // first need (again after a failure), also live here, until the session returns.
    let halves = archive_routed.then(Box::<archive::Halves>::default);
    let routed = routed.as_ref();
    let (client_msgs, node_msgs) = (Cell::new(0), Cell::new(0));
    let mut pumps = (
        pin!(pump::pump(
            &s,
            Which::Client,
            &mut client_r,
            client.early,
            routed,
            None,
            &client_msgs
        )),
        pin!(pump::pump(
            &s,
            Which::Node,
            &mut node_r,
            node.early,
            routed,
            None,
            &node_msgs
        )),
    );
    let mut writers = (
        pin!(writer::writer(&s, Which::Client, &mut client_w)),
        pin!(writer::writer(&s, Which::Node, &mut node_w)),
    );
    let mut timer = pin!(timer::timer(&s, watch.as_ref(), shutdown));
    // Boxed, and only for routed sessions: the others keep a small task.
    let mut archive = pin!(async {
        if let (Some(r), Some(halves)) = (routed.filter(|r| r.route), halves.as_deref()) {
            Box::pin(archive::connection(&s, r, halves)).await
        }
    });
    join::join([
        pumps.0.as_mut(),
        pumps.1.as_mut(),
        writers.0.as_mut(),
        writers.1.as_mut(),
        timer.as_mut(),
        archive.as_mut(),
    ])
    .await;
    // Its client follows on this core's follow hubs end with it.
    if let Some((side, _)) = routed.and_then(|r| r.side.as_ref()) {
        crate::relay::shared::follow::leave(side, &s);
    }
    let (client_msgs, node_msgs) = (client_msgs.get(), node_msgs.get());
    summary(&s, client_msgs, Some(node_msgs))
}

/// A session on this core's shared connection to a node (`conn`).
pub async fn relay_shared<CR, CW>(
    client: Peer<CR, CW>,
    ctx: crate::relay::shared::Ctx<'_>,
    conn: Rc<crate::relay::shared::Conn>,
) -> SessionSummary
where
    CR: ReadHalf,
    CW: WriteHalf,
{
    let s = Rc::new_cyclic(|me| {
        let mut s = Session::new(ctx.cfg, client.fd, None, false);
        s.key = ctx.key.clone();
        s.member = Some(Box::new(crate::relay::shared::Member::new(conn)));
        s.me = me.clone();
        s
    });
    crate::relay::shared::join(&s);
    let (mut r, mut w) = (client.r, client.w);
    let client_msgs = Cell::new(0);
    let mux = Some((&ctx, &s));
    let mut pump = pin!(pump::pump(
        &s,
        Which::Client,
        &mut r,
        client.early,
        None,
        mux,
        &client_msgs
    ));
    let mut writer = pin!(writer::writer(&s, Which::Client, &mut w));
    let mut timer = pin!(timer::timer(&s, None, ctx.shutdown));
    join::join([pump.as_mut(), writer.as_mut(), timer.as_mut()]).await;
    let client_msgs = client_msgs.get();
    crate::relay::shared::leave(&ctx.shared, &s);
    summary(&s, client_msgs, None)
}

fn summary(s: &Session, client_messages: u64, upstream_messages: Option<u64>) -> SessionSummary {
    SessionSummary {
        client_messages,
        upstream_messages,
        client_close_code: s.closing.side(Which::Client).code_sent(),
        reason: s.closing.reason(),
    }
}

#[cfg(test)]
mod size_tests {
    /// Guards the memory of an idle session (BENCHMARKS.md, B4): the relay's
    /// state is the largest part of a session's task. Regressed once when the
    /// archive futures were inlined (7.5 KiB); they are boxed now.
    #[test]
    fn the_relay_future_of_a_tls_session_stays_small() {
        fn out_size<A, B, C, D, E, G, H, F>(_: impl Fn(A, B, C, D, E, G, H) -> F) -> usize {
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

    /// Guards B4 in shared mode: a session's state (on the heap) and its
    /// future. Regressed when the relays became one: every session carried a
    /// node side and an archive state it did not use (19.5 KiB per idle
    /// session at 8,000 against 17.8); both are allocated only when used now.
    #[test]
    fn a_shared_session_stays_small() {
        fn out_size<A, B, C, F>(_: impl Fn(A, B, C) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let session = std::mem::size_of::<super::Session>();
        assert!(session <= 704, "Session is {session} bytes");
        let fut = out_size(super::relay_shared::<crate::tls::TlsReader, crate::tls::TlsWriter>);
        assert!(fut <= 4 * 1024, "relay_shared future is {fut} bytes");
    }
}
