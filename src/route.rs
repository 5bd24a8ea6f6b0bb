//! Archive or pruned: which kind of node can answer a JSON-RPC message.
//!
//! Sans-io and allocation-free per message: [`Router::route`] peeks at the
//! method (and, for methods that take one, the block argument) with
//! [`crate::jsonrpc`], and decides with a [`ChainView`] (the best head and a
//! window of recent block hashes) that the health task keeps up to date.
//!
//! Rules, in order:
//! 1. methods that always need history go to archive (`archive_*`,
//!    `state_traceBlock`, `trace_*`, `debug_trace*`, configurable, with `*`
//!    suffix wildcards);
//! 2. methods with a block argument go to archive when that block is older
//!    than the pruned nodes' depth behind the head: a number is compared with
//!    the head, a hash is looked up in the recent-hash window (unknown: archive),
//!    `earliest` is archive, other tags are recent;
//! 3. (at the caller) a pruned node's "state is gone" answer is retried once
//!    on archive: [`Router::is_pruned_error`];
//! 4. everything else goes to the pruned node.
//!
//! Batches are routed as a whole: archive if any element needs archive.

use ahash::AHashMap;

use crate::jsonrpc::{self, Kind};

/// Where a message should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Pruned,
    Archive,
}

/// Which method tables apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Substrate,
    Ethereum,
}

impl Flavour {
    pub fn parse(s: &str) -> Option<Flavour> {
        match s {
            "substrate" | "polkadot" => Some(Flavour::Substrate),
            "ethereum" | "evm" => Some(Flavour::Ethereum),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Substrate => "substrate",
            Flavour::Ethereum => "ethereum",
        }
    }
}

/// Methods that always need history, by flavour.
pub fn default_archive_methods(f: Flavour) -> &'static [&'static str] {
    match f {
        Flavour::Substrate => &[
            "archive_*",
            "state_traceBlock",
            "state_queryStorage",
            "state_getReadProof",
            "chain_getBlock",
        ],
        Flavour::Ethereum => &["trace_*", "debug_trace*", "arbtrace_*", "eth_getLogs"],
    }
}

/// Methods with a block argument: (method, zero-based position in `params`).
pub fn default_block_args(f: Flavour) -> &'static [(&'static str, usize)] {
    match f {
        Flavour::Substrate => &[
            ("state_getStorage", 1),
            ("state_getStorageAt", 1),
            ("state_getStorageHash", 1),
            ("state_getStorageHashAt", 1),
            ("state_getStorageSize", 1),
            ("state_getStorageSizeAt", 1),
            ("state_getKeys", 1),
            ("state_getKeysPaged", 3),
            ("state_getKeysPagedAt", 3),
            ("state_getPairs", 1),
            ("state_getMetadata", 0),
            ("state_getRuntimeVersion", 0),
            ("state_call", 2),
            ("state_callAt", 2),
            ("state_queryStorageAt", 1),
            ("childstate_getStorage", 2),
            ("childstate_getKeys", 2),
            ("chain_getHeader", 0),
            ("chain_getBlockHash", 0),
            ("payment_queryInfo", 1),
            ("payment_queryFeeDetails", 1),
        ],
        Flavour::Ethereum => &[
            ("eth_getBalance", 1),
            ("eth_getCode", 1),
            ("eth_getTransactionCount", 1),
            ("eth_getStorageAt", 2),
            ("eth_call", 1),
            ("eth_estimateGas", 1),
            ("eth_getProof", 2),
            ("eth_getBlockByNumber", 0),
            ("eth_getBlockTransactionCountByNumber", 0),
            ("eth_getUncleCountByBlockNumber", 0),
            ("eth_getTransactionByBlockNumberAndIndex", 0),
            ("eth_getBlockReceipts", 0),
            ("eth_getBlockByHash", 0),
            ("eth_feeHistory", 1),
        ],
    }
}

/// Error texts of a pruned node whose state is gone, by flavour.
pub fn default_pruned_errors(f: Flavour) -> &'static [&'static str] {
    match f {
        Flavour::Substrate => &["State already discarded", "UnknownBlock", "Unknown block"],
        Flavour::Ethereum => &[
            "missing trie node",
            "historical state",
            "BlockOutOfRange",
            "block out of range",
            "pruned history",
            "required historical state unavailable",
            "header not found",
        ],
    }
}

