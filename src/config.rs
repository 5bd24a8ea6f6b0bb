//! Configuration: a TOML file, command-line flags over it, and an embedded
//! default that needs neither.
//!
//! Every key is documented in `ringway.example.toml`. Loading is two steps:
//! [`FileConfig`] is what the TOML says (unknown keys are errors), and
//! [`Config::resolve`] checks values and produces the runtime [`Config`].
//! Each error names the key and the file (or the flag) it came from.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The config file as written. All sections and keys are optional.
#[derive(Debug, Default, Deserialize)]
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
    pub node: Vec<NodeSection>,
    pub log: LogSection,
}

#[derive(Debug, Clone, Deserialize)]
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
    /// `all`, or `safe` to refuse what a node's `--rpc-methods Safe` refuses.
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
    /// Requests one WebSocket session may have waiting on its node; 0 = no limit.
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
            methods: "all".into(),
            allow_methods: Vec::new(),
            deny_methods: Vec::new(),
            trusted_proxy_hops: 0,
            max_batch: 0,
            max_subscriptions_per_connection: 0,
            max_inflight_per_connection: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            cors_origins: vec!["*".into()],
            max_body_bytes: 10 << 20,
            body_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
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
    /// A Unix-socket listener (plain ws:// and HTTP) for a proxy in front; empty: none.
    pub unix_listen: String,
    /// File mode of the Unix socket (octal).
    pub unix_mode: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:8443".into(),
            workers: 0,
            pin_workers: true,
            redirect_listen: String::new(),
            metrics_listen: String::new(),
            unix_listen: String::new(),
            unix_mode: "660".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub handshake_timeout_ms: u64,
    /// After 2 s, a request head arriving slower than this (bytes/s) is cut off (408); 0 = off.
    pub handshake_min_rate: u64,
    pub idle_timeout_s: u64,
    pub close_timeout_ms: u64,
    pub max_frame_bytes: u64,
    pub max_message_bytes: u64,
    pub max_buffered_bytes: usize,
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
            max_frame_bytes: 16 << 20,
            max_message_bytes: 64 << 20,
            max_buffered_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    pub connect_timeout_ms: u64,
    pub keepalive_interval_s: u64,
    /// Sessions of a core share one connection per node (ids rewritten)
    /// instead of one connection each (frames passed through unchanged).
    pub shared: bool,
    /// Shared mode: subscriptions on one node connection before the gateway
    /// opens another to the same node.
    pub shared_max_subscriptions: u64,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            connect_timeout_ms: 5_000,
            keepalive_interval_s: 30,
            shared: false,
            shared_max_subscriptions: 512,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Deserialize)]
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
}

impl Default for HealthSection {
    fn default() -> Self {
        let d = crate::health::HealthConfig::default();
        HealthSection {
            probe: "rpc".into(),
            interval_ms: d.interval.as_millis() as u64,
            timeout_ms: d.timeout.as_millis() as u64,
            fall: d.fall,
            rise: d.rise,
            max_lag: d.max_lag,
        }
    }
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Deserialize)]
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

/// The node the seeds' nginx config proxies to.
pub const DEFAULT_NODE: &str = "ws://127.0.0.1:9944";

/// How TLS is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// Make a self-signed certificate at start, written into this directory.
    SelfSigned { dir: PathBuf },
    /// Plain ws://.
    Off,
}

/// Where a node listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddr {
    /// Every address the host name resolved to, tried in order.
    Tcp(Vec<SocketAddr>),
    Unix(PathBuf),
}

/// What a node can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Recent state only (a full node with `--state-pruning N`).
    Pruned,
    /// All history.
    Archive,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Pruned => "pruned",
            Role::Archive => "archive",
        }
    }
}

