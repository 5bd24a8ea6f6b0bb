//! `ringway import-nginx FILE`: an nginx configuration in front of nodes,
//! as a ringway config. Sans-io: text in, the TOML and the notes out.
//!
//! Carried over: `listen`, `ssl_certificate(_key)`, `proxy_pass` (a URL, or
//! an `upstream {}` block with several servers, `weight`, `backup`),
//! `limit_req_zone`/`limit_req` (rate, burst, key), `limit_conn`,
//! `proxy_read_timeout`. Everything else is listed in the notes with the
//! reason it is not carried over (what ringway does instead, or why rustls
//! has no such knob).

use std::collections::BTreeMap;
use std::fmt::Write;

mod include;
mod servers;

pub use include::import_file;

/// One directive: its name, arguments, and block if it has one.
#[derive(Debug, Clone, PartialEq)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Option<Vec<Directive>>,
}

/// The converted config (TOML) and the notes on what was not carried over.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<String>,
}

/// Convert nginx configuration text. An error when there is no `server`
/// block that proxies to a node.
pub fn import(text: &str) -> Result<Imported, String> {
    convert(&parse(text)?, Vec::new())
}

/// The directives of one file's text.
fn parse(text: &str) -> Result<Vec<Directive>, String> {
    let tokens = tokenize(text)?;
    let mut at = 0;
    parse_block(&tokens, &mut at, false)
}

/// Convert a whole configuration (its includes already in place): one
/// server block proxying on one location as a single-pool file, several
/// (or several locations) as a chain each.
fn convert(tree: &[Directive], notes: Vec<String>) -> Result<Imported, String> {
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

#[derive(Default)]
struct Out {
    listen: Option<String>,
    redirect: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    nodes: Vec<(String, Option<u32>)>,
    rate: Option<(f64, Option<f64>)>,
    trusted_hops: Option<usize>,
    per_ip: Option<u64>,
    idle_s: Option<u64>,
    notes: Vec<String>,
    /// `[[chain]]` tables, when several servers or locations proxy.
    chains: String,
}

impl Out {
    fn note(&mut self, n: String) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    fn finish(self) -> Imported {
        let mut t =
            String::from("# Converted from an nginx configuration by `ringway import-nginx`.\n");
        t.push_str("# Every key: ringway.example.toml. Check with `ringway --check --config FILE`.\n\n[server]\n");
        let _ = writeln!(
            t,
            "listen = {:?}",
            self.listen.as_deref().unwrap_or("0.0.0.0:443")
        );
        if let Some(r) = &self.redirect {
            let _ = writeln!(
                t,
                "# nginx's `return 301 https://...` server\nredirect_listen = {r:?}"
            );
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let _ = writeln!(t, "\n[tls]\ncert = {c:?}\nkey = {k:?}");
            }
            _ => t.push_str(
                "\n[tls]\n# no ssl_certificate: a self-signed certificate is made at start\n",
            ),
        }
        if let Some(s) = self.idle_s {
            let _ = writeln!(t, "\n[limits]\n# proxy_read_timeout\nidle_timeout_s = {s}");
        }
        self.write_admission(&mut t, "\n[admission]");
        write_nodes(&mut t, "node", &self.nodes);
        t.push_str(&self.chains);
        Imported {
            toml: t,
            notes: self.notes,
        }
    }
}

impl Out {
    /// The rate and connection limits as an admission table named `table`
    /// (`[admission]`, `[chain.admission]`), if there are any.
    fn write_admission(&self, t: &mut String, table: &str) {
        if self.rate.is_none() && self.per_ip.is_none() {
            return;
        }
        let _ = writeln!(t, "{table}");
        if let Some((rate, burst)) = self.rate {
            let _ = writeln!(t, "# limit_req: every JSON-RPC call counts, inside WebSocket sessions too\nrate = {rate}");
            if let Some(b) = burst {
                let _ = writeln!(t, "burst = {b}");
            }
        }
        if let Some(h) = self.trusted_hops {
            let _ = writeln!(t, "# the zone was keyed by X-Forwarded-For: believe one proxy hop\ntrusted_proxy_hops = {h}");
        }
        if let Some(n) = self.per_ip {
            let _ = writeln!(t, "# limit_conn\nmax_connections_per_ip = {n}");
        }
    }
}

