//! Hedged reads, sans-io: when a node has not answered a read within a
//! delay learned from its recent answer times, the same read goes to a
//! second node and the first answer wins (eRPC's hedging; what a
//! provider's customers see as "the RPC never hangs").
//!
//! - [`Hedge`]: the setting (`pool.hedge`): off, adaptive, or a fixed delay.
//! - [`Estimate`]: a node's recent answer time as TCP keeps a round-trip
//!   time (RFC 6298: a smoothed mean and mean deviation, 1/8 and 1/4 gains);
//!   the hedge delay is mean + 4 deviations (the retransmission timeout's
//!   rule: a few percent of answers come later), at least a floor.
//! - [`Budget`]: at most a fraction of a worker's requests hedged (plus a
//!   small burst), so a pool that is slow everywhere does not double its
//!   own load.
//!
//! - [`SafeReads`]: what may be asked twice. An allowlist: the reads every
//!   node answers alike however often it is asked ([`SAFE_READS`], plus
//!   `pool.hedge_methods`). Everything else is sent once: writes of every
//!   kind (a bundle, a user operation, `engine_*`), node-local cursors
//!   (`eth_getFilterChanges`), subscriptions and the calls bound to one
//!   (`chainHead_*`).
//!
//! What a hedge says of the node it left behind: nothing. A copy that
//! answered first shows that the other node was faster this once, not
//! that the first is failing (see the health module: a node fails on
//! errors, timeouts and silence on a busy connection).

use std::sync::Arc;
use std::time::Duration;

use crate::jsonrpc::{Request, Sub};

/// Reads that may be asked of a second node: answered alike by every node
/// of the chain (at the same block), with no effect and no state on the
/// node. `*` ends a prefix.
pub const SAFE_READS: &[&str] = &[
    // Ethereum.
    "eth_call",
    "eth_estimateGas",
    "eth_createAccessList",
    "eth_getBalance",
    "eth_getCode",
    "eth_getStorageAt",
    "eth_getProof",
    "eth_getTransactionCount",
    "eth_getBlockBy*",
    "eth_getBlockReceipts",
    "eth_getBlockTransactionCountBy*",
    "eth_getTransactionBy*",
    "eth_getTransactionReceipt",
    "eth_getUncle*",
    "eth_getLogs",
    "eth_blockNumber",
    "eth_chainId",
    "eth_gasPrice",
    "eth_maxPriorityFeePerGas",
    "eth_blobBaseFee",
    "eth_feeHistory",
    "eth_syncing",
    "net_version",
    "web3_clientVersion",
    // Substrate.
    "state_call",
    "state_get*",
    "state_queryStorageAt",
    "chain_getBlock",
    "chain_getBlockHash",
    "chain_getHeader",
    "chain_getFinalizedHead",
    "chain_getFinalisedHead",
    "system_health",
    "system_chain",
    "system_chainType",
    "system_name",
    "system_version",
    "system_properties",
    "system_accountNextIndex",
    "rpc_methods",
    "payment_query*",
    "archive_v1_body",
    "archive_v1_call",
    "archive_v1_header",
    "archive_v1_hashByHeight",
    "archive_v1_genesisHash",
    "archive_v1_finalizedHeight",
    "chainSpec_v1_*",
];

fn matches(pattern: &str, method: &[u8]) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => method.starts_with(prefix.as_bytes()),
        None => method == pattern.as_bytes(),
    }
}

/// What may be hedged: [`SAFE_READS`] and the configured extra methods
/// (`pool.hedge_methods`, exact names or `*` prefixes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SafeReads {
    extra: Arc<[String]>,
}

impl SafeReads {
    pub fn new(extra: &[String]) -> SafeReads {
        SafeReads {
            extra: extra.into(),
        }
    }

    /// Whether `method` may be asked of a second node.
    pub fn allows(&self, method: &[u8]) -> bool {
        SAFE_READS.iter().any(|p| matches(p, method))
            || self.extra.iter().any(|p| matches(p, method))
    }

