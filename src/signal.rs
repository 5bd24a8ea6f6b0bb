//! Events between futures and threads.
//!
//! - [`Signal`]: a one-waiter wake-up flag for futures of one task (or one
//!   thread's tasks). `notify` sets the flag and wakes the waiter if one is
//!   parked; `wait` returns at once if the flag was set since the last wait.
//!   A spurious return is harmless: waiters re-check their condition in a loop.
//! - [`Broadcast`]: a one-shot event for every waiter on one thread (a
//!   worker's shutdown, seen by each of its sessions).
//! - [`Shutdown`]: the process's shutdown, across threads: started by the
//!   signal thread, seen by every worker, which reports back when drained.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    /// A waiter is parked on `waker`.
    waiting: Cell<bool>,
    /// The last waiter's waker, kept between waits: a waiter that waits
    /// again with the same waker (each poll of a relay's branch does)
    /// neither clones nor drops one.
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.set.set(true);
        if self.waiting.replace(false) {
            if let Some(w) = self.waker.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                self.waiting.set(false);
                Poll::Ready(())
            } else {
                let mut w = self.waker.borrow_mut();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                self.waiting.set(true);
                Poll::Pending
            }
        })
        .await
    }
}

/// A one-shot event for any number of waiters on one thread (a worker's
/// shutdown): `fire` wakes every parked waiter, and `wait` returns at once
/// after it fired. A waiter's slot is freed when its future is dropped.
#[derive(Default)]
pub struct Broadcast {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Broadcast {
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    pub fn wait(&self) -> BroadcastWait<'_> {
        BroadcastWait {
            b: self,
            slot: None,
        }
    }
}

pub struct BroadcastWait<'a> {
    b: &'a Broadcast,
    slot: Option<usize>,
}

impl std::future::Future for BroadcastWait<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.b.fired.get() {
            return Poll::Ready(());
        }
        let waker = Some(cx.waker().clone());
        match self.slot {
            Some(i) => self.b.wakers.borrow_mut()[i] = waker,
            None => {
                let mut wakers = self.b.wakers.borrow_mut();
                let i = match self.b.free.borrow_mut().pop() {
                    Some(i) => {
                        wakers[i] = waker;
                        i
                    }
                    None => {
                        wakers.push(waker);
                        wakers.len() - 1
                    }
                };
                drop(wakers);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for BroadcastWait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(w) = self.b.wakers.borrow_mut().get_mut(i) {
                *w = None;
            }
            self.b.free.borrow_mut().push(i);
        }
    }
}

/// The process's shutdown state, made once at start and shared by the
/// workers and whoever stops them (no process-wide statics: a test or a
/// library user can run two gateways in one process).
#[derive(Debug, Default)]
pub struct Shutdown {
    started: std::sync::atomic::AtomicBool,
    drained: std::sync::atomic::AtomicUsize,
}

impl Shutdown {
    /// Begin: workers see it when their accept fails (the listening sockets
    /// are shut down by the caller).
    pub fn start(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A worker has no connection left.
    pub fn worker_drained(&self) {
        self.drained
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Workers drained so far.
    pub fn drained(&self) -> usize {
        self.drained.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn broadcast_wakes_every_waiter_and_reuses_slots() {
        let b = Broadcast::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waits: Vec<_> = (0..3).map(|_| Box::pin(b.wait())).collect();
        for w in &mut waits {
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        drop(waits.pop());
        for _ in 0..10 {
            let mut again = Box::pin(b.wait());
            assert!(again.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            b.wakers.borrow().len(),
            3,
            "dropped waiters' slots are reused"
        );
        b.fire();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        for w in &mut waits {
            assert!(w.as_mut().poll(&mut cx).is_ready());
        }
        assert!(Box::pin(b.wait()).as_mut().poll(&mut cx).is_ready());
    }
}
