//! Several `server` blocks (or several proxying `location`s): a ringway
//! chain for each location that proxies, named after its upstream (or its
//! host name), answering the server's `server_name`s, with the server's
//! certificate (served by SNI) and the location's (or server's) rate limit.
//!
//! The `default_server` (or a server named `_`, or with no name) answers
//! every host, as nginx's default server does; its certificate is the
//! default one. Without one, nginx sends unknown names to the first
//! server: ringway answers them 404 instead, and says so.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::out::{write_nodes, Out};
use super::syntax::*;

/// How many chains the servers make: each proxying location (or a server
/// proxying outside any location).
pub(super) fn proxied(servers: &[&Directive]) -> usize {
    servers.iter().map(|s| locations(s).len()).sum()
}

/// The proxying places of a server: (location path, its directives);
/// `None` for a `proxy_pass` outside any location.
fn locations(server: &Directive) -> Vec<(Option<&Directive>, &str)> {
    let block = server.block.as_deref().unwrap_or_default();
    let mut found: Vec<(Option<&Directive>, &str)> = block
        .iter()
        .filter(|d| d.name == "location" && has(d, "proxy_pass"))
        .map(|d| (Some(d), d.args.last().map(String::as_str).unwrap_or("/")))
        .collect();
    if block.iter().any(|d| d.name == "proxy_pass") {
        found.push((None, "/"));
    }
    found
}

pub(super) fn convert(
    servers: &[&Directive],
    upstreams: &BTreeMap<String, &Directive>,
    zones: &BTreeMap<String, (f64, String)>,
    out: &mut Out,
) -> Result<(), String> {
    let proxying: Vec<&Directive> = servers
        .iter()
        .copied()
        .filter(|s| !locations(s).is_empty())
        .collect();
    let default = proxying
        .iter()
        .position(|s| is_default(s))
        .or_else(|| {
            out.note(
                "no default_server: nginx sends unknown host names to the first server, ringway answers them 404".into(),
            );
            None
        });
    let mut names: Vec<String> = Vec::new();
    let mut tables = String::new();
    for (k, server) in proxying.iter().enumerate() {
        let hosts = if Some(k) == default {
            Vec::new()
        } else {
            host_names(server, out)
        };
        for (location, at) in locations(server) {
            // The server's own directives and this location's alone.
            let mut block: Vec<Directive> = server
                .block
                .as_deref()
                .unwrap_or_default()
                .iter()
                .filter(|d| d.name != "location")
                .cloned()
                .collect();
            block.extend(location.cloned());
            let one = Directive {
                name: "server".into(),
                args: Vec::new(),
                block: Some(block),
                file: server.file.clone(),
                line: server.line,
            };
            let mut c = Out::default();
            convert_server(&one, upstreams, zones, &mut c);
            for n in c.notes.drain(..) {
                // What a single-pool file says of names and paths is not so here.
                if !n.starts_with("server_name ") && !n.starts_with("location ") {
                    out.note(n);
                }
            }
            let path = location_path(location, at, out);
            let name = unique(
                chain_name(location.unwrap_or(server), upstreams, &hosts, &path),
                &names,
            );
            names.push(name.clone());
            if out.listen.is_none() {
                out.listen = c.listen.clone();
            }
            // The default certificate: the default server's, else the first's.
            if out.cert.is_none() && (Some(k) == default || default.is_none()) {
                out.cert = c.cert.clone();
                out.key = c.key.clone();
            }
            out.idle_s = out.idle_s.max(c.idle_s);
            let _ = write!(tables, "\n[[chain]]\nname = {name:?}\n");
            if !hosts.is_empty() {
                let _ = writeln!(tables, "hosts = {hosts:?}");
            }
            if !path.is_empty() {
                let _ = writeln!(tables, "path = {path:?}");
            }
            if let (Some(cert), Some(key), false) = (&c.cert, &c.key, hosts.is_empty()) {
                if c.cert != out.cert {
                    let _ = writeln!(tables, "cert = {cert:?}\nkey = {key:?}");
                }
            }
            c.write_admission(&mut tables, "[chain.admission]");
            write_nodes(&mut tables, "chain.node", &c.nodes);
        }
    }
    // The servers that only send plain HTTP to HTTPS.
    for s in servers {
        if locations(s).is_empty() && has_return_https(s) {
            let listen = s
                .block
                .as_deref()
                .unwrap_or_default()
                .iter()
                .find(|d| d.name == "listen");
            if let Some(l) = listen.and_then(|l| l.args.first()) {
                out.redirect = Some(listen_addr(l));
            }
        }
    }
    let ports: Vec<String> = proxying
        .iter()
        .flat_map(|s| {
            let mut inner = Vec::new();
            flatten(s.block.as_deref().unwrap_or_default(), &mut inner);
            inner
                .into_iter()
                .filter(|d| d.name == "listen")
                .filter_map(|d| d.args.first().map(|a| listen_addr(a)))
                .collect::<Vec<_>>()
        })
        .collect();
    if let Some(other) = ports
        .iter()
        .find(|p| !p.starts_with('[') && Some(*p) != out.listen.as_ref())
    {
        out.note(format!(
            "listen {other}: ringway serves every chain on one listener ({})",
            out.listen.as_deref().unwrap_or("0.0.0.0:443")
        ));
    }
    out.chains = tables;
    Ok(())
}

