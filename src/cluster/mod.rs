//! Several gateways on one Redis (`[cluster]`): keys' budgets, usage and
//! revocations shared, with a stated bound, and nothing lost when Redis is
//! down or a gateway dies, restarts or is renamed.
//!
//! One sync thread per process owns the Redis connection (the `redis`
//! crate's synchronous client, with timeouts); workers never wait on it.
//! Every `sync_ms` it, in one round trip:
//!
//! - renews this instance's hold on its name ([`claim`]: one name, one
//!   gateway; a run that lost it publishes nothing);
//! - announces this instance (`ZADD <p>:instances <now> <instance>`) and
//!   counts the live ones (seen within [`alive`]): each gateway admits
//!   `rate / live` of an address's rate
//!   ([`crate::policy::usage::set_instances`]), and of a key's rate the
//!   share the key's script gives it by where the calls come;
//! - publishes each key's figures for its period, with a heartbeat, and
//!   reads the others' ([`ledger`]): a quota is checked against every
//!   gateway's credits, `max_connections` against the sessions of the
//!   gateways alive, and `/usage` reports the sum; a field whose heartbeat
//!   stopped holds no sessions and no grant, and keeps its figures for billing;
//! - keeps revocations asked of it (`POST /keys/<name>/disable`) in
//!   `<p>:disabled` and reads that set: a key disabled anywhere is revoked
//!   here within `sync_ms`; they are also pushed at once ([`push`]), apart
//!   from the sync, so a Redis user without channels costs the push only.
//!
//! At start, a gateway holds its name (waiting out the alive window of a
//! run that died), and reads its own fields back for each key before it
//! first publishes: a restart under the same name neither loses nor
//! doubles a count. At the drain, its last sync gives back its sessions
//! and its unused grant and releases its name. Redis down: the thread says
//! so once, counts a failure per attempt, reconnects with backoff (up to
//! 5 s), and the workers go on with the last figures they had: a local
//! share (the rate divided by the instances last seen alive; the quota
//! less what the others had used), never open, never closed.

pub mod cache;
pub mod check;
mod claim;
mod ledger;
mod link;
mod push;
pub use link::open;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use crate::config::cluster::ClusterConfig;
use crate::policy::usage::{set_instances, Book, Usage};

pub use ledger::alive;
pub use push::Command;

/// The sync thread's handle: what the endpoints ask of it, and its state.
#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    commands: Mutex<Vec<Command>>,
    /// Rung when a command is asked: the sync thread sends it at once.
    asked: parking_lot::Condvar,
    /// Redis answered the last sync.
    up: AtomicBool,
    /// Syncs that failed (`ringway_cluster_sync_failures_total`).
    failures: AtomicU64,
    /// Syncs that succeeded, and the µs they took in all.
    syncs: AtomicU64,
    sync_micros: AtomicU64,
    /// Live instances last seen (this one included).
    instances: AtomicU32,
    /// Key names disabled through the cluster, as this instance knows them
    /// (pushed again when Redis comes back empty).
    disabled: Mutex<std::collections::BTreeSet<String>>,
    /// The way to the second-level cache's thread (`[cluster] cache`).
    pub cache: Option<crate::cache::second::Link>,
    pub cache_counts: Arc<cache::CacheCounts>,
    /// This run's id: what its hold on its name carries ([`claim`]).
    run: String,
    /// How revocation pushes fare ([`push`]).
    push: push::PushState,
    /// Another run holds this instance's name (seen at a sync): its field
    /// is left alone until the name is this run's again.
    name_taken: AtomicBool,
    /// What the configuration needs of Redis and was refused (`/health`).
    pub missing: Mutex<Vec<String>>,
    /// The drain began: this instance's sessions are on their way out, and
    /// count for nothing more (their clients reconnect to the others).
    draining: AtomicBool,
    /// A sync since the drain began is written (its sessions 0).
    drain_written: Mutex<bool>,
    drain_wake: parking_lot::Condvar,
    /// The drain asks for a last sync; the sync thread says it is done.
    leaving: Mutex<Option<bool>>,
    left: parking_lot::Condvar,
}

