//! API keys at run time: who is calling. A request's key is found once per
//! connection (WebSocket) or request (HTTP), by the SHA-256 of what the
//! client sent, compared in constant time; the secret itself is never kept
//! beyond that, logged, or sent on to a node.
//!
//! A key is read from, in order: the `X-Api-Key` header, `Authorization:
//! Bearer <key>`, the `apikey` query parameter, or the last path segment
//! (`/<key>`, `/polkadot/<key>`: a segment that is a known key). It is
//! taken out of the path and query the node sees.
//!
//! The table is swapped whole on reload; a key removed or disabled there is
//! marked revoked in the table before, which its open sessions watch (they
//! close within a second: see the relay's timer).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ahash::AHashMap;

use crate::config::keys::{digest, KeySpec, KeysConfig};

/// One key of a configuration generation.
#[derive(Debug)]
pub struct Key {
    pub spec: KeySpec,
    /// Removed or disabled by a reload: its sessions close (1008).
    revoked: AtomicBool,
    /// Open connections with this key, across generations and cores.
    connections: Arc<AtomicUsize>,
}

impl Key {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// Whether the key may use chain `chain`.
    pub fn allows_chain(&self, chain: &str) -> bool {
        self.spec
            .chains
            .as_ref()
            .map_or(true, |cs| cs.iter().any(|c| c == chain))
    }

    /// Count a connection; `None` when the key has `max_connections` open.
    pub fn connect(self: &Arc<Self>) -> Option<KeyConnection> {
        let n = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = KeyConnection(self.connections.clone());
        (self.spec.max_connections == 0 || n <= self.spec.max_connections).then_some(guard)
    }
}

/// A connection counted against its key's `max_connections` while it lives.
#[derive(Debug)]
pub struct KeyConnection(Arc<AtomicUsize>);

impl Drop for KeyConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The keys of a configuration generation.
#[derive(Debug, Default)]
pub struct Keys {
    by_digest: AHashMap<[u8; 32], Arc<Key>>,
    pub required: bool,
}

impl Keys {
    /// The table for `cfg`. Keys kept by name keep their connection counts;
    /// in `before`, the keys gone or disabled now are marked revoked.
    pub fn build(cfg: &KeysConfig, before: Option<&Keys>) -> Keys {
        let old =
            |name: &str| before.and_then(|b| b.by_digest.values().find(|k| k.spec.name == name));
        let by_digest = cfg
            .keys
            .iter()
            .map(|spec| {
                let connections = old(&spec.name)
                    .map(|k| k.connections.clone())
                    .unwrap_or_default();
                let key = Arc::new(Key {
                    spec: spec.clone(),
                    revoked: AtomicBool::new(false),
                    connections,
                });
                (spec.digest, key)
            })
            .collect::<AHashMap<_, _>>();
        if let Some(before) = before {
            for k in before.by_digest.values() {
                let now = by_digest
                    .get(&k.spec.digest)
                    .filter(|n| n.spec.name == k.spec.name);
                if now.map_or(true, |n| n.spec.disabled) {
                    k.revoked.store(true, Ordering::Relaxed);
                }
            }
        }
        Keys {
            by_digest,
            required: cfg.required,
        }
    }

    /// Mark every key revoked (keys turned off by a reload).
    pub fn revoke_all(&self) {
        for k in self.by_digest.values() {
            k.revoked.store(true, Ordering::Relaxed);
        }
    }

    /// The key whose secret is `secret`, if any (enabled or not).
    pub fn find(&self, secret: &[u8]) -> Option<&Arc<Key>> {
        let d = digest(secret);
        let k = self.by_digest.get(&d)?;
        // The map found it by the digest; compare in constant time anyway.
        let diff = k
            .spec
            .digest
            .iter()
            .zip(&d)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (std::hint::black_box(diff) == 0).then_some(k)
    }

    /// The key a request carries, and the path its node sees without it.
    /// `Err(())`: it names a key that is not one (header, bearer or query).
    pub fn of<'p>(
        &self,
        header: Option<&[u8]>,
        bearer: Option<&[u8]>,
        target: &'p str,
    ) -> (Result<Option<Arc<Key>>, ()>, Cow<'p, str>) {
        let (path, query) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        let from_query = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("apikey=")));
        // The last segment, if it is a key.
        let (dir, last) = path.rsplit_once('/').unwrap_or(("", path));
        let in_path = (!last.is_empty())
            .then(|| self.find(last.as_bytes()))
            .flatten();
        let key = match header.or(bearer).or(from_query.map(str::as_bytes)) {
            Some(secret) => self.find(secret).cloned().map(Some).ok_or(()),
            None => Ok(in_path.cloned()),
        };
        if from_query.is_none() && in_path.is_none() {
            return (key, target.into());
        }
        let mut seen = if in_path.is_some() {
            format!("{dir}/")
        } else {
            path.to_string()
        };
        let rest: Vec<&str> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|kv| !kv.starts_with("apikey=") && !kv.is_empty())
            .collect();
        if !rest.is_empty() {
            seen.push('?');
            seen.push_str(&rest.join("&"));
        }
        (key, seen.into())
    }
}

