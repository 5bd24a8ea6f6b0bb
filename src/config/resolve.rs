//! From the file (and flags) to the runtime [`Config`]: every value checked,
//! every error naming its key and file.

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;

impl Config {
    /// Check values and build the runtime config, with its chains: the
    /// `[[chain]]` tables, or one chain for every host from the top-level
    /// nodes. `source` names the file (else the command line).
    pub fn resolve(file: FileConfig, source: Option<PathBuf>) -> Result<Config, ConfigError> {
        Config::resolve_detecting(file, source, &|_| None)
    }

    /// The same, asking `detect` what kind of chain a pool serves when its
    /// `[[chain]]` table has no `kind` (`None`: it could not tell; the
    /// top-level `routing.chain` stays).
    pub fn resolve_detecting(
        mut file: FileConfig,
        source: Option<PathBuf>,
        detect: &dyn Fn(&[NodeConfig]) -> Option<crate::route::Flavour>,
    ) -> Result<Config, ConfigError> {
        let tables = std::mem::take(&mut file.chain);
        let origin = source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "command line".into());
        if !tables.is_empty() && !file.node.is_empty() {
            return Err(ConfigError {
                origin,
                key: "node".into(),
                message: "with [[chain]] tables, every node belongs to a chain ([[chain.node]])"
                    .into(),
            });
        }
        let mut config = Config::resolve_one(file.clone(), source.clone())?;
        config.chains = if tables.is_empty() {
            vec![Chain {
                name: "default".into(),
                hosts: Vec::new(),
                path: String::new(),
                cert: None,
                config: Arc::new(config.clone()),
            }]
        } else {
            super::chains::read(&file, &tables, &source, &config.tls, detect)?
        };
        let names: Vec<String> = config.chains.iter().map(|c| c.name.clone()).collect();
        config.keys = super::keys::load(&file.keys, &source, &names)?.map(Arc::new);
        config.cluster = super::cluster::read(&file.cluster, &origin, config.listen.port())?;
        Ok(config)
    }

    /// One chain's settings (or the whole file's, before its chains).
    pub(super) fn resolve_one(
        file: FileConfig,
        source: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let at = At(source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "command line".into()));
        let (listen, redirect_listen, metrics_listen, unix_listen, workers) =
            listeners(&file, &at)?;
        let tls = tls_mode(&file, source.as_deref(), &at)?;
        let limits = limits(&file, &at)?;
        let (flavour, nodes) = nodes(&file, &at)?;
        let local_only = listen.ip().is_loopback() && unix_listen.is_none();
        let (methods, methods_note) = methods(&file, local_only, &at)?;
        let mut file = file;
        file.admission.methods = methods;
        let hedge = hedge(&file, &at)?;
        let health = health(&file, &at)?;
        let (log_level, log_json) = logging(&file, &at)?;
        let admin = admin(&file, &at)?;
        Ok(Config {
            listen,
            workers,
            pin_workers: file.server.pin_workers,
            redirect_listen,
            metrics_listen,
            public_metrics: file.server.public_metrics,
            unix_listen,
            tls,
            limits,
            connect_timeout: Duration::from_millis(file.pool.connect_timeout_ms),
            request_timeout: Duration::from_millis(file.pool.request_timeout_ms),
            removed_grace: Duration::from_millis(file.pool.removed_grace_ms),
            keepalive_interval: Duration::from_secs(file.pool.keepalive_interval_s),
            shared: file.pool.shared,
            shared_max_subscriptions: file.pool.shared_max_subscriptions as usize,
            shared_max_connections: file.pool.shared_max_connections as usize,
            hedge,
            hedge_budget: file.pool.hedge_budget,
            hedge_reads: crate::hedge::SafeReads::new(&file.pool.hedge_methods),
            chain_id: Some(file.health.chain.to_ascii_lowercase()).filter(|c| !c.is_empty()),
            nodes,
            flavour,
            routing: file.routing,
            health,
            http: file.http,
            admission: file.admission,
            cache: file.cache,
            log_level,
            log_json,
            access_log: file.log.access,
            methods_note,
            admin,
            source,
            keys: None,
            cluster: None,
            chains: Vec::new(),
        })
    }
}

/// Where the settings come from, for errors that name it.
struct At(String);

impl At {
    fn err(&self, key: &str, message: String) -> ConfigError {
        ConfigError {
            origin: self.0.clone(),
            key: key.into(),
            message,
        }
    }
}

type Listeners = (
    std::net::SocketAddr,
    Option<std::net::SocketAddr>,
    Option<std::net::SocketAddr>,
    Option<(PathBuf, u32)>,
    usize,
);