/// What the router knows about the chain right now.
pub trait ChainView {
    /// The best head height seen across nodes.
    fn head(&self) -> u64;
    /// The height of a recent block by its hash (`0x…`, lowercase or not), if known.
    fn height_of(&self, hash: &[u8]) -> Option<u64>;
    /// The highest finalized block (0: unknown).
    fn finalized(&self) -> u64 {
        0
    }
    /// The hash of the highest finalized block (`0x…`), if known.
    fn finalized_hash(&self) -> Option<std::rc::Rc<[u8]>> {
        None
    }
}

/// A method name pattern: exact, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
}

impl Pattern {
    fn new(p: &str) -> Pattern {
        match p.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.as_bytes().to_vec()),
            None => Pattern::Exact(p.as_bytes().to_vec()),
        }
    }

    fn matches(&self, m: &[u8]) -> bool {
        match self {
            Pattern::Exact(e) => e == m,
            Pattern::Prefix(p) => m.starts_with(p),
        }
    }
}

/// The routing rules for one chain flavour.
#[derive(Debug, Clone)]
pub struct Router {
    flavour: Flavour,
    archive: Vec<Pattern>,
    block_args: AHashMap<Vec<u8>, usize>,
    /// The smallest pruning depth among pruned nodes, in blocks.
    depth: u64,
    pruned_errors: Vec<Vec<u8>>,
}

impl Router {
    /// Rules with the flavour's defaults; `archive_methods` and `pruned_errors`
    /// replace the defaults when given; `extra_block_args` add to them.
    pub fn new(
        flavour: Flavour,
        depth: u64,
        archive_methods: Option<&[String]>,
        extra_block_args: &[(String, usize)],
        pruned_errors: Option<&[String]>,
    ) -> Router {
        let archive = match archive_methods {
            Some(list) => list.iter().map(|p| Pattern::new(p)).collect(),
            None => default_archive_methods(flavour)
                .iter()
                .map(|p| Pattern::new(p))
                .collect(),
        };
        let mut block_args: AHashMap<Vec<u8>, usize> = default_block_args(flavour)
            .iter()
            .map(|(m, i)| (m.as_bytes().to_vec(), *i))
            .collect();
        for (m, i) in extra_block_args {
            block_args.insert(m.as_bytes().to_vec(), *i);
        }
        let pruned_errors = match pruned_errors {
            Some(list) => list.iter().map(|e| e.as_bytes().to_vec()).collect(),
            None => default_pruned_errors(flavour)
                .iter()
                .map(|e| e.as_bytes().to_vec())
                .collect(),
        };
        Router {
            flavour,
            archive,
            block_args,
            depth,
            pruned_errors,
        }
    }

    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// Route a whole message (an object or a batch). Non-JSON goes to pruned.
    pub fn route(&self, msg: &[u8], chain: &(impl ChainView + ?Sized)) -> Target {
        match jsonrpc::kind(msg) {
            Kind::Object => {
                jsonrpc::peek(msg).map_or(Target::Pruned, |p| self.route_one(&p, chain))
            }
            Kind::Batch => {
                let any = jsonrpc::elements(msg)
                    .filter_map(jsonrpc::peek)
                    .any(|p| self.route_one(&p, chain) == Target::Archive);
                if any {
                    Target::Archive
                } else {
                    Target::Pruned
                }
            }
            Kind::Other => Target::Pruned,
        }
    }

    fn route_one(&self, p: &jsonrpc::Peek<'_>, chain: &(impl ChainView + ?Sized)) -> Target {
        let Some(method) = p.method else {
            return Target::Pruned;
        };
        if self.archive.iter().any(|pat| pat.matches(method)) {
            return Target::Archive;
        }
        let Some(&pos) = self.block_args.get(method) else {
            return Target::Pruned;
        };
        let Some(arg) = p.params.and_then(|params| jsonrpc::param(params, pos)) else {
            return Target::Pruned;
        };
        match self.block_height(arg, chain) {
            BlockRef::Recent => Target::Pruned,
            BlockRef::Height(n) if chain.head().saturating_sub(n) <= self.depth => Target::Pruned,
            BlockRef::Height(_) | BlockRef::Unknown => Target::Archive,
        }
    }

