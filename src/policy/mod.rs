//! Admission control (the `[admission]` section): who may connect, which methods they may call, and how
//! fast, per core and without locks.
//!
//! - Rate limits are token buckets per client IP in each worker's own
//!   [`Shard`] (an ahash map, never shared). Each source address is steered
//!   to one worker at accept time ([`steer_by_source`], a reuseport BPF
//!   program hashing the source address), so a direct client's bucket lives in
//!   exactly one shard and the limit holds exactly whatever core its
//!   connections land on. Behind a trusted proxy the client address comes
//!   from `X-Forwarded-For` and connections from one proxy all land on one
//!   core, so the limit still holds; it is per core only if several proxies
//!   with different addresses carry one client.
//! - Buckets expire: a bucket that has refilled is forgotten, and the map is
//!   swept when it grows, so address spraying cannot grow memory without bound.
//! - Methods: a `safe` preset like a node's `--rpc-methods Safe`, plus exact
//!   names and `*` prefixes to allow or deny.
//! - The client address: the socket's, or `X-Forwarded-For` only through the
//!   configured number of trusted proxy hops.

//!
//! Per-session limits (requests in flight, subscriptions) are the relay's
//! (`relay::limits`): they count a session's own state.

mod client;
pub mod keys;
mod methods;
mod origin;
mod rate;
pub mod report;
pub mod usage;

pub use client::*;
pub use methods::*;
pub use origin::*;
pub use rate::*;

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Instant;

use ahash::AHashMap;

/// Why a call is refused, and the status an HTTP client gets for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// Over the rate limit; try again after this long.
    RateLimited(std::time::Duration),
    /// An API key's quota is used up until its period ends, this long from now.
    QuotaExceeded(std::time::Duration),
    /// A method the policy refuses.
    Denied,
    /// More requests in one batch than allowed.
    BatchTooLarge,
}

impl Refusal {
    pub fn http_status(self) -> u16 {
        match self {
            Refusal::RateLimited(_) | Refusal::QuotaExceeded(_) => 429,
            Refusal::Denied | Refusal::BatchTooLarge => 200,
        }
    }
}

/// A core's rate-limit shards and per-address connection counts.
type State = (
    Rc<RefCell<Shard>>,
    Rc<RefCell<AHashMap<IpAddr, u32>>>,
    Rc<RefCell<Shard>>,
);

/// One worker's admission state: its rate-limit shard and connection counts.
pub struct AdmissionCtx {
    limit: Option<RateLimit>,
    costs: AHashMap<Vec<u8>, f64>,
    policy: MethodPolicy,
    max_batch: usize,
    /// The buckets and counts are the core's, kept across reloads
    /// ([`AdmissionCtx::renew`]): a reload resets no limit.
    shard: Rc<RefCell<Shard>>,
    max_connections: usize,
    max_connections_per_ip: usize,
    conns_by_ip: Rc<RefCell<AHashMap<IpAddr, u32>>>,
    conn_limit: Option<RateLimit>,
    conn_shard: Rc<RefCell<Shard>>,
    /// Open connections and refusals, over all workers (touched per
    /// connection and per refusal, never per admitted call).
    pub shared: std::sync::Arc<SharedCounts>,
    pub origins: Vec<String>,
    pub trusted_hops: usize,
    pub max_subscriptions: u32,
    pub max_inflight: usize,
}

impl AdmissionCtx {
    /// Build a worker's state; `shared` is common to all workers (touched once
    /// per connection and per refusal, never per admitted call).
    pub fn new(
        cfg: &crate::config::AdmissionSection,
        shared: std::sync::Arc<SharedCounts>,
    ) -> AdmissionCtx {
        let none = RateLimit {
            rate: 1.0,
            burst: 1.0,
        };
        let state = (
            Rc::new(RefCell::new(Shard::new(none))),
            Rc::default(),
            Rc::new(RefCell::new(Shard::new(none))),
        );
        AdmissionCtx::with_state(cfg, shared, state)
    }

    /// The settings of a reloaded configuration over this core's buckets
    /// and connection counts (the new rates apply to them at once, for the
    /// sessions of every generation).
    pub fn renew(&self, cfg: &crate::config::AdmissionSection) -> AdmissionCtx {
        let state = (
            self.shard.clone(),
            self.conns_by_ip.clone(),
            self.conn_shard.clone(),
        );
        AdmissionCtx::with_state(cfg, self.shared.clone(), state)
    }

