//! The second level of the response cache, in Redis (`[cluster] cache`):
//! the store's side of [`crate::cache::second`].
//!
//! One thread per process owns its own Redis connection (apart from the
//! sync thread's, so that a lookup never waits behind a sync). It takes the
//! cores' jobs in batches, one pipelined round trip per batch:
//! - keys are the SHA-256 of the chain's identity, the method and the
//!   params (see [`crate::cache::second::Level2`]): two deployments on one
//!   Redis never serve each other's answers, and a key is 64 bytes;
//! - a lookup is `GET <p>:cache:<sha>`, with `SET <p>:fetching:<sha>
//!   <instance> NX PX 1000`: when nothing is
//!   kept, the first instance (or core) to ask fetches it from its node
//!   (a miss); any other waits, looking again every 5 ms, until the answer
//!   is kept (a hit), the fetch is given up, or a second has passed (then
//!   a miss). N instances starting cold thus cost the nodes one
//!   `state_getMetadata` per hash, not N;
//! - a store is `SET <p>:cache:<sha> <head> PX <ttl>` (the first level's
//!   TTL; answers over `cluster.cache_max_bytes`, 1 MiB, are not stored;
//!   give the cache a Redis database or instance of its own with a
//!   `maxmemory` and `maxmemory-policy allkeys-lru`) and ends the fetching
//!   note.
//!
//! Redis down or slow (200 ms timeouts): lookups are misses, stores are
//! skipped, and the thread reconnects with backoff (up to 5 s). The cores
//! never wait on it: a lookup is answered through their mailbox.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::second::{Job, Link, Reply, QUEUE};
use crate::config::cluster::ClusterConfig;

/// How long another instance's fetch is waited for.
const WAIT: Duration = Duration::from_millis(1000);
/// How often a waiting lookup looks again.
const LOOK: Duration = Duration::from_millis(5);
/// Redis's answers and connections, at most.
const TIMEOUT: Duration = Duration::from_millis(200);

/// What the second level did (`ringway_cluster_cache_*`).
#[derive(Debug, Default)]
pub struct CacheCounts {
    /// Lookups answered from Redis (at once, or after another's fetch).
    pub hits: AtomicU64,
    /// Lookups with nothing kept: this instance fetches.
    pub misses: AtomicU64,
    /// Lookups that waited for another instance's (or core's) fetch.
    pub waited: AtomicU64,
    /// Lookups that failed (Redis down, slow, or the queue full).
    pub failed: AtomicU64,
    /// Answers kept in Redis.
    pub stores: AtomicU64,
}

/// A lookup waiting for another's fetch.
struct Waiter {
    key: Vec<u8>,
    reply: Reply,
    until: Instant,
}

struct Store {
    config: ClusterConfig,
    counts: Arc<CacheCounts>,
}

/// Start the thread; the cores' way to it.
pub fn start(config: ClusterConfig, counts: Arc<CacheCounts>) -> Option<Link> {
    let (jobs, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let store = Store { config, counts };
    let spawned = std::thread::Builder::new()
        .name("cluster-cache".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.run(rx)));
            if r.is_err() {
                crate::task::fatal("the cluster's cache thread");
            }
        });
    match spawned {
        Ok(_) => Some(Link { jobs }),
        Err(e) => {
            crate::error!("cluster: cannot start the cache thread ({e}); each core caches alone");
            None
        }
    }
}

impl Store {
    fn name(&self, kind: &str, key: &[u8]) -> Vec<u8> {
        [
            self.config.prefix.as_bytes(),
            b":",
            kind.as_bytes(),
            b":",
            key,
        ]
        .concat()
    }

