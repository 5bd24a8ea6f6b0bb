//! HTTP/1.1, the parts the gateway speaks itself.
//!
//! - [`response`]: the one builder of the responses the gateway writes
//!   (refusals, endpoints, JSON-RPC answers).
//! - [`head`]: reading a request head, bounded in size and rate.
//! - [`server`]: JSON-RPC over HTTP from clients (`POST /`), keep-alive.
//!
//! Body framing is [`crate::h1`]'s (the node client in
//! [`crate::upstream::http`] reads its answers with it too).
//! - [`endpoints`]: `/health`, `/metrics`, the redirect listener.

pub mod admin;
mod body;
pub mod endpoints;
pub mod head;
pub mod response;
pub mod rpc;
pub mod server;

pub use response::{reason_phrase, write_response};