    fn with_state(
        cfg: &crate::config::AdmissionSection,
        shared: std::sync::Arc<SharedCounts>,
        (shard, conns_by_ip, conn_shard): State,
    ) -> AdmissionCtx {
        let conn_limit = (cfg.connection_rate > 0.0).then_some(RateLimit {
            rate: cfg.connection_rate,
            burst: if cfg.connection_burst > 0.0 {
                cfg.connection_burst
            } else {
                cfg.connection_rate
            },
        });
        let limit = (cfg.rate > 0.0).then_some(RateLimit {
            rate: cfg.rate,
            burst: if cfg.burst > 0.0 { cfg.burst } else { cfg.rate },
        });
        if let Some(l) = limit {
            shard.borrow_mut().set_limit(l);
        }
        if let Some(l) = conn_limit {
            conn_shard.borrow_mut().set_limit(l);
        }
        AdmissionCtx {
            limit,
            costs: cfg
                .method_costs
                .iter()
                .map(|(m, c)| (m.as_bytes().to_vec(), *c))
                .collect(),
            policy: MethodPolicy::new(
                cfg.methods == "safe",
                cfg.allow_methods.clone(),
                cfg.deny_methods.clone(),
            ),
            max_batch: cfg.max_batch,
            shard,
            max_connections: cfg.max_connections,
            max_connections_per_ip: cfg.max_connections_per_ip,
            conns_by_ip,
            conn_limit,
            conn_shard,
            shared,
            origins: cfg.origins.clone(),
            trusted_hops: cfg.trusted_proxy_hops,
            max_subscriptions: cfg.max_subscriptions_per_connection,
            max_inflight: cfg.max_inflight_per_connection,
        }
    }

    /// True when each message must be looked at (a rate limit, a method
    /// policy or a batch limit is on).
    pub fn inspects(&self) -> bool {
        self.limit.is_some()
            || !self.policy.is_open()
            || self.max_batch > 0
            || self.max_subscriptions > 0
            || self.max_inflight > 0
    }

    /// True when limits are kept per client address (so steering matters).
    pub fn per_ip(cfg: &crate::config::AdmissionSection) -> bool {
        cfg.rate > 0.0 || cfg.max_connections_per_ip > 0 || cfg.connection_rate > 0.0
    }

    /// Admit a new connection from `ip`, or say which limit refuses it.
    pub fn admit(self: &std::rc::Rc<Self>, ip: IpAddr) -> Result<ConnGuard, (u16, &'static str)> {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.shared.connections.fetch_add(1, Relaxed) + 1;
        let guard = ConnGuard {
            ctx: self.clone(),
            ip,
        };
        let mut by_ip = self.conns_by_ip.borrow_mut();
        let n = by_ip.entry(ip).or_insert(0);
        *n += 1;
        let n = *n;
        drop(by_ip);
        if self.max_connections > 0 && total > self.max_connections {
            self.shared.rejections.count(Reason::ConnectionsTotal);
            return Err((
                503,
                "the gateway's connection limit is reached (admission.max_connections)",
            ));
        }
        if self.max_connections_per_ip > 0 && n as usize > self.max_connections_per_ip {
            self.shared.rejections.count(Reason::ConnectionsPerIp);
            return Err((
                429,
                "too many connections from your address (admission.max_connections_per_ip)",
            ));
        }
        if let Some(limit) = self.conn_limit {
            let _ = limit;
            if self
                .conn_shard
                .borrow_mut()
                .take(ip, 1.0, Instant::now())
                .is_err()
            {
                self.shared.rejections.count(Reason::ConnectionRate);
                return Err((
                    429,
                    "too many new connections from your address (admission.connection_rate)",
                ));
            }
        }
        Ok(guard)
    }

