//! Revocations pushed between gateways: a disable or enable asked of one
//! is published on `<prefix>:revocations` (apart from the sync, each reply
//! checked on its own), and a listener thread on every gateway takes the
//! others' at once. The set they are kept in is read at each sync anyway,
//! so a push that cannot travel (a Redis user without channel permissions:
//! Redis 7's `resetchannels` default) costs the push, never the sync:
//! revocations then arrive within `sync_ms`, and `/health` names the
//! missing permission.
//!
//! Every failure backs off (up to [`MAX_BACKOFF`]), said once when it
//! starts and once when it clears.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Duration;

use super::link::no_permission;
use crate::config::cluster::ClusterConfig;
use crate::policy::usage::Book;

/// The longest wait between two attempts of the listener.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How pushes fare: they travel, or Redis refuses channels to this user.
#[derive(Debug, Default)]
pub struct PushState(AtomicU8);

impl PushState {
    const OK: u8 = 0;
    const DENIED: u8 = 1;
    const DOWN: u8 = 2;

    /// What `/health` says of pushes: `None` when they travel.
    pub fn problem(&self) -> Option<&'static str> {
        match self.0.load(Relaxed) {
            Self::DENIED => Some(
                "NOPERM: this Redis user may not SUBSCRIBE or PUBLISH (give it `&<prefix>:*`); revocations arrive at each sync",
            ),
            Self::DOWN => Some("the revocation listener cannot reach Redis"),
            _ => None,
        }
    }

    fn set(&self, to: u8) -> u8 {
        self.0.swap(to, Relaxed)
    }
}

/// A revocation (or its end) asked of this instance, to push to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Disable(String),
    Enable(String),
}

/// The channel revocations travel on.
pub fn channel(config: &ClusterConfig) -> String {
    format!("{}:revocations", config.prefix)
}

impl PushState {
    /// The listener: the other gateways' pushes (`disable <name>`,
    /// `enable <name>`), applied at once.
    pub fn listen(
        &self,
        config: &ClusterConfig,
        book: &Book,
        subscribed: std::sync::mpsc::Sender<()>,
    ) {
        let channel = channel(config);
        let mut backoff = Duration::from_millis(100);
        let mut told = false;
        loop {
            let got = super::link::open(config, Duration::from_secs(10))
                .and_then(|mut con| self.take_pushes(&mut con, &channel, book, &subscribed));
            let (state, why) = match &got {
                Err(e) if no_permission(e) => (PushState::DENIED, e.to_string()),
                Err(e) => (PushState::DOWN, e.to_string()),
                // Subscribed, then the connection ended: connect again soon.
                Ok(()) => (PushState::OK, String::new()),
            };
            let was = self.set(state);
            if state != PushState::OK && (was != state || !told) {
                told = true;
                crate::warn!(
                    "cluster: revocations cannot be pushed ({why}); they arrive at each sync (every {} ms) instead; trying again every {} s at most",
                    config.sync.as_millis(),
                    MAX_BACKOFF.as_secs()
                );
            }
            if state == PushState::OK {
                if told {
                    crate::info!("cluster: revocations are pushed again");
                    told = false;
                }
                backoff = Duration::from_millis(100);
            } else {
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            // Not for a second sooner than it said: no busy loop whatever fails.
            let _ = subscribed.send(());
            std::thread::sleep(backoff);
        }
    }

    /// Subscribed: take messages until the connection ends (`Ok`), or the
    /// subscription is refused (`Err`).
    fn take_pushes(
        &self,
        con: &mut redis::Connection,
        channel: &str,
        book: &Book,
        subscribed: &std::sync::mpsc::Sender<()>,
    ) -> redis::RedisResult<()> {
        let mut sub = con.as_pubsub();
        sub.subscribe(channel)?;
        self.set(PushState::OK);
        let _ = subscribed.send(());
        // Any error (a quiet read timeout included): connect again.
        while let Ok(msg) = sub.get_message() {
            let text: String = msg.get_payload().unwrap_or_default();
            let (disable, name) = match text.split_once(' ') {
                Some(("disable", n)) => (true, n),
                Some(("enable", n)) => (false, n),
                _ => continue,
            };
            if let Some((_, u)) = book.all().into_iter().find(|(n, _)| n == name) {
                u.set_cluster_disabled(disable);
            }
        }
        Ok(())
    }

    /// Push revocations asked of this gateway to the listening ones, each
    /// on its own (a refused PUBLISH fails no sync): the others read the
    /// set they are kept in at their next sync in any case.
    pub fn publish(
        &self,
        config: &ClusterConfig,
        con: &mut redis::Connection,
        commands: &[Command],
    ) {
        let channel = channel(config);
        for c in commands {
            let text = match c {
                Command::Disable(n) => format!("disable {n}"),
                Command::Enable(n) => format!("enable {n}"),
            };
            let sent: redis::RedisResult<i64> =
                redis::cmd("PUBLISH").arg(&channel).arg(text).query(con);
            if let Err(e) = sent {
                if no_permission(&e) && self.set(PushState::DENIED) != PushState::DENIED {
                    crate::warn!("cluster: PUBLISH refused ({e}); revocations arrive at each sync");
                }
            }
        }
    }
}
