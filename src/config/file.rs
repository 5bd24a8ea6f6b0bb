//! The config file as written: one serde struct per TOML section, every key
//! optional with its default here, unknown keys refused.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The config file as written. All sections and keys are optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub tls: TlsSection,
    pub limits: LimitsSection,
    pub pool: PoolSection,
    pub routing: RoutingSection,
    pub health: HealthSection,
    pub http: HttpSection,
    pub admission: AdmissionSection,
    pub cache: CacheSection,
    pub node: Vec<NodeSection>,
    pub log: LogSection,
    pub keys: super::keys::KeysSection,
    pub cluster: super::cluster::ClusterSection,
    /// `[[chain]]`: several chains on one listener (see `config::chains`);
    /// each table is read against the top-level sections it overrides.
    pub chain: Vec<toml::Table>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Answer what cannot have changed from a per-core cache (and send
    /// identical requests in flight once), in both modes.
    pub enabled: bool,
    /// Bytes of answers kept, per core.
    pub max_bytes: usize,
    /// How long static answers (`system_chain`, `eth_chainId`, ...) are kept.
    pub static_ttl_s: u64,
    /// How long answers at a block hash or a finalized block are kept.
    pub final_ttl_s: u64,
    /// Per method: seconds to keep its answers (0: never). A method not in
    /// the built-in tables is kept as static.
    pub methods: std::collections::BTreeMap<String, u64>,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            enabled: true,
            max_bytes: 32 << 20,
            static_ttl_s: 300,
            final_ttl_s: 3600,
            methods: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSection {
    /// JSON-RPC calls per second per client address (WebSocket messages and
    /// HTTP requests alike); 0 turns rate limiting off.
    pub rate: f64,
    /// Calls allowed at once above the rate; 0 means the same as `rate`.
    pub burst: f64,
    /// What a call costs in tokens, by method (others cost 1).
    pub method_costs: std::collections::BTreeMap<String, f64>,
    /// Open connections in total; 0 = no limit (503 beyond it).
    pub max_connections: usize,
    /// Open connections per client address; 0 = no limit (429 beyond it).
    pub max_connections_per_ip: usize,
    /// New connections per second per client address; 0 = no limit (429 beyond it).
    pub connection_rate: f64,
    /// New connections allowed at once above `connection_rate`; 0 = same as the rate.
    pub connection_burst: f64,
    /// Browser origins allowed to open WebSocket sessions (exact, `*.example.com`,
    /// or scheme-less `example.com`); empty admits any. Others get 403.
    pub origins: Vec<String>,
    /// `all`, `safe` to refuse what a node's `--rpc-methods Safe` refuses,
    /// or `auto` (the default, like a node's `--rpc-methods auto`): `safe`
    /// unless the gateway listens on loopback only.
    pub methods: String,
    /// If not empty, only these methods (exact or `prefix*`).
    pub allow_methods: Vec<String>,
    /// Methods refused (exact or `prefix*`), with JSON-RPC error -32601.
    pub deny_methods: Vec<String>,
    /// Proxies in front of ringway whose X-Forwarded-For entries are trusted.
    pub trusted_proxy_hops: usize,
    /// Most requests in one batch; 0 = no limit.
    pub max_batch: usize,
    /// Subscriptions one WebSocket session may hold; 0 = no limit.
    pub max_subscriptions_per_connection: u32,
    /// Requests one WebSocket session may have waiting on its node (or on
    /// an identical one in flight); 0 = no limit.
    pub max_inflight_per_connection: usize,
}

impl Default for AdmissionSection {
    fn default() -> Self {
        AdmissionSection {
            rate: 0.0,
            burst: 0.0,
            method_costs: Default::default(),
            max_connections: 0,
            max_connections_per_ip: 0,
            connection_rate: 0.0,
            connection_burst: 0.0,
            origins: Vec::new(),
            methods: "auto".into(),
            allow_methods: Vec::new(),
            deny_methods: Vec::new(),
            trusted_proxy_hops: 0,
            max_batch: 0,
            max_subscriptions_per_connection: 1024,
            max_inflight_per_connection: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Origins whose browsers may call the HTTP JSON-RPC endpoint (CORS), like a
    /// node's `--rpc-cors`: exact origins, `*.example.com`, or `*` for all.
    pub cors_origins: Vec<String>,
    /// Largest HTTP request body; larger gets 413.
    pub max_body_bytes: usize,
    /// A request body must arrive within this time (408 after it), and
    /// after 2 s at no less than `limits.handshake_min_rate` bytes/s.
    pub body_timeout_ms: u64,
    /// A body with no byte for this long gets 408, whatever came before.
    pub body_idle_timeout_ms: u64,
    /// Bytes that bodies still arriving may hold, per worker (a body is
    /// held at its declared length); a new one beyond it gets 503.
    pub max_bodies_bytes: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            cors_origins: vec!["*".into()],
            max_body_bytes: 10 << 20,
            body_timeout_ms: 30_000,
            body_idle_timeout_ms: 10_000,
            max_bodies_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on.
    pub listen: String,
    /// Worker threads, one runtime each; 0 means one per CPU core.
    pub workers: usize,
    /// Pin each worker to a core.
    pub pin_workers: bool,
    /// A plain HTTP listener that redirects (301) to the TLS one; empty: none.
    pub redirect_listen: String,
    /// A plain HTTP listener for `GET /metrics` and `GET /health` (e.g.
    /// 127.0.0.1:9100), off the public port; empty: both on the main listener.
    pub metrics_listen: String,
    /// Without `metrics_listen`, `GET /metrics` on the main listener answers
    /// clients on this host (loopback) only, others get 404; true: anyone.
    pub public_metrics: bool,
    /// A Unix-socket listener (plain ws:// and HTTP) for a proxy in front; empty: none.
    pub unix_listen: String,
    /// File mode of the Unix socket (octal).
    pub unix_mode: String,
    /// A file holding the admin plane's bearer token: `GET /usage` and
    /// `POST /keys/...` on the metrics listener then need `Authorization:
    /// Bearer <token>`. Empty: none (commands on a loopback listener only).
    pub admin_token_file: String,
    /// More names the admin plane's `Host` may carry (besides the
    /// listener's own address, localhost and loopback addresses).
    pub admin_hosts: Vec<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8443".into(),
            workers: 0,
            pin_workers: true,
            redirect_listen: String::new(),
            metrics_listen: String::new(),
            public_metrics: false,
            unix_listen: String::new(),
            unix_mode: "660".into(),
            admin_token_file: String::new(),
            admin_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Terminate TLS (wss://). False serves plain ws:// (behind another proxy).
    pub enabled: bool,
    /// PEM certificate chain (certbot's fullchain.pem). Empty: self-signed.
    pub cert: String,
    /// PEM private key (certbot's privkey.pem): PKCS#8, PKCS#1 or SEC1.
    pub key: String,
    /// Where to write the self-signed certificate; empty: next to the config file, else a temp dir.
    pub self_signed_dir: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            enabled: true,
            cert: String::new(),
            key: String::new(),
            self_signed_dir: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub handshake_timeout_ms: u64,
    /// After 2 s, a request head arriving slower than this (bytes/s) is cut off (408); 0 = off.
    pub handshake_min_rate: u64,
    pub idle_timeout_s: u64,
    pub close_timeout_ms: u64,
    /// A client's frame; over it, close 1009.
    pub max_frame_bytes: u64,
    /// A client's message (held whole to be read before it goes to a node,
    /// so also the memory one message may take); below the nodes' own
    /// limits (jsonrpsee 10 MiB, Substrate 15 MiB, geth 32 MiB), which
    /// otherwise drop a shared connection for every session on it.
    pub max_message_bytes: u64,
    /// A node's message (frame or whole) towards a client: answers can be
    /// large (a block's receipts, a trace), and nodes are trusted more.
    pub max_answer_bytes: u64,
    pub max_buffered_bytes: usize,
    /// A client with more than `max_buffered_bytes` waiting that cannot
    /// wait at its source (answers from the cache, a shared connection or
    /// an archive node, the gateway's own errors) for this long is closed
    /// (1008); more than eight times that, at once.
    pub slow_reader_ms: u64,
    /// A write to a client pending this long (it reads nothing) ends the
    /// session (nginx's `send_timeout`).
    pub send_timeout_ms: u64,
    /// Blocks one client's `chainHead_v1_follow` may hold pinned; past it
    /// that follow alone is stopped (the node holds at most 512 for all).
    pub follow_max_pins: usize,
    /// How long a client's follow may hold a block the gateway's own view
    /// has let go of (finalized past, or pruned) before it alone is stopped
    /// (below a Substrate node's 60 s, which would stop every client's).
    pub follow_pin_age_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            handshake_timeout_ms: 10_000,
            handshake_min_rate: 100,
            idle_timeout_s: 300,
            close_timeout_ms: 3_000,
            max_frame_bytes: 8 << 20,
            max_message_bytes: 8 << 20,
            max_answer_bytes: 64 << 20,
            max_buffered_bytes: 256 * 1024,
            slow_reader_ms: 5_000,
            follow_max_pins: 256,
            follow_pin_age_ms: 45_000,
            send_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    pub connect_timeout_ms: u64,
    /// A node's answer to one HTTP JSON-RPC request must come within this
    /// (nginx's `proxy_read_timeout`); else the client gets an error and the
    /// node a passive health failure.
    pub request_timeout_ms: u64,
    pub keepalive_interval_s: u64,
    /// Sessions of a core share one connection per node (ids rewritten)
    /// instead of one connection each (frames passed through unchanged).
    pub shared: bool,
    /// Shared mode: subscriptions on one node connection before the gateway
    /// opens another to the same node.
    pub shared_max_subscriptions: u64,
    /// Shared mode: connections to one node per core at most (each takes
    /// up to `shared_max_subscriptions`); a subscription that finds no room
    /// is refused (-32005).
    pub shared_max_connections: u64,
    /// After a reload removes a node, its open sessions go on this long,
    /// then finish their requests in flight and close (1001).
    pub removed_grace_ms: u64,
    /// Hedged reads: `auto` (a node that has not answered a read within
    /// its usual time plus four deviations, at least `hedge_min_ms`, gets
    /// a second node asked too; the first answer wins), `off`, or a fixed
    /// delay in milliseconds. Writes are never hedged.
    pub hedge: String,
    pub hedge_min_ms: u64,
    /// At most this fraction of a worker's reads are hedged (plus a burst of 10).
    pub hedge_budget: f64,
    /// Methods that may be hedged besides the built-in safe reads (exact
    /// names, or prefixes ending in `*`). Only reads every node answers
    /// alike belong here: never a write or a node-local cursor.
    pub hedge_methods: Vec<String>,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            keepalive_interval_s: 30,
            shared: false,
            shared_max_subscriptions: 512,
            shared_max_connections: 8,
            removed_grace_ms: 60_000,
            hedge: "auto".into(),
            hedge_min_ms: 20,
            hedge_budget: 0.1,
            hedge_methods: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// `substrate` or `ethereum`: selects the built-in method tables.
    pub chain: String,
    /// Methods that always go to archive nodes (`*` suffix wildcards). Replaces the defaults.
    pub archive_methods: Option<Vec<String>>,
    /// More methods with a block argument: method = zero-based position in params.
    pub block_args: std::collections::BTreeMap<String, usize>,
    /// Error texts meaning "this pruned node no longer has that state". Replaces the defaults.
    pub pruned_errors: Option<Vec<String>>,
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            chain: "substrate".into(),
            archive_methods: None,
            block_args: Default::default(),
            pruned_errors: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    /// `rpc` (health and head methods), `connect` (a WebSocket upgrade only), or `off`.
    pub probe: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that mark a node down.
    pub fall: u32,
    /// Consecutive successes that mark it up again.
    pub rise: u32,
    /// Blocks behind the best head before a node counts as down.
    pub max_lag: u64,
    /// The chain every node must be on: a Substrate genesis hash
    /// (`0x91b1…`) or an Ethereum chain id (`0x1`). Empty: the one most
    /// nodes report. A node on another chain is taken out.
    pub chain: String,
}

impl Default for HealthSection {
    fn default() -> Self {
        let d = crate::config::HealthConfig::default();
        HealthSection {
            probe: "rpc".into(),
            interval_ms: d.interval.as_millis() as u64,
            timeout_ms: d.timeout.as_millis() as u64,
            fall: d.fall,
            rise: d.rise,
            max_lag: d.max_lag,
            chain: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// `ws://host:port/path` or `unix:/path/to/socket`.
    pub url: String,
    /// `pruned` (recent state only; also for full nodes) or `archive`.
    #[serde(default)]
    pub role: Option<String>,
    /// For pruned nodes: how many blocks of state they keep (`--state-pruning`).
    #[serde(default)]
    pub pruning: Option<u64>,
    /// Relative share of sessions.
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// error, warn, info, debug.
    pub level: String,
    /// text, or json (one object per line).
    pub format: String,
    /// One line per WebSocket session and per HTTP JSON-RPC request.
    pub access: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: "text".into(),
            access: false,
        }
    }
}

impl FileConfig {
    /// Read and parse a TOML file; syntax errors and unknown keys name the file and the key.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &origin)
    }

    pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            origin: origin.to_string(),
            key: String::new(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })
    }
}
