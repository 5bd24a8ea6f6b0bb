//! The request head of a new connection and what it asks for: admission
//! (client address, caps, origin), then a WebSocket upgrade towards a node
//! (pinned: the session's own connection; shared: a slot on this core's
//! connection), HTTP JSON-RPC, an endpoint, or a refusal.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;

use crate::http::endpoints::{health_response, is_health, metrics_response};
use crate::http::head::{parsed, read_head};
use crate::http::response::{close_with, refuse, respond_and_close, write_response};
use crate::io::{give_buf, take_buf, ReadHalf, WriteHalf, BUF_SIZE};
use crate::policy::origin_allowed;
use crate::policy::Admitted;
use crate::upstream;
use crate::worker::{Served, Worker};
use crate::ws::handshake::{
    validate_upgrade, write_switching_protocols, Forwarded, HandshakeError, HEADER_ARRAY,
};

/// What the handshake phase produced.
pub enum Handshake<UR, UW> {
    /// Relay with these node halves, after these early bytes.
    Relay {
        client_early: Vec<u8>,
        upstream: (UR, UW),
        upstream_early: Vec<u8>,
        upstream_fd: RawFd,
        _lease: upstream::NodeLease,
        template: upstream::UpgradeTemplate,
        admitted: Admitted,
        /// The chain the session is on.
        worker: Rc<Worker>,
    },
    /// Serve the session over this core's shared connection to a node.
    Shared {
        client_early: Vec<u8>,
        conn: Rc<crate::relay::shared::Conn>,
        lease: upstream::NodeLease,
        admitted: Admitted,
        worker: Rc<Worker>,
    },
    /// HTTP requests (JSON-RPC POST, CORS preflight): `buf` starts with
    /// the first head. Each request picks its chain.
    Http { buf: Vec<u8>, admitted: Admitted },
    /// A response was sent (or the client left): close.
    Done,
}

/// A request head the gateway answers itself, then closes: its status,
/// extra header fields and one-line reason. The one way a handshake ends
/// refused (the head buffer goes back to the pool).
async fn refused<R: ReadHalf, W: WriteHalf, UR, UW>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    buf: Vec<u8>,
    answer: Answer<'_>,
) -> Handshake<UR, UW> {
    match answer {
        Answer::Refuse(e) => refuse(r, w, fd, e).await,
        Answer::Text(status, headers, why) => close_with(r, w, fd, status, headers, why).await,
        Answer::Bytes(out) => respond_and_close(r, w, fd, out).await,
    }
    give_buf(buf);
    Handshake::Done
}

/// What a refused (or served) request head gets.
enum Answer<'a> {
    Refuse(HandshakeError),
    Text(u16, &'a [(&'a str, &'a str)], &'a str),
    /// A whole response (an endpoint's).
    Bytes(Vec<u8>),
}

