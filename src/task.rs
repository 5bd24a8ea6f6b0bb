//! Spawning a task on a worker's runtime so that no task dies silently.
//!
//! monoio does not catch a panic in a spawned task: it unwinds through the
//! runtime and takes the worker thread with every session on it. Every
//! task the gateway spawns goes through [`spawn`], which catches a panic in
//! the task's poll, logs it loudly with what the task was, and runs the
//! task's `on_panic` (a shared connection fails its sessions over to
//! another node, or closes them). A worker that dies anyway (a panic
//! outside any task: the runtime's worker threads catch it) takes the
//! process down, also loudly ([`fatal`]): a service manager restarts it;
//! it never leaves a silent hole.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Spawn `fut` on this thread's runtime; a panic in it is caught and
/// logged as a bug in `what`, and `on_panic` runs.
pub fn spawn<F, P>(what: &'static str, fut: F, on_panic: P)
where
    F: Future<Output = ()> + 'static,
    P: FnOnce() + 'static,
{
    monoio::spawn(Guarded {
        fut,
        what,
        on_panic: Some(on_panic),
    });
}

/// A part of the process without which it cannot serve (a worker, a
/// listener) is gone: say so and exit (70, EX_SOFTWARE), so that the
/// service manager starts it again, rather than serve with a hole.
pub fn fatal(what: &str) -> ! {
    crate::error!("{what} died; exiting so that the service manager restarts ringway");
    std::process::exit(70)
}

/// A future whose panic ends it (logged) instead of the thread.
pub struct Guarded<F, P> {
    fut: F,
    what: &'static str,
    on_panic: Option<P>,
}

impl<F, P> Guarded<F, P> {
    pub fn new(what: &'static str, fut: F, on_panic: P) -> Guarded<F, P> {
        Guarded {
            fut,
            what,
            on_panic: Some(on_panic),
        }
    }
}

impl<F: Future<Output = ()>, P: FnOnce()> Future for Guarded<F, P> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `fut` is structurally pinned (never moved out); the other
        // fields are not pinned and are only taken by value below.
        let this = unsafe { self.get_unchecked_mut() };
        let what = this.what;
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                let why = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                crate::error!("a task ({what}) panicked and was ended: {why} (this is a bug: please report it)");
                if let Some(f) = this.on_panic.take() {
                    // A second panic here is the worker's (see the module doc).
                    f();
                }
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn a_panicking_task_ends_alone_and_says_so() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async {
                let cleaned = Rc::new(Cell::new(false));
                let c = cleaned.clone();
                super::spawn(
                    "test",
                    async {
                        monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                        panic!("boom");
                    },
                    move || c.set(true),
                );
                let done = Rc::new(Cell::new(false));
                let d = done.clone();
                super::spawn(
                    "neighbour",
                    async move {
                        monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                        d.set(true);
                    },
                    || {},
                );
                monoio::time::sleep(std::time::Duration::from_millis(20)).await;
                assert!(cleaned.get(), "on_panic ran");
                assert!(done.get(), "the other task and the runtime went on");
            });
    }
}
