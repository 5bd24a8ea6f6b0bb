//! A client connection from accept to its outcome: TLS, the request head,
//! admission, then one of: a WebSocket session (relay), JSON-RPC over HTTP,
//! an endpoint (`/health`, `/metrics`), or one refusal response.
//!
//! ```text
//! accept ─▶ TLS handshake ─▶ HTTP head (httparse) ─┬─ not an upgrade ─▶ http::server | endpoint | status + body
//!          └──────── handshake timeout ────────────┤
//!                                                  └─ upgrade ─▶ node: connect + upgrade (upgrade.rs)
//!                                                        ├─ refused ─▶ 502 (or the node's 4xx)
//!                                                        └─ 101 ─▶ 101 to client ─▶ relay
//! ```
//!
//! Everything before the relay runs in its own boxed future, freed before the
//! relay starts, so an established session keeps none of the handshake's
//! memory (header array, head buffer).

mod upgrade;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::Splitable;
use monoio::net::TcpStream;

use crate::http::server::http_loop;
use crate::io::{stop, with_deadline, PlainReader, ReadHalf, Stop, WriteHalf};
use crate::policy::MIN_RATE_GRACE;
use crate::relay::{relay, NodeWatch, Peer};
use crate::signal::Shutdown;
use crate::worker::{Core, Served, Worker};
use upgrade::{handshake, Handshake};

/// Serve one worker's connections until shutdown: its `SO_REUSEPORT`
/// listener, and (worker 0) the side listeners. On shutdown, sessions
/// finish (the runtime's `Stopper::shutdown`) within `drain_for`;
/// then the worker reports itself drained. The runtime stays until the
/// process exits.
pub async fn serve(
    listener: std::net::TcpListener,
    core: Rc<Core>,
    side: Option<SideListeners>,
    shutdown: Arc<Shutdown>,
    drain_for: Duration,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            crate::error!("listener: {e}");
            return;
        }
    };
    if let Some(side) = side {
        side.spawn(&core, &shutdown);
    }
    // TCP_NODELAY comes from the listener (Linux copies it to accepted
    // sockets): no setsockopt per connection. Each connection is served
    // by the newest configuration generation.
    let c = core.clone();
    accept_loop(&listener, &shutdown, move |(stream, peer)| {
        connection(stream, peer, c.served())
    })
    .await;
    core.shutdown.fire();
    let until = std::time::Instant::now() + drain_for;
    while core.active.get() > 0 && std::time::Instant::now() < until {
        monoio::time::sleep(crate::relay::DRAIN_POLL).await;
    }
    shutdown.worker_drained();
    std::future::pending::<()>().await;
}

/// A listener the gateway accepts on: TCP or Unix.
pub trait Acceptor {
    type Conn;
    #[allow(async_fn_in_trait)]
    async fn accept_one(&self) -> std::io::Result<Self::Conn>;
}

impl Acceptor for monoio::net::TcpListener {
    type Conn = (TcpStream, SocketAddr);
    async fn accept_one(&self) -> std::io::Result<Self::Conn> {
        self.accept().await
    }
}