    fn run(&self, rx: Receiver<Job>) {
        let mut con: Option<redis::Connection> = None;
        let mut retry_at = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut waiting: Vec<Waiter> = Vec::new();
        loop {
            let first = if waiting.is_empty() {
                match rx.recv() {
                    Ok(j) => Some(j),
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(LOOK) {
                    Ok(j) => Some(j),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut jobs: Vec<Job> = first.into_iter().collect();
            while jobs.len() < 256 {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            if con.is_none() && Instant::now() >= retry_at {
                match self.connect() {
                    Ok(c) => {
                        con = Some(c);
                        backoff = Duration::from_millis(100);
                    }
                    Err(_) => {
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            let result = match con.as_mut() {
                Some(c) => self.exchange(c, jobs, &mut waiting),
                None => {
                    self.fail(jobs, &mut waiting);
                    continue;
                }
            };
            if let Err((e, jobs)) = result {
                crate::debug!("cluster cache: Redis failed ({e}); lookups miss until it is back");
                con = None;
                self.fail(jobs, &mut waiting);
            }
        }
    }

    /// Redis cannot be asked: every lookup is a miss (its reply, dropped,
    /// says so), every store is skipped.
    fn fail(&self, jobs: Vec<Job>, waiting: &mut Vec<Waiter>) {
        let lookups = jobs.iter().filter(|j| matches!(j, Job::Get { .. })).count();
        let n = lookups + waiting.len();
        self.counts.failed.fetch_add(n as u64, Relaxed);
        waiting.clear();
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        super::link::open_at(&self.config, &self.config.cache_redis, TIMEOUT)
    }

    /// One round trip: the batch's lookups and stores, and another look
    /// for the lookups waiting. On failure, the jobs not answered.
    fn exchange(
        &self,
        con: &mut redis::Connection,
        jobs: Vec<Job>,
        waiting: &mut Vec<Waiter>,
    ) -> Result<(), (redis::RedisError, Vec<Job>)> {
        let me = &self.config.instance;
        let mut pipe = redis::pipe();
        let mut stores = 0;
        for job in &jobs {
            match job {
                Job::Get { key, .. } => {
                    pipe.cmd("GET").arg(self.name("cache", key));
                    pipe.cmd("SET")
                        .arg(self.name("fetching", key))
                        .arg(me)
                        .arg("NX")
                        .arg("PX")
                        .arg(WAIT.as_millis() as u64);
                }
                Job::Put { key, head, ttl } => {
                    stores += 1;
                    pipe.cmd("SET")
                        .arg(self.name("cache", key))
                        .arg(&head[..])
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64)
                        .ignore();
                    pipe.cmd("DEL").arg(self.name("fetching", key)).ignore();
                }
                Job::Forget { key } => {
                    pipe.cmd("DEL").arg(self.name("fetching", key)).ignore();
                }
            }
        }
        // The waiting lookups: their answer, and whether a fetch still goes on.
        if !waiting.is_empty() {
            let mut mget = redis::cmd("MGET");
            for w in waiting.iter() {
                mget.arg(self.name("cache", &w.key));
            }
            for w in waiting.iter() {
                mget.arg(self.name("fetching", &w.key));
            }
            pipe.add_command(mget);
        }
        let values: Vec<redis::Value> = match pipe.query(con) {
            Ok(v) => v,
            Err(e) => return Err((e, jobs)),
        };
        self.counts.stores.fetch_add(stores, Relaxed);
        let mut values = values.into_iter();
        let now = Instant::now();
        let mut fresh = Vec::new();
        for job in jobs {
            let Job::Get { key, reply } = job else {
                continue;
            };
            let kept = bytes(values.next());
            let fetching = !matches!(values.next(), Some(redis::Value::Okay));
            match kept {
                Some(head) => {
                    self.counts.hits.fetch_add(1, Relaxed);
                    reply.send(Some(head));
                }
                None if !fetching => {
                    self.counts.misses.fetch_add(1, Relaxed);
                    reply.send(None);
                }
                None => {
                    self.counts.waited.fetch_add(1, Relaxed);
                    fresh.push(Waiter {
                        key,
                        reply,
                        until: now + WAIT,
                    });
                }
            }
        }
        if !waiting.is_empty() {
            let looked: Vec<redis::Value> = match values.next() {
                Some(redis::Value::Array(v)) => v,
                _ => Vec::new(),
            };
            let n = waiting.len();
            let (heads, notes) = looked.split_at(looked.len().min(n));
            let mut still = Vec::new();
            for (i, w) in waiting.drain(..).enumerate() {
                let head = bytes(heads.get(i).cloned());
                let noted = !matches!(notes.get(i), None | Some(redis::Value::Nil));
                match head {
                    Some(h) => {
                        self.counts.hits.fetch_add(1, Relaxed);
                        w.reply.send(Some(h));
                    }
                    // The fetch came to nothing, or took too long: this
                    // instance asks its node.
                    None if !noted || now >= w.until => {
                        self.counts.misses.fetch_add(1, Relaxed);
                        w.reply.send(None);
                    }
                    None => still.push(w),
                }
            }
            *waiting = still;
        }
        waiting.extend(fresh);
        Ok(())
    }
}

fn bytes(v: Option<redis::Value>) -> Option<Vec<u8>> {
    match v {
        Some(redis::Value::BulkString(b)) => Some(b),
        _ => None,
    }
}
