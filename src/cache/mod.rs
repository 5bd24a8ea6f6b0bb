//! The response cache: answers that cannot change, kept per core and
//! served with each client's own id, so that N clients cost the node about
//! what one does (a provider's nodes are its cost).
//!
//! - [`rules`] decides what may be kept and under which key (sans-io):
//!   static answers, answers at a block hash, at a finalized block number,
//!   and "latest" metadata and runtime version asked at the finalized hash.
//! - [`Cache`] holds them, bounded in bytes (`cache.max_bytes` per core),
//!   each until its TTL, evicting the least recently used first (a CLOCK:
//!   an entry served since the hand last passed gets another round). One
//!   per core and configuration generation: no lock, nothing shared.
//! - An answer is kept as `{"jsonrpc":"2.0","result":…,"id":` once; a hit
//!   is that, the client's id and `}` (a 300 KB `state_getMetadata` is
//!   copied once into the client's frame, which TLS encrypts anyway).
//! - Identical requests while one is on its way to a node wait for its
//!   answer instead of going out again (in-flight deduplication: see
//!   the relay's shared connections).

pub mod rules;
pub mod second;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ahash::AHashMap;

pub use rules::{plan, Plan, Rules, Ttls};

/// One kept answer.
struct Entry {
    /// `{"jsonrpc":"2.0","result":…,"id":`
    head: Rc<[u8]>,
    expires: Instant,
    /// Served since the clock hand last passed.
    used: Cell<bool>,
}

/// Bytes an entry costs besides its key and answer.
const OVERHEAD: usize = 64;

/// What an entry counts for, the same when it is kept and when it goes.
fn cost(key: &[u8], head: &[u8]) -> usize {
    key.len() + head.len() + OVERHEAD
}

/// One core's kept answers.
pub struct Cache {
    pub rules: Rules,
    max_bytes: usize,
    entries: RefCell<AHashMap<Rc<[u8]>, Entry>>,
    /// The clock's order of keys (oldest first).
    clock: RefCell<VecDeque<Rc<[u8]>>>,
    bytes: Cell<usize>,
    /// The chain's counters slot.
    slot: u8,
}

impl Cache {
    pub fn new(rules: Rules, max_bytes: usize, slot: u8) -> Cache {
        Cache {
            slot,
            rules,
            max_bytes,
            entries: RefCell::new(AHashMap::new()),
            clock: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
        }
    }

    /// The kept answer for `key`, as its head (the client's id and `}`
    /// complete it).
    pub fn get(&self, key: &[u8], now: Instant) -> Option<Rc<[u8]>> {
        let hit = {
            let entries = self.entries.borrow();
            entries.get(key).map(|e| {
                e.used.set(true);
                (e.head.clone(), e.expires)
            })
        };
        match hit {
            Some((head, expires)) if now < expires => {
                crate::stats::count(|c| c.chain(self.slot).cache_hits.add(1));
                Some(head)
            }
            Some(_) => {
                self.remove(key);
                crate::stats::count(|c| c.chain(self.slot).cache_misses.add(1));
                None
            }
            None => {
                crate::stats::count(|c| c.chain(self.slot).cache_misses.add(1));
                None
            }
        }
    }

    /// Keep the answer `msg` (a whole JSON-RPC answer) under `key` for
    /// `ttl`, unless it is an error or a null result (or, `final_in_answer`,
    /// its block is not finalized). Returns whether it was kept.
    pub fn insert(
        &self,
        key: &[u8],
        msg: &[u8],
        ttl: Duration,
        final_in_answer: Option<u64>,
    ) -> bool {
        self.keep(key, msg, ttl, final_in_answer).is_some()
    }

