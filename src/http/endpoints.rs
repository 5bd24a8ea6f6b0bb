//! The gateway's own endpoints: `GET /health` (node states as JSON),
//! `GET /metrics` (Prometheus text, from [`crate::metrics`]), and the side
//! listeners' one-request connections (HTTP-to-HTTPS redirect, private
//! metrics port).

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use monoio::io::Splitable;
use monoio::net::TcpStream;

use crate::http::response::{self, write_response};
use crate::io::{stop, with_deadline, PlainReader, ReadHalf, Stop, WriteHalf};
use crate::worker::Served;
use crate::ws::frame::Parse;
use crate::ws::handshake::parse_head;

/// One chain's part of `GET /health`: whether it can serve (a node up by
/// its checks), and its JSON object (without the braces).
fn chain_report(pool: &crate::upstream::Pool, full: bool) -> (bool, String) {
    use std::fmt::Write;
    let h = pool.health();
    let best = h.best();
    let mut nodes = String::new();
    let mut any_up = false;
    for (i, n) in pool.nodes().iter().enumerate() {
        let up = h.is_up(i);
        any_up |= up;
        let head = h.head(i);
        let _ = write!(
            nodes,
            r#"{}{{"url":"{}","role":"{}","up":{},"head":{},"lag":{},"finalized":{},"other_chain":{},"probes":{}}}"#,
            if i > 0 { "," } else { "" },
            json_text(&if full { n.url.clone() } else { n.public_name() }),
            n.role.name(),
            up,
            head,
            if head == 0 {
                0
            } else {
                best.saturating_sub(head)
            },
            h.finalized_of(i),
            h.on_other_chain(i),
            h.probes(i)
        );
    }
    // No node up by its checks: sessions still go to the best candidate
    // (panic routing), and the status says so.
    let status = if any_up { "ok" } else { "degraded" };
    (
        any_up,
        format!(
            r#""status":"{status}","best_head":{best},"finalized":{},"chain":{},"nodes":[{nodes}]"#,
            h.finalized(),
            h.chain().map_or("null".into(), |c| format!("{c:?}")),
        ),
    )
}

