//! The second level of the response cache: answers that can never change
//! (at a block hash, at a finalized block, found final), kept where every
//! gateway of a cluster finds them, so that N instances starting cold cost
//! the nodes one `state_getMetadata` per hash, not N.
//!
//! This is the workers' side, with no store of its own: a [`Link`] carries
//! [`Job`]s to the one thread per process that talks to the store (Redis,
//! in the cluster's module); its answers come back through a per-core
//! [`Mailbox`] and a bell (one end of a socket pair the core reads).
//! Nothing here waits: a lookup hands over a callback, run on the core
//! when the answer comes, and every lookup gets exactly one answer (a
//! [`Reply`] dropped unanswered answers "miss"). The first level (each
//! core's [`super::Cache`]) is always asked first; a lookup that cannot be
//! queued, or a store that fails, costs a miss and nothing else.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

/// Jobs queued towards the store's thread at most (past that a lookup is a
/// miss and a store is skipped).
pub const QUEUE: usize = 4096;

/// What a core asks of the store's thread.
pub enum Job {
    /// The answer kept under `key`, if any. When there is none, the store
    /// notes that this instance is fetching it; another instance's lookup
    /// of the same key then waits (a while) for it rather than miss.
    Get { key: Vec<u8>, reply: Reply },
    /// Keep `head` under `key` for `ttl` (and end the fetching note).
    Put {
        key: Vec<u8>,
        head: Vec<u8>,
        ttl: Duration,
    },
    /// The fetch of `key` came to nothing: end its fetching note.
    Forget { key: Vec<u8> },
}

/// A lookup's answer, sent once from the store's thread.
pub struct Reply {
    mailbox: Arc<Mailbox>,
    token: u64,
    sent: bool,
}

impl Reply {
    /// Answer the lookup: the kept head, or `None` (a miss).
    pub fn send(mut self, head: Option<Vec<u8>>) {
        self.sent = true;
        self.mailbox.post(self.token, head);
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.sent {
            self.mailbox.post(self.token, None);
        }
    }
}

/// One core's answers, and the bell that wakes it.
pub struct Mailbox {
    answers: Mutex<Vec<(u64, Option<Vec<u8>>)>>,
    bell: std::os::unix::net::UnixStream,
}

impl Mailbox {
    fn post(&self, token: u64, head: Option<Vec<u8>>) {
        let mut answers = self.answers.lock();
        let first = answers.is_empty();
        answers.push((token, head));
        drop(answers);
        // One byte per batch: the core drains them all when it reads it
        // (a full socket buffer means a ring is already pending).
        if first {
            let _ = (&self.bell).write(&[1]);
        }
    }
}

/// The way to the store's thread (one per process).
#[derive(Clone)]
pub struct Link {
    pub jobs: SyncSender<Job>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

type Then = Box<dyn FnOnce(Option<Vec<u8>>)>;

/// This core's end: lookups waiting for their answer.
struct Port {
    link: Link,
    mailbox: Arc<Mailbox>,
    /// The core's end of the bell, until its reader starts.
    ear: RefCell<Option<std::os::unix::net::UnixStream>>,
    waiting: RefCell<HashMap<u64, Then>>,
    next: Cell<u64>,
}

thread_local! {
    static PORT: RefCell<Option<Rc<Port>>> = const { RefCell::new(None) };
}

/// The second level as one chain's cache sees it: its keys apart from any
/// other chain's, whatever the chains are called (two deployments on one
/// Redis may both name theirs `default`). A key is the SHA-256 of the
/// chain's identity as its nodes report it (the genesis hash; Ethereum's
/// chain id and genesis block), the method and the params: nothing is
/// stored or looked up before the identity is known, and no client's
/// params (up to a message's size) become a Redis key. Answers larger
/// than `max_bytes` are not stored.
pub struct Level2 {
    port: Rc<Port>,
    health: std::sync::Arc<crate::health::Health>,
    max_bytes: usize,
}

impl Level2 {
    /// This core's way to the store, for the chain whose nodes `health`
    /// follows; answers up to `max_bytes` are stored.
    pub fn new(
        link: &Link,
        health: std::sync::Arc<crate::health::Health>,
        max_bytes: usize,
    ) -> std::io::Result<Level2> {
        let port = PORT.with(|p| -> std::io::Result<Rc<Port>> {
            if let Some(port) = p.borrow().as_ref() {
                return Ok(port.clone());
            }
            let (bell, ear) = std::os::unix::net::UnixStream::pair()?;
            bell.set_nonblocking(true)?;
            let port = Rc::new(Port {
                link: link.clone(),
                mailbox: Arc::new(Mailbox {
                    answers: Mutex::default(),
                    bell,
                }),
                ear: RefCell::new(Some(ear)),
                waiting: RefCell::default(),
                next: Cell::new(0),
            });
            *p.borrow_mut() = Some(port.clone());
            Ok(port)
        })?;
        Ok(Level2 {
            port,
            health,
            max_bytes,
        })
    }

