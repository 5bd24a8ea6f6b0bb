//! Workers and connections: thread-per-core runtimes, `SO_REUSEPORT`
//! listeners, and the life of one client connection up to the relay.
//!
//! ```text
//! accept ─▶ TLS handshake ─▶ HTTP head (httparse) ─┬─ not an upgrade ─▶ status + body, close
//!          └──────── handshake timeout ────────────┤
//!                                                  └─ upgrade ─▶ node: connect + upgrade
//!                                                        ├─ refused ─▶ 502 (or the node's 4xx)
//!                                                        └─ 101 ─▶ 101 to client ─▶ relay
//! ```
//!
//! Everything before the relay runs in its own boxed future, freed before the
//! relay starts, so an established session keeps none of the handshake's
//! memory (header array, head buffer).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::{AsRawFd, RawFd};

use monoio::io::Splitable;
use monoio::net::TcpStream;
use rustls::ServerConfig;

use crate::config::Config;
use crate::health::Health;
use crate::http::body;
use crate::http::client::{self as rpc_http, HttpPool};
use crate::http::origin::origin_allowed;
use crate::http::write_response;
use crate::io::{
    give_buf, stop, take_buf, with_deadline, PlainReader, ReadHalf, Stop, WriteHalf, BUF_SIZE,
};
use crate::route::{ChainView, HashWindow, Router};
use crate::session::{relay, NodeWatch, Peer, SessionConfig};
use crate::upstream::{self, Pool};
use crate::ws::codec::Limits as CodecLimits;
use crate::ws::frame::Parse;
use crate::ws::handshake::{
    parse_head, validate_upgrade, write_switching_protocols, Forwarded, HandshakeError,
    HEADER_ARRAY,
};

/// A running gateway: its address and its worker threads.
pub struct Running {
    pub local_addr: SocketAddr,
    /// The HTTP-to-HTTPS redirect listener's address, if one is configured.
    pub redirect_addr: Option<SocketAddr>,
    /// The metrics listener's address, if one is configured.
    pub metrics_addr: Option<SocketAddr>,
    pub io_uring: bool,
    pub workers: Vec<std::thread::JoinHandle<()>>,
    /// Shuts the workers down (from another thread: a signal handler's).
    pub stopper: Stopper,
}

/// What [`Stopper::shutdown`] needs: every listening socket and the number
/// of workers.
pub struct Stopper {
    listener_fds: Vec<RawFd>,
    workers: usize,
    /// How long the workers may take (theirs, and a second more).
    wait: Duration,
}

/// Set by [`Stopper::shutdown`]; a worker sees it when its accept fails.
static SHUTTING_DOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Workers whose sessions have all ended since the shutdown began.
static DRAINED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The longest a worker waits on shutdown for its connections to end.
fn shutdown_deadline(limits: &crate::config::Limits) -> Duration {
    crate::session::SHUTDOWN_DRAIN + limits.close_timeout + Duration::from_secs(1)
}

impl Stopper {
    /// Stop accepting (the listening sockets are shut down, which wakes every
    /// worker's accept), and tell every session to finish: answers to
    /// requests in flight still go out, for up to
    /// [`crate::session::SHUTDOWN_DRAIN`], then requests still unanswered get
    /// JSON-RPC errors with their ids and clients get close 1001 (going away;
    /// they reconnect elsewhere). Idle HTTP keep-alive connections close.
    /// Returns once every worker has no connection left (true), or when the
    /// workers' own deadline has passed or `interrupted` (given a time to
    /// wait for an interruption) says so (false).
    pub fn shutdown(&self, mut interrupted: impl FnMut(Duration) -> bool) -> bool {
        use std::sync::atomic::Ordering;
        SHUTTING_DOWN.store(true, Ordering::Release);
        for &fd in &self.listener_fds {
            stop(fd, Stop::Reads);
        }
        let until = std::time::Instant::now() + self.wait;
        while DRAINED.load(Ordering::Acquire) < self.workers {
            if std::time::Instant::now() >= until || interrupted(crate::session::DRAIN_POLL) {
                return false;
            }
        }
        true
    }
}

