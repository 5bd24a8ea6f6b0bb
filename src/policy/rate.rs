//! Token buckets per client address, in per-core shards that forget
//! refilled buckets (address spraying cannot grow memory without bound).

use std::net::IpAddr;
use std::time::Instant;

use ahash::AHashMap;

/// A token bucket: `rate` tokens per second, at most `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Rate and burst of a bucket kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rate: f64,
    pub burst: f64,
}

impl Bucket {
    pub fn full(limit: RateLimit, now: Instant) -> Bucket {
        Bucket {
            tokens: limit.burst,
            last: now,
        }
    }

    /// Refill for the time passed, then take `cost` if there is that much.
    /// `Err(wait)`: how long until there would be.
    pub fn take(
        &mut self,
        cost: f64,
        limit: RateLimit,
        now: Instant,
    ) -> Result<(), std::time::Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.rate).min(limit.burst);
        self.last = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            let missing = cost - self.tokens;
            Err(std::time::Duration::from_secs_f64(
                missing / limit.rate.max(1e-9),
            ))
        }
    }

    /// True when the bucket would be full by `now` (so it can be forgotten).
    fn refilled(&self, limit: RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * limit.rate >= limit.burst
    }
}

/// One worker's buckets, keyed by client IP. Never shared across cores.
#[derive(Debug)]
pub struct Shard {
    limit: RateLimit,
    buckets: AHashMap<IpAddr, Bucket>,
    /// Sweep refilled buckets when the map reaches this size.
    sweep_at: usize,
}

/// Buckets kept before refilled ones are swept out.
pub const SWEEP_MIN: usize = 4096;

impl Shard {
    pub fn new(limit: RateLimit) -> Shard {
        Shard {
            limit,
            buckets: AHashMap::new(),
            sweep_at: SWEEP_MIN,
        }
    }

    /// New rates (a reload): buckets keep their tokens, up to the new burst.
    pub fn set_limit(&mut self, limit: RateLimit) {
        self.limit = limit;
    }

    /// Charge `cost` to `ip`.
    pub fn take(&mut self, ip: IpAddr, cost: f64, now: Instant) -> Result<(), std::time::Duration> {
        if self.buckets.len() >= self.sweep_at {
            let limit = self.limit;
            self.buckets.retain(|_, b| !b.refilled(limit, now));
            // Amortized: sweep again when the live set has doubled.
            self.sweep_at = (self.buckets.len() * 2).max(SWEEP_MIN);
        }
        let limit = self.limit;
        self.buckets
            .entry(ip)
            .or_insert_with(|| Bucket::full(limit, now))
            .take(cost, limit, now)
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}
