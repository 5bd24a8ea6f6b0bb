//! Which answers may be kept, and under what key: sans-io, per method.
//!
//! An answer is kept only when it cannot have changed by the time it is
//! served again:
//! - **static**: the chain's identity and the node's (`system_chain`,
//!   `eth_chainId`, ...), kept for a TTL;
//! - **at a block hash**: state at a block hash never changes, whatever
//!   happens to the chain after (a reorganisation makes other blocks best,
//!   it does not change this one), so these are kept for the long TTL;
//! - **at a block number**: kept only at or below the finalized block (a
//!   number above it may name another block after a reorganisation);
//! - **latest** (the block argument left out) of the methods whose answer
//!   changes only with a runtime upgrade (`state_getMetadata`,
//!   `state_getRuntimeVersion`): the request is sent with the finalized
//!   block's hash filled in, so its answer is an answer at a hash (this is
//!   Subway's `inject`; a node that does not know that block yet is asked
//!   again as the client asked, and that answer is not kept); latest of
//!   anything else is not kept;
//! - **found final in the answer**: an Ethereum transaction or receipt by
//!   hash is kept only when the answer's `blockNumber` is finalized.
//!
//! Null answers and errors are never kept (see [`super::Cache::insert`]).

use std::time::Duration;

use crate::jsonrpc::Request;
use crate::route::{ChainView, Flavour};

/// How a method's answers may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The same for every call with the same params.
    Static,
    /// Depends on the block at `params[arg]`: a hash, or a number.
    /// `inject`: when the argument is left out, fill in the finalized hash.
    Block { arg: usize, inject: bool },
    /// Keep only when the answer's `blockNumber` is finalized.
    FinalInAnswer,
}

/// The built-in table, by flavour.
pub fn default_rules(f: Flavour) -> &'static [(&'static str, Rule)] {
    use Rule::*;
    match f {
        Flavour::Substrate => &[
            ("system_chain", Static),
            ("system_chainType", Static),
            ("system_properties", Static),
            ("system_name", Static),
            ("system_version", Static),
            ("rpc_methods", Static),
            ("chainSpec_v1_chainName", Static),
            ("chainSpec_v1_genesisHash", Static),
            ("chainSpec_v1_properties", Static),
            (
                "state_getMetadata",
                Block {
                    arg: 0,
                    inject: true,
                },
            ),
            (
                "state_getRuntimeVersion",
                Block {
                    arg: 0,
                    inject: true,
                },
            ),
            (
                "chain_getBlockHash",
                Block {
                    arg: 0,
                    inject: false,
                },
            ),
            (
                "chain_getHeader",
                Block {
                    arg: 0,
                    inject: false,
                },
            ),
            (
                "chain_getBlock",
                Block {
                    arg: 0,
                    inject: false,
                },
            ),
            // State at a block hash never changes (without one: the best
            // block's, not kept).
            (
                "state_getStorage",
                Block {
                    arg: 1,
                    inject: false,
                },
            ),
            (
                "state_getStorageHash",
                Block {
                    arg: 1,
                    inject: false,
                },
            ),
            (
                "state_getStorageSize",
                Block {
                    arg: 1,
                    inject: false,
                },
            ),
            (
                "state_call",
                Block {
                    arg: 2,
                    inject: false,
                },
            ),
        ],
        Flavour::Ethereum => &[
            ("eth_chainId", Static),
            ("net_version", Static),
            ("web3_clientVersion", Static),
            (
                "eth_getBlockByHash",
                Block {
                    arg: 0,
                    inject: false,
                },
            ),
            (
                "eth_getBlockByNumber",
                Block {
                    arg: 0,
                    inject: false,
                },
            ),
            (
                "eth_getBlockReceipts",
                Block {
                    arg: 0,
                    inject: false,
                },
            ),
            (
                "eth_getCode",
                Block {
                    arg: 1,
                    inject: false,
                },
            ),
            (
                "eth_call",
                Block {
                    arg: 1,
                    inject: false,
                },
            ),
            (
                "eth_getBalance",
                Block {
                    arg: 1,
                    inject: false,
                },
            ),
            (
                "eth_getStorageAt",
                Block {
                    arg: 2,
                    inject: false,
                },
            ),
            (
                "eth_getTransactionCount",
                Block {
                    arg: 1,
                    inject: false,
                },
            ),
            ("eth_getTransactionByHash", FinalInAnswer),
            ("eth_getTransactionReceipt", FinalInAnswer),
        ],
    }
}