/// Bind `n` listeners on `addr` with `SO_REUSEPORT`, so the kernel spreads
/// connections over the workers. Port 0 is resolved by the first bind and
/// reused for the rest.
pub fn bind_listeners(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n {
        let sock = Socket::new(Domain::for_address(bound), Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        sock.set_nodelay(true)?;
        sock.bind(&bound.into())?;
        sock.listen(4096)?;
        sock.set_nonblocking(true)?;
        let l: std::net::TcpListener = sock.into();
        bound = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Start the workers. Returns once every listener is bound.
pub fn start(config: Config, tls: Option<crate::tls::ServerTls>) -> io::Result<Running> {
    let listeners = bind_listeners(config.listen, config.workers)?;
    let local_addr = listeners[0].local_addr()?;
    // Per-address limits hold exactly when an address always lands on one core.
    if crate::admission::AdmissionCtx::per_ip(&config.admission) {
        if let Err(e) =
            crate::admission::steer_by_source(&listeners[0], listeners.len(), local_addr.is_ipv6())
        {
            crate::warn!(
                "cannot steer connections by source address ({e}); per-address limits are per core"
            );
        }
    }
    let total = Arc::new(crate::admission::SharedCounts::default());
    // The redirect and Unix listeners are served by worker 0.
    let mut extra = Some(Extra {
        redirect: match config.redirect_listen {
            Some(a) => {
                let l = std::net::TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        },
        metrics: match config.metrics_listen {
            Some(a) => {
                let l = std::net::TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        },
        unix: match &config.unix_listen {
            Some((path, mode)) => {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::remove_file(path);
                let l = std::os::unix::net::UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            None => None,
        },
        https_port: local_addr.port(),
    });
    let redirect_addr = match extra.as_ref().and_then(|e| e.redirect.as_ref()) {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let metrics_addr = match extra.as_ref().and_then(|e| e.metrics.as_ref()) {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let io_uring = monoio::utils::detect_uring();
    let health = Health::new(config.nodes.len());
    // Every worker's hash channel exists before the health thread publishes
    // its first hashes: a worker starting late must not miss them.
    let mut hash_channels: std::collections::VecDeque<_> = (0..listeners.len())
        .map(|_| health.subscribe_hashes())
        .collect();
    crate::probe::spawn(
        config.nodes.clone(),
        config.flavour,
        config.health,
        health.clone(),
    );
    let config = Arc::new(config);
    let tls = match tls {
        Some(t) => Some((
            Arc::new(t.config),
            t.certs,
            crate::tls::TicketSeed::new().map_err(io::Error::other)?,
        )),
        None => None,
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut listener_fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    if let Some(e) = extra.as_ref() {
        listener_fds.extend(e.redirect.as_ref().map(|l| l.as_raw_fd()));
        listener_fds.extend(e.metrics.as_ref().map(|l| l.as_raw_fd()));
        listener_fds.extend(e.unix.as_ref().map(|l| l.as_raw_fd()));
    }
    let mut workers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = config.clone();
        let tls = tls.clone();
        let health = health.clone();
        let total = total.clone();
        let extra = extra.take();
        let hashes = hash_channels.pop_front().expect("one per worker");
        let handle = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                if config.pin_workers {
                    pin_to_core(i % cores);
                }
                let tls = tls.map(|(base, certs, seed)| {
                    crate::tls::per_worker(&base, &certs, &seed, i as u32)
                });
                run_worker(
                    listener,
                    config,
                    tls,
                    (health, hashes),
                    total,
                    extra,
                    io_uring,
                );
            })?;
        workers.push(handle);
    }
    let stopper = Stopper {
        listener_fds,
        workers: workers.len(),
        wait: shutdown_deadline(&config.limits) + Duration::from_secs(1),
    };
    Ok(Running {
        local_addr,
        redirect_addr,
        metrics_addr,
        io_uring,
        workers,
        stopper,
    })
}

fn pin_to_core(core: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            crate::warn!(
                "could not pin to core {core}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// The shared node health, and this worker's channel of recent block hashes.
type WorkerHealth = (Arc<Health>, std::sync::mpsc::Receiver<(String, u64)>);

fn run_worker(
    listener: std::net::TcpListener,
    config: Arc<Config>,
    tls: Option<Arc<ServerConfig>>,
    health: WorkerHealth,
    total: Arc<crate::admission::SharedCounts>,
    extra: Option<Extra>,
    io_uring: bool,
) {
    let run = block_on(io_uring, || {
        serve(listener, config, tls, health, total, extra)
    });
    if let Err(e) = run {
        crate::error!("cannot start a runtime: {e}");
    }
}

/// Run a future on a new monoio runtime on this thread, to its end.
///
/// io_uring where `io_uring` is set and the kernel has it, with the
/// single-thread flags: each ring is used by its one thread only, completions
/// run as task work when the thread asks for events (DEFER_TASKRUN), with no
/// interrupts to signal them (COOP_TASKRUN). Older kernels lack the flags;
/// then a plain ring. The epoll driver otherwise, saying so.
pub fn block_on<F: std::future::Future>(
    io_uring: bool,
    make: impl FnOnce() -> F,
) -> io::Result<F::Output> {
    if io_uring {
        let mut tuned = io_uring::IoUring::builder();
        tuned
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
        for urb in [Some(tuned), None] {
            let mut b = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(4096);
            if let Some(urb) = urb {
                b = b.uring_builder(urb);
            }
            match b.enable_timer().build() {
                Ok(mut rt) => return Ok(rt.block_on(make())),
                Err(e) => crate::debug!("io_uring setup: {e}"),
            }
        }
        crate::warn!("io_uring runtime failed to start; using the epoll driver");
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    Ok(rt.block_on(make()))
}

/// Per-worker state, owned by one thread.
struct Worker {
    config: Arc<Config>,
    tls: Option<Arc<ServerConfig>>,
    pool: Rc<Pool>,
    session: SessionConfig,
    active: Cell<u64>,
    router: Router,
    chain: WorkerChain,
    http: HttpPool,
    admission: Rc<crate::admission::AdmissionCtx>,
    /// Shared node connections (`pool.shared`), else `None`: pinned sessions.
    shared: Option<Rc<crate::shared::Shared>>,
    /// Fired when the process shuts down: sessions finish and close.
    shutdown: crate::signal::Broadcast,
}

impl Worker {
    /// Count a connection as open until the guard drops: at its end, or
    /// when its task is dropped after a panic (shutdown waits for the count).
    fn enter(self: &Rc<Self>) -> Active {
        self.active.set(self.active.get() + 1);
        Active(self.clone())
    }

    /// Whether a session on `node` routes its messages: it is on a pruned
    /// node and the pool has archive nodes.
    fn routes(&self, node: &crate::config::NodeConfig) -> bool {
        node.role == crate::config::Role::Pruned
            && self
                .pool
                .nodes()
                .iter()
                .any(|n| n.role == crate::config::Role::Archive)
    }
}

/// A connection counted in [`Worker::active`].
struct Active(Rc<Worker>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}

/// This worker's view of the chain for routing: the best head (atomic, from
/// the health thread) and its own window of recent block hashes, filled from
/// its channel when a decision needs it.
struct WorkerChain {
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

async fn serve(
    listener: std::net::TcpListener,
    config: Arc<Config>,
    tls: Option<Arc<ServerConfig>>,
    (health, hashes): WorkerHealth,
    total: Arc<crate::admission::SharedCounts>,
    more: Option<Extra>,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            crate::error!("listener: {e}");
            return;
        }
    };
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
    let shared = config.shared.then(|| {
        crate::shared::Shared::new(
            pool.clone(),
            router.clone(),
            crate::shared::Settings {
                connect_timeout: config.connect_timeout,
                keepalive: config.keepalive_interval,
                health_every: config.health.interval,
                codec,
                max_head: l.max_head_bytes,
                max_subscriptions: config.shared_max_subscriptions,
            },
        )
    });
    let worker = Rc::new(Worker {
        shutdown: crate::signal::Broadcast::default(),
        shared,
        admission: Rc::new(crate::admission::AdmissionCtx::new(
            &config.admission,
            total,
        )),
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
        },
        config: config.clone(),
        tls,
        active: Cell::new(0),
    });
    if let Some(more) = more {
        if let Some(l) = more.redirect {
            let port = more.https_port;
            monoio::spawn(serve_plain(l, move |s| redirect_one(s, port)));
        }
        if let Some(l) = more.unix {
            monoio::spawn(serve_unix(l, worker.clone()));
        }
        if let Some(l) = more.metrics {
            let worker = worker.clone();
            monoio::spawn(serve_plain(l, move |s| metrics_one(s, worker.clone())));
        }
    }
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // TCP_NODELAY comes from the listener (Linux copies it to
                // accepted sockets): no setsockopt per connection.
                let fut = CatchUnwind(connection(stream, peer, worker.clone()));
                monoio::spawn(fut);
            }
            Err(_) if shutting_down() => break,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                crate::warn!("accept: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Shutting down: sessions finish (see `Stopper::shutdown`); the runtime
    // stays until the process exits.
    worker.shutdown.fire();
    let until = std::time::Instant::now() + shutdown_deadline(&worker.config.limits);
    while worker.active.get() > 0 && std::time::Instant::now() < until {
        monoio::time::sleep(crate::session::DRAIN_POLL).await;
    }
    DRAINED.fetch_add(1, std::sync::atomic::Ordering::Release);
    std::future::pending::<()>().await;
}

fn shutting_down() -> bool {
    SHUTTING_DOWN.load(std::sync::atomic::Ordering::Acquire)
}

async fn connection(tcp: TcpStream, peer: SocketAddr, worker: Rc<Worker>) {
    let _active = worker.enter();
    let fd = tcp.as_raw_fd();
    match worker.tls.clone() {
        Some(cfg) => {
            let timeout = worker.config.limits.handshake_timeout;
            // Boxed, like the HTTP phase: its memory is freed before the session starts.
            // Slowloris: the minimum rate of the request head applies to
            // the TLS handshake before it too.
            let rate = worker.config.limits.handshake_min_rate;
            let min_rate = (rate > 0).then_some(crate::tls::MinRate {
                bytes_per_s: rate,
                grace: HEAD_RATE_GRACE,
            });
            let accept = Box::pin(crate::tls::accept(tcp, cfg, min_rate));
            let accepted = with_deadline(timeout, || stop(fd, Stop::All), accept).await;
            match accepted {
                Ok((r, w)) => client(r, w, fd, peer, &worker, "https").await,
                Err(e) => crate::debug!("TLS handshake with {peer} failed: {e}"),
            }
        }
        None => {
            let (r, w) = tcp.into_split();
            client(PlainReader::new(r), w, fd, peer, &worker, "http").await;
        }
    }
}

/// A WebSocket session's access line (`log.access`, logfmt key=value
/// pairs), begun at the session's start only when the log is on.
struct Access {
    client: std::net::IpAddr,
    node: String,
    started: std::time::Instant,
}

impl Access {
    fn begin(
        worker: &Worker,
        client: std::net::IpAddr,
        node: &crate::config::NodeConfig,
    ) -> Option<Access> {
        worker.config.access_log.then(|| Access {
            client,
            node: node.url.clone(),
            started: std::time::Instant::now(),
        })
    }

    fn end(self, messages_in: u64, messages_out: Option<u64>, close: Option<u16>, reason: &str) {
        let out = messages_out.map_or("-".to_string(), |n| n.to_string());
        let close = close.map_or("-".to_string(), |c| c.to_string());
        crate::info!(
            "access kind=ws client={} node={} ms={} in={messages_in} out={out} close={close} reason={reason:?}",
            self.client,
            self.node,
            self.started.elapsed().as_millis()
        );
    }
}

/// Run `fut`; if the worker shuts down first, call `stop` (which ends the
/// socket's pending reads) and let `fut` finish on its own.
async fn unless_shutdown<F: Future>(
    shutdown: &crate::signal::Broadcast,
    stop: impl FnOnce(),
    fut: F,
) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    monoio::select! {
        out = &mut fut => return out,
        _ = shutdown.wait() => {}
    }
    stop();
    fut.await
}

/// A connection's place in the admission counts, and its client address.
struct Admitted {
    _guard: crate::admission::ConnGuard,
    ip: std::net::IpAddr,
}

/// What the handshake phase produced.
enum Handshake<UR, UW> {
    /// Relay with these node halves, after these early bytes.
    Relay {
        client_early: Vec<u8>,
        upstream: (UR, UW),
        upstream_early: Vec<u8>,
        upstream_fd: RawFd,
        _lease: upstream::NodeLease,
        template: upstream::UpgradeTemplate,
        admitted: Admitted,
    },
    /// Serve the session over this core's shared connection to a node.
    Shared {
        client_early: Vec<u8>,
        conn: Rc<crate::shared::Conn>,
        lease: upstream::NodeLease,
        admitted: Admitted,
    },
    /// HTTP requests (JSON-RPC POST, CORS preflight): `buf` starts with the first head.
    Http { buf: Vec<u8>, admitted: Admitted },
    /// A response was sent (or the client left): close.
    Done,
}

async fn client<R: ReadHalf, W: WriteHalf>(
    mut r: R,
    mut w: W,
    fd: RawFd,
    peer: SocketAddr,
    worker: &Rc<Worker>,
    proto: &'static str,
) {
    let timeout = worker.config.limits.handshake_timeout;
    let timed_out = Cell::new(false);
    let expire = || {
        timed_out.set(true);
        stop(fd, Stop::Reads);
    };
    // Boxed so that its memory is freed before the long-lived relay starts.
    let phase = Box::pin(handshake(
        &mut r, &mut w, fd, peer, worker, proto, &timed_out,
    ));
    let outcome = with_deadline(timeout, expire, phase).await;
    match outcome {
        Handshake::Relay {
            client_early,
            upstream,
            upstream_early,
            upstream_fd,
            _lease,
            template,
            admitted,
        } => {
            // Messages are looked at one by one when this session routes
            // (see `Worker::routes`), or when admission limits apply to each call.
            let route = worker.routes(_lease.node());
            let inspect = worker.admission.inspects();
            let routed = (route || inspect).then(|| crate::session::Routed {
                router: &worker.router,
                chain: &worker.chain,
                pool: worker.pool.clone(),
                template,
                connect_timeout: worker.config.connect_timeout,
                route,
                admission: inspect.then_some((&*worker.admission, admitted.ip)),
            });
            let watch = NodeWatch {
                health: worker.pool.health().clone(),
                index: _lease.index(),
                every: worker.config.health.interval,
            };
            let client = Peer {
                r,
                w,
                early: client_early,
                fd,
            };
            let (ur, uw) = upstream;
            let node = Peer {
                r: ur,
                w: uw,
                early: upstream_early,
                fd: upstream_fd,
            };
            let access = Access::begin(worker, admitted.ip, _lease.node());
            let summary = relay(
                client,
                node,
                worker.session,
                Some(watch),
                routed,
                &worker.shutdown,
            )
            .await;
            crate::debug!(
                "session {peer} ended: {} ({} messages in, {} out)",
                summary.reason,
                summary.client_messages,
                summary.upstream_messages
            );
            if let Some(a) = access {
                a.end(
                    summary.client_messages,
                    Some(summary.upstream_messages),
                    summary.client_close_code,
                    summary.reason,
                );
            }
        }
        Handshake::Shared {
            client_early,
            conn,
            lease,
            admitted,
        } => {
            let inspect = worker.admission.inspects();
            let ctx = crate::shared::Ctx {
                shared: worker.shared.clone().expect("shared mode"),
                cfg: worker.session,
                chain: &worker.chain,
                route: worker.routes(lease.node()),
                admission: inspect.then_some((&*worker.admission, admitted.ip)),
                shutdown: &worker.shutdown,
            };
            let access = Access::begin(worker, admitted.ip, lease.node());
            let summary = crate::shared::session(ctx, conn, lease, r, w, client_early, fd).await;
            crate::debug!(
                "session {peer} ended: {} ({} messages)",
                summary.reason,
                summary.messages
            );
            if let Some(a) = access {
                a.end(summary.messages, None, summary.close_code, summary.reason);
            }
        }
        // Boxed: its header arrays must not size every WebSocket session's task.
        Handshake::Http { buf, admitted } => {
            Box::pin(http_loop(&mut r, &mut w, fd, peer, worker, buf, &admitted)).await
        }
        Handshake::Done => {}
    }
}

async fn handshake<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    peer: SocketAddr,
    worker: &Rc<Worker>,
    proto: &'static str,
    timed_out: &Cell<bool>,
) -> Handshake<upstream::NodeReader, upstream::NodeWriter> {
    let limits = &worker.config.limits;
    let mut buf = if limits.max_head_bytes <= BUF_SIZE {
        take_buf()
    } else {
        Vec::with_capacity(limits.max_head_bytes)
    };
    let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
    // Read until the head is complete.
    let head_start = std::time::Instant::now();
    let head_len = loop {
        let (res, b) = r.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) if timed_out.get() => {
                refuse(r, w, fd, HandshakeError::Timeout).await;
                give_buf(buf);
                return Handshake::Done;
            }
            Ok(0) => {
                give_buf(buf);
                return Handshake::Done;
            }
            Ok(_) => {}
            Err(_) => {
                give_buf(buf);
                return Handshake::Done;
            }
        }
        let mut scratch = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        match parse_head(
            &buf,
            &mut scratch,
            limits.max_head_bytes,
            limits.max_headers,
        ) {
            Ok(Parse::Done(_, len)) => break len,
            // Slowloris: a head still incomplete after the grace period and
            // arriving slower than the minimum rate is cut off early.
            Ok(Parse::NeedMore(_))
                if limits.handshake_min_rate > 0
                    && head_start.elapsed() >= HEAD_RATE_GRACE
                    && (buf.len() as f64)
                        < limits.handshake_min_rate as f64 * head_start.elapsed().as_secs_f64() =>
            {
                crate::debug!(
                    "{peer}: request head below {} bytes/s",
                    limits.handshake_min_rate
                );
                refuse(r, w, fd, HandshakeError::Timeout).await;
                give_buf(buf);
                return Handshake::Done;
            }
            Ok(Parse::NeedMore(_)) if buf.len() == buf.capacity() => {
                refuse(r, w, fd, HandshakeError::HeadTooLarge).await;
                give_buf(buf);
                return Handshake::Done;
            }
            Ok(Parse::NeedMore(_)) => {}
            Err(e) => {
                crate::debug!("bad request from {peer}: {e}");
                refuse(r, w, fd, e).await;
                give_buf(buf);
                return Handshake::Done;
            }
        }
    };
    let Ok(Parse::Done(head, _)) = parse_head(
        &buf,
        &mut headers,
        limits.max_head_bytes,
        limits.max_headers,
    ) else {
        unreachable!("the same bytes parsed a moment ago");
    };

    // Admission: the client's address, then the connection caps.
    let client_ip = crate::admission::client_ip_from(
        peer.ip(),
        head.single("x-forwarded-for"),
        head.single("forwarded"),
        worker.admission.trusted_hops,
    );
    let admitted = match worker.admission.admit(client_ip) {
        Ok(guard) => Admitted {
            _guard: guard,
            ip: client_ip,
        },
        Err((status, why)) => {
            crate::debug!("refused {peer}: {why}");
            let mut out = Vec::new();
            let retry: &[(&str, &str)] = if status == 429 {
                &[("Retry-After", "1")]
            } else {
                &[]
            };
            write_response(&mut out, status, retry, why, true);
            respond_and_close(r, w, fd, out).await;
            give_buf(buf);
            return Handshake::Done;
        }
    };
    if !head.wants_websocket() && (head.method == "POST" || head.method == "OPTIONS") {
        return Handshake::Http { buf, admitted };
    }
    if !head.wants_websocket() {
        let err = if head.method.eq_ignore_ascii_case("GET")
            || head.method.eq_ignore_ascii_case("HEAD")
        {
            None
        } else {
            Some(HandshakeError::NotAGet)
        };
        match err {
            Some(e) => refuse(r, w, fd, e).await,
            None if head.path == "/metrics" => {
                let mut out = Vec::new();
                if worker.config.metrics_listen.is_some() {
                    // Served apart (server.metrics_listen), not to the public.
                    write_response(&mut out, 404, &[], "not found", true);
                } else {
                    metrics_response(&mut out, worker, false);
                }
                respond_and_close(r, w, fd, out).await;
            }
            None if head.path == "/health" || head.path.starts_with("/health?") => {
                let (status, body) = health_report(&worker.pool, false);
                let mut out = Vec::new();
                write_json(&mut out, status, &body);
                respond_and_close(r, w, fd, out).await;
            }
            None => {
                let mut out = Vec::new();
                write_response(
                    &mut out,
                    426,
                    &[("Upgrade", "websocket"), ("Connection", "Upgrade, close")],
                    "ringway: this endpoint serves JSON-RPC over WebSocket; connect with a WebSocket client (wss://host:port/)",
                    false,
                );
                respond_and_close(r, w, fd, out).await;
            }
        }
        give_buf(buf);
        return Handshake::Done;
    }
    let upgrade = match validate_upgrade(&head) {
        Ok(u) => u,
        Err(e) => {
            crate::debug!("bad upgrade from {peer}: {e}");
            refuse(r, w, fd, e).await;
            give_buf(buf);
            return Handshake::Done;
        }
    };
    let origins = &worker.admission.origins;
    if let (false, Some(origin)) = (origins.is_empty(), head.single("origin")) {
        if !origin_allowed(origins, origin) {
            worker
                .admission
                .shared
                .rejections
                .count(crate::admission::Reason::Origin);
            let mut out = Vec::new();
            write_response(
                &mut out,
                403,
                &[],
                "origin not allowed (admission.origins)",
                true,
            );
            respond_and_close(r, w, fd, out).await;
            give_buf(buf);
            return Handshake::Done;
        }
    }

    if let Some(shared) = &worker.shared {
        let (conn, lease) = match shared.open().await {
            Ok(c) => c,
            Err((status, body)) => {
                crate::warn!("{peer}: {body}");
                let mut out = Vec::new();
                write_response(&mut out, status, &[], &body, true);
                respond_and_close(r, w, fd, out).await;
                give_buf(buf);
                return Handshake::Done;
            }
        };
        let mut out = Vec::with_capacity(256);
        write_switching_protocols(&mut out, upgrade.key, None);
        let (res, _) = w.write_all(out).await;
        let client_early = buf[head_len..].to_vec();
        give_buf(buf);
        if res.is_err() {
            return Handshake::Done;
        }
        return Handshake::Shared {
            client_early,
            conn,
            lease,
            admitted,
        };
    }
    let ip = peer.ip().to_string();
    let fwd = Forwarded {
        client_ip: &ip,
        proto,
    };
    let node = upstream::open(
        &worker.pool,
        &head,
        &upgrade,
        fwd,
        worker.config.connect_timeout,
        limits.max_head_bytes,
    )
    .await;
    let session = match node {
        Ok(s) => s,
        Err(no) => {
            crate::warn!("{peer}: {}", no.body);
            let mut out = Vec::new();
            write_response(&mut out, no.status, &[], &no.body, true);
            respond_and_close(r, w, fd, out).await;
            give_buf(buf);
            return Handshake::Done;
        }
    };
    let mut out = Vec::with_capacity(256);
    write_switching_protocols(&mut out, upgrade.key, session.accepted.protocol.as_deref());
    let (res, _) = w.write_all(out).await;
    if res.is_err() {
        give_buf(buf);
        return Handshake::Done;
    }
    crate::debug!("session {peer} -> {}", session.lease.node().url);
    // Only what the client sent after its head stays: the pooled head buffer goes back.
    let client_early = buf[head_len..].to_vec();
    give_buf(buf);
    let upstream_fd = session.stream.raw_fd();
    let (ur, uw) = session.stream.into_split();
    Handshake::Relay {
        client_early,
        upstream: (ur, uw),
        upstream_early: session.early,
        upstream_fd,
        _lease: session.lease,
        template: session.template,
        admitted,
    }
}

async fn refuse<R: ReadHalf, W: WriteHalf>(r: &mut R, w: &mut W, fd: RawFd, e: HandshakeError) {
    let mut out = Vec::new();
    write_response(&mut out, e.status(), e.extra_headers(), e.reason(), true);
    respond_and_close(r, w, fd, out).await;
}

/// Time a request head may take before its minimum rate applies.
const HEAD_RATE_GRACE: Duration = Duration::from_secs(2);

/// How long a final response and the lingering read after it may take.
const LINGER: Duration = Duration::from_millis(1000);

/// Send a final response, end our side, and read what the client still sends
/// for a moment, so that closing does not reset the connection before the
/// client has read the response (RFC 7230 §6.6). Runs on its own deadline:
/// it is also how a handshake that timed out gets its 408.
async fn respond_and_close<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    out: Vec<u8>,
) {
    with_deadline(LINGER, || stop(fd, Stop::All), async {
        let (res, _) = w.write_all(out).await;
        if res.is_err() {
            return;
        }
        w.shutdown().await;
        for _ in 0..16 {
            let (res, _) = r.read_more(Vec::new()).await;
            if !matches!(res, Ok(n) if n > 0) {
                break;
            }
        }
    })
    .await;
}

/// Runs a connection's future, turning a panic into a log line: a bug in one
/// session must not take the worker and every other session with it.
struct CatchUnwind<F>(F);

impl<F: Future<Output = ()>> Future for CatchUnwind<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        // SAFETY: the inner future is structurally pinned; it is never moved out.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                crate::error!(
                    "a connection task panicked; it was closed (this is a bug: please report it)"
                );
                std::task::Poll::Ready(())
            }
        }
    }
}

