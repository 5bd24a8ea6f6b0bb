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
//! close within a second: see the relay's timer). A key whose limits
//! changed (chains, methods, rate, quota) gets its successor, which its
//! open sessions follow from their next call ([`Key::current`]): a lower
//! rate or quota applies from then on, a narrower list of methods refuses,
//! a narrower list of chains closes the session.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::methods::MethodPolicy;
use super::usage::{Book, KeyReason, Usage};
use crate::config::keys::{digest, KeySpec, KeysConfig, NotificationCost};

/// What calls and notifications cost in credits (`keys.method_costs`,
/// `keys.notification_cost`).
#[derive(Debug)]
pub struct Costs {
    methods: AHashMap<Vec<u8>, u64>,
    notification: NotificationCost,
}

impl Costs {
    fn new(cfg: &KeysConfig) -> Costs {
        Costs {
            methods: cfg
                .method_costs
                .iter()
                .map(|(m, c)| (m.as_bytes().to_vec(), *c))
                .collect(),
            notification: cfg.notification_cost,
        }
    }

    /// Credits of one call of `method` (default 1).
    pub fn method(&self, method: Option<&[u8]>) -> u64 {
        method
            .and_then(|m| self.methods.get(m).copied())
            .unwrap_or(1)
    }

    /// Credits of one notification of `bytes`.
    pub fn notification(&self, bytes: usize) -> u64 {
        match self.notification {
            NotificationCost::PerNotification(c) => c,
            NotificationCost::PerKiB(c) => c * (bytes.div_ceil(1024).max(1) as u64),
        }
    }
}

/// Why a key's call is refused (its methods are checked before).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyLimit {
    /// Over its rate: try after this long.
    Rate(Duration),
    /// Its quota is used up: credits per period, and when it resets (Unix s).
    Quota { quota: u64, resets: u64 },
}

/// One key of a configuration generation.
#[derive(Debug)]
pub struct Key {
    pub spec: KeySpec,
    /// Removed or disabled by a reload: its sessions close (1008).
    revoked: AtomicBool,
    /// What it used, shared by every core and kept across reloads by name.
    pub usage: Arc<Usage>,
    methods: MethodPolicy,
    costs: Arc<Costs>,
    /// The same key with the limits of a later reload.
    next: std::sync::OnceLock<Arc<Key>>,
}

