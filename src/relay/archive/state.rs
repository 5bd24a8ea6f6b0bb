//! A routed pinned session's archive connection as data: what waits to be
//! written, what waits for an answer, and the connection's state. The
//! session holds it; [`super`] decides what goes there and [`super::conn`]
//! writes and reads it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::Duration;

use monoio::time::Instant;

use crate::io::{stop, Stop};
use crate::jsonrpc::error::{code, errors};
use crate::jsonrpc::Call;
use crate::route::Target;
use crate::signal::Signal;
use crate::ws::frame::{write_frame, OpCode};

/// Messages larger than this are not held: they stream to the pruned node.
pub const HOLD_MAX: usize = 64 * 1024;
/// Requests kept for a possible retry on archive.
pub(super) const RETRY_MAX: usize = 256;
/// After the archive connection fails, archive-bound calls go to the pruned
/// node (which answers truthfully) for this long; then another connection is tried.
pub(super) const ARCHIVE_RETRY: Duration = Duration::from_secs(1);

/// Where the message being held goes (its frames and payload are in the
/// pump's assembler).
#[derive(Default)]
pub struct Hold {
    /// Decided for a large message whose first part already went out.
    pub target: Option<Target>,
    /// A node's answer: its ids, read as it passes (nodes put the id
    /// first, but a large answer is not held whole to look).
    pub ids: crate::jsonrpc::scan::IdScanner,
}

#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub(super) enum ArchiveState {
    #[default]
    Idle,
    Connecting,
    Up,
    Failed,
}

/// A message sent to the archive node and not answered yet.
pub(super) struct Pending {
    pub(super) ids: Vec<Vec<u8>>,
    pub(super) batch: bool,
}

/// The session's archive connection and what waits on it.
#[derive(Default)]
pub struct Archive {
    /// Whole client messages (masked frames) to write.
    pub(super) queue: RefCell<VecDeque<(Pending, Vec<u8>)>>,
    /// Their bytes: over `max_buffered`, the client's pump waits
    /// (backpressure, as towards the session's own node).
    pub queued: Cell<usize>,
    /// Room freed in the queue.
    pub space: Signal,
    pub(super) pending: RefCell<Vec<Pending>>,
    /// Pongs and the close for the archive node.
    pub(super) control: RefCell<VecDeque<Vec<u8>>>,
    pub(super) state: Cell<ArchiveState>,
    pub(super) fd: Cell<Option<RawFd>>,
    pub(super) reading: Cell<bool>,
    pub(super) wake_writer: Signal,
    pub(super) wake_reader: Signal,
    /// Requests sent to the pruned node that may come back "state is gone".
    pub(super) retry: RefCell<VecDeque<(Vec<u8>, Vec<u8>)>>,
    /// When the connection last failed: another is tried after [`ARCHIVE_RETRY`].
    pub(super) failed_at: Cell<Option<Instant>>,
    /// Connections opened so far: a reader of an older one fails nothing.
    pub(super) generation: Cell<u32>,
}

impl Archive {
    /// After a failure, time to try another connection.
    pub(super) fn retry_due(&self) -> bool {
        self.state.get() == ArchiveState::Failed
            && self
                .failed_at
                .get()
                .map_or(true, |t| t.elapsed() >= ARCHIVE_RETRY)
    }

    pub(super) fn send(&self, message: Vec<u8>, call: &Call<'_>) {
        let pending = Pending {
            ids: call.ids().map(<[u8]>::to_vec).collect(),
            batch: call.is_batch(),
        };
        self.queued.set(self.queued.get() + message.len());
        self.queue.borrow_mut().push_back((pending, message));
        self.wake_writer.notify();
    }

    /// The session ended: the archive reader stops, both tasks look again.
    pub fn end(&self) {
        if let (true, Some(fd)) = (self.reading.get(), self.fd.get()) {
            stop(fd, Stop::Reads);
        }
        self.wake_writer.notify();
        self.wake_reader.notify();
        self.space.notify();
    }

    /// The close deadline passed.
    pub fn stop_all(&self) {
        if let Some(fd) = self.fd.get() {
            stop(fd, Stop::All);
        }
    }
}

/// A text frame (server to client) with JSON-RPC errors for `p`'s ids.
pub(super) fn error_frame(p: &Pending, why: &str) -> Option<Vec<u8>> {
    let message = format!("archive node unavailable: {why}");
    let body = errors(
        p.ids.iter().map(Vec::as_slice),
        p.batch,
        code::INTERNAL_ERROR,
        &message,
    )?;
    let mut f = Vec::with_capacity(body.len() + 10);
    write_frame(&mut f, OpCode::Text, body.as_bytes(), None);
    Some(f)
}
