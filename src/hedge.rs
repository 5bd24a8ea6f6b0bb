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
//! Only reads are hedged: never a submission or another write
//! ([`crate::jsonrpc::call::writes`]), a subscription, or a call bound to
//! the node that holds its subscription (`chainHead_*`).

use std::time::Duration;

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
