//! API keys: `[keys]` in the configuration, and the keys file it names
//! (one `[[key]]` table per key). Read where the configuration is read (at
//! start, on SIGHUP, `--check`); an error names the file, the key's line
//! and its name, and refuses the whole file (a reload keeps the keys in use).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// `[keys]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysSection {
    /// The keys file; empty: no keys (clients are told apart by address only).
    pub file: String,
    /// Whether a request without a key is refused (401); with false it is
    /// served under the per-address `[admission]` rules.
    pub required: bool,
    /// Credits a call of a method costs against a key's quota (default 1).
    pub method_costs: std::collections::BTreeMap<String, u64>,
    /// Credits a notification costs: per notification, or per KiB begun
    /// (`notification_cost_per = "KiB"`).
    pub notification_cost: u64,
    pub notification_cost_per: String,
    /// Where usage is kept across restarts (empty: not kept).
    pub state: String,
    /// How often the state file is written (and at drain).
    pub state_interval_ms: u64,
    /// A state file that cannot be read is moved aside and usage starts at
    /// zero (without it, and without `[cluster]` to resume from, the
    /// gateway refuses to start).
    pub state_reset: bool,
}

impl Default for KeysSection {
    fn default() -> Self {
        KeysSection {
            file: String::new(),
            required: true,
            method_costs: Default::default(),
            notification_cost: 1,
            notification_cost_per: "notification".into(),
            state: String::new(),
            state_interval_ms: 2000,
            state_reset: false,
        }
    }
}

/// One key as the file writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    /// The secret as clients send it.
    key: Option<String>,
    /// Its SHA-256, hex: the file then holds no secret.
    key_sha256: Option<String>,
    /// The chains it may use (by name); absent: all.
    chains: Option<Vec<String>>,
    /// Browser origins it may be used from; empty: any.
    #[serde(default)]
    origins: Vec<String>,
    /// Open connections at once; 0: no limit.
    #[serde(default)]
    max_connections: usize,
    #[serde(default)]
    disabled: bool,
    /// Calls per second (0: no limit), and the burst (default: the rate).
    #[serde(default)]
    rate: f64,
    #[serde(default)]
    burst: f64,
    /// Credits per period (0: no quota).
    #[serde(default)]
    quota: u64,
    /// "day" or "month" (UTC).
    period: Option<String>,
    #[serde(default)]
    allow_methods: Vec<String>,
    #[serde(default)]
    deny_methods: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

/// One key, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    /// What logs, metrics and `/usage` call it (the secret never appears).
    pub name: String,
    /// SHA-256 of the secret.
    pub digest: [u8; 32],
    pub chains: Option<Vec<String>>,
    pub origins: Vec<String>,
    pub max_connections: usize,
    pub disabled: bool,
    /// Calls per second and burst (rate 0: no limit).
    pub rate: f64,
    pub burst: f64,
    /// Credits per period (0: no quota).
    pub quota: u64,
    pub period: Period,
    pub allow_methods: Vec<String>,
    pub deny_methods: Vec<String>,
}

/// A quota's period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Period {
    Day,
    #[default]
    Month,
}

/// What a notification costs: per notification, or per KiB begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationCost {
    PerNotification(u64),
    PerKiB(u64),
}

/// The keys in force.
#[derive(Debug, Clone, PartialEq)]
pub struct KeysConfig {
    pub file: PathBuf,
    pub required: bool,
    pub keys: Vec<KeySpec>,
    pub method_costs: std::collections::BTreeMap<String, u64>,
    pub notification_cost: NotificationCost,
    /// The usage state file (relative paths: to the configuration's directory).
    pub state: Option<PathBuf>,
    pub state_interval: std::time::Duration,
    pub state_reset: bool,
}

/// SHA-256 of `secret`.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    d.as_ref().try_into().expect("32 bytes")
}

