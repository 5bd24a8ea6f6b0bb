//! The requests of a session that the node has not answered yet, by id, so
//! that when the node is lost (or the gateway stops) each gets a JSON-RPC
//! error instead of silence, and so that limits and the shutdown drain can
//! count them. One tracker for both session modes.
//!
//! - Ids come from the typed call ([`crate::jsonrpc::Call`]) of each whole
//!   request, whatever its size; an answer's id is matched by value, so a
//!   node that writes `1e2` back as `100.0` still clears it.
//! - The same id sent twice before its answer is counted twice (each answer
//!   clears one).
//! - A batch's unanswered requests fail as one array (JSON-RPC 2.0 §6).
//! - A batch whose requests went their own ways (the cache, another node)
//!   is gathered here ([`crate::call::Gather`]): its answers, in order,
//!   until it is whole; when the node is lost, its array goes out with
//!   errors in the places still waiting.

use std::borrow::Cow;

use ahash::AHashMap;

use crate::jsonrpc::error::{code, error};
use crate::jsonrpc::Call;

/// Ids tracked per session at most (beyond, new ones are not tracked).
pub const MAX: usize = 4096;

/// One request in flight: its id as the client wrote it where that differs
/// from the key (a number written `1e2`), and its batch (0: none).
#[derive(Debug)]
struct Entry {
    written: Option<Box<[u8]>>,
    batch: u32,
}

/// The requests in flight with one id, oldest first: nearly always one.
#[derive(Debug)]
enum Same {
    One(Entry),
    Many(std::collections::VecDeque<Entry>),
}

/// Requests in flight.
#[derive(Debug, Default)]
pub struct Inflight {
    /// By key ([`key`]); one allocation per request (the key), none per answer.
    ids: AHashMap<Vec<u8>, Same>,
    len: u32,
    batches: u32,
    /// Batches being gathered, by number (allocated only when there is one).
    #[allow(clippy::box_collection)] // 8 bytes in every session, not 24: most never gather
    gathers: Option<Box<Vec<(u32, crate::call::Gather)>>>,
    /// Since when requests have been waiting without a pause (none: idle).
    since: Option<std::time::Instant>,
}

/// The key an id is matched by: numbers by value (`1e2`, `100.0` and `100`
/// are one id), anything else as written. Strings, integers and `null` are
/// their own key (a string's quotes keep `"1"` apart from `1`); only other
/// number forms are rewritten.
fn key(id: &[u8]) -> Cow<'_, [u8]> {
    let Some(b'-' | b'0'..=b'9') = id.first() else {
        return Cow::Borrowed(id);
    };
    if id[1..].iter().all(u8::is_ascii_digit) {
        return Cow::Borrowed(id);
    }
    match std::str::from_utf8(id)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        Some(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Cow::Owned((n as i64).to_string().into_bytes())
        }
        Some(n) if n.is_finite() => Cow::Owned(format!("{n:e}").into_bytes()),
        _ => Cow::Borrowed(id),
    }
}

impl Inflight {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Since when some request has been waiting, without a moment when none was.
    pub fn waiting_since(&self) -> Option<std::time::Instant> {
        self.since
    }

    /// A request or batch sent to the node.
    pub fn sent(&mut self, call: &Call<'_>) {
        let batch = if call.is_batch() {
            self.batches = self.batches.wrapping_add(1).max(1);
            self.batches
        } else {
            0
        };
        for id in call.ids() {
            self.add(id, batch);
        }
    }