    /// Check one message (object or batch) from `ip`, with API key `key`:
    /// its methods, batch size, and the key's rate and quota (charged when
    /// admitted), or, without a key, the address's rate. On refusal, the
    /// JSON-RPC answer for it (`None` when it has no ids: notifications get
    /// no answer).
    pub fn check_call(
        &self,
        ip: IpAddr,
        call: &crate::jsonrpc::Call<'_>,
        now: Instant,
        key: Option<&keys::Key>,
    ) -> Result<(), (Refusal, Option<String>)> {
        let batch = call.is_batch();
        let answer = |f: &dyn Fn(&crate::jsonrpc::Request<'_>) -> String| -> Option<String> {
            let parts: Vec<String> = call.requests().filter(|p| p.id.is_some()).map(f).collect();
            match (parts.is_empty(), batch) {
                (true, _) => None,
                (false, true) => Some(format!("[{}]", parts.join(","))),
                (false, false) => parts.into_iter().next(),
            }
        };
        if batch && self.max_batch > 0 && call.len() > self.max_batch {
            self.shared.rejections.count(Reason::BatchTooLarge);
            let why = format!(
                "batch of {} requests is over the limit of {}",
                call.len(),
                self.max_batch
            );
            return Err((
                Refusal::BatchTooLarge,
                answer(&|p| crate::jsonrpc::error::error(p.reply_id(), -32600, &why, None)),
            ));
        }
        let denied = |p: &crate::jsonrpc::Request<'_>| {
            p.method()
                .is_some_and(|m| !self.policy.allows(m) || key.is_some_and(|k| !k.allows_method(m)))
        };
        if call.requests().any(denied) {
            self.shared.rejections.count(Reason::MethodDenied);
            if let Some(k) = key {
                k.usage.refused(usage::KeyReason::Method);
            }
            return Err((
                Refusal::Denied,
                answer(&|p| {
                    if denied(p) {
                        crate::jsonrpc::error::error(
                            p.reply_id(),
                            -32601,
                            "Method not found (not allowed here)",
                            None,
                        )
                    } else {
                        crate::jsonrpc::error::error(
                            p.reply_id(),
                            -32600,
                            "batch refused: it has a method that is not allowed",
                            None,
                        )
                    }
                }),
            ));
        }
        if let Some(k) = key {
            return match k.charge(call, now) {
                Ok(()) => Ok(()),
                Err(keys::KeyLimit::Rate(wait)) => {
                    self.shared.rejections.count(Reason::RateLimited);
                    Err((Refusal::RateLimited(wait), answer(&|p| rate_error(p, wait))))
                }
                Err(keys::KeyLimit::Quota { quota, resets }) => {
                    self.shared.rejections.count(Reason::Quota);
                    let data = format!(
                        r#"{{"quota":{quota},"period":"{}","resets":"{}"}}"#,
                        match k.spec.period {
                            crate::config::keys::Period::Day => "day",
                            crate::config::keys::Period::Month => "month",
                        },
                        usage::rfc3339(resets)
                    );
                    let wait = std::time::Duration::from_secs(
                        resets.saturating_sub(usage::unix_now()).max(1),
                    );
                    Err((
                        Refusal::QuotaExceeded(wait),
                        answer(&|p| {
                            crate::jsonrpc::error::error(
                                p.reply_id(),
                                -32005,
                                "quota exceeded",
                                Some(&data),
                            )
                        }),
                    ))
                }
            };
        }
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let cost: f64 = call
            .requests()
            .map(|p| {
                p.method()
                    .and_then(|m| self.costs.get(m).copied())
                    .unwrap_or(1.0)
            })
            .sum::<f64>()
            .max(1.0);
        // In a cluster, each gateway admits its share of an address's rate:
        // a call costs as many tokens as there are gateways (at most the burst).
        let cost = (cost * f64::from(usage::instances())).min(limit.burst.max(cost));
        match self.shard.borrow_mut().take(ip, cost, now) {
            Ok(()) => Ok(()),
            Err(wait) => {
                self.shared.rejections.count(Reason::RateLimited);
                Err((Refusal::RateLimited(wait), answer(&|p| rate_error(p, wait))))
            }
        }
    }

    /// Buckets held now in this worker's shard.
    pub fn buckets(&self) -> usize {
        self.shard.borrow().len()
    }
}

/// The answer to request `p` over a rate: -32005, with when to try again.
fn rate_error(p: &crate::jsonrpc::Request<'_>, wait: std::time::Duration) -> String {
    let ms = wait.as_millis().max(1);
    let data = format!(r#"{{"retry_after_ms":{ms}}}"#);
    crate::jsonrpc::error::error(p.reply_id(), -32005, "rate limit exceeded", Some(&data))
}

/// Why something was refused, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RateLimited,
    MethodDenied,
    BatchTooLarge,
    ConnectionsTotal,
    ConnectionsPerIp,
    ConnectionRate,
    Origin,
    Subscriptions,
    Inflight,
    /// A client on a shared connection that did not read its answers (1008).
    SlowReader,
    /// An API key's quota was used up.
    Quota,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::RateLimited,
        Reason::MethodDenied,
        Reason::BatchTooLarge,
        Reason::ConnectionsTotal,
        Reason::ConnectionsPerIp,
        Reason::ConnectionRate,
        Reason::Origin,
        Reason::Subscriptions,
        Reason::Inflight,
        Reason::SlowReader,
        Reason::Quota,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::RateLimited => "rate_limited",
            Reason::MethodDenied => "method_denied",
            Reason::BatchTooLarge => "batch_too_large",
            Reason::ConnectionsTotal => "connections_total",
            Reason::ConnectionsPerIp => "connections_per_ip",
            Reason::ConnectionRate => "connection_rate",
            Reason::Origin => "origin",
            Reason::Subscriptions => "subscriptions",
            Reason::Inflight => "inflight",
            Reason::SlowReader => "slow_reader",
            Reason::Quota => "quota",
        }
    }
}

