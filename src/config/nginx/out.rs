//! What a conversion writes: the ringway configuration's tables and the
//! notes on what was not carried over.

use std::fmt::Write;

/// The converted config (TOML) and the notes on what was not carried over.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<String>,
}

#[derive(Default)]
pub(super) struct Out {
    pub(super) listen: Option<String>,
    pub(super) redirect: Option<String>,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) nodes: Vec<(String, Option<u32>)>,
    pub(super) rate: Option<(f64, Option<f64>)>,
    pub(super) trusted_hops: Option<usize>,
    pub(super) per_ip: Option<u64>,
    pub(super) idle_s: Option<u64>,
    pub(super) notes: Vec<String>,
    /// `[[chain]]` tables, when several servers or locations proxy.
    pub(super) chains: String,
}

impl Out {
    pub(super) fn note(&mut self, n: String) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    pub(super) fn finish(self) -> Imported {
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
    pub(super) fn write_admission(&self, t: &mut String, table: &str) {
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
pub(super) fn write_nodes(t: &mut String, table: &str, nodes: &[(String, Option<u32>)]) {
    for (url, weight) in nodes {
        let _ = write!(t, "\n[[{table}]]\nurl = {url:?}\n");
        if let Some(w) = weight {
            let _ = writeln!(t, "weight = {w}");
        }
    }
}
