//! `ringway-load`: load generator and mock node for ringway (and for any
//! WebSocket JSON-RPC endpoint). Thread-per-core on monoio, like the gateway.

mod load;
mod node;
mod stats;
mod ws;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line: every mode's flags (help and errors are clap's).
fn cli() -> Command {
    let value = |name: &'static str, v: &'static str, help: &'static str| {
        Arg::new(name).long(name).value_name(v).help(help)
    };
    let flag = |name: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .action(ArgAction::SetTrue)
            .help(help)
    };
    let url = || {
        Arg::new("url")
            .required(true)
            .value_name("URL")
            .help("ws://host:port/path or wss://host:port/path")
    };
    let client = || {
        [
            value("workers", "N", "client threads (default: one per core)"),
            value("ca", "FILE", "trust this CA (PEM) for wss://"),
            flag("insecure", "do not verify the server's certificate"),
            value("bind", "IP", "connect from this local address (any 127.x.y.z on loopback)"),
            value("keys", "FILE", "connections take these API keys in turn (X-Api-Key): a ringway keys file, or one key per line"),
            flag("json", "the final figures as JSON"),
            flag("quiet", "no progress on stderr"),
        ]
    };
    let run = || {
        [
            value("connections", "N", "connections (default 100)"),
            value("duration", "SECONDS", "how long (default 10)"),
            value("depth", "N", "closed loop: requests each connection keeps in flight (default 1)"),
            value("rate", "MSGS_PER_S", "open loop: total messages/s, latency from the intended send time"),
            flag("separate", "each request in a write of its own (one TLS record and send each, as a browser's ws.send)"),
            value("messages", "N", "stop after this many messages"),
            value("method", "NAME[:WEIGHT]", "a method to call (params []); repeat to mix (default system_health)")
                .action(ArgAction::Append),
            value("mix", "FILE", "lines of `WEIGHT METHOD PARAMS_JSON`"),
        ]
    };
    Command::new("ringway-load")
        .version(env!("CARGO_PKG_VERSION"))
        .about("ringway-load: load generator and mock JSON-RPC node")
        .after_help(
            "Progress goes to stderr once a second; the final table (or JSON with --json) to stdout.",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .args_override_self(true)
        .subcommand(
            Command::new("run")
                .about("N connections, closed loop (--depth in flight each) or open loop (--rate)")
                .arg(url())
                .args(run())
                .args(client()),
        )
        .subcommand(
            Command::new("flood")
                .about("`run` for abuse tests: open loop from one client address (--bind); -32005 answers counted as rate_limited")
                .arg(url())
                .args(run())
                .args(client()),
        )
        .subcommand(
            Command::new("connect")
                .about("connection setup rate and latency (TCP + TLS + upgrade)")
                .arg(url())
                .arg(value("rate", "CONNS_PER_S", "new connections per second"))
                .arg(value("count", "N", "connections in all"))
                .arg(value("concurrency", "N", "setups at once (default 50)"))
                .arg(flag("hold", "keep every connection open, idle, until --duration ends (memory tests)"))
                .arg(value("duration", "SECONDS", "how long (default 10)"))
                .args(client()),
        )
        .subcommand(
            Command::new("subscribe")
                .about("N subscriptions: notification latency (from the node's timestamp) and gaps")
                .arg(url())
                .arg(value("connections", "N", "subscriptions (default 100)"))
                .arg(value("duration", "SECONDS", "how long (default 20)"))
                .arg(value("method", "NAME", "the subscribe method (default chain_subscribeNewHeads)"))
                .args(client()),
        )
        .subcommand(
            Command::new("startup")
                .about("N clients start at once as Polkadot-JS does (its start-up calls, metadata, subscriptions) until the first head")
                .arg(url())
                .arg(value("clients", "N", "clients (default 10)"))
                .args(client()),
        )
        .subcommand(
            Command::new("node")
                .about("a mock Substrate-like node: JSON-RPC over WebSocket and HTTP on one port")
                .arg(value("listen", "ADDR", "default 127.0.0.1:9944"))
                .arg(value("block-ms", "MS", "a block this often (default 6000)"))
                .arg(flag("archive", "keep all state (default: --pruning 256)"))
                .arg(value("pruning", "BLOCKS", "blocks of state kept"))
                .arg(value("delay-ms", "MS", "answer after this long"))
                .arg(value("delay-every", "N", "delay every Nth answer (default 1)"))
                .arg(value("storage-bytes", "N", "bytes of a storage value"))
                .arg(value("metadata-bytes", "N", "bytes of the metadata"))
                .arg(value("workers", "N", "threads (default 1)"))
                .arg(value("start-height", "N", "the first block's number"))
                .arg(flag("report", "print the calls it got from sessions (not health probes) at exit")),
        )
        .subcommand(
            Command::new("compare")
                .about("the same `run` against each target in turn (A B A B ...): medians and ratios")
                .arg(
                    value("target", "NAME=URL", "a target; two or more")
                        .action(ArgAction::Append)
                        .required(true),
                )
                .arg(value("rounds", "N", "rounds (default 3)"))
                .args(run())
                .args(client()),
        )
}

