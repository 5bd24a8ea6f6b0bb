//! The call pipeline: what happens to a client's call, whichever transport
//! brought it (an HTTP POST, a pinned WebSocket session, a session on a
//! shared node connection). Each decision has one home here, sans-io, and
//! every transport calls it alike; a transport only frames messages in and
//! out and owns the node connection it writes to.
//!
//! ```text
//!  bytes ─▶ jsonrpc::Call::parse        the strict reading, once
//!        ─▶ admit                        refusals: unreadable, methods, batch size, key, rate
//!        ─▶ per request:
//!             cache plan ─▶ answers      kept ─▶ answered here; on its way ─▶ joined; else fetched
//!             route                      pruned or archive, by method and block
//!        ─▶ the transport sends          a batch split by role, put back in order (batch::Gather)
//!        ─▶ the node's answer ─▶ retry   a pruned node's "state is gone": asked of archive, once
//!                              ─▶ hedge  a safe read late on its node: asked of another (crate::hedge)
//!        ─▶ errors with ids              jsonrpc::error; the metrics and access line
//! ```
//!
//! - [`admit`]: the refusal sequence, one for all transports.
//! - [`answers`]: the cache and in-flight joins, across transports.
//! - [`batch`]: a batch's requests grouped by where they go, and their
//!   answers put back together in the client's order.
//! - [`retry`]: when an answer is asked again of an archive node.
//!
//! Hedging's rule and budget are [`crate::hedge`]'s; routing's rules are
//! [`crate::route`]'s; what may be kept is [`crate::cache::rules`]'s.

pub mod admit;
pub mod answers;
pub mod batch;
pub mod retry;

pub use admit::{admit, Refused};
pub use answers::{Answers, Found, Keep, MustBeFinal, Reply, Waiter};
pub use batch::Gather;
