//! How a session closes: the state of each side, and every rule that moves
//! it, in one place and sans-io.
//!
//! The rules (README, "Closing"):
//! - a close from one side is answered at once and passed to the other side
//!   with the same code;
//! - when the node's connection is lost (or it closes first) the client gets
//!   JSON-RPC errors for its requests in flight, then `1012` (reconnect);
//!   when the client's is lost the node gets `1001`;
//! - a client that breaks the protocol is read no more, and gets `1002`,
//!   `1007` or `1009` only once the node side is finished, so that the
//!   answers to the requests it sent before the bad frame still reach it;
//!   the node gets `1001`;
//! - a node that breaks the protocol is dropped: it gets its error's code,
//!   in-flight requests get errors, the client gets `1014`;
//! - a node failing its health checks: errors, `1012` to the client, `1001`
//!   to the node; idle timeout and shutdown: `1001` to both;
//! - every close starts the close deadline ([`Effects::start_deadline`]);
//!   a side is done when both closes have passed or its transport is gone;
//!   when both sides are done the session ends.
//!
//! A pinned session's node side runs the closing handshake with the node. A
//! shared connection's slot has none: it is done once the close is "sent"
//! and none of the session's requests is still waiting on it
//! ([`Effects::node_quiet`]).
//!
//! [`Closing`] keeps the state in `Cell`s and acts through [`Effects`], so
//! effects may look at the state (a queued error checks the client still
//! takes data) and the rules are tested here without sockets or TLS.

use std::cell::Cell;

use crate::ws::frame::{close_code, ProtocolError};

/// A session's two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Client,
    Node,
}

impl Which {
    pub fn other(self) -> Which {
        match self {
            Which::Client => Which::Node,
            Which::Node => Which::Client,
        }
    }
}

/// Where one side stands in closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideClose {
    /// Nothing sent or received.
    Open,
    /// The peer's close arrived; ours is not queued yet (it is, at once).
    Received,
    /// Our close is queued with this code; the peer's has not arrived.
    Sent(Option<u16>),
    /// The peer broke the protocol: it is read no more, and this close is
    /// owed to it, queued once the other side is done.
    Owed(ProtocolError),
    /// Both closes have passed; we sent this code.
    Closed(Option<u16>),
    /// The transport ended or failed; we had sent this code, if any.
    Gone(Option<u16>),
}

impl SideClose {
    /// Data may still be queued for this side.
    pub fn takes_data(self) -> bool {
        matches!(
            self,
            SideClose::Open | SideClose::Received | SideClose::Owed(_)
        )
    }

    /// This side is still read from.
    pub fn reads(self) -> bool {
        matches!(self, SideClose::Open | SideClose::Sent(_))
    }

    /// Nothing more goes either way.
    pub fn done(self) -> bool {
        matches!(self, SideClose::Closed(_) | SideClose::Gone(_))
    }

    pub fn got_close(self) -> bool {
        matches!(
            self,
            SideClose::Received | SideClose::Owed(_) | SideClose::Closed(_)
        )
    }

    pub fn is_gone(self) -> bool {
        matches!(self, SideClose::Gone(_))
    }

    /// The close code sent to this side, if one was.
    pub fn code_sent(self) -> Option<u16> {
        match self {
            SideClose::Sent(c) | SideClose::Closed(c) | SideClose::Gone(c) => c,
            _ => None,
        }
    }
}

/// What the rules make happen. Implemented by the session (queues frames,
/// answers requests, stops sockets) and by the tests (records them).
pub trait Effects {
    /// Queue a close frame to `to` (after what is queued for it).
    fn queue_close(&self, to: Which, code: Option<u16>, reason: &str);
    /// Answer every request still in flight with a JSON-RPC error.
    fn fail_inflight(&self, why: &str);
    /// Nothing more will be queued for `side`: its writer drains and ends.
    fn finish(&self, side: Which);
    fn start_deadline(&self);
    /// Both sides are done.
    fn end(&self);
    /// For a node side without a closing handshake: no request of this
    /// session waits on it.
    fn node_quiet(&self) -> bool {
        true
    }
}

/// The close state of a session.
#[derive(Debug)]
pub struct Closing {
    client: Cell<SideClose>,
    node: Cell<SideClose>,
    /// The node side runs a closing handshake (pinned) or not (a shared slot).
    node_handshake: bool,
    reason: Cell<&'static str>,
    ended: Cell<bool>,
}

impl Closing {
    pub fn new(node_handshake: bool) -> Closing {
        Closing {
            client: Cell::new(SideClose::Open),
            node: Cell::new(SideClose::Open),
            node_handshake,
            reason: Cell::new(""),
            ended: Cell::new(false),
        }
    }

