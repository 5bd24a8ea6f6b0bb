//! Upstream nodes: choosing one for a new session, connecting, and the
//! gateway's client handshake towards it.
//!
//! Balancing is least connections with the power of two choices: pick two
//! healthy nodes at random, take the one with fewer sessions per unit of
//! weight. Counts are per core (each worker balances its own sessions, with
//! no shared counters); with `SO_REUSEPORT` spreading connections evenly over
//! cores, the sum is balanced too. Sessions go to pruned nodes; archive nodes
//! take them only when no pruned node is up. A node that refuses is skipped
//! (and reported to the health checks) and another tried, until none is left.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use std::os::fd::{AsRawFd, RawFd};

use monoio::io::{OwnedWriteHalf, Splitable};
use monoio::net::{TcpStream, UnixStream};

pub mod http;

use crate::config::{join_path, NodeAddr, NodeConfig, Role};
use crate::health::Health;
use crate::io::{give_buf, read_append, take_buf, PlainReader, ReadHalf, WriteHalf};
use crate::ws::frame::Parse;
use crate::ws::handshake::{
    parse_upstream_response, Forwarded, Head, Upgrade, UpstreamAccepted, UpstreamRefusal,
};

/// This core's view of the node pool.
pub struct Pool {
    nodes: Vec<NodeConfig>,
    active: Vec<Cell<u32>>,
    health: Arc<Health>,
    /// Sessions share node connections (for the session counts).
    shared: bool,
}

/// Holds one session's place on a node; the count drops with it.
pub struct NodeLease {
    pool: Rc<Pool>,
    index: usize,
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        let c = &self.pool.active[self.index];
        c.set(c.get().saturating_sub(1));
        let pool = &self.pool;
        pool.health.session_ended(self.index, pool.shared);
    }
}

impl NodeLease {
    pub fn node(&self) -> &NodeConfig {
        &self.pool.nodes[self.index]
    }

    pub fn index(&self) -> usize {
        self.index
    }
}

impl Pool {
    pub fn new(nodes: Vec<NodeConfig>, health: Arc<Health>, shared: bool) -> Rc<Pool> {
        let active = nodes.iter().map(|_| Cell::new(0)).collect();
        Rc::new(Pool {
            nodes,
            active,
            health,
            shared,
        })
    }

    pub fn nodes(&self) -> &[NodeConfig] {
        &self.nodes
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Sessions this core has open on each node.
    pub fn active(&self, index: usize) -> u32 {
        self.active[index].get()
    }

    /// Power of two choices among healthy pruned nodes not yet `tried`
    /// (archive nodes when no pruned node is left), by sessions per weight
    /// and by how slow each answers ([`Health::slowness`]).
    ///
    /// Panic routing: when no node at all passes its health checks (a lone
    /// node, or probes that misread every node), the choice is made among
    /// all nodes instead, as nginx never marks its only server unavailable
    /// and Envoy routes to every host under its panic threshold: a node that
    /// still accepts connections keeps serving. The health thread logs it.
    pub fn pick(&self, tried: &[bool]) -> Option<usize> {
        self.choose(tried, |i| self.health.is_up(i)).or_else(|| {
            if (0..self.nodes.len()).any(|i| self.health.is_up(i)) {
                return None;
            }
            self.choose(tried, |_| true)
        })
    }

    fn choose(&self, tried: &[bool], up: impl Fn(usize) -> bool) -> Option<usize> {
        let usable = |i: &usize| !tried[*i] && up(*i);
        let mut candidates: Vec<usize> = (0..self.nodes.len())
            .filter(usable)
            .filter(|&i| self.nodes[i].role == Role::Pruned)
            .collect();
        if candidates.is_empty() {
            candidates = (0..self.nodes.len()).filter(usable).collect();
        }
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = crate::rng::below(n);
                let mut b = crate::rng::below(n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                let (wa, wb) = (self.nodes[a].weight as u64, self.nodes[b].weight as u64);
                // Sessions per weight, scaled by how slow the node answers
                // its probes (a hung node is avoided before it is marked
                // down): (la + 1) * 2^sa / wa against the same for b.
                let cost = |i: usize| (self.active[i].get() as u64 + 1) << self.health.slowness(i);
                let (la, lb) = (cost(a), cost(b));
                // lb / wb < la / wa, without division.
                Some(if lb * wa < la * wb { b } else { a })
            }
        }
    }

