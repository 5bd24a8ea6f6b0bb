//! JSON-RPC over HTTP on the gateway's port (`POST /`), as a node serves
//! it on 9944: keep-alive, strict body framing ([`crate::h1`]), a body
//! deadline and idle time ([`super::body`]), CORS, then each call through
//! the call pipeline as a WebSocket message goes: admitted
//! ([`crate::call::admit`]), answered from the cache or routed and sent
//! ([`super::rpc`]).
//!
//! A request, top to bottom ([`http_loop`]): its head ([`next_head`]), its
//! chain and key ([`Request::of`]), a CORS preflight, its body
//! ([`body_of`]), the call ([`serve_call`]), the answer and access line.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;

use super::body::{read_body, BodyFailure, Cut};
use crate::h1 as body;
use crate::http::response::{self, close_with, refuse};
use crate::io::{stop, unless_shutdown, with_deadline, ReadHalf, Stop, WriteHalf};
use crate::policy::origin_allowed;
use crate::policy::Admitted;
use crate::worker::{Served, Worker};
use crate::ws::handshake::{HandshakeError, Head, HEADER_ARRAY};

/// The connection's own facts, the same for each of its requests.
pub struct Conn<'a> {
    pub fd: RawFd,
    pub peer: SocketAddr,
    /// The TLS server name it asked for.
    pub sni: Option<&'a str>,
    /// `https` behind TLS, `http` on a plaintext listener.
    pub proto: &'static str,
    pub admitted: &'a Admitted,
}

/// Serve HTTP JSON-RPC requests on a kept-alive client connection until the
/// client closes, asks to close, or stays silent for the handshake timeout.
pub async fn http_loop<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    conn: Conn<'_>,
    served: &Rc<Served>,
    mut buf: Vec<u8>,
) {
    loop {
        // Each request is served by the newest configuration (a reload
        // applies to kept-alive connections from their next request).
        let newest = served.core.served();
        let served = &newest;
        let Some(head_len) = next_head(r, w, conn.fd, served, &mut buf).await else {
            return;
        };
        let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
        let Some(head) = super::head::parsed(&buf, &mut headers, &served.config.limits) else {
            return;
        };
        let req = match Request::of(&head, &conn, served) {
            Ok(req) => req,
            Err(Unserved::Head(e)) => return refuse(r, w, conn.fd, e).await,
            Err(Unserved::Text(status, why)) => {
                return close_with(r, w, conn.fd, status, &[], why).await
            }
            Err(Unserved::Key(status, body)) => {
                let mut out = Vec::new();
                response::write_json(&mut out, status, &[], body.as_bytes(), true);
                return response::respond_and_close(r, w, conn.fd, out).await;
            }
        };
        if head.method == "OPTIONS" {
            let out = preflight(&req);
            let (res, _) = w.write_all(out).await;
            buf.drain(..head_len);
            if res.is_err() || !req.keep_alive {
                return;
            }
            continue;
        }
        let framed = framing(&head, &req, buf.len() == head_len);
        let Some(body) = body_of(r, w, &conn, framed, &req, &mut buf, head_len).await else {
            return;
        };
        let (status, answer, retry_after) = serve_call(&req, &conn, &body).await;
        if req.worker.config.access_log {
            crate::info!(
                "access kind=http chain={} key={} client={} path={:?} status={status} ms={} bytes_in={} bytes_out={}",
                req.worker.name,
                req.key.as_ref().map_or("-", |(k, _)| k.name()),
                conn.admitted.ip,
                req.path,
                req.at.elapsed().as_millis(),
                body.len(),
                answer.len()
            );
        }
        let retry = retry_after.map(|s| s.to_string());
        let mut headers: Vec<(&str, &str)> = req.cors_headers();
        if let Some(secs) = retry.as_deref() {
            headers.push(("Retry-After", secs));
        }
        let mut out = Vec::with_capacity(answer.len() + 128);
        response::write_json(&mut out, status, &headers, &answer, !req.keep_alive);
        if let Some((k, _)) = &req.key {
            k.usage.bytes_in(body.len());
            k.usage.bytes_out(out.len());
        }
        let (res, _) = w.write_all(out).await;
        if res.is_err() {
            return;
        }
        if !req.keep_alive {
            w.shutdown().await;
            return;
        }
    }
}