    /// [`Cache::insert`], giving the head kept.
    pub fn keep(
        &self,
        key: &[u8],
        msg: &[u8],
        ttl: Duration,
        final_in_answer: Option<u64>,
    ) -> Option<Rc<[u8]>> {
        let p = crate::jsonrpc::peek(msg)?;
        let result = p.result.filter(|r| *r != b"null")?;
        if p.error.is_some() {
            return None;
        }
        if let Some(finalized) = final_in_answer {
            if !rules::final_in_answer(result, finalized) {
                return None;
            }
        }
        let mut head = Vec::with_capacity(result.len() + 32);
        head.extend_from_slice(br#"{"jsonrpc":"2.0","result":"#);
        head.extend_from_slice(result);
        head.extend_from_slice(br#","id":"#);
        let head: Rc<[u8]> = head.into();
        self.insert_head(key, head.clone(), ttl).then_some(head)
    }

    /// Keep `head` (`{"jsonrpc":"2.0","result":…,"id":`, as [`Cache::get`]
    /// gives it) under `key` for `ttl`. Returns whether it was kept.
    pub fn insert_head(&self, key: &[u8], head: Rc<[u8]>, ttl: Duration) -> bool {
        let cost = cost(key, &head);
        if cost > self.max_bytes / 4 {
            return false;
        }
        self.remove(key);
        let key: Rc<[u8]> = Rc::from(key);
        self.entries.borrow_mut().insert(
            key.clone(),
            Entry {
                head,
                expires: Instant::now() + ttl,
                used: Cell::new(false),
            },
        );
        self.clock.borrow_mut().push_back(key);
        self.bytes.set(self.bytes.get() + cost);
        self.evict();
        crate::stats::count(|c| c.chain(self.slot).cache_bytes.set(self.bytes.get() as u64));
        true
    }

    /// Bytes held now (keys, answers, bookkeeping).
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    fn remove(&self, key: &[u8]) {
        if let Some(e) = self.entries.borrow_mut().remove(key) {
            self.bytes.set(self.bytes.get() - cost(key, &e.head));
        }
        // Its place in the clock goes when the hand reaches it.
    }

    /// Make room: the hand passes over the oldest keys, evicting expired
    /// and unused ones, giving used ones another round.
    fn evict(&self) {
        let now = Instant::now();
        let mut clock = self.clock.borrow_mut();
        let mut rounds = clock.len() * 2;
        while self.bytes.get() > self.max_bytes && rounds > 0 {
            rounds -= 1;
            let Some(key) = clock.pop_front() else {
                break;
            };
            let keep = {
                let entries = self.entries.borrow();
                match entries.get(&key) {
                    None => continue,
                    Some(e) if e.expires > now && e.used.replace(false) => true,
                    Some(_) => false,
                }
            };
            if keep {
                clock.push_back(key);
            } else {
                self.remove(&key);
                crate::stats::count(|c| c.chain(self.slot).cache_evictions.add(1));
            }
        }
        // Keys of removed entries do not pile up.
        if clock.len() > 2 * self.entries.borrow().len() + 64 {
            let entries = self.entries.borrow();
            clock.retain(|k| entries.contains_key(k));
        }
    }
}

/// The answer to a request of `id` from a kept head.
pub fn answer_parts<'a>(head: &'a [u8], id: &'a [u8]) -> [&'a [u8]; 3] {
    [head, id, b"}"]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Flavour;

    fn cache(max: usize) -> Cache {
        let ttls = Ttls {
            static_ttl: Duration::from_secs(60),
            final_ttl: Duration::from_secs(60),
        };
        Cache::new(Rules::new(Flavour::Substrate, ttls, &[]), max, 0)
    }

    #[test]
    fn answers_are_kept_and_served_with_the_clients_id() {
        let c = cache(1 << 20);
        let now = Instant::now();
        assert!(c.get(b"k", now).is_none());
        assert!(c.insert(
            b"k",
            br#"{"jsonrpc":"2.0","id":7,"result":"Polkadot"}"#,
            Duration::from_secs(9),
            None
        ));
        let head = c.get(b"k", now).unwrap();
        assert_eq!(
            answer_parts(&head, br#""abc""#).concat(),
            br#"{"jsonrpc":"2.0","result":"Polkadot","id":"abc"}"#.to_vec()
        );
        assert!(
            c.get(b"k", now + Duration::from_secs(10)).is_none(),
            "expired"
        );
    }

    #[test]
    fn errors_and_nulls_are_not_kept() {
        let c = cache(1 << 20);
        let ttl = Duration::from_secs(9);
        assert!(!c.insert(
            b"a",
            br#"{"jsonrpc":"2.0","id":1,"result":null}"#,
            ttl,
            None
        ));
        assert!(!c.insert(
            b"b",
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}"#,
            ttl,
            None
        ));
        assert!(
            !c.insert(
                b"c",
                br#"{"jsonrpc":"2.0","id":1,"result":{"blockNumber":"0x10"}}"#,
                ttl,
                Some(15)
            ),
            "not final yet"
        );
        assert!(c.insert(
            b"c",
            br#"{"jsonrpc":"2.0","id":1,"result":{"blockNumber":"0x10"}}"#,
            ttl,
            Some(16)
        ));
    }

    #[test]
    fn memory_is_bounded_and_used_entries_stay() {
        let c = cache(4096);
        let ttl = Duration::from_secs(60);
        let body = |i: usize| format!(r#"{{"id":1,"result":"{}"}}"#, "x".repeat(200 + i));
        assert!(c.insert(b"hot", body(0).as_bytes(), ttl, None));
        for i in 0..100 {
            c.get(b"hot", Instant::now());
            c.insert(format!("k{i}").as_bytes(), body(i).as_bytes(), ttl, None);
            assert!(c.bytes() <= 4096, "{}", c.bytes());
        }
        assert!(
            c.get(b"hot", Instant::now()).is_some(),
            "served often, kept"
        );
        assert!(c.get(b"k0", Instant::now()).is_none(), "evicted");
    }

    /// Guards the byte count: it was 8 bytes more per insert than per
    /// removal (the cost was counted from the result, the refund from the
    /// kept head), so after some 4 million removals the cache counted
    /// itself full and evicted everything it stored.
    #[test]
    fn the_byte_count_returns_to_zero_after_any_inserts_and_removals() {
        let c = cache(1 << 20);
        let ttl = Duration::from_secs(60);
        for i in 0..1000 {
            let key = format!("k{}", i % 7);
            let body = format!(r#"{{"id":1,"result":"{}"}}"#, "x".repeat(i % 50));
            c.insert(key.as_bytes(), body.as_bytes(), ttl, None);
        }
        for i in 0..7 {
            c.remove(format!("k{i}").as_bytes());
        }
        assert_eq!(c.bytes(), 0);
    }
}
