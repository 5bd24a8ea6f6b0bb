//! One core's state, owned by its worker thread and shared by every
//! connection task on it. Nothing here is touched by another core except
//! through the atomics of [`crate::health::Health`], the admission totals
//! and the configuration generation number.
//!
//! Two lifetimes:
//! - [`Core`], the thread's: TLS, the recent block hashes, the shutdown
//!   event, the count of open connections, and the newest [`Worker`].
//! - [`Worker`], one configuration generation's (a SIGHUP makes a new one,
//!   see [`generations`]): the config, node pool and health view,
//!   routing, admission settings, the HTTP node pool, shared node
//!   connections. A connection takes the newest at accept and keeps it to
//!   its end (as nginx's old workers serve their connections with the old
//!   configuration); a keep-alive HTTP connection takes the newest for each
//!   request. The old one is freed when its last connection ends.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::Config;
use crate::health::Health;
use crate::relay::SessionConfig;
use crate::route::{ChainView, HashWindow, Router};
use crate::upstream::http::HttpPool;
pub mod generations;

use crate::upstream::Pool;
use crate::ws::codec::Limits as CodecLimits;
use generations::{ChainState, Generation, Generations};

/// A worker thread's state across configuration generations.
pub struct Core {
    pub tls: Option<Arc<ServerConfig>>,
    /// This core's view of each chain by name (kept across generations
    /// while the chain is: its window of recent block hashes).
    chains: RefCell<Vec<(String, Rc<WorkerChain>)>>,
    /// Open connections of every generation (shutdown waits for them).
    pub active: Cell<u64>,
    /// Bytes held by HTTP request bodies still arriving on this core
    /// (`http.max_bodies_bytes`).
    pub bodies: Cell<usize>,
    /// This core's hedging (its one budget, `pool.hedge_budget`), renewed
    /// with each generation's settings.
    hedging: RefCell<Option<crate::hedge::Hedging>>,
    /// Fired when the process shuts down: sessions finish and close.
    pub shutdown: crate::signal::Broadcast,
    /// The process's configuration generations.
    pub generations: Arc<Generations>,
    /// The newest generation's state, made again when the generation
    /// number moves. (It points back here: both live as long as the thread.)
    current: RefCell<Option<Rc<Served>>>,
}

impl Core {
    /// A worker thread's state: its TLS config, its channels of recent
    /// block hashes (one per chain of the first generation, subscribed
    /// before the health threads publish), and the process's generations.
    pub fn new(
        tls: Option<Arc<ServerConfig>>,
        hashes: Vec<(String, crate::health::HashFeed)>,
        generations: Arc<Generations>,
    ) -> Rc<Core> {
        let first = generations.current();
        crate::stats::install(&generations.stats);
        let chains = hashes
            .into_iter()
            .filter_map(|(name, feed)| {
                let c = first.chain(&name)?;
                Some((name, WorkerChain::new(&c.health, feed)))
            })
            .collect();
        Rc::new(Core {
            tls,
            chains: RefCell::new(chains),
            active: Cell::new(0),
            bodies: Cell::new(0),
            hedging: RefCell::new(None),
            shutdown: crate::signal::Broadcast::default(),
            generations,
            current: RefCell::new(None),
        })
    }

    /// The newest generation's state: one atomic load when nothing changed;
    /// after a reload, this core's state for the new configuration (each
    /// chain's rate buckets and per-address connection counts carried
    /// over), and the old one's idle shared node connections closed.
    pub fn served(self: &Rc<Core>) -> Rc<Served> {
        let number = self.generations.number();
        if let Some(s) = self.current.borrow().as_ref() {
            if s.generation == number {
                return s.clone();
            }
        }
        let generation = self.generations.current();
        let old = self.current.borrow_mut().take();
        let chains = generation
            .chains
            .iter()
            .map(|c| {
                let before = old.as_ref().and_then(|o| o.named(&c.chain.name));
                let view = self.view(c);
                Worker::new(
                    &generation,
                    c,
                    view,
                    self.clone(),
                    before.map(|w| &*w.admission),
                )
            })
            .collect();
        if let Some(old) = &old {
            for w in &old.chains {
                if let Some(shared) = &w.cache_side {
                    shared.supersede();
                }
            }
        }
        let new = Rc::new(Served {
            keys: generation.keys.clone(),
            generation: generation.number,
            config: generation.config.clone(),
            chains,
            core: self.clone(),
        });
        *self.current.borrow_mut() = Some(new.clone());
        new
    }

