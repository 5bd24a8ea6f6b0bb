//! Run a session's futures together on one task, polling only those that
//! were woken.
//!
//! `monoio::join!` polls every branch on every wake: a session's task woken
//! by one completed receive polled both pumps, both writers and the timer,
//! and a pump handing data to a writer woke the task once more for a pass
//! that found nothing to do. Here each branch gets a waker of its own that
//! marks it; a poll runs the marked branches, and again while running one
//! marked another (a pump's data reaches its writer in the same poll, with
//! no trip through the scheduler). A wake during that poll only marks: the
//! task is not queued again for what this poll will do anyway.
//!
//! The branch wakers share one `Rc` (one allocation per session, none per
//! poll: a branch is polled with a borrowed waker, and whoever keeps it
//! clones it). They never leave the worker thread (the relay's futures give
//! them only to this thread's signals, I/O operations and timers), as
//! everything of a session's task.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

/// A branch of a join: a future with its output stored by the caller.
pub type Branch<'a> = Pin<&'a mut dyn Future<Output = ()>>;

/// Passes over marked branches in one poll before the task yields to the
/// scheduler (which reaps I/O completions between runs): a branch that
/// marks itself on every poll then costs what it did under `monoio::join!`.
const MAX_PASSES: usize = 8;

/// Run every branch to completion.
pub async fn join<const N: usize>(branches: [Branch<'_>; N]) {
    const { assert!(N <= MAX_BRANCHES) };
    let all = (1u32 << N) - 1;
    Join {
        branches,
        marks: Rc::new(Marks {
            bits: Cell::new(all),
            polling: Cell::new(false),
            parent: RefCell::new(None),
            slots: std::array::from_fn(|i| i as u8),
        }),
        done: 0,
    }
    .await
}

const MAX_BRANCHES: usize = 8;

/// What the branch wakers share: one allocation for all of them. A branch's
/// waker points at its byte in `slots`, which holds its index: from it the
/// waker finds the start of `Marks`, and the `Rc` it holds a count of.
#[repr(C)]
struct Marks {
    /// Branches woken since they were last polled.
    bits: Cell<u32>,
    /// The join is polling: a wake only marks.
    polling: Cell<bool>,
    /// The task's waker.
    parent: RefCell<Option<Waker>>,
    slots: [u8; MAX_BRANCHES],
}

impl Marks {
    fn wake(&self, bit: u8) {
        self.bits.set(self.bits.get() | (1 << bit));
        if !self.polling.get() {
            if let Some(w) = self.parent.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }
}

struct Join<'a, const N: usize> {
    branches: [Branch<'a>; N],
    marks: Rc<Marks>,
    /// Branches that finished.
    done: u32,
}

impl<const N: usize> Future for Join<'_, N> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let all = (1u32 << N) - 1;
        {
            let mut parent = this.marks.parent.borrow_mut();
            if !parent.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *parent = Some(cx.waker().clone());
            }
        }
        this.marks.polling.set(true);
        for _ in 0..MAX_PASSES {
            let bits = this.marks.bits.replace(0) & !this.done;
            if bits == 0 {
                break;
            }
            for (i, branch) in this.branches.iter_mut().enumerate() {
                if bits & (1 << i) == 0 {
                    continue;
                }
                // A waker borrowed for the poll: whoever keeps it clones it.
                let waker = std::mem::ManuallyDrop::new(branch_waker(&this.marks, i));
                let mut bcx = Context::from_waker(&waker);
                if branch.as_mut().poll(&mut bcx).is_ready() {
                    this.done |= 1 << i;
                }
            }
        }
        this.marks.polling.set(false);
        if this.done == all {
            return Poll::Ready(());
        }
        if this.marks.bits.get() & !this.done != 0 {
            // Still marked after the passes: come back after the scheduler's turn.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// Branch `i`'s waker, not counted: wrap it in `ManuallyDrop` (cloning it
/// counts).
fn branch_waker(marks: &Rc<Marks>, i: usize) -> Waker {
    // From the pointer to the whole `Marks` (not a reference to the slot
    // alone), so that `marks_of` may step back to its start.
    let slot = Rc::as_ptr(marks)
        .cast::<u8>()
        .wrapping_add(std::mem::offset_of!(Marks, slots) + i);
    // SAFETY: the vtable's functions accept exactly such pointers (a slot of
    // a live `Rc<Marks>`); this waker holds no count until cloned.
    unsafe { Waker::from_raw(RawWaker::new(slot.cast(), &VTABLE)) }
}

/// The `Marks` a slot pointer belongs to.
///
/// # Safety
/// `data` points at `slots[i]` of a live `Marks`, which holds `i`.
unsafe fn marks_of(data: *const ()) -> *const Marks {
    let slot = data.cast::<u8>();
    // SAFETY: per the contract; `slots[i] == i`, and `slots` is at its
    // `repr(C)` offset in `Marks`.
    unsafe {
        let i = *slot as usize;
        slot.sub(i + std::mem::offset_of!(Marks, slots)).cast()
    }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop);

unsafe fn clone(data: *const ()) -> RawWaker {
    // SAFETY: the slot's `Marks` is alive (the cloned waker keeps it so,
    // or the join, while it lends one).
    unsafe { Rc::increment_strong_count(marks_of(data)) };
    RawWaker::new(data, &VTABLE)
}

unsafe fn wake(data: *const ()) {
    // SAFETY: as `wake_by_ref`, then gives back this waker's count.
    unsafe {
        wake_by_ref(data);
        drop(data);
    }
}

unsafe fn wake_by_ref(data: *const ()) {
    // SAFETY: the slot's `Marks` is alive; `*data` is the branch's index.
    unsafe { (*marks_of(data)).wake(*data.cast::<u8>()) };
}

unsafe fn drop(data: *const ()) {
    // SAFETY: gives back the count this (cloned) waker held.
    unsafe { Rc::decrement_strong_count(marks_of(data)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::Signal;

    /// `f`, counting its polls in `n`.
    fn counted<'a, F: Future + 'a>(n: &'a Cell<u32>, f: F) -> impl Future<Output = F::Output> + 'a {
        let mut f = Box::pin(f);
        std::future::poll_fn(move |cx| {
            n.set(n.get() + 1);
            f.as_mut().poll(cx)
        })
    }

    #[test]
    fn a_branch_is_polled_only_when_woken_and_a_hand_over_needs_no_second_wake() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async {
                monoio::spawn(async {
                    let data = Signal::default();
                    let (sent, got) = (Cell::new(0), Cell::new(0));
                    let (producer_polls, consumer_polls, idle_polls) =
                        (Cell::new(0), Cell::new(0), Cell::new(0));
                    let mut producer = std::pin::pin!(counted(&producer_polls, async {
                        for _ in 0..3 {
                            monoio::time::sleep(std::time::Duration::from_millis(2)).await;
                            sent.set(sent.get() + 1);
                            data.notify();
                        }
                    }));
                    let mut consumer = std::pin::pin!(counted(&consumer_polls, async {
                        while got.get() < 3 {
                            data.wait().await;
                            got.set(sent.get());
                        }
                    }));
                    let mut idle =
                        std::pin::pin!(counted(&idle_polls, std::future::pending::<()>()));
                    let task_polls = Cell::new(0);
                    let all = counted(
                        &task_polls,
                        join([producer.as_mut(), consumer.as_mut(), idle.as_mut()]),
                    );
                    monoio::select! {
                        _ = all => unreachable!("the idle branch never ends"),
                        _ = monoio::time::sleep(std::time::Duration::from_millis(50)) => {}
                    }
                    assert_eq!(got.get(), 3);
                    // Polled at the start, then once per hand-over (in the poll
                    // that woke it: the task was not woken again for it).
                    assert_eq!(consumer_polls.get(), 4);
                    assert_eq!(producer_polls.get(), 4);
                    assert_eq!(idle_polls.get(), 1);
                    // The task: at the start and once per timer; the select
                    // around it may poll it once more when its sleep ends.
                    assert!((4..=5).contains(&task_polls.get()), "{}", task_polls.get());
                })
                .await
            });
    }

    #[test]
    fn a_branch_that_always_wakes_itself_yields_to_the_scheduler() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(async {
                monoio::spawn(async {
                    let mut polls = 0;
                    let mut spin = std::pin::pin!(std::future::poll_fn(|cx| {
                        polls += 1;
                        if polls == 100 {
                            return Poll::Ready(());
                        }
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }));
                    let task_polls = Cell::new(0);
                    counted(&task_polls, join([spin.as_mut()])).await;
                    // Back to the scheduler (which reaps I/O completions
                    // between runs) after MAX_PASSES polls each time.
                    assert_eq!(task_polls.get(), 100usize.div_ceil(MAX_PASSES) as u32);
                })
                .await
            });
    }
}