/// `[[node]]` (or `[[chain.node]]`) tables.
fn write_nodes(t: &mut String, table: &str, nodes: &[(String, Option<u32>)]) {
    for (url, weight) in nodes {
        let _ = write!(t, "\n[[{table}]]\nurl = {url:?}\n");
        if let Some(w) = weight {
            let _ = writeln!(t, "weight = {w}");
        }
    }
}

fn convert_server(
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

fn has(server: &Directive, name: &str) -> bool {
    let mut inner = Vec::new();
    flatten(
        server.block.as_ref().map_or(&[][..], Vec::as_slice),
        &mut inner,
    );
    inner.iter().any(|d| d.name == name)
}

fn has_return_https(server: &Directive) -> bool {
    let mut inner = Vec::new();
    flatten(
        server.block.as_ref().map_or(&[][..], Vec::as_slice),
        &mut inner,
    );
    inner
        .iter()
        .any(|d| d.name == "return" && d.args.iter().any(|a| a.starts_with("https://")))
}

/// `443` -> `0.0.0.0:443`; `[::]:443` and `127.0.0.1:8443` as they are.
fn listen_addr(l: &str) -> String {
    if l.chars().all(|c| c.is_ascii_digit()) {
        format!("0.0.0.0:{l}")
    } else {
        l.to_string()
    }
}

/// `2r/s` -> 2.0, `30r/m` -> 0.5.
fn rate(r: &str) -> Option<f64> {
    let (n, unit) = r.split_once("r/")?;
    let n: f64 = n.parse().ok()?;
    match unit {
        "s" => Some(n),
        "m" => Some(n / 60.0),
        _ => None,
    }
}

/// nginx times: `60`, `60s`, `5m`, `1h`, in seconds.
fn seconds(t: &str) -> Option<u64> {
    let (n, mul) = match t.char_indices().last()? {
        (i, 's') => (&t[..i], 1),
        (i, 'm') => (&t[..i], 60),
        (i, 'h') => (&t[..i], 3600),
        _ => (t, 1),
    };
    n.parse::<u64>().ok().map(|n| n * mul)
}

fn arg_value<'a>(args: &'a [String], prefix: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(prefix))
}

