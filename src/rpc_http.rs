//! JSON-RPC over HTTP on the same port as WebSocket (`POST /`), as a node
//! serves it on 9944: each request is routed by the same rules as a
//! WebSocket message ([`crate::route`]) and sent to a node over a per-core
//! keep-alive connection pool. A pruned node's "state is gone" answer is
//! retried once on an archive node.
//!
//! Client side: keep-alive, `Content-Length` and chunked bodies, a body cap
//! (413), 415 for a wrong content type, 405 for other methods, CORS preflight
//! and `Access-Control-Allow-Origin` from an origin list.

use std::cell::RefCell;
use std::io;

use crate::config::Role;
use crate::io::{ReadHalf, WriteHalf};
use crate::upstream::{connect, NodeReader, NodeStream, NodeWriter, Pool};
use crate::ws::frame::Parse;
use crate::ws::handshake::Head;

/// Decode a chunked body (RFC 7230 §4.1) from the start of `buf`. Returns the
/// body and the bytes used, `NeedMore`, or an error. Trailers are skipped.
pub fn decode_chunked(buf: &[u8], max: usize) -> Result<Parse<Vec<u8>>, &'static str> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            return if buf.len() - at > 1024 {
                Err("chunk size line too long")
            } else {
                Ok(Parse::NeedMore(buf.len() + 1))
            };
        };
        let line = &buf[at..at + line_end];
        let size_text = line.split(|&b| b == b';').next().unwrap_or(b"");
        let size_text = std::str::from_utf8(size_text)
            .map_err(|_| "bad chunk size")?
            .trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        at += line_end + 2;
        if size == 0 {
            // Trailer section, ended by an empty line.
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return Ok(Parse::NeedMore(buf.len() + 1));
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Parse::Done(body, at));
                }
            }
        }
        if body.len() + size > max {
            return Err("body too large");
        }
        if buf.len() < at + size + 2 {
            return Ok(Parse::NeedMore(at + size + 2));
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF");
        }
        at += size + 2;
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Length(usize),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// The body framing of a head, or an error for conflicting/invalid fields.
pub fn body_kind(head: &Head<'_, '_>, is_response: bool) -> Result<BodyKind, &'static str> {
    if head.values("transfer-encoding").next().is_some() {
        if head.has_token("transfer-encoding", "chunked") {
            if head.values("content-length").next().is_some() {
                return Err("both Content-Length and Transfer-Encoding");
            }
            return Ok(BodyKind::Chunked);
        }
        return Err("unsupported Transfer-Encoding");
    }
    let mut lengths = head.values("content-length");
    match (lengths.next(), lengths.next()) {
        (None, _) if is_response => Ok(BodyKind::UntilClose),
        (None, _) => Ok(BodyKind::Length(0)),
        (Some(v), None) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(BodyKind::Length)
            .ok_or("invalid Content-Length"),
        (Some(_), Some(_)) => Err("more than one Content-Length"),
    }
}

/// Is `origin` allowed by `list`? Entries: `*`, exact origins
/// (`https://app.example.com`), scheme-less ones that match any scheme
/// (`example.com`, `localhost:3000`), and `*.example.com` (any scheme) or
/// `https://*.example.com` for any subdomain.
pub fn origin_allowed(list: &[String], origin: &[u8]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let (scheme, authority) = origin.split_once("://").unwrap_or(("", origin));
    let host = authority.split(':').next().unwrap_or(authority);
    list.iter().any(|entry| {
        if entry == "*" || entry.eq_ignore_ascii_case(origin) {
            return true;
        }
        let (escheme, epattern) = match entry.split_once("://") {
            Some((s, p)) => (Some(s), p),
            None => (None, entry.as_str()),
        };
        if escheme.is_some_and(|s| !s.eq_ignore_ascii_case(scheme)) {
            return false;
        }
        match epattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => epattern.eq_ignore_ascii_case(authority),
        }
    })
}

/// Idle keep-alive connections to nodes, per core.
pub struct HttpPool {
    idle: RefCell<Vec<Vec<(NodeReader, NodeWriter)>>>,
}

/// Idle connections kept per node per core.
const IDLE_PER_NODE: usize = 32;

impl HttpPool {
    pub fn new(nodes: usize) -> HttpPool {
        HttpPool {
            idle: RefCell::new((0..nodes).map(|_| Vec::new()).collect()),
        }
    }

    fn take(&self, node: usize) -> Option<(NodeReader, NodeWriter)> {
        self.idle.borrow_mut()[node].pop()
    }

    fn give(&self, node: usize, conn: (NodeReader, NodeWriter)) {
        let mut idle = self.idle.borrow_mut();
        if idle[node].len() < IDLE_PER_NODE {
            idle[node].push(conn);
        }
    }
}