    /// A healthy archive node (by P2C among them), if there is one.
    pub fn pick_archive(&self) -> Option<usize> {
        self.pick(&self.not_archive())
    }

    /// `tried` for [`Pool::pick`] that leaves only the archive nodes.
    fn not_archive(&self) -> Vec<bool> {
        self.nodes.iter().map(|n| n.role != Role::Archive).collect()
    }

    /// A healthy node of `role` not yet `tried` (by P2C), else any healthy node.
    pub fn pick_role(&self, role: Role, tried: &[bool]) -> Option<usize> {
        let of_role: Vec<bool> = (0..self.nodes.len())
            .map(|i| tried[i] || self.nodes[i].role != role)
            .collect();
        match role {
            // pick() already prefers pruned nodes and falls back to archive.
            Role::Pruned => self.pick(tried),
            Role::Archive => self.pick(&of_role).or_else(|| self.pick(tried)),
        }
    }

    /// A session's place on node `index` (counted in its sessions).
    pub fn lease(self: &Rc<Self>, index: usize) -> NodeLease {
        let c = &self.active[index];
        c.set(c.get() + 1);
        self.health.session_started(index, self.shared);
        NodeLease {
            pool: self.clone(),
            index,
        }
    }
}

/// A connection to a node.
pub enum NodeStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Receive half of a node connection.
pub enum NodeReader {
    Tcp(PlainReader<TcpStream>),
    Unix(PlainReader<UnixStream>),
}

/// Send half of a node connection.
pub enum NodeWriter {
    Tcp(OwnedWriteHalf<TcpStream>),
    Unix(OwnedWriteHalf<UnixStream>),
}

impl NodeStream {
    pub fn into_split(self) -> (NodeReader, NodeWriter) {
        match self {
            NodeStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (NodeReader::Tcp(PlainReader::new(r)), NodeWriter::Tcp(w))
            }
            NodeStream::Unix(s) => {
                let (r, w) = s.into_split();
                (NodeReader::Unix(PlainReader::new(r)), NodeWriter::Unix(w))
            }
        }
    }

    /// The socket, for [`crate::io::stop`].
    pub fn raw_fd(&self) -> RawFd {
        match self {
            NodeStream::Tcp(s) => s.as_raw_fd(),
            NodeStream::Unix(s) => s.as_raw_fd(),
        }
    }

    async fn write_all(&mut self, buf: Vec<u8>) -> io::Result<()> {
        use monoio::io::AsyncWriteRentExt;
        match self {
            NodeStream::Tcp(s) => s.write_all(buf).await.0.map(|_| ()),
            NodeStream::Unix(s) => s.write_all(buf).await.0.map(|_| ()),
        }
    }

    async fn read_more(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            NodeStream::Tcp(s) => read_append(s, buf).await,
            NodeStream::Unix(s) => read_append(s, buf).await,
        }
    }
}

impl ReadHalf for NodeReader {
    async fn read_more(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            NodeReader::Tcp(r) => r.read_more(buf).await,
            NodeReader::Unix(r) => r.read_more(buf).await,
        }
    }
}

impl WriteHalf for NodeWriter {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            NodeWriter::Tcp(w) => w.write_all(buf).await,
            NodeWriter::Unix(w) => w.write_all(buf).await,
        }
    }

    async fn shutdown(&mut self) {
        match self {
            NodeWriter::Tcp(w) => w.shutdown().await,
            NodeWriter::Unix(w) => w.shutdown().await,
        }
    }
}