    /// Whether this request may be asked of a second node: valid, no
    /// subscription, and a safe read.
    pub fn hedgeable(&self, req: &Request<'_>) -> bool {
        req.is_valid() && req.sub == Sub::None && req.method().is_some_and(|m| self.allows(m))
    }
}

/// `pool.hedge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hedge {
    Off,
    /// From each node's recent answer times, at least this long.
    Adaptive {
        floor: Duration,
    },
    Fixed(Duration),
}

impl Hedge {
    /// `"auto"`, `"off"`, or a delay in milliseconds.
    pub fn parse(s: &str, floor: Duration) -> Option<Hedge> {
        match s {
            "auto" => Some(Hedge::Adaptive { floor }),
            "off" => Some(Hedge::Off),
            ms => ms
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(|ms| Hedge::Fixed(Duration::from_millis(ms))),
        }
    }

    /// How long to wait for a node with this estimate before hedging
    /// (`None`: never), at most `cap`.
    pub fn delay(self, estimate: Estimate, cap: Duration) -> Option<Duration> {
        let d = match self {
            Hedge::Off => return None,
            Hedge::Fixed(d) => d,
            Hedge::Adaptive { floor } => {
                let rto = estimate.mean_us.saturating_add(4 * estimate.dev_us);
                Duration::from_micros(rto).max(floor)
            }
        };
        Some(d.min(cap))
    }
}

/// A node's recent answer time (µs): smoothed mean and mean deviation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub mean_us: u64,
    pub dev_us: u64,
}

impl Estimate {
    /// After one more answer that took `sample` (RFC 6298 §2).
    pub fn update(self, sample: Duration) -> Estimate {
        let r = sample.as_micros().min(u64::MAX as u128 / 8) as u64;
        if self.mean_us == 0 {
            return Estimate {
                mean_us: r.max(1),
                dev_us: r / 2,
            };
        }
        let dev = (3 * self.dev_us + self.mean_us.abs_diff(r)) / 4;
        let mean = (7 * self.mean_us + r) / 8;
        Estimate {
            mean_us: mean.max(1),
            dev_us: dev,
        }
    }
}

/// A worker's allowance of hedges: `fraction` of its hedgeable requests,
/// with a burst of [`Budget::BURST`].
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    tokens: f64,
}

impl Budget {
    pub const BURST: f64 = 10.0;

    pub fn new() -> Budget {
        Budget {
            tokens: Self::BURST,
        }
    }

    /// A hedgeable request came: it earns `fraction` of a hedge.
    pub fn earn(&mut self, fraction: f64) {
        self.tokens = (self.tokens + fraction).min(Self::BURST);
    }

    /// Whether a hedge may be sent now (and takes it).
    pub fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Hedging as a core applies it, to every transport alike: the setting,
/// what may be hedged, and the core's one budget (shared by HTTP requests
/// and shared WebSocket connections: `pool.hedge_budget` is the core's).
#[derive(Debug, Clone)]
pub struct Hedging {
    pub hedge: Hedge,
    pub reads: SafeReads,
    /// The fraction of a hedgeable request each one earns.
    fraction: f64,
    budget: std::rc::Rc<std::cell::Cell<Budget>>,
}

impl Hedging {
    pub fn new(hedge: Hedge, reads: SafeReads, fraction: f64) -> Hedging {
        Hedging {
            hedge,
            reads,
            fraction,
            budget: Default::default(),
        }
    }

    /// The same rule with another generation's settings, on this core's budget.
    pub fn renew(&self, hedge: Hedge, reads: SafeReads, fraction: f64) -> Hedging {
        Hedging {
            hedge,
            reads,
            fraction,
            budget: self.budget.clone(),
        }
    }

