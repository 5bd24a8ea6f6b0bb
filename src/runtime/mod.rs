//! Process start: listeners bound, one worker thread per core (each with
//! its own runtime, see [`driver`]), the health thread, and how it all stops.
//!
//! ```text
//! main ─▶ runtime::start ─┬─ listeners::bind (SO_REUSEPORT, one per worker; side listeners)
//!                         ├─ reload::Generations::start (generation 1; its health thread)
//!                         └─ worker thread k: driver::block_on(gateway::serve(listener k, Core k))
//! signals thread ─┬─ SIGHUP ─▶ reload (the next generation)
//!                 └─ SIGTERM ─▶ Stopper::shutdown
//! ```

pub mod driver;
pub mod listeners;
pub use crate::worker::generations as reload;
pub mod signals;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::io::{stop, Stop};
use crate::signal::Shutdown;
use crate::worker::Core;

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
    /// The configuration generations (SIGHUP makes the next).
    pub generations: Arc<reload::Generations>,
}

/// What [`Stopper::shutdown`] needs: every listening socket, the number
/// of workers, and the shutdown state they watch.
pub struct Stopper {
    listener_fds: Vec<RawFd>,
    workers: usize,
    state: Arc<Shutdown>,
    /// How long the workers may take (theirs, and a second more).
    wait: Duration,
}

impl Stopper {
    /// Stop accepting (the listening sockets are shut down, which wakes every
    /// worker's accept), and tell every session to finish: answers to
    /// requests in flight still go out, for up to
    /// [`crate::relay::SHUTDOWN_DRAIN`], then requests still unanswered get
    /// JSON-RPC errors with their ids and clients get close 1001 (going away;
    /// they reconnect elsewhere). Idle HTTP keep-alive connections close.
    /// Returns once every worker has no connection left (true), or when the
    /// workers' own deadline has passed or `interrupted` (given a time to
    /// wait for an interruption) says so (false).
    pub fn shutdown(&self, mut interrupted: impl FnMut(Duration) -> bool) -> bool {
        self.state.start();
        for &fd in &self.listener_fds {
            stop(fd, Stop::Reads);
        }
        let until = std::time::Instant::now() + self.wait;
        while self.state.drained() < self.workers {
            if std::time::Instant::now() >= until || interrupted(crate::relay::DRAIN_POLL) {
                return false;
            }
        }
        true
    }
}

/// Start the workers. Returns once every listener is bound.
pub fn start(config: Config, tls: Option<crate::tls::ServerTls>) -> io::Result<Running> {
    let listeners = listeners::bind_listeners(config.listen, config.workers)?;
    let local_addr = listeners[0].local_addr()?;
    // Per-address limits hold exactly when an address always lands on one core.
    if crate::policy::AdmissionCtx::per_ip(&config.admission) {
        if let Err(e) =
            crate::policy::steer_by_source(&listeners[0], listeners.len(), local_addr.is_ipv6())
        {
            crate::warn!(
                "cannot steer connections by source address ({e}); per-address limits are per core"
            );
        }
    }
    // The side listeners (redirect, metrics, Unix) are served by worker 0.
    let side = listeners::bind_side(&config, local_addr.port())?;
    let redirect_addr = side.redirect.as_ref().map(|l| l.local_addr()).transpose()?;
    let metrics_addr = side.metrics.as_ref().map(|l| l.local_addr()).transpose()?;
    let mut listener_fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    listener_fds.extend(side.redirect.as_ref().map(|l| l.as_raw_fd()));
    listener_fds.extend(side.metrics.as_ref().map(|l| l.as_raw_fd()));
    listener_fds.extend(side.unix.as_ref().map(|l| l.as_raw_fd()));
    let mut side = Some(side);
    let io_uring = monoio::utils::detect_uring();
    let drain_for = worker_drain_deadline(&config.limits);
    let pin = config.pin_workers;
    let generations = reload::Generations::start(config, io_uring).map_err(io::Error::other)?;
    // Every worker's hash channel exists before the health thread publishes
    // its first hashes: a worker starting late must not miss them.
    let first = generations.current();
    let mut hash_channels: std::collections::VecDeque<Vec<_>> = (0..listeners.len())
        .map(|_| {
            first
                .chains
                .iter()
                .map(|c| (c.chain.name.clone(), c.health.subscribe_hashes()))
                .collect()
        })
        .collect();
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
    let shutdown = Arc::new(Shutdown::default());
    let mut workers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let generations = generations.clone();
        let tls = tls.clone();
        let side = side.take();
        let shutdown = shutdown.clone();
        let hashes = hash_channels.pop_front().expect("one per worker");
        let handle = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                if pin {
                    driver::pin_to_core(i % cores);
                }
                let tls = tls.map(|(base, certs, seed)| {
                    crate::tls::per_worker(&base, &certs, &seed, i as u32)
                });
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    driver::block_on(io_uring, || async move {
                        let core = Core::new(tls, hashes, generations);
                        crate::gateway::serve(listener, core, side, shutdown, drain_for).await
                    })
                }));
                match run {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => crate::error!("cannot start a runtime: {e}"),
                    // Its sessions are gone with it: never serve with a hole.
                    Err(_) => crate::task::fatal(&format!("worker {i}")),
                }
            })?;
        workers.push(handle);
    }
    let stopper = Stopper {
        listener_fds,
        workers: workers.len(),
        state: shutdown,
        wait: drain_for + Duration::from_secs(1),
    };
    Ok(Running {
        local_addr,
        redirect_addr,
        metrics_addr,
        io_uring,
        workers,
        stopper,
        generations,
    })
}

/// The longest a worker waits on shutdown for its connections to end.
fn worker_drain_deadline(limits: &crate::config::Limits) -> Duration {
    crate::relay::SHUTDOWN_DRAIN + limits.close_timeout + Duration::from_secs(1)
}
