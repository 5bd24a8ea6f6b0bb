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
use crate::http::response::{refuse, respond_and_close, write_response};
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
    let mut buf = if limits.max_head_bytes <= BUF_SIZE {
        take_buf()
    } else {
        Vec::with_capacity(limits.max_head_bytes)
    };
    let head_len = match read_head(r, &mut buf, limits).await {
        Ok(Some(len)) => len,
        // Nothing complete within the handshake timeout: 408.
        Ok(None) if timed_out.get() => {
            refuse(r, w, fd, HandshakeError::Timeout).await;
            give_buf(buf);
            return Handshake::Done;
        }
        Ok(None) => {
            give_buf(buf);
            return Handshake::Done;
        }
        Err(e) => {
            crate::debug!("bad request from {peer}: {e}");
            refuse(r, w, fd, e).await;
            give_buf(buf);
            return Handshake::Done;
        }
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
    let worker = &worker;
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
                let worker = served;
                let mut out = Vec::new();
                // Served apart (server.metrics_listen), or to clients on
                // this host only unless server.public_metrics says otherwise.
                let public = worker.config.public_metrics || client_ip.is_loopback();
                if worker.config.metrics_listen.is_some() || !public {
                    write_response(&mut out, 404, &[], "not found", true);
                } else {
                    metrics_response(&mut out, worker, false);
                }
                respond_and_close(r, w, fd, out).await;
            }
            None if is_health(head.path) => {
                let mut out = Vec::new();
                health_response(&mut out, served, head.path, false);
                respond_and_close(r, w, fd, out).await;
            }
            None if selected.is_err() => {
                let miss = selected.as_ref().err().copied().expect("a miss");
                let mut out = Vec::new();
                write_response(&mut out, miss.status(), &[], miss.reason(), true);
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
    let path = match &selected {
        Ok((_, path)) => path.clone(),
        Err(miss) => {
            crate::debug!("{peer}: {}", miss.reason());
            let mut out = Vec::new();
            write_response(&mut out, miss.status(), &[], miss.reason(), true);
            respond_and_close(r, w, fd, out).await;
            give_buf(buf);
            return Handshake::Done;
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
                let mut out = Vec::new();
                write_response(&mut out, status, &[], why, true);
                respond_and_close(r, w, fd, out).await;
                give_buf(buf);
                return Handshake::Done;
            }
        },
    };
    let upgrade = match validate_upgrade(&head) {
        // The node sees the path without the chain's prefix.
        Ok(u) => crate::ws::handshake::Upgrade { path: &path, ..u },
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
                .count(crate::policy::Reason::Origin);
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
            worker: worker.clone(),
        };
    }
    let ip = peer.ip().to_string();
    let fwd = Forwarded {
        client_ip: &ip,
        proto,
        keys: served.keys.is_some(),
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
        worker: worker.clone(),
    }
}