/// Why a request's key does not admit it: its status and the reason (which
/// never names the secret).
pub type KeyRefusal = (u16, &'static str);

/// An admitted key and its place in the key's connection count.
pub type Held = (Arc<Key>, KeyConnection);

impl Keys {
    /// The key of a request for chain `chain` (by `X-Api-Key`,
    /// `Authorization`, `apikey` or the path's last segment), admitted, with
    /// its place in the key's connection count; and the path its node sees.
    /// `Ok(None)`: no key, and none is required.
    pub fn admit<'p>(
        &self,
        head: &crate::ws::handshake::Head<'_, '_>,
        chain: &str,
        target: &'p str,
    ) -> Result<(Option<Held>, Cow<'p, str>), KeyRefusal> {
        let bearer = bearer(head.single("authorization"));
        let (key, path) = self.of(head.single("x-api-key"), bearer, target);
        let key = match key {
            Err(()) => return Err((401, "unknown API key")),
            Ok(None) if self.required => return Err((
                401,
                "an API key is required: /<key>, ?apikey=<key>, X-Api-Key or Authorization: Bearer",
            )),
            Ok(None) => return Ok((None, path)),
            Ok(Some(k)) => k,
        };
        if key.spec.disabled || key.revoked() {
            return Err((401, "this API key is disabled"));
        }
        if !key.allows_chain(chain) {
            return Err((403, "this API key may not use this chain"));
        }
        if let (false, Some(origin)) = (key.spec.origins.is_empty(), head.single("origin")) {
            if !super::origin_allowed(&key.spec.origins, origin) {
                return Err((403, "this API key may not be used from this origin"));
            }
        }
        let Some(counted) = key.connect() else {
            return Err((429, "this API key has all the connections it may open"));
        };
        Ok((Some((key, counted)), path))
    }
}

/// `Authorization: Bearer <key>`'s key.
pub fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    let v = authorization?;
    let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::keys::KeySpec;

    const A: &str = "aaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbb";

    fn table(keys: &[(&str, &str, bool)]) -> KeysConfig {
        KeysConfig {
            file: "keys.toml".into(),
            required: true,
            keys: keys
                .iter()
                .map(|(name, secret, disabled)| KeySpec {
                    name: name.to_string(),
                    digest: digest(secret.as_bytes()),
                    chains: None,
                    origins: Vec::new(),
                    max_connections: 0,
                    disabled: *disabled,
                })
                .collect(),
        }
    }

    fn of(keys: &Keys, header: Option<&str>, path: &str) -> (Option<String>, String) {
        let (k, p) = keys.of(header.map(str::as_bytes), None, path);
        (
            k.expect("known").map(|k| k.name().to_string()),
            p.into_owned(),
        )
    }

    #[test]
    fn a_key_is_found_where_providers_put_it_and_taken_out_of_the_path() {
        let keys = Keys::build(&table(&[("alice", A, false)]), None);
        assert_eq!(
            of(&keys, None, &format!("/{A}")),
            (Some("alice".into()), "/".into())
        );
        assert_eq!(
            of(&keys, None, &format!("/rpc/{A}?x=1")),
            (Some("alice".into()), "/rpc/?x=1".into())
        );
        assert_eq!(
            of(&keys, None, &format!("/?apikey={A}&x=1")),
            (Some("alice".into()), "/?x=1".into())
        );
        assert_eq!(
            of(&keys, None, &format!("/ws?apikey={A}")),
            (Some("alice".into()), "/ws".into())
        );
        assert_eq!(
            of(&keys, Some(A), "/ws"),
            (Some("alice".into()), "/ws".into())
        );
        assert_eq!(
            bearer(Some(format!("Bearer {A}").as_bytes())),
            Some(A.as_bytes())
        );
        // No key: the path as it was (a segment that is no key stays).
        assert_eq!(
            of(&keys, None, "/ws/notakey?x=1"),
            (None, "/ws/notakey?x=1".into())
        );
        // A key named but unknown.
        assert!(keys.of(Some(B.as_bytes()), None, "/").0.is_err());
        assert!(keys.of(None, None, &format!("/?apikey={B}")).0.is_err());
    }

    #[test]
    fn a_reload_revokes_the_keys_it_removes_or_disables_and_keeps_counts() {
        let first = Keys::build(&table(&[("alice", A, false), ("bob", B, false)]), None);
        let alice = first.find(A.as_bytes()).unwrap().clone();
        let bob = first.find(B.as_bytes()).unwrap().clone();
        let _c = alice.connect().unwrap();
        let second = Keys::build(
            &table(&[("alice", A, false), ("bob", B, true)]),
            Some(&first),
        );
        assert!(!alice.revoked());
        assert!(bob.revoked());
        assert_eq!(
            second
                .find(A.as_bytes())
                .unwrap()
                .connections
                .load(Ordering::Relaxed),
            1
        );
        let third = Keys::build(&table(&[]), Some(&second));
        assert!(second.find(A.as_bytes()).unwrap().revoked());
        assert!(third.find(A.as_bytes()).is_none());
    }
}
