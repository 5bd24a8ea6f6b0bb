//! HTTP/1.1, the parts the gateway speaks itself.
//!
//! - [`response`]: the one builder of the responses the gateway writes
//!   (refusals, endpoints, JSON-RPC answers).
//! - [`head`]: reading a request head, bounded in size and rate.
//! - [`body`]: request and response body framing, sans-io: strict framing
//!   (RFC 9112 §6) and a linear chunked decoder with limits.
//! - [`server`]: JSON-RPC over HTTP from clients (`POST /`), keep-alive.
//! - [`client`]: JSON-RPC `POST`s to nodes over a per-core keep-alive pool.
//! - [`endpoints`]: `/health`, `/metrics`, the redirect listener.
//! - [`origin`]: origin allowlists (CORS and WebSocket `Origin`).

pub mod body;
pub mod client;
pub mod endpoints;
pub mod head;
pub mod origin;
pub mod response;
pub mod server;

pub use response::{reason_phrase, write_response};
