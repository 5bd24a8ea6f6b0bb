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
use crate::http::write_response;
use crate::io::{give_buf, stop, take_buf, PlainReader, ReadHalf, Stop, WriteHalf, BUF_SIZE};
use crate::session::{relay, SessionConfig};
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
    pub io_uring: bool,
    pub workers: Vec<std::thread::JoinHandle<()>>,
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
pub fn start(config: Config, tls: Option<ServerConfig>) -> io::Result<Running> {
    let listeners = bind_listeners(config.listen, config.workers)?;
    let local_addr = listeners[0].local_addr()?;
    let io_uring = monoio::utils::detect_uring();
    let config = Arc::new(config);
    let tls = tls.map(Arc::new);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut workers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let config = config.clone();
        let tls = tls.clone();
        let handle = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                if config.pin_workers {
                    pin_to_core(i % cores);
                }
                let tls = tls.map(|base| crate::tls::per_worker(&base));
                run_worker(listener, config, tls, io_uring);
            })?;
        workers.push(handle);
    }
    Ok(Running {
        local_addr,
        io_uring,
        workers,
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

fn run_worker(
    listener: std::net::TcpListener,
    config: Arc<Config>,
    tls: Option<Arc<ServerConfig>>,
    io_uring: bool,
) {
    if io_uring {
        // Each ring is used by its one worker thread only: completions run as
        // task work when the worker asks for events (DEFER_TASKRUN), with no
        // interrupts to signal them (COOP_TASKRUN). Older kernels lack the
        // flags; then the plain ring is used.
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
                Ok(mut rt) => return rt.block_on(serve(listener, config, tls)),
                Err(e) => crate::debug!("io_uring setup: {e}"),
            }
        }
        crate::warn!("io_uring runtime failed to start; using the epoll driver");
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(serve(listener, config, tls)),
        Err(e) => crate::error!("cannot start a runtime: {e}"),
    }
}

/// Per-worker state, owned by one thread.
struct Worker {
    config: Arc<Config>,
    tls: Option<Arc<ServerConfig>>,
    pool: Rc<Pool>,
    session: SessionConfig,
    active: Cell<u64>,
}

async fn serve(
    listener: std::net::TcpListener,
    config: Arc<Config>,
    tls: Option<Arc<ServerConfig>>,
) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            crate::error!("listener: {e}");
            return;
        }
    };
    let l = &config.limits;
    let worker = Rc::new(Worker {
        pool: Pool::new(config.nodes.clone()),
        session: SessionConfig {
            codec: CodecLimits {
                max_frame: l.max_frame_bytes,
                max_message: l.max_message_bytes,
            },
            max_buffered: l.max_buffered_bytes,
            idle_timeout: l.idle_timeout,
            close_timeout: l.close_timeout,
            keepalive: config.keepalive_interval,
        },
        config: config.clone(),
        tls,
        active: Cell::new(0),
    });
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(CatchUnwind(connection(stream, peer, worker.clone())));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                crate::warn!("accept: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, worker: Rc<Worker>) {
    worker.active.set(worker.active.get() + 1);
    let fd = tcp.as_raw_fd();
    match worker.tls.clone() {
        Some(cfg) => {
            let timeout = worker.config.limits.handshake_timeout;
            let accepted = with_deadline(
                timeout,
                || stop(fd, Stop::All),
                crate::tls::accept(tcp, cfg),
            )
            .await;
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
    worker.active.set(worker.active.get() - 1);
}

/// Run `fut`; at the deadline, call `expire` (which stops the socket's I/O)
/// and let `fut` finish on its own, instead of dropping in-flight operations.
async fn with_deadline<F: Future>(dur: Duration, expire: impl FnOnce(), fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let sleep = monoio::time::sleep(dur);
    monoio::select! {
        out = &mut fut => return out,
        _ = sleep => {}
    }
    expire();
    fut.await
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
    },
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
        } => {
            let summary = relay(
                (r, w),
                client_early,
                upstream,
                upstream_early,
                (fd, upstream_fd),
                worker.session,
            )
            .await;
            crate::debug!(
                "session {peer} ended: {} ({} messages in, {} out)",
                summary.reason,
                summary.client_messages,
                summary.upstream_messages
            );
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
    }
}

async fn refuse<R: ReadHalf, W: WriteHalf>(r: &mut R, w: &mut W, fd: RawFd, e: HandshakeError) {
    let mut out = Vec::new();
    write_response(&mut out, e.status(), e.extra_headers(), e.reason(), true);
    respond_and_close(r, w, fd, out).await;
}

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
