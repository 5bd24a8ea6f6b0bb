//! Answers that may be kept, whichever transport asked: the core's cache
//! (and the cluster's second level) and the requests on their way to a
//! node, which identical requests join instead of going out again.
//!
//! One per core and chain and configuration generation, shared by HTTP
//! requests and WebSocket sessions of both modes: an HTTP request joins a
//! WebSocket session's flight and the other way round.
//!
//! Whoever asks is a [`Waiter`]: a [`Reply`] (a session, an HTTP request)
//! with the id it asked with and a tag it reads back (which request of a
//! batch). [`Answers::ask`] answers from the cache, joins a flight, or says
//! to fetch; the fetch's answer is [`Answers::land`]ed and goes to every
//! waiter, the one that asked first included, each with its own id.
//! Nothing here does I/O: the transports fetch, over their own connections.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::time::Duration;

use ahash::AHashMap;

use crate::cache::{answer_parts, Cache, Plan};
use crate::jsonrpc::error::{code, error};

/// Where an answer goes: a WebSocket session, an HTTP request.
pub trait Reply {
    /// The answer to the request `id` tagged `tag`: `parts` joined (the
    /// answer with `id` in it).
    fn answer(&self, tag: u64, id: &[u8], parts: &[&[u8]]);
}

/// One request waiting for an answer that may be kept.
#[derive(Clone)]
pub struct Waiter {
    pub to: Weak<dyn Reply>,
    /// The id it asked with (raw JSON).
    pub id: Box<[u8]>,
    /// Read back by `to` (0: a single request; else its place in a batch).
    pub tag: u64,
}

impl Waiter {
    pub fn new(to: Weak<dyn Reply>, id: &[u8], tag: u64) -> Waiter {
        Waiter {
            to,
            id: Box::from(id),
            tag,
        }
    }

    fn give(&self, parts: &[&[u8]]) {
        if let Some(to) = self.to.upgrade() {
            to.answer(self.tag, &self.id, parts);
        }
    }

    /// Answered with the gateway's error (-32603, `why`).
    pub fn fail(&self, why: &str) {
        let e = error(&self.id, code::INTERNAL_ERROR, why, None);
        self.give(&[e.as_bytes()]);
    }
}

/// What [`Answers::ask`] found.
pub enum Found {
    /// Kept: the head of the answer (the waiter's id and `}` complete it).
    Hit(Rc<[u8]>),
    /// The same request is on its way: the waiter gets its answer.
    Joined,
    /// Nothing: the waiter is the flight's first; the caller fetches and
    /// lands the answer.
    Fetch,
}

/// What must be final at the node that answered for its answer to be kept
/// (by the node's own finality, not the pool's: a lagging node on a short
/// fork answers for its fork).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MustBeFinal {
    /// Nothing: a static answer, or one at a block hash.
    Nothing,
    /// The block number it was asked at.
    Block(u64),
    /// The block the answer names (`blockNumber`: receipts, transactions).
    AnswersBlock,
}

impl MustBeFinal {
    pub fn of(plan: &Plan) -> MustBeFinal {
        match (plan.final_in_answer, plan.at) {
            (true, _) => MustBeFinal::AnswersBlock,
            (false, Some(n)) => MustBeFinal::Block(n),
            (false, None) => MustBeFinal::Nothing,
        }
    }
}

/// How a landed answer may be kept.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    pub ttl: Duration,
    pub must_be_final: MustBeFinal,
    /// It may go to the cluster's second level.
    pub lasting: bool,
    /// The block the answering node has finalized (0: unknown).
    pub node_final: u64,
    /// Not the answer the key names (asked again as the client asked,
    /// after the node did not know the finalized hash filled in): given to
    /// the waiters, not kept.
    pub not_the_keys: bool,
}

impl Keep {
    pub fn of(plan: &Plan, node_final: u64) -> Keep {
        Keep {
            ttl: plan.ttl,
            must_be_final: MustBeFinal::of(plan),
            lasting: plan.lasting,
            node_final,
            not_the_keys: false,
        }
    }

    /// Whether the answer may be kept at all, and the finalized block its
    /// `blockNumber` must be at or below (when it names one).
    fn decide(&self) -> (bool, Option<u64>) {
        let keep = !self.not_the_keys
            && match self.must_be_final {
                MustBeFinal::Block(n) => n == 0 || n <= self.node_final,
                _ => true,
            };
        let answers_block =
            (self.must_be_final == MustBeFinal::AnswersBlock).then_some(self.node_final);
        (keep, answers_block)
    }
}

