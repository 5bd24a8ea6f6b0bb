//! When a node's answer is asked again of an archive node: a pruned (or
//! full) node answered a request with a block argument that its state for
//! that block is gone ("State already discarded", "missing trie node":
//! `routing.pruned_errors`), and an archive node may be asked. Once: the
//! archive node's answer is the answer, whatever it is.

use crate::config::Role;
use crate::jsonrpc::Request;
use crate::route::Router;

/// Whether `req`'s answer may need an archive node (it names a block).
pub fn may_need_archive(router: &Router, req: &Request<'_>) -> bool {
    req.method().is_some_and(|m| router.names_a_block(m))
}

/// Whether `answer`, from a node of `role` to a request that names a
/// block, is to be asked again of an archive node.
pub fn on_archive(router: &Router, role: Role, answer: &[u8]) -> bool {
    role != Role::Archive && router.is_pruned_error(answer)
}