/// `GET /health`: every node's state as JSON; 200 when a node can serve, else 503.
/// `GET /health`: each node's state; node URLs in full only on the private
/// metrics listener (`full`), else as [`crate::config::NodeConfig::public_name`].
fn health_report(pool: &crate::upstream::Pool, full: bool) -> (u16, String) {
    use std::fmt::Write;
    let h = pool.health();
    let best = h.best();
    let mut nodes = String::new();
    let mut any_up = false;
    for (i, n) in pool.nodes().iter().enumerate() {
        let up = h.is_up(i);
        any_up |= up;
        let head = h.head(i);
        let _ = write!(
            nodes,
            r#"{}{{"url":"{}","role":"{}","up":{},"head":{},"lag":{},"probes":{}}}"#,
            if i > 0 { "," } else { "" },
            if full { n.url.clone() } else { n.public_name() }
                .replace('\\', "\\\\")
                .replace('"', "\\\""),
            n.role.name(),
            up,
            head,
            if head == 0 {
                0
            } else {
                best.saturating_sub(head)
            },
            h.probes(i)
        );
    }
    let status = if any_up { "ok" } else { "unavailable" };
    (
        if any_up { 200 } else { 503 },
        format!(r#"{{"status":"{status}","best_head":{best},"nodes":[{nodes}]}}"#),
    )
}

fn write_json(out: &mut Vec<u8>, status: u16, body: &str) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        status,
        crate::http::reason_phrase(status),
        body.len(),
        body
    );
}

