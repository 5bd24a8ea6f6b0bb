//! The runtime under every worker thread, the load generator and the mock
//! node: one monoio runtime per thread, io_uring with the single-thread
//! flags where the kernel has them (epoll otherwise, saying so), and CPU
//! pinning.

use std::io;

/// Run a future on a new monoio runtime on this thread, to its end.
///
/// io_uring where `io_uring` is set and the kernel has it, with the
/// single-thread flags: each ring is used by its one thread only, completions
/// run as task work when the thread asks for events (DEFER_TASKRUN), with no
/// interrupts to signal them (COOP_TASKRUN). Older kernels lack the flags;
/// then a plain ring. The epoll driver otherwise, saying so.
pub fn block_on<F: std::future::Future>(
    io_uring: bool,
    make: impl FnOnce() -> F,
) -> io::Result<F::Output> {
    if io_uring {
        let mut tuned = io_uring::IoUring::builder();
        tuned
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
        for urb in [Some(tuned), None] {
            let mut b = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(4096);
            if let Some(urb) = urb {
                b = b.uring_builder(urb);
            }
            match b.enable_timer().build() {
                Ok(mut rt) => return Ok(rt.block_on(make())),
                Err(e) => crate::debug!("io_uring setup: {e}"),
            }
        }
        crate::warn!("io_uring runtime failed to start; using the epoll driver");
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    Ok(rt.block_on(make()))
}

/// Pin this thread to `core` (a failure is logged, not fatal).
pub fn pin_to_core(core: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            crate::warn!(
                "could not pin to core {core}: {}",
                io::Error::last_os_error()
            );
        }
    }
}