    /// This core's hedging with `config`'s settings: one budget per core,
    /// whatever the chain or generation.
    fn hedging(&self, config: &Config) -> crate::hedge::Hedging {
        let mut h = self.hedging.borrow_mut();
        let (hedge, reads, fraction) = (
            config.hedge,
            config.hedge_reads.clone(),
            config.hedge_budget,
        );
        let renewed = match h.as_ref() {
            Some(old) => old.renew(hedge, reads, fraction),
            None => crate::hedge::Hedging::new(hedge, reads, fraction),
        };
        *h = Some(renewed.clone());
        renewed
    }

    /// This core's view of chain `c`: the one it had, if it is the same
    /// chain (the same health across generations), else a new one.
    fn view(&self, c: &ChainState) -> Rc<WorkerChain> {
        let mut chains = self.chains.borrow_mut();
        if let Some((_, v)) = chains
            .iter()
            .find(|(n, v)| *n == c.chain.name && v.health.same_pool(&c.health))
        {
            return v.clone();
        }
        let v = WorkerChain::new(&c.health, c.health.subscribe_hashes());
        chains.retain(|(n, _)| *n != c.chain.name);
        chains.push((c.chain.name.clone(), v.clone()));
        v
    }
}

/// One configuration generation's state on one core: a [`Worker`] per chain.
pub struct Served {
    /// The configuration generation this was made from.
    pub generation: u64,
    /// The whole file's settings (listeners, limits, TLS, logs).
    pub config: Arc<Config>,
    /// In the configuration's order.
    pub chains: Vec<Rc<Worker>>,
    pub core: Rc<Core>,
    /// The API keys, if any.
    pub keys: Option<Arc<crate::policy::keys::Keys>>,
}

impl Served {
    /// The chain for a request by its `Host`, its connection's TLS server
    /// name and its path; and the path its node sees.
    pub fn select<'p>(
        &self,
        host: Option<&[u8]>,
        sni: Option<&str>,
        path: &'p str,
    ) -> Result<(&Rc<Worker>, std::borrow::Cow<'p, str>), crate::config::Miss> {
        let host = host.and_then(crate::config::chains::host_name);
        let sni = sni.map(str::to_ascii_lowercase);
        let (i, path) = crate::config::chains::select(
            &self.config.chains,
            host.as_deref(),
            sni.as_deref(),
            path,
        )?;
        Ok((&self.chains[i], path))
    }

    /// The chain named `name`.
    pub fn named(&self, name: &str) -> Option<&Rc<Worker>> {
        self.chains.iter().find(|w| w.name == name)
    }

    /// Count a connection as open until the guard drops: at its end, or
    /// when its task is dropped after a panic (shutdown waits for the count).
    pub fn enter(&self) -> Active {
        let active = &self.core.active;
        active.set(active.get() + 1);
        Active(self.core.clone())
    }
}

