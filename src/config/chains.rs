//! Several chains behind one listener: which chain a request is for, from
//! its `Host` (and the TLS server name it came with) and its path, the way
//! nginx picks a `server` by `server_name` and then a `location` by prefix.
//!
//! Sans-io: names and paths in, a chain's index (or the refusal) out.
//!
//! - A host pattern is an exact name (`rpc.example.com`), a leading
//!   wildcard (`*.example.com`: any name below it, at any depth, as
//!   nginx's), or nginx's `.example.com` (the name itself and any below).
//!   A chain with no host names answers any host.
//! - The host decides the group of chains first: exact names, then the
//!   longest wildcard, then the chains that answer any host. Within the
//!   group, the longest path prefix that matches at a `/` (or `?`) border
//!   wins; a chain without a prefix matches every path. Nothing matches:
//!   404, never another chain.
//! - A request whose `Host` picks another group than the TLS server name
//!   of its connection gets 421 (RFC 9110 §15.5.20): a client cannot
//!   reach one chain through another's certificate.

use std::path::PathBuf;
use std::sync::Arc;

use super::Config;

/// One chain: its name, what it answers, its certificate, and the
/// settings its sessions read (nodes, routing, health, cache, admission:
/// each defaulting to the file's top-level values).
#[derive(Debug, Clone)]
pub struct Chain {
    /// Stable across reloads: logs, `/health`, metric labels, keys.
    pub name: String,
    /// Lower-case host patterns; empty: any host.
    pub hosts: Vec<String>,
    /// Path prefix (`/polkadot`), stripped before the node sees the
    /// request; empty: every path.
    pub path: String,
    /// This chain's certificate and key (served by SNI), if it has its own.
    pub cert: Option<(PathBuf, PathBuf)>,
    pub config: Arc<Config>,
}

/// Why no chain takes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No chain answers this host and path: 404.
    NoChain,
    /// The host names another group than the connection's TLS server name: 421.
    Misdirected,
}

impl Miss {
    pub fn status(self) -> u16 {
        match self {
            Miss::NoChain => 404,
            Miss::Misdirected => 421,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Miss::NoChain => "no chain is served at this host name and path",
            Miss::Misdirected => {
                "this host name is not served on this TLS connection (its server name differs): connect to it by its own name"
            }
        }
    }
}

