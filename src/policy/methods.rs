//! Method allowlists: a `safe` preset like a node's `--rpc-methods Safe`,
//! plus exact names and `*` prefixes to allow or deny.

/// Methods a node's `--rpc-methods Safe` refuses (Substrate), and the
/// namespaces an Ethereum endpoint should not expose publicly.
pub const UNSAFE_METHODS: &[&str] = &[
    "author_insertKey",
    "author_rotateKeys",
    "author_removeExtrinsic",
    "author_hasKey",
    "author_hasSessionKeys",
    "system_addReservedPeer",
    "system_removeReservedPeer",
    "system_reservedPeers",
    "system_nodeRoles",
    "system_networkState",
    "system_peers",
    "system_addLogFilter",
    "system_resetLogFilter",
    "system_unstable_networkState",
    "offchain_localStorageGet",
    "offchain_localStorageSet",
    "sync_state_genSyncSpec",
    "dev_*",
    "admin_*",
    "personal_*",
    "debug_*",
    "miner_*",
    "clique_*",
    "txpool_*",
    "engine_*",
    "anvil_*",
    "hardhat_*",
    "evm_*",
];

/// Which methods may be called.
#[derive(Debug, Clone, Default)]
pub struct MethodPolicy {
    allow: Vec<String>,
    deny: Vec<String>,
}

pub fn matches(pattern: &str, method: &[u8]) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => method.starts_with(prefix.as_bytes()),
        None => pattern.as_bytes() == method,
    }
}

impl MethodPolicy {
    /// `safe` adds [`UNSAFE_METHODS`] to `deny`. A non-empty `allow` admits only those.
    pub fn new(safe: bool, allow: Vec<String>, mut deny: Vec<String>) -> MethodPolicy {
        if safe {
            deny.extend(UNSAFE_METHODS.iter().map(|m| m.to_string()));
        }
        MethodPolicy { allow, deny }
    }

    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn allows(&self, method: &[u8]) -> bool {
        if !self.allow.is_empty() && !self.allow.iter().any(|p| matches(p, method)) {
            return false;
        }
        !self.deny.iter().any(|p| matches(p, method))
    }
}
