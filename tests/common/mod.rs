//! Test harness, by what it provides:
//!
//! - [`pki`]: a test CA and a leaf certificate;
//! - [`gateway`]: the real `ringway` binary on 127.0.0.1:0;
//! - [`upstream`]: every fake node of the tests: behaviours (echo, silent,
//!   frozen, scripted faults...), a Substrate-like mock chain, and a node
//!   with subscriptions for shared connections;
//! - [`chainhead`]: a node's `chainHead_v1_*` with a real node's limits;
//! - [`nodes`]: real nodes (anvil, chopsticks) from npm;
//! - [`proxy`]: what a real node receives, counted;
//! - [`clients`]: raw TLS, tungstenite, and real JavaScript clients;
//! - [`wire`]: HTTP responses, upgrade requests and frames by hand.
#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(unused_imports)] // each part imports the harness's common set
#![allow(clippy::result_large_err)] // tungstenite's handshake callback signature
#![allow(clippy::zombie_processes)] // the child is waited for in Gateway's Drop

pub mod chainhead;
pub mod clients;
pub mod gateway;
pub mod nodes;
pub mod pki;
pub mod proxy;
pub mod upstream;
pub mod wire;

pub use chainhead::*;
pub use clients::*;
pub use gateway::*;
pub use nodes::*;
pub use pki::*;
pub use proxy::*;
pub use upstream::*;
pub use wire::*;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The string `result` of a JSON-RPC answer (a subscription id).
pub fn result_string(answer: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
    v["result"]
        .as_str()
        .unwrap_or_else(|| panic!("no string result: {answer}"))
        .to_string()
}

/// Write `text` to a file in `pki.dir` and return its path.
pub fn write_config(pki: &TestPki, name: &str, text: &str) -> PathBuf {
    let p = pki.dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A port nothing listens on (bound then released).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Poll `cond` every 20 ms until it holds; panics with `what` after `within`.
/// Tests wait for conditions with this instead of sleeping a fixed time.
pub fn wait_for(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