/// The keys file `section` names (relative to the configuration's
/// directory), read and checked; `None` when there is none.
pub fn load(
    section: &KeysSection,
    source: &Option<PathBuf>,
    chains: &[String],
) -> Result<Option<KeysConfig>, ConfigError> {
    if section.file.is_empty() {
        return Ok(None);
    }
    let near = |path: &str| {
        let p = PathBuf::from(path);
        match source.as_ref().and_then(|s| s.parent()) {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        }
    };
    let file = near(&section.file);
    let config_err = |key: &str, message: String| ConfigError {
        origin: source
            .as_ref()
            .map_or("configuration".into(), |s| s.display().to_string()),
        key: format!("keys.{key}"),
        message,
    };
    let notification_cost = match section.notification_cost_per.as_str() {
        "notification" => NotificationCost::PerNotification(section.notification_cost),
        "KiB" | "kib" => NotificationCost::PerKiB(section.notification_cost),
        other => {
            return Err(config_err(
                "notification_cost_per",
                format!("\"notification\" or \"KiB\", not {other:?}"),
            ))
        }
    };
    if section.state_interval_ms == 0 {
        return Err(config_err("state_interval_ms", "at least 1".into()));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| ConfigError {
        origin: file.display().to_string(),
        key: String::new(),
        message: format!("cannot read the keys file (keys.file): {e}"),
    })?;
    let keys = parse(&text, &file, chains)?;
    Ok(Some(KeysConfig {
        file,
        required: section.required,
        keys,
        method_costs: section.method_costs.clone(),
        notification_cost,
        state: (!section.state.is_empty()).then(|| near(&section.state)),
        state_interval: std::time::Duration::from_millis(section.state_interval_ms),
        state_reset: section.state_reset,
    }))
}

fn parse(text: &str, file: &Path, chains: &[String]) -> Result<Vec<KeySpec>, ConfigError> {
    let origin = file.display().to_string();
    let parsed: KeysFile = toml::from_str(text).map_err(|e| ConfigError {
        origin: origin.clone(),
        key: String::new(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })?;
    // The line each `[[key]]` table starts on, for the errors.
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[key]]"))
        .map(|(i, _)| i + 1)
        .collect();
    let mut out: Vec<KeySpec> = Vec::new();
    for (i, k) in parsed.key.into_iter().enumerate() {
        let err = |field: &str, message: String| ConfigError {
            origin: origin.clone(),
            key: format!(
                "key[{i}].{field} (line {}, key `{}`)",
                lines.get(i).copied().unwrap_or(0),
                k.name
            ),
            message,
        };
        // It is written as it is into /usage, metric labels, log lines and
        // the path of POST /keys/<name>/disable.
        let plain = |c: char| !c.is_control() && !matches!(c, '"' | '\\' | '/' | ' ' | '?' | '%');
        if k.name.is_empty() || !k.name.chars().all(plain) {
            return Err(err(
                "name",
                "a name without spaces, quotes, backslashes, slashes, `?`, `%` or control characters".into(),
            ));
        }
        if out.iter().any(|o| o.name == k.name) {
            return Err(err("name", "names another key too".into()));
        }
        let digest = match (&k.key, &k.key_sha256) {
            (Some(secret), None) if secret.len() >= 16 && usable(secret) => digest(secret.as_bytes()),
            (Some(_), None) => {
                return Err(err(
                    "key",
                    "at least 16 characters, letters, digits, `-` and `_` (it travels in paths, queries and headers)".into(),
                ))
            }
            (None, Some(hex)) => from_hex(hex).ok_or_else(|| {
                err("key_sha256", "64 hex digits (the SHA-256 of the key)".into())
            })?,
            _ => return Err(err("key", "one of key or key_sha256".into())),
        };
        if out.iter().any(|o| o.digest == digest) {
            return Err(err("key", "the same secret as another key".into()));
        }
        if let Some(unknown) = k.chains.iter().flatten().find(|c| !chains.contains(c)) {
            return Err(err(
                "chains",
                format!(
                    "no chain is named `{unknown}` (chains: {})",
                    chains.join(", ")
                ),
            ));
        }
        if !(k.rate >= 0.0 && k.rate.is_finite()) {
            return Err(err("rate", "calls per second, 0 or more".into()));
        }
        if !(k.burst >= 0.0 && k.burst.is_finite()) {
            return Err(err("burst", "calls, 0 or more".into()));
        }
        let period = match k.period.as_deref() {
            None | Some("month") => Period::Month,
            Some("day") => Period::Day,
            Some(other) => {
                return Err(err(
                    "period",
                    format!("\"day\" or \"month\" (UTC), not {other:?}"),
                ))
            }
        };
        out.push(KeySpec {
            name: k.name,
            digest,
            chains: k.chains,
            origins: k.origins,
            max_connections: k.max_connections,
            disabled: k.disabled,
            rate: k.rate,
            burst: if k.burst > 0.0 { k.burst } else { k.rate },
            quota: k.quota,
            period,
            allow_methods: k.allow_methods,
            deny_methods: k.deny_methods,
        });
    }
    Ok(out)
}

