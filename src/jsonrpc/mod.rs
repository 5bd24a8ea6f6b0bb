//! JSON-RPC 2.0, sans-io: what the gateway reads of a message and what it
//! writes itself.
//!
//! - [`mod@peek`]: a message's top-level members as borrowed raw JSON, without
//!   a full parse and without allocating (fuzzed against serde_json).
//! - [`call`]: a client message parsed once into a typed [`Call`] (single or
//!   batch; each request's id, method, params and what it does to
//!   subscriptions), read by admission, routing, the in-flight tracker and
//!   the shared-connection id rewriter alike.
//! - [`scan`]: the ids of an answer as it streams past (pinned sessions).
//! - [`error`]: the one builder of the error objects the gateway answers with.

pub mod call;
pub mod error;
pub mod json;
pub mod peek;
pub mod scan;

pub use call::{Call, Request, Sub};
pub use peek::{elements, kind, member, offset_in, param, peek, unquote, Elements, Kind, Peek};