/// The rule table of one configuration: the built-in one, with methods
/// switched off or given their own TTL (`cache.methods`).
#[derive(Debug, Clone)]
pub struct Rules {
    table: ahash::AHashMap<Box<[u8]>, (Rule, Duration)>,
}

/// TTLs: for static answers, and for answers at final blocks.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub static_ttl: Duration,
    pub final_ttl: Duration,
}

impl Rules {
    /// `overrides`: method -> TTL in seconds (0: not kept); a method not in
    /// the built-in table is kept as static.
    pub fn new(f: Flavour, ttls: Ttls, overrides: &[(String, u64)]) -> Rules {
        let mut table: ahash::AHashMap<Box<[u8]>, (Rule, Duration)> = default_rules(f)
            .iter()
            .map(|(m, r)| {
                let ttl = match r {
                    Rule::Static => ttls.static_ttl,
                    _ => ttls.final_ttl,
                };
                (Box::from(m.as_bytes()), (*r, ttl))
            })
            .collect();
        for (m, secs) in overrides {
            let key: Box<[u8]> = Box::from(m.as_bytes());
            if *secs == 0 {
                table.remove(&key);
                continue;
            }
            let rule = table.get(&key).map_or(Rule::Static, |(r, _)| *r);
            table.insert(key, (rule, Duration::from_secs(*secs)));
        }
        Rules { table }
    }

    pub fn get(&self, method: &[u8]) -> Option<(Rule, Duration)> {
        self.table.get(method).copied()
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Method, a zero byte, the params without insignificant whitespace.
    pub key: Vec<u8>,
    pub ttl: Duration,
    /// The params to send instead (the finalized hash filled in).
    pub params: Option<Vec<u8>>,
    /// Keep the answer only if its `blockNumber` is finalized.
    pub final_in_answer: bool,
    /// The block number asked at (an answer about it is kept only if the
    /// node that gives it has finalized it).
    pub at: Option<u64>,
    /// The answer can never change (at a hash, a finalized block, found
    /// final): it may be kept where every gateway of a cluster finds it.
    /// Static answers (a node's name and version) stay per core.
    pub lasting: bool,
}

/// How a request may be answered from the cache, or `None`.
pub fn plan(rules: &Rules, req: &Request<'_>, chain: &dyn ChainView) -> Option<Plan> {
    // Only a request read one way (strict JSON, no member named twice)
    // is ever a key: its params are then well-formed.
    if !req.is_valid() || req.sub != crate::jsonrpc::Sub::None {
        return None;
    }
    let method = req.method()?;
    if crate::jsonrpc::call::writes(method) {
        return None;
    }
    let (rule, ttl) = rules.get(method)?;
    req.id?;
    let params = compact(req.params.unwrap_or(b"[]"));
    let mut plan = Plan {
        key: key(method, &params),
        ttl,
        params: None,
        final_in_answer: false,
        at: None,
        lasting: rule != Rule::Static,
    };
    match rule {
        Rule::Static => Some(plan),
        Rule::FinalInAnswer => {
            plan.final_in_answer = true;
            Some(plan)
        }
        Rule::Block { arg, inject } => match block_arg(&params, arg)? {
            Arg::Hash => Some(plan),
            Arg::Number(n) if n == 0 || n <= chain.finalized() => {
                plan.at = Some(n);
                Some(plan)
            }
            Arg::Number(_) => None,
            Arg::Missing if inject => {
                let hash = chain.finalized_hash()?;
                let filled = with_arg(&params, arg, &hash)?;
                plan.key = key(method, &filled);
                plan.params = Some(filled);
                Some(plan)
            }
            Arg::Missing => None,
        },
    }
}

fn key(method: &[u8], params: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(method.len() + 1 + params.len());
    k.extend_from_slice(method);
    k.push(0);
    k.extend_from_slice(params);
    k
}

/// A block argument as found in the params.
#[derive(Debug, PartialEq, Eq)]
enum Arg {
    /// `"0x"` and 64 hex digits.
    Hash,
    /// A number, or a hex string that is not a hash (`"0x1b4"`).
    Number(u64),
    /// Left out, or `null`.
    Missing,
}

/// The block argument at `arg` of compact params (an array), if it is one
/// of the forms above; `None` for anything else (a tag such as `"latest"`,
/// an object): not kept.
fn block_arg(params: &[u8], arg: usize) -> Option<Arg> {
    let items = array_items(params)?;
    let Some(item) = items.get(arg) else {
        return Some(Arg::Missing);
    };
    if *item == b"null" {
        return Some(Arg::Missing);
    }
    if let Some(s) = item.strip_prefix(b"\"").and_then(|s| s.strip_suffix(b"\"")) {
        let hex = s.strip_prefix(b"0x")?;
        if !hex.iter().all(u8::is_ascii_hexdigit) || hex.is_empty() {
            return None;
        }
        if hex.len() == 64 {
            return Some(Arg::Hash);
        }
        return u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16)
            .ok()
            .map(Arg::Number);
    }
    std::str::from_utf8(item)
        .ok()?
        .parse()
        .ok()
        .map(Arg::Number)
}