fn json_text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `GET /health`: each chain's nodes as JSON, the configuration generation
/// and how the last reload went; node URLs in full only on the private
/// metrics listener (`full`), else as
/// [`crate::config::NodeConfig::public_name`]. 200 when every chain has a
/// node up, else 503 (a load balancer in front may prefer another
/// gateway); `/health?chain=NAME`: that chain alone (404 if none has that
/// name). A report of one chain has its fields at the top level (as a
/// single-chain gateway's); of several, each in `chains`.
pub fn health_report(
    chains: &[(&str, &crate::upstream::Pool)],
    only: Option<&str>,
    reloads: crate::metrics::Reloads,
    full: bool,
) -> (u16, String) {
    let chosen: Vec<_> = chains
        .iter()
        .filter(|(name, _)| only.map_or(true, |o| o == *name))
        .collect();
    if chosen.is_empty() {
        return (404, r#"{"status":"no such chain"}"#.to_string());
    }
    let mut all_up = true;
    let mut list = String::new();
    let mut first = None;
    for (i, (name, pool)) in chosen.iter().enumerate() {
        let (up, body) = chain_report(pool, full);
        all_up &= up;
        if i > 0 {
            list.push(',');
        }
        // One chain: its report at the top level (as before there were
        // chains), its name and status in the list.
        let status = if up { "ok" } else { "degraded" };
        if chosen.len() == 1 {
            list.push_str(&format!(
                r#"{{"name":"{}","status":"{status}"}}"#,
                json_text(name)
            ));
            first = Some(body);
        } else {
            list.push_str(&format!(r#"{{"name":"{}",{body}}}"#, json_text(name)));
        }
    }
    let top = first
        .unwrap_or_else(|| format!(r#""status":"{}""#, if all_up { "ok" } else { "degraded" }));
    (
        if all_up { 200 } else { 503 },
        format!(
            r#"{{{top},"config":{{"generation":{},"last_reload":"{}"}},"chains":[{list}]}}"#,
            reloads.generation,
            match (reloads.ok + reloads.failed, reloads.last_failed) {
                (0, _) => "none",
                (_, true) => "refused",
                (_, false) => "ok",
            }
        ),
    )
}

/// What the side listeners read of one plain HTTP request head (within 5 s).
struct Target {
    path: String,
    host: Option<String>,
    method: String,
    /// It carries an `Origin`, or a `Sec-Fetch-Site` of another site.
    from_a_page: bool,
    bearer: Option<String>,
}

async fn read_target(r: &mut PlainReader<TcpStream>, fd: RawFd) -> Option<Target> {
    with_deadline(Duration::from_secs(5), || stop(fd, Stop::Reads), async {
        let mut buf = Vec::with_capacity(4096);
        loop {
            let (res, b) = r.read_more(buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                return None;
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            match parse_head(&buf, &mut headers, 8192, 64) {
                Ok(Parse::Done(head, _)) => {
                    let text = |name: &'static str| {
                        head.single(name)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .map(str::to_string)
                    };
                    let site = text("sec-fetch-site");
                    let from_a_page = head.single("origin").is_some()
                        || site.is_some_and(|s| !matches!(s.as_str(), "none" | "same-origin"));
                    let bearer = text("authorization").and_then(|a| {
                        let (scheme, token) = a.split_once(' ')?;
                        scheme
                            .eq_ignore_ascii_case("bearer")
                            .then(|| token.trim().to_string())
                    });
                    return Some(Target {
                        path: head.path.to_string(),
                        host: text("host"),
                        method: head.method.to_string(),
                        from_a_page,
                        bearer,
                    });
                }
                Ok(Parse::NeedMore(_)) => {}
                Err(_) => return None,
            }
        }
    })
    .await
}

pub async fn redirect_one(stream: TcpStream, https_port: u16) {
    let fd = stream.as_raw_fd();
    let (r, mut w) = stream.into_split();
    let mut r = PlainReader::new(r);
    let location = read_target(&mut r, fd).await.map(|t| {
        let (path, host) = (t.path, t.host.unwrap_or_else(|| "localhost".into()));
        // Drop the port: "example.com:80", "[::1]:80" (not the colons of a bare IPv6).
        let host = match host.rsplit_once(':') {
            Some((h, p))
                if p.bytes().all(|c| c.is_ascii_digit())
                    && (!h.contains(':') || h.ends_with(']')) =>
            {
                h
            }
            _ => host.as_str(),
        };
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        format!("https://{host}{port}{path}")
    });
    let mut out = Vec::new();
    match location {
        Some(location) => write_response(
            &mut out,
            301,
            &[("Location", &location)],
            &format!("moved to {location}"),
            true,
        ),
        None => write_response(&mut out, 400, &[], "bad request", true),
    }
    let _ = w.write_all(out).await;
    w.shutdown().await;
}

/// `server.metrics_listen`: plain HTTP, `GET /metrics` and `GET /health`,
/// and the admin plane (`GET /usage`, `POST /keys/<name>/disable|enable`),
/// which only the operator reaches ([`super::admin`]).
pub async fn metrics_one(stream: TcpStream, peer: std::net::SocketAddr, served: Rc<Served>) {
    use super::admin::{decide, Asked, Endpoint, Verdict};
    let fd = stream.as_raw_fd();
    let local = stream
        .local_addr()
        .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip());
    let (r, mut w) = stream.into_split();
    let mut r = PlainReader::new(r);
    let mut out = Vec::new();
    let Some(t) = read_target(&mut r, fd).await else {
        write_response(&mut out, 400, &[], "bad request", true);
        let _ = w.write_all(out).await;
        return w.shutdown().await;
    };
    let endpoint = match (t.method.as_str(), t.path.as_str()) {
        ("POST", p) if p.starts_with("/keys/") => Some(Endpoint::Command),
        (_, "/metrics") => Some(Endpoint::Metrics),
        (_, p) if is_health(p) => Some(Endpoint::Health),
        (_, "/usage") => Some(Endpoint::Usage),
        _ => None,
    };
    let verdict = endpoint.map(|endpoint| {
        let asked = Asked {
            endpoint,
            host: t.host.as_deref(),
            from_a_page: t.from_a_page,
            bearer: t.bearer.as_deref(),
            peer: peer.ip(),
            local,
        };
        (endpoint, decide(&asked, &served.config.admin))
    });
    match verdict {
        Some((_, Verdict::Refuse(status, why))) => {
            let challenge: &[(&str, &str)] = match status {
                401 => &[("WWW-Authenticate", "Bearer")],
                _ => &[],
            };
            crate::debug!(
                "admin plane: {} {} from {peer}: {status} {why}",
                t.method,
                t.path
            );
            write_response(&mut out, status, challenge, why, true)
        }
        Some((Endpoint::Command, _)) => key_command(&mut out, &served, &t.path),
        Some((Endpoint::Metrics, _)) => metrics_response(&mut out, &served, true),
        Some((Endpoint::Health, Verdict::Serve { full })) => {
            health_response(&mut out, &served, &t.path, full)
        }
        Some((Endpoint::Usage, _)) => usage_response(&mut out, &served),
        None => write_response(
            &mut out,
            404,
            &[],
            "GET /metrics, /health or /usage; POST /keys/<name>/disable or /enable",
            true,
        ),
    }
    let _ = w.write_all(out).await;
    w.shutdown().await;
}

/// `GET /metrics`: 200 with the Prometheus text.
pub fn metrics_response(out: &mut Vec<u8>, served: &Served, full: bool) {
    let generations = &served.core.generations;
    let first = &served.chains[0];
    let scrape = crate::metrics::Scrape {
        stats: &generations.stats,
        io_uring: generations.io_uring,
        admission: &first.admission.shared,
        reloads: generations.outcome(),
        chains: served
            .chains
            .iter()
            .map(|w| (w.name.as_str(), &**w.pool.health(), w.pool.nodes()))
            .collect(),
        keys: if full {
            generations.usage.all()
        } else {
            Vec::new()
        },
        cluster: generations.cluster.as_ref().map(|c| c.scrape()),
    };
    let body = crate::metrics::render(&scrape, full);
    response::write(
        out,
        200,
        &[],
        Some(response::PROMETHEUS),
        body.as_bytes(),
        true,
    );
}

/// `GET /usage` (metrics listener only): each API key's usage as JSON, by
/// name, for billing (see [`crate::policy::report::report`]).
pub fn usage_response(out: &mut Vec<u8>, served: &Served) {
    let keys = served.keys.as_deref();
    let limits = |name: &str| {
        keys.and_then(|k| k.named(name))
            .map(|k| (k.spec.quota, k.spec.rate, k.spec.disabled))
    };
    let generations = &served.core.generations;
    let cluster = generations.cluster.is_some();
    let body = crate::policy::report::report(&generations.usage, &limits, cluster);
    fresh_json(out, 200, &body);
}

/// A JSON answer that is never to be cached (a state read now).
fn fresh_json(out: &mut Vec<u8>, status: u16, body: &str) {
    response::write_json(
        out,
        status,
        &[("Cache-Control", "no-store")],
        body.as_bytes(),
        true,
    );
}

/// `POST /keys/<name>/disable` (or `/enable`), metrics listener only: the
/// key's sessions close (1008 "key revoked") within a second and its next
/// connection gets 401, here and, with `[cluster]`, on every gateway of the
/// cluster (kept in Redis: one that starts later knows it too). Without a
/// cluster it holds on this gateway until it restarts.
pub fn key_command(out: &mut Vec<u8>, served: &Served, path: &str) {
    let rest = &path["/keys/".len()..];
    let (name, disable) = match rest.rsplit_once('/') {
        Some((n, "disable")) => (n, true),
        Some((n, "enable")) => (n, false),
        _ => {
            return write_response(out, 404, &[], "POST /keys/<name>/disable or /enable", true);
        }
    };
    let Some(key) = served.keys.as_deref().and_then(|k| k.named(name)) else {
        return write_response(out, 404, &[], "no key has that name", true);
    };
    let command = if disable {
        crate::cluster::Command::Disable(name.to_string())
    } else {
        crate::cluster::Command::Enable(name.to_string())
    };
    match &served.core.generations.cluster {
        Some(c) => c.ask(&key.usage, command),
        None => key.usage.set_cluster_disabled(disable),
    }
    crate::info!(
        "key {name} {} by POST /keys/{name}/{}",
        if disable { "disabled" } else { "enabled" },
        if disable { "disable" } else { "enable" }
    );
    let body = format!(r#"{{"key":"{}","disabled":{disable}}}"#, json_text(name));
    fresh_json(out, 200, &body);
}

/// `GET /health[?chain=NAME]`: 200 when every chain (or that one) has a
/// node up, else 503.
pub fn health_response(out: &mut Vec<u8>, served: &Served, path: &str, full: bool) {
    let only = path
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("chain=")));
    let chains: Vec<_> = served
        .chains
        .iter()
        .map(|w| (w.name.as_str(), &*w.pool))
        .collect();
    let reloads = served.core.generations.outcome();
    let (status, mut body) = health_report(&chains, only, reloads, full);
    // With [cluster]: whether Redis answers (down: still serving, on a local
    // share of each budget) and the gateways seen alive.
    if let (Some(c), Some(end)) = (&served.core.generations.cluster, body.rfind('}')) {
        body.insert_str(
            end,
            &format!(
                r#","cluster":{{"redis":"{}","instances":{},"sync_failures":{},"problems":[{}]}}"#,
                if c.up() { "up" } else { "degraded" },
                c.instances(),
                c.failures(),
                c.problems()
                    .iter()
                    .map(|p| format!("\"{}\"", json_text(p)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        );
    }
    fresh_json(out, status, &body);
}

/// `/health`, with or without a query.
pub fn is_health(path: &str) -> bool {
    path == "/health" || path.starts_with("/health?")
}