    fn block_height(&self, arg: &[u8], chain: &(impl ChainView + ?Sized)) -> BlockRef {
        if arg == b"null" {
            return BlockRef::Recent;
        }
        // Ethereum block objects: {"blockHash": …} or {"blockNumber": …} (EIP-1898).
        if arg.first() == Some(&b'{') {
            return match find_member(arg, b"blockNumber").or_else(|| find_member(arg, b"blockHash"))
            {
                Some(v) => self.block_height(v, chain),
                None => BlockRef::Unknown,
            };
        }
        // A bare JSON number (Substrate chain_getBlockHash takes one).
        if arg.iter().all(u8::is_ascii_digit) {
            return std::str::from_utf8(arg)
                .ok()
                .and_then(|s| s.parse().ok())
                .map_or(BlockRef::Unknown, BlockRef::Height);
        }
        let Some(s) = jsonrpc::unquote(arg) else {
            return BlockRef::Unknown;
        };
        match s {
            b"latest" | b"pending" | b"safe" | b"finalized" => return BlockRef::Recent,
            b"earliest" => return BlockRef::Height(0),
            _ => {}
        }
        let hex = s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X"));
        match hex {
            // 32-byte hashes.
            Some(h) if h.len() == 64 => chain
                .height_of(s)
                .map_or(BlockRef::Unknown, BlockRef::Height),
            // Hex block numbers (Ethereum quantities).
            Some(h) if !h.is_empty() && h.len() <= 16 => std::str::from_utf8(h)
                .ok()
                .and_then(|x| u64::from_str_radix(x, 16).ok())
                .map_or(BlockRef::Unknown, BlockRef::Height),
            _ => BlockRef::Unknown,
        }
    }

    /// True for a single request whose method takes a block argument: its
    /// answer from a pruned node may be "state is gone", worth a retry.
    /// [`Router::route`] of a call parsed once.
    pub fn route_call(
        &self,
        call: &jsonrpc::Call<'_>,
        chain: &(impl ChainView + ?Sized),
    ) -> Target {
        let any = call.requests().any(|r| {
            let p = jsonrpc::Peek {
                method: r.method(),
                params: r.params,
                ..Default::default()
            };
            self.route_one(&p, chain) == Target::Archive
        });
        if any {
            Target::Archive
        } else {
            Target::Pruned
        }
    }

    /// Where one request of a call goes, by its method and block.
    pub fn route_request(
        &self,
        req: &jsonrpc::Request<'_>,
        chain: &(impl ChainView + ?Sized),
    ) -> Target {
        let p = jsonrpc::Peek {
            method: req.method(),
            params: req.params,
            ..Default::default()
        };
        self.route_one(&p, chain)
    }

    /// Whether `method` has a block argument (its answer may be "state is
    /// gone" on a pruned node).
    pub fn names_a_block(&self, method: &[u8]) -> bool {
        self.block_args.contains_key(method)
    }

    /// [`Router::retryable`] of a call parsed once (a single request).
    pub fn retryable_call(&self, call: &jsonrpc::Call<'_>) -> bool {
        call.single()
            .and_then(|r| r.method())
            .is_some_and(|m| self.block_args.contains_key(m))
    }

    pub fn retryable(&self, msg: &[u8]) -> bool {
        jsonrpc::peek(msg)
            .and_then(|p| p.method)
            .is_some_and(|m| self.block_args.contains_key(m))
    }

    /// True when a response says the pruned node no longer has the state asked for.
    pub fn is_pruned_error(&self, response: &[u8]) -> bool {
        let Some(err) = jsonrpc::peek(response).and_then(|p| p.error) else {
            return false;
        };
        self.pruned_errors
            .iter()
            .any(|e| err.windows(e.len()).any(|w| w == e.as_slice()))
    }
}

enum BlockRef {
    Recent,
    Height(u64),
    Unknown,
}

