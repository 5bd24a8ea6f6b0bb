//! JSON-RPC over HTTP on the gateway's port (`POST /`), as a node serves
//! it on 9944: keep-alive, strict body framing ([`crate::h1`]), a body
//! deadline and idle time ([`super::body`]), CORS, admission per call, then each request routed by the same
//! rules as a WebSocket message ([`crate::route`]) and sent to a node over
//! the per-core keep-alive pool ([`crate::upstream::http`]). A pruned node's "state
//! is gone" answer is retried once on an archive node.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use super::body::{read_body, BodyFailure, Cut};
use crate::h1 as body;
use crate::http::response::{self, refuse, respond_and_close, write_response};
use crate::io::{stop, unless_shutdown, with_deadline, ReadHalf, Stop, WriteHalf};
use crate::policy::origin_allowed;
use crate::policy::Admitted;
use crate::upstream::http as rpc_http;
use crate::worker::{Served, Worker};
use crate::ws::handshake::{HandshakeError, HEADER_ARRAY};

/// Serve HTTP JSON-RPC requests on a kept-alive client connection until the
/// client closes, asks to close, or stays silent for the handshake timeout.
#[allow(clippy::too_many_arguments)] // the connection's own facts, each used once
pub async fn http_loop<R: ReadHalf, W: WriteHalf>(
    r: &mut R,
    w: &mut W,
    fd: RawFd,
    peer: SocketAddr,
    served: &Rc<Served>,
    sni: Option<&str>,
    proto: &'static str,
    mut buf: Vec<u8>,
    admitted: &Admitted,
) {
    let ip = peer.ip().to_string();
    loop {
        // Each request is served by the newest configuration (a reload
        // applies to kept-alive connections from their next request).
        let newest = served.core.served();
        let served = &newest;
        let limits = &served.config.limits;
        let http = &served.config.http;
        // Shutting down: no new request on this connection.
        if served.core.shutdown.fired() && buf.is_empty() {
            return;
        }
        // The head: already buffered, or read within the timeout.
        let timed_out = Cell::new(false);
        let expire = || {
            timed_out.set(true);
            stop(fd, Stop::Reads);
        };
        let idle = buf.is_empty();
        let head = with_deadline(
            limits.handshake_timeout,
            expire,
            super::head::read_head(r, &mut buf, limits),
        );
        // A keep-alive connection waiting for its next request ends on shutdown.
        let got = if idle {
            unless_shutdown(&served.core.shutdown, || stop(fd, Stop::Reads), head).await
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
        let Some(head) = super::head::parsed(&buf, &mut headers, limits) else {
            return;
        };
        // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is 400.
        if head.minor_version >= 1 && head.single("host").is_none() {
            return refuse(r, w, fd, HandshakeError::BadHost).await;
        }
        // Its chain, by Host (and the connection's TLS server name) and path.
        let (worker, path) = match served.select(head.single("host"), sni, head.path) {
            Ok((w, path)) => (w.clone(), path.into_owned()),
            Err(miss) => {
                crate::debug!("{peer}: {}", miss.reason());
                let mut out = Vec::new();
                write_response(&mut out, miss.status(), &[], miss.reason(), true);
                return respond_and_close(r, w, fd, out).await;
            }
        };
        let worker = &worker;
        // Its API key, if keys are on (counted while the request lasts).
        let (key_held, path) = match served.keys.as_deref() {
            None => (None, path),
            Some(keys) => match keys.admit(&head, &worker.name, &path) {
                Ok((key, seen)) => (key, seen.into_owned()),
                Err((status, why)) => {
                    crate::debug!("{peer}: refused: {why}");
                    let code = if status == 429 { -32005 } else { -32001 };
                    let body = crate::jsonrpc::error::error(b"null", code, why, None);
                    let mut out = Vec::new();
                    response::write_json(&mut out, status, &[], body.as_bytes(), true);
                    return respond_and_close(r, w, fd, out).await;
                }
            },
        };
        let keep_alive = head.minor_version >= 1 && !head.has_token("connection", "close");
        // What the node is told of the client: the same as over WebSocket.
        let mut forwarded = Vec::with_capacity(160);
        let fwd = crate::ws::handshake::Forwarded {
            client_ip: &ip,
            proto,
            keys: served.keys.is_some(),
        };
        crate::ws::handshake::write_forwarded(&mut forwarded, &head, fwd);
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
            let mut headers = vec![("Allow", "GET, POST, OPTIONS")];
            if cors.is_some() {
                headers.extend([
                    ("Access-Control-Allow-Methods", "POST, GET, OPTIONS"),
                    ("Access-Control-Allow-Headers", "content-type"),
                    ("Access-Control-Max-Age", "86400"),
                ]);
            }
            headers.extend_from_slice(&extra);
            let mut out = Vec::new();
            response::write(&mut out, 204, &headers, None, b"", false);
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
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        // The body, within its deadline, minimum rate and idle time, and
        // (while it is still arriving) within the core's budget for bodies.
        let body = read_body(
            r,
            fd,
            &mut buf,
            head_len,
            kind,
            http,
            limits.handshake_min_rate,
            &worker.core.bodies,
        )
        .await;
        let body = match body {
            Ok(b) => b,
            Err(BodyFailure::Gone) => return,
            Err(BodyFailure::Cut(cut)) => {
                crate::debug!("{peer}: request body cut: {}", cut.reason());
                crate::stats::count(|c| c.bodies_cut[cut as usize].add(1));
                let mut out = Vec::new();
                let retry: &[(&str, &str)] = match cut {
                    Cut::Budget => &[("Retry-After", "1")],
                    _ => &[],
                };
                write_response(&mut out, cut.status(), retry, cut.reason(), true);
                return respond_and_close(r, w, fd, out).await;
            }
            Err(BodyFailure::Refused(status, why)) => {
                crate::debug!("{peer}: request body refused: {why} ({status})");

                let mut out = Vec::new();
                write_response(&mut out, status, &[], why, true);
                return respond_and_close(r, w, fd, out).await;
            }
        };

        let now = std::time::Instant::now();
        let body_len = body.len();
        let call = crate::jsonrpc::Call::parse(&body);
        // What cannot be read one way only is answered here, not sent.
        let checked = match call.refusal() {
            Some(answer) => Err((None, Some(answer))),
            None => worker
                .admission
                .check_call(
                    admitted.ip,
                    &call,
                    now,
                    key_held.as_ref().map(|(k, _)| &**k),
                )
                .map_err(|(refusal, answer)| (Some(refusal), answer)),
        };
        let (status, answer, retry_after) = match checked {
            Ok(()) => {
                crate::stats::calls(
                    worker.session.chain,
                    &call,
                    crate::stats::Outcome::Forwarded,
                );
                let (status, answer) = answer_rpc(worker, &path, &call, &forwarded).await;
                (status, answer, None)
            }
            Err((refusal, answer)) => {
                crate::debug!("refused a call from {}: {refusal:?}", admitted.ip);
                crate::stats::calls(worker.session.chain, &call, crate::stats::Outcome::Refused);
                let retry = match refusal {
                    Some(
                        crate::policy::Refusal::RateLimited(wait)
                        | crate::policy::Refusal::QuotaExceeded(wait),
                    ) => Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                    _ => None,
                };
                // Not one request a node could read (no refusal of a
                // policy's): 400, the JSON-RPC error as the body.
                let status = refusal.map_or(400, crate::policy::Refusal::http_status);
                (status, answer.unwrap_or_default().into_bytes(), retry)
            }
        };
        if worker.config.access_log {
            crate::info!(
                "access kind=http chain={} key={} client={} path={:?} status={status} ms={} bytes_in={body_len} bytes_out={}",
                worker.name,
                key_held.as_ref().map_or("-", |(k, _)| k.name()),
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
        let headers: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (&**n, &**v)).collect();
        let mut out = Vec::with_capacity(answer.len() + 128);
        response::write_json(&mut out, status, &headers, &answer, !keep_alive);
        if let Some((k, _)) = &key_held {
            k.usage.bytes_in(body_len);
            k.usage.bytes_out(out.len());
        }
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

/// Ask node `first`; if it has not answered within `delay`, ask the node
/// `second` gives too (if any: it checks the hedge budget), and take the
/// first answer (the later one is dropped, its connection closed). Returns
/// the node that answered and its answer.
async fn hedged<F, Fut>(
    first: usize,
    delay: Duration,
    second: impl FnOnce() -> Option<usize>,
    forward: &F,
    health: &crate::health::Health,
) -> (usize, Result<rpc_http::NodeAnswer, rpc_http::Failure>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<rpc_http::NodeAnswer, rpc_http::Failure>>,
{
    let mut a = std::pin::pin!(forward(first));
    monoio::select! {
        r = &mut a => return (first, r),
        _ = monoio::time::sleep(delay) => {}
    }
    let Some(other) = second() else {
        return (first, a.await);
    };
    let mut b = std::pin::pin!(forward(other));
    let (winner, r) = monoio::select! {
        r = &mut a => (first, r),
        r = &mut b => (other, r),
    };
    // A failure is not an answer: the other may still give one.
    let (winner, r) = match (winner == first, r) {
        (_, Ok(answer)) => (winner, Ok(answer)),
        (true, Err(_)) => (other, b.await),
        (false, Err(_)) => (first, a.await),
    };
    // A copy that answered first is no evidence against the first node
    // (it was faster this once); its timeout or error would have been.
    let won = winner == other && r.is_ok();
    health.hedged(first, other, won, false);
    (winner, r)
}

/// Route one HTTP JSON-RPC body (parsed once) and forward it; retry a
/// pruned node's "state is gone" answer once on an archive node. A node that
/// cannot be reached is skipped for the next; one that took the request and
/// did not answer is not (the request may have had effects). Returns status
/// and body.
async fn answer_rpc(
    worker: &Rc<Worker>,
    path: &str,
    call: &crate::jsonrpc::Call<'_>,
    forwarded: &[u8],
) -> (u16, Vec<u8>) {
    let pool = &worker.pool;
    let body = call.raw;
    let target = worker.router.route_call(call, &*worker.chain);
    let role = rpc_http::role_for(target);
    let max = worker.config.limits.max_answer_bytes as usize;
    let timeout = worker.config.request_timeout;
    // Each answer's time is the node's response time (a histogram per node).
    let forward = |index| async move {
        let start = std::time::Instant::now();
        let answer = rpc_http::forward(
            pool,
            &worker.http,
            index,
            path,
            body,
            forwarded,
            max,
            timeout,
        );
        let answer = answer.await;
        if answer.is_ok() {
            let took = start.elapsed();
            pool.health()
                .record_latency(index, crate::health::Timed::Http, took);
        }
        answer
    };
    // Reads may be asked of a second node when the first is late.
    let hedging = &worker.hedging;
    let reads = hedging.arm(call.requests());
    let mut tried = vec![false; pool.nodes().len()];
    let mut failed = (502, String::from("no upstream node"));
    while let Some(first) = pool.pick_role(role, &tried) {
        tried[first] = true;
        let delay = reads
            .then(|| hedging.delay(pool.health().estimate(first), timeout / 2))
            .flatten();
        let (index, answered) = match delay {
            None => (first, forward(first).await),
            Some(delay) => {
                let second = || pool.pick_role(role, &tried).filter(|_| hedging.take());
                hedged(first, delay, second, &forward, pool.health()).await
            }
        };
        tried[index] = true;
        let name = pool.nodes()[index].public_name();
        match answered {
            Ok(a) => {
                let on_pruned = pool.nodes()[index].role == crate::config::Role::Pruned;
                if on_pruned && a.status == 200 && worker.router.is_pruned_error(&a.body) {
                    let archive: Vec<bool> = (0..tried.len())
                        .map(|i| tried[i] || pool.nodes()[i].role != crate::config::Role::Archive)
                        .collect();
                    if let Some(ai) = pool.pick(&archive) {
                        if let Ok(retry) = forward(ai).await {
                            return (retry.status, retry.body);
                        }
                    }
                }
                return (a.status, a.body);
            }
            Err(rpc_http::Failure::NotSent(e)) => failed = (502, format!("{name}: {e}")),
            Err(e @ rpc_http::Failure::TimedOut(_)) => {
                crate::warn!("{name}: {e}");
                failed = (504, format!("{name}: {e}"));
                break;
            }
            Err(e) => {
                failed = (502, format!("{name}: {e}"));
                break;
            }
        }
    }
    // No answer: a JSON-RPC error for each request, with its id.
    let (status, why) = failed;
    let message = format!("upstream unavailable ({why})");
    let ids = call.requests().map(|r| r.reply_id());
    let out = crate::jsonrpc::error::errors(
        ids,
        call.is_batch(),
        crate::jsonrpc::error::code::INTERNAL_ERROR,
        &message,
    )
    .unwrap_or_else(|| {
        crate::jsonrpc::error::error(
            b"null",
            crate::jsonrpc::error::code::INTERNAL_ERROR,
            &message,
            None,
        )
    });
    (status, out.into_bytes())
}
