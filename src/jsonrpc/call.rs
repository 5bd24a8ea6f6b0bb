//! A client message parsed once: [`Call::parse`] peeks at the message (and,
//! for a batch, at each element) and every policy reads the result instead
//! of looking at the bytes again: admission (methods, costs, batch size),
//! routing (method and block argument), the in-flight tracker (ids), the
//! per-session limits and the shared-connection id rewriter (what a request
//! does to subscriptions, by the one rule in [`Sub::of`]).
//!
//! Strict: the message must pass [`json::check`] (one meaning for every
//! JSON parser), member names are read unescaped, a name that only a
//! case-insensitive parser takes for `id`, `method`, `params` or `jsonrpc`
//! makes the request invalid, and the method is unescaped before any rule
//! reads it. What is not valid is answered by the gateway
//! ([`Call::refusal`]), never forwarded for a node to read its own way.
//!
//! Borrowed from the message; a single request without escapes in its
//! method allocates nothing.

use std::borrow::Cow;

use super::error::{code, error};
use super::json;
use super::peek::{kind, param, unquote, Kind};

/// What a request does to subscriptions. One rule for both session modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub<'a> {
    None,
    /// Opens one: `*_subscribe*`, `eth_subscribe`, `*submitAndWatch*`,
    /// `*_follow` (the answer's result is the subscription id).
    Opens,
    /// Ends the subscription whose id is the first parameter:
    /// `*unsubscribe*`, `*unwatch*`, `*unfollow*`.
    Ends(Option<&'a [u8]>),
    /// Works on the subscription whose id is the first parameter (the
    /// `chainHead_*` calls on a follow subscription).
    Uses(Option<&'a [u8]>),
}

impl<'a> Sub<'a> {
    /// The rule, from the method name and the raw params.
    pub fn of(method: &[u8], params: Option<&'a [u8]>) -> Sub<'a> {
        // Every rule below needs a `b` (subscribe), a `w` (unwatch,
        // submitAndWatch) or an `f` (follow), or the chainHead_ prefix:
        // most methods are told apart by one scan.
        if !method.starts_with(b"chainHead_") && memchr::memchr3(b'b', b'w', b'f', method).is_none()
        {
            return Sub::None;
        }
        let first = || params.and_then(|p| param(p, 0));
        if is_unsubscribe(method) {
            Sub::Ends(first())
        } else if opens(method) {
            Sub::Opens
        } else if method.starts_with(b"chainHead_") {
            Sub::Uses(first())
        } else {
            Sub::None
        }
    }

    /// The subscription id this call names (to end or to use), if any.
    pub fn names(self) -> Option<&'a [u8]> {
        match self {
            Sub::Ends(id) | Sub::Uses(id) => id,
            _ => None,
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn is_unsubscribe(method: &[u8]) -> bool {
    contains(method, b"unsubscribe")
        || contains(method, b"unwatch")
        || contains(method, b"unfollow")
}

fn opens(method: &[u8]) -> bool {
    !is_unsubscribe(method)
        && (contains(method, b"subscribe")
            || method.ends_with(b"submitAndWatchExtrinsic")
            || method.ends_with(b"_submitAndWatch")
            || method.ends_with(b"_follow"))
}

/// Methods that change state or submit something (never cached, never
/// sent twice); `*` ends a prefix.
const WRITES: &[&str] = &[
    "author_submit*",
    "author_insertKey",
    "author_rotateKeys",
    "author_removeExtrinsic",
    "transaction_v1_*",
    "transactionWatch_v1_*",
    "offchain_localStorageSet",
    "system_addReservedPeer",
    "system_removeReservedPeer",
    "system_addLogFilter",
    "system_resetLogFilter",
    "eth_sendRawTransaction",
    "eth_sendTransaction",
    "eth_sign*",
    "personal_*",
    "admin_*",
    "miner_*",
    "debug_set*",
    "evm_*",
    "anvil_*",
    "hardhat_*",
    "dev_*",
];

/// Whether `method` changes state or submits something: never cached,
/// never repeated.
pub fn writes(method: &[u8]) -> bool {
    WRITES.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => method.starts_with(prefix.as_bytes()),
        None => method == p.as_bytes(),
    })
}

/// The method that ends a subscription opened by `method`, if it opens one
/// (`chain_subscribeNewHeads` -> `chain_unsubscribeNewHeads`).
pub fn unsubscribe_method(method: &str) -> Option<String> {
    if !opens(method.as_bytes()) {
        return None;
    }
    if method == "eth_subscribe" {
        return Some("eth_unsubscribe".into());
    }
    if let Some(i) = method.find("subscribe") {
        return Some(format!("{}unsubscribe{}", &method[..i], &method[i + 9..]));
    }
    if let Some(prefix) = method.strip_suffix("submitAndWatchExtrinsic") {
        return Some(format!("{prefix}unwatchExtrinsic"));
    }
    if let Some(prefix) = method.strip_suffix("_submitAndWatch") {
        return Some(format!("{prefix}_unwatch"));
    }
    method
        .strip_suffix("_follow")
        .map(|prefix| format!("{prefix}_unfollow"))
}

/// An `id` JSON-RPC 2.0 allows: a string, a number or null (§4).
pub fn valid_id(raw: &[u8]) -> bool {
    matches!(raw.first(), Some(b'"' | b'-' | b'0'..=b'9')) || raw == b"null"
}

/// The member names of a request object.
const NAMES: [&[u8]; 4] = [b"jsonrpc", b"id", b"method", b"params"];

/// True for a member name that is not one of [`NAMES`] but that a
/// case-insensitive parser takes for one: Go's encoding/json matches names
/// ignoring case, with Unicode folding (`K` U+212A is `k`, `ſ` U+017F is
/// `s`, `İ` U+0130 and `ı` U+0131 are `i`); Jackson can be set to.
fn passes_for_a_name(name: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(name) else {
        return false;
    };
    let mut folded = [0u8; 7];
    let mut n = 0;
    for c in text.chars() {
        let c = match c {
            '\u{212A}' => 'k',
            '\u{017F}' => 's',
            '\u{0130}' | '\u{0131}' => 'i',
            c if c.is_ascii() => c.to_ascii_lowercase(),
            _ => return false,
        };
        if n == folded.len() {
            return false;
        }
        folded[n] = c as u8;
        n += 1;
    }
    NAMES.contains(&&folded[..n]) && !NAMES.contains(&name)
}

/// One request (or notification) of a call, as every parser reads it: the
/// message passed [`json::check`] (no member named twice), member names
/// are compared after unescaping, and the method is unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The request's bytes (the whole message, or one batch element).
    pub raw: &'a [u8],
    /// The raw `jsonrpc` value.
    pub jsonrpc: Option<&'a [u8]>,
    /// Raw JSON; `None` for a notification.
    pub id: Option<&'a [u8]>,
    /// Unescaped, without quotes (`author_rotat\u0065Keys` is `author_rotateKeys`).
    method: Option<Cow<'a, [u8]>>,
    /// The raw `method` token, quotes and escapes as sent.
    method_raw: Option<&'a [u8]>,
    pub params: Option<&'a [u8]>,
    pub sub: Sub<'a>,
    /// Why it is not a request the gateway forwards (answered -32600).
    pub invalid: Option<&'static str>,
    /// Its `id` is one the gateway can answer with (present once, valid).
    id_known: bool,
}

impl<'a> Request<'a> {
    fn empty() -> Request<'a> {
        Request {
            raw: b"",
            jsonrpc: None,
            id: None,
            method: None,
            method_raw: None,
            params: None,
            sub: Sub::None,
            invalid: None,
            id_known: true,
        }
    }

    /// One member, as the strict check goes (`ids`: ids seen so far).
    fn member(&mut self, key: &'a [u8], value: &'a [u8], ids: &mut u32) {
        let name = json::unescape(key);
        match &*name {
            b"jsonrpc" => self.jsonrpc = Some(value),
            b"id" => {
                *ids += 1;
                self.id = Some(value);
            }
            b"method" => self.method_raw = Some(value),
            b"params" => self.params = Some(value),
            other if passes_for_a_name(other) => {
                self.invalid.get_or_insert(
                    "Invalid Request: a member name differs from a JSON-RPC one only in case",
                );
            }
            _ => {}
        }
    }

    /// The request whose members were told, its bytes `raw`; `twice`: an
    /// object in it names a member twice.
    fn finish(mut self, raw: &'a [u8], twice: bool, ids: u32) -> Request<'a> {
        self.raw = raw;
        if kind(raw) != Kind::Object {
            self.invalid = Some("Invalid Request: not an object");
            self.id = None;
            return self;
        }
        self.id_known = ids <= 1 && self.id.map_or(true, valid_id);
        if twice {
            self.invalid = Some("Invalid Request: a member is named twice");
        } else if !self.id_known {
            self.invalid = Some("Invalid Request: id must be a string, a number or null");
        }
        match self.method_raw.and_then(unquote) {
            Some(m) => self.method = Some(json::unescape(m)),
            None => {
                self.invalid
                    .get_or_insert("Invalid Request: method must be a string");
            }
        }
        if self.invalid.is_none() {
            let method = self.method.as_deref().unwrap_or_default();
            // The method borrows from `self`: the rule reads it, the result
            // keeps only slices of the params.
            self.sub = Sub::of(method, self.params);
        }
        self
    }

    /// The method, unescaped.
    pub fn method(&self) -> Option<&[u8]> {
        self.method.as_deref()
    }

    /// A request the gateway may forward and act on.
    pub fn is_valid(&self) -> bool {
        self.invalid.is_none()
    }

    /// The id to answer with: its own, or `null` when it has none the
    /// gateway can tell (none, an invalid one, or two).
    pub fn reply_id(&self) -> &'a [u8] {
        match self.id {
            Some(id) if self.id_known => id,
            _ => b"null",
        }
    }

    /// The request as the gateway read it, re-serialized with `id` as its
    /// id (`None`: a notification) and `params` as its params: `jsonrpc`,
    /// `method`, `id` and `params` only, each as sent. What a node reads
    /// of this is what the gateway decided on, whatever else the client put
    /// in the object. Parts to be joined, for a frame written in one go.
    pub fn parts<'s>(&'s self, id: Option<&'s [u8]>, params: Option<&'s [u8]>) -> [&'s [u8]; 9] {
        let (open, version, method_key): (&[u8], &[u8], &[u8]) = match self.jsonrpc {
            Some(v) => (br#"{"jsonrpc":"#, v, br#","method":"#),
            None => (b"{", b"", br#""method":"#),
        };
        let (id_key, id) = match id {
            Some(id) => (&br#","id":"#[..], id),
            None => (&b""[..], &b""[..]),
        };
        let (params_key, params) = match params {
            Some(p) => (&br#","params":"#[..], p),
            None => (&b""[..], &b""[..]),
        };
        let method = self.method_raw.unwrap_or(b"null");
        [
            open, version, method_key, method, id_key, id, params_key, params, b"}",
        ]
    }

    /// [`Request::parts`] joined.
    pub fn write(&self, out: &mut Vec<u8>, id: Option<&[u8]>, params: Option<&[u8]>) {
        for part in self.parts(id, params) {
            out.extend_from_slice(part);
        }
    }
}

/// A client message, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub raw: &'a [u8],
    pub kind: Kind,
    /// Not JSON at all (then there are no requests): answered -32700.
    pub unreadable: Option<json::Invalid>,
    first: Option<Request<'a>>,
    rest: Vec<Request<'a>>,
}

impl<'a> Call<'a> {
    pub fn parse(raw: &'a [u8]) -> Call<'a> {
        let kind = kind(raw);
        // One pass: the strict check tells each request's members as it
        // goes (a batch's elements each on their own).
        let (mut first, mut rest) = (None, Vec::new());
        let (mut building, mut ids) = (Request::empty(), 0);
        let checked = json::check_visit(raw, &mut |seen| match seen {
            json::Seen::Member(key, value) => building.member(key, value, &mut ids),
            json::Seen::Request(bytes, twice) => {
                let req = std::mem::replace(&mut building, Request::empty());
                let req = req.finish(bytes, twice, std::mem::take(&mut ids));
                match first {
                    None => first = Some(req),
                    Some(_) => rest.push(req),
                }
            }
        });
        let unreadable = match checked {
            Ok(()) | Err(json::Invalid::DuplicateMember) => None,
            Err(e) => Some(e),
        };
        if unreadable.is_some() || kind == Kind::Other {
            (first, rest) = (None, Vec::new());
        }
        Call {
            raw,
            kind,
            unreadable,
            first,
            rest,
        }
    }

    pub fn is_batch(&self) -> bool {
        self.kind == Kind::Batch
    }

    /// The requests: one for a single message, each element for a batch.
    pub fn requests(&self) -> impl Iterator<Item = &Request<'a>> {
        self.first.iter().chain(self.rest.iter())
    }

    pub fn len(&self) -> usize {
        self.first.as_ref().map_or(0, |_| 1 + self.rest.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The single request of a message that is not a batch.
    pub fn single(&self) -> Option<&Request<'a>> {
        (self.kind == Kind::Object)
            .then_some(self.first.as_ref())
            .flatten()
    }

    /// The ids of requests that expect an answer.
    pub fn ids(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.requests()
            .filter(|r| r.is_valid())
            .filter_map(|r| r.id)
    }

    /// The gateway's answer to a message it will not forward as a whole
    /// (`None`: every request in it is valid). Not JSON: -32700 with a null
    /// id; an empty batch or a bare value: -32600; otherwise -32600 for
    /// each invalid request with its id where it has one the gateway can
    /// tell, and (in a batch, which goes to the node whole or not at all)
    /// -32600 for the valid ones beside them. Notifications get nothing.
    pub fn refusal(&self) -> Option<String> {
        if let Some(e) = self.unreadable {
            return Some(error(b"null", code::PARSE_ERROR, e.reason(), None));
        }
        if self.is_empty() {
            return Some(error(
                b"null",
                code::INVALID_REQUEST,
                "Invalid Request",
                None,
            ));
        }
        if self.requests().all(Request::is_valid) {
            return None;
        }
        let answers: Vec<String> = self
            .requests()
            .filter(|r| !r.is_valid() || r.id.is_some())
            .map(|r| {
                let why = r
                    .invalid
                    .unwrap_or("Invalid Request: the batch holds an invalid request");
                error(r.reply_id(), code::INVALID_REQUEST, why, None)
            })
            .collect();
        match (self.is_batch(), answers.len()) {
            (_, 0) => None,
            (false, _) => answers.into_iter().next(),
            (true, _) => Some(format!("[{}]", answers.join(","))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_what_a_call_does_to_subscriptions() {
        let sub = |m: &str| Sub::of(m.as_bytes(), Some(br#"["0xab",1]"#));
        assert_eq!(sub("chain_subscribeNewHeads"), Sub::Opens);
        assert_eq!(sub("chain_subscribeNewHead"), Sub::Opens);
        assert_eq!(sub("eth_subscribe"), Sub::Opens);
        assert_eq!(sub("author_submitAndWatchExtrinsic"), Sub::Opens);
        assert_eq!(sub("transactionWatch_v1_submitAndWatch"), Sub::Opens);
        assert_eq!(sub("chainHead_v1_follow"), Sub::Opens);
        assert_eq!(
            sub("chain_unsubscribeNewHeads"),
            Sub::Ends(Some(b"\"0xab\""))
        );
        assert_eq!(sub("eth_unsubscribe"), Sub::Ends(Some(b"\"0xab\"")));
        assert_eq!(sub("author_unwatchExtrinsic"), Sub::Ends(Some(b"\"0xab\"")));
        assert_eq!(sub("chainHead_v1_unfollow"), Sub::Ends(Some(b"\"0xab\"")));
        assert_eq!(sub("chainHead_v1_header"), Sub::Uses(Some(b"\"0xab\"")));
        assert_eq!(sub("system_health"), Sub::None);
        assert_eq!(sub("author_submitExtrinsic"), Sub::None);
    }

    #[test]
    fn the_method_that_ends_a_subscription() {
        let end = |m: &str| unsubscribe_method(m);
        assert_eq!(
            end("chain_subscribeNewHeads").as_deref(),
            Some("chain_unsubscribeNewHeads")
        );
        assert_eq!(end("eth_subscribe").as_deref(), Some("eth_unsubscribe"));
        assert_eq!(
            end("author_submitAndWatchExtrinsic").as_deref(),
            Some("author_unwatchExtrinsic")
        );
        assert_eq!(
            end("chainHead_v1_follow").as_deref(),
            Some("chainHead_v1_unfollow")
        );
        assert_eq!(
            end("transactionWatch_v1_submitAndWatch").as_deref(),
            Some("transactionWatch_v1_unwatch")
        );
        assert_eq!(end("chain_unsubscribeNewHeads"), None);
        assert_eq!(end("system_health"), None);
    }

    #[test]
    fn calls_single_batch_and_garbage() {
        let c = Call::parse(br#"{"jsonrpc":"2.0","id":7,"method":"m","params":[1]}"#);
        assert_eq!((c.is_batch(), c.len()), (false, 1));
        assert_eq!(c.ids().collect::<Vec<_>>(), [b"7"]);
        assert_eq!(c.single().unwrap().method(), Some(&b"m"[..]));
        let c =
            Call::parse(br#"[{"id":1,"method":"a"},{"method":"n"},3,{"id":{"x":1},"method":"b"}]"#);
        assert_eq!((c.is_batch(), c.len()), (true, 4));
        assert_eq!(c.ids().collect::<Vec<_>>(), [b"1"]);
        let valid: Vec<bool> = c.requests().map(|r| r.is_valid()).collect();
        assert_eq!(valid, [true, true, false, false]);
        assert!(
            c.refusal().is_some(),
            "a batch with invalid requests is refused whole"
        );
        assert_eq!(c.requests().nth(3).unwrap().reply_id(), b"null");
        assert!(Call::parse(b"[]").is_empty());
        assert!(Call::parse(b"nope").is_empty());
    }

    #[test]
    fn ids_json_rpc_allows() {
        for ok in [&b"1"[..], b"-2", b"\"x\"", b"null", b"1.5"] {
            assert!(valid_id(ok), "{ok:?}");
        }
        for bad in [&b"{}"[..], b"[1]", b"true", b"false"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    fn refused(msg: &str) -> String {
        Call::parse(msg.as_bytes())
            .refusal()
            .unwrap_or_else(|| panic!("not refused: {msg}"))
    }

    #[test]
    fn escapes_in_the_method_are_decoded_before_any_rule_reads_it() {
        let c = Call::parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"author_rotat\u0065Keys","params":[]}"#,
        );
        let r = c.single().unwrap();
        assert!(r.is_valid());
        assert_eq!(r.method(), Some(&b"author_rotateKeys"[..]));
        let c = Call::parse(br#"{"id":1,"method":"chain_subscrib\u0065NewHeads"}"#);
        assert_eq!(c.single().unwrap().sub, Sub::Opens);
        // Member names are read unescaped too.
        let c = Call::parse(br#"{"id":1,"met\u0068od":"author_rotateKeys"}"#);
        assert_eq!(
            c.single().unwrap().method(),
            Some(&b"author_rotateKeys"[..])
        );
    }

    #[test]
    fn a_member_named_twice_makes_the_request_invalid_and_its_id_unknown_when_it_is_the_id() {
        let a = refused(
            r#"{"jsonrpc":"2.0","id":7,"method":"system_health","method":"author_rotateKeys"}"#,
        );
        assert!(a.contains("-32600") && a.contains(r#""id":7"#), "{a}");
        let a = refused(r#"{"id":7,"method":"m","i\u0064":8}"#);
        assert!(a.contains("-32600") && a.contains(r#""id":null"#), "{a}");
        // In a batch, only the element that names a member twice is invalid.
        let c =
            Call::parse(br#"[{"id":1,"method":"a"},{"id":2,"method":"b","params":{"x":1,"x":2}}]"#);
        let valid: Vec<bool> = c.requests().map(|r| r.is_valid()).collect();
        assert_eq!(valid, [true, false]);
        let a = c.refusal().unwrap();
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        assert_eq!(v[0]["id"], 1);
        assert_eq!(v[1]["id"], 2);
        assert_eq!(v[1]["error"]["code"], -32600);
    }

    #[test]
    fn names_a_case_insensitive_parser_takes_for_json_rpc_ones_are_refused() {
        for msg in [
            r#"{"id":1,"method":"system_health","METHOD":"author_rotateKeys"}"#,
            r#"{"id":1,"method":"system_health","ID":2}"#,
            r#"{"id":1,"method":"system_health","Params":[1]}"#,
            r#"{"id":1,"method":"system_health","JsonRpc":"1.0"}"#,
            // Go folds the Kelvin sign, the long s and the dotted and dotless i.
            "{\"id\":1,\"method\":\"m\",\"param\u{17F}\":[1]}",
            "{\"id\":1,\"method\":\"m\",\"\u{130}d\":2}",
            r#"{"id":1,"method":"m","\u0131d":2}"#,
        ] {
            let a = refused(msg);
            assert!(
                a.contains("-32600") && a.contains("only in case"),
                "{msg}: {a}"
            );
        }
        for fine in [
            r#"{"id":1,"method":"m","idx":2,"Kid":3}"#,
            r#"{"id":1,"method":"m","params":{"ID":1,"Method":2}}"#,
        ] {
            assert_eq!(Call::parse(fine.as_bytes()).refusal(), None, "{fine}");
        }
    }

    #[test]
    fn what_is_not_a_request_is_answered_by_the_gateway() {
        assert!(refused("{").contains("-32700"));
        assert!(refused(r#"{"id":1,"method":"m"} {"id":2,"method":"n"}"#).contains("-32700"));
        assert!(refused(r#""\ud800""#).contains("-32700"));
        assert!(refused("[]").contains("-32600"));
        assert!(refused("7").contains("-32600"));
        let a = refused(r#"{"id":3,"method":5}"#);
        assert!(a.contains("-32600") && a.contains(r#""id":3"#), "{a}");
        let a = refused(r#"{"id":[3],"method":"m"}"#);
        assert!(a.contains(r#""id":null"#), "{a}");
        assert_eq!(Call::parse(br#"{"method":"n"}"#).refusal(), None);
    }

    #[test]
    fn a_request_is_sent_as_it_was_read() {
        let c = Call::parse(
            br#"{"params":[1,{"a":2}], "extra":{"method":"author_rotateKeys"}, "id":"x","jsonrpc":"2.0","method":"state_g\u0065tStorage"}"#,
        );
        let r = c.single().unwrap();
        let mut out = Vec::new();
        r.write(&mut out, Some(b"42"), r.params);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"jsonrpc":"2.0","id":42,"method":"state_getStorage","params":[1,{"a":2}]})
        );
        let n = Call::parse(br#"{"method":"m"}"#);
        let mut out = Vec::new();
        n.single().unwrap().write(&mut out, None, None);
        assert_eq!(out, br#"{"method":"m"}"#);
    }
}