impl Acceptor for monoio::net::UnixListener {
    type Conn = monoio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Conn> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// The one accept loop: each connection in its own task (a panic in it is
/// caught and logged), until the listener is shut down for the process's
/// shutdown; other accept errors (EMFILE and friends) back off instead of
/// spinning.
async fn accept_loop<L: Acceptor, F, Fut>(listener: &L, shutdown: &Shutdown, serve: F)
where
    F: Fn(L::Conn) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    loop {
        match listener.accept_one().await {
            Ok(conn) => {
                // A bug in one connection must not take the worker and
                // every other session with it.
                crate::task::spawn("a connection", serve(conn), || {});
            }
            Err(_) if shutdown.started() => return,
            Err(e) => {
                crate::warn!("accept: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn tcp(l: std::net::TcpListener) -> Option<monoio::net::TcpListener> {
    monoio::net::TcpListener::from_std(l).ok()
}

/// Listeners besides the main one, served by worker 0.
pub struct SideListeners {
    pub redirect: Option<std::net::TcpListener>,
    pub metrics: Option<std::net::TcpListener>,
    pub unix: Option<std::os::unix::net::UnixListener>,
    /// Where the redirect points.
    pub https_port: u16,
}

impl SideListeners {
    /// One task per listener: plain-HTTP redirect and metrics (one request
    /// per connection), and plain ws:// and HTTP on a Unix socket for a
    /// proxy on the same host.
    fn spawn(self, core: &Rc<Core>, shutdown: &Arc<Shutdown>) {
        if let Some(l) = self.redirect.and_then(tcp) {
            let (port, shutdown) = (self.https_port, shutdown.clone());
            let redirect = async move {
                accept_loop(&l, &shutdown, move |(s, _)| {
                    crate::http::endpoints::redirect_one(s, port)
                })
                .await
            };
            crate::task::spawn("the redirect listener", redirect, || {
                crate::task::fatal("the redirect listener")
            });
        }
        if let Some(l) = self.metrics.and_then(tcp) {
            let (core, shutdown) = (core.clone(), shutdown.clone());
            let metrics = async move {
                accept_loop(&l, &shutdown, move |(s, peer)| {
                    crate::http::endpoints::metrics_one(s, peer, core.served())
                })
                .await
            };
            crate::task::spawn("the metrics listener", metrics, || {
                crate::task::fatal("the metrics listener")
            });
        }
        if let Some(l) = self
            .unix
            .and_then(|l| monoio::net::UnixListener::from_std(l).ok())
        {
            let (core, shutdown) = (core.clone(), shutdown.clone());
            // The peer is local; the proxy in front says who the client is
            // (admission.trusted_proxy_hops).
            let local = SocketAddr::from(([127, 0, 0, 1], 0));
            let unix = async move {
                accept_loop(&l, &shutdown, move |stream| {
                    let served = core.served();
                    async move {
                        let _active = served.enter();
                        let fd = stream.as_raw_fd();
                        let (r, w) = stream.into_split();
                        client(PlainReader::new(r), w, fd, local, &served, "http", None).await;
                    }
                })
                .await
            };
            crate::task::spawn("the Unix-socket listener", unix, || {
                crate::task::fatal("the Unix-socket listener")
            });
        }
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, served: Rc<Served>) {
    let _active = served.enter();
    let fd = tcp.as_raw_fd();
    match served.core.tls.clone() {
        Some(cfg) => {
            let timeout = served.config.limits.handshake_timeout;
            // Boxed, like the HTTP phase: its memory is freed before the session starts.
            // Slowloris: the minimum rate of the request head applies to
            // the TLS handshake before it too.
            let rate = served.config.limits.handshake_min_rate;
            let min_rate = (rate > 0).then_some(crate::tls::MinRate {
                bytes_per_s: rate,
                grace: MIN_RATE_GRACE,
            });
            let accept = Box::pin(crate::tls::accept(tcp, cfg, min_rate));
            let accepted = with_deadline(timeout, || stop(fd, Stop::All), accept).await;
            match accepted {
                Ok((r, w)) => {
                    // The name the client asked for: its Host must agree (421).
                    let sni = r.server_name();
                    client(r, w, fd, peer, &served, "https", sni.as_deref()).await
                }
                Err(e) => crate::debug!("TLS handshake with {peer} failed: {e}"),
            }
        }
        None => {
            let (r, w) = tcp.into_split();
            client(PlainReader::new(r), w, fd, peer, &served, "http", None).await;
        }
    }
}

/// A WebSocket session's access line (`log.access`, logfmt key=value
/// pairs), begun at the session's start only when the log is on.
struct Access {
    chain: String,
    /// The API key's name (never its secret), or `-`.
    key: String,
    client: std::net::IpAddr,
    node: String,
    started: std::time::Instant,
}

impl Access {
    fn begin(
        worker: &Worker,
        admitted: &crate::policy::Admitted,
        node: &crate::config::NodeConfig,
    ) -> Option<Access> {
        let client = admitted.ip;
        worker.config.access_log.then(|| Access {
            chain: worker.name.clone(),
            key: admitted
                .key
                .as_ref()
                .map_or("-".into(), |(k, _)| k.name().to_string()),
            client,
            node: node.url.clone(),
            started: std::time::Instant::now(),
        })
    }

    fn end(self, messages_in: u64, messages_out: Option<u64>, close: Option<u16>, reason: &str) {
        let out = messages_out.map_or("-".to_string(), |n| n.to_string());
        let close = close.map_or("-".to_string(), |c| c.to_string());
        crate::info!(
            "access kind=ws chain={} key={} client={} node={} ms={} in={messages_in} out={out} close={close} reason={reason:?}",
            self.chain,
            self.key,
            self.client,
            self.node,
            self.started.elapsed().as_millis()
        );
    }
}

async fn client<R: ReadHalf, W: WriteHalf>(
    mut r: R,
    mut w: W,
    fd: RawFd,
    peer: SocketAddr,
    served: &Rc<Served>,
    proto: &'static str,
    sni: Option<&str>,
) {
    let timeout = served.config.limits.handshake_timeout;
    let timed_out = Cell::new(false);
    let expire = || {
        timed_out.set(true);
        stop(fd, Stop::Reads);
    };
    // Boxed so that its memory is freed before the long-lived relay starts.
    let phase = Box::pin(handshake(
        &mut r, &mut w, fd, peer, served, proto, sni, &timed_out,
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
            worker,
        } => {
            let worker = &worker;
            // Messages are looked at one by one when this session routes
            // (see `Worker::routes`), or when admission limits apply to each call.
            let route = worker.routes(_lease.node());
            // A session with an API key has each call charged to it.
            let inspect = worker.admission.inspects() || admitted.key.is_some();
            // This core's shared connections: for what the cache may
            // answer, and for batches split by where their requests go.
            let side = worker
                .cache_side
                .clone()
                .filter(|_| route || worker.answers.is_some())
                .map(|c| (c, _lease.index()));
            let routed = (route || inspect || side.is_some()).then(|| crate::relay::Routed {
                router: &worker.router,
                chain: &*worker.chain,
                pool: worker.pool.clone(),
                // Kept only by sessions that may open an archive connection.
                template: route.then_some(template),
                connect_timeout: worker.config.connect_timeout,
                route,
                admission: inspect.then_some((&*worker.admission, admitted.ip)),
                side,
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
            let access = Access::begin(worker, &admitted, _lease.node());
            let summary = relay(
                client,
                node,
                worker.session,
                Some(watch),
                routed,
                &worker.core.shutdown,
                admitted.key.as_ref().map(|(k, _)| k.clone()),
            )
            .await;
            ended(peer, access, &summary);
        }
        Handshake::Shared {
            client_early,
            conn,
            lease,
            admitted,
            worker,
        } => {
            let worker = &worker;
            let inspect = worker.admission.inspects() || admitted.key.is_some();
            let access = Access::begin(worker, &admitted, lease.node());
            let ctx = crate::relay::shared::Ctx {
                shared: worker.shared.clone().expect("shared mode"),
                cfg: worker.session,
                chain: &*worker.chain,
                route: worker.routes(lease.node()),
                admission: inspect.then_some((&*worker.admission, admitted.ip)),
                shutdown: &worker.core.shutdown,
                lease,
                key: admitted.key.as_ref().map(|(k, _)| k.clone()),
            };
            let client = Peer {
                r,
                w,
                early: client_early,
                fd,
            };
            let summary = crate::relay::relay_shared(client, ctx, conn).await;
            ended(peer, access, &summary);
        }
        // Boxed: its header arrays must not size every WebSocket session's task.
        Handshake::Http { buf, admitted } => {
            let conn = crate::http::server::Conn {
                fd,
                peer,
                sni,
                proto,
                admitted: &admitted,
            };
            Box::pin(http_loop(&mut r, &mut w, conn, served, buf)).await
        }
        Handshake::Done => {}
    }
}

/// A session is over: a debug line, and its access line.
fn ended(peer: SocketAddr, access: Option<Access>, summary: &crate::relay::SessionSummary) {
    crate::debug!(
        "session {peer} ended: {} ({} messages in, {:?} out)",
        summary.reason,
        summary.client_messages,
        summary.upstream_messages
    );
    if let Some(a) = access {
        a.end(
            summary.client_messages,
            summary.upstream_messages,
            summary.client_close_code,
            summary.reason,
        );
    }
}
