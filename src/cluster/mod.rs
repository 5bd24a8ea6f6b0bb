//! Several gateways on one Redis (`[cluster]`): keys' budgets, usage and
//! revocations shared, with a stated bound, and nothing lost when Redis is
//! down.
//!
//! One sync thread per process owns the Redis connection (the `redis`
//! crate's synchronous client, with timeouts); workers never wait on it.
//! Every `sync_ms` it:
//!
//! - announces this instance (`ZADD <p>:instances <now> <instance>`) and
//!   counts the live ones (seen within [`alive`]): each gateway admits
//!   `rate / live` of an address's rate
//!   ([`crate::policy::usage::set_instances`]), and of a key's rate the
//!   share the key's script gives it by where the calls come (see
//!   [`RESERVE`]);
//! - publishes each key's figures for its period, this instance's own
//!   totals (`HSET <p>:usage:<key>:<period start> <instance> "calls credits
//!   notifications bytes_in bytes_out sessions"`), and reads the others'
//!   into [`crate::policy::usage::Others`]: a quota is checked against
//!   every gateway's credits, `max_connections` against every gateway's
//!   sessions, and `/usage` reports the sum;
//! - pushes revocations asked of it (`POST /keys/<name>/disable`) into
//!   `<p>:disabled`, publishes them on `<p>:revocations` (a listener
//!   thread on every gateway takes them at once), and reads that set: a
//!   key disabled anywhere is revoked here at once, or within `sync_ms`
//!   when the push was missed (its sessions close at their next look,
//!   500 ms).
//!
//! Each instance publishes its own cumulative totals (a field it alone
//! writes), so a retry, a Redis that restarts empty, or an instance that
//! was cut off for a while neither loses nor doubles a count: the next
//! sync writes them all again. Redis down: the thread says so once, counts
//! a failure per attempt, reconnects with backoff (up to 5 s), and the
//! workers go on with the last figures they had: a local share (the rate
//! divided by the instances last seen alive; the quota less what the
//! others had used), never open, never closed.

mod link;
pub use link::open;
pub mod cache;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::cluster::ClusterConfig;
use crate::policy::usage::{set_instances, Book, Usage};

/// A revocation (or its end) asked of this instance, to push to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Disable(String),
    Enable(String),
}

/// The sync thread's handle: what the endpoints ask of it, and its state.
#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    commands: Mutex<Vec<Command>>,
    /// Rung when a command is asked: the sync thread sends it at once.
    asked: std::sync::Condvar,
    /// Redis answered the last sync.
    up: AtomicBool,
    /// Syncs that failed (`ringway_cluster_sync_failures_total`).
    failures: AtomicU64,
    /// Live instances last seen (this one included).
    instances: AtomicU32,
    /// Key names disabled through the cluster, as this instance knows them
    /// (pushed again when Redis comes back empty).
    disabled: Mutex<std::collections::BTreeSet<String>>,
    /// The way to the second-level cache's thread (`[cluster] cache`).
    pub cache: Option<crate::cache::second::Link>,
    pub cache_counts: Arc<cache::CacheCounts>,
}

/// Publishes one instance's figures for a key and period, with its
/// reservation of the quota and its share of the rate, atomically against
/// the others':
/// KEYS[1] the key's hash for the period (a field per instance: "calls
/// credits notifications bytes_in bytes_out sessions granted"), KEYS[2]
/// the key's rate shares (a field per instance: "share demand time");
/// ARGV: the instance, its figures, the credits it holds, the credits it
/// asks for more, the quota, the hash's lifetime (ms), the calls asked of
/// it against the rate since its last sync (-1: the key has no rate), how
/// long an instance counts as alive (ms).
///
/// Quota: grants what is free of it (never more). Rate: each live
/// instance's share is a floor (1 / 10n) plus the rest in proportion to
/// where the calls come, and never more than the others leave free: the
/// shares written never add up to more than the whole. Answers {granted,
/// the hash's fields, this instance's share in millionths (-1: none)}.
const RESERVE: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    others = others + (tonumber(string.match(all[i + 1], '(%d+)$')) or 0)
  end
end
local keep, want, quota = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local got = 0
if want > 0 then
  got = math.max(0, math.min(want, quota - others - keep))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (keep + got))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local share = -1
