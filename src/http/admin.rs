//! The admin plane (the metrics listener's `GET /usage` and `POST
//! /keys/<name>/disable|enable`, and what `/health` shows there): only the
//! operator reaches it, whatever page the operator's browser has open.
//! Sans-io: a request's facts in, a verdict out.
//!
//! - A request that carries an `Origin`, or `Sec-Fetch-Site: cross-site`
//!   (or `same-site`), is a web page's: 403, always. (A body-less POST is a
//!   CORS simple request: without this, any page could revoke every key.)
//! - `Host` must name this listener's own address (the one the client
//!   reached), `localhost`, a loopback address, or a name in
//!   `server.admin_hosts`: else 421 (DNS rebinding would read `/usage`).
//! - With `server.admin_token_file`, `/usage` and `POST /keys/...` need
//!   `Authorization: Bearer <token>` (401 without it; compared in constant
//!   time). Without one, `POST /keys/...` answers only on a loopback
//!   listener.
//! - `/health` shows node URLs in full only to a loopback client or an
//!   authenticated request (with the Host and Origin rules above); others
//!   get each node's public name. `/metrics` is for Prometheus: served to
//!   anyone who reaches the listener (give it a listener Prometheus alone
//!   reaches, and set a token for the rest).

use std::net::IpAddr;

pub use crate::config::AdminConfig;

/// What the admin plane is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Metrics,
    Health,
    Usage,
    /// `POST /keys/<name>/disable|enable`.
    Command,
}

/// One request's facts.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub endpoint: Endpoint,
    pub host: Option<&'a str>,
    /// It carries an `Origin`, or `Sec-Fetch-Site` other than `none`/`same-origin`.
    pub from_a_page: bool,
    /// The `Authorization: Bearer` value, if any.
    pub bearer: Option<&'a str>,
    /// The client's address, and the listener's as the client reached it.
    pub peer: IpAddr,
    pub local: IpAddr,
}

/// What the request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Served; `full`: node URLs in full (`/health`).
    Serve {
        full: bool,
    },
    Refuse(u16, &'static str),
}

/// The host part of a `Host` value (`[::1]:9100` is `::1`, `x:80` is `x`).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether `host` names this listener.
fn own_host(host: Option<&str>, local: IpAddr, cfg: &AdminConfig) -> bool {
    let Some(name) = host.map(host_name) else {
        return false;
    };
    let name = name.to_ascii_lowercase();
    if name == "localhost" || cfg.hosts.iter().any(|h| h.eq_ignore_ascii_case(&name)) {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip == local || ip.is_loopback(),
        Err(_) => false,
    }
}

/// `a == b` in time that depends on their lengths only.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let diff = a
        .iter()
        .zip(b)
        .fold(a.len() ^ b.len(), |d, (x, y)| d | usize::from(x ^ y));
    std::hint::black_box(diff) == 0
}

