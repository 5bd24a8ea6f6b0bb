//! Prometheus metrics: the text of `GET /metrics` ([`render`]), from
//! per-core counters summed on scrape and per-node state ([`crate::stats`]
//! says which is kept where, and why that costs the hot path nothing but a
//! plain add per read).

pub use crate::stats::{
    calls, count, install, read, request, Histogram, Outcome, Registry, Source,
};

/// What `/health` and `/metrics` say about reloads.
#[derive(Debug, Clone, Copy)]
pub struct Reloads {
    pub generation: u64,
    pub ok: u64,
    pub failed: u64,
    pub last_failed: bool,
}

/// What a scrape reads: every core's counters, the admission totals, how
/// reloads went, and the current generation's node view. The caller (the
/// endpoint, above the worker state) gathers it; this room reads no
/// worker.
pub struct Scrape<'a> {
    pub stats: &'a Registry,
    pub io_uring: bool,
    pub admission: &'a crate::policy::SharedCounts,
    pub reloads: Reloads,
    /// Each chain: its name, its node health view and its nodes.
    pub chains: Vec<(&'a str, &'a Health, &'a [NodeConfig])>,
    /// Each API key's usage in its current period, by name.
    pub keys: Vec<(String, std::sync::Arc<crate::policy::usage::Usage>)>,
    /// `[cluster]`: Redis answering, live instances, failed syncs.
    pub cluster: Option<ClusterScrape>,
}

/// What the cluster's threads report.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterScrape {
    pub up: bool,
    pub instances: u32,
    pub failures: u64,
    /// Syncs that succeeded, and the time they took in all (µs).
    pub syncs: (u64, u64),
    /// The second-level cache's lookups (hit, miss, waited, failed) and
    /// stores, if it is on.
    pub cache: Option<([u64; 4], u64)>,
}

use crate::config::NodeConfig;
use crate::health::Health;