/// The top-level items of a compact JSON array.
fn array_items(params: &[u8]) -> Option<Vec<&[u8]>> {
    let inner = params.strip_prefix(b"[")?.strip_suffix(b"]")?;
    let mut items = Vec::new();
    let (mut depth, mut in_str, mut esc, mut start) = (0usize, false, false, 0);
    for (i, &b) in inner.iter().enumerate() {
        if in_str {
            match b {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.checked_sub(1)?,
            b',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner.is_empty() {
        items.push(&inner[start..]);
    }
    Some(items)
}

/// Compact params with `"hash"` at position `arg` (filling `null`s before
/// it; replacing a `null` there).
fn with_arg(params: &[u8], arg: usize, hash: &[u8]) -> Option<Vec<u8>> {
    let mut items: Vec<Vec<u8>> = array_items(params)?
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    while items.len() <= arg {
        items.push(b"null".to_vec());
    }
    let mut quoted = Vec::with_capacity(hash.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(hash);
    quoted.push(b'"');
    items[arg] = quoted;
    let mut out = vec![b'['];
    out.extend_from_slice(&items.join(&b","[..]));
    out.push(b']');
    Some(out)
}

/// JSON without insignificant whitespace (strings kept as written): the
/// same params written with other spacing make the same key.
pub fn compact(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let (mut in_str, mut esc) = (false, false);
    for &b in raw {
        if in_str {
            out.push(b);
            match b {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_str = true;
            }
            out.push(b);
        }
    }
    out
}

/// Whether an answer's `"blockNumber"` is at or below `finalized`.
pub fn final_in_answer(result: &[u8], finalized: u64) -> bool {
    const KEY: &[u8] = b"\"blockNumber\":\"0x";
    let Some(at) = result.windows(KEY.len()).position(|w| w == KEY) else {
        return false;
    };
    let digits = &result[at + KEY.len()..];
    let end = digits.iter().position(|&b| b == b'"').unwrap_or(0);
    std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|d| u64::from_str_radix(d, 16).ok())
        .is_some_and(|n| n <= finalized)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::Call;

    struct Chain {
        finalized: u64,
    }

    impl ChainView for Chain {
        fn head(&self) -> u64 {
            self.finalized + 2
        }
        fn height_of(&self, _: &[u8]) -> Option<u64> {
            None
        }
        fn finalized(&self) -> u64 {
            self.finalized
        }
        fn finalized_hash(&self) -> Option<std::rc::Rc<[u8]>> {
            Some(std::rc::Rc::from(&b"0xfeed"[..]))
        }
    }

    fn plan_of(rules: &Rules, msg: &str) -> Option<Plan> {
        let call = Call::parse(msg.as_bytes());
        plan(rules, call.single().unwrap(), &Chain { finalized: 100 })
    }

    fn rules(f: Flavour) -> Rules {
        let ttls = Ttls {
            static_ttl: Duration::from_secs(60),
            final_ttl: Duration::from_secs(3600),
        };
        Rules::new(
            f,
            ttls,
            &[("system_version".into(), 0), ("my_static".into(), 5)],
        )
    }

    const HASH: &str = "0x0101010101010101010101010101010101010101010101010101010101010101";

    #[test]
    fn what_is_kept_and_under_which_key() {
        let r = rules(Flavour::Substrate);
        let a = plan_of(&r, r#"{"id":1,"method":"system_chain"}"#).unwrap();
        let b = plan_of(&r, r#"{"id":2,"method":"system_chain","params":[ ]}"#).unwrap();
        assert_eq!(a.key, b.key, "the same params, spaced otherwise");
        assert_eq!(a.ttl, Duration::from_secs(60));
        assert!(
            plan_of(&r, r#"{"id":1,"method":"system_version"}"#).is_none(),
            "off"
        );
        let custom = plan_of(&r, r#"{"id":1,"method":"my_static"}"#).unwrap();
        assert_eq!(custom.ttl, Duration::from_secs(5));
        assert!(
            plan_of(&r, r#"{"method":"system_chain"}"#).is_none(),
            "a notification"
        );
        assert!(plan_of(&r, r#"{"id":1,"method":"state_getStorage"}"#).is_none());
    }

    #[test]
    fn block_arguments_by_hash_by_final_number_or_filled_in() {
        let r = rules(Flavour::Substrate);
        let at_hash = format!(r#"{{"id":1,"method":"state_getMetadata","params":["{HASH}"]}}"#);
        let p = plan_of(&r, &at_hash).unwrap();
        assert_eq!(p.ttl, Duration::from_secs(3600));
        assert!(p.params.is_none());
        let latest = plan_of(&r, r#"{"id":1,"method":"state_getMetadata","params":[]}"#).unwrap();
        assert_eq!(latest.params.as_deref(), Some(&br#"["0xfeed"]"#[..]));
        let null = plan_of(
            &r,
            r#"{"id":1,"method":"state_getMetadata","params":[null]}"#,
        )
        .unwrap();
        assert_eq!(null.key, latest.key);
        for (n, kept) in [
            ("0", true),
            ("100", true),
            ("101", false),
            ("\"0x64\"", true),
        ] {
            let msg = format!(r#"{{"id":1,"method":"chain_getBlockHash","params":[{n}]}}"#);
            assert_eq!(plan_of(&r, &msg).is_some(), kept, "{n}");
        }
        assert!(
            plan_of(&r, r#"{"id":1,"method":"chain_getHeader"}"#).is_none(),
            "the best header changes every block"
        );
        let e = rules(Flavour::Ethereum);
        for (tag, kept) in [
            ("\"0x64\"", true),
            ("\"latest\"", false),
            ("\"finalized\"", false),
        ] {
            let msg =
                format!(r#"{{"id":1,"method":"eth_getBlockByNumber","params":[{tag},false]}}"#);
            assert_eq!(plan_of(&e, &msg).is_some(), kept, "{tag}");
        }
        let call = r#"{"id":1,"method":"eth_call","params":[{"to":"0x1","data":"0x"},"0x10"]}"#;
        assert!(plan_of(&e, call).is_some());
    }

    #[test]
    fn answers_final_by_their_block_number() {
        assert!(final_in_answer(br#"{"blockNumber":"0x64","x":1}"#, 100));
        assert!(!final_in_answer(br#"{"blockNumber":"0x65"}"#, 100));
        assert!(!final_in_answer(br#"{"blockNumber":null}"#, 100), "pending");
    }

    #[test]
    fn compact_keeps_strings_as_written() {
        assert_eq!(compact(br#"[ "a b" , 1 ]"#), br#"["a b",1]"#.to_vec());
        assert_eq!(compact(br#"["\" x"]"#), br#"["\" x"]"#.to_vec());
    }
}