fn is_default(server: &Directive) -> bool {
    let block = server.block.as_deref().unwrap_or_default();
    block.iter().any(|d| {
        d.name == "listen"
            && d.args
                .iter()
                .any(|a| a == "default_server" || a == "default")
    }) || block
        .iter()
        .any(|d| d.name == "server_name" && d.args.iter().all(|n| n == "_" || n.is_empty()))
        || !block.iter().any(|d| d.name == "server_name")
}

/// A server's names as ringway host patterns (regular expressions and
/// trailing wildcards are named in the notes).
fn host_names(server: &Directive, out: &mut Out) -> Vec<String> {
    let mut hosts = Vec::new();
    for d in server.block.as_deref().unwrap_or_default() {
        if d.name != "server_name" {
            continue;
        }
        for n in &d.args {
            match crate::config::chains::host_pattern(n) {
                _ if n == "_" || n.is_empty() => {}
                Some(h) if !n.starts_with('~') => {
                    if !hosts.contains(&h) {
                        hosts.push(h)
                    }
                }
                _ => out.note(format!(
                    "server_name {n}: ringway takes exact names, `*.name` and `.name` (no regular expressions or trailing wildcards)"
                )),
            }
        }
    }
    hosts
}

/// A location's prefix as a chain's path (`/` and none: every path).
fn location_path(location: Option<&Directive>, at: &str, out: &mut Out) -> String {
    let Some(l) = location else {
        return String::new();
    };
    if l.args.len() > 1 && l.args[0].starts_with('~') {
        out.note(format!(
            "location {}: a regular expression; ringway picks chains by path prefix",
            l.args.join(" ")
        ));
    }
    at.trim_end_matches('/').to_string()
}