/// One upstream node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// As written, for logs (clients see [`NodeConfig::public_name`]).
    pub url: String,
    pub addr: NodeAddr,
    /// Path prefix from the URL ("" when the URL has none).
    pub path: String,
    pub role: Role,
    /// Blocks of state kept (pruned nodes); `u64::MAX` for archive nodes.
    pub pruning: u64,
    pub weight: u32,
}

impl NodeConfig {
    /// How clients see the node in error bodies and the public `/health`:
    /// scheme, host and port, without the path (which may carry a
    /// provider's API key); a Unix socket by its role only.
    pub fn public_name(&self) -> String {
        match self.url.strip_prefix("ws://") {
            Some(rest) => format!("ws://{}", rest.split('/').next().unwrap_or(rest)),
            None => format!("unix socket ({})", self.role.name()),
        }
    }
}

/// Runtime limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub handshake_timeout: Duration,
    pub handshake_min_rate: u64,
    pub idle_timeout: Duration,
    pub close_timeout: Duration,
    pub max_frame_bytes: u64,
    pub max_message_bytes: u64,
    pub max_buffered_bytes: usize,
}

/// The resolved configuration every worker reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub pin_workers: bool,
    pub redirect_listen: Option<SocketAddr>,
    /// Where `/metrics` and `/health` are served apart, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub unix_listen: Option<(PathBuf, u32)>,
    pub tls: TlsMode,
    pub limits: Limits,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    /// One connection per node per core, shared by sessions (`pool.shared`).
    pub shared: bool,
    /// Subscriptions per shared connection before another one opens.
    pub shared_max_subscriptions: usize,
    pub nodes: Vec<NodeConfig>,
    pub flavour: crate::route::Flavour,
    pub routing: RoutingSection,
    pub health: crate::health::HealthConfig,
    pub http: HttpSection,
    pub admission: AdmissionSection,
    pub log_level: crate::log::Level,
    /// One JSON object per log line.
    pub log_json: bool,
    /// Access lines (`log.access`).
    pub access_log: bool,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

/// A configuration error: where (file or flags), which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.origin, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

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

impl Config {
    /// Check values and build the runtime config. `origin` names the file, or "flags".
    pub fn resolve(file: FileConfig, source: Option<PathBuf>) -> Result<Config, ConfigError> {
        let origin = source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "command line".into());
        let err = |key: &str, message: String| ConfigError {
            origin: origin.clone(),
            key: key.into(),
            message,
        };

