//! `[cluster]`: several gateways sharing keys' budgets, usage and revocations
//! through Redis (the sync thread is the `cluster` module, floor 3).
//! Without it, nothing is shared.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[cluster]` as the file writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// `redis://[:password@]host:port/db`; empty: no cluster.
    pub redis: String,
    /// How often counts are exchanged with Redis.
    pub sync_ms: u64,
    /// What the keys in Redis start with (several clusters on one Redis).
    pub prefix: String,
    /// This instance's name in the cluster (its figures in Redis are under
    /// it: keep it across restarts); empty: host name and listening port.
    pub instance: String,
    /// The second level of the response cache in Redis: answers that can
    /// never change, shared by every instance.
    pub cache: bool,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            redis: String::new(),
            sync_ms: 100,
            prefix: "ringway".into(),
            instance: String::new(),
            cache: true,
        }
    }
}

/// The cluster in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub redis: String,
    pub sync: std::time::Duration,
    pub prefix: String,
    pub instance: String,
    pub cache: bool,
}

/// `[cluster]` read and checked; `None` without `redis`.
pub fn read(
    s: &ClusterSection,
    origin: &str,
    port: u16,
) -> Result<Option<ClusterConfig>, ConfigError> {
    if s.redis.is_empty() {
        return Ok(None);
    }
    let err = |key: &str, message: &str| ConfigError {
        origin: origin.to_string(),
        key: format!("cluster.{key}"),
        message: message.to_string(),
    };
    if !s.redis.starts_with("redis://") {
        return Err(err(
            "redis",
            "redis://[:password@]host:port/db (rediss:// is not built in: put Redis on a private network or a local TLS tunnel)",
        ));
    }
    if !(10..=10_000).contains(&s.sync_ms) {
        return Err(err("sync_ms", "from 10 to 10000 milliseconds"));
    }
    if s.prefix.is_empty() || s.prefix.contains([' ', '\n']) {
        return Err(err("prefix", "a word without spaces"));
    }
    let instance = if s.instance.is_empty() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        match port {
            // A port picked at start: a name for this run only.
            0 => format!(
                "{host}:0-{}-{:04x}",
                std::process::id(),
                crate::rng::below(0x10000)
            ),
            p => format!("{host}:{p}"),
        }
    } else {
        s.instance.clone()
    };
    Ok(Some(ClusterConfig {
        redis: s.redis.clone(),
        sync: std::time::Duration::from_millis(s.sync_ms),
        prefix: s.prefix.clone(),
        instance,
        cache: s.cache,
    }))
}