/// `[server]`: the listeners and the worker count.
fn listeners(file: &FileConfig, at: &At) -> Result<Listeners, ConfigError> {
    let listen = file
        .server
        .listen
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            at.err(
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
            .ok_or_else(|| at.err(key, format!("`{a}` is not an address like {example}"))),
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
                    at.err(
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
        n if n > 1024 => return Err(at.err("server.workers", format!("{n} is more than 1024"))),
        n => n,
    };
    Ok((
        listen,
        redirect_listen,
        metrics_listen,
        unix_listen,
        workers,
    ))
}

/// `[tls]`: files, a self-signed certificate, or none.
fn tls_mode(
    file: &FileConfig,
    source: Option<&std::path::Path>,
    at: &At,
) -> Result<TlsMode, ConfigError> {
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
                return Err(at.err("tls.cert", "tls.key is set but tls.cert is not".into()))
            }
            (false, true) => {
                return Err(at.err("tls.key", "tls.cert is set but tls.key is not".into()))
            }
        }
    };
    Ok(tls)
}

/// `[limits]` and the timeouts that must not be 0.
fn limits(file: &FileConfig, at: &At) -> Result<Limits, ConfigError> {
    let l = &file.limits;
    if !(256..=1 << 20).contains(&l.max_head_bytes) {
        return Err(at.err(
            "limits.max_head_bytes",
            format!("{} is outside 256..=1048576", l.max_head_bytes),
        ));
    }
    if !(1..=crate::ws::handshake::HEADER_ARRAY).contains(&l.max_headers) {
        return Err(at.err(
            "limits.max_headers",
            format!(
                "{} is outside 1..={}",
                l.max_headers,
                crate::ws::handshake::HEADER_ARRAY
            ),
        ));
    }
    if l.max_frame_bytes == 0 || l.max_frame_bytes > l.max_message_bytes {
        return Err(at.err(
            "limits.max_frame_bytes",
            format!(
                "must be between 1 and limits.max_message_bytes ({})",
                l.max_message_bytes
            ),
        ));
    }
    if l.max_answer_bytes < 1 << 20 {
        return Err(at.err(
            "limits.max_answer_bytes",
            "must be at least 1048576 (a runtime's metadata is about 1 MiB)".into(),
        ));
    }
    for (key, v) in [
        ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
        ("limits.idle_timeout_s", l.idle_timeout_s),
        ("limits.close_timeout_ms", l.close_timeout_ms),
        ("limits.slow_reader_ms", l.slow_reader_ms),
        ("limits.send_timeout_ms", l.send_timeout_ms),
        ("limits.follow_pin_age_ms", l.follow_pin_age_ms),
        ("limits.follow_max_pins", l.follow_max_pins as u64),
        ("http.body_timeout_ms", file.http.body_timeout_ms),
        ("http.body_idle_timeout_ms", file.http.body_idle_timeout_ms),
        ("pool.connect_timeout_ms", file.pool.connect_timeout_ms),
        ("pool.request_timeout_ms", file.pool.request_timeout_ms),
        ("pool.keepalive_interval_s", file.pool.keepalive_interval_s),
        (
            "pool.shared_max_subscriptions",
            file.pool.shared_max_subscriptions,
        ),
        (
            "pool.shared_max_connections",
            file.pool.shared_max_connections,
        ),
    ] {
        if v == 0 {
            return Err(at.err(key, "must be greater than 0".into()));
        }
    }
    for (method, secs) in &file.cache.methods {
        let m = method.as_bytes();
        let sub = crate::jsonrpc::Sub::of(m, None) != crate::jsonrpc::Sub::None;
        if *secs > 0 && (sub || crate::jsonrpc::call::writes(m)) {
            let what = if sub { "a subscription" } else { "a write" };
            return Err(at.err(
                &format!("cache.methods.{method}"),
                format!("{what} is never cached (its answer is not the same for everyone)"),
            ));
        }
    }
    if file.cache.enabled && file.cache.max_bytes < 64 * 1024 {
        return Err(at.err(
            "cache.max_bytes",
            "must be at least 65536 (or set cache.enabled = false)".into(),
        ));
    }
    if l.max_buffered_bytes < 16 * 1024 {
        return Err(at.err("limits.max_buffered_bytes", "must be at least 16384".into()));
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
        max_answer_bytes: l.max_answer_bytes,
        max_buffered_bytes: l.max_buffered_bytes,
        slow_reader: Duration::from_millis(l.slow_reader_ms),
        send_timeout: Duration::from_millis(l.send_timeout_ms),
        follow_max_pins: l.follow_max_pins,
        follow_pin_age: Duration::from_millis(l.follow_pin_age_ms),
    };
    Ok(limits)
}