        let listen = file
            .server
            .listen
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                err(
                    "server.listen",
                    format!(
                        "`{}` is not an address like 127.0.0.1:8443",
                        file.server.listen
                    ),
                )
            })?;
        // An optional extra listener: empty is none.
        let extra_listener = |key: &str, value: &str, example: &str| match value {
            "" => Ok(None),
            a => a
                .to_socket_addrs()
                .ok()
                .and_then(|mut i| i.next())
                .map(Some)
                .ok_or_else(|| err(key, format!("`{a}` is not an address like {example}"))),
        };
        let redirect_listen = extra_listener(
            "server.redirect_listen",
            &file.server.redirect_listen,
            "0.0.0.0:80",
        )?;
        let metrics_listen = extra_listener(
            "server.metrics_listen",
            &file.server.metrics_listen,
            "127.0.0.1:9100",
        )?;
        let unix_listen = match file.server.unix_listen.as_str() {
            "" => None,
            p => {
                let mode = u32::from_str_radix(&file.server.unix_mode, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        err(
                            "server.unix_mode",
                            format!("`{}` is not an octal file mode", file.server.unix_mode),
                        )
                    })?;
                Some((PathBuf::from(p), mode))
            }
        };
        let workers = match file.server.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n if n > 1024 => return Err(err("server.workers", format!("{n} is more than 1024"))),
            n => n,
        };

        let tls = if !file.tls.enabled {
            TlsMode::Off
        } else {
            match (file.tls.cert.is_empty(), file.tls.key.is_empty()) {
                (false, false) => TlsMode::Files {
                    cert: PathBuf::from(&file.tls.cert),
                    key: PathBuf::from(&file.tls.key),
                },
                (true, true) => {
                    let dir = if !file.tls.self_signed_dir.is_empty() {
                        PathBuf::from(&file.tls.self_signed_dir)
                    } else if let Some(parent) = source.as_ref().and_then(|p| p.parent()) {
                        if parent.as_os_str().is_empty() {
                            PathBuf::from(".")
                        } else {
                            parent.to_path_buf()
                        }
                    } else {
                        std::env::temp_dir().join(format!("ringway-{}", std::process::id()))
                    };
                    TlsMode::SelfSigned { dir }
                }
                (true, false) => {
                    return Err(err("tls.cert", "tls.key is set but tls.cert is not".into()))
                }
                (false, true) => {
                    return Err(err("tls.key", "tls.cert is set but tls.key is not".into()))
                }
            }
        };

        let l = &file.limits;
        if !(256..=1 << 20).contains(&l.max_head_bytes) {
            return Err(err(
                "limits.max_head_bytes",
                format!("{} is outside 256..=1048576", l.max_head_bytes),
            ));
        }
        if !(1..=crate::ws::handshake::HEADER_ARRAY).contains(&l.max_headers) {
            return Err(err(
                "limits.max_headers",
                format!(
                    "{} is outside 1..={}",
                    l.max_headers,
                    crate::ws::handshake::HEADER_ARRAY
                ),
            ));
        }
        if l.max_frame_bytes == 0 || l.max_frame_bytes > l.max_message_bytes {
            return Err(err(
                "limits.max_frame_bytes",
                format!(
                    "must be between 1 and limits.max_message_bytes ({})",
                    l.max_message_bytes
                ),
            ));
        }
        for (key, v) in [
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.idle_timeout_s", l.idle_timeout_s),
            ("limits.close_timeout_ms", l.close_timeout_ms),
            ("http.body_timeout_ms", file.http.body_timeout_ms),
            ("pool.connect_timeout_ms", file.pool.connect_timeout_ms),
            ("pool.keepalive_interval_s", file.pool.keepalive_interval_s),
            (
                "pool.shared_max_subscriptions",
                file.pool.shared_max_subscriptions,
            ),
        ] {
            if v == 0 {
                return Err(err(key, "must be greater than 0".into()));
            }
        }
        if l.max_buffered_bytes < 16 * 1024 {
            return Err(err(
                "limits.max_buffered_bytes",
                "must be at least 16384".into(),
            ));
        }
        let limits = Limits {
            max_head_bytes: l.max_head_bytes,
            max_headers: l.max_headers,
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            handshake_min_rate: l.handshake_min_rate,
            idle_timeout: Duration::from_secs(l.idle_timeout_s),
            close_timeout: Duration::from_millis(l.close_timeout_ms),
            max_frame_bytes: l.max_frame_bytes,
            max_message_bytes: l.max_message_bytes,
            max_buffered_bytes: l.max_buffered_bytes,
        };

        let flavour = crate::route::Flavour::parse(&file.routing.chain).ok_or_else(|| {
            err(
                "routing.chain",
                format!("`{}` is not one of substrate, ethereum", file.routing.chain),
            )
        })?;
        // Polkadot's default --state-pruning is 256 blocks; geth keeps 128.
        let default_pruning = match flavour {
            crate::route::Flavour::Substrate => 256,
            crate::route::Flavour::Ethereum => 128,
        };
        let mut nodes = Vec::new();
        if file.node.is_empty() {
            let mut n = parse_node_url(DEFAULT_NODE).expect("default node URL is valid");
            n.pruning = default_pruning;
            nodes.push(n);
        }
        for (i, n) in file.node.iter().enumerate() {
            let mut node = parse_node_url(&n.url).map_err(|m| err(&format!("node[{i}].url"), m))?;
            node.role = match n.role.as_deref() {
                None | Some("pruned") | Some("full") => Role::Pruned,
                Some("archive") => Role::Archive,
                Some(other) => {
                    return Err(err(
                        &format!("node[{i}].role"),
                        format!("`{other}` is not pruned or archive"),
                    ))
                }
            };
            node.pruning = match node.role {
                Role::Archive => u64::MAX,
                Role::Pruned => n.pruning.unwrap_or(default_pruning),
            };
            node.weight = match n.weight {
                Some(0) => {
                    return Err(err(
                        &format!("node[{i}].weight"),
                        "must be at least 1".into(),
                    ))
                }
                Some(w) => w,
                None => 1,
            };
            nodes.push(node);
        }
        let ad = &file.admission;
        if ad.rate < 0.0 || ad.burst < 0.0 {
            return Err(err(
                "admission.rate",
                "rate and burst cannot be negative".into(),
            ));
        }
        if ad.methods != "all" && ad.methods != "safe" {
            return Err(err(
                "admission.methods",
                format!("`{}` is not all or safe", ad.methods),
            ));
        }
        let hs = &file.health;
        if hs.interval_ms == 0 || hs.timeout_ms == 0 {
            return Err(err(
                "health.interval_ms",
                "interval and timeout must be greater than 0".into(),
            ));
        }
        let mode = crate::health::ProbeMode::parse(&hs.probe).ok_or_else(|| {
            err(
                "health.probe",
                format!("`{}` is not one of rpc, connect, off", hs.probe),
            )
        })?;
        let health = crate::health::HealthConfig {
            mode,
            interval: Duration::from_millis(hs.interval_ms),
            timeout: Duration::from_millis(hs.timeout_ms),
            fall: hs.fall.max(1),
            rise: hs.rise.max(1),
            max_lag: hs.max_lag,
        };

        let log_level = crate::log::Level::parse(&file.log.level).ok_or_else(|| {
            err(
                "log.level",
                format!(
                    "`{}` is not one of error, warn, info, debug",
                    file.log.level
                ),
            )
        })?;

        let log_json = match file.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(err(
                    "log.format",
                    format!("`{other}` is not one of text, json"),
                ))
            }
        };

        Ok(Config {
            listen,
            workers,
            pin_workers: file.server.pin_workers,
            redirect_listen,
            metrics_listen,
            unix_listen,
            tls,
            limits,
            connect_timeout: Duration::from_millis(file.pool.connect_timeout_ms),
            keepalive_interval: Duration::from_secs(file.pool.keepalive_interval_s),
            shared: file.pool.shared,
            shared_max_subscriptions: file.pool.shared_max_subscriptions as usize,
            nodes,
            flavour,
            routing: file.routing,
            health,
            http: file.http,
            admission: file.admission,
            log_level,
            log_json,
            access_log: file.log.access,
            source,
        })
    }
}

