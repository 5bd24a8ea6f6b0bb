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

use super::{
    convert_server, flatten, has, has_return_https, listen_addr, write_nodes, Directive, Out,
};

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