/// Counts shared by all workers.
#[derive(Debug, Default)]
pub struct SharedCounts {
    pub connections: std::sync::atomic::AtomicUsize,
    pub rejections: Rejections,
    /// Node answers on shared connections that match no request in flight.
    pub unmatched_answers: std::sync::atomic::AtomicU64,
}

/// Refusal counters shared by all workers. Incremented only when refusing,
/// so the atomics are never on the path of an admitted call.
#[derive(Debug, Default)]
pub struct Rejections {
    counts: [std::sync::atomic::AtomicU64; Reason::ALL.len()],
}

impl Rejections {
    pub fn count(&self, r: Reason) {
        self.counts[r as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self, r: Reason) -> u64 {
        self.counts[r as usize].load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Holds a connection's place in the counts; released when dropped.
pub struct ConnGuard {
    ctx: std::rc::Rc<AdmissionCtx>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.ctx
            .shared
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut by_ip = self.ctx.conns_by_ip.borrow_mut();
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Time a TLS handshake, request head or request body may take before its
/// minimum rate (`limits.handshake_min_rate`) applies.
pub const MIN_RATE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A connection's place in the admission counts, and its client address.
pub struct Admitted {
    pub _guard: ConnGuard,
    pub ip: std::net::IpAddr,
    /// The API key it came with, and its place in the key's connection count.
    pub key: Option<keys::Held>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limit = RateLimit {
            rate: 20.0,
            burst: 5.0,
        };
        let t0 = Instant::now();
        let mut b = Bucket::full(limit, t0);
        let taken = (0..10).filter(|_| b.take(1.0, limit, t0).is_ok()).count();
        assert_eq!(taken, 5);
        // 100 requests over 2 s at 100/s: 40 refilled tokens.
        let mut ok = 0;
        for i in 1..=200 {
            if b.take(1.0, limit, t0 + Duration::from_millis(i * 10))
                .is_ok()
            {
                ok += 1;
            }
        }
        assert!((39..=41).contains(&ok), "{ok}");
        let wait = b
            .take(10.0, limit, t0 + Duration::from_millis(2000))
            .unwrap_err();
        assert!(wait > Duration::from_millis(400), "{wait:?}");
    }

    #[test]
    fn shards_forget_refilled_buckets() {
        let limit = RateLimit {
            rate: 10.0,
            burst: 10.0,
        };
        let mut s = Shard::new(limit);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + i));
            let _ = s.take(ip, 1.0, t0 + Duration::from_millis(i as u64 / 10));
        }
        // Address spraying: at most the buckets of the last ~second stay.
        assert!(s.len() < 20_000, "{}", s.len());
    }

    #[test]
    fn methods_by_preset_allow_and_deny() {
        let p = MethodPolicy::new(true, vec![], vec!["state_trace*".into()]);
        assert!(p.allows(b"system_health"));
        assert!(!p.allows(b"author_insertKey"));
        assert!(!p.allows(b"admin_peers"));
        assert!(!p.allows(b"state_traceBlock"));
        let only = MethodPolicy::new(false, vec!["eth_*".into()], vec![]);
        assert!(only.allows(b"eth_call"));
        assert!(!only.allows(b"net_version"));
        assert!(MethodPolicy::default().is_open());
    }

    #[test]
    fn forwarded_for_is_trusted_only_through_configured_hops() {
        let sock: IpAddr = "192.0.2.1".parse().unwrap();
        let xff = Some(&b"203.0.113.7, 198.51.100.2"[..]);
        assert_eq!(
            client_ip(sock, xff, 0),
            sock,
            "untrusted: the socket's address"
        );
        assert_eq!(
            client_ip(sock, xff, 1),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(sock, xff, 2),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(sock, xff, 3), sock, "fewer entries than hops");
        assert_eq!(client_ip(sock, Some(b"garbage"), 1), sock);
        let fwd = Some(&b"for=203.0.113.7;proto=https, for=\"[2001:db8:cafe::17]:4711\""[..]);
        assert_eq!(
            client_ip_from(sock, xff, fwd, 1),
            "2001:db8:cafe::17".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip_from(sock, None, fwd, 2),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip_from(sock, None, fwd, 0), sock);
        assert_eq!(
            client_ip_from(sock, None, Some(b"for=\"198.51.100.2:80\""), 1),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
    }
}
