//! Configuration generations: what SIGHUP changes while the gateway runs,
//! as `nginx -s reload` does (`systemctl reload ringway`).
//!
//! ```text
//! SIGHUP ─▶ load the file again (flags still win) ─▶ validate ─┬─ error: logged (file, key, why), nothing changes
//!                                                              └─ ok: certificate, logs, node health view,
//!                                                                 probes; generation number + 1
//! worker k, at its next accept ─▶ Core::worker(): number moved ─▶ its state for the new config
//! ```
//!
//! Everything in the file applies to new connections: nodes (added,
//! removed, re-weighted, roles), limits, admission, routing tables, health
//! settings, shared mode; logs and the certificate apply at once. Open
//! sessions keep the configuration they started with (as nginx's old
//! workers do), with two exceptions: the per-address rate buckets and
//! connection counts are the core's and take the new rates at once, and a
//! session whose node was removed finishes its requests and is closed 1001
//! after `pool.removed_grace_ms`. A node kept by url keeps its health (its
//! probes carry on in the new generation's health thread). What only a
//! restart can change (the listening sockets, the worker count, TLS on or
//! off) keeps its old value and is named in the log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::{Config, TlsMode};
use crate::health::Health;
use crate::metrics::Reloads;

/// One configuration: its chains, each with the node health view that goes
/// with it.
pub struct Generation {
    /// 1 at start, one more per reload that took effect.
    pub number: u64,
    /// The whole file's settings (what is not per chain: listeners, TLS,
    /// limits, logs).
    pub config: Arc<Config>,
    /// In the order of the configuration.
    pub chains: Vec<ChainState>,
    /// The API keys (`keys.file`), if any.
    pub keys: Option<Arc<crate::policy::keys::Keys>>,
}

/// One chain of a generation.
pub struct ChainState {
    pub chain: crate::config::Chain,
    pub health: Arc<Health>,
    /// Stops this chain's health thread.
    probes: Arc<AtomicBool>,
}

impl ChainState {
    fn start(chain: crate::config::Chain, health: Arc<Health>) -> ChainState {
        let probes = Arc::new(AtomicBool::new(false));
        let c = &chain.config;
        crate::probe::spawn(
            c.nodes.clone(),
            c.flavour,
            c.health,
            health.clone(),
            probes.clone(),
        );
        ChainState {
            chain,
            health,
            probes,
        }
    }

    /// This chain's settings.
    pub fn config(&self) -> &Arc<Config> {
        &self.chain.config
    }
}

/// The usage state file `config` names, read before the keys take their
/// usage from it (the first time one is named; see
/// [`crate::policy::usage::Book::set_state`]).
fn read_state(config: &Config, book: &crate::policy::usage::Book) -> Result<(), String> {
    let keys = config.keys.as_ref();
    let state = keys.and_then(|k| k.state.clone().map(|p| (p, k.state_interval)));
    let reset = keys.is_some_and(|k| k.state_reset);
    book.set_state(state, config.cluster.is_some(), reset)
}

impl Generation {
    fn start(
        number: u64,
        config: Config,
        healths: Vec<Arc<Health>>,
        keys_before: Option<&crate::policy::keys::Keys>,
        book: &crate::policy::usage::Book,
    ) -> Generation {
        let keys = match (&config.keys, keys_before) {
            (Some(k), before) => Some(Arc::new(crate::policy::keys::Keys::build(k, before, book))),
            // Keys turned off: every old key's sessions close.
            (None, Some(before)) => {
                before.revoke_all();
                None
            }
            (None, None) => None,
        };
        let chains = config
            .chains
            .iter()
            .cloned()
            .zip(healths)
            .map(|(c, h)| ChainState::start(c, h))
            .collect();
        Generation {
            number,
            config: Arc::new(config),
            chains,
            keys,
        }
    }

    /// The chain named `name`, if this generation serves it.
    pub fn chain(&self, name: &str) -> Option<&ChainState> {
        self.chains.iter().find(|c| c.chain.name == name)
    }
}

fn fresh_health(c: &crate::config::Chain) -> Arc<Health> {
    Health::for_chain(c.config.nodes.len(), c.config.chain_id.clone())
}

