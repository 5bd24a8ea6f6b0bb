//! ringway: a WSS gateway for JSON-RPC node pools.
//!
//! One binary in place of nginx + certbot paths + node flags in front of a
//! pool of Substrate or Ethereum nodes: it terminates TLS, performs the
//! WebSocket handshake itself, picks a node, upgrades towards it, and relays
//! frames both ways without re-encoding them.
//!
//! ```text
//!            core k (one thread, one io_uring runtime, one SO_REUSEPORT listener)
//!  runtime::start ─▶ gateway::serve ─▶ tls::accept ─▶ http::head ─┬─ http::server | http::endpoints
//!                                                                 └─ gateway::upgrade ─▶ 101
//!        ┌──────────────────────────────── relay ─────────────────────────────┘
//!        │ client bytes ─▶ pump: ws::message::Assembler ─▶ jsonrpc::Call ─▶ policy, route
//!        │                   ─▶ same bytes ─▶ node (pinned)   or   ─▶ relay::shared: ids rewritten
//!        │ node answers ─▶ client writer (one write for all that is queued)
//!        └ relay::close: every closing rule; relay::timer: idle, keepalive, drain, deadline
//! ```
//!
//! Pinned sessions and sessions on a shared node connection are one relay
//! with two kinds of node side: a socket of the session's own, or a slot on
//! its core's multiplexed connection ([`relay::shared`]).
//!
//! The protocol modules (`ws`, `jsonrpc`, `h1`, `route`,
//! `relay::close`) are sans-io: bytes or events in, decisions out, tested
//! without sockets. The runtime modules (`runtime`, `gateway`, `relay`,
//! `tls`, `upstream`, `io`) own sockets, buffers and timers, per core,
//! with no locks on the hot path.
//!
//! The rooms stand on floors; each uses only rooms below it (no import
//! cycle: `tests/floors.rs` checks it):
//!
//! ```text
//! 5  runtime/ (start, listeners, signals), main.rs (and fuzzing.rs, the fuzz targets' entry points)
//! 4  gateway/ (accept ─▶ TLS ─▶ head ─▶ upgrade | HTTP | endpoint), http/ (server, endpoints)
//! 3  worker/ (a core's state, per configuration generation; the generations and reloads),
//!    cluster/ (the sync thread: budgets, usage and revocations shared through Redis)
//! 2  relay/, probe.rs, detect.rs; upstream (node connections, HTTP node client), metrics/ (the scrape);
//!    health.rs, policy/, cache/
//! 1  config/ (every setting type), tls/, h1.rs, ws/, io.rs, stats.rs (per-core counters),
//!    route.rs, hedge.rs, jsonrpc/, log.rs, signal.rs, task.rs, rng.rs
//! ```
//!
//! A lower room never names a higher one: the scrape reads what the
//! endpoint gathers for it ([`metrics::Scrape`]), the counters live below
//! everything that counts ([`stats`]), the settings live in [`config`].

pub mod cache;
pub mod call;
pub mod cluster;
pub mod config;
pub mod detect;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod h1;
pub mod health;
pub mod hedge;
pub mod http;
pub mod io;
pub mod jsonrpc;
pub mod log;
pub mod metrics;

pub mod policy;
pub mod probe;
pub mod relay;
pub mod rng;
pub mod route;
pub mod runtime;
pub mod signal;
pub mod stats;
pub mod task;
pub mod tls;
pub mod upstream;
pub mod worker;
pub mod ws;

/// The `log` facade, for the crate's logging macros (`crate::warn!`, ...).
#[doc(hidden)]
pub use ::log as __log;
