//! Probe settings (`[health]`): read by the health thread.

use std::time::Duration;

/// How nodes are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    /// JSON-RPC health and head methods of the chain flavour (the default).
    Rpc,
    /// Only a WebSocket upgrade (for backends that are not blockchain nodes).
    Connect,
    /// No probes: every node counts as up (connect failures still move sessions on).
    Off,
}

impl ProbeMode {
    pub fn parse(s: &str) -> Option<ProbeMode> {
        match s {
            "rpc" => Some(ProbeMode::Rpc),
            "connect" => Some(ProbeMode::Connect),
            "off" => Some(ProbeMode::Off),
            _ => None,
        }
    }
}

/// Probe settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    pub mode: ProbeMode,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    pub max_lag: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            mode: ProbeMode::Rpc,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            fall: 3,
            rise: 2,
            max_lag: 10,
        }
    }
}