/// The next request head, already buffered or read within the handshake
/// timeout; its length. `None`: the connection ends (answered if it must be).
async fn next_head<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    served: &Rc<Served>,
    buf: &mut Vec<u8>,
) -> Option<usize> {
    // Shutting down: no new request on this connection.
    if served.core.shutdown.fired() && buf.is_empty() {
        return None;
    }
    let limits = &served.config.limits;
    let timed_out = Cell::new(false);
    let expire = || {
        timed_out.set(true);
        stop(fd, Stop::Reads);
    };
    let idle = buf.is_empty();
    let head = with_deadline(
        limits.handshake_timeout,
        expire,
        super::head::read_head(r, buf, limits),
    );
    // A keep-alive connection waiting for its next request ends on shutdown.
    let got = if idle {
        unless_shutdown(&served.core.shutdown, || stop(fd, Stop::Reads), head).await
    } else {
        head.await
    };
    match got {
        Ok(Some(n)) => Some(n),
        Ok(None) if timed_out.get() && !buf.is_empty() => {
            refuse(r, w, fd, HandshakeError::Timeout).await;
            None
        }
        Ok(None) => None,
        Err(e) => {
            refuse(r, w, fd, e).await;
            None
        }
    }
}

/// Why a request head is not served: its answer.
enum Unserved {
    Head(HandshakeError),
    /// No chain for it: the status and why.
    Text(u16, &'static str),
    /// Its API key refused: the status and a JSON-RPC error.
    Key(u16, String),
}

/// One request's chain, key and manners, read off its head.
struct Request {
    worker: Rc<Worker>,
    /// The path its node sees (the chain's prefix and the key taken out).
    path: String,
    key: Option<crate::policy::keys::Held>,
    keep_alive: bool,
    /// The `Origin` CORS allows, echoed back.
    cors: Option<String>,
    /// What the node is told of the client (the same as over WebSocket).
    forwarded: Vec<u8>,
    at: std::time::Instant,
}

impl Request {
    /// Its chain (by Host, the TLS server name and the path) and its API
    /// key, or the status and JSON body that refuse it.
    fn of(head: &Head<'_, '_>, conn: &Conn<'_>, served: &Served) -> Result<Request, Unserved> {
        // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is 400.
        if head.minor_version >= 1 && head.single("host").is_none() {
            return Err(Unserved::Head(HandshakeError::BadHost));
        }
        let (worker, path) = match served.select(head.single("host"), conn.sni, head.path) {
            Ok((w, path)) => (w.clone(), path.into_owned()),
            Err(miss) => {
                crate::debug!("{}: {}", conn.peer, miss.reason());
                return Err(Unserved::Text(miss.status(), miss.reason()));
            }
        };
        // Its API key, if keys are on (counted while the request lasts).
        let (key, path) = match served.keys.as_deref() {
            None => (None, path),
            Some(keys) => match keys.admit(head, &worker.name, &path) {
                Ok((key, seen)) => (key, seen.into_owned()),
                Err((status, why)) => {
                    crate::debug!("{}: refused: {why}", conn.peer);
                    let code = if status == 429 { -32005 } else { -32001 };
                    let e = crate::jsonrpc::error::error(b"null", code, why, None);
                    return Err(Unserved::Key(status, e));
                }
            },
        };
        let cors = head
            .single("origin")
            .filter(|o| origin_allowed(&worker.config.http.cors_origins, o))
            .map(|o| String::from_utf8_lossy(o).into_owned());
        let ip = conn.peer.ip().to_string();
        let fwd = crate::ws::handshake::Forwarded {
            client_ip: &ip,
            proto: conn.proto,
            keys: served.keys.is_some(),
        };
        let mut forwarded = Vec::with_capacity(160);
        crate::ws::handshake::write_forwarded(&mut forwarded, head, fwd);
        Ok(Request {
            worker,
            path,
            key,
            keep_alive: head.minor_version >= 1 && !head.has_token("connection", "close"),
            cors,
            forwarded,
            at: std::time::Instant::now(),
        })
    }

