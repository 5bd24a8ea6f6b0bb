//! A whole nginx configuration (its includes in place) converted: the
//! upstreams and rate zones it declares, each server block that proxies.

use std::collections::BTreeMap;

use super::out::Imported;
use super::out::Out;
use super::servers::{self, convert_server};
use super::syntax::*;

/// Directives that restrict who reaches a location: ringway has no rule of
/// the kind (its keys and admission are others), so a location they guard
/// would be open to everyone after the conversion.
const ACCESS: &[&str] = &[
    "allow",
    "deny",
    "auth_basic",
    "auth_request",
    "satisfy",
    "limit_except",
];

/// The access rules on the way to each proxying block: `http`'s, a
/// server's, a location's own (and its enclosing locations').
fn guards<'a>(block: &'a [Directive], outer: &[&'a Directive], out: &mut Vec<&'a Directive>) {
    let mut here: Vec<&Directive> = outer.to_vec();
    here.extend(block.iter().filter(|d| ACCESS.contains(&d.name.as_str())));
    if block.iter().any(|d| d.name == "proxy_pass") {
        for r in &here {
            if !out.iter().any(|o| std::ptr::eq(*o, *r)) {
                out.push(r);
            }
        }
    }
    for d in block {
        if let (Some(b), "http" | "server" | "location") = (&d.block, d.name.as_str()) {
            guards(b, &here, out);
        }
    }
}

/// Convert a whole configuration (its includes already in place): one
/// server block proxying on one location as a single-pool file, several
/// (or several locations) as a chain each. A proxied location guarded by
/// an access rule fails the conversion (naming the rule's file and line)
/// unless `allow_open`: then each such rule gets a warning in the notes.
pub(super) fn convert(
    tree: &[Directive],
    notes: Vec<String>,
    allow_open: bool,
) -> Result<Imported, String> {
    let mut guarded = Vec::new();
    guards(tree, &[], &mut guarded);
    let mut notes = notes;
    for rule in guarded {
        let what = format!("`{} {}`", rule.name, rule.args.join(" "));
        if !allow_open {
            return Err(format!(
                "{}: {what} restricts who may reach a proxied location, and ringway has no such rule: converted, that location would be open to everyone; restrict it with [keys] or [admission] instead, or convert anyway with `ringway import-nginx --allow-open FILE`",
                rule.place()
            ));
        }
        notes.push(format!(
            "warning: {}: {what}: its location is open to everyone in the converted file (--allow-open)",
            rule.place()
        ));
    }
    let mut all = Vec::new();
    flatten(tree, &mut all);
    let upstreams: BTreeMap<String, &Directive> = all
        .iter()
        .filter(|d| d.name == "upstream" && d.block.is_some())
        .filter_map(|d| Some((d.args.first()?.clone(), *d)))
        .collect();
    let zones: BTreeMap<String, (f64, String)> = all
        .iter()
        .filter(|d| d.name == "limit_req_zone")
        .filter_map(|d| {
            let key = d.args.first()?.clone();
            let zone = arg_value(&d.args, "zone=")?.split(':').next()?.to_string();
            Some((zone, (rate(arg_value(&d.args, "rate=")?)?, key)))
        })
        .collect();
    let servers: Vec<&Directive> = all
        .iter()
        .copied()
        .filter(|d| d.name == "server" && d.block.is_some())
        .collect();
    let mut out = Out {
        notes,
        ..Out::default()
    };
    if servers::proxied(&servers) > 1 {
        servers::convert(&servers, &upstreams, &zones, &mut out)?;
        note_globals(&all, &mut out);
        return Ok(out.finish());
    }
    // The server that proxies with TLS, else the first that proxies.
    let server = servers
        .iter()
        .filter(|s| has(s, "proxy_pass"))
        .find(|s| has(s, "ssl_certificate"))
        .or_else(|| servers.iter().find(|s| has(s, "proxy_pass")))
        .ok_or("no server block with a proxy_pass to a node")?;
    convert_server(server, &upstreams, &zones, &mut out);
    for s in &servers {
        if !std::ptr::eq(*s, *server) {
            let listen = s
                .block
                .as_ref()
                .and_then(|b| b.iter().find(|d| d.name == "listen"));
            match listen.and_then(|l| l.args.first()) {
                Some(l) if !has(s, "proxy_pass") && has_return_https(s) => {
                    out.redirect = Some(listen_addr(l))
                }
                Some(l) => out.note(format!(
                    "server listening on {l}: only one server block is converted"
                )),
                None => out.note("another server block: only one is converted".into()),
            }
        }
    }
    note_globals(&all, &mut out);
    Ok(out.finish())
}

/// What the `http`, `events` and main contexts say that ringway does otherwise.
fn note_globals(all: &[&Directive], out: &mut Out) {
    for d in all {
        match d.name.as_str() {
            "http" | "server" | "upstream" | "events" | "limit_req_zone" | "limit_conn_zone"
            | "location" => {}
            "worker_processes" => out
                .note("worker_processes: ringway runs one worker per core (server.workers)".into()),
            "worker_connections" | "worker_rlimit_nofile" => out.note(format!(
                "{}: connection caps are admission.max_connections",
                d.name
            )),
            "include" => out.note(format!(
                "include {}: not followed (convert the file: ringway import-nginx /etc/nginx/nginx.conf)",
                d.args.join(" ")
            )),
            "default_type" | "sendfile" | "keepalive_timeout" | "access_log"
            | "error_log" | "pid" | "user" => out.note(format!(
                "{}: not needed (ringway logs with log.access and log.format)",
                d.name
            )),
            _ => {}
        }
    }
}
