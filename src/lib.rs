//! ringway: a WSS gateway for JSON-RPC node pools.
//!
//! One binary in place of nginx + certbot paths + node flags in front of a
//! pool of Substrate or Ethereum nodes: it terminates TLS, performs the
//! WebSocket handshake itself, picks a node, upgrades towards it, and relays
//! frames both ways without re-encoding them.
//!
//! ```text
//!            core k (one thread, one io_uring runtime, one SO_REUSEPORT listener)
//!  client ─TLS─▶ tls::accept ─▶ ws::handshake::parse_head ─▶ upstream::open ─▶ 101
//!                                                                       │
//!        ┌──────────────────────────── session::relay ──────────────────┘
//!        │ client bytes ─▶ ws::codec::Decoder (header checks, UTF-8) ─▶ same bytes ─▶ node
//!        │ node bytes   ─▶ ws::codec::Decoder                         ─▶ same bytes ─▶ TLS writer
//!        └ pings answered, closes run on each side, timers bound everything
//! ```
//!
//! With `pool.shared = true`, sessions instead share one connection per
//! node per core (`shared`): ids are rewritten, subscriptions followed.
//!
//! The protocol modules (`ws::*`) are sans-io: bytes in, decisions out. The
//! runtime modules (`server`, `session`, `tls`, `upstream`, `io`) own sockets,
//! buffers and timers, per core, with no locks on the hot path.

pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod health;
pub mod http;
pub mod io;
pub mod jsonrpc;
pub mod log;
pub mod metrics;
pub mod mux;
pub mod policy;
pub mod probe;
pub mod relay;
pub mod rng;
pub mod route;
pub mod runtime;
pub mod signal;
pub mod tls;
pub mod upstream;
pub mod worker;
pub mod ws;
