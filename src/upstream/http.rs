//! The gateway as an HTTP client of its nodes: one JSON-RPC body `POST`ed
//! to a node over a per-core keep-alive connection pool, and the node's
//! answer read back (any framing, bounded in size).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::config::Role;
use crate::h1::{framing, BodyKind, ChunkLimits, Chunked};
use crate::io::{stop, with_deadline, ReadHalf, Stop, WriteHalf};
use crate::upstream::{connect, NodeReader, NodeStream, NodeWriter, Pool};
use crate::ws::handshake::Head;

/// Idle keep-alive connections to nodes, per core.
pub struct HttpPool {
    idle: RefCell<Vec<Vec<Conn>>>,
}

/// Idle connections kept per node per core.
const IDLE_PER_NODE: usize = 32;

impl HttpPool {
    pub fn new(nodes: usize) -> HttpPool {
        HttpPool {
            idle: RefCell::new((0..nodes).map(|_| Vec::new()).collect()),
        }
    }

    fn take(&self, node: usize) -> Option<Conn> {
        self.idle.borrow_mut()[node].pop()
    }

    fn give(&self, node: usize, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        if idle[node].len() < IDLE_PER_NODE {
            idle[node].push(conn);
        }
    }
}

/// A keep-alive connection to a node: its halves and its socket.
type Conn = (NodeReader, NodeWriter, RawFd);

/// Why a request got no answer from a node.
#[derive(Debug)]
pub enum Failure {
    /// Not sent (connect failed): another node may take it.
    NotSent(io::Error),
    /// Sent, and then no (valid) answer: not retried elsewhere (a POST is not
    /// idempotent: a transaction must not be submitted twice).
    Sent(io::Error),
    /// Sent, and no answer within `pool.request_timeout_ms`.
    TimedOut(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotSent(e) | Failure::Sent(e) => write!(f, "{e}"),
            Failure::TimedOut(t) => write!(f, "no answer within {} ms", t.as_millis()),
        }
    }
}

/// A node's answer to one forwarded request.
pub struct NodeAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Send `body` to node `index` as `POST path` and read its answer within
/// `timeout` (at the deadline the socket's I/O is stopped, not dropped). A
/// pooled connection that turns out closed is replaced once by a fresh one.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    pool: &Pool,
    http: &HttpPool,
    index: usize,
    path: &str,
    body: &[u8],
    forwarded: &[u8],
    max_body: usize,
    timeout: Duration,
) -> Result<NodeAnswer, Failure> {
    let node = &pool.nodes()[index];
    let target = crate::config::join_path(&node.path, path);
    // `forwarded`: Host and what the node is told of the client
    // ([`crate::ws::handshake::write_forwarded`]), as over WebSocket.
    let mut req = format!("POST {target} HTTP/1.1\r\n").into_bytes();
    req.extend_from_slice(forwarded);
    req.extend_from_slice(
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(body);
    let start = std::time::Instant::now();
    for attempt in 0..2 {
        let pooled = if attempt == 0 { http.take(index) } else { None };
        let reused = pooled.is_some();
        let (mut r, mut w, fd) = match pooled {
            Some(c) => c,
            None => {
                let connected = monoio::time::timeout(timeout, connect(node)).await;
                let s: NodeStream = match connected {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        pool.health().report_connect_failure(index);
                        return Err(Failure::NotSent(e));
                    }
                    Err(_) => {
                        pool.health().report_connect_failure(index);
                        return Err(Failure::NotSent(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "connect timed out",
                        )));
                    }
                };
                let fd = s.raw_fd();
                let (r, w) = s.into_split();
                (r, w, fd)
            }
        };
        let expired = Cell::new(false);
        let expire = || {
            expired.set(true);
            stop(fd, Stop::All);
        };
        let left = timeout.saturating_sub(start.elapsed());
        let exchange = with_deadline(left, expire, async {
            let (res, _) = w.write_all(req.clone()).await;
            res?;
            read_answer(&mut r, max_body).await
        })
        .await;
        match exchange {
            _ if expired.get() => {
                // A node that takes requests and does not answer: a failed check.
                pool.health().report_connect_failure(index);
                return Err(Failure::TimedOut(timeout));
            }
            Ok((answer, keep)) => {
                if keep {
                    http.give(index, (r, w, fd));
                }
                return Ok(answer);
            }
            // A pooled connection the node had closed: once more on a new one.
            Err(e)
                if reused
                    && matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::ConnectionReset
                    ) =>
            {
                continue
            }
            Err(e) => return Err(Failure::Sent(e)),
        }
    }
    Err(Failure::Sent(io::Error::other(
        "node closed the connection",
    )))
}

async fn read_answer(r: &mut NodeReader, max_body: usize) -> io::Result<(NodeAnswer, bool)> {
    let mut buf = Vec::new();
    let (status, head_len, kind, keep) = loop {
        let (res, b) = r.read_more(buf).await;
        buf = b;
        if res? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "node closed before answering",
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(502);
                let head = Head {
                    method: "",
                    path: "",
                    minor_version: resp.version.unwrap_or(1),
                    headers: resp.headers,
                };
                let kind = framing(&head, true).map_err(io::Error::other)?;
                let keep = head.minor_version >= 1
                    && !head.has_token("connection", "close")
                    && kind != BodyKind::UntilClose;
                break (status, n, kind, keep);
            }
            Ok(httparse::Status::Partial) if buf.len() > 64 * 1024 => {
                return Err(io::Error::other("node's response head too large"))
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(io::Error::other("node answered with malformed HTTP")),
        }
    };
    let too_large = || io::Error::other("node's answer too large");
    let mut body = Vec::new();
    let mut chunked = Chunked::new(ChunkLimits::new(max_body));
    // Bytes after the head not yet decoded (chunked: they are consumed as
    // they come, so the buffer holds one read at most).
    buf.drain(..head_len);
    loop {
        match kind {
            BodyKind::Length(n) if n > max_body as u64 => return Err(too_large()),
            BodyKind::Length(n) if buf.len() as u64 >= n => {
                buf.truncate(n as usize);
                return Ok((NodeAnswer { status, body: buf }, keep));
            }
            BodyKind::Length(n) => buf.reserve_exact(n as usize - buf.len()),
            BodyKind::Chunked => {
                chunked.feed(&buf, &mut body).map_err(io::Error::other)?;
                buf.clear();
                if chunked.is_done() {
                    return Ok((NodeAnswer { status, body }, keep));
                }
            }
            BodyKind::UntilClose if buf.len() > max_body => return Err(too_large()),
            BodyKind::UntilClose => {}
        }
        let (res, b) = r.read_more(buf).await;
        buf = b;
        if res? == 0 {
            if kind == BodyKind::UntilClose {
                return Ok((NodeAnswer { status, body: buf }, false));
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "node closed mid-answer",
            ));
        }
    }
}

/// Which role serves a request, given the routing decision and which nodes are up.
pub fn role_for(target: crate::route::Target) -> Role {
    match target {
        crate::route::Target::Pruned => Role::Pruned,
        crate::route::Target::Archive => Role::Archive,
    }
}
