//! Properties checked by the fuzz targets (`fuzz/`) and by the seed replay
//! test (`tests/fuzz_seeds.rs`). Each panics when the property fails.
//!
//! Kept in the library so a fuzz target is three lines and the same checks
//! run on stable in the ordinary test suite.

use crate::ws::codec::{Decoder, Limits, Role, Step};
use crate::ws::frame::{FrameHeader, Parse};
use crate::ws::handshake::{self, parse_head, validate_upgrade, HEADER_ARRAY};

/// Frame header parsing never panics, and a parsed header re-encodes to the same bytes
/// (when its length used the minimal encoding).
pub fn frame_header(data: &[u8]) {
    if let Ok(Parse::Done(h, n)) = FrameHeader::parse(data) {
        assert!(n <= data.len() && n <= 14);
        let mut out = [0u8; 14];
        let m = h.encode(&mut out);
        if m == n {
            assert_eq!(&out[..m], &data[..n]);
        }
    }
}

/// The relay decoder gives the same control frames and error whether its
/// input comes whole or in pieces of any size, and the same forwarded bytes
/// (after an error, one forwarded stream is a prefix of the other: payload
/// streams through as it arrives, so more pieces may mean more of the frame
/// went out before the bad byte); it never claims more bytes than it was given.
pub fn decoder(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let role = if split & 1 == 0 {
        Role::Client
    } else {
        Role::Server
    };
    let limits = Limits {
        max_frame: 4096,
        max_message: 8192,
    };
    let whole = run(role, limits, rest, rest.len().max(1));
    let pieces = run(role, limits, rest, (split as usize >> 1) % 17 + 1);
    assert_eq!(whole.1, pieces.1);
    assert_eq!(whole.2, pieces.2);
    if whole.2.is_none() {
        assert_eq!(whole.0, pieces.0);
    } else {
        let (short, long) = if whole.0.len() <= pieces.0.len() {
            (&whole.0, &pieces.0)
        } else {
            (&pieces.0, &whole.0)
        };
        assert!(long.starts_with(short));
    }
}

type Outcome = (
    Vec<u8>,
    Vec<Vec<u8>>,
    Option<crate::ws::frame::ProtocolError>,
);

fn run(role: Role, limits: Limits, input: &[u8], chunk: usize) -> Outcome {
    let mut d = Decoder::new(role, limits);
    let mut fwd = Vec::new();
    let mut ctl = Vec::new();
    let mut pending = Vec::new();
    for piece in input.chunks(chunk) {
        pending.extend_from_slice(piece);
        let mut at = 0;
        loop {
            match d.step(&pending[at..]) {
                Ok(Step::Forward(n)) => {
                    assert!(n > 0 && at + n <= pending.len());
                    fwd.extend_from_slice(&pending[at..at + n]);
                    at += n;
                }
                Ok(Step::Control(c, n)) => {
                    assert!(at + n <= pending.len());
                    ctl.push(c.payload().to_vec());
                    at += n;
                }
                Ok(Step::NeedMore) => break,
                Err(e) => return (fwd, ctl, Some(e)),
            }
        }
        pending.drain(..at);
        assert!(pending.len() <= 14 + 125, "carry-over stays bounded");
    }
    (fwd, ctl, None)
}

/// Request head parsing and upgrade validation never panic, and a refusal
/// always maps to a 4xx status.
pub fn request_head(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
    match parse_head(data, &mut headers, 16384, 64) {
        Ok(Parse::Done(head, n)) => {
            assert!(n <= data.len());
            match validate_upgrade(&head) {
                Ok(up) => {
                    let _ = handshake::accept_key(up.key);
                }
                Err(e) => assert!((400..500).contains(&e.status())),
            }
        }
        Ok(Parse::NeedMore(_)) => {}
        Err(e) => assert!((400..500).contains(&e.status())),
    }
}

