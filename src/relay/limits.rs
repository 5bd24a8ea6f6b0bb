//! Per-session limits, one rule for both session modes: requests in flight
//! (`admission.max_inflight_per_connection`) and subscriptions held
//! (`admission.max_subscriptions_per_connection`). Over a limit, the request
//! gets `-32005` with its id (nothing when it has none) and the session goes on.

use crate::jsonrpc::error::{code, error};
use crate::jsonrpc::{Request, Sub};
use crate::policy::{AdmissionCtx, Reason};

use super::session::Session;

/// `Some(answer)` refuses `req` (the answer is `None` for a notification).
/// A pinned session's subscription count follows its calls here; a shared
/// session's follows the node's answers (see [`crate::relay::shared`]).
pub fn check(s: &Session, adm: &AdmissionCtx, req: &Request<'_>) -> Option<Option<String>> {
    let refuse = |reason: Reason, what: &str| {
        adm.shared.rejections.count(reason);
        let data = format!(r#"{{"limit":"{what}"}}"#);
        let id = req.reply_id();
        Some(
            req.id
                .map(|_| error(id, code::LIMIT_EXCEEDED, "limit exceeded", Some(&data))),
        )
    };
    if adm.max_inflight > 0 && req.id.is_some() && s.inflight.borrow().len() >= adm.max_inflight {
        return refuse(Reason::Inflight, "max_inflight_per_connection");
    }
    if adm.max_subscriptions > 0 {
        let pinned = s.member.is_none();
        match req.sub {
            Sub::Opens => {
                if s.subscription_count() >= adm.max_subscriptions {
                    return refuse(Reason::Subscriptions, "max_subscriptions_per_connection");
                }
                if pinned {
                    s.subscriptions.set(s.subscriptions.get() + 1);
                }
            }
            Sub::Ends(_) if pinned => {
                s.subscriptions.set(s.subscriptions.get().saturating_sub(1));
            }
            _ => {}
        }
    }
    None
}