#[allow(clippy::too_many_arguments)] // the connection's own facts, each used once
pub async fn handshake<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    peer: SocketAddr,
    served: &Rc<Served>,
    proto: &'static str,
    sni: Option<&str>,
    timed_out: &Cell<bool>,
) -> Handshake<upstream::NodeReader, upstream::NodeWriter> {
    let limits = &served.config.limits;
    let (buf, head_len) = match first_head(r, w, fd, peer, limits, timed_out).await {
        Ok(got) => got,
        Err(done) => return done,
    };
    let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
    let Some(head) = parsed(&buf, &mut headers, limits) else {
        give_buf(buf);
        return Handshake::Done;
    };

    // The chain, from Host (and the TLS server name) and the path; its
    // admission: the client's address, then the connection caps. (A request
    // for no chain is admitted by the first chain's, and answered below.)
    let selected = served.select(head.single("host"), sni, head.path);
    let worker = match &selected {
        Ok((w, _)) => (*w).clone(),
        Err(_) => served.chains[0].clone(),
    };
    let client_ip = crate::policy::client_ip_from(
        peer.ip(),
        head.single("x-forwarded-for"),
        head.single("forwarded"),
        worker.admission.trusted_hops,
    );
    let mut admitted = match worker.admission.admit(client_ip) {
        Ok(guard) => Admitted {
            _guard: guard,
            ip: client_ip,
            key: None,
        },
        Err((status, why)) => {
            crate::debug!("refused {peer}: {why}");
            let retry: &[(&str, &str)] = if status == 429 {
                &[("Retry-After", "1")]
            } else {
                &[]
            };
            return refused(r, w, fd, buf, Answer::Text(status, retry, why)).await;
        }
    };
    if !head.wants_websocket() && (head.method == "POST" || head.method == "OPTIONS") {
        return Handshake::Http { buf, admitted };
    }
    if !head.wants_websocket() {
        let answer = not_an_upgrade(&head, served, selected.as_ref().err().copied(), client_ip);
        return refused(r, w, fd, buf, answer).await;
    }
    let path = match &selected {
        Ok((_, path)) => path.clone(),
        Err(miss) => {
            crate::debug!("{peer}: {}", miss.reason());
            return refused(
                r,
                w,
                fd,
                buf,
                Answer::Text(miss.status(), &[], miss.reason()),
            )
            .await;
        }
    };
    // Its API key, if keys are on: out of the path the node sees.
    let path = match served.keys.as_deref() {
        None => path,
        Some(keys) => match keys.admit(&head, &worker.name, &path) {
            Ok((key, path)) => {
                admitted.key = key;
                path.into_owned().into()
            }
            Err((status, why)) => {
                crate::debug!("{peer}: refused: {why}");
                return refused(r, w, fd, buf, Answer::Text(status, &[], why)).await;
            }
        },
    };
    let upgrade = match validate_upgrade(&head) {
        // The node sees the path without the chain's prefix.
        Ok(u) => crate::ws::handshake::Upgrade { path: &path, ..u },
        Err(e) => {
            crate::debug!("bad upgrade from {peer}: {e}");
            return refused(r, w, fd, buf, Answer::Refuse(e)).await;
        }
    };
    let origins = &worker.admission.origins;
    let origin = head.single("origin").filter(|_| !origins.is_empty());
    if origin.is_some_and(|o| !origin_allowed(origins, o)) {
        let counts = &worker.admission.shared.rejections;
        counts.count(crate::policy::Reason::Origin);
        let why = "origin not allowed (admission.origins)";
        return refused(r, w, fd, buf, Answer::Text(403, &[], why)).await;
    }
    if let Some(shared) = &worker.shared {
        // A slot on this core's connection to a node, and the client's 101.
        let (conn, lease) = match shared.open().await {
            Ok(c) => c,
            Err((status, body)) => {
                crate::warn!("{peer}: {body}");
                return refused(r, w, fd, buf, Answer::Text(status, &[], &body)).await;
            }
        };
        let mut out = Vec::with_capacity(256);
        write_switching_protocols(&mut out, upgrade.key, None);
        let (res, _) = w.write_all(out).await;
        let client_early = buf[head_len..].to_vec();
        give_buf(buf);
        return match res {
            Ok(_) => Handshake::Shared {
                client_early,
                conn,
                lease,
                admitted,
                worker,
            },
            Err(_) => Handshake::Done,
        };
    }
    let opened = open_pinned(w, &head, &upgrade, &worker, peer, proto, served).await;
    match opened {
        Ok(Some(node)) => {
            // Only what the client sent after its head stays: the pooled
            // head buffer goes back.
            let client_early = buf[head_len..].to_vec();
            give_buf(buf);
            let upstream_fd = node.stream.raw_fd();
            Handshake::Relay {
                client_early,
                upstream: node.stream.into_split(),
                upstream_early: node.early,
                upstream_fd,
                _lease: node.lease,
                template: node.template,
                admitted,
                worker,
            }
        }
        // The client left before its 101.
        Ok(None) => {
            give_buf(buf);
            Handshake::Done
        }
        Err((status, why)) => refused(r, w, fd, buf, Answer::Text(status, &[], &why)).await,
    }
}

