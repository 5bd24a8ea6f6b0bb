//! Configuration: a TOML file, command-line flags over it, and an embedded
//! default that needs neither.
//!
//! Every key is documented in `ringway.example.toml`. Loading is two steps:
//! [`FileConfig`] is what the TOML says (unknown keys are errors: [`file`]),
//! and [`Config::resolve`] checks values and produces the runtime [`Config`]
//! (`resolve`). Each error names the key and the file (or the flag) it
//! came from.

pub mod chains;
pub mod cluster;
mod error;
pub use error::ConfigError;

/// The admin plane's settings (`server.admin_token_file`, `server.admin_hosts`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// The bearer token: `server.admin_token_file`'s content, trimmed.
    pub token: Option<String>,
    /// More names a request's `Host` may carry.
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("hosts", &self.hosts)
            .finish()
    }
}
mod file;
mod health;
pub mod keys;
pub mod nginx;
mod resolve;

pub use chains::{Chain, Miss};
pub use file::*;
pub use health::{HealthConfig, ProbeMode};

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

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
    pub max_answer_bytes: u64,
    pub max_buffered_bytes: usize,
    pub slow_reader: Duration,
    pub send_timeout: Duration,
    pub follow_max_pins: usize,
    pub follow_pin_age: Duration,
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
    /// `/metrics` on the main listener for clients other than loopback.
    pub public_metrics: bool,
    pub unix_listen: Option<(PathBuf, u32)>,
    pub tls: TlsMode,
    pub limits: Limits,
    pub connect_timeout: Duration,
    /// An HTTP node request's answer must come within this.
    pub request_timeout: Duration,
    /// How long a node removed by a reload keeps its sessions (`pool.removed_grace_ms`).
    pub removed_grace: Duration,
    pub keepalive_interval: Duration,
    /// One connection per node per core, shared by sessions (`pool.shared`).
    pub shared: bool,
    /// Subscriptions per shared connection before another one opens.
    pub shared_max_subscriptions: usize,
    pub shared_max_connections: usize,
    /// `pool.hedge` and `pool.hedge_budget`.
    pub hedge: crate::hedge::Hedge,
    pub hedge_budget: f64,
    /// What may be hedged (`pool.hedge_methods` with the built-in safe reads).
    pub hedge_reads: crate::hedge::SafeReads,
    /// `health.chain`, lower-cased (`None`: learned from the nodes).
    pub chain_id: Option<String>,
    pub nodes: Vec<NodeConfig>,
    pub flavour: crate::route::Flavour,
    pub routing: RoutingSection,
    pub health: crate::config::HealthConfig,
    pub http: HttpSection,
    pub admission: AdmissionSection,
    /// Which method policy applies and why (`admission.methods = "auto"`
    /// decides by the listen address), for the start-up log.
    pub methods_note: String,
    /// The admin plane (the metrics listener's `/usage` and `/keys`).
    pub admin: AdminConfig,
    pub cache: CacheSection,
    pub log_level: crate::log::Level,
    /// One JSON object per log line.
    pub log_json: bool,
    /// Access lines (`log.access`).
    pub access_log: bool,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// The API keys (`keys.file`), if any.
    pub keys: Option<std::sync::Arc<keys::KeysConfig>>,
    /// Several gateways on one Redis (`[cluster]`), if any.
    pub cluster: Option<cluster::ClusterConfig>,
    /// The chains served, at least one (each with its own settings; the
    /// top-level values above are the defaults they start from). Empty in
    /// a chain's own settings.
    pub chains: Vec<Chain>,
}

impl Config {
    /// The chain named `name`, if this configuration has it.
    pub fn chain_named(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
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