local demand = tonumber(ARGV[7])
if demand >= 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local alive = tonumber(ARGV[8])
  local rows = redis.call('HGETALL', KEYS[2])
  local n, asked, held = 1, demand, 0
  for i = 1, #rows, 2 do
    if rows[i] ~= ARGV[1] then
      local s, d, at = string.match(rows[i + 1], '(%S+) (%S+) (%S+)')
      if s and now - tonumber(at) <= alive then
        n = n + 1
        asked = asked + tonumber(d)
        held = held + tonumber(s)
      else
        redis.call('HDEL', KEYS[2], rows[i])
      end
    end
  end
  local floor = 1 / (10 * n)
  local want = 1 / n
  if asked > 0 then
    want = floor + (1 - n * floor) * demand / asked
  end
  share = math.max(floor, math.min(want, 1 - held))
  redis.call('HSET', KEYS[2], ARGV[1], string.format('%.6f %d %d', share, demand, now))
  redis.call('PEXPIRE', KEYS[2], alive * 2)
  share = math.floor(share * 1000000)
end
return {got, redis.call('HGETALL', KEYS[1]), share}
"#;

/// How long an instance counts as alive after its last announcement.
pub fn alive(sync: Duration) -> Duration {
    (sync * 20).max(Duration::from_secs(2))
}