/// The chain's name: its upstream's, else its first host's first label,
/// with its path's last part.
fn chain_name(
    place: &Directive,
    upstreams: &BTreeMap<String, &Directive>,
    hosts: &[String],
    path: &str,
) -> String {
    let mut inner = Vec::new();
    flatten(std::slice::from_ref(place), &mut inner);
    let target = inner
        .iter()
        .find(|d| d.name == "proxy_pass")
        .and_then(|d| d.args.first())
        .map(|t| t.split_once("://").map_or(t.as_str(), |(_, r)| r))
        .map(|r| r.split('/').next().unwrap_or(r).to_string());
    let base = match target {
        Some(t) if upstreams.contains_key(&t) => t,
        _ => {
            let host = hosts
                .first()
                .map(|h| h.trim_start_matches("*.").trim_start_matches('.'));
            let label = host.and_then(|h| h.split('.').next()).unwrap_or("default");
            match path.rsplit('/').next().filter(|p| !p.is_empty()) {
                Some(last) if hosts.is_empty() => last.to_string(),
                Some(last) => format!("{label}-{last}"),
                None => label.to_string(),
            }
        }
    };
    base.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn unique(name: String, taken: &[String]) -> String {
    if !taken.contains(&name) {
        return name;
    }
    (2..)
        .map(|i| format!("{name}-{i}"))
        .find(|n| !taken.contains(n))
        .expect("a free name")
}

pub(super) fn convert_server(
    server: &Directive,
    upstreams: &BTreeMap<String, &Directive>,
    zones: &BTreeMap<String, (f64, String)>,
    out: &mut Out,
) {
    let mut inner = Vec::new();
    flatten(server.block.as_ref().expect("a server block"), &mut inner);
    for d in inner {
        let a0 = d.args.first().map(String::as_str).unwrap_or("");
        match d.name.as_str() {
            "listen" => {
                let addr = listen_addr(a0);
                if d.args.iter().any(|a| a == "ssl") || out.listen.is_none() {
                    out.listen = Some(addr);
                }
            }
            "ssl_certificate" => out.cert = Some(a0.to_string()),
            "ssl_certificate_key" => out.key = Some(a0.to_string()),
            "server_name" => out.note(format!(
                "server_name {}: ringway serves whatever host name clients use (one certificate, from tls.cert)",
                d.args.join(" ")
            )),
            "location" if d.args.last().map(String::as_str) != Some("/") => out.note(format!(
                "location {}: ringway proxies every path, and passes the client's path on to the node",
                d.args.join(" ")
            )),
            "location" => {}
            "proxy_pass" => proxy_pass(a0, upstreams, out),
            "proxy_set_header" => out.note(format!(
                "proxy_set_header {}: ringway sends Host, Upgrade, Connection, X-Forwarded-For, X-Real-IP and X-Forwarded-Proto itself",
                d.args.first().cloned().unwrap_or_default()
            )),
            "proxy_http_version" | "proxy_buffering" | "proxy_buffers" | "proxy_buffer_size"
            | "proxy_cache_bypass" => out.note(format!(
                "{}: not needed (ringway relays WebSocket frames as they come, unbuffered)",
                d.name
            )),
            "limit_req" => {
                let zone = arg_value(&d.args, "zone=").unwrap_or_default();
                let burst = arg_value(&d.args, "burst=").and_then(|b| b.parse().ok());
                match zones.get(zone) {
                    Some((rate, key)) => {
                        out.rate = Some((*rate, burst));
                        if key.contains("x_forwarded_for") {
                            out.trusted_hops = Some(1);
                        }
                    }
                    None => out.note(format!("limit_req zone={zone}: no limit_req_zone by that name")),
                }
                if d.args.iter().any(|a| a == "nodelay") {
                    out.note("limit_req nodelay: ringway answers calls over the rate at once (-32005), it never delays them".into());
                }
            }
            "limit_conn" => {
                if let Some(n) = d.args.get(1).and_then(|n| n.parse().ok()) {
                    out.per_ip = Some(n);
                }
            }
            "proxy_read_timeout" => match seconds(a0) {
                Some(s) => out.idle_s = Some(s),
                None => out.note(format!("proxy_read_timeout {a0}: not a time nginx would accept")),
            },
            "ssl_protocols" => out.note(format!(
                "ssl_protocols {}: rustls offers TLS 1.2 and 1.3 only{}",
                d.args.join(" "),
                if d.args.iter().any(|p| p == "TLSv1" || p == "TLSv1.1") {
                    " (TLSv1 and TLSv1.1 are not offered)"
                } else {
                    ""
                }
            )),
            "ssl_ciphers" | "ssl_prefer_server_ciphers" => out.note(format!(
                "{}: rustls offers AEAD suites only (AES-GCM, ChaCha20-Poly1305), in its own order",
                d.name
            )),
            "ssl_dhparam" => out.note("ssl_dhparam: no finite-field Diffie-Hellman in rustls (ECDHE only)".into()),
            "ssl_session_cache" | "ssl_session_timeout" | "ssl_session_tickets" => out.note(format!(
                "{}: ringway resumes sessions with stateless tickets every core opens",
                d.name
            )),
            "try_files" | "root" | "index" => out.note(format!("{}: ringway serves no files", d.name)),
            "return" if d.args.iter().any(|a| a.starts_with("https://")) => {}
            other if !matches!(other, "server") => out.note(format!("{other}: not carried over")),
            _ => {}
        }
    }
}

fn proxy_pass(target: &str, upstreams: &BTreeMap<String, &Directive>, out: &mut Out) {
    let (scheme, rest) = target.split_once("://").unwrap_or(("http", target));
    let ws = if scheme == "https" { "wss" } else { "ws" };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match upstreams.get(host) {
        Some(up) => {
            for s in up
                .block
                .as_ref()
                .expect("filtered")
                .iter()
                .filter(|d| d.name == "server")
            {
                let Some(addr) = s.args.first() else { continue };
                let weight = arg_value(&s.args, "weight=").and_then(|w| w.parse().ok());
                if s.args.iter().any(|a| a == "backup") {
                    out.note(format!(
                        "server {addr} backup: ringway has no standby nodes; it is a node like the others (health checks take failing nodes out)"
                    ));
                }
                let addr = if addr.starts_with("unix:") {
                    addr.clone()
                } else {
                    format!("{ws}://{addr}{path}")
                };
                out.nodes.push((addr, weight));
            }
        }
        None => out.nodes.push((format!("{ws}://{host}{path}"), None)),
    }
}