    /// `Access-Control-Allow-Origin` for an allowed origin.
    fn cors_headers(&self) -> Vec<(&str, &str)> {
        match self.cors.as_deref() {
            Some(o) => vec![("Access-Control-Allow-Origin", o), ("Vary", "Origin")],
            None => Vec::new(),
        }
    }
}

/// The answer to a CORS preflight (`OPTIONS`).
fn preflight(req: &Request) -> Vec<u8> {
    let mut headers = vec![("Allow", "GET, POST, OPTIONS")];
    if req.cors.is_some() {
        headers.extend([
            ("Access-Control-Allow-Methods", "POST, GET, OPTIONS"),
            ("Access-Control-Allow-Headers", "content-type"),
            ("Access-Control-Max-Age", "86400"),
        ]);
    }
    headers.extend(req.cors_headers());
    let mut out = Vec::new();
    response::write(&mut out, 204, &headers, None, b"", false);
    out
}

/// How a JSON-RPC POST's body comes (and whether to say `100 Continue`
/// first), or why it is refused: the head's part of reading a body.
type Framed = Result<(body::BodyKind, bool), Option<(u16, &'static str)>>;

/// What the head says of the body (`buffered_none`: nothing of it is
/// buffered yet). `Err(None)`: not a POST.
fn framing(head: &Head<'_, '_>, req: &Request, buffered_none: bool) -> Framed {
    if head.method != "POST" {
        return Err(None);
    }
    let json = head
        .single("content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .is_some_and(|v| {
            let media = v.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("application/json")
        });
    if !json {
        return Err(Some((
            415,
            "JSON-RPC over HTTP needs Content-Type: application/json",
        )));
    }
    let max = req.worker.config.http.max_body_bytes as u64;
    let kind = match body::framing(head, false) {
        Ok(body::BodyKind::Length(n)) if n > max => Err(body::BodyError::TooLarge),
        other => other,
    };
    let kind = kind.map_err(|e| Some((e.status(), e.reason())))?;
    // RFC 9110 §10.1.1: a client that sent `Expect: 100-continue` (curl
    // does for large bodies) waits for an interim 100 before the body;
    // any other expectation cannot be met (417).
    let continue_first = match head.single("expect") {
        None => false,
        Some(e) if e.eq_ignore_ascii_case(b"100-continue") => {
            head.minor_version >= 1 && buffered_none
        }
        Some(_) => return Err(Some((417, "unsupported Expect"))),
    };
    Ok((kind, continue_first))
}

/// The body of a JSON-RPC POST, within its deadline, minimum rate and
/// idle time, and (while it is still arriving) within the core's budget for
/// bodies. `None`: refused (and answered) or the client left.
async fn body_of<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    conn: &Conn<'_>,
    framed: Framed,
    req: &Request,
    buf: &mut Vec<u8>,
    head_len: usize,
) -> Option<Vec<u8>> {
    let (fd, peer) = (conn.fd, conn.peer);
    let worker = &req.worker;
    let (kind, continue_first) = match framed {
        Ok(f) => f,
        Err(None) => {
            refuse(r, w, fd, HandshakeError::NotAGet).await;
            return None;
        }
        Err(Some((status, why))) => {
            crate::debug!("{peer}: {why}");
            close_with(r, w, fd, status, &req.cors_headers(), why).await;
            return None;
        }
    };
    if continue_first {
        let (res, _) = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()).await;
        res.ok()?;
    }
    let (http, min_rate) = (&worker.config.http, worker.config.limits.handshake_min_rate);
    match read_body(
        r,
        fd,
        buf,
        head_len,
        kind,
        http,
        min_rate,
        &worker.core.bodies,
    )
    .await
    {
        Ok(b) => Some(b),
        Err(BodyFailure::Gone) => None,
        Err(BodyFailure::Cut(cut)) => {
            crate::debug!("{peer}: request body cut: {}", cut.reason());
            crate::stats::count(|c| c.bodies_cut[cut as usize].add(1));
            let retry: &[(&str, &str)] = match cut {
                Cut::Budget => &[("Retry-After", "1")],
                _ => &[],
            };
            close_with(r, w, fd, cut.status(), retry, cut.reason()).await;
            None
        }
        Err(BodyFailure::Refused(status, why)) => {
            crate::debug!("{peer}: request body refused: {why} ({status})");
            close_with(r, w, fd, status, &[], why).await;
            None
        }
    }
}

/// One call, read once: admitted, then answered ([`super::rpc`]). The
/// status, the body, and seconds for `Retry-After`.
async fn serve_call(req: &Request, conn: &Conn<'_>, body: &[u8]) -> (u16, Vec<u8>, Option<u64>) {
    let worker = &req.worker;
    let call = crate::jsonrpc::Call::parse(body);
    let key = req.key.as_ref().map(|(k, _)| &**k);
    if let Err(refused) = crate::call::admit(
        &worker.admission,
        conn.admitted.ip,
        key,
        &call,
        worker.session.chain,
    ) {
        // Not one request a node could read (no refusal of a policy's):
        // 400, the JSON-RPC error as the body.
        let answer = refused.answer.clone().unwrap_or_default().into_bytes();
        return (refused.http_status(), answer, refused.retry_after());
    }
    let (status, answer) = super::rpc::answer(worker, &req.path, &call, &req.forwarded).await;
    (status, answer, None)
}