/// A core's kept answers and flights, for one chain.
pub struct Answers {
    pub cache: Cache,
    /// The cluster's second level (`[cluster] cache`), for lasting answers.
    pub second: Option<crate::cache::second::Level2>,
    /// Requests on their way (or being looked up in the second level), by
    /// cache key: every waiter for the answer. Bounded by the requests in
    /// flight (each waiter is one).
    flights: RefCell<AHashMap<Box<[u8]>, Vec<Waiter>>>,
}

impl Answers {
    pub fn new(cache: Cache, second: Option<crate::cache::second::Level2>) -> Answers {
        Answers {
            cache,
            second,
            flights: RefCell::default(),
        }
    }

    /// The answer to `plan`'s request for `waiter`: kept, joined, or to fetch.
    pub fn ask(&self, plan: &Plan, waiter: Waiter) -> Found {
        if let Some(head) = self.cache.get(&plan.key, std::time::Instant::now()) {
            return Found::Hit(head);
        }
        let mut flights = self.flights.borrow_mut();
        if let Some(waiting) = flights.get_mut(&plan.key[..]) {
            waiting.push(waiter);
            return Found::Joined;
        }
        flights.insert(Box::from(&plan.key[..]), vec![waiter]);
        Found::Fetch
    }

    /// A flight is on its way for `key` (its answer has waiters).
    pub fn flying(&self, key: &[u8]) -> bool {
        self.flights.borrow().contains_key(key)
    }

    /// After [`Found::Fetch`]: the answer, if it is lasting and the second
    /// level may hold it, is looked up there first; `fetch` asks a node
    /// (now, or when the second level has nothing). Every waiter gets the
    /// answer either way.
    pub fn fetch(self: &Rc<Self>, plan: &Plan, fetch: impl FnOnce() + 'static) {
        let Some(second) = self.second.as_ref().filter(|_| plan.lasting) else {
            return fetch();
        };
        let (me, key, ttl) = (Rc::downgrade(self), plan.key.clone(), plan.ttl);
        // The callback and the miss below share the fetch: only one runs it.
        let fetch = Rc::new(RefCell::new(Some(fetch)));
        let later = fetch.clone();
        let asked = second.get(&plan.key, move |head| {
            let Some(me) = me.upgrade() else {
                return;
            };
            match head {
                Some(head) => me.land_head(&key, head.into(), ttl),
                None if me.flying(&key) => {
                    if let Some(f) = later.borrow_mut().take() {
                        f();
                    }
                }
                // Nobody waits any more: the fetching note ends.
                None => {
                    if let Some(s) = me.second.as_ref() {
                        s.forget(&key);
                    }
                }
            }
        });
        if !asked {
            if let Some(f) = fetch.borrow_mut().take() {
                f();
            }
        }
    }

    /// The node's answer `msg` (a whole JSON-RPC answer, its id at `id_at`)
    /// to the request kept under `key`: kept as `keep` allows, and given to
    /// every waiter with its own id. Returns the head kept, if any.
    pub fn land(
        &self,
        key: &[u8],
        msg: &[u8],
        id_at: std::ops::Range<usize>,
        keep: Keep,
    ) -> Option<Rc<[u8]>> {
        let waiting = self.flights.borrow_mut().remove(key).unwrap_or_default();
        let (may_keep, answers_block) = keep.decide();
        let head = may_keep
            .then(|| self.cache.keep(key, msg, keep.ttl, answers_block))
            .flatten();
        if let Some(second) = self.second.as_ref().filter(|_| keep.lasting) {
            match &head {
                Some(head) => second.put(key, head, keep.ttl),
                None => second.forget(key),
            }
        }
        for w in waiting {
            w.give(&[&msg[..id_at.start], &w.id, &msg[id_at.end..]]);
        }
        head
    }

    /// The second level held the answer kept under `key`: kept here too,
    /// and given to every waiter.
    pub fn land_head(&self, key: &[u8], head: Rc<[u8]>, ttl: Duration) {
        self.cache.insert_head(key, head.clone(), ttl);
        let waiting = self.flights.borrow_mut().remove(key).unwrap_or_default();
        for w in waiting {
            w.give(&answer_parts(&head, &w.id));
        }
    }

    /// The flight for `key` came to nothing: every waiter gets an error.
    pub fn fail(&self, key: &[u8], why: &str) {
        let waiting = self.flights.borrow_mut().remove(key).unwrap_or_default();
        if let Some(second) = self.second.as_ref() {
            second.forget(key);
        }
        for w in waiting {
            w.fail(why);
        }
    }

