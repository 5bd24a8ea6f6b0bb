//! Batches: each request goes where it must (its role, the cache), and the
//! answers come back as one array in the client's order (JSON-RPC 2.0 §6:
//! one answer per request with an id, none for notifications).
//!
//! - [`Gather`]: the answers of one batch, by place, until all are in.
//! - [`tag`] / [`untag`]: a batch's number and a request's place in it, in
//!   the one `u64` an answer's way carries back (0: a single request).
//! - [`write_batch`]: requests sent as one array, each as the gateway read it.
//! - [`match_answers`]: a node's array answer, element by element, back to
//!   the requests of the sub-batch it answers.

use crate::jsonrpc::Request;

/// The tag of the request at `slot` of batch `batch` (batches count from 1).
pub fn tag(batch: u32, slot: usize) -> u64 {
    (u64::from(batch.max(1)) << 32) | slot as u64
}

/// A tag's batch and slot; `None` for a single request (tag 0).
pub fn untag(tag: u64) -> Option<(u32, usize)> {
    (tag != 0).then_some(((tag >> 32) as u32, (tag & 0xffff_ffff) as usize))
}

/// One place of a batch: its request's id, and its answer once it came.
type Slot = (Box<[u8]>, Option<Box<[u8]>>);

/// The answers of one batch, by the place of their request among those
/// with an id (each place knows its request's id, to answer it with an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gather {
    slots: Vec<Slot>,
    left: usize,
}

impl Gather {
    /// A batch whose requests with an id have these ids, in order.
    pub fn new(ids: &[&[u8]]) -> Gather {
        Gather {
            slots: ids.iter().map(|id| (Box::from(*id), None)).collect(),
            left: ids.len(),
        }
    }

    /// The answer for `slot` (`parts` joined); a second one for the same
    /// place is dropped. True when every place has its answer.
    pub fn fill(&mut self, slot: usize, parts: &[&[u8]]) -> bool {
        if let Some((_, a @ None)) = self.slots.get_mut(slot) {
            *a = Some(parts.concat().into_boxed_slice());
            self.left -= 1;
        }
        self.left == 0
    }

    pub fn is_done(&self) -> bool {
        self.left == 0
    }

    /// The places still without an answer.
    pub fn missing(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (_, a))| a.is_none())
            .map(|(i, _)| i)
    }

    /// Every place still without an answer gets the gateway's error
    /// (-32603, `why`); their ids are returned.
    pub fn fail(&mut self, why: &str) -> Vec<Box<[u8]>> {
        let mut failed = Vec::new();
        for (id, a) in self.slots.iter_mut().filter(|(_, a)| a.is_none()) {
            let e = crate::jsonrpc::error::error(
                id,
                crate::jsonrpc::error::code::INTERNAL_ERROR,
                why,
                None,
            );
            *a = Some(e.into_bytes().into_boxed_slice());
            failed.push(id.clone());
        }
        self.left = 0;
        failed
    }

    /// The answer in place `slot`, if it came.
    pub fn answer(&self, slot: usize) -> Option<&[u8]> {
        self.slots.get(slot)?.1.as_deref()
    }

    /// The array of answers, in order (places without one are left out).
    pub fn finish(&self) -> Vec<u8> {
        let len: usize = self
            .slots
            .iter()
            .filter_map(|(_, a)| a.as_ref())
            .map(|a| a.len() + 1)
            .sum();
        let mut out = Vec::with_capacity(len + 2);
        out.push(b'[');
        for a in self.slots.iter().filter_map(|(_, a)| a.as_ref()) {
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(a);
        }
        out.push(b']');
        out
    }
}

/// `requests` as one array, each re-serialized as the gateway read it.
pub fn write_batch<'r, 'a: 'r>(out: &mut Vec<u8>, requests: impl Iterator<Item = &'r Request<'a>>) {
    out.push(b'[');
    for (i, r) in requests.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        r.write(out, r.id, r.params);
    }
    out.push(b']');
}

/// A node's answer to a sub-batch whose requests have ids `ids` (in the
/// order sent): the element answering each, matched by id (a repeated id:
/// in order). `None` where the node gave none (or did not answer with an array).
pub fn match_answers<'a>(answer: &'a [u8], ids: &[&[u8]]) -> Vec<Option<&'a [u8]>> {
    let mut out = vec![None; ids.len()];
    if crate::jsonrpc::kind(answer) != crate::jsonrpc::Kind::Batch {
        return out;
    }
    for e in crate::jsonrpc::elements(answer) {
        let Some(id) = crate::jsonrpc::member(e, b"id") else {
            continue;
        };
        if let Some(i) = (0..ids.len()).find(|&i| out[i].is_none() && ids[i] == id) {
            out[i] = Some(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::Call;

    #[test]
    fn answers_come_back_in_the_clients_order_whatever_order_they_arrive_in() {
        let mut g = Gather::new(&[b"1", b"2", b"3"]);
        assert!(!g.fill(2, &[b"{\"id\":3}"]));
        assert!(!g.fill(0, &[b"{\"id\":", b"1}"]));
        assert!(!g.fill(0, &[b"{\"id\":9}"]), "a second answer is dropped");
        assert_eq!(g.missing().collect::<Vec<_>>(), [1]);
        assert!(g.fill(1, &[b"{\"id\":2}"]));
        assert_eq!(g.finish(), br#"[{"id":1},{"id":2},{"id":3}]"#.to_vec());
        assert_eq!(Gather::new(&[]).finish(), b"[]".to_vec());
        let mut g = Gather::new(&[b"1", b"\"b\""]);
        g.fill(0, &[b"{\"id\":1}"]);
        assert_eq!(g.fail("node lost"), vec![Box::from(&b"\"b\""[..])]);
        let v: serde_json::Value = serde_json::from_slice(&g.finish()).unwrap();
        assert_eq!(v[1]["id"], "b");
        assert_eq!(v[1]["error"]["code"], -32603);
    }

    #[test]
    fn tags_carry_a_batch_and_a_place() {
        assert_eq!(untag(0), None);
        assert_eq!(untag(tag(7, 3)), Some((7, 3)));
        assert_eq!(untag(tag(u32::MAX, 0)), Some((u32::MAX, 0)));
        assert_ne!(tag(0, 0), 0, "batch numbers start at 1");
    }

    #[test]
    fn a_sub_batch_is_written_as_read_and_its_answers_matched_by_id() {
        let call = Call::parse(
            br#"[{"jsonrpc":"2.0","id":1,"method":"a","x":1},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","id":"1","method":"b","params":[2]}]"#,
        );
        let mut out = Vec::new();
        write_batch(&mut out, call.requests());
        assert_eq!(
            out,
            br#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","method":"b","id":"1","params":[2]}]"#.to_vec()
        );
        let answer = br#"[{"id":"1","result":2},{"id":1,"result":1},{"id":5,"result":0}]"#;
        let got = match_answers(answer, &[b"1", b"\"1\"", b"1"]);
        assert_eq!(got[0], Some(&br#"{"id":1,"result":1}"#[..]));
        assert_eq!(got[1], Some(&br#"{"id":"1","result":2}"#[..]));
        assert_eq!(got[2], None, "the node gave no second answer with id 1");
        assert_eq!(match_answers(br#"{"id":null,"error":{}}"#, &[b"1"]), [None]);
    }
}
