//! Node health: active probes, hysteresis, lag, and the lock-free state every
//! worker reads.
//!
//! One thread ("health", its own monoio runtime) probes every node each
//! interval over a kept-open WebSocket: Substrate `system_health` and
//! `chain_getHeader`; Ethereum `eth_syncing` and `eth_blockNumber`. A node is
//! marked down after `fall` consecutive failures and up after `rise`
//! successes ([`Hysteresis`], a pure function with no clock inside), and is
//! down while its head lags the best head by more than `max_lag` blocks.
//! Workers also report what they see ([`Health::report_connect_failure`]:
//! a connect that failed, a request that timed out, a busy connection that
//! went silent). Such passive reports are evidence beside the probes', never
//! on their own: a node that answers its probe stays up, and one that fails
//! it falls one step faster, at most one passive failure counting per probe
//! interval. So no pattern of client traffic (slow reads, hedges lost to a
//! faster node) takes a node out that answers its probes; a dead or hung one
//! still falls at its next failed probe.
//!
//! The state is atomics in an `Arc`: workers read it on every new session
//! and every session's timer checks its node, with no lock anywhere. New block
//! hashes go to each worker through its own channel, drained when a worker
//! needs its [`crate::route::HashWindow`].

mod feed;
mod plausible;

pub use feed::HashFeed;
pub use plausible::{plausible, MAX_JUMP};
// The settings are config's; re-exported where the probes read them.
pub use crate::config::{HealthConfig, ProbeMode};

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

/// Consecutive-result hysteresis for one node. Pure: feed it results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub up: bool,
    fails: u32,
    oks: u32,
}

impl Hysteresis {
    /// Nodes start up, so a gateway serves at once, before the first probe.
    pub fn new() -> Hysteresis {
        Hysteresis::resume(true)
    }

    /// Counting anew from a known state (after a reload).
    pub fn resume(up: bool) -> Hysteresis {
        Hysteresis {
            up,
            fails: 0,
            oks: 0,
        }
    }

    /// The state after one more probe result.
    pub fn observe(self, ok: bool, fall: u32, rise: u32) -> Hysteresis {
        let (fails, oks) = if ok {
            (0, self.oks + 1)
        } else {
            (self.fails + 1, 0)
        };
        let up = if self.up {
            fails < fall.max(1)
        } else {
            oks >= rise.max(1)
        };
        Hysteresis { up, fails, oks }
    }
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self::new()
    }
}

/// True when a node at `head` is too far behind the `best` head.
pub fn lagging(head: u64, best: u64, max_lag: u64) -> bool {
    best.saturating_sub(head) > max_lag
}

/// What every worker can read about one node.
#[derive(Debug)]
pub struct NodeStatus {
    up: AtomicBool,
    /// Up by the probes' hysteresis (before the lag rule).
    alive: AtomicBool,
    head: AtomicU64,
    /// The block it last reported finalized (0: unknown) and its hash.
    finalized: AtomicU64,
    finalized_hash: Mutex<Option<(u64, String)>>,
    /// Which chain it says it is on (Substrate: its genesis hash;
    /// Ethereum: `eth_chainId`), once per probe connection.
    identity: Mutex<Option<String>>,
    /// Ethereum: its genesis block's hash (a chain id alone names many
    /// chains: every devnet is 31337).
    genesis: Mutex<Option<String>>,
    /// Its chain is not the pool's: taken out.
    other_chain: AtomicBool,
    passive_failures: AtomicU32,
    /// Passive reports ever made (for metrics; the count above is reset).
    passive_total: AtomicU64,
    probes: AtomicU64,
    /// Probe round-trip time, smoothed (µs; 0: not measured yet).
    rtt_us: AtomicU64,
    /// Removed from the configuration by a reload: its sessions end at this
    /// time ([`retire_clock`] milliseconds; 0: not removed).
    retire_at: AtomicU64,
    /// Sessions started and ended on it: [pinned, shared].
    sessions_started: [AtomicU64; 2],
    sessions_ended: [AtomicU64; 2],
    /// How long it takes to answer: [health probes, HTTP JSON-RPC requests].
    latency: [crate::stats::Histogram; 2],
    /// Its recent answer time to requests (µs): smoothed mean and deviation.
    answer_mean: AtomicU64,
    answer_dev: AtomicU64,
    /// Hedges sent to it, and those it won (answered first).
    hedges: [AtomicU64; 2],
}