/// A host pattern as the configuration may write it: `name`, `*.name`,
/// `.name`; `None` if it is not one.
pub fn host_pattern(p: &str) -> Option<String> {
    let p = p.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = p
        .strip_prefix("*.")
        .or_else(|| p.strip_prefix('.'))
        .unwrap_or(&p);
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    // An IPv6 literal in brackets is a name too (a client by address).
    let ipv6 = p.starts_with('[')
        && p.ends_with(']')
        && p[1..p.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    (ok || ipv6).then_some(p)
}

/// The name in a `Host` field or a TLS server name: without its port and
/// a trailing dot, lower case. `None`: not a host name at all.
pub fn host_name(host: &[u8]) -> Option<String> {
    let host = std::str::from_utf8(host).ok()?.trim();
    let name = if host.starts_with('[') {
        // [v6]:port
        &host[..=host.find(']')?]
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => host,
        }
    };
    let name = name.trim_end_matches('.');
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// How well `pattern` names `host`: exact above every wildcard, a longer
/// wildcard above a shorter one; `None`: it does not.
pub fn rank(pattern: &str, host: &str) -> Option<usize> {
    if let Some(base) = pattern.strip_prefix("*.") {
        return (host.len() > base.len() + 1
            && host.ends_with(base)
            && host.as_bytes()[host.len() - base.len() - 1] == b'.')
            .then_some(1 + base.len());
    }
    if let Some(base) = pattern.strip_prefix('.') {
        let below = host.len() > base.len() + 1
            && host.ends_with(base)
            && host.as_bytes()[host.len() - base.len() - 1] == b'.';
        return (below || host == base).then_some(1 + base.len());
    }
    (pattern == host).then_some(usize::MAX)
}

/// The rank of the group of chains that answer `host` (0: the chains for
/// any host), or `None` when no chain does.
fn group(chains: &[Chain], host: Option<&str>) -> Option<usize> {
    chains.iter().filter_map(|c| chain_rank(c, host)).max()
}

fn chain_rank(c: &Chain, host: Option<&str>) -> Option<usize> {
    if c.hosts.is_empty() {
        return Some(0);
    }
    let host = host?;
    c.hosts.iter().filter_map(|p| rank(p, host)).max()
}

/// Whether `path` is under `prefix`, at a segment border.
fn under(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// The chain for a request (`host`: its `Host` name; `sni`: its
/// connection's TLS server name, if any), and the path its node sees.
pub fn select<'p>(
    chains: &[Chain],
    host: Option<&str>,
    sni: Option<&str>,
    path: &'p str,
) -> Result<(usize, std::borrow::Cow<'p, str>), Miss> {
    let by_host = group(chains, host).ok_or(Miss::NoChain)?;
    if let Some(sni) = sni {
        // The same group of chains, by the same rank, or not this connection's.
        let same = group(chains, Some(sni)).is_some_and(|by_sni| {
            by_sni == by_host
                && chains.iter().all(|c| {
                    (chain_rank(c, Some(sni)) == Some(by_sni))
                        == (chain_rank(c, host) == Some(by_host))
                })
        });
        if !same {
            return Err(Miss::Misdirected);
        }
    }
    let (i, c) = chains
        .iter()
        .enumerate()
        .filter(|(_, c)| chain_rank(c, host) == Some(by_host) && under(&c.path, path))
        .max_by_key(|(_, c)| c.path.len())
        .ok_or(Miss::NoChain)?;
    if c.path.is_empty() {
        return Ok((i, path.into()));
    }
    let rest = &path[c.path.len()..];
    Ok((
        i,
        if rest.starts_with('/') {
            rest.into()
        } else {
            format!("/{rest}").into()
        },
    ))
}

/// The keys a `[[chain]]` table may have: its own, and the sections whose
/// keys it overrides (each key it does not name keeps the top-level value).
const CHAIN_KEYS: &[&str] = &["name", "hosts", "path", "kind", "cert", "key", "node"];
const SECTIONS: &[&str] = &["routing", "health", "cache", "admission", "pool"];

/// Read the `[[chain]]` tables of `file`: each chain's settings are the
/// file's with its own nodes and its sections laid over the top-level ones.
pub(super) fn read(
    file: &super::FileConfig,
    tables: &[toml::Table],
    source: &Option<PathBuf>,
    tls: &super::TlsMode,
    detect: &dyn Fn(&[super::NodeConfig]) -> Option<crate::route::Flavour>,
) -> Result<Vec<Chain>, super::ConfigError> {
    let origin = source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "command line".into());
    let mut chains: Vec<Chain> = Vec::new();
    for (k, t) in tables.iter().enumerate() {
        let err = |key: &str, message: String| super::ConfigError {
            origin: origin.clone(),
            key: format!("chain[{k}].{key}"),
            message,
        };
        if let Some(unknown) = t
            .keys()
            .find(|key| !CHAIN_KEYS.contains(&key.as_str()) && !SECTIONS.contains(&key.as_str()))
        {
            return Err(err(
                unknown,
                format!(
                    "unknown key; a chain has {}, and the sections {}",
                    CHAIN_KEYS.join(", "),
                    SECTIONS.join(", ")
                ),
            ));
        }
        let text = |key: &str| -> Result<Option<String>, super::ConfigError> {
            match t.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(err(key, "must be a string".into())),
            }
        };
        let name = text("name")?.ok_or_else(|| {
            err(
                "name",
                "every chain needs a name (polkadot, kusama, ...)".into(),
            )
        })?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(err(
                "name",
                format!("`{name}`: letters, digits, `-`, `_` and `.` only"),
            ));
        }
        if chains.iter().any(|c| c.name == name) {
            return Err(err("name", format!("`{name}` names two chains")));
        }
        let hosts: Vec<String> = match t.get("hosts") {
            None => Vec::new(),
            Some(toml::Value::String(h)) => vec![h.clone()],
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| err("hosts", "must be strings".into()))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(err("hosts", "must be a list of host names".into())),
        };
        let hosts = hosts
            .iter()
            .map(|h| {
                host_pattern(h).ok_or_else(|| {
                    err(
                        "hosts",
                        format!("`{h}` is not a host name, `*.name` or `.name`"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path = text("path")?.unwrap_or_default();
        let path = path.trim_end_matches('/').to_string();
        if !path.is_empty() && (!path.starts_with('/') || path.contains(['?', '#', ' '])) {
            return Err(err(
                "path",
                format!("`{path}` is not a path prefix like /polkadot"),
            ));
        }
        if let Some(other) = chains.iter().find(|c| {
            c.path == path
                && (c.hosts.is_empty() && hosts.is_empty()
                    || c.hosts.iter().any(|h| hosts.contains(h)))
        }) {
            return Err(err(
                "hosts",
                format!("chain `{}` already answers this host and path", other.name),
            ));
        }
        let cert = match (text("cert")?, text("key")?) {
            (None, None) => None,
            (Some(_), Some(_)) if matches!(tls, super::TlsMode::Off) => {
                return Err(err("cert", "TLS is off (tls.enabled = false)".into()))
            }
            (Some(_), Some(_)) if hosts.is_empty() => {
                return Err(err(
                    "cert",
                    "a chain's own certificate needs its hosts (clients get it by the name they ask for)".into(),
                ))
            }
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (Some(_), None) => return Err(err("key", "cert is set but key is not".into())),
            (None, Some(_)) => return Err(err("cert", "key is set but cert is not".into())),
        };
        // The chain's own file: the top-level one, its nodes, its sections.
        let mut own = file.clone();
        own.node = match t.get("node") {
            None => {
                return Err(err(
                    "node",
                    "a chain needs its nodes ([[chain.node]] with a url)".into(),
                ))
            }
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| err("node", e.message().to_string()))?,
        };
        overlay(&mut own.routing, t.get("routing"), &err, "routing")?;
        overlay(&mut own.health, t.get("health"), &err, "health")?;
        overlay(&mut own.cache, t.get("cache"), &err, "cache")?;
        overlay(&mut own.admission, t.get("admission"), &err, "admission")?;
        overlay(&mut own.pool, t.get("pool"), &err, "pool")?;
        let kind = text("kind")?;
        if let Some(kind) = kind.as_deref().filter(|k| *k != "auto") {
            own.routing.chain = kind.to_string();
        }
        let resolve = |own: super::FileConfig| {
            super::Config::resolve_one(own, source.clone()).map_err(|mut e| {
                e.key = match e.key.as_str() {
                    "routing.chain" if t.contains_key("kind") => format!("chain[{k}].kind"),
                    key => format!("chain[{k}].{key}"),
                };
                e
            })
        };
        let mut config = resolve(own.clone())?;
        // No kind given: the nodes tell (a file converted from nginx says nothing).
        if kind.as_deref().map_or(true, |k| k == "auto") {
            if let Some(f) = detect(&config.nodes).filter(|f| *f != config.flavour) {
                crate::info!("chain {name}: its nodes answer as {} nodes", f.name());
                own.routing.chain = f.name().to_string();
                config = resolve(own)?;
            }
        }
        chains.push(Chain {
            name,
            hosts,
            path,
            cert,
            config: Arc::new(config),
        });
    }
    Ok(chains)
}

/// Lay a chain's table over a top-level section, key by key.
fn overlay<T: serde::Serialize + serde::de::DeserializeOwned>(
    section: &mut T,
    over: Option<&toml::Value>,
    err: &dyn Fn(&str, String) -> super::ConfigError,
    name: &str,
) -> Result<(), super::ConfigError> {
    let Some(over) = over else { return Ok(()) };
    let toml::Value::Table(over) = over else {
        return Err(err(name, "must be a table".into()));
    };
    let mut merged = toml::Table::try_from(&*section).map_err(|e| err(name, e.to_string()))?;
    for (k, v) in over {
        merged.insert(k.clone(), v.clone());
    }
    *section = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| err(name, e.message().to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(name: &str, hosts: &[&str], path: &str) -> Chain {
        let file = crate::config::FileConfig::default();
        Chain {
            name: name.into(),
            hosts: hosts.iter().map(|h| host_pattern(h).unwrap()).collect(),
            path: path.into(),
            cert: None,
            config: Arc::new(Config::resolve(file, None).unwrap()),
        }
    }

    fn pick(
        chains: &[Chain],
        host: &str,
        sni: Option<&str>,
        path: &str,
    ) -> Result<(String, String), Miss> {
        let host = host_name(host.as_bytes());
        select(chains, host.as_deref(), sni, path)
            .map(|(i, p)| (chains[i].name.clone(), p.into_owned()))
    }

    #[test]
    fn host_names_lose_their_port_case_and_trailing_dot() {
        assert_eq!(
            host_name(b"RPC.Example.com.:443").as_deref(),
            Some("rpc.example.com")
        );
        assert_eq!(host_name(b"[::1]:8443").as_deref(), Some("[::1]"));
        assert_eq!(host_name(b"127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_name(b"a:b"), None);
        assert_eq!(
            host_pattern("*.Example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(host_pattern("ex*ample.com"), None);
        assert_eq!(host_pattern("*"), None);
    }

    #[test]
    fn exact_names_beat_wildcards_and_wildcards_beat_any_host() {
        let chains = [
            chain("any", &[], ""),
            chain("wild", &["*.example.com"], ""),
            chain("exact", &["dot.example.com"], ""),
            chain("dotted", &[".rpc.io"], ""),
        ];
        let name = |h| pick(&chains, h, None, "/").unwrap().0;
        assert_eq!(name("dot.example.com"), "exact");
        assert_eq!(name("ksm.example.com"), "wild");
        assert_eq!(name("a.b.example.com"), "wild");
        assert_eq!(name("example.com"), "any");
        assert_eq!(name("rpc.io"), "dotted");
        assert_eq!(name("x.rpc.io"), "dotted");
        assert_eq!(name("elsewhere.org"), "any");
    }

    #[test]
    fn paths_pick_within_a_host_at_segment_borders_and_are_stripped() {
        let chains = [
            chain("dot", &["rpc.example.com"], "/polkadot"),
            chain("ksm", &["rpc.example.com"], "/kusama"),
            chain("other", &["other.example.com"], ""),
        ];
        assert_eq!(
            pick(&chains, "rpc.example.com", None, "/polkadot"),
            Ok(("dot".into(), "/".into()))
        );
        assert_eq!(
            pick(&chains, "rpc.example.com", None, "/polkadot/ws?x=1"),
            Ok(("dot".into(), "/ws?x=1".into()))
        );
        assert_eq!(
            pick(&chains, "rpc.example.com", None, "/polkadot?x=1"),
            Ok(("dot".into(), "/?x=1".into()))
        );
        assert_eq!(
            pick(&chains, "rpc.example.com", None, "/kusama/"),
            Ok(("ksm".into(), "/".into()))
        );
        // Never another chain: not a prefix at a border, no such host.
        assert_eq!(
            pick(&chains, "rpc.example.com", None, "/polkadotx"),
            Err(Miss::NoChain)
        );
        assert_eq!(
            pick(&chains, "rpc.example.com", None, "/"),
            Err(Miss::NoChain)
        );
        assert_eq!(
            pick(&chains, "nope.example.com", None, "/polkadot"),
            Err(Miss::NoChain)
        );
        assert_eq!(
            pick(&chains, "other.example.com", None, "/polkadot"),
            Ok(("other".into(), "/polkadot".into()))
        );
    }

    #[test]
    fn a_host_outside_the_connections_server_name_is_misdirected() {
        let chains = [
            chain("dot", &["dot.example.com"], ""),
            chain("ksm", &["ksm.example.com"], ""),
        ];
        assert_eq!(
            pick(&chains, "dot.example.com", Some("dot.example.com"), "/")
                .unwrap()
                .0,
            "dot"
        );
        assert_eq!(
            pick(&chains, "ksm.example.com", Some("dot.example.com"), "/"),
            Err(Miss::Misdirected)
        );
        // A server name no chain has (the default certificate) reaches none.
        assert_eq!(
            pick(&chains, "ksm.example.com", Some("unknown.org"), "/"),
            Err(Miss::Misdirected)
        );
        // One chain for every host: any name on any connection.
        let one = [chain("default", &[], "")];
        assert_eq!(
            pick(&one, "127.0.0.1:8443", Some("localhost"), "/")
                .unwrap()
                .0,
            "default"
        );
    }
}