/// Parse a node URL: `ws://host:port/path` or `unix:/path/to/socket`.
pub fn parse_node_url(url: &str) -> Result<NodeConfig, String> {
    if let Some(path) = url.strip_prefix("unix:") {
        let path = path.trim_start_matches("//");
        if !path.starts_with('/') {
            return Err(format!(
                "`{url}`: a unix socket path must be absolute (unix:/run/node.sock)"
            ));
        }
        return Ok(NodeConfig {
            url: url.into(),
            addr: NodeAddr::Unix(PathBuf::from(path)),
            path: String::new(),
            role: Role::Pruned,
            pruning: 256,
            weight: 1,
        });
    }
    let rest = if let Some(rest) = url.strip_prefix("ws://") {
        rest
    } else if url.starts_with("wss://") {
        return Err(format!(
            "`{url}`: wss:// nodes are not supported; nodes are reached over ws:// or unix:"
        ));
    } else {
        return Err(format!(
            "`{url}`: expected ws://host:port/path or unix:/path"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("`{url}`: no host"));
    }
    let has_port = if authority.starts_with('[') {
        authority.contains("]:")
    } else {
        authority.contains(':')
    };
    let with_port = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("`{url}`: cannot resolve `{authority}`: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("`{url}`: `{authority}` resolves to no address"));
    }
    let path = path.trim_end_matches('/');
    Ok(NodeConfig {
        url: url.into(),
        addr: NodeAddr::Tcp(addrs),
        path: path.into(),
        role: Role::Pruned,
        pruning: 256,
        weight: 1,
    })
}

/// Join a node's path prefix and the client's request target.
///
/// With no prefix the client's target passes unchanged, as nginx's
/// `proxy_pass http://localhost:9944;` does.
pub fn join_path(prefix: &str, client: &str) -> String {
    if prefix.is_empty() {
        return client.to_string();
    }
    match client {
        "" | "/" => prefix.to_string(),
        c if c.starts_with("/?") => format!("{prefix}{}", &c[1..]),
        c => format!("{prefix}{c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_listens_on_8443_in_front_of_9944() {
        let c = Config::resolve(FileConfig::default(), None).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.nodes[0].url, DEFAULT_NODE);
        assert!(matches!(c.tls, TlsMode::SelfSigned { .. }));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let f = FileConfig::parse("[[node]]\nurl = \"http://x:1\"\n", "/etc/ringway.toml").unwrap();
        let e = Config::resolve(f, Some("/etc/ringway.toml".into())).unwrap_err();
        assert_eq!(e.origin, "/etc/ringway.toml");
        assert_eq!(e.key, "node[0].url");
        let e = FileConfig::parse("[limits]\nmax_frame = 3\n", "/etc/ringway.toml").unwrap_err();
        assert!(e.to_string().contains("/etc/ringway.toml"), "{e}");
        assert!(e.to_string().contains("max_frame"), "{e}");
        let f = FileConfig::parse("[limits]\nmax_headers = 0\n", "a.toml").unwrap();
        let e = Config::resolve(f, Some("a.toml".into())).unwrap_err();
        assert_eq!(e.key, "limits.max_headers");
    }

    #[test]
    fn node_urls() {
        let n = parse_node_url("ws://127.0.0.1:9944/rpc/").unwrap();
        assert_eq!(n.path, "/rpc");
        assert_eq!(
            n.addr,
            NodeAddr::Tcp(vec!["127.0.0.1:9944".parse().unwrap()])
        );
        let n = parse_node_url("ws://[::1]:9944").unwrap();
        assert_eq!(n.addr, NodeAddr::Tcp(vec!["[::1]:9944".parse().unwrap()]));
        let n = parse_node_url("unix:/run/node.sock").unwrap();
        assert_eq!(n.addr, NodeAddr::Unix("/run/node.sock".into()));
        assert!(parse_node_url("wss://x:1").is_err());
        assert!(parse_node_url("unix:relative").is_err());
    }

    #[test]
    fn clients_see_nodes_without_their_paths() {
        let n = parse_node_url("ws://10.0.0.5:8546/v3/0123456789abcdef").unwrap();
        assert_eq!(n.public_name(), "ws://10.0.0.5:8546");
        let n = parse_node_url("ws://[::1]:9944").unwrap();
        assert_eq!(n.public_name(), "ws://[::1]:9944");
        let n = parse_node_url("unix:/run/secret/node.sock").unwrap();
        assert_eq!(n.public_name(), "unix socket (pruned)");
    }

    #[test]
    fn paths_join_like_nginx_proxy_pass() {
        assert_eq!(join_path("", "/a?b"), "/a?b");
        assert_eq!(join_path("/rpc", "/"), "/rpc");
        assert_eq!(join_path("/rpc", "/?k=1"), "/rpc?k=1");
        assert_eq!(join_path("/rpc", "/x"), "/rpc/x");
    }
}