/// What a node's response time was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timed {
    Probe = 0,
    Http = 1,
}

impl NodeStatus {
    fn new() -> NodeStatus {
        NodeStatus {
            up: AtomicBool::new(true),
            alive: AtomicBool::new(true),
            head: AtomicU64::new(0),
            finalized: AtomicU64::new(0),
            finalized_hash: Mutex::new(None),
            identity: Mutex::new(None),
            genesis: Mutex::new(None),
            other_chain: AtomicBool::new(false),
            passive_failures: AtomicU32::new(0),
            passive_total: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            retire_at: AtomicU64::new(0),
            sessions_started: Default::default(),
            sessions_ended: Default::default(),
            latency: Default::default(),
            answer_mean: AtomicU64::new(0),
            answer_dev: AtomicU64::new(0),
            hedges: Default::default(),
        }
    }
}

/// Milliseconds since the first call (plus one, so that 0 means "never"):
/// the clock of [`NodeStatus::retire_at`].
fn retire_clock() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    epoch.elapsed().as_millis() as u64 + 1
}

/// Shared health state of the pool: one configuration generation's nodes
/// (indexed as in its config), and what the process shares across
/// generations. A reload ([`Health::next`]) makes a new view in which the
/// nodes it keeps (same url) share their status with the old view: the
/// sessions that started before it see the same probes.
#[derive(Debug)]
pub struct Health {
    nodes: Vec<Arc<NodeStatus>>,
    common: Arc<Common>,
}

/// What every generation shares.
#[derive(Debug)]
struct Common {
    /// The highest head among the nodes that pass their probes, recomputed
    /// at every probe result (never a maximum over time: a node's wrong
    /// head counts only while it reports it).
    best: AtomicU64,
    /// The highest finalized block among the nodes that are up (0:
    /// unknown), recomputed likewise, and its hash when known.
    finalized: AtomicU64,
    finalized_hash: Mutex<Option<(u64, String)>>,
    /// The chain the pool is on, if the configuration says
    /// (`health.chain`); else the one most nodes report.
    chain: Option<String>,
    /// Each worker's feed of new (hash, height) pairs.
    hash_feeds: Mutex<Vec<HashFeed>>,
    /// No node passes its checks: sessions go to the best candidate anyway
    /// (see `upstream::Pool::pick`); logged when it starts and ends.
    panic: AtomicBool,
}

impl Health {
    pub fn new(nodes: usize) -> Arc<Health> {
        Health::for_chain(nodes, None)
    }

    /// `chain`: the genesis hash or chain id every node must report.
    pub fn for_chain(nodes: usize, chain: Option<String>) -> Arc<Health> {
        Arc::new(Health {
            nodes: (0..nodes).map(|_| Arc::new(NodeStatus::new())).collect(),
            common: Arc::new(Common {
                best: AtomicU64::new(0),
                finalized: AtomicU64::new(0),
                finalized_hash: Mutex::new(None),
                chain,
                hash_feeds: Mutex::new(Vec::new()),
                panic: AtomicBool::new(false),
            }),
        })
    }

