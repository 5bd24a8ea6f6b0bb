//! A session's membership of its core's shared connections: the one to
//! its node, its archive node's, the subscriptions it owns and the merged
//! ones it is on.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::relay::Session;

use super::conn::{self, Conn};

/// A subscription a session owns: its connection, its id (raw JSON), and
/// the method that ends it.
type Owned = (Rc<Conn>, Box<[u8]>, Box<str>);

/// A merged subscription a session is on: its connection, the session's
/// subscription id, the topic key.
type Merged = (Rc<Conn>, Rc<[u8]>, conn::TopicKey);

/// A session's membership of shared connections.
pub struct Member {
    /// The connection to the session's node (another one's after a failover).
    pub(super) conn: RefCell<Rc<Conn>>,
    /// When it last moved to another node (`failover`).
    pub(super) moved_at: Cell<Option<std::time::Instant>>,
    /// Subscriptions the session owns.
    pub(super) subs: RefCell<Vec<Owned>>,
    /// The session's archive connection, picked on first need.
    pub(super) archive: RefCell<Option<Rc<Conn>>>,
    /// Merged subscriptions it is on: (connection, its id, topic key).
    pub(super) merged: RefCell<Vec<Merged>>,
    /// Its client follows on this core's follow hubs ([`super::follow`]).
    pub(super) follows: Cell<u32>,
}

impl Member {
    pub fn new(conn: Rc<Conn>) -> Member {
        Member {
            conn: RefCell::new(conn),
            moved_at: Cell::new(None),
            subs: RefCell::new(Vec::new()),
            archive: RefCell::new(None),
            merged: RefCell::new(Vec::new()),
            follows: Cell::new(0),
        }
    }

    /// The connection to the session's node.
    pub fn conn(&self) -> Rc<Conn> {
        self.conn.borrow().clone()
    }

    pub(super) fn set_conn(&self, conn: Rc<Conn>) {
        *self.conn.borrow_mut() = conn;
    }
}

impl crate::relay::session::Slot for Member {
    fn subscriptions(&self) -> u32 {
        (self.subs.borrow().len() + self.merged.borrow().len()) as u32 + self.follows.get()
    }

    fn forget_waiting(&self, s: &Session) {
        let archive = self.archive.borrow().clone();
        for c in std::iter::once(&self.conn()).chain(archive.as_ref()) {
            c.forget_waiting_of(s);
        }
    }
}

pub(super) fn member(s: &Session) -> &Member {
    let slot: &dyn std::any::Any = s.member.as_deref().expect("a session in shared mode");
    slot.downcast_ref()
        .expect("a shared session's slot is a Member")
}