/// The process's generations: the current one, and how reloads went; and
/// what every generation shares (admission totals, the cores' counters).
pub struct Generations {
    current: Mutex<Arc<Generation>>,
    number: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Whether the last reload was refused.
    last_failed: AtomicBool,
    /// Admission totals, common to every worker and generation.
    pub totals: Arc<crate::policy::SharedCounts>,
    /// The same, for what holds no Arc (a session's configuration): they
    /// live as long as the process.
    pub counts: &'static crate::policy::SharedCounts,
    /// Every core's counters, for `/metrics`.
    pub stats: crate::stats::Registry,
    /// The io driver the workers run on (io_uring, else epoll).
    pub io_uring: bool,
    /// Every API key's usage, across generations (`/usage`, the state file).
    pub usage: Arc<crate::policy::usage::Book>,
    /// The cluster's sync thread (`[cluster]`, read at start).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Stops the usage keeper thread (which then writes the state file once more).
    usage_stop: Arc<AtomicBool>,
    usage_keeper: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Generations {
    /// Generation 1 from the configuration at start; its health thread
    /// starts. `Err`: the cluster's name is another running gateway's (the
    /// error names the key and the file).
    pub fn start(config: Config, io_uring: bool) -> Result<Arc<Generations>, String> {
        let healths = config.chains.iter().map(fresh_health).collect();
        let usage: Arc<crate::policy::usage::Book> = Arc::default();
        let origin = config
            .source
            .as_ref()
            .map_or("command line".into(), |p| p.display().to_string());
        read_state(&config, &usage).map_err(|e| format!("{origin}: {e}"))?;
        let cluster = match config.cluster.clone() {
            Some(c) => Some(
                crate::cluster::Cluster::start(c, usage.clone())
                    .map_err(|e| format!("{origin}: key `cluster.instance`: {e}"))?,
            ),
            None => None,
        };
        let first = Generation::start(1, config, healths, None, &usage);
        let usage_stop = Arc::new(AtomicBool::new(false));
        let keeper = {
            let (book, stop) = (usage.clone(), usage_stop.clone());
            std::thread::Builder::new()
                .name("usage".into())
                .spawn(move || {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::policy::usage::keep(book, stop)
                    }));
                    if run.is_err() {
                        crate::task::fatal("the usage keeper thread");
                    }
                })
                .ok()
        };
        let totals: Arc<crate::policy::SharedCounts> = Arc::default();
        let counts: &'static Arc<_> = Box::leak(Box::new(totals.clone()));
        Ok(Arc::new(Generations {
            current: Mutex::new(Arc::new(first)),
            number: AtomicU64::new(1),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_failed: AtomicBool::new(false),
            totals,
            counts,
            stats: Default::default(),
            io_uring,
            usage,
            cluster,
            usage_stop,
            usage_keeper: Mutex::new(keeper),
        }))
    }

    /// The drain begins: the cluster stops counting this gateway's
    /// sessions (their clients reconnect to the others).
    pub fn draining(&self) {
        if let Some(c) = &self.cluster {
            c.draining();
        }
    }

    /// At drain, once no session is left: the usage keeper writes the
    /// state file a last time and ends.
    pub fn finish_usage(&self) {
        // The cluster's last sync first: this instance's sessions 0, its
        // unused grant back, its name free.
        if let Some(c) = &self.cluster {
            c.finish(std::time::Duration::from_secs(2));
        }
        self.usage_stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.usage_keeper.lock().take() {
            let _ = h.join();
        }
    }

    /// The current generation's number: what a worker compares at each accept.
    pub fn number(&self) -> u64 {
        self.number.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.lock().clone()
    }

    pub fn outcome(&self) -> Reloads {
        Reloads {
            generation: self.number(),
            ok: self.reloads_ok.load(Ordering::Relaxed),
            failed: self.reloads_failed.load(Ordering::Relaxed),
            last_failed: self.last_failed.load(Ordering::Relaxed),
        }
    }

    /// A reload that did not take effect: counted; the caller logs why.
    pub fn refused(&self) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(true, Ordering::Relaxed);
    }

    /// Make `new` the current configuration. `certs` (when TLS is on) load
    /// first: a pair that does not load refuses the whole reload. Returns
    /// what changed, for the log, or why nothing did.
    pub fn apply(
        &self,
        mut new: Config,
        certs: Option<&crate::tls::Certs>,
    ) -> Result<Vec<String>, String> {
        let mut current = self.current.lock();
        let old = current.clone();
        let mut notes = keep_fixed(&old.config, &mut new);
        read_state(&new, &self.usage)?;
        let own = new.chains.iter().any(|c| c.cert.is_some());
        if let (Some(certs), true) = (certs, matches!(new.tls, TlsMode::Files { .. }) || own) {
            match certs.reload(&new.tls, &new.chains) {
                Ok(what) => notes.push(format!("certificate reloaded from {what}")),
                Err(e) => return Err(format!("tls: {e}")),
            }
        }
        crate::log::set_level(new.log_level);
        crate::log::set_json(new.log_json);
        // Chains by name: a chain kept keeps its nodes' health (its probes
        // carry on in the new health thread); one removed has its sessions
        // closed after the grace, as a removed node's.
        let mut healths = Vec::new();
        for c in &new.chains {
            match old.chain(&c.name) {
                Some(o) => {
                    notes.extend(node_changes(&c.name, o.config(), &c.config));
                    healths.push(o.health.next(&o.config().nodes, &c.config.nodes));
                    for (i, n) in o.config().nodes.iter().enumerate() {
                        if !c.config.nodes.iter().any(|m| m.url == n.url) {
                            o.health.retire(i, new.removed_grace);
                        }
                    }
                }
                None => {
                    notes.push(format!("chain {} added", c.name));
                    healths.push(fresh_health(c));
                }
            }
        }
        for o in &old.chains {
            if new.chain_named(&o.chain.name).is_none() {
                notes.push(format!(
                    "chain {} removed: its sessions close in {} s",
                    o.chain.name,
                    new.removed_grace.as_secs()
                ));
                for i in 0..o.config().nodes.len() {
                    o.health.retire(i, new.removed_grace);
                }
            }
        }
        for o in &old.chains {
            o.probes.store(true, Ordering::Relaxed);
        }
        let number = old.number + 1;
        *current = Arc::new(Generation::start(
            number,
            new,
            healths,
            old.keys.as_deref(),
            &self.usage,
        ));
        self.number.store(number, Ordering::Release);
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(false, Ordering::Relaxed);
        Ok(notes)
    }
}

