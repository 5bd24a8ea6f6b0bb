//! What a routed (or admission-checked) pinned session is given: the
//! routing rules, its pool, how to open an archive connection like its
//! own, its admission, and this core's shared connections.

use std::rc::Rc;
use std::time::Duration;

use crate::route::{ChainView, Router};
use crate::upstream::{Pool, UpgradeTemplate};

/// What a routed (or admission-checked) pinned session needs.
pub struct Routed<'r> {
    pub router: &'r Router,
    pub chain: &'r dyn ChainView,
    pub pool: Rc<Pool>,
    /// How to open an archive connection like the session's (when it routes).
    pub template: Option<UpgradeTemplate>,
    pub connect_timeout: Duration,
    /// Route messages to archive (else all go to the session's node).
    pub route: bool,
    /// Check each call against admission limits, for this client address.
    pub admission: Option<(&'r crate::policy::AdmissionCtx, std::net::IpAddr)>,
    /// This core's shared connections, and the session's node (index)
    /// among them: what the cache may answer goes there (its answers fill
    /// it), and so does a batch split by where its requests go (see
    /// [`crate::relay::shared`]).
    pub side: Option<(Rc<crate::relay::shared::Shared>, usize)>,
}
