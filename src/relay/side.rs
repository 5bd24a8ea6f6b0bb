//! One side of a session (the client, or a pinned session's node): what
//! waits to be written to it, and its one writer.
//!
//! Everything written to a side goes through its [`Outbox`], so that frames
//! never interleave: relayed data in order, whole messages from elsewhere
//! (an archive node's answers, a shared connection's answers, the gateway's
//! own JSON-RPC errors) only between two messages, pings and pongs only
//! between two frames, and the close after everything else.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;

use crate::signal::Signal;

/// A piece of the relayed stream, and where it ends.
pub struct Chunk {
    pub buf: Vec<u8>,
    /// Ends between frames (a control frame may follow).
    pub frame_end: bool,
    /// Ends between messages (another source's message may follow).
    pub message_end: bool,
}

/// Frames waiting for one side's writer.
#[derive(Default)]
pub struct Outbox {
    /// Data-frame bytes relayed from the other side.
    pub data: RefCell<VecDeque<Chunk>>,
    /// Whole messages from elsewhere, written between two messages of `data`.
    pub injected: RefCell<VecDeque<Vec<u8>>>,
    /// Pings and pongs, written at the next frame boundary.
    pub control: RefCell<VecDeque<Vec<u8>>>,
    /// The close frame, written after all queued data.
    pub close: RefCell<Option<Vec<u8>>>,
    /// Bytes of data and messages queued (not control frames).
    pub queued: Cell<usize>,
    /// Nothing more will be queued: drain, then shut the transport down.
    pub finished: Cell<bool>,
    pub writer_wake: Signal,
    /// Room freed (the other side's pump waits on it).
    pub space_wake: Signal,
}

impl Outbox {
    /// Drop everything queued (the transport failed, or the deadline passed).
    pub fn clear(&self) {
        self.data.borrow_mut().clear();
        self.injected.borrow_mut().clear();
        self.control.borrow_mut().clear();
        self.close.borrow_mut().take();
        self.queued.set(0);
        self.space_wake.notify();
    }

    pub fn finish(&self) {
        self.finished.set(true);
        self.writer_wake.notify();
        self.space_wake.notify();
    }
}

/// One side's socket and outbox.
pub struct Side {
    pub name: &'static str,
    /// Frames written to this side are masked (the gateway is the client towards nodes).
    pub masked: bool,
    pub out: Outbox,
    /// The socket, to stop pending I/O when the session ends.
    pub fd: RawFd,
    /// A read is pending on this side (so ending the session must stop it).
    pub reading: Cell<bool>,
    /// Its pump waits for the other side's writer (backpressure): nothing
    /// is read from it meanwhile, so its silence means nothing.
    pub paused: Cell<bool>,
    /// A write to it is pending, and writes started so far: the timer ends
    /// a session whose client takes nothing for `send_timeout` (the same
    /// write pending from one look to the next). No clock read per write.
    pub writing: Cell<bool>,
    pub writes: Cell<u32>,
}

impl Side {
    pub fn new(name: &'static str, masked: bool, fd: RawFd) -> Side {
        Side {
            name,
            masked,
            out: Outbox::default(),
            fd,
            reading: Cell::new(false),
            paused: Cell::new(false),
            writing: Cell::new(false),
            writes: Cell::new(0),
        }
    }
}