    /// Whether a request to a node made of `requests` may be hedged: hedging
    /// is on and every one is a safe read. It earns its share of a hedge.
    pub fn arm<'r, 'a: 'r>(&self, mut requests: impl Iterator<Item = &'r Request<'a>>) -> bool {
        let yes = self.hedge != Hedge::Off && requests.all(|r| self.reads.hedgeable(r));
        if yes {
            let mut b = self.budget.get();
            b.earn(self.fraction);
            self.budget.set(b);
        }
        yes
    }

    /// A hedge is due: whether the budget allows it (and takes it).
    pub fn take(&self) -> bool {
        let mut b = self.budget.get();
        let yes = b.take();
        self.budget.set(b);
        yes
    }

    /// How long to wait for a node with this estimate (see [`Hedge::delay`]).
    pub fn delay(&self, estimate: Estimate, cap: Duration) -> Option<Duration> {
        self.hedge.delay(estimate, cap)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_follows_the_node_and_has_a_floor() {
        let floor = Duration::from_millis(20);
        let h = Hedge::parse("auto", floor).unwrap();
        let mut e = Estimate::default();
        for _ in 0..50 {
            e = e.update(Duration::from_millis(2));
        }
        let cap = Duration::from_secs(15);
        assert_eq!(h.delay(e, cap), Some(floor), "a fast node: the floor");
        for _ in 0..50 {
            e = e.update(Duration::from_millis(100));
        }
        let d = h.delay(e, cap).unwrap();
        assert!(
            d >= Duration::from_millis(100) && d < Duration::from_millis(200),
            "{d:?}"
        );
        // Jittery answers widen it.
        let mut j = Estimate::default();
        for i in 0..100 {
            j = j.update(Duration::from_millis(if i % 2 == 0 { 10 } else { 90 }));
        }
        assert!(h.delay(j, cap).unwrap() > Duration::from_millis(150));
        assert_eq!(Hedge::parse("off", floor).unwrap().delay(e, cap), None);
        assert_eq!(
            Hedge::parse("75", floor).unwrap().delay(e, cap),
            Some(Duration::from_millis(75))
        );
        assert_eq!(Hedge::parse("x", floor), None);
        assert_eq!(
            h.delay(e, Duration::from_millis(50)),
            Some(Duration::from_millis(50))
        );
    }

    #[test]
    fn only_safe_reads_are_hedged() {
        let reads = SafeReads::new(&["my_read".into(), "mine_*".into()]);
        let req = |m: &str| {
            let msg = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{m}","params":[]}}"#);
            let call = crate::jsonrpc::Call::parse(msg.as_bytes());
            reads.hedgeable(call.single().unwrap())
        };
        for yes in [
            "eth_call",
            "eth_getBlockByNumber",
            "eth_getLogs",
            "state_getStorage",
            "system_health",
            "chain_getBlockHash",
            "my_read",
            "mine_anything",
        ] {
            assert!(req(yes), "{yes}");
        }
        for no in [
            "eth_getFilterChanges",
            "eth_getFilterLogs",
            "eth_newFilter",
            "eth_sendRawTransaction",
            "eth_sendRawTransactionConditional",
            "eth_sendRawTransactionSync",
            "eth_sendBundle",
            "eth_sendPrivateTransaction",
            "eth_sendUserOperation",
            "engine_newPayloadV3",
            "author_submitExtrinsic",
            "chainHead_v1_call",
            "chain_subscribeNewHeads",
            "state_subscribeStorage",
            "eth_subscribe",
            "my_readx",
        ] {
            assert!(!req(no), "{no}");
        }
    }

    #[test]
    fn the_budget_holds_when_every_request_wants_a_hedge() {
        let mut b = Budget::new();
        let mut sent = 0;
        for _ in 0..1000 {
            b.earn(0.1);
            if b.take() {
                sent += 1;
            }
        }
        assert!((100..=110).contains(&sent), "{sent}");
    }
}