impl Cluster {
    /// Start the sync thread for `config` over `book`'s keys.
    pub fn start(config: ClusterConfig, book: Arc<Book>) -> Arc<Cluster> {
        if config.tls.is_some() {
            // The Redis client builds its TLS configuration on the
            // process's default provider: ring's, as everywhere else.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let cache_counts = Arc::<cache::CacheCounts>::default();
        let cache = config
            .cache
            .then(|| cache::start(config.clone(), cache_counts.clone()))
            .flatten();
        let c = Arc::new(Cluster {
            cache,
            cache_counts,
            config,
            commands: Mutex::default(),
            asked: std::sync::Condvar::new(),
            up: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            instances: AtomicU32::new(1),
            disabled: Mutex::default(),
        });
        let (push, pushed) = (c.clone(), book.clone());
        let (subscribed, first) = std::sync::mpsc::channel();
        let listening = std::thread::Builder::new()
            .name("cluster-push".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    push.listen(&pushed, subscribed)
                }));
                if r.is_err() {
                    crate::task::fatal("the cluster's revocation listener");
                }
            });
        match listening {
            // Listening before this gateway first shows itself: a
            // revocation pushed once the others see it is not missed.
            Ok(_) => drop(first.recv_timeout(Duration::from_secs(1))),
            Err(e) => crate::error!(
                "cluster: cannot start the revocation listener ({e}); revocations arrive at each sync"
            ),
        }
        let run = c.clone();
        let spawned = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.run(&book)));
                if r.is_err() {
                    crate::task::fatal("the cluster sync thread");
                }
            });
        if let Err(e) = spawned {
            crate::error!(
                "cluster: cannot start the sync thread ({e}); budgets are this instance's alone"
            );
        }
        c
    }

    pub fn up(&self) -> bool {
        self.up.load(Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    pub fn instances(&self) -> u32 {
        self.instances.load(Relaxed)
    }

    /// What `/metrics` shows of the cluster.
    pub fn scrape(&self) -> crate::metrics::ClusterScrape {
        let n = &self.cache_counts;
        crate::metrics::ClusterScrape {
            up: self.up(),
            instances: self.instances(),
            failures: self.failures(),
            cache: self.cache.as_ref().map(|_| {
                let lookups = [&n.hits, &n.misses, &n.waited, &n.failed].map(|a| a.load(Relaxed));
                (lookups, n.stores.load(Relaxed))
            }),
        }
    }

    /// Disable or enable key `usage` (named `name`) everywhere: here at
    /// once, on the other instances at their next sync.
    pub fn ask(&self, usage: &Usage, command: Command) {
        let (name, disabled) = match &command {
            Command::Disable(n) => (n.clone(), true),
            Command::Enable(n) => (n.clone(), false),
        };
        usage.set_cluster_disabled(disabled);
        let mut known = self.disabled.lock().expect("not poisoned");
        if disabled {
            known.insert(name);
        } else {
            known.remove(&name);
        }
        self.commands.lock().expect("not poisoned").push(command);
        self.asked.notify_one();
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.prefix)
    }

    /// Revocations pushed by the other gateways (`PUBLISH
    /// <p>:revocations "disable <name>"`), taken at once; the set they are
    /// kept in is read at each sync anyway (a push missed while this
    /// connection was away arrives then).
    fn listen(&self, book: &Book, subscribed: std::sync::mpsc::Sender<()>) {
        let channel = self.key("revocations");
        let mut backoff = Duration::from_millis(100);
        loop {
            let Ok(mut con) = open(&self.config, Duration::from_secs(10)) else {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            };
            backoff = Duration::from_millis(100);
            let mut sub = con.as_pubsub();
            if sub.subscribe(&channel).is_err() {
                continue;
            }
            let _ = subscribed.send(());
            // Any error (a quiet 10 s included): connect again.
            while let Ok(msg) = sub.get_message() {
                let text: String = msg.get_payload().unwrap_or_default();
                let (disable, name) = match text.split_once(' ') {
                    Some(("disable", n)) => (true, n),
                    Some(("enable", n)) => (false, n),
                    _ => continue,
                };
                if let Some((_, u)) = book.all().into_iter().find(|(n, _)| n == name) {
                    u.set_cluster_disabled(disable);
                }
            }
        }
    }

    fn run(&self, book: &Book) {
        let mut con: Option<redis::Connection> = None;
        let mut backoff = self.config.sync;
        let mut said_down = false;
        // Each key's credits and demand at the last sync (the pace sizes
        // reservations; the demand, shares of the rate).
        let mut last = HashMap::new();
        loop {
            let started = Instant::now();
            if con.is_none() {
                con = self
                    .connect()
                    .map_err(|e| self.down(&e, &mut said_down, book))
                    .ok();
            }
            if let Some(c) = con.as_mut() {
                match self.sync(c, book, &mut last) {
                    Ok(()) => {
                        if said_down {
                            crate::info!("cluster: Redis is back; budgets are shared again");
                            said_down = false;
                        }
                        self.up.store(true, Relaxed);
                        backoff = self.config.sync;
                    }
                    Err(e) => {
                        self.down(&e, &mut said_down, book);
                        con = None;
                    }
                }
            }
            let wait = if con.is_some() {
                self.config.sync
            } else {
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            };
            // Until the next sync, or a command asked (sent at once).
            let pending = self.commands.lock().expect("not poisoned");
            let left = wait.saturating_sub(started.elapsed());
            if pending.is_empty() || con.is_none() {
                drop(self.asked.wait_timeout(pending, left));
            }
        }
    }

    /// Redis did not answer: said once; each key's quota falls to a local
    /// share (what it held, or its part of what was left: the quota less
    /// every gateway's credits as last seen, divided by the gateways last
    /// seen alive), rates stay divided as they were.
    fn down(&self, e: &redis::RedisError, said: &mut bool, book: &Book) {
        self.up.store(false, Relaxed);
        self.failures.fetch_add(1, Relaxed);
        if !*said {
            *said = true;
            let n = u64::from(self.instances().max(1));
            for (_, u) in book.all() {
                // Rates: an even share of the gateways last seen.
                u.set_share(None);
                let quota = u.quota();
                if quota == 0 {
                    continue;
                }
                let used = u.local_credits();
                let left = quota.saturating_sub(u.credits());
                let share = used + left / n;
                u.set_grant(Some(u.grant().map_or(share, |g| g.max(share))));
            }
            crate::warn!(
                "cluster: Redis unreachable ({e}); serving on a local share of each budget (1/{} of a rate, the quota less what the others had used); counts are kept and sent when it is back",
                self.instances()
            );
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        open(
            &self.config,
            (self.config.sync * 5).max(Duration::from_millis(500)),
        )
    }

    /// One exchange with Redis (one round trip; two when Redis came back
    /// empty and revocations must be pushed again).
    fn sync(
        &self,
        con: &mut redis::Connection,
        book: &Book,
        last: &mut HashMap<String, (u64, u64)>,
    ) -> redis::RedisResult<()> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let me = &self.config.instance;
        let instances = self.key("instances");
        let disabled_set = self.key("disabled");
        let epoch = self.key("epoch");
        let keys = book.all();
        let commands = std::mem::take(&mut *self.commands.lock().expect("not poisoned"));
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(&instances)
            .arg(now_ms)
            .arg(me)
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&instances)
            .arg("-inf")
            .arg(now_ms.saturating_sub(alive(self.config.sync).as_millis() as u64))
            .ignore();
        pipe.cmd("ZCARD").arg(&instances);
        // Redis restarted empty (or never saw this cluster): the epoch mark
        // is gone; the revocations this instance knows are pushed again.
        pipe.cmd("SET").arg(&epoch).arg(me).arg("NX");
        // Kept in the set first, then pushed to the gateways listening.
        let revocations = self.key("revocations");
        for c in &commands {
            let (push, n) = match c {
                Command::Disable(n) => {
                    pipe.cmd("SADD").arg(&disabled_set).arg(n).ignore();
                    ("disable", n)
                }
                Command::Enable(n) => {
                    pipe.cmd("SREM").arg(&disabled_set).arg(n).ignore();
                    ("enable", n)
                }
            };
            pipe.cmd("PUBLISH")
                .arg(&revocations)
                .arg(format!("{push} {n}"))
                .ignore();
        }
        // Each key: this instance's figures and reservation published, a
        // reservation topped up, the others' figures read (one script, so
        // that reservations never grant more than the quota).
        let mut asked = Vec::with_capacity(keys.len());
        for (name, u) in &keys {
            let c = u.counts();
            let quota = u.quota();
            let used = c.credits;
            let demand = u.demand();
            let (was_used, was_demand) = last.get(name).copied().unwrap_or((used, demand));
            let consumed = used.saturating_sub(was_used);
            let asked_rate = demand.saturating_sub(was_demand);
            last.insert(name.clone(), (used, demand));
            // Enough for two intervals at the pace of the last one, or half
            // of this gateway's part of what is left, whichever is more.
            let left = quota.saturating_sub(u.credits());
            let n = u64::from(self.instances().max(1));
            let headroom = (2 * consumed).max(left / (2 * n)).max(1);
            let held = u.grant().unwrap_or(used).max(used);
            let target = used + headroom;
            let keep = held.min(target);
            let want = if quota > 0 { target - keep } else { 0 };
            asked.push(keep);
            let hash = self.key(&format!("usage:{name}:{}", c.period_start));
            pipe.cmd("EVAL")
                .arg(RESERVE)
                .arg(2)
                .arg(&hash)
                .arg(self.key(&format!("share:{name}")))
                .arg(me)
                .arg(format!(
                    "{} {} {} {} {} {}",
                    c.calls,
                    c.credits,
                    c.notifications,
                    c.bytes_in,
                    c.bytes_out,
                    u.sessions.load(Relaxed)
                ))
                .arg(keep)
                .arg(want)
                .arg(quota)
                // Kept a while after the period, for billing.
                .arg(40u64 * 86_400_000)
                .arg(if u.rated() { asked_rate as i64 } else { -1 })
                .arg(alive(self.config.sync).as_millis() as u64);
        }
        pipe.cmd("SMEMBERS").arg(&disabled_set);
        let reply: Vec<redis::Value> = match pipe.query(con) {
            Ok(r) => r,
            Err(e) => {
                // Not sent: asked again at the next sync.
                self.commands
                    .lock()
                    .expect("not poisoned")
                    .splice(0..0, commands);
                return Err(e);
            }
        };
        let mut reply = reply.into_iter();
        let mut next = || reply.next().unwrap_or(redis::Value::Nil);
        let live: u32 = redis::from_redis_value(&next())?;
        let fresh_epoch = !matches!(next(), redis::Value::Nil);
        for ((_, u), keep) in keys.iter().zip(asked) {
            let (got, all, share): (u64, Vec<String>, i64) = redis::from_redis_value(&next())?;
            if u.quota() > 0 {
                u.set_grant(Some(keep + got));
            }
            u.set_share(u32::try_from(share).ok());
            let mut sums = [0u64; 6];
            for pair in all.chunks(2) {
                let [instance, figures] = pair else { continue };
                if instance == me {
                    continue;
                }
                for (sum, f) in sums.iter_mut().zip(figures.split(' ')) {
                    *sum += f.parse::<u64>().unwrap_or(0);
                }
            }
            let o = &u.others;
            for (cell, v) in [
                &o.calls,
                &o.credits,
                &o.notifications,
                &o.bytes_in,
                &o.bytes_out,
                &o.sessions,
            ]
            .into_iter()
            .zip(sums)
            {
                cell.store(v, Relaxed);
            }
        }
        let disabled: Vec<String> = redis::from_redis_value(&next())?;
        let mut known = self.disabled.lock().expect("not poisoned");
        if fresh_epoch && !known.is_empty() {
            // The set was lost with Redis's data: what this instance knows
            // goes back (before the next read of it).
            let mut again = redis::cmd("SADD");
            again.arg(&disabled_set);
            for n in known.iter() {
                again.arg(n);
            }
            again.query::<()>(con)?;
        } else {
            *known = disabled.iter().cloned().collect();
            // Asked meanwhile, sent at the next sync: they stand.
            for c in self.commands.lock().expect("not poisoned").iter() {
                match c {
                    Command::Disable(n) => known.insert(n.clone()),
                    Command::Enable(n) => known.remove(n),
                };
            }
        }
        for (name, u) in &keys {
            u.set_cluster_disabled(known.contains(name));
        }
        drop(known);
        let live = live.max(1);
        self.instances.store(live, Relaxed);
        set_instances(live);
        Ok(())
    }
}