/// A pinned session's own node connection, upgraded (the node told of the
/// client as nginx tells it), and the client's 101. `Ok(None)`: the client
/// left; `Err`: the status and why no node took it.
async fn open_pinned<W: WriteHalf>(
    w: &mut W,
    head: &crate::ws::handshake::Head<'_, '_>,
    upgrade: &crate::ws::handshake::Upgrade<'_>,
    worker: &Rc<Worker>,
    peer: SocketAddr,
    proto: &'static str,
    served: &Served,
) -> Result<Option<upstream::UpstreamSession>, (u16, String)> {
    let ip = peer.ip().to_string();
    let fwd = Forwarded {
        client_ip: &ip,
        proto,
        keys: served.keys.is_some(),
    };
    let (timeout, max_head) = (
        worker.config.connect_timeout,
        served.config.limits.max_head_bytes,
    );
    let session = match upstream::open(&worker.pool, head, upgrade, fwd, timeout, max_head).await {
        Ok(s) => s,
        Err(no) => {
            crate::warn!("{peer}: {}", no.body);
            return Err((no.status, no.body));
        }
    };
    let mut out = Vec::with_capacity(256);
    write_switching_protocols(&mut out, upgrade.key, session.accepted.protocol.as_deref());
    let (res, _) = w.write_all(out).await;
    if res.is_err() {
        return Ok(None);
    }
    crate::debug!("session {peer} -> {}", session.lease.node().url);
    Ok(Some(session))
}

/// The connection's first request head, read within the handshake timeout
/// (into a pooled buffer): the buffer and the head's length, or the
/// handshake's end (answered when it must be: 408, 400, 431...).
async fn first_head<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    peer: SocketAddr,
    limits: &crate::config::Limits,
    timed_out: &Cell<bool>,
) -> Result<(Vec<u8>, usize), Handshake<upstream::NodeReader, upstream::NodeWriter>> {
    let mut buf = if limits.max_head_bytes <= BUF_SIZE {
        take_buf()
    } else {
        Vec::with_capacity(limits.max_head_bytes)
    };
    match read_head(r, &mut buf, limits).await {
        Ok(Some(len)) => Ok((buf, len)),
        // Nothing complete within the handshake timeout: 408.
        Ok(None) if timed_out.get() => {
            Err(refused(r, w, fd, buf, Answer::Refuse(HandshakeError::Timeout)).await)
        }
        Ok(None) => {
            give_buf(buf);
            Err(Handshake::Done)
        }
        Err(e) => {
            crate::debug!("bad request from {peer}: {e}");
            Err(refused(r, w, fd, buf, Answer::Refuse(e)).await)
        }
    }
}

/// A request head that is no upgrade and no JSON-RPC POST: the metrics
/// and health endpoints, or the status that says what this port serves.
fn not_an_upgrade(
    head: &crate::ws::handshake::Head<'_, '_>,
    served: &Served,
    miss: Option<crate::config::Miss>,
    client_ip: std::net::IpAddr,
) -> Answer<'static> {
    let get = head.method.eq_ignore_ascii_case("GET") || head.method.eq_ignore_ascii_case("HEAD");
    if !get {
        return Answer::Refuse(HandshakeError::NotAGet);
    }
    let mut out = Vec::new();
    if head.path == "/metrics" {
        // Served apart (server.metrics_listen), or to clients on this
        // host only unless server.public_metrics says otherwise.
        let public = served.config.public_metrics || client_ip.is_loopback();
        if served.config.metrics_listen.is_some() || !public {
            return Answer::Text(404, &[], "not found");
        }
        metrics_response(&mut out, served, false);
        return Answer::Bytes(out);
    }
    if is_health(head.path) {
        health_response(&mut out, served, head.path, false);
        return Answer::Bytes(out);
    }
    if let Some(miss) = miss {
        return Answer::Text(miss.status(), &[], miss.reason());
    }
    const UPGRADE: &[(&str, &str)] = &[("Upgrade", "websocket"), ("Connection", "Upgrade, close")];
    write_response(
        &mut out,
        426,
        UPGRADE,
        "ringway: this endpoint serves JSON-RPC over WebSocket; connect with a WebSocket client (wss://host:port/)",
        false,
    );
    Answer::Bytes(out)
}