    /// `to` answers its requests itself (it failed them): its waiters go.
    pub fn forget(&self, to: &Weak<dyn Reply>) {
        for waiting in self.flights.borrow_mut().values_mut() {
            waiting.retain(|w| !Weak::ptr_eq(&w.to, to));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Rules, Ttls};
    use crate::route::Flavour;
    use std::cell::RefCell;

    /// A reply that records what it was given.
    #[derive(Default)]
    struct Record(RefCell<Vec<(u64, String)>>);

    impl Reply for Record {
        fn answer(&self, tag: u64, _id: &[u8], parts: &[&[u8]]) {
            let text = String::from_utf8(parts.concat()).unwrap();
            self.0.borrow_mut().push((tag, text));
        }
    }

    fn answers() -> Answers {
        let ttls = Ttls {
            static_ttl: Duration::from_secs(60),
            final_ttl: Duration::from_secs(60),
        };
        let rules = Rules::new(Flavour::Ethereum, ttls, &[]);
        Answers::new(Cache::new(rules, 1 << 20, 0), None)
    }

    fn plan(at: Option<u64>) -> Plan {
        Plan {
            key: b"eth_getBlockByNumber\0[\"0x5\",false]".to_vec(),
            ttl: Duration::from_secs(60),
            params: None,
            final_in_answer: false,
            at,
            lasting: true,
        }
    }

    #[test]
    fn identical_requests_join_the_first_and_each_gets_its_own_id() {
        let a = answers();
        let r: Rc<Record> = Rc::default();
        let to: Rc<dyn Reply> = r.clone();
        let w = |id: &[u8], tag| Waiter::new(Rc::downgrade(&to), id, tag);
        let p = plan(Some(5));
        assert!(matches!(a.ask(&p, w(b"1", 0)), Found::Fetch));
        assert!(matches!(a.ask(&p, w(b"\"x\"", 7)), Found::Joined));
        assert!(a.flying(&p.key));
        let msg = br#"{"jsonrpc":"2.0","id":900,"result":{"number":"0x5"}}"#;
        let at = 22..25;
        assert_eq!(&msg[at.clone()], b"900");
        let head = a.land(&p.key, msg, at, Keep::of(&p, 10));
        assert!(head.is_some(), "block 5 is final at the node (10)");
        let got = r.0.borrow().clone();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            (
                0,
                r#"{"jsonrpc":"2.0","id":1,"result":{"number":"0x5"}}"#.into()
            )
        );
        assert_eq!(got[1].0, 7);
        assert!(got[1].1.contains(r#""id":"x""#));
        // Now kept: a hit, with no flight.
        assert!(matches!(a.ask(&p, w(b"2", 0)), Found::Hit(_)));
        assert!(!a.flying(&p.key));
    }

    #[test]
    fn an_answer_the_node_has_not_finalized_is_given_but_not_kept() {
        let a = answers();
        let r: Rc<Record> = Rc::default();
        let to: Rc<dyn Reply> = r.clone();
        let p = plan(Some(5));
        a.ask(&p, Waiter::new(Rc::downgrade(&to), b"1", 0));
        let msg = br#"{"jsonrpc":"2.0","id":900,"result":"0x1"}"#;
        assert!(a.land(&p.key, msg, 22..25, Keep::of(&p, 4)).is_none());
        assert_eq!(r.0.borrow().len(), 1);
        assert!(matches!(
            a.ask(&p, Waiter::new(Rc::downgrade(&to), b"2", 0)),
            Found::Fetch
        ));
    }

    #[test]
    fn a_failed_flight_answers_every_waiter_with_an_error_and_a_forgotten_one_gets_nothing() {
        let a = answers();
        let (r1, r2): (Rc<Record>, Rc<Record>) = (Rc::default(), Rc::default());
        let (t1, t2): (Rc<dyn Reply>, Rc<dyn Reply>) = (r1.clone(), r2.clone());
        let p = plan(None);
        a.ask(&p, Waiter::new(Rc::downgrade(&t1), b"1", 0));
        a.ask(&p, Waiter::new(Rc::downgrade(&t2), b"2", 0));
        a.forget(&Rc::downgrade(&t2));
        a.fail(&p.key, "node lost");
        assert!(r1.0.borrow()[0].1.contains("-32603"));
        assert!(r2.0.borrow().is_empty());
        assert!(!a.flying(&p.key));
    }
}