/// The raw value of a member `"key": value` of a small JSON object (a string or a scalar).
fn find_member<'a>(obj: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    let at = loop {
        let i = from + obj[from..].windows(key.len()).position(|w| w == key)?;
        let quoted = i > 0 && obj[i - 1] == b'"' && obj.get(i + key.len()) == Some(&b'"');
        if quoted {
            break i + key.len() + 1;
        }
        from = i + 1;
    };
    let rest = &obj[at..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let value = &rest[colon + 1..];
    let start = value.iter().position(|b| !b.is_ascii_whitespace())?;
    let value = &value[start..];
    let end = if value.first() == Some(&b'"') {
        value[1..].iter().position(|&b| b == b'"')? + 2
    } else {
        value
            .iter()
            .position(|&b| matches!(b, b',' | b'}' | b' '))
            .unwrap_or(value.len())
    };
    Some(&value[..end])
}

/// A fixed-size window of recent block hashes and heights, newest replacing oldest.
#[derive(Debug, Clone, Default)]
pub struct HashWindow {
    map: AHashMap<Vec<u8>, u64>,
    order: std::collections::VecDeque<Vec<u8>>,
    cap: usize,
}

impl HashWindow {
    pub fn new(cap: usize) -> HashWindow {
        HashWindow {
            map: AHashMap::with_capacity(cap),
            order: std::collections::VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub fn insert(&mut self, hash: &[u8], height: u64) {
        let key = hash.to_ascii_lowercase();
        if self.map.insert(key.clone(), height).is_none() {
            self.order.push_back(key);
            if self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    pub fn get(&self, hash: &[u8]) -> Option<u64> {
        if hash.iter().any(u8::is_ascii_uppercase) {
            self.map.get(&hash.to_ascii_lowercase()).copied()
        } else {
            self.map.get(hash).copied()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct View {
        head: u64,
        window: HashWindow,
    }

    impl ChainView for View {
        fn head(&self) -> u64 {
            self.head
        }
        fn height_of(&self, hash: &[u8]) -> Option<u64> {
            self.window.get(hash)
        }
    }

    fn hash(n: u64) -> String {
        format!("0x{n:064x}")
    }

    fn view() -> View {
        let mut window = HashWindow::new(512);
        for n in 9_700..=10_000 {
            window.insert(hash(n).as_bytes(), n);
        }
        View {
            head: 10_000,
            window,
        }
    }

    fn substrate() -> Router {
        Router::new(Flavour::Substrate, 256, None, &[], None)
    }

    #[test]
    fn history_methods_go_to_archive() {
        let r = substrate();
        let v = view();
        assert_eq!(
            r.route(
                br#"{"id":1,"method":"archive_unstable_body","params":[]}"#,
                &v
            ),
            Target::Archive
        );
        assert_eq!(
            r.route(br#"{"id":1,"method":"state_traceBlock","params":[]}"#, &v),
            Target::Archive
        );
        assert_eq!(
            r.route(br#"{"id":1,"method":"system_health","params":[]}"#, &v),
            Target::Pruned
        );
    }

    #[test]
    fn block_hashes_are_compared_with_the_pruning_depth() {
        let r = substrate();
        let v = view();
        let req = |h: &str| {
            format!(r#"{{"id":1,"method":"state_getStorage","params":["0x26aa","{h}"]}}"#)
        };
        assert_eq!(r.route(req(&hash(9_990)).as_bytes(), &v), Target::Pruned);
        assert_eq!(
            r.route(req(&hash(9_700)).as_bytes(), &v),
            Target::Archive,
            "older than 256 blocks"
        );
        assert_eq!(
            r.route(req(&hash(5)).as_bytes(), &v),
            Target::Archive,
            "unknown hash"
        );
        assert_eq!(
            r.route(
                req(&hash(9_990).to_uppercase().replace("0X", "0x")).as_bytes(),
                &v
            ),
            Target::Pruned
        );
        // No block argument: the latest state.
        assert_eq!(
            r.route(
                br#"{"id":1,"method":"state_getStorage","params":["0x26aa"]}"#,
                &v
            ),
            Target::Pruned
        );
        assert_eq!(
            r.route(
                br#"{"id":1,"method":"state_getStorage","params":["0x26aa",null]}"#,
                &v
            ),
            Target::Pruned
        );
        // chain_getBlockHash takes a number.
        assert_eq!(
            r.route(
                br#"{"id":1,"method":"chain_getBlockHash","params":[12]}"#,
                &v
            ),
            Target::Archive
        );
        assert_eq!(
            r.route(
                br#"{"id":1,"method":"chain_getBlockHash","params":[9999]}"#,
                &v
            ),
            Target::Pruned
        );
    }

    #[test]
    fn ethereum_numbers_tags_and_objects() {
        let r = Router::new(Flavour::Ethereum, 128, None, &[], None);
        let v = view();
        let call = |b: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["0xabc",{b}]}}"#
            )
        };
        assert_eq!(r.route(call(r#""latest""#).as_bytes(), &v), Target::Pruned);
        assert_eq!(
            r.route(call(r#""earliest""#).as_bytes(), &v),
            Target::Archive
        );
        assert_eq!(
            r.route(call(&format!(r#""0x{:x}""#, 9_950)).as_bytes(), &v),
            Target::Pruned
        );
        assert_eq!(r.route(call(r#""0x10""#).as_bytes(), &v), Target::Archive);
        assert_eq!(
            r.route(call(r#"{"blockNumber":"0x10"}"#).as_bytes(), &v),
            Target::Archive
        );
        assert_eq!(
            r.route(
                call(&format!(r#"{{"blockHash":"{}"}}"#, hash(9_999))).as_bytes(),
                &v
            ),
            Target::Pruned
        );
        assert_eq!(
            r.route(
                br#"{"id":1,"method":"debug_traceTransaction","params":["0x1"]}"#,
                &v
            ),
            Target::Archive
        );
    }

    #[test]
    fn batches_go_to_archive_if_any_element_needs_it() {
        let r = substrate();
        let v = view();
        let batch = format!(
            r#"[{{"id":1,"method":"system_health"}},{{"id":2,"method":"state_getStorage","params":["0x1","{}"]}}]"#,
            hash(1)
        );
        assert_eq!(r.route(batch.as_bytes(), &v), Target::Archive);
        assert_eq!(
            r.route(br#"[{"id":1,"method":"system_health"}]"#, &v),
            Target::Pruned
        );
        assert_eq!(r.route(b"not json", &v), Target::Pruned);
    }

    #[test]
    fn configured_lists_and_pruned_errors() {
        let archive = vec!["my_history*".to_string()];
        let errors = vec!["gone fishing".to_string()];
        let r = Router::new(
            Flavour::Substrate,
            256,
            Some(&archive),
            &[("custom_at".into(), 0)],
            Some(&errors),
        );
        let v = view();
        assert_eq!(
            r.route(br#"{"id":1,"method":"my_history_get"}"#, &v),
            Target::Archive
        );
        assert_eq!(
            r.route(br#"{"id":1,"method":"archive_x"}"#, &v),
            Target::Pruned,
            "defaults replaced"
        );
        assert_eq!(
            r.route(br#"{"id":1,"method":"custom_at","params":["0x01"]}"#, &v),
            Target::Archive
        );
        assert!(r.is_pruned_error(
            br#"{"jsonrpc":"2.0","error":{"code":1,"message":"gone fishing"},"id":1}"#
        ));
        let s = substrate();
        assert!(s.is_pruned_error(
            br#"{"jsonrpc":"2.0","error":{"code":4003,"message":"Client error: State already discarded for 0x1"},"id":1}"#
        ));
        assert!(
            !s.is_pruned_error(br#"{"jsonrpc":"2.0","result":"State already discarded","id":1}"#)
        );
    }

    #[test]
    fn the_hash_window_forgets_the_oldest() {
        let mut w = HashWindow::new(2);
        w.insert(b"0xaa", 1);
        w.insert(b"0xbb", 2);
        w.insert(b"0xcc", 3);
        assert_eq!(w.get(b"0xaa"), None);
        assert_eq!(w.get(b"0xCC"), Some(3));
    }
}