/// HTTP request framing and the chunked decoder never panic; a refusal has
/// a 4xx or 501 status; a chunked body decodes to the same bytes and length
/// whether fed at once or in pieces, never over its limit, and never
/// consumes more than it was given.
pub fn http_body(data: &[u8]) {
    use crate::h1::{framing, BodyKind, ChunkLimits, Chunked};
    let mut headers = [httparse::EMPTY_HEADER; HEADER_ARRAY];
    let Ok(Parse::Done(head, n)) = parse_head(data, &mut headers, 16384, 64) else {
        return;
    };
    let kind = match framing(&head, false) {
        Ok(k) => k,
        Err(e) => return assert!(matches!(e.status(), 400..=499 | 501)),
    };
    if kind != BodyKind::Chunked {
        return;
    }
    let rest = &data[n..];
    let limits = ChunkLimits::new(4096);
    let whole = {
        let mut d = Chunked::new(limits);
        let mut body = Vec::new();
        d.feed(rest, &mut body)
            .map(|used| (body, used, d.is_done()))
    };
    let piece = 1 + rest.first().map_or(0, |&b| b as usize % 7);
    let pieces = {
        let mut d = Chunked::new(limits);
        let mut body = Vec::new();
        let mut used = 0;
        let mut out = Ok(());
        for p in rest.chunks(piece) {
            match d.feed(p, &mut body) {
                Ok(u) => {
                    assert!(u <= p.len());
                    used += u;
                    if d.is_done() {
                        break;
                    }
                }
                Err(e) => {
                    out = Err(e);
                    break;
                }
            }
        }
        out.map(|()| (body, used, d.is_done()))
    };
    match (&whole, &pieces) {
        (Ok((b, used, done)), Ok(p)) => {
            assert!(*used <= rest.len() && b.len() <= 4096);
            if *done {
                assert_eq!((b, used, done), (&p.0, &p.1, &p.2));
            }
        }
        (Err(e), Err(f)) => assert_eq!(e.status(), f.status()),
        _ => panic!("at once {whole:?}, in pieces of {piece} {pieces:?}"),
    }
}

/// A node's response parser never panics.
pub fn upstream_response(data: &[u8]) {
    let _ =
        handshake::parse_upstream_response(data, "dGhlIHNhbXBsZSBub25jZQ==", Some(b"a, b"), 16384);
}

/// The JSON-RPC peeker (hand-written, on every client message) never panics,
/// returns slices of its input, and agrees with a full parser (serde_json)
/// on well-formed input: an object's `id`, `params`, `result` and `error` are
/// the values serde_json finds (the last of duplicate keys, as serde_json
/// keeps), and an array's elements are its elements.
pub fn jsonrpc(data: &[u8]) {
    use crate::jsonrpc::{elements, kind, member, param, peek, unquote};
    use serde_json::Value;
    let within = |part: &[u8]| {
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        let p = part.as_ptr() as usize;
        assert!(p >= start && p + part.len() <= end, "a slice of the input");
    };
    let _ = kind(data);
    let peeked = peek(data);
    if let Some(p) = peeked {
        for v in [p.method, p.id, p.params, p.result, p.error]
            .into_iter()
            .flatten()
        {
            within(v);
        }
        if let Some(params) = p.params {
            for i in 0..3 {
                if let Some(v) = param(params, i) {
                    within(v);
                    let _ = unquote(v);
                }
            }
            if let Some(v) = member(params, b"subscription") {
                within(v);
            }
        }
    }
    let items: Vec<&[u8]> = elements(data).collect();
    for e in &items {
        within(e);
        let _ = peek(e);
    }
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(map)) => {
            let p = peeked.expect("a well-formed object is peeked");
            for (key, raw) in [
                ("id", p.id),
                ("params", p.params),
                ("result", p.result),
                ("error", p.error),
            ] {
                match (map.get(key), raw) {
                    (Some(v), Some(raw)) => {
                        let parsed: Value = serde_json::from_slice(raw).expect("a whole value");
                        assert_eq!(&parsed, v, "member {key}");
                    }
                    (None, None) => {}
                    (v, raw) => panic!("member {key}: serde_json {v:?}, peek {raw:?}"),
                }
            }
        }
        Ok(Value::Array(values)) => {
            assert_eq!(items.len(), values.len(), "array length");
            for (raw, v) in items.iter().zip(&values) {
                let parsed: Value = serde_json::from_slice(raw).expect("a whole element");
                assert_eq!(&parsed, v);
            }
        }
        _ => {}
    }
}

