//! New block hashes for each worker, from the health thread (the routers'
//! window of recent hashes is filled from it).

use std::sync::Arc;

use parking_lot::Mutex;

/// New block hashes for one worker, newest kept: at most [`HashFeed::CAP`]
/// wait (a worker that never routes by hash takes none; it was an
/// unbounded channel that grew forever).
#[derive(Debug, Clone, Default)]
pub struct HashFeed(Arc<Mutex<std::collections::VecDeque<(String, u64)>>>);

impl HashFeed {
    /// As many as a worker's window of recent hashes holds.
    pub const CAP: usize = 4096;

    pub(super) fn push(&self, hash: &str, height: u64) {
        let mut q = self.0.lock();
        if q.len() == Self::CAP {
            q.pop_front();
        }
        q.push_back((hash.to_string(), height));
    }

    /// What waits, oldest first.
    pub fn take(&self) -> std::collections::VecDeque<(String, u64)> {
        std::mem::take(&mut *self.0.lock())
    }

    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