/// A node's answer to one forwarded request.
pub struct NodeAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Send `body` to node `index` as `POST path` and read its answer. A pooled
/// connection that turns out closed is replaced once by a fresh one.
pub async fn forward(
    pool: &Pool,
    http: &HttpPool,
    index: usize,
    path: &str,
    body: &[u8],
    client_ip: &str,
    max_body: usize,
) -> io::Result<NodeAnswer> {
    let node = &pool.nodes()[index];
    let host = match &node.addr {
        crate::config::NodeAddr::Tcp(a) => a[0].to_string(),
        crate::config::NodeAddr::Unix(_) => "localhost".into(),
    };
    let target = crate::config::join_path(&node.path, path);
    let mut req = format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Forwarded-For: {client_ip}\r\nX-Real-IP: {client_ip}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    for attempt in 0..2 {
        let pooled = if attempt == 0 { http.take(index) } else { None };
        let reused = pooled.is_some();
        let (mut r, mut w) = match pooled {
            Some(c) => c,
            None => {
                let s: NodeStream = match connect(node).await {
                    Ok(s) => s,
                    Err(e) => {
                        pool.health().report_connect_failure(index);
                        return Err(e);
                    }
                };
                s.into_split()
            }
        };
        let (res, _) = w.write_all(req.clone()).await;
        if let Err(e) = res {
            if reused {
                continue;
            }
            return Err(e);
        }
        match read_answer(&mut r, max_body).await {
            Ok((answer, keep)) => {
                if keep {
                    http.give(index, (r, w));
                }
                return Ok(answer);
            }
            Err(e) if reused && e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("node closed the connection"))
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
                let kind = body_kind(&head, true).map_err(io::Error::other)?;
                let keep = head.minor_version >= 1 && !head.has_token("connection", "close");
                break (status, n, kind, keep);
            }
            Ok(httparse::Status::Partial) if buf.len() > 64 * 1024 => {
                return Err(io::Error::other("node's response head too large"))
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(io::Error::other("node answered with malformed HTTP")),
        }
    };
    loop {
        let rest = &buf[head_len..];
        let done = match kind {
            BodyKind::Length(n) if n > max_body => {
                return Err(io::Error::other("node's answer too large"))
            }
            BodyKind::Length(n) if rest.len() >= n => Some((rest[..n].to_vec(), keep)),
            BodyKind::Chunked => match decode_chunked(rest, max_body) {
                Ok(Parse::Done(body, _)) => Some((body, keep)),
                Ok(Parse::NeedMore(_)) => None,
                Err(e) => return Err(io::Error::other(e)),
            },
            _ => None,
        };
        if let Some((body, keep)) = done {
            return Ok((NodeAnswer { status, body }, keep));
        }
        if rest.len() > max_body {
            return Err(io::Error::other("node's answer too large"));
        }
        let (res, b) = r.read_more(buf).await;
        buf = b;
        if res? == 0 {
            if kind == BodyKind::UntilClose {
                let body = buf[head_len..].to_vec();
                return Ok((NodeAnswer { status, body }, false));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_in_pieces() {
        let wire = b"4\r\n{\"id\r\n6;ext=1\r\n\":1}  \r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        assert_eq!(
            decode_chunked(wire, 100),
            Ok(Parse::Done(b"{\"id\":1}  ".to_vec(), wire.len() - 4))
        );
        for cut in 0..wire.len() - 4 {
            assert!(
                matches!(decode_chunked(&wire[..cut], 100), Ok(Parse::NeedMore(_))),
                "cut {cut}"
            );
        }
        assert_eq!(decode_chunked(b"zz\r\n", 100), Err("bad chunk size"));
        assert_eq!(decode_chunked(b"ff\r\n", 10), Err("body too large"));
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let list = vec![
            "https://polkadot.js.org".to_string(),
            "*.example.com".to_string(),
        ];
        assert!(origin_allowed(&list, b"https://polkadot.js.org"));
        assert!(origin_allowed(&list, b"https://app.example.com"));
        assert!(origin_allowed(&list, b"http://a.b.example.com:3000"));
        assert!(!origin_allowed(&list, b"https://example.com"));
        assert!(!origin_allowed(&list, b"https://evilexample.com"));
        assert!(!origin_allowed(&list, b"https://polkadot.js.org.evil.net"));
        assert!(origin_allowed(&["*".to_string()], b"https://anything"));
        let agnostic = vec![
            "example.com".to_string(),
            "https://*.secure.com".to_string(),
        ];
        assert!(origin_allowed(&agnostic, b"http://example.com"));
        assert!(origin_allowed(&agnostic, b"https://example.com"));
        assert!(!origin_allowed(&agnostic, b"https://api.example.com"));
        assert!(origin_allowed(&agnostic, b"https://a.secure.com"));
        assert!(!origin_allowed(&agnostic, b"http://a.secure.com"));
    }
}
