//! A session's clock: idle timeout, keepalive pings to a pinned session's
//! node, its node's health, the worker's shutdown and the removal of its node
//! by a reload (answers in flight still go out for up to [`SHUTDOWN_DRAIN`],
//! then errors and `1001`), and the close
//! deadline, after which pending I/O is stopped. Runs until every writer of
//! the session has finished.

use monoio::time::Instant;

use crate::signal::Broadcast;
use crate::ws::frame::{close_code, OpCode};

use super::close::{Effects, Which};
use super::session::Session;
use std::time::Duration;

/// How often a session looks whether its API key was revoked.
const KEY_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// The node a session is on, watched so that the session moves away (close
/// 1012, clients reconnect to a healthy node) when health checks mark it down.
#[derive(Debug, Clone)]
pub struct NodeWatch {
    pub health: std::sync::Arc<crate::health::Health>,
    pub index: usize,
    pub every: Duration,
}

/// How long a session waits on shutdown for answers to requests in flight
/// before it fails them (JSON-RPC errors with their ids) and closes (1001).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// How often a draining session (or worker) looks at what is still in flight.
pub const DRAIN_POLL: Duration = Duration::from_millis(20);

pub async fn timer(s: &Session, watch: Option<&NodeWatch>, shutdown: &Broadcast) {
    // A shared connection pings its node and watches its health itself.
    let pinned = s.member.is_none();
    let mut next_ping = Instant::now() + s.cfg.keepalive;
    let mut pinged = Instant::now();
    let mut next_check = watch.map(|w| Instant::now() + w.every);
    // A session with an API key looks at it every second: a reload that
    // removes or disables it closes the session.
    let mut next_key = s.key.as_ref().map(|_| Instant::now() + KEY_CHECK);
    let mut drain_until = None;
    // The client's write seen pending at a look, and since when.
    let mut stuck: Option<(u32, Instant)> = None;
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
        if wake.is_none() && (shutdown.fired() || s.retiring.get()) {
            // Shutting down, or the node was removed by a reload: answers
            // to requests in flight still go out, then the client is told
            // to go elsewhere (1001).
            let (failed, reason) = if shutdown.fired() {
                (
                    "gateway shutting down; reconnect and retry",
                    "server shutting down",
                )
            } else {
                (
                    "node removed from the gateway's configuration; reconnect and retry",
                    "node removed from the configuration",
                )
            };
            let until = *drain_until.get_or_insert(now + SHUTDOWN_DRAIN);
            if s.inflight.borrow().is_empty() || now >= until {
                s.fail_inflight(failed);
                s.closing.close_both(s, close_code::GOING_AWAY, reason);
                continue;
            }
            wake = Some(until.min(now + DRAIN_POLL));
        } else if wake.is_none() {
            let idle_at = s.last_activity.get() + s.cfg.idle_timeout;
            if now >= idle_at {
                s.closing
                    .close_both(s, close_code::GOING_AWAY, "idle timeout");
                continue;
            }
            let mut soonest = idle_at;
            // A client that takes nothing: a write pending for the send
            // timeout, or answers that cannot wait at their source piling
            // up for the slow-reader time (see `Session::inject`).
            if s.client.writing.get() {
                let write = s.client.writes.get();
                match stuck {
                    Some((w, since)) if w == write => {
                        let at = since + s.cfg.send_timeout;
                        if now >= at {
                            s.close_slow_reader("client reads nothing (send timeout)");
                            continue;
                        }
                        soonest = soonest.min(at);
                    }
                    _ => {
                        stuck = Some((write, now));
                        soonest = soonest.min(now + s.cfg.send_timeout);
                    }
                }
            } else {
                stuck = None;
            }
            if !s.client.out.injected.borrow().is_empty() && s.client_too_slow(now) {
                s.close_slow_reader("client too slow to read its messages");
                continue;
            }
            if let Some(since) = s.slow_since.get() {
                soonest = soonest.min(since + s.cfg.slow_reader);
            }
            // A hung node: requests waiting, and nothing from it, for the
            // request timeout (a shared connection watches this itself).
            let waiting = s.inflight.borrow().waiting_since();
            if pinned && s.side(Which::Node).paused.get() {
                // Not reading the node (its client does not read): its
                // silence is ours, not a sign that it hung.
                s.node_seen.set(now);
            }
            if let (true, Some(since)) = (pinned, waiting) {
                let quiet = s.node_seen.get().max(since.into());
                // Halfway, a ping (once): a node that is only slow answers it.
                let probe = quiet + s.cfg.request_timeout / 2;
                if probe > pinged {
                    next_ping = next_ping.min(probe);
                }
                let at = quiet + s.cfg.request_timeout;
                if now >= at {
                    if let Some(w) = watch {
                        w.health.report_connect_failure(w.index);
                    }
                    s.closing.on_node_silent(s);
                    continue;
                }
                soonest = soonest.min(at);
            }
            if pinned {
                if now >= next_ping {
                    s.push_control(Which::Node, OpCode::Ping, b"");
                    pinged = now;
                    next_ping = now + s.cfg.keepalive;
                }
                soonest = soonest.min(next_ping);
            }
            if let (Some(w), Some(at)) = (watch, next_check) {
                if now >= at {
                    if w.health.retired(w.index) {
                        s.retiring.set(true);
                        continue;
                    }
                    if !w.health.serving(w.index) {
                        s.closing.on_node_down(s);
                        continue;
                    }
                    next_check = Some(now + w.every);
                }
            }
            if let (Some(_), Some(at)) = (&s.key, next_key) {
                if now >= at {
                    if s.key_withdrawn() {
                        continue;
                    }
                    next_key = Some(now + KEY_CHECK);
                }
            }
            if let Some(c) = next_check.into_iter().chain(next_key).min() {
                soonest = soonest.min(c);
            }
            wake = Some(soonest);
        }
        let stopping = async {
            if shutdown.fired() {
                std::future::pending::<()>().await
            }
            shutdown.wait().await
        };
        // One select (its futures sized once): without a time to wake, a
        // day from now stands in.
        let at = wake.unwrap_or_else(|| now + std::time::Duration::from_secs(86_400));
        let sleep = monoio::time::sleep_until(at);
        monoio::select! {
            _ = sleep => {}
            _ = s.timer_wake.wait() => {}
            _ = stopping => {}
        }
    }
}