    /// The store's key for `key` (a cache key: method, 0, params), once
    /// the chain's identity is known.
    fn key(&self, key: &[u8]) -> Option<Vec<u8>> {
        let identity = self.health.namespace()?;
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(identity.as_bytes());
        h.update(&[0]);
        h.update(key);
        let digest = h.finish();
        Some(
            digest
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        )
    }

    /// Look `key` up; `then` runs on this core with the answer. Returns
    /// false (and `then` is dropped unrun) when the lookup could not be
    /// queued: a miss.
    pub fn get(&self, key: &[u8], then: impl FnOnce(Option<Vec<u8>>) + 'static) -> bool {
        let port = &self.port;
        if let Some(ear) = port.ear.borrow_mut().take() {
            if !listen(port, ear) {
                return false;
            }
        }
        let token = port.next.get();
        port.next.set(token + 1);
        let reply = Reply {
            mailbox: port.mailbox.clone(),
            token,
            sent: false,
        };
        let Some(key) = self.key(key) else {
            // The chain's identity is not known yet: a miss.
            return false;
        };
        let job = Job::Get { key, reply };
        // Not queued: its reply, dropped, posts a miss nobody waits for.
        if port.link.jobs.try_send(job).is_err() {
            return false;
        }
        port.waiting.borrow_mut().insert(token, Box::new(then));
        true
    }

    /// Keep an answer's head (`{"jsonrpc":"2.0","result":…,"id":`).
    pub fn put(&self, key: &[u8], head: &[u8], ttl: Duration) {
        let Some(key) = self.key(key) else {
            return;
        };
        if head.len() > self.max_bytes {
            // Too large to share: this answer is fetched per gateway.
            return self.forget_key(key);
        }
        let _ = self.port.link.jobs.try_send(Job::Put {
            key,
            head: head.to_vec(),
            ttl,
        });
    }

    /// The fetch of `key` this instance noted came to nothing.
    pub fn forget(&self, key: &[u8]) {
        if let Some(key) = self.key(key) {
            self.forget_key(key);
        }
    }

    fn forget_key(&self, key: Vec<u8>) {
        let _ = self.port.link.jobs.try_send(Job::Forget { key });
    }
}

/// Whether `head` is what the first level keeps: `{"jsonrpc":"2.0","result":…,"id":`
/// (a store's value is checked before any client sees it).
pub fn is_head(head: &[u8]) -> bool {
    head.starts_with(br#"{"jsonrpc":"2.0","result":"#) && head.ends_with(br#","id":"#)
}

/// Start the core's reader of the bell: each ring runs the callbacks of
/// the answers posted. A lookup is only queued once it runs.
fn listen(port: &Rc<Port>, ear: std::os::unix::net::UnixStream) -> bool {
    let ear = match ear
        .set_nonblocking(true)
        .and_then(|()| monoio::net::UnixStream::from_std(ear))
    {
        Ok(e) => e,
        Err(e) => {
            crate::error!("cache: the second level's bell cannot be read ({e}); first level only");
            return false;
        }
    };
    let port = port.clone();
    crate::task::spawn(
        "the second-level cache's bell",
        async move {
            use monoio::io::AsyncReadRent;
            let mut ear = ear;
            let mut buf = vec![0u8; 64];
            loop {
                let (r, b) = ear.read(buf).await;
                buf = b;
                if !matches!(r, Ok(n) if n > 0) {
                    crate::error!("cache: the second level's bell closed; lookups now miss");
                    // Each waiting lookup still gets its (empty) answer.
                    let waiting: Vec<Then> =
                        port.waiting.borrow_mut().drain().map(|(_, t)| t).collect();
                    for then in waiting {
                        then(None);
                    }
                    return;
                }
                let answers = std::mem::take(&mut *port.mailbox.answers.lock());
                for (token, head) in answers {
                    let then = port.waiting.borrow_mut().remove(&token);
                    if let Some(then) = then {
                        then(head.filter(|h| is_head(h)));
                    }
                }
            }
        },
        || {},
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_dropped_unanswered_answers_a_miss() {
        let (bell, _ear) = std::os::unix::net::UnixStream::pair().unwrap();
        let mailbox = Arc::new(Mailbox {
            answers: Mutex::default(),
            bell,
        });
        drop(Reply {
            mailbox: mailbox.clone(),
            token: 7,
            sent: false,
        });
        Reply {
            mailbox: mailbox.clone(),
            token: 8,
            sent: false,
        }
        .send(Some(b"x".to_vec()));
        let answers = mailbox.answers.lock();
        assert_eq!(*answers, vec![(7, None), (8, Some(b"x".to_vec()))]);
    }

    #[test]
    fn only_a_kept_head_is_served_from_the_store() {
        assert!(is_head(br#"{"jsonrpc":"2.0","result":"0x01","id":"#));
        assert!(!is_head(br#"{"jsonrpc":"2.0","error":{},"id":"#));
        assert!(!is_head(br#"{"jsonrpc":"2.0","result":"0x01""#));
    }
}