/// The verdict for `asked` under `cfg`.
pub fn decide(asked: &Asked<'_>, cfg: &AdminConfig) -> Verdict {
    let authed = match (&cfg.token, asked.bearer) {
        (Some(token), Some(b)) => same(token, b),
        _ => false,
    };
    let ours = !asked.from_a_page && own_host(asked.host, asked.local, cfg);
    match asked.endpoint {
        Endpoint::Metrics => Verdict::Serve { full: true },
        Endpoint::Health => Verdict::Serve {
            full: ours && (asked.peer.is_loopback() || authed),
        },
        Endpoint::Usage | Endpoint::Command => {
            if asked.from_a_page {
                return Verdict::Refuse(
                    403,
                    "the admin plane answers no web page (Origin or Sec-Fetch-Site)",
                );
            }
            if !ours {
                return Verdict::Refuse(
                    421,
                    "Host names no address of this listener (add the name to server.admin_hosts)",
                );
            }
            if cfg.token.is_some() && !authed {
                return Verdict::Refuse(
                    401,
                    "Authorization: Bearer <the token of server.admin_token_file>",
                );
            }
            if asked.endpoint == Endpoint::Command
                && cfg.token.is_none()
                && !asked.local.is_loopback()
            {
                return Verdict::Refuse(
                    403,
                    "POST /keys needs server.admin_token_file on a listener others can reach",
                );
            }
            Verdict::Serve { full: true }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(endpoint: Endpoint, host: &str) -> Asked<'_> {
        Asked {
            endpoint,
            host: Some(host),
            from_a_page: false,
            bearer: None,
            peer: "127.0.0.1".parse().unwrap(),
            local: "127.0.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn a_web_page_never_reaches_the_admin_plane() {
        let cfg = AdminConfig::default();
        for e in [Endpoint::Usage, Endpoint::Command] {
            let a = Asked {
                from_a_page: true,
                ..ask(e, "127.0.0.1:9100")
            };
            assert_eq!(
                decide(&a, &cfg),
                Verdict::Refuse(
                    403,
                    "the admin plane answers no web page (Origin or Sec-Fetch-Site)"
                )
            );
        }
        let a = Asked {
            from_a_page: true,
            ..ask(Endpoint::Health, "127.0.0.1:9100")
        };
        assert_eq!(decide(&a, &cfg), Verdict::Serve { full: false });
    }

    #[test]
    fn a_foreign_host_gets_421_and_the_listeners_own_names_pass() {
        let cfg = AdminConfig {
            token: None,
            hosts: vec!["admin.example".into()],
        };
        for host in [
            "127.0.0.1:9100",
            "localhost:9100",
            "[::1]:9100",
            "admin.example",
            "LOCALHOST",
        ] {
            assert_eq!(
                decide(&ask(Endpoint::Usage, host), &cfg),
                Verdict::Serve { full: true },
                "{host}"
            );
        }
        for host in ["evil.example", "evil.example:9100", "10.0.0.9:9100"] {
            assert!(
                matches!(
                    decide(&ask(Endpoint::Usage, host), &cfg),
                    Verdict::Refuse(421, _)
                ),
                "{host}"
            );
        }
        // The address the client reached, on a listener of every address.
        let a = Asked {
            local: "10.0.0.9".parse().unwrap(),
            peer: "10.0.0.2".parse().unwrap(),
            ..ask(Endpoint::Usage, "10.0.0.9:9100")
        };
        assert_eq!(decide(&a, &cfg), Verdict::Serve { full: true });
    }

    #[test]
    fn a_token_is_needed_when_set_and_commands_need_one_off_loopback() {
        let cfg = AdminConfig {
            token: Some("s3cret".into()),
            hosts: Vec::new(),
        };
        assert!(matches!(
            decide(&ask(Endpoint::Command, "127.0.0.1"), &cfg),
            Verdict::Refuse(401, _)
        ));
        let wrong = Asked {
            bearer: Some("s3crex"),
            ..ask(Endpoint::Usage, "127.0.0.1")
        };
        assert!(matches!(decide(&wrong, &cfg), Verdict::Refuse(401, _)));
        let right = Asked {
            bearer: Some("s3cret"),
            ..ask(Endpoint::Command, "127.0.0.1")
        };
        assert_eq!(decide(&right, &cfg), Verdict::Serve { full: true });
        // No token, a listener others reach: no commands, but usage.
        let open = AdminConfig::default();
        let public = Asked {
            local: "10.0.0.9".parse().unwrap(),
            ..ask(Endpoint::Command, "10.0.0.9")
        };
        assert!(matches!(decide(&public, &open), Verdict::Refuse(403, _)));
        let usage = Asked {
            endpoint: Endpoint::Usage,
            ..public
        };
        assert_eq!(decide(&usage, &open), Verdict::Serve { full: true });
    }

    #[test]
    fn health_shows_node_urls_to_this_host_or_the_token_only() {
        let cfg = AdminConfig {
            token: Some("t".into()),
            hosts: Vec::new(),
        };
        let outside = Asked {
            peer: "10.0.0.2".parse().unwrap(),
            local: "10.0.0.9".parse().unwrap(),
            ..ask(Endpoint::Health, "10.0.0.9:9100")
        };
        assert_eq!(decide(&outside, &cfg), Verdict::Serve { full: false });
        let authed = Asked {
            bearer: Some("t"),
            ..outside
        };
        assert_eq!(decide(&authed, &cfg), Verdict::Serve { full: true });
        assert_eq!(
            decide(&ask(Endpoint::Health, "127.0.0.1"), &cfg),
            Verdict::Serve { full: true }
        );
    }
}