/// Characters a key may have: it is sent in paths, queries and headers as it is.
pub fn usable(secret: &str) -> bool {
    secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chains() -> Vec<String> {
        vec!["polkadot".into(), "kusama".into()]
    }

    #[test]
    fn a_keys_file_reads_secrets_or_their_digests() {
        let hex: String = digest(b"bbbbbbbbbbbbbbbbbbbb")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let text = format!(
            "[[key]]\nname = \"alice\"\nkey = \"aaaaaaaaaaaaaaaaaaaa\"\nchains = [\"polkadot\"]\n\n[[key]]\nname = \"bob\"\nkey_sha256 = \"{hex}\"\nmax_connections = 2\n"
        );
        let keys = parse(&text, Path::new("keys.toml"), &chains()).unwrap();
        assert_eq!(keys[0].digest, digest(b"aaaaaaaaaaaaaaaaaaaa"));
        assert_eq!(
            keys[0].chains.as_deref(),
            Some(&["polkadot".to_string()][..])
        );
        assert_eq!(keys[1].digest, digest(b"bbbbbbbbbbbbbbbbbbbb"));
        assert_eq!(keys[1].max_connections, 2);
    }

    #[test]
    fn an_error_names_the_file_the_line_and_the_key() {
        let text = "[[key]]\nname = \"a\"\nkey = \"aaaaaaaaaaaaaaaaaaaa\"\n\n[[key]]\nname = \"b\"\nkey = \"short\"\n";
        let e = parse(text, Path::new("/etc/ringway/keys.toml"), &chains()).unwrap_err();
        assert_eq!(e.origin, "/etc/ringway/keys.toml");
        assert!(
            e.key.contains("key[1].key") && e.key.contains("line 5") && e.key.contains("`b`"),
            "{e}"
        );
        let text =
            "[[key]]\nname = \"a\"\nkey = \"aaaaaaaaaaaaaaaaaaaa\"\nchains = [\"westend\"]\n";
        let e = parse(text, Path::new("k.toml"), &chains()).unwrap_err();
        assert!(e.message.contains("westend"), "{e}");
        let text = "[[key]]\nname = \"a\"\nkey = \"aaaaaaaaaaaaaaaaaaaa\"\nrole = \"x\"\n";
        let e = parse(text, Path::new("k.toml"), &chains()).unwrap_err();
        assert!(e.message.contains("role"), "{e}");
        let tab = "[[key]]\nname = \"a\\tb\"\nkey = \"aaaaaaaaaaaaaaaaaaaa\"\n";
        let e = parse(tab, Path::new("k.toml"), &chains()).unwrap_err();
        assert!(e.key.contains("key[0].name"), "{e}");
        let twice = "[[key]]\nname = \"a\"\nkey = \"aaaaaaaaaaaaaaaaaaaa\"\n[[key]]\nname = \"b\"\nkey = \"aaaaaaaaaaaaaaaaaaaa\"\n";
        assert!(parse(twice, Path::new("k.toml"), &chains()).is_err());
    }
}