/// Serve HTTP JSON-RPC requests on a kept-alive client connection until the
/// client closes, asks to close, or stays silent for the handshake timeout.
async fn http_loop<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    peer: SocketAddr,
    worker: &Rc<Worker>,
    mut buf: Vec<u8>,
    admitted: &Admitted,
) {
    let limits = &worker.config.limits;
    let http = &worker.config.http;
    let ip = peer.ip().to_string();
    loop {
        // Shutting down: no new request on this connection.
        if worker.shutdown.fired() && buf.is_empty() {
            return;
        }
        // The head: already buffered, or read within the timeout.
        let timed_out = Cell::new(false);
        let expire = || {
            timed_out.set(true);
            stop(fd, Stop::Reads);
        };
        let idle = buf.is_empty();
        let head = with_deadline(limits.handshake_timeout, expire, async {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
                match parse_head(
                    &buf,
                    &mut headers,
                    limits.max_head_bytes,
                    limits.max_headers,
                ) {
                    Ok(Parse::Done(_, n)) => return Ok(Some(n)),
                    Ok(Parse::NeedMore(_)) => {}
                    Err(e) => return Err(e),
                }
                let (res, b) = r.read_more(std::mem::take(&mut buf)).await;
                buf = b;
                if !matches!(res, Ok(n) if n > 0) {
                    return Ok(None);
                }
            }
        });
        // A keep-alive connection waiting for its next request ends on shutdown.
        let got = if idle {
            unless_shutdown(&worker.shutdown, || stop(fd, Stop::Reads), head).await
        } else {
            head.await
        };
        let head_len = match got {
            Ok(Some(n)) => n,
            Ok(None) if timed_out.get() && !buf.is_empty() => {
                return refuse(r, w, fd, HandshakeError::Timeout).await
            }
            Ok(None) => return,
            Err(e) => return refuse(r, w, fd, e).await,
        };
        let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        let Ok(Parse::Done(head, _)) = parse_head(
            &buf,
            &mut headers,
            limits.max_head_bytes,
            limits.max_headers,
        ) else {
            return;
        };
        // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is 400.
        if head.minor_version >= 1 && head.single("host").is_none() {
            return refuse(r, w, fd, HandshakeError::BadHost).await;
        }
        let keep_alive = head.minor_version >= 1 && !head.has_token("connection", "close");
        let origin = head.single("origin").map(<[u8]>::to_vec);
        let cors = origin
            .as_deref()
            .filter(|o| origin_allowed(&http.cors_origins, o))
            .map(|o| String::from_utf8_lossy(o).into_owned());
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if let Some(o) = cors.as_deref() {
            extra.push(("Access-Control-Allow-Origin", o));
            extra.push(("Vary", "Origin"));
        }
        if head.method == "OPTIONS" {
            // CORS preflight.
            let mut out = b"HTTP/1.1 204 No Content\r\nAllow: GET, POST, OPTIONS\r\n".to_vec();
            if cors.is_some() {
                out.extend_from_slice(b"Access-Control-Allow-Methods: POST, GET, OPTIONS\r\nAccess-Control-Allow-Headers: content-type\r\nAccess-Control-Max-Age: 86400\r\n");
            }
            for (n, v) in &extra {
                out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            let (res, _) = w.write_all(out).await;
            buf.drain(..head_len);
            if res.is_err() || !keep_alive {
                return;
            }
            continue;
        }
        if head.method != "POST" {
            return refuse(r, w, fd, HandshakeError::NotAGet).await;
        }
        let json = head
            .single("content-type")
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/json")
            });
        if !json {
            let mut out = Vec::new();
            write_response(
                &mut out,
                415,
                &extra,
                "JSON-RPC over HTTP needs Content-Type: application/json",
                true,
            );
            return respond_and_close(r, w, fd, out).await;
        }
        let kind = match body::framing(&head, false) {
            Ok(body::BodyKind::Length(n)) if n > http.max_body_bytes as u64 => {
                Err(body::BodyError::TooLarge)
            }
            other => other,
        };
        let kind = match kind {
            Ok(k) => k,
            Err(e) => {
                crate::debug!("{peer}: {e}");
                let mut out = Vec::new();
                write_response(&mut out, e.status(), &extra, e.reason(), true);
                return respond_and_close(r, w, fd, out).await;
            }
        };
        // RFC 7231 §5.1.1: a client that sent `Expect: 100-continue` (curl
        // does for large bodies) waits for an interim 100 before the body;
        // any other expectation cannot be met (417).
        if let Some(expect) = head.single("expect") {
            if !expect.eq_ignore_ascii_case(b"100-continue") {
                let mut out = Vec::new();
                write_response(&mut out, 417, &extra, "unsupported Expect", true);
                return respond_and_close(r, w, fd, out).await;
            }
            if head.minor_version >= 1 && buf.len() == head_len {
                let (res, _) = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()).await;
                if res.is_err() {
                    return;
                }
            }
        }
        let path = head.path.to_string();
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        // The body, within its deadline and minimum rate.
        let body = read_body(
            r,
            fd,
            &mut buf,
            head_len,
            kind,
            http,
            limits.handshake_min_rate,
        )
        .await;
        let body = match body {
            Ok(b) => b,
            Err(BodyFailure::Gone) => return,
            Err(BodyFailure::Refused(status, why)) => {
                crate::debug!("{peer}: request body refused: {why} ({status})");
                let mut out = Vec::new();
                write_response(&mut out, status, &[], why, true);
                return respond_and_close(r, w, fd, out).await;
            }
        };

        let now = std::time::Instant::now();
        let body_len = body.len();
        let (status, answer, retry_after) =
            match worker.admission.check_call(admitted.ip, &body, now) {
                Ok(()) => {
                    let (status, answer) = answer_rpc(worker, &path, &body, &ip).await;
                    (status, answer, None)
                }
                Err((refusal, answer)) => {
                    crate::debug!("refused a call from {}: {refusal:?}", admitted.ip);
                    let retry = match refusal {
                        crate::admission::Refusal::RateLimited(wait) => Some(wait.as_secs().max(1)),
                        _ => None,
                    };
                    (
                        refusal.http_status(),
                        answer.unwrap_or_default().into_bytes(),
                        retry,
                    )
                }
            };
        if worker.config.access_log {
            crate::info!(
                "access kind=http client={} path={:?} status={status} ms={} bytes_in={body_len} bytes_out={}",
                admitted.ip,
                path,
                now.elapsed().as_millis(),
                answer.len()
            );
        }
        let mut extra = extra;
        if let Some(secs) = retry_after {
            extra.push(("Retry-After".into(), secs.to_string()));
        }
        let mut out = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
            crate::http::reason_phrase(status),
            answer.len()
        )
        .into_bytes();
        for (n, v) in &extra {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&answer);
        let (res, _) = w.write_all(out).await;
        if res.is_err() {
            return;
        }
        if !keep_alive {
            w.shutdown().await;
            return;
        }
    }
}