    /// The view for a reloaded node list: a node whose url was in `old`
    /// keeps its status (up, head, round trip) and stops being retired if
    /// it was; a new one starts up. The best head is recomputed from the
    /// nodes kept (a removed node's head no longer sets the bar).
    pub fn next(
        &self,
        old: &[crate::config::NodeConfig],
        new: &[crate::config::NodeConfig],
    ) -> Arc<Health> {
        let nodes: Vec<Arc<NodeStatus>> = new
            .iter()
            .map(|n| match old.iter().position(|o| o.url == n.url) {
                Some(i) => {
                    self.nodes[i].retire_at.store(0, Ordering::Relaxed);
                    self.nodes[i].clone()
                }
                None => Arc::new(NodeStatus::new()),
            })
            .collect();
        let best = nodes.iter().map(|n| n.head.load(Ordering::Relaxed)).max();
        self.common.best.store(best.unwrap_or(0), Ordering::Relaxed);
        Arc::new(Health {
            nodes,
            common: self.common.clone(),
        })
    }

    /// Whether both views are of one pool (one made from the other by
    /// reloads): they share heads, finality and hash feeds.
    pub fn same_pool(&self, other: &Health) -> bool {
        Arc::ptr_eq(&self.common, &other.common)
    }

    /// Node `i` was removed from the configuration: its sessions end
    /// after `grace` (see [`Health::retired`]).
    pub fn retire(&self, i: usize, grace: Duration) {
        let at = retire_clock() + grace.as_millis() as u64;
        self.nodes[i].retire_at.store(at, Ordering::Relaxed);
    }

    /// Whether node `i` was removed by a reload and its grace has passed:
    /// its sessions finish their requests in flight and close (1001).
    pub fn retired(&self, i: usize) -> bool {
        let at = self.nodes[i].retire_at.load(Ordering::Relaxed);
        at != 0 && retire_clock() >= at
    }