/// Open a transport connection to a node, trying each resolved address.
pub async fn connect(node: &NodeConfig) -> io::Result<NodeStream> {
    match &node.addr {
        NodeAddr::Unix(path) => UnixStream::connect(path).await.map(NodeStream::Unix),
        NodeAddr::Tcp(addrs) => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for addr in addrs {
                match TcpStream::connect_addr(*addr).await {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(NodeStream::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

/// Why no node took the session: an HTTP status and a body for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoUpstream {
    pub status: u16,
    pub body: String,
}

/// An upgraded connection to a node, ready to relay.
pub struct UpstreamSession {
    pub stream: NodeStream,
    pub accepted: UpstreamAccepted,
    /// Bytes the node sent right after its 101 (frames already on their way).
    pub early: Vec<u8>,
    pub lease: NodeLease,
    /// How to upgrade another connection for the same client (its archive node).
    pub template: UpgradeTemplate,
}

/// The client-specific part of an upgrade request towards nodes.
#[derive(Debug, Clone)]
pub struct UpgradeTemplate {
    /// The client's request target.
    pub client_path: String,
    /// Header fields, CRLF-terminated, without the key (see `write_upstream_fields`).
    pub fields: Vec<u8>,
    /// The subprotocols the client offered.
    pub offered: Option<Vec<u8>>,
    pub max_head: usize,
}

/// Pick a node, connect and upgrade; on refusal, try the next node.
///
/// A node that answers the upgrade with a 4xx status passes that status to the
/// client (another node would refuse the same request); connection failures,
/// timeouts, 5xx and invalid answers move on to the next node, and when none
/// is left the client gets 502 with the reason for each.
pub async fn open(
    pool: &Rc<Pool>,
    head: &Head<'_, '_>,
    upgrade: &Upgrade<'_>,
    fwd: Forwarded<'_>,
    timeout: Duration,
    max_head: usize,
) -> Result<UpstreamSession, NoUpstream> {
    let mut fields = Vec::with_capacity(512);
    crate::ws::handshake::write_upstream_fields(&mut fields, head, upgrade, fwd);
    let template = UpgradeTemplate {
        client_path: upgrade.path.to_string(),
        fields,
        offered: upgrade.protocols.map(<[u8]>::to_vec),
        max_head,
    };
    let tried = vec![false; pool.nodes.len()];
    match open_with(pool, &template, tried, timeout).await {
        Ok((stream, accepted, early, lease)) => Ok(UpstreamSession {
            stream,
            accepted,
            early,
            lease,
            template,
        }),
        Err(e) => Err(e),
    }
}

/// Open an archive connection for a session, from its template. Only archive
/// nodes that are up are tried.
pub async fn open_archive(
    pool: &Rc<Pool>,
    template: &UpgradeTemplate,
    timeout: Duration,
) -> Result<(NodeStream, Vec<u8>, NodeLease), String> {
    if pool.pick_archive().is_none() {
        return Err("no archive node is up".into());
    }
    match open_with(pool, template, pool.not_archive(), timeout).await {
        Ok((stream, _, early, lease)) => Ok((stream, early, lease)),
        Err(e) => Err(e.body),
    }
}

async fn open_with(
    pool: &Rc<Pool>,
    template: &UpgradeTemplate,
    mut tried: Vec<bool>,
    timeout: Duration,
) -> Result<(NodeStream, UpstreamAccepted, Vec<u8>, NodeLease), NoUpstream> {
    let mut failures = Vec::new();
    while let Some(index) = pool.pick(&tried) {
        tried[index] = true;
        let node = &pool.nodes[index];
        let why = match handshake(node, template, timeout).await {
            Ok((stream, accepted, early)) => {
                return Ok((stream, accepted, early, pool.lease(index)))
            }
            Err(Attempt::Refused(UpstreamRefusal::Status(code, reason)))
                if (400..500).contains(&code) =>
            {
                return Err(NoUpstream {
                    status: code,
                    body: format!("the node refused the WebSocket upgrade: {code} {reason}"),
                });
            }
            Err(e) => e.to_string(),
        };
        pool.health.report_connect_failure(index);
        crate::warn!("upstream {}: {why}", node.url);
        failures.push(format!("{}: {why}", node.public_name()));
    }
    Err(NoUpstream {
        status: 502,
        body: format!(
            "no upstream node accepted the connection ({})",
            failures.join("; ")
        ),
    })
}

/// Open a connection to `node` that the sessions of one core share (see
/// the relay's `shared` module): no client's headers, the node's own path.
pub async fn open_shared(
    node: &NodeConfig,
    max_head: usize,
    timeout: Duration,
) -> Result<(NodeStream, Vec<u8>), String> {
    let host = node
        .url
        .split_once("://")
        .map_or(node.url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .filter(|h| !h.is_empty() && !node.url.starts_with("unix:"))
        .unwrap_or("localhost");
    let fields = format!(
        "Host: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nUser-Agent: ringway/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let template = UpgradeTemplate {
        client_path: "/".into(),
        fields: fields.into_bytes(),
        offered: None,
        max_head,
    };
    match handshake(node, &template, timeout).await {
        Ok((stream, _, early)) => Ok((stream, early)),
        Err(e) => Err(e.to_string()),
    }
}

enum Attempt {
    Io(io::Error),
    Refused(UpstreamRefusal),
    /// No answer within this time.
    Timeout(Duration),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Io(e) => write!(f, "{e}"),
            Attempt::Refused(r) => write!(f, "{r}"),
            Attempt::Timeout(t) => write!(f, "no answer within {} ms", t.as_millis()),
        }
    }
}

/// Connect and upgrade within `timeout`. The connect is the one operation
/// timed out by dropping it: it holds no buffer and no socket of ours yet
/// (the runtime cancels it). From then on the socket's I/O is stopped at the
/// deadline ([`crate::io::with_deadline`]), never dropped.
async fn handshake(
    node: &NodeConfig,
    template: &UpgradeTemplate,
    timeout: Duration,
) -> Result<(NodeStream, UpstreamAccepted, Vec<u8>), Attempt> {
    let start = std::time::Instant::now();
    let stream = match monoio::time::timeout(timeout, connect(node)).await {
        Ok(s) => s.map_err(Attempt::Io)?,
        Err(_) => return Err(Attempt::Timeout(timeout)),
    };
    let fd = stream.raw_fd();
    let expired = std::cell::Cell::new(false);
    let left = timeout.saturating_sub(start.elapsed());
    let expire = || {
        expired.set(true);
        crate::io::stop(fd, crate::io::Stop::All);
    };
    let upgraded = crate::io::with_deadline(left, expire, upgrade(stream, node, template)).await;
    match upgraded {
        Err(_) if expired.get() => Err(Attempt::Timeout(timeout)),
        other => other,
    }
}

async fn upgrade(
    mut stream: NodeStream,
    node: &NodeConfig,
    template: &UpgradeTemplate,
) -> Result<(NodeStream, UpstreamAccepted, Vec<u8>), Attempt> {
    let key = crate::rng::ws_key();
    let mut req = Vec::with_capacity(template.fields.len() + 128);
    let path = join_path(&node.path, &template.client_path);
    crate::ws::handshake::finish_upstream_request(&mut req, &path, &template.fields, &key);
    stream.write_all(req).await.map_err(Attempt::Io)?;
    let max_head = template.max_head;
    let offered = template.offered.as_deref();
    let mut buf = take_buf();
    loop {
        let (r, b) = stream.read_more(buf).await;
        buf = b;
        match r {
            Ok(0) => {
                give_buf(buf);
                return Err(Attempt::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed the connection during the handshake",
                )));
            }
            Ok(_) => {}
            Err(e) => {
                give_buf(buf);
                return Err(Attempt::Io(e));
            }
        }
        match parse_upstream_response(&buf, &key, offered, max_head.min(buf.capacity())) {
            Ok(Parse::Done(accepted, len)) => {
                let early = buf[len..].to_vec();
                give_buf(buf);
                return Ok((stream, accepted, early));
            }
            Ok(Parse::NeedMore(_)) => {}
            Err(r) => {
                give_buf(buf);
                return Err(Attempt::Refused(r));
            }
        }
    }
}