/// Why a request body was not read.
enum BodyFailure {
    /// The client left (or broke the connection): nothing to answer.
    Gone,
    /// Answer with this status and reason, then close.
    Refused(u16, &'static str),
}

/// Read the body that follows the head at `buf[..head_len]`, framed as
/// `kind`; on success `buf` keeps only what follows the body (the next
/// request). Linear in the body's size; a body that has not arrived within
/// `http.body_timeout_ms`, or arrives slower than `min_rate` after the grace
/// period, gets 408.
async fn read_body<R: ReadHalf>(
    r: &mut R,
    fd: RawFd,
    buf: &mut Vec<u8>,
    head_len: usize,
    kind: body::BodyKind,
    http: &crate::config::HttpSection,
    min_rate: u64,
) -> Result<Vec<u8>, BodyFailure> {
    const SLOW: BodyFailure = BodyFailure::Refused(408, "request body not received in time");
    let timed_out = Cell::new(false);
    let expire = || {
        timed_out.set(true);
        stop(fd, Stop::Reads);
    };
    let deadline = Duration::from_millis(http.body_timeout_ms);
    let start = std::time::Instant::now();
    let mut chunked = body::Chunked::new(body::ChunkLimits::new(http.max_body_bytes));
    let mut out = Vec::new();
    // Bytes of the body received so far (chunked: on the wire).
    let mut received = 0usize;
    let read = with_deadline(deadline, expire, async {
        // Chunked: bytes before `at` are decoded; they are dropped after
        // each read, so the buffer holds one read at most.
        let mut at = head_len;
        loop {
            match kind {
                body::BodyKind::Length(n) => {
                    let n = n as usize; // at most max_body_bytes (checked by the caller)
                    if buf.len() - head_len >= n {
                        out = buf[head_len..head_len + n].to_vec();
                        buf.drain(..head_len + n);
                        return Ok(out);
                    }
                    // All of it in one allocation, not a copy per read.
                    buf.reserve_exact(head_len + n - buf.len());
                }
                body::BodyKind::Chunked => {
                    let used = chunked
                        .feed(&buf[at..], &mut out)
                        .map_err(|e| BodyFailure::Refused(e.status(), e.reason()))?;
                    if chunked.is_done() {
                        buf.drain(..at + used);
                        return Ok(std::mem::take(&mut out));
                    }
                    buf.truncate(head_len);
                    at = head_len;
                }
                body::BodyKind::UntilClose => {
                    return Err(BodyFailure::Refused(400, "request without a length"))
                }
            }
            let before = buf.len();
            let (res, b) = r.read_more(std::mem::take(buf)).await;
            *buf = b;
            match res {
                Ok(n) if n > 0 => received += buf.len() - before,
                _ if timed_out.get() => return Err(SLOW),
                _ => return Err(BodyFailure::Gone),
            }
            let elapsed = start.elapsed();
            if min_rate > 0
                && elapsed >= HEAD_RATE_GRACE
                && (received as f64) < min_rate as f64 * elapsed.as_secs_f64()
            {
                return Err(SLOW);
            }
        }
    });
    read.await
}

/// Route one HTTP JSON-RPC body and forward it; retry a pruned node's
/// "state is gone" answer once on an archive node. Returns status and body.
async fn answer_rpc(worker: &Rc<Worker>, path: &str, body: &[u8], ip: &str) -> (u16, Vec<u8>) {
    let pool = &worker.pool;
    let target = worker.router.route(body, &worker.chain);
    let role = rpc_http::role_for(target);
    let max = worker
        .config
        .http
        .max_body_bytes
        .max(worker.config.limits.max_message_bytes as usize);
    let mut tried = vec![false; pool.nodes().len()];
    let mut last_err = String::from("no healthy upstream node");
    while let Some(index) = pool.pick_role(role, &tried) {
        tried[index] = true;
        match rpc_http::forward(pool, &worker.http, index, path, body, ip, max).await {
            Ok(a) => {
                let on_pruned = pool.nodes()[index].role == crate::config::Role::Pruned;
                if on_pruned && a.status == 200 && worker.router.is_pruned_error(&a.body) {
                    let archive: Vec<bool> = (0..tried.len())
                        .map(|i| tried[i] || pool.nodes()[i].role != crate::config::Role::Archive)
                        .collect();
                    if let Some(ai) = pool.pick(&archive) {
                        if let Ok(retry) =
                            rpc_http::forward(pool, &worker.http, ai, path, body, ip, max).await
                        {
                            return (retry.status, retry.body);
                        }
                    }
                }
                return (a.status, a.body);
            }
            Err(e) => last_err = format!("{}: {e}", pool.nodes()[index].public_name()),
        }
    }
    // Every node failed: a JSON-RPC error for each request, with its id.
    let msg = format!("upstream unavailable ({last_err})").replace('"', "'");
    let error = |id: &[u8]| {
        format!(
            r#"{{"jsonrpc":"2.0","error":{{"code":-32603,"message":"{msg}"}},"id":{}}}"#,
            String::from_utf8_lossy(id)
        )
    };
    let out = match crate::jsonrpc::kind(body) {
        crate::jsonrpc::Kind::Batch => {
            let parts: Vec<String> = crate::jsonrpc::elements(body)
                .map(|e| {
                    error(
                        crate::jsonrpc::peek(e)
                            .and_then(|p| p.id)
                            .unwrap_or(b"null"),
                    )
                })
                .collect();
            format!("[{}]", parts.join(","))
        }
        _ => error(
            crate::jsonrpc::peek(body)
                .and_then(|p| p.id)
                .unwrap_or(b"null"),
        ),
    };
    (502, out.into_bytes())
}

/// Listeners besides the main one, served by worker 0.
struct Extra {
    redirect: Option<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
    unix: Option<std::os::unix::net::UnixListener>,
    https_port: u16,
}

/// Accept on a plain-TCP side listener (redirect, metrics) and serve each
/// connection with `serve`, until shutdown.
async fn serve_plain<F, Fut>(listener: std::net::TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let Ok(listener) = monoio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            if shutting_down() {
                return;
            }
            monoio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        monoio::spawn(CatchUnwind(serve(stream)));
    }
}