/// The response cache's decisions never panic on any request; a request the
/// cache may answer has an id; params spaced otherwise make the same key;
/// the params it fills in are valid JSON; and `compact` keeps valid JSON
/// valid (and equal as a value), and is idempotent.
pub fn cache_rules(data: &[u8]) {
    use crate::cache::rules::{compact, plan, Rules, Ttls};
    use crate::route::{ChainView, Flavour};
    struct View;
    impl ChainView for View {
        fn head(&self) -> u64 {
            1_000
        }
        fn height_of(&self, _: &[u8]) -> Option<u64> {
            None
        }
        fn finalized(&self) -> u64 {
            998
        }
        fn finalized_hash(&self) -> Option<std::rc::Rc<[u8]>> {
            Some(std::rc::Rc::from(&b"0xfeed"[..]))
        }
    }
    let once = compact(data);
    assert_eq!(compact(&once), once, "idempotent");
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let w: serde_json::Value = serde_json::from_slice(&once).expect("still JSON");
        assert_eq!(v, w, "the same value");
    }
    let ttls = Ttls {
        static_ttl: std::time::Duration::from_secs(1),
        final_ttl: std::time::Duration::from_secs(1),
    };
    for flavour in [Flavour::Substrate, Flavour::Ethereum] {
        let rules = Rules::new(flavour, ttls, &[]);
        let call = crate::jsonrpc::Call::parse(data);
        for req in call.requests() {
            let Some(p) = plan(&rules, req, &View) else {
                continue;
            };
            assert!(req.id.is_some(), "only calls with ids are answered");
            if let Some(params) = &p.params {
                serde_json::from_slice::<serde_json::Value>(params)
                    .expect("filled params are JSON");
            }
        }
    }
}

/// Any JSON value, recording whether some object in it names a member
/// twice (serde_json's `Value` keeps the last silently).
struct Dups(bool);