/// `routing.chain` and the nodes, with their roles, pruning and weights.
fn nodes(
    file: &FileConfig,
    at: &At,
) -> Result<(crate::route::Flavour, Vec<NodeConfig>), ConfigError> {
    let flavour = crate::route::Flavour::parse(&file.routing.chain).ok_or_else(|| {
        at.err(
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
        let mut node = parse_node_url(&n.url).map_err(|m| at.err(&format!("node[{i}].url"), m))?;
        node.role = match n.role.as_deref() {
            None | Some("pruned") | Some("full") => Role::Pruned,
            Some("archive") => Role::Archive,
            Some(other) => {
                return Err(at.err(
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
                return Err(at.err(&format!("node[{i}].weight"), "must be at least 1".into()))
            }
            Some(w) => w,
            None => 1,
        };
        nodes.push(node);
    }
    Ok((flavour, nodes))
}

/// `admission.methods` as it applies here, and the line that says so.
fn methods(file: &FileConfig, local_only: bool, at: &At) -> Result<(String, String), ConfigError> {
    let ad = &file.admission;
    if ad.rate < 0.0 || ad.burst < 0.0 {
        return Err(at.err("admission.rate", "rate and burst cannot be negative".into()));
    }
    // `auto`, as a node's `--rpc-methods auto`: everything for clients on
    // this host only, `safe` as soon as others can connect.
    let methods = match ad.methods.as_str() {
        "all" | "safe" => ad.methods.clone(),
        "auto" if local_only => "all".into(),
        "auto" => "safe".into(),
        other => {
            return Err(at.err(
                "admission.methods",
                format!("`{other}` is not one of auto, all, safe"),
            ))
        }
    };
    let methods_note = format!(
        "methods: {methods}{}",
        match (ad.methods.as_str(), local_only) {
            ("auto", true) => " (auto: listening on loopback only)",
            ("auto", false) =>
                " (auto: others can connect; admission.methods = \"all\" allows every method)",
            ("all", false) => " (unsafe methods are open to everyone who can connect)",
            _ => "",
        }
    );
    Ok((methods, methods_note))
}

/// `pool.hedge` and `pool.hedge_budget`.
fn hedge(file: &FileConfig, at: &At) -> Result<crate::hedge::Hedge, ConfigError> {
    let hedge = crate::hedge::Hedge::parse(
        &file.pool.hedge,
        Duration::from_millis(file.pool.hedge_min_ms),
    )
    .ok_or_else(|| {
        at.err(
            "pool.hedge",
            format!("`{}` is not auto, off, or milliseconds", file.pool.hedge),
        )
    })?;
    if !(0.0..=1.0).contains(&file.pool.hedge_budget) {
        return Err(at.err(
            "pool.hedge_budget",
            "must be between 0 and 1 (a fraction of the reads)".into(),
        ));
    }
    Ok(hedge)
}

/// `[health]`.
fn health(file: &FileConfig, at: &At) -> Result<super::HealthConfig, ConfigError> {
    let hs = &file.health;
    if hs.interval_ms == 0 || hs.timeout_ms == 0 {
        return Err(at.err(
            "health.interval_ms",
            "interval and timeout must be greater than 0".into(),
        ));
    }
    let mode = super::ProbeMode::parse(&hs.probe).ok_or_else(|| {
        at.err(
            "health.probe",
            format!("`{}` is not one of rpc, connect, off", hs.probe),
        )
    })?;
    let health = super::HealthConfig {
        mode,
        interval: Duration::from_millis(hs.interval_ms),
        timeout: Duration::from_millis(hs.timeout_ms),
        fall: hs.fall.max(1),
        rise: hs.rise.max(1),
        max_lag: hs.max_lag,
    };
    Ok(health)
}

/// `[log]`: the level and whether lines are JSON.
fn logging(file: &FileConfig, at: &At) -> Result<(crate::log::Level, bool), ConfigError> {
    let log_level = crate::log::Level::parse(&file.log.level).ok_or_else(|| {
        at.err(
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
        other => return Err(at.err("log.format", format!("`{other}` is not one of text, json"))),
    };
    Ok((log_level, log_json))
}

/// `server.admin_token_file` (read now: a token that cannot be read stops
/// the configuration, naming the key) and `server.admin_hosts`.
fn admin(file: &FileConfig, at: &At) -> Result<AdminConfig, ConfigError> {
    let path = &file.server.admin_token_file;
    let token = match path.as_str() {
        "" => None,
        p => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| at.err("server.admin_token_file", format!("{p}: {e}")))?;
            let token = text.trim().to_string();
            if token.len() < 16 {
                return Err(at.err(
                    "server.admin_token_file",
                    format!("{p}: the token must be at least 16 characters"),
                ));
            }
            Some(token)
        }
    };
    Ok(AdminConfig {
        token,
        hosts: file.server.admin_hosts.clone(),
    })
}