/// The target and `Host` of one plain HTTP request head (within 5 s).
async fn read_target(r: &mut PlainReader<TcpStream>, fd: RawFd) -> Option<(String, String)> {
    with_deadline(Duration::from_secs(5), || stop(fd, Stop::Reads), async {
        let mut buf = Vec::with_capacity(4096);
        loop {
            let (res, b) = r.read_more(buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                return None;
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            match parse_head(&buf, &mut headers, 8192, 64) {
                Ok(Parse::Done(head, _)) => {
                    let host = head
                        .single("host")
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .unwrap_or("localhost");
                    return Some((head.path.to_string(), host.to_string()));
                }
                Ok(Parse::NeedMore(_)) => {}
                Err(_) => return None,
            }
        }
    })
    .await
}

async fn redirect_one(stream: TcpStream, https_port: u16) {
    let fd = stream.as_raw_fd();
    let (r, mut w) = stream.into_split();
    let mut r = PlainReader::new(r);
    let location = read_target(&mut r, fd).await.map(|(path, host)| {
        // Drop the port: "example.com:80", "[::1]:80" (not the colons of a bare IPv6).
        let host = match host.rsplit_once(':') {
            Some((h, p))
                if p.bytes().all(|c| c.is_ascii_digit())
                    && (!h.contains(':') || h.ends_with(']')) =>
            {
                h
            }
            _ => host.as_str(),
        };
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        format!("https://{host}{port}{path}")
    });
    let mut out = Vec::new();
    match location {
        Some(location) => write_response(
            &mut out,
            301,
            &[("Location", &location)],
            &format!("moved to {location}"),
            true,
        ),
        None => write_response(&mut out, 400, &[], "bad request", true),
    }
    let _ = w.write_all(out).await;
    w.shutdown().await;
}

/// `server.metrics_listen`: plain HTTP, `GET /metrics` and `GET /health`.
async fn metrics_one(stream: TcpStream, worker: Rc<Worker>) {
    let fd = stream.as_raw_fd();
    let (r, mut w) = stream.into_split();
    let mut r = PlainReader::new(r);
    let mut out = Vec::new();
    match read_target(&mut r, fd).await {
        Some((path, _)) if path == "/metrics" => metrics_response(&mut out, &worker, true),
        Some((path, _)) if path == "/health" || path.starts_with("/health?") => {
            let (status, body) = health_report(&worker.pool, true);
            write_json(&mut out, status, &body);
        }
        Some(_) => write_response(&mut out, 404, &[], "GET /metrics or /health", true),
        None => write_response(&mut out, 400, &[], "bad request", true),
    }
    let _ = w.write_all(out).await;
    w.shutdown().await;
}

/// `GET /metrics`: 200 with the Prometheus text.
fn metrics_response(out: &mut Vec<u8>, worker: &Worker, full: bool) {
    let body = metrics(worker, full);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
}

/// Plain ws:// and HTTP on a Unix socket, for a proxy on the same host.
async fn serve_unix(listener: std::os::unix::net::UnixListener, worker: Rc<Worker>) {
    let Ok(listener) = monoio::net::UnixListener::from_std(listener) else {
        return;
    };
    // The peer is local; the proxy in front says who the client is (trusted_proxy_hops).
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            if shutting_down() {
                return;
            }
            monoio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let worker = worker.clone();
        monoio::spawn(CatchUnwind(async move {
            let _active = worker.enter();
            let fd = stream.as_raw_fd();
            let (r, w) = stream.into_split();
            client(PlainReader::new(r), w, fd, local, &worker, "http").await;
        }));
    }
}