/// Settings only a restart changes: each one the new file changes keeps
/// its running value, and is named.
fn keep_fixed(old: &Config, new: &mut Config) -> Vec<String> {
    let mut kept = Vec::new();
    let mut keep = |name: &str, differs: bool| {
        if differs {
            kept.push(format!("{name} changed: kept as it is (needs a restart)"));
        }
        differs
    };
    if keep("server.listen", old.listen != new.listen) {
        new.listen = old.listen;
    }
    if keep(
        "cluster",
        old.cluster.as_ref().map(|c| &c.redis) != new.cluster.as_ref().map(|c| &c.redis),
    ) {
        new.cluster = old.cluster.clone();
    }
    if keep("server.workers", old.workers != new.workers) {
        new.workers = old.workers;
    }
    if keep("server.pin_workers", old.pin_workers != new.pin_workers) {
        new.pin_workers = old.pin_workers;
    }
    if keep(
        "server.redirect_listen",
        old.redirect_listen != new.redirect_listen,
    ) {
        new.redirect_listen = old.redirect_listen;
    }
    if keep(
        "server.metrics_listen",
        old.metrics_listen != new.metrics_listen,
    ) {
        new.metrics_listen = old.metrics_listen;
    }
    if keep("server.unix_listen", old.unix_listen != new.unix_listen) {
        new.unix_listen = old.unix_listen.clone();
    }
    let tls_on = |t: &TlsMode| !matches!(t, TlsMode::Off);
    if keep("tls.enabled", tls_on(&old.tls) != tls_on(&new.tls)) {
        new.tls = old.tls.clone();
    }
    let per_ip = crate::policy::AdmissionCtx::per_ip;
    if !per_ip(&old.admission) && per_ip(&new.admission) {
        kept.push(
            "per-address limits turned on: they hold per core until a restart (connections are steered to a core by address only when they were on at start)".into(),
        );
    }
    kept
}

/// Nodes added and removed in one chain, for the log.
fn node_changes(chain: &str, old: &Config, new: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    for n in &new.nodes {
        if !old.nodes.iter().any(|o| o.url == n.url) {
            notes.push(format!(
                "chain {chain}: node {} added ({})",
                n.url,
                n.role.name()
            ));
        }
    }
    for o in &old.nodes {
        if !new.nodes.iter().any(|n| n.url == o.url) {
            notes.push(format!(
                "chain {chain}: node {} removed: its sessions close in {} s",
                o.url,
                new.removed_grace.as_secs()
            ));
        }
    }
    notes
}