fn flatten<'a>(block: &'a [Directive], out: &mut Vec<&'a Directive>) {
    for d in block {
        out.push(d);
        if let Some(b) = &d.block {
            flatten(b, out);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    End,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '#' => while chars.next().is_some_and(|c| c != '\n') {},
            '{' | '}' | ';' => {
                chars.next();
                out.push(match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    _ => Token::End,
                });
            }
            '"' | '\'' => {
                chars.next();
                let mut w = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => w.extend(chars.next()),
                        Some(q) if q == c => break,
                        Some(ch) => w.push(ch),
                        None => return Err("a quoted string is not closed".into()),
                    }
                }
                out.push(Token::Word(w));
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            _ => {
                let mut w = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() || matches!(ch, '{' | '}' | ';' | '"' | '\'') {
                        break;
                    }
                    w.push(ch);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

fn parse_block(tokens: &[Token], at: &mut usize, nested: bool) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    while *at < tokens.len() {
        let t = &tokens[*at];
        *at += 1;
        match t {
            // The documentation's placeholder for "the rest of your block".
            Token::Word(w) if w == "(...)" => {}
            Token::Word(w) => words.push(w.clone()),
            Token::End | Token::Open => {
                if words.is_empty() {
                    return Err("a `;` or `{` without a directive".into());
                }
                let name = words.remove(0);
                let block = match t {
                    Token::Open => Some(parse_block(tokens, at, true)?),
                    _ => None,
                };
                out.push(Directive {
                    name,
                    args: std::mem::take(&mut words),
                    block,
                });
            }
            Token::Close if nested => {
                if !words.is_empty() {
                    return Err(format!("`{}` is not ended by `;`", words.join(" ")));
                }
                return Ok(out);
            }
            Token::Close => return Err("a `}` without its `{`".into()),
        }
    }
    if nested {
        return Err("a `{` is not closed".into());
    }
    if !words.is_empty() {
        return Err(format!("`{}` is not ended by `;`", words.join(" ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_000: &str = r#"
server {
        server_name rpc.example.com;
        root /var/www/html;
        index index.html;
        location / {
          try_files $uri $uri/ =404;
          proxy_buffering off;
          proxy_pass http://localhost:9944;
          proxy_set_header X-Real-IP $remote_addr;
          proxy_set_header Host $host;
          proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
          proxy_http_version 1.1;
          proxy_set_header Upgrade $http_upgrade;
          proxy_set_header Connection "upgrade";
        }
        listen [::]:443 ssl ipv6only=on;
        listen 443 ssl;
        ssl_certificate /etc/letsencrypt/live/rpc.example.com/fullchain.pem;
        ssl_certificate_key /etc/letsencrypt/live/rpc.example.com/privkey.pem;
        ssl_session_cache shared:cache_nginx_SSL:1m;
        ssl_session_timeout 1440m;
        ssl_protocols TLSv1 TLSv1.1 TLSv1.2;
        ssl_prefer_server_ciphers on;
        ssl_ciphers "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256";
        ssl_dhparam /etc/ssl/certs/dhparam.pem;
}
"#;

    #[test]
    fn the_polkadot_wiki_server_block_converts() {
        let i = import(SEED_000).unwrap();
        assert!(i.toml.contains("listen = \"0.0.0.0:443\""), "{}", i.toml);
        assert!(i
            .toml
            .contains("cert = \"/etc/letsencrypt/live/rpc.example.com/fullchain.pem\""));
        assert!(i
            .toml
            .contains("key = \"/etc/letsencrypt/live/rpc.example.com/privkey.pem\""));
        assert!(i.toml.contains("[[node]]\nurl = \"ws://localhost:9944\""));
        let notes = i.notes.join("\n");
        for directive in [
            "ssl_ciphers",
            "ssl_dhparam",
            "TLSv1 and TLSv1.1 are not offered",
            "proxy_set_header",
            "try_files",
            "server_name",
        ] {
            assert!(notes.contains(directive), "{directive}: {notes}");
        }
        let file: crate::config::FileConfig = toml::from_str(&i.toml).unwrap();
        assert_eq!(
            file.tls.cert,
            "/etc/letsencrypt/live/rpc.example.com/fullchain.pem"
        );
    }

    #[test]
    fn upstream_pools_rate_limits_and_timeouts_convert() {
        let conf = r#"
http {
  limit_req_zone $http_x_forwarded_for zone=rpc:10m rate=120r/m;
  limit_conn_zone $binary_remote_addr zone=perip:10m;
  upstream nodes {
    server 10.0.0.11:9944 weight=3;
    server 10.0.0.12:9944;
    server 10.0.0.13:9944 backup;
  }
  server {
    listen 80;
    return 301 https://$host$request_uri;
  }
  server {
    listen 8443 ssl;
    ssl_certificate /c.pem; ssl_certificate_key /k.pem;
    location /rpc {
      limit_req zone=rpc burst=5 nodelay;
      limit_conn perip 50;
      proxy_read_timeout 2m;
      proxy_pass http://nodes/;
    }
  }
}"#;
        let i = import(conf).unwrap();
        let file: crate::config::FileConfig = toml::from_str(&i.toml).unwrap();
        assert_eq!(file.server.listen, "0.0.0.0:8443");
        assert_eq!(file.server.redirect_listen, "0.0.0.0:80");
        assert_eq!((file.admission.rate, file.admission.burst), (2.0, 5.0));
        assert_eq!(file.admission.trusted_proxy_hops, 1);
        assert_eq!(file.admission.max_connections_per_ip, 50);
        assert_eq!(file.limits.idle_timeout_s, 120);
        let urls: Vec<_> = file
            .node
            .iter()
            .map(|n| (n.url.as_str(), n.weight))
            .collect();
        assert_eq!(
            urls,
            [
                ("ws://10.0.0.11:9944/", Some(3)),
                ("ws://10.0.0.12:9944/", None),
                ("ws://10.0.0.13:9944/", None)
            ]
        );
        let notes = i.notes.join("\n");
        assert!(
            notes.contains("backup")
                && notes.contains("nodelay")
                && notes.contains("location /rpc"),
            "{notes}"
        );
    }

    #[test]
    fn broken_configs_say_what_is_wrong() {
        assert!(import("server { listen 443")
            .unwrap_err()
            .contains("not closed"));
        assert!(import("}").unwrap_err().contains("without its"));
        assert!(import("events {}").unwrap_err().contains("no server block"));
        assert!(import("server { listen \"443 }")
            .unwrap_err()
            .contains("quoted"));
    }
}