/// A mode's parsed flags, read by name (each mode keeps its defaults).
pub struct Args {
    m: ArgMatches,
}

impl Args {
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.m.try_get_one::<bool>(name), Ok(Some(true)))
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        match self.m.try_get_many::<String>(name) {
            Ok(Some(v)) => v.cloned().collect(),
            _ => Vec::new(),
        }
    }

    pub fn str(&self, name: &str) -> Option<String> {
        self.m.try_get_one::<String>(name).ok().flatten().cloned()
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.str(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: `{v}` is not a number")),
        }
    }

    pub fn secs(&self, name: &str, default: f64) -> Result<Duration, String> {
        let v: f64 = self.num(name, default)?;
        if !(0.0..=86_400.0).contains(&v) {
            return Err(format!("--{name}: {v} is out of range"));
        }
        Ok(Duration::from_secs_f64(v))
    }

    /// The URL, or an error naming the mode.
    pub fn url(&self, mode: &str) -> Result<String, String> {
        self.str("url")
            .ok_or_else(|| format!("{mode}: a ws:// or wss:// URL is needed"))
    }
}

/// Run a future on a fresh monoio runtime on this thread (io_uring, else epoll).
pub fn runtime<F, Fut>(f: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    // The gateway's runtime: io_uring with the single-thread flags (a client
    // that costs less leaves more of a shared machine to what it measures).
    ringway::runtime::driver::block_on(monoio::utils::detect_uring(), f).expect("runtime");
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    let (mode, m) = matches.subcommand().expect("a mode is required");
    let (mode, args) = (mode.to_string(), Args { m: m.clone() });
    let result = match mode.as_str() {
        "run" => load::run(&args),
        "flood" => load::run(&args),
        "connect" => load::connect(&args),
        "subscribe" => load::subscribe(&args),
        "startup" => load::startup(&args),
        "compare" => load::compare(&args),
        "node" => node_main(&args),
        other => Err(format!(
            "unknown mode `{other}` (run, connect, subscribe, node, compare)"
        )),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ringway-load: {e}");
            ExitCode::from(2)
        }
    }
}

fn node_main(args: &Args) -> Result<u8, String> {
    let defaults = node::NodeConfig::default();
    let cfg = node::NodeConfig {
        listen: args.str("listen").unwrap_or(defaults.listen),
        workers: args.num("workers", 1)?,
        block_ms: args.num("block-ms", defaults.block_ms)?.max(1),
        pruning: if args.flag("archive") {
            None
        } else {
            Some(args.num("pruning", 256)?)
        },
        delay: Duration::from_millis(args.num("delay-ms", 0)?),
        delay_every: args.num("delay-every", 1)?,
        storage_bytes: args.num("storage-bytes", defaults.storage_bytes)?,
        metadata_bytes: args.num("metadata-bytes", defaults.metadata_bytes)?,
        report: args.flag("report"),
        start_height: args.num("start-height", defaults.start_height)?,
    };
    node::run(cfg)?;
    Ok(0)
}