/// One configuration generation's state of one chain on one core.
pub struct Worker {
    /// The chain's name.
    pub name: String,
    /// The chain's settings.
    pub config: Arc<Config>,
    /// The configuration generation this was made from.
    pub generation: u64,
    pub core: Rc<Core>,
    /// This core's view of the chain's heads and recent block hashes.
    pub chain: Rc<WorkerChain>,
    pub pool: Rc<Pool>,
    pub session: SessionConfig,
    pub router: Router,
    pub http: HttpPool,
    /// Hedged reads: the rule and this core's budget (HTTP and shared alike).
    pub hedging: crate::hedge::Hedging,
    pub admission: Rc<crate::policy::AdmissionCtx>,
    /// Shared node connections (`pool.shared`), else `None`: pinned sessions.
    pub shared: Option<Rc<crate::relay::shared::Shared>>,
    /// What pinned sessions send their cacheable calls and split batches
    /// on (this core's shared connections: opened on first use), if the
    /// cache is on or the pool has archive nodes.
    pub cache_side: Option<Rc<crate::relay::shared::Shared>>,
    /// The kept answers and requests on their way (`cache.enabled`), for
    /// HTTP and WebSocket alike.
    pub answers: Option<Rc<crate::call::Answers>>,
}

impl Worker {
    /// This core's state for one generation: its config and node health
    /// view; the admission state (buckets, counts) of the generation
    /// before, if any, with the new settings.
    fn new(
        generation: &Generation,
        state: &ChainState,
        chain: Rc<WorkerChain>,
        core: Rc<Core>,
        before: Option<&crate::policy::AdmissionCtx>,
    ) -> Rc<Worker> {
        let config = state.config().clone();
        let health = state.health.clone();
        let slot = crate::stats::chain_slot(&state.chain.name);
        let total = core.generations.totals.clone();
        let counts = core.generations.counts;
        let l = &config.limits;
        let depth = config
            .nodes
            .iter()
            .filter(|n| n.role == crate::config::Role::Pruned)
            .map(|n| n.pruning)
            .min()
            .unwrap_or(u64::MAX);
        let extra: Vec<(String, usize)> = config
            .routing
            .block_args
            .iter()
            .map(|(m, i)| (m.clone(), *i))
            .collect();
        let router = Router::new(
            config.flavour,
            depth,
            config.routing.archive_methods.as_deref(),
            &extra,
            config.routing.pruned_errors.as_deref(),
        );
        let pool = Pool::new(config.nodes.clone(), health, config.shared);
        let codec = CodecLimits {
            max_frame: l.max_frame_bytes,
            max_message: l.max_message_bytes,
        };
        let node_codec = CodecLimits {
            max_frame: l.max_answer_bytes,
            max_message: l.max_answer_bytes,
        };
        let admission = Rc::new(match before {
            Some(old) => old.renew(&config.admission),
            None => crate::policy::AdmissionCtx::new(&config.admission, total),
        });
        let c = &config.cache;
        let cache = c.enabled.then(|| {
            let ttls = crate::cache::Ttls {
                static_ttl: std::time::Duration::from_secs(c.static_ttl_s),
                final_ttl: std::time::Duration::from_secs(c.final_ttl_s),
            };
            let methods: Vec<(String, u64)> =
                c.methods.iter().map(|(m, t)| (m.clone(), *t)).collect();
            let rules = crate::cache::Rules::new(config.flavour, ttls, &methods);
            crate::cache::Cache::new(rules, c.max_bytes, slot)
        });
        let settings = crate::relay::shared::Settings {
            connect_timeout: config.connect_timeout,
            keepalive: config.keepalive_interval,
            health_every: config.health.interval,
            codec: node_codec,
            max_head: l.max_head_bytes,
            max_subscriptions: config.shared_max_subscriptions,
            max_connections: config.shared_max_connections,
            request_timeout: config.request_timeout,
            follow: crate::relay::shared::FollowLimits {
                pins: l.follow_max_pins,
                pin_age: l.follow_pin_age,
                ..Default::default()
            },
        };
        let hedging = core.hedging(&config);
        // The cluster's second level, for lasting answers the first misses.
        let second = core
            .generations
            .cluster
            .as_ref()
            .and_then(|c| c.cache.as_ref())
            .filter(|_| cache.is_some())
            .and_then(|link| {
                match crate::cache::second::Level2::new(
                    link,
                    state.health.clone(),
                    core.generations
                        .cluster
                        .as_ref()
                        .map_or(1 << 20, |c| c.config.cache_max_bytes),
                ) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        crate::error!("cache: no second level on this core ({e})");
                        None
                    }
                }
            });
        // The kept answers and requests on their way: HTTP's and every
        // session's, of both modes.
        let answers = cache.map(|c| Rc::new(crate::call::Answers::new(c, second)));
        // One set of shared connections per core: every session's node side
        // in shared mode; in pinned mode only what pinned sessions send for
        // the cache to answer, and the batches they split by role.
        let has_archive = config
            .nodes
            .iter()
            .any(|n| n.role == crate::config::Role::Archive);
        let side = (config.shared || answers.is_some() || has_archive).then(|| {
            crate::relay::shared::new(
                pool.clone(),
                router.clone(),
                settings,
                admission.shared.clone(),
                answers.clone(),
                hedging.clone(),
            )
        });
        let shared = side.clone().filter(|_| config.shared);
        Rc::new(Worker {
            name: state.chain.name.clone(),
            generation: generation.number,
            core,
            chain,
            shared,
            cache_side: side,
            answers,
            admission,
            router,
            http: HttpPool::new(config.nodes.len()),
            hedging,
            pool,
            session: SessionConfig {
                chain: slot,
                codec,
                node_codec,
                max_buffered: l.max_buffered_bytes,
                idle_timeout: l.idle_timeout,
                close_timeout: l.close_timeout,
                keepalive: config.keepalive_interval,
                request_timeout: config.request_timeout,
                slow_reader: l.slow_reader,
                send_timeout: l.send_timeout,
                counts,
            },
            config: config.clone(),
        })
    }

    /// Whether a session on `node` routes its messages: it is on a pruned
    /// node and the pool has archive nodes.
    pub fn routes(&self, node: &crate::config::NodeConfig) -> bool {
        node.role == crate::config::Role::Pruned
            && self
                .pool
                .nodes()
                .iter()
                .any(|n| n.role == crate::config::Role::Archive)
    }
}

