//! The counters behind `/metrics`, kept where they are cheapest to keep:
//!
//! - per core ([`CoreStats`]): what the hot path counts (messages, bytes,
//!   calls by method, HTTP statuses, close codes, TLS handshakes). Each core
//!   writes only its own, with a plain load and store (no atomic
//!   read-modify-write, no shared cache line); a scrape sums every core's.
//!   A worker thread finds its own through a thread-local set at its start
//!   ([`install`]); on other threads (the health thread, tools) counting
//!   does nothing.
//! - per node (the health view's node status): sessions and response times,
//!   touched per session and per probe or HTTP request, never per message.

use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A counter written by one thread only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n` (the writing core only: a load and a store).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtract `n` (a gauge kept by one core).
    pub fn sub(&self, n: u64) {
        self.add(n.wrapping_neg());
    }

    /// Set (a gauge kept by one core).
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Where a message or its bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client = 0,
    Node = 1,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Client, Source::Node];
    pub fn name(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Node => "node",
        }
    }
}

/// What became of a JSON-RPC call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to a node.
    Forwarded = 0,
    /// Refused by admission (rate, method list, batch, per-session limits).
    Refused = 1,
    /// Answered from the response cache.
    Cached = 2,
    /// Answered by an identical request already on its way to a node.
    Joined = 3,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Forwarded,
        Outcome::Refused,
        Outcome::Cached,
        Outcome::Joined,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Refused => "refused",
            Outcome::Cached => "cached",
            Outcome::Joined => "joined",
        }
    }
}

/// Methods counted by name (the calls of Polkadot-JS, ethers and web3 at
/// start and in use, and the routing tables'); every other is `other`, so
/// the label set is bounded whatever clients send.
pub const METHODS: &[&str] = &[
    // Substrate
    "author_submitAndWatchExtrinsic",
    "author_submitExtrinsic",
    "author_pendingExtrinsics",
    "author_unwatchExtrinsic",
    "chain_getBlock",
    "chain_getBlockHash",
    "chain_getFinalizedHead",
    "chain_getHeader",
    "chain_subscribeAllHeads",
    "chain_subscribeFinalizedHeads",
    "chain_subscribeNewHead",
    "chain_subscribeNewHeads",
    "chain_unsubscribeAllHeads",
    "chain_unsubscribeFinalizedHeads",
    "chain_unsubscribeNewHead",
    "chain_unsubscribeNewHeads",
    "chainHead_v1_follow",
    "chainHead_v1_unfollow",
    "chainHead_v1_header",
    "chainHead_v1_body",
    "chainHead_v1_storage",
    "chainHead_v1_call",
    "chainHead_v1_unpin",
    "chainSpec_v1_chainName",
    "chainSpec_v1_genesisHash",
    "chainSpec_v1_properties",
    "transaction_v1_broadcast",
    "transactionWatch_v1_submitAndWatch",
    "archive_v1_body",
    "archive_v1_call",
    "archive_v1_header",
    "archive_v1_storage",
    "childstate_getKeys",
    "childstate_getStorage",
    "payment_queryFeeDetails",
    "payment_queryInfo",
    "rpc_methods",
    "state_call",
    "state_getKeys",
    "state_getKeysPaged",
    "state_getMetadata",
    "state_getPairs",
    "state_getReadProof",
    "state_getRuntimeVersion",
    "state_getStorage",
    "state_getStorageHash",
    "state_getStorageSize",
    "state_queryStorage",
    "state_queryStorageAt",
    "state_subscribeRuntimeVersion",
    "state_subscribeStorage",
    "state_traceBlock",
    "state_unsubscribeRuntimeVersion",
    "state_unsubscribeStorage",
    "system_accountNextIndex",
    "system_chain",
    "system_chainType",
    "system_health",
    "system_localPeerId",
    "system_name",
    "system_properties",
    "system_syncState",
    "system_version",
    // Ethereum
    "eth_accounts",
    "eth_blockNumber",
    "eth_call",
    "eth_chainId",
    "eth_estimateGas",
    "eth_feeHistory",
    "eth_gasPrice",
    "eth_getBalance",
    "eth_getBlockByHash",
    "eth_getBlockByNumber",
    "eth_getBlockReceipts",
    "eth_getCode",
    "eth_getLogs",
    "eth_getProof",
    "eth_getStorageAt",
    "eth_getTransactionByHash",
    "eth_getTransactionCount",
    "eth_getTransactionReceipt",
    "eth_maxPriorityFeePerGas",
    "eth_sendRawTransaction",
    "eth_subscribe",
    "eth_syncing",
    "eth_unsubscribe",
    "net_version",
    "web3_clientVersion",
];

/// The label of `method`: its index in [`METHODS`], or `METHODS.len()` (`other`).
pub fn method_index(method: &[u8]) -> usize {
    static INDEX: std::sync::OnceLock<ahash::AHashMap<&'static [u8], usize>> =
        std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| {
        METHODS
            .iter()
            .enumerate()
            .map(|(i, m)| (m.as_bytes(), i))
            .collect()
    });
    index.get(method).copied().unwrap_or(METHODS.len())
}

/// HTTP statuses counted by code (others: `other`).
pub const STATUSES: &[u16] = &[
    101, 200, 204, 301, 308, 400, 403, 404, 405, 408, 413, 415, 426, 429, 431, 500, 501, 502, 503,
    504, 505,
];

/// Close codes counted by code (others: `other`).
pub const CLOSE_CODES: &[u16] = &[1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012];

/// One core's counters.
#[derive(Debug)]
pub struct CoreStats {
    /// Data messages read, by where from.
    pub messages: [Counter; 2],
    /// Bytes read (after TLS), by where from.
    pub bytes: [Counter; 2],
    /// Per chain (by [`chain_slot`]): calls and cache figures; made on
    /// the first count of a chain on this core.
    chains: Box<[std::sync::OnceLock<Box<ChainStats>>]>,
    /// By [`STATUSES`] and other.
    http: Box<[Counter]>,
    /// Close frames sent to clients, by [`CLOSE_CODES`], other, and none (no code).
    closes: Box<[Counter]>,
    /// Completed TLS handshakes: [TLS 1.2, 1.3] x [full, resumed].
    tls: [[Counter; 2]; 2],
    /// TLS handshakes that failed or did not finish in time.
    pub tls_failed: Counter,
    /// Merged subscriptions: node subscriptions, and client subscriptions
    /// on them (gauges); notifications from the node, and copies delivered.
    pub topics: Counter,
    pub topic_members: Counter,
    pub topic_notes: Counter,
    pub topic_deliveries: Counter,
    /// Merged `chainHead_v1_follow`s (gauges): node follows, client follows
    /// on them, blocks pinned at nodes by them.
    pub follows: [Counter; 3],
    /// Client follows the gateway stopped for their pins.
    pub follow_stopped: Counter,
    /// HTTP request bodies cut, by reason ([`BODY_CUTS`]).
    pub bodies_cut: [Counter; 3],
}

/// One chain's counters on one core.
#[derive(Debug)]
pub struct ChainStats {
    /// By method ([`METHODS`] and other), then by [`Outcome`].
    calls: Box<[[Counter; 4]]>,
    /// Response cache: lookups that found an answer, and that did not.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Answers dropped to stay within `cache.max_bytes`.
    pub cache_evictions: Counter,
    /// Bytes the cache holds (a gauge).
    pub cache_bytes: Counter,
}

impl ChainStats {
    fn new() -> ChainStats {
        ChainStats {
            calls: (0..=METHODS.len()).map(|_| Default::default()).collect(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_evictions: Counter::default(),
            cache_bytes: Counter::default(),
        }
    }

    /// Every request of `call`.
    pub fn call(&self, call: &crate::jsonrpc::Call<'_>, outcome: Outcome) {
        for r in call.requests() {
            self.request(r.method(), outcome);
        }
    }

    /// One request (a batch element) calling `method`.
    pub fn request(&self, method: Option<&[u8]>, outcome: Outcome) {
        let i = method.map_or(METHODS.len(), method_index);
        self.calls[i][outcome as usize].add(1);
    }
}

/// Chains counted apart, at most; the names beyond share the last slot
/// (labelled `other`).
pub const MAX_CHAINS: usize = 256;

static CHAIN_NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The counters slot of the chain named `name`, process-wide and for the
/// process's life (a chain keeps its counts across reloads). Taken when a
/// core builds its state for a generation, never per call.
pub fn chain_slot(name: &str) -> u8 {
    let mut names = CHAIN_NAMES.lock();
    if let Some(i) = names.iter().position(|n| n == name) {
        return i as u8;
    }
    if names.len() < MAX_CHAINS - 1 {
        names.push(name.to_string());
        return (names.len() - 1) as u8;
    }
    (MAX_CHAINS - 1) as u8
}

/// The name of each slot taken so far.
pub fn chain_names() -> Vec<String> {
    let mut names = CHAIN_NAMES.lock().clone();
    if names.len() == MAX_CHAINS - 1 {
        names.push("other".into());
    }
    names
}

/// Why an HTTP request body was cut: `stalled` (no byte for
/// `http.body_idle_timeout_ms`), `slow` (past `http.body_timeout_ms` or below
/// the minimum rate), `budget` (over `http.max_bodies_bytes`, 503).
pub const BODY_CUTS: [&str; 3] = ["stalled", "slow", "budget"];

impl CoreStats {
    fn new() -> CoreStats {
        CoreStats {
            messages: Default::default(),
            bytes: Default::default(),
            chains: (0..MAX_CHAINS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            http: (0..=STATUSES.len()).map(|_| Counter::default()).collect(),
            closes: (0..CLOSE_CODES.len() + 2)
                .map(|_| Counter::default())
                .collect(),
            tls: Default::default(),
            tls_failed: Counter::default(),
            topics: Counter::default(),
            topic_members: Counter::default(),
            topic_notes: Counter::default(),
            topic_deliveries: Counter::default(),
            follows: Default::default(),
            follow_stopped: Counter::default(),
            bodies_cut: Default::default(),
        }
    }

    /// A data message and the bytes it came in.
    #[inline]
    pub fn read(&self, from: Source, messages: u64, bytes: u64) {
        self.messages[from as usize].add(messages);
        self.bytes[from as usize].add(bytes);
    }

    /// Chain `slot`'s counters on this core.
    #[inline]
    pub fn chain(&self, slot: u8) -> &ChainStats {
        self.chains[slot as usize].get_or_init(|| Box::new(ChainStats::new()))
    }

    pub fn http_status(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.http[i].add(1);
    }

    pub fn close_sent(&self, code: Option<u16>) {
        let i = match code {
            None => CLOSE_CODES.len() + 1,
            Some(c) => CLOSE_CODES
                .iter()
                .position(|&k| k == c)
                .unwrap_or(CLOSE_CODES.len()),
        };
        self.closes[i].add(1);
    }

    pub fn tls_done(&self, tls13: bool, resumed: bool) {
        self.tls[usize::from(tls13)][usize::from(resumed)].add(1);
    }
}

/// Every core's counters, for the scrape.
#[derive(Debug, Default)]
pub struct Registry {
    cores: Mutex<Vec<&'static CoreStats>>,
}

/// The sums over cores.
pub struct Sums {
    pub messages: [u64; 2],
    pub bytes: [u64; 2],
    /// (chain slot, method index, outcome) -> count, only non-zero ones.
    pub calls: Vec<(u8, usize, Outcome, u64)>,
    pub http: Vec<u64>,
    pub closes: Vec<u64>,
    pub tls: [[u64; 2]; 2],
    pub tls_failed: u64,
    /// By chain slot (those counted): hits, misses, evictions, bytes.
    pub cache: Vec<(u8, [u64; 4])>,
    /// topics, members, notifications, deliveries.
    pub merged: [u64; 4],
    /// Node follows, client follows, pinned blocks; client follows stopped.
    pub follows: [u64; 4],
    /// By [`BODY_CUTS`].
    pub bodies_cut: [u64; 3],
}

impl Registry {
    /// The sum of every core's counters now.
    pub fn sum(&self) -> Sums {
        let cores = self.cores.lock();
        let total = |f: &dyn Fn(&CoreStats) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();
        let mut calls = Vec::new();
        let mut cache = Vec::new();
        for slot in 0..MAX_CHAINS {
            fn of(c: &CoreStats, slot: usize) -> Option<&ChainStats> {
                c.chains[slot].get().map(|s| &**s)
            }
            if !cores.iter().any(|c| of(c, slot).is_some()) {
                continue;
            }
            let chain = |f: &dyn Fn(&ChainStats) -> u64| total(&|c| of(c, slot).map_or(0, f));
            for m in 0..=METHODS.len() {
                for o in Outcome::ALL {
                    let n = chain(&|s| s.calls[m][o as usize].get());
                    if n > 0 {
                        calls.push((slot as u8, m, o, n));
                    }
                }
            }
            cache.push((
                slot as u8,
                [
                    chain(&|s| s.cache_hits.get()),
                    chain(&|s| s.cache_misses.get()),
                    chain(&|s| s.cache_evictions.get()),
                    chain(&|s| s.cache_bytes.get()),
                ],
            ));
        }
        Sums {
            messages: [0, 1].map(|d| total(&|c| c.messages[d].get())),
            bytes: [0, 1].map(|d| total(&|c| c.bytes[d].get())),
            calls,
            http: (0..=STATUSES.len())
                .map(|i| total(&|c| c.http[i].get()))
                .collect(),
            closes: (0..CLOSE_CODES.len() + 2)
                .map(|i| total(&|c| c.closes[i].get()))
                .collect(),
            tls: [0, 1].map(|v| [0, 1].map(|r| total(&|c| c.tls[v][r].get()))),
            tls_failed: total(&|c| c.tls_failed.get()),
            cache,
            merged: [
                total(&|c| c.topics.get()),
                total(&|c| c.topic_members.get()),
                total(&|c| c.topic_notes.get()),
                total(&|c| c.topic_deliveries.get()),
            ],
            follows: [
                total(&|c| c.follows[0].get()),
                total(&|c| c.follows[1].get()),
                total(&|c| c.follows[2].get()),
                total(&|c| c.follow_stopped.get()),
            ],
            bodies_cut: [0, 1, 2].map(|i| total(&|c| c.bodies_cut[i].get())),
        }
    }
}

thread_local! {
    static MINE: Cell<Option<&'static CoreStats>> = const { Cell::new(None) };
}

/// Give this (worker) thread its counters, registered for the scrape. Once
/// per worker thread, which lives as long as the process: they are never
/// freed.
pub fn install(registry: &Registry) {
    let stats: &'static CoreStats = Box::leak(Box::new(CoreStats::new()));
    registry.cores.lock().push(stats);
    MINE.with(|m| m.set(Some(stats)));
}

/// Count on this thread's counters (nothing on a thread without them).
#[inline]
pub fn count(f: impl FnOnce(&CoreStats)) {
    if let Some(s) = MINE.with(Cell::get) {
        f(s)
    }
}

/// `messages` data messages in `bytes` read from a `source` socket, on this core.
#[inline]
pub fn read(source: Source, messages: u64, bytes: usize) {
    count(|c| c.read(source, messages, bytes as u64));
}

/// One request (a batch element) to chain `slot` had this `outcome`, on this core.
pub fn request(slot: u8, req: &crate::jsonrpc::Request<'_>, outcome: Outcome) {
    count(|c| c.chain(slot).request(req.method(), outcome));
}

/// Every request of `call` to chain `slot` had this `outcome`, on this core.
pub fn calls(slot: u8, call: &crate::jsonrpc::Call<'_>, outcome: Outcome) {
    count(|c| c.chain(slot).call(call, outcome));
}

/// A latency histogram in seconds, written by any thread (atomic adds: it
/// is touched per probe and per HTTP request, not per message).
#[derive(Debug)]
pub struct Histogram {
    /// Counts at or below each bound of [`LATENCY_BOUNDS`], then +Inf.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

/// Bucket bounds, seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Cumulative counts per bound (the last is +Inf, the total), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut acc = 0;
        let counts = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        (counts, self.sum_us.load(Relaxed) as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {

    /// Guards the scrape after a panic caught under the cores' lock (it
    /// poisoned the lock: every later scrape and every new worker panicked).
    #[test]
    fn a_panic_caught_under_the_registrys_lock_leaves_the_scrape_working() {
        let registry = std::sync::Arc::new(Registry::default());
        let r = registry.clone();
        let caught = std::thread::spawn(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _held = r.cores.lock();
                panic!("a bug under the lock");
            }))
        })
        .join()
        .unwrap();
        assert!(caught.is_err());
        std::thread::spawn({
            let r = registry.clone();
            move || install(&r)
        })
        .join()
        .unwrap();
        assert_eq!(registry.sum().messages, [0, 0]);
    }

    use super::*;

    #[test]
    fn methods_are_labelled_from_a_bounded_table() {
        assert_eq!(METHODS[method_index(b"eth_blockNumber")], "eth_blockNumber");
        assert_eq!(method_index(b"anything_else"), METHODS.len());
        let mut sorted = METHODS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), METHODS.len(), "no duplicates");
    }

    #[test]
    fn a_core_counts_and_the_registry_sums() {
        let registry = Registry::default();
        install(&registry);
        count(|c| c.read(Source::Client, 2, 100));
        count(|c| {
            c.chain(3).call(
                &crate::jsonrpc::Call::parse(
                    br#"[{"id":1,"method":"system_health"},{"id":2,"method":"x"}]"#,
                ),
                Outcome::Forwarded,
            )
        });
        count(|c| c.http_status(429));
        count(|c| c.close_sent(Some(1001)));
        let s = registry.sum();
        assert_eq!(s.messages, [2, 0]);
        assert_eq!(s.bytes, [100, 0]);
        assert_eq!(s.calls.len(), 2);
        assert!(s.calls.iter().all(|c| c.0 == 3), "by chain slot");
        assert_eq!(s.http[STATUSES.iter().position(|&x| x == 429).unwrap()], 1);
        assert_eq!(s.closes[1], 1);
    }

    #[test]
    fn the_histogram_is_cumulative() {
        let h = Histogram::default();
        h.record(std::time::Duration::from_micros(300));
        h.record(std::time::Duration::from_millis(30));
        h.record(std::time::Duration::from_secs(60));
        let (counts, sum) = h.snapshot();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[LATENCY_BOUNDS.len() - 1], 2);
        assert_eq!(counts[LATENCY_BOUNDS.len()], 3);
        assert!((sum - 60.0303).abs() < 1e-6);
    }
}
