//! A merged subscription as data: its key, its node subscription, its
//! sessions, what it last told them, and a gap being filled. What is done
//! with it is [`super::topics`]'s.

use std::rc::{Rc, Weak};

use crate::jsonrpc;
use crate::relay::Session;

/// Gaps longer than this are not filled (the stream goes on from where the
/// new node is).
pub(super) const FILL_MAX: u64 = 64;

/// A mergeable subscribe method: its canonical name (aliases of one stream
/// share a topic), the method that ends it on the node, and whether a
/// late joiner gets the current value first.
pub fn mergeable(method: &[u8], params: &[u8]) -> Option<(&'static str, &'static str, bool)> {
    Some(match method {
        b"chain_subscribeNewHeads" | b"chain_subscribeNewHead" | b"subscribe_newHead" => {
            ("chain_subscribeNewHeads", "chain_unsubscribeNewHeads", true)
        }
        b"chain_subscribeFinalizedHeads" | b"chain_subscribeFinalisedHeads" => (
            "chain_subscribeFinalizedHeads",
            "chain_unsubscribeFinalizedHeads",
            true,
        ),
        b"chain_subscribeAllHeads" => {
            ("chain_subscribeAllHeads", "chain_unsubscribeAllHeads", true)
        }
        b"state_subscribeRuntimeVersion" | b"chain_subscribeRuntimeVersion" => (
            "state_subscribeRuntimeVersion",
            "state_unsubscribeRuntimeVersion",
            true,
        ),
        // With its keys named (at most STORAGE_KEYS): a late joiner gets
        // every key's last value, kept per key. A subscription to every
        // change of all storage is not merged (that map would have no end).
        b"state_subscribeStorage" => {
            let keys = jsonrpc::param(params, 0)?;
            let n = jsonrpc::elements(keys).count();
            if n == 0 || n > STORAGE_KEYS {
                return None;
            }
            ("state_subscribeStorage", "state_unsubscribeStorage", true)
        }
        b"eth_subscribe" => {
            let kind = jsonrpc::param(params, 0).and_then(jsonrpc::unquote)?;
            match kind {
                b"newHeads" => ("eth_subscribe", "eth_unsubscribe", true),
                b"logs" | b"newPendingTransactions" => ("eth_subscribe", "eth_unsubscribe", false),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Keys a merged storage subscription may name (its replay map holds at
/// most this many values).
pub const STORAGE_KEYS: usize = 1024;

/// A topic key's method and params (`method \0 params`).
pub fn split_key(key: &[u8]) -> (&[u8], &[u8]) {
    let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    (&key[..end], &key[(end + 1).min(key.len())..])
}

/// Whether a topic is a stream of canonical heads, numbered without gaps
/// (Substrate new and finalized heads; Ethereum `newHeads`).
pub(super) fn numbered(key: &[u8]) -> bool {
    let (method, params) = split_key(key);
    matches!(
        method,
        b"chain_subscribeNewHeads" | b"chain_subscribeFinalizedHeads"
    ) || (method == b"eth_subscribe"
        && jsonrpc::param(params, 0).and_then(jsonrpc::unquote) == Some(b"newHeads"))
}

/// The block number in a head (`"number":"0x…"`).
pub(super) fn head_number(result: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"number\":\"0x";
    let at = result.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let end = result[at..].iter().position(|&b| b == b'"')?;
    u64::from_str_radix(std::str::from_utf8(&result[at..at + end]).ok()?, 16).ok()
}

/// A session on a topic.
#[derive(Clone)]
pub struct Member {
    pub session: Weak<Session>,
    /// Its subscription id, raw JSON (shared by the copies a notification's
    /// delivery takes).
    pub id: Rc<[u8]>,
    /// On a numbered stream: the last block number it was given (0: none).
    pub floor: u64,
}

/// A session waiting to join: (session, its request id, the subscription id it will get).
pub type Joiner = (Weak<Session>, Box<[u8]>, Rc<[u8]>);

/// A notification's method and result, raw.
pub(super) type Note = (Box<[u8]>, Box<[u8]>);

/// One merged node subscription on a connection.
pub struct Topic {
    /// Canonical method, a zero byte, compact params.
    pub key: Box<[u8]>,
    pub unsubscribe: &'static str,
    /// The node's subscription id (raw JSON), once it answered.
    pub node_sub: Option<Box<[u8]>>,
    pub members: Vec<Member>,
    /// Sessions whose subscribe call waits for the node's answer.
    pub joining: Vec<Joiner>,
    pub(super) latest_value: bool,
    /// The last notification's method and result (latest-value streams).
    pub(super) last: Option<Note>,
    /// `state_subscribeStorage`: the block and every key's last value.
    pub(super) storage: Option<Storage>,
    /// Filling a gap: the headers being fetched, and the notifications
    /// that came meanwhile (delivered after them, in order).
    pub(super) fill: Option<Fill>,
    /// Numbered streams: the heads delivered lately, as (number, what
    /// identifies the block). A head at or below what a session was given
    /// is skipped only if it is one of these: a reorganised head at the
    /// same or a lower height is another block, and reaches every session.
    pub(super) recent: std::collections::VecDeque<(u64, u64)>,
}

/// Heads remembered per topic to tell a repeat from a reorganised head.
pub(super) const RECENT_HEADS: usize = 64;

/// What identifies a head: its `hash` (Ethereum), else its parent, state
/// root and number (a Substrate header does not carry its own hash), else
/// the whole result; the same block from two nodes gives the same value.
pub(super) fn head_identity(result: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    match jsonrpc::member(result, b"hash") {
        Some(hash) => h.write(hash),
        None => {
            let parts =
                [&b"parentHash"[..], b"stateRoot", b"number"].map(|k| jsonrpc::member(result, k));
            if parts.iter().all(Option::is_none) {
                h.write(result);
            }
            for p in parts.into_iter().flatten() {
                h.write(p);
            }
        }
    }
    h.finish()
}

/// What a storage subscription's clients have been told so far.
#[derive(Default, Clone)]
pub(super) struct Storage {
    pub(super) block: serde_json::Value,
    pub(super) values: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Topic {
    pub(super) fn new(key: Box<[u8]>, unsubscribe: &'static str, latest_value: bool) -> Topic {
        let storage = split_key(&key).0 == b"state_subscribeStorage";
        Topic {
            key,
            unsubscribe,
            node_sub: None,
            members: Vec::new(),
            joining: Vec::new(),
            latest_value,
            last: None,
            storage: storage.then(Storage::default),
            fill: None,
            recent: Default::default(),
        }
    }

    /// The current value for a late joiner: (notification method, result).
    pub(super) fn replay(&self) -> Option<Note> {
        if !self.latest_value {
            return None;
        }
        let (method, last) = self.last.as_ref()?;
        match &self.storage {
            Some(st) => {
                let changes: Vec<serde_json::Value> = st
                    .values
                    .iter()
                    .map(|(k, v)| serde_json::json!([k, v]))
                    .collect();
                let result = serde_json::json!({"block": st.block, "changes": changes});
                Some((method.clone(), result.to_string().into_bytes().into()))
            }
            None => Some((method.clone(), last.clone())),
        }
    }

    /// Remember a notification's value (latest-value streams).
    pub(super) fn remember(&mut self, method: &[u8], result: &[u8]) {
        if !self.latest_value {
            return;
        }
        if let Some(st) = &mut self.storage {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(result) {
                st.block = v["block"].clone();
                for change in v["changes"].as_array().into_iter().flatten() {
                    if let Some(k) = change[0].as_str() {
                        // Bounded whatever the node sends (it should only
                        // send the keys asked for).
                        if st.values.len() < STORAGE_KEYS || st.values.contains_key(k) {
                            st.values.insert(k.to_string(), change[1].clone());
                        }
                    }
                }
            }
        }
        self.last = Some((Box::from(method), Box::from(result)));
    }

    /// The block number its members were last given (numbered streams).
    pub(super) fn last_number(&self) -> u64 {
        self.last
            .as_ref()
            .and_then(|(_, r)| head_number(r))
            .unwrap_or(0)
    }
}

/// A gap being filled on a numbered stream.
pub struct Fill {
    /// The missing block numbers, ascending.
    pub(super) numbers: Vec<u64>,
    pub(super) hashes: Vec<Option<Box<[u8]>>>,
    pub(super) headers: Vec<Option<Box<[u8]>>>,
    /// Answers still to come in the current step.
    pub(super) outstanding: usize,
    /// Notifications held meanwhile (whole messages).
    pub held: Vec<Box<[u8]>>,
    /// The notification method to give the filled headers.
    pub(super) method: Box<[u8]>,
}
