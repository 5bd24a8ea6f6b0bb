//! `ringway-load`: load generator and mock node for ringway (and for any
//! WebSocket JSON-RPC endpoint). Thread-per-core on monoio, like the gateway.

mod load;
mod node;
mod stats;
mod ws;

use std::collections::HashMap;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
ringway-load: load generator and mock JSON-RPC node

USAGE:
  ringway-load run URL [--connections 100] [--duration 10] [--depth 1 | --rate MSGS_PER_S]
                       [--separate] [--messages N] [--method NAME]... [--mix FILE] [--workers N]
                       [--ca FILE | --insecure] [--bind IP] [--keys FILE] [--json] [--quiet]
      N connections, closed loop (each keeps --depth requests in flight) or open
      loop (--rate total messages/s, latency from the intended send time).
      --separate: each request leaves in a write of its own (one TLS record and
      one send each, as a browser's ws.send does), not with the others due.
      --method NAME[:WEIGHT] picks methods (params []); --mix FILE has lines
      'WEIGHT METHOD PARAMS_JSON'. Default: system_health.
      --keys FILE: connections take the API keys of FILE in turn (X-Api-Key):
      ringway's keys file (its `key = ` lines) or one key per line.
  ringway-load flood URL --rate MSGS_PER_S [--connections 10] [--bind 127.0.0.2] [run options]
      `run` for abuse tests: open loop from one client address (--bind picks the
      local address, any 127.x.y.z on loopback); rate-limited answers (-32005)
      are counted as rate_limited, apart from other errors.
  ringway-load connect URL [--rate CONNS_PER_S] [--count N] [--concurrency 50]
                       [--hold] [--duration 10] [--workers N] [--ca FILE | --insecure] [--json]
      Connection setup rate and latency (TCP + TLS + upgrade). --hold keeps every
      connection open, idle, until --duration ends (memory tests).
  ringway-load subscribe URL [--connections 100] [--duration 20] [--method chain_subscribeNewHeads]
      N subscriptions; notification latency (from the node's timestamp) and gaps.
  ringway-load startup URL [--clients 10] [--workers N] [--ca FILE | --insecure] [--json]
      N clients start at once as Polkadot-JS does: its start-up calls in one
      burst (metadata included), subscriptions to new heads and runtime
      version, until the first head. Time to ready per client.
  ringway-load node [--listen 127.0.0.1:9944] [--block-ms 6000] [--archive | --pruning 256]
                    [--delay-ms 0] [--delay-every 1] [--storage-bytes 32] [--metadata-bytes 307200] [--workers 1] [--report]
      A mock Substrate-like node: JSON-RPC over WebSocket and HTTP on one port.
  ringway-load compare --target NAME=URL --target NAME=URL [--rounds 3] [run options]
      The same `run` against each target in turn (A B A B ...), medians and ratios.

URLs are ws://host:port/path or wss://host:port/path. Progress goes to stderr
once a second; the final table (or JSON with --json) to stdout.
";

/// Parsed `--key value` options (repeatable) and positional arguments.
pub struct Args {
    pub positional: Vec<String>,
    opts: HashMap<String, Vec<String>>,
}

const FLAGS: &[&str] = &[
    "json", "quiet", "insecure", "hold", "archive", "help", "report",
];

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut positional = Vec::new();
        let mut opts: HashMap<String, Vec<String>> = HashMap::new();
        let mut it = args.peekable();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let (name, inline) = match name.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (name.to_string(), None),
                };
                if FLAGS.contains(&name.as_str()) {
                    opts.entry(name).or_default().push("true".into());
                } else {
                    let v = inline
                        .or_else(|| it.next())
                        .ok_or_else(|| format!("--{name} needs a value"))?;
                    opts.entry(name).or_default().push(v);
                }
            } else if a == "-h" {
                opts.entry("help".into()).or_default().push("true".into());
            } else {
                positional.push(a);
            }
        }
        Ok(Args { positional, opts })
    }

    pub fn flag(&self, name: &str) -> bool {
        self.opts.contains_key(name)
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.opts.get(name).cloned().unwrap_or_default()
    }

    pub fn str(&self, name: &str) -> Option<String> {
        self.opts.get(name).and_then(|v| v.last().cloned())
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

    /// The positional URL, or an error naming the mode.
    pub fn url(&self, mode: &str) -> Result<String, String> {
        self.positional
            .first()
            .cloned()
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
    let mut argv = std::env::args().skip(1);
    let Some(mode) = argv.next() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let args = match Args::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ringway-load: {e}");
            return ExitCode::from(2);
        }
    };
    if args.flag("help") || mode == "help" || mode == "--help" || mode == "-h" {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
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