    pub fn side(&self, which: Which) -> SideClose {
        self.cell(which).get()
    }

    fn cell(&self, which: Which) -> &Cell<SideClose> {
        match which {
            Which::Client => &self.client,
            Which::Node => &self.node,
        }
    }

    /// Why the session ended: the first reason given.
    pub fn reason(&self) -> &'static str {
        self.reason.get()
    }

    pub fn set_reason(&self, reason: &'static str) {
        if self.reason.get().is_empty() {
            self.reason.set(reason);
        }
    }

    pub fn ended(&self) -> bool {
        self.ended.get()
    }

    /// Queue a close to `to` unless one went already (or it is gone); a
    /// close owed for a protocol error goes with its own code and reason.
    pub fn send(&self, fx: &impl Effects, to: Which, code: Option<u16>, reason: &str) {
        let cell = self.cell(to);
        let (next, code, reason) = match cell.get() {
            SideClose::Open => (SideClose::Sent(code), code, reason),
            SideClose::Received => (SideClose::Closed(code), code, reason),
            SideClose::Owed(e) => {
                let c = Some(e.close_code());
                (SideClose::Closed(c), c, e.reason())
            }
            SideClose::Sent(_) | SideClose::Closed(_) | SideClose::Gone(_) => return,
        };
        cell.set(next);
        fx.queue_close(to, code, reason);
        if to == Which::Node && !self.node_handshake {
            self.settle_node(fx);
        }
    }

    /// A node side without a handshake is closed once its close is "sent"
    /// and nothing waits on it. Call again when an answer arrives.
    pub fn settle_node(&self, fx: &impl Effects) {
        if let SideClose::Sent(c) = self.node.get() {
            if !self.node_handshake && fx.node_quiet() {
                self.node.set(SideClose::Closed(c));
                self.check_end(fx);
            }
        }
    }

    /// A valid close frame arrived from `from`.
    pub fn on_close(&self, fx: &impl Effects, from: Which, code: Option<u16>, reason: &str) {
        let cell = self.cell(from);
        let answered = match cell.get() {
            SideClose::Open => {
                cell.set(SideClose::Received);
                false
            }
            SideClose::Sent(c) => {
                cell.set(SideClose::Closed(c));
                true
            }
            _ => true,
        };
        if !answered {
            // `from` started the closing handshake: answer it, and tell the other side.
            if from == Which::Node {
                fx.fail_inflight("upstream node closed the connection; reconnect and retry");
            }
            self.send(fx, from, code, "");
            self.set_reason(match from {
                Which::Client => "client closed",
                Which::Node => "node closed",
            });
            self.send(fx, from.other(), code, reason);
            fx.start_deadline();
        }
        fx.finish(from);
        self.check_end(fx);
    }

    /// `from`'s transport ended or failed without a closing handshake.
    pub fn on_gone(&self, fx: &impl Effects, from: Which) {
        let cell = self.cell(from);
        let was = cell.get();
        if was.is_gone() {
            return;
        }
        cell.set(SideClose::Gone(was.code_sent()));
        fx.finish(from);
        if !was.got_close() {
            match from {
                Which::Client => {
                    self.set_reason("client connection lost");
                    self.send(
                        fx,
                        Which::Node,
                        Some(close_code::GOING_AWAY),
                        "client went away",
                    );
                }
                Which::Node => {
                    self.set_reason("node connection lost");
                    fx.fail_inflight("upstream node connection lost; reconnect and retry");
                    self.send(
                        fx,
                        Which::Client,
                        Some(close_code::SERVICE_RESTART),
                        "upstream node connection lost",
                    );
                }
            }
        }
        fx.start_deadline();
        self.check_end(fx);
    }

    /// `from` broke RFC 6455 or a limit. `boundary`: what was forwarded of
    /// its stream ends between frames (else the other side can only be dropped).
    pub fn on_protocol_error(
        &self,
        fx: &impl Effects,
        from: Which,
        e: ProtocolError,
        boundary: bool,
    ) {
        match from {
            Which::Client => {
                self.set_reason("client protocol error");
                let cell = &self.client;
                cell.set(match cell.get() {
                    SideClose::Sent(c) => SideClose::Closed(c),
                    SideClose::Open | SideClose::Received => SideClose::Owed(e),
                    other => other,
                });
                if boundary {
                    self.send(
                        fx,
                        Which::Node,
                        Some(close_code::GOING_AWAY),
                        "client protocol error",
                    );
                } else {
                    self.node.set(SideClose::Gone(self.node.get().code_sent()));
                    fx.finish(Which::Node);
                }
            }
            Which::Node => {
                self.set_reason("node protocol error");
                fx.fail_inflight("upstream node protocol error; reconnect and retry");
                self.send(fx, Which::Node, Some(e.close_code()), e.reason());
                self.node.set(SideClose::Gone(self.node.get().code_sent()));
                fx.finish(Which::Node);
                self.send(
                    fx,
                    Which::Client,
                    Some(1014),
                    "upstream node protocol error",
                );
            }
        }
        fx.start_deadline();
        self.check_end(fx);
    }

    /// The session's node failed its health checks.
    pub fn on_node_down(&self, fx: &impl Effects) {
        fx.fail_inflight("upstream node unhealthy; reconnect and retry");
        self.set_reason("node unhealthy");
        self.send(
            fx,
            Which::Client,
            Some(close_code::SERVICE_RESTART),
            "upstream node unhealthy, reconnect",
        );
        self.send(fx, Which::Node, Some(close_code::GOING_AWAY), "going away");
        fx.start_deadline();
    }

    /// Requests have waited `pool.request_timeout_ms` and the node sent
    /// nothing meanwhile: it hung (a stopped process). As for a lost node:
    /// errors, 1012 to the client (it reconnects elsewhere), 1001 to the node.
    pub fn on_node_silent(&self, fx: &impl Effects) {
        fx.fail_inflight("upstream node stopped answering; reconnect and retry");
        self.set_reason("node stopped answering");
        self.send(
            fx,
            Which::Client,
            Some(close_code::SERVICE_RESTART),
            "upstream node stopped answering",
        );
        self.send(fx, Which::Node, Some(close_code::GOING_AWAY), "going away");
        fx.start_deadline();
    }

    /// Close both sides on the gateway's own account (idle timeout, shutdown).
    pub fn close_both(&self, fx: &impl Effects, code: u16, reason: &'static str) {
        self.set_reason(reason);
        self.send(fx, Which::Client, Some(code), reason);
        self.send(fx, Which::Node, Some(code), reason);
        fx.start_deadline();
    }

    /// Close the client alone (a shared session's policy: too slow, a
    /// message it cannot carry); its node side follows.
    pub fn close_client(&self, fx: &impl Effects, code: u16, reason: &'static str) {
        self.set_reason(reason);
        self.send(fx, Which::Client, Some(code), reason);
        self.send(fx, Which::Node, Some(close_code::GOING_AWAY), reason);
        fx.start_deadline();
    }

    /// The close deadline passed: both sides are gone.
    pub fn force_end(&self, fx: &impl Effects) {
        self.set_reason("close deadline passed");
        for which in [Which::Client, Which::Node] {
            let cell = self.cell(which);
            if !cell.get().is_gone() {
                cell.set(SideClose::Gone(cell.get().code_sent()));
            }
        }
        self.check_end(fx);
    }

    fn check_end(&self, fx: &impl Effects) {
        // A close owed to the client goes out once the node side is done.
        if matches!(self.client.get(), SideClose::Owed(_)) && self.node.get().done() {
            self.send(fx, Which::Client, None, "");
        }
        for which in [Which::Client, Which::Node] {
            if self.side(which).done() {
                fx.finish(which);
            }
        }
        if self.client.get().done() && self.node.get().done() && !self.ended.replace(true) {
            fx.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records effects as lines, and answers `node_quiet` from a flag.
    #[derive(Default)]
    struct Log {
        lines: RefCell<Vec<String>>,
        busy: Cell<bool>,
    }

    impl Log {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.lines.borrow_mut())
        }
    }

    impl Effects for Log {
        fn queue_close(&self, to: Which, code: Option<u16>, reason: &str) {
            self.lines
                .borrow_mut()
                .push(format!("close {to:?} {code:?} {reason}"));
        }
        fn fail_inflight(&self, why: &str) {
            self.lines.borrow_mut().push(format!("errors: {why}"));
        }
        fn finish(&self, _: Which) {}
        fn start_deadline(&self) {}
        fn end(&self) {
            self.lines.borrow_mut().push("end".into());
        }
        fn node_quiet(&self) -> bool {
            !self.busy.get()
        }
    }

    #[test]
    fn a_close_is_answered_at_once_and_passed_on_with_its_code() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.on_close(&fx, Which::Client, Some(4000), "bye");
        assert_eq!(
            fx.take(),
            ["close Client Some(4000) ", "close Node Some(4000) bye"]
        );
        assert_eq!(c.side(Which::Client), SideClose::Closed(Some(4000)));
        assert!(!c.ended(), "the node has not answered yet");
        c.on_close(&fx, Which::Node, Some(4000), "");
        assert_eq!(fx.take(), ["end"]);
        assert_eq!(c.reason(), "client closed");
    }

    #[test]
    fn a_node_that_closes_first_fails_the_requests_in_flight_before_the_close() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.on_close(&fx, Which::Node, Some(1001), "restarting");
        let lines = fx.take();
        assert!(lines[0].starts_with("errors:"), "{lines:?}");
        assert_eq!(lines[2], "close Client Some(1001) restarting");
    }

    #[test]
    fn a_lost_node_gives_errors_then_1012() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.on_gone(&fx, Which::Node);
        let lines = fx.take();
        assert!(lines[0].starts_with("errors: upstream node connection lost"));
        assert_eq!(
            lines[1],
            "close Client Some(1012) upstream node connection lost"
        );
        c.on_close(&fx, Which::Client, Some(1012), "");
        assert_eq!(fx.take(), ["end"]);
    }

    #[test]
    fn a_lost_client_gives_the_node_1001() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.on_gone(&fx, Which::Client);
        assert_eq!(fx.take(), ["close Node Some(1001) client went away"]);
        assert_eq!(c.reason(), "client connection lost");
    }

    #[test]
    fn a_client_at_fault_gets_its_close_only_after_the_node_side_is_done() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.on_protocol_error(&fx, Which::Client, ProtocolError::InvalidUtf8, true);
        assert_eq!(fx.take(), ["close Node Some(1001) client protocol error"]);
        assert!(!c.side(Which::Client).reads());
        assert!(c.side(Which::Client).takes_data(), "answers still reach it");
        // The node answers what came before, then its close.
        c.on_close(&fx, Which::Node, Some(1001), "");
        assert_eq!(
            fx.take(),
            ["close Client Some(1007) invalid UTF-8 in text", "end"]
        );
    }

    #[test]
    fn a_client_at_fault_inside_a_frame_drops_the_node_at_once() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.on_protocol_error(&fx, Which::Client, ProtocolError::MessageTooLarge, false);
        assert_eq!(
            fx.take(),
            ["close Client Some(1009) message too large", "end"]
        );
        assert!(c.side(Which::Node).is_gone());
    }

    #[test]
    fn a_node_at_fault_is_dropped_and_the_client_gets_1014() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.on_protocol_error(&fx, Which::Node, ProtocolError::ReservedBits, true);
        let lines = fx.take();
        assert!(lines[0].starts_with("errors:"));
        assert_eq!(lines[1], "close Node Some(1002) reserved bits set");
        assert_eq!(
            lines[2],
            "close Client Some(1014) upstream node protocol error"
        );
        assert_eq!(c.side(Which::Client).code_sent(), Some(1014));
    }

    #[test]
    fn idle_and_shutdown_close_both_sides_once() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.close_both(&fx, 1001, "idle timeout");
        c.close_both(&fx, 1001, "server shutting down");
        assert_eq!(
            fx.take(),
            [
                "close Client Some(1001) idle timeout",
                "close Node Some(1001) idle timeout"
            ]
        );
        assert_eq!(c.reason(), "idle timeout");
    }

    #[test]
    fn an_unhealthy_node_gives_errors_1012_to_the_client_and_1001_to_the_node() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.on_node_down(&fx);
        let lines = fx.take();
        assert!(lines[0].starts_with("errors: upstream node unhealthy"));
        assert_eq!(
            lines[1],
            "close Client Some(1012) upstream node unhealthy, reconnect"
        );
        assert_eq!(lines[2], "close Node Some(1001) going away");
    }

    #[test]
    fn the_deadline_ends_what_is_left() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.close_both(&fx, 1001, "idle timeout");
        fx.take();
        c.force_end(&fx);
        assert_eq!(fx.take(), ["end"]);
        assert_eq!(c.side(Which::Client), SideClose::Gone(Some(1001)));
    }

    #[test]
    fn a_shared_slot_is_done_when_nothing_waits_on_it() {
        let (c, fx) = (Closing::new(false), Log::default());
        fx.busy.set(true);
        c.on_protocol_error(&fx, Which::Client, ProtocolError::InvalidUtf8, true);
        assert_eq!(fx.take(), ["close Node Some(1001) client protocol error"]);
        // The last answer arrives: the owed close goes out after it.
        fx.busy.set(false);
        c.settle_node(&fx);
        assert_eq!(
            fx.take(),
            ["close Client Some(1007) invalid UTF-8 in text", "end"]
        );
        // A client close with nothing in flight ends the session at once.
        let c = Closing::new(false);
        c.on_close(&fx, Which::Client, None, "");
        assert_eq!(fx.take(), ["close Client None ", "close Node None ", "end"]);
    }

    #[test]
    fn nothing_is_sent_to_a_side_that_is_gone_or_closed() {
        let (c, fx) = (Closing::new(true), Log::default());
        c.on_gone(&fx, Which::Client);
        fx.take();
        c.close_both(&fx, 1001, "idle timeout");
        assert_eq!(fx.take(), Vec::<String>::new());
    }
}