impl Key {
    /// This key as the newest configuration has it (itself, unless a reload
    /// changed its limits): one atomic load per generation since.
    pub fn current(self: &Arc<Self>) -> &Arc<Key> {
        let mut k = self;
        while let Some(n) = k.next.get() {
            k = n;
        }
        k
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Removed or disabled by a reload, or disabled through the cluster.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed) || self.usage.cluster_disabled()
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
        let sessions = &self.usage.sessions;
        let n = sessions.fetch_add(1, Ordering::Relaxed) + 1 + self.usage.others_sessions();
        let guard = KeyConnection(sessions.clone());
        (self.spec.max_connections == 0 || n <= self.spec.max_connections).then_some(guard)
    }

    /// Whether this key may call `method` (`allow_methods`, `deny_methods`).
    pub fn allows_method(&self, method: &[u8]) -> bool {
        self.methods.allows(method)
    }

    /// Whether this key restricts methods at all.
    pub fn restricts_methods(&self) -> bool {
        !self.methods.is_open()
    }

    /// Charge an admitted message (its calls against the rate, its credits
    /// against the quota), or say which limit refuses it (nothing taken).
    /// Exact across cores; no lock, no allocation.
    pub fn charge(&self, call: &crate::jsonrpc::Call<'_>, now: Instant) -> Result<(), KeyLimit> {
        let n = call.len().max(1) as u64;
        let u = &self.usage;
        if self.spec.rate > 0.0 {
            if let Err(wait) = u.take_rate(n, self.spec.rate, self.spec.burst, now) {
                u.refused(KeyReason::Rate);
                return Err(KeyLimit::Rate(wait));
            }
        }
        let cost = if call.is_empty() {
            1
        } else {
            call.requests().map(|r| self.costs.method(r.method())).sum()
        };
        if !u.take_credits(cost, self.spec.quota) {
            u.refused(KeyReason::Quota);
            return Err(self.quota_limit());
        }
        u.called(n);
        Ok(())
    }

    fn quota_limit(&self) -> KeyLimit {
        KeyLimit::Quota {
            quota: self.spec.quota,
            resets: self.usage.period_bounds().1,
        }
    }

    /// Past its quota (a notification that went out before it was counted).
    pub fn over_quota(&self) -> bool {
        self.spec.quota > 0 && self.usage.credits() > self.spec.quota
    }

    /// A notification of `bytes` for this key's client: charged, and true
    /// while within the quota. `delivered`: it went out already (counted
    /// whatever the quota); else, past the quota it is not to be
    /// delivered (nothing is counted).
    pub fn notification(&self, bytes: usize, delivered: bool) -> bool {
        let cost = self.costs.notification(bytes);
        let u = &self.usage;
        if delivered {
            u.notified(cost);
            return self.spec.quota == 0 || u.credits() <= self.spec.quota;
        }
        if u.take_credits(cost, self.spec.quota) {
            u.notified(0);
            true
        } else {
            false
        }
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
    /// The table for `cfg`. A key's usage (and so its connection count,
    /// rate and quota) is the book's, by name, whatever the generation; in
    /// `before`, the keys gone or disabled now are marked revoked.
    pub fn build(cfg: &KeysConfig, before: Option<&Keys>, book: &Book) -> Keys {
        let costs = Arc::new(Costs::new(cfg));
        let by_digest = cfg
            .keys
            .iter()
            .map(|spec| {
                let usage = book.usage(&spec.name, spec.period);
                usage.set_quota(spec.quota);
                usage.set_rated(spec.rate > 0.0);
                usage.set_capped(spec.max_connections > 0);
                let key = Arc::new(Key {
                    spec: spec.clone(),
                    revoked: AtomicBool::new(false),
                    usage,
                    methods: MethodPolicy::new(
                        false,
                        spec.allow_methods.clone(),
                        spec.deny_methods.clone(),
                    ),
                    costs: costs.clone(),
                    next: std::sync::OnceLock::new(),
                });
                (spec.digest, key)
            })
            .collect::<AHashMap<_, _>>();
        if let Some(before) = before {
            for k in before.by_digest.values() {
                let now = by_digest
                    .get(&k.spec.digest)
                    .filter(|n| n.spec.name == k.spec.name);
                match now {
                    None => k.revoked.store(true, Ordering::Relaxed),
                    Some(n) if n.spec.disabled => k.revoked.store(true, Ordering::Relaxed),
                    // Its sessions follow the new limits (and costs).
                    Some(n) => {
                        let _ = k.next.set(n.clone());
                    }
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

    /// The key named `name` (for `/usage`).
    pub fn named(&self, name: &str) -> Option<&Arc<Key>> {
        self.by_digest.values().find(|k| k.spec.name == name)
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
        let refuse = |why: KeyReason, status: u16, text: &'static str| {
            key.usage.refused(why);
            Err((status, text))
        };
        if key.spec.disabled || key.revoked() {
            return refuse(KeyReason::Disabled, 401, "this API key is disabled");
        }
        if !key.allows_chain(chain) {
            return refuse(KeyReason::Chain, 403, "this API key may not use this chain");
        }
        if let (false, Some(origin)) = (key.spec.origins.is_empty(), head.single("origin")) {
            if !super::origin::origin_allowed(&key.spec.origins, origin) {
                return refuse(
                    KeyReason::Origin,
                    403,
                    "this API key may not be used from this origin",
                );
            }
        }
        let Some(counted) = key.connect() else {
            return refuse(
                KeyReason::Connections,
                429,
                "this API key has all the connections it may open",
            );
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
                    rate: 0.0,
                    burst: 0.0,
                    quota: 0,
                    period: Default::default(),
                    allow_methods: Vec::new(),
                    deny_methods: Vec::new(),
                })
                .collect(),
            method_costs: Default::default(),
            notification_cost: NotificationCost::PerNotification(1),
            state: None,
            state_interval: Duration::from_secs(2),
            state_reset: false,
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
        let keys = Keys::build(&table(&[("alice", A, false)]), None, &Book::default());
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
        let book = Book::default();
        let first = Keys::build(
            &table(&[("alice", A, false), ("bob", B, false)]),
            None,
            &book,
        );
        let alice = first.find(A.as_bytes()).unwrap().clone();
        let bob = first.find(B.as_bytes()).unwrap().clone();
        let _c = alice.connect().unwrap();
        let second = Keys::build(
            &table(&[("alice", A, false), ("bob", B, true)]),
            Some(&first),
            &book,
        );
        assert!(!alice.revoked());
        assert!(bob.revoked());
        assert_eq!(
            second
                .find(A.as_bytes())
                .unwrap()
                .usage
                .sessions
                .load(Ordering::Relaxed),
            1
        );
        let third = Keys::build(&table(&[]), Some(&second), &book);
        assert!(second.find(A.as_bytes()).unwrap().revoked());
        assert!(third.find(A.as_bytes()).is_none());
    }
}