    /// A session started on node `i` (`shared`: on a shared connection).
    pub fn session_started(&self, i: usize, shared: bool) {
        self.nodes[i].sessions_started[usize::from(shared)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_ended(&self, i: usize, shared: bool) {
        self.nodes[i].sessions_ended[usize::from(shared)].fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions on node `i`, [pinned, shared]: (started, ended).
    pub fn sessions(&self, i: usize) -> [(u64, u64); 2] {
        let n = &self.nodes[i];
        [0, 1].map(|m| {
            (
                n.sessions_started[m].load(Ordering::Relaxed),
                n.sessions_ended[m].load(Ordering::Relaxed),
            )
        })
    }

    /// One answer from node `i` took `d` (an answer to a request also
    /// moves its recent answer time: see [`crate::hedge`]).
    pub fn record_latency(&self, i: usize, on: Timed, d: Duration) {
        let n = &self.nodes[i];
        n.latency[on as usize].record(d);
        if on == Timed::Http {
            let e = self.estimate(i).update(d);
            n.answer_mean.store(e.mean_us, Ordering::Relaxed);
            n.answer_dev.store(e.dev_us, Ordering::Relaxed);
        }
    }

    /// Node `i` answered a request on a shared WebSocket connection after
    /// `d`: its recent answer time moves (the hedge delay follows it).
    pub fn record_answer(&self, i: usize, d: Duration) {
        let n = &self.nodes[i];
        let e = self.estimate(i).update(d);
        n.answer_mean.store(e.mean_us, Ordering::Relaxed);
        n.answer_dev.store(e.dev_us, Ordering::Relaxed);
    }

    /// Node `i`'s recent answer time to requests.
    pub fn estimate(&self, i: usize) -> crate::hedge::Estimate {
        let n = &self.nodes[i];
        crate::hedge::Estimate {
            mean_us: n.answer_mean.load(Ordering::Relaxed),
            dev_us: n.answer_dev.load(Ordering::Relaxed),
        }
    }

    /// A read late on node `slow` was also sent to node `to` (a hedge);
    /// `won`: `to` answered first; `failing`: that counts as a failed check
    /// for `slow` (its probes may not have noticed yet).
    pub fn hedged(&self, slow: usize, to: usize, won: bool, failing: bool) {
        self.nodes[to].hedges[0].fetch_add(1, Ordering::Relaxed);
        if won {
            self.nodes[to].hedges[1].fetch_add(1, Ordering::Relaxed);
        }
        if failing {
            self.report_connect_failure(slow);
        }
    }

    /// Hedges sent to node `i`, and won by it.
    pub fn hedges(&self, i: usize) -> [u64; 2] {
        self.nodes[i]
            .hedges
            .each_ref()
            .map(|h| h.load(Ordering::Relaxed))
    }

    pub fn latency(&self, i: usize, on: Timed) -> &crate::stats::Histogram {
        &self.nodes[i].latency[on as usize]
    }

    /// Whether node `i` passes its probes (before the lag rule): where a
    /// new probe thread's hysteresis starts.
    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].alive.load(Ordering::Relaxed)
    }

    /// No node passes its health checks (panic routing: all nodes serve).
    pub fn degraded(&self) -> bool {
        !self.nodes.is_empty() && !self.nodes.iter().any(|n| n.up.load(Ordering::Relaxed))
    }

    /// Whether node `i` should keep its sessions: it is up, or no node is
    /// (then there is nowhere better to send them).
    pub fn serving(&self, i: usize) -> bool {
        self.is_up(i) || self.degraded()
    }

    /// Can this node take sessions and requests?
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].up.load(Ordering::Relaxed)
    }

    pub fn head(&self, i: usize) -> u64 {
        self.nodes[i].head.load(Ordering::Relaxed)
    }

    /// Node `i` reported block `n` finalized (and its hash, if it said).
    /// Not believed above its own head (a node cannot finalize what it has
    /// not imported); the pool's view follows at once.
    pub fn record_finalized(&self, i: usize, n: u64, hash: Option<&str>) {
        let node = &self.nodes[i];
        let head = node.head.load(Ordering::Relaxed);
        if head > 0 && n > head {
            return;
        }
        node.finalized.store(n, Ordering::Release);
        *node.finalized_hash.lock() = hash.map(|h| (n, h.to_string()));
        self.derive();
    }

    /// The block node `i` last reported finalized (0: unknown): an answer it
    /// gives about a block at or below it cannot change.
    pub fn finalized_of(&self, i: usize) -> u64 {
        self.nodes[i].finalized.load(Ordering::Acquire)
    }

    /// The highest finalized block among the nodes that are up, with its
    /// hash (when that node said it).
    pub fn finalized_hash(&self) -> Option<(u64, String)> {
        self.common.finalized_hash.lock().clone()
    }

    /// The highest finalized block among the nodes that are up (0:
    /// unknown). Whether an answer about a block may be kept is decided by
    /// the node that gave it ([`Health::finalized_of`]).
    pub fn finalized(&self) -> u64 {
        self.common.finalized.load(Ordering::Acquire)
    }

    /// Node `i` says it is on chain `id` (its genesis hash or chain id).
    pub fn record_identity(&self, i: usize, id: &str) {
        *self.nodes[i].identity.lock() = Some(id.to_string());
    }

    /// Node `i`'s genesis block hash (Ethereum), recorded before its identity.
    pub fn record_genesis(&self, i: usize, hash: &str) {
        *self.nodes[i].genesis.lock() = Some(hash.to_string());
    }

    /// What names the pool's chain wherever its answers are shared (the
    /// cluster's cache): its identity, and for Ethereum the genesis block
    /// a node of it reported. `None` while no node said.
    pub fn namespace(&self) -> Option<String> {
        let chain = self.chain()?;
        let genesis = self.nodes.iter().find_map(|n| {
            let same = n.identity.lock().as_deref() == Some(&chain);
            same.then(|| n.genesis.lock().clone()).flatten()
        });
        Some(match genesis {
            Some(g) => format!("{chain}/{g}"),
            None => chain,
        })
    }

    /// The chain the pool is on: configured, else the one most nodes
    /// report (ties: the earliest node's), `None` while no node said.
    pub fn chain(&self) -> Option<String> {
        if let Some(c) = &self.common.chain {
            return Some(c.clone());
        }
        let ids: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.identity.lock().clone())
            .collect();
        let count = |id: &String| ids.iter().filter(|x| *x == id).count();
        ids.iter()
            .fold(None::<&String>, |best, id| match best {
                Some(b) if count(b) >= count(id) => Some(b),
                _ => Some(id),
            })
            .cloned()
    }

    /// Whether node `i` is on another chain than the pool's.
    pub fn on_other_chain(&self, i: usize) -> bool {
        self.nodes[i].other_chain.load(Ordering::Relaxed)
    }

    /// The best head seen across nodes.
    pub fn best(&self) -> u64 {
        self.common.best.load(Ordering::Relaxed)
    }

    /// Probes run on this node so far.
    pub fn probes(&self, i: usize) -> u64 {
        self.nodes[i].probes.load(Ordering::Relaxed)
    }

    /// One probe's round trip (a failed probe counts as its timeout):
    /// smoothed, 3/4 old and 1/4 new, from zero (one slow probe on a busy
    /// machine does not make a node slow; a timeout still does at once).
    pub fn record_rtt(&self, i: usize, rtt: Duration) {
        let sample = rtt.as_micros().min(u64::MAX as u128 / 4) as u64;
        let n = &self.nodes[i].rtt_us;
        let old = n.load(Ordering::Relaxed);
        n.store((old * 3 + sample) / 4, Ordering::Relaxed);
    }

    /// How slow node `i` answers its probes, as a power of two over 2 ms
    /// (0 up to 4 ms, 1 up to 8 ms, ... a hung node's timeouts: 8 and more):
    /// load balancing divides a node's share by 2^slowness, so a node twice
    /// as slow as another gets half its sessions, and differences below a
    /// few milliseconds (scheduling noise, one hop more) count for nothing.
    pub fn slowness(&self, i: usize) -> u32 {
        let rtt = self.nodes[i].rtt_us.load(Ordering::Relaxed);
        (64 - (rtt / 2048).leading_zeros())
            .saturating_sub(1)
            .min(16)
    }

    /// A worker saw node `i` fail: a connect failed, a request timed out,
    /// a busy connection went silent. Evidence beside the next probe's (see
    /// the module's doc): it counts only if that probe fails too.
    pub fn report_connect_failure(&self, i: usize) {
        let n = &self.nodes[i];
        n.passive_failures.fetch_add(1, Ordering::Relaxed);
        n.passive_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Passive failure reports about node `i` so far.
    pub fn passive_failures(&self, i: usize) -> u64 {
        self.nodes[i].passive_total.load(Ordering::Relaxed)
    }

    /// Why node `i` is not up, as a log line says it.
    pub fn down_reason(&self, i: usize) -> String {
        let n = &self.nodes[i];
        if n.other_chain.load(Ordering::Relaxed) {
            return "on another chain than the pool".into();
        }
        if !n.alive.load(Ordering::Relaxed) {
            return "failed its health checks".into();
        }
        let (head, best) = (n.head.load(Ordering::Relaxed), self.best());
        format!(
            "lagging {} blocks behind the best head",
            best.saturating_sub(head)
        )
    }

    /// The feed from which this worker takes new block hashes. Setup only.
    pub fn subscribe_hashes(&self) -> HashFeed {
        let feed = HashFeed::default();
        self.common.hash_feeds.lock().push(feed.clone());
        feed
    }

    pub fn publish_hash(&self, hash: &str, height: u64) {
        for feed in self.common.hash_feeds.lock().iter() {
            feed.push(hash, height);
        }
    }

    /// Apply one probe result for node `i`, then the lag rule to every node.
    pub fn record(
        &self,
        i: usize,
        h: &mut Hysteresis,
        ok: bool,
        head: Option<u64>,
        cfg: &HealthConfig,
    ) {
        // Passive reports since the last probe: one failure at most, and
        // only beside a failed probe (a node that answers stays up).
        let passive = self.nodes[i].passive_failures.swap(0, Ordering::Relaxed);
        if passive > 0 && !ok {
            *h = h.observe(false, cfg.fall, cfg.rise);
        }
        // A node of another chain fails its checks, whatever it answers.
        let n = &self.nodes[i];
        let mine = n.identity.lock().clone();
        let other = match (mine, self.chain()) {
            (Some(mine), Some(pool)) => mine != pool,
            _ => false,
        };
        if n.other_chain.swap(other, Ordering::Relaxed) != other && other {
            crate::warn!(
                "node {i} is on another chain than the pool ({}): taken out",
                self.chain().unwrap_or_default()
            );
        }
        *h = h.observe(ok && !other, cfg.fall, cfg.rise);
        n.probes.fetch_add(1, Ordering::Relaxed);
        n.alive.store(h.up, Ordering::Relaxed);
        if let Some(head) = head {
            let others = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(j, o)| *j != i && o.alive.load(Ordering::Relaxed))
                .map(|(_, o)| o.head.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            let prev = n.head.load(Ordering::Relaxed);
            if plausible(head, prev, others) {
                n.head.store(head, Ordering::Relaxed);
            } else {
                crate::warn!(
                    "node {i} reported head {head}, implausible (it was at {prev}, the others at {others}): ignored"
                );
            }
        }
        self.derive();
        self.apply_lag(cfg.max_lag);
        let degraded = self.degraded();
        if self.common.panic.swap(degraded, Ordering::Relaxed) != degraded {
            if degraded {
                crate::warn!(
                    "no node passes its health checks: sessions and requests go to the best candidate anyway (panic routing; /health says degraded)"
                );
            } else {
                crate::info!("a node passes its health checks again: panic routing ends");
            }
        }
    }

    /// The pool's view from the nodes' own: the best head among the nodes
    /// that pass their probes, the highest finalized block among them.
    fn derive(&self) {
        let alive = || {
            self.nodes.iter().filter(|n| {
                n.alive.load(Ordering::Relaxed) && !n.other_chain.load(Ordering::Relaxed)
            })
        };
        let best = alive().map(|n| n.head.load(Ordering::Relaxed)).max();
        self.common.best.store(best.unwrap_or(0), Ordering::Relaxed);
        let top = alive().max_by_key(|n| n.finalized.load(Ordering::Acquire));
        let (finalized, hash) = match top {
            Some(n) => (
                n.finalized.load(Ordering::Acquire),
                n.finalized_hash.lock().clone(),
            ),
            None => (0, None),
        };
        *self.common.finalized_hash.lock() = hash;
        self.common.finalized.store(finalized, Ordering::Release);
    }

    fn apply_lag(&self, max_lag: u64) {
        let best = self.best();
        for n in &self.nodes {
            let alive = n.alive.load(Ordering::Relaxed);
            let head = n.head.load(Ordering::Relaxed);
            // A node whose head is unknown yet (0) is judged by its probes alone.
            let lag = head > 0 && lagging(head, best, max_lag);
            n.up.store(alive && !lag, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod rtt_tests {
    use super::*;

    #[test]
    fn slowness_ignores_noise_and_grows_with_the_round_trip() {
        let h = Health::new(2);
        assert_eq!(h.slowness(0), 0, "unmeasured");
        // Steady round trips.
        for (us, slow) in [(150, 0), (3_000, 0), (5_000, 1), (9_000, 2), (1_000_000, 8)] {
            let h = Health::new(1);
            for _ in 0..20 {
                h.record_rtt(0, Duration::from_micros(us));
            }
            assert_eq!(h.slowness(0), slow, "{us} µs");
        }
        // Smoothed: one slow probe does not make a node slow...
        h.record_rtt(1, Duration::from_micros(200));
        h.record_rtt(1, Duration::from_micros(12_000));
        assert_eq!(h.slowness(1), 0);
        // ...a timed-out one does.
        h.record_rtt(1, Duration::from_secs(1));
        assert!(h.slowness(1) >= 6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_fall_failures_up_after_rise_successes() {
        let mut h = Hysteresis::new();
        assert!(h.up);
        h = h.observe(false, 3, 2);
        h = h.observe(false, 3, 2);
        assert!(h.up, "two failures are not three");
        h = h.observe(true, 3, 2);
        h = h.observe(false, 3, 2);
        h = h.observe(false, 3, 2);
        assert!(h.up, "a success resets the count");
        h = h.observe(false, 3, 2);
        assert!(!h.up);
        h = h.observe(true, 3, 2);
        assert!(!h.up, "one success is not two");
        h = h.observe(true, 3, 2);
        assert!(h.up);
    }

    #[test]
    fn lag_marks_a_node_down_while_it_lasts() {
        let health = Health::new(2);
        let cfg = HealthConfig {
            max_lag: 5,
            ..HealthConfig::default()
        };
        let (mut a, mut b) = (Hysteresis::new(), Hysteresis::new());
        health.record(0, &mut a, true, Some(100), &cfg);
        health.record(1, &mut b, true, Some(99), &cfg);
        assert!(health.is_up(0) && health.is_up(1));
        health.record(0, &mut a, true, Some(110), &cfg);
        assert!(!health.is_up(1), "10 blocks behind");
        health.record(1, &mut b, true, Some(108), &cfg);
        assert!(health.is_up(1), "caught up");
        assert_eq!(health.best(), 110);
    }

    #[test]
    fn a_reload_keeps_the_status_of_kept_nodes_and_retires_removed_ones() {
        let node = |url: &str| {
            crate::config::Config::resolve(Default::default(), None)
                .map(|c| crate::config::NodeConfig {
                    url: url.into(),
                    ..c.nodes[0].clone()
                })
                .unwrap()
        };
        let (a, b, c) = (node("ws://a"), node("ws://b"), node("ws://c"));
        let old = Health::new(2);
        let cfg = HealthConfig::default();
        let mut h = Hysteresis::new();
        for _ in 0..3 {
            old.record(1, &mut h, false, None, &cfg);
        }
        old.record(0, &mut Hysteresis::new(), true, Some(50), &cfg);
        assert!(!old.is_up(1));
        let new = old.next(&[a.clone(), b.clone()], &[b, c]);
        assert!(!new.is_up(0), "b keeps its status");
        assert!(new.is_up(1), "c starts up");
        assert_eq!(new.best(), 0, "a's head no longer sets the bar");
        old.retire(0, Duration::ZERO);
        assert!(old.retired(0) && !old.retired(1));
        old.retire(1, Duration::from_secs(60));
        assert!(!old.retired(1), "not before the grace");
    }

    /// Guards health from evidence: every passive report counted as a
    /// failed probe, so a burst of client traffic (hedges lost to a faster
    /// node, 30 slow reads at once) took out nodes that answered every probe.
    #[test]
    fn passive_reports_count_beside_failed_probes_only_and_once_per_interval() {
        let cfg = HealthConfig::default();
        assert_eq!(cfg.fall, 3);
        // A node that answers its probes stays up, whatever is reported.
        let health = Health::new(1);
        let mut h = Hysteresis::new();
        for _ in 0..10 {
            for _ in 0..100 {
                health.report_connect_failure(0);
            }
            health.record(0, &mut h, true, None, &cfg);
            assert!(health.is_up(0));
        }
        assert_eq!(health.passive_failures(0), 1000);
        // One that fails them falls a step faster: one passive failure per
        // interval at most, however many were reported.
        let health = Health::new(1);
        let mut h = Hysteresis::new();
        for _ in 0..50 {
            health.report_connect_failure(0);
        }
        health.record(0, &mut h, false, None, &cfg);
        assert!(health.is_up(0), "two failures are not three");
        health.report_connect_failure(0);
        health.record(0, &mut h, false, None, &cfg);
        assert!(!health.is_up(0));
        assert_eq!(health.down_reason(0), "failed its health checks");
    }

    /// Guards the best head and finality: they were a maximum over all
    /// nodes and all time (`fetch_max`), so one node reporting `0xffff…`
    /// marked every correct node as lagging until a reload.
    #[test]
    fn one_node_cannot_decide_the_best_head_or_finality_for_all() {
        let health = Health::new(3);
        let cfg = HealthConfig::default();
        let mut h = [Hysteresis::new(); 3];
        for (i, head) in [100, 101, 100].into_iter().enumerate() {
            health.record(i, &mut h[i], true, Some(head), &cfg);
        }
        health.record(2, &mut h[2], true, Some(u64::MAX), &cfg);
        assert_eq!(health.head(2), 100, "an impossible head is ignored");
        health.record(2, &mut h[2], true, Some(5_000_000), &cfg);
        assert_eq!(health.head(2), 100, "so is a jump far ahead of the others");
        assert_eq!(health.best(), 101);
        assert!((0..3).all(|i| health.is_up(i)));
        // Finality per node; the pool's view from the nodes that are up.
        health.record_finalized(0, 98, Some("0xa"));
        health.record_finalized(1, 99, Some("0xb"));
        health.record_finalized(2, 200, None);
        assert_eq!(health.finalized_of(2), 0, "not above its own head");
        assert_eq!((health.finalized(), health.finalized_of(0)), (99, 98));
        assert_eq!(health.finalized_hash(), Some((99, "0xb".into())));
        // Node 1 goes down: the view follows, it is not a maximum over time.
        for _ in 0..3 {
            health.record(1, &mut h[1], false, None, &cfg);
        }
        assert_eq!(health.finalized(), 98);
        assert_eq!(health.best(), 100);
    }

    #[test]
    fn a_node_of_another_chain_is_taken_out() {
        let health = Health::new(3);
        let cfg = HealthConfig::default();
        let mut h = [Hysteresis::new(); 3];
        for (i, id) in ["0xaa", "0xbb", "0xaa"].into_iter().enumerate() {
            health.record_identity(i, id);
        }
        assert_eq!(health.chain().as_deref(), Some("0xaa"), "most nodes");
        for _ in 0..3 {
            for (i, hy) in h.iter_mut().enumerate() {
                health.record(i, hy, true, Some(100), &cfg);
            }
        }
        assert!(health.is_up(0) && health.is_up(2));
        assert!(!health.is_up(1) && health.on_other_chain(1));
        // Configured, the chain is not voted on.
        let pinned = Health::for_chain(1, Some("0xcc".into()));
        pinned.record_identity(0, "0xaa");
        let mut one = Hysteresis::new();
        for _ in 0..3 {
            pinned.record(0, &mut one, true, Some(1), &cfg);
        }
        assert!(pinned.on_other_chain(0) && !pinned.is_up(0));
    }

    #[test]
    fn heads_are_believed_within_a_jump() {
        assert!(plausible(100, 0, 0), "the first head of a lone node");
        assert!(plausible(100 + MAX_JUMP, 100, 0));
        assert!(!plausible(101 + MAX_JUMP, 100, 0));
        assert!(
            plausible(5_000_000, 0, 4_999_000),
            "a new node, as the others"
        );
        assert!(!plausible(5_000_000, 0, 100));
        assert!(!plausible(u64::MAX, 0, 0));
    }

    #[test]
    fn a_worker_that_never_takes_hashes_holds_a_bounded_feed() {
        let health = Health::new(1);
        let feed = health.subscribe_hashes();
        for n in 0..(HashFeed::CAP as u64 + 500) {
            health.publish_hash(&format!("0x{n:064x}"), n);
        }
        assert_eq!(feed.len(), HashFeed::CAP);
        let got = feed.take();
        assert_eq!(
            got.back().unwrap().1,
            HashFeed::CAP as u64 + 499,
            "the newest kept"
        );
        assert!(feed.is_empty());
    }
}