/// Every node of every chain: (chain, its health view, index, node).
fn each_node<'a>(
    scrape: &'a Scrape<'a>,
) -> impl Iterator<Item = (&'a str, &'a Health, usize, &'a NodeConfig)> + 'a {
    scrape
        .chains
        .iter()
        .flat_map(|&(chain, h, nodes)| nodes.iter().enumerate().map(move |(i, n)| (chain, h, i, n)))
}

/// The Prometheus text being written: each family with its HELP and TYPE.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        use std::fmt::Write;
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family with one sample and no labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Per API key (by name; counters start again with each quota period, as
/// a Prometheus counter may).
fn render_keys(t: &mut Text, keys: &[(String, std::sync::Arc<crate::policy::usage::Usage>)]) {
    if keys.is_empty() {
        return;
    }
    let counts: Vec<_> = keys.iter().map(|(n, u)| (n.as_str(), u.counts())).collect();
    type Get = fn(&crate::policy::usage::Counts) -> u64;
    let families: [(&str, &str, Get); 3] = [
        (
            "ringway_key_calls_total",
            "Calls admitted, per API key, this quota period.",
            |c| c.calls,
        ),
        (
            "ringway_key_credits_total",
            "Credits used (calls and notifications), per API key, this quota period.",
            |c| c.credits,
        ),
        (
            "ringway_key_notifications_total",
            "Notifications delivered, per API key, this quota period.",
            |c| c.notifications,
        ),
    ];
    for (name, help, get) in families {
        t.family(name, "counter", help);
        for (key, c) in &counts {
            t.sample(name, &[("key", key)], get(c));
        }
    }
    t.family(
        "ringway_key_bytes_total",
        "counter",
        "Bytes from and to the clients of each API key, this quota period.",
    );
    for (key, c) in &counts {
        t.sample(
            "ringway_key_bytes_total",
            &[("key", key), ("direction", "in")],
            c.bytes_in,
        );
        t.sample(
            "ringway_key_bytes_total",
            &[("key", key), ("direction", "out")],
            c.bytes_out,
        );
    }
    t.family(
        "ringway_key_refusals_total",
        "counter",
        "Requests refused, per API key and reason, this quota period.",
    );
    for (key, c) in &counts {
        for (reason, n) in &c.refused {
            t.sample(
                "ringway_key_refusals_total",
                &[("key", key), ("reason", reason)],
                n,
            );
        }
    }
    t.family(
        "ringway_key_sessions",
        "gauge",
        "Open connections per API key.",
    );
    for (key, u) in keys {
        t.sample(
            "ringway_key_sessions",
            &[("key", key)],
            u.sessions.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
}

/// `GET /metrics`: Prometheus text format, every family with HELP and
/// TYPE, label sets bounded (methods, statuses and close codes from fixed
/// tables; nodes from the configuration). Per-core counters are summed
/// here; per-node ones come from the current generation's health view.
pub fn render(scrape: &Scrape<'_>, full: bool) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let shared = scrape.admission;
    let sums = scrape.stats.sum();
    let mut t = Text(String::with_capacity(8192));
    t.family(
        "ringway_info",
        "gauge",
        "The running gateway: its version and io driver.",
    );
    t.sample(
        "ringway_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("driver", if scrape.io_uring { "io_uring" } else { "epoll" }),
        ],
        1,
    );
    t.single(
        "ringway_connections",
        "gauge",
        "Open client connections.",
        shared.connections.load(Relaxed),
    );

    sessions(&mut t, scrape, &sums, full);
    calls_and_cache(&mut t, &sums);
    latency(&mut t, scrape, full);
    http(&mut t, &sums, shared);
    render_keys(&mut t, &scrape.keys);
    cluster(&mut t, scrape);
    t.single(
        "ringway_unmatched_answers_total",
        "counter",
        "Node answers on shared connections that matched no request in flight.",
        shared.unmatched_answers.load(Relaxed),
    );
    nodes(&mut t, scrape, full);
    t.0
}

/// A node's label: its url in full (the operator's listener), else its public name.
fn label(n: &crate::config::NodeConfig, full: bool) -> String {
    if full {
        n.url.clone()
    } else {
        n.public_name()
    }
}

/// Sessions by node and mode; messages and bytes by where they came from.
fn sessions(t: &mut Text, scrape: &Scrape<'_>, sums: &crate::stats::Sums, full: bool) {
    for (name, kind, help, open) in [
        (
            "ringway_sessions",
            "gauge",
            "WebSocket sessions open, by node and mode (a routed session counts on its archive node too once it uses one).",
            true,
        ),
        (
            "ringway_sessions_total",
            "counter",
            "WebSocket sessions started, by node and mode.",
            false,
        ),
    ] {
        t.family(name, kind, help);
        for (chain, h, i, n) in each_node(scrape) {
            let url = label(n, full);
            for (m, mode) in ["pinned", "shared"].iter().enumerate() {
                let (started, ended) = h.sessions(i)[m];
                let value = if open { started.saturating_sub(ended) } else { started };
                let labels = [
                    ("chain", chain),
                    ("url", url.as_str()),
                    ("role", n.role.name()),
                    ("mode", mode),
                ];
                t.sample(name, &labels, value);
            }
        }
    }
    for (name, help, values) in [
        (
            "ringway_messages_total",
            "WebSocket data messages read, by where they came from (client or node).",
            sums.messages,
        ),
        (
            "ringway_bytes_total",
            "Bytes read from WebSocket sessions (after TLS), by where they came from.",
            sums.bytes,
        ),
    ] {
        t.family(name, "counter", help);
        for source in Source::ALL {
            t.sample(name, &[("from", source.name())], values[source as usize]);
        }
    }
}

/// Calls by method and outcome, the cache, merged subscriptions.
fn calls_and_cache(t: &mut Text, sums: &crate::stats::Sums) {
    t.family(
        "ringway_calls_total",
        "counter",
        "JSON-RPC calls (batch elements each), by method (the built-in table, else other) and outcome: forwarded to a node, refused by admission, cached (answered from the cache), joined (answered by an identical call already on its way).",
    );
    let names = crate::stats::chain_names();
    let chain_name = |slot: &u8| names.get(*slot as usize).map_or("other", String::as_str);
    for (slot, m, outcome, n) in &sums.calls {
        let method = crate::stats::METHODS.get(*m).copied().unwrap_or("other");
        t.sample(
            "ringway_calls_total",
            &[
                ("chain", chain_name(slot)),
                ("method", method),
                ("outcome", outcome.name()),
            ],
            n,
        );
    }
    for (i, name, kind, help) in [
        (
            0,
            "ringway_cache_hits_total",
            "counter",
            "Requests answered from the response cache, by chain.",
        ),
        (
            1,
            "ringway_cache_misses_total",
            "counter",
            "Cacheable requests the cache had no answer for, by chain.",
        ),
        (
            2,
            "ringway_cache_evictions_total",
            "counter",
            "Answers dropped from the cache to stay within cache.max_bytes, by chain.",
        ),
        (
            3,
            "ringway_cache_bytes",
            "gauge",
            "Bytes the response cache holds, over all cores, by chain.",
        ),
    ] {
        t.family(name, kind, help);
        for (slot, values) in &sums.cache {
            t.sample(name, &[("chain", chain_name(slot))], values[i]);
        }
    }
    let merged = sums.merged;
    for (name, kind, help, value) in [
        (
            "ringway_merged_subscriptions",
            "gauge",
            "Node subscriptions that carry a stream to several sessions (new heads, runtime version, ...).",
            merged[0],
        ),
        (
            "ringway_merged_subscribers",
            "gauge",
            "Client subscriptions served by merged node subscriptions.",
            merged[1],
        ),
        (
            "ringway_merged_notifications_total",
            "counter",
            "Notifications received on merged node subscriptions.",
            merged[2],
        ),
        (
            "ringway_merged_deliveries_total",
            "counter",
            "Copies of those notifications delivered to clients (the fan-out).",
            merged[3],
        ),
        (
            "ringway_follows",
            "gauge",
            "Node chainHead_v1_follow subscriptions, one per node per core, each carrying several client follows.",
            sums.follows[0],
        ),
        (
            "ringway_follow_clients",
            "gauge",
            "Client chainHead_v1_follow subscriptions served by the node follows.",
            sums.follows[1],
        ),
        (
            "ringway_follow_pinned_blocks",
            "gauge",
            "Blocks the node follows hold pinned at their nodes (for the view and for clients).",
            sums.follows[2],
        ),
        (
            "ringway_follow_stopped_total",
            "counter",
            "Client follows stopped alone for holding too many or too old pins.",
            sums.follows[3],
        ),
    ] {
        t.single(name, kind, help, value);
    }
}

/// How long nodes take to answer, as histograms.
fn latency(t: &mut Text, scrape: &Scrape<'_>, full: bool) {
    t.family(
        "ringway_node_response_seconds",
        "histogram",
        "How long nodes take to answer: health probes, and JSON-RPC requests over HTTP (WebSocket answers are not timed one by one).",
    );
    for (chain, h, i, n) in each_node(scrape) {
        let url = label(n, full);
        for (on, measured) in [
            (crate::health::Timed::Probe, "probe"),
            (crate::health::Timed::Http, "http"),
        ] {
            let (counts, sum) = h.latency(i, on).snapshot();
            let base = [
                ("chain", chain),
                ("url", url.as_str()),
                ("role", n.role.name()),
                ("measured", measured),
            ];
            for (b, c) in counts.iter().enumerate() {
                let le = crate::stats::LATENCY_BOUNDS
                    .get(b)
                    .map_or("+Inf".to_string(), |v| v.to_string());
                let mut labels = base.to_vec();
                labels.push(("le", &le));
                t.sample("ringway_node_response_seconds_bucket", &labels, c);
            }
            t.sample("ringway_node_response_seconds_sum", &base, sum);
            t.sample(
                "ringway_node_response_seconds_count",
                &base,
                counts.last().copied().unwrap_or(0),
            );
        }
    }
}

/// TLS handshakes, HTTP bodies cut and responses, close codes, refusals.
fn http(t: &mut Text, sums: &crate::stats::Sums, shared: &crate::policy::SharedCounts) {
    t.family(
        "ringway_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes with clients, by version and whether the session was resumed.",
    );
    for (v, version) in ["1.2", "1.3"].iter().enumerate() {
        for (r, resumed) in ["false", "true"].iter().enumerate() {
            t.sample(
                "ringway_tls_handshakes_total",
                &[("version", version), ("resumed", resumed)],
                sums.tls[v][r],
            );
        }
    }
    t.family(
        "ringway_http_bodies_cut_total",
        "counter",
        "HTTP request bodies cut, by reason (stalled, slow, budget).",
    );
    for (reason, n) in crate::stats::BODY_CUTS.iter().zip(sums.bodies_cut) {
        t.sample("ringway_http_bodies_cut_total", &[("reason", reason)], n);
    }
    t.single(
        "ringway_tls_handshake_failures_total",
        "counter",
        "TLS handshakes with clients that failed or did not finish in time.",
        sums.tls_failed,
    );
    t.family(
        "ringway_http_responses_total",
        "counter",
        "HTTP responses to clients by status (101: WebSocket upgrades).",
    );
    for (i, n) in sums.http.iter().enumerate() {
        let status = crate::stats::STATUSES
            .get(i)
            .map_or("other".to_string(), |s| s.to_string());
        if *n > 0 {
            t.sample("ringway_http_responses_total", &[("status", &status)], n);
        }
    }
    t.family(
        "ringway_close_codes_total",
        "counter",
        "Close frames sent to clients, by close code (none: a close without a code).",
    );
    for (i, n) in sums.closes.iter().enumerate() {
        let code = match crate::stats::CLOSE_CODES.get(i) {
            Some(c) => c.to_string(),
            None if i == crate::stats::CLOSE_CODES.len() => "other".into(),
            None => "none".into(),
        };
        if *n > 0 {
            t.sample("ringway_close_codes_total", &[("code", &code)], n);
        }
    }
    t.family(
        "ringway_rejections_total",
        "counter",
        "Refusals by admission control, by reason.",
    );
    for r in crate::policy::Reason::ALL {
        t.sample(
            "ringway_rejections_total",
            &[("reason", r.name())],
            shared.rejections.get(r),
        );
    }
}

/// The cluster's link to Redis and its second-level cache.
fn cluster(t: &mut Text, scrape: &Scrape<'_>) {
    if let Some(ClusterScrape {
        up,
        instances,
        failures,
        syncs,
        cache,
    }) = scrape.cluster
    {
        t.single("ringway_cluster_up", "gauge", "1 while Redis answers the cluster's syncs; 0: serving on a local share of each budget.", u8::from(up));
        t.single(
            "ringway_cluster_instances",
            "gauge",
            "Gateways of the cluster seen alive (this one included).",
            instances,
        );
        t.single(
            "ringway_cluster_sync_failures_total",
            "counter",
            "Syncs with Redis that failed.",
            failures,
        );
        t.single(
            "ringway_cluster_syncs_total",
            "counter",
            "Syncs with Redis that succeeded (one round trip each, more when keys are read back or a revocation is pushed).",
            syncs.0,
        );
        t.single(
            "ringway_cluster_sync_seconds_total",
            "counter",
            "Time the successful syncs took, in all (divided by ringway_cluster_syncs_total: the time per sync).",
            syncs.1 as f64 / 1e6,
        );
        if let Some((lookups, stores)) = cache {
            let name = "ringway_cluster_cache_lookups_total";
            t.family(name, "counter", "Lookups in the second-level cache (Redis) after a first-level miss, by result: hit, miss (this instance fetched), waited (for another's fetch of the same answer), failed (Redis down or slow: a miss).");
            for (result, n) in ["hit", "miss", "waited", "failed"].iter().zip(lookups) {
                t.sample(name, &[("result", result)], n);
            }
            t.single(
                "ringway_cluster_cache_stores_total",
                "counter",
                "Answers kept in the second-level cache.",
                stores,
            );
        }
    }
}

/// Reloads, degraded chains, and each node's state.
fn nodes(t: &mut Text, scrape: &Scrape<'_>, full: bool) {
    let reloads = scrape.reloads;
    t.single(
        "ringway_config_generation",
        "gauge",
        "The configuration in use: 1 at start, one more per reload that took effect.",
        reloads.generation,
    );
    t.family(
        "ringway_reloads_total",
        "counter",
        "Reloads (SIGHUP) by outcome: ok, or refused (the file had an error; the running configuration stayed).",
    );
    t.sample("ringway_reloads_total", &[("outcome", "ok")], reloads.ok);
    t.sample(
        "ringway_reloads_total",
        &[("outcome", "refused")],
        reloads.failed,
    );
    t.family(
        "ringway_degraded",
        "gauge",
        "Whether no node of a chain passes its health checks (its sessions go to the best candidate anyway).",
    );
    for &(chain, h, _) in &scrape.chains {
        t.sample(
            "ringway_degraded",
            &[("chain", chain)],
            u8::from(h.degraded()),
        );
    }
    // Per node, with its chain: (family, type, help, value).
    type PerNode<'a> = (&'a str, &'a str, &'a str, &'a dyn Fn(&Health, usize) -> u64);
    let per_node: [PerNode; 7] = [
        (
            "ringway_node_up",
            "gauge",
            "Whether a node passes its health checks.",
            &|h, i| u64::from(h.is_up(i)),
        ),
        (
            "ringway_node_head",
            "gauge",
            "Best block seen on each node.",
            &|h, i| h.head(i),
        ),
        (
            "ringway_hedges_total",
            "counter",
            "Reads sent to this node because another had not answered in time (hedges).",
            &|h, i| h.hedges(i)[0],
        ),
        (
            "ringway_hedges_won_total",
            "counter",
            "Hedges this node answered first.",
            &|h, i| h.hedges(i)[1],
        ),
        (
            "ringway_node_probes_total",
            "counter",
            "Health probes run on each node.",
            &|h, i| h.probes(i),
        ),
        (
            "ringway_node_passive_failures_total",
            "counter",
            "Failures workers saw on each node between probes (connects, timeouts, silence); they count only beside a failed probe.",
            &|h, i| h.passive_failures(i),
        ),
        (
            "ringway_node_finalized",
            "gauge",
            "The block each node last reported finalized.",
            &|h, i| h.finalized_of(i),
        ),
    ];
    for (name, kind, help, value) in per_node {
        t.family(name, kind, help);
        for (chain, h, i, n) in each_node(scrape) {
            let url = label(n, full);
            t.sample(
                name,
                &[("chain", chain), ("url", &url), ("role", n.role.name())],
                value(h, i),
            );
        }
    }
}