/// A connection counted in [`Core::active`].
pub struct Active(Rc<Core>);

impl Drop for Active {
    fn drop(&mut self) {
        let active = &self.0.active;
        active.set(active.get() - 1);
    }
}

/// This worker's view of the chain for routing: the best head (atomic, from
/// the health thread; common to every generation's [`Health`] view) and its
/// own window of recent block hashes, filled from its channel when a
/// decision needs it.
pub struct WorkerChain {
    health: Arc<Health>,
    window: RefCell<HashWindow>,
    /// The finalized block this core knows the hash of.
    finalized: RefCell<Option<(u64, Rc<[u8]>)>>,
    hashes: crate::health::HashFeed,
}

impl ChainView for WorkerChain {
    fn head(&self) -> u64 {
        self.health.best()
    }

    fn height_of(&self, hash: &[u8]) -> Option<u64> {
        self.drain();
        self.window.borrow().get(hash)
    }

    fn finalized(&self) -> u64 {
        self.health.finalized()
    }

    fn finalized_hash(&self) -> Option<Rc<[u8]>> {
        let n = self.health.finalized();
        let mut mine = self.finalized.borrow_mut();
        if !mine.as_ref().is_some_and(|(m, _)| *m >= n) {
            // Once per finalized block on each core: the lock is not per call.
            *mine = self
                .health
                .finalized_hash()
                .map(|(n, h)| (n, Rc::from(h.as_bytes())));
        }
        mine.as_ref().map(|(_, h)| h.clone())
    }
}

impl WorkerChain {
    fn new(health: &Arc<Health>, hashes: crate::health::HashFeed) -> Rc<WorkerChain> {
        Rc::new(WorkerChain {
            hashes,
            health: health.clone(),
            window: RefCell::new(HashWindow::new(4096)),
            finalized: RefCell::new(None),
        })
    }

    /// Take in the hashes the health thread published since.
    fn drain(&self) {
        let mut w = self.window.borrow_mut();
        for (h, n) in self.hashes.take() {
            w.insert(h.as_bytes(), n);
        }
    }
}
