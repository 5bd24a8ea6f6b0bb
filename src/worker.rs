//! One core's state, owned by its worker thread and shared by every
//! connection task on it: the config, node pool and health view, routing,
//! admission shards, the HTTP node pool, shared node connections, and the
//! worker's shutdown event. Nothing here is touched by another core except
//! through the atomics of [`crate::health::Health`] and the admission totals.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::Config;
use crate::health::Health;
use crate::http::client::HttpPool;
use crate::relay::SessionConfig;
use crate::route::{ChainView, HashWindow, Router};
use crate::upstream::Pool;
use crate::ws::codec::Limits as CodecLimits;

/// Per-worker state, owned by one thread.
pub struct Worker {
    pub config: Arc<Config>,
    pub tls: Option<Arc<ServerConfig>>,
    pub pool: Rc<Pool>,
    pub session: SessionConfig,
    pub active: Cell<u64>,
    pub router: Router,
    pub chain: WorkerChain,
    pub http: HttpPool,
    pub admission: Rc<crate::policy::AdmissionCtx>,
    /// Shared node connections (`pool.shared`), else `None`: pinned sessions.
    pub shared: Option<Rc<crate::relay::shared::Shared>>,
    /// Fired when the process shuts down: sessions finish and close.
    pub shutdown: crate::signal::Broadcast,
}

impl Worker {
    /// This core's state, from the config and what the process shares:
    /// node health, this worker's channel of recent block hashes, and the
    /// admission totals.
    pub fn new(
        config: Arc<Config>,
        tls: Option<Arc<ServerConfig>>,
        health: Arc<Health>,
        hashes: std::sync::mpsc::Receiver<(String, u64)>,
        total: Arc<crate::policy::SharedCounts>,
    ) -> Rc<Worker> {
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
        let chain = WorkerChain {
            hashes,
            health: health.clone(),
            window: std::cell::RefCell::new(HashWindow::new(4096)),
        };
        let pool = Pool::new(config.nodes.clone(), health);
        let codec = CodecLimits {
            max_frame: l.max_frame_bytes,
            max_message: l.max_message_bytes,
        };
        let admission = Rc::new(crate::policy::AdmissionCtx::new(&config.admission, total));
        let shared = config.shared.then(|| {
            crate::relay::shared::Shared::new(
                pool.clone(),
                router.clone(),
                crate::relay::shared::Settings {
                    connect_timeout: config.connect_timeout,
                    keepalive: config.keepalive_interval,
                    health_every: config.health.interval,
                    codec,
                    max_head: l.max_head_bytes,
                    max_subscriptions: config.shared_max_subscriptions,
                    request_timeout: config.request_timeout,
                },
                admission.shared.clone(),
            )
        });
        Rc::new(Worker {
            shutdown: crate::signal::Broadcast::default(),
            shared,
            admission,
            router,
            chain,
            http: HttpPool::new(config.nodes.len()),
            pool,
            session: SessionConfig {
                codec,
                max_buffered: l.max_buffered_bytes,
                idle_timeout: l.idle_timeout,
                close_timeout: l.close_timeout,
                keepalive: config.keepalive_interval,
                request_timeout: config.request_timeout,
            },
            config: config.clone(),
            tls,
            active: Cell::new(0),
        })
    }

    /// Count a connection as open until the guard drops: at its end, or
    /// when its task is dropped after a panic (shutdown waits for the count).
    pub fn enter(self: &Rc<Self>) -> Active {
        self.active.set(self.active.get() + 1);
        Active(self.clone())
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

/// A connection counted in [`Worker::active`].
pub struct Active(Rc<Worker>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

/// This worker's view of the chain for routing: the best head (atomic, from
/// the health thread) and its own window of recent block hashes, filled from
/// its channel when a decision needs it.
pub struct WorkerChain {
    health: Arc<Health>,
    window: std::cell::RefCell<HashWindow>,
    hashes: std::sync::mpsc::Receiver<(String, u64)>,
}

impl ChainView for WorkerChain {
    fn head(&self) -> u64 {
        self.health.best()
    }

    fn height_of(&self, hash: &[u8]) -> Option<u64> {
        let mut w = self.window.borrow_mut();
        while let Ok((h, n)) = self.hashes.try_recv() {
            w.insert(h.as_bytes(), n);
        }
        w.get(hash)
    }
}
