//! `[cluster]`: several gateways sharing keys' budgets, usage and revocations
//! through Redis (the sync thread is the `cluster` module, floor 3).
//! Without it, nothing is shared.

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

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
    /// Another Redis (or database) for the second level, e.g. one with
    /// `maxmemory-policy allkeys-lru`, so that eviction never reaches the
    /// ledger; empty: `redis`.
    pub cache_redis: String,
    /// The second level stores answers up to this size (bytes): a larger
    /// one (a 5 MiB `eth_call`) is fetched by each gateway.
    pub cache_max_bytes: u64,
    /// `rediss://`: the CA that signed Redis's certificate (PEM); empty:
    /// the system's roots.
    pub tls_ca: String,
    /// `rediss://` with `tls-auth-clients`: this gateway's certificate
    /// (PEM, with its chain) and key.
    pub tls_cert: String,
    pub tls_key: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            redis: String::new(),
            sync_ms: 100,
            prefix: "ringway".into(),
            instance: String::new(),
            cache: true,
            cache_redis: String::new(),
            cache_max_bytes: 1 << 20,
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
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
    /// The second level's Redis (`cache_redis`, or `redis`).
    pub cache_redis: String,
    pub cache_max_bytes: usize,
    /// `rediss://`: what to trust and what to show.
    pub tls: Option<RedisTls>,
}

/// TLS to Redis (`rediss://`): files read at each connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RedisTls {
    /// The CA's certificate (PEM); `None`: the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// This gateway's certificate and key (PEM), for `tls-auth-clients`.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
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
    let tls = s.redis.starts_with("rediss://");
    if !tls && !s.redis.starts_with("redis://") {
        return Err(err(
            "redis",
            "redis://[:password@]host:port/db, or rediss:// for TLS",
        ));
    }
    let file = |key: &str, path: &str| -> Result<Option<std::path::PathBuf>, ConfigError> {
        if path.is_empty() {
            return Ok(None);
        }
        if !tls {
            return Err(err(key, "only with a rediss:// address"));
        }
        std::fs::metadata(path)
            .map_err(|e| err(key, &format!("{path}: {e}")))
            .map(|_| Some(path.into()))
    };
    let ca = file("tls_ca", &s.tls_ca)?;
    let client = match (file("tls_cert", &s.tls_cert)?, file("tls_key", &s.tls_key)?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => return Err(err("tls_key", "tls_cert needs its key")),
        (None, Some(_)) => return Err(err("tls_cert", "tls_key needs its certificate")),
    };
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
    let cache_redis = match s.cache_redis.as_str() {
        "" => s.redis.clone(),
        url if url.starts_with("rediss://") == tls && url.contains("://") => url.to_string(),
        _ => {
            return Err(err(
                "cache_redis",
                "a URL of the same scheme as cluster.redis (redis:// or rediss://: the tls_* files serve both)",
            ))
        }
    };
    Ok(Some(ClusterConfig {
        redis: s.redis.clone(),
        cache_redis,
        sync: std::time::Duration::from_millis(s.sync_ms),
        prefix: s.prefix.clone(),
        instance,
        cache: s.cache,
        cache_max_bytes: s.cache_max_bytes as usize,
        tls: tls.then_some(RedisTls { ca, client }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(redis: &str) -> ClusterSection {
        ClusterSection {
            redis: redis.into(),
            ..ClusterSection::default()
        }
    }

    #[test]
    fn tls_files_are_refused_without_rediss_and_named_when_missing() {
        let mut s = section("redis://127.0.0.1:6379/");
        s.tls_ca = "/etc/hostname".into();
        let e = read(&s, "ringway.toml", 443).unwrap_err();
        assert_eq!(e.key, "cluster.tls_ca");
        assert_eq!(e.origin, "ringway.toml");

        let mut s = section("rediss://redis.internal:6380/");
        s.tls_ca = "/nonexistent/ca.pem".into();
        let e = read(&s, "ringway.toml", 443).unwrap_err();
        assert_eq!(e.key, "cluster.tls_ca");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{}", e.message);

        let mut s = section("rediss://redis.internal:6380/");
        s.tls_cert = "/etc/hostname".into();
        assert_eq!(read(&s, "f", 443).unwrap_err().key, "cluster.tls_key");

        let s = section("rediss://redis.internal:6380/");
        let c = read(&s, "f", 443).unwrap().unwrap();
        assert_eq!(c.tls, Some(RedisTls::default()));
        assert_eq!(
            read(&section("redis://h/"), "f", 443).unwrap().unwrap().tls,
            None
        );
    }

    #[test]
    fn an_address_of_another_scheme_is_refused() {
        let e = read(&section("http://h:6379"), "f", 443).unwrap_err();
        assert_eq!(e.key, "cluster.redis");
    }

    #[test]
    fn the_cache_redis_is_the_clusters_unless_named_and_of_the_same_scheme() {
        let c = read(&section("redis://h/0"), "f", 443).unwrap().unwrap();
        assert_eq!(c.cache_redis, "redis://h/0");
        let mut s = section("redis://h/0");
        s.cache_redis = "redis://cache/1".into();
        assert_eq!(
            read(&s, "f", 443).unwrap().unwrap().cache_redis,
            "redis://cache/1"
        );
        s.cache_redis = "rediss://cache/1".into();
        assert_eq!(read(&s, "f", 443).unwrap_err().key, "cluster.cache_redis");
    }
}
