//! The `ringway` command: flags, config file, start-up checks, workers.

use std::path::PathBuf;
use std::process::ExitCode;

use ringway::config::{parse_node_url, Config, FileConfig, NodeAddr, TlsMode};
use ringway::{info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `--help` says after the flags.
const AFTER_HELP: &str = "\
With no flags and no file: listen on 127.0.0.1:8443 with a self-signed
certificate, in front of the node at ws://127.0.0.1:9944. Flags override
the file; every key of the file is in ringway.example.toml.

Signals:
  SIGHUP           reload the configuration and certificate (like nginx -s reload):
                   new connections get it, open sessions go on (those on a removed
                   node close 1001 after pool.removed_grace_ms); a file with an
                   error is refused, named in the log, and the old one stays
  SIGTERM, SIGINT  stop accepting; answers in flight go out (up to 5 s), then
                   clients get close 1001 and the process exits; twice: at once";

/// ringway: WSS gateway for JSON-RPC node pools.
#[derive(clap::Parser, Clone)]
#[command(name = "ringway", version, after_help = AFTER_HELP, args_override_self = true)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config (every key: ringway.example.toml)
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration (and the cluster's Redis permissions) and exit
    #[arg(long)]
    check: bool,
    /// Address to listen on (server.listen)
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// PEM certificate chain, e.g. fullchain.pem (tls.cert)
    #[arg(long, value_name = "FILE")]
    cert: Option<String>,
    /// PEM private key, e.g. privkey.pem (tls.key)
    #[arg(long, value_name = "FILE")]
    key: Option<String>,
    /// Serve ws:// without TLS, behind another proxy (tls.enabled = false)
    #[arg(long)]
    plaintext: bool,
    /// A pruned (or full) node, ws://host:port/path or unix:/path; repeat for a pool
    #[arg(long = "upstream", value_name = "URL")]
    upstreams: Vec<String>,
    /// An archive node; repeat for more
    #[arg(long = "archive", value_name = "URL")]
    archives: Vec<String>,
    /// Method tables and health probes: substrate (default) or ethereum (routing.chain)
    #[arg(long, value_name = "NAME")]
    chain: Option<String>,
    /// How nodes are probed (health.probe): rpc, connect (the upgrade only), off
    #[arg(long, value_name = "MODE", value_parser = ["rpc", "connect", "off"])]
    health_probe: Option<String>,
    /// Worker threads (default: one per core)
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Do not pin workers to cores (server.pin_workers = false)
    #[arg(long)]
    no_pin: bool,
    /// Sessions share one connection per node per core (pool.shared = true)
    #[arg(long)]
    shared: bool,
    /// Log level (log.level)
    #[arg(long, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug"])]
    log_level: Option<String>,
    /// text, or json: one object per line (log.format)
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// A line per WebSocket session and per HTTP request (log.access)
    #[arg(long)]
    access_log: bool,
}

#[derive(clap::Subcommand, Clone)]
enum Command {
    /// An nginx configuration (its includes, every server block) as a ringway
    /// config, on stdout; what is not carried over, on stderr
    ImportNginx {
        /// Carry over locations whose access rules (allow, deny, auth_basic)
        /// would otherwise stop the import
        #[arg(long)]
        allow_open: bool,
        /// nginx.conf, or a file of server blocks
        file: PathBuf,
    },
    /// Shell completions for ringway, on stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The manual page (roff), on stdout: ringway man > ringway.1
    Man,
}

fn load(flags: &Flags) -> Result<Config, String> {
    let mut file = match &flags.config {
        Some(path) => FileConfig::load(path).map_err(|e| format!("config error: {e}"))?,
        None => FileConfig::default(),
    };
    if let Some(v) = &flags.listen {
        file.server.listen = v.clone();
    }
    if let Some(v) = &flags.cert {
        file.tls.cert = v.clone();
    }
    if let Some(v) = &flags.key {
        file.tls.key = v.clone();
    }
    if flags.plaintext {
        file.tls.enabled = false;
    }
    if let Some(v) = flags.workers {
        file.server.workers = v;
    }
    if flags.no_pin {
        file.server.pin_workers = false;
    }
    if flags.shared {
        file.pool.shared = true;
    }
    if let Some(v) = &flags.log_level {
        file.log.level = v.clone();
    }
    if let Some(v) = &flags.log_format {
        file.log.format = v.clone();
    }
    if flags.access_log {
        file.log.access = true;
    }
    if let Some(c) = &flags.chain {
        file.routing.chain = c.clone();
    }
    if let Some(p) = &flags.health_probe {
        file.health.probe = p.clone();
    }
    if !flags.upstreams.is_empty() || !flags.archives.is_empty() {
        let mut nodes = Vec::new();
        for (urls, role, flag) in [
            (&flags.upstreams, None, "--upstream"),
            (&flags.archives, Some("archive"), "--archive"),
        ] {
            for u in urls {
                parse_node_url(u).map_err(|e| format!("config error: flag {flag}: {e}"))?;
                nodes.push(ringway::config::NodeSection {
                    url: u.clone(),
                    role: role.map(String::from),
                    pruning: None,
                    weight: None,
                });
            }
        }
        file.node = nodes;
    }
    // A chain whose kind the file does not give: its nodes are asked.
    let detect = |nodes: &[ringway::config::NodeConfig]| {
        ringway::detect::flavour(nodes, std::time::Duration::from_secs(5))
    };
    Config::resolve_detecting(file, flags.config.clone(), &detect)
        .map_err(|e| format!("config error: {e}"))
}

/// Say plainly at start when a node is not there, rather than at the first client.
fn probe_nodes(config: &Config) {
    for node in config.chains.iter().flat_map(|c| &c.config.nodes) {
        let reachable = match &node.addr {
            NodeAddr::Tcp(addrs) => addrs.iter().any(|a| {
                std::net::TcpStream::connect_timeout(a, std::time::Duration::from_secs(1)).is_ok()
            }),
            NodeAddr::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
        };
        if !reachable {
            warn!(
                "node {} is not reachable now; clients will get 502 until it is up (start the node, or pass --upstream URL)",
                node.url
            );
        }
    }
}

/// `ringway import-nginx FILE`: the TOML on stdout, what was not carried
/// over (and why) on stderr.
fn import_nginx(path: &std::path::Path, allow_open: bool) -> ExitCode {
    match ringway::config::nginx::import_file(path, allow_open) {
        Ok(i) => {
            print!("{}", i.toml);
            for n in &i.notes {
                eprintln!("not carried over: {n}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringway: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    use clap::{CommandFactory, Parser};
    let flags = Flags::parse();
    match &flags.command {
        Some(Command::ImportNginx { allow_open, file }) => return import_nginx(file, *allow_open),
        Some(Command::Completions { shell }) => {
            let mut cmd = Flags::command();
            clap_complete::generate(*shell, &mut cmd, "ringway", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man) => {
            let page = clap_mangen::Man::new(Flags::command());
            return match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringway: {e}");
                    ExitCode::from(1)
                }
            };
        }
        None => {}
    }
    let config = match load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringway: {e}");
            return ExitCode::from(2);
        }
    };
    ringway::log::set_level(config.log_level);
    ringway::log::set_json(config.log_json);
    ringway::log::install_panic_hook();
    // Before any thread starts, so that every thread inherits the mask and
    // only the signal thread takes them.
    let signals = ringway::runtime::signals::block();
    if flags.check {
        if let TlsMode::Files { cert, key } = &config.tls {
            let loaded = ringway::tls::load_or_generate(&config.tls).and_then(|ck| {
                ck.map(|ck| ringway::tls::server_config(&ck, &config.chains).map(|_| ()))
                    .unwrap_or(Ok(()))
            });
            if let Err(e) = loaded {
                let from = config
                    .source
                    .as_ref()
                    .map_or("flags".to_string(), |p| p.display().to_string());
                eprintln!(
                    "ringway: config error in {from}: {e} ({} / {})",
                    cert.display(),
                    key.display()
                );
                return ExitCode::from(2);
            }
        }
        if let Err(e) = ringway::tls::check_named(&config.chains) {
            let from = config
                .source
                .as_ref()
                .map_or("flags".to_string(), |p| p.display().to_string());
            eprintln!("ringway: config error in {from}: {e}");
            return ExitCode::from(2);
        }
        // What the cluster needs of its Redis user, tried.
        if let Some(c) = &config.cluster {
            match ringway::cluster::check::missing(c) {
                Err(e) => eprintln!(
                    "ringway: warning: cannot reach the cluster's Redis ({e}): its permissions are not checked"
                ),
                Ok(missing) => {
                    for m in &missing {
                        let kind = if m.needed { "error" } else { "warning" };
                        eprintln!("ringway: {kind}: cluster.redis: {m}");
                    }
                    if missing.iter().any(|m| m.needed) {
                        return ExitCode::from(2);
                    }
                }
            }
        }
        println!(
            "ringway: configuration OK ({})",
            config
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "flags and defaults".into())
        );
        return ExitCode::SUCCESS;
    }

    let from = config
        .source
        .as_ref()
        .map_or("flags".to_string(), |p| p.display().to_string());
    let tls = match ringway::tls::load_or_generate(&config.tls) {
        Ok(ck) => ck,
        Err(e) => {
            eprintln!("ringway: config error in {from}: {e}");
            return ExitCode::from(2);
        }
    };
    let server_config = match tls
        .as_ref()
        .map(|ck| ringway::tls::server_config(ck, &config.chains))
        .transpose()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringway: config error: tls: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = tls.as_ref().and_then(|t| t.self_signed_path.as_ref()) {
        println!(
            "ringway: no certificate configured; made a self-signed one: {}",
            path.display()
        );
    }
    probe_nodes(&config);
    if config.methods_note.contains("unsafe") {
        warn!("{}", config.methods_note);
    } else {
        info!("{}", config.methods_note);
    }
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let certs = server_config.as_ref().map(|t| t.certs.clone());
    let unix = config.unix_listen.clone();
    let workers = config.workers;
    let nodes: Vec<String> = config
        .chains
        .iter()
        .flat_map(|c| {
            let named = config.chains.len() > 1;
            c.config.nodes.iter().map(move |n| match named {
                true => format!("{} (chain {})", n.url, c.name),
                false => n.url.clone(),
            })
        })
        .collect();
    let running = match ringway::runtime::start(config, server_config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringway: cannot listen: {e}");
            return ExitCode::from(1);
        }
    };
    if !running.io_uring {
        warn!("io_uring is not available (Linux 5.11+ needed, or it is disabled); using the epoll driver");
    }
    if let Some(a) = running.redirect_addr {
        println!("ringway: redirecting http://{a} to https");
    }
    if let Some(a) = running.metrics_addr {
        println!("ringway: metrics on http://{a}/metrics and http://{a}/health");
    }
    if let Some((path, _)) = &unix {
        println!("ringway: also serving ws+unix:{}", path.display());
    }
    println!(
        "ringway: listening on {scheme}://{} ({workers} workers, {}) -> {}",
        running.local_addr,
        if running.io_uring {
            "io_uring"
        } else {
            "epoll"
        },
        nodes.join(", ")
    );
    let reload: ringway::runtime::signals::Loader = Box::new(move || load(&flags));
    ringway::runtime::signals::spawn(signals, certs, running.generations, reload, running.stopper);
    info!("ready");
    for w in running.workers {
        let _ = w.join();
    }
    ExitCode::SUCCESS
}