impl<'de> serde::Deserialize<'de> for Dups {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Dups;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Dups, E> {
                Ok(Dups(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Dups, E> {
                Ok(Dups(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Dups, E> {
                Ok(Dups(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Dups, E> {
                Ok(Dups(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<Dups, E> {
                Ok(Dups(false))
            }
            fn visit_unit<E>(self) -> Result<Dups, E> {
                Ok(Dups(false))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Dups, A::Error> {
                let mut any = false;
                while let Some(Dups(d)) = a.next_element()? {
                    any |= d;
                }
                Ok(Dups(any))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Dups, A::Error> {
                let mut names = std::collections::HashSet::new();
                let mut any = false;
                while let Some((k, Dups(d))) = m.next_entry::<String, Dups>()? {
                    any |= d || !names.insert(k);
                }
                Ok(Dups(any))
            }
        }
        d.deserialize_any(V)
    }
}

/// An object's members in order, duplicates kept.
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry::<String, serde_json::Value>()? {
                    out.push(e);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// One request as a lenient node reads it (Go's encoding/json; Jackson
/// with case-insensitive properties): member names unescaped and matched
/// ignoring case (with Go's Unicode folds), the last of duplicates winning,
/// bytes after the first value ignored. The fuzz property compares the
/// gateway's reading with it; the tests' mock node reads requests this way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeReading {
    pub method: Option<String>,
    pub id: Option<serde_json::Value>,
    pub params: Option<serde_json::Value>,
}

impl NodeReading {
    /// The id to answer with, as JSON.
    pub fn id_json(&self) -> String {
        self.id.as_ref().map_or("null".into(), |v| v.to_string())
    }

    fn of(members: Members) -> NodeReading {
        // Go's folding of a member name (`ToUpper(ToLower(r))`), lower-cased.
        let fold = |name: &str| -> String {
            name.chars()
                .map(|c| match c {
                    '\u{212A}' => 'k',
                    '\u{017F}' => 's',
                    '\u{0130}' | '\u{0131}' => 'i',
                    c => c.to_ascii_lowercase(),
                })
                .collect()
        };
        let mut r = NodeReading::default();
        for (k, v) in members.0 {
            match fold(&k).as_str() {
                "method" => r.method = v.as_str().map(str::to_string),
                "id" => r.id = Some(v),
                "params" => r.params = Some(v),
                _ => {}
            }
        }
        r
    }
}

/// A message as a lenient node reads it: whether it is a batch, and its
/// requests; `None` when even such a node cannot read it.
pub fn node_reading(msg: &[u8]) -> Option<(bool, Vec<NodeReading>)> {
    let mut de = serde_json::Deserializer::from_slice(msg);
    let start = msg.iter().find(|b| !b.is_ascii_whitespace())?;
    if *start == b'[' {
        let list: Vec<Members> = serde::Deserialize::deserialize(&mut de).ok()?;
        Some((true, list.into_iter().map(NodeReading::of).collect()))
    } else {
        let one: Members = serde::Deserialize::deserialize(&mut de).ok()?;
        Some((false, vec![NodeReading::of(one)]))
    }
}

/// One reading of a client message (issue 20): whatever the strict parse
/// accepts, serde_json accepts; what serde_json accepts with no member named
/// twice, the strict parse accepts; and for every request the gateway would
/// forward, a last-wins reading (serde_json, Go) and a case-insensitive one
/// (Go's encoding/json, with its Unicode folds) find the method, id and
/// params the gateway decided on. No input is read two ways.
pub fn jsonrpc_strict(data: &[u8]) {
    use crate::jsonrpc::json::{check, Invalid};
    use crate::jsonrpc::Call;
    use serde_json::Value;
    let value = serde_json::from_slice::<Value>(data);
    let dups = serde_json::from_slice::<Dups>(data).map(|d| d.0);
    match check(data) {
        Ok(()) => {
            assert!(value.is_ok(), "accepted what serde_json refuses");
            assert_eq!(dups.ok(), Some(false), "accepted a member named twice");
        }
        Err(Invalid::DuplicateMember) => assert_eq!(dups.ok(), Some(true)),
        Err(_) => assert!(
            value.is_err() || dups.is_err(),
            "refused what serde_json reads"
        ),
    }
    let call = Call::parse(data);
    if call.refusal().is_some() {
        return;
    }
    let Ok(value) = value else {
        panic!("a call the gateway forwards is JSON");
    };
    let objects: Vec<&Value> = match &value {
        Value::Array(items) => items.iter().collect(),
        v => vec![v],
    };
    assert_eq!(objects.len(), call.len());
    let (_, go) = node_reading(data).expect("a lenient node reads what the gateway forwards");
    for (i, (req, object)) in call.requests().zip(objects).enumerate() {
        let raw =
            |v: Option<&[u8]>| v.map(|b| serde_json::from_slice::<Value>(b).expect("a value"));
        let ours = (
            req.method()
                .map(|m| String::from_utf8(m.to_vec()).expect("UTF-8")),
            raw(req.id),
            raw(req.params),
        );
        // Last wins (serde_json's map).
        let last = (
            object["method"].as_str().map(str::to_string),
            object.get("id").cloned(),
            object.get("params").cloned(),
        );
        assert_eq!(ours, last, "the gateway and a last-wins node differ");
        // Case-insensitive, in order, last wins (Go).
        let g = &go[i];
        let go = (g.method.clone(), g.id.clone(), g.params.clone());
        assert_eq!(ours, go, "the gateway and a case-insensitive node differ");
    }
}
