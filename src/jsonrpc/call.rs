//! A client message parsed once: [`Call::parse`] peeks at the message (and,
//! for a batch, at each element) and every policy reads the result instead
//! of looking at the bytes again: admission (methods, costs, batch size),
//! routing (method and block argument), the in-flight tracker (ids), the
//! per-session limits and the shared-connection id rewriter (what a request
//! does to subscriptions, by the one rule in [`Sub::of`]).
//!
//! Borrowed from the message; a single request allocates nothing.

use super::peek::{elements, kind, param, peek, Kind};

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

/// One request (or notification) of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The request's bytes (the whole message, or one batch element).
    pub raw: &'a [u8],
    /// Raw JSON; `None` for a notification.
    pub id: Option<&'a [u8]>,
    /// Without quotes.
    pub method: Option<&'a [u8]>,
    pub params: Option<&'a [u8]>,
    pub sub: Sub<'a>,
    /// An object with a valid id (else it is answered -32600).
    pub valid: bool,
}

impl<'a> Request<'a> {
    fn parse(raw: &'a [u8]) -> Request<'a> {
        match peek(raw) {
            Some(p) => Request {
                raw,
                id: p.id,
                method: p.method,
                params: p.params,
                sub: p.method.map_or(Sub::None, |m| Sub::of(m, p.params)),
                valid: p.id.map_or(true, valid_id),
            },
            None => Request {
                raw,
                id: None,
                method: None,
                params: None,
                sub: Sub::None,
                valid: false,
            },
        }
    }

    /// The id to answer with: its own, or `null`.
    pub fn reply_id(&self) -> &'a [u8] {
        match self.id {
            Some(id) if self.valid => id,
            _ => b"null",
        }
    }
}

/// A client message, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub raw: &'a [u8],
    pub kind: Kind,
    first: Option<Request<'a>>,
    rest: Vec<Request<'a>>,
}

impl<'a> Call<'a> {
    pub fn parse(raw: &'a [u8]) -> Call<'a> {
        let kind = kind(raw);
        let (first, rest) = match kind {
            Kind::Object => (Some(Request::parse(raw)), Vec::new()),
            Kind::Batch => {
                let mut it = elements(raw).map(Request::parse);
                (it.next(), it.collect())
            }
            Kind::Other => (None, Vec::new()),
        };
        Call {
            raw,
            kind,
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
        self.first.map_or(0, |_| 1 + self.rest.len())
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
        self.requests().filter(|r| r.valid).filter_map(|r| r.id)
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
        assert_eq!(c.single().unwrap().method, Some(&b"m"[..]));
        let c =
            Call::parse(br#"[{"id":1,"method":"a"},{"method":"n"},3,{"id":{"x":1},"method":"b"}]"#);
        assert_eq!((c.is_batch(), c.len()), (true, 4));
        assert_eq!(c.ids().collect::<Vec<_>>(), [b"1"]);
        let valid: Vec<bool> = c.requests().map(|r| r.valid).collect();
        assert_eq!(valid, [true, true, false, false]);
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
}