    /// One id sent (`batch`: 0, or a number from [`Inflight::next_batch`]).
    pub fn add(&mut self, id: &[u8], batch: u32) {
        if self.len as usize >= MAX {
            return;
        }
        let k = key(id);
        let entry = Entry {
            written: matches!(k, Cow::Owned(_)).then(|| Box::from(id)),
            batch,
        };
        match self.ids.get_mut(&*k) {
            Some(Same::One(first)) => {
                let first = std::mem::replace(
                    first,
                    Entry {
                        written: None,
                        batch: 0,
                    },
                );
                self.ids
                    .insert(k.into_owned(), Same::Many([first, entry].into()));
            }
            Some(Same::Many(list)) => list.push_back(entry),
            None => {
                self.ids.insert(k.into_owned(), Same::One(entry));
            }
        }
        self.len += 1;
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    /// A batch whose requests go their own ways, with these ids (those of
    /// its requests that have one, in order): its number, for the tags of
    /// their answers. (Its ids are added one by one as they go out.)
    pub fn gather(&mut self, ids: &[&[u8]]) -> u32 {
        let batch = self.next_batch();
        if !ids.is_empty() {
            let g = crate::call::Gather::new(ids);
            self.gathers
                .get_or_insert_with(Default::default)
                .push((batch, g));
        }
        batch
    }

    /// The answer for place `slot` of gathered batch `batch`: the batch's
    /// array when it is whole.
    pub fn fill(&mut self, batch: u32, slot: usize, parts: &[&[u8]]) -> Option<Vec<u8>> {
        let gathers = self.gathers.as_mut()?;
        let i = gathers.iter().position(|(b, _)| *b == batch)?;
        if !gathers[i].1.fill(slot, parts) {
            return None;
        }
        let (_, whole) = gathers.swap_remove(i);
        if gathers.is_empty() {
            self.gathers = None;
        }
        Some(whole.finish())
    }

    /// A batch number for requests added one by one.
    pub fn next_batch(&mut self) -> u32 {
        self.batches = self.batches.wrapping_add(1).max(1);
        self.batches
    }

    /// An answer with this id arrived: the oldest request with it is done.
    pub fn answered(&mut self, id: &[u8]) -> bool {
        let k = key(id);
        let gone = match self.ids.get_mut(&*k) {
            None => return false,
            Some(Same::One(_)) => true,
            Some(Same::Many(list)) => {
                list.pop_front();
                list.is_empty()
            }
        };
        if gone {
            self.ids.remove(&*k);
        }
        self.len -= 1;
        if self.len == 0 {
            self.since = None;
        }
        true
    }

    /// Every request still waiting, answered with `why`: the bodies of the
    /// error responses, a batch's as one array (a gathered one's with the
    /// answers it has).
    pub fn fail_all(&mut self, why: &str) -> Vec<Vec<u8>> {
        let mut gathered = Vec::new();
        for (_, mut g) in self.gathers.take().map(|g| *g).unwrap_or_default() {
            for id in g.fail(why) {
                self.answered(&id);
            }
            gathered.push(g.finish());
        }
        let mut singles = Vec::new();
        let mut batches: AHashMap<u32, Vec<Box<[u8]>>> = AHashMap::new();
        for (k, same) in self.ids.drain() {
            let entries = match same {
                Same::One(e) => vec![e],
                Same::Many(list) => list.into(),
            };
            for e in entries {
                let id = e.written.unwrap_or_else(|| k.as_slice().into());
                if e.batch == 0 {
                    singles.push(error(&id, code::INTERNAL_ERROR, why, None));
                } else {
                    batches.entry(e.batch).or_default().push(id);
                }
            }
        }
        self.len = 0;
        self.since = None;
        let arrays = batches.into_values().filter_map(|ids| {
            crate::jsonrpc::error::errors(ids.iter().map(|i| &**i), true, code::INTERNAL_ERROR, why)
        });
        let errors = singles.into_iter().chain(arrays).map(String::into_bytes);
        gathered.into_iter().chain(errors).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids_of(bodies: &[Vec<u8>]) -> Vec<String> {
        let mut out: Vec<String> = bodies
            .iter()
            .flat_map(|b| {
                let v: serde_json::Value = serde_json::from_slice(b).unwrap();
                match v {
                    serde_json::Value::Array(a) => {
                        a.into_iter().map(|e| e["id"].to_string()).collect()
                    }
                    e => vec![e["id"].to_string()],
                }
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn duplicate_ids_in_flight_are_counted_not_overwritten() {
        let mut f = Inflight::default();
        f.sent(&Call::parse(br#"{"id":1,"method":"a"}"#));
        f.sent(&Call::parse(br#"{"id":1,"method":"b"}"#));
        assert_eq!(f.len(), 2);
        assert!(f.answered(b"1"));
        let errors = f.fail_all("lost");
        assert_eq!(ids_of(&errors), ["1"]);
    }

    #[test]
    fn ids_match_by_value_when_the_node_rewrites_numbers() {
        let mut f = Inflight::default();
        f.sent(&Call::parse(br#"{"id":1e2,"method":"a"}"#));
        f.sent(&Call::parse(br#"{"id":"1e2","method":"a"}"#));
        assert!(f.answered(b"100.0"));
        assert_eq!(f.len(), 1);
        assert!(!f.answered(b"100"), "the string id is another id");
        assert!(f.answered(br#""1e2""#));
        assert!(f.is_empty());
        assert!(!f.answered(b"5"));
    }

    #[test]
    fn a_batch_fails_as_one_array_and_singles_alone() {
        let mut f = Inflight::default();
        f.sent(&Call::parse(
            br#"[{"id":1,"method":"a"},{"id":"x","method":"b"},{"method":"n"}]"#,
        ));
        f.sent(&Call::parse(br#"{"id":3,"method":"c"}"#));
        let errors = f.fail_all("node lost");
        assert_eq!(errors.len(), 2);
        assert_eq!(ids_of(&errors), ["\"x\"", "1", "3"]);
        assert!(errors.iter().any(|e| e.starts_with(b"[")));
        assert!(f.is_empty());
    }

    #[test]
    fn a_gathered_batch_goes_out_whole_in_order_or_with_errors_where_it_waits() {
        let mut f = Inflight::default();
        let b = f.gather(&[b"1", b"2", b"3"]);
        for id in [b"1", b"2", b"3"] {
            f.add(id, 0);
        }
        f.answered(b"3");
        assert_eq!(f.fill(b, 2, &[br#"{"id":3}"#]), None);
        f.answered(b"1");
        assert_eq!(f.fill(b, 0, &[br#"{"id":1}"#]), None);
        let errors = f.fail_all("node lost");
        assert_eq!(errors.len(), 1, "one array, not a single error besides");
        let v: serde_json::Value = serde_json::from_slice(&errors[0]).unwrap();
        assert_eq!(v[0]["id"], 1);
        assert_eq!(v[1]["id"], 2);
        assert_eq!(v[1]["error"]["code"], -32603);
        assert_eq!(v[2]["id"], 3);
        assert!(f.is_empty());
        let b = f.gather(&[b"7"]);
        f.add(b"7", 0);
        f.answered(b"7");
        assert_eq!(f.fill(b, 0, &[b"{}"]), Some(b"[{}]".to_vec()));
    }
}