impl Cluster {
    /// Start the sync thread for `config` over `book`'s keys, once this
    /// instance holds its name (`Err`: another gateway runs under it).
    pub fn start(config: ClusterConfig, book: Arc<Book>) -> Result<Arc<Cluster>, String> {
        let run = format!(
            "{:08x}{:08x}",
            std::process::id(),
            crate::rng::below(u32::MAX as usize)
        );
        if config.tls.is_some() {
            // The Redis client builds its TLS configuration on the
            // process's default provider: ring's, as everywhere else.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        claim::at_start(&config, &run, alive(config.sync)).map_err(|t| t.0)?;
        let missing = check::permissions(&config).unwrap_or_default();
        for m in &missing {
            crate::warn!("cluster: {m}");
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
            asked: parking_lot::Condvar::new(),
            up: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            sync_micros: AtomicU64::new(0),
            instances: AtomicU32::new(1),
            disabled: Mutex::default(),
            run,
            push: push::PushState::default(),
            name_taken: AtomicBool::new(false),
            missing: Mutex::new(missing),
            draining: AtomicBool::new(false),
            drain_written: Mutex::new(false),
            drain_wake: parking_lot::Condvar::new(),
            leaving: Mutex::new(None),
            left: parking_lot::Condvar::new(),
        });
        let (push, pushed) = (c.clone(), book.clone());
        let (subscribed, first) = std::sync::mpsc::channel();
        let listening = std::thread::Builder::new()
            .name("cluster-push".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    push.push.listen(&push.config, &pushed, subscribed)
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
        Ok(c)
    }

    /// The drain begins, before any session closes: this instance's
    /// sessions are written as 0 at once, and the others are given a sync
    /// to read it, so that the clients about to reconnect to them are not
    /// refused for connections that are going away. Each wait is at most
    /// a sync and a half (3 s at most); Redis down, the others free them
    /// after the alive window, as for a crash.
    pub fn draining(&self) {
        let step = (self.config.sync * 3 / 2).min(Duration::from_secs(3));
        let until = Instant::now() + step;
        self.draining.store(true, Relaxed);
        self.asked.notify_one();
        let mut written = self.drain_written.lock();
        while !*written {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.drain_wake.wait_for(&mut written, left);
        }
        drop(written);
        // Each of the others syncs within its interval of the write.
        std::thread::sleep(step);
    }

    /// The drain: a last sync (this instance's sessions 0, its unused grant
    /// given back, its name released), waited for up to `within`.
    pub fn finish(&self, within: Duration) {
        let mut leaving = self.leaving.lock();
        *leaving = Some(false);
        self.asked.notify_one();
        let until = Instant::now() + within;
        while *leaving == Some(false) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                crate::warn!("cluster: no last sync within {} ms; the others free this instance's sessions and grant after the alive window", within.as_millis());
                return;
            }
            self.left.wait_for(&mut leaving, left);
        }
    }

    /// What `/health` says of pushes and permissions, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut all = self.missing.lock().clone();
        all.extend(self.push.problem().map(String::from));
        if self.name_taken.load(Relaxed) {
            all.push(format!(
                "another gateway holds the name `{}`",
                self.config.instance
            ));
        }
        all
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
            syncs: (self.syncs.load(Relaxed), self.sync_micros.load(Relaxed)),
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
        let mut known = self.disabled.lock();
        if disabled {
            known.insert(name);
        } else {
            known.remove(&name);
        }
        self.commands.lock().push(command);
        self.asked.notify_one();
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.config.prefix)
    }

    /// What the ledger writes under: this instance, the cluster's prefix,
    /// its view of the live instances.
    fn names(&self, round: u64) -> ledger::Names<'_> {
        ledger::Names {
            config: &self.config,
            instances: self.instances(),
            draining: self.draining.load(Relaxed),
            round,
            every: ledger::refresh_every(self.config.sync),
        }
    }

    fn run(&self, book: &Book) {
        let mut con: Option<redis::Connection> = None;
        let mut backoff = self.config.sync;
        let mut said_down = false;
        // Each key's last publication.
        let mut last = ledger::Ledger::new();
        let mut round = 0u64;
        // Keys (by name and period) whose own field was read back.
        let mut resumed = HashMap::new();
        loop {
            let started = Instant::now();
            let leaving = *self.leaving.lock() == Some(false);
            let draining = self.draining.load(Relaxed);
            if con.is_none() {
                con = self
                    .connect()
                    .map_err(|e| self.down(&e, &mut said_down, book))
                    .ok();
            }
            if let Some(c) = con.as_mut() {
                round += 1;
                match self.sync(c, book, (&mut last, round), &mut resumed, leaving) {
                    Ok(()) => {
                        if said_down {
                            crate::info!("cluster: Redis is back; budgets are shared again");
                            said_down = false;
                        }
                        self.up.store(true, Relaxed);
                        self.syncs.fetch_add(1, Relaxed);
                        self.sync_micros
                            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
                        backoff = self.config.sync;
                        if draining {
                            *self.drain_written.lock() = true;
                            self.drain_wake.notify_all();
                        }
                    }
                    Err(e) => {
                        self.down(&e, &mut said_down, book);
                        // What it wrote may not have reached Redis: every
                        // key is written at the next sync.
                        ledger::unsent(&mut last);
                        con = None;
                    }
                }
            }
            if leaving {
                *self.leaving.lock() = Some(true);
                self.left.notify_all();
                return;
            }
            let wait = if con.is_some() {
                self.config.sync
            } else {
                backoff = (backoff * 2).min(Duration::from_secs(5));
                backoff
            };
            // Until the next sync, or a command asked (sent at once).
            let mut pending = self.commands.lock();
            let left = wait.saturating_sub(started.elapsed());
            if pending.is_empty() || con.is_none() {
                self.asked.wait_for(&mut pending, left);
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

    /// A connection, with the ledger's script loaded (it then travels as
    /// its SHA-1, not its text, once per key per sync).
    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let mut con = open(
            &self.config,
            (self.config.sync * 5).max(Duration::from_millis(500)),
        )?;
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(ledger::RESERVE)
            .query::<String>(&mut con)?;
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(claim::CLAIM)
            .query::<String>(&mut con)?;
        Ok(con)
    }

    /// One exchange with Redis (one round trip; more when Redis came back
    /// empty, a revocation is pushed, or keys are read back at start).
    /// `leaving`: the drain's last one.
    fn sync(
        &self,
        con: &mut redis::Connection,
        book: &Book,
        (last, round): (&mut ledger::Ledger, u64),
        resumed: &mut HashMap<String, u64>,
        leaving: bool,
    ) -> redis::RedisResult<()> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let me = &self.config.instance;
        let instances = self.key("instances");
        let disabled_set = self.key("disabled");
        let epoch = self.key("epoch");
        let alive_ms = alive(self.config.sync).as_millis() as u64;
        let keys = book.all();
        // A key seen for the first time in its period: what this instance
        // published of it before it restarted is read back first.
        let fresh: Vec<_> = keys
            .iter()
            .filter(|(n, u)| resumed.get(n.as_str()) != Some(&u.period_start()))
            .cloned()
            .collect();
        if !fresh.is_empty() && !self.name_taken.load(Relaxed) {
            ledger::resume(con, &self.names(round), &fresh)?;
            resumed.extend(fresh.iter().map(|(n, u)| (n.clone(), u.period_start())));
        }
        let commands = std::mem::take(&mut *self.commands.lock());
        let mut pipe = redis::pipe();
        // The name first: a sync of a run that does not hold it writes no field.
        pipe.cmd("EVALSHA")
            .arg(ledger::sha(claim::CLAIM))
            .arg(1)
            .arg(claim::key(&self.config))
            .arg(&self.run)
            .arg(alive_ms);
        match leaving {
            true => pipe.cmd("ZREM").arg(&instances).arg(me).ignore(),
            false => pipe
                .cmd("ZADD")
                .arg(&instances)
                .arg(now_ms)
                .arg(me)
                .ignore(),
        };
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&instances)
            .arg("-inf")
            .arg(now_ms.saturating_sub(alive_ms))
            .ignore();
        pipe.cmd("ZCARD").arg(&instances);
        // Redis restarted empty (or never saw this cluster): the epoch mark
        // is gone; the revocations this instance knows are pushed again.
        pipe.cmd("SET").arg(&epoch).arg(me).arg("NX");
        // Kept in the set (pushed to the listening gateways apart, below).
        for c in &commands {
            match c {
                Command::Disable(n) => pipe.cmd("SADD").arg(&disabled_set).arg(n).ignore(),
                Command::Enable(n) => pipe.cmd("SREM").arg(&disabled_set).arg(n).ignore(),
            };
        }
        let publish = !self.name_taken.load(Relaxed);
        let sha = ledger::sha(ledger::RESERVE);
        let names = self.names(round);
        let mut asked = Vec::new();
        for (name, u) in keys.iter().filter(|_| publish) {
            if leaving || !ledger::quiet(&names, name, u, last) {
                let a = ledger::publish(&mut pipe, &names, &sha, name, u, last, leaving);
                asked.push((u, a));
            }
        }
        pipe.cmd("SMEMBERS").arg(&disabled_set);
        if leaving {
            pipe.cmd("EVAL")
                .arg(claim::RELEASE)
                .arg(1)
                .arg(claim::key(&self.config))
                .arg(&self.run)
                .ignore();
        }
        let reply: Vec<redis::Value> = match pipe.query(con) {
            Ok(r) => r,
            Err(e) => {
                // Not sent: asked again at the next sync.
                self.commands.lock().splice(0..0, commands);
                return Err(e);
            }
        };
        if !commands.is_empty() {
            self.push.publish(&self.config, con, &commands);
        }
        let mut reply = reply.into_iter();
        let mut next = || reply.next().unwrap_or(redis::Value::Nil);
        let held = matches!(next(), redis::Value::Int(1));
        if self.name_taken.swap(!held, Relaxed) == held {
            match held {
                true => crate::info!("cluster: the name `{me}` is this gateway's again"),
                false => crate::error!(
                    "cluster: another gateway holds the name `{me}`: this one publishes nothing until it is free (give each gateway its own cluster.instance)"
                ),
            }
        }
        let live: u32 = redis::from_redis_value(&next())?;
        let fresh_epoch = !matches!(next(), redis::Value::Nil);
        if fresh_epoch {
            // Redis lost what it had: every key is written at the next sync.
            ledger::unsent(last);
        }
        for (u, asked) in asked {
            ledger::read(u, asked, next())?;
        }
        let disabled: Vec<String> = redis::from_redis_value(&next())?;
        self.revocations(con, &keys, disabled, fresh_epoch)?;
        let live = live.max(1);
        self.instances.store(live, Relaxed);
        set_instances(live);
        Ok(())
    }

    /// The set of keys disabled through the cluster, as read at a sync
    /// (`fresh_epoch`: Redis restarted empty: what this instance knows goes
    /// back): each key's state follows it.
    fn revocations(
        &self,
        con: &mut redis::Connection,
        keys: &[(String, Arc<Usage>)],
        disabled: Vec<String>,
        fresh_epoch: bool,
    ) -> redis::RedisResult<()> {
        let disabled_set = self.key("disabled");
        let mut known = self.disabled.lock();
        if fresh_epoch && !known.is_empty() {
            let mut again = redis::cmd("SADD");
            again.arg(&disabled_set);
            for n in known.iter() {
                again.arg(n);
            }
            again.query::<()>(con)?;
        } else {
            *known = disabled.iter().cloned().collect();
            // Asked meanwhile, sent at the next sync: they stand.
            for c in self.commands.lock().iter() {
                match c {
                    Command::Disable(n) => known.insert(n.clone()),
                    Command::Enable(n) => known.remove(n),
                };
            }
        }
        for (name, u) in keys {
            u.set_cluster_disabled(known.contains(name));
        }
        Ok(())
    }
}