/// `GET /metrics`: Prometheus text format. Counters are process-wide atomics
/// touched per connection or per refusal, never per admitted message.
fn metrics(worker: &Worker, full: bool) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let shared = &worker.admission.shared;
    let mut m = String::new();
    let _ = writeln!(m, "# HELP ringway_connections Open client connections.");
    let _ = writeln!(m, "# TYPE ringway_connections gauge");
    let _ = writeln!(
        m,
        "ringway_connections {}",
        shared.connections.load(Relaxed)
    );
    let _ = writeln!(
        m,
        "# HELP ringway_rejections_total Refusals by admission control, by reason."
    );
    let _ = writeln!(m, "# TYPE ringway_rejections_total counter");
    for r in crate::admission::Reason::ALL {
        let _ = writeln!(
            m,
            "ringway_rejections_total{{reason=\"{}\"}} {}",
            r.name(),
            shared.rejections.get(r)
        );
    }
    let h = worker.pool.health();
    let nodes = worker.pool.nodes();
    node_gauge(
        &mut m,
        nodes,
        full,
        "ringway_node_up",
        "Whether a node passes its health checks.",
        |i| u64::from(h.is_up(i)),
    );
    node_gauge(
        &mut m,
        nodes,
        full,
        "ringway_node_head",
        "Best block seen on each node.",
        |i| h.head(i),
    );
    m
}

/// One gauge with a sample per node, labelled by its url (in full on the
/// private metrics port) and role.
fn node_gauge(
    m: &mut String,
    nodes: &[crate::config::NodeConfig],
    full: bool,
    name: &str,
    help: &str,
    value: impl Fn(usize) -> u64,
) {
    use std::fmt::Write;
    let _ = writeln!(m, "# HELP {name} {help}");
    let _ = writeln!(m, "# TYPE {name} gauge");
    for (i, n) in nodes.iter().enumerate() {
        let _ = writeln!(
            m,
            "{name}{{url=\"{}\",role=\"{}\"}} {}",
            if full { n.url.clone() } else { n.public_name() },
            n.role.name(),
            value(i)
        );
    }
}
